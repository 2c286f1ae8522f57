//! SQLite implementation of [`Store`], the embedded default.
//!
//! WAL journal with `synchronous=NORMAL`: readers never block the writer, and a crash loses at
//! most the last transactions, never integrity. Timestamps are fixed-width RFC 3339 text so they
//! compare correctly in SQL. Lists of ids and batches travel as one JSON value per statement
//! (`json_each`): sqlx runs SQLite on a worker thread and every statement and every result row
//! is a hand-off to it, which made a statement or row per user the main cost of a flush and of
//! a restart. Statements both SQL backends share are in `sql`; privacy data is in the
//! `privacy` submodule.

mod priority;
mod privacy;

use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::StreamExt;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Connection, Row, migrate::Migrator};

use super::sql::{self, LIVE_SESSION, LiveRow, USER_COLUMNS, seq_from_db, seq_to_db};
use super::{
    CoalescedBatch, Conflict, Liveness, Missing, SessionInfo, SessionRecord, Store, StoreError,
    UserRecord, WriteHealth,
};
use crate::domain::{
    Device, ManualStatus, Platform, PresenceStatus, PresenceWrite, PrivacyChange, RestoredUser,
    SessionId, StoredPrivacy, StoredSession, UserId, Username, next_seq, with_rfc3339,
};

super::events::impl_event_log!(SqliteStore);
super::samples::impl_online_samples!(SqliteStore);

static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// Users per statement of a presence write, bounding the size of one JSON parameter.
const WRITE_CHUNK: usize = 4096;
/// Width of the user-id ranges `load_live` reads in one statement (and one JSON result).
const LOAD_PAGE_IDS: i64 = 65_536;

/// A pool of SQLite connections to one database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    health: Arc<WriteHealth>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if the file cannot be opened.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let file = super::datafile::database_file(url)?;
        if let Some(file) = &file {
            super::datafile::check_directory(file)?;
        }
        let options = SqliteConnectOptions::from_str(url).map_err(StoreError::Unavailable)?;
        if !url.contains(":memory:") {
            create_private(options.get_filename())?;
        }
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true)
            .thread_name(priority::thread_name);
        // An in-memory database exists per connection, so it must be a single one.
        let max = if url.contains(":memory:") { 1 } else { 4 };
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .after_connect(|_, _| {
                Box::pin(async {
                    priority::lower_worker_threads();
                    Ok(())
                })
            })
            .after_release(|conn, _| Box::pin(ended_cleanly(conn)))
            .connect_with(options)
            .await
            .map_err(|error| match (&file, &error) {
                // SQLite's own words ("unable to open database file") name no path.
                (Some(file), sqlx::Error::Database(db)) => StoreError::Setup(format!(
                    "cannot open the SQLite database {}: {}",
                    file.display(),
                    db.message()
                )),
                _ => StoreError::Unavailable(error),
            })?;
        Ok(Self {
            pool,
            health: Arc::default(),
        })
    }
}

/// Creates the database file readable and writable by its owner only (0600) if it is missing:
/// it holds password and token hashes. SQLite gives the `-wal` and `-shm` files it creates the
/// database file's permissions, so they are 0600 too. An existing file keeps its mode, which the
/// operator may have chosen. (A one-off blocking call at start-up.)
fn create_private(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Unavailable(sqlx::Error::Io(e))),
    }
}

/// Whether a connection coming back to the pool may be reused: not if its last transaction did
/// not end cleanly. A transaction dropped after an error queues a ROLLBACK; when that fails too
/// (on a full disk SQLite may already have rolled back on its own, or may not), the connection
/// can still hold an open transaction and SQLite's write lock. Back in the pool it would make
/// every later statement on it part of that transaction, acknowledged but never committed, and
/// block the other connections. Closing it instead ends the transaction and frees the lock.
async fn ended_cleanly(conn: &mut sqlx::SqliteConnection) -> Result<bool, sqlx::Error> {
    if conn.is_in_transaction() {
        // Runs after the queued ROLLBACK, which ends the transaction when it succeeds.
        conn.ping().await?;
    }
    Ok(!conn.is_in_transaction())
}

/// Formats a timestamp as stored: `2026-11-27T10:30:00.123456Z`.
fn ts(at: DateTime<Utc>) -> String {
    with_rfc3339(&at, SecondsFormat::Micros, str::to_owned)
}

fn parse_ts(raw: &str) -> Result<DateTime<Utc>, StoreError> {
    if let Some(at) = parse_stored_ts(raw) {
        return Ok(at);
    }
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Other(anyhow::anyhow!("bad timestamp {raw:?} in database: {e}")))
}

/// The form [`ts`] writes, `2026-11-29T20:19:35.123456Z`, read without a general parser (a
/// restart reads two per live session); `None` for anything else, which the caller then parses
/// as RFC 3339.
fn parse_stored_ts(raw: &str) -> Option<DateTime<Utc>> {
    let b = raw.as_bytes();
    if b.len() != 27 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' || b[19] != b'.' || b[26] != b'Z' {
        return None;
    }
    let num = |from: usize, to: usize| {
        b[from..to].iter().try_fold(0_u32, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    let date =
        chrono::NaiveDate::from_ymd_opt(i32::try_from(num(0, 4)?).ok()?, num(5, 7)?, num(8, 10)?)?;
    let time = chrono::NaiveTime::from_hms_micro_opt(
        num(11, 13)?,
        num(14, 16)?,
        num(17, 19)?,
        num(20, 26)?,
    )?;
    Some(date.and_time(time).and_utc())
}

fn parse_opt_ts(raw: Option<String>) -> Result<Option<DateTime<Utc>>, StoreError> {
    raw.as_deref().map(parse_ts).transpose()
}

/// The flush's user rows for `json_each`: `[[id, "status", "last_seen" or null, seq], …]`.
///
/// Written straight into one string: the values are integers, status names and timestamps in
/// [`ts`]'s form, none of which needs escaping, so a row allocates nothing (serialising tuples
/// built a `String` per timestamp and then scanned each for characters to escape, 4% of a
/// server's CPU when every heartbeat dirties its user).
fn user_rows(writes: &[&PresenceWrite]) -> String {
    let mut json = String::with_capacity(2 + writes.len() * 64);
    json.push('[');
    for (i, write) in writes.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        let _ = write!(json, "[{},\"{}\",", write.user_id.0, write.status.as_str());
        match write.last_seen {
            Some(at) => push_ts(&mut json, at),
            None => json.push_str("null"),
        }
        let _ = write!(json, ",{}]", seq_to_db(write.seq));
    }
    json.push(']');
    json
}

/// The flush's session rows for `json_each`: `[[id, "last_activity", "expires_at"], …]`
/// (written as [`user_rows`] is).
fn session_rows(sessions: &[StoredSession]) -> String {
    let mut json = String::with_capacity(2 + sessions.len() * 72);
    json.push('[');
    for (i, session) in sessions.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        let _ = write!(json, "[{},", session.id.0);
        push_ts(&mut json, session.last_activity);
        json.push(',');
        push_ts(&mut json, session.expires_at);
        json.push(']');
    }
    json.push(']');
    json
}

/// Appends `at` in [`ts`]'s form as a JSON string.
fn push_ts(json: &mut String, at: DateTime<Utc>) {
    json.push('"');
    with_rfc3339(&at, SecondsFormat::Micros, |text| json.push_str(text));
    json.push('"');
}

fn to_json<T: serde::Serialize>(rows: &T) -> Result<String, StoreError> {
    serde_json::to_string(rows).map_err(|e| StoreError::Other(e.into()))
}

fn ids_json(users: &[UserId]) -> Result<String, StoreError> {
    to_json(&users.iter().map(|id| id.0).collect::<Vec<_>>())
}

/// Maps a failed statement that breaks no rule of ours.
fn other(error: sqlx::Error) -> StoreError {
    sql::classify(error, None, None, cannot_write)
}

/// Maps a failed statement that may break a uniqueness rule or name a missing user.
fn refused(error: sqlx::Error, conflict: Conflict, missing: Missing) -> StoreError {
    sql::classify(error, Some(conflict), Some(missing), cannot_write)
}

/// Maps a failed statement that may name a user who does not exist.
fn unknown_user(error: sqlx::Error) -> StoreError {
    sql::classify(error, None, Some(Missing::User), cannot_write)
}

/// Whether SQLite failed because it cannot take the statement now but may later: busy or
/// locked past the busy timeout, out of memory, read-only, an I/O error, a full disk, a file
/// that cannot be opened, a lock protocol error (primary result codes, from the extended code
/// sqlx reports).
fn cannot_write(error: &sqlx::Error) -> bool {
    const TRANSIENT: [i32; 8] = [5, 6, 7, 8, 10, 13, 14, 15];
    let sqlx::Error::Database(db) = error else {
        return false;
    };
    db.code()
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|extended| TRANSIENT.contains(&(extended & 0xff)))
}

/// A user with a manual status but no live session, to restore.
fn restored_without_sessions(user: UserRecord) -> RestoredUser {
    RestoredUser {
        user_id: user.id,
        seq: user.presence_seq,
        last_seen: user.last_seen,
        sessions: Vec::new(),
        manual: user.manual,
    }
}

/// The one row an `insert ... returning` gave back.
///
/// Such statements are always read with `fetch_all`: SQLite hands out the `RETURNING` row
/// before the statement finishes, and the commit of an autocommit statement (which can fail,
/// on a full disk say) happens only when it does. Reading just the first row would acknowledge
/// a row that the failed commit then discards.
fn returned<T>(rows: Vec<T>) -> Result<T, StoreError> {
    rows.into_iter()
        .next()
        .ok_or_else(|| StoreError::Other(anyhow::anyhow!("insert returned no row")))
}

fn user_from_row(row: &SqliteRow) -> Result<UserRecord, StoreError> {
    let status: String = row.try_get("online_status").map_err(other)?;
    Ok(UserRecord {
        id: UserId(row.try_get("user_id").map_err(other)?),
        username: row.try_get("username").map_err(other)?,
        password_hash: row.try_get("password_hash").map_err(other)?,
        is_admin: row.try_get("is_admin").map_err(other)?,
        online_status: PresenceStatus::from_column(&status),
        last_seen: parse_opt_ts(row.try_get("last_seen").map_err(other)?)?,
        presence_seq: seq_from_db(row.try_get("presence_seq").map_err(other)?),
        manual: sql::manual_from_columns(
            &row.try_get::<String, _>("status_mode").map_err(other)?,
            row.try_get("status_text").map_err(other)?,
            row.try_get("status_emoji").map_err(other)?,
            parse_opt_ts(row.try_get("status_expires_at").map_err(other)?)?,
        ),
    })
}

/// A live session as `load_live` aggregates it into JSON: user, session, last activity,
/// expiry, platform, seq, last seen. Strings borrow from the JSON text (timestamps and names
/// never hold an escape), so decoding a row allocates nothing.
type JsonLiveRow<'a> = (
    i64,
    i64,
    &'a str,
    Option<&'a str>,
    &'a str,
    i64,
    Option<&'a str>,
);

fn live_row(row: JsonLiveRow<'_>) -> Result<LiveRow, StoreError> {
    let (user_id, session_id, last_activity, expires_at, platform, presence_seq, last_seen) = row;
    let opt_ts = |raw: Option<&str>| raw.map(parse_ts).transpose();
    Ok(LiveRow {
        user_id,
        session_id,
        last_activity: parse_ts(last_activity)?,
        expires_at: opt_ts(expires_at)?,
        platform: Platform::from_column(platform),
        presence_seq,
        last_seen: opt_ts(last_seen)?,
        // Set afterwards for the few users that have one.
        manual: ManualStatus::default(),
    })
}

impl SqliteStore {
    /// The live sessions of users `from` to `from + LOAD_PAGE_IDS - 1`, in one JSON row,
    /// decoded and ordered by user (see [`Store::load_live`]).
    async fn live_page(&self, live: Liveness, from: i64) -> Result<Vec<LiveRow>, StoreError> {
        let page: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "select json_group_array(json_array(s.user_id, s.session_id, s.last_activity, \
             s.expires_at, s.platform, u.presence_seq, u.last_seen)) \
             from sessions s join users u on u.user_id = s.user_id \
             where ({LIVE_SESSION}) and s.user_id >= $3 and s.user_id < $4"
        )))
        .bind(ts(live.now))
        .bind(ts(live.inactive_before))
        .bind(from)
        .bind(from.saturating_add(LOAD_PAGE_IDS))
        .fetch_one(&self.pool)
        .await
        .map_err(other)?;
        let mut rows: Vec<JsonLiveRow<'_>> =
            serde_json::from_str(&page).map_err(|e| StoreError::Other(e.into()))?;
        // Aggregation order is unspecified; each user's sessions must be adjacent.
        rows.sort_unstable_by_key(|row| (row.0, row.1));
        rows.into_iter().map(live_row).collect()
    }

    async fn users_where(
        &self,
        condition: &str,
        bind: String,
    ) -> Result<Vec<UserRecord>, StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "select {USER_COLUMNS} from users where {condition}"
        )))
        .bind(bind)
        .fetch_all(&self.pool)
        .await
        .map_err(other)?
        .iter()
        .map(user_from_row)
        .collect()
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Other(e.into()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("select 1")
            .execute(&self.pool)
            .await
            .map_err(StoreError::Unavailable)?;
        if !self.health.failing() {
            return Ok(());
        }
        let probe = sqlx::query(sql::PROBE_WRITE)
            .bind(ts(Utc::now()))
            .execute(&self.pool)
            .await;
        self.health.observe(probe.map(drop).map_err(other))
    }

    async fn create_user(
        &self,
        username: &Username,
        password_hash: &str,
        is_admin: bool,
    ) -> Result<UserRecord, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "insert into users (username, password_hash, is_admin, created_at) \
             values ($1, $2, $3, $4) returning {USER_COLUMNS}"
        )))
        .bind(username.as_str())
        .bind(password_hash)
        .bind(is_admin)
        .bind(ts(Utc::now()))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| refused(e, Conflict::UsernameTaken, Missing::User));
        let row = returned(self.health.observe(rows)?)?;
        user_from_row(&row)
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let mut users = self
            .users_where("lower(username) = lower($1)", username.to_owned())
            .await?;
        Ok(users.pop())
    }

    async fn user_by_external_id(
        &self,
        external_id: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        let mut users = self
            .users_where("external_id = $1", external_id.to_owned())
            .await?;
        Ok(users.pop())
    }

    async fn external_user(
        &self,
        external_id: &str,
        username: &Username,
    ) -> Result<UserRecord, StoreError> {
        // Either unique rule (the name, the external id) turns the insert into a no-op.
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "insert into users (username, password_hash, is_admin, created_at, external_id) \
             values ($1, $2, 0, $3, $4) on conflict do nothing returning {USER_COLUMNS}"
        )))
        .bind(username.as_str())
        .bind(super::NO_PASSWORD)
        .bind(ts(Utc::now()))
        .bind(external_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| refused(e, Conflict::UsernameTaken, Missing::User));
        if let Some(row) = self.health.observe(rows)?.first() {
            return user_from_row(row);
        }
        self.user_by_external_id(external_id)
            .await?
            .ok_or(StoreError::Conflict(Conflict::UsernameTaken))
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        Ok(self.users_by_ids(&[id]).await?.pop())
    }

    async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<UserRecord>, StoreError> {
        let condition = "user_id in (select value from json_each($1))";
        self.users_where(condition, ids_json(ids)?).await
    }

    async fn search_users(
        &self,
        needle: &str,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError> {
        let condition = sql::search_condition(after, limit);
        self.users_where(&condition, sql::like_pattern(needle))
            .await
    }

    async fn create_device_session(
        &self,
        user: UserId,
        token_hash: &[u8],
        at: DateTime<Utc>,
        device: &Device,
    ) -> Result<SessionId, StoreError> {
        let ids: Result<Vec<i64>, _> = sqlx::query_scalar(
            "insert into sessions \
             (user_id, token_hash, created_at, last_activity, platform, device_name) \
             values ($1, $2, $3, $3, $4, $5) returning session_id",
        )
        .bind(user.0)
        .bind(token_hash)
        .bind(ts(at))
        .bind(device.platform.as_str())
        .bind(device.name.as_deref())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| refused(e, Conflict::TokenInUse, Missing::User));
        returned(self.health.observe(ids)?).map(SessionId)
    }

    async fn create_token_session(
        &self,
        user: UserId,
        token_hash: &[u8],
        at: DateTime<Utc>,
        token_expires_at: DateTime<Utc>,
    ) -> Result<Option<SessionId>, StoreError> {
        let ids: Result<Vec<i64>, _> = sqlx::query_scalar(sql::CREATE_TOKEN_SESSION)
            .bind(user.0)
            .bind(token_hash)
            .bind(ts(at))
            .bind(ts(token_expires_at))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| refused(e, Conflict::TokenInUse, Missing::User));
        Ok(self.health.observe(ids)?.first().copied().map(SessionId))
    }

    async fn sessions_of(&self, user: UserId) -> Result<Vec<SessionInfo>, StoreError> {
        let rows: Vec<(i64, String, Option<String>, String, String)> =
            sqlx::query_as(sql::SESSIONS_OF)
                .bind(user.0)
                .fetch_all(&self.pool)
                .await
                .map_err(other)?;
        rows.into_iter()
            .map(|(id, platform, name, created_at, last_activity)| {
                Ok(SessionInfo {
                    id: SessionId(id),
                    platform: Platform::from_column(&platform),
                    name,
                    created_at: parse_ts(&created_at)?,
                    last_activity: parse_ts(&last_activity)?,
                })
            })
            .collect()
    }

    async fn set_manual_status(
        &self,
        user: UserId,
        status: &ManualStatus,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(sql::SET_STATUS)
            .bind(user.0)
            .bind(status.mode.as_str())
            .bind(status.text.as_deref())
            .bind(status.emoji.as_deref())
            .bind(status.expires_at.map(ts))
            .execute(&self.pool)
            .await
            .map_err(other);
        match self.health.observe(done)?.rows_affected() {
            0 => Err(StoreError::NotFound(Missing::User)),
            _ => Ok(()),
        }
    }

    async fn session_by_token(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<SessionRecord>, StoreError> {
        sql::Sessions(&self.pool)
            .by_token(token_hash)
            .await
            .map_err(other)
    }

    async fn delete_session(&self, session: SessionId) -> Result<Option<Vec<u8>>, StoreError> {
        let deleted = async {
            let mut tx = self.pool.begin().await?;
            let row: Option<(Vec<u8>, Option<String>)> =
                sqlx::query_as(sql::DELETE_SESSION_RETURNING_EXPIRY)
                    .bind(session.0)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some((hash, Some(until))) = &row {
                sqlx::query(sql::PURGE_REVOKED)
                    .bind(ts(Utc::now()))
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(sql::REVOKE_TOKEN)
                    .bind(hash)
                    .bind(until)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(row.map(|(hash, _)| hash))
        };
        self.health.observe(deleted.await.map_err(other))
    }

    async fn sessions_beyond(
        &self,
        user: UserId,
        keep: usize,
    ) -> Result<Vec<SessionId>, StoreError> {
        sql::Sessions(&self.pool)
            .beyond(user, keep)
            .await
            .map_err(other)
    }

    async fn write_presence(&self, batch: &[PresenceWrite]) -> Result<(), StoreError> {
        let written = async {
            let mut tx = self.pool.begin().await.map_err(other)?;
            let batch = CoalescedBatch::of(batch);
            for chunk in batch.users.chunks(WRITE_CHUNK) {
                // As on PostgreSQL: the status of the newest transition wins and `last_seen`
                // only moves forward, whoever writes (timestamps are fixed-width text).
                sqlx::query(
                    "update users set online_status = case when j.value ->> 3 >= presence_seq \
                     then j.value ->> 1 else online_status end, \
                     last_seen = case when last_seen is null or j.value ->> 2 > last_seen \
                     then j.value ->> 2 else last_seen end, \
                     presence_seq = max(presence_seq, j.value ->> 3) \
                     from json_each($1) as j where users.user_id = j.value ->> 0",
                )
                .bind(user_rows(chunk))
                .execute(&mut *tx)
                .await
                .map_err(other)?;
            }
            for chunk in batch.sessions.chunks(WRITE_CHUNK) {
                sqlx::query(
                    "update sessions set last_activity = max(last_activity, j.value ->> 1), \
                     expires_at = j.value ->> 2 \
                     from json_each($1) as j where sessions.session_id = j.value ->> 0",
                )
                .bind(session_rows(chunk))
                .execute(&mut *tx)
                .await
                .map_err(other)?;
            }
            let expired: Vec<_> = batch
                .users
                .iter()
                .filter_map(|w| Some((w.user_id.0, ts(w.expired_status?))))
                .collect();
            if !expired.is_empty() {
                sqlx::query(
                    "update users set status_mode = 'auto', status_text = null, \
                     status_emoji = null, status_expires_at = null \
                     from json_each($1) as j where users.user_id = j.value ->> 0 \
                     and users.status_expires_at = j.value ->> 1",
                )
                .bind(to_json(&expired)?)
                .execute(&mut *tx)
                .await
                .map_err(other)?;
            }
            tx.commit().await.map_err(other)
        };
        self.health.observe(written.await)
    }

    async fn load_live(&self, live: Liveness) -> Result<Vec<RestoredUser>, StoreError> {
        // One JSON row per range of user ids rather than one row per session (see the module
        // docs), two ranges at a time on two connections: SQLite builds one page while the
        // other is decoded. Each page is its own read snapshot, which is enough: a user's
        // sessions are all in one page, and users are independent of each other.
        let max_id: Option<i64> = sqlx::query_scalar("select max(user_id) from sessions")
            .fetch_one(&self.pool)
            .await
            .map_err(other)?;
        let step = usize::try_from(LOAD_PAGE_IDS).unwrap_or(usize::MAX);
        let starts = (0..=max_id.unwrap_or(-1)).step_by(step);
        let mut pages =
            futures_util::stream::iter(starts.map(|from| self.live_page(live, from))).buffered(2);
        let mut users: Vec<RestoredUser> = Vec::new();
        while let Some(rows) = pages.next().await {
            sql::group_live(rows?, live.timeout(), &mut users);
        }
        // Manual statuses come separately, as few users have one: onto the users with live
        // sessions (sorted by id), and as users of their own for the others.
        let with_status = sqlx::query(sqlx::AssertSqlSafe(format!(
            "select {USER_COLUMNS} from users where {} or status_expires_at is not null",
            sql::HAS_STATUS
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(other)?;
        let mut others = Vec::new();
        for row in &with_status {
            let user = user_from_row(row)?;
            match users.binary_search_by_key(&user.id, |u| u.user_id) {
                Ok(at) => users[at].manual = user.manual,
                Err(_) if !user.manual.is_default() => {
                    others.push(restored_without_sessions(user));
                }
                Err(_) => {}
            }
        }
        sql::merge_statuses(&mut users, others);
        Ok(users)
    }

    async fn mark_inactive_offline(
        &self,
        live: Liveness,
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        if dry_run {
            let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "select count(*) from users where {}",
                sql::inactive_users()
            )))
            .bind(ts(live.now))
            .bind(ts(live.inactive_before))
            .fetch_one(&self.pool)
            .await
            .map_err(other)?;
            return Ok(u64::try_from(count).unwrap_or(0));
        }
        // `sql::end_sessions_of_inactive_users` and `sql::mark_offline`, with the users that
        // have a live session collected once into a temporary table: each statement would
        // otherwise look up every online user's sessions again (1.1 s each at 1,000,000 online
        // users, against 0.6 s for the table and 0.15 s per statement).
        let marked = async {
            let mut tx = self.pool.begin().await.map_err(other)?;
            for statement in [
                "drop table if exists temp.live_users",
                "create temp table live_users (user_id integer primary key)",
            ] {
                sqlx::query(statement)
                    .execute(&mut *tx)
                    .await
                    .map_err(other)?;
            }
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "insert or ignore into temp.live_users select s.user_id from sessions s \
                 where {LIVE_SESSION}"
            )))
            .bind(ts(live.now))
            .bind(ts(live.inactive_before))
            .execute(&mut *tx)
            .await
            .map_err(other)?;
            let inactive = "online_status = 'online' and user_id not in temp.live_users";
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "update sessions set expires_at = $1 \
                 where (expires_at is null or expires_at > $1) \
                 and user_id in (select user_id from users where {inactive})"
            )))
            .bind(ts(live.now))
            .execute(&mut *tx)
            .await
            .map_err(other)?;
            let done = sqlx::query(sqlx::AssertSqlSafe(format!(
                "update users set online_status = 'offline', presence_seq = case \
                 when presence_seq + 1 > $1 then presence_seq + 1 else $1 end where {inactive}"
            )))
            .bind(seq_to_db(next_seq(0, Utc::now())))
            .execute(&mut *tx)
            .await
            .map_err(other)?;
            sqlx::query("drop table temp.live_users")
                .execute(&mut *tx)
                .await
                .map_err(other)?;
            tx.commit().await.map_err(other)?;
            Ok(done.rows_affected())
        };
        self.health.observe(marked.await)
    }

    async fn privacy_of(&self, users: &[UserId]) -> Result<Vec<StoredPrivacy>, StoreError> {
        privacy::privacy_of(&self.pool, users).await
    }

    async fn change_privacy(
        &self,
        owner: UserId,
        change: &PrivacyChange,
        at: DateTime<Utc>,
    ) -> Result<StoredPrivacy, StoreError> {
        let changed = privacy::change_privacy(&self.pool, owner, change, at).await;
        self.health.observe(changed)
    }
}

#[cfg(test)]
mod tests {
    use chrono::SubsecRound;

    use super::*;
    use crate::domain::StoredSession;

    const FIVE_MINUTES: Duration = Duration::from_secs(300);

    #[test]
    fn stored_timestamps_parse_as_rfc_3339_does() {
        let now = Utc::now().trunc_subsecs(6);
        for at in [
            now,
            DateTime::UNIX_EPOCH,
            now - chrono::Duration::days(4000),
        ] {
            let raw = ts(at);
            assert_eq!(parse_stored_ts(&raw), Some(at), "{raw}");
        }
        for other in [
            "2026-11-29T20:19:35Z",
            "2026-11-29T20:19:35.123456+01:00",
            "2026-13-29T20:19:35.123456Z",
            "2026-11-29T20:19:3x.123456Z",
        ] {
            assert_eq!(parse_stored_ts(other), None, "{other}");
        }
        assert_eq!(
            parse_ts("2026-11-29T20:19:35.123456+01:00").ok(),
            DateTime::parse_from_rfc3339("2026-11-29T19:19:35.123456Z")
                .ok()
                .map(|t| t.with_timezone(&Utc))
        );
    }

    #[test]
    fn flush_rows_are_the_json_a_serializer_writes() {
        let at = Utc::now().trunc_subsecs(6);
        let write = |id: i64, status, last_seen, seq| PresenceWrite {
            user_id: UserId(id),
            status,
            last_seen,
            seq,
            sessions: Vec::new(),
            expired_status: None,
        };
        let writes = [
            write(1, PresenceStatus::Online, Some(at), 7),
            write(i64::MAX, PresenceStatus::Offline, None, u64::MAX),
        ];
        let writes: Vec<&PresenceWrite> = writes.iter().collect();
        let expected: Vec<_> = writes
            .iter()
            .map(|w| {
                (
                    w.user_id.0,
                    w.status.as_str(),
                    w.last_seen.map(ts),
                    seq_to_db(w.seq),
                )
            })
            .collect();
        assert_eq!(
            user_rows(&writes),
            serde_json::to_string(&expected).unwrap()
        );
        assert_eq!(user_rows(&[]), "[]");

        let sessions = [0, 1].map(|i| StoredSession {
            id: SessionId(40 + i),
            last_activity: at - chrono::Duration::days(4000 * i),
            expires_at: at + chrono::Duration::minutes(5),
            platform: crate::domain::Platform::Web,
        });
        let expected: Vec<_> = sessions
            .iter()
            .map(|s| (s.id.0, ts(s.last_activity), ts(s.expires_at)))
            .collect();
        assert_eq!(
            session_rows(&sessions),
            serde_json::to_string(&expected).unwrap()
        );
    }

    #[tokio::test]
    async fn presence_writes_span_chunks_and_never_move_session_activity_back() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        let created = Utc::now().trunc_subsecs(6);
        let later = created + chrono::Duration::seconds(10);
        let mut batch = Vec::new();
        for i in 0..WRITE_CHUNK + 2 {
            let name = Username::parse(&format!("u{i}")).unwrap();
            let user = store.create_user(&name, "hash", false).await.unwrap();
            let token_hash = [i as u8, (i >> 8) as u8, 1, 2];
            let session = store.create_session(user.id, &token_hash, created);
            let session = session.await.unwrap();
            // The first user's write carries an older activity than stored: it must not win.
            let activity = if i == 0 {
                created - chrono::Duration::hours(1)
            } else {
                later
            };
            batch.push(PresenceWrite {
                user_id: user.id,
                status: PresenceStatus::Online,
                last_seen: Some(later),
                seq: 7 + i as u64,
                sessions: vec![StoredSession {
                    id: session,
                    last_activity: activity,
                    expires_at: later + chrono::Duration::minutes(5),
                    platform: crate::domain::Platform::Web,
                }],
                expired_status: None,
            });
        }
        store.write_presence(&batch).await.unwrap();

        let last = batch.last().unwrap();
        let stored = store.user_by_id(last.user_id).await.unwrap().unwrap();
        assert_eq!(stored.online_status, PresenceStatus::Online);
        assert_eq!(stored.last_seen, Some(later));
        assert_eq!(stored.presence_seq, last.seq);
        let live = store
            .load_live(Liveness::at(created, FIVE_MINUTES))
            .await
            .unwrap();
        assert_eq!(live.len(), WRITE_CHUNK + 2);
        let first = live[0].sessions[0];
        assert_eq!(first.last_activity, created, "activity never moves back");
        assert_eq!(first.expires_at, later + chrono::Duration::minutes(5));
        assert_eq!(live[WRITE_CHUNK + 1].sessions[0].last_activity, later);
        assert_eq!(live[WRITE_CHUNK + 1].seq, last.seq);
    }

    #[tokio::test]
    async fn live_sessions_load_across_id_pages_grouped_per_user() {
        let store = SqliteStore::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        let now = Utc::now();
        let (live, old) = (now, now - chrono::Duration::hours(1));
        let ids = [1, LOAD_PAGE_IDS + 5, 2 * LOAD_PAGE_IDS + 5];
        for id in ids {
            sqlx::query(
                "insert into users (user_id, username, password_hash, presence_seq, created_at) \
                 values (?1, 'u' || ?1, 'hash', ?1, ?2)",
            )
            .bind(id)
            .bind(ts(now))
            .execute(&store.pool)
            .await
            .unwrap();
        }
        let sessions = [
            (ids[0], live),
            (ids[1], live),
            (ids[0], old),
            (ids[0], live),
            (ids[2], old),
        ];
        for (n, (user, at)) in sessions.into_iter().enumerate() {
            store
                .create_session(UserId(user), &[n as u8], at)
                .await
                .unwrap();
        }

        let users = store
            .load_live(Liveness::at(now, FIVE_MINUTES))
            .await
            .unwrap();
        let loaded: Vec<(i64, usize)> = users
            .iter()
            .map(|u| (u.user_id.0, u.sessions.len()))
            .collect();
        assert_eq!(loaded, [(ids[0], 2), (ids[1], 1)]);
        assert_eq!(users[1].seq, ids[1] as u64);
        let first: Vec<i64> = users[0].sessions.iter().map(|s| s.id.0).collect();
        assert_eq!(first, [1, 4], "the user's live sessions, in order");
        assert_eq!(users[0].sessions[0].last_activity, live.trunc_subsecs(6));
    }
}
