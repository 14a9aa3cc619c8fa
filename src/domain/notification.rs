//! The notification Bundles of the Subscriptions Backport IG on R4: a `history` Bundle whose
//! first entry is a `Parameters` resource (profile `backport-subscription-status-r4`) telling
//! the subscription, topic, status, type and events; then, for `full-resource`, the focus
//! resources. Pure: the caller supplies ids, instants and bodies.

use serde_json::{json, Value};

use super::instant::Instant;
use super::subscriptions::{backport, PayloadContent, SubscriptionStatus, Topic};

/// `type` of a notification (R5 `subscription-notification-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationType {
    Handshake,
    Heartbeat,
    EventNotification,
    QueryStatus,
    QueryEvent,
}

impl NotificationType {
    pub fn code(self) -> &'static str {
        match self {
            NotificationType::Handshake => "handshake",
            NotificationType::Heartbeat => "heartbeat",
            NotificationType::EventNotification => "event-notification",
            NotificationType::QueryStatus => "query-status",
            NotificationType::QueryEvent => "query-event",
        }
    }
}

/// The version of a resource an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Focus {
    pub resource_type: String,
    pub id: String,
    pub version: i64,
}

/// One event of a subscription.
#[derive(Debug, Clone)]
pub struct NotificationEvent {
    pub number: i64,
    pub timestamp: Instant,
    pub focus: Option<Focus>,
    /// The focus version's body, for `full-resource` payloads (None when deleted).
    pub resource: Option<Value>,
}

/// The subscription as the status parameters describe it.
#[derive(Debug, Clone)]
pub struct SubscriptionSnapshot {
    pub id: String,
    pub topic: Topic,
    pub status: SubscriptionStatus,
    pub events_since_start: i64,
    pub error: Option<String>,
}

/// Builds a notification Bundle. `payload` decides how much of each event's focus is told.
pub fn notification_bundle(
    base_url: &str,
    bundle_id: &str,
    now: &Instant,
    kind: NotificationType,
    subscription: &SubscriptionSnapshot,
    events: &[NotificationEvent],
    payload: PayloadContent,
) -> Value {
    let subscription_url = format!("{base_url}/Subscription/{}", subscription.id);
    let mut parameters = vec![
        json!({"name": "subscription", "valueReference": {"reference": subscription_url}}),
        json!({"name": "topic", "valueCanonical": subscription.topic.url()}),
        json!({"name": "status", "valueCode": subscription.status.code()}),
        json!({"name": "type", "valueCode": kind.code()}),
        json!({"name": "events-since-subscription-start", "valueString": subscription.events_since_start.to_string()}),
    ];
    for event in events {
        let mut parts = vec![
            json!({"name": "event-number", "valueString": event.number.to_string()}),
            json!({"name": "timestamp", "valueInstant": event.timestamp.to_fhir()}),
        ];
        if let (Some(focus), false) = (&event.focus, payload == PayloadContent::Empty) {
            parts.push(json!({"name": "focus", "valueReference": {
                "reference": format!("{base_url}/{}/{}/_history/{}", focus.resource_type, focus.id, focus.version)
            }}));
        }
        parameters.push(json!({"name": "notification-event", "part": parts}));
    }
    if let Some(error) = &subscription.error {
        parameters.push(json!({"name": "error", "valueCodeableConcept": {"text": error}}));
    }
    let status_entry = json!({
        "fullUrl": format!("urn:uuid:{bundle_id}-status"),
        "resource": {
            "resourceType": "Parameters",
            "meta": {"profile": [backport::STATUS_PROFILE]},
            "parameter": parameters
        },
        "request": {"method": "GET", "url": format!("{subscription_url}/$status")},
        "response": {"status": "200"}
    });
    let mut entries = vec![status_entry];
    if payload != PayloadContent::Empty {
        for event in events {
            let Some(focus) = &event.focus else { continue };
            let full_url = format!("{base_url}/{}/{}", focus.resource_type, focus.id);
            let mut entry = json!({
                "fullUrl": full_url,
                "request": {"method": if focus.version == 1 { "POST" } else { "PUT" }, "url": format!("{}/{}", focus.resource_type, focus.id)},
                "response": {"status": if focus.version == 1 { "201" } else { "200" }}
            });
            if payload == PayloadContent::FullResource {
                match &event.resource {
                    Some(resource) => entry["resource"] = resource.clone(),
                    None => {
                        entry["request"]["method"] = json!("DELETE");
                        entry["response"]["status"] = json!("204");
                    }
                }
            }
            entries.push(entry);
        }
    }
    json!({
        "resourceType": "Bundle",
        "id": bundle_id,
        "meta": {"lastUpdated": now.to_fhir()},
        "type": "history",
        "timestamp": now.to_fhir(),
        "entry": entries
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> SubscriptionSnapshot {
        SubscriptionSnapshot {
            id: "sub1".into(),
            topic: Topic::ReferralTask,
            status: SubscriptionStatus::Active,
            events_since_start: 7,
            error: None,
        }
    }

    fn event() -> NotificationEvent {
        NotificationEvent {
            number: 7,
            timestamp: Instant::now(),
            focus: Some(Focus { resource_type: "Task".into(), id: "t1".into(), version: 2 }),
            resource: Some(json!({"resourceType": "Task", "id": "t1"})),
        }
    }

    fn parameter<'a>(bundle: &'a Value, name: &str) -> Vec<&'a Value> {
        bundle["entry"][0]["resource"]["parameter"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter(|p| p["name"] == name)
            .collect()
    }

    #[test]
    fn an_id_only_notification_names_the_focus_version_but_carries_no_resource() {
        let bundle = notification_bundle(
            "https://lb",
            "b1",
            &Instant::now(),
            NotificationType::EventNotification,
            &snapshot(),
            &[event()],
            PayloadContent::IdOnly,
        );
        assert_eq!(bundle["type"], "history");
        assert_eq!(parameter(&bundle, "type")[0]["valueCode"], "event-notification");
        assert_eq!(parameter(&bundle, "events-since-subscription-start")[0]["valueString"], "7");
        let event = parameter(&bundle, "notification-event")[0];
        assert_eq!(event["part"][0]["valueString"], "7");
        assert_eq!(event["part"][2]["valueReference"]["reference"], "https://lb/Task/t1/_history/2");
        assert_eq!(bundle["entry"][1]["fullUrl"], "https://lb/Task/t1");
        assert!(bundle["entry"][1].get("resource").is_none());
    }

    #[test]
    fn a_full_resource_notification_carries_the_resource_and_an_empty_one_no_focus() {
        let full = notification_bundle(
            "https://lb",
            "b1",
            &Instant::now(),
            NotificationType::EventNotification,
            &snapshot(),
            &[event()],
            PayloadContent::FullResource,
        );
        assert_eq!(full["entry"][1]["resource"]["id"], "t1");
        let empty = notification_bundle(
            "https://lb",
            "b1",
            &Instant::now(),
            NotificationType::EventNotification,
            &snapshot(),
            &[event()],
            PayloadContent::Empty,
        );
        assert_eq!(empty["entry"].as_array().map(Vec::len), Some(1));
        assert_eq!(parameter(&empty, "notification-event")[0]["part"].as_array().map(Vec::len), Some(2));
    }
}
