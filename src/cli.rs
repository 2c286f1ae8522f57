//! Command line: subcommands, their own arguments, and the settings flags each one uses.
//!
//! The settings flags come from [`SPECS`]: a flag of scope `All` is accepted before or after
//! any subcommand, the others only by the subcommands that use them, so each subcommand's
//! `--help` lists what matters to it. `LASTSEEN_*` variables and the `--config` file work for
//! every subcommand (they are read by the settings loader, not by clap).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Arg, ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::settings::{SPECS, Scope, Settings, Spec};

/// lastseen: a WhatsApp-style online/offline presence server.
#[derive(Debug, Parser)]
#[command(name = "lastseen", version, about, propagate_version = true)]
pub struct Cli {
    /// TOML file with settings (lowest precedence after the defaults).
    #[arg(long, global = true, env = "LASTSEEN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
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

/// A parsed command line: the subcommand and the settings flags it was given, by key.
#[derive(Debug)]
pub struct Invocation {
    /// What was asked.
    pub cli: Cli,
    /// Settings flags given on the command line, as raw text, by setting key.
    pub flags: BTreeMap<&'static str, String>,
}

/// Whether the subcommand `name` (`serve`, `check-offline-users`, ...) offers the flags of
/// settings of `scope` (`All` is offered by the top-level command to every subcommand).
fn offers(name: &str, scope: Scope) -> bool {
    match scope {
        Scope::All => false,
        Scope::Presence => matches!(name, "serve" | "check-offline-users"),
        Scope::Serve => name == "serve",
    }
}

fn settings_arg(spec: &Spec, defaults: &serde_json::Value) -> Arg {
    let default = match &defaults[spec.key] {
        serde_json::Value::Null => "unset".to_owned(),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    Arg::new(spec.key)
        .long(spec.flag())
        .value_name(spec.kind.value_name())
        .help(format!(
            "{} [default: {default}] [env: {}]",
            spec.help,
            spec.env()
        ))
}

/// The command line with every settings flag in place.
pub fn command() -> clap::Command {
    let defaults = serde_json::to_value(Settings::default()).unwrap_or_default();
    let mut command = Cli::command();
    for spec in SPECS.iter().filter(|s| s.scope == Scope::All) {
        command = command.arg(settings_arg(spec, &defaults).global(true));
    }
    let names: Vec<String> = command
        .get_subcommands()
        .map(|c| c.get_name().to_owned())
        .collect();
    for name in names {
        let args: Vec<Arg> = SPECS
            .iter()
            .filter(|spec| offers(&name, spec.scope))
            .map(|spec| settings_arg(spec, &defaults))
            .collect();
        command = command.mut_subcommand(&name, |sub| sub.args(args));
    }
    command
}

/// The settings flags present in `matches` (of the subcommand that ran, which also holds the
/// global ones).
fn settings_flags(matches: &ArgMatches) -> BTreeMap<&'static str, String> {
    let mut innermost = matches;
    while let Some((_, sub)) = innermost.subcommand() {
        innermost = sub;
    }
    SPECS
        .iter()
        .filter_map(|spec| {
            let value = innermost.try_get_one::<String>(spec.key).ok().flatten()?;
            Some((spec.key, value.clone()))
        })
        .collect()
}

/// Parses `args` (the first being the program name).
///
/// # Errors
/// clap's error for a bad command line (it prints itself, with usage, and exits 2).
pub fn parse_from<I, T>(args: I) -> Result<Invocation, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    Ok(Invocation {
        cli,
        flags: settings_flags(&matches),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn settings_flags_are_read_for_the_subcommand_that_uses_them() {
        let run = parse_from(["lastseen", "serve", "--bind", "127.0.0.1:0"]).unwrap();
        assert_eq!(run.flags["bind"], "127.0.0.1:0");
        let run = parse_from(["lastseen", "check-offline-users", "--dry-run"]).unwrap();
        assert!(matches!(
            run.cli.command,
            Command::CheckOfflineUsers { dry_run: true }
        ));
        let run = parse_from([
            "lastseen",
            "--database-url",
            "sqlite://x.db",
            "check-offline-users",
            "--inactivity-timeout",
            "1m",
        ])
        .unwrap();
        assert_eq!(run.flags["database_url"], "sqlite://x.db");
        assert_eq!(run.flags["inactivity_timeout"], "1m");
        let run = parse_from([
            "lastseen",
            "user",
            "create",
            "ahmad",
            "--database-url",
            "sqlite://y.db",
        ])
        .unwrap();
        assert_eq!(run.flags["database_url"], "sqlite://y.db");
    }

    #[test]
    fn a_subcommand_refuses_the_flags_it_does_not_use() {
        let refused = parse_from(["lastseen", "user", "create", "ahmad", "--bind", "1.2.3.4:5"]);
        assert!(refused.is_err());
        let refused = parse_from(["lastseen", "migrate", "--persist-interval", "1s"]);
        assert!(refused.is_err());
    }

    #[test]
    fn every_setting_has_a_flag_somewhere() {
        let command = command();
        for spec in SPECS {
            let flag = spec.flag();
            let offered = command
                .get_arguments()
                .chain(command.get_subcommands().flat_map(|c| c.get_arguments()))
                .any(|arg| arg.get_long() == Some(flag.as_str()));
            assert!(offered, "--{flag}");
        }
    }
}
