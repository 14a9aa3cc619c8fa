//! The four measured interactions, as the GP system and the CLW tool perform them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use rand::Rng;
use serde_json::{json, Value};

use crate::load::Operation;

pub const ODS: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
const NHS: &str = "https://fhir.nhs.uk/Id/nhs-number";
pub const GP_ODS: &str = "DEMOGP1";
pub const CLW_ODS: &str = "DEMOCLW1";

/// The API as one client system sees it.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Api {
    pub fn new(base: &str, token: String, concurrency: usize) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency.max(1))
            .tcp_nodelay(true)
            .build()
            .expect("HTTP client");
        Api { http, base: base.to_owned(), token }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token)
    }
}

/// NHS numbers with a valid modulus-11 check digit, unique within a run: a fresh patient per
/// referral, as in a real practice.
pub struct NhsNumbers(AtomicU64);

impl NhsNumbers {
    pub fn new() -> Self {
        // Each run starts somewhere else in the 900 range (never issued to real people), so runs
        // against one database do not collide.
        NhsNumbers(AtomicU64::new(rand::thread_rng().gen_range(0..50_000_000) * 10))
    }

    pub fn next(&self) -> String {
        loop {
            let n = self.0.fetch_add(1, Ordering::Relaxed) % 100_000_000;
            let digits: Vec<u64> = format!("9{n:08}").bytes().map(|b| u64::from(b - b'0')).collect();
            let sum: u64 = digits.iter().zip((2..=10).rev()).map(|(d, w)| d * w).sum();
            let check = match 11 - sum % 11 {
                11 => 0,
                10 => continue,
                c => c,
            };
            return format!("9{n:08}{check}");
        }
    }
}

/// A referral as one transaction: Patient (created unless its NHS number is known),
/// ServiceRequest and Task, linked by `urn:uuid:` references.
pub fn referral_bundle(nhs_number: &str) -> Value {
    json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": referral_entries(nhs_number, GP_ODS, Some(CLW_ODS), "2026-11-23T09:31:00Z")
    })
}

/// A reference to an organisation by its ODS code.
pub fn org(ods: &str) -> Value {
    json!({"identifier": {"system": ODS, "value": ods}})
}

/// The three transaction entries of a referral from `practice` to the CLW service `owner`
/// (none: an open Task any CLW service may claim), authored at `authored_on`.
pub fn referral_entries(nhs_number: &str, practice: &str, owner: Option<&str>, authored_on: &str) -> Vec<Value> {
    let urn = || format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let (patient, request, task) = (urn(), urn(), urn());
    let mut task_resource = json!({"resourceType": "Task", "status": "requested", "intent": "order",
        "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
        "focus": {"reference": request}, "for": {"reference": patient},
        "authoredOn": authored_on, "requester": org(practice)});
    let mut request_resource = json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "871731000000106",
                             "display": "Referral to social prescribing service"}]},
        "reasonCode": [{"coding": [{"system": "https://linkbridge.scot/fhir/CodeSystem/social-need-category", "code": "money-debt"}]}],
        "subject": {"reference": patient}, "requester": org(practice), "authoredOn": authored_on});
    if let Some(owner) = owner {
        task_resource["owner"] = org(owner);
        request_resource["performer"] = json!([org(owner)]);
    }
    vec![
        json!({"fullUrl": patient, "request": {"method": "POST", "url": "Patient", "ifNoneExist": format!("identifier={NHS}|{nhs_number}")},
         "resource": {"resourceType": "Patient", "identifier": [{"system": NHS, "value": nhs_number}],
                      "name": [{"family": "Benchmark", "given": ["Morag"]}], "gender": "female", "birthDate": "1961-04-12"}}),
        json!({"fullUrl": request, "request": {"method": "POST", "url": "ServiceRequest"}, "resource": request_resource}),
        json!({"fullUrl": task, "request": {"method": "POST", "url": "Task"}, "resource": task_resource}),
    ]
}

/// Sends one referral; returns the new Task's id.
pub async fn submit(gp: &Api, nhs: &NhsNumbers) -> anyhow::Result<Option<String>> {
    let response = send_referral(gp, nhs).await?;
    if !response.status().is_success() {
        return Ok(None);
    }
    let body: Value = response.json().await?;
    Ok(body["entry"][2]["response"]["location"]
        .as_str()
        .and_then(|location| location.split('/').nth(1))
        .map(str::to_owned))
}

/// `POST /` of a new referral, answered but not yet read.
async fn send_referral(gp: &Api, nhs: &NhsNumbers) -> anyhow::Result<reqwest::Response> {
    Ok(gp
        .request(reqwest::Method::POST, "/")
        .header("Content-Type", "application/fhir+json")
        .body(referral_bundle(&nhs.next()).to_string())
        .send()
        .await?)
}

/// A referral per request, its answer read whole but not parsed, as the other operations do:
/// the measurement needs only its status, and parsing the transaction-response Bundle was the
/// load generator's CPU taken from the two cores it shares with the server.
pub fn submit_operation(gp: Api) -> Operation {
    let nhs = Arc::new(NhsNumbers::new());
    Arc::new(move |_, _| {
        let (gp, nhs) = (gp.clone(), nhs.clone());
        Box::pin(async move {
            let response = send_referral(&gp, &nhs).await?;
            let ok = response.status().is_success();
            response.bytes().await?;
            Ok(ok)
        })
    })
}

/// `GET /Task/{id}` of a random one of `tasks`.
pub fn read_operation(api: Api, tasks: Arc<Vec<String>>) -> Operation {
    Arc::new(move |_, _| {
        let (api, tasks) = (api.clone(), tasks.clone());
        Box::pin(async move {
            let id = &tasks[rand::thread_rng().gen_range(0..tasks.len())];
            let response = api.request(reqwest::Method::GET, &format!("/Task/{id}")).send().await?;
            let ok = response.status().is_success();
            response.bytes().await?;
            Ok(ok)
        })
    })
}

/// The GP system's poll (docs/searching.md): its Tasks changed since `since`,
/// with the referrals they are about.
pub fn poll_operation(gp: Api, since: String) -> Operation {
    let path = format!("/Task?requester:identifier={ODS}|{GP_ODS}&_lastUpdated=gt{since}&_include=Task:focus");
    Arc::new(move |_, _| {
        let (gp, path) = (gp.clone(), path.clone());
        Box::pin(async move {
            let response = gp.request(reqwest::Method::GET, &path).send().await?;
            let ok = response.status().is_success();
            response.bytes().await?;
            Ok(ok)
        })
    })
}

/// The CLW tool moves its Tasks between in-progress and on-hold with a JSON Patch guarded by
/// `If-Match`; each worker owns one Task (`tasks[worker]`, already in progress) and tracks its
/// version from the ETag of each answer.
pub fn status_change_operation(clw: Api, tasks: Arc<Vec<String>>, versions: Arc<Vec<AtomicU64>>) -> Operation {
    Arc::new(move |worker, _| {
        let (clw, tasks, versions) = (clw.clone(), tasks.clone(), versions.clone());
        Box::pin(async move {
            let version = versions[worker].load(Ordering::Relaxed);
            // Odd versions past the first two moves are in progress (see `prepare_in_progress`).
            let patch = if version % 2 == 1 {
                json!([{"op": "replace", "path": "/status", "value": "on-hold"},
                       {"op": "add", "path": "/statusReason", "value": {"text": "waiting for the patient to call back"}}])
            } else {
                json!([{"op": "replace", "path": "/status", "value": "in-progress"},
                       {"op": "remove", "path": "/statusReason"}])
            };
            let response = clw
                .request(reqwest::Method::PATCH, &format!("/Task/{}", tasks[worker]))
                .header("Content-Type", "application/json-patch+json")
                .header("If-Match", format!("W/\"{version}\""))
                .body(patch.to_string())
                .send()
                .await?;
            let status = response.status();
            let etag = response.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let text = response.text().await?;
            if !status.is_success() {
                anyhow::bail!("PATCH answered {status}: {}", text.chars().take(300).collect::<String>());
            }
            let next = etag
                .as_deref()
                .and_then(|e| e.trim_start_matches("W/").trim_matches('"').parse::<u64>().ok())
                .context("the PATCH answer has no version ETag")?;
            versions[worker].store(next, Ordering::Relaxed);
            Ok(true)
        })
    })
}

/// Accepts and starts `task` as the CLW tool (versions 2 and 3); returns the version.
pub async fn prepare_in_progress(clw: &Api, task: &str) -> anyhow::Result<u64> {
    let mut version = 1;
    for status in ["accepted", "in-progress"] {
        let response = clw
            .request(reqwest::Method::PATCH, &format!("/Task/{task}"))
            .header("Content-Type", "application/json-patch+json")
            .header("If-Match", format!("W/\"{version}\""))
            .body(json!([{"op": "replace", "path": "/status", "value": status}]).to_string())
            .send()
            .await?;
        if !response.status().is_success() {
            anyhow::bail!("preparing Task/{task}: {} {}", response.status(), response.text().await?);
        }
        version += 1;
    }
    Ok(version)
}

/// The newest `meta.lastUpdated` of a Task, for the poll's `_lastUpdated=gt`.
pub async fn last_updated(api: &Api, task: &str) -> anyhow::Result<String> {
    let body: Value = api.request(reqwest::Method::GET, &format!("/Task/{task}")).send().await?.json().await?;
    body["meta"]["lastUpdated"].as_str().map(str::to_owned).context("a Task without meta.lastUpdated")
}

/// An instant a millisecond before `instant` (FHIR `instant` text, `Z` zone, as the server
/// writes it), for a `_lastUpdated=gt` that includes `instant` itself.
pub fn just_before(instant: &str) -> anyhow::Result<String> {
    let (seconds, fraction) =
        instant.trim_end_matches('Z').split_once('.').unwrap_or((instant.trim_end_matches('Z'), "0"));
    let micros: u64 = format!("{fraction:0<6}")[..6].parse().context("an instant's fraction")?;
    if micros >= 1000 {
        return Ok(format!("{seconds}.{:06}Z", micros - 1000));
    }
    // Rare: the instant is within a millisecond of a whole second; a second earlier is as good.
    let time = seconds.rsplit_once(':').context("an instant with seconds")?;
    let second: u32 = time.1.parse().context("seconds")?;
    Ok(format!("{}:{:02}.000000Z", time.0, second.saturating_sub(1)))
}
