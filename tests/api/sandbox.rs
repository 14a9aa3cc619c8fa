//! `linkbridge demo seed`: the integrator sandbox is seeded through the public API, each demo
//! client then sees its own side of the referrals, and seeding again adds nothing; the demo
//! commands talk to the server the settings name.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{json_of, spawn_app, TestApp};
use crate::processes::{ServerOptions, ServerProcess};

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

/// Runs `linkbridge <args>` as a person would, with no `LINKBRIDGE_*` variable of the test
/// environment (settings are `deny_unknown_fields`), and returns its exit status and stdout.
fn run_cli(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_linkbridge"));
    for (name, _) in std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v))) {
        if name.starts_with("LINKBRIDGE_") {
            command.env_remove(name);
        }
    }
    let output = command.args(args).stdin(std::process::Stdio::null()).output().expect("run linkbridge");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_owned();
    (output.status, text(&output.stdout), text(&output.stderr))
}

#[tokio::test]
async fn demo_token_asks_the_server_that_the_listen_setting_names() {
    let data = tempfile::tempdir().expect("data directory");
    let server = ServerProcess::start(&ServerOptions::new(data.path())).await;
    let data_dir = data.path().to_str().expect("a UTF-8 path");
    let (status, _, stderr) = run_cli(&["demo", "setup", "--data-dir", data_dir]);
    assert!(status.success(), "demo setup: {stderr}");
    let listen = server.address.trim_start_matches("http://");
    assert_ne!(listen, "127.0.0.1:8080", "a port other than the default");

    let (status, token, stderr) = run_cli(&["demo", "token", "demo-gp", "--listen", listen, "--data-dir", data_dir]);
    assert!(status.success(), "demo token with --listen {listen}: {stderr}");
    let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build().expect("client");
    let answer = http.get(server.url("/Patient")).bearer_auth(&token).send().await.expect("search");
    assert_eq!(answer.status(), 200, "the token is this server's");
}

#[test]
fn help_lists_every_setting_with_its_environment_variable() {
    let (status, help, stderr) = run_cli(&["--help"]);
    assert!(status.success(), "--help: {stderr}");
    for key in linkbridge::config::Settings::KEYS {
        let variable = format!("LINKBRIDGE_{}", key.to_uppercase());
        assert!(help.contains(key) && help.contains(&variable), "--help names {key} and {variable}:\n{help}");
    }
}
