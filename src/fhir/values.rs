//! `check_values`: the walk over a resource that applies the primitive rules and the
//! required bindings, guided by the generated element table.

use serde_json::{Map, Value};

use super::primitives::primitive_problem;
use super::schema::{element_for, elements_of, Binding, Element, ElementType, Primitive};

/// A value that breaks a FHIR R4 rule fhirbolt does not check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueIssue {
    /// FHIRPath of the element, e.g. `Task.authoredOn` or `Patient.identifier[0].system`;
    /// choice elements as `Task.input[0].value.ofType(dateTime)` (FHIRPath section 5.2.3 /
    /// R4 2.24.0.1 "Choice of Data Types").
    pub expression: String,
    /// What is wrong, worded for an API client. It never repeats the value, except a code
    /// outside its value set.
    pub message: String,
}

/// Deepest nesting walked; as deep as `fhir_format` lets a resource through.
const MAX_DEPTH: usize = fhir_format::MAX_NESTING_DEPTH;

/// Codes listed in a binding message when the value set is this small or smaller.
const LISTED_CODES: usize = 20;

/// Every malformed primitive and every code outside a base-R4 required binding, all at once.
///
/// Runs on JSON that passed `fhir_format::check_json_structure`; elements it does not
/// know (other resource types, unknown elements) are left to that check. It also reports
/// the JSON shapes fhirbolt accepts silently: a string for a boolean or number, a single
/// value where the element repeats (or an array where it does not), empty arrays and
/// objects, and `null` outside primitive arrays.
pub fn check_values(resource: &Value) -> Vec<ValueIssue> {
    let mut walker = Walker::default();
    if let Value::Object(object) = resource {
        if let Some(Value::String(resource_type)) = object.get("resourceType") {
            walker.walk_resource(object, resource_type.clone(), 1);
        }
    }
    walker.issues
}

#[derive(Default)]
struct Walker {
    issues: Vec<ValueIssue>,
}

impl Walker {
    fn report(&mut self, expression: &str, message: impl Into<String>) {
        self.issues.push(ValueIssue { expression: expression.to_owned(), message: message.into() });
    }

    /// `object` is a resource at `expression` (its type name at the root).
    fn walk_resource(&mut self, object: &Map<String, Value>, expression: String, depth: usize) {
        let Some(Value::String(resource_type)) = object.get("resourceType") else {
            return;
        };
        // Types linkbridge does not serve are not in the table: structure only.
        if elements_of(resource_type).is_some() {
            self.walk_object(resource_type, object, &expression, depth, true);
        }
    }

    fn walk_object(
        &mut self,
        type_key: &str,
        object: &Map<String, Value>,
        expression: &str,
        depth: usize,
        is_resource: bool,
    ) {
        if depth > MAX_DEPTH {
            self.report(expression, format!("nested more than {MAX_DEPTH} levels deep"));
            return;
        }
        // R4 2.6.2: objects are never empty (every element has a value or children).
        if object.is_empty() {
            self.report(expression, "empty objects are not allowed");
            return;
        }
        self.check_required(type_key, object, expression);
        // Most objects have no `_name` siblings: no key to build for each member then.
        let has_siblings = object.keys().any(|key| key.starts_with('_'));
        for (key, value) in object {
            if is_resource && key == "resourceType" {
                continue;
            }
            // `_birthDate` holds the id and extensions of `birthDate` (R4 2.6.2.7).
            let (name, is_sibling) = match key.strip_prefix('_') {
                Some(name) => (name, true),
                None => (key.as_str(), false),
            };
            let Some((element, ty)) = element_for(type_key, name) else {
                continue;
            };
            let path = member_path(expression, element, ty);
            if is_sibling {
                self.walk_sibling(value, element, &path, depth);
            } else {
                let sibling = if has_siblings { object.get(&format!("_{name}")) } else { None };
                self.walk_member(value, element, ty, sibling, &path, depth);
            }
        }
    }

    /// Elements of minimum cardinality 1 that are absent. fhirbolt rejects a missing 1..1
    /// element but not a missing 1..* one (it reads an absent array as empty), e.g.
    /// `OperationOutcome.issue`.
    fn check_required(&mut self, type_key: &str, object: &Map<String, Value>, expression: &str) {
        let Some(elements) = elements_of(type_key) else {
            return;
        };
        for element in elements.iter().filter(|element| element.min > 0) {
            let present = object.keys().any(|key| {
                let name = key.strip_prefix('_').unwrap_or(key);
                element_for(type_key, name).is_some_and(|(found, _)| std::ptr::eq(found, element))
            });
            if !present {
                let name = if element.choice { format!("{}[x]", element.name) } else { element.name.to_owned() };
                self.report(expression, format!("missing required element '{name}'"));
            }
        }
    }

    /// The value of one element: an array when it repeats, else one item.
    fn walk_member(
        &mut self,
        value: &Value,
        element: &Element,
        ty: ElementType,
        sibling: Option<&Value>,
        path: &str,
        depth: usize,
    ) {
        match value {
            Value::Array(items) if element.repeats => {
                if items.is_empty() {
                    self.report(path, "empty arrays are not allowed");
                }
                for (index, item) in items.iter().enumerate() {
                    let item_path = format!("{path}[{index}]");
                    // A null keeps positions aligned with `_name` (R4 2.6.2.7); alone it
                    // is not a value.
                    if item.is_null() {
                        let has_sibling = sibling.and_then(|s| s.get(index)).is_some_and(|s| !s.is_null());
                        if !has_sibling || !matches!(ty, ElementType::Primitive(_)) {
                            self.report(
                                &item_path,
                                "null is only allowed in a primitive array with a matching extension",
                            );
                        }
                        continue;
                    }
                    self.walk_item(item, element, ty, &item_path, depth + 1);
                }
            }
            Value::Array(_) => self.report(path, "this element does not repeat: give one value, not an array"),
            _ if element.repeats => {
                self.report(path, "this element repeats: its value must be an array");
                self.walk_item(value, element, ty, path, depth);
            }
            Value::Null => self.report(path, "null is not allowed"),
            _ => self.walk_item(value, element, ty, path, depth),
        }
    }

    fn walk_item(&mut self, item: &Value, element: &Element, ty: ElementType, path: &str, depth: usize) {
        match ty {
            ElementType::Primitive(primitive) => {
                if let Some(problem) = primitive_problem(primitive, item) {
                    self.report(path, problem);
                } else if let (Some(binding), Primitive::Code, Value::String(code)) = (element.binding, primitive, item)
                {
                    if !binding.contains(code) {
                        self.report(path, binding_message(code, binding));
                    }
                }
            }
            ElementType::Complex(type_key) => match item {
                Value::Object(object) => self.walk_object(type_key, object, path, depth + 1, false),
                _ => self.report(path, "must be a JSON object"),
            },
            ElementType::Resource => match item {
                Value::Object(object) => self.walk_resource(object, path.to_owned(), depth + 1),
                _ => self.report(path, "must be a resource (a JSON object)"),
            },
        }
    }

    /// `_name`: an object (or, for a repeating primitive, an array of objects and nulls)
    /// holding the primitive's `id` and `extension`.
    fn walk_sibling(&mut self, value: &Value, element: &Element, path: &str, depth: usize) {
        match value {
            Value::Array(items) if element.repeats => {
                for (index, item) in items.iter().enumerate() {
                    if !item.is_null() {
                        self.walk_primitive_element(item, &format!("{path}[{index}]"), depth + 1);
                    }
                }
            }
            Value::Array(_) => self.report(path, "this element does not repeat: give one value, not an array"),
            _ => self.walk_primitive_element(value, path, depth),
        }
    }

    fn walk_primitive_element(&mut self, value: &Value, path: &str, depth: usize) {
        let Value::Object(object) = value else {
            self.report(path, "the _ sibling of a primitive must be a JSON object");
            return;
        };
        if depth > MAX_DEPTH {
            self.report(path, format!("nested more than {MAX_DEPTH} levels deep"));
            return;
        }
        if let Some(id) = object.get("id") {
            if let Some(problem) = primitive_problem(Primitive::String, id) {
                self.report(&format!("{path}.id"), problem);
            }
        }
        if let Some(extension) = object.get("extension") {
            if let Some((element, ty)) = element_for("Extension", "extension") {
                self.walk_member(extension, element, ty, None, &format!("{path}.extension"), depth);
            }
        }
    }
}

/// FHIRPath of a member: `.name`, or `.value.ofType(dateTime)` for a choice element.
fn member_path(expression: &str, element: &Element, ty: ElementType) -> String {
    if !element.choice {
        return format!("{expression}.{}", element.name);
    }
    let type_name = match ty {
        ElementType::Primitive(primitive) => primitive.name(),
        ElementType::Complex(name) => name,
        ElementType::Resource => "Resource",
    };
    format!("{expression}.{}.ofType({type_name})", element.name)
}

fn binding_message(code: &str, binding: &Binding) -> String {
    let mut message = format!("'{code}' is not a code of the required value set {}", binding.value_set);
    if binding.concepts.len() <= LISTED_CODES {
        let codes: Vec<&str> = binding.concepts.iter().map(|(_, code)| *code).collect();
        message.push_str(&format!(" (one of: {})", codes.join(", ")));
    }
    message
}
