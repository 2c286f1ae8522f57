//! The bus: what one node tells the others about changes they cache or serve, so that every
//! node acts at once on a logout, a privacy change or a typing indicator made on another.
//!
//! A single node needs none of it ([`Bus::local`] delivers nothing: every effect is applied
//! where it happens). With Redis ([`Bus::redis`]) each message is published on one pub/sub
//! channel and every other node receives it through its [`Feed`]; a node skips its own
//! messages (it applied them already). When the feed had to resubscribe, messages may have been
//! lost, so the bus delivers [`BusMessage::Resync`] and the receivers refresh what they cache.

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::cluster::{ClusterError, Feed, FeedItem, Redis};
use crate::domain::{PrivacyChanged, SessionId, UserId};

/// The pub/sub channel of bus messages.
pub const CHANNEL: &str = "bus";
/// Key (per slot group) of the newest privacy data version of each user.
const PRIVACY_VERSIONS: &str = "pv";
/// Capacity of the in-process channel.
const CAPACITY: usize = 4096;

/// A change another node made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusMessage {
    /// A session was revoked: forget its token (by its SHA-256) and close its connections.
    Revoked {
        /// The session.
        session: SessionId,
        /// SHA-256 of its token.
        token_hash: [u8; 32],
    },
    /// A user's privacy data changed: reload it and re-filter what depends on it.
    Privacy(PrivacyChanged),
    /// `from` is typing to `to`: deliver to `to`'s local connections that watch `from`.
    Typing {
        /// The typing user.
        from: UserId,
        /// The recipient.
        to: UserId,
    },
    /// Messages may have been lost: refresh everything cached from other nodes' changes.
    Resync,
}

impl BusMessage {
    fn encode(&self, origin: u64) -> Option<String> {
        Some(match self {
            Self::Revoked {
                session,
                token_hash,
            } => format!("{origin} rv {} {}", session.0, hex::encode(token_hash)),
            Self::Privacy(change) => format!(
                "{origin} pc {} {}",
                change.user.0,
                u8::from(change.own_view_changed)
            ),
            Self::Typing { from, to } => format!("{origin} ty {} {}", from.0, to.0),
            Self::Resync => return None,
        })
    }

    /// The message and its origin, or `None` for anything malformed.
    fn decode(text: &str) -> Option<(u64, Self)> {
        let mut parts = text.split(' ');
        let origin = parts.next()?.parse().ok()?;
        let kind = parts.next()?;
        let a = parts.next()?;
        let b = parts.next()?;
        let message = match kind {
            "rv" => Self::Revoked {
                session: SessionId(a.parse().ok()?),
                token_hash: hex::decode(b).ok()?.try_into().ok()?,
            },
            "pc" => Self::Privacy(PrivacyChanged {
                user: UserId(a.parse().ok()?),
                own_view_changed: b == "1",
            }),
            "ty" => Self::Typing {
                from: UserId(a.parse().ok()?),
                to: UserId(b.parse().ok()?),
            },
            _ => return None,
        };
        Some((origin, message))
    }
}

/// The bus of this node. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where messages go: nowhere (one node), or Redis.
    redis: Option<Redis>,
    /// This process's id on the bus, to skip its own messages.
    origin: u64,
    /// Messages from other nodes (and `Resync`).
    received: broadcast::Sender<BusMessage>,
}

impl Bus {
    /// The bus of a single node: nothing to tell anyone.
    pub fn local() -> Self {
        Self {
            inner: Arc::new(Inner {
                redis: None,
                origin: 0,
                received: broadcast::channel(CAPACITY).0,
            }),
        }
    }

    /// The bus over Redis, receiving through `feed` until `shutdown`.
    pub fn redis(redis: Redis, feed: &Feed, shutdown: CancellationToken) -> Self {
        let bus = Self {
            inner: Arc::new(Inner {
                redis: Some(redis),
                origin: rand::random(),
                received: broadcast::channel(CAPACITY).0,
            }),
        };
        tokio::spawn(bus.clone().forward(feed.subscribe(), shutdown));
        bus
    }

    async fn forward(self, mut items: broadcast::Receiver<FeedItem>, shutdown: CancellationToken) {
        use broadcast::error::RecvError;
        loop {
            let item = tokio::select! {
                () = shutdown.cancelled() => return,
                item = items.recv() => item,
            };
            let message = match item {
                Ok(FeedItem::Message { channel, payload }) if channel == CHANNEL => {
                    match BusMessage::decode(&payload) {
                        Some((origin, _)) if origin == self.inner.origin => continue,
                        Some((_, message)) => message,
                        None => {
                            tracing::warn!(payload, "malformed bus message");
                            continue;
                        }
                    }
                }
                Ok(FeedItem::Message { .. }) => continue,
                Ok(FeedItem::Resubscribed) | Err(RecvError::Lagged(_)) => BusMessage::Resync,
                Err(RecvError::Closed) => return,
            };
            let _ = self.inner.received.send(message);
        }
    }

    /// Tells the other nodes. A single node has no one to tell.
    ///
    /// # Errors
    /// Redis unreachable (the other nodes then catch up when their feed resubscribes).
    pub async fn publish(&self, message: &BusMessage) -> Result<(), ClusterError> {
        let (Some(redis), Some(text)) = (&self.inner.redis, message.encode(self.inner.origin))
        else {
            return Ok(());
        };
        redis.publish(CHANNEL, &text).await
    }

    /// Records the version of `user`'s privacy data that a change just wrote, before the change
    /// is acknowledged, so another node can tell at once that its copy is older (the
    /// message that tells it so may still be on its way). A single node has no one to tell.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn set_privacy_version(
        &self,
        user: UserId,
        version: u64,
    ) -> Result<(), ClusterError> {
        let Some(redis) = &self.inner.redis else {
            return Ok(());
        };
        let key = redis.key(Redis::group_of(user.0), PRIVACY_VERSIONS);
        redis
            .run(|mut conn| async move {
                redis::cmd("HSET")
                    .arg(&key)
                    .arg(user.0)
                    .arg(version)
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await
    }

    /// The newest privacy data versions any node wrote for `users` (users without one are left
    /// out; a single node knows no other versions than its own).
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn privacy_versions(
        &self,
        users: &[UserId],
    ) -> Result<Vec<(UserId, u64)>, ClusterError> {
        let Some(redis) = &self.inner.redis else {
            return Ok(Vec::new());
        };
        let mut by_group: std::collections::HashMap<u16, Vec<UserId>> = Default::default();
        for &user in users {
            by_group
                .entry(Redis::group_of(user.0))
                .or_default()
                .push(user);
        }
        let calls = by_group.into_iter().map(|(group, ids)| {
            let key = redis.key(group, PRIVACY_VERSIONS);
            async move {
                let fields: Vec<i64> = ids.iter().map(|id| id.0).collect();
                let versions: Vec<Option<u64>> = redis
                    .run(|mut conn| async move {
                        redis::cmd("HMGET")
                            .arg(&key)
                            .arg(&fields)
                            .query_async(&mut conn)
                            .await
                    })
                    .await?;
                Ok::<_, ClusterError>(ids.into_iter().zip(versions).collect::<Vec<_>>())
            }
        });
        let mut found = Vec::new();
        for result in futures_util::future::join_all(calls).await {
            found.extend(result?.into_iter().filter_map(|(id, v)| Some((id, v?))));
        }
        Ok(found)
    }

    /// A receiver of what other nodes publish from now on (and `Resync`).
    pub fn subscribe(&self) -> broadcast::Receiver<BusMessage> {
        self.inner.received.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let messages = [
            BusMessage::Revoked {
                session: SessionId(42),
                token_hash: [7; 32],
            },
            BusMessage::Privacy(PrivacyChanged {
                user: UserId(3),
                own_view_changed: true,
            }),
            BusMessage::Typing {
                from: UserId(1),
                to: UserId(2),
            },
        ];
        for message in messages {
            let text = message.encode(99).unwrap();
            assert_eq!(BusMessage::decode(&text), Some((99, message)));
        }
        assert_eq!(BusMessage::Resync.encode(1), None);
        for garbage in [
            "",
            "1",
            "1 rv",
            "1 rv x y",
            "1 zz 1 2",
            "x ty 1 2",
            "1 rv 4 abcd",
        ] {
            assert_eq!(BusMessage::decode(garbage), None, "{garbage:?}");
        }
    }
}
