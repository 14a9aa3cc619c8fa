//! JSON Patch (RFC 6902) applied within limits. A patch is small but what it builds need not
//! be: each `copy` may double a document (19 of them, under 1 KB, grew the server by over
//! 500 MiB). So a patch holds at most [`PatchLimits::max_operations`] operations, and it is
//! applied one operation at a time, the growth of each (the value it adds or copies) weighed
//! before it is applied: the patched document never grows past
//! [`PatchLimits::max_result_bytes`] of JSON, not even for a moment.

use std::io;

use json_patch::PatchOperation;
use serde_json::Value;

/// How large a patch and its result may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchLimits {
    pub max_operations: usize,
    /// The largest patched resource, in bytes of compact JSON.
    pub max_result_bytes: usize,
}

impl PatchLimits {
    /// FHIR patches change a few elements; a hundred operations is far beyond any client's.
    pub const DEFAULT_MAX_OPERATIONS: usize = 100;
}

/// Why a patch was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchRefusal {
    #[error("a JSON Patch may hold at most {max} operations; this one holds {count}")]
    TooManyOperations { count: usize, max: usize },
    #[error(
        "operation {index} ({op}) would make the patched resource larger than {max} bytes, the largest resource \
         this server accepts (max_body_bytes)"
    )]
    ResultTooLarge { index: usize, op: &'static str, max: usize },
    /// RFC 6902's own failures (a missing path, a failed `test`), as json-patch words them.
    #[error("operation {index} cannot be applied: {reason}")]
    Failed { index: usize, reason: String },
}

/// Checks only the number of operations (before anything is read).
pub fn check_operation_count(patch: &json_patch::Patch, limits: PatchLimits) -> Result<(), PatchRefusal> {
    if patch.0.len() > limits.max_operations {
        return Err(PatchRefusal::TooManyOperations { count: patch.0.len(), max: limits.max_operations });
    }
    Ok(())
}

/// Applies `patch` to `document`, whose compact JSON is `size` bytes (the stored text it was
/// parsed from: no need to write it out again to measure it), within `limits`. On a refusal
/// `document` is left part-way and must be discarded.
pub fn apply(
    document: &mut Value,
    size: usize,
    patch: &json_patch::Patch,
    limits: PatchLimits,
) -> Result<(), PatchRefusal> {
    check_operation_count(patch, limits)?;
    let max = limits.max_result_bytes;
    // An upper bound of the document's size: exact at first and after each measurement,
    // raised by what each operation adds (a removal, a move or a smaller replacement can only
    // shrink it, but by an amount not worth measuring unless the bound nears the limit).
    let mut bound = size;
    for (index, operation) in patch.0.iter().enumerate() {
        let growth = match operation {
            PatchOperation::Add(add) => json_size(&add.value, max),
            PatchOperation::Replace(replace) => json_size(&replace.value, max),
            PatchOperation::Copy(copy) => document.pointer(copy.from.as_str()).map_or(0, |from| json_size(from, max)),
            PatchOperation::Move(_) | PatchOperation::Remove(_) | PatchOperation::Test(_) => 0,
        };
        // The member name or array separator the new value comes with.
        let growth = growth.saturating_add(operation.path().as_str().len() + 4);
        if bound.saturating_add(growth) > max {
            bound = json_size(document, max);
            if bound.saturating_add(growth) > max {
                return Err(PatchRefusal::ResultTooLarge { index, op: op_name(operation), max });
            }
        }
        json_patch::patch(document, std::slice::from_ref(operation))
            .map_err(|e| PatchRefusal::Failed { index, reason: e.kind.to_string() })?;
        bound = bound.saturating_add(growth);
    }
    Ok(())
}

fn op_name(operation: &PatchOperation) -> &'static str {
    match operation {
        PatchOperation::Add(_) => "add",
        PatchOperation::Remove(_) => "remove",
        PatchOperation::Replace(_) => "replace",
        PatchOperation::Move(_) => "move",
        PatchOperation::Copy(_) => "copy",
        PatchOperation::Test(_) => "test",
    }
}

/// The length of `value` as compact JSON, counted without writing it and given up past
/// `cap` (then anything over `cap` is returned): a measurement costs at most `cap` bytes of work.
fn json_size(value: &Value, cap: usize) -> usize {
    let mut counter = Counter { count: 0, cap };
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.count,
        Err(_) => cap.saturating_add(1),
    }
}

struct Counter {
    count: usize,
    cap: usize,
}

impl io::Write for Counter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.count += bytes.len();
        if self.count > self.cap {
            return Err(io::Error::other("over the cap"));
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn patch(operations: Value) -> json_patch::Patch {
        serde_json::from_value(operations).expect("a JSON Patch")
    }

    /// [`apply`] to a document measured as the service measures a stored one.
    fn apply_to(document: &mut Value, patch: &json_patch::Patch, limits: PatchLimits) -> Result<(), PatchRefusal> {
        let size = serde_json::to_string(document).expect("JSON").len();
        apply(document, size, patch, limits)
    }

    const LIMITS: PatchLimits = PatchLimits { max_operations: 100, max_result_bytes: 64 * 1024 };

    #[test]
    fn copies_that_double_a_document_stop_at_the_size_limit_before_it_is_reached() {
        let mut document = json!({"resourceType": "Patient", "id": "p", "a": ["0123456789"]});
        let mut operations = vec![];
        for _ in 0..19 {
            operations.push(json!({"op": "copy", "from": "/a", "path": "/a/0"}));
        }
        let refused = apply_to(&mut document, &patch(Value::Array(operations)), LIMITS).expect_err("refused");
        assert!(matches!(refused, PatchRefusal::ResultTooLarge { op: "copy", .. }), "{refused:?}");
        assert!(json_size(&document, usize::MAX) <= LIMITS.max_result_bytes, "never over the limit");
    }

    #[test]
    fn too_many_operations_are_refused_before_any_is_applied() {
        let operations: Vec<Value> = (0..101).map(|_| json!({"op": "test", "path": "/id", "value": "p"})).collect();
        let mut document = json!({"id": "p"});
        assert_eq!(
            apply_to(&mut document, &patch(Value::Array(operations)), LIMITS),
            Err(PatchRefusal::TooManyOperations { count: 101, max: 100 })
        );
    }

    #[test]
    fn an_ordinary_patch_applies_as_json_patch_applies_it() {
        let mut document = json!({"resourceType": "Task", "id": "t", "status": "requested"});
        let operations = patch(json!([
            {"op": "test", "path": "/status", "value": "requested"},
            {"op": "replace", "path": "/status", "value": "accepted"},
            {"op": "add", "path": "/note", "value": [{"text": "seen"}]},
            {"op": "copy", "from": "/note/0", "path": "/note/-"},
            {"op": "remove", "path": "/note/1"}
        ]));
        apply_to(&mut document, &operations, LIMITS).expect("applies");
        assert_eq!(
            document,
            json!({"resourceType": "Task", "id": "t", "status": "accepted", "note": [{"text": "seen"}]})
        );
        let failing = patch(json!([{"op": "test", "path": "/status", "value": "draft"}]));
        assert!(matches!(apply_to(&mut document, &failing, LIMITS), Err(PatchRefusal::Failed { index: 0, .. })));
    }
}
