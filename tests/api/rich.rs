//! Rich presence over the API and push: availability from real activity, the manual status
//! with its expiry, devices and their sessions, contacts online, and the privacy of it all.

use std::time::Duration;

use chrono::{SubsecRound, Utc};
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{TestApp, WsClient, expect, expect_error, spawn_app, spawn_app_with, start};

/// Logs `username` in on a device; returns the token.
async fn login_on(app: &TestApp, username: &str, platform: &str, name: &str) -> String {
    let body = json!({
        "username": username, "password": "password123",
        "device": {"platform": platform, "name": name}
    });
    let login = expect(app.post_json("/api/users/login/", &body).await, 200).await;
    login["access"].as_str().unwrap().to_owned()
}

/// `owner` as `viewer` sees them over HTTP (a read by someone else: the owner's activity is
/// left alone).
async fn seen(app: &TestApp, viewer: &str, owner: i64) -> Value {
    let path = format!("/api/users/{owner}/presence/");
    expect(app.get(&path, viewer).await, 200).await
}

async fn heartbeat(app: &TestApp, token: &str, body: Option<Value>) -> reqwest::Response {
    let request = app
        .client
        .post(app.url("/api/users/heartbeat/"))
        .bearer_auth(token);
    let request = match body {
        Some(body) => request.json(&body),
        None => request,
    };
    request.send().await.unwrap()
}

async fn put_status(app: &TestApp, token: &str, body: &Value) -> reqwest::Response {
    app.send_json(Method::PUT, "/api/users/me/status/", token, body)
        .await
}

/// The next `presence` frame (skipping nothing else: a test expects exactly these).
async fn next_presence(socket: &mut WsClient) -> Value {
    let frame = socket.next_json().await;
    assert_eq!(frame["type"], "presence", "{frame}");
    frame
}

/// The rich presence fields of a body, snapshot entry or event.
fn rich(value: &Value) -> Value {
    json!({
        "availability": value["availability"],
        "status_text": value["status_text"],
        "status_emoji": value["status_emoji"],
        "platforms": value["platforms"],
    })
}

fn hidden() -> Value {
    json!({"availability": null, "status_text": null, "status_emoji": null, "platforms": null})
}

#[tokio::test]
async fn a_plain_heartbeat_leaves_an_idle_user_idle_and_any_other_request_makes_them_active() {
    let app = spawn_app().await;
    let (ahmad, token) = app.user("ahmad").await;
    let (_, sara) = app.user("sara").await;
    assert_eq!(seen(&app, &sara, ahmad).await["availability"], "active");

    let idle = heartbeat(&app, &token, Some(json!({"state": "idle"}))).await;
    assert_eq!(expect(idle, 200).await["message"], "Heartbeat recorded");
    assert_eq!(seen(&app, &sara, ahmad).await["availability"], "idle");

    // The seed's heartbeat (no body, no content type), an empty JSON body, and `{}`.
    expect(heartbeat(&app, &token, None).await, 200).await;
    let empty = app
        .client
        .post(app.url("/api/users/heartbeat/"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    expect(empty, 200).await;
    expect(heartbeat(&app, &token, Some(json!({}))).await, 200).await;
    let view = seen(&app, &sara, ahmad).await;
    assert_eq!(view["availability"], "idle", "{view}");
    assert_eq!(view["online_status"], "online");

    expect(
        heartbeat(&app, &token, Some(json!({"state": "active"}))).await,
        200,
    )
    .await;
    assert_eq!(seen(&app, &sara, ahmad).await["availability"], "active");
    expect(
        heartbeat(&app, &token, Some(json!({"state": "idle"}))).await,
        200,
    )
    .await;
    expect(app.get("/api/users/me/contacts/", &token).await, 200).await;
    assert_eq!(
        seen(&app, &sara, ahmad).await["availability"],
        "active",
        "any request but the heartbeat is real activity"
    );
}

#[tokio::test]
async fn bad_heartbeat_bodies_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let (ahmad, token) = app.user("ahmad").await;
    let (_, sara) = app.user("sara").await;
    expect(
        heartbeat(&app, &token, Some(json!({"state": "idle"}))).await,
        200,
    )
    .await;
    let asleep = heartbeat(&app, &token, Some(json!({"state": "asleep"}))).await;
    expect_error(asleep, 400, "invalid").await;
    let plain_text = app
        .client
        .post(app.url("/api/users/heartbeat/"))
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body(r#"{"state":"active"}"#)
        .send()
        .await
        .unwrap();
    expect_error(plain_text, 415, "unsupported_media_type").await;
    let broken = app
        .client
        .post(app.url("/api/users/heartbeat/"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    expect_error(broken, 400, "parse_error").await;
    assert_eq!(seen(&app, &sara, ahmad).await["availability"], "idle");
}

#[tokio::test]
async fn the_activity_message_turns_a_socket_idle_and_active_and_watchers_see_it() {
    let app = spawn_app().await;
    let (ahmad, token) = app.user("ahmad").await;
    let (_, sara) = app.user("sara").await;
    let mut watcher = app.ws(&sara).await;
    let snapshot = watcher.subscribe(&[ahmad]).await;
    let entry = &snapshot["users"][0];
    assert_eq!(
        rich(entry),
        json!({"availability": "active", "status_text": null, "status_emoji": null, "platforms": ["web"]})
    );

    let mut own = app.ws(&token).await;
    own.send_json(json!({"type": "activity", "state": "idle"}))
        .await;
    let idle = next_presence(&mut watcher).await;
    assert_eq!(idle["availability"], "idle");
    assert_eq!(idle["online_status"], "online");
    assert!(idle["seq"].as_u64().unwrap() > entry["seq"].as_u64().unwrap());
    own.send_json(json!({"type": "activity", "state": "active"}))
        .await;
    assert_eq!(next_presence(&mut watcher).await["availability"], "active");

    own.send_json(json!({"type": "activity", "state": "asleep"}))
        .await;
    let error = own.next_json().await;
    assert_eq!(
        (&error["type"], &error["code"]),
        (&json!("error"), &json!("invalid"))
    );
    watcher.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn without_real_activity_a_user_turns_idle_after_idle_after() {
    let idle_after = Duration::from_millis(700);
    let app = spawn_app_with(|s| s.idle_after = idle_after).await;
    let (ahmad, token) = app.user("ahmad").await;
    let (_, sara) = app.user("sara").await;
    let mut watcher = app.ws(&sara).await;
    watcher.subscribe(&[ahmad]).await;
    let active_at = tokio::time::Instant::now();
    // Plain heartbeats keep the session, not the user, active.
    expect(heartbeat(&app, &token, None).await, 200).await;
    let idle = next_presence(&mut watcher).await;
    let waited = active_at.elapsed();
    assert_eq!(idle["availability"], "idle", "{idle}");
    assert_eq!(idle["online_status"], "online");
    assert!(waited < idle_after + Duration::from_secs(1), "{waited:?}");
    assert_eq!(seen(&app, &sara, ahmad).await["availability"], "idle");

    expect(app.get("/api/users/me/", &token).await, 200).await;
    assert_eq!(next_presence(&mut watcher).await["availability"], "active");
}

#[tokio::test]
async fn active_on_one_device_beats_idle_on_another_and_platforms_list_both() {
    let app = spawn_app().await;
    let (ahmad, web) = app.user("ahmad").await;
    let (_, sara) = app.user("sara").await;
    let phone = login_on(&app, "ahmad", "mobile", "Ahmad's phone").await;
    let view = seen(&app, &sara, ahmad).await;
    assert_eq!(
        view["platforms"],
        json!(["mobile", "web"]),
        "sorted, distinct"
    );

    expect(
        heartbeat(&app, &web, Some(json!({"state": "idle"}))).await,
        200,
    )
    .await;
    assert_eq!(
        seen(&app, &sara, ahmad).await["availability"],
        "active",
        "the phone is active"
    );
    expect(
        heartbeat(&app, &phone, Some(json!({"state": "idle"}))).await,
        200,
    )
    .await;
    assert_eq!(seen(&app, &sara, ahmad).await["availability"], "idle");

    expect(app.post("/api/users/logout/", &phone).await, 200).await;
    let view = seen(&app, &sara, ahmad).await;
    assert_eq!(view["platforms"], json!(["web"]));
    expect(app.post("/api/users/logout/", &web).await, 200).await;
    let view = seen(&app, &sara, ahmad).await;
    assert_eq!(
        rich(&view),
        json!({"availability": null, "status_text": null, "status_emoji": null, "platforms": []}),
        "offline: no availability, no platforms"
    );
}

#[tokio::test]
async fn dnd_with_an_expiry_shows_at_once_and_resets_itself_with_an_event() {
    let app = spawn_app().await;
    let (ahmad, token) = app.user("ahmad").await;
    let (_, sara) = app.user("sara").await;
    let mut watcher = app.ws(&sara).await;
    watcher.subscribe(&[ahmad]).await;

    let expires_at = (Utc::now() + chrono::Duration::milliseconds(1500)).trunc_subsecs(3);
    let body =
        json!({"mode": "dnd", "text": "In a meeting", "emoji": "📅", "expires_at": expires_at});
    let set = expect(put_status(&app, &token, &body).await, 200).await;
    assert_eq!(set["mode"], "dnd");
    assert_eq!(set["text"], "In a meeting");
    assert_eq!(crate::helpers::timestamp(&set["expires_at"]), expires_at);
    let event = next_presence(&mut watcher).await;
    assert_eq!(
        rich(&event),
        json!({"availability": "dnd", "status_text": "In a meeting", "status_emoji": "📅", "platforms": ["web"]})
    );
    assert_eq!(rich(&seen(&app, &sara, ahmad).await), rich(&event));

    let reset = next_presence(&mut watcher).await;
    let late = Utc::now() - expires_at;
    assert!(
        late < chrono::Duration::seconds(1),
        "within a second: {late}"
    );
    assert_eq!(
        rich(&reset),
        json!({"availability": "active", "status_text": null, "status_emoji": null, "platforms": ["web"]})
    );
    let status = expect(app.get("/api/users/me/status/", &token).await, 200).await;
    assert_eq!(
        status,
        json!({"mode": "auto", "text": null, "emoji": null, "expires_at": null})
    );
}

#[tokio::test]
async fn away_shows_idle_while_online_and_the_status_of_an_offline_user_shows_too() {
    let app = spawn_app().await;
    let (ahmad, token) = app.user("ahmad").await;
    let (_, sara) = app.user("sara").await;
    let body = json!({"mode": "away", "text": "On holiday", "emoji": "🌴", "expires_at": null});
    expect(put_status(&app, &token, &body).await, 200).await;
    let view = seen(&app, &sara, ahmad).await;
    assert_eq!(view["availability"], "idle");
    assert_eq!(view["status_text"], "On holiday");
    expect(app.post("/api/users/logout/", &token).await, 200).await;
    let view = seen(&app, &sara, ahmad).await;
    assert_eq!(
        rich(&view),
        json!({"availability": null, "status_text": "On holiday", "status_emoji": "🌴", "platforms": []})
    );
}

#[tokio::test]
async fn a_status_survives_a_restart_and_still_resets_on_time_after_it() {
    let app = spawn_app().await;
    let (ahmad, token) = app.user("ahmad").await;
    let (_, sara) = app.user("sara").await;
    let lasting = app.token("sara").await;
    let expires_at = (Utc::now() + chrono::Duration::seconds(3)).trunc_subsecs(3);
    let body = json!({"mode": "dnd", "text": "Flying", "emoji": "✈️", "expires_at": expires_at});
    expect(put_status(&app, &token, &body).await, 200).await;
    let body = json!({"mode": "away", "text": "Lunch", "emoji": null, "expires_at": null});
    expect(put_status(&app, &lasting, &body).await, 200).await;
    expect(app.post("/api/users/logout/", &token).await, 200).await;
    let (settings, dir) = (app.settings.clone(), app.dir.clone());
    app.stop().await;

    let app = start(settings, dir).await;
    let mut watcher = app.ws(&sara).await;
    let snapshot = watcher.subscribe(&[ahmad]).await;
    assert_eq!(snapshot["users"][0]["status_text"], "Flying", "{snapshot}");
    let reset = next_presence(&mut watcher).await;
    let late = Utc::now() - expires_at;
    assert!(
        late < chrono::Duration::seconds(1),
        "within a second: {late}"
    );
    assert!(
        late > chrono::Duration::milliseconds(-50),
        "not early: {late}"
    );
    assert_eq!(reset["status_text"], Value::Null);
    assert_eq!(reset["online_status"], "offline");
    let status = expect(app.get("/api/users/me/status/", &sara).await, 200).await;
    assert_eq!(status["text"], "Lunch", "a status without expiry stays");

    // The reset is stored too: it holds across another restart.
    let (settings, dir) = (app.settings.clone(), app.dir.clone());
    app.stop().await;
    let app = start(settings, dir).await;
    let view = seen(&app, &sara, ahmad).await;
    assert_eq!(view["status_text"], Value::Null);
}

#[tokio::test]
async fn bad_statuses_are_400_and_change_nothing() {
    let app = spawn_app().await;
    let (ahmad, token) = app.user("ahmad").await;
    let (_, sara) = app.user("sara").await;
    let good = json!({"mode": "dnd", "text": "Busy", "emoji": "🔥"});
    expect(put_status(&app, &token, &good).await, 200).await;
    let past = (Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    let long = "x".repeat(101);
    for bad in [
        json!({"mode": "dnd", "expires_at": past}),
        json!({"mode": "sleeping"}),
        json!({"mode": "auto", "text": long}),
        json!({"mode": "auto", "text": "   "}),
        json!({"mode": "auto", "emoji": "ab"}),
        json!({"mode": "auto", "emoji": "📅📅"}),
        json!({"mode": "auto", "emoji": "📅 meeting"}),
        json!({"mode": "auto", "expires_at": "tomorrow"}),
        json!({"text": "no mode"}),
    ] {
        expect_error(put_status(&app, &token, &bad).await, 400, "invalid").await;
    }
    let exact = json!({"mode": "auto", "text": "y".repeat(100), "emoji": "👍🏽"});
    expect(put_status(&app, &token, &exact).await, 200).await;
    assert_eq!(seen(&app, &sara, ahmad).await["status_emoji"], "👍🏽");
}

#[tokio::test]
async fn sessions_are_listed_and_one_can_be_revoked_at_once() {
    let app = spawn_app().await;
    let (ahmad, web) = app.user("ahmad").await;
    let (_, sara) = app.user("sara").await;
    let phone = login_on(&app, "ahmad", "mobile", "Ahmad's phone").await;
    let listed = expect(app.get("/api/users/me/sessions/", &web).await, 200).await;
    let sessions = listed["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2, "{listed}");
    let (newest, oldest) = (&sessions[0], &sessions[1]);
    assert_eq!(newest["platform"], "mobile");
    assert_eq!(newest["name"], "Ahmad's phone");
    assert_eq!(
        (&newest["live"], &newest["current"]),
        (&json!(true), &json!(false))
    );
    assert_eq!(oldest["platform"], "web");
    assert_eq!(
        (&oldest["name"], &oldest["current"]),
        (&Value::Null, &json!(true))
    );
    for field in ["id", "created_at", "last_activity"] {
        assert!(!newest[field].is_null(), "{field}: {newest}");
    }
    assert_eq!(newest.as_object().unwrap().len(), 7, "{newest}");

    let mut phone_socket = app.ws(&phone).await;
    let mut watcher = app.ws(&sara).await;
    watcher.subscribe(&[ahmad]).await;
    let path = format!("/api/users/me/sessions/{}/", newest["id"]);
    let revoked = app.delete(&path, &web).await;
    assert_eq!(revoked.status(), 204);
    assert_eq!(phone_socket.close_code().await, Some(4401));
    expect_error(
        app.get("/api/users/me/", &phone).await,
        401,
        "authentication_failed",
    )
    .await;
    let update = next_presence(&mut watcher).await;
    assert_eq!(update["platforms"], json!(["web"]));
    let listed = expect(app.get("/api/users/me/sessions/", &web).await, 200).await;
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 1);

    // Someone else's session, a gone one, or a malformed id: not found.
    let sara_sessions = expect(app.get("/api/users/me/sessions/", &sara).await, 200).await;
    let theirs = format!(
        "/api/users/me/sessions/{}/",
        sara_sessions["sessions"][0]["id"]
    );
    expect_error(app.delete(&theirs, &web).await, 404, "not_found").await;
    expect_error(app.delete(&path, &web).await, 404, "not_found").await;
    expect_error(
        app.delete("/api/users/me/sessions/x/", &web).await,
        404,
        "not_found",
    )
    .await;
    expect(app.get("/api/users/me/", &sara).await, 200).await;
}

#[tokio::test]
async fn bad_devices_are_refused_at_login() {
    let app = spawn_app().await;
    app.user("ahmad").await;
    for device in [
        json!({"platform": "toaster"}),
        json!({"platform": "web", "name": "n".repeat(65)}),
        json!({"platform": "web", "name": " "}),
        json!({"platform": "web", "colour": "red"}),
    ] {
        let body = json!({"username": "ahmad", "password": "password123", "device": device});
        expect_error(
            app.post_json("/api/users/login/", &body).await,
            400,
            "invalid",
        )
        .await;
    }
    let body =
        json!({"username": "ahmad", "password": "password123", "device": {"name": "Work laptop"}});
    let login = expect(app.post_json("/api/users/login/", &body).await, 200).await;
    assert_eq!(login["user"]["platforms"], json!(["web"]), "web by default");
}

#[tokio::test]
async fn contacts_online_lists_the_contacts_the_caller_can_see_online_by_username() {
    let app = spawn_app().await;
    let (_, alice) = app.user("alice").await;
    let (bob, _) = app.user("bob").await;
    let (aaron, _) = app.user("aaron").await;
    let (carol, carol_token) = app.user("carol").await;
    let (dave, dave_token) = app.user("dave").await;
    let (frank, frank_token) = app.user("frank").await;
    let (gina, gina_token) = app.user("gina").await;
    app.user("eve").await;
    let me = expect(app.get("/api/users/me/", &alice).await, 200).await;
    let alice_id = me["id"].as_i64().unwrap();
    for contact in [bob, aaron, carol, dave, frank, gina] {
        let body = json!({"user_id": contact});
        let response = app
            .send_json(Method::POST, "/api/users/me/contacts/", &alice, &body)
            .await;
        expect(response, 201).await;
    }
    // Carol hides her online status, Dave is offline, Frank blocked Alice, Gina is invisible.
    let hide = json!({"last_seen": "nobody", "online": "same_as_last_seen"});
    let response = app
        .send_json(Method::PATCH, "/api/users/me/privacy/", &carol_token, &hide)
        .await;
    expect(response, 200).await;
    expect(app.post("/api/users/logout/", &dave_token).await, 200).await;
    let block = json!({"user_id": alice_id});
    let response = app
        .send_json(Method::POST, "/api/users/me/blocked/", &frank_token, &block)
        .await;
    expect(response, 201).await;
    let invisible = json!({"invisible": true});
    let response = app
        .send_json(
            Method::PATCH,
            "/api/users/me/privacy/",
            &gina_token,
            &invisible,
        )
        .await;
    expect(response, 200).await;

    let online = expect(app.get("/api/users/me/contacts/online/", &alice).await, 200).await;
    let names: Vec<&str> = online["online"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["aaron", "bob"], "{online}");
    assert_eq!(online["online_count"], 2);
    assert_eq!(online["online"][1]["id"], bob);
    assert_eq!(online["online"][1]["availability"], "active");
    assert_eq!(online.as_object().unwrap().len(), 2);
}

#[tokio::test]
async fn patch_changes_only_the_privacy_fields_it_names() {
    let app = spawn_app().await;
    let (_, token) = app.user("ahmad").await;
    let (sara, _) = app.user("sara").await;
    let full = json!({"last_seen": "contacts_except", "except": [sara], "online": "everyone", "invisible": false});
    let response = app
        .send_json(Method::PUT, "/api/users/me/privacy/", &token, &full)
        .await;
    expect(response, 200).await;
    let patch = json!({"online": "same_as_last_seen"});
    let response = app
        .send_json(Method::PATCH, "/api/users/me/privacy/", &token, &patch)
        .await;
    let patched = expect(response, 200).await;
    assert_eq!(patched["online"], "same_as_last_seen");
    assert_eq!(patched["last_seen"], "contacts_except");
    assert_eq!(patched["except"], json!([sara]));
    assert_eq!(patched["invisible"], false);
    let current = expect(app.get("/api/users/me/privacy/", &token).await, 200).await;
    assert_eq!(current, patched);

    let response = app
        .send_json(Method::PATCH, "/api/users/me/privacy/", &token, &json!({}))
        .await;
    assert_eq!(
        expect(response, 200).await,
        patched,
        "an empty patch changes nothing"
    );
    for bad in [
        json!({"online": "martians"}),
        json!({"colour": "red"}),
        json!({"except": [-5]}),
    ] {
        let response = app
            .send_json(Method::PATCH, "/api/users/me/privacy/", &token, &bad)
            .await;
        expect_error(response, 400, "invalid").await;
    }
    let current = expect(app.get("/api/users/me/privacy/", &token).await, 200).await;
    assert_eq!(current, patched);
}

/// Reads SSE `data:` payloads from a `GET /api/presence/events` response.
struct SseClient {
    response: reqwest::Response,
    buffer: String,
}

impl SseClient {
    async fn open(app: &TestApp, token: &str, ids: &[i64]) -> Self {
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let path = format!("/api/presence/events?user_ids={}", ids.join(","));
        let response = app.get(&path, token).await;
        assert_eq!(response.status(), 200);
        Self {
            response,
            buffer: String::new(),
        }
    }

    /// The next event's data, parsed.
    async fn next(&mut self) -> Value {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                let data: String = event
                    .lines()
                    .filter_map(|line| line.strip_prefix("data:"))
                    .map(str::trim)
                    .collect();
                if !data.is_empty() {
                    return serde_json::from_str(&data).unwrap();
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), self.response.chunk())
                .await
                .expect("an SSE event within 5 s")
                .unwrap()
                .expect("the stream is open");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[tokio::test]
async fn every_new_field_is_hidden_from_a_viewer_who_may_not_see_the_owner_online() {
    let app = spawn_app().await;
    let (_, alice) = app.user("alice").await;
    let (_, carl) = app.user("carl").await;
    let (bob, bob_token) = app.user("bob").await;
    let status = json!({"mode": "dnd", "text": "Deep work", "emoji": "🎧"});
    expect(put_status(&app, &bob_token, &status).await, 200).await;
    // Only contacts see Bob online; Carl is one, Alice is not.
    let carl_id = expect(app.get("/api/users/me/", &carl).await, 200).await["id"].clone();
    let body = json!({"user_id": carl_id});
    let added = app
        .send_json(Method::POST, "/api/users/me/contacts/", &bob_token, &body)
        .await;
    expect(added, 201).await;
    let mut alice_ws = app.ws(&alice).await;
    let mut carl_ws = app.ws(&carl).await;
    alice_ws.subscribe(&[bob]).await;
    carl_ws.subscribe(&[bob]).await;
    let hide = json!({"last_seen": "contacts", "online": "same_as_last_seen"});
    let response = app
        .send_json(Method::PATCH, "/api/users/me/privacy/", &bob_token, &hide)
        .await;
    expect(response, 200).await;

    // HTTP, a WebSocket snapshot, an SSE snapshot: the same hidden fields.
    assert_eq!(rich(&seen(&app, &alice, bob).await), hidden());
    let mut fresh = app.ws(&alice).await;
    assert_eq!(rich(&fresh.subscribe(&[bob]).await["users"][0]), hidden());
    let mut sse = SseClient::open(&app, &alice, &[bob]).await;
    assert_eq!(rich(&sse.next().await["users"][0]), hidden());
    let shown = json!({"availability": "dnd", "status_text": "Deep work", "status_emoji": "🎧", "platforms": ["web"]});
    assert_eq!(rich(&seen(&app, &carl, bob).await), shown);

    // The change of settings reaches Alice as hidden fields, and Carl not at all (he sees
    // the same as before).
    let event = next_presence(&mut alice_ws).await;
    assert_eq!(rich(&event), hidden());
    assert_eq!(event["online_status"], Value::Null);

    // A change Alice cannot see is not pushed to her; Carl gets it.
    let status = json!({"mode": "away", "text": "Lunch", "emoji": "🍜"});
    expect(put_status(&app, &bob_token, &status).await, 200).await;
    // (Carl may first get Bob's newer last_seen, re-sent with the privacy change.)
    let update = loop {
        let update = next_presence(&mut carl_ws).await;
        if update["status_text"] == "Lunch" {
            break update;
        }
        assert_eq!(rich(&update), shown, "a contact sees everything");
    };
    assert_eq!(update["availability"], "idle");
    alice_ws.expect_silence(Duration::from_millis(300)).await;
    fresh.expect_silence(Duration::from_millis(50)).await;

    // Invisible mode hides them too, even from contacts: offline, no platforms, no status.
    let response = app
        .send_json(
            Method::PATCH,
            "/api/users/me/privacy/",
            &bob_token,
            &json!({"invisible": true}),
        )
        .await;
    expect(response, 200).await;
    let frozen = next_presence(&mut carl_ws).await;
    assert_eq!(frozen["online_status"], "offline");
    assert_eq!(
        rich(&frozen),
        json!({"availability": null, "status_text": null, "status_emoji": null, "platforms": []})
    );
    assert_eq!(rich(&seen(&app, &carl, bob).await), rich(&frozen));
    let own = expect(app.get("/api/users/me/", &bob_token).await, 200).await;
    assert_eq!(
        own["status_text"], "Lunch",
        "the owner sees their own status"
    );
}
