//! Probes for load balancers and orchestrators.

use actix_web::{web, HttpResponse};

use super::state::AppState;

/// The process is alive and serving HTTP.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(r#"{"status":"ok"}"#)
}

/// The process can reach its database, so it can take traffic.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match state.resources.store().ping().await {
        Ok(()) => HttpResponse::Ok().content_type("application/json").body(r#"{"status":"ready"}"#),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed: database unreachable");
            HttpResponse::ServiceUnavailable()
                .insert_header(("Retry-After", "5"))
                .content_type("application/json")
                .body(r#"{"status":"database unreachable"}"#)
        }
    }
}
