-- Fewer B-trees per write (SQLite only: the group commit's single writer is SQLite's limit,
-- and each B-tree a row goes into is a page to find, change and write to the WAL).

-- `resources_type_updated_id` (0003) starts with the same columns and serves every query this
-- index served.
DROP INDEX resources_type_updated;

-- Tables whose rows are found by their primary key keep their rows in that key's B-tree
-- (WITHOUT ROWID) instead of a rowid table plus a separate index of the key.
CREATE TABLE resource_visibility_by_key (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    visibility_key TEXT NOT NULL,
    source TEXT NOT NULL DEFAULT 'grant',
    PRIMARY KEY (resource_type, id, visibility_key)
) WITHOUT ROWID;
INSERT INTO resource_visibility_by_key (resource_type, id, visibility_key, source)
    SELECT resource_type, id, visibility_key, source FROM resource_visibility;
DROP TABLE resource_visibility;
ALTER TABLE resource_visibility_by_key RENAME TO resource_visibility;
CREATE INDEX resource_visibility_key ON resource_visibility (visibility_key, resource_type, id);

CREATE TABLE conditional_keys_by_key (
    scope_key TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    criteria TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (scope_key, resource_type, criteria)
) WITHOUT ROWID;
INSERT INTO conditional_keys_by_key (scope_key, resource_type, criteria, id)
    SELECT scope_key, resource_type, criteria, id FROM conditional_keys;
DROP TABLE conditional_keys;
ALTER TABLE conditional_keys_by_key RENAME TO conditional_keys;
