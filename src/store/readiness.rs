//! Whether the database can take writes now (for `/readyz`), proved cheaply and remembered for
//! a moment, so that a storm of probes costs one check a second.
//!
//! Reaching the database is not enough: a server whose disk is full, whose SQLite file became
//! read-only or whose PostgreSQL is a standby (or `default_transaction_read_only`) answers
//! reads and fails every write. The check therefore goes through the writer itself (an empty
//! job of the group commit: its lane's connection begins and commits a transaction, on SQLite
//! `BEGIN IMMEDIATE`, which takes the write lock), asks PostgreSQL on that connection whether
//! its transactions may write, and on SQLite opens the database's files for writing and
//! writes, syncs and removes a small file beside them (opening a file for writing fails for an
//! immutable file or a read-only mount, even as root; the write fails on a full disk).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sqlx::Row;
use tokio::sync::Mutex;

use super::{BackendKind, Store, StoreError};

/// How long a check's outcome answers further probes.
const REMEMBERED_FOR: Duration = Duration::from_secs(1);

/// How long a check may take before the database counts as not answering.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// How much the probe file beside an SQLite database holds: a page, so that a full disk
/// refuses it.
const PROBE_BYTES: usize = 4096;

/// The last check's outcome and when it was made; the lock makes concurrent probes wait for
/// one check rather than each running its own.
pub(super) struct Readiness {
    /// The SQLite database file, whose directory and files are checked (`None`: PostgreSQL).
    sqlite_file: Option<PathBuf>,
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Readiness {
    pub(super) fn new(sqlite_file: Option<PathBuf>) -> Self {
        Readiness { sqlite_file, last: Mutex::new(None) }
    }
}

impl Store {
    /// Answers whether a write could be committed now; the error says why not. At most one
    /// check a second (see the module's documentation).
    pub async fn check_writable(&self) -> Result<(), StoreError> {
        let readiness = &self.inner.readiness;
        let mut last = readiness.last.lock().await;
        if let Some((at, outcome)) = &*last {
            if at.elapsed() < REMEMBERED_FOR {
                return outcome.clone().map_err(StoreError::Unavailable);
            }
        }
        let twice = async {
            match self.prove_writable().await {
                // The writer's connection may have been lost since its last batch: the retry
                // has a new one.
                Err(StoreError::Unavailable(_)) => self.prove_writable().await,
                other => other,
            }
        };
        let outcome = match tokio::time::timeout(CHECK_TIMEOUT, twice).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(StoreError::Unavailable(why))) => Err(why),
            Ok(Err(other)) => Err(other.to_string()),
            Err(_) => Err(format!("the database did not answer within {CHECK_TIMEOUT:?}")),
        };
        *last = Some((Instant::now(), outcome.clone()));
        outcome.map_err(StoreError::Unavailable)
    }

    async fn prove_writable(&self) -> Result<(), StoreError> {
        if let Some(file) = self.inner.readiness.sqlite_file.clone() {
            tokio::task::spawn_blocking(move || sqlite_files_writable(&file))
                .await
                .map_err(|e| StoreError::Unavailable(format!("the file check did not finish: {e}")))??;
        }
        let kind = self.kind();
        self.inner
            .writer
            .run(Box::new(move |conn| {
                Box::pin(async move {
                    if kind == BackendKind::Postgres {
                        // On the writer's own connection, in its transaction: what a write
                        // there would meet.
                        let row = sqlx::query(
                            "SELECT CAST(CASE WHEN pg_is_in_recovery() THEN 1 ELSE 0 END AS BIGINT), \
                             current_setting('transaction_read_only')",
                        )
                        .fetch_one(&mut *conn)
                        .await?;
                        let (in_recovery, read_only): (i64, String) = (row.try_get(0)?, row.try_get(1)?);
                        if in_recovery == 1 {
                            return Err(StoreError::Unavailable(
                                "the PostgreSQL server is a standby (in recovery): it cannot write".to_owned(),
                            ));
                        }
                        if read_only == "on" {
                            return Err(StoreError::Unavailable(
                                "the database's transactions are read-only (default_transaction_read_only)".to_owned(),
                            ));
                        }
                    }
                    Ok(())
                })
            }))
            .await
    }
}

/// The SQLite database's files can be opened for writing and its directory takes a new file.
fn sqlite_files_writable(file: &Path) -> Result<(), StoreError> {
    let unwritable =
        |what: &Path, e: std::io::Error| StoreError::Unavailable(format!("{} cannot be written: {e}", what.display()));
    let mut wal = file.as_os_str().to_owned();
    wal.push("-wal");
    for path in [file.to_path_buf(), PathBuf::from(wal)] {
        match std::fs::OpenOptions::new().write(true).open(&path) {
            Ok(_) => {}
            // The log exists only while connections are open; the database file always.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path != file => {}
            Err(e) => return Err(unwritable(&path, e)),
        }
    }
    let directory = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    probe_directory(directory).map_err(|e| unwritable(directory, e))
}

/// Creates, fills, syncs and removes a file in `directory`: what SQLite needs of it (its log
/// and journal files are created there).
pub(super) fn probe_directory(directory: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let probe = directory.join(format!(".linkbridge-write-probe-{}", uuid::Uuid::new_v4().simple()));
    let written = std::fs::OpenOptions::new().write(true).create_new(true).open(&probe).and_then(|mut f| {
        f.write_all(&[0; PROBE_BYTES])?;
        f.sync_all()
    });
    let removed = std::fs::remove_file(&probe);
    written?;
    // A probe left behind where it was created is harmless, but say so if it cannot go.
    removed
}
