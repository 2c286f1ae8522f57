//! Write-behind persistence and restarts, observed through the database and the API.

use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::SqlitePoolOptions;

use crate::helpers::{expect, spawn_app, spawn_app_with, start, timestamp, wall_clock_past};

async fn db_row(app: &crate::helpers::TestApp, username: &str) -> (String, Option<String>) {
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&app.settings.database_url)
        .await
        .unwrap();
    let row = sqlx::query("select online_status, last_seen from users where username = ?")
        .bind(username)
        .fetch_one(&pool)
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn the_users_table_answers_the_seeds_queries_within_the_persist_interval() {
    let app = spawn_app().await;
    let (_, token) = app.user("ahmad").await;
    app.eventually(Duration::from_secs(2), || async {
        (db_row(&app, "ahmad").await.0 == "online").then_some(())
    })
    .await;
    expect(app.post("/api/users/logout/", &token).await, 200).await;
    let (status, last_seen) = app
        .eventually(Duration::from_secs(2), || async {
            let row = db_row(&app, "ahmad").await;
            (row.0 == "offline").then_some(row)
        })
        .await;
    assert_eq!(status, "offline");
    assert!(last_seen.unwrap().ends_with('Z'));
}

#[tokio::test]
async fn heartbeats_do_not_write_the_database_each_time() {
    let app = spawn_app_with(|s| s.persist_interval = Duration::from_secs(3600)).await;
    let (_, token) = app.user("ahmad").await;
    for _ in 0..20 {
        expect(app.post("/api/users/heartbeat/", &token).await, 200).await;
    }
    // With an hour-long interval nothing has been written yet.
    assert_eq!(db_row(&app, "ahmad").await, ("offline".to_owned(), None));
}

#[tokio::test]
async fn a_logout_is_in_the_database_when_it_is_answered() {
    // No flush during the test: the logout itself writes the user offline, as the seed's does.
    let app = spawn_app_with(|s| s.persist_interval = Duration::from_secs(3600)).await;
    let (_, token) = app.user("ahmad").await;
    expect(app.post("/api/users/heartbeat/", &token).await, 200).await;
    expect(app.post("/api/users/logout/", &token).await, 200).await;
    let (status, last_seen) = db_row(&app, "ahmad").await;
    assert_eq!(status, "offline");
    assert!(last_seen.is_some_and(|at| at.ends_with('Z')));
}

#[tokio::test]
async fn graceful_shutdown_flushes_and_a_restart_restores_sessions_and_presence() {
    let app = spawn_app_with(|s| s.persist_interval = Duration::from_secs(3600)).await;
    let (id, token) = app.user("ahmad").await;
    let before = expect(app.post("/api/users/heartbeat/", &token).await, 200).await;
    let (settings, dir) = (app.settings.clone(), app.dir.clone());
    app.stop().await;

    let app = start(settings, dir).await;
    let (_, admin) = app.admin("root").await;
    let status = app.status_of(&admin, id).await;
    assert_eq!(
        status["online_status"], "online",
        "still within the timeout"
    );
    assert_eq!(
        status["last_seen"], before["last_seen"],
        "last activity survived"
    );
    expect(app.post("/api/users/heartbeat/", &token).await, 200).await;
}

#[tokio::test]
async fn users_whose_deadline_passed_during_downtime_restart_offline_with_last_seen_kept() {
    let app = spawn_app_with(|s| s.inactivity_timeout = Duration::from_millis(500)).await;
    let (id, token) = app.user("ahmad").await;
    let before = expect(app.post("/api/users/heartbeat/", &token).await, 200).await;
    let (settings, dir) = (app.settings.clone(), app.dir.clone());
    app.stop().await;

    // Restart after the session's deadline (last activity + the 500 ms timeout).
    wall_clock_past(timestamp(&before["last_seen"]), Duration::from_millis(500)).await;
    let app = start(settings, dir).await;
    let (_, admin) = app.admin("root").await;
    let status = app.status_of(&admin, id).await;
    assert_eq!(status["online_status"], "offline");
    assert_eq!(status["last_seen"], before["last_seen"]);
    assert_eq!(db_row(&app, "ahmad").await.0, "offline");
}

#[tokio::test]
async fn a_user_whose_socket_grace_ended_before_a_restart_stays_offline() {
    let app = spawn_app_with(|s| s.disconnect_grace = Duration::from_millis(200)).await;
    let (id, token) = app.user("ahmad").await;
    let (_, admin) = app.admin("root").await;
    app.ws(&token).await.close().await;
    app.eventually(Duration::from_secs(3), || async {
        (app.status_of(&admin, id).await["online_status"] == "offline").then_some(())
    })
    .await;
    let (settings, dir) = (app.settings.clone(), app.dir.clone());
    app.stop().await;

    let app = start(settings, dir).await;
    let admin = app.token("root").await;
    assert_eq!(app.status_of(&admin, id).await["online_status"], "offline");
    assert_eq!(db_row(&app, "ahmad").await.0, "offline");
}

#[tokio::test]
async fn sockets_open_at_shutdown_get_their_grace_after_the_restart() {
    let app = spawn_app_with(|s| s.disconnect_grace = Duration::from_millis(800)).await;
    let (id, token) = app.user("ahmad").await;
    let (_, admin) = app.admin("root").await;
    let socket = app.ws(&token).await;
    let (settings, dir) = (app.settings.clone(), app.dir.clone());
    app.stop().await;
    let stopped = chrono::Utc::now();
    drop(socket);

    // The app reconnects within the grace: it never looks offline.
    let app = start(settings, dir).await;
    let admin_token = app.token("root").await;
    assert_eq!(
        app.status_of(&admin_token, id).await["online_status"],
        "online"
    );
    let _again = app.ws(&token).await;
    // Past the moment the grace that began at shutdown would have ended.
    wall_clock_past(stopped, Duration::from_millis(900)).await;
    assert_eq!(
        app.status_of(&admin_token, id).await["online_status"],
        "online"
    );
    let _ = admin;
}
