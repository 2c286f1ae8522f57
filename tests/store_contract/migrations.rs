//! Backend-specific storage promises: the case-insensitive username migration stops on
//! accounts that differ only in case, says so, and leaves them as they were; SQLite files are
//! private to their owner.

use lastseen::store::{self, Store};
use sqlx::{Connection, Executor};

use crate::backends::with_postgres_database;

/// Undoes the case migration by hand and adds two accounts differing only in case, as a
/// database migrated by an older release may hold.
const CLASH: [&str; 3] = [
    "drop index users_username_ci",
    "insert into users (username, password_hash, created_at) values \
     ('Sara', 'h', '2026-11-29T10:00:00.000000Z'), ('sara', 'h', '2026-11-29T10:00:00.000000Z')",
    "delete from _sqlx_migrations where version = 20261129000050",
];

async fn refuses_then_accepts_after_a_rename(store: &dyn Store, rename: impl AsyncFnOnce()) {
    let refused = store
        .migrate()
        .await
        .expect_err("the clash stops the migration");
    let mut message = refused.to_string();
    let mut source = std::error::Error::source(&refused);
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    assert!(message.contains("differ only in case"), "{message}");
    for name in ["Sara", "sara"] {
        let kept = store.user_by_username(name).await.unwrap();
        assert!(kept.is_some(), "{name} is left as it was");
    }
    rename().await;
    store.migrate().await.unwrap();
    let sara = store.user_by_username("SARA").await.unwrap().unwrap();
    assert_eq!(sara.username, "Sara");
}

#[tokio::test]
async fn sqlite_usernames_differing_only_in_case_stop_the_migration_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("clash.db").display());
    let store = store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    for statement in CLASH {
        conn.execute(statement).await.unwrap();
    }
    refuses_then_accepts_after_a_rename(store.as_ref(), async || {
        conn.execute("update users set username = 'sara_old' where username = 'sara'")
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn postgres_usernames_differing_only_in_case_stop_the_migration_loudly() {
    with_postgres_database("postgres_migration_clash", |url| async move {
        let store = store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        for statement in CLASH {
            let statement = statement.replace(
                "'2026-11-29T10:00:00.000000Z'",
                "'2026-11-29T10:00:00Z'::timestamptz",
            );
            conn.execute(sqlx::AssertSqlSafe(statement)).await.unwrap();
        }
        refuses_then_accepts_after_a_rename(store.as_ref(), async || {
            conn.execute("update users set username = 'sara_old' where username = 'sara'")
                .await
                .unwrap();
        })
        .await;
    })
    .await;
}

#[tokio::test]
async fn sqlite_files_are_created_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("private.db");
    let store = store::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    crate::users::user(store.as_ref(), "sara").await;
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", path.display());
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file} is {mode:o}");
    }
}
