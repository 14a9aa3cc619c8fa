//! FHIR R4 value rules that fhirbolt does not check: primitive formats and required code
//! bindings.
//!
//! `fhir_format::check_json_structure` (fhirbolt, strict) rejects unknown elements and
//! missing required ones but accepts `"status": "bogus"` on a Task and
//! `"authoredOn": "2024-13-45"`. `check_values` is the second pass: pure functions over
//! `serde_json::Value`, no IO. What each element holds comes from `element_types`, a
//! table generated from the R4 definitions by `tools/gen_fhir_tables.py`.

mod element_types;
pub mod format;
pub mod json;
mod primitives;
mod schema;
mod values;

pub use primitives::excluded_from_strings;
pub use values::{check_values, ValueIssue};

/// Whether `json_key` (e.g. `status`, `_status`, `valueString`) names an element of
/// `resource_type` that R4 makes mandatory (min 1). A subset of a resource (`_elements`) keeps
/// these: R4 search.html#elements, "servers SHOULD always return mandatory elements".
pub fn is_mandatory_element(resource_type: &str, json_key: &str) -> bool {
    let name = json_key.strip_prefix('_').unwrap_or(json_key);
    schema::element_for(resource_type, name).is_some_and(|(element, _)| element.min > 0)
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::check_values;

    /// A named resource and the issues expected for it.
    type Case = (&'static str, Value, &'static [(&'static str, &'static str)]);

    /// Asserts the exact issues, as `(expression, fragment of the message)`, in order.
    fn check(name: &str, resource: Value, expected: &[(&str, &str)]) {
        let issues = check_values(&resource);
        let found: Vec<(&str, &str)> =
            issues.iter().map(|issue| (issue.expression.as_str(), issue.message.as_str())).collect();
        assert_eq!(found.len(), expected.len(), "{name}: expected {} issue(s), got {found:#?}", expected.len());
        for ((expression, message), (want_expression, fragment)) in found.iter().zip(expected) {
            assert_eq!(expression, want_expression, "{name}: expression of {message:?}");
            assert!(
                message.contains(fragment),
                "{name}: message {message:?} at {expression} should contain {fragment:?}"
            );
        }
    }

    fn task() -> Value {
        json!({
            "resourceType": "Task",
            "id": "task-1",
            "meta": {"versionId": "1", "lastUpdated": "2024-03-01T10:00:00.000Z"},
            "status": "requested",
            "intent": "order",
            "priority": "routine",
            "authoredOn": "2024-03-01T10:00:00Z",
            "for": {"reference": "Patient/p1"},
            "identifier": [{"use": "official", "system": "https://example.org/ids", "value": "A1"}],
            "input": [{"type": {"text": "note"}, "valueString": "hello"}]
        })
    }

    /// `task()` with `value` at the JSON pointer: replaced if there, else added to the
    /// parent object.
    fn with(pointer: &str, value: Value) -> Value {
        let mut resource = task();
        if let Some(target) = resource.pointer_mut(pointer) {
            *target = value;
            return resource;
        }
        let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
        resource
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .expect("parent is an object")
            .insert(key.to_owned(), value);
        resource
    }

    #[test]
    fn valid_resources_have_no_issues() {
        check("a valid Task", task(), &[]);
        check(
            "a valid Patient",
            json!({
                "resourceType": "Patient",
                "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Alice</div>"},
                "active": true,
                "name": [{"use": "official", "family": "Smith", "given": ["Alice", "Jane"]}],
                "gender": "female",
                "birthDate": "1970-01-01",
                "_birthDate": {"extension": [{
                    "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                    "valueDateTime": "1970-01-01T08:30:00Z"
                }]},
                "multipleBirthInteger": 2,
                "telecom": [{"system": "phone", "value": "0123", "use": "home", "rank": 1}],
                "address": [{"use": "home", "type": "physical", "line": ["1 High St"]}],
                "link": [{"other": {"reference": "Patient/p2"}, "type": "seealso"}]
            }),
            &[],
        );
    }

    #[test]
    fn primitives_are_checked_wherever_their_type_is_used() {
        let cases: Vec<Case> = vec![
            (
                "an impossible month in a dateTime",
                with("/authoredOn", json!("2024-13-45")),
                &[("Task.authoredOn", "month must be 01 to 12")],
            ),
            (
                "a dateTime with a time but no zone",
                with("/authoredOn", json!("2024-03-01T10:00:00")),
                &[("Task.authoredOn", "time zone")],
            ),
            (
                "an instant without a time in meta",
                with("/meta/lastUpdated", json!("2024-03-01")),
                &[("Task.meta.lastUpdated", "instant")],
            ),
            ("an id with an underscore", with("/id", json!("task_1")), &[("Task.id", "invalid id")]),
            (
                "a uri with a space inside an Identifier",
                with("/identifier/0/system", json!("https://example.org/my ids")),
                &[("Task.identifier[0].system", "whitespace")],
            ),
            (
                "an empty string",
                with("/identifier/0/value", json!("")),
                &[("Task.identifier[0].value", "empty strings")],
            ),
            (
                "a control character in a string",
                with("/input/0/valueString", json!("bell\u{7}")),
                &[("Task.input[0].value.ofType(string)", "control character")],
            ),
            (
                "a February 30th in a choice element",
                with("/input/0", json!({"type": {"text": "d"}, "valueDate": "2024-02-30"})),
                &[("Task.input[0].value.ofType(date)", "day does not exist")],
            ),
            (
                "a positiveInt of zero",
                with("/restriction", json!({"repetitions": 0})),
                &[("Task.restriction.repetitions", "out of range 1 to")],
            ),
            (
                "a string where a boolean belongs",
                with("/input/0", json!({"type": {"text": "b"}, "valueBoolean": "true"})),
                &[("Task.input[0].value.ofType(boolean)", "JSON literal true or false")],
            ),
            (
                "a decimal given as text",
                with("/input/0", json!({"type": {"text": "q"}, "valueQuantity": {"value": "1.5"}})),
                &[("Task.input[0].value.ofType(Quantity).value", "JSON number")],
            ),
            (
                "a malformed canonical, oid, uuid, time and base64 at once",
                with(
                    "/input",
                    json!([
                        {"type": {"text": "1"}, "valueCanonical": "http://x y"},
                        {"type": {"text": "2"}, "valueOid": "1.2.3"},
                        {"type": {"text": "3"}, "valueUuid": "urn:uuid:1234"},
                        {"type": {"text": "4"}, "valueTime": "25:00:00"},
                        {"type": {"text": "5"}, "valueBase64Binary": "abc"}
                    ]),
                ),
                &[
                    ("Task.input[0].value.ofType(canonical)", "whitespace"),
                    ("Task.input[1].value.ofType(oid)", "urn:oid:"),
                    ("Task.input[2].value.ofType(uuid)", "urn:uuid:"),
                    ("Task.input[3].value.ofType(time)", "out of range"),
                    ("Task.input[4].value.ofType(base64Binary)", "base64"),
                ],
            ),
            (
                "an invalid dateTime in an extension of a primitive",
                json!({"resourceType": "Patient", "birthDate": "1970-01-01", "_birthDate": {"extension": [
                    {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1970-01-01T25:00:00Z"}
                ]}}),
                &[("Patient.birthDate.extension[0].value.ofType(dateTime)", "out of range")],
            ),
            (
                "an invalid date deep in nested extensions",
                with(
                    "/extension",
                    json!([{"url": "http://example.org/a", "extension": [
                        {"url": "http://example.org/b", "valueDate": "2023-02-29"}
                    ]}]),
                ),
                &[("Task.extension[0].extension[0].value.ofType(date)", "day does not exist")],
            ),
            (
                "an XHTML narrative that is not a div",
                with("/text", json!({"status": "generated", "div": "<p>hi</p>"})),
                &[("Task.text.div", "<div>")],
            ),
        ];
        for (name, resource, expected) in cases {
            check(name, resource, expected);
        }
    }

    #[test]
    fn codes_outside_required_bindings_are_reported() {
        let cases: Vec<Case> = vec![
            (
                "a Task status",
                with("/status", json!("bogus")),
                &[(
                    "Task.status",
                    "'bogus' is not a code of the required value set http://hl7.org/fhir/ValueSet/task-status",
                )],
            ),
            (
                "a Task intent and priority at once",
                {
                    let mut task = with("/intent", json!("wish"));
                    task["priority"] = json!("soon");
                    task
                },
                &[
                    ("Task.intent", "task-intent"),
                    ("Task.priority", "request-priority (one of: routine, urgent, asap, stat)"),
                ],
            ),
            (
                "an Identifier use",
                with("/identifier/0/use", json!("primary")),
                &[("Task.identifier[0].use", "identifier-use")],
            ),
            (
                "a ServiceRequest status",
                json!({"resourceType": "ServiceRequest", "status": "open", "intent": "order",
                       "subject": {"reference": "Patient/p"}, "priority": "urgent"}),
                &[("ServiceRequest.status", "request-status")],
            ),
            (
                "a CarePlan activity detail status and kind",
                json!({"resourceType": "CarePlan", "status": "active", "intent": "plan",
                       "subject": {"reference": "Patient/p"},
                       "activity": [{"detail": {"status": "done", "kind": "Task"}},
                                    {"detail": {"status": "completed", "kind": "Observation"}}]}),
                &[
                    ("CarePlan.activity[0].detail.status", "care-plan-activity-status"),
                    ("CarePlan.activity[1].detail.kind", "care-plan-activity-kind"),
                ],
            ),
            (
                "a Patient gender, link type, name use, telecom and address codes",
                json!({"resourceType": "Patient", "gender": "f",
                       "name": [{"use": "legal"}],
                       "telecom": [{"system": "fax", "use": "office"}],
                       "address": [{"use": "home", "type": "street"}],
                       "link": [{"other": {"reference": "Patient/x"}, "type": "same"}]}),
                &[
                    ("Patient.gender", "administrative-gender"),
                    ("Patient.name[0].use", "name-use"),
                    ("Patient.telecom[0].use", "contact-point-use"),
                    ("Patient.address[0].type", "address-type"),
                    ("Patient.link[0].type", "link-type"),
                ],
            ),
            (
                "a Consent status and nested provision type",
                json!({"resourceType": "Consent", "status": "signed", "scope": {"text": "s"},
                       "category": [{"text": "c"}],
                       "provision": {"type": "permit", "provision": [{"type": "allow"}]}}),
                &[
                    ("Consent.status", "consent-state-codes"),
                    ("Consent.provision.provision[0].type", "consent-provision-type"),
                ],
            ),
            (
                "a Subscription status and channel type",
                json!({"resourceType": "Subscription", "status": "on", "reason": "r", "criteria": "Task?",
                       "channel": {"type": "webhook", "endpoint": "https://example.org/hook"}}),
                &[
                    ("Subscription.status", "subscription-status"),
                    ("Subscription.channel.type", "subscription-channel-type"),
                ],
            ),
            (
                "a Bundle type, an entry request method and a Task inside an entry",
                json!({"resourceType": "Bundle", "type": "batch-ish", "entry": [
                    {"resource": {"resourceType": "Task", "status": "started", "intent": "order"},
                     "request": {"method": "FETCH", "url": "Task"}}
                ]}),
                &[
                    ("Bundle.type", "bundle-type"),
                    ("Bundle.entry[0].resource.status", "task-status"),
                    ("Bundle.entry[0].request.method", "http-verb"),
                ],
            ),
            (
                "an OperationOutcome issue code",
                json!({"resourceType": "OperationOutcome", "issue": [{"severity": "fatal", "code": "oops"}]}),
                &[("OperationOutcome.issue[0].code", "issue-type")],
            ),
            (
                "a Narrative status in a contained resource",
                with(
                    "/contained",
                    json!([{"resourceType": "Patient", "id": "p",
                            "text": {"status": "made-up", "div": "<div>x</div>"}}]),
                ),
                &[("Task.contained[0].text.status", "narrative-status")],
            ),
            (
                "codes of resource types linkbridge does not serve are not checked",
                with("/contained", json!([{"resourceType": "Observation", "status": "bogus"}])),
                &[],
            ),
        ];
        for (name, resource, expected) in cases {
            check(name, resource, expected);
        }
    }

    #[test]
    fn json_shapes_fhirbolt_accepts_are_reported() {
        let cases: Vec<Case> = vec![
            (
                "a single object where the element repeats",
                with("/identifier", json!({"value": "A1"})),
                &[("Task.identifier", "must be an array")],
            ),
            (
                "an array where the element does not repeat",
                with("/authoredOn", json!(["2024-03-01"])),
                &[("Task.authoredOn", "does not repeat")],
            ),
            ("an empty array", with("/identifier", json!([])), &[("Task.identifier", "empty arrays")]),
            (
                "a missing repeating element of cardinality 1..*",
                json!({"resourceType": "OperationOutcome"}),
                &[("OperationOutcome", "missing required element 'issue'")],
            ),
            ("an empty object", with("/for", json!({})), &[("Task.for", "empty objects")]),
            ("a null value", with("/description", Value::Null), &[("Task.description", "null is not allowed")]),
            (
                "nulls in a primitive array are allowed only with a matching extension",
                json!({"resourceType": "Patient", "name": [{
                    "given": [null, "Jane", null],
                    "_given": [{"extension": [{"url": "http://example.org/x", "valueCode": "a"}]}, null, null]
                }]}),
                &[("Patient.name[0].given[2]", "null is only allowed")],
            ),
        ];
        for (name, resource, expected) in cases {
            check(name, resource, expected);
        }
    }

    #[test]
    fn nesting_beyond_the_limit_is_reported_not_walked() {
        let mut extension = json!({"url": "http://example.org/leaf", "valueString": "x"});
        for _ in 0..80 {
            extension = json!({"url": "http://example.org/branch", "extension": [extension]});
        }
        let issues = check_values(&json!({"resourceType": "Patient", "extension": [extension]}));
        assert_eq!(issues.len(), 1, "one issue for the whole too-deep branch: {issues:#?}");
        assert!(issues[0].message.contains("nested more than 64 levels"), "the issue says why: {issues:#?}");
    }
}
