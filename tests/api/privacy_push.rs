//! Privacy on the push paths: WebSocket snapshots and events, SSE, typing. Each asserts the
//! pushed fields equal what the HTTP read returns to the same viewer.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, WsClient, expect, spawn_app};

async fn put_privacy(app: &TestApp, token: &str, last_seen: &str, online: &str, invisible: bool) {
    let body = json!({"last_seen": last_seen, "online": online, "invisible": invisible});
    let response = app
        .send_json(Method::PUT, "/api/users/me/privacy/", token, &body)
        .await;
    expect(response, 200).await;
}

async fn http_view(app: &TestApp, viewer: &str, owner: i64) -> Value {
    expect(
        app.get(&format!("/api/users/{owner}/presence/"), viewer)
            .await,
        200,
    )
    .await
}

/// The fields the privacy rule decides, from an HTTP body, a snapshot entry or an event.
fn fields(value: &Value) -> (Value, Value) {
    (value["online_status"].clone(), value["last_seen"].clone())
}

async fn next_presence(socket: &mut WsClient) -> Value {
    let frame = socket.next_json().await;
    assert_eq!(frame["type"], "presence", "{frame}");
    frame
}

#[tokio::test]
async fn a_ws_snapshot_hides_what_the_http_read_hides_and_no_event_leaks_a_hidden_transition() {
    let app = spawn_app().await;
    let (_, alice) = app.user("alice").await;
    let (bob, bob_token) = app.user("bob").await;
    put_privacy(&app, &bob_token, "nobody", "same_as_last_seen", false).await;

    let mut socket = app.ws(&alice).await;
    let snapshot = socket.subscribe(&[bob]).await;
    let entry = &snapshot["users"][0];
    assert_eq!(fields(entry), (Value::Null, Value::Null));
    assert_eq!(
        entry["seq"],
        Value::Null,
        "seq would reveal the hidden last_seen"
    );
    assert_eq!(fields(entry), fields(&http_view(&app, &alice, bob).await));

    // Bob goes offline and online again: nothing alice may see changes, so nothing is sent.
    expect(app.post("/api/users/logout/", &bob_token).await, 200).await;
    app.token("bob").await;
    socket.expect_silence(Duration::from_millis(400)).await;
}

#[tokio::test]
async fn a_settings_change_reaches_a_connected_subscriber_without_reconnecting() {
    let app = spawn_app().await;
    let (_, alice) = app.user("alice").await;
    let (bob, bob_token) = app.user("bob").await;
    let mut socket = app.ws(&alice).await;
    let snapshot = socket.subscribe(&[bob]).await;
    assert_eq!(snapshot["users"][0]["online_status"], "online");

    put_privacy(&app, &bob_token, "nobody", "same_as_last_seen", false).await;
    let hidden = next_presence(&mut socket).await;
    assert_eq!(fields(&hidden), (Value::Null, Value::Null));
    assert_eq!(fields(&hidden), fields(&http_view(&app, &alice, bob).await));

    put_privacy(&app, &bob_token, "everyone", "everyone", false).await;
    let shown = next_presence(&mut socket).await;
    assert_eq!(shown["online_status"], "online");
    assert!(shown["last_seen"].is_string());
    assert_eq!(fields(&shown), fields(&http_view(&app, &alice, bob).await));
}

#[tokio::test]
async fn contacts_only_last_seen_follows_the_contact_list_live() {
    let app = spawn_app().await;
    let (alice_id, alice) = app.user("alice").await;
    let (bob, bob_token) = app.user("bob").await;
    put_privacy(&app, &bob_token, "contacts", "everyone", false).await;
    let mut socket = app.ws(&alice).await;
    let entry = socket.subscribe(&[bob]).await["users"][0].clone();
    assert_eq!(
        entry["online_status"], "online",
        "online is shown to everyone"
    );
    assert_eq!(
        entry["last_seen"],
        Value::Null,
        "alice is not bob's contact"
    );

    let add = json!({"user_id": alice_id});
    let response = app
        .send_json(Method::POST, "/api/users/me/contacts/", &bob_token, &add)
        .await;
    expect(response, 201).await;
    let update = next_presence(&mut socket).await;
    assert!(update["last_seen"].is_string(), "now a contact: {update}");
    assert_eq!(fields(&update), fields(&http_view(&app, &alice, bob).await));
}

#[tokio::test]
async fn a_block_hides_everything_on_push_and_drops_typing_both_ways() {
    let app = spawn_app().await;
    let (alice_id, alice) = app.user("alice").await;
    let (bob, bob_token) = app.user("bob").await;
    let mut alice_socket = app.ws(&alice).await;
    let mut bob_socket = app.ws(&bob_token).await;
    alice_socket.subscribe(&[bob]).await;
    bob_socket.subscribe(&[alice_id]).await;

    let block = json!({"user_id": alice_id});
    let response = app
        .send_json(Method::POST, "/api/users/me/blocked/", &bob_token, &block)
        .await;
    expect(response, 201).await;
    let hidden = next_presence(&mut alice_socket).await;
    assert_eq!(fields(&hidden), (Value::Null, Value::Null));
    assert_eq!(fields(&hidden), fields(&http_view(&app, &alice, bob).await));

    alice_socket
        .send_json(json!({"type": "typing", "to": bob}))
        .await;
    bob_socket
        .send_json(json!({"type": "typing", "to": alice_id}))
        .await;
    bob_socket.expect_silence(Duration::from_millis(300)).await;
    alice_socket
        .expect_silence(Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn sse_applies_the_same_rule() {
    let app = spawn_app().await;
    let (_, alice) = app.user("alice").await;
    let (bob, bob_token) = app.user("bob").await;
    put_privacy(&app, &bob_token, "nobody", "same_as_last_seen", false).await;
    let mut stream = app
        .get(&format!("/api/presence/events?user_ids={bob}"), &alice)
        .await;
    let chunk = tokio::time::timeout(Duration::from_secs(5), stream.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let text = String::from_utf8(chunk.to_vec()).unwrap();
    let data = text.lines().find_map(|l| l.strip_prefix("data:")).unwrap();
    let snapshot: Value = serde_json::from_str(data.trim()).unwrap();
    let entry = &snapshot["users"][0];
    assert_eq!(fields(entry), (Value::Null, Value::Null));
    assert_eq!(fields(entry), fields(&http_view(&app, &alice, bob).await));
}

#[tokio::test]
async fn invisible_mode_freezes_what_subscribers_see() {
    let app = spawn_app().await;
    let (_, alice) = app.user("alice").await;
    let (bob, bob_token) = app.user("bob").await;
    let mut socket = app.ws(&alice).await;
    socket.subscribe(&[bob]).await;

    put_privacy(&app, &bob_token, "everyone", "everyone", true).await;
    let frozen = next_presence(&mut socket).await;
    assert_eq!(frozen["online_status"], "offline");
    assert!(frozen["last_seen"].is_string());
    assert_eq!(
        frozen["seq"],
        Value::Null,
        "the real seq would reveal bob's real activity"
    );
    assert_eq!(fields(&frozen), fields(&http_view(&app, &alice, bob).await));

    // Bob keeps working (another device logs in and out): alice sees nothing move.
    let phone = app.token("bob").await;
    expect(app.post("/api/users/logout/", &phone).await, 200).await;
    socket.expect_silence(Duration::from_millis(400)).await;
}

#[tokio::test]
async fn hiding_ones_own_last_seen_hides_everyone_elses_from_ones_sockets() {
    let app = spawn_app().await;
    let (_, alice) = app.user("alice").await;
    let (bob, _) = app.user("bob").await;
    let mut socket = app.ws(&alice).await;
    let entry = socket.subscribe(&[bob]).await["users"][0].clone();
    assert!(entry["last_seen"].is_string());

    put_privacy(&app, &alice, "nobody", "everyone", false).await;
    let update = next_presence(&mut socket).await;
    assert_eq!(update["last_seen"], Value::Null, "reciprocity");
    assert_eq!(update["online_status"], "online");
    assert_eq!(fields(&update), fields(&http_view(&app, &alice, bob).await));
}
