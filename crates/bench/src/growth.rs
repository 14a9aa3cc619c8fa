//! The broad polls as the data grows (issue 29): a database grown to each of the sizes asked
//! for (`--tasks`), and at each size the searches whose cost could grow with it.
//!
//! The data is a year of referrals as a health board would hold it. Over a year most referrals
//! are closed and the open backlog stays bounded: the first referrals seeded ([`backlog_of`],
//! at most [`MAX_BACKLOG`]) stay open in status `requested`, authored within the last month,
//! and every later one is cancelled by its practice as soon as it is created (a transaction of
//! `PUT`s, the cheapest way a closed Task comes to be; the CLW path would take three
//! `PATCH`es), authored at a random time within the year. Growing from one size to the next
//! adds closed referrals only, so the backlog is the same at every size and what grows is the
//! history the polls must not pay for.
//!
//! The referrals come from four practices ([`PRACTICES`], a quarter each) and go to four CLW
//! services ([`SERVICES`]): one takes 60 % of them, one 1 %. One in ten of the backlog's Tasks
//! has no owner (an open Task any CLW service may claim). Every patient but one has a single
//! referral; the one ([`returning_patient`]) has three, two of them closed. Each client sees
//! only its own share, so the polls measure the tenancy filter too.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rand::Rng;
use serde_json::{json, Value};

use crate::load::Operation;
use crate::process::Tokens;
use crate::scenarios::{referral_entries, Api, NhsNumbers, ODS};

/// The practices: client id and ODS code. The first is the demo GP.
pub const PRACTICES: [(&str, &str); 4] =
    [("demo-gp", "DEMOGP1"), ("bench-gp2", "BENCHGP2"), ("bench-gp3", "BENCHGP3"), ("bench-gp4", "BENCHGP4")];

/// The CLW services: client id, ODS code and their percentage of the referrals.
pub const SERVICES: [(&str, &str, usize); 4] = [
    ("demo-clw", "DEMOCLW1", 60),
    ("bench-clw2", "BENCHCLW2", 25),
    ("bench-clw3", "BENCHCLW3", 14),
    ("bench-clw4", "BENCHCLW4", 1),
];

/// The CLW service holding most of the referrals, and the one holding few.
const LARGE: usize = 0;
const SMALL: usize = 3;

/// The open backlog's bound: a couple of thousand referrals waiting to be accepted is a busy
/// board's.
pub const MAX_BACKLOG: usize = 1_000;

/// The open backlog for a run whose smallest size is `smallest`: a fifth of it, at most
/// [`MAX_BACKLOG`].
pub fn backlog_of(smallest: usize) -> usize {
    (smallest / 5).clamp(10, MAX_BACKLOG)
}

/// The client systems the data needs besides the demo ones: (client id, ODS code, role).
pub fn extra_clients() -> Vec<(&'static str, &'static str, &'static str)> {
    let practices = PRACTICES[1..].iter().map(|&(id, ods)| (id, ods, "referrer"));
    let services = SERVICES[1..].iter().map(|&(id, ods, _)| (id, ods, "performer"));
    practices.chain(services).collect()
}

/// The CLW service of the `n`th referral: each service's share of every hundred, scattered.
fn service_of(n: usize) -> &'static str {
    let mut slot = (n * 37) % 100;
    for (_, ods, share) in SERVICES {
        if slot < share {
            return ods;
        }
        slot -= share;
    }
    SERVICES[LARGE].1
}

/// FHIR `dateTime` text (UTC) of seconds since the Unix epoch.
fn date_time(unix: u64) -> String {
    let (days, secs) = ((unix / 86_400) as i64, unix % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

/// A random time within the last `days` days.
fn authored_within(days: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    date_time(now - rand::thread_rng().gen_range(0..days * 86_400))
}

/// What one growth step took.
#[derive(Debug, Clone, Copy)]
pub struct Seeding {
    pub tasks: usize,
    pub added: usize,
    pub seconds: f64,
    /// Transactions the server shed (503) and that were sent again.
    pub retries: usize,
}

impl Seeding {
    pub fn rate(&self) -> f64 {
        self.added as f64 / self.seconds.max(1e-3)
    }
}

/// Grows a server's data, referral by referral, to the sizes asked for.
pub struct Grower {
    pub tokens: Tokens,
    pub base: String,
    pub http: reqwest::Client,
    pub nhs: Arc<NhsNumbers>,
    /// Referrals seeded so far (each one Task).
    pub tasks: usize,
    pub backlog: usize,
    pub concurrency: usize,
    pub per_bundle: usize,
}

/// A referral the server stored: its Patient, ServiceRequest and Task ids.
struct Stored {
    patient: String,
    request: String,
    task: String,
}

impl Grower {
    fn api(&self, client_id: &str) -> anyhow::Result<Api> {
        Ok(Api { http: self.http.clone(), base: self.base.clone(), token: self.tokens.get(client_id)? })
    }

    /// Adds referrals until there are `target` Tasks, `concurrency` transactions in flight.
    pub async fn grow_to(&mut self, target: usize) -> anyhow::Result<Seeding> {
        let started = Instant::now();
        let retried = RETRIES.load(Ordering::Relaxed);
        let first = self.tasks;
        let next = Arc::new(AtomicUsize::new(first));
        let failure: Arc<Mutex<Option<anyhow::Error>>> = Arc::default();
        let mut workers = Vec::new();
        for _ in 0..self.concurrency {
            let (next, failure) = (next.clone(), failure.clone());
            let (tokens, base, http, nhs) =
                (self.tokens.clone(), self.base.clone(), self.http.clone(), self.nhs.clone());
            let (per_bundle, backlog) = (self.per_bundle, self.backlog);
            workers.push(tokio::spawn(async move {
                let grower = Grower { tokens, base, http, nhs, tasks: 0, backlog, concurrency: 1, per_bundle };
                loop {
                    let start = next.fetch_add(per_bundle, Ordering::Relaxed);
                    if start >= target || failure.lock().map_or(true, |f| f.is_some()) {
                        break;
                    }
                    let end = (start + per_bundle).min(target);
                    if let Err(e) = grower.seed_chunk(start, end).await {
                        if let Ok(mut failure) = failure.lock() {
                            failure.get_or_insert(e);
                        }
                        break;
                    }
                    if end / PROGRESS != start / PROGRESS {
                        let rate = (end - first) as f64 / started.elapsed().as_secs_f64().max(1e-3);
                        eprintln!("{:>10} about {end} Tasks, {rate:.0} Tasks/s so far", "seeding");
                    }
                }
            }));
        }
        for worker in workers {
            worker.await?;
        }
        if let Some(e) = failure.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.take() {
            return Err(e.context("seeding"));
        }
        self.tasks = target.max(first);
        Ok(Seeding {
            tasks: self.tasks,
            added: self.tasks - first,
            seconds: started.elapsed().as_secs_f64(),
            retries: RETRIES.load(Ordering::Relaxed) - retried,
        })
    }

    /// Referrals `start..end` (numbered over the whole run) in one transaction from one
    /// practice; those past the backlog cancelled in a second one.
    async fn seed_chunk(&self, start: usize, end: usize) -> anyhow::Result<()> {
        let (practice_client, practice) = PRACTICES[(start / self.per_bundle) % PRACTICES.len()];
        let gp = self.api(practice_client)?;
        let mut entries = Vec::new();
        let mut tasks = Vec::new();
        for n in start..end {
            let open = n < self.backlog;
            let owner = (!open || n % 10 != 9).then(|| service_of(n));
            let authored_on = if open { authored_within(30) } else { authored_within(365) };
            let referral = referral_entries(&self.nhs.next(), practice, owner, &authored_on);
            tasks.push((open, owner, referral[2]["resource"].clone()));
            entries.extend(referral);
        }
        let stored = transaction(&gp, entries).await?;
        let stored = stored.chunks(3).map(|referral| {
            let id = |i: usize| referral.get(i).cloned().unwrap_or_default();
            Stored { patient: id(0), request: id(1), task: id(2) }
        });
        let cancels: Vec<Value> = tasks
            .into_iter()
            .zip(stored)
            .filter(|((open, _, _), _)| !open)
            .map(|((_, _, task), stored)| cancel_entry(task, &stored))
            .collect();
        if !cancels.is_empty() {
            transaction(&gp, cancels).await?;
        }
        Ok(())
    }

    /// A patient of the demo GP with three referrals: two to the large CLW service, each
    /// cancelled before the next, and one open with another service. Returns the Patient's id.
    pub async fn returning_patient(&mut self) -> anyhow::Result<String> {
        let gp = self.api(PRACTICES[0].0)?;
        let nhs = self.nhs.next();
        let mut patient = String::new();
        for (owner, close) in [(SERVICES[LARGE].1, true), (SERVICES[LARGE].1, true), (SERVICES[1].1, false)] {
            let referral = referral_entries(&nhs, PRACTICES[0].1, Some(owner), &authored_within(365));
            let task = referral[2]["resource"].clone();
            let ids = transaction(&gp, referral).await?;
            let stored = Stored { patient: ids[0].clone(), request: ids[1].clone(), task: ids[2].clone() };
            if close {
                transaction(&gp, vec![cancel_entry(task, &stored)]).await?;
            }
            patient = stored.patient;
            self.tasks += 1;
        }
        Ok(patient)
    }
}

/// The `PUT` of `task` (as sent, its `urn:uuid:` references now the stored ids) cancelled by
/// its practice.
fn cancel_entry(mut task: Value, stored: &Stored) -> Value {
    task["id"] = json!(stored.task);
    task["status"] = json!("cancelled");
    task["statusReason"] = json!({"text": "closed: the patient was seen elsewhere"});
    task["focus"] = json!({"reference": format!("ServiceRequest/{}", stored.request)});
    task["for"] = json!({"reference": format!("Patient/{}", stored.patient)});
    json!({"request": {"method": "PUT", "url": format!("Task/{}", stored.task)}, "resource": task})
}

/// How often a seeding transaction is sent again when the server answered 503 (shedding load:
/// a write that waited longer than its settle window to commit was not applied) or the request
/// could not be sent.
const ATTEMPTS: u32 = 20;

/// Seeding reports its progress every this many Tasks.
const PROGRESS: usize = 100_000;

/// Seeding transactions the server shed and that were sent again, over the run.
pub static RETRIES: AtomicUsize = AtomicUsize::new(0);

/// Sends a transaction of `entries`, again after a pause while the server sheds load (503);
/// returns the id each entry's answer locates.
async fn transaction(api: &Api, entries: Vec<Value>) -> anyhow::Result<Vec<String>> {
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}).to_string();
    let mut attempt = 0;
    let text = loop {
        let sent = api
            .request(reqwest::Method::POST, "/")
            .header("Content-Type", "application/fhir+json")
            .body(bundle.clone())
            .send()
            .await;
        attempt += 1;
        let response = match sent {
            // A pooled connection the server had closed: the request never reached it.
            Err(e) if (e.is_request() || e.is_connect()) && attempt < ATTEMPTS => {
                RETRIES.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                continue;
            }
            sent => sent?,
        };
        let status = response.status();
        let text = response.text().await?;
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE && attempt < ATTEMPTS {
            RETRIES.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            continue;
        }
        if !status.is_success() {
            anyhow::bail!(
                "a seeding transaction was answered {status}: {}",
                text.chars().take(400).collect::<String>()
            );
        }
        break text;
    };
    let body: Value = serde_json::from_str(&text)?;
    body["entry"]
        .as_array()
        .context("a transaction-response without entries")?
        .iter()
        .map(|entry| {
            entry["response"]["location"]
                .as_str()
                .and_then(|location| location.split('/').nth(1))
                .map(str::to_owned)
                .context("a transaction-response entry without a location")
        })
        .collect()
}

/// The broad polls: (name, client id, path). Every one finds something at every size.
pub fn polls(patient: &str) -> Vec<(&'static str, &'static str, String)> {
    let inbox =
        |service: usize| format!("/Task?owner:identifier={ODS}|{}&status=requested&_count=10", SERVICES[service].1);
    vec![
        ("CLW inbox, large service (owner:identifier, status)", SERVICES[LARGE].0, inbox(LARGE)),
        ("CLW inbox, small service (owner:identifier, status)", SERVICES[SMALL].0, inbox(SMALL)),
        ("GP's requested Tasks (status)", PRACTICES[0].0, "/Task?status=requested&_count=10".to_owned()),
        (
            "unclaimed Tasks (owner:missing, status)",
            SERVICES[SMALL].0,
            "/Task?owner:missing=true&status=requested&_count=10".to_owned(),
        ),
        ("GP's newest Tasks (_sort=-authored-on)", PRACTICES[0].0, "/Task?_sort=-authored-on&_count=10".to_owned()),
        ("a patient's Tasks (patient=)", PRACTICES[0].0, format!("/Task?patient=Patient/{patient}")),
        (
            "a patient's referrals (_revinclude=Task:focus)",
            PRACTICES[0].0,
            format!("/ServiceRequest?patient=Patient/{patient}&_revinclude=Task:focus"),
        ),
    ]
}

/// Whether `name` is one of the broad polls.
pub fn is_broad_poll(name: &str) -> bool {
    polls("").iter().any(|(poll, _, _)| *poll == name)
}

/// A broad poll slower than this is counted as an error rather than waited for.
const POLL_TIMEOUT: Duration = Duration::from_secs(30);

/// `GET path`, answered 200 with a searchset Bundle that found something within
/// [`POLL_TIMEOUT`]: anything else is counted as an error (a search that finds nothing would
/// measure nothing).
pub fn search_operation(api: Api, path: String) -> Operation {
    Arc::new(move |_, _| {
        let (api, path) = (api.clone(), path.clone());
        Box::pin(async move {
            let response = api.request(reqwest::Method::GET, &path).timeout(POLL_TIMEOUT).send().await?;
            let status = response.status();
            let body = response.text().await?;
            if status != reqwest::StatusCode::OK {
                anyhow::bail!("{path} answered {status}: {}", body.chars().take(300).collect::<String>());
            }
            if !body.contains("\"searchset\"") || !body.contains("\"entry\"") {
                anyhow::bail!(
                    "{path} answered no searchset Bundle with entries: {}",
                    body.chars().take(300).collect::<String>()
                );
            }
            Ok(true)
        })
    })
}

/// The seeding's pace, for the log.
pub fn describe(db: &str, seeding: &Seeding) -> String {
    format!(
        "{:>10} {db:>8} grew to {} Tasks: {} added in {:.1} s, {:.0} Tasks/s, {} transactions shed and sent again",
        "seeding",
        seeding.tasks,
        seeding.added,
        seeding.seconds,
        seeding.rate(),
        seeding.retries
    )
}
