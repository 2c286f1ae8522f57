//! Pure presence transitions for one user: (state, now, input) in, (new state, change) out.
//!
//! No I/O and no clock reads happen here; callers pass both clocks in. `Instant` (tokio's
//! clock) decides deadlines, `DateTime<Utc>` is only recorded as the user-visible `last_seen`
//! and orders changes (`seq`).
//!
//! What a viewer can see of a user is its *signature*: online status, availability, the
//! platforms of the live sessions, and the manual status's text and emoji. Every operation that
//! changes the signature is a change, with a new `seq`; operations that do not (a heartbeat of
//! an active session, say) announce nothing.

use chrono::{DateTime, Utc};
use tokio::time::{Duration, Instant};

use crate::domain::{
    Activity, Availability, ManualStatus, Platform, Platforms, PresenceStatus, PresenceView,
    SessionId, StatusMode, next_seq,
};

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

/// One live session of a user.
#[derive(Debug, Clone)]
pub struct SessionState {
    /// Which session.
    pub id: SessionId,
    /// Its device platform.
    pub platform: Platform,
    /// When the session ends unless it has activity again; while a socket holds it, when it
    /// is looked at again.
    pub expires_at: Instant,
    /// Last activity on the wall clock, persisted for restarts.
    pub last_activity_wall: DateTime<Utc>,
    /// The last real user activity (for automatic idle).
    pub real_activity: Instant,
    /// Whether the user is at this device.
    pub active: bool,
    /// Open sockets of this session. While any is open the session never expires.
    pub sockets: u32,
    /// The last socket closed and the session is within its reconnect grace.
    pub in_grace: bool,
}

/// Presence of one user. Invariant: `status` is online iff `sessions` is not empty.
#[derive(Debug, Clone)]
pub struct UserState {
    /// Live sessions (usually one or two, so a `Vec` beats a map).
    pub sessions: Vec<SessionState>,
    /// Current status.
    pub status: PresenceStatus,
    /// Sequence number of the last change.
    pub seq: u64,
    /// Wall time of the last activity of any session.
    pub last_seen: Option<DateTime<Utc>>,
    /// The user's manual status.
    pub manual: ManualStatus,
    /// When the manual status resets itself (tokio's clock).
    pub manual_expires: Option<Instant>,
    /// The expiry of the manual status that last reset itself, until the persister takes it.
    pub expired_status: Option<DateTime<Utc>>,
    /// The deadline slot this user's single entry in the deadline index sits in (0: none). An
    /// index entry with another slot is stale and is dropped when it fires.
    pub armed_slot: u64,
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
        Self {
            sessions: Vec::new(),
            status: PresenceStatus::Offline,
            seq,
            last_seen,
            manual,
            manual_expires: None,
            expired_status: None,
            armed_slot: 0,
            dirty: false,
        }
    }

    /// How present the user is: `dnd` if they set it, else `idle` if they set away, else
    /// `active` if any live session is active, else `idle`; `None` while offline.
    pub fn availability(&self) -> Option<Availability> {
        if self.sessions.is_empty() {
            return None;
        }
        Some(match self.manual.mode {
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
            last_seen: self.last_seen,
            seq: self.seq,
            availability: self.availability(),
            platforms: self.platforms(),
            manual: self.manual.clone(),
        }
    }

    fn signature(&self) -> Signature {
        (
            self.status,
            self.availability(),
            self.platforms(),
            self.manual.text.clone(),
            self.manual.emoji.clone(),
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
        view.last_seen = Some(self.last_seen.unwrap_or(wall));
        Some(view)
    }

    fn record_seen(&mut self, wall: DateTime<Utc>) {
        self.last_seen = Some(self.last_seen.map_or(wall, |seen| seen.max(wall)));
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
        now: Instant,
        wall: DateTime<Utc>,
        timing: &Timing,
    ) -> (Change, bool) {
        let mut is_new = false;
        let change = self.changing(wall, |user| {
            user.record_seen(wall);
            let expires_at = now + timing.timeout;
            match user.sessions.iter_mut().find(|s| s.id == session) {
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
                    // Exactly one more slot: a first `push` would reserve four, and nearly
                    // every user has one session; this is most of an online user's memory.
                    user.sessions.reserve_exact(1);
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
        now: Instant,
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
        now: Instant,
        wall: DateTime<Utc>,
        grace: Duration,
    ) -> Option<Instant> {
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
        s.last_activity_wall = s.last_activity_wall.max(wall);
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
        expires: Option<Instant>,
        wall: DateTime<Utc>,
    ) -> Change {
        let change = self.changing(wall, |user| {
            user.manual = manual;
            user.manual_expires = expires;
        });
        self.dirty = true;
        change
    }

    /// Looks at the user at (`now`, `wall`) because a deadline fired: sessions past their end
    /// end, sessions without real activity for `idle_after` turn idle, an expired manual status
    /// resets, and a session held by a socket records the open socket as activity (its stored
    /// copy stays live) and is looked at again after `timing.hold`.
    pub fn check(&mut self, now: Instant, wall: DateTime<Utc>, timing: &Timing) -> Change {
        self.changing(wall, |user| {
            let mut held = false;
            for s in &mut user.sessions {
                if s.sockets > 0 && s.expires_at <= now {
                    s.last_activity_wall = s.last_activity_wall.max(wall);
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
            if user.manual_expires.is_some_and(|at| at <= now) {
                user.expired_status = user.manual.expires_at;
                user.manual = ManualStatus::default();
                user.manual_expires = None;
                user.dirty = true;
            }
        })
    }

    /// When the user must next be looked at: the earliest session end (or socket re-check),
    /// automatic idle, or manual status reset; `None` if nothing is pending.
    pub fn next_deadline(&self, timing: &Timing) -> Option<Instant> {
        let sessions = self.sessions.iter().flat_map(|s| {
            let idle = timing
                .idle_after
                .filter(|_| s.active)
                .map(|after| s.real_activity + after);
            [Some(s.expires_at), idle]
        });
        sessions.chain([self.manual_expires]).flatten().min()
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

    fn beat(user: &mut UserState, session: i64, at: Instant, secs: i64) -> (Change, bool) {
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
    fn first_touch_goes_online_active_and_later_touches_change_nothing() {
        let t0 = Instant::now();
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
        assert_eq!(user.last_seen, Some(wall(30)));
    }

    #[test]
    fn a_check_ends_sessions_past_their_end_and_reports_the_last_activity() {
        let t0 = Instant::now();
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
        let t0 = Instant::now();
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
        let t0 = Instant::now();
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
            user.last_seen,
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
        let t0 = Instant::now();
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
        let t0 = Instant::now();
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
        let t0 = Instant::now();
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
        let t0 = Instant::now();
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
