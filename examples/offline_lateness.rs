//! Offline lateness against the real clock: N users (default 10,000) whose deadlines fall
//! within the same second, with the engine's own expiry task running. Prints how late each
//! offline event arrived after its user's deadline (last activity + inactivity timeout).
//!
//! `cargo run --release --example offline_lateness -- [USERS]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use lastseen::domain::{Activity, PresenceStatus, SessionId, SessionRef, UserId};
use lastseen::engine::local::LocalBackend;
use lastseen::engine::{Maintenance, PresenceBackend};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(2);
const BATCHES: usize = 10;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let users: usize = std::env::args()
        .nth(1)
        .map_or(Ok(10_000), |a| a.parse())
        .expect("USERS must be a number");
    let engine = Arc::new(LocalBackend::new(TIMEOUT, None));
    let stop = CancellationToken::new();
    let expiry = tokio::spawn({
        let (engine, stop) = (engine.clone(), stop.clone());
        async move { engine.run(stop).await }
    });
    // Receive concurrently, from before the first event, recording when each offline arrives.
    let mut events = engine.subscribe();
    let receiver = tokio::spawn(async move {
        let (mut offline, mut lagged) = (Vec::new(), 0);
        while offline.len() + lagged < users {
            match tokio::time::timeout(TIMEOUT * 3, events.recv()).await {
                Ok(Ok(e)) if e.status == PresenceStatus::Offline => {
                    offline.push((e.user_id.0, Instant::now()));
                }
                Ok(Ok(_)) => {}
                Ok(Err(RecvError::Lagged(n))) => lagged += usize::try_from(n).unwrap_or(0),
                Ok(Err(RecvError::Closed)) | Err(_) => break,
            }
        }
        (offline, lagged)
    });

    // Spread the users' last activity over one second, in batches 100 ms apart.
    let mut deadlines = vec![Instant::now(); users];
    for batch in 0..BATCHES {
        for id in (batch..users).step_by(BATCHES) {
            // Taken before the touch: the engine's deadline is at or after this one, so the
            // lateness below is, if anything, overstated.
            deadlines[id] = Instant::now() + TIMEOUT;
            let id = i64::try_from(id).expect("user index fits i64");
            engine
                .touch(
                    UserId(id),
                    SessionRef::web(SessionId(id)),
                    Activity::Keepalive,
                )
                .await
                .ok();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (offline, lagged) = receiver.await.expect("receiver task");
    stop.cancel();
    expiry.await.expect("expiry task");

    let mut lateness: Vec<Duration> = offline
        .iter()
        .map(|&(id, at)| at.saturating_duration_since(deadlines[usize::try_from(id).expect("id")]))
        .collect();
    lateness.sort();
    let pick = |q: f64| {
        lateness
            .get(((lateness.len() as f64 - 1.0) * q) as usize)
            .copied()
    };
    let early = offline
        .iter()
        .filter(|&&(id, at)| {
            at < deadlines[usize::try_from(id).expect("id")] - Duration::from_millis(1)
        })
        .count();
    println!("users: {users}, deadlines within 1 s, timeout {TIMEOUT:?}");
    println!(
        "offline events received: {}, missed by lagging: {lagged}",
        offline.len()
    );
    println!(
        "lateness after the deadline: p50 {:?}, p99 {:?}, max {:?}",
        pick(0.5).unwrap_or_default(),
        pick(0.99).unwrap_or_default(),
        lateness.last().copied().unwrap_or_default()
    );
    println!(
        "all within 1 s of their deadline: {}; emitted before their deadline: {early}",
        offline.len() == users
            && lateness
                .last()
                .is_some_and(|l| *l <= Duration::from_secs(1))
    );
}
