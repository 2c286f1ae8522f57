use crate::helpers::{expect, spawn_app};

#[tokio::test]
async fn health_and_readiness_answer() {
    let app = spawn_app().await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(expect(health, 200).await["status"], "ok");
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(expect(ready, 200).await["status"], "ok");
}

#[tokio::test]
async fn metrics_expose_presence_and_http_figures() {
    let app = spawn_app().await;
    let (_, token) = app.user("ahmad").await;
    expect(app.post("/api/users/heartbeat/", &token).await, 200).await;
    expect(app.post("/api/users/logout/", &token).await, 200).await;
    let text = app.metrics().await;
    for needle in [
        "lastseen_online_users",
        "lastseen_heartbeats_total",
        "lastseen_presence_transitions_total{to=\"online\"}",
        "lastseen_presence_transitions_total{to=\"offline\"}",
        "lastseen_http_requests_total{method=\"POST\",route=\"/api/users/heartbeat\",status=\"200\"}",
        "lastseen_http_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
}

#[tokio::test]
async fn the_openapi_document_covers_every_endpoint_and_error_shape() {
    let app = spawn_app().await;
    let doc = expect(
        app.client
            .get(app.url("/api/openapi.json"))
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/users/register/", "post"),
        ("/api/users/login/", "post"),
        ("/api/users/logout/", "post"),
        ("/api/users/heartbeat/", "post"),
        ("/api/users/me/", "get"),
        ("/api/users/admin/users/online/", "get"),
        ("/api/users/admin/users/{id}/online-status/", "get"),
        ("/api/users/{id}/presence/", "get"),
        ("/api/presence/query/", "post"),
        ("/api/users/me/contacts/", "get"),
        ("/api/users/me/contacts/", "post"),
        ("/api/users/me/contacts/{id}/", "delete"),
        ("/api/users/me/blocked/", "get"),
        ("/api/users/me/blocked/", "post"),
        ("/api/users/me/blocked/{id}/", "delete"),
        ("/api/users/me/privacy/", "get"),
        ("/api/users/me/privacy/", "put"),
        ("/api/users/lookup/", "get"),
        ("/api/presence/ws", "get"),
        ("/api/presence/events", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/api/openapi.json", "get"),
    ] {
        assert!(paths[path].get(method).is_some(), "{method} {path} missing");
    }
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    assert!(doc["components"]["schemas"]["UserPresence"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}
