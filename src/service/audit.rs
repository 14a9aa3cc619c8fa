//! The audit trail's use cases: recording an access that changes nothing (a change records its
//! AuditEvent in its own write set), and reading the trail back for the operator.

use crate::domain::audit::{AuditRecord, StoredAuditEvent};
use crate::store::Store;

use super::ServiceError;

/// Which page of the audit trail to read, newest first.
#[derive(Debug, Clone, Copy)]
pub struct AuditPage<'a> {
    /// Only events about this resource (`Type`, `id`); about a Patient, also the searches whose
    /// page held its data.
    pub entity: Option<(&'a str, &'a str)>,
    /// Only events older than this position in the trail (the paging cursor).
    pub before_seq: Option<i64>,
    pub count: u32,
}

/// The audit trail over one store.
#[derive(Clone)]
pub struct AuditService {
    store: Store,
}

impl AuditService {
    pub fn new(store: Store) -> Self {
        AuditService { store }
    }

    /// Records one access; returns once it is durable, so the caller can refuse to serve an
    /// access that could not be audited.
    pub async fn record_access(&self, record: AuditRecord) -> Result<(), ServiceError> {
        Ok(self.store.record_audit(vec![record]).await?)
    }

    /// `GET /AuditEvent`: one page of the trail, newest first.
    pub async fn search_audit_events(&self, page: AuditPage<'_>) -> Result<Vec<StoredAuditEvent>, ServiceError> {
        Ok(self.store.audit_events(page.entity, page.before_seq, page.count).await?)
    }

    /// `GET /AuditEvent/{id}`.
    pub async fn read_audit_event(&self, id: &str) -> Result<StoredAuditEvent, ServiceError> {
        self.store.audit_event(id).await?.ok_or_else(|| ServiceError::NotFound(format!("AuditEvent/{id}")))
    }
}
