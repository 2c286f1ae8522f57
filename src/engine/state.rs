//! Pure presence transitions for one user: (state, now, input) in, (new state, change) out.
//!
//! No I/O and no clock reads happen here; callers pass both clocks in. [`Tick`] (tokio's clock,
//! counted from the engine's origin) decides deadlines, `DateTime<Utc>` is only recorded as the
//! user-visible `last_seen` and orders changes (`seq`).
//!
//! What a viewer can see of a user is its *signature*: online status, availability, the
//! platforms of the live sessions, and the manual status's text and emoji. Every operation that
//! changes the signature is a change, with a new `seq`; operations that do not (a heartbeat of
//! an active session, say) announce nothing.
//!
//! Memory: an online user is one [`UserState`] of 72 bytes with its session inline.
//! Timestamps are 8-byte counts ([`Tick`], [`Wall`]) rather than `Instant` (16 bytes) and
//! `DateTime` (12, 16 as an `Option`); what few users have (a second session, a manual status)
//! sits behind a pointer.

use std::ops::Add;

use chrono::{DateTime, Utc};
use tokio::time::{Duration, Instant};

use crate::domain::{
    Activity, Availability, ManualStatus, Platform, Platforms, PresenceStatus, PresenceView,
    RestoredUser, SessionId, StatusMode, next_seq,
};

/// A point on tokio's clock, as nanoseconds since the engine's origin: 8 bytes where an
/// `Instant` takes 16, and exact (tokio's clock counts nanoseconds too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tick(u64);

impl Tick {
    /// The engine's origin.
    pub const ZERO: Self = Self(0);

    /// `at` counted from `origin` (an instant before the origin counts as the origin).
    pub fn since(origin: Instant, at: Instant) -> Self {
        Self::ZERO + at.saturating_duration_since(origin)
    }

    /// This point as an instant, given the origin it counts from.
    pub fn instant(self, origin: Instant) -> Instant {
        origin + Duration::from_nanos(self.0)
    }

    /// How long after `earlier` this is (zero if it is not after it).
    pub fn saturating_since(self, earlier: Self) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Tick {
    type Output = Self;

    fn add(self, d: Duration) -> Self {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(nanos))
    }
}

/// A wall-clock time as microseconds since the Unix epoch, the precision timestamps are stored
/// with: 8 bytes where a `DateTime<Utc>` takes 12.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Wall(i64);

impl Wall {
    /// Stands for "never" in an optional field; no `DateTime` maps to it.
    const NONE: Self = Self(i64::MIN);

    /// `at`, to the microsecond.
    pub fn of(at: DateTime<Utc>) -> Self {
        Self(at.timestamp_micros())
    }

    /// Back to a `DateTime` (every value made by [`Wall::of`] converts back exactly).
    pub fn at(self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.0).unwrap_or_default()
    }

    fn of_opt(at: Option<DateTime<Utc>>) -> Self {
        at.map_or(Self::NONE, Self::of)
    }

    fn get(self) -> Option<DateTime<Utc>> {
        (self != Self::NONE).then(|| self.at())
    }
}

/// The timing rules a user's state follows.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A session ends this long after its last activity.
    pub timeout: Duration,
    /// A session without real activity for this long is idle (`None`: never automatically).
    pub idle_after: Option<Duration>,
    /// A session held by a socket is looked at again after this long, and its activity
    /// recorded (so the stored copy stays live).
    pub hold: Duration,
}

/// One live session of a user (40 bytes).
#[derive(Debug, Clone)]
pub struct SessionState {
    /// Which session.
    pub id: SessionId,
    /// When the session ends unless it has activity again; while a socket holds it, when it
    /// is looked at again.
    pub expires_at: Tick,
    /// Last activity on the wall clock, persisted for restarts.
    pub last_activity_wall: Wall,
    /// The last real user activity (for automatic idle).
    pub real_activity: Tick,
    /// Open sockets of this session. While any is open the session never expires.
    pub sockets: u32,
    /// Its device platform.
    pub platform: Platform,
    /// Whether the user is at this device.
    pub active: bool,
    /// The last socket closed and the session is within its reconnect grace.
    pub in_grace: bool,
}

/// The live sessions of a user: one inline (nearly every online user has exactly one), two or
/// more in one allocation. 40 bytes, no more than one session: the allocation's pointer sits
/// beside the bytes where the inline session's flags say which form this is.
#[derive(Debug, Clone, Default)]
pub struct Sessions(Held);

#[derive(Debug, Clone, Default)]
enum Held {
    #[default]
    None,
    One(SessionState),
    /// At least two.
    #[expect(
        clippy::box_collection,
        reason = "8 bytes beside the inline session's flags instead of a 24-byte Vec"
    )]
    Many(Box<Vec<SessionState>>),
}

impl Sessions {
    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        matches!(self.0, Held::None)
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn as_slice(&self) -> &[SessionState] {
        match &self.0 {
            Held::None => &[],
            Held::One(session) => std::slice::from_ref(session),
            Held::Many(sessions) => sessions,
        }
    }

    /// Every session.
    pub fn iter(&self) -> impl Iterator<Item = &SessionState> {
        self.as_slice().iter()
    }

    /// Every session, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut SessionState> {
        let sessions: &mut [SessionState] = match &mut self.0 {
            Held::None => &mut [],
            Held::One(session) => std::slice::from_mut(session),
            Held::Many(sessions) => sessions,
        };
        sessions.iter_mut()
    }

    fn push(&mut self, session: SessionState) {
        self.0 = match std::mem::take(&mut self.0) {
            Held::None => Held::One(session),
            Held::One(first) => Held::Many(Box::new(vec![first, session])),
            Held::Many(mut sessions) => {
                sessions.push(session);
                Held::Many(sessions)
            }
        };
    }

    fn retain(&mut self, mut keep: impl FnMut(&SessionState) -> bool) {
        self.0 = match std::mem::take(&mut self.0) {
            Held::One(session) if keep(&session) => Held::One(session),
            Held::None | Held::One(_) => Held::None,
            Held::Many(mut sessions) => {
                sessions.retain(|s| keep(s));
                match sessions.len() {
                    0 => Held::None,
                    1 => sessions.pop().map_or(Held::None, Held::One),
                    _ => Held::Many(sessions),
                }
            }
        };
    }
}

/// What few users have: a manual status, and the expiry of one that reset itself.
#[derive(Debug, Clone, Default)]
struct Rare {
    /// The user's manual status.
    manual: ManualStatus,
    /// When the manual status resets itself.
    manual_expires: Option<Tick>,
    /// The expiry of the manual status that last reset itself, until the persister takes it.
    expired_status: Option<DateTime<Utc>>,
}

/// The manual status of a user that has none set.
static NO_MANUAL: ManualStatus = ManualStatus {
    mode: StatusMode::Auto,
    text: None,
    emoji: None,
    expires_at: None,
};

/// Presence of one user. Invariant: `status` is online iff `sessions` is not empty.
#[derive(Debug, Clone)]
pub struct UserState {
    /// Live sessions.
    pub sessions: Sessions,
    /// Sequence number of the last change.
    pub seq: u64,
    /// Wall time of the last activity of any session ([`Wall::NONE`]: never).
    last_seen: Wall,
    /// The manual status and its reset; `None` while there is neither.
    rare: Option<Box<Rare>>,
    /// The deadline slot this user's single entry in the deadline index sits in (0: none). An
    /// index entry with another slot is stale and is dropped when it fires. Slots are 100 ms,
    /// so 32 bits last 13 years of uptime; later slots saturate (see `deadlines::slot32`).
    pub armed_slot: u32,
    /// Current status.
    pub status: PresenceStatus,
    /// Changed since the persister last wrote it.
    pub dirty: bool,
}

/// What a viewer can see of a user: a change of it is announced.
type Signature = (
    PresenceStatus,
    Option<Availability>,
    Platforms,
    Option<std::sync::Arc<str>>,
    Option<std::sync::Arc<str>>,
);

/// A visible change of one user, as published to subscribers.
pub type Change = Option<PresenceView>;

impl UserState {
    /// A user with no sessions, as loaded from storage or first seen.
    pub fn offline(seq: u64, last_seen: Option<DateTime<Utc>>, manual: ManualStatus) -> Self {
        let mut user = Self {
            sessions: Sessions::default(),
            status: PresenceStatus::Offline,
            seq,
            last_seen: Wall::of_opt(last_seen),
            rare: None,
            armed_slot: 0,
            dirty: false,
        };
        if !manual.is_default() || manual.expires_at.is_some() {
            user.rare_mut().manual = manual;
        }
        user
    }

    /// A user as stored, restored at (`now`, `wall`): each session is live until its stored
    /// end, but at most `timing.timeout` from now, and starts active. What [`UserState::touch`]
    /// of each session would give, without building the changes nobody is told about.
    pub fn restored(
        restored: &RestoredUser,
        manual_expires: Option<Tick>,
        now: Tick,
        wall: DateTime<Utc>,
        timing: &Timing,
    ) -> Self {
        let mut user = Self::offline(restored.seq, restored.last_seen, restored.manual.clone());
        user.set_manual_expires(manual_expires);
        for stored in &restored.sessions {
            let remaining = (stored.expires_at - wall).to_std().unwrap_or_default();
            let expires_at = now + remaining.min(timing.timeout);
            let last_activity = Wall::of(stored.last_activity);
            user.last_seen = user.last_seen.max(last_activity);
            let found = user.sessions.iter_mut().find(|s| s.id == stored.id);
            match found {
                Some(s) => {
                    s.expires_at = s.expires_at.max(expires_at);
                    s.last_activity_wall = s.last_activity_wall.max(last_activity);
                }
                None => user.sessions.push(SessionState {
                    id: stored.id,
                    platform: stored.platform,
                    expires_at,
                    last_activity_wall: last_activity,
                    real_activity: now,
                    active: true,
                    sockets: 0,
                    in_grace: false,
                }),
            }
        }
        if !user.sessions.is_empty() {
            user.status = PresenceStatus::Online;
        }
        user
    }

    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_default()
    }

    /// Drops the rare part once it holds nothing.
    fn tidy(&mut self) {
        let empty = self.rare.as_ref().is_some_and(|rare| {
            rare.manual == NO_MANUAL
                && rare.manual_expires.is_none()
                && rare.expired_status.is_none()
        });
        if empty {
            self.rare = None;
        }
    }

    /// Wall time of the last activity of any session.
    pub fn last_seen(&self) -> Option<DateTime<Utc>> {
        self.last_seen.get()
    }

    /// Sets [`UserState::last_seen`].
    pub fn set_last_seen(&mut self, at: Option<DateTime<Utc>>) {
        self.last_seen = Wall::of_opt(at);
    }

    /// The user's manual status.
    pub fn manual(&self) -> &ManualStatus {
        self.rare.as_ref().map_or(&NO_MANUAL, |rare| &rare.manual)
    }

    /// When the manual status resets itself.
    pub fn manual_expires(&self) -> Option<Tick> {
        self.rare.as_ref().and_then(|rare| rare.manual_expires)
    }

    /// Sets when the manual status resets itself.
    pub fn set_manual_expires(&mut self, at: Option<Tick>) {
        if at.is_none() && self.rare.is_none() {
            return;
        }
        self.rare_mut().manual_expires = at;
        self.tidy();
    }

    /// Takes the expiry of the manual status that last reset itself (for the persister).
    pub fn take_expired_status(&mut self) -> Option<DateTime<Utc>> {
        let taken = self
            .rare
            .as_mut()
            .and_then(|rare| rare.expired_status.take());
        self.tidy();
        taken
    }

    /// Puts back an expiry taken by [`UserState::take_expired_status`] (a failed write), unless
    /// a newer one is there.
    pub fn restore_expired_status(&mut self, expired: Option<DateTime<Utc>>) {
        if expired.is_some() {
            let rare = self.rare_mut();
            rare.expired_status = rare.expired_status.or(expired);
        }
    }

    /// How present the user is: `dnd` if they set it, else `idle` if they set away, else
    /// `active` if any live session is active, else `idle`; `None` while offline.
    pub fn availability(&self) -> Option<Availability> {
        if self.sessions.is_empty() {
            return None;
        }
        Some(match self.manual().mode {
            StatusMode::Dnd => Availability::Dnd,
            StatusMode::Away => Availability::Idle,
            StatusMode::Auto if self.sessions.iter().any(|s| s.active) => Availability::Active,
            StatusMode::Auto => Availability::Idle,
        })
    }

    /// The platforms of the live sessions.
    pub fn platforms(&self) -> Platforms {
        self.sessions.iter().map(|s| s.platform).collect()
    }

    /// The user's presence as the engine reports it.
    pub fn view(&self) -> PresenceView {
        PresenceView {
            status: self.status,
            last_seen: self.last_seen(),
            seq: self.seq,
            availability: self.availability(),
            platforms: self.platforms(),
            manual: self.manual().clone(),
        }
    }

    fn signature(&self) -> Signature {
        let manual = self.manual();
        (
            self.status,
            self.availability(),
            self.platforms(),
            manual.text.clone(),
            manual.emoji.clone(),
        )
    }

    /// Runs `f`, then keeps the status in step with the sessions and turns a changed signature
    /// into a change with a new `seq` (ordered by `wall`, when it happens).
    fn changing(&mut self, wall: DateTime<Utc>, f: impl FnOnce(&mut Self)) -> Change {
        let before = self.signature();
        f(self);
        self.status = if self.sessions.is_empty() {
            PresenceStatus::Offline
        } else {
            PresenceStatus::Online
        };
        if self.signature() == before {
            return None;
        }
        self.dirty = true;
        self.seq = next_seq(self.seq, wall);
        let mut view = self.view();
        view.last_seen = Some(self.last_seen().unwrap_or(wall));
        Some(view)
    }

    fn record_seen(&mut self, wall: DateTime<Utc>) {
        let wall = Wall::of(wall);
        self.last_seen = if self.last_seen == Wall::NONE {
            wall
        } else {
            self.last_seen.max(wall)
        };
        self.dirty = true;
    }

    /// Records activity of `session` (on `platform`) at (`now`, `wall`): the session is live for
    /// `timing.timeout` more, and `activity` says whether the user is at the device. A session
    /// seen for the first time starts active. Returns the change and whether the session is new.
    pub fn touch(
        &mut self,
        session: SessionId,
        platform: Platform,
        activity: Activity,
        now: Tick,
        wall: DateTime<Utc>,
        timing: &Timing,
    ) -> (Change, bool) {
        let mut is_new = false;
        let change = self.changing(wall, |user| {
            user.record_seen(wall);
            let expires_at = now + timing.timeout;
            let wall = Wall::of(wall);
            let found = user.sessions.iter_mut().find(|s| s.id == session);
            match found {
                Some(s) => {
                    s.expires_at = s.expires_at.max(expires_at);
                    s.last_activity_wall = s.last_activity_wall.max(wall);
                    match activity {
                        Activity::Keepalive => {}
                        Activity::Active => {
                            s.active = true;
                            s.real_activity = now;
                        }
                        Activity::Idle => s.active = false,
                    }
                }
                None => {
                    is_new = true;
                    user.sessions.push(SessionState {
                        id: session,
                        platform,
                        expires_at,
                        last_activity_wall: wall,
                        real_activity: now,
                        active: activity != Activity::Idle,
                        sockets: 0,
                        in_grace: false,
                    });
                }
            }
        });
        (change, is_new)
    }

    /// A socket of `session` opened: the session is live until its last socket closes.
    /// Returns what [`UserState::touch`] returns, plus whether this reconnect ended a grace
    /// period (a flap that produced no events).
    pub fn open_socket(
        &mut self,
        session: SessionId,
        platform: Platform,
        now: Tick,
        wall: DateTime<Utc>,
        timing: &Timing,
    ) -> (Change, bool, bool) {
        let (change, is_new) =
            self.touch(session, platform, Activity::Keepalive, now, wall, timing);
        let mut suppressed_flap = false;
        if let Some(s) = self.sessions.iter_mut().find(|s| s.id == session) {
            s.sockets += 1;
            s.expires_at = s.expires_at.max(now + timing.hold);
            suppressed_flap = std::mem::take(&mut s.in_grace);
        }
        (change, is_new, suppressed_flap)
    }

    /// A socket of `session` closed at (`now`, `wall`). When it was the last one, the session
    /// now ends at `now + grace` unless a socket reopens or it has activity; returns that
    /// deadline, which the caller must arm.
    pub fn close_socket(
        &mut self,
        session: SessionId,
        now: Tick,
        wall: DateTime<Utc>,
        grace: Duration,
    ) -> Option<Tick> {
        let s = self.sessions.iter_mut().find(|s| s.id == session)?;
        if s.sockets == 0 {
            // No socket of this session is open: nothing to close (a close without its open
            // must not cut an HTTP session's lifetime down to the grace).
            return None;
        }
        s.sockets -= 1;
        if s.sockets > 0 {
            return None;
        }
        // The socket was open until now: that is the session's last activity.
        s.expires_at = now + grace;
        s.last_activity_wall = s.last_activity_wall.max(Wall::of(wall));
        s.in_grace = true;
        self.record_seen(wall);
        Some(now + grace)
    }

    /// Ends `session` now (logout). The user goes offline if it was the last live session.
    pub fn end_session(&mut self, session: SessionId, wall: DateTime<Utc>) -> Change {
        if !self.sessions.iter().any(|s| s.id == session) {
            return None;
        }
        self.changing(wall, |user| {
            user.sessions.retain(|s| s.id != session);
            user.record_seen(wall);
        })
    }

    /// Sets the manual status at (`now`, `wall`); `expires` is when it resets itself on tokio's
    /// clock.
    pub fn set_manual(
        &mut self,
        manual: ManualStatus,
        expires: Option<Tick>,
        wall: DateTime<Utc>,
    ) -> Change {
        let change = self.changing(wall, |user| {
            let rare = user.rare_mut();
            rare.manual = manual;
            rare.manual_expires = expires;
            user.tidy();
        });
        self.dirty = true;
        change
    }

    /// Looks at the user at (`now`, `wall`) because a deadline fired: sessions past their end
    /// end, sessions without real activity for `idle_after` turn idle, an expired manual status
    /// resets, and a session held by a socket records the open socket as activity (its stored
    /// copy stays live) and is looked at again after `timing.hold`.
    pub fn check(&mut self, now: Tick, wall: DateTime<Utc>, timing: &Timing) -> Change {
        self.changing(wall, |user| {
            let mut held = false;
            let wall_at = Wall::of(wall);
            for s in user.sessions.iter_mut() {
                if s.sockets > 0 && s.expires_at <= now {
                    s.last_activity_wall = s.last_activity_wall.max(wall_at);
                    s.expires_at = now + timing.hold;
                    held = true;
                }
                if let Some(idle_after) = timing.idle_after
                    && s.active
                    && s.real_activity + idle_after <= now
                {
                    s.active = false;
                }
            }
            if held {
                user.record_seen(wall);
            }
            let before = user.sessions.len();
            user.sessions
                .retain(|s| s.sockets > 0 || s.expires_at > now);
            if user.sessions.len() != before {
                user.dirty = true;
            }
            if user.manual_expires().is_some_and(|at| at <= now) {
                let rare = user.rare_mut();
                rare.expired_status = rare.manual.expires_at;
                rare.manual = ManualStatus::default();
                rare.manual_expires = None;
                user.tidy();
                user.dirty = true;
            }
        })
    }

    /// The user's next deadline: the earliest session end, idle turn or manual status reset.
    pub fn next_deadline(&self, timing: &Timing) -> Option<Tick> {
        let sessions = self.sessions.iter().flat_map(|s| {
            let idle = timing
                .idle_after
                .filter(|_| s.active)
                .map(|after| s.real_activity + after);
            [Some(s.expires_at), idle]
        });
        sessions.chain([self.manual_expires()]).flatten().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(300);
    const TIMING: Timing = Timing {
        timeout: TIMEOUT,
        idle_after: Some(Duration::from_secs(600)),
        hold: Duration::from_secs(150),
    };
    const WEB: Platform = Platform::Web;

    fn wall(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn beat(user: &mut UserState, session: i64, at: Tick, secs: i64) -> (Change, bool) {
        user.touch(
            SessionId(session),
            WEB,
            Activity::Keepalive,
            at,
            wall(secs),
            &TIMING,
        )
    }

    #[test]
    fn an_online_user_with_one_session_fits_in_72_bytes() {
        assert_eq!(std::mem::size_of::<SessionState>(), 40);
        assert_eq!(std::mem::size_of::<Sessions>(), 40);
        assert_eq!(std::mem::size_of::<UserState>(), 72);
    }

    #[test]
    fn sessions_keep_one_inline_and_more_together_in_any_order_of_change() {
        let session = |id| SessionState {
            id: SessionId(id),
            expires_at: Tick::ZERO,
            last_activity_wall: Wall::NONE,
            real_activity: Tick::ZERO,
            sockets: 0,
            platform: WEB,
            active: true,
            in_grace: false,
        };
        let ids = |sessions: &Sessions| sessions.iter().map(|s| s.id.0).collect::<Vec<_>>();
        let mut sessions = Sessions::default();
        assert!(sessions.is_empty());
        for id in 1..=3 {
            sessions.push(session(id));
        }
        assert_eq!((ids(&sessions), sessions.len()), (vec![1, 2, 3], 3));
        sessions.iter_mut().for_each(|s| s.sockets += 1);
        assert!(sessions.iter().all(|s| s.sockets == 1));
        sessions.retain(|s| s.id.0 != 2);
        assert_eq!(ids(&sessions), vec![1, 3]);
        sessions.retain(|s| s.id.0 == 3);
        assert!(matches!(sessions.0, Held::One(_)));
        assert_eq!(ids(&sessions), vec![3]);
        sessions.push(session(4));
        assert_eq!(ids(&sessions), vec![3, 4]);
        sessions.retain(|_| false);
        assert!(sessions.is_empty() && matches!(sessions.0, Held::None));
        sessions.push(session(5));
        sessions.retain(|_| true);
        assert_eq!(ids(&sessions), vec![5]);
        sessions.retain(|_| false);
        assert_eq!(sessions.len(), 0);
    }

    #[test]
    fn sessions_keep_the_first_inline_and_retain_any_of_them() {
        let t0 = Tick::ZERO;
        let mut user = UserState::offline(0, None, ManualStatus::default());
        for id in 1..=3 {
            beat(&mut user, id, t0, 0);
        }
        assert_eq!(user.sessions.len(), 3);
        user.end_session(SessionId(1), wall(1));
        let mut ids: Vec<_> = user.sessions.iter().map(|s| s.id.0).collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![2, 3]);
        user.end_session(SessionId(3), wall(2));
        user.end_session(SessionId(2), wall(3));
        assert!(user.sessions.is_empty());
        assert_eq!(user.sessions.len(), 0);
        assert_eq!(user.status, PresenceStatus::Offline);
    }

    #[test]
    fn wall_times_round_trip_at_microseconds() {
        let at = wall(5) + chrono::Duration::microseconds(123_456);
        assert_eq!(Wall::of(at).at(), at);
        assert_eq!(Wall::of_opt(None).get(), None);
    }

    #[test]
    fn first_touch_goes_online_active_and_later_touches_change_nothing() {
        let t0 = Tick::ZERO;
        let mut user = UserState::offline(0, None, ManualStatus::default());
        let (change, is_new) = beat(&mut user, 1, t0, 0);
        let change = change.expect("offline -> online");
        assert!(is_new);
        assert_eq!(change.status, PresenceStatus::Online);
        assert_eq!(change.availability, Some(Availability::Active));
        assert_eq!(change.platforms.to_vec(), vec![Platform::Web]);
        assert_eq!(change.last_seen, Some(wall(0)));

        let (change, is_new) = beat(&mut user, 1, t0 + Duration::from_secs(30), 30);
        assert_eq!(change, None);
        assert!(!is_new);
        assert_eq!(user.last_seen(), Some(wall(30)));
    }

    #[test]
    fn a_check_ends_sessions_past_their_end_and_reports_the_last_activity() {
        let t0 = Tick::ZERO;
        let mut user = UserState::offline(0, None, ManualStatus::default());
        beat(&mut user, 1, t0, 0);
        beat(&mut user, 1, t0 + Duration::from_secs(60), 60);
        assert_eq!(
            user.check(t0 + TIMEOUT, wall(300), &TIMING),
            None,
            "still live"
        );
        assert_eq!(
            user.next_deadline(&TIMING),
            Some(t0 + Duration::from_secs(360))
        );
        let change = user
            .check(t0 + Duration::from_secs(999), wall(999), &TIMING)
            .expect("offline");
        assert_eq!(change.status, PresenceStatus::Offline);
        assert_eq!(change.last_seen, Some(wall(60)));
        assert_eq!(change.availability, None);
        assert!(user.sessions.is_empty());
    }

    #[test]
    fn a_second_session_keeps_the_user_online() {
        let t0 = Tick::ZERO;
        let mut user = UserState::offline(0, None, ManualStatus::default());
        beat(&mut user, 1, t0, 0);
        user.touch(
            SessionId(2),
            Platform::Mobile,
            Activity::Keepalive,
            t0,
            wall(1),
            &TIMING,
        );
        let change = user
            .end_session(SessionId(1), wall(2))
            .expect("the platforms changed");
        assert_eq!(change.status, PresenceStatus::Online);
        assert_eq!(change.platforms.to_vec(), vec![Platform::Mobile]);
        let change = user.end_session(SessionId(2), wall(3)).expect("last one");
        assert_eq!(change.status, PresenceStatus::Offline);
        assert_eq!(change.last_seen, Some(wall(3)));
        assert_eq!(user.end_session(SessionId(2), wall(4)), None, "idempotent");
    }

    #[test]
    fn an_open_socket_holds_the_session_and_closing_starts_the_grace() {
        let t0 = Tick::ZERO;
        let grace = Duration::from_secs(10);
        let mut user = UserState::offline(0, None, ManualStatus::default());
        let (change, is_new, flap) = user.open_socket(SessionId(1), WEB, t0, wall(0), &TIMING);
        assert!(change.is_some() && is_new && !flap);
        let late = t0 + TIMEOUT * 3;
        let change = user.check(late, wall(899), &TIMING).expect("idle by now");
        assert_eq!(change.status, PresenceStatus::Online, "held");
        assert_eq!(change.availability, Some(Availability::Idle));
        assert_eq!(user.check(late, wall(899), &TIMING), None);

        let deadline = user.close_socket(SessionId(1), late, wall(900), grace);
        assert_eq!(deadline, Some(late + grace));
        assert_eq!(
            user.last_seen(),
            Some(wall(900)),
            "closing is the last activity"
        );
        let (change, is_new, flap) =
            user.open_socket(SessionId(1), WEB, late + grace / 2, wall(905), &TIMING);
        assert!(
            change.is_none() && !is_new && flap,
            "a reconnect inside the grace is silent"
        );
    }

    #[test]
    fn idle_follows_real_activity_and_a_plain_heartbeat_changes_nothing() {
        let t0 = Tick::ZERO;
        let mut user = UserState::offline(0, None, ManualStatus::default());
        beat(&mut user, 1, t0, 0);
        // Heartbeats alone for 10 minutes: idle.
        for minute in 1..=10 {
            let at = t0 + Duration::from_secs(60 * minute);
            beat(&mut user, 1, at, 60 * minute as i64);
        }
        let change = user
            .check(t0 + Duration::from_secs(600), wall(600), &TIMING)
            .expect("idle");
        assert_eq!(change.availability, Some(Availability::Idle));
        let (change, _) = beat(&mut user, 1, t0 + Duration::from_secs(630), 630);
        assert_eq!(change, None, "a plain heartbeat leaves an idle user idle");
        let (change, _) = user.touch(
            SessionId(1),
            WEB,
            Activity::Active,
            t0 + Duration::from_secs(640),
            wall(640),
            &TIMING,
        );
        assert_eq!(change.unwrap().availability, Some(Availability::Active));
        let (change, _) = user.touch(
            SessionId(1),
            WEB,
            Activity::Idle,
            t0 + Duration::from_secs(650),
            wall(650),
            &TIMING,
        );
        assert_eq!(change.unwrap().availability, Some(Availability::Idle));
    }

    #[test]
    fn active_on_one_device_beats_idle_on_another_and_manual_modes_win() {
        let t0 = Tick::ZERO;
        let mut user = UserState::offline(0, None, ManualStatus::default());
        user.touch(SessionId(1), WEB, Activity::Idle, t0, wall(0), &TIMING);
        assert_eq!(user.availability(), Some(Availability::Idle));
        user.touch(
            SessionId(2),
            Platform::Mobile,
            Activity::Active,
            t0,
            wall(1),
            &TIMING,
        );
        assert_eq!(user.availability(), Some(Availability::Active));
        let dnd = ManualStatus {
            mode: StatusMode::Dnd,
            ..ManualStatus::default()
        };
        let change = user.set_manual(dnd, None, wall(2)).expect("dnd");
        assert_eq!(change.availability, Some(Availability::Dnd));
        let away = ManualStatus {
            mode: StatusMode::Away,
            ..ManualStatus::default()
        };
        assert_eq!(
            user.set_manual(away, None, wall(3)).unwrap().availability,
            Some(Availability::Idle)
        );
    }

    #[test]
    fn a_manual_status_resets_itself_when_it_expires_even_offline() {
        let t0 = Tick::ZERO;
        let mut user = UserState::offline(5, Some(wall(0)), ManualStatus::default());
        let meeting = ManualStatus {
            mode: StatusMode::Dnd,
            text: Some("In a meeting".into()),
            emoji: Some("📅".into()),
            expires_at: Some(wall(60)),
        };
        let change = user
            .set_manual(meeting, Some(t0 + Duration::from_secs(60)), wall(1))
            .expect("the text is visible even offline");
        assert_eq!(change.manual.text.as_deref(), Some("In a meeting"));
        assert_eq!(
            user.next_deadline(&TIMING),
            Some(t0 + Duration::from_secs(60))
        );
        let change = user
            .check(t0 + Duration::from_secs(60), wall(60), &TIMING)
            .expect("reset");
        assert_eq!(change.manual, ManualStatus::default());
        assert!(change.seq > 5);
        assert_eq!(user.next_deadline(&TIMING), None);
    }

    #[test]
    fn seq_strictly_increases_even_when_the_clock_does_not() {
        let t0 = Tick::ZERO;
        let mut user = UserState::offline(0, None, ManualStatus::default());
        let mut seqs = Vec::new();
        for _ in 0..3 {
            seqs.push(beat(&mut user, 1, t0, 0).0.unwrap().seq);
            seqs.push(user.end_session(SessionId(1), wall(0)).unwrap().seq);
        }
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        assert_eq!(next_seq(u64::MAX - 1, wall(0)), u64::MAX);
    }
}
