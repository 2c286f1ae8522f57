//! Fan-out of presence and typing to open sockets and SSE streams.
//!
//! The hub keeps a subscription index (watched user -> outboxes of the connections watching
//! them), sharded by watched user, so an event costs work in proportion to its subscribers, not
//! to all connections. Each connection has an [`Outbox`]: a bounded queue in which presence
//! updates of one user are coalesced (only the newest is kept), so a slow reader never makes
//! the server buffer without bound; one whose queue still overflows is closed with
//! [`CLOSE_SLOW_CONSUMER`]. The hub does not talk to sockets itself: connection loops drain
//! their outbox. What a viewer may see of an event is decided by [`Hub::present`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use super::protocol::{
    CLOSE_SLOW_CONSUMER, CLOSE_UNAUTHORIZED, PresenceUpdate, ServerMessage, TYPING_TTL_MS,
};
use crate::domain::{SessionId, UserId};
use crate::engine::{PresenceEngine, PresenceEvent, PresenceView};
use crate::store::Store;

/// Shards of the subscription index; a power of two.
const SHARDS: usize = 64;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a few collection operations that leave the data
    // consistent, so a poisoned lock is safe to keep using.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Limits enforced per connection and per user.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Users one connection may watch.
    pub max_subscriptions: usize,
    /// Open connections (sockets and SSE streams) per user.
    pub max_connections_per_user: usize,
    /// Queued messages per connection before it is closed as a slow consumer.
    pub send_queue: usize,
}

/// Why a connection could not be opened or a subscription added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// The user already has the maximum number of open connections.
    #[error("too many open connections for this user (limit {0})")]
    TooManyConnections(usize),
    /// The subscription would exceed the per-connection limit.
    #[error("a connection may watch at most {0} users")]
    TooManySubscriptions(usize),
}

/// How and why the server closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    /// WebSocket close code (see `protocol`).
    pub code: u16,
    /// Human-readable reason.
    pub reason: &'static str,
}

#[derive(Debug)]
enum Pending {
    Message(ServerMessage),
    /// The newest update of this user is in `OutboxState::presence`.
    Presence(UserId),
}

#[derive(Debug, Default)]
struct OutboxState {
    queue: VecDeque<Pending>,
    presence: HashMap<UserId, PresenceUpdate>,
    closed: Option<CloseReason>,
}

/// The bounded send queue of one connection. Producers (the hub) never block.
#[derive(Debug)]
pub struct Outbox {
    /// The watching user.
    viewer: UserId,
    /// The watching user's session (closed on logout).
    session: SessionId,
    /// Queue and close flag; locked only for a push or a drain.
    state: Mutex<OutboxState>,
    /// Signalled after every push and on close; stores a permit if nobody waits.
    ready: Notify,
    /// Queue length at which the connection is closed.
    limit: usize,
}

impl Outbox {
    /// The user this connection belongs to.
    pub fn viewer(&self) -> UserId {
        self.viewer
    }

    fn push(&self, message: ServerMessage) {
        self.enqueue(|state| {
            state.queue.push_back(Pending::Message(message));
            true
        });
    }

    fn push_presence(&self, update: PresenceUpdate) {
        self.enqueue(|state| {
            let user = UserId(update.user_id);
            let fresh = state.presence.insert(user, update).is_none();
            if fresh {
                state.queue.push_back(Pending::Presence(user));
            } else {
                metrics::counter!("lastseen_push_coalesced_total").increment(1);
            }
            fresh
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
    pub fn drain(&self) -> (Vec<ServerMessage>, Option<CloseReason>) {
        let mut state = lock(&self.state);
        let queue = std::mem::take(&mut state.queue);
        let mut messages = Vec::with_capacity(queue.len());
        for item in queue {
            match item {
                Pending::Message(message) => messages.push(message),
                Pending::Presence(user) => {
                    if let Some(update) = state.presence.remove(&user) {
                        messages.push(ServerMessage::Presence(update));
                    }
                }
            }
        }
        (messages, state.closed)
    }
}

#[derive(Default)]
struct Registry {
    per_user: HashMap<UserId, usize>,
    per_session: HashMap<SessionId, Vec<Arc<Outbox>>>,
}

/// Watched user -> outboxes of the connections watching them.
type Watchers = HashMap<UserId, Vec<Arc<Outbox>>>;

struct HubInner {
    /// One map per shard; the shard is chosen by the watched user's id.
    watchers: Box<[Mutex<Watchers>]>,
    /// Open connections by user (for the limit) and by session (to close them on logout).
    registry: Mutex<Registry>,
    limits: Limits,
    next_id: AtomicU64,
}

/// Cheap, cloneable handle to the fan-out hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl Hub {
    /// An empty hub enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            inner: Arc::new(HubInner {
                watchers: (0..SHARDS).map(|_| Mutex::default()).collect(),
                registry: Mutex::default(),
                limits,
                next_id: AtomicU64::new(1),
            }),
        }
    }

    fn shard(&self, user: UserId) -> MutexGuard<'_, Watchers> {
        let index = (user.0 as u64 as usize) & (SHARDS - 1);
        lock(&self.inner.watchers[index])
    }

    /// Registers a new connection of `viewer`'s `session`.
    ///
    /// # Errors
    /// [`HubError::TooManyConnections`] when the user is at the limit.
    pub fn connect(&self, viewer: UserId, session: SessionId) -> Result<Connection, HubError> {
        let limits = self.inner.limits;
        let outbox = Arc::new(Outbox {
            viewer,
            session,
            state: Mutex::default(),
            ready: Notify::new(),
            limit: limits.send_queue,
        });
        {
            let mut registry = lock(&self.inner.registry);
            let count = registry.per_user.entry(viewer).or_default();
            if *count >= limits.max_connections_per_user {
                return Err(HubError::TooManyConnections(
                    limits.max_connections_per_user,
                ));
            }
            *count += 1;
            registry
                .per_session
                .entry(session)
                .or_default()
                .push(outbox.clone());
        }
        metrics::gauge!("lastseen_open_connections").increment(1.0);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        Ok(Connection {
            hub: self.clone(),
            id,
            outbox,
            subscriptions: HashSet::new(),
        })
    }

    /// What `viewer` may see of `owner`'s presence: the single place where visibility is
    /// decided for pushed events (every user sees every other's presence, as in the seed).
    pub fn present(
        &self,
        _viewer: UserId,
        owner: UserId,
        view: PresenceView,
    ) -> Option<PresenceUpdate> {
        Some(PresenceUpdate {
            user_id: owner.0,
            online_status: view.status,
            last_seen: view.last_seen,
            seq: view.seq,
        })
    }

    fn outboxes_watching(&self, user: UserId) -> Vec<Arc<Outbox>> {
        self.shard(user).get(&user).cloned().unwrap_or_default()
    }

    /// Delivers a transition to every connection watching its user.
    pub fn publish(&self, event: &PresenceEvent) {
        let view = PresenceView {
            status: event.status,
            last_seen: Some(event.last_seen),
            seq: event.seq,
        };
        let outboxes = self.outboxes_watching(event.user_id);
        for outbox in &outboxes {
            if let Some(update) = self.present(outbox.viewer, event.user_id, view) {
                outbox.push_presence(update);
            }
        }
        metrics::counter!("lastseen_push_events_total").increment(outboxes.len() as u64);
    }

    /// Delivers "`from` is typing" to `to`'s connections that watch `from`; returns how many.
    pub fn typing(&self, from: UserId, to: UserId) -> usize {
        let outboxes = self.outboxes_watching(from);
        let mut delivered = 0;
        for outbox in outboxes.iter().filter(|o| o.viewer == to) {
            outbox.push(ServerMessage::Typing {
                from: from.0,
                expires_in_ms: TYPING_TTL_MS,
            });
            delivered += 1;
        }
        delivered
    }

    /// Closes every connection of `session` (its token was revoked).
    pub fn close_session(&self, session: SessionId) {
        let outboxes = lock(&self.inner.registry)
            .per_session
            .get(&session)
            .cloned()
            .unwrap_or_default();
        for outbox in outboxes {
            outbox.close(CloseReason {
                code: CLOSE_UNAUTHORIZED,
                reason: "session revoked",
            });
        }
    }

    /// Forwards engine events to subscribers until `shutdown`. If this task falls behind the
    /// engine's channel, every watched user's current state is re-sent, so subscribers return
    /// to the true state instead of keeping a stale view.
    pub async fn run(
        self,
        mut events: broadcast::Receiver<PresenceEvent>,
        engine: PresenceEngine,
        store: Arc<dyn Store>,
        shutdown: CancellationToken,
    ) {
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => return,
                received = events.recv() => received,
            };
            match received {
                Ok(event) => self.publish(&event),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "push fan-out fell behind; resending current state");
                    if let Err(error) = self.resync(&engine, store.as_ref()).await {
                        tracing::error!(%error, "resync after lag failed");
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    async fn resync(&self, engine: &PresenceEngine, store: &dyn Store) -> anyhow::Result<()> {
        let watched: Vec<UserId> = self
            .inner
            .watchers
            .iter()
            .flat_map(|shard| lock(shard).keys().copied().collect::<Vec<_>>())
            .collect();
        let mut evicted = Vec::new();
        for &user in &watched {
            match engine.presence(user).await? {
                Some(view) => self.publish_view(user, view),
                None => evicted.push(user),
            }
        }
        for record in store.users_by_ids(&evicted).await? {
            let view = PresenceView {
                status: crate::domain::PresenceStatus::Offline,
                last_seen: record.last_seen,
                seq: record.presence_seq,
            };
            self.publish_view(record.id, view);
        }
        Ok(())
    }

    fn publish_view(&self, user: UserId, view: PresenceView) {
        for outbox in self.outboxes_watching(user) {
            if let Some(update) = self.present(outbox.viewer, user, view) {
                outbox.push_presence(update);
            }
        }
    }
}

/// One open socket or SSE stream: its outbox and subscriptions. Dropping it unregisters
/// everything.
pub struct Connection {
    hub: Hub,
    id: u64,
    outbox: Arc<Outbox>,
    subscriptions: HashSet<UserId>,
}

impl Connection {
    /// The connection's outbox, to drain.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Queues a message for this connection (e.g. a snapshot or an error frame).
    pub fn send(&self, message: ServerMessage) {
        self.outbox.push(message);
    }

    /// Starts watching `users` (all or none). Returns the ones not watched before.
    ///
    /// # Errors
    /// [`HubError::TooManySubscriptions`] if the limit would be exceeded.
    pub fn subscribe(&mut self, users: &[UserId]) -> Result<Vec<UserId>, HubError> {
        let new: Vec<UserId> = users
            .iter()
            .copied()
            .filter(|u| !self.subscriptions.contains(u))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let limit = self.hub.inner.limits.max_subscriptions;
        if self.subscriptions.len() + new.len() > limit {
            return Err(HubError::TooManySubscriptions(limit));
        }
        for &user in &new {
            self.hub
                .shard(user)
                .entry(user)
                .or_default()
                .push(self.outbox.clone());
            self.subscriptions.insert(user);
        }
        metrics::gauge!("lastseen_subscriptions").increment(new.len() as f64);
        Ok(new)
    }

    /// Stops watching `users`.
    pub fn unsubscribe(&mut self, users: &[UserId]) {
        for user in users {
            if self.subscriptions.remove(user) {
                self.remove_watcher(*user);
                metrics::gauge!("lastseen_subscriptions").decrement(1.0);
            }
        }
    }

    fn remove_watcher(&self, user: UserId) {
        let mut shard = self.hub.shard(user);
        if let Some(list) = shard.get_mut(&user) {
            list.retain(|o| !Arc::ptr_eq(o, &self.outbox));
            if list.is_empty() {
                shard.remove(&user);
            }
        }
    }

    /// A process-unique id, for logs.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        for user in std::mem::take(&mut self.subscriptions) {
            self.remove_watcher(user);
            metrics::gauge!("lastseen_subscriptions").decrement(1.0);
        }
        let mut registry = lock(&self.hub.inner.registry);
        let viewer = self.outbox.viewer;
        if let Some(count) = registry.per_user.get_mut(&viewer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                registry.per_user.remove(&viewer);
            }
        }
        let session = self.outbox.session;
        if let Some(list) = registry.per_session.get_mut(&session) {
            list.retain(|o| !Arc::ptr_eq(o, &self.outbox));
            if list.is_empty() {
                registry.per_session.remove(&session);
            }
        }
        metrics::gauge!("lastseen_open_connections").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PresenceStatus;
    use chrono::Utc;

    fn hub(send_queue: usize) -> Hub {
        Hub::new(Limits {
            max_subscriptions: 3,
            max_connections_per_user: 2,
            send_queue,
        })
    }

    fn event(user: i64, seq: u64) -> PresenceEvent {
        PresenceEvent {
            user_id: UserId(user),
            status: PresenceStatus::Online,
            last_seen: Utc::now(),
            seq,
        }
    }

    #[test]
    fn events_reach_only_the_subscribers_of_their_user() {
        let hub = hub(16);
        let mut a = hub.connect(UserId(1), SessionId(1)).unwrap();
        let b = hub.connect(UserId(2), SessionId(2)).unwrap();
        a.subscribe(&[UserId(9)]).unwrap();
        hub.publish(&event(9, 1));
        hub.publish(&event(8, 1));
        assert_eq!(a.outbox().drain().0.len(), 1);
        assert!(b.outbox().drain().0.is_empty());
        a.unsubscribe(&[UserId(9)]);
        hub.publish(&event(9, 2));
        assert!(a.outbox().drain().0.is_empty());
    }

    #[test]
    fn updates_of_one_user_are_coalesced_to_the_newest() {
        let hub = hub(16);
        let mut a = hub.connect(UserId(1), SessionId(1)).unwrap();
        a.subscribe(&[UserId(9), UserId(8)]).unwrap();
        for seq in 1..=100 {
            hub.publish(&event(9, seq));
        }
        hub.publish(&event(8, 1));
        let (messages, closed) = a.outbox().drain();
        assert_eq!(closed, None);
        assert_eq!(messages.len(), 2);
        assert!(
            matches!(&messages[0], ServerMessage::Presence(u) if u.seq == 100 && u.user_id == 9)
        );
    }

    #[test]
    fn an_overflowing_queue_closes_the_connection_as_a_slow_consumer() {
        let hub = hub(8);
        let mut a = hub.connect(UserId(1), SessionId(1)).unwrap();
        a.subscribe(&[UserId(9)]).unwrap();
        for _ in 0..20 {
            a.send(ServerMessage::error("invalid", "x"));
        }
        let (messages, closed) = a.outbox().drain();
        assert!(messages.is_empty(), "a closed outbox drops its backlog");
        assert_eq!(closed.map(|c| c.code), Some(CLOSE_SLOW_CONSUMER));
    }

    #[test]
    fn limits_are_enforced_and_released_on_drop() {
        let hub = hub(8);
        let first = hub.connect(UserId(1), SessionId(1)).unwrap();
        let mut second = hub.connect(UserId(1), SessionId(2)).unwrap();
        assert_eq!(
            hub.connect(UserId(1), SessionId(3)).err(),
            Some(HubError::TooManyConnections(2))
        );
        assert!(
            second
                .subscribe(&[UserId(5), UserId(6), UserId(7), UserId(8)])
                .is_err()
        );
        assert_eq!(
            second
                .subscribe(&[UserId(5), UserId(5), UserId(6)])
                .unwrap()
                .len(),
            2
        );
        drop(first);
        assert!(hub.connect(UserId(1), SessionId(3)).is_ok());
        drop(second);
        assert!(
            hub.shard(UserId(5)).is_empty(),
            "subscriptions removed with the connection"
        );
    }

    #[test]
    fn typing_reaches_only_the_recipients_connections_that_watch_the_sender() {
        let hub = hub(8);
        let mut recipient = hub.connect(UserId(2), SessionId(2)).unwrap();
        let mut bystander = hub.connect(UserId(3), SessionId(3)).unwrap();
        let not_watching = hub.connect(UserId(2), SessionId(4)).unwrap();
        recipient.subscribe(&[UserId(1)]).unwrap();
        bystander.subscribe(&[UserId(1)]).unwrap();
        assert_eq!(hub.typing(UserId(1), UserId(2)), 1);
        assert_eq!(recipient.outbox().drain().0.len(), 1);
        assert!(bystander.outbox().drain().0.is_empty());
        assert!(not_watching.outbox().drain().0.is_empty());
    }

    #[test]
    fn closing_a_session_closes_its_connections() {
        let hub = hub(8);
        let a = hub.connect(UserId(1), SessionId(1)).unwrap();
        let other = hub.connect(UserId(1), SessionId(2)).unwrap();
        hub.close_session(SessionId(1));
        assert_eq!(
            a.outbox().drain().1.map(|c| c.code),
            Some(CLOSE_UNAUTHORIZED)
        );
        assert_eq!(other.outbox().drain().1, None);
    }
}
