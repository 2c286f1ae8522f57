//! The one-shot subcommands: `migrate`, `user create` and `check-offline-users`.
//!
//! Each works directly on the database. Those that change what a running server owns
//! (`migrate`, `check-offline-users` without `--dry-run`) take the SQLite file's lock and so
//! refuse to run next to a server on the same file; `user create` only adds a row and runs
//! either way.

use std::io::BufRead;

use anyhow::{Context, bail};
use chrono::Utc;

use crate::auth::{self, Authenticator};
use crate::bus::Bus;
use crate::domain::{Password, Username};
use crate::engine::Maintenance;
use crate::engine::redis::RedisBackend;
use crate::settings::Settings;
use crate::store::{self, Liveness, LockError, Store, StoreError};

async fn open(settings: &Settings) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    let store = store::connect(&settings.database_url)
        .await
        .context("while opening the database")?;
    store.migrate().await.context("while applying migrations")?;
    Ok(store)
}

/// `lastseen migrate`: applies pending migrations (refused while a server holds the SQLite
/// file: it would change the tables under it).
///
/// # Errors
/// If the database is held by a server, or cannot be opened or migrated.
pub async fn migrate(settings: &Settings) -> anyhow::Result<String> {
    let _lock = store::lock_data_file(&settings.database_url)?;
    open(settings).await?;
    Ok("Migrations applied".to_owned())
}

/// `lastseen user create`: creates a user; returns what to print (the generated password, if
/// one was generated).
///
/// # Errors
/// Invalid username or password, a taken name, or database failures.
pub async fn create_user(
    settings: &Settings,
    username: &str,
    admin: bool,
    password_from: Option<&mut dyn BufRead>,
) -> anyhow::Result<String> {
    let username = Username::parse(username)?;
    let (password, generated) = match password_from {
        Some(input) => {
            let mut line = String::new();
            input
                .read_line(&mut line)
                .context("while reading the password from stdin")?;
            let line = line.trim_end_matches(['\r', '\n']);
            (Password::parse(line)?, false)
        }
        None => (Password::parse(&auth::random_secret(12))?, true),
    };
    let shown = generated.then(|| String::from_utf8_lossy(password.expose()).into_owned());
    let store = open(settings).await?;
    let authenticator = Authenticator::new(store, settings.max_sessions_per_user, Bus::local())?;
    let user = match authenticator.register(&username, password, admin).await {
        Ok(user) => user,
        Err(auth::AuthError::Store(store::StoreError::Conflict(_))) => {
            bail!("username {:?} is already taken", username.as_str())
        }
        Err(e) => return Err(e.into()),
    };
    let role = if admin { "admin" } else { "user" };
    let mut out = format!("Created {role} {:?} with id {}", user.username, user.id);
    if let Some(password) = shown {
        out.push_str(&format!("\nPassword (shown once): {password}"));
    }
    Ok(out)
}

/// `lastseen check-offline-users`: marks offline the users stored as online whose sessions have
/// all ended (no activity within the timeout, or a closed socket's grace is over), and ends
/// their stored sessions so a restart keeps them offline. With `redis_url` set it first lets the
/// shared presence end what is due (as any node's sweep would, once) and stores the result.
///
/// # Errors
/// Database or Redis failures.
pub async fn check_offline_users(settings: &Settings, dry_run: bool) -> anyhow::Result<String> {
    // A server on the same SQLite file already does this, within a second of each deadline;
    // writing next to its engine would only race it. Counting is harmless.
    let _lock = if dry_run {
        None
    } else {
        store::lock_data_file(&settings.database_url)?
    };
    let store = open(settings).await?;
    let mut count = 0;
    if let (Some(url), false) = (settings.redis_url(), dry_run) {
        count += sweep_shared_presence(settings, url, store.as_ref()).await?;
    }
    let live = Liveness::at(Utc::now(), settings.inactivity_timeout);
    count += store.mark_inactive_offline(live, dry_run).await?;
    Ok(if dry_run {
        format!("Would mark {count} users offline")
    } else {
        format!("Marked {count} users offline")
    })
}

/// How `main` reports a failed subcommand: one line (each cause once; a cause that explains
/// itself fully, such as a database set-up problem, alone) and the exit status (2 for a data
/// file held by another process, as for a bad setting; 1 otherwise).
pub fn failure(error: &anyhow::Error) -> (String, u8) {
    for cause in error.chain() {
        if let Some(lock) = cause.downcast_ref::<LockError>() {
            let status = if matches!(lock, LockError::Held { .. }) {
                2
            } else {
                1
            };
            return (lock.to_string(), status);
        }
        if let Some(setup @ StoreError::Setup(_)) = cause.downcast_ref::<StoreError>() {
            return (setup.to_string(), 1);
        }
    }
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    (line, 1)
}

/// Runs one sweep of the shared presence in Redis and writes what it changed; returns how many
/// users went offline.
async fn sweep_shared_presence(
    settings: &Settings,
    url: &str,
    store: &dyn Store,
) -> anyhow::Result<u64> {
    let stop = tokio_util::sync::CancellationToken::new();
    let backend = RedisBackend::connect(
        url,
        &settings.redis_key_prefix,
        crate::startup::redis_timing(settings),
        stop.clone(),
    )
    .await
    .context("while connecting to Redis (redis_url)")?;
    let offline = backend.expire_due().await.context("while sweeping Redis")?;
    let changed = backend.take_dirty().await;
    store
        .write_presence(&changed)
        .await
        .context("while storing what the sweep changed")?;
    stop.cancel();
    Ok(u64::try_from(offline).unwrap_or(u64::MAX))
}
