//! The one wiring function, used by `main` and by every test: open the store, build the
//! services, bind the listener (port 0 in tests) and serve until stopped.

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};

use crate::config::{ConfigError, Settings};
use crate::http::{self, AppState};
use crate::service::resources::ResourceService;
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
}

/// A built, bound, not yet running service.
pub struct Application {
    port: u16,
    base_url: String,
    server: Server,
    store: Store,
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
        let state = AppState {
            resources: ResourceService::new(store.clone()),
            base_url: base_url.clone(),
            max_body_bytes: settings.max_body_bytes,
            default_page_size: settings.default_page_size,
            max_page_size: settings.max_page_size,
        };
        let state = web::Data::new(state);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::QueryConfig::default().error_handler(http::error::query_error))
                .app_data(web::PathConfig::default().error_handler(http::error::path_error))
                .wrap(actix_web::middleware::from_fn(http::logging::log_request))
                .configure(http::configure)
        })
        .listen(listener)?
        // Graceful shutdown on SIGTERM / ctrl-c: stop accepting, finish in-flight requests.
        .shutdown_timeout(30)
        .run();
        tracing::info!(address = %local, database = ?store.kind(), "linkbridge listening");
        Ok(Application { port: local.port(), base_url, server, store })
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
        self.store.close().await;
        tracing::info!("linkbridge stopped");
        result
    }
}
