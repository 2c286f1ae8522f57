//! The server under test: one we started (`--spawn`) or one already running (`--url`).
//!
//! A spawned server is the release `lastseen` binary next to this one, on a fresh SQLite file
//! in a temporary directory (or a given one), bound to `127.0.0.1:0`; its address is the first
//! line of its standard output. Knowing its pid lets the benchmarks read its RSS and CPU time
//! from `/proc`. It is stopped with SIGTERM (so it flushes) when the handle is dropped.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

use crate::client::{Conn, render};

/// Where the server's files live and which binary runs it.
#[derive(Debug, Clone)]
pub struct ServerFiles {
    /// The `lastseen` executable.
    pub binary: PathBuf,
    /// The SQLite database file.
    pub db: PathBuf,
    /// Extra arguments for `lastseen serve` (e.g. `--persist-interval 1s`).
    pub args: Vec<String>,
    /// A database URL to use instead of the SQLite file (e.g. a PostgreSQL one).
    pub database: Option<String>,
    /// Holds a temporary directory alive (and deletes it on drop), if we made one.
    _temp: Option<std::sync::Arc<TempDir>>,
}

impl ServerFiles {
    /// Server files in `db` (or in a new temporary directory when `None`).
    ///
    /// # Errors
    /// If the binary is missing or the temporary directory cannot be made.
    pub fn new(
        binary: Option<PathBuf>,
        db: Option<PathBuf>,
        args: Vec<String>,
    ) -> anyhow::Result<Self> {
        let binary = match binary {
            Some(path) => path,
            None => sibling_binary("lastseen")?,
        };
        ensure!(
            binary.is_file(),
            "server binary {} not found (build it with `cargo build --release --workspace`, or pass --server-bin)",
            binary.display()
        );
        let (db, temp) = match db {
            Some(db) => (db, None),
            None => {
                let temp = TempDir::new()?;
                (
                    temp.path().join("lastseen.db"),
                    Some(std::sync::Arc::new(temp)),
                )
            }
        };
        Ok(Self {
            binary,
            db,
            args,
            database: None,
            _temp: temp,
        })
    }

    /// The URL of the database: `database` when set, else the SQLite file's `sqlite://` URL.
    pub fn database_url(&self) -> String {
        match &self.database {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.db.display()),
        }
    }

    /// A `lastseen` command on this database, with `LASTSEEN_*` variables cleared.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        for (name, _) in std::env::vars() {
            if name.starts_with("LASTSEEN_") {
                command.env_remove(name);
            }
        }
        // A load generator is one client address opening thousands of connections and
        // registering hundreds of users: lift the per-address throttles and node caps (as
        // variables, which older servers without these settings merely warn about).
        for (name, value) in [
            ("LASTSEEN_CONNECT_RATE_LIMIT", "100000000/1s"),
            ("LASTSEEN_REGISTER_RATE_LIMIT", "100000000/1s"),
            ("LASTSEEN_MAX_CONNECTIONS", "1000000"),
            ("LASTSEEN_MAX_NODE_CONNECTIONS", "1000000"),
        ] {
            command.env(name, value);
        }
        command
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .arg("--database-url")
            .arg(self.database_url());
        command
    }

    /// Runs a one-shot subcommand (e.g. `migrate`), feeding `stdin`; returns its stdout.
    ///
    /// # Errors
    /// If it cannot run or exits non-zero.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        use std::io::Write;
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("while running {}", self.binary.display()))?;
        if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
            input.write_all(text.as_bytes())?;
        }
        let output = child.wait_with_output()?;
        ensure!(
            output.status.success(),
            "`lastseen {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// A `lastseen serve` process we started.
pub struct Spawned {
    child: Child,
    addr: SocketAddr,
    /// Keeps a temporary database directory until the process has stopped (fields drop after
    /// `Drop::drop` has stopped it); none for the ceiling server.
    _files: Option<ServerFiles>,
    /// When `spawn` was called.
    pub started: Instant,
    /// When the `listening on` line arrived.
    pub listening: Instant,
}

impl Spawned {
    /// Starts `lastseen serve --bind 127.0.0.1:0` and reads its address.
    ///
    /// # Errors
    /// If it cannot start or its first line is not `listening on http://ADDR`.
    pub fn start(files: &ServerFiles) -> anyhow::Result<Self> {
        let mut command = files.command();
        command
            .args(["serve", "--bind", "127.0.0.1:0"])
            .args(&files.args);
        Self::start_command(command, Some(files.clone()))
    }

    /// Starts the bare ceiling server `lastseen-ceiling` (next to this binary) on
    /// `127.0.0.1:0`.
    ///
    /// # Errors
    /// If it is missing, cannot start or does not print its address.
    pub fn start_ceiling() -> anyhow::Result<Self> {
        let binary = sibling_binary("lastseen-ceiling")?;
        ensure!(
            binary.is_file(),
            "ceiling binary {} not found (build it with `cargo build --release --workspace --bins`)",
            binary.display()
        );
        Self::start_command(Command::new(binary), None)
    }

    /// Runs `command`, whose first line of output must be `listening on http://ADDR`.
    fn start_command(mut command: Command, files: Option<ServerFiles>) -> anyhow::Result<Self> {
        let started = Instant::now();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("while starting {:?}", command.get_program()))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let listening = Instant::now();
        let Some(addr) = line.trim().strip_prefix("listening on http://") else {
            let _ = child.kill();
            bail!("unexpected first line from the server: {line:?}");
        };
        let addr = addr.parse().context("while parsing the server's address")?;
        Ok(Self {
            child,
            addr,
            _files: files,
            started,
            listening,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit (the server flushes presence first).
    ///
    /// # Errors
    /// If the process cannot be signalled or exits unsuccessfully.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill(2) with a pid of a child we own and have not reaped; it touches no memory.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let status = self.child.wait()?;
        ensure!(status.success(), "the server exited with {status}");
        Ok(())
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Err(error) = self.terminate() {
            eprintln!("warning: stopping the server: {error:#}");
            let _ = self.child.kill();
        }
    }
}

/// The server a benchmark talks to, and its process when we know it.
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// `host` header value.
    pub host: String,
    /// Its pid, for `/proc` readings (spawned, or given with `--pid`).
    pub pid: Option<u32>,
    /// Set when we started the server.
    pub spawned: Option<Spawned>,
}

impl Target {
    /// A server already running at `url` (`http://host:port`).
    ///
    /// # Errors
    /// If the URL is not `http://HOST:PORT` or does not resolve to a loopback address.
    pub fn external(url: &str, pid: Option<u32>) -> anyhow::Result<Self> {
        let host = url
            .trim_end_matches('/')
            .strip_prefix("http://")
            .context("--url must look like http://127.0.0.1:8000")?;
        let addr = host
            .to_socket_addrs()
            .with_context(|| format!("while resolving {host}"))?
            .next()
            .with_context(|| format!("{host} resolves to no address"))?;
        // This tool generates load; it is meant for a server on this machine only.
        ensure!(
            addr.ip().is_loopback(),
            "refusing to load a non-loopback address {addr}"
        );
        Ok(Self {
            addr,
            host: host.to_owned(),
            pid,
            spawned: None,
        })
    }

    /// A server we start on `files`.
    ///
    /// # Errors
    /// If it cannot start or does not become ready.
    pub async fn spawn(files: &ServerFiles) -> anyhow::Result<Self> {
        let target = Self::of(Spawned::start(files)?);
        target.wait_ready(Duration::from_secs(120)).await?;
        Ok(target)
    }

    /// The bare ceiling server, started (see [`Spawned::start_ceiling`]).
    ///
    /// # Errors
    /// If it cannot start.
    pub fn spawn_ceiling() -> anyhow::Result<Self> {
        Ok(Self::of(Spawned::start_ceiling()?))
    }

    fn of(spawned: Spawned) -> Self {
        let addr = spawned.addr();
        Self {
            addr,
            host: addr.to_string(),
            pid: Some(spawned.pid()),
            spawned: Some(spawned),
        }
    }

    /// Polls `GET /readyz` until it answers 200 or `limit` passes.
    ///
    /// # Errors
    /// If the server is not ready in time.
    pub async fn wait_ready(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let request = render("GET", &self.host, "/readyz", &[], b"");
        loop {
            if let Ok(mut conn) = Conn::connect(self.addr).await
                && conn.send(&request).await.is_ok_and(|r| r.status == 200)
            {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "server not ready after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The server's resident set size in bytes, if its pid is known.
    pub fn rss(&self) -> Option<u64> {
        self.pid
            .and_then(|pid| rss_bytes(&format!("/proc/{pid}/status")))
    }

    /// The server's CPU time (user + system), if its pid is known.
    pub fn cpu(&self) -> Option<Duration> {
        self.pid
            .and_then(|pid| cpu_time(&format!("/proc/{pid}/stat")))
    }

    /// Stops a spawned server with SIGTERM and waits for it.
    ///
    /// # Errors
    /// If it exits unsuccessfully.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.spawned.take().map_or(Ok(()), Spawned::stop)
    }
}

/// `VmRSS` from a `/proc/*/status` file, in bytes.
pub fn rss_bytes(status_file: &str) -> Option<u64> {
    let status = std::fs::read_to_string(status_file).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User + system CPU time from a `/proc/*/stat` file.
pub fn cpu_time(stat_file: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(stat_file).ok()?;
    // Fields after the parenthesised command name (which may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second).ok().filter(|&t| t > 0)?;
    Some(Duration::from_nanos(ticks * 1_000_000_000 / per_second))
}

/// This process's CPU time (user + system).
pub fn own_cpu() -> Option<Duration> {
    cpu_time("/proc/self/stat")
}

/// The `name` executable in the directory of the running one (both land in `target/release`).
fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("while locating this executable")?;
    let dir = me.parent().context("executable has no directory")?;
    Ok(dir.join(name))
}

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh, uniquely named directory.
    ///
    /// # Errors
    /// If it cannot be created.
    pub fn new() -> anyhow::Result<Self> {
        let name = format!(
            "lastseen-bench-{}-{}",
            std::process::id(),
            hex::encode(rand::random::<[u8; 6]>())
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path).with_context(|| format!("while creating {}", path.display()))?;
        Ok(Self { path })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_readings_of_this_process_are_plausible() {
        let rss = rss_bytes("/proc/self/status").unwrap();
        assert!(rss > 100 * 1024, "{rss}");
        assert!(own_cpu().is_some());
    }

    #[test]
    fn only_loopback_urls_are_accepted() {
        assert!(Target::external("http://127.0.0.1:8000", None).is_ok());
        assert!(Target::external("http://127.0.0.1:8000/", None).is_ok());
        assert!(Target::external("https://127.0.0.1:8000", None).is_err());
        assert!(Target::external("http://10.1.2.3:80", None).is_err());
    }
}
