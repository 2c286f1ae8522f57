//! `restart` mode: how long a server takes from process start to a 200 from `/readyz` when its
//! SQLite database holds many users, all online with a live session (the state a crash or a
//! deploy leaves behind), so start-up must rebuild all of them into the engine.
//!
//! Each user's token is derived from its id ([`token_of`]), so a run with `--tokens` can use
//! every session after a start without keeping a million tokens anywhere.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

use crate::cli::RestartArgs;
use crate::client::render;
use crate::heartbeat::emit;
use crate::load;
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
    /// RSS of the same server started on an empty database (bytes): the base the per-session
    /// figures are taken from.
    pub base_rss: Option<u64>,
    /// One entry per restart.
    pub runs: Vec<Run>,
    /// The `--tokens` pass after the last start.
    pub tokens: Option<TokensPass>,
}

/// Every user's token used once after a start.
#[derive(Debug, Serialize)]
pub struct TokensPass {
    /// Heartbeats sent, one per token.
    pub heartbeats: u64,
    /// Seconds the pass took.
    pub seconds: f64,
    /// Server RSS afterwards (bytes): restored engine plus every session cached.
    pub rss: Option<u64>,
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
    let base_rss = empty_rss(&args).await?;
    let seed_seconds = seed_database(&files, args.users).await?;
    let mut runs = Vec::new();
    let mut tokens = None;
    let count = args.runs.max(1);
    for run in 1..=count {
        refresh_sessions(&files).await?;
        let pass = (args.tokens && run == count).then_some(args.connections);
        let (timed, used) = time_start(&files, pass).await?;
        runs.push(timed);
        tokens = tokens.or(used);
    }
    let summary = Summary {
        mode: "restart",
        machine,
        users: args.users,
        seed_seconds,
        base_rss,
        runs,
        tokens,
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
        sessions_with_known_tokens(&pool, now).await?;
    }
    pool.close().await;
    bar.finish_and_clear();
    Ok(if seeding {
        started.elapsed().as_secs_f64()
    } else {
        0.0
    })
}

/// The token of user `user_id`'s session: 256 bits, hex, shaped like the server's.
fn token_of(user_id: i64) -> String {
    hex::encode(Sha256::digest(
        format!("{PREFIX} token {user_id}").as_bytes(),
    ))
}

/// Opens one session for every user, with the token [`token_of`] its id.
async fn sessions_with_known_tokens(
    pool: &sqlx::SqlitePool,
    at: chrono::DateTime<Utc>,
) -> anyhow::Result<()> {
    let ids: Vec<i64> = sqlx::query_scalar("select user_id from users order by user_id")
        .fetch_all(pool)
        .await?;
    for chunk in ids.chunks(100_000) {
        let rows: Vec<(i64, String)> = chunk
            .iter()
            .map(|&id| (id, hex::encode(Sha256::digest(token_of(id).as_bytes()))))
            .collect();
        sqlx::query(
            "insert into sessions (user_id, token_hash, created_at, last_activity) \
             select j.value ->> 0, unhex(j.value ->> 1), ?2, ?2 from json_each(?1) j",
        )
        .bind(serde_json::to_string(&rows)?)
        .bind(seed::ts(at))
        .execute(pool)
        .await
        .context("while inserting sessions")?;
    }
    Ok(())
}

/// The target a server this run started answers at.
fn started_target(spawned: Spawned) -> Target {
    let addr = spawned.addr();
    Target {
        addr,
        host: addr.to_string(),
        pid: Some(spawned.pid()),
        spawned: Some(spawned),
    }
}

/// RSS of the server once ready on an empty database.
async fn empty_rss(args: &RestartArgs) -> anyhow::Result<Option<u64>> {
    let files = ServerFiles::new(args.server_bin.clone(), None, args.server_args.clone())?;
    let target = started_target(Spawned::start(&files)?);
    target.wait_ready(Duration::from_secs(60)).await?;
    let rss = target.rss();
    target.stop().context("while stopping the empty server")?;
    Ok(rss)
}

/// Sends one heartbeat with every user's token.
async fn use_every_token(
    files: &ServerFiles,
    target: &Target,
    connections: usize,
) -> anyhow::Result<TokensPass> {
    // Read-only and without `migrate`: the server holds the database.
    let options = SqliteConnectOptions::from_str(&files.database_url())?.read_only(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let ids: Vec<i64> = sqlx::query_scalar("select user_id from sessions order by user_id")
        .fetch_all(&pool)
        .await?;
    pool.close().await;
    let requests: Arc<[Vec<u8>]> = ids
        .iter()
        .map(|&id| {
            let auth = format!("Bearer {}", token_of(id));
            let headers = [("authorization", auth.as_str())];
            render("POST", &target.host, "/api/users/heartbeat/", &headers, b"")
        })
        .collect();
    let started = Instant::now();
    load::sweep(target, "using every token", requests, connections)
        .await
        .context(
            "while using every token (a database seeded by an older version has unknown \
             tokens: use a fresh --db)",
        )?;
    Ok(TokensPass {
        heartbeats: ids.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
        rss: target.rss(),
    })
}

/// Makes every session's last activity recent again, so each start restores all users online
/// (sessions older than the inactivity timeout would be restored offline, a cheaper case).
async fn refresh_sessions(files: &ServerFiles) -> anyhow::Result<()> {
    let pool = seed::open(files).await?;
    let at = seed::ts(Utc::now() - chrono::Duration::seconds(5));
    // A session's stored end (written by a flush, e.g. after `--tokens`) goes too.
    sqlx::query("update sessions set last_activity = ?, expires_at = null")
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

/// Times one start; with `tokens` (connections), then uses every token.
async fn time_start(
    files: &ServerFiles,
    tokens: Option<usize>,
) -> anyhow::Result<(Run, Option<TokensPass>)> {
    let bar = progress::step("restarting");
    let spawned = Spawned::start(files)?;
    let (started, listening) = (spawned.started, spawned.listening);
    let target = started_target(spawned);
    target.wait_ready(Duration::from_secs(300)).await?;
    let ready = started.elapsed();
    let online = Metrics::fetch(&target)
        .await
        .ok()
        .and_then(|m| m.sum("lastseen_online_users"));
    let rss = target.rss();
    bar.finish_and_clear();
    let pass = match tokens {
        Some(connections) => Some(use_every_token(files, &target, connections).await?),
        None => None,
    };
    let stopping = Instant::now();
    target.stop().context("while stopping the server")?;
    let run = Run {
        listening_seconds: (listening - started).as_secs_f64(),
        ready_seconds: ready.as_secs_f64(),
        online,
        rss,
        shutdown_seconds: stopping.elapsed().as_secs_f64(),
    };
    Ok((run, pass))
}

/// `rss` less the empty server's, per online user.
fn per_user(s: &Summary, rss: Option<u64>, online: Option<f64>) -> String {
    match (rss, online) {
        (Some(rss), Some(online)) if online > 0.0 => {
            let base = s.base_rss.unwrap_or(0);
            format!(
                ", {:.0} B/online user over the empty server's {}",
                rss.saturating_sub(base) as f64 / online,
                mib(base)
            )
        }
        _ => String::new(),
    }
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
        out.push_str(&format!(
            "run {}: listening after {:.2} s, /readyz OK after {:.2} s, online {:?}, RSS {}{}; shutdown {:.2} s\n",
            i + 1,
            run.listening_seconds,
            run.ready_seconds,
            run.online,
            run.rss.map_or_else(|| "-".to_owned(), mib),
            per_user(s, run.rss, run.online),
            run.shutdown_seconds,
        ));
    }
    if let Some(pass) = &s.tokens {
        let online = s.runs.last().and_then(|run| run.online);
        out.push_str(&format!(
            "every token used once ({} heartbeats in {:.1} s): RSS {}{}\n",
            pass.heartbeats,
            pass.seconds,
            pass.rss.map_or_else(|| "-".to_owned(), mib),
            per_user(s, pass.rss, online),
        ));
    }
    out
}
