use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::helpers::{expect, spawn_app, spawn_app_with, wall_clock_past};

fn ts(value: &serde_json::Value) -> DateTime<Utc> {
    value.as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn heartbeat_returns_the_seed_shape_and_refreshes_last_seen() {
    let app = spawn_app().await;
    let (_, token) = app.user("ahmad").await;
    let first = expect(app.post("/api/users/heartbeat/", &token).await, 200).await;
    assert_eq!(first["message"], "Heartbeat recorded");
    assert_eq!(first["online_status"], "online");
    assert_eq!(first["heartbeat_interval_ms"], 30_000);
    wall_clock_past(ts(&first["last_seen"]), Duration::ZERO).await;
    let second = expect(app.post("/api/users/heartbeat/", &token).await, 200).await;
    assert!(ts(&second["last_seen"]) > ts(&first["last_seen"]));
}

#[tokio::test]
async fn any_authenticated_request_counts_as_activity() {
    let app = spawn_app().await;
    let (id, token) = app.user("ahmad").await;
    let (_, admin) = app.admin("root").await;
    let before = ts(&app.status_of(&admin, id).await["last_seen"]);
    wall_clock_past(before, Duration::ZERO).await;
    expect(app.get("/api/users/me/", &token).await, 200).await;
    let after = ts(&app.status_of(&admin, id).await["last_seen"]);
    assert!(after > before, "GET /me moved last_seen");
}

#[tokio::test]
async fn silence_for_the_timeout_marks_the_user_offline_with_last_seen_at_the_last_activity() {
    let app = spawn_app_with(|s| s.inactivity_timeout = Duration::from_millis(400)).await;
    let (id, token) = app.user("ahmad").await;
    let (_, admin) = app.admin("root").await;
    let heartbeat = expect(app.post("/api/users/heartbeat/", &token).await, 200).await;
    let last_activity = ts(&heartbeat["last_seen"]);

    let status = app
        .eventually(Duration::from_secs(3), || async {
            let admin_view = app.status_of(&admin, id).await;
            (admin_view["online_status"] == "offline").then_some(admin_view)
        })
        .await;
    assert_eq!(status["is_online"], false);
    assert_eq!(
        ts(&status["last_seen"]),
        last_activity,
        "last_seen is not the sweep time"
    );
}

#[tokio::test]
async fn a_heartbeat_brings_an_expired_session_back_online() {
    let app = spawn_app_with(|s| s.inactivity_timeout = Duration::from_millis(200)).await;
    let (id, token) = app.user("ahmad").await;
    let (_, admin) = app.admin("root").await;
    app.eventually(Duration::from_secs(3), || async {
        (app.status_of(&admin, id).await["online_status"] == "offline").then_some(())
    })
    .await;
    expect(app.post("/api/users/heartbeat/", &token).await, 200).await;
    assert_eq!(app.status_of(&admin, id).await["online_status"], "online");
}

#[tokio::test]
async fn logout_keeps_the_user_online_while_another_device_is_live() {
    let app = spawn_app().await;
    let (id, phone) = app.user("ahmad").await;
    let laptop = app.token("ahmad").await;
    let (_, admin) = app.admin("root").await;

    let body = expect(app.post("/api/users/logout/", &phone).await, 200).await;
    assert_eq!(body["online_status"], "online");
    assert_eq!(app.status_of(&admin, id).await["online_status"], "online");
    expect(app.post("/api/users/heartbeat/", &laptop).await, 200).await;

    let body = expect(app.post("/api/users/logout/", &laptop).await, 200).await;
    assert_eq!(body["online_status"], "offline");
    assert_eq!(app.status_of(&admin, id).await["online_status"], "offline");
}

#[tokio::test]
async fn transitions_are_published_with_increasing_seq_and_heartbeats_publish_nothing() {
    let app = spawn_app().await;
    let mut events = app.handle.presence_events();
    let (id, token) = app.user("ahmad").await;
    for _ in 0..5 {
        expect(app.post("/api/users/heartbeat/", &token).await, 200).await;
    }
    expect(app.post("/api/users/logout/", &token).await, 200).await;
    app.token("ahmad").await;

    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        assert_eq!(event.user_id.0, id);
        seen.push((event.status.as_str(), event.seq));
    }
    let statuses: Vec<&str> = seen.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, ["online", "offline", "online"]);
    assert!(seen.windows(2).all(|w| w[0].1 < w[1].1), "{seen:?}");
}
