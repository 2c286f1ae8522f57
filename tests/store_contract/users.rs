//! Users: migrations, ping, creation and lookups.

use std::sync::Arc;

use lastseen::domain::{PresenceStatus, UserId, Username};
use lastseen::store::{Store, StoreError, UserRecord};

/// Creates a non-admin user named `name`.
pub async fn user(store: &dyn Store, name: &str) -> UserRecord {
    store
        .create_user(&Username::parse(name).unwrap(), "hash-of-a-password", false)
        .await
        .unwrap()
}

fn ids(records: &[UserRecord]) -> Vec<UserId> {
    let mut ids: Vec<UserId> = records.iter().map(|r| r.id).collect();
    ids.sort();
    ids
}

pub async fn migrating_again_changes_nothing_and_ping_answers(store: Arc<dyn Store>) {
    let ahmad = user(store.as_ref(), "ahmad").await;
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
    let found = store.user_by_id(ahmad.id).await.unwrap().unwrap();
    assert_eq!(found.username, "ahmad");
}

pub async fn a_created_user_is_found_by_name_and_by_id(store: Arc<dyn Store>) {
    let name = Username::parse("ahmad").unwrap();
    let created = store
        .create_user(&name, "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA", true)
        .await
        .unwrap();
    assert_eq!(created.username, "ahmad");
    assert_eq!(
        created.password_hash,
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"
    );
    assert!(created.is_admin);
    assert_eq!(created.online_status, PresenceStatus::Offline);
    assert_eq!(created.last_seen, None);
    assert_eq!(created.presence_seq, 0);

    let by_name = store.user_by_username("ahmad").await.unwrap().unwrap();
    let by_id = store.user_by_id(created.id).await.unwrap().unwrap();
    for found in [&by_name, &by_id] {
        assert_eq!(found.id, created.id);
        assert_eq!(found.username, created.username);
        assert_eq!(found.password_hash, created.password_hash);
        assert_eq!(found.is_admin, created.is_admin);
        assert_eq!(found.online_status, created.online_status);
        assert_eq!(found.last_seen, created.last_seen);
        assert_eq!(found.presence_seq, created.presence_seq);
    }

    let second = user(store.as_ref(), "sara").await;
    assert!(!second.is_admin);
    assert_ne!(second.id, created.id);
    assert!(store.user_by_username("nobody").await.unwrap().is_none());
    assert!(store.user_by_id(UserId(i64::MAX)).await.unwrap().is_none());
}

pub async fn a_taken_username_is_a_conflict_in_any_case_and_found_in_any_case(
    store: Arc<dyn Store>,
) {
    let first = user(store.as_ref(), "Ahmad").await;
    for spelling in ["Ahmad", "ahmad", "AHMAD", "aHmAd"] {
        let again = store
            .create_user(&Username::parse(spelling).unwrap(), "other-hash", true)
            .await;
        assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
        let found = store.user_by_username(spelling).await.unwrap().unwrap();
        assert_eq!((found.id, found.is_admin), (first.id, false));
        assert_eq!(found.username, "Ahmad", "the stored spelling is kept");
    }
    let other = user(store.as_ref(), "ahmad_2").await;
    assert_ne!(other.id, first.id);
    assert!(store.user_by_username("ahmad_").await.unwrap().is_none());
}

pub async fn users_by_ids_returns_the_known_ones(store: Arc<dyn Store>) {
    let a = user(store.as_ref(), "a").await;
    let b = user(store.as_ref(), "b").await;
    let c = user(store.as_ref(), "c").await;

    let found = store
        .users_by_ids(&[c.id, UserId(i64::MAX), a.id])
        .await
        .unwrap();
    assert_eq!(ids(&found), [a.id, c.id]);
    let a_found = found.iter().find(|u| u.id == a.id).unwrap();
    assert_eq!(a_found.username, "a");

    let all = store.users_by_ids(&[a.id, b.id, c.id, b.id]).await.unwrap();
    assert_eq!(ids(&all), [a.id, b.id, c.id], "duplicates are read once");
    assert!(store.users_by_ids(&[]).await.unwrap().is_empty());
}
