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
use sqlx::{Connection, Row, migrate::Migrator};

use super::{CoalescedBatch, Liveness, SessionRecord, Store, StoreError, UserRecord, WriteHealth};
use crate::domain::{PresenceStatus, SessionId, UserId, Username};
use crate::engine::{PresenceWrite, RestoredUser, StoredSession};
use crate::privacy::{PrivacyChange, StoredPrivacy};

static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// A pool of SQLite connections to one database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    health: std::sync::Arc<WriteHealth>,
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
            .after_release(|conn, _| Box::pin(ended_cleanly(conn)))
            .connect_with(options)
            .await
            .map_err(StoreError::Unavailable)?;
        Ok(Self {
            pool,
            health: std::sync::Arc::default(),
        })
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

/// Users per statement of a presence write, bounding the size of one JSON parameter.
const WRITE_CHUNK: usize = 4096;
/// Width of the user-id ranges `load_live` reads in one statement (and one JSON result).
const LOAD_PAGE_IDS: i64 = 65_536;

fn to_json<T: serde::Serialize>(rows: &T) -> Result<String, StoreError> {
    serde_json::to_string(rows).map_err(|e| StoreError::Other(e.into()))
}

fn seq_to_db(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn seq_from_db(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

fn other(error: sqlx::Error) -> StoreError {
    let unavailable = match &error {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| cannot_write(&code)),
        _ => false,
    };
    if unavailable {
        StoreError::Unavailable(error)
    } else {
        StoreError::Other(error.into())
    }
}

/// SQLite result codes (primary, from the extended code sqlx reports) of a database that
/// cannot take the statement now but may later: busy or locked past the busy timeout, out of
/// memory, read-only, an I/O error, a full disk, a file that cannot be opened, a lock protocol
/// error.
fn cannot_write(code: &str) -> bool {
    const TRANSIENT: [i32; 8] = [5, 6, 7, 8, 10, 13, 14, 15];
    code.parse::<i32>()
        .is_ok_and(|extended| TRANSIENT.contains(&(extended & 0xff)))
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

/// The one row an `insert ... returning` gave back.
///
/// Such statements are always read with `fetch_all`: SQLite hands out the `RETURNING` row
/// before the statement finishes, and the commit of an autocommit statement (which can fail,
/// on a full disk say) happens only when it does. Reading just the first row would acknowledge
/// a row that the failed commit then discards.
fn returned<T>(rows: &[T]) -> Result<&T, StoreError> {
    rows.first()
        .ok_or_else(|| StoreError::Other(anyhow::anyhow!("insert returned no row")))
}

/// A live session as read at start-up: user, session, last activity, expiry, seq, last seen.
type LiveRow = (i64, i64, String, Option<String>, i64, Option<String>);

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
            .map_err(StoreError::Unavailable)?;
        if !self.health.failing() {
            return Ok(());
        }
        let probe = sqlx::query(
            "insert into health_probe (probe_id, probed_at) values (1, ?) \
             on conflict (probe_id) do update set probed_at = excluded.probed_at",
        )
        .bind(ts(Utc::now()))
        .execute(&self.pool)
        .await
        .map(drop)
        .map_err(other);
        self.health.observe(probe)
    }

    async fn create_user(
        &self,
        username: &Username,
        password_hash: &str,
        is_admin: bool,
    ) -> Result<UserRecord, StoreError> {
        let result = async {
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
            .fetch_all(&self.pool)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(db) if db.is_unique_violation() => {
                    StoreError::Conflict("username already taken")
                }
                e => other(e),
            })?;
            user_from_row(returned(&row)?)
        }
        .await;
        self.health.observe(result)
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
        let json = to_json(&ids)?;
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
        let result = async {
            let id: Vec<i64> = sqlx::query_scalar(
                "insert into sessions (user_id, token_hash, created_at, last_activity) \
                 values (?, ?, ?, ?) returning session_id",
            )
            .bind(user.0)
            .bind(token_hash)
            .bind(ts(at))
            .bind(ts(at))
            .fetch_all(&self.pool)
            .await
            .map_err(session_refused)?;
            Ok(SessionId(*returned(&id)?))
        }
        .await;
        self.health.observe(result)
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
        let result = async {
            sqlx::query("delete from sessions where session_id = ?")
                .bind(session.0)
                .execute(&self.pool)
                .await
                .map(drop)
                .map_err(other)
        }
        .await;
        self.health.observe(result)
    }

    async fn prune_sessions(
        &self,
        user: UserId,
        keep: usize,
    ) -> Result<Vec<(SessionId, Vec<u8>)>, StoreError> {
        let result = async {
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
        .await;
        self.health.observe(result)
    }

    async fn write_presence(&self, batch: &[PresenceWrite]) -> Result<(), StoreError> {
        let result = async {
            // Two statements per chunk, whatever its size: sqlx runs SQLite on a worker thread and
            // every statement is a round trip to it, which made a statement per user (and per
            // session) the main cost of heartbeat-heavy load. `json_each` feeds the rows in.
            let mut tx = self.pool.begin().await.map_err(other)?;
            let batch = CoalescedBatch::of(batch);
            for chunk in batch.users.chunks(WRITE_CHUNK) {
                let users: Vec<_> = chunk
                    .iter()
                    .map(|w| {
                        let last_seen = w.last_seen.map(ts);
                        (w.user_id.0, w.status.as_str(), last_seen, seq_to_db(w.seq))
                    })
                    .collect();
                sqlx::query(
                    "update users set online_status = j.value ->> 1, last_seen = j.value ->> 2, \
                     presence_seq = j.value ->> 3 \
                     from json_each(?) as j where users.user_id = j.value ->> 0",
                )
                .bind(to_json(&users)?)
                .execute(&mut *tx)
                .await
                .map_err(other)?;
            }
            for chunk in batch.sessions.chunks(WRITE_CHUNK) {
                let sessions: Vec<_> = chunk
                    .iter()
                    .map(|s| (s.id.0, ts(s.last_activity), ts(s.expires_at)))
                    .collect();
                sqlx::query(
                    "update sessions set last_activity = max(last_activity, j.value ->> 1), \
                     expires_at = j.value ->> 2 \
                     from json_each(?) as j where sessions.session_id = j.value ->> 0",
                )
                .bind(to_json(&sessions)?)
                .execute(&mut *tx)
                .await
                .map_err(other)?;
            }
            tx.commit().await.map_err(other)
        }
        .await;
        self.health.observe(result)
    }

    async fn load_live(&self, live: Liveness) -> Result<Vec<RestoredUser>, StoreError> {
        // One JSON row per range of user ids rather than one row per session: sqlx hands every
        // row from SQLite's worker thread to the caller separately, and with a million live
        // sessions those hand-offs were most of a restart. One read transaction keeps the
        // pages consistent with each other.
        let mut tx = self.pool.begin().await.map_err(other)?;
        let max_id: Option<i64> = sqlx::query_scalar("select max(user_id) from sessions")
            .fetch_one(&mut *tx)
            .await
            .map_err(other)?;
        let mut users: Vec<RestoredUser> = Vec::new();
        let mut from = 0_i64;
        while max_id.is_some_and(|max| from <= max) {
            let to = from.saturating_add(LOAD_PAGE_IDS);
            let page: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "select json_group_array(json_array(s.user_id, s.session_id, s.last_activity, \
                 s.expires_at, u.presence_seq, u.last_seen)) \
                 from sessions s join users u on u.user_id = s.user_id \
                 where ({LIVE_SESSION}) and s.user_id >= ?3 and s.user_id < ?4"
            )))
            .bind(ts(live.now))
            .bind(ts(live.inactive_before))
            .bind(from)
            .bind(to)
            .fetch_one(&mut *tx)
            .await
            .map_err(other)?;
            let mut rows: Vec<LiveRow> =
                serde_json::from_str(&page).map_err(|e| StoreError::Other(e.into()))?;
            // Aggregation order is unspecified; group each user's sessions here.
            rows.sort_unstable_by_key(|row| (row.0, row.1));
            for (user_id, session, last_activity, expires_at, seq, last_seen) in rows {
                let user_id = UserId(user_id);
                if users.last().is_none_or(|u| u.user_id != user_id) {
                    users.push(RestoredUser {
                        user_id,
                        seq: seq_from_db(seq),
                        last_seen: parse_opt_ts(last_seen)?,
                        sessions: Vec::with_capacity(1),
                    });
                }
                let last_activity = parse_ts(&last_activity)?;
                let expires_at = parse_opt_ts(expires_at)?;
                if let Some(user) = users.last_mut() {
                    user.sessions.push(StoredSession {
                        id: SessionId(session),
                        last_activity,
                        expires_at: expires_at.unwrap_or(last_activity + live.timeout()),
                    });
                }
            }
            from = to;
        }
        tx.commit().await.map_err(other)?;
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
        .map_err(other);
        Ok(self.health.observe(done)?.rows_affected())
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
        let result = async { privacy::change_privacy(&self.pool, owner, change, at).await }.await;
        self.health.observe(result)
    }
}

#[cfg(test)]
mod tests {
    use chrono::SubsecRound;

    use super::*;

    const FIVE_MINUTES: Duration = Duration::from_secs(300);

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
                }],
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
