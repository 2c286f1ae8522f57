//! External tokens: JWTs minted elsewhere (HS256, RS256, ES256; one made by Django REST
//! Framework simplejwt itself) used as bearer tokens over HTTP, WebSocket and SSE.
//!
//! Tokens are signed here with `ring` directly, independently of the server's verifier.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use serde_json::{Value, json};

use crate::helpers::{TestApp, expect, expect_error, spawn_app_with};

const SECRET: &str = "test-secret-of-the-django-backend";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

/// The DER inside a PEM file.
fn pem_der(name: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Access-token claims as simplejwt makes them, valid for an hour.
fn claims(user_id: Value, jti: &str) -> Value {
    json!({
        "token_type": "access",
        "exp": now() + 3600,
        "iat": now(),
        "jti": jti,
        "user_id": user_id,
    })
}

fn signing_input(alg: &str, claims: &Value) -> String {
    let header = json!({"alg": alg, "typ": "JWT"});
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

fn hs256(secret: &str, claims: &Value) -> String {
    let input = signing_input("HS256", claims);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

fn rs256(claims: &Value) -> String {
    let input = signing_input("RS256", claims);
    let key = RsaKeyPair::from_pkcs8(&pem_der("rs256-private.pem")).unwrap();
    let mut signature = vec![0; key.public().modulus_len()];
    let rng = ring::rand::SystemRandom::new();
    key.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut signature)
        .unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn es256(claims: &Value) -> String {
    let input = signing_input("ES256", claims);
    let rng = ring::rand::SystemRandom::new();
    let der = pem_der("es256-private.pem");
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng).unwrap();
    let signature = key.sign(&rng, input.as_bytes()).unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
}

async fn hs256_app() -> TestApp {
    spawn_app_with(|s| s.jwt_hs256_secret = Some(SECRET.into())).await
}

/// `GET /api/users/me/` with `token`: the caller as the server sees them.
async fn me(app: &TestApp, token: &str) -> Value {
    expect(app.get("/api/users/me/", token).await, 200).await
}

async fn refused(app: &TestApp, token: &str) {
    expect_error(
        app.get("/api/users/me/", token).await,
        401,
        "authentication_failed",
    )
    .await;
}

async fn sessions(app: &TestApp, token: &str) -> Vec<Value> {
    let listed = expect(app.get("/api/users/me/sessions/", token).await, 200).await;
    listed["sessions"].as_array().unwrap().clone()
}

#[tokio::test]
async fn an_hs256_token_provisions_its_user_with_the_username_claim_and_marks_them_online() {
    let app = hs256_app().await;
    let mut claims = claims(json!(42), "a1");
    claims["username"] = json!("jwt_alice");
    let token = hs256(SECRET, &claims);

    let first = me(&app, &token).await;
    assert_eq!(first["username"], "jwt_alice");
    assert_eq!(first["online_status"], "online");
    let again = me(&app, &token).await;
    assert_eq!(again["id"], first["id"], "the same user, not a second one");
    let (_, admin) = app.admin("root").await;
    let status = app.status_of(&admin, first["id"].as_i64().unwrap()).await;
    assert_eq!(status["online_status"], "online", "{status}");
}

#[tokio::test]
async fn rs256_and_es256_tokens_are_accepted_with_the_configured_public_key() {
    for (key, sign) in [
        ("rs256-public.pem", rs256 as fn(&Value) -> String),
        ("es256-public.pem", es256),
    ] {
        let app = spawn_app_with(|s| s.jwt_public_key_file = Some(fixture(key))).await;
        let token = sign(&claims(json!("u-17"), "k1"));
        assert_eq!(me(&app, &token).await["username"], "useru-17", "{key}");
        // The shared-secret kind is not configured here: an HS256 token is refused.
        refused(&app, &hs256(SECRET, &claims(json!("u-17"), "k2"))).await;
    }
}

#[tokio::test]
async fn bad_signatures_expired_refresh_and_userless_tokens_get_401() {
    let app = spawn_app_with(|s| {
        s.jwt_hs256_secret = Some(SECRET.into());
        s.jwt_leeway = Duration::from_secs(30);
    })
    .await;
    let good = claims(json!(5), "x");
    refused(&app, &hs256("another-secret", &good)).await;
    let mut tampered = hs256(SECRET, &good);
    tampered.insert(tampered.rfind('.').unwrap() + 1, 'A');
    refused(&app, &tampered).await;
    let unsigned = format!("{}.", signing_input("none", &good));
    refused(&app, &unsigned).await;
    refused(&app, &rs256(&good)).await;

    let mut expired = good.clone();
    expired["exp"] = json!(now() - 31);
    refused(&app, &hs256(SECRET, &expired)).await;
    let mut within_leeway = good.clone();
    within_leeway["exp"] = json!(now() - 5);
    me(&app, &hs256(SECRET, &within_leeway)).await;

    let mut refresh = good.clone();
    refresh["token_type"] = json!("refresh");
    refused(&app, &hs256(SECRET, &refresh)).await;
    let mut no_user = good.clone();
    no_user.as_object_mut().unwrap().remove("user_id");
    refused(&app, &hs256(SECRET, &no_user)).await;
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    refused(&app, &hs256(SECRET, &no_exp)).await;
    // Not a JWT at all, though it has two dots.
    refused(&app, "a.b.c").await;
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_set() {
    let app = spawn_app_with(|s| {
        s.jwt_hs256_secret = Some(SECRET.into());
        s.jwt_issuer = Some("https://auth.example".into());
        s.jwt_audience = Some("lastseen".into());
    })
    .await;
    let with = |iss: Option<&str>, aud: Option<Value>| {
        let mut claims = claims(json!(9), "i");
        if let Some(iss) = iss {
            claims["iss"] = json!(iss);
        }
        if let Some(aud) = aud {
            claims["aud"] = aud;
        }
        hs256(SECRET, &claims)
    };
    me(
        &app,
        &with(Some("https://auth.example"), Some(json!("lastseen"))),
    )
    .await;
    me(
        &app,
        &with(
            Some("https://auth.example"),
            Some(json!(["chat", "lastseen"])),
        ),
    )
    .await;
    refused(
        &app,
        &with(Some("https://auth.example"), Some(json!("chat"))),
    )
    .await;
    refused(&app, &with(Some("https://auth.example"), None)).await;
    refused(
        &app,
        &with(Some("https://evil.example"), Some(json!("lastseen"))),
    )
    .await;
    refused(&app, &with(None, Some(json!("lastseen")))).await;
}

#[tokio::test]
async fn each_token_is_one_session_and_reusing_a_token_reuses_its_session() {
    let app = hs256_app().await;
    let phone = hs256(SECRET, &claims(json!(3), "phone"));
    let laptop = hs256(SECRET, &claims(json!(3), "laptop"));
    for _ in 0..3 {
        expect(app.post("/api/users/heartbeat/", &phone).await, 200).await;
    }
    expect(app.post("/api/users/heartbeat/", &laptop).await, 200).await;
    assert_eq!(sessions(&app, &phone).await.len(), 2);

    // Without `jti`, the token itself identifies the session.
    let mut plain = claims(json!(3), "");
    plain.as_object_mut().unwrap().remove("jti");
    let plain = hs256(SECRET, &plain);
    me(&app, &plain).await;
    me(&app, &plain).await;
    assert_eq!(sessions(&app, &laptop).await.len(), 3);
    assert_eq!(me(&app, &plain).await["online_status"], "online");
}

#[tokio::test]
async fn a_token_beyond_the_session_limit_ends_the_oldest_session_and_its_presence_at_once() {
    let app = spawn_app_with(|s| {
        s.jwt_hs256_secret = Some(SECRET.into());
        s.max_sessions_per_user = 1;
    })
    .await;
    let (_, admin) = app.admin("root").await;
    let phone = hs256(SECRET, &claims(json!(8), "phone"));
    let laptop = hs256(SECRET, &claims(json!(8), "laptop"));
    let id = me(&app, &phone).await["id"].as_i64().unwrap();

    // The phone is in use; the laptop's first request says its user is away from it. While
    // the phone's session is live the user is active, so idle means it ended.
    let idle = json!({"state": "idle"});
    let heartbeat = "/api/users/heartbeat/";
    let answer = app
        .send_json(reqwest::Method::POST, heartbeat, &laptop, &idle)
        .await;
    expect(answer, 200).await;
    refused(&app, &phone).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = app.status_of(&admin, id).await;
        if status["availability"] == "idle" {
            assert_eq!(status["online_status"], "online", "{status}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the evicted session still counts: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sessions(&app, &laptop).await.len(), 1);
}

#[tokio::test]
async fn a_taken_username_neither_fails_provisioning_nor_hands_over_the_account() {
    let app = hs256_app().await;
    let (alice_id, alice_token) = app.user("alice").await;
    let mut claims7 = claims(json!(7), "t7");
    claims7["username"] = json!("alice");
    let seven = me(&app, &hs256(SECRET, &claims7)).await;
    assert_ne!(seven["id"], alice_id);
    assert_eq!(seven["username"], "user7");
    assert_eq!(me(&app, &alice_token).await["username"], "alice");
    // Next, the fallback name is taken too.
    let mut claims8 = claims(json!(8), "t8");
    claims8["username"] = json!("user7");
    expect(app.register("user8", "password123").await, 201).await;
    let eight = me(&app, &hs256(SECRET, &claims8)).await;
    let name = eight["username"].as_str().unwrap();
    assert!(name.starts_with("user8-"), "{name}");
    // A provisioned user has no password to log in with.
    expect_error(app.login("user7", "!").await, 401, "authentication_failed").await;
}

#[tokio::test]
async fn a_token_made_by_django_rest_framework_simplejwt_is_accepted() {
    // Minted by tests/fixtures/jwt/mint_simplejwt.py (see the file's header).
    let text = std::fs::read_to_string(fixture("simplejwt.txt")).unwrap();
    let field = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .unwrap()
            .to_owned()
    };
    let secret = field("secret");
    let app = spawn_app_with(|s| s.jwt_hs256_secret = Some(secret)).await;
    let user = me(&app, &field("access")).await;
    assert_eq!(user["username"], field("username"));
    assert_eq!(user["online_status"], "online");
    refused(&app, &field("refresh")).await;
}

#[tokio::test]
async fn opaque_tokens_keep_working_beside_jwts() {
    let app = hs256_app().await;
    let (id, opaque) = app.user("bob").await;
    assert_eq!(me(&app, &opaque).await["id"], id);
    let jwt = hs256(SECRET, &claims(json!(11), "b"));
    assert_ne!(me(&app, &jwt).await["id"], id);
    expect(app.post("/api/users/logout/", &opaque).await, 200).await;
    refused(&app, &opaque).await;
}

#[tokio::test]
async fn a_jwt_works_on_the_websocket_header_the_auth_message_and_sse() {
    let app = hs256_app().await;
    let (bob, _) = app.user("bob").await;
    let token = hs256(SECRET, &claims(json!(21), "ws"));

    let mut socket = app.ws(&token).await;
    let snapshot = socket.subscribe(&[bob]).await;
    assert_eq!(snapshot["users"][0]["id"], bob, "{snapshot}");

    let mut browser = app.ws_anonymous().await;
    browser
        .send_json(json!({"type": "auth", "token": token}))
        .await;
    let snapshot = browser.subscribe(&[bob]).await;
    assert_eq!(snapshot["users"][0]["id"], bob, "{snapshot}");

    let mut stream = app
        .get(&format!("/api/presence/events?user_ids={bob}"), &token)
        .await;
    assert_eq!(stream.status(), 200);
    let chunk = tokio::time::timeout(Duration::from_secs(5), stream.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&chunk).contains("snapshot"));

    let mut wrong = app.ws_anonymous().await;
    wrong
        .send_json(json!({"type": "auth", "token": hs256("nope", &claims(json!(21), "ws"))}))
        .await;
    assert_eq!(wrong.close_code().await, Some(4401));
}

#[tokio::test]
async fn a_cached_token_stops_working_when_it_expires() {
    let app = spawn_app_with(|s| {
        s.jwt_hs256_secret = Some(SECRET.into());
        s.jwt_leeway = Duration::ZERO;
    })
    .await;
    let mut short = claims(json!(31), "short");
    let exp = now() + 2;
    short["exp"] = json!(exp);
    let token = hs256(SECRET, &short);
    me(&app, &token).await;
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    refused(&app, &token).await;
}

#[tokio::test]
async fn a_revoked_jwt_session_stays_refused_while_another_token_of_the_user_works() {
    let app = hs256_app().await;
    let phone = hs256(SECRET, &claims(json!(41), "phone"));
    let laptop = hs256(SECRET, &claims(json!(41), "laptop"));
    me(&app, &phone).await;
    me(&app, &laptop).await;
    let listed = sessions(&app, &laptop).await;
    assert_eq!(listed.len(), 2);
    // Newest first: the laptop's session, then the phone's.
    let path = format!("/api/users/me/sessions/{}/", listed[1]["id"]);
    let response = app
        .client
        .delete(app.url(&path))
        .bearer_auth(&laptop)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    refused(&app, &phone).await;
    refused(&app, &phone).await;
    assert_eq!(sessions(&app, &laptop).await.len(), 1);
}

#[tokio::test]
async fn a_revoked_jwt_is_refused_again_without_asking_the_database() {
    use sqlx::Connection;
    use std::str::FromStr;

    let app = hs256_app().await;
    let token = hs256(SECRET, &claims(json!(61), "retrying"));
    me(&app, &token).await;
    expect(app.post("/api/users/logout/", &token).await, 200).await;
    // The first refusal reads the store (and tries to reopen the session, a write).
    refused(&app, &token).await;

    // Another writer holds the database: anything that still needs a write would wait for
    // it and then fail with a 503.
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(&app.settings.database_url).unwrap();
    let mut writer = sqlx::SqliteConnection::connect_with(&options)
        .await
        .unwrap();
    sqlx::query("begin exclusive")
        .execute(&mut writer)
        .await
        .unwrap();
    refused(&app, &token).await;
    sqlx::query("rollback").execute(&mut writer).await.unwrap();
}

#[tokio::test]
async fn sockets_and_streams_of_a_jwt_close_when_it_expires() {
    let app = spawn_app_with(|s| {
        s.jwt_hs256_secret = Some(SECRET.into());
        s.jwt_leeway = Duration::ZERO;
    })
    .await;
    let (bob, _) = app.user("bob").await;
    let mut expiring = claims(json!(51), "soon");
    let exp = now() + 2;
    expiring["exp"] = json!(exp);
    let token = hs256(SECRET, &expiring);
    let mut socket = app.ws(&token).await;
    socket.subscribe(&[bob]).await;
    let mut stream = app
        .get(&format!("/api/presence/events?user_ids={bob}"), &token)
        .await;
    assert_eq!(stream.status(), 200);

    assert_eq!(socket.close_code().await, Some(4401));
    assert!(now() >= exp, "closed at the expiry, not before");
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while stream.chunk().await.unwrap().is_some() {}
    });
    assert!(end.await.is_ok(), "the SSE stream ends too");
}
