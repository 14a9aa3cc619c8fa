//! The production topology as `docker/topology.sh` runs it without Docker: PostgreSQL, two
//! replicas and HAProxy in front. Through the load balancer: requests reach both replicas, a
//! replica killed in the middle of the traffic loses no acknowledged write, and webhooks are
//! still delivered, each once.
//!
//! Needs PostgreSQL (`LINKBRIDGE_TEST_POSTGRES_URL`) and HAProxy (Debian's `haproxy`, which
//! `.ci/run` installs); without either it says so loudly and does nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::fixtures::{nhs_number, referral_transaction};
use crate::helpers::{json_of, register_test_clients, Party};
use crate::processes::{free_port, token_from};
use crate::subscriptions::{subscription, TASK_TOPIC};
use crate::webhook_receiver::{new_secret, WebhookReceiver};
use linkbridge::store::DatabaseUrl;

/// The running topology; stopped (and its database dropped) on drop.
struct Topology {
    script: PathBuf,
    /// The script's state directory (PIDs, logs, keys), inside a temporary directory.
    state: PathBuf,
    _root: tempfile::TempDir,
    env: Vec<(String, String)>,
    database_url: String,
    lb: String,
    replicas: [String; 2],
}

impl Topology {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("bash");
        command.arg(&self.script).args(args).envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }

    fn run(&self, args: &[&str]) {
        let output = self.command(args).output().expect("topology.sh runs");
        assert!(
            output.status.success(),
            "topology.sh {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn replica_pid(&self, n: usize) -> i32 {
        let pid = std::fs::read_to_string(self.state.join(format!("replica-{n}.pid"))).expect("pid file");
        pid.trim().parse().expect("a pid")
    }

    fn logs(&self) -> String {
        ["replica-1.log", "replica-2.log", "lb.log"]
            .iter()
            .map(|name| std::fs::read_to_string(self.state.join(name)).unwrap_or_default())
            .map(|log| log.lines().rev().take(20).collect::<Vec<_>>().join("\n"))
            .collect::<Vec<_>>()
            .join("\n----\n")
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = self.command(&["stop", "--clean"]).output();
    }
}

fn haproxy_available() -> bool {
    Command::new("haproxy").arg("-v").output().is_ok_and(|o| o.status.success())
}

async fn start_topology(postgres: &str) -> Topology {
    let root = tempfile::tempdir().expect("state directory");
    let state = root.path().join("topology");
    let database = format!("lb_test_topology_{}", uuid::Uuid::new_v4().simple());
    let server = postgres.rsplit_once('/').map_or(postgres, |(server, _)| server).to_owned();
    let (lb_port, stats_port, ports) = (free_port(), free_port(), [free_port(), free_port()]);
    let env = [
        ("TOPOLOGY_STATE_DIR", state.display().to_string()),
        ("TOPOLOGY_POSTGRES", server.clone()),
        ("TOPOLOGY_DATABASE", database.clone()),
        ("TOPOLOGY_LB_PORT", lb_port.to_string()),
        ("TOPOLOGY_STATS_PORT", stats_port.to_string()),
        ("TOPOLOGY_REPLICA_PORTS", format!("{} {}", ports[0], ports[1])),
        // Loopback receivers, and quick retries so the test does not wait on the schedule.
        ("LINKBRIDGE_ALLOW_PRIVATE_WEBHOOK_ENDPOINTS", "true".to_owned()),
        ("LINKBRIDGE_DELIVERY_RETRY_SCHEDULE", "200ms,400ms,800ms,1s,1s,2s,2s".to_owned()),
        ("LINKBRIDGE_DELIVERY_POLL_INTERVAL_MS", "100".to_owned()),
        ("LINKBRIDGE_DELIVERY_LEASE_SECS", "5".to_owned()),
        ("LINKBRIDGE_DELIVERY_TIMEOUT_SECS", "2".to_owned()),
    ];
    let topology = Topology {
        script: Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/topology.sh"),
        state,
        _root: root,
        env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        database_url: format!("{server}/{database}"),
        lb: format!("http://127.0.0.1:{lb_port}"),
        replicas: ports.map(|port| format!("http://127.0.0.1:{port}")),
    };
    topology.run(&["start", env!("CARGO_BIN_EXE_linkbridge")]);
    register_test_clients(&DatabaseUrl::Postgres(topology.database_url.clone())).await;
    topology
}

/// An access token from the load balancer's token endpoint (either replica may issue it).
async fn token(http: &reqwest::Client, lb: &str, party: Party) -> String {
    let token_url = format!("{lb}/auth/token");
    token_from(http, &token_url, &token_url, party).await.unwrap_or_else(|body| panic!("token: {body}"))
}

/// How many requests a replica has answered, by its own `/metrics`.
async fn requests_served(http: &reqwest::Client, replica: &str) -> f64 {
    let text = http.get(format!("{replica}/metrics")).send().await.expect("metrics").text().await.expect("text");
    text.lines()
        .filter(|line| line.starts_with("linkbridge_http_request_duration_seconds_count{"))
        .filter(|line| !line.contains(r#"route="/readyz""#) && !line.contains(r#"route="/metrics""#))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn send(http: &reqwest::Client, url: String, token: &str, method: Method, body: Option<&Value>) -> (u16, Value) {
    let mut request = http.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.header("Content-Type", "application/fhir+json").body(body.to_string());
    }
    match request.send().await {
        Ok(response) => json_of(response).await,
        // The connection broke (the replica died under it): not acknowledged.
        Err(_) => (0, Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_load_balancer_both_replicas_serve_a_killed_one_loses_no_acknowledged_write_and_webhooks_arrive() {
    let Ok(postgres) = std::env::var("LINKBRIDGE_TEST_POSTGRES_URL") else {
        crate::helpers::announce_skip("the topology test: it needs LINKBRIDGE_TEST_POSTGRES_URL");
        assert!(std::env::var_os("CI").is_none(), "CI must run the topology test");
        return;
    };
    if !haproxy_available() {
        crate::helpers::announce_skip(
            "the topology test: it needs HAProxy (apt-get install haproxy); .ci/run installs it",
        );
        assert!(std::env::var_os("CI").is_none(), "CI must run the topology test");
        return;
    }
    let topology = start_topology(&postgres).await;
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    let gp = token(&http, &topology.lb, Party::Gp).await;

    // A subscription to every Task of the practice, delivered to a loopback receiver.
    let receiver = WebhookReceiver::start().await;
    let filter = format!("Task?requester=Organization/{}", Party::Gp.ods());
    let subscription = subscription(&receiver.url(), &new_secret(), TASK_TOPIC, &[&filter], "id-only");
    let (status, created) =
        send(&http, format!("{}/Subscription", topology.lb), &gp, Method::POST, Some(&subscription)).await;
    assert_eq!(
        status,
        201,
        "{created}
{}",
        topology.logs()
    );
    receiver.wait_for(1, Duration::from_secs(30)).await;

    // Both replicas take traffic from the load balancer.
    let before =
        [requests_served(&http, &topology.replicas[0]).await, requests_served(&http, &topology.replicas[1]).await];
    for _ in 0..20 {
        let (status, _) = send(&http, format!("{}/metadata", topology.lb), &gp, Method::GET, None).await;
        assert_eq!(status, 200);
    }
    let after =
        [requests_served(&http, &topology.replicas[0]).await, requests_served(&http, &topology.replicas[1]).await];
    let served = [after[0] - before[0], after[1] - before[1]];
    assert!(served[0] >= 5.0 && served[1] >= 5.0, "round robin over both replicas: {served:?}");

    // Referrals from four clients at once; replica 1 is killed (SIGKILL) part-way through.
    let acknowledged = std::sync::Arc::new(tokio::sync::Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (http, lb, gp, acknowledged) = (http.clone(), topology.lb.clone(), gp.clone(), acknowledged.clone());
        clients.push(tokio::spawn(async move {
            for _ in 0..15 {
                let bundle = referral_transaction(&nhs_number(), Party::Gp.ods(), Some(Party::Clw.ods()));
                let (status, response) = send(&http, format!("{lb}/"), &gp, Method::POST, Some(&bundle)).await;
                if status == 200 {
                    let location = response["entry"][3]["response"]["location"].as_str().expect("task location");
                    let task = location.split("/_history").next().expect("path").to_owned();
                    acknowledged.lock().await.push(task);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let victim = topology.replica_pid(1);
    Command::new("kill").args(["-KILL", &victim.to_string()]).status().expect("kill runs");
    for client in clients {
        client.await.expect("client task");
    }
    let acknowledged = acknowledged.lock().await.clone();
    assert!(
        acknowledged.len() >= 40,
        "most referrals were acknowledged: {}
{}",
        acknowledged.len(),
        topology.logs()
    );

    // Every acknowledged referral is there, read through the load balancer.
    for task in &acknowledged {
        let (status, body) = send(&http, format!("{}/{task}", topology.lb), &gp, Method::GET, None).await;
        assert_eq!(status, 200, "{task} was acknowledged but is not readable: {body}");
    }
    // And each was announced to the subscriber: the surviving replica delivers what the killed
    // one had claimed, after its lease. An event the killed replica sent but could not record
    // may arrive twice, always under its one `webhook-id` (receivers deduplicate on it).
    let task_id =
        |reference: &str| reference.split("Task/").nth(1).and_then(|rest| rest.split('/').next()).map(str::to_owned);
    let expected: BTreeSet<String> = acknowledged.iter().filter_map(|task| task_id(task)).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let announced = loop {
        let announced: Vec<(String, String)> = receiver
            .accepted()
            .iter()
            .flat_map(|delivery| {
                let webhook_id = delivery.header("webhook-id").unwrap_or_default().to_owned();
                let bundle = delivery.json();
                let events = bundle["entry"][0]["resource"]["parameter"].as_array().cloned().unwrap_or_default();
                events
                    .into_iter()
                    .filter(|p| p["name"] == "notification-event")
                    .flat_map(|p| p["part"].as_array().cloned().unwrap_or_default())
                    .filter(|part| part["name"] == "focus")
                    .filter_map(|part| part["valueReference"]["reference"].as_str().and_then(task_id))
                    .map(|task| (task, webhook_id.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let tasks: BTreeSet<String> = announced.iter().map(|(task, _)| task.clone()).collect();
        if expected.is_subset(&tasks) || std::time::Instant::now() > deadline {
            break announced;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let tasks: BTreeSet<String> = announced.iter().map(|(task, _)| task.clone()).collect();
    let missing: Vec<_> = expected.difference(&tasks).collect();
    assert!(missing.is_empty(), "acknowledged but never announced: {missing:?}\n{}", topology.logs());
    for task in &expected {
        let ids: BTreeSet<&String> = announced.iter().filter(|(t, _)| t == task).map(|(_, id)| id).collect();
        assert_eq!(ids.len(), 1, "Task/{task} was announced as more than one event: {ids:?}");
    }
}
