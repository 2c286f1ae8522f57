//! Privacy data in PostgreSQL: settings, the except list, contacts and blocks.
//!
//! A read is one statement (the three lists as array subqueries of the settings row), so it
//! sees one snapshot without an explicit transaction and costs one round trip.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::{other, refused, unknown_user};
use crate::domain::{
    LastSeenAudience, OnlineAudience, PrivacyChange, SettingsUpdate, StoredPrivacy, UserId,
    UserPrivacy,
};
use crate::store::sql::{self, ListEdit, seq_from_db};
use crate::store::{Missing, StoreError};

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
        let settings = sql::settings_from_columns(
            self.last_seen_audience.as_deref(),
            self.online_audience.as_deref(),
            self.invisible_since,
        )?;
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
    sqlx::query(sql::BUMP_PRIVACY_VERSION)
        .bind(owner.0)
        .bind(at)
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
    conn: &mut PgConnection,
    owner: UserId,
    edit: ListEdit,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    if edit.insert {
        sqlx::query(sqlx::AssertSqlSafe(edit.list.insert()))
            .bind(owner.0)
            .bind(edit.user.0)
            .bind(at)
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
    conn: &mut PgConnection,
    owner: UserId,
    update: &SettingsUpdate,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query(sql::SET_SETTINGS)
        .bind(owner.0)
        .bind(update.last_seen.map(LastSeenAudience::as_str))
        .bind(update.online.map(OnlineAudience::as_str))
        .bind(update.invisible)
        .bind(at)
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
    let except: Vec<i64> = except.iter().map(|id| id.0).collect();
    sqlx::query(
        "insert into privacy_exceptions (user_id, excepted_user_id) \
         select $1, unnest($2::bigint[])",
    )
    .bind(owner.0)
    .bind(except)
    .execute(&mut *conn)
    .await
    .map(drop)
    .map_err(unknown_user)
}
