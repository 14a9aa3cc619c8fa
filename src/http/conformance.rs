//! The conformance package, readable: `GET /StructureDefinition/{id}`, `/ValueSet/{id}`,
//! `/CodeSystem/{id}`, and the type searches (all, or by `url`). The content is public, but it
//! sits behind the token gate like every FHIR endpoint (only discovery is open), so any
//! authenticated client may read it whatever its scopes.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::error::ApiError;
use super::negotiate::ok_resource;
use super::state::{AppState, Caller};

/// The conformance resource types the package holds.
pub const CONFORMANCE_TYPES: [&str; 3] = ["StructureDefinition", "ValueSet", "CodeSystem"];

fn conformance_type(raw: &str) -> Result<&'static str, ApiError> {
    CONFORMANCE_TYPES
        .into_iter()
        .find(|t| *t == raw)
        .ok_or_else(|| ApiError::UnsupportedType(raw.chars().take(64).collect()))
}

/// `GET /{conformance type}/{id}`.
pub async fn read(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
    _caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let resource_type = conformance_type(&path.0)?;
    let package = state.resources.profiles().validator().package();
    let resource = package.find(resource_type, &path.1).ok_or_else(|| {
        ApiError::Service(crate::service::ServiceError::NotFound(format!("{resource_type}/{}", path.1)))
    })?;
    ok_resource(&req, resource)
}

#[derive(Debug, serde::Deserialize)]
pub struct ConformanceQuery {
    url: Option<String>,
}

/// `GET /{conformance type}[?url=]`: a searchset of the package's resources of that type.
pub async fn search(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<ConformanceQuery>,
    state: web::Data<AppState>,
    _caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let resource_type = conformance_type(&path)?;
    let package = state.resources.profiles().validator().package();
    let wanted = query.url.as_deref().map(|url| url.split('|').next().unwrap_or(url));
    let entries: Vec<Value> = package
        .of_type(resource_type)
        .filter(|r| wanted.is_none_or(|url| r.get("url").and_then(Value::as_str) == Some(url)))
        .map(|r| {
            let id = r.get("id").and_then(Value::as_str).unwrap_or_default();
            json!({"fullUrl": format!("{}/{resource_type}/{id}", state.base_url), "resource": r, "search": {"mode": "match"}})
        })
        .collect();
    let mut bundle = json!({"resourceType": "Bundle", "type": "searchset", "total": entries.len()});
    // FHIR JSON has no empty arrays: no matches, no `entry`.
    if !entries.is_empty() {
        bundle["entry"] = Value::Array(entries);
    }
    ok_resource(&req, &bundle)
}
