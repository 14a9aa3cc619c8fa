//! `/metrics` and the middleware that times every request for it.

use std::time::Instant as Clock;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};

use super::error::ApiError;
use super::state::AppState;
use crate::domain::resource_type::ResourceType;

/// Times the request and counts it under its route template. A path that matches no route is
/// counted as `unmatched`, so random URLs cannot grow the label set.
pub async fn observe_request(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Clock::now();
    let metrics = req.app_data::<web::Data<AppState>>().map(|state| state.metrics.clone());
    let method = req.method().clone();
    let response = next.call(req).await?;
    if let Some(metrics) = metrics {
        let request = response.request();
        let route = route_label(request.match_pattern().as_deref(), request.match_info().get("type"), request.path());
        metrics.observe_request(route, method.as_str(), response.status().as_u16(), started.elapsed().as_secs_f64());
    }
    Ok(response)
}

/// The route template with a served resource type written in (`/Task/{id}`), so that each
/// type's traffic is seen apart; anything else keeps its placeholder.
fn route_label(pattern: Option<&str>, type_segment: Option<&str>, path: &str) -> String {
    let Some(pattern) = pattern else {
        return "unmatched".to_owned();
    };
    let Some(start) = pattern.find("{type") else {
        return pattern.to_owned();
    };
    let end = pattern[start..].find('}').map_or(pattern.len(), |i| start + i + 1);
    // A request refused before routing (no token) has no match info: the type is the first
    // path segment.
    let type_name = type_segment.or_else(|| path.split('/').nth(1)).unwrap_or_default();
    let known = ResourceType::parse(type_name).is_ok() || super::conformance::CONFORMANCE_TYPES.contains(&type_name);
    let written = if known { type_name } else { "{type}" };
    format!("{}{written}{}", &pattern[..start], &pattern[end..])
}

/// `GET /metrics`: Prometheus text format. Served without a token (it holds counts only, no
/// identifiers); keep it off the public side of the load balancer.
pub async fn scrape(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let snapshot = state.health.metrics_snapshot().await?;
    let text = state
        .metrics
        .render(&snapshot)
        .map_err(|_| ApiError::Unavailable("the metrics could not be rendered".into()))?;
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(text))
}

#[cfg(test)]
mod tests {
    use super::route_label;

    #[test]
    fn route_labels_name_served_types_and_nothing_a_caller_can_vary() {
        assert_eq!(route_label(Some("/{type}/{id}"), Some("Task"), "/Task/abc"), "/Task/{id}");
        assert_eq!(route_label(Some("/{type}/{id}"), None, "/Task/abc"), "/Task/{id}");
        assert_eq!(route_label(Some("/{type}"), Some("Made-Up"), "/Made-Up"), "/{type}");
        assert_eq!(
            route_label(Some("/{type:StructureDefinition|ValueSet|CodeSystem}/{id}"), Some("ValueSet"), "/ValueSet/x"),
            "/ValueSet/{id}"
        );
        assert_eq!(route_label(Some("/metadata"), None, "/metadata"), "/metadata");
        assert_eq!(route_label(None, None, "/random/stuff"), "unmatched");
    }
}
