-- An audit event's FHIR text is no longer stored with it: every fact it shows already has a
-- column but the FHIR interaction, added here, and the text is built from them when read. The
-- text was a third of what a referral wrote to the log (about 900 bytes per event, three events
-- per referral). Events recorded before this keep their text, read as it was stored (an event
-- whose `body` is empty is built from its columns).
ALTER TABLE audit_events ADD COLUMN interaction TEXT;

-- Nothing reads the events by `recorded` (the trail is paged by `seq`, and found by entity):
-- an index entry per event to maintain for no query.
DROP INDEX audit_events_recorded;
