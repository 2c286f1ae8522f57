//! Progress bars on standard error (hidden when it is not a terminal).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting `len` items of work.
pub fn counter(name: &str, len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(name.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A bar over a phase of fixed length, whose message the caller keeps current.
pub fn timed(name: &str, length: Duration) -> ProgressBar {
    let tenths = u64::try_from(length.as_millis() / 100)
        .unwrap_or(u64::MAX)
        .max(1);
    let bar = ProgressBar::new(tenths);
    if let Ok(style) = ProgressStyle::with_template("{prefix:>14} [{bar:30}] {elapsed:>3} {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(name.to_owned());
    bar
}

/// A spinner for a step of unknown length.
pub fn step(name: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{prefix:>14} {spinner} {elapsed} {msg}") {
        bar.set_style(style);
    }
    bar.set_prefix(name.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
