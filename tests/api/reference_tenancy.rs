//! Tenancy through references (issue 28, section 1): a write may name only resources its writer
//! may see, or ones it creates in the same transaction, and a foreign resource gets the answer
//! an unknown one gets; only the parties the workflow names gain visibility of a CarePlan (and
//! migration 0019 takes back what contributors were given before); a directory entry carries
//! its own organisation's ODS code and no other's.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::fixtures::{
    care_plan, consent, nhs_number, org_ref, patient, referral_transaction, service_request, task, with, ODS,
    PATIENT_ENTRY,
};
use crate::helpers::{json_of, spawn_app_on, spawn_app_with, test_database, test_settings, Db, Party, TestApp};
use crate::on_both_databases;
use crate::webhook_receiver::{new_secret, Delivery, WebhookReceiver};
use crate::workflow::{drive, id_of, post_as, post_bundle, put_as, read, refer, search, send, Referral};

const CAREPLAN_TOPIC: &str = "https://linkbridge.scot/fhir/SubscriptionTopic/link-worker-careplan";
const PAYLOAD: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content";
const SECRET: &str = "https://linkbridge.scot/fhir/StructureDefinition/webhook-secret";

/// An id no resource has.
fn unknown_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The refusal's one issue as (status, code, expression, diagnostics with `id` blanked), so a
/// refusal naming a foreign resource can be compared with one naming an unknown id.
fn refusal(status: u16, outcome: &Value, id: &str) -> (u16, String, String, String) {
    let issue = &outcome["issue"][0];
    (
        status,
        issue["code"].as_str().unwrap_or_default().to_owned(),
        issue["expression"][0].as_str().unwrap_or_default().to_owned(),
        issue["diagnostics"].as_str().unwrap_or_default().replace(id, "<id>"),
    )
}

/// Creates `resource` as `party` twice, naming `foreign` at `pointer` and then an unknown id,
/// and asserts both are refused alike: 422 at `expression`.
async fn assert_refused_like_unknown(
    app: &TestApp,
    party: Party,
    resource: &Value,
    pointer: &str,
    reference_to: &str,
    foreign: &str,
    expression: &str,
) {
    let mut naming_foreign = resource.clone();
    *naming_foreign.pointer_mut(pointer).expect("the element to point elsewhere") =
        json!(format!("{reference_to}/{foreign}"));
    let (status, outcome) = post_as(app, party, &naming_foreign, &[]).await;
    let foreign_refusal = refusal(status, &outcome, foreign);
    assert_eq!(
        (foreign_refusal.0, foreign_refusal.2.as_str()),
        (422, expression),
        "{party:?} naming another organisation's {reference_to} at {expression}: {outcome}"
    );
    let unknown = unknown_id();
    let mut naming_unknown = resource.clone();
    *naming_unknown.pointer_mut(pointer).expect("the element to point elsewhere") =
        json!(format!("{reference_to}/{unknown}"));
    let (status, outcome) = post_as(app, party, &naming_unknown, &[]).await;
    assert_eq!(refusal(status, &outcome, &unknown), foreign_refusal, "an unknown id is answered alike: {outcome}");
}

async fn a_practice_cannot_refer_another_practices_patient_and_hears_what_an_unknown_patient_gets(db: Db) {
    let Some(app) = spawn_app_on(db).await else { return };
    let theirs = id_of(&app.created(Party::Gp, &patient(&nhs_number())).await);
    let ours = id_of(&app.created(Party::OtherGp, &patient(&nhs_number())).await);
    let referral = service_request(&ours, Party::OtherGp.ods(), Party::Clw.ods());
    assert_refused_like_unknown(
        &app,
        Party::OtherGp,
        &referral,
        "/subject/reference",
        "Patient",
        &theirs,
        "ServiceRequest.subject",
    )
    .await;

    // Read by an absolute URL it is the same resource: the index and the grants read it so.
    let by_url =
        with(&referral, json!({"subject": {"reference": format!("https://elsewhere.example/fhir/Patient/{theirs}")}}));
    let (status, outcome) = post_as(&app, Party::OtherGp, &by_url, &[]).await;
    assert_eq!(status, 422, "an absolute URL naming the patient: {outcome}");

    // Supporting information is held to the same rule: GP0001's consent is not GP0002's to cite.
    let their_consent = id_of(&app.created(Party::Gp, &consent(&format!("Patient/{theirs}"))).await);
    let citing = with(&referral, json!({"supportingInfo": [{"reference": "Consent/placeholder"}]}));
    assert_refused_like_unknown(
        &app,
        Party::OtherGp,
        &citing,
        "/supportingInfo/0/reference",
        "Consent",
        &their_consent,
        "ServiceRequest.supportingInfo[0]",
    )
    .await;

    // The probe of the issue: a referral of GP0001's patient, sent by GP0002 to CLW001 in one
    // transaction, would have let CLW001 read the patient. Refused whole, nothing disclosed.
    let mut transaction = referral_transaction(&nhs_number(), Party::OtherGp.ods(), Some(Party::Clw.ods()));
    let entries = transaction["entry"].as_array_mut().expect("entries");
    entries.remove(PATIENT_ENTRY);
    for entry in entries.iter_mut() {
        for element in ["subject", "for", "patient"] {
            if entry["resource"].get(element).is_some() {
                entry["resource"][element] = json!({"reference": format!("Patient/{theirs}")});
            }
        }
    }
    let (status, outcome) = post_bundle(&app, Party::OtherGp, &transaction, &[]).await;
    assert_eq!(status, 422, "the transaction is refused: {outcome}");
    assert_eq!(app.get(Party::Clw, &format!("/Patient/{theirs}")).await.status(), 404, "CLW001 cannot read it");

    // The practice's own patient is referred as before.
    let (status, created) = post_as(&app, Party::OtherGp, &referral, &[]).await;
    assert_eq!(status, 201, "a referral of the practice's own patient: {created}");
}

async fn a_task_names_only_referrals_tasks_and_resources_its_practice_may_see(db: Db) {
    let Some(app) = spawn_app_on(db).await else { return };
    let theirs = refer(&app, Party::Gp, Some(Party::Clw.ods()), "requested").await;
    let their_consent = id_of(&app.created(Party::Gp, &consent(&format!("Patient/{}", theirs.patient))).await);
    let ours = id_of(&app.created(Party::OtherGp, &patient(&nhs_number())).await);
    let our_referral =
        id_of(&app.created(Party::OtherGp, &service_request(&ours, Party::OtherGp.ods(), Party::Clw.ods())).await);
    let our_task = task(&our_referral, &ours, Party::OtherGp.ods(), Some(Party::Clw.ods()));

    // Its focus: another practice's referral (for that referral's patient) is refused as an
    // unknown one is.
    let focused = with(&our_task, json!({"for": {"reference": format!("Patient/{}", theirs.patient)}}));
    assert_refused_like_unknown(
        &app,
        Party::OtherGp,
        &focused,
        "/focus/reference",
        "ServiceRequest",
        &theirs.service_request,
        "Task.focus",
    )
    .await;
    // Every other reference too: partOf, basedOn, and references among its inputs.
    let part_of = with(&our_task, json!({"partOf": [{"reference": "Task/placeholder"}]}));
    assert_refused_like_unknown(
        &app,
        Party::OtherGp,
        &part_of,
        "/partOf/0/reference",
        "Task",
        &theirs.task,
        "Task.partOf[0]",
    )
    .await;
    let based_on = with(&our_task, json!({"basedOn": [{"reference": "ServiceRequest/placeholder"}]}));
    assert_refused_like_unknown(
        &app,
        Party::OtherGp,
        &based_on,
        "/basedOn/0/reference",
        "ServiceRequest",
        &theirs.service_request,
        "Task.basedOn[0]",
    )
    .await;
    let input = with(
        &our_task,
        json!({"input": [{"type": {"text": "consent"}, "valueReference": {"reference": "Consent/placeholder"}}]}),
    );
    assert_refused_like_unknown(
        &app,
        Party::OtherGp,
        &input,
        "/input/0/valueReference/reference",
        "Consent",
        &their_consent,
        "Task.input[0].valueReference",
    )
    .await;

    // A performer's output names only what it may see: another service's CarePlan is not.
    let other_service = refer(&app, Party::Gp, Some(Party::OtherClw.ods()), "requested").await;
    drive(&app, &other_service.task_path(), &[(Party::OtherClw, "accepted")]).await;
    let their_plan = id_of(
        &app.created(
            Party::OtherClw,
            &care_plan(&other_service.service_request, &other_service.patient, Party::OtherClw.ods()),
        )
        .await,
    );
    drive(&app, &theirs.task_path(), &[(Party::Clw, "accepted")]).await;
    let output = json!([{"op": "add", "path": "/output", "value": [
        {"type": {"text": "care plan"}, "valueReference": {"reference": format!("CarePlan/{their_plan}")}}
    ]}]);
    let (status, outcome) = send(
        &app,
        Party::Clw,
        Method::PATCH,
        &theirs.task_path(),
        Some(("application/json-patch+json", output.to_string())),
        &[],
    )
    .await;
    assert_eq!(status, 422, "CLW001 cannot cite CLW002's CarePlan: {outcome}");
    assert_eq!(outcome["issue"][0]["expression"][0], "Task.output[0].valueReference", "{outcome}");

    let (status, created) = post_as(&app, Party::OtherGp, &our_task, &[]).await;
    assert_eq!(status, 201, "the practice's own referral Task: {created}");
}

async fn a_consent_and_a_care_plan_name_only_resources_their_writer_may_see(db: Db) {
    let Some(app) = spawn_app_on(db).await else { return };
    let theirs = id_of(&app.created(Party::Gp, &patient(&nhs_number())).await);
    let ours = id_of(&app.created(Party::OtherGp, &patient(&nhs_number())).await);
    assert_refused_like_unknown(
        &app,
        Party::OtherGp,
        &consent(&format!("Patient/{ours}")),
        "/patient/reference",
        "Patient",
        &theirs,
        "Consent.patient",
    )
    .await;
    let (status, created) = post_as(&app, Party::OtherGp, &consent(&format!("Patient/{ours}")), &[]).await;
    assert_eq!(status, 201, "a consent of the practice's own patient: {created}");

    // A CarePlan's activity may not point at a referral its CLW service has no part in.
    let worked = refer(&app, Party::Gp, Some(Party::Clw.ods()), "requested").await;
    drive(&app, &worked.task_path(), &[(Party::Clw, "accepted")]).await;
    let elsewhere = refer(&app, Party::OtherGp, Some(Party::OtherClw.ods()), "requested").await;
    let mut plan = care_plan(&worked.service_request, &worked.patient, Party::Clw.ods());
    plan["activity"][0] = json!({"reference": {"reference": "ServiceRequest/placeholder"}});
    assert_refused_like_unknown(
        &app,
        Party::Clw,
        &plan,
        "/activity/0/reference/reference",
        "ServiceRequest",
        &elsewhere.service_request,
        "CarePlan.activity[0].reference",
    )
    .await;
    plan["activity"][0]["reference"]["reference"] = json!(format!("ServiceRequest/{}", worked.service_request));
    let (status, created) = post_as(&app, Party::Clw, &plan, &[]).await;
    assert_eq!(status, 201, "an activity pointing at the referral the service works: {created}");
}

async fn a_transactions_entries_refer_to_each_other_and_not_to_what_it_deletes(db: Db) {
    let Some(app) = spawn_app_on(db).await else { return };
    // Entries naming each other by urn:uuid (resolved to the ids the entries are given).
    let transaction = referral_transaction(&nhs_number(), Party::Gp.ods(), Some(Party::Clw.ods()));
    let (status, response) = post_bundle(&app, Party::Gp, &transaction, &[]).await;
    assert_eq!(status, 200, "{response}");
    let locations: Vec<String> = response["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["response"]["location"].as_str().expect("location").to_owned())
        .collect();
    assert!(locations.iter().all(|l| l.ends_with("/_history/1")), "every entry created: {locations:?}");

    // An entry may name a resource an entry after it creates.
    let patient_urn = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let later = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": consent(&patient_urn), "request": {"method": "POST", "url": "Consent"}},
        {"fullUrl": patient_urn, "resource": patient(&nhs_number()), "request": {"method": "POST", "url": "Patient"}}
    ]});
    let (status, response) = post_bundle(&app, Party::Gp, &later, &[]).await;
    assert_eq!(status, 200, "a consent before the patient it names: {response}");

    // A resource the transaction deletes cannot be named by its other entries.
    let doomed = id_of(&app.created(Party::Gp, &patient(&nhs_number())).await);
    let deleting = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": format!("Patient/{doomed}")}},
        {"resource": consent(&format!("Patient/{doomed}")), "request": {"method": "POST", "url": "Consent"}}
    ]});
    let (status, outcome) = post_bundle(&app, Party::Gp, &deleting, &[]).await;
    assert_eq!(status, 422, "a consent of the patient the transaction deletes: {outcome}");
    assert_eq!(outcome["issue"][0]["expression"][0], "Consent.patient", "{outcome}");
    assert_eq!(app.get(Party::Gp, &format!("/Patient/{doomed}")).await.status(), 200, "nothing was applied");

    // And none may name another practice's resource.
    let foreign = id_of(&app.created(Party::OtherGp, &patient(&nhs_number())).await);
    let mut naming = referral_transaction(&nhs_number(), Party::Gp.ods(), Some(Party::Clw.ods()));
    naming["entry"][1]["resource"]["patient"] = json!({"reference": format!("Patient/{foreign}")});
    let (status, outcome) = post_bundle(&app, Party::Gp, &naming, &[]).await;
    assert_eq!(status, 422, "a consent of GP0002's patient: {outcome}");
    assert_eq!(outcome["issue"][0]["expression"][0], "Consent.patient", "{outcome}");
}

// ---------------------------------------------------------------------------------------------
// Who sees a CarePlan: its author and the referring practice, not whoever it lists.

async fn webhook_app(db: Db) -> Option<TestApp> {
    let database = test_database(db).await?;
    let settings = linkbridge::config::Settings {
        allow_private_webhook_endpoints: true,
        delivery_poll_interval_ms: 100,
        delivery_timeout_secs: 2,
        ..test_settings(&database)
    };
    Some(spawn_app_with(database, settings).await)
}

/// `party`'s active subscription to every CarePlan it may see, with the whole resource.
async fn subscribe_to_care_plans(app: &TestApp, party: Party, receiver: &WebhookReceiver) {
    let subscription = json!({
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "Hear of care plans",
        "criteria": CAREPLAN_TOPIC,
        "channel": {
            "type": "rest-hook",
            "endpoint": receiver.url(),
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": PAYLOAD, "valueCode": "full-resource"}]},
            "extension": [{"url": SECRET, "valueString": new_secret()}]
        }
    });
    let (status, created) = post_as(app, party, &subscription, &[]).await;
    assert_eq!(status, 201, "{created}");
    let path = format!("/Subscription/{}", id_of(&created));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while read(app, party, &path).await["status"] != "active" {
        assert!(std::time::Instant::now() < deadline, "{party:?}'s subscription never became active");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The resources of the event notifications a receiver accepted.
fn notified(receiver: &WebhookReceiver) -> Vec<Value> {
    let is_event = |d: &Delivery| {
        d.json()["entry"][0]["resource"]["parameter"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["name"] == "type" && p["valueCode"] == "event-notification"))
    };
    receiver.accepted().iter().filter(|d| is_event(d)).map(|d| d.json()["entry"][1]["resource"].clone()).collect()
}

async fn a_care_plans_contributors_gain_no_sight_of_it_or_of_the_patient(db: Db) {
    let Some(app) = webhook_app(db).await else { return };
    let (gp_receiver, other_gp_receiver, other_clw_receiver) =
        (WebhookReceiver::start().await, WebhookReceiver::start().await, WebhookReceiver::start().await);
    subscribe_to_care_plans(&app, Party::Gp, &gp_receiver).await;
    subscribe_to_care_plans(&app, Party::OtherGp, &other_gp_receiver).await;
    subscribe_to_care_plans(&app, Party::OtherClw, &other_clw_receiver).await;

    let referral = refer(&app, Party::Gp, Some(Party::Clw.ods()), "requested").await;
    drive(&app, &referral.task_path(), &[(Party::Clw, "accepted")]).await;
    let Referral { patient: patient_id, service_request, .. } = referral;
    let plan = with(
        &care_plan(&service_request, &patient_id, Party::Clw.ods()),
        json!({"contributor": [org_ref(Party::OtherGp.ods()), org_ref(Party::OtherClw.ods())]}),
    );
    let (status, created) = post_as(&app, Party::Clw, &plan, &[]).await;
    assert_eq!(status, 201, "{created}");
    let plan_path = format!("/CarePlan/{}", id_of(&created));

    assert_eq!(read(&app, Party::Gp, &plan_path).await["id"], created["id"], "the referring practice reads it");
    for party in [Party::OtherGp, Party::OtherClw] {
        for path in [plan_path.clone(), format!("/Patient/{patient_id}")] {
            let (status, body) = json_of(app.get(party, &path).await).await;
            assert_eq!(status, 404, "{party:?}, named as a contributor, reads {path}: {body}");
        }
        let found = search(&app, party, &format!("/CarePlan?patient=Patient/{patient_id}")).await;
        assert!(found.is_empty(), "{party:?} finds the CarePlan: {found:?}");
    }

    gp_receiver.wait_for(2, Duration::from_secs(30)).await;
    assert!(
        notified(&gp_receiver).iter().any(|r| r["id"] == created["id"]),
        "the referring practice hears of the CarePlan"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(notified(&other_gp_receiver).is_empty(), "GP0002 hears of nothing: {:?}", notified(&other_gp_receiver));
    assert!(notified(&other_clw_receiver).is_empty(), "CLW002 hears of nothing: {:?}", notified(&other_clw_receiver));
}

/// Runs `statements` on `database` outside the service, as an operator upgrading it would.
async fn execute_on(database: &linkbridge::store::DatabaseUrl, statements: &[String]) {
    use sqlx::{Connection, Executor};
    match database {
        linkbridge::store::DatabaseUrl::Sqlite(path) => {
            let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
            let mut conn = sqlx::SqliteConnection::connect_with(&options).await.expect("open");
            for statement in statements {
                conn.execute(statement.as_str()).await.expect("statement");
            }
            conn.close().await.expect("close");
        }
        linkbridge::store::DatabaseUrl::Postgres(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await.expect("open");
            for statement in statements {
                conn.execute(statement.as_str()).await.expect("statement");
            }
            conn.close().await.expect("close");
        }
    }
}

/// The visibility rows of `CarePlan/id` as (key, source), in order.
async fn care_plan_rows(database: &linkbridge::store::DatabaseUrl, id: &str) -> Vec<(String, String)> {
    use sqlx::Connection;
    let query = format!(
        "SELECT visibility_key, source FROM resource_visibility \
         WHERE resource_type = 'CarePlan' AND id = '{id}' ORDER BY visibility_key, source"
    );
    match database {
        linkbridge::store::DatabaseUrl::Sqlite(path) => {
            let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path);
            let mut conn = sqlx::SqliteConnection::connect_with(&options).await.expect("open");
            sqlx::query_as(query.as_str()).fetch_all(&mut conn).await.expect("rows")
        }
        linkbridge::store::DatabaseUrl::Postgres(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await.expect("open");
            sqlx::query_as(query.as_str()).fetch_all(&mut conn).await.expect("rows")
        }
    }
}

/// A database written while `CarePlan.contributor` gave visibility: two CarePlans, each naming
/// another practice and another CLW service as contributors, which held content rows then.
/// The first names its author and its referral's requester by ODS code; the second by literal
/// references to their directory entries, and one contributor so too. Migration 0019 changes
/// rows, not tables, so the database of that time is today's without 0019's record: the
/// service writes the referrals and plans, the contributors' rows are added as the earlier
/// code added them, 0019's record is removed, and connecting runs it as a start-up does.
/// A third CarePlan, naming no contributor, keeps a row of no party's: not certainly a
/// contributor's.
async fn a_care_plans_contributors_lose_the_rows_written_before_while_its_parties_keep_theirs(db: Db) {
    let Some(app) = spawn_app_on(db).await else { return };
    let entry = |party: Party| {
        let app = &app;
        async move { id_of(&app.created(party, &organization(&[party.ods()])).await) }
    };
    let (gp_entry, clw_entry, other_clw_entry) =
        (entry(Party::Gp).await, entry(Party::Clw).await, entry(Party::OtherClw).await);

    let by_code = refer(&app, Party::Gp, Some(Party::Clw.ods()), "requested").await;
    // One open referral per patient and service: the second is another patient's.
    let other_patient = id_of(&app.created(Party::Gp, &patient(&nhs_number())).await);
    let request = with(
        &service_request(&other_patient, Party::Gp.ods(), Party::Clw.ods()),
        json!({"requester": {"reference": format!("Organization/{gp_entry}")}}),
    );
    let by_reference = id_of(&app.created(Party::Gp, &request).await);
    let work = task(&by_reference, &other_patient, Party::Gp.ods(), Some(Party::Clw.ods()));
    let work_path = format!("/Task/{}", id_of(&app.created(Party::Gp, &work).await));
    for task_path in [by_code.task_path(), work_path] {
        drive(&app, &task_path, &[(Party::Clw, "accepted")]).await;
    }
    let plans = [
        with(
            &care_plan(&by_code.service_request, &by_code.patient, Party::Clw.ods()),
            json!({"contributor": [org_ref(Party::OtherGp.ods()), org_ref(Party::OtherClw.ods())]}),
        ),
        with(
            &care_plan(&by_reference, &other_patient, Party::Clw.ods()),
            json!({
                "author": {"reference": format!("Organization/{clw_entry}")},
                "contributor": [org_ref(Party::OtherGp.ods()), {"reference": format!("Organization/{other_clw_entry}")}]
            }),
        ),
    ];
    let mut plan_ids = Vec::new();
    for plan in &plans {
        plan_ids.push(id_of(&app.created(Party::Clw, plan).await));
    }
    let patients = [by_code.patient.clone(), other_patient];
    let parties_rows =
        vec![("org:CLW001".to_owned(), "grant".to_owned()), ("org:GP0001".to_owned(), "content".to_owned())];
    let mut earlier_rows = vec!["DELETE FROM _sqlx_migrations WHERE version = 19".to_owned()];
    for id in &plan_ids {
        assert_eq!(care_plan_rows(&app.database.url, id).await, parties_rows, "today's code gives contributors none");
        for key in ["org:GP0002", "org:CLW002"] {
            earlier_rows.push(format!(
                "INSERT INTO resource_visibility (resource_type, id, visibility_key, source) \
                 VALUES ('CarePlan', '{id}', '{key}', 'content')"
            ));
        }
    }
    let without_contributors =
        id_of(&app.created(Party::Clw, &care_plan(&by_code.service_request, &by_code.patient, Party::Clw.ods())).await);
    earlier_rows.push(format!(
        "INSERT INTO resource_visibility (resource_type, id, visibility_key, source) \
         VALUES ('CarePlan', '{without_contributors}', 'org:GP0009', 'content')"
    ));
    // A deleted CarePlan's current row has an empty body, which the migration must not read.
    let deleted = unknown_id();
    earlier_rows.push(format!(
        "INSERT INTO resources (resource_type, id, version_id, last_updated, deleted, body, change_seq) \
         VALUES ('CarePlan', '{deleted}', 2, 1, 1, '', 1000000)"
    ));
    execute_on(&app.database.url, &earlier_rows).await;
    let store = linkbridge::store::Store::connect(&app.database.url, &linkbridge::store::PoolSettings::default())
        .await
        .expect("migrates");
    store.close().await;

    let mut unexplained = parties_rows.clone();
    unexplained.push(("org:GP0009".to_owned(), "content".to_owned()));
    assert_eq!(care_plan_rows(&app.database.url, &without_contributors).await, unexplained);
    for (id, patient_id) in plan_ids.iter().zip(&patients) {
        assert_eq!(care_plan_rows(&app.database.url, id).await, parties_rows, "CarePlan/{id} after migrating");
        let path = format!("/CarePlan/{id}");
        for party in [Party::Clw, Party::Gp] {
            assert_eq!(read(&app, party, &path).await["id"], json!(id), "{party:?} still reads {path}");
        }
        for party in [Party::OtherGp, Party::OtherClw] {
            for path in [path.clone(), format!("/Patient/{patient_id}")] {
                let (status, body) = json_of(app.get(party, &path).await).await;
                assert_eq!(status, 404, "{party:?}, once a contributor, reads {path}: {body}");
            }
        }
        for party in [Party::OtherGp, Party::OtherClw] {
            let found = search(&app, party, &format!("/CarePlan?patient=Patient/{patient_id}")).await;
            assert!(found.is_empty(), "{party:?} finds a CarePlan: {found:?}");
        }
        let patient_path = format!("/Patient/{patient_id}");
        for party in [Party::Clw, Party::Gp] {
            assert_eq!(read(&app, party, &patient_path).await["id"], json!(patient_id), "{party:?} reads the patient");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The directory.

fn organization(codes: &[&str]) -> Value {
    json!({
        "resourceType": "Organization",
        "identifier": codes.iter().map(|c| json!({"system": ODS, "value": c})).collect::<Vec<_>>(),
        "name": format!("Organisation {}", codes.join(" "))
    })
}

async fn a_directory_entry_carries_its_own_organisations_ods_code_and_no_other(db: Db) {
    let Some(app) = spawn_app_on(db).await else { return };
    for (codes, why) in [
        (vec!["GP0002", "GP0001"], "another practice's code beside its own"),
        (vec!["GP0002", "gp0001"], "another practice's code written in lower case"),
        (vec!["GP0002", "not-an-ods-code"], "an ODS-system identifier that is no code at all"),
    ] {
        let (status, outcome) = post_as(&app, Party::OtherGp, &organization(&codes), &[]).await;
        assert_eq!(status, 403, "{why}: {outcome}");
        assert_eq!(outcome["issue"][0]["expression"][0], "Organization.identifier", "{why}: {outcome}");
    }
    let own = app.created(Party::OtherGp, &organization(&["GP0002"])).await;
    let mut taking = own.clone();
    taking["identifier"] = json!([{"system": ODS, "value": "GP0002"}, {"system": ODS, "value": "GP0001"}]);
    let (status, outcome) = put_as(&app, Party::OtherGp, &format!("/Organization/{}", id_of(&own)), &taking).await;
    assert_eq!(status, 403, "nor may it add one to its entry: {outcome}");

    let found = search(&app, Party::Gp, &format!("/Organization?identifier={ODS}|GP0001")).await;
    assert!(found.is_empty(), "a search for GP0001's code finds no other practice's entry: {found:?}");
    let (status, listing_both) = post_as(&app, Party::Operator, &organization(&["GP0002", "GP0001"]), &[]).await;
    assert_eq!(status, 201, "the operator may write any entry: {listing_both}");
    let path = format!("/Organization/{}", id_of(&listing_both));
    let (status, outcome) = put_as(&app, Party::OtherGp, &path, &listing_both).await;
    assert_eq!(status, 403, "the practice its first code names may not keep another's: {outcome}");
    let (status, outcome) = put_as(&app, Party::Gp, &path, &with(&listing_both, json!({"name": "Mine now"}))).await;
    assert_eq!(status, 403, "nor may the other practice take it over: {outcome}");
    let corrected = with(&listing_both, json!({"identifier": [{"system": ODS, "value": "GP0002"}]}));
    let (status, outcome) = put_as(&app, Party::OtherGp, &path, &corrected).await;
    assert_eq!(status, 200, "but it may correct it to carry its own code alone: {outcome}");
}

on_both_databases!(
    a_practice_cannot_refer_another_practices_patient_and_hears_what_an_unknown_patient_gets,
    a_task_names_only_referrals_tasks_and_resources_its_practice_may_see,
    a_consent_and_a_care_plan_name_only_resources_their_writer_may_see,
    a_transactions_entries_refer_to_each_other_and_not_to_what_it_deletes,
    a_care_plans_contributors_gain_no_sight_of_it_or_of_the_patient,
    a_care_plans_contributors_lose_the_rows_written_before_while_its_parties_keep_theirs,
    a_directory_entry_carries_its_own_organisations_ods_code_and_no_other,
);
