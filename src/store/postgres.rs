//! PostgreSQL implementation of [`Store`], for deployments that want a database server (shared
//! between nodes, backed up and replicated by the usual tools).
//!
//! Same tables, columns and semantics as SQLite (`migrations/postgres`), with native types:
//! `bigserial` ids, `timestamptz`, `bytea` token hashes. Batches travel as arrays (`unnest`,
//! `= any`), so a presence flush is two statements whatever its size. Privacy data lives in the
//! `privacy` submodule. The contract suite (`tests/store_contract.rs`) holds both backends to
//! the same observable behaviour.

mod privacy;

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

use super::{CoalescedBatch, Liveness, SessionRecord, Store, StoreError, UserRecord, WriteHealth};
use crate::domain::{PresenceStatus, SessionId, UserId, Username};
use crate::engine::{PresenceWrite, RestoredUser, StoredSession};
use crate::privacy::{PrivacyChange, StoredPrivacy};

static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// Connections per server process. Hot paths never touch the database (heartbeats stay in the
/// engine, tokens in the auth cache); the persister's one transaction per interval, cache
/// misses, privacy writes and admin reads do, so a few connections are plenty, and several
/// nodes fit in PostgreSQL's default `max_connections` of 100.
const MAX_CONNECTIONS: u32 = 8;

/// How long a query waits for a connection (also bounds retries while the server refuses
/// connections). Shorter than the default `request_timeout`, so a database outage gives a fast
/// `503` from `/readyz` rather than a hung request.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A pool of connections to one PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    health: std::sync::Arc<WriteHealth>,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB`).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] if the URL is malformed or the server cannot be reached or
    /// refuses the connection within a few seconds. The error never contains the URL.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(StoreError::Unavailable)?
            .application_name("lastseen");
        match pool_options().connect_with(options.clone()).await {
            Ok(pool) => Ok(Self::new(pool)),
            // The pool retries refused connections until its timeout, then reports only the
            // timeout; one direct attempt tells the operator why (e.g. "Connection refused").
            Err(sqlx::Error::PoolTimedOut) => {
                match tokio::time::timeout(ACQUIRE_TIMEOUT, options.connect()).await {
                    Ok(Err(error)) => Err(StoreError::Unavailable(error)),
                    Err(_) => Err(StoreError::Unavailable(sqlx::Error::PoolTimedOut)),
                    // It came up meanwhile: the pool connects on first use.
                    Ok(Ok(conn)) => {
                        let _ = conn.close().await;
                        Ok(Self::new(pool_options().connect_lazy_with(options)))
                    }
                }
            }
            Err(error) => Err(StoreError::Unavailable(error)),
        }
    }
}

impl PostgresStore {
    fn new(pool: PgPool) -> Self {
        Self {
            pool,
            health: std::sync::Arc::default(),
        }
    }
}

fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
}

fn seq_to_db(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn seq_from_db(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

/// Maps a failed query: connection trouble is `Unavailable`, anything else `Other`.
fn other(error: sqlx::Error) -> StoreError {
    let unreachable = match &error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => db.code().as_deref().is_some_and(refuses_connection),
        _ => false,
    };
    if unreachable {
        StoreError::Unavailable(error)
    } else {
        StoreError::Other(error.into())
    }
}

/// SQLSTATEs of a server that dropped or refused us: connection exceptions (08), failed
/// authentication (28), a missing database (3D000), too many connections (53300), and a server
/// shutting down, starting up or whose database was dropped (57P0x).
fn refuses_connection(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("28")
        || code.starts_with("57P")
        || code == "3D000"
        || code == "53300"
}

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

/// A live session (`s`) at `$1` = now, `$2` = now - inactivity timeout: active within the
/// timeout and not ended earlier (a closed socket's grace; `expires_at` is null for rows
/// written before it existed).
const LIVE_SESSION: &str = "(s.expires_at is null or s.expires_at > $1) and s.last_activity >= $2";

const USER_COLUMNS: &str =
    "user_id, username, password_hash, is_admin, online_status, last_seen, presence_seq";

#[derive(sqlx::FromRow)]
struct UserRow {
    user_id: i64,
    username: String,
    password_hash: String,
    is_admin: bool,
    online_status: String,
    last_seen: Option<DateTime<Utc>>,
    presence_seq: i64,
}

impl From<UserRow> for UserRecord {
    fn from(row: UserRow) -> Self {
        Self {
            id: UserId(row.user_id),
            username: row.username,
            password_hash: row.password_hash,
            is_admin: row.is_admin,
            online_status: PresenceStatus::from_column(&row.online_status),
            last_seen: row.last_seen,
            presence_seq: seq_from_db(row.presence_seq),
        }
    }
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    session_id: i64,
    user_id: i64,
    username: String,
    is_admin: bool,
}

#[derive(sqlx::FromRow)]
struct LiveRow {
    user_id: i64,
    session_id: i64,
    last_activity: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    presence_seq: i64,
    last_seen: Option<DateTime<Utc>>,
}

/// A presence batch as columns, one array per bound parameter of the `unnest` updates, built
/// from the coalesced batch (each user and session once, in id order).
#[derive(Debug, Default, PartialEq)]
struct PresenceColumns {
    user_ids: Vec<i64>,
    statuses: Vec<&'static str>,
    last_seens: Vec<Option<DateTime<Utc>>>,
    seqs: Vec<i64>,
    session_ids: Vec<i64>,
    activities: Vec<DateTime<Utc>>,
    expiries: Vec<DateTime<Utc>>,
}

impl PresenceColumns {
    fn of(batch: &[PresenceWrite]) -> Self {
        let batch = CoalescedBatch::of(batch);
        let mut columns = Self::default();
        for write in batch.users {
            columns.user_ids.push(write.user_id.0);
            columns.statuses.push(write.status.as_str());
            columns.last_seens.push(write.last_seen);
            columns.seqs.push(seq_to_db(write.seq));
        }
        for session in batch.sessions {
            columns.session_ids.push(session.id.0);
            columns.activities.push(session.last_activity);
            columns.expiries.push(session.expires_at);
        }
        columns
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        // sqlx holds an advisory lock while migrating, so nodes starting together are safe.
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
            "insert into health_probe (probe_id, probed_at) values (1, $1) \
             on conflict (probe_id) do update set probed_at = excluded.probed_at",
        )
        .bind(Utc::now())
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
            let row: UserRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "insert into users (username, password_hash, is_admin, created_at) \
                 values ($1, $2, $3, $4) returning {USER_COLUMNS}"
            )))
            .bind(username.as_str())
            .bind(password_hash)
            .bind(is_admin)
            .bind(Utc::now())
            .fetch_one(&self.pool)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(db) if db.is_unique_violation() => {
                    StoreError::Conflict("username already taken")
                }
                e => other(e),
            })?;
            Ok(row.into())
        }
        .await;
        self.health.observe(result)
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let row: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select {USER_COLUMNS} from users where username = $1"
        )))
        .bind(username)
        .fetch_optional(&self.pool)
        .await
        .map_err(other)?;
        Ok(row.map(UserRecord::from))
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        let row: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select {USER_COLUMNS} from users where user_id = $1"
        )))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(other)?;
        Ok(row.map(UserRecord::from))
    }

    async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<UserRecord>, StoreError> {
        let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
        let rows: Vec<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select {USER_COLUMNS} from users where user_id = any($1)"
        )))
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(other)?;
        Ok(rows.into_iter().map(UserRecord::from).collect())
    }

    async fn create_session(
        &self,
        user: UserId,
        token_hash: &[u8],
        at: DateTime<Utc>,
    ) -> Result<SessionId, StoreError> {
        let result = async {
            let id: i64 = sqlx::query_scalar(
                "insert into sessions (user_id, token_hash, created_at, last_activity) \
                 values ($1, $2, $3, $3) returning session_id",
            )
            .bind(user.0)
            .bind(token_hash)
            .bind(at)
            .fetch_one(&self.pool)
            .await
            .map_err(session_refused)?;
            Ok(SessionId(id))
        }
        .await;
        self.health.observe(result)
    }

    async fn session_by_token(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<SessionRecord>, StoreError> {
        let row: Option<SessionRow> = sqlx::query_as(
            "select s.session_id, s.user_id, u.username, u.is_admin \
             from sessions s join users u on u.user_id = s.user_id where s.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(other)?;
        Ok(row.map(|row| SessionRecord {
            session_id: SessionId(row.session_id),
            user_id: UserId(row.user_id),
            username: row.username,
            is_admin: row.is_admin,
        }))
    }

    async fn delete_session(&self, session: SessionId) -> Result<(), StoreError> {
        let result = async {
            sqlx::query("delete from sessions where session_id = $1")
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
                "delete from sessions where user_id = $1 and session_id not in (\
                 select session_id from sessions where user_id = $1 \
                 order by last_activity desc, session_id desc limit $2) \
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
            if batch.is_empty() {
                return Ok(());
            }
            // Two statements with array parameters instead of one per row: a flush costs the same
            // few round trips for 10 users or 10 000 (see docs/ARCHITECTURE.md for measurements).
            let columns = PresenceColumns::of(batch);
            let mut tx = self.pool.begin().await.map_err(other)?;
            sqlx::query(
                "update users u set online_status = b.status, last_seen = b.last_seen, \
                 presence_seq = b.seq \
                 from unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::bigint[]) \
                 as b (user_id, status, last_seen, seq) \
                 where u.user_id = b.user_id",
            )
            .bind(&columns.user_ids)
            .bind(&columns.statuses)
            .bind(&columns.last_seens)
            .bind(&columns.seqs)
            .execute(&mut *tx)
            .await
            .map_err(other)?;
            if !columns.session_ids.is_empty() {
                sqlx::query(
                    "update sessions s \
                     set last_activity = greatest(s.last_activity, b.last_activity), \
                     expires_at = b.expires_at \
                     from unnest($1::bigint[], $2::timestamptz[], $3::timestamptz[]) \
                     as b (session_id, last_activity, expires_at) \
                     where s.session_id = b.session_id",
                )
                .bind(&columns.session_ids)
                .bind(&columns.activities)
                .bind(&columns.expiries)
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
        let rows: Vec<LiveRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select s.user_id, s.session_id, s.last_activity, s.expires_at, u.presence_seq, \
             u.last_seen from sessions s join users u on u.user_id = s.user_id \
             where {LIVE_SESSION} order by s.user_id, s.session_id"
        )))
        .bind(live.now)
        .bind(live.inactive_before)
        .fetch_all(&self.pool)
        .await
        .map_err(other)?;
        let mut users: Vec<RestoredUser> = Vec::new();
        for row in rows {
            let user_id = UserId(row.user_id);
            if users.last().is_none_or(|u| u.user_id != user_id) {
                users.push(RestoredUser {
                    user_id,
                    seq: seq_from_db(row.presence_seq),
                    last_seen: row.last_seen,
                    sessions: Vec::new(),
                });
            }
            if let Some(user) = users.last_mut() {
                user.sessions.push(StoredSession {
                    id: SessionId(row.session_id),
                    last_activity: row.last_activity,
                    expires_at: row.expires_at.unwrap_or(row.last_activity + live.timeout()),
                });
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
            .bind(live.now)
            .bind(live.inactive_before)
            .fetch_one(&self.pool)
            .await
            .map_err(other)?;
            return Ok(u64::try_from(count).unwrap_or(0));
        }
        let seq = crate::engine::state::next_seq(0, Utc::now());
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "update users set online_status = 'offline', \
             presence_seq = greatest(presence_seq + 1, $3) where {inactive}"
        )))
        .bind(live.now)
        .bind(live.inactive_before)
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
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn write(user: i64, seq: u64, sessions: &[(i64, i64)]) -> PresenceWrite {
        PresenceWrite {
            user_id: UserId(user),
            status: PresenceStatus::Online,
            last_seen: Some(at(seq as i64)),
            seq,
            sessions: sessions
                .iter()
                .map(|&(s, t)| StoredSession {
                    id: SessionId(s),
                    last_activity: at(t),
                    expires_at: at(t + 60),
                })
                .collect(),
        }
    }

    #[test]
    fn a_batch_becomes_sorted_columns_with_the_last_write_and_latest_activity_winning() {
        let batch = [
            write(7, 1, &[(70, 5)]),
            write(3, 2, &[(30, 9), (31, 4)]),
            write(7, 3, &[(70, 2), (71, 8)]),
        ];
        let columns = PresenceColumns::of(&batch);
        assert_eq!(columns.user_ids, [3, 7]);
        assert_eq!(columns.seqs, [2, 3]);
        assert_eq!(columns.last_seens, [Some(at(2)), Some(at(3))]);
        assert_eq!(columns.statuses, ["online", "online"]);
        assert_eq!(columns.session_ids, [30, 31, 70, 71]);
        assert_eq!(columns.activities, [at(9), at(4), at(5), at(8)]);
    }

    #[test]
    fn connection_refusals_are_told_apart_from_query_errors() {
        for code in ["08006", "28P01", "3D000", "53300", "57P01"] {
            assert!(refuses_connection(code), "{code}");
        }
        for code in ["23505", "23503", "42P01", "57014"] {
            assert!(!refuses_connection(code), "{code}");
        }
    }
}
