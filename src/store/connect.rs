//! Opening the database: SQLite file or PostgreSQL server, pragmas, pools and migrations.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, ConnectOptions, Connection, Executor};
use tokio::sync::Notify;

use super::group_commit::{GroupCommit, WriteConnection, POSTGRES_WRITER_LANES};
use super::readers::{reader_pool, take, TRUSTED_IDLE};
use super::readiness::{probe_directory, Readiness};
use super::sqlite_checkpoint::{Checkpointer, WRITER_AUTOCHECKPOINT_PAGES};
use super::{BackendKind, Store, StoreError, StoreInner};

/// Where the data lives. The URL may hold a password, so it is never printed whole.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// An SQLite database file (created on first start).
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL connection URL.
    Postgres(String),
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseUrl::Sqlite(path) => write!(f, "Sqlite({})", path.display()),
            DatabaseUrl::Postgres(_) => f.write_str("Postgres(<redacted>)"),
        }
    }
}

impl DatabaseUrl {
    /// Accepts `postgres://…`, `postgresql://…`, `sqlite://path` or `sqlite:path`.
    pub fn parse(raw: &str) -> Result<Self, StoreError> {
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            Ok(DatabaseUrl::Postgres(raw.to_owned()))
        } else if let Some(path) = raw.strip_prefix("sqlite://").or_else(|| raw.strip_prefix("sqlite:")) {
            let path = path.split('?').next().unwrap_or(path);
            Ok(DatabaseUrl::Sqlite(path.into()))
        } else {
            Err(StoreError::Config("the database URL must start with postgres://, postgresql:// or sqlite:".to_owned()))
        }
    }

    /// The default embedded database inside the data directory.
    pub fn sqlite_in(data_dir: &Path) -> Self {
        DatabaseUrl::Sqlite(data_dir.join("linkbridge.db"))
    }
}

/// Tunables of the connection pools.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// The settle window W of `_lastUpdated` polling: a write whose `last_updated` is more
    /// than W/2 old when it is applied is refused (`StoreError::SettleWindowPassed`).
    pub settle_window: Duration,
    /// The longest one statement may run (`StoreError::StatementTimeout` beyond it); `None`:
    /// unbounded. See [`readers::bounded`](super::readers::bounded) for SQLite.
    pub statement_timeout: Option<Duration>,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            settle_window: Duration::from_secs(5),
            statement_timeout: Some(Duration::from_secs(10)),
        }
    }
}

/// Pragmas every SQLite connection needs. WAL lets readers run beside the writer;
/// `synchronous=FULL` makes every acknowledged commit survive power loss (the WAL is fsynced
/// at each commit); the busy timeout covers checkpoints and a second process. Temporary
/// storage in memory keeps the journal of a savepoint (which copies every page it first
/// touches; the group commit opens them when a batch goes in parts) out of temporary files:
/// a write to a file per page was a sixth of the writer's time.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                              PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
                              PRAGMA temp_store = MEMORY;";

impl Store {
    /// Connects, applies pending migrations and starts the SQLite writer where needed.
    pub async fn connect(url: &DatabaseUrl, settings: &PoolSettings) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        match url {
            DatabaseUrl::Sqlite(path) => connect_sqlite(path, settings).await,
            DatabaseUrl::Postgres(raw) => connect_postgres(raw, settings).await,
        }
    }
}

async fn connect_sqlite(path: &Path, settings: &PoolSettings) -> Result<Store, StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| StoreError::Config(format!("cannot create data directory {}: {e}", parent.display())))?;
    }
    refuse_unwritable(path)?;
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let options = AnyConnectOptions::from_str(&url)?.disable_statement_logging();

    let mut writer_conn = AnyConnection::connect_with(&options).await.map_err(|e| unusable_sqlite(path, e))?;
    writer_conn.execute(SQLITE_PRAGMAS).await.map_err(|e| unusable_sqlite(path, e))?;
    refuse_damaged(&mut writer_conn, path).await?;
    // Checkpoints run in the background (see `sqlite_checkpoint`); this is the backstop.
    writer_conn.execute(format!("PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES}").as_str()).await?;
    // 16 MiB of page cache for the writer (the default is 2 MiB): a batch touches pages of
    // every table and index, and a page evicted between batches is read back from the log.
    writer_conn.execute("PRAGMA cache_size = -16384").await?;
    sqlx::migrate!("./migrations/sqlite").run(&mut writer_conn).await?;

    // A connection to a local file does not go stale: tested only after a failure.
    let readers = reader_pool(
        options,
        Some(SQLITE_PRAGMAS.to_owned()),
        false,
        settings.max_connections,
        settings.acquire_timeout,
        settings.statement_timeout,
    )?;
    let checkpointer = Checkpointer::start(readers.clone());
    let outbox_signal = Arc::new(Notify::new());
    let writer = GroupCommit::start(
        WriteConnection::Sqlite { conn: Box::new(writer_conn), checkpointer },
        1,
        settings.settle_window,
        Arc::clone(&outbox_signal),
    );
    Ok(Store {
        inner: std::sync::Arc::new(StoreInner {
            pool: readers,
            kind: BackendKind::Sqlite,
            writer,
            settle_window: settings.settle_window,
            outbox_signal,
            known_roles: Default::default(),
            readiness: Readiness::new(Some(path.to_path_buf())),
        }),
    })
}

/// Refuses an SQLite database that could not be written: its directory must take new files
/// (SQLite creates its log and journal there) and an existing file must open for writing.
/// Otherwise SQLite opens the file read-only without a word, the server starts and reports
/// ready, and every write fails. Tried rather than read from permission bits, which root
/// ignores where an immutable file or a read-only mount still refuses.
fn refuse_unwritable(path: &Path) -> Result<(), StoreError> {
    let directory = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    probe_directory(directory).map_err(|e| {
        StoreError::Unusable(format!(
            "the data directory {} is not writable ({e}): the SQLite database {} needs to write there",
            directory.display(),
            path.display()
        ))
    })?;
    match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::Unusable(format!(
            "the SQLite database {} cannot be opened for writing: {e}",
            path.display()
        ))),
    }
}

/// An SQLite file the first statements fail on (damaged, not a database, encrypted), named.
fn unusable_sqlite(path: &Path, error: sqlx::Error) -> StoreError {
    const CORRUPT: &str = "11";
    const NOT_A_DATABASE: &str = "26";
    let what = match &error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some(CORRUPT) => "is damaged",
        sqlx::Error::Database(db) if db.code().as_deref() == Some(NOT_A_DATABASE) => "is not an SQLite database",
        _ => "cannot be opened",
    };
    StoreError::Unusable(format!("the SQLite database {} {what} ({error}); restore it from a backup", path.display()))
}

/// Refuses a damaged SQLite file rather than serve from it. `PRAGMA quick_check` reads every
/// page once and checks each B-tree's structure and records (not that every index matches
/// its table, which `integrity_check` adds at the cost of a lookup per index entry): its time
/// grows with the file, about a second per few hundred megabytes read from a cold cache.
async fn refuse_damaged(conn: &mut AnyConnection, path: &Path) -> Result<(), StoreError> {
    use sqlx::Row;
    let rows =
        sqlx::query("PRAGMA quick_check(5)").fetch_all(&mut *conn).await.map_err(|e| unusable_sqlite(path, e))?;
    let findings: Vec<String> = rows.iter().filter_map(|row| row.try_get::<String, _>(0).ok()).collect();
    if findings.len() == 1 && findings[0] == "ok" {
        return Ok(());
    }
    Err(StoreError::Unusable(format!(
        "the SQLite database {} is damaged (PRAGMA quick_check: {}); restore it from a backup",
        path.display(),
        if findings.is_empty() { "no answer".to_owned() } else { findings.join("; ") }
    )))
}

async fn connect_postgres(raw: &str, settings: &PoolSettings) -> Result<Store, StoreError> {
    let options = AnyConnectOptions::from_str(raw)?.disable_statement_logging();
    // Every connection, the writer's too, has the statement timeout: PostgreSQL cancels a
    // statement that runs past it (SQLSTATE 57014, `StoreError::StatementTimeout`).
    let reader_statement_timeout = format!(
        "SET statement_timeout = {}",
        settings.statement_timeout.map_or(0, |limit| limit.as_millis().clamp(1, i32::MAX as u128))
    );
    let pool = reader_pool(
        options.clone(),
        Some(reader_statement_timeout.clone()),
        true,
        settings.max_connections,
        settings.acquire_timeout,
        None,
    )?;
    // The writer's own connections, outside the request pool: queued behind every waiting
    // request's reads, the group commit would wait longest when most is waiting on it. One
    // per lane of the writer (see `group_commit::POSTGRES_WRITER_LANES`), in a pool rather than
    // bare, so that one lost to a server restart is replaced.
    // It plans without bitmap scans and, where any other way exists, without scans of whole
    // tables: what it reads are the rows of the resources it is about to change, a few per
    // key. A bitmap scan never marks the index entries of rows that earlier versions deleted
    // as dead, so each update of a resource would visit all of them again, and a scan of a
    // table is what a join with rows PostgreSQL cannot count turned into (see
    // `rows::delete_owned`). And it plans each prepared statement once, generically: with its
    // values bound, PostgreSQL chose to plan the batch's search of 32 conditional creates
    // afresh at every run (3 ms each time, a fifth of a batch), and every statement the writer
    // runs reads by key, whatever the values.
    let statement_timeout = reader_statement_timeout.clone();
    let writer_pool = postgres_pool_options(POSTGRES_WRITER_LANES as u32, settings.acquire_timeout)
        .after_connect(move |conn, _| {
            let statement_timeout = statement_timeout.clone();
            Box::pin(async move {
                conn.execute(
                    "SET enable_bitmapscan = off; SET enable_seqscan = off; SET plan_cache_mode = force_generic_plan",
                )
                .await?;
                conn.execute(statement_timeout.as_str()).await?;
                Ok(())
            })
        })
        .connect_lazy_with(options);
    // sqlx takes a PostgreSQL advisory lock while migrating, so replicas starting together
    // apply each migration once. This first connection also fails the start at once if the
    // server cannot be reached.
    // A migration may rewrite a large table: it is not held to the requests' timeout.
    let mut migrating = take(&pool).await?;
    migrating.execute("SET statement_timeout = 0").await?;
    sqlx::migrate!("./migrations/postgres").run(&mut *migrating).await?;
    migrating.execute(reader_statement_timeout.as_str()).await?;
    drop(migrating);
    let outbox_signal = Arc::new(Notify::new());
    let writer = GroupCommit::start(
        WriteConnection::Postgres(writer_pool),
        POSTGRES_WRITER_LANES,
        settings.settle_window,
        Arc::clone(&outbox_signal),
    );
    Ok(Store {
        inner: std::sync::Arc::new(StoreInner {
            pool,
            kind: BackendKind::Postgres,
            writer,
            settle_window: settings.settle_window,
            outbox_signal,
            known_roles: Default::default(),
            readiness: Readiness::new(None),
        }),
    })
}

/// The group commit's PostgreSQL pool (of one), which tests its connection before a batch
/// only if it sat idle for longer than [`TRUSTED_IDLE`]: sqlx tests it again anyway when the
/// batch gives it back.
fn postgres_pool_options(max_connections: u32, acquire_timeout: Duration) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > TRUSTED_IDLE {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}
