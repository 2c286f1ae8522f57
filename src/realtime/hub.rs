//! Fan-out of presence and typing to open sockets and SSE streams.
//!
//! The hub keeps a subscription index (watched user -> outboxes of the connections watching
//! them), sharded by watched user, so an event costs work in proportion to its subscribers, not
//! to all connections. Each connection has an [`Outbox`]: a bounded queue in which presence
//! updates of one user are coalesced (only the newest is kept), so a slow reader never makes
//! the server buffer without bound; one whose queue still overflows is closed with
//! [`CLOSE_SLOW_CONSUMER`]. The hub does not talk to sockets itself: connection loops drain
//! their outbox. What a viewer may see is decided by the privacy service, called from one place
//! ([`Hub::present`]) for events, snapshots and re-sends after privacy changes alike.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::RealtimeError;
use super::outbox::{CloseReason, Outbox, Outgoing, Seen};
use super::protocol::{CLOSE_UNAUTHORIZED, ServerMessage, TYPING_TTL_MS};
use crate::bus::{Bus, BusMessage};
use crate::domain::{PresenceEvent, PresenceView};
use crate::domain::{PrivacyChanged, Viewer};
use crate::domain::{SessionId, UserId};
use crate::presence::{PresenceReader, ReadError};
use crate::privacy::Privacy;
use crate::shards::{Sharded, lock};

/// Shards of the subscription index; a power of two.
const SHARDS: usize = 64;

/// Limits enforced per connection and per user.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Users one connection may watch.
    pub max_subscriptions: usize,
    /// Open connections (sockets and SSE streams) per user.
    pub max_connections_per_user: usize,
    /// Queued messages per connection before it is closed as a slow consumer.
    pub send_queue: usize,
    /// Open connections (sockets and SSE streams) on this node, all users together.
    pub max_node_connections: usize,
    /// Subscriptions (watched users summed over connections) on this node.
    pub max_node_subscriptions: usize,
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
    /// The node holds `max_node_connections` connections or `max_node_subscriptions`
    /// subscriptions already; another node (or a later retry) may take it.
    #[error("the server is at its capacity for {0}; retry later")]
    NodeFull(&'static str),
}

/// Counts a refusal at the node's capacity (`what`: connections or subscriptions).
fn refused(what: &'static str) {
    metrics::counter!("lastseen_capacity_refusals_total", "what" => what).increment(1);
}

/// Outboxes by key; an empty list is removed with its key.
type Outboxes<K> = HashMap<K, Vec<Arc<Outbox>>>;

/// Removes `outbox` from the list under `key`, and the key once its list is empty.
fn remove_from<K: std::hash::Hash + Eq>(map: &mut Outboxes<K>, key: K, outbox: &Arc<Outbox>) {
    if let Some(list) = map.get_mut(&key) {
        list.retain(|o| !Arc::ptr_eq(o, outbox));
        if list.is_empty() {
            map.remove(&key);
        }
    }
}

#[derive(Default)]
struct Registry {
    /// A user's open connections (for the limit, and to re-filter what they watch).
    per_user: Outboxes<UserId>,
    /// A session's open connections (closed on logout).
    per_session: Outboxes<SessionId>,
    /// Open connections of all users (against `max_node_connections`).
    open: usize,
}

struct HubInner {
    /// Watched user -> outboxes watching them; the shard is chosen by the watched user's id.
    watchers: Sharded<Mutex<Outboxes<UserId>>>,
    /// Open connections by user and by session.
    registry: Mutex<Registry>,
    /// Subscriptions on this node, against `limits.max_node_subscriptions` (changed with the
    /// watching set under its lock, so it never drifts).
    subscriptions: AtomicUsize,
    limits: Limits,
    /// Decides what each viewer may see.
    privacy: Privacy,
    /// Carries typing to other nodes and their typing here; says when to resync.
    bus: Bus,
}

/// Cheap, cloneable handle to the fan-out hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl Hub {
    /// An empty hub enforcing `limits` and filtering through `privacy`.
    pub fn new(limits: Limits, privacy: Privacy, bus: Bus) -> Self {
        Self {
            inner: Arc::new(HubInner {
                watchers: Sharded::new(SHARDS, Mutex::default),
                registry: Mutex::default(),
                subscriptions: AtomicUsize::new(0),
                limits,
                privacy,
                bus,
            }),
        }
    }

    fn shard(&self, user: UserId) -> MutexGuard<'_, Outboxes<UserId>> {
        lock(self.inner.watchers.get(&user))
    }

    /// Registers a new connection of `viewer`'s `session`.
    ///
    /// # Errors
    /// [`HubError::TooManyConnections`] when the user is at the limit,
    /// [`HubError::NodeFull`] when the node is.
    pub fn connect(&self, viewer: Viewer, session: SessionId) -> Result<Connection, HubError> {
        let limits = self.inner.limits;
        let outbox = Arc::new(Outbox::new(viewer, session, limits.send_queue));
        {
            let mut registry = lock(&self.inner.registry);
            if registry.open >= limits.max_node_connections {
                refused("connections");
                return Err(HubError::NodeFull("connections"));
            }
            let mine = registry.per_user.entry(viewer.id).or_default();
            if mine.len() >= limits.max_connections_per_user {
                return Err(HubError::TooManyConnections(
                    limits.max_connections_per_user,
                ));
            }
            mine.push(outbox.clone());
            registry.open += 1;
            registry
                .per_session
                .entry(session)
                .or_default()
                .push(outbox.clone());
        }
        metrics::gauge!("lastseen_open_connections").increment(1.0);
        Ok(Connection {
            hub: self.clone(),
            outbox,
        })
    }

    /// What `viewer` may see of `owner`'s raw presence: the single place where push decides
    /// visibility (events, snapshots and re-sends all come through here).
    pub fn present(&self, viewer: Viewer, owner: UserId, raw: &PresenceView) -> Seen {
        let privacy = &self.inner.privacy;
        let visible = privacy.filter(viewer, owner, raw);
        let sees_all = viewer.id == owner || viewer.is_admin;
        let masked = !sees_all && privacy.is_invisible(owner);
        // Exposed only when the viewer sees the owner's real last activity: not where it is
        // hidden, nor where invisible mode shows a frozen one.
        let seq_visible = !masked && visible.last_seen == raw.last_seen;
        Seen {
            owner,
            visible,
            seq: raw.seq,
            seq_visible,
        }
    }

    fn outboxes_watching(&self, user: UserId) -> Vec<Arc<Outbox>> {
        self.shard(user).get(&user).cloned().unwrap_or_default()
    }

    /// Delivers a transition to every connection watching its user.
    pub fn publish(&self, event: &PresenceEvent) {
        self.publish_view(event.user_id, &event.view());
    }

    fn publish_view(&self, user: UserId, view: &PresenceView) {
        let outboxes = self.outboxes_watching(user);
        for outbox in &outboxes {
            outbox.push_presence(self.present(outbox.viewer, user, view));
        }
        metrics::counter!("lastseen_push_events_total").increment(outboxes.len() as u64);
    }

    /// Delivers "`from` is typing" to `to`'s connections that watch `from` (here and, through
    /// the bus, on every other node), unless either blocked the other; returns how many
    /// connections of this node got it.
    pub async fn typing(&self, from: UserId, to: UserId) -> usize {
        // The recipient may watch from another node: this one may not have their data yet.
        // A failed load leaves it unloaded, which refuses the message (fail closed).
        if let Err(error) = self.inner.privacy.ensure_loaded(&[from, to]).await {
            tracing::debug!(%error, "privacy data for a typing message not loaded");
        }
        if !self.inner.privacy.typing_allowed(from, to) {
            return 0;
        }
        if let Err(error) = self
            .inner
            .bus
            .publish(&BusMessage::Typing { from, to })
            .await
        {
            tracing::debug!(%error, "typing not sent to the other nodes");
        }
        self.deliver_typing(from, to)
    }

    fn deliver_typing(&self, from: UserId, to: UserId) -> usize {
        let outboxes = self.outboxes_watching(from);
        let mut delivered = 0;
        for outbox in outboxes.iter().filter(|o| o.viewer.id == to) {
            outbox.push(Outgoing::Message(ServerMessage::Typing {
                from: from.0,
                expires_in_ms: TYPING_TTL_MS,
            }));
            delivered += 1;
        }
        delivered
    }

    /// What the bus brought from another node.
    async fn apply_bus(
        &self,
        message: BusMessage,
        reader: &PresenceReader,
    ) -> Result<(), RealtimeError> {
        match message {
            BusMessage::Typing { from, to } => {
                // The sender's node checked blocks with its data; check with ours too.
                if self.inner.privacy.typing_allowed(from, to) {
                    self.deliver_typing(from, to);
                }
                Ok(())
            }
            BusMessage::Resync => {
                tracing::info!("re-reading privacy data and presence after a feed interruption");
                self.inner.privacy.reload_all().await?;
                Ok(self.resend(&self.all_watched(), reader).await?)
            }
            // Revocations arrive through the authenticator; privacy changes through the
            // privacy service (once it has read the new data).
            BusMessage::Revoked { .. } | BusMessage::Privacy(_) => Ok(()),
        }
    }

    /// Closes every connection of `session` (its token was revoked).
    fn close_session(&self, session: SessionId) {
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

    /// Forwards engine events, privacy changes and revoked sessions to connections until
    /// `shutdown`.
    ///
    /// A privacy change of a user re-filters that user for their watchers and, when it changed
    /// what the user may see of others (reciprocity), everything the user's own connections
    /// watch; connections send only values that differ from what they sent before. If this
    /// task falls behind either channel, every watched user's current state is re-sent, so
    /// subscribers return to the true state instead of keeping a stale view. A revoked
    /// session's connections are closed (4401); if revocations were missed, every connection
    /// whose session no longer authenticates is closed.
    pub async fn run(
        self,
        mut events: broadcast::Receiver<PresenceEvent>,
        reader: PresenceReader,
        mut revocations: broadcast::Receiver<SessionId>,
        shutdown: CancellationToken,
    ) {
        use broadcast::error::RecvError;
        let mut changes = self.inner.privacy.subscribe();
        let mut bus = self.inner.bus.subscribe();
        loop {
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                received = events.recv() => match received {
                    Ok(event) => {
                        self.publish(&event);
                        Ok(())
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "push fan-out fell behind; re-sending current state");
                        self.resend(&self.all_watched(), &reader).await.map_err(Into::into)
                    }
                    Err(RecvError::Closed) => return,
                },
                changed = changes.recv() => match changed {
                    Ok(change) => self.privacy_changed(change, &reader).await.map_err(Into::into),
                    Err(RecvError::Lagged(_)) => {
                        self.resend(&self.all_watched(), &reader).await.map_err(Into::into)
                    }
                    Err(RecvError::Closed) => return,
                },
                message = bus.recv() => match message {
                    Ok(message) => self.apply_bus(message, &reader).await,
                    Err(RecvError::Lagged(_)) => self.apply_bus(BusMessage::Resync, &reader).await,
                    Err(RecvError::Closed) => return,
                },
                revoked = revocations.recv() => match revoked {
                    Ok(session) => {
                        self.close_session(session);
                        Ok(())
                    }
                    Err(RecvError::Lagged(missed)) => {
                        // Revocations are rare; this many at once means a bulk revocation.
                        tracing::warn!(missed, "missed session revocations; closing them is up to the next check");
                        Ok(())
                    }
                    Err(RecvError::Closed) => return,
                },
            };
            if let Err(error) = result {
                let error: RealtimeError = error;
                tracing::error!(%error, "re-sending presence failed");
            }
        }
    }

    async fn privacy_changed(
        &self,
        change: PrivacyChanged,
        reader: &PresenceReader,
    ) -> Result<(), ReadError> {
        self.resend(&[change.user], reader).await?;
        if change.own_view_changed {
            let mine = lock(&self.inner.registry)
                .per_user
                .get(&change.user)
                .cloned()
                .unwrap_or_default();
            for outbox in mine {
                for (owner, view) in reader.views(&outbox.watched()).await? {
                    outbox.push_presence(self.present(outbox.viewer, owner, &view));
                }
            }
        }
        Ok(())
    }

    fn all_watched(&self) -> Vec<UserId> {
        self.inner
            .watchers
            .all()
            .iter()
            .flat_map(|shard| lock(shard).keys().copied().collect::<Vec<_>>())
            .collect()
    }

    /// Re-sends the current state of `users` to all their watchers.
    async fn resend(&self, users: &[UserId], reader: &PresenceReader) -> Result<(), ReadError> {
        for (user, view) in reader.views(users).await? {
            self.publish_view(user, &view);
        }
        Ok(())
    }
}

/// One open socket or SSE stream: its outbox and subscriptions. Dropping it unregisters
/// everything.
pub struct Connection {
    hub: Hub,
    outbox: Arc<Outbox>,
}

impl Connection {
    /// The connection's outbox, to drain.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Queues a wire message (e.g. an error frame) for this connection.
    pub fn send(&self, message: ServerMessage) {
        self.outbox.push(Outgoing::Message(message));
    }

    /// Queues the snapshot answering [`Connection::subscribe`] of `users` (named by `names`,
    /// which later updates carry too), or, with `None` (building it failed), releases their
    /// held-back updates. Until then, updates of those users are held back, so none reaches
    /// the client before its snapshot.
    pub fn finish_snapshot(
        &self,
        users: &[UserId],
        names: HashMap<UserId, String>,
        entries: Option<Vec<(Seen, String)>>,
    ) {
        self.outbox.finish_snapshot(users, names, entries);
    }

    /// Starts watching `users` (all or none). Returns the ones not watched before.
    ///
    /// # Errors
    /// [`HubError::TooManySubscriptions`] if the limit would be exceeded.
    pub fn subscribe(&mut self, users: &[UserId]) -> Result<Vec<UserId>, HubError> {
        let new: Vec<UserId> = {
            let mut watching = lock(&self.outbox.watching);
            let new: HashSet<UserId> = users
                .iter()
                .copied()
                .filter(|u| !watching.contains(u))
                .collect();
            let limits = self.hub.inner.limits;
            if watching.len() + new.len() > limits.max_subscriptions {
                return Err(HubError::TooManySubscriptions(limits.max_subscriptions));
            }
            let total = &self.hub.inner.subscriptions;
            let taken = total.fetch_add(new.len(), Ordering::Relaxed);
            if taken + new.len() > limits.max_node_subscriptions {
                total.fetch_sub(new.len(), Ordering::Relaxed);
                refused("subscriptions");
                return Err(HubError::NodeFull("subscriptions"));
            }
            watching.extend(new.iter().copied());
            self.outbox.await_snapshot(users);
            new.into_iter().collect()
        };
        for &user in &new {
            self.hub
                .shard(user)
                .entry(user)
                .or_default()
                .push(self.outbox.clone());
        }
        metrics::gauge!("lastseen_subscriptions").increment(new.len() as f64);
        Ok(new)
    }

    /// Stops watching `users`.
    pub fn unsubscribe(&mut self, users: &[UserId]) {
        for &user in users {
            if lock(&self.outbox.watching).remove(&user) {
                self.hub.inner.subscriptions.fetch_sub(1, Ordering::Relaxed);
                remove_from(&mut self.hub.shard(user), user, &self.outbox);
                metrics::gauge!("lastseen_subscriptions").decrement(1.0);
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let watched = std::mem::take(&mut *lock(&self.outbox.watching));
        let total = &self.hub.inner.subscriptions;
        total.fetch_sub(watched.len(), Ordering::Relaxed);
        for user in watched {
            remove_from(&mut self.hub.shard(user), user, &self.outbox);
            metrics::gauge!("lastseen_subscriptions").decrement(1.0);
        }
        let mut registry = lock(&self.hub.inner.registry);
        registry.open -= 1;
        remove_from(&mut registry.per_user, self.outbox.viewer.id, &self.outbox);
        remove_from(&mut registry.per_session, self.outbox.session, &self.outbox);
        metrics::gauge!("lastseen_open_connections").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Availability, ManualStatus, Platform, PresenceStatus, Username};
    use crate::realtime::protocol::CLOSE_SLOW_CONSUMER;
    use crate::store::Store;
    use crate::store::sqlite::SqliteStore;
    use chrono::Utc;

    /// A hub over an in-memory database holding users 1..=9 with default privacy.
    async fn hub(send_queue: usize) -> Hub {
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::connect("sqlite::memory:").await.unwrap());
        store.migrate().await.unwrap();
        for i in 1..=9 {
            let name = Username::parse(&format!("user{i}")).unwrap();
            store.create_user(&name, "unused", false).await.unwrap();
        }
        let privacy = Privacy::new(store, false, Bus::local());
        privacy
            .ensure_loaded(&(1..=9).map(UserId).collect::<Vec<_>>())
            .await
            .unwrap();
        let limits = Limits {
            max_subscriptions: 3,
            max_connections_per_user: 2,
            send_queue,
            max_node_connections: 1000,
            max_node_subscriptions: 1000,
        };
        Hub::new(limits, privacy, Bus::local())
    }

    /// Subscribes as a connection does: subscribe, then the (here empty) snapshot.
    fn watch(connection: &mut Connection, users: &[UserId]) {
        connection.subscribe(users).unwrap();
        connection.finish_snapshot(users, HashMap::new(), None);
    }

    fn viewer(id: i64) -> Viewer {
        Viewer {
            id: UserId(id),
            is_admin: false,
        }
    }

    fn event(user: i64, seq: u64) -> PresenceEvent {
        PresenceEvent {
            user_id: UserId(user),
            status: PresenceStatus::Online,
            last_seen: Utc::now(),
            seq,
            availability: Some(Availability::Active),
            platforms: [Platform::Web].into_iter().collect(),
            manual: ManualStatus::default(),
        }
    }

    #[tokio::test]
    async fn events_reach_only_the_subscribers_of_their_user() {
        let hub = hub(16).await;
        let mut a = hub.connect(viewer(1), SessionId(1)).unwrap();
        let b = hub.connect(viewer(2), SessionId(2)).unwrap();
        watch(&mut a, &[UserId(9)]);
        hub.publish(&event(9, 1));
        hub.publish(&event(8, 1));
        assert_eq!(a.outbox().drain().0.len(), 1);
        assert!(b.outbox().drain().0.is_empty());
        a.unsubscribe(&[UserId(9)]);
        hub.publish(&event(9, 2));
        assert!(a.outbox().drain().0.is_empty());
    }

    #[tokio::test]
    async fn updates_of_one_user_are_coalesced_to_the_newest() {
        let hub = hub(16).await;
        let mut a = hub.connect(viewer(1), SessionId(1)).unwrap();
        watch(&mut a, &[UserId(9), UserId(8)]);
        for seq in 1..=100 {
            hub.publish(&event(9, seq));
        }
        hub.publish(&event(8, 1));
        let (items, closed) = a.outbox().drain();
        assert_eq!(closed, None);
        assert_eq!(items.len(), 2);
        assert!(matches!(&items[0], Outgoing::Presence(s) if s.seq == 100 && s.owner == UserId(9)));
    }

    #[tokio::test]
    async fn an_older_event_arriving_late_never_replaces_a_newer_pending_one() {
        let hub = hub(16).await;
        let mut a = hub.connect(viewer(1), SessionId(1)).unwrap();
        watch(&mut a, &[UserId(9)]);
        hub.publish(&event(9, 5));
        hub.publish(&event(9, 3));
        let (items, _) = a.outbox().drain();
        assert!(matches!(&items[..], [Outgoing::Presence(s)] if s.seq == 5));
    }

    #[tokio::test]
    async fn updates_arriving_while_a_snapshot_is_built_follow_it() {
        let hub = hub(16).await;
        let mut a = hub.connect(viewer(1), SessionId(1)).unwrap();
        a.subscribe(&[UserId(9)]).unwrap();
        hub.publish(&event(9, 5));
        assert!(
            a.outbox().drain().0.is_empty(),
            "held back until the snapshot"
        );
        let names = HashMap::from([(UserId(9), "nine".to_owned())]);
        a.finish_snapshot(&[UserId(9)], names, Some(Vec::new()));
        let (items, _) = a.outbox().drain();
        assert!(
            matches!(&items[..], [Outgoing::Names(_), Outgoing::Snapshot(_), Outgoing::Presence(s)] if s.seq == 5)
        );
        hub.publish(&event(9, 6));
        assert_eq!(a.outbox().drain().0.len(), 1, "flowing normally afterwards");
    }

    #[tokio::test]
    async fn an_overflowing_queue_closes_the_connection_as_a_slow_consumer() {
        let hub = hub(8).await;
        let mut a = hub.connect(viewer(1), SessionId(1)).unwrap();
        watch(&mut a, &[UserId(9)]);
        for _ in 0..20 {
            a.send(ServerMessage::error("invalid", "x"));
        }
        let (items, closed) = a.outbox().drain();
        assert!(items.is_empty(), "a closed outbox drops its backlog");
        assert_eq!(closed.map(|c| c.code), Some(CLOSE_SLOW_CONSUMER));
    }

    #[tokio::test]
    async fn limits_are_enforced_and_released_on_drop() {
        let hub = hub(8).await;
        let first = hub.connect(viewer(1), SessionId(1)).unwrap();
        let mut second = hub.connect(viewer(1), SessionId(2)).unwrap();
        assert_eq!(
            hub.connect(viewer(1), SessionId(3)).err(),
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
        assert!(hub.connect(viewer(1), SessionId(3)).is_ok());
        drop(second);
        assert!(
            hub.shard(UserId(5)).is_empty(),
            "subscriptions removed with the connection"
        );
    }

    #[tokio::test]
    async fn typing_reaches_only_the_recipients_connections_that_watch_the_sender() {
        let hub = hub(8).await;
        let mut recipient = hub.connect(viewer(2), SessionId(2)).unwrap();
        let mut bystander = hub.connect(viewer(3), SessionId(3)).unwrap();
        let not_watching = hub.connect(viewer(2), SessionId(4)).unwrap();
        watch(&mut recipient, &[UserId(1)]);
        watch(&mut bystander, &[UserId(1)]);
        assert_eq!(hub.typing(UserId(1), UserId(2)).await, 1);
        assert_eq!(recipient.outbox().drain().0.len(), 1);
        assert!(bystander.outbox().drain().0.is_empty());
        assert!(not_watching.outbox().drain().0.is_empty());
    }

    #[tokio::test]
    async fn closing_a_session_closes_its_connections() {
        let hub = hub(8).await;
        let a = hub.connect(viewer(1), SessionId(1)).unwrap();
        let other = hub.connect(viewer(1), SessionId(2)).unwrap();
        hub.close_session(SessionId(1));
        assert_eq!(
            a.outbox().drain().1.map(|c| c.code),
            Some(CLOSE_UNAUTHORIZED)
        );
        assert_eq!(other.outbox().drain().1, None);
    }
}
