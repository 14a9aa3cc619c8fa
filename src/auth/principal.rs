//! The identity values an access token carries: who the client is, which organisation it acts for
//! and in which role. They come from the client registration (never from a request), are signed
//! into the token by the token endpoint and read back by the middleware.

use std::fmt;

/// A value that is not a valid client id, ODS code or role.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrincipalError {
    #[error("client_id must be 1 to {max} visible ASCII characters")]
    ClientId { max: usize },
}

impl PrincipalError {
    /// A stable short string for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ClientId { .. } => "invalid_client_id",
        }
    }
}

/// An OAuth `client_id` (RFC 6749 appendix A.1: visible ASCII). Spaces are refused too, and the
/// length is capped so that a value peeked from an unverified assertion is safe to use as a
/// database lookup key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(String);

impl ClientId {
    pub const MAX_LEN: usize = 255;

    pub fn parse(value: &str) -> Result<Self, PrincipalError> {
        let visible = value.bytes().all(|b| (0x21..=0x7e).contains(&b));
        if value.is_empty() || value.len() > Self::MAX_LEN || !visible {
            return Err(PrincipalError::ClientId { max: Self::MAX_LEN });
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// The organisation and role types are the domain's own (`domain::tenancy`): the token carries
// exactly what the tenancy rules read.
pub use crate::domain::tenancy::{OdsCode, Role};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_accept_visible_ascii_and_refuse_the_rest() {
        let long = "a".repeat(ClientId::MAX_LEN + 1);
        let cases: &[(&str, bool)] = &[
            ("gp-practice-a81001", true),
            ("urn:uuid:0f8e2c1a-1b2c-4d5e-8f90-123456789abc", true),
            ("", false),
            ("has space", false),
            ("tab\there", false),
            ("naïve", false),
            (long.as_str(), false),
        ];
        for (input, ok) in cases {
            assert_eq!(ClientId::parse(input).is_ok(), *ok, "client_id {input:?}");
        }
    }
}
