//! Presence between the engine and the store: write-behind in batches, and restoring the
//! engine from the store when its state is new or was lost.
//!
//! One step ([`flush`]) takes everything that changed since the last step and writes it in one
//! transaction; the loop runs it about every `persist_interval` and once more at shutdown. A
//! heartbeat therefore never writes to the database; a user active all the time costs one row
//! update per interval. A failed write is logged and retried at the next step.
//!
//! The loop is deadline-based: a step starts `persist_interval` minus the previous step's
//! duration after the previous one started, so it commits about `persist_interval` after the
//! previous snapshot. A crash (SIGKILL, power loss) then loses at most about `persist_interval`
//! of activity, rather than an interval plus a flush.
//!
//! [`restore`] rebuilds presence from the store: users whose sessions all ended while nothing
//! tracked them become offline with `last_seen` kept; the others are online for their
//! remaining time. It runs at start-up and again whenever the engine reports it lost its state
//! (a shared Redis that came back empty); with a shared backend only one node does it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::engine::PresenceEngine;
use crate::store::{Liveness, Store, StoreError};

/// Writes the engine's changed state once; returns how many users were written.
///
/// # Errors
/// The store's error; the batch is handed back to the engine so the next step retries it.
pub async fn flush(engine: &PresenceEngine, store: &dyn Store) -> Result<usize, StoreError> {
    let maintenance = engine.maintenance();
    let batch = maintenance.take_dirty().await;
    if batch.is_empty() {
        return Ok(0);
    }
    if let Err(error) = store.write_presence(&batch).await {
        maintenance.mark_dirty(batch).await;
        return Err(error);
    }
    metrics::counter!("lastseen_presence_flushes_total").increment(1);
    metrics::counter!("lastseen_presence_rows_written_total").increment(batch.len() as u64);
    maintenance.evict_persisted(&batch).await;
    Ok(batch.len())
}

/// Rebuilds the engine's state from the store, if this node is the one to do it.
///
/// # Errors
/// Store or engine failures.
pub async fn restore(
    engine: &PresenceEngine,
    store: &dyn Store,
    timeout: Duration,
) -> anyhow::Result<()> {
    let maintenance = engine.maintenance();
    if !maintenance
        .claim_restore()
        .await
        .context("while claiming the restore")?
    {
        tracing::info!("presence state is already there; nothing to restore");
        return Ok(());
    }
    let live = Liveness::at(Utc::now(), timeout);
    let went_offline = store
        .mark_inactive_offline(live, false)
        .await
        .context("while marking users whose sessions ended during downtime offline")?;
    let users = store
        .load_live(live)
        .await
        .context("while loading live sessions")?;
    let online = users.len();
    maintenance
        .restore(users)
        .await
        .context("while restoring presence")?;
    maintenance
        .restored()
        .await
        .context("while finishing the restore")?;
    tracing::info!(online, went_offline, "presence restored from the database");
    Ok(())
}

/// How long after a step's start the next one starts: `interval` less the step's duration
/// (the next one probably takes as long), so it commits about `interval` after this one's
/// snapshot; at least a quarter of `interval`, so a slow store is not written back to back.
fn next_step_after(interval: Duration, took: Duration) -> Duration {
    interval.saturating_sub(took).max(interval / 4)
}

/// Runs [`flush`] every `interval` until `shutdown`, then once more; restores again whenever
/// the engine lost its state.
pub async fn run(
    engine: PresenceEngine,
    store: Arc<dyn Store>,
    interval: Duration,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut next = tokio::time::Instant::now() + interval;
    let mut lost = engine.maintenance().lost_state();
    lost.mark_unchanged();
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep_until(next) => {}
            Ok(()) = lost.changed() => {
                if let Err(error) = restore(&engine, store.as_ref(), timeout).await {
                    tracing::error!(error = format!("{error:#}"), "restoring presence failed");
                }
                continue;
            }
        }
        let started = tokio::time::Instant::now();
        let flushed = flush(&engine, store.as_ref()).await;
        next = started + next_step_after(interval, started.elapsed());
        match flushed {
            Ok(_) if failing => {
                failing = false;
                tracing::info!("presence flush succeeded again; the retried changes are stored");
            }
            Ok(_) => {}
            // Logged once per outage: the next steps retry the same users every interval.
            Err(error) if !failing => {
                failing = true;
                tracing::error!(error = %error, cause = ?std::error::Error::source(&error), "presence flush failed; retrying every interval");
            }
            Err(error) => tracing::debug!(%error, "presence flush failed again"),
        }
    }
    match flush(&engine, store.as_ref()).await {
        Ok(count) => tracing::info!(users = count, "final presence flush done"),
        Err(error) => {
            tracing::error!(error = %error, cause = ?std::error::Error::source(&error), "final presence flush failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::next_step_after;
    use std::time::Duration;

    #[test]
    fn the_next_step_starts_early_by_the_duration_of_the_last_one() {
        let second = Duration::from_secs(1);
        let ms = Duration::from_millis;
        assert_eq!(next_step_after(second, ms(0)), second);
        assert_eq!(next_step_after(second, ms(160)), ms(840));
        assert_eq!(next_step_after(second, ms(900)), ms(250));
        assert_eq!(next_step_after(second, ms(5000)), ms(250));
    }
}
