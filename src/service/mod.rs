//! Use cases: each public function is one thing a client can ask for. A use case checks the
//! input, applies the domain rules, and hands the store one [`WriteSet`](crate::store::WriteSet)
//! holding everything it writes, so the change is atomic.

pub mod auth;
pub mod ingest;
pub mod resources;
pub(crate) mod rules;
pub mod search;

use crate::domain::outcome::{Issue, IssueCode};
use crate::store::StoreError;

/// Why a use case did not do what was asked. Rendered as an OperationOutcome in one place
/// (`http::error`).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed (400).
    #[error("invalid request")]
    Invalid(Vec<Issue>),
    /// Well-formed but breaks a rule (422).
    #[error("unprocessable request")]
    Unprocessable(Vec<Issue>),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} has been deleted")]
    Gone(String),
    /// `If-Match` names another version, or conditional criteria match several (412).
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    /// Concurrent change or duplicate (409).
    #[error("conflict: {}", .0.diagnostics)]
    Conflict(Issue),
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Forbidden, naming the element (403).
    #[error("forbidden: {}", .0.diagnostics)]
    ForbiddenAt(Issue),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ServiceError {
    pub fn invalid(code: IssueCode, message: impl Into<String>, expression: Option<&str>) -> Self {
        let mut issue = Issue::error(code, message);
        issue.expression = expression.map(str::to_owned);
        ServiceError::Invalid(vec![issue])
    }
}
