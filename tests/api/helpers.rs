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

/// A database for one test. SQLite lives in `dir`; PostgreSQL gets its own database.
pub struct TestDatabase {
    pub url: DatabaseUrl,
    pub dir: tempfile::TempDir,
}

/// Creates a fresh database, or returns `None` (after saying so loudly) when PostgreSQL is
/// not configured. In CI (`CI=true`) a missing PostgreSQL fails the test instead: CI must
/// always run the PostgreSQL half.
pub async fn test_database(db: Db) -> Option<TestDatabase> {
    let dir = tempfile::tempdir().expect("temporary directory");
    match db {
        Db::Sqlite => Some(TestDatabase { url: DatabaseUrl::sqlite_in(dir.path()), dir }),
        Db::Postgres => {
            let Ok(admin_url) = std::env::var(POSTGRES_ENV) else {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("{POSTGRES_ENV} is not set in CI: the PostgreSQL tests must run");
                }
                eprintln!("\n*** SKIPPED on PostgreSQL: set {POSTGRES_ENV} (e.g. postgres://postgres@127.0.0.1:5432/postgres) to run it ***\n");
                return None;
            };
            let name = format!("lb_test_{}", uuid::Uuid::new_v4().simple());
            let (mut conn, _) = connect_admin(&admin_url).await;
            use sqlx::Executor;
            conn.execute(format!("CREATE DATABASE {name}").as_str())
                .await
                .expect("create test database");
            let url = replace_database(&admin_url, &name);
            Some(TestDatabase { url: DatabaseUrl::Postgres(url), dir })
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
    let store = Store::connect(&database.url, &PoolSettings::default())
        .await
        .expect("store connects and migrates");
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
