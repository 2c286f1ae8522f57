//! [`Feed`]: a dedicated pub/sub subscriber that survives Redis restarts and failovers.
//!
//! It subscribes to a fixed set of channels on the standalone server (or on any reachable node
//! of a cluster: classic pub/sub is broadcast to every node) and republishes what arrives on an
//! in-process channel. A subscription can be lost without an error (a connection dropped or a
//! node replaced), so the feed also publishes a watchdog message every few seconds and
//! reconnects when it has heard nothing for a while. Every (re)subscription is announced with
//! [`FeedItem::Resubscribed`]: messages published while it was away are lost, so consumers
//! re-read the state they mirror.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Redis;

/// The feed's own channel, published to by every node so a quiet feed can tell it is alive.
const WATCHDOG: &str = "watchdog";
/// How often this node publishes on the watchdog channel.
const WATCHDOG_EVERY: Duration = Duration::from_secs(2);
/// Silence after which the subscription is presumed lost and redone.
const SILENCE_LIMIT: Duration = Duration::from_secs(6);
/// Capacity of the in-process channel; a consumer further behind sees `Lagged`.
const CAPACITY: usize = 65_536;

/// Something the feed delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedItem {
    /// A message on one of the subscribed channels (its name without the prefix).
    Message {
        /// Channel name as given to [`Feed::start`].
        channel: &'static str,
        /// The message.
        payload: String,
    },
    /// The feed (re)subscribed: anything published before may have been missed.
    Resubscribed,
}

/// A running subscriber. Cheap to clone.
#[derive(Clone)]
pub struct Feed {
    items: broadcast::Sender<FeedItem>,
    /// How many times the feed has subscribed so far.
    subscriptions: watch::Receiver<u64>,
}

impl Feed {
    /// Starts subscribing to `channels` (names without the prefix) until `shutdown`.
    pub fn start(redis: Redis, channels: &[&'static str], shutdown: CancellationToken) -> Self {
        let items = broadcast::channel(CAPACITY).0;
        let (subscribed, subscriptions) = watch::channel(0);
        let feed = Self {
            items: items.clone(),
            subscriptions,
        };
        tokio::spawn(run(redis, channels.to_vec(), items, subscribed, shutdown));
        feed
    }

    /// How many times the feed has subscribed so far (more than once: it had to resubscribe).
    pub fn subscriptions(&self) -> u64 {
        *self.subscriptions.borrow()
    }

    /// Waits (at most `within`) until the feed has subscribed once; `false` if it has not.
    pub async fn subscribed(&self, within: Duration) -> bool {
        let mut subscriptions = self.subscriptions.clone();
        tokio::time::timeout(within, subscriptions.wait_for(|n| *n > 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// A receiver of everything from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<FeedItem> {
        self.items.subscribe()
    }
}

async fn run(
    redis: Redis,
    channels: Vec<&'static str>,
    items: broadcast::Sender<FeedItem>,
    subscribed: watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 0_usize;
    loop {
        let urls = redis.target.subscribe_urls();
        let url = &urls[attempt % urls.len()];
        attempt += 1;
        let connected = tokio::select! {
            () = shutdown.cancelled() => return,
            connected = subscribe(&redis, url, &channels) => connected,
        };
        match connected {
            Ok(pubsub) => {
                backoff = Duration::from_millis(100);
                metrics::counter!("lastseen_redis_feed_subscriptions_total").increment(1);
                subscribed.send_modify(|n| *n += 1);
                let _ = items.send(FeedItem::Resubscribed);
                listen(&redis, pubsub, &channels, &items, &shutdown).await;
                if shutdown.is_cancelled() {
                    return;
                }
                tracing::warn!("lost the Redis subscription; resubscribing");
            }
            Err(error) => {
                tracing::warn!(%error, "cannot subscribe to Redis; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn subscribe(
    redis: &Redis,
    url: &str,
    channels: &[&'static str],
) -> Result<redis::aio::PubSub, super::ClusterError> {
    let client = redis::Client::open(url)?;
    let connect = async {
        let mut pubsub = client.get_async_pubsub().await?;
        for channel in channels.iter().chain([&WATCHDOG]) {
            pubsub.subscribe(redis.channel(channel)).await?;
        }
        Ok::<_, redis::RedisError>(pubsub)
    };
    tokio::time::timeout(super::COMMAND_TIMEOUT * 2, connect)
        .await
        .map_err(|_| super::ClusterError::Timeout)?
        .map_err(Into::into)
}

/// Delivers messages until the subscription ends, falls silent, or `shutdown`.
async fn listen(
    redis: &Redis,
    pubsub: redis::aio::PubSub,
    channels: &[&'static str],
    items: &broadcast::Sender<FeedItem>,
    shutdown: &CancellationToken,
) {
    let names: Vec<(String, &'static str)> = channels
        .iter()
        .map(|name| (redis.channel(name), *name))
        .collect();
    let mut stream = pubsub.into_on_message();
    let mut heard = Instant::now();
    let mut watchdog = tokio::time::interval(WATCHDOG_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            message = stream.next() => {
                let Some(message) = message else { return };
                heard = Instant::now();
                let channel_name = message.get_channel_name();
                let Some((_, channel)) = names.iter().find(|(full, _)| full == channel_name) else {
                    continue;
                };
                match message.get_payload::<String>() {
                    Ok(payload) => {
                        let _ = items.send(FeedItem::Message { channel, payload });
                    }
                    Err(error) => tracing::warn!(%error, "unreadable message on {channel_name}"),
                }
            }
            _ = watchdog.tick() => {
                if heard.elapsed() > SILENCE_LIMIT {
                    return;
                }
                // Failure is fine: the silence check notices a lost Redis.
                let _ = redis.publish(WATCHDOG, "ping").await;
            }
        }
    }
}
