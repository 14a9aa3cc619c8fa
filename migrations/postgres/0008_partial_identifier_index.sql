-- Only references given by an identifier have one to search for: the identifier index keeps
-- just their rows. Without statistics PostgreSQL read a `_revinclude` (the Tasks whose `focus`
-- is one of a page of ServiceRequests) through this index, the smaller of the two starting with
-- (resource_type, param), and filtered every Task's `focus` row for the targets; as a partial
-- index it serves only queries that name an identifier, and a reference written by literal id
-- is one index entry fewer.
CREATE INDEX idx_reference_identifier_partial ON idx_reference (resource_type, param, identifier_value, id)
    WHERE identifier_value IS NOT NULL;
DROP INDEX idx_reference_identifier_search;
ALTER INDEX idx_reference_identifier_partial RENAME TO idx_reference_identifier_search;
