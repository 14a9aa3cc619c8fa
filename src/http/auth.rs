//! The authorization server's endpoints and the resource server's gate.
//!
//! Every route except `/metadata`, `/.well-known/*`, `/auth/token`, `/healthz`, `/readyz`,
//! `/metrics`, `/docs` and `/openapi.yaml` passes through [`require_token`]; a request without a valid access token never
//! reaches a handler.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpResponse, ResponseError};
use secrecy::ExposeSecret;
use serde_json::json;

use super::error::ApiError;
use super::state::{AppState, Caller};
use crate::service::auth::{AuthenticationError, TokenRequest, TokenRequestError};

/// Paths served without a token: discovery, the token endpoint itself, probes and docs.
fn is_public(path: &str) -> bool {
    matches!(path, "/metadata" | "/auth/token" | "/healthz" | "/readyz" | "/openapi.yaml" | "/metrics")
        || path.starts_with("/.well-known/")
        || path == "/docs"
        || path.starts_with("/docs/")
}

/// Authenticates the bearer token and puts the [`Caller`] into the request. A refusal is
/// rendered here as a response (not an error) so that the audit layer around it records it.
pub async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if !is_public(req.path()) {
        if let Err(refusal) = authenticate(&req).await {
            return Ok(req.into_response(refusal.error_response()));
        }
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

async fn authenticate(req: &ServiceRequest) -> Result<(), ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::Unauthorized("server misconfigured: no authentication state".into()))?;
    let header_value = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    // The scheme is case-insensitive (RFC 9110 section 11.1).
    let token = crate::auth::access_token::bearer_token(header_value).map_err(|_| {
        state.metrics.token_refused("resource_server", "missing_token");
        ApiError::Unauthorized("an access token is required (Authorization: Bearer ...)".into())
    })?;
    match state.auth.authenticate(token).await {
        Ok((principal, scopes)) => {
            req.extensions_mut().insert(Caller::new(principal, scopes));
            Ok(())
        }
        Err(AuthenticationError::Refused(e)) => {
            tracing::info!(reason = e.reason(), "access token refused");
            state.metrics.token_refused("resource_server", e.reason());
            Err(ApiError::Unauthorized("the access token is not valid".into()))
        }
        Err(AuthenticationError::Unavailable(e)) => {
            tracing::warn!(error = %e, "access token not checked: the client registry is unavailable");
            Err(ApiError::Unavailable("the server cannot check access tokens just now; retry shortly".into()))
        }
    }
}

/// `POST /auth/token` (SMART Backend Services; RFC 6749 section 5 responses).
pub async fn token(state: web::Data<AppState>, form: web::Bytes) -> HttpResponse {
    let request: TokenRequest = serde_urlencoded::from_bytes(&form).unwrap_or_default();
    match state.auth.issue_token(&request).await {
        Ok(issued) => {
            tracing::info!(client_id = request_client_hint(&request), "access token issued");
            HttpResponse::Ok()
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .insert_header((header::PRAGMA, "no-cache"))
                .json(json!({
                    "access_token": issued.access_token().expose_secret(),
                    "token_type": "bearer",
                    "expires_in": issued.expires_in(),
                    "scope": issued.scope().render(),
                }))
        }
        Err(TokenRequestError::Throttled { retry_after_secs }) => {
            tracing::info!(client_id = request_client_hint(&request), "token request throttled");
            state.metrics.token_refused("token_endpoint", "throttled");
            HttpResponse::TooManyRequests()
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .insert_header((header::RETRY_AFTER, retry_after_secs.to_string()))
                .json(json!({
                    "error": "invalid_client",
                    "error_description": format!(
                        "too many failed token requests for this client; retry after {retry_after_secs} s"
                    ),
                }))
        }
        Err(e) => {
            let status = match &e {
                TokenRequestError::Server(store) if store.is_unavailable() => {
                    tracing::warn!(error = %e, "token request failed: the database is unavailable");
                    actix_web::http::StatusCode::SERVICE_UNAVAILABLE
                }
                TokenRequestError::Server(_) => {
                    tracing::error!(error = %e, "token request failed");
                    actix_web::http::StatusCode::INTERNAL_SERVER_ERROR
                }
                _ => {
                    tracing::info!(refusal = %e, "token request refused");
                    let reason = match &e {
                        TokenRequestError::InvalidClient(reason) => reason,
                        other => other.oauth_error(),
                    };
                    state.metrics.token_refused("token_endpoint", reason);
                    actix_web::http::StatusCode::BAD_REQUEST
                }
            };
            let description = match &e {
                TokenRequestError::InvalidRequest(why) => Some((*why).to_owned()),
                TokenRequestError::InvalidScope(why) => Some(why.clone()),
                _ => None,
            };
            let mut body = json!({"error": e.oauth_error()});
            if let (Some(d), Some(map)) = (description, body.as_object_mut()) {
                map.insert("error_description".into(), json!(d));
            }
            let mut response = HttpResponse::build(status);
            if status == actix_web::http::StatusCode::SERVICE_UNAVAILABLE {
                response.insert_header((header::RETRY_AFTER, "5"));
            }
            response.insert_header((header::CACHE_CONTROL, "no-store")).json(body)
        }
    }
}

/// Logs which client asked without trusting it: only the shape-checked, unverified id.
fn request_client_hint(request: &TokenRequest) -> String {
    request
        .client_assertion
        .as_deref()
        .and_then(|a| crate::auth::peek_client_id(a).ok())
        .map(|c| c.as_str().to_owned())
        .unwrap_or_default()
}

/// `GET /.well-known/smart-configuration` (SMART App Launch 2.x, Backend Services).
pub async fn smart_configuration(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "issuer": state.base_url,
        "jwks_uri": format!("{}/.well-known/jwks.json", state.base_url),
        "token_endpoint": state.auth.token_endpoint(),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384", "RS512"],
        "scopes_supported": ["system/*.cruds", "system/*.rs", "system/Task.rus", "system/ServiceRequest.crus", "system/CarePlan.crus", "system/Patient.crus"],
        "capabilities": ["client-confidential-asymmetric", "permission-v2"],
        "code_challenge_methods_supported": ["S256"],
    }))
}

/// `GET /.well-known/jwks.json`: the public keys access tokens are signed with, old ones
/// included while they are rotated out.
pub async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.auth.public_jwks())
}
