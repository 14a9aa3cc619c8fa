//! A lenient, non-recursive scan of an XML document's element tree.
//!
//! It runs before fhirbolt for two reasons: fhirbolt's XML deserialiser recurses once per
//! element level, so nesting must be bounded first; and fhirbolt's errors carry no
//! position, so the error locator needs a JSON-shaped outline of the document to search.
//! Well-formedness is not judged here: on malformed input the outline is just partial and
//! fhirbolt reports the real error.

use serde_json::{Map, Value};

/// The element tree of a document: names, `value` attributes and children only.
pub(crate) struct XmlOutline {
    root: Option<Node>,
}

/// The document nests elements deeper than allowed.
pub(crate) struct TooDeep {
    /// Local name of the first element beyond the limit.
    pub(crate) element: String,
}

struct Node {
    name: String,
    value: Option<String>,
    children: Vec<Node>,
}

/// Elements whose single child element is a resource (FHIR XML wraps resources in the
/// element that holds them, e.g. `<contained><Patient>..</Patient></contained>`;
/// R4 section 2.6.2 "XML Representation" / 2.36.0 Bundle.entry.resource).
const RESOURCE_WRAPPERS: &[&str] = &["contained", "resource", "outcome"];

pub(crate) fn scan(xml: &[u8], limit: usize) -> Result<XmlOutline, TooDeep> {
    let mut open: Vec<Node> = Vec::new();
    let mut root: Option<Node> = None;
    let mut at = 0;
    while let Some(offset) = find(xml, at, b"<") {
        let rest = &xml[offset..];
        if rest.starts_with(b"<?") {
            at = skip_past(xml, offset, b"?>");
        } else if rest.starts_with(b"<!--") {
            at = skip_past(xml, offset, b"-->");
        } else if rest.starts_with(b"<![CDATA[") {
            at = skip_past(xml, offset, b"]]>");
        } else if rest.starts_with(b"<!") {
            at = skip_past(xml, offset, b">");
        } else if rest.starts_with(b"</") {
            at = skip_past(xml, offset, b">");
            if let Some(node) = open.pop() {
                attach(node, &mut open, &mut root);
            }
        } else {
            let tag = read_start_tag(xml, offset + 1);
            at = tag.end;
            let node = Node { name: tag.name, value: tag.value, children: Vec::new() };
            if tag.self_closing {
                attach(node, &mut open, &mut root);
            } else {
                if open.len() >= limit {
                    return Err(TooDeep { element: node.name });
                }
                open.push(node);
            }
        }
    }
    // Unclosed elements (malformed input): keep what was seen.
    while let Some(node) = open.pop() {
        attach(node, &mut open, &mut root);
    }
    Ok(XmlOutline { root })
}

impl XmlOutline {
    /// The outline as FHIR JSON would shape it: the root element becomes `resourceType`,
    /// child elements become keys (an array when an element repeats), `value` attributes
    /// become strings. Repeating elements that occur once stay single objects, so
    /// expressions found in the shape carry an index only where the document repeats.
    pub(crate) fn to_shape(&self) -> Value {
        match &self.root {
            Some(root) => resource_shape(root),
            None => Value::Null,
        }
    }
}

fn attach(node: Node, open: &mut [Node], root: &mut Option<Node>) {
    if let Some(parent) = open.last_mut() {
        parent.children.push(node);
    } else if root.is_none() {
        *root = Some(node);
    }
}

fn resource_shape(node: &Node) -> Value {
    let mut object = Map::new();
    object.insert("resourceType".to_owned(), Value::String(node.name.clone()));
    insert_children(&mut object, node);
    Value::Object(object)
}

fn element_shape(node: &Node) -> Value {
    // Narrative.div holds XHTML, a single primitive in FHIR terms.
    if node.name == "div" {
        return Value::String(String::new());
    }
    if node.children.is_empty() {
        return match &node.value {
            Some(value) => Value::String(value.clone()),
            None => Value::Object(Map::new()),
        };
    }
    if let [only] = node.children.as_slice() {
        let starts_upper = only.name.chars().next().is_some_and(char::is_uppercase);
        if starts_upper && RESOURCE_WRAPPERS.contains(&node.name.as_str()) {
            return resource_shape(only);
        }
    }
    let mut object = Map::new();
    if let Some(value) = &node.value {
        object.insert("value".to_owned(), Value::String(value.clone()));
    }
    insert_children(&mut object, node);
    Value::Object(object)
}

fn insert_children(object: &mut Map<String, Value>, node: &Node) {
    let mut names: Vec<&str> = Vec::new();
    for child in &node.children {
        if !names.contains(&child.name.as_str()) {
            names.push(&child.name);
        }
    }
    for name in names {
        let mut shapes: Vec<Value> =
            node.children.iter().filter(|child| child.name == name).map(element_shape).collect();
        let shape = if shapes.len() == 1 { shapes.remove(0) } else { Value::Array(shapes) };
        object.insert(name.to_owned(), shape);
    }
}

struct StartTag {
    name: String,
    value: Option<String>,
    self_closing: bool,
    /// Index just past the closing `>`.
    end: usize,
}

/// Reads `name attr="v" ...>` starting just after `<`. Always advances.
fn read_start_tag(xml: &[u8], start: usize) -> StartTag {
    let mut at = start;
    while at < xml.len() && !is_name_end(xml[at]) {
        at += 1;
    }
    let name = local_name(&xml[start..at]);
    let mut value = None;
    loop {
        while at < xml.len() && xml[at].is_ascii_whitespace() {
            at += 1;
        }
        match xml.get(at) {
            None => return StartTag { name, value, self_closing: false, end: xml.len() },
            Some(b'>') => return StartTag { name, value, self_closing: false, end: at + 1 },
            Some(b'/') if xml.get(at + 1) == Some(&b'>') => {
                return StartTag { name, value, self_closing: true, end: at + 2 }
            }
            Some(_) => {}
        }
        let attribute_start = at;
        while at < xml.len() && !is_name_end(xml[at]) && xml[at] != b'=' {
            at += 1;
        }
        let attribute = local_name(&xml[attribute_start..at]);
        while at < xml.len() && xml[at].is_ascii_whitespace() {
            at += 1;
        }
        if xml.get(at) != Some(&b'=') {
            // Not `name=value`: step over one byte so the scan always progresses.
            at = at.max(attribute_start + 1);
            continue;
        }
        at += 1;
        while at < xml.len() && xml[at].is_ascii_whitespace() {
            at += 1;
        }
        let quote = match xml.get(at) {
            Some(&quote) if quote == b'"' || quote == b'\'' => quote,
            _ => continue,
        };
        let value_start = at + 1;
        let value_end = find(xml, value_start, &[quote]).unwrap_or(xml.len());
        if attribute == "value" {
            value = Some(decode_entities(&String::from_utf8_lossy(&xml[value_start..value_end])));
        }
        at = (value_end + 1).min(xml.len());
    }
}

fn is_name_end(byte: u8) -> bool {
    byte.is_ascii_whitespace() || byte == b'/' || byte == b'>'
}

/// The name without a namespace prefix (`xhtml:div` -> `div`).
fn local_name(bytes: &[u8]) -> String {
    let name = String::from_utf8_lossy(bytes);
    match name.rsplit_once(':') {
        Some((_, local)) => local.to_owned(),
        None => name.into_owned(),
    }
}

/// The five predefined entities and character references (XML 1.0 section 4.1, 4.6), so
/// that attribute values compare equal to what fhirbolt reports.
fn decode_entities(text: &str) -> String {
    let mut decoded = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        decoded.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let Some(semicolon) = after.find(';') else {
            decoded.push_str(&rest[amp..]);
            return decoded;
        };
        let entity = &after[..semicolon];
        let character = match entity {
            "lt" => Some('<'),
            "gt" => Some('>'),
            "amp" => Some('&'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|dec| dec.parse().ok()))
                .and_then(char::from_u32),
        };
        match character {
            Some(character) => decoded.push(character),
            None => decoded.push_str(&rest[amp..amp + 1 + semicolon + 1]),
        }
        rest = &after[semicolon + 1..];
    }
    decoded.push_str(rest);
    decoded
}

fn find(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    if from >= haystack.len() || needle.is_empty() {
        return None;
    }
    haystack[from..].windows(needle.len()).position(|window| window == needle).map(|position| from + position)
}

/// Index just past `terminator` found after `from`, or the end of input.
fn skip_past(haystack: &[u8], from: usize, terminator: &[u8]) -> usize {
    match find(haystack, from + 1, terminator) {
        Some(position) => position + terminator.len(),
        None => haystack.len(),
    }
}
