//! The `lastseen` binary as an operator runs it: subcommands, settings errors, signals.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn lastseen(db: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lastseen"));
    for (name, _) in std::env::vars() {
        if name.starts_with("LASTSEEN_") {
            command.env_remove(name);
        }
    }
    command
        .env("RUST_LOG", "warn")
        .arg("--database-url")
        .arg(format!("sqlite://{}", db.display()));
    command
}

fn run(db: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = lastseen(db)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// A `lastseen serve` process; SIGTERM on `stop`, SIGKILL if dropped without it.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(db: &Path, extra: &[&str]) -> Self {
        let mut child = lastseen(db)
            .args(["serve", "--bind", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        let server = Self { child, base };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while ureq_get(&format!("{}/readyz", self.base)).is_none() {
            assert!(Instant::now() < deadline, "server not ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = self.child.wait().unwrap();
        assert!(status.success(), "clean exit after SIGTERM, got {status}");
    }
}

impl Server {
    /// Power loss: SIGKILL, nothing flushed or closed.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal blocking HTTP through reqwest's async client on a private runtime.
fn http(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut request = client.request(method.parse().unwrap(), url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    })
}

fn ureq_get(url: &str) -> Option<Value> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async {
        let response = reqwest::get(url).await.ok()?;
        response.status().is_success().then_some(())?;
        response.json().await.ok()
    })
}

fn login(base: &str, username: &str, password: &str) -> String {
    let (status, body) = http(
        "POST",
        &format!("{base}/api/users/login/"),
        None,
        Some(json!({"username": username, "password": password})),
    );
    assert_eq!(status, 200, "{body}");
    body["access"].as_str().unwrap().to_owned()
}

#[test]
fn the_seed_walkthrough_survives_sigterm_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("walkthrough.db");

    let created = stdout(&run(&db, &["user", "create", "root", "--admin"], None));
    let password = created
        .lines()
        .find_map(|l| l.strip_prefix("Password (shown once): "))
        .expect("generated password printed")
        .to_owned();
    assert!(password.len() >= 16);

    let server = Server::start(&db, &[]);
    let base = server.base.clone();
    let admin = login(&base, "root", &password);
    let (status, _) = http(
        "POST",
        &format!("{base}/api/users/register/"),
        None,
        Some(json!({"username": "ahmad", "password": "password123"})),
    );
    assert_eq!(status, 201);
    let token = login(&base, "ahmad", "password123");
    let (status, beat) = http(
        "POST",
        &format!("{base}/api/users/heartbeat/"),
        Some(&token),
        None,
    );
    assert_eq!(
        (status, beat["message"].as_str()),
        (200, Some("Heartbeat recorded"))
    );
    let (_, online) = http(
        "GET",
        &format!("{base}/api/users/admin/users/online/"),
        Some(&admin),
        None,
    );
    assert_eq!(online["online_count"], 2);
    server.stop();

    let server = Server::start(&db, &[]);
    let base = server.base.clone();
    let (status, _) = http(
        "POST",
        &format!("{base}/api/users/heartbeat/"),
        Some(&token),
        None,
    );
    assert_eq!(status, 200, "the token survives a restart");
    let (_, online) = http(
        "GET",
        &format!("{base}/api/users/admin/users/online/"),
        Some(&admin),
        None,
    );
    assert_eq!(online["online_count"], 2, "presence survives a restart");
    let ahmad = online["online_users"][1]["id"].as_i64().unwrap();
    let (status, out) = http(
        "POST",
        &format!("{base}/api/users/logout/"),
        Some(&token),
        None,
    );
    assert_eq!(
        (status, out["online_status"].as_str()),
        (200, Some("offline"))
    );
    let (_, user) = http(
        "GET",
        &format!("{base}/api/users/admin/users/{ahmad}/online-status/"),
        Some(&admin),
        None,
    );
    assert_eq!(user["online_status"], "offline");
    assert!(user["last_seen"].as_str().is_some_and(|t| t.ends_with('Z')));
    server.stop();
}

#[test]
fn user_create_reads_the_password_from_stdin_and_rejects_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("users.db");
    let out = stdout(&run(
        &db,
        &["user", "create", "sara", "--password-stdin"],
        Some("s3cret-pass\n"),
    ));
    assert!(out.contains("Created user \"sara\""), "{out}");
    assert!(!out.contains("s3cret-pass"));
    let again = run(
        &db,
        &["user", "create", "sara", "--password-stdin"],
        Some("s3cret-pass\n"),
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already taken"));
    let short = run(
        &db,
        &["user", "create", "omar", "--password-stdin"],
        Some("short\n"),
    );
    assert!(!short.status.success());

    let server = Server::start(&db, &[]);
    login(&server.base, "sara", "s3cret-pass");
    server.stop();
}

#[test]
fn migrate_creates_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fresh.db");
    assert_eq!(
        stdout(&run(&db, &["migrate"], None)).trim(),
        "Migrations applied"
    );
    assert!(db.exists());
    assert_eq!(
        stdout(&run(&db, &["migrate"], None)).trim(),
        "Migrations applied"
    );
}

/// Sleeps until more than 100 ms have passed since `since`.
fn past_100ms(since: std::time::SystemTime) {
    let deadline = Duration::from_millis(150);
    while let Some(left) = deadline.checked_sub(since.elapsed().unwrap_or_default()) {
        std::thread::sleep(left.max(Duration::from_millis(1)));
    }
}

/// Logs `root` in on a fresh start of the server and returns the ids of the users online.
fn online_after_restart(db: &Path) -> Vec<i64> {
    let server = Server::start(db, &[]);
    let admin = login(&server.base, "root", "root-password");
    let (status, online) = http(
        "GET",
        &format!("{}/api/users/admin/users/online/", server.base),
        Some(&admin),
        None,
    );
    assert_eq!(status, 200, "{online}");
    server.stop();
    let users = online["online_users"].as_array().unwrap();
    users.iter().map(|u| u["id"].as_i64().unwrap()).collect()
}

#[test]
fn check_offline_users_ends_sessions_so_a_restart_keeps_them_offline_and_dry_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("check.db");
    for (name, extra) in [("ahmad", None), ("root", Some("--admin"))] {
        let args = [
            &["user", "create", name, "--password-stdin"][..],
            extra.as_slice(),
        ]
        .concat();
        stdout(&run(&db, &args, Some(&format!("{name}-password\n"))));
    }
    let server = Server::start(&db, &[]);
    login(&server.base, "ahmad", "ahmad-password");
    server.stop();
    let stopped = std::time::SystemTime::now();

    // Still within the default 5 minutes: nobody to mark.
    assert_eq!(
        stdout(&run(&db, &["check-offline-users"], None)).trim(),
        "Marked 0 users offline"
    );
    // Once the last activity is more than 100 ms old, a 100 ms timeout has passed.
    past_100ms(stopped);
    let short = ["check-offline-users", "--inactivity-timeout", "100ms"];
    let dry = stdout(&run(&db, &[&short[..], &["--dry-run"]].concat(), None));
    assert_eq!(dry.trim(), "Would mark 1 users offline");
    assert_eq!(
        online_after_restart(&db).len(),
        2,
        "after a dry run a restart still finds ahmad online (and root)"
    );
    let stopped = std::time::SystemTime::now();

    past_100ms(stopped);
    assert_eq!(
        stdout(&run(&db, &short, None)).trim(),
        "Marked 2 users offline"
    );
    assert_eq!(
        stdout(&run(&db, &short, None)).trim(),
        "Marked 0 users offline"
    );
    let online = online_after_restart(&db);
    assert_eq!(online.len(), 1, "only root, who just logged in: {online:?}");
}

/// `last_seen` of `username` as stored in the SQLite file `db`.
fn stored_last_seen(db: &Path, username: &str) -> chrono::DateTime<chrono::Utc> {
    use sqlx::Connection;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let url = format!("sqlite://{}", db.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let raw: String = sqlx::query_scalar("select last_seen from users where username = ?1")
            .bind(username)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        chrono::DateTime::parse_from_rfc3339(&raw).unwrap().to_utc()
    })
}

#[test]
fn after_sigkill_under_heartbeats_last_seen_lags_the_last_acknowledged_one_by_at_most_persist_interval()
 {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let create = ["user", "create", "ahmad", "--password-stdin"];
    stdout(&run(&db, &create, Some("password123\n")));
    let server = Server::start(&db, &["--persist-interval", "1s"]);
    let token = login(&server.base, "ahmad", "password123");
    let beat = format!("{}/api/users/heartbeat/", server.base);
    // Heartbeats for a few intervals; the kill lands anywhere in a flush cycle.
    let until = Instant::now() + Duration::from_millis(3300 + u64::from(rand::random::<u8>()) * 4);
    let mut acknowledged = chrono::Utc::now();
    while Instant::now() < until {
        let sent = chrono::Utc::now();
        let (status, _) = http("POST", &beat, Some(&token), None);
        assert_eq!(status, 200);
        acknowledged = sent;
    }
    server.kill();
    let stored = stored_last_seen(&db, "ahmad");
    let lost = (acknowledged - stored).to_std().unwrap_or_default();
    eprintln!("crash loss after SIGKILL with persist_interval 1s: {lost:?}");
    // The bound is the interval; 50 ms covers the difference between two flush durations.
    assert!(
        lost <= Duration::from_millis(1050),
        "lost {lost:?} of activity"
    );
}

#[test]
fn a_bad_setting_names_its_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bad.db");
    let flag = run(&db, &["serve", "--inactivity-timeout", "5 parsecs"], None);
    assert_eq!(flag.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&flag.stderr).contains("inactivity_timeout"));

    let env = lastseen(&db)
        .args(["serve"])
        .env("LASTSEEN_PERSIST_INTERVAL", "soon")
        .output()
        .unwrap();
    assert_eq!(env.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&env.stderr).contains("persist_interval"));

    let config = dir.path().join("lastseen.toml");
    std::fs::write(&config, "heartbeat_interval = 30\n").unwrap();
    let file = run(&db, &["serve", "--config", config.to_str().unwrap()], None);
    assert_eq!(file.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&file.stderr).contains("heartbeat_interval"));
}

#[test]
fn version_and_help_work_for_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("help.db");
    let version = stdout(&run(&db, &["--version"], None));
    assert!(version.starts_with("lastseen "));
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["migrate", "--help"],
        &["user", "create", "--help"],
        &["check-offline-users", "--help"],
    ] {
        let out = stdout(&run(&db, args, None));
        assert!(out.contains("Usage"), "{args:?}: {out}");
    }
    assert!(!db.exists(), "--help touches no database");
}

/// Runs `lastseen ARGS` on `db` with extra environment variables; returns the output.
fn run_with_env(db: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = lastseen(db);
    command.args(args).envs(env.iter().copied());
    command.stdin(Stdio::null()).output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_bad_duration_names_the_key_its_flag_and_variable_and_a_valid_example() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bad.db");
    let out = run_with_env(
        &db,
        &["serve", "--bind", "127.0.0.1:0"],
        &[("LASTSEEN_HEARTBEAT_INTERVAL", "banana")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out).trim(),
        "error: invalid heartbeat_interval \"banana\" (from LASTSEEN_HEARTBEAT_INTERVAL): \
         expected a duration such as 500ms, 30s, 5m or 1h 30m. Set it with \
         --heartbeat-interval, LASTSEEN_HEARTBEAT_INTERVAL or `heartbeat_interval = ...` in the \
         --config file."
    );
    assert!(
        !db.exists(),
        "nothing is opened before the settings are valid"
    );
}

#[test]
fn bind_takes_a_host_name_and_a_bad_address_says_what_form_is_expected() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bind.db");
    let mut child = lastseen(&db)
        .args(["serve", "--bind", "localhost:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("listening on http://127.0.0.1:"), "{line}");

    let out = run(&db, &["serve", "--bind", "8002"], None);
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    assert!(
        text.starts_with("error: invalid bind \"8002\" (from --bind): expected an address such as 127.0.0.1:8000, 0.0.0.0:8000 or localhost:8000."),
        "{text}"
    );
}

#[test]
fn a_sqlite_file_in_a_missing_directory_names_the_directory_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("missing").join("x.db");
    let out = run(&db, &["serve", "--bind", "127.0.0.1:0"], None);
    assert_eq!(out.status.code(), Some(1));
    let text = stderr(&out);
    let missing = dir.path().join("missing");
    assert_eq!(
        text.trim(),
        format!(
            "error: cannot create the SQLite database {}: the directory {} does not exist; \
             create it (mkdir -p {}) or choose another path, e.g. --database-url \
             sqlite://lastseen.db",
            db.display(),
            missing.display(),
            missing.display()
        )
    );
    assert_eq!(text.lines().count(), 1, "{text}");
}

#[test]
fn an_unreachable_postgresql_is_one_line_without_the_password() {
    let out = Command::new(env!("CARGO_BIN_EXE_lastseen"))
        .args([
            "migrate",
            "--database-url",
            "postgres://someone:hunter2@127.0.0.1:1/app",
        ])
        .env_remove("LASTSEEN_DATABASE_URL")
        .env_remove("LASTSEEN_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out).trim(),
        "error: PostgreSQL at 127.0.0.1:1 (database \"app\", from database_url) refused the \
         connection: is PostgreSQL running there?"
    );
}

#[test]
fn a_second_server_on_the_same_sqlite_file_refuses_and_names_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let first = Server::start(&db, &[]);
    let pid = first.child.id();
    let expected = format!(
        "error: the SQLite database {} is in use by another lastseen process (pid {pid} holds \
         {}.lock); stop that process first, or give this one its own --database-url",
        db.display(),
        db.display()
    );
    for args in [
        &["serve", "--bind", "127.0.0.1:0"][..],
        &["check-offline-users"],
        &["migrate"],
    ] {
        let out = run(&db, args, None);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(stderr(&out).trim(), expected, "{args:?}");
    }
    // Reading, and adding a user, go on next to the server.
    let dry = stdout(&run(&db, &["check-offline-users", "--dry-run"], None));
    assert_eq!(dry.trim(), "Would mark 0 users offline");
    stdout(&run(
        &db,
        &["user", "create", "ahmad", "--password-stdin"],
        Some("password123\n"),
    ));
    first.stop();
    let second = Server::start(&db, &[]);
    login(&second.base, "ahmad", "password123");
    second.stop();
}

#[test]
fn logs_are_plain_text_off_a_terminal_and_json_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("logs.db");
    let typo = [("LASTSEEN_HEARTBEAT_TIMEOUT", "30s")];
    let text = stderr(&run_with_env(&db, &["migrate"], &typo));
    assert!(
        text.contains("WARN") && text.contains("LASTSEEN_HEARTBEAT_INTERVAL"),
        "{text}"
    );
    assert!(!text.contains('\u{1b}'), "no colour escapes: {text:?}");

    let json = stderr(&run_with_env(
        &db,
        &["--log-format", "json", "migrate"],
        &typo,
    ));
    let line: Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(line["level"], "WARN", "{line}");
    assert!(
        line["message"]
            .as_str()
            .unwrap()
            .contains("LASTSEEN_HEARTBEAT_TIMEOUT")
    );
}

#[test]
fn a_subcommands_help_lists_only_what_it_uses() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("help.db");
    let help = stdout(&run(&db, &["user", "create", "--help"], None));
    for flag in ["--admin", "--password-stdin", "--database-url", "--config"] {
        assert!(help.contains(flag), "{flag}: {help}");
    }
    for flag in [
        "--bind",
        "--inactivity-timeout",
        "--webhook-urls",
        "--redis-url",
    ] {
        assert!(!help.contains(flag), "{flag}: {help}");
    }
    let serve = stdout(&run(&db, &["serve", "--help"], None));
    assert!(serve.contains("--bind") && serve.contains("--log-format"));
}

#[test]
fn a_closed_log_pipe_does_not_stop_sigterm_from_working() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("pipe.db");
    let mut child = lastseen(&db)
        .env("RUST_LOG", "info")
        .args(["serve", "--bind", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // As `lastseen serve 2>&1 | head -1` does: the reader goes away after the first lines.
    drop(child.stderr.take());
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on "), "{line}");
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running 10 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

/// The niceness of each of process `pid`'s threads whose name starts with `prefix`.
#[cfg(target_os = "linux")]
fn thread_niceness(pid: u32, prefix: &str) -> Vec<i64> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !name.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
        // Fields after the parenthesised name: state is field 3, niceness field 19.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        found.push(after_name.split(' ').nth(16).unwrap().parse().unwrap());
    }
    found
}

#[cfg(target_os = "linux")]
#[test]
fn sqlite_worker_threads_run_below_the_request_workers() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    let server = Server::start(&db, &[]);
    // Something to write, so the persister's connection is in use too.
    let (status, _) = http(
        "POST",
        &format!("{}/api/users/register/", server.base),
        None,
        Some(json!({"username": "nice-user", "password": "password123"})),
    );
    assert_eq!(status, 201);
    let token = login(&server.base, "nice-user", "password123");
    let (status, _) = http(
        "POST",
        &format!("{}/api/users/heartbeat/", server.base),
        Some(&token),
        None,
    );
    assert_eq!(status, 200);
    let pid = server.child.id();
    let sqlite = thread_niceness(pid, "lastseen-sql-");
    assert!(!sqlite.is_empty(), "no SQLite worker threads found");
    assert!(sqlite.iter().all(|&n| n == 5), "SQLite workers: {sqlite:?}");
    let workers = thread_niceness(pid, "tokio-rt-worker");
    assert!(!workers.is_empty(), "no request workers found");
    assert!(
        workers.iter().all(|&n| n == 0),
        "request workers: {workers:?}"
    );
    server.stop();
}
