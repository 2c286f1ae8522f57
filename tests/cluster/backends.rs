//! Where an engine contract case runs: the in-process backend, or the Redis backend on the
//! machine's Redis (a unique key prefix per case), or on a private Redis Cluster.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lastseen::engine::PresenceEngine;
use lastseen::engine::local::LocalBackend;
use lastseen::engine::redis::{RedisBackend, RedisTiming};
use tokio_util::sync::CancellationToken;

use crate::contract::{GRACE, Harness, IDLE_AFTER, TIMEOUT};
use crate::redis_servers::skip;

/// The machine's Redis (or `LASTSEEN_TEST_REDIS_URL`).
pub fn machine_redis() -> String {
    std::env::var("LASTSEEN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A key prefix no other test run uses.
pub fn unique_prefix() -> String {
    format!("lstest{}x{:08x}", std::process::id(), rand::random::<u32>())
}

/// Runs `case` on the in-process backend.
pub async fn on_local<F, Fut>(case: F)
where
    F: FnOnce(Harness) -> Fut,
    Fut: Future<Output = ()>,
{
    let stop = CancellationToken::new();
    let engine = PresenceEngine::new(Arc::new(LocalBackend::new(TIMEOUT, Some(IDLE_AFTER))));
    let background = engine.clone();
    let token = stop.clone();
    tokio::spawn(async move { background.maintenance().run(token).await });
    case(Harness {
        engine,
        first_user: 1000,
    })
    .await;
    stop.cancel();
}

/// A Redis backend on `url` with key prefix `prefix` and its background work running, or `None`
/// when Redis cannot be reached (after [`skip`]).
pub async fn redis_engine(
    test: &str,
    url: &str,
    prefix: &str,
    stop: &CancellationToken,
) -> Option<PresenceEngine> {
    let timing = RedisTiming {
        timeout: TIMEOUT,
        idle_after: Some(IDLE_AFTER),
        grace: GRACE,
        lease: Duration::from_secs(1),
    };
    let backend = RedisBackend::connect(url, prefix, timing, stop.clone()).await;
    let backend = match backend {
        Ok(backend) => backend,
        Err(error) => {
            skip(test, &format!("Redis at {url} ({error})"));
            return None;
        }
    };
    assert!(
        backend.subscribed(Duration::from_secs(5)).await,
        "subscribed"
    );
    let engine = PresenceEngine::new(Arc::new(backend));
    let background = engine.clone();
    let token = stop.clone();
    tokio::spawn(async move { background.maintenance().run(token).await });
    Some(engine)
}

/// Runs `case` on the Redis backend at `url`.
pub async fn on_redis<F, Fut>(test: &str, url: &str, case: F)
where
    F: FnOnce(Harness) -> Fut,
    Fut: Future<Output = ()>,
{
    let stop = CancellationToken::new();
    let prefix = unique_prefix();
    let Some(engine) = redis_engine(test, url, &prefix, &stop).await else {
        return;
    };
    case(Harness {
        engine,
        first_user: 1000,
    })
    .await;
    stop.cancel();
    if !url.starts_with("redis-cluster://") {
        delete_keys(url, &prefix);
    }
}

/// Deletes the keys a test left in a shared standalone Redis.
pub fn delete_keys(url: &str, prefix: &str) {
    for pattern in [format!("{{{prefix}:*"), format!("{prefix}:*")] {
        let keys = std::process::Command::new("redis-cli")
            .args(["-u", url, "--scan", "--pattern", &pattern])
            .output();
        let Ok(keys) = keys else { return };
        let keys: Vec<String> = String::from_utf8_lossy(&keys.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        for chunk in keys.chunks(500) {
            let _ = std::process::Command::new("redis-cli")
                .args(["-u", url, "del"])
                .args(chunk)
                .output();
        }
    }
}
