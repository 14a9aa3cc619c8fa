//! The edges of the workflow and of tenancy (issue "Trust at the edges"): DELETE cannot bypass
//! the referral workflow (an accepted Task, a referral with open Tasks, a patient that open
//! referrals name); a resource the caller cannot see answers every verb as an unknown id does;
//! every response carries `Cache-Control: no-store` and `X-Content-Type-Options: nosniff`; and a
//! search's AuditEvent names the patients whose data its page returned.

use reqwest::Method;
use serde_json::{json, Value};

use crate::fixtures::{bundle_of, nhs_number, patient, referral_transaction, task, CONSENT_ENTRY, TASK_ENTRY};
use crate::helpers::{json_of, spawn_app, spawn_app_on, Db, Party, TestApp};
use crate::on_both_databases;
use crate::workflow::{
    drive, id_of, location_of, patch_as, post_bundle, read, refer, route_to, send, status_history, task_in,
};

/// A DELETE as `party`: its status and body.
async fn delete_as(app: &TestApp, party: Party, path: &str) -> (u16, Value) {
    send(app, party, Method::DELETE, path, None, &[]).await
}

/// The diagnostics of an OperationOutcome, joined.
fn diagnostics(outcome: &Value) -> String {
    outcome["issue"]
        .as_array()
        .map(|issues| issues.iter().filter_map(|i| i["diagnostics"].as_str()).collect::<Vec<_>>().join(" | "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// DELETE cannot bypass the workflow.

async fn a_task_that_has_left_draft_or_requested_cannot_be_deleted(db: Db) {
    let Some(app) = spawn_app_on(db).await else { return };
    for state in ["accepted", "in-progress", "on-hold", "completed", "rejected", "cancelled"] {
        let referral = task_in(&app, state).await;
        let (status, outcome) = delete_as(&app, Party::Gp, &referral.task_path()).await;
        assert_eq!(status, 409, "the GP deletes a {state} Task: {outcome}");
        let said = diagnostics(&outcome);
        assert!(said.contains(state), "the refusal names the status {state}: {said}");
        assert!(said.contains("entered-in-error"), "and says what to do instead: {said}");
        let kept = read(&app, Party::Clw, &referral.task_path()).await;
        assert_eq!(kept["status"], state, "the performer still sees the Task as it was");
    }
    for state in ["draft", "requested"] {
        let referral = task_in(&app, state).await;
        let (status, outcome) = delete_as(&app, Party::Gp, &referral.task_path()).await;
        assert_eq!(status, 204, "a {state} Task nobody has acted on may be withdrawn: {outcome}");
        assert_eq!(app.get(Party::Gp, &referral.task_path()).await.status(), 410);
    }
}

async fn deleting_an_accepted_task_inside_a_transaction_is_refused_with_the_whole_transaction(db: Db) {
    let Some(app) = spawn_app_on(db).await else { return };
    let referral = task_in(&app, "accepted").await;
    let nhs = nhs_number();
    let bundle = bundle_of(
        "transaction",
        vec![
            (patient(&nhs), "POST", "Patient".to_owned()),
            (Value::Null, "DELETE", referral.task_path()[1..].to_owned()),
        ],
    );
    let (status, outcome) = post_bundle(&app, Party::Gp, &bundle, &[]).await;
    assert_eq!(status, 409, "the transaction is refused: {outcome}");
    assert!(diagnostics(&outcome).contains("accepted"), "naming the Task's status: {outcome}");
    assert_eq!(read(&app, Party::Gp, &referral.task_path()).await["status"], "accepted", "the Task stands");
    let found =
        crate::workflow::search(&app, Party::Gp, &format!("/Patient?identifier={}|{nhs}", crate::fixtures::NHS_NUMBER))
            .await;
    assert!(found.is_empty(), "nothing of the transaction was written: {found:?}");
}

async fn deleting_a_referral_cancels_its_open_tasks_as_revoking_does(db: Db) {
    let Some(app) = spawn_app_on(db).await else { return };
    // One referral with a completed Task and an accepted one (a second round with CLW001), and
    // an open one at CLW002; another referral's Task must not move.
    let first = task_in(&app, "completed").await;
    let work = |owner: &str| task(&first.service_request, &first.patient, "GP0001", Some(owner));
    let again = id_of(&app.created(Party::Gp, &work("CLW001")).await);
    drive(&app, &format!("/Task/{again}"), &route_to("accepted")).await;
    let other_service = id_of(&app.created(Party::Gp, &work("CLW002")).await);
    let unrelated = task_in(&app, "accepted").await;

    let (status, outcome) = delete_as(&app, Party::Gp, &first.service_request_path()).await;
    assert_eq!(status, 204, "the GP deletes its referral: {outcome}");
    assert_eq!(app.get(Party::Gp, &first.service_request_path()).await.status(), 410, "the referral is gone");

    let expectations = [
        ("the completed Task", first.task.clone(), vec!["completed", "accepted", "requested"]),
        ("the accepted Task", again, vec!["cancelled", "accepted", "requested"]),
        ("the requested Task at CLW002", other_service, vec!["cancelled", "requested"]),
        ("another referral's Task", unrelated.task.clone(), vec!["accepted", "requested"]),
    ];
    for (what, id, statuses) in expectations {
        let path = format!("/Task/{id}");
        assert_eq!(status_history(&app, Party::Gp, &path).await, statuses, "{what}: its history, newest first");
        let now = read(&app, Party::Gp, &path).await;
        if now["status"] == "cancelled" {
            let reason = now["statusReason"]["text"].as_str().unwrap_or_default();
            assert!(reason.contains("deleted"), "{what}: says why: {now}");
        }
    }

    // A requested referral withdrawn in one transaction: its Task deleted, then the referral,
    // whose cascade leaves alone the Task an earlier entry deletes.
    let referral = task_in(&app, "requested").await;
    let bundle = bundle_of(
        "transaction",
        vec![
            (Value::Null, "DELETE", referral.task_path()[1..].to_owned()),
            (Value::Null, "DELETE", referral.service_request_path()[1..].to_owned()),
        ],
    );
    let (status, outcome) = post_bundle(&app, Party::Gp, &bundle, &[]).await;
    assert_eq!(status, 200, "the Task goes with its referral, not cancelled by it first: {outcome}");
    for path in [referral.task_path(), referral.service_request_path()] {
        assert_eq!(app.get(Party::Gp, &path).await.status(), 410, "{path} is deleted");
    }
}

async fn a_patient_that_open_referrals_name_cannot_be_deleted_until_they_end(db: Db) {
    let Some(app) = spawn_app_on(db).await else { return };
    let referral = refer(&app, Party::Gp, Some("CLW001"), "requested").await;
    let patient_path = format!("/Patient/{}", referral.patient);
    let (status, outcome) = delete_as(&app, Party::Gp, &patient_path).await;
    assert_eq!(status, 409, "the GP deletes a patient with an open referral: {outcome}");
    let said = diagnostics(&outcome);
    assert!(said.contains(&format!("Task/{}", referral.task)), "names the open Task: {said}");
    assert!(said.contains(&format!("ServiceRequest/{}", referral.service_request)), "and the referral: {said}");
    assert_eq!(read(&app, Party::Clw, &patient_path).await["id"], referral.patient.as_str(), "the patient stands");
    // Once the referral is revoked (which cancels its Task), nothing open names the patient.
    let (status, revoked) = patch_as(
        &app,
        Party::Gp,
        &referral.service_request_path(),
        &json!([{"op": "replace", "path": "/status", "value": "revoked"}]),
        None,
    )
    .await;
    assert_eq!(status, 200, "{revoked}");
    let (status, outcome) = delete_as(&app, Party::Gp, &patient_path).await;
    assert_eq!(status, 204, "a patient whose referrals have ended may be deleted: {outcome}");
    // The Task the patient's referral had cannot be picked up afterwards.
    let (status, outcome) =
        patch_as(&app, Party::Clw, &referral.task_path(), &crate::workflow::move_to("accepted"), None).await;
    assert_eq!(status, 422, "a cancelled Task is not accepted: {outcome}");
}

async fn deleting_an_open_task_withdraws_what_it_let_every_service_read(db: Db) {
    let Some(app) = spawn_app_on(db).await else { return };
    let (status, open) = post_bundle(&app, Party::Gp, &referral_transaction(&nhs_number(), "GP0001", None), &[]).await;
    assert_eq!(status, 200, "{open}");
    let paths: Vec<String> = [0, CONSENT_ENTRY, 2]
        .into_iter()
        .map(|entry| {
            let (resource_type, id) = location_of(&open["entry"][entry]);
            format!("/{resource_type}/{id}")
        })
        .collect();
    for path in &paths {
        read(&app, Party::OtherClw, path).await;
    }
    let (_, open_task) = location_of(&open["entry"][TASK_ENTRY]);
    let (status, outcome) = delete_as(&app, Party::Gp, &format!("/Task/{open_task}")).await;
    assert_eq!(status, 204, "the GP withdraws its open Task: {outcome}");
    for path in &paths {
        assert_eq!(app.get(Party::OtherClw, path).await.status(), 404, "no CLW service reads {path} any more");
    }
}

/// An open referral the practice ends or gives to one service is no longer every service's
/// to read: cancelling it, or naming its owner, withdraws what the open Task let them all see.
async fn an_open_task_cancelled_or_assigned_by_its_practice_withdraws_what_every_service_could_read(db: Db) {
    let Some(app) = spawn_app_on(db).await else { return };
    let paths_of = |response: &Value| -> Vec<String> {
        [0, CONSENT_ENTRY, 2]
            .into_iter()
            .map(|entry| {
                let (resource_type, id) = location_of(&response["entry"][entry]);
                format!("/{resource_type}/{id}")
            })
            .collect()
    };
    let cancel = json!([
        {"op": "replace", "path": "/status", "value": "cancelled"},
        {"op": "add", "path": "/statusReason", "value": {"text": "the patient moved away"}}
    ]);
    let assign = json!([{"op": "add", "path": "/owner",
        "value": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": Party::Clw.ods()}}}]);
    for (what, ops, owner_keeps) in [("cancelled", cancel, false), ("assigned to CLW001", assign, true)] {
        let (status, open) =
            post_bundle(&app, Party::Gp, &referral_transaction(&nhs_number(), "GP0001", None), &[]).await;
        assert_eq!(status, 200, "{what}: {open}");
        let paths = paths_of(&open);
        for path in &paths {
            read(&app, Party::OtherClw, path).await;
        }
        let (_, task_id) = location_of(&open["entry"][TASK_ENTRY]);
        let task_path = format!("/Task/{task_id}");
        let (status, changed) = patch_as(&app, Party::Gp, &task_path, &ops, None).await;
        assert_eq!(status, 200, "the GP's open Task {what}: {changed}");
        for path in paths.iter().chain([&task_path]) {
            assert_eq!(app.get(Party::OtherClw, path).await.status(), 404, "{what}: CLW002 no longer reads {path}");
        }
        if owner_keeps {
            for path in paths.iter().chain([&task_path]) {
                assert_eq!(app.get(Party::Clw, path).await.status(), 200, "{what}: the owner reads {path}");
            }
        }
    }
}

on_both_databases!(
    an_open_task_cancelled_or_assigned_by_its_practice_withdraws_what_every_service_could_read,
    deleting_an_open_task_withdraws_what_it_let_every_service_read,
    a_task_that_has_left_draft_or_requested_cannot_be_deleted,
    deleting_an_accepted_task_inside_a_transaction_is_refused_with_the_whole_transaction,
    deleting_a_referral_cancels_its_open_tasks_as_revoking_does,
    a_patient_that_open_referrals_name_cannot_be_deleted_until_they_end,
    a_resource_the_caller_cannot_see_answers_every_verb_as_an_unknown_id_does,
    a_search_audit_event_names_the_patients_whose_data_its_page_returned,
);

// ---------------------------------------------------------------------------------------------
// The same answer for another organisation's resource and an unknown id.

/// One interaction on an instance, as a table row.
#[derive(Debug, Clone, Copy)]
enum Verb {
    Read,
    Vread,
    History,
    Update,
    Patch,
    Delete,
}

const VERBS: [Verb; 6] = [Verb::Read, Verb::Vread, Verb::History, Verb::Update, Verb::Patch, Verb::Delete];

/// `verb` on `type/id` as `party`; an update sends `body` with its id set to `id`.
async fn attempt(app: &TestApp, party: Party, verb: Verb, resource_type: &str, id: &str, body: &Value) -> (u16, Value) {
    let path = format!("/{resource_type}/{id}");
    match verb {
        Verb::Read => json_of(app.get(party, &path).await).await,
        Verb::Vread => json_of(app.get(party, &format!("{path}/_history/1")).await).await,
        Verb::History => json_of(app.get(party, &format!("{path}/_history")).await).await,
        Verb::Update => {
            let mut body = body.clone();
            body["id"] = json!(id);
            send(app, party, Method::PUT, &path, Some(("application/fhir+json", body.to_string())), &[]).await
        }
        Verb::Patch => {
            let ops = json!([{"op": "add", "path": "/language", "value": "en-GB"}]);
            patch_as(app, party, &path, &ops, None).await
        }
        Verb::Delete => delete_as(app, party, &path).await,
    }
}

async fn a_resource_the_caller_cannot_see_answers_every_verb_as_an_unknown_id_does(db: Db) {
    let Some(app) = spawn_app_on(db).await else { return };
    // A referral of GP0001 to CLW001, sent whole with its consent; and an open referral (no
    // owner) that CLW001 claims, which CLW002 could see only while it was open.
    let (status, sent) =
        post_bundle(&app, Party::Gp, &referral_transaction(&nhs_number(), "GP0001", Some("CLW001")), &[]).await;
    assert_eq!(status, 200, "{sent}");
    let (_, consent) = location_of(&sent["entry"][CONSENT_ENTRY]);
    let (_, assigned_task) = location_of(&sent["entry"][TASK_ENTRY]);
    let (status, open) = post_bundle(&app, Party::Gp, &referral_transaction(&nhs_number(), "GP0001", None), &[]).await;
    assert_eq!(status, 200, "{open}");
    let (_, open_consent) = location_of(&open["entry"][CONSENT_ENTRY]);
    let (_, open_task) = location_of(&open["entry"][TASK_ENTRY]);
    let claim = json!([
        {"op": "replace", "path": "/status", "value": "accepted"},
        {"op": "add", "path": "/owner", "value": crate::fixtures::org_ref("CLW001")}
    ]);
    let (status, claimed) = patch_as(&app, Party::Clw, &format!("/Task/{open_task}"), &claim, None).await;
    assert_eq!(status, 200, "CLW001 claims the open referral: {claimed}");
    let patient_id = location_of(&sent["entry"][0]).1;

    let foreign: [(&str, Party, &str, String); 5] = [
        ("another practice's patient", Party::OtherGp, "Patient", patient_id),
        ("another practice's consent", Party::OtherGp, "Consent", consent.clone()),
        ("the consent of a referral to another service", Party::OtherClw, "Consent", consent),
        ("the consent of an open referral another service claimed", Party::OtherClw, "Consent", open_consent),
        ("another service's Task", Party::OtherClw, "Task", assigned_task),
    ];
    for (what, party, resource_type, id) in foreign {
        let body = read(&app, Party::Gp, &format!("/{resource_type}/{id}")).await;
        let unknown = uuid::Uuid::now_v7().to_string();
        for verb in VERBS {
            let (seen, outcome) = attempt(&app, party, verb, resource_type, &id, &body).await;
            let (missing, _) = attempt(&app, party, verb, resource_type, &unknown, &body).await;
            assert_eq!(
                (seen, missing),
                (404, 404),
                "{what}: {verb:?} by {party:?} answers as an unknown id: {outcome}"
            );
        }
    }
    // A resource the caller sees but may not change is still forbidden, not hidden.
    let body = read(&app, Party::Clw, &format!("/Consent/{}", location_of(&sent["entry"][CONSENT_ENTRY]).1)).await;
    let id = body["id"].as_str().expect("id").to_owned();
    for verb in [Verb::Update, Verb::Patch, Verb::Delete] {
        let (status, outcome) = attempt(&app, Party::Clw, verb, "Consent", &id, &body).await;
        assert_eq!(status, 403, "CLW001 may read its referral's consent but not {verb:?} it: {outcome}");
    }
}

// ---------------------------------------------------------------------------------------------
// Headers.

#[tokio::test]
async fn every_response_says_no_store_and_nosniff_errors_included() {
    let app = spawn_app().await;
    let patient_id = id_of(&app.created(Party::Gp, &patient(&nhs_number())).await);
    let token = app.request_token(Party::Gp, "system/*.cruds", &Value::Null).await;
    let responses = vec![
        ("a read", app.get(Party::Gp, &format!("/Patient/{patient_id}")).await),
        ("a search", app.get(Party::Gp, "/Patient?_count=5").await),
        ("a history", app.get(Party::Gp, &format!("/Patient/{patient_id}/_history")).await),
        ("a create", app.create(Party::Gp, &patient(&nhs_number())).await),
        ("a refusal (404)", app.get(Party::OtherGp, &format!("/Patient/{patient_id}")).await),
        ("no token (401)", app.http.get(app.url(&format!("/Patient/{patient_id}"))).send().await.expect("get")),
        ("an unknown route", app.get(Party::Gp, "/nowhere/at/all/here").await),
        (
            "a method not allowed",
            app.as_party(Party::Gp, Method::DELETE, "/metadata").await.send().await.expect("delete"),
        ),
        ("the token endpoint", token),
        ("the CapabilityStatement", app.http.get(app.url("/metadata")).send().await.expect("metadata")),
    ];
    for (what, response) in responses {
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(header("cache-control").as_deref(), Some("no-store"), "{what} ({})", response.status());
        assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"), "{what} ({})", response.status());
    }
}

// ---------------------------------------------------------------------------------------------
// The audit of a search names its patients.

/// The AuditEvents the operator finds about `entity`.
async fn events_about(app: &TestApp, entity: &str) -> Vec<Value> {
    let (status, bundle) =
        json_of(app.get(Party::Operator, &format!("/AuditEvent?entity={entity}&_count=100")).await).await;
    assert_eq!(status, 200, "{bundle}");
    bundle["entry"].as_array().map(|e| e.iter().map(|e| e["resource"].clone()).collect()).unwrap_or_default()
}

fn patients_named(event: &Value) -> Vec<String> {
    let mut patients: Vec<String> = event["entity"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["role"]["code"] == "1" && e["type"]["code"] == "1")
        .filter_map(|e| e["what"]["reference"].as_str().map(str::to_owned))
        .collect();
    patients.sort();
    patients
}

async fn a_search_audit_event_names_the_patients_whose_data_its_page_returned(db: Db) {
    let Some(app) = spawn_app_on(db).await else { return };
    let first = refer(&app, Party::Gp, Some("CLW001"), "requested").await;
    let second = refer(&app, Party::Gp, Some("CLW001"), "requested").await;
    let elsewhere = refer(&app, Party::OtherGp, Some("CLW001"), "requested").await;
    let tasks = crate::workflow::search(&app, Party::Gp, "/Task?status=requested").await;
    assert_eq!(tasks.len(), 2, "the GP's page holds its two referrals");

    let searches_about = |events: Vec<Value>| -> Vec<Value> {
        events.into_iter().filter(|e| e["subtype"][0]["code"] == "search-type").collect()
    };
    let mut expected = vec![format!("Patient/{}", first.patient), format!("Patient/{}", second.patient)];
    expected.sort();
    for referral in [&first, &second] {
        let events = searches_about(events_about(&app, &format!("Patient/{}", referral.patient)).await);
        assert_eq!(
            events.len(),
            1,
            "the privacy officer finds the GP's search of Patient/{}: {events:?}",
            referral.patient
        );
        let event = &events[0];
        assert_eq!(event["agent"][0]["who"]["identifier"]["value"], "gp-system", "who searched");
        assert_eq!(patients_named(event), expected, "one entity per patient of the page: {event}");
        let query = event["entity"]
            .as_array()
            .and_then(|entities| entities.iter().find(|e| e["role"]["code"] == "24"))
            .and_then(|e| e["query"].as_str())
            .map(|q| {
                use base64::Engine as _;
                String::from_utf8(base64::engine::general_purpose::STANDARD.decode(q).expect("base64")).expect("utf-8")
            });
        assert_eq!(query.as_deref(), Some("Task?status=requested"), "the query as asked: {event}");
    }
    let other = searches_about(events_about(&app, &format!("Patient/{}", elsewhere.patient)).await);
    assert!(other.is_empty(), "a patient the page did not hold is not named: {other:?}");
}
