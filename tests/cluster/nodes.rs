//! `lastseen serve` processes sharing one PostgreSQL database and one Redis, as an operator
//! runs several nodes, with short timeouts so tests take seconds.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Sessions end this long after their last activity.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// A closed socket's session ends this long after the close.
pub const GRACE: Duration = Duration::from_millis(500);
/// A node's hold on its sockets' sessions.
pub const LEASE: Duration = Duration::from_secs(1);

/// Where the nodes keep their state.
#[derive(Clone)]
pub struct Shared {
    pub database_url: String,
    pub redis_url: String,
    pub prefix: String,
    /// More `LASTSEEN_*` variables for every node.
    pub env: Vec<(String, String)>,
}

impl Shared {
    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lastseen"));
        for (name, _) in std::env::vars() {
            if name.starts_with("LASTSEEN_") {
                command.env_remove(name);
            }
        }
        command
            .env("RUST_LOG", "warn")
            .env("LASTSEEN_DATABASE_URL", &self.database_url)
            .env("LASTSEEN_REDIS_URL", &self.redis_url)
            .env("LASTSEEN_REDIS_KEY_PREFIX", &self.prefix)
            .env(
                "LASTSEEN_INACTIVITY_TIMEOUT",
                format!("{}ms", TIMEOUT.as_millis()),
            )
            .env(
                "LASTSEEN_DISCONNECT_GRACE",
                format!("{}ms", GRACE.as_millis()),
            )
            .env("LASTSEEN_NODE_LEASE", format!("{}ms", LEASE.as_millis()))
            .env("LASTSEEN_PERSIST_INTERVAL", "200ms")
            .env("LASTSEEN_PING_INTERVAL", "5s")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// `lastseen user create NAME --admin` with password `password123`.
    pub fn create_admin(&self, name: &str) {
        use std::io::Write;
        let mut child = self
            .command()
            .args(["user", "create", name, "--admin", "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"password123\n")
            .unwrap();
        assert!(child.wait().unwrap().success(), "user create");
    }

    /// Starts a node and waits until it is ready.
    pub async fn node(&self) -> Node {
        let mut child = self
            .command()
            .args(["serve", "--bind", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).unwrap();
            line
        })
        .await
        .unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        let node = Node {
            child,
            base,
            client: reqwest::Client::new(),
        };
        node.until_ready(Duration::from_secs(10)).await;
        node
    }
}

/// One running node.
pub struct Node {
    child: Child,
    pub base: String,
    pub client: reqwest::Client,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    /// Power loss: SIGKILL, nothing flushed or closed.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn ready(&self) -> u16 {
        match self
            .client
            .get(format!("{}/readyz", self.base))
            .send()
            .await
        {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        }
    }

    pub async fn until_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.ready().await != 200 {
            assert!(
                Instant::now() < deadline,
                "{} not ready in {within:?}",
                self.base
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A request; returns status and JSON body (null if none).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if !body.is_null() {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn register(&self, name: &str) -> i64 {
        let body = json!({"username": name, "password": "password123"});
        let (status, created) = self.call("POST", "/api/users/register/", None, body).await;
        assert_eq!(status, 201, "{created}");
        created["id"].as_i64().unwrap()
    }

    pub async fn login(&self, name: &str) -> String {
        let body = json!({"username": name, "password": "password123"});
        let (status, login) = self.call("POST", "/api/users/login/", None, body).await;
        assert_eq!(status, 200, "{login}");
        login["access"].as_str().unwrap().to_owned()
    }

    /// The admin view of a user's status.
    pub async fn status_of(&self, admin: &str, user: i64) -> String {
        let path = format!("/api/users/admin/users/{user}/online-status/");
        let (status, body) = self.call("GET", &path, Some(admin), Value::Null).await;
        assert_eq!(status, 200, "{body}");
        body["online_status"].as_str().unwrap().to_owned()
    }

    /// The sum of a counter over all its label sets.
    pub async fn counter(&self, name: &str, label: &str) -> f64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|line| line.starts_with(name) && line.contains(label))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub async fn socket(&self, token: &str) -> Socket {
        let url = format!("{}/api/presence/ws", self.base.replacen("http", "ws", 1));
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (stream, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        Socket { stream }
    }
}

/// A presence socket.
pub struct Socket {
    stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Socket {
    pub async fn send(&mut self, value: Value) {
        self.stream
            .send(Message::Text(value.to_string().into()))
            .await
            .unwrap();
    }

    /// The next JSON message within `within` (past the `ready` a socket opens with), or
    /// `None`.
    pub async fn next(&mut self, within: Duration) -> Option<Value> {
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    let message: Value = serde_json::from_str(&text).ok()?;
                    if message["type"] != "ready" {
                        return Some(message);
                    }
                }
                Ok(Some(Ok(_))) => continue,
                Ok(_) | Err(_) => return None,
            }
        }
    }

    /// Subscribes and returns the snapshot.
    pub async fn subscribe(&mut self, ids: &[i64]) -> Value {
        self.send(json!({"type": "subscribe", "user_ids": ids}))
            .await;
        let snapshot = self.next(Duration::from_secs(5)).await.expect("snapshot");
        assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
        snapshot
    }

    /// The next presence event of `user`, within `within`.
    pub async fn presence_of(&mut self, user: i64, within: Duration) -> Option<Value> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = self.next(left).await?;
            if message["type"] == "presence" && message["user_id"] == user {
                return Some(message);
            }
        }
    }
}
