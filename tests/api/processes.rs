//! Real `linkbridge` server processes, for what one in-process server cannot show: several
//! replicas sharing one database, restarts, kills.
//!
//! Each [`ServerProcess`] is the built binary (`CARGO_BIN_EXE_linkbridge`) on a free loopback
//! port, configured through flags and `LINKBRIDGE_*` variables only (as an operator would), with
//! its output in a log file. It is ready once `/healthz` answers, and killed when dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{client_assertion, json_of, Party};

/// How long a process may take to answer `/healthz` (debug builds on two shared cores are slow
/// to start, and PostgreSQL migrations run at startup).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// What a server process is started with.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The data directory (signing keys; the SQLite database when `database_url` is unset).
    /// Replicas share one so that each verifies the others' access tokens.
    pub data_dir: PathBuf,
    /// `LINKBRIDGE_DATABASE_URL`; unset means SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// `--public-base-url`: the address clients use (a load balancer's, for replicas). Unset
    /// means the process's own `http://127.0.0.1:<port>`.
    pub public_base_url: Option<String>,
    /// Further `LINKBRIDGE_*` settings, e.g. `("LINKBRIDGE_MAX_PAGE_SIZE", "100")`.
    pub env: Vec<(String, String)>,
}

impl ServerOptions {
    pub fn new(data_dir: &Path) -> Self {
        ServerOptions { data_dir: data_dir.to_path_buf(), database_url: None, public_base_url: None, env: Vec::new() }
    }
}

/// A running `linkbridge` process. Killed (and reaped) on drop.
pub struct ServerProcess {
    child: Child,
    /// Where this process listens: `http://127.0.0.1:<port>`.
    pub address: String,
    /// The base URL the process believes it has (tokens' `iss`/`aud`, links, the token URL).
    pub public_base_url: String,
    log_path: PathBuf,
    _log_dir: tempfile::TempDir,
}

/// A port nobody listens on right now: bind port 0, note the port, release it. Another process
/// could take it in between; on a test machine that is rare enough.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

impl ServerProcess {
    /// Starts the binary and waits until `/healthz` answers 200. Panics with the process's log
    /// if it exits or does not become healthy in time.
    pub async fn start(options: &ServerOptions) -> ServerProcess {
        let port = free_port();
        let address = format!("http://127.0.0.1:{port}");
        let public_base_url = options.public_base_url.clone().unwrap_or_else(|| address.clone());
        let log_dir = tempfile::tempdir().expect("log directory");
        let log_path = log_dir.path().join("linkbridge.log");
        let log = File::create(&log_path).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_linkbridge"));
        // Settings are `deny_unknown_fields`: a stray LINKBRIDGE_* variable of the test
        // environment (LINKBRIDGE_TEST_POSTGRES_URL) would stop the server from starting.
        for (name, _) in std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v))) {
            if name.starts_with("LINKBRIDGE_") {
                command.env_remove(name);
            }
        }
        command
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&options.data_dir)
            .arg("--public-base-url")
            .arg(&public_base_url)
            .env("LINKBRIDGE_WORKERS", "2")
            .env("LINKBRIDGE_DB_MAX_CONNECTIONS", "4")
            .env("LINKBRIDGE_ALLOW_INSECURE_LOOPBACK_JWKS", "true")
            .env("LINKBRIDGE_LOG", "info,sqlx=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        if let Some(url) = &options.database_url {
            command.env("LINKBRIDGE_DATABASE_URL", url);
        }
        for (name, value) in &options.env {
            command.env(name, value);
        }
        let child = command.spawn().expect("start the linkbridge binary");
        let mut process = ServerProcess { child, address, public_base_url, log_path, _log_dir: log_dir };
        process.wait_until_healthy().await;
        process
    }

    async fn wait_until_healthy(&mut self) {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("http client");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("linkbridge exited during startup ({status}):\n{}", self.logs());
            }
            if let Ok(response) = http.get(self.url("/healthz")).send().await {
                if response.status() == 200 {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("linkbridge did not answer /healthz within {STARTUP_TIMEOUT:?}:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A URL on this process (its real address, whatever the public base URL says).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// The token endpoint as the process advertises it: what a client assertion's `aud` must be.
    pub fn token_endpoint(&self) -> String {
        format!("{}/auth/token", self.public_base_url)
    }

    /// The process id (for its `/proc` figures).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// An access token for `party`, asked of `url` with a client assertion for `audience` (the
/// token endpoint the server advertises, which a load balancer's address may differ from).
pub async fn token_from(http: &reqwest::Client, audience: &str, url: &str, party: Party) -> Result<String, Value> {
    let assertion = client_assertion(party, audience, &Value::Null);
    let response = http
        .post(url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.cruds"),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("client_assertion", assertion.as_str()),
        ])
        .send()
        .await
        .expect("token request");
    let (status, body) = json_of(response).await;
    match body["access_token"].as_str() {
        Some(token) if status == 200 => Ok(token.to_owned()),
        _ => Err(body),
    }
}

impl ServerProcess {
    /// An access token for `party` from this process's token endpoint.
    pub async fn token(&self, http: &reqwest::Client, party: Party) -> String {
        let token = token_from(http, &self.token_endpoint(), &self.url("/auth/token"), party).await;
        token.unwrap_or_else(|body| panic!("token from {}: {body}\n{}", self.address, self.logs()))
    }

    /// Sends a FHIR request with `token`, an optional JSON body and an optional `If-Match`.
    pub async fn send(
        &self,
        http: &reqwest::Client,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> (u16, Value) {
        let mut request = http.request(method, self.url(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.header("Content-Type", "application/fhir+json").body(body.to_string());
        }
        if let Some(etag) = if_match {
            request = request.header("If-Match", etag);
        }
        json_of(request.send().await.expect("request")).await
    }
}

impl ServerProcess {
    /// Sends SIGTERM (as an orchestrator stopping a replica does) and waits for the exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
        assert!(sent.success(), "SIGTERM delivered");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait().expect("process status") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "the server did not stop within 40 s of SIGTERM");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
