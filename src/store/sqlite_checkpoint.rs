//! WAL checkpoints off the writer. SQLite checkpoints automatically inside the COMMIT that
//! takes the write-ahead log past 1,000 pages: copying the log into the database file and
//! fsyncing it made every third shared commit take 15-20 ms instead of 5, and every request
//! waiting on that commit (reads too: they wait for their access record) waited with it.
//! Here the writer's automatic checkpoint is pushed far out (a backstop should this task fall
//! behind) and this task checkpoints from a reader connection instead, `PASSIVE`ly: it never
//! takes the write lock, so the writer goes on committing meanwhile. A write transaction that
//! starts after a complete checkpoint rewinds the log, so it stays small.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::readers::ReaderPool;

/// Pages of write-ahead log after which the writer checkpoints inside its own COMMIT: the
/// backstop, should the background checkpoints fall behind (SQLite's default is 1,000).
pub(super) const WRITER_AUTOCHECKPOINT_PAGES: u32 = 20_000;

/// The shortest time between two background checkpoints: each ends with an fsync of the
/// database file, which competes with the writer's fsyncs of the log.
const MIN_INTERVAL: Duration = Duration::from_millis(200);

pub(super) struct Checkpointer {
    committed: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Checkpointer {
    pub(super) fn start(pool: ReaderPool) -> Self {
        let committed = Arc::new(Notify::new());
        let task = tokio::spawn(run(pool, Arc::clone(&committed)));
        Checkpointer { committed, task }
    }

    /// Tells the checkpointer the log has grown.
    pub(super) fn committed(&self) {
        self.committed.notify_one();
    }
}

/// The task stops with its checkpointer, closed or dropped with the store.
impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(pool: ReaderPool, committed: Arc<Notify>) {
    loop {
        committed.notified().await;
        let checkpoint = async {
            let mut conn = super::readers::take(&pool).await?;
            sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&mut *conn).await?;
            Ok::<_, super::StoreError>(())
        };
        match checkpoint.await {
            Ok(_) => {}
            // The next commit tries again; the writer's backstop keeps the log bounded.
            Err(e) => tracing::warn!(error = %e, "background WAL checkpoint failed"),
        }
        tokio::time::sleep(MIN_INTERVAL).await;
    }
}
