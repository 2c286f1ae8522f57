//! Direct SQL seeding of a spawned server's SQLite database, before the server starts.
//!
//! Creating users through the API costs an Argon2 hash per registration and another per login
//! (about 20 ms each in a release build), so 10,000 users would take minutes of CPU. Here one
//! user is created through `lastseen user create` (one real hash) and the others are inserted
//! with a copy of its password hash, in single statements. Sessions get fresh random tokens of
//! which only the SHA-256 is stored, exactly as a login would. This couples the tool to the
//! SQLite schema in `migrations/sqlite`; a schema change makes these statements fail loudly.

use std::str::FromStr;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::target::ServerFiles;

/// The password of every user this tool creates.
pub const PASSWORD: &str = "bench-password-1";

/// A timestamp as the server stores it: fixed-width RFC 3339 with microseconds.
pub fn ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A fresh access token, shaped like the server's (256 random bits, hex).
pub fn new_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// The database of `files`, migrated by the server binary itself, opened for seeding.
///
/// # Errors
/// If migrating or opening fails.
pub async fn open(files: &ServerFiles) -> anyhow::Result<SqlitePool> {
    files.run(&["migrate"], None)?;
    let options = SqliteConnectOptions::from_str(&files.database_url())?
        .journal_mode(SqliteJournalMode::Wal)
        .foreign_keys(true);
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .context("while opening the database for seeding")
}

/// The password hash of a user made with [`PASSWORD`] through the server's own CLI.
///
/// # Errors
/// If the user cannot be created or read.
pub async fn password_hash(
    files: &ServerFiles,
    pool: &SqlitePool,
    prefix: &str,
) -> anyhow::Result<String> {
    let template = format!("{prefix}template");
    let existing: Option<String> =
        sqlx::query_scalar("select password_hash from users where username = ?")
            .bind(&template)
            .fetch_optional(pool)
            .await?;
    if let Some(hash) = existing {
        return Ok(hash);
    }
    files.run(
        &["user", "create", &template, "--password-stdin"],
        Some(PASSWORD),
    )?;
    sqlx::query_scalar("select password_hash from users where username = ?")
        .bind(&template)
        .fetch_one(pool)
        .await
        .context("while reading the template user's hash")
}

/// State the seeded users are stored with.
pub struct Presence {
    /// Stored as `online` with this `last_seen` (as after a crash), or offline and never seen.
    pub online_since: Option<DateTime<Utc>>,
}

/// Creates users `{prefix}0` .. `{prefix}{count-1}` (existing names are kept).
///
/// # Errors
/// Database failures.
pub async fn users(
    pool: &SqlitePool,
    prefix: &str,
    count: u64,
    hash: &str,
    presence: &Presence,
) -> anyhow::Result<()> {
    let (status, last_seen) = match presence.online_since {
        Some(at) => ("online", Some(ts(at))),
        None => ("offline", None),
    };
    let Some(last) = count.checked_sub(1) else {
        return Ok(());
    };
    sqlx::query(
        "with recursive n(i) as (select 0 union all select i + 1 from n where i < ?1) \
         insert or ignore into users \
         (username, password_hash, is_admin, online_status, last_seen, created_at) \
         select ?2 || i, ?3, 0, ?4, ?5, ?6 from n",
    )
    .bind(i64::try_from(last)?)
    .bind(prefix)
    .bind(hash)
    .bind(status)
    .bind(last_seen)
    .bind(ts(Utc::now()))
    .execute(pool)
    .await
    .context("while inserting users")?;
    Ok(())
}

/// Opens one session for each of `usernames`, last active at `at`; returns their tokens in the
/// same order.
///
/// # Errors
/// Database failures, or a name without a user.
pub async fn sessions(
    pool: &SqlitePool,
    usernames: &[String],
    at: DateTime<Utc>,
) -> anyhow::Result<Vec<String>> {
    let tokens: Vec<String> = usernames.iter().map(|_| new_token()).collect();
    let rows: Vec<(&str, String)> = usernames
        .iter()
        .zip(&tokens)
        .map(|(name, token)| (name.as_str(), hex::encode(Sha256::digest(token.as_bytes()))))
        .collect();
    let done = sqlx::query(
        "insert into sessions (user_id, token_hash, created_at, last_activity) \
         select u.user_id, unhex(j.value ->> 1), ?2, ?2 \
         from json_each(?1) j join users u on u.username = j.value ->> 0",
    )
    .bind(serde_json::to_string(&rows)?)
    .bind(ts(at))
    .execute(pool)
    .await
    .context("while inserting sessions")?;
    anyhow::ensure!(
        done.rows_affected() == usernames.len() as u64,
        "created {} sessions for {} users",
        done.rows_affected(),
        usernames.len()
    );
    Ok(tokens)
}
