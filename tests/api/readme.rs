//! The README's referral examples work as written: its walkthrough runs, as a shell script, on a
//! fresh server process, and its transaction example behaves as the README says.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{json_of, spawn_app, Party};
use crate::processes::{ServerOptions, ServerProcess};

/// The shell blocks of the README from the heading `from` up to the heading `to`, in order.
fn shell_blocks(readme: &str, from: &str, to: &str) -> String {
    let start = readme.find(from).unwrap_or_else(|| panic!("README has {from}"));
    let end = start + readme[start..].find(to).unwrap_or_else(|| panic!("README has {to} after {from}"));
    let mut script = String::new();
    for (index, part) in readme[start..end].split("```").enumerate() {
        if index % 2 == 1 {
            script.push_str(part.strip_prefix("sh\n").unwrap_or_else(|| panic!("a ```sh block: {part}")));
        }
    }
    script
}

#[tokio::test]
async fn the_readme_walkthrough_and_transaction_run_as_written_on_a_fresh_server() {
    let data = tempfile::tempdir().expect("data directory");
    let server = ServerProcess::start(&ServerOptions::new(data.path())).await;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    // As a reader runs it, but with the built binary for `cargo run` and this server's port.
    let script = shell_blocks(&readme, "## A first referral, with curl", "### The referral workflow")
        .replace("cargo run -q --release --", "\"$LINKBRIDGE_BIN\"")
        .replace("cargo run --release --", "\"$LINKBRIDGE_BIN\"")
        .replace("http://127.0.0.1:8080", &server.address);
    let mut command = std::process::Command::new("timeout");
    for (name, _) in std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v))) {
        if name.starts_with("LINKBRIDGE_") {
            command.env_remove(name);
        }
    }
    let output = command
        .args(["120", "bash", "-euo", "pipefail", "-c", &script])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("LINKBRIDGE_BIN", env!("CARGO_BIN_EXE_linkbridge"))
        .env("LINKBRIDGE_DATA_DIR", data.path())
        .env("LINKBRIDGE_LISTEN", server.address.trim_start_matches("http://"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the README's shell blocks");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the script fails ({}):\n{stdout}\n{stderr}\n{script}", output.status);
    assert!(!stdout.contains("OperationOutcome"), "no step is refused:\n{stdout}");
    assert!(stdout.contains(r#""status":"accepted""#), "the CLW service accepts the Task:\n{stdout}");
    let transaction = stdout.lines().last().unwrap_or_default();
    assert!(transaction.contains("transaction-response"), "the transaction example is answered last:\n{stdout}");
    assert_eq!(transaction.matches("201 Created").count(), 4, "and creates its four resources:\n{transaction}");
}

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
