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

// ---------------------------------------------------------------------------------------------
// Workflow builders: fresh patients, consent, care plans and referral Bundles.

pub const NHS_NUMBER: &str = "https://fhir.nhs.uk/Id/nhs-number";

/// A random NHS number with a valid modulus-11 check digit, so tests never share a patient.
pub fn nhs_number() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    loop {
        let digits: Vec<u32> = (0..9).map(|_| rng.gen_range(0..10)).collect();
        let sum: u32 = digits.iter().zip((2..=10).rev()).map(|(d, w)| d * w).sum();
        let check = match 11 - (sum % 11) {
            11 => 0,
            10 => continue,
            c => c,
        };
        return digits.iter().chain(std::iter::once(&check)).map(|d| char::from_digit(*d, 10).unwrap_or('0')).collect();
    }
}

/// `base` with the top-level elements of `extra` set (a JSON `null` removes the element).
pub fn with(base: &Value, extra: Value) -> Value {
    let mut out = base.clone();
    if let (Some(map), Some(extra)) = (out.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            if v.is_null() {
                map.remove(k);
            } else {
                map.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// The patient's consent to the referral (R4 Consent, privacy scope, opt-in).
pub fn consent(patient_reference: &str) -> Value {
    json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}],
        "patient": {"reference": patient_reference},
        "dateTime": "2026-11-23T09:29:00Z",
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": {"type": "permit"}
    })
}

/// The link worker's CarePlan for a referral.
pub fn care_plan(service_request_id: &str, patient_id: &str, author_ods: &str) -> Value {
    json!({
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "title": "What matters to Morag",
        "subject": {"reference": format!("Patient/{patient_id}")},
        "basedOn": [{"reference": format!("ServiceRequest/{service_request_id}")}],
        "author": org_ref(author_ods),
        "activity": [
            {"detail": {"status": "scheduled", "description": "Welfare rights advice at the community hub"}},
            {"detail": {"status": "not-started", "description": "Tuesday walking group"}}
        ]
    })
}

/// Entry positions in [`referral_transaction`].
pub const PATIENT_ENTRY: usize = 0;
pub const CONSENT_ENTRY: usize = 1;
pub const SERVICE_REQUEST_ENTRY: usize = 2;
pub const TASK_ENTRY: usize = 3;

/// A whole referral as one transaction: Patient (conditional on its NHS number), Consent,
/// ServiceRequest and Task, linked by `urn:uuid:` fullUrls.
pub fn referral_transaction(nhs: &str, requester_ods: &str, owner_ods: Option<&str>) -> Value {
    let urn = || format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let (patient_urn, consent_urn, sr_urn, task_urn) = (urn(), urn(), urn(), urn());
    let mut sr = service_request("placeholder", requester_ods, owner_ods.unwrap_or("CLW001"));
    sr["subject"] = json!({"reference": patient_urn});
    sr["supportingInfo"] = json!([{"reference": consent_urn}]);
    if owner_ods.is_none() {
        sr.as_object_mut().map(|m| m.remove("performer"));
    }
    let mut work = task("placeholder", "placeholder", requester_ods, owner_ods);
    work["focus"] = json!({"reference": sr_urn});
    work["for"] = json!({"reference": patient_urn});
    json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": patient_urn,
                "resource": patient(nhs),
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": format!("identifier={NHS_NUMBER}|{nhs}")}
            },
            {"fullUrl": consent_urn, "resource": consent(&patient_urn), "request": {"method": "POST", "url": "Consent"}},
            {"fullUrl": sr_urn, "resource": sr, "request": {"method": "POST", "url": "ServiceRequest"}},
            {"fullUrl": task_urn, "resource": work, "request": {"method": "POST", "url": "Task"}}
        ]
    })
}

/// A Bundle of `bundle_type` with these `(resource, method, url)` entries.
pub fn bundle_of(bundle_type: &str, entries: Vec<(Value, &str, String)>) -> Value {
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|(resource, method, url)| {
            let mut entry = json!({"fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()), "request": {"method": method, "url": url}});
            if !resource.is_null() {
                entry["resource"] = resource;
            }
            entry
        })
        .collect();
    json!({"resourceType": "Bundle", "type": bundle_type, "entry": entries})
}
