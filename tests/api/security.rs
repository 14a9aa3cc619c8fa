//! The security rows of the test matrix (docs/security-and-reliability.md, "Test matrix"): client
//! authentication at the token endpoint, access-token checks on every FHIR request, the scope
//! check, public endpoints, and another organisation's data answering exactly like missing data.
//!
//! Every forged token or assertion has an unmodified twin, signed the same way, that succeeds:
//! so a refusal in these tables is caused by the one thing the case changes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use linkbridge::auth::ScopeSet;
use linkbridge::config::Settings;
use linkbridge::store::{ClientRecord, PoolSettings, Store};
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::fixtures::{patient, service_request};
use crate::helpers::{
    client_assertion, fixtures, json_of, spawn_app, spawn_app_with, test_database, test_settings, Db, Party, TestApp,
};

/// Form fields of a token request.
type FormFields = Vec<(&'static str, String)>;
/// A request body with its content type.
type Payload = Option<(&'static str, String)>;

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const GP_KID: &str = "rsa-client-1";

// ---------------------------------------------------------------------------------------------
// A small JWS toolkit: any header, any claims, any algorithm, so tests can forge what a
// well-behaved library would refuse to produce.

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn b64_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// Signs `header`.`claims` exactly as given with `key` under `alg` (the header may say
/// something else: that is the point).
fn sign_jws(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let input = format!("{}.{}", b64_json(header), b64_json(claims));
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).expect("signing works");
    format!("{input}.{signature}")
}

/// An unsigned (`alg: none`) JWS.
fn unsigned_jws(header: &Value, claims: &Value) -> String {
    format!("{}.{}.", b64_json(header), b64_json(claims))
}

/// The decoded header (0) or claims (1) of a compact JWS.
fn jws_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).expect("a compact JWS part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON part")
}

/// A copy of a JSON object with members replaced (`Some`) or removed (`None`).
fn with(value: &Value, changes: &[(&str, Option<Value>)]) -> Value {
    let mut value = value.clone();
    let map = value.as_object_mut().expect("a JSON object");
    for (name, new) in changes {
        match new {
            Some(v) => map.insert((*name).to_owned(), v.clone()),
            None => map.remove(*name),
        };
    }
    value
}

fn fixture_key(file: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("keys").join(file)).expect("fixture key")
}

fn gp_rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture_key("rsa-client-private.pem")).expect("RSA fixture key")
}

fn ec_client_key() -> EncodingKey {
    EncodingKey::from_ec_pem(&fixture_key("ec-p384-client-private.pem")).expect("EC fixture key")
}

fn rsa_jwks_text() -> String {
    std::fs::read_to_string(fixtures().join("keys").join("rsa-client-jwks.json")).expect("fixture JWKS")
}

/// The header of a GP system's assertion (RS384 with the RSA fixture key).
fn gp_header() -> Value {
    json!({"alg": "RS384", "typ": "JWT", "kid": GP_KID})
}

/// Valid assertion claims for `client_id`, with a fresh `jti`.
fn assertion_claims(client_id: &str, token_url: &str) -> Value {
    let now = now();
    json!({
        "iss": client_id, "sub": client_id, "aud": token_url,
        "exp": now + 240, "iat": now, "jti": uuid::Uuid::new_v4().to_string(),
    })
}

fn sign_gp(header: &Value, claims: &Value) -> String {
    sign_jws(header, claims, &gp_rsa_key(), Algorithm::RS384)
}

// ---------------------------------------------------------------------------------------------
// The token endpoint.

async fn post_token_form(app: &TestApp, form: &[(&str, &str)]) -> (u16, HeaderMap, Value) {
    let response = app.http.post(app.token_url()).form(form).send().await.expect("token request");
    let headers = response.headers().clone();
    let (status, body) = json_of(response).await;
    (status, headers, body)
}

async fn post_assertion(app: &TestApp, assertion: &str, scope: &str) -> (u16, HeaderMap, Value) {
    post_token_form(
        app,
        &[
            ("grant_type", "client_credentials"),
            ("scope", scope),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
        ],
    )
    .await
}

/// The one check of the token endpoint tables: `case` is answered 400 with exactly
/// `{"error": expected}` (nothing that tells an attacker which check failed).
async fn check_token_refused(app: &TestApp, case: &str, assertion: &str, expected: &str) {
    let (status, _, body) = post_assertion(app, assertion, "system/*.cruds").await;
    assert_eq!(status, 400, "{case}: status, body {body}");
    assert_eq!(body, json!({"error": expected}), "{case}: body");
}

/// Registers an extra client directly in the app's database.
async fn register_client(app: &TestApp, client: ClientRecord) {
    let store = Store::connect(&app.database.url, &PoolSettings::default()).await.expect("store");
    store.upsert_client(&client).await.expect("register client");
    store.close().await;
}

fn client_record(client_id: &str, ods: &str, scopes: &str) -> ClientRecord {
    ClientRecord {
        client_id: client_id.to_owned(),
        organization: ods.to_owned(),
        role: "referrer".to_owned(),
        jwks: Some(rsa_jwks_text()),
        jwks_url: None,
        scopes: scopes.to_owned(),
        created_at: linkbridge::domain::instant::Instant::now(),
    }
}

#[tokio::test]
async fn client_assertions_failing_any_check_are_answered_invalid_client() {
    // More failures in a minute than the throttle allows (`request_bounds` tests it).
    let database = test_database(Db::Sqlite).await.expect("sqlite");
    let settings = Settings { token_failure_limit: 0, ..test_settings(&database) };
    let app = spawn_app_with(database, settings).await;
    let url = app.token_url();
    let h = gp_header();
    let c = || assertion_claims("gp-system", &url);
    let now = now();

    let valid = sign_gp(&h, &c());
    let (status, _, body) = post_assertion(&app, &valid, "system/*.cruds").await;
    assert_eq!(status, 200, "control: the unmodified assertion gets a token: {body}");

    let tampered = {
        let signed = sign_gp(&h, &c());
        let parts: Vec<&str> = signed.split('.').collect();
        let claims = with(&jws_part(&signed, 1), &[("exp", Some(json!(now + 200)))]);
        format!("{}.{}.{}", parts[0], b64_json(&claims), parts[2])
    };
    // Assertions differing from the valid one in their claims, their header, or their client.
    let claims = |changes: &[(&str, Option<Value>)]| sign_gp(&h, &with(&c(), changes));
    let header = |changes: &[(&str, Option<Value>)]| sign_gp(&with(&h, changes), &c());
    let as_client = |id: &str| claims(&[("iss", Some(json!(id))), ("sub", Some(json!(id)))]);
    let client_jwks_secret = EncodingKey::from_secret(rsa_jwks_text().as_bytes());
    let cases: Vec<(&str, String)> = vec![
        ("unknown client", as_client("no-such-client")),
        ("client id SQL text", as_client("' OR 1=1 --")),
        ("another client's id with the GP's key", as_client("clw-tool")),
        ("iss differs from sub", claims(&[("sub", Some(json!("gp-other")))])),
        ("aud is the FHIR base URL", claims(&[("aud", Some(json!(app.address)))])),
        ("aud is another server's token URL", claims(&[("aud", Some(json!("https://elsewhere.example/auth/token")))])),
        ("aud with a trailing slash", claims(&[("aud", Some(json!(format!("{url}/"))))])),
        ("aud missing", claims(&[("aud", None)])),
        ("exp six minutes ahead", claims(&[("exp", Some(json!(now + 360)))])),
        ("exp an hour ahead", claims(&[("exp", Some(json!(now + 3600)))])),
        ("expired", claims(&[("exp", Some(json!(now - 120))), ("iat", Some(json!(now - 200)))])),
        ("exp missing", claims(&[("exp", None)])),
        ("exp as a string", claims(&[("exp", Some(json!((now + 60).to_string())))])),
        ("jti missing", claims(&[("jti", None)])),
        ("kid unknown", header(&[("kid", Some(json!("no-such-kid")))])),
        ("kid a path", header(&[("kid", Some(json!("../../dev/null")))])),
        ("kid SQL text", header(&[("kid", Some(json!("' OR 1=1 --")))])),
        ("kid missing", header(&[("kid", None)])),
        ("typ at+jwt (an access token's type)", header(&[("typ", Some(json!("at+jwt")))])),
        ("crit header", header(&[("crit", Some(json!(["exp"])))])),
        (
            "ES384 header naming the RSA key",
            sign_jws(&with(&h, &[("alg", Some(json!("ES384")))]), &c(), &ec_client_key(), Algorithm::ES384),
        ),
        (
            "RS256, not on the allow-list",
            sign_jws(&with(&h, &[("alg", Some(json!("RS256")))]), &c(), &gp_rsa_key(), Algorithm::RS256),
        ),
        (
            "HS256 keyed with the client's public JWKS",
            sign_jws(&with(&h, &[("alg", Some(json!("HS256")))]), &c(), &client_jwks_secret, Algorithm::HS256),
        ),
        ("alg none", unsigned_jws(&with(&h, &[("alg", Some(json!("none")))]), &c())),
        ("signature of other claims", tampered),
        ("not a JWS", "not-an-assertion".to_owned()),
    ];
    for (case, assertion) in cases {
        check_token_refused(&app, case, &assertion, "invalid_client").await;
    }
}

#[tokio::test]
async fn a_client_assertion_is_accepted_once_and_its_jti_never_again() {
    let app = spawn_app().await;
    let claims = assertion_claims("gp-system", &app.token_url());
    let assertion = sign_gp(&gp_header(), &claims);
    let (status, _, body) = post_assertion(&app, &assertion, "system/*.cruds").await;
    assert_eq!(status, 200, "first use: {body}");
    check_token_refused(&app, "the same assertion again", &assertion, "invalid_client").await;
    let resigned = sign_gp(&gp_header(), &with(&claims, &[("exp", Some(json!(now() + 120)))]));
    check_token_refused(&app, "the same jti in a newly signed assertion", &resigned, "invalid_client").await;
    let fresh = sign_gp(&gp_header(), &assertion_claims("gp-system", &app.token_url()));
    let (status, _, body) = post_assertion(&app, &fresh, "system/*.cruds").await;
    assert_eq!(status, 200, "control: a new jti is accepted: {body}");
}

#[tokio::test]
async fn token_requests_with_the_wrong_grant_or_client_authentication_are_refused() {
    let app = spawn_app().await;
    let assertion = || client_assertion(Party::Gp, &app.token_url(), &Value::Null);
    let cases: Vec<(&str, FormFields, &str)> = vec![
        ("grant_type authorization_code", vec![("grant_type", "authorization_code".into())], "unsupported_grant_type"),
        ("grant_type password", vec![("grant_type", "password".into())], "unsupported_grant_type"),
        ("grant_type missing", vec![], "invalid_request"),
        (
            "client_assertion_type of another kind",
            vec![
                ("grant_type", "client_credentials".into()),
                ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:saml2-bearer".into()),
            ],
            "invalid_client",
        ),
        (
            "client_assertion missing",
            vec![("grant_type", "client_credentials".into()), ("client_assertion", String::new())],
            "invalid_client",
        ),
    ];
    for (case, changes, expected) in cases {
        let mut form: Vec<(&str, String)> = vec![
            ("scope", "system/*.cruds".into()),
            ("client_assertion_type", JWT_BEARER.into()),
            ("client_assertion", assertion()),
        ];
        for (name, value) in changes {
            form.retain(|(n, _)| *n != name);
            if !value.is_empty() {
                form.push((name, value));
            }
        }
        let form: Vec<(&str, &str)> = form.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let (status, _, body) = post_token_form(&app, &form).await;
        assert_eq!(status, 400, "{case}: status, body {body}");
        assert_eq!(body["error"], expected, "{case}: error code, body {body}");
    }
}

#[tokio::test]
async fn a_successful_token_response_is_an_uncached_bearer_at_jwt_for_the_registered_tenant() {
    let app = spawn_app().await;
    // The request claims another organisation and role: the registration must win.
    let overrides = json!({"organization": "GP0002", "role": "operator"});
    let response = app.request_token(Party::Gp, "system/*.cruds", &overrides).await;
    let headers = response.headers().clone();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200, "token issued: {body}");
    assert!(
        headers.get("cache-control").and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("no-store")),
        "Cache-Control: no-store, got {:?}",
        headers.get("cache-control")
    );
    assert!(
        headers.get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json")),
        "JSON response"
    );
    assert_eq!(body["token_type"], "bearer", "token_type");
    let expires_in = body["expires_in"].as_i64().expect("expires_in is a number");
    assert!((1..=300).contains(&expires_in), "expires_in at most 300 s, got {expires_in}");
    assert_eq!(body["scope"], "system/*.cruds", "the registered scope, as asked");

    let token = body["access_token"].as_str().expect("access_token");
    let header = jws_part(token, 0);
    let claims = jws_part(token, 1);
    assert_eq!(header["typ"], "at+jwt", "RFC 9068 explicit typing");
    assert_eq!(header["alg"], "ES384", "signed with the service key");
    let (_, jwks) = json_of(app.http.get(app.url("/.well-known/jwks.json")).send().await.expect("jwks")).await;
    let kids: Vec<&Value> = jwks["keys"].as_array().expect("keys").iter().map(|k| &k["kid"]).collect();
    assert!(kids.contains(&&header["kid"]), "kid {} is published in {kids:?}", header["kid"]);

    let expected = [
        ("iss", json!(app.address)),
        ("aud", json!(app.address)),
        ("sub", json!("gp-system")),
        ("client_id", json!("gp-system")),
        ("scope", body["scope"].clone()),
        ("organization", json!("GP0001")),
        ("role", json!("referrer")),
    ];
    for (claim, value) in expected {
        assert_eq!(claims[claim], value, "claim {claim}");
    }
    for claim in ["exp", "iat", "nbf"] {
        assert!(claims[claim].is_i64(), "claim {claim} is a NumericDate: {claims}");
    }
    assert_eq!(
        claims["exp"].as_i64().map(|e| e - claims["iat"].as_i64().unwrap_or(0)),
        Some(expires_in),
        "exp - iat = expires_in"
    );
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()), "jti present");
}

#[tokio::test]
async fn scopes_beyond_the_registration_are_narrowed_or_refused_never_widened() {
    let app = spawn_app().await;
    let registered_text = "system/Patient.rs";
    register_client(&app, client_record("gp-narrow", "GP0003", registered_text)).await;
    let registered = ScopeSet::parse(registered_text).expect("registered scopes parse");
    let token_for = |scope: &'static str| {
        let app = &app;
        async move {
            let assertion = sign_gp(&gp_header(), &assertion_claims("gp-narrow", &app.token_url()));
            post_assertion(app, &assertion, scope).await
        }
    };

    // Asked within the registration: exactly what was asked, not the whole registration.
    let (status, _, body) = token_for("system/Patient.r").await;
    assert_eq!((status, &body["scope"]), (200, &json!("system/Patient.r")), "a subset is granted as asked: {body}");

    // Asked beyond it: refused, or granted only within it.
    for asked in ["system/*.cruds", "system/Patient.cruds", "system/Patient.rs system/Task.c"] {
        let (status, _, body) = token_for(asked).await;
        if status == 400 {
            assert_eq!(body["error"], "invalid_scope", "{asked}: refusal code");
            continue;
        }
        assert_eq!(status, 200, "{asked}: granted or refused, got {body}");
        let granted_text = body["scope"].as_str().expect("scope in the response");
        let granted = ScopeSet::parse(granted_text).expect("granted scope parses");
        assert!(granted.is_subset_of(&registered), "{asked}: granted {granted_text} is within {registered_text}");
        let token = body["access_token"].as_str().expect("access_token");
        assert_eq!(jws_part(token, 1)["scope"], json!(granted_text), "{asked}: the token carries the granted scope");
        let create = app
            .http
            .post(app.url("/Patient"))
            .bearer_auth(token)
            .header("Content-Type", "application/fhir+json")
            .body(patient("9434765919").to_string())
            .send()
            .await
            .expect("create");
        assert_eq!(create.status(), 403, "{asked}: the token cannot create");
        let read = app.http.get(app.url("/Patient/_history")).bearer_auth(token).send().await.expect("history");
        assert_eq!(read.status(), 200, "{asked}: the token can do what the registration allows");
    }

    // Nothing in common with the registration, or not a valid scope at all: refused.
    for asked in ["system/Task.c", "system/Patient.sr", "user/Patient.read", ""] {
        let (status, _, body) = token_for(asked).await;
        assert_eq!(status, 400, "{asked:?}: refused, got {body}");
        assert!(
            body["error"] == "invalid_scope" || (asked.is_empty() && body["error"] == "invalid_request"),
            "{asked:?}: invalid_scope, got {body}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// JWKS URLs and `jku`: a loopback server that counts who comes knocking.

/// A loopback HTTP server answering every request with one JSON body, counting connections.
struct CountingServer {
    url: String,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingServer {
    async fn serving(body: String) -> CountingServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let url = format!("http://{}/jwks.json", listener.local_addr().expect("address"));
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let body = body.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0_u8; 4096];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 64 * 1024 {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buffer[..n]),
                        }
                    }
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        CountingServer { url, hits, task }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for CountingServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_client_registered_with_a_jwks_url_is_authenticated_with_the_keys_served_there() {
    let app = spawn_app().await;
    let registered = CountingServer::serving(rsa_jwks_text()).await;
    let mut client = client_record("gp-by-url", "GP0003", "system/*.cruds");
    client.jwks = None;
    client.jwks_url = Some(registered.url.clone());
    register_client(&app, client).await;

    let assertion = sign_gp(&gp_header(), &assertion_claims("gp-by-url", &app.token_url()));
    let (status, _, body) = post_assertion(&app, &assertion, "system/*.cruds").await;
    assert_eq!(status, 200, "token for a JWKS-URL client: {body}");
    assert!(registered.hits() >= 1, "the registered JWKS URL was fetched");
    let claims = jws_part(body["access_token"].as_str().expect("access_token"), 1);
    assert_eq!(claims["organization"], "GP0003", "the tenant of that registration");

    let with_jku = sign_gp(
        &with(&gp_header(), &[("jku", Some(json!(registered.url)))]),
        &assertion_claims("gp-by-url", &app.token_url()),
    );
    let (status, _, body) = post_assertion(&app, &with_jku, "system/*.cruds").await;
    assert_eq!(status, 200, "a jku equal to the registered URL is accepted: {body}");
}

#[tokio::test]
async fn a_jku_other_than_the_registered_url_is_refused_without_being_fetched() {
    let app = spawn_app().await;
    let attacker = CountingServer::serving(rsa_jwks_text()).await;
    let registered = CountingServer::serving(rsa_jwks_text()).await;
    let mut by_url = client_record("gp-by-url", "GP0003", "system/*.cruds");
    by_url.jwks = None;
    by_url.jwks_url = Some(registered.url.clone());
    register_client(&app, by_url).await;

    let jku_header = with(&gp_header(), &[("jku", Some(json!(attacker.url)))]);
    let cases = [("inline-registered client", "gp-system"), ("client registered by JWKS URL", "gp-by-url")];
    for (case, client_id) in cases {
        let assertion = sign_gp(&jku_header, &assertion_claims(client_id, &app.token_url()));
        check_token_refused(&app, case, &assertion, "invalid_client").await;
        assert_eq!(attacker.hits(), 0, "{case}: nothing was fetched from the jku");
    }
    let control = sign_gp(&gp_header(), &assertion_claims("gp-by-url", &app.token_url()));
    let (status, _, body) = post_assertion(&app, &control, "system/*.cruds").await;
    assert_eq!(status, 200, "control: the same client without the jku gets a token: {body}");
    assert_eq!(attacker.hits(), 0, "the attacker's server was never contacted");
}

// ---------------------------------------------------------------------------------------------
// The resource server.

/// The service's own signing key (PKCS#8 PEM), read from the data directory as only the server
/// should.
fn server_signing_key_pem(app: &TestApp) -> String {
    let dir = app.settings.data_dir.join("signing-keys");
    let pems: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .expect("signing key directory")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pem"))
        .collect();
    assert_eq!(pems.len(), 1, "one signing key in {}", dir.display());
    std::fs::read_to_string(&pems[0]).expect("read key")
}

/// 401 with `WWW-Authenticate: Bearer error="invalid_token"` and an OperationOutcome that does
/// not echo the token.
async fn check_unauthorized(case: &str, request: reqwest::RequestBuilder, token: Option<&str>) {
    let response = request.send().await.expect("request");
    let challenge =
        response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).map(str::to_owned).unwrap_or_default();
    let (status, body) = json_of(response).await;
    assert_eq!(status, 401, "{case}: status, body {body}");
    assert!(
        challenge.starts_with("Bearer") && challenge.contains("error=\"invalid_token\""),
        "{case}: WWW-Authenticate, got {challenge:?}"
    );
    assert_eq!(body["resourceType"], "OperationOutcome", "{case}: body {body}");
    if let Some(token) = token.filter(|t| t.len() > 16) {
        assert!(!body.to_string().contains(token), "{case}: the token is not echoed");
    }
}

#[tokio::test]
async fn access_tokens_that_are_missing_malformed_forged_or_misdirected_answer_401() {
    let app = spawn_app().await;
    let real = app.token(Party::Gp).await;
    let id = app.created(Party::Gp, &patient("9434765919")).await["id"].as_str().expect("id").to_owned();
    let path = format!("/Patient/{id}");

    let pem = server_signing_key_pem(&app);
    let key = EncodingKey::from_ec_pem(pem.as_bytes()).expect("a P-384 PKCS#8 key");
    let h = jws_part(&real, 0);
    let c = jws_part(&real, 1);
    let forge = |header: &Value, claims: &Value| sign_jws(header, claims, &key, Algorithm::ES384);
    let read_with = |token: &str| app.http.get(app.url(&path)).bearer_auth(token);

    let control = forge(&h, &c);
    let response = read_with(&control).send().await.expect("read");
    assert_eq!(response.status(), 200, "control: a token re-signed with the server key is accepted");

    let (_, jwks) = json_of(app.http.get(app.url("/.well-known/jwks.json")).send().await.expect("jwks")).await;
    let server_jwk = jwks["keys"][0].clone();
    let server_public_pem = {
        use p384::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};
        p384::SecretKey::from_pkcs8_pem(&pem)
            .expect("the signing key is P-384")
            .public_key()
            .to_public_key_pem(p384::pkcs8::LineEnding::LF)
            .expect("PEM")
    };
    let hs256 = with(&h, &[("alg", Some(json!("HS256")))]);
    let parts: Vec<&str> = real.split('.').collect();
    let with_payload = |claims: &Value| format!("{}.{}.{}", parts[0], b64_json(claims), parts[2]);
    let now = now();
    let assertion_as_token = client_assertion(Party::Gp, &app.address, &Value::Null);

    let cases: Vec<(&str, Option<String>)> = vec![
        ("no Authorization header", None),
        ("another scheme", Some("Basic Z3Atc3lzdGVtOnNlY3JldA==".into())),
        ("Bearer and nothing", Some("Bearer ".into())),
        ("not a JWS", Some("Bearer not-a-token".into())),
        ("three parts of garbage", Some("Bearer a.b.c".into())),
        (
            "payload tampered: another organisation",
            Some(with_payload(&with(&c, &[("organization", Some(json!("GP0002")))]))),
        ),
        ("payload tampered: longer expiry", Some(with_payload(&with(&c, &[("exp", Some(json!(now + 290)))])))),
        ("signature removed", Some(format!("{}.{}.", parts[0], parts[1]))),
        ("alg none", Some(unsigned_jws(&with(&h, &[("alg", Some(json!("none")))]), &c))),
        (
            "HS256 keyed with the server's public JWK",
            Some(sign_jws(&hs256, &c, &EncodingKey::from_secret(server_jwk.to_string().as_bytes()), Algorithm::HS256)),
        ),
        (
            "HS256 keyed with the server's public key PEM",
            Some(sign_jws(&hs256, &c, &EncodingKey::from_secret(server_public_pem.as_bytes()), Algorithm::HS256)),
        ),
        (
            "expired",
            Some(forge(
                &h,
                &with(
                    &c,
                    &[
                        ("iat", Some(json!(now - 400))),
                        ("nbf", Some(json!(now - 400))),
                        ("exp", Some(json!(now - 120))),
                    ],
                ),
            )),
        ),
        (
            "nbf in the future",
            Some(forge(
                &h,
                &with(
                    &c,
                    &[("iat", Some(json!(now))), ("nbf", Some(json!(now + 120))), ("exp", Some(json!(now + 240)))],
                ),
            )),
        ),
        ("exp as a string", Some(forge(&h, &with(&c, &[("exp", Some(json!((now + 240).to_string())))])))),
        ("exp missing", Some(forge(&h, &with(&c, &[("exp", None)])))),
        (
            "lifetime longer than the server issues",
            Some(forge(
                &h,
                &with(&c, &[("iat", Some(json!(now))), ("nbf", Some(json!(now))), ("exp", Some(json!(now + 3600)))]),
            )),
        ),
        ("wrong aud", Some(forge(&h, &with(&c, &[("aud", Some(json!("https://other-fhir.example")))])))),
        ("aud missing", Some(forge(&h, &with(&c, &[("aud", None)])))),
        ("wrong iss", Some(forge(&h, &with(&c, &[("iss", Some(json!("https://evil.example")))])))),
        ("iss missing", Some(forge(&h, &with(&c, &[("iss", None)])))),
        ("typ JWT though signed by the server", Some(forge(&with(&h, &[("typ", Some(json!("JWT")))]), &c))),
        ("typ missing", Some(forge(&with(&h, &[("typ", None)]), &c))),
        ("kid unknown", Some(forge(&with(&h, &[("kid", Some(json!("no-such-kid")))]), &c))),
        ("jku header", Some(forge(&with(&h, &[("jku", Some(json!("http://127.0.0.1:9/jwks.json")))]), &c))),
        ("a client assertion presented as an access token", Some(assertion_as_token)),
    ];
    for (case, token) in cases {
        let request = app.http.get(app.url(&path));
        let request = match &token {
            None => request,
            Some(t) if t.starts_with("Bearer ") || t.starts_with("Basic ") => {
                request.header("Authorization", t.as_str())
            }
            Some(t) => request.bearer_auth(t),
        };
        check_unauthorized(case, request, token.as_deref()).await;
    }
}

#[tokio::test]
async fn a_token_without_the_needed_scope_answers_403_insufficient_scope_and_changes_nothing() {
    let app = spawn_app().await;
    let existing = app.created(Party::Gp, &patient("9434765919")).await;
    let id = existing["id"].as_str().expect("id").to_owned();
    let response = app.request_token(Party::Gp, "system/Patient.r", &Value::Null).await;
    let (status, body) = json_of(response).await;
    assert_eq!(status, 200, "read-only token: {body}");
    let read_only = body["access_token"].as_str().expect("access_token").to_owned();

    let read = app.http.get(app.url(&format!("/Patient/{id}"))).bearer_auth(&read_only).send().await.expect("read");
    assert_eq!(read.status(), 200, "control: the token is valid for what it allows");

    let cases: Vec<(&str, Method, String, Payload)> = vec![
        ("create", Method::POST, "/Patient".into(), Some(("application/fhir+json", patient("9434765919").to_string()))),
        ("update", Method::PUT, format!("/Patient/{id}"), Some(("application/fhir+json", existing.to_string()))),
        (
            "patch",
            Method::PATCH,
            format!("/Patient/{id}"),
            Some((
                "application/json-patch+json",
                json!([{"op": "replace", "path": "/gender", "value": "other"}]).to_string(),
            )),
        ),
        ("delete", Method::DELETE, format!("/Patient/{id}"), None),
        ("type history (a search interaction)", Method::GET, "/Patient/_history".into(), None),
        ("another type", Method::GET, "/ServiceRequest/_history".into(), None),
    ];
    for (case, method, path, body) in cases {
        let mut request = app.http.request(method, app.url(&path)).bearer_auth(&read_only);
        if let Some((content_type, body)) = body {
            request = request.header("Content-Type", content_type).body(body);
        }
        let response = request.send().await.expect("request");
        let challenge =
            response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let (status, outcome) = json_of(response).await;
        assert_eq!(status, 403, "{case}: status, body {outcome}");
        assert!(challenge.contains("error=\"insufficient_scope\""), "{case}: WWW-Authenticate, got {challenge:?}");
        assert_eq!(outcome["resourceType"], "OperationOutcome", "{case}: body");
    }
    let (_, history) = json_of(app.get(Party::Gp, "/Patient/_history").await).await;
    assert_eq!(history["entry"].as_array().map(Vec::len), Some(1), "nothing was written: {history}");
}

#[tokio::test]
async fn discovery_and_probe_endpoints_need_no_token() {
    let app = spawn_app().await;
    for path in ["/metadata", "/.well-known/smart-configuration", "/.well-known/jwks.json", "/healthz", "/readyz"] {
        let response = app.http.get(app.url(path)).send().await.expect("request");
        assert_eq!(response.status(), 200, "{path} without a token");
    }
    // FHIR routes without a token, including ones whose path starts like a public one.
    for path in ["/Patient/_history", "/.well-known/_history", "/.well-known/x/_history", "/metadata/_history"] {
        let response = app.http.get(app.url(path)).send().await.expect("request");
        assert_eq!(response.status(), 401, "{path} without a token");
    }

    let response = app.http.get(app.url("/.well-known/smart-configuration")).send().await.expect("request");
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "smart-configuration is application/json, got {content_type}"
    );
    let (_, config) = json_of(response).await;
    let exact = [
        ("token_endpoint", json!(app.token_url())),
        ("grant_types_supported", json!(["client_credentials"])),
        ("token_endpoint_auth_methods_supported", json!(["private_key_jwt"])),
        ("code_challenge_methods_supported", json!(["S256"])),
    ];
    for (field, value) in exact {
        assert_eq!(config[field], value, "smart-configuration {field}");
    }
    let contains = [
        ("token_endpoint_auth_signing_alg_values_supported", vec!["RS384", "ES384"]),
        ("capabilities", vec!["client-confidential-asymmetric", "permission-v2"]),
    ];
    for (field, wanted) in contains {
        let values = config[field].as_array().cloned().unwrap_or_default();
        for value in wanted {
            assert!(values.contains(&json!(value)), "smart-configuration {field} has {value}: {values:?}");
        }
    }
    assert!(
        config["scopes_supported"]
            .as_array()
            .is_some_and(|s| !s.is_empty() && s.iter().all(|s| s.as_str().is_some_and(|s| s.starts_with("system/")))),
        "smart-configuration scopes_supported lists system scopes: {}",
        config["scopes_supported"]
    );

    // Older SMART clients find the token endpoint in the CapabilityStatement instead.
    let (_, capability) = json_of(app.http.get(app.url("/metadata")).send().await.expect("metadata")).await;
    let oauth_uris = capability["rest"][0]["security"]["extension"]
        .as_array()
        .and_then(|e| {
            e.iter().find(|e| e["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris")
        })
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        oauth_uris["extension"],
        json!([{"url": "token", "valueUri": app.token_url()}]),
        "/metadata's oauth-uris extension names the same token endpoint: {capability}"
    );

    let (_, jwks) = json_of(app.http.get(app.url("/.well-known/jwks.json")).send().await.expect("jwks")).await;
    let keys = jwks["keys"].as_array().expect("a JWK Set");
    assert!(!keys.is_empty(), "at least one published key");
    for key in keys {
        assert!(key.get("d").is_none(), "no private key material is published: {key}");
    }
}

// ---------------------------------------------------------------------------------------------
// Tenancy: another organisation's resource is indistinguishable from a missing one.

/// Status, the headers that could tell resources apart, and the body with `id` replaced by a
/// placeholder (so two 404s for two ids compare equal when they say the same thing).
async fn observed(response: reqwest::Response, id: &str) -> (u16, Vec<(String, String)>, String) {
    let status = response.status().as_u16();
    let headers = ["etag", "location", "last-modified", "content-location", "content-type"]
        .iter()
        .filter_map(|name| Some(((*name).to_owned(), response.headers().get(*name)?.to_str().ok()?.to_owned())))
        .collect();
    let body = response.text().await.expect("body").replace(id, "{id}");
    (status, headers, body)
}

#[tokio::test]
async fn another_organisations_resource_answers_404_exactly_like_a_missing_one() {
    let app = spawn_app().await;
    let patient_body = app.created(Party::Gp, &patient("9434765919")).await;
    let patient_id = patient_body["id"].as_str().expect("id").to_owned();
    let referral = app.created(Party::Gp, &service_request(&patient_id, "GP0001", "CLW001")).await;
    let deleted = app.created(Party::Gp, &patient("9876543210")).await;
    let deleted_id = deleted["id"].as_str().expect("id").to_owned();
    let response =
        app.as_party(Party::Gp, Method::DELETE, &format!("/Patient/{deleted_id}")).await.send().await.expect("delete");
    assert_eq!(response.status(), 204, "setup: delete");
    let missing_id = uuid::Uuid::new_v4().to_string();

    let targets = [
        ("another practice's Patient", Party::OtherGp, "Patient", patient_body.clone()),
        ("another practice's referral", Party::OtherGp, "ServiceRequest", referral.clone()),
        ("a referral for another CLW service", Party::OtherClw, "ServiceRequest", referral.clone()),
        ("another practice's deleted Patient", Party::OtherGp, "Patient", deleted.clone()),
    ];
    for (what, stranger, resource_type, resource) in &targets {
        let id = resource["id"].as_str().expect("id");
        let with_id = |id: &str| {
            let mut body = resource.clone();
            body["id"] = json!(id);
            body.as_object_mut().map(|m| m.remove("meta"));
            body.to_string()
        };
        let patch = json!([{"op": "add", "path": "/language", "value": "en"}]).to_string();
        let interactions: Vec<(&str, Method, String, Payload, Option<&str>)> = vec![
            ("read", Method::GET, "/{type}/{id}".into(), None, None),
            ("vread", Method::GET, "/{type}/{id}/_history/1".into(), None, None),
            ("instance history", Method::GET, "/{type}/{id}/_history".into(), None, None),
            (
                "update with If-Match",
                Method::PUT,
                "/{type}/{id}".into(),
                Some(("application/fhir+json", String::new())),
                Some("W/\"1\""),
            ),
            (
                "update without If-Match",
                Method::PUT,
                "/{type}/{id}".into(),
                Some(("application/fhir+json", String::new())),
                None,
            ),
            ("patch", Method::PATCH, "/{type}/{id}".into(), Some(("application/json-patch+json", patch.clone())), None),
            ("delete", Method::DELETE, "/{type}/{id}".into(), None, None),
        ];
        for (interaction, method, template, body, if_match) in interactions {
            let case = format!("{what}: {interaction}");
            let path_for = |id: &str| template.replace("{type}", resource_type).replace("{id}", id);
            let body_for =
                |id: &str| body.as_ref().map(|(ct, b)| (*ct, if b.is_empty() { with_id(id) } else { b.clone() }));
            let existing =
                observed(app.send_as(*stranger, method.clone(), &path_for(id), body_for(id), if_match).await, id).await;
            let absent = observed(
                app.send_as(*stranger, method.clone(), &path_for(&missing_id), body_for(&missing_id), if_match).await,
                &missing_id,
            )
            .await;
            assert_eq!(existing.0, 404, "{case}: status, body {}", existing.2);
            assert_eq!(existing, absent, "{case}: the same answer as for a resource that does not exist");
        }
    }

    // Nothing the strangers tried changed anything.
    for (what, resource_type, resource) in
        [("Patient", "Patient", &patient_body), ("referral", "ServiceRequest", &referral)]
    {
        let (status, now) = json_of(
            app.get(Party::Gp, &format!("/{resource_type}/{}", resource["id"].as_str().unwrap_or_default())).await,
        )
        .await;
        assert_eq!((status, now), (200, (*resource).clone()), "{what} is unchanged for its owner");
    }
    let (status, _) = json_of(app.get(Party::Gp, &format!("/Patient/{deleted_id}")).await).await;
    assert_eq!(status, 410, "the deleted Patient is still deleted (and its owner is told so)");
}

#[tokio::test]
async fn type_history_leaves_out_another_organisations_resources() {
    let app = spawn_app().await;
    let mine = app.created(Party::OtherGp, &patient("9434765919")).await;
    let theirs = app.created(Party::Gp, &patient("9876543210")).await;
    let theirs_id = theirs["id"].as_str().expect("id");
    let mine_id = mine["id"].as_str().expect("id");
    let referral = app.created(Party::Gp, &service_request(theirs_id, "GP0001", "CLW001")).await;
    let referral_id = referral["id"].as_str().expect("id");

    let cases = [
        ("another practice's Patients", Party::OtherGp, "/Patient/_history", vec![mine_id], theirs_id),
        ("another practice's referrals", Party::OtherGp, "/ServiceRequest/_history", vec![], referral_id),
        ("referrals for another CLW service", Party::OtherClw, "/ServiceRequest/_history", vec![], referral_id),
    ];
    for (case, party, path, expected_ids, hidden_id) in cases {
        let response = app.get(party, path).await;
        let (status, bundle) = json_of(response).await;
        assert_eq!(status, 200, "{case}: status, body {bundle}");
        let ids: Vec<&str> = bundle["entry"]
            .as_array()
            .map(|entries| entries.iter().filter_map(|e| e["resource"]["id"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(ids, expected_ids, "{case}: only the caller's own versions");
        assert!(!bundle.to_string().contains(hidden_id), "{case}: the hidden id appears nowhere in the bundle");
        if let Some(total) = bundle.get("total") {
            assert_eq!(total, &json!(expected_ids.len()), "{case}: total counts only what the caller sees");
        }
    }
}

#[tokio::test]
async fn conditional_create_matching_another_organisations_identifier_never_reveals_it() {
    let app = spawn_app().await;
    let single = app.created(Party::Gp, &patient("9434765919")).await;
    let single_id = single["id"].as_str().expect("id").to_owned();
    let mut twins = Vec::new();
    for _ in 0..2 {
        twins.push(app.created(Party::Gp, &patient("9876543210")).await["id"].as_str().expect("id").to_owned());
    }

    let conditional = |party: Party, nhs: &'static str| {
        let app = &app;
        async move {
            let response = app
                .as_party(party, Method::POST, "/Patient")
                .await
                .header("Content-Type", "application/fhir+json")
                .header("If-None-Exist", format!("identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}"))
                .body(patient(nhs).to_string())
                .send()
                .await
                .expect("conditional create");
            json_of(response).await
        }
    };
    let cases = [
        ("one match in another practice", "9434765919", vec![single_id.clone()]),
        ("two matches in another practice (ambiguous there)", "9876543210", twins.clone()),
    ];
    for (case, nhs, hidden) in cases {
        let (status, created) = conditional(Party::OtherGp, nhs).await;
        assert_eq!(status, 201, "{case}: created as if nothing matched, body {created}");
        for id in &hidden {
            assert!(!created.to_string().contains(id.as_str()), "{case}: the other practice's id is not revealed");
        }
        let (again_status, again) = conditional(Party::OtherGp, nhs).await;
        assert_eq!(
            (again_status, &again["id"]),
            (200, &created["id"]),
            "{case}: a repeat matches the caller's own resource only"
        );
    }
    let (status, owner_view) = json_of(app.get(Party::Gp, &format!("/Patient/{single_id}")).await).await;
    assert_eq!((status, owner_view), (200, single), "the original is untouched");
}

/// The operator removes a client (`linkbridge clients remove`, from a process of its own) or
/// takes scopes from it: within `token_recheck_secs` every replica holds the client's token,
/// issued before, to the registration as it is now. A removed client's token answers 401 like
/// an invalid one (its registration was read again, not its remembered verification used).
async fn a_removed_clients_token_is_refused_on_every_replica_within_the_recheck_interval(db: Db) {
    let Some(database) = test_database(db).await else { return };
    let recheck = std::time::Duration::from_secs(1);
    let settings = Settings { token_recheck_secs: recheck.as_secs(), ..test_settings(&database) };
    let app = spawn_app_with(database, settings).await;
    // A second replica: the same database and signing keys, and the first one's address as the
    // public base URL (a load balancer's), so that it accepts the tokens the first one issues.
    let behind_the_same_name = Settings { public_base_url: Some(app.address.clone()), ..app.settings.clone() };
    let other = linkbridge::startup::Application::build(&behind_the_same_name).await.expect("second replica builds");
    let other_address = other.base_url().to_owned();
    tokio::spawn(other.run_until_stopped());
    let replicas = [app.address.clone(), other_address];

    let token = app.token(Party::Gp).await;
    let read = |replica: &str| app.http.get(format!("{replica}/Patient")).bearer_auth(&token).send();
    for replica in &replicas {
        for attempt in 1..=3 {
            let (status, body) = json_of(read(replica).await.expect("read")).await;
            assert_eq!(status, 200, "{replica}, read {attempt}: the token is good (and remembered): {body}");
        }
    }

    let store = Store::connect(&app.database.url, &PoolSettings::default()).await.expect("operator's store");
    let registered = store.find_client(Party::Gp.client_id()).await.expect("read").expect("registered");
    store
        .upsert_client(&ClientRecord { scopes: "system/Patient.rs".into(), ..registered })
        .await
        .expect("take scopes away");
    store.close().await;
    tokio::time::sleep(recheck).await;
    for replica in &replicas {
        let create = app
            .http
            .post(format!("{replica}/Patient"))
            .bearer_auth(&token)
            .header("Content-Type", "application/fhir+json")
            .body(patient("9434765919").to_string())
            .send()
            .await
            .expect("create");
        assert_eq!(create.status(), 403, "{replica}: the scope taken from the registration left the token");
        assert_eq!(read(replica).await.expect("read").status(), 200, "{replica}: the scope kept still serves");
    }

    linkbridge::admin::remove_client(&app.settings, Party::Gp.client_id()).await.expect("clients remove");
    tokio::time::sleep(recheck).await;
    let invalid = "eyJhbGciOiJFUzM4NCJ9.e30.c2lnbmF0dXJl";
    let (_, invalid_body) =
        json_of(app.http.get(app.url("/Patient")).bearer_auth(invalid).send().await.expect("get")).await;
    for replica in &replicas {
        let case = format!("{replica}: the removed client's token");
        check_unauthorized(&case, app.http.get(format!("{replica}/Patient")).bearer_auth(&token), Some(&token)).await;
        let (_, body) = json_of(read(replica).await.expect("read")).await;
        assert_eq!(body, invalid_body, "{case}: answered exactly as an invalid token");
    }
    let (status, _, body) =
        post_assertion(&app, &sign_gp(&gp_header(), &assertion_claims("gp-system", &app.token_url())), "system/*.rs")
            .await;
    assert_eq!((status, &body["error"]), (400, &json!("invalid_client")), "and it gets no new token: {body}");
}

crate::on_both_databases!(a_removed_clients_token_is_refused_on_every_replica_within_the_recheck_interval);
