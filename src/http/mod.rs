//! The HTTP layer: routes, content negotiation, the caller's identity, and rendering. Handlers
//! extract, authorise, call one service function and render; rules live in `service`.

pub mod audit;
pub mod audit_events;
pub mod auth;
pub mod bundle;
pub mod bundles;
pub mod conformance;
pub mod docs;
pub mod error;
pub mod health;
pub mod limits;
pub mod logging;
pub mod metadata;
pub mod metrics;
pub mod negotiate;
pub mod resources;
pub mod search;
pub mod state;
pub mod subscriptions;
pub mod validate;

use actix_web::http::Method;
use actix_web::{web, HttpResponse, Route};

pub use error::ApiError;
pub use state::AppState;

/// One routed path: its template (actix syntax) and the methods it answers, each with the
/// route that serves it. [`configure`] registers exactly this table, and the OpenAPI drift test
/// (`tests/api/openapi.rs`) reads it, so the contract is checked against what is really routed.
pub struct Endpoint {
    pub path: &'static str,
    pub methods: &'static [(Method, MakeRoute)],
}

/// Builds the route of one method (a handler, before its method guard is added).
pub type MakeRoute = fn() -> Route;

/// Every route. Actix takes the first resource whose path matches, so the order matters: the
/// `{type}` operations (`_history`, `_search`, `$validate`) come before the fixed-type reads
/// (`/AuditEvent/{id}`, the conformance types), so that `/AuditEvent/_search` is refused as an
/// unsupported type rather than read as a resource with id `_search`; the generic
/// `/{type}/{id}` and `/{type}` come last.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint { path: "/healthz", methods: &[(Method::GET, || web::to(health::healthz))] },
    Endpoint { path: "/readyz", methods: &[(Method::GET, || web::to(health::readyz))] },
    Endpoint { path: "/metrics", methods: &[(Method::GET, || web::to(metrics::scrape))] },
    Endpoint { path: "/auth/token", methods: &[(Method::POST, || web::to(auth::token))] },
    Endpoint {
        path: "/.well-known/smart-configuration",
        methods: &[(Method::GET, || web::to(auth::smart_configuration))],
    },
    Endpoint { path: "/.well-known/jwks.json", methods: &[(Method::GET, || web::to(auth::jwks))] },
    Endpoint { path: "/docs", methods: &[(Method::GET, || web::to(docs::page))] },
    Endpoint { path: "/docs/{asset}", methods: &[(Method::GET, || web::to(docs::asset))] },
    Endpoint { path: "/openapi.yaml", methods: &[(Method::GET, || web::to(docs::openapi))] },
    Endpoint { path: "/metadata", methods: &[(Method::GET, || web::to(metadata::capability_statement))] },
    Endpoint { path: "/", methods: &[(Method::POST, || web::to(bundles::process))] },
    Endpoint { path: "/$outbox-status", methods: &[(Method::GET, || web::to(subscriptions::outbox_status))] },
    Endpoint { path: "/{type}/_history", methods: &[(Method::GET, || web::to(resources::history_type))] },
    Endpoint { path: "/{type}/{id}/_history", methods: &[(Method::GET, || web::to(resources::history_instance))] },
    Endpoint { path: "/{type}/{id}/_history/{vid}", methods: &[(Method::GET, || web::to(resources::vread))] },
    Endpoint { path: "/{type}/$validate", methods: &[(Method::POST, || web::to(validate::validate))] },
    Endpoint {
        path: "/{type}/_search",
        methods: &[(Method::POST, || web::to(search::search_post)), (Method::GET, || web::to(search::search_get))],
    },
    Endpoint { path: "/AuditEvent", methods: &[(Method::GET, || web::to(audit_events::search))] },
    Endpoint { path: "/AuditEvent/{id}", methods: &[(Method::GET, || web::to(audit_events::read))] },
    // The conformance resources of profiles/, read-only, served from memory.
    Endpoint {
        path: "/{type:StructureDefinition|ValueSet|CodeSystem}/{id}",
        methods: &[(Method::GET, || web::to(conformance::read))],
    },
    Endpoint {
        path: "/{type:StructureDefinition|ValueSet|CodeSystem}",
        methods: &[(Method::GET, || web::to(conformance::search))],
    },
    Endpoint { path: "/Subscription/{id}/$status", methods: &[(Method::GET, || web::to(subscriptions::status))] },
    Endpoint { path: "/Subscription/{id}/$events", methods: &[(Method::GET, || web::to(subscriptions::events))] },
    Endpoint { path: "/Subscription/{id}/$resend", methods: &[(Method::POST, || web::to(subscriptions::resend))] },
    Endpoint {
        path: "/{type}/{id}",
        methods: &[
            (Method::GET, || web::to(resources::read)),
            (Method::PUT, || web::to(resources::update)),
            (Method::PATCH, || web::to(resources::patch)),
            (Method::DELETE, || web::to(resources::delete)),
        ],
    },
    Endpoint {
        path: "/{type}",
        methods: &[(Method::GET, || web::to(search::search_get)), (Method::POST, || web::to(resources::create))],
    },
];

/// Registers every route of [`ENDPOINTS`]; any other method on a routed path is 405 and any
/// other path 404, both as OperationOutcomes. The CapabilityStatement is generated from the
/// same type registry (`ResourceType::interactions`) that the `{type}` routes serve.
pub fn configure(cfg: &mut web::ServiceConfig) {
    for endpoint in ENDPOINTS {
        let mut resource = web::resource(endpoint.path);
        for (method, route) in endpoint.methods {
            resource = resource.route(route().method(method.clone()));
        }
        let methods = endpoint.methods;
        let refuse = move |req: actix_web::HttpRequest| async move { method_not_allowed(req, methods) };
        cfg.service(resource.default_service(web::to(refuse)));
    }
    cfg.default_service(web::to(not_found));
}

/// The headers every response carries, errors and refusals included: `Cache-Control: no-store`,
/// since nearly every answer holds patient data or a token and none may be kept by a browser,
/// a proxy or a client library's cache (the few that hold none, the CapabilityStatement and the
/// docs, are cheap to serve again and one rule cannot be forgotten on a new route); and
/// `X-Content-Type-Options: nosniff`, so that a resource served as JSON or XML is never taken
/// for a script or a page by a browser guessing its type.
pub fn security_headers() -> actix_web::middleware::DefaultHeaders {
    actix_web::middleware::DefaultHeaders::new()
        .add((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .add((actix_web::http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
}

fn method_not_allowed(req: actix_web::HttpRequest, methods: &[(Method, MakeRoute)]) -> Result<HttpResponse, ApiError> {
    let allow = methods.iter().map(|(method, _)| method.as_str()).collect::<Vec<_>>().join(", ");
    let message = format!("{} is not allowed on {} (allowed: {allow})", req.method(), req.path());
    Err(ApiError::MethodNotAllowed { message, allow })
}

async fn not_found(req: actix_web::HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::UnknownRoute(req.path().chars().take(200).collect()))
}
