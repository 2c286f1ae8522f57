//! Observability set-up: the tracing subscriber and the Prometheus metrics recorder, each
//! installed once per process.
//!
//! The server writes logs to standard error so that standard output carries only what scripts
//! read (the `listening on ...` line, command results). `RUST_LOG` filters, default `info`.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Installs the global subscriber. Later calls (e.g. from tests) are no-ops.
pub fn init<W>(writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .try_init();
}

/// Latency buckets (seconds) for the request histogram: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// The process-wide Prometheus recorder, installed on first use; `/metrics` renders it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = || {
                PrometheusBuilder::new()
                    .set_buckets_for_metric(
                        Matcher::Full("lastseen_http_request_duration_seconds".into()),
                        LATENCY_BUCKETS,
                    )
                    .expect("BUG: the bucket list is a non-empty constant")
            };
            // Installing fails only if another recorder is global already; then we still
            // render from a recorder of our own rather than crash.
            builder()
                .install_recorder()
                .unwrap_or_else(|_| builder().build_recorder().handle())
        })
        .clone()
}
