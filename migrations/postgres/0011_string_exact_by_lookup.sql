-- `:exact` string searches find their rows by the folded value on `idx_string_lookup` and
-- check the text as written on them (`store::search`), so the index of the text as written
-- goes: one B-tree entry fewer per string row (four per referral).
DROP INDEX idx_string_exact;
