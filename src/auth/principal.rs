//! The identity values an access token carries: who the client is, which organisation it acts for
//! and in which role. They come from the client registration (never from a request), are signed
//! into the token by the token endpoint and read back by the middleware.

use std::fmt;
use std::str::FromStr;

/// A value that is not a valid client id, ODS code or role.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrincipalError {
    #[error("client_id must be 1 to {max} visible ASCII characters")]
    ClientId { max: usize },
    #[error("an ODS code must be {min} to {max} ASCII letters or digits")]
    OdsCode { min: usize, max: usize },
    #[error("role must be one of referrer, performer, operator")]
    Role,
}

impl PrincipalError {
    /// A stable short string for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ClientId { .. } => "invalid_client_id",
            Self::OdsCode { .. } => "invalid_ods_code",
            Self::Role => "invalid_role",
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

/// An NHS Organisation Data Service code (for example `A81001` for a GP practice), stored upper
/// case. Only the shape is checked here; whether the organisation is registered is the
/// registry's business.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OdsCode(String);

impl OdsCode {
    pub const MIN_LEN: usize = 3;
    pub const MAX_LEN: usize = 10;

    pub fn parse(value: &str) -> Result<Self, PrincipalError> {
        let shape_ok = (Self::MIN_LEN..=Self::MAX_LEN).contains(&value.len())
            && value.bytes().all(|b| b.is_ascii_alphanumeric());
        if !shape_ok {
            return Err(PrincipalError::OdsCode {
                min: Self::MIN_LEN,
                max: Self::MAX_LEN,
            });
        }
        Ok(Self(value.to_ascii_uppercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OdsCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The part a client plays in the referral exchange, fixed at registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A GP practice sending referrals.
    Referrer,
    /// A Community Link Worker service receiving them.
    Performer,
    /// The service operator's own tooling.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Referrer => "referrer",
            Self::Performer => "performer",
            Self::Operator => "operator",
        }
    }
}

impl FromStr for Role {
    type Err = PrincipalError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "referrer" => Ok(Self::Referrer),
            "performer" => Ok(Self::Performer),
            "operator" => Ok(Self::Operator),
            _ => Err(PrincipalError::Role),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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

    #[test]
    fn ods_codes_are_alphanumeric_and_stored_upper_case() {
        assert_eq!(
            OdsCode::parse("a81001").map(|c| c.as_str().to_owned()),
            Ok("A81001".to_owned()),
            "lower case is normalised"
        );
        for bad in ["", "AB", "A81-001", "A81001A81001", "A81 01", "../x"] {
            assert!(
                OdsCode::parse(bad).is_err(),
                "ODS code {bad:?} must be refused"
            );
        }
    }

    #[test]
    fn roles_round_trip_through_their_wire_names() {
        for role in [Role::Referrer, Role::Performer, Role::Operator] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role), "role {role}");
        }
        assert!(
            "Referrer".parse::<Role>().is_err(),
            "role names are case sensitive"
        );
        assert!(
            "admin".parse::<Role>().is_err(),
            "unknown roles are refused"
        );
    }
}
