//! `GET [type]?…` and `POST [type]/_search` (R4 http.html#search, search.html): the
//! parameters in, a searchset Bundle out, built from the stored JSON text.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::error::ApiError;
use super::negotiate::{read_body, render_resource_text, rendering};
use super::resources::resource_type;
use super::state::{AppState, Caller};
use crate::auth::Interaction;
use crate::domain::instant::Instant;
use crate::domain::resource_type::ResourceType;
use crate::domain::search_query::{Cursor, SummaryMode};
use crate::domain::versions::StoredVersion;
use crate::service::search::{PageLimits, SearchRequest, SearchResult};

/// `GET [type]?…` (and `GET [type]/_search?…`).
pub async fn search_get(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let params = form_pairs(req.query_string().as_bytes());
    search(&req, &path, params, &state, &caller).await
}

/// `POST [type]/_search` with an `application/x-www-form-urlencoded` body, whose parameters
/// are added to those of the URL (R4 http.html#search).
pub async fn search_post(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    // An unknown type is refused as such, whatever the body.
    resource_type(&path)?;
    super::negotiate::require_content_type(
        &req,
        "application/x-www-form-urlencoded",
        "POST _search takes its parameters as application/x-www-form-urlencoded",
    )?;
    let body = read_body(payload, state.max_body_bytes).await?;
    let mut params = form_pairs(req.query_string().as_bytes());
    params.extend(form_pairs(&body));
    search(&req, &path, params, &state, &caller).await
}

fn form_pairs(bytes: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(bytes).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

/// Strict handling (R4 search.html#errors) unless the request says `Prefer: handling=lenient`:
/// an unknown parameter a client believed filtered its search must not widen it silently.
fn strict_handling(req: &HttpRequest) -> bool {
    !req.headers()
        .get_all("Prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(&[',', ';']))
        .any(|token| token.trim() == "handling=lenient")
}

async fn search(
    req: &HttpRequest,
    type_name: &str,
    params: Vec<(String, String)>,
    state: &AppState,
    caller: &Caller,
) -> Result<HttpResponse, ApiError> {
    let resource_type = resource_type(type_name)?;
    let principal = caller.require(resource_type, Interaction::Search)?;
    let render = rendering(req)?;
    let readable: Vec<ResourceType> =
        ResourceType::ALL.into_iter().filter(|t| caller.allows(t.as_str(), Interaction::Read)).collect();
    let request =
        SearchRequest { params: &params, strict: strict_handling(req), base_url: &state.base_url, readable: &readable };
    let limits = PageLimits { default_count: state.default_page_size, max_count: state.max_page_size };
    let result = state.search.search_resources(principal, resource_type, &request, limits).await?;
    let bundle = searchset_bundle(&state.base_url, &result)?;
    let (text, content_type) = render_resource_text(render, &bundle)?;
    let mut response = HttpResponse::Ok().content_type(content_type).body(text);
    // The audit of this search names the patients of its page (`http::audit`).
    response.extensions_mut().insert(super::audit::SearchAudit::of(&result, &params));
    Ok(response)
}

fn link(relation: &str, url: String) -> Value {
    json!({"relation": relation, "url": url})
}

/// A searchset Bundle (R4 bundle.html, search.html#return): `self`, `next` and `previous`
/// links, the total when known, matches then includes, each resource as stored.
pub fn searchset_bundle(base_url: &str, result: &SearchResult) -> Result<String, ApiError> {
    let path = format!("{base_url}/{}", result.resource_type);
    let url_at = |cursor: Option<&Cursor>| format!("{path}?{}", result.link_query(cursor));
    let mut links = vec![link("self", url_at(result.cursor.as_ref()))];
    if let Some(next) = &result.next {
        links.push(link("next", url_at(Some(next))));
    }
    if let Some(previous) = &result.previous {
        links.push(link("previous", url_at(Some(previous))));
    }
    let mut entries = Vec::with_capacity(result.matches.len() + result.included.len());
    for version in &result.matches {
        entries.push(entry(base_url, version, "match", shape(version, result)?));
    }
    for version in &result.included {
        let body = match result.summary {
            SummaryMode::Data => subset(&version.body, |name| name != "text")?,
            _ => version.body.clone(),
        };
        entries.push(entry(base_url, version, "include", body));
    }
    let total = result.total.map(|t| format!(r#","total":{t}"#)).unwrap_or_default();
    Ok(format!(
        r#"{{"resourceType":"Bundle","id":{},"meta":{{"lastUpdated":"{}"}},"type":"searchset"{total},"link":{}{}}}"#,
        Value::String(uuid::Uuid::new_v4().to_string()),
        Instant::now().to_fhir(),
        Value::Array(links),
        super::bundle::entries_member(&entries)
    ))
}

fn entry(base_url: &str, version: &StoredVersion, mode: &str, body: String) -> String {
    let full_url = format!("{base_url}/{}/{}", version.resource_type, version.id);
    format!(r#"{{"fullUrl":{},"resource":{body},"search":{{"mode":"{mode}"}}}}"#, Value::String(full_url))
}

/// The body of a match as `_elements` and `_summary=data` ask: served as stored unless the
/// client asked for a subset.
fn shape(version: &StoredVersion, result: &SearchResult) -> Result<String, ApiError> {
    match (&result.elements, result.summary) {
        (Some(elements), _) => subset(&version.body, |name| elements.iter().any(|e| e == name)),
        (None, SummaryMode::Data) => subset(&version.body, |name| name != "text"),
        (None, _) => Ok(version.body.clone()),
    }
}

/// Keeps `resourceType`, `id`, `meta`, the mandatory elements and those `keep` accepts, and
/// marks the result
/// SUBSETTED (R4 search.html#elements: "the server SHOULD mark the resources with the tag
/// SUBSETTED").
fn subset(body: &str, keep: impl Fn(&str) -> bool) -> Result<String, ApiError> {
    let mut value: Value =
        serde_json::from_str(body).map_err(|e| ApiError::Internal(format!("stored resource is not JSON: {e}")))?;
    if let Value::Object(map) = &mut value {
        let resource_type = map.get("resourceType").and_then(Value::as_str).unwrap_or_default().to_owned();
        map.retain(|name, _| {
            matches!(name.as_str(), "resourceType" | "id" | "meta")
                || keep(name)
                || crate::fhir::is_mandatory_element(&resource_type, name)
        });
        let meta = map.entry("meta").or_insert_with(|| json!({}));
        if let Value::Object(meta) = meta {
            let tags = meta.entry("tag").or_insert_with(|| json!([]));
            if let Value::Array(tags) = tags {
                tags.push(json!({
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                    "code": "SUBSETTED",
                    "display": "subsetted"
                }));
            }
        }
    }
    Ok(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subset_keeps_the_named_elements_and_is_tagged_subsetted() {
        let body = r#"{"resourceType":"Task","id":"t1","meta":{"versionId":"2"},"status":"requested","owner":{"reference":"Organization/o"},"text":{"div":"x"}}"#;
        let got: Value = serde_json::from_str(&subset(body, |n| n == "status").expect("subset")).expect("json");
        assert_eq!(got["status"], "requested", "named element kept");
        assert!(got.get("owner").is_none() && got.get("text").is_none(), "others dropped: {got}");
        assert_eq!(got["id"], "t1", "id kept");
        assert_eq!(got["meta"]["versionId"], "2", "meta kept");
        assert_eq!(got["meta"]["tag"][0]["code"], "SUBSETTED", "marked");
    }

    #[test]
    fn a_subset_keeps_the_mandatory_elements_whatever_was_asked() {
        let body = r#"{"resourceType":"Consent","id":"c1","status":"active","scope":{"text":"privacy"},"category":[{"text":"consent"}],"dateTime":"2026-11-23"}"#;
        let got: Value = serde_json::from_str(&subset(body, |n| n == "status").expect("subset")).expect("json");
        assert!(
            got.get("scope").is_some() && got.get("category").is_some(),
            "Consent.scope and .category are 1..: {got}"
        );
        assert!(got.get("dateTime").is_none(), "optional and not asked for: {got}");
    }
}
