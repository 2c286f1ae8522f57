//! Command line: subcommands and the settings flags shared by all of them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// lastseen: a WhatsApp-style online/offline presence server.
#[derive(Debug, Parser)]
#[command(name = "lastseen", version, about, propagate_version = true)]
pub struct Cli {
    /// Settings flags, accepted before or after the subcommand.
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (applies migrations first).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage users.
    User {
        /// User subcommand.
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Mark offline every user whose last activity is older than the inactivity timeout.
    CheckOfflineUsers {
        /// Only count them.
        #[arg(long)]
        dry_run: bool,
    },
}

/// `lastseen user ...` subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user; prints a generated password unless --password-stdin is given.
    Create {
        /// The new user's name.
        username: String,
        /// Allow the user to call the admin endpoints.
        #[arg(long)]
        admin: bool,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
}

/// Settings flags; each one also reads its `LASTSEEN_*` variable (flag wins).
#[derive(Debug, Args)]
pub struct SettingsArgs {
    /// TOML file with settings (lowest precedence after the defaults).
    #[arg(long, global = true, env = "LASTSEEN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8000]; port 0 picks a free one.
    #[arg(long, global = true, env = "LASTSEEN_BIND", value_name = "ADDR")]
    pub bind: Option<String>,
    /// Database URL: sqlite://PATH or postgres://USER[:PASSWORD]@HOST[:PORT]/DB
    /// [default: sqlite://lastseen.db].
    #[arg(long, global = true, env = "LASTSEEN_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// Redis URL for multi-node presence [default: unset, in-process engine].
    #[arg(long, global = true, env = "LASTSEEN_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// Silence after which a session ends [default: 5m].
    #[arg(
        long,
        global = true,
        env = "LASTSEEN_INACTIVITY_TIMEOUT",
        value_name = "DURATION"
    )]
    pub inactivity_timeout: Option<String>,
    /// Heartbeat period suggested to clients [default: 30s].
    #[arg(
        long,
        global = true,
        env = "LASTSEEN_HEARTBEAT_INTERVAL",
        value_name = "DURATION"
    )]
    pub heartbeat_interval: Option<String>,
    /// Reconnect grace of a closed socket's session [default: 10s].
    #[arg(
        long,
        global = true,
        env = "LASTSEEN_DISCONNECT_GRACE",
        value_name = "DURATION"
    )]
    pub disconnect_grace: Option<String>,
    /// Period of batched presence writes [default: 1s].
    #[arg(
        long,
        global = true,
        env = "LASTSEEN_PERSIST_INTERVAL",
        value_name = "DURATION"
    )]
    pub persist_interval: Option<String>,
    /// Allow self-registration: true or false [default: true].
    #[arg(
        long,
        global = true,
        env = "LASTSEEN_OPEN_REGISTRATION",
        value_name = "BOOL"
    )]
    pub open_registration: Option<String>,
    /// Longest time a request may take [default: 30s].
    #[arg(
        long,
        global = true,
        env = "LASTSEEN_REQUEST_TIMEOUT",
        value_name = "DURATION"
    )]
    pub request_timeout: Option<String>,
    /// Largest accepted request body in bytes [default: 65536].
    #[arg(
        long,
        global = true,
        env = "LASTSEEN_MAX_BODY_BYTES",
        value_name = "BYTES"
    )]
    pub max_body_bytes: Option<String>,
    /// Period of server pings on sockets [default: 15s].
    #[arg(
        long,
        global = true,
        env = "LASTSEEN_PING_INTERVAL",
        value_name = "DURATION"
    )]
    pub ping_interval: Option<String>,
    /// Users one socket may watch [default: 1000].
    #[arg(
        long,
        global = true,
        env = "LASTSEEN_MAX_SUBSCRIPTIONS",
        value_name = "N"
    )]
    pub max_subscriptions: Option<String>,
    /// Open sockets and SSE streams per user [default: 16].
    #[arg(
        long,
        global = true,
        env = "LASTSEEN_MAX_SOCKETS_PER_USER",
        value_name = "N"
    )]
    pub max_sockets_per_user: Option<String>,
    /// Largest WebSocket message in bytes [default: 16384].
    #[arg(
        long,
        global = true,
        env = "LASTSEEN_MAX_MESSAGE_BYTES",
        value_name = "BYTES"
    )]
    pub max_message_bytes: Option<String>,
    /// Typing messages a socket may send per second [default: 5].
    #[arg(
        long,
        global = true,
        env = "LASTSEEN_TYPING_PER_SECOND",
        value_name = "N"
    )]
    pub typing_per_second: Option<String>,
    /// Messages queued per socket before it is closed as a slow consumer [default: 256].
    #[arg(long, global = true, env = "LASTSEEN_SEND_QUEUE", value_name = "N")]
    pub send_queue: Option<String>,
    /// Sessions (devices) per user; more logins revoke the oldest [default: 100].
    #[arg(
        long,
        global = true,
        env = "LASTSEEN_MAX_SESSIONS_PER_USER",
        value_name = "N"
    )]
    pub max_sessions_per_user: Option<String>,
    /// Show a coarse `last_seen_approx` where the exact last seen is hidden: true or false
    /// [default: false].
    #[arg(
        long,
        global = true,
        env = "LASTSEEN_LAST_SEEN_APPROX",
        value_name = "BOOL"
    )]
    pub last_seen_approx: Option<String>,
}

impl SettingsArgs {
    /// The flags (or their variables) that were given, keyed by setting name.
    pub fn overrides(&self) -> BTreeMap<&'static str, String> {
        [
            ("bind", &self.bind),
            ("database_url", &self.database_url),
            ("redis_url", &self.redis_url),
            ("inactivity_timeout", &self.inactivity_timeout),
            ("heartbeat_interval", &self.heartbeat_interval),
            ("disconnect_grace", &self.disconnect_grace),
            ("persist_interval", &self.persist_interval),
            ("open_registration", &self.open_registration),
            ("request_timeout", &self.request_timeout),
            ("max_body_bytes", &self.max_body_bytes),
            ("ping_interval", &self.ping_interval),
            ("max_subscriptions", &self.max_subscriptions),
            ("max_sockets_per_user", &self.max_sockets_per_user),
            ("max_message_bytes", &self.max_message_bytes),
            ("typing_per_second", &self.typing_per_second),
            ("send_queue", &self.send_queue),
            ("max_sessions_per_user", &self.max_sessions_per_user),
            ("last_seen_approx", &self.last_seen_approx),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.clone().map(|v| (key, v)))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn settings_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from(["lastseen", "serve", "--bind", "127.0.0.1:0"]).unwrap();
        assert_eq!(cli.settings.overrides()["bind"], "127.0.0.1:0");
        let cli = Cli::try_parse_from(["lastseen", "check-offline-users", "--dry-run"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::CheckOfflineUsers { dry_run: true }
        ));
    }
}
