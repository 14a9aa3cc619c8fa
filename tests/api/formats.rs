//! Content negotiation (R4 http.html#mime): JSON and XML in and out, `_format`, `Accept`,
//! `Content-Type`, `_pretty`.

use reqwest::Method;
use serde_json::Value;

use crate::fixtures::patient;
use crate::helpers::{json_of, spawn_app, Party};

const PATIENT_XML: &str = r#"<Patient xmlns="http://hl7.org/fhir">
  <identifier><system value="https://fhir.nhs.uk/Id/nhs-number"/><value value="9434765919"/></identifier>
  <name><family value="MacLeod"/><given value="Morag"/></name>
  <gender value="female"/>
  <birthDate value="1961-04-12"/>
</Patient>"#;

#[tokio::test]
async fn an_xml_body_is_stored_and_served_back_as_json_or_xml() {
    let app = spawn_app().await;
    let response = app
        .as_party(Party::Gp, Method::POST, "/Patient")
        .await
        .header("Content-Type", "application/fhir+xml")
        .header("Accept", "application/fhir+xml")
        .body(PATIENT_XML)
        .send()
        .await
        .expect("post xml");
    assert_eq!(response.status(), 201);
    assert!(response.headers()["content-type"].to_str().expect("ct").starts_with("application/fhir+xml"));
    let location = response.headers()["location"].to_str().expect("location").to_owned();
    let xml = response.text().await.expect("xml");
    assert!(xml.contains("<family value=\"MacLeod\"/>"), "XML representation: {xml}");
    let id = location.split('/').nth_back(2).expect("id in Location").to_owned();

    let (status, json) = json_of(app.get(Party::Gp, &format!("/Patient/{id}")).await).await;
    assert_eq!(status, 200);
    assert_eq!(json["name"][0]["family"], "MacLeod", "the same resource as JSON: {json}");
    assert_eq!(json["birthDate"], "1961-04-12");
}

#[tokio::test]
async fn the_response_format_follows_format_then_accept() {
    let app = spawn_app().await;
    let id = app.created(Party::Gp, &patient("9434765919")).await["id"].as_str().expect("id").to_owned();
    let cases: &[(&str, Option<&str>, u16, &str)] = &[
        ("", None, 200, "application/fhir+json"),
        ("", Some("application/fhir+xml"), 200, "application/fhir+xml"),
        ("", Some("application/xml"), 200, "application/fhir+xml"),
        ("", Some("application/json"), 200, "application/fhir+json"),
        ("?_format=xml", Some("application/fhir+json"), 200, "application/fhir+xml"),
        ("?_format=json", None, 200, "application/fhir+json"),
        ("?_format=application/fhir%2Bxml", None, 200, "application/fhir+xml"),
        ("", Some("text/html"), 406, "application/fhir+json"),
        ("?_format=turtle", None, 406, "application/fhir+json"),
        ("", Some("application/fhir+json; fhirVersion=3.0"), 406, "application/fhir+json"),
    ];
    for (query, accept, status, content_type) in cases {
        let mut request = app.as_party(Party::Gp, Method::GET, &format!("/Patient/{id}{query}")).await;
        if let Some(accept) = accept {
            request = request.header("Accept", *accept);
        }
        let response = request.send().await.expect("get");
        assert_eq!(response.status().as_u16(), *status, "query {query:?} Accept {accept:?}");
        let got = response.headers()["content-type"].to_str().expect("ct").to_owned();
        assert!(got.starts_with(content_type), "query {query:?} Accept {accept:?}: {got}");
    }
}

#[tokio::test]
async fn pretty_printing_is_on_request_only() {
    let app = spawn_app().await;
    let id = app.created(Party::Gp, &patient("9434765919")).await["id"].as_str().expect("id").to_owned();
    let compact = app.get(Party::Gp, &format!("/Patient/{id}")).await.text().await.expect("text");
    let pretty = app.get(Party::Gp, &format!("/Patient/{id}?_pretty=true")).await.text().await.expect("text");
    assert!(!compact.contains('\n'), "compact by default");
    assert!(pretty.contains("\n  \"resourceType\""), "indented with _pretty: {pretty}");
    assert_eq!(
        serde_json::from_str::<Value>(&compact).expect("json"),
        serde_json::from_str::<Value>(&pretty).expect("json"),
        "the same content"
    );
}

#[tokio::test]
async fn a_body_in_an_unsupported_media_type_is_refused_with_415() {
    let app = spawn_app().await;
    for content_type in [Some("text/plain"), Some("application/x-www-form-urlencoded"), None] {
        let mut request =
            app.as_party(Party::Gp, Method::POST, "/Patient").await.body(patient("9434765919").to_string());
        if let Some(ct) = content_type {
            request = request.header("Content-Type", ct);
        }
        let (status, outcome) = json_of(request.send().await.expect("post")).await;
        assert_eq!(status, 415, "Content-Type {content_type:?}");
        assert_eq!(outcome["resourceType"], "OperationOutcome", "Content-Type {content_type:?}");
    }
}
