//! Every error a client can cause gets a 4xx with `{"detail", "code"}`, never a 5xx. These
//! drive the router directly (`oneshot`), without a socket: the status codes and bodies come
//! from the routes and middleware alone.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

/// What the router answered: status, headers and the JSON body (null if none).
struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Answer {
    /// Asserts an error of `status` with the JSON shape `{detail, code}` and this `code`.
    fn error(&self, status: u16, code: &str) -> &Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        let content_type = self.headers[header::CONTENT_TYPE].to_str().unwrap();
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
        assert_eq!(self.body["code"], code, "body: {}", self.body);
        assert!(self.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
        assert_eq!(
            self.body.as_object().unwrap().len(),
            2,
            "only detail and code"
        );
        &self.body
    }
}

/// Sends one request through the app's router.
async fn call(app: &TestApp, request: Request<Body>) -> Answer {
    let response = app.handle.service().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

fn request(method: &str, path: &str) -> axum::http::request::Builder {
    Request::builder().method(method).uri(path)
}

fn json_request(method: &str, path: &str, body: &Value) -> Request<Body> {
    request(method, path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn malformed_json_is_400_parse_error() {
    let app = spawn_app().await;
    let bad = request("POST", "/api/users/login/")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    call(&app, bad).await.error(400, "parse_error");
}

#[tokio::test]
async fn wrong_types_missing_and_unknown_fields_are_400_invalid() {
    let app = spawn_app().await;
    for body in [
        json!({"username": 5, "password": "password123"}),
        json!({"username": "ahmad"}),
        json!({"username": "a", "password": "password123", "extra": 1}),
        json!([1, 2]),
    ] {
        let answer = call(&app, json_request("POST", "/api/users/register/", &body)).await;
        answer.error(400, "invalid");
    }
}

#[tokio::test]
async fn a_body_that_is_not_json_is_415() {
    let app = spawn_app().await;
    let form = request("POST", "/api/users/login/")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from("username=ahmad"))
        .unwrap();
    call(&app, form).await.error(415, "unsupported_media_type");
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let app = spawn_app_with(|s| s.max_body_bytes = 1024).await;
    let big = json!({"username": "a".repeat(4096), "password": "password123"});
    let answer = call(&app, json_request("POST", "/api/users/register/", &big)).await;
    answer.error(413, "payload_too_large");
}

#[tokio::test]
async fn missing_malformed_and_unknown_tokens_are_401() {
    let app = spawn_app().await;
    let anonymous = call(
        &app,
        request("POST", "/api/users/heartbeat/")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let body = anonymous.error(401, "not_authenticated");
    assert!(body["detail"].as_str().unwrap().contains("not provided"));
    assert_eq!(anonymous.headers[header::WWW_AUTHENTICATE], "Bearer");
    for value in ["Bearer", "Basic abc", "Bearer not-a-token", "Token abc"] {
        let with_header = request("POST", "/api/users/heartbeat/")
            .header(header::AUTHORIZATION, value)
            .body(Body::empty())
            .unwrap();
        call(&app, with_header)
            .await
            .error(401, "authentication_failed");
    }
}

#[tokio::test]
async fn unknown_routes_are_404_json_and_wrong_methods_405_json() {
    let app = spawn_app().await;
    let empty = |method, path| request(method, path).body(Body::empty()).unwrap();
    call(&app, empty("GET", "/api/nope/"))
        .await
        .error(404, "not_found");
    call(&app, empty("GET", "/api/users/heartbeat/"))
        .await
        .error(405, "method_not_allowed");
    call(&app, empty("DELETE", "/api/users/login"))
        .await
        .error(405, "method_not_allowed");
}

#[tokio::test]
async fn every_path_works_with_and_without_its_trailing_slash() {
    let app = spawn_app().await;
    let (_, token) = app.user("ahmad").await;
    let bearer = format!("Bearer {token}");
    for (method, path) in [
        ("POST", "/api/users/heartbeat"),
        ("POST", "/api/users/heartbeat/"),
        ("GET", "/api/users/me"),
        ("GET", "/api/users/me/"),
    ] {
        let authorised = request(method, path)
            .header(header::AUTHORIZATION, &bearer)
            .body(Body::empty())
            .unwrap();
        let answer = call(&app, authorised).await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{method} {path}: {}",
            answer.body
        );
    }
}

#[tokio::test]
async fn a_request_still_running_after_request_timeout_is_408_json() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(|s| s.request_timeout = std::time::Duration::from_millis(200)).await;
    let address = app.base.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    // The body is announced but never sent in full: the handler waits on it past the timeout.
    let head = "POST /api/users/login/ HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
                content-length: 40\r\n\r\n{\"username\": ";
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 1024];
    let body = loop {
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buffer))
                .await
                .expect("an answer within 10 s")
                .unwrap();
        assert!(read > 0, "closed without an answer: {answer:?}");
        answer.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((_, body)) = text.split_once("\r\n\r\n")
            && let Ok(body) = serde_json::from_str::<Value>(body)
        {
            break (
                text.lines().next().unwrap().to_owned(),
                text.to_lowercase(),
                body,
            );
        }
    };
    let (status_line, lowercase, body) = body;
    assert!(started.elapsed() >= std::time::Duration::from_millis(150));
    assert!(status_line.starts_with("HTTP/1.1 408"), "{status_line}");
    assert!(
        lowercase.contains("content-type: application/json"),
        "{lowercase}"
    );
    assert_eq!(body["code"], "request_timeout", "{body}");
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

#[tokio::test]
async fn routes_with_path_parameters_and_the_root_work_with_and_without_a_trailing_slash() {
    let app = spawn_app().await;
    let (id, token) = app.user("ahmad").await;
    let bearer = format!("Bearer {token}");
    for path in [
        format!("/api/users/{id}/presence"),
        format!("/api/users/{id}/presence/"),
        "/api/users/me/sessions".to_owned(),
        "/api/users/me/sessions/".to_owned(),
    ] {
        let authorised = request("GET", &path)
            .header(header::AUTHORIZATION, &bearer)
            .body(Body::empty())
            .unwrap();
        let answer = call(&app, authorised).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
    }
    let root = call(&app, request("GET", "/").body(Body::empty()).unwrap()).await;
    assert_eq!(root.status, StatusCode::OK);
    call(
        &app,
        request("GET", "/api/users/heartbeat/nope/")
            .body(Body::empty())
            .unwrap(),
    )
    .await
    .error(404, "not_found");
}
