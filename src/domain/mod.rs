//! Domain values and the pure rules over them: ids, usernames, passwords, presence, privacy
//! settings and the visibility rule. Every input with rules is a newtype with a private field
//! and one `parse` constructor, so code past the HTTP boundary only ever holds valid values.
//! Nothing here does I/O or reads a clock; every other module builds on this one.

mod account;
mod presence;
mod privacy;
mod visibility;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use account::{DomainError, Password, Username};
pub use presence::{
    PresenceEvent, PresenceStatus, PresenceView, PresenceWrite, RestoredUser, StoredSession,
    next_seq,
};
pub use privacy::{
    LastSeenAudience, MAX_LIST_LEN, OnlineAudience, PrivacyChange, PrivacyChanged, PrivacySettings,
    SettingsUpdate, StoredPrivacy, UserPrivacy, Viewer,
};
pub use visibility::{LastSeenApprox, Relationship, Visibility, VisiblePresence, decide};

/// A user's numeric id, as stored in the `users` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub i64);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One login (one device): the unit of activity in the presence engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub i64);
