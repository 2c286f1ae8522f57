//! The session cache's storage: token hash -> session, in about 55 bytes per cached token.
//!
//! A cached session is a 44-byte [`Entry`] with its key: the first 12 bytes of the token's
//! SHA-256 (with N tokens cached, guessing a token whose hash starts like one of theirs takes
//! about 2^96 / N online tries, and two of the N sharing a prefix by chance has a probability
//! of about N² / 2^97, 2^-57 at a million), the session and user ids as 32-bit numbers, the
//! username inline (up to 22 bytes), and the platform and admin flag in one byte. The username
//! stays: a socket's `ready` and `/me` show it, and reading it from the store instead cost
//! every socket opening a database read (5x slower to open 10,000 sockets). Entries sit in a
//! [`Packed`] map, as the engine's users do. A session that does not fit an entry (an id beyond
//! 32 bits, a longer username, or an expiry) is kept whole in a side map, at several times the
//! size: a deployment whose session ids pass 2^32 should expect that.

use std::collections::HashMap;

use super::{Session, TokenHash};
use crate::domain::{Platform, SessionId, UserId};
use crate::packed::{Packed, PackedKey};

/// Bytes of the token hash the cache keys by.
const KEY_BYTES: usize = 12;

/// Bytes of a username kept inline.
const NAME_BYTES: usize = 22;

/// The part of a token hash the cache keys by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key([u8; KEY_BYTES]);

impl Key {
    fn of(hash: &TokenHash) -> Self {
        let mut key = [0; KEY_BYTES];
        key.copy_from_slice(&hash.as_bytes()[..KEY_BYTES]);
        Self(key)
    }
}

/// Its first eight bytes (a SHA-256 is uniform already), rotated so hashbrown's tag (the top 7
/// bits) is not the bits that chose the cache shard.
impl PackedKey for Key {
    fn table_hash(&self) -> u64 {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(bytes).rotate_left(29)
    }
}

/// An id that fits 32 bits, as bytes (byte arrays keep the entry unpadded).
fn narrow(id: i64) -> Option<[u8; 4]> {
    u32::try_from(id).ok().map(u32::to_le_bytes)
}

fn widen(id: [u8; 4]) -> i64 {
    i64::from(u32::from_le_bytes(id))
}

/// One cached session of a login's token (with its key, 44 bytes).
#[derive(Debug, Clone)]
struct Entry {
    session_id: [u8; 4],
    user_id: [u8; 4],
    /// The username's length, then its bytes.
    name_len: u8,
    name: [u8; NAME_BYTES],
    /// The platform's bit (see [`Platform::bit`]), plus 8 for an admin.
    flags: u8,
}

impl Entry {
    /// `session` as an entry, if it fits one.
    fn of(session: &Session) -> Option<Self> {
        let bytes = session.username.as_bytes();
        if bytes.len() > NAME_BYTES || session.valid_until.is_some() {
            return None;
        }
        let mut name = [0; NAME_BYTES];
        name[..bytes.len()].copy_from_slice(bytes);
        Some(Self {
            session_id: narrow(session.session_id.0)?,
            user_id: narrow(session.user_id.0)?,
            name_len: u8::try_from(bytes.len()).ok()?,
            name,
            flags: session.platform.bit() | if session.is_admin { 8 } else { 0 },
        })
    }

    fn session(&self) -> Session {
        let name = &self.name[..usize::from(self.name_len)];
        let platform = Platform::ALL
            .into_iter()
            .find(|p| self.flags & p.bit() != 0)
            .unwrap_or_default();
        Session {
            session_id: SessionId(widen(self.session_id)),
            user_id: UserId(widen(self.user_id)),
            // Copied from a `String`, so valid UTF-8.
            username: String::from_utf8_lossy(name).into_owned(),
            is_admin: self.flags & 8 != 0,
            platform,
            valid_until: None,
        }
    }
}

/// Cached sessions by token hash.
#[derive(Debug, Default)]
pub(super) struct SessionCache {
    entries: Packed<Key, Entry>,
    /// Sessions that do not fit an [`Entry`].
    wide: HashMap<Key, Session>,
}

impl SessionCache {
    /// The session cached under `hash`.
    pub(super) fn get(&self, hash: &TokenHash) -> Option<Session> {
        let key = Key::of(hash);
        match self.entries.get(&key) {
            Some(entry) => Some(entry.session()),
            None => self.wide.get(&key).cloned(),
        }
    }

    /// Whether a session is cached under `hash`.
    pub(super) fn contains_key(&self, hash: &TokenHash) -> bool {
        let key = Key::of(hash);
        self.entries.contains_key(&key) || self.wide.contains_key(&key)
    }

    /// Caches `session` under `hash`, replacing what was there.
    pub(super) fn insert(&mut self, hash: TokenHash, session: Session) {
        self.remove(&hash);
        let key = Key::of(&hash);
        match Entry::of(&session) {
            Some(entry) => self.entries.insert(key, entry),
            None => {
                self.wide.insert(key, session);
            }
        }
    }

    /// Drops the session cached under `hash`, if any.
    pub(super) fn remove(&mut self, hash: &TokenHash) {
        let key = Key::of(hash);
        self.wide.remove(&key);
        self.entries.remove(&key);
    }

    /// Drops every cached session.
    pub(super) fn clear(&mut self) {
        self.entries.clear();
        self.wide.clear();
    }

    /// Number of cached sessions.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len() + self.wide.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: i64, name: &str) -> Session {
        Session {
            session_id: SessionId(id),
            user_id: UserId(id * 10),
            username: name.to_owned(),
            is_admin: id % 2 == 0,
            platform: Platform::ALL[id as usize % 3],
            valid_until: None,
        }
    }

    #[test]
    fn an_entry_with_its_key_is_44_bytes() {
        assert_eq!(std::mem::size_of::<(Key, Entry)>(), 44);
    }

    #[test]
    fn sessions_come_back_as_cached_and_go_when_removed() {
        let mut cache = SessionCache::default();
        let long = "x".repeat(150);
        let mut expiring = session(7, "jwt-user");
        expiring.valid_until = Some(std::time::UNIX_EPOCH);
        let mut big_session = session(9, "big-session");
        big_session.session_id = SessionId(i64::from(u32::MAX) + 1);
        let mut big_user = session(11, "big-user");
        big_user.user_id = UserId(i64::MAX);
        let sessions: Vec<(TokenHash, Session)> = (0..200)
            .map(|i| {
                let s = match i {
                    5 => session(i, &long),
                    7 => expiring.clone(),
                    9 => big_session.clone(),
                    11 => big_user.clone(),
                    _ => session(i, &format!("user-{i}")),
                };
                (TokenHash::of(&format!("token {i}")), s)
            })
            .collect();
        for (hash, s) in &sessions {
            cache.insert(*hash, s.clone());
        }
        assert_eq!(cache.len(), 200);
        assert_eq!(cache.wide.len(), 4, "the sessions no entry holds");
        for (hash, s) in &sessions {
            assert_eq!(cache.get(hash).as_ref(), Some(s));
        }
        for (hash, _) in sessions.iter().step_by(3) {
            cache.remove(hash);
            cache.remove(hash);
        }
        for (i, (hash, s)) in sessions.iter().enumerate() {
            let expected = (i % 3 != 0).then_some(s);
            assert_eq!(cache.get(hash).as_ref(), expected, "{i}");
            assert_eq!(cache.contains_key(hash), expected.is_some());
        }
        let (hash, _) = &sessions[1];
        cache.insert(*hash, session(1000, "replaced"));
        assert_eq!(cache.get(hash).map(|s| s.session_id), Some(SessionId(1000)));
        assert_eq!(cache.len(), 133);
        // A session moving between an entry and the side map leaves nothing behind.
        let (hash, _) = &sessions[2];
        cache.insert(*hash, big_user.clone());
        assert_eq!(cache.get(hash), Some(big_user));
        cache.insert(*hash, session(2, "back"));
        assert_eq!(cache.get(hash), Some(session(2, "back")));
        assert_eq!(cache.len(), 133);
        cache.clear();
        assert!(!cache.contains_key(hash));
    }
}
