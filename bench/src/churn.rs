//! `churn` mode: login/logout cycles per second over HTTP, and the server's memory before,
//! right after, and once its batched writes have let it evict the users that went offline.
//!
//! Each login verifies an Argon2 hash on the server (by design about 20 ms of CPU), so this
//! mode measures how fast sessions can be opened and closed, not the HTTP stack.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cli::ChurnArgs;
use crate::client::{Conn, render};
use crate::heartbeat::emit;
use crate::load::new_histogram;
use crate::progress;
use crate::provision::login;
use crate::report::{Percentiles, mib};
use crate::scrape::Metrics;
use crate::setup::{self, Machine};
use crate::target::own_cpu;

/// The JSON summary of a churn run.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Always `churn`.
    pub mode: &'static str,
    /// The machine.
    pub machine: Machine,
    /// Users logging in and out.
    pub users: u64,
    /// Connections.
    pub connections: usize,
    /// Completed login + logout cycles.
    pub cycles: u64,
    /// Cycles per second.
    pub cycles_per_second: f64,
    /// Login latency.
    pub login_us: Percentiles,
    /// Logout latency.
    pub logout_us: Percentiles,
    /// Server CPU per cycle in milliseconds, when its pid is known.
    pub server_cpu_ms_per_cycle: Option<f64>,
    /// This tool's CPU per cycle in milliseconds.
    pub client_cpu_ms_per_cycle: Option<f64>,
    /// Server RSS before the run, right after it, and after settling (bytes).
    pub rss_before: Option<u64>,
    /// Right after the last cycle.
    pub rss_after: Option<u64>,
    /// After the batched writes of the run.
    pub rss_settled: Option<u64>,
    /// Online users the server reports after settling (expected: as before the run).
    pub online_after: Option<f64>,
    /// Online users before the run.
    pub online_before: Option<f64>,
}

struct Tally {
    cycles: u64,
    login: Histogram<u64>,
    logout: Histogram<u64>,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Runs the mode and prints its report.
///
/// # Errors
/// If the server cannot be prepared or a cycle fails.
pub async fn run(args: ChurnArgs, json: bool) -> anyhow::Result<()> {
    let machine = Machine::read();
    let prepared = setup::prepare(&args.target, args.users, false, args.connections).await?;
    let target = &prepared.target;
    let settle = Duration::from_secs_f64(args.target.settle.max(0.0));
    let online_before = Metrics::fetch(target).await?.sum("lastseen_online_users");
    let rss_before = target.rss();
    let duration = Duration::from_secs_f64(args.duration.max(0.1));

    let names: Arc<[String]> = prepared.names.clone().into();
    let cycles = Arc::new(AtomicU64::new(0));
    let bar = progress::timed("churn", duration);
    let (server_before, client_before) = (target.cpu(), own_cpu());
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    let connections = args.connections.max(1);
    for i in 0..connections {
        let (names, cycles) = (names.clone(), cycles.clone());
        let (addr, host) = (target.addr, target.host.clone());
        tasks.spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            let mut tally = Tally {
                cycles: 0,
                login: new_histogram(),
                logout: new_histogram(),
            };
            let mut next = i % names.len();
            while Instant::now() < deadline {
                let began = Instant::now();
                let token = login(&mut conn, &host, &names[next]).await?;
                let logged_in = Instant::now();
                let auth = format!("Bearer {token}");
                let request = render(
                    "POST",
                    &host,
                    "/api/users/logout/",
                    &[("authorization", &auth)],
                    b"",
                );
                let response = conn.send(&request).await?;
                ensure!(
                    response.status == 200,
                    "logout answered {}",
                    response.status
                );
                tally.login.saturating_record(nanos(logged_in - began));
                tally.logout.saturating_record(nanos(logged_in.elapsed()));
                tally.cycles += 1;
                cycles.fetch_add(1, Ordering::Relaxed);
                next = (next + connections) % names.len();
            }
            anyhow::Ok(tally)
        });
    }
    let ticker = tokio::spawn({
        let (bar, cycles) = (bar.clone(), cycles.clone());
        async move {
            let mut interval = tokio::time::interval(Duration::from_millis(100));
            loop {
                interval.tick().await;
                bar.set_position(u64::try_from(start.elapsed().as_millis() / 100).unwrap_or(0));
                bar.set_message(format!("{} cycles", cycles.load(Ordering::Relaxed)));
            }
        }
    });
    let mut total = Tally {
        cycles: 0,
        login: new_histogram(),
        logout: new_histogram(),
    };
    while let Some(result) = tasks.join_next().await {
        let tally = result.context("churn task panicked")??;
        total.cycles += tally.cycles;
        let _ = total.login.add(&tally.login);
        let _ = total.logout.add(&tally.logout);
    }
    let elapsed = start.elapsed();
    ticker.abort();
    bar.finish_and_clear();
    let per_cycle = |after: Option<Duration>, before: Option<Duration>| {
        Some(after?.saturating_sub(before?).as_secs_f64() * 1e3 / total.cycles.max(1) as f64)
    };
    let server_cpu = per_cycle(target.cpu(), server_before);
    let client_cpu = per_cycle(own_cpu(), client_before);
    let rss_after = target.rss();
    tokio::time::sleep(settle).await;
    let online_after = Metrics::fetch(target).await?.sum("lastseen_online_users");
    let rss_settled = target.rss();

    let summary = Summary {
        mode: "churn",
        machine,
        users: args.users,
        connections,
        cycles: total.cycles,
        cycles_per_second: total.cycles as f64 / elapsed.as_secs_f64(),
        login_us: Percentiles::of(&total.login),
        logout_us: Percentiles::of(&total.logout),
        server_cpu_ms_per_cycle: server_cpu,
        client_cpu_ms_per_cycle: client_cpu,
        rss_before,
        rss_after,
        rss_settled,
        online_after,
        online_before,
    };
    emit(&text(&summary), &summary, json)?;
    prepared.target.stop()
}

fn text(s: &Summary) -> String {
    let rss = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), mib);
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2} ms"));
    let p = |p: &Percentiles| {
        format!(
            "p50 {:.0} µs, p90 {:.0}, p99 {:.0}, p99.9 {:.0}, max {:.0}",
            p.p50, p.p90, p.p99, p.p99_9, p.max
        )
    };
    format!(
        "churn: {} users, {} connections, on {} × {} (load {:.2})\n\
         {} login/logout cycles, {:.1} cycles/s\n\
         login:  {}\nlogout: {}\n\
         CPU per cycle: server {}, client {}\n\
         server RSS: before {}, after {}, settled {}; online users before {:?}, after {:?}\n",
        s.users,
        s.connections,
        s.machine.cpus,
        s.machine.cpu_model,
        s.machine.load_average.unwrap_or(f64::NAN),
        s.cycles,
        s.cycles_per_second,
        p(&s.login_us),
        p(&s.logout_us),
        ms(s.server_cpu_ms_per_cycle),
        ms(s.client_cpu_ms_per_cycle),
        rss(s.rss_before),
        rss(s.rss_after),
        rss(s.rss_settled),
        s.online_before,
        s.online_after,
    )
}
