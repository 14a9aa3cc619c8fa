//! Resources used across tests: a patient, a referral and its Task.

use serde_json::{json, Value};

pub const ODS: &str = "https://fhir.nhs.uk/Id/ods-organization-code";

pub fn patient(nhs_number: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs_number}],
        "name": [{"family": "MacLeod", "given": ["Morag"]}],
        "gender": "female",
        "birthDate": "1961-04-12"
    })
}

pub fn org_ref(ods: &str) -> Value {
    json!({"identifier": {"system": ODS, "value": ods}})
}

pub fn service_request(patient_id: &str, requester_ods: &str, performer_ods: &str) -> Value {
    json!({
        "resourceType": "ServiceRequest",
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.2.1.3.2.4.18.48", "value": format!("REF-{}", uuid::Uuid::new_v4())}],
        "status": "active",
        "intent": "order",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "871731000000106", "display": "Referral to social prescribing service"}]},
        "subject": {"reference": format!("Patient/{patient_id}")},
        "requester": org_ref(requester_ods),
        "performer": [org_ref(performer_ods)],
        "authoredOn": "2026-11-23T09:30:00Z"
    })
}

pub fn task(service_request_id: &str, patient_id: &str, requester_ods: &str, owner_ods: Option<&str>) -> Value {
    let mut task = json!({
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
        "focus": {"reference": format!("ServiceRequest/{service_request_id}")},
        "for": {"reference": format!("Patient/{patient_id}")},
        "authoredOn": "2026-11-23T09:31:00Z",
        "requester": org_ref(requester_ods)
    });
    if let (Some(owner), Some(map)) = (owner_ods, task.as_object_mut()) {
        map.insert("owner".into(), org_ref(owner));
    }
    task
}
