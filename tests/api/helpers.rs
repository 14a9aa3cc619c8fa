//! Test harness: a fresh database per test (a temporary SQLite file, or a new PostgreSQL
//! database on the server named by `LINKBRIDGE_TEST_POSTGRES_URL`), and the service on a
//! random port.

use std::path::Path;

use linkbridge::store::{DatabaseUrl, PoolSettings, Store};

/// The databases every contract runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub const POSTGRES_ENV: &str = "LINKBRIDGE_TEST_POSTGRES_URL";

/// A database for one test. SQLite lives in `dir`; PostgreSQL gets its own database, dropped
/// with this (see `Drop`).
pub struct TestDatabase {
    pub url: DatabaseUrl,
    pub dir: tempfile::TempDir,
    /// The PostgreSQL database's name and the server URL it was created through.
    postgres: Option<(String, String)>,
}

/// Drops the test's PostgreSQL database. Left behind, every run of the suite added a hundred
/// databases to the machine's server, whose checkpoints then synced tens of thousands of files
/// (one took four minutes) and slowed whatever ran on it after: benchmarks, the next CI run.
/// `WITH (FORCE)` ends the connections a stopped server's pools may still hold. On a thread of
/// its own, with a runtime of its own: `drop` cannot await, and it may run on the test's
/// runtime thread.
impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((name, admin_url)) = self.postgres.take() else {
            return;
        };
        let statement = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                use sqlx::Executor;
                let (mut conn, _) = connect_admin(&admin_url).await;
                conn.execute(statement.as_str()).await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(_))) {
            eprintln!("could not drop the test database {name}: {dropped:?}");
        }
    }
}

/// Says on the terminal that a test skipped part of itself. Straight to the process's stderr:
/// libtest captures what `eprintln!` prints in a passing test, so nobody would see it.
pub fn announce_skip(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED {what} ***\n");
}

/// Creates a fresh database, or returns `None` (after saying so loudly) when PostgreSQL is
/// not configured. In CI (`CI=true`) a missing PostgreSQL fails the test instead: CI must
/// always run the PostgreSQL half.
pub async fn test_database(db: Db) -> Option<TestDatabase> {
    let dir = tempfile::tempdir().expect("temporary directory");
    match db {
        Db::Sqlite => Some(TestDatabase { url: DatabaseUrl::sqlite_in(dir.path()), dir, postgres: None }),
        Db::Postgres => {
            let Ok(admin_url) = std::env::var(POSTGRES_ENV) else {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("{POSTGRES_ENV} is not set in CI: the PostgreSQL tests must run");
                }
                announce_skip(&format!(
                    "on PostgreSQL: set {POSTGRES_ENV} (e.g. postgres://postgres@127.0.0.1:5432/postgres) to run it"
                ));
                return None;
            };
            let name = format!("lb_test_{}", uuid::Uuid::new_v4().simple());
            let (mut conn, _) = connect_admin(&admin_url).await;
            use sqlx::Executor;
            conn.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("create test database");
            let url = replace_database(&admin_url, &name);
            Some(TestDatabase { url: DatabaseUrl::Postgres(url), dir, postgres: Some((name, admin_url)) })
        }
    }
}

async fn connect_admin(admin_url: &str) -> (sqlx::PgConnection, String) {
    use sqlx::Connection;
    let conn = sqlx::PgConnection::connect(admin_url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {POSTGRES_ENV}: {e}"));
    (conn, admin_url.to_owned())
}

/// Swaps the database name in a PostgreSQL URL, keeping any query string.
fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[authority_end..].find('/').map(|i| i + authority_end);
    let stem = match path_start {
        Some(i) => &base[..i],
        None => base,
    };
    match query {
        Some(q) => format!("{stem}/{name}?{q}"),
        None => format!("{stem}/{name}"),
    }
}

/// A store on a fresh database.
pub async fn test_store(db: Db) -> Option<(Store, TestDatabase)> {
    let database = test_database(db).await?;
    let store = Store::connect(&database.url, &PoolSettings::default()).await.expect("store connects and migrates");
    Some((store, database))
}

/// The directory holding fixture files.
pub fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

/// Runs a test body once per database: `on_both_databases!(name, name, ...)` expects
/// `async fn name(db: Db)` in the calling module and makes `sqlite::name` and
/// `postgres::name` tests of it.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Db::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Db::Postgres).await
                }
            )*
        }
    };
}

// ---------------------------------------------------------------------------------------------
// The service under test.

use linkbridge::config::Settings;
use linkbridge::startup::Application;
use linkbridge::store::ClientRecord;
use reqwest::Method;
use serde_json::Value;

/// The registered client systems every test app has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Party {
    /// GP practice GP0001's clinical system (referrer).
    Gp,
    /// Another practice, GP0002 (referrer).
    OtherGp,
    /// Community Link Worker service CLW001's tool (performer).
    Clw,
    /// Another CLW service, CLW002 (performer).
    OtherClw,
    /// The board's admin tooling (operator).
    Operator,
}

impl Party {
    pub const ALL: [Party; 5] = [Party::Gp, Party::OtherGp, Party::Clw, Party::OtherClw, Party::Operator];

    pub fn client_id(self) -> &'static str {
        match self {
            Party::Gp => "gp-system",
            Party::OtherGp => "gp-other",
            Party::Clw => "clw-tool",
            Party::OtherClw => "clw-other",
            Party::Operator => "board-ops",
        }
    }

    pub fn ods(self) -> &'static str {
        match self {
            Party::Gp => "GP0001",
            Party::OtherGp => "GP0002",
            Party::Clw => "CLW001",
            Party::OtherClw => "CLW002",
            Party::Operator => "BOARD1",
        }
    }

    pub fn role(self) -> &'static str {
        match self {
            Party::Gp | Party::OtherGp => "referrer",
            Party::Clw | Party::OtherClw => "performer",
            Party::Operator => "operator",
        }
    }

    /// The GP systems sign with the RSA fixture key (RS384), the others with P-384 (ES384).
    fn key(self) -> (&'static str, &'static str, jsonwebtoken::Algorithm) {
        match self {
            Party::Gp | Party::OtherGp => ("rsa-client-private.pem", "rsa-client-1", jsonwebtoken::Algorithm::RS384),
            _ => ("ec-p384-client-private.pem", "ec-p384-client-1", jsonwebtoken::Algorithm::ES384),
        }
    }

    fn jwks_file(self) -> &'static str {
        match self {
            Party::Gp | Party::OtherGp => "rsa-client-jwks.json",
            _ => "ec-p384-client-jwks.json",
        }
    }
}

/// Signs a client assertion for `party` (RFC 7523), with claims overridable by tests.
pub fn client_assertion(party: Party, token_url: &str, overrides: &Value) -> String {
    let (key_file, kid, alg) = party.key();
    let pem = std::fs::read(fixtures().join("keys").join(key_file)).expect("fixture key");
    let key = match alg {
        jsonwebtoken::Algorithm::RS384 => jsonwebtoken::EncodingKey::from_rsa_pem(&pem),
        _ => jsonwebtoken::EncodingKey::from_ec_pem(&pem),
    }
    .expect("fixture key parses");
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some(kid.to_owned());
    header.typ = Some("JWT".to_owned());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut claims = serde_json::json!({
        "iss": party.client_id(),
        "sub": party.client_id(),
        "aud": token_url,
        "exp": now + 240,
        "iat": now,
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    if let (Some(map), Some(extra)) = (claims.as_object_mut(), overrides.as_object()) {
        for (k, v) in extra {
            map.insert(k.clone(), v.clone());
        }
    }
    jsonwebtoken::encode(&header, &claims, &key).expect("assertion signs")
}

/// Registers the five test parties in the database at `url`.
pub async fn register_test_clients(url: &DatabaseUrl) {
    let store = Store::connect(url, &PoolSettings::default()).await.expect("store for registration");
    for party in Party::ALL {
        let jwks = std::fs::read_to_string(fixtures().join("keys").join(party.jwks_file())).expect("fixture jwks");
        store
            .upsert_client(&ClientRecord {
                client_id: party.client_id().to_owned(),
                organization: party.ods().to_owned(),
                role: party.role().to_owned(),
                jwks: Some(jwks),
                jwks_url: None,
                scopes: "system/*.cruds".to_owned(),
                created_at: linkbridge::domain::instant::Instant::now(),
            })
            .await
            .expect("register client");
    }
    store.close().await;
}

/// A running service on a random port, its database, and an HTTP client.
pub struct TestApp {
    pub address: String,
    pub http: reqwest::Client,
    pub database: TestDatabase,
    pub settings: Settings,
    tokens: tokio::sync::Mutex<std::collections::HashMap<Party, String>>,
}

/// Settings for a test server on `database`.
pub fn test_settings(database: &TestDatabase) -> Settings {
    Settings {
        listen: "127.0.0.1:0".to_owned(),
        data_dir: database.dir.path().to_path_buf(),
        database_url: match &database.url {
            DatabaseUrl::Postgres(url) => Some(url.clone().into()),
            DatabaseUrl::Sqlite(path) => Some(format!("sqlite://{}", path.display()).into()),
        },
        workers: Some(2),
        allow_insecure_loopback_jwks: true,
        ..Settings::default()
    }
}

/// The service on a fresh SQLite database.
pub async fn spawn_app() -> TestApp {
    spawn_app_on(Db::Sqlite).await.expect("SQLite is always available")
}

/// The service on a fresh database of the given kind (`None`: PostgreSQL not configured).
pub async fn spawn_app_on(db: Db) -> Option<TestApp> {
    let database = test_database(db).await?;
    let settings = test_settings(&database);
    Some(spawn_app_with(database, settings).await)
}

pub async fn spawn_app_with(database: TestDatabase, settings: Settings) -> TestApp {
    register_test_clients(&database.url).await;
    let app = Application::build(&settings).await.expect("application builds");
    let address = app.base_url().to_owned();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        // Idle connections are dropped before the server's keep-alive (5 s) can close them
        // under a request: a busy test machine otherwise sees spurious IncompleteMessage.
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(std::time::Duration::from_secs(1))
            .build()
            .expect("http client"),
        database,
        settings,
        tokens: tokio::sync::Mutex::new(Default::default()),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub fn token_url(&self) -> String {
        self.url("/auth/token")
    }

    /// Asks the token endpoint for an access token, as the party's system would.
    pub async fn request_token(&self, party: Party, scope: &str, overrides: &Value) -> reqwest::Response {
        let assertion = client_assertion(party, &self.token_url(), overrides);
        self.http
            .post(self.token_url())
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", scope),
                ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                ("client_assertion", assertion.as_str()),
            ])
            .send()
            .await
            .expect("token request")
    }

    /// A cached access token with every scope the party is registered for.
    pub async fn token(&self, party: Party) -> String {
        let mut tokens = self.tokens.lock().await;
        if let Some(token) = tokens.get(&party) {
            return token.clone();
        }
        let response = self.request_token(party, "system/*.cruds", &Value::Null).await;
        assert_eq!(response.status(), 200, "token for {party:?}");
        let body: Value = response.json().await.expect("token json");
        let token = body["access_token"].as_str().expect("access_token").to_owned();
        tokens.insert(party, token.clone());
        token
    }

    /// A request as `party`, with its access token.
    pub async fn as_party(&self, party: Party, method: Method, path: &str) -> reqwest::RequestBuilder {
        let token = self.token(party).await;
        self.http.request(method, self.url(path)).bearer_auth(token)
    }

    /// A request as `party` with an optional body (content type, text) and `If-Match`.
    pub async fn send_as(
        &self,
        party: Party,
        method: Method,
        path: &str,
        body: Option<(&str, String)>,
        if_match: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.as_party(party, method, path).await;
        if let Some((content_type, body)) = body {
            request = request.header("Content-Type", content_type).body(body);
        }
        if let Some(etag) = if_match {
            request = request.header("If-Match", etag);
        }
        request.send().await.expect("request")
    }

    /// POSTs a FHIR JSON resource as `party`.
    pub async fn create(&self, party: Party, resource: &Value) -> reqwest::Response {
        let resource_type = resource["resourceType"].as_str().expect("resourceType");
        self.as_party(party, Method::POST, &format!("/{resource_type}"))
            .await
            .header("Content-Type", "application/fhir+json")
            .body(resource.to_string())
            .send()
            .await
            .expect("create request")
    }

    /// Creates and returns the stored resource, asserting 201.
    pub async fn created(&self, party: Party, resource: &Value) -> Value {
        let response = self.create(party, resource).await;
        let status = response.status();
        let body: Value = response.json().await.expect("json body");
        assert_eq!(status, 201, "create {}: {body}", resource["resourceType"]);
        body
    }

    /// GETs a path as `party`.
    pub async fn get(&self, party: Party, path: &str) -> reqwest::Response {
        self.as_party(party, Method::GET, path).await.send().await.expect("get request")
    }
}

/// The body of a response as JSON, with the status for assertion messages.
pub async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body text");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}
