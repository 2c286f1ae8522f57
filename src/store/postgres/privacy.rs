//! Privacy data in PostgreSQL: settings, the except list, contacts and blocks.
//!
//! A read is one statement (the three lists as array subqueries of the settings row), so it
//! sees one snapshot without an explicit transaction and costs one round trip.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::{other, seq_from_db};
use crate::domain::UserId;
use crate::privacy::{
    LastSeenAudience, OnlineAudience, PrivacyChange, PrivacySettings, SettingsUpdate,
    StoredPrivacy, UserPrivacy,
};
use crate::store::{ListEdit, StoreError};

#[derive(sqlx::FromRow)]
struct PrivacyRow {
    user_id: i64,
    last_seen_audience: Option<String>,
    online_audience: Option<String>,
    invisible_since: Option<DateTime<Utc>>,
    version: Option<i64>,
    contacts: Vec<i64>,
    blocked: Vec<i64>,
    excepted: Vec<i64>,
}

impl PrivacyRow {
    fn into_stored(self) -> Result<StoredPrivacy, StoreError> {
        let mut settings = PrivacySettings::default();
        if let Some(raw) = self.last_seen_audience {
            settings.last_seen = LastSeenAudience::from_column(&raw)
                .ok_or_else(|| bad_column("last_seen_audience", &raw))?;
        }
        if let Some(raw) = self.online_audience {
            settings.online = OnlineAudience::from_column(&raw)
                .ok_or_else(|| bad_column("online_audience", &raw))?;
        }
        settings.invisible_since = self.invisible_since;
        let ids = |list: Vec<i64>| list.into_iter().map(UserId).collect::<BTreeSet<_>>();
        Ok(StoredPrivacy {
            user_id: UserId(self.user_id),
            version: self.version.map_or(0, seq_from_db),
            data: UserPrivacy {
                settings,
                contacts: ids(self.contacts),
                blocked: ids(self.blocked),
                except: ids(self.excepted),
            },
        })
    }
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
    pool: &PgPool,
    users: &[UserId],
) -> Result<Vec<StoredPrivacy>, StoreError> {
    let mut conn = pool.acquire().await.map_err(other)?;
    load(&mut conn, users).await
}

async fn load(conn: &mut PgConnection, users: &[UserId]) -> Result<Vec<StoredPrivacy>, StoreError> {
    let ids: Vec<i64> = users.iter().map(|id| id.0).collect();
    let rows: Vec<PrivacyRow> = sqlx::query_as(
        "select u.user_id, p.last_seen_audience, p.online_audience, p.invisible_since, \
         p.version, \
         array(select c.contact_user_id from contacts c where c.user_id = u.user_id) \
             as contacts, \
         array(select b.blocked_user_id from blocks b where b.user_id = u.user_id) \
             as blocked, \
         array(select e.excepted_user_id from privacy_exceptions e where e.user_id = u.user_id) \
             as excepted \
         from users u left join privacy_settings p on p.user_id = u.user_id \
         where u.user_id = any($1)",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(other)?;
    rows.into_iter().map(PrivacyRow::into_stored).collect()
}

pub(super) async fn change_privacy(
    pool: &PgPool,
    owner: UserId,
    change: &PrivacyChange,
    at: DateTime<Utc>,
) -> Result<StoredPrivacy, StoreError> {
    let mut tx = pool.begin().await.map_err(other)?;
    // Writing the settings row first locks it until commit, so changes of one user are applied
    // (and their versions assigned) one after the other, as SQLite's single writer does.
    sqlx::query(
        "insert into privacy_settings (user_id, updated_at) values ($1, $2) \
         on conflict (user_id) do update \
         set version = privacy_settings.version + 1, updated_at = $2",
    )
    .bind(owner.0)
    .bind(at)
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
    conn: &mut PgConnection,
    owner: UserId,
    edit: &ListEdit,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let (table, column) = (edit.table, edit.column);
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "insert into {table} (user_id, {column}, created_at) values ($1, $2, $3)"
    )))
    .bind(owner.0)
    .bind(edit.user.0)
    .bind(at)
    .execute(conn)
    .await
    .map(drop)
    .map_err(|e| refused(e, edit.refusal))
}

async fn remove(conn: &mut PgConnection, owner: UserId, edit: &ListEdit) -> Result<(), StoreError> {
    let (table, column) = (edit.table, edit.column);
    let done = sqlx::query(sqlx::AssertSqlSafe(format!(
        "delete from {table} where user_id = $1 and {column} = $2"
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
    conn: &mut PgConnection,
    owner: UserId,
    update: &SettingsUpdate,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    // Turning invisible mode on records `at`; keeping it on keeps the first moment.
    sqlx::query(
        "update privacy_settings set last_seen_audience = $2, online_audience = $3, \
         invisible_since = case when $4 then coalesce(invisible_since, $5) else null end \
         where user_id = $1",
    )
    .bind(owner.0)
    .bind(update.last_seen.as_str())
    .bind(update.online.as_str())
    .bind(update.invisible)
    .bind(at)
    .execute(&mut *conn)
    .await
    .map_err(other)?;
    sqlx::query("delete from privacy_exceptions where user_id = $1")
        .bind(owner.0)
        .execute(&mut *conn)
        .await
        .map_err(other)?;
    let except: Vec<i64> = update.except.iter().map(|id| id.0).collect();
    sqlx::query(
        "insert into privacy_exceptions (user_id, excepted_user_id) \
         select $1, unnest($2::bigint[])",
    )
    .bind(owner.0)
    .bind(except)
    .execute(&mut *conn)
    .await
    .map(drop)
    .map_err(|e| refused(e, "duplicate in the except list"))
}
