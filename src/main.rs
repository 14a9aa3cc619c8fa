//! The `linkbridge` binary: parse the command line, then serve or run an admin command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use linkbridge::config::Settings;
use linkbridge::startup::Application;

/// linkbridge: FHIR R4 exchange for social prescribing referrals between GP practices and
/// Community Link Worker services.
///
/// Settings come from defaults, then an optional TOML file (--config or LINKBRIDGE_CONFIG),
/// then LINKBRIDGE_* environment variables (e.g. LINKBRIDGE_DATABASE_URL,
/// LINKBRIDGE_LISTEN, LINKBRIDGE_DATA_DIR, LINKBRIDGE_PUBLIC_BASE_URL,
/// LINKBRIDGE_MAX_BODY_BYTES, LINKBRIDGE_DEFAULT_PAGE_SIZE, LINKBRIDGE_MAX_PAGE_SIZE,
/// LINKBRIDGE_DB_MAX_CONNECTIONS, LINKBRIDGE_LOG_FORMAT), then the flags below.
/// LINKBRIDGE_LOG sets the log filter (e.g. "info", "debug").
#[derive(Debug, Parser)]
#[command(name = "linkbridge", version, about, long_about)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "LINKBRIDGE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long, global = true)]
    listen: Option<String>,
    /// Data directory for the embedded SQLite database and signing keys.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// PostgreSQL URL (postgres://...); selects PostgreSQL instead of the embedded SQLite.
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Public base URL of the FHIR endpoint as clients reach it.
    #[arg(long, global = true)]
    public_base_url: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the FHIR server (the default).
    Serve,
}

impl Cli {
    fn settings(&self) -> Result<Settings, linkbridge::config::ConfigError> {
        let mut settings = Settings::load(self.config.as_deref())?;
        if let Some(listen) = &self.listen {
            settings.listen.clone_from(listen);
        }
        if let Some(dir) = &self.data_dir {
            settings.data_dir.clone_from(dir);
        }
        if let Some(url) = &self.database_url {
            settings.database_url = Some(url.clone().into());
        }
        if let Some(url) = &self.public_base_url {
            settings.public_base_url = Some(url.clone());
        }
        Ok(settings)
    }
}

#[actix_web::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match cli.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("linkbridge: {e}");
            return ExitCode::from(2);
        }
    };
    linkbridge::telemetry::init(settings.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => match Application::build(&settings).await {
            Ok(app) => match app.run_until_stopped().await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "server failed");
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "linkbridge could not start");
                ExitCode::FAILURE
            }
        },
    }
}
