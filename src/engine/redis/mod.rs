//! The shared presence backend: sessions, deadlines, status, `last_seen` and `seq` live in
//! Redis, so any number of nodes see one presence state.
//!
//! Every change of a user is one server-side script (`apply.lua`) over the keys of the user's
//! slot group: it changes the state, says whether what viewers see changed (status,
//! availability, platforms, status text and emoji), and announces that change on the `ev`
//! channel in the same atomic step, so no two nodes ever announce the same change and every
//! node's feed hears each one once, in order per user. Deadlines (a session ending, turning
//! idle, a manual status resetting) are per-group sets of users by 250 ms slot; every node
//! sweeps every group every slot (`sweep.lua`), and popping a slot is atomic, so each expiry
//! happens once, within about half a second of its deadline, with `last_seen` = the last
//! activity.
//!
//! A socket holds its session through this node: the session records how many sockets each
//! node holds, and the node keeps a lease in every group, refreshed every `node_lease / 3`. A
//! node that dies stops refreshing; the first sweep after its lease ran out ends its sessions'
//! holds, and those sessions end a grace later. When this node's feed had to resubscribe (Redis
//! restarted, or failed over) the node takes a new id and registers its open sockets again, so
//! nothing it held is lost and nothing it no longer holds stays held; if Redis came back empty,
//! it also asks the persister to restore from the store.
//!
//! Times are this node's wall clock (microseconds), so nodes should keep their clocks in sync
//! (NTP); a skew shifts deadlines by that much. The node keeps in memory only what it changed
//! since the last flush (for the persister) and the sockets it holds.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use futures_util::future::join_all;
use redis::{Script, Value};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::{EngineError, LastKnown, Maintenance, OnlinePage, PresenceBackend};
use crate::cluster::{ClusterError, Feed, FeedItem, GROUPS, Redis};
use crate::domain::{
    Activity, Availability, ManualStatus, Platform, Platforms, PresenceEvent, PresenceStatus,
    PresenceView, PresenceWrite, RestoredUser, SessionId, SessionRef, StatusMode, StoredSession,
    UserId,
};
use crate::shards::{Sharded, lock};
use crate::telemetry::hot_counter;

/// The channel changes are announced on.
pub const EVENTS: &str = "ev";
/// Width of a deadline slot (as in `prelude.lua`) and the period of the sweep.
const SLOT: Duration = Duration::from_millis(250);
/// Most slots one sweep pops per group (bounds one script's run after a long pause).
const MAX_SLOTS_PER_SWEEP: u32 = 240;
/// Users per restore or evict call (bounds one script's run and argument list).
const BATCH: usize = 500;
/// Shards of the node's in-memory maps.
const SHARDS: usize = 64;
/// Capacity of the event channel.
const EVENT_CAPACITY: usize = 65_536;
/// How often coalesced keepalives are sent to Redis.
const COALESCE_EVERY: Duration = Duration::from_millis(100);
/// A keepalive is coalesced only if its session's end in Redis is at least this far away, so
/// the batch lands long before the end could be swept (even with a slow Redis).
const COALESCE_MARGIN_MS: i64 = 1_000;
/// How often the node forgets what it knew of sessions that have ended since.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

fn script(body: &str) -> Script {
    Script::new(&format!("{}\n{body}", include_str!("prelude.lua")))
}

struct Scripts {
    apply: Script,
    touches: Script,
    sweep: Script,
    read: Script,
    live: Script,
    page: Script,
    restore: Script,
    evict: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            apply: script(include_str!("apply.lua")),
            touches: script(include_str!("touches.lua")),
            sweep: script(include_str!("sweep.lua")),
            read: script(include_str!("read.lua")),
            live: script(include_str!("live.lua")),
            page: script(include_str!("page.lua")),
            restore: script(include_str!("restore.lua")),
            evict: script(include_str!("evict.lua")),
        }
    }
}

/// The keys every script of a group gets, in `prelude.lua`'s order.
fn group_keys(redis: &Redis, group: u16) -> [String; 6] {
    ["u", "sw", "on", "n", "nodes", "rv"].map(|name| redis.key(group, name))
}

fn unavailable(error: ClusterError) -> EngineError {
    EngineError::Unavailable(error.to_string())
}

/// Microseconds since the epoch as a timestamp (`None` for 0, "never").
fn from_micros(us: i64) -> Option<DateTime<Utc>> {
    (us > 0)
        .then(|| DateTime::from_timestamp_micros(us))
        .flatten()
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn mode_code(mode: StatusMode) -> i64 {
    match mode {
        StatusMode::Auto => 0,
        StatusMode::Away => 1,
        StatusMode::Dnd => 2,
    }
}

fn mode_of(code: i64) -> StatusMode {
    match code {
        1 => StatusMode::Away,
        2 => StatusMode::Dnd,
        _ => StatusMode::Auto,
    }
}

fn availability_of(code: i64) -> Option<Availability> {
    match code {
        1 => Some(Availability::Active),
        2 => Some(Availability::Idle),
        3 => Some(Availability::Dnd),
        _ => None,
    }
}

fn platform_of(bit: i64) -> Platform {
    Platform::ALL
        .into_iter()
        .find(|p| i64::from(p.bit()) == bit)
        .unwrap_or_default()
}

fn activity_code(activity: Activity) -> i64 {
    match activity {
        Activity::Keepalive => 0,
        Activity::Active => 1,
        Activity::Idle => 2,
    }
}

/// A value of a script's reply: scripts reply with integers and strings.
fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        _ => None,
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

/// The manual status from its mode, expiry (ms, 0 = none), text and emoji ("" = none).
fn manual_of(mode: i64, expires_ms: i64, text: String, emoji: String) -> ManualStatus {
    let shared = |s: String| (!s.is_empty()).then(|| std::sync::Arc::from(s));
    ManualStatus {
        mode: mode_of(mode),
        text: shared(text),
        emoji: shared(emoji),
        expires_at: (expires_ms > 0)
            .then(|| DateTime::from_timestamp_millis(expires_ms))
            .flatten(),
    }
}

/// A session as a script replied: id, last activity (µs), end (ms), held, platform.
#[derive(Debug, Clone, PartialEq)]
struct SessionReply {
    id: SessionId,
    activity: i64,
    expires_ms: i64,
    held: bool,
    platform: Platform,
}

/// A user's state as a script replied (see `reply()` in `prelude.lua`).
#[derive(Debug, Clone, PartialEq)]
struct Reply {
    changed: bool,
    view: PresenceView,
    /// The expiry of the manual status that last reset itself.
    expired_status: Option<DateTime<Utc>>,
    sessions: Vec<SessionReply>,
}

impl Reply {
    fn parse(values: &[Value]) -> Option<Self> {
        let head = values.get(..11)?;
        let n: Vec<Option<i64>> = head.iter().map(int).collect();
        let [
            Some(changed),
            Some(status),
            Some(last_seen),
            Some(seq),
            Some(availability),
            Some(platforms),
            Some(mode),
            Some(expires),
            ..,
        ] = n[..]
        else {
            return None;
        };
        let manual = manual_of(mode, expires, text(&head[8])?, text(&head[9])?);
        let expired = int(&head[10])?;
        let sessions = values[11..]
            .chunks_exact(5)
            .map(|s| {
                Some(SessionReply {
                    id: SessionId(int(&s[0])?),
                    activity: int(&s[1])?,
                    expires_ms: int(&s[2])?,
                    held: int(&s[3])? != 0,
                    platform: platform_of(int(&s[4])?),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            changed: changed == 1,
            view: PresenceView {
                status: if status == 1 {
                    PresenceStatus::Online
                } else {
                    PresenceStatus::Offline
                },
                last_seen: from_micros(last_seen),
                seq: u64::try_from(seq).unwrap_or(0),
                availability: availability_of(availability),
                platforms: Platforms::from_bits(u8::try_from(platforms).unwrap_or(0)),
                manual,
            },
            expired_status: (expired > 0)
                .then(|| DateTime::from_timestamp_millis(expired))
                .flatten(),
            sessions,
        })
    }

    /// What the persister writes for this state. A session a socket holds is stored as if its
    /// last activity were HTTP activity, so a restart without Redis treats it like one.
    fn write(&self, user: UserId, timeout: Duration) -> PresenceWrite {
        let timeout = chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
        PresenceWrite {
            user_id: user,
            status: self.view.status,
            last_seen: self.view.last_seen,
            seq: self.view.seq,
            expired_status: self.expired_status,
            sessions: self
                .sessions
                .iter()
                .filter_map(|s| {
                    let last_activity = from_micros(s.activity)?;
                    let expires_at = if s.held {
                        last_activity + timeout
                    } else {
                        DateTime::from_timestamp_millis(s.expires_ms)?
                    };
                    Some(StoredSession {
                        id: s.id,
                        platform: s.platform,
                        last_activity,
                        expires_at,
                    })
                })
                .collect(),
        }
    }
}

/// Script replies of several users, each the user id and `reply()`, prefixed by their length
/// (what `sweep.lua` and `touches.lua` return). A malformed entry is skipped.
fn parse_replies(values: &[Value]) -> Vec<(UserId, Reply)> {
    let mut replies = Vec::new();
    let mut rest = values;
    while let [len, tail @ ..] = rest {
        let len = int(len).and_then(|n| usize::try_from(n).ok()).unwrap_or(0);
        let Some((entry, after)) = (len <= tail.len()).then(|| tail.split_at(len)) else {
            break;
        };
        rest = after;
        let [user, reply @ ..] = entry else { continue };
        if let (Some(user), Some(reply)) = (int(user), Reply::parse(reply)) {
            replies.push((UserId(user), reply));
        }
    }
    replies
}

/// Coalesced keepalives of one session: its user and id, and the latest.
type PendingEntry = ((UserId, SessionId), Pending);

/// A keepalive this node answered from what it knew and sends with the next batch.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// When it happened (µs since the epoch).
    at_us: i64,
    /// The session's platform (should the session have to start again).
    platform: Platform,
}

/// The view of a user the backend holds nothing for.
fn never_active() -> PresenceView {
    PresenceView::offline(None, 0, ManualStatus::default())
}

/// What an `apply.lua` call changes.
enum Op<'a> {
    Touch(SessionRef, Activity),
    Open(SessionRef),
    Close(SessionId, Duration),
    End(SessionId),
    Status(&'a ManualStatus, LastKnown),
}

/// Presence in a shared Redis. See the module docs.
pub struct RedisBackend {
    redis: Redis,
    scripts: Scripts,
    /// Keys of each group, by group number.
    keys: Vec<[String; 6]>,
    /// How long a session stays live after its last activity.
    timeout: Duration,
    /// How long a session without real activity stays active (0: forever).
    idle_after: Duration,
    /// How long a lease of this node lasts without a refresh.
    lease: Duration,
    /// How long the sessions of a dead node's sockets survive its lease (the reconnect grace).
    grace: Duration,
    /// This node's id in Redis; a new one after every resubscription.
    node: AtomicU64,
    /// Changes heard on the feed.
    events: broadcast::Sender<PresenceEvent>,
    /// What this node changed since the last flush, by user (the newest state wins).
    dirty: Sharded<Mutex<HashMap<UserId, PresenceWrite>>>,
    /// Sockets this node holds open, by user and session.
    held: Sharded<Mutex<HashMap<(UserId, SessionRef), u32>>>,
    /// The last state a script replied for each user this node changed, for coalescing
    /// keepalives; forgotten when another node announces a change of the user, when the feed
    /// was interrupted, and once the user's sessions have ended.
    known: Sharded<Mutex<HashMap<UserId, Reply>>>,
    /// Keepalives answered but not yet sent to Redis, by user and session (the latest wins).
    pending: Sharded<Mutex<HashMap<(UserId, SessionId), Pending>>>,
    /// Whether keepalives may be coalesced: the background work that sends them is running.
    batching: AtomicBool,
    /// Whether Redis answered the last call: while it does not, nothing is coalesced, so
    /// requests that need Redis fail as they should.
    reachable: AtomicBool,
    /// The pub/sub subscriber.
    feed: Feed,
    /// Bumped when Redis came back without our state.
    lost: watch::Sender<u64>,
}

/// How sessions behave: what [`RedisBackend::new`] needs besides the connection.
#[derive(Debug, Clone, Copy)]
pub struct RedisTiming {
    /// A session ends this long after its last activity.
    pub timeout: Duration,
    /// A session turns idle this long after its last real activity (`None`: never).
    pub idle_after: Option<Duration>,
    /// A closed socket's session ends this long after the close, and a dead node's sockets'
    /// sessions this long after its lease.
    pub grace: Duration,
    /// How long this node's hold on its sockets' sessions lasts without a refresh.
    pub lease: Duration,
}

impl RedisBackend {
    /// A backend over `redis`, hearing changes through `feed` (which must subscribe to
    /// [`EVENTS`]).
    ///
    /// # Errors
    /// If Redis cannot give this node an id.
    pub async fn new(redis: Redis, feed: Feed, timing: RedisTiming) -> Result<Self, EngineError> {
        let backend = Self {
            keys: (0..GROUPS).map(|g| group_keys(&redis, g)).collect(),
            redis,
            scripts: Scripts::new(),
            timeout: timing.timeout,
            idle_after: timing.idle_after.unwrap_or(Duration::ZERO),
            lease: timing.lease,
            grace: timing.grace,
            node: AtomicU64::new(0),
            events: broadcast::channel(EVENT_CAPACITY).0,
            dirty: Sharded::new(SHARDS, Mutex::default),
            held: Sharded::new(SHARDS, Mutex::default),
            known: Sharded::new(SHARDS, Mutex::default),
            pending: Sharded::new(SHARDS, Mutex::default),
            batching: AtomicBool::new(false),
            reachable: AtomicBool::new(true),
            feed,
            lost: watch::channel(0).0,
        };
        backend.take_node_id().await?;
        Ok(backend)
    }

    /// Connects to `redis_url` with its own feed (running until `shutdown`): a backend for
    /// one-shot commands and tests, which need no bus. Keys and channels start with `prefix`.
    ///
    /// # Errors
    /// A bad URL, or Redis unreachable.
    pub async fn connect(
        redis_url: &str,
        prefix: &str,
        timing: RedisTiming,
        shutdown: CancellationToken,
    ) -> Result<Self, EngineError> {
        let redis = Redis::connect(redis_url, prefix)
            .await
            .map_err(unavailable)?;
        let feed = Feed::start(redis.clone(), &[EVENTS], shutdown);
        Self::new(redis, feed, timing).await
    }

    /// Waits (at most `within`) until this node hears changes; `false` if it does not.
    pub async fn subscribed(&self, within: Duration) -> bool {
        self.feed.subscribed(within).await
    }

    async fn take_node_id(&self) -> Result<u64, EngineError> {
        let key = self.redis.global_key("node-seq");
        let id: u64 = self
            .redis
            .run(
                |mut conn| async move { redis::cmd("INCR").arg(&key).query_async(&mut conn).await },
            )
            .await
            .map_err(unavailable)?;
        self.node.store(id, Ordering::Relaxed);
        self.refresh_lease().await;
        Ok(id)
    }

    fn node(&self) -> u64 {
        self.node.load(Ordering::Relaxed)
    }

    fn keys_of(&self, user: UserId) -> &[String; 6] {
        &self.keys[usize::from(Redis::group_of(user.0))]
    }

    /// Runs `apply.lua`.
    async fn apply(&self, user: UserId, op: Op<'_>) -> Result<Option<Reply>, EngineError> {
        let (name, session, platform, activity, grace) = match &op {
            Op::Touch(s, a) => ("touch", s.id, s.platform, *a, Duration::ZERO),
            Op::Open(s) => (
                "open",
                s.id,
                s.platform,
                Activity::Keepalive,
                Duration::ZERO,
            ),
            Op::Close(id, grace) => ("close", *id, Platform::Web, Activity::Keepalive, *grace),
            Op::End(id) => (
                "end",
                *id,
                Platform::Web,
                Activity::Keepalive,
                Duration::ZERO,
            ),
            Op::Status(..) => (
                "status",
                SessionId(0),
                Platform::Web,
                Activity::Keepalive,
                Duration::ZERO,
            ),
        };
        let mut invocation = self.scripts.apply.prepare_invoke();
        for key in self.keys_of(user) {
            invocation.key(key);
        }
        invocation
            .arg(name)
            .arg(user.0)
            .arg(session.0)
            .arg(micros(wall_now()))
            .arg(millis(self.timeout))
            .arg(millis(grace))
            .arg(self.node())
            .arg(GROUPS)
            .arg(self.redis.channel(EVENTS))
            .arg(millis(self.idle_after))
            .arg(platform.bit())
            .arg(activity_code(activity));
        if let Op::Status(manual, last) = op {
            invocation
                .arg(mode_code(manual.mode))
                .arg(manual.text.as_deref().unwrap_or(""))
                .arg(manual.emoji.as_deref().unwrap_or(""))
                .arg(manual.expires_at.map_or(0, |at| at.timestamp_millis()))
                .arg(last.last_seen.map_or(0, micros))
                .arg(i64::try_from(last.seq).unwrap_or(i64::MAX));
        }
        let values: Vec<Value> = self
            .reach(
                self.redis
                    .run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
                    .await,
            )
            .map_err(unavailable)?;
        match values.first().and_then(int) {
            Some(-1) => Err(EngineError::SessionEnded),
            Some(-2) => Ok(None),
            _ => {
                let reply = Reply::parse(&values).ok_or_else(|| {
                    EngineError::Unavailable(format!("unexpected script reply {values:?}"))
                })?;
                self.record(user, &reply);
                Ok(Some(reply))
            }
        }
    }

    /// Notes whether Redis answered a call, and passes its result on.
    fn reach<T>(&self, result: Result<T, ClusterError>) -> Result<T, ClusterError> {
        self.reachable.store(result.is_ok(), Ordering::Relaxed);
        result
    }

    /// Keeps what a script changed for the persister and for coalescing, and counts changes.
    fn record(&self, user: UserId, reply: &Reply) {
        if reply.changed {
            metrics::counter!("lastseen_presence_transitions_total", "to" => reply.view.status.as_str())
                .increment(1);
        }
        let write = reply.write(user, self.timeout);
        lock(self.dirty.get(&user)).insert(user, write);
        let mut known = lock(self.known.get(&user));
        if reply.sessions.is_empty() {
            known.remove(&user);
        } else {
            known.insert(user, reply.clone());
        }
    }

    /// Answers a keepalive of a session this node knows is live in Redis with its end far
    /// away, without a call: the keepalive is queued and sent with the next batch (within
    /// [`COALESCE_EVERY`]) at its own time, so the session's end and `last_seen` come out as if
    /// it had been sent at once. `None` when the keepalive must go to Redis now: the user's
    /// state is unknown here or may be about to change (a session near its end, or ended), or
    /// Redis is not answering (the request then fails as it should).
    fn coalesce(&self, user: UserId, session: SessionRef) -> Option<PresenceView> {
        if !self.batching.load(Ordering::Relaxed) || !self.reachable.load(Ordering::Relaxed) {
            return None;
        }
        let now = wall_now();
        let (now_us, timeout_ms) = (micros(now), millis(self.timeout));
        let now_ms = now_us.div_euclid(1000);
        let view = {
            let mut known = lock(self.known.get(&user));
            let reply = known.get_mut(&user)?;
            let live = reply.sessions.iter_mut().find(|s| s.id == session.id)?;
            if !live.held && live.expires_ms < now_ms.saturating_add(COALESCE_MARGIN_MS) {
                return None;
            }
            live.activity = live.activity.max(now_us);
            live.expires_ms = live.expires_ms.max(now_ms.saturating_add(timeout_ms));
            reply.view.last_seen = reply.view.last_seen.max(Some(now));
            reply.view.clone()
        };
        lock(self.pending.get(&user)).insert(
            (user, session.id),
            Pending {
                at_us: now_us,
                platform: session.platform,
            },
        );
        // The persister learns this session's activity; the rest of the user's state is
        // whatever was recorded last (a store write keeps the newest of each).
        let stored = StoredSession {
            id: session.id,
            platform: session.platform,
            last_activity: now,
            expires_at: now
                + chrono::Duration::from_std(self.timeout).unwrap_or(chrono::Duration::MAX),
        };
        let mut dirty = lock(self.dirty.get(&user));
        let write = dirty
            .entry(user)
            .or_insert_with(|| PresenceWrite::of_view(user, &view));
        write.last_seen = write.last_seen.max(view.last_seen);
        match write.sessions.iter_mut().find(|s| s.id == session.id) {
            Some(s) if s.last_activity <= now => *s = stored,
            Some(_) => {}
            None => write.sessions.push(stored),
        }
        Some(view)
    }

    /// Sends the coalesced keepalives: one `touches.lua` call per group (and per [`BATCH`]).
    /// What Redis did not take is kept for the next batch.
    async fn send_pending(&self) {
        let mut by_group: HashMap<u16, Vec<PendingEntry>> = HashMap::new();
        for shard in self.pending.all() {
            for (key, pending) in std::mem::take(&mut *lock(shard)) {
                by_group
                    .entry(Redis::group_of(key.0.0))
                    .or_default()
                    .push((key, pending));
            }
        }
        if by_group.is_empty() {
            return;
        }
        let channel = self.redis.channel(EVENTS);
        let calls = by_group
            .values()
            .flat_map(|entries| entries.chunks(BATCH))
            .map(|chunk| {
                let mut invocation = self.scripts.touches.prepare_invoke();
                for key in self.keys_of(chunk[0].0.0) {
                    invocation.key(key);
                }
                invocation
                    .arg(millis(self.timeout))
                    .arg(GROUPS)
                    .arg(&channel)
                    .arg(millis(self.idle_after));
                for ((user, session), pending) in chunk {
                    invocation
                        .arg(user.0)
                        .arg(session.0)
                        .arg(pending.at_us)
                        .arg(pending.platform.bit());
                }
                async move {
                    let result = self
                        .redis
                        .run(|mut conn| async move {
                            invocation.invoke_async::<Vec<Value>>(&mut conn).await
                        })
                        .await;
                    (chunk, result)
                }
            });
        for (chunk, result) in join_all(calls).await {
            match self.reach(result) {
                Ok(values) => {
                    for (user, reply) in parse_replies(&values) {
                        self.record(user, &reply);
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "could not send coalesced keepalives; retrying");
                    for &(key, pending) in chunk {
                        let mut shard = lock(self.pending.get(&key.0));
                        let kept = shard.entry(key).or_insert(pending);
                        kept.at_us = kept.at_us.max(pending.at_us);
                    }
                }
            }
        }
    }

    /// Forgets what this node knew of users whose sessions have all ended by now.
    fn prune_known(&self) {
        let now_ms = Utc::now().timestamp_millis();
        for shard in self.known.all() {
            lock(shard).retain(|_, reply| {
                reply
                    .sessions
                    .iter()
                    .any(|s| s.held || s.expires_ms > now_ms)
            });
        }
    }

    /// Forgets everything this node knew of users' state (the feed missed changes).
    fn forget_known(&self) {
        for shard in self.known.all() {
            lock(shard).clear();
        }
    }

    fn hold(&self, user: UserId, session: SessionRef, delta: i32) {
        let mut held = lock(self.held.get(&user));
        let count = held.entry((user, session)).or_default();
        *count = count.saturating_add_signed(delta);
        if *count == 0 {
            held.remove(&(user, session));
        }
    }

    /// Refreshes this node's lease in every group.
    async fn refresh_lease(&self) {
        let expiry = Utc::now().timestamp_millis() + millis(self.lease);
        let node = self.node();
        let calls = (0..GROUPS).map(|g| {
            let key = self.redis.key(g, "nodes");
            self.redis.run(move |mut conn| async move {
                redis::cmd("HSET")
                    .arg(&key)
                    .arg(node)
                    .arg(expiry)
                    .query_async::<()>(&mut conn)
                    .await
            })
        });
        for result in join_all(calls).await {
            if let Err(error) = result {
                tracing::warn!(%error, "could not refresh this node's lease");
                return;
            }
        }
    }

    /// Sweeps every group once; returns how many users went offline.
    async fn sweep(&self) -> Result<usize, EngineError> {
        let now = micros(wall_now());
        let channel = self.redis.channel(EVENTS);
        let calls = self.keys.iter().map(|keys| {
            let mut invocation = self.scripts.sweep.prepare_invoke();
            for key in keys {
                invocation.key(key);
            }
            invocation
                .arg(now)
                .arg(GROUPS)
                .arg(&channel)
                .arg(millis(self.grace))
                .arg(MAX_SLOTS_PER_SWEEP)
                .arg(millis(self.idle_after));
            self.redis.run(move |mut conn| async move {
                invocation.invoke_async::<Vec<Value>>(&mut conn).await
            })
        });
        let mut offline = 0;
        for result in join_all(calls).await {
            let values = self.reach(result).map_err(unavailable)?;
            for (user, reply) in parse_replies(&values) {
                offline += usize::from(reply.changed && !reply.view.status.is_online());
                self.record(user, &reply);
            }
        }
        Ok(offline)
    }

    /// After the feed resubscribed: take a new node id and register the sockets this node
    /// holds again under it (the old id's holds end when its lease runs out, by then
    /// superseded), and ask for a restore if Redis lost our state.
    async fn rejoin(&self) {
        let restored = self.redis.global_key("restored");
        let present: Result<bool, _> = self
            .redis
            .run(|mut conn| async move {
                redis::cmd("EXISTS")
                    .arg(&restored)
                    .query_async(&mut conn)
                    .await
            })
            .await;
        if matches!(present, Ok(false)) {
            tracing::warn!("Redis holds no presence state; restoring from the database");
            self.lost.send_modify(|n| *n += 1);
        }
        if let Err(error) = self.take_node_id().await {
            tracing::warn!(%error, "could not rejoin Redis");
            return;
        }
        for ((user, session), count) in self.held_sockets() {
            for _ in 0..count {
                if let Err(error) = self.apply(user, Op::Open(session)).await {
                    tracing::warn!(%error, "could not register an open socket again");
                }
            }
        }
        tracing::info!(node = self.node(), "rejoined Redis");
    }

    fn held_sockets(&self) -> Vec<((UserId, SessionRef), u32)> {
        self.held
            .all()
            .iter()
            .flat_map(|shard| {
                lock(shard)
                    .iter()
                    .map(|(k, v)| (*k, *v))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Forwards changes from the feed to local subscribers; rejoins after a resubscription.
    async fn listen(&self, shutdown: &CancellationToken) {
        use broadcast::error::RecvError;
        let mut items = self.feed.subscribe();
        loop {
            let item = tokio::select! {
                () = shutdown.cancelled() => return,
                item = items.recv() => item,
            };
            match item {
                Ok(FeedItem::Message { channel, payload }) if channel == EVENTS => {
                    match parse_event(&payload) {
                        Some(event) => {
                            let user = event.user_id;
                            let mut known = lock(self.known.get(&user));
                            if known.get(&user).is_some_and(|r| r.view.seq != event.seq) {
                                // Another node (or a later call of ours) changed the user.
                                known.remove(&user);
                            }
                            drop(known);
                            let _ = self.events.send(event);
                        }
                        None => tracing::warn!(payload, "malformed presence event"),
                    }
                }
                Ok(FeedItem::Message { .. }) => {}
                // The first subscription is the node joining, not a loss.
                Ok(FeedItem::Resubscribed) if self.feed.subscriptions() > 1 => {
                    self.forget_known();
                    self.rejoin().await;
                }
                Ok(FeedItem::Resubscribed) => {}
                Err(RecvError::Lagged(missed)) => {
                    self.forget_known();
                    tracing::warn!(missed, "presence feed fell behind");
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Records the activity of the sessions this node's sockets hold, twice per timeout, so
    /// their stored copy stays live (a restart without Redis then restores them).
    async fn refresh_held(&self) {
        for ((user, session), _) in self.held_sockets() {
            if let Err(error) = self
                .apply(user, Op::Touch(session, Activity::Keepalive))
                .await
            {
                tracing::debug!(%error, "could not refresh a held session");
            }
        }
    }
}

/// A change as `settle()` in `prelude.lua` announces it: user, status, last seen (µs), seq,
/// availability, platforms, manual mode and expiry (ms), then `[text, emoji]` as JSON.
fn parse_event(payload: &str) -> Option<PresenceEvent> {
    let mut parts = payload.splitn(9, ' ');
    let mut next = || parts.next()?.parse::<i64>().ok();
    let (user, status, last_seen, seq) = (next()?, next()?, next()?, next()?);
    let (availability, platforms, mode, expires) = (next()?, next()?, next()?, next()?);
    let tail = payload.splitn(9, ' ').nth(8)?;
    let [text, emoji]: [String; 2] = serde_json::from_str(tail).ok()?;
    Some(PresenceEvent {
        user_id: UserId(user),
        status: if status == 1 {
            PresenceStatus::Online
        } else {
            PresenceStatus::Offline
        },
        last_seen: from_micros(last_seen)?,
        seq: u64::try_from(seq).ok()?,
        availability: availability_of(availability),
        platforms: Platforms::from_bits(u8::try_from(platforms).ok()?),
        manual: manual_of(mode, expires, text, emoji),
    })
}

/// The wall clock at the microsecond precision timestamps are stored with.
fn wall_now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

#[async_trait]
impl PresenceBackend for RedisBackend {
    async fn touch(
        &self,
        user: UserId,
        session: SessionRef,
        activity: Activity,
    ) -> Result<PresenceView, EngineError> {
        hot_counter!("lastseen_activity_total").increment(1);
        if activity == Activity::Keepalive
            && let Some(view) = self.coalesce(user, session)
        {
            return Ok(view);
        }
        let reply = self.apply(user, Op::Touch(session, activity)).await?;
        Ok(reply.map_or_else(never_active, |r| r.view))
    }

    async fn open_socket(
        &self,
        user: UserId,
        session: SessionRef,
    ) -> Result<PresenceView, EngineError> {
        let reply = self.apply(user, Op::Open(session)).await?;
        self.hold(user, session, 1);
        Ok(reply.map_or_else(never_active, |r| r.view))
    }

    async fn close_socket(
        &self,
        user: UserId,
        session: SessionId,
        grace: Duration,
    ) -> Result<(), EngineError> {
        // Forgotten locally first: if Redis is down now, a rejoin must not hold it again.
        let held = self
            .held_sockets()
            .into_iter()
            .find(|((u, s), _)| *u == user && s.id == session);
        if let Some(((_, session), _)) = held {
            self.hold(user, session, -1);
        }
        self.apply(user, Op::Close(session, grace)).await.map(drop)
    }

    async fn end_session(
        &self,
        user: UserId,
        session: SessionId,
    ) -> Result<PresenceView, EngineError> {
        let reply = self.apply(user, Op::End(session)).await?;
        Ok(reply.map_or_else(never_active, |r| r.view))
    }

    async fn set_status(
        &self,
        user: UserId,
        manual: ManualStatus,
        last: LastKnown,
    ) -> Result<PresenceView, EngineError> {
        let reply = self.apply(user, Op::Status(&manual, last)).await?;
        Ok(reply.map_or_else(never_active, |r| r.view))
    }

    async fn live_sessions(&self, user: UserId) -> Result<Vec<SessionId>, EngineError> {
        let mut invocation = self.scripts.live.prepare_invoke();
        for key in self.keys_of(user) {
            invocation.key(key);
        }
        invocation.arg(user.0);
        let ids: Vec<i64> = self
            .redis
            .run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
            .map_err(unavailable)?;
        Ok(ids.into_iter().map(SessionId).collect())
    }

    async fn presence(&self, users: &[UserId]) -> Result<Vec<(UserId, PresenceView)>, EngineError> {
        let mut by_group: HashMap<u16, Vec<UserId>> = HashMap::new();
        for &user in users {
            by_group
                .entry(Redis::group_of(user.0))
                .or_default()
                .push(user);
        }
        let calls = by_group.into_iter().map(|(group, ids)| {
            let mut invocation = self.scripts.read.prepare_invoke();
            for key in &self.keys[usize::from(group)] {
                invocation.key(key);
            }
            for id in &ids {
                invocation.arg(id.0);
            }
            async move {
                let values: Vec<Value> = self
                    .redis
                    .run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
                    .await?;
                Ok::<_, ClusterError>((ids, values))
            }
        });
        let mut found = Vec::with_capacity(users.len());
        for result in join_all(calls).await {
            let (ids, values) = result.map_err(unavailable)?;
            for (id, state) in ids.into_iter().zip(values.chunks_exact(11)) {
                if int(&state[0]) != Some(1) {
                    continue;
                }
                // `read.lua` gives reply() without `changed`: put a 0 in front.
                let mut reply = vec![Value::Int(0)];
                reply.extend_from_slice(&state[1..]);
                if let Some(reply) = Reply::parse(&reply) {
                    found.push((id, reply.view));
                }
            }
        }
        Ok(found)
    }

    async fn online_page(
        &self,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<OnlinePage, EngineError> {
        let groups = i64::from(GROUPS);
        let calls = (0..GROUPS).map(|g| {
            let group = i64::from(g);
            // The first bit b whose user b * GROUPS + g is above `after`.
            let first = after.map_or(0, |a| {
                let over = a.0 - group;
                if over < 0 { 0 } else { over / groups + 1 }
            });
            let mut invocation = self.scripts.page.prepare_invoke();
            for key in &self.keys[usize::from(g)] {
                invocation.key(key);
            }
            invocation.arg(first).arg(limit).arg(groups).arg(group);
            self.redis.run(move |mut conn| async move {
                invocation.invoke_async::<Vec<i64>>(&mut conn).await
            })
        });
        let mut ids: Vec<UserId> = Vec::new();
        for result in join_all(calls).await {
            ids.extend(result.map_err(unavailable)?.into_iter().map(UserId));
        }
        ids.sort_unstable();
        ids.truncate(limit);
        let mut users = self.presence(&ids).await?;
        users.sort_unstable_by_key(|(id, _)| *id);
        Ok(OnlinePage {
            users,
            total: self.online_count().await?,
        })
    }

    async fn online_count(&self) -> Result<usize, EngineError> {
        let calls = (0..GROUPS).map(|g| {
            let key = self.redis.key(g, "n");
            self.redis.run(move |mut conn| async move {
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<i64>>(&mut conn)
                    .await
            })
        });
        let mut total = 0_i64;
        for result in join_all(calls).await {
            total += result.map_err(unavailable)?.unwrap_or(0);
        }
        Ok(usize::try_from(total).unwrap_or(0))
    }

    async fn ready(&self) -> Result<(), EngineError> {
        self.redis.ping().await.map_err(unavailable)
    }

    fn subscribe(&self) -> broadcast::Receiver<PresenceEvent> {
        self.events.subscribe()
    }
}

#[async_trait]
impl Maintenance for RedisBackend {
    async fn expire_due(&self) -> Result<usize, EngineError> {
        self.sweep().await
    }

    async fn run(&self, shutdown: CancellationToken) {
        let sweeps = async {
            let mut ticker = tokio::time::interval(SLOT);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                if let Err(error) = self.sweep().await {
                    tracing::debug!(%error, "presence sweep failed");
                }
            }
        };
        let leases = async {
            let mut ticker = tokio::time::interval(self.lease / 3);
            loop {
                ticker.tick().await;
                self.refresh_lease().await;
            }
        };
        let holds = async {
            let mut ticker = tokio::time::interval(self.timeout / 2);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                self.refresh_held().await;
            }
        };
        let batches = async {
            let mut ticker = tokio::time::interval(COALESCE_EVERY);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut prune_at = tokio::time::Instant::now() + PRUNE_EVERY;
            loop {
                ticker.tick().await;
                self.send_pending().await;
                if tokio::time::Instant::now() >= prune_at {
                    self.prune_known();
                    prune_at += PRUNE_EVERY;
                }
            }
        };
        self.batching.store(true, Ordering::Relaxed);
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = self.listen(&shutdown) => {}
            () = sweeps => {}
            () = leases => {}
            () = holds => {}
            () = batches => {}
        }
        // What was answered goes to Redis before the node stops.
        self.batching.store(false, Ordering::Relaxed);
        self.send_pending().await;
    }

    async fn take_dirty(&self) -> Vec<PresenceWrite> {
        self.dirty
            .all()
            .iter()
            .flat_map(|shard| std::mem::take(&mut *lock(shard)).into_values())
            .collect()
    }

    async fn mark_dirty(&self, batch: Vec<PresenceWrite>) {
        for write in batch {
            let mut shard = lock(self.dirty.get(&write.user_id));
            // A newer state recorded meanwhile wins; it includes everything the old one had.
            shard.entry(write.user_id).or_insert(write);
        }
    }

    async fn evict_persisted(&self, batch: &[PresenceWrite]) {
        let mut by_group: HashMap<u16, Vec<&PresenceWrite>> = HashMap::new();
        let evictable = batch
            .iter()
            .filter(|w| !w.status.is_online() && w.sessions.is_empty());
        for write in evictable {
            by_group
                .entry(Redis::group_of(write.user_id.0))
                .or_default()
                .push(write);
        }
        for (group, writes) in by_group {
            for chunk in writes.chunks(BATCH) {
                let mut invocation = self.scripts.evict.prepare_invoke();
                for key in &self.keys[usize::from(group)] {
                    invocation.key(key);
                }
                for write in chunk {
                    invocation
                        .arg(write.user_id.0)
                        .arg(i64::try_from(write.seq).unwrap_or(i64::MAX));
                }
                let evicted: Result<i64, _> = self
                    .redis
                    .run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
                    .await;
                if let Err(error) = evicted {
                    tracing::debug!(%error, "could not evict persisted users");
                }
            }
        }
    }

    async fn claim_restore(&self) -> Result<bool, EngineError> {
        let restored = self.redis.global_key("restored");
        let restoring = self.redis.global_key("restoring");
        let node = self.node();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let (restored, restoring) = (restored.clone(), restoring.clone());
            let (done, claimed): (bool, bool) = self
                .redis
                .run(|mut conn| async move {
                    let done: bool = redis::cmd("EXISTS")
                        .arg(&restored)
                        .query_async(&mut conn)
                        .await?;
                    if done {
                        return Ok((true, false));
                    }
                    let claimed: Option<String> = redis::cmd("SET")
                        .arg(&restoring)
                        .arg(node)
                        .arg("NX")
                        .arg("PX")
                        .arg(120_000)
                        .query_async(&mut conn)
                        .await?;
                    Ok((false, claimed.is_some()))
                })
                .await
                .map_err(unavailable)?;
            if done {
                return Ok(false);
            }
            if claimed {
                return Ok(true);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(EngineError::Unavailable(
                    "another node's restore did not finish".into(),
                ));
            }
            // Another node is restoring: wait for it.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn restore(&self, users: Vec<RestoredUser>) -> Result<(), EngineError> {
        let mut by_group: HashMap<u16, Vec<RestoredUser>> = HashMap::new();
        for user in users {
            by_group
                .entry(Redis::group_of(user.user_id.0))
                .or_default()
                .push(user);
        }
        let now = micros(wall_now());
        for (group, users) in by_group {
            for chunk in users.chunks(BATCH) {
                let mut invocation = self.scripts.restore.prepare_invoke();
                for key in &self.keys[usize::from(group)] {
                    invocation.key(key);
                }
                invocation.arg(now).arg(GROUPS).arg(millis(self.idle_after));
                for user in chunk {
                    let manual = &user.manual;
                    invocation
                        .arg(user.user_id.0)
                        .arg(i64::try_from(user.seq).unwrap_or(i64::MAX))
                        .arg(user.last_seen.map_or(0, micros))
                        .arg(mode_code(manual.mode))
                        .arg(manual.text.as_deref().unwrap_or(""))
                        .arg(manual.emoji.as_deref().unwrap_or(""))
                        .arg(manual.expires_at.map_or(0, |at| at.timestamp_millis()))
                        .arg(user.sessions.len());
                    for session in &user.sessions {
                        invocation
                            .arg(session.id.0)
                            .arg(micros(session.last_activity))
                            .arg(session.expires_at.timestamp_millis())
                            .arg(session.platform.bit());
                    }
                }
                self.redis
                    .run(|mut conn| async move { invocation.invoke_async::<i64>(&mut conn).await })
                    .await
                    .map_err(unavailable)?;
            }
        }
        Ok(())
    }

    async fn restored(&self) -> Result<(), EngineError> {
        let restored = self.redis.global_key("restored");
        let restoring = self.redis.global_key("restoring");
        // Two commands, not a pipeline: on a cluster the keys live in different slots.
        self.redis
            .run(|mut conn| async move {
                redis::cmd("SET")
                    .arg(&restored)
                    .arg(1)
                    .query_async::<()>(&mut conn)
                    .await?;
                redis::cmd("DEL")
                    .arg(&restoring)
                    .query_async::<()>(&mut conn)
                    .await
            })
            .await
            .map_err(unavailable)
    }

    fn lost_state(&self) -> watch::Receiver<u64> {
        self.lost.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(values: &[i64]) -> Vec<Value> {
        values.iter().map(|&n| Value::Int(n)).collect()
    }

    #[test]
    fn replies_and_events_parse() {
        let mut values = ints(&[1, 1, 1_700_000_000_000_000, 42, 3, 6, 2, 1_700_000_600_000]);
        values.push(Value::BulkString(b"In a meeting".to_vec()));
        values.push(Value::BulkString(Vec::new()));
        values.extend(ints(&[
            0,
            7,
            1_700_000_000_000_000,
            1_700_000_300_000,
            1,
            2,
        ]));
        let reply = Reply::parse(&values).unwrap();
        assert!(reply.changed);
        assert_eq!(reply.view.status, PresenceStatus::Online);
        assert_eq!(reply.view.seq, 42);
        assert_eq!(reply.view.availability, Some(Availability::Dnd));
        assert_eq!(
            reply.view.platforms.to_vec(),
            vec![Platform::Mobile, Platform::Web]
        );
        assert_eq!(reply.view.manual.mode, StatusMode::Dnd);
        assert_eq!(reply.view.manual.text.as_deref(), Some("In a meeting"));
        assert_eq!(reply.view.manual.emoji, None);
        assert_eq!(reply.sessions[0].platform, Platform::Mobile);
        let write = reply.write(UserId(3), Duration::from_secs(300));
        let stored = &write.sessions[0];
        assert_eq!(
            stored.expires_at - stored.last_activity,
            chrono::Duration::seconds(300)
        );
        assert_eq!(Reply::parse(&ints(&[1, 2])), None);

        let event =
            parse_event(r#"5 0 1700000000123456 1700000000999999 0 0 0 0 ["",""]"#).unwrap();
        assert_eq!(event.user_id, UserId(5));
        assert_eq!(event.status, PresenceStatus::Offline);
        assert_eq!(event.last_seen.timestamp_micros(), 1_700_000_000_123_456);
        assert_eq!(event.availability, None);
        let event =
            parse_event(r#"5 1 1700000000123456 1700000000999999 1 4 0 0 ["on a walk","🚶"]"#)
                .unwrap();
        assert_eq!(event.manual.text.as_deref(), Some("on a walk"));
        assert_eq!(event.availability, Some(Availability::Active));
        assert_eq!(parse_event("5 0 x 1"), None);
    }
}
