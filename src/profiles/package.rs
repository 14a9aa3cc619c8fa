//! The conformance package (`profiles/` in the repository): StructureDefinitions, ValueSets and
//! CodeSystems. The files are compiled into the binary; an operator may point
//! `profiles_dir` at a directory holding a package of the same shape to replace them.

use std::path::Path;

use serde_json::Value;

/// The package's files as compiled in: (file name, JSON text). `package.json` is the manifest.
const EMBEDDED: &[(&str, &str)] = &[
    ("package.json", include_str!("../../profiles/package.json")),
    (
        "StructureDefinition-linkbridge-referral-servicerequest.json",
        include_str!("../../profiles/StructureDefinition-linkbridge-referral-servicerequest.json"),
    ),
    (
        "StructureDefinition-linkbridge-referral-task.json",
        include_str!("../../profiles/StructureDefinition-linkbridge-referral-task.json"),
    ),
    (
        "StructureDefinition-linkbridge-link-worker-careplan.json",
        include_str!("../../profiles/StructureDefinition-linkbridge-link-worker-careplan.json"),
    ),
    (
        "StructureDefinition-linkbridge-patient.json",
        include_str!("../../profiles/StructureDefinition-linkbridge-patient.json"),
    ),
    ("ValueSet-social-need-category.json", include_str!("../../profiles/ValueSet-social-need-category.json")),
    ("ValueSet-referral-status-reason.json", include_str!("../../profiles/ValueSet-referral-status-reason.json")),
    ("ValueSet-referral-business-status.json", include_str!("../../profiles/ValueSet-referral-business-status.json")),
    ("ValueSet-referral-outcome.json", include_str!("../../profiles/ValueSet-referral-outcome.json")),
    ("ValueSet-contact-preference.json", include_str!("../../profiles/ValueSet-contact-preference.json")),
    ("ValueSet-referral-task-status.json", include_str!("../../profiles/ValueSet-referral-task-status.json")),
    ("CodeSystem-social-need-category.json", include_str!("../../profiles/CodeSystem-social-need-category.json")),
    ("CodeSystem-referral-status-reason.json", include_str!("../../profiles/CodeSystem-referral-status-reason.json")),
    (
        "CodeSystem-referral-business-status.json",
        include_str!("../../profiles/CodeSystem-referral-business-status.json"),
    ),
    ("CodeSystem-referral-outcome.json", include_str!("../../profiles/CodeSystem-referral-outcome.json")),
    ("CodeSystem-contact-preference.json", include_str!("../../profiles/CodeSystem-contact-preference.json")),
];

/// A package that cannot be used. Start-up stops on it rather than serving unchecked writes.
#[derive(Debug, thiserror::Error)]
#[error("profile package: {0}")]
pub struct PackageError(pub String);

/// The parsed package: its manifest and every conformance resource in it.
#[derive(Debug, Clone)]
pub struct Package {
    pub manifest: Value,
    /// StructureDefinitions, ValueSets and CodeSystems, in file-name order.
    pub resources: Vec<Value>,
}

impl Package {
    /// The package compiled into the binary.
    pub fn embedded() -> Result<Package, PackageError> {
        Package::from_files(EMBEDDED.iter().map(|(name, text)| ((*name).to_owned(), (*text).to_owned())).collect())
    }

    /// Every `*.json` file of `dir` (not its subdirectories: `examples/` is not part of it).
    pub fn from_dir(dir: &Path) -> Result<Package, PackageError> {
        let entries =
            std::fs::read_dir(dir).map_err(|e| PackageError(format!("cannot read {}: {e}", dir.display())))?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| PackageError(format!("cannot read {}: {e}", dir.display())))?.path();
            if path.is_file() && path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| PackageError(format!("cannot read {}: {e}", path.display())))?;
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                files.push((name, text));
            }
        }
        Package::from_files(files)
    }

    fn from_files(mut files: Vec<(String, String)>) -> Result<Package, PackageError> {
        files.sort();
        let mut manifest = None;
        let mut resources = Vec::new();
        for (name, text) in files {
            let value: Value =
                serde_json::from_str(&text).map_err(|e| PackageError(format!("{name} is not JSON: {e}")))?;
            if name == "package.json" {
                manifest = Some(value);
                continue;
            }
            match value.get("resourceType").and_then(Value::as_str) {
                Some("StructureDefinition" | "ValueSet" | "CodeSystem") => resources.push(value),
                _ => return Err(PackageError(format!("{name} is not a StructureDefinition, ValueSet or CodeSystem"))),
            }
        }
        let manifest = manifest.ok_or_else(|| PackageError("package.json is missing".to_owned()))?;
        let fhir_versions = manifest.get("fhirVersions").and_then(Value::as_array);
        if !fhir_versions.is_some_and(|v| v.iter().any(|v| v == "4.0.1")) {
            return Err(PackageError("package.json must list fhirVersions [\"4.0.1\"]".to_owned()));
        }
        Ok(Package { manifest, resources })
    }

    /// Conformance resources of one type (`StructureDefinition`, `ValueSet`, `CodeSystem`).
    pub fn of_type<'a>(&'a self, resource_type: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.resources.iter().filter(move |r| r.get("resourceType").and_then(Value::as_str) == Some(resource_type))
    }

    /// The conformance resource with this type and id.
    pub fn find(&self, resource_type: &str, id: &str) -> Option<&Value> {
        self.resources.iter().find(|r| {
            r.get("resourceType").and_then(Value::as_str) == Some(resource_type)
                && r.get("id").and_then(Value::as_str) == Some(id)
        })
    }
}
