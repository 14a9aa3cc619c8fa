//! Content negotiation (R4 http.html#mime): `_format`, `Accept`, `Content-Type`, `_pretty`,
//! and reading FHIR bodies in JSON or XML.

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use futures::StreamExt;
use serde_json::Value;

use super::error::ApiError;
use crate::domain::outcome::IssueCode;

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";
pub const FHIR_XML: &str = "application/fhir+xml; charset=utf-8";

/// A wire format linkbridge speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

/// How to render a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rendering {
    pub format: Format,
    pub pretty: bool,
}

/// Maps a MIME type or `_format` value to a format. `fhirVersion` other than 4.0 is refused
/// (R4 http.html#version-parameter).
fn format_of(mime: &str) -> Result<Option<Format>, ()> {
    let mut parts = mime.split(';').map(str::trim);
    let essence = parts.next().unwrap_or("").to_ascii_lowercase();
    for param in parts {
        if let Some(version) = param.strip_prefix("fhirVersion=") {
            if !version.starts_with("4.0") {
                return Err(());
            }
        }
    }
    Ok(match essence.as_str() {
        "json" | "application/json" | "application/fhir+json" | "application/json+fhir" => Some(Format::Json),
        "xml" | "text/xml" | "application/xml" | "application/fhir+xml" | "application/xml+fhir" => Some(Format::Xml),
        "*/*" | "application/*" | "" => Some(Format::Json),
        _ => None,
    })
}

fn query_param<'q>(req: &'q HttpRequest, name: &str) -> Option<std::borrow::Cow<'q, str>> {
    url::form_urlencoded::parse(req.query_string().as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v)
}

/// Chooses the response format: `_format` wins over `Accept`; no preference means JSON.
pub fn rendering(req: &HttpRequest) -> Result<Rendering, ApiError> {
    let pretty = query_param(req, "_pretty").is_some_and(|v| v == "true");
    if let Some(requested) = query_param(req, "_format") {
        return match format_of(&requested) {
            Ok(Some(format)) => Ok(Rendering { format, pretty }),
            _ => Err(ApiError::NotAcceptable(format!("_format '{requested}' is not supported; use json or xml"))),
        };
    }
    let Some(accept) = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(Rendering { format: Format::Json, pretty });
    };
    // Pick the acceptable type with the highest quality; order breaks ties.
    let mut best: Option<(f32, Format)> = None;
    for entry in accept.split(',') {
        let quality = entry
            .split(';')
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        if let Ok(Some(format)) = format_of(entry.trim()) {
            if quality > 0.0 && best.is_none_or(|(q, _)| quality > q) {
                best = Some((quality, format));
            }
        }
    }
    match best {
        Some((_, format)) => Ok(Rendering { format, pretty }),
        None => Err(ApiError::NotAcceptable(format!(
            "none of the types in Accept ('{}') is served; use application/fhir+json or application/fhir+xml",
            accept.chars().take(200).collect::<String>()
        ))),
    }
}

/// The format of a request body, from `Content-Type`.
pub fn body_format(req: &HttpRequest) -> Result<Format, ApiError> {
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).ok_or_else(|| {
        ApiError::UnsupportedMediaType(
            "a Content-Type header is required (application/fhir+json or application/fhir+xml)".into(),
        )
    })?;
    match format_of(content_type) {
        Ok(Some(format)) if !content_type.trim().is_empty() && !content_type.contains('*') => Ok(format),
        _ => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type '{}' is not supported; use application/fhir+json or application/fhir+xml",
            content_type.chars().take(100).collect::<String>()
        ))),
    }
}

/// Requires the body's `Content-Type` to be exactly `essence` (parameters aside), else 415
/// with `why`.
pub fn require_content_type(req: &HttpRequest, essence: &str, why: &str) -> Result<(), ApiError> {
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.split(';').next().map(str::trim).is_some_and(|t| t.eq_ignore_ascii_case(essence)) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(why.to_owned()))
    }
}

/// Reads the body up to `limit` bytes; beyond it, 413.
pub async fn read_body(mut payload: web::Payload, limit: usize) -> Result<web::BytesMut, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(IssueCode::Structure, format!("the request body could not be read: {e}"))
        })?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(format!("the request body exceeds {limit} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Parses a FHIR resource body in the format `Content-Type` names, into FHIR JSON.
pub fn parse_resource(format: Format, bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request(IssueCode::Required, "the request has no body"));
    }
    match format {
        Format::Json => crate::fhir::json::from_slice_strict(bytes)
            .map_err(|e| ApiError::bad_request(IssueCode::Structure, format!("the body is not valid JSON: {e}"))),
        Format::Xml => crate::fhir::format::xml_to_json(bytes)
            .map_err(|e| ApiError::BadRequest(crate::service::ingest::structure_issue(e))),
    }
}

/// A 200 with `resource` in the format the request negotiated (JSON or XML).
pub fn ok_resource(req: &HttpRequest, resource: &Value) -> Result<actix_web::HttpResponse, ApiError> {
    let (text, content_type) = render_resource_text(rendering(req)?, &resource.to_string())?;
    Ok(actix_web::HttpResponse::Ok().content_type(content_type).body(text))
}

/// Renders one resource's stored JSON text. JSON is served as stored, without re-parsing,
/// unless pretty printing is asked for.
pub fn render_resource_text(rendering: Rendering, json_text: &str) -> Result<(String, &'static str), ApiError> {
    match (rendering.format, rendering.pretty) {
        (Format::Json, false) => Ok((json_text.to_owned(), FHIR_JSON)),
        (Format::Json, true) => {
            let value: Value = serde_json::from_str(json_text).map_err(internal_json)?;
            Ok((serde_json::to_string_pretty(&value).map_err(internal_json)?, FHIR_JSON))
        }
        (Format::Xml, _) => {
            let value: Value = serde_json::from_str(json_text).map_err(internal_json)?;
            let xml = crate::fhir::format::json_to_xml(&value)
                .map_err(|e| ApiError::Internal(format!("stored resource cannot be rendered as XML: {}", e.message)))?;
            Ok((xml, FHIR_XML))
        }
    }
}

fn internal_json(e: serde_json::Error) -> ApiError {
    ApiError::Internal(format!("stored resource is not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn negotiate(accept: Option<&str>, query: &str) -> Result<Format, String> {
        let mut req = TestRequest::get().uri(&format!("/Task?{query}"));
        if let Some(a) = accept {
            req = req.insert_header((header::ACCEPT, a));
        }
        rendering(&req.to_http_request()).map(|r| r.format).map_err(|e| e.to_string())
    }

    #[test]
    fn the_response_format_follows_format_then_accept_then_json() {
        let cases: &[(Option<&str>, &str, Result<Format, ()>)] = &[
            (None, "", Ok(Format::Json)),
            (Some("application/fhir+xml"), "", Ok(Format::Xml)),
            (Some("application/fhir+xml"), "_format=json", Ok(Format::Json)),
            (None, "_format=xml", Ok(Format::Xml)),
            (None, "_format=application/fhir%2Bxml", Ok(Format::Xml)),
            (Some("text/html,application/xhtml+xml,*/*;q=0.8"), "", Ok(Format::Json)),
            (Some("application/fhir+json;q=0.5, application/fhir+xml"), "", Ok(Format::Xml)),
            (Some("application/fhir+json; fhirVersion=4.0"), "", Ok(Format::Json)),
            (Some("application/fhir+json; fhirVersion=5.0"), "", Err(())),
            (Some("text/html"), "", Err(())),
            (None, "_format=turtle", Err(())),
        ];
        for (accept, query, expected) in cases {
            let got = negotiate(*accept, query);
            assert_eq!(got.is_ok(), expected.is_ok(), "Accept {accept:?} query {query:?}: {got:?}");
            if let (Ok(g), Ok(e)) = (&got, expected) {
                assert_eq!(g, e, "Accept {accept:?} query {query:?}");
            }
        }
    }
}
