//! Transaction and batch Bundles at `POST /` (R4 http.html#transaction): a whole referral in
//! one transaction linked by `urn:uuid:` references, conditional creates inside it, all or
//! nothing (resources, history and audit), batches entry by entry, and entries authorised one
//! by one.

use reqwest::Method;
use serde_json::{json, Value};

use crate::fixtures::{
    bundle_of, care_plan, nhs_number, org_ref, patient, referral_transaction, service_request, task, CONSENT_ENTRY,
    PATIENT_ENTRY, SERVICE_REQUEST_ENTRY, TASK_ENTRY,
};
use crate::helpers::{json_of, spawn_app, spawn_app_on, Db, Party, TestApp};
use crate::on_both_databases;
use crate::workflow::{history_len, id_of, location_of, post_bundle, read, refer, send};

/// What is stored, as the operator sees it: versions per type, and successful writes audited.
async fn totals(app: &TestApp) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for resource_type in ["Patient", "Consent", "ServiceRequest", "Task", "CarePlan"] {
        out.push((
            format!("{resource_type} versions"),
            history_len(app, Party::Operator, &format!("/{resource_type}/_history")).await,
        ));
    }
    out.push(("audited writes".to_owned(), audited_writes(app).await.len()));
    out
}

/// Successful create/update/delete AuditEvents: `(action, entity reference)`.
async fn audited_writes(app: &TestApp) -> Vec<(String, String)> {
    let mut writes = Vec::new();
    let mut next = Some("/AuditEvent?_count=100".to_owned());
    while let Some(url) = next {
        let page = read(app, Party::Operator, &url).await;
        for event in page["entry"].as_array().cloned().unwrap_or_default().iter().map(|e| &e["resource"]) {
            let action = event["action"].as_str().unwrap_or_default();
            if ["C", "U", "D"].contains(&action) && event["outcome"] == "0" {
                let entity = event["entity"][0]["what"]["reference"].as_str().unwrap_or_default();
                writes.push((action.to_owned(), entity.to_owned()));
            }
        }
        next = page["link"]
            .as_array()
            .and_then(|links| links.iter().find(|l| l["relation"] == "next"))
            .and_then(|l| l["url"].as_str())
            .map(|u| u.strip_prefix(&app.address).unwrap_or(u).to_owned());
    }
    writes
}

/// The `(type, id)` each response entry names, in order.
fn created_by(response: &Value) -> Vec<(String, String)> {
    response["entry"].as_array().map(|entries| entries.iter().map(location_of).collect()).unwrap_or_default()
}

fn entry_statuses(response: &Value) -> Vec<String> {
    response["entry"]
        .as_array()
        .map(|entries| {
            entries.iter().map(|e| e["response"]["status"].as_str().unwrap_or("(none)").to_owned()).collect()
        })
        .unwrap_or_default()
}

async fn a_referral_transaction_creates_every_entry_and_links_them_by_their_new_ids(db: Db) {
    let Some(app) = spawn_app_on(db).await else {
        return;
    };
    let (status, response) =
        post_bundle(&app, Party::Gp, &referral_transaction(&nhs_number(), "GP0001", Some("CLW001")), &[]).await;
    assert_eq!(status, 200, "the transaction succeeds: {response}");
    assert_eq!(response["resourceType"], "Bundle", "{response}");
    assert_eq!(response["type"], "transaction-response", "{response}");
    let statuses = entry_statuses(&response);
    assert_eq!(statuses.len(), 4, "one response entry per request entry: {response}");
    assert!(statuses.iter().all(|s| s.starts_with("201")), "every entry created: {statuses:?}");
    let created = created_by(&response);
    let types: Vec<&str> = created.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, vec!["Patient", "Consent", "ServiceRequest", "Task"], "the entries answer in request order");
    let id = |entry: usize| created[entry].1.clone();
    let (patient_id, consent_id, sr_id, task_id) =
        (id(PATIENT_ENTRY), id(CONSENT_ENTRY), id(SERVICE_REQUEST_ENTRY), id(TASK_ENTRY));

    let stored_task = read(&app, Party::Gp, &format!("/Task/{task_id}")).await;
    assert_eq!(
        stored_task["focus"]["reference"],
        format!("ServiceRequest/{sr_id}"),
        "Task.focus names the new referral"
    );
    assert_eq!(stored_task["for"]["reference"], format!("Patient/{patient_id}"), "Task.for names the new patient");
    let stored_sr = read(&app, Party::Gp, &format!("/ServiceRequest/{sr_id}")).await;
    assert_eq!(stored_sr["subject"]["reference"], format!("Patient/{patient_id}"), "ServiceRequest.subject");
    assert_eq!(
        stored_sr["supportingInfo"][0]["reference"],
        format!("Consent/{consent_id}"),
        "ServiceRequest.supportingInfo"
    );
    let stored_consent = read(&app, Party::Gp, &format!("/Consent/{consent_id}")).await;
    assert_eq!(stored_consent["patient"]["reference"], format!("Patient/{patient_id}"), "Consent.patient");
    assert!(
        !serde_json::to_string(&[&stored_task, &stored_sr, &stored_consent]).unwrap_or_default().contains("urn:uuid:"),
        "no urn:uuid: reference is left in what was stored"
    );
    read(&app, Party::Clw, &format!("/Task/{task_id}")).await;

    let audited = audited_writes(&app).await;
    for (resource_type, id) in &created {
        let reference = format!("{resource_type}/{id}");
        assert!(
            audited.contains(&("C".to_owned(), reference.clone())),
            "the create of {reference} is audited: {audited:?}"
        );
    }
}

#[tokio::test]
async fn a_second_transaction_for_the_same_patient_reuses_the_patient_its_if_none_exist_matches() {
    let app = spawn_app().await;
    let nhs = nhs_number();
    let (status, first) =
        post_bundle(&app, Party::Gp, &referral_transaction(&nhs, "GP0001", Some("CLW001")), &[]).await;
    assert_eq!(status, 200, "first referral: {first}");
    let patient_id = created_by(&first)[PATIENT_ENTRY].1.clone();

    // The same patient referred to another service (one open referral per patient and service).
    let (status, second) =
        post_bundle(&app, Party::Gp, &referral_transaction(&nhs, "GP0001", Some("CLW002")), &[]).await;
    assert_eq!(status, 200, "second referral: {second}");
    let created = assert_referral_of_existing_patient(&app, &second, &patient_id).await;
    let sr_id = &created[SERVICE_REQUEST_ENTRY].1;
    let stored_sr = read(&app, Party::Gp, &format!("/ServiceRequest/{sr_id}")).await;
    assert_eq!(stored_sr["subject"]["reference"], format!("Patient/{patient_id}"), "so is the new referral");
    assert_eq!(history_len(&app, Party::Operator, "/Patient/_history").await, 1, "one patient, one version");
}

/// Asserts that a referral transaction's response found the existing patient `patient_id`
/// (its Patient entry 200), created the rest (201), and that its Task is for that patient;
/// returns what each entry created or found.
async fn assert_referral_of_existing_patient(
    app: &TestApp,
    response: &Value,
    patient_id: &str,
) -> Vec<(String, String)> {
    let statuses = entry_statuses(response);
    assert!(statuses[PATIENT_ENTRY].starts_with("200"), "the Patient entry finds the existing patient: {statuses:?}");
    assert!(statuses[TASK_ENTRY].starts_with("201"), "the rest is created: {statuses:?}");
    let created = created_by(response);
    assert_eq!(created[PATIENT_ENTRY], ("Patient".to_owned(), patient_id.to_owned()), "the existing patient");
    let task = read(app, Party::Gp, &format!("/Task/{}", created[TASK_ENTRY].1)).await;
    assert_eq!(task["for"]["reference"], format!("Patient/{patient_id}"), "the new Task is for the existing patient");
    created
}

#[tokio::test]
async fn a_transactions_if_none_exist_finds_a_patient_created_without_a_condition() {
    let app = spawn_app().await;
    let nhs = nhs_number();
    // Created by a plain POST: no conditional key points at it, only the search finds it (the
    // first planning of a transaction does not search; the writer's check refuses it and the
    // second planning searches).
    let existing = app.created(Party::Gp, &patient(&nhs)).await;
    let patient_id = existing["id"].as_str().expect("id").to_owned();

    let (status, response) =
        post_bundle(&app, Party::Gp, &referral_transaction(&nhs, "GP0001", Some("CLW001")), &[]).await;
    assert_eq!(status, 200, "the referral: {response}");
    assert_referral_of_existing_patient(&app, &response, &patient_id).await;
    assert_eq!(history_len(&app, Party::Operator, "/Patient/_history").await, 1, "one patient, one version");

    // A second patient of the same number (two plain creates): the criteria are ambiguous.
    app.created(Party::Gp, &patient(&nhs)).await;
    let before = totals(&app).await;
    let (status, outcome) =
        post_bundle(&app, Party::Gp, &referral_transaction(&nhs, "GP0001", Some("CLW002")), &[]).await;
    assert_eq!(status, 412, "ifNoneExist matching two patients: {outcome}");
    assert_eq!(totals(&app).await, before, "nothing of the refused transaction was written");
}

/// A referral transaction spoiled in one way, who sends it, and the answers allowed.
struct Spoiled {
    what: &'static str,
    party: Party,
    bundle: Value,
    allowed: &'static [u16],
}

async fn check_rejected_whole(app: &TestApp, case: &Spoiled) {
    let before = totals(app).await;
    let (status, outcome) = post_bundle(app, case.party, &case.bundle, &[]).await;
    assert!(
        case.allowed.contains(&status),
        "{}: expected one of {:?}, got {status}: {outcome}",
        case.what,
        case.allowed
    );
    assert_eq!(
        outcome["resourceType"], "OperationOutcome",
        "{}: the refusal is an OperationOutcome: {outcome}",
        case.what
    );
    assert_eq!(totals(app).await, before, "{}: nothing was written, nothing audited as written", case.what);
}

async fn a_transaction_with_one_invalid_or_forbidden_entry_is_rejected_whole_and_writes_nothing(db: Db) {
    let Some(app) = spawn_app_on(db).await else {
        return;
    };
    let theirs = refer(&app, Party::OtherGp, Some("CLW001"), "requested").await;
    let mut nhs_numbers = Vec::new();
    let mut spoil = |change: &dyn Fn(&mut Value)| {
        let nhs = nhs_number();
        let mut bundle = referral_transaction(&nhs, "GP0001", Some("CLW001"));
        change(&mut bundle);
        nhs_numbers.push(nhs);
        bundle
    };
    let cases = vec![
        Spoiled {
            what: "a Task with status bogus",
            party: Party::Gp,
            bundle: spoil(&|b| b["entry"][TASK_ENTRY]["resource"]["status"] = json!("bogus")),
            allowed: &[400, 422],
        },
        Spoiled {
            what: "a ServiceRequest with an element R4 does not have (the Bundle's structure check covers its entries)",
            party: Party::Gp,
            bundle: spoil(&|b| b["entry"][SERVICE_REQUEST_ENTRY]["resource"]["urgency"] = json!("routine")),
            allowed: &[400],
        },
        Spoiled {
            what: "a Task focused on another practice's referral",
            party: Party::Gp,
            bundle: spoil(&|b| {
                b["entry"][TASK_ENTRY]["resource"]["focus"] =
                    json!({"reference": format!("ServiceRequest/{}", theirs.service_request)})
            }),
            allowed: &[422],
        },
        Spoiled {
            what: "a Task owned by an unknown organisation",
            party: Party::Gp,
            bundle: spoil(&|b| b["entry"][TASK_ENTRY]["resource"]["owner"] = org_ref("NOSUCH1")),
            allowed: &[422],
        },
        Spoiled {
            what: "a Task created completed",
            party: Party::Gp,
            bundle: spoil(&|b| b["entry"][TASK_ENTRY]["resource"]["status"] = json!("completed")),
            allowed: &[422],
        },
        Spoiled {
            what: "a ServiceRequest in another practice's name",
            party: Party::Gp,
            bundle: spoil(&|b| b["entry"][SERVICE_REQUEST_ENTRY]["resource"]["requester"] = org_ref("GP0002")),
            allowed: &[403, 422],
        },
        Spoiled {
            what: "a reference to a urn:uuid no entry has",
            party: Party::Gp,
            bundle: spoil(&|b| {
                b["entry"][TASK_ENTRY]["resource"]["for"] =
                    json!({"reference": format!("urn:uuid:{}", uuid::Uuid::new_v4())})
            }),
            allowed: &[400, 422],
        },
        Spoiled {
            what: "two open Tasks for one patient to one service",
            party: Party::Gp,
            bundle: spoil(&|b| {
                let mut twin = b["entry"][TASK_ENTRY].clone();
                twin["fullUrl"] = json!(format!("urn:uuid:{}", uuid::Uuid::new_v4()));
                if let Some(entries) = b["entry"].as_array_mut() {
                    entries.push(twin);
                }
            }),
            allowed: &[409],
        },
        Spoiled {
            what: "an update of another practice's Task",
            party: Party::Gp,
            bundle: spoil(&|b| {
                let mut stolen = task(&theirs.service_request, &theirs.patient, "GP0002", Some("CLW001"));
                stolen["id"] = json!(theirs.task);
                stolen["status"] = json!("cancelled");
                stolen["statusReason"] = json!({"text": "mine now"});
                if let Some(entries) = b["entry"].as_array_mut() {
                    entries.push(json!({"resource": stolen, "request": {"method": "PUT", "url": format!("Task/{}", theirs.task)}}));
                }
            }),
            allowed: &[404],
        },
        Spoiled {
            what: "the whole referral sent by a performer",
            party: Party::Clw,
            bundle: spoil(&|_| {}),
            allowed: &[403],
        },
    ];
    for case in &cases {
        check_rejected_whole(&app, case).await;
    }
    assert_eq!(
        read(&app, Party::OtherGp, &theirs.task_path()).await["status"],
        "requested",
        "the other practice's Task is untouched"
    );

    // The refused transactions left no conditional-create claim behind: the same patient
    // sent again is created, not "found".
    let (status, response) =
        post_bundle(&app, Party::Gp, &referral_transaction(&nhs_numbers[1], "GP0001", Some("CLW001")), &[]).await;
    assert_eq!(status, 200, "the repaired referral: {response}");
    assert!(entry_statuses(&response).iter().all(|s| s.starts_with("201")), "everything is new: {response}");
}

#[tokio::test]
async fn a_performer_transaction_holds_only_what_the_performer_may_do_itself() {
    let app = spawn_app().await;
    let referral = refer(&app, Party::Gp, Some("CLW001"), "requested").await;
    let mut accepted = read(&app, Party::Clw, &referral.task_path()).await;
    accepted["status"] = json!("accepted");
    let accept_entry = (accepted.clone(), "PUT", format!("Task/{}", referral.task));
    let plan = care_plan(&referral.service_request, &referral.patient, "CLW001");

    let forbidden = bundle_of(
        "transaction",
        vec![
            accept_entry.clone(),
            (service_request(&referral.patient, "GP0001", "CLW001"), "POST", "ServiceRequest".to_owned()),
        ],
    );
    check_rejected_whole(
        &app,
        &Spoiled { what: "accepting and writing a referral", party: Party::Clw, bundle: forbidden, allowed: &[403] },
    )
    .await;
    assert_eq!(
        read(&app, Party::Clw, &referral.task_path()).await["status"],
        "requested",
        "the acceptance was rolled back too"
    );

    let allowed = bundle_of("transaction", vec![accept_entry, (plan, "POST", "CarePlan".to_owned())]);
    let (status, response) = post_bundle(&app, Party::Clw, &allowed, &[]).await;
    assert_eq!(status, 200, "accepting and writing the CarePlan: {response}");
    let statuses = entry_statuses(&response);
    assert!(statuses[0].starts_with("200") && statuses[1].starts_with("201"), "{statuses:?}");
    assert_eq!(read(&app, Party::Gp, &referral.task_path()).await["status"], "accepted", "the GP sees the acceptance");
}

async fn a_batch_answers_each_entry_on_its_own(db: Db) {
    let Some(app) = spawn_app_on(db).await else {
        return;
    };
    let patient_id = id_of(&app.created(Party::Gp, &patient(&nhs_number())).await);
    let before = totals(&app).await;
    let mut bogus = task("nowhere", &patient_id, "GP0001", Some("CLW001"));
    bogus["status"] = json!("bogus");
    let batch = bundle_of(
        "batch",
        vec![
            (patient(&nhs_number()), "POST", "Patient".to_owned()),
            (bogus, "POST", "Task".to_owned()),
            (patient(&nhs_number()), "POST", "Patient".to_owned()),
            (service_request(&patient_id, "GP0002", "CLW001"), "POST", "ServiceRequest".to_owned()),
        ],
    );
    let (status, response) = post_bundle(&app, Party::Gp, &batch, &[]).await;
    assert_eq!(status, 200, "a batch answers 200 whatever its entries do: {response}");
    assert_eq!(response["type"], "batch-response", "{response}");
    let entries = response["entry"].as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len(), 4, "one response entry per request entry: {response}");
    let expectations: [(&str, &[&str]); 4] = [
        ("a valid Patient", &["201"]),
        ("a Task with status bogus", &["400", "422"]),
        ("another valid Patient", &["201"]),
        ("a referral in another practice's name", &["403", "422"]),
    ];
    for (entry, (what, allowed)) in entries.iter().zip(expectations) {
        let status = entry["response"]["status"].as_str().unwrap_or("(none)");
        assert!(
            allowed.iter().any(|a| status.starts_with(a)),
            "{what}: expected one of {allowed:?}, got {status}: {entry}"
        );
        if status.starts_with('4') {
            assert_eq!(
                entry["response"]["outcome"]["resourceType"], "OperationOutcome",
                "{what}: the entry says why: {entry}"
            );
        } else {
            let (resource_type, id) = location_of(entry);
            read(&app, Party::Gp, &format!("/{resource_type}/{id}")).await;
        }
    }
    let after = totals(&app).await;
    let grown: Vec<(String, usize)> =
        after.iter().zip(&before).filter(|(a, b)| a.1 != b.1).map(|(a, b)| (a.0.clone(), a.1 - b.1)).collect();
    assert_eq!(
        grown,
        vec![("Patient versions".to_owned(), 2), ("audited writes".to_owned(), 2)],
        "only the two valid entries were written (and audited)"
    );
}

#[tokio::test]
async fn a_bundle_that_is_not_a_transaction_or_batch_is_refused_with_400() {
    let app = spawn_app().await;
    let entries = || vec![(patient(&nhs_number()), "POST", "Patient".to_owned())];
    let mut untyped = bundle_of("transaction", entries());
    untyped.as_object_mut().map(|m| m.remove("type"));
    let cases: Vec<(&str, Value)> = vec![
        ("a document", bundle_of("document", entries())),
        ("a collection", bundle_of("collection", entries())),
        ("a searchset", bundle_of("searchset", entries())),
        ("a history", bundle_of("history", entries())),
        ("a message", bundle_of("message", entries())),
        ("a transaction-response", bundle_of("transaction-response", entries())),
        ("a Bundle without a type", untyped),
        ("a Patient", patient(&nhs_number())),
    ];
    for (what, body) in cases {
        let (status, outcome) = post_bundle(&app, Party::Gp, &body, &[]).await;
        assert_eq!(status, 400, "{what}: {outcome}");
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{what}");
    }
    let (status, outcome) =
        send(&app, Party::Gp, Method::POST, "/", Some(("application/json-patch+json", "[]".to_owned())), &[]).await;
    assert_eq!(status, 415, "a transaction is FHIR JSON (or XML): {outcome}");
    assert_eq!(history_len(&app, Party::Operator, "/Patient/_history").await, 0, "nothing was written");
    let (status, _) = json_of(app.get(Party::Gp, "/").await).await;
    assert!(status == 404 || status == 405, "the base URL takes only POST: {status}");
}

on_both_databases!(
    a_referral_transaction_creates_every_entry_and_links_them_by_their_new_ids,
    a_transaction_with_one_invalid_or_forbidden_entry_is_rejected_whole_and_writes_nothing,
    a_batch_answers_each_entry_on_its_own,
);
