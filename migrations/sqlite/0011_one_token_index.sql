-- One token index instead of two (as PostgreSQL's 0010): the resource id before the system.
-- A test with a code and a system finds its rows by the code and checks the system in the
-- index; a poll's probe of one resource (code and id, with or without a system) is an equality
-- down to the id, as it was on `idx_token_code_search` (0007). Each index is a B-tree the single
-- writer finds, changes and logs a page of for every token row: eight rows per referral.
CREATE INDEX idx_token_by_code ON idx_token (resource_type, param, code, id, system);
DROP INDEX idx_token_search;
DROP INDEX idx_token_code_search;
