-- A search's AuditEvent names the patients whose data its page returned (IHE Basic Audit Log
-- Patterns, PatientQuery), so that "who saw this person's record" has an answer. The event
-- keeps its query as asked (BALP's query entity) and its patients (space-separated ids, read
-- back when its AuditEvent is built); `audit_patients` finds the events by patient (the
-- operator's `entity=Patient/<id>`), one row per patient and event in one B-tree keyed by
-- patient: a poll writes a row per patient of its page, so that is all it writes. Events
-- recorded before this have neither.
ALTER TABLE audit_events ADD COLUMN query TEXT;
ALTER TABLE audit_events ADD COLUMN patients TEXT;

CREATE TABLE audit_patients (
    patient_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (patient_id, event_id)
) WITHOUT ROWID;
