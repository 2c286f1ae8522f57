//! Privacy data in SQLite: settings, the except list, contacts and blocks.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use sqlx::{Row, SqliteConnection, SqlitePool};

use super::{other, parse_opt_ts, seq_from_db, ts};
use crate::domain::UserId;
use crate::privacy::{
    LastSeenAudience, OnlineAudience, PrivacyChange, PrivacySettings, SettingsUpdate,
    StoredPrivacy, UserPrivacy,
};
use crate::store::{BLOCKS, CONTACTS, ListEdit, StoreError};

/// The three per-user lists and where they are stored.
#[derive(Clone, Copy)]
enum List {
    Contacts,
    Blocked,
    Except,
}

impl List {
    const ALL: [Self; 3] = [Self::Contacts, Self::Blocked, Self::Except];

    /// Table and the column of the listed user.
    fn table(self) -> (&'static str, &'static str) {
        match self {
            Self::Contacts => CONTACTS,
            Self::Blocked => BLOCKS,
            Self::Except => ("privacy_exceptions", "excepted_user_id"),
        }
    }

    fn of(self, data: &mut UserPrivacy) -> &mut BTreeSet<UserId> {
        match self {
            Self::Contacts => &mut data.contacts,
            Self::Blocked => &mut data.blocked,
            Self::Except => &mut data.except,
        }
    }
}

fn ids_json(users: &[UserId]) -> Result<String, StoreError> {
    let ids: Vec<i64> = users.iter().map(|id| id.0).collect();
    serde_json::to_string(&ids).map_err(|e| StoreError::Other(e.into()))
}

fn bad_column(column: &str, raw: &str) -> StoreError {
    StoreError::Other(anyhow::anyhow!("bad {column} {raw:?} in database"))
}

/// Maps a failed write that names an unknown user to `NotFound`.
fn unknown_user(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            StoreError::NotFound("No such user.")
        }
        error => other(error),
    }
}

/// Maps a failed insert: duplicate → `Conflict(duplicate)`, unknown user → `NotFound`.
fn refused(error: sqlx::Error, duplicate: &'static str) -> StoreError {
    match error {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(duplicate),
        error => unknown_user(error),
    }
}

pub(super) async fn privacy_of(
    pool: &SqlitePool,
    users: &[UserId],
) -> Result<Vec<StoredPrivacy>, StoreError> {
    // One read transaction: the four queries see the same snapshot.
    let mut tx = pool.begin().await.map_err(other)?;
    let found = load(&mut tx, users).await?;
    tx.commit().await.map_err(other)?;
    Ok(found)
}

async fn load(
    conn: &mut SqliteConnection,
    users: &[UserId],
) -> Result<Vec<StoredPrivacy>, StoreError> {
    let json = ids_json(users)?;
    let rows = sqlx::query(
        "select u.user_id, p.last_seen_audience, p.online_audience, p.invisible_since, \
         p.version from users u left join privacy_settings p on p.user_id = u.user_id \
         where u.user_id in (select value from json_each(?))",
    )
    .bind(&json)
    .fetch_all(&mut *conn)
    .await
    .map_err(other)?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in rows {
        let user_id = UserId(row.try_get("user_id").map_err(other)?);
        let version: Option<i64> = row.try_get("version").map_err(other)?;
        let mut settings = PrivacySettings::default();
        if let Some(raw) = row
            .try_get::<Option<String>, _>("last_seen_audience")
            .map_err(other)?
        {
            settings.last_seen = LastSeenAudience::from_column(&raw)
                .ok_or_else(|| bad_column("last_seen_audience", &raw))?;
        }
        if let Some(raw) = row
            .try_get::<Option<String>, _>("online_audience")
            .map_err(other)?
        {
            settings.online = OnlineAudience::from_column(&raw)
                .ok_or_else(|| bad_column("online_audience", &raw))?;
        }
        settings.invisible_since = parse_opt_ts(row.try_get("invisible_since").map_err(other)?)?;
        let stored = StoredPrivacy {
            user_id,
            version: version.map_or(0, seq_from_db),
            data: UserPrivacy {
                settings,
                ..UserPrivacy::default()
            },
        };
        found.insert(user_id, stored);
    }
    for list in List::ALL {
        let (table, column) = list.table();
        let members = sqlx::query(sqlx::AssertSqlSafe(format!(
            "select user_id, {column} as member from {table} \
             where user_id in (select value from json_each(?))"
        )))
        .bind(&json)
        .fetch_all(&mut *conn)
        .await
        .map_err(other)?;
        for row in members {
            let user_id = UserId(row.try_get("user_id").map_err(other)?);
            let member = UserId(row.try_get("member").map_err(other)?);
            if let Some(stored) = found.get_mut(&user_id) {
                list.of(&mut stored.data).insert(member);
            }
        }
    }
    Ok(found.into_values().collect())
}

pub(super) async fn change_privacy(
    pool: &SqlitePool,
    owner: UserId,
    change: &PrivacyChange,
    at: DateTime<Utc>,
) -> Result<StoredPrivacy, StoreError> {
    let mut tx = pool.begin().await.map_err(other)?;
    // Writing first takes SQLite's write lock at once; a deferred transaction that reads first
    // can fail to upgrade when another writer commits in between.
    sqlx::query(
        "insert into privacy_settings (user_id, updated_at) values (?1, ?2) \
         on conflict (user_id) do update set version = version + 1, updated_at = ?2",
    )
    .bind(owner.0)
    .bind(ts(at))
    .execute(&mut *tx)
    .await
    .map_err(unknown_user)?;
    if let PrivacyChange::Settings(update) = change {
        set_settings(&mut tx, owner, update, at).await?;
    } else if let Some(edit) = ListEdit::of(change) {
        if edit.insert {
            add(&mut tx, owner, &edit, at).await?;
        } else {
            remove(&mut tx, owner, &edit).await?;
        }
    }
    let state = load(&mut tx, &[owner])
        .await?
        .pop()
        .ok_or(StoreError::NotFound("No such user."))?;
    tx.commit().await.map_err(other)?;
    Ok(state)
}

async fn add(
    conn: &mut SqliteConnection,
    owner: UserId,
    edit: &ListEdit,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let (table, column) = (edit.table, edit.column);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "insert into {table} (user_id, {column}, created_at) values (?, ?, ?)"
    )))
    .bind(owner.0)
    .bind(edit.user.0)
    .bind(ts(at))
    .execute(conn)
    .await
    .map(drop)
    .map_err(|e| refused(e, edit.refusal))
}

async fn remove(
    conn: &mut SqliteConnection,
    owner: UserId,
    edit: &ListEdit,
) -> Result<(), StoreError> {
    let (table, column) = (edit.table, edit.column);
    let done = sqlx::query(sqlx::AssertSqlSafe(format!(
        "delete from {table} where user_id = ? and {column} = ?"
    )))
    .bind(owner.0)
    .bind(edit.user.0)
    .execute(conn)
    .await
    .map_err(other)?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound(edit.refusal));
    }
    Ok(())
}

async fn set_settings(
    conn: &mut SqliteConnection,
    owner: UserId,
    update: &SettingsUpdate,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    // Turning invisible mode on records `at`; keeping it on keeps the first moment.
    sqlx::query(
        "update privacy_settings set last_seen_audience = ?2, online_audience = ?3, \
         invisible_since = case when ?4 then coalesce(invisible_since, ?5) else null end \
         where user_id = ?1",
    )
    .bind(owner.0)
    .bind(update.last_seen.as_str())
    .bind(update.online.as_str())
    .bind(update.invisible)
    .bind(ts(at))
    .execute(&mut *conn)
    .await
    .map_err(other)?;
    sqlx::query("delete from privacy_exceptions where user_id = ?")
        .bind(owner.0)
        .execute(&mut *conn)
        .await
        .map_err(other)?;
    let except: Vec<UserId> = update.except.iter().copied().collect();
    sqlx::query(
        "insert into privacy_exceptions (user_id, excepted_user_id) \
         select ?, value from json_each(?)",
    )
    .bind(owner.0)
    .bind(ids_json(&except)?)
    .execute(&mut *conn)
    .await
    .map(drop)
    .map_err(|e| refused(e, "duplicate in the except list"))
}
