//! Privacy: contacts, blocks and visibility settings, and the service that applies the rule.
//!
//! [`rules`] is the pure rule ([`rules::decide`]). [`Privacy`] (in `service.rs`) is the cheap,
//! cloneable service the server holds: a sharded in-memory cache of each loaded user's settings
//! and lists, so [`Privacy::filter`] answers without touching the database, plus the write path
//! (store first, then cache) and a change notification for the push layer. This file holds the
//! types they share. This module does not own presence (the engine does) nor HTTP.

pub mod rules;
mod service;

use std::collections::BTreeSet;

pub use rules::{
    LastSeenApprox, LastSeenAudience, OnlineAudience, PrivacySettings, Relationship, Visibility,
    VisiblePresence, decide,
};
pub use service::Privacy;

use crate::auth::Session;
use crate::domain::UserId;
use crate::store::StoreError;

/// Longest contact list, block list and except list of one user; bounds the cache per user.
pub const MAX_LIST_LEN: usize = 10_000;

/// One user's privacy data: settings and the three lists, each ordered by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserPrivacy {
    /// Visibility settings.
    pub settings: PrivacySettings,
    /// Users this user added as contacts.
    pub contacts: BTreeSet<UserId>,
    /// Users this user blocked.
    pub blocked: BTreeSet<UserId>,
    /// The `contacts_except` list (kept while another `last_seen` setting is active).
    pub except: BTreeSet<UserId>,
}

/// A user's privacy data as stored, with the version of the write that produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPrivacy {
    /// Whose data.
    pub user_id: UserId,
    /// Bumped by every write; 0 for a user who never changed anything.
    pub version: u64,
    /// The data.
    pub data: UserPrivacy,
}

/// New settings, as `PUT /api/users/me/privacy/` gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsUpdate {
    /// Who sees `last_seen`.
    pub last_seen: LastSeenAudience,
    /// Who sees online status.
    pub online: OnlineAudience,
    /// Invisible mode. Turning it on records the write's time; keeping it on keeps that time.
    pub invisible: bool,
    /// The `contacts_except` list (replaces the old one).
    pub except: BTreeSet<UserId>,
}

/// One change of a user's privacy data, applied by the store in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrivacyChange {
    /// Add a user to the contact list.
    AddContact(UserId),
    /// Remove a user from the contact list.
    RemoveContact(UserId),
    /// Block a user.
    Block(UserId),
    /// Unblock a user.
    Unblock(UserId),
    /// Replace the settings and the except list.
    Settings(SettingsUpdate),
}

/// Published after every write of a user's settings, contacts or blocks (subscribers re-filter
/// and send only what changed for them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrivacyChanged {
    /// Whose privacy data changed: what others may see of `user` may differ now.
    pub user: UserId,
    /// `user`'s settings were written, so by reciprocity (their own `last_seen` setting) what
    /// `user` may see of others may differ too.
    pub own_view_changed: bool,
}

/// Who is looking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Viewer {
    /// The viewing user.
    pub id: UserId,
    /// An admin sees everything, like the admin endpoints.
    pub is_admin: bool,
}

impl From<&Session> for Viewer {
    fn from(session: &Session) -> Self {
        Self {
            id: session.user_id,
            is_admin: session.is_admin,
        }
    }
}

/// Why a privacy change was refused.
#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    /// The change names the user themself (`what` says which list).
    #[error("You cannot add yourself to your {0}.")]
    SelfReference(&'static str),
    /// The except list names users that do not exist.
    #[error("No such users: {}.", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    UnknownUsers(Vec<UserId>),
    /// The except list is longer than [`MAX_LIST_LEN`].
    #[error("The except list may have at most {max} users.", max = MAX_LIST_LEN)]
    TooLong,
    /// The contact or block list already has [`MAX_LIST_LEN`] entries.
    #[error("{0}")]
    ListFull(&'static str),
    /// Storage failed, or refused the change (conflict, not found).
    #[error(transparent)]
    Store(#[from] StoreError),
}
