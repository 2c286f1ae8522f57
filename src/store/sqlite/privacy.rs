//! Privacy data in SQLite: settings, the except list, contacts and blocks.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{SqliteConnection, SqlitePool};

use super::{ids_json, other, parse_opt_ts, refused, ts, unknown_user};
use crate::domain::{
    LastSeenAudience, OnlineAudience, PrivacyChange, SettingsUpdate, StoredPrivacy, UserId,
    UserPrivacy,
};
use crate::store::sql::{self, BLOCKS, CONTACTS, EXCEPT, ListEdit, seq_from_db};
use crate::store::{Missing, StoreError};

/// A settings row: user, last seen audience, online audience, invisible since, version.
type SettingsRow = (
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

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
    let rows: Vec<SettingsRow> = sqlx::query_as(
        "select u.user_id, p.last_seen_audience, p.online_audience, p.invisible_since, \
         p.version from users u left join privacy_settings p on p.user_id = u.user_id \
         where u.user_id in (select value from json_each($1))",
    )
    .bind(&json)
    .fetch_all(&mut *conn)
    .await
    .map_err(other)?;
    let mut found = HashMap::with_capacity(rows.len());
    for (user_id, last_seen, online, invisible_since, version) in rows {
        let invisible_since = parse_opt_ts(invisible_since)?;
        let settings =
            sql::settings_from_columns(last_seen.as_deref(), online.as_deref(), invisible_since)?;
        let stored = StoredPrivacy {
            user_id: UserId(user_id),
            version: version.map_or(0, seq_from_db),
            data: UserPrivacy {
                settings,
                ..UserPrivacy::default()
            },
        };
        found.insert(stored.user_id, stored);
    }
    for list in [CONTACTS, BLOCKS, EXCEPT] {
        let members: Vec<(i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select user_id, {} from {} where user_id in (select value from json_each($1))",
            list.column, list.table
        )))
        .bind(&json)
        .fetch_all(&mut *conn)
        .await
        .map_err(other)?;
        for (owner, member) in members {
            if let Some(stored) = found.get_mut(&UserId(owner)) {
                sql::members_of(list, &mut stored.data).insert(UserId(member));
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
    sqlx::query(sql::BUMP_PRIVACY_VERSION)
        .bind(owner.0)
        .bind(ts(at))
        .execute(&mut *tx)
        .await
        .map_err(unknown_user)?;
    if let PrivacyChange::Settings(update) = change {
        set_settings(&mut tx, owner, update, at).await?;
    } else if let Some(edit) = ListEdit::of(change) {
        apply(&mut tx, owner, edit, at).await?;
    }
    let state = load(&mut tx, &[owner])
        .await?
        .pop()
        .ok_or(StoreError::NotFound(Missing::User))?;
    tx.commit().await.map_err(other)?;
    Ok(state)
}

async fn apply(
    conn: &mut SqliteConnection,
    owner: UserId,
    edit: ListEdit,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    if edit.insert {
        sqlx::query(sqlx::AssertSqlSafe(edit.list.insert()))
            .bind(owner.0)
            .bind(edit.user.0)
            .bind(ts(at))
            .execute(conn)
            .await
            .map_err(|e| refused(e, edit.conflict, Missing::User))?;
        return Ok(());
    }
    let done = sqlx::query(sqlx::AssertSqlSafe(edit.list.delete()))
        .bind(owner.0)
        .bind(edit.user.0)
        .execute(conn)
        .await
        .map_err(other)?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound(edit.missing));
    }
    Ok(())
}

async fn set_settings(
    conn: &mut SqliteConnection,
    owner: UserId,
    update: &SettingsUpdate,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(sql::SET_SETTINGS)
        .bind(owner.0)
        .bind(update.last_seen.map(LastSeenAudience::as_str))
        .bind(update.online.map(OnlineAudience::as_str))
        .bind(update.invisible)
        .bind(ts(at))
        .execute(&mut *conn)
        .await
        .map_err(other)?;
    let Some(except) = &update.except else {
        return Ok(());
    };
    sqlx::query(sql::CLEAR_EXCEPT)
        .bind(owner.0)
        .execute(&mut *conn)
        .await
        .map_err(other)?;
    let except: Vec<UserId> = except.iter().copied().collect();
    sqlx::query(
        "insert into privacy_exceptions (user_id, excepted_user_id) \
         select $1, value from json_each($2)",
    )
    .bind(owner.0)
    .bind(ids_json(&except)?)
    .execute(&mut *conn)
    .await
    .map(drop)
    .map_err(unknown_user)
}
