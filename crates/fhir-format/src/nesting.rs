//! The depth guard for JSON values handed to fhirbolt.

use serde_json::Value;

use crate::locate::Segments;
use crate::FormatError;

/// Rejects a value with objects or arrays nested more than `limit` levels (the root
/// object is level 1).
///
/// Recursion here stops at `limit + 1`, so the guard itself is stack-safe whatever the
/// input.
pub(crate) fn check_json_depth(value: &Value, limit: usize) -> Result<(), FormatError> {
    let mut segments = Segments::default();
    if too_deep(value, 1, limit, &mut segments) {
        Err(FormatError::new(
            format!("the resource is nested more than {limit} levels deep"),
            Some(segments.render(value)),
        ))
    } else {
        Ok(())
    }
}

/// True when `value`, sitting at `depth`, contains nesting beyond `limit`; `segments`
/// then ends at the first container that is too deep.
fn too_deep(value: &Value, depth: usize, limit: usize, segments: &mut Segments) -> bool {
    let is_container = matches!(value, Value::Object(_) | Value::Array(_));
    if is_container && depth > limit {
        return true;
    }
    match value {
        Value::Object(object) => object.iter().any(|(key, child)| {
            segments.push_field(key);
            let found = too_deep(child, depth + 1, limit, segments);
            if !found {
                segments.pop();
            }
            found
        }),
        Value::Array(items) => items.iter().enumerate().any(|(index, child)| {
            segments.push_index(index);
            let found = too_deep(child, depth + 1, limit, segments);
            if !found {
                segments.pop();
            }
            found
        }),
        _ => false,
    }
}
