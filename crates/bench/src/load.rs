//! A closed-loop load generator: `concurrency` workers each send one request, wait for the
//! answer, and send the next, until the time is up. Latency is measured per request from send
//! to the end of the body; throughput counts successful requests only.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// One request of a scenario, by worker number and the worker's request count: `Ok(true)` for a
/// success, `Ok(false)` for an answer the scenario counts as an error.
pub type Operation =
    Arc<dyn Fn(usize, u64) -> Pin<Box<dyn Future<Output = anyhow::Result<bool>> + Send>> + Send + Sync>;

#[derive(Debug, Clone)]
pub struct LoadResult {
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Microseconds.
    pub latency: Histogram<u64>,
    pub first_error: Option<String>,
    /// Every request that was answered, warmup included (what the database saw).
    pub answered: u64,
}

impl LoadResult {
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// Nothing measured yet.
    pub fn empty() -> Self {
        LoadResult {
            ok: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latency: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            first_error: None,
            answered: 0,
        }
    }

    /// Adds another window's measurement to this one, as if measured in one.
    pub fn merge(&mut self, other: LoadResult) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.latency.add(&other.latency).expect("same bounds");
        self.first_error = self.first_error.take().or(other.first_error);
        self.answered += other.answered;
    }
}

/// Runs `operation` from `concurrency` workers for `duration` after a `warmup` whose requests
/// are not counted.
pub async fn run(operation: Operation, concurrency: usize, warmup: Duration, duration: Duration) -> LoadResult {
    let start = Instant::now();
    let measure_from = start + warmup;
    let deadline = measure_from + duration;
    let mut workers = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let operation = operation.clone();
        workers.push(tokio::spawn(async move {
            // One worker's share: its `elapsed` stays zero, the run's is set below.
            let mut mine = LoadResult::empty();
            loop {
                let sent = Instant::now();
                if sent >= deadline {
                    break;
                }
                let outcome = operation(worker, mine.answered).await;
                mine.answered += 1;
                let done = Instant::now();
                if sent < measure_from {
                    continue;
                }
                match outcome {
                    Ok(true) => {
                        mine.ok += 1;
                        let micros = u64::try_from(done.duration_since(sent).as_micros()).unwrap_or(u64::MAX);
                        mine.latency.saturating_record(micros.max(1));
                    }
                    Ok(false) => mine.errors += 1,
                    Err(e) => {
                        mine.errors += 1;
                        mine.first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            mine
        }));
    }
    let mut result = LoadResult::empty();
    for worker in workers {
        match worker.await {
            Ok(mine) => result.merge(mine),
            Err(_) => result.errors += 1,
        }
    }
    result.elapsed = Instant::now().saturating_duration_since(measure_from).max(Duration::from_millis(1));
    result
}
