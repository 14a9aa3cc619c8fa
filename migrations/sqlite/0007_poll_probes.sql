-- A poll (`requester:identifier=...&_lastUpdated=gt...`) walks the rows changed since the last
-- one and tests each with one index probe (`store::search`, `Probe::PerRow`). The identifier
-- index ends with the resource id, so the probe is an equality on every column instead of a
-- walk through all of the organisation's index rows (found by the benchmark: polls slowed as a
-- practice's Tasks accumulated). It also serves the old lookups, a prefix of it.
CREATE INDEX idx_reference_identifier_search ON idx_reference (resource_type, param, identifier_value, id);
DROP INDEX idx_reference_identifier;
-- The same for token tests without a system (`status=requested`): code, then the id.
CREATE INDEX idx_token_code_search ON idx_token (resource_type, param, code, id);
