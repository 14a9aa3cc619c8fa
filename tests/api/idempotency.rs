//! No duplicate referrals (docs/referral-workflow.md, "Idempotency: no duplicate referrals"): the
//! BaRS `X-Request-ID` makes a retried create or transaction a 409 `duplicate` naming the first
//! result, also under parallel retries; and only one open referral per patient and CLW service at a
//! time.

use serde_json::{json, Value};

use crate::fixtures::{nhs_number, patient, referral_transaction, service_request, task, with};
use crate::helpers::{json_of, spawn_app, spawn_app_on, Db, Party, TestApp};
use crate::on_both_databases;
use crate::workflow::{history_len, id_of, move_to, patch_as, post_as, post_bundle, read, refer, task_in};

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The first issue of an OperationOutcome says `duplicate` and points at `reference`.
fn assert_duplicate_of(case: &str, outcome: &Value, reference: Option<&str>) {
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{case}: {outcome}");
    assert_eq!(outcome["issue"][0]["code"], "duplicate", "{case}: issue code duplicate: {outcome}");
    if let Some(reference) = reference {
        assert!(
            outcome["issue"][0].to_string().contains(reference),
            "{case}: the issue (diagnostics, location or expression) names {reference}: {outcome}"
        );
    }
}

/// A create as GP0001 with `X-Request-ID`, replayed as it was, then with another body.
async fn check_replayed_create(app: &TestApp, what: &str, resource: &Value, altered: &Value) {
    let resource_type = resource["resourceType"].as_str().expect("resourceType");
    let history = format!("/{resource_type}/_history");
    let id = request_id();
    let headers = [("X-Request-ID", id.as_str())];
    let before = history_len(app, Party::Operator, &history).await;
    let (status, first) = post_as(app, Party::Gp, resource, &headers).await;
    assert_eq!(status, 201, "{what}: the first request creates: {first}");
    let reference = format!("{resource_type}/{}", id_of(&first));

    let (status, replay) = post_as(app, Party::Gp, resource, &headers).await;
    assert_eq!(status, 409, "{what}: the replay is a duplicate: {replay}");
    assert_duplicate_of(what, &replay, Some(&reference));

    let (status, other) = post_as(app, Party::Gp, altered, &headers).await;
    assert!(status == 409 || status == 422, "{what}: the same id with another body is refused, got {status}: {other}");
    assert_eq!(other["resourceType"], "OperationOutcome", "{what}: {other}");

    assert_eq!(
        history_len(app, Party::Operator, &history).await,
        before + 1,
        "{what}: exactly one version was written"
    );
    assert_eq!(
        read(app, Party::Gp, &format!("/{reference}")).await["meta"]["versionId"],
        "1",
        "{what}: and never changed"
    );
}

async fn a_replayed_create_with_the_same_x_request_id_answers_409_duplicate_naming_the_first_result(db: Db) {
    let Some(app) = spawn_app_on(db).await else {
        return;
    };
    let someone = patient(&nhs_number());
    check_replayed_create(&app, "a Patient", &someone, &with(&someone, json!({"gender": "male"}))).await;

    let patient_id = id_of(&app.created(Party::Gp, &patient(&nhs_number())).await);
    let referral = service_request(&patient_id, "GP0001", "CLW001");
    check_replayed_create(&app, "a ServiceRequest", &referral, &with(&referral, json!({"priority": "urgent"}))).await;

    let sr_id = id_of(&app.created(Party::Gp, &service_request(&patient_id, "GP0001", "CLW001")).await);
    let work = task(&sr_id, &patient_id, "GP0001", Some("CLW001"));
    check_replayed_create(&app, "a Task", &work, &with(&work, json!({"priority": "urgent"}))).await;
}

async fn parallel_identical_creates_with_one_x_request_id_create_exactly_one(db: Db) {
    let Some(app) = spawn_app_on(db).await else {
        return;
    };
    let token = app.token(Party::Gp).await;
    let id = request_id();
    let body = patient(&nhs_number()).to_string();
    let attempts = (0..8).map(|_| {
        let request = app
            .http
            .post(app.url("/Patient"))
            .bearer_auth(&token)
            .header("Content-Type", "application/fhir+json")
            .header("X-Request-ID", &id)
            .body(body.clone());
        async move { json_of(request.send().await.expect("post")).await }
    });
    let results = futures::future::join_all(attempts).await;
    let statuses: Vec<u16> = results.iter().map(|r| r.0).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "exactly one 201: {statuses:?}");
    let created = results.iter().find(|r| r.0 == 201).map(|r| format!("Patient/{}", id_of(&r.1))).unwrap_or_default();
    for (status, outcome) in results.iter().filter(|r| r.0 != 201) {
        assert_eq!(*status, 409, "the others are duplicates: {outcome}");
        assert_duplicate_of("a parallel retry", outcome, Some(&created));
    }
    assert_eq!(history_len(&app, Party::Operator, "/Patient/_history").await, 1, "one resource, one version");
}

/// Versions of the referral's resource types, as the operator sees them.
async fn referral_counts(app: &TestApp) -> Vec<usize> {
    let mut out = Vec::new();
    for resource_type in ["Patient", "Consent", "ServiceRequest", "Task"] {
        out.push(history_len(app, Party::Operator, &format!("/{resource_type}/_history")).await);
    }
    out
}

async fn a_transaction_replayed_with_its_x_request_id_writes_nothing_more(db: Db) {
    let Some(app) = spawn_app_on(db).await else {
        return;
    };
    // Retried one after the other.
    let bundle = referral_transaction(&nhs_number(), "GP0001", Some("CLW001"));
    let id = request_id();
    let (status, first) = post_bundle(&app, Party::Gp, &bundle, &[("X-Request-ID", &id)]).await;
    assert_eq!(status, 200, "the first transaction: {first}");
    let after_first = referral_counts(&app).await;
    assert_eq!(after_first, vec![1, 1, 1, 1], "one of each");
    let (status, replay) = post_bundle(&app, Party::Gp, &bundle, &[("X-Request-ID", &id)]).await;
    assert_eq!(status, 409, "the replay: {replay}");
    assert_duplicate_of("a replayed transaction", &replay, None);
    let (status, other) = post_bundle(
        &app,
        Party::Gp,
        &referral_transaction(&nhs_number(), "GP0001", Some("CLW002")),
        &[("X-Request-ID", &id)],
    )
    .await;
    assert!(status == 409 || status == 422, "the same id with another Bundle is refused, got {status}: {other}");
    assert_eq!(referral_counts(&app).await, after_first, "nothing more was written");

    // Retried in parallel.
    let bundle = referral_transaction(&nhs_number(), "GP0001", Some("CLW001")).to_string();
    let id = request_id();
    let token = app.token(Party::Gp).await;
    let attempts = (0..5).map(|_| {
        let request = app
            .http
            .post(app.url("/"))
            .bearer_auth(&token)
            .header("Content-Type", "application/fhir+json")
            .header("X-Request-ID", &id)
            .body(bundle.clone());
        async move { json_of(request.send().await.expect("post")).await }
    });
    let results = futures::future::join_all(attempts).await;
    let mut statuses: Vec<u16> = results.iter().map(|r| r.0).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 409, 409, 409, 409], "one transaction applied, the rest duplicates: {results:?}");
    assert_eq!(referral_counts(&app).await, vec![2, 2, 2, 2], "one more of each");
}

#[tokio::test]
async fn x_request_ids_belong_to_the_client_that_sent_them() {
    let app = spawn_app().await;
    let id = request_id();
    let headers = [("X-Request-ID", id.as_str())];
    let (status, first) = post_as(&app, Party::Gp, &patient(&nhs_number()), &headers).await;
    assert_eq!(status, 201, "GP0001's request: {first}");
    let (status, theirs) = post_as(&app, Party::OtherGp, &patient(&nhs_number()), &headers).await;
    assert_eq!(status, 201, "another practice's request with the same id is its own, and learns nothing: {theirs}");
    assert_ne!(theirs["id"], first["id"]);
    let (status, again) = post_as(&app, Party::Gp, &patient(&nhs_number()), &[("X-Request-ID", &request_id())]).await;
    assert_eq!(status, 201, "a new id is a new request: {again}");
}

#[tokio::test]
async fn requests_without_an_x_request_id_are_not_deduplicated_and_a_malformed_one_is_refused() {
    let app = spawn_app().await;
    let someone = patient(&nhs_number());
    let (first, second) = (app.created(Party::Gp, &someone).await, app.created(Party::Gp, &someone).await);
    assert_ne!(first["id"], second["id"], "two plain creates make two resources");
    for malformed in ["", "not-a-uuid", "12345", "'; DROP TABLE resources; --"] {
        let (status, outcome) = post_as(&app, Party::Gp, &patient(&nhs_number()), &[("X-Request-ID", malformed)]).await;
        assert_eq!(status, 400, "X-Request-ID {malformed:?} is not a UUID: {outcome}");
    }
    assert_eq!(history_len(&app, Party::Operator, "/Patient/_history").await, 2, "the refused requests wrote nothing");
}

// ---------------------------------------------------------------------------------------------
// Re-referral: one open referral per patient and CLW service.

fn mover(status: &str) -> Party {
    match status {
        "cancelled" | "entered-in-error" => Party::Gp,
        _ => Party::Clw,
    }
}

/// Refers the patient again to `owner`, for the same referral or a new one.
async fn refer_again(app: &TestApp, patient_id: &str, sr_id: Option<&str>, owner: &str) -> (u16, Value) {
    let sr_id = match sr_id {
        Some(id) => id.to_owned(),
        None => id_of(&app.created(Party::Gp, &service_request(patient_id, "GP0001", owner)).await),
    };
    post_as(app, Party::Gp, &task(&sr_id, patient_id, "GP0001", Some(owner)), &[]).await
}

#[tokio::test]
async fn a_second_open_referral_for_the_same_patient_and_service_is_refused_until_the_first_ends() {
    let app = spawn_app().await;
    // The first Task passes through the open states, then ends.
    let lives: [(&[&str], &str); 4] = [
        (&["accepted", "in-progress"], "completed"),
        (&["accepted", "on-hold"], "cancelled"),
        (&[], "rejected"),
        (&[], "entered-in-error"),
    ];
    for (open_states, end) in lives {
        let first = task_in(&app, "requested").await;
        let open_task = format!("Task/{}", first.task);
        let mut state = "requested";
        for next in open_states.iter().copied().map(Some).chain([None]) {
            for (how, sr) in
                [("for the same referral", Some(first.service_request.as_str())), ("with a new referral", None)]
            {
                let case = format!("first Task {state} (ending {end}): a second Task to CLW001 {how}");
                let (status, outcome) = refer_again(&app, &first.patient, sr, "CLW001").await;
                assert_eq!(status, 409, "{case}: {outcome}");
                assert!(outcome.to_string().contains(&open_task), "{case}: names the open {open_task}: {outcome}");
            }
            if let Some(next) = next {
                let (status, moved) = patch_as(&app, mover(next), &first.task_path(), &move_to(next), None).await;
                assert_eq!(status, 200, "setup: {state} -> {next}: {moved}");
                state = next;
            }
        }
        let (status, elsewhere) = refer_again(&app, &first.patient, None, "CLW002").await;
        assert_eq!(status, 201, "while open at CLW001 the patient may be referred to CLW002: {elsewhere}");
        let (status, moved) = patch_as(&app, mover(end), &first.task_path(), &move_to(end), None).await;
        assert_eq!(status, 200, "setup: {state} -> {end}: {moved}");
        let (status, again) = refer_again(&app, &first.patient, Some(&first.service_request), "CLW001").await;
        assert_eq!(status, 201, "once the first Task is {end} a new one is accepted: {again}");
    }
}

async fn parallel_referrals_of_one_patient_to_one_service_open_exactly_one_task(db: Db) {
    let Some(app) = spawn_app_on(db).await else {
        return;
    };
    let referral = refer(&app, Party::Gp, Some("CLW001"), "requested").await;
    let (status, cancelled) = patch_as(&app, Party::Gp, &referral.task_path(), &move_to("cancelled"), None).await;
    assert_eq!(status, 200, "setup: the first referral is withdrawn: {cancelled}");
    let token = app.token(Party::Gp).await;
    let body = task(&referral.service_request, &referral.patient, "GP0001", Some("CLW001")).to_string();
    let attempts = (0..6).map(|_| {
        let request = app
            .http
            .post(app.url("/Task"))
            .bearer_auth(&token)
            .header("Content-Type", "application/fhir+json")
            .body(body.clone());
        async move { json_of(request.send().await.expect("post")).await }
    });
    let results = futures::future::join_all(attempts).await;
    let mut statuses: Vec<u16> = results.iter().map(|r| r.0).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, vec![201, 409, 409, 409, 409, 409], "one open Task, the rest refused: {results:?}");
    let open = results.iter().find(|r| r.0 == 201).map(|r| format!("Task/{}", id_of(&r.1))).unwrap_or_default();
    for (_, outcome) in results.iter().filter(|r| r.0 == 409) {
        assert!(outcome.to_string().contains(&open), "each refusal names the open {open}: {outcome}");
    }
    assert_eq!(
        history_len(&app, Party::Operator, "/Task/_history").await,
        3,
        "the first Task's two versions and one new Task"
    );
}

/// Both checks of a Task given to a service (see `service::rules`): that the owner is a
/// registered CLW service, and which Task holds the patient's open referral to it (read only
/// once the key the Task claims turns out to be held).
async fn a_task_for_an_unregistered_service_is_refused_and_a_second_open_referral_names_the_first(db: Db) {
    let Some(app) = spawn_app_on(db).await else {
        return;
    };
    let first = task_in(&app, "requested").await;
    for (owner, what) in [("CLW999", "an unknown organisation"), ("GP0001", "a practice, not a performer")] {
        let (status, outcome) = refer_again(&app, &first.patient, None, owner).await;
        assert_eq!(status, 422, "a Task owned by {what}: {outcome}");
        assert!(outcome.to_string().contains("not a registered CLW service"), "{what}: says why: {outcome}");
    }
    let (status, outcome) = refer_again(&app, &first.patient, None, "CLW001").await;
    assert_eq!(status, 409, "a second open referral to CLW001: {outcome}");
    assert!(outcome.to_string().contains(&format!("Task/{}", first.task)), "names the open Task: {outcome}");
    let (status, outcome) = refer_again(&app, &first.patient, None, "CLW002").await;
    assert_eq!(status, 201, "a referral to another registered service: {outcome}");
}

on_both_databases!(
    a_replayed_create_with_the_same_x_request_id_answers_409_duplicate_naming_the_first_result,
    parallel_identical_creates_with_one_x_request_id_create_exactly_one,
    a_transaction_replayed_with_its_x_request_id_writes_nothing_more,
    parallel_referrals_of_one_patient_to_one_service_open_exactly_one_task,
    a_task_for_an_unregistered_service_is_refused_and_a_second_open_referral_names_the_first,
);

#[tokio::test]
async fn a_replayed_patch_with_the_same_x_request_id_changes_the_task_once() {
    let app = crate::helpers::spawn_app().await;
    let patient_id =
        app.created(Party::Gp, &crate::fixtures::patient("9434765919")).await["id"].as_str().expect("id").to_owned();
    let sr = app.created(Party::Gp, &crate::fixtures::service_request(&patient_id, "GP0001", "CLW001")).await;
    let task = app
        .created(
            Party::Gp,
            &crate::fixtures::task(sr["id"].as_str().expect("id"), &patient_id, "GP0001", Some("CLW001")),
        )
        .await;
    let path = format!("/Task/{}", task["id"].as_str().expect("id"));
    let request_id = uuid::Uuid::new_v4().to_string();
    let accept = || async {
        crate::helpers::json_of(
            app.as_party(Party::Clw, reqwest::Method::PATCH, &path)
                .await
                .header("Content-Type", "application/json-patch+json")
                .header("X-Request-ID", &request_id)
                .body(serde_json::json!([{"op": "replace", "path": "/status", "value": "accepted"}]).to_string())
                .send()
                .await
                .expect("patch"),
        )
        .await
    };
    let (first, _) = accept().await;
    assert_eq!(first, 200, "the first PATCH applies");
    let (replay, outcome) = accept().await;
    assert_eq!(replay, 409, "the replay is a duplicate: {outcome}");
    assert_eq!(outcome["issue"][0]["code"], "duplicate");
    assert!(
        outcome["issue"][0]["diagnostics"].as_str().is_some_and(|d| d.contains("_history/2")),
        "names the version: {outcome}"
    );
    let (_, history) = crate::helpers::json_of(app.get(Party::Gp, &format!("{path}/_history")).await).await;
    assert_eq!(history["entry"].as_array().map(Vec::len), Some(2), "one change, not two");
}
