//! Store faults: the SQLite file lives on a small filesystem that fills up and is freed again
//! while clients keep writing. Nothing answered with a 2xx may be missing after a
//! restart, failures must be `503 service_unavailable` with `Retry-After` (never a 500 or a
//! hang), `/readyz` must say so, and both must recover by themselves within 5 s.
//!
//! Needs root (to mount a tmpfs); skipped with a notice elsewhere, unless
//! `LASTSEEN_REQUIRE_SERVICES=1`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::helpers::{TestApp, start, test_settings};

/// A tmpfs mounted for one test; unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` at a fresh directory, or explains why it cannot.
    fn mount(size: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
        }
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// Writes a file until the filesystem has no space left; returns its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    path
}

/// Everything the server acknowledged with a 2xx.
#[derive(Default)]
struct Acknowledged {
    /// Registered usernames.
    users: Vec<String>,
    /// Tokens of acknowledged logins, by username.
    tokens: Vec<(String, String)>,
    /// The newest acknowledged heartbeat's `last_seen`, by username.
    heartbeats: std::collections::HashMap<String, String>,
}

/// Statuses the server answered, to check that failures were only ever 503s.
#[derive(Default)]
struct Answers {
    ok: usize,
    unavailable: usize,
}

/// One round of client traffic: a registration, a login and a heartbeat of a fresh user.
async fn round(app: &TestApp, name: &str, acked: &mut Acknowledged, answers: &mut Answers) {
    let registered = app.register(name, "password123").await;
    if record(registered, answers, 201).await.is_none() {
        return;
    }
    acked.users.push(name.to_owned());
    let Some(body) = record(app.login(name, "password123").await, answers, 200).await else {
        return;
    };
    let token = body["access"].as_str().unwrap().to_owned();
    acked.tokens.push((name.to_owned(), token.clone()));
    let beat = app.post("/api/users/heartbeat/", &token).await;
    if let Some(body) = record(beat, answers, 200).await {
        let last_seen = body["last_seen"].as_str().unwrap().to_owned();
        acked.heartbeats.insert(name.to_owned(), last_seen);
    }
}

/// The body of an acknowledged answer, or `None` for a 503 (anything else fails the test).
async fn record(response: reqwest::Response, answers: &mut Answers, ok: u16) -> Option<Value> {
    let status = response.status().as_u16();
    if status == 503 {
        let retry = response.headers().get("retry-after").cloned();
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "service_unavailable", "{body}");
        assert!(retry.is_some(), "a 503 says when to retry");
        answers.unavailable += 1;
        return None;
    }
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, ok, "only {ok} or 503 while the store fails: {body}");
    answers.ok += 1;
    Some(body)
}

/// Heartbeats with `token` until `stop`; returns the newest acknowledged `last_seen`. Each
/// answer is a 200 or a 503 (a heartbeat needs no database, so nearly all are 200s).
async fn heartbeats(
    client: reqwest::Client,
    url: String,
    name: String,
    token: String,
    stop: tokio_util::sync::CancellationToken,
) -> (String, Option<String>) {
    let mut newest = None;
    while !stop.is_cancelled() {
        let response = client.post(&url).bearer_auth(&token).send().await.unwrap();
        let mut answers = Answers::default();
        if let Some(body) = record(response, &mut answers, 200).await {
            newest = body["last_seen"].as_str().map(str::to_owned);
        }
    }
    (name, newest)
}

async fn ready(app: &TestApp) -> u16 {
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    response.status().as_u16()
}

/// Runs rounds until `until` returns true (checked after each round), at most `within`.
async fn rounds_until(
    app: &TestApp,
    prefix: &str,
    within: Duration,
    acked: &mut Acknowledged,
    answers: &mut Answers,
    mut until: impl AsyncFnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    let mut n = 0;
    while Instant::now() < deadline {
        round(app, &format!("{prefix}{n}"), acked, answers).await;
        n += 1;
        if until().await {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_loses_no_acknowledged_write_and_recovers_by_itself() {
    let disk = match SmallDisk::mount("4m") {
        Ok(disk) => disk,
        Err(why) => {
            assert!(
                std::env::var_os("LASTSEEN_REQUIRE_SERVICES").is_none_or(|v| v != "1"),
                "cannot mount a test filesystem: {why}"
            );
            eprintln!("SKIPPED store fault test: cannot mount a test filesystem ({why})");
            return;
        }
    };
    let holder = Arc::new(tempfile::tempdir().unwrap());
    let mut settings = test_settings(&holder);
    settings.database_url = format!("sqlite://{}", disk.path().join("lastseen.db").display());
    let app = start(settings.clone(), holder.clone()).await;
    let (mut acked, mut answers) = (Acknowledged::default(), Answers::default());
    for n in 0..5 {
        round(&app, &format!("before{n}"), &mut acked, &mut answers).await;
    }
    assert_eq!(answers.unavailable, 0, "healthy store");
    // Meanwhile the first users heartbeat as fast as they can: the persister has work in
    // every interval, before, during and after the fault.
    let stop_beating = tokio_util::sync::CancellationToken::new();
    let beaters: Vec<_> = acked
        .tokens
        .clone()
        .into_iter()
        .map(|(name, token)| {
            tokio::spawn(heartbeats(
                app.client.clone(),
                app.url("/api/users/heartbeat/"),
                name,
                token,
                stop_beating.clone(),
            ))
        })
        .collect();

    let filler = fill(disk.path());
    let started = Instant::now();
    let mut failing = Answers::default();
    let noticed = rounds_until(
        &app,
        "during",
        Duration::from_secs(20),
        &mut acked,
        &mut failing,
        async || ready(&app).await == 503,
    )
    .await;
    assert!(noticed, "/readyz reports the failing store");
    // Keep writing for a while: nothing may hang or answer anything but 2xx or 503.
    let until = Instant::now() + Duration::from_secs(1);
    rounds_until(
        &app,
        "still",
        Duration::from_secs(2),
        &mut acked,
        &mut failing,
        async || Instant::now() > until,
    )
    .await;
    assert!(failing.unavailable > 0, "some writes were refused");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "no request hung"
    );

    std::fs::remove_file(filler).unwrap();
    let cleared = Instant::now();
    let recovered = rounds_until(
        &app,
        "after",
        Duration::from_secs(5),
        &mut acked,
        &mut answers,
        async || ready(&app).await == 200,
    )
    .await;
    assert!(recovered, "recovered within 5 s of the fault going away");
    let mut after = Answers::default();
    for n in 0..5 {
        round(&app, &format!("later{n}"), &mut acked, &mut after).await;
    }
    assert_eq!(after.unavailable, 0, "writes succeed again");
    assert!(cleared.elapsed() < Duration::from_secs(30));
    stop_beating.cancel();
    for beater in beaters {
        let (name, last_seen) = beater.await.unwrap();
        if let Some(last_seen) = last_seen {
            acked.heartbeats.insert(name, last_seen);
        }
    }
    app.stop().await;

    // Everything acknowledged is there after a restart.
    let app = start(settings, holder).await;
    for name in &acked.users {
        let user = app.handle.store().user_by_username(name).await.unwrap();
        assert!(user.is_some(), "acknowledged registration {name} is stored");
    }
    for (name, token) in &acked.tokens {
        let me = app.get("/api/users/me/", token).await;
        assert_eq!(me.status(), 200, "acknowledged login of {name} still valid");
    }
    for (name, beat) in &acked.heartbeats {
        let user = app
            .handle
            .store()
            .user_by_username(name)
            .await
            .unwrap()
            .unwrap();
        let stored = user.last_seen.expect("a heartbeat was stored");
        let acked: chrono::DateTime<chrono::Utc> = beat.parse().unwrap();
        assert!(
            stored >= acked,
            "{name}: stored last_seen {stored} >= acknowledged {acked}"
        );
    }
    assert!(acked.users.len() >= 10, "enough traffic was acknowledged");
}
