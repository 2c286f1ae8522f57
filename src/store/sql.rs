//! What the two SQL stores share: statements that read the same in both dialects (written with
//! `$N` placeholders, which SQLite accepts too), column lists, conversions, the mapping of
//! database errors onto [`StoreError`], and the decoding steps both backends run on their rows.
//! Each backend keeps only what really differs: how values are bound (SQLite stores times as
//! text and passes id lists as JSON; PostgreSQL has `timestamptz` and arrays) and how a batch
//! reaches the database.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use super::{Conflict, Missing, SessionRecord, StoreError};
use crate::domain::{
    LastSeenAudience, ManualStatus, OnlineAudience, Platform, PrivacyChange, PrivacySettings,
    RestoredUser, SessionId, StatusMode, StoredSession, UserId, UserPrivacy,
};

/// The columns a [`super::UserRecord`] is read from.
pub(super) const USER_COLUMNS: &str = "user_id, username, password_hash, is_admin, \
     online_status, last_seen, presence_seq, status_mode, status_text, status_emoji, \
     status_expires_at";

/// The `like` pattern (with `\` as the escape) that matches names containing `needle`,
/// compared in lower case.
pub(super) fn like_pattern(needle: &str) -> String {
    let mut pattern = String::with_capacity(needle.len() + 2);
    pattern.push('%');
    for c in needle.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The `where` clause of a user search (after [`like_pattern`] as `$1`): names that match, by
/// id after `after`, at most `limit`. The two numbers are typed integers, so formatting them
/// into the SQL is safe.
pub(super) fn search_condition(after: Option<UserId>, limit: usize) -> String {
    format!(
        "lower(username) like $1 escape '\\' and user_id > {} order by user_id limit {}",
        after.map_or(i64::MIN, |id| id.0),
        i64::try_from(limit).unwrap_or(i64::MAX),
    )
}

/// Users with a manual status (whatever their sessions).
pub(super) const HAS_STATUS: &str =
    "(status_mode <> 'auto' or status_text is not null or status_emoji is not null)";

/// Stores user `$1`'s manual status: `$2` mode, `$3` text, `$4` emoji, `$5` expiry.
pub(super) const SET_STATUS: &str = "update users set status_mode = $2, status_text = $3, \
     status_emoji = $4, status_expires_at = $5 where user_id = $1";

/// Opens an external token's session: user `$1`, token hash `$2`, at `$3`, until `$4`,
/// unless the hash was revoked (no row is returned then).
pub(super) const CREATE_TOKEN_SESSION: &str = "insert into sessions \
     (user_id, token_hash, created_at, last_activity, token_expires_at) \
     select $1, $2, $3, $3, $4 \
     where not exists (select 1 from revoked_tokens where token_hash = $2) \
     returning session_id";

/// Deletes session `$1`, returning its token hash and its token's expiry (if an external one).
pub(super) const DELETE_SESSION_RETURNING_EXPIRY: &str =
    "delete from sessions where session_id = $1 returning token_hash, token_expires_at";

/// Drops revoked token hashes that expired before `$1`.
pub(super) const PURGE_REVOKED: &str = "delete from revoked_tokens where expires_at < $1";

/// Keeps token hash `$1` revoked until `$2`.
pub(super) const REVOKE_TOKEN: &str = "insert into revoked_tokens (token_hash, expires_at) \
     values ($1, $2) on conflict do nothing";

/// User `$1`'s sessions, newest first.
pub(super) const SESSIONS_OF: &str = "select session_id, platform, device_name, created_at, \
     last_activity from sessions where user_id = $1 order by created_at desc, session_id desc";

/// A live session (`s`) at `$1` = now, `$2` = now - inactivity timeout: active within the
/// timeout and not ended earlier (a closed socket's grace; `expires_at` is null for rows
/// written before it existed). `load_live`, `mark_inactive_offline` and restarts all use it.
pub(super) const LIVE_SESSION: &str =
    "(s.expires_at is null or s.expires_at > $1) and s.last_activity >= $2";

/// Users stored as online without a live session (binds as [`LIVE_SESSION`]).
pub(super) fn inactive_users() -> String {
    format!(
        "online_status = 'online' and not exists (\
         select 1 from sessions s where s.user_id = users.user_id and ({LIVE_SESSION}))"
    )
}

/// Ends the stored sessions of [`inactive_users`] (binds as [`LIVE_SESSION`]): their
/// `expires_at` becomes `$1`, so no later restart brings them back, whatever its timeout.
/// Runs before [`mark_offline`], in the same transaction.
pub(super) fn end_sessions_of_inactive_users() -> String {
    format!(
        "update sessions set expires_at = $1 \
         where (expires_at is null or expires_at > $1) \
         and user_id in (select user_id from users where {})",
        inactive_users()
    )
}

/// Marks [`inactive_users`] offline, their `presence_seq` moved past `$3` (the transition's
/// sequence number), keeping `last_seen`.
pub(super) fn mark_offline() -> String {
    format!(
        "update users set online_status = 'offline', presence_seq = case \
         when presence_seq + 1 > $3 then presence_seq + 1 else $3 end where {}",
        inactive_users()
    )
}

/// User `$1`'s sessions but the `$2` most recently active.
pub(super) const SESSIONS_BEYOND: &str = "select session_id from sessions where user_id = $1 and session_id not in (\
     select session_id from sessions where user_id = $1 \
     order by last_activity desc, session_id desc limit $2)";

/// The session a token hash (`$1`) belongs to, with what authentication needs of its user.
pub(super) const SESSION_BY_TOKEN: &str = "select s.session_id, s.user_id, u.username, \
     u.is_admin, s.platform from sessions s join users u on u.user_id = s.user_id \
     where s.token_hash = $1";

/// A [`SessionRecord`] from the columns of [`SESSION_BY_TOKEN`].
fn session_record(row: (i64, i64, String, bool, String)) -> SessionRecord {
    let (session_id, user_id, username, is_admin, platform) = row;
    SessionRecord {
        session_id: SessionId(session_id),
        user_id: UserId(user_id),
        username,
        is_admin,
        platform: Platform::from_column(&platform),
    }
}

/// A manual status from its stored columns.
pub(super) fn manual_from_columns(
    mode: &str,
    text: Option<String>,
    emoji: Option<String>,
    expires_at: Option<DateTime<Utc>>,
) -> ManualStatus {
    ManualStatus {
        mode: StatusMode::from_column(mode),
        text: text.map(Into::into),
        emoji: emoji.map(Into::into),
        expires_at,
    }
}

/// Adds the users that have a manual status but no live session to `users` (sorted by id), as
/// restored users without sessions.
pub(super) fn merge_statuses(users: &mut Vec<RestoredUser>, with_status: Vec<RestoredUser>) {
    let known: BTreeSet<UserId> = users.iter().map(|u| u.user_id).collect();
    users.extend(
        with_status
            .into_iter()
            .filter(|u| !known.contains(&u.user_id)),
    );
    users.sort_unstable_by_key(|u| u.user_id);
}

/// Rewrites readiness's probe row (`$1` = now).
pub(super) const PROBE_WRITE: &str = "insert into health_probe (probe_id, probed_at) \
     values (1, $1) on conflict (probe_id) do update set probed_at = excluded.probed_at";

/// Bumps the version of user `$1`'s privacy data (creating its row), `$2` = now. Privacy
/// changes write this first, which takes the row's (PostgreSQL) or the database's (SQLite)
/// write lock at once, so one user's changes get their versions in commit order.
pub(super) const BUMP_PRIVACY_VERSION: &str = "insert into privacy_settings (user_id, updated_at) values ($1, $2) \
     on conflict (user_id) do update \
     set version = privacy_settings.version + 1, updated_at = $2";

/// Writes user `$1`'s settings: `$2` last seen audience, `$3` online audience, `$4` invisible,
/// `$5` now. Turning invisible mode on records `$5`; keeping it on keeps the first moment.
pub(super) const SET_SETTINGS: &str = "update privacy_settings set \
     last_seen_audience = coalesce($2, last_seen_audience), \
     online_audience = coalesce($3, online_audience), \
     invisible_since = case when $4 is null then invisible_since \
     when $4 then coalesce(invisible_since, $5) else null end \
     where user_id = $1";

/// Clears user `$1`'s except list (before the new one is inserted).
pub(super) const CLEAR_EXCEPT: &str = "delete from privacy_exceptions where user_id = $1";

/// A contact or block list: its table and the column holding the listed user.
#[derive(Debug, Clone, Copy)]
pub(super) struct List {
    pub table: &'static str,
    pub column: &'static str,
}

/// The contact list.
pub(super) const CONTACTS: List = List {
    table: "contacts",
    column: "contact_user_id",
};
/// The block list.
pub(super) const BLOCKS: List = List {
    table: "blocks",
    column: "blocked_user_id",
};
/// The `contacts_except` list.
pub(super) const EXCEPT: List = List {
    table: "privacy_exceptions",
    column: "excepted_user_id",
};

/// A contact or block list change as both backends apply it: one row inserted or deleted, and
/// the refusal when it cannot apply (the row exists already, or does not).
#[derive(Debug, Clone, Copy)]
pub(super) struct ListEdit {
    pub list: List,
    pub user: UserId,
    pub insert: bool,
    /// The refusal of an insert whose row exists.
    pub conflict: Conflict,
    /// The refusal of a delete whose row does not exist.
    pub missing: Missing,
}

impl ListEdit {
    /// The list edit `change` is, or `None` for a settings change.
    pub(super) fn of(change: &PrivacyChange) -> Option<Self> {
        let (list, user, insert) = match *change {
            PrivacyChange::AddContact(user) => (CONTACTS, user, true),
            PrivacyChange::RemoveContact(user) => (CONTACTS, user, false),
            PrivacyChange::Block(user) => (BLOCKS, user, true),
            PrivacyChange::Unblock(user) => (BLOCKS, user, false),
            PrivacyChange::Settings(_) => return None,
        };
        let contacts = list.table == CONTACTS.table;
        Some(Self {
            list,
            user,
            insert,
            conflict: if contacts {
                Conflict::AlreadyContact
            } else {
                Conflict::AlreadyBlocked
            },
            missing: if contacts {
                Missing::Contact
            } else {
                Missing::Block
            },
        })
    }
}

impl List {
    /// Inserts (`$1` owner, `$2` listed user, `$3` now).
    pub(super) fn insert(self) -> String {
        let List { table, column } = self;
        format!("insert into {table} (user_id, {column}, created_at) values ($1, $2, $3)")
    }

    /// Deletes (`$1` owner, `$2` listed user).
    pub(super) fn delete(self) -> String {
        let List { table, column } = self;
        format!("delete from {table} where user_id = $1 and {column} = $2")
    }
}

/// The set of `data` that `list` is stored in.
pub(super) fn members_of(list: List, data: &mut UserPrivacy) -> &mut BTreeSet<UserId> {
    match list.table {
        t if t == CONTACTS.table => &mut data.contacts,
        t if t == BLOCKS.table => &mut data.blocked,
        _ => &mut data.except,
    }
}

/// A store's database value for a sequence number or version (they fit an `i64` for the next
/// 290,000 years of microseconds).
pub(super) fn seq_to_db(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// A sequence number or version read back (a negative value cannot be stored by us).
pub(super) fn seq_from_db(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

/// Maps a database error: a unique violation is `conflict`, a foreign key violation (a user that
/// does not exist) `missing`; `unavailable` says which other failures mean the database cannot
/// take the statement now (then [`StoreError::Unavailable`]), anything else is
/// [`StoreError::Other`].
pub(super) fn classify(
    error: sqlx::Error,
    conflict: Option<Conflict>,
    missing: Option<Missing>,
    unavailable: fn(&sqlx::Error) -> bool,
) -> StoreError {
    if let sqlx::Error::Database(db) = &error {
        if let Some(kind) = conflict.filter(|_| db.is_unique_violation()) {
            return StoreError::Conflict(kind);
        }
        if let Some(kind) = missing.filter(|_| db.is_foreign_key_violation()) {
            return StoreError::NotFound(kind);
        }
    }
    if matches!(
        error,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)
    ) || unavailable(&error)
    {
        StoreError::Unavailable(error)
    } else {
        StoreError::Other(error.into())
    }
}

/// A value read from a column that holds something this version never writes.
pub(super) fn bad_column(column: &str, raw: &str) -> StoreError {
    StoreError::Other(anyhow::anyhow!("bad {column} {raw:?} in database"))
}

/// Privacy settings from their stored columns (all `None`: a user who never changed any).
pub(super) fn settings_from_columns(
    last_seen: Option<&str>,
    online: Option<&str>,
    invisible_since: Option<DateTime<Utc>>,
) -> Result<PrivacySettings, StoreError> {
    let mut settings = PrivacySettings {
        invisible_since,
        ..PrivacySettings::default()
    };
    if let Some(raw) = last_seen {
        settings.last_seen = LastSeenAudience::from_column(raw)
            .ok_or_else(|| bad_column("last_seen_audience", raw))?;
    }
    if let Some(raw) = online {
        settings.online =
            OnlineAudience::from_column(raw).ok_or_else(|| bad_column("online_audience", raw))?;
    }
    Ok(settings)
}

/// One live session as `load_live` reads it, with its user's state.
pub(super) struct LiveRow {
    pub user_id: i64,
    pub session_id: i64,
    pub last_activity: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub platform: Platform,
    pub presence_seq: i64,
    pub last_seen: Option<DateTime<Utc>>,
    pub manual: ManualStatus,
}

/// Groups live sessions, ordered by user, into restored users; a session stored without
/// `expires_at` ends `timeout` after its last activity.
pub(super) fn group_live(
    rows: impl IntoIterator<Item = LiveRow>,
    timeout: chrono::Duration,
    users: &mut Vec<RestoredUser>,
) {
    for row in rows {
        let user_id = UserId(row.user_id);
        if users.last().is_none_or(|u| u.user_id != user_id) {
            users.push(RestoredUser {
                user_id,
                seq: seq_from_db(row.presence_seq),
                last_seen: row.last_seen,
                sessions: Vec::with_capacity(1),
                manual: row.manual,
            });
        }
        if let Some(user) = users.last_mut() {
            user.sessions.push(StoredSession {
                id: SessionId(row.session_id),
                platform: row.platform,
                last_activity: row.last_activity,
                expires_at: row.expires_at.unwrap_or(row.last_activity + timeout),
            });
        }
    }
}

/// Runs the session statements on either backend: the statements, their binds and their rows
/// are the same in both.
pub(super) struct Sessions<'a, DB: sqlx::Database>(pub &'a sqlx::Pool<DB>);

impl<DB> Sessions<'_, DB>
where
    DB: sqlx::Database,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> &'q [u8]: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'r> (i64,): sqlx::FromRow<'r, DB::Row>,
    for<'r> (i64, i64, String, bool, String): sqlx::FromRow<'r, DB::Row>,
{
    /// The session a token hash belongs to.
    pub(super) async fn by_token(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<SessionRecord>, sqlx::Error> {
        let row: Option<(i64, i64, String, bool, String)> = sqlx::query_as(SESSION_BY_TOKEN)
            .bind(token_hash)
            .fetch_optional(self.0)
            .await?;
        Ok(row.map(session_record))
    }

    /// `user`'s sessions but the `keep` most recently active.
    pub(super) async fn beyond(
        &self,
        user: UserId,
        keep: usize,
    ) -> Result<Vec<SessionId>, sqlx::Error> {
        let rows: Vec<(i64,)> = sqlx::query_as(SESSIONS_BEYOND)
            .bind(user.0)
            .bind(i64::try_from(keep).unwrap_or(i64::MAX))
            .fetch_all(self.0)
            .await?;
        Ok(rows.into_iter().map(|(id,)| SessionId(id)).collect())
    }
}
