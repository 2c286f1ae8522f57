//! Privacy data: defaults, list changes, settings, versions and refused changes.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use lastseen::domain::UserId;
use lastseen::domain::{
    LastSeenAudience, OnlineAudience, PrivacyChange, PrivacySettings, SettingsUpdate,
    StoredPrivacy, UserPrivacy,
};
use lastseen::store::{Store, StoreError};

use crate::users::user;

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap()
}

fn set(ids: &[UserId]) -> BTreeSet<UserId> {
    ids.iter().copied().collect()
}

async fn privacy_of(store: &dyn Store, users: &[UserId]) -> Vec<StoredPrivacy> {
    let mut found = store.privacy_of(users).await.unwrap();
    found.sort_by_key(|p| p.user_id);
    found
}

async fn one(store: &dyn Store, owner: UserId) -> StoredPrivacy {
    let mut found = privacy_of(store, &[owner]).await;
    assert_eq!(found.len(), 1);
    found.remove(0)
}

async fn change(store: &dyn Store, owner: UserId, change: PrivacyChange) -> StoredPrivacy {
    let state = store.change_privacy(owner, &change, now()).await.unwrap();
    assert_eq!(
        state,
        one(store, owner).await,
        "the returned state is the stored one"
    );
    state
}

fn settings(
    last_seen: LastSeenAudience,
    online: OnlineAudience,
    invisible: bool,
    except: &[UserId],
) -> PrivacyChange {
    PrivacyChange::Settings(SettingsUpdate::replace(
        last_seen,
        online,
        invisible,
        set(except),
    ))
}

pub async fn users_who_never_changed_privacy_have_the_defaults_at_version_0(store: Arc<dyn Store>) {
    let a = user(store.as_ref(), "a").await.id;
    let b = user(store.as_ref(), "b").await.id;
    let found = privacy_of(store.as_ref(), &[b, UserId(i64::MAX), a]).await;
    let default = |user_id| StoredPrivacy {
        user_id,
        version: 0,
        data: UserPrivacy::default(),
    };
    assert_eq!(
        found,
        [default(a), default(b)],
        "unknown users are left out"
    );
    assert!(store.privacy_of(&[]).await.unwrap().is_empty());

    change(store.as_ref(), a, PrivacyChange::AddContact(b)).await;
    let found = privacy_of(store.as_ref(), &[a, b]).await;
    assert_eq!(found[0].version, 1);
    assert_eq!(found[1], default(b), "contacts go one way");
}

pub async fn contact_and_block_changes_bump_the_version_and_return_the_whole_state(
    store: Arc<dyn Store>,
) {
    let a = user(store.as_ref(), "a").await.id;
    let b = user(store.as_ref(), "b").await.id;
    let c = user(store.as_ref(), "c").await.id;
    let s = store.as_ref();

    let state = change(s, a, PrivacyChange::AddContact(b)).await;
    assert_eq!((state.user_id, state.version), (a, 1));
    assert_eq!(state.data.contacts, set(&[b]));
    let state = change(s, a, PrivacyChange::AddContact(c)).await;
    assert_eq!((state.version, &state.data.contacts), (2, &set(&[b, c])));
    let state = change(s, a, PrivacyChange::Block(c)).await;
    assert_eq!((state.version, &state.data.blocked), (3, &set(&[c])));
    assert_eq!(
        state.data.contacts,
        set(&[b, c]),
        "blocking keeps the contact"
    );
    let state = change(s, a, PrivacyChange::RemoveContact(b)).await;
    assert_eq!((state.version, &state.data.contacts), (4, &set(&[c])));
    let state = change(s, a, PrivacyChange::Unblock(c)).await;
    assert_eq!(state.version, 5);
    assert_eq!(state.data.blocked, set(&[]));
    assert_eq!(state.data.settings, PrivacySettings::default());
    assert_eq!(state.data.except, set(&[]));

    let others = privacy_of(s, &[b, c]).await;
    assert!(
        others
            .iter()
            .all(|p| p.version == 0 && p.data == UserPrivacy::default())
    );
}

pub async fn refused_changes_leave_state_and_version_untouched(store: Arc<dyn Store>) {
    let a = user(store.as_ref(), "a").await.id;
    let b = user(store.as_ref(), "b").await.id;
    let c = user(store.as_ref(), "c").await.id;
    let ghost = UserId(i64::MAX);
    let s = store.as_ref();
    change(s, a, PrivacyChange::AddContact(b)).await;
    let before = change(s, a, PrivacyChange::Block(b)).await;
    assert_eq!(before.version, 2);

    let refused = [
        (PrivacyChange::AddContact(b), "conflict"),
        (PrivacyChange::Block(b), "conflict"),
        (PrivacyChange::RemoveContact(c), "not found"),
        (PrivacyChange::Unblock(c), "not found"),
        (PrivacyChange::AddContact(ghost), "not found"),
        (PrivacyChange::Block(ghost), "not found"),
        (
            settings(
                LastSeenAudience::Nobody,
                OnlineAudience::Everyone,
                true,
                &[c, ghost],
            ),
            "not found",
        ),
    ];
    for (refused, expected) in refused {
        let error = s.change_privacy(a, &refused, now()).await.unwrap_err();
        let kind = match error {
            StoreError::Conflict(_) => "conflict",
            StoreError::NotFound(_) => "not found",
            other => panic!("{refused:?}: {other:?}"),
        };
        assert_eq!(kind, expected, "{refused:?}");
        assert_eq!(one(s, a).await, before, "{refused:?} left no trace");
    }

    // A refused first change does not create the settings row either.
    let error = s.change_privacy(c, &PrivacyChange::Unblock(a), now()).await;
    assert!(matches!(error, Err(StoreError::NotFound(_))), "{error:?}");
    assert_eq!(one(s, c).await.version, 0);
    let error = s
        .change_privacy(ghost, &PrivacyChange::AddContact(a), now())
        .await;
    assert!(matches!(error, Err(StoreError::NotFound(_))), "{error:?}");
}

pub async fn settings_replace_the_except_list_and_invisible_mode_keeps_its_first_moment(
    store: Arc<dyn Store>,
) {
    let a = user(store.as_ref(), "a").await.id;
    let b = user(store.as_ref(), "b").await.id;
    let c = user(store.as_ref(), "c").await.id;
    let s = store.as_ref();
    change(s, a, PrivacyChange::AddContact(b)).await;

    let t1 = now();
    let update = settings(
        LastSeenAudience::ContactsExcept,
        OnlineAudience::SameAsLastSeen,
        true,
        &[b, c],
    );
    let state = s.change_privacy(a, &update, t1).await.unwrap();
    let expected = PrivacySettings {
        last_seen: LastSeenAudience::ContactsExcept,
        online: OnlineAudience::SameAsLastSeen,
        invisible_since: Some(t1),
    };
    assert_eq!((state.version, state.data.settings), (2, expected));
    assert_eq!(state.data.except, set(&[b, c]));
    assert_eq!(state.data.contacts, set(&[b]), "settings keep the contacts");
    assert_eq!(one(s, a).await, state);

    let t2 = t1 + Duration::seconds(60);
    let update = settings(
        LastSeenAudience::Nobody,
        OnlineAudience::Everyone,
        true,
        &[c],
    );
    let state = s.change_privacy(a, &update, t2).await.unwrap();
    assert_eq!(state.version, 3);
    assert_eq!(state.data.settings.last_seen, LastSeenAudience::Nobody);
    assert_eq!(state.data.settings.online, OnlineAudience::Everyone);
    assert_eq!(
        state.data.settings.invisible_since,
        Some(t1),
        "still invisible since t1"
    );
    assert_eq!(state.data.except, set(&[c]), "the except list is replaced");

    let update = settings(
        LastSeenAudience::Contacts,
        OnlineAudience::Everyone,
        false,
        &[],
    );
    let state = s.change_privacy(a, &update, t2).await.unwrap();
    assert_eq!(
        (state.version, state.data.settings.invisible_since),
        (4, None)
    );
    assert_eq!(state.data.except, set(&[]));

    let t3 = t2 + Duration::seconds(60);
    let update = settings(
        LastSeenAudience::Everyone,
        OnlineAudience::Everyone,
        true,
        &[],
    );
    let state = s.change_privacy(a, &update, t3).await.unwrap();
    assert_eq!(
        state.data.settings.invisible_since,
        Some(t3),
        "invisible again since t3"
    );
    assert_eq!(one(s, a).await, state);
}

pub async fn a_partial_settings_update_keeps_the_fields_it_leaves_out(store: Arc<dyn Store>) {
    let a = user(store.as_ref(), "a").await.id;
    let b = user(store.as_ref(), "b").await.id;
    let s = store.as_ref();
    let t1 = now();
    let update = settings(
        LastSeenAudience::ContactsExcept,
        OnlineAudience::SameAsLastSeen,
        true,
        &[b],
    );
    let before = s.change_privacy(a, &update, t1).await.unwrap();

    let only_online = PrivacyChange::Settings(SettingsUpdate {
        online: Some(OnlineAudience::Everyone),
        ..SettingsUpdate::default()
    });
    let after = s
        .change_privacy(a, &only_online, t1 + Duration::seconds(60))
        .await
        .unwrap();
    assert_eq!(after.data.settings.online, OnlineAudience::Everyone);
    assert_eq!(
        after.data.settings.last_seen,
        LastSeenAudience::ContactsExcept
    );
    assert_eq!(
        after.data.settings.invisible_since,
        Some(t1),
        "still invisible since t1"
    );
    assert_eq!(
        after.data.except, before.data.except,
        "the except list is kept"
    );
    assert_eq!(after.version, before.version + 1);

    let only_visible = PrivacyChange::Settings(SettingsUpdate {
        invisible: Some(false),
        except: Some(set(&[])),
        ..SettingsUpdate::default()
    });
    let after = s.change_privacy(a, &only_visible, t1).await.unwrap();
    assert_eq!(after.data.settings.invisible_since, None);
    assert_eq!(after.data.except, set(&[]));
    assert_eq!(
        after.data.settings.last_seen,
        LastSeenAudience::ContactsExcept
    );
    assert_eq!(one(s, a).await, after);
}

pub async fn concurrent_changes_of_one_user_each_get_their_own_version(store: Arc<dyn Store>) {
    let owner = user(store.as_ref(), "owner").await.id;
    let mut others = Vec::new();
    for i in 0..8 {
        others.push(user(store.as_ref(), &format!("contact{i}")).await.id);
    }
    let changes = others.iter().map(|&other| {
        let store = store.clone();
        async move {
            let add = PrivacyChange::AddContact(other);
            store.change_privacy(owner, &add, now()).await.unwrap()
        }
    });
    let states = futures_util::future::join_all(changes).await;

    let mut versions: Vec<u64> = states.iter().map(|s| s.version).collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=8).collect::<Vec<u64>>());
    for state in &states {
        // Each state holds exactly the contacts added by its version.
        assert_eq!(
            state.data.contacts.len(),
            usize::try_from(state.version).unwrap()
        );
    }
    let last = one(store.as_ref(), owner).await;
    assert_eq!((last.version, last.data.contacts), (8, set(&others)));
}
