//! Compiling StructureDefinition differentials into rules, and checking resources with them.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::invariants::{check_for, InvariantCheck, InvariantContext};
use super::package::{Package, PackageError};
use crate::domain::outcome::{Issue, IssueCode};

/// Base R4 StructureDefinitions: a target profile here names a resource type.
const BASE_DEFINITIONS: &str = "http://hl7.org/fhir/StructureDefinition/";

/// Element keys that document an element and constrain nothing.
const DOCUMENTATION_KEYS: &[&str] =
    &["id", "path", "short", "definition", "comment", "requirements", "alias", "label", "mustSupport"];

/// One profile, compiled.
#[derive(Debug)]
pub struct Profile {
    url: String,
    id: String,
    resource_type: String,
    rules: Vec<ElementRule>,
    /// The `<type>.code` pattern: a resource matching it is checked without claiming the profile.
    code_pattern: Option<Value>,
}

impl Profile {
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn resource_type(&self) -> &str {
        &self.resource_type
    }
}

#[derive(Debug)]
struct ElementRule {
    /// The element's path after the resource type (empty for the resource itself).
    segments: Vec<String>,
    min: usize,
    /// `None`: unbounded (`*`) or not constrained.
    max: Option<usize>,
    fixed: Option<Value>,
    pattern: Option<Value>,
    binding: Option<BindingRule>,
    /// Resource types a Reference may point at.
    target_types: Option<Vec<String>>,
    /// Types a choice element (`value[x]`) may take, as in its JSON name suffix (`String`, `Quantity`).
    choice_types: Option<Vec<String>>,
    invariants: Vec<(String, InvariantCheck)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strength {
    /// Every value must be in the value set.
    Required,
    /// A coding in one of the value set's code systems must be one of its codes; other
    /// systems and text-only concepts are allowed, as an extensible binding allows.
    Extensible,
}

#[derive(Debug)]
struct BindingRule {
    strength: Strength,
    value_set: String,
    codes: HashSet<(String, String)>,
    systems: HashSet<String>,
}

impl BindingRule {
    fn has_code(&self, code: &str) -> bool {
        self.codes.iter().any(|(_, c)| c == code)
    }

    fn has_coding(&self, coding: &Value) -> bool {
        let system = coding.get("system").and_then(Value::as_str).unwrap_or_default();
        let code = coding.get("code").and_then(Value::as_str).unwrap_or_default();
        self.codes.contains(&(system.to_owned(), code.to_owned()))
    }

    fn claims_system(&self, coding: &Value) -> bool {
        coding.get("system").and_then(Value::as_str).is_some_and(|s| self.systems.contains(s))
    }
}

/// Every profile of a package, ready to check resources.
#[derive(Debug)]
pub struct Validator {
    package: Package,
    profiles: Vec<Profile>,
    context: InvariantContext,
}

impl Validator {
    /// Compiles every StructureDefinition; refuses constraint kinds the engine does not know.
    pub fn new(package: Package) -> Result<Validator, PackageError> {
        let profiles = package
            .of_type("StructureDefinition")
            .map(|definition| compile_profile(&package, definition))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Validator { package, profiles, context: InvariantContext::default() })
    }

    /// Recognise CHI numbers by these identifier systems (configuration `chi_systems`).
    pub fn with_chi_systems(mut self, systems: &[String]) -> Self {
        self.context.chi_systems = systems.to_vec();
        self
    }

    pub fn package(&self) -> &Package {
        &self.package
    }

    pub fn profiles(&self) -> &[Profile] {
        &self.profiles
    }

    pub fn profile(&self, url: &str) -> Option<&Profile> {
        let url = url.split('|').next().unwrap_or(url);
        self.profiles.iter().find(|p| p.url == url)
    }

    /// Every issue of `resource` against the profiles that apply to it (see the module doc).
    pub fn validate(&self, resource: &Value) -> Vec<Issue> {
        let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else {
            return Vec::new();
        };
        let mut issues = Vec::new();
        let mut applicable: Vec<&Profile> = Vec::new();
        let claimed = resource.pointer("/meta/profile").and_then(Value::as_array).into_iter().flatten();
        for (index, url) in claimed.enumerate() {
            // A profile this server does not know is the sender's business (R4 3.1.0.3.2).
            let Some(profile) = url.as_str().and_then(|url| self.profile(url)) else { continue };
            if profile.resource_type != resource_type {
                issues.push(
                    Issue::error(
                        IssueCode::Invalid,
                        format!("the profile {} is for {}, not {resource_type}", profile.url, profile.resource_type),
                    )
                    .at(format!("{resource_type}.meta.profile[{index}]")),
                );
            } else if !applicable.iter().any(|p| std::ptr::eq(*p, profile)) {
                applicable.push(profile);
            }
        }
        for profile in &self.profiles {
            let implied = profile.resource_type == resource_type
                && profile
                    .code_pattern
                    .as_ref()
                    .is_some_and(|pattern| resource.get("code").is_some_and(|code| matches_pattern(code, pattern)));
            if implied && !applicable.iter().any(|p| std::ptr::eq(*p, profile)) {
                applicable.push(profile);
            }
        }
        for profile in applicable {
            issues.extend(check_profile(profile, resource, &self.context));
        }
        issues
    }

    /// Every issue of `resource` against one named profile (`$validate?profile=`); `None`
    /// when the profile is not in the package.
    pub fn validate_against(&self, resource: &Value, url: &str) -> Option<Vec<Issue>> {
        let profile = self.profile(url)?;
        let resource_type = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
        if profile.resource_type != resource_type {
            return Some(vec![Issue::error(
                IssueCode::Invalid,
                format!("the profile {} is for {}, not {resource_type}", profile.url, profile.resource_type),
            )
            .at(resource_type.to_owned())]);
        }
        Some(check_profile(profile, resource, &self.context))
    }
}

fn text<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

fn compile_profile(package: &Package, definition: &Value) -> Result<Profile, PackageError> {
    let url = text(definition, "url").ok_or_else(|| PackageError("a StructureDefinition has no url".to_owned()))?;
    let fail = |why: String| PackageError(format!("{url}: {why}"));
    let resource_type = text(definition, "type").ok_or_else(|| fail("no type".to_owned()))?;
    let base = text(definition, "baseDefinition").unwrap_or_default();
    if base != format!("{BASE_DEFINITIONS}{resource_type}") {
        return Err(fail(format!("the engine supports base R4 parents only, not {base}")));
    }
    let elements = definition
        .pointer("/differential/element")
        .and_then(Value::as_array)
        .ok_or_else(|| fail("no differential".to_owned()))?;
    let mut rules = Vec::new();
    let mut code_pattern = None;
    for element in elements {
        let rule = compile_element(package, resource_type, element).map_err(fail)?;
        if rule.segments == ["code"] {
            code_pattern = rule.pattern.clone();
        }
        rules.push(rule);
    }
    Ok(Profile {
        url: url.to_owned(),
        id: text(definition, "id").unwrap_or_default().to_owned(),
        resource_type: resource_type.to_owned(),
        rules,
        code_pattern,
    })
}

fn compile_element(package: &Package, resource_type: &str, element: &Value) -> Result<ElementRule, String> {
    let path = text(element, "path").ok_or("an element has no path")?;
    let segments: Vec<String> = match path.strip_prefix(resource_type) {
        Some("") => Vec::new(),
        Some(rest) if rest.starts_with('.') => rest[1..].split('.').map(str::to_owned).collect(),
        _ => return Err(format!("element path {path} is not in {resource_type}")),
    };
    let object = element.as_object().ok_or("an element is not an object")?;
    let mut rule = ElementRule {
        segments,
        min: 0,
        max: None,
        fixed: None,
        pattern: None,
        binding: None,
        target_types: None,
        choice_types: None,
        invariants: Vec::new(),
    };
    for (key, value) in object {
        match key.as_str() {
            k if DOCUMENTATION_KEYS.contains(&k) => {}
            "min" => rule.min = value.as_u64().ok_or(format!("{path}: min is not a number"))? as usize,
            "max" => {
                rule.max = match value.as_str() {
                    Some("*") => None,
                    Some(n) => Some(n.parse().map_err(|_| format!("{path}: max {n} is not a number or *"))?),
                    None => return Err(format!("{path}: max is not a string")),
                }
            }
            k if k.starts_with("fixed") => rule.fixed = Some(value.clone()),
            k if k.starts_with("pattern") => rule.pattern = Some(value.clone()),
            "binding" => rule.binding = compile_binding(package, path, value)?,
            "type" => compile_types(package, path, value, &mut rule)?,
            "constraint" => {
                for constraint in value.as_array().into_iter().flatten() {
                    let key = text(constraint, "key").ok_or(format!("{path}: a constraint has no key"))?;
                    let check = check_for(key).ok_or(format!("{path}: invariant {key} has no check in the engine"))?;
                    rule.invariants.push((key.to_owned(), check));
                }
            }
            other => return Err(format!("{path}: the engine does not support '{other}'")),
        }
    }
    Ok(rule)
}

fn compile_binding(package: &Package, path: &str, binding: &Value) -> Result<Option<BindingRule>, String> {
    let strength = match text(binding, "strength") {
        Some("required") => Strength::Required,
        Some("extensible") => Strength::Extensible,
        // Preferred and example bindings constrain nothing.
        Some("preferred" | "example") => return Ok(None),
        other => return Err(format!("{path}: unknown binding strength {other:?}")),
    };
    let url = text(binding, "valueSet").ok_or(format!("{path}: binding without valueSet"))?;
    let url = url.split('|').next().unwrap_or(url);
    let value_set = package
        .of_type("ValueSet")
        .find(|vs| text(vs, "url") == Some(url))
        .ok_or(format!("{path}: value set {url} is not in the package"))?;
    let compose = value_set.get("compose").ok_or(format!("{url}: no compose"))?;
    if compose.get("exclude").is_some() {
        return Err(format!("{url}: exclude is not supported"));
    }
    let mut codes = HashSet::new();
    let mut systems = HashSet::new();
    for include in compose.get("include").and_then(Value::as_array).into_iter().flatten() {
        let system = text(include, "system").ok_or(format!("{url}: an include without system"))?;
        if include.get("filter").is_some() || include.get("valueSet").is_some() {
            return Err(format!("{url}: only enumerated concepts are supported"));
        }
        let concepts =
            include.get("concept").and_then(Value::as_array).ok_or(format!("{url}: include without concepts"))?;
        systems.insert(system.to_owned());
        for concept in concepts {
            let code = text(concept, "code").ok_or(format!("{url}: a concept without code"))?;
            codes.insert((system.to_owned(), code.to_owned()));
        }
    }
    Ok(Some(BindingRule { strength, value_set: url.to_owned(), codes, systems }))
}

fn compile_types(package: &Package, path: &str, types: &Value, rule: &mut ElementRule) -> Result<(), String> {
    let types = types.as_array().ok_or(format!("{path}: type is not an array"))?;
    if path.ends_with("[x]") {
        let codes = types.iter().filter_map(|t| text(t, "code")).map(upper_first).collect();
        rule.choice_types = Some(codes);
        return Ok(());
    }
    let mut targets = Vec::new();
    for t in types {
        if text(t, "code") != Some("Reference") {
            return Err(format!("{path}: only Reference types can be restricted outside choice elements"));
        }
        for profile in t.get("targetProfile").and_then(Value::as_array).into_iter().flatten() {
            let profile = profile.as_str().ok_or(format!("{path}: targetProfile is not a string"))?;
            let target = match profile.strip_prefix(BASE_DEFINITIONS) {
                Some(base_type) => base_type.to_owned(),
                None => package
                    .of_type("StructureDefinition")
                    .find(|sd| text(sd, "url") == Some(profile))
                    .and_then(|sd| text(sd, "type"))
                    .ok_or(format!("{path}: target profile {profile} is not known"))?
                    .to_owned(),
            };
            targets.push(target);
        }
    }
    if !targets.is_empty() {
        rule.target_types = Some(targets);
    }
    Ok(())
}

fn upper_first(code: &str) -> String {
    let mut chars = code.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// `instance` has everything `pattern` has (R4 ElementDefinition.pattern[x]): objects
/// recursively, and each item of a pattern array matched by some item of the instance array.
fn matches_pattern(instance: &Value, pattern: &Value) -> bool {
    match (instance, pattern) {
        (Value::Object(have), Value::Object(want)) => {
            want.iter().all(|(k, w)| have.get(k).is_some_and(|h| matches_pattern(h, w)))
        }
        (Value::Array(have), Value::Array(want)) => want.iter().all(|w| have.iter().any(|h| matches_pattern(h, w))),
        (have, want) => have == want,
    }
}

/// The children named `name` of an object, with their FHIRPath, as (expression, value).
fn children<'a>(parent: &'a Map<String, Value>, expression: &str, name: &str) -> Vec<(String, &'a Value)> {
    if let Some(stem) = name.strip_suffix("[x]") {
        let chosen = parent.iter().find(|(key, _)| {
            key.strip_prefix(stem).is_some_and(|suffix| suffix.starts_with(|c: char| c.is_ascii_uppercase()))
        });
        return chosen
            .map(|(key, value)| vec![(format!("{expression}.{stem}.ofType({})", &key[stem.len()..]), value)])
            .unwrap_or_default();
    }
    match parent.get(name) {
        Some(Value::Array(items)) => {
            items.iter().enumerate().map(|(i, item)| (format!("{expression}.{name}[{i}]"), item)).collect()
        }
        Some(value) => vec![(format!("{expression}.{name}"), value)],
        None => Vec::new(),
    }
}

/// Every node at `segments` below `root`, with its FHIRPath.
fn select<'a>(root: &'a Value, root_expression: &str, segments: &[String]) -> Vec<(String, &'a Value)> {
    let mut nodes = vec![(root_expression.to_owned(), root)];
    for segment in segments {
        nodes = nodes
            .iter()
            .filter_map(|(expression, node)| node.as_object().map(|object| children(object, expression, segment)))
            .flatten()
            .collect();
    }
    nodes
}

fn check_profile(profile: &Profile, resource: &Value, context: &InvariantContext) -> Vec<Issue> {
    let mut issues = Vec::new();
    let root = profile.resource_type.as_str();
    for rule in &profile.rules {
        let Some((name, parent_segments)) = rule.segments.split_last() else {
            for (key, check) in &rule.invariants {
                issues.extend(invariant_issues(profile, key, check(resource, root, context)));
            }
            continue;
        };
        for (parent_expression, parent) in select(resource, root, parent_segments) {
            let Some(parent) = parent.as_object() else { continue };
            let found = children(parent, &parent_expression, name);
            let element = format!("{parent_expression}.{}", name.trim_end_matches("[x]"));
            if found.len() < rule.min {
                issues.push(
                    Issue::error(
                        IssueCode::Required,
                        format!("{element} is required by {} (min {}, found {})", profile.id, rule.min, found.len()),
                    )
                    .at(element.clone()),
                );
            }
            if let Some(max) = rule.max.filter(|max| found.len() > *max) {
                issues.push(
                    Issue::error(
                        IssueCode::Structure,
                        format!("{element} may repeat at most {max} time(s) in {} (found {})", profile.id, found.len()),
                    )
                    .at(element.clone()),
                );
            }
            for (expression, value) in &found {
                issues.extend(check_value(profile, rule, name, expression, value, context));
            }
        }
    }
    issues
}

fn invariant_issues(profile: &Profile, key: &str, findings: Vec<(String, String)>) -> Vec<Issue> {
    findings
        .into_iter()
        .map(|(expression, message)| {
            Issue::error(IssueCode::Invariant, format!("{message} ({key}, {})", profile.id)).at(expression)
        })
        .collect()
}

fn check_value(
    profile: &Profile,
    rule: &ElementRule,
    name: &str,
    expression: &str,
    value: &Value,
    context: &InvariantContext,
) -> Vec<Issue> {
    let mut issues = Vec::new();
    let value_issue = |message: String| Issue::error(IssueCode::Value, message).at(expression.to_owned());
    if let Some(fixed) = rule.fixed.as_ref().filter(|fixed| *fixed != value) {
        issues.push(value_issue(format!("{expression} must be exactly {fixed} in {}", profile.id)));
    }
    if let Some(pattern) = rule.pattern.as_ref().filter(|pattern| !matches_pattern(value, pattern)) {
        issues.push(value_issue(format!("{expression} must match {pattern} in {}", profile.id)));
    }
    if let Some(binding) = &rule.binding {
        issues.extend(check_binding(binding, expression, value));
    }
    if let Some(targets) = &rule.target_types {
        if let Some(found) = reference_type(value).filter(|found| !targets.iter().any(|t| t == found)) {
            issues.push(
                Issue::error(
                    IssueCode::Structure,
                    format!("{expression} must reference {} in {}, not {found}", targets.join(" or "), profile.id),
                )
                .at(expression.to_owned()),
            );
        }
    }
    if let Some(allowed) = &rule.choice_types {
        let stem = name.trim_end_matches("[x]");
        let chosen = expression.rsplit_once(".ofType(").map(|(_, t)| t.trim_end_matches(')')).unwrap_or_default();
        if !allowed.iter().any(|t| t == chosen) {
            issues.push(
                Issue::error(
                    IssueCode::Structure,
                    format!("{stem} may be {} in {}, not {chosen}", allowed.join(" or "), profile.id),
                )
                .at(expression.to_owned()),
            );
        }
    }
    for (key, check) in &rule.invariants {
        issues.extend(invariant_issues(profile, key, check(value, expression, context)));
    }
    issues
}

/// The resource type a Reference names: from a relative or absolute literal reference, else
/// from `type`. `None` when it cannot be told (a `urn:uuid:` inside a Bundle, a contained
/// `#id`, or a logical reference by identifier alone).
fn reference_type(reference: &Value) -> Option<&str> {
    if let Some(literal) = text(reference, "reference") {
        if literal.starts_with('#') || literal.starts_with("urn:") {
            return None;
        }
        let without_version = literal.split("/_history/").next().unwrap_or(literal);
        let mut parts = without_version.rsplit('/');
        let _id = parts.next();
        return parts.next();
    }
    text(reference, "type")
}

fn check_binding(binding: &BindingRule, expression: &str, value: &Value) -> Vec<Issue> {
    let issue = |message: String| vec![Issue::error(IssueCode::CodeInvalid, message).at(expression.to_owned())];
    match value {
        Value::String(code) => {
            if binding.has_code(code) {
                Vec::new()
            } else {
                issue(format!("'{code}' is not a code of the value set {}", binding.value_set))
            }
        }
        Value::Object(object) => {
            // A Coding is itself the one coding; a CodeableConcept holds a list.
            let codings: Vec<&Value> = match object.get("coding") {
                Some(Value::Array(codings)) => codings.iter().collect(),
                _ if object.contains_key("code") => vec![value],
                _ => Vec::new(),
            };
            match binding.strength {
                Strength::Required if !codings.iter().any(|c| binding.has_coding(c)) => {
                    issue(format!("a coding from the value set {} is required", binding.value_set))
                }
                Strength::Required => Vec::new(),
                Strength::Extensible => codings
                    .iter()
                    .filter(|c| binding.claims_system(c) && !binding.has_coding(c))
                    .map(|c| {
                        let code = text(c, "code").unwrap_or_default();
                        Issue::error(
                            IssueCode::CodeInvalid,
                            format!("'{code}' is not a code of the value set {}", binding.value_set),
                        )
                        .at(expression.to_owned())
                    })
                    .collect(),
            }
        }
        _ => Vec::new(),
    }
}
