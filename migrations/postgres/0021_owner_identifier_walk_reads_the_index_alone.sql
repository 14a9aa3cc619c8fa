-- The CLW inbox (`owner:identifier=system|code&status=requested`) walks a service's Tasks along
-- this index in id order (store::search::walk) and tests the identifier's system on each row.
-- With the system in the index the walk and its probes read the index alone; without it each
-- row walked read its table row (a thousand for a small service among 100,000 Tasks).
DROP INDEX idx_reference_identifier_search;
CREATE INDEX idx_reference_identifier_search ON idx_reference (param_key, identifier_value, id, identifier_system)
    WHERE identifier_value IS NOT NULL;
