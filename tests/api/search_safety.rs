//! Search is safe by default (issue 28): a search is bounded in parameters, values and joins;
//! an unknown parameter is refused unless the client asks for lenient handling; chains find
//! referrals by the identifiers GP systems and CLW tools hold, inside the caller's tenancy;
//! a party named by a literal reference to its directory entry is found by its ODS code; a
//! search merely sorted by `_lastUpdated` is no poll; a subscription filter names the caller
//! as a search does.

use std::collections::BTreeSet;
use std::time::{Duration, Instant as Clock};

use linkbridge::domain::ids::ResourceId;
use linkbridge::domain::instant::Instant;
use linkbridge::domain::resource_type::ResourceType;
use linkbridge::domain::search_params::extract_index;
use linkbridge::domain::search_query::{
    parse_search, ParseContext, SortField, SortKey, MAX_SEARCH_JOINS, MAX_SEARCH_PARAMETERS, MAX_SEARCH_VALUES,
};
use linkbridge::domain::tenancy::{derived_visibility, TenantScope, Visibility};
use linkbridge::service::ingest::stamp;
use linkbridge::store::{
    PoolSettings, Precondition, ResourceWrite, SearchPage, Store, StoreError, WriteMethod, WriteSet,
};
use reqwest::Method;
use serde_json::{json, Value};

use crate::fixtures::{consent, patient, service_request, task, NHS_NUMBER, ODS};
use crate::helpers::{json_of, spawn_app_on, spawn_app_with, test_database, test_settings, Db, Party, TestApp};
use crate::on_both_databases;

/// The settle window of these tests: short, so that polls see their data soon.
const SETTLE_MS: u64 = 1000;

/// The referral identifier system of the fixtures' ServiceRequests.
const REFERRAL_SYSTEM: &str = "urn:oid:2.16.840.1.113883.2.1.3.2.4.18.48";

/// The service, and a store on its database through which data is written directly (as the
/// service would store it), so that a practice's Task can name another practice's patient.
struct App {
    http: TestApp,
    store: Store,
}

async fn app(db: Db) -> Option<App> {
    app_with_window(db, SETTLE_MS).await
}

async fn app_with_window(db: Db, settle_ms: u64) -> Option<App> {
    let database = test_database(db).await?;
    let settings = linkbridge::config::Settings { settle_window_ms: settle_ms, ..test_settings(&database) };
    let url = database.url.clone();
    let http = spawn_app_with(database, settings).await;
    let pool = PoolSettings { settle_window: Duration::from_millis(settle_ms), ..PoolSettings::default() };
    let store = Store::connect(&url, &pool).await.expect("test data store");
    Some(App { http, store })
}

impl App {
    /// Stores `body` as a new resource of practice `org`; returns `Type/id`.
    async fn stored(&self, org: &str, mut body: Value) -> String {
        let resource_type = ResourceType::parse(body["resourceType"].as_str().expect("type")).expect("served type");
        let id = ResourceId::generate();
        for _ in 0..20 {
            let now = Instant::now();
            stamp(&mut body, &id, 1, &now.to_fhir());
            let mut visibility: Vec<String> =
                derived_visibility(resource_type, &body).iter().map(Visibility::key).collect();
            visibility.push(format!("org:{org}"));
            let write = ResourceWrite {
                resource_type,
                id: id.clone(),
                version: linkbridge::domain::ids::VersionId::FIRST,
                last_updated: now,
                method: WriteMethod::Create,
                precondition: Precondition::Absent,
                index: extract_index(resource_type, &body),
                body: body.to_string(),
                visibility,
                visibility_grants: Vec::new(),
            };
            let write_set = WriteSet { resources: vec![write], ..Default::default() };
            match self.store.commit(write_set).await {
                Err(StoreError::SettleWindowPassed { .. }) => continue,
                outcome => {
                    outcome.expect("test data is written");
                    return format!("{resource_type}/{id}");
                }
            }
        }
        panic!("the test machine is too slow to commit within half the settle window");
    }
}

async fn search(app: &TestApp, party: Party, query: &str) -> (u16, Value) {
    json_of(app.get(party, &format!("/{query}")).await).await
}

/// The `Type/id` of a searchset's matches.
fn matches(bundle: &Value) -> BTreeSet<String> {
    crate::search::ids_in(bundle, "match").into_iter().collect()
}

async fn found(app: &TestApp, party: Party, query: &str) -> BTreeSet<String> {
    let (status, body) = search(app, party, query).await;
    assert_eq!(status, 200, "{query}: {body}");
    matches(&body)
}

fn set(references: &[&String]) -> BTreeSet<String> {
    references.iter().map(|r| (*r).clone()).collect()
}

fn id_of(reference: &str) -> &str {
    reference.rsplit('/').next().unwrap_or(reference)
}

/// The diagnostics of a refusal, asserting its status and issue code.
fn refusal(status: u16, body: &Value, expected: u16, code: &str, what: &str) -> String {
    assert_eq!(status, expected, "{what}: {body}");
    assert_eq!(body["resourceType"], "OperationOutcome", "{what}: {body}");
    assert_eq!(body["issue"][0]["code"], code, "{what}: {body}");
    body["issue"][0]["diagnostics"].as_str().unwrap_or_default().to_owned()
}

fn repeated(pair: &str, times: usize) -> String {
    vec![pair; times].join("&")
}

// ---------------------------------------------------------------------------------------------
// Bounds.

async fn three_thousand_repeated_parameters_are_refused_at_once(db: Db) {
    let Some(app) = spawn_app_on(db).await else { return };
    let started = Clock::now();
    let (status, body) = search(&app, Party::Gp, &format!("Task?{}", repeated("_id=a", 3000))).await;
    let diagnostics = refusal(status, &body, 400, "too-costly", "3,000 parameters in the URL");
    assert!(diagnostics.contains(&format!("at most {MAX_SEARCH_PARAMETERS} parameters")), "{diagnostics}");

    let response = app
        .as_party(Party::Gp, Method::POST, "/Task/_search")
        .await
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(repeated("status=requested", 3000))
        .send()
        .await
        .expect("search");
    let (status, body) = json_of(response).await;
    refusal(status, &body, 400, "too-costly", "3,000 parameters in a form body");
    assert!(started.elapsed() < Duration::from_secs(10), "refused without running them: {:?}", started.elapsed());
}

/// `POST /Patient` with `If-None-Exist: criteria`.
async fn conditional_create(app: &TestApp, criteria: String) -> (u16, Value) {
    let response = app
        .as_party(Party::Gp, Method::POST, "/Patient")
        .await
        .header("Content-Type", "application/fhir+json")
        .header("If-None-Exist", criteria)
        .body(patient("9434765919").to_string())
        .send()
        .await
        .expect("create");
    json_of(response).await
}

async fn a_search_at_its_bounds_is_answered_and_one_past_them_is_refused(db: Db) {
    let Some(data) = app(db).await else { return };
    for _ in 0..2 {
        data.stored(Party::Gp.ods(), task("sr-1", "p-1", "GP0001", None)).await;
    }
    let app = &data.http;
    let cases: Vec<(String, String, &str)> = vec![
        (
            format!("Task?{}", repeated("status=requested", MAX_SEARCH_PARAMETERS)),
            format!("Task?{}", repeated("status=requested", MAX_SEARCH_PARAMETERS + 1)),
            "MAX_SEARCH_PARAMETERS",
        ),
        (
            format!("Task?status={}", vec!["requested"; MAX_SEARCH_VALUES].join(",")),
            format!("Task?status={}", vec!["requested"; MAX_SEARCH_VALUES + 1].join(",")),
            "MAX_SEARCH_VALUES",
        ),
        (
            // Every join a chain, each with its share of the values: the largest statement a
            // search can make runs on both databases.
            format!(
                "Task?{}",
                repeated(
                    &format!(
                        "patient.identifier={}",
                        vec![format!("{NHS_NUMBER}|9434765919"); MAX_SEARCH_VALUES / MAX_SEARCH_JOINS].join(",")
                    ),
                    MAX_SEARCH_JOINS
                )
            ),
            format!(
                "Task?{}&_include=Task:focus",
                repeated(&format!("patient.identifier={NHS_NUMBER}|9434765919"), MAX_SEARCH_JOINS)
            ),
            "MAX_SEARCH_JOINS",
        ),
        (
            format!("Task?{}", repeated("_include=Task:focus", MAX_SEARCH_JOINS)),
            format!("Task?{}", repeated("_include=Task:focus", MAX_SEARCH_JOINS + 1)),
            "MAX_SEARCH_JOINS",
        ),
    ];
    for (at_bound, past_bound, limit) in cases {
        let (status, body) = search(app, Party::Gp, &at_bound).await;
        assert_eq!(status, 200, "{limit}: at the bound a search is answered: {body}");
        let (status, body) = search(app, Party::Gp, &past_bound).await;
        let diagnostics = refusal(status, &body, 400, "too-costly", limit);
        assert!(diagnostics.contains(limit), "the refusal names {limit}: {diagnostics}");
    }
    // The next page of a search at the bounds is within them: the link's `_count` and
    // `_cursor` are the service's own.
    let paged = format!("Task?{}&_count=1", repeated("status=requested", MAX_SEARCH_PARAMETERS));
    let (status, first) = search(app, Party::Gp, &paged).await;
    assert_eq!((status, matches(&first).len()), (200, 1), "{first}");
    let next = first["link"].as_array().and_then(|links| links.iter().find(|l| l["relation"] == "next"));
    let next = next.and_then(|l| l["url"].as_str()).expect("a next link");
    let path = next.strip_prefix(&app.address).expect("links use the base URL");
    let (status, second) = json_of(app.get(Party::Gp, path).await).await;
    assert_eq!((status, matches(&second).len()), (200, 1), "the next page is answered: {second}");
    // Conditional create's criteria go through the same bound.
    let criterion = format!("identifier={NHS_NUMBER}|9434765919");
    let (status, body) = conditional_create(app, repeated(&criterion, MAX_SEARCH_PARAMETERS)).await;
    assert_eq!(status, 201, "criteria at the bound are searched: {body}");
    let (status, body) = conditional_create(app, repeated(&criterion, MAX_SEARCH_PARAMETERS + 1)).await;
    let diagnostics = refusal(status, &body, 400, "too-costly", "conditional criteria past the bound");
    assert!(diagnostics.contains("MAX_SEARCH_PARAMETERS"), "{diagnostics}");
}

// ---------------------------------------------------------------------------------------------
// Strict handling.

async fn unknown_parameters_are_refused_unless_the_client_asks_for_lenient_handling(db: Db) {
    let Some(app) = app(db).await else { return };
    app.stored(Party::Gp.ods(), task("sr-1", "p-1", "GP0001", None)).await;
    let app = &app.http;
    for query in
        ["Task?status=requested&colour=blue", "Task?owner.identifier=CLW001", "Task?_include:iterate=Task:focus"]
    {
        let (status, body) = search(app, Party::Gp, query).await;
        let name = query.split(['?', '&']).next_back().and_then(|p| p.split('=').next()).unwrap_or_default();
        let diagnostics = refusal(status, &body, 400, "not-supported", query);
        assert_eq!(body["issue"][0]["expression"][0], name, "{query}: the parameter is named");
        assert!(diagnostics.contains("handling=lenient"), "the way out is named: {diagnostics}");
    }
    let response = app
        .as_party(Party::Gp, Method::GET, "/Task?status=requested&colour=blue")
        .await
        .header("Prefer", "handling=lenient")
        .send()
        .await
        .expect("search");
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200, "lenient handling ignores the unknown parameter: {body}");
    assert_eq!(matches(&body).len(), 1, "{body}");
    let self_link = body["link"][0]["url"].as_str().expect("self link");
    assert!(self_link.contains("status=requested") && !self_link.contains("colour"), "{self_link}");
}

// ---------------------------------------------------------------------------------------------
// Chains.

fn nhs(number: &str) -> String {
    format!("{NHS_NUMBER}|{number}")
}

async fn chained_searches_find_referrals_by_the_identifiers_held_within_the_callers_practice(db: Db) {
    let Some(app) = app(db).await else { return };
    let gp = Party::Gp.ods();
    let other_gp = Party::OtherGp.ods();
    let (n1, n2, n3) = ("9434765919", "9434765870", "9000000009");
    let p1 = app.stored(gp, patient(n1)).await;
    let p2 = app.stored(gp, patient(n2)).await;
    // Another practice's patient, whom a Task of this practice names: no chain may tell this
    // practice that a patient with that number exists.
    let theirs = app.stored(other_gp, patient(n3)).await;
    let mut sr1 = service_request(id_of(&p1), gp, "CLW001");
    sr1["identifier"] = json!([{"system": REFERRAL_SYSTEM, "value": "R-1"}]);
    let s1 = app.stored(gp, sr1).await;
    let mut sr2 = service_request(id_of(&p2), gp, "CLW001");
    sr2["identifier"] = json!([{"system": REFERRAL_SYSTEM, "value": "R-2"}]);
    let s2 = app.stored(gp, sr2).await;
    let t1 = app.stored(gp, task(id_of(&s1), id_of(&p1), gp, None)).await;
    let t2 = app.stored(gp, task(id_of(&s2), id_of(&p2), gp, None)).await;
    let _t3 = app.stored(gp, task(id_of(&s1), id_of(&theirs), gp, None)).await;
    // The other practice's Task for this practice's patient number is not this practice's.
    let _t4 = app.stored(other_gp, task(id_of(&s1), id_of(&p1), other_gp, None)).await;
    let c1 = app
        .stored(
            gp,
            json!({"resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": {"reference": p1}}),
        )
        .await;
    let k1 = app.stored(gp, consent(&p1)).await;

    let cases: Vec<(String, BTreeSet<String>)> = vec![
        (format!("Task?patient.identifier={}", nhs(n1)), set(&[&t1])),
        (format!("Task?subject:Patient.identifier={},{}", nhs(n1), nhs(n2)), set(&[&t1, &t2])),
        (format!("Task?patient.identifier={n2}"), set(&[&t2])),
        (format!("Task?patient.identifier={}", nhs("0000000000")), set(&[])),
        (format!("Task?patient.identifier={}", nhs(n3)), set(&[])),
        (format!("Task?focus:ServiceRequest.identifier={REFERRAL_SYSTEM}|R-2"), set(&[&t2])),
        (format!("Task?patient.identifier={}&focus:ServiceRequest.identifier=R-1", nhs(n1)), set(&[&t1])),
        (format!("ServiceRequest?patient.identifier={}", nhs(n1)), set(&[&s1])),
        (format!("ServiceRequest?subject:Patient.identifier={}", nhs(n2)), set(&[&s2])),
        (format!("CarePlan?patient.identifier={}", nhs(n1)), set(&[&c1])),
        (format!("CarePlan?subject:Patient.identifier={}", nhs(n2)), set(&[])),
        (format!("Consent?patient.identifier={}", nhs(n1)), set(&[&k1])),
    ];
    for (query, expected) in &cases {
        assert_eq!(&found(&app.http, Party::Gp, query).await, expected, "{query}");
    }
    // The same chains in a poll, walked along `last_updated` with each row probed.
    tokio::time::sleep(Duration::from_millis(SETTLE_MS + 50)).await;
    for (query, expected) in &cases {
        let poll = format!("{query}&_lastUpdated=gt2020-01-01");
        assert_eq!(&found(&app.http, Party::Gp, &poll).await, expected, "{poll}");
    }
    // The other practice sees its own Task of the number it holds, and none of this practice's.
    let theirs_found = found(&app.http, Party::OtherGp, &format!("Task?patient.identifier={}", nhs(n3))).await;
    assert!(theirs_found.is_empty(), "GP0002's patient is named by GP0001's Task only: {theirs_found:?}");
}

async fn a_reverse_chain_finds_referrals_by_their_tasks_status_within_the_callers_tenancy(db: Db) {
    let Some(app) = app(db).await else { return };
    let gp = Party::Gp.ods();
    let p = app.stored(gp, patient("9434765919")).await;
    let s1 = app.stored(gp, service_request(id_of(&p), gp, "CLW001")).await;
    let s2 = app.stored(gp, service_request(id_of(&p), gp, "CLW001")).await;
    let s3 = app.stored(gp, service_request(id_of(&p), gp, "CLW001")).await;
    app.stored(gp, task(id_of(&s1), id_of(&p), gp, None)).await;
    let mut accepted = task(id_of(&s2), id_of(&p), gp, None);
    accepted["status"] = json!("accepted");
    app.stored(gp, accepted).await;
    // A Task only the other practice may see does not make s3 match for this one.
    app.stored(Party::OtherGp.ods(), task(id_of(&s3), id_of(&p), Party::OtherGp.ods(), None)).await;

    let cases = [
        ("ServiceRequest?_has:Task:focus:status=requested", set(&[&s1])),
        ("ServiceRequest?_has:Task:focus:status=requested,accepted", set(&[&s1, &s2])),
        ("ServiceRequest?_has:Task:focus:status=completed", set(&[])),
    ];
    for (query, expected) in &cases {
        assert_eq!(&found(&app.http, Party::Gp, query).await, expected, "{query}");
    }
    let (status, body) = search(&app.http, Party::Gp, "Task?_has:Task:part-of:status=requested").await;
    refusal(status, &body, 400, "not-supported", "an unregistered reverse chain");
}

/// A chain reads the resources at its other end: a token that may not read them may not
/// search through them either, or the chain would tell it what it may not read.
async fn a_chain_needs_a_token_that_may_read_its_other_end(db: Db) {
    let Some(app) = spawn_app_on(db).await else { return };
    let response = app.request_token(Party::Gp, "system/Task.rs", &Value::Null).await;
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200, "a Task-only token: {body}");
    let token = body["access_token"].as_str().expect("access_token").to_owned();
    let search = |query: String| {
        let request = app.http.get(app.url(&query)).bearer_auth(&token);
        async move { json_of(request.send().await.expect("search")).await }
    };
    let (status, body) = search(format!("/Task?status=requested&patient.identifier={}", nhs("9434765919"))).await;
    refusal(status, &body, 403, "forbidden", "a chain into Patients with a Task-only token");
    let (status, body) = search(format!("/Task?focus:ServiceRequest.identifier={REFERRAL_SYSTEM}|R-1")).await;
    refusal(status, &body, 403, "forbidden", "a chain into ServiceRequests with a Task-only token");
    let (status, body) = search("/Task?status=requested".to_owned()).await;
    assert_eq!(status, 200, "control: the token searches Tasks: {body}");
}

/// The plans of chained searches read by index, never every row of a type, on both databases.
async fn chained_searches_are_answered_through_indexes(db: Db) {
    let Some(app) = app_with_window(db, 20_000).await else { return };
    // A spread of referrals over practices and patients, so that a planner with statistics
    // sees what is selective (as in `search::the_polling_queries_use_indexes`).
    let mut writes = Vec::new();
    for n in 0..400 {
        let practice = format!("GP{:04}", n % 20);
        let (patient_id, sr_id) = (format!("p{}", n % 150), format!("s{n}"));
        if n < 150 {
            writes.push(write_of(ResourceType::Patient, &patient_id, patient(&format!("9434{n:06}")), &practice));
            let agreed = consent(&format!("Patient/{patient_id}"));
            writes.push(write_of(ResourceType::Consent, &format!("k{n}"), agreed, &practice));
        }
        let mut referral = service_request(&patient_id, &practice, "CLW001");
        referral["identifier"] = json!([{"system": REFERRAL_SYSTEM, "value": format!("R-{n}")}]);
        writes.push(write_of(ResourceType::ServiceRequest, &sr_id, referral, &practice));
        writes.push(write_of(
            ResourceType::Task,
            &format!("t{n}"),
            task(&sr_id, &patient_id, &practice, None),
            &practice,
        ));
        if writes.len() >= 60 {
            let write_set = WriteSet { resources: std::mem::take(&mut writes), ..Default::default() };
            app.store.commit(write_set).await.expect("write");
        }
    }
    app.store.commit(WriteSet { resources: writes, ..Default::default() }).await.expect("write");
    assert_chain_plans_use_indexes(&app.store, db, "before ANALYZE").await;
    if let Db::Postgres = db {
        use sqlx::{Connection, Executor};
        let url = match &app.http.database.url {
            linkbridge::store::DatabaseUrl::Postgres(url) => url.clone(),
            other => panic!("a PostgreSQL test database: {other:?}"),
        };
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
        conn.execute("ANALYZE").await.expect("analyze");
        assert_chain_plans_use_indexes(&app.store, db, "after ANALYZE").await;
    }
}

/// A resource `Type/id` of practice `org` as the service would store it, stamped now.
fn write_of(resource_type: ResourceType, id: &str, mut body: Value, org: &str) -> ResourceWrite {
    let id = ResourceId::parse(id).expect("id");
    let now = Instant::now();
    stamp(&mut body, &id, 1, &now.to_fhir());
    let mut visibility: Vec<String> = derived_visibility(resource_type, &body).iter().map(Visibility::key).collect();
    visibility.push(format!("org:{org}"));
    visibility.sort();
    visibility.dedup();
    ResourceWrite {
        resource_type,
        id,
        version: linkbridge::domain::ids::VersionId::FIRST,
        last_updated: now,
        method: WriteMethod::Create,
        precondition: Precondition::Absent,
        index: extract_index(resource_type, &body),
        body: body.to_string(),
        visibility,
        visibility_grants: Vec::new(),
    }
}

async fn assert_chain_plans_use_indexes(store: &Store, db: Db, statistics: &str) {
    let gp = Party::Gp.ods();
    let scope = TenantScope::Keys(vec![format!("org:{gp}"), "everyone".to_owned()]);
    let context = ParseContext { base_url: "http://lb.test", strict: true, now: Instant::now() };
    let by_last_updated = [SortKey { field: SortField::LastUpdated, descending: false }];
    let cases: Vec<(ResourceType, String, &[SortKey])> = vec![
        (ResourceType::Task, format!("patient.identifier={}", nhs("9434000021")), &[]),
        (ResourceType::Task, format!("subject:Patient.identifier={},{}", nhs("9434000021"), nhs("9434000041")), &[]),
        (ResourceType::Task, format!("focus:ServiceRequest.identifier={REFERRAL_SYSTEM}|R-1&status=requested"), &[]),
        (ResourceType::ServiceRequest, format!("patient.identifier={}", nhs("9434000021")), &[]),
        (ResourceType::Consent, format!("patient.identifier={}", nhs("9434000021")), &[]),
        (
            ResourceType::Task,
            format!("patient.identifier={}&_lastUpdated=gt2020-01-01", nhs("9434000021")),
            &by_last_updated,
        ),
    ];
    for (resource_type, query, sort) in cases {
        let params: Vec<(String, String)> =
            url::form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        let parsed = parse_search(resource_type, &params, &context).expect("parses");
        let horizon = parsed.query.uses_last_updated().then(Instant::now);
        let page = SearchPage { query: &parsed.query, sort, horizon, position: None, limit: 51 };
        let plan = store.explain_search(&scope, &page).await.expect("explain");
        let scans = crate::search::full_scans(&plan);
        assert!(
            scans.is_empty(),
            "{db:?} {statistics} {resource_type}?{query} reads every row of a type {scans:?}:\n{}",
            plan.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Parties named by a literal reference to their directory entry.

fn organization(ods: &str) -> Value {
    json!({"resourceType": "Organization", "identifier": [{"system": ODS, "value": ods}], "name": format!("Organisation {ods}")})
}

async fn polls_by_party_identifier_find_a_task_that_names_its_parties_by_directory_reference(db: Db) {
    let Some(app) = spawn_app_on(db).await else { return };
    let clw = app.created(Party::Clw, &organization("CLW001")).await;
    let practice = app.created(Party::Gp, &organization("GP0001")).await;
    let practice_ref = json!({"reference": format!("Organization/{}", practice["id"].as_str().expect("id"))});
    let clw_ref = json!({"reference": format!("Organization/{}", clw["id"].as_str().expect("id"))});
    let patient_id = app.created(Party::Gp, &patient("9434765919")).await["id"].as_str().expect("id").to_owned();
    let mut referral = service_request(&patient_id, "GP0001", "CLW001");
    referral["requester"] = practice_ref.clone();
    referral["performer"] = json!([clw_ref.clone()]);
    let sr = app.created(Party::Gp, &referral).await;
    let sr_ref = format!("ServiceRequest/{}", sr["id"].as_str().expect("id"));
    let mut work = task(sr["id"].as_str().expect("id"), &patient_id, "GP0001", None);
    work["requester"] = practice_ref;
    work["owner"] = clw_ref;
    let created = app.created(Party::Gp, &work).await;
    let task_ref = format!("Task/{}", created["id"].as_str().expect("id"));

    let clw_inbox = found(&app, Party::Clw, &format!("Task?owner:identifier={ODS}|CLW001&status=requested")).await;
    assert_eq!(clw_inbox, set(&[&task_ref]), "the CLW inbox finds the Task that names it by reference");
    let gp_poll = found(&app, Party::Gp, &format!("Task?requester:identifier={ODS}|GP0001")).await;
    assert_eq!(gp_poll, set(&[&task_ref]), "the GP poll finds its Task");
    let referrals = found(&app, Party::Clw, &format!("ServiceRequest?performer:identifier={ODS}|CLW001")).await;
    assert_eq!(referrals, set(&[&sr_ref]), "the performer finds its referral");
    let sent = found(&app, Party::Gp, &format!("ServiceRequest?requester:identifier={ODS}|GP0001")).await;
    assert_eq!(sent, set(&[&sr_ref]));
    // The literal reference still finds it as written.
    let literal =
        found(&app, Party::Clw, &format!("Task?owner=Organization/{}", clw["id"].as_str().expect("id"))).await;
    assert_eq!(literal, set(&[&task_ref]));
    // Another service's code finds nothing.
    assert!(found(&app, Party::Clw, &format!("Task?owner:identifier={ODS}|CLW002")).await.is_empty());

    // A Task cancelled when its referral is revoked keeps the codes its parties resolve to.
    let mut revoked = sr.clone();
    revoked["status"] = json!("revoked");
    let response = app
        .as_party(Party::Gp, Method::PUT, &format!("/{sr_ref}"))
        .await
        .header("Content-Type", "application/fhir+json")
        .body(revoked.to_string())
        .send()
        .await
        .expect("revoke");
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200, "the referral is revoked: {body}");
    // The service that owns it still sees it, and finds it by its code.
    for party in [Party::Gp, Party::Clw] {
        let cancelled = found(&app, party, &format!("Task?owner:identifier={ODS}|CLW001&status=cancelled")).await;
        assert_eq!(cancelled, set(&[&task_ref]), "{party:?}: the cancelled Task is still found by its owner's code");
    }
}

/// Runs migration 0018's statement (the same text on both databases) again over the
/// database, as it runs over a database written before it.
async fn run_migration_0018(database: &crate::helpers::TestDatabase) {
    use sqlx::{Connection, Executor};
    let statement = include_str!("../../migrations/sqlite/0018_reference_identifiers_from_directory.sql");
    assert_eq!(statement, include_str!("../../migrations/postgres/0018_reference_identifiers_from_directory.sql"));
    match &database.url {
        linkbridge::store::DatabaseUrl::Sqlite(path) => {
            let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
            let mut conn = sqlx::SqliteConnection::connect_with(&options).await.expect("open");
            conn.execute(statement).await.expect("migrates");
        }
        linkbridge::store::DatabaseUrl::Postgres(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await.expect("open");
            conn.execute(statement).await.expect("migrates");
        }
    }
}

/// Index rows written before literal references were resolved (here: written as they were,
/// without the service's resolution) get the ODS code of the directory entry from migration
/// 0018.
async fn tasks_written_before_are_found_by_the_code_of_the_directory_entry_they_name(db: Db) {
    let Some(app) = app(db).await else { return };
    let gp = Party::Gp.ods();
    let clw = app.stored("CLW001", organization("clw001")).await;
    let mut work = task("sr-1", "p-1", gp, None);
    work["owner"] = json!({"reference": clw});
    let work = app.stored(gp, work).await;
    let inbox = format!("Task?owner:identifier={ODS}|CLW001");
    assert!(found(&app.http, Party::Gp, &inbox).await.is_empty(), "not found before migrating");
    run_migration_0018(&app.http.database).await;
    assert_eq!(found(&app.http, Party::Gp, &inbox).await, set(&[&work]), "found after migrating");
}

// ---------------------------------------------------------------------------------------------
// The settle rule applies to polls only.

async fn a_search_sorted_by_last_updated_shows_what_was_just_written(db: Db) {
    // A settle window long enough that "just written" is inside it on a busy machine.
    let Some(app) = app_with_window(db, 20_000).await else { return };
    let reference = app.stored(Party::Gp.ods(), task("sr-1", "p-1", "GP0001", None)).await;
    let recent = found(&app.http, Party::Gp, "Task?_sort=-_lastUpdated").await;
    assert_eq!(recent, set(&[&reference]), "a list of the latest changes shows the one just made");
    let poll = found(&app.http, Party::Gp, "Task?_lastUpdated=gt2020-01-01").await;
    assert!(poll.is_empty(), "a poll still waits for the settle window: {poll:?}");
}

// ---------------------------------------------------------------------------------------------
// Subscription filters name the caller as a search does.

async fn a_subscription_filter_may_name_the_caller_by_its_directory_entry(db: Db) {
    let Some(app) = spawn_app_on(db).await else { return };
    let own = app.created(Party::Gp, &organization("GP0001")).await;
    let other = app.created(Party::OtherGp, &organization("GP0002")).await;
    let subscribe = |filter: String| {
        crate::subscriptions::subscription(
            "https://gp.example.org/hook",
            &crate::webhook_receiver::new_secret(),
            crate::subscriptions::TASK_TOPIC,
            &[&filter],
            "id-only",
        )
    };
    let by_entry = subscribe(format!("Task?requester=Organization/{}", own["id"].as_str().expect("id")));
    let (status, body) = json_of(app.create(Party::Gp, &by_entry).await).await;
    assert_eq!(status, 201, "the practice names itself by its directory entry: {body}");
    let by_code = subscribe("Task?requester=Organization/GP0001".to_owned());
    let (status, body) = json_of(app.create(Party::Gp, &by_code).await).await;
    assert_eq!(status, 201, "or by its ODS code, as before: {body}");
    let theirs = subscribe(format!("Task?requester=Organization/{}", other["id"].as_str().expect("id")));
    let (status, body) = json_of(app.create(Party::Gp, &theirs).await).await;
    refusal(status, &body, 403, "forbidden", "another practice's directory entry");
    let too_many = subscribe(format!("Task?{}", repeated("status=requested", MAX_SEARCH_PARAMETERS + 1)));
    let (status, body) = json_of(app.create(Party::Gp, &too_many).await).await;
    let diagnostics = refusal(status, &body, 422, "too-costly", "a filter past the bound");
    assert!(diagnostics.contains("MAX_SEARCH_PARAMETERS"), "{diagnostics}");
}

on_both_databases!(
    three_thousand_repeated_parameters_are_refused_at_once,
    a_search_at_its_bounds_is_answered_and_one_past_them_is_refused,
    unknown_parameters_are_refused_unless_the_client_asks_for_lenient_handling,
    chained_searches_find_referrals_by_the_identifiers_held_within_the_callers_practice,
    a_reverse_chain_finds_referrals_by_their_tasks_status_within_the_callers_tenancy,
    a_chain_needs_a_token_that_may_read_its_other_end,
    chained_searches_are_answered_through_indexes,
    polls_by_party_identifier_find_a_task_that_names_its_parties_by_directory_reference,
    tasks_written_before_are_found_by_the_code_of_the_directory_entry_they_name,
    a_search_sorted_by_last_updated_shows_what_was_just_written,
    a_subscription_filter_may_name_the_caller_by_its_directory_entry,
);
