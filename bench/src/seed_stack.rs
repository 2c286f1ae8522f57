//! `seed-stack` mode: lastseen's heartbeat against the system our users run today, the seed's
//! Django + DRF + simplejwt + PostgreSQL stack under gunicorn (the fixture in
//! `bench/seed-stack/`, set up and started by `scripts/bench seed-stack`). Both are loaded by
//! the same client with the same connections, one phase each per round, alternating, and the
//! throughput ratio is taken per round: a shared machine's speed drifts between rounds.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde::Serialize;

use crate::cli::SeedStackArgs;
use crate::client::heartbeats;
use crate::heartbeat::emit;
use crate::load::{self, Plan};
use crate::report::{HEADER, PhaseSummary, median};
use crate::setup::{self, Machine};
use crate::target::Target;

/// The JSON summary of a `seed-stack` run.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Always `seed-stack`.
    pub mode: &'static str,
    /// The machine.
    pub machine: Machine,
    /// Users whose tokens rotate, on each server.
    pub users: u64,
    /// Connections to each server.
    pub connections: usize,
    /// Every phase in order.
    pub phases: Vec<PhaseSummary>,
    /// Median heartbeat throughput of the seed's stack (req/s).
    pub seed_median: Option<f64>,
    /// Median heartbeat throughput of lastseen (req/s).
    pub lastseen_median: Option<f64>,
    /// lastseen heartbeats / the seed's heartbeats, per round.
    pub ratio_per_round: Vec<f64>,
    /// Median of `ratio_per_round`.
    pub ratio_median: Option<f64>,
}

/// Runs the mode and prints its report.
///
/// # Errors
/// If a server cannot be reached or prepared, the token file is short, or a phase fails.
pub async fn run(args: SeedStackArgs, json: bool) -> anyhow::Result<()> {
    let machine = Machine::read();
    let seed = Target::external(&args.seed_url, None)?;
    let seed_beats = heartbeats(&seed.host, &seed_tokens(&args.seed_tokens, args.users)?);
    let prepared = setup::prepare(&args.target, args.users, true, args.connections).await?;
    let lastseen = &prepared.target;
    let beats = heartbeats(&lastseen.host, &prepared.tokens);

    // Every token used once on each side (both servers' connections, caches and users warm).
    load::sweep(&seed, "seed warm-up", seed_beats.clone(), args.connections).await?;
    load::sweep(lastseen, "warm-up", beats.clone(), args.connections).await?;

    let plan = Plan {
        connections: args.connections,
        duration: Duration::from_secs_f64(args.duration.max(0.1)),
        rate: None,
    };
    let (mut phases, mut seeds, mut ours, mut ratios) = (vec![], vec![], vec![], vec![]);
    for _ in 0..args.rounds.max(1) {
        let theirs =
            PhaseSummary::of(&load::run(&seed, "seed heartbeat", seed_beats.clone(), plan).await?);
        let mine = PhaseSummary::of(&load::run(lastseen, "heartbeat", beats.clone(), plan).await?);
        // A phase whose answers were errors measured nothing.
        ensure!(
            theirs.errors == 0 && mine.errors == 0,
            "heartbeats were refused: {}",
            theirs
                .first_error
                .as_ref()
                .or(mine.first_error.as_ref())
                .map_or("", String::as_str)
        );
        seeds.push(theirs.throughput);
        ours.push(mine.throughput);
        ratios.push(mine.throughput / theirs.throughput.max(1e-9));
        phases.extend([theirs, mine]);
    }
    let summary = Summary {
        mode: "seed-stack",
        machine,
        users: args.users,
        connections: args.connections,
        phases,
        seed_median: median(&seeds),
        lastseen_median: median(&ours),
        ratio_median: median(&ratios),
        ratio_per_round: ratios,
    };
    print(&summary, json)?;
    prepared.target.stop()
}

/// The first `count` tokens of a `username token` file.
fn seed_tokens(path: &Path, count: u64) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("while reading {}", path.display()))?;
    let tokens: Vec<String> = text
        .lines()
        .filter_map(|line| {
            line.split_once(' ')
                .map(|(_, token)| token.trim().to_owned())
        })
        .take(usize::try_from(count).unwrap_or(usize::MAX))
        .collect();
    ensure!(
        tokens.len() as u64 == count,
        "{} holds {} tokens, {count} wanted",
        path.display(),
        tokens.len()
    );
    Ok(tokens)
}

fn print(summary: &Summary, json: bool) -> anyhow::Result<()> {
    let mut text = format!(
        "seed-stack: {} users, {} connections, on {} × {} (load {:.2})\n{HEADER}\n",
        summary.users,
        summary.connections,
        summary.machine.cpus,
        summary.machine.cpu_model,
        summary.machine.load_average.unwrap_or(f64::NAN),
    );
    for phase in &summary.phases {
        text.push_str(&phase.line());
        text.push('\n');
    }
    let rounds: Vec<String> = summary
        .ratio_per_round
        .iter()
        .map(|r| format!("{r:.0}×"))
        .collect();
    text.push_str(&format!(
        "lastseen heartbeats / the seed's: {:.0}× (median; rounds {}); lastseen {:.0} req/s, seed {:.0} req/s\n",
        summary.ratio_median.unwrap_or(f64::NAN),
        rounds.join(", "),
        summary.lastseen_median.unwrap_or(0.0),
        summary.seed_median.unwrap_or(0.0),
    ));
    emit(&text, summary, json)
}
