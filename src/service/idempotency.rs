//! `X-Request-ID` de-duplication (NHS Booking and Referral Standard): a GP system retries with
//! the same id after a timeout; the retry must not write twice. A replay is answered 409 with
//! an OperationOutcome `duplicate` naming what the first request created (the sender treats
//! it as success); the same id with a different request is refused.

use sha2::{Digest, Sha256};

use super::ServiceError;
use crate::domain::outcome::{Issue, IssueCode};
use crate::domain::tenancy::Principal;
use crate::store::{RequestRecord, Store};

/// A request's de-duplication key: the caller, its X-Request-ID, and a hash of what it asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    client_id: String,
    request_id: String,
    body_hash: String,
}

impl RequestKey {
    /// `request_id` must be a UUID (BaRS); `request` is everything that identifies the request
    /// (method, path, body).
    pub fn new(caller: &Principal, request_id: &str, request: &[&[u8]]) -> Result<Self, ServiceError> {
        let parsed = uuid::Uuid::parse_str(request_id.trim())
            .map_err(|_| ServiceError::invalid(IssueCode::Invalid, "X-Request-ID must be a UUID", None))?;
        let mut hasher = Sha256::new();
        for part in request {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        Ok(RequestKey {
            client_id: caller.client_id().to_owned(),
            request_id: parsed.hyphenated().to_string(),
            body_hash: format!("{:x}", hasher.finalize()),
        })
    }

    pub(crate) fn record(&self, outcome: String) -> RequestRecord {
        RequestRecord {
            client_id: self.client_id.clone(),
            request_id: self.request_id.clone(),
            body_hash: self.body_hash.clone(),
            outcome,
        }
    }

    /// Refuses a request whose id was used before: a replay (409 duplicate) or a different
    /// request under the same id (422).
    pub(crate) async fn refuse_if_seen(&self, store: &Store) -> Result<(), ServiceError> {
        let Some((hash, outcome)) = store.find_request(&self.client_id, &self.request_id).await? else {
            return Ok(());
        };
        if hash == self.body_hash {
            Err(ServiceError::Conflict(Issue::error(
                IssueCode::Duplicate,
                format!("this X-Request-ID was already processed; the first request produced {outcome}"),
            )))
        } else {
            Err(ServiceError::Unprocessable(vec![Issue::error(
                IssueCode::BusinessRule,
                format!("this X-Request-ID was already used for a different request (which produced {outcome}); use a new id"),
            )]))
        }
    }
}
