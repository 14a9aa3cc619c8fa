//! Every request is bounded: a database statement by `statement_timeout_ms`, a JSON Patch by
//! its operations and the size of what it builds, a request's headers by their size, a body
//! by one meaning per key and by ele-1 (no empty element), failed token requests by a
//! per-client throttle; and the server's memory under all of these by a stated bound.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use sqlx::{Connection, Executor};

use crate::fixtures::{nhs_number, patient};
use crate::helpers::{
    client_assertion, json_of, register_test_clients, spawn_app_on, spawn_app_with, test_database, test_settings, Db,
    Party, TestApp,
};
use crate::processes::{ServerOptions, ServerProcess};
use linkbridge::store::DatabaseUrl;

const JSON_PATCH: &str = "application/json-patch+json";

/// The attack of the issue: 19 `copy` operations (under 1 KB), each copying the whole `name`
/// array into itself, doubling it: a Patient of about 1 KB ([`large_patient`]) would grow to
/// 2^19 times that, over 500 MB of JSON.
fn patch_bomb() -> String {
    let operations: Vec<Value> = (0..19).map(|_| json!({"op": "copy", "from": "/name", "path": "/name/0"})).collect();
    Value::Array(operations).to_string()
}

/// A Patient whose name takes about 1 KB.
fn large_patient() -> Value {
    let mut resource = patient(&nhs_number());
    resource["name"][0]["text"] = json!("Morag ".repeat(170));
    resource
}

fn diagnostics(body: &Value) -> String {
    body["issue"].as_array().map_or_else(String::new, |issues| {
        issues.iter().map(|issue| issue["diagnostics"].as_str().unwrap_or_default()).collect::<Vec<_>>().join(" | ")
    })
}

fn first_expression(body: &Value) -> &str {
    body["issue"][0]["expression"][0].as_str().unwrap_or_default()
}

async fn patch_text(app: &TestApp, path: &str, patch: String) -> (u16, Value) {
    json_of(app.send_as(Party::Gp, Method::PATCH, path, Some((JSON_PATCH, patch)), None).await).await
}

/// Adds `copies` Patients visible to the GP practice, straight in the database (as many
/// through the API would take minutes): copies of `template`'s row and visibility rows.
async fn add_patients_behind_the_api(url: &DatabaseUrl, template: &str, copies: u32) {
    sqlx::any::install_default_drivers();
    let url = match url {
        DatabaseUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
        DatabaseUrl::Postgres(url) => url.clone(),
    };
    let mut conn = sqlx::AnyConnection::connect(&url).await.expect("connect to the test database");
    let numbers = format!("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {copies})");
    for statement in [
        format!(
            "{numbers} INSERT INTO resources (resource_type, id, version_id, last_updated, deleted, body, change_seq) \
             SELECT r.resource_type, r.id || '-' || CAST(n.i AS TEXT), r.version_id, r.last_updated, r.deleted, r.body, \
             r.change_seq FROM resources r CROSS JOIN n WHERE r.resource_type = 'Patient' AND r.id = '{template}'"
        ),
        format!(
            "{numbers} INSERT INTO resource_visibility (resource_type, id, visibility_key, source) \
             SELECT v.resource_type, v.id || '-' || CAST(n.i AS TEXT), v.visibility_key, v.source \
             FROM resource_visibility v CROSS JOIN n WHERE v.resource_type = 'Patient' AND v.id = '{template}'"
        ),
    ] {
        conn.execute(statement.as_str()).await.expect("bulk insert");
    }
    conn.close().await.expect("close");
}

#[tokio::test]
async fn a_search_running_past_the_statement_timeout_is_cut_off_with_503_and_the_server_serves_on() {
    for db in [Db::Sqlite, Db::Postgres] {
        let Some(database) = test_database(db).await else { continue };
        // Filled and measured with the default limit, then served again with a limit of 100 ms.
        let mut settings = test_settings(&database);
        let app = spawn_app_with(database, settings.clone()).await;
        let template = app.created(Party::Gp, &patient(&nhs_number())).await["id"].as_str().expect("id").to_owned();
        // Counting these takes seconds (the count probes each row's visibility).
        add_patients_behind_the_api(&app.database.url, &template, 100_000).await;

        settings.statement_timeout_ms = 100;
        let limited = spawn_app_with(app.database, settings).await;
        let started = Instant::now();
        let (status, body) = json_of(limited.get(Party::Gp, "/Patient?_total=accurate&_count=1").await).await;
        let elapsed = started.elapsed();
        assert_eq!(status, 503, "{db:?}: a statement past the limit is cut off: {body}");
        assert_eq!(body["issue"][0]["code"], "too-costly", "{db:?}: {body}");
        assert!(diagnostics(&body).contains("statement_timeout_ms"), "{db:?}: {body}");
        assert!(elapsed < Duration::from_secs(3), "{db:?}: answered at the limit, not after the count ({elapsed:?})");

        let (status, body) = json_of(limited.get(Party::Gp, &format!("/Patient/{template}")).await).await;
        assert_eq!(status, 200, "{db:?}: the server serves on: {body}");
    }
}

#[tokio::test]
async fn a_json_patch_bomb_is_refused_at_once_naming_the_limit_and_writes_nothing() {
    for db in [Db::Sqlite, Db::Postgres] {
        let Some(app) = spawn_app_on(db).await else { continue };
        let created = app.created(Party::Gp, &large_patient()).await;
        let path = format!("/Patient/{}", created["id"].as_str().expect("id"));
        let bomb = patch_bomb();
        assert!(bomb.len() < 1_000, "the bomb is under 1 KB ({} bytes)", bomb.len());

        let started = Instant::now();
        let (status, body) = patch_text(&app, &path, bomb).await;
        assert_eq!(status, 422, "{db:?}: {body}");
        assert_eq!(body["issue"][0]["code"], "too-costly", "{db:?}: {body}");
        assert!(diagnostics(&body).contains("max_body_bytes"), "{db:?}: the limit is named: {body}");
        assert!(started.elapsed() < Duration::from_secs(5), "{db:?}: refused quickly ({:?})", started.elapsed());

        let too_many: Vec<Value> =
            (0..101).map(|_| json!({"op": "test", "path": "/gender", "value": "female"})).collect();
        let (status, body) = patch_text(&app, &path, Value::Array(too_many).to_string()).await;
        assert_eq!(status, 400, "{db:?}: {body}");
        assert!(diagnostics(&body).contains("at most 100 operations"), "{db:?}: {body}");

        let (status, body) = json_of(app.get(Party::Gp, &path).await).await;
        assert_eq!(status, 200, "{db:?}: {body}");
        assert_eq!(body["meta"]["versionId"], "1", "{db:?}: nothing was written");
        assert_eq!(body["name"], created["name"], "{db:?}");
    }
}

#[tokio::test]
async fn a_100_kb_header_is_refused_431_and_the_server_serves_on() {
    let app = spawn_app_on(Db::Sqlite).await.expect("sqlite");
    let response = app
        .as_party(Party::Gp, Method::GET, "/Patient")
        .await
        .header("X-Padding", "a".repeat(100 * 1024))
        .send()
        .await
        .expect("request");
    let (status, body) = json_of(response).await;
    assert_eq!(status, 431, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    assert!(diagnostics(&body).contains("at most 16384"), "{body}");

    let (status, body) = json_of(app.get(Party::Gp, "/Patient").await).await;
    assert_eq!(status, 200, "the server serves on: {body}");
}

#[tokio::test]
async fn a_body_naming_one_key_twice_is_refused_400_naming_the_key() {
    for db in [Db::Sqlite, Db::Postgres] {
        let Some(app) = spawn_app_on(db).await else { continue };
        let resource =
            r#"{"resourceType": "Patient", "gender": "male", "name": [{"family": "MacLeod", "family": "Smith"}]}"#;
        let response = app
            .send_as(Party::Gp, Method::POST, "/Patient", Some(("application/fhir+json", resource.to_owned())), None)
            .await;
        let (status, body) = json_of(response).await;
        assert_eq!(status, 400, "{db:?}: a resource: {body}");
        assert!(diagnostics(&body).contains("\"family\" appears twice"), "{db:?}: {body}");

        let bundle = format!(
            r#"{{"resourceType": "Bundle", "type": "transaction", "entry": [{{"fullUrl": "urn:uuid:{}",
                "resource": {{"resourceType": "Patient", "gender": "male", "gender": "female"}},
                "request": {{"method": "POST", "url": "Patient"}}}}]}}"#,
            uuid::Uuid::new_v4()
        );
        let response = app.send_as(Party::Gp, Method::POST, "/", Some(("application/fhir+json", bundle)), None).await;
        let (status, body) = json_of(response).await;
        assert_eq!(status, 400, "{db:?}: a Bundle: {body}");
        assert!(diagnostics(&body).contains("\"gender\" appears twice"), "{db:?}: {body}");

        // XML was refused already (fhirbolt reads no element twice); its JSON has no duplicates.
        let xml = r#"<Patient xmlns="http://hl7.org/fhir"><gender value="male"/><gender value="female"/></Patient>"#;
        let response = app
            .send_as(Party::Gp, Method::POST, "/Patient", Some(("application/fhir+xml", xml.to_owned())), None)
            .await;
        let (status, body) = json_of(response).await;
        assert_eq!(status, 400, "{db:?}: XML: {body}");
        assert!(diagnostics(&body).contains("'gender' given more than once"), "{db:?}: {body}");

        let created = app.created(Party::Gp, &patient(&nhs_number())).await;
        let path = format!("/Patient/{}", created["id"].as_str().expect("id"));
        let patch = r#"[{"op": "replace", "path": "/gender", "value": "male", "value": "other"}]"#;
        let (status, body) = patch_text(&app, &path, patch.to_owned()).await;
        assert_eq!(status, 400, "{db:?}: a JSON Patch: {body}");
        assert!(diagnostics(&body).contains("\"value\" appears twice"), "{db:?}: {body}");

        let (_, search) = json_of(app.get(Party::Gp, "/Patient").await).await;
        assert_eq!(search["entry"].as_array().map(Vec::len), Some(1), "{db:?}: only the valid Patient: {search}");
        let (_, read) = json_of(app.get(Party::Gp, &path).await).await;
        assert_eq!(read["meta"]["versionId"], "1", "{db:?}: the patch wrote nothing");
    }
}

#[tokio::test]
async fn empty_elements_are_refused_400_with_the_elements_fhirpath() {
    for db in [Db::Sqlite, Db::Postgres] {
        let Some(app) = spawn_app_on(db).await else { continue };
        let base = patient(&nhs_number());
        let with = |key: &str, value: Value| {
            let mut resource = base.clone();
            resource[key] = value;
            resource
        };
        let cases = [
            (with("_gender", json!({})), "Patient.gender"),
            (with("meta", json!({})), "Patient.meta"),
            (with("maritalStatus", json!({})), "Patient.maritalStatus"),
            (
                with("name", json!([{"family": "MacLeod", "given": ["Morag"], "_given": [{}]}])),
                "Patient.name[0].given[0]",
            ),
            (with("name", json!([{"family": "MacLeod", "given": [null]}])), "Patient.name[0].given[0]"),
            (with("birthDate", Value::Null), "Patient.birthDate"),
        ];
        for (resource, expression) in cases {
            let (status, body) = json_of(app.create(Party::Gp, &resource).await).await;
            assert_eq!(status, 400, "{db:?}: {expression}: {body}");
            assert_eq!(first_expression(&body), expression, "{db:?}: {body}");
        }
        let created = app.created(Party::Gp, &base).await;
        let path = format!("/Patient/{}", created["id"].as_str().expect("id"));
        let patch = json!([{"op": "add", "path": "/_gender", "value": {}}]).to_string();
        let (status, body) = patch_text(&app, &path, patch).await;
        assert_eq!(status, 422, "{db:?}: a patch that empties an element: {body}");
        assert_eq!(first_expression(&body), "Patient.gender", "{db:?}: {body}");
        let (_, search) = json_of(app.get(Party::Gp, "/Patient").await).await;
        assert_eq!(search["entry"].as_array().map(Vec::len), Some(1), "{db:?}: only the valid Patient: {search}");
    }
}

async fn post_assertion(app: &TestApp, assertion: &str) -> reqwest::Response {
    app.http
        .post(app.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.rs"),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("client_assertion", assertion),
        ])
        .send()
        .await
        .expect("token request")
}

#[tokio::test]
async fn failed_token_requests_past_the_threshold_answer_429_with_retry_after_but_the_real_key_still_gets_a_token() {
    for db in [Db::Sqlite, Db::Postgres] {
        let Some(app) = spawn_app_on(db).await else { continue };
        let wrong_audience = json!({"aud": "https://elsewhere.example/token"});
        let mut statuses = Vec::new();
        let mut retry_after = None;
        for _ in 0..30 {
            let response = post_assertion(&app, &client_assertion(Party::Gp, &app.token_url(), &wrong_audience)).await;
            if response.status() == 429 {
                retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
            }
            let (status, body) = json_of(response).await;
            assert_eq!(body["error"], "invalid_client", "{db:?}: {body}");
            statuses.push(status);
        }
        assert!(statuses[..20].iter().all(|s| *s == 400), "{db:?}: the first 20 failures are answered: {statuses:?}");
        assert!(statuses[20..].iter().all(|s| *s == 429), "{db:?}: then 429: {statuses:?}");
        let retry_after: u64 = retry_after.and_then(|v| v.parse().ok()).expect("Retry-After in seconds");
        assert!((1..=60).contains(&retry_after), "{db:?}: within the window: {retry_after}");

        let good = post_assertion(&app, &client_assertion(Party::Gp, &app.token_url(), &Value::Null)).await;
        assert_eq!(good.status(), 200, "{db:?}: the registered key is still served");
        let other = post_assertion(&app, &client_assertion(Party::Clw, &app.token_url(), &wrong_audience)).await;
        assert_eq!(other.status(), 400, "{db:?}: another client's count is its own");
    }
}

/// The peak resident memory (VmHWM) of process `pid`, in bytes.
fn peak_resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status.lines().find(|line| line.starts_with("VmHWM:")).expect("VmHWM line");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmHWM value");
    kib * 1024
}

/// The bound docs/security.md ("Bounded requests") states for the server's peak memory under these
/// attacks.
const PEAK_MEMORY_BOUND: u64 = 200 * 1024 * 1024;

#[tokio::test]
async fn the_servers_peak_memory_under_these_attacks_stays_under_200_mib() {
    let dir = tempfile::tempdir().expect("data dir");
    register_test_clients(&DatabaseUrl::sqlite_in(dir.path())).await;
    let server = ServerProcess::start(&ServerOptions::new(dir.path())).await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("http client");
    let token = server.token(&http, Party::Gp).await;
    let (status, created) = server.send(&http, &token, Method::POST, "/Patient", Some(&large_patient()), None).await;
    assert_eq!(status, 201, "{created}");
    let path = format!("/Patient/{}", created["id"].as_str().expect("id"));

    for _ in 0..5 {
        let response = http
            .patch(server.url(&path))
            .bearer_auth(&token)
            .header("Content-Type", JSON_PATCH)
            .body(patch_bomb())
            .send()
            .await
            .expect("patch");
        assert_eq!(response.status(), 422);
        let duplicated = r#"{"resourceType": "Patient", "gender": "male", "gender": "female"}"#;
        let response = http
            .post(server.url("/Patient"))
            .bearer_auth(&token)
            .header("Content-Type", "application/fhir+json")
            .body(duplicated)
            .send()
            .await
            .expect("post");
        assert_eq!(response.status(), 400);
        let response = http
            .get(server.url("/Patient"))
            .bearer_auth(&token)
            .header("X-Padding", "a".repeat(100 * 1024))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), 431);
    }
    let peak = peak_resident_bytes(server.pid());
    eprintln!("peak resident memory after the attacks: {} MiB", peak / 1024 / 1024);
    assert!(
        peak < PEAK_MEMORY_BOUND,
        "peak resident memory {} MiB, over the stated {} MiB",
        peak / 1024 / 1024,
        PEAK_MEMORY_BOUND / 1024 / 1024
    );
}
