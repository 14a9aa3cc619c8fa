-- A search sorted by a date parameter (`_sort=-authored-on`) walks this index in the page's
-- order, value then id, and stops when the page is full (store::search::walk). The index it
-- replaces, (param_key, low, high), ordered equal values by row, not by id, so such a search
-- read every value of the parameter and sorted them. Range tests keep their index range on
-- `low` and read `high` from the index.
DROP INDEX idx_date_lookup;
CREATE INDEX idx_date_by_low ON idx_date (param_key, low, id, high);

-- A resource's own rows of one date parameter, smallest value first: what the walk reads for
-- each resource it meets (its smallest value) and what the undated tail probes. Led by the
-- parameter's key instead, PostgreSQL without statistics read every value of the parameter
-- for each resource walked.
DROP INDEX idx_date_owner;
CREATE INDEX idx_date_owner ON idx_date (id, param_key, low);
