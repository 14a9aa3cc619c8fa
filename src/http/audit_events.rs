//! `GET /AuditEvent` and `GET /AuditEvent/{id}`: the audit trail, for the operator role only.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::error::ApiError;
use super::negotiate::{render_resource_text, rendering};
use super::state::{AppState, Caller};
use crate::auth::Interaction;
use crate::domain::instant::Instant;
use crate::domain::outcome::IssueCode;
use crate::domain::search_params::split_reference;
use crate::domain::tenancy::Role;
use crate::service::audit::AuditPage;

fn operator_only(caller: &Caller, interaction: Interaction) -> Result<(), ApiError> {
    if !caller.allows("AuditEvent", interaction) {
        return Err(ApiError::InsufficientScope("the access token's scopes do not allow reading AuditEvent".into()));
    }
    if caller.principal.role() != Role::Operator {
        return Err(ApiError::Forbidden("the audit trail is readable by the operator role only".into()));
    }
    Ok(())
}

#[derive(Debug, serde::Deserialize)]
pub struct AuditQuery {
    #[serde(rename = "_count")]
    count: Option<u32>,
    #[serde(rename = "_cursor")]
    cursor: Option<i64>,
    /// `entity=Type/id`: events about one resource.
    entity: Option<String>,
}

/// Newest first, paged with a server cursor.
pub async fn search(
    req: HttpRequest,
    query: web::Query<AuditQuery>,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    operator_only(&caller, Interaction::Search)?;
    let render = rendering(&req)?;
    let entity = query
        .entity
        .as_deref()
        .map(|raw| {
            split_reference(raw).ok_or_else(|| ApiError::bad_request(IssueCode::Invalid, "entity must be Type/id"))
        })
        .transpose()?;
    let count = query.count.unwrap_or(state.default_page_size).min(state.max_page_size);
    let page =
        AuditPage { entity: entity.as_ref().map(|(t, i)| (t.as_str(), i.as_str())), before_seq: query.cursor, count };
    let events = state.audit.search_audit_events(page).await?;
    let mut base = format!("{}/AuditEvent?_count={count}", state.base_url);
    if let Some(raw) = &query.entity {
        base.push_str(&format!("&entity={}", url::form_urlencoded::byte_serialize(raw.as_bytes()).collect::<String>()));
    }
    let mut links = vec![json!({"relation": "self", "url": match query.cursor {
        Some(c) => format!("{base}&_cursor={c}"),
        None => base.clone(),
    }})];
    if events.len() as u32 == count && count > 0 {
        if let Some(last) = events.last() {
            links.push(json!({"relation": "next", "url": format!("{base}&_cursor={}", last.seq)}));
        }
    }
    let entries: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                r#"{{"fullUrl":{},"resource":{},"search":{{"mode":"match"}}}}"#,
                Value::String(format!("{}/AuditEvent/{}", state.base_url, e.id)),
                e.body
            )
        })
        .collect();
    let bundle = format!(
        r#"{{"resourceType":"Bundle","type":"searchset","meta":{{"lastUpdated":"{}"}},"link":{}{}}}"#,
        Instant::now().to_fhir(),
        Value::Array(links),
        super::bundle::entries_member(&entries)
    );
    let (text, content_type) = render_resource_text(render, &bundle)?;
    Ok(HttpResponse::Ok().content_type(content_type).body(text))
}

pub async fn read(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    operator_only(&caller, Interaction::Read)?;
    let render = rendering(&req)?;
    let event = state.audit.read_audit_event(&id).await?;
    let (text, content_type) = render_resource_text(render, &event.body)?;
    Ok(HttpResponse::Ok().content_type(content_type).body(text))
}
