//! The admin dashboard's endpoints: the page itself, the online chart, user search, a user's
//! page, and ending sessions.

use std::time::Duration;

use reqwest::header::CONTENT_TYPE;
use serde_json::Value;

use crate::helpers::{TestApp, expect, expect_error, spawn_app, start};

async fn get_json(app: &TestApp, path: &str, token: &str) -> Value {
    expect(app.get(path, token).await, 200).await
}

#[tokio::test]
async fn the_page_and_its_script_are_served() {
    let app = spawn_app().await;
    for (path, kind) in [
        ("/admin/", "text/html"),
        ("/static/admin.js", "text/javascript"),
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let content_type = response.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        let body = response.text().await.unwrap();
        assert!(
            body.contains("/api/admin/events") || body.contains("admin.js"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn only_admins_reach_the_dashboard_endpoints() {
    let app = spawn_app().await;
    let (alice, token) = app.user("alice").await;
    let paths = [
        "/api/admin/stats/online/".to_owned(),
        "/api/admin/users/?search=a".to_owned(),
        format!("/api/admin/users/{alice}/"),
    ];
    for path in &paths {
        expect_error(app.get(path, &token).await, 403, "permission_denied").await;
        let anonymous = app.client.get(app.url(path)).send().await.unwrap();
        expect_error(anonymous, 401, "not_authenticated").await;
    }
    let path = format!("/api/admin/users/{alice}/sessions/");
    expect_error(app.delete(&path, &token).await, 403, "permission_denied").await;
    // Still logged in: the refusal ended nothing.
    expect(app.get("/api/users/me/", &token).await, 200).await;
}

#[tokio::test]
async fn search_finds_users_by_any_part_of_their_name_in_any_case_with_paging() {
    let app = spawn_app().await;
    let (_, admin) = app.admin("root").await;
    let (alice, _) = app.user("alice").await;
    app.register("Malika", "password123").await;
    app.register("bob", "password123").await;
    app.register("under_score", "password123").await;

    let found = get_json(&app, "/api/admin/users/?search=ALI", &admin).await;
    let names: Vec<&str> = found["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "Malika"]);
    assert_eq!(found["users"][0]["id"], alice);
    assert_eq!(found["users"][0]["online_status"], "online");
    assert_eq!(found["users"][1]["online_status"], "offline");
    assert_eq!(found["next_after"], Value::Null);

    let first = get_json(&app, "/api/admin/users/?search=ali&limit=1", &admin).await;
    assert_eq!(first["users"][0]["username"], "alice");
    let after = first["next_after"].as_i64().unwrap();
    let second = get_json(
        &app,
        &format!("/api/admin/users/?search=ali&limit=1&after={after}"),
        &admin,
    )
    .await;
    assert_eq!(second["users"][0]["username"], "Malika");

    // Wildcards are literal text.
    let literal = get_json(&app, "/api/admin/users/?search=_", &admin).await;
    assert_eq!(literal["users"].as_array().unwrap().len(), 1);
    let percent = get_json(&app, "/api/admin/users/?search=%25", &admin).await;
    assert_eq!(percent["users"].as_array().unwrap().len(), 0);
    let everyone = get_json(&app, "/api/admin/users/", &admin).await;
    assert_eq!(everyone["users"].as_array().unwrap().len(), 5);

    let bad = app.get("/api/admin/users/?limit=0", &admin).await;
    expect_error(bad, 400, "invalid").await;
}

#[tokio::test]
async fn a_users_page_lists_sessions_and_transitions_and_ends_them() {
    let app = spawn_app().await;
    let (_, admin) = app.admin("root").await;
    let (alice, phone) = app.user("alice").await;
    let laptop = app.token("alice").await;

    let detail = get_json(&app, &format!("/api/admin/users/{alice}/"), &admin).await;
    assert_eq!(detail["user"]["username"], "alice");
    assert_eq!(detail["user"]["online_status"], "online");
    assert_eq!(detail["is_admin"], false);
    let sessions = detail["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    assert!(
        sessions
            .iter()
            .all(|s| s["live"] == true && s["current"] == false)
    );
    let transitions = app
        .eventually(Duration::from_secs(5), || async {
            let detail = get_json(&app, &format!("/api/admin/users/{alice}/"), &admin).await;
            let transitions = detail["transitions"].as_array().unwrap().clone();
            (!transitions.is_empty()).then_some(transitions)
        })
        .await;
    assert_eq!(transitions[0]["online_status"], "online");
    assert_eq!(transitions[0]["user_id"], alice);

    // End the newest session (the laptop's): its token stops working, the phone's does not.
    let newest = sessions[0]["id"].as_i64().unwrap();
    let path = format!("/api/admin/users/{alice}/sessions/{newest}/");
    assert_eq!(app.delete(&path, &admin).await.status(), 204);
    expect_error(
        app.get("/api/users/me/", &laptop).await,
        401,
        "authentication_failed",
    )
    .await;
    expect(app.get("/api/users/me/", &phone).await, 200).await;
    expect_error(app.delete(&path, &admin).await, 404, "not_found").await;

    let all = format!("/api/admin/users/{alice}/sessions/");
    assert_eq!(app.delete(&all, &admin).await.status(), 204);
    expect_error(
        app.get("/api/users/me/", &phone).await,
        401,
        "authentication_failed",
    )
    .await;
    let detail = get_json(&app, &format!("/api/admin/users/{alice}/"), &admin).await;
    assert_eq!(detail["user"]["online_status"], "offline");
    assert_eq!(detail["sessions"].as_array().unwrap().len(), 0);
    let status = app.status_of(&admin, alice).await;
    assert_eq!(status["online_status"], "offline");

    expect_error(
        app.get("/api/admin/users/999999/", &admin).await,
        404,
        "not_found",
    )
    .await;
    let missing = app
        .delete("/api/admin/users/999999/sessions/", &admin)
        .await;
    expect_error(missing, 404, "not_found").await;
}

#[tokio::test]
async fn the_chart_has_a_sample_per_minute_and_keeps_them_across_restarts() {
    let app = spawn_app().await;
    let (_, admin) = app.admin("root").await;
    app.user("alice").await;
    let stats = get_json(&app, "/api/admin/stats/online/", &admin).await;
    assert_eq!(stats["interval_seconds"], 60);
    assert_eq!(stats["online_count"], 2);
    // The server samples when it starts, then every minute.
    let samples = stats["samples"].as_array().unwrap();
    assert!(!samples.is_empty(), "{stats}");

    let minute = chrono::Utc::now().timestamp() / 60;
    app.handle
        .store()
        .record_online_sample(minute - 5, 42)
        .await
        .unwrap();
    app.handle
        .store()
        .record_online_sample(minute - 3 * 24 * 60, 99)
        .await
        .unwrap();
    let (settings, dir) = (app.settings.clone(), app.dir.clone());
    app.stop().await;
    let app = start(settings, dir).await;
    let admin = app.token("root").await;
    let stats = get_json(&app, "/api/admin/stats/online/", &admin).await;
    let samples = stats["samples"].as_array().unwrap();
    let at = chrono::DateTime::from_timestamp((minute - 5) * 60, 0).unwrap();
    let kept = samples
        .iter()
        .find(|s| crate::helpers::timestamp(&s["at"]) == at)
        .unwrap_or_else(|| panic!("the sample of 5 minutes ago survives a restart: {stats}"));
    assert_eq!(kept["online"], 42);
    assert!(
        samples.iter().all(|s| s["online"] != 99),
        "samples older than 24 h are not shown: {stats}"
    );
}
