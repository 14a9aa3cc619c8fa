//! Bundles built from stored JSON text, so resources inside them are not re-parsed.

use serde_json::{json, Value};

use crate::domain::instant::Instant;
use crate::domain::versions::StoredVersion;

/// One entry of a history Bundle (R4 http.html#history: request and response per version).
/// `,"entry":[...]` with the already serialised entries, or nothing when there are none: FHIR
/// JSON never has an empty array (R4 2.6.2), so an empty Bundle has no `entry` at all.
pub fn entries_member(entries: &[String]) -> String {
    if entries.is_empty() {
        String::new()
    } else {
        format!(r#","entry":[{}]"#, entries.join(","))
    }
}

fn history_entry(base_url: &str, version: &StoredVersion) -> String {
    let full_url = format!("{base_url}/{}/{}", version.resource_type, version.id);
    let request_url = match version.method.as_str() {
        "POST" => version.resource_type.as_str().to_owned(),
        _ => format!("{}/{}", version.resource_type, version.id),
    };
    let status = match (version.method.as_str(), version.deleted) {
        ("POST", _) => "201 Created",
        (_, true) => "204 No Content",
        _ => "200 OK",
    };
    let request = json!({"method": version.method.as_str(), "url": request_url});
    let response = json!({
        "status": status,
        "etag": version.version.etag(),
        "lastModified": version.last_updated.to_fhir(),
    });
    if version.deleted {
        format!(r#"{{"fullUrl":{},"request":{request},"response":{response}}}"#, Value::String(full_url))
    } else {
        format!(
            r#"{{"fullUrl":{},"resource":{},"request":{request},"response":{response}}}"#,
            Value::String(full_url),
            version.body
        )
    }
}

/// A `history` Bundle with paging links.
pub fn history_bundle(base_url: &str, versions: &[StoredVersion], links: &[(&str, String)]) -> String {
    let links: Vec<Value> = links.iter().map(|(relation, url)| json!({"relation": relation, "url": url})).collect();
    let entries: Vec<String> = versions.iter().map(|v| history_entry(base_url, v)).collect();
    format!(
        r#"{{"resourceType":"Bundle","id":{},"meta":{{"lastUpdated":"{}"}},"type":"history","link":{}{}}}"#,
        Value::String(uuid::Uuid::new_v4().to_string()),
        Instant::now().to_fhir(),
        Value::Array(links),
        entries_member(&entries)
    )
}
