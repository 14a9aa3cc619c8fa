//! Every call into fhirbolt's generic (de)serialisers, and nothing else.
//!
//! Kept apart so edits elsewhere in the crate leave these instantiations (and their
//! codegen units) untouched for incremental builds. `Resource` never leaves the crate.

use fhirbolt::model::r4::Resource;
use fhirbolt::serde::{DeserializationConfig, DeserializationMode};
use serde_json::Value;

/// Strict mode rejects unknown elements instead of dropping them silently.
fn strict() -> Option<DeserializationConfig> {
    Some(DeserializationConfig { mode: DeserializationMode::Strict })
}

/// Parses a resource; the error is fhirbolt's raw message (no position: it comes from a
/// `Value`, not text).
pub(crate) fn resource_from_json(value: Value) -> Result<Resource, String> {
    fhirbolt::json::from_json_value(value, strict()).map_err(|error| error.to_string())
}

/// Why fhirbolt could not read an XML document.
pub(crate) enum XmlFailure {
    /// Not well-formed XML, wrong namespace or encoding.
    Malformed(String),
    /// Well-formed XML that is not a valid R4 resource (fhirbolt's serde messages).
    Structure(String),
}

pub(crate) fn resource_from_xml(xml: &[u8]) -> Result<Resource, XmlFailure> {
    fhirbolt::xml::from_slice(xml, strict()).map_err(|error| match error {
        fhirbolt::xml::Error::Message(message) => XmlFailure::Structure(message),
        other => XmlFailure::Malformed(other.to_string()),
    })
}

pub(crate) fn resource_to_json(resource: Resource) -> Result<Value, String> {
    fhirbolt::json::to_json_value(resource, None).map_err(|error| error.to_string())
}

pub(crate) fn resource_to_xml(resource: &Resource) -> Result<String, String> {
    fhirbolt::xml::to_string(resource, None).map_err(|error| error.to_string())
}
