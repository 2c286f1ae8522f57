//! Integrations: webhooks against a local receiver, and the admin event stream.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestApp, expect, spawn_app_with, start};

const SECRET: &str = "whsec_test_secret";

/// A webhook endpoint on a free port: records what it is sent, answers with `status`.
struct Receiver {
    url: String,
    port: u16,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

#[derive(Default)]
struct Shared {
    /// Headers, body and the status answered.
    requests: Mutex<Vec<(HeaderMap, String, u16)>>,
    status: AtomicU16,
}

async fn record(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let status = shared.status.load(Ordering::SeqCst);
    let text = String::from_utf8(body.to_vec()).unwrap();
    shared
        .requests
        .lock()
        .unwrap()
        .push((headers, text, status));
    StatusCode::from_u16(status).unwrap()
}

impl Receiver {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        Self::serve(listener, Arc::new(Shared::default()), port)
    }

    fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, port: u16) -> Self {
        shared
            .status
            .compare_exchange(0, 200, Ordering::SeqCst, Ordering::SeqCst)
            .ok();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(record))
            .with_state(shared.clone());
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
                .unwrap();
        });
        Self {
            url: format!("http://127.0.0.1:{port}/hook"),
            port,
            shared,
            stop,
        }
    }

    fn answer(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    /// Every request so far.
    fn requests(&self) -> Vec<(HeaderMap, String, u16)> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The events of every acknowledged request, in the order received.
    fn delivered(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|(_, _, status)| *status == 200)
            .flat_map(|(_, body, _)| {
                let body: Value = serde_json::from_str(&body).unwrap();
                body["events"].as_array().unwrap().clone()
            })
            .collect()
    }

    /// Stops answering (connections are refused); `restart` listens on the same port again.
    async fn go_down(self) -> (u16, Arc<Shared>) {
        self.stop.cancel();
        tokio::time::sleep(Duration::from_millis(50)).await;
        (self.port, self.shared)
    }

    async fn restart(port: u16, shared: Arc<Shared>) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        Self::serve(listener, shared, port)
    }
}

fn verify(headers: &HeaderMap, body: &str) {
    let timestamp = headers["x-lastseen-timestamp"].to_str().unwrap();
    let signature = headers["x-lastseen-signature"].to_str().unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{body}").as_bytes());
    let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(signature, expected, "signature over {timestamp}.{body}");
    let sent: i64 = timestamp.parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - sent).abs() < 60);
    assert_eq!(headers["content-type"], "application/json");
}

async fn app_with_webhook(url: &str, delay: Duration) -> TestApp {
    let url = url.to_owned();
    spawn_app_with(move |s| {
        s.webhook_urls = url;
        s.webhook_secret = Some(SECRET.to_owned());
        s.webhook_offline_delay = delay;
    })
    .await
}

/// The `(user_id, online_status)` of delivered events of `user`.
fn statuses(events: &[Value], user: i64) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["user_id"] == user)
        .map(|e| e["online_status"].as_str().unwrap().to_owned())
        .collect()
}

async fn wait_for<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn webhooks_are_signed_batched_and_ordered_per_user() {
    let receiver = Receiver::start().await;
    let app = app_with_webhook(&receiver.url, Duration::ZERO).await;
    let (ahmad, ahmad_token) = app.user("ahmad").await;
    let (sara, sara_token) = app.user("sara").await;
    expect(app.post("/api/users/logout/", &ahmad_token).await, 200).await;
    let body = json!({"mode": "dnd", "text": "Busy", "emoji": "🔥"});
    let response = app
        .send_json(
            reqwest::Method::PUT,
            "/api/users/me/status/",
            &sara_token,
            &body,
        )
        .await;
    expect(response, 200).await;
    expect(app.post("/api/users/logout/", &sara_token).await, 200).await;

    let events = wait_for("five changes", Duration::from_secs(10), || {
        let events = receiver.delivered();
        (events.len() >= 5).then_some(events)
    })
    .await;
    for (headers, body, _) in receiver.requests() {
        verify(&headers, &body);
    }
    assert_eq!(statuses(&events, ahmad), ["online", "offline"]);
    assert_eq!(statuses(&events, sara), ["online", "online", "offline"]);
    let dnd = events
        .iter()
        .find(|e| e["user_id"] == sara && e["availability"] == "dnd")
        .expect("the dnd change");
    assert_eq!(
        (&dnd["status_text"], &dnd["status_emoji"]),
        (&json!("Busy"), &json!("🔥"))
    );
    assert_eq!(dnd["platforms"], json!(["web"]));
    for user in [ahmad, sara] {
        let seqs: Vec<u64> = events
            .iter()
            .filter(|e| e["user_id"] == user)
            .map(|e| e["seq"].as_u64().unwrap())
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "ordered by seq: {seqs:?}"
        );
    }
    let mut ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids[0], format!("{ahmad}-{}", events[0]["seq"]));
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "each change once");
    assert!(
        app.metric("lastseen_webhook_delivered_total{endpoint=\"0\"}")
            .await
            >= 5.0
    );
}

#[tokio::test]
async fn a_failing_receiver_gets_everything_in_order_once_it_recovers() {
    let receiver = Receiver::start().await;
    receiver.answer(500);
    let app = app_with_webhook(&receiver.url, Duration::ZERO).await;
    let (ahmad, token) = app.user("ahmad").await;
    expect(app.post("/api/users/logout/", &token).await, 200).await;
    wait_for("a refused delivery", Duration::from_secs(10), || {
        (!receiver.requests().is_empty()).then_some(())
    })
    .await;
    // Down altogether for a while: connections refused.
    let (port, shared) = receiver.go_down().await;
    let token = app.token("ahmad").await;
    expect(app.post("/api/users/logout/", &token).await, 200).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    shared.requests.lock().unwrap().clear();
    let receiver = Receiver::restart(port, shared).await;
    receiver.answer(200);

    let events = wait_for("all four changes", Duration::from_secs(30), || {
        let events = receiver.delivered();
        (events.len() >= 4).then_some(events)
    })
    .await;
    assert_eq!(
        statuses(&events, ahmad),
        ["online", "offline", "online", "offline"]
    );
    assert!(
        app.metric("lastseen_webhook_retries_total{endpoint=\"0\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn changes_queued_before_a_restart_are_delivered_after_it() {
    let receiver = Receiver::start().await;
    receiver.answer(503);
    let app = app_with_webhook(&receiver.url, Duration::ZERO).await;
    let (ahmad, token) = app.user("ahmad").await;
    expect(app.post("/api/users/logout/", &token).await, 200).await;
    wait_for("a refused delivery", Duration::from_secs(10), || {
        (!receiver.requests().is_empty()).then_some(())
    })
    .await;
    let (settings, dir) = (app.settings.clone(), app.dir.clone());
    app.stop().await;
    receiver.shared.requests.lock().unwrap().clear();
    receiver.answer(200);

    let _app = start(settings, dir).await;
    let events = wait_for(
        "both changes after the restart",
        Duration::from_secs(20),
        || {
            let events = receiver.delivered();
            (events.len() >= 2).then_some(events)
        },
    )
    .await;
    assert_eq!(statuses(&events, ahmad), ["online", "offline"]);
}

#[tokio::test]
async fn a_quick_return_within_the_offline_delay_produces_neither_change() {
    let receiver = Receiver::start().await;
    let app = app_with_webhook(&receiver.url, Duration::from_secs(1)).await;
    let (ahmad, token) = app.user("ahmad").await;
    wait_for("the first online", Duration::from_secs(10), || {
        (statuses(&receiver.delivered(), ahmad).len() == 1).then_some(())
    })
    .await;
    // Out and back in at once: nothing to tell.
    expect(app.post("/api/users/logout/", &token).await, 200).await;
    let token = app.token("ahmad").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(statuses(&receiver.delivered(), ahmad), ["online"]);

    // Out for good: the offline change comes after the delay.
    let out = tokio::time::Instant::now();
    expect(app.post("/api/users/logout/", &token).await, 200).await;
    wait_for("the offline change", Duration::from_secs(10), || {
        (statuses(&receiver.delivered(), ahmad) == ["online", "offline"]).then_some(())
    })
    .await;
    assert!(
        out.elapsed() >= Duration::from_secs(1),
        "held back: {:?}",
        out.elapsed()
    );
}

/// Reads `event:`/`id:`/`data:` blocks of an SSE response.
struct Sse {
    response: reqwest::Response,
    buffer: String,
}

impl Sse {
    async fn open(app: &TestApp, token: &str, last_event_id: Option<&str>) -> Self {
        let mut request = app
            .client
            .get(app.url("/api/admin/events"))
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event: `(id line, data)`.
    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let id = block
                    .lines()
                    .find_map(|l| l.strip_prefix("id:"))
                    .map(str::trim);
                let data = block
                    .lines()
                    .find_map(|l| l.strip_prefix("data:"))
                    .map(str::trim);
                if let (Some(id), Some(data)) = (id, data) {
                    return (id.to_owned(), serde_json::from_str(data).unwrap());
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.response.chunk())
                .await
                .expect("an event within 10 s")
                .unwrap()
                .expect("the stream is open");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[tokio::test]
async fn the_admin_event_stream_resumes_from_last_event_id_after_a_restart() {
    let app = spawn_app_with(|_| {}).await;
    let (_, admin) = app.admin("root").await;
    let mut stream = Sse::open(&app, &admin, None).await;
    let (ahmad, token) = app.user("ahmad").await;
    let (position, online) = loop {
        let (id, event) = stream.next().await;
        if event["user_id"] == ahmad {
            break (id, event);
        }
    };
    assert_eq!(online["online_status"], "online");
    assert_eq!(online["id"], format!("{ahmad}-{}", online["seq"]));
    drop(stream);

    // While nobody listens: ahmad logs out, the server restarts, sara logs in.
    expect(app.post("/api/users/logout/", &token).await, 200).await;
    let (settings, dir) = (app.settings.clone(), app.dir.clone());
    app.stop().await;
    let app = start(settings, dir).await;
    let admin = app.token("root").await;
    let (sara, _) = app.user("sara").await;

    let mut stream = Sse::open(&app, &admin, Some(&position)).await;
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &Value| e["user_id"] == sara) {
        let (_, event) = stream.next().await;
        seen.push(event);
    }
    let ahmad_changes: Vec<&Value> = seen.iter().filter(|e| e["user_id"] == ahmad).collect();
    assert!(
        ahmad_changes
            .iter()
            .any(|e| e["online_status"] == "offline"),
        "the logout while disconnected is replayed: {seen:?}"
    );
    let resume: u64 = position.parse().unwrap();
    assert!(
        seen.iter()
            .all(|e| e["seq"].as_u64().unwrap() > resume - 1_000_000),
        "nothing from before the resume point (less its 1 s margin): {seen:?}"
    );
}

#[tokio::test]
async fn the_admin_event_stream_is_for_admins_only() {
    let app = spawn_app_with(|_| {}).await;
    let (_, token) = app.user("ahmad").await;
    let response = app.get("/api/admin/events", &token).await;
    assert_eq!(response.status(), 403);
}
