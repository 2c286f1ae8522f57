//! Presence as values: a user's status, their presence as the engine reports it, transitions,
//! and the shapes in which presence is stored and restored. No I/O and no clock reads.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{SessionId, UserId};

/// Whether a user is online, as the seed's `online_status` column spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PresenceStatus {
    /// At least one session had activity within the inactivity timeout.
    Online,
    /// No live session.
    Offline,
}

impl PresenceStatus {
    /// The status as stored and serialised: `"online"` or `"offline"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
        }
    }

    /// Parses the stored column value; anything but `"online"` reads as offline.
    pub fn from_column(raw: &str) -> Self {
        if raw == "online" {
            Self::Online
        } else {
            Self::Offline
        }
    }

    /// `true` for [`PresenceStatus::Online`].
    pub fn is_online(self) -> bool {
        self == Self::Online
    }
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

/// Presence of one user as the engine knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceView {
    /// Online iff at least one session is live.
    pub status: PresenceStatus,
    /// Time of the last activity, if there ever was one.
    pub last_seen: Option<DateTime<Utc>>,
    /// Sequence number of the last transition.
    pub seq: u64,
}

/// A transition of one user, published on the engine's event channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEvent {
    /// Whose presence changed.
    pub user_id: UserId,
    /// The new status.
    pub status: PresenceStatus,
    /// Time of the last activity.
    pub last_seen: DateTime<Utc>,
    /// Per-user, strictly increasing.
    pub seq: u64,
}

/// Dirty state of one user, for the persister to write.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceWrite {
    /// Whose state.
    pub user_id: UserId,
    /// Status to store in `users.online_status`.
    pub status: PresenceStatus,
    /// Value for `users.last_seen`.
    pub last_seen: Option<DateTime<Utc>>,
    /// Value for `users.presence_seq`.
    pub seq: u64,
    /// Live sessions, for `sessions.last_activity` and `sessions.expires_at`.
    pub sessions: Vec<StoredSession>,
}

/// A session's liveness as stored: when it was last active and when it ends unless it has
/// activity again (later for a socket-held session, earlier in a reconnect grace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredSession {
    /// Which session.
    pub id: SessionId,
    /// Its last activity.
    pub last_activity: DateTime<Utc>,
    /// When it ends unless it has activity again.
    pub expires_at: DateTime<Utc>,
}

/// A user's state loaded from storage at start-up.
#[derive(Debug, Clone)]
pub struct RestoredUser {
    /// Which user.
    pub user_id: UserId,
    /// Stored `presence_seq`.
    pub seq: u64,
    /// Stored `last_seen`.
    pub last_seen: Option<DateTime<Utc>>,
    /// Sessions still live (not yet expired).
    pub sessions: Vec<StoredSession>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_serialises_lowercase() {
        assert_eq!(
            serde_json::to_string(&PresenceStatus::Online).unwrap(),
            "\"online\""
        );
        assert_eq!(
            PresenceStatus::from_column("offline"),
            PresenceStatus::Offline
        );
    }
}
