//! The load driver: C keep-alive connections sending pre-rendered requests for a fixed time,
//! closed-loop (each connection sends as soon as its previous answer arrives) or open-loop at
//! a fixed total rate.
//!
//! Open loop avoids coordinated omission: every request has an intended send time on a fixed
//! schedule, and when a connection is still busy at that time (the server is behind), the
//! request's latency is counted from the intended time, not from when it could finally be
//! sent. When the connection is idle, the latency counts from the actual send, so that the
//! 1 ms granularity of tokio's timer does not add client-side delay to the figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;

use crate::client::Conn;
use crate::progress;
use crate::target::{Target, own_cpu};

/// How to drive one phase.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Keep-alive connections, one request in flight on each.
    pub connections: usize,
    /// How long to send.
    pub duration: Duration,
    /// Total requests per second (open loop); `None` sends as fast as answers come back.
    pub rate: Option<f64>,
}

/// What one phase measured.
pub struct Outcome {
    /// Phase name, e.g. `heartbeat`.
    pub name: String,
    /// Responses with a 2xx status.
    pub ok: u64,
    /// Responses with another status.
    pub errors: u64,
    /// Status and body of the first error response.
    pub first_error: Option<String>,
    /// From the first send to the last answer.
    pub elapsed: Duration,
    /// Latency of 2xx responses in nanoseconds.
    pub latency: Histogram<u64>,
    /// CPU the server used during the phase, when its pid is known.
    pub server_cpu: Option<Duration>,
    /// CPU this tool used during the phase.
    pub client_cpu: Option<Duration>,
    /// The open-loop rate asked for.
    pub target_rate: Option<f64>,
}

impl Outcome {
    /// Answered requests per second.
    pub fn throughput(&self) -> f64 {
        (self.ok + self.errors) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A histogram for latencies from 1 µs to 60 s in nanoseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3)
        .expect("BUG: constant histogram bounds are valid")
}

struct Tally {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            ok: 0,
            errors: 0,
            first_error: None,
            latency: new_histogram(),
        }
    }

    fn record(&mut self, status: u16, body: &[u8], latency: Duration) {
        if (200..300).contains(&status) {
            self.ok += 1;
            self.latency
                .saturating_record(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
        } else {
            self.errors += 1;
            self.first_error
                .get_or_insert_with(|| format!("{status} {}", String::from_utf8_lossy(body)));
        }
    }

    fn merge(&mut self, other: Self) {
        self.ok += other.ok;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
    }
}

/// Runs one phase: connection `i` sends `requests[i]`, `requests[i + C]`, … (wrapping), so
/// consecutive requests of a connection rotate through the set (e.g. through users' tokens).
///
/// # Errors
/// If a connection cannot be made or breaks.
pub async fn run(
    target: &Target,
    name: &str,
    requests: Arc<[Vec<u8>]>,
    plan: Plan,
) -> anyhow::Result<Outcome> {
    anyhow::ensure!(!requests.is_empty(), "no requests to send");
    let connections = plan.connections.max(1);
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(Conn::connect(target.addr).await?);
    }
    let sent = Arc::new(AtomicU64::new(0));
    let bar = progress::timed(name, plan.duration);
    let (server_before, client_before) = (target.cpu(), own_cpu());
    let start = Instant::now();
    let deadline = start + plan.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, conn) in conns.into_iter().enumerate() {
        let (requests, sent) = (requests.clone(), sent.clone());
        let schedule = plan
            .rate
            .map(|rate| Schedule::new(rate, i, connections, start));
        tasks.spawn(drive(
            conn,
            requests,
            i,
            connections,
            deadline,
            schedule,
            sent,
        ));
    }
    let ticker = tokio::spawn(tick(bar.clone(), sent, start));
    let mut tally = Tally::new();
    while let Some(result) = tasks.join_next().await {
        tally.merge(result.context("load task panicked")??);
    }
    let elapsed = start.elapsed();
    ticker.abort();
    bar.finish_and_clear();
    let delta =
        |after: Option<Duration>, before: Option<Duration>| Some(after?.saturating_sub(before?));
    Ok(Outcome {
        name: name.to_owned(),
        ok: tally.ok,
        errors: tally.errors,
        first_error: tally.first_error,
        elapsed,
        latency: tally.latency,
        server_cpu: delta(target.cpu(), server_before),
        client_cpu: delta(own_cpu(), client_before),
        target_rate: plan.rate,
    })
}

/// Sends every request once over `connections` connections (a warm-up pass).
///
/// # Errors
/// If a connection breaks or any response is not 2xx.
pub async fn sweep(
    target: &Target,
    name: &str,
    requests: Arc<[Vec<u8>]>,
    connections: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let bar = progress::counter(name, requests.len() as u64);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections.max(1) {
        let (requests, next, bar) = (requests.clone(), next.clone(), bar.clone());
        let addr = target.addr;
        tasks.spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            loop {
                let i = usize::try_from(next.fetch_add(1, Ordering::Relaxed))?;
                let Some(request) = requests.get(i) else {
                    return anyhow::Ok(());
                };
                let response = conn.send(request).await?;
                anyhow::ensure!(
                    (200..300).contains(&response.status),
                    "warm-up request answered {}: {}",
                    response.status,
                    String::from_utf8_lossy(response.body)
                );
                bar.inc(1);
            }
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    bar.finish_and_clear();
    Ok(())
}

/// The open-loop send times of one connection: its share of the total rate, offset so that
/// the connections' sends interleave evenly.
struct Schedule {
    first: Instant,
    interval: Duration,
    sent: u32,
}

impl Schedule {
    fn new(total_rate: f64, index: usize, connections: usize, start: Instant) -> Self {
        let interval = Duration::from_secs_f64(connections as f64 / total_rate.max(1e-3));
        let offset = interval.mul_f64(index as f64 / connections as f64);
        Self {
            first: start + offset,
            interval,
            sent: 0,
        }
    }

    fn next(&mut self) -> Instant {
        let at = self.first + self.interval * self.sent;
        self.sent += 1;
        at
    }
}

async fn drive(
    mut conn: Conn,
    requests: Arc<[Vec<u8>]>,
    index: usize,
    stride: usize,
    deadline: Instant,
    mut schedule: Option<Schedule>,
    sent: Arc<AtomicU64>,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::new();
    let mut next = index % requests.len();
    loop {
        let begin = match schedule.as_mut() {
            None => Instant::now(),
            Some(schedule) => {
                let intended = schedule.next();
                if intended >= deadline {
                    break;
                }
                if Instant::now() < intended {
                    // Idle connection: wait, then count from the actual send.
                    tokio::time::sleep_until(intended.into()).await;
                    Instant::now()
                } else {
                    // Busy past the intended time: the wait is part of the latency.
                    intended
                }
            }
        };
        if begin >= deadline {
            break;
        }
        let response = conn.send(&requests[next]).await?;
        tally.record(response.status, response.body, begin.elapsed());
        sent.fetch_add(1, Ordering::Relaxed);
        next = (next + stride) % requests.len();
    }
    Ok(tally)
}

async fn tick(bar: indicatif::ProgressBar, sent: Arc<AtomicU64>, start: Instant) {
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    loop {
        interval.tick().await;
        let elapsed = start.elapsed();
        let count = sent.load(Ordering::Relaxed);
        bar.set_position(u64::try_from(elapsed.as_millis() / 100).unwrap_or(u64::MAX));
        bar.set_message(format!(
            "{count} requests, {:.0}/s",
            count as f64 / elapsed.as_secs_f64().max(1e-3)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_schedules_interleave_connections_at_the_total_rate() {
        let start = Instant::now();
        let mut a = Schedule::new(1000.0, 0, 4, start);
        let mut b = Schedule::new(1000.0, 1, 4, start);
        assert_eq!(a.next(), start);
        assert_eq!(a.next() - start, Duration::from_millis(4));
        assert_eq!(b.next() - start, Duration::from_millis(1));
    }

    #[test]
    fn tallies_keep_errors_apart_from_latencies() {
        let mut tally = Tally::new();
        tally.record(200, b"", Duration::from_micros(100));
        tally.record(401, b"nope", Duration::from_micros(5));
        let mut other = Tally::new();
        other.record(200, b"", Duration::from_micros(300));
        tally.merge(other);
        assert_eq!((tally.ok, tally.errors), (2, 1));
        assert_eq!(tally.first_error.as_deref(), Some("401 nope"));
        assert_eq!(tally.latency.len(), 2);
        assert!(tally.latency.max() >= 299_000);
    }
}
