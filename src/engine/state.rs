//! Pure presence transitions for one user: (state, now, input) in, (new state, event) out.
//!
//! No I/O and no clock reads happen here; callers pass both clocks in. `Instant` (tokio's
//! clock) decides deadlines, `DateTime<Utc>` is only recorded as the user-visible `last_seen`.

use chrono::{DateTime, Utc};
use tokio::time::{Duration, Instant};

use crate::domain::{PresenceStatus, SessionId};

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

/// The next sequence number after `prev` for a transition at `at`.
///
/// It is the transition's time in microseconds, bumped past `prev` when needed. That keeps it
/// strictly increasing per user even for a user whose earlier state is not in memory (evicted
/// or before a restart), without reading the database on the hot path.
pub fn next_seq(prev: u64, at: DateTime<Utc>) -> u64 {
    let micros = u64::try_from(at.timestamp_micros()).unwrap_or(0);
    micros.max(prev.saturating_add(1))
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
                });
                true
            }
        };
        (self.set_status(PresenceStatus::Online, wall), is_new)
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

    /// Handles the deadline entry of `session` armed in `slot` firing at `now`.
    pub fn expire(&mut self, session: SessionId, slot: u64, now: Instant) -> Expiry {
        let Some(pos) = self
            .sessions
            .iter()
            .position(|s| s.id == session && s.armed_slot == slot)
        else {
            return Expiry::Stale;
        };
        let deadline = self.sessions[pos].expires_at;
        if deadline > now {
            return Expiry::Rearm(deadline);
        }
        self.sessions.swap_remove(pos);
        self.dirty = true;
        if !self.sessions.is_empty() {
            return Expiry::Expired(None);
        }
        // `last_seen` already holds the last activity; the sweep time is never recorded.
        let at = self.last_seen.unwrap_or_default();
        Expiry::Expired(self.set_status(PresenceStatus::Offline, at))
    }

    fn set_status(&mut self, status: PresenceStatus, at: DateTime<Utc>) -> Option<Transition> {
        if self.status == status {
            return None;
        }
        self.status = status;
        self.seq = next_seq(self.seq, at);
        Some(Transition {
            status,
            last_seen: self.last_seen.unwrap_or(at),
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
            user.expire(SessionId(1), 7, t0 + TIMEOUT),
            Expiry::Rearm(t0 + Duration::from_secs(360))
        );
        match user.expire(SessionId(1), 7, t0 + Duration::from_secs(999)) {
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
        assert_eq!(user.expire(SessionId(1), 4, t0 + TIMEOUT), Expiry::Stale);
        assert_eq!(user.expire(SessionId(2), 5, t0 + TIMEOUT), Expiry::Stale);
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
