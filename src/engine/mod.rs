//! The presence engine: who is online, since when, and every change as an event.
//!
//! [`PresenceEngine`] is the cheap, cloneable handle the rest of the server holds. Behind it
//! is one backend chosen at start-up: the in-process [`local::LocalBackend`] (one node), or
//! [`redis::RedisBackend`] (many nodes sharing presence in Redis). A backend offers two
//! interfaces:
//!
//! - [`PresenceBackend`], what requests ask: record activity, hold a session by a socket, end a
//!   session, read presence, page through who is online, and the event channel.
//! - [`Maintenance`], what the server's own tasks do: run expiry (and whatever else keeps the
//!   backend's state true), hand changed state to the persister, and restore lost state from
//!   the store.
//!
//! The engine owns presence state and its deadlines; it does not own durable storage (the
//! persister copies changed state into the store in batches and restores from it) nor
//! authentication.

pub mod deadlines;
pub mod local;
pub mod redis;
pub mod state;
mod users;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::domain::{
    Activity, ManualStatus, PresenceEvent, PresenceView, PresenceWrite, RestoredUser, SessionId,
    SessionRef, UserId,
};

/// A page of online users, ordered by id.
#[derive(Debug, Clone, Default)]
pub struct OnlinePage {
    /// Users on this page with their presence.
    pub users: Vec<(UserId, PresenceView)>,
    /// Online users in total (not just this page).
    pub total: usize,
}

/// Errors of a presence backend. The in-process backend never fails; a networked one can.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The backend's service could not be reached or did not answer in time.
    #[error("presence backend unavailable: {0}")]
    Unavailable(String),
    /// The session was ended (logged out or revoked) and cannot record activity any more.
    #[error("the session has ended")]
    SessionEnded,
}

/// What requests ask of presence. Times are read by the backend itself.
#[async_trait]
pub trait PresenceBackend: Send + Sync + 'static {
    /// Records activity of `session`; the user is online afterwards. `activity` says whether
    /// the user is at the device (a plain heartbeat says nothing).
    async fn touch(
        &self,
        user: UserId,
        session: SessionRef,
        activity: Activity,
    ) -> Result<PresenceView, EngineError>;
    /// A socket of `session` opened: the session stays live until its last socket closes.
    async fn open_socket(
        &self,
        user: UserId,
        session: SessionRef,
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
    /// Sets `user`'s manual status (already stored); it resets itself at its `expires_at`.
    async fn set_status(
        &self,
        user: UserId,
        manual: ManualStatus,
        last: LastKnown,
    ) -> Result<PresenceView, EngineError>;
    /// The ids of `user`'s live sessions.
    async fn live_sessions(&self, user: UserId) -> Result<Vec<SessionId>, EngineError>;
    /// Current presence of those of `users` the engine holds state for. A user left out is
    /// offline and the stored state is current.
    async fn presence(&self, users: &[UserId]) -> Result<Vec<(UserId, PresenceView)>, EngineError>;
    /// Online users with ids above `after`, at most `limit`, ordered by id.
    async fn online_page(
        &self,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<OnlinePage, EngineError>;
    /// Number of online users.
    async fn online_count(&self) -> Result<usize, EngineError>;
    /// Whether the backend can serve (readiness).
    async fn ready(&self) -> Result<(), EngineError>;
    /// A receiver of every visible change from now on.
    fn subscribe(&self) -> broadcast::Receiver<PresenceEvent>;
}

/// What the store knows of a user the engine may hold nothing for: with it, setting a status
/// on such a user keeps their `last_seen` and `seq` (the engine then holds the user).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LastKnown {
    /// Stored `last_seen`.
    pub last_seen: Option<chrono::DateTime<chrono::Utc>>,
    /// Stored `presence_seq`.
    pub seq: u64,
}

/// What the server's background tasks do with presence.
#[async_trait]
pub trait Maintenance: Send + Sync + 'static {
    /// Ends every session whose deadline has passed; returns how many users went offline.
    async fn expire_due(&self) -> Result<usize, EngineError>;
    /// Runs the backend's background work (expiry, and for a shared backend its feed, lease and
    /// sweeps) until `shutdown` is cancelled.
    async fn run(&self, shutdown: CancellationToken);
    /// Takes the state changed since the last call.
    async fn take_dirty(&self) -> Vec<PresenceWrite>;
    /// Gives back a batch the store could not write, so the next flush retries it (newer
    /// changes of the same users win).
    async fn mark_dirty(&self, batch: Vec<PresenceWrite>);
    /// Drops state of users the store now holds and that have no live session, bounding
    /// memory (the store's copy is then current).
    async fn evict_persisted(&self, batch: &[PresenceWrite]);
    /// Whether this node should restore state from the store now: always at the start of a
    /// single node; for a shared backend only the first node to find its state empty. A
    /// `true` must be followed by [`Maintenance::restore`] and [`Maintenance::restored`].
    async fn claim_restore(&self) -> Result<bool, EngineError>;
    /// Loads state saved before a restart; sessions keep their remaining time. Users the
    /// backend already holds keep their state and gain the sessions they lack.
    async fn restore(&self, users: Vec<RestoredUser>) -> Result<(), EngineError>;
    /// Marks the restore claimed with [`Maintenance::claim_restore`] as done.
    async fn restored(&self) -> Result<(), EngineError>;
    /// Changes when the backend lost its state (a shared Redis came back empty): the persister
    /// then restores again.
    fn lost_state(&self) -> watch::Receiver<u64>;
}

/// Cheap, cloneable handle to the presence backend chosen at start-up.
#[derive(Clone)]
pub struct PresenceEngine {
    backend: Arc<dyn PresenceBackend>,
    maintenance: Arc<dyn Maintenance>,
}

impl PresenceEngine {
    /// Wraps a backend that offers both interfaces.
    pub fn new<B: PresenceBackend + Maintenance>(backend: Arc<B>) -> Self {
        Self {
            backend: backend.clone(),
            maintenance: backend,
        }
    }

    /// The backend's operations port, for the server's background tasks.
    pub fn maintenance(&self) -> &dyn Maintenance {
        self.maintenance.as_ref()
    }
}

/// The handle exposes the backend's request operations directly; it adds no behaviour.
impl std::ops::Deref for PresenceEngine {
    type Target = dyn PresenceBackend;

    fn deref(&self) -> &Self::Target {
        self.backend.as_ref()
    }
}
