//! Throttling of guessable and floodable operations: failed logins per username and per client
//! address, registrations and socket/stream opens per client address.
//!
//! Counting uses fixed windows: a key's counter starts at its first hit and lasts one window. In
//! memory the counters are sharded by the key's hash (one short lock per hit, no global lock);
//! with Redis (`redis_url`) they are one key each under the node's prefix, `INCR` + `PEXPIRE`
//! on the first hit, so every node of a cluster counts together. If Redis cannot be reached the
//! request is let through (logged): throttling must not take logins down with it.
//! What it does not own: which operations count and what an over-limit answer looks like
//! (the HTTP handlers decide both).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::Redis;
use crate::domain::Rate;
use crate::shards::{self, ShardKey, Sharded};

const SHARDS: usize = 64;
/// Keys a shard holds before expired windows are swept out of it.
const SWEEP_AT: usize = 4096;

/// A counter's key: what is counted and for whom (`login-user:alice`, `register:10.0.0.1`).
struct Key<'a>(&'a str);

impl ShardKey for Key<'_> {
    fn shard_hash(&self) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.0.hash(&mut hasher);
        hasher.finish()
    }
}

/// One key's window: when it ends and how many hits it has.
#[derive(Debug, Clone, Copy)]
struct Window {
    ends: Instant,
    hits: u32,
}

/// Where counters live.
#[derive(Clone)]
enum Counters {
    Local(std::sync::Arc<Sharded<Mutex<HashMap<String, Window>>>>),
    Redis(Redis),
}

/// Counts hits per key and window. Cheap to clone.
#[derive(Clone)]
pub struct Throttle {
    counters: Counters,
}

impl Throttle {
    /// Counters in this process.
    pub fn local() -> Self {
        let shards = Sharded::new(SHARDS, || Mutex::new(HashMap::new()));
        Self {
            counters: Counters::Local(std::sync::Arc::new(shards)),
        }
    }

    /// Counters shared by every node through `redis`.
    pub fn redis(redis: Redis) -> Self {
        Self {
            counters: Counters::Redis(redis),
        }
    }

    /// If `key` already has `rate.limit` hits in its window, how long until the window ends.
    pub async fn over(&self, key: &str, rate: Rate) -> Option<Duration> {
        let (hits, left) = self.peek(key).await?;
        (hits >= rate.limit).then_some(left)
    }

    /// Counts one hit for `key`; if that exceeds `rate`, how long until the window ends.
    pub async fn hit(&self, key: &str, rate: Rate) -> Option<Duration> {
        let (hits, left) = match &self.counters {
            Counters::Local(shards) => local_hit(shards, key, rate.window),
            Counters::Redis(redis) => redis_hit(redis, key, rate.window).await?,
        };
        (hits > rate.limit).then_some(left)
    }

    /// Hits so far in `key`'s current window and the time left in it.
    async fn peek(&self, key: &str) -> Option<(u32, Duration)> {
        match &self.counters {
            Counters::Local(shards) => {
                let now = Instant::now();
                let shard = shards::lock(shards.get(&Key(key)));
                let window = shard.get(key).filter(|w| w.ends > now)?;
                Some((window.hits, window.ends - now))
            }
            Counters::Redis(redis) => {
                let key = redis.global_key(&format!("throttle:{key}"));
                let read = redis
                    .run(|mut conn| async move {
                        redis::pipe()
                            .get(&key)
                            .pttl(&key)
                            .query_async::<(Option<u32>, i64)>(&mut conn)
                            .await
                    })
                    .await;
                match read {
                    Ok((Some(hits), ttl)) => Some((hits, millis(ttl))),
                    Ok((None, _)) => None,
                    Err(error) => {
                        tracing::warn!(%error, "throttle counters unreachable; not throttling");
                        None
                    }
                }
            }
        }
    }
}

fn millis(ttl: i64) -> Duration {
    Duration::from_millis(u64::try_from(ttl).unwrap_or(0))
}

fn local_hit(
    shards: &Sharded<Mutex<HashMap<String, Window>>>,
    key: &str,
    window: Duration,
) -> (u32, Duration) {
    let now = Instant::now();
    let mut shard = shards::lock(shards.get(&Key(key)));
    if shard.len() >= SWEEP_AT {
        shard.retain(|_, w| w.ends > now);
    }
    let entry = shard.entry(key.to_owned()).or_insert(Window {
        ends: now + window,
        hits: 0,
    });
    if entry.ends <= now {
        *entry = Window {
            ends: now + window,
            hits: 0,
        };
    }
    entry.hits = entry.hits.saturating_add(1);
    (entry.hits, entry.ends - now)
}

async fn redis_hit(redis: &Redis, key: &str, window: Duration) -> Option<(u32, Duration)> {
    let key = redis.global_key(&format!("throttle:{key}"));
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    let counted = redis
        .run(|mut conn| async move {
            // NX: only the first hit of a window sets its expiry.
            redis::pipe()
                .incr(&key, 1)
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(window_ms)
                .arg("NX")
                .ignore()
                .pttl(&key)
                .query_async::<(u32, i64)>(&mut conn)
                .await
        })
        .await;
    match counted {
        Ok((hits, ttl)) => Some((hits, millis(ttl))),
        Err(error) => {
            tracing::warn!(%error, "throttle counters unreachable; not throttling");
            None
        }
    }
}
