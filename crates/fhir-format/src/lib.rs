//! The only crate in linkbridge that touches fhirbolt.
//!
//! fhirbolt's R4 model is huge and generic: every crate that instantiates its
//! (de)serialisers pays minutes of compile time on each change. This crate keeps those
//! instantiations in one place (`bolt`) and exposes only plain functions over
//! `serde_json::Value`, bytes and `String`, so no fhirbolt type crosses the boundary and
//! dependants rebuild in seconds. Keep this API small and stable: changing it costs the
//! full fhirbolt build.
//!
//! fhirbolt checks structure (unknown elements, JSON types, required elements,
//! resourceType), not values: a `"status": "bogus"` passes here. Value rules live in the
//! main crate (`linkbridge::fhir`).

mod bolt;
mod locate;
mod nesting;
mod required;
mod xml_outline;

use std::fmt;

use serde_json::Value;

/// Deepest nesting of JSON objects and arrays (or XML elements) accepted.
///
/// fhirbolt deserialises recursively and `serde_json`'s own 128-level guard applies only
/// to parsing text, not to an already built `Value`; 64 levels leave ample room for real
/// resources (a Bundle entry holding a contained resource with nested extensions is
/// about 15) while keeping stack use small on 2 MiB worker threads.
pub const MAX_NESTING_DEPTH: usize = 64;

/// Why a body is not a structurally valid FHIR R4 resource, or could not be converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError {
    /// What is wrong, worded for an API client (it goes into OperationOutcome diagnostics).
    pub message: String,
    /// FHIRPath of the offending element, e.g. `Task.input[0].foo`, when it could be located.
    pub expression: Option<String>,
}

impl FormatError {
    fn new(message: impl Into<String>, expression: Option<String>) -> Self {
        Self { message: message.into(), expression }
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.expression {
            Some(expression) => write!(f, "{} (at {expression})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for FormatError {}

/// Strict structural check of a FHIR R4 JSON resource (unknown elements, wrong JSON types,
/// missing required elements, unknown resourceType) - fhirbolt strict mode.
pub fn check_json_structure(resource: &Value) -> Result<(), FormatError> {
    check_resource_envelope(resource)?;
    match bolt::resource_from_json(resource.clone()) {
        Ok(_) => Ok(()),
        Err(raw) => Err(locate::explain(&raw, resource)),
    }
}

/// FHIR XML -> FHIR JSON (strict). Errors say what and, where possible, where.
pub fn xml_to_json(xml: &[u8]) -> Result<Value, FormatError> {
    // The outline is scanned before fhirbolt sees the bytes: it is the depth guard, and it
    // gives the error locator a JSON-shaped view of the document.
    let outline = xml_outline::scan(xml, MAX_NESTING_DEPTH).map_err(|too_deep| {
        FormatError::new(
            format!(
                "the document is nested more than {MAX_NESTING_DEPTH} elements deep \
                 (at <{}>)",
                too_deep.element
            ),
            None,
        )
    })?;
    let shape = outline.to_shape();
    if shape.is_object() {
        check_root_resource_type(&shape)?;
    }
    let resource = bolt::resource_from_xml(xml).map_err(|failure| match failure {
        bolt::XmlFailure::Malformed(raw) => FormatError::new(format!("malformed XML: {raw}"), None),
        bolt::XmlFailure::Structure(raw) => locate::explain(&raw, &shape),
    })?;
    let json = bolt::resource_to_json(resource)
        .map_err(|raw| FormatError::new(format!("could not convert the resource to JSON: {raw}"), None))?;
    // A document within the XML limit can still be deeper as JSON (arrays add a level);
    // what this returns must pass `check_json_structure`.
    nesting::check_json_depth(&json, MAX_NESTING_DEPTH)?;
    Ok(json)
}

/// FHIR JSON -> FHIR XML text (the value has already been checked).
pub fn json_to_xml(resource: &Value) -> Result<String, FormatError> {
    check_resource_envelope(resource)?;
    let parsed = bolt::resource_from_json(resource.clone()).map_err(|raw| locate::explain(&raw, resource))?;
    bolt::resource_to_xml(&parsed)
        .map_err(|raw| FormatError::new(format!("could not convert the resource to XML: {raw}"), None))
}

/// What must hold before fhirbolt sees a value: bounded nesting (stack safety) and a
/// known resourceType at the root, which fhirbolt reports only as "invalid type".
fn check_resource_envelope(resource: &Value) -> Result<(), FormatError> {
    nesting::check_json_depth(resource, MAX_NESTING_DEPTH)?;
    check_root_resource_type(resource)
}

fn check_root_resource_type(resource: &Value) -> Result<(), FormatError> {
    let Value::Object(object) = resource else {
        return Err(FormatError::new("a FHIR resource must be a JSON object", None));
    };
    match object.get("resourceType") {
        None => Err(FormatError::new("missing resourceType", None)),
        Some(Value::String(resource_type)) if locate::is_r4_resource_type(resource_type) => Ok(()),
        Some(Value::String(resource_type)) => {
            Err(FormatError::new(format!("unknown resourceType '{resource_type}' (not a FHIR R4 resource)"), None))
        }
        Some(_) => Err(FormatError::new("resourceType must be a string", None)),
    }
}
