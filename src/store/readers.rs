//! The pool of connections reads go through: SQLite's readers (WAL lets them run beside the
//! writer) or, on PostgreSQL, every connection but the group commit's.
//!
//! Not sqlx's own pool: it tests every connection with a round trip when it is given back (to
//! the SQLite connection's thread, or over the network to PostgreSQL), so each checkout cost
//! one more round trip than its statements, and a request checks out a connection for each of
//! its reads. This pool (deadpool) gives a connection back as it is and tests it only when
//! there is reason to doubt it: it rested more than [`TRUSTED_IDLE`] (a server restart, a
//! firewall's idle cut), or some connection of the process failed since it was last taken
//! (a lost server fails every connection; each is tested before it is used again). A
//! connection to a local SQLite file does not go stale and is tested only after a failure.
//! What a request left unfinished on a connection (a dropped future) sqlx finishes before the
//! connection's next statement, on both databases.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use deadpool::managed::{Manager, Metrics, Object, Pool, PoolError, RecycleResult};
use sqlx::any::AnyConnectOptions;
use sqlx::{AnyConnection, Connection, Executor};

use super::StoreError;

/// How long a PostgreSQL connection may rest in the pool and still be handed out untested.
pub(super) const TRUSTED_IDLE: Duration = Duration::from_secs(1);

/// The pool of reader connections (cheap to clone: one pool).
pub(super) type ReaderPool = Pool<ReaderManager>;

/// A connection of the pool, back in it when dropped. Derefs to the connection.
pub(crate) type Reader = Object<ReaderManager>;

/// Opens reader connections and decides whether one may be handed out again untested.
pub(crate) struct ReaderManager {
    options: AnyConnectOptions,
    /// Statements every new connection runs first (SQLite's pragmas; PostgreSQL's
    /// `statement_timeout`).
    setup: Option<String>,
    /// Whether a connection that rested over [`TRUSTED_IDLE`] is tested (PostgreSQL).
    test_after_idle: bool,
    /// How long [`bounded`] waits for a statement before abandoning it and its connection
    /// (SQLite, which has no statement timeout of its own).
    abandon_after: Option<Duration>,
}

impl Manager for ReaderManager {
    type Type = AnyConnection;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<AnyConnection, sqlx::Error> {
        let mut conn = AnyConnection::connect_with(&self.options).await?;
        if let Some(setup) = &self.setup {
            conn.execute(setup.as_str()).await?;
        }
        Ok(conn)
    }

    async fn recycle(&self, conn: &mut AnyConnection, metrics: &Metrics) -> RecycleResult<sqlx::Error> {
        // When it was last handed out (or opened): how long it has rested, at most.
        let taken = metrics.recycled.unwrap_or(metrics.created);
        let rested = self.test_after_idle && taken.elapsed() > TRUSTED_IDLE;
        if rested || failure_since(taken) {
            conn.ping().await?;
        }
        Ok(())
    }
}

/// The pool, built without connecting (connections open on first use, as sqlx's lazy pools).
pub(super) fn reader_pool(
    options: AnyConnectOptions,
    setup: Option<String>,
    test_after_idle: bool,
    max_connections: u32,
    acquire_timeout: Duration,
    abandon_after: Option<Duration>,
) -> Result<ReaderPool, StoreError> {
    let manager = ReaderManager { options, setup, test_after_idle, abandon_after };
    Pool::builder(manager)
        .max_size(usize::try_from(max_connections).unwrap_or(usize::MAX).max(1))
        .wait_timeout(Some(acquire_timeout))
        .create_timeout(Some(acquire_timeout))
        .recycle_timeout(Some(acquire_timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Config(format!("cannot build the connection pool: {e}")))
}

/// Takes a connection from the pool. A failure to get one (no connection could be opened, or
/// none was free in time) is the database being unavailable: 503, and the next request tries
/// again with a new connection.
pub(super) async fn take(pool: &ReaderPool) -> Result<Reader, StoreError> {
    pool.get().await.map_err(|e| {
        StoreError::from(match e {
            PoolError::Backend(e) => e,
            PoolError::Timeout(_) => sqlx::Error::PoolTimedOut,
            PoolError::Closed => sqlx::Error::PoolClosed,
            other => sqlx::Error::Configuration(other.to_string().into()),
        })
    })
}

/// Runs `statement` on a connection of the pool, under the statement time limit where the
/// database does not enforce one itself. PostgreSQL cancels a statement past its
/// `statement_timeout` (set on every connection). SQLite has no such setting, and sqlx::Any
/// offers no way to interrupt a running SQLite statement (its progress handler needs the
/// SQLite connection type, which `AnyConnection` hides). So on SQLite a statement still
/// running at the limit is abandoned: the request is answered at once
/// (`StoreError::StatementTimeout`), and its connection is taken out of the pool and closed,
/// so that no later request queues behind it. SQLite still finishes the step it is in (until
/// it yields a row or ends) on that connection's thread before the thread ends; what bounds
/// that work is the statement itself (the search limits on parameters and joins).
pub(super) async fn bounded<T>(
    pool: &ReaderPool,
    statement: impl AsyncFnOnce(&mut AnyConnection) -> Result<T, sqlx::Error>,
) -> Result<T, StoreError> {
    let mut conn = take(pool).await?;
    let Some(limit) = pool.manager().abandon_after else {
        return Ok(statement(&mut conn).await?);
    };
    match tokio::time::timeout(limit, statement(&mut conn)).await {
        Ok(result) => Ok(result?),
        Err(_) => {
            // Dropping the connection ends its worker thread after the current step.
            drop(Object::take(conn));
            Err(StoreError::StatementTimeout)
        }
    }
}

/// Closes the pool and each of its idle connections properly (a PostgreSQL connection says
/// goodbye rather than vanishing); connections in use close as they are given back.
pub(super) async fn close(pool: &ReaderPool) {
    pool.close();
    let idle = pool.retain(|_, _| false);
    for conn in idle.removed {
        let _ = conn.close().await;
    }
}

/// When a connection of this process last failed, as microseconds after [`epoch`] (0: never).
static LAST_FAILURE: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Notes an error that may mean a connection is broken: every connection is then tested
/// before it is used again. Anything but the database's answer about the statement itself is
/// suspect, and of those answers the ones that end the session: PostgreSQL's connection
/// exceptions (SQLSTATE class 08) and operator interventions (57: a backend terminated, the
/// server shutting down), which a connection reports once before its socket closes.
pub(super) fn note_failure(error: &sqlx::Error) {
    let suspect = match error {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| code.starts_with("08") || code.starts_with("57")),
        sqlx::Error::RowNotFound
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::Encode(_) => false,
        _ => true,
    };
    if suspect {
        let micros = u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
        LAST_FAILURE.fetch_max(micros, Ordering::Relaxed);
    }
}

/// Whether a connection failed at or after `since`.
fn failure_since(since: Instant) -> bool {
    let last = LAST_FAILURE.load(Ordering::Relaxed);
    last != 0 && epoch() + Duration::from_micros(last) >= since
}
