//! Domain values and the pure rules over them: ids, usernames, passwords, presence, privacy
//! settings and the visibility rule. Every input with rules is a newtype with a private field
//! and one `parse` constructor, so code past the HTTP boundary only ever holds valid values.
//! Nothing here does I/O or reads a clock; every other module builds on this one.

mod account;
mod presence;
mod privacy;
mod rate;
mod rfc3339;
mod visibility;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use account::{DomainError, Password, Username};
pub use presence::{
    Activity, ActivityState, Availability, ManualStatus, Platform, Platforms, PresenceEvent,
    PresenceStatus, PresenceView, PresenceWrite, RestoredUser, StatusMode, StoredSession, next_seq,
};
pub use privacy::{
    LastSeenAudience, MAX_LIST_LEN, OnlineAudience, PrivacyChange, PrivacyChanged, PrivacySettings,
    SettingsUpdate, StoredPrivacy, UserPrivacy, Viewer,
};
pub use rate::Rate;
pub use rfc3339::with_rfc3339;
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

/// A session as the presence engine needs it: which one, and on what kind of device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionRef {
    /// The session.
    pub id: SessionId,
    /// Its device platform.
    pub platform: Platform,
}

impl SessionRef {
    /// A session on the default platform, `web`.
    pub fn web(id: SessionId) -> Self {
        Self {
            id,
            platform: Platform::Web,
        }
    }
}

/// The device a session runs on, as a login names it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Device {
    /// Its platform (`web` unless said).
    pub platform: Platform,
    /// A name the client chose ("Ahmad's iPhone"), 1-64 characters.
    pub name: Option<String>,
}

impl Device {
    /// Longest device name, in characters.
    pub const MAX_NAME: usize = 64;

    /// Validates a device.
    ///
    /// # Errors
    /// [`DomainError::DeviceName`] for a blank name or one over 64 characters.
    pub fn parse(platform: Platform, name: Option<&str>) -> Result<Self, DomainError> {
        match name {
            Some(name) if name.trim().is_empty() || name.chars().count() > Self::MAX_NAME => {
                Err(DomainError::DeviceName)
            }
            name => Ok(Self {
                platform,
                name: name.map(str::to_owned),
            }),
        }
    }
}
