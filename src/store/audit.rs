//! Reading and recording the audit trail.

use sqlx::Row;

use super::write_set::WriteSet;
use super::{Store, StoreError};
use crate::domain::audit::{AuditAction, AuditAgent, AuditOutcome, AuditRecord};
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

/// The columns [`event_from_row`] reads.
macro_rules! event_columns {
    () => {
        "seq, id, recorded, client_id, organization, action, outcome, entity_type, entity_id, interaction, body"
    };
}

fn event_from_row(row: &sqlx::any::AnyRow) -> Result<StoredAuditEvent, StoreError> {
    let id: String = row.try_get("id")?;
    let recorded = Instant::from_micros(row.try_get("recorded")?);
    let stored: String = row.try_get("body")?;
    // Events recorded since the `audit_facts` migration keep their facts only (see `apply`),
    // and their AuditEvent is built here; older ones carry the text they were recorded with.
    let body = if stored.is_empty() { record_from_row(row, &id, recorded)?.to_fhir().to_string() } else { stored };
    Ok(StoredAuditEvent { seq: row.try_get("seq")?, id, recorded, body })
}

/// The audited access a row records.
fn record_from_row(row: &sqlx::any::AnyRow, id: &str, recorded: Instant) -> Result<AuditRecord, StoreError> {
    let unreadable = |column: &str, value: &str| {
        StoreError::Database(sqlx::Error::Decode(format!("audit event {id} has the unknown {column} {value:?}").into()))
    };
    let action: String = row.try_get("action")?;
    let outcome: String = row.try_get("outcome")?;
    Ok(AuditRecord {
        id: id.to_owned(),
        recorded,
        agent: AuditAgent { client_id: row.try_get("client_id")?, organization: row.try_get("organization")? },
        action: AuditAction::from_code(&action).ok_or_else(|| unreadable("action", &action))?,
        interaction: row.try_get::<Option<String>, _>("interaction")?.unwrap_or_default(),
        outcome: AuditOutcome::from_code(&outcome).ok_or_else(|| unreadable("outcome", &outcome))?,
        entity_type: row.try_get("entity_type")?,
        entity_id: row.try_get("entity_id")?,
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
        let rows = sqlx::query(concat!(
            "SELECT ",
            event_columns!(),
            " FROM audit_events WHERE ($1 = '' OR (entity_type = $1 AND entity_id = $2)) AND seq < $3 \
             ORDER BY seq DESC LIMIT $4"
        ))
        .bind(entity.map_or("", |e| e.0))
        .bind(entity.map_or("", |e| e.1))
        .bind(before_seq.unwrap_or(i64::MAX))
        .bind(i64::from(count))
        .fetch_all(&mut *self.reader().await?)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    pub async fn audit_event(&self, id: &str) -> Result<Option<StoredAuditEvent>, StoreError> {
        let row = sqlx::query(concat!("SELECT ", event_columns!(), " FROM audit_events WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *self.reader().await?)
            .await?;
        row.as_ref().map(event_from_row).transpose()
    }
}
