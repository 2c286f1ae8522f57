//! Throttles: failed logins per username and per address, registrations and socket/stream
//! opens per address; over a limit, 429 `throttled` with `Retry-After`.

use std::time::Duration;

use lastseen::domain::Rate;
use reqwest::Response;

use crate::helpers::{expect, expect_error, spawn_app_with};

fn rate(limit: u32, window_secs: u64) -> Rate {
    Rate {
        limit,
        window: Duration::from_secs(window_secs),
    }
}

/// Asserts a 429 `throttled` whose `Retry-After` is within the window.
async fn throttled(response: Response, window_secs: u64) {
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=window_secs).contains(&retry_after), "{retry_after}");
    expect_error(response, 429, "throttled").await;
}

#[tokio::test]
async fn failed_logins_of_one_username_are_throttled_but_another_user_still_logs_in() {
    let app = spawn_app_with(|s| s.login_failure_limit = rate(3, 60)).await;
    app.user("alice").await;
    app.user("bob").await;
    for _ in 0..3 {
        let wrong = app.login("alice", "wrong-password").await;
        expect_error(wrong, 401, "authentication_failed").await;
    }
    throttled(app.login("alice", "wrong-password").await, 60).await;
    throttled(app.login("ALICE", "password123").await, 60).await;
    expect(app.login("bob", "password123").await, 200).await;
}

#[tokio::test]
async fn failed_logins_from_one_address_are_throttled_at_ten_times_the_username_limit() {
    let app = spawn_app_with(|s| s.login_failure_limit = rate(2, 60)).await;
    app.user("bob").await;
    for n in 0..20 {
        let wrong = app.login(&format!("nobody{n}"), "wrong-password").await;
        expect_error(wrong, 401, "authentication_failed").await;
    }
    throttled(app.login("bob", "password123").await, 60).await;
}

#[tokio::test]
async fn registrations_from_one_address_are_throttled() {
    let app = spawn_app_with(|s| s.register_rate_limit = rate(3, 3600)).await;
    for n in 0..3 {
        expect(app.register(&format!("user{n}"), "password123").await, 201).await;
    }
    throttled(app.register("user3", "password123").await, 3600).await;
}

#[tokio::test]
async fn socket_and_stream_opens_from_one_address_are_throttled() {
    let app = spawn_app_with(|s| s.connect_rate_limit = rate(2, 60)).await;
    let (_, token) = app.user("alice").await;
    let first = app.ws(&token).await;
    let events = app.url("/api/presence/events?user_ids=1");
    let stream = app
        .client
        .get(&events)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let refused = app
        .client
        .get(&events)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    throttled(refused, 60).await;
    let refused = app
        .client
        .get(app.url("/api/presence/ws"))
        .bearer_auth(&token)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    throttled(refused, 60).await;
    drop((first, stream));
}
