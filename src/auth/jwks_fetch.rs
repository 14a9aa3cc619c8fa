//! Fetching a client's registered JWKS URL (SMART Backend Services, "Registering a client":
//! `jwks_url`), for the token endpoint.
//!
//! Rules (docs/security-and-reliability.md, "Authentication", on JWKS fetches): https only; connect
//! and total timeouts; a response size cap enforced while streaming; redirects are not followed (a
//! 3xx is a failure); responses are cached per URL no longer than `Cache-Control: max-age` says,
//! not at all for `no-store`/`no-cache`/`max-age=0`, a short default when the header is absent, and
//! never longer than [`JwksFetchConfig::max_ttl`]. The cache is in memory: it is a cache, not
//! state, and losing it on restart only costs a fetch.
//!
//! The URL always comes from the client's registration (never from a `jku` header: that is
//! compared with the registration before anything is fetched, see [`super::assertion`]), so
//! private network addresses are not refused here; operator-registered endpoints on HSCN may
//! legitimately resolve to them.
//!
//! The token endpoint depends on [`JwksSource`], not on [`HttpJwksSource`], so tests fake it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::time::Instant;

use super::jwk::Jwks;

/// Whether a cached JWKS may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// A cached copy within its lifetime is fine.
    Cached,
    /// Fetch again (the client may have rotated its keys: the `kid` was not found), unless the
    /// cached copy is younger than [`JwksFetchConfig::min_refresh_interval`].
    Refresh,
}

/// Where the token endpoint gets a client's JWKS from.
#[async_trait]
pub trait JwksSource: Send + Sync {
    /// The JWK Set at `url`, as JSON (already checked to have a `keys` array).
    async fn fetch_jwks(&self, url: &str, freshness: Freshness) -> Result<Value, JwksFetchError>;
}

/// Why a JWKS could not be fetched. At the token endpoint, any of these is `invalid_client`.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum JwksFetchError {
    #[error("the JWKS URL is not a valid absolute URL")]
    InvalidUrl,
    #[error("the JWKS URL is not https")]
    InsecureUrl,
    #[error("the JWKS URL answered a redirect ({status}), which is not followed")]
    Redirected { status: u16 },
    #[error("the JWKS URL answered HTTP {status}")]
    HttpStatus { status: u16 },
    #[error("the JWKS response is larger than {max} bytes")]
    TooLarge { max: usize },
    #[error("the JWKS fetch timed out")]
    Timeout,
    #[error("the JWKS fetch failed to connect or transfer")]
    Transport,
    #[error("the JWKS response is not JSON")]
    InvalidJson,
    #[error("the JWKS response is not a JWK Set")]
    NotAJwks,
    #[error("the HTTP client could not be built")]
    ClientBuild,
}

impl JwksFetchError {
    /// A stable short string for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidUrl => "jwks_url_invalid",
            Self::InsecureUrl => "jwks_url_not_https",
            Self::Redirected { .. } => "jwks_redirect_refused",
            Self::HttpStatus { .. } => "jwks_http_status",
            Self::TooLarge { .. } => "jwks_too_large",
            Self::Timeout => "jwks_timeout",
            Self::Transport => "jwks_transport",
            Self::InvalidJson => "jwks_invalid_json",
            Self::NotAJwks => "jwks_not_a_jwks",
            Self::ClientBuild => "jwks_client_build",
        }
    }
}

/// Limits for [`HttpJwksSource`]. The defaults suit production.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksFetchConfig {
    pub connect_timeout: Duration,
    /// For the whole fetch, body included.
    pub total_timeout: Duration,
    pub max_body_bytes: usize,
    /// Cache lifetime when the response has no `Cache-Control` max-age.
    pub default_ttl: Duration,
    /// Cache lifetime cap, whatever the response says.
    pub max_ttl: Duration,
    /// Bounds how often [`Freshness::Refresh`] can make us fetch one URL (unknown `kid`s are
    /// attacker-controlled).
    pub min_refresh_interval: Duration,
    pub max_cache_entries: usize,
    /// Permits `http://127.0.0.1` and `http://[::1]` (and bypasses any proxy) for tests
    /// against a local server. Never set in production.
    pub allow_insecure_loopback_for_tests: bool,
}

impl Default for JwksFetchConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(10),
            max_body_bytes: 64 * 1024,
            default_ttl: Duration::from_secs(5 * 60),
            max_ttl: Duration::from_secs(60 * 60),
            min_refresh_interval: Duration::from_secs(30),
            max_cache_entries: 1024,
            allow_insecure_loopback_for_tests: false,
        }
    }
}

#[derive(Debug, Clone)]
struct CacheEntry {
    jwks: Value,
    fetched_at: Instant,
    expires_at: Instant,
}

/// [`JwksSource`] over HTTPS with reqwest, with an in-memory cache.
#[derive(Debug)]
pub struct HttpJwksSource {
    client: reqwest::Client,
    config: JwksFetchConfig,
    cache: Mutex<HashMap<String, CacheEntry>>,
}

impl HttpJwksSource {
    pub fn new(config: JwksFetchConfig) -> Result<Self, JwksFetchError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.total_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("linkbridge/", env!("CARGO_PKG_VERSION"), " jwks-fetch"));
        if config.allow_insecure_loopback_for_tests {
            builder = builder.no_proxy();
        } else {
            builder = builder.https_only(true);
        }
        let client = builder.build().map_err(|_| JwksFetchError::ClientBuild)?;
        Ok(Self { client, config, cache: Mutex::new(HashMap::new()) })
    }

    fn cached(&self, url: &str, freshness: Freshness, now: Instant) -> Option<Value> {
        let cache = self.cache.lock().ok()?;
        let entry = cache.get(url)?;
        let usable = match freshness {
            Freshness::Cached => now < entry.expires_at,
            Freshness::Refresh => now < entry.expires_at && now < entry.fetched_at + self.config.min_refresh_interval,
        };
        usable.then(|| entry.jwks.clone())
    }

    fn store(&self, url: &str, jwks: &Value, ttl: Duration, now: Instant) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= self.config.max_cache_entries && !cache.contains_key(url) {
            cache.retain(|_, e| e.expires_at > now);
            if cache.len() >= self.config.max_cache_entries {
                let oldest = cache.iter().min_by_key(|(_, e)| e.fetched_at).map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    cache.remove(&oldest);
                }
            }
        }
        cache.insert(url.to_owned(), CacheEntry { jwks: jwks.clone(), fetched_at: now, expires_at: now + ttl });
    }

    async fn download(&self, url: url::Url) -> Result<(Value, Option<Duration>), JwksFetchError> {
        let mut response = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/jwk-set+json, application/json")
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        if status.is_redirection() {
            return Err(JwksFetchError::Redirected { status: status.as_u16() });
        }
        if status != reqwest::StatusCode::OK {
            return Err(JwksFetchError::HttpStatus { status: status.as_u16() });
        }
        let max = self.config.max_body_bytes;
        let too_large = JwksFetchError::TooLarge { max };
        if response.content_length().is_some_and(|len| len > u64::try_from(max).unwrap_or(u64::MAX)) {
            return Err(too_large);
        }
        let cache_control: Vec<String> = response
            .headers()
            .get_all(reqwest::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
            if body.len() + chunk.len() > max {
                return Err(too_large);
            }
            body.extend_from_slice(&chunk);
        }
        let jwks: Value = serde_json::from_slice(&body).map_err(|_| JwksFetchError::InvalidJson)?;
        Jwks::from_value(&jwks).map_err(|_| JwksFetchError::NotAJwks)?;
        let ttl = cache_ttl(&cache_control.iter().map(String::as_str).collect::<Vec<_>>(), &self.config);
        Ok((jwks, ttl))
    }
}

#[async_trait]
impl JwksSource for HttpJwksSource {
    async fn fetch_jwks(&self, url: &str, freshness: Freshness) -> Result<Value, JwksFetchError> {
        let parsed = checked_url(url, self.config.allow_insecure_loopback_for_tests)?;
        if let Some(jwks) = self.cached(url, freshness, Instant::now()) {
            return Ok(jwks);
        }
        // Belt and braces over reqwest's own total timeout: nothing here outlives it.
        let (jwks, ttl) = tokio::time::timeout(self.config.total_timeout, self.download(parsed))
            .await
            .map_err(|_| JwksFetchError::Timeout)??;
        match ttl {
            Some(ttl) => self.store(url, &jwks, ttl, Instant::now()),
            None => {
                if let Ok(mut cache) = self.cache.lock() {
                    cache.remove(url);
                }
            }
        }
        Ok(jwks)
    }
}

fn transport_error(e: reqwest::Error) -> JwksFetchError {
    if e.is_timeout() {
        JwksFetchError::Timeout
    } else {
        JwksFetchError::Transport
    }
}

/// https only; `http` to a loopback IP literal only with the test switch. No credentials in
/// the URL.
fn checked_url(url: &str, allow_insecure_loopback: bool) -> Result<url::Url, JwksFetchError> {
    let parsed = url::Url::parse(url).map_err(|_| JwksFetchError::InvalidUrl)?;
    if parsed.host().is_none() || !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(JwksFetchError::InvalidUrl);
    }
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if allow_insecure_loopback && is_loopback_literal(&parsed) => Ok(parsed),
        _ => Err(JwksFetchError::InsecureUrl),
    }
}

fn is_loopback_literal(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

/// How long a response may be cached (RFC 9111 section 5.2.2): `None` means not at all.
fn cache_ttl(cache_control: &[&str], config: &JwksFetchConfig) -> Option<Duration> {
    let mut max_age: Option<u64> = None;
    for directive in cache_control.iter().flat_map(|v| v.split(',')) {
        let directive = directive.trim();
        let (name, value) = match directive.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (directive, None),
        };
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            "no-store" | "no-cache" => return None,
            // RFC 9111 section 4.2.1: an invalid max-age means the response is stale.
            "max-age" => max_age = Some(value.and_then(|v| v.parse().ok())?),
            _ => {}
        }
    }
    match max_age {
        Some(0) => None,
        Some(secs) => Some(Duration::from_secs(secs).min(config.max_ttl)),
        None => Some(config.default_ttl.min(config.max_ttl)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-384","kid":"k1","x":"AA","y":"AA"}]}"#;

    /// A one-route HTTP/1.1 server on 127.0.0.1 that answers every connection with the raw
    /// bytes `respond(n)` gives for the n-th request, and counts requests.
    struct TestServer {
        url: String,
        hits: Arc<AtomicUsize>,
    }

    async fn serve<F>(respond: F) -> TestServer
    where
        F: Fn(usize) -> Reply + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let respond = Arc::new(respond);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let respond = Arc::clone(&respond);
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => request.extend_from_slice(&buf[..read]),
                        }
                    }
                    let reply = respond(n);
                    if let Some(delay) = reply.delay {
                        tokio::time::sleep(delay).await;
                    }
                    let _ = socket.write_all(&reply.bytes).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        TestServer { url: format!("http://{addr}/jwks.json"), hits }
    }

    struct Reply {
        bytes: Vec<u8>,
        delay: Option<Duration>,
    }

    fn ok(headers: &str, body: &str) -> Reply {
        Reply {
            bytes: format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
                body.len()
            )
            .into_bytes(),
            delay: None,
        }
    }

    fn test_config() -> JwksFetchConfig {
        JwksFetchConfig {
            allow_insecure_loopback_for_tests: true,
            total_timeout: Duration::from_secs(5),
            ..JwksFetchConfig::default()
        }
    }

    fn source(config: JwksFetchConfig) -> HttpJwksSource {
        HttpJwksSource::new(config).unwrap_or_else(|e| panic!("client: {e}"))
    }

    #[tokio::test]
    async fn only_https_urls_are_fetched_unless_the_loopback_switch_is_on() {
        let server = serve(|_| ok("", JWKS)).await;
        let strict = source(JwksFetchConfig::default());
        let cases: &[(&str, JwksFetchError)] = &[
            ("http://jwks.example/keys", JwksFetchError::InsecureUrl),
            ("ftp://jwks.example/keys", JwksFetchError::InsecureUrl),
            ("https://user:pw@jwks.example/keys", JwksFetchError::InvalidUrl),
            ("not a url", JwksFetchError::InvalidUrl),
            (server.url.as_str(), JwksFetchError::InsecureUrl),
        ];
        for (url, expected) in cases {
            assert_eq!(strict.fetch_jwks(url, Freshness::Cached).await.err().as_ref(), Some(expected), "url {url:?}");
        }
        assert_eq!(server.hits.load(Ordering::SeqCst), 0, "nothing was requested");

        let lenient = source(test_config());
        assert!(
            lenient.fetch_jwks(&server.url, Freshness::Cached).await.is_ok(),
            "http://127.0.0.1 is allowed with the test switch"
        );
        assert_eq!(
            lenient.fetch_jwks("http://jwks.example/keys", Freshness::Cached).await.err(),
            Some(JwksFetchError::InsecureUrl),
            "the switch covers loopback IP literals only"
        );
    }

    #[tokio::test]
    async fn redirects_are_refused_and_not_followed() {
        let target = serve(|_| ok("", JWKS)).await;
        let location = target.url.clone();
        let redirecting = serve(move |_| Reply {
            bytes: format!(
                "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .into_bytes(),
            delay: None,
        })
        .await;
        let result = source(test_config()).fetch_jwks(&redirecting.url, Freshness::Cached).await;
        assert_eq!(result.err(), Some(JwksFetchError::Redirected { status: 302 }), "3xx is a failure");
        assert_eq!(target.hits.load(Ordering::SeqCst), 0, "the redirect target was never contacted");
    }

    #[tokio::test]
    async fn responses_over_the_size_cap_are_aborted() {
        let big_body = format!(r#"{{"keys":[],"pad":"{}"}}"#, "x".repeat(4096));
        let declared = serve({
            let body = big_body.clone();
            move |_| ok("", &body)
        })
        .await;
        let streamed = serve({
            let body = big_body.clone();
            move |_| Reply {
                // No Content-Length: the body runs until the connection closes.
                bytes: format!("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{body}").into_bytes(),
                delay: None,
            }
        })
        .await;
        let capped = source(JwksFetchConfig { max_body_bytes: 1024, ..test_config() });
        for (name, server) in [("declared length", &declared), ("streamed body", &streamed)] {
            assert_eq!(
                capped.fetch_jwks(&server.url, Freshness::Cached).await.err(),
                Some(JwksFetchError::TooLarge { max: 1024 }),
                "{name}"
            );
        }
        assert!(
            source(test_config()).fetch_jwks(&streamed.url, Freshness::Cached).await.is_ok(),
            "the same body passes under the default 64 KiB cap"
        );
    }

    #[tokio::test]
    async fn a_server_that_stalls_hits_the_total_timeout() {
        let stalled = serve(|_| Reply { delay: Some(Duration::from_secs(30)), ..ok("", JWKS) }).await;
        let started = std::time::Instant::now();
        let result = source(JwksFetchConfig { total_timeout: Duration::from_millis(300), ..test_config() })
            .fetch_jwks(&stalled.url, Freshness::Cached)
            .await;
        assert_eq!(result.err(), Some(JwksFetchError::Timeout), "timeout error");
        assert!(started.elapsed() < Duration::from_secs(5), "gave up promptly");
    }

    #[tokio::test]
    async fn bad_responses_are_errors() {
        let cases: Vec<(&str, Reply, JwksFetchError)> = vec![
            (
                "server error",
                Reply {
                    bytes: b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_vec(),
                    delay: None,
                },
                JwksFetchError::HttpStatus { status: 500 },
            ),
            ("not json", ok("", "<html>"), JwksFetchError::InvalidJson),
            ("json but no keys", ok("", r#"{"key":[]}"#), JwksFetchError::NotAJwks),
        ];
        for (name, reply, expected) in cases {
            let bytes = reply.bytes;
            let server = serve(move |_| Reply { bytes: bytes.clone(), delay: None }).await;
            assert_eq!(
                source(test_config()).fetch_jwks(&server.url, Freshness::Cached).await.err(),
                Some(expected),
                "{name}"
            );
        }
    }

    #[tokio::test]
    async fn responses_are_cached_as_cache_control_allows() {
        let cases: &[(&str, &str, usize)] = &[
            ("max-age", "Cache-Control: public, max-age=60\r\n", 1),
            ("no header: short default", "", 1),
            ("no-store", "Cache-Control: no-store\r\n", 2),
            ("no-cache", "Cache-Control: no-cache\r\n", 2),
            ("max-age=0", "Cache-Control: max-age=0\r\n", 2),
            ("invalid max-age", "Cache-Control: max-age=soon\r\n", 2),
        ];
        for (name, header, expected_hits) in cases {
            let header = (*header).to_owned();
            let server = serve(move |_| ok(&header, JWKS)).await;
            let jwks = source(test_config());
            for _ in 0..2 {
                assert!(jwks.fetch_jwks(&server.url, Freshness::Cached).await.is_ok(), "{name}: fetch");
            }
            assert_eq!(server.hits.load(Ordering::SeqCst), *expected_hits, "{name}: requests made");
        }
    }

    #[tokio::test]
    async fn refresh_refetches_but_no_more_often_than_the_minimum_interval() {
        let server = serve(|_| ok("Cache-Control: max-age=3600\r\n", JWKS)).await;
        let throttled = source(test_config());
        for freshness in [Freshness::Cached, Freshness::Refresh, Freshness::Refresh] {
            assert!(throttled.fetch_jwks(&server.url, freshness).await.is_ok(), "fetch");
        }
        assert_eq!(server.hits.load(Ordering::SeqCst), 1, "refresh within 30 s reuses the copy");

        let eager = source(JwksFetchConfig { min_refresh_interval: Duration::ZERO, ..test_config() });
        for freshness in [Freshness::Cached, Freshness::Cached, Freshness::Refresh] {
            assert!(eager.fetch_jwks(&server.url, freshness).await.is_ok(), "fetch");
        }
        assert_eq!(server.hits.load(Ordering::SeqCst), 3, "cached once, then refreshed");
    }

    #[test]
    fn cache_lifetime_follows_cache_control_within_the_cap() {
        let config = JwksFetchConfig::default();
        let secs = |s: u64| Some(Duration::from_secs(s));
        let cases: &[(&[&str], Option<Duration>)] = &[
            (&[], secs(300)),
            (&["public"], secs(300)),
            (&["max-age=120"], secs(120)),
            (&["Max-Age=\"120\""], secs(120)),
            (&["public, max-age=86400"], secs(3600)),
            (&["max-age=0"], None),
            (&["max-age=-1"], None),
            (&["max-age"], None),
            (&["no-store"], None),
            (&["max-age=60, no-cache"], None),
            (&["max-age=60", "no-store"], None),
            (&["private, max-age=30"], secs(30)),
        ];
        for (headers, expected) in cases {
            assert_eq!(cache_ttl(headers, &config), *expected, "Cache-Control {headers:?}");
        }
    }
}
