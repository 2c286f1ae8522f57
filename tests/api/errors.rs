//! Every error a client can cause gets a 4xx with `{"detail", "code"}`, never a 5xx.

use crate::helpers::{expect, expect_error, spawn_app, spawn_app_with};

#[tokio::test]
async fn malformed_json_is_400_parse_error() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/api/users/login/"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    expect_error(response, 400, "parse_error").await;
}

#[tokio::test]
async fn wrong_types_missing_and_unknown_fields_are_400_invalid() {
    let app = spawn_app().await;
    for body in [
        serde_json::json!({"username": 5, "password": "password123"}),
        serde_json::json!({"username": "ahmad"}),
        serde_json::json!({"username": "a", "password": "password123", "extra": 1}),
        serde_json::json!([1, 2]),
    ] {
        expect_error(
            app.post_json("/api/users/register/", &body).await,
            400,
            "invalid",
        )
        .await;
    }
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/api/users/login/"))
        .header("content-type", "text/plain")
        .body("username=ahmad")
        .send()
        .await
        .unwrap();
    expect_error(response, 415, "unsupported_media_type").await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let app = spawn_app_with(|s| s.max_body_bytes = 1024).await;
    let big = serde_json::json!({"username": "a".repeat(4096), "password": "password123"});
    expect_error(
        app.post_json("/api/users/register/", &big).await,
        413,
        "payload_too_large",
    )
    .await;
}

#[tokio::test]
async fn missing_malformed_and_unknown_tokens_are_401() {
    let app = spawn_app().await;
    let anonymous = app
        .client
        .post(app.url("/api/users/heartbeat/"))
        .send()
        .await
        .unwrap();
    let body = expect_error(anonymous, 401, "not_authenticated").await;
    assert!(body["detail"].as_str().unwrap().contains("not provided"));
    for header in ["Bearer", "Basic abc", "Bearer not-a-token", "Token abc"] {
        let response = app
            .client
            .post(app.url("/api/users/heartbeat/"))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        expect_error(response, 401, "authentication_failed").await;
    }
}

#[tokio::test]
async fn unknown_routes_are_404_json_and_wrong_methods_405_json() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/api/nope/")).send().await.unwrap();
    expect_error(response, 404, "not_found").await;
    let response = app
        .client
        .get(app.url("/api/users/heartbeat/"))
        .send()
        .await
        .unwrap();
    expect_error(response, 405, "method_not_allowed").await;
    let response = app
        .client
        .delete(app.url("/api/users/login"))
        .send()
        .await
        .unwrap();
    expect_error(response, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn every_path_works_with_and_without_its_trailing_slash() {
    let app = spawn_app().await;
    let (_, token) = app.user("ahmad").await;
    for path in ["/api/users/heartbeat", "/api/users/heartbeat/"] {
        expect(app.post(path, &token).await, 200).await;
    }
    for path in ["/api/users/me", "/api/users/me/"] {
        expect(app.get(path, &token).await, 200).await;
    }
}
