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
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::domain::{PresenceEvent, PresenceView, PresenceWrite, RestoredUser, SessionId, UserId};

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
