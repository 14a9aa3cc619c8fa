//! The events of the transactional outbox: which live subscriptions each change of a batch is
//! news for. The writer decides it for the whole batch just before applying it: one read of
//! the subscriptions per batch instead of one per request (one statement in four of a
//! referral submission's reads), and against the subscriptions as they stand when the change
//! commits rather than when its request planned it.

use sqlx::AnyConnection;

use super::subscriptions::live_subscriptions;
use super::write_set::{OutboxEntry, OutboxKind, WriteSet};
use super::StoreError;
use crate::domain::ids::ResourceId;
use crate::domain::subscriptions::{Listener, Topic};

/// Adds to each write set a notification for every live subscription one of its resource
/// writes is news for. Reads the subscriptions only if some write is of a topic's type.
pub(super) async fn add_events(conn: &mut AnyConnection, write_sets: Vec<&mut WriteSet>) -> Result<(), StoreError> {
    let topical = |ws: &WriteSet| ws.resources.iter().any(|w| Topic::of(w.resource_type).is_some());
    if !write_sets.iter().any(|ws| topical(ws)) {
        return Ok(());
    }
    let listeners: Vec<(ResourceId, Listener)> = live_subscriptions(conn)
        .await?
        .into_iter()
        .filter_map(|row| {
            let id = ResourceId::parse(&row.id).ok()?;
            Some((id, Listener::parse(&row.topic, &row.filters, &row.organization, &row.role)?))
        })
        .collect();
    if listeners.is_empty() {
        return Ok(());
    }
    for write_set in write_sets {
        let events = events_of(write_set, &listeners);
        write_set.notifications.extend(events);
    }
    Ok(())
}

/// The events of one write set's resource writes.
fn events_of(write_set: &WriteSet, listeners: &[(ResourceId, Listener)]) -> Vec<OutboxEntry> {
    let mut events = Vec::new();
    for write in write_set.resources.iter().filter(|w| Topic::of(w.resource_type).is_some()) {
        let deleted = write.body.is_empty();
        let (index, visibility) = if deleted {
            let deleted_content =
                write_set.deleted_contents.iter().find(|c| c.resource_type == write.resource_type && c.id == write.id);
            let Some(content) = deleted_content else { continue };
            (content.index.as_slice(), content.visibility.clone())
        } else {
            (write.index.as_slice(), write.visibility.iter().chain(&write.visibility_grants).cloned().collect())
        };
        for (subscription_id, listener) in listeners {
            if listener.hears(write.resource_type, deleted, index, &visibility) {
                events.push(OutboxEntry {
                    id: uuid::Uuid::new_v4().to_string(),
                    subscription_id: subscription_id.clone(),
                    kind: OutboxKind::Event,
                    focus: Some((write.resource_type, write.id.clone(), write.version)),
                    created_at: write.last_updated,
                });
            }
        }
    }
    events
}
