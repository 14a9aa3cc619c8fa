-- A Task's owner and requester and a ServiceRequest's requester and performer written as a
-- literal reference to a directory Organization (`{"reference": "Organization/<id>"}`) are now
-- indexed with the ODS code of that Organization as the reference's identifier
-- (`service::resources::index_party_codes`), so that `owner:identifier` and
-- `requester:identifier` find them however the sender wrote the reference. This gives the rows
-- written before the same identifier, read from the Organization's identifier rows (parameter
-- keys as in `store::param_keys`: Task.owner 335325081, Task.requester 964299624,
-- ServiceRequest.requester 1057309433, ServiceRequest.performer -1951536791,
-- Organization.identifier -1561950273).
UPDATE idx_reference
SET identifier_system = 'https://fhir.nhs.uk/Id/ods-organization-code',
    identifier_value = (
        SELECT MIN(UPPER(org.code))
        FROM idx_token AS org
        WHERE org.param_key = -1561950273
          AND org.resource_type = 'Organization'
          AND org.id = idx_reference.target_id
          AND org.system = 'https://fhir.nhs.uk/Id/ods-organization-code'
          AND org.code IS NOT NULL
    )
WHERE param_key IN (335325081, 964299624, 1057309433, -1951536791)
  AND target_type = 'Organization'
  AND identifier_value IS NULL
  AND EXISTS (
      SELECT 1
      FROM idx_token AS org
      WHERE org.param_key = -1561950273
        AND org.resource_type = 'Organization'
        AND org.id = idx_reference.target_id
        AND org.system = 'https://fhir.nhs.uk/Id/ods-organization-code'
        AND org.code IS NOT NULL
  );
