//! Search (R4 search.html) through HTTP and through the store, on SQLite and PostgreSQL:
//! every parameter kind, modifier and prefix, paging that stays stable while data changes,
//! includes, tenancy of matches, includes and totals, the settle rule that keeps `_lastUpdated`
//! pollers from missing late commits, and the query plans of the polling queries.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use linkbridge::domain::ids::{ResourceId, VersionId};
use linkbridge::domain::instant::Instant;
use linkbridge::domain::resource_type::ResourceType;
use linkbridge::domain::search_params::extract_index;
use linkbridge::domain::search_query::{parse_search, ParseContext, SortField, SortKey};
use linkbridge::domain::tenancy::{derived_visibility, OdsCode, Principal, Role, TenantScope, Visibility};
use linkbridge::service::ingest::stamp;
use linkbridge::service::search::{PageLimits, SearchRequest, SearchService};
use linkbridge::store::{
    PoolSettings, Precondition, ResourceWrite, SearchPage, Store, StoreError, WriteMethod, WriteSet,
};
use rand::Rng;
use reqwest::Method;
use serde_json::{json, Value};

use crate::fixtures::{org_ref, patient, service_request, task, ODS};
use crate::helpers::{json_of, spawn_app_with, test_database, test_settings, Db, Party, TestApp};
use crate::on_both_databases;

/// The settle window of the HTTP tests: short, so `_lastUpdated` searches see fresh writes soon.
const TEST_SETTLE_MS: u64 = 1000;

/// The service, and a store on its database through which the tests write their data:
/// directly, as the service would store it, so that these tests depend on search alone and not
/// on the write rules of the referral workflow (tested elsewhere).
struct SearchApp {
    http: TestApp,
    store: Store,
}

impl std::ops::Deref for SearchApp {
    type Target = TestApp;

    fn deref(&self) -> &TestApp {
        &self.http
    }
}

impl SearchApp {
    /// Stores a new resource as `party` would create it; returns the stored body.
    async fn created(&self, party: Party, resource: &Value) -> Value {
        let resource_type =
            ResourceType::parse(resource["resourceType"].as_str().expect("resourceType")).expect("served type");
        self.write(party, resource_type, ResourceId::generate(), resource.clone(), None).await
    }

    async fn write(
        &self,
        party: Party,
        resource_type: ResourceType,
        id: ResourceId,
        mut body: Value,
        current: Option<VersionId>,
    ) -> Value {
        let version = current.map_or(VersionId::FIRST, VersionId::next);
        // A write that took longer than half the settle window is refused (as a 503 would
        // be); a busy test machine can be that slow, so stamp again and retry, as a client does.
        for _ in 0..20 {
            let now = Instant::now();
            stamp(&mut body, &id, version.get(), &now.to_fhir());
            let mut visibility: Vec<String> =
                derived_visibility(resource_type, &body).iter().map(Visibility::key).collect();
            visibility.push(format!("org:{}", party.ods()));
            let write = ResourceWrite {
                resource_type,
                id: id.clone(),
                version,
                last_updated: now,
                method: if current.is_some() { WriteMethod::Update } else { WriteMethod::Create },
                precondition: current.map_or(Precondition::Absent, Precondition::CurrentVersion),
                index: extract_index(resource_type, &body),
                body: body.to_string(),
                visibility,
                visibility_grants: Vec::new(),
            };
            match self.store.commit(one(write)).await {
                Err(linkbridge::store::StoreError::SettleWindowPassed { .. }) => continue,
                outcome => {
                    outcome.expect("test data is written");
                    return body;
                }
            }
        }
        panic!("the test machine is too slow to commit within half the settle window");
    }

    async fn current(&self, reference: &str) -> (ResourceType, ResourceId, linkbridge::store::StoredVersion) {
        let (type_name, id) = reference.split_once('/').expect("Type/id");
        let resource_type = ResourceType::parse(type_name).expect("type");
        let id = ResourceId::parse(id).expect("id");
        let current =
            self.store.read_current(&TenantScope::Everything, resource_type, &id).await.expect("read").expect("exists");
        (resource_type, id, current)
    }

    /// Stores a new version of `reference` changed by `change`, as `party`.
    async fn updated(&self, party: Party, reference: &str, change: impl FnOnce(&mut Value)) {
        let (resource_type, id, current) = self.current(reference).await;
        let mut body: Value = serde_json::from_str(&current.body).expect("stored JSON");
        change(&mut body);
        self.write(party, resource_type, id, body, Some(current.version)).await;
    }

    /// Deletes `reference`.
    async fn deleted(&self, reference: &str) {
        let (resource_type, id, current) = self.current(reference).await;
        for _ in 0..20 {
            let write = ResourceWrite {
                resource_type,
                id: id.clone(),
                version: current.version.next(),
                last_updated: Instant::now(),
                method: WriteMethod::Delete,
                precondition: Precondition::CurrentVersion(current.version),
                index: Vec::new(),
                body: String::new(),
                visibility: Vec::new(),
                visibility_grants: Vec::new(),
            };
            match self.store.commit(one(write)).await {
                Err(linkbridge::store::StoreError::SettleWindowPassed { .. }) => continue,
                outcome => return outcome.expect("delete"),
            }
        }
        panic!("the test machine is too slow to commit within half the settle window");
    }
}

async fn app(db: Db) -> Option<SearchApp> {
    let database = test_database(db).await?;
    let settings = linkbridge::config::Settings { settle_window_ms: TEST_SETTLE_MS, ..test_settings(&database) };
    let url = database.url.clone();
    let http = spawn_app_with(database, settings).await;
    let store = Store::connect(
        &url,
        &PoolSettings { settle_window: Duration::from_millis(TEST_SETTLE_MS), ..PoolSettings::default() },
    )
    .await
    .expect("test data store");
    Some(SearchApp { http, store })
}

/// Waits until writes made so far are older than the settle window.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(TEST_SETTLE_MS + 50)).await;
}

async fn search(app: &TestApp, party: Party, query: &str) -> (u16, Value) {
    json_of(app.get(party, &format!("/{query}")).await).await
}

/// A search that must succeed.
async fn bundle(app: &TestApp, party: Party, query: &str) -> Value {
    let (status, body) = search(app, party, query).await;
    assert_eq!(status, 200, "{query}: {body}");
    assert_eq!(body["type"], "searchset", "{query}");
    body
}

/// Follows a link URL (absolute, as the server wrote it).
async fn follow(app: &TestApp, party: Party, url: &str) -> Value {
    let path = url.strip_prefix(&app.address).expect("links use the base URL");
    bundle(app, party, path.trim_start_matches('/')).await
}

/// The `Type/id` of a searchset's entries of one search mode (`match`, `include`), in order.
pub(crate) fn ids_in(bundle: &Value, mode: &str) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e["search"]["mode"] == mode)
                .map(|e| {
                    format!(
                        "{}/{}",
                        e["resource"]["resourceType"].as_str().unwrap_or("?"),
                        e["resource"]["id"].as_str().unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn matches(bundle: &Value) -> BTreeSet<String> {
    ids_in(bundle, "match").into_iter().collect()
}

fn link<'b>(bundle: &'b Value, relation: &str) -> Option<&'b str> {
    bundle["link"].as_array()?.iter().find(|l| l["relation"] == relation)?["url"].as_str()
}

/// Creates resources as `party` and names them: `Type/id` by label.
async fn create_all(
    app: &SearchApp,
    party: Party,
    resources: Vec<(&'static str, Value)>,
) -> HashMap<&'static str, String> {
    let mut named = HashMap::new();
    for (label, resource) in resources {
        let created = app.created(party, &resource).await;
        named.insert(
            label,
            format!("{}/{}", created["resourceType"].as_str().expect("type"), created["id"].as_str().expect("id")),
        );
    }
    named
}

fn set(named: &HashMap<&str, String>, labels: &[&str]) -> BTreeSet<String> {
    labels.iter().map(|l| named[l].clone()).collect()
}

fn id_of(reference: &str) -> &str {
    reference.rsplit('/').next().unwrap_or(reference)
}

fn gp_task(extra: Value) -> Value {
    let mut t = task("sr-x", "p-x", "GP0001", None);
    if let (Some(map), Some(extra)) = (t.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            map.insert(k.clone(), v.clone());
        }
    }
    t
}

/// Runs a table of `(query, expected labels)` against the named resources.
async fn check(app: &TestApp, party: Party, named: &HashMap<&str, String>, cases: &[(String, &[&str])]) {
    for (query, expected) in cases {
        let got = matches(&bundle(app, party, query).await);
        assert_eq!(got, set(named, expected), "{query} should match {expected:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Parameter kinds, modifiers and prefixes.

async fn token_search_matches_codes_systems_not_missing_and_text(db: Db) {
    let Some(app) = app(db).await else { return };
    let named = create_all(
        &app,
        Party::Gp,
        vec![
            ("t1", gp_task(json!({"businessStatus": {"coding": [{"system": "urn:bs", "code": "waitlisted"}], "text": "Waitlisted for a Link Worker"}}))),
            ("t2", gp_task(json!({"status": "accepted", "identifier": [{"value": "X-2"}]}))),
            ("t3", gp_task(json!({"status": "completed", "identifier": [{"system": "urn:gp", "value": "R-3"}]}))),
        ],
    )
    .await;
    let cases: Vec<(String, &[&str])> = vec![
        ("Task?status=requested".into(), &["t1"]),
        ("Task?status=requested,accepted".into(), &["t1", "t2"]),
        ("Task?status:not=requested".into(), &["t2", "t3"]),
        ("Task?status:not=requested,accepted".into(), &["t3"]),
        ("Task?business-status=urn:bs|waitlisted".into(), &["t1"]),
        ("Task?business-status=urn:bs|".into(), &["t1"]),
        ("Task?business-status=|waitlisted".into(), &[]),
        ("Task?identifier=|X-2".into(), &["t2"]),
        ("Task?identifier=urn:gp|R-3".into(), &["t3"]),
        ("Task?identifier=R-3".into(), &["t3"]),
        ("Task?identifier=urn:other|R-3".into(), &[]),
        ("Task?business-status:missing=true".into(), &["t2", "t3"]),
        ("Task?business-status:missing=false".into(), &["t1"]),
        ("Task?business-status:text=link%20worker".into(), &["t1"]),
        ("Task?code=http://hl7.org/fhir/CodeSystem/task-code|fulfill".into(), &["t1", "t2", "t3"]),
        (format!("Task?_id={},{}", id_of(&named["t1"]), id_of(&named["t3"])), &["t1", "t3"]),
        ("Task?status=requested,completed&identifier=R-3".into(), &["t3"]),
        ("Task?status=requested,accepted,completed&status:not=accepted".into(), &["t1", "t3"]),
    ];
    check(&app, Party::Gp, &named, &cases).await;
}

async fn reference_search_matches_type_and_id_plain_id_local_urls_identifiers_and_missing(db: Db) {
    let Some(app) = app(db).await else { return };
    let clw = json!({"reference": "Organization/clw-org", "identifier": {"system": ODS, "value": "CLW001"}});
    let named = create_all(
        &app,
        Party::Gp,
        vec![
            ("r1", gp_task(json!({"owner": clw, "focus": {"reference": "ServiceRequest/s1"}}))),
            ("r2", gp_task(json!({"focus": {"reference": "ServiceRequest/s2"}, "for": {"reference": "Patient/p2"}}))),
            ("r3", gp_task(json!({"owner": org_ref("CLW002")}))),
            ("r4", gp_task(json!({"owner": org_ref("CLW002"), "for": {"reference": "Group/p2"}}))),
        ],
    )
    .await;
    let base = &app.address;
    let cases: Vec<(String, &[&str])> = vec![
        ("Task?owner=Organization/clw-org".into(), &["r1"]),
        ("Task?owner=clw-org".into(), &["r1"]),
        (format!("Task?owner={base}/Organization/clw-org"), &["r1"]),
        ("Task?owner:Organization=clw-org".into(), &["r1"]),
        ("Task?owner:missing=true".into(), &["r2"]),
        ("Task?owner:missing=false".into(), &["r1", "r3", "r4"]),
        (format!("Task?owner:identifier={ODS}|CLW002"), &["r3", "r4"]),
        ("Task?owner:identifier=CLW001".into(), &["r1"]),
        (format!("Task?requester:identifier={ODS}|GP0001"), &["r1", "r2", "r3", "r4"]),
        ("Task?focus=ServiceRequest/s1,ServiceRequest/s2".into(), &["r1", "r2"]),
        ("Task?focus:ServiceRequest=s2".into(), &["r2"]),
        ("Task?patient=Patient/p2".into(), &["r2"]),
        ("Task?subject=p2".into(), &["r2", "r4"]),
        // `patient` can point at a Patient only: a bare id means one, and a Group is no patient.
        ("Task?patient=p2".into(), &["r2"]),
        ("Task?patient:missing=true".into(), &["r4"]),
        ("Task?subject:missing=true".into(), &[]),
        ("Task?patient=Patient/p-x".into(), &["r1", "r3"]),
    ];
    check(&app, Party::Gp, &named, &cases).await;
    for query in [
        "Task?owner=https://elsewhere.example/fhir/Organization/clw-org",
        "Task?patient=Organization/1",
        "Task?owner=a/b/c",
    ] {
        let (status, body) = search(&app, Party::Gp, query).await;
        assert_eq!(status, 400, "{query} is refused: {body}");
        assert_eq!(
            body["issue"][0]["expression"][0],
            query.split(['?', '=']).nth(1).unwrap_or_default(),
            "{query}: names the parameter"
        );
    }
}

async fn date_search_honours_every_prefix_at_the_precision_given(db: Db) {
    let Some(app) = app(db).await else { return };
    let named = create_all(
        &app,
        Party::Gp,
        vec![
            ("a", gp_task(json!({"authoredOn": "2026-03-05T10:00:00Z"}))),
            ("b", gp_task(json!({"authoredOn": "2026-03-06"}))),
            ("c", gp_task(json!({"authoredOn": "2026-04"}))),
            ("d", gp_task(json!({"authoredOn": "2020"}))),
        ],
    )
    .await;
    let cases: Vec<(String, &[&str])> = vec![
        ("Task?authored-on=2026-03-05".into(), &["a"]),
        ("Task?authored-on=eq2026-03".into(), &["a", "b"]),
        ("Task?authored-on=2026".into(), &["a", "b", "c"]),
        ("Task?authored-on=ne2026-03".into(), &["c", "d"]),
        ("Task?authored-on=lt2026-03-06".into(), &["a", "d"]),
        ("Task?authored-on=le2026-03-06".into(), &["a", "b", "d"]),
        ("Task?authored-on=gt2026-03-06".into(), &["c"]),
        ("Task?authored-on=ge2026-03-06".into(), &["b", "c"]),
        ("Task?authored-on=sa2026-03-05".into(), &["b", "c"]),
        ("Task?authored-on=eb2026-03-06".into(), &["a", "d"]),
        ("Task?authored-on=2026-03-05T10:00:00Z".into(), &["a"]),
        ("Task?authored-on=2026-03-05T11:00:00%2B01:00".into(), &["a"]),
        ("Task?authored-on=gt2026-03-05T10:00:00Z".into(), &["b", "c"]),
        ("Task?authored-on=ge2026-03-05T10:00:00Z".into(), &["a", "b", "c"]),
        // 10% of the distance to now (years) around mid-2020: the year 2020, none of 2026.
        ("Task?authored-on=ap2020-06-15".into(), &["d"]),
        ("Task?authored-on=ge2026-03&authored-on=lt2026-04".into(), &["a", "b"]),
        ("Task?authored-on=lt2021,gt2026-03-31".into(), &["c", "d"]),
    ];
    check(&app, Party::Gp, &named, &cases).await;
    let (status, body) = search(&app, Party::Gp, "Task?authored-on=2026-13-01").await;
    assert_eq!(status, 400, "a date that does not exist is refused");
    assert_eq!(body["issue"][0]["expression"][0], "authored-on");
}

async fn last_updated_search_compares_the_stored_instant(db: Db) {
    let Some(app) = app(db).await else { return };
    let first = app.created(Party::Gp, &gp_task(json!({}))).await;
    let second = app.created(Party::Gp, &gp_task(json!({}))).await;
    settle().await;
    let t1 = first["meta"]["lastUpdated"].as_str().expect("lastUpdated").to_owned();
    let named: HashMap<&str, String> = [
        ("first", format!("Task/{}", first["id"].as_str().unwrap_or(""))),
        ("second", format!("Task/{}", second["id"].as_str().unwrap_or(""))),
    ]
    .into();
    let enc = |t: &str| t.replace('+', "%2B");
    let cases: Vec<(String, &[&str])> = vec![
        (format!("Task?_lastUpdated=gt{}", enc(&t1)), &["second"]),
        (format!("Task?_lastUpdated=ge{}", enc(&t1)), &["first", "second"]),
        (format!("Task?_lastUpdated={}", enc(&t1)), &["first"]),
        (format!("Task?_lastUpdated=le{}", enc(&t1)), &["first"]),
        (format!("Task?_lastUpdated=lt{}", enc(&t1)), &[]),
        ("Task?_lastUpdated=gt2020-01-01".into(), &["first", "second"]),
    ];
    check(&app, Party::Gp, &named, &cases).await;
}

async fn string_search_matches_prefixes_exact_values_and_substrings(db: Db) {
    let Some(app) = app(db).await else { return };
    let person = |family: &str, given: &str| {
        let mut p = patient("9434765919");
        p["name"] = json!([{"family": family, "given": [given]}]);
        p
    };
    let named = create_all(
        &app,
        Party::Gp,
        vec![
            ("macleod", person("MacLeod", "Morag")),
            ("macdonald", person("Macdonald", "Éilís")),
            ("mcleod", person("McLeod", "Anne")),
            // Quotes, a backslash and characters outside ASCII: PostgreSQL's writer passes index
            // rows to the database as JSON (`store::rows`), and they must come back as written.
            ("obrien", person("O'Brien \"Óg\" \\ 🍀", "Séan")),
            ("titled", {
                let mut p = person("Grant", "Isla");
                p["name"][0]["text"] = json!("Dr Isla Grant");
                p["name"][0]["prefix"] = json!(["Dr"]);
                p
            }),
        ],
    )
    .await;
    let cases: Vec<(String, &[&str])> = vec![
        ("Patient?family=mac".into(), &["macleod", "macdonald"]),
        ("Patient?family=MAC".into(), &["macleod", "macdonald"]),
        ("Patient?family:exact=MacLeod".into(), &["macleod"]),
        ("Patient?family:exact=macleod".into(), &[]),
        ("Patient?family:contains=LEOD".into(), &["macleod", "mcleod"]),
        ("Patient?given=eilis".into(), &["macdonald"]),
        ("Patient?name=anne".into(), &["mcleod"]),
        ("Patient?family=mac,mcl".into(), &["macleod", "macdonald", "mcleod"]),
        ("Patient?family=mac&given=mor".into(), &["macleod"]),
        ("Patient?family=m%25".into(), &[]),
        ("Patient?gender=female&birthdate=1961".into(), &["macleod", "macdonald", "mcleod", "obrien", "titled"]),
        ("Patient?family:exact=O'Brien%20%22%C3%93g%22%20%5C%20%F0%9F%8D%80".into(), &["obrien"]),
        ("Patient?family=o'brien%20%22og".into(), &["obrien"]),
        ("Patient?given=sean".into(), &["obrien"]),
        // `name` is any part: its own rows (text, prefix, suffix) and those of family and given.
        ("Patient?name=macl".into(), &["macleod"]),
        ("Patient?name=mor,isl".into(), &["macleod", "titled"]),
        ("Patient?name=dr".into(), &["titled"]),
        ("Patient?name:exact=Dr%20Isla%20Grant".into(), &["titled"]),
        ("Patient?name:exact=Grant".into(), &["titled"]),
        ("Patient?name:contains=LEOD".into(), &["macleod", "mcleod"]),
        ("Patient?name:missing=true".into(), &[]),
        ("Patient?family=isla".into(), &[]),
        ("Patient?family=dr".into(), &[]),
    ];
    check(&app, Party::Gp, &named, &cases).await;
    // Sorted by a name's smallest part, whichever parameter's rows hold it.
    let sorted = ids_in(&bundle(&app, Party::Gp, "Patient?_sort=name").await, "match");
    let order: Vec<&str> =
        ["mcleod", "titled", "macdonald", "macleod", "obrien"].iter().map(|l| named[l].as_str()).collect();
    assert_eq!(sorted, order, "anne, dr, eilis, macleod, o'brien");
}

// ---------------------------------------------------------------------------------------------
// Requests: POST, unknown parameters, _count, errors.

async fn post_search_merges_the_form_body_with_the_url_parameters(db: Db) {
    let Some(app) = app(db).await else { return };
    let named =
        create_all(&app, Party::Gp, vec![("a", gp_task(json!({}))), ("b", gp_task(json!({"status": "accepted"})))])
            .await;
    let response = app
        .as_party(Party::Gp, Method::POST, "/Task/_search?status=requested,accepted")
        .await
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("status:not=accepted")
        .send()
        .await
        .expect("post");
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(matches(&body), set(&named, &["a"]), "URL and body parameters are ANDed");
    let self_link = link(&body, "self").expect("self link");
    assert!(
        self_link.contains("status%3Anot=accepted") && self_link.contains("status=requested%2Caccepted"),
        "the self link carries both: {self_link}"
    );
    let (status, _) = json_of(
        app.as_party(Party::Gp, Method::POST, "/Task/_search")
            .await
            .header("Content-Type", "application/fhir+json")
            .body("{}")
            .send()
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(status, 415, "a _search body must be form-encoded");
}

async fn a_search_value_with_a_nul_character_is_refused_not_a_server_error(db: Db) {
    let Some(app) = app(db).await else { return };
    // PostgreSQL's text cannot hold U+0000: such a value must be refused before any query.
    for path in
        ["/Task?status=%00", "/Patient?family=a%00b", "/Task?requester:identifier=sys%7C%00", "/Patient?_id=%00"]
    {
        let (status, body) = json_of(app.as_party(Party::Gp, Method::GET, path).await.send().await.expect("get")).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["resourceType"], "OperationOutcome", "{path}: {body}");
    }
    // The same in a conditional create's criteria.
    let response = app
        .as_party(Party::Gp, Method::POST, "/Patient")
        .await
        .header("If-None-Exist", "identifier=https://fhir.nhs.uk/Id/nhs-number%7C%00")
        .json(&patient("9434765919"))
        .send()
        .await
        .expect("post");
    let (status, body) = json_of(response).await;
    assert_eq!(status, 400, "If-None-Exist: {body}");
}

async fn unknown_parameters_are_refused_unless_lenient_which_leaves_them_out_of_the_self_link(db: Db) {
    let Some(app) = app(db).await else { return };
    create_all(&app, Party::Gp, vec![("a", gp_task(json!({})))]).await;
    let (status, body) = search(&app, Party::Gp, "Task?status=requested&colour=blue").await;
    assert_eq!(status, 400, "unknown parameters are refused by default: {body}");
    assert_eq!(body["issue"][0]["expression"][0], "colour");
    let strict = app
        .as_party(Party::Gp, Method::GET, "/Task?status=requested&colour=blue")
        .await
        .header("Prefer", "handling=strict")
        .send()
        .await
        .expect("get");
    let (status, body) = json_of(strict).await;
    assert_eq!(status, 400, "and under strict handling: {body}");
    let lenient = app
        .as_party(Party::Gp, Method::GET, "/Task?status=requested&colour=blue")
        .await
        .header("Prefer", "handling=lenient")
        .send()
        .await
        .expect("get");
    let (status, lenient) = json_of(lenient).await;
    assert_eq!(status, 200, "lenient handling ignores them: {lenient}");
    assert_eq!(ids_in(&lenient, "match").len(), 1, "the unknown parameter does not filter");
    let self_link = link(&lenient, "self").expect("self");
    assert!(!self_link.contains("colour"), "ignored parameters are not in the self link: {self_link}");
    assert!(self_link.contains("status=requested"), "used ones are: {self_link}");
}

async fn count_is_capped_at_the_maximum_never_an_error(db: Db) {
    let Some(app) = app(db).await else { return };
    create_all(&app, Party::Gp, vec![("a", gp_task(json!({}))), ("b", gp_task(json!({})))]).await;
    let cases: &[(&str, u16, Option<&str>)] = &[
        ("Task?_count=1000000", 200, Some("_count=500")),
        ("Task?_count=99999999999999999999999", 200, Some("_count=500")),
        ("Task?_count=1", 200, Some("_count=1")),
        ("Task?_count=0", 200, Some("_count=0")),
        ("Task?_count=-1", 400, None),
        ("Task?_count=many", 400, None),
        ("Task?_sort=colour", 400, None),
        ("Task?_cursor=forged", 400, None),
        ("Task?_include=Task:nonsense", 400, None),
        ("Task?status:below=x", 400, None),
    ];
    for (query, status, in_self) in cases {
        let (got, body) = search(&app, Party::Gp, query).await;
        assert_eq!(got, *status, "{query}: {body}");
        if let Some(fragment) = in_self {
            let self_link = link(&body, "self").unwrap_or_default();
            assert!(self_link.contains(fragment), "{query}: self link {self_link} has {fragment}");
        } else {
            assert_eq!(body["resourceType"], "OperationOutcome", "{query}");
            assert!(body["issue"][0]["expression"][0].is_string(), "{query}: the issue names the parameter: {body}");
        }
    }
    let zero = bundle(&app, Party::Gp, "Task?_count=0&_total=accurate").await;
    assert_eq!((zero["total"].as_u64(), ids_in(&zero, "match").len()), (Some(2), 0), "_count=0 gives the total only");
}

// ---------------------------------------------------------------------------------------------
// Paging, sorting, totals, summaries and elements.

/// Reads every page from `query`, returning the match ids page by page.
async fn all_pages(app: &TestApp, party: Party, query: &str) -> Vec<Vec<String>> {
    let mut current = bundle(app, party, query).await;
    let mut pages = vec![ids_in(&current, "match")];
    while let Some(next) = link(&current, "next").map(str::to_owned) {
        current = follow(app, party, &next).await;
        pages.push(ids_in(&current, "match"));
        assert!(pages.len() < 100, "paging ends");
    }
    pages
}

async fn paging_by_id_has_no_duplicates_or_gaps_while_data_changes(db: Db) {
    let Some(app) = app(db).await else { return };
    for _ in 0..12 {
        app.created(Party::Gp, &gp_task(json!({}))).await;
    }
    let everything = ids_in(&bundle(&app, Party::Gp, "Task?_count=100").await, "match");
    assert_eq!(everything.len(), 12);
    let page1 = bundle(&app, Party::Gp, "Task?_count=5").await;
    assert_eq!(ids_in(&page1, "match"), everything[..5].to_vec(), "the first page is the first five in order");
    assert!(link(&page1, "previous").is_none(), "the first page has no previous");
    // Between pages: an unseen Task changes (still matching), one is deleted, two are added.
    let changed = everything[7].clone();
    app.updated(Party::Gp, &changed, |body| {
        body["status"] = json!("cancelled");
        body["statusReason"] = json!({"text": "duplicate"});
    })
    .await;
    let deleted = everything[8].clone();
    app.deleted(&deleted).await;
    app.created(Party::Gp, &gp_task(json!({}))).await;
    app.created(Party::Gp, &gp_task(json!({}))).await;

    let mut seen = ids_in(&page1, "match");
    let mut current = page1.clone();
    let mut page2 = None;
    while let Some(next) = link(&current, "next").map(str::to_owned) {
        current = follow(&app, Party::Gp, &next).await;
        page2.get_or_insert_with(|| current.clone());
        seen.extend(ids_in(&current, "match"));
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no resource is returned twice: {seen:?}");
    for id in everything.iter().filter(|id| **id != deleted) {
        assert!(seen.contains(id), "{id} matched throughout and must be returned");
    }
    assert!(!seen.contains(&deleted), "the deleted resource is not returned after its deletion");
    let page2 = page2.expect("a second page");
    let previous = link(&page2, "previous").expect("page 2 has a previous link");
    let back = follow(&app, Party::Gp, previous).await;
    // The previous page is the five rows before page 2 as the data is now (a new Task may
    // have sorted in before it).
    let now_all = ids_in(&bundle(&app, Party::Gp, "Task?_count=100").await, "match");
    let page2_first = ids_in(&page2, "match").first().cloned().expect("page 2 has rows");
    let position = now_all.iter().position(|id| *id == page2_first).expect("page 2's first row still exists");
    assert_eq!(
        ids_in(&back, "match"),
        now_all[position.saturating_sub(5)..position].to_vec(),
        "previous leads back to the rows before page 2"
    );
    assert_eq!(link(&back, "previous").is_some(), position > 5, "a previous link exactly when more rows lie before");
    assert_eq!(link(&back, "next").map(|_| ()), Some(()), "and a next link back to page 2");
}

async fn paging_by_a_changing_key_never_returns_a_resource_twice(db: Db) {
    let Some(app) = app(db).await else { return };
    for _ in 0..9 {
        app.created(Party::Gp, &gp_task(json!({}))).await;
    }
    settle().await;
    let page1 = bundle(&app, Party::Gp, "Task?_sort=-_lastUpdated&_count=4").await;
    let first = ids_in(&page1, "match");
    assert_eq!(first.len(), 4);
    // A Task already seen changes: sorted by -_lastUpdated it would move to the front again.
    for id in &first[..2] {
        app.updated(Party::Clw, id, |body| body["status"] = json!("accepted")).await;
    }
    settle().await;
    let mut seen = first.clone();
    let mut current = page1;
    while let Some(next) = link(&current, "next").map(str::to_owned) {
        current = follow(&app, Party::Gp, &next).await;
        seen.extend(ids_in(&current, "match"));
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no duplicates: {seen:?}");
    assert_eq!(seen.len(), 9, "every Task unchanged since the first page is returned once");
}

async fn results_sort_by_last_updated_authored_on_and_status_both_ways(db: Db) {
    let Some(app) = app(db).await else { return };
    let named = create_all(
        &app,
        Party::Gp,
        vec![
            ("x", gp_task(json!({"authoredOn": "2026-01-03", "status": "accepted"}))),
            ("y", gp_task(json!({"authoredOn": "2026-01-01", "status": "requested"}))),
            ("z", gp_task(json!({"authoredOn": "2026-01-02", "status": "completed"}))),
        ],
    )
    .await;
    settle().await;
    let order = |labels: &[&str]| labels.iter().map(|l| named[l].clone()).collect::<Vec<_>>();
    let cases: &[(&str, &[&str])] = &[
        ("Task?_sort=authored-on", &["y", "z", "x"]),
        ("Task?_sort=-authored-on", &["x", "z", "y"]),
        ("Task?_sort=status", &["x", "z", "y"]),
        ("Task?_sort=-status", &["y", "z", "x"]),
        ("Task?_sort=_lastUpdated", &["x", "y", "z"]),
        ("Task?_sort=-_lastUpdated", &["z", "y", "x"]),
    ];
    for (query, expected) in cases {
        let query_with_count = format!("{query}&_count=2");
        let pages = all_pages(&app, Party::Gp, &query_with_count).await;
        let got: Vec<String> = pages.concat();
        assert_eq!(got, order(expected), "{query} across pages of 2");
    }
}

async fn totals_summaries_and_elements(db: Db) {
    let Some(app) = app(db).await else { return };
    for _ in 0..3 {
        app.created(Party::Gp, &task("sr", "p", "GP0001", Some("CLW001"))).await;
    }
    for _ in 0..2 {
        app.created(Party::OtherGp, &task("sr", "p", "GP0002", Some("CLW002"))).await;
    }
    let cases: &[(Party, &str, Option<u64>, usize)] = &[
        (Party::Gp, "Task?_total=accurate&_count=1", Some(3), 1),
        (Party::OtherGp, "Task?_total=accurate&_count=1", Some(2), 1),
        (Party::Clw, "Task?_total=accurate", Some(3), 3),
        (Party::OtherClw, "Task?_summary=count", Some(2), 0),
        (Party::Gp, "Task?_summary=count&status=requested", Some(3), 0),
        (Party::Gp, "Task", Some(3), 3),
        (Party::Gp, "Task?_count=2", None, 2),
        (Party::Operator, "Task?_total=accurate", Some(5), 5),
    ];
    for (party, query, total, entries) in cases {
        let body = bundle(&app, *party, query).await;
        assert_eq!(body["total"].as_u64(), *total, "{party:?} {query}: total counts only visible rows");
        assert_eq!(ids_in(&body, "match").len(), *entries, "{party:?} {query}: entries");
    }
    let subset = bundle(&app, Party::Gp, "Task?_elements=status,owner").await;
    let first = &subset["entry"][0]["resource"];
    assert_eq!(first["status"], "requested", "named elements are kept");
    assert!(first["owner"].is_object(), "both of them");
    assert!(first.get("focus").is_none() && first.get("requester").is_none(), "others are left out: {first}");
    assert_eq!(first["meta"]["tag"][0]["code"], "SUBSETTED", "and the resource is marked");
}

// ---------------------------------------------------------------------------------------------
// Includes and tenancy.

async fn includes_and_revincludes_respect_the_callers_tenancy(db: Db) {
    let Some(app) = app(db).await else { return };
    let p = app.created(Party::Gp, &patient("9434765919")).await;
    let pid = p["id"].as_str().expect("id").to_owned();
    let sr = app.created(Party::Gp, &service_request(&pid, "GP0001", "CLW001")).await;
    let srid = sr["id"].as_str().expect("id").to_owned();
    let t = app.created(Party::Gp, &task(&srid, &pid, "GP0001", Some("CLW001"))).await;
    let tid = t["id"].as_str().expect("id").to_owned();
    let plan = json!({
        "resourceType": "CarePlan", "status": "active", "intent": "plan",
        "subject": {"reference": format!("Patient/{pid}")},
        "basedOn": [{"reference": format!("ServiceRequest/{srid}")}],
        "author": org_ref("CLW001")
    });
    let cp = app.created(Party::Clw, &plan).await;
    let cpid = cp["id"].as_str().expect("id").to_owned();
    let (task_ref, sr_ref, patient_ref, plan_ref) =
        (format!("Task/{tid}"), format!("ServiceRequest/{srid}"), format!("Patient/{pid}"), format!("CarePlan/{cpid}"));

    let includes = "Task?_include=Task:focus&_include=Task:patient&_include=Task:owner&_include=Task:requester";
    let cases: Vec<(Party, String, Vec<&String>, Vec<&String>)> = vec![
        (Party::Gp, includes.to_owned(), vec![&task_ref], vec![&sr_ref, &patient_ref]),
        // The link worker service sees the Task and the referral, not the practice's Patient record.
        (Party::Clw, includes.to_owned(), vec![&task_ref], vec![&sr_ref]),
        (Party::OtherGp, includes.to_owned(), vec![], vec![]),
        (Party::OtherClw, includes.to_owned(), vec![], vec![]),
        (Party::Gp, "ServiceRequest?_include=ServiceRequest:patient&_include=ServiceRequest:requester&_include=ServiceRequest:performer".into(), vec![&sr_ref], vec![&patient_ref]),
        (Party::Clw, format!("ServiceRequest?_id={srid}&_revinclude=Task:focus&_revinclude=CarePlan:based-on"), vec![&sr_ref], vec![&task_ref, &plan_ref]),
        // The practice does not see the CLW's CarePlan (its author is the CLW service).
        (Party::Gp, format!("ServiceRequest?_id={srid}&_revinclude=Task:focus&_revinclude=CarePlan:based-on"), vec![&sr_ref], vec![&task_ref]),
        (Party::OtherGp, format!("ServiceRequest?_id={srid}&_revinclude=Task:focus"), vec![], vec![]),
        (Party::Clw, format!("CarePlan?based-on=ServiceRequest/{srid}&_include=CarePlan:based-on"), vec![&plan_ref], vec![&sr_ref]),
        (Party::Clw, format!("ServiceRequest?patient=Patient/{pid}"), vec![&sr_ref], vec![]),
    ];
    for (party, query, expected_matches, expected_includes) in cases {
        let body = bundle(&app, party, &query).await;
        let got_matches: BTreeSet<String> = ids_in(&body, "match").into_iter().collect();
        let got_includes: BTreeSet<String> = ids_in(&body, "include").into_iter().collect();
        assert_eq!(got_matches, expected_matches.into_iter().cloned().collect(), "{party:?} {query}: matches");
        assert_eq!(got_includes, expected_includes.into_iter().cloned().collect(), "{party:?} {query}: includes");
    }
}

async fn the_capability_statement_lists_search_parameters_includes_and_revincludes(db: Db) {
    let Some(app) = app(db).await else { return };
    let body = bundle_or_resource(&app, "metadata").await;
    let resource = |t: &str| {
        body["rest"][0]["resource"]
            .as_array()
            .and_then(|r| r.iter().find(|x| x["type"] == t).cloned())
            .expect("type listed")
    };
    let strings = |v: &Value| {
        v.as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let task_resource = resource("Task");
    let task_includes = strings(&task_resource["searchInclude"]);
    for code in ["Task:focus", "Task:patient", "Task:owner", "Task:requester"] {
        assert!(task_includes.contains(&code.to_owned()), "Task searchInclude has {code}");
    }
    let sr = resource("ServiceRequest");
    let sr_revincludes = strings(&sr["searchRevInclude"]);
    for code in ["Task:focus", "CarePlan:based-on"] {
        assert!(sr_revincludes.contains(&code.to_owned()), "ServiceRequest searchRevInclude has {code}");
    }
    let names: Vec<String> = task_resource["searchParam"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["name"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    for name in [
        "_id",
        "_lastUpdated",
        "identifier",
        "status",
        "business-status",
        "code",
        "owner",
        "requester",
        "patient",
        "subject",
        "focus",
        "based-on",
        "authored-on",
        "modified",
        "output",
        "part-of",
    ] {
        assert!(names.contains(&name.to_owned()), "Task searchParam has {name}");
    }
}

async fn bundle_or_resource(app: &TestApp, path: &str) -> Value {
    let (status, body) = search(app, Party::Gp, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

on_both_databases!(
    token_search_matches_codes_systems_not_missing_and_text,
    reference_search_matches_type_and_id_plain_id_local_urls_identifiers_and_missing,
    date_search_honours_every_prefix_at_the_precision_given,
    last_updated_search_compares_the_stored_instant,
    string_search_matches_prefixes_exact_values_and_substrings,
    post_search_merges_the_form_body_with_the_url_parameters,
    unknown_parameters_are_refused_unless_lenient_which_leaves_them_out_of_the_self_link,
    a_search_value_with_a_nul_character_is_refused_not_a_server_error,
    count_is_capped_at_the_maximum_never_an_error,
    paging_by_id_has_no_duplicates_or_gaps_while_data_changes,
    paging_by_a_changing_key_never_returns_a_resource_twice,
    results_sort_by_last_updated_authored_on_and_status_both_ways,
    totals_summaries_and_elements,
    includes_and_revincludes_respect_the_callers_tenancy,
    the_capability_statement_lists_search_parameters_includes_and_revincludes,
    a_poller_never_misses_a_version_committed_late_by_concurrent_writers,
    a_write_applied_later_than_half_the_settle_window_is_refused,
    a_late_commit_inside_the_window_is_seen_by_the_next_poll,
    the_polling_queries_use_indexes,
);

// ---------------------------------------------------------------------------------------------
// The settle rule (see `service::search`), through the store and the search service.

const GP: &str = "GP0001";

fn gp() -> Principal {
    Principal::new("gp-system", OdsCode::parse(GP).expect("ods"), Role::Referrer)
}

async fn store_with_window(db: Db, window: Duration) -> Option<(Store, crate::helpers::TestDatabase)> {
    let database = test_database(db).await?;
    let store = Store::connect(&database.url, &PoolSettings { settle_window: window, ..PoolSettings::default() })
        .await
        .expect("store connects");
    Some((store, database))
}

/// A Task version of the practice, stamped `last_updated`.
fn task_write(id: &ResourceId, version: i64, last_updated: Instant) -> ResourceWrite {
    let body = json!({
        "resourceType": "Task",
        "id": id.as_str(),
        "meta": {"versionId": version.to_string(), "lastUpdated": last_updated.to_fhir()},
        "status": "requested",
        "intent": "order",
        "requester": org_ref(GP),
        "authoredOn": "2026-11-23"
    });
    ResourceWrite {
        resource_type: ResourceType::Task,
        id: id.clone(),
        version: VersionId::parse(&version.to_string()).expect("version"),
        last_updated,
        method: if version == 1 { WriteMethod::Create } else { WriteMethod::Update },
        precondition: if version == 1 {
            Precondition::Absent
        } else {
            Precondition::CurrentVersion(VersionId::parse(&(version - 1).to_string()).expect("version"))
        },
        index: extract_index(ResourceType::Task, &body),
        body: body.to_string(),
        visibility: vec![format!("org:{GP}")],
        visibility_grants: Vec::new(),
    }
}

fn one(write: ResourceWrite) -> WriteSet {
    WriteSet { resources: vec![write], ..Default::default() }
}

/// One poll as a GP system makes it: every page of `_lastUpdated=gt<since>` for its own
/// Tasks. Returns (id, version, lastUpdated) of every match, in order.
async fn poll(service: &SearchService, since: Option<Instant>) -> Vec<(String, i64, Instant)> {
    let mut params =
        vec![("requester:identifier".to_owned(), format!("{ODS}|{GP}")), ("_count".to_owned(), "7".to_owned())];
    // Every poll names `_lastUpdated`, the first one too: only such searches are settled.
    let since = since.map_or_else(|| "ge2000-01-01".to_owned(), |t| format!("gt{}", t.to_fhir()));
    params.push(("_lastUpdated".to_owned(), since));
    let limits = PageLimits { default_count: 7, max_count: 50 };
    let mut seen = Vec::new();
    loop {
        let request =
            SearchRequest { params: &params, strict: true, base_url: "http://lb.test", readable: &ResourceType::ALL };
        let page = service.search_resources(&gp(), ResourceType::Task, &request, limits).await.expect("poll succeeds");
        seen.extend(page.matches.iter().map(|v| (v.id.as_str().to_owned(), v.version.get(), v.last_updated)));
        let Some(next) = page.next else { return seen };
        params.retain(|(k, _)| k != "_cursor");
        params.push(("_cursor".to_owned(), next.encode()));
    }
}

async fn a_poller_never_misses_a_version_committed_late_by_concurrent_writers(db: Db) {
    // W is large enough that, on a loaded 2-core CI machine, the time between a write's last
    // settle check and its COMMIT becoming visible stays well under W/2 (the rule's one timing
    // assumption, see `service::search`); the writers' delays scale with it.
    let window = Duration::from_millis(2000);
    let max_delay_ms = (window.as_millis() as u64) * 6 / 10;
    let Some((store, _database)) = store_with_window(db, window).await else {
        return;
    };
    let service = SearchService::new(store.clone());
    let stop = Arc::new(AtomicBool::new(false));
    // Writers stamp a version, then take up to 1.2 * W/2 to commit it, as a request stuck
    // behind others would: versions commit out of stamp order all the time, and some too late.
    let writers: Vec<_> = (0..12)
        .map(|_| {
            let store = store.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut committed: HashMap<String, i64> = HashMap::new();
                let mut mine: Vec<(ResourceId, i64)> = Vec::new();
                let mut refused = 0;
                while !stop.load(Ordering::Relaxed) {
                    let (update, delay_ms) = {
                        let mut rng = rand::thread_rng();
                        (rng.gen_bool(0.4) && !mine.is_empty(), rng.gen_range(0..max_delay_ms))
                    };
                    let (id, version) = if update {
                        let i = rand::thread_rng().gen_range(0..mine.len());
                        (mine[i].0.clone(), mine[i].1 + 1)
                    } else {
                        (ResourceId::generate(), 1)
                    };
                    let write = task_write(&id, version, Instant::now());
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    match store.commit(one(write)).await {
                        Ok(()) => {
                            committed.insert(id.as_str().to_owned(), version);
                            match mine.iter_mut().find(|(m, _)| *m == id) {
                                Some(entry) => entry.1 = version,
                                None => mine.push((id, version)),
                            }
                        }
                        Err(StoreError::SettleWindowPassed { .. }) => refused += 1,
                        Err(e) => panic!("unexpected write failure: {e}"),
                    }
                }
                (committed, refused)
            })
        })
        .collect();
    let poller = {
        let service = service.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seen: HashMap<String, i64> = HashMap::new();
            let mut since: Option<Instant> = None;
            let mut polls = 0;
            let mut after_stop = 0;
            loop {
                let stopped = stop.load(Ordering::Relaxed);
                let rows = poll(&service, since).await;
                polls += 1;
                let ids: BTreeSet<&String> = rows.iter().map(|(id, _, _)| id).collect();
                assert_eq!(ids.len(), rows.len(), "one poll returns each resource once");
                for (id, version, last_updated) in rows {
                    let entry = seen.entry(id).or_insert(version);
                    *entry = (*entry).max(version);
                    since = Some(since.map_or(last_updated, |s| s.max(last_updated)));
                }
                if stopped {
                    // Keep polling until every write is older than the window.
                    after_stop += 1;
                    if after_stop > 8 {
                        return (seen, polls);
                    }
                    tokio::time::sleep(window / 4).await;
                } else {
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let mut committed: HashMap<String, i64> = HashMap::new();
    let mut refused = 0;
    for writer in writers {
        let (mine, r) = writer.await.expect("writer");
        committed.extend(mine);
        refused += r;
    }
    let (seen, polls) = poller.await.expect("poller");
    assert!(committed.len() > 30, "the writers wrote enough to race: {}", committed.len());
    assert!(polls > 20, "the poller polled while they wrote: {polls}");
    for (id, version) in &committed {
        assert_eq!(
            seen.get(id),
            Some(version),
            "Task/{id}: the poller must see its latest committed version {version}"
        );
    }
    assert_eq!(seen.len(), committed.len(), "and nothing that was not committed");
    eprintln!(
        "{db:?}: {} resources, {} final versions seen over {polls} polls, {refused} late writes refused",
        committed.len(),
        committed.values().sum::<i64>()
    );
}

async fn a_write_applied_later_than_half_the_settle_window_is_refused(db: Db) {
    let window = Duration::from_millis(400);
    let Some((store, _database)) = store_with_window(db, window).await else {
        return;
    };
    let cases = [(Duration::from_millis(50), true, "well inside W/2"), (Duration::from_millis(260), false, "past W/2")];
    for (age, accepted, why) in cases {
        let stamped = Instant::from_micros(Instant::now().micros() - i64::try_from(age.as_micros()).unwrap_or(0));
        let result = store.commit(one(task_write(&ResourceId::generate(), 1, stamped))).await;
        match (accepted, &result) {
            (true, Ok(())) => {}
            (false, Err(StoreError::SettleWindowPassed { late_by_ms })) => {
                assert!(*late_by_ms >= 260, "{why}: the error says how late: {late_by_ms}")
            }
            _ => panic!("{why}: unexpected {result:?}"),
        }
    }
    let all = store
        .count_matches(
            &TenantScope::Everything,
            &linkbridge::domain::search_query::SearchQuery { resource_type: ResourceType::Task, clauses: vec![] },
            None,
        )
        .await
        .expect("count");
    assert_eq!(all, 1, "the refused write left nothing behind");
}

async fn a_late_commit_inside_the_window_is_seen_by_the_next_poll(db: Db) {
    let window = Duration::from_millis(600);
    let Some((store, _database)) = store_with_window(db, window).await else {
        return;
    };
    let service = SearchService::new(store.clone());
    // A is stamped first but commits last; B is stamped and committed in between.
    let a = task_write(&ResourceId::generate(), 1, Instant::now());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let b = task_write(&ResourceId::generate(), 1, Instant::now());
    let (a_id, b_id) = (a.id.as_str().to_owned(), b.id.as_str().to_owned());
    store.commit(one(b)).await.expect("B commits");
    let first = poll(&service, None).await;
    assert!(first.is_empty(), "B is not yet settled, so the poll cannot have moved past A: {first:?}");
    store.commit(one(a)).await.expect("A commits late, within W/2 of its stamp");
    tokio::time::sleep(window + Duration::from_millis(50)).await;
    let second = poll(&service, None).await;
    let ids: Vec<&str> = second.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids, vec![a_id.as_str(), b_id.as_str()], "both, in lastUpdated order");
    let since = second.iter().map(|(_, _, t)| *t).max();
    assert!(poll(&service, since).await.is_empty(), "and nothing is new after them");
}

// ---------------------------------------------------------------------------------------------
// Query plans.

/// Plan lines that mean reading every row of a type: SQLite's `SCAN <table>` (a scan of
/// the driving subquery `d` is fine) or a search of `resources r` by type alone (with at most
/// the horizon); PostgreSQL's `Seq Scan` (priced out by `explain_search`, so only chosen
/// without a usable index) or an index scan of `resources r` by type alone.
pub(crate) fn full_scans(plan: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for (i, line) in plan.iter().enumerate() {
        let text = line.trim_start_matches([' ', '-', '>', '|', '`']);
        let sqlite_scan =
            text.starts_with("SCAN ") && !text.starts_with("SCAN d") && !text.starts_with("SCAN CONSTANT");
        let sqlite_by_type = text.starts_with("SEARCH r ") && !text.contains("id=?") && !text.contains("last_updated>");
        let postgres_by_type = text.contains(" on resources r")
            && plan[i + 1..]
                .iter()
                .take(2)
                .find(|l| l.contains("Cond:"))
                .is_some_and(|cond| !cond.contains("id = ") && !cond.contains("last_updated > "));
        if sqlite_scan || sqlite_by_type || text.contains("Seq Scan") || postgres_by_type {
            found.push(line.clone());
        }
    }
    found
}

/// Task's `focus`, the reference a poll includes and a referral's Tasks are found by.
fn task_focus() -> &'static linkbridge::domain::search_params::SearchParam {
    linkbridge::domain::search_params::find(ResourceType::Task, "focus").expect("Task:focus is registered")
}

/// The read of a poll's `_include=Task:focus` goes by the ids of the page and then by the
/// targets' keys, never through a practice's every index row or visibility key.
async fn assert_include_reads_probe_by_id(store: &Store, scope: &TenantScope, db: Db, statistics: &str) {
    // A poll's page: ten Tasks. PostgreSQL without statistics read a list this long (not two)
    // through an index on the type alone, the ids a filter over every Task's rows.
    let ids: Vec<String> = (0..10).map(|n| format!("task-{n}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let plan =
        store.explain_include(scope, task_focus(), &[ResourceType::ServiceRequest], &ids).await.expect("explain");
    if std::env::var_os("LINKBRIDGE_SHOW_PLANS").is_some() {
        eprintln!("{db:?} {statistics} _include\n{}\n", plan.join("\n"));
    }
    // The references: SQLite's `id=?` probe, PostgreSQL's per-id probe of the lateral join
    // over the ids.
    let by_id = |line: &String| line.contains("id=?") || line.contains("(id = \"*VALUES*\".");
    let unkeyed: Vec<&String> = plan
        .iter()
        .enumerate()
        .filter(|(i, line)| {
            let reads_index = line.contains("SEARCH x") || line.contains(" on idx_reference");
            reads_index && !by_id(line) && !plan[i + 1..].iter().take(2).any(|l| l.contains("Cond:") && by_id(l))
        })
        .map(|(_, line)| line)
        .collect();
    assert!(unkeyed.is_empty(), "{db:?} {statistics}: _include targets not found by id:\n{}", plan.join("\n"));
    // The targets: read by key, their visibility probed by their id.
    assert!(full_scans(&plan).is_empty(), "{db:?} {statistics}: _include read scans:\n{}", plan.join("\n"));
    let unkeyed: Vec<String> =
        postgres_probes_without_id(&plan).into_iter().filter(|line| !line.contains(" on idx_reference")).collect();
    assert!(unkeyed.is_empty(), "{db:?} {statistics}: _include read probes {unkeyed:?}:\n{}", plan.join("\n"));
}

/// PostgreSQL plan nodes reading an index table or the visibility table whose condition is
/// not keyed by the walked row's id (a poll would then visit every row its clause matches).
fn postgres_probes_without_id(plan: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for (i, line) in plan.iter().enumerate() {
        let probes = [" on idx_", " on resource_visibility"].iter().any(|table| line.contains(table));
        if !probes {
            continue;
        }
        let keyed = plan[i + 1..]
            .iter()
            .take(2)
            .find(|l| l.contains("Cond:"))
            .is_some_and(|cond| cond.contains("(id = r.id)") || cond.contains("(id = w.id)"));
        if !keyed {
            found.push(line.trim().to_owned());
        }
    }
    found
}

/// A resource of the practice `org` with its index, stamped now.
fn write_of(resource_type: ResourceType, body: Value, org: &str) -> ResourceWrite {
    let id = ResourceId::generate();
    let mut body = body;
    body["id"] = json!(id.as_str());
    ResourceWrite {
        resource_type,
        id,
        version: VersionId::FIRST,
        last_updated: Instant::now(),
        method: WriteMethod::Create,
        precondition: Precondition::Absent,
        index: extract_index(resource_type, &body),
        body: body.to_string(),
        visibility: vec![format!("org:{org}")],
        visibility_grants: Vec::new(),
    }
}

async fn the_polling_queries_use_indexes(db: Db) {
    let Some((store, database)) = store_with_window(db, Duration::from_secs(5)).await else {
        return;
    };
    // A spread of referrals over practices, services and patients, so that a planner with
    // statistics sees what is selective.
    // Stamped just before each commit: a write set must be applied within W/2 of its stamp.
    let mut writes = Vec::new();
    // A poll asks for what changed since its previous one: the last batch of the 400 here. A
    // window holding every row would rightly be read by type (PostgreSQL with statistics
    // does), and says nothing about polls.
    let mut since = Instant::now();
    for n in 0..400 {
        if n == 380 {
            since = Instant::now();
        }
        let (gp, clw, patient) = (format!("GP{:04}", n % 20), format!("CLW{:03}", n % 10), format!("p{}", n % 150));
        let status = ["requested", "accepted", "in-progress", "completed"][n % 4];
        writes.push(write_of(
            ResourceType::Task,
            json!({"resourceType": "Task", "status": status, "intent": "order",
                   "requester": {"reference": format!("Organization/{gp}"), "identifier": {"system": ODS, "value": gp}},
                   "owner": {"reference": format!("Organization/{clw}"), "identifier": {"system": ODS, "value": clw}},
                   "focus": {"reference": format!("ServiceRequest/s{n}")}, "for": {"reference": format!("Patient/{patient}")}}),
            &gp,
        ));
        writes.push(write_of(
            ResourceType::ServiceRequest,
            json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order", "subject": {"reference": format!("Patient/{patient}")}}),
            &gp,
        ));
        writes.push(write_of(
            ResourceType::CarePlan,
            json!({"resourceType": "CarePlan", "status": "active", "intent": "plan", "basedOn": [{"reference": format!("ServiceRequest/s{n}")}]}),
            &clw,
        ));
        if writes.len() >= 60 {
            store
                .commit(WriteSet { resources: std::mem::take(&mut writes), ..Default::default() })
                .await
                .expect("write");
        }
    }
    store.commit(WriteSet { resources: writes, ..Default::default() }).await.expect("write");
    // SQLite gets no ANALYZE: an embedded database never has statistics. PostgreSQL plans by
    // statistics, which autovacuum keeps in production; they lag a table that grows fast,
    // and the database may run without autovacuum: its plans must hold before ANALYZE too.
    assert_plans_use_indexes(&store, db, "before ANALYZE", since).await;
    if let linkbridge::store::DatabaseUrl::Postgres(url) = &database.url {
        use sqlx::{Connection, Executor};
        let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
        conn.execute("ANALYZE").await.expect("analyze");
        assert_plans_use_indexes(&store, db, "after ANALYZE", since).await;
    }
}

/// A `_revinclude=Task:focus` read (a page of ServiceRequests, then the Tasks that name them)
/// goes by the reference index to the Tasks, never through every Task of the type.
async fn assert_revinclude_read_probes_by_reference(store: &Store, scope: &TenantScope, db: Db, statistics: &str) {
    let ids: Vec<String> = (0..10).map(|n| format!("sr-{n}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let plan =
        store.explain_revinclude(scope, task_focus(), ResourceType::ServiceRequest, &ids).await.expect("explain");
    if std::env::var_os("LINKBRIDGE_SHOW_PLANS").is_some() {
        eprintln!("{db:?} {statistics} _revinclude\n{}\n", plan.join("\n"));
    }
    assert!(full_scans(&plan).is_empty(), "{db:?} {statistics}: _revinclude read scans:\n{}", plan.join("\n"));
    // Each read of the reference index names the target id in its key (SQLite's `target_id=?`,
    // PostgreSQL's index condition), never filters the parameter's every row.
    let by_target = |line: &String| line.contains("target_id=?") || line.contains("(target_id = ");
    let unkeyed: Vec<&String> = plan
        .iter()
        .enumerate()
        .filter(|(i, line)| {
            let reads_index = line.contains("SEARCH x") || line.contains(" on idx_reference");
            reads_index
                && !by_target(line)
                && !plan[i + 1..].iter().take(2).any(|l| l.contains("Cond:") && by_target(l))
        })
        .map(|(_, line)| line)
        .collect();
    assert!(unkeyed.is_empty(), "{db:?} {statistics}: _revinclude not by target id:\n{}", plan.join("\n"));
    let unkeyed = postgres_probes_without_id(&plan)
        .into_iter()
        .filter(|line| !line.contains(" on idx_reference"))
        .collect::<Vec<_>>();
    assert!(unkeyed.is_empty(), "{db:?} {statistics}: _revinclude probes {unkeyed:?}:\n{}", plan.join("\n"));
}

async fn assert_plans_use_indexes(store: &Store, db: Db, statistics: &str, since: Instant) {
    let scope = TenantScope::Keys(vec![format!("org:{GP}"), "everyone".to_owned()]);
    assert_include_reads_probe_by_id(store, &scope, db, statistics).await;
    assert_revinclude_read_probes_by_reference(store, &scope, db, statistics).await;
    let context = ParseContext { base_url: "http://lb.test", strict: true, now: Instant::now() };
    let last_updated = [SortKey { field: SortField::LastUpdated, descending: false }];
    let since = since.to_fhir();
    let cases: Vec<(ResourceType, String, &[SortKey])> = vec![
        (ResourceType::Task, format!("requester=Organization/GP0001&_lastUpdated=gt{since}"), &last_updated),
        (ResourceType::Task, format!("requester:identifier={ODS}|{GP}&_lastUpdated=gt{since}"), &last_updated),
        (
            ResourceType::Task,
            format!("owner=Organization/CLW001&status=requested&_lastUpdated=gt{since}"),
            &last_updated,
        ),
        (ResourceType::Task, "requester=Organization/GP0001".into(), &[]),
        (ResourceType::Task, "owner=Organization/CLW001&status=requested".into(), &[]),
        (ResourceType::Task, "owner:missing=true&status=requested".into(), &[]),
        (ResourceType::Task, format!("owner:identifier={ODS}|CLW001&status=requested"), &[]),
        (ResourceType::ServiceRequest, "patient=Patient/p1".into(), &[]),
        (ResourceType::CarePlan, "based-on=ServiceRequest/s1".into(), &[]),
    ];
    for (resource_type, query, sort) in cases {
        let params: Vec<(String, String)> =
            url::form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        let parsed = parse_search(resource_type, &params, &context).expect("parses");
        // As the service does: a horizon for searches on `_lastUpdated` only.
        let horizon = parsed.query.uses_last_updated().then(Instant::now);
        let page = SearchPage { query: &parsed.query, sort, horizon, position: None, limit: 51 };
        let plan = store.explain_search(&scope, &page).await.expect("explain");
        assert!(!plan.is_empty(), "{resource_type}?{query}: a plan");
        if std::env::var_os("LINKBRIDGE_SHOW_PLANS").is_some() {
            eprintln!("{db:?} {statistics} {resource_type}?{query}\n{}\n", plan.join("\n"));
        }
        assert!(
            full_scans(&plan).is_empty(),
            "{db:?} {statistics} {resource_type}?{query} must not read every row of a type:\n{}",
            plan.join("\n")
        );
        // A poll walks the few rows changed since its last one; it must not first collect every
        // resource its other clauses match (a practice's every Task, which only grows).
        if parsed.query.uses_last_updated() {
            let sets: Vec<&String> = plan.iter().filter(|line| line.contains("LIST SUBQUERY")).collect();
            assert!(sets.is_empty(), "{db:?} {resource_type}?{query} builds a set per poll:\n{}", plan.join("\n"));
            // On SQLite each probe is an equality down to the resource id (the index may go on
            // after it), not a walk through the organisation's index rows.
            let by_id = |line: &str| line.contains(" id=?)") || line.contains(" id=? AND");
            let walks: Vec<&String> =
                plan.iter().filter(|line| line.trim_start().starts_with("SEARCH x") && !by_id(line)).collect();
            assert!(walks.is_empty(), "{db:?} {resource_type}?{query} probes without the id:\n{}", plan.join("\n"));
            // On PostgreSQL every index row probed (clauses and tenancy) is found by the id of
            // the row walked, and the walk itself goes along `last_updated`.
            let unkeyed = postgres_probes_without_id(&plan);
            assert!(
                unkeyed.is_empty(),
                "{db:?} {statistics} {resource_type}?{query} probes without the id: {unkeyed:?}\n{}",
                plan.join("\n")
            );
        }
    }
}
