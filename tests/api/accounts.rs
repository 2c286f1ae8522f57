use serde_json::Value;

use crate::helpers::{expect, expect_error, spawn_app, spawn_app_with};

#[tokio::test]
async fn register_returns_201_with_id_and_username() {
    let app = spawn_app().await;
    let body = expect(app.register("ahmad", "password123").await, 201).await;
    assert!(body["id"].as_i64().unwrap() > 0);
    assert_eq!(body["username"], "ahmad");
    assert_eq!(body.as_object().unwrap().len(), 2);
}

#[tokio::test]
async fn register_rejects_bad_usernames_and_short_passwords_with_400() {
    let app = spawn_app().await;
    for (username, password) in [
        ("", "password123"),
        ("has space", "password123"),
        ("ok", "short"),
    ] {
        expect_error(app.register(username, password).await, 400, "invalid").await;
    }
    let long = "x".repeat(151);
    expect_error(app.register(&long, "password123").await, 400, "invalid").await;
}

#[tokio::test]
async fn a_taken_username_is_409() {
    let app = spawn_app().await;
    expect(app.register("sara", "password123").await, 201).await;
    expect_error(
        app.register("sara", "different-pass").await,
        409,
        "conflict",
    )
    .await;
}

#[tokio::test]
async fn usernames_are_one_account_in_any_case_and_keep_their_spelling() {
    let app = spawn_app().await;
    expect(app.register("Sara", "password123").await, 201).await;
    for other in ["sara", "SARA"] {
        expect_error(app.register(other, "password456").await, 409, "conflict").await;
    }
    let body = expect(app.login("sARA", "password123").await, 200).await;
    assert_eq!(body["user"]["username"], "Sara");
    expect_error(
        app.login("sara", "password456").await,
        401,
        "authentication_failed",
    )
    .await;
}

#[tokio::test]
async fn registration_can_be_closed_by_a_setting() {
    let app = spawn_app_with(|s| s.open_registration = false).await;
    expect_error(
        app.register("sara", "password123").await,
        403,
        "permission_denied",
    )
    .await;
}

#[tokio::test]
async fn login_returns_a_bearer_token_and_the_user_online() {
    let app = spawn_app().await;
    expect(app.register("ahmad", "password123").await, 201).await;
    let body = expect(app.login("ahmad", "password123").await, 200).await;
    let token = body["access"].as_str().unwrap();
    assert!(
        token.len() >= 32,
        "at least 128 bits of entropy, hex encoded"
    );
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["heartbeat_interval_ms"], 30_000);
    let user = &body["user"];
    assert_eq!(user["username"], "ahmad");
    assert_eq!(user["online_status"], "online");
    assert_eq!(user["is_online"], true);
    assert!(user["last_seen"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn unknown_user_and_wrong_password_get_the_same_401() {
    let app = spawn_app().await;
    expect(app.register("ahmad", "password123").await, 201).await;
    let wrong = expect_error(
        app.login("ahmad", "wrong-password").await,
        401,
        "authentication_failed",
    )
    .await;
    let unknown = expect_error(
        app.login("nobody", "password123").await,
        401,
        "authentication_failed",
    )
    .await;
    assert_eq!(wrong, unknown);
}

#[tokio::test]
async fn tokens_are_stored_only_as_hashes() {
    let app = spawn_app().await;
    let (_, token) = app.user("ahmad").await;
    let db = std::fs::read(app.dir.path().join("lastseen.db")).unwrap();
    let wal = std::fs::read(app.dir.path().join("lastseen.db-wal")).unwrap_or_default();
    let needle = token.as_bytes();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "token stored in clear"
        );
    }
}

#[tokio::test]
async fn logout_revokes_the_token_at_once() {
    let app = spawn_app().await;
    let (_, token) = app.user("ahmad").await;
    let body = expect(app.post("/api/users/logout/", &token).await, 200).await;
    assert_eq!(body["online_status"], "offline");
    assert!(body["message"].as_str().is_some());
    expect_error(
        app.post("/api/users/heartbeat/", &token).await,
        401,
        "authentication_failed",
    )
    .await;
    expect_error(
        app.get("/api/users/me/", &token).await,
        401,
        "authentication_failed",
    )
    .await;
}

#[tokio::test]
async fn me_returns_the_user_presence_shape() {
    let app = spawn_app().await;
    let (id, token) = app.user("ahmad").await;
    let text = app
        .get("/api/users/me/", &token)
        .await
        .text()
        .await
        .unwrap();
    let body: Value = serde_json::from_str(&text).unwrap();
    let keys = [
        "id",
        "username",
        "online_status",
        "last_seen",
        "is_online",
        "availability",
        "status_text",
        "status_emoji",
        "platforms",
    ];
    assert_eq!(body.as_object().unwrap().len(), keys.len(), "{body}");
    let positions: Vec<usize> = keys
        .iter()
        .map(|key| text.find(&format!("\"{key}\":")).expect(key))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "the seed's fields in the seed's order, then rich presence: {text}"
    );
    assert_eq!(body["availability"], "active");
    assert_eq!(body["platforms"], serde_json::json!(["web"]));
    assert_eq!(body["id"], id);
    assert_eq!(body["username"], "ahmad");
    assert_eq!(body["online_status"], "online");
    assert_eq!(body["is_online"], true);
    assert!(body["last_seen"].is_string());
}

#[tokio::test]
async fn a_login_beyond_the_session_limit_revokes_the_least_recently_active_session() {
    let app = spawn_app_with(|s| s.max_sessions_per_user = 2).await;
    let (_, first) = app.user("ahmad").await;
    let second = app.token("ahmad").await;
    expect(app.post("/api/users/heartbeat/", &second).await, 200).await;
    let third = app.token("ahmad").await;
    expect_error(
        app.get("/api/users/me/", &first).await,
        401,
        "authentication_failed",
    )
    .await;
    for token in [&second, &third] {
        expect(app.get("/api/users/me/", token).await, 200).await;
    }
}
