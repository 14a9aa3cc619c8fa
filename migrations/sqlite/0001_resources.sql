-- Current version of every resource, its full history, who may see it, and its search index.
-- Timestamps are microseconds since the Unix epoch (UTC).

CREATE TABLE resources (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    version_id BIGINT NOT NULL,
    last_updated BIGINT NOT NULL,
    deleted BIGINT NOT NULL,
    body TEXT NOT NULL,
    change_seq BIGINT NOT NULL,
    PRIMARY KEY (resource_type, id)
);
CREATE INDEX resources_type_updated ON resources (resource_type, last_updated);

CREATE TABLE resource_history (
    change_seq INTEGER PRIMARY KEY AUTOINCREMENT,
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    version_id BIGINT NOT NULL,
    last_updated BIGINT NOT NULL,
    deleted BIGINT NOT NULL,
    method TEXT NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (resource_type, id, version_id)
);
CREATE INDEX resource_history_type_updated ON resource_history (resource_type, last_updated);

CREATE TABLE resource_visibility (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    visibility_key TEXT NOT NULL,
    PRIMARY KEY (resource_type, id, visibility_key)
);
CREATE INDEX resource_visibility_key ON resource_visibility (visibility_key, resource_type, id);

CREATE TABLE conditional_keys (
    scope_key TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    criteria TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (scope_key, resource_type, criteria)
);

CREATE TABLE idx_token (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    param TEXT NOT NULL,
    system TEXT,
    code TEXT,
    text TEXT
);
CREATE INDEX idx_token_lookup ON idx_token (resource_type, param, code, system);
CREATE INDEX idx_token_owner ON idx_token (resource_type, id);

CREATE TABLE idx_reference (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    param TEXT NOT NULL,
    target_type TEXT,
    target_id TEXT,
    identifier_system TEXT,
    identifier_value TEXT
);
CREATE INDEX idx_reference_lookup ON idx_reference (resource_type, param, target_id, target_type);
CREATE INDEX idx_reference_identifier ON idx_reference (resource_type, param, identifier_value);
CREATE INDEX idx_reference_owner ON idx_reference (resource_type, id);

CREATE TABLE idx_date (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    param TEXT NOT NULL,
    low BIGINT NOT NULL,
    high BIGINT NOT NULL
);
CREATE INDEX idx_date_lookup ON idx_date (resource_type, param, low, high);
CREATE INDEX idx_date_owner ON idx_date (resource_type, id);

CREATE TABLE idx_string (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    param TEXT NOT NULL,
    value TEXT NOT NULL
);
CREATE INDEX idx_string_lookup ON idx_string (resource_type, param, value);
CREATE INDEX idx_string_owner ON idx_string (resource_type, id);
