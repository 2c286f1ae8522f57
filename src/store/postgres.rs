//! PostgreSQL implementation of [`Store`], for deployments that want a database server (shared
//! between nodes, backed up and replicated by the usual tools).
//!
//! Same tables, columns and semantics as SQLite (`migrations/postgres`), with native types:
//! `bigserial` ids, `timestamptz`, `bytea` token hashes. Batches travel as arrays (`unnest`,
//! `= any`), so a presence flush is two statements whatever its size. Statements both SQL
//! backends share are in `sql`; privacy data is in the `privacy` submodule. The contract suite
//! (`tests/store_contract`) holds both backends to the same observable behaviour.

mod privacy;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::migrate::MigrateDatabase;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

use super::sql::{self, LIVE_SESSION, LiveRow, USER_COLUMNS, seq_from_db, seq_to_db};
use super::{
    CoalescedBatch, Conflict, Liveness, Missing, SessionInfo, SessionRecord, Store, StoreError,
    UserRecord, WriteHealth,
};
use crate::domain::{
    Device, ManualStatus, Platform, PresenceStatus, PresenceWrite, PrivacyChange, RestoredUser,
    SessionId, StoredPrivacy, UserId, Username, next_seq,
};

super::events::impl_event_log!(PostgresStore);
super::samples::impl_online_samples!(PostgresStore);

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
    health: Arc<WriteHealth>,
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
        match options.connect().await {
            Ok(conn) => {
                let _ = conn.close().await;
            }
            // Like a SQLite file, a missing database is created (the server reaches it, and
            // may create databases, or the error says why not).
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("3D000") => {
                tracing::info!("creating the PostgreSQL database of database_url");
                if let Err(error) = sqlx::Postgres::create_database(url).await {
                    // Another node starting at the same moment may have created it first.
                    if !sqlx::Postgres::database_exists(url).await.unwrap_or(false) {
                        return Err(explain(&options, error));
                    }
                }
            }
            Err(_) => {}
        }
        match pool_options().connect_with(options.clone()).await {
            Ok(pool) => Ok(Self::new(pool)),
            // The pool retries refused connections until its timeout, then reports only the
            // timeout; one direct attempt tells the operator why (e.g. "Connection refused").
            Err(sqlx::Error::PoolTimedOut) => {
                match tokio::time::timeout(ACQUIRE_TIMEOUT, options.connect()).await {
                    Ok(Err(error)) => Err(explain(&options, error)),
                    Err(_) => Err(explain(&options, sqlx::Error::PoolTimedOut)),
                    // It came up meanwhile: the pool connects on first use.
                    Ok(Ok(conn)) => {
                        let _ = conn.close().await;
                        Ok(Self::new(pool_options().connect_lazy_with(options)))
                    }
                }
            }
            Err(error) => Err(explain(&options, error)),
        }
    }

    fn new(pool: PgPool) -> Self {
        Self {
            pool,
            health: Arc::default(),
        }
    }
}

/// One line on why the server at `options` cannot be used: where it is (host, port and
/// database, never the password), what went wrong, in PostgreSQL's words where it gave any.
fn explain(options: &PgConnectOptions, error: sqlx::Error) -> StoreError {
    let at = format!(
        "PostgreSQL at {}:{} (database {:?}, from database_url)",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    );
    let problem = match &error {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "refused the connection: is PostgreSQL running there?".to_owned()
        }
        sqlx::Error::Io(io) => format!("cannot be reached: {io}"),
        sqlx::Error::PoolTimedOut => format!("did not answer within {ACQUIRE_TIMEOUT:?}"),
        sqlx::Error::Database(db) => format!("refused: {}", db.message()),
        _ => return StoreError::Unavailable(error),
    };
    StoreError::Setup(format!("{at} {problem}"))
}

fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
}

/// Maps a failed statement that breaks no rule of ours.
fn other(error: sqlx::Error) -> StoreError {
    sql::classify(error, None, None, refused_us)
}

/// Maps a failed statement that may break a uniqueness rule or name a missing user.
fn refused(error: sqlx::Error, conflict: Conflict, missing: Missing) -> StoreError {
    sql::classify(error, Some(conflict), Some(missing), refused_us)
}

/// Maps a failed statement that may name a user who does not exist.
fn unknown_user(error: sqlx::Error) -> StoreError {
    sql::classify(error, None, Some(Missing::User), refused_us)
}

/// Whether the server dropped or refused us (then the failure is `Unavailable`), as opposed to
/// rejecting the statement.
fn refused_us(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db.code().as_deref().is_some_and(refuses_connection),
        _ => false,
    }
}

/// SQLSTATEs of a server that dropped or refused us: connection exceptions (08), failed
/// authentication (28), a missing database (3D000), too many connections (53300), a full disk
/// or out of memory (53100, 53200), and a server shutting down, starting up or whose database
/// was dropped (57P0x).
fn refuses_connection(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("28")
        || code.starts_with("57P")
        || ["3D000", "53100", "53200", "53300"].contains(&code)
}

#[derive(sqlx::FromRow)]
struct UserRow {
    user_id: i64,
    username: String,
    password_hash: String,
    is_admin: bool,
    online_status: String,
    last_seen: Option<DateTime<Utc>>,
    presence_seq: i64,
    status_mode: String,
    status_text: Option<String>,
    status_emoji: Option<String>,
    status_expires_at: Option<DateTime<Utc>>,
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
            manual: sql::manual_from_columns(
                &row.status_mode,
                row.status_text,
                row.status_emoji,
                row.status_expires_at,
            ),
        }
    }
}

/// A live session as `load_live` selects it, with its user's state.
#[derive(sqlx::FromRow)]
struct LiveColumns {
    user_id: i64,
    session_id: i64,
    last_activity: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    platform: String,
    presence_seq: i64,
    last_seen: Option<DateTime<Utc>>,
    status_mode: String,
    status_text: Option<String>,
    status_emoji: Option<String>,
    status_expires_at: Option<DateTime<Utc>>,
}

impl From<LiveColumns> for LiveRow {
    fn from(row: LiveColumns) -> Self {
        Self {
            user_id: row.user_id,
            session_id: row.session_id,
            last_activity: row.last_activity,
            expires_at: row.expires_at,
            platform: Platform::from_column(&row.platform),
            presence_seq: row.presence_seq,
            last_seen: row.last_seen,
            manual: sql::manual_from_columns(
                &row.status_mode,
                row.status_text,
                row.status_emoji,
                row.status_expires_at,
            ),
        }
    }
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

impl PostgresStore {
    async fn users_where<T>(&self, condition: &str, bind: T) -> Result<Vec<UserRecord>, StoreError>
    where
        T: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
    {
        let rows: Vec<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select {USER_COLUMNS} from users where {condition}"
        )))
        .bind(bind)
        .fetch_all(&self.pool)
        .await
        .map_err(other)?;
        Ok(rows.into_iter().map(UserRecord::from).collect())
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        // sqlx holds a session advisory lock while migrating, so nodes starting together are
        // safe. A failed migration returns before unlocking, so its connection is closed rather
        // than returned to the pool: closing the session releases the lock (a pooled one would
        // keep it and make the next migration wait forever).
        let mut conn = self.pool.acquire().await.map_err(other)?;
        // `run_direct` is `run` on a connection we hold (sqlx's own way around `Acquire`'s
        // lifetime in an `async_trait`).
        let result = MIGRATOR.run_direct(None, &mut *conn, false).await;
        if result.is_err() {
            drop(conn.detach());
        }
        result.map_err(|e| StoreError::Other(e.into()))
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
            .bind(Utc::now())
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
        let row: Result<UserRow, _> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "insert into users (username, password_hash, is_admin, created_at) \
             values ($1, $2, $3, $4) returning {USER_COLUMNS}"
        )))
        .bind(username.as_str())
        .bind(password_hash)
        .bind(is_admin)
        .bind(Utc::now())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| refused(e, Conflict::UsernameTaken, Missing::User));
        Ok(self.health.observe(row)?.into())
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        Ok(self
            .users_where("lower(username) = lower($1)", username)
            .await?
            .pop())
    }

    async fn user_by_external_id(
        &self,
        external_id: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        Ok(self
            .users_where("external_id = $1", external_id)
            .await?
            .pop())
    }

    async fn external_user(
        &self,
        external_id: &str,
        username: &Username,
    ) -> Result<UserRecord, StoreError> {
        // Either unique rule (the name, the external id) turns the insert into a no-op.
        let row: Result<Option<UserRow>, _> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "insert into users (username, password_hash, is_admin, created_at, external_id) \
             values ($1, $2, false, $3, $4) on conflict do nothing returning {USER_COLUMNS}"
        )))
        .bind(username.as_str())
        .bind(super::NO_PASSWORD)
        .bind(Utc::now())
        .bind(external_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| refused(e, Conflict::UsernameTaken, Missing::User));
        if let Some(row) = self.health.observe(row)? {
            return Ok(row.into());
        }
        self.user_by_external_id(external_id)
            .await?
            .ok_or(StoreError::Conflict(Conflict::UsernameTaken))
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        Ok(self.users_where("user_id = $1", id.0).await?.pop())
    }

    async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<UserRecord>, StoreError> {
        let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
        self.users_where("user_id = any($1)", ids).await
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
        let id: Result<i64, _> = sqlx::query_scalar(
            "insert into sessions \
             (user_id, token_hash, created_at, last_activity, platform, device_name) \
             values ($1, $2, $3, $3, $4, $5) returning session_id",
        )
        .bind(user.0)
        .bind(token_hash)
        .bind(at)
        .bind(device.platform.as_str())
        .bind(device.name.as_deref())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| refused(e, Conflict::TokenInUse, Missing::User));
        self.health.observe(id).map(SessionId)
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
            .bind(at)
            .bind(token_expires_at)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| refused(e, Conflict::TokenInUse, Missing::User));
        Ok(self.health.observe(ids)?.first().copied().map(SessionId))
    }

    async fn sessions_of(&self, user: UserId) -> Result<Vec<SessionInfo>, StoreError> {
        let rows: Vec<(i64, String, Option<String>, DateTime<Utc>, DateTime<Utc>)> =
            sqlx::query_as(sql::SESSIONS_OF)
                .bind(user.0)
                .fetch_all(&self.pool)
                .await
                .map_err(other)?;
        Ok(rows
            .into_iter()
            .map(
                |(id, platform, name, created_at, last_activity)| SessionInfo {
                    id: SessionId(id),
                    platform: Platform::from_column(&platform),
                    name,
                    created_at,
                    last_activity,
                },
            )
            .collect())
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
            .bind(status.expires_at)
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
            let row: Option<(Vec<u8>, Option<DateTime<Utc>>)> =
                sqlx::query_as(sql::DELETE_SESSION_RETURNING_EXPIRY)
                    .bind(session.0)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some((hash, Some(until))) = &row {
                sqlx::query(sql::PURGE_REVOKED)
                    .bind(Utc::now())
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
        if batch.is_empty() {
            return Ok(());
        }
        // Two statements with array parameters instead of one per row: a flush costs the same
        // few round trips for 10 users or 10 000 (see docs/ARCHITECTURE.md for measurements).
        let columns = PresenceColumns::of(batch);
        let written = async {
            let mut tx = self.pool.begin().await.map_err(other)?;
            // Several nodes write overlapping batches (a user's requests reach every node): the
            // rows are locked in one order first, or two nodes' updates, each locking in its
            // own plan's order, can deadlock. A session row is only written under its user's.
            sqlx::query(
                "select user_id from users where user_id = any($1) order by user_id for update",
            )
            .bind(&columns.user_ids)
            .execute(&mut *tx)
            .await
            .map_err(other)?;
            // The status of the newest transition wins, and `last_seen` only moves forward.
            sqlx::query(
                "update users u set \
                 online_status = case when b.seq >= u.presence_seq then b.status \
                 else u.online_status end, \
                 last_seen = greatest(u.last_seen, b.last_seen), \
                 presence_seq = greatest(u.presence_seq, b.seq) \
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
            let (users, expiries): (Vec<i64>, Vec<DateTime<Utc>>) = batch
                .iter()
                .filter_map(|w| Some((w.user_id.0, w.expired_status?)))
                .unzip();
            if !users.is_empty() {
                sqlx::query(
                    "update users u set status_mode = 'auto', status_text = null, \
                     status_emoji = null, status_expires_at = null \
                     from unnest($1::bigint[], $2::timestamptz[]) as b (user_id, expired) \
                     where u.user_id = b.user_id and u.status_expires_at = b.expired",
                )
                .bind(&users)
                .bind(&expiries)
                .execute(&mut *tx)
                .await
                .map_err(other)?;
            }
            tx.commit().await.map_err(other)
        };
        self.health.observe(written.await)
    }

    async fn load_live(&self, live: Liveness) -> Result<Vec<RestoredUser>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(other)?;
        let rows: Vec<LiveColumns> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select s.user_id, s.session_id, s.last_activity, s.expires_at, s.platform, \
             u.presence_seq, u.last_seen, u.status_mode, u.status_text, u.status_emoji, \
             u.status_expires_at from sessions s join users u on u.user_id = s.user_id \
             where {LIVE_SESSION} order by s.user_id, s.session_id"
        )))
        .bind(live.now)
        .bind(live.inactive_before)
        .fetch_all(&mut *tx)
        .await
        .map_err(other)?;
        let with_status: Vec<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select {USER_COLUMNS} from users where {}",
            sql::HAS_STATUS
        )))
        .fetch_all(&mut *tx)
        .await
        .map_err(other)?;
        tx.commit().await.map_err(other)?;
        let mut users = Vec::new();
        sql::group_live(
            rows.into_iter().map(LiveRow::from),
            live.timeout(),
            &mut users,
        );
        let with_status = with_status.into_iter().map(|row| {
            let user = UserRecord::from(row);
            RestoredUser {
                user_id: user.id,
                seq: user.presence_seq,
                last_seen: user.last_seen,
                sessions: Vec::new(),
                manual: user.manual,
            }
        });
        sql::merge_statuses(&mut users, with_status.collect());
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
            .bind(live.now)
            .bind(live.inactive_before)
            .fetch_one(&self.pool)
            .await
            .map_err(other)?;
            return Ok(u64::try_from(count).unwrap_or(0));
        }
        let marked = async {
            let mut tx = self.pool.begin().await.map_err(other)?;
            sqlx::query(sqlx::AssertSqlSafe(sql::end_sessions_of_inactive_users()))
                .bind(live.now)
                .bind(live.inactive_before)
                .execute(&mut *tx)
                .await
                .map_err(other)?;
            let done = sqlx::query(sqlx::AssertSqlSafe(sql::mark_offline()))
                .bind(live.now)
                .bind(live.inactive_before)
                .bind(seq_to_db(next_seq(0, Utc::now())))
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
    use super::*;
    use crate::domain::{Platform, StoredSession};

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
                    platform: Platform::Web,
                })
                .collect(),
            expired_status: None,
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
