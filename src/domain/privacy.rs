//! Privacy data: who may see a user's presence (settings), the user's contact, block and
//! except lists, and the changes a user can make to them. Plain data, no I/O; the rule that
//! applies them is in `visibility`.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::UserId;

/// Who may see a user's `last_seen` (WhatsApp's "Last seen" setting).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LastSeenAudience {
    /// Every user (the default, and the seed's behaviour).
    #[default]
    Everyone,
    /// Users in the owner's contact list.
    Contacts,
    /// Users in the owner's contact list, except those in the owner's except list.
    ContactsExcept,
    /// No one. Reciprocity: such a user sees no one else's `last_seen` either.
    Nobody,
}

impl LastSeenAudience {
    /// The value as stored and serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Everyone => "everyone",
            Self::Contacts => "contacts",
            Self::ContactsExcept => "contacts_except",
            Self::Nobody => "nobody",
        }
    }

    /// Parses a stored value; `None` for anything else.
    pub fn from_column(raw: &str) -> Option<Self> {
        [
            Self::Everyone,
            Self::Contacts,
            Self::ContactsExcept,
            Self::Nobody,
        ]
        .into_iter()
        .find(|v| v.as_str() == raw)
    }
}

/// Who may see whether a user is online (WhatsApp's "Online" setting).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnlineAudience {
    /// Every user not blocked by the owner (the default).
    #[default]
    Everyone,
    /// Exactly the users who may see the owner's `last_seen`.
    SameAsLastSeen,
}

impl OnlineAudience {
    /// The value as stored and serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Everyone => "everyone",
            Self::SameAsLastSeen => "same_as_last_seen",
        }
    }

    /// Parses a stored value; `None` for anything else.
    pub fn from_column(raw: &str) -> Option<Self> {
        [Self::Everyone, Self::SameAsLastSeen]
            .into_iter()
            .find(|v| v.as_str() == raw)
    }
}

/// A user's privacy settings. The default is the seed's behaviour: everything visible.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrivacySettings {
    /// Who sees `last_seen`.
    pub last_seen: LastSeenAudience,
    /// Who sees `online_status` / `is_online`.
    pub online: OnlineAudience,
    /// Set while the user is invisible: the moment they went invisible, which is also the
    /// `last_seen` everyone else sees meanwhile. `None` when not invisible.
    pub invisible_since: Option<DateTime<Utc>>,
}

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

/// New settings: all of them (`PUT /api/users/me/privacy/`) or some (`PATCH`); a field left
/// `None` keeps its stored value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsUpdate {
    /// Who sees `last_seen`.
    pub last_seen: Option<LastSeenAudience>,
    /// Who sees online status.
    pub online: Option<OnlineAudience>,
    /// Invisible mode. Turning it on records the write's time; keeping it on keeps that time.
    pub invisible: Option<bool>,
    /// The `contacts_except` list (replaces the old one).
    pub except: Option<BTreeSet<UserId>>,
}

impl SettingsUpdate {
    /// An update replacing every setting.
    pub fn replace(
        last_seen: LastSeenAudience,
        online: OnlineAudience,
        invisible: bool,
        except: BTreeSet<UserId>,
    ) -> Self {
        Self {
            last_seen: Some(last_seen),
            online: Some(online),
            invisible: Some(invisible),
            except: Some(except),
        }
    }
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
