//! The presence engine: who is online, since when, and every change as an event.
//!
//! [`PresenceEngine`] is the cheap, cloneable handle the rest of the server holds. It delegates
//! to a [`PresenceBackend`]: today the in-process [`local::LocalBackend`]; a Redis backend for
//! multi-node deployments implements the same trait. The engine owns in-memory presence state and
//! its deadlines; it does not own durable storage (the persister copies dirty state into the
//! store in batches) nor authentication.

pub mod deadlines;
pub mod local;
pub mod state;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::domain::{PresenceStatus, SessionId, UserId};

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

/// A page of online users, ordered by id.
#[derive(Debug, Clone, Default)]
pub struct OnlinePage {
    /// Users on this page with their presence.
    pub users: Vec<(UserId, PresenceView)>,
    /// Online users in total (not just this page).
    pub total: usize,
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

/// Errors of a presence backend. The in-process backend never fails; a networked one can.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The backend's service could not be reached.
    #[error("presence backend unavailable: {0}")]
    Unavailable(String),
}

/// Operations every presence backend offers. All times are read by the backend itself:
/// tokio's clock for deadlines (so tests can pause it), the wall clock for `last_seen`.
#[async_trait]
pub trait PresenceBackend: Send + Sync + 'static {
    /// Records activity of `session`; the user is online afterwards.
    async fn touch(&self, user: UserId, session: SessionId) -> Result<PresenceView, EngineError>;
    /// A socket of `session` opened: the session stays live until its last socket closes.
    async fn open_socket(
        &self,
        user: UserId,
        session: SessionId,
    ) -> Result<PresenceView, EngineError>;
    /// A socket of `session` closed: when it was the last, the session ends after `grace`
    /// unless a socket of the same session reopens (silently) or it has activity.
    async fn close_socket(
        &self,
        user: UserId,
        session: SessionId,
        grace: std::time::Duration,
    ) -> Result<(), EngineError>;
    /// Ends `session` now (logout); offline unless another session is live.
    async fn end_session(
        &self,
        user: UserId,
        session: SessionId,
    ) -> Result<PresenceView, EngineError>;
    /// Current presence, or `None` if the engine holds nothing for the user (then it is offline
    /// and the stored `last_seen` is current).
    async fn presence(&self, user: UserId) -> Result<Option<PresenceView>, EngineError>;
    /// Online users with ids above `after`, at most `limit`, ordered by id.
    async fn online_page(
        &self,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<OnlinePage, EngineError>;
    /// Number of online users.
    fn online_count(&self) -> usize;
    /// Ends every session whose deadline has passed; returns how many users went offline.
    async fn expire_due(&self) -> Result<usize, EngineError>;
    /// Runs deadline expiry until `shutdown` is cancelled.
    async fn run_expiry(&self, shutdown: CancellationToken);
    /// Takes the state changed since the last call, clearing its dirty marks.
    async fn take_dirty(&self) -> Vec<PresenceWrite>;
    /// Marks users dirty again after a failed write, so the next flush retries them.
    async fn mark_dirty(&self, users: &[UserId]);
    /// Drops users the store now holds and that have no live session, bounding memory.
    async fn evict_persisted(&self, users: &[UserId]);
    /// Loads state saved before a restart; sessions keep their remaining time.
    async fn restore(&self, users: Vec<RestoredUser>);
    /// A receiver of every transition from now on.
    fn subscribe(&self) -> broadcast::Receiver<PresenceEvent>;
}

/// Cheap, cloneable handle to the presence backend chosen at start-up.
#[derive(Clone)]
pub struct PresenceEngine {
    backend: Arc<dyn PresenceBackend>,
}

impl PresenceEngine {
    /// Wraps a backend.
    pub fn new(backend: Arc<dyn PresenceBackend>) -> Self {
        Self { backend }
    }
}

/// The handle exposes the backend's operations directly; it adds no behaviour of its own.
impl std::ops::Deref for PresenceEngine {
    type Target = dyn PresenceBackend;

    fn deref(&self) -> &Self::Target {
        self.backend.as_ref()
    }
}
