//! Applies a [`WriteSet`] inside a transaction the caller owns. Shared by both backends.

use std::time::Duration;

use sqlx::any::AnyArguments;
use sqlx::{AnyConnection, Arguments};

use super::write_set::{
    ConditionalClaim, OutboxEntry, OutboxKind, Precondition, ResourceWrite, SubscriptionChange, WriteSet,
};
use super::StoreError;
use crate::domain::audit::AuditRecord;
use crate::domain::instant::Instant;
use crate::domain::search_params::IndexEntry;

pub(super) async fn apply_write_set(
    conn: &mut AnyConnection,
    write_set: &WriteSet,
    settle_window: Duration,
) -> Result<(), StoreError> {
    for write in &write_set.resources {
        apply_resource_write(conn, write, settle_window).await?;
    }
    for claim in &write_set.conditional_claims {
        apply_claim(conn, claim).await?;
    }
    insert_audit_rows(conn, &write_set.audit.iter().collect::<Vec<_>>()).await?;
    if let Some(request) = &write_set.request {
        let inserted = sqlx::query(
            "INSERT INTO request_ids (client_id, request_id, body_hash, outcome, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(request.client_id.as_str())
        .bind(request.request_id.as_str())
        .bind(request.body_hash.as_str())
        .bind(request.outcome.as_str())
        .bind(crate::domain::instant::Instant::now().micros())
        .execute(&mut *conn)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(StoreError::DuplicateRequest),
            Err(e) => return Err(e.into()),
        }
    }
    for revoked in &write_set.revocations {
        sqlx::query("DELETE FROM resource_visibility WHERE resource_type = $1 AND id = $2 AND visibility_key = $3")
            .bind(revoked.resource_type.as_str())
            .bind(revoked.id.as_str())
            .bind(revoked.key.as_str())
            .execute(&mut *conn)
            .await?;
    }
    for grant in &write_set.grants {
        sqlx::query(
            "INSERT INTO resource_visibility (resource_type, id, visibility_key, source) VALUES ($1, $2, $3, 'grant') \
             ON CONFLICT DO NOTHING",
        )
        .bind(grant.resource_type.as_str())
        .bind(grant.id.as_str())
        .bind(grant.key.as_str())
        .execute(&mut *conn)
        .await?;
    }
    for change in &write_set.subscription_changes {
        apply_subscription_change(conn, change).await?;
    }
    // In subscription order, so that transactions notifying several subscriptions lock their
    // counters in one order and cannot deadlock one another on PostgreSQL.
    let mut notifications: Vec<&OutboxEntry> = write_set.notifications.iter().collect();
    notifications.sort_by(|a, b| a.subscription_id.as_str().cmp(b.subscription_id.as_str()));
    for entry in notifications {
        insert_outbox_entry(conn, entry).await?;
    }
    Ok(())
}

async fn apply_subscription_change(conn: &mut AnyConnection, change: &SubscriptionChange) -> Result<(), StoreError> {
    match change {
        SubscriptionChange::Save(record) => {
            let filters = serde_json::to_string(&record.filters)
                .map_err(|e| StoreError::Config(format!("cannot encode filters: {e}")))?;
            let headers = serde_json::to_string(&record.headers)
                .map_err(|e| StoreError::Config(format!("cannot encode headers: {e}")))?;
            // The secret only comes with a create or a rotation; an update without one keeps
            // the stored secret (the resource never carries it).
            sqlx::query(
                "INSERT INTO subscriptions (id, organization, topic, filters, endpoint, payload, headers, heartbeat_secs, \
                 secret, status, error, role) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, COALESCE($9, ''), $10, $11, $12) \
                 ON CONFLICT (id) DO UPDATE SET organization = excluded.organization, role = excluded.role, \
                 topic = excluded.topic, \
                 filters = excluded.filters, endpoint = excluded.endpoint, payload = excluded.payload, \
                 headers = excluded.headers, heartbeat_secs = excluded.heartbeat_secs, \
                 secret = COALESCE($9, subscriptions.secret), status = excluded.status, error = excluded.error, \
                 deleted = 0",
            )
            .bind(record.id.as_str())
            .bind(record.organization.as_str())
            .bind(record.topic.as_str())
            .bind(filters)
            .bind(record.endpoint.as_str())
            .bind(record.payload.as_str())
            .bind(headers)
            .bind(record.heartbeat_secs)
            .bind(record.secret.as_deref())
            .bind(record.status.as_str())
            .bind(record.error.as_deref())
            .bind(record.role.as_str())
            .execute(&mut *conn)
            .await?;
        }
        SubscriptionChange::Status { id, status, error } => {
            sqlx::query("UPDATE subscriptions SET status = $1, error = $2 WHERE id = $3")
                .bind(status.as_str())
                .bind(error.as_deref())
                .bind(id.as_str())
                .execute(&mut *conn)
                .await?;
        }
        SubscriptionChange::Delete(id) => {
            sqlx::query("UPDATE subscriptions SET status = 'off', deleted = 1 WHERE id = $1")
                .bind(id.as_str())
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// Records one notification. An event takes the next number of its subscription's counter
/// (a row lock on PostgreSQL until COMMIT, so numbers follow commit order); a subscription
/// that is off or gone by now records nothing.
async fn insert_outbox_entry(conn: &mut AnyConnection, entry: &OutboxEntry) -> Result<(), StoreError> {
    let number: Option<i64> = match entry.kind {
        OutboxKind::Handshake => None,
        OutboxKind::Event => {
            let row = sqlx::query(
                "UPDATE subscriptions SET events_since_start = events_since_start + 1 \
                 WHERE id = $1 AND deleted = 0 AND status IN ('active', 'error') RETURNING events_since_start",
            )
            .bind(entry.subscription_id.as_str())
            .fetch_optional(&mut *conn)
            .await?;
            match row {
                Some(row) => Some(sqlx::Row::try_get(&row, 0)?),
                None => return Ok(()),
            }
        }
    };
    let (focus_type, focus_id, focus_version) = match &entry.focus {
        Some((t, id, v)) => (Some(t.as_str()), Some(id.as_str()), Some(v.get())),
        None => (None, None, None),
    };
    sqlx::query(
        "INSERT INTO outbox_events (id, subscription_id, kind, event_number, focus_type, focus_id, focus_version, \
         created_at, state, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $8)",
    )
    .bind(entry.id.as_str())
    .bind(entry.subscription_id.as_str())
    .bind(entry.kind.as_str())
    .bind(number)
    .bind(focus_type)
    .bind(focus_id)
    .bind(focus_version)
    .bind(entry.created_at.micros())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Audit rows per statement: 9 parameters each, well under SQLite's 32,766 variables.
const AUDIT_ROWS_PER_STATEMENT: usize = 256;

/// Many audit records in a few multi-row statements: the reads and searches a group commit
/// carries cost the single SQLite writer one statement per few hundred, not three each.
pub(super) async fn insert_audit_rows(conn: &mut AnyConnection, records: &[&AuditRecord]) -> Result<(), StoreError> {
    for chunk in records.chunks(AUDIT_ROWS_PER_STATEMENT) {
        let mut sql = String::from(
            "INSERT INTO audit_events (id, recorded, client_id, organization, action, outcome, entity_type, entity_id, body) VALUES ",
        );
        let mut args = AnyArguments::default();
        for (i, record) in chunk.iter().enumerate() {
            let first = i * 9;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            sql.push_str(&(1..=9).map(|n| format!("${}", first + n)).collect::<Vec<_>>().join(", "));
            sql.push(')');
            let bind = |e: sqlx::error::BoxDynError| StoreError::Config(format!("cannot bind an audit value: {e}"));
            args.add(record.id.as_str().to_owned()).map_err(bind)?;
            args.add(record.recorded.micros()).map_err(bind)?;
            args.add(record.agent.client_id.as_str().to_owned()).map_err(bind)?;
            args.add(record.agent.organization.as_str().to_owned()).map_err(bind)?;
            args.add(record.action.code().to_owned()).map_err(bind)?;
            args.add(record.outcome.code().to_owned()).map_err(bind)?;
            args.add(record.entity_type.clone()).map_err(bind)?;
            args.add(record.entity_id.clone()).map_err(bind)?;
            args.add(record.to_fhir().to_string()).map_err(bind)?;
        }
        sqlx::query_with(&sql, args).execute(&mut *conn).await?;
    }
    Ok(())
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Refuses a write applied more than W/2 after its `last_updated` was stamped, so that every
/// version with `last_updated < now - W` is committed or never will be (the rule searches on
/// `_lastUpdated` rely on: see `service::search`).
fn check_settle_window(write: &ResourceWrite, settle_window: Duration) -> Result<(), StoreError> {
    let half = i64::try_from(settle_window.as_micros() / 2).unwrap_or(i64::MAX);
    let late_by = Instant::now().micros() - write.last_updated.micros();
    if late_by > half {
        return Err(StoreError::SettleWindowPassed { late_by_ms: late_by / 1000 });
    }
    Ok(())
}

/// [`check_settle_window`] for every write of a set, run again just before COMMIT: what is
/// left unchecked is then only the COMMIT itself.
pub(super) fn check_write_set_settled(write_set: &WriteSet, settle_window: Duration) -> Result<(), StoreError> {
    write_set.resources.iter().try_for_each(|write| check_settle_window(write, settle_window))
}

async fn apply_resource_write(
    conn: &mut AnyConnection,
    write: &ResourceWrite,
    settle_window: Duration,
) -> Result<(), StoreError> {
    check_settle_window(write, settle_window)?;
    let conflict = || StoreError::VersionConflict {
        resource_type: write.resource_type.as_str().to_owned(),
        id: write.id.as_str().to_owned(),
    };
    // Stored as 0/1: sqlx::Any cannot decode SQLite booleans.
    let deleted = i64::from(write.body.is_empty());
    // The history row goes first: its unique (type, id, version) key is what makes two
    // writers racing from the same version collide, on both databases.
    let inserted = sqlx::query(
        "INSERT INTO resource_history (resource_type, id, version_id, last_updated, deleted, method, body) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING change_seq",
    )
    .bind(write.resource_type.as_str())
    .bind(write.id.as_str())
    .bind(write.version.get())
    .bind(write.last_updated.micros())
    .bind(deleted)
    .bind(write.method.as_str())
    .bind(write.body.as_str())
    .fetch_one(&mut *conn)
    .await;
    let change_seq: i64 = match inserted {
        Ok(row) => sqlx::Row::try_get(&row, 0)?,
        Err(e) if is_unique_violation(&e) => return Err(conflict()),
        Err(e) => return Err(e.into()),
    };

    match write.precondition {
        Precondition::Absent => {
            let result = sqlx::query(
                "INSERT INTO resources (resource_type, id, version_id, last_updated, deleted, body, change_seq) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(write.resource_type.as_str())
            .bind(write.id.as_str())
            .bind(write.version.get())
            .bind(write.last_updated.micros())
            .bind(deleted)
            .bind(write.body.as_str())
            .bind(change_seq)
            .execute(&mut *conn)
            .await;
            match result {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => return Err(conflict()),
                Err(e) => return Err(e.into()),
            }
        }
        Precondition::CurrentVersion(expected) => {
            let result = sqlx::query(
                "UPDATE resources SET version_id = $1, last_updated = $2, deleted = $3, body = $4, change_seq = $5 \
                 WHERE resource_type = $6 AND id = $7 AND version_id = $8",
            )
            .bind(write.version.get())
            .bind(write.last_updated.micros())
            .bind(deleted)
            .bind(write.body.as_str())
            .bind(change_seq)
            .bind(write.resource_type.as_str())
            .bind(write.id.as_str())
            .bind(expected.get())
            .execute(&mut *conn)
            .await?;
            if result.rows_affected() != 1 {
                return Err(conflict());
            }
            for table in ["idx_token", "idx_reference", "idx_date", "idx_string"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE resource_type = $1 AND id = $2"))
                    .bind(write.resource_type.as_str())
                    .bind(write.id.as_str())
                    .execute(&mut *conn)
                    .await?;
            }
        }
    }
    insert_index(conn, write).await?;
    // Content-derived visibility follows the current version; granted visibility (the
    // creator, grants through a referral) stays. A deletion keeps both, so those who could
    // see the resource get 410 rather than 404.
    if !write.body.is_empty() {
        if matches!(write.precondition, Precondition::CurrentVersion(_)) {
            sqlx::query("DELETE FROM resource_visibility WHERE resource_type = $1 AND id = $2 AND source = 'content'")
                .bind(write.resource_type.as_str())
                .bind(write.id.as_str())
                .execute(&mut *conn)
                .await?;
        }
        let keyed = |key: &String, source: &str| {
            let mut args = RowArgs::new(write);
            args.text(Some(key));
            args.text(Some(source));
            args
        };
        insert_rows(
            conn,
            "resource_visibility (resource_type, id, visibility_key, source)",
            write
                .visibility_grants
                .iter()
                .map(|key| keyed(key, "grant"))
                .chain(write.visibility.iter().map(|key| keyed(key, "content"))),
        )
        .await?;
    }
    Ok(())
}

/// The values of one index row, starting with the resource's type and id.
struct RowArgs {
    values: Vec<Option<String>>,
    numbers: Vec<(usize, i64)>,
}

impl RowArgs {
    fn new(write: &ResourceWrite) -> Self {
        RowArgs {
            values: vec![Some(write.resource_type.as_str().to_owned()), Some(write.id.as_str().to_owned())],
            numbers: Vec::new(),
        }
    }

    fn text(&mut self, value: Option<&str>) {
        self.values.push(value.map(str::to_owned));
    }

    fn number(&mut self, value: i64) {
        self.numbers.push((self.values.len(), value));
        self.values.push(None);
    }

    fn width(&self) -> usize {
        self.values.len()
    }

    fn bind_into(self, args: &mut AnyArguments<'_>) -> Result<(), StoreError> {
        let mut numbers = self.numbers.into_iter().peekable();
        for (position, value) in self.values.into_iter().enumerate() {
            let bound = match numbers.next_if(|(p, _)| *p == position) {
                Some((_, n)) => args.add(n),
                None => args.add(value),
            };
            bound.map_err(|e| StoreError::Config(format!("cannot bind index value: {e}")))?;
        }
        Ok(())
    }
}

/// Inserts many rows with one multi-row statement: far fewer round trips through the single
/// SQLite writer than a statement per row.
async fn insert_rows(
    conn: &mut AnyConnection,
    table_and_columns: &str,
    rows: impl Iterator<Item = RowArgs>,
) -> Result<(), StoreError> {
    let rows: Vec<RowArgs> = rows.collect();
    let Some(width) = rows.first().map(RowArgs::width) else {
        return Ok(());
    };
    let mut sql = format!("INSERT INTO {table_and_columns} VALUES ");
    let mut args = AnyArguments::default();
    let mut n = 0;
    for (i, row) in rows.into_iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..width {
            n += 1;
            if c > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${n}"));
        }
        sql.push(')');
        row.bind_into(&mut args)?;
    }
    sql.push_str(" ON CONFLICT DO NOTHING");
    sqlx::query_with(&sql, args).execute(&mut *conn).await?;
    Ok(())
}

async fn insert_index(conn: &mut AnyConnection, write: &ResourceWrite) -> Result<(), StoreError> {
    let mut tokens = Vec::new();
    let mut references = Vec::new();
    let mut dates = Vec::new();
    let mut strings = Vec::new();
    for entry in &write.index {
        let mut row = RowArgs::new(write);
        match entry {
            IndexEntry::Token { param, system, code, text } => {
                row.text(Some(param));
                row.text(system.as_deref());
                row.text(code.as_deref());
                row.text(text.as_deref());
                tokens.push(row);
            }
            IndexEntry::Reference { param, target_type, target_id, identifier_system, identifier_value } => {
                row.text(Some(param));
                row.text(target_type.as_deref());
                row.text(target_id.as_deref());
                row.text(identifier_system.as_deref());
                row.text(identifier_value.as_deref());
                references.push(row);
            }
            IndexEntry::Date { param, low, high } => {
                row.text(Some(param));
                row.number(*low);
                row.number(*high);
                dates.push(row);
            }
            IndexEntry::String { param, value, exact } => {
                row.text(Some(param));
                row.text(Some(value));
                row.text(Some(exact));
                strings.push(row);
            }
        }
    }
    insert_rows(conn, "idx_token (resource_type, id, param, system, code, text)", tokens.into_iter()).await?;
    insert_rows(
        conn,
        "idx_reference (resource_type, id, param, target_type, target_id, identifier_system, identifier_value)",
        references.into_iter(),
    )
    .await?;
    insert_rows(conn, "idx_date (resource_type, id, param, low, high)", dates.into_iter()).await?;
    insert_rows(conn, "idx_string (resource_type, id, param, value, exact)", strings.into_iter()).await?;
    Ok(())
}

async fn apply_claim(conn: &mut AnyConnection, claim: &ConditionalClaim) -> Result<(), StoreError> {
    match &claim.replaces {
        None => {
            let result = sqlx::query(
                "INSERT INTO conditional_keys (scope_key, resource_type, criteria, id) VALUES ($1, $2, $3, $4)",
            )
            .bind(claim.scope_key.as_str())
            .bind(claim.resource_type.as_str())
            .bind(claim.criteria.as_str())
            .bind(claim.id.as_str())
            .execute(&mut *conn)
            .await;
            match result {
                Ok(_) => Ok(()),
                Err(e) if is_unique_violation(&e) => Err(StoreError::ConditionalClaimTaken),
                Err(e) => Err(e.into()),
            }
        }
        Some(stale_id) => {
            let result = sqlx::query(
                "UPDATE conditional_keys SET id = $1 \
                 WHERE scope_key = $2 AND resource_type = $3 AND criteria = $4 AND id = $5",
            )
            .bind(claim.id.as_str())
            .bind(claim.scope_key.as_str())
            .bind(claim.resource_type.as_str())
            .bind(claim.criteria.as_str())
            .bind(stale_id.as_str())
            .execute(&mut *conn)
            .await?;
            if result.rows_affected() == 1 {
                Ok(())
            } else {
                Err(StoreError::ConditionalClaimTaken)
            }
        }
    }
}
