//! `cluster` mode: the scale-out figures, in one run on this machine.
//!
//! 1. Heartbeats/s of one node in the embedded mode (SQLite, in-process engine) and of one node
//!    in Redis mode (PostgreSQL + Redis), same users, same load: the ratio of the two.
//! 2. Three nodes on that PostgreSQL and Redis: total heartbeats/s with the load spread
//!    round-robin over them (one third of the connections on each).
//! 3. Push across nodes: a subscriber on the last node watches users whose sockets open and
//!    close on the first node; latency from each transition (its `seq` is its time in µs) to
//!    the subscriber receiving it.
//!
//! Every node is a `lastseen serve` child process; the PostgreSQL database (created by the
//! first node) and the Redis keys are unique to the run; the database is dropped at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::ClusterArgs;
use crate::client::{heartbeats, render};
use crate::load::{self, Plan, new_histogram};
use crate::provision;
use crate::report::{HEADER, Percentiles, PhaseSummary, median};
use crate::setup::Machine;
use crate::sockets::{connect, now_us};
use crate::target::{ServerFiles, Target};

/// The JSON summary of a cluster run.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Always `cluster`.
    pub mode: &'static str,
    /// The machine.
    pub machine: Machine,
    /// Nodes of the multi-node phase.
    pub nodes: usize,
    /// Median heartbeats/s, embedded mode.
    pub embedded_median: Option<f64>,
    /// Median heartbeats/s, one node in Redis mode.
    pub redis_median: Option<f64>,
    /// `redis_median / embedded_median`.
    pub redis_ratio: Option<f64>,
    /// Median total heartbeats/s over all nodes.
    pub cluster_median: Option<f64>,
    /// Every phase in order.
    pub phases: Vec<PhaseSummary>,
    /// Cross-node push latency of online transitions (µs).
    pub push_online_us: Percentiles,
    /// Cross-node push latency of offline transitions (µs).
    pub push_offline_us: Percentiles,
    /// Transitions driven on the first node.
    pub transitions_driven: u64,
    /// Events the subscriber on the last node received.
    pub events_received: u64,
}

/// Closed-loop heartbeat rounds against `targets` at once (connections split between them);
/// one merged phase per round.
async fn heartbeat_rounds(
    targets: &[Target],
    tokens: &[String],
    name: &str,
    args: &ClusterArgs,
) -> anyhow::Result<Vec<load::Outcome>> {
    let per_target = (args.connections / targets.len()).max(1);
    let requests: Vec<Arc<[Vec<u8>]>> = targets
        .iter()
        .map(|target| heartbeats(&target.host, tokens))
        .collect();
    for (target, requests) in targets.iter().zip(&requests) {
        load::sweep(target, "warm-up", requests.clone(), per_target).await?;
    }
    let plan = Plan {
        connections: per_target,
        duration: Duration::from_secs_f64(args.duration.max(0.5)),
        rate: None,
    };
    let mut rounds = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let phase = format!("{name} #{round}");
        let runs = targets
            .iter()
            .zip(&requests)
            .map(|(target, requests)| load::run(target, &phase, requests.clone(), plan));
        let outcomes = futures_util::future::try_join_all(runs).await?;
        rounds.push(merge(&phase, outcomes));
    }
    Ok(rounds)
}

/// One outcome of several that ran at the same time: counts and CPU add up, the elapsed time
/// is the longest, latencies merge.
fn merge(name: &str, outcomes: Vec<load::Outcome>) -> load::Outcome {
    let mut merged = load::Outcome {
        name: name.to_owned(),
        ok: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        latency: new_histogram(),
        server_cpu: Some(Duration::ZERO),
        client_cpu: None,
        target_rate: None,
    };
    for outcome in outcomes {
        merged.ok += outcome.ok;
        merged.errors += outcome.errors;
        merged.first_error = merged.first_error.or(outcome.first_error);
        merged.elapsed = merged.elapsed.max(outcome.elapsed);
        let _ = merged.latency.add(&outcome.latency);
        merged.server_cpu = match (merged.server_cpu, outcome.server_cpu) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
        merged.client_cpu = outcome.client_cpu;
    }
    merged
}

fn throughputs(outcomes: &[load::Outcome]) -> Vec<f64> {
    outcomes.iter().map(load::Outcome::throughput).collect()
}

/// What the cross-node subscriber heard.
struct Heard {
    since_us: u64,
    online: Histogram<u64>,
    offline: Histogram<u64>,
    events: u64,
}

impl Heard {
    fn record(&mut self, text: &str, received_us: u64) {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(text) else {
            return;
        };
        if message["type"] != "presence" {
            return;
        }
        let Some(seq) = message["seq"].as_u64() else {
            return;
        };
        if seq < self.since_us {
            return;
        }
        self.events += 1;
        let latency_ns = received_us.saturating_sub(seq).max(1) * 1000;
        let histogram = if message["online_status"] == "online" {
            &mut self.online
        } else {
            &mut self.offline
        };
        histogram.saturating_record(latency_ns);
    }
}

/// Starts a node of the shared deployment.
async fn node(files: &ServerFiles) -> anyhow::Result<Target> {
    Target::spawn(files).await
}

/// Runs the mode and prints its report.
///
/// # Errors
/// If a node cannot start, users cannot be made, or a socket fails.
#[expect(
    clippy::too_many_lines,
    reason = "one linear script: embedded, one Redis node, three nodes, push"
)]
pub async fn run(args: ClusterArgs, json: bool) -> anyhow::Result<()> {
    let machine = Machine::read();
    let run_id = format!("{:08x}", rand::random::<u32>());
    let names = provision::usernames("bench-h", args.users);
    let mut phases = Vec::new();

    // 1a. Embedded.
    let embedded_files = ServerFiles::new(args.server_bin.clone(), None, Vec::new())?;
    let embedded = node(&embedded_files).await?;
    let tokens = provision::via_api(&embedded, &names, 4, true, true).await?;
    let embedded_rounds =
        heartbeat_rounds(std::slice::from_ref(&embedded), &tokens, "embedded", &args).await?;
    embedded.stop()?;

    // 1b. One node in Redis mode.
    let database = format!(
        "{}/lastseen_bench_{run_id}",
        args.postgres_url.trim_end_matches('/')
    );
    let shared_args = vec![
        format!("--redis-url={}", args.redis_url),
        format!("--redis-key-prefix=bench{run_id}"),
        "--inactivity-timeout=3s".to_owned(),
        "--disconnect-grace=100ms".to_owned(),
    ];
    let mut shared = ServerFiles::new(args.server_bin.clone(), None, shared_args)?;
    shared.database = Some(database.clone());
    let first = node(&shared).await?;
    let tokens = provision::via_api(&first, &names, 4, true, true).await?;
    let redis_rounds =
        heartbeat_rounds(std::slice::from_ref(&first), &tokens, "redis 1 node", &args).await?;

    // 2. More nodes on the same PostgreSQL and Redis; load round-robin.
    let mut nodes = vec![first];
    for _ in 1..args.nodes.max(2) {
        nodes.push(node(&shared).await?);
    }
    let cluster_rounds =
        heartbeat_rounds(&nodes, &tokens, &format!("{} nodes", nodes.len()), &args).await?;

    // 3. Push from the first node to a subscriber on the last one.
    let watched_names = provision::usernames("bench-w", args.watched);
    let watched_tokens = provision::via_api(&nodes[0], &watched_names, 4, true, true).await?;
    let watcher = provision::via_api(
        &nodes[nodes.len() - 1],
        &["bench-watcher".to_owned()],
        1,
        true,
        true,
    )
    .await?;
    let watched_ids = user_ids(&nodes[0], &watched_tokens).await?;
    // Let the logins' sessions time out (inactivity 3 s): everyone watched starts offline.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let last = &nodes[nodes.len() - 1];
    let mut subscriber = connect(None, last.addr, &watcher[0]).await?;
    let subscribe = serde_json::json!({"type": "subscribe", "user_ids": watched_ids});
    subscriber
        .send(Message::Text(subscribe.to_string().into()))
        .await?;
    loop {
        match subscriber.next().await {
            Some(Ok(Message::Text(text))) if text.contains(r#""type":"snapshot""#) => break,
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error.into()),
            None => bail!("the subscriber closed before its snapshot"),
        }
    }
    let heard = Arc::new(Mutex::new(Heard {
        since_us: now_us(),
        online: new_histogram(),
        offline: new_histogram(),
        events: 0,
    }));
    let listener = {
        let heard = heard.clone();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = subscriber.next().await {
                if let Message::Text(text) = frame {
                    let received = now_us();
                    heard.lock().await.record(&text, received);
                }
            }
        })
    };
    let driven = Arc::new(AtomicU64::new(0));
    let hold = Duration::from_millis(300);
    let cycles = (args.push_rate / 2.0).max(0.5);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / cycles));
    let started = Instant::now();
    let mut drivers = tokio::task::JoinSet::new();
    let mut next = 0_usize;
    let first_addr = nodes[0].addr;
    while started.elapsed() < Duration::from_secs_f64(args.duration.max(1.0) * 2.0) {
        tick.tick().await;
        let token = watched_tokens[next % watched_tokens.len()].clone();
        next += 1;
        let driven = driven.clone();
        drivers.spawn(async move {
            let mut socket = connect(None, first_addr, &token).await?;
            driven.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(hold).await;
            socket.close(None).await?;
            driven.fetch_add(1, Ordering::Relaxed);
            anyhow::Ok(())
        });
    }
    while let Some(done) = drivers.join_next().await {
        done.context("driver panicked")??;
    }
    // The last offline transitions come a grace after the last close.
    tokio::time::sleep(Duration::from_secs(2)).await;
    listener.abort();
    let heard = heard.lock().await;

    for node in nodes {
        node.stop()?;
    }
    drop_database(&args.postgres_url, &format!("lastseen_bench_{run_id}")).await;
    delete_keys(&args.redis_url, &format!("bench{run_id}"));

    phases.extend(embedded_rounds.iter().map(PhaseSummary::of));
    phases.extend(redis_rounds.iter().map(PhaseSummary::of));
    phases.extend(cluster_rounds.iter().map(PhaseSummary::of));
    let embedded_median = median(&throughputs(&embedded_rounds));
    let redis_median = median(&throughputs(&redis_rounds));
    let summary = Summary {
        mode: "cluster",
        machine,
        nodes: args.nodes.max(2),
        embedded_median,
        redis_median,
        redis_ratio: redis_median.zip(embedded_median).map(|(r, e)| r / e),
        cluster_median: median(&throughputs(&cluster_rounds)),
        phases,
        push_online_us: Percentiles::of(&heard.online),
        push_offline_us: Percentiles::of(&heard.offline),
        transitions_driven: driven.load(Ordering::Relaxed),
        events_received: heard.events,
    };
    print_report(&summary, json)
}

/// The ids of the users holding `tokens` (one `GET /api/users/me/` each).
async fn user_ids(target: &Target, tokens: &[String]) -> anyhow::Result<Vec<i64>> {
    let mut conn = crate::client::Conn::connect(target.addr).await?;
    let mut ids = Vec::with_capacity(tokens.len());
    for token in tokens {
        let auth = format!("Bearer {token}");
        let request = render(
            "GET",
            &target.host,
            "/api/users/me/",
            &[("authorization", &auth)],
            b"",
        );
        let response = conn.send(&request).await?;
        let me: serde_json::Value = serde_json::from_slice(response.body)?;
        ids.push(
            me["id"]
                .as_i64()
                .context("GET /api/users/me/ without an id")?,
        );
    }
    Ok(ids)
}

/// Drops the run's database (best effort: a leftover is harmless, only untidy).
async fn drop_database(server: &str, name: &str) {
    use sqlx::Connection;
    let url = format!("{}/postgres", server.trim_end_matches('/'));
    match sqlx::PgConnection::connect(&url).await {
        Ok(mut conn) => {
            let drop = format!("drop database if exists {name} with (force)");
            if let Err(error) = sqlx::query(sqlx::AssertSqlSafe(drop))
                .execute(&mut conn)
                .await
            {
                eprintln!("warning: could not drop {name}: {error}");
            }
        }
        Err(error) => eprintln!("warning: could not drop {name}: {error}"),
    }
}

/// Deletes the run's Redis keys with `redis-cli` (best effort, like [`drop_database`]).
fn delete_keys(redis_url: &str, prefix: &str) {
    let script = format!(
        "redis-cli -u \"$0\" --scan --pattern '*{prefix}*' | xargs -r redis-cli -u \"$0\" unlink >/dev/null"
    );
    let status = std::process::Command::new("sh")
        .args(["-c", &script, redis_url])
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("warning: could not delete the Redis keys *{prefix}* (is redis-cli installed?)");
    }
}

fn print_report(summary: &Summary, json: bool) -> anyhow::Result<()> {
    let mut text = String::new();
    text.push_str(&format!(
        "cluster: {} nodes on one PostgreSQL and one Redis, {} CPUs ({})\n\n{HEADER}\n",
        summary.nodes, summary.machine.cpus, summary.machine.cpu_model
    ));
    for phase in &summary.phases {
        text.push_str(&phase.line());
        text.push('\n');
    }
    let show = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
    text.push_str(&format!(
        "\nheartbeats/s (medians): embedded {}, one Redis node {} (ratio {}), {} nodes together {}\n",
        show(summary.embedded_median),
        show(summary.redis_median),
        summary
            .redis_ratio
            .map_or("-".to_owned(), |r| format!("{:.0}%", r * 100.0)),
        summary.nodes,
        show(summary.cluster_median),
    ));
    text.push_str(&format!(
        "push first node -> subscriber on the last: {} transitions driven, {} events heard\n  \
         online  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms\n  \
         offline p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms\n",
        summary.transitions_driven,
        summary.events_received,
        summary.push_online_us.p50 / 1000.0,
        summary.push_online_us.p99 / 1000.0,
        summary.push_online_us.max / 1000.0,
        summary.push_offline_us.p50 / 1000.0,
        summary.push_offline_us.p99 / 1000.0,
        summary.push_offline_us.max / 1000.0,
    ));
    if json {
        eprint!("{text}");
        println!("{}", serde_json::to_string_pretty(summary)?);
    } else {
        print!("{text}");
    }
    Ok(())
}
