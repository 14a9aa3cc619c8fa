//! The package's invariants, as Rust. A StructureDefinition's `constraint.expression` is
//! FHIRPath for readers and other tools; here each key names the check that enforces it.
//! A package naming a key not in `check_for` is refused at load.

use serde_json::Value;

use crate::domain::identifiers::{check_chi_number, check_nhs_number, KNOWN_CHI_SYSTEMS, NHS_NUMBER_SYSTEM};

/// A problem an invariant found: the FHIRPath of the element and what is wrong.
pub type Finding = (String, String);

/// What the invariants depend on besides the instance: deployment configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvariantContext {
    /// The identifier systems of CHI numbers (configuration: no single URI is agreed).
    pub chi_systems: Vec<String>,
}

impl InvariantContext {
    fn is_chi_system(&self, system: &str) -> bool {
        self.chi_systems.iter().any(|chi| chi == system)
    }
}

impl Default for InvariantContext {
    fn default() -> Self {
        InvariantContext { chi_systems: KNOWN_CHI_SYSTEMS.map(str::to_owned).to_vec() }
    }
}

/// Checks one element (`node` at `expression`) for an invariant.
pub type InvariantCheck = fn(node: &Value, expression: &str, context: &InvariantContext) -> Vec<Finding>;

/// The check enforcing the constraint with this key.
pub fn check_for(key: &str) -> Option<InvariantCheck> {
    match key {
        "lb-pat-1" => Some(has_chi_or_nhs_number),
        "lb-pat-2" => Some(nhs_numbers_are_valid),
        "lb-pat-3" => Some(chi_numbers_are_valid),
        "lb-task-1" => Some(stopped_task_says_why),
        _ => None,
    }
}

fn identifiers(node: &Value) -> impl Iterator<Item = (usize, &Value)> {
    node.get("identifier").and_then(Value::as_array).into_iter().flatten().enumerate()
}

fn system_of(identifier: &Value) -> Option<&str> {
    identifier.get("system").and_then(Value::as_str)
}

fn has_chi_or_nhs_number(node: &Value, expression: &str, context: &InvariantContext) -> Vec<Finding> {
    let national = |system: &str| system == NHS_NUMBER_SYSTEM || context.is_chi_system(system);
    if identifiers(node).any(|(_, identifier)| system_of(identifier).is_some_and(national)) {
        return Vec::new();
    }
    vec![(format!("{expression}.identifier"), "the patient needs a CHI number or an NHS number".to_owned())]
}

/// Each identifier of `system` passing `check`; the value is never repeated in the message.
fn numbers_are_valid(
    node: &Value,
    expression: &str,
    is_system: impl Fn(&str) -> bool,
    what: &str,
    check: fn(&str) -> Result<(), crate::domain::identifiers::NumberProblem>,
) -> Vec<Finding> {
    identifiers(node)
        .filter(|(_, identifier)| system_of(identifier).is_some_and(&is_system))
        .filter_map(|(index, identifier)| {
            let value = identifier.get("value").and_then(Value::as_str)?;
            let problem = check(value).err()?;
            Some((format!("{expression}.identifier[{index}].value"), format!("the {what} {}", problem.message())))
        })
        .collect()
}

fn nhs_numbers_are_valid(node: &Value, expression: &str, _context: &InvariantContext) -> Vec<Finding> {
    numbers_are_valid(node, expression, |s| s == NHS_NUMBER_SYSTEM, "NHS number", check_nhs_number)
}

fn chi_numbers_are_valid(node: &Value, expression: &str, context: &InvariantContext) -> Vec<Finding> {
    numbers_are_valid(node, expression, |s| context.is_chi_system(s), "CHI number", check_chi_number)
}

/// The referral state machine: these statuses need a reason a person can read.
fn stopped_task_says_why(node: &Value, expression: &str, _context: &InvariantContext) -> Vec<Finding> {
    let status = node.get("status").and_then(Value::as_str).unwrap_or_default();
    if !matches!(status, "rejected" | "cancelled" | "on-hold" | "failed") {
        return Vec::new();
    }
    let text = node.get("statusReason").and_then(|r| r.get("text")).and_then(Value::as_str);
    if text.is_some_and(|t| !t.trim().is_empty()) {
        return Vec::new();
    }
    vec![(format!("{expression}.statusReason"), format!("a {status} Task needs statusReason.text saying why"))]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn each_invariant_reports_exactly_the_elements_that_break_it() {
        let nhs = |value: &str| json!({"system": NHS_NUMBER_SYSTEM, "value": value});
        let chi = |value: &str| json!({"system": KNOWN_CHI_SYSTEMS[0], "value": value});
        let cases: Vec<(&str, &str, Value, Vec<&str>)> = vec![
            ("an NHS number satisfies lb-pat-1", "lb-pat-1", json!({"identifier": [nhs("9434765919")]}), vec![]),
            (
                "a CHI system other than the configured ones does not satisfy lb-pat-1",
                "lb-pat-1",
                json!({"identifier": [{"system": "https://example.org/chi", "value": "1204610126"}]}),
                vec!["Patient.identifier"],
            ),
            (
                "the HL7 UK OID is one of the CHI systems known by default",
                "lb-pat-1",
                json!({"identifier": [{"system": "urn:oid:2.16.840.1.113883.2.1.3.2.4.16.53", "value": "1204610126"}]}),
                vec![],
            ),
            (
                "a modulus-10 CHI number satisfies lb-pat-3",
                "lb-pat-3",
                json!({"identifier": [chi("1507621231")]}),
                vec![],
            ),
            (
                "a local identifier alone breaks lb-pat-1",
                "lb-pat-1",
                json!({"identifier": [{"system": "https://example.org/mrn", "value": "1"}]}),
                vec!["Patient.identifier"],
            ),
            ("no identifier breaks lb-pat-1", "lb-pat-1", json!({}), vec!["Patient.identifier"]),
            ("a valid NHS number satisfies lb-pat-2", "lb-pat-2", json!({"identifier": [nhs("9434765919")]}), vec![]),
            (
                "the second of two NHS numbers is wrong",
                "lb-pat-2",
                json!({"identifier": [nhs("9434765919"), nhs("9434765918")]}),
                vec!["Patient.identifier[1].value"],
            ),
            ("lb-pat-2 ignores CHI numbers", "lb-pat-2", json!({"identifier": [chi("9434765918")]}), vec![]),
            ("a valid CHI number satisfies lb-pat-3", "lb-pat-3", json!({"identifier": [chi("1204610126")]}), vec![]),
            (
                "a CHI number born on 30 February breaks lb-pat-3",
                "lb-pat-3",
                json!({"identifier": [chi("3002001234")]}),
                vec!["Patient.identifier[0].value"],
            ),
            (
                "a rejected Task with a reason satisfies lb-task-1",
                "lb-task-1",
                json!({"status": "rejected", "statusReason": {"text": "no capacity"}}),
                vec![],
            ),
            (
                "a failed Task with a coded reason but no text breaks lb-task-1",
                "lb-task-1",
                json!({"status": "failed", "statusReason": {"coding": [{"code": "FC"}]}}),
                vec!["Patient.statusReason"],
            ),
            (
                "an on-hold Task with blank text breaks lb-task-1",
                "lb-task-1",
                json!({"status": "on-hold", "statusReason": {"text": " "}}),
                vec!["Patient.statusReason"],
            ),
            ("a requested Task needs no reason", "lb-task-1", json!({"status": "requested"}), vec![]),
        ];
        for (what, key, node, expected) in cases {
            let check = check_for(key).expect("every key in the table has a check");
            let found: Vec<String> = check(&node, "Patient", &InvariantContext::default())
                .into_iter()
                .map(|(expression, _)| expression)
                .collect();
            assert_eq!(found, expected, "{what}");
        }
    }

    #[test]
    fn the_chi_systems_are_the_configured_ones() {
        let scottish = "http://fhir.nhs.scot.uk/Id/national/chi-number";
        let context = InvariantContext { chi_systems: vec!["urn:other".to_owned(), scottish.to_owned()] };
        let patient = json!({"identifier": [{"system": scottish, "value": "3002001234"}]});
        assert!(has_chi_or_nhs_number(&patient, "Patient", &context).is_empty(), "recognised as a CHI number");
        assert_eq!(
            chi_numbers_are_valid(&patient, "Patient", &context).len(),
            1,
            "and checked as one (30 February is no date of birth)"
        );
        let unconfigured = InvariantContext { chi_systems: vec!["urn:other".to_owned()] };
        assert!(!has_chi_or_nhs_number(&patient, "Patient", &unconfigured).is_empty(), "only the configured ones");
    }

    #[test]
    fn an_unknown_key_has_no_check() {
        assert!(check_for("lb-unknown-1").is_none(), "the package loader refuses keys without a check");
    }
}
