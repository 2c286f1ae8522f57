//! Accounts and access tokens: Argon2id password hashes, opaque tokens, a session cache.
//!
//! A token is 256 random bits, shown to the client once; the store keeps only its SHA-256. Each
//! login creates one session (one device). Validated sessions are cached in memory, so the hot
//! path hashes the token and reads one shard of the cache, without touching the database;
//! logout removes the entry, so revocation takes effect at once. This module does not track
//! presence: callers tell the engine about activity.
//!
//! External tokens (JWTs, see [`jwt`]) work side by side: a token shaped like a JWT is verified
//! once (its signature and claims), cached until it expires, and counts as one session of the
//! user its claim names, created with the user on first sight. That session is stored and
//! cached like a login's, keyed by the SHA-256 of the token's `jti` (else of the token), so
//! listing, revoking and the cluster's revocation messages treat both kinds alike.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, broadcast};
use tokio_util::sync::CancellationToken;

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use chrono::Utc;
use sha2::{Digest, Sha256};

use crate::bus::{Bus, BusMessage};
use crate::domain::{Device, Password, Platform, SessionId, SessionRef, UserId, Username, Viewer};
use crate::shards::{ShardKey, Sharded, lock};
use crate::store::{SessionRecord, Store, StoreError, UserRecord};

mod cache;
mod external;
pub mod jwt;

use external::VerifiedShard;
use jwt::{JwtVerifier, Verified};

/// Shards of the session cache; a power of two.
const CACHE_SHARDS: usize = 16;
/// Capacity of the revocation channel; a receiver that falls further behind sees `Lagged`.
const REVOCATIONS_CAPACITY: usize = 4096;
/// Capacity of the eviction channel (see [`Authenticator::evictions`]), likewise.
const EVICTIONS_CAPACITY: usize = 4096;

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
    /// Too many password hashes are already running or waiting.
    #[error("too many logins in progress")]
    Busy,
    /// Hashing failed or its task died.
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

/// SHA-256 of an access token: the only form in which tokens are stored or cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl ShardKey for TokenHash {
    fn shard_hash(&self) -> u64 {
        // A SHA-256 is uniform already: any eight of its bytes will do.
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(bytes)
    }
}

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
    /// The session's device platform.
    pub platform: Platform,
    /// When its token stops being accepted (a JWT's `exp` plus the leeway); `None` for a
    /// login's token, valid until revoked. Connections close then.
    pub valid_until: Option<std::time::SystemTime>,
}

impl Session {
    /// [`Session::valid_until`] on tokio's clock.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        let left = self
            .valid_until?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        Some(tokio::time::Instant::now() + left)
    }

    /// The session as the presence engine needs it.
    pub fn reference(&self) -> SessionRef {
        SessionRef {
            id: self.session_id,
            platform: self.platform,
        }
    }

    /// The session's user as a viewer of others' presence.
    pub fn viewer(&self) -> Viewer {
        Viewer {
            id: self.user_id,
            is_admin: self.is_admin,
        }
    }
}

impl From<SessionRecord> for Session {
    fn from(r: SessionRecord) -> Self {
        Self {
            session_id: r.session_id,
            user_id: r.user_id,
            username: r.username,
            is_admin: r.is_admin,
            platform: r.platform,
            valid_until: None,
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

thread_local! {
    /// Argon2's working memory (19 MiB with the default parameters), kept by each hashing
    /// thread and reused by every hash it runs. The blocking pool is small, so this bounds what
    /// hashing holds; allocating it per hash instead left freed copies in glibc's per-thread
    /// arenas (over 1 GiB of RSS after a few hundred logins) and cost page faults every time.
    static ARGON2_MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

fn argon2_into(
    argon2: &Argon2<'_>,
    params: &Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), argon2::Error> {
    ARGON2_MEMORY.with(|memory| {
        let mut blocks = memory.borrow_mut();
        let needed = params.block_count();
        if blocks.len() < needed {
            blocks.resize(needed, Block::new());
        }
        argon2.hash_password_into_with_memory(password, salt, out, &mut blocks[..needed])
    })
}

fn hashing_error(error: impl std::fmt::Display) -> AuthError {
    AuthError::Hashing(error.to_string())
}

/// Hashes a password with Argon2id (default parameters, random salt) into a PHC string.
///
/// # Errors
/// [`AuthError::Hashing`] if hashing fails.
pub fn hash_password(password: &Password) -> Result<String, AuthError> {
    let params = Params::default();
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let salt = Salt::generate();
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    argon2_into(&argon2, &params, password.expose(), &salt, &mut out).map_err(hashing_error)?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(hashing_error)?,
        salt: Some(salt),
        hash: Some(Output::new(&out).map_err(hashing_error)?),
    };
    Ok(hash.to_string())
}

/// Whether `candidate` matches the PHC string `stored` (any Argon2 variant and parameters).
fn verify_password(candidate: &[u8], stored: &str) -> bool {
    let Ok(hash) = PasswordHash::new(stored) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let algorithm = Algorithm::try_from(hash.algorithm.as_str());
    let version = hash.version.map(Version::try_from).transpose();
    let (Ok(algorithm), Ok(version), Ok(params)) = (algorithm, version, Params::try_from(&hash))
    else {
        return false;
    };
    let argon2 = Argon2::new(algorithm, version.unwrap_or_default(), params.clone());
    let mut out = vec![0u8; expected.len()];
    // `Output`'s equality is constant-time.
    argon2_into(&argon2, &params, candidate, salt, &mut out).is_ok()
        && Output::new(&out).is_ok_and(|computed| computed == *expected)
}

/// Longest a login or registration waits for a free hashing slot before it is refused.
const HASHING_WAIT: Duration = Duration::from_secs(10);

/// One shard of the session cache.
#[derive(Default)]
struct CacheShard {
    sessions: cache::SessionCache,
    /// Bumped by every logout of a token of this shard; a database lookup that started before
    /// a bump does not cache its result (it may have read a row being deleted).
    revocations: u64,
}

/// Accounts, logins and token validation over a [`Store`], with an in-memory session cache.
#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn Store>,
    /// Token hash -> session, sharded by the hash's first byte. Entries are added on login or
    /// first use and removed on logout.
    cache: Arc<Sharded<Mutex<CacheShard>>>,
    /// A valid hash to verify against for unknown users, so both failures cost the same.
    dummy_hash: Arc<str>,
    /// Argon2 costs ~19 MiB and a core for tens of milliseconds per hash: at most one hash per
    /// core runs at once, so a burst of logins cannot exhaust memory or starve the server.
    hashing: Arc<Semaphore>,
    /// Sessions (devices) a user may have; a login beyond it revokes the least recently active.
    max_sessions: usize,
    /// Announces revoked sessions (their connections close).
    revoked: broadcast::Sender<SessionId>,
    /// Announces sessions revoked here for being over the per-user limit when a JWT opened a
    /// new one, whose presence whoever tracks it must end (see [`Authenticator::evictions`]).
    evicted: broadcast::Sender<(UserId, SessionId)>,
    /// Tells other nodes about revocations, and hears theirs.
    bus: Bus,
    /// Checks external tokens; `None` when no JWT key is configured.
    jwt: Option<Arc<JwtVerifier>>,
    /// Verified JWTs until they expire, sharded by the token's hash. Revocation does not touch
    /// it: it says what a token means, the session cache says whether its session still exists.
    verified: Arc<Sharded<Mutex<VerifiedShard>>>,
}

impl Authenticator {
    /// An authenticator over `store` allowing `max_sessions` sessions per user.
    ///
    /// # Errors
    /// [`AuthError::Hashing`] if the timing-equaliser hash cannot be computed.
    pub fn new(store: Arc<dyn Store>, max_sessions: usize, bus: Bus) -> Result<Self, AuthError> {
        let dummy =
            Password::parse(&random_secret(16)).map_err(|e| AuthError::Hashing(e.to_string()))?;
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Ok(Self {
            store,
            cache: Arc::new(Sharded::new(CACHE_SHARDS, Mutex::default)),
            dummy_hash: hash_password(&dummy)?.into(),
            hashing: Arc::new(Semaphore::new(cores)),
            max_sessions: max_sessions.max(1),
            revoked: broadcast::channel(REVOCATIONS_CAPACITY).0,
            evicted: broadcast::channel(EVICTIONS_CAPACITY).0,
            bus,
            jwt: None,
            verified: Arc::new(Sharded::new(CACHE_SHARDS, Mutex::default)),
        })
    }

    /// This authenticator, also accepting the JWTs `verifier` accepts.
    pub fn with_jwt(mut self, verifier: Option<JwtVerifier>) -> Self {
        self.jwt = verifier.map(Arc::new);
        self
    }

    fn cache_shard(&self, hash: &TokenHash) -> std::sync::MutexGuard<'_, CacheShard> {
        lock(self.cache.get(hash))
    }

    /// Runs CPU-heavy hashing off the async workers, one per core at a time.
    async fn hash_work<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AuthError> {
        let permit = tokio::time::timeout(HASHING_WAIT, self.hashing.clone().acquire_owned())
            .await
            .map_err(|_| AuthError::Busy)?
            .map_err(|_| AuthError::Busy)?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await
        .map_err(|e| AuthError::Hashing(e.to_string()))
    }

    /// Creates a user with a hashed password.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] (wrapped) if the name is taken; [`AuthError::Busy`] when too
    /// many hashes are waiting.
    pub async fn register(
        &self,
        username: &Username,
        password: Password,
        is_admin: bool,
    ) -> Result<UserRecord, AuthError> {
        let hash = self.hash_work(move || hash_password(&password)).await??;
        Ok(self.store.create_user(username, &hash, is_admin).await?)
    }

    /// Checks credentials and opens a new session.
    ///
    /// # Errors
    /// [`AuthError::BadCredentials`] for an unknown user or a wrong password alike;
    /// [`AuthError::Busy`] when too many hashes are waiting.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        device: &Device,
    ) -> Result<Login, AuthError> {
        let user = self.store.user_by_username(username).await?;
        let stored = user
            .as_ref()
            .map_or_else(|| self.dummy_hash.to_string(), |u| u.password_hash.clone());
        let candidate = password.as_bytes().to_vec();
        let matches = self
            .hash_work(move || verify_password(&candidate, &stored))
            .await?;
        let user = user.filter(|_| matches).ok_or(AuthError::BadCredentials)?;

        let token = random_secret(32);
        let hash = TokenHash::of(&token);
        let session_id = self
            .store
            .create_device_session(user.id, hash.as_bytes(), Utc::now(), device)
            .await?;
        let session = Session {
            session_id,
            user_id: user.id,
            username: user.username,
            is_admin: user.is_admin,
            platform: device.platform,
            valid_until: None,
        };
        self.cache_shard(&hash)
            .sessions
            .insert(hash, session.clone());
        Ok(Login { token, session })
    }

    /// Resolves a bearer token to its session: from the cache, else from the store (and then
    /// cached, unless a logout raced with the lookup). A JWT (when JWTs are configured) is
    /// verified first (once: the result is cached until it expires); its session, and its user,
    /// are created on first sight.
    ///
    /// # Errors
    /// [`AuthError::InvalidToken`] if no session has this token, or the JWT is refused.
    pub async fn authenticate(&self, token: &str) -> Result<Session, AuthError> {
        self.authenticate_keyed(token)
            .await
            .map(|(session, _)| session)
    }

    /// [`Authenticator::authenticate`], also giving the key the session is cached under, for
    /// [`Authenticator::still_valid`]: the token is hashed once per request.
    ///
    /// # Errors
    /// As [`Authenticator::authenticate`].
    pub async fn authenticate_keyed(&self, token: &str) -> Result<(Session, TokenHash), AuthError> {
        match self.jwt.as_deref() {
            Some(verifier) if jwt::looks_like_jwt(token) => {
                let hash = TokenHash::of(token);
                let verified = self.verify_jwt(verifier, &hash, token)?;
                let key = verified.session_key;
                let mut session = match self.session_of(key, Some(&verified)).await {
                    Ok(session) => session,
                    // A verified JWT is refused here only when its session was revoked.
                    Err(AuthError::InvalidToken) => {
                        self.remember_refusal(&hash);
                        return Err(AuthError::InvalidToken);
                    }
                    Err(error) => return Err(error),
                };
                let until = verified.expires_at.saturating_add(verifier.leeway());
                session.valid_until = std::time::UNIX_EPOCH.checked_add(Duration::from_secs(until));
                Ok((session, key))
            }
            _ => {
                let key = TokenHash::of(token);
                Ok((self.session_of(key, None).await?, key))
            }
        }
    }

    /// The session stored under `hash`: cached, else read (and cached), else, for a JWT,
    /// created.
    async fn session_of(
        &self,
        hash: TokenHash,
        jwt: Option<&Verified>,
    ) -> Result<Session, AuthError> {
        loop {
            let revocations = {
                let shard = self.cache_shard(&hash);
                if let Some(session) = shard.sessions.get(&hash) {
                    return Ok(session);
                }
                shard.revocations
            };
            let stored = self.store.session_by_token(hash.as_bytes()).await?;
            let session = match (stored, jwt) {
                (Some(record), _) => Session::from(record),
                (None, None) => return Err(AuthError::InvalidToken),
                (None, Some(verified)) => match self.open_jwt_session(verified).await? {
                    Some(session) => session,
                    // Another request created it meanwhile: read it.
                    None => continue,
                },
            };
            let mut shard = self.cache_shard(&hash);
            if shard.revocations == revocations {
                shard.sessions.insert(hash, session.clone());
                return Ok(session);
            }
            // A logout happened meanwhile: read again, the row may be gone now.
        }
    }

    /// Whether the session cached under `key` (from [`Authenticator::authenticate_keyed`]) is
    /// still valid as far as this process knows (after a logout it is not). Callers that
    /// recorded activity for a session re-check with this, so a request racing the session's
    /// logout cannot bring it back.
    pub fn still_valid(&self, key: &TokenHash) -> bool {
        self.cache_shard(key).sessions.contains_key(key)
    }

    /// Revokes `session`: deletes its row, then drops its token from the cache (so no lookup
    /// can put it back), then announces it on [`Authenticator::revocations`] so its open
    /// connections close. Revoking a session that is gone already only announces it again.
    ///
    /// # Errors
    /// Storage failures (the session then stays valid; the client may retry).
    pub async fn revoke(&self, session: SessionId) -> Result<(), AuthError> {
        let deleted = self.store.delete_session(session).await?;
        let hash = deleted.and_then(|bytes| <[u8; 32]>::try_from(bytes).ok());
        if let Some(hash) = hash {
            self.forget(TokenHash(hash));
        }
        // No receivers is fine: nothing is connected.
        let _ = self.revoked.send(session);
        if let Some(token_hash) = hash {
            let message = BusMessage::Revoked {
                session,
                token_hash,
            };
            if let Err(error) = self.bus.publish(&message).await {
                // The other nodes flush their caches when their feed comes back.
                tracing::warn!(%error, "could not tell the other nodes about a revocation");
            }
        }
        Ok(())
    }

    /// Applies revocations made on other nodes until `shutdown`: their tokens are forgotten
    /// and their connections here closed. When messages may have been lost, every cached token
    /// is forgotten (each is checked against the store again on its next use).
    pub async fn listen(self, shutdown: CancellationToken) {
        use broadcast::error::RecvError;
        let mut bus = self.bus.subscribe();
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => return,
                message = bus.recv() => message,
            };
            match message {
                Ok(BusMessage::Revoked {
                    session,
                    token_hash,
                }) => {
                    self.forget(TokenHash(token_hash));
                    let _ = self.revoked.send(session);
                }
                Ok(BusMessage::Resync) | Err(RecvError::Lagged(_)) => self.forget_all(),
                Ok(_) => {}
                Err(RecvError::Closed) => return,
            }
        }
    }

    fn forget_all(&self) {
        for shard in self.cache.all() {
            let mut shard = lock(shard);
            shard.sessions.clear();
            shard.revocations += 1;
        }
    }

    /// `user`'s sessions beyond the per-user limit, least recently active first: the ones a
    /// login must revoke.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn sessions_over_limit(&self, user: UserId) -> Result<Vec<SessionId>, AuthError> {
        Ok(self.store.sessions_beyond(user, self.max_sessions).await?)
    }

    /// A receiver of every session revoked from now on.
    pub fn revocations(&self) -> broadcast::Receiver<SessionId> {
        self.revoked.subscribe()
    }

    /// A receiver of the sessions revoked from now on because a JWT's first use opened one
    /// more than the per-user limit allows (a login's are ended by its caller). Their tokens
    /// are refused and their connections closed already; their presence is the receiver's to
    /// end ([`crate::sessions::Sessions::listen`]).
    pub fn evictions(&self) -> broadcast::Receiver<(UserId, SessionId)> {
        self.evicted.subscribe()
    }

    /// Drops a revoked token from the cache (its row is already deleted).
    fn forget(&self, hash: TokenHash) {
        let mut shard = self.cache_shard(&hash);
        shard.sessions.remove(&hash);
        shard.revocations += 1;
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
    fn hashes_interoperate_with_the_stock_argon2_api() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let stock = Argon2::default()
            .hash_password(b"correct horse")
            .unwrap()
            .to_string();
        assert!(verify_password(b"correct horse", &stock));
        assert!(!verify_password(b"wrong horse", &stock));
        let ours = hash_password(&Password::parse("correct horse").unwrap()).unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
    }

    #[test]
    fn secrets_are_long_and_distinct() {
        let (a, b) = (random_secret(32), random_secret(32));
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_ne!(TokenHash::of(&a), TokenHash::of(&b));
    }
}
