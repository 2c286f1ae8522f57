//! Summaries of phases: HDR percentiles, throughput and CPU per request, as text or JSON.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::load::Outcome;

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// Largest value recorded.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Percentiles {
    /// From a histogram of nanoseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p99_9: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// One phase, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseSummary {
    /// Phase name.
    pub name: String,
    /// 2xx responses.
    pub ok: u64,
    /// Other responses.
    pub errors: u64,
    /// The first error response, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Length of the phase.
    pub seconds: f64,
    /// Answered requests per second.
    pub throughput: f64,
    /// Open-loop rate asked for, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_rate: Option<f64>,
    /// Latency of 2xx responses.
    pub latency_us: Percentiles,
    /// Server CPU time per answered request, when the server's pid is known.
    pub server_cpu_us_per_request: Option<f64>,
    /// This tool's CPU time per answered request.
    pub client_cpu_us_per_request: Option<f64>,
}

impl PhaseSummary {
    /// Summarises an outcome.
    pub fn of(outcome: &Outcome) -> Self {
        let requests = (outcome.ok + outcome.errors).max(1) as f64;
        let per_request = |cpu: Option<Duration>| cpu.map(|c| c.as_secs_f64() * 1e6 / requests);
        Self {
            name: outcome.name.clone(),
            ok: outcome.ok,
            errors: outcome.errors,
            first_error: outcome.first_error.clone(),
            seconds: outcome.elapsed.as_secs_f64(),
            throughput: outcome.throughput(),
            target_rate: outcome.target_rate,
            latency_us: Percentiles::of(&outcome.latency),
            server_cpu_us_per_request: per_request(outcome.server_cpu),
            client_cpu_us_per_request: per_request(outcome.client_cpu),
        }
    }

    /// One line of the text table (see [`HEADER`]).
    pub fn line(&self) -> String {
        let cpu = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        let l = &self.latency_us;
        let mut line = format!(
            "{:<22} {:>10.0} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>8} {:>8}",
            self.name,
            self.throughput,
            self.errors,
            l.p50,
            l.p90,
            l.p99,
            l.p99_9,
            l.max,
            cpu(self.server_cpu_us_per_request),
            cpu(self.client_cpu_us_per_request),
        );
        if let Some(error) = &self.first_error {
            let _ = write!(
                line,
                "  first error: {}",
                error.chars().take(120).collect::<String>()
            );
        }
        line
    }
}

/// Column titles for [`PhaseSummary::line`].
pub const HEADER: &str = "phase                     req/s   errors   p50 µs    p90 µs    p99 µs  p99.9 µs    max µs  srv µs/r cli µs/r";

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    })
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn percentiles_are_in_microseconds() {
        let mut h = crate::load::new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let p = Percentiles::of(&h);
        assert!((p.p50 - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.p99 - 990.0).abs() < 1.0, "{p:?}");
        assert!((p.max - 1000.0).abs() < 1.0, "{p:?}");
    }
}
