//! The events of the transactional outbox: which live subscriptions each change of a batch is
//! news for. The writer decides it for the whole batch as it begins the batch's transaction,
//! reading the subscriptions in the same round trip as its `BEGIN`: one read per batch instead
//! of one per request (one statement in four of a referral submission's reads), and against
//! the subscriptions as they stand when the change commits rather than when its request
//! planned it.

use super::subscriptions::SubscriptionRow;
use super::write_set::{OutboxEntry, OutboxKind, WriteSet};
use crate::domain::ids::ResourceId;
use crate::domain::subscriptions::{Listener, Topic};

/// Whether some write of the write sets is of a topic's type: only then are the subscriptions
/// read.
pub(super) fn any_topical<'w>(mut write_sets: impl Iterator<Item = &'w WriteSet>) -> bool {
    write_sets.any(|ws| ws.resources.iter().any(|w| Topic::of(w.resource_type).is_some()))
}

/// Adds to each write set a notification for every one of the live `subscriptions` one of its
/// resource writes is news for.
pub(super) fn add_events<'w>(subscriptions: &[SubscriptionRow], write_sets: impl Iterator<Item = &'w mut WriteSet>) {
    let listeners: Vec<(ResourceId, Listener)> = subscriptions
        .iter()
        .filter_map(|row| {
            let id = ResourceId::parse(&row.id).ok()?;
            Some((id, Listener::parse(&row.topic, &row.filters, &row.organization, &row.role)?))
        })
        .collect();
    if listeners.is_empty() {
        return;
    }
    for write_set in write_sets {
        let events = events_of(write_set, &listeners);
        write_set.notifications.extend(events);
    }
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
