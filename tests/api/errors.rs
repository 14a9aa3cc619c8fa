//! Bad input gets a 4xx OperationOutcome that says what and where; never a 5xx.

use reqwest::Method;
use serde_json::{json, Value};

use crate::fixtures::patient;
use crate::helpers::{json_of, spawn_app, Party, TestApp};

async fn post_raw(app: &TestApp, path: &str, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    json_of(
        app.as_party(Party::Gp, Method::POST, path)
            .await
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .expect("post"),
    )
    .await
}

#[tokio::test]
async fn malformed_bodies_are_refused_with_an_outcome_that_says_where() {
    let app = spawn_app().await;
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let cases: Vec<(String, u16, Option<&str>, &str)> = vec![
        ("{not json".into(), 400, None, "syntax error"),
        (String::new(), 400, None, "empty body"),
        ("[]".into(), 400, None, "not an object"),
        (json!({"name": [{"family": "X"}]}).to_string(), 400, Some("resourceType"), "no resourceType"),
        (
            json!({"resourceType": "Task", "status": "requested"}).to_string(),
            400,
            Some("resourceType"),
            "wrong type for the endpoint",
        ),
        (
            json!({"resourceType": "Patient", "favouriteColour": "blue"}).to_string(),
            400,
            Some("Patient.favouriteColour"),
            "unknown element",
        ),
        (json!({"resourceType": "Patient", "gender": 7}).to_string(), 400, Some("Patient.gender"), "wrong JSON type"),
        (
            json!({"resourceType": "Patient", "name": {"family": "X"}}).to_string(),
            400,
            Some("Patient.name"),
            "object where an array belongs",
        ),
        (deep, 400, None, "deeply nested JSON"),
        (
            json!({"resourceType": "Patient", "birthDate": "2024-02-30"}).to_string(),
            400,
            Some("Patient.birthDate"),
            "a date that does not exist",
        ),
        (
            json!({"resourceType": "Patient", "gender": "bogus"}).to_string(),
            400,
            Some("Patient.gender"),
            "a code outside a required binding",
        ),
        (
            json!({"resourceType": "Patient", "active": "true"}).to_string(),
            400,
            Some("Patient.active"),
            "a boolean as a string",
        ),
    ];
    for (body, status, expression, why) in cases {
        let (got, outcome) = post_raw(&app, "/Patient", "application/fhir+json", body).await;
        assert_eq!(got, status, "{why}: {outcome}");
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{why}");
        assert_eq!(outcome["issue"][0]["severity"], "error", "{why}");
        assert!(outcome["issue"][0]["diagnostics"].as_str().is_some_and(|d| !d.is_empty()), "{why}: diagnostics");
        if let Some(expression) = expression {
            assert_eq!(outcome["issue"][0]["expression"][0], expression, "{why}: {outcome}");
        }
    }
}

#[tokio::test]
async fn malformed_xml_is_a_400_not_a_crash() {
    let app = spawn_app().await;
    for body in ["<Patient xmlns=\"http://hl7.org/fhir\"><gender value=\"female\"", "<Nope/>", "not xml at all"] {
        let (status, outcome) = post_raw(&app, "/Patient", "application/fhir+xml", body).await;
        assert_eq!(status, 400, "{body}: {outcome}");
        assert_eq!(outcome["resourceType"], "OperationOutcome");
    }
}

#[tokio::test]
async fn an_oversized_body_is_refused_with_413() {
    let app = spawn_app().await;
    let mut big = patient("9434765919");
    big["name"][0]["family"] = json!("x".repeat(app.settings.max_body_bytes + 1));
    let (status, outcome) = post_raw(&app, "/Patient", "application/fhir+json", big.to_string()).await;
    assert_eq!(status, 413, "{outcome}");
    assert_eq!(outcome["issue"][0]["code"], "too-long");
}

#[tokio::test]
async fn unknown_routes_types_and_methods_answer_with_operation_outcomes() {
    let app = spawn_app().await;
    let id = app.created(Party::Gp, &patient("9434765919")).await["id"].as_str().expect("id").to_owned();
    let cases: Vec<(Method, String, u16, &str)> = vec![
        (Method::GET, "/Observation/1".into(), 404, "not-supported"),
        (Method::POST, "/Observation".into(), 404, "not-supported"),
        (Method::GET, "/no/such/route/at/all".into(), 404, "not-supported"),
        (Method::POST, format!("/Patient/{id}"), 405, "not-supported"),
        (Method::DELETE, "/metadata".into(), 405, "not-supported"),
        (Method::GET, "/Patient/bad%20id".into(), 400, "invalid"),
        (Method::GET, format!("/Patient/{id}/_history/zero"), 400, "invalid"),
    ];
    for (method, path, status, code) in cases {
        let response = app.as_party(Party::Gp, method.clone(), &path).await.send().await.expect("request");
        let (got, outcome) = json_of(response).await;
        assert_eq!(got, status, "{method} {path}: {outcome}");
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{method} {path}");
        assert_eq!(outcome["issue"][0]["code"], code, "{method} {path}");
    }
}

#[tokio::test]
async fn the_capability_statement_lists_every_served_type_and_its_interactions() {
    let app = spawn_app().await;
    let (status, capability) = json_of(app.http.get(app.url("/metadata")).send().await.expect("metadata")).await;
    assert_eq!(status, 200);
    assert_eq!(capability["resourceType"], "CapabilityStatement");
    assert_eq!(capability["fhirVersion"], "4.0.1");
    let resources = capability["rest"][0]["resource"].as_array().expect("resources");
    // The audit trail and the read-only profile package are listed beside the served types.
    let listed_beside = |t: &str| t == "AuditEvent" || linkbridge::http::conformance::CONFORMANCE_TYPES.contains(&t);
    let types: Vec<&str> = resources.iter().filter_map(|r| r["type"].as_str()).filter(|t| !listed_beside(t)).collect();
    let served: Vec<&str> = linkbridge::domain::resource_type::ResourceType::ALL.iter().map(|t| t.as_str()).collect();
    assert_eq!(types, served, "generated from the router's registry");
    let system: Vec<&str> = capability["rest"][0]["interaction"]
        .as_array()
        .expect("system")
        .iter()
        .filter_map(|i| i["code"].as_str())
        .collect();
    assert_eq!(system, vec!["transaction", "batch"]);
    for resource in resources.iter().filter(|r| !r["type"].as_str().is_some_and(listed_beside)) {
        let interactions: Vec<&str> =
            resource["interaction"].as_array().expect("i").iter().filter_map(|i| i["code"].as_str()).collect();
        for expected in ["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create"] {
            assert!(interactions.contains(&expected), "{} lacks {expected}", resource["type"]);
        }
    }
    let formats = capability["format"].as_array().expect("formats");
    assert!(formats.contains(&json!("application/fhir+xml")));
}

#[tokio::test]
async fn health_and_readiness_probes_answer_without_a_token() {
    let app = spawn_app().await;
    for path in ["/healthz", "/readyz"] {
        let response = app.http.get(app.url(path)).send().await.expect("probe");
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn a_task_with_a_bogus_status_and_an_impossible_date_is_refused_with_both_problems() {
    let app = spawn_app().await;
    let task = json!({
        "resourceType": "Task", "status": "bogus", "intent": "order", "authoredOn": "2024-13-45"
    });
    let (status, outcome) = post_raw(&app, "/Task", "application/fhir+json", task.to_string()).await;
    assert_eq!(status, 400, "{outcome}");
    let expressions: Vec<&str> =
        outcome["issue"].as_array().expect("issues").iter().filter_map(|i| i["expression"][0].as_str()).collect();
    assert!(expressions.contains(&"Task.status"), "status reported: {outcome}");
    assert!(expressions.contains(&"Task.authoredOn"), "date reported: {outcome}");
}

#[tokio::test]
async fn empty_arrays_in_any_body_are_refused_with_their_path_and_the_server_keeps_serving() {
    let app = spawn_app().await;
    // $validate reports what it found with 200 (R4 resource-operation-validate); the rest refuse.
    let cases: [(&str, Value, u16, &str); 4] = [
        ("/Patient", json!({"resourceType": "Patient", "name": []}), 400, "Patient.name"),
        ("/Patient", json!({"resourceType": "Patient", "name": [{"given": []}]}), 400, "Patient.name[0].given"),
        ("/Patient/$validate", json!({"resourceType": "Patient", "name": []}), 200, "Patient.name"),
        ("/", json!({"resourceType": "Bundle", "type": "batch", "entry": []}), 400, "Bundle.entry"),
    ];
    for (path, body, expected, expression) in cases {
        let (status, outcome) = post_raw(&app, path, "application/fhir+json", body.to_string()).await;
        assert_eq!(status, expected, "{path} {body}: {outcome}");
        assert_eq!(outcome["issue"][0]["expression"][0], expression, "{outcome}");
    }
    let created = app.created(Party::Gp, &patient(&crate::fixtures::nhs_number())).await;
    let id = created["id"].as_str().expect("id");
    let patch = json!([{"op": "add", "path": "/identifier", "value": []}]);
    let (status, outcome) = json_of(
        app.as_party(Party::Gp, Method::PATCH, &format!("/Patient/{id}"))
            .await
            .header("Content-Type", "application/json-patch+json")
            .body(patch.to_string())
            .send()
            .await
            .expect("patch"),
    )
    .await;
    assert!(status == 400 || status == 422, "a patch leaving an empty array is refused: {status} {outcome}");
    let (status, _) = json_of(app.get(Party::Gp, &format!("/Patient/{id}")).await).await;
    assert_eq!(status, 200, "the server still serves after every refusal");
}

#[tokio::test]
async fn empty_results_are_bundles_without_entries_in_json_and_in_xml() {
    let app = spawn_app().await;
    for path in ["/Task", "/Task?_summary=count", "/Task/_history", "/CodeSystem?url=urn:nothing", "/Task?_format=xml"]
    {
        let response = app.get(Party::Gp, path).await;
        assert_eq!(response.status(), 200, "{path}");
        let text = response.text().await.expect("body");
        assert!(!text.contains(r#""entry":[]"#) && !text.contains("<entry"), "{path}: {text}");
    }
    let (status, response) =
        post_raw(&app, "/", "application/fhir+json", r#"{"resourceType":"Bundle","type":"batch"}"#).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["type"], "batch-response");
    assert!(response.get("entry").is_none(), "{response}");
    let metadata = app.http.get(app.url("/metadata?_format=xml")).send().await.expect("metadata");
    assert_eq!(metadata.status(), 200, "the CapabilityStatement renders as XML");
}

#[tokio::test]
async fn a_subset_keeps_mandatory_elements_so_it_renders_as_xml() {
    let app = spawn_app().await;
    let patient = app.created(Party::Gp, &patient(&crate::fixtures::nhs_number())).await;
    let consent = crate::fixtures::consent(&format!("Patient/{}", patient["id"].as_str().expect("id")));
    app.created(Party::Gp, &consent).await;
    let response = app.get(Party::Gp, "/Consent?_elements=status&_format=xml").await;
    assert_eq!(response.status(), 200);
    let xml = response.text().await.expect("xml");
    assert!(xml.contains("<scope>") && xml.contains("SUBSETTED"), "{xml}");
}

#[tokio::test]
async fn a_nameless_query_parameter_and_a_wrong_method_get_well_formed_refusals() {
    let app = spawn_app().await;
    let response =
        app.as_party(Party::Gp, Method::GET, "/Task?=x").await.header("Prefer", "handling=strict").send().await;
    let (status, outcome) = json_of(response.expect("search")).await;
    assert_eq!(status, 400, "{outcome}");
    assert!(outcome["issue"][0].get("expression").is_none(), "no empty expression: {outcome}");
    for (method, path, allow) in [(Method::DELETE, "/metadata", "GET"), (Method::PUT, "/Task", "GET, POST")] {
        let response = app.as_party(Party::Gp, method.clone(), path).await.send().await.expect("request");
        assert_eq!(response.status(), 405, "{method} {path}");
        assert_eq!(response.headers()["allow"], allow, "{method} {path}");
    }
}
