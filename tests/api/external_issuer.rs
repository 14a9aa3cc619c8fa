//! Tokens from an operator's own OAuth server: accepted when they name a registered client
//! whose registration matches the organisation and role they claim; refused otherwise.

use linkbridge::auth::SigningKey;
use linkbridge::config::ExternalIssuerSettings;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fixtures::patient;
use crate::helpers::{spawn_app_with, test_database, test_settings, Db};

pub(crate) const ISSUER: &str = "https://login.board.example";

/// Serves one JSON document to every request on a loopback port.
pub(crate) async fn serve_json(document: Value) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = document.to_string();
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                let _ = socket.read(&mut buffer).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    format!("http://{address}/jwks")
}

pub(crate) fn external_token(
    key: &SigningKey,
    audience: &str,
    client_id: &str,
    organization: &str,
    role: &str,
) -> String {
    let pem = key.to_pkcs8_pem().expect("pem");
    let encoding = jsonwebtoken::EncodingKey::from_ec_pem(pem.expose_secret().as_bytes()).expect("key");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384);
    header.typ = Some("at+jwt".into());
    header.kid = Some(key.kid().to_owned());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = json!({
        "iss": ISSUER, "aud": audience, "sub": client_id, "client_id": client_id,
        "ods": organization, "board_role": role, "scope": "system/*.cruds openid",
        "iat": now, "nbf": now, "exp": now + 120, "jti": uuid::Uuid::new_v4().to_string(),
    });
    jsonwebtoken::encode(&header, &claims, &encoding).expect("sign")
}

#[tokio::test]
async fn an_external_issuers_token_is_accepted_only_when_it_matches_the_registration() {
    let key = SigningKey::generate().expect("key");
    let jwks_url = serve_json(json!({"keys": [key.public_jwk()]})).await;
    let database = test_database(Db::Sqlite).await.expect("sqlite");
    let mut settings = test_settings(&database);
    settings.external_issuer = Some(ExternalIssuerSettings {
        issuer: ISSUER.into(),
        jwks_url,
        organization_claim: "ods".into(),
        role_claim: "board_role".into(),
    });
    let app = spawn_app_with(database, settings).await;

    let cases = [
        ("gp-system", "GP0001", "referrer", 201, "matches the registration"),
        ("gp-system", "GP0002", "referrer", 401, "claims another organisation"),
        ("gp-system", "GP0001", "operator", 401, "claims another role"),
        ("nobody", "GP0001", "referrer", 401, "names no registered client"),
    ];
    for (client_id, organization, role, expected, why) in cases {
        let token = external_token(&key, &app.address, client_id, organization, role);
        let response = app
            .http
            .post(app.url("/Patient"))
            .bearer_auth(token)
            .header("Content-Type", "application/fhir+json")
            .body(patient("9434765919").to_string())
            .send()
            .await
            .expect("post");
        assert_eq!(response.status().as_u16(), expected, "{why}");
    }
    let stranger = SigningKey::generate().expect("key");
    let forged = external_token(&stranger, &app.address, "gp-system", "GP0001", "referrer");
    let response = app.http.get(app.url("/Patient/_history")).bearer_auth(forged).send().await.expect("get");
    assert_eq!(response.status(), 401, "a key the issuer does not publish");
}
