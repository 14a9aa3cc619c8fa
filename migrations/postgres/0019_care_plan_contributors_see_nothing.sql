-- CarePlan.contributor no longer gives visibility (`domain::tenancy::derived_visibility`,
-- `service::rules` party_visibility): only the workflow's parties see a CarePlan. The content
-- rows the earlier code gave contributors stayed until the CarePlan was next written, so the
-- organisations a CLW service listed there went on reading it and hearing of it. This deletes
-- them: each content row of a current CarePlan that names contributors whose key is none the
-- current code derives for it, which are, read from the search index (the current versions):
--   - its author, by ODS identifier or by a literal reference to a directory Organization or
--     to a PractitionerRole in one (`Rules::organization_of`);
--   - the referring practice: the requester of a ServiceRequest it is basedOn, named the same
--     ways (`Rules::check_care_plan`).
-- Every ODS code such an Organization carries counts, and every ServiceRequest it is basedOn,
-- so a row that might be a party's stays; grants (the creating organisation) are not touched.
-- Parameter keys as in `store::param_keys`: CarePlan.author -648639892, CarePlan.based-on
-- -800503020, ServiceRequest.requester 1057309433, PractitionerRole.organization -1843838546,
-- Organization.identifier -1561950273.
-- Contributors never gained rows on other resources (the patient's grants come from Tasks), so
-- nothing else changes.
WITH parties (plan_id, target_type, target_id, identifier_system, identifier_value) AS (
    SELECT author.id, author.target_type, author.target_id, author.identifier_system, author.identifier_value
    FROM idx_reference AS author
    WHERE author.resource_type = 'CarePlan' AND author.param_key = -648639892
    UNION ALL
    SELECT based_on.id, requester.target_type, requester.target_id,
           requester.identifier_system, requester.identifier_value
    FROM idx_reference AS based_on
    JOIN idx_reference AS requester
      ON requester.resource_type = 'ServiceRequest' AND requester.id = based_on.target_id
     AND requester.param_key = 1057309433
    WHERE based_on.resource_type = 'CarePlan' AND based_on.param_key = -800503020
      AND based_on.target_type = 'ServiceRequest'
),
organisations (plan_id, target_type, target_id, identifier_system, identifier_value) AS (
    SELECT plan_id, target_type, target_id, identifier_system, identifier_value FROM parties
    UNION ALL
    SELECT party.plan_id, role_organisation.target_type, role_organisation.target_id,
           role_organisation.identifier_system, role_organisation.identifier_value
    FROM parties AS party
    JOIN idx_reference AS role_organisation
      ON role_organisation.resource_type = 'PractitionerRole' AND role_organisation.id = party.target_id
     AND role_organisation.param_key = -1843838546
    WHERE party.target_type = 'PractitionerRole'
),
party_keys (plan_id, visibility_key) AS (
    SELECT plan_id, 'org:' || upper(identifier_value)
    FROM organisations
    WHERE identifier_system = 'https://fhir.nhs.uk/Id/ods-organization-code'
    UNION
    SELECT organisation.plan_id, 'org:' || upper(code.code)
    FROM organisations AS organisation
    JOIN idx_token AS code
      ON code.resource_type = 'Organization' AND code.id = organisation.target_id
     AND code.param_key = -1561950273 AND code.system = 'https://fhir.nhs.uk/Id/ods-organization-code'
    WHERE organisation.target_type = 'Organization'
)
DELETE FROM resource_visibility
WHERE source = 'content'
  AND resource_type = 'CarePlan'
  AND visibility_key LIKE 'org:%'
  AND EXISTS (
      SELECT 1
      FROM resources AS plan
      WHERE plan.resource_type = 'CarePlan'
        AND plan.id = resource_visibility.id
        -- A deleted resource's body is empty: never cast to jsonb (CASE orders the tests).
        AND CASE WHEN plan.deleted = 0 AND plan.body <> ''
                 THEN (plan.body::jsonb -> 'contributor') IS NOT NULL
                 ELSE false END
  )
  AND NOT EXISTS (
      SELECT 1
      FROM party_keys AS kept
      WHERE kept.plan_id = resource_visibility.id AND kept.visibility_key = resource_visibility.visibility_key
  );
