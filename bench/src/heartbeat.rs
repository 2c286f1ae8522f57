//! `heartbeat` mode: `POST /api/users/heartbeat/` throughput and latency, next to the
//! `GET /healthz` ceiling of the same server in the same run, and the database writes the
//! heartbeats caused. `ceiling` mode: the same, with a phase against a bare axum server
//! (`lastseen-ceiling`) in every round, so both are also reported as fractions of it.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::cli::{HeartbeatArgs, Provision};
use crate::client::{heartbeats, render};
use crate::load::{self, Plan};
use crate::report::{HEADER, PhaseSummary, median};
use crate::scrape::Metrics;
use crate::setup::{self, Machine};
use crate::target::Target;

/// The JSON summary of a heartbeat run.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// `heartbeat` or `ceiling`.
    pub mode: &'static str,
    /// The machine.
    pub machine: Machine,
    /// Users whose tokens rotate.
    pub users: u64,
    /// Keep-alive connections.
    pub connections: usize,
    /// How the users were made.
    pub provision: String,
    /// Every phase in order.
    pub phases: Vec<PhaseSummary>,
    /// Heartbeat throughput / `/healthz` throughput, per round.
    pub ratio_per_round: Vec<f64>,
    /// Median of `ratio_per_round`.
    pub ratio_median: Option<f64>,
    /// Median closed-loop heartbeat throughput (req/s).
    pub heartbeat_median: Option<f64>,
    /// Median `/healthz` throughput (req/s).
    pub healthz_median: Option<f64>,
    /// Server CPU per heartbeat / server CPU per `/healthz` (medians), when measurable.
    pub server_cpu_ratio: Option<f64>,
    /// Database writes caused by the heartbeats of all phases.
    pub database: Option<DatabaseWrites>,
    /// Figures against the bare ceiling server (`ceiling` mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<Ceiling>,
    /// Heartbeat p99 / `/healthz` p99 in the open-loop phases at `--rate-fraction`.
    pub p99_ratio_at_fraction: Option<f64>,
    /// The same ratio, per round.
    pub p99_ratio_per_round: Vec<f64>,
}

/// lastseen's throughput as fractions of the bare ceiling server's, in the same rounds.
#[derive(Debug, Serialize)]
pub struct Ceiling {
    /// Median throughput of the bare server's `GET /hello` (req/s).
    pub hello_median: Option<f64>,
    /// lastseen `/healthz` / bare `/hello`, per round.
    pub healthz_per_round: Vec<f64>,
    /// Median of `healthz_per_round`.
    pub healthz_median: Option<f64>,
    /// lastseen heartbeat / bare `/hello`, per round.
    pub heartbeat_per_round: Vec<f64>,
    /// Median of `heartbeat_per_round`.
    pub heartbeat_median: Option<f64>,
}

/// Database writes per heartbeat, from the server's counters.
#[derive(Debug, Serialize)]
pub struct DatabaseWrites {
    /// Heartbeats the server counted.
    pub heartbeats: f64,
    /// User rows the batched flushes wrote (`lastseen_presence_rows_written_total`).
    pub rows_written: f64,
    /// `rows_written / heartbeats`.
    pub rows_per_heartbeat: f64,
    /// Write transactions (`lastseen_presence_flushes_total`), if the server counts them.
    pub transactions: Option<f64>,
    /// `transactions / heartbeats`.
    pub transactions_per_heartbeat: Option<f64>,
}

/// Runs the mode and prints its report; with `bare`, each round starts with a phase against
/// the bare ceiling server (`lastseen-ceiling`, started here).
///
/// # Errors
/// If the servers cannot be prepared or a phase fails.
pub async fn run(args: HeartbeatArgs, json: bool, bare: bool) -> anyhow::Result<()> {
    let machine = Machine::read();
    let bare = if bare {
        Some(Target::spawn_ceiling()?)
    } else {
        None
    };
    let prepared = setup::prepare(&args.target, args.users, true, args.connections).await?;
    let target = &prepared.target;
    let host = target.host.clone();
    let heartbeats = heartbeats(&host, &prepared.tokens);
    let healthz: Arc<[Vec<u8>]> = Arc::new([render("GET", &host, "/healthz", &[], b"")]);
    let hello = bare.as_ref().map(|bare| -> Arc<[Vec<u8>]> {
        Arc::new([render("GET", &bare.host, "/hello", &[], b"")])
    });
    let settle = Duration::from_secs_f64(args.target.settle.max(0.0));

    // Every user online and every token in the server's session cache before measuring.
    load::sweep(target, "warm-up", heartbeats.clone(), args.connections).await?;
    tokio::time::sleep(settle).await;
    let before = Metrics::fetch(target).await?;

    let closed = Plan {
        connections: args.connections,
        duration: Duration::from_secs_f64(args.duration.max(0.1)),
        rate: None,
    };
    let mut phases = Vec::new();
    let (mut ratios, mut hb, mut hz, mut hb_cpu, mut hz_cpu) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut hellos, mut hz_of_bare, mut hb_of_bare) = (vec![], vec![], vec![]);
    for _ in 0..args.rounds.max(1) {
        let top = match (&bare, &hello) {
            (Some(bare), Some(hello)) => {
                let phase =
                    PhaseSummary::of(&load::run(bare, "bare /hello", hello.clone(), closed).await?);
                hellos.push(phase.throughput);
                let top = phase.throughput;
                phases.push(phase);
                Some(top)
            }
            _ => None,
        };
        let ceiling = if args.no_ceiling {
            None
        } else {
            Some(PhaseSummary::of(
                &load::run(target, "healthz", healthz.clone(), closed).await?,
            ))
        };
        let plan = Plan {
            rate: args.rate,
            ..closed
        };
        let beat =
            PhaseSummary::of(&load::run(target, "heartbeat", heartbeats.clone(), plan).await?);
        hb.push(beat.throughput);
        hb_cpu.extend(beat.server_cpu_us_per_request);
        if let Some(top) = top {
            hb_of_bare.push(beat.throughput / top);
            if let Some(ceiling) = &ceiling {
                hz_of_bare.push(ceiling.throughput / top);
            }
        }
        if let Some(ceiling) = ceiling {
            ratios.push(beat.throughput / ceiling.throughput);
            hz.push(ceiling.throughput);
            hz_cpu.extend(ceiling.server_cpu_us_per_request);
            phases.push(ceiling);
        }
        phases.push(beat);
    }
    // Open loop at the same rate: /healthz first (the latency floor of this machine right
    // now), then heartbeats, alternating for every round; the ratio is taken per round (the
    // machine's noise moves both of a round alike) and the median reported.
    let mut p99_ratios = Vec::new();
    if let Some(fraction) = args.rate_fraction {
        let rate = median(&hb).unwrap_or(0.0) * fraction;
        let plan = Plan {
            rate: Some(rate),
            ..closed
        };
        let percent = fraction * 100.0;
        for _ in 0..args.rounds.max(1) {
            let mut p99 = Vec::new();
            for (name, requests) in [("healthz", &healthz), ("heartbeat", &heartbeats)] {
                if name == "healthz" && args.no_ceiling {
                    continue;
                }
                let name = format!("{name}@{percent:.0}%");
                let outcome =
                    PhaseSummary::of(&load::run(target, &name, requests.clone(), plan).await?);
                p99.push(outcome.latency_us.p99);
                phases.push(outcome);
            }
            if let [healthz, heartbeat] = p99[..] {
                p99_ratios.push(heartbeat / healthz);
            }
        }
    }

    tokio::time::sleep(settle).await;
    let after = Metrics::fetch(target).await?;
    let database = database_writes(&before, &after);
    let summary = Summary {
        mode: if bare.is_some() {
            "ceiling"
        } else {
            "heartbeat"
        },
        machine,
        users: args.users,
        connections: args.connections,
        provision: match prepared.provision {
            Provision::Sql => "sql",
            Provision::Api => "api",
        }
        .to_owned(),
        phases,
        ratio_median: median(&ratios),
        ratio_per_round: ratios,
        heartbeat_median: median(&hb),
        healthz_median: median(&hz),
        server_cpu_ratio: median(&hb_cpu).zip(median(&hz_cpu)).map(|(b, h)| b / h),
        database,
        ceiling: bare.is_some().then(|| Ceiling {
            hello_median: median(&hellos),
            healthz_median: median(&hz_of_bare),
            healthz_per_round: hz_of_bare,
            heartbeat_median: median(&hb_of_bare),
            heartbeat_per_round: hb_of_bare,
        }),
        p99_ratio_at_fraction: median(&p99_ratios),
        p99_ratio_per_round: p99_ratios,
    };
    print(&summary, json)?;
    if let Some(bare) = bare {
        bare.stop()?;
    }
    prepared.target.stop()
}

/// `median (a%, b%, …)` of fractions.
fn percents(median: Option<f64>, rounds: &[f64]) -> String {
    let rounds: Vec<String> = rounds
        .iter()
        .map(|r| format!("{:.0}%", r * 100.0))
        .collect();
    format!(
        "{:.0}% (rounds: {})",
        median.unwrap_or(f64::NAN) * 100.0,
        rounds.join(", ")
    )
}

fn database_writes(before: &Metrics, after: &Metrics) -> Option<DatabaseWrites> {
    let delta = |name: &str| Some(after.sum(name).unwrap_or(0.0) - before.sum(name).unwrap_or(0.0));
    let heartbeats = delta("lastseen_heartbeats_total")?;
    let rows = delta("lastseen_presence_rows_written_total")?;
    let transactions = after
        .sum("lastseen_presence_flushes_total")
        .map(|a| a - before.sum("lastseen_presence_flushes_total").unwrap_or(0.0));
    let per = |v: f64| v / heartbeats.max(1.0);
    Some(DatabaseWrites {
        heartbeats,
        rows_written: rows,
        rows_per_heartbeat: per(rows),
        transactions,
        transactions_per_heartbeat: transactions.map(per),
    })
}

fn print(summary: &Summary, json: bool) -> anyhow::Result<()> {
    let mut text = format!(
        "{}: {} users ({}), {} connections, on {} × {} (load {:.2})\n{HEADER}\n",
        summary.mode,
        summary.users,
        summary.provision,
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
        .map(|r| format!("{:.0}%", r * 100.0))
        .collect();
    if let Some(ratio) = summary.ratio_median {
        text.push_str(&format!(
            "heartbeat / healthz throughput: {:.0}% (median of rounds: {}); heartbeat {:.0} req/s, healthz {:.0} req/s\n",
            ratio * 100.0,
            rounds.join(", "),
            summary.heartbeat_median.unwrap_or(0.0),
            summary.healthz_median.unwrap_or(0.0),
        ));
    }
    if let Some(ceiling) = &summary.ceiling {
        text.push_str(&format!(
            "of the bare ceiling ({:.0} req/s): healthz {}, heartbeat {}\n",
            ceiling.hello_median.unwrap_or(0.0),
            percents(ceiling.healthz_median, &ceiling.healthz_per_round),
            percents(ceiling.heartbeat_median, &ceiling.heartbeat_per_round),
        ));
    }
    if let Some(ratio) = summary.p99_ratio_at_fraction {
        text.push_str(&format!(
            "heartbeat p99 / healthz p99 at the same open-loop rate: {ratio:.2} (median; per round {})\n",
            summary
                .p99_ratio_per_round
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(cpu) = summary.server_cpu_ratio {
        text.push_str(&format!(
            "server CPU per heartbeat / per healthz: {cpu:.2}\n"
        ));
    }
    if let Some(db) = &summary.database {
        text.push_str(&format!(
            "database: {:.0} heartbeats, {:.0} rows written in batches ({:.4} rows/heartbeat)",
            db.heartbeats, db.rows_written, db.rows_per_heartbeat
        ));
        if let (Some(tx), Some(per)) = (db.transactions, db.transactions_per_heartbeat) {
            text.push_str(&format!(
                ", {tx:.0} write transactions ({per:.6}/heartbeat)"
            ));
        }
        text.push('\n');
    }
    emit(&text, summary, json)
}

/// Prints the text report (to stderr when JSON goes to stdout) and the JSON summary.
///
/// # Errors
/// If the summary cannot be serialised.
pub fn emit<T: Serialize>(text: &str, summary: &T, json: bool) -> anyhow::Result<()> {
    if json {
        eprint!("{text}");
        println!("{}", serde_json::to_string_pretty(summary)?);
    } else {
        print!("{text}");
    }
    Ok(())
}
