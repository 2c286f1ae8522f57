//! The in-process presence backend: sharded state, per-shard deadline indexes, one expiry task.
//!
//! Locking rules: each shard is a `std::sync::Mutex`; an operation on one user locks only that
//! user's shard, and no lock is held across `.await` or while publishing events. Operations
//! over all users (expiry, dirty collection, paging) lock one shard at a time.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use tokio::sync::{Notify, broadcast, watch};
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use super::deadlines::{DeadlineIndex, slot_of, slot32};
use super::state::{Change, Tick, Timing, UserState};
use super::users::UserTable;
use super::{EngineError, LastKnown, Maintenance, OnlinePage, PresenceBackend};
use crate::domain::{
    Activity, ManualStatus, PresenceEvent, PresenceStatus, PresenceView, PresenceWrite,
    RestoredUser, SessionId, SessionRef, StoredSession, UserId,
};
use crate::shards::{Sharded, lock};
use crate::telemetry::hot_counter;

/// Number of shards: a power of two, many per core, so concurrent heartbeats rarely meet.
const SHARDS: usize = 64;
/// Capacity of the event channel (~3 MiB of events); a receiver that falls further behind sees
/// `Lagged` and must re-read current state, which costs in proportion to its subscriptions.
const EVENT_CAPACITY: usize = 65_536;
/// Longest the expiry task sleeps without looking, as a guard against a missed wake-up.
const MAX_IDLE: Duration = Duration::from_secs(60);

/// The users of one shard. Guarded by the shard's mutex.
#[derive(Debug)]
struct Shard {
    /// Users with live sessions or a manual status, and offline users not yet written.
    users: UserTable,
    /// One entry per user with a pending deadline.
    deadlines: DeadlineIndex,
    /// Ids of this shard's online users, ordered for paging.
    online: BTreeSet<UserId>,
    /// Users whose `dirty` flag went from false to true since the last flush.
    dirty: Vec<UserId>,
}

/// In-process presence state.
pub struct LocalBackend {
    /// Shard `i` holds users whose id hashes to `i`.
    shards: Sharded<Mutex<Shard>>,
    /// Session timeout, automatic idle and the socket re-check period.
    timing: Timing,
    /// Number of online users, kept in step with the shards' `online` sets.
    online: AtomicUsize,
    /// Changes are published here after the shard lock is released.
    events: broadcast::Sender<PresenceEvent>,
    /// Wakes the expiry task when a deadline earlier than its planned wake-up is armed.
    wake: Notify,
    /// The slot the expiry task sleeps until (`u64::MAX` when none is armed).
    wake_slot: AtomicU64,
    /// Slot 0 of every shard's index; read-only.
    origin: Instant,
    /// Never changes: an in-process engine loses its state only with the process.
    lost: watch::Sender<u64>,
}

impl LocalBackend {
    /// An empty engine whose sessions expire `timeout` after their last activity and turn idle
    /// after `idle_after` without real activity (`None`: never automatically).
    pub fn new(timeout: Duration, idle_after: Option<Duration>) -> Self {
        let origin = Instant::now();
        let shards = Sharded::new(SHARDS, || {
            Mutex::new(Shard {
                users: UserTable::default(),
                deadlines: DeadlineIndex::new(origin),
                online: BTreeSet::new(),
                dirty: Vec::new(),
            })
        });
        Self {
            shards,
            // Sockets are re-checked (and their activity recorded) twice per timeout, so the
            // stored `last_activity` of a socket-held session is never older than the timeout.
            timing: Timing {
                timeout,
                idle_after,
                hold: timeout / 2,
            },
            online: AtomicUsize::new(0),
            events: broadcast::channel(EVENT_CAPACITY).0,
            wake: Notify::new(),
            wake_slot: AtomicU64::new(u64::MAX),
            origin,
            lost: watch::channel(0).0,
        }
    }

    fn shard(&self, user: UserId) -> MutexGuard<'_, Shard> {
        lock(self.shards.get(&user))
    }

    /// Arms `user` at its next deadline if that is earlier than the entry it has (entries
    /// for later deadlines are re-armed lazily when they fire), and wakes the expiry task if it
    /// sleeps past it.
    fn rearm(&self, shard: &mut Shard, user: UserId) {
        let Some(state) = shard.users.get_mut(&user) else {
            return;
        };
        let Some(deadline) = state.next_deadline(&self.timing) else {
            return;
        };
        let deadline = deadline.instant(self.origin);
        let slot = slot_of(self.origin, deadline);
        if state.armed_slot != 0 && state.armed_slot <= slot32(slot) {
            return;
        }
        state.armed_slot = slot32(shard.deadlines.arm(deadline, user));
        if slot < self.wake_slot.load(Ordering::Acquire) {
            // `notify_one` never blocks and never runs the woken task inline, so calling it
            // under the shard lock costs no more than the store of a permit.
            self.wake.notify_one();
        }
    }

    fn publish(&self, user_id: UserId, change: Change) {
        let Some(view) = change else { return };
        if view.status.is_online() != (view.availability.is_some()) {
            tracing::error!(%user_id, "BUG: availability out of step with status");
        }
        metrics::counter!("lastseen_presence_transitions_total", "to" => view.status.as_str())
            .increment(1);
        // No receivers is not an error: nobody subscribed yet.
        let _ = self.events.send(PresenceEvent {
            user_id,
            status: view.status,
            last_seen: view.last_seen.unwrap_or_else(wall_now),
            seq: view.seq,
            availability: view.availability,
            platforms: view.platforms,
            manual: view.manual,
        });
    }

    /// Runs `f` on `user`'s state (created as `initial` if absent and `initial` is given; else
    /// `None` is returned for an absent user), then keeps the shard's bookkeeping in step
    /// (dirty list, online set, the deadline) and publishes the change after unlocking.
    fn apply(
        &self,
        user: UserId,
        initial: Option<fn() -> UserState>,
        f: impl FnOnce(&mut UserState) -> Change,
    ) -> Option<PresenceView> {
        let (change, result) = {
            let mut guard = self.shard(user);
            let shard = &mut *guard;
            let state = match initial {
                Some(initial) => shard.users.get_or_insert_with(user, initial),
                None => shard.users.get_mut(&user)?,
            };
            let was_dirty = state.dirty;
            let change = f(state);
            let (result, is_dirty) = (state.view(), state.dirty);
            note_dirty(shard, user, was_dirty, is_dirty);
            update_online_set(shard, &self.online, user, change.as_ref());
            self.rearm(shard, user);
            (change, result)
        };
        self.publish(user, change);
        Some(result)
    }

    /// The earliest armed deadline of any shard.
    fn next_due(&self) -> Option<Instant> {
        self.shards
            .all()
            .iter()
            .filter_map(|s| lock(s).deadlines.next_due())
            .min()
    }

    /// `at` as the engine's states count time.
    fn tick(&self, at: Instant) -> Tick {
        Tick::since(self.origin, at)
    }

    /// Tokio's clock at a wall-clock time, given both clocks now.
    fn tick_of(&self, now: Instant, wall: DateTime<Utc>, at: DateTime<Utc>) -> Tick {
        self.tick(now) + (at - wall).to_std().unwrap_or_default()
    }
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// The wall clock at the microsecond precision timestamps are stored with, so a `last_seen`
/// reads the same before and after a restart.
fn wall_now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn new_user() -> UserState {
    UserState::offline(0, None, ManualStatus::default())
}

/// The view of a user the engine holds nothing for, as a fallback answer.
fn never_active() -> PresenceView {
    PresenceView::offline(None, 0, ManualStatus::default())
}

/// Records the user in its shard's dirty list if it just became dirty.
fn note_dirty(shard: &mut Shard, user: UserId, was_dirty: bool, is_dirty: bool) {
    if is_dirty && !was_dirty {
        shard.dirty.push(user);
    }
}

/// Keeps the shard's online set and the global count in step with a change; called under the
/// shard lock, so the count never runs ahead of the sets.
fn update_online_set(
    shard: &mut Shard,
    count: &AtomicUsize,
    user: UserId,
    change: Option<&PresenceView>,
) {
    match change.map(|c| c.status) {
        Some(PresenceStatus::Online) if shard.online.insert(user) => {
            count.fetch_add(1, Ordering::Relaxed);
        }
        Some(PresenceStatus::Offline) if shard.online.remove(&user) => {
            count.fetch_sub(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

#[async_trait]
impl PresenceBackend for LocalBackend {
    async fn touch(
        &self,
        user: UserId,
        session: SessionRef,
        activity: Activity,
    ) -> Result<PresenceView, EngineError> {
        let (now, wall) = (self.tick(Instant::now()), wall_now());
        let view = self.apply(user, Some(new_user), |state| {
            let timing = &self.timing;
            state
                .touch(session.id, session.platform, activity, now, wall, timing)
                .0
        });
        hot_counter!("lastseen_activity_total").increment(1);
        Ok(view.unwrap_or_else(never_active))
    }

    async fn open_socket(
        &self,
        user: UserId,
        session: SessionRef,
    ) -> Result<PresenceView, EngineError> {
        let (now, wall) = (self.tick(Instant::now()), wall_now());
        let view = self.apply(user, Some(new_user), |state| {
            let (change, _, flap) =
                state.open_socket(session.id, session.platform, now, wall, &self.timing);
            if flap {
                metrics::counter!("lastseen_flaps_suppressed_total").increment(1);
            }
            change
        });
        Ok(view.unwrap_or_else(never_active))
    }

    async fn close_socket(
        &self,
        user: UserId,
        session: SessionId,
        grace: Duration,
    ) -> Result<(), EngineError> {
        let (now, wall) = (self.tick(Instant::now()), wall_now());
        self.apply(user, None, |state| {
            state.close_socket(session, now, wall, grace);
            None
        });
        Ok(())
    }

    async fn end_session(
        &self,
        user: UserId,
        session: SessionId,
    ) -> Result<PresenceView, EngineError> {
        let wall = wall_now();
        let view = self.apply(user, None, |state| state.end_session(session, wall));
        Ok(view.unwrap_or_else(never_active))
    }

    async fn set_status(
        &self,
        user: UserId,
        manual: ManualStatus,
        last: LastKnown,
    ) -> Result<PresenceView, EngineError> {
        let (now, wall) = (Instant::now(), wall_now());
        let expires = manual.expires_at.map(|at| self.tick_of(now, wall, at));
        {
            // A user the engine holds nothing for starts from what the store knows.
            let mut shard = self.shard(user);
            shard.users.get_or_insert_with(user, || {
                UserState::offline(last.seq, last.last_seen, ManualStatus::default())
            });
        }
        let view = self.apply(user, None, |state| state.set_manual(manual, expires, wall));
        Ok(view.unwrap_or_else(never_active))
    }

    async fn live_sessions(&self, user: UserId) -> Result<Vec<SessionId>, EngineError> {
        let shard = self.shard(user);
        let sessions = shard.users.get(&user).map(|s| &s.sessions);
        Ok(sessions.map_or_else(Vec::new, |s| s.iter().map(|s| s.id).collect()))
    }

    async fn presence(&self, users: &[UserId]) -> Result<Vec<(UserId, PresenceView)>, EngineError> {
        Ok(users
            .iter()
            .filter_map(|&user| self.shard(user).users.get(&user).map(|s| (user, s.view())))
            .collect())
    }

    async fn online_page(
        &self,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<OnlinePage, EngineError> {
        let start = after.map_or(i64::MIN, |id| id.0.saturating_add(1));
        let mut users = Vec::new();
        for shard in self.shards.all() {
            let shard = lock(shard);
            let ids = shard.online.range(UserId(start)..).take(limit);
            users.extend(ids.filter_map(|id| shard.users.get(id).map(|s| (*id, s.view()))));
        }
        users.sort_unstable_by_key(|(id, _)| *id);
        users.truncate(limit);
        Ok(OnlinePage {
            users,
            total: self.online.load(Ordering::Relaxed),
        })
    }

    async fn online_count(&self) -> Result<usize, EngineError> {
        Ok(self.online.load(Ordering::Relaxed))
    }

    async fn ready(&self) -> Result<(), EngineError> {
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<PresenceEvent> {
        self.events.subscribe()
    }
}

#[async_trait]
impl Maintenance for LocalBackend {
    async fn expire_due(&self) -> Result<usize, EngineError> {
        let (now, wall) = (Instant::now(), wall_now());
        let tick = self.tick(now);
        let mut offline = 0;
        for shard in self.shards.all() {
            let mut changes = Vec::new();
            {
                let mut guard = lock(shard);
                let shard = &mut *guard;
                for (slot, users) in shard.deadlines.take_due(now) {
                    for user in users {
                        let Some(state) = shard.users.get_mut(&user) else {
                            continue;
                        };
                        if state.armed_slot != slot32(slot) {
                            continue; // stale: the user is armed elsewhere
                        }
                        state.armed_slot = 0;
                        let was_dirty = state.dirty;
                        let change = state.check(tick, wall, &self.timing);
                        let is_dirty = state.dirty;
                        note_dirty(shard, user, was_dirty, is_dirty);
                        update_online_set(shard, &self.online, user, change.as_ref());
                        self.rearm(shard, user);
                        if change.is_some() {
                            changes.push((user, change));
                        }
                    }
                }
            }
            for (user, change) in changes {
                offline += usize::from(change.as_ref().is_some_and(|c| !c.status.is_online()));
                self.publish(user, change);
            }
        }
        Ok(offline)
    }

    async fn run(&self, shutdown: CancellationToken) {
        loop {
            let now = Instant::now();
            let wake_at = self
                .next_due()
                .unwrap_or(now + MAX_IDLE)
                .min(now + MAX_IDLE);
            self.wake_slot
                .store(slot_of(self.origin, wake_at), Ordering::Release);
            // Re-check after publishing `wake_slot`: a deadline armed in between either saw the
            // old (larger) value and notified, or is visible to this second look.
            if self.next_due().is_some_and(|due| due < wake_at) {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(wake_at) => {}
                () = self.wake.notified() => continue,
            }
            if let Err(error) = self.expire_due().await {
                tracing::warn!(%error, "presence expiry step failed");
            }
        }
    }

    async fn take_dirty(&self) -> Vec<PresenceWrite> {
        let (now, wall) = (self.tick(Instant::now()), wall_now());
        let timeout = chrono_duration(self.timing.timeout);
        let mut writes = Vec::new();
        for shard in self.shards.all() {
            // Back to the scheduler between shards: with many dirty users the whole collection
            // takes milliseconds, which requests queued on this worker would otherwise wait.
            tokio::task::yield_now().await;
            let mut guard = lock(shard);
            let shard = &mut *guard;
            for user in std::mem::take(&mut shard.dirty) {
                let Some(state) = shard.users.get_mut(&user) else {
                    continue;
                };
                state.dirty = false;
                writes.push(PresenceWrite {
                    user_id: user,
                    status: state.status,
                    last_seen: state.last_seen(),
                    seq: state.seq,
                    expired_status: state.take_expired_status(),
                    sessions: state
                        .sessions
                        .iter()
                        .map(|s| StoredSession {
                            id: s.id,
                            platform: s.platform,
                            last_activity: s.last_activity_wall.at(),
                            // A socket-held session lasts while it is refreshed; after a crash
                            // it is treated like HTTP activity.
                            expires_at: if s.sockets > 0 {
                                s.last_activity_wall.at() + timeout
                            } else {
                                wall + chrono_duration(s.expires_at.saturating_since(now))
                            },
                        })
                        .collect(),
                });
            }
        }
        writes
    }

    async fn mark_dirty(&self, batch: Vec<PresenceWrite>) {
        // The state itself is still here; only the marks were taken.
        for write in batch {
            let user = write.user_id;
            let mut shard = self.shard(user);
            if let Some(state) = shard.users.get_mut(&user) {
                let was_dirty = std::mem::replace(&mut state.dirty, true);
                state.restore_expired_status(write.expired_status);
                note_dirty(&mut shard, user, was_dirty, true);
            }
        }
    }

    async fn evict_persisted(&self, batch: &[PresenceWrite]) {
        for write in batch {
            let user = write.user_id;
            let mut shard = self.shard(user);
            // A user with a manual status stays: its reset is a deadline, and availability
            // needs it when the user comes back.
            let idle = shard
                .users
                .get(&user)
                .is_some_and(|s| s.sessions.is_empty() && !s.dirty && s.manual().is_default());
            if idle {
                shard.users.remove(&user);
            }
        }
    }

    async fn claim_restore(&self) -> Result<bool, EngineError> {
        Ok(true)
    }

    async fn restored(&self) -> Result<(), EngineError> {
        Ok(())
    }

    fn lost_state(&self) -> watch::Receiver<u64> {
        self.lost.subscribe()
    }

    async fn restore(&self, users: Vec<RestoredUser>) -> Result<(), EngineError> {
        let (now, wall) = (Instant::now(), wall_now());
        // Each shard is sized once and locked once, and the shards are rebuilt in parallel
        // (this runs at start-up, before anything else uses the engine).
        let mut by_shard = vec![Vec::new(); self.shards.all().len()];
        for (position, user) in users.iter().enumerate() {
            by_shard[self.shards.index_of(&user.user_id)].push(position);
        }
        let workers = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .clamp(1, by_shard.len());
        std::thread::scope(|scope| {
            for worker in 0..workers {
                let (users, by_shard) = (&users, &by_shard);
                scope.spawn(move || {
                    for index in (worker..by_shard.len()).step_by(workers) {
                        let restored = by_shard[index].iter().map(|&position| &users[position]);
                        self.restore_shard(index, restored, now, wall);
                    }
                });
            }
        });
        drop(users);
        // The load freed hundreds of bytes per user, interleaved with what the shards keep;
        // glibc would hold it for reuse (70 MiB of RSS at 1,000,000 users) that never comes.
        crate::heap::release_free();
        Ok(())
    }
}

impl LocalBackend {
    /// Restores `users`, all of shard `index` (see [`Maintenance::restore`]).
    fn restore_shard<'a>(
        &self,
        index: usize,
        users: impl ExactSizeIterator<Item = &'a RestoredUser>,
        now: Instant,
        wall: DateTime<Utc>,
    ) {
        let tick = self.tick(now);
        let mut guard = lock(&self.shards.all()[index]);
        let shard = &mut *guard;
        shard.users.reserve(users.len());
        let mut online = Vec::new();
        for restored in users {
            let user = restored.user_id;
            let expires = restored.manual.expires_at;
            let expires = expires.map(|at| self.tick_of(now, wall, at));
            let state = UserState::restored(restored, expires, tick, wall, &self.timing);
            if state.status.is_online() {
                online.push(user);
            }
            shard.users.insert(user, state);
            self.rearm(shard, user);
        }
        // Built in one go, the set's nodes are full (inserting ids in order leaves them half
        // full).
        let mut online: BTreeSet<UserId> = online.into_iter().collect();
        let before = shard.online.len();
        shard.online.append(&mut online);
        let added = shard.online.len() - before;
        self.online.fetch_add(added, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Platform;

    const TIMEOUT: Duration = Duration::from_secs(300);

    async fn presence_of(engine: &LocalBackend, user: UserId) -> Option<PresenceView> {
        engine
            .presence(&[user])
            .await
            .unwrap()
            .pop()
            .map(|(_, view)| view)
    }

    fn spawn_expiry(engine: &std::sync::Arc<LocalBackend>) -> CancellationToken {
        let token = CancellationToken::new();
        let (engine, stop) = (engine.clone(), token.clone());
        tokio::spawn(async move { engine.run(stop).await });
        token
    }

    #[tokio::test(start_paused = true)]
    async fn default_timeout_fires_within_a_second_after_the_deadline_and_not_before() {
        let engine = std::sync::Arc::new(LocalBackend::new(TIMEOUT, None));
        let mut events = engine.subscribe();
        let stop = spawn_expiry(&engine);
        let start = Instant::now();
        engine
            .touch(
                UserId(1),
                SessionRef::web(SessionId(10)),
                Activity::Keepalive,
            )
            .await
            .unwrap();
        assert_eq!(
            events.try_recv().ok().unwrap().status,
            PresenceStatus::Online
        );

        tokio::time::sleep_until(start + TIMEOUT - Duration::from_millis(1)).await;
        tokio::task::yield_now().await;
        assert_eq!(events.try_recv().ok(), None, "not before the deadline");
        assert_eq!(engine.online_count().await.unwrap(), 1);

        let event = tokio::time::timeout(Duration::from_secs(1), events.recv())
            .await
            .expect("offline within 1 s of the deadline")
            .unwrap();
        assert_eq!(event.status, PresenceStatus::Offline);
        assert!(Instant::now() >= start + TIMEOUT);
        assert_eq!(engine.online_count().await.unwrap(), 0);
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_push_the_deadline_and_last_seen_is_the_last_activity() {
        let engine = std::sync::Arc::new(LocalBackend::new(TIMEOUT, None));
        let mut events = engine.subscribe();
        let stop = spawn_expiry(&engine);
        let start = Instant::now();
        engine
            .touch(
                UserId(1),
                SessionRef::web(SessionId(1)),
                Activity::Keepalive,
            )
            .await
            .unwrap();
        events.recv().await.unwrap();
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_secs(30)).await;
            let view = engine
                .touch(
                    UserId(1),
                    SessionRef::web(SessionId(1)),
                    Activity::Keepalive,
                )
                .await
                .unwrap();
            assert_eq!(view.status, PresenceStatus::Online);
        }
        let last_heartbeat = presence_of(&engine, UserId(1)).await.unwrap().last_seen;
        let offline = events.recv().await.unwrap();
        assert_eq!(offline.status, PresenceStatus::Offline);
        let went_offline = Instant::now();
        assert!(went_offline >= start + Duration::from_secs(600) + TIMEOUT);
        assert!(went_offline < start + Duration::from_secs(601) + TIMEOUT);
        assert_eq!(Some(offline.last_seen), last_heartbeat);
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_keeps_the_session_past_the_timeout_and_its_close_starts_the_grace() {
        let grace = Duration::from_secs(10);
        let engine = std::sync::Arc::new(LocalBackend::new(TIMEOUT, None));
        let mut events = engine.subscribe();
        let stop = spawn_expiry(&engine);
        engine
            .open_socket(UserId(1), SessionRef::web(SessionId(1)))
            .await
            .unwrap();
        assert_eq!(events.recv().await.unwrap().status, PresenceStatus::Online);
        tokio::time::sleep(TIMEOUT * 3).await;
        assert_eq!(
            engine.online_count().await.unwrap(),
            1,
            "an open socket is a live session"
        );

        engine
            .close_socket(UserId(1), SessionId(1), grace)
            .await
            .unwrap();
        tokio::time::sleep(grace / 2).await;
        engine
            .open_socket(UserId(1), SessionRef::web(SessionId(1)))
            .await
            .unwrap();
        engine
            .close_socket(UserId(1), SessionId(1), grace)
            .await
            .unwrap();
        let closed = Instant::now();
        assert!(
            events.try_recv().is_err(),
            "a reconnect inside the grace publishes nothing"
        );

        let offline = events.recv().await.unwrap();
        assert_eq!(offline.status, PresenceStatus::Offline);
        let elapsed = Instant::now() - closed;
        assert!(
            elapsed >= grace && elapsed < grace + Duration::from_secs(1),
            "{elapsed:?}"
        );
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_held_session_keeps_its_stored_activity_fresh() {
        let engine = std::sync::Arc::new(LocalBackend::new(TIMEOUT, None));
        let stop = spawn_expiry(&engine);
        engine
            .open_socket(UserId(1), SessionRef::web(SessionId(1)))
            .await
            .unwrap();
        engine.take_dirty().await;
        tokio::time::sleep(TIMEOUT * 2).await;
        let writes = engine.take_dirty().await;
        assert_eq!(writes.len(), 1, "refreshed while the socket is open");
        let stored = writes[0].sessions[0];
        assert!(stored.expires_at > wall_now(), "stored as live");
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn logout_with_another_live_session_keeps_the_user_online() {
        let engine = LocalBackend::new(TIMEOUT, None);
        engine
            .touch(
                UserId(7),
                SessionRef::web(SessionId(1)),
                Activity::Keepalive,
            )
            .await
            .unwrap();
        engine
            .touch(
                UserId(7),
                SessionRef::web(SessionId(2)),
                Activity::Keepalive,
            )
            .await
            .unwrap();
        let view = engine.end_session(UserId(7), SessionId(1)).await.unwrap();
        assert_eq!(view.status, PresenceStatus::Online);
        let view = engine.end_session(UserId(7), SessionId(2)).await.unwrap();
        assert_eq!(view.status, PresenceStatus::Offline);
        assert_eq!(engine.online_count().await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_user_stays_online_while_any_session_is_live() {
        let engine = std::sync::Arc::new(LocalBackend::new(TIMEOUT, None));
        let stop = spawn_expiry(&engine);
        engine
            .touch(
                UserId(3),
                SessionRef::web(SessionId(1)),
                Activity::Keepalive,
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(200)).await;
        engine
            .touch(
                UserId(3),
                SessionRef::web(SessionId(2)),
                Activity::Keepalive,
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(150)).await;
        let view = presence_of(&engine, UserId(3)).await.unwrap();
        assert_eq!(view.status, PresenceStatus::Online, "session 2 is live");
        tokio::time::sleep(Duration::from_secs(151)).await;
        let view = presence_of(&engine, UserId(3)).await.unwrap();
        assert_eq!(view.status, PresenceStatus::Offline);
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn seq_increases_per_user_across_transitions() {
        let engine = LocalBackend::new(TIMEOUT, None);
        let mut events = engine.subscribe();
        for _ in 0..3 {
            engine
                .touch(
                    UserId(1),
                    SessionRef::web(SessionId(1)),
                    Activity::Keepalive,
                )
                .await
                .unwrap();
            engine.end_session(UserId(1), SessionId(1)).await.unwrap();
        }
        let mut seqs = Vec::new();
        while let Ok(e) = events.try_recv() {
            seqs.push(e.seq);
        }
        assert_eq!(seqs.len(), 6);
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_that_change_nothing_publish_nothing_and_tick_expires_only_due() {
        let engine = LocalBackend::new(TIMEOUT, None);
        let mut events = engine.subscribe();
        for id in 0..1000 {
            engine
                .touch(
                    UserId(id),
                    SessionRef::web(SessionId(id)),
                    Activity::Keepalive,
                )
                .await
                .unwrap();
        }
        assert_eq!(events.len(), 1000);
        while events.try_recv().is_ok() {}
        for id in 0..1000 {
            engine
                .touch(
                    UserId(id),
                    SessionRef::web(SessionId(id)),
                    Activity::Keepalive,
                )
                .await
                .unwrap();
        }
        assert!(events.try_recv().is_err(), "no events for plain heartbeats");
        assert_eq!(engine.expire_due().await.unwrap(), 0);
        tokio::time::advance(TIMEOUT).await;
        assert_eq!(engine.expire_due().await.unwrap(), 1000);
        assert_eq!(engine.online_count().await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn restore_keeps_the_remaining_time_and_the_stored_seq() {
        let engine = std::sync::Arc::new(LocalBackend::new(TIMEOUT, None));
        let stop = spawn_expiry(&engine);
        let mut events = engine.subscribe();
        let (now, wall) = (Instant::now(), wall_now());
        let two_minutes_ago = wall - chrono::Duration::seconds(120);
        engine
            .restore(vec![RestoredUser {
                user_id: UserId(5),
                seq: 42,
                last_seen: Some(two_minutes_ago),
                sessions: vec![StoredSession {
                    id: SessionId(9),
                    last_activity: two_minutes_ago,
                    expires_at: two_minutes_ago + chrono::Duration::seconds(300),
                    platform: Platform::Web,
                }],
                manual: ManualStatus::default(),
            }])
            .await
            .unwrap();
        let view = presence_of(&engine, UserId(5)).await.unwrap();
        assert_eq!(view.status, PresenceStatus::Online);
        assert_eq!(view.seq, 42);
        assert!(events.try_recv().is_err(), "restoring publishes nothing");

        let offline = events.recv().await.unwrap();
        let elapsed = Instant::now() - now;
        assert!(elapsed >= Duration::from_secs(180) && elapsed < Duration::from_secs(181));
        assert_eq!(offline.last_seen, two_minutes_ago);
        assert!(offline.seq > 42);
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn dirty_state_is_taken_once_and_offline_users_are_evicted_after_writing() {
        let engine = LocalBackend::new(TIMEOUT, None);
        engine
            .touch(
                UserId(1),
                SessionRef::web(SessionId(1)),
                Activity::Keepalive,
            )
            .await
            .unwrap();
        engine
            .touch(
                UserId(1),
                SessionRef::web(SessionId(1)),
                Activity::Keepalive,
            )
            .await
            .unwrap();
        let writes = engine.take_dirty().await;
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].status, PresenceStatus::Online);
        assert_eq!(writes[0].sessions.len(), 1);
        assert!(engine.take_dirty().await.is_empty());

        engine.end_session(UserId(1), SessionId(1)).await.unwrap();
        let writes = engine.take_dirty().await;
        assert_eq!(writes[0].status, PresenceStatus::Offline);
        engine.evict_persisted(&writes).await;
        assert_eq!(presence_of(&engine, UserId(1)).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn online_pages_are_ordered_and_count_the_total() {
        let engine = LocalBackend::new(TIMEOUT, None);
        for id in (1..=250).rev() {
            engine
                .touch(
                    UserId(id),
                    SessionRef::web(SessionId(id)),
                    Activity::Keepalive,
                )
                .await
                .unwrap();
        }
        let page = engine.online_page(None, 100).await.unwrap();
        assert_eq!(page.total, 250);
        let ids: Vec<i64> = page.users.iter().map(|(id, _)| id.0).collect();
        assert_eq!(ids, (1..=100).collect::<Vec<_>>());
        let page = engine.online_page(Some(UserId(200)), 100).await.unwrap();
        assert_eq!(page.users.len(), 50);
        assert_eq!(page.users[0].0, UserId(201));
    }
}

#[cfg(test)]
mod properties {
    //! Random interleavings of touch, socket open/close, logout and the passing of time,
    //! checked against a model of which sessions are live: a user is online exactly when a
    //! session of theirs is live, `seq` only grows, and every change of status is announced by
    //! exactly one event.

    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use crate::engine::deadlines::SLOT;

    const TIMEOUT: Duration = Duration::from_secs(60);
    const GRACE: Duration = Duration::from_secs(5);

    #[derive(Debug, Clone)]
    enum Op {
        Touch(i64, i64),
        Open(i64, i64),
        Close(i64, i64),
        End(i64, i64),
        Wait(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let user = 1..4_i64;
        let session = 1..4_i64;
        prop_oneof![
            (user.clone(), session.clone()).prop_map(|(u, s)| Op::Touch(u, s)),
            (user.clone(), session.clone()).prop_map(|(u, s)| Op::Open(u, s)),
            (user.clone(), session.clone()).prop_map(|(u, s)| Op::Close(u, s)),
            (user, session).prop_map(|(u, s)| Op::End(u, s)),
            (0..90_000_u64).prop_map(Op::Wait),
        ]
    }

    /// The model of one session: open sockets and when it ends without them.
    #[derive(Debug, Clone, Copy)]
    struct Model {
        sockets: u32,
        ends_at: Instant,
    }

    /// Sessions are numbered per user; the engine needs globally unique ids.
    fn session_id(user: i64, session: i64) -> SessionId {
        SessionId(user * 10 + session)
    }

    /// Whether the model says the session is live at `now`: `Some(true)`/`Some(false)` when it
    /// is certain, `None` within one slot of its end, where the engine may still be at it.
    fn live(model: &Model, now: Instant) -> Option<bool> {
        if model.sockets > 0 || now < model.ends_at {
            Some(true)
        } else if now >= model.ends_at + SLOT {
            Some(false)
        } else {
            None
        }
    }

    async fn run(ops: Vec<Op>) {
        let engine = LocalBackend::new(TIMEOUT, None);
        let mut events = engine.subscribe();
        let mut models: HashMap<(i64, i64), Model> = HashMap::new();
        let mut last_status: HashMap<i64, PresenceStatus> = HashMap::new();
        let mut last_seq: HashMap<i64, u64> = HashMap::new();
        for op in ops {
            let now = Instant::now();
            match op {
                Op::Touch(u, s) => {
                    engine
                        .touch(
                            UserId(u),
                            SessionRef::web(session_id(u, s)),
                            Activity::Keepalive,
                        )
                        .await
                        .unwrap();
                    let model = models.entry((u, s)).or_insert(Model {
                        sockets: 0,
                        ends_at: now,
                    });
                    model.ends_at = model.ends_at.max(now + TIMEOUT);
                }
                Op::Open(u, s) => {
                    engine
                        .open_socket(UserId(u), SessionRef::web(session_id(u, s)))
                        .await
                        .unwrap();
                    let model = models.entry((u, s)).or_insert(Model {
                        sockets: 0,
                        ends_at: now,
                    });
                    model.sockets += 1;
                    model.ends_at = model.ends_at.max(now + TIMEOUT);
                }
                Op::Close(u, s) => {
                    let grace = GRACE;
                    engine
                        .close_socket(UserId(u), session_id(u, s), grace)
                        .await
                        .unwrap();
                    if let Some(model) = models.get_mut(&(u, s)).filter(|m| m.sockets > 0) {
                        model.sockets -= 1;
                        if model.sockets == 0 {
                            model.ends_at = now + grace;
                        }
                    }
                }
                Op::End(u, s) => {
                    engine
                        .end_session(UserId(u), session_id(u, s))
                        .await
                        .unwrap();
                    models.remove(&(u, s));
                }
                Op::Wait(ms) => {
                    tokio::time::advance(Duration::from_millis(ms)).await;
                    engine.expire_due().await.unwrap();
                    let now = Instant::now();
                    // A session the engine ended is gone for good (the model forgets it too).
                    models.retain(|_, m| live(m, now) != Some(false));
                }
            }
            // Every announced transition: alternating per user, with a growing seq.
            while let Ok(event) = events.try_recv() {
                let user = event.user_id.0;
                let previous = last_status.insert(user, event.status);
                assert_ne!(
                    previous,
                    Some(event.status),
                    "one event per change: {event:?}"
                );
                let seq = last_seq.insert(user, event.seq).unwrap_or(0);
                assert!(event.seq > seq, "seq grows: {event:?} after {seq}");
            }
            let now = Instant::now();
            for user in 1..4_i64 {
                let sessions: Vec<Option<bool>> = models
                    .iter()
                    .filter(|((u, _), _)| *u == user)
                    .map(|(_, m)| live(m, now))
                    .collect();
                let expected = if sessions.contains(&Some(true)) {
                    Some(PresenceStatus::Online)
                } else if sessions.iter().all(|l| *l == Some(false)) {
                    Some(PresenceStatus::Offline)
                } else {
                    None
                };
                let actual = engine
                    .presence(&[UserId(user)])
                    .await
                    .unwrap()
                    .pop()
                    .map_or(PresenceStatus::Offline, |(_, v)| v.status);
                if let Some(expected) = expected {
                    assert_eq!(actual, expected, "user {user} at {now:?}: {models:?}");
                }
                let announced = last_status
                    .get(&user)
                    .copied()
                    .unwrap_or(PresenceStatus::Offline);
                assert_eq!(actual, announced, "the last event tells the current status");
            }
            let online = (1..4_i64)
                .filter(|u| last_status.get(u) == Some(&PresenceStatus::Online))
                .count();
            assert_eq!(engine.online_count().await.unwrap(), online);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn online_iff_a_live_session_with_one_event_per_change(ops in prop::collection::vec(op(), 1..60)) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(run(ops));
        }
    }
}
