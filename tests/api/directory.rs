//! The shared directory (Organization, PractitionerRole): each organisation maintains its own
//! entries, the operator the rest; a literal reference to a directory entry names that
//! organisation for the referral rules.

use reqwest::Method;
use serde_json::{json, Value};

use crate::fixtures::{patient, service_request, task, ODS};
use crate::helpers::{json_of, spawn_app, Party, TestApp};

fn organization(ods: &str) -> Value {
    json!({"resourceType": "Organization", "identifier": [{"system": ODS, "value": ods}], "name": format!("Organisation {ods}")})
}

fn practitioner_role(ods: &str) -> Value {
    json!({"resourceType": "PractitionerRole", "organization": {"identifier": {"system": ODS, "value": ods}}})
}

async fn put(app: &TestApp, party: Party, resource: &Value) -> u16 {
    let path =
        format!("/{}/{}", resource["resourceType"].as_str().expect("type"), resource["id"].as_str().expect("id"));
    app.as_party(party, Method::PUT, &path)
        .await
        .header("Content-Type", "application/fhir+json")
        .body(resource.to_string())
        .send()
        .await
        .expect("put")
        .status()
        .as_u16()
}

#[tokio::test]
async fn an_organisation_maintains_only_its_own_directory_entries() {
    let app = spawn_app().await;
    let cases = [
        (Party::Gp, organization("GP0001"), 201, "a practice registers its own Organization"),
        (Party::Gp, organization("CLW001"), 403, "but not another organisation's"),
        (Party::Operator, organization("CLW002"), 201, "the operator registers anyone"),
        (Party::Clw, practitioner_role("CLW001"), 201, "a CLW service records its own staff's roles"),
        (Party::Clw, practitioner_role("GP0001"), 403, "but not a practice's"),
    ];
    for (party, resource, expected, why) in cases {
        let (status, body) = json_of(app.create(party, &resource).await).await;
        assert_eq!(status, expected, "{why}: {body}");
    }
    let (_, theirs) = json_of(app.create(Party::Operator, &organization("CLW001")).await).await;
    let mut renamed = theirs.clone();
    renamed["name"] = json!("Taken over");
    assert_eq!(put(&app, Party::Gp, &renamed).await, 403, "a practice cannot edit a CLW service's entry");
    assert_eq!(put(&app, Party::Operator, &renamed).await, 200, "the operator can");
    let mut moved = theirs;
    moved["identifier"][0]["value"] = json!("GP0001");
    assert_eq!(put(&app, Party::Gp, &moved).await, 403, "nor claim it by changing its ODS code");
}

#[tokio::test]
async fn a_task_owner_given_as_a_literal_organization_reference_is_resolved_through_the_directory() {
    let app = spawn_app().await;
    let clw = app.created(Party::Operator, &organization("CLW001")).await;
    let gp_practice = app.created(Party::Gp, &organization("GP0001")).await;
    let patient_id = app.created(Party::Gp, &patient("9434765919")).await["id"].as_str().expect("id").to_owned();
    let mut referral = service_request(&patient_id, "GP0001", "CLW001");
    referral["requester"] = json!({"reference": format!("Organization/{}", gp_practice["id"].as_str().expect("id"))});
    let sr = app.created(Party::Gp, &referral).await;
    let mut referral_task = task(sr["id"].as_str().expect("id"), &patient_id, "GP0001", None);
    referral_task["owner"] = json!({"reference": format!("Organization/{}", clw["id"].as_str().expect("id"))});
    let created = app.created(Party::Gp, &referral_task).await;
    let (status, seen) =
        json_of(app.get(Party::Clw, &format!("/Task/{}", created["id"].as_str().expect("id"))).await).await;
    assert_eq!(status, 200, "the CLW service named by reference is the owner: {seen}");
}
