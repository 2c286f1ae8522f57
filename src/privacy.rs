//! The privacy service: contacts, blocks, visibility settings and invisible mode as every read
//! and push path sees them.
//!
//! [`Privacy`] is the cheap, cloneable service the server holds: a sharded in-memory cache of
//! each loaded user's settings and lists, so [`Privacy::filter`] answers without touching the
//! database, plus the write path (store first, then cache) and a change notification for the
//! push layer. The rule itself is [`crate::domain::decide`]. This module does not own presence
//! (the engine does) nor HTTP.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, BusMessage};
use crate::domain::{
    MAX_LIST_LEN, PresenceView, PrivacyChange, PrivacyChanged, Relationship, SettingsUpdate,
    StoredPrivacy, UserId, UserPrivacy, Viewer, Visibility, VisiblePresence, decide,
};
use crate::shards::{Sharded, read, write};
use crate::store::{Missing, Store, StoreError};

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

/// Shards of the cache; a power of two.
const SHARDS: usize = 16;
/// Capacity of the change channel; a receiver that falls further behind sees `Lagged`.
const CHANGES_CAPACITY: usize = 1024;

/// The privacy service: a cheap `Clone` handle over a shared cache.
///
/// # Cache
/// Users are loaded lazily, in batches, by [`Privacy::ensure_loaded`], and stay cached (an
/// entry is a few dozen bytes plus 8 per list member; there is no eviction yet). Writes go
/// through [`Privacy::change`]: the store applies the change and returns the user's whole new
/// state with a bumped version, which replaces the cached entry. An entry is only ever replaced
/// by one with a higher version, so a slow load can never overwrite a newer write, whatever the
/// interleaving. The cache is per process: a multi-node deployment would have to carry
/// [`PrivacyChanged`] between nodes.
///
/// # How push uses it
/// - When a socket authenticates, and before answering a subscribe, call
///   `ensure_loaded(&[viewer, owners...])` (async, one query for all missing users).
/// - For every snapshot entry and every presence event, call
///   [`filter`](Privacy::filter)`(viewer, owner, raw)` per subscriber; it is synchronous and
///   reads only memory. Send an event only when the filtered value differs from the last one
///   sent to that subscriber about that owner: otherwise the timing of a hidden transition (an
///   invisible user going online, say) leaks. For the same reason do not forward the raw `seq`
///   when `last_seen` is hidden: `seq` encodes the transition time.
/// - [`subscribe`](Privacy::subscribe) to [`PrivacyChanged`]. On `{user, own_view_changed}`,
///   re-filter `user` for each of their subscribers and send what changed; if
///   `own_view_changed`, also re-filter every owner that `user`'s own sockets subscribe to. On
///   `Lagged`, re-filter every subscription.
/// - Drop a typing notification unless [`typing_allowed`](Privacy::typing_allowed)`(from, to)`.
///
/// An owner or viewer that is not loaded fails closed: `filter` hides everything (and counts
/// `lastseen_privacy_cache_misses_total`), `has_blocked` answers `true`.
#[derive(Clone)]
pub struct Privacy {
    shared: Arc<Shared>,
}

struct Shared {
    store: Arc<dyn Store>,
    /// Shard `i` holds the users whose id hashes to `i`. A lock is held only to look up, clone
    /// or swap one entry: never across `.await`, never two shards at once.
    shards: Sharded<RwLock<HashMap<UserId, Entry>>>,
    changes: broadcast::Sender<PrivacyChanged>,
    /// Tells other nodes about changes, and hears theirs.
    bus: Bus,
    /// The `last_seen_approx` setting.
    approx: bool,
}

/// A cached user. Invariant: `version` is the store version `data` was read at.
struct Entry {
    version: u64,
    data: Arc<UserPrivacy>,
}

impl Privacy {
    /// An empty cache over `store`; `last_seen_approx` enables the coarse `last_seen`.
    pub fn new(store: Arc<dyn Store>, last_seen_approx: bool, bus: Bus) -> Self {
        let shards = Sharded::new(SHARDS, RwLock::default);
        Self {
            shared: Arc::new(Shared {
                store,
                shards,
                changes: broadcast::channel(CHANGES_CAPACITY).0,
                bus,
                approx: last_seen_approx,
            }),
        }
    }

    fn shard(&self, user: UserId) -> &RwLock<HashMap<UserId, Entry>> {
        self.shared.shards.get(&user)
    }

    /// The cached data of `user`, if loaded.
    pub fn cached(&self, user: UserId) -> Option<Arc<UserPrivacy>> {
        read(self.shard(user)).get(&user).map(|e| e.data.clone())
    }

    /// Loads the users among `users` that are not cached yet, or whose copy is older than what
    /// another node wrote (multi-node), in one store call. Ids of users that do not exist are
    /// ignored (and stay unloaded).
    ///
    /// # Errors
    /// [`PrivacyError::Store`] if the store fails.
    pub async fn ensure_loaded(&self, users: &[UserId]) -> Result<(), PrivacyError> {
        // Another node may have written newer data than this node's copy, and its message
        // saying so may not have arrived yet: the versions it recorded tell at once.
        let newer = match self.shared.bus.privacy_versions(users).await {
            Ok(versions) => versions,
            Err(error) => {
                tracing::debug!(%error, "privacy versions of other nodes unknown");
                Vec::new()
            }
        };
        let stale = |user: &UserId| {
            let cached = read(self.shard(*user)).get(user).map(|e| e.version);
            cached.is_none_or(|have| newer.iter().any(|(u, v)| u == user && *v > have))
        };
        let missing: Vec<UserId> = users
            .iter()
            .copied()
            .filter(stale)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let loaded = self.shared.store.privacy_of(&missing).await?;
        metrics::counter!("lastseen_privacy_cache_loads_total").increment(loaded.len() as u64);
        for stored in loaded {
            self.install(stored);
        }
        Ok(())
    }

    /// The data of `user`, loading it if needed.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] if the user does not exist; [`PrivacyError::Store`] if the
    /// store fails.
    pub async fn load(&self, user: UserId) -> Result<Arc<UserPrivacy>, PrivacyError> {
        self.ensure_loaded(&[user]).await?;
        self.cached(user)
            .ok_or(PrivacyError::Store(StoreError::NotFound(Missing::User)))
    }

    /// Caches `stored` unless the cache already holds that user at the same or a newer
    /// version. Returns the entry now cached.
    fn install(&self, stored: StoredPrivacy) -> Arc<UserPrivacy> {
        let mut shard = write(self.shard(stored.user_id));
        match shard.get(&stored.user_id) {
            Some(entry) if entry.version >= stored.version => entry.data.clone(),
            _ => {
                let data = Arc::new(stored.data);
                let entry = Entry {
                    version: stored.version,
                    data: data.clone(),
                };
                shard.insert(stored.user_id, entry);
                data
            }
        }
    }

    /// What `viewer` may see of `owner`, whose real presence is `raw`. Synchronous and
    /// memory-only; both users must have been loaded ([`Privacy::ensure_loaded`]), otherwise
    /// everything is hidden.
    pub fn filter(&self, viewer: Viewer, owner: UserId, raw: &PresenceView) -> VisiblePresence {
        self.filter_at(viewer, owner, raw, Utc::now())
    }

    /// [`Privacy::filter`] with the time the coarse `last_seen` is computed against.
    pub fn filter_at(
        &self,
        viewer: Viewer,
        owner: UserId,
        raw: &PresenceView,
        now: DateTime<Utc>,
    ) -> VisiblePresence {
        if viewer.id == owner || viewer.is_admin {
            // The rule shows self and admins everything; no cached data is needed for that.
            return VisiblePresence::full(raw);
        }
        let (Some(data), Some(viewer_data)) = (self.cached(owner), self.cached(viewer.id)) else {
            metrics::counter!("lastseen_privacy_cache_misses_total").increment(1);
            tracing::warn!(%owner, viewer = %viewer.id, "privacy data not loaded; hiding presence");
            let hidden = Visibility::NOTHING;
            return hidden.apply(raw, None, false, now);
        };
        let relationship = Relationship {
            is_self: false,
            viewer_is_admin: false,
            blocked: data.blocked.contains(&viewer.id),
            contact: data.contacts.contains(&viewer.id),
            excepted: data.except.contains(&viewer.id),
        };
        let visibility = decide(&data.settings, relationship, viewer_data.settings.last_seen);
        visibility.apply(raw, data.settings.invisible_since, self.shared.approx, now)
    }

    /// Whether `user` is in invisible mode (`true` when not loaded: fail closed).
    pub fn is_invisible(&self, user: UserId) -> bool {
        self.cached(user)
            .is_none_or(|d| d.settings.invisible_since.is_some())
    }

    /// Whether `owner` blocked `other`. `true` when `owner` is not loaded (fail closed).
    pub fn has_blocked(&self, owner: UserId, other: UserId) -> bool {
        self.cached(owner)
            .is_none_or(|d| d.blocked.contains(&other))
    }

    /// Whether a typing notification from `from` may reach `to`: not if either blocked the
    /// other (a blocker receives nothing from, and shows nothing to, the user they blocked).
    pub fn typing_allowed(&self, from: UserId, to: UserId) -> bool {
        !self.has_blocked(to, from) && !self.has_blocked(from, to)
    }

    /// A receiver of every [`PrivacyChanged`] from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<PrivacyChanged> {
        self.shared.changes.subscribe()
    }

    /// Applies `change` to `owner`'s data (`at` is the time of the request: it becomes
    /// `invisible_since` when invisible mode is turned on), updates the cache and publishes a
    /// [`PrivacyChanged`] if anything changed. Returns the new data.
    ///
    /// # Errors
    /// [`PrivacyError::SelfReference`], [`PrivacyError::UnknownUsers`],
    /// [`PrivacyError::TooLong`], [`PrivacyError::ListFull`] for a change that is refused
    /// before the write; [`StoreError::Conflict`] if the user is already in the list,
    /// [`StoreError::NotFound`] if it is not (removal) or does not exist (addition).
    pub async fn change(
        &self,
        owner: UserId,
        change: PrivacyChange,
        at: DateTime<Utc>,
    ) -> Result<Arc<UserPrivacy>, PrivacyError> {
        let before = self.load(owner).await?;
        self.validate(owner, &change, &before).await?;
        let stored = self.shared.store.change_privacy(owner, &change, at).await?;
        let version = stored.version;
        let cached = self.install(stored);
        if let Err(error) = self.shared.bus.set_privacy_version(owner, version).await {
            tracing::warn!(%error, "could not record the privacy version for the other nodes");
        }
        if *cached != *before {
            metrics::counter!("lastseen_privacy_changes_total").increment(1);
        }
        // Published after every write, even one that seems to change nothing: `before` may be
        // stale when two writes of the same user race, and a subscriber re-filters cheaply
        // and sends only what really changed.
        let changed = PrivacyChanged {
            user: owner,
            own_view_changed: matches!(change, PrivacyChange::Settings(_)),
        };
        let _ = self.shared.changes.send(changed);
        if let Err(error) = self.shared.bus.publish(&BusMessage::Privacy(changed)).await {
            // The other nodes reload everything when their feed comes back.
            tracing::warn!(%error, "could not tell the other nodes about a privacy change");
        }
        Ok(cached)
    }

    /// Applies privacy changes made on other nodes until `shutdown`: the user's data is read
    /// again and the change announced here as if it were local.
    pub async fn listen(self, shutdown: CancellationToken) {
        use broadcast::error::RecvError;
        let mut bus = self.shared.bus.subscribe();
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => return,
                message = bus.recv() => message,
            };
            match message {
                Ok(BusMessage::Privacy(changed)) => {
                    match self.shared.store.privacy_of(&[changed.user]).await {
                        Ok(stored) => stored.into_iter().for_each(|s| {
                            self.install(s);
                        }),
                        Err(error) => tracing::warn!(%error, "could not reload privacy data"),
                    }
                    let _ = self.shared.changes.send(changed);
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Reads every cached user's data again (after changes from other nodes may have been
    /// missed).
    ///
    /// # Errors
    /// The store's error; entries not yet read keep their data.
    pub async fn reload_all(&self) -> Result<(), PrivacyError> {
        let users: Vec<UserId> = self
            .shared
            .shards
            .all()
            .iter()
            .flat_map(|shard| read(shard).keys().copied().collect::<Vec<_>>())
            .collect();
        for chunk in users.chunks(1000) {
            for stored in self.shared.store.privacy_of(chunk).await? {
                self.install(stored);
            }
        }
        Ok(())
    }

    async fn validate(
        &self,
        owner: UserId,
        change: &PrivacyChange,
        current: &UserPrivacy,
    ) -> Result<(), PrivacyError> {
        match change {
            PrivacyChange::AddContact(other) if *other == owner => {
                Err(PrivacyError::SelfReference("contacts"))
            }
            PrivacyChange::Block(other) if *other == owner => {
                Err(PrivacyError::SelfReference("blocked users"))
            }
            PrivacyChange::AddContact(_) if current.contacts.len() >= MAX_LIST_LEN => Err(
                PrivacyError::ListFull("Your contact list is full (10000 users)."),
            ),
            PrivacyChange::Block(_) if current.blocked.len() >= MAX_LIST_LEN => Err(
                PrivacyError::ListFull("Your block list is full (10000 users)."),
            ),
            PrivacyChange::Settings(SettingsUpdate {
                except: Some(except),
                ..
            }) => self.validate_except(owner, except).await,
            _ => Ok(()),
        }
    }

    async fn validate_except(
        &self,
        owner: UserId,
        except: &BTreeSet<UserId>,
    ) -> Result<(), PrivacyError> {
        if except.contains(&owner) {
            return Err(PrivacyError::SelfReference("except list"));
        }
        if except.len() > MAX_LIST_LEN {
            return Err(PrivacyError::TooLong);
        }
        if except.is_empty() {
            return Ok(());
        }
        let ids: Vec<UserId> = except.iter().copied().collect();
        let known: BTreeSet<UserId> = self
            .shared
            .store
            .users_by_ids(&ids)
            .await?
            .into_iter()
            .map(|u| u.id)
            .collect();
        let unknown: Vec<UserId> = except.difference(&known).copied().collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(PrivacyError::UnknownUsers(unknown))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        Availability, LastSeenAudience, ManualStatus, OnlineAudience, PresenceStatus,
        PrivacySettings, SettingsUpdate, Username,
    };
    use crate::store;

    async fn setup(names: &[&str]) -> (Privacy, Vec<UserId>) {
        let store = store::connect("sqlite::memory:").await.unwrap();
        store.migrate().await.unwrap();
        let mut ids = Vec::new();
        for name in names {
            let user = store
                .create_user(&Username::parse(name).unwrap(), "x", false)
                .await
                .unwrap();
            ids.push(user.id);
        }
        (Privacy::new(store, false, Bus::local()), ids)
    }

    fn online() -> PresenceView {
        PresenceView {
            status: PresenceStatus::Online,
            seq: 1,
            availability: Some(Availability::Active),
            ..PresenceView::offline(Some(Utc::now()), 0, ManualStatus::default())
        }
    }

    fn viewer(id: UserId) -> Viewer {
        Viewer {
            id,
            is_admin: false,
        }
    }

    fn nobody() -> PrivacyChange {
        PrivacyChange::Settings(SettingsUpdate::replace(
            LastSeenAudience::Nobody,
            OnlineAudience::Everyone,
            false,
            BTreeSet::new(),
        ))
    }

    #[tokio::test]
    async fn unloaded_users_fail_closed_and_loaded_defaults_show_everything() {
        let (privacy, ids) = setup(&["owner", "viewer"]).await;
        let (owner, other) = (ids[0], ids[1]);
        let raw = online();
        let hidden = privacy.filter(viewer(other), owner, &raw);
        assert_eq!((hidden.status, hidden.last_seen), (None, None));
        assert!(privacy.has_blocked(owner, other), "fails closed");
        assert_eq!(
            privacy.filter(viewer(owner), owner, &raw),
            VisiblePresence::full(&raw),
            "self needs no cached data"
        );

        privacy
            .ensure_loaded(&[owner, other, UserId(999)])
            .await
            .unwrap();
        assert_eq!(
            privacy.filter(viewer(other), owner, &raw),
            VisiblePresence::full(&raw)
        );
        assert!(!privacy.has_blocked(owner, other));
        assert!(
            privacy.cached(UserId(999)).is_none(),
            "unknown users are not cached"
        );
    }

    #[tokio::test]
    async fn changes_take_effect_at_once_and_every_write_is_published() {
        let (privacy, ids) = setup(&["owner", "viewer"]).await;
        let (owner, other) = (ids[0], ids[1]);
        privacy.ensure_loaded(&[owner, other]).await.unwrap();
        let mut changes = privacy.subscribe();

        privacy.change(owner, nobody(), Utc::now()).await.unwrap();
        assert_eq!(
            privacy.filter(viewer(other), owner, &online()).last_seen,
            None
        );
        let event = changes.try_recv().unwrap();
        assert_eq!(
            event,
            PrivacyChanged {
                user: owner,
                own_view_changed: true
            }
        );

        privacy.change(owner, nobody(), Utc::now()).await.unwrap();
        assert_eq!(
            changes.try_recv().map(|e| e.user),
            Ok(owner),
            "published even when it looks unchanged: the comparison may be stale"
        );

        privacy
            .change(owner, PrivacyChange::Block(other), Utc::now())
            .await
            .unwrap();
        assert_eq!(privacy.filter(viewer(other), owner, &online()).status, None);
        assert!(!privacy.typing_allowed(other, owner));
        assert!(!privacy.typing_allowed(owner, other));
        let event = changes.try_recv().unwrap();
        assert!(!event.own_view_changed, "{event:?}");
    }

    #[tokio::test]
    async fn refused_changes_name_their_reason() {
        let (privacy, ids) = setup(&["owner", "friend"]).await;
        let (owner, friend) = (ids[0], ids[1]);
        let err = privacy
            .change(owner, PrivacyChange::AddContact(owner), Utc::now())
            .await
            .unwrap_err();
        assert!(matches!(err, PrivacyError::SelfReference(_)), "{err:?}");
        privacy
            .change(owner, PrivacyChange::AddContact(friend), Utc::now())
            .await
            .unwrap();
        let err = privacy
            .change(owner, PrivacyChange::AddContact(friend), Utc::now())
            .await
            .unwrap_err();
        assert!(
            matches!(err, PrivacyError::Store(StoreError::Conflict(_))),
            "{err:?}"
        );
        let err = privacy
            .change(owner, PrivacyChange::AddContact(UserId(999)), Utc::now())
            .await
            .unwrap_err();
        assert!(
            matches!(err, PrivacyError::Store(StoreError::NotFound(_))),
            "{err:?}"
        );
        let err = privacy
            .change(owner, PrivacyChange::Unblock(friend), Utc::now())
            .await
            .unwrap_err();
        assert!(
            matches!(err, PrivacyError::Store(StoreError::NotFound(_))),
            "{err:?}"
        );
        let update = SettingsUpdate::replace(
            LastSeenAudience::ContactsExcept,
            OnlineAudience::Everyone,
            false,
            [friend, UserId(998), UserId(999)].into(),
        );
        let err = privacy
            .change(owner, PrivacyChange::Settings(update), Utc::now())
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "No such users: 998, 999.");
    }

    #[tokio::test]
    async fn a_stale_load_never_overwrites_a_newer_write() {
        let (privacy, ids) = setup(&["owner"]).await;
        let owner = ids[0];
        let newer = UserPrivacy {
            settings: PrivacySettings {
                last_seen: LastSeenAudience::Nobody,
                ..PrivacySettings::default()
            },
            ..UserPrivacy::default()
        };
        privacy.install(StoredPrivacy {
            user_id: owner,
            version: 2,
            data: newer.clone(),
        });
        let kept = privacy.install(StoredPrivacy {
            user_id: owner,
            version: 1,
            data: UserPrivacy::default(),
        });
        assert_eq!(*kept, newer);
        privacy.ensure_loaded(&[owner]).await.unwrap();
        assert_eq!(*privacy.cached(owner).unwrap(), newer);
    }

    #[tokio::test]
    async fn invisible_mode_keeps_the_moment_it_was_turned_on() {
        let (privacy, ids) = setup(&["owner"]).await;
        let owner = ids[0];
        let invisible = |on| {
            PrivacyChange::Settings(SettingsUpdate::replace(
                LastSeenAudience::Everyone,
                OnlineAudience::Everyone,
                on,
                BTreeSet::new(),
            ))
        };
        let first = Utc::now() - chrono::Duration::minutes(5);
        let data = privacy.change(owner, invisible(true), first).await.unwrap();
        let since = data.settings.invisible_since.unwrap();
        assert_eq!(since.timestamp_micros(), first.timestamp_micros());
        let data = privacy
            .change(owner, invisible(true), Utc::now())
            .await
            .unwrap();
        assert_eq!(
            data.settings.invisible_since,
            Some(since),
            "kept, not moved"
        );
        let data = privacy
            .change(owner, invisible(false), Utc::now())
            .await
            .unwrap();
        assert_eq!(data.settings.invisible_since, None);
    }
}
