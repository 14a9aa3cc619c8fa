//! The one wiring function, used by `main` and by every test: open the store, build the
//! services, bind the listener (port 0 in tests) and serve until stopped.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};

use crate::auth::{AccessTokenPolicy, ExternalIssuerPolicy, HttpJwksSource, JwksFetchConfig, SigningKeys};
use crate::config::{ConfigError, Settings};
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::profiles::{PackageError, ProfileCheck};
use crate::service::audit::AuditService;
use crate::service::auth::{AuthService, ExternalIssuer};
use crate::service::delivery::DeliveryWorker;
use crate::service::health::HealthService;
use crate::service::resources::ResourceService;
use crate::service::search::SearchService;
use crate::store::{Store, StoreError};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
    #[error("authentication setup failed: {0}")]
    Auth(String),
    #[error(transparent)]
    Profiles(#[from] PackageError),
    #[error("webhook delivery setup failed: {0}")]
    Delivery(String),
}

/// A built, bound, not yet running service.
pub struct Application {
    port: u16,
    base_url: String,
    server: Server,
    store: Store,
    /// This replica's webhook delivery worker, stopped after the HTTP server.
    delivery: tokio::task::JoinHandle<()>,
    stop_delivery: tokio::sync::watch::Sender<bool>,
}

impl Application {
    pub async fn build(settings: &Settings) -> Result<Application, StartupError> {
        let store = Store::connect(&settings.database()?, &settings.pool()).await?;
        let listener = TcpListener::bind(settings.listen_address()?)?;
        let local = listener.local_addr()?;
        let base_url = settings
            .public_base_url
            .clone()
            .map(|url| url.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("http://{local}"));
        let auth = build_auth(settings, &store, &base_url)?;
        let profiles =
            ProfileCheck::load(settings.profiles_dir.as_ref(), settings.profile_validation, &settings.chi_systems)?;
        let resources = ResourceService::new(store.clone(), profiles)
            .with_single_open_referral(settings.single_open_referral)
            .with_endpoint_policy(settings.endpoint_policy())
            .with_patch_limits(crate::domain::patch::PatchLimits {
                max_operations: crate::domain::patch::PatchLimits::DEFAULT_MAX_OPERATIONS,
                max_result_bytes: settings.max_body_bytes,
            });
        let metrics = Metrics::new();
        store.observe_commits(std::sync::Arc::new(metrics.clone()));
        let delivery = DeliveryWorker::new(resources.clone(), settings.delivery(&base_url)?, metrics.clone())
            .map_err(|e| StartupError::Delivery(e.to_string()))?;
        let state = AppState {
            resources: resources.clone(),
            search: SearchService::new(store.clone()),
            audit: AuditService::new(store.clone()),
            health: HealthService::new(store.clone()),
            auth,
            base_url: base_url.clone(),
            max_body_bytes: settings.max_body_bytes,
            default_page_size: settings.default_page_size,
            max_page_size: settings.max_page_size,
            metrics,
        };
        let state = web::Data::new(state);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::QueryConfig::default().error_handler(http::error::query_error))
                .app_data(web::PathConfig::default().error_handler(http::error::path_error))
                // Outermost last: the security headers, metrics, logging, the bound on headers
                // (before any work), then audit (so refusals are audited), then the token gate.
                .wrap(actix_web::middleware::from_fn(http::auth::require_token))
                .wrap(actix_web::middleware::from_fn(http::audit::audit_access))
                .wrap(actix_web::middleware::from_fn(http::limits::bound_headers))
                .wrap(actix_web::middleware::from_fn(http::logging::log_request))
                .wrap(actix_web::middleware::from_fn(http::metrics::observe_request))
                .wrap(http::security_headers())
                .configure(http::configure)
        })
        .workers(settings.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from)))
        .listen(listener)?
        // Graceful shutdown on SIGTERM / ctrl-c: stop accepting, finish in-flight requests.
        .shutdown_timeout(30)
        .run();
        let (stop_delivery, stop) = tokio::sync::watch::channel(false);
        let delivery = tokio::spawn(delivery.run(stop));
        tracing::info!(address = %local, database = ?store.kind(), "linkbridge listening");
        Ok(Application { port: local.port(), base_url, server, store, delivery, stop_delivery })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Serves until the server is stopped (signal), then flushes and closes the store.
    pub async fn run_until_stopped(self) -> Result<(), std::io::Error> {
        let result = self.server.await;
        // Deliveries in flight finish (or their leases lapse for another replica to take).
        let _ = self.stop_delivery.send(true);
        let _ = self.delivery.await;
        self.store.close().await;
        tracing::info!("linkbridge stopped");
        result
    }
}

/// The service's signing keys (created in the data directory on first start), the access
/// token policy and the JWKS fetcher for clients registered by URL.
fn build_auth(settings: &Settings, store: &Store, base_url: &str) -> Result<AuthService, StartupError> {
    let keys =
        SigningKeys::load_or_create(&settings.data_dir, Duration::from_secs(settings.signing_key_activation_secs))
            .map_err(|e| StartupError::Auth(format!("signing keys in {}: {e}", settings.data_dir.display())))?;
    let policy = AccessTokenPolicy::new(base_url, base_url)
        .and_then(|p| p.with_lifetime_secs(settings.access_token_lifetime_secs))
        .map_err(|e| StartupError::Auth(e.to_string()))?;
    let jwks_source = HttpJwksSource::new(JwksFetchConfig {
        allow_insecure_loopback_for_tests: settings.allow_insecure_loopback_jwks,
        ..JwksFetchConfig::default()
    })
    .map_err(|e| StartupError::Auth(e.to_string()))?;
    let service = AuthService::new(
        store.clone(),
        std::sync::Arc::new(keys),
        policy,
        format!("{base_url}/auth/token"),
        std::sync::Arc::new(jwks_source),
    )
    .with_failure_limit(settings.token_failure_limit)
    .with_token_recheck(Duration::from_secs(settings.token_recheck_secs));
    let Some(external) = &settings.external_issuer else {
        return Ok(service);
    };
    let policy =
        ExternalIssuerPolicy::new(&external.issuer, base_url, &external.organization_claim, &external.role_claim)
            .map_err(|e| StartupError::Auth(format!("external issuer: {e}")))?;
    Ok(service.with_external_issuer(ExternalIssuer { policy, jwks_url: external.jwks_url.clone() }))
}
