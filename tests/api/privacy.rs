//! Privacy (issue 4): both HTTP read paths (single and batch) apply the same rule; settings,
//! contacts and blocks take effect at once; invisible mode; defaults keep the seed's behaviour.

use std::time::Duration;

use lastseen::domain::PrivacyChanged;
use lastseen::domain::UserId;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, expect, expect_error, spawn_app, spawn_app_with, start, timestamp, wall_clock_past,
};

/// What `viewer` sees of `owner`. Reads both paths and asserts they agree.
async fn seen(app: &TestApp, viewer: &str, owner: i64) -> Value {
    let path = format!("/api/users/{owner}/presence/");
    let single = expect(app.get(&path, viewer).await, 200).await;
    let body = json!({"user_ids": [owner]});
    let batch = expect(
        app.send_json(Method::POST, "/api/presence/query/", viewer, &body)
            .await,
        200,
    )
    .await;
    assert_eq!(
        batch["users"],
        json!([single]),
        "batch and single reads agree"
    );
    single
}

fn settings(last_seen: &str, online: &str) -> Value {
    json!({"last_seen": last_seen, "online": online, "invisible": false})
}

async fn put_privacy(app: &TestApp, token: &str, body: &Value) -> Value {
    let response = app
        .send_json(Method::PUT, "/api/users/me/privacy/", token, body)
        .await;
    expect(response, 200).await
}

async fn add(app: &TestApp, token: &str, list: &str, user: i64) -> Value {
    let path = format!("/api/users/me/{list}/");
    let body = json!({"user_id": user});
    expect(app.send_json(Method::POST, &path, token, &body).await, 201).await
}

/// The fully hidden presence of `id`/`username`.
fn nothing(id: i64, username: &str) -> Value {
    json!({
        "id": id, "username": username, "online_status": null, "last_seen": null,
        "is_online": null, "availability": null, "status_text": null, "status_emoji": null,
        "platforms": null
    })
}

/// Fully visible and online on the web: the seed's five fields and the four of rich presence.
fn assert_full_online(view: &Value) {
    assert_eq!(view["online_status"], "online", "{view}");
    assert_eq!(view["is_online"], true, "{view}");
    assert!(view["last_seen"].is_string(), "{view}");
    assert_eq!(view["availability"], "active", "{view}");
    assert_eq!(view["platforms"], json!(["web"]), "{view}");
    assert_eq!(view.as_object().unwrap().len(), 9, "shape: {view}");
}

#[tokio::test]
async fn by_default_everyone_sees_everything_in_the_seed_shape() {
    let app = spawn_app().await;
    let (ahmad, _) = app.user("ahmad").await;
    let (_, sara) = app.user("sara").await;
    let (_, admin) = app.admin("root").await;

    let view = seen(&app, &sara, ahmad).await;
    let last_seen = app.status_of(&admin, ahmad).await["last_seen"].clone();
    let text = app
        .get(&format!("/api/users/{ahmad}/presence/"), &sara)
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(
        text,
        format!(
            r#"{{"id":{ahmad},"username":"ahmad","online_status":"online","last_seen":{last_seen},"is_online":true,"availability":"active","status_text":null,"status_emoji":null,"platforms":["web"]}}"#
        ),
        "the seed's UserPresence, byte for byte, then the rich presence fields"
    );
    assert_full_online(&view);

    let defaults = expect(app.get("/api/users/me/privacy/", &sara).await, 200).await;
    assert_eq!(
        defaults,
        json!({"last_seen": "everyone", "except": [], "online": "everyone", "invisible": false, "invisible_since": null})
    );
}

#[tokio::test]
async fn last_seen_nobody_hides_last_seen_from_others_but_not_from_the_owner() {
    let app = spawn_app().await;
    let (ahmad, ahmad_token) = app.user("ahmad").await;
    let (_, sara) = app.user("sara").await;
    put_privacy(&app, &ahmad_token, &settings("nobody", "everyone")).await;

    let view = seen(&app, &sara, ahmad).await;
    assert_eq!(view["online_status"], "online");
    assert_eq!(view["is_online"], true);
    assert_eq!(view["last_seen"], Value::Null);
    assert!(view.get("last_seen_approx").is_none(), "off by default");

    let own = expect(
        app.get(&format!("/api/users/{ahmad}/presence/"), &ahmad_token)
            .await,
        200,
    )
    .await;
    assert_full_online(&own);
    let body = json!({"user_ids": [ahmad]});
    let own_batch = expect(
        app.send_json(Method::POST, "/api/presence/query/", &ahmad_token, &body)
            .await,
        200,
    )
    .await;
    assert_full_online(&own_batch["users"][0]);
    assert_full_online(&expect(app.get("/api/users/me/", &ahmad_token).await, 200).await);
}

#[tokio::test]
async fn online_same_as_last_seen_hides_online_status_together_with_last_seen() {
    let app = spawn_app().await;
    let (ahmad, ahmad_token) = app.user("ahmad").await;
    let (_, sara) = app.user("sara").await;
    let (_, admin) = app.admin("root").await;
    put_privacy(&app, &ahmad_token, &settings("nobody", "same_as_last_seen")).await;

    assert_eq!(seen(&app, &sara, ahmad).await, nothing(ahmad, "ahmad"));
    let status = app.status_of(&admin, ahmad).await;
    assert_eq!(status["online_status"], "online", "admin endpoints see all");
    assert!(status["last_seen"].is_string());
}

#[tokio::test]
async fn contacts_only_shows_presence_to_contacts_and_removal_applies_at_once() {
    let app = spawn_app().await;
    let (ahmad, ahmad_token) = app.user("ahmad").await;
    let (sara_id, sara) = app.user("sara").await;
    let (_, omar) = app.user("omar").await;
    let added = add(&app, &ahmad_token, "contacts", sara_id).await;
    assert_eq!(added, json!({"id": sara_id, "username": "sara"}));
    put_privacy(
        &app,
        &ahmad_token,
        &settings("contacts", "same_as_last_seen"),
    )
    .await;

    assert_full_online(&seen(&app, &sara, ahmad).await);
    assert_eq!(seen(&app, &omar, ahmad).await, nothing(ahmad, "ahmad"));

    let path = format!("/api/users/me/contacts/{sara_id}/");
    expect(app.delete(&path, &ahmad_token).await, 204).await;
    assert_eq!(seen(&app, &sara, ahmad).await, nothing(ahmad, "ahmad"));
}

#[tokio::test]
async fn contacts_except_hides_last_seen_from_the_excepted_contacts_only() {
    let app = spawn_app().await;
    let (ahmad, ahmad_token) = app.user("ahmad").await;
    let (sara_id, sara) = app.user("sara").await;
    let (omar_id, omar) = app.user("omar").await;
    let (_, lena) = app.user("lena").await;
    add(&app, &ahmad_token, "contacts", sara_id).await;
    add(&app, &ahmad_token, "contacts", omar_id).await;
    let body = json!({"last_seen": "contacts_except", "except": [omar_id], "online": "everyone", "invisible": false});
    let stored = put_privacy(&app, &ahmad_token, &body).await;
    assert_eq!(stored["except"], json!([omar_id]));

    assert_full_online(&seen(&app, &sara, ahmad).await);
    for viewer in [&omar, &lena] {
        let view = seen(&app, viewer, ahmad).await;
        assert_eq!(view["online_status"], "online", "online is for everyone");
        assert_eq!(view["last_seen"], Value::Null, "{view}");
    }
}

#[tokio::test]
async fn reciprocity_a_viewer_hiding_their_last_seen_sees_no_one_elses() {
    let app = spawn_app().await;
    let (ahmad, ahmad_token) = app.user("ahmad").await;
    let (_, sara) = app.user("sara").await;
    let (_, omar) = app.user("omar").await;
    put_privacy(&app, &sara, &settings("nobody", "everyone")).await;

    let view = seen(&app, &sara, ahmad).await;
    assert_eq!(view["online_status"], "online");
    assert_eq!(view["last_seen"], Value::Null);
    assert_full_online(&seen(&app, &omar, ahmad).await);

    put_privacy(
        &app,
        &ahmad_token,
        &settings("everyone", "same_as_last_seen"),
    )
    .await;
    assert_eq!(seen(&app, &sara, ahmad).await, nothing(ahmad, "ahmad"));
    assert_full_online(&seen(&app, &omar, ahmad).await);

    put_privacy(&app, &sara, &settings("everyone", "everyone")).await;
    assert_full_online(&seen(&app, &sara, ahmad).await);
}

#[tokio::test]
async fn a_blocked_viewer_sees_nothing_until_unblocked() {
    let app = spawn_app().await;
    let (ahmad, ahmad_token) = app.user("ahmad").await;
    let (sara_id, sara) = app.user("sara").await;
    let (_, omar) = app.user("omar").await;
    add(&app, &ahmad_token, "contacts", sara_id).await;
    let blocked = add(&app, &ahmad_token, "blocked", sara_id).await;
    assert_eq!(blocked, json!({"id": sara_id, "username": "sara"}));

    assert_eq!(seen(&app, &sara, ahmad).await, nothing(ahmad, "ahmad"));
    assert_full_online(&seen(&app, &omar, ahmad).await);
    let list = expect(app.get("/api/users/me/blocked/", &ahmad_token).await, 200).await;
    assert_eq!(
        list,
        json!({"blocked": [{"id": sara_id, "username": "sara"}]})
    );
    assert_full_online(&seen(&app, &ahmad_token, sara_id).await);

    let path = format!("/api/users/me/blocked/{sara_id}");
    expect(app.delete(&path, &ahmad_token).await, 204).await;
    assert_full_online(&seen(&app, &sara, ahmad).await);
}

#[tokio::test]
async fn invisible_users_appear_offline_with_last_seen_frozen_while_their_sessions_work() {
    let app = spawn_app().await;
    let (ahmad, ahmad_token) = app.user("ahmad").await;
    let (_, sara) = app.user("sara").await;
    let (_, admin) = app.admin("root").await;
    let invisible = json!({"last_seen": "everyone", "online": "everyone", "invisible": true});
    let stored = put_privacy(&app, &ahmad_token, &invisible).await;
    assert_eq!(stored["invisible"], true);
    let since = stored["invisible_since"].clone();
    assert_eq!(
        app.status_of(&admin, ahmad).await["last_seen"],
        since,
        "frozen at the last_seen of the moment invisible mode was turned on"
    );

    wall_clock_past(timestamp(&since), Duration::ZERO).await;
    let heartbeat = expect(app.post("/api/users/heartbeat/", &ahmad_token).await, 200).await;
    assert_ne!(heartbeat["last_seen"], since, "the session works normally");
    let view = seen(&app, &sara, ahmad).await;
    assert_eq!(view["online_status"], "offline");
    assert_eq!(view["is_online"], false);
    assert_eq!(view["last_seen"], since);

    let own = expect(
        app.get(&format!("/api/users/{ahmad}/presence/"), &ahmad_token)
            .await,
        200,
    )
    .await;
    assert_full_online(&own);
    assert_ne!(own["last_seen"], since, "the owner sees the truth");
    let status = app.status_of(&admin, ahmad).await;
    assert_eq!(status["online_status"], "online", "admins see the truth");
    assert_ne!(status["last_seen"], since);

    let again = put_privacy(&app, &ahmad_token, &invisible).await;
    assert_eq!(
        again["invisible_since"], since,
        "staying invisible keeps the moment"
    );

    let visible = put_privacy(&app, &ahmad_token, &settings("everyone", "everyone")).await;
    assert_eq!(visible["invisible_since"], Value::Null);
    let view = seen(&app, &sara, ahmad).await;
    assert_full_online(&view);
    assert_ne!(view["last_seen"], since);
}

#[tokio::test]
async fn batch_queries_keep_request_order_skip_unknown_ids_and_are_limited() {
    let app = spawn_app().await;
    let (ahmad, token) = app.user("ahmad").await;
    let (omar, _) = app.user("omar").await;
    let (app_ref, token_ref) = (&app, &token);
    let query = |body: Value| async move {
        app_ref
            .send_json(Method::POST, "/api/presence/query", token_ref, &body)
            .await
    };

    let body = expect(
        query(json!({"user_ids": [omar, 999_999, ahmad, omar, -1]})).await,
        200,
    )
    .await;
    let ids: Vec<i64> = body["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [omar, ahmad]);
    let empty = expect(query(json!({"user_ids": []})).await, 200).await;
    assert_eq!(empty, json!({"users": []}));

    let at_limit: Vec<i64> = (1..=500).collect();
    expect(query(json!({"user_ids": at_limit})).await, 200).await;
    let over: Vec<i64> = (1..=501).collect();
    let error = expect_error(query(json!({"user_ids": over})).await, 400, "invalid").await;
    assert!(error["detail"].as_str().unwrap().contains("500"), "{error}");
    for bad in [
        json!({"user_ids": "1,2"}),
        json!({}),
        json!({"user_ids": [1], "extra": true}),
    ] {
        expect_error(query(bad).await, 400, "invalid").await;
    }
    let anonymous = app
        .post_json("/api/presence/query/", &json!({"user_ids": [ahmad]}))
        .await;
    expect_error(anonymous, 401, "not_authenticated").await;
}

#[tokio::test]
async fn single_reads_of_unknown_or_malformed_ids_are_404() {
    let app = spawn_app().await;
    let (ahmad, token) = app.user("ahmad").await;
    for path in [
        "/api/users/999999/presence/",
        "/api/users/abc/presence/",
        "/api/users/me/presence/",
    ] {
        expect_error(app.get(path, &token).await, 404, "not_found").await;
    }
    let path = format!("/api/users/{ahmad}/presence");
    let anonymous = app.client.get(app.url(&path)).send().await.unwrap();
    expect_error(anonymous, 401, "not_authenticated").await;
}

#[tokio::test]
async fn contact_and_block_lists_validate_their_input() {
    let app = spawn_app().await;
    let (ahmad, token) = app.user("ahmad").await;
    let (sara, sara_token) = app.user("sara").await;
    let (omar, _) = app.user("omar").await;
    for list in ["contacts", "blocked"] {
        let path = format!("/api/users/me/{list}/");
        let (app_ref, path_ref, token_ref) = (&app, &path, &token);
        let post = |body: Value| async move {
            app_ref
                .send_json(Method::POST, path_ref, token_ref, &body)
                .await
        };
        expect_error(post(json!({"user_id": ahmad})).await, 400, "invalid").await;
        expect_error(post(json!({"user_id": 999_999})).await, 404, "not_found").await;
        expect_error(post(json!({"user_id": "sara"})).await, 400, "invalid").await;
        expect_error(post(json!({})).await, 400, "invalid").await;
        add(&app, &token, list, omar).await;
        add(&app, &token, list, sara).await;
        expect_error(post(json!({"user_id": sara})).await, 409, "conflict").await;

        let listed = expect(app.get(&path, &token).await, 200).await;
        assert_eq!(
            listed[list],
            json!([{"id": sara, "username": "sara"}, {"id": omar, "username": "omar"}]),
            "ordered by id"
        );
        let others = expect(app.get(&path, &sara_token).await, 200).await;
        assert_eq!(others[list], json!([]), "lists are per user");

        for missing in ["999999", "abc"] {
            let response = app.delete(&format!("{path}{missing}/"), &token).await;
            expect_error(response, 404, "not_found").await;
        }
        expect(app.delete(&format!("{path}{sara}"), &token).await, 204).await;
        let again = app.delete(&format!("{path}{sara}"), &token).await;
        expect_error(again, 404, "not_found").await;
    }
    let malformed = app
        .client
        .post(app.url("/api/users/me/contacts/"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    expect_error(malformed, 400, "parse_error").await;
}

#[tokio::test]
async fn privacy_settings_reject_bad_input_and_never_default_a_missing_field() {
    let app = spawn_app().await;
    let (ahmad, token) = app.user("ahmad").await;
    let (sara, _) = app.user("sara").await;
    let (app_ref, token_ref) = (&app, &token);
    let put = |body: Value| async move {
        app_ref
            .send_json(Method::PUT, "/api/users/me/privacy", token_ref, &body)
            .await
    };
    for bad in [
        json!({"last_seen": "friends", "online": "everyone", "invisible": false}),
        json!({"last_seen": "nobody", "invisible": false}),
        json!({"last_seen": "nobody", "online": "everyone"}),
        json!({"last_seen": "nobody", "online": "everyone", "invisible": "yes"}),
        json!({"last_seen": "nobody", "online": "everyone", "invisible": false, "colour": 1}),
        json!({"last_seen": "contacts_except", "online": "everyone", "invisible": false, "except": ["sara"]}),
        json!({"last_seen": "contacts_except", "online": "everyone", "invisible": false, "except": [ahmad]}),
    ] {
        expect_error(put(bad).await, 400, "invalid").await;
    }
    let unknown = json!({"last_seen": "contacts_except", "online": "everyone", "invisible": false, "except": [sara, 999_999]});
    let error = expect_error(put(unknown).await, 400, "invalid").await;
    assert!(
        error["detail"].as_str().unwrap().contains("999999"),
        "{error}"
    );

    let current = expect(app.get("/api/users/me/privacy/", &token).await, 200).await;
    assert_eq!(current["last_seen"], "everyone", "nothing half-applied");
    assert_eq!(current["except"], json!([]));

    let body = json!({"last_seen": "nobody", "except": [sara], "online": "same_as_last_seen", "invisible": false});
    put_privacy(&app, &token, &body).await;
    let current = expect(app.get("/api/users/me/privacy", &token).await, 200).await;
    assert_eq!(
        current,
        json!({"last_seen": "nobody", "except": [sara], "online": "same_as_last_seen", "invisible": false, "invisible_since": null})
    );
}

#[tokio::test]
async fn coarse_last_seen_replaces_a_hidden_last_seen_when_enabled() {
    let app = spawn_app_with(|s| s.last_seen_approx = true).await;
    let (ahmad, ahmad_token) = app.user("ahmad").await;
    let (_, sara) = app.user("sara").await;
    let (omar_id, omar) = app.user("omar").await;
    put_privacy(&app, &ahmad_token, &settings("nobody", "everyone")).await;
    add(&app, &ahmad_token, "blocked", omar_id).await;

    let view = seen(&app, &sara, ahmad).await;
    assert_eq!(view["last_seen"], Value::Null);
    assert_eq!(view["last_seen_approx"], "recently");
    assert_eq!(
        seen(&app, &omar, ahmad).await,
        nothing(ahmad, "ahmad"),
        "a blocked viewer gets not even the coarse form"
    );
    let reciprocal = seen(&app, &ahmad_token, omar_id).await;
    assert_eq!(reciprocal["last_seen"], Value::Null, "reciprocity");
    assert_eq!(reciprocal["last_seen_approx"], "recently");
    assert_full_online(&seen(&app, &sara, omar_id).await);
}

#[tokio::test]
async fn admins_see_through_privacy_on_every_endpoint() {
    let app = spawn_app().await;
    let (ahmad, ahmad_token) = app.user("ahmad").await;
    let (root, admin) = app.admin("root").await;
    let hidden = json!({"last_seen": "nobody", "online": "same_as_last_seen", "invisible": true});
    put_privacy(&app, &ahmad_token, &hidden).await;
    add(&app, &ahmad_token, "blocked", root).await;

    assert_full_online(&seen(&app, &admin, ahmad).await);
    let status = app.status_of(&admin, ahmad).await;
    assert_eq!(status["online_status"], "online");
    let online = expect(app.get("/api/users/admin/users/online/", &admin).await, 200).await;
    assert!(
        online["online_users"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["id"] == ahmad),
        "{online}"
    );
}

#[tokio::test]
async fn privacy_data_survives_a_restart() {
    let app = spawn_app().await;
    let (ahmad, ahmad_token) = app.user("ahmad").await;
    let (sara_id, _) = app.user("sara").await;
    let (omar_id, _) = app.user("omar").await;
    put_privacy(
        &app,
        &ahmad_token,
        &settings("contacts", "same_as_last_seen"),
    )
    .await;
    add(&app, &ahmad_token, "contacts", sara_id).await;
    add(&app, &ahmad_token, "blocked", omar_id).await;
    let (settings, dir) = (app.settings.clone(), app.dir.clone());
    app.stop().await;

    let app = start(settings, dir).await;
    let sara = app.token("sara").await;
    let omar = app.token("omar").await;
    let (_, lena) = app.user("lena").await;
    assert!(seen(&app, &sara, ahmad).await["online_status"].is_string());
    assert_eq!(seen(&app, &omar, ahmad).await, nothing(ahmad, "ahmad"));
    assert_eq!(seen(&app, &lena, ahmad).await, nothing(ahmad, "ahmad"));
    let current = expect(app.get("/api/users/me/privacy/", &ahmad_token).await, 200).await;
    assert_eq!(current["last_seen"], "contacts");
}

#[tokio::test]
async fn every_write_is_published_for_the_push_layer() {
    let app = spawn_app().await;
    let (ahmad, token) = app.user("ahmad").await;
    let (sara, _) = app.user("sara").await;
    let mut changes = app.handle.privacy_changes();
    let ahmad_id = UserId(ahmad);

    put_privacy(&app, &token, &settings("nobody", "everyone")).await;
    assert_eq!(
        changes.try_recv().unwrap(),
        PrivacyChanged {
            user: ahmad_id,
            own_view_changed: true
        }
    );
    add(&app, &token, "contacts", sara).await;
    assert_eq!(
        changes.try_recv().unwrap(),
        PrivacyChanged {
            user: ahmad_id,
            own_view_changed: false
        }
    );

    // A write that changes nothing is still announced (the push layer re-filters and sends
    // nothing); a refused one is not.
    put_privacy(&app, &token, &settings("nobody", "everyone")).await;
    assert_eq!(changes.try_recv().unwrap().user, ahmad_id);
    let duplicate = json!({"user_id": sara});
    let response = app
        .send_json(Method::POST, "/api/users/me/contacts/", &token, &duplicate)
        .await;
    expect_error(response, 409, "conflict").await;
    assert!(changes.try_recv().is_err(), "no event for a refused change");
}
