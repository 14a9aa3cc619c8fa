//! Access tokens: JWTs per RFC 9068 ("JSON Web Token Profile for OAuth 2.0 Access Tokens"),
//! signed ES384 by the service's own keys ([`SigningKeys`]), or, when the operator runs its own
//! OAuth server, signed by that issuer's JWKS ([`verify_external_access_token`]).
//!
//! Verification order (each failure is a [`TokenError`], answered as 401 with
//! `WWW-Authenticate: Bearer error="invalid_token"`, RFC 6750 section 3.1):
//! 1. shape and size; 2. `typ` is `at+jwt` (RFC 9068 section 4, RFC 8725 section 3.11: this is
//!    what makes a client assertion, `typ: JWT`, useless as an access token); 3. `alg` on the
//!    allow-list; 4. no `crit` or `jku` header; 5. `kid` names a configured key; 6. signature;
//!    7. `iss`, `aud`, `exp`, `nbf`, `iat` (numbers only, leeway at most 60 s), `jti`, `sub`,
//!    `client_id`; 8. `scope`, organisation and role.
//!
//! The scope check (403 `insufficient_scope`) is the caller's, through
//! [`AccessClaims::scope`] and [`ScopeSet::allows`].

use jsonwebtoken::{Algorithm, Header};
use secrecy::SecretString;
use serde_json::{json, Value};
use time::OffsetDateTime;

use super::jwk::{allowed_alg, Jwks, KeySelectError};
use super::jwt::{typ_is, ClaimError, CompactJws, JwsError};
use super::keys::SigningKeys;
use super::principal::{ClientId, OdsCode, Role};
use super::scopes::ScopeSet;
use super::ConfigError;

/// The `typ` header of an access token (RFC 9068 section 2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// The longest access token lifetime the rules allow.
pub const MAX_LIFETIME_SECS: u64 = 300;
/// The largest clock leeway the rules allow.
pub const MAX_LEEWAY_SECS: u64 = 60;
/// Longer bearer values are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The only algorithm our own tokens use.
pub const OWN_ALGORITHMS: [Algorithm; 1] = [Algorithm::ES384];
/// The default allow-list for an external issuer: asymmetric algorithms only (never `HS*`).
pub const EXTERNAL_ALGORITHMS: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

const DEFAULT_LEEWAY_SECS: u64 = 30;
const MAX_JTI_LEN: usize = 256;

/// Why a bearer token was refused. Every variant is a 401 `invalid_token`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("no access token")]
    Missing,
    #[error("the access token is too large")]
    TooLarge,
    #[error("the access token is not a compact JWS")]
    Malformed,
    #[error("the token's typ is not at+jwt")]
    WrongType,
    #[error("the token's alg is not allowed")]
    AlgorithmNotAllowed,
    #[error("the token has a {0} header, which is not accepted")]
    UnsupportedHeader(&'static str),
    #[error("the token has no kid")]
    MissingKid,
    #[error("no configured key has the token's kid")]
    UnknownKid,
    #[error("the key with the token's kid does not fit its alg")]
    KeyDoesNotFit,
    #[error("the key with the token's kid is unusable: {0}")]
    InvalidKey(&'static str),
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has no {0} claim")]
    MissingClaim(&'static str),
    #[error("the token's {0} claim is invalid")]
    InvalidClaim(&'static str),
    #[error("the token's issuer is not the expected one")]
    WrongIssuer,
    #[error("the token's audience does not include this server")]
    WrongAudience,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued in the future")]
    IssuedInFuture,
    #[error("the token's lifetime is longer than allowed")]
    LifetimeTooLong,
    #[error("the token's sub is not its client_id")]
    SubjectMismatch,
    /// The client the token was issued to is no longer registered (`clients remove`), or its
    /// registration no longer parses.
    #[error("the token's client is not registered")]
    ClientNotRegistered,
}

impl TokenError {
    /// A stable short string for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "token_missing",
            Self::TooLarge => "token_too_large",
            Self::Malformed => "token_malformed",
            Self::WrongType => "token_wrong_typ",
            Self::AlgorithmNotAllowed => "token_alg_not_allowed",
            Self::UnsupportedHeader(_) => "token_unsupported_header",
            Self::MissingKid => "token_missing_kid",
            Self::UnknownKid => "token_unknown_kid",
            Self::KeyDoesNotFit => "token_key_does_not_fit",
            Self::InvalidKey(_) => "token_invalid_key",
            Self::BadSignature => "token_bad_signature",
            Self::MissingClaim(_) => "token_missing_claim",
            Self::InvalidClaim(_) => "token_invalid_claim",
            Self::WrongIssuer => "token_wrong_issuer",
            Self::WrongAudience => "token_wrong_audience",
            Self::Expired => "token_expired",
            Self::NotYetValid => "token_not_yet_valid",
            Self::IssuedInFuture => "token_issued_in_future",
            Self::LifetimeTooLong => "token_lifetime_too_long",
            Self::SubjectMismatch => "token_subject_mismatch",
            Self::ClientNotRegistered => "token_client_not_registered",
        }
    }

    /// The RFC 6750 error code for `WWW-Authenticate`: always `invalid_token`.
    pub fn oauth_error(&self) -> &'static str {
        "invalid_token"
    }
}

impl From<JwsError> for TokenError {
    fn from(e: JwsError) -> Self {
        match e {
            JwsError::TooLarge => Self::TooLarge,
            JwsError::Malformed => Self::Malformed,
        }
    }
}

impl From<ClaimError> for TokenError {
    fn from(e: ClaimError) -> Self {
        match e {
            ClaimError::Missing(name) => Self::MissingClaim(name),
            ClaimError::Invalid(name) => Self::InvalidClaim(name),
        }
    }
}

/// Why a token could not be issued (a 500, not a client error).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IssueError {
    #[error("refusing to issue a token with no scope")]
    EmptyScope,
    #[error("signing the access token failed")]
    Signing,
}

impl IssueError {
    /// A stable short string for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::EmptyScope => "issue_empty_scope",
            Self::Signing => "issue_signing_failed",
        }
    }
}

/// What the token endpoint grants: the client and the organisation and role from its
/// registration, and the scope already narrowed by [`ScopeSet::grant`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    client_id: ClientId,
    organization: OdsCode,
    role: Role,
    scope: ScopeSet,
}

impl Grant {
    pub fn new(client_id: ClientId, organization: OdsCode, role: Role, scope: ScopeSet) -> Self {
        Self { client_id, organization, role, scope }
    }

    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }

    pub fn organization(&self) -> &OdsCode {
        &self.organization
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn scope(&self) -> &ScopeSet {
        &self.scope
    }
}

/// A freshly signed access token and what the token response says about it.
#[derive(Debug)]
pub struct IssuedAccessToken {
    access_token: SecretString,
    expires_in: u64,
    scope: ScopeSet,
    jti: String,
}

impl IssuedAccessToken {
    /// The token itself; wrapped so that it cannot be logged by accident.
    pub fn access_token(&self) -> &SecretString {
        &self.access_token
    }

    pub fn expires_in(&self) -> u64 {
        self.expires_in
    }

    pub fn scope(&self) -> &ScopeSet {
        &self.scope
    }

    pub fn jti(&self) -> &str {
        &self.jti
    }

    /// The token response body (RFC 6749 section 5.1, SMART Backend Services "Response"). The
    /// endpoint must send it with `Cache-Control: no-store`.
    pub fn response_body(&self) -> Value {
        use secrecy::ExposeSecret as _;
        json!({
            "access_token": self.access_token.expose_secret(),
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "scope": self.scope.render(),
        })
    }
}

/// The verified contents of one of our own access tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    client_id: ClientId,
    organization: OdsCode,
    role: Role,
    scope: ScopeSet,
    jti: String,
    issued_at: OffsetDateTime,
    expires_at: OffsetDateTime,
}

impl AccessClaims {
    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }

    /// The organisation the client acts for (from its registration, via the token).
    pub fn organization(&self) -> &OdsCode {
        &self.organization
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn scope(&self) -> &ScopeSet {
        &self.scope
    }

    pub fn jti(&self) -> &str {
        &self.jti
    }

    pub fn issued_at(&self) -> OffsetDateTime {
        self.issued_at
    }

    pub fn expires_at(&self) -> OffsetDateTime {
        self.expires_at
    }
}

/// Issuer, audience, lifetime and leeway of our own access tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessTokenPolicy {
    issuer: String,
    audience: String,
    lifetime_secs: u64,
    leeway_secs: u64,
}

impl AccessTokenPolicy {
    /// `issuer`: our `iss` (the server's base URL); `audience`: the FHIR base URL, compared
    /// exactly. Lifetime 300 s and leeway 30 s unless changed.
    pub fn new(issuer: &str, audience: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            issuer: absolute_url(issuer, "access token issuer")?,
            audience: absolute_url(audience, "access token audience (FHIR base URL)")?,
            lifetime_secs: MAX_LIFETIME_SECS,
            leeway_secs: DEFAULT_LEEWAY_SECS,
        })
    }

    /// Token lifetime, 1 to 300 seconds.
    pub fn with_lifetime_secs(mut self, secs: u64) -> Result<Self, ConfigError> {
        if !(1..=MAX_LIFETIME_SECS).contains(&secs) {
            return Err(ConfigError::TokenLifetime { got: secs, max: MAX_LIFETIME_SECS });
        }
        self.lifetime_secs = secs;
        Ok(self)
    }

    /// Clock leeway for `exp`, `nbf` and `iat`, at most 60 seconds.
    pub fn with_leeway_secs(mut self, secs: u64) -> Result<Self, ConfigError> {
        self.leeway_secs = checked_leeway(secs)?;
        Ok(self)
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    pub fn lifetime_secs(&self) -> u64 {
        self.lifetime_secs
    }

    pub fn leeway_secs(&self) -> u64 {
        self.leeway_secs
    }

    /// Signs an access token for `grant` with the active key.
    pub fn issue(
        &self,
        keys: &SigningKeys,
        grant: &Grant,
        now: OffsetDateTime,
    ) -> Result<IssuedAccessToken, IssueError> {
        if grant.scope.is_empty() {
            return Err(IssueError::EmptyScope);
        }
        let key = keys.active();
        let issued_at = now.unix_timestamp();
        let jti = uuid::Uuid::new_v4().to_string();
        let mut header = Header::new(Algorithm::ES384);
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        header.kid = Some(key.kid().to_owned());
        let claims = json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": grant.client_id.as_str(),
            "client_id": grant.client_id.as_str(),
            "iat": issued_at,
            "nbf": issued_at,
            "exp": issued_at.saturating_add(secs_i64(self.lifetime_secs)),
            "jti": jti,
            "scope": grant.scope.render(),
            "organization": grant.organization.as_str(),
            "role": grant.role.as_str(),
        });
        let token = jsonwebtoken::encode(&header, &claims, key.encoding_key()).map_err(|_| IssueError::Signing)?;
        Ok(IssuedAccessToken {
            access_token: SecretString::from(token),
            expires_in: self.lifetime_secs,
            scope: grant.scope.clone(),
            jti,
        })
    }

    /// Verifies one of our own access tokens (see the module documentation for the order).
    pub fn verify(&self, keys: &SigningKeys, token: &str, now: OffsetDateTime) -> Result<AccessClaims, TokenError> {
        let jws = parse_access_token(token)?;
        let (kid, alg) = checked_header(&jws, &OWN_ALGORITHMS)?;
        let key = keys.find(kid).ok_or(TokenError::UnknownKid)?;
        if !jws.signature_is_valid(key.decoding_key(), alg) {
            return Err(TokenError::BadSignature);
        }
        let times = check_registered_claims(&jws, &self.issuer, &self.audience, self.leeway_secs, now)?;
        // We never issue longer-lived tokens; one that claims to be is not ours to trust.
        if times.expires_at.saturating_sub(times.issued_at) > secs_i64(MAX_LIFETIME_SECS) {
            return Err(TokenError::LifetimeTooLong);
        }
        let sub = jws.required_string("sub")?;
        let client_id = jws.required_string("client_id")?;
        if sub != client_id {
            return Err(TokenError::SubjectMismatch);
        }
        Ok(AccessClaims {
            client_id: ClientId::parse(client_id).map_err(|_| TokenError::InvalidClaim("client_id"))?,
            organization: OdsCode::parse(jws.required_string("organization")?)
                .map_err(|_| TokenError::InvalidClaim("organization"))?,
            role: jws.required_string("role")?.parse().map_err(|_| TokenError::InvalidClaim("role"))?,
            scope: ScopeSet::parse(jws.required_string("scope")?).map_err(|_| TokenError::InvalidClaim("scope"))?,
            jti: times.jti,
            issued_at: to_datetime(times.issued_at, "iat")?,
            expires_at: to_datetime(times.expires_at, "exp")?,
        })
    }
}

/// An operator's OAuth server whose access tokens we accept instead of (or as well as) ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalIssuerPolicy {
    issuer: String,
    audience: String,
    algorithms: Vec<Algorithm>,
    organization_claim: String,
    role_claim: String,
    leeway_secs: u64,
}

impl ExternalIssuerPolicy {
    /// `organization_claim` and `role_claim` name top-level string claims in that issuer's
    /// tokens; their values are returned raw for the caller to map against the registry.
    pub fn new(issuer: &str, audience: &str, organization_claim: &str, role_claim: &str) -> Result<Self, ConfigError> {
        if organization_claim.is_empty() {
            return Err(ConfigError::Empty { what: "organisation claim name" });
        }
        if role_claim.is_empty() {
            return Err(ConfigError::Empty { what: "role claim name" });
        }
        Ok(Self {
            issuer: absolute_url(issuer, "external issuer")?,
            audience: absolute_url(audience, "access token audience (FHIR base URL)")?,
            algorithms: EXTERNAL_ALGORITHMS.to_vec(),
            organization_claim: organization_claim.to_owned(),
            role_claim: role_claim.to_owned(),
            leeway_secs: DEFAULT_LEEWAY_SECS,
        })
    }

    /// Narrows the algorithm allow-list; symmetric and EdDSA algorithms are refused.
    pub fn with_algorithms(mut self, algorithms: &[Algorithm]) -> Result<Self, ConfigError> {
        if let Some(bad) = algorithms.iter().find(|a| !EXTERNAL_ALGORITHMS.contains(a)) {
            return Err(ConfigError::Algorithm(*bad));
        }
        if algorithms.is_empty() {
            return Err(ConfigError::Empty { what: "algorithm allow-list" });
        }
        self.algorithms = algorithms.to_vec();
        Ok(self)
    }

    /// Clock leeway, at most 60 seconds.
    pub fn with_leeway_secs(mut self, secs: u64) -> Result<Self, ConfigError> {
        self.leeway_secs = checked_leeway(secs)?;
        Ok(self)
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }
}

/// The verified contents of an external issuer's access token. Organisation and role are the
/// raw claim values: the caller maps them to a registered tenant or fails closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalAccessClaims {
    subject: String,
    client_id: String,
    organization: String,
    role: String,
    scope: ScopeSet,
    jti: String,
    expires_at: OffsetDateTime,
}

impl ExternalAccessClaims {
    pub fn subject(&self) -> &str {
        &self.subject
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn organization_raw(&self) -> &str {
        &self.organization
    }

    pub fn role_raw(&self) -> &str {
        &self.role
    }

    /// The supported system scopes of the `scope` claim (others are dropped; absent is empty).
    pub fn scope(&self) -> &ScopeSet {
        &self.scope
    }

    pub fn jti(&self) -> &str {
        &self.jti
    }

    pub fn expires_at(&self) -> OffsetDateTime {
        self.expires_at
    }
}

/// Verifies an access token from an external issuer against that issuer's JWKS (fetched by the
/// caller, for example through [`super::JwksSource`]). The same header and time rules as for our
/// own tokens apply; `sub`, `client_id`, `iat` and `jti` are required as RFC 9068 section 2.2
/// says.
pub fn verify_external_access_token(
    policy: &ExternalIssuerPolicy,
    jwks: &Jwks,
    token: &str,
    now: OffsetDateTime,
) -> Result<ExternalAccessClaims, TokenError> {
    let jws = parse_access_token(token)?;
    let (kid, alg) = checked_header(&jws, &policy.algorithms)?;
    let key = jwks.select(kid, alg).map_err(|e| match e {
        KeySelectError::UnknownKid => TokenError::UnknownKid,
        KeySelectError::NoKeyFitsAlgorithm | KeySelectError::AmbiguousKid => TokenError::KeyDoesNotFit,
        KeySelectError::InvalidKey(why) => TokenError::InvalidKey(why),
    })?;
    if !jws.signature_is_valid(&key, alg) {
        return Err(TokenError::BadSignature);
    }
    let times = check_registered_claims(&jws, &policy.issuer, &policy.audience, policy.leeway_secs, now)?;
    let claim = |name: &str| match jws.claims.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(()),
        None => Err(()),
    };
    Ok(ExternalAccessClaims {
        subject: jws.required_string("sub")?.to_owned(),
        client_id: jws.required_string("client_id")?.to_owned(),
        organization: claim(&policy.organization_claim).map_err(|()| TokenError::MissingClaim("organization"))?,
        role: claim(&policy.role_claim).map_err(|()| TokenError::MissingClaim("role"))?,
        scope: ScopeSet::parse_lenient(jws.string_claim("scope")?.unwrap_or_default()),
        jti: times.jti,
        expires_at: to_datetime(times.expires_at, "exp")?,
    })
}

/// The token in an `Authorization: Bearer <token>` header value (RFC 6750 section 2.1; the
/// scheme name is case-insensitive, RFC 9110 section 11.1). No header is `Missing`; another
/// scheme or an empty token is `Malformed`. Tokens in query strings or form bodies are not
/// accepted (RFC 6750 sections 2.2 and 2.3 are optional and leak tokens into logs).
pub fn bearer_token(authorization: Option<&str>) -> Result<&str, TokenError> {
    let value = authorization.ok_or(TokenError::Missing)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(TokenError::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(TokenError::Malformed);
    }
    Ok(token)
}

fn parse_access_token(token: &str) -> Result<CompactJws<'_>, TokenError> {
    if token.trim().is_empty() {
        return Err(TokenError::Missing);
    }
    Ok(CompactJws::parse(token, MAX_TOKEN_BYTES)?)
}

/// Header rules shared by our own and external tokens; returns the `kid` and the algorithm.
fn checked_header<'j>(jws: &'j CompactJws<'_>, allowed: &[Algorithm]) -> Result<(&'j str, Algorithm), TokenError> {
    let header = &jws.header;
    if !header.typ.as_deref().is_some_and(|t| typ_is(t, ACCESS_TOKEN_TYP)) {
        return Err(TokenError::WrongType);
    }
    let alg = allowed_alg(&header.alg, allowed).ok_or(TokenError::AlgorithmNotAllowed)?;
    if header.has_crit {
        return Err(TokenError::UnsupportedHeader("crit"));
    }
    // Keys come only from configuration: a token naming its own key URL is refused outright
    // (RFC 8725 section 3.10 on not trusting received key references).
    if header.jku.is_some() {
        return Err(TokenError::UnsupportedHeader("jku"));
    }
    let kid = header.kid.as_deref().filter(|k| !k.is_empty()).ok_or(TokenError::MissingKid)?;
    Ok((kid, alg))
}

struct RegisteredTimes {
    issued_at: i64,
    expires_at: i64,
    jti: String,
}

/// `iss`, `aud`, `exp`, `nbf`, `iat`, `jti` (RFC 7519 section 4.1, RFC 9068 section 4).
fn check_registered_claims(
    jws: &CompactJws<'_>,
    issuer: &str,
    audience: &str,
    leeway_secs: u64,
    now: OffsetDateTime,
) -> Result<RegisteredTimes, TokenError> {
    let now = now.unix_timestamp();
    let leeway = secs_i64(leeway_secs);
    if jws.required_string("iss")? != issuer {
        return Err(TokenError::WrongIssuer);
    }
    if !jws.audience_contains(audience)? {
        return Err(TokenError::WrongAudience);
    }
    let exp = jws.required_numeric_date("exp")?;
    let nbf = jws.required_numeric_date("nbf")?;
    let iat = jws.required_numeric_date("iat")?;
    if now >= exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    if nbf > now.saturating_add(leeway) {
        return Err(TokenError::NotYetValid);
    }
    if iat > now.saturating_add(leeway) {
        return Err(TokenError::IssuedInFuture);
    }
    let jti = jws.required_string("jti")?;
    if jti.len() > MAX_JTI_LEN {
        return Err(TokenError::InvalidClaim("jti"));
    }
    Ok(RegisteredTimes { issued_at: iat, expires_at: exp, jti: jti.to_owned() })
}

fn to_datetime(secs: i64, claim: &'static str) -> Result<OffsetDateTime, TokenError> {
    OffsetDateTime::from_unix_timestamp(secs).map_err(|_| TokenError::InvalidClaim(claim))
}

fn secs_i64(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX)
}

fn checked_leeway(secs: u64) -> Result<u64, ConfigError> {
    if secs > MAX_LEEWAY_SECS {
        return Err(ConfigError::Leeway { got: secs, max: MAX_LEEWAY_SECS });
    }
    Ok(secs)
}

/// An absolute http(s) URL without credentials or fragment, kept as written: `iss` and `aud`
/// are compared as exact strings (RFC 7519 section 4.1.1).
pub(crate) fn absolute_url(value: &str, what: &'static str) -> Result<String, ConfigError> {
    let parsed = url::Url::parse(value).map_err(|_| ConfigError::NotAnAbsoluteUrl { what })?;
    let ok = matches!(parsed.scheme(), "https" | "http")
        && parsed.host().is_some()
        && parsed.username().is_empty()
        && parsed.password().is_none()
        && parsed.fragment().is_none();
    if !ok {
        return Err(ConfigError::NotAnAbsoluteUrl { what });
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::super::jwt::testing::{replace_payload, sign_raw, tamper_signature, unsigned};
    use super::super::keys::SigningKey;
    use super::*;
    use jsonwebtoken::EncodingKey;
    use secrecy::ExposeSecret as _;

    const ISSUER: &str = "https://linkbridge.example.nhs.uk";
    const FHIR_BASE: &str = "https://linkbridge.example.nhs.uk/fhir";
    const NOW: i64 = 1_750_000_000;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(NOW).unwrap_or_else(|e| panic!("now: {e}"))
    }

    fn at(offset: i64) -> OffsetDateTime {
        now() + time::Duration::seconds(offset)
    }

    fn policy() -> AccessTokenPolicy {
        AccessTokenPolicy::new(ISSUER, FHIR_BASE).unwrap_or_else(|e| panic!("policy: {e}"))
    }

    fn new_key() -> SigningKey {
        SigningKey::generate().unwrap_or_else(|e| panic!("generate: {e}"))
    }

    fn keys() -> SigningKeys {
        SigningKeys::new(new_key(), vec![]).unwrap_or_else(|e| panic!("keys: {e}"))
    }

    fn grant() -> Grant {
        Grant::new(
            ClientId::parse("gp-a81001").unwrap_or_else(|e| panic!("client id: {e}")),
            OdsCode::parse("A81001").unwrap_or_else(|e| panic!("ods: {e}")),
            Role::Referrer,
            ScopeSet::parse("system/Task.cruds system/ServiceRequest.crs").unwrap_or_else(|e| panic!("scope: {e}")),
        )
    }

    fn issue(keys: &SigningKeys) -> String {
        policy()
            .issue(keys, &grant(), now())
            .unwrap_or_else(|e| panic!("issue: {e}"))
            .access_token()
            .expose_secret()
            .to_owned()
    }

    /// The claims `issue` would write, for tests that sign variations by hand.
    fn claims() -> Value {
        json!({
            "iss": ISSUER, "aud": FHIR_BASE, "sub": "gp-a81001", "client_id": "gp-a81001",
            "iat": NOW, "nbf": NOW, "exp": NOW + 300, "jti": "0d6f0c36-5a43-4d3c-9b55-6a1b2a7b7c11",
            "scope": "system/Task.rs", "organization": "A81001", "role": "referrer",
        })
    }

    fn header(keys: &SigningKeys) -> Value {
        json!({"alg": "ES384", "typ": "at+jwt", "kid": keys.active().kid()})
    }

    fn with(value: &Value, changes: &[(&str, Value)]) -> Value {
        let mut value = value.clone();
        for (name, new) in changes {
            value[*name] = new.clone();
        }
        value
    }

    fn without(value: &Value, name: &str) -> Value {
        let mut value = value.clone();
        if let Some(map) = value.as_object_mut() {
            map.remove(name);
        }
        value
    }

    fn sign(keys: &SigningKeys, header: &Value, claims: &Value) -> String {
        sign_raw(header, claims, keys.active().encoding_key(), Algorithm::ES384)
    }

    #[test]
    fn an_issued_token_verifies_and_carries_the_grant() {
        let keys = keys();
        let issued = policy().issue(&keys, &grant(), now()).unwrap_or_else(|e| panic!("issue: {e}"));
        assert_eq!(issued.expires_in(), 300, "default lifetime is the maximum, 300 s");
        let body = issued.response_body();
        assert_eq!(body["token_type"], "bearer", "token_type");
        assert_eq!(body["scope"], "system/ServiceRequest.crs system/Task.cruds", "scope");

        let token = issued.access_token().expose_secret();
        let header = jsonwebtoken::decode_header(token).unwrap_or_else(|e| panic!("header: {e}"));
        assert_eq!(header.typ.as_deref(), Some("at+jwt"), "explicit typing");
        assert_eq!(header.alg, Algorithm::ES384, "alg");
        assert_eq!(header.kid.as_deref(), Some(keys.active().kid()), "kid");

        let verified = policy().verify(&keys, token, at(10)).unwrap_or_else(|e| panic!("verify: {e}"));
        assert_eq!(verified.client_id().as_str(), "gp-a81001", "client_id");
        assert_eq!(verified.organization().as_str(), "A81001", "organization");
        assert_eq!(verified.role(), Role::Referrer, "role");
        assert_eq!(verified.scope(), grant().scope(), "scope");
        assert_eq!(verified.jti(), issued.jti(), "jti");
        assert_eq!(verified.expires_at(), at(300), "exp");
        assert_eq!(verified.issued_at(), now(), "iat");

        let unverified: Value = jsonwebtoken::dangerous::insecure_decode::<Value>(token)
            .map(|d| d.claims)
            .unwrap_or_else(|e| panic!("claims: {e}"));
        for claim in ["iss", "aud", "sub", "client_id", "exp", "iat", "nbf", "jti", "scope", "organization", "role"] {
            assert!(unverified.get(claim).is_some(), "RFC 9068 claim {claim} is present");
        }
        assert!(uuid::Uuid::parse_str(verified.jti()).is_ok(), "jti is a uuid");
    }

    #[test]
    fn tokens_that_must_be_refused_are_refused_with_a_precise_reason() {
        let keys = keys();
        let good = issue(&keys);
        let other_keys = self::keys();
        let c = claims();
        let h = header(&keys);
        let public_point = {
            let jwk = keys.active().public_jwk();
            format!("{}{}", jwk["x"].as_str().unwrap_or_default(), jwk["y"].as_str().unwrap_or_default())
        };
        let hs256 = |secret: &[u8]| {
            sign_raw(
                &json!({"alg": "HS256", "typ": "at+jwt", "kid": keys.active().kid()}),
                &c,
                &EncodingKey::from_secret(secret),
                Algorithm::HS256,
            )
        };
        let cases: Vec<(&str, String, TokenError)> = vec![
            ("no token", String::new(), TokenError::Missing),
            ("blank token", "   ".into(), TokenError::Missing),
            ("not a jwt", "hello".into(), TokenError::Malformed),
            ("garbage segments", "a.b.c".into(), TokenError::Malformed),
            ("oversized", "a".repeat(MAX_TOKEN_BYTES + 1), TokenError::TooLarge),
            ("tampered signature", tamper_signature(&good), TokenError::BadSignature),
            (
                "tampered payload",
                replace_payload(&good, &with(&c, &[("role", json!("operator"))])),
                TokenError::BadSignature,
            ),
            ("alg none", unsigned(&with(&h, &[("alg", json!("none"))]), &c), TokenError::AlgorithmNotAllowed),
            (
                "alg none, signature kept",
                format!(
                    "{}{}",
                    unsigned(&with(&h, &[("alg", json!("none"))]), &c),
                    good.rsplit('.').next().unwrap_or_default()
                ),
                TokenError::AlgorithmNotAllowed,
            ),
            (
                "HS256 keyed with the public JWK",
                hs256(keys.active().public_jwk().to_string().as_bytes()),
                TokenError::AlgorithmNotAllowed,
            ),
            ("HS256 keyed with the public point", hs256(public_point.as_bytes()), TokenError::AlgorithmNotAllowed),
            ("RS384 header", sign(&keys, &with(&h, &[("alg", json!("RS384"))]), &c), TokenError::AlgorithmNotAllowed),
            ("client assertion typ JWT", sign(&keys, &with(&h, &[("typ", json!("JWT"))]), &c), TokenError::WrongType),
            ("no typ", sign(&keys, &without(&h, "typ"), &c), TokenError::WrongType),
            ("no kid", sign(&keys, &without(&h, "kid"), &c), TokenError::MissingKid),
            ("unknown kid", sign(&keys, &with(&h, &[("kid", json!("../../dev/null"))]), &c), TokenError::UnknownKid),
            (
                "signed by a stranger's key",
                sign_raw(&header(&other_keys), &c, other_keys.active().encoding_key(), Algorithm::ES384),
                TokenError::UnknownKid,
            ),
            (
                "stranger's key under our kid",
                sign_raw(&h, &c, other_keys.active().encoding_key(), Algorithm::ES384),
                TokenError::BadSignature,
            ),
            (
                "jku header",
                sign(&keys, &with(&h, &[("jku", json!("https://evil.example/jwks"))]), &c),
                TokenError::UnsupportedHeader("jku"),
            ),
            (
                "crit header",
                sign(&keys, &with(&h, &[("crit", json!(["exp"]))]), &c),
                TokenError::UnsupportedHeader("crit"),
            ),
            (
                "wrong issuer",
                sign(&keys, &h, &with(&c, &[("iss", json!("https://evil.example"))])),
                TokenError::WrongIssuer,
            ),
            (
                "wrong audience",
                sign(&keys, &h, &with(&c, &[("aud", json!("https://other.example/fhir"))])),
                TokenError::WrongAudience,
            ),
            (
                "audience with trailing slash",
                sign(&keys, &h, &with(&c, &[("aud", json!(format!("{FHIR_BASE}/")))])),
                TokenError::WrongAudience,
            ),
            ("no audience", sign(&keys, &h, &without(&c, "aud")), TokenError::MissingClaim("aud")),
            ("no issuer", sign(&keys, &h, &without(&c, "iss")), TokenError::MissingClaim("iss")),
            ("no exp", sign(&keys, &h, &without(&c, "exp")), TokenError::MissingClaim("exp")),
            ("no nbf", sign(&keys, &h, &without(&c, "nbf")), TokenError::MissingClaim("nbf")),
            ("no iat", sign(&keys, &h, &without(&c, "iat")), TokenError::MissingClaim("iat")),
            ("no jti", sign(&keys, &h, &without(&c, "jti")), TokenError::MissingClaim("jti")),
            (
                "exp as a string",
                sign(&keys, &h, &with(&c, &[("exp", json!((NOW + 300).to_string()))])),
                TokenError::InvalidClaim("exp"),
            ),
            (
                "nbf as a string",
                sign(&keys, &h, &with(&c, &[("nbf", json!(NOW.to_string()))])),
                TokenError::InvalidClaim("nbf"),
            ),
            ("expired", sign(&keys, &h, &with(&c, &[("exp", json!(NOW - 31))])), TokenError::Expired),
            ("nbf in the future", sign(&keys, &h, &with(&c, &[("nbf", json!(NOW + 31))])), TokenError::NotYetValid),
            (
                "iat in the future",
                sign(&keys, &h, &with(&c, &[("iat", json!(NOW + 31)), ("exp", json!(NOW + 300))])),
                TokenError::IssuedInFuture,
            ),
            (
                "lifetime over 300 s",
                sign(&keys, &h, &with(&c, &[("exp", json!(NOW + 301))])),
                TokenError::LifetimeTooLong,
            ),
            (
                "sub is not client_id",
                sign(&keys, &h, &with(&c, &[("sub", json!("someone-else"))])),
                TokenError::SubjectMismatch,
            ),
            (
                "invalid scope",
                sign(&keys, &h, &with(&c, &[("scope", json!("system/Task.sr"))])),
                TokenError::InvalidClaim("scope"),
            ),
            ("invalid role", sign(&keys, &h, &with(&c, &[("role", json!("admin"))])), TokenError::InvalidClaim("role")),
            (
                "invalid organisation",
                sign(&keys, &h, &with(&c, &[("organization", json!("../x"))])),
                TokenError::InvalidClaim("organization"),
            ),
            (
                "no organisation",
                sign(&keys, &h, &without(&c, "organization")),
                TokenError::MissingClaim("organization"),
            ),
        ];
        for (name, token, expected) in cases {
            assert_eq!(policy().verify(&keys, &token, now()).err(), Some(expected), "{name}");
        }
        assert!(
            policy().verify(&keys, &sign(&keys, &h, &c), now()).is_ok(),
            "the unmodified hand-built token verifies, so each case fails for its own reason"
        );
    }

    #[test]
    fn the_leeway_applies_to_exp_nbf_and_iat() {
        let keys = keys();
        let h = header(&keys);
        let c = claims();
        let cases: &[(&str, Value, i64, Result<(), TokenError>)] = &[
            ("just inside exp + leeway", c.clone(), 300 + 29, Ok(())),
            ("at exp + leeway", c.clone(), 300 + 30, Err(TokenError::Expired)),
            ("nbf within leeway", with(&c, &[("nbf", json!(NOW + 30))]), 0, Ok(())),
            ("array audience containing us", with(&c, &[("aud", json!(["https://x.example", FHIR_BASE]))]), 0, Ok(())),
        ];
        for (name, claims, offset, expected) in cases {
            let result = policy().verify(&keys, &sign(&keys, &h, claims), at(*offset)).map(|_| ());
            assert_eq!(result, *expected, "{name}");
        }
        let long_typ = sign(&keys, &with(&h, &[("typ", json!("application/at+jwt"))]), &c);
        assert!(policy().verify(&keys, &long_typ, now()).is_ok(), "RFC 9068 allows the full media type");
    }

    #[test]
    fn tokens_signed_by_a_previous_key_verify_until_it_is_removed() {
        let old = new_key();
        let old_kid = old.kid().to_owned();
        let old_set = SigningKeys::new(old, vec![]).unwrap_or_else(|e| panic!("keys: {e}"));
        let token = issue(&old_set);

        let old_again = old_set.active();
        let pem = old_again.to_pkcs8_pem().unwrap_or_else(|e| panic!("pem: {e}"));
        let reloaded_old = SigningKey::from_pkcs8_pem(pem.expose_secret()).unwrap_or_else(|e| panic!("pem: {e}"));
        let rotated = SigningKeys::new(new_key(), vec![reloaded_old]).unwrap_or_else(|e| panic!("keys: {e}"));
        assert_ne!(rotated.active().kid(), old_kid, "a new key is active");
        assert!(policy().verify(&rotated, &token, now()).is_ok(), "the old key still verifies");
        let new_token = issue(&rotated);
        assert!(new_token.contains('.'), "issued with the new key");
        assert!(policy().verify(&rotated, &new_token, now()).is_ok(), "the new key verifies");

        let pruned = SigningKeys::new(new_key(), vec![]).unwrap_or_else(|e| panic!("keys: {e}"));
        assert_eq!(policy().verify(&pruned, &token, now()).err(), Some(TokenError::UnknownKid), "removed key");
    }

    #[test]
    fn a_client_assertion_is_not_an_access_token() {
        // A real RS384 client assertion, as a client would send to the token endpoint.
        let rsa = EncodingKey::from_rsa_pem(include_bytes!("../../tests/fixtures/keys/rsa-client-private.pem"))
            .unwrap_or_else(|e| panic!("rsa: {e}"));
        let assertion = sign_raw(
            &json!({"alg": "RS384", "typ": "JWT", "kid": "rsa-client-1"}),
            &json!({"iss": "gp-a81001", "sub": "gp-a81001", "aud": format!("{ISSUER}/token"), "exp": NOW + 60, "jti": "x"}),
            &rsa,
            Algorithm::RS384,
        );
        assert_eq!(policy().verify(&keys(), &assertion, now()).err(), Some(TokenError::WrongType), "typ JWT");
        let jwks = Jwks::from_value(
            &serde_json::from_str::<Value>(include_str!("../../tests/fixtures/keys/rsa-client-jwks.json"))
                .unwrap_or_default(),
        )
        .unwrap_or_else(|e| panic!("jwks: {e}"));
        let external = external_policy();
        assert_eq!(
            verify_external_access_token(&external, &jwks, &assertion, now()).err(),
            Some(TokenError::WrongType),
            "even when the signing key is trusted"
        );
    }

    #[test]
    fn policy_bounds_follow_the_rules() {
        assert!(policy().with_lifetime_secs(300).is_ok(), "300 s is allowed");
        assert_eq!(
            policy().with_lifetime_secs(301).err(),
            Some(ConfigError::TokenLifetime { got: 301, max: 300 }),
            "over 300 s is refused"
        );
        assert!(policy().with_lifetime_secs(0).is_err(), "zero lifetime is refused");
        assert!(policy().with_leeway_secs(60).is_ok(), "60 s leeway is allowed");
        assert!(policy().with_leeway_secs(61).is_err(), "over 60 s leeway is refused");
        for bad in ["", "linkbridge", "ftp://x.example", "https://user:pw@x.example", "https://x.example/#f"] {
            assert!(AccessTokenPolicy::new(bad, FHIR_BASE).is_err(), "issuer {bad:?} is refused");
        }
        assert!(
            AccessTokenPolicy::new("http://127.0.0.1:8080", "http://127.0.0.1:8080/fhir").is_ok(),
            "plain http is allowed for local runs"
        );
        let short = policy().with_lifetime_secs(60).unwrap_or_else(|e| panic!("policy: {e}"));
        let issued = short.issue(&keys(), &grant(), now()).unwrap_or_else(|e| panic!("issue: {e}"));
        assert_eq!(issued.expires_in(), 60, "configured lifetime is used");
        let empty = Grant::new(grant().client_id, grant().organization, Role::Performer, ScopeSet::empty());
        assert_eq!(policy().issue(&keys(), &empty, now()).err(), Some(IssueError::EmptyScope), "no empty grants");
    }

    #[test]
    fn bearer_tokens_are_taken_only_from_a_bearer_authorization_header() {
        let cases: &[(Option<&str>, Result<&str, TokenError>)] = &[
            (Some("Bearer abc.def.ghi"), Ok("abc.def.ghi")),
            (Some("bearer abc.def.ghi"), Ok("abc.def.ghi")),
            (Some("BEARER   abc.def.ghi  "), Ok("abc.def.ghi")),
            (None, Err(TokenError::Missing)),
            (Some(""), Err(TokenError::Malformed)),
            (Some("Bearer"), Err(TokenError::Malformed)),
            (Some("Bearer "), Err(TokenError::Malformed)),
            (Some("Basic dXNlcjpwdw=="), Err(TokenError::Malformed)),
            (Some("Bearer a b"), Err(TokenError::Malformed)),
        ];
        for (header, expected) in cases {
            assert_eq!(bearer_token(*header), *expected, "Authorization {header:?}");
        }
    }

    fn external_policy() -> ExternalIssuerPolicy {
        ExternalIssuerPolicy::new("https://login.operator.example", FHIR_BASE, "ods_code", "linkbridge_role")
            .unwrap_or_else(|e| panic!("external policy: {e}"))
    }

    #[test]
    fn external_issuer_tokens_verify_against_its_jwks_and_return_raw_tenant_claims() {
        let ec_key = EncodingKey::from_ec_pem(include_bytes!("../../tests/fixtures/keys/ec-p384-client-private.pem"))
            .unwrap_or_else(|e| panic!("ec: {e}"));
        let jwks_value: Value = serde_json::from_str(include_str!("../../tests/fixtures/keys/client-jwks.json"))
            .unwrap_or_else(|e| panic!("jwks: {e}"));
        let jwks = Jwks::from_value(&jwks_value).unwrap_or_else(|e| panic!("jwks: {e}"));
        let h = json!({"alg": "ES384", "typ": "at+jwt", "kid": "ec-p384-client-1"});
        let c = json!({
            "iss": "https://login.operator.example", "aud": [FHIR_BASE], "sub": "svc-1", "client_id": "svc-1",
            "iat": NOW, "nbf": NOW, "exp": NOW + 3600, "jti": "j-1",
            "scope": "openid system/Task.rs", "ods_code": "A81001", "linkbridge_role": "referrer",
        });
        let sign_ec = |header: &Value, claims: &Value| sign_raw(header, claims, &ec_key, Algorithm::ES384);
        let verified = verify_external_access_token(&external_policy(), &jwks, &sign_ec(&h, &c), now())
            .unwrap_or_else(|e| panic!("verify: {e}"));
        assert_eq!(verified.organization_raw(), "A81001", "organisation from the configured claim");
        assert_eq!(verified.role_raw(), "referrer", "role from the configured claim");
        assert_eq!(verified.scope().render(), "system/Task.rs", "non-system scopes are dropped");
        assert_eq!(verified.client_id(), "svc-1", "client_id");

        let rsa_jwk_public = jwks_value["keys"][0].to_string();
        let cases: Vec<(&str, String, TokenError)> = vec![
            ("wrong issuer", sign_ec(&h, &with(&c, &[("iss", json!(ISSUER))])), TokenError::WrongIssuer),
            (
                "missing organisation claim",
                sign_ec(&h, &without(&c, "ods_code")),
                TokenError::MissingClaim("organization"),
            ),
            (
                "role claim not a string",
                sign_ec(&h, &with(&c, &[("linkbridge_role", json!(["referrer"]))])),
                TokenError::MissingClaim("role"),
            ),
            (
                "kid of a key that does not fit",
                sign_ec(&with(&h, &[("kid", json!("rsa-client-1"))]), &c),
                TokenError::KeyDoesNotFit,
            ),
            (
                "HS256 keyed with the published RSA key",
                sign_raw(
                    &json!({"alg": "HS256", "typ": "at+jwt", "kid": "rsa-client-1"}),
                    &c,
                    &EncodingKey::from_secret(rsa_jwk_public.as_bytes()),
                    Algorithm::HS256,
                ),
                TokenError::AlgorithmNotAllowed,
            ),
            ("no nbf", sign_ec(&h, &without(&c, "nbf")), TokenError::MissingClaim("nbf")),
            ("typ JWT", sign_ec(&with(&h, &[("typ", json!("JWT"))]), &c), TokenError::WrongType),
        ];
        for (name, token, expected) in cases {
            assert_eq!(
                verify_external_access_token(&external_policy(), &jwks, &token, now()).err(),
                Some(expected),
                "{name}"
            );
        }
        assert!(
            external_policy().with_algorithms(&[Algorithm::HS256]).is_err(),
            "symmetric algorithms cannot be configured"
        );
    }
}
