-- `name` of Patient and Practitioner is answered from its own rows of a HumanName's `text`,
-- `prefix` and `suffix` and from the rows of `family` and `given` (`SearchParam::row_params`):
-- its rows of the family and given names were copies of theirs. A `name` row whose text is also
-- a family or given name of the same resource goes; that text is still found through the other
-- row. Two rows and four B-tree entries fewer per patient.
DELETE FROM idx_string
WHERE param = 'name'
  AND resource_type IN ('Patient', 'Practitioner')
  AND EXISTS (
    SELECT 1 FROM idx_string part
    WHERE part.resource_type = idx_string.resource_type
      AND part.id = idx_string.id
      AND part.param IN ('family', 'given')
      AND part.exact = idx_string.exact
  );
