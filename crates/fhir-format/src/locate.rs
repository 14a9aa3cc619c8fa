//! Turns fhirbolt's position-less error messages into client-facing text and a FHIRPath.
//!
//! fhirbolt reports the first problem it meets ("unknown field `foo`, expected one of
//! [...]", "missing field `status`", "invalid type: boolean `true`, expected a string")
//! but not where. We find it by walking the JSON value the way fhirbolt's strict
//! deserialiser does (`fhirbolt-serde` `element/internal/de.rs`), with fhirbolt's own
//! model-aware `ElementPath` to know each element's valid children, whether it repeats and
//! which primitive kind it holds, and stop at the first element that would raise the
//! reported error.

use fhirbolt_shared::path::ElementPath;
use fhirbolt_shared::type_hints::r4::TYPE_HINTS;
use fhirbolt_shared::FhirReleases;
use serde_json::{Map, Value};

use crate::required::REQUIRED;
use crate::FormatError;

/// Children allowed inside a primitive's element (`_birthDate`), as fhirbolt enforces:
/// R4 section 2.6.2.7 "JSON representation of primitive elements".
const PRIMITIVE_CHILDREN: &[&str] = &["id", "extension", "value"];

/// Resource types of FHIR R4 (4.0.1), the same list as fhirbolt's `Resource` enum.
const R4_RESOURCE_TYPES: &[&str] = &[
    "Account",
    "ActivityDefinition",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "Binary",
    "BiologicallyDerivedProduct",
    "BodyStructure",
    "Bundle",
    "CapabilityStatement",
    "CarePlan",
    "CareTeam",
    "CatalogEntry",
    "ChargeItem",
    "ChargeItemDefinition",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "CodeSystem",
    "Communication",
    "CommunicationRequest",
    "CompartmentDefinition",
    "Composition",
    "ConceptMap",
    "Condition",
    "Consent",
    "Contract",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "Device",
    "DeviceDefinition",
    "DeviceMetric",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "EffectEvidenceSynthesis",
    "Encounter",
    "Endpoint",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "EpisodeOfCare",
    "EventDefinition",
    "Evidence",
    "EvidenceVariable",
    "ExampleScenario",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "GraphDefinition",
    "Group",
    "GuidanceResponse",
    "HealthcareService",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "ImplementationGuide",
    "InsurancePlan",
    "Invoice",
    "Library",
    "Linkage",
    "List",
    "Location",
    "Measure",
    "MeasureReport",
    "Media",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationKnowledge",
    "MedicationRequest",
    "MedicationStatement",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "MessageDefinition",
    "MessageHeader",
    "MolecularSequence",
    "NamingSystem",
    "NutritionOrder",
    "Observation",
    "ObservationDefinition",
    "OperationDefinition",
    "OperationOutcome",
    "Organization",
    "OrganizationAffiliation",
    "Parameters",
    "Patient",
    "PaymentNotice",
    "PaymentReconciliation",
    "Person",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "ResearchDefinition",
    "ResearchElementDefinition",
    "ResearchStudy",
    "ResearchSubject",
    "RiskAssessment",
    "RiskEvidenceSynthesis",
    "Schedule",
    "SearchParameter",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "SpecimenDefinition",
    "StructureDefinition",
    "StructureMap",
    "Subscription",
    "Substance",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
    "SubstanceSpecification",
    "SupplyDelivery",
    "SupplyRequest",
    "Task",
    "TerminologyCapabilities",
    "TestReport",
    "TestScript",
    "ValueSet",
    "VerificationResult",
    "VisionPrescription",
];

pub(crate) fn is_r4_resource_type(name: &str) -> bool {
    R4_RESOURCE_TYPES.contains(&name)
}

/// A fhirbolt error message, classified.
#[derive(Debug, PartialEq)]
enum Problem<'m> {
    UnknownElement {
        name: &'m str,
    },
    MissingElement {
        name: &'m str,
    },
    DuplicateElement {
        name: &'m str,
    },
    WrongType {
        found: Found<'m>,
        expected: &'m str,
    },
    /// A text that does not parse as the element's primitive kind (XML input, where
    /// fhirbolt's typed deserialisers print only `ParseBoolError` and the like).
    Unparsable {
        kind: LeafKind,
    },
    UnknownResourceType,
    MissingResourceType,
    Unrecognised,
}

/// The offending value as serde's `Unexpected` printed it.
#[derive(Debug, PartialEq)]
enum Found<'m> {
    Boolean(bool),
    Integer(i64),
    Decimal(&'m str),
    Text(&'m str),
    Sequence,
    Other(&'m str),
}

impl<'m> Problem<'m> {
    fn parse(raw: &'m str) -> Self {
        if let Some(name) = quoted_after(raw, "unknown field `") {
            return Self::UnknownElement { name };
        }
        if let Some(name) = quoted_after(raw, "missing field `") {
            return Self::MissingElement { name };
        }
        if let Some(name) = quoted_after(raw, "duplicate field `") {
            return Self::DuplicateElement { name };
        }
        // Raised by fhirbolt's `Resource` deserialiser (model/generated/r4/resource.rs).
        if raw == "invalid type: resourceType, expected valid resourceType" {
            return Self::UnknownResourceType;
        }
        if raw == "invalid type: an element, expected a resource" {
            return Self::MissingResourceType;
        }
        // `format!("{:?}", err)` of `str::parse` in fhirbolt's generated primitive
        // deserialisers, and fhirbolt-serde `decimal.rs` (raised when serialising).
        if raw == "ParseBoolError" {
            return Self::Unparsable { kind: LeafKind::Boolean };
        }
        if raw.starts_with("ParseIntError") {
            return Self::Unparsable { kind: LeafKind::Integer };
        }
        if matches!(raw, "error serializing decimal" | "invalid decimal" | "expected decimal") {
            return Self::Unparsable { kind: LeafKind::Decimal };
        }
        let body = raw
            .strip_prefix("invalid type: ")
            .map(|body| (body, false))
            .or_else(|| raw.strip_prefix("invalid value: ").map(|body| (body, true)));
        if let Some((body, is_value)) = body {
            if let Some((found, expected)) = body.rsplit_once(", expected ") {
                return Self::WrongType { found: Found::parse(found, is_value), expected };
            }
        }
        Self::Unrecognised
    }

    fn describe(&self, raw: &str, located: Option<&Located>) -> String {
        let detail = located.and_then(|located| located.detail.as_deref());
        match self {
            Self::UnknownElement { name } => format!("unknown element '{name}'"),
            Self::MissingElement { name } => format!("missing required element '{name}'"),
            Self::DuplicateElement { name } => match detail {
                Some(choice) => format!("more than one type given for choice element '{choice}'"),
                None => format!("element '{name}' given more than once"),
            },
            Self::Unparsable { kind } => match detail {
                Some(text) => format!("invalid value: expected {}, found '{text}'", kind.expectation()),
                None => format!("invalid value: expected {}", kind.expectation()),
            },
            Self::WrongType { found, expected } => {
                format!("wrong type: expected {}, found {}", plain_expectation(expected), found.describe())
            }
            Self::UnknownResourceType => match detail {
                Some(name) => format!("unknown resourceType '{name}' (not a FHIR R4 resource)"),
                None => "unknown resourceType (not a FHIR R4 resource)".to_owned(),
            },
            Self::MissingResourceType => "missing resourceType".to_owned(),
            Self::Unrecognised => raw.to_owned(),
        }
    }
}

impl<'m> Found<'m> {
    fn parse(text: &'m str, is_value: bool) -> Self {
        if let Some(inner) = backticked(text, "boolean") {
            if let Ok(boolean) = inner.parse() {
                return Self::Boolean(boolean);
            }
        }
        if let Some(inner) = backticked(text, "integer") {
            if let Ok(integer) = inner.parse() {
                return Self::Integer(integer);
            }
        }
        if let Some(inner) = backticked(text, "decimal") {
            return Self::Decimal(inner);
        }
        if text == "sequence" {
            return Self::Sequence;
        }
        // `invalid value: yes, expected a boolean`: fhirbolt prints the raw string.
        if is_value {
            Self::Text(text)
        } else {
            Self::Other(text)
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Boolean(boolean) => format!("boolean {boolean}"),
            Self::Integer(integer) => format!("number {integer}"),
            Self::Decimal(decimal) => format!("number {decimal}"),
            Self::Text(text) => format!("'{text}'"),
            Self::Sequence => "an array".to_owned(),
            Self::Other(other) => (*other).to_owned(),
        }
    }
}

/// fhirbolt's expectations in JSON terms.
fn plain_expectation(expected: &str) -> &str {
    match expected {
        "an element" | "a map" | "a sequence element" => "an object",
        other => other,
    }
}

/// `name` in "prefix`name`...".
fn quoted_after<'m>(raw: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = raw.strip_prefix(prefix)?;
    rest.split_once('`').map(|(name, _)| name)
}

/// `x` in "kind `x`".
fn backticked<'m>(text: &'m str, kind: &str) -> Option<&'m str> {
    text.strip_prefix(kind)?.strip_prefix(" `")?.strip_suffix('`')
}

/// Builds the FormatError for a fhirbolt message about `resource`.
pub(crate) fn explain(raw: &str, resource: &Value) -> FormatError {
    let problem = Problem::parse(raw);
    let located = match (&problem, resource) {
        (Problem::Unrecognised, _) => None,
        (_, Value::Object(object)) => Walker::new(&problem).walk_root(object),
        _ => None,
    };
    FormatError::new(problem.describe(raw, located.as_ref()), located.map(|located| located.expression))
}

/// Where a problem is, and for an unknown resourceType which one.
struct Located {
    expression: String,
    /// The unknown resource type, the choice element's `[x]` name, or the unparsable text.
    detail: Option<String>,
}

/// A FHIRPath under construction: `.name` and `[index]` steps below the root resource.
#[derive(Default)]
pub(crate) struct Segments(Vec<Segment>);

enum Segment {
    Field(String),
    Index(usize),
}

impl Segments {
    pub(crate) fn push_field(&mut self, key: &str) {
        // `_birthDate` carries birthDate's id and extensions: same FHIRPath.
        let name = key.strip_prefix('_').unwrap_or(key);
        self.0.push(Segment::Field(name.to_owned()));
    }

    pub(crate) fn push_index(&mut self, index: usize) {
        self.0.push(Segment::Index(index));
    }

    pub(crate) fn pop(&mut self) {
        self.0.pop();
    }

    /// The FHIRPath, rooted at the resource type of `root` (FHIRPath section 3).
    pub(crate) fn render(&self, root: &Value) -> String {
        let mut expression = match root.get("resourceType") {
            Some(Value::String(resource_type)) => resource_type.clone(),
            _ => String::new(),
        };
        for segment in &self.0 {
            match segment {
                Segment::Field(name) if expression.is_empty() => expression.push_str(name),
                Segment::Field(name) => {
                    expression.push('.');
                    expression.push_str(name);
                }
                Segment::Index(index) => expression.push_str(&format!("[{index}]")),
            }
        }
        expression
    }
}

/// The primitive kinds fhirbolt converts JSON leaves into
/// (`resolve_value_types` in fhirbolt-serde `element/internal/de.rs`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum LeafKind {
    Boolean,
    Integer,
    /// positiveInt and unsignedInt: `u32` in fhirbolt's model.
    UnsignedInteger,
    Decimal,
    Text,
}

struct Walker<'p, 'm> {
    problem: &'p Problem<'m>,
    path: ElementPath,
    /// Type key of each element entered (`Task`, `Task.input`, `Reference`), as
    /// fhirbolt-shared's element map keys types: the key into `REQUIRED`.
    type_keys: Vec<String>,
    segments: Segments,
    root: Value,
}

impl<'p, 'm> Walker<'p, 'm> {
    fn new(problem: &'p Problem<'m>) -> Self {
        Self {
            problem,
            path: ElementPath::new(FhirReleases::R4),
            type_keys: Vec::new(),
            segments: Segments::default(),
            root: Value::Null,
        }
    }

    fn walk_root(mut self, object: &Map<String, Value>) -> Option<Located> {
        // Only the root's resourceType is needed to render expressions.
        if let Some(resource_type) = object.get("resourceType") {
            let mut root = Map::new();
            root.insert("resourceType".to_owned(), resource_type.clone());
            self.root = Value::Object(root);
        }
        self.walk_resource(object)
    }

    fn here(&self) -> Located {
        Located { expression: self.segments.render(&self.root), detail: None }
    }

    /// The current position, with the offending text for messages.
    fn leaf_here(&self, leaf: &Value) -> Located {
        Located { detail: leaf.as_str().map(str::to_owned), ..self.here() }
    }

    /// The choice prefix (`value`) when `object` holds `name` (`valueString`, as fhirbolt
    /// reports it, or `value[x]`) and another type of the same choice.
    fn duplicated_choice<'n>(&self, object: &Map<String, Value>, name: &'n str) -> Option<&'n str> {
        if let Some(prefix) = name.strip_suffix("[x]") {
            return (self.choice_keys(object, prefix).len() > 1).then_some(prefix);
        }
        if !object.contains_key(name) && !object.contains_key(&format!("_{name}")) {
            return None;
        }
        // Every split before an upper-case letter is a candidate prefix:
        // `effectiveDateTime` -> `effective`, `effectiveDate`.
        name.char_indices()
            .filter(|(index, character)| *index > 0 && character.is_uppercase())
            .map(|(index, _)| &name[..index])
            .find(|prefix| self.choice_keys(object, prefix).len() > 1)
    }

    fn walk_resource(&mut self, object: &Map<String, Value>) -> Option<Located> {
        let resource_type = match object.get("resourceType") {
            Some(Value::String(resource_type)) => resource_type,
            _ => return matches!(self.problem, Problem::MissingResourceType).then(|| self.here()),
        };
        if !is_r4_resource_type(resource_type) {
            return matches!(self.problem, Problem::UnknownResourceType)
                .then(|| Located { detail: Some(resource_type.clone()), ..self.here() });
        }
        self.path.push(resource_type);
        self.type_keys.push(resource_type.clone());
        let found = self.walk_members(object, true);
        self.type_keys.pop();
        self.path.pop();
        found
    }

    fn walk_element(&mut self, object: &Map<String, Value>) -> Option<Located> {
        if self.path.current_element_is_resource() {
            self.walk_resource(object)
        } else {
            self.walk_members(object, false)
        }
    }

    fn walk_members(&mut self, object: &Map<String, Value>, is_resource: bool) -> Option<Located> {
        if let Problem::DuplicateElement { name } = self.problem {
            if let Some(prefix) = self.duplicated_choice(object, name) {
                self.segments.push_field(prefix);
                let located = Located { detail: Some(format!("{prefix}[x]")), ..self.here() };
                self.segments.pop();
                return Some(located);
            }
        }
        let in_primitive = self.path.current_element_is_primitive();
        for (key, value) in object {
            if key == "resourceType" && is_resource {
                continue;
            }
            let name = key.strip_prefix('_').unwrap_or(key);
            if !self.is_valid_child(name, in_primitive) {
                if matches!(self.problem, Problem::UnknownElement { name: unknown } if *unknown == name) {
                    self.segments.push_field(key);
                    let located = self.here();
                    self.segments.pop();
                    return Some(located);
                }
                continue;
            }
            // `{"value": ..}` inside a primitive's element (XML outline): the leaf belongs
            // to the primitive itself.
            if in_primitive && name == "value" {
                if self.leaf_is_culprit(value) {
                    return Some(self.leaf_here(value));
                }
                continue;
            }
            self.path.push(name);
            self.type_keys.push(self.child_type_key(name));
            self.segments.push_field(key);
            // A non-repeating element given twice (XML) shows as an array in the outline.
            let repeated = matches!(self.problem, Problem::DuplicateElement { name: duplicate } if *duplicate == name)
                && value.is_array()
                && !self.path.current_element_is_sequence();
            let found = if repeated { Some(self.here()) } else { self.walk_member(value) };
            self.segments.pop();
            self.type_keys.pop();
            self.path.pop();
            if found.is_some() {
                return found;
            }
        }
        // Required elements are checked when an element ends, innermost first
        // (fhirbolt's generated `visit_map`), so the culprit is the first object in
        // post-order that may hold the element and lacks it.
        if let Problem::MissingElement { name } = self.problem {
            if !in_primitive && self.requires(name) && self.lacks(object, name) {
                return Some(self.here());
            }
        }
        None
    }

    fn walk_member(&mut self, value: &Value) -> Option<Located> {
        match value {
            Value::Array(items) => {
                if matches!(self.problem, Problem::WrongType { found: Found::Sequence, .. })
                    && !self.path.current_element_is_sequence()
                {
                    return Some(self.here());
                }
                for (index, item) in items.iter().enumerate() {
                    self.segments.push_index(index);
                    let found = match item {
                        Value::Array(_) => matches!(self.problem, Problem::WrongType { found: Found::Sequence, .. })
                            .then(|| self.here()),
                        other => self.walk_value(other),
                    };
                    self.segments.pop();
                    if found.is_some() {
                        return found;
                    }
                }
                None
            }
            other => self.walk_value(other),
        }
    }

    fn walk_value(&mut self, value: &Value) -> Option<Located> {
        match value {
            Value::Object(object) => self.walk_element(object),
            Value::Null | Value::Array(_) => None,
            leaf => self.leaf_is_culprit(leaf).then(|| self.leaf_here(leaf)),
        }
    }

    fn is_valid_child(&self, name: &str, in_primitive: bool) -> bool {
        if in_primitive {
            PRIMITIVE_CHILDREN.contains(&name)
        } else {
            self.path.children().is_some_and(|children| children.contains(name))
        }
    }

    /// Whether the current element's type has `name` with cardinality 1..1.
    fn requires(&self, name: &str) -> bool {
        let Some(key) = self.type_keys.last() else {
            return false;
        };
        REQUIRED
            .binary_search_by(|(candidate, _)| candidate.cmp(&key.as_str()))
            .is_ok_and(|index| REQUIRED[index].1.contains(&name))
    }

    /// The type key of child `name` of the current element, mirroring how
    /// fhirbolt-shared's `ElementPath` resolves types (`resolve_current_type`).
    fn child_type_key(&self, name: &str) -> String {
        let parent = self.type_keys.last().map(String::as_str).unwrap_or_default();
        if name == "extension" || name == "modifierExtension" {
            return "Extension".to_owned();
        }
        if is_r4_resource_type(parent) {
            match name {
                "meta" => return "Meta".to_owned(),
                "text" => return "Narrative".to_owned(),
                "contained" => return "Resource".to_owned(),
                _ => {}
            }
        }
        let path = format!("{parent}.{name}");
        if let Some(type_name) = TYPE_HINTS.type_paths.get(path.as_str()) {
            return (*type_name).to_owned();
        }
        if let Some(referenced) = TYPE_HINTS.content_reference_paths.get(path.as_str()) {
            return (*referenced).to_owned();
        }
        path
    }

    fn lacks(&self, object: &Map<String, Value>, name: &str) -> bool {
        match name.strip_suffix("[x]") {
            Some(prefix) => self.choice_keys(object, prefix).is_empty(),
            None => !object.contains_key(name) && !object.contains_key(&format!("_{name}")),
        }
    }

    /// Distinct choice elements present for `prefix` (`valueString` and `_valueString`
    /// count once).
    fn choice_keys<'o>(&self, object: &'o Map<String, Value>, prefix: &str) -> Vec<&'o str> {
        let mut keys: Vec<&str> = Vec::new();
        for key in object.keys() {
            let name = key.strip_prefix('_').unwrap_or(key);
            if is_choice_of(name, prefix) && !keys.contains(&name) {
                keys.push(name);
            }
        }
        keys
    }

    /// Whether fhirbolt would raise exactly the reported type error for this leaf.
    fn leaf_is_culprit(&self, leaf: &Value) -> bool {
        match self.problem {
            Problem::WrongType { found, expected } => {
                let kind = self.leaf_kind();
                kind.expectation() == *expected && kind.rejects(leaf) && found.describes(leaf)
            }
            Problem::Unparsable { kind } => {
                let here = self.leaf_kind();
                let same_kind = here == *kind || (*kind == LeafKind::Integer && here == LeafKind::UnsignedInteger);
                same_kind && matches!(leaf, Value::String(text) if !here.parses(text))
            }
            _ => false,
        }
    }

    fn leaf_kind(&self) -> LeafKind {
        if self.path.current_element_is_boolean() {
            LeafKind::Boolean
        } else if self.path.current_element_is_positive_integer() || self.path.current_element_is_unsigned_integer() {
            LeafKind::UnsignedInteger
        } else if self.path.current_element_is_integer() || self.path.current_element_is_integer64() {
            LeafKind::Integer
        } else if self.path.current_element_is_decimal() {
            LeafKind::Decimal
        } else {
            LeafKind::Text
        }
    }
}

impl LeafKind {
    /// The `expected` text of fhirbolt's `map_bool` / `map_integer` / `map_decimal` /
    /// `map_string`.
    fn expectation(self) -> &'static str {
        match self {
            Self::Boolean => "a boolean",
            Self::Integer | Self::UnsignedInteger => "an integer",
            Self::Decimal => "a decimal",
            Self::Text => "a string",
        }
    }

    /// Whether the typed model can hold this text (XML carries every value as text).
    fn parses(self, text: &str) -> bool {
        match self {
            Self::Boolean => text.parse::<bool>().is_ok(),
            Self::Integer => text.parse::<i32>().is_ok(),
            Self::UnsignedInteger => text.parse::<u32>().is_ok(),
            Self::Decimal => text.parse::<serde_json::Number>().is_ok(),
            Self::Text => true,
        }
    }

    /// Whether fhirbolt refuses this JSON leaf for an element of this kind. Strings are
    /// parsed for booleans and integers because XML carries every value as text.
    fn rejects(self, leaf: &Value) -> bool {
        match (self, leaf) {
            (Self::Boolean, Value::Bool(_)) => false,
            (Self::Boolean, Value::String(text)) => text.parse::<bool>().is_err(),
            (Self::Integer | Self::UnsignedInteger, Value::Number(number)) => !(number.is_i64() || number.is_u64()),
            (Self::Integer | Self::UnsignedInteger, Value::String(text)) => text.parse::<i32>().is_err(),
            (Self::Decimal, Value::Number(_) | Value::String(_)) => false,
            (Self::Text, Value::String(_)) => false,
            (_, Value::Bool(_) | Value::Number(_)) => true,
            _ => false,
        }
    }
}

impl Found<'_> {
    /// Whether this is how fhirbolt prints `leaf`.
    fn describes(&self, leaf: &Value) -> bool {
        match (self, leaf) {
            (Self::Boolean(expected), Value::Bool(boolean)) => expected == boolean,
            (Self::Integer(expected), Value::Number(number)) => number.as_i64() == Some(*expected),
            (Self::Decimal(expected), Value::Number(number)) => number.to_string() == *expected,
            (Self::Text(expected), Value::String(text)) => expected == text,
            _ => false,
        }
    }
}

/// `valueString` is a choice of `value`: the prefix followed by an upper-case type name
/// (R4 section 2.24.0.1 "Choice of Data Types").
fn is_choice_of(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix).and_then(|rest| rest.chars().next()).is_some_and(char::is_uppercase)
}
