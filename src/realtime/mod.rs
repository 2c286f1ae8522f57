//! Real-time push: WebSocket (`ws`) and SSE (`sse`) connections, the fan-out [`hub::Hub`] and
//! the message [`protocol`].
//!
//! Both transports share what is here: building snapshots (with the same visibility rule as
//! pushed events) and [`LiveSession`], which makes an open connection a live presence session.

pub mod hub;
pub mod protocol;
pub mod sse;
pub mod ws;

use std::collections::HashMap;
use std::time::Duration;

use crate::domain::{PresenceStatus, SessionId, UserId};
use crate::engine::{PresenceEngine, PresenceView};
use crate::http::AppState;
use crate::http::dto::UserPresence;
use crate::http::error::ApiError;
use hub::Connection;
use protocol::{ServerMessage, SnapshotEntry};

/// An open connection counted as a live session; when dropped (on every exit path), the
/// session's reconnect grace starts.
pub struct LiveSession {
    engine: PresenceEngine,
    user: UserId,
    session: SessionId,
    grace: Duration,
}

impl LiveSession {
    /// Marks `session` as held open by a connection.
    ///
    /// # Errors
    /// If the presence backend is unavailable.
    pub async fn open(
        state: &AppState,
        user: UserId,
        session: SessionId,
    ) -> Result<Self, ApiError> {
        state.engine.open_socket(user, session).await?;
        Ok(Self {
            engine: state.engine.clone(),
            user,
            session,
            grace: state.settings.disconnect_grace,
        })
    }
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        let (engine, user, session, grace) =
            (self.engine.clone(), self.user, self.session, self.grace);
        // Drop cannot await; the close is a quick in-memory update.
        tokio::spawn(async move {
            if let Err(error) = engine.close_socket(user, session, grace).await {
                tracing::warn!(%error, "could not end a socket's session");
            }
        });
    }
}

/// Per-connection delivery state: the last `seq` sent per user, so that nothing older than
/// what the client already has is ever sent (e.g. an update queued before a snapshot).
#[derive(Debug, Default)]
pub struct Delivered {
    seqs: HashMap<i64, u64>,
}

impl Delivered {
    /// Filters and records a drained message; `None` if it is stale.
    pub fn admit(&mut self, message: ServerMessage) -> Option<ServerMessage> {
        match message {
            ServerMessage::Presence(update) => {
                let last = self.seqs.entry(update.user_id).or_default();
                if update.seq <= *last {
                    return None;
                }
                *last = update.seq;
                Some(ServerMessage::Presence(update))
            }
            ServerMessage::Snapshot { users } => {
                for entry in &users {
                    let last = self.seqs.entry(entry.presence.id).or_default();
                    *last = (*last).max(entry.seq);
                }
                Some(ServerMessage::Snapshot { users })
            }
            other => Some(other),
        }
    }

    /// Highest `seq` delivered so far (the SSE event id).
    pub fn high_water(&self) -> u64 {
        self.seqs.values().copied().max().unwrap_or(0)
    }
}

/// Subscribes `connection` to `ids` and queues the snapshot answering it. Users whose current
/// `seq` is not above `known(user)` are left out of the snapshot (the client is up to date).
/// Unknown ids are not subscribed and are reported in an error frame.
///
/// # Errors
/// Storage or engine failures; a limit violation is reported as an error frame instead.
pub async fn subscribe(
    state: &AppState,
    connection: &mut Connection,
    ids: &[i64],
    known: impl Fn(i64) -> Option<u64>,
) -> Result<(), ApiError> {
    let wanted: Vec<UserId> = ids.iter().copied().map(UserId).collect();
    let records = state.store.users_by_ids(&wanted).await?;
    let existing: Vec<UserId> = records.iter().map(|r| r.id).collect();
    let unknown: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| !existing.contains(&UserId(*id)))
        .collect();
    if let Err(error) = connection.subscribe(&existing) {
        connection.send(ServerMessage::error("limit_exceeded", error.to_string()));
        return Ok(());
    }
    if !unknown.is_empty() {
        connection.send(ServerMessage::error(
            "not_found",
            format!("unknown user ids: {unknown:?}"),
        ));
    }
    // Subscribed before reading state, so no transition can fall between the two.
    let viewer = connection.outbox().viewer();
    let mut views = HashMap::with_capacity(records.len());
    for record in &records {
        if let Some(view) = state.engine.presence(record.id).await? {
            views.insert(record.id, view);
        }
    }
    // Users the engine holds nothing for are offline, and the store is current for them; read
    // them again, as they may have gone offline since the first read.
    let evicted: Vec<UserId> = existing
        .iter()
        .copied()
        .filter(|id| !views.contains_key(id))
        .collect();
    let records: Vec<_> = records
        .into_iter()
        .filter(|r| views.contains_key(&r.id))
        .chain(state.store.users_by_ids(&evicted).await?)
        .collect();
    let mut users = Vec::with_capacity(records.len());
    for record in &records {
        let view = views.get(&record.id).copied().unwrap_or(PresenceView {
            status: PresenceStatus::Offline,
            last_seen: record.last_seen,
            seq: record.presence_seq,
        });
        if known(record.id.0).is_some_and(|have| have >= view.seq) {
            continue;
        }
        if let Some(update) = state.hub.present(viewer, record.id, view) {
            users.push(SnapshotEntry {
                presence: UserPresence {
                    id: record.id.0,
                    username: record.username.clone(),
                    online_status: update.online_status,
                    last_seen: update.last_seen,
                    is_online: update.online_status.is_online(),
                },
                seq: update.seq,
            });
        }
    }
    users.sort_by_key(|entry| entry.presence.id);
    connection.send(ServerMessage::Snapshot { users });
    Ok(())
}
