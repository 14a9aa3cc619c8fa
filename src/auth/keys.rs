//! The service's own access-token signing keys: ES384 (P-384) keys kept as PKCS#8 PEM files, one
//! active (signs) and any number of previous ones (still verify, still published), each named by
//! its RFC 7638 JWK thumbprint.
//!
//! Layout: `<data dir>/signing-keys/<kid>.pem`, files 0600, directory 0700. Every `*.pem` file in
//! that directory is a key, whatever its name (the `kid` is computed from the key, never taken
//! from the file name); files starting with `.` are ignored (in-progress writes).
//!
//! Operator rotation:
//! 1. `linkbridge keys rotate` calls [`rotate`], which writes a new key file (or drop a PKCS#8
//!    P-384 PEM file into the directory by hand).
//! 2. Restart (or reload) every replica. The newest file becomes the active key; the older ones
//!    keep verifying the tokens they signed.
//! 3. Once no token signed by an old key can still be valid (the access token lifetime plus the
//!    leeway, at most 6 minutes, after every replica switched), delete the old key's file and
//!    reload again. From then on tokens it signed fail with `unknown_kid`.
//!
//! With several replicas that restart at different times, set `signing_key_activation_secs`
//! longer than a rolling restart takes: a new key file younger than that is published and
//! trusted by every replica restarted since, but signs only from the next restart after it
//! ripened, when every replica already knows it.

use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use jsonwebtoken::{DecodingKey, EncodingKey};
use p384::elliptic_curve::sec1::ToEncodedPoint as _;
use p384::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, LineEnding};
use secrecy::SecretString;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::jwt::b64;

/// The sub-directory of the data directory that holds the key files.
pub const SIGNING_KEYS_DIR: &str = "signing-keys";

/// Key files are small; anything larger is not a key and is not read whole.
const MAX_KEY_FILE_BYTES: u64 = 16 * 1024;

/// A key file or directory that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("I/O error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a PKCS#8 PEM P-384 private key")]
    InvalidKeyFile { path: PathBuf },
    #[error("not a PKCS#8 PEM P-384 private key")]
    InvalidPem,
    #[error("no signing key in {dir}")]
    NoKeys { dir: PathBuf },
    #[error("two keys have the kid {kid}")]
    DuplicateKid { kid: String },
    #[error("the key could not be encoded")]
    Encode,
}

impl KeyError {
    /// A stable short string for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Io { .. } => "key_io",
            Self::InvalidKeyFile { .. } => "key_file_invalid",
            Self::InvalidPem => "key_pem_invalid",
            Self::NoKeys { .. } => "no_signing_keys",
            Self::DuplicateKid { .. } => "duplicate_kid",
            Self::Encode => "key_encode",
        }
    }

    fn io(path: &Path, source: io::Error) -> Self {
        Self::Io { path: path.to_owned(), source }
    }
}

/// One ES384 signing key with its `kid`.
pub struct SigningKey {
    kid: String,
    secret: p384::SecretKey,
    encoding: EncodingKey,
    decoding: DecodingKey,
    x: String,
    y: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("SigningKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new random key from the operating system's CSPRNG. (Encoding a fresh key cannot fail
    /// in practice; the `Result` keeps that impossibility out of a panic.)
    pub fn generate() -> Result<Self, KeyError> {
        Self::from_secret(p384::SecretKey::random(&mut rand::rngs::OsRng))
    }

    /// Parses a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) P-384 key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let secret = p384::SecretKey::from_pkcs8_pem(pem).map_err(|_| KeyError::InvalidPem)?;
        Self::from_secret(secret)
    }

    /// The PKCS#8 PEM encoding, kept in a secret wrapper so it cannot be logged by accident.
    pub fn to_pkcs8_pem(&self) -> Result<SecretString, KeyError> {
        let pem = self.secret.to_pkcs8_pem(LineEnding::LF).map_err(|_| KeyError::Encode)?;
        Ok(SecretString::from(pem.as_str()))
    }

    /// The RFC 7638 thumbprint of the public key (SHA-256, base64url).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK with `kid`, `alg: ES384` and `use: sig`.
    pub fn public_jwk(&self) -> Value {
        json!({
            "kty": "EC",
            "crv": "P-384",
            "x": self.x,
            "y": self.y,
            "kid": self.kid,
            "alg": "ES384",
            "use": "sig",
        })
    }

    pub(crate) fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }

    pub(crate) fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }

    fn from_secret(secret: p384::SecretKey) -> Result<Self, KeyError> {
        let der = secret.to_pkcs8_der().map_err(|_| KeyError::Encode)?;
        let encoding = EncodingKey::from_ec_der(der.as_bytes());
        let point = secret.public_key().to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            return Err(KeyError::Encode);
        };
        let (x, y) = (b64(x), b64(y));
        let decoding = DecodingKey::from_ec_components(&x, &y).map_err(|_| KeyError::Encode)?;
        Ok(Self { kid: ec_thumbprint(&x, &y), secret, encoding, decoding, x, y })
    }
}

/// RFC 7638 section 3.2: the required members of an EC key, in lexicographic order, without
/// whitespace, hashed with SHA-256 and base64url encoded. `x` and `y` are base64url, so they
/// need no JSON escaping.
fn ec_thumbprint(x: &str, y: &str) -> String {
    let canonical = format!(r#"{{"crv":"P-384","kty":"EC","x":"{x}","y":"{y}"}}"#);
    b64(&Sha256::digest(canonical.as_bytes()))
}

/// The active signing key and the previous keys that still verify.
#[derive(Debug)]
pub struct SigningKeys {
    active: SigningKey,
    previous: Vec<SigningKey>,
}

impl SigningKeys {
    /// A key set; `kid`s must be distinct.
    pub fn new(active: SigningKey, previous: Vec<SigningKey>) -> Result<Self, KeyError> {
        let mut seen = vec![active.kid.clone()];
        for key in &previous {
            if seen.contains(&key.kid) {
                return Err(KeyError::DuplicateKid { kid: key.kid.clone() });
            }
            seen.push(key.kid.clone());
        }
        Ok(Self { active, previous })
    }

    /// The key new tokens are signed with.
    pub fn active(&self) -> &SigningKey {
        &self.active
    }

    /// The key with exactly this `kid`, active or previous. The `kid` is only compared, never
    /// used to build a path.
    pub fn find(&self, kid: &str) -> Option<&SigningKey> {
        std::iter::once(&self.active).chain(&self.previous).find(|k| k.kid == kid)
    }

    /// All `kid`s, active first.
    pub fn kids(&self) -> Vec<&str> {
        std::iter::once(&self.active).chain(&self.previous).map(|k| k.kid.as_str()).collect()
    }

    /// The public JWK Set to serve (RFC 7517 section 5), active key first.
    pub fn public_jwks(&self) -> Value {
        let keys: Vec<Value> =
            std::iter::once(&self.active).chain(&self.previous).map(SigningKey::public_jwk).collect();
        json!({ "keys": keys })
    }

    /// Loads `dir/signing-keys/*.pem` (see [`SigningKeys::load`]), creating the directory and a
    /// first key if there is none.
    pub fn load_or_create(dir: &Path, activation_delay: Duration) -> Result<Self, KeyError> {
        let keys_dir = keys_dir(dir);
        create_private_dir(&keys_dir)?;
        if key_files(&keys_dir)?.is_empty() {
            let key = SigningKey::generate()?;
            write_key_file(&keys_dir, &key)?;
            tracing::info!(kid = key.kid(), "created the first access-token signing key");
        }
        Self::load(dir, activation_delay)
    }

    /// Loads `dir/signing-keys/*.pem`. The active key is the newest file that is at least
    /// `activation_delay` old (by modification time); if every file is younger, the oldest one.
    /// Fails if there is no key or any key file is invalid (a half-configured key set must not
    /// start).
    pub fn load(dir: &Path, activation_delay: Duration) -> Result<Self, KeyError> {
        Self::load_at(dir, activation_delay, SystemTime::now())
    }

    fn load_at(dir: &Path, activation_delay: Duration, now: SystemTime) -> Result<Self, KeyError> {
        let keys_dir = keys_dir(dir);
        let mut loaded: Vec<(SystemTime, SigningKey)> = Vec::new();
        for path in key_files(&keys_dir)? {
            let (modified, key) = read_key_file(&path)?;
            if loaded.iter().any(|(_, k)| k.kid == key.kid) {
                tracing::warn!(kid = key.kid(), path = %path.display(), "the same signing key is in two files");
                continue;
            }
            loaded.push((modified, key));
        }
        // Newest first; ties broken by kid so every replica picks the same key.
        loaded.sort_by(|(ta, ka), (tb, kb)| tb.cmp(ta).then_with(|| ka.kid.cmp(&kb.kid)));
        let ripe = |modified: &SystemTime| modified.checked_add(activation_delay).is_some_and(|ready| ready <= now);
        let active_index = loaded
            .iter()
            .position(|(modified, _)| ripe(modified))
            .or_else(|| loaded.len().checked_sub(1))
            .ok_or_else(|| KeyError::NoKeys { dir: keys_dir.clone() })?;
        let active = loaded.remove(active_index).1;
        let previous = loaded.into_iter().map(|(_, k)| k).collect();
        Self::new(active, previous)
    }
}

/// Generates a new key in `dir/signing-keys/` and returns its `kid`; it becomes the active key at
/// the next load (see the module documentation for the whole procedure).
pub fn rotate(dir: &Path) -> Result<String, KeyError> {
    let keys_dir = keys_dir(dir);
    create_private_dir(&keys_dir)?;
    let key = SigningKey::generate()?;
    write_key_file(&keys_dir, &key)?;
    tracing::info!(kid = key.kid(), "created a new access-token signing key");
    Ok(key.kid)
}

/// `dir/signing-keys`.
pub fn keys_dir(dir: &Path) -> PathBuf {
    dir.join(SIGNING_KEYS_DIR)
}

fn key_files(keys_dir: &Path) -> Result<Vec<PathBuf>, KeyError> {
    let entries = match fs::read_dir(keys_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(KeyError::io(keys_dir, e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| KeyError::io(keys_dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(".pem") && !name.starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn read_key_file(path: &Path) -> Result<(SystemTime, SigningKey), KeyError> {
    let metadata = fs::metadata(path).map_err(|e| KeyError::io(path, e))?;
    if metadata.len() > MAX_KEY_FILE_BYTES {
        return Err(KeyError::InvalidKeyFile { path: path.to_owned() });
    }
    warn_if_readable_by_others(path, &metadata);
    let modified = metadata.modified().map_err(|e| KeyError::io(path, e))?;
    let text = fs::read_to_string(path).map_err(|e| KeyError::io(path, e))?;
    let key = SigningKey::from_pkcs8_pem(&text).map_err(|_| KeyError::InvalidKeyFile { path: path.to_owned() })?;
    Ok((modified, key))
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path, metadata: &fs::Metadata) {
    use std::os::unix::fs::PermissionsExt as _;
    if metadata.permissions().mode() & 0o077 != 0 {
        // A warning, not a failure: secret mounts (Kubernetes, Docker) are often 0644 and
        // read-only, and refusing to start would not make them private.
        tracing::warn!(path = %path.display(), "signing key file is readable by group or others");
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path, _metadata: &fs::Metadata) {}

fn create_private_dir(path: &Path) -> Result<(), KeyError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(path).map_err(|e| KeyError::io(path, e))
}

/// Writes `<kid>.pem` atomically: a 0600 temporary file (ignored by loaders because of its
/// leading dot), flushed to disk, then renamed, so a replica never reads half a key.
fn write_key_file(keys_dir: &Path, key: &SigningKey) -> Result<PathBuf, KeyError> {
    use secrecy::ExposeSecret as _;
    let final_path = keys_dir.join(format!("{}.pem", key.kid));
    let temp_path = keys_dir.join(format!(".{}.pem.tmp", key.kid));
    let pem = key.to_pkcs8_pem()?;
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let write = || -> io::Result<()> {
        let mut file = options.open(&temp_path)?;
        file.write_all(pem.expose_secret().as_bytes())?;
        file.sync_all()?;
        if final_path.exists() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "key file exists"));
        }
        fs::rename(&temp_path, &final_path)?;
        // Persist the rename itself.
        fs::File::open(keys_dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&temp_path);
        KeyError::io(&final_path, e)
    })?;
    Ok(final_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
    }

    fn set_mtime(path: &Path, time: SystemTime) {
        fs::File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(time))
            .unwrap_or_else(|e| panic!("set mtime of {}: {e}", path.display()));
    }

    fn key_path(dir: &Path, kid: &str) -> PathBuf {
        keys_dir(dir).join(format!("{kid}.pem"))
    }

    #[test]
    fn kid_is_the_rfc_7638_thumbprint_of_the_public_key() {
        let key = SigningKey::generate().unwrap_or_else(|e| panic!("generate: {e}"));
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(key.public_jwk()).unwrap_or_else(|e| panic!("public jwk parses: {e}"));
        assert_eq!(
            key.kid(),
            jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256),
            "our thumbprint agrees with jsonwebtoken's RFC 7638 implementation"
        );
        assert_eq!(key.kid().len(), 43, "a base64url SHA-256 digest has 43 characters");
    }

    #[test]
    fn a_key_survives_a_pkcs8_pem_round_trip() {
        use secrecy::ExposeSecret as _;
        let key = SigningKey::generate().unwrap_or_else(|e| panic!("generate: {e}"));
        let pem = key.to_pkcs8_pem().unwrap_or_else(|e| panic!("encode: {e}"));
        assert!(pem.expose_secret().starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8, not SEC1");
        let again = SigningKey::from_pkcs8_pem(pem.expose_secret()).unwrap_or_else(|e| panic!("decode: {e}"));
        assert_eq!(again.kid(), key.kid(), "same key, same kid");
        assert!(!format!("{key:?}").contains("PRIVATE"), "Debug output shows no key material");
    }

    #[test]
    fn keys_that_are_not_pkcs8_p384_are_refused() {
        let rsa = include_str!("../../tests/fixtures/keys/rsa-client-private.pem");
        for (name, pem) in [("rsa key", rsa), ("garbage", "hello"), ("empty", "")] {
            assert!(matches!(SigningKey::from_pkcs8_pem(pem), Err(KeyError::InvalidPem)), "{name} must be refused");
        }
        let ec = include_str!("../../tests/fixtures/keys/ec-p384-client-private.pem");
        assert!(SigningKey::from_pkcs8_pem(ec).is_ok(), "an openssl P-384 PKCS#8 key loads");
    }

    #[test]
    fn load_or_create_creates_one_private_key_file_on_first_start_and_reuses_it() {
        let dir = temp_dir();
        let first = SigningKeys::load_or_create(dir.path(), Duration::ZERO).unwrap_or_else(|e| panic!("first: {e}"));
        let path = key_path(dir.path(), first.active().kid());
        assert!(path.is_file(), "the key is stored as <kid>.pem");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let file_mode = fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
            assert_eq!(file_mode.ok(), Some(0o600), "key file is 0600");
            let dir_mode = fs::metadata(keys_dir(dir.path())).map(|m| m.permissions().mode() & 0o777);
            assert_eq!(dir_mode.ok(), Some(0o700), "key directory is 0700");
        }
        let second = SigningKeys::load_or_create(dir.path(), Duration::ZERO).unwrap_or_else(|e| panic!("second: {e}"));
        assert_eq!(second.active().kid(), first.active().kid(), "restart keeps the key");
        assert_eq!(second.kids().len(), 1, "no second key is created");
    }

    #[test]
    fn rotation_makes_the_newest_key_active_and_keeps_the_old_one_for_verification() {
        let dir = temp_dir();
        let original = SigningKeys::load_or_create(dir.path(), Duration::ZERO).unwrap_or_else(|e| panic!("load: {e}"));
        let old_kid = original.active().kid().to_owned();
        let now = SystemTime::now();
        set_mtime(&key_path(dir.path(), &old_kid), now - Duration::from_secs(3600));
        let new_kid = rotate(dir.path()).unwrap_or_else(|e| panic!("rotate: {e}"));

        let keys = SigningKeys::load(dir.path(), Duration::ZERO).unwrap_or_else(|e| panic!("reload: {e}"));
        assert_eq!(keys.active().kid(), new_kid, "the newest file signs");
        assert!(keys.find(&old_kid).is_some(), "the old key still verifies");
        let published: Vec<String> = keys.public_jwks()["keys"]
            .as_array()
            .map(|ks| ks.iter().filter_map(|k| k["kid"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        assert_eq!(published, vec![new_kid.clone(), old_kid.clone()], "both keys are published, active first");

        fs::remove_file(key_path(dir.path(), &old_kid)).unwrap_or_else(|e| panic!("remove: {e}"));
        let pruned = SigningKeys::load(dir.path(), Duration::ZERO).unwrap_or_else(|e| panic!("reload: {e}"));
        assert!(pruned.find(&old_kid).is_none(), "a removed key no longer verifies");
    }

    #[test]
    fn an_activation_delay_publishes_a_new_key_before_it_signs() {
        let dir = temp_dir();
        let old_kid = rotate(dir.path()).unwrap_or_else(|e| panic!("first: {e}"));
        let now = SystemTime::now();
        set_mtime(&key_path(dir.path(), &old_kid), now - Duration::from_secs(3600));
        let new_kid = rotate(dir.path()).unwrap_or_else(|e| panic!("second: {e}"));
        set_mtime(&key_path(dir.path(), &new_kid), now - Duration::from_secs(10));

        let delay = Duration::from_secs(120);
        let before = SigningKeys::load_at(dir.path(), delay, now).unwrap_or_else(|e| panic!("load: {e}"));
        assert_eq!(before.active().kid(), old_kid, "the new key is not ripe yet");
        assert!(before.find(&new_kid).is_some(), "but it already verifies and is published");

        let after = SigningKeys::load_at(dir.path(), delay, now + Duration::from_secs(200))
            .unwrap_or_else(|e| panic!("load: {e}"));
        assert_eq!(after.active().kid(), new_kid, "once ripe, the new key signs");

        fs::remove_file(key_path(dir.path(), &old_kid)).unwrap_or_else(|e| panic!("remove: {e}"));
        let only_young = SigningKeys::load_at(dir.path(), delay, now).unwrap_or_else(|e| panic!("load: {e}"));
        assert_eq!(only_young.active().kid(), new_kid, "a lone young key still signs");
    }

    #[test]
    fn loading_ignores_temporary_files_and_refuses_invalid_key_files() {
        let dir = temp_dir();
        let kid = rotate(dir.path()).unwrap_or_else(|e| panic!("rotate: {e}"));
        let keys_dir = keys_dir(dir.path());
        fs::write(keys_dir.join(".half-written.pem.tmp"), "junk").unwrap_or_else(|e| panic!("write: {e}"));
        fs::write(keys_dir.join("README.txt"), "not a key").unwrap_or_else(|e| panic!("write: {e}"));
        let keys = SigningKeys::load(dir.path(), Duration::ZERO).unwrap_or_else(|e| panic!("load: {e}"));
        assert_eq!(keys.kids(), vec![kid.as_str()], "only *.pem files are keys");

        fs::write(keys_dir.join("broken.pem"), "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            .unwrap_or_else(|e| panic!("write: {e}"));
        assert!(
            matches!(SigningKeys::load(dir.path(), Duration::ZERO), Err(KeyError::InvalidKeyFile { .. })),
            "an invalid key file stops the load"
        );
    }

    #[test]
    fn an_empty_directory_has_no_keys() {
        let dir = temp_dir();
        assert!(
            matches!(SigningKeys::load(dir.path(), Duration::ZERO), Err(KeyError::NoKeys { .. })),
            "load without keys fails; load_or_create is the one that creates"
        );
    }

    #[test]
    fn duplicate_kids_are_refused_in_a_key_set() {
        let pem = include_str!("../../tests/fixtures/keys/ec-p384-client-private.pem");
        let a = SigningKey::from_pkcs8_pem(pem).unwrap_or_else(|e| panic!("a: {e}"));
        let b = SigningKey::from_pkcs8_pem(pem).unwrap_or_else(|e| panic!("b: {e}"));
        assert!(
            matches!(SigningKeys::new(a, vec![b]), Err(KeyError::DuplicateKid { .. })),
            "the same key twice is refused"
        );
    }
}
