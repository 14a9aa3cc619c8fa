//! The operator's command-line tasks: the client registry, key rotation and the demo set-up
//! that takes a newcomer from `cargo run` to an authorised request in minutes.

use std::path::{Path, PathBuf};

use secrecy::ExposeSecret;
use serde_json::{json, Value};

use crate::auth::{ClientId, ScopeSet, SigningKey};
use crate::config::Settings;
use crate::domain::instant::Instant;
use crate::domain::tenancy::{OdsCode, Role};
use crate::store::{ClientRecord, Store};

/// What went wrong in an admin command; printed to the operator.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error("database: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

async fn open_store(settings: &Settings) -> Result<Store, AdminError> {
    let url = settings.database().map_err(|e| AdminError::Invalid(e.to_string()))?;
    Ok(Store::connect(&url, &settings.pool()).await?)
}

/// A client registration as given on the command line, checked before it is stored.
pub struct NewClient {
    pub client_id: String,
    pub organization: String,
    pub role: String,
    pub jwks_file: Option<PathBuf>,
    pub jwks_url: Option<String>,
    pub scopes: String,
}

impl NewClient {
    fn into_record(self) -> Result<ClientRecord, AdminError> {
        let invalid = |e: &dyn std::fmt::Display| AdminError::Invalid(e.to_string());
        ClientId::parse(&self.client_id).map_err(|e| invalid(&e))?;
        let organization = OdsCode::parse(&self.organization).map_err(|e| invalid(&e))?;
        let role: Role = self.role.parse().map_err(|e| invalid(&e))?;
        ScopeSet::parse(&self.scopes).map_err(|e| invalid(&e))?;
        let jwks = match (&self.jwks_file, &self.jwks_url) {
            (Some(path), None) => {
                let text = std::fs::read_to_string(path)?;
                let value: Value = serde_json::from_str(&text)
                    .map_err(|e| AdminError::Invalid(format!("{} is not JSON: {e}", path.display())))?;
                crate::auth::Jwks::from_value(&value).map_err(|e| invalid(&e))?;
                Some(value.to_string())
            }
            (None, Some(url)) => {
                if !url.starts_with("https://") {
                    return Err(AdminError::Invalid("a JWKS URL must be https".into()));
                }
                None
            }
            _ => return Err(AdminError::Invalid("give exactly one of --jwks-file and --jwks-url".into())),
        };
        Ok(ClientRecord {
            client_id: self.client_id,
            organization: organization.as_str().to_owned(),
            role: role.as_str().to_owned(),
            jwks,
            jwks_url: self.jwks_url,
            scopes: self.scopes,
            created_at: Instant::now(),
        })
    }
}

/// `linkbridge clients add`.
pub async fn add_client(settings: &Settings, client: NewClient) -> Result<String, AdminError> {
    let record = client.into_record()?;
    let store = open_store(settings).await?;
    store.upsert_client(&record).await?;
    store.close().await;
    Ok(format!(
        "registered {} ({} {}) with scopes '{}'",
        record.client_id, record.role, record.organization, record.scopes
    ))
}

/// `linkbridge clients list`.
pub async fn list_clients(settings: &Settings) -> Result<String, AdminError> {
    let store = open_store(settings).await?;
    let clients = store.list_clients().await?;
    store.close().await;
    let mut out = String::from("client_id\torganization\trole\tkeys\tscopes\n");
    for c in clients {
        let keys = c.jwks_url.clone().unwrap_or_else(|| "inline JWKS".into());
        out.push_str(&format!("{}\t{}\t{}\t{}\t{}\n", c.client_id, c.organization, c.role, keys, c.scopes));
    }
    Ok(out)
}

/// `linkbridge clients remove`.
pub async fn remove_client(settings: &Settings, client_id: &str) -> Result<String, AdminError> {
    let store = open_store(settings).await?;
    let removed = store.remove_client(client_id).await?;
    store.close().await;
    if removed {
        Ok(format!("removed {client_id}"))
    } else {
        Err(AdminError::Invalid(format!("no client {client_id} is registered")))
    }
}

/// `linkbridge keys rotate`.
pub fn rotate_keys(settings: &Settings) -> Result<String, AdminError> {
    let kid = crate::auth::keys::rotate(&settings.data_dir).map_err(|e| AdminError::Invalid(e.to_string()))?;
    Ok(format!(
        "new signing key {kid} written; restart every replica to sign with it, and delete the old key file \
         once tokens signed with it have expired (5 minutes)"
    ))
}

/// The demo systems: a GP practice and a CLW service.
const DEMO_CLIENTS: [(&str, &str, &str); 2] =
    [("demo-gp", "DEMOGP1", "referrer"), ("demo-clw", "DEMOCLW1", "performer")];

fn demo_key_path(settings: &Settings, client_id: &str) -> PathBuf {
    settings.data_dir.join("demo-clients").join(format!("{client_id}.pem"))
}

fn write_private(path: &Path, contents: &str) -> Result<(), AdminError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, contents)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// `linkbridge demo setup`: registers a demo GP system and a demo CLW tool with freshly
/// generated keys (private keys kept in the data directory) and says what to do next.
pub async fn demo_setup(settings: &Settings) -> Result<String, AdminError> {
    let store = open_store(settings).await?;
    for (client_id, ods, role) in DEMO_CLIENTS {
        let key = SigningKey::generate().map_err(|e| AdminError::Invalid(e.to_string()))?;
        let pem = key.to_pkcs8_pem().map_err(|e| AdminError::Invalid(e.to_string()))?;
        write_private(&demo_key_path(settings, client_id), pem.expose_secret())?;
        store
            .upsert_client(&ClientRecord {
                client_id: client_id.to_owned(),
                organization: ods.to_owned(),
                role: role.to_owned(),
                jwks: Some(json!({"keys": [key.public_jwk()]}).to_string()),
                jwks_url: None,
                scopes: "system/*.cruds".to_owned(),
                created_at: Instant::now(),
            })
            .await?;
    }
    store.close().await;
    Ok(format!(
        "registered demo-gp (referrer, ODS DEMOGP1) and demo-clw (performer, ODS DEMOCLW1);\n\
         their private keys are in {}.\n\
         With the server running, get an access token with:\n  \
         TOKEN=$(linkbridge demo token demo-gp)\n  \
         curl -H \"Authorization: Bearer $TOKEN\" {}/Patient/_history",
        settings.data_dir.join("demo-clients").display(),
        settings.local_server_url().unwrap_or_else(|_| "http://127.0.0.1:8080".to_owned()),
    ))
}

/// Registers the demo clients unless both already have their keys in the data directory.
pub async fn ensure_demo_clients(settings: &Settings) -> Result<(), AdminError> {
    if DEMO_CLIENTS.iter().all(|(client_id, _, _)| demo_key_path(settings, client_id).exists()) {
        return Ok(());
    }
    demo_setup(settings).await.map(drop)
}

/// `linkbridge demo token <client>`: signs a client assertion with the demo client's key and
/// asks the running server's token endpoint for an access token, exactly as a real client
/// system would (SMART Backend Services).
pub async fn demo_token(settings: &Settings, client_id: &str, server: &str, scope: &str) -> Result<String, AdminError> {
    let pem = std::fs::read_to_string(demo_key_path(settings, client_id))
        .map_err(|_| AdminError::Invalid(format!("no demo key for {client_id}; run `linkbridge demo setup` first")))?;
    let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| AdminError::Invalid(e.to_string()))?;
    let token_url = format!("{}/auth/token", server.trim_end_matches('/'));
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384);
    header.kid = Some(key.kid().to_owned());
    header.typ = Some("JWT".to_owned());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = json!({
        "iss": client_id, "sub": client_id, "aud": token_url,
        "iat": now, "exp": now + 240, "jti": uuid::Uuid::new_v4().to_string(),
    });
    let encoding =
        jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| AdminError::Invalid(e.to_string()))?;
    let assertion =
        jsonwebtoken::encode(&header, &claims, &encoding).map_err(|e| AdminError::Invalid(e.to_string()))?;
    let response = reqwest::Client::new()
        .post(&token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", scope),
            ("client_assertion_type", crate::service::auth::JWT_BEARER_ASSERTION),
            ("client_assertion", assertion.as_str()),
        ])
        .send()
        .await
        .map_err(|e| AdminError::Invalid(format!("cannot reach {token_url}: {e}")))?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|e| AdminError::Invalid(e.to_string()))?;
    match body.get("access_token").and_then(Value::as_str) {
        Some(token) if status.is_success() => Ok(token.to_owned()),
        _ => Err(AdminError::Invalid(format!("token endpoint answered {status}: {body}"))),
    }
}
