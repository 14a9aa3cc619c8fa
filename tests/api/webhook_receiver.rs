//! A webhook receiver on a loopback port, for the tests of the service's signed deliveries:
//! it records every request it is sent, answers as the test tells it (success, an error
//! status, `Retry-After`, a redirect) and can go down (connection refused) and come back on
//! the same port. `verify_signature` checks a delivery's Standard Webhooks signature.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The largest body the receiver takes (actix's default is 256 KiB).
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// How far a signature's timestamp may be from now, either way.
const TIMESTAMP_TOLERANCE_SECS: i64 = 5 * 60;

/// How the receiver answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// 200 OK.
    Accept,
    /// This status, with an empty body (e.g. 500, 410).
    Status(u16),
    /// This status with a `Retry-After: <seconds>` header (e.g. 429, 503).
    RetryAfter { status: u16, seconds: u64 },
    /// 302 Found to this `Location`.
    Redirect(String),
    /// Nothing listens on the port: connections are refused.
    Down,
}

/// One request the receiver was sent, and the status it answered.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub method: String,
    pub path: String,
    /// Names in lower case, in the order actix gives them.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub received_at: Instant,
    pub status: u16,
}

impl Delivery {
    /// The first value of a header (the name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("delivery body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// Whether the receiver answered with a 2xx status.
    pub fn was_accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// One line for failure messages.
    fn summary(&self) -> String {
        let body = String::from_utf8_lossy(&self.body);
        let excerpt: String = body.chars().take(200).collect();
        format!(
            "{} {} -> {} (webhook-id {:?}) {}{}",
            self.method,
            self.path,
            self.status,
            self.header("webhook-id").unwrap_or("-"),
            excerpt,
            if body.chars().count() > 200 { "..." } else { "" },
        )
    }
}

/// What the handler and the test share.
struct State {
    mode: Mode,
    deliveries: Vec<Delivery>,
}

/// A running server: its handle to stop it and the task driving it.
struct Running {
    handle: ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A webhook receiver listening on `127.0.0.1:<port>`.
pub struct WebhookReceiver {
    port: u16,
    state: Arc<Mutex<State>>,
    /// `None` while down. An async lock: going down and coming back await under it.
    server: tokio::sync::Mutex<Option<Running>>,
}

impl WebhookReceiver {
    /// Starts a receiver on a free loopback port, accepting everything.
    pub async fn start() -> WebhookReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the webhook receiver to a loopback port");
        let port = listener.local_addr().expect("webhook receiver's local address").port();
        let state = Arc::new(Mutex::new(State { mode: Mode::Accept, deliveries: Vec::new() }));
        let running = serve(listener, state.clone());
        WebhookReceiver { port, state, server: tokio::sync::Mutex::new(Some(running)) }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL to register as a subscription's endpoint: `http://127.0.0.1:<port>/hook`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Changes how the receiver answers from the next request on. `Mode::Down` stops the
    /// listener (see `go_down`); any other mode while down restarts it on the same port.
    pub async fn set_mode(&self, mode: Mode) {
        let mut server = self.server.lock().await;
        if mode == Mode::Down {
            if let Some(running) = server.take() {
                running.handle.stop(false).await;
                match running.task.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => panic!("webhook receiver on port {} failed: {e}", self.port),
                    Err(e) => panic!("webhook receiver task on port {} failed: {e}", self.port),
                }
                wait_until_refused(self.port).await;
            }
            self.lock().mode = Mode::Down;
        } else {
            self.lock().mode = mode;
            if server.is_none() {
                let listener = rebind(self.port).await;
                *server = Some(serve(listener, self.state.clone()));
            }
        }
    }

    /// Stops listening: connections to the port are refused until `come_back`.
    pub async fn go_down(&self) {
        self.set_mode(Mode::Down).await;
    }

    /// Listens again on the same port, accepting everything.
    pub async fn come_back(&self) {
        self.set_mode(Mode::Accept).await;
    }

    /// Every request received so far, in order of arrival.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.lock().deliveries.clone()
    }

    /// The requests answered with a 2xx status, in order of arrival.
    pub fn accepted(&self) -> Vec<Delivery> {
        self.lock().deliveries.iter().filter(|d| d.was_accepted()).cloned().collect()
    }

    /// Waits until at least `n` requests have been answered 2xx and returns those; panics
    /// with everything that did arrive if that takes longer than `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Delivery> {
        let deadline = Instant::now() + timeout;
        loop {
            let accepted = self.accepted();
            if accepted.len() >= n {
                return accepted;
            }
            if Instant::now() >= deadline {
                let all = self.deliveries();
                let listing: Vec<String> = all.iter().map(|d| format!("  {}", d.summary())).collect();
                panic!(
                    "webhook receiver on port {}: expected at least {n} accepted deliveries within {timeout:?}, \
                     got {} accepted of {} received:\n{}",
                    self.port,
                    accepted.len(),
                    all.len(),
                    if listing.is_empty() { "  (none)".to_owned() } else { listing.join("\n") },
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("webhook receiver state lock")
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        if let Some(running) = self.server.get_mut().take() {
            // `stop` sends its command at once; nothing here can await the completion.
            drop(running.handle.stop(false));
        }
    }
}

/// Serves `listener` with one worker, no signal handling, on a spawned task. Keep-alive is
/// off (every answer says `Connection: close`), so no idle pooled connection of the sender's
/// outlives going down: once down, a new delivery's connection is refused, deterministically.
fn serve(listener: TcpListener, state: Arc<Mutex<State>>) -> Running {
    let data = web::Data::from(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
            .default_service(web::to(receive))
    })
    .workers(1)
    .keep_alive(actix_web::http::KeepAlive::Disabled)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)
    .expect("webhook receiver listens")
    .run();
    let handle = server.handle();
    let task = tokio::spawn(server);
    Running { handle, task }
}

/// Records the request and answers as the mode says. Only POST is a delivery: other
/// methods are recorded and answered 405.
async fn receive(request: HttpRequest, body: web::Bytes, state: web::Data<Mutex<State>>) -> HttpResponse {
    let received_at = Instant::now();
    let mut state = state.lock().expect("webhook receiver state lock");
    let response = if request.method() != actix_web::http::Method::POST {
        HttpResponse::MethodNotAllowed().insert_header(("Allow", "POST")).finish()
    } else {
        match &state.mode {
            Mode::Accept => HttpResponse::Ok().finish(),
            Mode::Status(status) => HttpResponse::build(status_code(*status)).finish(),
            Mode::RetryAfter { status, seconds } => {
                HttpResponse::build(status_code(*status)).insert_header(("Retry-After", seconds.to_string())).finish()
            }
            Mode::Redirect(location) => HttpResponse::Found().insert_header(("Location", location.as_str())).finish(),
            // Only between the listener stopping and the mode changing, if at all.
            Mode::Down => HttpResponse::ServiceUnavailable().finish(),
        }
    };
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (name.as_str().to_ascii_lowercase(), String::from_utf8_lossy(value.as_bytes()).into_owned())
        })
        .collect();
    state.deliveries.push(Delivery {
        method: request.method().to_string(),
        path: request.path().to_owned(),
        headers,
        body: body.to_vec(),
        received_at,
        status: response.status().as_u16(),
    });
    response
}

fn status_code(status: u16) -> actix_web::http::StatusCode {
    actix_web::http::StatusCode::from_u16(status)
        .unwrap_or_else(|e| panic!("webhook receiver mode has an invalid status {status}: {e}"))
}

/// Binds the port again, retrying while the OS still holds it.
async fn rebind(port: u16) -> TcpListener {
    let mut attempts = 0;
    loop {
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(listener) => return listener,
            Err(e) if attempts < 50 => {
                attempts += 1;
                tracing::debug!(port, error = %e, "webhook receiver port still held; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("webhook receiver cannot listen on port {port} again: {e}"),
        }
    }
}

/// Waits until connections to the port are refused (the acceptor has closed the socket).
async fn wait_until_refused(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
        assert!(Instant::now() < deadline, "webhook receiver on port {port} still accepts connections after stopping");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A new signing secret: `whsec_` and the base64 of 32 random bytes.
pub fn new_secret() -> String {
    let key: [u8; 32] = rand::random();
    format!("whsec_{}", BASE64.encode(key))
}

/// Checks a delivery's Standard Webhooks signature: an HMAC-SHA256, with the key in
/// `secret` (`whsec_<base64>`), of `{webhook-id}.{webhook-timestamp}.{body}`, matching one
/// of the `v1,<base64>` entries of `webhook-signature`; and a timestamp within five minutes
/// of now.
pub fn verify_signature(secret: &str, delivery: &Delivery) -> Result<(), String> {
    verify_signature_at(secret, delivery, time::OffsetDateTime::now_utc().unix_timestamp())
}

fn verify_signature_at(secret: &str, delivery: &Delivery, now: i64) -> Result<(), String> {
    let key = secret.strip_prefix("whsec_").ok_or_else(|| format!("secret {secret:?} does not start with whsec_"))?;
    let key = BASE64.decode(key).map_err(|e| format!("secret is not base64 after whsec_: {e}"))?;
    let id = delivery.header("webhook-id").ok_or("no webhook-id header")?;
    let timestamp = delivery.header("webhook-timestamp").ok_or("no webhook-timestamp header")?;
    let signatures = delivery.header("webhook-signature").ok_or("no webhook-signature header")?;
    let seconds: i64 =
        timestamp.parse().map_err(|e| format!("webhook-timestamp {timestamp:?} is not whole seconds: {e}"))?;
    if (now - seconds).abs() > TIMESTAMP_TOLERANCE_SECS {
        return Err(format!(
            "webhook-timestamp {seconds} is {}s from now ({now}), over the {TIMESTAMP_TOLERANCE_SECS}s tolerance",
            now - seconds
        ));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| format!("unusable key: {e}"))?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(&delivery.body);
    let mut versions = Vec::new();
    for entry in signatures.split(' ').filter(|e| !e.is_empty()) {
        let Some((version, signature)) = entry.split_once(',') else {
            versions.push(format!("{entry:?} (no version)"));
            continue;
        };
        if version != "v1" {
            versions.push(version.to_owned());
            continue;
        }
        let Ok(signature) = BASE64.decode(signature) else {
            versions.push("v1 (not base64)".to_owned());
            continue;
        };
        if mac.clone().verify_slice(&signature).is_ok() {
            return Ok(());
        }
        versions.push("v1 (no match)".to_owned());
    }
    Err(format!("no v1 signature matches; webhook-signature has: [{}]", versions.join(", ")))
}

// ---------------------------------------------------------------------------------------------
// The receiver's own tests.

mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    /// Signs the way a Standard Webhooks sender does, independently of `verify_signature`.
    fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
        let key = BASE64.decode(secret.trim_start_matches("whsec_")).expect("secret is base64");
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }

    fn delivery(id: &str, timestamp: i64, signature: &str, body: &[u8]) -> Delivery {
        Delivery {
            method: "POST".into(),
            path: "/hook".into(),
            headers: vec![
                ("webhook-id".into(), id.into()),
                ("webhook-timestamp".into(), timestamp.to_string()),
                ("webhook-signature".into(), signature.into()),
            ],
            body: body.to_vec(),
            received_at: Instant::now(),
            status: 200,
        }
    }

    fn now() -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
    }

    #[test]
    fn a_new_secret_is_whsec_and_32_random_bytes() {
        let secret = new_secret();
        let key = BASE64.decode(secret.strip_prefix("whsec_").expect("whsec_ prefix")).expect("base64");
        assert_eq!(key.len(), 32);
        assert_ne!(secret, new_secret());
    }

    #[test]
    fn a_signature_made_with_the_secret_verifies() {
        let secret = new_secret();
        let body = br#"{"resourceType":"Bundle"}"#;
        let signed = delivery("msg_1", now(), &sign(&secret, "msg_1", now(), body), body);
        assert_eq!(verify_signature(&secret, &signed), Ok(()));
    }

    #[test]
    fn the_standard_webhooks_reference_vector_verifies() {
        let vector = delivery(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(verify_signature_at("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &vector, 1614265330), Ok(()));
        assert_eq!(
            sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, &vector.body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_tampered_body_does_not_verify() {
        let secret = new_secret();
        let signature = sign(&secret, "msg_1", now(), b"{\"a\":1}");
        let tampered = delivery("msg_1", now(), &signature, b"{\"a\":2}");
        let error = verify_signature(&secret, &tampered).expect_err("a tampered body must not verify");
        assert!(error.contains("no v1 signature matches"), "{error}");
    }

    #[test]
    fn another_secret_or_another_id_does_not_verify() {
        let secret = new_secret();
        let body = b"{}";
        let signed = delivery("msg_1", now(), &sign(&secret, "msg_1", now(), body), body);
        assert!(verify_signature(&new_secret(), &signed).is_err());
        let moved = delivery("msg_2", now(), &sign(&secret, "msg_1", now(), body), body);
        assert!(verify_signature(&secret, &moved).is_err());
    }

    #[test]
    fn any_of_several_signatures_may_match() {
        let (old, new) = (new_secret(), new_secret());
        let body = b"{}";
        let both = format!("{} {}", sign(&old, "msg_1", now(), body), sign(&new, "msg_1", now(), body));
        let signed = delivery("msg_1", now(), &both, body);
        assert_eq!(verify_signature(&old, &signed), Ok(()));
        assert_eq!(verify_signature(&new, &signed), Ok(()));
        assert!(verify_signature(&new_secret(), &signed).is_err());
    }

    #[test]
    fn a_timestamp_more_than_five_minutes_off_does_not_verify() {
        let secret = new_secret();
        let body = b"{}";
        for timestamp in [now() - 301, now() + 301] {
            let signed = delivery("msg_1", timestamp, &sign(&secret, "msg_1", timestamp, body), body);
            let error = verify_signature(&secret, &signed).expect_err("a stale or future timestamp must not verify");
            assert!(error.contains("tolerance"), "{error}");
        }
    }

    #[test]
    fn missing_headers_or_a_malformed_secret_do_not_verify() {
        let secret = new_secret();
        let mut unsigned = delivery("msg_1", now(), "v1,AAAA", b"{}");
        unsigned.headers.retain(|(name, _)| name != "webhook-signature");
        assert_eq!(verify_signature(&secret, &unsigned), Err("no webhook-signature header".to_owned()));
        let signed = delivery("msg_1", now(), &sign(&secret, "msg_1", now(), b"{}"), b"{}");
        assert!(verify_signature(secret.trim_start_matches("whsec_"), &signed).is_err());
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("http client")
    }

    async fn post(client: &reqwest::Client, url: &str, body: &str) -> reqwest::Response {
        client
            .post(url)
            .header("Content-Type", "application/fhir+json")
            .header("Webhook-Id", "msg_1")
            .body(body.to_owned())
            .send()
            .await
            .expect("the receiver answers")
    }

    #[tokio::test]
    async fn the_receiver_records_each_request_and_answers_as_told() {
        let receiver = WebhookReceiver::start().await;
        let client = client();
        assert_eq!(receiver.url(), format!("http://127.0.0.1:{}/hook", receiver.port()));

        let response = post(&client, &receiver.url(), r#"{"resourceType":"Bundle"}"#).await;
        assert_eq!(response.status(), 200);
        let accepted = receiver.wait_for(1, WAIT).await;
        assert_eq!(accepted.len(), 1);
        assert_eq!(accepted[0].method, "POST");
        assert_eq!(accepted[0].path, "/hook");
        assert_eq!(accepted[0].header("webhook-id"), Some("msg_1"));
        assert_eq!(accepted[0].header("Content-Type"), Some("application/fhir+json"));
        assert!(accepted[0].headers.iter().all(|(name, _)| *name == name.to_ascii_lowercase()));
        assert_eq!(accepted[0].json()["resourceType"], "Bundle");

        receiver.set_mode(Mode::Status(500)).await;
        assert_eq!(
            post(&client, &format!("http://127.0.0.1:{}/other/path", receiver.port()), "{}").await.status(),
            500
        );

        receiver.set_mode(Mode::RetryAfter { status: 503, seconds: 7 }).await;
        let response = post(&client, &receiver.url(), "{}").await;
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("7"));

        receiver.set_mode(Mode::Redirect("http://127.0.0.1:9/elsewhere".into())).await;
        let response = post(&client, &receiver.url(), "{}").await;
        assert_eq!(response.status(), 302);
        assert_eq!(
            response.headers().get("location").and_then(|v| v.to_str().ok()),
            Some("http://127.0.0.1:9/elsewhere")
        );

        receiver.set_mode(Mode::Accept).await;
        let response = client.get(receiver.url()).send().await.expect("the receiver answers");
        assert_eq!(response.status(), 405);

        let all = receiver.deliveries();
        let statuses: Vec<u16> = all.iter().map(|d| d.status).collect();
        assert_eq!(statuses, [200, 500, 503, 302, 405]);
        assert_eq!(all[1].path, "/other/path");
        assert_eq!(all[4].method, "GET");
        assert!(all.windows(2).all(|pair| pair[0].received_at <= pair[1].received_at));
        assert_eq!(receiver.accepted().len(), 1);
    }

    #[tokio::test]
    async fn a_receiver_that_goes_down_refuses_connections_and_comes_back_on_the_same_port() {
        let receiver = WebhookReceiver::start().await;
        let port = receiver.port();
        // One client throughout: a pooled keep-alive connection must not outlive going down.
        let client = client();
        assert_eq!(post(&client, &receiver.url(), "{}").await.status(), 200);

        receiver.go_down().await;
        let error = client.post(receiver.url()).body("{}").send().await.expect_err("nothing listens while down");
        assert!(error.is_connect(), "expected a refused connection, got {error:?}");

        receiver.come_back().await;
        assert_eq!(receiver.port(), port);
        assert_eq!(post(&client, &receiver.url(), "{}").await.status(), 200);
        assert_eq!(receiver.wait_for(2, WAIT).await.len(), 2);

        receiver.set_mode(Mode::Down).await;
        receiver.set_mode(Mode::Status(410)).await;
        assert_eq!(post(&client, &receiver.url(), "{}").await.status(), 410);
    }

    #[tokio::test]
    #[should_panic(expected = "expected at least 2 accepted deliveries")]
    async fn waiting_for_more_deliveries_than_are_accepted_fails_listing_what_arrived() {
        let receiver = WebhookReceiver::start().await;
        let client = client();
        post(&client, &receiver.url(), "{}").await;
        receiver.set_mode(Mode::Status(500)).await;
        post(&client, &receiver.url(), "{}").await;
        receiver.wait_for(2, Duration::from_millis(200)).await;
    }
}
