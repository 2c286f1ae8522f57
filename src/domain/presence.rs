//! Presence as values: a user's status, their presence as the engine reports it, transitions,
//! and the shapes in which presence is stored and restored. No I/O and no clock reads.

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use std::sync::Arc;

use super::{DomainError, SessionId, UserId};

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

/// How present an online user is: at the device (`active`), away from it (`idle`), or not to
/// be disturbed (`dnd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    /// Real activity on at least one live session recently.
    Active,
    /// No real activity for a while (or the user set "away").
    Idle,
    /// The user set "do not disturb".
    Dnd,
}

impl Availability {
    /// The value as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Idle => "idle",
            Self::Dnd => "dnd",
        }
    }
}

/// What a request or message says about the user being at the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Keeps the session live and says nothing about the user (a plain heartbeat, an open
    /// socket).
    Keepalive,
    /// The user did something (any request but the heartbeat, or an explicit "active").
    Active,
    /// The user is away from the device (an explicit "idle").
    Idle,
}

/// What a client reports about the user: at the device or away from it (the body of a
/// heartbeat, the `activity` socket message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ActivityState {
    /// The user is at the device.
    Active,
    /// The user is away from the device.
    Idle,
}

impl From<ActivityState> for Activity {
    fn from(state: ActivityState) -> Self {
        match state {
            ActivityState::Active => Self::Active,
            ActivityState::Idle => Self::Idle,
        }
    }
}

/// The kind of device a session runs on.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// A desktop app.
    Desktop,
    /// A phone or tablet app.
    Mobile,
    /// A browser (the default).
    #[default]
    Web,
}

impl Platform {
    /// Every platform, in their sorted (alphabetical) order.
    pub const ALL: [Self; 3] = [Self::Desktop, Self::Mobile, Self::Web];

    /// The value as stored and serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Desktop => "desktop",
            Self::Mobile => "mobile",
            Self::Web => "web",
        }
    }

    /// Parses a stored value; anything unknown reads as `web`.
    pub fn from_column(raw: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == raw)
            .unwrap_or_default()
    }

    /// The platform's bit in [`Platforms`].
    pub fn bit(self) -> u8 {
        match self {
            Self::Desktop => 1,
            Self::Mobile => 2,
            Self::Web => 4,
        }
    }
}

/// A set of platforms, iterated in sorted order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Platforms(u8);

impl Platforms {
    /// The set with exactly these bits (see [`Platform::bit`]); unknown bits are dropped.
    pub fn from_bits(bits: u8) -> Self {
        Self(bits & 7)
    }

    /// The set's bits.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Adds a platform.
    pub fn insert(&mut self, platform: Platform) {
        self.0 |= platform.bit();
    }

    /// The platforms in sorted order.
    pub fn to_vec(self) -> Vec<Platform> {
        Platform::ALL
            .into_iter()
            .filter(|p| self.0 & p.bit() != 0)
            .collect()
    }
}

impl FromIterator<Platform> for Platforms {
    fn from_iter<I: IntoIterator<Item = Platform>>(iter: I) -> Self {
        let mut set = Self::default();
        for platform in iter {
            set.insert(platform);
        }
        set
    }
}

/// A user's own choice of how available they look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatusMode {
    /// Availability follows activity (the default).
    #[default]
    Auto,
    /// Always `idle` while online.
    Away,
    /// Always `dnd` while online.
    Dnd,
}

impl StatusMode {
    /// The value as stored and serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Away => "away",
            Self::Dnd => "dnd",
        }
    }

    /// Parses a stored value; anything unknown reads as `auto`.
    pub fn from_column(raw: &str) -> Self {
        [Self::Auto, Self::Away, Self::Dnd]
            .into_iter()
            .find(|m| m.as_str() == raw)
            .unwrap_or_default()
    }
}

/// A user's manual status: a mode, an optional text and emoji, and when it resets itself.
/// Validated by [`ManualStatus::parse`]; cheap to clone (the texts are shared).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ManualStatus {
    /// The mode.
    pub mode: StatusMode,
    /// At most [`ManualStatus::MAX_TEXT`] characters, e.g. "In a meeting".
    pub text: Option<Arc<str>>,
    /// One emoji.
    pub emoji: Option<Arc<str>>,
    /// When the server resets it to the default by itself.
    pub expires_at: Option<DateTime<Utc>>,
}

impl ManualStatus {
    /// Longest status text, in characters.
    pub const MAX_TEXT: usize = 100;

    /// Validates a status set at `now`.
    ///
    /// # Errors
    /// [`DomainError::StatusText`] for a text over 100 characters (or blank),
    /// [`DomainError::StatusEmoji`] for anything but one emoji, [`DomainError::StatusExpiry`]
    /// for an expiry that is not in the future.
    pub fn parse(
        mode: StatusMode,
        text: Option<&str>,
        emoji: Option<&str>,
        expires_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Self, DomainError> {
        let text = match text {
            Some(text) if text.trim().is_empty() || text.chars().count() > Self::MAX_TEXT => {
                return Err(DomainError::StatusText);
            }
            Some(text) => Some(Arc::from(text)),
            None => None,
        };
        let emoji = match emoji {
            Some(emoji) if !is_one_emoji(emoji) => return Err(DomainError::StatusEmoji),
            Some(emoji) => Some(Arc::from(emoji)),
            None => None,
        };
        if expires_at.is_some_and(|at| at <= now) {
            return Err(DomainError::StatusExpiry);
        }
        // Milliseconds are as precise as a reset is (and what every backend keeps exactly).
        let expires_at = expires_at.map(|at| at.trunc_subsecs(3));
        Ok(Self {
            mode,
            text,
            emoji,
            expires_at,
        })
    }

    /// Whether this is the default (auto, nothing set): then nothing needs remembering.
    pub fn is_default(&self) -> bool {
        self.mode == StatusMode::Auto && self.text.is_none() && self.emoji.is_none()
    }
}

/// Whether `raw` is one emoji: one pictographic character (or a flag's pair of regional
/// indicators, or a keycap), optionally with variation selectors, skin tones, tags, and
/// zero-width-joined further pictographs (👨‍👩‍👧).
fn is_one_emoji(raw: &str) -> bool {
    fn pictographic(c: char) -> bool {
        matches!(u32::from(c),
            0x00A9 | 0x00AE | 0x203C | 0x2049 | 0x2122 | 0x2139 | 0x2194..=0x21AA
            | 0x231A..=0x23FF | 0x24C2 | 0x25AA..=0x27BF | 0x2934 | 0x2935
            | 0x2B05..=0x2B55 | 0x3030 | 0x303D | 0x3297 | 0x3299 | 0x1F000..=0x1FAFF)
    }
    fn modifier(c: char) -> bool {
        matches!(u32::from(c), 0xFE0E | 0xFE0F | 0x1F3FB..=0x1F3FF | 0xE0020..=0xE007F | 0x20E3)
    }
    fn regional(c: char) -> bool {
        matches!(u32::from(c), 0x1F1E6..=0x1F1FF)
    }
    let chars: Vec<char> = raw.chars().collect();
    if chars.is_empty() || raw.len() > 64 {
        return false;
    }
    // A flag: exactly two regional indicators.
    if chars.iter().all(|&c| regional(c)) {
        return chars.len() == 2;
    }
    // A keycap: 0-9, # or *, an optional VS16, then U+20E3.
    if chars[0].is_ascii_digit() || chars[0] == '#' || chars[0] == '*' {
        return matches!(chars[1..], ['\u{20E3}'] | ['\u{FE0F}', '\u{20E3}']);
    }
    let mut expect_base = true;
    for &c in &chars {
        if expect_base {
            if !pictographic(c) {
                return false;
            }
            expect_base = false;
        } else if c == '\u{200D}' {
            expect_base = true;
        } else if !modifier(c) {
            return false;
        }
    }
    !expect_base
}

/// Presence of one user as the engine knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceView {
    /// Online iff at least one session is live.
    pub status: PresenceStatus,
    /// Time of the last activity, if there ever was one.
    pub last_seen: Option<DateTime<Utc>>,
    /// Sequence number of the last change.
    pub seq: u64,
    /// How present the user is; `None` while offline.
    pub availability: Option<Availability>,
    /// Platforms of the live sessions (empty while offline).
    pub platforms: Platforms,
    /// The user's manual status.
    pub manual: ManualStatus,
}

impl PresenceView {
    /// The view of a user with no state: offline, never seen.
    pub fn offline(last_seen: Option<DateTime<Utc>>, seq: u64, manual: ManualStatus) -> Self {
        Self {
            status: PresenceStatus::Offline,
            last_seen,
            seq,
            availability: None,
            platforms: Platforms::default(),
            manual,
        }
    }
}

/// A change of one user's visible presence, published on the engine's event channel.
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
    /// How present the user is now; `None` while offline.
    pub availability: Option<Availability>,
    /// Platforms of the live sessions now.
    pub platforms: Platforms,
    /// The manual status now.
    pub manual: ManualStatus,
}

impl PresenceEvent {
    /// The user's presence as of this event.
    pub fn view(&self) -> PresenceView {
        PresenceView {
            status: self.status,
            last_seen: Some(self.last_seen),
            seq: self.seq,
            availability: self.availability,
            platforms: self.platforms,
            manual: self.manual.clone(),
        }
    }
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
    /// The manual status with this expiry reset itself: the stored one resets too, if it is
    /// still that one (a newer status set meanwhile stays).
    pub expired_status: Option<DateTime<Utc>>,
}

impl PresenceWrite {
    /// `user`'s status, `last_seen` and `seq` as `view` has them, with no session written.
    pub fn of_view(user: UserId, view: &PresenceView) -> Self {
        Self {
            user_id: user,
            status: view.status,
            last_seen: view.last_seen,
            seq: view.seq,
            expired_status: None,
            sessions: Vec::new(),
        }
    }
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
    /// The session's device platform.
    pub platform: Platform,
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
    /// The stored manual status.
    pub manual: ManualStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_emoji_is_accepted_and_anything_else_refused() {
        for ok in ["📅", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "1️⃣", "☕", "🏳️‍🌈"]
        {
            assert!(is_one_emoji(ok), "{ok} should be one emoji");
        }
        for bad in [
            "",
            "a",
            "📅📅",
            "🇫",
            "🇫🇷🇩🇪",
            "hi 👋",
            "1",
            "👍a",
            "\u{200D}",
        ] {
            assert!(!is_one_emoji(bad), "{bad:?} should be refused");
        }
    }

    #[test]
    fn a_manual_status_is_validated() {
        let now = Utc::now();
        let later = Some(now + chrono::Duration::hours(1));
        let ok = ManualStatus::parse(
            StatusMode::Dnd,
            Some("In a meeting"),
            Some("📅"),
            later,
            now,
        );
        assert_eq!(ok.unwrap().text.as_deref(), Some("In a meeting"));
        let long = "x".repeat(101);
        assert_eq!(
            ManualStatus::parse(StatusMode::Auto, Some(&long), None, None, now),
            Err(DomainError::StatusText)
        );
        assert!(
            ManualStatus::parse(StatusMode::Auto, Some(&"é".repeat(100)), None, None, now).is_ok()
        );
        assert_eq!(
            ManualStatus::parse(StatusMode::Auto, None, Some("ab"), None, now),
            Err(DomainError::StatusEmoji)
        );
        assert_eq!(
            ManualStatus::parse(StatusMode::Away, None, None, Some(now), now),
            Err(DomainError::StatusExpiry)
        );
        assert!(ManualStatus::default().is_default());
    }

    #[test]
    fn platforms_iterate_sorted() {
        let set: Platforms = [Platform::Web, Platform::Desktop, Platform::Web]
            .into_iter()
            .collect();
        assert_eq!(set.to_vec(), vec![Platform::Desktop, Platform::Web]);
        assert_eq!(Platforms::from_bits(set.bits()), set);
        assert_eq!(Platform::from_column("phone"), Platform::Web);
    }

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
