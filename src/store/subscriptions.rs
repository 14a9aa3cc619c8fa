//! Subscriptions and the transactional outbox: which subscriptions listen to a topic, claiming
//! due notifications with a lease, recording how a delivery went (fenced by the claim's
//! token), and what the operator and `$events` see.
//!
//! Claims differ by backend. PostgreSQL: one `UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP
//! LOCKED)`, so replicas claiming at once take disjoint rows without waiting for each other.
//! SQLite: the same statement through the single writer (one writer per database, so claims
//! are serial anyway). Every outcome is written with `lease_token = <the claim's token>`: a
//! replica whose lease lapsed and was taken over finds its late outcome refused.

use sqlx::any::AnyRow;
use sqlx::AnyConnection;
use sqlx::Row;

use super::write_set::OutboxKind;
use super::{BackendKind, Store, StoreError};
use crate::domain::instant::Instant;

/// A subscription as delivery sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRow {
    pub id: String,
    pub organization: String,
    pub role: String,
    pub topic: String,
    pub filters: Vec<String>,
    pub endpoint: String,
    pub payload: String,
    pub headers: Vec<(String, String)>,
    pub heartbeat_secs: Option<i64>,
    pub secret: String,
    pub status: String,
    pub error: Option<String>,
    pub events_since_start: i64,
    pub last_sent_at: Option<i64>,
}

/// One outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: String,
    pub subscription_id: String,
    pub kind: OutboxKind,
    pub event_number: Option<i64>,
    pub focus_type: Option<String>,
    pub focus_id: Option<String>,
    pub focus_version: Option<i64>,
    pub created_at: Instant,
    pub state: String,
    /// Attempts so far, this claim's included.
    pub attempts: i64,
    pub last_error: Option<String>,
}

/// A claimed notification: the row and the token that proves the claim.
#[derive(Debug, Clone)]
pub struct ClaimedEvent {
    pub event: OutboxRow,
    pub lease_token: String,
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The endpoint answered 2xx.
    Delivered { status: u16 },
    /// Try again at `next_attempt_at`.
    Retry { next_attempt_at: Instant, status: Option<u16>, error: String },
    /// The last attempt failed: kept as dead, to be resent on request.
    Dead { status: Option<u16>, error: String },
    /// Not delivered and not counted as failed (the subscription was turned off meanwhile).
    Released,
}

/// What the operator watches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub pending: i64,
    pub delivered: i64,
    pub dead: i64,
    /// Creation instant of the oldest notification still pending.
    pub oldest_pending: Option<Instant>,
    pub attempts: i64,
    pub failures: i64,
}

/// The outbox's undelivered notifications, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxBacklog {
    pub pending: i64,
    pub dead: i64,
    /// Creation instant of the oldest notification still pending.
    pub oldest_pending: Option<Instant>,
    /// Failed delivery attempts of the pending and dead notifications.
    pub failures: i64,
}

const SUBSCRIPTION_COLUMNS: &str =
    "id, organization, role, topic, filters, endpoint, payload, headers, heartbeat_secs, \
                                    secret, status, error, events_since_start, last_sent_at";

/// A notification is due (with `$1` = now): pending, its time has come, not under a live
/// claim, and its subscription wants it (events when active, the handshake when requested).
const DUE: &str = "o.state = 'pending' AND o.next_attempt_at <= $1 AND (o.lease_until IS NULL OR o.lease_until < $1) \
                   AND s.deleted = 0 AND ((o.kind = 'event-notification' AND s.status = 'active') \
                   OR (o.kind = 'handshake' AND s.status = 'requested'))";

const OUTBOX_COLUMNS: &str = "id, subscription_id, kind, event_number, focus_type, focus_id, focus_version, \
                              created_at, state, attempts, last_error";

fn decode_json<T: serde::de::DeserializeOwned>(raw: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::Internal(format!("stored {what} are not valid: {e}")))
}

fn subscription_from_row(row: &AnyRow) -> Result<SubscriptionRow, StoreError> {
    Ok(SubscriptionRow {
        id: row.try_get("id")?,
        organization: row.try_get("organization")?,
        role: row.try_get("role")?,
        topic: row.try_get("topic")?,
        filters: decode_json(&row.try_get::<String, _>("filters")?, "filters")?,
        endpoint: row.try_get("endpoint")?,
        payload: row.try_get("payload")?,
        headers: decode_json(&row.try_get::<String, _>("headers")?, "headers")?,
        heartbeat_secs: row.try_get("heartbeat_secs")?,
        secret: row.try_get("secret")?,
        status: row.try_get("status")?,
        error: row.try_get("error")?,
        events_since_start: row.try_get("events_since_start")?,
        last_sent_at: row.try_get("last_sent_at")?,
    })
}

fn outbox_from_row(row: &AnyRow) -> Result<OutboxRow, StoreError> {
    Ok(OutboxRow {
        id: row.try_get("id")?,
        subscription_id: row.try_get("subscription_id")?,
        kind: OutboxKind::from_stored(&row.try_get::<String, _>("kind")?),
        event_number: row.try_get("event_number")?,
        focus_type: row.try_get("focus_type")?,
        focus_id: row.try_get("focus_id")?,
        focus_version: row.try_get("focus_version")?,
        created_at: Instant::from_micros(row.try_get("created_at")?),
        state: row.try_get("state")?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
    })
}

impl Store {
    pub async fn subscription(&self, id: &str) -> Result<Option<SubscriptionRow>, StoreError> {
        let row =
            sqlx::query(&format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = $1 AND deleted = 0"))
                .bind(id)
                .fetch_optional(&mut *self.reader().await?)
                .await?;
        row.as_ref().map(subscription_from_row).transpose()
    }

    /// Whether any notification is due: a cheap read on the reader pool, so that an idle
    /// replica's poll does not queue a write.
    pub async fn has_due_notifications(&self, now: Instant) -> Result<bool, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT 1 FROM outbox_events o JOIN subscriptions s ON s.id = o.subscription_id WHERE {DUE} LIMIT 1"
        ))
        .bind(now.micros())
        .fetch_optional(&mut *self.reader().await?)
        .await?;
        Ok(row.is_some())
    }

    /// Claims up to `limit` due notifications for `lease`: handshakes of requested
    /// subscriptions and events of active ones, oldest due first. Unclaimed rows, and rows
    /// whose lease has lapsed (a replica died holding them), are due.
    pub async fn claim_due_notifications(
        &self,
        now: Instant,
        lease: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<ClaimedEvent>, StoreError> {
        let token = uuid::Uuid::new_v4().to_string();
        let lease_until = now.micros().saturating_add(i64::try_from(lease.as_micros()).unwrap_or(i64::MAX));
        let skip_locked = match self.kind() {
            BackendKind::Postgres => "FOR UPDATE OF o SKIP LOCKED",
            BackendKind::Sqlite => "",
        };
        let due = DUE.replace("$1", "$3");
        let sql = format!(
            "UPDATE outbox_events SET lease_token = $1, lease_until = $2, attempts = attempts + 1 \
             WHERE id IN (SELECT o.id FROM outbox_events o JOIN subscriptions s ON s.id = o.subscription_id \
             WHERE {due} ORDER BY o.next_attempt_at LIMIT $4 {skip_locked}) \
             RETURNING {OUTBOX_COLUMNS}"
        );
        let claim_token = token.clone();
        let rows = self
            .in_write_transaction(move |conn| {
                Box::pin(async move {
                    let rows = sqlx::query(&sql)
                        .bind(claim_token)
                        .bind(lease_until)
                        .bind(now.micros())
                        .bind(i64::from(limit))
                        .fetch_all(&mut *conn)
                        .await?;
                    rows.iter().map(outbox_from_row).collect::<Result<Vec<_>, _>>()
                })
            })
            .await?;
        Ok(rows.into_iter().map(|event| ClaimedEvent { event, lease_token: token.clone() }).collect())
    }

    /// Records how a claimed delivery went, if the claim still holds. Returns false when the
    /// lease had lapsed and another replica took the row over (its outcome wins).
    pub async fn finish_delivery(
        &self,
        claim: &ClaimedEvent,
        outcome: DeliveryOutcome,
        now: Instant,
    ) -> Result<bool, StoreError> {
        let id = claim.event.id.clone();
        let token = claim.lease_token.clone();
        let subscription_id = claim.event.subscription_id.clone();
        self.in_write_transaction(move |conn| {
            Box::pin(async move {
                let held = record_delivery_outcome(conn, &id, &token, &outcome, now).await?;
                if held {
                    pace_subscription_after(conn, &subscription_id, &outcome, now).await?;
                }
                Ok(held)
            })
        })
        .await
    }

    /// Puts a subscription's dead event notifications back in line (resend), due now. Returns
    /// how many. A dead handshake is not resent: asking for `requested` again makes a new one.
    pub async fn resend_dead_notifications(&self, subscription_id: &str, now: Instant) -> Result<u64, StoreError> {
        let subscription_id = subscription_id.to_owned();
        self.in_write_transaction(move |conn| {
            Box::pin(async move {
                let result = sqlx::query(
                    "UPDATE outbox_events SET state = 'pending', attempts = 0, next_attempt_at = $2, \
                     lease_token = NULL, lease_until = NULL \
                     WHERE subscription_id = $1 AND state = 'dead' AND kind = 'event-notification'",
                )
                .bind(subscription_id.as_str())
                .bind(now.micros())
                .execute(&mut *conn)
                .await?;
                // Events held back behind a failing one are due again too.
                sqlx::query(
                    "UPDATE outbox_events SET next_attempt_at = $2 WHERE subscription_id = $1 AND state = 'pending' \
                     AND lease_token IS NULL",
                )
                .bind(subscription_id.as_str())
                .bind(now.micros())
                .execute(&mut *conn)
                .await?;
                Ok(result.rows_affected())
            })
        })
        .await
    }

    /// Active subscriptions with a heartbeat period that nothing has reached within it.
    pub async fn subscriptions_due_heartbeat(&self, now: Instant) -> Result<Vec<SubscriptionRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE status = 'active' AND deleted = 0 \
             AND heartbeat_secs IS NOT NULL AND COALESCE(last_sent_at, 0) + heartbeat_secs * 1000000 <= $1"
        ))
        .bind(now.micros())
        .fetch_all(&mut *self.reader().await?)
        .await?;
        rows.iter().map(subscription_from_row).collect()
    }

    /// Takes the turn to send a heartbeat: succeeds for one replica only (compare and set on
    /// the last-sent instant read with the subscription).
    pub async fn claim_heartbeat(&self, subscription: &SubscriptionRow, now: Instant) -> Result<bool, StoreError> {
        let id = subscription.id.clone();
        let seen = subscription.last_sent_at.unwrap_or(0);
        self.in_write_transaction(move |conn| {
            Box::pin(async move {
                let result = sqlx::query(
                    "UPDATE subscriptions SET last_sent_at = $3 WHERE id = $1 AND COALESCE(last_sent_at, 0) = $2",
                )
                .bind(id.as_str())
                .bind(seen)
                .bind(now.micros())
                .execute(&mut *conn)
                .await?;
                Ok(result.rows_affected() == 1)
            })
        })
        .await
    }

    /// A subscription's event notifications with numbers in `[since, until]`, in order.
    pub async fn notification_events(
        &self,
        subscription_id: &str,
        since: i64,
        until: i64,
        limit: u32,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {OUTBOX_COLUMNS} FROM outbox_events WHERE subscription_id = $1 AND kind = 'event-notification' \
             AND event_number >= $2 AND event_number <= $3 ORDER BY event_number LIMIT $4"
        ))
        .bind(subscription_id)
        .bind(since)
        .bind(until)
        .bind(i64::from(limit))
        .fetch_all(&mut *self.reader().await?)
        .await?;
        rows.iter().map(outbox_from_row).collect()
    }

    /// The undelivered notifications (pending and dead): how many, the oldest pending one,
    /// and their failed attempts. Read through the outbox's index on `state`, so that a
    /// scrape costs the backlog and not the history: the outbox keeps every delivered
    /// notification (a subscription's `$events`), and [`Store::outbox_stats`] sums them all.
    pub async fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError> {
        let rows = sqlx::query(
            "SELECT state, CAST(COUNT(*) AS BIGINT), MIN(created_at), CAST(COALESCE(SUM(failures), 0) AS BIGINT) \
             FROM outbox_events WHERE state IN ('pending', 'dead') GROUP BY state",
        )
        .fetch_all(&mut *self.reader().await?)
        .await?;
        let mut backlog = OutboxBacklog::default();
        for row in &rows {
            let state: String = row.try_get(0)?;
            let count: i64 = row.try_get(1)?;
            backlog.failures += row.try_get::<i64, _>(3)?;
            if state == "pending" {
                backlog.pending = count;
                backlog.oldest_pending = row.try_get::<Option<i64>, _>(2)?.map(Instant::from_micros);
            } else {
                backlog.dead = count;
            }
        }
        Ok(backlog)
    }

    /// Every notification's counts (the operator's `$outbox-status`, or one subscription's
    /// `$status`): a pass over all of them, delivered ones included.
    pub async fn outbox_stats(&self, subscription_id: Option<&str>) -> Result<OutboxStats, StoreError> {
        let row = sqlx::query(
            "SELECT \
             CAST(COALESCE(SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END), 0) AS BIGINT) AS pending, \
             CAST(COALESCE(SUM(CASE WHEN state = 'delivered' THEN 1 ELSE 0 END), 0) AS BIGINT) AS delivered, \
             CAST(COALESCE(SUM(CASE WHEN state = 'dead' THEN 1 ELSE 0 END), 0) AS BIGINT) AS dead, \
             MIN(CASE WHEN state = 'pending' THEN created_at END) AS oldest_pending, \
             CAST(COALESCE(SUM(attempts), 0) AS BIGINT) AS attempts, \
             CAST(COALESCE(SUM(failures), 0) AS BIGINT) AS failures \
             FROM outbox_events WHERE ($1 = '' OR subscription_id = $1)",
        )
        .bind(subscription_id.unwrap_or(""))
        .fetch_one(&mut *self.reader().await?)
        .await?;
        Ok(OutboxStats {
            pending: row.try_get("pending")?,
            delivered: row.try_get("delivered")?,
            dead: row.try_get("dead")?,
            oldest_pending: row.try_get::<Option<i64>, _>("oldest_pending")?.map(Instant::from_micros),
            attempts: row.try_get("attempts")?,
            failures: row.try_get("failures")?,
        })
    }
}

/// Runs `begin` (the statement that opens the writer's transaction) and reads the live
/// subscriptions of every topic that still record events (active, or in error and waiting for
/// a resend) in the transaction it opens: one round trip for both (see `store::events`).
/// Neither statement takes a value, so both go in one message. Should the read fail after the
/// transaction began, the caller rolls it back.
pub(super) async fn begin_reading_live_subscriptions(
    conn: &mut AnyConnection,
    begin: &str,
) -> Result<Vec<SubscriptionRow>, StoreError> {
    let statements = format!(
        "{begin}; SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE status IN ('active', 'error') AND deleted = 0"
    );
    let rows = sqlx::Executor::fetch_all(&mut *conn, statements.as_str()).await?;
    rows.iter().map(subscription_from_row).collect()
}

/// Records how a claimed delivery went, fenced by its lease (`WHERE id = $1 AND lease_token =
/// $2`): whether the lease still held.
async fn record_delivery_outcome(
    conn: &mut AnyConnection,
    id: &str,
    token: &str,
    outcome: &DeliveryOutcome,
    now: Instant,
) -> Result<bool, sqlx::Error> {
    let result = match outcome {
        DeliveryOutcome::Delivered { status } => {
            sqlx::query(
                "UPDATE outbox_events SET state = 'delivered', delivered_at = $3, last_status = $4, \
                 lease_token = NULL, lease_until = NULL WHERE id = $1 AND lease_token = $2",
            )
            .bind(id)
            .bind(token)
            .bind(now.micros())
            .bind(i64::from(*status))
            .execute(&mut *conn)
            .await?
        }
        DeliveryOutcome::Retry { next_attempt_at, status, error } => {
            sqlx::query(
                "UPDATE outbox_events SET next_attempt_at = $3, last_status = $4, last_error = $5, \
                 failures = failures + 1, lease_token = NULL, lease_until = NULL \
                 WHERE id = $1 AND lease_token = $2",
            )
            .bind(id)
            .bind(token)
            .bind(next_attempt_at.micros())
            .bind(status.map(i64::from))
            .bind(error.as_str())
            .execute(&mut *conn)
            .await?
        }
        DeliveryOutcome::Dead { status, error } => {
            sqlx::query(
                "UPDATE outbox_events SET state = 'dead', last_status = $3, last_error = $4, \
                 failures = failures + 1, lease_token = NULL, lease_until = NULL \
                 WHERE id = $1 AND lease_token = $2",
            )
            .bind(id)
            .bind(token)
            .bind(status.map(i64::from))
            .bind(error.as_str())
            .execute(&mut *conn)
            .await?
        }
        DeliveryOutcome::Released => {
            sqlx::query(
                "UPDATE outbox_events SET attempts = attempts - 1, lease_token = NULL, lease_until = NULL \
                 WHERE id = $1 AND lease_token = $2",
            )
            .bind(id)
            .bind(token)
            .execute(&mut *conn)
            .await?
        }
    };
    Ok(result.rows_affected() == 1)
}

/// After a delivery whose lease held, paces the subscription's other pending events by how it
/// went.
async fn pace_subscription_after(
    conn: &mut AnyConnection,
    subscription_id: &str,
    outcome: &DeliveryOutcome,
    now: Instant,
) -> Result<(), sqlx::Error> {
    match outcome {
        DeliveryOutcome::Delivered { .. } => {
            sqlx::query(
                "UPDATE subscriptions SET last_sent_at = $2 WHERE id = $1 \
                 AND COALESCE(last_sent_at, 0) < $2",
            )
            .bind(subscription_id)
            .bind(now.micros())
            .execute(&mut *conn)
            .await?;
            // The endpoint answers again: the events held back while it failed
            // (see `Retry` below) are due at once rather than at their backoff,
            // oldest first (each as when it was queued), so that a backlog
            // flows as soon as the endpoint is back. An endpoint that stays
            // down never gets here and keeps its backoff. Found through
            // `outbox_due`: only notifications pending in the future are read.
            sqlx::query(
                "UPDATE outbox_events SET next_attempt_at = created_at WHERE subscription_id = $1 \
                 AND state = 'pending' AND next_attempt_at > $2 AND lease_token IS NULL",
            )
            .bind(subscription_id)
            .bind(now.micros())
            .execute(&mut *conn)
            .await?;
        }
        // The endpoint is failing: the subscription's other pending events wait
        // as long as this one, rather than each hammering it on its own.
        DeliveryOutcome::Retry { next_attempt_at, .. } => {
            sqlx::query(
                "UPDATE outbox_events SET next_attempt_at = $2 WHERE subscription_id = $1 \
                 AND state = 'pending' AND next_attempt_at < $2 AND lease_token IS NULL",
            )
            .bind(subscription_id)
            .bind(next_attempt_at.micros())
            .execute(&mut *conn)
            .await?;
        }
        DeliveryOutcome::Dead { .. } | DeliveryOutcome::Released => {}
    }
    Ok(())
}
