//! Faults answered honestly (issue 28, section 4): a database that drops its connections is
//! answered 503 with `Retry-After` (never 500) and serves again within seconds; `/readyz`
//! says when the database cannot write; start-up refuses a damaged SQLite file and one that
//! cannot be written; a webhook endpoint that comes back receives its backlog at once.
//!
//! The faults are injected without touching the shared PostgreSQL server: its backends for
//! the test's own database are terminated (what a restart or a failover does to a client),
//! and the test database is made read-only. On SQLite the tests run as root, which ignores
//! permission bits: a file or directory is made immutable (`chattr +i`, which refuses writes
//! even to root and even through descriptors already open) and the test says SKIPPED where the
//! filesystem does not support it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fixtures::{nhs_number, patient};
use crate::helpers::{
    json_of, register_test_clients, spawn_app, spawn_app_on, spawn_app_with, test_database, test_settings, Db, Party,
    TestApp, TestDatabase, POSTGRES_ENV,
};
use crate::on_both_databases;
use crate::subscriptions::{events_received, subscribe, subscription, TASK_TOPIC};
use crate::webhook_receiver::{new_secret, WebhookReceiver};
use crate::workflow::{drive, id_of, refer};
use linkbridge::startup::Application;
use linkbridge::store::DatabaseUrl;

/// How soon the service must serve reads and writes again after its connections were lost.
const RECOVERY: Duration = Duration::from_secs(5);

/// How long a probe may take to see a change (it remembers its last check for a second).
const PROBE_WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// PostgreSQL: connections terminated, the database read-only.

/// The test database's name, from its URL.
fn postgres_database_name(database: &TestDatabase) -> String {
    let DatabaseUrl::Postgres(url) = &database.url else { panic!("a PostgreSQL test database") };
    let path = url.split('?').next().unwrap_or(url);
    path.rsplit('/').next().expect("the URL names a database").to_owned()
}

/// Runs `statement` on the PostgreSQL server the tests use, from its maintenance database.
async fn as_postgres_admin(statement: &str) -> Vec<sqlx::postgres::PgRow> {
    use sqlx::Connection;
    let admin_url = std::env::var(POSTGRES_ENV).expect("the PostgreSQL tests have a server");
    let mut conn = sqlx::PgConnection::connect(&admin_url).await.expect("connect to PostgreSQL as its admin");
    let rows = sqlx::query(statement).fetch_all(&mut conn).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
    let _ = conn.close().await;
    rows
}

/// Ends every connection to the test's database, as a restart or failover of the server does
/// to its clients; answers how many there were.
async fn terminate_backends(database: &TestDatabase) -> usize {
    let name = postgres_database_name(database);
    as_postgres_admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    ))
    .await
    .len()
}

/// What a request came to while the database was failing: success, or 503 with `Retry-After`.
/// Anything else fails the test, naming the request.
async fn success_or_retry_later(what: &str, response: reqwest::Response) -> bool {
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap_or_default().to_owned());
    let (status, body) = json_of(response).await;
    match status {
        200..=299 => true,
        503 => {
            let seconds = retry_after.unwrap_or_else(|| panic!("{what}: 503 without Retry-After: {body}"));
            assert!(seconds.parse::<u64>().is_ok_and(|s| s > 0), "{what}: Retry-After {seconds:?}");
            false
        }
        other => panic!("{what}: answered {other} while the database recovered (only success or 503): {body}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_postgresql_connections_are_answered_503_with_retry_after_and_service_returns_within_seconds() {
    let Some(app) = spawn_app_on(Db::Postgres).await else { return };
    let known = id_of(&app.created(Party::Gp, &patient(&nhs_number())).await);
    let read_path = format!("/Patient/{known}");
    assert_eq!(app.get(Party::Gp, &read_path).await.status(), 200);

    // Twice: with the pools' connections fresh, then again once they were replaced.
    for round in 1..=2 {
        let ended = terminate_backends(&app.database).await;
        assert!(ended > 0, "round {round}: the server held connections to its database");
        let began = Instant::now();
        let (mut wrote, mut read, mut token) = (false, false, false);
        while !(wrote && read && token) {
            assert!(
                began.elapsed() < RECOVERY,
                "round {round}: reads, writes and tokens were not all served again within {RECOVERY:?} \
                 (wrote {wrote}, read {read}, token {token})"
            );
            wrote |= success_or_retry_later("a create", app.create(Party::Gp, &patient(&nhs_number())).await).await;
            read |= success_or_retry_later("a read", app.get(Party::Gp, &read_path).await).await;
            token |= success_or_retry_later(
                "a token request",
                app.request_token(Party::Clw, "system/*.cruds", &Value::Null).await,
            )
            .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("round {round}: served again {:?} after {ended} connections were terminated", began.elapsed());
    }
    // And it stays served.
    for _ in 0..5 {
        assert_eq!(app.create(Party::Gp, &patient(&nhs_number())).await.status(), 201);
        assert_eq!(app.get(Party::Gp, &read_path).await.status(), 200);
    }
}

/// A TCP relay in front of the PostgreSQL server that the test can take down (every relayed
/// connection cut, new ones refused) and bring back on the same port: the database
/// unreachable, as a stopped server or a network partition leaves it, without touching the
/// server the other tests share.
struct Relay {
    listen: std::net::SocketAddr,
    upstream: String,
    running: tokio::sync::Mutex<Option<(tokio::task::JoinHandle<()>, RelayedConnections)>>,
}

type RelayedConnections = std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>;

impl Relay {
    async fn start(upstream: String) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the relay");
        let listen = listener.local_addr().expect("the relay's address");
        let relay = Relay { listen, upstream, running: tokio::sync::Mutex::new(None) };
        *relay.running.lock().await = Some(relay.serve(listener));
        relay
    }

    fn serve(&self, listener: tokio::net::TcpListener) -> (tokio::task::JoinHandle<()>, RelayedConnections) {
        let connections = RelayedConnections::default();
        let (upstream, relayed) = (self.upstream.clone(), connections.clone());
        let accepting = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let relaying = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                relayed.lock().expect("relay lock").push(relaying);
            }
        });
        (accepting, connections)
    }

    /// Refuses new connections and cuts every relayed one.
    async fn go_down(&self) {
        if let Some((accepting, connections)) = self.running.lock().await.take() {
            accepting.abort();
            let _ = accepting.await;
            for relaying in connections.lock().expect("relay lock").drain(..) {
                relaying.abort();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while tokio::net::TcpStream::connect(self.listen).await.is_ok() {
            assert!(Instant::now() < deadline, "the relay still accepts connections");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Listens again on the same port.
    async fn come_back(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.listen).await {
                Ok(listener) => break listener,
                Err(e) => assert!(Instant::now() < deadline, "rebind the relay on {}: {e}", self.listen),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        *self.running.lock().await = Some(self.serve(listener));
    }
}

/// A relay in front of the test's PostgreSQL database, and settings that reach it through it.
async fn settings_through_a_relay(database: &TestDatabase) -> (Relay, linkbridge::config::Settings) {
    let DatabaseUrl::Postgres(direct) = &database.url else { unreachable!("a PostgreSQL database") };
    let mut through_relay = reqwest::Url::parse(direct).expect("the test database's URL");
    let upstream =
        format!("{}:{}", through_relay.host_str().expect("the server's host"), through_relay.port().unwrap_or(5432));
    let relay = Relay::start(upstream).await;
    through_relay.set_port(Some(relay.listen.port())).expect("a port");
    through_relay.set_host(Some("127.0.0.1")).expect("a host");
    let settings = linkbridge::config::Settings {
        database_url: Some(through_relay.to_string().into()),
        ..test_settings(database)
    };
    (relay, settings)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_postgresql_is_answered_503_with_retry_after_and_service_returns_when_it_is_back() {
    let Some(database) = test_database(Db::Postgres).await else { return };
    let (relay, settings) = settings_through_a_relay(&database).await;
    let app = spawn_app_with(database, settings).await;
    let known = id_of(&app.created(Party::Gp, &patient(&nhs_number())).await);
    let read_path = format!("/Patient/{known}");

    relay.go_down().await;
    assert!(!success_or_retry_later("a read", app.get(Party::Gp, &read_path).await).await);
    assert!(!success_or_retry_later("a create", app.create(Party::Gp, &patient(&nhs_number())).await).await);
    let token = app.request_token(Party::Clw, "system/*.cruds", &Value::Null).await;
    assert!(!success_or_retry_later("a token request", token).await);
    let body = wait_for_readiness(&app, 503).await;
    assert_eq!(body["status"], "database unreachable", "{body}");

    relay.come_back().await;
    let began = Instant::now();
    let (mut wrote, mut read) = (false, false);
    while !(wrote && read) {
        assert!(began.elapsed() < RECOVERY, "not served again within {RECOVERY:?} (wrote {wrote}, read {read})");
        wrote |= success_or_retry_later("a create", app.create(Party::Gp, &patient(&nhs_number())).await).await;
        read |= success_or_retry_later("a read", app.get(Party::Gp, &read_path).await).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for_readiness(&app, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_issuers_token_is_answered_503_not_401_while_its_registration_cannot_be_read() {
    use crate::external_issuer::{external_token, serve_json, ISSUER};
    let Some(database) = test_database(Db::Postgres).await else { return };
    let key = linkbridge::auth::SigningKey::generate().expect("key");
    let (relay, mut settings) = settings_through_a_relay(&database).await;
    // The registration is read for each request, not remembered for `token_recheck_secs`.
    settings.token_recheck_secs = 0;
    settings.external_issuer = Some(linkbridge::config::ExternalIssuerSettings {
        issuer: ISSUER.into(),
        jwks_url: serve_json(serde_json::json!({"keys": [key.public_jwk()]})).await,
        organization_claim: "ods".into(),
        role_claim: "board_role".into(),
    });
    let app = spawn_app_with(database, settings).await;
    let token = external_token(&key, &app.address, "gp-system", "GP0001", "referrer");
    let search = || app.http.get(app.url("/Patient")).bearer_auth(&token).send();
    assert_eq!(search().await.expect("search").status(), 200, "the token is good");

    relay.go_down().await;
    let refused = search().await.expect("search");
    assert_eq!(refused.status(), 503, "no verdict on the token while its registration cannot be read");
    assert!(refused.headers().contains_key("retry-after"), "and when to try again");

    relay.come_back().await;
    let began = Instant::now();
    while search().await.expect("search").status() != 200 {
        assert!(began.elapsed() < RECOVERY, "the token is not accepted again within {RECOVERY:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `/readyz` answers `expected`; returns its body.
async fn wait_for_readiness(app: &TestApp, expected: u16) -> Value {
    let deadline = Instant::now() + PROBE_WAIT;
    loop {
        let response = app.http.get(app.url("/readyz")).send().await.expect("readyz");
        let retry_after = response.headers().contains_key("retry-after");
        let (status, body) = json_of(response).await;
        if status == expected {
            if status == 503 {
                assert!(retry_after, "a 503 from /readyz says when to ask again: {body}");
            }
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz did not answer {expected} within {PROBE_WAIT:?}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_while_the_postgresql_database_is_read_only_and_writes_are_answered_503() {
    let Some(app) = spawn_app_on(Db::Postgres).await else { return };
    wait_for_readiness(&app, 200).await;
    // Asked for before: a token request writes too (its assertion's replay guard).
    app.token(Party::Gp).await;
    let name = postgres_database_name(&app.database);

    as_postgres_admin(&format!("ALTER DATABASE {name} SET default_transaction_read_only = on")).await;
    terminate_backends(&app.database).await;
    let deadline = Instant::now() + PROBE_WAIT;
    loop {
        let body = wait_for_readiness(&app, 503).await;
        if body["reason"].as_str().is_some_and(|r| r.contains("read-only")) {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz never said the database is read-only: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A write meets the read-only database: 503 with Retry-After, not 500 (nor a lost write).
    for _ in 0..3 {
        let response = app.create(Party::Gp, &patient(&nhs_number())).await;
        assert_eq!(response.status(), 503, "a create on a read-only database");
        assert!(!success_or_retry_later("a create on a read-only database", response).await);
    }

    as_postgres_admin(&format!("ALTER DATABASE {name} RESET default_transaction_read_only")).await;
    terminate_backends(&app.database).await;
    wait_for_readiness(&app, 200).await;
    let deadline = Instant::now() + RECOVERY;
    while !success_or_retry_later("a create", app.create(Party::Gp, &patient(&nhs_number())).await).await {
        assert!(Instant::now() < deadline, "writes are served again once the database can write");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// SQLite: files that cannot be written, a damaged file.

/// A file or directory made immutable (`chattr +i`) until dropped: even root cannot write it.
struct Immutable(PathBuf);

impl Immutable {
    /// `None` (after saying so loudly) where the filesystem or the process cannot do it.
    fn make(path: &Path) -> Option<Immutable> {
        let done = std::process::Command::new("chattr").arg("+i").arg(path).output();
        match done {
            Ok(output) if output.status.success() => Some(Immutable(path.to_path_buf())),
            other => {
                eprintln!(
                    "\n*** SKIPPED: `chattr +i {}` is not available here ({other:?}); root ignores permission \
                     bits, so nothing else makes a file read-only for this test ***\n",
                    path.display()
                );
                None
            }
        }
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let undone = std::process::Command::new("chattr").arg("-i").arg(&self.0).status();
        assert!(undone.is_ok_and(|s| s.success()), "chattr -i {}", self.0.display());
    }
}

fn sqlite_file(database: &TestDatabase) -> PathBuf {
    let DatabaseUrl::Sqlite(path) = &database.url else { panic!("an SQLite test database") };
    path.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_naming_the_sqlite_file_while_it_cannot_be_written() {
    let app = spawn_app().await;
    wait_for_readiness(&app, 200).await;
    let file = sqlite_file(&app.database);
    {
        let Some(_immutable) = Immutable::make(&file) else { return };
        let body = wait_for_readiness(&app, 503).await;
        let reason = body["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(&file.display().to_string()), "names the file: {body}");
    }
    wait_for_readiness(&app, 200).await;

    let directory = file.parent().expect("the file's directory").to_path_buf();
    {
        let Some(_immutable) = Immutable::make(&directory) else { return };
        let body = wait_for_readiness(&app, 503).await;
        let reason = body["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(&directory.display().to_string()), "names the directory: {body}");
    }
    wait_for_readiness(&app, 200).await;
}

/// A migrated SQLite database with the test clients, its log checkpointed into the file and
/// removed as the last connection closes, so that the file alone holds it, as a server
/// stopped cleanly leaves it.
async fn closed_sqlite_database() -> TestDatabase {
    use sqlx::{Connection, Executor};
    let database = test_database(Db::Sqlite).await.expect("SQLite");
    register_test_clients(&database.url).await;
    let file = sqlite_file(&database);
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", file.display())).await.expect("open");
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").await.expect("checkpoint");
    conn.close().await.expect("close");
    let mut wal = file.as_os_str().to_owned();
    wal.push("-wal");
    assert!(!Path::new(&wal).exists(), "the log is gone");
    database
}

/// Runs the real binary on `data_dir` until it exits (it must, within a minute); its exit
/// status and everything it printed.
async fn run_binary_until_exit(data_dir: &Path) -> (std::process::ExitStatus, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_linkbridge"));
    for (name, _) in std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v))) {
        if name.starts_with("LINKBRIDGE_") {
            command.env_remove(name);
        }
    }
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut child = command
        .arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.reopen().expect("log handle"))
        .stderr(log.reopen().expect("log handle"))
        .spawn()
        .expect("start the linkbridge binary");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("process status") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "linkbridge did not exit within a minute:\n{}",
                std::fs::read_to_string(log.path()).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    (status, std::fs::read_to_string(log.path()).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_refuses_a_damaged_sqlite_file_naming_it() {
    let database = closed_sqlite_database().await;
    let file = sqlite_file(&database);
    // The schema stays as it was, so the file opens and answers `SELECT 1`; the page of the
    // registered clients is garbage, as a torn write or a failing disk leaves one.
    let clients_page: i64 = {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", file.display())).await.expect("open");
        let page = sqlx::query_scalar("SELECT rootpage FROM sqlite_master WHERE type = 'table' AND name = 'clients'")
            .fetch_one(&mut conn)
            .await
            .expect("the clients table's page");
        conn.close().await.expect("close");
        page
    };
    let mut bytes = std::fs::read(&file).expect("read the database file");
    let page_size = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    let start = (usize::try_from(clients_page).expect("a page number") - 1) * page_size;
    for (offset, byte) in bytes[start..start + page_size].iter_mut().enumerate() {
        *byte = (offset % 251) as u8 ^ 0x5a;
    }
    std::fs::write(&file, &bytes).expect("write the damaged file");

    let settings = test_settings(&database);
    let refused = Application::build(&settings).await.err().expect("a damaged database is refused");
    let message = refused.to_string();
    assert!(message.contains("damaged") && message.contains(&file.display().to_string()), "{message}");

    let (status, output) = run_binary_until_exit(database.dir.path()).await;
    assert!(!status.success(), "the binary exits with failure: {status}\n{output}");
    assert!(output.contains("damaged") && output.contains(&file.display().to_string()), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_refuses_an_sqlite_file_or_data_directory_that_cannot_be_written() {
    let database = closed_sqlite_database().await;
    let file = sqlite_file(&database);
    let settings = test_settings(&database);
    {
        // SQLite would open it read-only without a word, and every write would fail.
        let Some(_immutable) = Immutable::make(&file) else { return };
        let refused = Application::build(&settings).await.err().expect("a read-only database file is refused");
        let message = refused.to_string();
        assert!(message.contains(&file.display().to_string()) && message.contains("for writing"), "{message}");
        let (status, output) = run_binary_until_exit(database.dir.path()).await;
        assert!(!status.success(), "the binary exits with failure: {status}\n{output}");
        assert!(output.contains(&file.display().to_string()), "{output}");
    }
    {
        let directory = database.dir.path();
        let Some(_immutable) = Immutable::make(directory) else { return };
        let refused = Application::build(&settings).await.err().expect("a read-only data directory is refused");
        let message = refused.to_string();
        assert!(message.contains(&directory.display().to_string()) && message.contains("not writable"), "{message}");
    }
    let app = spawn_app_with(database, settings).await;
    wait_for_readiness(&app, 200).await;
}

// ---------------------------------------------------------------------------------------------
// Webhooks: a backlog flows as soon as its endpoint is back.

async fn outbox_counts(app: &TestApp) -> (i64, i64, i64) {
    let (status, body) = json_of(app.get(Party::Operator, "/$outbox-status").await).await;
    assert_eq!(status, 200, "{body}");
    let count = |name: &str| {
        body["parameter"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == name))
            .and_then(|p| p["valueInteger"].as_i64())
            .unwrap_or(0)
    };
    (count("attempts"), count("failures"), count("delivered"))
}

/// The outbox's rows as the database holds them, for failure messages.
async fn outbox_rows(database: &TestDatabase) -> Vec<String> {
    use sqlx::{Connection, Row};
    sqlx::any::install_default_drivers();
    let url = match &database.url {
        DatabaseUrl::Postgres(url) => url.clone(),
        DatabaseUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
    };
    let Ok(mut conn) = sqlx::AnyConnection::connect(&url).await else { return vec!["(unreadable)".to_owned()] };
    let rows = sqlx::query(
        "SELECT kind, event_number, state, attempts, failures, next_attempt_at, lease_until, created_at \
         FROM outbox_events ORDER BY created_at",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default();
    rows.iter()
        .map(|row| {
            format!(
                "{} #{:?} {} attempts {} failures {} next {} lease {:?} created {}",
                row.get::<String, _>(0),
                row.get::<Option<i64>, _>(1),
                row.get::<String, _>(2),
                row.get::<i64, _>(3),
                row.get::<i64, _>(4),
                row.get::<i64, _>(5),
                row.get::<Option<i64>, _>(6),
                row.get::<i64, _>(7),
            )
        })
        .collect()
}

async fn an_endpoint_that_comes_back_receives_its_backlog_at_once(db: Db) {
    let Some(database) = test_database(db).await else { return };
    let settings = linkbridge::config::Settings {
        allow_private_webhook_endpoints: true,
        // A quick first retry, then a backoff far longer than the test waits.
        delivery_retry_schedule: "300ms,120s,120s".to_owned(),
        delivery_poll_interval_ms: 100,
        delivery_lease_secs: 5,
        delivery_timeout_secs: 2,
        ..test_settings(&database)
    };
    let app = spawn_app_with(database, settings).await;
    let receiver = WebhookReceiver::start().await;
    subscribe(&app, Party::Gp, &subscription(&receiver.url(), &new_secret(), TASK_TOPIC, &[], "id-only")).await;

    receiver.go_down().await;
    let referral = refer(&app, Party::Gp, Some(Party::Clw.ods()), "requested").await;
    drive(&app, &referral.task_path(), &[(Party::Clw, "accepted"), (Party::Clw, "in-progress")]).await;
    // Each event fails at once, and again at its quick retry unless another's second failure
    // has already held it back with that one (see `store::subscriptions`): after a second
    // failure, every event waits two minutes. Settled once nothing is in flight (each claim's
    // failure recorded) and nothing changes for a second, three quick retries' time.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = (0, 0, 0);
    loop {
        let counts = outbox_counts(&app).await;
        let (attempts, failures, delivered) = counts;
        if failures >= 4 && attempts == failures + delivered && counts == last {
            break;
        }
        if Instant::now() > deadline {
            let now = linkbridge::domain::instant::Instant::now().micros();
            let rows = outbox_rows(&app.database).await;
            panic!("the events were not retried into the backoff: {counts:?} at {now}:\n{}", rows.join("\n"));
        }
        last = counts;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    receiver.come_back().await;
    let back = Instant::now();
    // The next change is delivered at once, and that success releases the backlog.
    refer(&app, Party::Gp, Some(Party::Clw.ods()), "requested").await;
    loop {
        let received = events_received(&receiver);
        if (1..=4).all(|n| received.contains_key(&n)) {
            break;
        }
        if back.elapsed() > Duration::from_secs(10) {
            let now = linkbridge::domain::instant::Instant::now().micros();
            let rows = outbox_rows(&app.database).await;
            panic!(
                "the backlog did not follow the endpoint's return within 10 s (received {:?}) at {now}:\n{}",
                received.keys().collect::<Vec<_>>(),
                rows.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

on_both_databases!(an_endpoint_that_comes_back_receives_its_backlog_at_once);
