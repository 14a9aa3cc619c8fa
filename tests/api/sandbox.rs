//! `linkbridge demo seed`: the integrator sandbox is seeded through the public API, each demo
//! client then sees its own side of the referrals, and seeding again adds nothing.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{json_of, spawn_app, TestApp};

async fn as_demo(app: &TestApp, client: &str, path: &str) -> Value {
    let token = linkbridge::admin::demo_token(&app.settings, client, &app.address, "system/*.cruds")
        .await
        .expect("a demo client's token");
    let (status, body) =
        json_of(app.http.request(Method::GET, app.url(path)).bearer_auth(token).send().await.expect("request")).await;
    assert_eq!(status, 200, "{client} GET {path}: {body}");
    body
}

fn statuses(bundle: &Value) -> Vec<String> {
    let mut statuses: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["resource"]["status"].as_str().map(str::to_owned))
        .collect();
    statuses.sort();
    statuses
}

#[tokio::test]
async fn the_sandbox_seed_gives_each_demo_client_its_side_of_four_referrals_and_is_idempotent() {
    let app = spawn_app().await;
    let summary = linkbridge::sandbox::seed(&app.settings, &app.address).await.expect("the seed runs");
    assert_eq!(summary.matches("Task/").count(), 4, "{summary}");

    let owned = "/Task?owner:identifier=https://fhir.nhs.uk/Id/ods-organization-code|DEMOCLW1";
    let clw_tasks = as_demo(&app, "demo-clw", owned).await;
    assert_eq!(statuses(&clw_tasks), ["accepted", "in-progress", "rejected", "requested"]);
    let requested = "/Task?requester:identifier=https://fhir.nhs.uk/Id/ods-organization-code|DEMOGP1";
    assert_eq!(statuses(&as_demo(&app, "demo-gp", requested).await), statuses(&clw_tasks), "the GP sees the same");
    let plans = as_demo(&app, "demo-gp", "/CarePlan").await;
    assert_eq!(statuses(&plans), ["active"], "the referrer reads the link worker's CarePlan");
    let directory = as_demo(&app, "demo-gp", "/Organization").await;
    assert_eq!(directory["entry"].as_array().map(Vec::len), Some(2), "{directory}");

    let again = linkbridge::sandbox::seed(&app.settings, &app.address).await.expect("the seed runs again");
    assert_eq!(again, summary, "the same referrals, where the first seed left them");
    assert_eq!(statuses(&as_demo(&app, "demo-clw", owned).await), statuses(&clw_tasks));
    assert_eq!(as_demo(&app, "demo-gp", "/Patient").await["entry"].as_array().map(Vec::len), Some(4));
}
