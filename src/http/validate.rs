//! `POST [type]/$validate` (R4 resource-operation-validate): checks a resource as a write
//! would, against its profiles or the one named by `profile`, and writes nothing.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use super::error::ApiError;
use super::negotiate::{body_format, parse_resource, read_body, render_resource_text, rendering};
use super::resources::resource_type;
use super::state::{AppState, Caller};
use crate::auth::Interaction;
use crate::domain::outcome::{operation_outcome, Issue, IssueCode, Severity};
use crate::service::ingest::validate_resource;

#[derive(Debug, serde::Deserialize)]
pub struct ValidateQuery {
    /// The canonical URL of a profile of the package to validate against.
    profile: Option<String>,
}

/// The body is the resource itself, or a Parameters resource with a `resource` parameter
/// (and optionally `profile`, which the query parameter overrides).
fn resource_and_profile(body: Value, query_profile: Option<String>) -> Result<(Value, Option<String>), ApiError> {
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Ok((body, query_profile));
    }
    let parameters = body.get("parameter").and_then(Value::as_array).cloned().unwrap_or_default();
    let named = |name: &str| parameters.iter().find(|p| p.get("name").and_then(Value::as_str) == Some(name));
    let resource = named("resource").and_then(|p| p.get("resource")).cloned().ok_or_else(|| {
        ApiError::bad_request(
            IssueCode::Required,
            "a Parameters body needs a 'resource' parameter holding the resource",
        )
    })?;
    let body_profile = named("profile").and_then(|p| p.get("valueUri").or_else(|| p.get("valueCanonical")));
    let profile = query_profile.or_else(|| body_profile.and_then(Value::as_str).map(str::to_owned));
    Ok((resource, profile))
}

/// Always 200 with an OperationOutcome when the resource could be read: its issues, or one
/// informational issue saying there are none.
pub async fn validate(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<ValidateQuery>,
    payload: web::Payload,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let resource_type = resource_type(&path)?;
    let render = rendering(&req)?;
    // Validation is a dry run of a write: any write permission on the type allows it.
    if !caller.allows(resource_type.as_str(), Interaction::Create)
        && !caller.allows(resource_type.as_str(), Interaction::Update)
    {
        return Err(ApiError::InsufficientScope(format!(
            "the access token's scopes do not allow writing {resource_type}, so they do not allow validating it"
        )));
    }
    let format = body_format(&req)?;
    let bytes = read_body(payload, state.max_body_bytes).await?;
    let body = parse_resource(format, &bytes)?;
    let (resource, profile) = resource_and_profile(body, query.into_inner().profile)?;
    let mut issues = validate_resource(&resource, resource_type, state.resources.profiles(), profile.as_deref())?;
    if issues.is_empty() {
        issues.push(
            Issue::error(IssueCode::Informational, "no issues: the resource conforms")
                .with_severity(Severity::Information),
        );
    }
    let (text, content_type) = render_resource_text(render, &operation_outcome(&issues).to_string())?;
    Ok(HttpResponse::Ok().content_type(content_type).body(text))
}
