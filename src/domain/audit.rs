//! The audit trail: who accessed which patient data, when, and with what outcome, as FHIR
//! AuditEvents in the shape of IHE Basic Audit Log Patterns (BALP) "RESTful activity".

use serde_json::{json, Value};

use super::instant::Instant;
use super::tenancy::Principal;

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
        }
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
        if let (Some(t), Some(map)) = (&self.entity_type, event.as_object_mut()) {
            let what = match &self.entity_id {
                Some(id) => json!({"reference": format!("{t}/{id}")}),
                None => json!({"display": t}),
            };
            map.insert("entity".into(), json!([{"what": what}]));
        }
        event
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
