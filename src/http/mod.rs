//! The HTTP layer: routes, content negotiation, the caller's identity, and rendering. Handlers
//! extract, authorise, call one service function and render; rules live in `service`.

pub mod audit;
pub mod audit_events;
pub mod auth;
pub mod bundle;
pub mod bundles;
pub mod conformance;
pub mod error;
pub mod health;
pub mod logging;
pub mod metadata;
pub mod negotiate;
pub mod resources;
pub mod search;
pub mod state;
pub mod subscriptions;
pub mod validate;

use actix_web::{web, HttpResponse};

pub use error::ApiError;
pub use state::AppState;

/// Registers every route. The CapabilityStatement is generated from the same type registry
/// (`ResourceType::interactions`) that these routes serve.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/auth/token", web::post().to(auth::token))
        .route("/.well-known/smart-configuration", web::get().to(auth::smart_configuration))
        .route("/.well-known/jwks.json", web::get().to(auth::jwks))
        .service(
            web::resource("/metadata")
                .route(web::get().to(metadata::capability_statement))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/").route(web::post().to(bundles::process)).default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/AuditEvent")
                .route(web::get().to(audit_events::search))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/AuditEvent/{id}")
                .route(web::get().to(audit_events::read))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/{type}/_history")
                .route(web::get().to(resources::history_type))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/{type}/{id}/_history")
                .route(web::get().to(resources::history_instance))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/{type}/{id}/_history/{vid}")
                .route(web::get().to(resources::vread))
                .default_service(web::to(method_not_allowed)),
        )
        // The conformance package (read-only), before the served types' patterns.
        .service(
            web::resource("/{type:StructureDefinition|ValueSet|CodeSystem}/{id}")
                .route(web::get().to(conformance::read))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/{type:StructureDefinition|ValueSet|CodeSystem}")
                .route(web::get().to(conformance::search))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/$outbox-status")
                .route(web::get().to(subscriptions::outbox_status))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/Subscription/{id}/$status")
                .route(web::get().to(subscriptions::status))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/Subscription/{id}/$events")
                .route(web::get().to(subscriptions::events))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/Subscription/{id}/$resend")
                .route(web::post().to(subscriptions::resend))
                .default_service(web::to(method_not_allowed)),
        )
        // Before `/{type}/{id}`, which would otherwise take `$validate` for an id.
        .service(
            web::resource("/{type}/$validate")
                .route(web::post().to(validate::validate))
                .default_service(web::to(method_not_allowed)),
        )
        // Before `/{type}/{id}`, which would otherwise take `_search` for an id.
        .service(
            web::resource("/{type}/_search")
                .route(web::post().to(search::search_post))
                .route(web::get().to(search::search_get))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/{type}/{id}")
                .route(web::get().to(resources::read))
                .route(web::put().to(resources::update))
                .route(web::patch().to(resources::patch))
                .route(web::delete().to(resources::delete))
                .default_service(web::to(method_not_allowed)),
        )
        .service(
            web::resource("/{type}")
                .route(web::get().to(search::search_get))
                .route(web::post().to(resources::create))
                .default_service(web::to(method_not_allowed)),
        )
        .default_service(web::to(not_found));
}

async fn method_not_allowed(req: actix_web::HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(format!("{} is not allowed on {}", req.method(), req.path())))
}

async fn not_found(req: actix_web::HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::UnknownRoute(req.path().chars().take(200).collect()))
}
