//! The social prescribing profiles on every write path: the package's valid examples are
//! stored, each invalid example is refused with exactly its expected issue on create, update,
//! patch, transaction and batch, and `$validate` reports the same without writing. The
//! expectations live beside the examples (`profiles/examples/expected-issues.json`).

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{json_of, spawn_app, spawn_app_with, test_database, test_settings, Db, Party, TestApp};
use linkbridge::profiles::ValidationMode;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/profiles/examples");

/// An example with the demo ODS codes replaced by the test clients' and `replacements` applied
/// (references to the example ids become references to stored resources).
fn example(name: &str, replacements: &[(String, String)]) -> Value {
    let mut text = std::fs::read_to_string(format!("{EXAMPLES}/{name}"))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .replace("DEMOGP1", Party::Gp.ods())
        .replace("DEMOCLW1", Party::Clw.ods());
    for (from, to) in replacements {
        text = text.replace(from.as_str(), to.as_str());
    }
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// (file name, expected expression, expected issue code) of every invalid example.
fn invalid_examples() -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(format!("{EXAMPLES}/expected-issues.json")).expect("expectations");
    let expected: Value = serde_json::from_str(&text).expect("expectations are JSON");
    let mut cases: Vec<(String, String, String)> = expected
        .as_object()
        .expect("an object keyed by file name")
        .iter()
        .map(|(name, want)| {
            let field = |key: &str| want[key].as_str().expect("expression and code").to_owned();
            (name.clone(), field("expression"), field("code"))
        })
        .collect();
    cases.sort();
    cases
}

/// Who writes each profiled type.
fn writer(resource_type: &str) -> Party {
    if resource_type == "CarePlan" {
        Party::Clw
    } else {
        Party::Gp
    }
}

/// Stores the valid examples, each referring to the ones stored before it; returns the id of
/// each type's stored example and the reference replacements for the invalid ones.
async fn store_valid_examples(app: &TestApp) -> (Vec<(String, String)>, Vec<(String, String)>) {
    let mut replacements: Vec<(String, String)> = Vec::new();
    let mut ids = Vec::new();
    let order = [
        ("Patient-nhs-number.json", Some("Patient/example-patient")),
        ("Patient-chi-number.json", None),
        ("ServiceRequest-referral.json", Some("ServiceRequest/example-referral")),
        ("Task-referral.json", None),
        ("CarePlan-link-worker.json", None),
    ];
    for (name, referred_to_as) in order {
        let resource = example(name, &replacements);
        let resource_type = resource["resourceType"].as_str().expect("type").to_owned();
        let response = app.create(writer(&resource_type), &resource).await;
        let (status, stored) = json_of(response).await;
        assert_eq!(status, 201, "the valid example {name} is stored: {stored}");
        let id = stored["id"].as_str().expect("id").to_owned();
        if let Some(example_reference) = referred_to_as {
            replacements.push((example_reference.to_owned(), format!("{resource_type}/{id}")));
        }
        if name == "Patient-nhs-number.json" {
            // The referral's supportingInfo names the patient's consent: a write may name only
            // resources that exist and its writer may read.
            let consent = app.created(Party::Gp, &crate::fixtures::consent(&format!("Patient/{id}"))).await;
            let consent_id = consent["id"].as_str().expect("id");
            replacements.push(("Consent/example-consent".to_owned(), format!("Consent/{consent_id}")));
        }
        ids.push((resource_type, id));
    }
    (ids, replacements)
}

/// The one issue of a refusal: (status, expression, code), or a message saying what came instead.
fn only_issue(status: u16, outcome: &Value) -> (u16, String, String) {
    let issues = outcome["issue"].as_array().cloned().unwrap_or_default();
    assert_eq!(issues.len(), 1, "exactly one issue: {outcome}");
    let expression = issues[0]["expression"][0].as_str().unwrap_or("(none)").to_owned();
    let code = issues[0]["code"].as_str().unwrap_or("(none)").to_owned();
    (status, expression, code)
}

async fn send(
    app: &TestApp,
    party: Party,
    method: Method,
    path: &str,
    content_type: &str,
    body: &Value,
) -> (u16, Value) {
    json_of(
        app.as_party(party, method, path)
            .await
            .header("Content-Type", content_type)
            .body(body.to_string())
            .send()
            .await
            .expect("request"),
    )
    .await
}

#[tokio::test]
async fn every_invalid_example_is_refused_with_its_issue_on_every_write_path() {
    let app = spawn_app().await;
    let (ids, replacements) = store_valid_examples(&app).await;
    let id_of = |resource_type: &str| {
        ids.iter().find(|(t, _)| t == resource_type).map(|(_, id)| id.clone()).expect("a stored example of the type")
    };
    for (name, expression, code) in invalid_examples() {
        let resource = example(&name, &replacements);
        let resource_type = resource["resourceType"].as_str().expect("type").to_owned();
        let party = writer(&resource_type);
        let want = (422, expression.clone(), code.clone());

        let (status, outcome) = json_of(app.create(party, &resource).await).await;
        assert_eq!(only_issue(status, &outcome), want, "{name}: create");

        let id = id_of(&resource_type);
        let mut with_id = resource.clone();
        with_id["id"] = json!(id);
        let path = format!("/{resource_type}/{id}");
        let (status, outcome) = send(&app, party, Method::PUT, &path, "application/fhir+json", &with_id).await;
        assert_eq!(only_issue(status, &outcome), want, "{name}: update");

        let patch = json!([{"op": "replace", "path": "", "value": with_id}]);
        let (status, outcome) = send(&app, party, Method::PATCH, &path, "application/json-patch+json", &patch).await;
        assert_eq!(only_issue(status, &outcome), want, "{name}: patch result");

        let entry = json!({"fullUrl": "urn:uuid:5a2f9a4e-0d1b-4f7e-9a51-4a3f1c2b0d11", "resource": resource,
                           "request": {"method": "POST", "url": resource_type}});
        let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [entry]});
        let (status, outcome) = send(&app, party, Method::POST, "/", "application/fhir+json", &transaction).await;
        assert_eq!(only_issue(status, &outcome), want, "{name}: transaction entry");

        let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [entry]});
        let (status, response) = send(&app, party, Method::POST, "/", "application/fhir+json", &batch).await;
        assert_eq!(status, 200, "{name}: a batch answers 200 with per-entry results: {response}");
        let entry_status: u16 = response["entry"][0]["response"]["status"]
            .as_str()
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert_eq!(only_issue(entry_status, &response["entry"][0]["response"]["outcome"]), want, "{name}: batch entry");

        let (status, outcome) =
            send(&app, party, Method::POST, &format!("/{resource_type}/$validate"), "application/fhir+json", &resource)
                .await;
        assert_eq!(only_issue(status, &outcome), (200, expression, code), "{name}: $validate reports it");
    }
    for (resource_type, id) in &ids {
        let (status, stored) = json_of(app.get(writer(resource_type), &format!("/{resource_type}/{id}")).await).await;
        assert_eq!(
            (status, stored["meta"]["versionId"].as_str()),
            (200, Some("1")),
            "{resource_type}: nothing was written"
        );
    }
}

#[tokio::test]
async fn validate_accepts_the_valid_examples_and_a_named_profile_without_writing() {
    let app = spawn_app().await;
    let validate = |resource_type: &str, query: &str| format!("/{resource_type}/$validate{query}");
    for name in [
        "Patient-nhs-number.json",
        "Patient-chi-number.json",
        "ServiceRequest-referral.json",
        "Task-referral.json",
        "CarePlan-link-worker.json",
    ] {
        let resource = example(name, &[]);
        let resource_type = resource["resourceType"].as_str().expect("type").to_owned();
        let (status, outcome) = send(
            &app,
            writer(&resource_type),
            Method::POST,
            &validate(&resource_type, ""),
            "application/fhir+json",
            &resource,
        )
        .await;
        assert_eq!(status, 200, "{name}: {outcome}");
        assert_eq!(outcome["issue"][0]["severity"], "information", "{name}: no issues: {outcome}");
    }
    let unclaimed_patient = json!({"resourceType": "Patient", "name": [{"family": "Nobody"}]});
    let patient_profile = "https://linkbridge.scot/fhir/StructureDefinition/linkbridge-patient";
    let parameters = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": unclaimed_patient},
        {"name": "profile", "valueUri": patient_profile}
    ]});
    let cases: Vec<(&str, String, Value, u16, Vec<&str>)> = vec![
        (
            "a Patient claiming nothing conforms to nothing in particular",
            validate("Patient", ""),
            unclaimed_patient.clone(),
            200,
            vec![],
        ),
        (
            "the profile parameter applies that profile",
            validate("Patient", &format!("?profile={patient_profile}")),
            unclaimed_patient.clone(),
            200,
            vec!["Patient.birthDate", "Patient.identifier", "Patient.identifier"],
        ),
        (
            "a Parameters body with resource and profile",
            validate("Patient", ""),
            parameters,
            200,
            vec!["Patient.birthDate", "Patient.identifier", "Patient.identifier"],
        ),
        (
            "structure problems come first, as a write would meet them",
            validate("Patient", ""),
            json!({"resourceType": "Patient", "birthDate": "1961-02-30"}),
            200,
            vec!["Patient.birthDate"],
        ),
        (
            "an unknown profile is a client error",
            validate("Patient", "?profile=https://example.org/p"),
            unclaimed_patient.clone(),
            400,
            vec![],
        ),
    ];
    for (what, path, body, want_status, mut want) in cases {
        let (status, outcome) = send(&app, Party::Gp, Method::POST, &path, "application/fhir+json", &body).await;
        assert_eq!(status, want_status, "{what}: {outcome}");
        if status != 200 {
            continue;
        }
        let mut found: Vec<&str> = outcome["issue"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["severity"] == "error")
            .filter_map(|i| i["expression"][0].as_str())
            .collect();
        found.sort_unstable();
        want.sort_unstable();
        assert_eq!(found, want, "{what}: {outcome}");
    }
    let (_, search) = json_of(app.get(Party::Gp, "/Patient").await).await;
    assert_eq!(search["total"].as_u64().unwrap_or(0), 0, "$validate wrote nothing: {search}");
}

#[tokio::test]
async fn the_mode_setting_lets_an_operator_warn_or_switch_profile_checks_off() {
    for mode in [ValidationMode::Warn, ValidationMode::Off] {
        let database = test_database(Db::Sqlite).await.expect("sqlite");
        let settings = linkbridge::config::Settings { profile_validation: mode, ..test_settings(&database) };
        let app = spawn_app_with(database, settings).await;
        let broken = example("invalid-Patient-nhs-number-check-digit.json", &[]);
        let (status, body) = json_of(app.create(Party::Gp, &broken).await).await;
        assert_eq!(status, 201, "{mode:?}: accepted: {body}");
        let (status, outcome) =
            send(&app, Party::Gp, Method::POST, "/Patient/$validate", "application/fhir+json", &broken).await;
        assert_eq!(only_issue(status, &outcome).1, "Patient.identifier[0].value", "{mode:?}: $validate still checks");
    }
}

/// What a response body must show.
type ContentCheck = Box<dyn Fn(&Value) -> bool>;

#[tokio::test]
async fn the_package_is_readable_and_named_in_the_capability_statement() {
    let app = spawn_app().await;
    let cases: Vec<(&str, u16, ContentCheck)> = vec![
        ("/StructureDefinition/linkbridge-referral-task", 200, Box::new(|b| b["type"] == "Task")),
        (
            "/StructureDefinition/linkbridge-patient",
            200,
            Box::new(|b| b["baseDefinition"] == "http://hl7.org/fhir/StructureDefinition/Patient"),
        ),
        ("/ValueSet/referral-status-reason", 200, Box::new(|b| b.to_string().contains("\"RRNA\""))),
        (
            "/CodeSystem/referral-status-reason",
            200,
            Box::new(|b| ["RRNA", "FC", "OTH"].iter().all(|c| b.to_string().contains(&format!("\"{c}\"")))),
        ),
        ("/StructureDefinition", 200, Box::new(|b| b["total"] == 4)),
        (
            "/ValueSet?url=https://linkbridge.scot/fhir/ValueSet/social-need-category",
            200,
            Box::new(|b| b["total"] == 1),
        ),
        ("/CodeSystem/no-such-system", 404, Box::new(|b| b["resourceType"] == "OperationOutcome")),
    ];
    for (path, want_status, check) in cases {
        let (status, body) = json_of(app.get(Party::Clw, path).await).await;
        assert_eq!(status, want_status, "{path}: {body}");
        assert!(check(&body), "{path}: content: {body}");
    }
    let unauthenticated = app.http.get(app.url("/StructureDefinition/linkbridge-patient")).send().await.expect("get");
    assert_eq!(unauthenticated.status(), 401, "behind the token like every FHIR endpoint");

    let (_, capability) = json_of(app.http.get(app.url("/metadata")).send().await.expect("metadata")).await;
    let resources = capability["rest"][0]["resource"].as_array().cloned().unwrap_or_default();
    let profiles_of = |resource_type: &str| -> Vec<String> {
        resources
            .iter()
            .find(|r| r["type"] == resource_type)
            .and_then(|r| r["supportedProfile"].as_array())
            .map(|p| p.iter().filter_map(|u| u.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    for (resource_type, id) in [
        ("ServiceRequest", "linkbridge-referral-servicerequest"),
        ("Task", "linkbridge-referral-task"),
        ("CarePlan", "linkbridge-link-worker-careplan"),
        ("Patient", "linkbridge-patient"),
    ] {
        assert_eq!(
            profiles_of(resource_type),
            vec![format!("https://linkbridge.scot/fhir/StructureDefinition/{id}")],
            "{resource_type}"
        );
    }
    for conformance_type in ["StructureDefinition", "ValueSet", "CodeSystem"] {
        assert!(resources.iter().any(|r| r["type"] == conformance_type), "{conformance_type} is listed");
    }
}

#[tokio::test]
async fn chi_numbers_of_either_check_digit_scheme_are_accepted_in_every_known_chi_system() {
    let app = spawn_app().await;
    let patient = |system: &str, chi: &str| {
        json!({"resourceType": "Patient",
               "meta": {"profile": ["https://linkbridge.scot/fhir/StructureDefinition/linkbridge-patient"]},
               "identifier": [{"system": system, "value": chi}],
               "name": [{"family": "Reid", "given": ["Tam"]}], "birthDate": "1962-07-15"})
    };
    let cases = [
        (
            "a modulus-10 CHI number (Public Health Scotland, from February 2026)",
            "https://fhir.nhs.uk/Id/chi-number",
            "1507621231",
            201,
        ),
        ("a modulus-11 CHI number", "https://fhir.nhs.uk/Id/chi-number", "1204610126", 201),
        ("the Scottish national system", "http://fhir.nhs.scot.uk/Id/national/chi-number", "1507621231", 201),
        ("the HL7 UK OID", "urn:oid:2.16.840.1.113883.2.1.3.2.4.16.53", "1507621231", 201),
        ("a check digit wrong under both schemes", "https://fhir.nhs.uk/Id/chi-number", "1507621232", 422),
        ("checked in the OID system too", "urn:oid:2.16.840.1.113883.2.1.3.2.4.16.53", "1507621232", 422),
    ];
    for (what, system, chi, want) in cases {
        let (status, body) = json_of(app.create(Party::Gp, &patient(system, chi)).await).await;
        assert_eq!(status, want, "{what}: {body}");
        if want == 422 {
            assert_eq!(body["issue"][0]["expression"][0], "Patient.identifier[0].value", "{what}: {body}");
        }
    }
}
