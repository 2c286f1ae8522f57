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

use tokio_util::task::TaskTracker;

use crate::domain::VisiblePresence;
use crate::domain::{SessionId, UserId};
use crate::engine::PresenceEngine;
use crate::http::AppState;
use crate::http::dto::UserPresence;
use crate::http::error::ApiError;
use hub::{Connection, Outgoing, Seen, current_views};
use protocol::{PresenceUpdate, ServerMessage, SnapshotEntry};

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
        state: &AppState,
        user: UserId,
        session: SessionId,
    ) -> Result<Self, ApiError> {
        state.engine.open_socket(user, session).await?;
        Ok(Self {
            engine: state.engine.clone(),
            connections: state.connections.clone(),
            open: Some((user, session)),
            grace: state.settings.disconnect_grace,
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

/// Per-connection delivery state: what was last sent about each watched user. It turns the
/// hub's filtered values into wire messages and enforces two rules: nothing older than what the
/// client already has is sent (e.g. an update queued before a snapshot), and nothing that looks
/// the same to this viewer is sent again, so the timing of a hidden transition (an invisible
/// user going online, say) does not leak. `seq` reaches the client only where `last_seen` does,
/// since it encodes the transition's time.
#[derive(Debug, Default)]
pub struct Delivered {
    last: HashMap<UserId, (u64, VisiblePresence)>,
    high_water: u64,
}

impl Delivered {
    /// The wire form of a drained item, or `None` if it must not be sent.
    pub fn admit(&mut self, item: Outgoing) -> Option<ServerMessage> {
        match item {
            Outgoing::Message(message) => Some(message),
            Outgoing::Presence(seen) => {
                if !self.record(&seen) {
                    return None;
                }
                let update = PresenceUpdate {
                    user_id: seen.owner.0,
                    online_status: seen.visible.status,
                    last_seen: seen.visible.last_seen,
                    last_seen_approx: seen.visible.last_seen_approx,
                    seq: self.expose(&seen),
                };
                Some(ServerMessage::Presence(update))
            }
            Outgoing::Snapshot(entries) => {
                let users = entries
                    .into_iter()
                    .map(|(seen, username)| {
                        // An event newer than the snapshot's read may already have been sent:
                        // then the snapshot repeats that, never older state.
                        let seen = self.newest(seen);
                        SnapshotEntry {
                            seq: self.expose(&seen),
                            presence: UserPresence::from_visible(
                                seen.owner,
                                username,
                                seen.visible,
                            ),
                        }
                    })
                    .collect();
                Some(ServerMessage::Snapshot { users })
            }
        }
    }

    /// Records `seen`; `false` if it is older than, or looks the same as, what was sent.
    fn record(&mut self, seen: &Seen) -> bool {
        match self.last.get_mut(&seen.owner) {
            Some((seq, visible)) => {
                if seen.seq < *seq || seen.visible == *visible {
                    *seq = (*seq).max(seen.seq);
                    return false;
                }
                *seq = seen.seq;
                *visible = seen.visible;
                true
            }
            None => {
                self.last.insert(seen.owner, (seen.seq, seen.visible));
                true
            }
        }
    }

    /// `seen`, or what was already sent about its owner if that is newer; recorded either way.
    fn newest(&mut self, seen: Seen) -> Seen {
        match self.last.get(&seen.owner) {
            Some(&(seq, visible)) if seq > seen.seq => Seen {
                visible,
                seq,
                ..seen
            },
            _ => {
                self.record(&seen);
                seen
            }
        }
    }

    /// Forgets what was sent about users no longer watched.
    pub fn forget(&mut self, users: &[UserId]) {
        for user in users {
            self.last.remove(user);
        }
    }

    fn expose(&mut self, seen: &Seen) -> Option<u64> {
        let exposed = seen.seq_visible.then_some(seen.seq);
        self.high_water = self.high_water.max(exposed.unwrap_or(0));
        exposed
    }

    /// Highest `seq` sent to the client so far (the SSE event id).
    pub fn high_water(&self) -> u64 {
        self.high_water
    }
}

/// Subscribes `connection` to `ids` and queues the snapshot answering it. A user whose `seq`
/// is visible to the viewer and not above `known(user)` is left out (the client is up to
/// date); where `seq` is hidden the entry is always sent, so `since` cannot be used to probe a
/// hidden `last_seen`. Unknown ids are not subscribed and are reported in an error frame.
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
    let names: HashMap<UserId, String> = records.into_iter().map(|r| (r.id, r.username)).collect();
    let existing: Vec<UserId> = names.keys().copied().collect();
    let unknown: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| !names.contains_key(&UserId(*id)))
        .collect();
    // Privacy data first, so no event is filtered against data not yet loaded.
    let viewer = connection.outbox().viewer();
    let mut load = existing.clone();
    load.push(viewer.id);
    state.privacy.ensure_loaded(&load).await?;
    if let Err(error) = connection.subscribe(&existing) {
        connection.send(ServerMessage::error("limit_exceeded", error.to_string()));
        return Ok(());
    }
    if !unknown.is_empty() {
        let detail = format!("unknown user ids: {unknown:?}");
        connection.send(ServerMessage::error("not_found", detail));
    }
    // Subscribed before reading state, so no transition can fall between the two; updates
    // arriving meanwhile are held back until the snapshot is queued.
    let views = match current_views(&existing, &state.engine, state.store.as_ref()).await {
        Ok(views) => views,
        Err(error) => {
            connection.finish_snapshot(&existing, None);
            return Err(ApiError::Internal(error));
        }
    };
    let mut entries: Vec<(Seen, String)> = views
        .into_iter()
        .map(|(owner, view)| state.hub.present(viewer, owner, view))
        .filter(|seen| {
            !(seen.seq_visible && known(seen.owner.0).is_some_and(|have| have >= seen.seq))
        })
        .filter_map(|seen| names.get(&seen.owner).cloned().map(|name| (seen, name)))
        .collect();
    entries.sort_by_key(|(seen, _)| seen.owner);
    connection.finish_snapshot(&existing, Some(entries));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PresenceStatus;
    use crate::domain::VisiblePresence;

    fn seen(owner: i64, status: PresenceStatus, seq: u64) -> Seen {
        Seen {
            owner: UserId(owner),
            visible: VisiblePresence {
                status: Some(status),
                last_seen: None,
                last_seen_approx: None,
            },
            seq,
            seq_visible: true,
        }
    }

    fn status_of(message: &ServerMessage) -> Option<PresenceStatus> {
        match message {
            ServerMessage::Presence(update) => update.online_status,
            ServerMessage::Snapshot { users } => users[0].presence.online_status,
            _ => None,
        }
    }

    #[test]
    fn older_and_unchanged_updates_are_not_sent() {
        let mut delivered = Delivered::default();
        let online = Outgoing::Presence(seen(1, PresenceStatus::Online, 5));
        assert!(delivered.admit(online).is_some());
        let older = Outgoing::Presence(seen(1, PresenceStatus::Offline, 4));
        assert!(delivered.admit(older).is_none(), "older than what was sent");
        let same = Outgoing::Presence(seen(1, PresenceStatus::Online, 6));
        assert!(
            delivered.admit(same).is_none(),
            "looks the same to the viewer"
        );
        let offline = Outgoing::Presence(seen(1, PresenceStatus::Offline, 7));
        assert!(delivered.admit(offline).is_some());
        assert_eq!(delivered.high_water(), 7);
    }

    #[test]
    fn a_snapshot_never_goes_back_behind_an_event_already_sent() {
        let mut delivered = Delivered::default();
        let newer = Outgoing::Presence(seen(1, PresenceStatus::Offline, 9));
        delivered.admit(newer);
        let stale = Outgoing::Snapshot(vec![(seen(1, PresenceStatus::Online, 8), "a".into())]);
        let sent = delivered.admit(stale).unwrap();
        assert_eq!(status_of(&sent), Some(PresenceStatus::Offline));
    }
}
