//! The calls into `fhir_format` (fhirbolt), guarded. fhirbolt 0.4 panics on some input it should
//! refuse (an empty JSON array, e.g. `"name": []`, unwraps a `None`); a panic would drop the
//! connection and the worker thread with it. So every call runs behind two guards: R4's JSON
//! rule that arrays are never empty is checked first, with the element's path, and any panic
//! that still escapes is caught and reported as the malformed input (or unrenderable output)
//! it is. Incoming resources are also held to ele-1 ("all FHIR elements must have a @value or
//! children"), which fhirbolt does not check: no empty object (`"_gender": {}`,
//! `"meta": {}`), no `null` but in an array where the matching `_name` array holds the
//! element's extensions at that index.

use std::panic::{catch_unwind, AssertUnwindSafe};

use fhir_format::FormatError;
use serde_json::Value;

/// `fhir_format::check_json_structure`, after the empty-element rules (ele-1).
pub fn check_structure(resource: &Value) -> Result<(), FormatError> {
    if let Some((path, emptiness)) = first_empty_element(resource, resource_type(resource), Rules::Incoming) {
        return Err(FormatError { message: emptiness.refusal().to_owned(), expression: Some(path) });
    }
    guarded("the body could not be read as FHIR R4 JSON", || fhir_format::check_json_structure(resource))
}

/// `fhir_format::xml_to_json`, guarded.
pub fn xml_to_json(xml: &[u8]) -> Result<Value, FormatError> {
    guarded("the body could not be read as FHIR R4 XML", || fhir_format::xml_to_json(xml))
}

/// `fhir_format::json_to_xml`, after the empty-array rule, guarded.
pub fn json_to_xml(resource: &Value) -> Result<String, FormatError> {
    if let Some((path, _)) = first_empty_element(resource, resource_type(resource), Rules::Rendering) {
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

/// Which empty elements a walk looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rules {
    /// A body coming in: empty arrays, empty objects and stray nulls (ele-1).
    Incoming,
    /// A stored resource going out as XML: only what fhirbolt cannot render (empty arrays).
    Rendering,
}

/// How an element is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Emptiness {
    Array,
    Object,
    Null,
}

impl Emptiness {
    fn refusal(self) -> &'static str {
        match self {
            Emptiness::Array => {
                "empty arrays are not allowed (R4 JSON: an array has at least one item; omit the element)"
            }
            Emptiness::Object => {
                "empty objects are not allowed (ele-1: every element has a value or children; omit the element)"
            }
            Emptiness::Null => {
                "null is allowed only inside an array whose matching _element array holds that item's \
                 extensions (ele-1: every element has a value or children)"
            }
        }
    }
}

/// The FHIRPath-like path of the first empty element, depth first, and how it is empty. The
/// path is written only when one is found: formatting every node's path on the way down was
/// most of this walk's time, on every request body. A JSON `_name` (a primitive's id and
/// extensions) is the element `name` in FHIRPath.
fn first_empty_element(value: &Value, root: String, rules: Rules) -> Option<(String, Emptiness)> {
    let mut trail = Vec::new();
    let emptiness = trail_to_empty(value, &mut trail, rules)?;
    let mut path = root;
    for step in trail {
        match step {
            Step::Member(name) => {
                path.push('.');
                path.push_str(name.strip_prefix('_').unwrap_or(name));
            }
            Step::Item(index) => path.push_str(&format!("[{index}]")),
        }
    }
    Some((path, emptiness))
}

/// One step down a JSON tree.
enum Step<'a> {
    Member(&'a str),
    Item(usize),
}

/// Whether `value` holds an empty element; if so, `trail` ends with the steps to the first.
fn trail_to_empty<'a>(value: &'a Value, trail: &mut Vec<Step<'a>>, rules: Rules) -> Option<Emptiness> {
    let down = |step: Step<'a>, child: &'a Value, trail: &mut Vec<Step<'a>>| {
        trail.push(step);
        let found = trail_to_empty(child, trail, rules);
        if found.is_none() {
            trail.pop();
        }
        found
    };
    let incoming = rules == Rules::Incoming;
    match value {
        Value::Array(items) if items.is_empty() => Some(Emptiness::Array),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| down(Step::Item(i), item, trail)),
        Value::Object(members) if incoming && members.is_empty() => Some(Emptiness::Object),
        Value::Object(members) => members.iter().find_map(|(name, member)| {
            if incoming {
                if let Some(i) = unpaired_null(members, name, member) {
                    trail.push(Step::Member(name));
                    if let Some(i) = i {
                        trail.push(Step::Item(i));
                    }
                    return Some(Emptiness::Null);
                }
            }
            down(Step::Member(name), member, trail)
        }),
        _ => None,
    }
}

/// A `null` that stands for nothing: `Some(None)` for a member that is null, `Some(Some(i))`
/// for item `i` of an array whose partner (`given` for `_given` and the reverse) has no
/// non-null item at `i`. R4 JSON allows null only as such a placeholder.
fn unpaired_null(members: &serde_json::Map<String, Value>, name: &str, member: &Value) -> Option<Option<usize>> {
    match member {
        Value::Null => Some(None),
        Value::Array(items) if items.iter().any(Value::is_null) => {
            // Looked up only for an array holding a null: most hold none.
            let partner = match name.strip_prefix('_') {
                Some(plain) => members.get(plain),
                None => members.get(&format!("_{name}")),
            };
            let partner = partner.and_then(Value::as_array);
            items
                .iter()
                .enumerate()
                .find(|(i, item)| item.is_null() && partner.and_then(|p| p.get(*i)).is_none_or(|other| other.is_null()))
                .map(|(i, _)| Some(i))
        }
        _ => None,
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
    fn empty_objects_and_stray_nulls_are_refused_with_the_elements_fhirpath() {
        let cases = [
            (json!({"resourceType": "Patient", "_gender": {}}), "Patient.gender", "empty objects"),
            (json!({"resourceType": "Patient", "meta": {}}), "Patient.meta", "empty objects"),
            (json!({"resourceType": "Patient", "gender": null}), "Patient.gender", "null"),
            (
                json!({"resourceType": "Patient", "name": [{"given": ["Ann"], "_given": [{}]}]}),
                "Patient.name[0].given[0]",
                "empty objects",
            ),
            (json!({"resourceType": "Patient", "name": [{"given": [null]}]}), "Patient.name[0].given[0]", "null"),
            (
                json!({"resourceType": "Patient", "name": [{"given": ["Ann", null], "_given": [null, null]}]}),
                "Patient.name[0].given[1]",
                "null",
            ),
            (
                json!({"resourceType": "Bundle", "type": "batch", "entry": [{"resource": {"resourceType": "Patient", "code": {}}}]}),
                "Bundle.entry[0].resource.code",
                "empty objects",
            ),
        ];
        for (resource, path, kind) in cases {
            let refused = check_structure(&resource).expect_err("refused");
            assert_eq!(refused.expression.as_deref(), Some(path), "{resource}");
            assert!(refused.message.contains(kind), "{}", refused.message);
        }
        let extension = json!({"extension": [{"url": "http://example.org/x", "valueString": "y"}]});
        let paired =
            json!({"resourceType": "Patient", "name": [{"given": ["Ann", null], "_given": [null, extension]}]});
        assert!(check_structure(&paired).is_ok(), "a null with its extensions beside it is R4 JSON");
    }

    #[test]
    fn a_panic_inside_the_guard_becomes_a_refusal() {
        let refused: Result<(), FormatError> = guarded("the body could not be read", || panic!("fhirbolt bug"));
        assert_eq!(refused.expect_err("refused").message, "the body could not be read");
        assert!(xml_to_json(b"not xml at all").is_err());
    }
}
