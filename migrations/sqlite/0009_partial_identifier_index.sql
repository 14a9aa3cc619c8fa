-- Only references given by an identifier have one to search for: the identifier index keeps
-- just their rows (as on PostgreSQL, its 0008), so a reference written by literal id is one
-- B-tree insert fewer for the single writer. A search on `:identifier` names the value, which
-- SQLite reads as implying `identifier_value IS NOT NULL`, so the index still serves it (the
-- plan test checks).
DROP INDEX idx_reference_identifier_search;
CREATE INDEX idx_reference_identifier_search ON idx_reference (resource_type, param, identifier_value, id)
    WHERE identifier_value IS NOT NULL;
