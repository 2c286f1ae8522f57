//! Reading presence: the one place that decides where a user's current presence comes from
//! (the engine's view, else the stored row), and the JSON shape one user's presence has on
//! every channel (HTTP reads, admin endpoints, push snapshots).
//!
//! The engine keeps every user it holds fresher state for until the persister has written it,
//! so a user the engine knows nothing about is offline and their stored row is current. The
//! engine is therefore asked first and the store second: a transition between the two reads
//! can only make the answer older by that one transition, never wrong about who exists.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use utoipa::ToSchema;

use crate::domain::{
    Availability, LastSeenApprox, Platform, Platforms, PresenceStatus, PresenceView, UserId,
    VisiblePresence, with_rfc3339,
};
use crate::engine::{EngineError, PresenceEngine};
use crate::store::{Store, StoreError, UserRecord};

/// Why presence could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The presence backend failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A user's current presence with their name.
#[derive(Debug, Clone, PartialEq)]
pub struct Known {
    /// Who.
    pub id: UserId,
    /// Their username.
    pub username: String,
    /// Their current, unfiltered presence.
    pub view: PresenceView,
}

/// Reads current presence from the engine and the store. Cheap to clone.
#[derive(Clone)]
pub struct PresenceReader {
    engine: PresenceEngine,
    store: std::sync::Arc<dyn Store>,
}

/// The view of a stored user the engine holds nothing for.
fn stored_view(user: &UserRecord) -> PresenceView {
    PresenceView::offline(user.last_seen, user.presence_seq, user.manual.clone())
}

impl PresenceReader {
    /// A reader over `engine`, falling back to `store`.
    pub fn new(engine: PresenceEngine, store: std::sync::Arc<dyn Store>) -> Self {
        Self { engine, store }
    }

    /// The current presence of those of `ids` that exist, with their names, in the order of
    /// `ids` (which should hold each user once).
    ///
    /// # Errors
    /// Engine or store failures.
    pub async fn named(&self, ids: &[UserId]) -> Result<Vec<Known>, ReadError> {
        let mut views = self.engine_views(ids).await?;
        let users: HashMap<UserId, UserRecord> = self
            .store
            .users_by_ids(ids)
            .await?
            .into_iter()
            .map(|u| (u.id, u))
            .collect();
        Ok(ids
            .iter()
            .filter_map(|id| {
                let user = users.get(id)?;
                let view = views.remove(id).unwrap_or_else(|| stored_view(user));
                Some(Known {
                    id: *id,
                    username: user.username.clone(),
                    view,
                })
            })
            .collect())
    }

    /// Those of `ids` that are online now, with their names; order unspecified. Only the
    /// engine is asked for presence (a user it holds nothing for is offline), so the store is
    /// read for the names of the online ones alone.
    ///
    /// # Errors
    /// Engine or store failures.
    pub async fn online(&self, ids: &[UserId]) -> Result<Vec<Known>, ReadError> {
        let mut online: HashMap<UserId, PresenceView> = self
            .engine_views(ids)
            .await?
            .into_iter()
            .filter(|(_, view)| view.status.is_online())
            .collect();
        let wanted: Vec<UserId> = online.keys().copied().collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let users = self.store.users_by_ids(&wanted).await?;
        Ok(users
            .into_iter()
            .filter_map(|user| {
                let view = online.remove(&user.id)?;
                Some(Known {
                    id: user.id,
                    username: user.username,
                    view,
                })
            })
            .collect())
    }

    /// The current presence of one user, if they exist.
    ///
    /// # Errors
    /// Engine or store failures.
    pub async fn one(&self, id: UserId) -> Result<Option<Known>, ReadError> {
        Ok(self.named(&[id]).await?.pop())
    }

    /// The current presence of those of `ids` that exist, without names (the store is read only
    /// for users the engine holds nothing for); order unspecified.
    ///
    /// # Errors
    /// Engine or store failures.
    pub async fn views(&self, ids: &[UserId]) -> Result<Vec<(UserId, PresenceView)>, ReadError> {
        let views = self.engine_views(ids).await?;
        let missing: Vec<UserId> = ids
            .iter()
            .copied()
            .filter(|id| !views.contains_key(id))
            .collect();
        let mut found: Vec<(UserId, PresenceView)> = views.into_iter().collect();
        if !missing.is_empty() {
            let stored = self.store.users_by_ids(&missing).await?;
            found.extend(stored.iter().map(|user| (user.id, stored_view(user))));
        }
        Ok(found)
    }

    async fn engine_views(
        &self,
        ids: &[UserId],
    ) -> Result<HashMap<UserId, PresenceView>, EngineError> {
        Ok(self.engine.presence(ids).await?.into_iter().collect())
    }
}

/// Serialises timestamps as the seed does: RFC 3339 UTC with a `Z` (`2024-01-15T10:30:00Z`),
/// with fractional seconds only when present.
///
/// # Errors
/// Those of the serializer.
pub fn rfc3339<S: Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => rfc3339_at(at, s),
        None => s.serialize_none(),
    }
}

/// [`rfc3339`] for a timestamp that is always there.
///
/// # Errors
/// Those of the serializer.
pub fn rfc3339_at<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    with_rfc3339(at, SecondsFormat::AutoSi, |text| s.serialize_str(text))
}

/// A user's presence as one viewer sees it: the seed's JSON shape, used by HTTP reads, the
/// admin endpoints and push snapshots alike. A field the owner's privacy settings hide from the
/// viewer is `null`; nothing is hidden on the caller's own account or from admins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UserPresence {
    /// User id.
    pub id: i64,
    /// Username.
    pub username: String,
    /// `online` or `offline`; null when hidden.
    pub online_status: Option<PresenceStatus>,
    /// Time of the last activity (RFC 3339 UTC); null if the user was never active or it is
    /// hidden.
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_seen: Option<DateTime<Utc>>,
    /// `online_status == "online"`; null when hidden.
    pub is_online: Option<bool>,
    /// Coarse last seen, present only when the exact one is hidden and the server enables
    /// `last_seen_approx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_approx: Option<LastSeenApprox>,
    /// `active`, `idle` or `dnd`; null when offline or hidden.
    #[serde(default)]
    pub availability: Option<Availability>,
    /// The custom status text; null when unset or hidden.
    #[serde(default)]
    pub status_text: Option<String>,
    /// The custom status emoji; null when unset or hidden.
    #[serde(default)]
    pub status_emoji: Option<String>,
    /// The sorted distinct platforms of the live sessions (`[]` when offline); null when
    /// hidden.
    #[serde(default)]
    pub platforms: Option<Vec<Platform>>,
}

impl UserPresence {
    /// A user's whole presence (for themself, or an admin).
    pub fn full(id: UserId, username: String, view: &PresenceView) -> Self {
        Self::visible(id, username, VisiblePresence::full(view))
    }

    /// A user's presence as a viewer may see it.
    pub fn visible(id: UserId, username: String, visible: VisiblePresence) -> Self {
        Self {
            id: id.0,
            username,
            online_status: visible.status,
            last_seen: visible.last_seen,
            is_online: visible.status.map(PresenceStatus::is_online),
            last_seen_approx: visible.last_seen_approx,
            availability: visible.availability,
            status_text: visible.status_text.as_deref().map(str::to_owned),
            status_emoji: visible.status_emoji.as_deref().map(str::to_owned),
            platforms: visible.platforms.map(Platforms::to_vec),
        }
    }
}
