//! Turning a request body into a resource the store may keep: the type must be the one
//! addressed, the structure must be FHIR R4 (fhirbolt, strict), and primitive values and
//! required codes must be valid (our own checks: fhirbolt checks structure, not values), and
//! the resource must conform to the linkbridge profiles that apply to it (`profiles`).

use serde_json::Value;

use super::ServiceError;
use crate::domain::ids::ResourceId;
use crate::domain::outcome::{Issue, IssueCode};
use crate::domain::resource_type::ResourceType;
use crate::profiles::ProfileCheck;

/// Checks an incoming resource of the expected type. All value problems are reported at once
/// (400); a resource that is valid FHIR but breaks its profiles is refused with every profile
/// issue (422) when `profiles` enforces them. Every write path (create, update, patch result,
/// transaction and batch entries) comes through here, so no write skips the profiles.
pub fn check_resource(resource: &Value, expected: ResourceType, profiles: &ProfileCheck) -> Result<(), ServiceError> {
    check_resource_as(resource, expected, profiles, Structure::Unchecked)
}

/// [`check_resource`] for the resource of a transaction entry, whose structure the check of
/// its whole Bundle has just established (fhirbolt read every entry's resource then): it is
/// not read again, which was a tenth of a referral submission's time in the HTTP workers.
pub fn check_entry_resource(
    resource: &Value,
    expected: ResourceType,
    profiles: &ProfileCheck,
) -> Result<(), ServiceError> {
    check_resource_as(resource, expected, profiles, Structure::CheckedWithBundle)
}

/// Whether fhirbolt has already read a resource's structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Structure {
    Unchecked,
    CheckedWithBundle,
}

fn check_resource_as(
    resource: &Value,
    expected: ResourceType,
    profiles: &ProfileCheck,
    structure: Structure,
) -> Result<(), ServiceError> {
    check_fhir(resource, expected, structure)?;
    let profile_issues = profiles.check_write(resource);
    if profile_issues.is_empty() {
        Ok(())
    } else {
        Err(ServiceError::Unprocessable(profile_issues))
    }
}

/// `$validate`: every issue a write would meet (FHIR structure and values, then profiles:
/// those that apply, or only `profile` when named), whatever the write mode. Nothing is stored.
pub fn validate_resource(
    resource: &Value,
    expected: ResourceType,
    profiles: &ProfileCheck,
    profile: Option<&str>,
) -> Result<Vec<Issue>, ServiceError> {
    match check_fhir(resource, expected, Structure::Unchecked) {
        Ok(()) => {}
        Err(ServiceError::Invalid(issues)) => return Ok(issues),
        Err(other) => return Err(other),
    }
    let validator = profiles.validator();
    match profile {
        None => Ok(validator.validate(resource)),
        Some(url) => validator.validate_against(resource, url).ok_or_else(|| {
            ServiceError::invalid(
                IssueCode::NotSupported,
                format!("the profile {url} is not one of this server's (see the CapabilityStatement)"),
                None,
            )
        }),
    }
}

/// The type addressed, R4 structure (fhirbolt) and R4 values (`fhir::check_values`).
fn check_fhir(resource: &Value, expected: ResourceType, structure: Structure) -> Result<(), ServiceError> {
    let Some(object) = resource.as_object() else {
        return Err(ServiceError::invalid(
            IssueCode::Structure,
            "the body must be a JSON object holding a FHIR resource",
            None,
        ));
    };
    match object.get("resourceType").and_then(Value::as_str) {
        Some(name) if name == expected.as_str() => {}
        Some(name) => {
            return Err(ServiceError::invalid(
                IssueCode::Invalid,
                format!("the body is a {name} but this endpoint takes a {expected}"),
                Some("resourceType"),
            ))
        }
        None => {
            return Err(ServiceError::invalid(
                IssueCode::Required,
                "the body has no resourceType",
                Some("resourceType"),
            ))
        }
    }
    if structure == Structure::Unchecked {
        if let Err(e) = crate::fhir::format::check_structure(resource) {
            return Err(ServiceError::Invalid(vec![structure_issue(e)]));
        }
    }
    let issues: Vec<Issue> = crate::fhir::check_values(resource)
        .into_iter()
        .map(|v| Issue::error(IssueCode::Value, v.message).at(v.expression))
        .collect();
    if issues.is_empty() {
        Ok(())
    } else {
        Err(ServiceError::Invalid(issues))
    }
}

pub fn structure_issue(e: fhir_format::FormatError) -> Issue {
    let mut issue = Issue::error(IssueCode::Structure, e.message);
    issue.expression = e.expression;
    issue
}

/// Sets the server-owned elements: `id`, `meta.versionId`, `meta.lastUpdated`. Other `meta`
/// content (profile, tags, security labels) is kept.
pub fn stamp(resource: &mut Value, id: &ResourceId, version: i64, last_updated: &str) {
    let Some(object) = resource.as_object_mut() else { return };
    object.insert("id".into(), Value::String(id.as_str().to_owned()));
    let meta = object.entry("meta").or_insert_with(|| Value::Object(Default::default()));
    if !meta.is_object() {
        *meta = Value::Object(Default::default());
    }
    if let Some(meta) = meta.as_object_mut() {
        meta.insert("versionId".into(), Value::String(version.to_string()));
        meta.insert("lastUpdated".into(), Value::String(last_updated.to_owned()));
    }
    // `id` goes right after resourceType, where FHIR JSON puts it.
    if let Some(id_value) = object.shift_remove("id") {
        object.shift_insert(1, "id".into(), id_value);
    }
}
