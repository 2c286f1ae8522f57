//! Benchmark users and their tokens: created once, then reused from a token cache.
//!
//! Two ways to get them. `sql` seeds a database the tool owns before its server starts (see
//! [`crate::seed`]): seconds for 10,000 users. `api` registers and logs in through HTTP, as a
//! client would, with one request in flight per connection; each user costs two Argon2 hashes
//! on the server, so its tokens are written to a cache file and reused by later runs against
//! the same server (a token stays valid until logout, across restarts).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail, ensure};
use serde::Deserialize;

use crate::client::{Conn, render};
use crate::progress;
use crate::seed::PASSWORD;
use crate::target::Target;

/// The `n` benchmark users' names, `{prefix}0` .. `{prefix}{n-1}`.
pub fn usernames(prefix: &str, n: u64) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Tokens cached for a server: `username token` lines after a header naming the server.
pub struct TokenCache {
    header: String,
    tokens: HashMap<String, String>,
}

impl TokenCache {
    /// Reads the cache at `path` if it exists and was written for `server`.
    pub fn load(path: &Path, server: &str) -> Self {
        let header = format!("# lastseen-bench tokens for {server}");
        let mut tokens = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(path) {
            let mut lines = text.lines();
            if lines.next() == Some(header.as_str()) {
                for line in lines {
                    if let Some((name, token)) = line.split_once(' ') {
                        tokens.insert(name.to_owned(), token.to_owned());
                    }
                }
            }
        }
        Self { header, tokens }
    }

    /// Tokens for all of `names`, if every one is cached.
    pub fn get_all(&self, names: &[String]) -> Option<Vec<String>> {
        names.iter().map(|n| self.tokens.get(n).cloned()).collect()
    }

    /// Adds tokens and writes the file.
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn store(
        &mut self,
        path: &Path,
        names: &[String],
        tokens: &[String],
    ) -> anyhow::Result<()> {
        for (name, token) in names.iter().zip(tokens) {
            self.tokens.insert(name.clone(), token.clone());
        }
        let mut text = format!("{}\n", self.header);
        for (name, token) in &self.tokens {
            text.push_str(&format!("{name} {token}\n"));
        }
        std::fs::write(path, text).with_context(|| format!("while writing {}", path.display()))
    }
}

#[derive(Deserialize)]
struct LoginBody {
    access: String,
}

/// Logs `username` in on `conn`; returns the token.
///
/// # Errors
/// If the login is refused or the response is malformed.
pub async fn login(conn: &mut Conn, host: &str, username: &str) -> anyhow::Result<String> {
    let body = serde_json::json!({ "username": username, "password": PASSWORD }).to_string();
    let request = render(
        "POST",
        host,
        "/api/users/login/",
        &[("content-type", "application/json")],
        body.as_bytes(),
    );
    let response = conn.send(&request).await?;
    ensure!(
        response.status == 200,
        "login of {username} answered {}: {}",
        response.status,
        String::from_utf8_lossy(response.body)
    );
    Ok(serde_json::from_slice::<LoginBody>(response.body)?.access)
}

/// Registers `username` (an existing one is fine) on `conn`.
///
/// # Errors
/// If registration fails for another reason than a taken name.
pub async fn register(conn: &mut Conn, host: &str, username: &str) -> anyhow::Result<()> {
    let body = serde_json::json!({ "username": username, "password": PASSWORD }).to_string();
    let request = render(
        "POST",
        host,
        "/api/users/register/",
        &[("content-type", "application/json")],
        body.as_bytes(),
    );
    let response = conn.send(&request).await?;
    match response.status {
        201 | 409 => Ok(()),
        status => bail!(
            "registering {username} answered {status}: {}",
            String::from_utf8_lossy(response.body)
        ),
    }
}

/// Whether `token` is accepted by the server (`GET /api/users/me/`).
///
/// # Errors
/// I/O failures.
pub async fn token_works(target: &Target, token: &str) -> anyhow::Result<bool> {
    let mut conn = Conn::connect(target.addr).await?;
    let auth = format!("Bearer {token}");
    let request = render(
        "GET",
        &target.host,
        "/api/users/me/",
        &[("authorization", &auth)],
        b"",
    );
    Ok(conn.send(&request).await?.status == 200)
}

/// Registers (when `register_first`) and logs in (when `log_in`) every one of `names` through
/// the API, over `connections` parallel connections; returns the tokens in order (empty
/// strings without `log_in`).
///
/// # Errors
/// The first failure of any user.
pub async fn via_api(
    target: &Target,
    names: &[String],
    connections: usize,
    register_first: bool,
    log_in: bool,
) -> anyhow::Result<Vec<String>> {
    let names: Arc<[String]> = names.into();
    let next = Arc::new(AtomicU64::new(0));
    let bar = progress::counter("provisioning", names.len() as u64);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections.max(1) {
        let (names, next, bar) = (names.clone(), next.clone(), bar.clone());
        let (addr, host) = (target.addr, target.host.clone());
        tasks.spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            let mut done = Vec::new();
            loop {
                let i = usize::try_from(next.fetch_add(1, Ordering::Relaxed))?;
                let Some(name) = names.get(i) else {
                    return anyhow::Ok(done);
                };
                if register_first {
                    register(&mut conn, &host, name).await?;
                }
                if log_in {
                    done.push((i, login(&mut conn, &host, name).await?));
                }
                bar.inc(1);
            }
        });
    }
    let mut tokens = vec![String::new(); names.len()];
    while let Some(result) = tasks.join_next().await {
        for (i, token) in result?? {
            tokens[i] = token;
        }
    }
    bar.finish_and_clear();
    Ok(tokens)
}
