//! The store contract: the same behaviour on SQLite and PostgreSQL.

use linkbridge::domain::ids::{ResourceId, VersionId};
use linkbridge::domain::instant::Instant;
use linkbridge::domain::resource_type::ResourceType;
use linkbridge::domain::search_params::extract_index;
use linkbridge::domain::search_query::parse_criteria;
use linkbridge::domain::tenancy::TenantScope;
use linkbridge::store::{
    ClientRecord, ConditionalClaim, ConditionalKey, DatabaseUrl, DeletedContent, DeliveryOutcome, HistoryQuery,
    NoMatchRequired, OutboxEntry, OutboxKind, Precondition, ResourceWrite, Store, StoreError, SubscriptionChange,
    SubscriptionRecord, VisibilityGrant, WriteMethod, WriteSet,
};
use serde_json::json;

use crate::helpers::{test_store, Db, POSTGRES_ENV};
use crate::on_both_databases;

fn practice(org: &str) -> TenantScope {
    TenantScope::Keys(vec![format!("org:{org}"), "everyone".into()])
}

fn patient_write(id: &ResourceId, version: i64, precondition: Precondition, family: &str, org: &str) -> ResourceWrite {
    let body = json!({
        "resourceType": "Patient",
        "id": id.as_str(),
        "meta": {"versionId": version.to_string()},
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": format!("NHS-{family}")}],
        "name": [{"family": family}]
    });
    ResourceWrite {
        resource_type: ResourceType::Patient,
        id: id.clone(),
        version: VersionId::parse(&version.to_string()).expect("version"),
        last_updated: Instant::now(),
        method: if version == 1 { WriteMethod::Create } else { WriteMethod::Update },
        precondition,
        index: extract_index(ResourceType::Patient, &body),
        body: body.to_string(),
        visibility: vec![format!("org:{org}")],
        visibility_grants: Vec::new(),
    }
}

fn one(write: ResourceWrite) -> WriteSet {
    WriteSet { resources: vec![write], ..Default::default() }
}

async fn a_created_resource_reads_back_with_its_version(db: Db) {
    let Some((store, _db)) = test_store(db).await else { return };
    let id = ResourceId::generate();
    store.commit(one(patient_write(&id, 1, Precondition::Absent, "Smith", "GP1"))).await.expect("create");
    let read = store.read_current(&practice("GP1"), ResourceType::Patient, &id).await.expect("read").expect("found");
    assert_eq!(read.version.get(), 1);
    assert!(read.body.contains("Smith"), "body served as stored: {}", read.body);
    assert!(!read.deleted);
}

async fn a_create_under_a_fresh_id_stores_a_key_both_granted_and_given_once_as_the_grant(db: Db) {
    let Some((store, _db)) = test_store(db).await else { return };
    let id = ResourceId::generate();
    let mut create = patient_write(&id, 1, Precondition::Absent, "Smith", "GP1");
    assert!(create.creates_with_fresh_id(), "a create (POST) names an id the server generated");
    create.visibility_grants = vec!["org:GP1".into()];
    create.visibility = vec!["org:GP1".into(), "org:CLW1".into(), "org:CLW1".into()];
    store.commit(one(create)).await.expect("create: no conflict checks, and no key twice");
    // The next version's content names neither: the grant stays, the content key goes.
    let mut update = patient_write(&id, 2, Precondition::CurrentVersion(VersionId::FIRST), "Smith", "GP9");
    update.visibility = Vec::new();
    store.commit(one(update)).await.expect("update");
    let granted = store.read_current(&practice("GP1"), ResourceType::Patient, &id).await.expect("read");
    assert!(granted.is_some(), "granted: kept");
    let given = store.read_current(&practice("CLW1"), ResourceType::Patient, &id).await.expect("read");
    assert_eq!(given, None, "given by the first version's content only");
}

async fn a_client_named_create_applies_over_a_grant_made_before_the_resource_existed(db: Db) {
    let Some((store, _db)) = test_store(db).await else { return };
    // A referral's Task may name a Patient before a `PUT` creates it: its grant comes first.
    let id = ResourceId::parse("patient-named-by-the-client").expect("id");
    let grant = VisibilityGrant { resource_type: ResourceType::Patient, id: id.clone(), key: "org:CLW1".into() };
    store.commit(WriteSet { grants: vec![grant], ..Default::default() }).await.expect("grant");
    let mut create = patient_write(&id, 1, Precondition::Absent, "Smith", "GP1");
    create.method = WriteMethod::Update;
    assert!(!create.creates_with_fresh_id(), "a PUT names its own id");
    create.visibility = vec!["org:GP1".into(), "org:CLW1".into()];
    store.commit(one(create)).await.expect("the granted key is skipped, the rest written");
    for org in ["GP1", "CLW1"] {
        let read = store.read_current(&practice(org), ResourceType::Patient, &id).await.expect("read");
        assert!(read.is_some(), "{org} sees the patient");
    }
}

async fn another_organisation_cannot_see_a_resource(db: Db) {
    let Some((store, _db)) = test_store(db).await else { return };
    let id = ResourceId::generate();
    store.commit(one(patient_write(&id, 1, Precondition::Absent, "Smith", "GP1"))).await.expect("create");
    let read = store.read_current(&practice("GP2"), ResourceType::Patient, &id).await.expect("read");
    assert_eq!(read, None, "another practice must not see GP1's patient");
    let history = store
        .history(&practice("GP2"), ResourceType::Patient, None, &HistoryQuery { count: 10, ..Default::default() })
        .await
        .expect("history");
    assert!(history.is_empty(), "nor its history");
    let criteria = parse_criteria(ResourceType::Patient, "identifier=https://fhir.nhs.uk/Id/nhs-number|NHS-Smith")
        .expect("criteria");
    assert!(store.find_ids(&practice("GP2"), &criteria, 5).await.expect("search").is_empty(), "nor find it");
    assert_eq!(store.find_ids(&practice("GP1"), &criteria, 5).await.expect("search"), vec![id], "its owner finds it");
}

async fn two_updates_from_the_same_version_cannot_both_succeed(db: Db) {
    let Some((store, _db)) = test_store(db).await else { return };
    let id = ResourceId::generate();
    store.commit(one(patient_write(&id, 1, Precondition::Absent, "Smith", "GP1"))).await.expect("create");
    let from_v1 = || patient_write(&id, 2, Precondition::CurrentVersion(VersionId::FIRST), "Jones", "GP1");
    let (a, b) = tokio::join!(store.commit(one(from_v1())), store.commit(one(from_v1())));
    let successes = [&a, &b].iter().filter(|r| r.is_ok()).count();
    assert_eq!(successes, 1, "exactly one racing update wins: {a:?} {b:?}");
    let loser = if a.is_err() { a } else { b };
    assert!(matches!(loser, Err(StoreError::VersionConflict { .. })), "the other is a version conflict: {loser:?}");
}

async fn a_failed_write_set_leaves_nothing_behind(db: Db) {
    let Some((store, _db)) = test_store(db).await else { return };
    let existing = ResourceId::generate();
    store.commit(one(patient_write(&existing, 1, Precondition::Absent, "Smith", "GP1"))).await.expect("create");
    let fresh = ResourceId::generate();
    // The second write's precondition fails, so the first must not be kept either.
    let write_set = WriteSet {
        resources: vec![
            patient_write(&fresh, 1, Precondition::Absent, "New", "GP1"),
            patient_write(&existing, 3, Precondition::CurrentVersion(VersionId::parse("2").expect("v")), "X", "GP1"),
        ],
        ..Default::default()
    };
    assert!(store.commit(write_set).await.is_err());
    assert_eq!(store.read_current(&TenantScope::Everything, ResourceType::Patient, &fresh).await.expect("read"), None);
    let history = store
        .history(
            &TenantScope::Everything,
            ResourceType::Patient,
            Some(&fresh),
            &HistoryQuery { count: 10, ..Default::default() },
        )
        .await
        .expect("history");
    assert!(history.is_empty(), "no history of a write that did not happen");
}

async fn a_conflict_in_a_set_of_several_writes_names_the_resource_that_moved_on(db: Db) {
    let Some((store, _db)) = test_store(db).await else { return };
    let moved = ResourceId::generate();
    store.commit(one(patient_write(&moved, 1, Precondition::Absent, "Smith", "GP1"))).await.expect("create");
    store
        .commit(one(patient_write(&moved, 2, Precondition::CurrentVersion(VersionId::FIRST), "Jones", "GP1")))
        .await
        .expect("update");
    let write_set = WriteSet {
        resources: vec![
            patient_write(&ResourceId::generate(), 1, Precondition::Absent, "A", "GP1"),
            patient_write(&moved, 2, Precondition::CurrentVersion(VersionId::FIRST), "Late", "GP1"),
            patient_write(&ResourceId::generate(), 1, Precondition::Absent, "B", "GP1"),
        ],
        ..Default::default()
    };
    match store.commit(write_set).await {
        Err(StoreError::VersionConflict { resource_type, id }) => {
            assert_eq!((resource_type.as_str(), id.as_str()), ("Patient", moved.as_str()), "the one that moved on")
        }
        other => panic!("expected a version conflict, got {other:?}"),
    }
    let current = store.read_current(&practice("GP1"), ResourceType::Patient, &moved).await.expect("read");
    assert!(current.expect("still there").body.contains("Jones"), "the losing write changed nothing");
}

async fn a_set_that_creates_and_then_updates_one_resource_keeps_only_the_last_versions_index(db: Db) {
    let Some((store, _db)) = test_store(db).await else { return };
    let id = ResourceId::generate();
    let write_set = WriteSet {
        resources: vec![
            patient_write(&id, 1, Precondition::Absent, "Before", "GP1"),
            patient_write(&id, 2, Precondition::CurrentVersion(VersionId::FIRST), "After", "GP1"),
        ],
        ..Default::default()
    };
    store.commit(write_set).await.expect("both versions in one set");
    let current = store.read_current(&practice("GP1"), ResourceType::Patient, &id).await.expect("read");
    assert_eq!(current.expect("exists").version.get(), 2);
    let find = |family: &str| {
        parse_criteria(ResourceType::Patient, &format!("identifier=https://fhir.nhs.uk/Id/nhs-number|NHS-{family}"))
            .expect("criteria")
    };
    assert_eq!(store.find_ids(&practice("GP1"), &find("After"), 5).await.expect("search"), vec![id]);
    assert!(
        store.find_ids(&practice("GP1"), &find("Before"), 5).await.expect("search").is_empty(),
        "the first version's index rows are gone"
    );
}

/// GP1's patients with `family`, among the first 100 found.
async fn patients_named(store: &Store, org: &str, family: &str) -> Vec<ResourceId> {
    let criteria =
        parse_criteria(ResourceType::Patient, &format!("identifier=https://fhir.nhs.uk/Id/nhs-number|NHS-{family}"))
            .expect("criteria");
    let mut ids = store.find_ids(&practice(org), &criteria, 100).await.expect("search");
    ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    ids
}

/// More new resources than one statement's `VALUES` list holds (256 rows): on PostgreSQL the
/// chunks before the last go in statements of their own, the last with the rest of the write
/// set's inserts, and the current rows counted over all of them; a conditional key taken then
/// refuses the whole set.
async fn a_write_set_of_more_new_resources_than_one_statement_holds_commits_them_all_or_none(db: Db) {
    let Some((store, _db)) = test_store(db).await else { return };
    let many = |claimed: &ResourceId| {
        let mut write_set = patient_claiming(claimed, "identifier=NHS-Many");
        write_set.resources =
            (0..300).map(|_| patient_write(&ResourceId::generate(), 1, Precondition::Absent, "Many", "GP1")).collect();
        write_set.resources.push(patient_write(claimed, 1, Precondition::Absent, "Many", "GP1"));
        write_set
    };
    let criteria = parse_criteria(ResourceType::Patient, "identifier=https://fhir.nhs.uk/Id/nhs-number|NHS-Many")
        .expect("criteria");
    store.commit(many(&ResourceId::generate())).await.expect("301 new resources commit");
    let found = store.find_ids(&practice("GP1"), &criteria, 1000).await.expect("search");
    assert_eq!(found.len(), 301, "every one is there and indexed");
    let refused = store.commit(many(&ResourceId::generate())).await;
    assert!(matches!(refused, Err(StoreError::ConditionalClaimTaken)), "the key is taken: {refused:?}");
    let found = store.find_ids(&practice("GP1"), &criteria, 1000).await.expect("search");
    assert_eq!(found.len(), 301, "none of the refused set's 301 is kept");
}

async fn many_updates_in_one_set_each_move_from_their_own_version_and_replace_their_rows(db: Db) {
    let Some((store, _db)) = test_store(db).await else { return };
    // 37 updates: more than one statement of the writer's on SQLite (chunks of 32, 4 and 1).
    let mut ids: Vec<ResourceId> = (0..37).map(|_| ResourceId::generate()).collect();
    ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let created = ids.iter().map(|id| patient_write(id, 1, Precondition::Absent, "Before", "GP1")).collect();
    store.commit(WriteSet { resources: created, ..Default::default() }).await.expect("create");
    let from_first = Precondition::CurrentVersion(VersionId::FIRST);

    // One of them planned from a version it is not at: the set is refused whole, naming it.
    let mut stale: Vec<ResourceWrite> = ids.iter().map(|id| patient_write(id, 2, from_first, "Never", "GP2")).collect();
    stale[17] =
        patient_write(&ids[17], 3, Precondition::CurrentVersion(VersionId::parse("2").expect("v")), "Never", "GP2");
    match store.commit(WriteSet { resources: stale, ..Default::default() }).await {
        Err(StoreError::VersionConflict { id, .. }) => assert_eq!(id, ids[17].as_str(), "the stale one is named"),
        other => panic!("expected a version conflict, got {other:?}"),
    }
    assert_eq!(patients_named(&store, "GP1", "Before").await, ids, "nothing of the refused set was applied");

    // All of them from their own version, moving to another practice: each at version 2, found
    // by its new index rows only, and seen by the new practice only (content visibility).
    let moved = ids.iter().map(|id| patient_write(id, 2, from_first, "After", "GP2")).collect();
    store.commit(WriteSet { resources: moved, ..Default::default() }).await.expect("update all");
    assert_eq!(patients_named(&store, "GP2", "After").await, ids);
    assert!(patients_named(&store, "GP2", "Before").await.is_empty(), "the old index rows are gone");
    assert!(patients_named(&store, "GP1", "After").await.is_empty(), "the old practice no longer sees them");
    for id in &ids {
        let current = store.read_current(&practice("GP2"), ResourceType::Patient, id).await.expect("read");
        let current = current.expect("visible to the new practice");
        assert_eq!(current.version.get(), 2);
        assert!(current.body.contains("After"));
    }
}

/// The plans of an update's deletes of its old rows, on the writer's connection, after many
/// versions of the resources: every owner an index probe, no table scanned, and on PostgreSQL
/// no bitmap scan, which would visit the rows of every earlier version again (see
/// `rows::delete_owned`). On PostgreSQL before and after ANALYZE.
async fn an_updates_deletes_of_its_old_rows_probe_each_resource_by_index(db: Db) {
    let Some((store, database)) = test_store(db).await else { return };
    let ids: Vec<ResourceId> = (0..200).map(|_| ResourceId::generate()).collect();
    let created = ids.iter().map(|id| patient_write(id, 1, Precondition::Absent, "V1", "GP1")).collect();
    store.commit(WriteSet { resources: created, ..Default::default() }).await.expect("create");
    for version in 2..=5 {
        let from = Precondition::CurrentVersion(VersionId::parse(&(version - 1).to_string()).expect("v"));
        let updates =
            ids[..32].iter().map(|id| patient_write(id, version, from, &format!("V{version}"), "GP1")).collect();
        store.commit(WriteSet { resources: updates, ..Default::default() }).await.expect("update");
    }
    let owners: Vec<(ResourceType, ResourceId)> =
        ids[..32].iter().map(|id| (ResourceType::Patient, id.clone())).collect();
    let assert_probes = |plan: Vec<String>, when: &str| {
        let text = plan.join("\n");
        for table in ["idx_token", "idx_reference", "idx_date", "idx_string", "resource_visibility"] {
            assert!(text.contains(table), "{when}: a delete from {table}:\n{text}");
        }
        match db {
            Db::Sqlite => {
                assert!(!text.contains("SCAN "), "{when}: a table scanned:\n{text}");
            }
            Db::Postgres => {
                assert!(!text.contains("Seq Scan") && !text.contains("Bitmap"), "{when}: a scan, not probes:\n{text}");
                assert!(text.contains("Index Scan using idx_token_owner"), "{when}: owners probed by index:\n{text}");
                assert!(text.contains("Tid Scan on idx_token"), "{when}: the rows found deleted by TID:\n{text}");
            }
        }
    };
    assert_probes(store.explain_update_deletes(&owners).await.expect("explain"), "before ANALYZE");
    if let DatabaseUrl::Postgres(url) = &database.url {
        use sqlx::{Connection, Executor};
        let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
        conn.execute("ANALYZE").await.expect("analyze");
        assert_probes(store.explain_update_deletes(&owners).await.expect("explain"), "after ANALYZE");
    }
}

/// The creation of GP1's patient Smith as `id`, claiming GP1's conditional key of `criteria`.
fn patient_claiming(id: &ResourceId, criteria: &str) -> WriteSet {
    let claim = ConditionalClaim {
        scope_key: "org:GP1".into(),
        resource_type: ResourceType::Patient,
        criteria: criteria.into(),
        id: id.clone(),
        replaces: None,
    };
    WriteSet {
        resources: vec![patient_write(id, 1, Precondition::Absent, "Smith", "GP1")],
        conditional_claims: vec![claim],
        ..Default::default()
    }
}

async fn concurrent_claims_of_one_conditional_key_make_one_winner(db: Db) {
    let Some((store, _db)) = test_store(db).await else { return };
    let attempts = (0..8).map(|_| {
        let store: Store = store.clone();
        async move { store.commit(patient_claiming(&ResourceId::generate(), "identifier=x|1")).await }
    });
    let results = futures::future::join_all(attempts).await;
    let winners = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(winners, 1, "one claim wins: {results:?}");
    assert!(results.iter().filter_map(|r| r.as_ref().err()).all(|e| matches!(e, StoreError::ConditionalClaimTaken)));
    let all = store
        .history(
            &TenantScope::Everything,
            ResourceType::Patient,
            None,
            &HistoryQuery { count: 50, ..Default::default() },
        )
        .await
        .expect("history");
    assert_eq!(all.len(), 1, "the losers wrote nothing");
}

async fn a_conditional_lookup_sees_the_key_and_the_matches_of_one_moment_and_a_stale_key(db: Db) {
    let Some((store, _db)) = test_store(db).await else { return };
    let criteria = "identifier=https://fhir.nhs.uk/Id/nhs-number|NHS-Smith";
    let query = parse_criteria(ResourceType::Patient, criteria).expect("criteria");
    let key = ConditionalKey { scope_key: "org:GP1", resource_type: ResourceType::Patient, criteria };
    let scope = practice("GP1");
    let nothing = store.conditional_lookup(&key, &scope, &query, 2).await.expect("lookup");
    assert_eq!((nothing.claimed, nothing.matches), (None, vec![]), "no key, no match");

    let id = ResourceId::generate();
    store.commit(patient_claiming(&id, criteria)).await.expect("create with its key");
    let found = store.conditional_lookup(&key, &scope, &query, 2).await.expect("lookup");
    assert_eq!((found.claimed, found.matches), (Some(id.as_str().to_owned()), vec![id.clone()]));

    // The patient's NHS number changes: the key still points at it, the search no longer finds it.
    store
        .commit(one(patient_write(&id, 2, Precondition::CurrentVersion(VersionId::FIRST), "Jones", "GP1")))
        .await
        .expect("update");
    let stale = store.conditional_lookup(&key, &scope, &query, 2).await.expect("lookup");
    assert_eq!((stale.claimed, stale.matches), (Some(id.as_str().to_owned()), vec![]), "a stale key");
}

/// GP1's create of a patient with NHS number `NHS-{family}` that claims its conditional key
/// and requires the search of that number to find nothing: a conditional create planned
/// without searching first.
fn patient_requiring_no_match(family: &str) -> (ResourceId, WriteSet) {
    let id = ResourceId::generate();
    let criteria = format!("identifier=https://fhir.nhs.uk/Id/nhs-number|NHS-{family}");
    let query = parse_criteria(ResourceType::Patient, &criteria).expect("criteria");
    let claim = ConditionalClaim {
        scope_key: "org:GP1".into(),
        resource_type: ResourceType::Patient,
        criteria: query.canonical_key(),
        id: id.clone(),
        replaces: None,
    };
    let write_set = WriteSet {
        resources: vec![patient_write(&id, 1, Precondition::Absent, family, "GP1")],
        conditional_claims: vec![claim],
        no_match_required: vec![NoMatchRequired { scope: practice("GP1"), query }],
        ..Default::default()
    };
    (id, write_set)
}

/// On PostgreSQL the writer tests a batch's conditional creates of one shape in one statement
/// over their values, whatever their number, each search a probe of the identifier's index by
/// its row's values and never a scan; before ANALYZE (a table grown since its statistics) and
/// after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_batchs_no_match_searches_of_one_shape_are_one_statement_of_index_probes() {
    use sqlx::{Connection, Executor};
    let Some((store, database)) = test_store(Db::Postgres).await else { return };
    let (url, _) = postgres_url_and_name(&database.url);
    let patients =
        (0..200).map(|n| patient_write(&ResourceId::generate(), 1, Precondition::Absent, &format!("P{n}"), "GP1"));
    store.commit(WriteSet { resources: patients.collect(), ..Default::default() }).await.expect("patients");
    let searches: Vec<NoMatchRequired> =
        (0..20).map(|n| patient_requiring_no_match(&format!("Q{n}")).1.no_match_required.remove(0)).collect();
    for statistics in ["before ANALYZE", "after ANALYZE"] {
        if statistics == "after ANALYZE" {
            sqlx::PgConnection::connect(url).await.expect("connect").execute("ANALYZE").await.expect("analyze");
        }
        let plan = store.explain_no_match(&searches).await.expect("one shape, one statement");
        if std::env::var_os("LINKBRIDGE_SHOW_PLANS").is_some() {
            eprintln!("no-match searches, {statistics}\n{}\n", plan.join("\n"));
        }
        let plan_text = plan.join("\n");
        assert!(!plan_text.contains("Seq Scan"), "{statistics}: scans:\n{plan_text}");
        let token_probe = plan.iter().position(|line| line.contains(" on idx_token")).expect("the identifier's index");
        let probed_by_row =
            plan[token_probe + 1..].iter().take(2).any(|line| line.contains("Cond:") && line.contains("c.x"));
        assert!(probed_by_row, "{statistics}: the index probed by the row's values:\n{plan_text}");
        assert!(plan_text.contains("SubPlan"), "{statistics}: a probe per row, not a join:\n{plan_text}");
    }
    let mut other_shape = searches[0].clone();
    other_shape.query = parse_criteria(ResourceType::Patient, "identifier=NHS-Q0").expect("criteria: any system");
    assert!(store.explain_no_match(&[searches[0].clone(), other_shape]).await.is_err(), "two shapes, two statements");
    store.close().await;
}

/// How many versions of patients the store holds, in every organisation.
async fn patient_versions(store: &Store) -> usize {
    let all = HistoryQuery { count: 100, ..Default::default() };
    store.history(&TenantScope::Everything, ResourceType::Patient, None, &all).await.expect("history").len()
}

async fn a_create_requiring_no_match_is_refused_whole_when_one_exists_and_only_it_in_a_batch(db: Db) {
    let Some((store, _db)) = test_store(db).await else { return };
    let everything = TenantScope::Everything;
    // Smith was created without a condition (no key): only the search can find him.
    store
        .commit(one(patient_write(&ResourceId::generate(), 1, Precondition::Absent, "Smith", "GP1")))
        .await
        .expect("Smith");
    let (refused_id, refused) = patient_requiring_no_match("Smith");
    let outcome = store.commit(refused).await;
    assert!(matches!(outcome, Err(StoreError::ConditionalClaimTaken)), "a match refuses the create: {outcome:?}");
    let read = store.read_current(&everything, ResourceType::Patient, &refused_id).await.expect("read");
    assert!(read.is_none(), "nothing of the refused create was written");
    assert_eq!(patient_versions(&store).await, 1);

    // Another practice's patient of the same number is outside GP1's search.
    store
        .commit(one(patient_write(&ResourceId::generate(), 1, Precondition::Absent, "Jones", "GP2")))
        .await
        .expect("GP2's Jones");
    let (jones, write_set) = patient_requiring_no_match("Jones");
    store.commit(write_set).await.expect("GP1 sees no Jones: created");
    assert!(store.read_current(&everything, ResourceType::Patient, &jones).await.expect("read").is_some());

    // Thirty at once, every third of a number that exists: on both databases they share
    // commits, and only those a match refuses fail; the rest are written, each once.
    for n in 0..10 {
        store
            .commit(one(patient_write(&ResourceId::generate(), 1, Precondition::Absent, &format!("Old{n}"), "GP1")))
            .await
            .expect("old");
    }
    let before = patient_versions(&store).await;
    let creates = (0..30).map(|i| {
        let store = store.clone();
        async move {
            let family = if i % 3 == 0 { format!("Old{}", i / 3) } else { format!("New{i}") };
            let (id, write_set) = patient_requiring_no_match(&family);
            (i, id, store.commit(write_set).await)
        }
    });
    for (i, id, outcome) in futures::future::join_all(creates).await {
        let exists = store.read_current(&everything, ResourceType::Patient, &id).await.expect("read").is_some();
        if i % 3 == 0 {
            assert!(matches!(outcome, Err(StoreError::ConditionalClaimTaken)), "create {i} matches: {outcome:?}");
            assert!(!exists, "create {i} was refused whole");
        } else {
            assert!(outcome.is_ok(), "create {i} matches nothing: {outcome:?}");
            assert!(exists, "create {i} is written");
        }
    }
    assert_eq!(patient_versions(&store).await, before + 20, "twenty new patients, one version each");
}

async fn a_write_set_requiring_more_searches_than_one_statement_holds_is_refused_by_its_last(db: Db) {
    let Some((store, _db)) = test_store(db).await else { return };
    store
        .commit(one(patient_write(&ResourceId::generate(), 1, Precondition::Absent, "Last", "GP1")))
        .await
        .expect("Last");
    // Forty searches, more than one statement of the writer's takes: only the last matches.
    let searches = |last: &str| -> Vec<NoMatchRequired> {
        (0..40)
            .map(|n| {
                let family = if n == 39 { last.to_owned() } else { format!("Nobody{n}") };
                let criteria = format!("identifier=https://fhir.nhs.uk/Id/nhs-number|NHS-{family}");
                let query = parse_criteria(ResourceType::Patient, &criteria).expect("criteria");
                NoMatchRequired { scope: practice("GP1"), query }
            })
            .collect()
    };
    let id = ResourceId::generate();
    let write = |id: &ResourceId, last: &str| WriteSet {
        resources: vec![patient_write(id, 1, Precondition::Absent, "Many", "GP1")],
        no_match_required: searches(last),
        ..Default::default()
    };
    let outcome = store.commit(write(&id, "Last")).await;
    assert!(matches!(outcome, Err(StoreError::ConditionalClaimTaken)), "the fortieth search matches: {outcome:?}");
    assert!(store.read_current(&TenantScope::Everything, ResourceType::Patient, &id).await.expect("read").is_none());
    store.commit(write(&id, "Nobody-else")).await.expect("no search matches: applied");
    assert!(store.read_current(&TenantScope::Everything, ResourceType::Patient, &id).await.expect("read").is_some());
}

async fn history_lists_versions_newest_first_and_pages_by_cursor(db: Db) {
    let Some((store, _db)) = test_store(db).await else { return };
    let id = ResourceId::generate();
    store.commit(one(patient_write(&id, 1, Precondition::Absent, "A", "GP1"))).await.expect("v1");
    for v in 2..=4 {
        let previous = VersionId::parse(&(v - 1).to_string()).expect("v");
        store
            .commit(one(patient_write(&id, v, Precondition::CurrentVersion(previous), "B", "GP1")))
            .await
            .expect("update");
    }
    let scope = practice("GP1");
    let page1 = store
        .history(&scope, ResourceType::Patient, Some(&id), &HistoryQuery { count: 3, ..Default::default() })
        .await
        .expect("page 1");
    let versions: Vec<i64> = page1.iter().map(|v| v.version.get()).collect();
    assert_eq!(versions, vec![4, 3, 2]);
    let cursor = page1.last().map(|v| v.change_seq);
    let page2 = store
        .history(
            &scope,
            ResourceType::Patient,
            Some(&id),
            &HistoryQuery { count: 3, before_seq: cursor, ..Default::default() },
        )
        .await
        .expect("page 2");
    assert_eq!(page2.iter().map(|v| v.version.get()).collect::<Vec<_>>(), vec![1]);
}

async fn concurrent_write_sets_commit_independently_when_some_fail(db: Db) {
    let Some((store, _db)) = test_store(db).await else { return };
    let existing = ResourceId::generate();
    store.commit(one(patient_write(&existing, 1, Precondition::Absent, "Smith", "GP1"))).await.expect("create");
    // Forty writers at once: on SQLite they share commits; the ones with a failing
    // precondition must fail alone, and every successful one must be durable and visible.
    let writers = (0..40).map(|i| {
        let store = store.clone();
        let existing = existing.clone();
        async move {
            let fresh = ResourceId::generate();
            let mut writes = vec![patient_write(&fresh, 1, Precondition::Absent, "Batch", "GP1")];
            if i % 4 == 0 {
                writes.push(patient_write(
                    &existing,
                    9,
                    Precondition::CurrentVersion(VersionId::parse("8").expect("v")),
                    "X",
                    "GP1",
                ));
            }
            let outcome = store.commit(WriteSet { resources: writes, ..Default::default() }).await;
            (fresh, outcome.is_ok())
        }
    });
    let results = futures::future::join_all(writers).await;
    for (i, (id, ok)) in results.iter().enumerate() {
        assert_eq!(*ok, i % 4 != 0, "writer {i}");
        let read = store.read_current(&TenantScope::Everything, ResourceType::Patient, id).await.expect("read");
        assert_eq!(read.is_some(), *ok, "writer {i}: kept exactly when it succeeded");
    }
}

async fn concurrent_access_records_are_all_kept_and_a_bad_one_fails_alone(db: Db) {
    use linkbridge::domain::audit::{AuditAction, AuditAgent, AuditOutcome, AuditRecord};
    let Some((store, _db)) = test_store(db).await else { return };
    let record = |entity: &str| {
        AuditRecord::new(
            AuditAgent::unauthenticated(),
            AuditAction::Read,
            "read",
            AuditOutcome::from_status(200),
            Some("Task"),
            Some(entity),
        )
    };
    // Sixty reads' access records at once (on SQLite they go in together, in one statement);
    // two carry the same event id, so exactly one of those two must be refused.
    let duplicate = record("twin");
    let writers = (0..60).map(|i| {
        let store = store.clone();
        let mine = if i == 7 || i == 41 { duplicate.clone() } else { record(&format!("task-{i}")) };
        async move { store.record_audit(vec![mine]).await.is_ok() }
    });
    let results = futures::future::join_all(writers).await;
    assert_eq!(results.iter().filter(|ok| !**ok).count(), 1, "only one of the twins fails: {results:?}");
    assert!(results.iter().enumerate().all(|(i, ok)| *ok || i == 7 || i == 41));
    let kept = store.audit_events(None, None, 500).await.expect("audit events");
    assert_eq!(kept.len(), 59, "every other access record is durable");
}

async fn an_audit_event_reads_back_as_its_record_and_an_older_one_as_it_was_stored(db: Db) {
    use linkbridge::domain::audit::{AuditAction, AuditAgent, AuditOutcome, AuditRecord};
    use sqlx::Connection;
    let Some((store, database)) = test_store(db).await else { return };
    let record = AuditRecord::new(
        AuditAgent { client_id: "gp-system".into(), organization: "GP0001".into() },
        AuditAction::Update,
        "patch",
        AuditOutcome::from_status(409),
        Some("Task"),
        Some("task-1"),
    );
    store.record_audit(vec![record.clone()]).await.expect("record");
    let read = store.audit_event(&record.id).await.expect("read").expect("found");
    let body: serde_json::Value = serde_json::from_str(&read.body).expect("JSON");
    assert_eq!(body, record.to_fhir(), "the AuditEvent of the record, every fact of it");
    assert_eq!(read.recorded, record.recorded);

    // An event recorded with its text (before the `audit_facts` migration) is read as stored.
    let url = match &database.url {
        DatabaseUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
        DatabaseUrl::Postgres(url) => url.clone(),
    };
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&url).await.expect("raw connection");
    sqlx::query(
        "INSERT INTO audit_events (id, recorded, client_id, organization, action, outcome, entity_type, entity_id, body) \
         VALUES ('older', 1, 'gp-system', 'GP0001', 'R', '0', 'Task', 'task-1', '{\"resourceType\":\"AuditEvent\",\"id\":\"older\"}')",
    )
    .execute(&mut conn)
    .await
    .expect("an event as recorded before");
    let older = store.audit_event("older").await.expect("read").expect("found");
    assert_eq!(older.body, r#"{"resourceType":"AuditEvent","id":"older"}"#);
    let about_task = store.audit_events(Some(("Task", "task-1")), None, 10).await.expect("events");
    assert_eq!(about_task.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), vec!["older", record.id.as_str()]);
}

/// A subscription record (active) and `n` event notifications of it, committed.
async fn outbox_with_events(store: &Store, n: usize) -> String {
    let id = ResourceId::generate();
    let record = SubscriptionRecord {
        id: id.clone(),
        organization: "GP0001".into(),
        role: "referrer".into(),
        topic: "https://linkbridge.scot/fhir/SubscriptionTopic/referral-task".into(),
        filters: vec![],
        endpoint: "https://gp.example.org/hook".into(),
        payload: "id-only".into(),
        headers: vec![],
        heartbeat_secs: None,
        secret: Some(format!("whsec_{}", "A".repeat(32))),
        status: "active".into(),
        error: None,
    };
    store
        .commit(WriteSet {
            subscription_changes: vec![SubscriptionChange::Save(Box::new(record))],
            ..Default::default()
        })
        .await
        .expect("subscription saved");
    let notifications = (0..n)
        .map(|_| OutboxEntry {
            id: uuid::Uuid::new_v4().to_string(),
            subscription_id: id.clone(),
            kind: OutboxKind::Event,
            focus: None,
            created_at: Instant::now(),
        })
        .collect();
    store.commit(WriteSet { notifications, ..Default::default() }).await.expect("events recorded");
    id.as_str().to_owned()
}

async fn a_lapsed_claim_is_taken_over_and_its_late_outcome_is_refused(db: Db) {
    let Some((store, _db)) = test_store(db).await else { return };
    outbox_with_events(&store, 1).await;
    let lease = std::time::Duration::from_millis(300);
    let first = store.claim_due_notifications(Instant::now(), lease, 10).await.expect("claim");
    assert_eq!(first.len(), 1, "the event is claimed");
    assert_eq!(first[0].event.event_number, Some(1), "numbered from 1");
    let again = store.claim_due_notifications(Instant::now(), lease, 10).await.expect("claim");
    assert!(again.is_empty(), "a live claim is not claimed twice");

    // The claimant "dies": its lease lapses and another replica takes the event over.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let second = store.claim_due_notifications(Instant::now(), lease, 10).await.expect("claim");
    assert_eq!(second.len(), 1, "a lapsed claim is taken over");
    assert_eq!(second[0].event.id, first[0].event.id, "the same event, so the same webhook-id");
    assert_eq!(second[0].event.attempts, 2, "the takeover counts as another attempt");

    let late = store
        .finish_delivery(&first[0], DeliveryOutcome::Delivered { status: 200 }, Instant::now())
        .await
        .expect("finish");
    assert!(!late, "the first claimant's late outcome is fenced off");
    let current = store
        .finish_delivery(&second[0], DeliveryOutcome::Delivered { status: 200 }, Instant::now())
        .await
        .expect("finish");
    assert!(current, "the current claimant records the delivery");
    let stats = store.outbox_stats(None).await.expect("stats");
    assert_eq!((stats.pending, stats.delivered), (0, 1), "{stats:?}");
}

async fn concurrent_claims_take_disjoint_notifications(db: Db) {
    let Some((store, _db)) = test_store(db).await else { return };
    outbox_with_events(&store, 40).await;
    let lease = std::time::Duration::from_secs(30);
    let claims = (0..8).map(|_| store.claim_due_notifications(Instant::now(), lease, 7));
    let claimed: Vec<String> = futures::future::join_all(claims)
        .await
        .into_iter()
        .flat_map(|c| c.expect("claim"))
        .map(|c| c.event.id)
        .collect();
    let distinct: std::collections::BTreeSet<&String> = claimed.iter().collect();
    assert_eq!(claimed.len(), distinct.len(), "no notification claimed by two claimants at once");
    assert_eq!(claimed.len(), 40, "eight claims of seven take all forty");
}

async fn two_replicas_group_commits_over_the_same_resources_keep_each_write_set_whole(db: Db) {
    use linkbridge::store::PoolSettings;
    let Some((first, database)) = test_store(db).await else { return };
    // A second replica: its own writer (and on PostgreSQL its own batches) on the same data.
    let second = Store::connect(&database.url, &PoolSettings::default()).await.expect("second replica");
    let ids: Vec<ResourceId> = (0..6).map(|_| ResourceId::generate()).collect();
    for id in &ids {
        first.commit(one(patient_write(id, 1, Precondition::Absent, "Start", "GP1"))).await.expect("create");
    }
    // Forty write sets at once, half through each replica, each moving two of the six
    // resources from version 1 to 2, the pairs overlapping and named in both orders.
    let v1 = VersionId::parse("1").expect("v");
    let writers = (0..40).map(|i| {
        let store = if i % 2 == 0 { first.clone() } else { second.clone() };
        let (a, b) = (ids[i % 6].clone(), ids[(i * 5 + 1) % 6].clone());
        let b = if a == b { ids[(i + 3) % 6].clone() } else { b };
        let family = format!("Writer{i}");
        async move {
            let writes = vec![
                patient_write(&a, 2, Precondition::CurrentVersion(v1), &family, "GP1"),
                patient_write(&b, 2, Precondition::CurrentVersion(v1), &family, "GP1"),
            ];
            let outcome = store.commit(WriteSet { resources: writes, ..Default::default() }).await;
            (family, a, b, outcome)
        }
    });
    let results = futures::future::join_all(writers).await;
    let mut winners = 0;
    for (family, a, b, outcome) in &results {
        match outcome {
            Ok(()) => {
                winners += 1;
                for id in [a, b] {
                    let now = second.read_current(&TenantScope::Everything, ResourceType::Patient, id).await;
                    let now = now.expect("read").expect("exists");
                    assert_eq!(now.version.get(), 2, "{family} succeeded: {id:?} is at version 2");
                    assert!(now.body.contains(family.as_str()), "{family} wrote both of its resources: {}", now.body);
                }
            }
            Err(StoreError::VersionConflict { .. }) => {}
            Err(other) => panic!("{family}: only version conflicts may refuse a write set, got {other}"),
        }
    }
    assert!(winners >= 1, "at least one write set wins");
    second.close().await;
}

/// SQLite only: the bundled SQLite is built as `.cargo/config.toml` asks (`LIBSQLITE3_FLAGS`):
/// each connection's page cache apart from the others' (no `ENABLE_MEMORY_MANAGEMENT`, which
/// puts them all behind one global mutex) and no memory statistics (another global mutex on
/// every allocation). With either, the readers' threads queued on those mutexes for a fifth of
/// their time under polls.
#[tokio::test]
async fn the_bundled_sqlite_is_built_without_its_global_page_cache_and_memory_statistics() {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:").await.expect("an in-memory database");
    let options: Vec<String> =
        sqlx::query_scalar("PRAGMA compile_options").fetch_all(&mut conn).await.expect("compile options");
    assert!(!options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"), "{options:?}");
    assert!(options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"), "{options:?}");
}

/// SQLite only: the write-ahead log reaches the database file in the background, not only when
/// the writer's own automatic checkpoint (pushed out to 20,000 pages) runs inside a COMMIT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_checkpoints_committed_pages_into_the_database_file_in_the_background() {
    let Some((store, database)) = test_store(Db::Sqlite).await else { return };
    let linkbridge::store::DatabaseUrl::Sqlite(path) = database.url.clone() else {
        panic!("the SQLite test database is a file")
    };
    let size = || std::fs::metadata(&path).map(|m| m.len()).expect("database file");
    let before = size();
    // About 200 pages of log: far below any automatic checkpoint of the writer.
    for n in 0..100 {
        let id = ResourceId::generate();
        let mut write = patient_write(&id, 1, Precondition::Absent, &format!("Family{n}"), "GP1");
        write.body = write.body.replace("Family", &"x".repeat(4000));
        store.commit(one(write)).await.expect("commit");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while size() < before + 400_000 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(size() >= before + 400_000, "the database file grew from {before} to {} bytes: no checkpoint ran", size());
    store.close().await;
}

/// The history and current rows of version 1 of a resource, written by hand into a database of
/// an earlier layout (`change_seq`: its history row's number, distinct per resource).
fn first_version_rows(resource_type: &str, id: &str, body: &str, change_seq: usize) -> [String; 2] {
    [
        format!(
            "INSERT INTO resource_history (resource_type, id, version_id, last_updated, deleted, method, body) \
             VALUES ('{resource_type}', '{id}', 1, 1, 0, 'POST', '{body}')"
        ),
        format!(
            "INSERT INTO resources (resource_type, id, version_id, last_updated, deleted, body, change_seq) \
             VALUES ('{resource_type}', '{id}', 1, 1, 0, '{body}', {change_seq})"
        ),
    ]
}

/// Rows a database written before `patient` and `name` were answered from other parameters'
/// rows holds: a Patient and a Task for it, each indexed as that layout indexed them.
fn rows_of_the_layout_with_copies(patient: &str, task: &str) -> Vec<String> {
    let body = |resource_type: &str, id: &str| {
        json!({"resourceType": resource_type, "id": id, "meta": {"versionId": "1"}}).to_string()
    };
    let mut statements = Vec::new();
    for (n, (resource_type, id)) in [("Patient", patient), ("Task", task)].into_iter().enumerate() {
        statements.extend(first_version_rows(resource_type, id, &body(resource_type, id), n + 1));
        statements.push(format!(
            "INSERT INTO resource_visibility (resource_type, id, visibility_key, source) \
             VALUES ('{resource_type}', '{id}', 'org:GP1', 'grant')"
        ));
    }
    for param in ["patient", "subject"] {
        statements.push(format!(
            "INSERT INTO idx_reference (resource_type, id, param, target_type, target_id) \
             VALUES ('Task', '{task}', '{param}', 'Patient', '{patient}')"
        ));
    }
    for (param, value, exact) in
        [("name", "smith", "Smith"), ("name", "ann", "Ann"), ("family", "smith", "Smith"), ("given", "ann", "Ann")]
    {
        statements.push(format!(
            "INSERT INTO idx_string (resource_type, id, param, value, exact) \
             VALUES ('Patient', '{patient}', '{param}', '{value}', '{exact}')"
        ));
    }
    statements
}

/// `migrator` without its migrations from `version` on: the layout a database had before them.
fn migrations_before(migrator: &mut sqlx::migrate::Migrator, version: i64) -> &sqlx::migrate::Migrator {
    migrator.migrations =
        migrator.migrations.iter().filter(|m| m.version < version).cloned().collect::<Vec<_>>().into();
    migrator
}

/// Brings `database` to its layout before migration `before` (the number in SQLite's list, then
/// in PostgreSQL's) and writes `rows` into it, as a database written then holds them.
async fn database_written_before(database: &crate::helpers::TestDatabase, before: (i64, i64), rows: &[String]) {
    use sqlx::{Connection, Executor};
    match &database.url {
        linkbridge::store::DatabaseUrl::Sqlite(path) => {
            std::fs::create_dir_all(path.parent().expect("data directory")).expect("data directory");
            let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path).create_if_missing(true);
            let mut conn = sqlx::SqliteConnection::connect_with(&options).await.expect("open");
            let mut earlier = sqlx::migrate!("./migrations/sqlite");
            migrations_before(&mut earlier, before.0).run(&mut conn).await.expect("the earlier layout");
            for statement in rows {
                conn.execute(statement.as_str()).await.expect("a row of that layout");
            }
            conn.close().await.expect("close");
        }
        linkbridge::store::DatabaseUrl::Postgres(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await.expect("open");
            let mut earlier = sqlx::migrate!("./migrations/postgres");
            migrations_before(&mut earlier, before.1).run(&mut conn).await.expect("the earlier layout");
            for statement in rows {
                conn.execute(statement.as_str()).await.expect("a row of that layout");
            }
            conn.close().await.expect("close");
        }
    }
}

async fn a_database_whose_index_rows_had_copies_finds_the_same_after_migrating(db: Db) {
    let Some(database) = crate::helpers::test_database(db).await else { return };
    let (patient, task) = (ResourceId::generate(), ResourceId::generate());
    let rows = rows_of_the_layout_with_copies(patient.as_str(), task.as_str());
    database_written_before(&database, (13, 12), &rows).await;

    let store = Store::connect(&database.url, &linkbridge::store::PoolSettings::default()).await.expect("migrates");
    let found = |resource_type: ResourceType, criteria: &str| {
        use linkbridge::domain::search_query::{parse_search, ParseContext};
        let context = ParseContext { base_url: "http://lb.test", strict: true, now: Instant::now() };
        let params: Vec<(String, String)> =
            url::form_urlencoded::parse(criteria.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        let parsed = parse_search(resource_type, &params, &context).expect("parses");
        let store = &store;
        async move { store.find_ids(&practice("GP1"), &parsed.query, 5).await.expect("search") }
    };
    for criteria in [format!("patient=Patient/{}", patient.as_str()), format!("subject={}", patient.as_str())] {
        assert_eq!(found(ResourceType::Task, &criteria).await, vec![task.clone()], "Task?{criteria}");
    }
    for criteria in ["name=Smith", "name=Ann", "family=Smith", "given=Ann"] {
        assert_eq!(found(ResourceType::Patient, criteria).await, vec![patient.clone()], "Patient?{criteria}");
    }
    assert!(found(ResourceType::Patient, "family=Ann").await.is_empty(), "a given name is no family name");
    store.close().await;
}

/// A ServiceRequest's version `version` from GP1 to `performer`, with the visibility its
/// content gives (requester and performer).
fn service_request_write(id: &ResourceId, version: i64, performer: &str) -> ResourceWrite {
    let ods =
        |code: &str| json!({"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": code}});
    let body = json!({
        "resourceType": "ServiceRequest",
        "id": id.as_str(),
        "meta": {"versionId": version.to_string()},
        "status": "active",
        "intent": "order",
        "requester": ods("GP1"),
        "performer": [ods(performer)]
    });
    ResourceWrite {
        resource_type: ResourceType::ServiceRequest,
        id: id.clone(),
        version: VersionId::parse(&version.to_string()).expect("version"),
        last_updated: Instant::now(),
        method: if version == 1 { WriteMethod::Create } else { WriteMethod::Update },
        precondition: match version {
            1 => Precondition::Absent,
            _ => Precondition::CurrentVersion(VersionId::parse(&(version - 1).to_string()).expect("version")),
        },
        index: extract_index(ResourceType::ServiceRequest, &body),
        body: body.to_string(),
        visibility: vec!["org:GP1".to_owned(), format!("org:{performer}")],
        visibility_grants: Vec::new(),
    }
}

/// A database written while a grant of a key the content gave already was skipped: three
/// ServiceRequests whose performer gave CLW1, CLW2 and CLW3 their content key, the first two
/// with a Task owned by that service (by ODS identifier; by a reference to a directory
/// Organization), the third with none. After migrating, the GP naming another performer takes
/// the third from CLW3 alone: the Tasks' grants stand.
async fn a_referral_whose_grant_was_skipped_for_its_content_key_keeps_it_after_migrating(db: Db) {
    let Some(database) = crate::helpers::test_database(db).await else { return };
    let requests = [ResourceId::generate(), ResourceId::generate(), ResourceId::generate()];
    let (task_by_code, task_by_reference, organization) =
        (ResourceId::generate(), ResourceId::generate(), ResourceId::generate());
    let mut rows = Vec::new();
    for (n, (id, performer)) in requests.iter().zip(["CLW1", "CLW2", "CLW3"]).enumerate() {
        let write = service_request_write(id, 1, performer);
        let id = id.as_str();
        rows.extend(first_version_rows("ServiceRequest", id, &write.body, n + 1));
        for key in ["org:GP1".to_owned(), format!("org:{performer}")] {
            rows.push(format!(
                "INSERT INTO resource_visibility (resource_type, id, visibility_key, source) \
                 VALUES ('ServiceRequest', '{id}', '{key}', 'content')"
            ));
        }
    }
    let ods = "https://fhir.nhs.uk/Id/ods-organization-code";
    let (focus, owner, identifier) = (314_972_362, 335_325_081, -1_561_950_273);
    // An index row: its table, owner and parameter key, then the columns it fills.
    let index_row = |table: &str, (resource_type, id, key): (&str, &ResourceId, i32), columns: [(&str, &str); 2]| {
        let [(first, first_value), (second, second_value)] = columns;
        format!(
            "INSERT INTO {table} (resource_type, id, param_key, {first}, {second}) \
             VALUES ('{resource_type}', '{}', {key}, '{first_value}', '{second_value}')",
            id.as_str()
        )
    };
    for (task, request) in [(&task_by_code, &requests[0]), (&task_by_reference, &requests[1])] {
        let target = [("target_type", "ServiceRequest"), ("target_id", request.as_str())];
        rows.push(index_row("idx_reference", ("Task", task, focus), target));
    }
    let by_code = [("identifier_system", ods), ("identifier_value", "clw1")];
    rows.push(index_row("idx_reference", ("Task", &task_by_code, owner), by_code));
    let by_reference = [("target_type", "Organization"), ("target_id", organization.as_str())];
    rows.push(index_row("idx_reference", ("Task", &task_by_reference, owner), by_reference));
    let code = [("system", ods), ("code", "CLW2")];
    rows.push(index_row("idx_token", ("Organization", &organization, identifier), code));
    database_written_before(&database, (16, 16), &rows).await;

    let store = Store::connect(&database.url, &linkbridge::store::PoolSettings::default()).await.expect("migrates");
    for id in &requests {
        store.commit(one(service_request_write(id, 2, "CLW9"))).await.expect("the GP names another performer");
    }
    let reads = |service: &'static str, id: &ResourceId| {
        let store = &store;
        let id = id.clone();
        async move {
            let read = store.read_current(&practice(service), ResourceType::ServiceRequest, &id).await.expect("read");
            read.map(|version| version.version.get())
        }
    };
    assert_eq!(reads("CLW1", &requests[0]).await, Some(2), "CLW1's Task (owner by ODS code) granted it");
    assert_eq!(reads("CLW2", &requests[1]).await, Some(2), "CLW2's Task (owner by Organization) granted it");
    assert_eq!(reads("CLW3", &requests[2]).await, None, "no Task of CLW3's granted the third: its key was content");
    assert_eq!(reads("CLW9", &requests[2]).await, Some(2), "the new performer sees it");
    store.close().await;
}

/// SQLite only: a database written before migration 0008 (visibility and conditional keys in
/// rowid tables, then rebuilt WITHOUT ROWID) keeps who may see what, and which resource holds
/// each conditional key.
#[tokio::test]
async fn a_sqlite_database_of_the_earlier_layout_keeps_its_visibility_and_conditional_keys() {
    use sqlx::{Connection, Executor};
    let database = crate::helpers::test_database(Db::Sqlite).await.expect("SQLite always runs");
    let linkbridge::store::DatabaseUrl::Sqlite(path) = database.url.clone() else {
        panic!("the SQLite test database is a file")
    };
    std::fs::create_dir_all(path.parent().expect("data directory")).expect("data directory");
    let id = ResourceId::generate();
    let criteria = "identifier=https://fhir.nhs.uk/Id/nhs-number|9000000009";
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&path).create_if_missing(true);
        let mut conn = sqlx::SqliteConnection::connect_with(&options).await.expect("open");
        let mut earlier = sqlx::migrate!("./migrations/sqlite");
        let before_0008: Vec<_> = earlier.migrations.iter().filter(|m| m.version < 8).cloned().collect();
        assert_eq!(before_0008.len(), 7, "migrations 0001-0007");
        earlier.migrations = before_0008.into();
        earlier.run(&mut conn).await.expect("the earlier layout");
        let body = json!({"resourceType": "Patient", "id": id.as_str(), "meta": {"versionId": "1"}}).to_string();
        for statement in [
            format!(
                "INSERT INTO resource_history (resource_type, id, version_id, last_updated, deleted, method, body) \
                 VALUES ('Patient', '{id}', 1, 1, 0, 'POST', '{body}')",
                id = id.as_str()
            ),
            format!(
                "INSERT INTO resources (resource_type, id, version_id, last_updated, deleted, body, change_seq) \
                 VALUES ('Patient', '{id}', 1, 1, 0, '{body}', 1)",
                id = id.as_str()
            ),
            format!(
                "INSERT INTO resource_visibility (resource_type, id, visibility_key, source) \
                 VALUES ('Patient', '{id}', 'org:GP1', 'grant')",
                id = id.as_str()
            ),
            format!(
                "INSERT INTO conditional_keys (scope_key, resource_type, criteria, id) \
                 VALUES ('org:GP1', 'Patient', '{criteria}', '{id}')",
                id = id.as_str()
            ),
        ] {
            conn.execute(statement.as_str()).await.expect("a row of the earlier layout");
        }
        conn.close().await.expect("close");
    }

    let store = Store::connect(&database.url, &linkbridge::store::PoolSettings::default()).await.expect("migrates");
    let read = store.read_current(&practice("GP1"), ResourceType::Patient, &id).await.expect("read");
    assert_eq!(read.map(|r| r.version.get()), Some(1), "GP1 still sees its patient");
    let hidden = store.read_current(&practice("GP2"), ResourceType::Patient, &id).await.expect("read");
    assert_eq!(hidden, None, "and GP2 still does not");
    let holder = store
        .conditional_key(&ConditionalKey { scope_key: "org:GP1", resource_type: ResourceType::Patient, criteria })
        .await
        .expect("key");
    assert_eq!(holder.as_deref(), Some(id.as_str()), "the conditional key still names its resource");
    store.close().await;

    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&path);
    let mut conn = sqlx::SqliteConnection::connect_with(&options).await.expect("open");
    for table in ["resource_visibility", "conditional_keys"] {
        let sql: String = sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?")
            .bind(table)
            .fetch_one(&mut conn)
            .await
            .expect("table definition");
        assert!(sql.contains("WITHOUT ROWID"), "{table} is kept in its key's B-tree: {sql}");
    }
}

/// The URL of a PostgreSQL test database and the database's name.
fn postgres_url_and_name(url: &DatabaseUrl) -> (&str, &str) {
    let DatabaseUrl::Postgres(url) = url else { panic!("a PostgreSQL test database") };
    let name = url.rsplit('/').next().and_then(|tail| tail.split('?').next()).expect("database name");
    (url, name)
}

/// Has PostgreSQL end every connection to the test database at `url` (as a restart or an
/// administrator would); one result per connection ended.
async fn terminate_connections_to(url: &DatabaseUrl) -> Vec<bool> {
    use sqlx::Connection;
    let (_, name) = postgres_url_and_name(url);
    let admin_url = std::env::var(POSTGRES_ENV).expect("PostgreSQL configured");
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.expect("admin connection");
    sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .fetch_all(&mut admin)
    .await
    .expect("terminate the store's connections")
}

/// A PostgreSQL connection the server closed while it sat in the pool (a restart, an idle
/// timeout, an administrator) is replaced before a read or the writer gets it: the pools test
/// a connection before handing it out when it rested over a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_closed_while_idle_are_replaced_before_they_are_used() {
    let Some((store, database)) = test_store(Db::Postgres).await else { return };
    let id = ResourceId::generate();
    store.commit(one(patient_write(&id, 1, Precondition::Absent, "Smith", "GP1"))).await.expect("create");
    store.read_current(&practice("GP1"), ResourceType::Patient, &id).await.expect("read").expect("found");
    let closed = terminate_connections_to(&database.url).await;
    assert!(closed.len() >= 2, "the readers' and the writer's connections were closed: {closed:?}");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    let read = store.read_current(&practice("GP1"), ResourceType::Patient, &id).await;
    assert!(matches!(read, Ok(Some(_))), "the read got a live connection: {read:?}");
    let update =
        store.commit(one(patient_write(&id, 2, Precondition::CurrentVersion(VersionId::FIRST), "Jones", "GP1"))).await;
    assert!(update.is_ok(), "the writer got a live connection: {update:?}");
    store.close().await;
}

/// PostgreSQL connections closed a moment after they were used (not long enough to be
/// tested for their rest) fail one read; that failure has the pool test every connection
/// before it is handed out again, so the reads after it get live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_closed_while_busy_fail_one_read_and_the_next_get_live_ones() {
    let Some((store, database)) = test_store(Db::Postgres).await else { return };
    let id = ResourceId::generate();
    store.commit(one(patient_write(&id, 1, Precondition::Absent, "Smith", "GP1"))).await.expect("create");
    // Several connections in the pool, all of them used a moment ago.
    let scope = practice("GP1");
    let reads = (0..4).map(|_| store.read_current(&scope, ResourceType::Patient, &id));
    for read in futures::future::join_all(reads).await {
        assert!(matches!(read, Ok(Some(_))), "setup read: {read:?}");
    }
    let closed = terminate_connections_to(&database.url).await;
    assert!(closed.len() >= 2, "the store's connections were closed: {closed:?}");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let first = store.read_current(&practice("GP1"), ResourceType::Patient, &id).await;
    for attempt in 2..=6 {
        let read = store.read_current(&practice("GP1"), ResourceType::Patient, &id).await;
        assert!(matches!(read, Ok(Some(_))), "read {attempt} got a live connection (the first: {first:?}): {read:?}");
    }
    store.close().await;
}

/// How many of the database's backends wait for a lock now.
async fn backends_waiting_for_a_lock(admin: &mut sqlx::PgConnection, database: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'")
        .bind(database)
        .fetch_one(admin)
        .await
        .expect("count the waiting backends")
}

/// Waits until `count` of the database's backends wait for a lock.
async fn until_waiting_for_a_lock(admin: &mut sqlx::PgConnection, database: &str, count: i64) {
    for _ in 0..500 {
        if backends_waiting_for_a_lock(admin, database).await >= count {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{count} of the store's backends never waited for the lock");
}

/// Three fresh patients: a write set heavy enough that a few of them waiting make work for a
/// lane of its own.
fn three_patients() -> (WriteSet, Vec<ResourceId>) {
    let ids: Vec<ResourceId> = (0..3).map(|_| ResourceId::generate()).collect();
    let resources = ids.iter().map(|id| patient_write(id, 1, Precondition::Absent, "Lane", "GP1")).collect();
    (WriteSet { resources, ..Default::default() }, ids)
}

/// On PostgreSQL the writer commits a second batch beside a first that is still in its
/// transaction, once enough work waits; both batches commit, every write set once. The first
/// batch is held in its transaction by a lock taken from outside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_second_lane_commits_beside_a_batch_held_in_its_transaction() {
    use sqlx::{Connection, Executor};
    let Some((store, database)) = test_store(Db::Postgres).await else { return };
    let (url, name) = postgres_url_and_name(&database.url);
    let mut holder = sqlx::PgConnection::connect(url).await.expect("connect");
    let mut admin = sqlx::PgConnection::connect(url).await.expect("connect");
    holder.execute("BEGIN; LOCK TABLE resource_history IN SHARE MODE").await.expect("hold inserts");

    let (first, first_ids) = three_patients();
    let held = tokio::spawn({
        let store = store.clone();
        async move { store.commit(first).await }
    });
    until_waiting_for_a_lock(&mut admin, name, 1).await;
    // Twenty write sets of three resources: more than a lane waits for beside another.
    let mut ids = first_ids;
    let mut beside = Vec::new();
    for _ in 0..20 {
        let (write_set, written) = three_patients();
        ids.extend(written);
        let store = store.clone();
        beside.push(tokio::spawn(async move { store.commit(write_set).await }));
    }
    until_waiting_for_a_lock(&mut admin, name, 2).await;
    holder.execute("COMMIT").await.expect("release");

    held.await.expect("joins").expect("the held batch commits");
    for outcome in futures::future::join_all(beside).await {
        outcome.expect("joins").expect("every write set beside it commits");
    }
    assert!(store.group_commit_totals().parallel_batches >= 1, "{:?}", store.group_commit_totals());
    for id in &ids {
        let read = store.read_current(&practice("GP1"), ResourceType::Patient, id).await.expect("read");
        assert_eq!(read.map(|v| v.version.get()), Some(1), "{id} written once");
    }
    store.close().await;
}

/// On PostgreSQL a wave of new resources writes each history row and the current row copied
/// from it in one statement: every current row carries its history row's change sequence
/// number, body, time and deletion flag, and reads back as written.
#[tokio::test]
async fn postgres_new_resources_current_rows_are_copies_of_their_history_rows() {
    use sqlx::Connection;
    let Some((store, database)) = test_store(Db::Postgres).await else { return };
    let (url, _) = postgres_url_and_name(&database.url);
    let (write_set, ids) = three_patients();
    store.commit(write_set).await.expect("the new resources commit");
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    let copies: Vec<(String, bool)> = sqlx::query_as(
        "SELECT r.id, r.change_seq = h.change_seq AND r.body = h.body AND r.last_updated = h.last_updated \
                AND r.deleted = h.deleted \
         FROM resources r JOIN resource_history h USING (resource_type, id, version_id) \
         WHERE r.resource_type = 'Patient'",
    )
    .fetch_all(&mut conn)
    .await
    .expect("current rows joined to their history rows");
    assert_eq!(copies.len(), ids.len(), "a current row for each history row: {copies:?}");
    for (id, same) in &copies {
        assert!(ids.iter().any(|written| written.as_str() == id), "{id} is one of the new resources");
        assert!(same, "{id}'s current row is its history row's copy");
    }
    for id in &ids {
        let read = store.read_current(&practice("GP1"), ResourceType::Patient, id).await.expect("read");
        assert_eq!(read.map(|v| v.version.get()), Some(1), "{id} reads back");
    }
    store.close().await;
}

/// On SQLite the one write connection is one lane: write sets arriving while a batch commits
/// wait for it, and no batch is ever begun beside another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_commits_one_batch_at_a_time() {
    let Some((store, _db)) = test_store(Db::Sqlite).await else { return };
    let writers = (0..40).map(|_| {
        let store = store.clone();
        async move { store.commit(three_patients().0).await }
    });
    for outcome in futures::future::join_all(writers).await {
        outcome.expect("commits");
    }
    let totals = store.group_commit_totals();
    assert_eq!(totals.write_sets, 40, "{totals:?}");
    assert_eq!(totals.parallel_batches, 0, "{totals:?}");
    store.close().await;
}

async fn the_outbox_backlog_counts_what_is_not_delivered_and_its_failures(db: Db) {
    let Some((store, _db)) = test_store(db).await else { return };
    outbox_with_events(&store, 4).await;
    let claimed =
        store.claim_due_notifications(Instant::now(), std::time::Duration::from_secs(30), 10).await.expect("claim");
    assert_eq!(claimed.len(), 4, "setup: all four claimed");
    let later = Instant::from_micros(Instant::now().micros() + 3_600_000_000);
    let outcomes = [
        DeliveryOutcome::Delivered { status: 200 },
        DeliveryOutcome::Retry { next_attempt_at: later, status: Some(503), error: "unavailable".into() },
        DeliveryOutcome::Dead { status: Some(410), error: "gone".into() },
    ];
    for (claim, outcome) in claimed.iter().zip(outcomes) {
        assert!(store.finish_delivery(claim, outcome, Instant::now()).await.expect("finish"), "outcome recorded");
    }
    // The fourth is still in flight: pending, under its lease.
    let backlog = store.outbox_backlog().await.expect("backlog");
    assert_eq!((backlog.pending, backlog.dead, backlog.failures), (2, 1, 2), "{backlog:?}");
    assert!(backlog.oldest_pending.is_some(), "the oldest pending notification's age is known");
    let stats = store.outbox_stats(None).await.expect("stats");
    assert_eq!(stats.delivered, 1, "the delivered one is history, not backlog: {stats:?}");
    assert_eq!(
        (stats.pending, stats.dead, stats.oldest_pending),
        (backlog.pending, backlog.dead, backlog.oldest_pending)
    );
}

/// A Task version of `org`'s, as a write.
fn task_write(id: &ResourceId, version: i64, org: &str) -> ResourceWrite {
    let body = json!({"resourceType": "Task", "id": id.as_str(), "status": "requested", "intent": "order"});
    ResourceWrite {
        resource_type: ResourceType::Task,
        id: id.clone(),
        version: VersionId::parse(&version.to_string()).expect("version"),
        last_updated: Instant::now(),
        method: WriteMethod::Create,
        precondition: Precondition::Absent,
        index: extract_index(ResourceType::Task, &body),
        body: body.to_string(),
        visibility: vec![format!("org:{org}")],
        visibility_grants: Vec::new(),
    }
}

async fn the_writer_records_an_event_for_each_change_or_deletion_a_live_subscription_may_see(db: Db) {
    let Some((store, _db)) = test_store(db).await else { return };
    // GP0001's subscription to referral Tasks, no filters.
    let subscription = outbox_with_events(&store, 0).await;
    let pending = || async { store.outbox_stats(Some(&subscription)).await.expect("stats").pending };
    let mine = ResourceId::generate();
    store.commit(one(task_write(&mine, 1, "GP0001"))).await.expect("create mine");
    store.commit(one(task_write(&ResourceId::generate(), 1, "GP0002"))).await.expect("create theirs");
    assert_eq!(pending().await, 1, "an event for GP0001's Task, none for GP0002's");

    let content = task_write(&mine, 1, "GP0001");
    let deletion = ResourceWrite {
        version: VersionId::parse("2").expect("version"),
        method: WriteMethod::Delete,
        precondition: Precondition::CurrentVersion(VersionId::FIRST),
        body: String::new(),
        index: Vec::new(),
        visibility: Vec::new(),
        ..content.clone()
    };
    let deleted = DeletedContent {
        resource_type: ResourceType::Task,
        id: mine.clone(),
        index: content.index,
        visibility: content.visibility,
    };
    store.commit(WriteSet { deleted_contents: vec![deleted], ..one(deletion) }).await.expect("delete");
    assert_eq!(pending().await, 2, "the deletion is matched on the content deleted");
}

/// Many writers moving one resource on, each from the version it last read, their write sets
/// sharing batches and following one another's commits: every success is a version of its
/// own, none lost, none twice, and only version conflicts fail (to be retried).
async fn writers_racing_on_one_resource_leave_every_version_once(db: Db) {
    let Some((store, _db)) = test_store(db).await else { return };
    let id = ResourceId::generate();
    store.commit(one(patient_write(&id, 1, Precondition::Absent, "Start", "GP1"))).await.expect("create");
    let scope = practice("GP1");
    let (writers, changes_each) = (8, 6);
    let chains = (0..writers).map(|w| {
        let (store, id, scope) = (store.clone(), id.clone(), scope.clone());
        async move {
            let mut conflicts = 0;
            for n in 0..changes_each {
                loop {
                    let current = store.read_current(&scope, ResourceType::Patient, &id).await.expect("read");
                    let current = current.expect("exists").version;
                    let write = patient_write(
                        &id,
                        current.get() + 1,
                        Precondition::CurrentVersion(current),
                        &format!("W{w}N{n}"),
                        "GP1",
                    );
                    match store.commit(one(write)).await {
                        Ok(()) => break,
                        Err(StoreError::VersionConflict { .. }) => conflicts += 1,
                        Err(e) => panic!("writer {w}: only version conflicts may fail a change: {e}"),
                    }
                }
            }
            conflicts
        }
    });
    let conflicts: usize = futures::future::join_all(chains).await.into_iter().sum();
    let expected = 1 + writers * changes_each;
    let last = store.read_current(&scope, ResourceType::Patient, &id).await.expect("read").expect("exists");
    assert_eq!(last.version.get(), expected as i64, "one version per success ({conflicts} conflicts retried)");
    let history = store
        .history(&scope, ResourceType::Patient, Some(&id), &HistoryQuery { count: 1000, ..Default::default() })
        .await
        .expect("history");
    let versions: Vec<i64> = history.iter().map(|v| v.version.get()).collect();
    assert_eq!(versions, (1..=expected as i64).rev().collect::<Vec<_>>(), "every version once, newest first");
    let families: std::collections::HashSet<String> = history
        .iter()
        .filter_map(|v| serde_json::from_str::<serde_json::Value>(&v.body).ok())
        .filter_map(|b| b["name"][0]["family"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(families.len(), expected, "each version holds its own writer's change");
}

fn performer(client_id: &str, organization: &str) -> ClientRecord {
    ClientRecord {
        client_id: client_id.into(),
        organization: organization.into(),
        role: "performer".into(),
        jwks: Some(r#"{"keys":[]}"#.into()),
        jwks_url: None,
        scopes: "system/Task.rs".into(),
        created_at: Instant::now(),
    }
}

/// A replica remembers for a while that an organisation has a role (every referral to a CLW
/// service asks); never that it lacks one, and not past a change it made itself.
async fn a_registered_role_counts_at_once_and_a_removal_by_this_replica_too(db: Db) {
    use linkbridge::store::PoolSettings;
    let Some((replica, database)) = test_store(db).await else { return };
    // The CLI (or another replica) registers: a store of its own on the same database.
    let cli = Store::connect(&database.url, &PoolSettings::default()).await.expect("cli store");
    assert!(!replica.organization_has_role("CLW777", "performer").await.expect("ask"), "not registered yet");
    cli.upsert_client(&performer("clw-777", "CLW777")).await.expect("register");
    assert!(replica.organization_has_role("CLW777", "performer").await.expect("ask"), "a no is not remembered");
    assert!(!replica.organization_has_role("CLW777", "referrer").await.expect("ask"), "only the role it has");
    replica.remove_client("clw-777").await.expect("remove");
    assert!(!replica.organization_has_role("CLW777", "performer").await.expect("ask"), "its own removal at once");
    replica.upsert_client(&performer("clw-777", "CLW777")).await.expect("register again");
    assert!(replica.organization_has_role("CLW777", "performer").await.expect("ask"));
    replica
        .upsert_client(&ClientRecord { organization: "CLW778".into(), ..performer("clw-777", "CLW777") })
        .await
        .expect("move");
    assert!(!replica.organization_has_role("CLW777", "performer").await.expect("ask"), "moved to another organisation");
}

on_both_databases!(
    a_referral_whose_grant_was_skipped_for_its_content_key_keeps_it_after_migrating,
    a_write_set_of_more_new_resources_than_one_statement_holds_commits_them_all_or_none,
    a_write_set_requiring_more_searches_than_one_statement_holds_is_refused_by_its_last,
    a_create_requiring_no_match_is_refused_whole_when_one_exists_and_only_it_in_a_batch,
    many_updates_in_one_set_each_move_from_their_own_version_and_replace_their_rows,
    an_updates_deletes_of_its_old_rows_probe_each_resource_by_index,
    a_database_whose_index_rows_had_copies_finds_the_same_after_migrating,
    a_create_under_a_fresh_id_stores_a_key_both_granted_and_given_once_as_the_grant,
    a_client_named_create_applies_over_a_grant_made_before_the_resource_existed,
    a_registered_role_counts_at_once_and_a_removal_by_this_replica_too,
    writers_racing_on_one_resource_leave_every_version_once,
    concurrent_write_sets_commit_independently_when_some_fail,
    a_conditional_lookup_sees_the_key_and_the_matches_of_one_moment_and_a_stale_key,
    a_created_resource_reads_back_with_its_version,
    another_organisation_cannot_see_a_resource,
    two_updates_from_the_same_version_cannot_both_succeed,
    a_failed_write_set_leaves_nothing_behind,
    a_conflict_in_a_set_of_several_writes_names_the_resource_that_moved_on,
    a_set_that_creates_and_then_updates_one_resource_keeps_only_the_last_versions_index,
    concurrent_claims_of_one_conditional_key_make_one_winner,
    history_lists_versions_newest_first_and_pages_by_cursor,
    a_lapsed_claim_is_taken_over_and_its_late_outcome_is_refused,
    concurrent_claims_take_disjoint_notifications,
    concurrent_access_records_are_all_kept_and_a_bad_one_fails_alone,
    an_audit_event_reads_back_as_its_record_and_an_older_one_as_it_was_stored,
    two_replicas_group_commits_over_the_same_resources_keep_each_write_set_whole,
    the_outbox_backlog_counts_what_is_not_delivered_and_its_failures,
    the_writer_records_an_event_for_each_change_or_deletion_a_live_subscription_may_see,
);
