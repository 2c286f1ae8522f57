//! Node-wide caps on sockets/streams and on subscriptions: past them new ones are refused
//! (socket close 1013, SSE 503, a subscribe error frame) and a metric counts the refusals,
//! while what is already open keeps working.

use serde_json::json;

use crate::helpers::{expect_error, spawn_app_with};

#[tokio::test]
async fn past_the_node_connection_cap_sockets_close_1013_and_streams_get_503() {
    let app = spawn_app_with(|s| s.max_node_connections = 1).await;
    let (alice, alice_token) = app.user("alice").await;
    let (_, bob_token) = app.user("bob").await;
    let mut first = app.ws(&alice_token).await;

    let mut refused = app.ws(&bob_token).await;
    assert_eq!(refused.close_code().await, Some(1013));
    let events = app.url(&format!("/api/presence/events?user_ids={alice}"));
    let stream = app
        .client
        .get(&events)
        .bearer_auth(&bob_token)
        .send()
        .await
        .unwrap();
    let body = expect_error(stream, 503, "service_unavailable").await;
    assert!(body["detail"].is_string());

    assert_eq!(first.subscribe(&[alice]).await["type"], "snapshot");
    let refusals = app.metrics().await;
    assert!(
        refusals.contains(r#"lastseen_capacity_refusals_total{what="connections"} 2"#),
        "{refusals}"
    );
}

#[tokio::test]
async fn past_the_node_subscription_cap_new_subscriptions_are_refused() {
    let app = spawn_app_with(|s| s.max_node_subscriptions = 2).await;
    let (a, token) = app.user("alice").await;
    let (b, _) = app.user("bob").await;
    let (c, _) = app.user("carol").await;
    let mut first = app.ws(&token).await;
    first.subscribe(&[a, b]).await;

    let mut second = app.ws(&token).await;
    second
        .send_json(json!({"type": "subscribe", "user_ids": [c]}))
        .await;
    let refused = second.next_json().await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "service_unavailable", "{refused}");
    let events = app.url(&format!("/api/presence/events?user_ids={c}"));
    let stream = app
        .client
        .get(&events)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    expect_error(stream, 503, "service_unavailable").await;

    // Room comes back when a subscriber leaves.
    first.close().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        second
            .send_json(json!({"type": "subscribe", "user_ids": [c]}))
            .await;
        let answer = second.next_json().await;
        if answer["type"] == "snapshot" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{answer}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
