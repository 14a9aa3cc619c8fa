//! SMART Backend Services: scopes, client assertions, JWKS, the service signing keys and access tokens.
//!
//! This module is the pure, IO-light core of authentication (SMART App Launch 2.x, "Backend
//! Services"; RFC 7523 client assertions; RFC 9068 access tokens). It does no database work and
//! knows nothing of actix-web: the token endpoint and the request middleware call into it.
//!
//! Map:
//! - [`scopes`]: `system/<Type|*>.<cruds>` scopes, [`ScopeSet`], narrowing a request to a
//!   registration.
//! - [`principal`]: the small identity types carried by tokens ([`ClientId`], [`OdsCode`], [`Role`]).
//! - [`keys`]: the service's own ES384 signing keys, their rotation and the published JWKS.
//! - [`access_token`]: issuing and verifying RFC 9068 access tokens (`typ: at+jwt`).
//! - [`assertion`]: verifying `private_key_jwt` client assertions at the token endpoint.
//! - [`jwk`]: a parsed public JWK Set and the "exactly one key matches kid and fits alg" rule.
//! - [`jwks_fetch`]: fetching a client's JWKS URL (https only, capped, cached), behind
//!   [`JwksSource`].
//!
//! Invariants: no function here reads a tenant from anything but a registration or a token we
//! signed; every verification failure is one error value with a stable `reason()` for logs and
//! never echoes the token.

pub mod access_token;
pub mod assertion;
pub mod jwk;
pub mod jwks_fetch;
pub mod keys;
pub mod principal;
pub mod scopes;

mod jwt;

pub use access_token::{
    bearer_token, verify_external_access_token, AccessClaims, AccessTokenPolicy, ExternalAccessClaims,
    ExternalIssuerPolicy, Grant, IssueError, IssuedAccessToken, TokenError,
};
pub use assertion::{
    authenticate_client, peek_client_id, verify_client_assertion, ClientAuthError, ClientKeys, RegisteredClient,
    VerifiedAssertion,
};
pub use jwk::Jwks;
pub use jwks_fetch::{Freshness, HttpJwksSource, JwksFetchConfig, JwksFetchError, JwksSource};
pub use keys::{KeyError, SigningKey, SigningKeys};
pub use principal::{ClientId, OdsCode, PrincipalError, Role};
pub use scopes::{Interaction, ScopeError, ScopeSet};

/// A configuration value outside the bounds the security rules allow (checked at startup).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("access token lifetime must be between 1 and {max} seconds, got {got}")]
    TokenLifetime { got: u64, max: u64 },
    #[error("clock leeway must be at most {max} seconds, got {got}")]
    Leeway { got: u64, max: u64 },
    #[error("{what} must be an absolute http(s) URL without fragment or credentials")]
    NotAnAbsoluteUrl { what: &'static str },
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("algorithm {0:?} is not allowed for access tokens (asymmetric algorithms only)")]
    Algorithm(jsonwebtoken::Algorithm),
}

impl ConfigError {
    /// A stable short string for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TokenLifetime { .. } => "token_lifetime_out_of_bounds",
            Self::Leeway { .. } => "leeway_out_of_bounds",
            Self::NotAnAbsoluteUrl { .. } => "not_an_absolute_url",
            Self::Empty { .. } => "empty_value",
            Self::Algorithm(_) => "algorithm_not_allowed",
        }
    }
}
