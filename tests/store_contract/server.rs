//! The whole server on PostgreSQL: `App` built from a `postgres://` database URL serves,
//! persists and restores presence; the one-shot commands of the binary work on it too.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use lastseen::settings::Settings;
use lastseen::startup::App;
use serde_json::{Value, json};
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backends::with_postgres_database;

/// A running `App` and an HTTP client for it.
struct Server {
    base: String,
    client: reqwest::Client,
    settings: Settings,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn start(settings: Settings) -> Self {
        let app = App::build(settings.clone())
            .await
            .expect("the app builds on PostgreSQL");
        let base = format!("http://{}", app.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run(shutdown.clone()));
        Self {
            base,
            client: reqwest::Client::new(),
            settings,
            shutdown,
            task,
        }
    }

    /// Graceful shutdown, as on SIGTERM: returns after the final flush.
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }

    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Value) -> Value {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if !body.is_null() {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// Registers `username` (password `password123`) and returns the new id.
    async fn register(&self, username: &str) -> i64 {
        let body = json!({"username": username, "password": "password123"});
        let created = self.call("POST", "/api/users/register/", None, body).await;
        created["id"].as_i64().unwrap()
    }

    async fn login(&self, username: &str) -> String {
        let body = json!({"username": username, "password": "password123"});
        let login = self.call("POST", "/api/users/login/", None, body).await;
        login["access"].as_str().unwrap().to_owned()
    }
}

/// The seed's columns, read with SQL as its "Database Queries" do.
async fn users_row(url: &str, username: &str) -> (String, Option<chrono::DateTime<chrono::Utc>>) {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let row = sqlx::query_as("select online_status, last_seen from users where username = $1")
        .bind(username)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    row
}

fn rfc3339(value: &Value) -> chrono::DateTime<chrono::Utc> {
    value.as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_server_runs_on_postgres_and_presence_survives_a_restart() {
    with_postgres_database(
        "server::the_server_runs_on_postgres_and_presence_survives_a_restart",
        |url| async move {
            let settings = Settings {
                bind: "127.0.0.1:0".parse().unwrap(),
                database_url: url.clone(),
                // Nothing is written before the final flush of a graceful shutdown.
                persist_interval: Duration::from_secs(3600),
                ..Settings::default()
            };
            let server = Server::start(settings.clone()).await;
            let ahmad_id = server.register("ahmad").await;
            let sara_id = server.register("sara").await;
            let token = server.login("ahmad").await;
            let contact = json!({"user_id": sara_id});
            server
                .call("POST", "/api/users/me/contacts/", Some(&token), contact)
                .await;
            // The last activity before the shutdown.
            let beat = server
                .call("POST", "/api/users/heartbeat/", Some(&token), Value::Null)
                .await;
            server.stop().await;
            assert_eq!(
                users_row(&url, "ahmad").await,
                ("online".to_owned(), Some(rfc3339(&beat["last_seen"]))),
                "the final flush wrote the users table"
            );

            let server = Server::start(settings).await;
            let mut password = "password123\n".as_bytes();
            lastseen::commands::create_user(&server.settings, "root", true, Some(&mut password))
                .await
                .unwrap();
            let admin = server.login("root").await;
            let path = format!("/api/users/admin/users/{ahmad_id}/online-status/");
            let status = server.call("GET", &path, Some(&admin), Value::Null).await;
            assert_eq!(
                status["online_status"], "online",
                "restored within the timeout"
            );
            assert_eq!(
                status["last_seen"], beat["last_seen"],
                "last activity survived"
            );
            let contacts = server
                .call("GET", "/api/users/me/contacts/", Some(&token), Value::Null)
                .await;
            assert_eq!(contacts["contacts"][0]["id"], sara_id, "{contacts}");

            let logout = server
                .call("POST", "/api/users/logout/", Some(&token), Value::Null)
                .await;
            assert_eq!(logout["online_status"], "offline");
            server.stop().await;
            assert_eq!(users_row(&url, "ahmad").await.0, "offline");
        },
    )
    .await;
}

/// Runs the `lastseen` binary on `url` with a clean `LASTSEEN_*` environment.
fn lastseen(url: &str, args: &[&str], stdin: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lastseen"));
    for (name, _) in std::env::vars() {
        if name.starts_with("LASTSEEN_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .env("RUST_LOG", "warn")
        .args(["--database-url", url])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "lastseen {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[tokio::test]
async fn the_one_shot_commands_work_on_postgres_under_either_scheme_name() {
    with_postgres_database(
        "server::the_one_shot_commands_work_on_postgres_under_either_scheme_name",
        |url| async move {
            let stdout = |output: Output| String::from_utf8(output.stdout).unwrap();
            let migrated = lastseen(&url, &["migrate"], "");
            assert_eq!(stdout(migrated).trim(), "Migrations applied");
            let other_spelling = match url.strip_prefix("postgres://") {
                Some(rest) => format!("postgresql://{rest}"),
                None => url.replacen("postgresql://", "postgres://", 1),
            };
            let args = ["user", "create", "root", "--admin", "--password-stdin"];
            let created = stdout(lastseen(&other_spelling, &args, "password123\n"));
            assert!(created.starts_with("Created admin \"root\""), "{created}");
            let checked = lastseen(&url, &["check-offline-users", "--dry-run"], "");
            assert_eq!(stdout(checked).trim(), "Would mark 0 users offline");
        },
    )
    .await;
}

#[tokio::test]
async fn a_missing_database_is_created_like_a_missing_sqlite_file() {
    with_postgres_database(
        "server::a_missing_database_is_created_like_a_missing_sqlite_file",
        |url| async move {
            // A sibling of the test's database that does not exist yet.
            let missing = format!("{url}_new");
            let store = lastseen::store::connect(&missing)
                .await
                .expect("the missing database is created");
            store.migrate().await.unwrap();
            store.ping().await.unwrap();
            drop(store);
            let name = missing.rsplit('/').next().unwrap().to_owned();
            let mut admin = PgConnection::connect(&url).await.unwrap();
            let sql = format!("drop database {name} with (force)");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut admin)
                .await
                .unwrap();
            admin.close().await.unwrap();
        },
    )
    .await;
}
