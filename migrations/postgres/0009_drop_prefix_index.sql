-- One B-tree fewer for every current row (as SQLite's 0008 did): `resources_type_updated_id`
-- (0003) starts with the same columns and serves every query this index served.
DROP INDEX IF EXISTS resources_type_updated;
