//! Three `lastseen serve` nodes on one PostgreSQL database and one Redis act as one presence
//! service: the same answer on every node, every transition announced once, every subscriber on
//! every node told, revocations and privacy changes applied everywhere at once, and a killed
//! node's sockets released within `node_lease` + `disconnect_grace`.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::backends::{delete_keys, machine_redis, unique_prefix};
use crate::nodes::{GRACE, LEASE, Node, Shared, TIMEOUT};
use crate::pg::with_postgres_database;

/// Runs `body` with the shared state of a fresh deployment (a new database, a new prefix on
/// the machine's Redis).
async fn deployment<F, Fut>(test: &str, body: F)
where
    F: FnOnce(Shared) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let redis_url = machine_redis();
    with_postgres_database(test, |database_url| async move {
        let shared = Shared {
            database_url,
            redis_url: redis_url.clone(),
            prefix: unique_prefix(),
            env: Vec::new(),
        };
        let prefix = shared.prefix.clone();
        body(shared).await;
        delete_keys(&redis_url, &prefix);
    })
    .await;
}

/// Three nodes; the first starts alone (it migrates the database).
async fn three(shared: &Shared) -> (Node, Node, Node) {
    let a = shared.node().await;
    let (b, c) = tokio::join!(shared.node(), shared.node());
    (a, b, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_give_one_answer_and_announce_each_transition_once() {
    deployment("three_nodes_give_one_answer", |shared| async move {
        let (a, b, c) = three(&shared).await;
        shared.create_admin("root");
        let admin = a.login("root").await;
        let ahmad = a.register("ahmad").await;
        c.register("sara").await;
        let mut on_c = c.socket(&c.login("sara").await).await;
        let mut on_b = b.socket(&b.login("root").await).await;
        assert_eq!(
            on_c.subscribe(&[ahmad]).await["users"][0]["online_status"],
            "offline"
        );
        on_b.subscribe(&[ahmad]).await;
        let offline_before: f64 = [&a, &b, &c]
            .map(|n| n.counter("lastseen_presence_transitions_total", "to=\"offline\""))
            .into_iter()
            .collect::<futures_util::future::JoinAll<_>>()
            .await
            .into_iter()
            .sum();

        // A login and a heartbeat on A: every node answers online, subscribers on B and C
        // hear it.
        let token = a.login("ahmad").await;
        let (status, _) = a
            .call("POST", "/api/users/heartbeat/", Some(&token), Value::Null)
            .await;
        assert_eq!(status, 200);
        for node in [&a, &b, &c] {
            assert_eq!(node.status_of(&admin, ahmad).await, "online");
        }
        let online = on_c
            .presence_of(ahmad, Duration::from_secs(2))
            .await
            .expect("online on C");
        assert_eq!(online["online_status"], "online");
        assert_eq!(
            online["username"], "ahmad",
            "the name crosses nodes too: {online}"
        );
        assert_eq!(
            on_b.presence_of(ahmad, Duration::from_secs(2))
                .await
                .unwrap()["online_status"],
            "online"
        );

        // Heartbeats on B keep him online on every node.
        for _ in 0..2 {
            tokio::time::sleep(TIMEOUT / 2).await;
            let (status, _) = b
                .call("POST", "/api/users/heartbeat/", Some(&token), Value::Null)
                .await;
            assert_eq!(status, 200);
        }
        assert_eq!(c.status_of(&admin, ahmad).await, "online");
        let last = b
            .call("GET", "/api/users/me/", Some(&token), Value::Null)
            .await
            .1;

        // Silence: one offline transition in total, heard by both subscribers, in order.
        let offline = on_c
            .presence_of(ahmad, TIMEOUT + Duration::from_secs(2))
            .await
            .expect("offline on C");
        assert_eq!(offline["online_status"], "offline");
        assert_eq!(
            offline["last_seen"], last["last_seen"],
            "last_seen is the last activity"
        );
        assert!(offline["seq"].as_u64() > online["seq"].as_u64());
        let on_b_offline = on_b
            .presence_of(ahmad, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(
            on_b_offline["seq"], offline["seq"],
            "the same event everywhere"
        );
        assert!(
            on_c.presence_of(ahmad, Duration::from_millis(800))
                .await
                .is_none(),
            "only once"
        );
        let offline_after: f64 = [&a, &b, &c]
            .map(|n| n.counter("lastseen_presence_transitions_total", "to=\"offline\""))
            .into_iter()
            .collect::<futures_util::future::JoinAll<_>>()
            .await
            .into_iter()
            .sum();
        assert_eq!(
            offline_after - offline_before,
            1.0,
            "one offline transition across nodes"
        );
        for node in [&a, &b, &c] {
            assert_eq!(node.status_of(&admin, ahmad).await, "offline");
        }
        let (_, page) = b
            .call(
                "GET",
                "/api/users/admin/users/online/",
                Some(&admin),
                Value::Null,
            )
            .await;
        assert!(
            page["online_users"]
                .as_array()
                .unwrap()
                .iter()
                .all(|u| u["id"] != ahmad)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_and_a_privacy_change_on_one_node_apply_on_the_others_at_once() {
    deployment("logout_and_privacy_across_nodes", |shared| async move {
        let (a, b, _c) = three(&shared).await;
        let ahmad = a.register("ahmad").await;
        a.register("sara").await;
        let token = a.login("ahmad").await;
        let sara = a.login("sara").await;
        // Both nodes have the token cached.
        assert_eq!(
            a.call("GET", "/api/users/me/", Some(&token), Value::Null)
                .await
                .0,
            200
        );
        assert_eq!(
            b.call("GET", "/api/users/me/", Some(&token), Value::Null)
                .await
                .0,
            200
        );

        let privacy =
            json!({"last_seen": "nobody", "online": "same_as_last_seen", "invisible": false});
        let (status, _) = b
            .call("PUT", "/api/users/me/privacy/", Some(&token), privacy)
            .await;
        assert_eq!(status, 200);
        let path = format!("/api/users/{ahmad}/presence/");
        let (_, seen) = a.call("GET", &path, Some(&sara), Value::Null).await;
        assert_eq!(
            seen["last_seen"],
            Value::Null,
            "hidden on A at once: {seen}"
        );
        assert_eq!(seen["online_status"], Value::Null, "{seen}");

        let (status, _) = b
            .call("POST", "/api/users/logout/", Some(&token), Value::Null)
            .await;
        assert_eq!(status, 200);
        let (status, body) = a
            .call("GET", "/api/users/me/", Some(&token), Value::Null)
            .await;
        assert_eq!(status, 401, "refused on A at once: {body}");
        let (status, _) = a
            .call("POST", "/api/users/heartbeat/", Some(&token), Value::Null)
            .await;
        assert_eq!(status, 401);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_revoked_sockets_cross_nodes() {
    deployment("typing_across_nodes", |shared| async move {
        let (a, b, _c) = three(&shared).await;
        let ahmad = a.register("ahmad").await;
        let sara = a.register("sara").await;
        let ahmad_token = a.login("ahmad").await;
        let sara_token = b.login("sara").await;
        let mut sara_on_b = b.socket(&sara_token).await;
        sara_on_b.subscribe(&[ahmad]).await;
        let mut ahmad_on_a = a.socket(&ahmad_token).await;
        ahmad_on_a.send(json!({"type": "typing", "to": sara})).await;
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let message = sara_on_b
                .next(deadline - Instant::now())
                .await
                .expect("typing on B");
            if message["type"] == "typing" {
                assert_eq!(message["from"], ahmad);
                break;
            }
        }
        // Logging out on B closes the session's socket on A with 4401.
        let (status, _) = b
            .call(
                "POST",
                "/api/users/logout/",
                Some(&ahmad_token),
                Value::Null,
            )
            .await;
        assert_eq!(status, 200);
        assert!(
            ahmad_on_a.next(Duration::from_secs(3)).await.is_none(),
            "closed"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_releases_its_sockets_within_the_lease_and_the_grace() {
    deployment("killed_node_releases_sockets", |shared| async move {
        let (a, b, mut c) = three(&shared).await;
        shared.create_admin("root");
        let admin = a.login("root").await;
        let ahmad = a.register("ahmad").await;
        let token = c.login("ahmad").await;
        let _socket = c.socket(&token).await;
        let mut watcher = b.socket(&admin).await;
        watcher.subscribe(&[ahmad]).await;
        // Past the login's own timeout: only the socket on C holds the session now.
        tokio::time::sleep(TIMEOUT + Duration::from_millis(500)).await;
        assert_eq!(a.status_of(&admin, ahmad).await, "online");

        c.kill();
        let killed = Instant::now();
        let bound = LEASE + GRACE + Duration::from_secs(1);
        let offline = watcher
            .presence_of(ahmad, bound + Duration::from_secs(2))
            .await;
        let waited = killed.elapsed();
        assert_eq!(
            offline.expect("offline after the node died")["online_status"],
            "offline"
        );
        assert!(
            waited <= bound,
            "within node_lease + disconnect_grace (+1 s): {waited:?}"
        );
        assert_eq!(a.status_of(&admin, ahmad).await, "offline");
    })
    .await;
}

/// A webhook endpoint on a free port that records the events it is sent.
async fn webhook_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use std::sync::{Arc, Mutex};
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let sink = sink.clone();
            async move {
                let body: Value = serde_json::from_str(&body).unwrap();
                let events = body["events"].as_array().unwrap().clone();
                sink.lock().unwrap().extend(events);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_send_each_change_to_a_webhook_once_and_in_order() {
    let (url, received) = webhook_receiver().await;
    deployment(
        "three_nodes_send_each_change_once",
        |mut shared| async move {
            shared.env = vec![
                ("LASTSEEN_WEBHOOK_URLS".into(), url),
                ("LASTSEEN_WEBHOOK_SECRET".into(), "whsec_cluster".into()),
            ];
            let (a, b, c) = three(&shared).await;
            let ahmad = a.register("ahmad").await;
            for (login_on, logout_on) in [(&b, &c), (&a, &b)] {
                let token = login_on.login("ahmad").await;
                let (status, _) = logout_on
                    .call("POST", "/api/users/logout/", Some(&token), Value::Null)
                    .await;
                assert_eq!(status, 200);
            }
            let of_ahmad = || -> Vec<Value> {
                received
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|e| e["user_id"] == ahmad)
                    .cloned()
                    .collect()
            };
            let deadline = Instant::now() + Duration::from_secs(15);
            while of_ahmad().len() < 4 {
                assert!(Instant::now() < deadline, "four changes: {:?}", of_ahmad());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Time for any duplicate from another node to arrive.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let events = of_ahmad();
            let statuses: Vec<&str> = events
                .iter()
                .map(|e| e["online_status"].as_str().unwrap())
                .collect();
            assert_eq!(
                statuses,
                ["online", "offline", "online", "offline"],
                "{events:?}"
            );
            let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
        },
    )
    .await;
}

/// An HS256 access token of user `user_id` with `jti`, valid for an hour.
fn jwt(secret: &str, user_id: i64, jti: &str) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = B64.encode(json!({"alg": "HS256", "typ": "JWT"}).to_string());
    let claims = json!({"token_type": "access", "exp": now + 3600, "jti": jti, "user_id": user_id});
    let input = format!("{header}.{}", B64.encode(claims.to_string()));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", B64.encode(tag.as_ref()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_is_one_session_on_every_node_and_its_revocation_holds_everywhere() {
    deployment("jwt_across_nodes", |mut shared| async move {
        let secret = "cluster-test-secret";
        shared
            .env
            .push(("LASTSEEN_JWT_HS256_SECRET".into(), secret.into()));
        let (a, b, _c) = three(&shared).await;
        let phone = jwt(secret, 77, "phone");
        let laptop = jwt(secret, 77, "laptop");
        let (status, on_a) = a
            .call("GET", "/api/users/me/", Some(&phone), Value::Null)
            .await;
        assert_eq!(status, 200, "{on_a}");
        let (status, on_b) = b
            .call("GET", "/api/users/me/", Some(&phone), Value::Null)
            .await;
        assert_eq!((status, &on_b["id"]), (200, &on_a["id"]), "{on_b}");
        let mut socket = a.socket(&phone).await;

        let (_, listed) = b
            .call("GET", "/api/users/me/sessions/", Some(&laptop), Value::Null)
            .await;
        let sessions = listed["sessions"].as_array().unwrap();
        assert_eq!(sessions.len(), 2, "one per token, whichever node: {listed}");
        // Newest first: the laptop's, then the phone's.
        let path = format!("/api/users/me/sessions/{}/", sessions[1]["id"]);
        let (status, body) = b.call("DELETE", &path, Some(&laptop), Value::Null).await;
        assert!((200..300).contains(&status), "{status} {body}");

        assert!(
            socket.next(Duration::from_secs(3)).await.is_none(),
            "closed"
        );
        for node in [&a, &b] {
            let (status, body) = node
                .call("GET", "/api/users/me/", Some(&phone), Value::Null)
                .await;
            assert_eq!(status, 401, "{body}");
        }
        let (status, _) = a
            .call("GET", "/api/users/me/", Some(&laptop), Value::Null)
            .await;
        assert_eq!(status, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_counted_across_nodes_in_redis() {
    deployment("failed_logins_across_nodes", |mut shared| async move {
        shared
            .env
            .push(("LASTSEEN_LOGIN_FAILURE_LIMIT".into(), "4/1m".into()));
        let a = shared.node().await;
        let b = shared.node().await;
        a.register("alice").await;
        let wrong = json!({"username": "alice", "password": "wrong-password"});
        for node in [&a, &b, &a, &b] {
            let (status, _) = node
                .call("POST", "/api/users/login/", None, wrong.clone())
                .await;
            assert_eq!(status, 401);
        }
        for node in [&a, &b] {
            let right = json!({"username": "alice", "password": "password123"});
            let (status, body) = node.call("POST", "/api/users/login/", None, right).await;
            assert_eq!(
                (status, body["code"].as_str()),
                (429, Some("throttled")),
                "{body}"
            );
        }
    })
    .await;
}
