//! `sockets` mode: many concurrent WebSocket subscribers, the server's memory per socket, and
//! the delivery latency of presence transitions to every subscribed socket.
//!
//! Two groups of users are seeded by SQL: S *watchers*, each holding one socket subscribed to
//! K *watched* users, and W watched users. The driver makes transitions without Argon2: it
//! opens a socket as a watched user (its session goes live → `online` at once) and closes it
//! after `--hold` (→ `offline` after the server's `disconnect_grace`). Latency is measured from
//! the event's `seq`, which is the transition's wall-clock time in microseconds on the server
//! (same machine, same clock), to the moment a watcher's task has read the frame. For
//! `offline` that is the end of the grace, when the server makes the transition.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use chrono::Utc;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::cli::SocketsArgs;
use crate::heartbeat::emit;
use crate::load::new_histogram;
use crate::progress;
use crate::report::{Percentiles, mib};
use crate::seed;
use crate::setup::Machine;
use crate::target::{ServerFiles, Target, rss_bytes};

/// Ephemeral ports used per source address (of ~28k in the default range), leaving headroom.
const PORTS_PER_ADDRESS: usize = 20_000;
/// Sockets being opened at once (kept below the server's listen backlog).
const OPENING_AT_ONCE: usize = 256;

/// The JSON summary of a sockets run.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Always `sockets`.
    pub mode: &'static str,
    /// The machine.
    pub machine: Machine,
    /// Subscriber sockets asked for.
    pub sockets: usize,
    /// Subscriber sockets open and subscribed (snapshot received).
    pub sockets_open: u64,
    /// Sockets that failed to open.
    pub open_failures: u64,
    /// The first opening error, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_open_error: Option<String>,
    /// Seconds to open and subscribe all sockets.
    pub open_seconds: f64,
    /// Watched users per socket.
    pub subscriptions_per_socket: usize,
    /// Watched users.
    pub watched_users: usize,
    /// Source addresses 127.0.0.1..N the sockets came from.
    pub source_addresses: usize,
    /// Server RSS before opening the sockets (bytes).
    pub server_rss_before: Option<u64>,
    /// Server RSS with all sockets open (bytes).
    pub server_rss_after: Option<u64>,
    /// `(after - before) / sockets_open`.
    pub server_bytes_per_socket: Option<f64>,
    /// This tool's RSS with all sockets open (bytes).
    pub client_rss: Option<u64>,
    /// Transitions per second asked for (online + offline).
    pub target_rate: f64,
    /// Transitions made per second (online + offline).
    pub transitions_per_second: f64,
    /// Online transitions made.
    pub online_transitions: u64,
    /// Offline transitions made (sockets of watched users closed).
    pub offline_transitions: u64,
    /// Driver sockets that failed to open.
    pub driver_failures: u64,
    /// `online` events expected at subscribed sockets (online transitions × their subscribers).
    pub online_expected: u64,
    /// `online` events received from transitions of the run.
    pub online_delivered: u64,
    /// Latency of `online` events, transition to receipt (µs).
    pub online_latency_us: Percentiles,
    /// `offline` events received from transitions of the run.
    pub offline_delivered: u64,
    /// Latency of `offline` events from the offline transition, which the server makes when
    /// the grace after the close ends; its `seq` is that moment (µs).
    pub offline_latency_us: Percentiles,
    /// Subscriber sockets closed by the server during the run.
    pub sockets_closed_by_server: u64,
    /// Server CPU time during the transitions, as a share of one core.
    pub server_cpu_cores: Option<f64>,
    /// This tool's CPU time during the transitions, as a share of one core.
    pub client_cpu_cores: Option<f64>,
}

/// What the subscriber tasks record.
struct Tally {
    /// Events with `seq` at or after this time (µs since the epoch) belong to the run.
    since_us: AtomicU64,
    online: Mutex<Histogram<u64>>,
    offline: Mutex<Histogram<u64>>,
    closed: AtomicU64,
}

/// Wall-clock microseconds since the Unix epoch (the unit of a presence event's `seq`).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Raises this process's open-file limit as far as allowed (the hard limit, or `wanted` when
/// running as root); the spawned server inherits it. Returns the soft limit now in force.
fn raise_fd_limit(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to and read from the struct we pass, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) != 0 {
            return 0;
        }
        if limit.rlim_max < wanted {
            let raised = libc::rlimit {
                rlim_cur: wanted,
                rlim_max: wanted,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) == 0 {
                return wanted;
            }
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit);
    }
    limit.rlim_cur
}

fn small_buffers() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
}

/// Opens a presence socket to `server` with `token` in the `Authorization` header, from
/// `source` when given.
pub async fn connect(
    source: Option<Ipv4Addr>,
    server: SocketAddr,
    token: &str,
) -> anyhow::Result<WebSocketStream<TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(IpAddr::V4(ip), 0))
            .with_context(|| format!("while binding to {ip}"))?;
    }
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    let mut request = format!("ws://{server}/api/presence/ws").into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(small_buffers())).await?;
    Ok(ws)
}

/// Reads `"key":<number>` from a JSON text without parsing all of it.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits = text[start..].bytes().take_while(u8::is_ascii_digit).count();
    text[start..start + digits].parse().ok()
}

impl Tally {
    fn record(&self, text: &str, received_us: u64) {
        if !text.starts_with(r#"{"type":"presence""#) {
            return;
        }
        let Some(seq) = number_after(text, r#""seq":"#) else {
            return;
        };
        if seq < self.since_us.load(Ordering::Relaxed) {
            return;
        }
        let latency_us = received_us.saturating_sub(seq);
        if text.contains(r#""online_status":"online""#) {
            if let Ok(mut h) = self.online.lock() {
                let _ = h.record(latency_us.max(1) * 1000);
            }
        } else if let Ok(mut h) = self.offline.lock() {
            let _ = h.record(latency_us.max(1) * 1000);
        }
    }
}

/// One subscriber: opens, subscribes, waits for the snapshot, then records events until the
/// socket ends.
async fn subscriber(
    source: Ipv4Addr,
    server: SocketAddr,
    token: String,
    watched: Vec<i64>,
    tally: Arc<Tally>,
    opening: Arc<Semaphore>,
) -> anyhow::Result<()> {
    let permit = opening.acquire_owned().await?;
    let mut ws = connect(Some(source), server, &token).await?;
    drop(token);
    let subscribe = serde_json::json!({"type": "subscribe", "user_ids": watched}).to_string();
    drop(watched);
    ws.send(Message::Text(subscribe.into())).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.starts_with(r#"{"type":"snapshot""#) => break,
            // Servers since the `ready` message greet an authenticated socket first.
            Some(Ok(Message::Text(text))) if text.starts_with(r#"{"type":"ready""#) => {}
            Some(Ok(Message::Text(text))) => bail!("unexpected first message: {text}"),
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error.into()),
            None => bail!("closed before the snapshot"),
        }
    }
    drop(permit);
    READY.fetch_add(1, Ordering::Relaxed);
    while let Some(frame) = ws.next().await {
        match frame {
            Ok(Message::Text(text)) => tally.record(&text, now_us()),
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    tally.closed.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

static READY: AtomicU64 = AtomicU64::new(0);

/// Seeds watchers `{prefix}w0..` and watched users `{prefix}t0..`, each with one session last
/// active long ago (so everyone starts offline); returns (watcher tokens, watched tokens,
/// watched ids).
async fn seed_users(
    files: &ServerFiles,
    prefix: &str,
    watchers: usize,
    watched: usize,
) -> anyhow::Result<(Vec<String>, Vec<String>, Vec<i64>)> {
    let bar = progress::step("seeding");
    let pool = seed::open(files).await?;
    let hash = seed::password_hash(files, &pool, prefix).await?;
    let offline = seed::Presence { online_since: None };
    let (wp, tp) = (format!("{prefix}w"), format!("{prefix}t"));
    seed::users(&pool, &wp, watchers as u64, &hash, &offline).await?;
    seed::users(&pool, &tp, watched as u64, &hash, &offline).await?;
    let long_ago = Utc::now() - chrono::Duration::days(1);
    let names = |p: &str, n: usize| (0..n).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
    let watched_names = names(&tp, watched);
    let watcher_tokens = seed::sessions(&pool, &names(&wp, watchers), long_ago).await?;
    let watched_tokens = seed::sessions(&pool, &watched_names, long_ago).await?;
    let mut ids = Vec::with_capacity(watched);
    for name in &watched_names {
        let id: i64 = sqlx::query_scalar("select user_id from users where username = ?")
            .bind(name)
            .fetch_one(&pool)
            .await?;
        ids.push(id);
    }
    pool.close().await;
    bar.finish_and_clear();
    Ok((watcher_tokens, watched_tokens, ids))
}

/// Runs the mode and prints its report.
///
/// # Errors
/// If the server cannot start, users cannot be seeded, or no socket opens.
#[expect(
    clippy::too_many_lines,
    reason = "one linear script: seed, open, drive, report"
)]
pub async fn run(args: SocketsArgs, json: bool) -> anyhow::Result<()> {
    let machine = Machine::read();
    let sockets = args.sockets;
    let per_socket = args.subscriptions.max(1);
    let watched = args.watched.max(per_socket);
    let hold = Duration::from_secs_f64(args.hold.max(0.0));
    let grace = parse_grace(&args.disconnect_grace)?;
    // Each cycle is two transitions; a watched user must be free again before its next turn.
    let cycles_per_second = args.rate / 2.0;
    ensure!(
        watched as f64 >= cycles_per_second * (hold + grace).as_secs_f64() * 2.0,
        "--watched {watched} is too few for {} transitions/s with --hold {:?} and a grace of {grace:?}",
        args.rate,
        hold
    );
    // The server (our child) needs as many descriptors as this process: one per socket.
    let limit = raise_fd_limit(sockets as u64 + 20_000);
    ensure!(
        limit >= sockets as u64 + 1_000,
        "open-file limit {limit} is too low for {sockets} sockets plus driver sockets and files \
         (at most {} here); raising the hard limit needs CAP_SYS_RESOURCE",
        limit.saturating_sub(1_000)
    );

    let mut server_args = args.server_args.clone();
    server_args.push(format!("--disconnect-grace={}", args.disconnect_grace));
    let files = ServerFiles::new(args.server_bin.clone(), None, server_args)?;
    let (watcher_tokens, watched_tokens, watched_ids) =
        seed_users(&files, "bench-", sockets, watched).await?;
    let bar = progress::step("starting");
    let target = Target::spawn(&files).await?;
    bar.finish_and_clear();
    let server = target.addr;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let server_rss_before = target.rss();

    // Subscriptions: socket i watches users (i*K + j) mod W.
    let mut subscribers = vec![0_u64; watched];
    let tally = Arc::new(Tally {
        since_us: AtomicU64::new(u64::MAX),
        online: Mutex::new(new_histogram()),
        offline: Mutex::new(new_histogram()),
        closed: AtomicU64::new(0),
    });
    let sources = sockets.div_ceil(PORTS_PER_ADDRESS).max(1);
    ensure!(sources < 255, "too many sockets for 127.0.0.1..254");
    let opening = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let open_started = Instant::now();
    let bar = progress::counter("opening", sockets as u64);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, token) in watcher_tokens.into_iter().enumerate() {
        let ids: Vec<i64> = (0..per_socket)
            .map(|j| {
                let w = (i * per_socket + j) % watched;
                subscribers[w] += 1;
                watched_ids[w]
            })
            .collect();
        let source = Ipv4Addr::new(127, 0, 0, 1 + u8::try_from(i % sources)?);
        tasks.spawn(subscriber(
            source,
            server,
            token,
            ids,
            tally.clone(),
            opening.clone(),
        ));
    }
    let mut open_failures = 0_u64;
    let mut first_open_error = None;
    loop {
        let ready = READY.load(Ordering::Relaxed);
        bar.set_position(ready + open_failures);
        if ready + open_failures >= sockets as u64 {
            break;
        }
        // Failed tasks finish; successful ones stay alive until the end.
        tokio::select! {
            done = tasks.join_next() => match done {
                Some(Ok(Err(error))) => {
                    open_failures += 1;
                    first_open_error.get_or_insert_with(|| format!("{error:#}"));
                }
                Some(_) => open_failures += 1,
                None => break,
            },
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    bar.finish_and_clear();
    let open_seconds = open_started.elapsed().as_secs_f64();
    let sockets_open = READY.load(Ordering::Relaxed);
    ensure!(
        sockets_open > 0,
        "no socket opened: {}",
        first_open_error.unwrap_or_default()
    );
    tokio::time::sleep(Duration::from_secs_f64(args.settle.max(0.0))).await;
    let server_rss_after = target.rss();
    let client_rss = rss_bytes("/proc/self/status");

    // Driver: open a watched user's socket (online), hold, close (offline after the grace).
    let duration = Duration::from_secs_f64(args.duration.max(0.1));
    let online = Arc::new(AtomicU64::new(0));
    let offline = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let expected = Arc::new(AtomicU64::new(0));
    let subscribers = Arc::new(subscribers);
    let watched_tokens: Arc<[String]> = watched_tokens.into();
    tally.since_us.store(now_us(), Ordering::Relaxed);
    let (cpu_before, own_before) = (target.cpu(), crate::target::own_cpu());
    let drive_started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / cycles_per_second));
    let bar = progress::timed("transitions", duration);
    let mut drivers = tokio::task::JoinSet::new();
    let mut next = 0_usize;
    while drive_started.elapsed() < duration {
        tick.tick().await;
        let w = next % watched;
        next += 1;
        let (on, off, failed, expect, subscribers, tokens) = (
            online.clone(),
            offline.clone(),
            failures.clone(),
            expected.clone(),
            subscribers.clone(),
            watched_tokens.clone(),
        );
        drivers.spawn(async move {
            match connect(None, server, &tokens[w]).await {
                Ok(mut ws) => {
                    on.fetch_add(1, Ordering::Relaxed);
                    expect.fetch_add(subscribers[w], Ordering::Relaxed);
                    tokio::time::sleep(hold).await;
                    let _ = ws.close(None).await;
                    off.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        while drivers.try_join_next().is_some() {}
        bar.set_position(u64::try_from(drive_started.elapsed().as_millis() / 100).unwrap_or(0));
        bar.set_message(format!(
            "{} online, {} offline",
            online.load(Ordering::Relaxed),
            offline.load(Ordering::Relaxed)
        ));
    }
    while drivers.join_next().await.is_some() {}
    let drive_seconds = drive_started.elapsed().as_secs_f64();
    let (cpu_after, own_after) = (target.cpu(), crate::target::own_cpu());
    bar.finish_and_clear();
    // Let the last offline events arrive.
    tokio::time::sleep(grace + Duration::from_secs(1)).await;

    let cores = |a: Option<Duration>, b: Option<Duration>| {
        a.zip(b)
            .map(|(a, b)| a.saturating_sub(b).as_secs_f64() / drive_seconds)
    };
    let (online_h, offline_h) = (
        tally.online.lock().map(|h| h.clone()),
        tally.offline.lock().map(|h| h.clone()),
    );
    let (Ok(online_h), Ok(offline_h)) = (online_h, offline_h) else {
        bail!("a subscriber task panicked");
    };
    let online_transitions = online.load(Ordering::Relaxed);
    let offline_transitions = offline.load(Ordering::Relaxed);
    let summary = Summary {
        mode: "sockets",
        machine,
        sockets,
        sockets_open,
        open_failures,
        first_open_error,
        open_seconds,
        subscriptions_per_socket: per_socket,
        watched_users: watched,
        source_addresses: sources,
        server_bytes_per_socket: server_rss_before
            .zip(server_rss_after)
            .map(|(b, a)| a.saturating_sub(b) as f64 / sockets_open as f64),
        server_rss_before,
        server_rss_after,
        client_rss,
        target_rate: args.rate,
        transitions_per_second: (online_transitions + offline_transitions) as f64 / drive_seconds,
        online_transitions,
        offline_transitions,
        driver_failures: failures.load(Ordering::Relaxed),
        online_expected: expected.load(Ordering::Relaxed),
        online_delivered: online_h.len(),
        online_latency_us: Percentiles::of(&online_h),
        offline_delivered: offline_h.len(),
        offline_latency_us: Percentiles::of(&offline_h),
        sockets_closed_by_server: tally.closed.load(Ordering::Relaxed),
        server_cpu_cores: cores(cpu_after, cpu_before),
        client_cpu_cores: cores(own_after, own_before),
    };
    print(&summary, json)?;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    target.stop()
}

fn parse_grace(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(s) = text.strip_suffix('s') {
        (s, 1.0)
    } else {
        bail!("--disconnect-grace must end in ms or s, e.g. 200ms");
    };
    let value: f64 = number
        .trim()
        .parse()
        .context("while reading --disconnect-grace")?;
    Ok(Duration::from_secs_f64(value.max(0.0) * scale))
}

fn print(s: &Summary, json: bool) -> anyhow::Result<()> {
    let opt_mib = |b: Option<u64>| b.map_or_else(|| "?".to_owned(), mib);
    let ms = |us: f64| us / 1000.0;
    let line = |p: &Percentiles| {
        format!(
            "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
            ms(p.p50),
            ms(p.p90),
            ms(p.p99),
            ms(p.p99_9),
            ms(p.max)
        )
    };
    let mut text = format!(
        "sockets: {} of {} open in {:.1} s ({} failed{}), {} subscriptions each over {} watched users, from {} source addresses, on {} × {} (load {:.2})\n",
        s.sockets_open,
        s.sockets,
        s.open_seconds,
        s.open_failures,
        s.first_open_error
            .as_ref()
            .map_or_else(String::new, |e| format!(": {e}")),
        s.subscriptions_per_socket,
        s.watched_users,
        s.source_addresses,
        s.machine.cpus,
        s.machine.cpu_model,
        s.machine.load_average.unwrap_or(f64::NAN),
    );
    text.push_str(&format!(
        "server RSS: {} before, {} with the sockets open: {:.0} bytes ({:.1} KiB) per socket; client RSS {}\n",
        opt_mib(s.server_rss_before),
        opt_mib(s.server_rss_after),
        s.server_bytes_per_socket.unwrap_or(f64::NAN),
        s.server_bytes_per_socket.unwrap_or(f64::NAN) / 1024.0,
        opt_mib(s.client_rss),
    ));
    text.push_str(&format!(
        "transitions: {:.0}/s achieved of {:.0}/s asked ({} online, {} offline, {} driver failures); server CPU {:.2} cores, client {:.2} cores\n",
        s.transitions_per_second,
        s.target_rate,
        s.online_transitions,
        s.offline_transitions,
        s.driver_failures,
        s.server_cpu_cores.unwrap_or(f64::NAN),
        s.client_cpu_cores.unwrap_or(f64::NAN),
    ));
    text.push_str(&format!(
        "online delivered: {} of {} expected ({:.2}%); latency {}\n",
        s.online_delivered,
        s.online_expected,
        s.online_delivered as f64 * 100.0 / s.online_expected.max(1) as f64,
        line(&s.online_latency_us),
    ));
    text.push_str(&format!(
        "offline delivered: {}; latency from the transition (end of the grace) {}\n",
        s.offline_delivered,
        line(&s.offline_latency_us),
    ));
    text.push_str(&format!(
        "subscriber sockets closed by the server during the run: {}\n",
        s.sockets_closed_by_server
    ));
    emit(&text, s, json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_after_their_key() {
        let text =
            r#"{"type":"presence","user_id":7,"online_status":"online","seq":1732700000123456}"#;
        assert_eq!(number_after(text, r#""seq":"#), Some(1_732_700_000_123_456));
        assert_eq!(number_after(text, r#""user_id":"#), Some(7));
        assert_eq!(number_after(text, r#""nope":"#), None);
    }

    #[test]
    fn grace_accepts_seconds_and_milliseconds() {
        assert_eq!(parse_grace("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_grace("0s").unwrap(), Duration::ZERO);
        assert!(parse_grace("5 parsecs").is_err());
    }
}
