//! Durable storage of users, sessions, the persisted copy of presence, and privacy data
//! (settings, contacts, blocks).
//!
//! [`Store`] is the trait every backend implements: [`sqlite::SqliteStore`] (embedded, the
//! default) and [`postgres::PostgresStore`] (a database server); [`connect`] picks one by the
//! URL's scheme. `tests/store_contract.rs` runs one suite against both. The store owns SQL and
//! its error mapping; it knows nothing about HTTP or the in-memory engine's locking.

pub mod datafile;
pub mod events;
pub mod postgres;
pub mod samples;
mod sql;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{Device, ManualStatus, Platform, PresenceStatus, SessionId, UserId, Username};
use crate::domain::{PresenceWrite, PrivacyChange, RestoredUser, StoredPrivacy, StoredSession};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was violated (e.g. the username is taken).
    #[error("conflict: {0:?}")]
    Conflict(Conflict),
    /// The row to change, or a user it refers to, does not exist.
    #[error("not found: {0:?}")]
    NotFound(Missing),
    /// The database could not be reached, or cannot take the statement now (disk full,
    /// read-only, locked).
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// Any other database failure.
    #[error("database error")]
    Other(#[source] anyhow::Error),
    /// The database cannot be opened as configured (a missing directory, a refused connection
    /// or login); the message says what is wrong and what to change, without a password.
    #[error("{0}")]
    Setup(String),
}

/// Which uniqueness rule a write broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    /// Another user has this username.
    UsernameTaken,
    /// Another session has this token hash (a 1 in 2^256 event, or a bug).
    TokenInUse,
    /// The user is already in the owner's contacts.
    AlreadyContact,
    /// The owner already blocked the user.
    AlreadyBlocked,
}

/// What a write or change referred to that does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// A user (the owner, or a user named in the change).
    User,
    /// The user to remove is not in the owner's contacts.
    Contact,
    /// The user to unblock is not blocked.
    Block,
}

/// Whether the database currently takes writes. A write that fails because the database
/// cannot take it ([`StoreError::Unavailable`]: disk full, read-only, unreachable) sets it;
/// the next write that succeeds clears it. Readiness reports it and, while it is set, probes
/// with a real write, so it recovers by itself once the fault goes away.
#[derive(Debug, Default)]
pub(crate) struct WriteHealth {
    failing: std::sync::atomic::AtomicBool,
}

impl WriteHealth {
    /// Records the outcome of a write and passes it on.
    pub(crate) fn observe<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        use std::sync::atomic::Ordering;
        match &result {
            Ok(_) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("the database takes writes again");
                    metrics::gauge!("lastseen_store_writable").set(1.0);
                }
            }
            Err(StoreError::Unavailable(error)) => {
                metrics::counter!("lastseen_store_write_failures_total").increment(1);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(%error, "the database refuses writes; answering 503 until it recovers");
                    metrics::gauge!("lastseen_store_writable").set(0.0);
                }
            }
            Err(_) => {}
        }
        result
    }

    /// Whether the last write failed for want of a working database.
    pub(crate) fn failing(&self) -> bool {
        self.failing.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Which stored sessions are live at a moment: those active at or after `inactive_before`
/// whose `expires_at` (if stored) is after `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// The moment.
    pub now: DateTime<Utc>,
    /// `now` minus the inactivity timeout.
    pub inactive_before: DateTime<Utc>,
}

impl Liveness {
    /// Liveness at `now` for sessions that end `timeout` after their last activity.
    pub fn at(now: DateTime<Utc>, timeout: std::time::Duration) -> Self {
        let timeout = chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
        Self {
            now,
            inactive_before: now
                .checked_sub_signed(timeout)
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        }
    }

    /// The inactivity timeout this liveness was built with.
    pub fn timeout(&self) -> chrono::Duration {
        self.now - self.inactive_before
    }
}

/// A presence batch with each user and session once, in id order: a user's last write wins
/// and a session keeps its latest activity (with the expiry of its last write), as if the
/// writes were applied one by one. Bulk statements need this (an `UPDATE ... FROM` joining one
/// row twice picks either), and the fixed order makes concurrent flushes of several nodes lock
/// rows in the same order.
pub(crate) struct CoalescedBatch<'a> {
    /// One write per user, by user id.
    pub users: Vec<&'a PresenceWrite>,
    /// One entry per session, by session id.
    pub sessions: Vec<StoredSession>,
}

impl<'a> CoalescedBatch<'a> {
    pub(crate) fn of(batch: &'a [PresenceWrite]) -> Self {
        // Stable sorts keep equal ids in the writes' order, so the last write of a run is the
        // latest. The persister hands over batches in user-id order, for which sorting the
        // users is one pass; their sessions come in that order too, mostly ascending already.
        // (Two ordered maps cost 1.2% of a server's CPU when every heartbeat dirtied its user.)
        let mut users: Vec<&PresenceWrite> = batch.iter().collect();
        users.sort_by_key(|write| write.user_id);
        users.dedup_by(|later, kept| {
            let same = later.user_id == kept.user_id;
            if same {
                *kept = *later;
            }
            same
        });
        let mut sessions: Vec<StoredSession> = batch
            .iter()
            .flat_map(|write| write.sessions.iter().copied())
            .collect();
        sessions.sort_by_key(|session| session.id);
        sessions.dedup_by(|later, kept| {
            let same = later.id == kept.id;
            if same {
                kept.last_activity = kept.last_activity.max(later.last_activity);
                kept.expires_at = later.expires_at;
            }
            same
        });
        Self { users, sessions }
    }
}

/// The password hash of users created for an external id: not a PHC string, so no password
/// matches it and they cannot log in with one.
pub const NO_PASSWORD: &str = "!";

/// A stored user.
#[derive(Debug, Clone)]
pub struct UserRecord {
    /// Primary key.
    pub id: UserId,
    /// Unique name.
    pub username: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// May use the admin endpoints.
    pub is_admin: bool,
    /// Persisted status (current within `persist_interval`).
    pub online_status: PresenceStatus,
    /// Persisted last activity.
    pub last_seen: Option<DateTime<Utc>>,
    /// Persisted sequence number of the last transition.
    pub presence_seq: u64,
    /// The user's manual status.
    pub manual: ManualStatus,
}

/// A stored session, joined with what authentication needs of its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Primary key.
    pub session_id: SessionId,
    /// Owner.
    pub user_id: UserId,
    /// Owner's name.
    pub username: String,
    /// Owner's admin flag.
    pub is_admin: bool,
    /// The session's device platform.
    pub platform: Platform,
}

/// A session as its owner lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Primary key.
    pub id: SessionId,
    /// Device platform.
    pub platform: Platform,
    /// Device name, if the client gave one.
    pub name: Option<String>,
    /// When the session was created (the login).
    pub created_at: DateTime<Utc>,
    /// Its last activity as stored (within `persist_interval`).
    pub last_activity: DateTime<Utc>,
}

/// Storage operations. Implementations are cheap to share behind an `Arc`.
#[async_trait]
pub trait Store: events::EventLog + samples::OnlineSamples + Send + Sync + 'static {
    /// Applies pending schema migrations.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Checks the database answers and, if the last write failed, that it takes a write again
    /// (one tiny probe write); [`StoreError::Unavailable`] otherwise.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Creates a user; [`StoreError::Conflict`] if the name is taken.
    async fn create_user(
        &self,
        username: &Username,
        password_hash: &str,
        is_admin: bool,
    ) -> Result<UserRecord, StoreError>;
    /// Looks a user up by name.
    async fn user_by_username(&self, username: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Looks a user up by the id another auth system knows them by (a JWT's user claim).
    async fn user_by_external_id(
        &self,
        external_id: &str,
    ) -> Result<Option<UserRecord>, StoreError>;
    /// Finds the user known elsewhere as `external_id`, or creates them as `username`, not an
    /// admin, with the password hash [`NO_PASSWORD`] (no password matches it). Concurrent calls
    /// for one id create one user. [`StoreError::Conflict`] (`UsernameTaken`) if there is no
    /// such user and another user has `username`: the caller picks another name.
    async fn external_user(
        &self,
        external_id: &str,
        username: &Username,
    ) -> Result<UserRecord, StoreError>;
    /// Looks a user up by id.
    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StoreError>;
    /// Looks users up by id; unknown ids are left out; order is unspecified.
    async fn users_by_ids(&self, ids: &[UserId]) -> Result<Vec<UserRecord>, StoreError>;
    /// Users whose name contains `needle` (case-insensitively; empty: everyone), ordered by
    /// id, after `after`, at most `limit`.
    async fn search_users(
        &self,
        needle: &str,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, StoreError>;
    /// Stores a new session for `user` identified by the hash of its token;
    /// [`StoreError::Conflict`] if another session has that hash, [`StoreError::NotFound`] if
    /// the user does not exist.
    async fn create_session(
        &self,
        user: UserId,
        token_hash: &[u8],
        at: DateTime<Utc>,
    ) -> Result<SessionId, StoreError> {
        self.create_device_session(user, token_hash, at, &Device::default())
            .await
    }
    /// [`Store::create_session`] for a session on `device`.
    async fn create_device_session(
        &self,
        user: UserId,
        token_hash: &[u8],
        at: DateTime<Utc>,
        device: &Device,
    ) -> Result<SessionId, StoreError>;
    /// Stores the session of an external token (a JWT) that expires at `token_expires_at`,
    /// identified by `token_hash`; `None` if a session with that hash was revoked and the token
    /// has not expired yet. [`StoreError::Conflict`] if a session has that hash,
    /// [`StoreError::NotFound`] if the user does not exist.
    async fn create_token_session(
        &self,
        user: UserId,
        token_hash: &[u8],
        at: DateTime<Utc>,
        token_expires_at: DateTime<Utc>,
    ) -> Result<Option<SessionId>, StoreError>;
    /// `user`'s sessions, newest first.
    async fn sessions_of(&self, user: UserId) -> Result<Vec<SessionInfo>, StoreError>;
    /// Stores `user`'s manual status; [`StoreError::NotFound`] if the user does not exist.
    async fn set_manual_status(
        &self,
        user: UserId,
        status: &ManualStatus,
    ) -> Result<(), StoreError>;
    /// Finds the session a token hash belongs to.
    async fn session_by_token(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<SessionRecord>, StoreError>;
    /// Deletes a session (logout, revocation); its token stops working. Returns the deleted
    /// session's token hash (so caches can drop it), `None` if there was no such session. The
    /// hash of an external token's session is kept as revoked until the token expires (see
    /// [`Store::create_token_session`]); revoked hashes past their expiry are dropped.
    async fn delete_session(&self, session: SessionId) -> Result<Option<Vec<u8>>, StoreError>;
    /// `user`'s sessions except the `keep` most recently active ones.
    async fn sessions_beyond(
        &self,
        user: UserId,
        keep: usize,
    ) -> Result<Vec<SessionId>, StoreError>;
    /// Writes a batch of presence state in one transaction.
    async fn write_presence(&self, batch: &[PresenceWrite]) -> Result<(), StoreError>;
    /// Loads users with at least one session live at `live.now`, with those sessions, and
    /// users with a manual status (which may reset itself while they are offline).
    async fn load_live(&self, live: Liveness) -> Result<Vec<RestoredUser>, StoreError>;
    /// Marks offline every user stored as online who has no session live at `live.now`, and
    /// ends those users' stored sessions, so that no later start (with a longer timeout, say)
    /// brings them back; `last_seen` is kept. With `dry_run`, only counts them.
    async fn mark_inactive_offline(&self, live: Liveness, dry_run: bool)
    -> Result<u64, StoreError>;
    /// Privacy data of those of `users` that exist (defaults, version 0, for a user who never
    /// changed any), read in one consistent snapshot; order is unspecified.
    async fn privacy_of(&self, users: &[UserId]) -> Result<Vec<StoredPrivacy>, StoreError>;
    /// Applies `change` to `owner`'s privacy data in one transaction that also bumps its
    /// version, and returns the whole new state. `at` is the request time (for
    /// `invisible_since` when invisible mode is turned on, and `created_at`).
    /// [`StoreError::Conflict`] if the user is already in the list; [`StoreError::NotFound`]
    /// if a removed user is not in it, or an added user does not exist.
    async fn change_privacy(
        &self,
        owner: UserId,
        change: &PrivacyChange,
        at: DateTime<Utc>,
    ) -> Result<StoredPrivacy, StoreError>;
}

/// Opens the store a database URL names: `sqlite://PATH`, `sqlite::memory:`, or
/// `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` (also spelt `postgresql://`).
///
/// # Errors
/// [`StoreError::Unavailable`] if it cannot be opened, [`StoreError::Other`] for an
/// unsupported scheme. Errors name at most the scheme, never the URL, which may hold a
/// password.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    match scheme(url).map(str::to_ascii_lowercase).as_deref() {
        Some("sqlite") => Ok(Arc::new(sqlite::SqliteStore::connect(url).await?)),
        Some("postgres" | "postgresql") => {
            Ok(Arc::new(postgres::PostgresStore::connect(url).await?))
        }
        Some(other) => Err(unsupported(&format!("scheme `{other}:`"))),
        None => Err(unsupported("URL without a scheme")),
    }
}

/// The URL's scheme (what precedes the first `:`), if it is spelt like one.
fn scheme(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once(':')?;
    let mut chars = scheme.chars();
    let spelt_right = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    spelt_right.then_some(scheme)
}

/// Takes the exclusive hold on a SQLite database file for as long as the returned lock lives,
/// so that a second server (or a command that writes presence) on the same file refuses to
/// start instead of running a second engine over the same rows. Nothing to hold for
/// PostgreSQL, which several nodes share by design, or an in-memory database.
///
/// # Errors
/// [`LockError::Held`] naming the process that holds it; [`LockError::Setup`] if the file's
/// directory is missing or the lock file cannot be written.
pub fn lock_data_file(url: &str) -> Result<Option<datafile::DataLock>, LockError> {
    match scheme(url).map(str::to_ascii_lowercase).as_deref() {
        Some("sqlite") => datafile::DataLock::acquire(url),
        _ => Ok(None),
    }
}

/// Why [`lock_data_file`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the database file.
    #[error(
        "the SQLite database {database} is in use by another lastseen process ({holder} holds \
         {lock}); stop that process first, or give this one its own --database-url"
    )]
    Held {
        /// The database file.
        database: String,
        /// The lock file.
        lock: String,
        /// `pid N` when the holder wrote its pid, else `a process`.
        holder: String,
    },
    /// The database's location cannot be used.
    #[error(transparent)]
    Setup(#[from] StoreError),
}

fn unsupported(what: &str) -> StoreError {
    StoreError::Other(anyhow::anyhow!(
        "unsupported database_url ({what}): use sqlite://PATH or postgres://USER@HOST/DB"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error and its causes, as `main` prints them.
    fn error_text(error: &StoreError) -> String {
        let mut text = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }

    #[test]
    fn a_coalesced_batch_has_each_user_and_session_once_in_id_order() {
        let at = |s: i64| DateTime::UNIX_EPOCH + chrono::Duration::seconds(s);
        let session_on = |platform, id, activity, expires| StoredSession {
            id: SessionId(id),
            last_activity: at(activity),
            expires_at: at(expires),
            platform,
        };
        let session = |id, activity, expires| session_on(Platform::Web, id, activity, expires);
        let write = |user, seq, sessions| PresenceWrite {
            user_id: UserId(user),
            status: PresenceStatus::Online,
            last_seen: None,
            seq,
            sessions,
            expired_status: None,
        };
        let batch = [
            write(2, 1, vec![session(20, 50, 400), session(5, 10, 300)]),
            write(1, 1, vec![session(10, 10, 300)]),
            // Session 20 again, with an older activity: its activity stays, its expiry moves,
            // the rest is the first write's.
            write(2, 2, vec![session_on(Platform::Mobile, 20, 40, 350)]),
            write(3, 1, vec![session(5, 30, 330)]),
        ];
        let coalesced = CoalescedBatch::of(&batch);
        let users: Vec<_> = coalesced
            .users
            .iter()
            .map(|w| (w.user_id.0, w.seq))
            .collect();
        assert_eq!(
            users,
            [(1, 1), (2, 2), (3, 1)],
            "the last write of a user wins"
        );
        assert_eq!(
            coalesced.sessions,
            [
                session(5, 30, 330),
                session(10, 10, 300),
                session(20, 50, 350)
            ]
        );
    }

    #[test]
    fn schemes_are_recognised_only_when_spelt_like_one() {
        assert_eq!(scheme("sqlite::memory:"), Some("sqlite"));
        assert_eq!(scheme("postgresql://u@h/db"), Some("postgresql"));
        assert_eq!(scheme("lastseen.db"), None);
        assert_eq!(scheme("/var/lib/x:y"), None);
    }

    #[tokio::test]
    async fn errors_never_show_the_password_of_a_url() {
        let unsupported = connect("mysql://admin:hunter2-secret@db.example/app")
            .await
            .err()
            .expect("mysql is not supported");
        let text = error_text(&unsupported);
        assert!(text.contains("mysql"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");

        let no_scheme = connect("admin:hunter2-secret@db.example/app").await.err();
        let text = error_text(&no_scheme.expect("no scheme"));
        assert!(!text.contains("hunter2"), "{text}");

        let malformed = connect("postgres://admin:hunter2-secret@127.0.0.1:port/app").await;
        let text = error_text(&malformed.err().expect("the port is not a number"));
        assert!(!text.contains("hunter2"), "{text}");

        // Nothing listens on port 1: the connection is refused.
        let refused = connect("postgres://admin:hunter2-secret@127.0.0.1:1/app")
            .await
            .err()
            .expect("nothing listens on port 1");
        assert!(matches!(refused, StoreError::Setup(_)), "{refused:?}");
        assert_eq!(
            refused.to_string(),
            "PostgreSQL at 127.0.0.1:1 (database \"app\", from database_url) refused the \
             connection: is PostgreSQL running there?"
        );
        let text = error_text(&refused);
        assert!(!text.contains("hunter2"), "{text}");
    }
}
