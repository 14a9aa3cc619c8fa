//! References as the referral rules read them (`service::rules`). The literal references a
//! resource names, wherever they sit in it: the rules check that each one points at a resource
//! the writer may see, so a write cannot make another organisation's resource part of a
//! referral and have it disclosed through the visibility that referral grants. And what one
//! Reference names: a type and id ([`ReferenceTarget`]), or, for a party element, an
//! organisation ([`PartyReference`]).

use serde_json::Value;

use super::ods::{ods_code_of, OdsCode};
use super::resource_type::ResourceType;
use super::search_params::split_reference;

/// One literal reference to a resource of a served type: where it is (a FHIRPath expression
/// such as `ServiceRequest.supportingInfo[0]`) and what it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiteralReference {
    pub expression: String,
    pub target_type: ResourceType,
    pub target_id: String,
}

/// Every Reference in `resource` (any object with a `reference` string, in any element,
/// extensions and contained resources included) whose `reference` names a served type and an
/// id, in document order.
///
/// What is left out, and why:
/// - `#id` (a contained resource) and `urn:uuid:`/`urn:oid:` references name nothing on this
///   server; a transaction has replaced the `urn:uuid:` of its own entries with `Type/id`
///   before the rules run.
/// - Logical references (an `identifier` and no `reference`, such as an Organization named by
///   its ODS code) name no stored resource.
/// - References to types this server does not serve (`Condition/1`, `Goal/1`) cannot be read
///   here, nor can any visibility be granted on them.
///
/// An absolute URL is read as the `Type/id` it ends with (`…/Patient/1` is `Patient/1`), as the
/// search index and the referral grants read it, so it is held to the same rule: a resource on
/// another server is named by an identifier, not a URL.
pub fn literal_references(resource_type: ResourceType, resource: &Value) -> Vec<LiteralReference> {
    let mut out = Vec::new();
    let mut path = resource_type.as_str().to_owned();
    if let Value::Object(object) = resource {
        for (key, child) in object {
            walk(child, &mut path, key, &mut out);
        }
    }
    out
}

/// Visits `value`, the element `key` of the object at `path` (restored before returning).
fn walk(value: &Value, path: &mut String, key: &str, out: &mut Vec<LiteralReference>) {
    let parent_len = path.len();
    path.push('.');
    path.push_str(key);
    match value {
        Value::Object(object) => visit_object(object, path, out),
        Value::Array(items) => {
            let element_len = path.len();
            for (index, item) in items.iter().enumerate() {
                if let Value::Object(object) = item {
                    path.push_str(&format!("[{index}]"));
                    visit_object(object, path, out);
                    path.truncate(element_len);
                }
            }
        }
        _ => {}
    }
    path.truncate(parent_len);
}

fn visit_object(object: &serde_json::Map<String, Value>, path: &mut String, out: &mut Vec<LiteralReference>) {
    if let Some(reference) = object.get("reference").and_then(Value::as_str) {
        if let Some(target) = served_target(reference) {
            out.push(LiteralReference { expression: path.clone(), target_type: target.0, target_id: target.1 });
        }
    }
    for (key, child) in object {
        // A `reference` string is the leaf just read; a `reference` object (Consent's
        // `provision.data.reference`) is a Reference of its own, visited like any element.
        if !(key == "reference" && child.is_string()) {
            walk(child, path, key, out);
        }
    }
}

fn served_target(reference: &str) -> Option<(ResourceType, String)> {
    if reference.starts_with('#') || reference.starts_with("urn:") {
        return None;
    }
    let (target_type, id) = split_reference(reference)?;
    ResourceType::parse(&target_type).ok().map(|t| (t, id))
}

/// The type and id a literal reference names (`ServiceRequest/sr1`, an absolute URL ending in
/// `Patient/p1`), as `search_params::split_reference` reads it: the type as written, whether
/// this server serves it or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceTarget {
    pub type_name: String,
    pub id: String,
}

impl ReferenceTarget {
    /// What a `reference` string names, if it names a type and an id.
    pub fn parse(reference: &str) -> Option<ReferenceTarget> {
        split_reference(reference).map(|(type_name, id)| ReferenceTarget { type_name, id })
    }

    /// What a Reference (an object with a `reference` string) names.
    pub fn of(reference: &Value) -> Option<ReferenceTarget> {
        reference.get("reference").and_then(Value::as_str).and_then(Self::parse)
    }

    /// The type named, if this server serves it.
    pub fn served_type(&self) -> Option<ResourceType> {
        ResourceType::parse(&self.type_name).ok()
    }
}

/// The organisation a party element (a Task's requester or owner, a ServiceRequest's
/// requester, a CarePlan's author, a PractitionerRole's organization) names, as written: by its
/// ODS code, or by a literal reference into the directory that the rules resolve to one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartyReference {
    /// An identifier in the ODS system holding a valid code.
    OdsCode(OdsCode),
    /// `Organization/<id>`: the organisation whose directory entry that is.
    Organization(String),
    /// `PractitionerRole/<id>`: the organisation the role is in.
    PractitionerRole(String),
    /// No organisation the rules can know: a reference to another type, an identifier in
    /// another system (or an invalid code) with no literal reference beside it, a display only.
    Unresolvable,
}

impl PartyReference {
    /// Reads a Reference: its ODS identifier if it has a valid one, else its literal reference.
    pub fn parse(reference: &Value) -> PartyReference {
        if let Some(ods) = ods_code_of(reference) {
            return PartyReference::OdsCode(ods);
        }
        let Some(target) = ReferenceTarget::of(reference) else { return PartyReference::Unresolvable };
        match target.served_type() {
            Some(ResourceType::Organization) => PartyReference::Organization(target.id),
            Some(ResourceType::PractitionerRole) => PartyReference::PractitionerRole(target.id),
            _ => PartyReference::Unresolvable,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn named(resource_type: ResourceType, resource: &Value) -> Vec<(String, String)> {
        literal_references(resource_type, resource)
            .into_iter()
            .map(|r| (r.expression, format!("{}/{}", r.target_type, r.target_id)))
            .collect()
    }

    #[test]
    fn references_are_found_in_every_element_with_their_fhirpath() {
        let task = json!({
            "resourceType": "Task",
            "focus": {"reference": "ServiceRequest/sr1"},
            "for": {"reference": "Patient/p1"},
            "partOf": [{"reference": "Task/t0"}],
            "input": [{"type": {"text": "x"}, "valueReference": {"reference": "Consent/c1"}}],
            "output": [{"type": {"text": "plan"}, "valueReference": {"reference": "CarePlan/cp1/_history/2"}}],
            "extension": [{"url": "http://example.org/x", "valueReference": {"reference": "Practitioner/pr1"}}]
        });
        assert_eq!(
            named(ResourceType::Task, &task),
            vec![
                ("Task.focus".to_owned(), "ServiceRequest/sr1".to_owned()),
                ("Task.for".to_owned(), "Patient/p1".to_owned()),
                ("Task.partOf[0]".to_owned(), "Task/t0".to_owned()),
                ("Task.input[0].valueReference".to_owned(), "Consent/c1".to_owned()),
                ("Task.output[0].valueReference".to_owned(), "CarePlan/cp1".to_owned()),
                ("Task.extension[0].valueReference".to_owned(), "Practitioner/pr1".to_owned()),
            ]
        );
    }

    #[test]
    fn a_reference_object_inside_a_backbone_element_is_a_reference_too() {
        let consent =
            json!({"provision": {"data": [{"meaning": "instance", "reference": {"reference": "ServiceRequest/s"}}]}});
        assert_eq!(
            named(ResourceType::Consent, &consent),
            vec![("Consent.provision.data[0].reference".to_owned(), "ServiceRequest/s".to_owned())]
        );
    }

    #[test]
    fn contained_placeholder_logical_and_unserved_references_are_left_out() {
        let request = json!({
            "subject": {"reference": "#p"},
            "requester": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "GP0001"}},
            "reasonReference": [{"reference": "Condition/c1"}, {"reference": "urn:uuid:9f0e4b2c-1c1e-4a55-9a3e-3f6c1d2b7a01"}],
            "supportingInfo": [{"display": "no reference at all"}]
        });
        assert_eq!(named(ResourceType::ServiceRequest, &request), Vec::<(String, String)>::new());
    }

    const ODS: &str = "https://fhir.nhs.uk/Id/ods-organization-code";

    fn ods(raw: &str) -> OdsCode {
        OdsCode::parse(raw).expect("valid ODS code")
    }

    #[test]
    fn a_party_with_a_valid_ods_identifier_is_that_organisation_whatever_its_literal_reference() {
        let party = json!({"reference": "Organization/o1", "identifier": {"system": ODS, "value": "clw001"}});
        assert_eq!(PartyReference::parse(&party), PartyReference::OdsCode(ods("CLW001")));
    }

    #[test]
    fn a_party_without_a_valid_ods_identifier_is_read_from_its_literal_reference() {
        for (party, expected) in [
            (json!({"reference": "Organization/o1"}), PartyReference::Organization("o1".into())),
            (json!({"reference": "PractitionerRole/r1"}), PartyReference::PractitionerRole("r1".into())),
            (
                json!({"reference": "Organization/o2", "identifier": {"system": "urn:other", "value": "CLW001"}}),
                PartyReference::Organization("o2".into()),
            ),
            (
                json!({"reference": "Organization/o3", "identifier": {"system": ODS, "value": "not a code"}}),
                PartyReference::Organization("o3".into()),
            ),
        ] {
            assert_eq!(PartyReference::parse(&party), expected, "{party}");
        }
    }

    #[test]
    fn a_party_referring_to_another_type_or_to_nothing_names_no_organisation() {
        for party in [
            json!({"reference": "Practitioner/p1"}),
            json!({"reference": "#contained"}),
            json!({"identifier": {"system": "urn:other", "value": "CLW001"}}),
            json!({"display": "Pollokshields link workers"}),
        ] {
            assert_eq!(PartyReference::parse(&party), PartyReference::Unresolvable, "{party}");
        }
    }

    #[test]
    fn a_reference_target_keeps_the_type_as_written_and_knows_whether_it_is_served() {
        let served = ReferenceTarget::of(&json!({"reference": "ServiceRequest/sr1/_history/2"}));
        assert_eq!(served, Some(ReferenceTarget { type_name: "ServiceRequest".into(), id: "sr1".into() }));
        assert_eq!(served.and_then(|target| target.served_type()), Some(ResourceType::ServiceRequest));
        let unserved = ReferenceTarget::parse("Condition/c1");
        assert_eq!(unserved.as_ref().map(|target| target.type_name.as_str()), Some("Condition"));
        assert_eq!(unserved.and_then(|target| target.served_type()), None);
        assert_eq!(ReferenceTarget::parse("urn:uuid:9f0e4b2c-1c1e-4a55-9a3e-3f6c1d2b7a01"), None);
    }

    #[test]
    fn an_absolute_url_is_read_as_the_type_and_id_it_ends_with() {
        let request = json!({"subject": {"reference": "https://linkbridge.example/fhir/Patient/p9"}});
        assert_eq!(
            named(ResourceType::ServiceRequest, &request),
            vec![("ServiceRequest.subject".to_owned(), "Patient/p9".to_owned())]
        );
    }
}
