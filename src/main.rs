//! The `linkbridge` binary: parse the command line, then serve or run an admin command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use linkbridge::admin;
use linkbridge::config::Settings;
use linkbridge::startup::Application;

/// mimalloc instead of the system allocator: a request allocates and frees many small
/// strings and JSON values, and glibc's malloc and free were a tenth of the machine's CPU
/// under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// linkbridge: FHIR R4 exchange for social prescribing referrals between GP practices and
/// Community Link Worker services.
///
/// Settings come from defaults, then an optional TOML file (--config or LINKBRIDGE_CONFIG),
/// then LINKBRIDGE_* environment variables, then the flags below. Every setting is listed at
/// the end of `--help`; docs/configuration.md gives each one's default and meaning.
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
    /// Manage the registered client systems (stored in the database: every replica sees them).
    Clients {
        #[command(subcommand)]
        action: ClientsAction,
    },
    /// Manage the service's access-token signing keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Try linkbridge locally: demo clients with generated keys, and tokens for them.
    Demo {
        #[command(subcommand)]
        action: DemoAction,
    },
}

#[derive(Debug, Subcommand)]
enum ClientsAction {
    /// Register (or replace) a client system.
    Add {
        #[arg(long)]
        client_id: String,
        /// ODS code of the organisation the client acts for.
        #[arg(long)]
        organization: String,
        /// referrer (GP system), performer (CLW tool) or operator (admin tooling).
        #[arg(long)]
        role: String,
        /// The client's public JWK Set as a file...
        #[arg(long)]
        jwks_file: Option<PathBuf>,
        /// ...or as an https URL.
        #[arg(long)]
        jwks_url: Option<String>,
        /// The SMART v2 system scopes it may ever hold.
        #[arg(long, default_value = "system/*.cruds")]
        scopes: String,
    },
    /// List the registered clients.
    List,
    /// Remove a client registration.
    Remove { client_id: String },
}

#[derive(Debug, Subcommand)]
enum KeysAction {
    /// Generate a new signing key; it signs after the next restart, old keys keep verifying.
    Rotate,
}

#[derive(Debug, Subcommand)]
enum DemoAction {
    /// Register demo-gp (referrer) and demo-clw (performer) with generated keys.
    Setup,
    /// Seed the running server with a sandbox: the demo practice and CLW service, four
    /// patients and their referrals at different stages (registers the demo clients if needed).
    Seed {
        /// The server's base URL; by default the one the settings describe (`--listen`,
        /// `public_base_url`).
        #[arg(long)]
        server: Option<String>,
    },
    /// Print an access token for a demo client from the running server's token endpoint.
    Token {
        client_id: String,
        /// The server's base URL; by default the one the settings describe (`--listen`,
        /// `public_base_url`).
        #[arg(long)]
        server: Option<String>,
        #[arg(long, default_value = "system/*.cruds")]
        scope: String,
    },
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
    let cli = match Cli::command().after_long_help(every_setting()).try_get_matches() {
        Ok(matches) => Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()),
        Err(e) => e.exit(),
    };
    let settings = match cli.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("linkbridge: {e}");
            return ExitCode::from(2);
        }
    };
    let command = cli.command.unwrap_or(Command::Serve);
    if !matches!(command, Command::Serve) {
        return report(run_admin(&settings, command).await);
    }
    linkbridge::telemetry::init(settings.log_format);
    match command {
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
        other => report(run_admin(&settings, other).await),
    }
}

async fn run_admin(settings: &Settings, command: Command) -> Result<String, admin::AdminError> {
    match command {
        Command::Serve => Ok(String::new()),
        Command::Clients { action } => match action {
            ClientsAction::Add { client_id, organization, role, jwks_file, jwks_url, scopes } => {
                admin::add_client(
                    settings,
                    admin::NewClient { client_id, organization, role, jwks_file, jwks_url, scopes },
                )
                .await
            }
            ClientsAction::List => admin::list_clients(settings).await,
            ClientsAction::Remove { client_id } => admin::remove_client(settings, &client_id).await,
        },
        Command::Keys { action: KeysAction::Rotate } => admin::rotate_keys(settings),
        Command::Demo { action } => match action {
            DemoAction::Setup => admin::demo_setup(settings).await,
            DemoAction::Seed { server } => linkbridge::sandbox::seed(settings, &server_url(settings, server)?).await,
            DemoAction::Token { client_id, server, scope } => {
                admin::demo_token(settings, &client_id, &server_url(settings, server)?, &scope).await
            }
        },
    }
}

/// Every setting by its name in the TOML file and its environment variable, generated from
/// `Settings::KEYS` so that `--help` cannot leave one out.
fn every_setting() -> String {
    let mut text = String::from("Settings (TOML file key, environment variable):\n");
    for key in Settings::KEYS {
        text.push_str(&format!("  {key:<34} LINKBRIDGE_{}\n", key.to_uppercase()));
    }
    text
}

/// The server a demo command talks to: `--server`, or where the settings say it listens.
fn server_url(settings: &Settings, server: Option<String>) -> Result<String, admin::AdminError> {
    match server {
        Some(server) => Ok(server),
        None => settings.local_server_url().map_err(|e| admin::AdminError::Invalid(e.to_string())),
    }
}

fn report(result: Result<String, admin::AdminError>) -> ExitCode {
    match result {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("linkbridge: {e}");
            ExitCode::FAILURE
        }
    }
}
