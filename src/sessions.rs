//! Sessions as a whole: the one place that knows what starting and ending one means beyond its
//! token. Logging in opens a session, ends the user's sessions over the per-user limit, and
//! marks the user online. Ending a session (logout, the limit, a revocation, or a request that
//! raced with one) revokes its token, which closes its sockets wherever they are, and ends its
//! presence; a user it takes offline is written offline to the store at once. A JWT's first use
//! opens its session inside authentication, which revokes the sessions over the limit itself;
//! [`Sessions::listen`] ends their presence.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthError, Authenticator, Login};
use crate::domain::{Activity, Device, PresenceView, PresenceWrite, SessionId, UserId};
use crate::engine::{EngineError, PresenceEngine};
use crate::store::Store;

/// Why a session could not be started or ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Authentication refused it, or its storage failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The presence backend failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Starts and ends sessions. Cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    auth: Authenticator,
    engine: PresenceEngine,
    store: Arc<dyn Store>,
}

impl Sessions {
    /// Sessions over `auth` whose presence `engine` tracks, listed in `store`.
    pub fn new(auth: Authenticator, engine: PresenceEngine, store: Arc<dyn Store>) -> Self {
        Self {
            auth,
            engine,
            store,
        }
    }

    /// Checks credentials, opens a session (a device), ends the user's least recently active
    /// sessions beyond the limit, and marks the user online. Returns the login and the user's
    /// presence after it.
    ///
    /// # Errors
    /// [`AuthError::BadCredentials`] (wrapped) for an unknown user or a wrong password; storage
    /// or presence failures.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        device: &Device,
    ) -> Result<(Login, PresenceView), SessionError> {
        let login = self.auth.login(username, password, device).await?;
        let user = login.session.user_id;
        for old in self.auth.sessions_over_limit(user).await? {
            self.end(user, old).await?;
        }
        let view = self
            .engine
            .touch(user, login.session.reference(), Activity::Active)
            .await?;
        Ok((login, view))
    }

    /// Ends `session` of `user`: its token stops working on every node, its sockets close
    /// (4401), and the user goes offline unless another session is live. Ending a session that
    /// is gone already changes nothing.
    ///
    /// # Errors
    /// Storage failures (the session then stays valid; the client may retry), presence
    /// failures.
    pub async fn end(
        &self,
        user: UserId,
        session: SessionId,
    ) -> Result<PresenceView, SessionError> {
        self.auth.revoke(session).await?;
        Ok(self.end_presence(user, session).await?)
    }

    /// Ends the presence of the sessions the authenticator revokes by itself (a JWT's first
    /// use beyond the per-user limit, see [`Authenticator::evictions`]) until `shutdown`. It
    /// listens from the moment this is called, so call it before serving.
    pub fn listen(self, shutdown: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
        use broadcast::error::RecvError;
        let mut evicted = self.auth.evictions();
        async move {
            loop {
                let (user, session) = tokio::select! {
                    // Evictions made before shutdown (by requests still draining) first.
                    biased;
                    next = evicted.recv() => match next {
                        Ok(evicted) => evicted,
                        Err(RecvError::Lagged(missed)) => {
                            tracing::warn!(missed, "missed evicted sessions; they end at their timeout");
                            continue;
                        }
                        Err(RecvError::Closed) => return,
                    },
                    () = shutdown.cancelled() => return,
                };
                if let Err(error) = self.end_presence(user, session).await {
                    tracing::warn!(%error, user = user.0, "could not end an evicted session's presence; it ends at its timeout");
                }
            }
        }
    }

    /// Ends the presence of `session`, whose token is revoked already.
    async fn end_presence(
        &self,
        user: UserId,
        session: SessionId,
    ) -> Result<PresenceView, EngineError> {
        let view = self.engine.end_session(user, session).await?;
        if !view.status.is_online() {
            // Offline in the database at once, as the seed's logout is, so SQL readers and
            // `check-offline-users` agree with the API right away; the persister would write
            // the same state within `persist_interval` (a write never moves a user back).
            let write = PresenceWrite::of_view(user, &view);
            if let Err(error) = self.store.write_presence(&[write]).await {
                tracing::warn!(%error, user = user.0, "could not store the logout now; the next flush will");
            }
        }
        Ok(view)
    }

    /// Ends `session` if it is one of `user`'s; `None` if it is not (or no longer) theirs.
    ///
    /// # Errors
    /// As [`Sessions::end`].
    pub async fn end_owned(
        &self,
        user: UserId,
        session: SessionId,
    ) -> Result<Option<PresenceView>, SessionError> {
        let sessions = self
            .store
            .sessions_of(user)
            .await
            .map_err(AuthError::from)?;
        if !sessions.iter().any(|s| s.id == session) {
            return Ok(None);
        }
        Ok(Some(self.end(user, session).await?))
    }

    /// Ends every session of `user` (they go offline).
    ///
    /// # Errors
    /// As [`Sessions::end`]; sessions ended before a failure stay ended.
    pub async fn end_all(&self, user: UserId) -> Result<(), SessionError> {
        let sessions = self
            .store
            .sessions_of(user)
            .await
            .map_err(AuthError::from)?;
        for session in sessions {
            self.end(user, session.id).await?;
        }
        Ok(())
    }
}
