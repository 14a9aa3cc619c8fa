//! Probes for load balancers and orchestrators.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::state::AppState;

/// The process is alive and serving HTTP.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(r#"{"status":"ok"}"#)
}

/// The process can read and write its database, so it can take traffic: the database answers
/// and a write could commit now (not a full disk, a read-only file or a standby; see
/// `store::readiness`). A process that can only read is taken out of rotation rather than
/// fail every write it is sent.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let store = state.resources.store();
    // A pooled connection lost since its last use (a restart, terminated backends) is replaced
    // on the next try: only a second failure says the database cannot be reached.
    let reached = match store.ping().await {
        Err(e) if e.is_unavailable() => store.ping().await,
        other => other,
    };
    let checked = match reached {
        Ok(()) => store.check_writable().await.map_err(|e| ("database cannot write", e)),
        Err(e) => Err(("database unreachable", e)),
    };
    match checked {
        Ok(()) => HttpResponse::Ok().content_type("application/json").body(r#"{"status":"ready"}"#),
        Err((status, e)) => {
            tracing::warn!(error = %e, "readiness check failed: {status}");
            HttpResponse::ServiceUnavailable()
                .insert_header(("Retry-After", "5"))
                .content_type("application/json")
                .body(json!({"status": status, "reason": e.to_string()}).to_string())
        }
    }
}
