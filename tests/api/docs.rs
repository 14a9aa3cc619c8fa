//! The API reference page at `/docs`: served without a token, with its assets from this server
//! only, and rendered by a real browser (headless Chromium) into the contract's operations.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::spawn_app;

const CONTRACT: &str = include_str!("../../openapi/linkbridge.openapi.yaml");

/// The browser: `LINKBRIDGE_TEST_CHROMIUM` (set by `.ci/run`, which installs Debian's
/// `chromium`), else `/usr/bin/chromium` if present.
fn chromium() -> Option<PathBuf> {
    match std::env::var_os("LINKBRIDGE_TEST_CHROMIUM") {
        Some(path) => Some(PathBuf::from(path)),
        None => Some(PathBuf::from("/usr/bin/chromium")).filter(|path| path.exists()),
    }
}

/// The page after its scripts ran, as the browser's DOM serialised to HTML.
fn rendered_dom(browser: PathBuf, url: String) -> String {
    let profile = tempfile::tempdir().expect("browser profile directory");
    let output = Command::new(&browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        // Virtual time: the page's scripts and fetches run to completion, however slow the machine.
        .arg("--virtual-time-budget=30000")
        .arg("--timeout=60000")
        .arg("--dump-dom")
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("{} could not be started: {e}", browser.display()));
    assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("the DOM is UTF-8")
}

/// Every `attribute="value"` of the DOM after `marker`.
fn attribute_values(dom: &str, marker: &str) -> Vec<String> {
    dom.split(marker)
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(|value| value.replace("&amp;", "&"))
        .collect()
}

#[tokio::test]
async fn the_docs_page_renders_every_operation_of_the_contract_in_a_real_browser() {
    let Some(browser) = chromium() else {
        crate::helpers::announce_skip(
            "the /docs browser test: it needs Chromium (apt-get install chromium, or set \
             LINKBRIDGE_TEST_CHROMIUM); .ci/run installs it",
        );
        return;
    };
    let app = spawn_app().await;
    let url = app.url("/docs");
    let dom =
        tokio::time::timeout(Duration::from_secs(120), tokio::task::spawn_blocking(move || rendered_dom(browser, url)))
            .await
            .expect("the browser finished within two minutes")
            .expect("the browser task ran");

    let contract: yaml_serde::Value = yaml_serde::from_str(CONTRACT).expect("the contract is YAML");
    let contract: Value = serde_json::to_value(contract).expect("as JSON");
    let paths = contract["paths"].as_object().expect("paths");
    let documented: BTreeSet<String> = paths.keys().cloned().collect();
    let operations = paths
        .values()
        .flat_map(|item| item.as_object().into_iter().flat_map(|m| m.keys()))
        .filter(|k| ["get", "put", "post", "delete", "patch"].contains(&k.as_str()));

    let rendered: BTreeSet<String> =
        attribute_values(&dom, r#"class="opblock-summary-path" data-path=""#).into_iter().collect();
    assert_eq!(rendered, documented, "every path of the contract is on the page, and nothing else");
    let method_labels = dom.matches(r#"class="opblock-summary-method""#).count();
    assert_eq!(method_labels, operations.count(), "one entry per operation");
    assert!(dom.contains("linkbridge"), "the contract's title is shown");
}

#[tokio::test]
async fn the_docs_page_and_its_assets_are_served_without_a_token_and_only_from_this_server() {
    let app = spawn_app().await;
    let page = app.http.get(app.url("/docs")).send().await.expect("docs page");
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"].to_str().expect("ascii").to_owned();
    assert!(policy.contains("default-src 'self'") && policy.contains("script-src 'self'"), "{policy}");
    let html = page.text().await.expect("html");
    for asset in attribute_values(&html, r#"src=""#).into_iter().chain(attribute_values(&html, r#"href=""#)) {
        assert!(!asset.contains("//"), "{asset} would leave this server");
        let response = app.http.get(app.url(&format!("/{asset}"))).send().await.expect("asset");
        assert_eq!(response.status(), 200, "{asset}");
        assert!(response.bytes().await.expect("asset body").len() > 100, "{asset} has content");
    }
    let spec = app.http.get(app.url("/openapi.yaml")).send().await.expect("contract");
    assert_eq!(spec.status(), 200);
    let spec = spec.text().await.expect("yaml");
    assert!(spec.contains(&format!("servers: [{{url: '{}'", app.address)), "the served contract names this server");
    let missing = app.http.get(app.url("/docs/secrets.txt")).send().await.expect("unknown asset");
    assert_eq!(missing.status(), 404);
}
