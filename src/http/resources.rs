//! Handlers of the instance and type interactions of R4 http.html.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};

use super::bundle::history_bundle;
use super::error::ApiError;
use super::negotiate::{body_format, parse_resource, read_body, render_resource_text, rendering, require_content_type};
use super::state::{AppState, Caller};
use crate::auth::Interaction;
use crate::domain::ids::{ResourceId, VersionId};
use crate::domain::instant::Instant;
use crate::domain::outcome::{operation_outcome, Issue, IssueCode, Severity};
use crate::domain::resource_type::ResourceType;
use crate::domain::versions::{HistoryQuery, StoredVersion};
use crate::service::idempotency::RequestKey;
use crate::service::resources::{CreateOutcome, WriteConditions};

pub(super) fn resource_type(raw: &str) -> Result<ResourceType, ApiError> {
    ResourceType::parse(raw).map_err(|e| ApiError::UnsupportedType(e.0))
}

fn resource_id(raw: &str) -> Result<ResourceId, ApiError> {
    ResourceId::parse(raw).map_err(|e| ApiError::bad_request(IssueCode::Invalid, e.to_string()))
}

fn if_match(req: &HttpRequest) -> Result<Option<VersionId>, ApiError> {
    req.headers()
        .get(header::IF_MATCH)
        .map(|value| {
            value.to_str().ok().and_then(|v| VersionId::parse_etag(v).ok()).ok_or_else(|| {
                ApiError::bad_request(IssueCode::Invalid, "If-Match must be a version ETag such as W/\"3\"")
            })
        })
        .transpose()
}

/// `Prefer: return=…` (R4 http.html#ops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReturnPreference {
    Minimal,
    Representation,
    OperationOutcome,
}

fn return_preference(req: &HttpRequest) -> ReturnPreference {
    let prefer = req.headers().get_all("Prefer").filter_map(|v| v.to_str().ok());
    for value in prefer {
        for token in value.split(',').map(str::trim) {
            match token {
                "return=minimal" => return ReturnPreference::Minimal,
                "return=OperationOutcome" => return ReturnPreference::OperationOutcome,
                "return=representation" => return ReturnPreference::Representation,
                _ => {}
            }
        }
    }
    ReturnPreference::Representation
}

/// The `X-Request-ID` de-duplication key of a write, if the client sent one (BaRS).
pub(super) fn request_key(
    req: &HttpRequest,
    principal: &crate::domain::tenancy::Principal,
    body: &[u8],
) -> Result<Option<RequestKey>, ApiError> {
    let Some(value) = req.headers().get("X-Request-ID") else { return Ok(None) };
    let raw = value.to_str().map_err(|_| ApiError::bad_request(IssueCode::Invalid, "X-Request-ID must be a UUID"))?;
    let key = RequestKey::new(principal, raw, &[req.method().as_str().as_bytes(), req.path().as_bytes(), body])?;
    Ok(Some(key))
}

/// A response for one stored version, with the headers R4 http.html asks for.
fn version_response(
    req: &HttpRequest,
    state: &AppState,
    status: StatusCode,
    version: &StoredVersion,
    with_location: bool,
) -> Result<HttpResponse, ApiError> {
    let render = rendering(req)?;
    let mut response = HttpResponse::build(status);
    response
        .insert_header((header::ETAG, version.version.etag()))
        .insert_header((header::LAST_MODIFIED, version.last_updated.to_http_date()));
    if with_location {
        response.insert_header((
            header::LOCATION,
            format!("{}/{}/{}/_history/{}", state.base_url, version.resource_type, version.id, version.version),
        ));
    }
    if status == StatusCode::OK && req.method() == actix_web::http::Method::GET {
        let (text, content_type) = render_resource_text(render, &version.body)?;
        return Ok(response.content_type(content_type).body(text));
    }
    match return_preference(req) {
        ReturnPreference::Minimal => Ok(response.finish()),
        ReturnPreference::Representation => {
            let (text, content_type) = render_resource_text(render, &version.body)?;
            Ok(response.content_type(content_type).body(text))
        }
        ReturnPreference::OperationOutcome => {
            let outcome = operation_outcome(&[Issue::error(
                IssueCode::Informational,
                format!("{}/{} version {} stored", version.resource_type, version.id, version.version),
            )
            .with_severity(Severity::Information)]);
            let (text, content_type) = render_resource_text(render, &outcome.to_string())?;
            Ok(response.content_type(content_type).body(text))
        }
    }
}

/// `POST [type]` (with optional `If-None-Exist`).
pub async fn create(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let resource_type = resource_type(&path)?;
    rendering(&req)?;
    let principal = caller.require(resource_type, Interaction::Create)?;
    let format = body_format(&req)?;
    let bytes = read_body(payload, state.max_body_bytes).await?;
    let request_key = request_key(&req, principal, &bytes)?;
    let body = parse_resource(format, &bytes)?;
    let if_none_exist = req.headers().get("If-None-Exist").map(|v| v.to_str().unwrap_or_default().to_owned());
    let outcome = state
        .resources
        .create_resource(principal, resource_type, body, if_none_exist.as_deref(), request_key.as_ref())
        .await?;
    match outcome {
        CreateOutcome::Created(version) => version_response(&req, &state, StatusCode::CREATED, &version, true),
        CreateOutcome::Existing(version) => version_response(&req, &state, StatusCode::OK, &version, true),
    }
}

/// `GET [type]/[id]`.
pub async fn read(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let (resource_type, id) = (resource_type(&path.0)?, resource_id(&path.1)?);
    rendering(&req)?;
    let principal = caller.require(resource_type, Interaction::Read)?;
    let version = state.resources.read_resource(principal, resource_type, &id).await?;
    version_response(&req, &state, StatusCode::OK, &version, false)
}

/// `GET [type]/[id]/_history/[vid]`.
pub async fn vread(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let (resource_type, id) = (resource_type(&path.0)?, resource_id(&path.1)?);
    let version = VersionId::parse(&path.2).map_err(|e| ApiError::bad_request(IssueCode::Invalid, e.to_string()))?;
    rendering(&req)?;
    let principal = caller.require(resource_type, Interaction::Read)?;
    let found = state.resources.vread_resource(principal, resource_type, &id, version).await?;
    version_response(&req, &state, StatusCode::OK, &found, false)
}

/// `PUT [type]/[id]` (with optional `If-Match`).
pub async fn update(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let (resource_type, id) = (resource_type(&path.0)?, resource_id(&path.1)?);
    rendering(&req)?;
    let principal = caller.require(resource_type, Interaction::Update)?;
    let format = body_format(&req)?;
    let bytes = read_body(payload, state.max_body_bytes).await?;
    let conditions = WriteConditions { if_match: if_match(&req)?, request: request_key(&req, principal, &bytes)? };
    let body = parse_resource(format, &bytes)?;
    let version = state.resources.update_resource(principal, resource_type, &id, body, &conditions).await?;
    version_response(&req, &state, StatusCode::OK, &version, false)
}

/// `PATCH [type]/[id]` with `application/json-patch+json`.
pub async fn patch(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let (resource_type, id) = (resource_type(&path.0)?, resource_id(&path.1)?);
    rendering(&req)?;
    require_content_type(
        &req,
        "application/json-patch+json",
        "PATCH takes a JSON Patch document (Content-Type: application/json-patch+json)",
    )?;
    let principal = caller.require(resource_type, Interaction::Update)?;
    let bytes = read_body(payload, state.max_body_bytes).await?;
    let conditions = WriteConditions { if_match: if_match(&req)?, request: request_key(&req, principal, &bytes)? };
    let patch: json_patch::Patch =
        crate::fhir::json::from_slice_strict(&bytes).and_then(serde_json::from_value).map_err(|e| {
            ApiError::bad_request(IssueCode::Structure, format!("the body is not a JSON Patch document: {e}"))
        })?;
    let version = state.resources.patch_resource(principal, resource_type, &id, &patch, &conditions).await?;
    version_response(&req, &state, StatusCode::OK, &version, false)
}

/// `DELETE [type]/[id]` (with optional `If-Match`).
pub async fn delete(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let (resource_type, id) = (resource_type(&path.0)?, resource_id(&path.1)?);
    let principal = caller.require(resource_type, Interaction::Delete)?;
    let conditions = WriteConditions { if_match: if_match(&req)?, request: request_key(&req, principal, &[])? };
    state.resources.delete_resource(principal, resource_type, &id, &conditions).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Query parameters of the history interactions.
#[derive(Debug, serde::Deserialize)]
pub struct HistoryParams {
    #[serde(rename = "_since")]
    since: Option<String>,
    #[serde(rename = "_count")]
    count: Option<String>,
    /// Server-issued paging cursor (position in the change sequence).
    #[serde(rename = "_cursor")]
    cursor: Option<String>,
}

fn history_query(params: &HistoryParams, state: &AppState) -> Result<HistoryQuery, ApiError> {
    let since = params
        .since
        .as_deref()
        .map(|raw| {
            Instant::parse_rfc3339(raw).ok_or_else(|| {
                ApiError::bad_request(
                    IssueCode::Invalid,
                    format!("_since '{raw}' is not an instant (e.g. 2026-11-23T10:00:00Z)"),
                )
            })
        })
        .transpose()?;
    let count = match params.count.as_deref() {
        None => state.default_page_size,
        Some(raw) => raw
            .parse::<u32>()
            .map_err(|_| ApiError::bad_request(IssueCode::Invalid, format!("_count '{raw}' is not a whole number")))?
            .min(state.max_page_size),
    };
    let before_seq = params
        .cursor
        .as_deref()
        .map(|raw| raw.parse::<i64>().map_err(|_| ApiError::bad_request(IssueCode::Invalid, "invalid _cursor")))
        .transpose()?;
    Ok(HistoryQuery { since, before_seq, count })
}

fn history_response(
    req: &HttpRequest,
    state: &AppState,
    params: &HistoryParams,
    query: &HistoryQuery,
    versions: &[StoredVersion],
) -> Result<HttpResponse, ApiError> {
    let render = rendering(req)?;
    let path = format!("{}{}", state.base_url, req.path());
    let mut base_params = Vec::new();
    if let Some(since) = &params.since {
        base_params
            .push(format!("_since={}", url::form_urlencoded::byte_serialize(since.as_bytes()).collect::<String>()));
    }
    base_params.push(format!("_count={}", query.count));
    let mut self_params = base_params.clone();
    if let Some(cursor) = query.before_seq {
        self_params.push(format!("_cursor={cursor}"));
    }
    let mut links = vec![("self", format!("{path}?{}", self_params.join("&")))];
    if versions.len() as u32 == query.count && query.count > 0 {
        if let Some(last) = versions.last() {
            let mut next_params = base_params;
            next_params.push(format!("_cursor={}", last.change_seq));
            links.push(("next", format!("{path}?{}", next_params.join("&"))));
        }
    }
    let bundle = history_bundle(&state.base_url, versions, &links);
    let (text, content_type) = render_resource_text(render, &bundle)?;
    Ok(HttpResponse::Ok().content_type(content_type).body(text))
}

/// `GET [type]/_history`.
pub async fn history_type(
    req: HttpRequest,
    path: web::Path<String>,
    params: web::Query<HistoryParams>,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let resource_type = resource_type(&path)?;
    rendering(&req)?;
    let query = history_query(&params, &state)?;
    let principal = caller.require(resource_type, Interaction::Search)?;
    let versions = state.resources.history(principal, resource_type, None, &query).await?;
    history_response(&req, &state, &params, &query, &versions)
}

/// `GET [type]/[id]/_history`.
pub async fn history_instance(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    params: web::Query<HistoryParams>,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let (resource_type, id) = (resource_type(&path.0)?, resource_id(&path.1)?);
    rendering(&req)?;
    let query = history_query(&params, &state)?;
    let principal = caller.require(resource_type, Interaction::Read)?;
    let versions = state.resources.history(principal, resource_type, Some(&id), &query).await?;
    history_response(&req, &state, &params, &query, &versions)
}
