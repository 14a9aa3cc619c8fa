//! `linkbridge-bench`: measures a linkbridge binary under load on SQLite and PostgreSQL, with
//! authentication on and durable writes, next to the physical limits of the same machine measured
//! in the same run. See BENCHMARKS.md for what is measured, why, and the results.
//!
//! ```sh
//! cargo build --release --bin linkbridge
//! cargo run --release -p linkbridge-bench -- --binary target/release/linkbridge \
//!     --postgres postgres://postgres@127.0.0.1:5432/postgres
//! # and the broad polls at 10k, 100k and 1M Tasks (growth.rs):
//! cargo run --release -p linkbridge-bench -- --binary target/release/linkbridge \
//!     --tasks 10000,100000,1000000 --postgres postgres://postgres@127.0.0.1:5432/postgres
//! ```

/// mimalloc, as the server uses: the load generator shares the machine's two cores with the
/// server and the database, and glibc's allocator was a quarter of its CPU (building each
/// referral's JSON, reading each answer).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod growth;
mod limits;
mod load;
mod process;
mod report;
mod scenarios;
mod server_metrics;

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sqlx::Executor;

use crate::load::{LoadResult, Operation};
use crate::process::{Server, Usage};
use crate::report::{limit_of, Measurement, Report};
use crate::scenarios::Api;

#[derive(Debug, Parser)]
#[command(name = "linkbridge-bench", about = "Load benchmarks of linkbridge against the machine's physical limits")]
struct Cli {
    /// The linkbridge binary to measure (a release build for real figures).
    #[arg(long, default_value = "target/release/linkbridge")]
    binary: PathBuf,
    /// PostgreSQL server URL whose user may create databases; without it only SQLite is measured.
    #[arg(long, env = "LINKBRIDGE_BENCH_POSTGRES_URL")]
    postgres: Option<String>,
    /// Concurrency levels (closed-loop clients).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Seconds measured per scenario and concurrency.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of unmeasured load before each measurement.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// A smoke run (short, low concurrency) that keeps the harness working; not for figures.
    #[arg(long)]
    quick: bool,
    /// Measure only the linkbridge interactions whose name contains this (e.g. "read"), and
    /// skip the limits: for profiling one path.
    #[arg(long)]
    only: Option<String>,
    /// Where to write the results as Markdown (also printed).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Which databases to measure (PostgreSQL also needs `--postgres`).
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    databases: Vec<String>,
    /// Data sizes (Tasks) to measure the broad polls at, e.g. `10000,100000,1000000`: a
    /// database of its own is grown to each in turn (see growth.rs for the data). None by
    /// default: the four interactions on a few hundred Tasks only.
    #[arg(long, value_delimiter = ',')]
    tasks: Vec<usize>,
    /// Seeding transactions in flight while the data grows.
    #[arg(long, default_value_t = 32)]
    seed_concurrency: usize,
    /// Referrals per seeding transaction (three entries each).
    #[arg(long, default_value_t = 20)]
    referrals_per_bundle: usize,
    /// Keep the scratch directory and the PostgreSQL database afterwards (their names are
    /// printed), to look at the data the measurements left, e.g. with `EXPLAIN ANALYZE`.
    #[arg(long)]
    keep: bool,
}

/// The data sizes of the broad polls and how the data is grown to them.
struct Growth {
    sizes: Vec<usize>,
    concurrency: usize,
    per_bundle: usize,
}

/// How long and how hard each measurement runs.
#[derive(Clone)]
struct Plan {
    concurrency: Vec<usize>,
    only: Option<String>,
    warmup: Duration,
    duration: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let plan = if cli.quick {
        Plan {
            concurrency: vec![1, 4],
            only: None,
            warmup: Duration::from_millis(200),
            duration: Duration::from_secs(1),
        }
    } else {
        Plan {
            concurrency: cli.concurrency.clone(),
            only: cli.only.clone(),
            warmup: Duration::from_secs(cli.warmup),
            duration: Duration::from_secs(cli.seconds),
        }
    };
    let mut sizes = cli.tasks.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let growth =
        Growth { sizes, concurrency: cli.seed_concurrency.max(1), per_bundle: cli.referrals_per_bundle.max(1) };
    let binary =
        std::fs::canonicalize(&cli.binary).with_context(|| format!("no binary at {}", cli.binary.display()))?;
    let mut report = Report::new(&binary, cli.quick);

    let trivial = limits::TrivialServer::start(2)?;
    for &c in plan.concurrency.iter().filter(|_| plan.only.is_none()) {
        let http = Api::new("http://unused", String::new(), c).http;
        let result = measure(&plan, limits::trivial_operation(http, trivial.url.clone()), c).await;
        report.add(Measurement::new("limit", "http", "trivial route (actix-web)", c, &result, None));
    }
    trivial.stop().await;

    let scratch = std::env::temp_dir().join(format!("linkbridge-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&scratch)?;
    let measured = |db: &str| cli.databases.iter().any(|d| d == db);
    let sqlite_result = if measured("sqlite") {
        match bench_database(&plan, &binary, &scratch.join("sqlite"), None, &mut report).await {
            Ok(()) if !growth.sizes.is_empty() => {
                bench_growth(&plan, &growth, &binary, &scratch.join("sqlite-growth"), None, &mut report).await
            }
            result => result,
        }
    } else {
        Ok(())
    };
    let postgres_result = match &cli.postgres {
        Some(_) if !measured("postgres") => Ok(()),
        Some(server) => {
            let database = format!("lb_bench_{}", uuid::Uuid::new_v4().simple());
            let admin = sqlx::PgPool::connect(server).await.context("connecting to PostgreSQL")?;
            admin.execute(format!("CREATE DATABASE {database}").as_str()).await?;
            let url = format!("{}/{database}", server.rsplit_once('/').map_or(server.as_str(), |(s, _)| s));
            let mut result = bench_database(&plan, &binary, &scratch.join("postgres"), Some(&url), &mut report).await;
            if cli.keep {
                eprintln!("linkbridge-bench: kept the PostgreSQL database {url}");
            } else {
                admin.execute(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)").as_str()).await?;
            }
            if result.is_ok() && !growth.sizes.is_empty() {
                // The broad polls on a database of their own, grown from empty.
                let database = format!("{database}_growth");
                admin.execute(format!("CREATE DATABASE {database}").as_str()).await?;
                let url = format!("{}/{database}", server.rsplit_once('/').map_or(server.as_str(), |(s, _)| s));
                let dir = scratch.join("postgres-growth");
                result = bench_growth(&plan, &growth, &binary, &dir, Some(&url), &mut report).await;
                if cli.keep {
                    eprintln!("linkbridge-bench: kept the PostgreSQL database {url}");
                } else {
                    admin.execute(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)").as_str()).await?;
                }
            }
            result
        }
        None => {
            eprintln!("linkbridge-bench: no --postgres URL; PostgreSQL was not measured");
            Ok(())
        }
    };
    if cli.keep {
        eprintln!("linkbridge-bench: kept the scratch directory {}", scratch.display());
    } else {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    sqlite_result?;
    postgres_result?;

    let markdown = report.markdown();
    println!("{markdown}");
    if let Some(path) = &cli.out {
        std::fs::write(path, &markdown)?;
    }
    report.check_sanity()
}

async fn measure(plan: &Plan, operation: Operation, concurrency: usize) -> LoadResult {
    load::run(operation, concurrency, plan.warmup, plan.duration).await
}

/// What one measurement of the server found besides its load result.
struct ServerSide {
    usage: Usage,
    /// PostgreSQL's log bytes per request, where measured.
    wal_bytes: Option<f64>,
    /// The server's histograms over the measurement (warmup included), where it has them.
    metrics: Option<server_metrics::Totals>,
}

/// Measures `operation` and the server's CPU, peak memory and histograms over it.
async fn measure_server(
    plan: &Plan,
    server: &Server,
    wal: Option<&sqlx::PgPool>,
    operation: Operation,
    concurrency: usize,
) -> anyhow::Result<(LoadResult, ServerSide)> {
    let http = reqwest::Client::new();
    let scraped = server_metrics::Totals::scrape(&http, &server.base).await;
    let before = server.usage().unwrap_or_default();
    let started = std::time::Instant::now();
    let (result, wal_bytes) = measure_logged(plan, wal, operation, concurrency).await?;
    let wall = started.elapsed().as_secs_f64();
    let after = server.usage().unwrap_or_default();
    let metrics = match (scraped, server_metrics::Totals::scrape(&http, &server.base).await) {
        (Some(before), Some(after)) => Some(after - before),
        _ => None,
    };
    let usage = Usage { cpu_secs: (after.cpu_secs - before.cpu_secs) / wall, peak_rss_mib: after.peak_rss_mib };
    Ok((result, ServerSide { usage, wal_bytes, metrics }))
}

/// Windows a measurement is split into, alternating with its limit.
const ALTERNATIONS: u32 = 4;

/// Measures `operation` in windows alternating with `limit` (the same work through the driver
/// alone), each window with a warmup of its own: both then see the machine in the same phases.
/// Measured one after the other, minutes apart, the two could differ by half on a VM whose
/// speed drifts, and so could their ratio. Returns linkbridge's result, CPU and memory, log
/// bytes per request, and the limit's result.
async fn measure_alternating(
    plan: &Plan,
    server: &Server,
    wal: Option<&sqlx::PgPool>,
    operation: Operation,
    limit: Operation,
    concurrency: usize,
) -> anyhow::Result<(LoadResult, ServerSide, LoadResult)> {
    let window = Plan {
        concurrency: Vec::new(),
        only: None,
        warmup: plan.warmup / ALTERNATIONS,
        duration: plan.duration / ALTERNATIONS,
    };
    let (mut total, mut beside) = (LoadResult::empty(), LoadResult::empty());
    let (mut cpu_secs, mut peak_rss_mib, mut wal_bytes) = (0.0, 0.0_f64, None::<f64>);
    let mut metrics: Option<server_metrics::Totals> = None;
    for _ in 0..ALTERNATIONS {
        beside.merge(measure(&window, limit.clone(), concurrency).await);
        let (result, side) = measure_server(&window, server, wal, operation.clone(), concurrency).await?;
        cpu_secs += side.usage.cpu_secs * result.elapsed.as_secs_f64();
        peak_rss_mib = peak_rss_mib.max(side.usage.peak_rss_mib);
        if let Some(per_request) = side.wal_bytes {
            *wal_bytes.get_or_insert(0.0) += per_request * result.answered as f64;
        }
        if let Some(window) = side.metrics {
            *metrics.get_or_insert_with(Default::default) += window;
        }
        total.merge(result);
    }
    if beside.ok == 0 || beside.errors > 0 {
        anyhow::bail!("the limit alternating with a measurement failed: {:?}", beside.first_error);
    }
    let usage = Usage { cpu_secs: cpu_secs / total.elapsed.as_secs_f64().max(1e-3), peak_rss_mib };
    let wal_bytes = wal_bytes.map(|bytes| bytes / total.answered.max(1) as f64);
    Ok((total, ServerSide { usage, wal_bytes, metrics }, beside))
}

/// Measures `operation` and, given a PostgreSQL connection, the log bytes per request it
/// wrote (the whole cluster's log: nothing else writes to it during a run).
async fn measure_logged(
    plan: &Plan,
    wal: Option<&sqlx::PgPool>,
    operation: Operation,
    concurrency: usize,
) -> anyhow::Result<(LoadResult, Option<f64>)> {
    let Some(pool) = wal else {
        return Ok((measure(plan, operation, concurrency).await, None));
    };
    let position =
        || sqlx::query_scalar::<_, f64>("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8").fetch_one(pool);
    let before = position().await?;
    let result = measure(plan, operation, concurrency).await;
    let after = position().await?;
    let per_request = (after - before) / result.answered.max(1) as f64;
    Ok((result, Some(per_request)))
}

async fn bench_database(
    plan: &Plan,
    binary: &std::path::Path,
    dir: &std::path::Path,
    postgres: Option<&str>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let db = if postgres.is_some() { "postgres" } else { "sqlite" };
    std::fs::create_dir_all(dir)?;
    let max = plan.concurrency.iter().copied().max().unwrap_or(1);
    // Where the log bytes of each PostgreSQL measurement are read.
    let wal = match postgres {
        Some(url) => Some(sqlx::PgPool::connect(url).await?),
        None => None,
    };

    // The physical limits first, on their own database file or schema.
    for &c in plan.concurrency.iter().filter(|_| plan.only.is_none()) {
        let raw = Arc::new(match postgres {
            Some(url) => limits::RawDb::postgres(url, c as u32).await?,
            None => limits::RawDb::sqlite(&dir.join("raw.db"), c as u32).await?,
        });
        let (result, wal_bytes) =
            measure_logged(plan, wal.as_ref(), limits::raw_insert_operation(raw.clone()), c).await?;
        let mut measured = Measurement::new("limit", db, "referral rows inserted (driver)", c, &result, None);
        measured.wal_bytes_per_request = wal_bytes;
        report.add(measured);
        let ids = raw.seed(200).await?;
        let result = measure(plan, limits::raw_read_operation(raw.clone(), ids), c).await;
        report.add(Measurement::new("limit", db, "row read by id (driver)", c, &result, None));
        if let Ok(raw) = Arc::try_unwrap(raw) {
            raw.close().await;
        }
    }
    let server = Server::start(binary, dir, postgres, &[]).await?;
    // Access tokens live at most 5 minutes: each round of measurements takes fresh ones.
    let gp = Api::new(&server.base, server.token("demo-gp")?, max);
    let clw = Api::new(&server.base, server.token("demo-clw")?, max);

    // Data the reads, polls and status changes work on: referrals, some of them in progress.
    let nhs = scenarios::NhsNumbers::new();
    let mut tasks = Vec::new();
    for _ in 0..(200 + max) {
        tasks.push(scenarios::submit(&gp, &nhs).await?.context("a setup referral was refused")?);
    }
    let (readable, working) = tasks.split_at(200);
    let readable = Arc::new(readable.to_vec());
    let working = Arc::new(working.to_vec());
    let mut versions = Vec::new();
    for task in working.iter() {
        versions.push(AtomicU64::new(scenarios::prepare_in_progress(&clw, task).await?));
    }
    let versions = Arc::new(versions);

    for &c in &plan.concurrency {
        let gp = Api { token: server.token("demo-gp")?, ..gp.clone() };
        let clw = Api { token: server.token("demo-clw")?, ..clw.clone() };
        // A poller asks for what changed since its last poll: here ten new referrals. Polls see
        // changes only once they are older than the settle window (5 s by default).
        let mut recent = Vec::new();
        for _ in 0..10 {
            recent.push(scenarios::submit(&gp, &nhs).await?.context("a setup referral was refused")?);
        }
        let first_recent = scenarios::last_updated(&gp, &recent[0]).await?;
        let since = scenarios::just_before(&first_recent)?;
        tokio::time::sleep(Duration::from_secs(6)).await;
        let scenarios: [(&str, Operation); 4] = [
            ("Task read", scenarios::read_operation(gp.clone(), readable.clone())),
            ("GP polling search", scenarios::poll_operation(gp.clone(), since.clone())),
            (
                "Task status change (PATCH, If-Match)",
                scenarios::status_change_operation(clw.clone(), working.clone(), versions.clone()),
            ),
            ("referral submission (transaction)", scenarios::submit_operation(gp.clone())),
        ];
        let wanted = |name: &str| plan.only.as_deref().is_none_or(|only| name.contains(only));
        // The limits again, alternating with the measurements (not when profiling one path).
        let raw = match (&plan.only, postgres) {
            (Some(_), _) => None,
            (None, Some(url)) => Some(Arc::new(limits::RawDb::postgres(url, c as u32).await?)),
            (None, None) => Some(Arc::new(limits::RawDb::sqlite(&dir.join("raw.db"), c as u32).await?)),
        };
        let raw_ids = match &raw {
            Some(raw) => Some(raw.seed(200).await?),
            None => None,
        };
        for (name, operation) in scenarios.into_iter().filter(|(name, _)| wanted(name)) {
            // Not SQLite's durable inserts: 64 connections queue for its one write lock by
            // sleeping in the busy handler (its p99 is most of a second), which windows of a
            // few seconds measure at half their rate.
            let limit = raw.as_ref().zip(raw_ids.as_ref()).and_then(|(raw, ids)| match limit_of(name) {
                "row read by id (driver)" => Some(limits::raw_read_operation(raw.clone(), ids.clone())),
                _ if postgres.is_some() => Some(limits::raw_insert_operation(raw.clone())),
                _ => None,
            });
            let (result, side, beside) = match limit {
                Some(limit) => {
                    let (result, side, beside) =
                        measure_alternating(plan, &server, wal.as_ref(), operation, limit, c).await?;
                    (result, side, Some(beside))
                }
                None => {
                    let (result, side) = measure_server(plan, &server, wal.as_ref(), operation, c).await?;
                    (result, side, None)
                }
            };
            let mut measured = Measurement::new("linkbridge", db, name, c, &result, Some(side.usage));
            measured.wal_bytes_per_request = side.wal_bytes;
            measured.server = side.metrics.and_then(|metrics| metrics.breakdown());
            measured.limit_beside = beside.as_ref().map(LoadResult::throughput);
            if let Some(beside) = beside {
                eprintln!(
                    "{:>10} {db:>8} {:<40} c={c:<3} {:>9.0}/s alternating",
                    "limit",
                    limit_of(name),
                    beside.throughput()
                );
            }
            report.add(measured);
        }
        if let Some(raw) = raw.and_then(|raw| Arc::try_unwrap(raw).ok()) {
            raw.close().await;
        }
    }
    if let Some(pool) = wal {
        pool.execute("DROP TABLE IF EXISTS raw_resources").await?;
        pool.close().await;
    }
    Ok(())
}

/// The broad polls at each data size: a server of its own whose data grows (growth.rs) to each
/// size in turn, and each poll measured there at the run's concurrency levels.
async fn bench_growth(
    plan: &Plan,
    growth: &Growth,
    binary: &std::path::Path,
    dir: &std::path::Path,
    postgres: Option<&str>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let db = if postgres.is_some() { "postgres" } else { "sqlite" };
    std::fs::create_dir_all(dir)?;
    let server = Server::start(binary, dir, postgres, &growth::extra_clients()).await?;
    let max = plan.concurrency.iter().copied().max().unwrap_or(1).max(growth.concurrency);
    let http = Api::new(&server.base, String::new(), max).http;
    let backlog = growth::backlog_of(growth.sizes[0]);
    let mut grower = growth::Grower {
        tokens: server.tokens(),
        base: server.base.clone(),
        http: http.clone(),
        nhs: Arc::new(scenarios::NhsNumbers::new()),
        tasks: 0,
        backlog,
        concurrency: growth.concurrency,
        per_bundle: growth.per_bundle,
    };
    let wanted = |name: &str| plan.only.as_deref().is_none_or(|only| name.contains(only));
    let mut patient = None;
    for &size in &growth.sizes {
        let seeding = grower.grow_to(size).await?;
        if let Some(url) = postgres {
            // A database that grew by years of referrals in a minute has the statistics and
            // visibility map of its first rows; one that grew over years has those autovacuum
            // keeps (after each 10-20 % of change, inserts included), without which PostgreSQL
            // neither estimates nor reads an index alone. The polls are measured as they run
            // there.
            let pool = sqlx::PgPool::connect(url).await.context("connecting to PostgreSQL")?;
            pool.execute("VACUUM ANALYZE").await.context("VACUUM ANALYZE")?;
            pool.close().await;
        }
        eprintln!("{}", growth::describe(db, &seeding));
        report.add_seeding(db, seeding, backlog);
        let patient = match &patient {
            Some(patient) => String::clone(patient),
            None => patient.insert(grower.returning_patient().await?).clone(),
        };
        for &c in &plan.concurrency {
            for (name, client, path) in growth::polls(&patient).into_iter().filter(|(name, _, _)| wanted(name)) {
                let api = Api { http: http.clone(), base: server.base.clone(), token: grower.tokens.get(client)? };
                let operation = growth::search_operation(api, path);
                let (result, side) = measure_server(plan, &server, None, operation, c).await?;
                eprint!("{size:>10} Tasks ");
                let mut measured = Measurement::new("linkbridge", db, name, c, &result, Some(side.usage));
                measured.tasks = Some(size);
                measured.server = side.metrics.and_then(|metrics| metrics.breakdown());
                report.add(measured);
            }
        }
    }
    Ok(())
}
