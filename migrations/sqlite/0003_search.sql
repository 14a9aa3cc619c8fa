-- Search (FHIR R4 search.html): the exact form of string values for `:exact`, and the indexes
-- the polling queries need. Each index below is named by the query it serves; the search plan
-- test (tests/api/search.rs) fails if one of those queries falls back to a full scan.

-- `:exact` compares the value as written; `value` keeps the case- and accent-folded form.
ALTER TABLE idx_string ADD COLUMN exact TEXT;
UPDATE idx_string SET exact = value WHERE exact IS NULL;
CREATE INDEX idx_string_exact ON idx_string (resource_type, param, exact);

-- `_lastUpdated=gt…` and `_sort=_lastUpdated`: keyset paging on (last_updated, id).
CREATE INDEX resources_type_updated_id ON resources (resource_type, last_updated, id);

-- Token and reference matches return the matching resource ids straight from the index
-- (covering: no lookup of the index row itself).
CREATE INDEX idx_token_search ON idx_token (resource_type, param, code, system, id);
DROP INDEX idx_token_lookup;
CREATE INDEX idx_reference_search ON idx_reference (resource_type, param, target_id, target_type, id);
DROP INDEX idx_reference_lookup;
