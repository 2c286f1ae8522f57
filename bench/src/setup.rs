//! Getting a server and its benchmark users ready, shared by the HTTP modes.

use std::path::PathBuf;

use anyhow::{Context, bail};
use chrono::Utc;
use serde::Serialize;

use crate::cli::{Provision, TargetArgs};
use crate::progress;
use crate::provision::{self, TokenCache};
use crate::seed;
use crate::target::{ServerFiles, Target};

/// A server ready for load, with its users.
pub struct Prepared {
    /// The server.
    pub target: Target,
    /// Benchmark users' names.
    pub names: Vec<String>,
    /// Their tokens (same order), when sessions were asked for.
    pub tokens: Vec<String>,
    /// How the users were made, for the report.
    pub provision: Provision,
}

/// What the report says about the machine.
#[derive(Debug, Serialize)]
pub struct Machine {
    /// Logical CPUs available to this process.
    pub cpus: usize,
    /// CPU model from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// 1-minute load average when the run started (other work on a shared machine).
    pub load_average: Option<f64>,
}

impl Machine {
    /// Reads the machine's description.
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')))
            .map_or_else(|| "unknown".to_owned(), |(_, m)| m.trim().to_owned());
        let load_average = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next()?.parse().ok());
        Self {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
            load_average,
        }
    }
}

/// Starts (or reaches) the server and makes `count` users, with a live session and token each
/// when `with_tokens`.
///
/// # Errors
/// If the server cannot start or users cannot be made.
pub async fn prepare(
    args: &TargetArgs,
    count: u64,
    with_tokens: bool,
    connections: usize,
) -> anyhow::Result<Prepared> {
    let names = provision::usernames(&args.user_prefix, count);
    if let Some(url) = &args.url {
        let provision = args.provision.unwrap_or(Provision::Api);
        if provision == Provision::Sql {
            bail!("--provision sql needs a server this tool starts (no --url)");
        }
        let target = Target::external(url, args.pid)?;
        let cache = args
            .token_cache
            .clone()
            .unwrap_or_else(|| PathBuf::from("lastseen-bench-tokens.txt"));
        let tokens = api_users(&target, &names, with_tokens, connections, Some(cache)).await?;
        return Ok(Prepared {
            target,
            names,
            tokens,
            provision,
        });
    }

    let files = ServerFiles::new(
        args.server_bin.clone(),
        args.db.clone(),
        args.server_args.clone(),
    )?;
    let cache = args.token_cache.clone().or_else(|| {
        args.db
            .as_ref()
            .map(|db| PathBuf::from(format!("{}.tokens", db.display())))
    });
    let provision = args.provision.unwrap_or(Provision::Sql);
    let mut tokens = Vec::new();
    if provision == Provision::Sql {
        tokens = sql_users(
            &files,
            &args.user_prefix,
            &names,
            with_tokens,
            cache.as_deref(),
        )
        .await?;
    }
    let bar = progress::step("starting");
    let target = Target::spawn(&files).await?;
    bar.finish_and_clear();
    if provision == Provision::Api {
        tokens = api_users(&target, &names, with_tokens, connections, cache).await?;
    }
    Ok(Prepared {
        target,
        names,
        tokens,
        provision,
    })
}

async fn sql_users(
    files: &ServerFiles,
    prefix: &str,
    names: &[String],
    with_tokens: bool,
    cache_path: Option<&std::path::Path>,
) -> anyhow::Result<Vec<String>> {
    let bar = progress::step("seeding");
    let pool = seed::open(files).await?;
    let hash = seed::password_hash(files, &pool, prefix).await?;
    let offline = seed::Presence { online_since: None };
    seed::users(&pool, prefix, names.len() as u64, &hash, &offline).await?;
    let mut tokens = Vec::new();
    if with_tokens {
        let server = format!("sqlite://{}", files.db.display());
        let mut cache = cache_path.map(|path| (TokenCache::load(path, &server), path));
        match cache.as_ref().and_then(|(c, _)| c.get_all(names)) {
            Some(cached) => tokens = cached,
            None => {
                tokens = seed::sessions(&pool, names, Utc::now()).await?;
                if let Some((cache, path)) = cache.as_mut() {
                    cache.store(path, names, &tokens)?;
                }
            }
        }
    }
    pool.close().await;
    bar.finish_and_clear();
    Ok(tokens)
}

async fn api_users(
    target: &Target,
    names: &[String],
    with_tokens: bool,
    connections: usize,
    cache_path: Option<PathBuf>,
) -> anyhow::Result<Vec<String>> {
    let server = format!("http://{}", target.host);
    let mut cache = cache_path.map(|path| (TokenCache::load(&path, &server), path));
    if let Some(cached) = cache.as_ref().and_then(|(c, _)| c.get_all(names)) {
        let (first, last) = (cached.first(), cached.last());
        let mut valid = true;
        for token in first.into_iter().chain(last) {
            valid &= provision::token_works(target, token).await?;
        }
        if valid {
            return Ok(if with_tokens { cached } else { Vec::new() });
        }
        eprintln!("cached tokens are not valid on this server any more; provisioning again");
    }
    if !with_tokens {
        provision::via_api(target, names, connections, true, false).await?;
        return Ok(Vec::new());
    }
    let tokens = provision::via_api(target, names, connections, true, true).await?;
    if let Some((cache, path)) = cache.as_mut() {
        cache
            .store(path, names, &tokens)
            .with_context(|| format!("while caching tokens in {}", path.display()))?;
    }
    Ok(tokens)
}
