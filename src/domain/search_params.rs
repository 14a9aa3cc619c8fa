//! The one search parameter registry. It drives index extraction on every write, the
//! parsing of search requests, and the CapabilityStatement: a parameter exists in all three
//! or in none.
//!
//! Paths are FHIRPath-like element paths below the resource (`for`, `identifier`,
//! `occurrence[x]`); arrays are walked through transparently.

use serde_json::Value;

use super::instant::Instant;
use super::resource_type::ResourceType;

/// The FHIR search parameter types linkbridge indexes (R4 search.html#ptypes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    Token,
    Reference,
    Date,
    String,
}

impl ParamKind {
    pub fn code(self) -> &'static str {
        match self {
            ParamKind::Token => "token",
            ParamKind::Reference => "reference",
            ParamKind::Date => "date",
            ParamKind::String => "string",
        }
    }
}

/// One search parameter of one resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchParam {
    pub resource_type: ResourceType,
    pub name: &'static str,
    pub kind: ParamKind,
    /// Element paths below the resource; `[x]` marks a choice element.
    pub paths: &'static [&'static str],
    /// For references: the types the reference may point at (empty: any).
    pub targets: &'static [ResourceType],
    /// The FHIR core definition this follows, for the CapabilityStatement.
    pub definition: &'static str,
    /// The parameters whose index rows answer this one, where not its own alone (see
    /// [`SearchParam::row_params`]).
    rows_of: Option<&'static [&'static str]>,
}

use ParamKind::{Date, Reference, String as Str, Token};
use ResourceType as T;

const fn p(
    resource_type: ResourceType,
    name: &'static str,
    kind: ParamKind,
    paths: &'static [&'static str],
    targets: &'static [ResourceType],
    definition: &'static str,
) -> SearchParam {
    SearchParam { resource_type, name, kind, paths, targets, definition, rows_of: None }
}

/// `param`, answered from the index rows of the parameters `rows_of` of the same type, which
/// index what it would (checked by a unit test).
const fn answered_from(param: SearchParam, rows_of: &'static [&'static str]) -> SearchParam {
    SearchParam { rows_of: Some(rows_of), ..param }
}

const CORE: &str = "http://hl7.org/fhir/SearchParameter/";

/// Every search parameter except the resource-independent `_id` and `_lastUpdated`, which
/// the store answers from its own columns.
pub static REGISTRY: &[SearchParam] = &[
    // Task
    p(T::Task, "identifier", Token, &["identifier"], &[], "Task-identifier"),
    p(T::Task, "status", Token, &["status"], &[], "Task-status"),
    p(T::Task, "business-status", Token, &["businessStatus"], &[], "Task-business-status"),
    p(T::Task, "code", Token, &["code"], &[], "Task-code"),
    p(T::Task, "intent", Token, &["intent"], &[], "Task-intent"),
    p(T::Task, "owner", Reference, &["owner"], &[T::Organization, T::Practitioner, T::PractitionerRole], "Task-owner"),
    p(
        T::Task,
        "requester",
        Reference,
        &["requester"],
        &[T::Organization, T::Practitioner, T::PractitionerRole],
        "Task-requester",
    ),
    answered_from(p(T::Task, "patient", Reference, &["for"], &[T::Patient], "Task-patient"), &["subject"]),
    p(T::Task, "subject", Reference, &["for"], &[], "Task-subject"),
    p(T::Task, "focus", Reference, &["focus"], &[], "Task-focus"),
    p(T::Task, "based-on", Reference, &["basedOn"], &[], "Task-based-on"),
    p(T::Task, "part-of", Reference, &["partOf"], &[T::Task], "Task-part-of"),
    p(T::Task, "output", Reference, &["output.value[x]"], &[], "Task-output"),
    p(T::Task, "authored-on", Date, &["authoredOn"], &[], "Task-authored-on"),
    p(T::Task, "modified", Date, &["lastModified"], &[], "Task-modified"),
    // ServiceRequest
    p(T::ServiceRequest, "identifier", Token, &["identifier"], &[], "clinical-identifier"),
    p(T::ServiceRequest, "status", Token, &["status"], &[], "ServiceRequest-status"),
    p(T::ServiceRequest, "intent", Token, &["intent"], &[], "ServiceRequest-intent"),
    p(T::ServiceRequest, "category", Token, &["category"], &[], "ServiceRequest-category"),
    p(T::ServiceRequest, "code", Token, &["code"], &[], "clinical-code"),
    answered_from(
        p(T::ServiceRequest, "patient", Reference, &["subject"], &[T::Patient], "clinical-patient"),
        &["subject"],
    ),
    p(T::ServiceRequest, "subject", Reference, &["subject"], &[], "ServiceRequest-subject"),
    p(
        T::ServiceRequest,
        "requester",
        Reference,
        &["requester"],
        &[T::Organization, T::Practitioner, T::PractitionerRole],
        "ServiceRequest-requester",
    ),
    p(
        T::ServiceRequest,
        "performer",
        Reference,
        &["performer"],
        &[T::Organization, T::Practitioner, T::PractitionerRole],
        "ServiceRequest-performer",
    ),
    p(T::ServiceRequest, "supporting-info", Reference, &["supportingInfo"], &[], "ServiceRequest-supporting-info"),
    p(T::ServiceRequest, "based-on", Reference, &["basedOn"], &[], "ServiceRequest-based-on"),
    p(T::ServiceRequest, "authored", Date, &["authoredOn"], &[], "ServiceRequest-authored"),
    p(T::ServiceRequest, "occurrence", Date, &["occurrence[x]"], &[], "ServiceRequest-occurrence"),
    // CarePlan
    p(T::CarePlan, "identifier", Token, &["identifier"], &[], "clinical-identifier"),
    p(T::CarePlan, "status", Token, &["status"], &[], "CarePlan-status"),
    p(T::CarePlan, "intent", Token, &["intent"], &[], "CarePlan-intent"),
    p(T::CarePlan, "category", Token, &["category"], &[], "CarePlan-category"),
    answered_from(p(T::CarePlan, "patient", Reference, &["subject"], &[T::Patient], "clinical-patient"), &["subject"]),
    p(T::CarePlan, "subject", Reference, &["subject"], &[], "CarePlan-subject"),
    p(T::CarePlan, "based-on", Reference, &["basedOn"], &[], "CarePlan-based-on"),
    p(T::CarePlan, "author", Reference, &["author"], &[], "CarePlan-author"),
    p(T::CarePlan, "date", Date, &["period"], &[], "clinical-date"),
    // Patient
    p(T::Patient, "identifier", Token, &["identifier"], &[], "Patient-identifier"),
    answered_from(
        p(T::Patient, "name", Str, &["name.text", "name.prefix", "name.suffix"], &[], "Patient-name"),
        &["name", "family", "given"],
    ),
    p(T::Patient, "family", Str, &["name.family"], &[], "individual-family"),
    p(T::Patient, "given", Str, &["name.given"], &[], "individual-given"),
    p(T::Patient, "birthdate", Date, &["birthDate"], &[], "individual-birthdate"),
    p(T::Patient, "gender", Token, &["gender"], &[], "individual-gender"),
    // Organization
    p(T::Organization, "identifier", Token, &["identifier"], &[], "Organization-identifier"),
    p(T::Organization, "name", Str, &["name", "alias"], &[], "Organization-name"),
    // Practitioner
    p(T::Practitioner, "identifier", Token, &["identifier"], &[], "Practitioner-identifier"),
    answered_from(
        p(T::Practitioner, "name", Str, &["name.text", "name.prefix", "name.suffix"], &[], "Practitioner-name"),
        &["name", "family", "given"],
    ),
    p(T::Practitioner, "family", Str, &["name.family"], &[], "individual-family"),
    p(T::Practitioner, "given", Str, &["name.given"], &[], "individual-given"),
    // PractitionerRole
    p(T::PractitionerRole, "identifier", Token, &["identifier"], &[], "PractitionerRole-identifier"),
    p(
        T::PractitionerRole,
        "practitioner",
        Reference,
        &["practitioner"],
        &[T::Practitioner],
        "PractitionerRole-practitioner",
    ),
    p(
        T::PractitionerRole,
        "organization",
        Reference,
        &["organization"],
        &[T::Organization],
        "PractitionerRole-organization",
    ),
    p(T::PractitionerRole, "role", Token, &["code"], &[], "PractitionerRole-role"),
    // Consent
    p(T::Consent, "identifier", Token, &["identifier"], &[], "clinical-identifier"),
    p(T::Consent, "patient", Reference, &["patient"], &[T::Patient], "clinical-patient"),
    p(T::Consent, "status", Token, &["status"], &[], "Consent-status"),
    p(T::Consent, "category", Token, &["category"], &[], "Consent-category"),
    // Subscription
    p(T::Subscription, "status", Token, &["status"], &[], "Subscription-status"),
    p(T::Subscription, "criteria", Token, &["criteria"], &[], "Subscription-criteria"),
    p(T::Subscription, "url", Token, &["channel.endpoint"], &[], "Subscription-url"),
    p(T::Subscription, "type", Token, &["channel.type"], &[], "Subscription-type"),
];

/// A chained parameter (R4 search.html#chaining) linkbridge answers: resources of
/// `resource_type` whose `reference` points at a `target` resource matching its parameter
/// `param`, e.g. `Task?patient.identifier=system|value`. Only these chains are answered, each
/// one an index probe from the few targets its value names to the references to them (see
/// `store::search`); they are listed here so that parsing and the CapabilityStatement read one
/// list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainSpec {
    pub resource_type: ResourceType,
    /// The parameter as written in a request: `reference[:Target].param`.
    pub name: &'static str,
    reference: &'static str,
    target: ResourceType,
    param: &'static str,
}

const fn chain(
    resource_type: ResourceType,
    name: &'static str,
    reference: &'static str,
    target: ResourceType,
    param: &'static str,
) -> ChainSpec {
    ChainSpec { resource_type, name, reference, target, param }
}

/// Every chained parameter: the identifiers GP systems and CLW tools hold (the patient's NHS or
/// CHI number, the referral's identifier).
pub static CHAINS: &[ChainSpec] = &[
    chain(T::Task, "patient.identifier", "patient", T::Patient, "identifier"),
    chain(T::Task, "subject:Patient.identifier", "subject", T::Patient, "identifier"),
    chain(T::Task, "focus:ServiceRequest.identifier", "focus", T::ServiceRequest, "identifier"),
    chain(T::ServiceRequest, "patient.identifier", "patient", T::Patient, "identifier"),
    chain(T::ServiceRequest, "subject:Patient.identifier", "subject", T::Patient, "identifier"),
    chain(T::CarePlan, "patient.identifier", "patient", T::Patient, "identifier"),
    chain(T::CarePlan, "subject:Patient.identifier", "subject", T::Patient, "identifier"),
    chain(T::Consent, "patient.identifier", "patient", T::Patient, "identifier"),
];

/// A reverse chain (R4 search.html#has) linkbridge answers: resources of `resource_type` that a
/// resource of `source` points at through its `reference` and that matches its `param`, e.g.
/// `ServiceRequest?_has:Task:focus:status=requested`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReverseChainSpec {
    pub resource_type: ResourceType,
    /// The parameter as written in a request: `_has:Source:reference:param`.
    pub name: &'static str,
    source: ResourceType,
    reference: &'static str,
    param: &'static str,
}

pub static REVERSE_CHAINS: &[ReverseChainSpec] = &[ReverseChainSpec {
    resource_type: T::ServiceRequest,
    name: "_has:Task:focus:status",
    source: T::Task,
    reference: "focus",
    param: "status",
}];

/// A chain of either direction, its parameters resolved in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    pub name: &'static str,
    /// The reference parameter: of the searched type (forward), or of the source (reverse).
    pub reference: &'static SearchParam,
    /// The parameter tested on the resources at the other end: of the target (forward), or of
    /// the source (reverse).
    pub param: &'static SearchParam,
    /// `_has`: the other end points at the searched resource.
    pub reverse: bool,
}

impl Chain {
    /// The type of the resources at the other end of the chain.
    pub fn other_end(&self) -> ResourceType {
        self.param.resource_type
    }
}

/// The chained parameter `name` of `resource_type` (forward or reverse), if linkbridge answers it.
pub fn find_chain(resource_type: ResourceType, name: &str) -> Option<Chain> {
    if let Some(spec) = CHAINS.iter().find(|c| c.resource_type == resource_type && c.name == name) {
        let reference = find(resource_type, spec.reference)?;
        let param = find(spec.target, spec.param)?;
        return Some(Chain { name: spec.name, reference, param, reverse: false });
    }
    let spec = REVERSE_CHAINS.iter().find(|c| c.resource_type == resource_type && c.name == name)?;
    let reference = find(spec.source, spec.reference)?;
    let param = find(spec.source, spec.param)?;
    Some(Chain { name: spec.name, reference, param, reverse: true })
}

/// The chained parameters of one type (forward, then reverse), for the CapabilityStatement.
pub fn chains_for(resource_type: ResourceType) -> impl Iterator<Item = Chain> {
    let forward = CHAINS.iter().filter(move |c| c.resource_type == resource_type).map(|c| c.name);
    let reverse = REVERSE_CHAINS.iter().filter(move |c| c.resource_type == resource_type).map(|c| c.name);
    forward.chain(reverse).filter_map(move |name| find_chain(resource_type, name))
}

impl SearchParam {
    pub fn definition_url(&self) -> String {
        format!("{CORE}{}", self.definition)
    }

    /// The parameters whose index rows answer this one. Its own, unless another parameter
    /// indexes the same: `patient` is answered from the rows of `subject` (the same element,
    /// whatever the type it points at; the type is tested when searching), and a HumanName's
    /// `name` from its own rows of `text`, `prefix` and `suffix` and those of `family` and
    /// `given`. Otherwise a referral would write those rows twice.
    pub fn row_params(&'static self) -> &'static [&'static str] {
        self.rows_of.unwrap_or(std::slice::from_ref(&self.name))
    }

    /// Whether this parameter writes index rows of its own (under its name).
    pub fn has_own_rows(&'static self) -> bool {
        self.row_params().contains(&self.name)
    }
}

/// The parameters of one type, in registry order.
pub fn params_for(resource_type: ResourceType) -> impl Iterator<Item = &'static SearchParam> {
    REGISTRY.iter().filter(move |p| p.resource_type == resource_type)
}

/// Looks a parameter up by type and name.
pub fn find(resource_type: ResourceType, name: &str) -> Option<&'static SearchParam> {
    params_for(resource_type).find(|p| p.name == name)
}

/// One row of the search index, as extracted from a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexEntry {
    Token {
        param: &'static str,
        system: Option<String>,
        code: Option<String>,
        /// Display text (CodeableConcept.text, Coding.display) for `:text`.
        text: Option<String>,
    },
    Reference {
        param: &'static str,
        target_type: Option<String>,
        target_id: Option<String>,
        /// `Reference.identifier`, for the `:identifier` modifier.
        identifier_system: Option<String>,
        identifier_value: Option<String>,
    },
    Date {
        param: &'static str,
        /// The instant range the value covers, inclusive, in microseconds.
        low: i64,
        high: i64,
    },
    String {
        param: &'static str,
        /// Normalised for matching: lower case.
        value: String,
        /// As written, for `:exact` (R4 search.html#modifiers: case and accents count).
        exact: String,
    },
}

/// Extracts every index entry of a resource according to the registry: the rows of each
/// parameter that has rows of its own ([`SearchParam::row_params`]).
pub fn extract_index(resource_type: ResourceType, resource: &Value) -> Vec<IndexEntry> {
    let mut out = Vec::new();
    for param in params_for(resource_type).filter(|p| p.has_own_rows()) {
        for path in param.paths {
            let mut values = Vec::new();
            collect_path(resource, path, &mut values);
            for value in values {
                index_value(param, value, &mut out);
            }
        }
    }
    out
}

/// Follows a dotted element path, walking arrays and resolving `name[x]` choice elements.
fn collect_path<'v>(node: &'v Value, path: &str, out: &mut Vec<&'v Value>) {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    let Value::Object(map) = node else {
        if let Value::Array(items) = node {
            for item in items {
                collect_path(item, path, out);
            }
        }
        return;
    };
    let children: Vec<&Value> = match head.strip_suffix("[x]") {
        Some(stem) => map
            .iter()
            .filter(|(k, _)| {
                k.strip_prefix(stem).is_some_and(|suffix| suffix.starts_with(|c: char| c.is_ascii_uppercase()))
            })
            .map(|(_, v)| v)
            .collect(),
        None => map.get(head).into_iter().collect(),
    };
    for child in children {
        let items: Vec<&Value> = match child {
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        for item in items {
            match rest {
                Some(rest) => collect_path(item, rest, out),
                None => out.push(item),
            }
        }
    }
}

fn index_value(param: &SearchParam, value: &Value, out: &mut Vec<IndexEntry>) {
    match param.kind {
        ParamKind::Token => index_token(param.name, value, out),
        ParamKind::Reference => index_reference(param.name, value, out),
        ParamKind::Date => {
            if let Some((low, high)) = date_range_of(value) {
                out.push(IndexEntry::Date { param: param.name, low, high });
            }
        }
        ParamKind::String => index_string(param.name, value, out),
    }
}

fn text_of(value: Option<&Value>) -> Option<String> {
    value.and_then(Value::as_str).map(str::to_owned)
}

fn index_token(param: &'static str, value: &Value, out: &mut Vec<IndexEntry>) {
    match value {
        Value::String(code) => {
            out.push(IndexEntry::Token { param, system: None, code: Some(code.clone()), text: None })
        }
        Value::Bool(b) => out.push(IndexEntry::Token { param, system: None, code: Some(b.to_string()), text: None }),
        Value::Object(map) => {
            if let Some(Value::Array(codings)) = map.get("coding") {
                // CodeableConcept
                let text = text_of(map.get("text"));
                for coding in codings {
                    out.push(IndexEntry::Token {
                        param,
                        system: text_of(coding.get("system")),
                        code: text_of(coding.get("code")),
                        text: text_of(coding.get("display")).or_else(|| text.clone()),
                    });
                }
                if codings.is_empty() && text.is_some() {
                    out.push(IndexEntry::Token { param, system: None, code: None, text });
                }
            } else if map.contains_key("value") && !map.contains_key("code") {
                // Identifier
                out.push(IndexEntry::Token {
                    param,
                    system: text_of(map.get("system")),
                    code: text_of(map.get("value")),
                    text: map.get("type").and_then(|t| text_of(t.get("text"))),
                });
            } else if map.contains_key("code") || map.contains_key("system") {
                // Coding
                out.push(IndexEntry::Token {
                    param,
                    system: text_of(map.get("system")),
                    code: text_of(map.get("code")),
                    text: text_of(map.get("display")),
                });
            } else if let Some(text) = text_of(map.get("text")) {
                out.push(IndexEntry::Token { param, system: None, code: None, text: Some(text) });
            }
        }
        _ => {}
    }
}

/// Splits a literal reference into type and id: `Patient/123`, `Patient/123/_history/2`, or an
/// absolute URL ending in `Type/id`. Whether an absolute URL points at this server is for the
/// caller to decide; the index keeps type and id either way.
pub fn split_reference(reference: &str) -> Option<(String, String)> {
    let without_history = match reference.find("/_history/") {
        Some(pos) => &reference[..pos],
        None => reference,
    };
    let mut parts = without_history.rsplitn(3, '/');
    let id = parts.next()?;
    let ty = parts.next()?;
    let looks_like_type =
        ty.starts_with(|c: char| c.is_ascii_uppercase()) && ty.chars().all(|c| c.is_ascii_alphanumeric());
    (looks_like_type && !id.is_empty()).then(|| (ty.to_owned(), id.to_owned()))
}

fn index_reference(param: &'static str, value: &Value, out: &mut Vec<IndexEntry>) {
    let Value::Object(map) = value else { return };
    let (target_type, target_id) = map
        .get("reference")
        .and_then(Value::as_str)
        .and_then(split_reference)
        .map_or((None, None), |(t, i)| (Some(t), Some(i)));
    let identifier = map.get("identifier");
    let identifier_system = identifier.and_then(|i| text_of(i.get("system")));
    let identifier_value = identifier.and_then(|i| text_of(i.get("value")));
    if target_id.is_some() || identifier_value.is_some() {
        out.push(IndexEntry::Reference { param, target_type, target_id, identifier_system, identifier_value });
    }
}

fn index_string(param: &'static str, value: &Value, out: &mut Vec<IndexEntry>) {
    let mut push = |s: &str| out.push(IndexEntry::String { param, value: normalise_string(s), exact: s.to_owned() });
    match value {
        Value::String(s) => push(s),
        Value::Object(map) => {
            // HumanName and Address: every textual part is searchable (R4 search.html#string).
            for key in [
                "text",
                "family",
                "given",
                "prefix",
                "suffix",
                "line",
                "city",
                "district",
                "state",
                "postalCode",
                "country",
            ] {
                match map.get(key) {
                    Some(Value::String(s)) => push(s),
                    Some(Value::Array(items)) => {
                        for s in items.iter().filter_map(Value::as_str) {
                            push(s)
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// Case-folds for string search (R4: "case-insensitive and accent-insensitive"; accents are
/// folded for the Latin letters seen in UK names).
pub fn normalise_string(raw: &str) -> String {
    raw.chars()
        .map(|c| match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'À' | 'Á' | 'Â' | 'Ã' | 'Ä' | 'Å' => 'a',
            'è' | 'é' | 'ê' | 'ë' | 'È' | 'É' | 'Ê' | 'Ë' => 'e',
            'ì' | 'í' | 'î' | 'ï' | 'Ì' | 'Í' | 'Î' | 'Ï' => 'i',
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'Ò' | 'Ó' | 'Ô' | 'Õ' | 'Ö' => 'o',
            'ù' | 'ú' | 'û' | 'ü' | 'Ù' | 'Ú' | 'Û' | 'Ü' => 'u',
            'ç' | 'Ç' => 'c',
            'ñ' | 'Ñ' => 'n',
            other => other,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

/// The instant range a date, dateTime, instant or Period value covers.
pub fn date_range_of(value: &Value) -> Option<(i64, i64)> {
    match value {
        Value::String(s) => partial_date_range(s),
        Value::Object(map) => {
            let start = map.get("start").and_then(Value::as_str).and_then(partial_date_range);
            let end = map.get("end").and_then(Value::as_str).and_then(partial_date_range);
            match (start, end) {
                (None, None) => None,
                (s, e) => Some((s.map_or(i64::MIN, |r| r.0), e.map_or(i64::MAX, |r| r.1))),
            }
        }
        _ => None,
    }
}

/// The range covered by a FHIR date/dateTime/instant of any precision: `2024` covers the year,
/// `2024-03` the month, `2024-03-05` the day, a dateTime the second (or the given fraction).
/// Values without a zone are taken as UTC (R4 search.html#date allows the server to choose).
pub fn partial_date_range(raw: &str) -> Option<(i64, i64)> {
    use time::{Date, Month, PrimitiveDateTime, Time};
    let year: i32 = raw.get(0..4)?.parse().ok()?;
    let month_of = |n: u8| Month::try_from(n).ok();
    const DAY: i64 = 86_400_000_000;
    let start_of =
        |d: Date| -> i64 { PrimitiveDateTime::new(d, Time::MIDNIGHT).assume_utc().unix_timestamp() * 1_000_000 };
    match raw.len() {
        4 => {
            let from = Date::from_calendar_date(year, Month::January, 1).ok()?;
            let to = Date::from_calendar_date(year + 1, Month::January, 1).ok()?;
            Some((start_of(from), start_of(to) - 1))
        }
        7 => {
            let month: u8 = raw.get(5..7)?.parse().ok()?;
            let from = Date::from_calendar_date(year, month_of(month)?, 1).ok()?;
            let next = if month == 12 {
                Date::from_calendar_date(year + 1, Month::January, 1).ok()?
            } else {
                Date::from_calendar_date(year, month_of(month + 1)?, 1).ok()?
            };
            Some((start_of(from), start_of(next) - 1))
        }
        10 => {
            let month: u8 = raw.get(5..7)?.parse().ok()?;
            let day: u8 = raw.get(8..10)?.parse().ok()?;
            let from = Date::from_calendar_date(year, month_of(month)?, day).ok()?;
            let start = start_of(from);
            Some((start, start + DAY - 1))
        }
        _ => {
            let instant = Instant::parse_rfc3339(raw).or_else(|| {
                // A dateTime to the second without a zone is not valid FHIR, but hh:mm is
                // accepted by search (R4 search.html#date): treat both as UTC.
                let with_seconds = if raw.len() == 16 { format!("{raw}:00Z") } else { format!("{raw}Z") };
                Instant::parse_rfc3339(&with_seconds)
            })?;
            let micros = instant.micros();
            // The precision given is the range: a value to the second covers that second.
            let fraction_digits =
                raw.split_once('.').map(|(_, f)| f.chars().take_while(char::is_ascii_digit).count()).unwrap_or(0);
            let span = 10_i64.pow(6_u32.saturating_sub(fraction_digits.min(6) as u32));
            let low = micros - micros.rem_euclid(span);
            Some((low, low + span - 1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_parameter_name_is_unique_within_its_type() {
        for p in REGISTRY {
            let same = REGISTRY.iter().filter(|q| q.resource_type == p.resource_type && q.name == p.name).count();
            assert_eq!(same, 1, "{}:{} is registered twice", p.resource_type, p.name);
        }
    }

    #[test]
    fn every_chain_resolves_to_a_reference_that_reaches_its_other_end() {
        for spec in CHAINS {
            let chain = find_chain(spec.resource_type, spec.name).expect("a listed chain resolves");
            assert_eq!(chain.reference.kind, ParamKind::Reference, "{}", spec.name);
            assert!(
                chain.reference.targets.is_empty() || chain.reference.targets.contains(&spec.target),
                "{}",
                spec.name
            );
            assert_eq!(chain.other_end(), spec.target);
        }
        for spec in REVERSE_CHAINS {
            let chain = find_chain(spec.resource_type, spec.name).expect("a listed reverse chain resolves");
            assert!(chain.reverse);
            let targets = chain.reference.targets;
            assert!(targets.is_empty() || targets.contains(&spec.resource_type), "{}", spec.name);
            assert_eq!(chain.other_end(), spec.source);
        }
        assert_eq!(chains_for(ResourceType::Task).count(), 3);
    }

    #[test]
    fn a_parameter_answered_from_other_ones_rows_indexes_nothing_they_do_not() {
        for p in REGISTRY.iter().filter(|p| p.rows_of.is_some()) {
            for name in p.row_params().iter().filter(|name| **name != p.name) {
                let rows = find(p.resource_type, name).expect("row_params names parameters of the same type");
                assert_eq!(rows.row_params(), [rows.name], "{}:{name} answers from its own rows", p.resource_type);
                assert_eq!(rows.kind, p.kind, "{}:{} and {name}", p.resource_type, p.name);
                let narrower = rows.targets.is_empty() || p.targets.iter().all(|t| rows.targets.contains(t));
                assert!(narrower, "{}:{} may point at types {name} does not index", p.resource_type, p.name);
            }
        }
        // The element each reads: the same, or (a HumanName's parts) within it.
        let same = |t: ResourceType, a: &str, b: &str| find(t, a).map(|p| p.paths) == find(t, b).map(|p| p.paths);
        assert!(same(ResourceType::Task, "patient", "subject"));
        assert!(same(ResourceType::ServiceRequest, "patient", "subject"));
        assert!(same(ResourceType::CarePlan, "patient", "subject"));
    }

    #[test]
    fn a_human_names_every_part_is_found_by_name_and_written_once() {
        let patient = json!({"resourceType": "Patient", "name": [{"text": "Dr Ann Smith", "prefix": ["Dr"],
            "family": "Smith", "given": ["Ann", "Marie"]}]});
        let index = extract_index(ResourceType::Patient, &patient);
        let rows_of = |param: &str| -> Vec<String> {
            let mut values: Vec<String> = index
                .iter()
                .filter_map(|e| match e {
                    IndexEntry::String { param: p, exact, .. } if *p == param => Some(exact.clone()),
                    _ => None,
                })
                .collect();
            values.sort();
            values
        };
        assert_eq!(rows_of("family"), ["Smith"]);
        assert_eq!(rows_of("given"), ["Ann", "Marie"]);
        assert_eq!(rows_of("name"), ["Dr", "Dr Ann Smith"], "the parts no other parameter indexes");
        let name = find(ResourceType::Patient, "name").expect("name");
        let found: usize = name.row_params().iter().map(|p| rows_of(p).len()).sum();
        assert_eq!(found, 5, "name is answered from every part");
    }

    #[test]
    fn a_task_yields_token_reference_and_date_entries() {
        let task = json!({
            "resourceType": "Task",
            "status": "requested",
            "identifier": [{"system": "urn:gp", "value": "R-1"}],
            "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
            "for": {"reference": "Patient/p1"},
            "owner": {"reference": "Organization/clw", "identifier": {"system": OdsCodeSystem::URL, "value": "CLW01"}},
            "authoredOn": "2026-11-23"
        });
        let index = extract_index(ResourceType::Task, &task);
        let has = |e: &IndexEntry| index.contains(e);
        assert!(has(&IndexEntry::Token { param: "status", system: None, code: Some("requested".into()), text: None }));
        assert!(has(&IndexEntry::Token {
            param: "identifier",
            system: Some("urn:gp".into()),
            code: Some("R-1".into()),
            text: None
        }));
        assert!(has(&IndexEntry::Reference {
            param: "subject",
            target_type: Some("Patient".into()),
            target_id: Some("p1".into()),
            identifier_system: None,
            identifier_value: None
        }));
        // `patient` is answered from `subject`'s rows (`SearchParam::row_params`): written once.
        assert!(!index.iter().any(|e| matches!(e, IndexEntry::Reference { param: "patient", .. })), "{index:?}");
        assert!(has(&IndexEntry::Reference {
            param: "owner",
            target_type: Some("Organization".into()),
            target_id: Some("clw".into()),
            identifier_system: Some(OdsCodeSystem::URL.into()),
            identifier_value: Some("CLW01".into())
        }));
        assert!(index.iter().any(|e| matches!(e, IndexEntry::Date { param: "authored-on", .. })));
    }

    struct OdsCodeSystem;
    impl OdsCodeSystem {
        const URL: &'static str = "https://fhir.nhs.uk/Id/ods-organization-code";
    }

    #[test]
    fn choice_elements_are_found_by_their_stem() {
        let sr =
            json!({"resourceType": "ServiceRequest", "occurrencePeriod": {"start": "2026-01-01", "end": "2026-01-31"}});
        let index = extract_index(ResourceType::ServiceRequest, &sr);
        assert!(index.iter().any(|e| matches!(e, IndexEntry::Date { param: "occurrence", .. })), "{index:?}");
    }

    #[test]
    fn partial_dates_cover_their_whole_precision() {
        let (low, high) = partial_date_range("2024").expect("year");
        assert_eq!(Instant::from_micros(low).to_fhir(), "2024-01-01T00:00:00.000000Z");
        assert_eq!(Instant::from_micros(high).to_fhir(), "2024-12-31T23:59:59.999999Z");
        let (low, high) = partial_date_range("2024-02").expect("month");
        assert_eq!(Instant::from_micros(low).to_fhir(), "2024-02-01T00:00:00.000000Z");
        assert_eq!(Instant::from_micros(high).to_fhir(), "2024-02-29T23:59:59.999999Z");
        let (low, high) = partial_date_range("2024-02-10T10:00:00+01:00").expect("second");
        assert_eq!(Instant::from_micros(low).to_fhir(), "2024-02-10T09:00:00.000000Z");
        assert_eq!(high - low, 999_999);
        assert_eq!(partial_date_range("2024-13"), None);
        assert_eq!(partial_date_range("2024-02-30"), None);
    }

    #[test]
    fn references_split_into_type_and_id() {
        let cases = [
            ("Patient/1", Some(("Patient", "1"))),
            ("https://lb.example/fhir/Task/abc/_history/3", Some(("Task", "abc"))),
            ("urn:uuid:6f1c", None),
            ("#contained", None),
            ("patient/1", None),
        ];
        for (raw, expected) in cases {
            let got = split_reference(raw);
            assert_eq!(got.as_ref().map(|(t, i)| (t.as_str(), i.as_str())), expected, "{raw}");
        }
    }

    #[test]
    fn strings_fold_case_and_accents() {
        assert_eq!(normalise_string("MacDonald-Éilís"), "macdonald-eilis");
    }
}
