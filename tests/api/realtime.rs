//! WebSocket and SSE push against the real server.

use std::time::Duration;

use lastseen::domain::Username;
use serde_json::{Value, json};

use crate::helpers::{TestApp, expect, expect_error, spawn_app, spawn_app_with, wall_clock_past};

const GRACE: Duration = Duration::from_millis(600);

async fn app_with_short_grace() -> TestApp {
    spawn_app_with(|s| s.disconnect_grace = GRACE).await
}

/// Registers a user without logging in; returns its id.
async fn registered(app: &TestApp, name: &str) -> i64 {
    expect(app.register(name, "password123").await, 201).await["id"]
        .as_i64()
        .unwrap()
}

fn presence(frame: &Value) -> (i64, String) {
    assert_eq!(frame["type"], "presence", "{frame}");
    (
        frame["user_id"].as_i64().unwrap(),
        frame["online_status"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn a_subscriber_sees_a_login_and_a_logout_as_they_happen() {
    let app = spawn_app().await;
    let (_, alice) = app.user("alice").await;
    let bob = registered(&app, "bob").await;
    let mut socket = app.ws(&alice).await;
    let snapshot = socket.subscribe(&[bob]).await;
    assert_eq!(snapshot["users"][0]["online_status"], "offline");
    assert_eq!(snapshot["users"][0]["username"], "bob");

    let bob_token = app.token("bob").await;
    let started = std::time::Instant::now();
    let online = socket.next_json().await;
    let latency = started.elapsed();
    assert_eq!(presence(&online), (bob, "online".into()));
    assert_eq!(
        online["username"], "bob",
        "events name the user as snapshots do"
    );
    assert!(
        latency < Duration::from_secs(1),
        "pushed at once, took {latency:?}"
    );
    assert!(online["seq"].as_u64().unwrap() > snapshot["users"][0]["seq"].as_u64().unwrap());

    expect(app.post("/api/users/logout/", &bob_token).await, 200).await;
    let offline = socket.next_json().await;
    assert_eq!(presence(&offline), (bob, "offline".into()));
    assert!(offline["last_seen"].is_string());
    assert_eq!(offline["username"], "bob");
}

#[tokio::test]
async fn a_socket_is_told_it_is_ready_with_who_it_is_by_header_and_by_auth_message() {
    let app = spawn_app().await;
    let (alice_id, alice) = app.user("alice").await;
    let mut by_header = app.ws(&alice).await;
    assert_eq!(
        by_header.ready().await,
        json!({"type": "ready", "user_id": alice_id, "username": "alice"})
    );

    let mut by_message = app.ws_anonymous().await;
    by_message.expect_silence(Duration::from_millis(200)).await;
    by_message
        .send_json(json!({"type": "auth", "token": alice}))
        .await;
    assert_eq!(
        by_message.ready().await,
        json!({"type": "ready", "user_id": alice_id, "username": "alice"})
    );
}

#[tokio::test]
async fn bad_messages_are_answered_in_our_words_with_an_example() {
    let app = spawn_app().await;
    let (_, alice) = app.user("alice").await;
    let mut socket = app.ws(&alice).await;
    socket.ready().await;
    let shape = r#"Messages must be JSON objects like {"type":"subscribe","user_ids":[1,2]}."#;
    for (text, code, detail) in [
        ("hello", "parse_error", shape.to_owned()),
        ("{not json", "parse_error", shape.to_owned()),
        (
            r#"{"type":"dance"}"#,
            "invalid",
            "Unknown message type \"dance\"; the types are: auth, subscribe, unsubscribe, \
             typing, activity."
                .to_owned(),
        ),
        (
            r#"{"type":"typing","to":"bob"}"#,
            "invalid",
            r#"Bad typing message; it looks like {"type":"typing","to":2}."#.to_owned(),
        ),
    ] {
        socket.send_text(text).await;
        let frame = socket.next_json().await;
        assert_eq!(
            frame,
            json!({"type": "error", "code": code, "detail": detail}),
            "{text}"
        );
    }
}

#[tokio::test]
async fn browsers_authenticate_with_a_first_message() {
    let app = spawn_app().await;
    let (_, alice) = app.user("alice").await;
    let bob = registered(&app, "bob").await;
    let mut socket = app.ws_anonymous().await;
    socket
        .send_json(json!({"type": "auth", "token": alice}))
        .await;
    let snapshot = socket.subscribe(&[bob]).await;
    assert_eq!(snapshot["users"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_socket_without_valid_auth_is_closed_with_4401() {
    let app = spawn_app().await;
    let mut socket = app.ws_anonymous().await;
    socket
        .send_json(json!({"type": "auth", "token": "not-a-token"}))
        .await;
    assert_eq!(socket.close_code().await, Some(4401));

    let mut socket = app.ws_anonymous().await;
    socket
        .send_json(json!({"type": "subscribe", "user_ids": [1]}))
        .await;
    assert_eq!(socket.close_code().await, Some(4401));

    let response = app
        .client
        .get(app.url("/api/presence/ws"))
        .bearer_auth("not-a-token")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn every_bad_message_gets_an_error_frame_and_the_socket_stays_open() {
    let app = spawn_app().await;
    let (_, alice) = app.user("alice").await;
    let bob = registered(&app, "bob").await;
    let mut socket = app.ws(&alice).await;
    for (text, code) in [
        ("{not json", "parse_error"),
        (r#"{"type":"dance"}"#, "invalid"),
        (r#"{"type":"subscribe","user_ids":"all"}"#, "invalid"),
        (r#"{"type":"typing","to":"bob"}"#, "invalid"),
        (r#"{"type":"unsubscribe"}"#, "invalid"),
        (r#"{"type":"subscribe","user_ids":[999999]}"#, "not_found"),
    ] {
        socket.send_text(text).await;
        let frame = socket.next_json().await;
        assert_eq!(frame["type"], "error", "{text}: {frame}");
        assert_eq!(frame["code"], code, "{text}: {frame}");
        assert!(frame["detail"].is_string());
        if code == "not_found" {
            assert_eq!(socket.next_json().await["type"], "snapshot");
        }
    }
    socket.subscribe(&[bob]).await;
}

#[tokio::test]
async fn a_closed_socket_goes_offline_after_the_grace_and_not_before() {
    let app = app_with_short_grace().await;
    let (_, alice) = app.user("alice").await;
    let bob = registered(&app, "bob").await;
    let bob_token = app.token("bob").await;
    let mut watcher = app.ws(&alice).await;
    let bob_socket = app.ws(&bob_token).await;
    watcher.subscribe(&[bob]).await;

    bob_socket.close().await;
    let closed = std::time::Instant::now();
    let offline = watcher.next_json().await;
    assert_eq!(presence(&offline), (bob, "offline".into()));
    assert!(
        closed.elapsed() >= GRACE - Duration::from_millis(50),
        "offline after the grace"
    );
}

#[tokio::test]
async fn reconnecting_inside_the_grace_produces_no_events() {
    let app = app_with_short_grace().await;
    let (_, alice) = app.user("alice").await;
    let bob = registered(&app, "bob").await;
    let bob_token = app.token("bob").await;
    let mut watcher = app.ws(&alice).await;
    let first = app.ws(&bob_token).await;
    watcher.subscribe(&[bob]).await;

    first.close().await;
    // The server has recorded the close (the watcher's socket is the only one left open).
    app.eventually(GRACE / 2, || async {
        (app.metric("lastseen_open_connections").await == 1.0).then_some(())
    })
    .await;
    let second = app.ws(&bob_token).await;
    watcher.expect_silence(GRACE * 2).await;
    drop(second);
}

#[tokio::test]
async fn a_second_device_keeps_the_user_online_when_the_first_closes() {
    let app = app_with_short_grace().await;
    let (_, alice) = app.user("alice").await;
    let bob = registered(&app, "bob").await;
    let phone = app.ws(&app.token("bob").await).await;
    let laptop = app.ws(&app.token("bob").await).await;
    let mut watcher = app.ws(&alice).await;
    let snapshot = watcher.subscribe(&[bob]).await;
    assert_eq!(snapshot["users"][0]["online_status"], "online");

    phone.close().await;
    watcher.expect_silence(GRACE * 2).await;
    laptop.close().await;
    assert_eq!(
        presence(&watcher.next_json().await),
        (bob, "offline".into())
    );
}

#[tokio::test]
async fn typing_reaches_only_the_recipient_and_only_if_it_watches_the_sender() {
    let app = spawn_app().await;
    let (alice_id, alice) = app.user("alice").await;
    let (bob_id, bob) = app.user("bob").await;
    let (_, carol) = app.user("carol").await;
    let mut bob_socket = app.ws(&bob).await;
    let mut carol_socket = app.ws(&carol).await;
    let mut alice_socket = app.ws(&alice).await;
    bob_socket.subscribe(&[alice_id]).await;
    carol_socket.subscribe(&[alice_id]).await;

    alice_socket
        .send_json(json!({"type": "typing", "to": bob_id}))
        .await;
    let typing = bob_socket.next_json().await;
    assert_eq!(
        typing,
        json!({"type": "typing", "from": alice_id, "expires_in_ms": 5000})
    );
    carol_socket
        .expect_silence(Duration::from_millis(300))
        .await;

    // Bob stops watching Alice: her typing no longer reaches him.
    bob_socket
        .send_json(json!({"type": "unsubscribe", "user_ids": [alice_id]}))
        .await;
    // A socket handles its messages in order: once a later one is answered, the unsubscribe
    // has been applied.
    bob_socket.send_text("not json").await;
    assert_eq!(bob_socket.next_json().await["type"], "error");
    alice_socket
        .send_json(json!({"type": "typing", "to": bob_id}))
        .await;
    bob_socket.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn typing_is_rate_limited_per_socket() {
    let app = spawn_app_with(|s| s.typing_per_second = 2).await;
    let (_, alice) = app.user("alice").await;
    let bob = registered(&app, "bob").await;
    let mut socket = app.ws(&alice).await;
    for _ in 0..3 {
        socket.send_json(json!({"type": "typing", "to": bob})).await;
    }
    let frame = socket.next_json().await;
    assert_eq!(frame["code"], "throttled", "{frame}");
}

#[tokio::test]
async fn resuming_with_since_returns_only_users_that_changed() {
    let app = spawn_app().await;
    let (_, alice) = app.user("alice").await;
    let bob = registered(&app, "bob").await;
    let carol = registered(&app, "carol").await;
    let mut socket = app.ws(&alice).await;
    let snapshot = socket.subscribe(&[bob, carol]).await;
    let seq_of = |id: i64| {
        snapshot["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["id"] == id)
            .map(|u| u["seq"].as_u64().unwrap())
            .unwrap()
    };
    let since = json!({bob.to_string(): seq_of(bob), carol.to_string(): seq_of(carol)});
    socket.close().await;

    app.token("carol").await; // carol changes while alice is away
    let mut socket = app.ws(&alice).await;
    socket
        .send_json(json!({"type": "subscribe", "user_ids": [bob, carol], "since": since}))
        .await;
    let resumed = socket.next_json().await;
    let users = resumed["users"].as_array().unwrap();
    assert_eq!(users.len(), 1, "{resumed}");
    assert_eq!(users[0]["id"], carol);
    assert_eq!(users[0]["online_status"], "online");
}

#[tokio::test]
async fn logout_closes_the_sessions_sockets_with_4401() {
    let app = spawn_app().await;
    let (_, alice) = app.user("alice").await;
    let mut socket = app.ws(&alice).await;
    expect(app.post("/api/users/logout/", &alice).await, 200).await;
    assert_eq!(socket.close_code().await, Some(4401));
}

#[tokio::test]
async fn sockets_per_user_are_limited() {
    let app = spawn_app_with(|s| s.max_sockets_per_user = 2).await;
    let (_, alice) = app.user("alice").await;
    let _one = app.ws(&alice).await;
    let _two = app.ws(&alice).await;
    let mut three = app.ws(&alice).await;
    assert_eq!(three.close_code().await, Some(4429));
}

#[tokio::test]
async fn subscriptions_per_socket_are_limited() {
    let app = spawn_app_with(|s| s.max_subscriptions = 2).await;
    let (_, alice) = app.user("alice").await;
    let ids = [
        registered(&app, "u1").await,
        registered(&app, "u2").await,
        registered(&app, "u3").await,
    ];
    let mut socket = app.ws(&alice).await;
    socket
        .send_json(json!({"type": "subscribe", "user_ids": ids}))
        .await;
    assert_eq!(socket.next_json().await["code"], "limit_exceeded");
    assert_eq!(
        socket.subscribe(&ids[..2]).await["users"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn a_client_that_never_reads_is_bounded_and_closed() {
    let app = spawn_app_with(|s| {
        s.send_queue = 8;
        s.ping_interval = Duration::from_millis(500);
        s.max_subscriptions = 500;
    })
    .await;
    let (_, alice) = app.user("alice").await;
    let mut ids = Vec::new();
    for i in 0..500 {
        let name = Username::parse(&format!("watched{i}")).unwrap();
        ids.push(
            app.handle
                .store()
                .create_user(&name, "unused-hash", false)
                .await
                .unwrap()
                .id
                .0,
        );
    }
    let closed_before = slow_consumers_closed(&app).await;
    let mut socket = app.ws(&alice).await;
    // Every subscribe is answered by a ~50 kB snapshot that this client never reads: far more
    // than the kernel's socket buffers hold, so the server's writes stall and it must give up
    // on the socket instead of buffering without bound.
    let unsubscribe = json!({"type": "unsubscribe", "user_ids": ids}).to_string();
    let subscribe = json!({"type": "subscribe", "user_ids": ids}).to_string();
    for _ in 0..400 {
        // Once the server has closed the socket, sending fails: that is fine here.
        if !socket.try_send_text(&unsubscribe).await || !socket.try_send_text(&subscribe).await {
            break;
        }
    }
    app.eventually(Duration::from_secs(30), || async {
        (slow_consumers_closed(&app).await > closed_before).then_some(())
    })
    .await;
}

/// The server's count of connections closed as slow consumers (4008).
async fn slow_consumers_closed(app: &TestApp) -> f64 {
    app.metric("lastseen_slow_consumers_closed_total").await
}

#[tokio::test]
async fn shutdown_closes_sockets_with_going_away() {
    let app = spawn_app().await;
    let (_, alice) = app.user("alice").await;
    let mut socket = app.ws(&alice).await;
    app.stop().await;
    assert_eq!(socket.close_code().await, Some(1001));
}

/// Reads SSE events until `count` arrived; returns (event, data, id) triples.
async fn sse_events(
    response: &mut reqwest::Response,
    count: usize,
) -> Vec<(String, Value, String)> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    while events.len() < count {
        let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
            .await
            .expect("SSE event within 5 s")
            .unwrap()
            .expect("stream open");
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut name, mut data, mut id) = (String::new(), String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if !data.is_empty() {
                events.push((name, serde_json::from_str(&data).unwrap(), id));
            }
        }
    }
    events
}

#[tokio::test]
async fn sse_streams_the_same_snapshot_and_presence_events() {
    let app = spawn_app().await;
    let (_, alice) = app.user("alice").await;
    let bob = registered(&app, "bob").await;
    let mut stream = app
        .get(&format!("/api/presence/events?user_ids={bob}"), &alice)
        .await;
    assert_eq!(stream.status(), 200);
    assert!(
        stream.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let first = sse_events(&mut stream, 1).await;
    assert_eq!(first[0].0, "snapshot");
    assert_eq!(first[0].1["users"][0]["id"], bob);

    let bob_token = app.token("bob").await;
    let online = sse_events(&mut stream, 1).await;
    assert_eq!(online[0].0, "presence");
    assert_eq!(presence(&online[0].1), (bob, "online".into()));
    assert_eq!(online[0].1["username"], "bob", "{}", online[0].1);
    expect(app.post("/api/users/logout/", &bob_token).await, 200).await;
    let offline = sse_events(&mut stream, 1).await;
    assert_eq!(presence(&offline[0].1), (bob, "offline".into()));
}

#[tokio::test]
async fn sse_resumes_from_last_event_id_with_only_newer_changes() {
    let app = spawn_app().await;
    let (_, alice) = app.user("alice").await;
    let bob = registered(&app, "bob").await;
    let carol = registered(&app, "carol").await;
    let dave = registered(&app, "dave").await;
    let path = format!("/api/presence/events?user_ids={bob},{carol},{dave}");
    let mut stream = app.get(&path, &alice).await;
    sse_events(&mut stream, 1).await;
    app.token("bob").await;
    let bob_online = sse_events(&mut stream, 1).await.remove(0);
    // Further back than the resume margin (1 s) before the last event the client saw.
    let seq = bob_online.1["seq"].as_i64().unwrap();
    let at = chrono::DateTime::from_timestamp_micros(seq).unwrap();
    wall_clock_past(at, Duration::from_millis(1100)).await;
    app.token("dave").await;
    let last = sse_events(&mut stream, 1).await.remove(0);
    assert_eq!(last.0, "presence");
    drop(stream);

    app.token("carol").await; // while the client is away
    let mut resumed = app
        .client
        .get(app.url(&path))
        .bearer_auth(&alice)
        .header("last-event-id", last.2)
        .send()
        .await
        .unwrap();
    let snapshot = sse_events(&mut resumed, 1).await.remove(0);
    let ids: Vec<i64> = snapshot.1["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_i64().unwrap())
        .collect();
    assert!(
        ids.contains(&carol),
        "carol changed after the last event: {ids:?}"
    );
    assert!(
        !ids.contains(&bob),
        "bob's change was delivered long before: {ids:?}"
    );
}

#[tokio::test]
async fn sse_rejects_bad_user_ids_and_missing_auth() {
    let app = spawn_app().await;
    let (_, alice) = app.user("alice").await;
    let response = app.get("/api/presence/events?user_ids=1,abc", &alice).await;
    assert_eq!(response.status(), 400);
    let missing = expect_error(
        app.get("/api/presence/events", &alice).await,
        400,
        "invalid",
    )
    .await;
    assert_eq!(
        missing["detail"],
        "user_ids is required: the users to watch, comma-separated, e.g. \
         /api/presence/events?user_ids=1,2"
    );
    let response = app
        .client
        .get(app.url("/api/presence/events?user_ids=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn the_demo_page_and_client_module_are_served() {
    let app = spawn_app().await;
    let page = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/static/lastseen.js"));
    let js = app
        .client
        .get(app.url("/static/lastseen.js"))
        .send()
        .await
        .unwrap();
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(
        js.text()
            .await
            .unwrap()
            .contains("export class PresenceClient")
    );
}

#[tokio::test]
async fn a_silent_client_is_closed_after_missing_a_ping_and_goes_offline_after_the_grace() {
    let app = spawn_app_with(|s| {
        s.ping_interval = Duration::from_millis(300);
        s.disconnect_grace = Duration::from_millis(300);
    })
    .await;
    let (_, alice) = app.user("alice").await;
    let bob = registered(&app, "bob").await;
    let mut watcher = app.ws(&alice).await;
    watcher.subscribe(&[bob]).await;
    let bob_token = app.token("bob").await;
    assert_eq!(presence(&watcher.next_json().await), (bob, "online".into()));
    let mut dead = app.ws(&bob_token).await;

    // `dead` reads nothing, so it never answers the server's pings (as a vanished phone).
    let offline = watcher.next_json().await;
    assert_eq!(
        presence(&offline),
        (bob, "offline".into()),
        "worst case 2 pings + grace"
    );
    assert_eq!(dead.close_code().await, Some(4000));
}
