//! Use cases: each public function is one thing a client can ask for. A use case checks the
//! input, applies the domain rules, and hands the store one [`WriteSet`](crate::store::WriteSet)
//! holding everything it writes, so the change is atomic; it does so through the write
//! pipeline (`write`), which plans it again when a concurrent request got in first.

pub mod audit;
pub mod auth;
pub mod bundles;
pub mod delivery;
pub mod health;
pub mod idempotency;
pub mod ingest;
pub mod resources;
pub(crate) mod rules;
pub mod search;
mod subscription_rules;
pub mod subscriptions;
mod write;

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
    /// A fault of the server's own (a stored value it cannot read back, a registry entry
    /// missing): 500, the cause logged, never shown.
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a client is told of a fault of the server's own (500): nothing of its cause, which
/// goes to the log.
pub const INTERNAL_FAILURE: &str = "the server could not complete the request; it has been logged";

impl ServiceError {
    /// The HTTP status and OperationOutcome issues of a use-case error: the one mapping, used
    /// for responses and for the entries of batch responses.
    pub fn status_and_issues(&self) -> (u16, Vec<Issue>) {
        let one = |status, code, text: String| (status, vec![Issue::error(code, text)]);
        match self {
            ServiceError::Invalid(issues) => (400, issues.clone()),
            ServiceError::Unprocessable(issues) => (422, issues.clone()),
            ServiceError::NotFound(what) => one(404, IssueCode::NotFound, format!("{what} is not known")),
            ServiceError::Gone(what) => one(410, IssueCode::Deleted, format!("{what} has been deleted")),
            ServiceError::PreconditionFailed(why) => one(412, IssueCode::Conflict, why.clone()),
            ServiceError::Conflict(issue) => (409, vec![issue.clone()]),
            ServiceError::Forbidden(why) => one(403, IssueCode::Forbidden, why.clone()),
            ServiceError::ForbiddenAt(issue) => (403, vec![issue.clone()]),
            ServiceError::Store(StoreError::VersionConflict { resource_type, id }) => {
                one(409, IssueCode::Conflict, format!("{resource_type}/{id} was changed concurrently; retry"))
            }
            ServiceError::Store(StoreError::SettleWindowPassed { .. }) => {
                one(503, IssueCode::Transient, "the write took too long to commit; retry".to_owned())
            }
            // Retrying the same request would meet the same limit: no Retry-After.
            ServiceError::Store(StoreError::StatementTimeout) => one(
                503,
                IssueCode::TooCostly,
                "the request took longer than the server allows one database statement (statement_timeout_ms); narrow it"
                    .to_owned(),
            ),
            ServiceError::Store(e) if e.is_unavailable() => {
                one(503, IssueCode::Transient, "the database is unavailable just now; retry shortly".to_owned())
            }
            ServiceError::Internal(_) | ServiceError::Store(_) => {
                one(500, IssueCode::Exception, INTERNAL_FAILURE.to_owned())
            }
        }
    }

    pub fn invalid(code: IssueCode, message: impl Into<String>, expression: Option<&str>) -> Self {
        let mut issue = Issue::error(code, message);
        issue.expression = expression.map(str::to_owned);
        ServiceError::Invalid(vec![issue])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_fault_is_a_500_that_shows_none_of_its_cause() {
        let expected = (500, vec![Issue::error(IssueCode::Exception, INTERNAL_FAILURE)]);
        let faults = [
            ServiceError::Internal("stored body is not JSON".to_owned()),
            ServiceError::Store(StoreError::Internal("cannot bind query value".to_owned())),
            ServiceError::Store(StoreError::Config("the database URL must start with postgres://".to_owned())),
        ];
        for fault in faults {
            assert_eq!(fault.status_and_issues(), expected, "{fault}");
        }
    }
}
