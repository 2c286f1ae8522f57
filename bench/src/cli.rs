//! Command line of `lastseen-bench`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Load generator and figures for the lastseen presence server.
#[derive(Debug, Parser)]
#[command(name = "lastseen-bench", version)]
pub struct Cli {
    /// Print a JSON summary on standard output (the text report then goes to standard error).
    #[arg(long, global = true)]
    pub json: bool,
    /// Threads of this tool; 1 leaves the other cores to the server under test
    /// [default: 2 for `ceiling` and `seed-stack`, else 1].
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
    /// What to measure.
    #[command(subcommand)]
    pub mode: Mode,
}

/// Benchmark modes.
#[derive(Debug, Subcommand)]
pub enum Mode {
    /// Heartbeat throughput and latency, next to the `/healthz` ceiling of the same run.
    Heartbeat(HeartbeatArgs),
    /// The heartbeat rounds with a bare axum server (`lastseen-ceiling`) measured too:
    /// heartbeat and `/healthz` throughput as fractions of what a server without lastseen's
    /// work answers on this machine in the same run.
    Ceiling(HeartbeatArgs),
    /// Login/logout cycles per second and the server's memory before and after.
    Churn(ChurnArgs),
    /// Time from process start to `/readyz` with many users online in SQLite.
    Restart(RestartArgs),
    /// Many WebSocket subscribers: server memory per socket and presence delivery latency.
    Sockets(SocketsArgs),
    /// Scale-out: one node in Redis mode vs the embedded mode, N nodes together, and push
    /// latency across nodes (needs PostgreSQL and Redis).
    Cluster(ClusterArgs),
    /// lastseen's heartbeat next to the seed's own stack (Django, DRF, simplejwt and
    /// PostgreSQL under gunicorn, which `scripts/bench seed-stack` sets up and starts), in
    /// alternating rounds: both throughputs and their ratio.
    SeedStack(SeedStackArgs),
}

/// Arguments of `seed-stack`.
#[derive(Debug, Args)]
pub struct SeedStackArgs {
    /// The lastseen server to load and how to create its users.
    #[command(flatten)]
    pub target: TargetArgs,
    /// The seed's stack, already running (loopback only), e.g. http://127.0.0.1:8000.
    #[arg(long, value_name = "URL")]
    pub seed_url: String,
    /// Its users' access tokens, one `username token` line each (written by the fixture's
    /// `manage.py bench_users`); the first `--users` are used.
    #[arg(long, value_name = "PATH")]
    pub seed_tokens: PathBuf,
    /// Users whose tokens the heartbeats rotate through, on both servers.
    #[arg(short = 'n', long, default_value_t = 200)]
    pub users: u64,
    /// Connections to each server (kept alive where the server allows it).
    #[arg(short = 'c', long, default_value_t = 64)]
    pub connections: usize,
    /// Length of each phase in seconds.
    #[arg(short = 'd', long, default_value_t = 5.0, value_name = "SECONDS")]
    pub duration: f64,
    /// Rounds of (seed phase, lastseen phase); the ratio is reported per round and as the
    /// median.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
}

/// Arguments of `cluster`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Server binary to start [default: `lastseen` next to this binary].
    #[arg(long, value_name = "PATH")]
    pub server_bin: Option<PathBuf>,
    /// PostgreSQL server (without a database name); the run creates and drops its own database.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432",
        value_name = "URL"
    )]
    pub postgres_url: String,
    /// Redis for the shared presence (the run uses its own key prefix).
    #[arg(long, default_value = "redis://127.0.0.1:6379", value_name = "URL")]
    pub redis_url: String,
    /// Nodes of the multi-node phase (at least 2).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Users whose tokens rotate through the heartbeats (registered over the API).
    #[arg(short = 'n', long, default_value_t = 200)]
    pub users: u64,
    /// Keep-alive connections in all (split evenly between the nodes).
    #[arg(short = 'c', long, default_value_t = 64)]
    pub connections: usize,
    /// Seconds per heartbeat round (the push phase drives twice as long).
    #[arg(short = 'd', long, default_value_t = 5.0, value_name = "SECONDS")]
    pub duration: f64,
    /// Heartbeat rounds per phase; the report gives medians.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Users the cross-node subscriber watches.
    #[arg(long, default_value_t = 100)]
    pub watched: u64,
    /// Transitions per second driven on the first node (each cycle: socket opens = online,
    /// closes = offline after the 100 ms grace).
    #[arg(long, default_value_t = 50.0, value_name = "PER_SECOND")]
    pub push_rate: f64,
}

impl Cli {
    /// Client threads: `--threads`, else the mode's default.
    pub fn threads(&self) -> usize {
        let default = if matches!(self.mode, Mode::Ceiling(_) | Mode::SeedStack(_)) {
            2
        } else {
            1
        };
        self.threads.unwrap_or(default).max(1)
    }
}

/// Which server to load.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// A running server (loopback only), e.g. http://127.0.0.1:8000. Without it the tool starts
    /// its own server on a temporary SQLite database.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Pid of the `--url` server, to report its CPU time and memory.
    #[arg(long, requires = "url")]
    pub pid: Option<u32>,
    /// Server binary to start [default: `lastseen` next to this binary].
    #[arg(long, value_name = "PATH", conflicts_with = "url")]
    pub server_bin: Option<PathBuf>,
    /// SQLite file for the started server [default: a fresh temporary one]. Kept afterwards,
    /// with its token cache beside it, so later runs reuse its users.
    #[arg(long, value_name = "PATH", conflicts_with = "url")]
    pub db: Option<PathBuf>,
    /// Extra argument for `lastseen serve` (repeatable), e.g. `--server-arg=--persist-interval=2s`.
    #[arg(
        long = "server-arg",
        value_name = "ARG",
        allow_hyphen_values = true,
        conflicts_with = "url"
    )]
    pub server_args: Vec<String>,
    /// How users are created: `sql` seeds the started server's database directly (fast);
    /// `api` registers and logs in over HTTP (two Argon2 hashes per user on the server).
    /// [default: sql when the tool starts the server, api with --url]
    #[arg(long, value_enum)]
    pub provision: Option<Provision>,
    /// Token cache file [default: `<db>.tokens` next to --db; `lastseen-bench-tokens.txt` with
    /// --url; none for a temporary database].
    #[arg(long, value_name = "PATH")]
    pub token_cache: Option<PathBuf>,
    /// Benchmark users are named PREFIX0, PREFIX1, … (password `bench-password-1`).
    #[arg(long, default_value = "bench-u", value_name = "PREFIX")]
    pub user_prefix: String,
    /// Wait after load before reading counters or memory, so the server's batched writes of
    /// that load have happened (a little over its `persist_interval`), in seconds.
    #[arg(long, default_value_t = 1.5, value_name = "SECONDS")]
    pub settle: f64,
}

/// How benchmark users are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Provision {
    /// Insert users and sessions into the database before the server starts.
    Sql,
    /// Register and log in through the HTTP API.
    Api,
}

/// `heartbeat` mode.
#[derive(Debug, Clone, Args)]
pub struct HeartbeatArgs {
    /// Server to load and how to create its users.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Users whose tokens the heartbeats rotate through.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    pub users: u64,
    /// Keep-alive connections.
    #[arg(short = 'c', long, default_value_t = 64)]
    pub connections: usize,
    /// Length of each phase in seconds.
    #[arg(short = 'd', long, default_value_t = 5.0, value_name = "SECONDS")]
    pub duration: f64,
    /// Rounds of (`/healthz` phase, heartbeat phase); ratios are reported per round and as
    /// their median, since a shared machine's speed drifts between rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Send heartbeats open-loop at this total rate (requests/s) instead of as fast as possible.
    #[arg(long, value_name = "REQ_PER_S")]
    pub rate: Option<f64>,
    /// After the rounds, open-loop phases at this fraction of the median closed-loop heartbeat
    /// throughput (e.g. 0.5 for latency at 50% of max): `/healthz` (this machine's latency
    /// floor at that rate), then heartbeats.
    #[arg(long, value_name = "FRACTION", conflicts_with = "rate")]
    pub rate_fraction: Option<f64>,
    /// Skip the `/healthz` ceiling phases.
    #[arg(long)]
    pub no_ceiling: bool,
}

/// `churn` mode.
#[derive(Debug, Clone, Args)]
pub struct ChurnArgs {
    /// Server to load and how to create its users.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Users that log in and out in turn.
    #[arg(short = 'n', long, default_value_t = 500)]
    pub users: u64,
    /// Connections, each running login/logout cycles back to back.
    #[arg(short = 'c', long, default_value_t = 8)]
    pub connections: usize,
    /// Length of the run in seconds.
    #[arg(short = 'd', long, default_value_t = 10.0, value_name = "SECONDS")]
    pub duration: f64,
}

/// `restart` mode.
#[derive(Debug, Clone, Args)]
pub struct RestartArgs {
    /// Server binary [default: `lastseen` next to this binary].
    #[arg(long, value_name = "PATH")]
    pub server_bin: Option<PathBuf>,
    /// SQLite file [default: a fresh temporary one]; seeded once, reused if it has the users.
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// Extra argument for `lastseen serve` (repeatable).
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Users, each with one live session (all online when the server starts).
    #[arg(short = 'n', long, default_value_t = 1_000_000)]
    pub users: u64,
    /// Restarts to time.
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// After the last start, send one heartbeat with every user's token (so every session is
    /// in the server's session cache too) and report the RSS all in.
    #[arg(long)]
    pub tokens: bool,
    /// Connections for the `--tokens` pass.
    #[arg(short = 'c', long, default_value_t = 64)]
    pub connections: usize,
}

/// `sockets` mode (always on a server it starts, with users seeded by SQL).
#[derive(Debug, Clone, Args)]
pub struct SocketsArgs {
    /// Server binary [default: `lastseen` next to this binary].
    #[arg(long, value_name = "PATH")]
    pub server_bin: Option<PathBuf>,
    /// Extra argument for `lastseen serve` (repeatable).
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Subscriber sockets, one per watcher user (spread over 127.0.0.1..N as source addresses).
    #[arg(short = 's', long, default_value_t = 10_000)]
    pub sockets: usize,
    /// Watched users each socket subscribes to.
    #[arg(short = 'k', long, default_value_t = 4)]
    pub subscriptions: usize,
    /// Watched users; socket i subscribes to users (i*K + j) mod W, so each has S*K/W
    /// subscribers.
    #[arg(short = 'w', long, default_value_t = 10_000)]
    pub watched: usize,
    /// Presence transitions per second (online + offline), made by opening and closing a
    /// watched user's socket.
    #[arg(short = 'r', long, default_value_t = 1_000.0, value_name = "PER_S")]
    pub rate: f64,
    /// How long each driver socket stays open, in seconds.
    #[arg(long, default_value_t = 0.25, value_name = "SECONDS")]
    pub hold: f64,
    /// The server's `disconnect_grace` (`--disconnect-grace`), e.g. 200ms: how long after a
    /// driver socket closes its user goes offline.
    #[arg(long, default_value = "200ms", value_name = "DURATION")]
    pub disconnect_grace: String,
    /// Length of the transition phase in seconds.
    #[arg(short = 'd', long, default_value_t = 20.0, value_name = "SECONDS")]
    pub duration: f64,
    /// Wait after opening the sockets before reading the server's RSS, in seconds.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    pub settle: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_ceiling_mode_defaults_to_two_client_threads_and_others_to_one() {
        let threads = |args: &[&str]| Cli::parse_from(args).threads();
        assert_eq!(threads(&["lastseen-bench", "ceiling"]), 2);
        assert_eq!(threads(&["lastseen-bench", "heartbeat"]), 1);
        assert_eq!(threads(&["lastseen-bench", "--threads", "4", "ceiling"]), 4);
    }

    #[test]
    fn server_args_may_start_with_dashes() {
        let cli = Cli::parse_from([
            "lastseen-bench",
            "heartbeat",
            "--server-arg",
            "--persist-interval=2s",
            "-n",
            "10",
        ]);
        let Mode::Heartbeat(args) = cli.mode else {
            panic!("wrong mode")
        };
        assert_eq!(args.target.server_args, ["--persist-interval=2s"]);
        assert_eq!(args.users, 10);
    }
}
