//! Applies a [`WriteSet`] inside a transaction the caller owns. Shared by both backends.

use std::time::Duration;

use sqlx::AnyConnection;

use super::param_keys::param_key;
use super::rows::{
    delete_owned, explain_owned_deletes, insert_returning, insert_together, update_returning, Cell, Dialect, Insert,
    OwnedRows, Rows, SqlType, Table, Taken, OWNERS,
};
use super::search::write_sets_with_matches;
use super::write_set::{
    ConditionalClaim, OutboxEntry, OutboxKind, Precondition, ResourceWrite, SubscriptionChange, VisibilityGrant,
    WriteSet,
};
use super::StoreError;
use crate::domain::audit::AuditRecord;
use crate::domain::ids::ResourceId;
use crate::domain::instant::Instant;
use crate::domain::resource_type::ResourceType;
use crate::domain::search_params::IndexEntry;

use SqlType::{BigInt, Integer, Text};

// The tables a write set fills, and the columns its rows give.
static HISTORY: Table = Table {
    name: "resource_history",
    columns: &[
        ("resource_type", Text),
        ("id", Text),
        ("version_id", BigInt),
        ("last_updated", BigInt),
        ("deleted", BigInt),
        ("method", Text),
        ("body", Text),
    ],
    bodies: true,
};
static CURRENT: Table = Table {
    name: "resources",
    columns: &[
        ("resource_type", Text),
        ("id", Text),
        ("version_id", BigInt),
        ("last_updated", BigInt),
        ("deleted", BigInt),
        ("body", Text),
        ("change_seq", BigInt),
    ],
    bodies: true,
};
/// The moves of current rows to new versions: which row, from which version, and its new
/// columns (see [`update_current`]).
static CURRENT_MOVES: Table = Table {
    name: "resources",
    columns: &[
        ("resource_type", Text),
        ("id", Text),
        ("from_version", BigInt),
        ("version_id", BigInt),
        ("last_updated", BigInt),
        ("deleted", BigInt),
        ("body", Text),
        ("change_seq", BigInt),
    ],
    bodies: true,
};
static VISIBILITY: Table = Table {
    name: "resource_visibility",
    columns: &[("resource_type", Text), ("id", Text), ("visibility_key", Text), ("source", Text)],
    bodies: false,
};
/// A grant of a key its resource has already: the row becomes the grant, whose source outlives
/// the content (an update deletes only the rows its content gave). Where the content's row
/// stayed, a referral's ServiceRequest, which names the CLW service as its performer, was lost
/// to that service when the GP named another, though the service's Task had granted it.
const GRANTED: Taken = Taken::Update(
    " ON CONFLICT (resource_type, id, visibility_key) DO UPDATE SET source = 'grant' \
     WHERE resource_visibility.source <> 'grant'",
);
static TOKENS: Table = Table {
    name: "idx_token",
    columns: &[
        ("resource_type", Text),
        ("id", Text),
        ("param_key", Integer),
        ("system", Text),
        ("code", Text),
        ("text", Text),
    ],
    bodies: false,
};
static REFERENCES: Table = Table {
    name: "idx_reference",
    columns: &[
        ("resource_type", Text),
        ("id", Text),
        ("param_key", Integer),
        ("target_type", Text),
        ("target_id", Text),
        ("identifier_system", Text),
        ("identifier_value", Text),
    ],
    bodies: false,
};
static DATES: Table = Table {
    name: "idx_date",
    columns: &[("resource_type", Text), ("id", Text), ("param_key", Integer), ("low", BigInt), ("high", BigInt)],
    bodies: false,
};
static STRINGS: Table = Table {
    name: "idx_string",
    columns: &[("resource_type", Text), ("id", Text), ("param_key", Integer), ("value", Text), ("exact", Text)],
    bodies: false,
};
static CONDITIONAL_KEYS: Table = Table {
    name: "conditional_keys",
    columns: &[("scope_key", Text), ("resource_type", Text), ("criteria", Text), ("id", Text)],
    bodies: false,
};
static AUDIT_EVENTS: Table = Table {
    name: "audit_events",
    columns: &[
        ("id", Text),
        ("recorded", BigInt),
        ("client_id", Text),
        ("organization", Text),
        ("action", Text),
        ("outcome", Text),
        ("entity_type", Text),
        ("entity_id", Text),
        ("interaction", Text),
        ("query", Text),
        ("patients", Text),
        ("body", Text),
    ],
    bodies: false,
};
static AUDIT_PATIENTS: Table =
    Table { name: "audit_patients", columns: &[("patient_id", Text), ("event_id", Text)], bodies: false };

pub(super) async fn apply_write_set(
    conn: &mut AnyConnection,
    write_set: &WriteSet,
    settle_window: Duration,
) -> Result<(), StoreError> {
    apply_write_sets(conn, &[write_set], settle_window, Absences::Untested).await
}

/// Whether the searches write sets require to find nothing ([`super::NoMatchRequired`]) have
/// been run in the transaction they are applied in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Absences {
    /// Not yet: [`apply_write_sets`] runs them first.
    Untested,
    /// Already, in this transaction, and none found a match (the group commit runs them for
    /// its whole batch before applying it, to refuse only the write sets they fail).
    TestedInThisTransaction,
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
    absences: Absences,
) -> Result<(), StoreError> {
    // A conditional create that something now matches fails like one whose key is taken: its
    // request searches and plans again.
    if absences == Absences::Untested && !write_sets_with_matches(conn, write_sets).await?.is_empty() {
        return Err(StoreError::ConditionalClaimTaken);
    }
    let resources: Vec<&ResourceWrite> = write_sets.iter().flat_map(|ws| &ws.resources).collect();
    // The last wave's rows, the conditional keys, the audit records and the grants go in last,
    // together: on PostgreSQL one statement (see `insert_together`), which none of the
    // statements before it depend on.
    let mut last_wave = apply_resource_writes(conn, &resources, settle_window).await?;
    let claims = take_over_stale_claims(conn, write_sets).await?;
    record_request_ids(conn, write_sets).await?;
    // A revocation withdraws what is there by now, the last wave's visibility too, and a grant
    // after it stands.
    let revocations: Vec<&VisibilityGrant> = write_sets.iter().flat_map(|ws| &ws.revocations).collect();
    if !revocations.is_empty() {
        std::mem::take(&mut last_wave).insert(conn).await?;
    }
    for revoked in revocations {
        sqlx::query("DELETE FROM resource_visibility WHERE resource_type = $1 AND id = $2 AND visibility_key = $3")
            .bind(revoked.resource_type.as_str())
            .bind(revoked.id.as_str())
            .bind(revoked.key.as_str())
            .execute(&mut *conn)
            .await?;
    }
    let grants = last_wave.grant_rows(write_sets.iter().flat_map(|ws| &ws.grants));
    let fresh_claims = claim_rows(claims.iter().copied().filter(|claim| claim.replaces.is_none()));
    let patient_lists: Vec<Option<String>> =
        write_sets.iter().flat_map(|ws| &ws.audit).map(|record| record.patient_list()).collect();
    let audit = audit_rows(write_sets.iter().flat_map(|ws| &ws.audit), &patient_lists);
    let audit_patients = audit_patient_rows(write_sets.iter().flat_map(|ws| &ws.audit));
    let mut inserts = last_wave.inserts();
    let claims_at = inserts.len();
    inserts.extend([
        Insert::Rows(&fresh_claims, Taken::Skip),
        Insert::Rows(&audit, Taken::CannotBe),
        // One row per patient of an event (`AuditRecord::patients` has no duplicates).
        Insert::Rows(&audit_patients, Taken::CannotBe),
        Insert::Rows(&grants, GRANTED),
    ]);
    let inserted = insert_together(conn, &inserts).await?;
    last_wave.check(&inserted)?;
    // A key already taken, by a committed or a concurrent write, refuses the whole call.
    if inserted[claims_at] != fresh_claims.len() as u64 {
        return Err(StoreError::ConditionalClaimTaken);
    }
    for change in write_sets.iter().flat_map(|ws| &ws.subscription_changes) {
        apply_subscription_change(conn, change).await?;
    }
    queue_notifications(conn, write_sets).await
}

/// The write sets' conditional claims in key order, like the resources of a wave (see
/// `apply_resource_writes`), each stale claim taken over on the way.
async fn take_over_stale_claims<'w>(
    conn: &mut AnyConnection,
    write_sets: &[&'w WriteSet],
) -> Result<Vec<&'w ConditionalClaim>, StoreError> {
    let mut claims: Vec<&ConditionalClaim> = write_sets.iter().flat_map(|ws| &ws.conditional_claims).collect();
    claims.sort_by(|a, b| {
        (a.scope_key.as_str(), a.resource_type.as_str(), a.criteria.as_str()).cmp(&(
            b.scope_key.as_str(),
            b.resource_type.as_str(),
            b.criteria.as_str(),
        ))
    });
    for claim in &claims {
        if let Some(stale_id) = &claim.replaces {
            take_over_claim(conn, claim, stale_id).await?;
        }
    }
    Ok(claims)
}

/// Records each write set's X-Request-ID; one recorded already refuses the whole call.
async fn record_request_ids(conn: &mut AnyConnection, write_sets: &[&WriteSet]) -> Result<(), StoreError> {
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
    Ok(())
}

/// Queues the write sets' notifications in subscription order, so that transactions notifying
/// several subscriptions lock their counters in one order and cannot deadlock one another on
/// PostgreSQL.
async fn queue_notifications(conn: &mut AnyConnection, write_sets: &[&WriteSet]) -> Result<(), StoreError> {
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
                .map_err(|e| StoreError::Internal(format!("cannot encode filters: {e}")))?;
            let headers = serde_json::to_string(&record.headers)
                .map_err(|e| StoreError::Internal(format!("cannot encode headers: {e}")))?;
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

/// The rows of audit records. Many go in few statements: the reads and searches a group
/// commit carries cost the writer one statement per few thousand, not one each.
/// The audit records' rows; `patient_lists` holds each record's `AuditRecord::patient_list`,
/// in the same order.
fn audit_rows<'a>(records: impl Iterator<Item = &'a AuditRecord>, patient_lists: &'a [Option<String>]) -> Rows<'a> {
    let mut rows = Rows::new(&AUDIT_EVENTS);
    for (record, patients) in records.zip(patient_lists) {
        rows.push([
            record.id.as_str().into(),
            record.recorded.micros().into(),
            record.agent.client_id.as_str().into(),
            record.agent.organization.as_str().into(),
            record.action.code().into(),
            record.outcome.code().into(),
            record.entity_type.as_deref().into(),
            record.entity_id.as_deref().into(),
            record.interaction.as_str().into(),
            record.query.as_deref().into(),
            patients.as_deref().into(),
            // No text: the AuditEvent is built from these columns when read (`store::audit`).
            "".into(),
        ]);
    }
    rows
}

/// The patients each audit record names (a search's page), one row each.
fn audit_patient_rows<'a>(records: impl Iterator<Item = &'a AuditRecord>) -> Rows<'a> {
    let mut rows = Rows::new(&AUDIT_PATIENTS);
    for record in records {
        for patient in &record.patients {
            rows.push([patient.as_str().into(), record.id.as_str().into()]);
        }
    }
    rows
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

/// Applies the resource writes of a write set a few statements per table for all of them
/// together, not one per table per resource: on SQLite every statement is a round trip to the
/// single writer's thread, on PostgreSQL one over the network. A set writing one resource
/// twice (a transaction updating what it created) is applied in waves, each resource at most
/// once per wave, so that every wave sees the one before it. A wave writes its resources in
/// key order: on PostgreSQL each row's unique key is locked until COMMIT, and two replicas'
/// group commits taking the keys of the same resources in different orders could deadlock.
///
/// Returns the rows the last wave has still to insert (see [`WaveRows`]); each wave before it
/// inserts its own before the next begins, which may replace them.
async fn apply_resource_writes<'a>(
    conn: &mut AnyConnection,
    writes: &[&'a ResourceWrite],
    settle_window: Duration,
) -> Result<WaveRows<'a>, StoreError> {
    for write in writes {
        check_settle_window(write, settle_window)?;
    }
    let mut last = WaveRows::default();
    for mut wave in waves_of_distinct_resources(writes) {
        wave.sort_by(|a, b| (a.resource_type.as_str(), a.id.as_str()).cmp(&(b.resource_type.as_str(), b.id.as_str())));
        std::mem::take(&mut last).insert(conn).await?;
        last = apply_wave(conn, &wave).await?;
    }
    Ok(last)
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

/// The rows a wave inserts after its other statements, which the caller inserts (see
/// [`apply_resource_writes`]): its search index rows and visibility and, on PostgreSQL, where
/// every write of the wave creates a resource under a fresh id (a referral's resources), the
/// resources themselves, each history row and the current row copied from it in one insert
/// ([`Insert::Twice`]): the bodies cross the socket once, and nothing can collide, so no row
/// is checked for a taken key and the current row takes its change sequence number straight
/// from its history row.
struct WaveRows<'a> {
    /// The history rows of new resources (PostgreSQL), each copied into the current rows.
    new_resources: Rows<'a>,
    /// The search index rows: tokens, references, dates and strings.
    index: [Rows<'a>; 4],
    /// The visibility of resources that may have some already (a grant from before): skipped
    /// where there.
    visibility: Rows<'a>,
    /// The visibility of resources created under fresh ids: cannot be there already.
    fresh_visibility: Rows<'a>,
}

/// No rows: before the first wave, and after a wave's rows have gone in.
impl Default for WaveRows<'_> {
    fn default() -> Self {
        WaveRows {
            new_resources: Rows::new(&HISTORY),
            index: [Rows::new(&TOKENS), Rows::new(&REFERENCES), Rows::new(&DATES), Rows::new(&STRINGS)],
            visibility: Rows::new(&VISIBILITY),
            fresh_visibility: Rows::new(&VISIBILITY),
        }
    }
}

impl<'a> WaveRows<'a> {
    /// Its inserts, for [`insert_together`]; [`WaveRows::check`] reads their counts.
    fn inserts(&self) -> Vec<Insert<'_, 'a>> {
        let [tokens, references, dates, strings] = &self.index;
        vec![
            Insert::Twice(&self.new_resources, &CURRENT),
            Insert::Rows(tokens, Taken::CannotBe),
            Insert::Rows(references, Taken::CannotBe),
            Insert::Rows(dates, Taken::CannotBe),
            Insert::Rows(strings, Taken::CannotBe),
            Insert::Rows(&self.visibility, Taken::Skip),
            Insert::Rows(&self.fresh_visibility, Taken::CannotBe),
        ]
    }

    /// That every new resource went in, given the counts of [`WaveRows::inserts`] (and after
    /// them maybe others').
    fn check(&self, inserted: &[u64]) -> Result<(), StoreError> {
        let (expected, current) = (self.new_resources.len() as u64, inserted.first().copied().unwrap_or_default());
        if current == expected {
            Ok(())
        } else {
            Err(StoreError::Internal(format!("{current} current rows inserted for {expected} new resources")))
        }
    }

    /// Inserts its rows on their own.
    async fn insert(self, conn: &mut AnyConnection) -> Result<(), StoreError> {
        let inserted = insert_together(conn, &self.inserts()).await?;
        self.check(&inserted)
    }

    /// The visibility rows of `grants`, to insert with the wave's own, but for a key a row of
    /// the wave already gives the same resource: that row becomes the grant instead (a key
    /// granted and also given by the content is one row, the grant, which outlives the content).
    /// So no two inserts of the one statement insert the same key, whose clauses PostgreSQL runs
    /// in no promised order; and each grant is one row, which an upsert ([`GRANTED`]) may
    /// touch only once per statement.
    fn grant_rows(&mut self, grants: impl Iterator<Item = &'a VisibilityGrant>) -> Rows<'a> {
        let mut rows: Vec<&mut [Cell<'a>]> =
            self.visibility.rows_mut().chain(self.fresh_visibility.rows_mut()).collect();
        let given: std::collections::HashMap<[Cell<'a>; 3], usize> =
            rows.iter().enumerate().map(|(at, row)| ([row[0], row[1], row[2]], at)).collect();
        let mut granted = Rows::new(&VISIBILITY);
        let mut seen = std::collections::HashSet::new();
        for grant in grants {
            let key: [Cell<'a>; 3] =
                [grant.resource_type.as_str().into(), grant.id.as_str().into(), grant.key.as_str().into()];
            match given.get(&key) {
                Some(&at) => rows[at][3] = "grant".into(),
                None if seen.insert(key) => granted.push([key[0], key[1], key[2], "grant".into()]),
                None => {}
            }
        }
        granted
    }
}

/// Applies a wave's statements but its last inserts, which it returns (see [`WaveRows`]).
async fn apply_wave<'a>(conn: &mut AnyConnection, writes: &[&'a ResourceWrite]) -> Result<WaveRows<'a>, StoreError> {
    let mut wave = WaveRows::default();
    let (created, updated): (Vec<&ResourceWrite>, Vec<&ResourceWrite>) =
        writes.iter().copied().partition(|w| w.precondition == Precondition::Absent);
    if Dialect::of(conn) == Dialect::Postgres && writes.iter().all(|w| w.creates_with_fresh_id()) {
        wave.new_resources = history_rows(writes);
    } else {
        let change_seqs = insert_history(conn, writes).await?;
        insert_current(conn, &created, &change_seqs).await?;
        update_current(conn, &updated, &change_seqs).await?;
    }
    // Content-derived visibility follows the current version; granted visibility (the
    // creator, grants through a referral) stays. A deletion keeps both, so those who could
    // see the resource get 410 rather than 404.
    let live: Vec<&ResourceWrite> = writes.iter().copied().filter(|w| !w.body.is_empty()).collect();
    let live_updates: Vec<&ResourceWrite> =
        live.iter().copied().filter(|w| w.precondition != Precondition::Absent).collect();
    let (owners, live_owners) = (owner_rows(&updated), owner_rows(&live_updates));
    let deletes = update_deletes(&owners, &live_owners);
    delete_owned(conn, &deletes).await?;
    // A key granted and also given by the content is one row, the grant (it outlives the
    // content). The rows of a resource created under a fresh id cannot be there already; the
    // others may be (a grant from before), and are skipped if so.
    for write in &live {
        let rows = if write.creates_with_fresh_id() { &mut wave.fresh_visibility } else { &mut wave.visibility };
        let granted = write.visibility_grants.iter().map(|key| (key, "grant"));
        let mut seen: Vec<&str> = Vec::with_capacity(write.visibility_grants.len() + write.visibility.len());
        for (key, source) in granted.chain(write.visibility.iter().map(|key| (key, "content"))) {
            if seen.contains(&key.as_str()) {
                continue;
            }
            seen.push(key);
            rows.push([
                write.resource_type.as_str().into(),
                write.id.as_str().into(),
                key.as_str().into(),
                source.into(),
            ]);
        }
    }
    wave.index = index_rows(writes);
    Ok(wave)
}

/// What an update deletes before it inserts its new version's rows: the search index rows of
/// the resources `owners` and the content-derived visibility of those of `live_owners` (the
/// updates that are not deletions).
fn update_deletes<'r, 'a>(owners: &'r Rows<'a>, live_owners: &'r Rows<'a>) -> Vec<OwnedRows<'r, 'a>> {
    let mut deletes: Vec<OwnedRows<'r, 'a>> = [&TOKENS, &REFERENCES, &DATES, &STRINGS]
        .into_iter()
        .map(|table| OwnedRows { table: table.name, owners, extra: "" })
        .collect();
    deletes.push(OwnedRows { table: VISIBILITY.name, owners: live_owners, extra: " AND source = 'content'" });
    deletes
}

/// The plans of an update's deletes of the rows of `resources` (see
/// [`Store::explain_update_deletes`](super::Store::explain_update_deletes)).
pub(super) async fn explain_update_deletes(
    conn: &mut AnyConnection,
    resources: &[(ResourceType, ResourceId)],
) -> Result<Vec<String>, StoreError> {
    let mut owners = Rows::new(&OWNERS);
    for (resource_type, id) in resources {
        owners.push([resource_type.as_str().into(), id.as_str().into()]);
    }
    explain_owned_deletes(conn, &update_deletes(&owners, &owners)).await
}

/// How an insert of the rows of `writes` treats a taken key: no check where every one creates
/// under a fresh id ([`ResourceWrite::creates_with_fresh_id`]), else skipped and found by the
/// caller. An `ON CONFLICT` insert probes the unique index before each row, inserts it
/// speculatively and logs a confirmation: 12 of a referral's rows did that for nothing, about
/// a twentieth of PostgreSQL's writer.
fn taken_for(writes: &[&ResourceWrite]) -> Taken {
    if writes.iter().all(|w| w.creates_with_fresh_id()) {
        Taken::CannotBe
    } else {
        Taken::Skip
    }
}

/// `(resource_type, id)` of each of `writes`, for [`delete_owned`].
fn owner_rows<'a>(writes: &[&'a ResourceWrite]) -> Rows<'a> {
    let mut owners = Rows::new(&OWNERS);
    for write in writes {
        owners.push([write.resource_type.as_str().into(), write.id.as_str().into()]);
    }
    owners
}

/// The history rows go first: their unique (type, id, version) key is what makes two writers
/// racing from the same version collide, on both databases. Rows that collide are skipped
/// (`ON CONFLICT DO NOTHING`: on PostgreSQL a failed statement would abort the transaction, and
/// it waits for a racing writer's outcome either way); a skipped row means a version that
/// exists already, and the first such resource is named. A wave of creates under fresh ids
/// has nothing to collide with and is inserted unchecked ([`taken_for`]). Returns the change
/// sequence number each row was given, by `(resource_type, id)` (once per wave).
async fn insert_history(conn: &mut AnyConnection, writes: &[&ResourceWrite]) -> Result<ChangeSeqs, StoreError> {
    let rows = history_rows(writes);
    let inserted = insert_returning(conn, &rows, taken_for(writes), "RETURNING resource_type, id, change_seq").await?;
    first_skipped(writes, &inserted)?;
    let mut change_seqs = ChangeSeqs::with_capacity(writes.len());
    for row in &inserted {
        let key = (sqlx::Row::try_get::<String, _>(row, 0)?, sqlx::Row::try_get::<String, _>(row, 1)?);
        change_seqs.insert(key, sqlx::Row::try_get::<i64, _>(row, 2)?);
    }
    Ok(change_seqs)
}

fn history_rows<'a>(writes: &[&'a ResourceWrite]) -> Rows<'a> {
    let mut rows = Rows::new(&HISTORY);
    for write in writes {
        rows.push([
            write.resource_type.as_str().into(),
            write.id.as_str().into(),
            write.version.get().into(),
            write.last_updated.micros().into(),
            deleted_flag(write).into(),
            write.method.as_str().into(),
            write.body.as_str().into(),
        ]);
    }
    rows
}

/// The change sequence numbers of a wave's history rows, by `(resource_type, id)`.
type ChangeSeqs = std::collections::HashMap<(String, String), i64>;

/// The change sequence number [`insert_history`] gave `write`'s history row.
fn change_seq_of(change_seqs: &ChangeSeqs, write: &ResourceWrite) -> Result<i64, StoreError> {
    change_seqs
        .get(&(write.resource_type.as_str().to_owned(), write.id.as_str().to_owned()))
        .copied()
        .ok_or_else(|| StoreError::Internal(format!("no history row for {}/{}", write.resource_type, write.id)))
}

/// The current rows of new resources, each with its history row's change sequence number
/// (bound as a value: a lookup of the history row per row was an index scan to set up per row
/// of every statement, a fifth of the PostgreSQL writer's time).
async fn insert_current(
    conn: &mut AnyConnection,
    created: &[&ResourceWrite],
    change_seqs: &ChangeSeqs,
) -> Result<(), StoreError> {
    let mut rows = Rows::new(&CURRENT);
    for write in created {
        rows.push([
            write.resource_type.as_str().into(),
            write.id.as_str().into(),
            write.version.get().into(),
            write.last_updated.micros().into(),
            deleted_flag(write).into(),
            write.body.as_str().into(),
            change_seq_of(change_seqs, write)?.into(),
        ]);
    }
    let inserted = insert_returning(conn, &rows, taken_for(created), "RETURNING resource_type, id").await?;
    first_skipped(created, &inserted)
}

/// Moves the current rows of existing resources to their new versions, each only from the
/// version its write was planned on (checked in the same statement, one for all of them): a
/// row not moved is a version conflict, named by the first such write.
async fn update_current(
    conn: &mut AnyConnection,
    updated: &[&ResourceWrite],
    change_seqs: &ChangeSeqs,
) -> Result<(), StoreError> {
    let mut moves = Rows::new(&CURRENT_MOVES);
    for write in updated {
        let Precondition::CurrentVersion(expected) = write.precondition else {
            return Err(StoreError::Internal("an update without the version it starts from".to_owned()));
        };
        moves.push([
            write.resource_type.as_str().into(),
            write.id.as_str().into(),
            expected.get().into(),
            write.version.get().into(),
            write.last_updated.micros().into(),
            deleted_flag(write).into(),
            write.body.as_str().into(),
            change_seq_of(change_seqs, write)?.into(),
        ]);
    }
    let moved = update_returning(
        conn,
        CURRENT_MOVES.name,
        &moves,
        &[("resource_type", "resource_type"), ("id", "id"), ("version_id", "from_version")],
        &["version_id", "last_updated", "deleted", "body", "change_seq"],
        "RETURNING resource_type, id",
    )
    .await?;
    first_skipped(updated, &moved)
}

/// The conflict naming the first of `writes` an insert skipped or an update did not move
/// (`returned`: the `(resource_type, id)` rows the statement returned), if any.
fn first_skipped(writes: &[&ResourceWrite], returned: &[sqlx::any::AnyRow]) -> Result<(), StoreError> {
    if returned.len() == writes.len() {
        return Ok(());
    }
    let mut written = std::collections::HashSet::with_capacity(returned.len());
    for row in returned {
        written.insert((sqlx::Row::try_get::<String, _>(row, 0)?, sqlx::Row::try_get::<String, _>(row, 1)?));
    }
    let skipped =
        writes.iter().find(|w| !written.contains(&(w.resource_type.as_str().to_owned(), w.id.as_str().to_owned())));
    Err(match skipped {
        Some(write) => version_conflict(write),
        None => StoreError::Internal("an insert skipped a row it did not name".to_owned()),
    })
}

/// The rows of the four search index tables for all `writes`: tokens, references, dates and
/// strings.
fn index_rows<'a>(writes: &[&'a ResourceWrite]) -> [Rows<'a>; 4] {
    let mut tokens = Rows::new(&TOKENS);
    let mut references = Rows::new(&REFERENCES);
    let mut dates = Rows::new(&DATES);
    let mut strings = Rows::new(&STRINGS);
    for write in writes {
        let (resource_type, id) = (Cell::from(write.resource_type.as_str()), Cell::from(write.id.as_str()));
        let key = |param: &str| Cell::from(i64::from(param_key(write.resource_type, param)));
        for entry in &write.index {
            match entry {
                IndexEntry::Token { param, system, code, text } => tokens.push([
                    resource_type,
                    id,
                    key(param),
                    system.as_deref().into(),
                    code.as_deref().into(),
                    text.as_deref().into(),
                ]),
                IndexEntry::Reference { param, target_type, target_id, identifier_system, identifier_value } => {
                    references.push([
                        resource_type,
                        id,
                        key(param),
                        target_type.as_deref().into(),
                        target_id.as_deref().into(),
                        identifier_system.as_deref().into(),
                        identifier_value.as_deref().into(),
                    ]);
                }
                IndexEntry::Date { param, low, high } => {
                    dates.push([resource_type, id, key(param), (*low).into(), (*high).into()]);
                }
                IndexEntry::String { param, value, exact } => {
                    strings.push([resource_type, id, key(param), value.as_str().into(), exact.as_str().into()]);
                }
            }
        }
    }
    [tokens, references, dates, strings]
}

/// The rows of fresh conditional-create keys, inserted skipping those taken (which refuses
/// the call: see [`apply_write_sets`]).
fn claim_rows<'a>(claims: impl Iterator<Item = &'a ConditionalClaim>) -> Rows<'a> {
    let mut rows = Rows::new(&CONDITIONAL_KEYS);
    for claim in claims {
        rows.push([
            claim.scope_key.as_str().into(),
            claim.resource_type.as_str().into(),
            claim.criteria.as_str().into(),
            claim.id.as_str().into(),
        ]);
    }
    rows
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
    use crate::domain::versions::WriteMethod;

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
    fn a_grant_of_a_key_the_wave_gives_already_becomes_that_row_and_each_other_grant_is_one_row() {
        let (patient, other) = (ResourceId::generate(), ResourceId::generate());
        let mut wave = WaveRows::default();
        wave.fresh_visibility.push(["Patient".into(), patient.as_str().into(), "org|A".into(), "content".into()]);
        wave.visibility.push(["Patient".into(), other.as_str().into(), "org|A".into(), "content".into()]);
        let grant = |id: &ResourceId, key: &str| VisibilityGrant {
            resource_type: ResourceType::Patient,
            id: id.clone(),
            key: key.to_owned(),
        };
        let grants = [grant(&patient, "org|A"), grant(&patient, "org|B"), grant(&patient, "org|B")];
        let granted = wave.grant_rows(grants.iter());
        assert_eq!(granted.len(), 1, "org|A is the wave's row; org|B once");
        let sources = |rows: &mut Rows<'_>| -> Vec<String> {
            rows.rows_mut().map(|row| format!("{:?}|{:?}", row[2], row[3])).collect()
        };
        assert_eq!(sources(&mut wave.fresh_visibility), vec![r#"Text(Some("org|A"))|Text(Some("grant"))"#]);
        assert_eq!(
            sources(&mut wave.visibility),
            vec![r#"Text(Some("org|A"))|Text(Some("content"))"#],
            "another resource's row of the same key is its own"
        );
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
}
