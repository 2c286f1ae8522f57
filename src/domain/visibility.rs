//! The privacy rule: what a viewer may see of an owner's presence. Pure: no I/O, no clock.
//!
//! [`decide`] is the one place the policy lives; every read path (HTTP single and batch reads,
//! and the push layer through the privacy service's `filter`) goes through it.
//! [`Visibility::apply`] then turns its answer into the values a client receives. Admin
//! endpoints and a user's own account endpoints do not filter at all; the rule agrees with them
//! (self and admin see all).

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use std::sync::Arc;

use super::{
    Availability, LastSeenAudience, OnlineAudience, Platforms, PresenceStatus, PresenceView,
    PrivacySettings,
};

/// What the viewer is to the owner. Facts can overlap; [`decide`] gives them this precedence:
/// self, then admin, then blocked, then the contact facts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relationship {
    /// The viewer is the owner.
    pub is_self: bool,
    /// The viewer is an admin (the operator's account): sees everything.
    pub viewer_is_admin: bool,
    /// The owner blocked the viewer.
    pub blocked: bool,
    /// The viewer is in the owner's contact list.
    pub contact: bool,
    /// The viewer is in the owner's `contacts_except` list.
    pub excepted: bool,
}

/// Coarse `last_seen`, like Telegram's, shown instead of an exact hidden one when the server
/// enables it (setting `last_seen_approx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LastSeenApprox {
    /// Less than 3 days ago (including "online now").
    Recently,
    /// 3 to 7 days ago.
    WithinWeek,
    /// 7 to 30 days ago.
    WithinMonth,
    /// 30 days ago or more, or never.
    LongAgo,
}

impl LastSeenApprox {
    /// The bucket of `last_seen` at `now`.
    pub fn of(last_seen: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Self {
        let Some(at) = last_seen else {
            return Self::LongAgo;
        };
        let age = now.signed_duration_since(at);
        if age < Duration::days(3) {
            Self::Recently
        } else if age < Duration::days(7) {
            Self::WithinWeek
        } else if age < Duration::days(30) {
            Self::WithinMonth
        } else {
            Self::LongAgo
        }
    }
}

/// The rule's answer: which parts of the owner's presence the viewer may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visibility {
    /// `online_status` and `is_online` are shown.
    pub online: bool,
    /// The exact `last_seen` is shown.
    pub last_seen: bool,
    /// The exact `last_seen` is hidden but its coarse form may be shown (if enabled).
    pub approx: bool,
    /// The viewer sees the invisible owner's mask (offline, `last_seen` frozen), not the truth.
    pub masked: bool,
}

impl Visibility {
    /// Everything, unmasked: self and admin.
    pub const FULL: Self = Self {
        online: true,
        last_seen: true,
        approx: false,
        masked: false,
    };

    /// Nothing at all: a viewer the owner blocked, or a state the caller could not establish.
    pub const NOTHING: Self = Self {
        online: false,
        last_seen: false,
        approx: false,
        masked: false,
    };

    /// The values the viewer receives from the owner's real presence. `invisible_since` is the
    /// owner's setting; `approx_enabled` the server's `last_seen_approx`. Availability,
    /// platforms and the status text and emoji follow the online status: hidden exactly when
    /// it is, and an invisible owner shows none of them (platforms empty, as for anyone
    /// offline).
    pub fn apply(
        self,
        raw: &PresenceView,
        invisible_since: Option<DateTime<Utc>>,
        approx_enabled: bool,
        now: DateTime<Utc>,
    ) -> VisiblePresence {
        let masked = invisible_since.filter(|_| self.masked);
        let (status, last_seen) = match masked {
            Some(since) => (PresenceStatus::Offline, Some(since)),
            None => (raw.status, raw.last_seen),
        };
        let shown = self.online && masked.is_none();
        VisiblePresence {
            status: self.online.then_some(status),
            last_seen: if self.last_seen { last_seen } else { None },
            last_seen_approx: (self.approx && approx_enabled)
                .then(|| LastSeenApprox::of(last_seen, now)),
            availability: raw.availability.filter(|_| shown),
            platforms: self.online.then(|| {
                if shown {
                    raw.platforms
                } else {
                    Platforms::default()
                }
            }),
            status_text: raw.manual.text.clone().filter(|_| shown),
            status_emoji: raw.manual.emoji.clone().filter(|_| shown),
        }
    }
}

/// An owner's presence as one viewer may see it. `None` means hidden (JSON `null`), except that
/// `last_seen` is also `None` for a user who was never active, `availability` for a user
/// offline, and the status text and emoji for a user who set none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisiblePresence {
    /// `online`/`offline`, or `None` when hidden.
    pub status: Option<PresenceStatus>,
    /// The exact last activity, or `None` when hidden or never active.
    pub last_seen: Option<DateTime<Utc>>,
    /// Coarse `last_seen`, only when the exact one is hidden, the viewer is not blocked and the
    /// server enables it.
    pub last_seen_approx: Option<LastSeenApprox>,
    /// `active`/`idle`/`dnd`, or `None` when offline or hidden.
    pub availability: Option<Availability>,
    /// The platforms of the live sessions (empty when offline), or `None` when hidden.
    pub platforms: Option<Platforms>,
    /// The status text, or `None` when unset or hidden.
    pub status_text: Option<Arc<str>>,
    /// The status emoji, or `None` when unset or hidden.
    pub status_emoji: Option<Arc<str>>,
}

impl VisiblePresence {
    /// The whole presence, unfiltered.
    pub fn full(raw: &PresenceView) -> Self {
        Self {
            status: Some(raw.status),
            last_seen: raw.last_seen,
            last_seen_approx: None,
            availability: raw.availability,
            platforms: Some(raw.platforms),
            status_text: raw.manual.text.clone(),
            status_emoji: raw.manual.emoji.clone(),
        }
    }
}

/// THE privacy rule. `owner` is the owner's settings, `relationship` what the viewer is to the
/// owner, `viewer_last_seen` the viewer's own `last_seen` setting (for reciprocity).
///
/// - Self and admin see everything, unmasked.
/// - A viewer the owner blocked sees nothing (not even the coarse form).
/// - `last_seen` is shown when the owner's audience includes the viewer and the viewer does
///   not hide their own `last_seen` from everyone (reciprocity).
/// - `online` is shown to everyone, or (`same_as_last_seen`) exactly when `last_seen` is.
/// - An invisible owner is masked for every other viewer; the rules above apply on top.
pub fn decide(
    owner: &PrivacySettings,
    relationship: Relationship,
    viewer_last_seen: LastSeenAudience,
) -> Visibility {
    if relationship.is_self || relationship.viewer_is_admin {
        return Visibility::FULL;
    }
    if relationship.blocked {
        return Visibility::NOTHING;
    }
    let in_audience = match owner.last_seen {
        LastSeenAudience::Everyone => true,
        LastSeenAudience::Contacts => relationship.contact,
        LastSeenAudience::ContactsExcept => relationship.contact && !relationship.excepted,
        LastSeenAudience::Nobody => false,
    };
    let last_seen = in_audience && viewer_last_seen != LastSeenAudience::Nobody;
    let online = match owner.online {
        OnlineAudience::Everyone => true,
        OnlineAudience::SameAsLastSeen => last_seen,
    };
    Visibility {
        online,
        last_seen,
        approx: !last_seen,
        masked: owner.invisible_since.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ManualStatus;
    use LastSeenAudience::{Contacts, ContactsExcept, Everyone, Nobody};
    use OnlineAudience::SameAsLastSeen;

    const CONTACT: Relationship = Relationship {
        is_self: false,
        viewer_is_admin: false,
        blocked: false,
        contact: true,
        excepted: false,
    };
    const NON_CONTACT: Relationship = Relationship {
        contact: false,
        ..CONTACT
    };
    const EXCEPTED: Relationship = Relationship {
        excepted: true,
        ..CONTACT
    };
    /// A blocked contact: the block must beat the contact.
    const BLOCKED: Relationship = Relationship {
        blocked: true,
        ..CONTACT
    };
    const SELF: Relationship = Relationship {
        is_self: true,
        ..NON_CONTACT
    };
    /// An admin who is not a contact.
    const ADMIN: Relationship = Relationship {
        viewer_is_admin: true,
        ..NON_CONTACT
    };
    const RELATIONSHIPS: [(&str, Relationship); 6] = [
        ("contact", CONTACT),
        ("non-contact", NON_CONTACT),
        ("excepted", EXCEPTED),
        ("blocked", BLOCKED),
        ("self", SELF),
        ("admin", ADMIN),
    ];

    /// Encodes a [`Visibility`]: online `O` or `-`; last seen `L` (exact), `~` (coarse only)
    /// or `-` (nothing); then `*` when the viewer gets the invisible mask.
    fn code(v: Visibility) -> String {
        let online = if v.online { 'O' } else { '-' };
        let last_seen = match (v.last_seen, v.approx) {
            (true, _) => 'L',
            (false, true) => '~',
            (false, false) => '-',
        };
        let mask = if v.masked { "*" } else { "" };
        format!("{online}{last_seen}{mask}")
    }

    #[test]
    fn every_setting_relationship_and_reciprocity_combination() {
        use OnlineAudience::Everyone as Online;
        // (owner last_seen, owner online, owner invisible, viewer's last_seen is nobody)
        //   => [contact, non-contact, excepted, blocked, self, admin]
        #[rustfmt::skip]
        let table: &[(LastSeenAudience, OnlineAudience, bool, bool, [&str; 6])] = &[
            (Everyone,       Online,         false, false, ["OL",  "OL",  "OL",  "--",  "OL", "OL"]),
            (Everyone,       SameAsLastSeen, false, false, ["OL",  "OL",  "OL",  "--",  "OL", "OL"]),
            (Contacts,       Online,         false, false, ["OL",  "O~",  "OL",  "--",  "OL", "OL"]),
            (Contacts,       SameAsLastSeen, false, false, ["OL",  "-~",  "OL",  "--",  "OL", "OL"]),
            (ContactsExcept, Online,         false, false, ["OL",  "O~",  "O~",  "--",  "OL", "OL"]),
            (ContactsExcept, SameAsLastSeen, false, false, ["OL",  "-~",  "-~",  "--",  "OL", "OL"]),
            (Nobody,         Online,         false, false, ["O~",  "O~",  "O~",  "--",  "OL", "OL"]),
            (Nobody,         SameAsLastSeen, false, false, ["-~",  "-~",  "-~",  "--",  "OL", "OL"]),
            // Reciprocity: a viewer hiding their own last seen sees no one's.
            (Everyone,       Online,         false, true,  ["O~",  "O~",  "O~",  "--",  "OL", "OL"]),
            (Everyone,       SameAsLastSeen, false, true,  ["-~",  "-~",  "-~",  "--",  "OL", "OL"]),
            (Contacts,       Online,         false, true,  ["O~",  "O~",  "O~",  "--",  "OL", "OL"]),
            (Contacts,       SameAsLastSeen, false, true,  ["-~",  "-~",  "-~",  "--",  "OL", "OL"]),
            (ContactsExcept, Online,         false, true,  ["O~",  "O~",  "O~",  "--",  "OL", "OL"]),
            (ContactsExcept, SameAsLastSeen, false, true,  ["-~",  "-~",  "-~",  "--",  "OL", "OL"]),
            (Nobody,         Online,         false, true,  ["O~",  "O~",  "O~",  "--",  "OL", "OL"]),
            (Nobody,         SameAsLastSeen, false, true,  ["-~",  "-~",  "-~",  "--",  "OL", "OL"]),
            // Invisible: the same fields, but of the mask; self and admin see the truth.
            (Everyone,       Online,         true,  false, ["OL*", "OL*", "OL*", "--",  "OL", "OL"]),
            (Everyone,       SameAsLastSeen, true,  false, ["OL*", "OL*", "OL*", "--",  "OL", "OL"]),
            (Contacts,       Online,         true,  false, ["OL*", "O~*", "OL*", "--",  "OL", "OL"]),
            (Contacts,       SameAsLastSeen, true,  false, ["OL*", "-~*", "OL*", "--",  "OL", "OL"]),
            (ContactsExcept, Online,         true,  false, ["OL*", "O~*", "O~*", "--",  "OL", "OL"]),
            (ContactsExcept, SameAsLastSeen, true,  false, ["OL*", "-~*", "-~*", "--",  "OL", "OL"]),
            (Nobody,         Online,         true,  false, ["O~*", "O~*", "O~*", "--",  "OL", "OL"]),
            (Nobody,         SameAsLastSeen, true,  false, ["-~*", "-~*", "-~*", "--",  "OL", "OL"]),
            (Everyone,       Online,         true,  true,  ["O~*", "O~*", "O~*", "--",  "OL", "OL"]),
            (Everyone,       SameAsLastSeen, true,  true,  ["-~*", "-~*", "-~*", "--",  "OL", "OL"]),
            (Contacts,       Online,         true,  true,  ["O~*", "O~*", "O~*", "--",  "OL", "OL"]),
            (Contacts,       SameAsLastSeen, true,  true,  ["-~*", "-~*", "-~*", "--",  "OL", "OL"]),
            (ContactsExcept, Online,         true,  true,  ["O~*", "O~*", "O~*", "--",  "OL", "OL"]),
            (ContactsExcept, SameAsLastSeen, true,  true,  ["-~*", "-~*", "-~*", "--",  "OL", "OL"]),
            (Nobody,         Online,         true,  true,  ["O~*", "O~*", "O~*", "--",  "OL", "OL"]),
            (Nobody,         SameAsLastSeen, true,  true,  ["-~*", "-~*", "-~*", "--",  "OL", "OL"]),
        ];
        assert_eq!(table.len(), 4 * 2 * 2 * 2, "every combination is listed");
        let since = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        for &(last_seen, online, invisible, viewer_nobody, expected) in table {
            let owner = PrivacySettings {
                last_seen,
                online,
                invisible_since: invisible.then_some(since),
            };
            let viewer = if viewer_nobody { Nobody } else { Everyone };
            for ((name, relationship), want) in RELATIONSHIPS.into_iter().zip(expected) {
                let got = code(decide(&owner, relationship, viewer));
                assert_eq!(
                    got, want,
                    "owner {owner:?}, viewer {name}, viewer last_seen {viewer:?}"
                );
            }
        }
    }

    fn view(status: PresenceStatus, last_seen: DateTime<Utc>) -> PresenceView {
        PresenceView {
            status,
            seq: 7,
            availability: status.is_online().then_some(Availability::Active),
            ..PresenceView::offline(Some(last_seen), 0, ManualStatus::default())
        }
    }

    #[test]
    fn apply_turns_hidden_fields_into_none_and_coarse_only_when_enabled() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let seen = now - Duration::hours(2);
        let raw = view(PresenceStatus::Online, seen);
        let owner = PrivacySettings {
            last_seen: Nobody,
            ..PrivacySettings::default()
        };
        let visibility = decide(&owner, NON_CONTACT, Everyone);
        let plain = visibility.apply(&raw, None, false, now);
        assert_eq!(plain.status, Some(PresenceStatus::Online));
        assert_eq!((plain.last_seen, plain.last_seen_approx), (None, None));
        let coarse = visibility.apply(&raw, None, true, now);
        assert_eq!(coarse.last_seen_approx, Some(LastSeenApprox::Recently));
        let blocked = decide(&owner, BLOCKED, Everyone).apply(&raw, None, true, now);
        assert_eq!(
            blocked,
            VisiblePresence {
                status: None,
                last_seen: None,
                last_seen_approx: None,
                availability: None,
                platforms: None,
                status_text: None,
                status_emoji: None,
            }
        );
        let full = decide(&PrivacySettings::default(), NON_CONTACT, Everyone);
        assert_eq!(
            full.apply(&raw, None, true, now),
            VisiblePresence::full(&raw)
        );
    }

    #[test]
    fn an_invisible_owner_appears_offline_at_the_moment_they_went_invisible() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let since = now - Duration::minutes(30);
        let raw = view(PresenceStatus::Online, now);
        let owner = PrivacySettings {
            invisible_since: Some(since),
            ..PrivacySettings::default()
        };
        let other =
            decide(&owner, CONTACT, Everyone).apply(&raw, owner.invisible_since, false, now);
        assert_eq!(other.status, Some(PresenceStatus::Offline));
        assert_eq!(other.last_seen, Some(since));
        for viewer in [SELF, ADMIN] {
            let seen =
                decide(&owner, viewer, Everyone).apply(&raw, owner.invisible_since, true, now);
            assert_eq!(seen, VisiblePresence::full(&raw));
        }
        // The coarse form is computed from the mask too.
        let hidden = PrivacySettings {
            last_seen: Nobody,
            ..owner
        };
        let long_ago = view(PresenceStatus::Online, now);
        let coarse = decide(&hidden, CONTACT, Everyone).apply(
            &long_ago,
            Some(now - Duration::days(40)),
            true,
            now,
        );
        assert_eq!(coarse.last_seen_approx, Some(LastSeenApprox::LongAgo));
    }

    #[test]
    fn approx_buckets_follow_telegram() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let at = |d: i64, h: i64| Some(now - Duration::days(d) - Duration::hours(h));
        for (last_seen, want) in [
            (Some(now), LastSeenApprox::Recently),
            (at(2, 23), LastSeenApprox::Recently),
            (at(3, 0), LastSeenApprox::WithinWeek),
            (at(6, 23), LastSeenApprox::WithinWeek),
            (at(7, 0), LastSeenApprox::WithinMonth),
            (at(29, 23), LastSeenApprox::WithinMonth),
            (at(30, 0), LastSeenApprox::LongAgo),
            (None, LastSeenApprox::LongAgo),
        ] {
            assert_eq!(LastSeenApprox::of(last_seen, now), want, "{last_seen:?}");
        }
    }

    #[test]
    fn settings_round_trip_through_their_stored_form_and_json() {
        for v in [Everyone, Contacts, ContactsExcept, Nobody] {
            assert_eq!(LastSeenAudience::from_column(v.as_str()), Some(v));
            assert_eq!(
                serde_json::to_value(v).unwrap(),
                serde_json::Value::from(v.as_str())
            );
        }
        for v in [OnlineAudience::Everyone, SameAsLastSeen] {
            assert_eq!(OnlineAudience::from_column(v.as_str()), Some(v));
            assert_eq!(
                serde_json::to_value(v).unwrap(),
                serde_json::Value::from(v.as_str())
            );
        }
        assert_eq!(LastSeenAudience::from_column("friends"), None);
        assert_eq!(
            serde_json::to_value(LastSeenApprox::WithinWeek).unwrap(),
            "within_week"
        );
    }
}
