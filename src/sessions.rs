//! Sessions as a whole: the one place that knows what starting and ending one means beyond its
//! token. Logging in opens a session, ends the user's sessions over the per-user limit, and
//! marks the user online. Ending a session (logout, the limit, a revocation, or a request that
//! raced with one) revokes its token, which closes its sockets wherever they are, and ends its
//! presence.

use crate::auth::{AuthError, Authenticator, Login};
use crate::domain::{Activity, Device, PresenceView, SessionId, UserId};
use crate::engine::{EngineError, PresenceEngine};

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
}

impl Sessions {
    /// Sessions over `auth` whose presence `engine` tracks.
    pub fn new(auth: Authenticator, engine: PresenceEngine) -> Self {
        Self { auth, engine }
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
        Ok(self.engine.end_session(user, session).await?)
    }
}
