//! The bounded send queue of one connection.
//!
//! Producers (the hub's fan-out) never block: presence updates of one user are coalesced (only
//! the newest is kept), other messages queue up to a limit, and a queue that overflows closes
//! its connection as a slow consumer ([`CLOSE_SLOW_CONSUMER`]). The connection's loop waits on
//! [`Outbox::ready`] and drains everything at once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use tokio::sync::Notify;

use super::protocol::{CLOSE_SLOW_CONSUMER, ServerMessage};
use crate::domain::{SessionId, UserId, Viewer, VisiblePresence};
use crate::shards::lock;

/// How and why the server closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    /// WebSocket close code (see `protocol`).
    pub code: u16,
    /// Human-readable reason.
    pub reason: &'static str,
}

/// An owner's presence as filtered for one connection's viewer, with the owner's raw `seq`
/// (used for ordering and deduplication; exposed to the client only where `last_seen` is).
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    /// Whose presence.
    pub owner: UserId,
    /// What the viewer may see.
    pub visible: VisiblePresence,
    /// The owner's raw sequence number.
    pub seq: u64,
    /// Whether the viewer may see `seq`: it encodes the transition's time, so only where the
    /// viewer sees the owner's real `last_seen`.
    pub seq_visible: bool,
}

/// What a connection has to send, in order. Presence is still in its filtered, internal form;
/// the connection turns it into wire messages (see `realtime::Delivered`).
#[derive(Debug)]
pub enum Outgoing {
    /// A ready wire message (typing, error).
    Message(ServerMessage),
    /// The newest visible presence of one owner.
    Presence(Seen),
    /// The answer to a subscribe: each owner with their username.
    Snapshot(Vec<(Seen, String)>),
    /// The usernames of newly watched users, for their later updates (not sent by itself).
    Names(HashMap<UserId, String>),
}

#[derive(Debug)]
enum Pending {
    Item(Outgoing),
    /// The newest update of this user is in `OutboxState::presence`.
    Presence(UserId),
}

#[derive(Debug, Default)]
struct OutboxState {
    queue: VecDeque<Pending>,
    presence: HashMap<UserId, Seen>,
    /// Users just subscribed whose snapshot is not queued yet: their updates wait in
    /// `presence` and are queued after the snapshot, so a client never gets an update of a
    /// user before that user's snapshot.
    awaiting_snapshot: HashSet<UserId>,
    closed: Option<CloseReason>,
}

/// The bounded send queue of one connection. Producers (the hub) never block.
#[derive(Debug)]
pub struct Outbox {
    /// Who watches through this connection.
    pub(super) viewer: Viewer,
    /// The viewer's session (its connections close on logout).
    pub(super) session: SessionId,
    /// Users this connection watches (mirrors its entries in the hub's index).
    pub(super) watching: Mutex<HashSet<UserId>>,
    /// Queue and close flag; locked only for a push or a drain.
    state: Mutex<OutboxState>,
    /// Signalled after every push and on close; stores a permit if nobody waits.
    ready: Notify,
    /// Queue length at which the connection is closed.
    limit: usize,
}

impl Outbox {
    /// An empty outbox of `viewer`'s `session` that closes the connection at `limit` queued
    /// messages.
    pub(super) fn new(viewer: Viewer, session: SessionId, limit: usize) -> Self {
        Self {
            viewer,
            session,
            watching: Mutex::default(),
            state: Mutex::default(),
            ready: Notify::new(),
            limit,
        }
    }

    /// Holds back updates of `users` until their snapshot is queued ([`Outbox::finish_snapshot`]).
    pub(super) fn await_snapshot(&self, users: &[UserId]) {
        lock(&self.state)
            .awaiting_snapshot
            .extend(users.iter().copied());
    }

    /// Who this connection belongs to.
    pub fn viewer(&self) -> Viewer {
        self.viewer
    }

    pub(super) fn push(&self, item: Outgoing) {
        self.enqueue(|state| {
            state.queue.push_back(Pending::Item(item));
            true
        });
    }

    pub(super) fn push_presence(&self, seen: Seen) {
        self.enqueue(|state| {
            let owner = seen.owner;
            if state.awaiting_snapshot.contains(&owner) {
                let newest = state.presence.get(&owner).is_none_or(|p| seen.seq >= p.seq);
                if newest {
                    state.presence.insert(owner, seen);
                }
                return false;
            }
            match state.presence.get_mut(&owner) {
                // Events can reach the hub slightly out of order; keep the newest. An equal
                // seq is a re-filtered value (a privacy change) and replaces the pending one.
                Some(pending) => {
                    if seen.seq >= pending.seq {
                        *pending = seen;
                    }
                    metrics::counter!("lastseen_push_coalesced_total").increment(1);
                    false
                }
                None => {
                    state.presence.insert(owner, seen);
                    state.queue.push_back(Pending::Presence(owner));
                    true
                }
            }
        });
    }

    fn enqueue(&self, add: impl FnOnce(&mut OutboxState) -> bool) {
        {
            let mut state = lock(&self.state);
            if state.closed.is_some() {
                return;
            }
            if state.queue.len() >= self.limit {
                state.closed = Some(CloseReason {
                    code: CLOSE_SLOW_CONSUMER,
                    reason: "slow consumer: send queue full",
                });
                state.queue.clear();
                state.presence.clear();
                metrics::counter!("lastseen_slow_consumers_closed_total").increment(1);
            } else if !add(&mut state) {
                return;
            }
        }
        self.ready.notify_one();
    }

    /// Queues the snapshot answering the subscription of `users` (or nothing, if it failed),
    /// then the updates of those users that arrived while it was being built.
    pub(super) fn finish_snapshot(
        &self,
        users: &[UserId],
        names: HashMap<UserId, String>,
        snapshot: Option<Vec<(Seen, String)>>,
    ) {
        self.enqueue(|state| {
            if !names.is_empty() {
                state.queue.push_back(Pending::Item(Outgoing::Names(names)));
            }
            if let Some(entries) = snapshot {
                state
                    .queue
                    .push_back(Pending::Item(Outgoing::Snapshot(entries)));
            }
            for user in users {
                if state.awaiting_snapshot.remove(user) && state.presence.contains_key(user) {
                    state.queue.push_back(Pending::Presence(*user));
                }
            }
            true
        });
    }

    /// Asks the connection to close with `reason` (drops what is still queued).
    pub fn close(&self, reason: CloseReason) {
        {
            let mut state = lock(&self.state);
            if state.closed.is_none() {
                state.closed = Some(reason);
            }
        }
        self.ready.notify_one();
    }

    /// Waits until something is queued or the connection must close.
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Takes everything queued, in order, and the close request if there is one.
    pub fn drain(&self) -> (Vec<Outgoing>, Option<CloseReason>) {
        let mut state = lock(&self.state);
        let queue = std::mem::take(&mut state.queue);
        let mut items = Vec::with_capacity(queue.len());
        for item in queue {
            match item {
                Pending::Item(item) => items.push(item),
                Pending::Presence(owner) => {
                    if let Some(seen) = state.presence.remove(&owner) {
                        items.push(Outgoing::Presence(seen));
                    }
                }
            }
        }
        (items, state.closed)
    }

    pub(super) fn watched(&self) -> Vec<UserId> {
        lock(&self.watching).iter().copied().collect()
    }
}
