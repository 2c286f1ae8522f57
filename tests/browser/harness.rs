//! Reusable pieces for browser tests: the server on port 0 with its own SQLite file, chromedriver,
//! and one headless Chromium per profile (each profile is a separate browser with its own cookies
//! and storage), driven over the WebDriver protocol with plain HTTP.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lastseen::settings::Settings;
use lastseen::startup::App;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The real server on port 0 with its own SQLite file in a temporary directory.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub base: String,
    /// Holds the database and the browser profiles; removed on drop.
    pub dir: tempfile::TempDir,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    /// Starts the server with test settings (a short disconnect grace), changed by `configure`.
    pub async fn start(configure: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings {
            bind: "127.0.0.1:0".parse().unwrap(),
            database_url: format!("sqlite://{}", dir.path().join("browser.db").display()),
            disconnect_grace: Duration::from_millis(500),
            ..Settings::default()
        };
        configure(&mut settings);
        let app = App::build(settings).await.unwrap();
        let base = format!("http://{}", app.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(app.run(shutdown.clone()));
        Self {
            base,
            dir,
            shutdown,
            server,
        }
    }

    /// A fresh browser profile directory inside this server's temporary directory.
    pub fn profile(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}-profile"))
    }

    /// Shuts the server down and asserts a clean exit.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.server.await.unwrap().unwrap();
    }
}

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Driver {
    child: Child,
    base: String,
    client: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while driver
            .client
            .get(format!("{}/status", driver.base))
            .send()
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver
    }

    pub async fn browser(&self, profile: &Path) -> Browser {
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", profile.display()),
                ]
            }
        }}});
        let response: Value = self
            .client
            .post(format!("{}/session", self.base))
            .json(&capabilities)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = response["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {response}"));
        Browser {
            url: format!("{}/session/{id}", self.base),
            client: self.client.clone(),
        }
    }
}

pub struct Browser {
    url: String,
    client: reqwest::Client,
}

impl Browser {
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let response: Value = self
            .client
            .request(method, format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if response["value"].get("error").is_some() {
            panic!("WebDriver {path}: {response}");
        }
        response["value"].clone()
    }

    pub async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({"url": url}))
            .await;
    }

    pub async fn element(&self, css: &str) -> String {
        let found = self
            .call(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        // An element reference is an object with one (vendor-neutral) key.
        let reference = found.as_object().and_then(|o| o.values().next());
        reference
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            json!({"text": text}),
        )
        .await;
    }

    pub async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            json!({}),
        )
        .await;
    }

    pub async fn eval(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// Polls `script` until it returns `true`.
    pub async fn wait_for(&self, what: &str, script: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            if self.eval(script).await == Value::Bool(true) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Opens the demo page signed out and signs in as `username` (password `password123`).
    pub async fn log_in(&self, base: &str, username: &str) {
        self.open(&format!("{base}/")).await;
        // The page asks the server first whether its cookie is signed in.
        self.wait_for(
            "the sign-in form",
            "return !document.getElementById('login-view').classList.contains('hidden')",
        )
        .await;
        self.type_into("#username", username).await;
        self.type_into("#password", "password123").await;
        self.click("#login").await;
        self.wait_for(
            "the main view",
            "return !document.getElementById('main-view').classList.contains('hidden')",
        )
        .await;
    }

    /// Sets a form control's value (e.g. a `<select>`) as if the user had picked it.
    pub async fn set_value(&self, css: &str, value: &str) {
        let script = format!(
            "const e = document.querySelector({css}); e.value = {value}; \
             e.dispatchEvent(new Event('change', {{bubbles: true}})); return e.value === {value}",
            css = json!(css),
            value = json!(value),
        );
        assert_eq!(
            self.eval(&script).await,
            Value::Bool(true),
            "no option {value} in {css}"
        );
    }

    /// Resizes the browser window (the viewport follows in headless mode).
    pub async fn resize(&self, width: u32, height: u32) {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            json!({"width": width, "height": height}),
        )
        .await;
    }

    pub async fn quit(self) {
        let _ = self.client.delete(&self.url).send().await;
    }
}

pub fn browser_available() -> bool {
    let present = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !present {
        assert!(
            std::env::var("LASTSEEN_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "chromium/chromedriver missing but LASTSEEN_REQUIRE_SERVICES=1 (scripts/test installs them)"
        );
        // Straight to the process's standard error: the harness captures `eprintln!` of a
        // passing test, which would hide that nothing was checked.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED browser test: {CHROMIUM} or {CHROMEDRIVER} not installed (run scripts/test)"
        );
    }
    present
}

pub async fn register(client: &reqwest::Client, base: &str, username: &str) -> i64 {
    let body: Value = client
        .post(format!("{base}/api/users/register/"))
        .json(&json!({"username": username, "password": "password123"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["id"].as_i64().unwrap()
}
