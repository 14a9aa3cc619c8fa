//! Compact JWS parsing and claim reading shared by access tokens and client assertions.
//!
//! We parse the header and claims ourselves instead of relying on `jsonwebtoken::decode`'s
//! validation because we need what it does not check (RFC 8725 section 3.11 explicit typing,
//! `kid`, `jku`, `crit`, `jti`), an injectable clock, and precise reasons. `jsonwebtoken` is used
//! only for the signature arithmetic (`jsonwebtoken::crypto::verify`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};

/// Why a compact JWS could not even be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JwsError {
    TooLarge,
    Malformed,
}

/// Why a claim could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimError {
    Missing(&'static str),
    Invalid(&'static str),
}

/// The JOSE header members we act on (RFC 7515 section 4.1). Others are ignored, which is what
/// RFC 7515 asks for unknown members, except `crit`, which we must refuse because we understand
/// no extension (section 4.1.11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JoseHeader {
    pub alg: String,
    pub typ: Option<String>,
    pub kid: Option<String>,
    pub jku: Option<String>,
    pub has_crit: bool,
}

/// A parsed, not yet verified, compact JWS.
#[derive(Debug)]
pub(crate) struct CompactJws<'a> {
    pub header: JoseHeader,
    pub claims: Map<String, Value>,
    signing_input: &'a str,
    signature: &'a str,
}

impl<'a> CompactJws<'a> {
    /// Splits and decodes `header.payload.signature`. Five-part JWE, padding and characters
    /// outside base64url are malformed.
    pub(crate) fn parse(raw: &'a str, max_len: usize) -> Result<Self, JwsError> {
        if raw.len() > max_len {
            return Err(JwsError::TooLarge);
        }
        let mut parts = raw.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwsError::Malformed);
        };
        let header = parse_header(&decode_json_object(header_b64)?)?;
        let claims = decode_json_object(payload_b64)?;
        // An empty signature is valid syntax (an unsecured JWS, RFC 7515 appendix A.5); the
        // algorithm allow-list is what refuses it, with a clearer reason.
        if URL_SAFE_NO_PAD.decode(signature).is_err() {
            return Err(JwsError::Malformed);
        }
        let signing_input = &raw[..header_b64.len() + 1 + payload_b64.len()];
        Ok(Self { header, claims, signing_input, signature })
    }

    /// Verifies the signature with `key` under `alg` (already checked against an allow-list and
    /// against the key's type by the caller).
    pub(crate) fn signature_is_valid(&self, key: &DecodingKey, alg: Algorithm) -> bool {
        matches!(jsonwebtoken::crypto::verify(self.signature, self.signing_input.as_bytes(), key, alg), Ok(true))
    }

    /// A string claim; `None` when absent. A present non-string (including `null`) is invalid.
    pub(crate) fn string_claim(&self, name: &'static str) -> Result<Option<&str>, ClaimError> {
        match self.claims.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(ClaimError::Invalid(name)),
        }
    }

    pub(crate) fn required_string(&self, name: &'static str) -> Result<&str, ClaimError> {
        match self.string_claim(name)? {
            Some(s) if !s.is_empty() => Ok(s),
            Some(_) => Err(ClaimError::Invalid(name)),
            None => Err(ClaimError::Missing(name)),
        }
    }

    /// A NumericDate (RFC 7519 section 2): a JSON number of seconds. Strings are refused, which
    /// is the check CVE-2026-25537 was about; fractions are truncated.
    pub(crate) fn numeric_date(&self, name: &'static str) -> Result<Option<i64>, ClaimError> {
        match self.claims.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                if let Some(i) = n.as_i64() {
                    Ok(Some(i))
                } else {
                    match n.as_f64() {
                        // The range is checked first, so the cast cannot saturate; dropping a
                        // fraction of a second is intended.
                        Some(f) if f.is_finite() && f.abs() < 1e15 => Ok(Some(f.trunc() as i64)),
                        _ => Err(ClaimError::Invalid(name)),
                    }
                }
            }
            Some(_) => Err(ClaimError::Invalid(name)),
        }
    }

    pub(crate) fn required_numeric_date(&self, name: &'static str) -> Result<i64, ClaimError> {
        self.numeric_date(name)?.ok_or(ClaimError::Missing(name))
    }

    /// Whether `aud` (a string, or an array of strings, RFC 7519 section 4.1.3) contains
    /// `expected` exactly.
    pub(crate) fn audience_contains(&self, expected: &str) -> Result<bool, ClaimError> {
        match self.claims.get("aud") {
            None => Err(ClaimError::Missing("aud")),
            Some(Value::String(s)) => Ok(s == expected),
            Some(Value::Array(items)) => {
                if items.iter().any(|v| !v.is_string()) {
                    return Err(ClaimError::Invalid("aud"));
                }
                Ok(items.iter().any(|v| v.as_str() == Some(expected)))
            }
            Some(_) => Err(ClaimError::Invalid("aud")),
        }
    }
}

/// RFC 7515 section 4.1.9 / RFC 9068 section 2.1: `typ` is a media type and may omit the
/// `application/` prefix; media types compare case-insensitively.
pub(crate) fn typ_is(typ: &str, expected_subtype: &str) -> bool {
    let lower = typ.to_ascii_lowercase();
    let subtype = lower.strip_prefix("application/").unwrap_or(&lower);
    subtype == expected_subtype
}

fn decode_json_object(segment: &str) -> Result<Map<String, Value>, JwsError> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| JwsError::Malformed)?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwsError::Malformed),
    }
}

fn parse_header(map: &Map<String, Value>) -> Result<JoseHeader, JwsError> {
    let optional_string = |name: &str| match map.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(JwsError::Malformed),
    };
    let alg = optional_string("alg")?.ok_or(JwsError::Malformed)?;
    Ok(JoseHeader {
        alg,
        typ: optional_string("typ")?,
        kid: optional_string("kid")?,
        jku: optional_string("jku")?,
        has_crit: map.contains_key("crit"),
    })
}

/// Base64url without padding, as JWS uses (RFC 7515 section 2).
pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url without padding.
pub(crate) fn b64_decode(value: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(value).ok()
}

/// Test helpers to build tokens with arbitrary headers and signatures.
#[cfg(test)]
pub(crate) mod testing {
    use super::b64;
    use jsonwebtoken::{Algorithm, EncodingKey};
    use serde_json::Value;

    /// Signs `header` and `claims` as given, whatever they say.
    pub(crate) fn sign_raw(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
        let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let signature = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg)
            .unwrap_or_else(|e| panic!("signing test token failed: {e}"));
        format!("{input}.{signature}")
    }

    /// An unsigned token (`alg: none` style, empty signature).
    pub(crate) fn unsigned(header: &Value, claims: &Value) -> String {
        format!("{}.{}.", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()))
    }

    /// Replaces one character of the signature, keeping it valid base64url.
    pub(crate) fn tamper_signature(token: &str) -> String {
        let mut chars: Vec<char> = token.chars().collect();
        if let Some(last) = chars.last_mut() {
            *last = if *last == 'A' { 'B' } else { 'A' };
        }
        chars.into_iter().collect()
    }

    /// Replaces the payload with `claims`, keeping header and signature.
    pub(crate) fn replace_payload(token: &str, claims: &Value) -> String {
        let parts: Vec<&str> = token.split('.').collect();
        format!(
            "{}.{}.{}",
            parts.first().copied().unwrap_or_default(),
            b64(claims.to_string().as_bytes()),
            parts.get(2).copied().unwrap_or_default()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn token(header: &Value, claims: &Value, signature: &str) -> String {
        format!("{}.{}.{signature}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()))
    }

    #[test]
    fn parse_refuses_shapes_that_are_not_a_compact_jws() {
        let header = json!({"alg": "ES384"});
        let claims = json!({"iss": "x"});
        let good = token(&header, &claims, "c2ln");
        let cases: Vec<(String, JwsError)> = vec![
            (String::new(), JwsError::Malformed),
            ("a.b".to_owned(), JwsError::Malformed),
            (format!("{good}.extra.parts"), JwsError::Malformed),
            (token(&header, &claims, "c2ln=="), JwsError::Malformed),
            (token(&json!({"typ": "JWT"}), &claims, "c2ln"), JwsError::Malformed),
            (token(&json!({"alg": 384}), &claims, "c2ln"), JwsError::Malformed),
            (token(&json!(["alg"]), &claims, "c2ln"), JwsError::Malformed),
            (token(&header, &json!("claims"), "c2ln"), JwsError::Malformed),
            (format!("!!!.{}.c2ln", good.split('.').nth(1).unwrap_or_default()), JwsError::Malformed),
            ("x".repeat(100), JwsError::TooLarge),
        ];
        for (raw, expected) in cases {
            assert_eq!(CompactJws::parse(&raw, 64.max(good.len())).err(), Some(expected), "input {raw:?}");
        }
        assert!(CompactJws::parse(&good, 4096).is_ok(), "a well-formed token parses");
    }

    #[test]
    fn numeric_dates_must_be_json_numbers() {
        let cases: &[(Value, Result<Option<i64>, ClaimError>)] = &[
            (json!({"exp": 1_700_000_000}), Ok(Some(1_700_000_000))),
            (json!({"exp": 1_700_000_000.9}), Ok(Some(1_700_000_000))),
            (json!({}), Ok(None)),
            (json!({"exp": "1700000000"}), Err(ClaimError::Invalid("exp"))),
            (json!({"exp": null}), Err(ClaimError::Invalid("exp"))),
            (json!({"exp": true}), Err(ClaimError::Invalid("exp"))),
            (json!({"exp": 1e300}), Err(ClaimError::Invalid("exp"))),
        ];
        for (claims, expected) in cases {
            let raw = token(&json!({"alg": "ES384"}), claims, "c2ln");
            let jws = CompactJws::parse(&raw, 4096).unwrap_or_else(|e| panic!("parse {claims}: {e:?}"));
            assert_eq!(jws.numeric_date("exp"), *expected, "claims {claims}");
        }
    }

    #[test]
    fn audience_may_be_a_string_or_an_array_of_strings() {
        let cases: &[(Value, Result<bool, ClaimError>)] = &[
            (json!({"aud": "https://a"}), Ok(true)),
            (json!({"aud": ["https://b", "https://a"]}), Ok(true)),
            (json!({"aud": "https://a/"}), Ok(false)),
            (json!({"aud": []}), Ok(false)),
            (json!({"aud": ["https://a", 7]}), Err(ClaimError::Invalid("aud"))),
            (json!({"aud": {"x": 1}}), Err(ClaimError::Invalid("aud"))),
            (json!({}), Err(ClaimError::Missing("aud"))),
        ];
        for (claims, expected) in cases {
            let raw = token(&json!({"alg": "ES384"}), claims, "c2ln");
            let jws = CompactJws::parse(&raw, 4096).unwrap_or_else(|e| panic!("parse {claims}: {e:?}"));
            assert_eq!(jws.audience_contains("https://a"), *expected, "claims {claims}");
        }
    }

    #[test]
    fn typ_comparison_follows_media_type_rules() {
        let cases: &[(&str, &str, bool)] = &[
            ("at+jwt", "at+jwt", true),
            ("application/at+jwt", "at+jwt", true),
            ("AT+JWT", "at+jwt", true),
            ("JWT", "at+jwt", false),
            ("JWT", "jwt", true),
            ("application/jwt", "jwt", true),
            ("at+jwt", "jwt", false),
        ];
        for (typ, expected, outcome) in cases {
            assert_eq!(typ_is(typ, expected), *outcome, "typ {typ:?} vs {expected:?}");
        }
    }
}
