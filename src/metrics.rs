//! Prometheus metrics of one process, served at `/metrics`: requests by route, method and
//! status with their latency, access tokens refused, webhook delivery outcomes, and (read at
//! scrape time) the database pool and the outbox. Labels are bounded sets (route templates,
//! resource types, fixed reasons), never ids or anything about a patient.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    /// `resource_server` (a bearer token) or `token_endpoint` (a token request).
    at: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

type LatencyFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// What the outbox and the pool looked like at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    pub pool_open: u32,
    pub pool_idle: usize,
    pub outbox_pending: i64,
    pub outbox_dead: i64,
    pub outbox_oldest_pending_age_secs: f64,
    pub outbox_delivery_failures: i64,
    /// Batches the group commit has committed in this process, and the write sets they held.
    pub group_commit_batches: u64,
    pub group_commit_write_sets: u64,
    /// Of those batches, the ones begun while another lane of the writer was committing.
    pub group_commit_parallel_batches: u64,
}

/// The process's metrics; cheap to clone (shared).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: LatencyFamily,
    token_refusals: Family<ReasonLabels, Counter>,
    deliveries: Family<OutcomeLabels, Counter>,
    pool_connections: Family<StateLabels, Gauge>,
    outbox_events: Family<StateLabels, Gauge>,
    outbox_oldest_pending_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    outbox_delivery_failures: Gauge,
    group_commit_batches: Counter,
    group_commit_write_sets: Counter,
    group_commit_parallel_batches: Counter,
    group_commit_wait: Histogram,
    group_commit_batch_duration: Histogram,
    group_commit_batch_size: Histogram,
    /// Brings the three counters above up to the store's totals one scrape at a time.
    group_commit_sync: std::sync::Mutex<()>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 16 s: loopback reads sit at the bottom, a slow commit near the top.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("linkbridge");
        let requests: LatencyFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "HTTP requests by route template, method and status, with their latency",
            requests.clone(),
        );
        let token_refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "access_token_refusals",
            "Access tokens refused at the resource server and token requests refused at the token endpoint",
            token_refusals.clone(),
        );
        let deliveries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts by this process, by outcome",
            deliveries.clone(),
        );
        let pool_connections = Family::<StateLabels, Gauge>::default();
        registry.register("db_pool_connections", "Database pool connections (open, idle)", pool_connections.clone());
        let outbox_events = Family::<StateLabels, Gauge>::default();
        registry.register(
            "outbox_events",
            "Notifications in the outbox (whole database, every replica reports the same)",
            outbox_events.clone(),
        );
        let outbox_oldest_pending_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "outbox_oldest_pending_age_seconds",
            "Age of the oldest notification not yet delivered (0 when none)",
            outbox_oldest_pending_age.clone(),
        );
        let outbox_delivery_failures = Gauge::default();
        registry.register(
            "outbox_delivery_failures",
            "Failed delivery attempts of the notifications not yet delivered, pending or dead (whole database)",
            outbox_delivery_failures.clone(),
        );
        let group_commit_batches = Counter::default();
        registry.register(
            "group_commit_batches",
            "Transactions the group commit ran for this process's writes and access records",
            group_commit_batches.clone(),
        );
        let group_commit_write_sets = Counter::default();
        registry.register(
            "group_commit_write_sets",
            "Write sets (changes and access records) those transactions held: divided by the batches, the mean batch",
            group_commit_write_sets.clone(),
        );
        let group_commit_parallel_batches = Counter::default();
        registry.register(
            "group_commit_parallel_batches",
            "Of those transactions, the ones begun while another of the writer's lanes was committing (PostgreSQL)",
            group_commit_parallel_batches.clone(),
        );
        let group_commit_wait = latency_histogram();
        registry.register(
            "group_commit_wait_seconds",
            "How long each write set waited in the group commit's queue for its batch to begin",
            group_commit_wait.clone(),
        );
        let group_commit_batch_duration = latency_histogram();
        registry.register(
            "group_commit_batch_duration_seconds",
            "How long each batch took, from its beginning until its requests were answered (durable)",
            group_commit_batch_duration.clone(),
        );
        // 1 to 512 write sets, the most a batch holds.
        let group_commit_batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register(
            "group_commit_batch_write_sets",
            "How many write sets each batch held",
            group_commit_batch_size.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                requests,
                token_refusals,
                deliveries,
                pool_connections,
                outbox_events,
                outbox_oldest_pending_age,
                outbox_delivery_failures,
                group_commit_batches,
                group_commit_write_sets,
                group_commit_parallel_batches,
                group_commit_wait,
                group_commit_batch_duration,
                group_commit_batch_size,
                group_commit_sync: std::sync::Mutex::new(()),
            }),
        }
    }

    /// One answered request; `route` is the route template (`/Task/{id}`), never the raw path.
    pub fn observe_request(&self, route: String, method: &str, status: u16, seconds: f64) {
        let labels = RequestLabels { route, method: method.to_owned(), status };
        self.inner.requests.get_or_create(&labels).observe(seconds);
    }

    pub fn token_refused(&self, at: &'static str, reason: &'static str) {
        self.inner.token_refusals.get_or_create(&ReasonLabels { at, reason }).inc();
    }

    pub fn delivery(&self, outcome: &'static str) {
        self.inner.deliveries.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// The text exposition format, with the scrape-time figures of `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> Result<String, std::fmt::Error> {
        let inner = &self.inner;
        let pool_open = i64::from(snapshot.pool_open);
        inner.pool_connections.get_or_create(&StateLabels { state: "open" }).set(pool_open);
        inner.pool_connections.get_or_create(&StateLabels { state: "idle" }).set(snapshot.pool_idle as i64);
        inner.outbox_events.get_or_create(&StateLabels { state: "pending" }).set(snapshot.outbox_pending);
        inner.outbox_events.get_or_create(&StateLabels { state: "dead" }).set(snapshot.outbox_dead);
        inner.outbox_oldest_pending_age.set(snapshot.outbox_oldest_pending_age_secs);
        inner.outbox_delivery_failures.set(snapshot.outbox_delivery_failures);
        if let Ok(_one_scrape_at_a_time) = inner.group_commit_sync.lock() {
            for (counter, total) in [
                (&inner.group_commit_batches, snapshot.group_commit_batches),
                (&inner.group_commit_write_sets, snapshot.group_commit_write_sets),
                (&inner.group_commit_parallel_batches, snapshot.group_commit_parallel_batches),
            ] {
                counter.inc_by(total.saturating_sub(counter.get()));
            }
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &inner.registry)?;
        Ok(text)
    }
}

impl crate::store::CommitObserver for Metrics {
    fn write_set_waited(&self, waited: std::time::Duration) {
        self.inner.group_commit_wait.observe(waited.as_secs_f64());
    }

    fn batch_committed(&self, write_sets: usize, took: std::time::Duration) {
        self.inner.group_commit_batch_duration.observe(took.as_secs_f64());
        self.inner.group_commit_batch_size.observe(write_sets as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_route_method_and_status_with_latency_buckets() {
        let metrics = Metrics::new();
        metrics.observe_request("/Task/{id}".into(), "GET", 200, 0.002);
        metrics.observe_request("/Task/{id}".into(), "GET", 200, 0.004);
        metrics.token_refused("resource_server", "expired");
        let text = metrics.render(&Snapshot { outbox_pending: 3, ..Snapshot::default() }).expect("renders");
        assert!(
            text.contains(
                r#"linkbridge_http_request_duration_seconds_count{route="/Task/{id}",method="GET",status="200"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"linkbridge_http_request_duration_seconds_bucket{le="0.004""#)
                || text.contains("le=\"0.004\"")
        );
        assert!(
            text.contains(r#"linkbridge_access_token_refusals_total{at="resource_server",reason="expired"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"linkbridge_outbox_events{state="pending"} 3"#), "{text}");
    }

    #[test]
    fn the_group_commits_waits_batch_durations_and_batch_sizes_are_histograms() {
        use crate::store::CommitObserver;
        use std::time::Duration;
        let metrics = Metrics::new();
        metrics.write_set_waited(Duration::from_millis(3));
        metrics.write_set_waited(Duration::from_millis(5));
        metrics.batch_committed(2, Duration::from_millis(7));
        let text = metrics.render(&Snapshot::default()).expect("renders");
        assert!(text.contains("linkbridge_group_commit_wait_seconds_count 2"), "{text}");
        assert!(text.contains("linkbridge_group_commit_wait_seconds_sum 0.008"), "{text}");
        assert!(text.contains("linkbridge_group_commit_batch_duration_seconds_count 1"), "{text}");
        assert!(text.contains("linkbridge_group_commit_batch_write_sets_sum 2.0"), "{text}");
        assert!(text.contains(r#"linkbridge_group_commit_batch_write_sets_bucket{le="2.0"} 1"#), "{text}");
    }
}
