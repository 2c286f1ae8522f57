//! Sessions: creation, lookup by token hash, deletion.

use std::sync::Arc;

use chrono::Utc;
use lastseen::domain::{Device, Platform, SessionId, UserId, Username};
use lastseen::store::{SessionRecord, Store, StoreError};

use crate::users::user;

pub async fn a_session_is_found_by_its_token_hash_until_it_is_deleted(store: Arc<dyn Store>) {
    let admin = store
        .create_user(&Username::parse("root").unwrap(), "hash", true)
        .await
        .unwrap();
    let ahmad = user(store.as_ref(), "ahmad").await;
    let now = Utc::now();
    // Hashes are raw bytes, zeros and high bytes included.
    let phone_hash = [0u8, 255, 1, 254, 0, 0, 7];
    let phone = store
        .create_session(ahmad.id, &phone_hash, now)
        .await
        .unwrap();
    let laptop = store
        .create_session(ahmad.id, b"laptop", now)
        .await
        .unwrap();
    let admin_session = store.create_session(admin.id, b"root", now).await.unwrap();
    assert_ne!(phone, laptop);

    let found = store.session_by_token(&phone_hash).await.unwrap();
    let expected = SessionRecord {
        session_id: phone,
        user_id: ahmad.id,
        username: "ahmad".to_owned(),
        is_admin: false,
        platform: Platform::Web,
    };
    assert_eq!(found, Some(expected));
    let found = store.session_by_token(b"root").await.unwrap().unwrap();
    assert_eq!((found.session_id, found.is_admin), (admin_session, true));
    assert_eq!(found.username, "root");
    assert!(store.session_by_token(b"unknown").await.unwrap().is_none());
    assert!(
        store
            .session_by_token(&phone_hash[..6])
            .await
            .unwrap()
            .is_none()
    );

    let deleted = store.delete_session(phone).await.unwrap();
    assert_eq!(deleted.as_deref(), Some(&phone_hash[..]), "its token hash");
    assert!(store.session_by_token(&phone_hash).await.unwrap().is_none());
    let other = store.session_by_token(b"laptop").await.unwrap().unwrap();
    assert_eq!(other.session_id, laptop, "the user's other session is kept");

    assert_eq!(
        store.delete_session(phone).await.unwrap(),
        None,
        "gone already"
    );
    assert_eq!(
        store.delete_session(SessionId(i64::MAX)).await.unwrap(),
        None
    );
}

pub async fn a_token_hash_in_use_is_a_conflict_and_an_unknown_user_not_found(
    store: Arc<dyn Store>,
) {
    let ahmad = user(store.as_ref(), "ahmad").await;
    let sara = user(store.as_ref(), "sara").await;
    let first = store
        .create_session(ahmad.id, b"token", Utc::now())
        .await
        .unwrap();

    let again = store.create_session(sara.id, b"token", Utc::now()).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    let owner = store.session_by_token(b"token").await.unwrap().unwrap();
    assert_eq!((owner.session_id, owner.user_id), (first, ahmad.id));

    let orphan = store
        .create_session(UserId(i64::MAX), b"orphan", Utc::now())
        .await;
    assert!(matches!(orphan, Err(StoreError::NotFound(_))), "{orphan:?}");
    assert!(store.session_by_token(b"orphan").await.unwrap().is_none());
}

pub async fn sessions_beyond_a_cap_are_the_least_recently_active_of_one_user(
    store: Arc<dyn Store>,
) {
    let ahmad = user(store.as_ref(), "ahmad").await;
    let sara = user(store.as_ref(), "sara").await;
    let base = Utc::now();
    let mut ahmad_sessions = Vec::new();
    for i in 0..4 {
        let at = base + chrono::Duration::seconds(i);
        let token = format!("ahmad{i}");
        ahmad_sessions.push(
            store
                .create_session(ahmad.id, token.as_bytes(), at)
                .await
                .unwrap(),
        );
    }
    let sara_session = store.create_session(sara.id, b"sara", base).await.unwrap();

    let mut beyond = store.sessions_beyond(ahmad.id, 2).await.unwrap();
    beyond.sort();
    assert_eq!(beyond, vec![ahmad_sessions[0], ahmad_sessions[1]]);
    for session in beyond {
        let hash = store.delete_session(session).await.unwrap();
        assert!(hash.is_some(), "deleting gives the token hash back");
    }
    assert!(store.session_by_token(b"ahmad0").await.unwrap().is_none());
    assert!(store.session_by_token(b"ahmad3").await.unwrap().is_some());
    assert_eq!(
        store
            .session_by_token(b"sara")
            .await
            .unwrap()
            .map(|s| s.session_id),
        Some(sara_session),
        "other users' sessions are untouched"
    );
    assert!(store.sessions_beyond(ahmad.id, 2).await.unwrap().is_empty());
    assert_eq!(
        store.sessions_beyond(sara.id, 0).await.unwrap(),
        vec![sara_session]
    );
}

pub async fn device_sessions_keep_their_platform_and_name_and_list_newest_first(
    store: Arc<dyn Store>,
) {
    let ahmad = user(store.as_ref(), "ahmad").await.id;
    let sara = user(store.as_ref(), "sara").await.id;
    let t0 = Utc::now();
    let phone = Device::parse(Platform::Mobile, Some("Ahmad's phone")).unwrap();
    let first = store
        .create_device_session(ahmad, b"phone", t0, &phone)
        .await
        .unwrap();
    let later = t0 + chrono::Duration::seconds(5);
    let second = store
        .create_device_session(ahmad, b"laptop", later, &Device::default())
        .await
        .unwrap();
    store
        .create_device_session(sara, b"sara", t0, &Device::default())
        .await
        .unwrap();

    let found = store.session_by_token(b"phone").await.unwrap().unwrap();
    assert_eq!(found.platform, Platform::Mobile);
    let listed = store.sessions_of(ahmad).await.unwrap();
    let ids: Vec<SessionId> = listed.iter().map(|s| s.id).collect();
    assert_eq!(ids, [second, first], "newest first, only the user's own");
    assert_eq!(listed[1].platform, Platform::Mobile);
    assert_eq!(listed[1].name.as_deref(), Some("Ahmad's phone"));
    assert_eq!(listed[0].platform, Platform::Web);
    assert_eq!(listed[0].name, None);
    assert!(
        store
            .sessions_of(UserId(i64::MAX))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn a_revoked_token_session_stays_revoked_until_its_token_expires(store: Arc<dyn Store>) {
    let ahmad = user(store.as_ref(), "ahmad").await;
    let now = Utc::now();
    let hour = chrono::Duration::hours(1);
    let jwt = store
        .create_token_session(ahmad.id, b"jwt", now, now + hour)
        .await
        .unwrap()
        .expect("not revoked");
    let found = store.session_by_token(b"jwt").await.unwrap().unwrap();
    assert_eq!((found.session_id, found.user_id), (jwt, ahmad.id));
    let again = store
        .create_token_session(ahmad.id, b"jwt", now, now + hour)
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");

    assert_eq!(
        store.delete_session(jwt).await.unwrap(),
        Some(b"jwt".to_vec())
    );
    assert!(store.session_by_token(b"jwt").await.unwrap().is_none());
    let reopened = store
        .create_token_session(ahmad.id, b"jwt", now, now + hour)
        .await
        .unwrap();
    assert_eq!(reopened, None, "revoked until the token expires");

    // A login's session leaves nothing behind.
    let login = store.create_session(ahmad.id, b"login", now).await.unwrap();
    store.delete_session(login).await.unwrap();
    let reused = store
        .create_token_session(ahmad.id, b"login", now, now + hour)
        .await
        .unwrap();
    assert!(reused.is_some());

    // Revoked hashes whose token expired are dropped by a later revocation.
    let old = store
        .create_token_session(ahmad.id, b"old", now - hour, now - hour)
        .await
        .unwrap()
        .unwrap();
    store.delete_session(old).await.unwrap();
    let other = store
        .create_token_session(ahmad.id, b"other", now, now + hour)
        .await
        .unwrap()
        .unwrap();
    store.delete_session(other).await.unwrap();
    let after_expiry = store
        .create_token_session(ahmad.id, b"old", now, now + hour)
        .await
        .unwrap();
    assert!(after_expiry.is_some());
    let unknown = store
        .create_token_session(UserId(i64::MAX), b"nobody", now, now + hour)
        .await;
    assert!(
        matches!(unknown, Err(StoreError::NotFound(_))),
        "{unknown:?}"
    );
}
