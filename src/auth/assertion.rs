//! Client authentication at the token endpoint with `private_key_jwt` (RFC 7523 section 3,
//! SMART App Launch 2.x Backend Services "Authenticating to the token endpoint").
//!
//! Checks, in order (any failure is [`ClientAuthError`], rendered `400 {"error":"invalid_client"}`):
//! 1. size and compact-JWS shape;
//! 2. header: `alg` in [`ASSERTION_ALGORITHMS`]; `typ`, if present, is `JWT` (an `at+jwt`
//!    access token is not an assertion); no `crit`; `kid` present (an opaque lookup key: it is
//!    compared with the JWKS `kid`s and never used as a path or in SQL); `jku`, if present,
//!    equals the registered JWKS URL exactly, checked before anything is fetched;
//! 3. claims: `iss` = `sub` = the registered client_id; `aud` is (or, as an array, contains) the
//!    exact token endpoint URL; `exp` present, a number, not expired (30 s leeway) and at most
//!    300 s ahead (strict, as SMART says); `nbf`/`iat`, if present, numbers not in the future;
//!    `jti` present;
//! 4. exactly one JWK has the `kid` and fits the `alg` (`kty`, `crv`, and the JWK's own `alg`,
//!    `use`, `key_ops`), and it is a public key of adequate size;
//! 5. the signature.
//!
//! Replay (RFC 7523 section 3 item 7) is the caller's last step, in the database: insert
//! `(iss, jti, exp)` under a unique key, keep the row until [`VerifiedAssertion::retain_until`];
//! zero rows inserted is [`ClientAuthError::Replayed`].
//!
//! Algorithms: RS384 and ES384 are what SMART requires servers to support, RS512 what NHS
//! England's platform uses. RS256 and ES256 are not accepted: SMART does not ask for them and
//! every algorithm accepted is one more the clients' keys can be confused across; adding one is
//! a change to [`ASSERTION_ALGORITHMS`] and to `token_endpoint_auth_signing_alg_values_supported`.

use jsonwebtoken::Algorithm;
use serde_json::Value;
use time::OffsetDateTime;

use super::jwk::{allowed_alg, Jwks, KeySelectError};
use super::jwks_fetch::{Freshness, JwksFetchError, JwksSource};
use super::jwt::{typ_is, ClaimError, CompactJws, JwsError};
use super::principal::ClientId;

/// The `client_assertion_type` form value the token endpoint must require (RFC 7523 section 2.2).
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Accepted client assertion algorithms, also what smart-configuration advertises.
pub const ASSERTION_ALGORITHMS: [Algorithm; 3] = [Algorithm::RS384, Algorithm::ES384, Algorithm::RS512];
/// [`ASSERTION_ALGORITHMS`] by JWA name, for smart-configuration's
/// `token_endpoint_auth_signing_alg_values_supported`.
pub const ASSERTION_ALGORITHM_NAMES: [&str; 3] = ["RS384", "ES384", "RS512"];
/// SMART: `exp` "SHALL be no more than five minutes in the future".
pub const MAX_ASSERTION_LIFETIME_SECS: i64 = 300;
/// Clock skew allowed on `exp` (expiry), `nbf` and `iat`.
pub const ASSERTION_LEEWAY_SECS: i64 = 30;
/// Longer assertions are refused before parsing.
pub const MAX_ASSERTION_BYTES: usize = 8 * 1024;
/// `jti` is stored in the replay table; longer values are refused.
pub const MAX_JTI_LEN: usize = 255;

/// Why a client could not be authenticated. Every variant is `invalid_client` on the wire; the
/// variant and [`reason`](Self::reason) are for logs only.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum ClientAuthError {
    #[error("no client is registered with this client_id")]
    UnknownClient,
    #[error("client_assertion_type is not jwt-bearer")]
    WrongAssertionType,
    #[error("the assertion is too large")]
    TooLarge,
    #[error("the assertion is not a compact JWS")]
    Malformed,
    #[error("the assertion's alg is not allowed")]
    AlgorithmNotAllowed,
    #[error("the assertion's typ is not JWT")]
    WrongType,
    #[error("the assertion has a {0} header, which is not accepted")]
    UnsupportedHeader(&'static str),
    #[error("the assertion has no kid")]
    MissingKid,
    #[error("the assertion's jku is not the registered JWKS URL")]
    JkuNotRegistered,
    #[error("the assertion has no {0} claim")]
    MissingClaim(&'static str),
    #[error("the assertion's {0} claim is invalid")]
    InvalidClaim(&'static str),
    #[error("the assertion's iss and sub differ")]
    IssuerSubjectMismatch,
    #[error("the assertion's iss is not the registered client_id")]
    ClientMismatch,
    #[error("the assertion's aud is not the token endpoint")]
    WrongAudience,
    #[error("the assertion has expired")]
    Expired,
    #[error("the assertion expires more than 5 minutes ahead")]
    ExpiresTooFarAhead,
    #[error("the assertion is not valid yet")]
    NotYetValid,
    #[error("the assertion was issued in the future")]
    IssuedInFuture,
    #[error("the client's registered JWKS is not a JWK Set")]
    InvalidJwks,
    #[error("no key in the client's JWKS has the assertion's kid")]
    UnknownKid,
    #[error("no key with the assertion's kid fits its alg")]
    KeyDoesNotFitAlgorithm,
    #[error("several keys with the assertion's kid fit its alg")]
    AmbiguousKid,
    #[error("the key with the assertion's kid is unusable: {0}")]
    InvalidKey(&'static str),
    #[error("the assertion's signature is invalid")]
    BadSignature,
    #[error("the client's JWKS could not be fetched: {0}")]
    JwksUnavailable(JwksFetchError),
    #[error("the assertion's jti was already used")]
    Replayed,
}

impl ClientAuthError {
    /// A stable short string for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownClient => "client_unknown",
            Self::WrongAssertionType => "assertion_type_wrong",
            Self::TooLarge => "assertion_too_large",
            Self::Malformed => "assertion_malformed",
            Self::AlgorithmNotAllowed => "assertion_alg_not_allowed",
            Self::WrongType => "assertion_wrong_typ",
            Self::UnsupportedHeader(_) => "assertion_unsupported_header",
            Self::MissingKid => "assertion_missing_kid",
            Self::JkuNotRegistered => "assertion_jku_not_registered",
            Self::MissingClaim(_) => "assertion_missing_claim",
            Self::InvalidClaim(_) => "assertion_invalid_claim",
            Self::IssuerSubjectMismatch => "assertion_iss_sub_mismatch",
            Self::ClientMismatch => "assertion_client_mismatch",
            Self::WrongAudience => "assertion_wrong_audience",
            Self::Expired => "assertion_expired",
            Self::ExpiresTooFarAhead => "assertion_exp_too_far_ahead",
            Self::NotYetValid => "assertion_not_yet_valid",
            Self::IssuedInFuture => "assertion_issued_in_future",
            Self::InvalidJwks => "client_jwks_invalid",
            Self::UnknownKid => "assertion_unknown_kid",
            Self::KeyDoesNotFitAlgorithm => "assertion_key_does_not_fit_alg",
            Self::AmbiguousKid => "assertion_ambiguous_kid",
            Self::InvalidKey(_) => "assertion_invalid_key",
            Self::BadSignature => "assertion_bad_signature",
            Self::JwksUnavailable(_) => "client_jwks_unavailable",
            Self::Replayed => "assertion_replayed",
        }
    }

    /// The RFC 6749 section 5.2 error code: always `invalid_client`.
    pub fn oauth_error(&self) -> &'static str {
        "invalid_client"
    }
}

impl From<JwsError> for ClientAuthError {
    fn from(e: JwsError) -> Self {
        match e {
            JwsError::TooLarge => Self::TooLarge,
            JwsError::Malformed => Self::Malformed,
        }
    }
}

impl From<ClaimError> for ClientAuthError {
    fn from(e: ClaimError) -> Self {
        match e {
            ClaimError::Missing(name) => Self::MissingClaim(name),
            ClaimError::Invalid(name) => Self::InvalidClaim(name),
        }
    }
}

/// A successfully verified assertion: what the replay check needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAssertion {
    client_id: ClientId,
    jti: String,
    exp: OffsetDateTime,
}

impl VerifiedAssertion {
    pub fn client_id(&self) -> &ClientId {
        &self.client_id
    }

    pub fn jti(&self) -> &str {
        &self.jti
    }

    pub fn exp(&self) -> OffsetDateTime {
        self.exp
    }

    /// How long the replay row must be kept: until the assertion can no longer be accepted,
    /// leeway included.
    pub fn retain_until(&self) -> OffsetDateTime {
        self.exp + time::Duration::seconds(ASSERTION_LEEWAY_SECS)
    }
}

/// A registered client as the pure verifier needs it: its id, its JWKS (inline, or already
/// fetched from its URL) and its registered JWKS URL, if any.
#[derive(Debug, Clone, Copy)]
pub struct RegisteredClient<'a> {
    client_id: &'a ClientId,
    jwks: &'a Value,
    jwks_url: Option<&'a str>,
}

impl<'a> RegisteredClient<'a> {
    pub fn new(client_id: &'a ClientId, jwks: &'a Value, jwks_url: Option<&'a str>) -> Self {
        Self { client_id, jwks, jwks_url }
    }
}

/// Where a client's keys are registered.
#[derive(Debug, Clone, Copy)]
pub enum ClientKeys<'a> {
    /// A JWKS stored with the registration.
    Inline(&'a Value),
    /// A JWKS URL (preferred by SMART), fetched through a [`JwksSource`].
    Url(&'a str),
}

/// Reads the unverified `iss`/`sub` of an assertion to find the client registration. Nothing
/// is trusted yet: the value is only a lookup key, and it is a [`ClientId`] (bounded visible
/// ASCII) so it is safe as one. `iss` and `sub` must be equal.
pub fn peek_client_id(assertion: &str) -> Result<ClientId, ClientAuthError> {
    let jws = CompactJws::parse(assertion, MAX_ASSERTION_BYTES)?;
    let iss = jws.required_string("iss")?;
    let sub = jws.required_string("sub")?;
    if iss != sub {
        return Err(ClientAuthError::IssuerSubjectMismatch);
    }
    ClientId::parse(iss).map_err(|_| ClientAuthError::InvalidClaim("iss"))
}

/// Verifies a client assertion against a registered client (pure: no IO, the clock is passed).
/// `token_endpoint` is this server's token URL exactly as advertised in smart-configuration.
pub fn verify_client_assertion(
    assertion: &str,
    client: &RegisteredClient<'_>,
    token_endpoint: &str,
    now: OffsetDateTime,
) -> Result<VerifiedAssertion, ClientAuthError> {
    let checked = precheck(assertion, client.client_id, client.jwks_url, token_endpoint, now)?;
    let jwks = Jwks::from_value(client.jwks).map_err(|_| ClientAuthError::InvalidJwks)?;
    checked.verify_signature(&jwks)
}

/// The token endpoint's whole client authentication short of the replay check: header and
/// claim checks first (so a bad `jku`, or any other failure, costs no fetch), then the JWKS
/// (inline, or from `source`), then the signature. If the `kid` is unknown in a fetched JWKS,
/// it is fetched once more with [`Freshness::Refresh`], since the client may have rotated its
/// keys (the source bounds how often that can happen).
pub async fn authenticate_client(
    assertion: &str,
    client_id: &ClientId,
    keys: ClientKeys<'_>,
    token_endpoint: &str,
    source: &dyn JwksSource,
    now: OffsetDateTime,
) -> Result<VerifiedAssertion, ClientAuthError> {
    let jwks_url = match keys {
        ClientKeys::Url(url) => Some(url),
        ClientKeys::Inline(_) => None,
    };
    let checked = precheck(assertion, client_id, jwks_url, token_endpoint, now)?;
    let url = match keys {
        ClientKeys::Inline(jwks) => {
            let jwks = Jwks::from_value(jwks).map_err(|_| ClientAuthError::InvalidJwks)?;
            return checked.verify_signature(&jwks);
        }
        ClientKeys::Url(url) => url,
    };
    let fetch = |freshness| async move {
        let value = source.fetch_jwks(url, freshness).await.map_err(ClientAuthError::JwksUnavailable)?;
        Jwks::from_value(&value).map_err(|_| ClientAuthError::InvalidJwks)
    };
    match checked.verify_signature(&fetch(Freshness::Cached).await?) {
        Err(ClientAuthError::UnknownKid) => checked.verify_signature(&fetch(Freshness::Refresh).await?),
        other => other,
    }
}

/// An assertion whose header and claims passed; only the key and signature remain.
struct Prechecked<'a> {
    jws: CompactJws<'a>,
    kid: String,
    alg: Algorithm,
    verified: VerifiedAssertion,
}

impl Prechecked<'_> {
    fn verify_signature(&self, jwks: &Jwks) -> Result<VerifiedAssertion, ClientAuthError> {
        let key = jwks.select(&self.kid, self.alg).map_err(|e| match e {
            KeySelectError::UnknownKid => ClientAuthError::UnknownKid,
            KeySelectError::NoKeyFitsAlgorithm => ClientAuthError::KeyDoesNotFitAlgorithm,
            KeySelectError::AmbiguousKid => ClientAuthError::AmbiguousKid,
            KeySelectError::InvalidKey(why) => ClientAuthError::InvalidKey(why),
        })?;
        if !self.jws.signature_is_valid(&key, self.alg) {
            return Err(ClientAuthError::BadSignature);
        }
        Ok(self.verified.clone())
    }
}

fn precheck<'a>(
    assertion: &'a str,
    client_id: &ClientId,
    jwks_url: Option<&str>,
    token_endpoint: &str,
    now: OffsetDateTime,
) -> Result<Prechecked<'a>, ClientAuthError> {
    let jws = CompactJws::parse(assertion, MAX_ASSERTION_BYTES)?;
    let (kid, alg) = check_header(&jws, jwks_url)?;
    let verified = check_claims(&jws, client_id, token_endpoint, now)?;
    Ok(Prechecked { jws, kid, alg, verified })
}

fn check_header(jws: &CompactJws<'_>, jwks_url: Option<&str>) -> Result<(String, Algorithm), ClientAuthError> {
    let header = &jws.header;
    let alg = allowed_alg(&header.alg, &ASSERTION_ALGORITHMS).ok_or(ClientAuthError::AlgorithmNotAllowed)?;
    // RFC 7523 does not require typ; SMART's example sends `JWT`. Anything else (notably
    // `at+jwt`) is another kind of token (RFC 8725 section 3.11).
    if header.typ.as_deref().is_some_and(|t| !typ_is(t, "jwt")) {
        return Err(ClientAuthError::WrongType);
    }
    if header.has_crit {
        return Err(ClientAuthError::UnsupportedHeader("crit"));
    }
    // SMART: a `jku` must match the registered JWKS URL, and is otherwise never dereferenced.
    if let Some(jku) = header.jku.as_deref() {
        if jwks_url != Some(jku) {
            return Err(ClientAuthError::JkuNotRegistered);
        }
    }
    let kid = header.kid.as_deref().filter(|k| !k.is_empty()).ok_or(ClientAuthError::MissingKid)?;
    Ok((kid.to_owned(), alg))
}

fn check_claims(
    jws: &CompactJws<'_>,
    client_id: &ClientId,
    token_endpoint: &str,
    now: OffsetDateTime,
) -> Result<VerifiedAssertion, ClientAuthError> {
    let now = now.unix_timestamp();
    let iss = jws.required_string("iss")?;
    let sub = jws.required_string("sub")?;
    if iss != sub {
        return Err(ClientAuthError::IssuerSubjectMismatch);
    }
    if iss != client_id.as_str() {
        return Err(ClientAuthError::ClientMismatch);
    }
    if !jws.audience_contains(token_endpoint)? {
        return Err(ClientAuthError::WrongAudience);
    }
    let exp = jws.required_numeric_date("exp")?;
    if now >= exp.saturating_add(ASSERTION_LEEWAY_SECS) {
        return Err(ClientAuthError::Expired);
    }
    if exp.saturating_sub(now) > MAX_ASSERTION_LIFETIME_SECS {
        return Err(ClientAuthError::ExpiresTooFarAhead);
    }
    if jws.numeric_date("nbf")?.is_some_and(|nbf| nbf > now.saturating_add(ASSERTION_LEEWAY_SECS)) {
        return Err(ClientAuthError::NotYetValid);
    }
    if jws.numeric_date("iat")?.is_some_and(|iat| iat > now.saturating_add(ASSERTION_LEEWAY_SECS)) {
        return Err(ClientAuthError::IssuedInFuture);
    }
    let jti = jws.required_string("jti")?;
    if jti.len() > MAX_JTI_LEN {
        return Err(ClientAuthError::InvalidClaim("jti"));
    }
    Ok(VerifiedAssertion {
        client_id: client_id.clone(),
        jti: jti.to_owned(),
        exp: OffsetDateTime::from_unix_timestamp(exp).map_err(|_| ClientAuthError::InvalidClaim("exp"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::jwt::testing::{sign_raw, tamper_signature, unsigned};
    use super::*;
    use async_trait::async_trait;
    use jsonwebtoken::EncodingKey;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    const CLIENT: &str = "gp-a81001";
    const TOKEN_URL: &str = "https://linkbridge.example.nhs.uk/auth/token";
    const JWKS_URL: &str = "https://gp-system.example/.well-known/jwks.json";
    const NOW: i64 = 1_750_000_000;
    const RSA_KID: &str = "rsa-client-1";
    const EC_KID: &str = "ec-p384-client-1";

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(NOW).unwrap_or_else(|e| panic!("now: {e}"))
    }

    fn client_id() -> ClientId {
        ClientId::parse(CLIENT).unwrap_or_else(|e| panic!("client id: {e}"))
    }

    fn jwks() -> Value {
        serde_json::from_str(include_str!("../../tests/fixtures/keys/client-jwks.json"))
            .unwrap_or_else(|e| panic!("jwks fixture: {e}"))
    }

    fn rsa_key() -> EncodingKey {
        EncodingKey::from_rsa_pem(include_bytes!("../../tests/fixtures/keys/rsa-client-private.pem"))
            .unwrap_or_else(|e| panic!("rsa fixture: {e}"))
    }

    fn ec_key() -> EncodingKey {
        EncodingKey::from_ec_pem(include_bytes!("../../tests/fixtures/keys/ec-p384-client-private.pem"))
            .unwrap_or_else(|e| panic!("ec fixture: {e}"))
    }

    fn claims() -> Value {
        json!({
            "iss": CLIENT, "sub": CLIENT, "aud": TOKEN_URL,
            "exp": NOW + 240, "iat": NOW, "jti": "6f1d3c2e-8a1b-4f5e-9c0d-1a2b3c4d5e6f",
        })
    }

    fn ec_header() -> Value {
        json!({"alg": "ES384", "typ": "JWT", "kid": EC_KID})
    }

    fn sign_ec(header: &Value, claims: &Value) -> String {
        sign_raw(header, claims, &ec_key(), Algorithm::ES384)
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

    fn verify(assertion: &str, jwks_url: Option<&str>) -> Result<VerifiedAssertion, ClientAuthError> {
        let id = client_id();
        let keys = jwks();
        verify_client_assertion(assertion, &RegisteredClient::new(&id, &keys, jwks_url), TOKEN_URL, now())
    }

    #[test]
    fn valid_assertions_verify_for_each_allowed_algorithm() {
        let rsa = rsa_key();
        let cases: Vec<(&str, String)> = vec![
            ("ES384", sign_ec(&ec_header(), &claims())),
            (
                "RS384",
                sign_raw(&json!({"alg": "RS384", "typ": "JWT", "kid": RSA_KID}), &claims(), &rsa, Algorithm::RS384),
            ),
            ("RS512", sign_raw(&json!({"alg": "RS512", "kid": RSA_KID}), &claims(), &rsa, Algorithm::RS512)),
        ];
        for (name, assertion) in cases {
            let verified = verify(&assertion, None).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(verified.client_id().as_str(), CLIENT, "{name}: client_id");
            assert_eq!(verified.jti(), "6f1d3c2e-8a1b-4f5e-9c0d-1a2b3c4d5e6f", "{name}: jti");
            assert_eq!(verified.exp().unix_timestamp(), NOW + 240, "{name}: exp");
            assert_eq!(
                verified.retain_until().unix_timestamp(),
                NOW + 240 + ASSERTION_LEEWAY_SECS,
                "{name}: replay row lifetime"
            );
        }
    }

    #[test]
    fn assertions_that_must_be_refused_are_refused_with_a_precise_reason() {
        let c = claims();
        let h = ec_header();
        let rsa_public_jwk = jwks()["keys"][0].to_string();
        let cases: Vec<(&str, String, ClientAuthError)> = vec![
            ("not a jwt", "hello".into(), ClientAuthError::Malformed),
            ("oversized", "a".repeat(MAX_ASSERTION_BYTES + 1), ClientAuthError::TooLarge),
            ("tampered signature", tamper_signature(&sign_ec(&h, &c)), ClientAuthError::BadSignature),
            ("alg none", unsigned(&with(&h, &[("alg", json!("none"))]), &c), ClientAuthError::AlgorithmNotAllowed),
            (
                "HS256 keyed with the public key",
                sign_raw(
                    &with(&h, &[("alg", json!("HS256")), ("kid", json!(RSA_KID))]),
                    &c,
                    &EncodingKey::from_secret(rsa_public_jwk.as_bytes()),
                    Algorithm::HS256,
                ),
                ClientAuthError::AlgorithmNotAllowed,
            ),
            (
                "ES256 is not on the list",
                format!("{}c2ln", unsigned(&with(&h, &[("alg", json!("ES256"))]), &c)),
                ClientAuthError::AlgorithmNotAllowed,
            ),
            ("typ at+jwt", sign_ec(&with(&h, &[("typ", json!("at+jwt"))]), &c), ClientAuthError::WrongType),
            (
                "crit header",
                sign_ec(&with(&h, &[("crit", json!(["b64"]))]), &c),
                ClientAuthError::UnsupportedHeader("crit"),
            ),
            ("no kid", sign_ec(&without(&h, "kid"), &c), ClientAuthError::MissingKid),
            ("empty kid", sign_ec(&with(&h, &[("kid", json!(""))]), &c), ClientAuthError::MissingKid),
            ("unknown kid", sign_ec(&with(&h, &[("kid", json!("no-such-key"))]), &c), ClientAuthError::UnknownKid),
            (
                "path traversal kid",
                sign_ec(&with(&h, &[("kid", json!("../../dev/null"))]), &c),
                ClientAuthError::UnknownKid,
            ),
            (
                "sql kid",
                sign_ec(&with(&h, &[("kid", json!("x' OR '1'='1'; DROP TABLE clients; --"))]), &c),
                ClientAuthError::UnknownKid,
            ),
            (
                "kid with NUL",
                sign_ec(&with(&h, &[("kid", json!("ec-p384-client-1\u{0}"))]), &c),
                ClientAuthError::UnknownKid,
            ),
            ("kid not a string", sign_ec(&with(&h, &[("kid", json!(1))]), &c), ClientAuthError::Malformed),
            (
                "jku not registered",
                sign_ec(&with(&h, &[("jku", json!("https://evil.example/jwks"))]), &c),
                ClientAuthError::JkuNotRegistered,
            ),
            (
                "iss differs from sub",
                sign_ec(&h, &with(&c, &[("sub", json!("someone-else"))])),
                ClientAuthError::IssuerSubjectMismatch,
            ),
            (
                "iss = sub of another client",
                sign_ec(&h, &with(&c, &[("iss", json!("other")), ("sub", json!("other"))])),
                ClientAuthError::ClientMismatch,
            ),
            ("no iss", sign_ec(&h, &without(&c, "iss")), ClientAuthError::MissingClaim("iss")),
            (
                "aud is the FHIR base",
                sign_ec(&h, &with(&c, &[("aud", json!("https://linkbridge.example.nhs.uk/fhir"))])),
                ClientAuthError::WrongAudience,
            ),
            (
                "aud with trailing slash",
                sign_ec(&h, &with(&c, &[("aud", json!(format!("{TOKEN_URL}/")))])),
                ClientAuthError::WrongAudience,
            ),
            (
                "aud array without token URL",
                sign_ec(&h, &with(&c, &[("aud", json!(["https://a.example"]))])),
                ClientAuthError::WrongAudience,
            ),
            ("no aud", sign_ec(&h, &without(&c, "aud")), ClientAuthError::MissingClaim("aud")),
            (
                "exp more than 5 min ahead",
                sign_ec(&h, &with(&c, &[("exp", json!(NOW + 301))])),
                ClientAuthError::ExpiresTooFarAhead,
            ),
            (
                "exp an hour ahead",
                sign_ec(&h, &with(&c, &[("exp", json!(NOW + 3600))])),
                ClientAuthError::ExpiresTooFarAhead,
            ),
            (
                "expired",
                sign_ec(&h, &with(&c, &[("exp", json!(NOW - ASSERTION_LEEWAY_SECS))])),
                ClientAuthError::Expired,
            ),
            ("no exp", sign_ec(&h, &without(&c, "exp")), ClientAuthError::MissingClaim("exp")),
            (
                "exp as a string",
                sign_ec(&h, &with(&c, &[("exp", json!((NOW + 60).to_string()))])),
                ClientAuthError::InvalidClaim("exp"),
            ),
            ("nbf in the future", sign_ec(&h, &with(&c, &[("nbf", json!(NOW + 120))])), ClientAuthError::NotYetValid),
            (
                "nbf as a string",
                sign_ec(&h, &with(&c, &[("nbf", json!(NOW.to_string()))])),
                ClientAuthError::InvalidClaim("nbf"),
            ),
            (
                "iat in the future",
                sign_ec(&h, &with(&c, &[("iat", json!(NOW + 120))])),
                ClientAuthError::IssuedInFuture,
            ),
            ("no jti", sign_ec(&h, &without(&c, "jti")), ClientAuthError::MissingClaim("jti")),
            ("jti not a string", sign_ec(&h, &with(&c, &[("jti", json!(42))])), ClientAuthError::InvalidClaim("jti")),
            (
                "jti too long",
                sign_ec(&h, &with(&c, &[("jti", json!("j".repeat(MAX_JTI_LEN + 1)))])),
                ClientAuthError::InvalidClaim("jti"),
            ),
            (
                "ES384 header naming the RSA key",
                sign_ec(&with(&h, &[("kid", json!(RSA_KID))]), &c),
                ClientAuthError::KeyDoesNotFitAlgorithm,
            ),
            (
                "RS384 header naming the EC key",
                sign_ec(&with(&h, &[("alg", json!("RS384"))]), &c),
                ClientAuthError::KeyDoesNotFitAlgorithm,
            ),
        ];
        for (name, assertion, expected) in cases {
            assert_eq!(verify(&assertion, None).err(), Some(expected), "{name}");
        }
        assert!(verify(&sign_ec(&h, &c), None).is_ok(), "the unmodified assertion verifies");
    }

    #[test]
    fn boundaries_of_the_time_window_are_exact() {
        let h = ec_header();
        let cases: &[(&str, Value, bool)] = &[
            ("exp exactly 5 min ahead", json!({"exp": NOW + 300}), true),
            ("exp 1 s past, within leeway", json!({"exp": NOW - 1}), true),
            ("exp at the leeway edge", json!({"exp": NOW - ASSERTION_LEEWAY_SECS + 1}), true),
            ("nbf within leeway", json!({"nbf": NOW + ASSERTION_LEEWAY_SECS}), true),
            ("fractional exp", json!({"exp": (NOW + 60) as f64 + 0.5}), true),
            ("aud array containing the token URL", json!({"aud": ["https://a.example", TOKEN_URL]}), true),
            ("typ in lower case", json!({}), true),
        ];
        for (name, changes, ok) in cases {
            let mut c = claims();
            if let (Some(target), Some(changes)) = (c.as_object_mut(), changes.as_object()) {
                target.extend(changes.clone());
            }
            let header = if *name == "typ in lower case" { with(&h, &[("typ", json!("jwt"))]) } else { h.clone() };
            assert_eq!(verify(&sign_ec(&header, &c), None).is_ok(), *ok, "{name}");
        }
    }

    #[test]
    fn a_registered_jku_is_accepted_only_when_it_equals_the_registration() {
        let signed_with_jku = |jku: &str| sign_ec(&with(&ec_header(), &[("jku", json!(jku))]), &claims());
        assert!(verify(&signed_with_jku(JWKS_URL), Some(JWKS_URL)).is_ok(), "jku equal to the registration");
        let cases = [
            format!("{JWKS_URL}?x=1"),
            JWKS_URL.replace("https", "http"),
            "https://evil.example/.well-known/jwks.json".to_owned(),
        ];
        for jku in cases {
            assert_eq!(
                verify(&signed_with_jku(&jku), Some(JWKS_URL)).err(),
                Some(ClientAuthError::JkuNotRegistered),
                "jku {jku:?}"
            );
        }
    }

    #[test]
    fn a_jwks_with_two_fitting_keys_for_one_kid_is_refused() {
        let key = jwks()["keys"][1].clone();
        let doubled = json!({"keys": [key.clone(), key]});
        let id = client_id();
        let result = verify_client_assertion(
            &sign_ec(&ec_header(), &claims()),
            &RegisteredClient::new(&id, &doubled, None),
            TOKEN_URL,
            now(),
        );
        assert_eq!(result.err(), Some(ClientAuthError::AmbiguousKid), "exactly one key must match");
        let result = verify_client_assertion(
            &sign_ec(&ec_header(), &claims()),
            &RegisteredClient::new(&id, &json!({"nokeys": []}), None),
            TOKEN_URL,
            now(),
        );
        assert_eq!(result.err(), Some(ClientAuthError::InvalidJwks), "registered JWKS must be a JWK Set");
    }

    #[test]
    fn peeking_returns_the_unverified_client_id_only_when_it_is_safe() {
        let h = ec_header();
        assert_eq!(peek_client_id(&sign_ec(&h, &claims())), Ok(client_id()), "iss = sub");
        let long_id = "c".repeat(ClientId::MAX_LEN + 1);
        let cases: Vec<(&str, String, ClientAuthError)> = vec![
            (
                "iss differs from sub",
                unsigned(&h, &with(&claims(), &[("sub", json!("x"))])),
                ClientAuthError::IssuerSubjectMismatch,
            ),
            ("no iss", unsigned(&h, &without(&claims(), "iss")), ClientAuthError::MissingClaim("iss")),
            (
                "iss not a string",
                unsigned(&h, &with(&claims(), &[("iss", json!(["a"])), ("sub", json!(["a"]))])),
                ClientAuthError::InvalidClaim("iss"),
            ),
            (
                "iss with spaces",
                unsigned(&h, &with(&claims(), &[("iss", json!("a b")), ("sub", json!("a b"))])),
                ClientAuthError::InvalidClaim("iss"),
            ),
            (
                "iss too long",
                unsigned(&h, &with(&claims(), &[("iss", json!(long_id)), ("sub", json!(long_id))])),
                ClientAuthError::InvalidClaim("iss"),
            ),
            ("garbage", "x.y.z".to_owned(), ClientAuthError::Malformed),
        ];
        for (name, assertion, expected) in cases {
            // `unsigned` leaves an empty signature; give it a placeholder so only claims matter.
            let assertion = if assertion.ends_with('.') { format!("{assertion}c2ln") } else { assertion };
            assert_eq!(peek_client_id(&assertion).err(), Some(expected), "{name}");
        }
    }

    /// A [`JwksSource`] that serves fixed answers and counts calls.
    struct FakeSource {
        answers: Mutex<Vec<Result<Value, JwksFetchError>>>,
        calls: AtomicUsize,
        refreshes: AtomicUsize,
    }

    impl FakeSource {
        fn new(answers: Vec<Result<Value, JwksFetchError>>) -> Self {
            Self { answers: Mutex::new(answers), calls: AtomicUsize::new(0), refreshes: AtomicUsize::new(0) }
        }
    }

    #[async_trait]
    impl JwksSource for FakeSource {
        async fn fetch_jwks(&self, url: &str, freshness: Freshness) -> Result<Value, JwksFetchError> {
            assert_eq!(url, JWKS_URL, "only the registered URL is ever fetched");
            self.calls.fetch_add(1, Ordering::SeqCst);
            if freshness == Freshness::Refresh {
                self.refreshes.fetch_add(1, Ordering::SeqCst);
            }
            let mut answers = self.answers.lock().unwrap_or_else(|e| panic!("lock: {e}"));
            if answers.len() > 1 {
                answers.remove(0)
            } else {
                answers.first().cloned().unwrap_or(Err(JwksFetchError::Transport))
            }
        }
    }

    async fn authenticate(
        assertion: &str,
        keys: ClientKeys<'_>,
        source: &FakeSource,
    ) -> Result<VerifiedAssertion, ClientAuthError> {
        authenticate_client(assertion, &client_id(), keys, TOKEN_URL, source, now()).await
    }

    #[tokio::test]
    async fn an_unregistered_jku_fails_without_any_fetch() {
        let source = FakeSource::new(vec![Ok(jwks())]);
        let assertion = sign_ec(&with(&ec_header(), &[("jku", json!("https://evil.example/jwks.json"))]), &claims());
        let result = authenticate(&assertion, ClientKeys::Url(JWKS_URL), &source).await;
        assert_eq!(result.err(), Some(ClientAuthError::JkuNotRegistered), "refused");
        assert_eq!(source.calls.load(Ordering::SeqCst), 0, "no fetch happened");

        let inline = jwks();
        let result = authenticate(&assertion, ClientKeys::Inline(&inline), &source).await;
        assert_eq!(result.err(), Some(ClientAuthError::JkuNotRegistered), "an inline-JWKS client has no jku to match");
        assert_eq!(source.calls.load(Ordering::SeqCst), 0, "still no fetch");
    }

    #[tokio::test]
    async fn assertions_failing_header_or_claim_checks_cost_no_fetch() {
        let source = FakeSource::new(vec![Ok(jwks())]);
        let cases = [
            sign_ec(&ec_header(), &with(&claims(), &[("exp", json!(NOW - 3600))])),
            sign_ec(&ec_header(), &with(&claims(), &[("aud", json!("https://elsewhere.example/token"))])),
            unsigned(&with(&ec_header(), &[("alg", json!("none"))]), &claims()),
        ];
        for assertion in cases {
            assert!(authenticate(&assertion, ClientKeys::Url(JWKS_URL), &source).await.is_err(), "refused");
        }
        assert_eq!(source.calls.load(Ordering::SeqCst), 0, "no fetch for an assertion that fails anyway");
    }

    #[tokio::test]
    async fn a_url_registered_client_is_verified_against_the_fetched_jwks() {
        let source = FakeSource::new(vec![Ok(jwks())]);
        let result = authenticate(&sign_ec(&ec_header(), &claims()), ClientKeys::Url(JWKS_URL), &source).await;
        assert!(result.is_ok(), "verified: {result:?}");
        assert_eq!(source.calls.load(Ordering::SeqCst), 1, "one fetch");
        assert_eq!(source.refreshes.load(Ordering::SeqCst), 0, "no refresh needed");
    }

    #[tokio::test]
    async fn an_unknown_kid_triggers_one_refresh_for_rotated_client_keys() {
        let old_jwks = json!({"keys": [jwks()["keys"][0].clone()]});
        let rotated = FakeSource::new(vec![Ok(old_jwks.clone()), Ok(jwks())]);
        let result = authenticate(&sign_ec(&ec_header(), &claims()), ClientKeys::Url(JWKS_URL), &rotated).await;
        assert!(result.is_ok(), "the refreshed JWKS has the new key: {result:?}");
        assert_eq!(rotated.refreshes.load(Ordering::SeqCst), 1, "one refresh");

        let never = FakeSource::new(vec![Ok(old_jwks)]);
        let result = authenticate(&sign_ec(&ec_header(), &claims()), ClientKeys::Url(JWKS_URL), &never).await;
        assert_eq!(result.err(), Some(ClientAuthError::UnknownKid), "still unknown after the refresh");
        assert_eq!(never.calls.load(Ordering::SeqCst), 2, "exactly one retry");
    }

    #[tokio::test]
    async fn fetch_failures_and_inline_keys_are_handled() {
        let failing = FakeSource::new(vec![Err(JwksFetchError::Timeout)]);
        let result = authenticate(&sign_ec(&ec_header(), &claims()), ClientKeys::Url(JWKS_URL), &failing).await;
        assert_eq!(result.err(), Some(ClientAuthError::JwksUnavailable(JwksFetchError::Timeout)), "fetch failure");

        let unused = FakeSource::new(vec![]);
        let inline = jwks();
        let result = authenticate(&sign_ec(&ec_header(), &claims()), ClientKeys::Inline(&inline), &unused).await;
        assert!(result.is_ok(), "inline JWKS: {result:?}");
        assert_eq!(unused.calls.load(Ordering::SeqCst), 0, "inline keys are never fetched");
    }

    #[test]
    fn the_advertised_algorithm_names_are_the_accepted_algorithms() {
        let names: Vec<&str> = ASSERTION_ALGORITHMS.iter().map(|a| super::super::jwk::alg_name(*a)).collect();
        assert_eq!(names, ASSERTION_ALGORITHM_NAMES, "smart-configuration says what we accept");
    }

    #[test]
    fn every_failure_is_invalid_client_on_the_wire() {
        for e in [
            ClientAuthError::UnknownKid,
            ClientAuthError::Replayed,
            ClientAuthError::JwksUnavailable(JwksFetchError::Timeout),
        ] {
            assert_eq!(e.oauth_error(), "invalid_client", "{e}");
        }
    }
}
