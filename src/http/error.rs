//! The one place where every error becomes an HTTP status and an OperationOutcome.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::domain::outcome::{operation_outcome, Issue, IssueCode};
use crate::service::{ServiceError, INTERNAL_FAILURE};

/// Everything an HTTP request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// A malformed request the HTTP layer itself detected (400).
    #[error("bad request")]
    BadRequest(Issue),
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("not acceptable: {0}")]
    NotAcceptable(String),
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    /// 405, with the methods the path does answer (the `Allow` header, RFC 9110 15.5.6).
    #[error("method not allowed: {message}")]
    MethodNotAllowed { message: String, allow: String },
    #[error("unknown route: {0}")]
    UnknownRoute(String),
    #[error("unsupported resource type: {0}")]
    UnsupportedType(String),
    /// Missing or invalid access token (401 with `WWW-Authenticate`).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Valid token without the scope the interaction needs (403 insufficient_scope).
    #[error("insufficient scope: {0}")]
    InsufficientScope(String),
    /// The caller's role may not use this endpoint at all (403).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The request's header fields are too large together (431, RFC 6585).
    #[error("header fields too large: {0}")]
    HeaderFieldsTooLarge(String),
    /// A dependency is briefly unavailable (503 with Retry-After).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A fault of the HTTP layer's own, such as a stored resource it cannot render (500, the
    /// cause logged, never shown).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(code: IssueCode, message: impl Into<String>) -> Self {
        ApiError::BadRequest(Issue::error(code, message))
    }

    /// Status and issues: the single mapping table of the service.
    fn status_and_issues(&self) -> (StatusCode, Vec<Issue>) {
        use StatusCode as S;
        let one = |status, code, text: &str| (status, vec![Issue::error(code, text.to_owned())]);
        match self {
            ApiError::Service(e) => {
                let (status, issues) = e.status_and_issues();
                (S::from_u16(status).unwrap_or(S::INTERNAL_SERVER_ERROR), issues)
            }
            ApiError::BadRequest(issue) => (S::BAD_REQUEST, vec![issue.clone()]),
            ApiError::UnsupportedMediaType(why) => one(S::UNSUPPORTED_MEDIA_TYPE, IssueCode::NotSupported, why),
            ApiError::NotAcceptable(why) => one(S::NOT_ACCEPTABLE, IssueCode::NotSupported, why),
            ApiError::PayloadTooLarge(why) => one(S::PAYLOAD_TOO_LARGE, IssueCode::TooLong, why),
            ApiError::HeaderFieldsTooLarge(why) => one(S::REQUEST_HEADER_FIELDS_TOO_LARGE, IssueCode::TooLong, why),
            ApiError::MethodNotAllowed { message, .. } => one(S::METHOD_NOT_ALLOWED, IssueCode::NotSupported, message),
            ApiError::UnknownRoute(path) => {
                one(S::NOT_FOUND, IssueCode::NotSupported, &format!("no FHIR endpoint at '{path}'"))
            }
            ApiError::UnsupportedType(name) => one(
                S::NOT_FOUND,
                IssueCode::NotSupported,
                &format!("resource type '{name}' is not supported by this server (see /metadata)"),
            ),
            ApiError::Unauthorized(why) => one(S::UNAUTHORIZED, IssueCode::Login, why),
            ApiError::InsufficientScope(why) => one(S::FORBIDDEN, IssueCode::Forbidden, why),
            ApiError::Forbidden(why) => one(S::FORBIDDEN, IssueCode::Forbidden, why),
            ApiError::Unavailable(why) => one(S::SERVICE_UNAVAILABLE, IssueCode::Transient, why),
            ApiError::Internal(_) => one(S::INTERNAL_SERVER_ERROR, IssueCode::Exception, INTERNAL_FAILURE),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status_and_issues().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, issues) = self.status_and_issues();
        if status.is_server_error() {
            // The cause chain goes to the log once, here; the client gets a safe message.
            tracing::error!(error = %self, source = ?std::error::Error::source(self), "request failed");
        }
        let mut response = HttpResponse::build(status);
        response.insert_header((header::CONTENT_TYPE, super::negotiate::FHIR_JSON));
        match self {
            ApiError::Unauthorized(_) => {
                response.insert_header((
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                ));
            }
            ApiError::InsufficientScope(_) => {
                response.insert_header((
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
                ));
            }
            ApiError::MethodNotAllowed { allow, .. } => {
                if let Ok(allow) = HeaderValue::from_str(allow) {
                    response.insert_header((header::ALLOW, allow));
                }
            }
            // A 503 for a dependency briefly unavailable (the database unreachable, a write too
            // late for the settle window) may be retried as it is: say when. One for a request
            // that outran the statement timeout (`too-costly`) would meet it again: no hint.
            _ if status == StatusCode::SERVICE_UNAVAILABLE
                && !issues.iter().any(|issue| issue.code == IssueCode::TooCostly) =>
            {
                response.insert_header((header::RETRY_AFTER, HeaderValue::from_static("5")));
            }
            _ => {}
        }
        response.body(operation_outcome(&issues).to_string())
    }
}

/// Maps actix-web's own extractor failures (oversized or unreadable bodies, bad paths and
/// queries) to OperationOutcomes rather than its plain-text defaults.
pub fn payload_error(err: actix_web::error::PayloadError) -> actix_web::Error {
    use actix_web::error::PayloadError as P;
    match err {
        P::Overflow => ApiError::PayloadTooLarge("the request body exceeds the configured limit".into()).into(),
        other => {
            ApiError::bad_request(IssueCode::Structure, format!("the request body could not be read: {other}")).into()
        }
    }
}

pub fn query_error(err: actix_web::error::QueryPayloadError, _req: &actix_web::HttpRequest) -> actix_web::Error {
    ApiError::bad_request(IssueCode::Invalid, format!("invalid query string: {err}")).into()
}

pub fn path_error(err: actix_web::error::PathError, _req: &actix_web::HttpRequest) -> actix_web::Error {
    ApiError::bad_request(IssueCode::Invalid, format!("invalid path: {err}")).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_fault_of_the_http_layer_is_answered_as_one_of_the_services() {
        let rendering = ApiError::Internal("stored resource cannot be rendered as XML".to_owned());
        let service = ApiError::Service(ServiceError::Internal("stored body is not JSON".to_owned()));
        assert_eq!(rendering.status_and_issues(), service.status_and_issues());
        assert_eq!(rendering.status_and_issues().0, StatusCode::INTERNAL_SERVER_ERROR);
    }
}
