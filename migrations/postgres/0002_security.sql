-- Registered client systems, the client-assertion replay guard, and the audit trail.

CREATE TABLE clients (
    client_id TEXT PRIMARY KEY,
    organization TEXT NOT NULL,
    role TEXT NOT NULL,
    jwks TEXT,
    jwks_url TEXT,
    scopes TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- One row per client assertion accepted: inserting an (issuer, jti) seen before fails, on
-- every replica alike. Rows are purged once the assertion has expired.
CREATE TABLE assertion_jtis (
    issuer TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (issuer, jti)
);
CREATE INDEX assertion_jtis_expiry ON assertion_jtis (expires_at);

CREATE TABLE audit_events (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    recorded BIGINT NOT NULL,
    client_id TEXT NOT NULL,
    organization TEXT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    entity_type TEXT,
    entity_id TEXT,
    body TEXT NOT NULL
);
CREATE INDEX audit_events_recorded ON audit_events (recorded);
CREATE INDEX audit_events_entity ON audit_events (entity_type, entity_id);
