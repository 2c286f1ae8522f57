//! Redis memory per online session: `INFO memory` of a Redis server before and after bringing
//! N sessions (one per user) online through the Redis presence backend, the same scripts a
//! `lastseen serve --redis-url` node runs.
//!
//! `cargo run --release --example redis_memory -- [SESSIONS] [REDIS_URL]`
//! (defaults: 1,000,000 and `redis://127.0.0.1:6379/15`). The keys live under a fresh prefix
//! (keys `{<prefix>:<group>}:…` and `<prefix>:…`) and are deleted at the end; the Redis server should otherwise be idle, since `used_memory`
//! is server-wide.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lastseen::domain::{Activity, SessionId, SessionRef, UserId};
use lastseen::engine::PresenceBackend;
use lastseen::engine::redis::{RedisBackend, RedisTiming};
use tokio_util::sync::CancellationToken;

/// Touches in flight at once (the backend pipelines them over its connection).
const IN_FLIGHT: usize = 512;

async fn used_memory(connection: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(connection)
        .await
        .expect("INFO memory");
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|value| value.trim().parse().ok())
        .expect("INFO memory has used_memory")
}

async fn delete_prefix(connection: &mut redis::aio::MultiplexedConnection, prefix: &str) -> u64 {
    let mut cursor = 0_u64;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("*{prefix}*"))
            .arg("COUNT")
            .arg(10_000)
            .query_async(connection)
            .await
            .expect("SCAN");
        if !keys.is_empty() {
            let removed: u64 = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(connection)
                .await
                .expect("UNLINK");
            deleted += removed;
        }
        if next == 0 {
            return deleted;
        }
        cursor = next;
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let sessions: i64 = args
        .next()
        .map_or(Ok(1_000_000), |a| a.parse())
        .expect("SESSIONS must be a number");
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/15".into());
    let prefix = format!("lastseen-memory-{:08x}:", rand::random::<u32>());

    let client = redis::Client::open(url.as_str()).expect("a Redis URL");
    let mut info = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis reachable");
    let timing = RedisTiming {
        timeout: Duration::from_secs(300),
        idle_after: Some(Duration::from_secs(600)),
        grace: Duration::from_secs(10),
        lease: Duration::from_secs(15),
    };
    let shutdown = CancellationToken::new();
    let backend = RedisBackend::connect(&url, &prefix, timing, shutdown.clone())
        .await
        .expect("the Redis backend connects");
    // One session first, so keys created once (script cache, counters) are not counted.
    backend
        .touch(
            UserId(sessions),
            SessionRef::web(SessionId(sessions)),
            Activity::Keepalive,
        )
        .await
        .expect("a first touch");
    let before = used_memory(&mut info).await;

    let started = Instant::now();
    futures_util::stream::iter(0..sessions)
        .map(|i| {
            let backend = &backend;
            async move {
                backend
                    .touch(
                        UserId(i),
                        SessionRef::web(SessionId(i)),
                        Activity::Keepalive,
                    )
                    .await
                    .expect("touch");
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<()>()
        .await;
    let took = started.elapsed();
    let after = used_memory(&mut info).await;
    let online = backend.online_count().await.expect("online count");

    let per_session = after.saturating_sub(before) as f64 / sessions.max(1) as f64;
    println!("sessions online      {}", online.saturating_sub(1));
    println!(
        "touches              {sessions} in {:.1} s ({:.0}/s, {IN_FLIGHT} in flight)",
        took.as_secs_f64(),
        sessions as f64 / took.as_secs_f64()
    );
    println!(
        "used_memory          {:.1} MiB -> {:.1} MiB",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    println!("bytes per session    {per_session:.0}");
    shutdown.cancel();
    let deleted = delete_prefix(&mut info, &prefix).await;
    println!("cleaned up           {deleted} keys under {prefix}");
}
