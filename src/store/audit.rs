//! Reading and recording the audit trail.

use sqlx::Row;

use super::write_set::WriteSet;
use super::{Store, StoreError};
use crate::domain::audit::{AuditAction, AuditAgent, AuditOutcome, AuditRecord, StoredAuditEvent};
use crate::domain::instant::Instant;

/// The columns [`event_from_row`] reads.
macro_rules! event_columns {
    () => {
        "seq, id, recorded, client_id, organization, action, outcome, entity_type, entity_id, interaction, query, patients, body"
    };
}

/// The event of a row.
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
        query: row.try_get("query")?,
        patients: AuditRecord::patients_from_list(row.try_get::<Option<String>, _>("patients")?.as_deref()),
    })
}

impl Store {
    /// Records audit events of accesses that change nothing (reads, searches, refusals).
    /// Changes record theirs in their own write set.
    pub async fn record_audit(&self, records: Vec<AuditRecord>) -> Result<(), StoreError> {
        self.commit(WriteSet { audit: records, ..Default::default() }).await
    }

    /// Audit events newest first, optionally about one entity, paged by `before_seq`. Events
    /// about a Patient are those naming it as their entity and the searches whose page held
    /// its data (`audit_patients`), each found through its index.
    pub async fn audit_events(
        &self,
        entity: Option<(&str, &str)>,
        before_seq: Option<i64>,
        count: u32,
    ) -> Result<Vec<StoredAuditEvent>, StoreError> {
        let mut conn = self.reader().await?;
        let before_seq = before_seq.unwrap_or(i64::MAX);
        let rows = match entity {
            None => {
                sqlx::query(concat!(
                    "SELECT ",
                    event_columns!(),
                    " FROM audit_events WHERE seq < $1 ORDER BY seq DESC LIMIT $2"
                ))
                .bind(before_seq)
                .bind(i64::from(count))
                .fetch_all(&mut *conn)
                .await?
            }
            Some((entity_type, entity_id)) => {
                sqlx::query(concat!(
                    "SELECT ",
                    event_columns!(),
                    " FROM audit_events WHERE seq < $3 AND id IN (\
                     SELECT id FROM audit_events WHERE entity_type = $1 AND entity_id = $2 \
                     UNION SELECT event_id FROM audit_patients WHERE $1 = 'Patient' AND patient_id = $2) \
                     ORDER BY seq DESC LIMIT $4"
                ))
                .bind(entity_type)
                .bind(entity_id)
                .bind(before_seq)
                .bind(i64::from(count))
                .fetch_all(&mut *conn)
                .await?
            }
        };
        rows.iter().map(event_from_row).collect()
    }

    pub async fn audit_event(&self, id: &str) -> Result<Option<StoredAuditEvent>, StoreError> {
        let mut conn = self.reader().await?;
        let row = sqlx::query(concat!("SELECT ", event_columns!(), " FROM audit_events WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        row.as_ref().map(event_from_row).transpose()
    }
}
