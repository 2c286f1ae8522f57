//! `lastseen-bench`: load generator and figures for the lastseen presence server.
//!
//! - [`client`]: a minimal keep-alive HTTP/1.1 client, cheaper per request than the server.
//! - [`target`]: the server under test (started here or already running) and `/proc` readings.
//! - [`seed`], [`provision`], [`setup`]: benchmark users and tokens, by SQL or through the API.
//! - [`load`]: closed- and open-loop phases over C connections, with HDR histograms.
//! - `lastseen-ceiling` (`src/bin/ceiling.rs`): the bare axum server of the `ceiling` mode.
//! - [`heartbeat`] (also the `ceiling` mode), [`churn`], [`restart`], [`sockets`],
//!   [`cluster`], [`seed_stack`]: the modes; [`report`], [`scrape`], [`progress`]: output,
//!   `/metrics` counters and progress bars.

mod churn;
mod cli;
mod client;
mod cluster;
mod heartbeat;
mod load;
mod progress;
mod provision;
mod report;
mod restart;
mod scrape;
mod seed;
mod seed_stack;
mod setup;
mod sockets;
mod target;

use std::process::ExitCode;

use clap::Parser;
use cli::{Cli, Mode};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = cli.threads();
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.json;
    let result = runtime.block_on(async move {
        match cli.mode {
            Mode::Heartbeat(args) => heartbeat::run(args, json, false).await,
            Mode::Ceiling(args) => heartbeat::run(args, json, true).await,
            Mode::Churn(args) => churn::run(args, json).await,
            Mode::Restart(args) => restart::run(args, json).await,
            Mode::Sockets(args) => sockets::run(args, json).await,
            Mode::Cluster(args) => cluster::run(args, json).await,
            Mode::SeedStack(args) => seed_stack::run(args, json).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
