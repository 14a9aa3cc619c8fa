//! Records every access to FHIR data that is not a successful change (those record their own
//! audit event in their transaction): reads, vreads, history, searches, and every refused or
//! failed attempt. The response waits for the record: an access that cannot be audited is not
//! served (fail closed, 503).

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, ResponseError};

use super::error::ApiError;
use super::state::{AppState, Caller};
use crate::domain::audit::{patients_in, AuditAction, AuditAgent, AuditOutcome, AuditRecord};
use crate::service::search::SearchResult;

/// What a search handler tells the audit of the page it answered: the query as asked and the
/// patients whose data the page holds (its Patients, and those its resources' `subject`, `for`
/// or `patient` name), matches and includes alike. Put in the response's extensions; bounded
/// by the page.
#[derive(Debug, Clone)]
pub struct SearchAudit {
    query: String,
    patients: Vec<String>,
}

impl SearchAudit {
    pub fn of(result: &SearchResult, params: &[(String, String)]) -> Self {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        query.extend_pairs(params);
        let patients = result
            .matches
            .iter()
            .chain(&result.included)
            .flat_map(|v| patients_in(v.resource_type.as_str(), v.id.as_str(), &v.body))
            .collect();
        SearchAudit { query: format!("{}?{}", result.resource_type, query.finish()), patients }
    }
}

/// Names the interaction behind a route pattern and method (R4 restful-interaction codes).
fn interaction(pattern: &str, method: &Method) -> Option<(AuditAction, &'static str)> {
    let read = *method == Method::GET;
    Some(match pattern {
        "/{type}/{id}" if read => (AuditAction::Read, "read"),
        "/{type}/{id}" if *method == Method::PUT => (AuditAction::Update, "update"),
        "/{type}/{id}" if *method == Method::PATCH => (AuditAction::Update, "patch"),
        "/{type}/{id}" if *method == Method::DELETE => (AuditAction::Delete, "delete"),
        "/{type}/{id}/_history/{vid}" if read => (AuditAction::Read, "vread"),
        "/{type}/{id}/_history" if read => (AuditAction::Read, "history-instance"),
        "/{type}/_history" if read => (AuditAction::Read, "history-type"),
        "/{type}" if read => (AuditAction::Execute, "search-type"),
        "/{type}/_search" => (AuditAction::Execute, "search-type"),
        "/{type}" if *method == Method::POST => (AuditAction::Create, "create"),
        "/" if *method == Method::POST => (AuditAction::Execute, "transaction"),
        "/Subscription/{id}/$status" => (AuditAction::Execute, "operation-status"),
        "/Subscription/{id}/$events" => (AuditAction::Execute, "operation-events"),
        "/Subscription/{id}/$resend" => (AuditAction::Execute, "operation-resend"),
        _ => return None,
    })
}

pub async fn audit_access(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let method = req.method().clone();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let response = next.call(req).await?;
    let Some(state) = state else {
        return Ok(response.map_into_boxed_body());
    };
    let request = response.request();
    let Some((action, name)) = request.match_pattern().as_deref().and_then(|p| interaction(p, &method)) else {
        return Ok(response.map_into_boxed_body());
    };
    let status = response.status();
    let is_change =
        matches!(action, AuditAction::Create | AuditAction::Update | AuditAction::Delete) || name == "transaction";
    if is_change && status.is_success() {
        // Recorded inside the change's own transaction.
        return Ok(response.map_into_boxed_body());
    }
    let agent = request
        .extensions()
        .get::<Caller>()
        .map(|c| AuditAgent::of(&c.principal))
        .unwrap_or_else(AuditAgent::unauthenticated);
    // A request refused before routing (no token) has no match info; the path says the same.
    let mut segments = request.path().split('/').skip(1);
    let entity_type = request.match_info().get("type").or(segments.next()).filter(|t| !t.is_empty()).map(str::to_owned);
    let entity_id = request
        .match_info()
        .get("id")
        .or(segments.next())
        .filter(|i| !i.starts_with('_') && !i.is_empty())
        .map(str::to_owned);
    let mut record = AuditRecord::new(
        agent,
        action,
        name,
        AuditOutcome::from_status(status.as_u16()),
        entity_type.as_deref(),
        entity_id.as_deref(),
    );
    if let Some(search) = response.response().extensions().get::<SearchAudit>() {
        record = record.with_search(search.query.clone(), search.patients.clone());
    }
    match state.audit.record_access(record).await {
        Ok(()) => Ok(response.map_into_boxed_body()),
        Err(e) => {
            tracing::error!(error = %e, "audit record could not be written; refusing to serve the access");
            let (req, _) = response.into_parts();
            let refusal = ApiError::Unavailable("the access could not be audited; retry shortly".into());
            Ok(ServiceResponse::new(req, refusal.error_response()))
        }
    }
}
