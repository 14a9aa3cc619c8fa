-- A search's AuditEvent names the patients whose data its page returned (IHE Basic Audit Log
-- Patterns, PatientQuery), so that "who saw this person's record" has an answer: one row per
-- patient and event, found by patient (the operator's `entity=Patient/<id>`) and read back
-- by event when the AuditEvent is built. The event's query as asked is kept with it (BALP's
-- query entity). Events recorded before this have neither.
ALTER TABLE audit_events ADD COLUMN query TEXT;

CREATE TABLE audit_patients (
    event_id TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    PRIMARY KEY (event_id, patient_id)
) WITHOUT ROWID;
CREATE INDEX audit_patients_patient ON audit_patients (patient_id, event_id);
