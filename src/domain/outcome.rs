//! The content of a FHIR OperationOutcome issue, independent of how it is rendered.

/// `OperationOutcome.issue.severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    pub fn code(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// `OperationOutcome.issue.code` (R4 value set issue-type), the codes linkbridge uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueCode {
    Invalid,
    Structure,
    Required,
    Value,
    CodeInvalid,
    Invariant,
    Security,
    Login,
    Forbidden,
    Processing,
    NotSupported,
    Duplicate,
    NotFound,
    Deleted,
    TooLong,
    Conflict,
    BusinessRule,
    Exception,
    Throttled,
    Informational,
    TooCostly,
    Transient,
}

impl IssueCode {
    pub fn code(self) -> &'static str {
        match self {
            IssueCode::Invalid => "invalid",
            IssueCode::Structure => "structure",
            IssueCode::Required => "required",
            IssueCode::Value => "value",
            IssueCode::CodeInvalid => "code-invalid",
            IssueCode::Invariant => "invariant",
            IssueCode::Security => "security",
            IssueCode::Login => "login",
            IssueCode::Forbidden => "forbidden",
            IssueCode::Processing => "processing",
            IssueCode::NotSupported => "not-supported",
            IssueCode::Duplicate => "duplicate",
            IssueCode::NotFound => "not-found",
            IssueCode::Deleted => "deleted",
            IssueCode::TooLong => "too-long",
            IssueCode::Conflict => "conflict",
            IssueCode::BusinessRule => "business-rule",
            IssueCode::Exception => "exception",
            IssueCode::Throttled => "throttled",
            IssueCode::Informational => "informational",
            IssueCode::TooCostly => "too-costly",
            IssueCode::Transient => "transient",
        }
    }
}

/// One issue: what is wrong, in words, and where (a FHIRPath expression) when there is a where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueCode,
    pub diagnostics: String,
    pub expression: Option<String>,
}

impl Issue {
    pub fn error(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Issue { severity: Severity::Error, code, diagnostics: diagnostics.into(), expression: None }
    }

    /// Locates the issue; an empty expression (e.g. a query parameter with no name) is left
    /// out, since an OperationOutcome's `expression` strings must not be empty.
    pub fn at(mut self, expression: impl Into<String>) -> Self {
        let expression = expression.into();
        self.expression = (!expression.is_empty()).then_some(expression);
        self
    }

    pub fn with_severity(mut self, severity: Severity) -> Self {
        self.severity = severity;
        self
    }

    /// The OperationOutcome.issue JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let mut issue = serde_json::json!({
            "severity": self.severity.code(),
            "code": self.code.code(),
            "diagnostics": self.diagnostics,
        });
        if let (Some(expression), Some(map)) = (&self.expression, issue.as_object_mut()) {
            map.insert("expression".into(), serde_json::json!([expression]));
        }
        issue
    }
}

/// An OperationOutcome resource holding the given issues.
pub fn operation_outcome(issues: &[Issue]) -> serde_json::Value {
    serde_json::json!({
        "resourceType": "OperationOutcome",
        "issue": issues.iter().map(Issue::to_json).collect::<Vec<_>>(),
    })
}
