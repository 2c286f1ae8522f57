//! The authenticator's side of external tokens: the cache of verified JWTs, and the users and
//! sessions they name, created on first sight. Checking a token is [`super::jwt`]'s job.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use sha2::{Digest, Sha256};

use super::jwt::{JwtVerifier, Verified};
use super::{AuthError, Authenticator, Session, TokenHash, random_secret};
use crate::domain::{Device, Username};
use crate::shards::lock;
use crate::store::{Conflict, StoreError, UserRecord};

/// A shard of the verified-JWT cache drops its expired tokens when it reaches this size, then
/// again at twice what it kept (so sweeping is amortised O(1) per token).
const MIN_SWEEP: usize = 1024;
/// How long a JWT whose session was revoked is refused without asking the store again (in
/// seconds). Its refusal needs three database operations, one a write; a client retrying with
/// it would otherwise cost them on every request. Bounded, not until the token's `exp`: a
/// revocation lasts until the revoked token's own expiry, which may come first.
const REFUSAL_MEMORY_SECS: u64 = 60;

/// One shard of the verified-JWT cache.
#[derive(Default)]
pub(super) struct VerifiedShard {
    /// SHA-256 of the whole token -> what it says. Only tokens whose signature and claims were
    /// checked get here, so a hit needs no signature check; `exp` is still checked on each.
    tokens: HashMap<TokenHash, Checked>,
    /// Size at which the next insert first drops expired tokens.
    sweep_at: usize,
}

/// A verified token, and whether it is refused for now.
struct Checked {
    verified: Arc<Verified>,
    /// Refused as revoked until then (seconds since the epoch; 0: not refused).
    refused_until: u64,
}

impl Authenticator {
    /// Checks the JWT `token` (whose SHA-256 is `hash`), or finds it among those checked
    /// before and not yet expired; one refused as revoked a moment ago is refused again.
    pub(super) fn verify_jwt(
        &self,
        verifier: &JwtVerifier,
        hash: &TokenHash,
        token: &str,
    ) -> Result<Arc<Verified>, AuthError> {
        let now = jsonwebtoken::get_current_timestamp();
        let leeway = verifier.leeway();
        let live = |v: &Verified| now <= v.expires_at.saturating_add(leeway);
        {
            let mut shard = lock(self.verified.get(hash));
            if let Some(checked) = shard.tokens.get(hash) {
                if !live(&checked.verified) {
                    shard.tokens.remove(hash);
                    return Err(AuthError::InvalidToken);
                }
                if now < checked.refused_until {
                    return Err(AuthError::InvalidToken);
                }
                return Ok(checked.verified.clone());
            }
        }
        let verified = Arc::new(verifier.verify(token).map_err(|reason| {
            tracing::debug!(%reason, "JWT refused");
            AuthError::InvalidToken
        })?);
        let mut shard = lock(self.verified.get(hash));
        if shard.tokens.len() >= shard.sweep_at {
            shard.tokens.retain(|_, checked| live(&checked.verified));
            shard.sweep_at = (shard.tokens.len() * 2).max(MIN_SWEEP);
        }
        let checked = Checked {
            verified: verified.clone(),
            refused_until: 0,
        };
        shard.tokens.insert(*hash, checked);
        Ok(verified)
    }

    /// Refuses the verified JWT whose SHA-256 is `hash` for [`REFUSAL_MEMORY_SECS`] without
    /// asking the store: its session was revoked.
    pub(super) fn remember_refusal(&self, hash: &TokenHash) {
        let until = jsonwebtoken::get_current_timestamp().saturating_add(REFUSAL_MEMORY_SECS);
        if let Some(checked) = lock(self.verified.get(hash)).tokens.get_mut(hash) {
            checked.refused_until = until;
        }
    }

    /// Opens the session of a verified JWT (creating its user if needed) and revokes the
    /// user's sessions beyond the limit, as a login does. `None` if another request opened it
    /// first.
    pub(super) async fn open_jwt_session(
        &self,
        verified: &Verified,
    ) -> Result<Option<Session>, AuthError> {
        let user = self.external_user(verified).await?;
        let key = verified.session_key.as_bytes();
        let session_id = match self
            .store
            .create_token_session(user.id, key, Utc::now(), verified.expires_at_time())
            .await
        {
            Ok(Some(id)) => id,
            // Revoked before it expired: the token stays refused.
            Ok(None) => return Err(AuthError::InvalidToken),
            Err(StoreError::Conflict(_)) => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        for old in self.sessions_over_limit(user.id).await? {
            self.revoke(old).await?;
            // No receiver only in tools without presence.
            let _ = self.evicted.send((user.id, old));
        }
        Ok(Some(Session {
            session_id,
            user_id: user.id,
            username: user.username,
            is_admin: user.is_admin,
            platform: Device::default().platform,
            valid_until: None,
        }))
    }

    /// The user a JWT names, created on first sight: named by the token's username claim if
    /// that name is free, else `user<id>`, else that with a random suffix. A taken name never
    /// makes provisioning fail, nor gives the token another user's account.
    async fn external_user(&self, verified: &Verified) -> Result<UserRecord, AuthError> {
        let external_id = verified.external_id.as_str();
        if let Some(user) = self.store.user_by_external_id(external_id).await? {
            return Ok(user);
        }
        let fallback = Username::parse(&format!("user{external_id}")).unwrap_or_else(|_| {
            let digest = hex::encode(&Sha256::digest(external_id.as_bytes())[..6]);
            Username::parse(&format!("user-{digest}")).expect("BUG: hex digits make a username")
        });
        let suffixed = || {
            Username::parse(&format!("{}-{}", fallback.as_str(), random_secret(3)))
                .unwrap_or_else(|_| fallback.clone())
        };
        let candidates =
            verified
                .username
                .iter()
                .cloned()
                .chain([fallback.clone(), suffixed(), suffixed()]);
        let mut last = StoreError::Conflict(Conflict::UsernameTaken);
        for name in candidates {
            match self.store.external_user(external_id, &name).await {
                Ok(user) => return Ok(user),
                Err(error @ StoreError::Conflict(_)) => last = error,
                Err(error) => return Err(error.into()),
            }
        }
        Err(last.into())
    }
}
