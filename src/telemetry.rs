//! Tracing set-up: one subscriber, installed once, writing to the writer it is given.
//!
//! The server writes logs to standard error so that standard output carries only what scripts
//! read (the `listening on ...` line, command results). `RUST_LOG` filters, default `info`.

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
