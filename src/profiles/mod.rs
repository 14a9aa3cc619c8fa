//! Profile validation: linkbridge's own conformance package (`profiles/`, compiled in) and a
//! small engine that checks a resource against the package's StructureDefinitions.
//!
//! The engine interprets differentials, and only the constraint kinds the package uses:
//! `min`/`max`, `fixed[x]`/`pattern[x]`, bindings (required and extensible) to the package's
//! own enumerated ValueSets, reference target types, choice type restrictions, and invariants,
//! each a named Rust check keyed by its constraint key (`invariants`). A package using any
//! other kind of constraint is refused at start-up, so no rule is silently ignored.
//!
//! Which profiles apply: those a resource claims in `meta.profile`, and, without a claim,
//! those whose `code` pattern the resource matches (a ServiceRequest coded SNOMED CT
//! 871731000000106, a Task coded `fulfill`): referrals are checked whether or not the sender
//! names the profile. Patient and CarePlan profiles apply when claimed.

mod engine;
mod invariants;
mod package;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use engine::{Profile, Validator};
pub use package::{Package, PackageError};

use crate::domain::outcome::Issue;

/// What a write does with a resource that breaks its profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValidationMode {
    /// Refuse it (422 with every issue).
    #[default]
    Enforce,
    /// Accept it and log a warning (issue count and resource type; never content).
    Warn,
    /// Do not check profiles on writes (`$validate` still does).
    Off,
}

/// The validator and what writes do with its findings; shared by every request.
#[derive(Debug, Clone)]
pub struct ProfileCheck {
    validator: Arc<Validator>,
    mode: ValidationMode,
}

impl ProfileCheck {
    /// The package from `dir` (an operator's override) or the compiled-in one; CHI numbers are
    /// recognised by `chi_systems` (setting `chi_systems`).
    pub fn load(
        dir: Option<&PathBuf>,
        mode: ValidationMode,
        chi_systems: &[String],
    ) -> Result<ProfileCheck, PackageError> {
        let package = match dir {
            Some(dir) => Package::from_dir(dir)?,
            None => Package::embedded()?,
        };
        Ok(ProfileCheck { validator: Arc::new(Validator::new(package)?.with_chi_systems(chi_systems)), mode })
    }

    pub fn validator(&self) -> &Validator {
        &self.validator
    }

    pub fn mode(&self) -> ValidationMode {
        self.mode
    }

    /// The issues a write must be refused for (none in `warn` and `off` modes).
    pub fn check_write(&self, resource: &Value) -> Vec<Issue> {
        if self.mode == ValidationMode::Off {
            return Vec::new();
        }
        let issues = self.validator.validate(resource);
        if issues.is_empty() || self.mode == ValidationMode::Enforce {
            return issues;
        }
        let resource_type = resource.get("resourceType").and_then(Value::as_str).unwrap_or("unknown");
        tracing::warn!(resource.type = resource_type, issues = issues.len(), "resource breaks its profiles; accepted because profile_validation is warn");
        Vec::new()
    }
}

#[cfg(test)]
mod tests;
