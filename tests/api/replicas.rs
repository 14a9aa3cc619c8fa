//! Two real server processes sharing one PostgreSQL database and one data directory (so one set of
//! signing keys), both behind one public base URL as a load balancer presents them. Whatever one
//! replica accepts or writes, the other must honour: versions, `If-Match`, access tokens, and the
//! client-assertion replay guard (docs/security-and-reliability.md, "Authentication": "a
//! replica-local cache lets a replay through on another replica").
//!
//! PostgreSQL only: skipped without `LINKBRIDGE_TEST_POSTGRES_URL`, a failure in CI without it.
//!
//! Both replicas advertise the same token endpoint (`<public base URL>/auth/token`), so an
//! assertion made for one is, claim for claim, valid at the other: a refusal there can only be
//! the replay guard.

use reqwest::Method;
use serde_json::{json, Value};

use crate::fixtures::patient;
use crate::helpers::{client_assertion, json_of, register_test_clients, test_database, Db, Party, TestDatabase};
use crate::processes::{ServerOptions, ServerProcess};
use linkbridge::store::DatabaseUrl;

/// The name clients use for the service; nothing listens there, the tests talk to each replica.
const PUBLIC_BASE_URL: &str = "http://linkbridge.replicas.test";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

struct Replicas {
    a: ServerProcess,
    b: ServerProcess,
    http: reqwest::Client,
    _database: TestDatabase,
}

/// Starts replica A, then B (one after the other: A creates the signing key and runs the
/// migrations, B finds both). `None` when PostgreSQL is not configured.
async fn start_replicas() -> Option<Replicas> {
    let database = test_database(Db::Postgres).await?;
    register_test_clients(&database.url).await;
    let DatabaseUrl::Postgres(url) = &database.url else { panic!("test_database(Postgres) gives a PostgreSQL URL") };
    let options = ServerOptions {
        database_url: Some(url.clone()),
        public_base_url: Some(PUBLIC_BASE_URL.to_owned()),
        ..ServerOptions::new(database.dir.path())
    };
    let a = ServerProcess::start(&options).await;
    let b = ServerProcess::start(&options).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("http client");
    Some(Replicas { a, b, http, _database: database })
}

impl Replicas {
    async fn post_assertion(&self, replica: &ServerProcess, assertion: &str) -> (u16, Value) {
        let response = self
            .http
            .post(replica.url("/auth/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", "system/*.cruds"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", assertion),
            ])
            .send()
            .await
            .expect("token request");
        json_of(response).await
    }

    /// An access token for `party` from `replica`'s token endpoint.
    async fn token(&self, replica: &ServerProcess, party: Party) -> String {
        replica.token(&self.http, party).await
    }

    async fn send(
        &self,
        replica: &ServerProcess,
        token: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> (u16, Value) {
        replica.send(&self.http, token, method, path, body, if_match).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_written_through_one_replica_is_read_updated_and_version_checked_through_the_other() {
    let Some(r) = start_replicas().await else {
        return;
    };
    let (_, jwks_a) = json_of(r.http.get(r.a.url("/.well-known/jwks.json")).send().await.expect("jwks")).await;
    let (_, jwks_b) = json_of(r.http.get(r.b.url("/.well-known/jwks.json")).send().await.expect("jwks")).await;
    assert_eq!(jwks_a, jwks_b, "the replicas publish the same signing keys");

    let token_a = r.token(&r.a, Party::Gp).await;
    let token_b = r.token(&r.b, Party::Gp).await;

    let (status, created) = r.send(&r.a, &token_a, Method::POST, "/Patient", Some(&patient("9434765919")), None).await;
    assert_eq!(status, 201, "created through A: {created}");
    let path = format!("/Patient/{}", created["id"].as_str().expect("id"));

    let (status, read) = r.send(&r.b, &token_b, Method::GET, &path, None, None).await;
    assert_eq!((status, &read), (200, &created), "B reads what A wrote");
    let (status, read) = r.send(&r.b, &token_a, Method::GET, &path, None, None).await;
    assert_eq!((status, &read["id"]), (200, &created["id"]), "B accepts an access token issued by A");

    let mut changed = created.clone();
    changed["gender"] = json!("other");
    let (status, updated) = r.send(&r.b, &token_b, Method::PUT, &path, Some(&changed), Some("W/\"1\"")).await;
    assert_eq!(status, 200, "B updates A's version 1: {updated}");
    assert_eq!(updated["meta"]["versionId"], "2", "the update made version 2");

    let (status, seen_by_a) = r.send(&r.a, &token_a, Method::GET, &path, None, None).await;
    assert_eq!(status, 200, "A reads after B's update");
    assert_eq!(
        (&seen_by_a["meta"]["versionId"], &seen_by_a["gender"]),
        (&json!("2"), &json!("other")),
        "A sees B's write"
    );

    let cases = [("through A", &r.a, &token_a), ("through B", &r.b, &token_b)];
    for (case, replica, token) in cases {
        let (status, outcome) = r.send(replica, token, Method::PUT, &path, Some(&created), Some("W/\"1\"")).await;
        assert_eq!(status, 412, "a stale If-Match {case}: {outcome}");
    }
    let (status, history) = r.send(&r.a, &token_a, Method::GET, &format!("{path}/_history"), None, None).await;
    assert_eq!(status, 200, "history through A");
    assert_eq!(history["entry"].as_array().map(Vec::len), Some(2), "two versions, the stale writes wrote nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_assertion_used_at_one_replica_is_refused_as_a_replay_at_the_other() {
    let Some(r) = start_replicas().await else {
        return;
    };
    assert_eq!(r.a.token_endpoint(), r.b.token_endpoint(), "one token endpoint URL for both replicas");
    let token_url = r.a.token_endpoint();

    let cases = [("A then B", &r.a, &r.b), ("B then A", &r.b, &r.a)];
    for (case, first, second) in cases {
        let assertion = client_assertion(Party::Gp, &token_url, &Value::Null);
        let (status, body) = r.post_assertion(first, &assertion).await;
        assert_eq!(status, 200, "{case}: first use: {body}");
        let (status, body) = r.post_assertion(second, &assertion).await;
        assert_eq!((status, &body), (400, &json!({"error": "invalid_client"})), "{case}: the replay is refused");
        let fresh = client_assertion(Party::Gp, &token_url, &Value::Null);
        let (status, body) = r.post_assertion(second, &fresh).await;
        assert_eq!(status, 200, "{case}: control, a fresh assertion is accepted there: {body}");
    }
    for replica in [&r.a, &r.b] {
        assert!(
            replica.logs().contains("assertion_replayed"),
            "{} logged the refusal as a replay:\n{}",
            replica.address,
            replica.logs()
        );
    }

    // Racing: one assertion sent to both replicas at once, several times: exactly one token.
    let assertion = client_assertion(Party::Clw, &token_url, &Value::Null);
    let attempts = (0..8).map(|i| {
        let replica = if i % 2 == 0 { &r.a } else { &r.b };
        r.post_assertion(replica, &assertion)
    });
    let mut statuses: Vec<u16> = futures::future::join_all(attempts).await.into_iter().map(|(s, _)| s).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 400, 400, 400, 400, 400, 400, 400], "one assertion, one token, across replicas");
}
