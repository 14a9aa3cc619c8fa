//! The only module that knows SQL. One implementation serves SQLite and PostgreSQL: the
//! statements are written in the dialect both accept (`$n` placeholders, `ON CONFLICT`,
//! `RETURNING`) and run through `sqlx::Any`, with the few backend differences named where
//! they occur. The store contract tests run every operation against both databases.
//!
//! Writes are described as a [`WriteSet`]: everything one request changes (resource versions,
//! index rows, visibility, conditional-create claims) with its preconditions. A write set is
//! applied atomically or not at all. On both databases a writer applies the write sets of
//! concurrent requests in one shared transaction, each under its own savepoint where they
//! cannot go together, so one commit makes many requests durable; on PostgreSQL in two lanes,
//! two such transactions at once at most (see [`group_commit`]).
//! Reads take their connections from a pool of their own (see [`readers`]).

mod apply;
mod audit;
mod clients;
mod connect;
mod events;
mod group_commit;
mod param_keys;
mod readers;
mod readiness;
mod reads;
mod rows;
mod search;
mod sqlite_checkpoint;
mod subscriptions;
mod write_set;

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::domain::ids::ResourceId;
use crate::domain::resource_type::ResourceType;

pub use clients::{ClientRecord, RoleAndClaim};
pub use connect::{DatabaseUrl, PoolSettings};
pub use group_commit::{CommitObserver, GroupCommitTotals};
pub use reads::ConditionalKey;
pub use search::{ConditionalLookup, Position, SearchHit, SearchPage, Walk, SMALL_SET};
pub use subscriptions::{ClaimedEvent, DeliveryOutcome, OutboxBacklog, OutboxRow, OutboxStats, SubscriptionRow};
pub use write_set::{
    ConditionalClaim, DeletedContent, NoMatchRequired, OutboxEntry, OutboxKind, Precondition, RequestRecord,
    ResourceWrite, SubscriptionChange, SubscriptionRecord, VisibilityGrant, WriteSet,
};
// Plain values of `domain` the store's API takes and returns, named here too for its callers.
pub use crate::domain::audit::StoredAuditEvent;
pub use crate::domain::versions::{HistoryQuery, StoredVersion, WriteMethod};

use group_commit::GroupCommit;

/// Everything that can go wrong in the store. Conflicts are expected outcomes the service
/// turns into 409/412 answers; `Database` is a fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A resource write's precondition did not hold (someone else wrote first).
    #[error("{resource_type}/{id} was changed concurrently (expected a different version)")]
    VersionConflict { resource_type: String, id: String },
    /// A conditional-create claim was taken by a concurrent request.
    #[error("the conditional create key was claimed by a concurrent request")]
    ConditionalClaimTaken,
    /// A request with this client's X-Request-ID already wrote.
    #[error("the X-Request-ID was already used")]
    DuplicateRequest,
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// The database cannot be reached or cannot write just now: the connection was lost or
    /// refused (a restart, terminated backends, no connection free in time), the server is
    /// shutting down or read-only, the disk is full. Clients are told to retry (503 with
    /// `Retry-After`); broken connections are replaced on the next request (see [`readers`]).
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("the shared commit failed: {0}")]
    CommitFailed(String),
    #[error("the database writer has stopped")]
    WriterGone,
    /// The database settings cannot be used: a URL of another scheme, a data directory that
    /// cannot be created, a pool the settings cannot build.
    #[error("invalid database configuration: {0}")]
    Config(String),
    /// A fault of the store's own, not of the request nor of the database's availability: a
    /// statement that cannot be built, a row that cannot be read back, a write set that breaks
    /// what the store expects of it. A 500; the cause goes to the log only.
    #[error("internal store error: {0}")]
    Internal(String),
    /// The database cannot be used as it is found at start-up: a damaged SQLite file, a file
    /// that is not a database, a file or directory that cannot be written.
    #[error("{0}")]
    Unusable(String),
    /// The write reached the database later than half the settle window after its
    /// `meta.lastUpdated` was stamped; it was not applied and may be retried as it is (the
    /// retry is stamped afresh). See `service::search` for why late commits are refused.
    #[error("the write was stamped {late_by_ms} ms before it could commit, more than the settle window allows")]
    SettleWindowPassed { late_by_ms: i64 },
    /// A statement ran past the `statement_timeout_ms` setting and was cancelled (PostgreSQL)
    /// or abandoned (SQLite, see `readers::bounded`).
    #[error("a database statement ran past the statement timeout")]
    StatementTimeout,
}

/// PostgreSQL's `query_canceled`: `statement_timeout` (or an operator) cancelled the statement.
const QUERY_CANCELED: &str = "57014";

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &error {
            // The statement was cut, the connection is sound.
            if db.code().as_deref() == Some(QUERY_CANCELED) {
                return StoreError::StatementTimeout;
            }
        }
        readers::note_failure(&error);
        if is_unavailability(&error) {
            StoreError::Unavailable(error.to_string())
        } else {
            StoreError::Database(error)
        }
    }
}

impl StoreError {
    /// Whether the failure says nothing about the request, only that the database cannot
    /// serve it just now: the request may be retried as it is.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::WriterGone)
    }

    /// The error to answer each request of a batch that failed with `self` (one error, many
    /// requests): unavailability stays that, anything else is the commit failing.
    pub(crate) fn for_each_request(&self) -> StoreError {
        match self {
            StoreError::Unavailable(why) => StoreError::Unavailable(why.clone()),
            other => StoreError::CommitFailed(other.to_string()),
        }
    }
}

/// Whether `error` means the database cannot serve anything just now, rather than that this
/// statement failed: the connection is lost or was never made (I/O, TLS, the pool's timeout or
/// closing, the SQLite connection's thread gone); PostgreSQL's connection exceptions (SQLSTATE
/// class 08), a backend terminated or the server shutting down or starting (57P01-57P03), a
/// read-only transaction where a write was meant (25006: a standby, or
/// `default_transaction_read_only`), insufficient resources (class 53: disk full, out of
/// memory, too many connections); SQLite busy past its timeout, read-only, I/O errors, disk
/// full, a file it cannot open. A statement cancelled by its timeout (57014) is not: it was the
/// statement's own fault.
pub(crate) fn is_unavailability(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let Some(code) = db.code() else { return false };
            if db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().is_some() {
                code.starts_with("08")
                    || code.starts_with("53")
                    || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "25006")
            } else {
                // SQLite's extended result code: the primary code is its low byte.
                const BUSY: i64 = 5;
                const READONLY: i64 = 8;
                const IOERR: i64 = 10;
                const FULL: i64 = 13;
                const CANTOPEN: i64 = 14;
                code.parse::<i64>()
                    .is_ok_and(|extended| matches!(extended & 0xff, BUSY | READONLY | IOERR | FULL | CANTOPEN))
            }
        }
        _ => false,
    }
}

/// Which database the store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

/// A cheap-to-clone handle on the database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    /// Readers (SQLite, WAL lets them run beside the writer) or every connection but the
    /// writer's (PostgreSQL).
    pool: readers::ReaderPool,
    kind: BackendKind,
    /// Every write set goes through it (see [`group_commit`]).
    writer: GroupCommit,
    /// See [`PoolSettings::settle_window`].
    settle_window: std::time::Duration,
    /// Wakes this process's delivery worker when a commit adds notifications.
    outbox_signal: Arc<tokio::sync::Notify>,
    /// Registered roles lately found (see [`clients`]).
    known_roles: clients::KnownRoles,
    /// Whether a write could be committed, lately found (see [`readiness`]).
    readiness: readiness::Readiness,
}

impl Store {
    pub fn kind(&self) -> BackendKind {
        self.inner.kind
    }

    /// Connections of the pool (readers on SQLite, all on PostgreSQL): open, and idle of those.
    pub fn pool_connections(&self) -> (u32, usize) {
        let status = self.inner.pool.status();
        (u32::try_from(status.size).unwrap_or(u32::MAX), status.available)
    }

    /// What the group commit has committed so far in this process (for `/metrics`).
    pub fn group_commit_totals(&self) -> GroupCommitTotals {
        self.inner.writer.totals()
    }

    /// Tells `observer` from now on how long each write waits for its batch and how long each
    /// batch takes (for `/metrics`).
    pub fn observe_commits(&self, observer: Arc<dyn CommitObserver>) {
        self.inner.writer.observe(observer);
    }

    /// Answers whether the database can be reached (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&mut *self.reader().await?).await?;
        Ok(())
    }

    /// Applies a write set atomically: all of it, or none of it and an error.
    pub async fn commit(&self, write_set: WriteSet) -> Result<(), StoreError> {
        self.inner.writer.submit(write_set).await
    }

    /// Resolves when a commit of this process has added notifications (other replicas' are
    /// found by polling).
    pub async fn outbox_changed(&self) {
        self.inner.outbox_signal.notified().await;
    }

    /// Runs `job` in a write transaction: on SQLite through the single writer (its own
    /// savepoint in the next shared commit, i.e. an immediate transaction), on PostgreSQL in a
    /// transaction of its own (jobs are few: they need no shared commit). Returns the job's value once the commit is durable.
    pub(crate) async fn in_write_transaction<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut sqlx::AnyConnection) -> BoxFuture<'c, Result<T, StoreError>> + Send + 'static,
    {
        match self.kind() {
            BackendKind::Sqlite => self.on_writer(job).await,
            BackendKind::Postgres => {
                let mut conn = self.reader().await?;
                let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                let value = job(&mut tx).await?;
                tx.commit().await?;
                Ok(value)
            }
        }
    }

    /// Runs `job` on the group commit's own connection, in its own savepoint of the next
    /// shared commit; returns the job's value once that commit is durable.
    async fn on_writer<T, F>(&self, job: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut sqlx::AnyConnection) -> BoxFuture<'c, Result<T, StoreError>> + Send + 'static,
    {
        let slot = Arc::new(std::sync::Mutex::new(None));
        let out = Arc::clone(&slot);
        self.inner
            .writer
            .run(Box::new(move |conn| {
                Box::pin(async move {
                    let value = job(conn).await?;
                    if let Ok(mut guard) = out.lock() {
                        *guard = Some(value);
                    }
                    Ok(())
                })
            }))
            .await?;
        let value = slot.lock().ok().and_then(|mut guard| guard.take());
        value.ok_or(StoreError::WriterGone)
    }

    /// The writer's plans for an update's deletes of the old index and visibility rows of
    /// `resources`, one line per plan node (`EXPLAIN QUERY PLAN` on SQLite, `EXPLAIN` on
    /// PostgreSQL), planned on the writer's own connection with its settings. For the plan
    /// regression test: each owner must be an index probe, never a scan of a table or a
    /// bitmap scan (see `rows::delete_owned`).
    pub async fn explain_update_deletes(
        &self,
        resources: &[(ResourceType, ResourceId)],
    ) -> Result<Vec<String>, StoreError> {
        let resources = resources.to_vec();
        self.on_writer(move |conn| Box::pin(async move { apply::explain_update_deletes(conn, &resources).await })).await
    }

    /// Stops the writer after it has committed what it holds, and closes the pool.
    pub async fn close(&self) {
        self.inner.writer.shutdown().await;
        readers::close(&self.inner.pool).await;
    }

    /// The settle window W: writes commit within W/2 of their `last_updated`, or not at all.
    pub fn settle_window(&self) -> std::time::Duration {
        self.inner.settle_window
    }

    /// A connection to read through (on PostgreSQL also to write outside the group commit),
    /// back in the pool when dropped.
    pub(crate) async fn reader(&self) -> Result<readers::Reader, StoreError> {
        readers::take(&self.inner.pool).await
    }

    /// Runs one read statement that may be slow (a search, a history) under the statement
    /// time limit on both databases (see [`readers::bounded`]).
    pub(crate) async fn bounded_read<T>(
        &self,
        statement: impl AsyncFnOnce(&mut sqlx::AnyConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, StoreError> {
        readers::bounded(&self.inner.pool, statement).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_or_refused_connection_is_unavailability_and_a_statements_own_failure_is_not() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(is_unavailability(&sqlx::Error::Io(refused)));
        assert!(is_unavailability(&sqlx::Error::PoolTimedOut));
        assert!(is_unavailability(&sqlx::Error::PoolClosed));
        assert!(is_unavailability(&sqlx::Error::WorkerCrashed));
        assert!(!is_unavailability(&sqlx::Error::RowNotFound));
        assert!(!is_unavailability(&sqlx::Error::ColumnNotFound("id".to_owned())));
        assert!(StoreError::from(sqlx::Error::PoolTimedOut).is_unavailable());
        assert!(!StoreError::from(sqlx::Error::RowNotFound).is_unavailable());
    }
}
