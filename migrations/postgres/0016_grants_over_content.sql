-- A grant of a visibility key its resource's content gives already is that row, with source
-- 'grant' (`store::apply`, GRANTED); before, the grant was skipped and the row stayed the
-- content's, deleted by the next update whose content no longer gave the key. The rows that
-- left: a referral's ServiceRequest names the CLW service as its performer (a content key),
-- and a Task of it given to that service grants it the same key. A GP naming another
-- performer then took the referral from the service that holds its Task. This makes those
-- rows grants: each ServiceRequest content key of the owner of a live Task whose focus it is,
-- the owner named by ODS identifier or by a literal reference to a directory Organization,
-- read from the search index (the current Tasks; parameter keys as in `store::param_keys`:
-- Task.focus 314972362, Task.owner 335325081, Organization.identifier -1561950273).
UPDATE resource_visibility SET source = 'grant'
WHERE source = 'content'
  AND resource_type = 'ServiceRequest'
  AND EXISTS (
      SELECT 1
      FROM idx_reference AS focus
      JOIN idx_reference AS owner
        ON owner.id = focus.id AND owner.resource_type = 'Task' AND owner.param_key = 335325081
      LEFT JOIN idx_token AS org
        ON org.id = owner.target_id AND org.resource_type = 'Organization'
       AND owner.target_type = 'Organization' AND org.param_key = -1561950273
       AND org.system = 'https://fhir.nhs.uk/Id/ods-organization-code'
      WHERE focus.param_key = 314972362
        AND focus.resource_type = 'Task'
        AND focus.target_type = 'ServiceRequest'
        AND focus.target_id = resource_visibility.id
        AND (
            (owner.identifier_system = 'https://fhir.nhs.uk/Id/ods-organization-code'
             AND resource_visibility.visibility_key = 'org:' || upper(owner.identifier_value))
            OR resource_visibility.visibility_key = 'org:' || upper(org.code)
        )
  );
