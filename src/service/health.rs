//! The process's health as its operator watches it: whether it can take traffic (`/readyz`)
//! and the gauges of its database and outbox (`/metrics`). Reads only; it changes nothing.

use crate::domain::instant::Instant;
use crate::metrics::Snapshot;
use crate::store::Store;

use super::ServiceError;

/// Why the process cannot take traffic now: what failed, and the database's own words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady {
    /// `database unreachable` or `database cannot write`.
    pub status: &'static str,
    pub reason: String,
}

/// Readiness and gauges over one store.
#[derive(Clone)]
pub struct HealthService {
    store: Store,
}

impl HealthService {
    pub fn new(store: Store) -> Self {
        HealthService { store }
    }

    /// Whether the database answers and a write could commit now (not a full disk, a read-only
    /// file or a standby: see `store::readiness`). A process that can only read is not ready:
    /// it is better taken out of rotation than failing every write it is sent.
    pub async fn check_readiness(&self) -> Result<(), NotReady> {
        // A pooled connection lost since its last use (a restart, terminated backends) is
        // replaced on the next try: only a second failure says the database cannot be reached.
        let reached = match self.store.ping().await {
            Err(e) if e.is_unavailable() => self.store.ping().await,
            other => other,
        };
        let checked = match reached {
            Ok(()) => self.store.check_writable().await.map_err(|e| ("database cannot write", e)),
            Err(e) => Err(("database unreachable", e)),
        };
        checked.map_err(|(status, e)| NotReady { status, reason: e.to_string() })
    }

    /// The gauges `/metrics` shows beside the request counters: the connection pool, the
    /// group commit's totals in this process and the outbox backlog.
    pub async fn metrics_snapshot(&self) -> Result<Snapshot, ServiceError> {
        let (pool_open, pool_idle) = self.store.pool_connections();
        let group_commit = self.store.group_commit_totals();
        let outbox = self.store.outbox_backlog().await?;
        let oldest_age = outbox
            .oldest_pending
            .map_or(0.0, |oldest| (Instant::now().micros().saturating_sub(oldest.micros()) as f64 / 1e6).max(0.0));
        Ok(Snapshot {
            pool_open,
            pool_idle,
            outbox_pending: outbox.pending,
            outbox_dead: outbox.dead,
            outbox_oldest_pending_age_secs: oldest_age,
            outbox_delivery_failures: outbox.failures,
            group_commit_batches: group_commit.batches,
            group_commit_write_sets: group_commit.write_sets,
            group_commit_parallel_batches: group_commit.parallel_batches,
        })
    }
}
