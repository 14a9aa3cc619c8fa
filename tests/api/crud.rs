//! The RESTful interactions of R4 http.html: create, read, vread, update, patch, delete,
//! history and conditional create.

use reqwest::Method;
use serde_json::{json, Value};

use crate::fixtures::{patient, service_request};
use crate::helpers::{json_of, spawn_app, spawn_app_on, Db, Party, TestApp};
use crate::on_both_databases;

async fn put(app: &TestApp, party: Party, path: &str, body: &Value, if_match: Option<&str>) -> reqwest::Response {
    app.send_as(party, Method::PUT, path, Some(("application/fhir+json", body.to_string())), if_match).await
}

async fn patch(app: &TestApp, path: &str, ops: &Value, if_match: Option<&str>) -> reqwest::Response {
    app.send_as(Party::Gp, Method::PATCH, path, Some(("application/json-patch+json", ops.to_string())), if_match).await
}

#[tokio::test]
async fn create_answers_201_with_location_etag_last_modified_and_the_stored_resource() {
    let app = spawn_app().await;
    let response = app.create(Party::Gp, &patient("9434765919")).await;
    assert_eq!(response.status(), 201);
    let headers = response.headers().clone();
    let body: Value = response.json().await.expect("json");
    let id = body["id"].as_str().expect("server assigned an id");
    assert_eq!(
        headers["location"].to_str().expect("location"),
        app.url(&format!("/Patient/{id}/_history/1")),
        "Location names the new version"
    );
    assert_eq!(headers["etag"], "W/\"1\"");
    assert!(headers.contains_key("last-modified"), "Last-Modified is set");
    assert!(headers["content-type"].to_str().expect("ct").starts_with("application/fhir+json"));
    assert_eq!(body["meta"]["versionId"], "1");
    assert!(body["meta"]["lastUpdated"].as_str().is_some_and(|t| t.ends_with('Z')));
}

#[tokio::test]
async fn an_id_in_a_created_body_is_replaced_by_the_servers() {
    let app = spawn_app().await;
    let mut resource = patient("9434765919");
    resource["id"] = json!("client-chosen");
    let body = app.created(Party::Gp, &resource).await;
    assert_ne!(body["id"], "client-chosen");
}

#[tokio::test]
async fn the_prefer_header_chooses_what_a_write_returns() {
    let app = spawn_app().await;
    let cases =
        [("return=minimal", ""), ("return=representation", "Patient"), ("return=OperationOutcome", "OperationOutcome")];
    for (prefer, expected_type) in cases {
        let response = app
            .as_party(Party::Gp, Method::POST, "/Patient")
            .await
            .header("Content-Type", "application/fhir+json")
            .header("Prefer", prefer)
            .body(patient("9434765919").to_string())
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), 201, "{prefer}");
        assert!(response.headers().contains_key("location"), "{prefer}: Location always present");
        let text = response.text().await.expect("text");
        if expected_type.is_empty() {
            assert!(text.is_empty(), "{prefer}: empty body, got {text}");
        } else {
            let body: Value = serde_json::from_str(&text).expect("json");
            assert_eq!(body["resourceType"], expected_type, "{prefer}");
        }
    }
}

#[tokio::test]
async fn read_vread_update_and_history_follow_the_versions() {
    let app = spawn_app().await;
    let created = app.created(Party::Gp, &patient("9434765919")).await;
    let id = created["id"].as_str().expect("id").to_owned();
    let path = format!("/Patient/{id}");

    let (status, read) = json_of(app.get(Party::Gp, &path).await).await;
    assert_eq!((status, &read), (200, &created), "read returns what create stored");

    let mut changed = created.clone();
    changed["gender"] = json!("other");
    let response = put(&app, Party::Gp, &path, &changed, Some("W/\"1\"")).await;
    assert_eq!(response.headers()["etag"], "W/\"2\"");
    let (status, updated) = json_of(response).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["meta"]["versionId"], "2");
    assert_eq!(updated["gender"], "other");

    let (status, v1) = json_of(app.get(Party::Gp, &format!("{path}/_history/1")).await).await;
    assert_eq!((status, v1["gender"].as_str()), (200, Some("female")), "vread of version 1");
    let (status, _) = json_of(app.get(Party::Gp, &format!("{path}/_history/9")).await).await;
    assert_eq!(status, 404, "unknown version");

    let (status, history) = json_of(app.get(Party::Gp, &format!("{path}/_history")).await).await;
    assert_eq!(status, 200);
    assert_eq!(history["type"], "history");
    let versions: Vec<&str> = history["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["resource"]["meta"]["versionId"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(versions, vec!["2", "1"], "newest first");
    assert_eq!(history["entry"][1]["request"]["method"], "POST");
    assert_eq!(history["entry"][0]["request"]["method"], "PUT");
}

#[tokio::test]
async fn an_update_with_a_stale_if_match_is_refused_with_412() {
    let app = spawn_app().await;
    let created = app.created(Party::Gp, &patient("9434765919")).await;
    let path = format!("/Patient/{}", created["id"].as_str().expect("id"));
    assert_eq!(put(&app, Party::Gp, &path, &created, Some("W/\"1\"")).await.status(), 200);
    let (status, outcome) = json_of(put(&app, Party::Gp, &path, &created, Some("W/\"1\"")).await).await;
    assert_eq!(status, 412, "{outcome}");
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    let (status, _) = json_of(put(&app, Party::Gp, &path, &created, Some("not-an-etag")).await).await;
    assert_eq!(status, 400, "malformed If-Match");
}

async fn racing_updates_from_one_version_give_one_success_and_412s(db: Db) {
    let Some(app) = spawn_app_on(db).await else { return };
    let created = app.created(Party::Gp, &patient("9434765919")).await;
    let path = format!("/Patient/{}", created["id"].as_str().expect("id"));
    let racers = (0..6).map(|i| {
        let mut body = created.clone();
        body["name"][0]["family"] = json!(format!("Racer{i}"));
        let app = &app;
        let path = path.clone();
        async move { put(app, Party::Gp, &path, &body, Some("W/\"1\"")).await.status().as_u16() }
    });
    let mut statuses = futures::future::join_all(racers).await;
    statuses.sort();
    assert_eq!(statuses, vec![200, 412, 412, 412, 412, 412], "one winner, the rest 412");
    let (_, history) = json_of(app.get(Party::Gp, &format!("{path}/_history")).await).await;
    assert_eq!(history["entry"].as_array().map(Vec::len), Some(2), "exactly one new version");
}

#[tokio::test]
async fn an_update_whose_body_id_disagrees_with_the_url_is_refused() {
    let app = spawn_app().await;
    let created = app.created(Party::Gp, &patient("9434765919")).await;
    let path = format!("/Patient/{}", created["id"].as_str().expect("id"));
    let mut other = created.clone();
    other["id"] = json!("someone-else");
    let (status, outcome) = json_of(put(&app, Party::Gp, &path, &other, None).await).await;
    assert_eq!(status, 400, "{outcome}");
    assert_eq!(outcome["issue"][0]["expression"][0], "Patient.id");
    let mut missing = created.clone();
    missing.as_object_mut().map(|m| m.remove("id"));
    let (status, _) = json_of(put(&app, Party::Gp, &path, &missing, None).await).await;
    assert_eq!(status, 400, "an update needs the id");
    let (status, _) = json_of(
        put(
            &app,
            Party::Gp,
            "/Patient/never-created",
            &json!({"resourceType": "Patient", "id": "never-created"}),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 404, "update does not create");
}

#[tokio::test]
async fn delete_makes_later_reads_gone_and_keeps_history() {
    let app = spawn_app().await;
    let created = app.created(Party::Gp, &patient("9434765919")).await;
    let path = format!("/Patient/{}", created["id"].as_str().expect("id"));
    let deleted = app.as_party(Party::Gp, Method::DELETE, &path).await.send().await.expect("delete");
    assert_eq!(deleted.status(), 204);
    let (status, outcome) = json_of(app.get(Party::Gp, &path).await).await;
    assert_eq!(status, 410, "{outcome}");
    assert_eq!(outcome["issue"][0]["code"], "deleted");
    let again = app.as_party(Party::Gp, Method::DELETE, &path).await.send().await.expect("delete");
    assert_eq!(again.status(), 204, "deleting twice is harmless");
    let (status, history) = json_of(app.get(Party::Gp, &format!("{path}/_history")).await).await;
    assert_eq!(status, 200);
    assert_eq!(history["entry"][0]["request"]["method"], "DELETE");
    assert!(history["entry"][0].get("resource").is_none(), "a deletion has no resource");
    assert_eq!(app.get(Party::Gp, "/Patient/unknown-id").await.status(), 404);
}

#[tokio::test]
async fn json_patch_moves_a_resource_and_refuses_what_would_make_it_invalid() {
    let app = spawn_app().await;
    let patient_id = app.created(Party::Gp, &patient("9434765919")).await["id"].as_str().expect("id").to_owned();
    let sr = app.created(Party::Gp, &service_request(&patient_id, "GP0001", "CLW001")).await;
    let path = format!("/ServiceRequest/{}", sr["id"].as_str().expect("id"));

    let response =
        patch(&app, &path, &json!([{"op": "replace", "path": "/status", "value": "on-hold"}]), Some("W/\"1\"")).await;
    let (status, patched) = json_of(response).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["status"], "on-hold");
    assert_eq!(patched["meta"]["versionId"], "2");

    let cases = [
        (json!([{"op": "add", "path": "/unknownElement", "value": 1}]), 422, "unknown element in the result"),
        (json!([{"op": "remove", "path": "/intent"}]), 422, "required element removed"),
        (json!([{"op": "test", "path": "/status", "value": "active"}]), 422, "failing test op"),
        (json!([{"op": "replace", "path": "/id", "value": "other"}]), 422, "id changed"),
        (json!({"op": "replace"}), 400, "not a patch document"),
    ];
    for (ops, expected, why) in cases {
        let (status, outcome) = json_of(patch(&app, &path, &ops, None).await).await;
        assert_eq!(status, expected, "{why}: {outcome}");
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{why}");
    }
    let stale =
        patch(&app, &path, &json!([{"op": "replace", "path": "/status", "value": "active"}]), Some("W/\"1\"")).await;
    assert_eq!(stale.status(), 412, "patch honours If-Match");
    let wrong_type = app
        .as_party(Party::Gp, Method::PATCH, &path)
        .await
        .header("Content-Type", "application/fhir+json")
        .body("[]")
        .send()
        .await
        .expect("patch");
    assert_eq!(wrong_type.status(), 415, "PATCH takes JSON Patch only");
}

async fn conditional_create_creates_once_returns_the_match_and_refuses_ambiguity(db: Db) {
    let Some(app) = spawn_app_on(db).await else { return };
    let conditional = |nhs: &'static str| {
        let app = &app;
        async move {
            app.as_party(Party::Gp, Method::POST, "/Patient")
                .await
                .header("Content-Type", "application/fhir+json")
                .header("If-None-Exist", format!("identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}"))
                .body(patient(nhs).to_string())
                .send()
                .await
                .expect("post")
        }
    };
    let (first_status, first) = json_of(conditional("9434765919").await).await;
    assert_eq!(first_status, 201, "none matching: created");
    let (second_status, second) = json_of(conditional("9434765919").await).await;
    assert_eq!(second_status, 200, "one matching: returned");
    assert_eq!(first["id"], second["id"], "the same resource");

    // One created without a condition: no key points at it, the search finds it.
    let plain = app.created(Party::Gp, &patient("9876543210")).await;
    let (status, found) = json_of(conditional("9876543210").await).await;
    assert_eq!(status, 200, "one matching, created without a condition: {found}");
    assert_eq!(found["id"], plain["id"], "the resource created without a condition");

    app.created(Party::Gp, &patient("9999999999")).await;
    app.created(Party::Gp, &patient("9999999999")).await;
    let (status, outcome) = json_of(conditional("9999999999").await).await;
    assert_eq!(status, 412, "several matching: {outcome}");

    // Another practice with the same identifier sees nothing of GP0001's patient.
    let (other_status, other) = json_of(
        app.as_party(Party::OtherGp, Method::POST, "/Patient")
            .await
            .header("Content-Type", "application/fhir+json")
            .header("If-None-Exist", "identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919")
            .body(patient("9434765919").to_string())
            .send()
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(other_status, 201, "matching is within the caller's organisation");
    assert_ne!(other["id"], first["id"]);
}

async fn parallel_identical_conditional_creates_make_exactly_one_resource(db: Db) {
    let Some(app) = spawn_app_on(db).await else { return };
    let token = app.token(Party::Gp).await;
    let attempts = (0..12).map(|_| {
        let request = app
            .http
            .post(app.url("/Patient"))
            .bearer_auth(&token)
            .header("Content-Type", "application/fhir+json")
            .header("If-None-Exist", "identifier=https://fhir.nhs.uk/Id/nhs-number|4010232137")
            .body(patient("4010232137").to_string());
        async move { json_of(request.send().await.expect("post")).await }
    });
    let results = futures::future::join_all(attempts).await;
    let created = results.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(created, 1, "exactly one 201: {:?}", results.iter().map(|r| r.0).collect::<Vec<_>>());
    assert!(results.iter().all(|(s, _)| *s == 201 || *s == 200), "the rest are 200");
    let ids: std::collections::HashSet<&str> = results.iter().filter_map(|(_, b)| b["id"].as_str()).collect();
    assert_eq!(ids.len(), 1, "everyone got the same resource");
    let (_, history) = json_of(app.get(Party::Gp, "/Patient/_history").await).await;
    assert_eq!(history["entry"].as_array().map(Vec::len), Some(1), "one resource, one version");
}

#[tokio::test]
async fn type_history_pages_with_next_links_and_honours_since() {
    let app = spawn_app().await;
    for n in 0..5 {
        app.created(Party::Gp, &patient(&format!("94347659{n}{n}"))).await;
    }
    let (status, page1) = json_of(app.get(Party::Gp, "/Patient/_history?_count=2").await).await;
    assert_eq!(status, 200);
    assert_eq!(page1["entry"].as_array().map(Vec::len), Some(2));
    let next = page1["link"]
        .as_array()
        .and_then(|links| links.iter().find(|l| l["relation"] == "next"))
        .and_then(|l| l["url"].as_str())
        .expect("a next link")
        .to_owned();
    let mut seen: Vec<String> =
        page1["entry"].as_array().expect("e").iter().map(|e| e["fullUrl"].to_string()).collect();
    let mut url = Some(next);
    while let Some(next_url) = url {
        let path = next_url.strip_prefix(&app.address).expect("link on this server").to_owned();
        let (_, page) = json_of(app.get(Party::Gp, &path).await).await;
        seen.extend(page["entry"].as_array().expect("e").iter().map(|e| e["fullUrl"].to_string()));
        url = page["link"]
            .as_array()
            .and_then(|links| links.iter().find(|l| l["relation"] == "next"))
            .and_then(|l| l["url"].as_str())
            .map(str::to_owned);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 5, "paging visits every version once");
    let (_, none) = json_of(app.get(Party::Gp, "/Patient/_history?_since=2999-01-01T00:00:00Z").await).await;
    assert!(none.get("entry").is_none(), "nothing after the future (and no empty array): {none}");
    let (status, _) = json_of(app.get(Party::Gp, "/Patient/_history?_since=yesterday").await).await;
    assert_eq!(status, 400, "a malformed _since is a 400");
}

on_both_databases!(
    racing_updates_from_one_version_give_one_success_and_412s,
    conditional_create_creates_once_returns_the_match_and_refuses_ambiguity,
    parallel_identical_conditional_creates_make_exactly_one_resource,
);
