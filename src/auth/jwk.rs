//! A parsed public JWK Set (RFC 7517) and the key selection rule of SMART Backend Services
//! ("Signature Verification"): the `kid` from the JWS header is an opaque string compared for
//! equality with each key's `kid`, and exactly one key must match it and fit the header's `alg`.
//!
//! Keys are parsed leniently (a JWKS may hold keys we do not use, such as encryption keys) but
//! selected strictly: a matching key that is malformed, symmetric, private, or too weak fails.

use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::jwt::b64_decode;

/// A value that is not a JWK Set.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwksError {
    #[error("not a JWK Set: expected an object with a \"keys\" array")]
    NotAJwks,
    #[error("the JWK Set has more than {max} keys")]
    TooManyKeys { max: usize },
}

impl JwksError {
    /// A stable short string for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotAJwks => "not_a_jwks",
            Self::TooManyKeys { .. } => "jwks_too_many_keys",
        }
    }
}

/// Why no verification key could be taken from a JWK Set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeySelectError {
    /// No key has this `kid`.
    UnknownKid,
    /// Keys have this `kid` but none fits the algorithm (wrong `kty`/`crv`, `alg`, `use`, `key_ops`).
    NoKeyFitsAlgorithm,
    /// More than one key has this `kid` and fits the algorithm.
    AmbiguousKid,
    /// The one matching key is unusable.
    InvalidKey(&'static str),
}

/// A public JWK Set, parsed.
#[derive(Debug, Clone, Default)]
pub struct Jwks {
    keys: Vec<PublicJwk>,
}

#[derive(Debug, Clone)]
struct PublicJwk {
    kid: Option<String>,
    kty: Option<String>,
    crv: Option<String>,
    alg: Option<String>,
    key_use: Option<String>,
    key_ops: Option<Vec<String>>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
    /// Any RFC 7518 section 6.2.2 / 6.3.2 private member (`d`, `p`, `q`, ...).
    has_private_members: bool,
    /// A member we read had the wrong JSON type.
    malformed: bool,
}

impl Jwks {
    /// Bounds the work a hostile JWKS can cause.
    pub const MAX_KEYS: usize = 64;

    /// Parses `{"keys": [...]}`. Entries that are not objects or carry members of the wrong
    /// type are kept as unusable keys, so that a `kid` pointing at them fails rather than
    /// falling through to another key.
    pub fn from_value(value: &Value) -> Result<Self, JwksError> {
        let keys = value.get("keys").and_then(Value::as_array).ok_or(JwksError::NotAJwks)?;
        if keys.len() > Self::MAX_KEYS {
            return Err(JwksError::TooManyKeys { max: Self::MAX_KEYS });
        }
        Ok(Self { keys: keys.iter().map(PublicJwk::from_value).collect() })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether some key carries exactly this `kid`.
    pub fn contains_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The verification key for a JWS header's `kid` and `alg`.
    pub(crate) fn select(&self, kid: &str, alg: Algorithm) -> Result<DecodingKey, KeySelectError> {
        let mut with_kid = self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).peekable();
        if with_kid.peek().is_none() {
            return Err(KeySelectError::UnknownKid);
        }
        let fitting: Vec<&PublicJwk> = with_kid.filter(|k| k.fits(alg)).collect();
        match fitting.as_slice() {
            [] => Err(KeySelectError::NoKeyFitsAlgorithm),
            [key] => key.decoding_key(alg),
            _ => Err(KeySelectError::AmbiguousKid),
        }
    }
}

impl PublicJwk {
    fn from_value(value: &Value) -> Self {
        let mut malformed = !value.is_object();
        let mut string = |name: &str| match value.get(name) {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                malformed = true;
                None
            }
        };
        let kid = string("kid");
        let kty = string("kty");
        let crv = string("crv");
        let alg = string("alg");
        let key_use = string("use");
        let n = string("n");
        let e = string("e");
        let x = string("x");
        let y = string("y");
        let key_ops = match value.get("key_ops") {
            None => None,
            Some(Value::Array(ops)) => {
                Some(ops.iter().map(|op| op.as_str().map(str::to_owned).unwrap_or_default()).collect())
            }
            Some(_) => {
                malformed = true;
                None
            }
        };
        let has_private_members = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"].iter().any(|m| value.get(m).is_some());
        Self { kid, kty, crv, alg, key_use, key_ops, n, e, x, y, has_private_members, malformed }
    }

    /// RFC 7518 section 3.1: which key type (and curve) each algorithm needs; plus the optional
    /// `alg`, `use` and `key_ops` restrictions of RFC 7517 section 4. Symmetric and EdDSA
    /// algorithms never fit: accepting `HS256` against a public key is the classic confusion.
    fn fits(&self, alg: Algorithm) -> bool {
        let kty_fits = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => self.kty.as_deref() == Some("RSA"),
            Algorithm::ES256 => self.kty.as_deref() == Some("EC") && self.crv.as_deref() == Some("P-256"),
            Algorithm::ES384 => self.kty.as_deref() == Some("EC") && self.crv.as_deref() == Some("P-384"),
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 | Algorithm::EdDSA => false,
        };
        let alg_fits = self.alg.as_deref().is_none_or(|a| a == alg_name(alg));
        let use_fits = self.key_use.as_deref().is_none_or(|u| u == "sig");
        let ops_fit = self.key_ops.as_ref().is_none_or(|ops| ops.iter().any(|op| op == "verify"));
        kty_fits && alg_fits && use_fits && ops_fit
    }

    fn decoding_key(&self, alg: Algorithm) -> Result<DecodingKey, KeySelectError> {
        if self.malformed {
            return Err(KeySelectError::InvalidKey("jwk_malformed"));
        }
        if self.has_private_members {
            // A published private key is compromised; refuse rather than use it.
            return Err(KeySelectError::InvalidKey("jwk_has_private_members"));
        }
        match self.kty.as_deref() {
            Some("RSA") => self.rsa_key(),
            Some("EC") => self.ec_key(alg),
            _ => Err(KeySelectError::InvalidKey("jwk_unsupported_kty")),
        }
    }

    fn rsa_key(&self) -> Result<DecodingKey, KeySelectError> {
        let invalid = KeySelectError::InvalidKey("jwk_rsa_malformed");
        let n = self.n.as_deref().and_then(b64_decode).ok_or(invalid)?;
        let e = self.e.as_deref().and_then(b64_decode).ok_or(invalid)?;
        let n_significant = n.iter().skip_while(|b| **b == 0).count();
        // RFC 7518 section 3.3: RSA keys of 2048 bits or larger MUST be used.
        if n_significant < 256 {
            return Err(KeySelectError::InvalidKey("jwk_rsa_too_small"));
        }
        if e.is_empty() || e.len() > 8 {
            return Err(invalid);
        }
        Ok(DecodingKey::from_rsa_raw_components(&n, &e))
    }

    fn ec_key(&self, alg: Algorithm) -> Result<DecodingKey, KeySelectError> {
        let invalid = KeySelectError::InvalidKey("jwk_ec_malformed");
        let (Some(x), Some(y)) = (self.x.as_deref(), self.y.as_deref()) else {
            return Err(invalid);
        };
        let (x_bytes, y_bytes) = (b64_decode(x).ok_or(invalid)?, b64_decode(y).ok_or(invalid)?);
        // RFC 7518 section 6.2.1.2: coordinates are the full field size.
        let size = if alg == Algorithm::ES256 { 32 } else { 48 };
        if x_bytes.len() != size || y_bytes.len() != size {
            return Err(invalid);
        }
        if alg == Algorithm::ES384 {
            let mut sec1 = Vec::with_capacity(1 + 2 * size);
            sec1.push(0x04);
            sec1.extend_from_slice(&x_bytes);
            sec1.extend_from_slice(&y_bytes);
            // Reject points not on the curve now, with a clear reason.
            if p384::PublicKey::from_sec1_bytes(&sec1).is_err() {
                return Err(KeySelectError::InvalidKey("jwk_ec_point_invalid"));
            }
        }
        DecodingKey::from_ec_components(x, y).map_err(|_| invalid)
    }
}

/// The JWA name of an algorithm (RFC 7518 section 3.1).
pub(crate) fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
    }
}

/// The algorithm in `allowed` whose JWA name is exactly `name` (so `none`, `HS256` or a
/// lower-case spelling never resolve unless explicitly allowed).
pub(crate) fn allowed_alg(name: &str, allowed: &[Algorithm]) -> Option<Algorithm> {
    allowed.iter().copied().find(|a| alg_name(*a) == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture(name: &str) -> Value {
        let text = match name {
            "rsa" => include_str!("../../tests/fixtures/keys/rsa-client-jwks.json"),
            _ => include_str!("../../tests/fixtures/keys/ec-p384-client-jwks.json"),
        };
        serde_json::from_str(text).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
    }

    fn first_key(name: &str) -> Value {
        fixture(name)["keys"][0].clone()
    }

    fn with(key: &Value, changes: &[(&str, Value)]) -> Value {
        let mut key = key.clone();
        for (name, value) in changes {
            key[*name] = value.clone();
        }
        key
    }

    fn select(keys: Vec<Value>, kid: &str, alg: Algorithm) -> Result<(), KeySelectError> {
        Jwks::from_value(&json!({ "keys": keys })).unwrap_or_else(|e| panic!("jwks: {e}")).select(kid, alg).map(|_| ())
    }

    #[test]
    fn values_that_are_not_a_jwk_set_are_refused() {
        let too_many: Vec<Value> = (0..=Jwks::MAX_KEYS).map(|_| json!({})).collect();
        let cases: Vec<(Value, JwksError)> = vec![
            (json!([]), JwksError::NotAJwks),
            (json!({"keys": {}}), JwksError::NotAJwks),
            (json!({"key": []}), JwksError::NotAJwks),
            (json!({ "keys": too_many }), JwksError::TooManyKeys { max: Jwks::MAX_KEYS }),
        ];
        for (value, expected) in cases {
            assert_eq!(Jwks::from_value(&value).err(), Some(expected), "value {value}");
        }
    }

    #[test]
    fn exactly_one_key_must_match_kid_and_fit_alg() {
        let rsa = first_key("rsa");
        let ec = first_key("ec");
        let rsa_kid = rsa["kid"].as_str().unwrap_or_default().to_owned();
        let ec_kid = ec["kid"].as_str().unwrap_or_default().to_owned();
        let rsa_as_ec_kid = with(&rsa, &[("kid", json!(ec_kid))]);
        type Case = (&'static str, Vec<Value>, String, Algorithm, Result<(), KeySelectError>);
        let cases: Vec<Case> = vec![
            ("rsa key for RS384", vec![rsa.clone()], rsa_kid.clone(), Algorithm::RS384, Ok(())),
            ("rsa key for RS512", vec![rsa.clone()], rsa_kid.clone(), Algorithm::RS512, Ok(())),
            ("ec key for ES384", vec![ec.clone(), rsa.clone()], ec_kid.clone(), Algorithm::ES384, Ok(())),
            ("unknown kid", vec![rsa.clone()], "nope".into(), Algorithm::RS384, Err(KeySelectError::UnknownKid)),
            (
                "path as kid",
                vec![rsa.clone()],
                "../../dev/null".into(),
                Algorithm::RS384,
                Err(KeySelectError::UnknownKid),
            ),
            ("sql as kid", vec![rsa.clone()], "' OR '1'='1".into(), Algorithm::RS384, Err(KeySelectError::UnknownKid)),
            (
                "kid compared exactly",
                vec![rsa.clone()],
                rsa_kid.to_uppercase(),
                Algorithm::RS384,
                Err(KeySelectError::UnknownKid),
            ),
            (
                "rsa key for ES384",
                vec![rsa.clone()],
                rsa_kid.clone(),
                Algorithm::ES384,
                Err(KeySelectError::NoKeyFitsAlgorithm),
            ),
            (
                "ec key for RS384",
                vec![ec.clone()],
                ec_kid.clone(),
                Algorithm::RS384,
                Err(KeySelectError::NoKeyFitsAlgorithm),
            ),
            (
                "P-384 key for ES256",
                vec![ec.clone()],
                ec_kid.clone(),
                Algorithm::ES256,
                Err(KeySelectError::NoKeyFitsAlgorithm),
            ),
            (
                "public key for HS256",
                vec![rsa.clone()],
                rsa_kid.clone(),
                Algorithm::HS256,
                Err(KeySelectError::NoKeyFitsAlgorithm),
            ),
            (
                "jwk alg differs",
                vec![with(&rsa, &[("alg", json!("RS256"))])],
                rsa_kid.clone(),
                Algorithm::RS384,
                Err(KeySelectError::NoKeyFitsAlgorithm),
            ),
            (
                "encryption key",
                vec![with(&rsa, &[("use", json!("enc"))])],
                rsa_kid.clone(),
                Algorithm::RS384,
                Err(KeySelectError::NoKeyFitsAlgorithm),
            ),
            (
                "key_ops without verify",
                vec![with(&rsa, &[("key_ops", json!(["encrypt"]))])],
                rsa_kid.clone(),
                Algorithm::RS384,
                Err(KeySelectError::NoKeyFitsAlgorithm),
            ),
            (
                "same kid, other type, picks the fitting one",
                vec![rsa_as_ec_kid.clone(), ec.clone()],
                ec_kid.clone(),
                Algorithm::ES384,
                Ok(()),
            ),
            (
                "two fitting keys with one kid",
                vec![ec.clone(), ec.clone()],
                ec_kid.clone(),
                Algorithm::ES384,
                Err(KeySelectError::AmbiguousKid),
            ),
            (
                "private member",
                vec![with(&ec, &[("d", json!("AAAA"))])],
                ec_kid.clone(),
                Algorithm::ES384,
                Err(KeySelectError::InvalidKey("jwk_has_private_members")),
            ),
            (
                "short rsa modulus",
                vec![with(&rsa, &[("n", json!("AQAB"))])],
                rsa_kid.clone(),
                Algorithm::RS384,
                Err(KeySelectError::InvalidKey("jwk_rsa_too_small")),
            ),
            (
                "short ec coordinate",
                vec![with(&ec, &[("x", json!("AQAB"))])],
                ec_kid.clone(),
                Algorithm::ES384,
                Err(KeySelectError::InvalidKey("jwk_ec_malformed")),
            ),
            (
                "point off the curve",
                vec![with(&ec, &[("y", json!(jwk_b64(&[7u8; 48])))])],
                ec_kid.clone(),
                Algorithm::ES384,
                Err(KeySelectError::InvalidKey("jwk_ec_point_invalid")),
            ),
            (
                "member of wrong type",
                vec![with(&ec, &[("x", json!(5))])],
                ec_kid.clone(),
                Algorithm::ES384,
                Err(KeySelectError::InvalidKey("jwk_malformed")),
            ),
        ];
        for (name, keys, kid, alg, expected) in cases {
            assert_eq!(select(keys, &kid, alg), expected, "{name}");
        }
    }

    fn jwk_b64(bytes: &[u8]) -> String {
        super::super::jwt::b64(bytes)
    }

    #[test]
    fn allowed_alg_matches_only_exact_names_on_the_list() {
        let allowed = [Algorithm::RS384, Algorithm::ES384];
        let cases: &[(&str, Option<Algorithm>)] = &[
            ("RS384", Some(Algorithm::RS384)),
            ("ES384", Some(Algorithm::ES384)),
            ("rs384", None),
            ("none", None),
            ("HS256", None),
            ("RS256", None),
            ("", None),
        ];
        for (name, expected) in cases {
            assert_eq!(allowed_alg(name, &allowed), *expected, "alg {name:?}");
        }
    }
}
