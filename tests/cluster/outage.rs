//! Redis going away and coming back (empty, as a Redis without persistence does): requests
//! that need presence answer `503 presence_unavailable`, the node stays up, and within 5 s of
//! Redis returning it serves again with every session it had: HTTP sessions restored from the
//! database, socket-held sessions registered again by the node holding them. And two nodes on
//! a Redis Cluster.

use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::backends::unique_prefix;
use crate::nodes::{Node, Shared};
use crate::pg::with_postgres_database;
use crate::redis_servers::{RedisCluster, RedisServer};

/// Polls `check` every 50 ms until it holds, at most `within`; returns how long it took.
async fn until<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "{what} not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

async fn heartbeat(node: &Node, token: &str) -> (u16, Value) {
    node.call("POST", "/api/users/heartbeat/", Some(token), Value::Null)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_answers_503_and_recovers_by_itself_with_every_session() {
    let test = "redis_outage";
    let Some(mut redis) = RedisServer::start(test) else {
        return;
    };
    let redis_url = redis.url();
    with_postgres_database(test, |database_url| async move {
        let shared = Shared {
            database_url,
            redis_url,
            prefix: unique_prefix(),
            env: Vec::new(),
        };
        let node = shared.node().await;
        shared.create_admin("root");
        let admin = node.login("root").await;
        let ahmad = node.register("ahmad").await;
        let sara = node.register("sara").await;
        let ahmad_token = node.login("ahmad").await;
        let sara_token = node.login("sara").await;
        let _sara_socket = node.socket(&sara_token).await;
        assert_eq!(heartbeat(&node, &ahmad_token).await.0, 200);
        // Let the persister write both sessions.
        tokio::time::sleep(Duration::from_millis(500)).await;

        redis.stop();
        let refused = until(
            Duration::from_secs(5),
            "503 while Redis is down",
            || async { heartbeat(&node, &ahmad_token).await.0 == 503 },
        )
        .await;
        let (status, body) = heartbeat(&node, &ahmad_token).await;
        assert_eq!(status, 503);
        assert_eq!(body["code"], "presence_unavailable", "{body}");
        assert_eq!(node.ready().await, 503, "/readyz says so");
        let (health, _) = node.call("GET", "/healthz", None, Value::Null).await;
        assert_eq!(health, 200, "the node stays up");
        assert!(
            refused < Duration::from_secs(3),
            "refused quickly: {refused:?}"
        );

        redis.restart();
        let recovered = until(
            Duration::from_secs(5),
            "recovery after Redis is back",
            || async { node.ready().await == 200 && heartbeat(&node, &ahmad_token).await.0 == 200 },
        )
        .await;
        assert!(recovered <= Duration::from_secs(5), "{recovered:?}");
        // Sara's only session is held by her socket: registered again, she is online.
        until(
            Duration::from_secs(5),
            "the socket's session registered again",
            || async { node.status_of(&admin, sara).await == "online" },
        )
        .await;
        assert_eq!(node.status_of(&admin, ahmad).await, "online");
        let (status, _) = node
            .call("GET", "/api/users/me/", Some(&sara_token), Value::Null)
            .await;
        assert_eq!(status, 200, "tokens issued before the outage still work");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_presence_on_a_redis_cluster() {
    let test = "two_nodes_on_redis_cluster";
    let Some(cluster) = RedisCluster::start(test) else {
        return;
    };
    let redis_url = cluster.url();
    with_postgres_database(test, |database_url| async move {
        let shared = Shared {
            database_url,
            redis_url,
            prefix: unique_prefix(),
            env: Vec::new(),
        };
        let a = shared.node().await;
        let b = shared.node().await;
        shared.create_admin("root");
        let admin = b.login("root").await;
        let mut ids = Vec::new();
        for n in 0..6 {
            ids.push(a.register(&format!("user{n}")).await);
        }
        let mut watcher = b.socket(&admin).await;
        watcher.subscribe(&ids).await;
        // Each user is checked right after their login: the deployment's inactivity timeout
        // is 2 s, which a loaded machine can spend on six password checks.
        let mut tokens = Vec::new();
        for (n, &id) in ids.iter().enumerate() {
            tokens.push(a.login(&format!("user{n}")).await);
            let online = watcher.presence_of(id, Duration::from_secs(3)).await;
            assert_eq!(online.expect("online on B")["online_status"], "online");
            assert_eq!(b.status_of(&admin, id).await, "online");
        }
        for token in &tokens {
            let (status, _) = a
                .call("POST", "/api/users/heartbeat/", Some(token), Value::Null)
                .await;
            assert_eq!(status, 200, "everyone live again before the count");
        }
        let (_, page) = b
            .call(
                "GET",
                "/api/users/admin/users/online/",
                Some(&admin),
                Value::Null,
            )
            .await;
        assert!(page["online_count"].as_u64() >= Some(6), "{page}");
        let (status, _) = b
            .call("POST", "/api/users/logout/", Some(&tokens[0]), Value::Null)
            .await;
        assert_eq!(status, 200);
        let offline = watcher.presence_of(ids[0], Duration::from_secs(3)).await;
        assert_eq!(offline.expect("offline on B")["online_status"], "offline");
        assert_eq!(a.status_of(&admin, ids[0]).await, "offline");
    })
    .await;
}
