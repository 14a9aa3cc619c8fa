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
    #[error("server_error: {0}")]
    Server(#[from] StoreError),
}

impl TokenRequestError {
    pub fn oauth_error(&self) -> &'static str {
        match self {
            TokenRequestError::InvalidRequest(_) => "invalid_request",
            TokenRequestError::UnsupportedGrantType => "unsupported_grant_type",
            TokenRequestError::InvalidClient(_) => "invalid_client",
            TokenRequestError::InvalidScope(_) => "invalid_scope",
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
}

/// Our own access tokens this process has verified, so that a client's every request does not
/// pay for an ECDSA P-384 verification (the largest CPU cost of a read). Keyed by the token's
/// SHA-256 (the token itself is not kept); an entry serves only until the token's own expiry,
/// so a cached token is accepted exactly as long as verifying it again would accept it
/// (signing keys are not withdrawn before the tokens they signed expire).
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

impl AuthService {
    pub fn new(
        store: Store,
        keys: Arc<SigningKeys>,
        policy: AccessTokenPolicy,
        token_endpoint: String,
        jwks_source: Arc<dyn JwksSource>,
    ) -> Self {
        let verified = Arc::new(VerifiedTokens { entries: Default::default() });
        AuthService { store, keys, policy, token_endpoint, jwks_source, external: None, verified }
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

    /// `POST /auth/token`.
    pub async fn issue_token(&self, request: &TokenRequest) -> Result<IssuedAccessToken, TokenRequestError> {
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
    /// tokens are tried first; then, when configured, the external issuer's.
    pub async fn authenticate(&self, bearer: &str) -> Result<(Principal, ScopeSet), TokenError> {
        let now = OffsetDateTime::now_utc();
        if let Some(verified) = self.verified.get(bearer, now) {
            return Ok(verified);
        }
        let own = self.policy.verify(&self.keys, bearer, now);
        match (own, &self.external) {
            (Ok(claims), _) => {
                let principal =
                    Principal::new(claims.client_id().as_str(), claims.organization().clone(), claims.role());
                let verified = (principal, claims.scope().clone());
                self.verified.insert(bearer, verified.clone(), claims.expires_at(), now);
                Ok(verified)
            }
            (Err(_), Some(external)) => self.authenticate_external(external, bearer).await,
            (Err(e), None) => Err(e),
        }
    }

    /// An external issuer's token names a client; the organisation and role it claims must be
    /// exactly those of that client's registration (fail closed), and its scopes are narrowed
    /// to the registered ones.
    async fn authenticate_external(
        &self,
        external: &ExternalIssuer,
        bearer: &str,
    ) -> Result<(Principal, ScopeSet), TokenError> {
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
        let client = self
            .store
            .find_client(claims.client_id())
            .await
            .map_err(|_| TokenError::InvalidClaim("client_id"))?
            .ok_or(TokenError::InvalidClaim("client_id"))?;
        let (organization, role) = registered_identity(&client).ok_or(TokenError::InvalidClaim("client_id"))?;
        if !claims.organization_raw().eq_ignore_ascii_case(organization.as_str()) {
            return Err(TokenError::InvalidClaim("organization"));
        }
        if claims.role_raw() != role.as_str() {
            return Err(TokenError::InvalidClaim("role"));
        }
        let registered = ScopeSet::parse(&client.scopes).map_err(|_| TokenError::InvalidClaim("scope"))?;
        let principal = Principal::new(client.client_id.as_str(), organization, role);
        Ok((principal, claims.scope().narrow_to(&registered)))
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
}
