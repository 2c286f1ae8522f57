//! Users: migrations, ping, creation and lookups.

use std::sync::Arc;

use lastseen::domain::{PresenceStatus, UserId, Username};
use lastseen::store::{Conflict, NO_PASSWORD, Store, StoreError, UserRecord};

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

pub async fn search_finds_names_containing_the_text_in_any_case_in_id_order(store: Arc<dyn Store>) {
    let alice = user(store.as_ref(), "alice").await;
    let malika = user(store.as_ref(), "Malika").await;
    user(store.as_ref(), "bob").await;
    let literal = user(store.as_ref(), "a_b").await;
    let names = |found: Vec<UserRecord>| found.into_iter().map(|u| u.id).collect::<Vec<_>>();

    let found = store.search_users("ALI", None, 10).await.unwrap();
    assert_eq!(names(found), [alice.id, malika.id]);
    let page = store.search_users("ali", Some(alice.id), 10).await.unwrap();
    assert_eq!(names(page), [malika.id]);
    let first = store.search_users("ali", None, 1).await.unwrap();
    assert_eq!(names(first), [alice.id]);
    // `_` and `%` are text, not wildcards.
    assert_eq!(
        names(store.search_users("_", None, 10).await.unwrap()),
        [literal.id]
    );
    assert!(store.search_users("%", None, 10).await.unwrap().is_empty());
    assert_eq!(store.search_users("", None, 10).await.unwrap().len(), 4);
}

pub async fn online_samples_keep_one_count_per_minute_and_prune_old_ones(store: Arc<dyn Store>) {
    store.record_online_sample(100, 5).await.unwrap();
    store.record_online_sample(101, 7).await.unwrap();
    store.record_online_sample(101, 8).await.unwrap();
    store.record_online_sample(50, 1).await.unwrap();
    assert_eq!(
        store.online_samples(60).await.unwrap(),
        [(100, 5), (101, 8)]
    );
    assert_eq!(store.prune_online_samples(100).await.unwrap(), 1);
    assert_eq!(store.online_samples(0).await.unwrap(), [(100, 5), (101, 8)]);
}

pub async fn an_external_user_is_created_once_and_found_by_its_external_id(store: Arc<dyn Store>) {
    let name = Username::parse("jwt_alice").unwrap();
    let created = store.external_user("42", &name).await.unwrap();
    assert_eq!(created.username, "jwt_alice");
    assert!(!created.is_admin);
    assert_eq!(created.password_hash, NO_PASSWORD);

    let other_name = Username::parse("someone_else").unwrap();
    let again = store.external_user("42", &other_name).await.unwrap();
    assert_eq!(
        (again.id, again.username.as_str()),
        (created.id, "jwt_alice")
    );
    assert!(
        store
            .user_by_username("someone_else")
            .await
            .unwrap()
            .is_none()
    );

    let found = store.user_by_external_id("42").await.unwrap().unwrap();
    assert_eq!(found.id, created.id);
    assert!(store.user_by_external_id("43").await.unwrap().is_none());
    // A user registered here has no external id, whatever its name.
    let sara = user(store.as_ref(), "sara").await;
    assert!(store.user_by_external_id("sara").await.unwrap().is_none());
    let second = store
        .external_user("sara", &Username::parse("user_sara").unwrap())
        .await
        .unwrap();
    assert_ne!(second.id, sara.id);
}

pub async fn an_external_user_whose_name_is_taken_is_a_conflict_and_nothing_is_created(
    store: Arc<dyn Store>,
) {
    let alice = user(store.as_ref(), "alice").await;
    let taken = store
        .external_user("7", &Username::parse("alice").unwrap())
        .await;
    assert!(
        matches!(taken, Err(StoreError::Conflict(Conflict::UsernameTaken))),
        "{taken:?}"
    );
    assert!(store.user_by_external_id("7").await.unwrap().is_none());
    let kept = store.user_by_username("alice").await.unwrap().unwrap();
    assert_eq!(
        (kept.id, kept.password_hash.as_str()),
        (alice.id, "hash-of-a-password")
    );
    let fallback = store
        .external_user("7", &Username::parse("user7").unwrap())
        .await
        .unwrap();
    assert_ne!(fallback.id, alice.id);
}

pub async fn concurrent_provisioning_of_one_external_id_creates_one_user(store: Arc<dyn Store>) {
    let attempts = (0..8).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let name = Username::parse(&format!("racer{i}")).unwrap();
            store.external_user("99", &name).await.unwrap().id
        })
    });
    let mut ids = Vec::new();
    for attempt in attempts.collect::<Vec<_>>() {
        ids.push(attempt.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let racers = (0..8).map(|i| format!("racer{i}"));
    let mut created = 0;
    for name in racers {
        created += usize::from(store.user_by_username(&name).await.unwrap().is_some());
    }
    assert_eq!(created, 1);
}
