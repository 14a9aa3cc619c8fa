//! Tests of fhir-format's public API (the lib has no unit-test harness: see Cargo.toml).

use fhir_format::{check_json_structure, json_to_xml, xml_to_json, FormatError, MAX_NESTING_DEPTH};
use serde_json::{json, Value};

/// What a structural check should say: `None` for a valid resource, else a fragment of
/// the message and the exact expression.
type Expected = Option<(&'static str, Option<&'static str>)>;

fn check(name: &str, resource: Value, expected: Expected) {
    let outcome = check_json_structure(&resource);
    match (outcome, expected) {
        (Ok(()), None) => {}
        (Ok(()), Some((fragment, _))) => {
            panic!("{name}: accepted, expected an error containing {fragment:?}")
        }
        (Err(error), None) => panic!("{name}: rejected a valid resource: {error:?}"),
        (Err(FormatError { message, expression }), Some((fragment, want_expression))) => {
            assert!(message.contains(fragment), "{name}: message {message:?} should contain {fragment:?}");
            assert_eq!(expression.as_deref(), want_expression, "{name}: expression for {message:?}");
        }
    }
}

fn task() -> Value {
    json!({
        "resourceType": "Task",
        "id": "t1",
        "status": "requested",
        "intent": "order",
        "for": {"reference": "Patient/p1"},
        "authoredOn": "2024-03-01T10:00:00Z",
        "input": [
            {"type": {"text": "note"}, "valueString": "hello"},
            {"type": {"text": "flag"}, "valueBoolean": true}
        ]
    })
}

fn with(mut resource: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
    let target = resource.pointer_mut(parent).expect("parent exists").as_object_mut().expect("parent is an object");
    target.insert(key.to_owned(), value);
    resource
}

fn without(mut resource: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
    resource
        .pointer_mut(parent)
        .expect("parent exists")
        .as_object_mut()
        .expect("parent is an object")
        .shift_remove(key);
    resource
}

#[test]
fn structural_check_accepts_valid_resources_and_locates_each_kind_of_error() {
    let cases: Vec<(&str, Value, Expected)> = vec![
        ("a valid Task", task(), None),
        (
            "an unknown element in a backbone element",
            with(task(), "/input/0/foo", json!(1)),
            Some(("unknown element 'foo'", Some("Task.input[0].foo"))),
        ),
        (
            "an unknown element at the root",
            with(task(), "/colour", json!("red")),
            Some(("unknown element 'colour'", Some("Task.colour"))),
        ),
        (
            "an unknown element inside a datatype",
            with(task(), "/for/ref", json!("x")),
            Some(("unknown element 'ref'", Some("Task.for.ref"))),
        ),
        (
            "a boolean where a string is expected",
            with(task(), "/description", json!(true)),
            Some(("expected a string, found boolean true", Some("Task.description"))),
        ),
        (
            "a number where a string is expected in an array item",
            with(task(), "/input/0/valueString", json!(5)),
            Some(("expected a string, found number 5", Some("Task.input[0].valueString"))),
        ),
        (
            "two types for one choice element in a backbone element",
            with(task(), "/input/1/valueString", json!("x")),
            Some(("choice element 'value[x]'", Some("Task.input[1].value"))),
        ),
        (
            "a missing required element",
            without(task(), "/status"),
            Some(("missing required element 'status'", Some("Task"))),
        ),
        (
            "a missing required element in a backbone element",
            without(task(), "/input/1/type"),
            Some(("missing required element 'type'", Some("Task.input[1]"))),
        ),
        (
            "a missing required choice element",
            without(task(), "/input/0/valueString"),
            Some(("missing required element 'value[x]'", Some("Task.input[0]"))),
        ),
        (
            "a missing required element in a contained resource's backbone element",
            json!({"resourceType": "Task", "status": "draft", "intent": "order", "contained": [
                {"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}
            ]}),
            Some(("missing required element 'code'", Some("Task.contained[0].issue[0]"))),
        ),
        ("an unknown resourceType", json!({"resourceType": "Tusk"}), Some(("unknown resourceType 'Tusk'", None))),
        ("a missing resourceType", json!({"status": "draft"}), Some(("missing resourceType", None))),
        ("an array instead of an object", json!([task()]), Some(("must be a JSON object", None))),
        (
            "an unknown element in a contained resource",
            with(task(), "/contained", json!([{"resourceType": "Patient", "id": "p", "nickname": "Al"}])),
            Some(("unknown element 'nickname'", Some("Task.contained[0].nickname"))),
        ),
        (
            "an unknown element in a primitive's extension sibling",
            json!({"resourceType": "Patient", "birthDate": "1970-01-01",
                   "_birthDate": {"color": "x"}}),
            Some(("unknown element 'color'", Some("Patient.birthDate.color"))),
        ),
        (
            "a string that is not a boolean",
            json!({"resourceType": "Patient", "active": "yes"}),
            Some(("expected a boolean, found 'yes'", Some("Patient.active"))),
        ),
        (
            "an unknown element in a Bundle entry's resource",
            json!({"resourceType": "Bundle", "type": "collection", "entry": [
                {"resource": {"resourceType": "Patient"}},
                {"resource": {"resourceType": "Patient", "gender": "male", "sex": "m"}}
            ]}),
            Some(("unknown element 'sex'", Some("Bundle.entry[1].resource.sex"))),
        ),
        (
            "two types for one choice element",
            json!({"resourceType": "Patient", "extension": [
                {"url": "http://example.org/x", "valueString": "a", "valueBoolean": true}
            ]}),
            Some(("choice element 'value[x]'", Some("Patient.extension[0].value"))),
        ),
    ];
    for (name, resource, expected) in cases {
        check(name, resource, expected);
    }
}

/// Runs `f` on a thread with the 2 MiB stack of a tokio worker, where a stack overflow
/// would abort the process.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(f)
        .expect("spawn thread")
        .join()
        .expect("no panic or stack overflow")
}

/// A Patient with `levels` extensions nested in each other: JSON depth 1 + 2 * levels.
fn nested_extensions(levels: usize) -> Value {
    let mut extension = json!({"url": "http://example.org/leaf", "valueString": "x"});
    for _ in 1..levels {
        extension = json!({"url": "http://example.org/branch", "extension": [extension]});
    }
    json!({"resourceType": "Patient", "extension": [extension]})
}

#[test]
fn structural_check_rejects_nesting_beyond_the_limit_without_overflowing_the_stack() {
    let deepest_allowed = (MAX_NESTING_DEPTH - 1) / 2;
    let allowed = on_small_stack(move || check_json_structure(&nested_extensions(deepest_allowed)));
    assert_eq!(allowed, Ok(()), "{deepest_allowed} nested extensions are within the limit");

    let refused = on_small_stack(move || check_json_structure(&nested_extensions(deepest_allowed + 1)));
    let error = refused.expect_err("one more level is beyond the limit");
    assert!(error.message.contains("nested more than 64 levels"), "message names the limit: {error:?}");
    assert!(
        error
            .expression
            .as_deref()
            .is_some_and(|expression| expression.starts_with("Patient.extension[0].extension[0]")),
        "expression points into the nesting: {error:?}"
    );

    // Far deeper than any parser would build from text: the guard must not recurse into it.
    // Built by hand: `json!` interpolation would clone recursively.
    let mut very_deep = Value::String("leaf".to_owned());
    for _ in 0..10_000 {
        very_deep = Value::Array(vec![very_deep]);
    }
    let mut patient = serde_json::Map::new();
    patient.insert("resourceType".to_owned(), json!("Patient"));
    patient.insert("extension".to_owned(), very_deep);
    let very_deep = Value::Object(patient);
    let refused = on_small_stack(move || {
        let outcome = check_json_structure(&very_deep);
        // Dropping a Value this deep recurses in serde_json; leak it instead.
        std::mem::forget(very_deep);
        outcome
    });
    assert!(refused.is_err(), "10 000 levels are refused");
}

const PATIENT_XML: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Patient xmlns="http://hl7.org/fhir">
  <id value="p1"/>
  <text>
    <status value="generated"/>
    <div xmlns="http://www.w3.org/1999/xhtml"><p>Alice &amp; co</p></div>
  </text>
  <identifier>
    <system value="https://fhir.nhs.uk/Id/nhs-number"/>
    <value value="9000000009"/>
  </identifier>
  <active value="true"/>
  <name>
    <use value="official"/>
    <family value="Smith"/>
    <given value="Alice"/>
    <given value="Jane"/>
  </name>
  <gender value="female"/>
  <birthDate value="1970-01-01">
    <extension url="http://hl7.org/fhir/StructureDefinition/patient-birthTime">
      <valueDateTime value="1970-01-01T08:30:00Z"/>
    </extension>
  </birthDate>
</Patient>"#;

#[test]
fn xml_converts_to_json_and_back_without_loss() {
    let json = xml_to_json(PATIENT_XML.as_bytes()).expect("valid Patient XML converts");
    assert_eq!(json["resourceType"], "Patient", "resourceType from the root element");
    assert_eq!(json["active"], json!(true), "booleans become JSON booleans");
    assert_eq!(json["name"][0]["given"], json!(["Alice", "Jane"]), "repeats become arrays");
    assert_eq!(
        json["_birthDate"]["extension"][0]["valueDateTime"], "1970-01-01T08:30:00Z",
        "primitive extensions go to the underscore sibling"
    );
    assert!(
        json["text"]["div"].as_str().is_some_and(|div| div.contains("Alice &amp; co")),
        "narrative XHTML is kept: {}",
        json["text"]["div"]
    );
    check_json_structure(&json).expect("converted JSON passes the structural check");

    let xml = json_to_xml(&json).expect("checked JSON converts to XML");
    assert!(xml.contains(r#"<Patient xmlns="http://hl7.org/fhir">"#), "XML has the FHIR namespace: {xml}");
    let again = xml_to_json(xml.as_bytes()).expect("our own XML converts back");
    assert_eq!(again, json, "JSON -> XML -> JSON is lossless");
}

#[test]
fn xml_errors_say_what_and_where() {
    let cases: Vec<(&str, String, &str, Option<&str>)> = vec![
        (
            "malformed XML",
            "<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"true\"></Patient>".to_owned(),
            "malformed XML",
            None,
        ),
        ("not XML at all", "{\"resourceType\": \"Patient\"}".to_owned(), "malformed XML", None),
        (
            "an unknown element",
            PATIENT_XML.replace("<gender value=\"female\"/>", "<sex value=\"female\"/>"),
            "unknown element 'sex'",
            Some("Patient.sex"),
        ),
        (
            "an unknown element in a repeated element",
            PATIENT_XML.replace("<given value=\"Jane\"/>", "<given value=\"Jane\"/><nick value=\"J\"/>"),
            "unknown element 'nick'",
            Some("Patient.name.nick"),
        ),
        (
            "a value that is not a boolean",
            PATIENT_XML.replace("<active value=\"true\"/>", "<active value=\"yes\"/>"),
            "expected a boolean, found 'yes'",
            Some("Patient.active"),
        ),
        (
            "an unknown root element",
            "<Tusk xmlns=\"http://hl7.org/fhir\"/>".to_owned(),
            "unknown resourceType 'Tusk'",
            None,
        ),
        (
            "too deep",
            format!(
                "<Patient xmlns=\"http://hl7.org/fhir\">{}{}</Patient>",
                "<extension url=\"http://example.org/x\">".repeat(100),
                "</extension>".repeat(100)
            ),
            "nested more than 64 elements deep",
            None,
        ),
    ];
    for (name, xml, fragment, expression) in cases {
        let xml_bytes = xml.into_bytes();
        let outcome = on_small_stack(move || xml_to_json(&xml_bytes));
        let error = outcome.expect_err(name);
        assert!(error.message.contains(fragment), "{name}: message {:?} should contain {fragment:?}", error.message);
        assert_eq!(error.expression.as_deref(), expression, "{name}: expression of {error:?}");
    }
}

#[test]
fn json_to_xml_reports_structural_errors_instead_of_panicking() {
    let error =
        json_to_xml(&with(task(), "/input/0/foo", json!(1))).expect_err("an unknown element cannot be converted");
    assert_eq!(
        error.expression.as_deref(),
        Some("Task.input[0].foo"),
        "same location as the structural check: {error:?}"
    );
    let xml = json_to_xml(&task()).expect("a valid Task converts");
    assert!(xml.contains("<status value=\"requested\"/>"), "status is written: {xml}");
}

#[test]
fn structural_check_does_not_judge_values() {
    // Documented limits of fhirbolt that linkbridge::fhir::check_values covers.
    let cases = [
        ("an unknown code", with(task(), "/status", json!("bogus"))),
        ("an impossible date", with(task(), "/authoredOn", json!("2024-13-45"))),
        ("a boolean given as a string", json!({"resourceType": "Patient", "active": "true"})),
        ("a single object where an array belongs", json!({"resourceType": "Patient", "name": {"family": "Smith"}})),
    ];
    for (name, resource) in cases {
        assert_eq!(check_json_structure(&resource), Ok(()), "{name} passes the structural check");
    }
}
