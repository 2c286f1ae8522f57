//! SQLite implementation of [`Store`], the embedded default.
//!
//! WAL journal with `synchronous=NORMAL`: readers never block the writer, and a crash loses at
//! most the last transactions, never integrity. Timestamps are fixed-width RFC 3339 text so they
//! compare correctly in SQL. Privacy data lives in the `privacy` submodule.

mod privacy;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, migrate::Migrator};

use super::{Liveness, SessionRecord, Store, StoreError, UserRecord};
use crate::domain::{PresenceStatus, SessionId, UserId, Username};
use crate::engine::{PresenceWrite, RestoredUser, StoredSession};
use crate::privacy::{PrivacyChange, StoredPrivacy};

static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// A pool of SQLite connections to one database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url`.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if the file cannot be opened.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(StoreError::Unavailable)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        // An in-memory database exists per connection, so it must be a single one.
        let max = if url.contains(":memory:") { 1 } else { 4 };
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .connect_with(options)
            .await
            .map_err(StoreError::Unavailable)?;
        Ok(Self { pool })
    }
}

/// Formats a timestamp as stored: `2026-11-27T10:30:00.123456Z`.
fn ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_ts(raw: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Other(anyhow::anyhow!("bad timestamp {raw:?} in database: {e}")))
}

fn parse_opt_ts(raw: Option<String>) -> Result<Option<DateTime<Utc>>, StoreError> {
    raw.as_deref().map(parse_ts).transpose()
}

fn seq_to_db(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn seq_from_db(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

fn other(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            StoreError::Unavailable(error)
        }
        error => StoreError::Other(error.into()),
    }
}

/// A live session (`s`) at `?1` = now, `?2` = now - inactivity timeout: active within the
/// timeout and not ended earlier (a closed socket's grace; `expires_at` is null for rows
/// written before it existed).
const LIVE_SESSION: &str = "(s.expires_at is null or s.expires_at > ?1) and s.last_activity >= ?2";

/// Maps a failed session insert: a token hash in use → `Conflict`, no such user → `NotFound`.
fn session_refused(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict("token already in use")
        }
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            StoreError::NotFound("No such user.")
        }
        error => other(error),
    }
}

const USER_COLUMNS: &str =
    "user_id, username, password_hash, is_admin, online_status, last_seen, presence_seq";

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
    })
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
            .map(drop)
            .map_err(StoreError::Unavailable)
    }

    async fn create_user(
        &self,
        username: &Username,
        password_hash: &str,
        is_admin: bool,
    ) -> Result<UserRecord, StoreError> {
        let row = sqlx::query(
            "insert into users (username, password_hash, is_admin, created_at) \
             values (?, ?, ?, ?) \
             returning user_id, username, password_hash, is_admin, online_status, last_seen, \
             presence_seq",
        )
        .bind(username.as_str())
        .bind(password_hash)
        .bind(is_admin)
        .bind(ts(Utc::now()))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| match e {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict("username already taken")
            }
            e => other(e),
        })?;
        user_from_row(&row)
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "select {USER_COLUMNS} from users where username = ?"
        )))
        .bind(username)
        .fetch_optional(&self.pool)
        .await
        .map_err(other)?
        .as_ref()
        .map(user_from_row)
        .transpose()
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "select {USER_COLUMNS} from users where user_id = ?"
        )))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(other)?
        .as_ref()
        .map(user_from_row)
        .transpose()
    }

    async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<UserRecord>, StoreError> {
        let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
        let json = serde_json::to_string(&ids).map_err(|e| StoreError::Other(e.into()))?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "select {USER_COLUMNS} from users where user_id in (select value from json_each(?))"
        )))
        .bind(json)
        .fetch_all(&self.pool)
        .await
        .map_err(other)?
        .iter()
        .map(user_from_row)
        .collect()
    }

    async fn create_session(
        &self,
        user: UserId,
        token_hash: &[u8],
        at: DateTime<Utc>,
    ) -> Result<SessionId, StoreError> {
        let id: i64 = sqlx::query_scalar(
            "insert into sessions (user_id, token_hash, created_at, last_activity) \
             values (?, ?, ?, ?) returning session_id",
        )
        .bind(user.0)
        .bind(token_hash)
        .bind(ts(at))
        .bind(ts(at))
        .fetch_one(&self.pool)
        .await
        .map_err(session_refused)?;
        Ok(SessionId(id))
    }

    async fn session_by_token(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<SessionRecord>, StoreError> {
        let row = sqlx::query(
            "select s.session_id, s.user_id, u.username, u.is_admin \
             from sessions s join users u on u.user_id = s.user_id where s.token_hash = ?",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(other)?;
        row.map(|row| {
            Ok(SessionRecord {
                session_id: SessionId(row.try_get("session_id").map_err(other)?),
                user_id: UserId(row.try_get("user_id").map_err(other)?),
                username: row.try_get("username").map_err(other)?,
                is_admin: row.try_get("is_admin").map_err(other)?,
            })
        })
        .transpose()
    }

    async fn delete_session(&self, session: SessionId) -> Result<(), StoreError> {
        sqlx::query("delete from sessions where session_id = ?")
            .bind(session.0)
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(other)
    }

    async fn prune_sessions(
        &self,
        user: UserId,
        keep: usize,
    ) -> Result<Vec<(SessionId, Vec<u8>)>, StoreError> {
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "delete from sessions where user_id = ?1 and session_id not in (\
             select session_id from sessions where user_id = ?1 \
             order by last_activity desc, session_id desc limit ?2) \
             returning session_id, token_hash",
        )
        .bind(user.0)
        .bind(i64::try_from(keep).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(other)?;
        Ok(rows
            .into_iter()
            .map(|(id, hash)| (SessionId(id), hash))
            .collect())
    }

    async fn write_presence(&self, batch: &[PresenceWrite]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(other)?;
        for write in batch {
            sqlx::query(
                "update users set online_status = ?, last_seen = ?, presence_seq = ? \
                 where user_id = ?",
            )
            .bind(write.status.as_str())
            .bind(write.last_seen.map(ts))
            .bind(seq_to_db(write.seq))
            .bind(write.user_id.0)
            .execute(&mut *tx)
            .await
            .map_err(other)?;
            for session in &write.sessions {
                sqlx::query(
                    "update sessions set last_activity = max(last_activity, ?1), expires_at = ?2 \
                     where session_id = ?3",
                )
                .bind(ts(session.last_activity))
                .bind(ts(session.expires_at))
                .bind(session.id.0)
                .execute(&mut *tx)
                .await
                .map_err(other)?;
            }
        }
        tx.commit().await.map_err(other)
    }

    async fn load_live(&self, live: Liveness) -> Result<Vec<RestoredUser>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "select s.user_id, s.session_id, s.last_activity, s.expires_at, u.presence_seq, \
             u.last_seen from sessions s join users u on u.user_id = s.user_id \
             where {LIVE_SESSION} order by s.user_id"
        )))
        .bind(ts(live.now))
        .bind(ts(live.inactive_before))
        .fetch_all(&self.pool)
        .await
        .map_err(other)?;
        let mut users: Vec<RestoredUser> = Vec::new();
        for row in rows {
            let user_id = UserId(row.try_get("user_id").map_err(other)?);
            let last_activity = parse_ts(row.try_get("last_activity").map_err(other)?)?;
            let expires_at = parse_opt_ts(row.try_get("expires_at").map_err(other)?)?;
            let session = StoredSession {
                id: SessionId(row.try_get("session_id").map_err(other)?),
                last_activity,
                expires_at: expires_at.unwrap_or(last_activity + live.timeout()),
            };
            if users.last().is_none_or(|u| u.user_id != user_id) {
                users.push(RestoredUser {
                    user_id,
                    seq: seq_from_db(row.try_get("presence_seq").map_err(other)?),
                    last_seen: parse_opt_ts(row.try_get("last_seen").map_err(other)?)?,
                    sessions: Vec::new(),
                });
            }
            if let Some(user) = users.last_mut() {
                user.sessions.push(session);
            }
        }
        Ok(users)
    }

    async fn mark_inactive_offline(
        &self,
        live: Liveness,
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        let inactive = format!(
            "online_status = 'online' and not exists (\
             select 1 from sessions s where s.user_id = users.user_id and ({LIVE_SESSION}))"
        );
        if dry_run {
            let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "select count(*) from users where {inactive}"
            )))
            .bind(ts(live.now))
            .bind(ts(live.inactive_before))
            .fetch_one(&self.pool)
            .await
            .map_err(other)?;
            return Ok(u64::try_from(count).unwrap_or(0));
        }
        let seq = crate::engine::state::next_seq(0, Utc::now());
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "update users set online_status = 'offline', \
             presence_seq = max(presence_seq + 1, ?3) where {inactive}"
        )))
        .bind(ts(live.now))
        .bind(ts(live.inactive_before))
        .bind(seq_to_db(seq))
        .execute(&self.pool)
        .await
        .map_err(other)?;
        Ok(done.rows_affected())
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
        privacy::change_privacy(&self.pool, owner, change, at).await
    }
}
