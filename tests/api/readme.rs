//! The README's referral example works as written (with the test clients' ODS codes).

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{json_of, spawn_app, Party};

#[tokio::test]
async fn the_readme_referral_transaction_is_accepted_and_the_clw_service_can_accept_it() {
    let app = spawn_app().await;
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/referral-transaction.json"))
        .expect("example")
        .replace("DEMOGP1", "GP0001")
        .replace("DEMOCLW1", "CLW001");
    let submit = || async {
        json_of(
            app.as_party(Party::Gp, Method::POST, "/")
                .await
                .header("Content-Type", "application/fhir+json")
                .body(example.clone())
                .send()
                .await
                .expect("post"),
        )
        .await
    };
    let (status, response) = submit().await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["type"], "transaction-response");
    let statuses: Vec<&str> = response["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["response"]["status"].as_str())
        .collect();
    assert_eq!(statuses, vec!["201 Created"; 4]);
    let task_location = response["entry"][3]["response"]["location"].as_str().expect("task location");
    let task_path = format!("/{}", task_location.split("/_history").next().expect("path"));

    let poll = "/Task?owner:identifier=https://fhir.nhs.uk/Id/ods-organization-code|CLW001&status=requested";
    let (status, found) = json_of(app.get(Party::Clw, poll).await).await;
    assert_eq!(status, 200, "{found}");
    let found_ids: Vec<&str> =
        found["entry"].as_array().expect("entries").iter().filter_map(|e| e["resource"]["id"].as_str()).collect();
    assert_eq!(found_ids.len(), 1, "the README's CLW poll finds the new referral: {found}");
    assert!(task_path.ends_with(found_ids[0]), "and it is the Task the transaction made");
    let (status, task) = json_of(app.get(Party::Clw, &task_path).await).await;
    assert_eq!(status, 200, "the CLW service sees the Task assigned to it: {task}");
    let focus = task["focus"]["reference"].as_str().expect("focus");
    assert!(focus.starts_with("ServiceRequest/"), "urn:uuid resolved: {focus}");
    let (status, _) = json_of(app.get(Party::Clw, &format!("/{focus}")).await).await;
    assert_eq!(status, 200, "and the referral it is for");

    let accepted = app
        .as_party(Party::Clw, Method::PATCH, &task_path)
        .await
        .header("Content-Type", "application/json-patch+json")
        .header("If-Match", "W/\"1\"")
        .body(json!([{"op": "replace", "path": "/status", "value": "accepted"}]).to_string())
        .send()
        .await
        .expect("patch");
    let (status, task) = json_of(accepted).await;
    assert_eq!((status, task["status"].clone()), (200, Value::from("accepted")), "{task}");

    let (status, again) = submit().await;
    assert_eq!(status, 409, "the same referral again is refused while the first is open: {again}");
}
