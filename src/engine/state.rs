//! Pure presence transitions for one user: (state, now, input) in, (new state, event) out.
//!
//! No I/O and no clock reads happen here; callers pass both clocks in. `Instant` (tokio's
//! clock) decides deadlines, `DateTime<Utc>` is only recorded as the user-visible `last_seen`.

use chrono::{DateTime, Utc};
use tokio::time::{Duration, Instant};

use crate::domain::{PresenceStatus, SessionId, next_seq};

/// A presence change of one user, as published to subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The status the user has now.
    pub status: PresenceStatus,
    /// Time of the user's last activity (for offline: the moment activity stopped).
    pub last_seen: DateTime<Utc>,
    /// Per-user, strictly increasing sequence number of this transition.
    pub seq: u64,
}

/// One live session of a user.
#[derive(Debug, Clone)]
pub struct SessionState {
    /// Which session.
    pub id: SessionId,
    /// When the session ends unless it has activity again (tokio's clock).
    pub expires_at: Instant,
    /// Last activity on the wall clock, persisted for restarts.
    pub last_activity_wall: DateTime<Utc>,
    /// The deadline slot this session's single entry in the deadline index sits in. An index
    /// entry with another slot is stale and is dropped when it fires.
    pub armed_slot: u64,
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
    /// Sequence number of the last transition.
    pub seq: u64,
    /// Wall time of the last activity of any session.
    pub last_seen: Option<DateTime<Utc>>,
    /// Changed since the persister last wrote it.
    pub dirty: bool,
}

/// What [`UserState::expire`] found for a session whose deadline slot fired.
#[derive(Debug, PartialEq, Eq)]
pub enum Expiry {
    /// The session is gone or the index entry is stale: nothing to do.
    Stale,
    /// The session had activity since it was armed; re-arm it at this deadline.
    Rearm(Instant),
    /// The session expired; `Some` if that took the user offline.
    Expired(Option<Transition>),
}

impl UserState {
    /// A user with no sessions, as loaded from storage or first seen.
    pub fn offline(seq: u64, last_seen: Option<DateTime<Utc>>) -> Self {
        Self {
            sessions: Vec::new(),
            status: PresenceStatus::Offline,
            seq,
            last_seen,
            dirty: false,
        }
    }

    /// Records activity of `session` at (`now`, `wall`) that keeps it live for `lifetime`.
    /// Returns the transition if the user came online and whether the session is new (and so
    /// needs a deadline armed).
    pub fn touch(
        &mut self,
        session: SessionId,
        now: Instant,
        wall: DateTime<Utc>,
        lifetime: Duration,
    ) -> (Option<Transition>, bool) {
        let expires_at = now + lifetime;
        self.last_seen = Some(self.last_seen.map_or(wall, |seen| seen.max(wall)));
        self.dirty = true;
        let is_new = match self.sessions.iter_mut().find(|s| s.id == session) {
            Some(s) => {
                s.expires_at = s.expires_at.max(expires_at);
                s.last_activity_wall = s.last_activity_wall.max(wall);
                false
            }
            None => {
                // Exactly one more slot: a first `push` would reserve four (192 bytes), and
                // nearly every user has one session; this is most of an online user's memory.
                self.sessions.reserve_exact(1);
                self.sessions.push(SessionState {
                    id: session,
                    expires_at,
                    last_activity_wall: wall,
                    armed_slot: 0,
                    sockets: 0,
                    in_grace: false,
                });
                true
            }
        };
        (self.set_status(PresenceStatus::Online, wall), is_new)
    }

    /// A socket of `session` opened: the session is live until its last socket closes.
    /// Returns what [`UserState::touch`] returns, plus whether this reconnect ended a grace
    /// period (a flap that produced no events).
    pub fn open_socket(
        &mut self,
        session: SessionId,
        now: Instant,
        wall: DateTime<Utc>,
        lifetime: Duration,
    ) -> (Option<Transition>, bool, bool) {
        let (transition, is_new) = self.touch(session, now, wall, lifetime);
        let mut suppressed_flap = false;
        if let Some(s) = self.sessions.iter_mut().find(|s| s.id == session) {
            s.sockets += 1;
            suppressed_flap = std::mem::take(&mut s.in_grace);
        }
        (transition, is_new, suppressed_flap)
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
        self.last_seen = Some(self.last_seen.map_or(wall, |seen| seen.max(wall)));
        self.dirty = true;
        Some(now + grace)
    }

    /// Ends `session` now (logout). The user goes offline if it was the last live session.
    pub fn end_session(&mut self, session: SessionId, wall: DateTime<Utc>) -> Option<Transition> {
        let before = self.sessions.len();
        self.sessions.retain(|s| s.id != session);
        if self.sessions.len() == before {
            return None;
        }
        self.last_seen = Some(self.last_seen.map_or(wall, |seen| seen.max(wall)));
        self.dirty = true;
        if self.sessions.is_empty() {
            self.set_status(PresenceStatus::Offline, wall)
        } else {
            None
        }
    }

    /// Handles the deadline entry of `session` armed in `slot` firing at (`now`, `wall`).
    /// A session held open by a socket is refreshed (its open socket is activity, recorded so
    /// the stored copy stays current) and looked at again after `hold`.
    pub fn expire(
        &mut self,
        session: SessionId,
        slot: u64,
        now: Instant,
        wall: DateTime<Utc>,
        hold: Duration,
    ) -> Expiry {
        let Some(pos) = self
            .sessions
            .iter()
            .position(|s| s.id == session && s.armed_slot == slot)
        else {
            return Expiry::Stale;
        };
        let session = &mut self.sessions[pos];
        if session.sockets > 0 {
            session.last_activity_wall = session.last_activity_wall.max(wall);
            self.last_seen = Some(self.last_seen.map_or(wall, |seen| seen.max(wall)));
            self.dirty = true;
            return Expiry::Rearm(now + hold);
        }
        if session.expires_at > now {
            return Expiry::Rearm(session.expires_at);
        }
        self.sessions.swap_remove(pos);
        self.dirty = true;
        if !self.sessions.is_empty() {
            return Expiry::Expired(None);
        }
        // `last_seen` keeps the last activity; the expiry time only orders the event (`seq`).
        Expiry::Expired(self.set_status(PresenceStatus::Offline, wall))
    }

    /// Sets the status; a change is a transition whose `seq` comes from `now` (the time it is
    /// emitted, so events are ordered as they happen) while `last_seen` stays the last activity.
    fn set_status(&mut self, status: PresenceStatus, now: DateTime<Utc>) -> Option<Transition> {
        if self.status == status {
            return None;
        }
        self.status = status;
        self.seq = next_seq(self.seq, now);
        Some(Transition {
            status,
            last_seen: self.last_seen.unwrap_or(now),
            seq: self.seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(300);

    fn wall(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn first_touch_goes_online_and_later_touches_publish_nothing() {
        let t0 = Instant::now();
        let mut user = UserState::offline(0, None);
        let (event, is_new) = user.touch(SessionId(1), t0, wall(0), TIMEOUT);
        let event = event.expect("offline -> online");
        assert!(is_new);
        assert_eq!(event.status, PresenceStatus::Online);
        assert_eq!(event.last_seen, wall(0));

        let (event, is_new) = user.touch(
            SessionId(1),
            t0 + Duration::from_secs(30),
            wall(30),
            TIMEOUT,
        );
        assert_eq!(event, None);
        assert!(!is_new);
        assert_eq!(user.last_seen, Some(wall(30)));
    }

    #[test]
    fn expiry_rearms_active_sessions_and_reports_last_activity_not_sweep_time() {
        let t0 = Instant::now();
        let mut user = UserState::offline(0, None);
        user.touch(SessionId(1), t0, wall(0), TIMEOUT);
        user.sessions[0].armed_slot = 7;
        user.touch(
            SessionId(1),
            t0 + Duration::from_secs(60),
            wall(60),
            TIMEOUT,
        );

        assert_eq!(
            user.expire(SessionId(1), 7, t0 + TIMEOUT, wall(300), TIMEOUT),
            Expiry::Rearm(t0 + Duration::from_secs(360))
        );
        match user.expire(
            SessionId(1),
            7,
            t0 + Duration::from_secs(999),
            wall(999),
            TIMEOUT,
        ) {
            Expiry::Expired(Some(t)) => {
                assert_eq!(t.status, PresenceStatus::Offline);
                assert_eq!(t.last_seen, wall(60));
            }
            other => panic!("expected offline, got {other:?}"),
        }
        assert!(user.sessions.is_empty());
    }

    #[test]
    fn stale_index_entries_are_ignored() {
        let t0 = Instant::now();
        let mut user = UserState::offline(0, None);
        user.touch(SessionId(1), t0, wall(0), TIMEOUT);
        user.sessions[0].armed_slot = 5;
        assert_eq!(
            user.expire(SessionId(1), 4, t0 + TIMEOUT, wall(300), TIMEOUT),
            Expiry::Stale
        );
        assert_eq!(
            user.expire(SessionId(2), 5, t0 + TIMEOUT, wall(300), TIMEOUT),
            Expiry::Stale
        );
        assert_eq!(user.status, PresenceStatus::Online);
    }

    #[test]
    fn a_second_session_keeps_the_user_online() {
        let t0 = Instant::now();
        let mut user = UserState::offline(0, None);
        user.touch(SessionId(1), t0, wall(0), TIMEOUT);
        user.touch(SessionId(2), t0, wall(1), TIMEOUT);
        assert_eq!(user.end_session(SessionId(1), wall(2)), None);
        assert_eq!(user.status, PresenceStatus::Online);
        let event = user.end_session(SessionId(2), wall(3)).expect("last one");
        assert_eq!(event.status, PresenceStatus::Offline);
        assert_eq!(event.last_seen, wall(3));
        assert_eq!(user.end_session(SessionId(2), wall(4)), None, "idempotent");
    }

    #[test]
    fn an_open_socket_holds_the_session_and_closing_starts_the_grace() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        let mut user = UserState::offline(0, None);
        let (event, is_new, flap) = user.open_socket(SessionId(1), t0, wall(0), TIMEOUT);
        assert!(event.is_some() && is_new && !flap);
        user.sessions[0].armed_slot = 1;
        let late = t0 + TIMEOUT * 3;
        assert!(matches!(
            user.expire(SessionId(1), 1, late, wall(899), TIMEOUT),
            Expiry::Rearm(_)
        ));
        assert_eq!(user.status, PresenceStatus::Online);

        let deadline = user.close_socket(SessionId(1), late, wall(900), grace);
        assert_eq!(deadline, Some(late + grace));
        assert_eq!(
            user.last_seen,
            Some(wall(900)),
            "closing the socket is the last activity"
        );
        let (event, is_new, flap) =
            user.open_socket(SessionId(1), late + grace / 2, wall(905), TIMEOUT);
        assert!(
            event.is_none() && !is_new && flap,
            "a reconnect inside the grace is silent"
        );
    }

    #[test]
    fn a_closed_socket_ends_the_session_after_the_grace() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        let mut user = UserState::offline(0, None);
        user.open_socket(SessionId(1), t0, wall(0), TIMEOUT);
        user.close_socket(SessionId(1), t0 + grace, wall(10), grace);
        user.sessions[0].armed_slot = 2;
        match user.expire(SessionId(1), 2, t0 + grace * 2, wall(20), TIMEOUT) {
            Expiry::Expired(Some(t)) => assert_eq!(t.last_seen, wall(10)),
            other => panic!("expected offline, got {other:?}"),
        }
    }

    #[test]
    fn seq_strictly_increases_even_when_the_clock_does_not() {
        let t0 = Instant::now();
        let mut user = UserState::offline(0, None);
        let mut seqs = Vec::new();
        for _ in 0..3 {
            seqs.push(
                user.touch(SessionId(1), t0, wall(0), TIMEOUT)
                    .0
                    .unwrap()
                    .seq,
            );
            seqs.push(user.end_session(SessionId(1), wall(0)).unwrap().seq);
        }
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        assert_eq!(next_seq(u64::MAX - 1, wall(0)), u64::MAX);
    }
}
