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
    apply_write_sets(conn, &[write_set], settle_window).await
}

/// Applies several write sets as one: the same few statements per table whatever their
/// number (the SQLite writer's group commit tries a batch this way first). Their order among
/// each other is not kept: they were planned concurrently, against the same committed state,
/// so any order is one they could have committed in; anything that depends on it (two
/// versions from one, one conditional key twice) collides and fails the whole call.
pub(super) async fn apply_write_sets(
    conn: &mut AnyConnection,
    write_sets: &[&WriteSet],
    settle_window: Duration,
) -> Result<(), StoreError> {
    let resources: Vec<&ResourceWrite> = write_sets.iter().flat_map(|ws| &ws.resources).collect();
    apply_resource_writes(conn, &resources, settle_window).await?;
    // In key order, like the resources of a wave (see `apply_resource_writes`).
    let mut claims: Vec<&ConditionalClaim> = write_sets.iter().flat_map(|ws| &ws.conditional_claims).collect();
    claims.sort_by(|a, b| {
        (a.scope_key.as_str(), a.resource_type.as_str(), a.criteria.as_str()).cmp(&(
            b.scope_key.as_str(),
            b.resource_type.as_str(),
            b.criteria.as_str(),
        ))
    });
    let fresh: Vec<&ConditionalClaim> = claims.iter().copied().filter(|claim| claim.replaces.is_none()).collect();
    insert_claims(conn, &fresh).await?;
    for claim in claims {
        if let Some(stale_id) = &claim.replaces {
            take_over_claim(conn, claim, stale_id).await?;
        }
    }
    insert_audit_rows(conn, &write_sets.iter().flat_map(|ws| &ws.audit).collect::<Vec<_>>()).await?;
    for request in write_sets.iter().filter_map(|ws| ws.request.as_ref()) {
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
    for revoked in write_sets.iter().flat_map(|ws| &ws.revocations) {
        sqlx::query("DELETE FROM resource_visibility WHERE resource_type = $1 AND id = $2 AND visibility_key = $3")
            .bind(revoked.resource_type.as_str())
            .bind(revoked.id.as_str())
            .bind(revoked.key.as_str())
            .execute(&mut *conn)
            .await?;
    }
    let grants = write_sets
        .iter()
        .flat_map(|ws| &ws.grants)
        .map(|grant| {
            let mut row = RowArgs::of(grant.resource_type.as_str(), grant.id.as_str());
            row.text(Some(&grant.key));
            row.text(Some("grant"));
            row
        })
        .collect();
    insert_rows(conn, "resource_visibility (resource_type, id, visibility_key, source)", grants, Taken::Skip).await?;
    for change in write_sets.iter().flat_map(|ws| &ws.subscription_changes) {
        apply_subscription_change(conn, change).await?;
    }
    // In subscription order, so that transactions notifying several subscriptions lock their
    // counters in one order and cannot deadlock one another on PostgreSQL.
    let mut notifications: Vec<&OutboxEntry> = write_sets.iter().flat_map(|ws| &ws.notifications).collect();
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

/// Many audit records in a few multi-row statements: the reads and searches a group commit
/// carries cost the single SQLite writer one statement per few thousand, not one each.
async fn insert_audit_rows(conn: &mut AnyConnection, records: &[&AuditRecord]) -> Result<(), StoreError> {
    const WIDTH: usize = 10;
    let dialect = Dialect::of(conn);
    for chunk in statement_chunks(records, WIDTH) {
        let (values, args) = values_of(dialect, chunk, WIDTH, |args, record| {
            args.add(record.id.as_str())?;
            args.add(record.recorded.micros())?;
            args.add(record.agent.client_id.as_str())?;
            args.add(record.agent.organization.as_str())?;
            args.add(record.action.code())?;
            args.add(record.outcome.code())?;
            args.add(record.entity_type.as_deref())?;
            args.add(record.entity_id.as_deref())?;
            args.add(record.interaction.as_str())?;
            // No text: the AuditEvent is built from these columns when read (`store::audit`).
            args.add("")
        })?;
        let sql = format!(
            "{} audit_events (id, recorded, client_id, organization, action, outcome, entity_type, \
             entity_id, interaction, body) VALUES {values}",
            dialect.insert_into()
        );
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

/// The search index tables, each with the owning resource's `(resource_type, id)`.
const INDEX_TABLES: [&str; 4] = ["idx_token", "idx_reference", "idx_date", "idx_string"];

/// Bound values per statement at most: under SQLite's 32,766 and PostgreSQL's 65,535.
const MAX_BOUND_VALUES: usize = 30_000;

/// Rows per multi-row statement at most (a power of two).
const MAX_ROWS_PER_STATEMENT: usize = 256;

/// Splits `items` into the chunks of one multi-row statement each: powers of two, largest
/// first (300 rows: 256, 32, 8, 4). Each statement text is then one of a few per table, which
/// the connection's statement cache keeps prepared; a statement for every batch's exact row
/// count had to be parsed and compiled anew each time, thousands of values long.
fn statement_chunks<T>(items: &[T], width: usize) -> impl Iterator<Item = &[T]> {
    let most = (MAX_BOUND_VALUES / width.max(1)).min(MAX_ROWS_PER_STATEMENT);
    let most = if most.is_power_of_two() { most } else { most.next_power_of_two() / 2 };
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let size = if rest.len() >= most { most } else { 1 << rest.len().ilog2() };
        let (chunk, after) = rest.split_at(size);
        rest = after;
        Some(chunk)
    })
}

/// Applies the resource writes of a write set a few statements per table for all of them
/// together, not one per table per resource: on SQLite every statement is a round trip to the
/// single writer's thread, on PostgreSQL one over the network. A set writing one resource
/// twice (a transaction updating what it created) is applied in waves, each resource at most
/// once per wave, so that every wave sees the one before it. A wave writes its resources in
/// key order: on PostgreSQL each row's unique key is locked until COMMIT, and two replicas'
/// group commits taking the keys of the same resources in different orders could deadlock.
async fn apply_resource_writes(
    conn: &mut AnyConnection,
    writes: &[&ResourceWrite],
    settle_window: Duration,
) -> Result<(), StoreError> {
    for write in writes {
        check_settle_window(write, settle_window)?;
    }
    for mut wave in waves_of_distinct_resources(writes) {
        wave.sort_by(|a, b| (a.resource_type.as_str(), a.id.as_str()).cmp(&(b.resource_type.as_str(), b.id.as_str())));
        apply_wave(conn, &wave).await?;
    }
    Ok(())
}

/// Splits writes, in order, into runs in which each resource appears once.
fn waves_of_distinct_resources<'w>(writes: &[&'w ResourceWrite]) -> Vec<Vec<&'w ResourceWrite>> {
    let mut waves: Vec<Vec<&ResourceWrite>> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for &write in writes {
        let key = (write.resource_type, write.id.as_str());
        if waves.is_empty() || !seen.insert(key) {
            seen.clear();
            seen.insert(key);
            waves.push(Vec::new());
        }
        if let Some(wave) = waves.last_mut() {
            wave.push(write);
        }
    }
    waves
}

/// Whether the version is a deletion, stored as 0/1: sqlx::Any cannot decode SQLite booleans.
fn deleted_flag(write: &ResourceWrite) -> i64 {
    i64::from(write.body.is_empty())
}

fn version_conflict(write: &ResourceWrite) -> StoreError {
    StoreError::VersionConflict {
        resource_type: write.resource_type.as_str().to_owned(),
        id: write.id.as_str().to_owned(),
    }
}

async fn apply_wave(conn: &mut AnyConnection, writes: &[&ResourceWrite]) -> Result<(), StoreError> {
    let change_seqs = insert_history(conn, writes).await?;
    let (created, updated): (Vec<&ResourceWrite>, Vec<&ResourceWrite>) =
        writes.iter().copied().partition(|w| w.precondition == Precondition::Absent);
    insert_current(conn, &created, &change_seqs).await?;
    for write in &updated {
        update_current(conn, write, change_seq_of(&change_seqs, write)?).await?;
    }
    for table in INDEX_TABLES {
        delete_rows_of(conn, table, &updated, "").await?;
    }
    insert_index(conn, writes).await?;
    // Content-derived visibility follows the current version; granted visibility (the
    // creator, grants through a referral) stays. A deletion keeps both, so those who could
    // see the resource get 410 rather than 404.
    let live: Vec<&ResourceWrite> = writes.iter().copied().filter(|w| !w.body.is_empty()).collect();
    let live_updates: Vec<&ResourceWrite> =
        live.iter().copied().filter(|w| w.precondition != Precondition::Absent).collect();
    delete_rows_of(conn, "resource_visibility", &live_updates, " AND source = 'content'").await?;
    let mut rows = Vec::new();
    for write in &live {
        let sourced = write.visibility_grants.iter().map(|key| (key, "grant"));
        for (key, source) in sourced.chain(write.visibility.iter().map(|key| (key, "content"))) {
            let mut row = RowArgs::new(write);
            row.text(Some(key));
            row.text(Some(source));
            rows.push(row);
        }
    }
    insert_rows(conn, "resource_visibility (resource_type, id, visibility_key, source)", rows, Taken::Skip).await
}

/// The history rows go first: their unique (type, id, version) key is what makes two writers
/// racing from the same version collide, on both databases. One statement per chunk of rows,
/// skipping rows that collide (`ON CONFLICT DO NOTHING`: on PostgreSQL a failed statement would
/// abort the transaction, and it waits for a racing writer's outcome either way); a skipped
/// row means a version that exists already, and the first such resource is named. Returns the
/// change sequence number each row was given, by `(resource_type, id)` (once per wave).
async fn insert_history(conn: &mut AnyConnection, writes: &[&ResourceWrite]) -> Result<ChangeSeqs, StoreError> {
    const WIDTH: usize = 7;
    let dialect = Dialect::of(conn);
    let mut change_seqs = ChangeSeqs::with_capacity(writes.len());
    for chunk in statement_chunks(writes, WIDTH) {
        let (values, args) = values_of(dialect, chunk, WIDTH, |args, write| {
            args.add(write.resource_type.as_str())?;
            args.add(write.id.as_str())?;
            args.add(write.version.get())?;
            args.add(write.last_updated.micros())?;
            args.add(deleted_flag(write))?;
            args.add(write.method.as_str())?;
            args.add(write.body.as_str())
        })?;
        let sql = format!(
            "{} resource_history (resource_type, id, version_id, last_updated, deleted, method, body) \
             VALUES {values} ON CONFLICT DO NOTHING RETURNING resource_type, id, change_seq",
            dialect.insert_into()
        );
        let inserted = sqlx::query_with(&sql, args).fetch_all(&mut *conn).await?;
        first_skipped(chunk, &inserted)?;
        for row in &inserted {
            let key = (sqlx::Row::try_get::<String, _>(row, 0)?, sqlx::Row::try_get::<String, _>(row, 1)?);
            change_seqs.insert(key, sqlx::Row::try_get::<i64, _>(row, 2)?);
        }
    }
    Ok(change_seqs)
}

/// The change sequence numbers of a wave's history rows, by `(resource_type, id)`.
type ChangeSeqs = std::collections::HashMap<(String, String), i64>;

/// The change sequence number [`insert_history`] gave `write`'s history row.
fn change_seq_of(change_seqs: &ChangeSeqs, write: &ResourceWrite) -> Result<i64, StoreError> {
    change_seqs
        .get(&(write.resource_type.as_str().to_owned(), write.id.as_str().to_owned()))
        .copied()
        .ok_or_else(|| StoreError::Config(format!("no history row for {}/{}", write.resource_type, write.id)))
}

/// The current rows of new resources, each with its history row's change sequence number
/// (bound as a value: a lookup of the history row per row was an index scan to set up per row
/// of every statement, a fifth of the PostgreSQL writer's time).
async fn insert_current(
    conn: &mut AnyConnection,
    created: &[&ResourceWrite],
    change_seqs: &ChangeSeqs,
) -> Result<(), StoreError> {
    const WIDTH: usize = 7;
    let dialect = Dialect::of(conn);
    for chunk in statement_chunks(created, WIDTH) {
        let rows = chunk
            .iter()
            .map(|&write| Ok((write, change_seq_of(change_seqs, write)?)))
            .collect::<Result<Vec<(&ResourceWrite, i64)>, StoreError>>()?;
        let (values, args) = values_of(dialect, &rows, WIDTH, |args, (write, seq)| {
            args.add(write.resource_type.as_str())?;
            args.add(write.id.as_str())?;
            args.add(write.version.get())?;
            args.add(write.last_updated.micros())?;
            args.add(deleted_flag(write))?;
            args.add(write.body.as_str())?;
            args.add(*seq)
        })?;
        let sql = format!(
            "{} resources (resource_type, id, version_id, last_updated, deleted, body, change_seq) \
             VALUES {values} ON CONFLICT DO NOTHING RETURNING resource_type, id",
            dialect.insert_into()
        );
        let inserted = sqlx::query_with(&sql, args).fetch_all(&mut *conn).await?;
        first_skipped(chunk, &inserted)?;
    }
    Ok(())
}

/// Moves the current row of an existing resource to the new version, only from the version
/// the write was planned on (checked in the same statement).
async fn update_current(conn: &mut AnyConnection, write: &ResourceWrite, change_seq: i64) -> Result<(), StoreError> {
    let Precondition::CurrentVersion(expected) = write.precondition else {
        return Err(StoreError::Config("an update without the version it starts from".to_owned()));
    };
    let result = sqlx::query(
        "UPDATE resources SET version_id = $1, last_updated = $2, deleted = $3, body = $4, change_seq = $5 \
         WHERE resource_type = $6 AND id = $7 AND version_id = $8",
    )
    .bind(write.version.get())
    .bind(write.last_updated.micros())
    .bind(deleted_flag(write))
    .bind(write.body.as_str())
    .bind(change_seq)
    .bind(write.resource_type.as_str())
    .bind(write.id.as_str())
    .bind(expected.get())
    .execute(&mut *conn)
    .await?;
    if result.rows_affected() != 1 {
        return Err(version_conflict(write));
    }
    Ok(())
}

/// The conflict naming the first of `writes` an insert skipped (`inserted`: the
/// `(resource_type, id)` rows it returned), if any.
fn first_skipped(writes: &[&ResourceWrite], inserted: &[sqlx::any::AnyRow]) -> Result<(), StoreError> {
    if inserted.len() == writes.len() {
        return Ok(());
    }
    let mut written = std::collections::HashSet::with_capacity(inserted.len());
    for row in inserted {
        written.insert((sqlx::Row::try_get::<String, _>(row, 0)?, sqlx::Row::try_get::<String, _>(row, 1)?));
    }
    let skipped =
        writes.iter().find(|w| !written.contains(&(w.resource_type.as_str().to_owned(), w.id.as_str().to_owned())));
    Err(match skipped {
        Some(write) => version_conflict(write),
        None => StoreError::Config("an insert skipped a row it did not name".to_owned()),
    })
}

/// Deletes the rows of `table` owned by any of `writes` (plus `extra` conditions).
async fn delete_rows_of(
    conn: &mut AnyConnection,
    table: &str,
    writes: &[&ResourceWrite],
    extra: &str,
) -> Result<(), StoreError> {
    const WIDTH: usize = 2;
    let dialect = Dialect::of(conn);
    for chunk in statement_chunks(writes, WIDTH) {
        let mut args = AnyArguments::default();
        let mut owners = Vec::with_capacity(chunk.len());
        for (i, write) in chunk.iter().enumerate() {
            bind_all(&mut args, |args| {
                args.add(write.resource_type.as_str())?;
                args.add(write.id.as_str())
            })?;
            owners.push(format!("(resource_type = {} AND id = {})", dialect.nth(2 * i + 1), dialect.nth(2 * i + 2)));
        }
        let sql = format!("DELETE FROM {table} WHERE ({}){extra}", owners.join(" OR "));
        sqlx::query_with(&sql, args).execute(&mut *conn).await?;
    }
    Ok(())
}

/// What differs between the two databases in the statements built here. Every placeholder of
/// a statement is bound once, in the order it appears, so both styles bind the same arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    /// Placeholders `$1, $2, …`.
    Postgres,
    /// Placeholders `?`: SQLite keeps the names of numbered parameters in a list it searches
    /// linearly, when preparing and again (through sqlx) when binding each value: quadratic
    /// in the thousands of values of a group commit's multi-row inserts, a fifth of the
    /// machine's CPU with 64 clients submitting referrals. Anonymous ones have no name to find.
    Sqlite,
}

impl Dialect {
    fn of(conn: &AnyConnection) -> Self {
        if conn.backend_name() == <sqlx::Sqlite as sqlx::Database>::NAME {
            Dialect::Sqlite
        } else {
            Dialect::Postgres
        }
    }

    /// How a multi-row insert begins. On SQLite, `OR FAIL`: a multi-row `INSERT` that may abort
    /// (any `NOT NULL` or key) otherwise opens a statement journal, copying every page it
    /// touches first so that it could undo itself alone; that copying was a sixth of the
    /// writer's time. A failing statement here never needs that: its whole write set is
    /// rolled back (to its savepoint, or the transaction) whenever a statement fails.
    fn insert_into(self) -> &'static str {
        match self {
            Dialect::Postgres => "INSERT INTO",
            Dialect::Sqlite => "INSERT OR FAIL INTO",
        }
    }

    /// The placeholder of the `n`th bound value (from 1).
    fn nth(self, n: usize) -> String {
        let mut sql = String::new();
        self.push_nth(&mut sql, n);
        sql
    }

    fn push_nth(self, sql: &mut String, n: usize) {
        match self {
            Dialect::Postgres => {
                sql.push('$');
                sql.push_str(&n.to_string());
            }
            Dialect::Sqlite => sql.push('?'),
        }
    }
}

/// `($1, $2), ($3, $4)…` or `(?, ?), (?, ?)…`: `rows` rows of `width` placeholders.
fn values_placeholders(dialect: Dialect, rows: usize, width: usize) -> String {
    let mut sql = String::with_capacity(rows * width * 5);
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 1..=width {
            if column > 1 {
                sql.push_str(", ");
            }
            dialect.push_nth(&mut sql, row * width + column);
        }
        sql.push(')');
    }
    sql
}

/// The `VALUES` rows of `chunk`, `width` values each as `bind_row` binds them, and the bound
/// arguments.
fn values_of<'q, T>(
    dialect: Dialect,
    chunk: &'q [T],
    width: usize,
    bind_row: impl Fn(&mut AnyArguments<'q>, &'q T) -> Result<(), sqlx::error::BoxDynError>,
) -> Result<(String, AnyArguments<'q>), StoreError> {
    let mut args = AnyArguments::default();
    for item in chunk {
        bind_all(&mut args, |args| bind_row(args, item))?;
    }
    Ok((values_placeholders(dialect, chunk.len(), width), args))
}

/// Runs `bind`, turning a binding error into a store error.
fn bind_all<'q>(
    args: &mut AnyArguments<'q>,
    bind: impl FnOnce(&mut AnyArguments<'q>) -> Result<(), sqlx::error::BoxDynError>,
) -> Result<(), StoreError> {
    bind(args).map_err(|e| StoreError::Config(format!("cannot bind a value: {e}")))
}

/// The values of one index row, starting with the resource's type and id.
struct RowArgs {
    values: Vec<Option<String>>,
    numbers: Vec<(usize, i64)>,
}

impl RowArgs {
    fn new(write: &ResourceWrite) -> Self {
        RowArgs::of(write.resource_type.as_str(), write.id.as_str())
    }

    fn of(resource_type: &str, id: &str) -> Self {
        RowArgs { values: vec![Some(resource_type.to_owned()), Some(id.to_owned())], numbers: Vec::new() }
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

    fn bind_into<'q>(&'q self, args: &mut AnyArguments<'q>) -> Result<(), sqlx::error::BoxDynError> {
        let mut numbers = self.numbers.iter().peekable();
        for (position, value) in self.values.iter().enumerate() {
            match numbers.next_if(|(p, _)| *p == position) {
                Some((_, n)) => args.add(*n)?,
                None => args.add(value.as_deref())?,
            }
        }
        Ok(())
    }
}

/// What a multi-row insert does about rows whose key is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taken {
    /// Skips them (`ON CONFLICT DO NOTHING`): the row there is as good as the new one.
    Skip,
    /// Nothing: the table has no unique key (the search index tables). Not `Skip` for safety's
    /// sake: PostgreSQL inserts every row of an `ON CONFLICT` statement speculatively, a lock
    /// taken and released and a confirmation written to the WAL per row, even when there is no
    /// unique index to check. That was 25 of a referral's 42 rows.
    CannotBe,
}

/// Inserts many rows with one multi-row statement: far fewer round trips through the single
/// SQLite writer than a statement per row.
async fn insert_rows(
    conn: &mut AnyConnection,
    table_and_columns: &str,
    rows: Vec<RowArgs>,
    taken: Taken,
) -> Result<(), StoreError> {
    let Some(width) = rows.first().map(RowArgs::width) else {
        return Ok(());
    };
    let dialect = Dialect::of(conn);
    let on_conflict = match taken {
        Taken::Skip => " ON CONFLICT DO NOTHING",
        Taken::CannotBe => "",
    };
    for chunk in statement_chunks(&rows, width) {
        let (values, args) = values_of(dialect, chunk, width, |args, row| row.bind_into(args))?;
        let sql = format!("{} {table_and_columns} VALUES {values}{on_conflict}", dialect.insert_into());
        sqlx::query_with(&sql, args).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The index rows of all `writes`, one statement per index table.
async fn insert_index(conn: &mut AnyConnection, writes: &[&ResourceWrite]) -> Result<(), StoreError> {
    let mut tokens = Vec::new();
    let mut references = Vec::new();
    let mut dates = Vec::new();
    let mut strings = Vec::new();
    for write in writes {
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
    }
    insert_rows(conn, "idx_token (resource_type, id, param, system, code, text)", tokens, Taken::CannotBe).await?;
    insert_rows(
        conn,
        "idx_reference (resource_type, id, param, target_type, target_id, identifier_system, identifier_value)",
        references,
        Taken::CannotBe,
    )
    .await?;
    insert_rows(conn, "idx_date (resource_type, id, param, low, high)", dates, Taken::CannotBe).await?;
    insert_rows(conn, "idx_string (resource_type, id, param, value, exact)", strings, Taken::CannotBe).await?;
    Ok(())
}

/// Claims fresh conditional-create keys, all of them in a few statements; a key already
/// taken (by a committed or a concurrent write) refuses the whole call.
async fn insert_claims(conn: &mut AnyConnection, claims: &[&ConditionalClaim]) -> Result<(), StoreError> {
    const WIDTH: usize = 4;
    let dialect = Dialect::of(conn);
    for chunk in statement_chunks(claims, WIDTH) {
        let (values, args) = values_of(dialect, chunk, WIDTH, |args, claim| {
            args.add(claim.scope_key.as_str())?;
            args.add(claim.resource_type.as_str())?;
            args.add(claim.criteria.as_str())?;
            args.add(claim.id.as_str())
        })?;
        let sql = format!(
            "{} conditional_keys (scope_key, resource_type, criteria, id) VALUES {values} \
             ON CONFLICT DO NOTHING RETURNING id",
            dialect.insert_into()
        );
        let inserted = sqlx::query_with(&sql, args).fetch_all(&mut *conn).await?;
        if inserted.len() != chunk.len() {
            return Err(StoreError::ConditionalClaimTaken);
        }
    }
    Ok(())
}

/// Takes over a stale key (its resource no longer matches) by compare-and-swap: only from the
/// resource the write was planned against.
async fn take_over_claim(conn: &mut AnyConnection, claim: &ConditionalClaim, stale_id: &str) -> Result<(), StoreError> {
    let result = sqlx::query(
        "UPDATE conditional_keys SET id = $1 WHERE scope_key = $2 AND resource_type = $3 AND criteria = $4 AND id = $5",
    )
    .bind(claim.id.as_str())
    .bind(claim.scope_key.as_str())
    .bind(claim.resource_type.as_str())
    .bind(claim.criteria.as_str())
    .bind(stale_id)
    .execute(&mut *conn)
    .await?;
    if result.rows_affected() == 1 {
        Ok(())
    } else {
        Err(StoreError::ConditionalClaimTaken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::{ResourceId, VersionId};
    use crate::domain::resource_type::ResourceType;
    use crate::store::write_set::WriteMethod;

    fn write(id: &ResourceId, version: i64) -> ResourceWrite {
        ResourceWrite {
            resource_type: ResourceType::Patient,
            id: id.clone(),
            version: VersionId::parse(&version.to_string()).expect("version"),
            last_updated: Instant::now(),
            method: WriteMethod::Create,
            precondition: Precondition::Absent,
            body: "{}".to_owned(),
            index: Vec::new(),
            visibility: Vec::new(),
            visibility_grants: Vec::new(),
        }
    }

    #[test]
    fn a_resource_written_twice_starts_a_new_wave_and_order_is_kept() {
        let (a, b) = (ResourceId::generate(), ResourceId::generate());
        let writes = [write(&a, 1), write(&b, 1), write(&a, 2), write(&b, 2), write(&a, 3)];
        let writes: Vec<&ResourceWrite> = writes.iter().collect();
        let waves: Vec<Vec<(String, i64)>> = waves_of_distinct_resources(&writes)
            .iter()
            .map(|wave| wave.iter().map(|w| (w.id.as_str().to_owned(), w.version.get())).collect())
            .collect();
        let (a, b) = (a.as_str().to_owned(), b.as_str().to_owned());
        assert_eq!(waves, vec![vec![(a.clone(), 1), (b.clone(), 1)], vec![(a.clone(), 2), (b, 2)], vec![(a, 3)]]);
        assert!(waves_of_distinct_resources(&[]).is_empty());
    }

    #[test]
    fn values_placeholders_number_rows_after_one_another() {
        assert_eq!(values_placeholders(Dialect::Postgres, 2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(values_placeholders(Dialect::Postgres, 1, 1), "($1)");
    }

    #[test]
    fn statements_take_rows_in_powers_of_two_largest_first() {
        let rows: Vec<usize> = (0..300).collect();
        let sizes: Vec<usize> = statement_chunks(&rows, 6).map(<[usize]>::len).collect();
        assert_eq!(sizes, vec![256, 32, 8, 4]);
        let rejoined: Vec<usize> = statement_chunks(&rows, 6).flatten().copied().collect();
        assert_eq!(rejoined, rows, "every row once, in order");
        assert_eq!(statement_chunks(&rows[..1], 6).count(), 1);
        assert_eq!(statement_chunks::<usize>(&[], 6).count(), 0);
    }

    #[test]
    fn sqlite_placeholders_are_anonymous_and_as_many() {
        assert_eq!(values_placeholders(Dialect::Sqlite, 2, 2), "(?, ?), (?, ?)");
    }
}
