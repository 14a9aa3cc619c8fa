//! Reading and recording the audit trail.

use sqlx::Row;

use super::write_set::WriteSet;
use super::{Store, StoreError};
use crate::domain::audit::AuditRecord;
use crate::domain::instant::Instant;

/// One stored AuditEvent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAuditEvent {
    pub seq: i64,
    pub id: String,
    pub recorded: Instant,
    /// The AuditEvent JSON text.
    pub body: String,
}

fn event_from_row(row: &sqlx::any::AnyRow) -> Result<StoredAuditEvent, StoreError> {
    Ok(StoredAuditEvent {
        seq: row.try_get("seq")?,
        id: row.try_get("id")?,
        recorded: Instant::from_micros(row.try_get("recorded")?),
        body: row.try_get("body")?,
    })
}

impl Store {
    /// Records audit events of accesses that change nothing (reads, searches, refusals).
    /// Changes record theirs in their own write set.
    pub async fn record_audit(&self, records: Vec<AuditRecord>) -> Result<(), StoreError> {
        self.commit(WriteSet { audit: records, ..Default::default() }).await
    }

    /// Audit events newest first, optionally about one entity, paged by `before_seq`.
    pub async fn audit_events(
        &self,
        entity: Option<(&str, &str)>,
        before_seq: Option<i64>,
        count: u32,
    ) -> Result<Vec<StoredAuditEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, id, recorded, body FROM audit_events \
             WHERE ($1 = '' OR (entity_type = $1 AND entity_id = $2)) AND seq < $3 \
             ORDER BY seq DESC LIMIT $4",
        )
        .bind(entity.map_or("", |e| e.0))
        .bind(entity.map_or("", |e| e.1))
        .bind(before_seq.unwrap_or(i64::MAX))
        .bind(i64::from(count))
        .fetch_all(&mut *self.reader().await?)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    pub async fn audit_event(&self, id: &str) -> Result<Option<StoredAuditEvent>, StoreError> {
        let row = sqlx::query("SELECT seq, id, recorded, body FROM audit_events WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *self.reader().await?)
            .await?;
        row.as_ref().map(event_from_row).transpose()
    }
}
