//! The OpenAPI contract (`openapi/linkbridge.openapi.yaml`) against the server: every route the
//! router answers is in the contract, every operation in the contract is answered, and the search
//! parameters it documents are the server's own. Checked by asking the running server, so a
//! route that exists only on paper (or only in code) fails here.

use std::collections::BTreeSet;

use linkbridge::domain::resource_type::ResourceType;
use linkbridge::domain::search_params;
use linkbridge::http::conformance::CONFORMANCE_TYPES;
use linkbridge::http::ENDPOINTS;
use reqwest::Method;
use serde_json::Value;

use crate::helpers::{spawn_app, Party, TestApp};

const CONTRACT: &str = include_str!("../../openapi/linkbridge.openapi.yaml");

/// Names that may stand in a `{type}` segment: everything served, the conformance and audit
/// types, and one type linkbridge does not serve (to prove it is refused, not routed).
fn type_candidates() -> Vec<&'static str> {
    let mut types: Vec<&str> = ResourceType::ALL.iter().map(|t| t.as_str()).collect();
    types.extend(CONFORMANCE_TYPES);
    types.extend(["AuditEvent", "Basic"]);
    types
}

fn contract() -> Value {
    let yaml: yaml_serde::Value = yaml_serde::from_str(CONTRACT).expect("the contract is YAML");
    // Through JSON, with any non-string map key (e.g. an unquoted status code) as a string.
    serde_json::to_value(&yaml).expect("the contract converts to JSON")
}

/// `(METHOD, path template)` for every operation in the contract.
fn contract_operations(contract: &Value) -> BTreeSet<(String, String)> {
    const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
    let paths = contract["paths"].as_object().expect("the contract has paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            METHODS
                .iter()
                .filter(|method| item.get(**method).is_some())
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect()
}

/// One router template made concrete for each value its `{type}` segment can take:
/// `(path template as the contract writes it, path to request)`.
fn expand(template: &str) -> Vec<(String, String)> {
    let (type_segment, types) = match template.find("{type") {
        None => (None, vec![""]),
        Some(start) => {
            let end = start + template[start..].find('}').expect("closed placeholder") + 1;
            let segment = &template[start..end];
            let types = match segment.strip_prefix("{type:").and_then(|s| s.strip_suffix('}')) {
                Some(alternatives) => alternatives.split('|').collect(),
                None => type_candidates(),
            };
            (Some(segment), types)
        }
    };
    types
        .into_iter()
        .map(|name| {
            let named = type_segment.map_or_else(|| template.to_owned(), |segment| template.replace(segment, name));
            let request = named.replace("{id}", "drift-probe").replace("{vid}", "1").replace("{asset}", "init.js");
            (named, request)
        })
        .collect()
}

/// Whether the server routes `method path`: anything but 405 and the "no such endpoint" or
/// "type not supported" 404 (both `not-supported`; a missing resource is `not-found`).
async fn is_routed(app: &TestApp, token: &str, method: &Method, path: &str) -> bool {
    let mut request = app.http.request(method.clone(), app.url(path)).bearer_auth(token);
    if [Method::POST, Method::PUT, Method::PATCH].contains(method) {
        request = request.header("Content-Type", "application/fhir+json").body("{}");
    }
    let response = request.send().await.expect("probe request");
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let not_supported = body["issue"][0]["code"] == "not-supported";
    !(status == 405 || (status == 404 && not_supported))
}

#[tokio::test]
async fn every_route_the_server_answers_is_in_the_contract_and_every_contract_operation_is_answered() {
    let app = spawn_app().await;
    // An operator sees every endpoint; a refusal by role (403) still proves the route exists.
    let token = app.token(Party::Operator).await;
    let mut answered = BTreeSet::new();
    let mut probed = BTreeSet::new();
    for endpoint in ENDPOINTS {
        for (named, request_path) in expand(endpoint.path) {
            for (method, _) in endpoint.methods {
                let key = (method.as_str().to_owned(), named.clone());
                // Earlier endpoints win in the router, as they do here.
                if !probed.insert(key.clone()) {
                    continue;
                }
                let method = Method::from_bytes(method.as_str().as_bytes()).expect("an HTTP method");
                if is_routed(&app, &token, &method, &request_path).await {
                    answered.insert(key);
                }
            }
        }
    }
    let documented = contract_operations(&contract());
    let undocumented: Vec<_> = answered.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&answered).collect();
    assert!(undocumented.is_empty(), "answered by the server but missing from the contract: {undocumented:#?}");
    assert!(unrouted.is_empty(), "in the contract but not answered by the server: {unrouted:#?}");
    assert!(answered.len() > 100, "the probe reached only {} operations", answered.len());
}

#[test]
fn the_contract_documents_exactly_the_search_parameters_each_type_supports() {
    let contract = contract();
    let components = &contract["components"]["parameters"];
    for resource_type in ResourceType::ALL {
        let path = format!("/{resource_type}");
        let parameters = contract["paths"][&path]["get"]["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("the contract has no search on {path}"));
        let documented: BTreeSet<String> = parameters
            .iter()
            .map(|parameter| match parameter["$ref"].as_str() {
                Some(reference) => &components[reference.rsplit('/').next().expect("named reference")],
                None => parameter,
            })
            .filter(|parameter| parameter["in"] == "query")
            .filter_map(|parameter| parameter["name"].as_str())
            .filter(|name| !name.starts_with('_') || name.starts_with("_has:"))
            // `owner:identifier` documents a modifier of `owner`; a chain (`subject:Patient.identifier`,
            // `_has:Task:focus:status`) is a parameter of its own.
            .map(|name| match name.contains('.') || name.starts_with("_has:") {
                true => name.to_owned(),
                false => name.split(':').next().unwrap_or(name).to_owned(),
            })
            .collect();
        let supported: BTreeSet<String> = search_params::params_for(resource_type)
            .map(|param| param.name.to_owned())
            .chain(search_params::chains_for(resource_type).map(|chain| chain.name.to_owned()))
            .collect();
        assert_eq!(documented, supported, "search parameters of {resource_type}");
    }
}
