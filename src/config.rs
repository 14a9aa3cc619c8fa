//! Settings, in layers: built-in defaults, then an optional TOML file, then `LINKBRIDGE_*`
//! environment variables, then command-line flags. Each layer overrides the one before.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::domain::subscriptions::EndpointPolicy;
use crate::domain::webhook::RetrySchedule;
use crate::profiles::ValidationMode;
use crate::service::delivery::DeliverySettings;
use crate::store::{DatabaseUrl, PoolSettings};

/// Every setting of the server. See docs/configuration.md for each one.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address and port to listen on.
    pub listen: String,
    /// Directory for the embedded SQLite database and the service's signing keys.
    pub data_dir: PathBuf,
    /// A PostgreSQL URL selects PostgreSQL; unset means SQLite in `data_dir`.
    #[serde(serialize_with = "serialize_redacted")]
    pub database_url: Option<SecretString>,
    /// The public base URL of the FHIR endpoint (as clients reach it, e.g. behind a load
    /// balancer). Unset: `http://<listen address>`.
    pub public_base_url: Option<String>,
    /// Largest accepted request body, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// `_count` when a search or history request names none.
    pub default_page_size: u32,
    /// The largest `_count` honoured; larger requests are capped to it.
    pub max_page_size: u32,
    /// The settle window W of `_lastUpdated` searches, in milliseconds: writes commit within
    /// W/2 of their `meta.lastUpdated` or are refused (503), and such searches return only
    /// changes at least W old, so that a poller never misses a late commit.
    pub settle_window_ms: u64,
    /// Database connection pool size per process (on PostgreSQL the group commit's writer
    /// has one connection more, of its own).
    pub db_max_connections: u32,
    /// `text` for people, `json` for log collectors.
    pub log_format: LogFormat,
    /// Lifetime of issued access tokens, in seconds (at most 300).
    pub access_token_lifetime_secs: u64,
    /// A signing key file younger than this verifies and is published but does not sign yet, so
    /// that replicas restarted one after another all trust a new key before any signs with it.
    pub signing_key_activation_secs: u64,
    /// Lets client JWKS URLs be plain http on 127.0.0.1 / [::1]. For tests only.
    pub allow_insecure_loopback_jwks: bool,
    /// HTTP worker threads; unset means one per CPU core.
    pub workers: Option<usize>,
    /// An operator's own OAuth server whose access tokens are accepted beside linkbridge's.
    pub external_issuer: Option<ExternalIssuerSettings>,
    /// Refuse a second open referral for one patient to one CLW service (BaRS rule).
    pub single_open_referral: bool,
    /// The identifier systems recognised as CHI numbers (no single URI is agreed nationally):
    /// a list, or one string of them separated by commas (handy in the environment).
    #[serde(deserialize_with = "list_or_comma_separated")]
    pub chi_systems: Vec<String>,
    /// What writes do with a resource that breaks its profiles: `enforce` (422), `warn`
    /// (accept and log) or `off`.
    pub profile_validation: ValidationMode,
    /// A directory holding a profile package to use instead of the compiled-in one.
    pub profiles_dir: Option<PathBuf>,
    /// Lets subscriptions name http endpoints and private, loopback or link-local addresses.
    /// For tests and closed networks only: it opens the server to SSRF.
    pub allow_private_webhook_endpoints: bool,
    /// Delays between webhook delivery attempts (`10s,1m,…,24h`); after the last the event is
    /// kept as dead and its subscription goes to `error`.
    pub delivery_retry_schedule: String,
    /// How often each replica looks for due notifications, in milliseconds (its own commits
    /// wake it at once).
    pub delivery_poll_interval_ms: u64,
    /// How long a replica's claim on a notification lasts, in seconds; a replica that dies
    /// holding one leaves it to another after this.
    pub delivery_lease_secs: u64,
    /// Timeout of one webhook request, in seconds.
    pub delivery_timeout_secs: u64,
    /// The longest one database statement may run, in milliseconds: PostgreSQL cancels it
    /// (`statement_timeout`); on SQLite a read is abandoned and its connection discarded
    /// (see `store::readers`). The request then answers 503. 0 turns the limit off.
    pub statement_timeout_ms: u64,
    /// Failed token requests one client_id may make in 60 s (per process) before further
    /// failures answer 429 with Retry-After until the minute ends. 0 turns the throttle off.
    pub token_failure_limit: u32,
    /// How long, in seconds, a replica trusts a client's registration, once read, for the
    /// client's access tokens before reading it again (at most one read per client per
    /// interval): a removed client's tokens are refused on every replica this long after the
    /// removal at the latest. 0 reads it on every request.
    pub token_recheck_secs: u64,
}

/// The operator's OAuth server: its tokens name a registered client (`client_id` claim), and
/// the organisation and role claims must match that client's registration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExternalIssuerSettings {
    /// The `iss` of its tokens.
    pub issuer: String,
    /// Where its signing keys are published (https).
    pub jwks_url: String,
    /// The claim holding the ODS code.
    #[serde(default = "default_organization_claim")]
    pub organization_claim: String,
    /// The claim holding the role (referrer, performer, operator).
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
}

fn default_organization_claim() -> String {
    "organization".to_owned()
}

fn default_role_claim() -> String {
    "role".to_owned()
}

/// A list of strings given as a list (TOML, JSON) or as one comma-separated string.
fn list_or_comma_separated<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        String(String),
    }
    let items = match ListOrString::deserialize(d)? {
        ListOrString::List(items) => items,
        ListOrString::String(joined) => joined.split(',').map(str::to_owned).collect(),
    };
    Ok(items.into_iter().map(|item| item.trim().to_owned()).filter(|item| !item.is_empty()).collect())
}

fn serialize_redacted<S: serde::Serializer>(value: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(secret) => s.serialize_some(secret.expose_secret()),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: "127.0.0.1:8080".to_owned(),
            data_dir: PathBuf::from("linkbridge-data"),
            database_url: None,
            public_base_url: None,
            max_body_bytes: 4 * 1024 * 1024,
            default_page_size: 50,
            max_page_size: 500,
            settle_window_ms: 5_000,
            db_max_connections: 16,
            log_format: LogFormat::Text,
            access_token_lifetime_secs: 300,
            signing_key_activation_secs: 0,
            allow_insecure_loopback_jwks: false,
            workers: None,
            external_issuer: None,
            single_open_referral: true,
            chi_systems: crate::domain::identifiers::KNOWN_CHI_SYSTEMS.map(str::to_owned).to_vec(),
            profile_validation: ValidationMode::Enforce,
            profiles_dir: None,
            allow_private_webhook_endpoints: false,
            delivery_retry_schedule: crate::domain::webhook::RetrySchedule::DEFAULT.to_owned(),
            delivery_poll_interval_ms: 1_000,
            delivery_lease_secs: 60,
            delivery_timeout_secs: 10,
            statement_timeout_ms: 10_000,
            token_failure_limit: crate::service::auth::DEFAULT_FAILURE_LIMIT,
            token_recheck_secs: crate::service::auth::DEFAULT_RECHECK.as_secs(),
        }
    }
}

/// Settings that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Every setting's name, as in the file and (upper-cased, prefixed) in the environment.
    pub const KEYS: &'static [&'static str] = &[
        "listen",
        "data_dir",
        "database_url",
        "public_base_url",
        "max_body_bytes",
        "default_page_size",
        "max_page_size",
        "db_max_connections",
        "log_format",
        "access_token_lifetime_secs",
        "signing_key_activation_secs",
        "allow_insecure_loopback_jwks",
        "workers",
        "external_issuer",
        "settle_window_ms",
        "single_open_referral",
        "chi_systems",
        "profile_validation",
        "profiles_dir",
        "allow_private_webhook_endpoints",
        "delivery_retry_schedule",
        "delivery_poll_interval_ms",
        "delivery_lease_secs",
        "delivery_timeout_secs",
        "statement_timeout_ms",
        "token_failure_limit",
        "token_recheck_secs",
    ];

    /// Defaults, then the file (if given and present), then `LINKBRIDGE_*` variables.
    pub fn load(config_file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = config_file {
            if !path.exists() {
                return Err(ConfigError::Invalid(format!("config file {} does not exist", path.display())));
            }
            figment = figment.merge(Toml::file(path));
        }
        // Only the settings' own names: an orchestrator sets other LINKBRIDGE_* variables
        // (Kubernetes: LINKBRIDGE_PORT, LINKBRIDGE_SERVICE_HOST for a Service of that name).
        figment = figment.merge(Env::prefixed("LINKBRIDGE_").only(Self::KEYS));
        figment.extract().map_err(|e| ConfigError::Invalid(e.to_string()))
    }

    pub fn listen_address(&self) -> Result<SocketAddr, ConfigError> {
        self.listen
            .parse()
            .map_err(|_| ConfigError::Invalid(format!("listen address '{}' is not host:port", self.listen)))
    }

    /// Where a command on this machine reaches the server these settings describe: the public
    /// base URL when one is set, else the `listen` address, a wildcard address (`0.0.0.0`, `[::]`)
    /// replaced by the loopback address it also listens on.
    pub fn local_server_url(&self) -> Result<String, ConfigError> {
        if let Some(url) = &self.public_base_url {
            return Ok(url.trim_end_matches('/').to_owned());
        }
        let mut address = self.listen_address()?;
        if address.ip().is_unspecified() {
            let loopback: std::net::IpAddr = match address {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            };
            address.set_ip(loopback);
        }
        Ok(format!("http://{address}"))
    }

    pub fn database(&self) -> Result<DatabaseUrl, ConfigError> {
        match &self.database_url {
            Some(url) => DatabaseUrl::parse(url.expose_secret()).map_err(|e| ConfigError::Invalid(e.to_string())),
            None => Ok(DatabaseUrl::sqlite_in(&self.data_dir)),
        }
    }

    /// The webhook delivery settings, checked.
    pub fn delivery(&self, base_url: &str) -> Result<DeliverySettings, ConfigError> {
        let schedule = RetrySchedule::parse(&self.delivery_retry_schedule)
            .map_err(|e| ConfigError::Invalid(format!("delivery_retry_schedule: {e}")))?;
        if self.delivery_lease_secs <= self.delivery_timeout_secs {
            return Err(ConfigError::Invalid(
                "delivery_lease_secs must be longer than delivery_timeout_secs, or a slow delivery could be claimed twice"
                    .to_owned(),
            ));
        }
        Ok(DeliverySettings {
            base_url: base_url.to_owned(),
            schedule,
            policy: self.endpoint_policy(),
            poll_interval: std::time::Duration::from_millis(self.delivery_poll_interval_ms.max(10)),
            lease: std::time::Duration::from_secs(self.delivery_lease_secs),
            timeout: std::time::Duration::from_secs(self.delivery_timeout_secs.max(1)),
        })
    }

    pub fn endpoint_policy(&self) -> EndpointPolicy {
        EndpointPolicy { allow_private: self.allow_private_webhook_endpoints }
    }

    pub fn pool(&self) -> PoolSettings {
        PoolSettings {
            max_connections: self.db_max_connections,
            settle_window: std::time::Duration::from_millis(self.settle_window_ms),
            statement_timeout: (self.statement_timeout_ms > 0)
                .then(|| std::time::Duration::from_millis(self.statement_timeout_ms)),
            ..PoolSettings::default()
        }
    }
}

#[cfg(test)]
#[expect(clippy::result_large_err, reason = "figment::Jail's closures must return figment's own (large) error type")]
mod tests {
    use super::*;

    #[test]
    fn environment_variables_override_the_file_which_overrides_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("lb.toml", "listen = \"127.0.0.1:9000\"\nmax_page_size = 100\n")?;
            jail.set_env("LINKBRIDGE_MAX_PAGE_SIZE", "200");
            let settings = Settings::load(Some(Path::new("lb.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(settings.listen, "127.0.0.1:9000", "file beats default");
            assert_eq!(settings.max_page_size, 200, "environment beats file");
            assert_eq!(settings.default_page_size, 50, "default kept");
            Ok(())
        });
    }

    #[test]
    fn an_unknown_setting_is_an_error_not_a_silent_typo() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("lb.toml", "listne = \"127.0.0.1:9000\"\n")?;
            assert!(Settings::load(Some(Path::new("lb.toml"))).is_err());
            Ok(())
        });
    }

    #[test]
    fn foreign_linkbridge_variables_in_the_environment_are_ignored() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("LINKBRIDGE_PORT", "tcp://10.0.0.1:8080");
            jail.set_env("LINKBRIDGE_SERVICE_HOST", "10.0.0.1");
            jail.set_env("LINKBRIDGE_LISTEN", "0.0.0.0:9999");
            let settings = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(settings.listen, "0.0.0.0:9999");
            Ok(())
        });
    }

    #[test]
    fn every_setting_is_named_in_the_key_list() {
        let value = serde_json::to_value(Settings::default()).expect("settings serialise");
        let mut fields: Vec<&str> = value.as_object().expect("object").keys().map(String::as_str).collect();
        let mut keys = Settings::KEYS.to_vec();
        fields.sort_unstable();
        keys.sort_unstable();
        assert_eq!(fields, keys, "Settings::KEYS must list every field, or its environment variable is ignored");
    }

    #[test]
    fn commands_reach_the_server_where_the_settings_say_it_listens() {
        let on = |listen: &str, public: Option<&str>| Settings {
            listen: listen.to_owned(),
            public_base_url: public.map(str::to_owned),
            ..Settings::default()
        };
        let cases = [
            ("the default", on("127.0.0.1:8080", None), "http://127.0.0.1:8080"),
            ("another port", on("127.0.0.1:9191", None), "http://127.0.0.1:9191"),
            ("every IPv4 interface, reached on loopback", on("0.0.0.0:9000", None), "http://127.0.0.1:9000"),
            ("every IPv6 interface, reached on loopback", on("[::]:9000", None), "http://[::1]:9000"),
            ("the public base URL wins", on("0.0.0.0:80", Some("https://lb.example/fhir/")), "https://lb.example/fhir"),
        ];
        for (what, settings, want) in cases {
            assert_eq!(settings.local_server_url().expect("valid"), want, "{what}");
        }
    }

    #[test]
    fn chi_systems_are_a_list_or_one_comma_separated_string() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("lb.toml", "chi_systems = [\"urn:a\", \"urn:b\"]\n")?;
            let from_file = Settings::load(Some(Path::new("lb.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(from_file.chi_systems, ["urn:a", "urn:b"], "a TOML list");
            jail.set_env("LINKBRIDGE_CHI_SYSTEMS", "urn:c, urn:d");
            let from_env = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(from_env.chi_systems, ["urn:c", "urn:d"], "a comma-separated variable");
            Ok(())
        });
        assert_eq!(Settings::default().chi_systems.len(), 3, "the three known systems by default");
    }

    #[test]
    fn a_postgres_url_selects_postgres_and_is_not_printed() {
        let settings =
            Settings { database_url: Some(SecretString::from("postgres://u:secret@db/lb")), ..Settings::default() };
        let db = settings.database().expect("valid url");
        assert!(matches!(db, DatabaseUrl::Postgres(_)));
        assert!(!format!("{db:?}").contains("secret"));
        assert!(!format!("{settings:?}").contains("secret"));
    }
}
