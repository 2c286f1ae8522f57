//! `restart` mode: how long a server takes from process start to a 200 from `/readyz` when its
//! SQLite database holds many users, all online with a live session (the state a crash or a
//! deploy leaves behind), so start-up must rebuild all of them into the engine.

use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use serde::Serialize;

use crate::cli::RestartArgs;
use crate::heartbeat::emit;
use crate::progress;
use crate::report::mib;
use crate::scrape::Metrics;
use crate::seed;
use crate::setup::Machine;
use crate::target::{ServerFiles, Spawned, Target};

/// Users are named `bench-r0`, `bench-r1`, …
const PREFIX: &str = "bench-r";

/// The JSON summary of a restart run.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Always `restart`.
    pub mode: &'static str,
    /// The machine.
    pub machine: Machine,
    /// Users in the database, each with one live session.
    pub users: u64,
    /// Seconds spent seeding (0 when the database was reused).
    pub seed_seconds: f64,
    /// One entry per restart.
    pub runs: Vec<Run>,
}

/// One timed start.
#[derive(Debug, Serialize)]
pub struct Run {
    /// Process start to the `listening on` line (database opened, engine rebuilt, bound).
    pub listening_seconds: f64,
    /// Process start to the first 200 from `/readyz`.
    pub ready_seconds: f64,
    /// Online users the server reported once ready.
    pub online: Option<f64>,
    /// Server RSS once ready (bytes).
    pub rss: Option<u64>,
    /// SIGTERM to exit (final flush included).
    pub shutdown_seconds: f64,
}

/// Runs the mode and prints its report.
///
/// # Errors
/// If seeding, starting or stopping the server fails.
pub async fn run(args: RestartArgs, json: bool) -> anyhow::Result<()> {
    let machine = Machine::read();
    let files = ServerFiles::new(
        args.server_bin.clone(),
        args.db.clone(),
        args.server_args.clone(),
    )?;
    let seed_seconds = seed_database(&files, args.users).await?;
    let mut runs = Vec::new();
    for _ in 0..args.runs.max(1) {
        refresh_sessions(&files).await?;
        runs.push(time_start(&files).await?);
    }
    let summary = Summary {
        mode: "restart",
        machine,
        users: args.users,
        seed_seconds,
        runs,
    };
    emit(&text(&summary), &summary, json)
}

/// Seeds `users` online users with a session each, unless the database has them already.
async fn seed_database(files: &ServerFiles, users: u64) -> anyhow::Result<f64> {
    let bar = progress::step("seeding");
    let started = Instant::now();
    let pool = seed::open(files).await?;
    let have: i64 = sqlx::query_scalar("select count(*) from sessions")
        .fetch_one(&pool)
        .await?;
    let seeding = u64::try_from(have).unwrap_or(0) < users;
    if seeding {
        bar.set_message(format!("{users} users"));
        let hash = seed::password_hash(files, &pool, PREFIX).await?;
        let now = Utc::now();
        let online = seed::Presence {
            online_since: Some(now),
        };
        seed::users(&pool, PREFIX, users, &hash, &online).await?;
        sqlx::query("delete from sessions").execute(&pool).await?;
        seed::anonymous_sessions(&pool, now).await?;
    }
    pool.close().await;
    bar.finish_and_clear();
    Ok(if seeding {
        started.elapsed().as_secs_f64()
    } else {
        0.0
    })
}

/// Makes every session's last activity recent again, so each start restores all users online
/// (sessions older than the inactivity timeout would be restored offline, a cheaper case).
async fn refresh_sessions(files: &ServerFiles) -> anyhow::Result<()> {
    let pool = seed::open(files).await?;
    let at = seed::ts(Utc::now() - chrono::Duration::seconds(5));
    sqlx::query("update sessions set last_activity = ?")
        .bind(&at)
        .execute(&pool)
        .await?;
    sqlx::query("update users set online_status = 'online', last_seen = ?")
        .bind(&at)
        .execute(&pool)
        .await?;
    pool.close().await;
    Ok(())
}

async fn time_start(files: &ServerFiles) -> anyhow::Result<Run> {
    let bar = progress::step("restarting");
    let spawned = Spawned::start(files)?;
    let (started, listening) = (spawned.started, spawned.listening);
    let addr = spawned.addr();
    let target = Target {
        addr,
        host: addr.to_string(),
        pid: Some(spawned.pid()),
        spawned: Some(spawned),
    };
    target.wait_ready(Duration::from_secs(300)).await?;
    let ready = started.elapsed();
    let online = Metrics::fetch(&target)
        .await
        .ok()
        .and_then(|m| m.sum("lastseen_online_users"));
    let rss = target.rss();
    let stopping = Instant::now();
    target.stop().context("while stopping the server")?;
    bar.finish_and_clear();
    Ok(Run {
        listening_seconds: (listening - started).as_secs_f64(),
        ready_seconds: ready.as_secs_f64(),
        online,
        rss,
        shutdown_seconds: stopping.elapsed().as_secs_f64(),
    })
}

fn text(s: &Summary) -> String {
    let mut out = format!(
        "restart: {} users online in SQLite, on {} × {} (load {:.2}); seeding took {:.1} s\n",
        s.users,
        s.machine.cpus,
        s.machine.cpu_model,
        s.machine.load_average.unwrap_or(f64::NAN),
        s.seed_seconds
    );
    for (i, run) in s.runs.iter().enumerate() {
        let per_user = match (run.rss, run.online) {
            (Some(rss), Some(online)) if online > 0.0 => {
                format!(", {:.0} B/online user", rss as f64 / online)
            }
            _ => String::new(),
        };
        out.push_str(&format!(
            "run {}: listening after {:.2} s, /readyz OK after {:.2} s, online {:?}, RSS {}{per_user}; shutdown {:.2} s\n",
            i + 1,
            run.listening_seconds,
            run.ready_seconds,
            run.online,
            run.rss.map_or_else(|| "-".to_owned(), mib),
            run.shutdown_seconds,
        ));
    }
    out
}
