//! Typed settings and their layered loading: defaults < `--config` TOML < `LASTSEEN_*` env <
//! command-line flags.
//!
//! Environment variables reach us through clap (each flag declares its variable), so one place
//! decides flag-over-env; figment merges that layer over the file and the defaults and names the
//! offending key in every error. Nothing here reads a file other than the explicit `--config`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::Value;
use serde::{Deserialize, Serialize};

/// Server settings. Every field is a key of the TOML file, a `--flag` and a `LASTSEEN_*`
/// variable (see `docs/CONFIGURATION.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on (`LASTSEEN_BIND`, default `127.0.0.1:8000`; port 0 picks one).
    pub bind: SocketAddr,
    /// Database (`LASTSEEN_DATABASE_URL`, default `sqlite://lastseen.db`, created if missing;
    /// or `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`).
    pub database_url: String,
    /// Redis for multi-node presence (`LASTSEEN_REDIS_URL`; unset = in-process engine).
    pub redis_url: Option<String>,
    /// Silence after which a session ends (`LASTSEEN_INACTIVITY_TIMEOUT`, default `5m`).
    #[serde(with = "humantime_serde")]
    pub inactivity_timeout: Duration,
    /// Heartbeat period suggested to clients (`LASTSEEN_HEARTBEAT_INTERVAL`, default `30s`).
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How long a closed socket's session survives a reconnect (`LASTSEEN_DISCONNECT_GRACE`,
    /// default `10s`).
    #[serde(with = "humantime_serde")]
    pub disconnect_grace: Duration,
    /// Period of the batched presence writes (`LASTSEEN_PERSIST_INTERVAL`, default `1s`).
    #[serde(with = "humantime_serde")]
    pub persist_interval: Duration,
    /// Whether `POST /api/users/register/` is open (`LASTSEEN_OPEN_REGISTRATION`, default
    /// `true`).
    pub open_registration: bool,
    /// Longest time a request may take (`LASTSEEN_REQUEST_TIMEOUT`, default `30s`).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Largest accepted request body in bytes (`LASTSEEN_MAX_BODY_BYTES`, default `65536`).
    pub max_body_bytes: usize,
    /// Period of server pings on sockets (`LASTSEEN_PING_INTERVAL`, default `15s`); a socket
    /// that has not answered the previous ping by the next one is closed.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Users one socket or SSE stream may watch (`LASTSEEN_MAX_SUBSCRIPTIONS`, default `1000`).
    pub max_subscriptions: usize,
    /// Open sockets and SSE streams per user (`LASTSEEN_MAX_SOCKETS_PER_USER`, default `16`).
    pub max_sockets_per_user: usize,
    /// Largest WebSocket message in bytes (`LASTSEEN_MAX_MESSAGE_BYTES`, default `16384`).
    pub max_message_bytes: usize,
    /// Typing messages a socket may send per second (`LASTSEEN_TYPING_PER_SECOND`, default
    /// `5`); more are answered with a `throttled` error frame.
    pub typing_per_second: u32,
    /// Sessions (logins, devices) one user may have; a login beyond it revokes the least
    /// recently active (`LASTSEEN_MAX_SESSIONS_PER_USER`, default `100`).
    pub max_sessions_per_user: usize,
    /// Messages queued for one socket before it counts as a slow consumer and is closed
    /// (`LASTSEEN_SEND_QUEUE`, default `256`); presence updates of one user are coalesced.
    pub send_queue: usize,
    /// Whether users whose exact `last_seen` is hidden from a viewer show a coarse
    /// `last_seen_approx` instead (`recently`, `within_week`, ...), like Telegram
    /// (`LASTSEEN_LAST_SEEN_APPROX`, default `false`).
    pub last_seen_approx: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8000)),
            database_url: "sqlite://lastseen.db".into(),
            redis_url: None,
            inactivity_timeout: Duration::from_secs(300),
            heartbeat_interval: Duration::from_secs(30),
            disconnect_grace: Duration::from_secs(10),
            persist_interval: Duration::from_secs(1),
            open_registration: true,
            request_timeout: Duration::from_secs(30),
            max_body_bytes: 64 * 1024,
            ping_interval: Duration::from_secs(15),
            max_subscriptions: 1000,
            max_sockets_per_user: 16,
            max_message_bytes: 16 * 1024,
            typing_per_second: 5,
            max_sessions_per_user: 100,
            send_queue: 256,
            last_seen_approx: false,
        }
    }
}

/// Every settings key, in the order the docs list them.
pub const KEYS: &[&str] = &[
    "bind",
    "database_url",
    "redis_url",
    "inactivity_timeout",
    "heartbeat_interval",
    "disconnect_grace",
    "persist_interval",
    "open_registration",
    "request_timeout",
    "max_body_bytes",
    "ping_interval",
    "max_subscriptions",
    "max_sockets_per_user",
    "max_message_bytes",
    "typing_per_second",
    "send_queue",
    "last_seen_approx",
    "max_sessions_per_user",
];

/// `LASTSEEN_*` variables that are not settings but are read elsewhere (tests, CI).
const OTHER_VARS: &[&str] = &[
    "CONFIG",
    "REQUIRE_SERVICES",
    "TEST_POSTGRES_URL",
    "TEST_REDIS_URL",
];

/// A setting that could not be loaded; `main` prints it and exits with status 2.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting `{key}`: {message}")]
pub struct SettingsError {
    /// The offending key (or `config` for an unreadable file).
    pub key: String,
    /// What is wrong, and where the value came from.
    pub message: String,
}

impl SettingsError {
    fn new(key: &str, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl Settings {
    /// Merges the layers: defaults, then the TOML file at `config` (if any), then `overrides`
    /// (flags and env, as raw strings keyed by setting name), and validates the result.
    ///
    /// # Errors
    /// A [`SettingsError`] naming the first bad key.
    pub fn load(
        config: Option<&PathBuf>,
        overrides: &BTreeMap<&'static str, String>,
    ) -> Result<Self, SettingsError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = config {
            if !path.is_file() {
                return Err(SettingsError::new(
                    "config",
                    format!("no such file: {}", path.display()),
                ));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        for (key, raw) in overrides {
            figment = figment.merge(Serialized::global(key, parse_value(key, raw)));
        }
        let settings: Settings = figment.extract().map_err(from_figment)?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        for (key, value) in [
            ("inactivity_timeout", self.inactivity_timeout),
            ("heartbeat_interval", self.heartbeat_interval),
            ("persist_interval", self.persist_interval),
            ("request_timeout", self.request_timeout),
            ("ping_interval", self.ping_interval),
        ] {
            if value.is_zero() {
                return Err(SettingsError::new(key, "must be greater than zero"));
            }
        }
        for (key, value, min) in [
            ("max_body_bytes", self.max_body_bytes, 1024),
            ("max_subscriptions", self.max_subscriptions, 1),
            ("max_sockets_per_user", self.max_sockets_per_user, 1),
            ("max_message_bytes", self.max_message_bytes, 256),
            ("send_queue", self.send_queue, 8),
            ("max_sessions_per_user", self.max_sessions_per_user, 1),
        ] {
            if value < min {
                return Err(SettingsError::new(key, format!("must be at least {min}")));
            }
        }
        if self.redis_url.as_deref().is_some_and(|url| !url.is_empty()) {
            return Err(SettingsError::new(
                "redis_url",
                "the Redis presence backend is not part of this build yet; leave it unset to \
                 use the in-process engine",
            ));
        }
        Ok(())
    }
}

/// Types a flag or env value the way a TOML file would (`true`, `1024`, `"5m"`), except for
/// addresses and URLs, which stay strings whatever they look like (`[::1]:8000`).
fn parse_value(key: &str, raw: &str) -> Value {
    match key {
        "bind" | "database_url" | "redis_url" => Value::from(raw.to_owned()),
        _ => Value::from_str(raw).unwrap_or_else(|e| match e {}),
    }
}

fn from_figment(error: figment::Error) -> SettingsError {
    let key = error.path.join(".");
    let source = error
        .metadata
        .as_ref()
        .map(|m| format!(" (from {})", m.name))
        .unwrap_or_default();
    let key = if key.is_empty() {
        "config".to_owned()
    } else {
        key
    };
    SettingsError::new(&key, format!("{}{source}", error.kind))
}

/// Names of `LASTSEEN_*` variables in `vars` that match no setting: likely typos.
pub fn unknown_env_vars(vars: impl IntoIterator<Item = String>) -> Vec<String> {
    vars.into_iter()
        .filter(|name| {
            name.strip_prefix("LASTSEEN_").is_some_and(|rest| {
                !OTHER_VARS.contains(&rest) && !KEYS.contains(&rest.to_ascii_lowercase().as_str())
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(
        file: Option<&str>,
        overrides: &[(&'static str, &str)],
    ) -> Result<Settings, SettingsError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lastseen.toml");
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
        }
        let overrides = overrides
            .iter()
            .map(|(k, v)| (*k, (*v).to_owned()))
            .collect();
        Settings::load(file.map(|_| &path), &overrides)
    }

    #[test]
    fn defaults_match_the_documented_table() {
        let s = load(None, &[]).unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.bind.to_string(), "127.0.0.1:8000");
        assert_eq!(s.inactivity_timeout, Duration::from_secs(300));
    }

    #[test]
    fn overrides_beat_the_file_which_beats_defaults() {
        let file =
            "inactivity_timeout = \"90s\"\npersist_interval = \"500ms\"\nopen_registration = false";
        let s = load(
            Some(file),
            &[
                ("inactivity_timeout", "2m"),
                ("max_body_bytes", "2048"),
                ("last_seen_approx", "true"),
            ],
        )
        .unwrap();
        assert!(s.last_seen_approx);
        assert_eq!(s.inactivity_timeout, Duration::from_secs(120));
        assert_eq!(s.persist_interval, Duration::from_millis(500));
        assert!(!s.open_registration);
        assert_eq!(s.max_body_bytes, 2048);
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = load(None, &[("inactivity_timeout", "5 parsecs")]).unwrap_err();
        assert_eq!(err.key, "inactivity_timeout");
        let err = load(Some("persist_interval = \"soon\""), &[]).unwrap_err();
        assert_eq!(err.key, "persist_interval");
        let err = load(Some("bind = \"nowhere\""), &[]).unwrap_err();
        assert_eq!(err.key, "bind");
        let err = load(None, &[("persist_interval", "0s")]).unwrap_err();
        assert_eq!(err.key, "persist_interval");
        let err = load(None, &[("last_seen_approx", "sometimes")]).unwrap_err();
        assert_eq!(err.key, "last_seen_approx");
        let err = load(Some("colour = \"blue\""), &[]).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let missing = PathBuf::from("/nonexistent/lastseen.toml");
        let err = Settings::load(Some(&missing), &BTreeMap::new()).unwrap_err();
        assert_eq!(err.key, "config");
    }

    #[test]
    fn misspelt_variables_are_reported() {
        let vars = [
            "LASTSEEN_BIND",
            "LASTSEEN_INACTIVTY_TIMEOUT",
            "LASTSEEN_REQUIRE_SERVICES",
            "PATH",
        ];
        let unknown = unknown_env_vars(vars.map(String::from));
        assert_eq!(unknown, vec!["LASTSEEN_INACTIVTY_TIMEOUT".to_owned()]);
    }
}
