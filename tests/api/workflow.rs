//! The referral workflow (docs/referral-workflow.md): the Task state machine on every write path,
//! who may edit what, claiming open Tasks, the referential rules between Task, ServiceRequest
//! and CarePlan, revocation, and a referral travelling from the GP to the link worker and back.
//!
//! The request helpers at the top are shared with `transactions` and `idempotency`.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::fixtures::{
    care_plan, nhs_number, org_ref, patient, referral_transaction, service_request, task, with, ODS,
    SERVICE_REQUEST_ENTRY, TASK_ENTRY,
};
use crate::helpers::{
    json_of, spawn_app, spawn_app_on, spawn_app_with, test_database, test_settings, Db, Party, TestApp,
};
use crate::on_both_databases;

// ---------------------------------------------------------------------------------------------
// Shared request helpers.

pub(crate) fn id_of(resource: &Value) -> String {
    resource["id"].as_str().unwrap_or_else(|| panic!("a resource with an id: {resource}")).to_owned()
}

/// Sends a request as `party` with an optional `(content type, body)` and extra headers.
pub(crate) async fn send(
    app: &TestApp,
    party: Party,
    method: Method,
    path: &str,
    body: Option<(&str, String)>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut request = app.as_party(party, method, path).await;
    if let Some((content_type, body)) = body {
        request = request.header("Content-Type", content_type).body(body);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    json_of(request.send().await.expect("request")).await
}

/// JSON Patch as `party`, optionally with `If-Match`.
pub(crate) async fn patch_as(
    app: &TestApp,
    party: Party,
    path: &str,
    ops: &Value,
    if_match: Option<&str>,
) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = if_match.map(|etag| ("If-Match", etag)).into_iter().collect();
    send(app, party, Method::PATCH, path, Some(("application/json-patch+json", ops.to_string())), &headers).await
}

/// A whole-resource update as `party`.
pub(crate) async fn put_as(app: &TestApp, party: Party, path: &str, body: &Value) -> (u16, Value) {
    send(app, party, Method::PUT, path, Some(("application/fhir+json", body.to_string())), &[]).await
}

/// A create as `party` with extra headers (`X-Request-ID`...).
pub(crate) async fn post_as(app: &TestApp, party: Party, resource: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let path = format!("/{}", resource["resourceType"].as_str().expect("resourceType"));
    send(app, party, Method::POST, &path, Some(("application/fhir+json", resource.to_string())), headers).await
}

/// `POST /` with a Bundle (transaction or batch).
pub(crate) async fn post_bundle(app: &TestApp, party: Party, bundle: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
    send(app, party, Method::POST, "/", Some(("application/fhir+json", bundle.to_string())), headers).await
}

/// A read that must succeed.
pub(crate) async fn read(app: &TestApp, party: Party, path: &str) -> Value {
    let (status, body) = json_of(app.get(party, path).await).await;
    assert_eq!(status, 200, "{party:?} reads {path}: {body}");
    body
}

/// How many versions a history (type or instance) lists for `party`, over every page.
pub(crate) async fn history_len(app: &TestApp, party: Party, path: &str) -> usize {
    let mut count = 0;
    let mut next = Some(format!("{path}?_count=100"));
    while let Some(url) = next {
        let page = read(app, party, &url).await;
        count += page["entry"].as_array().map(Vec::len).unwrap_or(0);
        next = page["link"]
            .as_array()
            .and_then(|links| links.iter().find(|l| l["relation"] == "next"))
            .and_then(|l| l["url"].as_str())
            .map(|u| u.strip_prefix(&app.address).unwrap_or(u).to_owned());
    }
    count
}

/// The statuses of an instance history, newest first.
pub(crate) async fn status_history(app: &TestApp, party: Party, path: &str) -> Vec<String> {
    let history = read(app, party, &format!("{path}/_history")).await;
    history["entry"]
        .as_array()
        .expect("history entries")
        .iter()
        .map(|e| e["resource"]["status"].as_str().unwrap_or("(none)").to_owned())
        .collect()
}

/// The resources of a searchset for `party`.
pub(crate) async fn search(app: &TestApp, party: Party, query: &str) -> Vec<Value> {
    let bundle = read(app, party, query).await;
    assert_eq!(bundle["type"], "searchset", "{query}");
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries.iter().filter(|e| e["search"]["mode"] != "include").map(|e| e["resource"].clone()).collect()
        })
        .unwrap_or_default()
}

/// Every `expression` of an OperationOutcome.
pub(crate) fn expressions(outcome: &Value) -> Vec<String> {
    outcome["issue"]
        .as_array()
        .map(|issues| {
            issues
                .iter()
                .flat_map(|i| i["expression"].as_array().cloned().unwrap_or_default())
                .filter_map(|e| e.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `(type, id)` of a `response.location` such as `Task/abc/_history/1`, relative or absolute.
pub(crate) fn location_of(entry: &Value) -> (String, String) {
    let location =
        entry["response"]["location"].as_str().unwrap_or_else(|| panic!("an entry response with a location: {entry}"));
    let parts: Vec<&str> = location.split('/').collect();
    let at = parts
        .iter()
        .position(|p| ["Patient", "Consent", "ServiceRequest", "Task", "CarePlan"].contains(p))
        .unwrap_or_else(|| panic!("a location naming a resource type: {location}"));
    (parts[at].to_owned(), parts.get(at + 1).copied().unwrap_or_default().to_owned())
}

/// A referral made of separate creates by `requester`: its Patient, ServiceRequest and Task.
#[derive(Debug, Clone)]
pub(crate) struct Referral {
    pub patient: String,
    pub service_request: String,
    pub task: String,
}

impl Referral {
    pub(crate) fn task_path(&self) -> String {
        format!("/Task/{}", self.task)
    }

    pub(crate) fn service_request_path(&self) -> String {
        format!("/ServiceRequest/{}", self.service_request)
    }
}

/// A new patient with a referral of it from `requester` to `owner` (none: an open Task),
/// the Task created with `status` (draft or requested).
pub(crate) async fn refer(app: &TestApp, requester: Party, owner: Option<&str>, status: &str) -> Referral {
    let patient_id = id_of(&app.created(requester, &patient(&nhs_number())).await);
    refer_patient(app, requester, &patient_id, owner, status).await
}

/// A referral of an existing patient.
pub(crate) async fn refer_patient(
    app: &TestApp,
    requester: Party,
    patient_id: &str,
    owner: Option<&str>,
    status: &str,
) -> Referral {
    let sr = service_request(patient_id, requester.ods(), owner.unwrap_or("CLW001"));
    let sr_id = id_of(&app.created(requester, &sr).await);
    let work = with(&task(&sr_id, patient_id, requester.ods(), owner), json!({"status": status}));
    let task_id = id_of(&app.created(requester, &work).await);
    Referral { patient: patient_id.to_owned(), service_request: sr_id, task: task_id }
}

pub(crate) fn needs_reason(status: &str) -> bool {
    matches!(status, "rejected" | "cancelled" | "on-hold" | "failed")
}

/// The JSON Patch moving a Task to `status`, with the reason the move needs.
pub(crate) fn move_to(status: &str) -> Value {
    let mut ops = vec![json!({"op": "replace", "path": "/status", "value": status})];
    if needs_reason(status) {
        ops.push(json!({"op": "add", "path": "/statusReason", "value": {"text": format!("why it is {status}")}}));
    }
    Value::Array(ops)
}

/// Moves a Task along `steps` by PATCH, each step required to succeed.
pub(crate) async fn drive(app: &TestApp, task_path: &str, steps: &[(Party, &str)]) {
    for (party, status) in steps {
        let (code, body) = patch_as(app, *party, task_path, &move_to(status), None).await;
        assert_eq!(code, 200, "setup: {party:?} moves {task_path} to {status}: {body}");
    }
}

/// The allowed moves that bring a new requested Task to `state`.
pub(crate) fn route_to(state: &str) -> Vec<(Party, &'static str)> {
    let (gp, clw) = (Party::Gp, Party::Clw);
    match state {
        "draft" | "requested" => vec![],
        "accepted" => vec![(clw, "accepted")],
        "rejected" => vec![(clw, "rejected")],
        "cancelled" => vec![(gp, "cancelled")],
        "in-progress" => vec![(clw, "accepted"), (clw, "in-progress")],
        "on-hold" => vec![(clw, "accepted"), (clw, "on-hold")],
        "completed" => vec![(clw, "accepted"), (clw, "completed")],
        "failed" => vec![(clw, "accepted"), (clw, "failed")],
        "entered-in-error" => vec![(gp, "entered-in-error")],
        other => panic!("no route to {other}"),
    }
}

/// A new referral from GP0001 to CLW001 whose Task is in `state`.
pub(crate) async fn task_in(app: &TestApp, state: &str) -> Referral {
    let referral = refer(app, Party::Gp, Some("CLW001"), if state == "draft" { "draft" } else { "requested" }).await;
    drive(app, &referral.task_path(), &route_to(state)).await;
    referral
}

// ---------------------------------------------------------------------------------------------
// The state machine: every (from, to, role) on every write path.

const STATUSES: [&str; 10] = [
    "draft",
    "requested",
    "accepted",
    "rejected",
    "cancelled",
    "in-progress",
    "on-hold",
    "completed",
    "failed",
    "entered-in-error",
];

const TERMINAL: [&str; 5] = ["rejected", "cancelled", "completed", "failed", "entered-in-error"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// GP0001, the Task's requester.
    Requester,
    /// CLW001, the Task's owner.
    Owner,
}

impl Role {
    fn party(self) -> Party {
        match self {
            Role::Requester => Party::Gp,
            Role::Owner => Party::Clw,
        }
    }

    fn may_set(self, status: &str) -> bool {
        match self {
            Role::Requester => ["draft", "requested", "cancelled", "entered-in-error"].contains(&status),
            Role::Owner => {
                ["accepted", "rejected", "in-progress", "on-hold", "completed", "failed", "cancelled"].contains(&status)
            }
        }
    }
}

/// Every status change that succeeds, and who makes it. Everything else is refused.
const ALLOWED: &[(&str, &str, Role)] = {
    use Role::{Owner as O, Requester as R};
    &[
        ("draft", "requested", R),
        ("requested", "accepted", O),
        ("requested", "rejected", O),
        ("requested", "cancelled", R),
        ("requested", "cancelled", O),
        ("accepted", "in-progress", O),
        ("accepted", "on-hold", O),
        ("accepted", "cancelled", R),
        ("accepted", "cancelled", O),
        ("accepted", "completed", O),
        ("accepted", "failed", O),
        ("in-progress", "on-hold", O),
        ("in-progress", "cancelled", R),
        ("in-progress", "cancelled", O),
        ("in-progress", "completed", O),
        ("in-progress", "failed", O),
        ("on-hold", "in-progress", O),
        ("on-hold", "cancelled", R),
        ("on-hold", "cancelled", O),
        ("on-hold", "completed", O),
        ("on-hold", "failed", O),
        // Anything may be marked entered-in-error, by the requester only, terminal or not.
        ("draft", "entered-in-error", R),
        ("requested", "entered-in-error", R),
        ("accepted", "entered-in-error", R),
        ("rejected", "entered-in-error", R),
        ("cancelled", "entered-in-error", R),
        ("in-progress", "entered-in-error", R),
        ("on-hold", "entered-in-error", R),
        ("completed", "entered-in-error", R),
        ("failed", "entered-in-error", R),
    ]
};

/// The statuses a change may be answered with: 200 when allowed; a terminal Task is 422; a
/// legal move by the wrong party is 403; an illegal move is 422 (or 403 when the party could
/// not set that status anyway). Re-sending the current status changes nothing and is 200.
fn expected(from: &str, to: &str, role: Role) -> &'static [u16] {
    let allowed_for = |r: Role| ALLOWED.contains(&(from, to, r));
    let other = match role {
        Role::Requester => Role::Owner,
        Role::Owner => Role::Requester,
    };
    if from == to || allowed_for(role) {
        &[200]
    } else if TERMINAL.contains(&from) {
        &[422]
    } else if allowed_for(other) {
        &[403]
    } else if role.may_set(to) {
        &[422]
    } else {
        &[403, 422]
    }
}

/// How a status change reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WritePath {
    /// `PATCH /Task/{id}` with JSON Patch.
    Patch,
    /// `PUT /Task/{id}` with the whole Task.
    Put,
    /// A transaction Bundle with one PUT entry.
    TransactionEntry,
}

/// The Task as it is now with `status` (and a reason when the move needs one).
async fn changed_task(app: &TestApp, party: Party, task_path: &str, status: &str) -> Value {
    let mut body = read(app, party, task_path).await;
    body["status"] = json!(status);
    if needs_reason(status) && body["statusReason"].is_null() {
        body["statusReason"] = json!({"text": format!("why it is {status}")});
    }
    body
}

/// Moves the Task `from -> to` as `role` along `path` and checks the answer.
async fn check_transition(
    app: &TestApp,
    path: WritePath,
    task_path: &str,
    from: &str,
    to: &str,
    role: Role,
    allowed: &[u16],
) {
    let case = format!("{path:?}: {from} -> {to} by the {role:?}");
    let party = role.party();
    let (status, body) = match path {
        WritePath::Patch => {
            let ops = if from == to { json!([{"op": "replace", "path": "/status", "value": to}]) } else { move_to(to) };
            patch_as(app, party, task_path, &ops, None).await
        }
        WritePath::Put => put_as(app, party, task_path, &changed_task(app, party, task_path, to).await).await,
        WritePath::TransactionEntry => {
            let resource = changed_task(app, party, task_path, to).await;
            let url = task_path.trim_start_matches('/').to_owned();
            let bundle = json!({
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [{"fullUrl": app.url(task_path), "resource": resource, "request": {"method": "PUT", "url": url}}]
            });
            post_bundle(app, party, &bundle, &[]).await
        }
    };
    assert!(allowed.contains(&status), "{case}: expected one of {allowed:?}, got {status}: {body}");
    if status == 200 {
        if path == WritePath::TransactionEntry {
            assert_eq!(body["type"], "transaction-response", "{case}: {body}");
            let entry_status = body["entry"][0]["response"]["status"].as_str().unwrap_or_default();
            assert!(entry_status.starts_with("200"), "{case}: the entry answers 200: {body}");
        }
        let now = read(app, Party::Gp, task_path).await;
        assert_eq!(now["status"], to, "{case}: the stored Task has the new status");
    } else {
        assert_eq!(body["resourceType"], "OperationOutcome", "{case}: a refusal is an OperationOutcome: {body}");
        if status == 422 {
            assert!(
                expressions(&body).iter().any(|e| e == "Task.status"),
                "{case}: the outcome names Task.status: {body}"
            );
        }
    }
}

/// Tries every `(from, to, role)` along `path`. Refused changes are tried on one Task per
/// `from` state (which must stay as it was); every allowed change gets a Task of its own.
async fn every_transition_along(app: &TestApp, path: WritePath) {
    for from in STATUSES {
        let shared = task_in(app, from).await;
        let shared_path = shared.task_path();
        let before = read(app, Party::Gp, &shared_path).await;
        let mut unchanged_moves = Vec::new();
        for to in STATUSES {
            for role in [Role::Requester, Role::Owner] {
                let allowed = expected(from, to, role);
                if from == to {
                    unchanged_moves.push(role);
                } else if allowed == [200] {
                    let fresh = task_in(app, from).await;
                    check_transition(app, path, &fresh.task_path(), from, to, role, allowed).await;
                } else {
                    check_transition(app, path, &shared_path, from, to, role, allowed).await;
                }
            }
        }
        let after = read(app, Party::Gp, &shared_path).await;
        assert_eq!(
            (&after["status"], &after["meta"]["versionId"]),
            (&before["status"], &before["meta"]["versionId"]),
            "{path:?}: refused changes leave the {from} Task as it was"
        );
        for role in unchanged_moves {
            check_transition(app, path, &shared_path, from, from, role, &[200]).await;
        }
    }
}

async fn every_status_change_by_patch_follows_the_state_machine_and_who_may_set_what(db: Db) {
    let Some(app) = spawn_app_on(db).await else {
        return;
    };
    every_transition_along(&app, WritePath::Patch).await;
}

#[tokio::test]
async fn every_status_change_by_put_follows_the_state_machine_and_who_may_set_what() {
    let app = spawn_app().await;
    every_transition_along(&app, WritePath::Put).await;
}

#[tokio::test]
async fn every_status_change_in_a_transaction_entry_follows_the_state_machine_and_who_may_set_what() {
    let app = spawn_app().await;
    every_transition_along(&app, WritePath::TransactionEntry).await;
}

#[tokio::test]
async fn moving_to_rejected_cancelled_on_hold_or_failed_needs_a_status_reason_text() {
    let app = spawn_app().await;
    let reasons = [
        ("no statusReason", Value::Null),
        ("a statusReason without text", json!({"coding": [{"system": "https://example.org/reasons", "code": "OTH"}]})),
        ("a blank statusReason text", json!({"text": "   "})),
    ];
    let moves = [
        ("requested", "rejected", Party::Clw),
        ("requested", "cancelled", Party::Gp),
        ("accepted", "cancelled", Party::Clw),
        ("accepted", "on-hold", Party::Clw),
        ("in-progress", "failed", Party::Clw),
    ];
    for (from, to, party) in moves {
        let referral = task_in(&app, from).await;
        let path = referral.task_path();
        for (what, reason) in &reasons {
            let mut ops = vec![json!({"op": "replace", "path": "/status", "value": to})];
            if !reason.is_null() {
                ops.push(json!({"op": "add", "path": "/statusReason", "value": reason}));
            }
            let (status, outcome) = patch_as(&app, party, &path, &Value::Array(ops), None).await;
            assert_eq!(status, 422, "{from} -> {to} with {what}: {outcome}");
            assert!(
                expressions(&outcome).iter().any(|e| e == "Task.statusReason"),
                "{from} -> {to} with {what}: the outcome names Task.statusReason: {outcome}"
            );
        }
        let (status, moved) = patch_as(&app, party, &path, &move_to(to), None).await;
        assert_eq!((status, &moved["status"]), (200, &json!(to)), "{from} -> {to} with a reason: {moved}");
        assert_eq!(moved["statusReason"]["text"], format!("why it is {to}"), "{from} -> {to}: the reason is kept");
    }
}

// ---------------------------------------------------------------------------------------------
// Edit rights.

/// One attempted edit: who, on a Task in which state, which patch, and the answers allowed.
struct Edit {
    what: &'static str,
    party: Party,
    state: &'static str,
    ops: Value,
    allowed: &'static [u16],
    /// The element a refusal must name (None: no refusal, or 404).
    names: Option<&'static str>,
}

async fn check_edit(app: &TestApp, edit: &Edit) {
    let referral = task_in(app, edit.state).await;
    let path = referral.task_path();
    let before = read(app, Party::Gp, &path).await;
    let (status, body) = patch_as(app, edit.party, &path, &edit.ops, None).await;
    let case = format!("{} ({:?} on a {} Task)", edit.what, edit.party, edit.state);
    assert!(edit.allowed.contains(&status), "{case}: expected one of {:?}, got {status}: {body}", edit.allowed);
    let after = read(app, Party::Gp, &path).await;
    if status == 200 {
        assert_ne!(after["meta"]["versionId"], before["meta"]["versionId"], "{case}: the edit was stored");
        return;
    }
    assert_eq!(body["resourceType"], "OperationOutcome", "{case}: {body}");
    if let Some(element) = edit.names {
        assert!(expressions(&body).iter().any(|e| e == element), "{case}: the outcome names {element}: {body}");
    }
    assert_eq!(after["meta"]["versionId"], before["meta"]["versionId"], "{case}: the Task did not change");
}

#[tokio::test]
async fn the_owner_edits_only_progress_elements_and_the_requester_everything_until_the_performer_has_it() {
    let app = spawn_app().await;
    let replace = |path: &str, value: Value| json!([{"op": "add", "path": path, "value": value}]);
    let other_sr = refer(&app, Party::Gp, Some("CLW001"), "requested").await;
    let other_focus = json!({"reference": format!("ServiceRequest/{}", other_sr.service_request)});
    let other_for = json!({"reference": format!("Patient/{}", other_sr.patient)});
    let (clw, gp) = (Party::Clw, Party::Gp);
    let output = json!([{"type": {"text": "outcome"}, "valueString": "first contact made"}]);
    let edits = vec![
        // The owner: status, statusReason, businessStatus, output, note only.
        Edit {
            what: "owner sets businessStatus",
            party: clw,
            state: "accepted",
            ops: replace("/businessStatus", json!({"text": "first contact made"})),
            allowed: &[200],
            names: None,
        },
        Edit {
            what: "owner adds a note",
            party: clw,
            state: "in-progress",
            ops: replace("/note", json!([{"text": "met at the hub"}])),
            allowed: &[200],
            names: None,
        },
        Edit {
            what: "owner adds an output",
            party: clw,
            state: "in-progress",
            ops: replace("/output", output.clone()),
            allowed: &[200],
            names: None,
        },
        Edit {
            what: "owner changes owner",
            party: clw,
            state: "accepted",
            ops: replace("/owner", org_ref("CLW002")),
            allowed: &[403, 422],
            names: Some("Task.owner"),
        },
        Edit {
            what: "owner changes requester",
            party: clw,
            state: "accepted",
            ops: replace("/requester", org_ref("GP0002")),
            allowed: &[403, 422],
            names: Some("Task.requester"),
        },
        Edit {
            what: "owner changes focus",
            party: clw,
            state: "accepted",
            ops: replace("/focus", other_focus.clone()),
            allowed: &[403, 422],
            names: Some("Task.focus"),
        },
        Edit {
            what: "owner changes for",
            party: clw,
            state: "accepted",
            ops: replace("/for", other_for.clone()),
            allowed: &[403, 422],
            names: Some("Task.for"),
        },
        Edit {
            what: "owner changes priority",
            party: clw,
            state: "accepted",
            ops: replace("/priority", json!("urgent")),
            allowed: &[403, 422],
            names: Some("Task.priority"),
        },
        Edit {
            what: "owner adds a description",
            party: clw,
            state: "in-progress",
            ops: replace("/description", json!("rewritten")),
            allowed: &[403, 422],
            names: Some("Task.description"),
        },
        Edit {
            what: "owner changes authoredOn",
            party: clw,
            state: "requested",
            ops: replace("/authoredOn", json!("2026-01-01T00:00:00Z")),
            allowed: &[403, 422],
            names: Some("Task.authoredOn"),
        },
        Edit {
            what: "owner accepts and changes priority at once",
            party: clw,
            state: "requested",
            ops: json!([{"op": "replace", "path": "/status", "value": "accepted"}, {"op": "add", "path": "/priority", "value": "urgent"}]),
            allowed: &[403, 422],
            names: Some("Task.priority"),
        },
        // The requester: anything while draft or requested.
        Edit {
            what: "requester changes priority while draft",
            party: gp,
            state: "draft",
            ops: replace("/priority", json!("urgent")),
            allowed: &[200],
            names: None,
        },
        Edit {
            what: "requester adds a description while requested",
            party: gp,
            state: "requested",
            ops: replace("/description", json!("please call after 5pm")),
            allowed: &[200],
            names: None,
        },
        Edit {
            what: "requester sends the Task to another performer while requested",
            party: gp,
            state: "requested",
            ops: replace("/owner", org_ref("CLW002")),
            allowed: &[200],
            names: None,
        },
        // ... afterwards only cancel or entered-in-error.
        Edit {
            what: "requester changes priority once accepted",
            party: gp,
            state: "accepted",
            ops: replace("/priority", json!("urgent")),
            allowed: &[403, 422],
            names: Some("Task.priority"),
        },
        Edit {
            what: "requester changes the description once in progress",
            party: gp,
            state: "in-progress",
            ops: replace("/description", json!("rewritten")),
            allowed: &[403, 422],
            names: Some("Task.description"),
        },
        Edit {
            what: "requester changes the owner once accepted",
            party: gp,
            state: "accepted",
            ops: replace("/owner", org_ref("CLW002")),
            allowed: &[403, 422],
            names: Some("Task.owner"),
        },
        Edit {
            what: "requester sets businessStatus once accepted",
            party: gp,
            state: "accepted",
            ops: replace("/businessStatus", json!({"text": "chased"})),
            allowed: &[403, 422],
            names: Some("Task.businessStatus"),
        },
        Edit {
            what: "requester names another practice as requester",
            party: gp,
            state: "requested",
            ops: replace("/requester", org_ref("GP0002")),
            allowed: &[403, 422],
            names: None,
        },
        // Other organisations cannot see it at all.
        Edit {
            what: "another practice cancels",
            party: Party::OtherGp,
            state: "requested",
            ops: move_to("cancelled"),
            allowed: &[404],
            names: None,
        },
        Edit {
            what: "another CLW service accepts",
            party: Party::OtherClw,
            state: "requested",
            ops: move_to("accepted"),
            allowed: &[404],
            names: None,
        },
        Edit {
            what: "another CLW service adds a note",
            party: Party::OtherClw,
            state: "in-progress",
            ops: replace("/note", json!([{"text": "x"}])),
            allowed: &[404],
            names: None,
        },
    ];
    for edit in &edits {
        check_edit(&app, edit).await;
    }
    // The same answers on a read: strangers see nothing.
    let referral = task_in(&app, "accepted").await;
    for party in [Party::OtherGp, Party::OtherClw] {
        assert_eq!(app.get(party, &referral.task_path()).await.status(), 404, "{party:?} cannot read the Task");
    }
}

fn instant(raw: &Value) -> time::OffsetDateTime {
    let text = raw.as_str().unwrap_or_else(|| panic!("an instant, got {raw}"));
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text} is an instant: {e}"))
}

#[tokio::test]
async fn last_modified_is_set_by_the_server_on_every_change() {
    let app = spawn_app().await;
    let forged = "2001-01-01T00:00:00Z";
    let patient_id = id_of(&app.created(Party::Gp, &patient(&nhs_number())).await);
    let sr_id = id_of(&app.created(Party::Gp, &service_request(&patient_id, "GP0001", "CLW001")).await);
    let start = time::OffsetDateTime::now_utc() - time::Duration::seconds(5);
    let created = app
        .created(
            Party::Gp,
            &with(&task(&sr_id, &patient_id, "GP0001", Some("CLW001")), json!({"lastModified": forged})),
        )
        .await;
    let path = format!("/Task/{}", id_of(&created));
    let mut previous = created["lastModified"].clone();
    assert!(previous.is_string() && previous != forged, "create: the server sets lastModified: {created}");
    assert!(instant(&previous) >= start, "create: lastModified is the time of the change: {created}");

    let with_forged = |status: &str| {
        let mut ops = move_to(status);
        if let Some(list) = ops.as_array_mut() {
            list.push(json!({"op": "add", "path": "/lastModified", "value": forged}));
        }
        ops
    };
    let steps: Vec<(&str, Party, Value)> = vec![
        ("accept by PATCH", Party::Clw, with_forged("accepted")),
        (
            "businessStatus by PATCH",
            Party::Clw,
            json!([{"op": "add", "path": "/businessStatus", "value": {"text": "first contact made"}}]),
        ),
        ("in-progress by PATCH", Party::Clw, with_forged("in-progress")),
    ];
    for (what, party, ops) in steps {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (status, changed) = patch_as(&app, party, &path, &ops, None).await;
        assert_eq!(status, 200, "{what}: {changed}");
        let now = changed["lastModified"].clone();
        assert!(now.is_string() && now != forged, "{what}: the client's lastModified is replaced: {changed}");
        assert!(instant(&now) > instant(&previous), "{what}: lastModified moves forward ({previous} -> {now})");
        previous = now;
    }
    let mut whole = read(&app, Party::Clw, &path).await;
    whole["status"] = json!("completed");
    whole["lastModified"] = json!(forged);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (status, completed) = put_as(&app, Party::Clw, &path, &whole).await;
    assert_eq!(status, 200, "complete by PUT: {completed}");
    assert_ne!(completed["lastModified"], forged, "PUT: the client's lastModified is replaced: {completed}");
    assert!(instant(&completed["lastModified"]) > instant(&previous), "PUT: lastModified moves forward");
    let stored = read(&app, Party::Gp, &path).await;
    assert_eq!(stored["lastModified"], completed["lastModified"], "what was answered is what is stored");
}

// ---------------------------------------------------------------------------------------------
// Open Tasks and claiming them.

fn claim(ods: &str) -> Value {
    json!([
        {"op": "add", "path": "/owner", "value": org_ref(ods)},
        {"op": "replace", "path": "/status", "value": "accepted"}
    ])
}

#[tokio::test]
async fn an_open_task_is_seen_by_every_performer_and_claimed_only_by_naming_itself_while_accepting() {
    let app = spawn_app().await;
    let open = refer(&app, Party::Gp, None, "requested").await;
    let path = open.task_path();
    for party in [Party::Clw, Party::OtherClw, Party::Gp] {
        assert_eq!(app.get(party, &path).await.status(), 200, "{party:?} sees the open Task");
    }
    assert_eq!(app.get(Party::OtherGp, &path).await.status(), 404, "another practice does not");
    let found = search(&app, Party::OtherClw, "/Task?owner:missing=true&status=requested").await;
    assert!(found.iter().any(|t| t["id"] == open.task.as_str()), "performers find open Tasks by search");

    let refusals: Vec<(&str, Party, Value, &[u16])> = vec![
        (
            "owner set without accepting",
            Party::Clw,
            json!([{"op": "add", "path": "/owner", "value": org_ref("CLW001")}]),
            &[422],
        ),
        (
            "accepted without setting the owner",
            Party::Clw,
            json!([{"op": "replace", "path": "/status", "value": "accepted"}]),
            &[403, 422],
        ),
        ("claimed for another performer", Party::Clw, claim("CLW002"), &[403, 422]),
        ("claimed by a referrer", Party::Gp, claim("GP0001"), &[403, 422]),
        (
            "claimed while changing priority",
            Party::Clw,
            json!([{"op": "add", "path": "/owner", "value": org_ref("CLW001")}, {"op": "replace", "path": "/status", "value": "accepted"}, {"op": "add", "path": "/priority", "value": "urgent"}]),
            &[403, 422],
        ),
    ];
    for (what, party, ops, allowed) in refusals {
        let (status, outcome) = patch_as(&app, party, &path, &ops, None).await;
        assert!(allowed.contains(&status), "{what}: expected one of {allowed:?}, got {status}: {outcome}");
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{what}");
    }
    assert_eq!(read(&app, Party::Gp, &path).await["meta"]["versionId"], "1", "the refused claims changed nothing");

    let (status, claimed) = patch_as(&app, Party::Clw, &path, &claim("CLW001"), Some("W/\"1\"")).await;
    assert_eq!(status, 200, "CLW001 claims it: {claimed}");
    assert_eq!((&claimed["status"], &claimed["owner"]), (&json!("accepted"), &org_ref("CLW001")), "claimed: {claimed}");
    assert_eq!(
        app.get(Party::OtherClw, &path).await.status(),
        404,
        "after the claim the other performer no longer sees it"
    );
    let still_open = search(&app, Party::OtherClw, "/Task?owner:missing=true").await;
    assert!(!still_open.iter().any(|t| t["id"] == open.task.as_str()), "nor finds it among open Tasks");
    assert_eq!(read(&app, Party::Gp, &path).await["owner"], org_ref("CLW001"), "the GP sees who took it");
}

async fn two_performers_racing_to_claim_an_open_task_give_one_owner(db: Db) {
    let Some(app) = spawn_app_on(db).await else {
        return;
    };
    // With If-Match both start from version 1 (412 when they collide); either way a loser
    // that arrives after the claim committed no longer sees the Task (404: not its to see).
    let races: [(&str, Option<&str>, &[u16]); 2] =
        [("with If-Match", Some("W/\"1\""), &[404, 409, 412, 422]), ("without If-Match", None, &[404, 409, 412, 422])];
    for (how, if_match, loser_statuses) in races {
        for round in 0..3 {
            let open = refer(&app, Party::Gp, None, "requested").await;
            let path = open.task_path();
            let (clw_token, other_token) = (app.token(Party::Clw).await, app.token(Party::OtherClw).await);
            let attempt = |token: String, ods: &'static str| {
                let mut request = app
                    .http
                    .patch(app.url(&path))
                    .bearer_auth(token)
                    .header("Content-Type", "application/json-patch+json")
                    .body(claim(ods).to_string());
                if let Some(etag) = if_match {
                    request = request.header("If-Match", etag);
                }
                async move { json_of(request.send().await.expect("claim")).await }
            };
            let (first, second) = tokio::join!(attempt(clw_token, "CLW001"), attempt(other_token, "CLW002"));
            let case = format!("{how}, round {round}: CLW001 {} / CLW002 {}", first.0, second.0);
            let (winner, (loser_status, loser_body)) = match (first.0, second.0) {
                (200, _) => (Party::Clw, second),
                (_, 200) => (Party::OtherClw, first),
                _ => panic!("{case}: one claim must win: {} / {}", first.1, second.1),
            };
            assert!(
                loser_statuses.contains(&loser_status),
                "{case}: the loser gets one of {loser_statuses:?}: {loser_body}"
            );
            let stored = read(&app, Party::Gp, &path).await;
            assert_eq!(stored["owner"], org_ref(winner.ods()), "{case}: the winner owns it");
            assert_eq!(stored["status"], "accepted", "{case}");
            assert_eq!(stored["meta"]["versionId"], "2", "{case}: exactly one change was made");
            let loser = if winner == Party::Clw { Party::OtherClw } else { Party::Clw };
            assert_eq!(app.get(loser, &path).await.status(), 404, "{case}: the loser no longer sees it");
            assert_eq!(app.get(winner, &path).await.status(), 200, "{case}: the winner does");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Referential rules.

/// A create that must be refused: what it is, who sends it, the resource, the statuses
/// allowed, and the element the outcome must name (if any).
type RefusedCreate = (&'static str, Party, Value, &'static [u16], Option<&'static str>);

async fn check_refused_create(app: &TestApp, (what, party, resource, allowed, names): &RefusedCreate) {
    let (status, outcome) = post_as(app, *party, resource, &[]).await;
    assert!(allowed.contains(&status), "{what}: expected one of {allowed:?}, got {status}: {outcome}");
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{what}: {outcome}");
    if let Some(element) = names {
        assert!(expressions(&outcome).iter().any(|e| e == element), "{what}: the outcome names {element}: {outcome}");
    }
}

#[tokio::test]
async fn a_task_must_focus_on_its_requesters_referral_for_its_patient_and_go_to_a_registered_performer() {
    let app = spawn_app().await;
    let mine = id_of(&app.created(Party::Gp, &patient(&nhs_number())).await);
    let someone_else = id_of(&app.created(Party::Gp, &patient(&nhs_number())).await);
    let sr = id_of(&app.created(Party::Gp, &service_request(&mine, "GP0001", "CLW001")).await);
    let theirs_patient = id_of(&app.created(Party::OtherGp, &patient(&nhs_number())).await);
    let theirs_sr = id_of(&app.created(Party::OtherGp, &service_request(&theirs_patient, "GP0002", "CLW001")).await);
    let missing_sr = uuid::Uuid::new_v4().to_string();
    let base = task(&sr, &mine, "GP0001", Some("CLW001"));
    let focus = |id: &str| json!({"focus": {"reference": format!("ServiceRequest/{id}")}});

    let cases: Vec<RefusedCreate> = vec![
        ("another practice's referral as focus", Party::Gp, with(&base, focus(&theirs_sr)), &[422], Some("Task.focus")),
        ("a missing referral as focus", Party::Gp, with(&base, focus(&missing_sr)), &[422], Some("Task.focus")),
        (
            "a Patient as focus",
            Party::Gp,
            with(&base, json!({"focus": {"reference": format!("Patient/{mine}")}})),
            &[422],
            Some("Task.focus"),
        ),
        ("no focus", Party::Gp, with(&base, json!({"focus": null})), &[422], Some("Task.focus")),
        (
            "for another patient than the referral's",
            Party::Gp,
            with(&base, json!({"for": {"reference": format!("Patient/{someone_else}")}})),
            &[422],
            Some("Task.for"),
        ),
        (
            "owned by a GP practice",
            Party::Gp,
            with(&base, json!({"owner": org_ref("GP0002")})),
            &[422],
            Some("Task.owner"),
        ),
        (
            "owned by an unknown organisation",
            Party::Gp,
            with(&base, json!({"owner": org_ref("NOSUCH1")})),
            &[422],
            Some("Task.owner"),
        ),
        (
            "requested by another practice",
            Party::Gp,
            with(&base, json!({"requester": org_ref("GP0002")})),
            &[403, 422],
            None,
        ),
        ("created as accepted", Party::Gp, with(&base, json!({"status": "accepted"})), &[422], Some("Task.status")),
        ("created by a performer", Party::Clw, base.clone(), &[403], None),
    ];
    for case in &cases {
        check_refused_create(&app, case).await;
    }
    assert_eq!(history_len(&app, Party::Operator, "/Task/_history").await, 0, "no refused Task was stored");
    let (status, created) = post_as(&app, Party::Gp, &base, &[]).await;
    assert_eq!(status, 201, "the valid Task: {created}");
}

#[tokio::test]
async fn only_a_referrer_creates_referrals_and_only_in_its_own_name() {
    let app = spawn_app().await;
    let patient_id = id_of(&app.created(Party::Gp, &patient(&nhs_number())).await);
    let cases: Vec<RefusedCreate> = vec![
        (
            "requester is another practice",
            Party::Gp,
            service_request(&patient_id, "GP0002", "CLW001"),
            &[403, 422],
            None,
        ),
        ("created by a performer", Party::Clw, service_request(&patient_id, "GP0001", "CLW001"), &[403], None),
        (
            "created by a performer in its own name",
            Party::Clw,
            service_request(&patient_id, "CLW001", "CLW001"),
            &[403],
            None,
        ),
    ];
    for case in &cases {
        check_refused_create(&app, case).await;
    }
    assert_eq!(history_len(&app, Party::Operator, "/ServiceRequest/_history").await, 0, "nothing was stored");
    let (status, created) = post_as(&app, Party::Gp, &service_request(&patient_id, "GP0001", "CLW001"), &[]).await;
    assert_eq!(status, 201, "the GP's own referral: {created}");
}

#[tokio::test]
async fn a_care_plan_is_written_by_the_performer_owning_the_referral_for_its_patient() {
    let app = spawn_app().await;
    let referral = task_in(&app, "accepted").await;
    let elsewhere = task_in(&app, "accepted").await;
    let (sr, patient_id) = (referral.service_request.as_str(), referral.patient.as_str());
    let cases: Vec<RefusedCreate> = vec![
        ("another CLW service", Party::OtherClw, care_plan(sr, patient_id, "CLW002"), &[403, 422], None),
        (
            "another subject than the referral's",
            Party::Clw,
            care_plan(sr, &elsewhere.patient, "CLW001"),
            &[422],
            Some("CarePlan.subject"),
        ),
        ("authored in another service's name", Party::Clw, care_plan(sr, patient_id, "CLW002"), &[403, 422], None),
        (
            "not based on a referral",
            Party::Clw,
            with(&care_plan(sr, patient_id, "CLW001"), json!({"basedOn": null})),
            &[422],
            Some("CarePlan.basedOn"),
        ),
        ("by the referring GP", Party::Gp, care_plan(sr, patient_id, "GP0001"), &[403], None),
    ];
    for case in &cases {
        check_refused_create(&app, case).await;
    }
    assert_eq!(history_len(&app, Party::Operator, "/CarePlan/_history").await, 0, "no refused CarePlan was stored");
    let (status, plan) = post_as(&app, Party::Clw, &care_plan(sr, patient_id, "CLW001"), &[]).await;
    assert_eq!(status, 201, "the owning performer writes it: {plan}");
    let path = format!("/CarePlan/{}", id_of(&plan));
    assert_eq!(app.get(Party::Gp, &path).await.status(), 200, "the referring GP reads it");
    for party in [Party::OtherGp, Party::OtherClw] {
        assert_eq!(app.get(party, &path).await.status(), 404, "{party:?} cannot");
    }
}

#[tokio::test]
async fn revoking_a_referral_cancels_its_open_tasks_and_leaves_ended_ones_alone() {
    let app = spawn_app().await;
    // One referral with three Tasks: rejected by CLW001, then re-sent to CLW001 (in progress)
    // and to CLW002 (requested).
    let first = task_in(&app, "rejected").await;
    let work = |owner: &str| task(&first.service_request, &first.patient, "GP0001", Some(owner));
    let again = id_of(&app.created(Party::Gp, &work("CLW001")).await);
    drive(&app, &format!("/Task/{again}"), &route_to("in-progress")).await;
    let other_service = id_of(&app.created(Party::Gp, &work("CLW002")).await);
    let unrelated = task_in(&app, "accepted").await;

    let (status, revoked) = patch_as(
        &app,
        Party::Gp,
        &first.service_request_path(),
        &json!([{"op": "replace", "path": "/status", "value": "revoked"}]),
        None,
    )
    .await;
    assert_eq!(status, 200, "the GP revokes the referral: {revoked}");
    assert_eq!(revoked["status"], "revoked");

    let expectations = [
        ("the rejected Task", first.task.clone(), vec!["rejected", "requested"]),
        ("the in-progress Task", again, vec!["cancelled", "in-progress", "accepted", "requested"]),
        ("the requested Task at CLW002", other_service, vec!["cancelled", "requested"]),
        ("another referral's Task", unrelated.task.clone(), vec!["accepted", "requested"]),
    ];
    for (what, id, statuses) in expectations {
        let path = format!("/Task/{id}");
        assert_eq!(status_history(&app, Party::Gp, &path).await, statuses, "{what}: its history, newest first");
        let now = read(&app, Party::Gp, &path).await;
        if now["status"] == "cancelled" {
            assert!(
                now["statusReason"]["text"].as_str().is_some_and(|t| !t.trim().is_empty()),
                "{what}: says why: {now}"
            );
        }
    }
    let seen_by_clw = read(&app, Party::Clw, &format!("/Task/{}", first.task)).await;
    assert_eq!(seen_by_clw["status"], "rejected", "the performer sees the same");
}

// ---------------------------------------------------------------------------------------------
// End to end.

/// The settle window of `_lastUpdated` polls in these tests: short, so polls see writes soon.
const SETTLE_MS: u64 = 300;

async fn polling_app(db: Db) -> Option<TestApp> {
    let database = test_database(db).await?;
    let settings = linkbridge::config::Settings { settle_window_ms: SETTLE_MS, ..test_settings(&database) };
    Some(spawn_app_with(database, settings).await)
}

/// The GP's poll: its Tasks changed after `since`, once writes so far have settled.
async fn gp_poll(app: &TestApp, since: &Value) -> Vec<Value> {
    tokio::time::sleep(Duration::from_millis(SETTLE_MS + 100)).await;
    let since = since.as_str().expect("an instant");
    search(app, Party::Gp, &format!("/Task?requester:identifier={ODS}|GP0001&_lastUpdated=gt{since}")).await
}

/// One refused interaction of the end-to-end test.
async fn check_refused(
    app: &TestApp,
    what: &str,
    party: Party,
    method: Method,
    path: &str,
    body: Option<Value>,
    allowed: &[u16],
) {
    let body = body.map(|b| {
        let content_type = if b.is_array() { "application/json-patch+json" } else { "application/fhir+json" };
        (content_type, b.to_string())
    });
    let (status, outcome) = send(app, party, method, path, body, &[]).await;
    assert!(allowed.contains(&status), "{what}: expected one of {allowed:?}, got {status}: {outcome}");
}

async fn a_referral_travels_from_the_gp_to_the_link_worker_and_back(db: Db) {
    let Some(app) = polling_app(db).await else {
        return;
    };

    // The GP sends the referral as one transaction.
    let bundle = referral_transaction(&nhs_number(), "GP0001", Some("CLW001"));
    let request_id = uuid::Uuid::new_v4().to_string();
    let (status, response) = post_bundle(&app, Party::Gp, &bundle, &[("X-Request-ID", &request_id)]).await;
    assert_eq!(status, 200, "the referral transaction: {response}");
    let entries = response["entry"].as_array().expect("response entries");
    let (_, sr_id) = location_of(&entries[SERVICE_REQUEST_ENTRY]);
    let (_, task_id) = location_of(&entries[TASK_ENTRY]);
    let (task_path, sr_path) = (format!("/Task/{task_id}"), format!("/ServiceRequest/{sr_id}"));
    let sent = read(&app, Party::Gp, &task_path).await;
    let patient_ref = sent["for"]["reference"].as_str().expect("Task.for").to_owned();

    // The link worker service finds it, reads the referral and the patient.
    let inbox = search(&app, Party::Clw, &format!("/Task?owner:identifier={ODS}|CLW001&status=requested")).await;
    assert_eq!(inbox.iter().map(id_of).collect::<Vec<_>>(), vec![task_id.clone()], "CLW001's inbox holds the referral");
    let elsewhere =
        search(&app, Party::OtherClw, &format!("/Task?owner:identifier={ODS}|CLW001&status=requested")).await;
    assert!(elsewhere.is_empty(), "CLW002 sees nothing of CLW001's inbox");
    assert_eq!(
        read(&app, Party::Clw, &sr_path).await["subject"]["reference"],
        patient_ref.as_str(),
        "CLW reads the referral"
    );
    read(&app, Party::Clw, &format!("/{patient_ref}")).await;

    let mut seen = sent["meta"]["lastUpdated"].clone();
    assert!(gp_poll(&app, &seen).await.is_empty(), "nothing has changed yet");

    // Accepted, in progress, CarePlan written, completed with the CarePlan as output.
    let (status, accepted) = patch_as(&app, Party::Clw, &task_path, &move_to("accepted"), Some("W/\"1\"")).await;
    assert_eq!(status, 200, "CLW accepts: {accepted}");
    let polled = gp_poll(&app, &seen).await;
    assert_eq!(
        polled.iter().map(|t| t["status"].clone()).collect::<Vec<_>>(),
        vec![json!("accepted")],
        "the GP sees the acceptance"
    );
    seen = polled[0]["meta"]["lastUpdated"].clone();

    let (status, started) = patch_as(&app, Party::Clw, &task_path, &move_to("in-progress"), Some("W/\"2\"")).await;
    assert_eq!(status, 200, "CLW starts: {started}");
    let polled = gp_poll(&app, &seen).await;
    assert_eq!(
        polled.iter().map(|t| t["status"].clone()).collect::<Vec<_>>(),
        vec![json!("in-progress")],
        "the GP sees the start"
    );
    seen = polled[0]["meta"]["lastUpdated"].clone();

    let patient_id = patient_ref.trim_start_matches("Patient/");
    let plan = app.created(Party::Clw, &care_plan(&sr_id, patient_id, "CLW001")).await;
    let plan_ref = format!("CarePlan/{}", id_of(&plan));
    let finish = json!([
        {"op": "add", "path": "/output", "value": [{"type": {"text": "CarePlan"}, "valueReference": {"reference": plan_ref}}]},
        {"op": "replace", "path": "/status", "value": "completed"}
    ]);
    let (status, completed) = patch_as(&app, Party::Clw, &task_path, &finish, Some("W/\"3\"")).await;
    assert_eq!(status, 200, "CLW completes: {completed}");
    let polled = gp_poll(&app, &seen).await;
    assert_eq!(polled.len(), 1, "the GP sees the completion: {polled:?}");
    assert_eq!(polled[0]["status"], "completed", "completed");
    assert_eq!(polled[0]["output"][0]["valueReference"]["reference"], plan_ref.as_str(), "with the CarePlan");
    assert!(gp_poll(&app, &polled[0]["meta"]["lastUpdated"]).await.is_empty(), "and nothing after it");

    assert_eq!(
        status_history(&app, Party::Gp, &task_path).await,
        vec!["completed", "in-progress", "accepted", "requested"],
        "the GP sees every step in the Task's history"
    );
    assert_eq!(read(&app, Party::Gp, &format!("/{plan_ref}")).await["id"], plan["id"], "the GP reads the CarePlan");
    assert_eq!(
        read(&app, Party::Gp, &sr_path).await["status"],
        "active",
        "the Task ending does not change the referral"
    );

    // Each party is refused what belongs to the other; strangers see nothing.
    let revoke = json!([{"op": "replace", "path": "/status", "value": "revoked"}]);
    let plan_path = format!("/{plan_ref}");
    let sr_now = read(&app, Party::Gp, &sr_path).await;
    check_refused(&app, "CLW changes the referral", Party::Clw, Method::PATCH, &sr_path, Some(revoke.clone()), &[403])
        .await;
    check_refused(
        &app,
        "CLW replaces the referral",
        Party::Clw,
        Method::PUT,
        &sr_path,
        Some(with(&sr_now, json!({"priority": "urgent"}))),
        &[403],
    )
    .await;
    check_refused(
        &app,
        "GP changes the CarePlan",
        Party::Gp,
        Method::PATCH,
        &plan_path,
        Some(json!([{"op": "replace", "path": "/status", "value": "revoked"}])),
        &[403],
    )
    .await;
    check_refused(
        &app,
        "CLW reopens the completed Task",
        Party::Clw,
        Method::PATCH,
        &task_path,
        Some(move_to("in-progress")),
        &[422],
    )
    .await;
    for path in [&task_path, &sr_path, &plan_path, &format!("/{patient_ref}")] {
        check_refused(&app, &format!("another practice reads {path}"), Party::OtherGp, Method::GET, path, None, &[404])
            .await;
    }
    for path in [&task_path, &sr_path, &plan_path] {
        check_refused(
            &app,
            &format!("another CLW service reads {path}"),
            Party::OtherClw,
            Method::GET,
            path,
            None,
            &[404],
        )
        .await;
    }
    let stranger_poll = search(&app, Party::OtherGp, &format!("/Task?requester:identifier={ODS}|GP0001")).await;
    assert!(stranger_poll.is_empty(), "another practice's poll of GP0001's Tasks finds nothing");
    assert_eq!(
        read(&app, Party::Gp, &sr_path).await["meta"]["versionId"],
        sr_now["meta"]["versionId"],
        "the referral is unchanged"
    );
}

/// The ServiceRequest of a referral names the CLW service as its performer (content
/// visibility) and the Task given to that service grants it the same key: the grant must
/// outlive the content, so that a later edit of the ServiceRequest's performer does not take
/// the referral from the service that holds its Task. Both ways a referral arrives: separate
/// creates, and one transaction (whose grant and content rows meet in one statement).
async fn a_link_worker_keeps_the_referral_its_task_grants_after_the_gp_edits_the_performer(db: Db) {
    let Some(app) = spawn_app_on(db).await else {
        return;
    };
    let separate = refer(&app, Party::Gp, Some("CLW001"), "requested").await.service_request;
    let (status, bundle) =
        post_bundle(&app, Party::Gp, &referral_transaction(&nhs_number(), "GP0001", Some("CLW001")), &[]).await;
    assert_eq!(status, 200, "{bundle}");
    let (_, in_one) = location_of(&bundle["entry"][SERVICE_REQUEST_ENTRY]);
    for (how, sr_id) in [("separate creates", separate), ("one transaction", in_one)] {
        let path = format!("/ServiceRequest/{sr_id}");
        let mut edited = read(&app, Party::Gp, &path).await;
        edited["performer"] = json!([org_ref("CLW002")]);
        let (status, body) = put_as(&app, Party::Gp, &path, &edited).await;
        assert_eq!(status, 200, "{how}: the GP names another performer: {body}");
        let still = read(&app, Party::Clw, &path).await;
        assert_eq!(still["performer"][0]["identifier"]["value"], "CLW002", "{how}: CLW001 reads the edited version");
    }
}

on_both_databases!(
    every_status_change_by_patch_follows_the_state_machine_and_who_may_set_what,
    two_performers_racing_to_claim_an_open_task_give_one_owner,
    a_referral_travels_from_the_gp_to_the_link_worker_and_back,
    a_link_worker_keeps_the_referral_its_task_grants_after_the_gp_edits_the_performer,
);
