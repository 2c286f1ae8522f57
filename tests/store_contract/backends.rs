//! Where a contract case runs: a fresh SQLite file, or a fresh PostgreSQL database created
//! through the admin URL (`LASTSEEN_TEST_POSTGRES_URL`) and dropped afterwards.

use std::future::Future;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::FutureExt;
use lastseen::store::{self, Store};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Runs `case` on a migrated SQLite store in a temporary file.
pub async fn on_sqlite<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("contract.db").display());
    let store = store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    case(store).await;
}

/// Runs `case` on a migrated PostgreSQL store in a database of its own.
pub async fn on_postgres<F, Fut>(test: &str, case: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    with_postgres_database(test, |url| async move {
        let store = store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        case(store).await;
    })
    .await;
}

/// Creates a uniquely named database, runs `body` with its URL and drops the database
/// afterwards, also when `body` panics. Without a reachable server the test is skipped with a
/// notice, or fails when `LASTSEEN_REQUIRE_SERVICES=1`.
pub async fn with_postgres_database<F, Fut>(test: &str, body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(database) = TestDatabase::create(test).await else {
        return;
    };
    let outcome = AssertUnwindSafe(body(database.url.clone()))
        .catch_unwind()
        .await;
    database.drop_it().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// A database created for one test.
struct TestDatabase {
    admin: PgConnectOptions,
    name: String,
    url: String,
}

/// Set once the server was found unreachable, so later tests skip without waiting again.
static UNREACHABLE: OnceLock<String> = OnceLock::new();

impl TestDatabase {
    async fn create(test: &str) -> Option<Self> {
        let admin_url = std::env::var("LASTSEEN_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        let admin = PgConnectOptions::from_str(&admin_url)
            .expect("LASTSEEN_TEST_POSTGRES_URL is a postgres:// URL")
            .disable_statement_logging();
        let mut conn = match connect(&admin).await {
            Ok(conn) => conn,
            Err(reason) => {
                let reason = UNREACHABLE.get_or_init(|| reason);
                skip(test, &admin, reason);
                return None;
            }
        };
        let name = format!(
            "lastseen_test_{}_{:016x}",
            std::process::id(),
            rand::random::<u64>()
        );
        sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let url = database_url(&admin_url, &name);
        Some(Self { admin, name, url })
    }

    async fn drop_it(self) {
        let mut conn = connect(&self.admin).await.unwrap();
        let sql = format!("drop database if exists {} with (force)", self.name);
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    }
}

async fn connect(admin: &PgConnectOptions) -> Result<PgConnection, String> {
    if let Some(reason) = UNREACHABLE.get() {
        return Err(reason.clone());
    }
    match tokio::time::timeout(Duration::from_secs(5), admin.connect()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("no answer within 5 s".to_owned()),
    }
}

/// Skips the test with a notice on the terminal (written past libtest's output capture), or
/// fails it when the services are required.
fn skip(test: &str, admin: &PgConnectOptions, reason: &str) {
    let server = format!("{}:{}", admin.get_host(), admin.get_port());
    if std::env::var("LASTSEEN_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
        panic!("PostgreSQL at {server} is required (LASTSEEN_REQUIRE_SERVICES=1): {reason}");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: PostgreSQL at {server} is unreachable ({reason}); set \
         LASTSEEN_TEST_POSTGRES_URL, or LASTSEEN_REQUIRE_SERVICES=1 to fail instead"
    );
}

/// `admin_url` with its database (the path) replaced by `name`; the query string is kept.
fn database_url(admin_url: &str, name: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (admin_url, String::new()),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let server = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    format!("{server}/{name}{query}")
}

#[test]
fn database_urls_keep_the_server_and_the_options() {
    assert_eq!(
        database_url("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
        "postgres://postgres@127.0.0.1:5432/t1"
    );
    assert_eq!(
        database_url("postgresql://u:p@db/admin?sslmode=disable", "t2"),
        "postgresql://u:p@db/t2?sslmode=disable"
    );
    assert_eq!(database_url("postgres://u@db", "t3"), "postgres://u@db/t3");
}
