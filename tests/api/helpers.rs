//! `spawn_app()`: the real server on port 0 with its own SQLite file, plus typed helpers.

use std::time::Duration;

use lastseen::settings::Settings;
use lastseen::startup::App;
use lastseen::startup::Handle;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running server and a client for it. Dropping it stops the server.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub handle: Handle,
    pub settings: Settings,
    shutdown: CancellationToken,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    /// Keeps the database directory alive for the app's lifetime (and for restarts).
    pub dir: std::sync::Arc<TempDir>,
}

/// Settings for tests: port 0, a fresh database in `dir`, fast persistence.
pub fn test_settings(dir: &TempDir) -> Settings {
    Settings {
        bind: "127.0.0.1:0".parse().unwrap(),
        database_url: format!("sqlite://{}", dir.path().join("lastseen.db").display()),
        persist_interval: Duration::from_millis(50),
        ..Settings::default()
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let mut settings = test_settings(&dir);
    configure(&mut settings);
    start(settings, dir).await
}

/// Starts a server on `settings` (e.g. again on the same database after `stop`).
pub async fn start(settings: Settings, dir: std::sync::Arc<TempDir>) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        lastseen::telemetry::init(
            std::io::stderr,
            lastseen::settings::LogFormat::Text,
            lastseen::telemetry::stderr_wants_colours(),
        );
    }
    let app = App::build(settings.clone()).await.expect("app builds");
    let addr = app.local_addr().unwrap();
    let handle = app.handle();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(app.run(shutdown.clone()));
    TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::new(),
        handle,
        settings,
        shutdown,
        server: Some(server),
        dir,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Graceful shutdown (as on SIGTERM): waits until the final flush is done.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        response.text().await.unwrap()
    }

    /// The value of an unlabelled metric (0 when it was never recorded).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, token: &str) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// An authenticated request with a JSON body (`POST`, `PUT`, ...).
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: &Value,
    ) -> Response {
        self.client
            .request(method, self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, path: &str, token: &str) -> Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn register(&self, username: &str, password: &str) -> Response {
        self.post_json(
            "/api/users/register/",
            &json!({"username": username, "password": password}),
        )
        .await
    }

    pub async fn login(&self, username: &str, password: &str) -> Response {
        self.post_json(
            "/api/users/login/",
            &json!({"username": username, "password": password}),
        )
        .await
    }

    /// Registers `username` (password `password123`), logs in, returns (user id, token).
    pub async fn user(&self, username: &str) -> (i64, String) {
        let created: Value = expect(self.register(username, "password123").await, 201).await;
        let token = self.token(username).await;
        (created["id"].as_i64().unwrap(), token)
    }

    /// Logs `username` in again (a new session / device).
    pub async fn token(&self, username: &str) -> String {
        let body: Value = expect(self.login(username, "password123").await, 200).await;
        body["access"].as_str().unwrap().to_owned()
    }

    /// Creates an admin with `lastseen user create --admin --password-stdin` (the command's
    /// code, on the same database) and logs in.
    pub async fn admin(&self, username: &str) -> (i64, String) {
        let mut password = "password123\n".as_bytes();
        lastseen::commands::create_user(&self.settings, username, true, Some(&mut password))
            .await
            .unwrap();
        let token = self.token(username).await;
        let me: Value = expect(self.get("/api/users/me/", &token).await, 200).await;
        (me["id"].as_i64().unwrap(), token)
    }

    /// Polls `check` until it returns `Some`, failing after `within`.
    pub async fn eventually<T, F, Fut>(&self, within: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(value) = check().await {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition not met within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The admin view of one user's status.
    pub async fn status_of(&self, admin_token: &str, user_id: i64) -> Value {
        let path = format!("/api/users/admin/users/{user_id}/online-status/");
        expect(self.get(&path, admin_token).await, 200).await
    }
}

/// Waits until the wall clock has passed `at` (plus `after`): the next activity then gets a
/// later timestamp, and a deadline `after` past `at` has passed. Polls the clock instead of
/// sleeping a guessed amount.
pub async fn wall_clock_past(at: chrono::DateTime<chrono::Utc>, after: Duration) {
    let target = at + chrono::Duration::from_std(after).unwrap();
    while chrono::Utc::now() <= target {
        let left = (target - chrono::Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(left.max(Duration::from_micros(100))).await;
    }
}

/// A timestamp field of a response.
pub fn timestamp(value: &Value) -> chrono::DateTime<chrono::Utc> {
    value.as_str().unwrap().parse().unwrap()
}

/// Asserts the status and returns the JSON body.
pub async fn expect(response: Response, status: u16) -> Value {
    let actual = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(
        actual,
        StatusCode::from_u16(status).unwrap(),
        "body: {text}"
    );
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Asserts an error response: status, JSON shape `{detail, code}` and the code.
pub async fn expect_error(response: Response, status: u16, code: &str) -> Value {
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = expect(response, status).await;
    assert!(
        content_type.starts_with("application/json"),
        "content-type {content_type}"
    );
    assert_eq!(body["code"], code, "body: {body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "body: {body}"
    );
    assert_eq!(
        body.as_object().unwrap().len(),
        2,
        "only detail and code: {body}"
    );
    body
}

/// A WebSocket client for the presence protocol.
pub struct WsClient {
    pub stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// The `ready` message, once received.
    ready: Option<Value>,
}

impl TestApp {
    fn ws_url(&self) -> String {
        format!("{}/api/presence/ws", self.base.replacen("http", "ws", 1))
    }

    /// Opens a socket authenticated with an `Authorization` header.
    pub async fn ws(&self, token: &str) -> WsClient {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = self.ws_url().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (stream, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        WsClient {
            stream,
            ready: None,
        }
    }

    /// Opens a socket without a header (as browsers do); the caller sends `auth` itself.
    pub async fn ws_anonymous(&self) -> WsClient {
        let (stream, _) = tokio_tungstenite::connect_async(self.ws_url())
            .await
            .unwrap();
        WsClient {
            stream,
            ready: None,
        }
    }
}

/// What a socket received next.
#[derive(Debug)]
pub enum Frame {
    Json(Value),
    Closed(Option<u16>),
}

impl WsClient {
    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends without failing the test; `false` if the socket is gone or stuck for 2 s.
    pub async fn try_send_text(&mut self, text: &str) -> bool {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        let send = self.stream.send(Message::Text(text.into()));
        matches!(
            tokio::time::timeout(Duration::from_secs(2), send).await,
            Ok(Ok(()))
        )
    }

    pub async fn send_text(&mut self, text: &str) {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        self.stream.send(Message::Text(text.into())).await.unwrap();
    }

    /// A client over a socket opened some other way (e.g. with a cookie).
    pub fn over(
        stream: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> Self {
        Self {
            stream,
            ready: None,
        }
    }

    /// The `ready` message the socket opened with (fails if anything else comes first).
    pub async fn ready(&mut self) -> Value {
        if self.ready.is_none() {
            match self.next_frame(Duration::from_secs(5)).await {
                Some(Frame::Json(message)) if message["type"] == "ready" => {
                    self.ready = Some(message);
                }
                other => panic!("expected ready first, got {other:?}"),
            }
        }
        self.ready.clone().unwrap()
    }

    /// The next JSON message or close, within `within`; `None` on timeout. The `ready` a
    /// socket opens with is kept aside for [`WsClient::ready`], not returned.
    pub async fn next_within(&mut self, within: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await? {
                Frame::Json(message) if message["type"] == "ready" && self.ready.is_none() => {
                    self.ready = Some(message);
                }
                frame => return Some(frame),
            }
        }
    }

    async fn next_frame(&mut self, within: Duration) -> Option<Frame> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()?;
            match next {
                Some(Ok(Message::Text(text))) => {
                    return Some(Frame::Json(serde_json::from_str(&text).unwrap()));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Some(Frame::Closed(frame.map(|f| u16::from(f.code))));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Some(Frame::Closed(None)),
            }
        }
    }

    /// The next JSON message (fails on close or after 5 s).
    pub async fn next_json(&mut self) -> Value {
        match self.next_within(Duration::from_secs(5)).await {
            Some(Frame::Json(value)) => value,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Asserts nothing arrives within `within`.
    pub async fn expect_silence(&mut self, within: Duration) {
        if let Some(frame) = self.next_within(within).await {
            panic!("expected silence, got {frame:?}");
        }
    }

    /// The close code the server sends next (fails after 10 s).
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.next_within(Duration::from_secs(10)).await {
                Some(Frame::Closed(code)) => return code,
                Some(Frame::Json(_)) => continue,
                None => panic!("socket not closed within 10 s"),
            }
        }
    }

    /// Subscribes and returns the snapshot.
    pub async fn subscribe(&mut self, ids: &[i64]) -> Value {
        self.send_json(serde_json::json!({"type": "subscribe", "user_ids": ids}))
            .await;
        let snapshot = self.next_json().await;
        assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
        snapshot
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}
