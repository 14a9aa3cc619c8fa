//! The results as Markdown: every measurement with its physical limit and the ratio, then the
//! targets of issue 9, met or not.

use std::path::Path;

use crate::growth::Seeding;
use crate::load::LoadResult;
use crate::process::Usage;
use crate::server_metrics::Breakdown;

#[derive(Debug, Clone)]
pub struct Measurement {
    /// `linkbridge` or `limit`.
    pub subject: &'static str,
    /// `sqlite`, `postgres` or `http`.
    pub db: &'static str,
    pub name: &'static str,
    pub concurrency: usize,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub usage: Option<Usage>,
    /// PostgreSQL's log (WAL) bytes per answered request, where measured: the database's work
    /// per request in a unit the machine's speed does not move.
    pub wal_bytes_per_request: Option<f64>,
    /// The throughput of this measurement's limit, measured in windows alternating with it
    /// (see `measure_alternating`): the limit its ratio is taken against, where measured.
    pub limit_beside: Option<f64>,
    /// Where its requests' time went in the server, from its `/metrics` (linkbridge only).
    pub server: Option<Breakdown>,
    /// The Tasks in the database, for the broad polls measured at each data size.
    pub tasks: Option<usize>,
}

impl Measurement {
    pub fn new(
        subject: &'static str,
        db: &'static str,
        name: &'static str,
        concurrency: usize,
        result: &LoadResult,
        usage: Option<Usage>,
    ) -> Self {
        let measurement = Measurement {
            subject,
            db,
            name,
            concurrency,
            throughput: result.throughput(),
            p50_ms: result.percentile_ms(0.5),
            p99_ms: result.percentile_ms(0.99),
            ok: result.ok,
            errors: result.errors,
            first_error: result.first_error.clone(),
            usage,
            wal_bytes_per_request: None,
            limit_beside: None,
            server: None,
            tasks: None,
        };
        eprintln!(
            "{subject:>10} {db:>8} {name:<40} c={concurrency:<3} {:>9.0}/s p50 {:>7.2} ms p99 {:>7.2} ms errors {}{}",
            measurement.throughput,
            measurement.p50_ms,
            measurement.p99_ms,
            measurement.errors,
            measurement.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default()
        );
        measurement
    }
}

pub struct Report {
    binary: String,
    quick: bool,
    measurements: Vec<Measurement>,
    /// Each growth step: the database, what it took, and the open backlog.
    seedings: Vec<(&'static str, Seeding, usize)>,
}

/// Which limit each linkbridge interaction is compared with: the same work done by the driver
/// alone (a read for a read, one durable transaction for a write).
pub fn limit_of(name: &str) -> &'static str {
    match name {
        "Task read" | "GP polling search" => "row read by id (driver)",
        name if crate::growth::is_broad_poll(name) => "row read by id (driver)",
        _ => "referral rows inserted (driver)",
    }
}

impl Report {
    pub fn new(binary: &Path, quick: bool) -> Self {
        Report { binary: binary.display().to_string(), quick, measurements: Vec::new(), seedings: Vec::new() }
    }

    pub fn add(&mut self, measurement: Measurement) {
        self.measurements.push(measurement);
    }

    pub fn add_seeding(&mut self, db: &'static str, seeding: Seeding, backlog: usize) {
        self.seedings.push((db, seeding, backlog));
    }

    /// The measurements of the four interactions on the small data set.
    fn interactions(&self) -> impl Iterator<Item = &Measurement> {
        self.measurements.iter().filter(|m| m.subject == "linkbridge" && m.tasks.is_none())
    }

    fn find(&self, subject: &str, db: &str, name: &str, concurrency: usize) -> Option<&Measurement> {
        self.measurements.iter().find(|m| {
            m.subject == subject && m.db == db && m.name == name && m.concurrency == concurrency && m.tasks.is_none()
        })
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let machine = machine_description();
        out.push_str(&format!(
            "Binary: `{}`{}\n\n{machine}\n\n",
            self.binary,
            if self.quick { " (quick mode: not figures)" } else { "" }
        ));
        out.push_str("| database | interaction | clients | req/s | p50 ms | p99 ms | errors | server CPU (cores) | peak RSS MiB | physical limit req/s | ratio | ratio to trivial HTTP |\n");
        out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for m in self.interactions() {
            let limit = self.limit_for(m);
            let http = self.find("limit", "http", "trivial route (actix-web)", m.concurrency);
            let usage = m.usage.unwrap_or_default();
            out.push_str(&format!(
                "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.2} | {:.0} | {} | {} | {} |\n",
                m.db,
                m.name,
                m.concurrency,
                m.throughput,
                m.p50_ms,
                m.p99_ms,
                m.errors,
                usage.cpu_secs,
                usage.peak_rss_mib,
                limit.as_ref().map_or("-".to_owned(), |(throughput, name)| format!("{throughput:.0} ({name})")),
                limit.as_ref().map_or("-".to_owned(), |(throughput, _)| format!("{:.2}", m.throughput / throughput)),
                http.map_or("-".to_owned(), |h| format!("{:.2}", m.throughput / h.throughput)),
            ));
        }
        out.push_str(&self.server_table());
        out.push_str("\nThe limits on their own:\n\n| measured | what | clients | req/s | p50 ms | p99 ms |\n|---|---|---:|---:|---:|---:|\n");
        for m in self.measurements.iter().filter(|m| m.subject == "limit") {
            out.push_str(&format!(
                "| {} | {} | {} | {:.0} | {:.2} | {:.2} |\n",
                m.db, m.name, m.concurrency, m.throughput, m.p50_ms, m.p99_ms
            ));
        }
        out.push_str(&self.wal_table());
        out.push_str(&self.growth_tables());
        out.push_str(&self.targets());
        out
    }

    /// Where each measurement's time went in the server, if its `/metrics` said.
    fn server_table(&self) -> String {
        let explained: Vec<(&Measurement, Breakdown)> =
            self.interactions().filter_map(|m| Some((m, m.server?))).collect();
        if explained.is_empty() {
            return String::new();
        }
        let mut out = String::from(
            "\nWhere the time went in the server (means over the measurement, from two scrapes of its \
             `/metrics`: a request from its first middleware to its answer; of that, a write set's wait \
             for its group commit batch and the batch, a change's or a read's access record):\n\n\
             | database | interaction | clients | client mean ms | server ms | waiting for a batch ms | batch ms | write sets per batch |\n\
             |---|---|---:|---:|---:|---:|---:|---:|\n",
        );
        for (m, server) in explained {
            // Little's law: a closed loop's mean latency is its clients over its throughput.
            let client_mean_ms = 1000.0 * m.concurrency as f64 / m.throughput.max(1e-9);
            out.push_str(&format!(
                "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} |\n",
                m.db,
                m.name,
                m.concurrency,
                client_mean_ms,
                server.request_ms,
                server.wait_ms,
                server.batch_ms,
                server.write_sets_per_batch
            ));
        }
        out
    }

    /// PostgreSQL's log bytes per request, linkbridge's beside the raw driver's, if measured.
    fn wal_table(&self) -> String {
        let logged: Vec<&Measurement> =
            self.measurements.iter().filter(|m| m.wal_bytes_per_request.is_some()).collect();
        if logged.is_empty() {
            return String::new();
        }
        let mut out = String::from(
            "\nPostgreSQL log (WAL) bytes per request (the whole cluster's log over the warmup and the \
             measurement, divided by the requests answered in them):\n\n\
             | measured | what | clients | WAL bytes per request |\n|---|---|---:|---:|\n",
        );
        for m in logged {
            out.push_str(&format!(
                "| {} | {} | {} | {:.0} |\n",
                m.subject,
                m.name,
                m.concurrency,
                m.wal_bytes_per_request.unwrap_or_default()
            ));
        }
        out
    }

    /// The seeding of each data size, then per database each broad poll's throughput and
    /// latency at each size and concurrency, and how they grew from the smallest size to the
    /// largest.
    fn growth_tables(&self) -> String {
        if self.seedings.is_empty() {
            return String::new();
        }
        let mut out = String::from(
            "\nSeeding (referrals from four practices to four CLW services, a transaction of several \
             referrals each, those past the open backlog cancelled at once in a second one):\n\n\
             | database | Tasks | added | seconds | Tasks/s | open backlog | transactions shed (503) and sent again |\n\
             |---|---:|---:|---:|---:|---:|---:|\n",
        );
        for (db, seeding, backlog) in &self.seedings {
            out.push_str(&format!(
                "| {db} | {} | {} | {:.1} | {:.0} | {backlog} | {} |\n",
                seeding.tasks,
                seeding.added,
                seeding.seconds,
                seeding.rate(),
                seeding.retries
            ));
        }
        let polls: Vec<&Measurement> = self.measurements.iter().filter(|m| m.tasks.is_some()).collect();
        let mut databases: Vec<&str> = polls.iter().map(|m| m.db).collect();
        databases.dedup();
        for db in databases {
            let mut sizes: Vec<usize> = polls.iter().filter(|m| m.db == db).filter_map(|m| m.tasks).collect();
            sizes.sort_unstable();
            sizes.dedup();
            let (Some(&smallest), Some(&largest)) = (sizes.first(), sizes.last()) else { continue };
            out.push_str(&format!(
                "\nBroad polls on {db} by data size (each cell: req/s, p50 ms / p99 ms; growth: the largest \
                 size's over the smallest's, {smallest} to {largest} Tasks):\n\n| poll | clients |"
            ));
            for size in &sizes {
                out.push_str(&format!(" {size} Tasks |"));
            }
            out.push_str(" growth req/s | growth p50 | growth p99 |\n|---|---:|");
            out.push_str(&"---:|".repeat(sizes.len() + 3));
            out.push('\n');
            let mut rows: Vec<(&str, usize)> =
                polls.iter().filter(|m| m.db == db).map(|m| (m.name, m.concurrency)).collect();
            rows.dedup();
            let mut seen = Vec::new();
            for row in rows {
                if seen.contains(&row) {
                    continue;
                }
                seen.push(row);
                let at = |size: usize| {
                    polls.iter().find(|m| m.db == db && (m.name, m.concurrency) == row && m.tasks == Some(size))
                };
                out.push_str(&format!("| {} | {} |", row.0, row.1));
                for &size in &sizes {
                    out.push_str(&match at(size) {
                        Some(m) if m.ok == 0 => format!(" none answered in the window ({} errors) |", m.errors),
                        Some(m) if m.errors > 0 => {
                            format!(" {:.0}, {:.2} / {:.2}, {} errors |", m.throughput, m.p50_ms, m.p99_ms, m.errors)
                        }
                        Some(m) => format!(" {:.0}, {:.2} / {:.2} |", m.throughput, m.p50_ms, m.p99_ms),
                        None => " - |".to_owned(),
                    });
                }
                let ratio = |f: fn(&Measurement) -> f64| match (at(smallest), at(largest)) {
                    (Some(a), Some(b)) if a.ok > 0 && b.ok > 0 && f(a) > 0.0 => format!("x{:.2}", f(b) / f(a)),
                    _ => "-".to_owned(),
                };
                out.push_str(&format!(
                    " {} | {} | {} |\n",
                    ratio(|m| m.throughput),
                    ratio(|m| m.p50_ms),
                    ratio(|m| m.p99_ms)
                ));
            }
        }
        out
    }

    /// The limit a linkbridge measurement is compared with, and its name: the one measured
    /// alternating with it, or else the one measured on its own before the server started.
    fn limit_for(&self, m: &Measurement) -> Option<(f64, String)> {
        let name = limit_of(m.name);
        match m.limit_beside {
            Some(throughput) => Some((throughput, format!("{name}, alternating"))),
            None => self.find("limit", m.db, name, m.concurrency).map(|l| (l.throughput, name.to_owned())),
        }
    }

    fn best(&self, db: &str, name: &str) -> Option<&Measurement> {
        self.interactions()
            .filter(|m| m.db == db && m.name == name)
            .max_by(|a, b| a.throughput.total_cmp(&b.throughput))
    }

    /// The targets of issue 9, each with the figure it was judged on.
    fn targets(&self) -> String {
        let mut rows = Vec::new();
        let mut target = |what: &str, figure: Option<f64>, goal: f64, higher: bool, unit: &str| {
            let verdict = match figure {
                None => "not measured".to_owned(),
                Some(f) if (higher && f >= goal) || (!higher && f < goal) => "met".to_owned(),
                Some(_) => "**not met**".to_owned(),
            };
            let shown = figure.map_or("-".to_owned(), |f| format!("{f:.1} {unit}"));
            rows.push(format!("| {what} | {} {goal} {unit} | {shown} | {verdict} |", if higher { ">=" } else { "<" }));
        };
        let at64 = |db: &str, name: &str| self.find("linkbridge", db, name, 64);
        target(
            "Task reads on SQLite (best concurrency)",
            self.best("sqlite", "Task read").map(|m| m.throughput),
            10_000.0,
            true,
            "req/s",
        );
        target(
            "polling searches on SQLite (best concurrency)",
            self.best("sqlite", "GP polling search").map(|m| m.throughput),
            3_000.0,
            true,
            "req/s",
        );
        target(
            "referral submissions on SQLite, 64 clients",
            at64("sqlite", "referral submission (transaction)").map(|m| m.throughput),
            2_000.0,
            true,
            "req/s",
        );
        let pg_ratio = at64("postgres", "referral submission (transaction)")
            .and_then(|m| self.limit_for(m).map(|(limit, _)| 100.0 * m.throughput / limit));
        target("referral submissions on PostgreSQL vs raw inserts, 64 clients", pg_ratio, 50.0, true, "%");
        let worst_p99 = self.interactions().filter(|m| m.concurrency == 64).map(|m| m.p99_ms).reduce(f64::max);
        target("p99 latency at 64 clients (worst interaction)", worst_p99, 50.0, false, "ms");
        let peak = self.measurements.iter().filter_map(|m| m.usage).map(|u| u.peak_rss_mib).reduce(f64::max);
        target("peak RSS of the server", peak, 150.0, false, "MiB");
        format!(
            "\nTargets (issue 9):\n\n| target | goal | measured | verdict |\n|---|---|---|---|\n{}\n",
            rows.join("\n")
        )
    }

    /// Every linkbridge measurement answered, without errors: what the quick mode in CI checks.
    pub fn check_sanity(&self) -> anyhow::Result<()> {
        let broken: Vec<String> = self
            .measurements
            .iter()
            .filter(|m| m.ok == 0 || m.errors > 0)
            .map(|m| {
                format!(
                    "{} {} {} c={}: {} ok, {} errors {:?}",
                    m.subject, m.db, m.name, m.concurrency, m.ok, m.errors, m.first_error
                )
            })
            .collect();
        if broken.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("measurements that failed:\n{}", broken.join("\n"))
        }
    }
}

fn machine_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| info.lines().next().and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map_or("?".to_owned(), |kib| format!("{:.0} GiB", kib / 1024.0 / 1024.0));
    format!("Machine: {cpu}, {cores} cores, {memory} RAM; load generator and server share it.")
}
