//! SIGTERM stops the service gracefully: it exits cleanly, and what it acknowledged before is
//! there when it starts again (the SQLite writer commits what it holds before stopping).

use crate::fixtures::patient;
use crate::helpers::{json_of, register_test_clients, Party};
use crate::processes::{ServerOptions, ServerProcess};
use linkbridge::store::DatabaseUrl;

#[tokio::test]
async fn sigterm_stops_the_server_cleanly_and_keeps_what_it_acknowledged() {
    let dir = tempfile::tempdir().expect("data dir");
    register_test_clients(&DatabaseUrl::sqlite_in(dir.path())).await;
    let options = ServerOptions::new(dir.path());
    let http = reqwest::Client::new();

    let first = ServerProcess::start(&options).await;
    let bearer = first.token(&http, Party::Gp).await;
    let created = http
        .post(first.url("/Patient"))
        .bearer_auth(&bearer)
        .header("Content-Type", "application/fhir+json")
        .body(patient("9434765919").to_string())
        .send()
        .await
        .expect("create");
    let (status, body) = json_of(created).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().expect("id").to_owned();
    let logs_before_stop = first.logs();
    let exit = first.terminate();
    assert!(exit.success(), "a clean exit on SIGTERM: {exit:?}\n{logs_before_stop}");

    let second = ServerProcess::start(&options).await;
    let bearer = second.token(&http, Party::Gp).await;
    let read = http.get(second.url(&format!("/Patient/{id}"))).bearer_auth(&bearer).send().await.expect("read");
    let (status, body) = json_of(read).await;
    assert_eq!(status, 200, "the acknowledged write survived the restart: {body}");
}
