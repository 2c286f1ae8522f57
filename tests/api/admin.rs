use serde_json::{Value, json};

use crate::helpers::{expect, expect_error, spawn_app};

#[tokio::test]
async fn the_online_list_has_the_seed_shape_and_counts_everyone() {
    let app = spawn_app().await;
    let (admin_id, admin) = app.admin("root").await;
    let (ahmad, _) = app.user("ahmad").await;
    let (sara, _) = app.user("sara").await;
    let (gone, gone_token) = app.user("gone").await;
    expect(app.post("/api/users/logout/", &gone_token).await, 200).await;

    let body: Value = expect(app.get("/api/users/admin/users/online/", &admin).await, 200).await;
    let users = body["online_users"].as_array().unwrap();
    let ids: Vec<i64> = users.iter().map(|u| u["id"].as_i64().unwrap()).collect();
    assert_eq!(
        ids,
        [admin_id, ahmad, sara],
        "ordered by id, without the logged-out user"
    );
    assert!(!ids.contains(&gone));
    assert_eq!(body["online_count"].as_u64().unwrap() as usize, users.len());
    let first = &users[0];
    for key in ["id", "username", "online_status", "last_seen", "is_online"] {
        assert!(first.get(key).is_some(), "missing {key} in {first}");
    }
    assert_eq!(first["online_status"], "online");
    assert_eq!(first["is_online"], true);
}

#[tokio::test]
async fn the_online_list_pages_by_id_and_keeps_the_total() {
    let app = spawn_app().await;
    let (_, admin) = app.admin("root").await;
    for i in 0..5 {
        app.user(&format!("user{i}")).await;
    }
    let page1 = expect(
        app.get("/api/users/admin/users/online/?limit=2", &admin)
            .await,
        200,
    )
    .await;
    assert_eq!(page1["online_users"].as_array().unwrap().len(), 2);
    assert_eq!(page1["online_count"], 6);
    let after = page1["next_after"].as_i64().unwrap();
    let page2 = expect(
        app.get(
            &format!("/api/users/admin/users/online?limit=10&after={after}"),
            &admin,
        )
        .await,
        200,
    )
    .await;
    let ids: Vec<i64> = page2["online_users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 4);
    assert!(ids.iter().all(|id| *id > after));
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(page2["online_count"], 6);
    assert_eq!(page2["next_after"], Value::Null);
}

#[tokio::test]
async fn bad_paging_parameters_are_400() {
    let app = spawn_app().await;
    let (_, admin) = app.admin("root").await;
    for query in ["limit=0", "limit=1001", "limit=abc", "after=x"] {
        let path = format!("/api/users/admin/users/online/?{query}");
        expect_error(app.get(&path, &admin).await, 400, "invalid").await;
    }
}

#[tokio::test]
async fn user_status_has_the_seed_shape() {
    let app = spawn_app().await;
    let (_, admin) = app.admin("root").await;
    let (id, _) = app.user("ahmad").await;
    let body = app.status_of(&admin, id).await;
    assert_eq!(body.as_object().unwrap().len(), 9, "{body}");
    assert_eq!(body["availability"], "active");
    assert_eq!(body["platforms"], json!(["web"]));
    assert_eq!(
        (&body["status_text"], &body["status_emoji"]),
        (&Value::Null, &Value::Null)
    );
    assert_eq!(body["user_id"], id);
    assert_eq!(body["username"], "ahmad");
    assert_eq!(body["online_status"], "online");
    assert_eq!(body["is_online"], true);
    assert!(body["last_seen"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn a_never_active_user_is_offline_with_null_last_seen() {
    let app = spawn_app().await;
    let (_, admin) = app.admin("root").await;
    let created = expect(app.register("quiet", "password123").await, 201).await;
    let body = app.status_of(&admin, created["id"].as_i64().unwrap()).await;
    assert_eq!(body["online_status"], "offline");
    assert_eq!(body["is_online"], false);
    assert_eq!(body["last_seen"], Value::Null);
}

#[tokio::test]
async fn admin_endpoints_are_403_for_ordinary_users_and_401_without_a_token() {
    let app = spawn_app().await;
    let (id, token) = app.user("ahmad").await;
    let status = format!("/api/users/admin/users/{id}/online-status/");
    for path in ["/api/users/admin/users/online/", status.as_str()] {
        expect_error(app.get(path, &token).await, 403, "permission_denied").await;
        let anonymous = app.client.get(app.url(path)).send().await.unwrap();
        expect_error(anonymous, 401, "not_authenticated").await;
    }
}

#[tokio::test]
async fn unknown_users_are_404() {
    let app = spawn_app().await;
    let (_, admin) = app.admin("root").await;
    for path in [
        "/api/users/admin/users/99999/online-status/",
        "/api/users/admin/users/abc/online-status/",
    ] {
        expect_error(app.get(path, &admin).await, 404, "not_found").await;
    }
}
