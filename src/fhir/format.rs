//! The calls into `fhir_format` (fhirbolt), guarded. fhirbolt 0.4 panics on some input it should
//! refuse (an empty JSON array, e.g. `"name": []`, unwraps a `None`); a panic would drop the
//! connection and the worker thread with it. So every call runs behind two guards: R4's JSON
//! rule that arrays are never empty is checked first, with the element's path, and any panic
//! that still escapes is caught and reported as the malformed input (or unrenderable output)
//! it is.

use std::panic::{catch_unwind, AssertUnwindSafe};

use fhir_format::FormatError;
use serde_json::Value;

/// `fhir_format::check_json_structure`, after the empty-array rule.
pub fn check_structure(resource: &Value) -> Result<(), FormatError> {
    if let Some(path) = first_empty_array(resource, resource_type(resource)) {
        return Err(FormatError {
            message: "empty arrays are not allowed (R4 JSON: an array has at least one item; omit the element)"
                .to_owned(),
            expression: Some(path),
        });
    }
    guarded("the body could not be read as FHIR R4 JSON", || fhir_format::check_json_structure(resource))
}

/// `fhir_format::xml_to_json`, guarded.
pub fn xml_to_json(xml: &[u8]) -> Result<Value, FormatError> {
    guarded("the body could not be read as FHIR R4 XML", || fhir_format::xml_to_json(xml))
}

/// `fhir_format::json_to_xml`, after the empty-array rule, guarded.
pub fn json_to_xml(resource: &Value) -> Result<String, FormatError> {
    if let Some(path) = first_empty_array(resource, resource_type(resource)) {
        return Err(FormatError {
            message: "an empty array cannot be rendered as XML".to_owned(),
            expression: Some(path),
        });
    }
    guarded("the resource could not be rendered as FHIR R4 XML", || fhir_format::json_to_xml(resource))
}

fn resource_type(resource: &Value) -> String {
    resource.get("resourceType").and_then(Value::as_str).unwrap_or("Resource").to_owned()
}

fn guarded<T>(refusal: &str, call: impl FnOnce() -> Result<T, FormatError>) -> Result<T, FormatError> {
    catch_unwind(AssertUnwindSafe(call)).unwrap_or_else(|_| {
        tracing::warn!("fhirbolt panicked on a document; refused instead");
        Err(FormatError { message: refusal.to_owned(), expression: None })
    })
}

/// The FHIRPath-like path of the first empty array, depth first. The path is written only
/// when one is found: formatting every node's path on the way down was most of this walk's
/// time, on every request body.
fn first_empty_array(value: &Value, root: String) -> Option<String> {
    let mut trail = Vec::new();
    if !trail_to_empty_array(value, &mut trail) {
        return None;
    }
    let mut path = root;
    for step in trail {
        match step {
            Step::Member(name) => {
                path.push('.');
                path.push_str(name);
            }
            Step::Item(index) => path.push_str(&format!("[{index}]")),
        }
    }
    Some(path)
}

/// One step down a JSON tree.
enum Step<'a> {
    Member(&'a str),
    Item(usize),
}

/// Whether `value` holds an empty array; if so, `trail` ends with the steps to the first.
fn trail_to_empty_array<'a>(value: &'a Value, trail: &mut Vec<Step<'a>>) -> bool {
    let down = |step: Step<'a>, child: &'a Value, trail: &mut Vec<Step<'a>>| {
        trail.push(step);
        let found = trail_to_empty_array(child, trail);
        if !found {
            trail.pop();
        }
        found
    };
    match value {
        Value::Array(items) if items.is_empty() => true,
        Value::Array(items) => items.iter().enumerate().any(|(i, item)| down(Step::Item(i), item, trail)),
        Value::Object(members) => members.iter().any(|(name, member)| down(Step::Member(name), member, trail)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn empty_arrays_anywhere_are_refused_with_their_path_instead_of_reaching_fhirbolt() {
        let cases = [
            (json!({"resourceType": "Patient", "name": []}), "Patient.name"),
            (json!({"resourceType": "Patient", "name": [{"given": []}]}), "Patient.name[0].given"),
            (json!({"resourceType": "Bundle", "type": "batch", "entry": []}), "Bundle.entry"),
            (
                json!({"resourceType": "Bundle", "type": "batch", "entry": [{"resource": {"resourceType": "Patient", "name": []}}]}),
                "Bundle.entry[0].resource.name",
            ),
        ];
        for (resource, path) in cases {
            let refused = check_structure(&resource).expect_err("refused");
            assert_eq!(refused.expression.as_deref(), Some(path));
            assert!(json_to_xml(&resource).is_err());
        }
        assert!(check_structure(&json!({"resourceType": "Patient", "name": [{"family": "MacLeod"}]})).is_ok());
    }

    #[test]
    fn a_panic_inside_the_guard_becomes_a_refusal() {
        let refused: Result<(), FormatError> = guarded("the body could not be read", || panic!("fhirbolt bug"));
        assert_eq!(refused.expect_err("refused").message, "the body could not be read");
        assert!(xml_to_json(b"not xml at all").is_err());
    }
}
