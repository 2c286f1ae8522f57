//! Typed settings and their layered loading: defaults < `--config` TOML < `LASTSEEN_*`
//! environment < command-line flags.
//!
//! [`SPECS`] is the one table of settings: each entry names a key (the TOML key; the flag is
//! `--key-with-dashes`, the variable `LASTSEEN_KEY`), the kind of value it takes (which gives
//! the flag's value name and the example an error shows), its help line and the subcommands
//! that use it. The command line is built from it, the environment is read from it, and a test
//! ties it to [`Settings`] and to `docs/CONFIGURATION.md`. Defaults live in one place, the
//! `Default` impl. Nothing here reads a file other than the explicit `--config`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use figment::value::Value;
use serde::{Deserialize, Serialize};

use crate::domain::Rate;

/// Server settings. Every field is a key of the TOML file, a `--flag` and a `LASTSEEN_*`
/// variable (see [`SPECS`] and `docs/CONFIGURATION.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on (default `127.0.0.1:8000`; port 0 picks one; `localhost:PORT` is
    /// accepted as `127.0.0.1:PORT`).
    #[serde(with = "bind_address")]
    pub bind: SocketAddr,
    /// Database (default `sqlite://lastseen.db`, created if missing; or
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`).
    pub database_url: String,
    /// Redis for multi-node presence: `redis://`, `rediss://` or
    /// `redis-cluster://HOST:PORT[,HOST:PORT...]` (unset = the in-process engine).
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel, so deployments can share a Redis (default
    /// `lastseen`).
    pub redis_key_prefix: String,
    /// How long a node's hold on its sockets' sessions lasts without a refresh (default `15s`):
    /// when a node dies, its sockets' sessions end at most this plus `disconnect_grace` later.
    #[serde(with = "humantime_serde")]
    pub node_lease: Duration,
    /// Silence after which a session ends (default `5m`).
    #[serde(with = "humantime_serde")]
    pub inactivity_timeout: Duration,
    /// Time without real activity (any request but a plain heartbeat, or an explicit
    /// `active`) after which an online user shows as `idle` (default `10m`; `0s` turns
    /// automatic idle off, leaving only explicit `idle` reports).
    #[serde(with = "humantime_serde")]
    pub idle_after: Duration,
    /// Heartbeat period suggested to clients (default `30s`).
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How long a closed socket's session survives a reconnect (default `10s`).
    #[serde(with = "humantime_serde")]
    pub disconnect_grace: Duration,
    /// Period of the batched presence writes (default `1s`).
    #[serde(with = "humantime_serde")]
    pub persist_interval: Duration,
    /// Whether `POST /api/users/register/` is open (default `true`).
    pub open_registration: bool,
    /// Longest time a request may take (default `30s`).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Largest accepted request body in bytes (default `65536`).
    pub max_body_bytes: usize,
    /// Time to receive a request's head, counted from when the server starts waiting for it,
    /// so it also bounds a keep-alive connection waiting for its next request (default `10s`).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time without a byte read or written after which a connection is closed (default `60s`;
    /// more than `ping_interval` and 15 s, so sockets and SSE streams are never idle that long).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Open TCP connections at most (default `10000`, lowered to stay below the open-file
    /// limit); more are answered `503` and closed.
    pub max_connections: usize,
    /// Failed logins per username per window (default `10/15m`); per client address the limit
    /// is ten times this. Over it, logins answer `429` until the window ends.
    pub login_failure_limit: Rate,
    /// Registrations per client address per window (default `60/1h`).
    pub register_rate_limit: Rate,
    /// WebSocket and SSE opens per client address per window (default `120/1m`).
    pub connect_rate_limit: Rate,
    /// Period of server pings on sockets (default `15s`); a socket that has not answered the
    /// previous ping by the next one is closed.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Users one socket or SSE stream may watch (default `1000`).
    pub max_subscriptions: usize,
    /// Open sockets and SSE streams per user (default `16`).
    pub max_sockets_per_user: usize,
    /// Open sockets and SSE streams on one node, all users together (default `10000`); more
    /// are refused (close 1013, or 503 for SSE).
    pub max_node_connections: usize,
    /// Subscriptions (watched users summed over all sockets and streams) on one node (default
    /// `2000000`); more are refused.
    pub max_node_subscriptions: usize,
    /// Largest WebSocket message in bytes (default `16384`).
    pub max_message_bytes: usize,
    /// Typing messages a socket may send per second (default `5`); more are answered with a
    /// `throttled` error frame.
    pub typing_per_second: u32,
    /// Messages queued for one socket before it counts as a slow consumer and is closed
    /// (default `256`); presence updates of one user are coalesced.
    pub send_queue: usize,
    /// Whether users whose exact `last_seen` is hidden from a viewer show a coarse
    /// `last_seen_approx` instead (`recently`, `within_week`, ...), like Telegram (default
    /// `false`).
    pub last_seen_approx: bool,
    /// Sessions (logins, devices) one user may have; a login beyond it revokes the least
    /// recently active (default `100`).
    pub max_sessions_per_user: usize,
    /// Webhook endpoints that receive every presence change (comma-separated `https://` or
    /// `http://` URLs; empty: no webhooks).
    pub webhook_urls: String,
    /// Secret the webhook requests are signed with (required with `webhook_urls`).
    pub webhook_secret: Option<String>,
    /// How long an offline change is held back from webhooks; a user back online within it
    /// produces neither change (default `0s`: sent at once).
    #[serde(with = "humantime_serde")]
    pub webhook_offline_delay: Duration,
    /// How long undelivered webhook changes are retried before they are dropped (default
    /// `24h`).
    #[serde(with = "humantime_serde")]
    pub webhook_retry_for: Duration,
    /// How long the event log keeps presence changes for `GET /api/admin/events` to resume
    /// from (default `24h`; `0s` records nothing, which also turns webhooks off).
    #[serde(with = "humantime_serde")]
    pub event_retention: Duration,
    /// Whether the `lastseen_session` cookie is marked `Secure` (sent over HTTPS only); turn it
    /// on behind TLS (default `false`).
    pub cookie_secure: bool,
    /// Shared secret of the HS256 JWTs accepted as bearer tokens (unset: none), e.g. Django's
    /// `SIGNING_KEY` for simplejwt.
    pub jwt_hs256_secret: Option<String>,
    /// PEM file of the public key of accepted RS256 (RSA) or ES256 (P-256) JWTs (unset: none).
    pub jwt_public_key_file: Option<PathBuf>,
    /// Required `iss` of accepted JWTs (unset: not checked).
    pub jwt_issuer: Option<String>,
    /// Required `aud` of accepted JWTs (unset: not checked).
    pub jwt_audience: Option<String>,
    /// Clock skew allowed on a JWT's `exp` (default `30s`).
    #[serde(with = "humantime_serde")]
    pub jwt_leeway: Duration,
    /// The JWT claim holding the user's id in the other system (default `user_id`, as
    /// simplejwt's `USER_ID_CLAIM`).
    pub jwt_user_claim: String,
    /// The JWT claim holding the username given to a user created on first sight (default
    /// `username`).
    pub jwt_username_claim: String,
    /// How log lines are written to standard error: `text` (default; colours only on a
    /// terminal) or `json` (one object per line, for log shippers).
    pub log_format: LogFormat,
}

/// The shape of log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, coloured only when standard error is a terminal.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8000)),
            database_url: "sqlite://lastseen.db".into(),
            redis_url: None,
            redis_key_prefix: "lastseen".into(),
            node_lease: Duration::from_secs(15),
            inactivity_timeout: Duration::from_secs(300),
            idle_after: Duration::from_secs(600),
            heartbeat_interval: Duration::from_secs(30),
            disconnect_grace: Duration::from_secs(10),
            persist_interval: Duration::from_secs(1),
            open_registration: true,
            request_timeout: Duration::from_secs(30),
            max_body_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            login_failure_limit: Rate {
                limit: 10,
                window: Duration::from_secs(15 * 60),
            },
            register_rate_limit: Rate {
                limit: 60,
                window: Duration::from_secs(3600),
            },
            connect_rate_limit: Rate {
                limit: 120,
                window: Duration::from_secs(60),
            },
            ping_interval: Duration::from_secs(15),
            max_subscriptions: 1000,
            max_sockets_per_user: 16,
            max_node_connections: 10_000,
            max_node_subscriptions: 2_000_000,
            max_message_bytes: 16 * 1024,
            typing_per_second: 5,
            send_queue: 256,
            last_seen_approx: false,
            max_sessions_per_user: 100,
            webhook_urls: String::new(),
            webhook_secret: None,
            webhook_offline_delay: Duration::ZERO,
            webhook_retry_for: Duration::from_secs(24 * 3600),
            event_retention: Duration::from_secs(24 * 3600),
            cookie_secure: false,
            jwt_hs256_secret: None,
            jwt_public_key_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway: Duration::from_secs(30),
            jwt_user_claim: "user_id".into(),
            jwt_username_claim: "username".into(),
            log_format: LogFormat::Text,
        }
    }
}

/// The kind of value a setting takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `HOST:PORT`.
    Address,
    /// A URL (kept as text whatever it looks like).
    Url,
    /// A humantime duration.
    Duration,
    /// `true` or `false`.
    Bool,
    /// A whole number.
    Count,
    /// Any text.
    Text,
    /// `text` or `json`.
    LogFormat,
    /// `N/DURATION`, e.g. `10/15m`.
    Rate,
}

impl Kind {
    /// The flag's value name in `--help`.
    pub fn value_name(self) -> &'static str {
        match self {
            Self::Address => "ADDR",
            Self::Url => "URL",
            Self::Duration => "DURATION",
            Self::Bool => "BOOL",
            Self::Count => "N",
            Self::Text => "TEXT",
            Self::LogFormat => "FORMAT",
            Self::Rate => "RATE",
        }
    }

    /// What a valid value looks like, for error messages.
    pub fn example(self) -> &'static str {
        match self {
            Self::Address => "an address such as 127.0.0.1:8000, 0.0.0.0:8000 or localhost:8000",
            Self::Url => "a URL",
            Self::Duration => "a duration such as 500ms, 30s, 5m or 1h 30m",
            Self::Bool => "true or false",
            Self::Count => "a whole number such as 100",
            Self::Text => "some text",
            Self::LogFormat => "text or json",
            Self::Rate => "a rate N/DURATION such as 10/15m",
        }
    }
}

/// Which subcommands a setting's flag belongs to. Variables and the TOML file are read for
/// every subcommand whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every subcommand (the database they all open).
    All,
    /// `serve` and `check-offline-users` (both decide who is still online).
    Presence,
    /// `serve` only.
    Serve,
}

/// One setting: its key, the kind of value, a one-line help and where its flag is offered.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The TOML key; the flag is `--key-with-dashes`, the variable `LASTSEEN_KEY`.
    pub key: &'static str,
    /// What it takes.
    pub kind: Kind,
    /// The `--help` line (the default is appended from [`Settings::default`]).
    pub help: &'static str,
    /// Which subcommands offer the flag.
    pub scope: Scope,
}

impl Spec {
    /// `--key-with-dashes`, without the dashes in front.
    pub fn flag(&self) -> String {
        self.key.replace('_', "-")
    }

    /// `LASTSEEN_KEY`.
    pub fn env(&self) -> String {
        format!("LASTSEEN_{}", self.key.to_ascii_uppercase())
    }

    /// The three ways to set it, for error messages.
    pub fn where_to_set(&self) -> String {
        format!(
            "Set it with --{}, {} or `{} = ...` in the --config file.",
            self.flag(),
            self.env(),
            self.key
        )
    }
}

const fn spec(key: &'static str, kind: Kind, scope: Scope, help: &'static str) -> Spec {
    Spec {
        key,
        kind,
        help,
        scope,
    }
}

/// Every setting, in the order the docs list them.
pub const SPECS: &[Spec] = &[
    spec(
        "bind",
        Kind::Address,
        Scope::Serve,
        "Address to listen on; port 0 picks a free one",
    ),
    spec(
        "database_url",
        Kind::Url,
        Scope::All,
        "Database: sqlite://PATH or postgres://USER[:PASSWORD]@HOST[:PORT]/DB",
    ),
    spec(
        "redis_url",
        Kind::Url,
        Scope::Presence,
        "Redis for multi-node presence: redis://, rediss:// or \
         redis-cluster://HOST:PORT[,HOST:PORT...] (unset: the in-process engine)",
    ),
    spec(
        "redis_key_prefix",
        Kind::Text,
        Scope::Presence,
        "Prefix of every Redis key and channel",
    ),
    spec(
        "node_lease",
        Kind::Duration,
        Scope::Serve,
        "How long a node's hold on its sockets' sessions lasts without a refresh",
    ),
    spec(
        "inactivity_timeout",
        Kind::Duration,
        Scope::Presence,
        "Silence after which a session ends",
    ),
    spec(
        "idle_after",
        Kind::Duration,
        Scope::Presence,
        "Time without real activity after which an online user shows as idle (0s: never)",
    ),
    spec(
        "heartbeat_interval",
        Kind::Duration,
        Scope::Serve,
        "Heartbeat period suggested to clients",
    ),
    spec(
        "disconnect_grace",
        Kind::Duration,
        Scope::Serve,
        "Reconnect grace of a closed socket's session",
    ),
    spec(
        "persist_interval",
        Kind::Duration,
        Scope::Serve,
        "Period of batched presence writes",
    ),
    spec(
        "open_registration",
        Kind::Bool,
        Scope::Serve,
        "Allow self-registration",
    ),
    spec(
        "request_timeout",
        Kind::Duration,
        Scope::Serve,
        "Longest time a request may take",
    ),
    spec(
        "max_body_bytes",
        Kind::Count,
        Scope::Serve,
        "Largest accepted request body in bytes",
    ),
    spec(
        "header_read_timeout",
        Kind::Duration,
        Scope::Serve,
        "Time to receive a request head (also bounds an idle keep-alive connection)",
    ),
    spec(
        "idle_timeout",
        Kind::Duration,
        Scope::Serve,
        "Time without traffic after which a connection is closed",
    ),
    spec(
        "max_connections",
        Kind::Count,
        Scope::Serve,
        "Open TCP connections at most; more are refused with 503",
    ),
    spec(
        "login_failure_limit",
        Kind::Rate,
        Scope::Serve,
        "Failed logins per username per window (N/DURATION); per address ten times that",
    ),
    spec(
        "register_rate_limit",
        Kind::Rate,
        Scope::Serve,
        "Registrations per client address per window (N/DURATION)",
    ),
    spec(
        "connect_rate_limit",
        Kind::Rate,
        Scope::Serve,
        "WebSocket and SSE opens per client address per window (N/DURATION)",
    ),
    spec(
        "ping_interval",
        Kind::Duration,
        Scope::Serve,
        "Period of server pings on sockets",
    ),
    spec(
        "max_subscriptions",
        Kind::Count,
        Scope::Serve,
        "Users one socket may watch",
    ),
    spec(
        "max_sockets_per_user",
        Kind::Count,
        Scope::Serve,
        "Open sockets and SSE streams per user",
    ),
    spec(
        "max_node_connections",
        Kind::Count,
        Scope::Serve,
        "Open sockets and SSE streams on this node; more are refused (1013 / 503)",
    ),
    spec(
        "max_node_subscriptions",
        Kind::Count,
        Scope::Serve,
        "Watched users summed over this node's sockets and streams; more are refused",
    ),
    spec(
        "max_message_bytes",
        Kind::Count,
        Scope::Serve,
        "Largest WebSocket message in bytes",
    ),
    spec(
        "typing_per_second",
        Kind::Count,
        Scope::Serve,
        "Typing messages a socket may send per second",
    ),
    spec(
        "send_queue",
        Kind::Count,
        Scope::Serve,
        "Messages queued per socket before it is closed as a slow consumer",
    ),
    spec(
        "last_seen_approx",
        Kind::Bool,
        Scope::Serve,
        "Show a coarse last_seen_approx where the exact last seen is hidden",
    ),
    spec(
        "max_sessions_per_user",
        Kind::Count,
        Scope::Serve,
        "Sessions (devices) per user; more logins revoke the oldest",
    ),
    spec(
        "webhook_urls",
        Kind::Text,
        Scope::Serve,
        "Webhook endpoints for presence changes, comma-separated URLs",
    ),
    spec(
        "webhook_secret",
        Kind::Text,
        Scope::Serve,
        "Secret the webhook requests are signed with (HMAC-SHA256)",
    ),
    spec(
        "webhook_offline_delay",
        Kind::Duration,
        Scope::Serve,
        "How long offline changes are held back from webhooks (a quick return cancels them)",
    ),
    spec(
        "webhook_retry_for",
        Kind::Duration,
        Scope::Serve,
        "How long undelivered webhook changes are retried",
    ),
    spec(
        "event_retention",
        Kind::Duration,
        Scope::Serve,
        "How long the event log keeps presence changes (0s: no log, no webhooks)",
    ),
    spec(
        "cookie_secure",
        Kind::Bool,
        Scope::Serve,
        "Mark the browser session cookie Secure (HTTPS only)",
    ),
    spec(
        "jwt_hs256_secret",
        Kind::Text,
        Scope::Serve,
        "Shared secret of accepted HS256 JWTs (e.g. simplejwt's SIGNING_KEY)",
    ),
    spec(
        "jwt_public_key_file",
        Kind::Text,
        Scope::Serve,
        "PEM public key of accepted RS256 (RSA) or ES256 (P-256) JWTs",
    ),
    spec(
        "jwt_issuer",
        Kind::Text,
        Scope::Serve,
        "Required iss claim of JWTs (unset: not checked)",
    ),
    spec(
        "jwt_audience",
        Kind::Text,
        Scope::Serve,
        "Required aud claim of JWTs (unset: not checked)",
    ),
    spec(
        "jwt_leeway",
        Kind::Duration,
        Scope::Serve,
        "Clock skew allowed on a JWT's exp",
    ),
    spec(
        "jwt_user_claim",
        Kind::Text,
        Scope::Serve,
        "JWT claim with the user's id in the issuing system",
    ),
    spec(
        "jwt_username_claim",
        Kind::Text,
        Scope::Serve,
        "JWT claim with the username of a user created on first sight",
    ),
    spec(
        "log_format",
        Kind::LogFormat,
        Scope::All,
        "Log lines on standard error: text (coloured only on a terminal) or json",
    ),
];

/// The spec of `key`.
fn spec_of(key: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.key == key)
}

/// `LASTSEEN_*` variables that are not settings but are read elsewhere (the CLI, tests, CI).
const OTHER_VARS: &[&str] = &[
    "CONFIG",
    "REQUIRE_SERVICES",
    "TEST_POSTGRES_URL",
    "TEST_REDIS_URL",
];

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The `--config` file.
    File(PathBuf),
    /// A `LASTSEEN_*` variable.
    Env(String),
    /// A command-line flag.
    Flag(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Default => f.write_str("the default"),
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Env(name) => f.write_str(name),
            Self::Flag(flag) => write!(f, "--{flag}"),
        }
    }
}

/// A setting that could not be loaded; `main` prints it and exits with status 2.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SettingsError {
    /// The offending key (or `config` for an unreadable file).
    pub key: String,
    /// What is wrong, where the value came from, and what would be valid.
    pub message: String,
}

/// The layers above the defaults, as raw text keyed by setting: what the command line and the
/// environment gave (the file is read by [`Settings::load`]).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `LASTSEEN_*` variables.
    pub env: BTreeMap<&'static str, String>,
    /// Command-line flags.
    pub flags: BTreeMap<&'static str, String>,
}

impl Overrides {
    /// The settings variables among `vars`.
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        let env = SPECS
            .iter()
            .filter_map(|spec| vars.get(&spec.env()).map(|v| (spec.key, v.clone())))
            .collect();
        Self {
            env,
            flags: BTreeMap::new(),
        }
    }

    fn source(&self, key: &str, config: Option<&PathBuf>) -> Source {
        let spec = spec_of(key);
        if self.flags.contains_key(key) {
            Source::Flag(spec.map_or_else(|| key.to_owned(), Spec::flag))
        } else if self.env.contains_key(key) {
            Source::Env(spec.map_or_else(|| key.to_owned(), Spec::env))
        } else if let Some(path) = config {
            Source::File(path.clone())
        } else {
            Source::Default
        }
    }
}

impl Settings {
    /// The Redis URL, if one is set (an empty value counts as unset).
    pub fn redis_url(&self) -> Option<&str> {
        self.redis_url.as_deref().filter(|url| !url.is_empty())
    }

    /// The webhook endpoints, in the order given.
    pub fn webhook_urls(&self) -> Vec<String> {
        self.webhook_urls
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// The JWT public key file, if one is set (an empty path counts as unset).
    pub fn jwt_public_key_file(&self) -> Option<&std::path::Path> {
        let path = self.jwt_public_key_file.as_deref()?;
        (!path.as_os_str().is_empty()).then_some(path)
    }

    /// When an online user turns idle without real activity (`None`: never).
    pub fn idle_after(&self) -> Option<Duration> {
        Some(self.idle_after).filter(|after| !after.is_zero())
    }

    /// Merges the layers: defaults, then the TOML file at `config` (if any), then the
    /// environment, then flags, and validates the result.
    ///
    /// # Errors
    /// A [`SettingsError`] naming the first bad key, where its value came from and what a
    /// valid one looks like.
    pub fn load(config: Option<&PathBuf>, overrides: &Overrides) -> Result<Self, SettingsError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = config {
            if !path.is_file() {
                return Err(SettingsError {
                    key: "config".into(),
                    message: format!(
                        "the settings file {} does not exist (from --config or LASTSEEN_CONFIG)",
                        path.display()
                    ),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        for layer in [&overrides.env, &overrides.flags] {
            for (key, raw) in layer {
                figment = figment.merge(Serialized::global(key, parse_value(key, raw)));
            }
        }
        let settings: Settings = figment
            .extract()
            .map_err(|e| explain(&e, config, overrides))?;
        settings.validate().map_err(|(key, problem)| {
            let source = overrides.source(key, config);
            let set = spec_of(key).map(Spec::where_to_set).unwrap_or_default();
            SettingsError {
                key: key.into(),
                message: format!("{key} {problem} (from {source}). {set}")
                    .trim_end()
                    .to_owned(),
            }
        })?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, value) in [
            ("inactivity_timeout", self.inactivity_timeout),
            ("heartbeat_interval", self.heartbeat_interval),
            ("persist_interval", self.persist_interval),
            ("request_timeout", self.request_timeout),
            ("ping_interval", self.ping_interval),
            ("header_read_timeout", self.header_read_timeout),
        ] {
            if value.is_zero() {
                return Err((key, "must be greater than zero, e.g. 30s".into()));
            }
        }
        for (key, value, min) in [
            ("max_body_bytes", self.max_body_bytes, 1024),
            ("max_subscriptions", self.max_subscriptions, 1),
            ("max_sockets_per_user", self.max_sockets_per_user, 1),
            ("max_node_connections", self.max_node_connections, 1),
            ("max_node_subscriptions", self.max_node_subscriptions, 1),
            ("max_message_bytes", self.max_message_bytes, 256),
            ("send_queue", self.send_queue, 8),
            ("max_sessions_per_user", self.max_sessions_per_user, 1),
            ("max_connections", self.max_connections, 1),
        ] {
            if value < min {
                return Err((key, format!("must be at least {min}")));
            }
        }
        if self.idle_timeout <= self.ping_interval.max(Duration::from_secs(15)) {
            return Err((
                "idle_timeout",
                "must be more than ping_interval and 15s (sockets and SSE streams send \
                 something that often), e.g. 60s"
                    .into(),
            ));
        }
        if self.node_lease < Duration::from_secs(1) {
            return Err(("node_lease", "must be at least 1s, e.g. 15s".into()));
        }
        if let Some(url) = self.redis_url() {
            if let Err(error) = crate::cluster::Target::parse(url) {
                return Err(("redis_url", format!("is not usable: {error}")));
            }
            if !self
                .database_url
                .to_ascii_lowercase()
                .starts_with("postgres")
            {
                return Err((
                    "redis_url",
                    "needs a PostgreSQL database_url: nodes that share presence in Redis must \
                     share one database (postgres://USER@HOST/DB), not each a SQLite file"
                        .into(),
                ));
            }
        }
        let webhooks = self.webhook_urls();
        for url in &webhooks {
            let parsed = url.parse::<axum::http::Uri>();
            if !parsed.is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            }) {
                return Err((
                    "webhook_urls",
                    format!(
                        "has {url:?}, which is not an http(s) URL, e.g. https://example.com/hooks/presence"
                    ),
                ));
            }
        }
        if !webhooks.is_empty() && self.webhook_secret.as_deref().is_none_or(str::is_empty) {
            return Err((
                "webhook_secret",
                "must be set with webhook_urls (receivers verify the signature with it), e.g. a random 32-byte hex string".into(),
            ));
        }
        if !webhooks.is_empty() && self.event_retention.is_zero() {
            return Err((
                "event_retention",
                "must be greater than zero with webhook_urls (webhooks are sent from the event log), e.g. 24h".into(),
            ));
        }
        self.validate_jwt()?;
        if self.redis_key_prefix.is_empty() || self.redis_key_prefix.contains(['{', '}', ' ']) {
            return Err((
                "redis_key_prefix",
                "must be non-empty, without spaces or braces, e.g. lastseen".into(),
            ));
        }
        Ok(())
    }
}

impl Settings {
    /// The JWT settings: claim names are set, the key file is readable PEM (what key it holds
    /// is checked when the server starts).
    fn validate_jwt(&self) -> Result<(), (&'static str, String)> {
        for (key, claim) in [
            ("jwt_user_claim", &self.jwt_user_claim),
            ("jwt_username_claim", &self.jwt_username_claim),
        ] {
            if claim.trim().is_empty() {
                return Err((key, "must name a claim, e.g. user_id".into()));
            }
        }
        if let Some(path) = self.jwt_public_key_file() {
            let text = std::fs::read_to_string(path).map_err(|error| {
                let problem = format!("cannot be read ({}: {error})", path.display());
                ("jwt_public_key_file", problem)
            })?;
            if !text.contains("-----BEGIN ") {
                return Err((
                    "jwt_public_key_file",
                    format!(
                        "is not a PEM file ({}); expected a public key such as \
                         -----BEGIN PUBLIC KEY-----",
                        path.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Types a flag or variable the way a TOML file would (`true`, `1024`, `"5m"`), except for
/// addresses and URLs, which stay strings whatever they look like (`[::1]:8000`).
fn parse_value(key: &str, raw: &str) -> Value {
    match spec_of(key).map(|s| s.kind) {
        Some(
            Kind::Address | Kind::Url | Kind::Duration | Kind::Text | Kind::LogFormat | Kind::Rate,
        ) => Value::from(raw.to_owned()),
        _ => Value::from_str(raw).unwrap_or_else(|e| match e {}),
    }
}

/// Our wording of a figment error: the key, the value, its source and a valid example; no
/// internal type names.
fn explain(
    error: &figment::Error,
    config: Option<&PathBuf>,
    overrides: &Overrides,
) -> SettingsError {
    use figment::error::{Actual, Kind as E};
    let key = error.path.join(".");
    if key.is_empty() {
        let message = match config {
            Some(path) => format!(
                "cannot read the settings file {}: {}",
                path.display(),
                error.kind
            ),
            None => error.kind.to_string(),
        };
        return SettingsError {
            key: "config".into(),
            message,
        };
    }
    let source = overrides.source(&key, config);
    let message = match (&error.kind, spec_of(&key)) {
        (E::UnknownField(field, _), _) => format!(
            "unknown setting {field} in {source}; the settings are listed in docs/CONFIGURATION.md"
        ),
        (kind, Some(spec)) => {
            let given = match kind {
                E::InvalidType(Actual::Str(text), _) | E::InvalidValue(Actual::Str(text), _) => {
                    format!(" {text:?}")
                }
                E::InvalidType(actual, _) | E::InvalidValue(actual, _) => format!(" ({actual})"),
                _ => String::new(),
            };
            format!(
                "invalid {key}{given} (from {source}): expected {}. {}",
                spec.kind.example(),
                spec.where_to_set()
            )
        }
        (kind, None) => format!("invalid {key} (from {source}): {kind}"),
    };
    SettingsError { key, message }
}

/// The variables of the settings whose names share a word with the unknown variable `name`
/// (`LASTSEEN_HEARTBEAT_TIMEOUT` → `LASTSEEN_INACTIVITY_TIMEOUT`, `LASTSEEN_HEARTBEAT_INTERVAL`,
/// ...), best first, at most three.
pub fn similar_env_vars(name: &str) -> Vec<String> {
    let words: Vec<String> = name
        .trim_start_matches("LASTSEEN_")
        .to_ascii_lowercase()
        .split('_')
        .map(str::to_owned)
        .collect();
    let mut scored: Vec<(usize, usize, String)> = SPECS
        .iter()
        .enumerate()
        .map(|(order, spec)| {
            let shared = spec.key.split('_').filter(|w| words.iter().any(|x| x == w));
            (shared.count(), order, spec.env())
        })
        .filter(|(shared, _, _)| *shared > 0)
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().take(3).map(|(_, _, env)| env).collect()
}

/// Names of `LASTSEEN_*` variables in `vars` that match no setting: likely typos.
pub fn unknown_env_vars(vars: impl IntoIterator<Item = String>) -> Vec<String> {
    vars.into_iter()
        .filter(|name| {
            name.strip_prefix("LASTSEEN_").is_some_and(|rest| {
                !OTHER_VARS.contains(&rest) && spec_of(&rest.to_ascii_lowercase()).is_none()
            })
        })
        .collect()
}

/// `bind` as text: `HOST:PORT` with an IP, or `localhost:PORT` (meaning 127.0.0.1).
mod bind_address {
    use std::net::{Ipv4Addr, SocketAddr};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(addr: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(addr)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let raw = String::deserialize(d)?;
        parse(&raw).ok_or_else(|| {
            serde::de::Error::invalid_value(serde::de::Unexpected::Str(&raw), &"HOST:PORT")
        })
    }

    /// An IP address with a port, `localhost:PORT` (always 127.0.0.1, whatever the resolver
    /// prefers), or `HOST:PORT` with a host name the resolver knows (its first IPv4 address,
    /// else its first address).
    fn parse(raw: &str) -> Option<SocketAddr> {
        if let Ok(addr) = raw.parse() {
            return Some(addr);
        }
        if let Some(port) = raw.strip_prefix("localhost:") {
            return Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port.parse().ok()?)));
        }
        let (host, port) = raw.rsplit_once(':')?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return None;
        }
        let resolved: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(raw)
            .ok()?
            .collect();
        resolved
            .iter()
            .find(|addr| addr.is_ipv4())
            .or(resolved.first())
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(
        file: Option<&str>,
        env: &[(&'static str, &str)],
        flags: &[(&'static str, &str)],
    ) -> Result<Settings, SettingsError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lastseen.toml");
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
        }
        let layer = |pairs: &[(&'static str, &str)]| {
            pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
        };
        let overrides = Overrides {
            env: layer(env),
            flags: layer(flags),
        };
        Settings::load(file.map(|_| &path), &overrides)
    }

    #[test]
    fn defaults_match_the_documented_table() {
        let s = load(None, &[], &[]).unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.bind.to_string(), "127.0.0.1:8000");
        assert_eq!(s.inactivity_timeout, Duration::from_secs(300));
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_file_which_beats_defaults() {
        let file =
            "inactivity_timeout = \"90s\"\npersist_interval = \"500ms\"\nopen_registration = false";
        let s = load(
            Some(file),
            &[("inactivity_timeout", "3m"), ("persist_interval", "2s")],
            &[
                ("inactivity_timeout", "2m"),
                ("max_body_bytes", "2048"),
                ("last_seen_approx", "true"),
            ],
        )
        .unwrap();
        assert!(s.last_seen_approx);
        assert_eq!(s.inactivity_timeout, Duration::from_secs(120));
        assert_eq!(s.persist_interval, Duration::from_secs(2));
        assert!(!s.open_registration);
        assert_eq!(s.max_body_bytes, 2048);
    }

    #[test]
    fn bad_values_name_their_key_source_and_a_valid_example() {
        let err = load(None, &[("inactivity_timeout", "banana")], &[]).unwrap_err();
        assert_eq!(err.key, "inactivity_timeout");
        assert_eq!(
            err.to_string(),
            "invalid inactivity_timeout \"banana\" (from LASTSEEN_INACTIVITY_TIMEOUT): \
             expected a duration such as 500ms, 30s, 5m or 1h 30m. Set it with \
             --inactivity-timeout, LASTSEEN_INACTIVITY_TIMEOUT or `inactivity_timeout = ...` in \
             the --config file."
        );
        let err = load(None, &[], &[("inactivity_timeout", "5 parsecs")]).unwrap_err();
        assert!(
            err.to_string().contains("(from --inactivity-timeout)"),
            "{err}"
        );
        let err = load(Some("persist_interval = \"soon\""), &[], &[]).unwrap_err();
        assert_eq!(err.key, "persist_interval");
        assert!(err.to_string().contains("lastseen.toml"), "{err}");
        let err = load(Some("bind = \"nowhere\""), &[], &[]).unwrap_err();
        assert_eq!(err.key, "bind");
        assert!(err.to_string().contains("localhost:8000"), "{err}");
        let err = load(None, &[], &[("persist_interval", "0s")]).unwrap_err();
        assert_eq!(err.key, "persist_interval");
        assert_eq!(
            err.to_string(),
            "persist_interval must be greater than zero, e.g. 30s (from --persist-interval). \
             Set it with --persist-interval, LASTSEEN_PERSIST_INTERVAL or \
             `persist_interval = ...` in the --config file."
        );
        let err = load(None, &[], &[("last_seen_approx", "sometimes")]).unwrap_err();
        assert_eq!(err.key, "last_seen_approx");
        assert!(err.to_string().contains("true or false"), "{err}");
        let err = load(Some("colour = \"blue\""), &[], &[]).unwrap_err();
        assert!(err.to_string().contains("unknown setting colour"), "{err}");
        for err in [
            load(None, &[("inactivity_timeout", "banana")], &[]).unwrap_err(),
            load(Some("bind = \"nowhere\""), &[], &[]).unwrap_err(),
        ] {
            assert!(!err.to_string().contains("figment"), "{err}");
        }
    }

    #[test]
    fn log_format_is_text_or_json() {
        assert_eq!(load(None, &[], &[]).unwrap().log_format, LogFormat::Text);
        let s = load(None, &[("log_format", "json")], &[]).unwrap();
        assert_eq!(s.log_format, LogFormat::Json);
        let err = load(None, &[], &[("log_format", "xml")]).unwrap_err();
        assert_eq!(err.key, "log_format");
        assert!(err.to_string().contains("expected text or json"), "{err}");
    }

    #[test]
    fn an_unknown_variable_is_matched_to_the_settings_it_resembles() {
        let similar = similar_env_vars("LASTSEEN_HEARTBEAT_TIMEOUT");
        assert!(
            similar.contains(&"LASTSEEN_HEARTBEAT_INTERVAL".to_owned()),
            "{similar:?}"
        );
        assert!(
            similar.contains(&"LASTSEEN_INACTIVITY_TIMEOUT".to_owned()),
            "{similar:?}"
        );
        assert!(similar_env_vars("LASTSEEN_COLOUR").is_empty());
    }

    #[test]
    fn localhost_is_accepted_as_a_bind_address() {
        let s = load(None, &[], &[("bind", "localhost:8002")]).unwrap();
        assert_eq!(s.bind.to_string(), "127.0.0.1:8002");
        let err = load(None, &[], &[("bind", "localhost")]).unwrap_err();
        assert!(err.to_string().contains("localhost:8000"), "{err}");
        let s = load(None, &[], &[("bind", "[::1]:0")]).unwrap();
        assert_eq!(s.bind.to_string(), "[::1]:0");
    }

    #[test]
    fn jwt_settings_name_their_key_when_unusable() {
        let err = load(
            None,
            &[],
            &[("jwt_public_key_file", "/nonexistent/key.pem")],
        )
        .unwrap_err();
        assert_eq!(err.key, "jwt_public_key_file");
        assert!(err.to_string().contains("/nonexistent/key.pem"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("key.txt");
        std::fs::write(&not_pem, "secret").unwrap();
        let path = not_pem.to_str().unwrap();
        let err = load(None, &[("jwt_public_key_file", path)], &[]).unwrap_err();
        assert!(err.to_string().contains("not a PEM file"), "{err}");
        let err = load(None, &[], &[("jwt_user_claim", " ")]).unwrap_err();
        assert_eq!(err.key, "jwt_user_claim");
        let s = load(Some("jwt_leeway = \"5s\"\njwt_issuer = \"me\""), &[], &[]).unwrap();
        assert_eq!(s.jwt_leeway, Duration::from_secs(5));
        assert_eq!(s.jwt_issuer.as_deref(), Some("me"));
        assert_eq!(s.jwt_user_claim, "user_id");
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let missing = PathBuf::from("/nonexistent/lastseen.toml");
        let err = Settings::load(Some(&missing), &Overrides::default()).unwrap_err();
        assert_eq!(err.key, "config");
        assert!(
            err.to_string().contains("/nonexistent/lastseen.toml"),
            "{err}"
        );
    }

    #[test]
    fn only_settings_variables_are_read_and_misspelt_ones_are_reported() {
        let vars = [
            ("LASTSEEN_BIND", "127.0.0.1:1"),
            ("LASTSEEN_INACTIVTY_TIMEOUT", "1m"),
            ("LASTSEEN_REQUIRE_SERVICES", "1"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let overrides = Overrides::from_env(vars.clone());
        assert_eq!(overrides.env.keys().copied().collect::<Vec<_>>(), ["bind"]);
        let unknown = unknown_env_vars(vars.map(|(k, _)| k));
        assert_eq!(unknown, vec!["LASTSEEN_INACTIVTY_TIMEOUT".to_owned()]);
    }

    #[test]
    fn the_spec_table_names_every_field_of_settings_once() {
        let serialized = serde_json::to_value(Settings::default()).unwrap();
        let mut fields: Vec<&str> = serialized
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut keys: Vec<&str> = SPECS.iter().map(|s| s.key).collect();
        fields.sort_unstable();
        keys.sort_unstable();
        assert_eq!(keys, fields);
    }

    #[test]
    fn the_configuration_doc_lists_every_setting_with_its_flag_and_variable() {
        let doc = include_str!("../docs/CONFIGURATION.md");
        for spec in SPECS {
            let row = format!(
                "| `{}` | `--{}` | `{}` |",
                spec.key,
                spec.flag(),
                spec.env()
            );
            assert!(
                doc.contains(&row),
                "docs/CONFIGURATION.md lacks the row {row}"
            );
        }
    }
}
