-- `resources_type_updated_id` (0003) starts with the same columns and serves every query this
-- index served: three B-tree entries fewer per referral. SQLite dropped it in its 0008.
DROP INDEX resources_type_updated;
