//! The token endpoint's use case (SMART Backend Services, client_credentials with a
//! private_key_jwt assertion) and the verification of access tokens on every FHIR request.

use std::sync::Arc;

use serde_json::Value;
use time::OffsetDateTime;

use crate::auth::{
    authenticate_client, peek_client_id, verify_external_access_token, AccessTokenPolicy, ClientAuthError, ClientKeys,
    ExternalIssuerPolicy, Freshness, Grant, IssuedAccessToken, Jwks, JwksSource, ScopeSet, SigningKeys, TokenError,
};
use crate::domain::instant::Instant;
use crate::domain::tenancy::{OdsCode, Principal, Role};

use crate::store::{ClientRecord, Store, StoreError};

/// `client_assertion_type` for private_key_jwt (RFC 7523 section 2.2).
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The form of a token request (RFC 6749 section 4.4.2 with RFC 7521 client authentication).
#[derive(Debug, Default, serde::Deserialize)]
pub struct TokenRequest {
    pub grant_type: Option<String>,
    pub scope: Option<String>,
    pub client_assertion_type: Option<String>,
    pub client_assertion: Option<String>,
}

/// Why a token request was refused; each maps to an RFC 6749 section 5.2 error code.
#[derive(Debug, thiserror::Error)]
pub enum TokenRequestError {
    #[error("invalid_request: {0}")]
    InvalidRequest(&'static str),
    #[error("unsupported_grant_type")]
    UnsupportedGrantType,
    /// Client authentication failed. The reason goes to the log, never to the client.
    #[error("invalid_client ({0})")]
    InvalidClient(&'static str),
    #[error("invalid_scope: {0}")]
    InvalidScope(String),
    /// Too many failed requests for this client lately (429 with Retry-After).
    #[error("throttled: too many failed token requests for this client; retry after {retry_after_secs} s")]
    Throttled { retry_after_secs: u64 },
    #[error("server_error: {0}")]
    Server(#[from] StoreError),
}

/// Why a bearer token was not accepted on a FHIR request.
#[derive(Debug, thiserror::Error)]
pub enum AuthenticationError {
    /// The token is not valid (401).
    #[error(transparent)]
    Refused(#[from] TokenError),
    /// The registration that decides cannot be read just now (the database is unavailable):
    /// no verdict on the token, so the client is told to retry (503), not that its token is bad.
    #[error("the client registry cannot be read: {0}")]
    Unavailable(StoreError),
}

impl TokenRequestError {
    pub fn oauth_error(&self) -> &'static str {
        match self {
            TokenRequestError::InvalidRequest(_) => "invalid_request",
            TokenRequestError::UnsupportedGrantType => "unsupported_grant_type",
            TokenRequestError::InvalidClient(_) => "invalid_client",
            TokenRequestError::InvalidScope(_) => "invalid_scope",
            // The request failed as the ones before it did; the 429 and its Retry-After say
            // why it is not worth retrying at once.
            TokenRequestError::Throttled { .. } => "invalid_client",
            TokenRequestError::Server(_) => "server_error",
        }
    }
}

/// An operator's own OAuth server whose access tokens are accepted beside ours.
#[derive(Clone)]
pub struct ExternalIssuer {
    pub policy: ExternalIssuerPolicy,
    pub jwks_url: String,
}

/// Issues and verifies access tokens.
#[derive(Clone)]
pub struct AuthService {
    store: Store,
    keys: Arc<SigningKeys>,
    policy: AccessTokenPolicy,
    token_endpoint: String,
    jwks_source: Arc<dyn JwksSource>,
    external: Option<ExternalIssuer>,
    verified: Arc<VerifiedTokens>,
    registrations: Arc<Registrations>,
    failures: Arc<FailedTokenRequests>,
}

/// Failed token requests of this process, counted per client (the `client_id` the assertion
/// claims, unverified), in fixed windows of [`FAILURE_WINDOW`] from a client's first failure.
/// Past its limit (`token_failure_limit`, [`DEFAULT_FAILURE_LIMIT`]) in a window, each further
/// failure is answered 429 with `Retry-After` (the rest of the window) instead of 400, so a
/// misconfigured client or an attacker learns to stop, and a burst shows in the metrics as
/// throttled.
///
/// Every request is still checked, throttled or not: an assertion signed with the client's
/// registered key is served whatever the count, so an attacker who knows a client_id (it is
/// not secret) cannot lock its owner out. Only requests whose assertion names no readable
/// client_id, which cannot succeed anyway, share one count and are refused unchecked once over
/// it. The count is per process (replicas keep their own): N replicas allow N times the
/// threshold, which the throttle is not meant to hide; it bounds what one client's failures
/// cost, not an organisation's traffic.
struct FailedTokenRequests {
    windows: std::sync::Mutex<std::collections::HashMap<String, FailureWindow>>,
    /// Failures a client may have in one window before the next are answered 429 (0: no limit).
    limit: u32,
}

#[derive(Debug, Clone, Copy)]
struct FailureWindow {
    started: std::time::Instant,
    failures: u32,
}

/// The default of `token_failure_limit`: failures a client may have in one window.
pub const DEFAULT_FAILURE_LIMIT: u32 = 20;
/// The length of a failure window.
pub const FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);
/// Clients counted at once; when full, windows that ended are dropped, then new clients share
/// the count of unreadable ones (a flood of invented client ids cannot grow the map).
const FAILURE_CLIENTS_CAPACITY: usize = 10_000;
/// The count shared by assertions with no readable client_id (and by overflow).
const UNIDENTIFIED: &str = "";

impl FailedTokenRequests {
    /// How long until `client`'s window ends, if it has had its fill of failures in it.
    fn throttled_for(&self, client: &str, now: std::time::Instant) -> Option<std::time::Duration> {
        let windows = self.windows.lock().ok()?;
        let window = windows.get(client)?;
        let ends = window.started + FAILURE_WINDOW;
        (self.limit > 0 && window.failures >= self.limit && now < ends).then(|| ends - now)
    }

    /// Counts a failure of `client`.
    fn note(&self, client: &str, now: std::time::Instant) {
        let Ok(mut windows) = self.windows.lock() else { return };
        if !windows.contains_key(client) && windows.len() >= FAILURE_CLIENTS_CAPACITY {
            windows.retain(|_, window| now < window.started + FAILURE_WINDOW);
        }
        let key = if windows.contains_key(client) || windows.len() < FAILURE_CLIENTS_CAPACITY {
            client
        } else {
            UNIDENTIFIED
        };
        let window = windows.entry(key.to_owned()).or_insert(FailureWindow { started: now, failures: 0 });
        if now >= window.started + FAILURE_WINDOW {
            *window = FailureWindow { started: now, failures: 0 };
        }
        window.failures = window.failures.saturating_add(1);
    }
}

/// Whole seconds to wait, rounded up (`Retry-After` is in seconds).
fn whole_seconds(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// Our own access tokens this process has verified, so that a client's every request does not
/// pay for an ECDSA P-384 verification (the largest CPU cost of a read). Keyed by the token's
/// SHA-256 (the token itself is not kept); an entry serves only until the token's own expiry,
/// so a cached token's signature and claims are accepted exactly as long as verifying it again
/// would accept them (signing keys are not withdrawn before the tokens they signed expire).
/// Whether its client is still registered as the token says is asked apart, of
/// [`Registrations`], for a cached token and a freshly verified one alike.
struct VerifiedTokens {
    entries: std::sync::Mutex<std::collections::HashMap<[u8; 32], (Principal, ScopeSet, OffsetDateTime)>>,
}

/// Enough for every client of a large board many times over; a full cache first drops
/// expired entries, then starts again (a verification each is the worst case).
const VERIFIED_TOKENS_CAPACITY: usize = 10_000;

impl VerifiedTokens {
    fn key(bearer: &str) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(bearer.as_bytes()).into()
    }

    fn get(&self, bearer: &str, now: OffsetDateTime) -> Option<(Principal, ScopeSet)> {
        let entries = self.entries.lock().ok()?;
        let (principal, scopes, expires_at) = entries.get(&Self::key(bearer))?;
        (now < *expires_at).then(|| (principal.clone(), scopes.clone()))
    }

    fn insert(&self, bearer: &str, verified: (Principal, ScopeSet), expires_at: OffsetDateTime, now: OffsetDateTime) {
        let Ok(mut entries) = self.entries.lock() else { return };
        if entries.len() >= VERIFIED_TOKENS_CAPACITY {
            entries.retain(|_, (_, _, expiry)| *expiry > now);
            if entries.len() >= VERIFIED_TOKENS_CAPACITY {
                entries.clear();
            }
        }
        entries.insert(Self::key(bearer), (verified.0, verified.1, expires_at));
    }
}

/// Turns a stored registration's organisation and role into domain values. A registration
/// that does not parse is refused rather than trusted.
fn registered_identity(client: &ClientRecord) -> Option<(OdsCode, Role)> {
    Some((OdsCode::parse(&client.organization).ok()?, Role::parse(&client.role)?))
}

/// A client's registration as access tokens are checked against it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Registration {
    organization: OdsCode,
    role: Role,
    /// The scopes the client may hold: a token's are narrowed to them.
    scopes: ScopeSet,
}

impl Registration {
    /// `None` for a registration that does not parse: refused rather than trusted.
    fn of(client: &ClientRecord) -> Option<Registration> {
        let (organization, role) = registered_identity(client)?;
        Some(Registration { organization, role, scopes: ScopeSet::parse(&client.scopes).ok()? })
    }

    /// What a token of ours, verified (or remembered) as `principal` with `scopes`, may do now:
    /// nothing once its client is removed or moved to another organisation or role (a token
    /// carries both, and tenancy follows them); the scopes since taken from the registration
    /// are taken from the token too.
    fn admit(
        registration: Option<&Registration>,
        principal: Principal,
        scopes: ScopeSet,
    ) -> Result<(Principal, ScopeSet), TokenError> {
        let registration = registration.ok_or(TokenError::ClientNotRegistered)?;
        if *principal.organization() != registration.organization {
            return Err(TokenError::InvalidClaim("organization"));
        }
        if principal.role() != registration.role {
            return Err(TokenError::InvalidClaim("role"));
        }
        let scopes = scopes.narrow_to(&registration.scopes);
        Ok((principal, scopes))
    }
}

/// What this process last read of each client's registration, and when, so that revocation
/// reaches every replica without a read per request. Registrations change by the CLI
/// (`clients add`, `clients remove`), from any process, and no replica is told: each asks the
/// database again for a client at most once per `token_recheck_secs` ([`DEFAULT_RECHECK`]),
/// whatever its traffic (one indexed read of the client's row), and a request arriving that
/// long after a removal (or a move to another organisation or role, or fewer scopes) is
/// answered by a read made after it.
///
/// Requests that find the last read too old share the next one: while it runs they wait for
/// it rather than each starting their own. A read that fails is not remembered: the request
/// is answered 503 (no verdict on its token) and the next one reads again. Keys are client ids
/// of tokens whose signature verified, so a stranger cannot fill the map with invented ones;
/// past [`REGISTRATIONS_CAPACITY`] clients, reads too old to serve are dropped, then all.
struct Registrations {
    reads: std::sync::Mutex<std::collections::HashMap<String, Arc<RegistrationRead>>>,
    recheck: std::time::Duration,
}

/// One read of a client's registration: when it began, and (once done) what it found; `None`
/// inside is a client not registered (or whose registration does not parse).
struct RegistrationRead {
    began: std::time::Instant,
    found: tokio::sync::OnceCell<Option<Registration>>,
}

/// The default of `token_recheck_secs`.
pub const DEFAULT_RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Clients whose registration a process remembers at once; more than any deployment has.
const REGISTRATIONS_CAPACITY: usize = 10_000;

impl Registrations {
    fn new(recheck: std::time::Duration) -> Self {
        Registrations { reads: Default::default(), recheck }
    }

    /// The read that answers for `client` at `now`: the last one if it began less than
    /// `recheck` ago (done or still running), else a new one, not begun.
    fn read_for(&self, client: &str, now: std::time::Instant) -> Arc<RegistrationRead> {
        let fresh = || Arc::new(RegistrationRead { began: now, found: tokio::sync::OnceCell::new() });
        let Ok(mut reads) = self.reads.lock() else { return fresh() };
        let recheck = self.recheck;
        if let Some(read) = reads.get(client).filter(|read| now.saturating_duration_since(read.began) < recheck) {
            return read.clone();
        }
        if reads.len() >= REGISTRATIONS_CAPACITY && !reads.contains_key(client) {
            reads.retain(|_, read| now.saturating_duration_since(read.began) < recheck);
            if reads.len() >= REGISTRATIONS_CAPACITY {
                reads.clear();
            }
        }
        let read = fresh();
        reads.insert(client.to_owned(), read.clone());
        read
    }

    /// `client`'s registration as of a read begun less than `recheck` before `now`, reading it
    /// with `read_client` when there is none.
    async fn current<F, R>(
        &self,
        client: &str,
        now: std::time::Instant,
        read_client: F,
    ) -> Result<Arc<RegistrationRead>, StoreError>
    where
        F: FnOnce() -> R,
        R: std::future::Future<Output = Result<Option<ClientRecord>, StoreError>>,
    {
        let read = self.read_for(client, now);
        read.found
            .get_or_try_init(|| async { Ok::<_, StoreError>(read_client().await?.as_ref().and_then(Registration::of)) })
            .await?;
        Ok(read)
    }
}

impl RegistrationRead {
    fn registration(&self) -> Option<&Registration> {
        self.found.get().and_then(Option::as_ref)
    }
}

impl AuthService {
    pub fn new(
        store: Store,
        keys: Arc<SigningKeys>,
        policy: AccessTokenPolicy,
        token_endpoint: String,
        jwks_source: Arc<dyn JwksSource>,
    ) -> Self {
        let verified = Arc::new(VerifiedTokens { entries: Default::default() });
        let registrations = Arc::new(Registrations::new(DEFAULT_RECHECK));
        let failures = Arc::new(FailedTokenRequests { windows: Default::default(), limit: DEFAULT_FAILURE_LIMIT });
        AuthService {
            store,
            keys,
            policy,
            token_endpoint,
            jwks_source,
            external: None,
            verified,
            registrations,
            failures,
        }
    }

    /// How long a client's registration, once read, answers for its tokens before it is read
    /// again (0: on every request): the longest a removed client's tokens keep working on a
    /// replica. See [`Registrations`].
    pub fn with_token_recheck(mut self, recheck: std::time::Duration) -> Self {
        self.registrations = Arc::new(Registrations::new(recheck));
        self
    }

    /// Failed token requests a client may make in a minute before further failures answer 429
    /// (0: no limit). See [`FailedTokenRequests`].
    pub fn with_failure_limit(mut self, limit: u32) -> Self {
        self.failures = Arc::new(FailedTokenRequests { windows: Default::default(), limit });
        self
    }

    /// Also accept tokens from the operator's own OAuth server.
    pub fn with_external_issuer(mut self, external: ExternalIssuer) -> Self {
        self.external = Some(external);
        self
    }

    pub fn token_endpoint(&self) -> &str {
        &self.token_endpoint
    }

    pub fn public_jwks(&self) -> Value {
        self.keys.public_jwks()
    }

    /// `POST /auth/token`, its failures counted per client (see [`FailedTokenRequests`]).
    pub async fn issue_token(&self, request: &TokenRequest) -> Result<IssuedAccessToken, TokenRequestError> {
        let client = request
            .client_assertion
            .as_deref()
            .and_then(|assertion| peek_client_id(assertion).ok())
            .map_or_else(|| UNIDENTIFIED.to_owned(), |id| id.as_str().to_owned());
        if client == UNIDENTIFIED {
            if let Some(wait) = self.failures.throttled_for(&client, std::time::Instant::now()) {
                return Err(TokenRequestError::Throttled { retry_after_secs: whole_seconds(wait) });
            }
        }
        let result = self.check_token_request(request).await;
        match result {
            Err(TokenRequestError::Server(_)) | Ok(_) => result,
            Err(refusal) => {
                let now = std::time::Instant::now();
                let throttled = self.failures.throttled_for(&client, now);
                self.failures.note(&client, now);
                match throttled {
                    Some(wait) => Err(TokenRequestError::Throttled { retry_after_secs: whole_seconds(wait) }),
                    None => Err(refusal),
                }
            }
        }
    }

    async fn check_token_request(&self, request: &TokenRequest) -> Result<IssuedAccessToken, TokenRequestError> {
        if request.grant_type.as_deref() != Some("client_credentials") {
            return Err(match request.grant_type {
                None => TokenRequestError::InvalidRequest("grant_type is required"),
                Some(_) => TokenRequestError::UnsupportedGrantType,
            });
        }
        if request.client_assertion_type.as_deref() != Some(JWT_BEARER_ASSERTION) {
            return Err(TokenRequestError::InvalidClient(ClientAuthError::WrongAssertionType.reason()));
        }
        let assertion =
            request.client_assertion.as_deref().ok_or(TokenRequestError::InvalidClient("assertion_missing"))?;
        let requested_scope = request.scope.as_deref().ok_or(TokenRequestError::InvalidRequest("scope is required"))?;

        let claimed = peek_client_id(assertion).map_err(|e| TokenRequestError::InvalidClient(e.reason()))?;
        let client = self
            .store
            .find_client(claimed.as_str())
            .await?
            .ok_or(TokenRequestError::InvalidClient(ClientAuthError::UnknownClient.reason()))?;
        let inline_jwks: Option<Value> = client.jwks.as_deref().and_then(|text| serde_json::from_str(text).ok());
        let keys = match (&inline_jwks, client.jwks_url.as_deref()) {
            (Some(jwks), _) => ClientKeys::Inline(jwks),
            (None, Some(url)) => ClientKeys::Url(url),
            (None, None) => return Err(TokenRequestError::InvalidClient(ClientAuthError::InvalidJwks.reason())),
        };
        let verified = authenticate_client(
            assertion,
            &claimed,
            keys,
            &self.token_endpoint,
            self.jwks_source.as_ref(),
            OffsetDateTime::now_utc(),
        )
        .await
        .map_err(|e| TokenRequestError::InvalidClient(e.reason()))?;

        let retain_until = Instant::from_micros(
            (verified.retain_until().unix_timestamp_nanos() / 1_000).clamp(0, i128::from(i64::MAX)) as i64,
        );
        if !self.store.record_assertion_jti(claimed.as_str(), verified.jti(), retain_until).await? {
            return Err(TokenRequestError::InvalidClient(ClientAuthError::Replayed.reason()));
        }

        let (organization, role) =
            registered_identity(&client).ok_or(TokenRequestError::InvalidClient("registration_invalid"))?;
        let registered = ScopeSet::parse(&client.scopes)
            .map_err(|_| TokenRequestError::InvalidClient("registration_scopes_invalid"))?;
        let granted = ScopeSet::grant(requested_scope, &registered)
            .map_err(|e| TokenRequestError::InvalidScope(e.to_string()))?;
        let grant = Grant::new(claimed, organization, role, granted);
        self.policy
            .issue(&self.keys, &grant, OffsetDateTime::now_utc())
            .map_err(|e| TokenRequestError::InvalidScope(e.to_string()))
    }

    /// Verifies a bearer token and returns who is calling and what they may do. Our own
    /// tokens are tried first; then, when configured, the external issuer's. Either way the
    /// token's client must still be registered as it says (see [`Registrations`]).
    pub async fn authenticate(&self, bearer: &str) -> Result<(Principal, ScopeSet), AuthenticationError> {
        let now = OffsetDateTime::now_utc();
        let (principal, scopes) = match self.verified.get(bearer, now) {
            Some(verified) => verified,
            None => match (self.policy.verify(&self.keys, bearer, now), &self.external) {
                (Ok(claims), _) => {
                    let principal =
                        Principal::new(claims.client_id().as_str(), claims.organization().clone(), claims.role());
                    let verified = (principal, claims.scope().clone());
                    self.verified.insert(bearer, verified.clone(), claims.expires_at(), now);
                    verified
                }
                (Err(_), Some(external)) => return self.authenticate_external(external, bearer).await,
                (Err(e), None) => return Err(e.into()),
            },
        };
        let read = self.registration(principal.client_id()).await?;
        Ok(Registration::admit(read.registration(), principal, scopes)?)
    }

    /// The client's registration, as of a read at most `token_recheck_secs` old. A database
    /// that cannot be read just now gives no verdict (503), never a pass.
    async fn registration(&self, client_id: &str) -> Result<Arc<RegistrationRead>, AuthenticationError> {
        self.registrations
            .current(client_id, std::time::Instant::now(), || self.store.find_client(client_id))
            .await
            .map_err(|e| match e.is_unavailable() {
                true => AuthenticationError::Unavailable(e),
                false => TokenError::ClientNotRegistered.into(),
            })
    }

    /// An external issuer's token names a client; the organisation and role it claims must be
    /// exactly those of that client's registration (fail closed), and its scopes are narrowed
    /// to the registered ones.
    async fn authenticate_external(
        &self,
        external: &ExternalIssuer,
        bearer: &str,
    ) -> Result<(Principal, ScopeSet), AuthenticationError> {
        let now = OffsetDateTime::now_utc();
        let verify = |freshness| async move {
            let value =
                self.jwks_source.fetch_jwks(&external.jwks_url, freshness).await.map_err(|_| TokenError::UnknownKid)?;
            let jwks = Jwks::from_value(&value).map_err(|_| TokenError::UnknownKid)?;
            verify_external_access_token(&external.policy, &jwks, bearer, now)
        };
        let claims = match verify(Freshness::Cached).await {
            // The issuer may have rotated its keys since we cached them.
            Err(TokenError::UnknownKid) => verify(Freshness::Refresh).await?,
            other => other?,
        };
        let read = self.registration(claims.client_id()).await?;
        let registration = read.registration().ok_or(TokenError::ClientNotRegistered)?;
        if !claims.organization_raw().eq_ignore_ascii_case(registration.organization.as_str()) {
            return Err(TokenError::InvalidClaim("organization").into());
        }
        if claims.role_raw() != registration.role.as_str() {
            return Err(TokenError::InvalidClaim("role").into());
        }
        let principal = Principal::new(claims.client_id(), registration.organization.clone(), registration.role);
        Ok((principal, claims.scope().narrow_to(&registration.scopes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verified_token_is_remembered_until_its_own_expiry_and_no_other_token_matches_it() {
        let cache = VerifiedTokens { entries: Default::default() };
        let now = OffsetDateTime::now_utc();
        let principal = Principal::new("gp-system", OdsCode::parse("GP0001").expect("ods"), Role::Referrer);
        let scopes = ScopeSet::parse("system/*.rs").expect("scopes");
        cache.insert("token-a", (principal.clone(), scopes.clone()), now + time::Duration::seconds(60), now);
        assert_eq!(cache.get("token-a", now), Some((principal, scopes)));
        assert_eq!(cache.get("token-b", now), None);
        assert_eq!(cache.get("token-a", now + time::Duration::seconds(60)), None, "not at or after expiry");
    }

    fn gp_registration() -> ClientRecord {
        ClientRecord {
            client_id: "gp-system".into(),
            organization: "GP0001".into(),
            role: "referrer".into(),
            jwks: None,
            jwks_url: None,
            scopes: "system/*.cruds".into(),
            created_at: Instant::from_micros(0),
        }
    }

    fn gp_principal() -> Principal {
        Principal::new("gp-system", OdsCode::parse("GP0001").expect("ods"), Role::Referrer)
    }

    /// Asks `registrations` for gp-system at `at`, counting the reads it makes in `reads`;
    /// each read finds `stored`. Answers what the registration check then found.
    async fn ask(
        registrations: &Registrations,
        at: std::time::Instant,
        reads: &std::sync::atomic::AtomicUsize,
        stored: Result<Option<ClientRecord>, StoreError>,
    ) -> Result<Option<Registration>, StoreError> {
        let read = registrations
            .current("gp-system", at, || async {
                reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::task::yield_now().await;
                stored
            })
            .await?;
        Ok(read.registration().cloned())
    }

    #[tokio::test]
    async fn a_registration_is_read_once_per_recheck_interval_however_many_requests_ask() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let registrations = Registrations::new(std::time::Duration::from_secs(5));
        let reads = AtomicUsize::new(0);
        let start = std::time::Instant::now();
        let expected = Registration::of(&gp_registration());
        assert!(expected.is_some(), "the registration parses");
        let (a, b) = tokio::join!(
            ask(&registrations, start, &reads, Ok(Some(gp_registration()))),
            ask(&registrations, start, &reads, Ok(Some(gp_registration()))),
        );
        assert_eq!((a.expect("read"), b.expect("read")), (expected.clone(), expected.clone()));
        assert_eq!(reads.load(Ordering::SeqCst), 1, "two requests at once share one read");
        let within = start + std::time::Duration::from_millis(4_999);
        let later = ask(&registrations, within, &reads, Ok(None)).await.expect("read");
        assert_eq!((later, reads.load(Ordering::SeqCst)), (expected, 1), "within the interval the read answers");
        let after = start + std::time::Duration::from_secs(5);
        let removed = ask(&registrations, after, &reads, Ok(None)).await.expect("read");
        assert_eq!((removed, reads.load(Ordering::SeqCst)), (None, 2), "after it the removal is read");
    }

    #[tokio::test]
    async fn a_recheck_interval_of_zero_reads_the_registration_on_every_request() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let registrations = Registrations::new(std::time::Duration::ZERO);
        let reads = AtomicUsize::new(0);
        let now = std::time::Instant::now();
        for _ in 0..3 {
            ask(&registrations, now, &reads, Ok(Some(gp_registration()))).await.expect("read");
        }
        assert_eq!(reads.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_failed_read_is_not_remembered_and_the_next_request_reads_again() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let registrations = Registrations::new(std::time::Duration::from_secs(5));
        let reads = AtomicUsize::new(0);
        let now = std::time::Instant::now();
        let failed = ask(&registrations, now, &reads, Err(StoreError::Unavailable("down".into()))).await;
        assert!(matches!(failed, Err(StoreError::Unavailable(_))), "{failed:?}");
        let found = ask(&registrations, now, &reads, Ok(Some(gp_registration()))).await.expect("read");
        assert!(found.is_some(), "read again, not answered from the failure");
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_registrations_remembered_stay_bounded_when_every_client_is_new() {
        let registrations = Registrations::new(std::time::Duration::from_secs(5));
        let now = std::time::Instant::now();
        for i in 0..REGISTRATIONS_CAPACITY + 500 {
            registrations.read_for(&format!("client-{i}"), now);
        }
        let reads = registrations.reads.lock().expect("lock");
        assert!(reads.len() <= REGISTRATIONS_CAPACITY, "{}", reads.len());
    }

    #[test]
    fn a_token_serves_only_while_its_client_is_registered_with_the_organisation_and_role_it_names() {
        let registered = Registration::of(&gp_registration()).expect("parses");
        let scopes = ScopeSet::parse("system/*.cruds").expect("scopes");
        let admit = |registration: Option<&Registration>| {
            Registration::admit(registration, gp_principal(), scopes.clone()).map_err(|e| e.reason())
        };
        assert_eq!(admit(Some(&registered)), Ok((gp_principal(), scopes.clone())), "registered as it says");
        assert_eq!(admit(None), Err("token_client_not_registered"), "removed");
        let moved = Registration { organization: OdsCode::parse("GP0002").expect("ods"), ..registered.clone() };
        assert_eq!(admit(Some(&moved)), Err("token_invalid_claim"), "moved to another organisation");
        let performer = Registration { role: Role::Performer, ..registered.clone() };
        assert_eq!(admit(Some(&performer)), Err("token_invalid_claim"), "given another role");
        let fewer = Registration { scopes: ScopeSet::parse("system/Patient.rs").expect("scopes"), ..registered };
        let (_, narrowed) = admit(Some(&fewer)).expect("still registered");
        assert_eq!(narrowed.render(), "system/Patient.rs", "scopes taken from the registration leave the token");
        let unparsable = ClientRecord { role: "superuser".into(), ..gp_registration() };
        assert_eq!(Registration::of(&unparsable), None, "a registration that does not parse is none");
    }

    #[test]
    fn failures_past_the_threshold_are_throttled_until_the_window_ends_for_that_client_only() {
        let failures = FailedTokenRequests { windows: Default::default(), limit: DEFAULT_FAILURE_LIMIT };
        let start = std::time::Instant::now();
        for _ in 0..DEFAULT_FAILURE_LIMIT - 1 {
            failures.note("attacked", start);
        }
        assert_eq!(failures.throttled_for("attacked", start), None, "the last failure allowed is still answered");
        failures.note("attacked", start);
        let later = start + std::time::Duration::from_secs(10);
        assert_eq!(
            failures.throttled_for("attacked", later),
            Some(FAILURE_WINDOW - std::time::Duration::from_secs(10))
        );
        assert_eq!(failures.throttled_for("another", later), None, "other clients are not affected");
        assert_eq!(failures.throttled_for("attacked", start + FAILURE_WINDOW), None, "the window ends");
        failures.note("attacked", start + FAILURE_WINDOW);
        assert_eq!(failures.throttled_for("attacked", start + FAILURE_WINDOW), None, "a new window starts afresh");
    }

    #[test]
    fn a_flood_of_invented_client_ids_cannot_grow_the_count_past_its_capacity() {
        let failures = FailedTokenRequests { windows: Default::default(), limit: DEFAULT_FAILURE_LIMIT };
        let now = std::time::Instant::now();
        for i in 0..FAILURE_CLIENTS_CAPACITY + 500 {
            failures.note(&format!("invented-{i}"), now);
        }
        let windows = failures.windows.lock().expect("lock");
        assert!(windows.len() <= FAILURE_CLIENTS_CAPACITY + 1, "{}", windows.len());
    }
}
