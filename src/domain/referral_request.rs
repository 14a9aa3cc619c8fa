//! The referral ServiceRequest as the workflow rules read it (`docs/referral-workflow.md`,
//! "Resources"): its status, requester, subject and supporting information, parsed once from
//! its JSON. The referrer controls its status; the performer's progress lives on the Task
//! (`task_workflow`).

use serde_json::Value;

use super::references::{PartyReference, ReferenceTarget};

/// `ServiceRequest.status`: R4 request-status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestStatus {
    Draft,
    Active,
    OnHold,
    Revoked,
    Completed,
    EnteredInError,
    Unknown,
}

impl RequestStatus {
    pub const ALL: [RequestStatus; 7] = [
        RequestStatus::Draft,
        RequestStatus::Active,
        RequestStatus::OnHold,
        RequestStatus::Revoked,
        RequestStatus::Completed,
        RequestStatus::EnteredInError,
        RequestStatus::Unknown,
    ];

    pub fn parse(raw: &str) -> Option<RequestStatus> {
        Self::ALL.into_iter().find(|s| s.code() == raw)
    }

    pub fn code(self) -> &'static str {
        match self {
            RequestStatus::Draft => "draft",
            RequestStatus::Active => "active",
            RequestStatus::OnHold => "on-hold",
            RequestStatus::Revoked => "revoked",
            RequestStatus::Completed => "completed",
            RequestStatus::EnteredInError => "entered-in-error",
            RequestStatus::Unknown => "unknown",
        }
    }

    /// A referral not yet ended: draft, active or on hold.
    pub fn is_open(self) -> bool {
        matches!(self, RequestStatus::Draft | RequestStatus::Active | RequestStatus::OnHold)
    }

    /// Withdrawn by the referrer: revoked, or marked entered-in-error. Either way the rules
    /// cancel its open Tasks in the same transaction.
    pub fn is_withdrawn(self) -> bool {
        matches!(self, RequestStatus::Revoked | RequestStatus::EnteredInError)
    }
}

/// A referral ServiceRequest as the workflow rules read it: the elements they look up, parsed
/// once from its JSON (parse, don't validate). An element it lacks, or holds in a form the
/// rules do not use, reads as `None` (or is left out of `supporting_info`).
#[derive(Debug, Clone)]
pub struct ReferralRequest<'a> {
    status: Option<RequestStatus>,
    requester: Option<PartyReference>,
    subject: Option<&'a str>,
    supporting_info: Vec<ReferenceTarget>,
}

impl<'a> ReferralRequest<'a> {
    pub fn parse(service_request: &'a Value) -> ReferralRequest<'a> {
        ReferralRequest {
            status: service_request.get("status").and_then(Value::as_str).and_then(RequestStatus::parse),
            requester: service_request.get("requester").map(PartyReference::parse),
            subject: service_request.get("subject").and_then(|s| s.get("reference")).and_then(Value::as_str),
            supporting_info: service_request
                .get("supportingInfo")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(ReferenceTarget::of)
                .collect(),
        }
    }

    pub fn status(&self) -> Option<RequestStatus> {
        self.status
    }

    /// The practice that sent the referral, as written.
    pub fn requester(&self) -> Option<&PartyReference> {
        self.requester.as_ref()
    }

    /// The patient referred: its literal reference as written (`Patient/p1`).
    pub fn subject(&self) -> Option<&'a str> {
        self.subject
    }

    /// What `supportingInfo` names by literal reference (the consent), in order.
    pub fn supporting_info(&self) -> &[ReferenceTarget] {
        &self.supporting_info
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::tenancy::OdsCode;

    const ODS: &str = "https://fhir.nhs.uk/Id/ods-organization-code";

    #[test]
    fn a_referral_reads_its_requester_subject_and_supporting_information() {
        let referral = json!({
            "resourceType": "ServiceRequest",
            "status": "active",
            "requester": {"identifier": {"system": ODS, "value": "GP0001"}},
            "subject": {"reference": "Patient/p1"},
            "supportingInfo": [
                {"reference": "Consent/c1"},
                {"display": "a leaflet, named by no reference"},
                {"reference": "DocumentReference/d1"}
            ]
        });
        let view = ReferralRequest::parse(&referral);
        let gp = OdsCode::parse("GP0001").expect("valid ODS code");
        assert_eq!(view.requester(), Some(&PartyReference::OdsCode(gp)));
        assert_eq!(view.subject(), Some("Patient/p1"));
        let named: Vec<String> =
            view.supporting_info().iter().map(|target| format!("{}/{}", target.type_name, target.id)).collect();
        assert_eq!(named, ["Consent/c1", "DocumentReference/d1"]);
    }

    #[test]
    fn a_referral_is_open_until_it_is_revoked_completed_or_entered_in_error() {
        for status in RequestStatus::ALL {
            let referral = json!({"resourceType": "ServiceRequest", "status": status.code()});
            let read = ReferralRequest::parse(&referral).status();
            assert_eq!(read, Some(status), "{}", status.code());
            let open = matches!(status, RequestStatus::Draft | RequestStatus::Active | RequestStatus::OnHold);
            assert_eq!(status.is_open(), open, "{}", status.code());
            let withdrawn = matches!(status, RequestStatus::Revoked | RequestStatus::EnteredInError);
            assert_eq!(status.is_withdrawn(), withdrawn, "{}", status.code());
        }
    }

    #[test]
    fn a_referral_without_a_known_status_or_parties_reads_them_as_none() {
        let referral = json!({"resourceType": "ServiceRequest", "status": "cancelled"});
        let view = ReferralRequest::parse(&referral);
        assert_eq!(view.status(), None, "cancelled is a Task status, not a request status");
        assert_eq!(view.requester(), None);
        assert_eq!(view.subject(), None);
        assert!(view.supporting_info().is_empty());
    }
}
