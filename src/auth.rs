//! Accounts and access tokens: Argon2id password hashes, opaque tokens, a session cache.
//!
//! A token is 256 random bits, shown to the client once; the store keeps only its SHA-256. Each
//! login creates one session (one device). Validated sessions are cached in memory, so the hot
//! path hashes the token and reads one shard of the cache, without touching the database;
//! logout removes the entry, so revocation takes effect at once. This module does not track
//! presence: callers tell the engine about activity.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use chrono::Utc;
use sha2::{Digest, Sha256};

use crate::domain::{Password, SessionId, UserId, Username};
use crate::store::{SessionRecord, Store, StoreError, UserRecord};

/// Shards of the session cache; a power of two.
const CACHE_SHARDS: usize = 16;

/// Why authentication or an account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Unknown user or wrong password (deliberately indistinguishable).
    #[error("invalid username or password")]
    BadCredentials,
    /// The token is not (or no longer) valid.
    #[error("invalid or revoked token")]
    InvalidToken,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Hashing failed or its task died.
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

/// SHA-256 of an access token: the only form in which tokens are stored or cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Hashes a token as presented by a client.
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// The hash's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// An authenticated session: who is calling, from which login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The login (device).
    pub session_id: SessionId,
    /// The user.
    pub user_id: UserId,
    /// The user's name.
    pub username: String,
    /// May use the admin endpoints.
    pub is_admin: bool,
}

impl From<SessionRecord> for Session {
    fn from(r: SessionRecord) -> Self {
        Self {
            session_id: r.session_id,
            user_id: r.user_id,
            username: r.username,
            is_admin: r.is_admin,
        }
    }
}

/// A successful login.
#[derive(Debug, Clone)]
pub struct Login {
    /// The bearer token; shown once, never stored.
    pub token: String,
    /// The new session.
    pub session: Session,
}

/// Generates a random URL-safe secret of `bytes` random bytes (hex encoded).
pub fn random_secret(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::fill(&mut buf[..]);
    hex::encode(buf)
}

/// Hashes a password with Argon2id (default parameters, random salt).
///
/// # Errors
/// [`AuthError::Hashing`] if hashing fails.
pub fn hash_password(password: &Password) -> Result<String, AuthError> {
    Argon2::default()
        .hash_password(password.expose())
        .map(|hash| hash.to_string())
        .map_err(|e| AuthError::Hashing(e.to_string()))
}

fn verify_password(candidate: &[u8], stored: &str) -> bool {
    PasswordHash::new(stored)
        .is_ok_and(|hash| Argon2::default().verify_password(candidate, &hash).is_ok())
}

/// Runs CPU-heavy hashing off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, AuthError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AuthError::Hashing(e.to_string()))
}

/// Accounts, logins and token validation over a [`Store`], with an in-memory session cache.
#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn Store>,
    /// Token hash -> session, sharded by the hash's first byte. Entries are added on login or
    /// first use and removed on logout; nothing else mutates them.
    cache: Arc<[Mutex<HashMap<TokenHash, Session>>]>,
    /// A valid hash to verify against for unknown users, so both failures cost the same.
    dummy_hash: Arc<str>,
}

impl Authenticator {
    /// An authenticator over `store`.
    ///
    /// # Errors
    /// [`AuthError::Hashing`] if the timing-equaliser hash cannot be computed.
    pub fn new(store: Arc<dyn Store>) -> Result<Self, AuthError> {
        let dummy =
            Password::parse(&random_secret(16)).map_err(|e| AuthError::Hashing(e.to_string()))?;
        Ok(Self {
            store,
            cache: (0..CACHE_SHARDS).map(|_| Mutex::default()).collect(),
            dummy_hash: hash_password(&dummy)?.into(),
        })
    }

    fn cache_shard(
        &self,
        hash: &TokenHash,
    ) -> std::sync::MutexGuard<'_, HashMap<TokenHash, Session>> {
        let shard = &self.cache[usize::from(hash.0[0]) % CACHE_SHARDS];
        shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates a user with a hashed password.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] (wrapped) if the name is taken.
    pub async fn register(
        &self,
        username: &Username,
        password: Password,
        is_admin: bool,
    ) -> Result<UserRecord, AuthError> {
        let hash = blocking(move || hash_password(&password)).await??;
        Ok(self.store.create_user(username, &hash, is_admin).await?)
    }

    /// Checks credentials and opens a new session.
    ///
    /// # Errors
    /// [`AuthError::BadCredentials`] for an unknown user or a wrong password alike.
    pub async fn login(&self, username: &str, password: &str) -> Result<Login, AuthError> {
        let user = self.store.user_by_username(username).await?;
        let stored = user
            .as_ref()
            .map_or_else(|| self.dummy_hash.to_string(), |u| u.password_hash.clone());
        let candidate = password.as_bytes().to_vec();
        let matches = blocking(move || verify_password(&candidate, &stored)).await?;
        let user = user.filter(|_| matches).ok_or(AuthError::BadCredentials)?;

        let token = random_secret(32);
        let hash = TokenHash::of(&token);
        let session_id = self
            .store
            .create_session(user.id, hash.as_bytes(), Utc::now())
            .await?;
        let session = Session {
            session_id,
            user_id: user.id,
            username: user.username,
            is_admin: user.is_admin,
        };
        self.cache_shard(&hash).insert(hash, session.clone());
        Ok(Login { token, session })
    }

    /// Resolves a bearer token to its session: from the cache, else once from the store.
    ///
    /// # Errors
    /// [`AuthError::InvalidToken`] if no session has this token.
    pub async fn authenticate(&self, token: &str) -> Result<Session, AuthError> {
        let hash = TokenHash::of(token);
        if let Some(session) = self.cache_shard(&hash).get(&hash) {
            return Ok(session.clone());
        }
        let session: Session = self
            .store
            .session_by_token(hash.as_bytes())
            .await?
            .ok_or(AuthError::InvalidToken)?
            .into();
        self.cache_shard(&hash).insert(hash, session.clone());
        Ok(session)
    }

    /// Revokes the session `token` belongs to.
    ///
    /// # Errors
    /// Storage failures; the cache entry is removed first either way.
    pub async fn logout(&self, token: &str, session: SessionId) -> Result<(), AuthError> {
        let hash = TokenHash::of(token);
        self.cache_shard(&hash).remove(&hash);
        Ok(self.store.delete_session(session).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let password = Password::parse("correct horse").unwrap();
        let hash = hash_password(&password).unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(b"correct horse", &hash));
        assert!(!verify_password(b"wrong horse", &hash));
        assert!(!verify_password(b"correct horse", "not a phc string"));
    }

    #[test]
    fn secrets_are_long_and_distinct() {
        let (a, b) = (random_secret(32), random_secret(32));
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_ne!(TokenHash::of(&a), TokenHash::of(&b));
    }
}
