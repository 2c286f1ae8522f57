use serde_json::Value;

use crate::helpers::{expect, expect_error, spawn_app};

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

#[tokio::test]
async fn the_openapi_document_declares_query_parameters_and_body_errors_as_served() {
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
    let paths = &doc["paths"];
    let parameter = |path: &str, name: &str| -> Value {
        let parameters = paths[path]["get"]["parameters"].as_array().unwrap();
        let found = parameters.iter().find(|p| p["name"] == name);
        found
            .unwrap_or_else(|| panic!("{path} has no {name}"))
            .clone()
    };
    for (path, name, required) in [
        ("/api/users/admin/users/online/", "limit", false),
        ("/api/users/admin/users/online/", "after", false),
        ("/api/users/lookup/", "username", true),
        ("/api/presence/events", "user_ids", true),
    ] {
        let declared = parameter(path, name);
        assert_eq!(declared["in"], "query", "{path} {name}");
        assert_eq!(declared["required"], required, "{path} {name}");
    }
    assert_eq!(
        parameter("/api/users/lookup/", "username")["schema"]["minLength"],
        1
    );
    for path in ["/api/users/me/contacts/", "/api/users/me/blocked/"] {
        let responses = &paths[path]["post"]["responses"];
        for status in ["413", "415"] {
            assert!(responses[status].is_object(), "POST {path} {status}");
        }
    }
    let register = &doc["components"]["schemas"]["RegisterRequest"]["properties"];
    assert_eq!(register["username"]["minLength"], 1);
    assert_eq!(register["username"]["maxLength"], 150);
    assert_eq!(register["password"]["minLength"], 8);

    // What the document declares is what is served: a missing optional parameter is fine,
    // a missing required one is a 400.
    let (_, admin) = app.admin("root").await;
    expect(app.get("/api/users/admin/users/online/", &admin).await, 200).await;
    let missing = app.get("/api/users/lookup/", &admin).await;
    assert_eq!(missing.status(), 400);
}

#[tokio::test]
async fn path_ids_are_parsed_strictly_so_only_the_canonical_spelling_names_a_user() {
    let app = spawn_app().await;
    let (_, admin) = app.admin("root").await;
    let (id, _) = app.user("ahmad").await;
    let path = |id: &str| format!("/api/users/admin/users/{id}/online-status/");
    expect(app.get(&path(&id.to_string()), &admin).await, 200).await;
    for spelling in [
        format!("+{id}"),
        format!("0{id}"),
        format!("{id}%20"),
        format!("%2B{id}"),
    ] {
        expect_error(app.get(&path(&spelling), &admin).await, 404, "not_found").await;
    }
}
