//! The Redis deployment that the nodes of a multi-node lastseen share: standalone Redis
//! (`redis://`, `rediss://`) or Redis Cluster (`redis-cluster://HOST:PORT[,HOST:PORT...]`).
//!
//! This module owns the connections and the key layout, nothing about presence: a command
//! connection with short timeouts (a Redis outage makes a request fail within about a second,
//! it never hangs), and [`Feed`], a dedicated subscriber that delivers the messages of a few
//! pub/sub channels and says when it had to reconnect (messages may have been lost then).
//!
//! Keys live in a fixed number of *slot groups*: every key of group `g` carries the hash tag
//! `{PREFIX:g}`, so a server-side script that touches one user's keys runs unchanged on Redis
//! Cluster (all its keys hash to one slot). Pub/sub channels carry no tag: a classic `PUBLISH`
//! reaches the subscribers of every node of a cluster, so one subscription to any node hears
//! them all.

mod feed;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

pub use feed::{Feed, FeedItem};

/// Slot groups: hash tags that spread keys (and script load) over a cluster's masters. A power
/// of two; changing it changes every key, so it is fixed.
pub const GROUPS: u16 = 16;

/// How long a command may take before it counts as failed (Redis unreachable or frozen).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Why Redis could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `redis_url` is not one this server understands.
    #[error("unsupported redis_url: {0}")]
    BadUrl(String),
    /// Redis refused, failed or did not answer in time.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer within the command timeout.
    #[error("redis did not answer in time")]
    Timeout,
}

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One server (`redis://` or `rediss://`, with its database number if any).
    Standalone(String),
    /// A Redis Cluster, given by seed nodes (`redis://HOST:PORT` each).
    Cluster(Vec<String>),
}

impl Target {
    /// Parses `redis_url`.
    ///
    /// # Errors
    /// [`ClusterError::BadUrl`] for any other scheme or an empty seed list. The error never
    /// repeats the URL (it may hold a password).
    pub fn parse(url: &str) -> Result<Self, ClusterError> {
        let lower = url.to_ascii_lowercase();
        if let Some(seeds) = lower
            .starts_with("redis-cluster://")
            .then(|| &url["redis-cluster://".len()..])
        {
            let nodes: Vec<String> = seeds
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|node| format!("redis://{node}"))
                .collect();
            if nodes.is_empty() {
                return Err(ClusterError::BadUrl(
                    "redis-cluster:// needs at least one HOST:PORT".into(),
                ));
            }
            return Ok(Self::Cluster(nodes));
        }
        if lower.starts_with("redis://") || lower.starts_with("rediss://") {
            return Ok(Self::Standalone(url.to_owned()));
        }
        Err(ClusterError::BadUrl(
            "use redis://HOST:PORT, rediss://HOST:PORT or redis-cluster://HOST:PORT[,HOST:PORT...]"
                .into(),
        ))
    }

    /// The URLs a dedicated subscriber may connect to, in order of preference.
    fn subscribe_urls(&self) -> Vec<String> {
        match self {
            Self::Standalone(url) => vec![url.clone()],
            Self::Cluster(nodes) => nodes.clone(),
        }
    }
}

/// The command connection: one multiplexed connection to a server, or a cluster connection
/// that routes each command by its keys' slot.
#[derive(Clone)]
pub enum Conn {
    /// Standalone Redis; reconnects by itself.
    Single(ConnectionManager),
    /// Redis Cluster; follows the cluster's topology by itself.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// The shared Redis: a command connection, the target, and the key prefix. Cheap to clone.
#[derive(Clone)]
pub struct Redis {
    conn: Conn,
    target: Arc<Target>,
    prefix: Arc<str>,
}

impl Redis {
    /// Connects to `url`; every key and channel starts with `prefix`.
    ///
    /// # Errors
    /// A bad URL, or Redis unreachable.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, ClusterError> {
        let target = Target::parse(url)?;
        let conn = match &target {
            Target::Standalone(url) => {
                let client = redis::Client::open(url.as_str())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(COMMAND_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(100))
                    .set_max_delay(Duration::from_millis(200));
                let manager = tokio::time::timeout(
                    COMMAND_TIMEOUT * 3,
                    ConnectionManager::new_with_config(client, config),
                )
                .await
                .map_err(|_| ClusterError::Timeout)??;
                Conn::Single(manager)
            }
            Target::Cluster(nodes) => {
                let client = ClusterClientBuilder::new(nodes.clone())
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(COMMAND_TIMEOUT)
                    .build()?;
                let conn = tokio::time::timeout(COMMAND_TIMEOUT * 3, client.get_async_connection())
                    .await
                    .map_err(|_| ClusterError::Timeout)??;
                Conn::Cluster(conn)
            }
        };
        Ok(Self {
            conn,
            target: Arc::new(target),
            prefix: prefix.into(),
        })
    }

    /// A handle on the command connection (cheap; all handles share it).
    pub fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// Runs one command or pipeline with the command timeout as a safety net.
    ///
    /// # Errors
    /// Redis's error, or [`ClusterError::Timeout`].
    pub async fn run<T, F>(&self, f: impl FnOnce(Conn) -> F) -> Result<T, ClusterError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(COMMAND_TIMEOUT * 2, f(self.conn())).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(ClusterError::Timeout),
        }
    }

    /// Key `name` of slot group `group`: `PREFIX:{PREFIX:group}:name`... shortened to
    /// `{PREFIX:group}:name`, the hash tag being the whole group part.
    pub fn key(&self, group: u16, name: &str) -> String {
        format!("{{{}:{group}}}:{name}", self.prefix)
    }

    /// A key outside the slot groups (global bookkeeping: node ids, the restore marker).
    pub fn global_key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// Pub/sub channel `name`.
    pub fn channel(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// Publishes `payload` on channel `name` (every node's feed receives it).
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn publish(&self, name: &str, payload: &str) -> Result<(), ClusterError> {
        let channel = self.channel(name);
        self.run(|mut conn| async move {
            redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(payload)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    /// Whether Redis answers a `PING` (readiness).
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn ping(&self) -> Result<(), ClusterError> {
        self.run(|mut conn| async move { redis::cmd("PING").query_async::<()>(&mut conn).await })
            .await
    }

    /// The slot group of a user id.
    pub fn group_of(user: i64) -> u16 {
        // `rem_euclid` keeps negative ids (never issued, but typed as i64) in range.
        u16::try_from(user.rem_euclid(i64::from(GROUPS))).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_apart_and_errors_never_repeat_them() {
        assert_eq!(
            Target::parse("redis://:secret@127.0.0.1:6379/3").unwrap(),
            Target::Standalone("redis://:secret@127.0.0.1:6379/3".into())
        );
        assert!(matches!(
            Target::parse("rediss://cache.internal:6380").unwrap(),
            Target::Standalone(_)
        ));
        assert_eq!(
            Target::parse("redis-cluster://10.0.0.1:7000, 10.0.0.2:7000").unwrap(),
            Target::Cluster(vec![
                "redis://10.0.0.1:7000".into(),
                "redis://10.0.0.2:7000".into()
            ])
        );
        for bad in ["http://x:1", "redis-cluster://", "secret-password"] {
            let error = Target::parse(bad).unwrap_err().to_string();
            assert!(
                !error.contains("secret-password") && !error.contains("x:1"),
                "{error}"
            );
        }
    }

    #[test]
    fn groups_cover_every_id() {
        let groups: std::collections::BTreeSet<u16> = (0..64).map(Redis::group_of).collect();
        assert_eq!(groups.len(), usize::from(GROUPS));
        assert_eq!(Redis::group_of(-1), GROUPS - 1);
    }
}
