//! The Subscription operations of the Backport IG (`$status`, `$events`), linkbridge's
//! `$resend`, and the operator's view of the outbox (`/$outbox-status`). Create, read,
//! update and delete of Subscriptions are the generic handlers'.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use super::negotiate::{ok_resource, rendering};
use super::state::{AppState, Caller};
use crate::auth::Interaction;
use crate::domain::ids::ResourceId;
use crate::domain::outcome::{operation_outcome, Issue, IssueCode, Severity};
use crate::domain::resource_type::ResourceType;
use crate::domain::subscriptions::PayloadContent;
use crate::domain::tenancy::Role;
use crate::service::subscriptions::{delivery_parameters, EventRange};

fn subscription_id(raw: &str) -> Result<ResourceId, ApiError> {
    ResourceId::parse(raw).map_err(|e| ApiError::bad_request(IssueCode::Invalid, e.to_string()))
}

/// `GET Subscription/{id}/$status`.
pub async fn status(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let id = subscription_id(&path)?;
    rendering(&req)?;
    let principal = caller.require(ResourceType::Subscription, Interaction::Read)?;
    let bundle = state.resources.subscription_status(principal, &id, &state.base_url).await?;
    ok_resource(&req, &bundle)
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventsQuery {
    events_since_number: Option<i64>,
    events_until_number: Option<i64>,
    content: Option<String>,
}

/// `GET Subscription/{id}/$events?eventsSinceNumber=&eventsUntilNumber=&content=`.
pub async fn events(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<EventsQuery>,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let id = subscription_id(&path)?;
    rendering(&req)?;
    let principal = caller.require(ResourceType::Subscription, Interaction::Read)?;
    let content = query
        .content
        .as_deref()
        .map(|raw| {
            PayloadContent::parse(raw).ok_or_else(|| {
                ApiError::bad_request(IssueCode::Value, "content must be one of empty, id-only, full-resource")
            })
        })
        .transpose()?;
    let range = EventRange { since: query.events_since_number, until: query.events_until_number, content };
    let bundle = state.resources.subscription_events(principal, &id, range, &state.base_url).await?;
    ok_resource(&req, &bundle)
}

/// `POST Subscription/{id}/$resend`: dead notifications are delivered again and a
/// subscription in `error` becomes active.
pub async fn resend(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let id = subscription_id(&path)?;
    rendering(&req)?;
    let principal = caller.require(ResourceType::Subscription, Interaction::Update)?;
    let requeued = state.resources.resend_subscription(principal, &id).await?;
    let outcome = operation_outcome(&[Issue::error(
        IssueCode::Informational,
        format!("{requeued} undelivered notification(s) of Subscription/{id} queued again"),
    )
    .with_severity(Severity::Information)]);
    ok_resource(&req, &outcome)
}

/// `GET /$outbox-status`: outbox depth, oldest pending notification, attempts and failures,
/// for the operator role.
pub async fn outbox_status(
    req: HttpRequest,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    rendering(&req)?;
    if caller.principal.role() != Role::Operator {
        return Err(ApiError::Forbidden("the outbox status is readable by the operator role only".into()));
    }
    let stats = state.resources.outbox_stats().await?;
    ok_resource(&req, &json!({"resourceType": "Parameters", "parameter": delivery_parameters(&stats)}))
}
