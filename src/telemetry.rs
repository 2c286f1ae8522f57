//! Observability set-up: the tracing subscriber and the Prometheus metrics recorder, each
//! installed once per process.
//!
//! The server writes logs to standard error so that standard output carries only what scripts
//! read (the `listening on ...` line, command results). `RUST_LOG` filters, default `info`.
//! Lines are plain text (coloured only when asked, i.e. on a terminal) or JSON objects
//! (`log_format = "json"`, for log shippers).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::settings::LogFormat;

/// Installs the global subscriber writing `format` lines to `writer`, with ANSI colours only
/// if `colours` (text only). Later calls (e.g. from tests) are no-ops.
pub fn init<W>(writer: W, format: LogFormat, colours: bool)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A log line that cannot be written (a closed pipe) is dropped: by default the subscriber
    // reports it with `eprintln!`, which panics on that same closed stderr, in whatever task
    // was logging, e.g. the one that handles SIGTERM.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(colours).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// Whether log lines on standard error may be coloured: it is a terminal and `NO_COLOR` is not
/// set (<https://no-color.org>).
pub fn stderr_wants_colours() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Latency buckets (seconds) for the request histogram: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// A counter without labels for a hot path, resolved once per call site: `increment` on it
/// then hashes no name and takes no registry lock. Resolving it installs the process-wide
/// Prometheus recorder first ([`metrics_handle`]), so the handle is never one of the no-op
/// recorder that stands in before installation. The handle is that recorder's for the life of
/// the process: a recorder set later, or one set only for a thread or a scope
/// (`metrics::with_local_recorder`), does not see these counters.
macro_rules! hot_counter {
    ($name:literal) => {{
        static HANDLE: ::std::sync::OnceLock<::metrics::Counter> = ::std::sync::OnceLock::new();
        HANDLE.get_or_init(|| {
            let _ = $crate::telemetry::metrics_handle();
            ::metrics::counter!($name)
        })
    }};
}
pub(crate) use hot_counter;

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
