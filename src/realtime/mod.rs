//! Real-time push: the fan-out [`hub::Hub`], per-connection outboxes, the message [`protocol`],
//! the WebSocket session loop ([`socket`]) and the SSE event stream ([`stream`]).
//!
//! This layer is given a narrow context, [`Realtime`]: the hub, the engine, the presence reader,
//! the privacy and auth services and its own timing settings. It knows nothing about HTTP; the
//! axum handlers that upgrade a request to a socket or a stream live with the other handlers
//! and hand the connection over to [`socket::serve`] or [`stream::open`]. What is here is what
//! both transports share: snapshots (with the same visibility rule as pushed events), the
//! delivery record, and [`LiveSession`], which makes an open connection a live presence session.

mod delivered;
pub mod hub;
mod outbox;
pub mod protocol;
pub mod socket;
pub mod stream;

use std::collections::HashMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::domain::{SessionId, SessionRef, UserId};
use crate::engine::{EngineError, PresenceEngine};
use crate::presence::{PresenceReader, ReadError};
use crate::privacy::{Privacy, PrivacyError};
pub use delivered::Delivered;
use hub::{Connection, Hub, HubError};
pub use outbox::CloseReason;
use outbox::Seen;
use protocol::ServerMessage;

/// Waits until `deadline` (a session's token expiry), or forever without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Timing and limits of sockets and streams (from the settings).
#[derive(Debug, Clone, Copy)]
pub struct RealtimeConfig {
    /// How long a closed connection's session survives a reconnect.
    pub disconnect_grace: Duration,
    /// Period of server pings; a socket silent for a whole period is closed.
    pub ping_interval: Duration,
    /// Typing messages a socket may send per second.
    pub typing_per_second: u32,
}

/// What the push layer works with. Cheap to clone: every field is a handle.
#[derive(Clone)]
pub struct Realtime {
    /// The fan-out to open connections.
    pub hub: Hub,
    /// Presence state (connections hold sessions live in it).
    pub engine: PresenceEngine,
    /// Current presence for snapshots and re-sends.
    pub reader: PresenceReader,
    /// What each viewer may see; loaded before anything is filtered.
    pub privacy: Privacy,
    /// Validates a browser socket's `auth` message.
    pub auth: Authenticator,
    /// Socket tasks and session closes; shutdown waits for them before the final flush.
    pub connections: TaskTracker,
    /// Cancelled when the server shuts down; connections close on it.
    pub shutdown: CancellationToken,
    /// Timing and limits.
    pub config: RealtimeConfig,
}

/// Why a push operation failed. Sockets report it in an error frame and stay open; an SSE
/// request gets it as its HTTP error.
#[derive(Debug, thiserror::Error)]
pub enum RealtimeError {
    /// Presence could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Privacy data could not be loaded.
    #[error(transparent)]
    Privacy(#[from] PrivacyError),
    /// The presence backend failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A per-connection or per-user limit was reached.
    #[error(transparent)]
    Limit(#[from] HubError),
}

impl RealtimeError {
    /// The code of the error frame that reports this failure.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Limit(HubError::NodeFull(_)) => "service_unavailable",
            Self::Limit(_) => "limit_exceeded",
            Self::Engine(_) => "presence_unavailable",
            Self::Read(_) | Self::Privacy(_) => "service_unavailable",
        }
    }
}

/// An open connection counted as a live session. Closing it (or dropping it, on any other exit
/// path) starts the session's reconnect grace. The close runs on the server's connection
/// tracker, so shutdown waits for it before the final presence flush.
pub struct LiveSession {
    engine: PresenceEngine,
    connections: TaskTracker,
    /// `None` once closed.
    open: Option<(UserId, SessionId)>,
    grace: Duration,
}

impl LiveSession {
    /// Marks `session` as held open by a connection.
    ///
    /// # Errors
    /// If the presence backend is unavailable.
    pub async fn open(
        realtime: &Realtime,
        user: UserId,
        session: SessionRef,
    ) -> Result<Self, RealtimeError> {
        realtime.engine.open_socket(user, session).await?;
        Ok(Self {
            engine: realtime.engine.clone(),
            connections: realtime.connections.clone(),
            open: Some((user, session.id)),
            grace: realtime.config.disconnect_grace,
        })
    }

    /// Ends the connection's hold on the session now.
    pub async fn close(mut self) {
        if let Some((user, session)) = self.open.take() {
            close_socket(&self.engine, user, session, self.grace).await;
        }
    }
}

async fn close_socket(engine: &PresenceEngine, user: UserId, session: SessionId, grace: Duration) {
    if let Err(error) = engine.close_socket(user, session, grace).await {
        tracing::warn!(%error, "could not end a socket's session");
    }
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        if let Some((user, session)) = self.open.take() {
            // Drop cannot await; the close is a quick in-memory update on a tracked task.
            let (engine, grace) = (self.engine.clone(), self.grace);
            self.connections
                .spawn(async move { close_socket(&engine, user, session, grace).await });
        }
    }
}

/// Subscribes `connection` to `ids` and queues the snapshot answering it. A user whose `seq`
/// is visible to the viewer and not above `known(user)` is left out (the client is up to
/// date); where `seq` is hidden the entry is always sent, so `since` cannot be used to probe a
/// hidden `last_seen`. Unknown ids are not subscribed and are reported in an error frame; so is
/// a subscription over the limit.
///
/// # Errors
/// Storage, privacy or engine failures.
pub async fn subscribe(
    realtime: &Realtime,
    connection: &mut Connection,
    ids: &[i64],
    known: impl Fn(i64) -> Option<u64>,
) -> Result<(), RealtimeError> {
    let mut seen_ids = std::collections::HashSet::with_capacity(ids.len());
    let wanted: Vec<UserId> = ids
        .iter()
        .copied()
        .map(UserId)
        .filter(|id| seen_ids.insert(*id))
        .collect();
    // Privacy data first, so no event is filtered against data not yet loaded.
    let viewer = connection.outbox().viewer();
    let mut load = wanted.clone();
    load.push(viewer.id);
    realtime.privacy.ensure_loaded(&load).await?;
    // Only users that exist are subscribed.
    let names: HashMap<UserId, String> = realtime
        .reader
        .named(&wanted)
        .await?
        .into_iter()
        .map(|known| (known.id, known.username))
        .collect();
    let existing: Vec<UserId> = wanted
        .iter()
        .copied()
        .filter(|id| names.contains_key(id))
        .collect();
    let unknown: Vec<i64> = wanted
        .iter()
        .filter(|id| !names.contains_key(id))
        .map(|id| id.0)
        .collect();
    match connection.subscribe(&existing) {
        Ok(_) => {}
        // The node is full: a stream answers 503 rather than opening without its users.
        Err(error @ HubError::NodeFull(_)) => return Err(error.into()),
        Err(error) => {
            connection.send(ServerMessage::error("limit_exceeded", error.to_string()));
            return Ok(());
        }
    }
    if !unknown.is_empty() {
        let detail = format!("unknown user ids: {unknown:?}");
        connection.send(ServerMessage::error("not_found", detail));
    }
    // Subscribed before reading state, so no transition can fall between the two; updates
    // arriving meanwhile are held back until the snapshot is queued.
    let views = match realtime.reader.views(&existing).await {
        Ok(views) => views,
        Err(error) => {
            connection.finish_snapshot(&existing, names, None);
            return Err(error.into());
        }
    };
    let mut entries: Vec<(Seen, String)> = views
        .into_iter()
        .map(|(owner, view)| realtime.hub.present(viewer, owner, &view))
        .filter(|seen| {
            !(seen.seq_visible && known(seen.owner.0).is_some_and(|have| have >= seen.seq))
        })
        .filter_map(|seen| names.get(&seen.owner).cloned().map(|name| (seen, name)))
        .collect();
    entries.sort_by_key(|(seen, _)| seen.owner);
    connection.finish_snapshot(&existing, names, Some(entries));
    Ok(())
}

#[cfg(test)]
pub(crate) mod testing {
    //! A push context over an in-memory database, for tests of this layer.

    use std::sync::Arc;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::hub::{Hub, Limits};
    use super::{Realtime, RealtimeConfig};
    use crate::auth::{Authenticator, Session, TokenHash};
    use crate::bus::Bus;
    use crate::domain::Username;
    use crate::engine::PresenceEngine;
    use crate::engine::local::LocalBackend;
    use crate::presence::PresenceReader;
    use crate::privacy::Privacy;
    use crate::store::{self, Store};

    /// A context whose sockets ping every `ping_interval`, and its store.
    pub async fn realtime(ping_interval: Duration) -> (Realtime, Arc<dyn Store>) {
        let store = store::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        let engine =
            PresenceEngine::new(Arc::new(LocalBackend::new(Duration::from_secs(300), None)));
        let privacy = Privacy::new(store.clone(), false, Bus::local());
        let limits = Limits {
            max_subscriptions: 100,
            max_connections_per_user: 4,
            send_queue: 64,
            max_node_connections: 1000,
            max_node_subscriptions: 10_000,
        };
        let realtime = Realtime {
            hub: Hub::new(limits, privacy.clone(), Bus::local()),
            engine: engine.clone(),
            reader: PresenceReader::new(engine, store.clone()),
            privacy,
            auth: Authenticator::new(store.clone(), 10, Bus::local()).unwrap(),
            connections: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            config: RealtimeConfig {
                disconnect_grace: Duration::from_secs(10),
                ping_interval,
                typing_per_second: 5,
            },
        };
        (realtime, store)
    }

    /// A user `name` with a session whose bearer token is `token`.
    pub async fn user(store: &dyn Store, name: &str, token: &str) -> Session {
        let user = store
            .create_user(&Username::parse(name).unwrap(), "unused", false)
            .await
            .unwrap();
        let hash = TokenHash::of(token);
        let session_id = store
            .create_session(user.id, hash.as_bytes(), chrono::Utc::now())
            .await
            .unwrap();
        Session {
            session_id,
            user_id: user.id,
            username: name.to_owned(),
            is_admin: false,
            platform: crate::domain::Platform::Web,
            valid_until: None,
        }
    }
}
