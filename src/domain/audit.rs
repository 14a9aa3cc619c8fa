//! The audit trail: who accessed which patient data, when, and with what outcome, as FHIR
//! AuditEvents in the shape of IHE Basic Audit Log Patterns (BALP) "RESTful activity".

use serde_json::{json, Value};

use super::instant::Instant;
use super::tenancy::Principal;

/// One recorded AuditEvent as the audit trail serves it, with its position in the trail
/// (`seq`, the paging cursor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAuditEvent {
    pub seq: i64,
    pub id: String,
    pub recorded: Instant,
    /// The AuditEvent JSON text.
    pub body: String,
}

/// `AuditEvent.action` (R4 value set audit-event-action).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    Create,
    Read,
    Update,
    Delete,
    Execute,
}

impl AuditAction {
    pub fn code(self) -> &'static str {
        match self {
            AuditAction::Create => "C",
            AuditAction::Read => "R",
            AuditAction::Update => "U",
            AuditAction::Delete => "D",
            AuditAction::Execute => "E",
        }
    }

    /// Every action.
    pub const ALL: [AuditAction; 5] =
        [AuditAction::Create, AuditAction::Read, AuditAction::Update, AuditAction::Delete, AuditAction::Execute];

    /// The action whose [`code`](Self::code) this is.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|action| action.code() == code)
    }
}

/// `AuditEvent.outcome` (R4 value set audit-event-outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditOutcome {
    /// 0: success.
    Success,
    /// 4: minor failure: the request was refused (4xx).
    Refused,
    /// 8: serious failure: the server failed (5xx).
    Failed,
}

impl AuditOutcome {
    pub fn code(self) -> &'static str {
        match self {
            AuditOutcome::Success => "0",
            AuditOutcome::Refused => "4",
            AuditOutcome::Failed => "8",
        }
    }

    /// Every outcome.
    pub const ALL: [AuditOutcome; 3] = [AuditOutcome::Success, AuditOutcome::Refused, AuditOutcome::Failed];

    /// The outcome whose [`code`](Self::code) this is.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|outcome| outcome.code() == code)
    }

    pub fn from_status(status: u16) -> Self {
        match status {
            500.. => AuditOutcome::Failed,
            400..=499 => AuditOutcome::Refused,
            _ => AuditOutcome::Success,
        }
    }
}

/// Who acted: the client system and its organisation, or nobody known (a refused request
/// without a valid token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditAgent {
    pub client_id: String,
    pub organization: String,
}

impl AuditAgent {
    pub fn of(principal: &Principal) -> Self {
        AuditAgent {
            client_id: principal.client_id().to_owned(),
            organization: principal.organization().as_str().to_owned(),
        }
    }

    pub fn unauthenticated() -> Self {
        AuditAgent { client_id: "unauthenticated".to_owned(), organization: "unknown".to_owned() }
    }
}

/// One audited access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub id: String,
    pub recorded: Instant,
    pub agent: AuditAgent,
    pub action: AuditAction,
    /// The FHIR interaction (`read`, `create`, `search-type`...), for `AuditEvent.subtype`.
    pub interaction: String,
    pub outcome: AuditOutcome,
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    /// A search's query as asked (`Task?status=requested`), for BALP's query entity.
    pub query: Option<String>,
    /// The ids of the patients whose data the access returned: a search's page names each
    /// patient it held (BALP's patient entities), so that the events of a search can be found
    /// by patient. Sorted, no duplicates.
    pub patients: Vec<String>,
}

impl AuditRecord {
    pub fn new(
        agent: AuditAgent,
        action: AuditAction,
        interaction: &str,
        outcome: AuditOutcome,
        entity_type: Option<&str>,
        entity_id: Option<&str>,
    ) -> Self {
        AuditRecord {
            // Time-ordered like resource ids (see `ResourceId::generate`).
            id: uuid::Uuid::now_v7().to_string(),
            recorded: Instant::now(),
            agent,
            action,
            interaction: interaction.to_owned(),
            outcome,
            entity_type: entity_type.map(str::to_owned),
            entity_id: entity_id.map(str::to_owned),
            query: None,
            patients: Vec::new(),
        }
    }

    /// The record of a search that returned data: its query and the patients of its page.
    pub fn with_search(mut self, query: String, mut patients: Vec<String>) -> Self {
        patients.sort();
        patients.dedup();
        self.query = Some(query);
        self.patients = patients;
        self
    }

    /// The patients as stored beside the event: their ids separated by spaces (an id has no
    /// space), `None` for an event that names none.
    pub fn patient_list(&self) -> Option<String> {
        (!self.patients.is_empty()).then(|| self.patients.join(" "))
    }

    /// The patients of a stored [`AuditRecord::patient_list`].
    pub fn patients_from_list(list: Option<&str>) -> Vec<String> {
        list.map(|list| list.split(' ').filter(|id| !id.is_empty()).map(str::to_owned).collect()).unwrap_or_default()
    }

    /// The AuditEvent resource. It names the data by reference only: no patient details.
    pub fn to_fhir(&self) -> Value {
        let mut event = json!({
            "resourceType": "AuditEvent",
            "id": self.id,
            "meta": {"versionId": "1", "lastUpdated": self.recorded.to_fhir()},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "Restful Operation"},
            "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": self.interaction}],
            "action": self.action.code(),
            "recorded": self.recorded.to_fhir(),
            "outcome": self.outcome.code(),
            "agent": [{
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type", "code": "humanuser"}]},
                "who": {
                    "identifier": {"system": "urn:linkbridge:client-id", "value": self.agent.client_id},
                    "display": format!("client {} of organisation {}", self.agent.client_id, self.agent.organization)
                },
                "requestor": true
            }],
            "source": {"observer": {"display": "linkbridge"}, "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}]},
        });
        let mut entities = Vec::new();
        if let Some(t) = &self.entity_type {
            let what = match &self.entity_id {
                Some(id) => json!({"reference": format!("{t}/{id}")}),
                None => json!({"display": t}),
            };
            entities.push(json!({"what": what}));
        }
        // IHE BALP "Query" and "PatientQuery": the query as asked (base64, as
        // `AuditEvent.entity.query` is), then one entity per patient whose data was returned.
        if let Some(query) = &self.query {
            use base64::Engine as _;
            entities.push(json!({
                "type": {"system": AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
                "query": base64::engine::general_purpose::STANDARD.encode(query)
            }));
        }
        for patient in &self.patients {
            entities.push(json!({
                "what": {"reference": format!("Patient/{patient}")},
                "type": {"system": AUDIT_ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"}
            }));
        }
        if let (false, Some(map)) = (entities.is_empty(), event.as_object_mut()) {
            map.insert("entity".into(), Value::Array(entities));
        }
        event
    }
}

const AUDIT_ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";

/// The patients whose data a resource holds: a Patient itself, or every Patient the resource
/// references (its `subject`, `for` or `patient` above all; a privacy officer would rather see
/// a patient named once too often than missed). Runs once per resource of every search page,
/// so it scans the stored text for its references (the server writes compact JSON: a
/// reference is always `"reference":"…"`) rather than parsing each body a second time.
pub fn patients_in(resource_type: &str, id: &str, body: &str) -> Vec<String> {
    const REFERENCE: &str = "\"reference\":\"";
    if resource_type == "Patient" {
        return vec![id.to_owned()];
    }
    let mut patients: Vec<String> = body
        .match_indices(REFERENCE)
        .filter_map(|(at, _)| {
            let value = &body[at + REFERENCE.len()..];
            super::search_params::split_reference(&value[..value.find('"')?])
        })
        .filter(|(target_type, _)| target_type == "Patient")
        .map(|(_, patient)| patient)
        .collect();
    patients.dedup();
    patients
}

#[cfg(test)]
mod search_tests {
    use super::*;

    #[test]
    fn a_search_event_names_its_query_and_each_patient_once() {
        let agent = AuditAgent { client_id: "gp".into(), organization: "GP0001".into() };
        let record =
            AuditRecord::new(agent, AuditAction::Execute, "search-type", AuditOutcome::Success, Some("Task"), None)
                .with_search("Task?status=requested".into(), vec!["p2".into(), "p1".into(), "p2".into()]);
        let event = record.to_fhir();
        let entities = event["entity"].as_array().expect("entities");
        assert_eq!(entities.len(), 4, "the type, the query and two patients: {event}");
        assert_eq!(entities[1]["role"]["code"], "24");
        assert_eq!(entities[1]["query"], "VGFzaz9zdGF0dXM9cmVxdWVzdGVk", "base64 of the query");
        let patients: Vec<&Value> = entities[2..].iter().map(|e| &e["what"]["reference"]).collect();
        assert_eq!(patients, [&json!("Patient/p1"), &json!("Patient/p2")]);
        assert!(entities[2..].iter().all(|e| e["role"]["code"] == "1" && e["type"]["code"] == "1"));
    }

    #[test]
    fn the_patients_of_a_resource_are_itself_or_the_ones_it_references() {
        assert_eq!(patients_in("Patient", "p1", "{}"), ["p1"]);
        assert_eq!(
            patients_in(
                "Task",
                "t",
                r#"{"for":{"display":"Morag","reference":"Patient/p2"},"focus":{"reference":"ServiceRequest/s"}}"#
            ),
            ["p2"]
        );
        assert_eq!(
            patients_in(
                "Consent",
                "c",
                r#"{"patient":{"reference":"Patient/p4"},"performer":[{"reference":"Patient/p5"}]}"#
            ),
            ["p4", "p5"],
            "wherever it names one"
        );
        assert_eq!(patients_in("ServiceRequest", "s", r#"{"subject":{"reference":"Patient/p3/_history/2"}}"#), ["p3"]);
        assert_eq!(patients_in("Consent", "c", r#"{"patient":{"reference":"Patient/p4"}}"#), ["p4"]);
        assert!(patients_in("Task", "t", r#"{"for":{"reference":"Group/g"}}"#).is_empty());
        assert!(patients_in("Organization", "o", r#"{"name":"x"}"#).is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_and_outcome_code_reads_back_as_itself_and_others_as_nothing() {
        for action in AuditAction::ALL {
            assert_eq!(AuditAction::from_code(action.code()), Some(action));
        }
        for outcome in AuditOutcome::ALL {
            assert_eq!(AuditOutcome::from_code(outcome.code()), Some(outcome));
        }
        assert_eq!(AuditAction::from_code("X"), None);
        assert_eq!(AuditOutcome::from_code("12"), None);
    }
}
