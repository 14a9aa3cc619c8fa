//! `GET /metadata`: the CapabilityStatement, generated from the registries the server runs
//! on (resource types and their interactions, search parameters), so it cannot drift.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::conformance::CONFORMANCE_TYPES;
use super::error::ApiError;
use super::negotiate::{render_resource_text, rendering};
use super::state::AppState;
use crate::domain::resource_type::ResourceType;
use crate::domain::search_params::{chains_for, params_for};
use crate::domain::search_query::{includes_of, revincludes_of};
use crate::domain::subscriptions::{backport, Topic};
use crate::profiles::Validator;

/// The SMART extension naming the OAuth endpoints, which SMART clients older than the
/// `.well-known/smart-configuration` document discover the token endpoint by (SMART App Launch
/// 1.0 "Conformance": `oauth-uris`).
const SMART_OAUTH_URIS: &str = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris";

/// The CapabilityStatement as FHIR JSON. `validator` names the profiles each type supports;
/// `token_endpoint` is the token URL exactly as smart-configuration advertises it.
pub fn capability_statement_json(base_url: &str, token_endpoint: &str, validator: &Validator) -> Value {
    let mut resources: Vec<Value> =
        ResourceType::ALL.into_iter().map(|resource_type| rest_resource(resource_type, validator)).collect();
    // The conformance package (http::conformance), read-only.
    for conformance_type in CONFORMANCE_TYPES {
        resources.push(json!({
            "type": conformance_type,
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": [{"name": "url", "type": "uri", "definition": format!("http://hl7.org/fhir/SearchParameter/{conformance_type}-url")}],
        }));
    }
    // The audit trail, for the operator role (http::audit_events).
    resources.push(json!({
        "type": "AuditEvent",
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "searchParam": [{"name": "entity", "type": "reference", "definition": "http://hl7.org/fhir/SearchParameter/AuditEvent-entity"}],
    }));
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "publisher": "linkbridge",
        "kind": "instance",
        "software": {"name": "linkbridge", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "linkbridge social prescribing referral exchange", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/fhir+xml"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "security": {
                "extension": [{
                    "url": SMART_OAUTH_URIS,
                    "extension": [{"url": "token", "valueUri": token_endpoint}],
                }],
                "cors": false,
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}]}],
                "description": "SMART Backend Services (client_credentials with private_key_jwt); see /.well-known/smart-configuration",
            },
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
        }],
    })
}

/// What the server does with one resource type: interactions, search parameters and chains,
/// includes, the profiles `validator` holds for it.
fn rest_resource(resource_type: ResourceType, validator: &Validator) -> Value {
    let interactions: Vec<Value> = resource_type.interactions().iter().map(|i| json!({"code": i.code()})).collect();
    let mut search_params = vec![
        json!({"name": "_id", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id", "type": "token"}),
        json!({"name": "_lastUpdated", "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated", "type": "date"}),
    ];
    search_params.extend(
        params_for(resource_type)
            .map(|p| json!({"name": p.name, "definition": p.definition_url(), "type": p.kind.code()})),
    );
    // R4 has no element for chains: each chain linkbridge answers is listed under the
    // name a request uses, so that a client can tell them from the unknown ones it refuses.
    search_params.extend(chains_for(resource_type).map(|chain| {
        let documentation = if chain.reverse {
            format!(
                "Reverse chain: {} resources pointed at by a {} ({}) that matches {} and that you may read",
                resource_type,
                chain.other_end(),
                chain.reference.name,
                chain.param.name
            )
        } else {
            format!(
                "Chain: {} resources whose {} is a {} that matches {} and that you may read",
                resource_type,
                chain.reference.name,
                chain.other_end(),
                chain.param.name
            )
        };
        json!({"name": chain.name, "type": chain.param.kind.code(), "documentation": documentation})
    }));
    let mut resource = json!({
        "type": resource_type.as_str(),
        "interaction": interactions,
        "versioning": "versioned-update",
        "readHistory": true,
        "updateCreate": false,
        "conditionalCreate": true,
        "conditionalUpdate": false,
        "conditionalDelete": "not-supported",

        "searchParam": search_params,
        "operation": [{"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}],
    });
    // FHIR JSON has no empty arrays: only the lists that have members are written.
    let includes: Vec<String> = includes_of(resource_type).iter().map(|i| i.code()).collect();
    if !includes.is_empty() {
        resource["searchInclude"] = json!(includes);
    }
    let revincludes: Vec<String> = revincludes_of(resource_type).iter().map(|i| i.code()).collect();
    if !revincludes.is_empty() {
        resource["searchRevInclude"] = json!(revincludes);
    }
    let profiles: Vec<&str> =
        validator.profiles().iter().filter(|p| p.resource_type() == resource_type.as_str()).map(|p| p.url()).collect();
    if !profiles.is_empty() {
        resource["supportedProfile"] = json!(profiles);
    }
    if resource_type == ResourceType::Subscription {
        describe_subscriptions(&mut resource);
    }
    resource
}

/// The topics (Backport IG: one `subscriptiontopic-canonical` extension each) and the
/// subscription operations.
fn describe_subscriptions(resource: &mut Value) {
    resource["extension"] = Topic::ALL
        .iter()
        .map(|topic| json!({"url": backport::TOPIC_CANONICAL, "valueCanonical": topic.url()}))
        .collect();
    resource["supportedProfile"] = json!([backport::SUBSCRIPTION_PROFILE]);
    if let Some(operations) = resource["operation"].as_array_mut() {
        operations.extend([
            json!({"name": "status", "definition": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status"}),
            json!({"name": "events", "definition": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-events"}),
            json!({"name": "resend", "definition": "https://linkbridge.scot/fhir/OperationDefinition/subscription-resend",
                   "documentation": "Delivers the subscription's dead notifications again and makes it active"}),
        ]);
    }
}

pub async fn capability_statement(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let render = rendering(&req)?;
    let (text, content_type) = render_resource_text(
        render,
        &capability_statement_json(
            &state.base_url,
            state.auth.token_endpoint(),
            state.resources.profiles().validator(),
        )
        .to_string(),
    )?;
    Ok(HttpResponse::Ok().content_type(content_type).body(text))
}
