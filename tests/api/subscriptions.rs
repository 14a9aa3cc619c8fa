//! Subscriptions and webhooks (issue "Status updates pushed to GP systems"): real HTTP
//! receivers on loopback hear of referral changes, signed the Standard Webhooks way, once each,
//! through receiver outages, server kills and two replicas; rolled-back changes and other
//! organisations' changes notify nobody.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::fixtures::{nhs_number, referral_transaction};
use crate::helpers::{
    register_test_clients, spawn_app_with, test_database, test_settings, Db, Party, TestApp, TestDatabase,
};
use crate::on_both_databases;
use crate::processes::{ServerOptions, ServerProcess};
use crate::webhook_receiver::{new_secret, verify_signature, Delivery, Mode, WebhookReceiver};
use crate::workflow::{drive, id_of, post_as, post_bundle, put_as, refer, send};
use linkbridge::store::DatabaseUrl;

pub(crate) const TASK_TOPIC: &str = "https://linkbridge.scot/fhir/SubscriptionTopic/referral-task";
const CAREPLAN_TOPIC: &str = "https://linkbridge.scot/fhir/SubscriptionTopic/link-worker-careplan";
const FILTER: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria";
const PAYLOAD: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content";
const SECRET: &str = "https://linkbridge.scot/fhir/StructureDefinition/webhook-secret";
/// Long enough for a loaded CI machine; deliveries normally take milliseconds.
const WAIT: Duration = Duration::from_secs(30);

/// A rest-hook Subscription to `topic` with `filters`, `payload` content and `secret`.
pub(crate) fn subscription(endpoint: &str, secret: &str, topic: &str, filters: &[&str], payload: &str) -> Value {
    let mut resource = json!({
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "Follow our referrals to link workers",
        "criteria": topic,
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": PAYLOAD, "valueCode": payload}]},
            "header": ["X-Practice-System: test-suite"],
            "extension": [{"url": SECRET, "valueString": secret}]
        }
    });
    if !filters.is_empty() {
        resource["_criteria"] =
            json!({"extension": filters.iter().map(|f| json!({"url": FILTER, "valueString": f})).collect::<Vec<_>>()});
    }
    resource
}

/// Settings that let subscriptions use loopback receivers and retry quickly.
fn webhook_settings(database: &TestDatabase) -> linkbridge::config::Settings {
    linkbridge::config::Settings {
        allow_private_webhook_endpoints: true,
        delivery_retry_schedule: "200ms,400ms,800ms,1s,1s".to_owned(),
        delivery_poll_interval_ms: 100,
        delivery_lease_secs: 5,
        delivery_timeout_secs: 2,
        ..test_settings(database)
    }
}

async fn spawn_webhook_app(db: Db) -> Option<TestApp> {
    let database = test_database(db).await?;
    let settings = webhook_settings(&database);
    Some(spawn_app_with(database, settings).await)
}

/// The value of a top-level parameter of a notification's status Parameters.
fn parameter(notification: &Value, name: &str) -> Option<Value> {
    notification["entry"][0]["resource"]["parameter"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .map(|p| p.as_object().and_then(|o| o.iter().find(|(k, _)| k.starts_with("value"))).map(|(_, v)| v.clone()))?
}

pub(crate) fn notification_type(delivery: &Delivery) -> String {
    parameter(&delivery.json(), "type").and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// `(event number, focus reference)` of each event a notification carries.
fn events_of(notification: &Value) -> Vec<(i64, Option<String>)> {
    let parameters = notification["entry"][0]["resource"]["parameter"].as_array().cloned().unwrap_or_default();
    parameters
        .iter()
        .filter(|p| p["name"] == "notification-event")
        .map(|event| {
            let parts = event["part"].as_array().cloned().unwrap_or_default();
            let part = |name: &str| parts.iter().find(|p| p["name"] == name).cloned();
            let number = part("event-number")
                .and_then(|p| p["valueString"].as_str().and_then(|n| n.parse().ok()))
                .expect("an event number");
            let focus = part("focus").and_then(|p| p["valueReference"]["reference"].as_str().map(str::to_owned));
            (number, focus)
        })
        .collect()
}

/// The event notifications received (accepted), by event number.
pub(crate) fn events_received(receiver: &WebhookReceiver) -> BTreeMap<i64, Vec<Delivery>> {
    let mut by_number: BTreeMap<i64, Vec<Delivery>> = BTreeMap::new();
    for delivery in receiver.accepted().into_iter().filter(|d| notification_type(d) == "event-notification") {
        for (number, _) in events_of(&delivery.json()) {
            by_number.entry(number).or_default().push(delivery.clone());
        }
    }
    by_number
}

/// Waits until the receiver has accepted event notifications numbered 1..=n.
async fn wait_for_events(receiver: &WebhookReceiver, n: i64) -> BTreeMap<i64, Vec<Delivery>> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let received = events_received(receiver);
        if (1..=n).all(|k| received.contains_key(&k)) {
            return received;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected events 1..={n}, received {:?} (all deliveries: {:?})",
            received.keys().collect::<Vec<_>>(),
            receiver.deliveries().iter().map(|d| d.status).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates a subscription as `party` and waits for the handshake to make it active.
pub(crate) async fn subscribe(app: &TestApp, party: Party, resource: &Value) -> String {
    let (status, created) = post_as(app, party, resource, &[]).await;
    assert_eq!(status, 201, "subscription created: {created}");
    let id = id_of(&created);
    wait_for_status(app, party, &id, "active").await;
    id
}

async fn wait_for_status(app: &TestApp, party: Party, id: &str, expected: &str) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, current) = send(app, party, Method::GET, &format!("/Subscription/{id}"), None, &[]).await;
        if current["status"] == expected {
            return current;
        }
        assert!(std::time::Instant::now() < deadline, "Subscription/{id} never became {expected}: {current}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn each_referral_change_is_delivered_once_signed_and_numbered_in_order(db: Db) {
    let Some(app) = spawn_webhook_app(db).await else { return };
    let receiver = WebhookReceiver::start().await;
    let secret = new_secret();
    let filter = format!("Task?requester=Organization/{}", Party::Gp.ods());
    subscribe(&app, Party::Gp, &subscription(&receiver.url(), &secret, TASK_TOPIC, &[&filter], "id-only")).await;

    let handshake = receiver.accepted().into_iter().find(|d| notification_type(d) == "handshake");
    let handshake = handshake.expect("a handshake was delivered before the subscription became active");
    verify_signature(&secret, &handshake).expect("the handshake is signed with the subscription's secret");

    let referral = refer(&app, Party::Gp, Some(Party::Clw.ods()), "requested").await;
    drive(&app, &referral.task_path(), &[(Party::Clw, "accepted"), (Party::Clw, "in-progress")]).await;
    let received = wait_for_events(&receiver, 3).await;

    let expected_versions = ["1", "2", "3"];
    for (number, version) in (1..=3).zip(expected_versions) {
        let deliveries = &received[&number];
        assert_eq!(deliveries.len(), 1, "event {number} delivered exactly once: {:?}", deliveries.len());
        let delivery = &deliveries[0];
        verify_signature(&secret, delivery).unwrap_or_else(|e| panic!("event {number} has a valid signature: {e}"));
        assert_eq!(delivery.header("content-type"), Some("application/fhir+json"));
        assert_eq!(delivery.header("x-practice-system"), Some("test-suite"), "custom channel headers are sent");
        let notification = delivery.json();
        assert_eq!(notification["type"], "history");
        assert_eq!(parameter(&notification, "topic"), Some(json!(TASK_TOPIC)));
        let focus = events_of(&notification)[0].1.clone().expect("id-only names the focus");
        assert!(focus.ends_with(&format!("/Task/{}/_history/{version}", referral.task)), "event {number}: {focus}");
        assert!(notification["entry"][1].get("resource").is_none(), "id-only carries no resource");
    }
    let ids: BTreeSet<String> =
        received.values().flatten().map(|d| d.header("webhook-id").expect("webhook-id").to_owned()).collect();
    assert_eq!(ids.len(), 3, "every event has its own webhook-id");
}

async fn a_receiver_that_is_down_for_a_while_receives_everything_when_it_recovers(db: Db) {
    let Some(app) = spawn_webhook_app(db).await else { return };
    let receiver = WebhookReceiver::start().await;
    let secret = new_secret();
    subscribe(&app, Party::Gp, &subscription(&receiver.url(), &secret, TASK_TOPIC, &[], "full-resource")).await;

    // First failing with 500s (so retries are seen), then refusing connections.
    receiver.set_mode(Mode::Status(500)).await;
    let referral = refer(&app, Party::Gp, Some(Party::Clw.ods()), "requested").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    receiver.go_down().await;
    drive(&app, &referral.task_path(), &[(Party::Clw, "accepted"), (Party::Clw, "in-progress")]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    receiver.come_back().await;

    let received = wait_for_events(&receiver, 3).await;
    let all = receiver.deliveries();
    let refused_ids: BTreeSet<&str> =
        all.iter().filter(|d| d.status == 500).filter_map(|d| d.header("webhook-id")).collect();
    assert!(!refused_ids.is_empty(), "the receiver saw failed attempts while it answered 500");
    let first_event_id = received[&1][0].header("webhook-id").expect("webhook-id");
    assert!(refused_ids.contains(first_event_id), "the retry that succeeded carries the failed attempts' webhook-id");
    for number in 1..=3 {
        let delivery = &received[&number][0];
        verify_signature(&secret, delivery).expect("valid signature after recovery");
        let notification = delivery.json();
        assert_eq!(notification["entry"][1]["resource"]["resourceType"], "Task", "full-resource carries the Task");
    }
    let statuses: Vec<String> = (1..=3)
        .map(|n| received[&n][0].json()["entry"][1]["resource"]["status"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(statuses, ["requested", "accepted", "in-progress"], "each event carries its own version");
}

async fn a_rolled_back_transaction_notifies_nobody_and_leaves_no_gap_in_event_numbers(db: Db) {
    let Some(app) = spawn_webhook_app(db).await else { return };
    let receiver = WebhookReceiver::start().await;
    let secret = new_secret();
    let id = subscribe(&app, Party::Gp, &subscription(&receiver.url(), &secret, TASK_TOPIC, &[], "id-only")).await;

    // A transaction whose Task is fine but whose ServiceRequest breaks the rules (another
    // practice as requester): nothing of it commits, so nothing is announced.
    let mut broken = referral_transaction(&nhs_number(), Party::Gp.ods(), Some(Party::Clw.ods()));
    broken["entry"][crate::fixtures::SERVICE_REQUEST_ENTRY]["resource"]["requester"] =
        json!({"identifier": {"system": crate::fixtures::ODS, "value": "GP0002"}});
    let (status, outcome) = post_bundle(&app, Party::Gp, &broken, &[]).await;
    assert!((400..500).contains(&status), "the transaction is refused: {status} {outcome}");

    let good = referral_transaction(&nhs_number(), Party::Gp.ods(), Some(Party::Clw.ods()));
    let (status, response) = post_bundle(&app, Party::Gp, &good, &[]).await;
    assert_eq!(status, 200, "{response}");
    wait_for_events(&receiver, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = events_received(&receiver);
    assert_eq!(received.keys().copied().collect::<Vec<_>>(), vec![1], "only the committed Task was announced");
    let (_, status_bundle) =
        send(&app, Party::Gp, Method::GET, &format!("/Subscription/{id}/$status"), None, &[]).await;
    assert_eq!(parameter(&status_bundle, "events-since-subscription-start"), Some(json!("1")));
}

async fn a_subscription_never_hears_of_another_organisations_referrals(db: Db) {
    let Some(app) = spawn_webhook_app(db).await else { return };
    let gp_receiver = WebhookReceiver::start().await;
    let clw_receiver = WebhookReceiver::start().await;
    // No filter at all: narrowing to the subscriber's tenancy is the server's job.
    subscribe(&app, Party::Gp, &subscription(&gp_receiver.url(), &new_secret(), TASK_TOPIC, &[], "full-resource"))
        .await;
    subscribe(
        &app,
        Party::OtherClw,
        &subscription(&clw_receiver.url(), &new_secret(), TASK_TOPIC, &[], "full-resource"),
    )
    .await;

    // The other practice refers to CLW001 and it is worked; then one of GP0001's own.
    let theirs = refer(&app, Party::OtherGp, Some(Party::Clw.ods()), "requested").await;
    drive(&app, &theirs.task_path(), &[(Party::Clw, "accepted")]).await;
    let ours = refer(&app, Party::Gp, Some(Party::Clw.ods()), "requested").await;
    wait_for_events(&gp_receiver, 1).await;
    tokio::time::sleep(Duration::from_millis(700)).await;

    let gp_events: Vec<String> = events_received(&gp_receiver)
        .values()
        .flatten()
        .filter_map(|d| d.json()["entry"][1]["resource"]["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(gp_events, vec![ours.task.clone()], "GP0001 hears of its own referral only");
    assert!(events_received(&clw_receiver).is_empty(), "CLW002 hears of nothing assigned to CLW001");

    // A filter naming another organisation is refused outright.
    let other = format!("Task?requester=Organization/{}", Party::OtherGp.ods());
    let (status, outcome) = post_as(
        &app,
        Party::Gp,
        &subscription(&gp_receiver.url(), &new_secret(), TASK_TOPIC, &[&other], "id-only"),
        &[],
    )
    .await;
    assert_eq!(status, 403, "{outcome}");
    // And someone else's subscription is not even visible.
    let (status, _) = send(&app, Party::OtherGp, Method::GET, "/Subscription", None, &[]).await;
    assert_eq!(status, 200);
    let (_, listed) = send(&app, Party::OtherGp, Method::GET, "/Subscription", None, &[]).await;
    assert_eq!(listed["total"].as_i64().unwrap_or(0), 0, "GP0002 sees no subscription of GP0001: {listed}");
}

async fn an_event_that_exhausts_its_retries_is_kept_as_dead_and_a_resend_delivers_it(db: Db) {
    let Some(app) = spawn_webhook_app(db).await else { return };
    let receiver = WebhookReceiver::start().await;
    let secret = new_secret();
    let id = subscribe(&app, Party::Gp, &subscription(&receiver.url(), &secret, TASK_TOPIC, &[], "id-only")).await;
    // Redirects are failures: they are not followed.
    receiver.set_mode(Mode::Redirect("http://127.0.0.1:1/elsewhere".to_owned())).await;
    refer(&app, Party::Gp, Some(Party::Clw.ods()), "requested").await;

    let errored = wait_for_status(&app, Party::Gp, &id, "error").await;
    let reason = errored["error"].as_str().unwrap_or_default();
    assert!(reason.contains("event 1") && reason.contains("302"), "the error says what failed: {reason}");
    let attempts = receiver.deliveries().iter().filter(|d| d.status == 302).count();
    assert_eq!(attempts, 6, "the first attempt and one per delay of the schedule");

    let (_, stats) = send(&app, Party::Operator, Method::GET, "/$outbox-status", None, &[]).await;
    assert_eq!(parameter(&json!({"entry": [{"resource": stats.clone()}]}), "dead"), Some(json!(1)), "{stats}");
    let (status, _) = send(&app, Party::Gp, Method::GET, "/$outbox-status", None, &[]).await;
    assert_eq!(status, 403, "the outbox status is the operator's");

    // What was missed can be fetched...
    let (status, missed) =
        send(&app, Party::Gp, Method::GET, &format!("/Subscription/{id}/$events?eventsSinceNumber=1"), None, &[]).await;
    assert_eq!(status, 200, "{missed}");
    assert_eq!(events_of(&missed).len(), 1, "$events lists the undelivered event: {missed}");
    // ...or resent once the endpoint is fixed.
    receiver.set_mode(Mode::Accept).await;
    let (status, outcome) =
        send(&app, Party::Gp, Method::POST, &format!("/Subscription/{id}/$resend"), None, &[]).await;
    assert_eq!(status, 200, "{outcome}");
    wait_for_events(&receiver, 1).await;
    wait_for_status(&app, Party::Gp, &id, "active").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_answering_410_turns_the_subscription_off() {
    let app = spawn_webhook_app(Db::Sqlite).await.expect("sqlite");
    let receiver = WebhookReceiver::start().await;
    let id = subscribe(&app, Party::Gp, &subscription(&receiver.url(), &new_secret(), TASK_TOPIC, &[], "empty")).await;
    receiver.set_mode(Mode::Status(410)).await;
    refer(&app, Party::Gp, Some(Party::Clw.ods()), "requested").await;
    let off = wait_for_status(&app, Party::Gp, &id, "off").await;
    assert!(off["error"].as_str().unwrap_or_default().contains("410"), "{off}");
    let attempts = receiver.deliveries().iter().filter(|d| d.status == 410).count();
    assert_eq!(attempts, 1, "no retries after 410");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_keeps_failing_puts_the_subscription_in_error() {
    let app = spawn_webhook_app(Db::Sqlite).await.expect("sqlite");
    let receiver = WebhookReceiver::start().await;
    receiver.set_mode(Mode::Status(500)).await;
    let (status, created) =
        post_as(&app, Party::Gp, &subscription(&receiver.url(), &new_secret(), TASK_TOPIC, &[], "id-only"), &[]).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "requested", "a new subscription waits for its handshake");
    let errored = wait_for_status(&app, Party::Gp, &id_of(&created), "error").await;
    assert!(errored["error"].as_str().unwrap_or_default().contains("handshake"), "{errored}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_with_unsafe_or_unusable_settings_are_refused_and_the_secret_is_never_served() {
    let database = test_database(Db::Sqlite).await.expect("sqlite");
    let settings = test_settings(&database); // the operator has not allowed private endpoints
    let app = spawn_app_with(database, settings).await;
    let secret = new_secret();
    let cases: Vec<(&str, Value)> = vec![
        ("plain http", subscription("http://gp.example.org/hook", &secret, TASK_TOPIC, &[], "id-only")),
        ("loopback", subscription("https://127.0.0.1/hook", &secret, TASK_TOPIC, &[], "id-only")),
        ("metadata service", subscription("https://169.254.169.254/hook", &secret, TASK_TOPIC, &[], "id-only")),
        (
            "unknown topic",
            subscription("https://gp.example.org/hook", &secret, "https://x.example/topic", &[], "id-only"),
        ),
        (
            "filter on a parameter the topic lacks",
            subscription("https://gp.example.org/hook", &secret, TASK_TOPIC, &["Task?intent=order"], "id-only"),
        ),
        ("bad payload", subscription("https://gp.example.org/hook", &secret, TASK_TOPIC, &[], "everything")),
        ("short secret", subscription("https://gp.example.org/hook", "whsec_c2hvcnQ=", TASK_TOPIC, &[], "id-only")),
    ];
    for (case, resource) in cases {
        let (status, outcome) = post_as(&app, Party::Gp, &resource, &[]).await;
        assert_eq!(status, 422, "{case}: {outcome}");
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{case}");
    }
    let mut no_secret = subscription("https://gp.example.org/hook", &secret, CAREPLAN_TOPIC, &[], "id-only");
    no_secret["channel"].as_object_mut().expect("channel").remove("extension");
    let (status, outcome) = post_as(&app, Party::Gp, &no_secret, &[]).await;
    assert_eq!(status, 422, "a new subscription needs a secret: {outcome}");

    let (status, created) = post_as(
        &app,
        Party::Gp,
        &subscription("https://gp.example.org/hook", &secret, CAREPLAN_TOPIC, &[], "id-only"),
        &[],
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let path = format!("/Subscription/{}", id_of(&created));
    let (_, read) = send(&app, Party::Gp, Method::GET, &path, None, &[]).await;
    let (_, history) = send(&app, Party::Gp, Method::GET, &format!("{path}/_history"), None, &[]).await;
    for body in [created.to_string(), read.to_string(), history.to_string()] {
        assert!(!body.contains(&secret) && !body.contains(SECRET), "the secret is not served: {body}");
    }
    // The subscriber may turn it off, but not declare it active itself.
    let mut claims_active = read.clone();
    claims_active["status"] = json!("active");
    let (status, updated) = put_as(&app, Party::Gp, &path, &claims_active).await;
    assert_eq!(status, 200, "{updated}");
    assert_ne!(updated["status"], "active", "only a handshake makes a subscription active: {updated}");
    let mut off = updated.clone();
    off["status"] = json!("off");
    let (status, updated) = put_as(&app, Party::Gp, &path, &off).await;
    assert_eq!((status, updated["status"].clone()), (200, json!("off")), "{updated}");
}

on_both_databases!(
    each_referral_change_is_delivered_once_signed_and_numbered_in_order,
    a_receiver_that_is_down_for_a_while_receives_everything_when_it_recovers,
    a_rolled_back_transaction_notifies_nobody_and_leaves_no_gap_in_event_numbers,
    a_subscription_never_hears_of_another_organisations_referrals,
    an_event_that_exhausts_its_retries_is_kept_as_dead_and_a_resend_delivers_it,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gp_hears_of_the_link_workers_care_plan_and_of_heartbeats_while_quiet() {
    let app = spawn_webhook_app(Db::Sqlite).await.expect("sqlite");
    let receiver = WebhookReceiver::start().await;
    let secret = new_secret();
    let mut resource = subscription(&receiver.url(), &secret, CAREPLAN_TOPIC, &[], "full-resource");
    resource["channel"]["extension"].as_array_mut().expect("extensions").push(json!({
        "url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period",
        "valueUnsignedInt": 10
    }));
    let id = subscribe(&app, Party::Gp, &resource).await;
    let referral = refer(&app, Party::Gp, Some(Party::Clw.ods()), "requested").await;
    drive(&app, &referral.task_path(), &[(Party::Clw, "accepted")]).await;
    let plan = crate::fixtures::care_plan(&referral.service_request, &referral.patient, Party::Clw.ods());
    let (status, created) = post_as(&app, Party::Clw, &plan, &[]).await;
    assert_eq!(status, 201, "{created}");

    let received = wait_for_events(&receiver, 1).await;
    let notification = received[&1][0].json();
    assert_eq!(notification["entry"][1]["resource"]["resourceType"], "CarePlan");
    assert_eq!(notification["entry"][1]["resource"]["id"], created["id"]);

    // $events can give the same event with the resource, or without.
    let path = format!("/Subscription/{id}/$events?eventsSinceNumber=1&eventsUntilNumber=1&content=id-only");
    let (status, events) = send(&app, Party::Gp, Method::GET, &path, None, &[]).await;
    assert_eq!(status, 200, "{events}");
    assert_eq!(events_of(&events).len(), 1);
    assert!(events["entry"][1].get("resource").is_none(), "content=id-only leaves the resource out: {events}");
    let (status, _) = send(&app, Party::OtherGp, Method::GET, &path, None, &[]).await;
    assert_eq!(status, 404, "another practice cannot read this subscription's events");

    // Nothing more happens: a heartbeat follows within the period.
    let deadline = std::time::Instant::now() + Duration::from_secs(25);
    loop {
        let heartbeat = receiver.accepted().into_iter().find(|d| notification_type(d) == "heartbeat");
        if let Some(heartbeat) = heartbeat {
            verify_signature(&secret, &heartbeat).expect("heartbeats are signed");
            assert_eq!(parameter(&heartbeat.json(), "events-since-subscription-start"), Some(json!("1")));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no heartbeat within the period");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_endpoint_is_retried_no_sooner_than_its_retry_after() {
    let app = spawn_webhook_app(Db::Sqlite).await.expect("sqlite");
    let receiver = WebhookReceiver::start().await;
    subscribe(&app, Party::Gp, &subscription(&receiver.url(), &new_secret(), TASK_TOPIC, &[], "id-only")).await;
    receiver.set_mode(Mode::RetryAfter { status: 429, seconds: 2 }).await;
    refer(&app, Party::Gp, Some(Party::Clw.ods()), "requested").await;
    let deadline = std::time::Instant::now() + WAIT;
    while receiver.deliveries().iter().all(|d| d.status != 429) {
        assert!(std::time::Instant::now() < deadline, "the event was attempted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    receiver.set_mode(Mode::Accept).await;
    let received = wait_for_events(&receiver, 1).await;
    let refused = receiver.deliveries().into_iter().find(|d| d.status == 429).expect("the refused attempt");
    let waited = received[&1][0].received_at.duration_since(refused.received_at);
    // The schedule alone would retry after about 200 ms.
    assert!(waited >= Duration::from_millis(1900), "retried after {waited:?}, before Retry-After allowed");
}

// ---------------------------------------------------------------------------------------------
// Real processes: kills, restarts and two replicas.

/// The webhook settings of `webhook_settings`, as an operator passes them to a process.
fn webhook_env() -> Vec<(String, String)> {
    [
        ("LINKBRIDGE_ALLOW_PRIVATE_WEBHOOK_ENDPOINTS", "true"),
        ("LINKBRIDGE_DELIVERY_RETRY_SCHEDULE", "300ms,300ms,300ms,300ms,300ms,300ms,300ms,300ms,300ms,300ms"),
        ("LINKBRIDGE_DELIVERY_POLL_INTERVAL_MS", "100"),
        ("LINKBRIDGE_DELIVERY_LEASE_SECS", "3"),
        ("LINKBRIDGE_DELIVERY_TIMEOUT_SECS", "1"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Creates a subscription through `process` and waits until the handshake made it active.
async fn subscribe_through(process: &ServerProcess, http: &reqwest::Client, token: &str, resource: &Value) -> String {
    let (status, created) = process.send(http, token, Method::POST, "/Subscription", Some(resource), None).await;
    assert_eq!(status, 201, "subscription: {created}\n{}", process.logs());
    let id = id_of(&created);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, current) = process.send(http, token, Method::GET, &format!("/Subscription/{id}"), None, None).await;
        if current["status"] == "active" {
            return id;
        }
        assert!(std::time::Instant::now() < deadline, "never active: {current}\n{}", process.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A referral (one transaction Bundle: one new Task) sent through `process`.
async fn refer_through(process: &ServerProcess, http: &reqwest::Client, token: &str) -> String {
    let bundle = referral_transaction(&nhs_number(), Party::Gp.ods(), Some(Party::Clw.ods()));
    let (status, response) = process.send(http, token, Method::POST, "/", Some(&bundle), None).await;
    assert_eq!(status, 200, "referral through {}: {response}\n{}", process.address, process.logs());
    let (_, id) = crate::workflow::location_of(&response["entry"][crate::fixtures::TASK_ENTRY]);
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_between_commit_and_delivery_delivers_after_restart() {
    let database = test_database(Db::Sqlite).await.expect("sqlite");
    register_test_clients(&database.url).await;
    let options = ServerOptions { env: webhook_env(), ..ServerOptions::new(database.dir.path()) };
    let http = reqwest::Client::new();
    let receiver = WebhookReceiver::start().await;
    let secret = new_secret();

    let first = ServerProcess::start(&options).await;
    let token = first.token(&http, Party::Gp).await;
    let resource = subscription(&receiver.url(), &secret, TASK_TOPIC, &[], "id-only");
    subscribe_through(&first, &http, &token, &resource).await;
    receiver.go_down().await;
    let task = refer_through(&first, &http, &token).await;
    // The referral is committed; its notification cannot have reached anyone. kill -9.
    drop(first);

    receiver.come_back().await;
    let second = ServerProcess::start(&options).await;
    let received = wait_for_events(&receiver, 1).await;
    assert_eq!(received[&1].len(), 1, "delivered once after the restart\n{}", second.logs());
    let focus = events_of(&received[&1][0].json())[0].1.clone().expect("focus");
    assert!(focus.contains(&format!("/Task/{task}/")), "{focus}");
    verify_signature(&secret, &received[&1][0]).expect("signed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_postgresql_deliver_every_event_exactly_once_between_them() {
    let Some(database) = test_database(Db::Postgres).await else { return };
    register_test_clients(&database.url).await;
    let DatabaseUrl::Postgres(url) = &database.url else { panic!("a PostgreSQL URL") };
    let options = ServerOptions {
        database_url: Some(url.clone()),
        public_base_url: Some("http://linkbridge.replicas.test".to_owned()),
        env: webhook_env(),
        ..ServerOptions::new(database.dir.path())
    };
    let a = ServerProcess::start(&options).await;
    let b = ServerProcess::start(&options).await;
    let http = reqwest::Client::new();
    let (token_a, token_b) = (a.token(&http, Party::Gp).await, b.token(&http, Party::Gp).await);
    let receiver = WebhookReceiver::start().await;
    let secret = new_secret();
    subscribe_through(&a, &http, &token_a, &subscription(&receiver.url(), &secret, TASK_TOPIC, &[], "id-only")).await;

    // Referrals through both replicas at once; both workers race for the notifications.
    const REFERRALS: usize = 24;
    let sends = (0..REFERRALS).map(|i| {
        let (process, token) = if i % 2 == 0 { (&a, &token_a) } else { (&b, &token_b) };
        refer_through(process, &http, token)
    });
    let tasks: BTreeSet<String> = futures::future::join_all(sends).await.into_iter().collect();
    let received = wait_for_events(&receiver, REFERRALS as i64).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let received_later = events_received(&receiver);
    assert_eq!(received_later.len(), REFERRALS, "no event numbers beyond the referrals: {:?}", received_later.keys());
    for (number, deliveries) in &received_later {
        assert_eq!(
            deliveries.len(),
            1,
            "event {number} delivered once, not by both replicas\nA:\n{}\nB:\n{}",
            a.logs(),
            b.logs()
        );
        verify_signature(&secret, &deliveries[0]).expect("signed");
    }
    let focused: BTreeSet<String> = received
        .values()
        .flatten()
        .filter_map(|d| events_of(&d.json())[0].1.clone())
        .filter_map(|focus| focus.split("/Task/").nth(1).and_then(|rest| rest.split('/').next()).map(str::to_owned))
        .collect();
    assert_eq!(focused, tasks, "every referral's Task was announced");
}
