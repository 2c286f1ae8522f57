//! Browser sessions: login sets `lastseen_session`, which authenticates like a bearer token when
//! no `Authorization` header is sent; unsafe methods and socket upgrades by cookie need our own
//! `Origin`; logout clears it.

use reqwest::header::{COOKIE, ORIGIN, SET_COOKIE};
use serde_json::json;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{TestApp, expect, expect_error, spawn_app, spawn_app_with};

/// Logs `username` in; returns the bearer token and the `Set-Cookie` header.
async fn login_with_cookie(app: &TestApp, username: &str) -> (String, String) {
    app.register(username, "password123").await;
    let response = app.login(username, "password123").await;
    let set_cookie = response
        .headers()
        .get(SET_COOKIE)
        .expect("login sets a cookie")
        .to_str()
        .unwrap()
        .to_owned();
    let body = expect(response, 200).await;
    (body["access"].as_str().unwrap().to_owned(), set_cookie)
}

fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn login_sets_an_http_only_strict_cookie_that_authenticates_reads() {
    let app = spawn_app().await;
    let (token, set_cookie) = login_with_cookie(&app, "alice").await;
    assert_eq!(
        cookie_pair(&set_cookie),
        format!("lastseen_session={token}")
    );
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "{set_cookie}");

    let me = app
        .client
        .get(app.url("/api/users/me/"))
        .header(COOKIE, cookie_pair(&set_cookie))
        .send()
        .await
        .unwrap();
    let me = expect(me, 200).await;
    assert_eq!(me["username"], "alice");

    let stale = app
        .client
        .get(app.url("/api/users/me/"))
        .header(COOKIE, "lastseen_session=not-a-token")
        .send()
        .await
        .unwrap();
    expect_error(stale, 401, "authentication_failed").await;
}

#[tokio::test]
async fn cookie_secure_marks_the_cookie_secure() {
    let app = spawn_app_with(|s| s.cookie_secure = true).await;
    let (_, set_cookie) = login_with_cookie(&app, "alice").await;
    assert!(set_cookie.contains("; Secure"), "{set_cookie}");
}

#[tokio::test]
async fn unsafe_requests_by_cookie_need_our_own_origin() {
    let app = spawn_app().await;
    let (_, set_cookie) = login_with_cookie(&app, "alice").await;
    let heartbeat = |origin: Option<String>| {
        let mut request = app
            .client
            .post(app.url("/api/users/heartbeat/"))
            .header(COOKIE, cookie_pair(&set_cookie));
        if let Some(origin) = origin {
            request = request.header(ORIGIN, origin);
        }
        request.send()
    };
    let missing = heartbeat(None).await.unwrap();
    expect_error(missing, 403, "cross_origin").await;
    let foreign = heartbeat(Some("http://evil.example".into())).await.unwrap();
    expect_error(foreign, 403, "cross_origin").await;
    let other_port = heartbeat(Some("http://127.0.0.1:1".into())).await.unwrap();
    expect_error(other_port, 403, "cross_origin").await;
    let ours = heartbeat(Some(app.base.clone())).await.unwrap();
    expect(ours, 200).await;
}

#[tokio::test]
async fn a_bearer_header_wins_over_the_cookie_and_needs_no_origin() {
    let app = spawn_app().await;
    let (_, alice_cookie) = login_with_cookie(&app, "alice").await;
    let (bob, _) = login_with_cookie(&app, "bob").await;
    let me = app
        .client
        .post(app.url("/api/users/heartbeat/"))
        .bearer_auth(&bob)
        .header(COOKIE, cookie_pair(&alice_cookie))
        .send()
        .await
        .unwrap();
    expect(me, 200).await;
    let me = app
        .client
        .get(app.url("/api/users/me/"))
        .bearer_auth(&bob)
        .header(COOKIE, cookie_pair(&alice_cookie))
        .send()
        .await
        .unwrap();
    assert_eq!(expect(me, 200).await["username"], "bob");
}

#[tokio::test]
async fn logout_by_cookie_clears_it_and_ends_the_session() {
    let app = spawn_app().await;
    let (_, set_cookie) = login_with_cookie(&app, "alice").await;
    let response = app
        .client
        .post(app.url("/api/users/logout/"))
        .header(COOKIE, cookie_pair(&set_cookie))
        .header(ORIGIN, &app.base)
        .send()
        .await
        .unwrap();
    let cleared = response
        .headers()
        .get(SET_COOKIE)
        .expect("logout clears the cookie")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cleared.starts_with("lastseen_session=;"), "{cleared}");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert_eq!(expect(response, 200).await["online_status"], "offline");
    let after = app
        .client
        .get(app.url("/api/users/me/"))
        .header(COOKIE, cookie_pair(&set_cookie))
        .send()
        .await
        .unwrap();
    expect_error(after, 401, "authentication_failed").await;
}

#[tokio::test]
async fn the_seed_admin_snippets_work_with_the_cookie_alone() {
    let app = spawn_app().await;
    app.admin("root").await;
    let login = app
        .post_json(
            "/api/users/login/",
            &json!({"username": "root", "password": "password123"}),
        )
        .await;
    let set_cookie = login.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    let online = app
        .client
        .get(app.url("/api/users/admin/users/online/"))
        .header(COOKIE, cookie_pair(&set_cookie))
        .send()
        .await
        .unwrap();
    let online = expect(online, 200).await;
    assert_eq!(online["online_count"], 1);
}

#[tokio::test]
async fn a_socket_opened_from_our_page_is_authenticated_by_the_cookie() {
    let app = spawn_app().await;
    let (_, set_cookie) = login_with_cookie(&app, "alice").await;
    let (bob, _) = app.user("bob").await;
    let url = format!("{}/api/presence/ws", app.base.replacen("http", "ws", 1));

    let mut request = url.clone().into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("cookie", cookie_pair(&set_cookie).parse().unwrap());
    headers.insert("origin", app.base.parse().unwrap());
    let (stream, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut socket = crate::helpers::WsClient::over(stream);
    assert_eq!(socket.ready().await["username"], "alice");
    let snapshot = socket.subscribe(&[bob]).await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");

    let mut foreign = url.into_client_request().unwrap();
    let headers = foreign.headers_mut();
    headers.insert("cookie", cookie_pair(&set_cookie).parse().unwrap());
    headers.insert("origin", "http://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(foreign).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("a cross-site upgrade must be refused, got {other:?}"),
    }
}
