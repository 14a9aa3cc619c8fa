//! `/metrics`: Prometheus text with requests by route template and status, token refusals,
//! the database pool and the outbox, on both databases.

use reqwest::Method;

use crate::helpers::{spawn_app_on, Db, Party};
use crate::on_both_databases;

/// The value of the first sample line starting with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find(|line| line.starts_with(series)).and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

async fn metrics_count_requests_by_route_and_status_and_report_token_refusals_pool_and_outbox(db: Db) {
    let Some(app) = spawn_app_on(db).await else { return };
    for _ in 0..3 {
        let missing = app.as_party(Party::Gp, Method::GET, "/Task/no-such-task").await.send().await.expect("read");
        assert_eq!(missing.status(), 404);
    }
    let refused = app.http.get(app.url("/Task?status=requested")).send().await.expect("search without a token");
    assert_eq!(refused.status(), 401);
    let forged = app.http.get(app.url("/Task")).bearer_auth("not.a.token").send().await.expect("forged token");
    assert_eq!(forged.status(), 401);
    app.http.get(app.url("/no/such/route/a1b2c3")).send().await.expect("unknown path");

    let response = app.http.get(app.url("/metrics")).send().await.expect("scrape without a token");
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str().expect("ascii").starts_with("text/plain"));
    let text = response.text().await.expect("text");

    let reads = r#"linkbridge_http_request_duration_seconds_count{route="/Task/{id}",method="GET",status="404"}"#;
    assert_eq!(sample(&text, reads), Some(3.0), "{text}");
    let bucket =
        r#"linkbridge_http_request_duration_seconds_bucket{le="+Inf",route="/Task/{id}",method="GET",status="404"}"#;
    assert_eq!(sample(&text, bucket), Some(3.0), "a latency histogram per route: {text}");
    let unauthenticated = r#"linkbridge_http_request_duration_seconds_count{route="/Task",method="GET",status="401"}"#;
    assert_eq!(sample(&text, unauthenticated), Some(2.0), "refusals are counted under their route: {text}");
    assert!(!text.contains("a1b2c3") && !text.contains("no-such-task"), "no path or id becomes a label");
    assert!(text.contains(r#"route="unmatched""#));
    let missing_token = r#"linkbridge_access_token_refusals_total{at="resource_server",reason="missing_token"}"#;
    assert_eq!(sample(&text, missing_token), Some(2.0), "the search and the unknown path: {text}");
    let invalid: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("linkbridge_access_token_refusals_total{at=\"resource_server\"")
                && !l.contains("missing_token")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(invalid, 1.0, "the forged token is counted with its reason: {text}");
    assert!(sample(&text, r#"linkbridge_db_pool_connections{state="open"}"#).is_some_and(|open| open >= 1.0), "{text}");
    assert_eq!(sample(&text, r#"linkbridge_outbox_events{state="pending"}"#), Some(0.0));
    assert_eq!(sample(&text, r#"linkbridge_outbox_events{state="dead"}"#), Some(0.0));
    assert_eq!(sample(&text, "linkbridge_outbox_oldest_pending_age_seconds"), Some(0.0));
    // Every request above that reached a handler or was refused committed an access record.
    let batches = sample(&text, "linkbridge_group_commit_batches_total").expect("batches counted");
    let write_sets = sample(&text, "linkbridge_group_commit_write_sets_total").expect("write sets counted");
    assert!(batches >= 1.0 && write_sets >= 5.0 && write_sets >= batches, "{batches} batches, {write_sets} write sets");
    let beside = sample(&text, "linkbridge_group_commit_parallel_batches_total").expect("batches beside counted");
    assert!(beside <= batches, "{beside} of {batches} batches begun beside another");
    // Each write set's wait for its batch is observed as the batch begins, before the totals
    // above count it; each batch's duration once its requests are answered.
    let waits = sample(&text, "linkbridge_group_commit_wait_seconds_count").expect("waits observed");
    assert!(waits >= write_sets, "{waits} waits observed of {write_sets} write sets");
    let durations = sample(&text, "linkbridge_group_commit_batch_duration_seconds_count").expect("batches timed");
    assert!(durations >= 1.0 && durations <= batches, "{durations} batches timed of {batches}");
    let sizes = sample(&text, "linkbridge_group_commit_batch_write_sets_count").expect("batch sizes observed");
    assert_eq!(sizes, durations, "a batch's size is observed with its duration");
    let again = app.http.get(app.url("/metrics")).send().await.expect("scrape again").text().await.expect("text");
    let later = sample(&again, "linkbridge_group_commit_write_sets_total").expect("write sets counted");
    assert!(later >= write_sets, "a counter never goes back: {write_sets} then {later}");
}

on_both_databases!(metrics_count_requests_by_route_and_status_and_report_token_refusals_pool_and_outbox);
