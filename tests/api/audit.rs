//! The audit trail: every access to patient data, and every refused attempt, is an AuditEvent
//! the operator (and only the operator) can read.

use reqwest::Method;
use serde_json::Value;

use crate::fixtures::patient;
use crate::helpers::{json_of, spawn_app, Party, TestApp};

async fn events_about(app: &TestApp, entity: &str) -> Vec<Value> {
    let (status, bundle) =
        json_of(app.get(Party::Operator, &format!("/AuditEvent?entity={entity}&_count=100")).await).await;
    assert_eq!(status, 200, "{bundle}");
    bundle["entry"].as_array().expect("entries").iter().map(|e| e["resource"].clone()).collect()
}

fn summary(event: &Value) -> (String, String, String, String) {
    (
        event["subtype"][0]["code"].as_str().unwrap_or_default().to_owned(),
        event["action"].as_str().unwrap_or_default().to_owned(),
        event["outcome"].as_str().unwrap_or_default().to_owned(),
        event["agent"][0]["who"]["identifier"]["value"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn writes_reads_and_refusals_of_patient_data_are_all_audited() {
    let app = spawn_app().await;
    let id = app.created(Party::Gp, &patient("9434765919")).await["id"].as_str().expect("id").to_owned();
    let path = format!("/Patient/{id}");
    assert_eq!(app.get(Party::Gp, &path).await.status(), 200);
    assert_eq!(app.get(Party::OtherGp, &path).await.status(), 404, "another practice is refused");
    assert_eq!(app.http.get(app.url(&path)).send().await.expect("get").status(), 401);
    let bad_update = app
        .as_party(Party::Gp, Method::PUT, &path)
        .await
        .header("Content-Type", "application/fhir+json")
        .body("{}")
        .send()
        .await
        .expect("put");
    assert_eq!(bad_update.status(), 400);

    let mut events: Vec<_> = events_about(&app, &format!("Patient/{id}")).await.iter().map(summary).collect();
    events.sort();
    let expected = |i: &str, a: &str, o: &str, who: &str| (i.to_owned(), a.to_owned(), o.to_owned(), who.to_owned());
    let mut wanted = vec![
        expected("create", "C", "0", "gp-system"),
        expected("read", "R", "0", "gp-system"),
        expected("read", "R", "4", "gp-other"),
        expected("read", "R", "4", "unauthenticated"),
        expected("update", "U", "4", "gp-system"),
    ];
    wanted.sort();
    assert_eq!(events, wanted, "one event per access, with who and outcome");
}

#[tokio::test]
async fn audit_events_carry_no_patient_details() {
    let app = spawn_app().await;
    let id = app.created(Party::Gp, &patient("9434765919")).await["id"].as_str().expect("id").to_owned();
    let events = events_about(&app, &format!("Patient/{id}")).await;
    let text = serde_json::to_string(&events).expect("json");
    for detail in ["9434765919", "MacLeod", "1961-04-12"] {
        assert!(!text.contains(detail), "audit must not copy patient data ({detail})");
    }
    assert!(text.contains(&format!("Patient/{id}")), "it names the resource by reference");
}

#[tokio::test]
async fn only_the_operator_reads_the_audit_trail() {
    let app = spawn_app().await;
    app.created(Party::Gp, &patient("9434765919")).await;
    for party in [Party::Gp, Party::Clw] {
        let (status, outcome) = json_of(app.get(party, "/AuditEvent").await).await;
        assert_eq!(status, 403, "{party:?}: {outcome}");
    }
    let (status, bundle) = json_of(app.get(Party::Operator, "/AuditEvent").await).await;
    assert_eq!(status, 200);
    let first = &bundle["entry"][0]["resource"];
    let id = first["id"].as_str().expect("event id");
    let (status, event) = json_of(app.get(Party::Operator, &format!("/AuditEvent/{id}")).await).await;
    assert_eq!((status, &event), (200, first), "read by id");
}
