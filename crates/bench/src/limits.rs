//! The physical limits of this machine, measured in the same run with the same load generator:
//! the rows of a referral written and a row read straight through the database driver with
//! linkbridge's durability settings, and the HTTP framework answering a trivial route.

use std::sync::Arc;

use rand::Rng;
use sqlx::{Executor, Pool};

use crate::load::Operation;

/// linkbridge's SQLite settings (src/store/connect.rs): WAL, and every commit fsynced.
const SQLITE_PRAGMAS: &str =
    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;";

const TABLE: &str =
    "CREATE TABLE IF NOT EXISTS raw_resources (id TEXT PRIMARY KEY, type TEXT NOT NULL, body TEXT NOT NULL)";

/// A referral's three resources as stored, roughly linkbridge's size (about 2 KiB together).
fn bodies() -> [(&'static str, String); 3] {
    let bundle = crate::scenarios::referral_bundle("9000000009");
    let body = |i: usize| bundle["entry"][i]["resource"].to_string();
    [("Patient", body(0)), ("ServiceRequest", body(1)), ("Task", body(2))]
}

pub enum RawDb {
    Sqlite(Pool<sqlx::Sqlite>),
    Postgres(Pool<sqlx::Postgres>),
}

impl RawDb {
    pub async fn sqlite(path: &std::path::Path, connections: u32) -> anyhow::Result<RawDb> {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path).create_if_missing(true);
        let pool = sqlx::pool::PoolOptions::<sqlx::Sqlite>::new()
            .max_connections(connections)
            .after_connect(|conn, _| Box::pin(async move { conn.execute(SQLITE_PRAGMAS).await.map(drop) }))
            .connect_with(options)
            .await?;
        pool.execute(TABLE).await?;
        Ok(RawDb::Sqlite(pool))
    }

    pub async fn postgres(url: &str, connections: u32) -> anyhow::Result<RawDb> {
        let pool = sqlx::pool::PoolOptions::<sqlx::Postgres>::new().max_connections(connections).connect(url).await?;
        pool.execute(TABLE).await?;
        Ok(RawDb::Postgres(pool))
    }

    /// The ids of `n` stored rows to read back.
    pub async fn seed(&self, n: usize) -> anyhow::Result<Arc<Vec<String>>> {
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            ids.push(self.insert_referral().await?);
        }
        Ok(Arc::new(ids))
    }

    /// One transaction with a referral's three rows; returns the Task row's id.
    async fn insert_referral(&self) -> anyhow::Result<String> {
        let rows = bodies();
        let ids: Vec<String> = rows.iter().map(|_| uuid::Uuid::new_v4().to_string()).collect();
        match self {
            RawDb::Sqlite(pool) => {
                // BEGIN IMMEDIATE, as a writer that knows it will write (no upgrade deadlocks).
                let mut conn = pool.acquire().await?;
                conn.execute("BEGIN IMMEDIATE").await?;
                for ((kind, body), id) in rows.iter().zip(&ids) {
                    sqlx::query("INSERT INTO raw_resources (id, type, body) VALUES (?, ?, ?)")
                        .bind(id)
                        .bind(kind)
                        .bind(body)
                        .execute(&mut *conn)
                        .await?;
                }
                conn.execute("COMMIT").await?;
            }
            RawDb::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                for ((kind, body), id) in rows.iter().zip(&ids) {
                    sqlx::query("INSERT INTO raw_resources (id, type, body) VALUES ($1, $2, $3)")
                        .bind(id)
                        .bind(kind)
                        .bind(body)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
        }
        Ok(ids[2].clone())
    }

    async fn read(&self, id: &str) -> anyhow::Result<bool> {
        let found = match self {
            RawDb::Sqlite(pool) => sqlx::query_scalar::<_, String>("SELECT body FROM raw_resources WHERE id = ?")
                .bind(id)
                .fetch_optional(pool)
                .await?
                .is_some(),
            RawDb::Postgres(pool) => sqlx::query_scalar::<_, String>("SELECT body FROM raw_resources WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
                .is_some(),
        };
        Ok(found)
    }

    pub async fn close(self) {
        match self {
            RawDb::Sqlite(pool) => pool.close().await,
            RawDb::Postgres(pool) => pool.close().await,
        }
    }
}

pub fn raw_insert_operation(db: Arc<RawDb>) -> Operation {
    Arc::new(move |_, _| {
        let db = db.clone();
        Box::pin(async move { db.insert_referral().await.map(|_| true) })
    })
}

pub fn raw_read_operation(db: Arc<RawDb>, ids: Arc<Vec<String>>) -> Operation {
    Arc::new(move |_, _| {
        let (db, ids) = (db.clone(), ids.clone());
        Box::pin(async move {
            let id = &ids[rand::thread_rng().gen_range(0..ids.len())];
            db.read(id).await
        })
    })
}

/// actix-web answering `GET /ping` with a short body, with as many workers as linkbridge.
pub struct TrivialServer {
    pub url: String,
    handle: actix_web::dev::ServerHandle,
}

impl TrivialServer {
    pub fn start(workers: usize) -> anyhow::Result<TrivialServer> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}/ping", listener.local_addr()?);
        let (sender, receiver) = std::sync::mpsc::channel();
        // Its own threads and actix system, as linkbridge has in its own process.
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = actix_web::HttpServer::new(|| {
                    actix_web::App::new().route("/ping", actix_web::web::get().to(|| async { "pong" }))
                })
                .workers(workers)
                .listen(listener)?
                .run();
                let _ = sender.send(server.handle());
                server.await
            })
        });
        let handle = receiver.recv()?;
        Ok(TrivialServer { url, handle })
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

pub fn trivial_operation(http: reqwest::Client, url: String) -> Operation {
    Arc::new(move |_, _| {
        let (http, url) = (http.clone(), url.clone());
        Box::pin(async move {
            let response = http.get(&url).send().await?;
            let ok = response.status().is_success();
            response.bytes().await?;
            Ok(ok)
        })
    })
}
