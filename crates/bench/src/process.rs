//! The linkbridge binary under test: started as an operator would (flags and `LINKBRIDGE_*`
//! variables), its demo clients registered with the CLI, and its CPU time and peak memory read
//! from `/proc`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub struct Server {
    child: Child,
    pub base: String,
    binary: PathBuf,
    data_dir: PathBuf,
    database_url: Option<String>,
}

/// CPU seconds (user + system) and peak resident memory (VmHWM) of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu_secs: f64,
    pub peak_rss_mib: f64,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Server {
    /// Starts the server with the demo clients and `clients` (client id, ODS code, role)
    /// registered; see [`Server::register_like_demo`].
    pub async fn start(
        binary: &Path,
        data_dir: &Path,
        database_url: Option<&str>,
        clients: &[(&str, &str, &str)],
    ) -> anyhow::Result<Server> {
        let port = free_port()?;
        let base = format!("http://127.0.0.1:{port}");
        let mut server = Server {
            child: Command::new("true").spawn()?,
            base: base.clone(),
            binary: binary.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            database_url: database_url.map(str::to_owned),
        };
        // The demo clients (a GP system and a CLW tool with generated keys), before the server
        // starts, so that the migrations and registrations are not part of any measurement.
        server.cli(&["demo", "setup"])?;
        for &(client_id, ods, role) in clients {
            server.register_like_demo(client_id, ods, role).await?;
        }
        let log = std::fs::File::create(data_dir.join("server.log"))?;
        let mut command = server.command();
        command
            .args(["--listen", &format!("127.0.0.1:{port}"), "serve"])
            .env("LINKBRIDGE_LOG", "warn")
            .stdout(log.try_clone()?)
            .stderr(log);
        server.child = command.spawn().with_context(|| format!("starting {}", binary.display()))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let http = reqwest::Client::new();
        loop {
            if http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(data_dir.join("server.log")).unwrap_or_default();
                bail!(
                    "{} did not become ready:\n{}",
                    binary.display(),
                    log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command.arg("--data-dir").arg(&self.data_dir);
        if let Some(url) = &self.database_url {
            command.args(["--database-url", url]);
        }
        command
    }

    fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.command().args(args).output()?;
        if !output.status.success() {
            bail!("linkbridge {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Registers a client system with the CLI (`clients add`), with the key pair of the demo
    /// client of its role: `demo token` then signs for it with the key file copied next to the
    /// demo's. The public JWK Set is read from the demo client's registration.
    async fn register_like_demo(&self, client_id: &str, ods: &str, role: &str) -> anyhow::Result<()> {
        let demo = if role == "referrer" { "demo-gp" } else { "demo-clw" };
        let query = "SELECT jwks FROM clients WHERE client_id = $1";
        let jwks: Option<String> = match &self.database_url {
            Some(url) => {
                let pool = sqlx::PgPool::connect(url).await?;
                let jwks = sqlx::query_scalar(query).bind(demo).fetch_one(&pool).await?;
                pool.close().await;
                jwks
            }
            None => {
                let options = sqlx::sqlite::SqliteConnectOptions::new().filename(self.data_dir.join("linkbridge.db"));
                let pool = sqlx::SqlitePool::connect_with(options).await?;
                let jwks = sqlx::query_scalar(query).bind(demo).fetch_one(&pool).await?;
                pool.close().await;
                jwks
            }
        };
        let jwks = jwks.with_context(|| format!("{demo} has no inline JWK Set"))?;
        let keys = self.data_dir.join("demo-clients");
        let jwks_file = keys.join(format!("{client_id}.jwks.json"));
        std::fs::write(&jwks_file, jwks)?;
        std::fs::copy(keys.join(format!("{demo}.pem")), keys.join(format!("{client_id}.pem")))?;
        let jwks_file = jwks_file.display().to_string();
        self.cli(&[
            "clients",
            "add",
            "--client-id",
            client_id,
            "--organization",
            ods,
            "--role",
            role,
            "--jwks-file",
            &jwks_file,
        ])?;
        Ok(())
    }

    /// An access token for a demo client, from the server's token endpoint.
    pub fn token(&self, client: &str) -> anyhow::Result<String> {
        self.cli(&["demo", "token", client, "--server", &self.base])
    }

    /// Tokens for the registered clients that stay fresh over a long run.
    pub fn tokens(&self) -> Tokens {
        Tokens {
            server: Arc::new(Server {
                child: Command::new("true").spawn().expect("the true command"),
                base: self.base.clone(),
                binary: self.binary.clone(),
                data_dir: self.data_dir.clone(),
                database_url: self.database_url.clone(),
            }),
            cache: Arc::default(),
        }
    }

    pub fn usage(&self) -> anyhow::Result<Usage> {
        usage_of(self.child.id())
    }
}

/// Access tokens by client id, each fetched again once it is older than [`Tokens::FRESH`]
/// (they live 5 minutes): for seeding that takes longer than a token lives.
#[derive(Clone)]
pub struct Tokens {
    /// Runs the CLI only (its child is a finished `true`).
    server: Arc<Server>,
    cache: Arc<Mutex<HashMap<String, (String, Instant)>>>,
}

impl Tokens {
    const FRESH: Duration = Duration::from_secs(180);

    pub fn get(&self, client_id: &str) -> anyhow::Result<String> {
        let mut cache = self.cache.lock().map_err(|_| anyhow::anyhow!("the token cache was poisoned"))?;
        if let Some((token, fetched)) = cache.get(client_id) {
            if fetched.elapsed() < Self::FRESH {
                return Ok(token.clone());
            }
        }
        let token = self.server.token(client_id)?;
        cache.insert(client_id.to_owned(), (token.clone(), Instant::now()));
        Ok(token)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `/proc/<pid>/stat` (utime, stime in clock ticks) and `/proc/<pid>/status` (VmHWM).
pub fn usage_of(pid: u32) -> anyhow::Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after its closing parenthesis are fixed.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default().split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    // Linux's USER_HZ is 100 on every architecture linkbridge runs on.
    Ok(Usage { cpu_secs: ticks / 100.0, peak_rss_mib: peak_kib / 1024.0 })
}
