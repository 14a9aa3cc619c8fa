//! Probes for load balancers and orchestrators.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::state::AppState;
use crate::service::health::NotReady;

/// The process is alive and serving HTTP.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(r#"{"status":"ok"}"#)
}

/// The process can read and write its database, so it can take traffic
/// (`HealthService::check_readiness`); otherwise 503, and the load balancer tries again.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match state.health.check_readiness().await {
        Ok(()) => HttpResponse::Ok().content_type("application/json").body(r#"{"status":"ready"}"#),
        Err(NotReady { status, reason }) => {
            tracing::warn!(error = %reason, "readiness check failed: {status}");
            HttpResponse::ServiceUnavailable()
                .insert_header(("Retry-After", "5"))
                .content_type("application/json")
                .body(json!({"status": status, "reason": reason}).to_string())
        }
    }
}
