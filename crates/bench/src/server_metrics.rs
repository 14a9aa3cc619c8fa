//! Where a request's time goes inside the server, from two scrapes of its `/metrics` around a
//! measurement: its requests' mean latency as the server saw it, and of that the mean wait of a
//! write set for its group commit batch and the mean batch (every request here commits a write
//! set: a change, or a read's access record). What the client sees beyond the server's figure
//! is its own work and the kernel's.

use std::ops::{AddAssign, Sub};

/// Sums and counts of the server's histograms, at one scrape or over a window between two.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    request_seconds: f64,
    requests: f64,
    wait_seconds: f64,
    waits: f64,
    batch_seconds: f64,
    batches: f64,
    batched_write_sets: f64,
}

impl Totals {
    /// Reads the totals from the text exposition format; every label set of a series counts.
    pub fn parse(text: &str) -> Totals {
        let mut totals = Totals::default();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            let name = series.split('{').next().unwrap_or(series);
            let slot = match name {
                "linkbridge_http_request_duration_seconds_sum" => &mut totals.request_seconds,
                "linkbridge_http_request_duration_seconds_count" => &mut totals.requests,
                "linkbridge_group_commit_wait_seconds_sum" => &mut totals.wait_seconds,
                "linkbridge_group_commit_wait_seconds_count" => &mut totals.waits,
                "linkbridge_group_commit_batch_duration_seconds_sum" => &mut totals.batch_seconds,
                "linkbridge_group_commit_batch_duration_seconds_count" => &mut totals.batches,
                "linkbridge_group_commit_batch_write_sets_sum" => &mut totals.batched_write_sets,
                _ => continue,
            };
            *slot += value;
        }
        totals
    }

    /// Scrapes the server at `base`; nothing if it cannot (a server without the histograms,
    /// or an older binary under test).
    pub async fn scrape(http: &reqwest::Client, base: &str) -> Option<Totals> {
        let response = http.get(format!("{base}/metrics")).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        Some(Totals::parse(&response.text().await.ok()?))
    }

    /// The means over a window's totals, if it committed anything.
    pub fn breakdown(&self) -> Option<Breakdown> {
        if self.requests <= 0.0 || self.waits <= 0.0 || self.batches <= 0.0 {
            return None;
        }
        Some(Breakdown {
            request_ms: 1000.0 * self.request_seconds / self.requests,
            wait_ms: 1000.0 * self.wait_seconds / self.waits,
            batch_ms: 1000.0 * self.batch_seconds / self.batches,
            write_sets_per_batch: self.batched_write_sets / self.batches,
        })
    }
}

impl Sub for Totals {
    type Output = Totals;

    fn sub(self, earlier: Totals) -> Totals {
        Totals {
            request_seconds: self.request_seconds - earlier.request_seconds,
            requests: self.requests - earlier.requests,
            wait_seconds: self.wait_seconds - earlier.wait_seconds,
            waits: self.waits - earlier.waits,
            batch_seconds: self.batch_seconds - earlier.batch_seconds,
            batches: self.batches - earlier.batches,
            batched_write_sets: self.batched_write_sets - earlier.batched_write_sets,
        }
    }
}

impl AddAssign for Totals {
    fn add_assign(&mut self, other: Totals) {
        self.request_seconds += other.request_seconds;
        self.requests += other.requests;
        self.wait_seconds += other.wait_seconds;
        self.waits += other.waits;
        self.batch_seconds += other.batch_seconds;
        self.batches += other.batches;
        self.batched_write_sets += other.batched_write_sets;
    }
}

/// A measurement's means, in the server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Breakdown {
    /// A request, from the server's first middleware to its answer.
    pub request_ms: f64,
    /// A write set's wait in the queue for its batch to begin.
    pub wait_ms: f64,
    /// A batch, from its beginning until its requests are answered.
    pub batch_ms: f64,
    pub write_sets_per_batch: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# HELP linkbridge_http_request_duration_seconds HTTP requests
linkbridge_http_request_duration_seconds_sum{route="/",method="POST",status="200"} 3.0
linkbridge_http_request_duration_seconds_count{route="/",method="POST",status="200"} 100
linkbridge_http_request_duration_seconds_sum{route="/metrics",method="GET",status="200"} 0.5
linkbridge_http_request_duration_seconds_count{route="/metrics",method="GET",status="200"} 100
linkbridge_http_request_duration_seconds_bucket{le="0.001",route="/",method="POST",status="200"} 7
linkbridge_group_commit_wait_seconds_sum 0.8
linkbridge_group_commit_wait_seconds_count 200
linkbridge_group_commit_batch_duration_seconds_sum 0.4
linkbridge_group_commit_batch_duration_seconds_count 10
linkbridge_group_commit_batch_write_sets_sum 200.0
linkbridge_group_commit_batch_write_sets_count 10
"#;

    #[test]
    fn a_windows_means_are_its_sums_over_its_counts_over_every_label_set() {
        let before = Totals::parse("linkbridge_group_commit_wait_seconds_count 0\n");
        let breakdown = (Totals::parse(SCRAPE) - before).breakdown().expect("something committed");
        assert_eq!(breakdown.request_ms, 17.5, "3.5 s over 200 requests of both routes, buckets ignored");
        assert_eq!(breakdown.wait_ms, 4.0);
        assert_eq!(breakdown.batch_ms, 40.0);
        assert_eq!(breakdown.write_sets_per_batch, 20.0);
    }

    #[test]
    fn a_window_that_committed_nothing_has_no_breakdown() {
        let scrape = Totals::parse(SCRAPE);
        assert_eq!((scrape - scrape).breakdown(), None);
        assert_eq!(Totals::parse("not metrics at all").breakdown(), None);
    }
}
