//! The package's examples against the engine, and the engine's rules one by one.

use crate::domain::identifiers::KNOWN_CHI_SYSTEMS;
use std::path::PathBuf;

use serde_json::{json, Value};

use super::{Package, ProfileCheck, ValidationMode, Validator};

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("profiles/examples")
}

fn read_json(path: &std::path::Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (file name, resource) of every example whose name starts (or not) with `invalid-`.
fn examples(invalid: bool) -> Vec<(String, Value)> {
    let mut found: Vec<(String, Value)> = std::fs::read_dir(examples_dir())
        .expect("profiles/examples exists")
        .map(|entry| entry.expect("readable entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .filter_map(|path| {
            let name = path.file_name()?.to_string_lossy().into_owned();
            (name != "expected-issues.json" && name.starts_with("invalid-") == invalid)
                .then(|| (name, read_json(&path)))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

fn validator() -> Validator {
    Validator::new(Package::embedded().expect("the embedded package loads")).expect("the embedded package compiles")
}

#[test]
fn the_embedded_package_is_the_profiles_directory() {
    let from_dir = Package::from_dir(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("profiles"))
        .expect("the profiles directory loads");
    let embedded = Package::embedded().expect("embedded loads");
    assert_eq!(embedded.resources, from_dir.resources, "every file in profiles/ is compiled in (package.rs EMBEDDED)");
    assert_eq!(embedded.manifest["name"], "linkbridge.socialprescribing", "the package name");
}

#[test]
fn every_valid_example_is_valid_fhir_and_passes_its_profile() {
    let validator = validator();
    let valid = examples(false);
    assert_eq!(valid.len(), 5, "one valid example per profile, two for Patient: {:?}", valid.iter().map(|v| &v.0));
    for (name, resource) in valid {
        assert!(fhir_format::check_json_structure(&resource).is_ok(), "{name}: R4 structure");
        assert_eq!(crate::fhir::check_values(&resource), vec![], "{name}: R4 values");
        let claimed = resource["meta"]["profile"][0].as_str().expect("examples claim their profile");
        assert!(validator.profile(claimed).is_some(), "{name}: claims a profile of the package");
        assert_eq!(validator.validate(&resource), vec![], "{name}: no profile issues");
    }
}

#[test]
fn every_invalid_example_fails_with_exactly_its_expected_issue() {
    let validator = validator();
    let expected = read_json(&examples_dir().join("expected-issues.json"));
    let invalid = examples(true);
    assert_eq!(invalid.len(), expected.as_object().map_or(0, |o| o.len()), "every invalid example has an expectation");
    for (name, resource) in invalid {
        assert!(fhir_format::check_json_structure(&resource).is_ok(), "{name}: still R4 structure");
        assert_eq!(crate::fhir::check_values(&resource), vec![], "{name}: still R4 values, only the profile is broken");
        let want = &expected[&name];
        let issues = validator.validate(&resource);
        assert_eq!(issues.len(), 1, "{name}: exactly one issue, got {issues:#?}");
        assert_eq!(issues[0].expression.as_deref(), want["expression"].as_str(), "{name}: expression");
        assert_eq!(Some(issues[0].code.code()), want["code"].as_str(), "{name}: issue code");
    }
}

fn referral() -> Value {
    read_json(&examples_dir().join("ServiceRequest-referral.json"))
}

fn without_claim(mut resource: Value) -> Value {
    resource.as_object_mut().map(|o| o.remove("meta"));
    resource
}

#[test]
fn profiles_apply_when_claimed_or_when_the_code_says_referral() {
    let validator = validator();
    let unclaimed_referral_without_requester = {
        let mut r = without_claim(referral());
        r.as_object_mut().map(|o| o.remove("requester"));
        r
    };
    let other_service_request = {
        let mut r = unclaimed_referral_without_requester.clone();
        r["code"] = json!({"text": "physiotherapy"});
        r
    };
    let unclaimed_patient_without_number = json!({"resourceType": "Patient", "name": [{"family": "X"}]});
    let unknown_claim = {
        let mut r = unclaimed_patient_without_number.clone();
        r["meta"] = json!({"profile": ["https://example.org/StructureDefinition/other"]});
        r
    };
    let versioned_claim = {
        let mut r = unclaimed_patient_without_number.clone();
        r["meta"] = json!({"profile": ["https://linkbridge.scot/fhir/StructureDefinition/linkbridge-patient|0.1.0"]});
        r
    };
    let claim_of_another_type = {
        let mut r = unclaimed_patient_without_number.clone();
        r["meta"] = json!({"profile": ["https://linkbridge.scot/fhir/StructureDefinition/linkbridge-referral-task"]});
        r
    };
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "a social prescribing ServiceRequest is checked without a claim",
            unclaimed_referral_without_requester,
            vec!["ServiceRequest.requester"],
        ),
        ("another ServiceRequest is not", other_service_request, vec![]),
        ("a Patient that claims nothing is not checked", unclaimed_patient_without_number, vec![]),
        ("a claim of an unknown profile is ignored", unknown_claim, vec![]),
        (
            "a versioned claim applies the profile",
            versioned_claim,
            vec!["Patient.birthDate", "Patient.identifier", "Patient.identifier"],
        ),
        ("a claim of another type's profile is an issue", claim_of_another_type, vec!["Patient.meta.profile[0]"]),
    ];
    for (what, resource, expected) in cases {
        let mut found: Vec<String> =
            validator.validate(&resource).into_iter().filter_map(|issue| issue.expression).collect();
        found.sort();
        assert_eq!(found, expected, "{what}");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let mut resource = referral();
    resource["intent"] = json!("plan");
    resource["subject"] = json!({"reference": "Group/g"});
    resource.as_object_mut().map(|o| o.remove("authoredOn"));
    let found: Vec<Option<String>> = validator().validate(&resource).into_iter().map(|i| i.expression).collect();
    assert_eq!(found.len(), 3, "three problems, three issues: {found:?}");
}

#[test]
fn references_are_checked_only_when_their_type_can_be_told() {
    let cases: Vec<(&str, Value, usize)> = vec![
        ("a relative reference of the right type", json!({"reference": "Patient/p1"}), 0),
        ("an absolute reference of the right type", json!({"reference": "https://x.org/fhir/Patient/p1"}), 0),
        ("a versioned reference of the right type", json!({"reference": "Patient/p1/_history/2"}), 0),
        ("a urn:uuid inside a transaction", json!({"reference": "urn:uuid:9f0e4b2c-1c1e-4a55-9a3e-3f6c1d2b7a01"}), 0),
        ("a logical reference without a type", json!({"identifier": {"system": "s", "value": "v"}}), 0),
        (
            "a logical reference with the wrong type",
            json!({"type": "Group", "identifier": {"system": "s", "value": "v"}}),
            1,
        ),
        ("a relative reference of the wrong type", json!({"reference": "Group/g"}), 1),
        ("an absolute reference of the wrong type", json!({"reference": "https://x.org/fhir/Group/g/_history/1"}), 1),
    ];
    let validator = validator();
    for (what, subject, expected) in cases {
        let mut resource = referral();
        resource["subject"] = subject;
        assert_eq!(validator.validate(&resource).len(), expected, "{what}");
    }
}

#[test]
fn bindings_check_codes_by_strength() {
    let need =
        |code: &str| json!({"system": "https://linkbridge.scot/fhir/CodeSystem/social-need-category", "code": code});
    let preference =
        |code: &str| json!({"system": "https://linkbridge.scot/fhir/CodeSystem/contact-preference", "code": code});
    let cases: Vec<(&str, &str, Value, usize)> = vec![
        ("extensible: a code of the bound system", "/reasonCode", json!([{"coding": [need("housing")]}]), 0),
        ("extensible: text only", "/reasonCode", json!([{"text": "housing"}]), 0),
        (
            "extensible: another code system",
            "/reasonCode",
            json!([{"coding": [{"system": "http://snomed.info/sct", "code": "1"}]}]),
            0,
        ),
        ("extensible: an unknown code of the bound system", "/reasonCode", json!([{"coding": [need("x")]}]), 1),
        (
            "extensible: each unknown coding",
            "/reasonCode",
            json!([{"coding": [need("x"), need("y")]}, {"coding": [need("z")]}]),
            3,
        ),
        (
            "required: a code of the value set",
            "/orderDetail",
            json!([{"coding": [preference("contact-by-letter")]}]),
            0,
        ),
        (
            "required: the Gravity do-not-contact code",
            "/orderDetail",
            json!([{"coding": [preference("contacting-subject-prohibited")]}]),
            0,
        ),
        ("required: text only", "/orderDetail", json!([{"text": "letter"}]), 1),
        ("required: an unknown code", "/orderDetail", json!([{"coding": [preference("pigeon")]}]), 1),
        (
            "required: one good coding among others",
            "/orderDetail",
            json!([{"coding": [need("x"), preference("contact-by-email")]}]),
            0,
        ),
    ];
    let validator = validator();
    for (what, pointer, value, expected) in cases {
        let mut resource = referral();
        resource[&pointer[1..]] = value;
        assert_eq!(validator.validate(&resource).len(), expected, "{what}");
    }
}

/// A package of the embedded resources plus one StructureDefinition element.
fn package_with_element(element: Value) -> Package {
    let mut package = Package::embedded().expect("embedded loads");
    package.resources.push(json!({
        "resourceType": "StructureDefinition", "id": "t", "url": "https://linkbridge.scot/fhir/StructureDefinition/t",
        "type": "Consent", "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Consent",
        "differential": {"element": [element]}
    }));
    package
}

#[test]
fn a_package_using_a_rule_the_engine_does_not_know_is_refused() {
    let cases: Vec<(&str, Value)> = vec![
        ("slicing", json!({"path": "Consent.identifier", "slicing": {"rules": "open"}})),
        ("maxLength", json!({"path": "Consent.identifier", "maxLength": 10})),
        (
            "an invariant without a Rust check",
            json!({"path": "Consent", "constraint": [{"key": "x-1", "expression": "true"}]}),
        ),
        (
            "a binding to a value set outside the package",
            json!({"path": "Consent.status",
          "binding": {"strength": "required", "valueSet": "http://hl7.org/fhir/ValueSet/consent-state-codes"}}),
        ),
        ("an element of another type", json!({"path": "Patient.name", "min": 1})),
    ];
    for (what, element) in cases {
        assert!(Validator::new(package_with_element(element)).is_err(), "{what} is refused");
    }
}

#[test]
fn choice_elements_can_be_restricted_to_types() {
    let package = package_with_element(
        json!({"path": "Consent.source[x]", "type": [{"code": "Reference", "targetProfile": ["http://hl7.org/fhir/StructureDefinition/DocumentReference"]}]}),
    );
    let validator = Validator::new(package).expect("compiles");
    let claim = json!({"profile": ["https://linkbridge.scot/fhir/StructureDefinition/t"]});
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "an allowed type",
            json!({"resourceType": "Consent", "meta": claim, "sourceReference": {"reference": "DocumentReference/d"}}),
            vec![],
        ),
        (
            "another type",
            json!({"resourceType": "Consent", "meta": claim, "sourceAttachment": {"url": "http://x"}}),
            vec!["Consent.source.ofType(Attachment)"],
        ),
    ];
    for (what, resource, expected) in cases {
        let found: Vec<String> = validator.validate(&resource).into_iter().filter_map(|i| i.expression).collect();
        assert_eq!(found, expected, "{what}");
    }
}

#[test]
fn the_mode_decides_what_a_write_does_with_issues() {
    let mut broken = referral();
    broken.as_object_mut().map(|o| o.remove("requester"));
    let cases = [(ValidationMode::Enforce, 1), (ValidationMode::Warn, 0), (ValidationMode::Off, 0)];
    for (mode, expected) in cases {
        let check = ProfileCheck::load(None, mode, &KNOWN_CHI_SYSTEMS.map(str::to_owned)).expect("loads");
        assert_eq!(check.check_write(&broken).len(), expected, "{mode:?}");
    }
}

#[test]
fn an_operators_package_directory_replaces_the_compiled_in_one() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("profiles");
    for entry in std::fs::read_dir(&source).expect("profiles/") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().expect("name"))).expect("copied");
        }
    }
    // The operator's variant: a Patient needs no birth date.
    let patient_profile = dir.path().join("StructureDefinition-linkbridge-patient.json");
    let mut definition = read_json(&patient_profile);
    let elements = definition["differential"]["element"].as_array_mut().expect("elements");
    elements.retain(|e| e["path"] != "Patient.birthDate");
    std::fs::write(&patient_profile, definition.to_string()).expect("written");

    let without_birth_date = read_json(&examples_dir().join("invalid-Patient-no-birth-date.json"));
    let compiled_in = ProfileCheck::load(None, ValidationMode::Enforce, &KNOWN_CHI_SYSTEMS.map(str::to_owned))
        .expect("compiled-in package");
    let operators = ProfileCheck::load(
        Some(&dir.path().to_path_buf()),
        ValidationMode::Enforce,
        &KNOWN_CHI_SYSTEMS.map(str::to_owned),
    )
    .expect("operator's package");
    assert_eq!(compiled_in.check_write(&without_birth_date).len(), 1, "the compiled-in profile needs a birth date");
    assert_eq!(operators.check_write(&without_birth_date).len(), 0, "the operator's profile does not");

    std::fs::write(dir.path().join("ValueSet-broken.json"), "{").expect("written");
    assert!(
        ProfileCheck::load(
            Some(&dir.path().to_path_buf()),
            ValidationMode::Enforce,
            &KNOWN_CHI_SYSTEMS.map(str::to_owned)
        )
        .is_err(),
        "a broken package stops start-up"
    );
}

#[test]
fn the_readme_referral_example_is_the_valid_example() {
    let readme = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README");
    let section = readme.split("### Profiles").nth(1).expect("the README has a Profiles section");
    let block = section.split("```json").nth(1).and_then(|rest| rest.split("```").next()).expect("a JSON block");
    let shown: Value = serde_json::from_str(block).expect("the README's example is JSON");
    assert_eq!(shown, referral(), "README.md shows profiles/examples/ServiceRequest-referral.json");
}
