//! Logical ids and version ids, parsed once at the edge.

use std::fmt;

/// A FHIR logical id: `[A-Za-z0-9\-\.]{1,64}` (R4 datatypes.html#id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a valid FHIR id (1-64 characters from A-Z, a-z, 0-9, '-' and '.')")]
pub struct InvalidId(pub String);

impl ResourceId {
    pub fn parse(raw: &str) -> Result<Self, InvalidId> {
        let valid =
            (1..=64).contains(&raw.len()) && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if valid {
            Ok(ResourceId(raw.to_owned()))
        } else {
            Err(InvalidId(raw.chars().take(80).collect()))
        }
    }

    /// A fresh server-assigned id. UUIDs need no coordination between replicas; version 7
    /// starts with the time, so new rows land at the end of every index keyed by id instead
    /// of on a random page each (a referral's writes dirty a few pages, not dozens).
    pub fn generate() -> Self {
        ResourceId(uuid::Uuid::now_v7().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `meta.versionId`: 1 for a created resource, +1 on every update or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionId(i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a version id; expected a positive whole number, or W/\"n\" in If-Match")]
pub struct InvalidVersion(pub String);

impl VersionId {
    pub const FIRST: VersionId = VersionId(1);

    pub fn parse(raw: &str) -> Result<Self, InvalidVersion> {
        match raw.parse::<i64>() {
            Ok(n) if n >= 1 && raw.bytes().all(|b| b.is_ascii_digit()) => Ok(VersionId(n)),
            _ => Err(InvalidVersion(raw.chars().take(40).collect())),
        }
    }

    /// Parses an ETag as sent in `If-Match`: `W/"3"`, also tolerating a strong `"3"`, which
    /// several client libraries send although the server only issues weak ETags.
    pub fn parse_etag(raw: &str) -> Result<Self, InvalidVersion> {
        let trimmed = raw.trim();
        let unweak = trimmed.strip_prefix("W/").unwrap_or(trimmed);
        let inner = unweak
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .ok_or_else(|| InvalidVersion(trimmed.chars().take(40).collect()))?;
        Self::parse(inner)
    }

    pub fn from_stored(n: i64) -> Self {
        VersionId(n)
    }

    pub fn get(self) -> i64 {
        self.0
    }

    pub fn next(self) -> Self {
        VersionId(self.0 + 1)
    }

    pub fn etag(self) -> String {
        format!("W/\"{}\"", self.0)
    }
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_ids_sort_in_the_order_they_were_made() {
        let ids: Vec<ResourceId> = (0..1000).map(|_| ResourceId::generate()).collect();
        assert!(ids.windows(2).all(|pair| pair[0].as_str() < pair[1].as_str()), "time-ordered (UUIDv7) ids");
        assert!(ids.iter().all(|id| ResourceId::parse(id.as_str()).is_ok()), "and valid FHIR ids");
    }

    #[test]
    fn ids_follow_the_r4_id_rule() {
        let cases = [
            ("abc-123.X", true),
            ("a", true),
            (&"x".repeat(64), true),
            (&"x".repeat(65), false),
            ("", false),
            ("has space", false),
            ("slash/", false),
            ("under_score", false),
        ];
        for (raw, ok) in cases {
            assert_eq!(ResourceId::parse(raw).is_ok(), ok, "id {raw:?}");
        }
    }

    #[test]
    fn etags_parse_in_weak_and_strong_form_and_reject_junk() {
        let cases = [
            ("W/\"3\"", Some(3)),
            ("\"12\"", Some(12)),
            (" W/\"1\" ", Some(1)),
            ("W/\"0\"", None),
            ("W/\"-1\"", None),
            ("W/3", None),
            ("W/\"+3\"", None),
            ("*", None),
        ];
        for (raw, expected) in cases {
            assert_eq!(VersionId::parse_etag(raw).ok().map(VersionId::get), expected, "etag {raw:?}");
        }
    }
}
