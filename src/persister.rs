//! Write-behind of presence: copies the engine's dirty state into the store in batches.
//!
//! One step ([`flush`]) takes everything that changed since the last step and writes it in one
//! transaction; the loop runs it every `persist_interval` and once more at shutdown. A
//! heartbeat therefore never writes to the database; a user active all the time costs one row
//! update per interval. A failed write is logged and retried at the next step.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::UserId;
use crate::engine::PresenceEngine;
use crate::store::{Store, StoreError};

/// Writes the engine's dirty state once; returns how many users were written.
///
/// # Errors
/// The store's error; the users stay dirty so the next step retries them.
pub async fn flush(engine: &PresenceEngine, store: &dyn Store) -> Result<usize, StoreError> {
    let batch = engine.take_dirty().await;
    if batch.is_empty() {
        return Ok(0);
    }
    let users: Vec<UserId> = batch.iter().map(|w| w.user_id).collect();
    if let Err(error) = store.write_presence(&batch).await {
        engine.mark_dirty(&users).await;
        return Err(error);
    }
    metrics::counter!("lastseen_presence_flushes_total").increment(1);
    metrics::counter!("lastseen_presence_rows_written_total").increment(batch.len() as u64);
    engine.evict_persisted(&users).await;
    Ok(batch.len())
}

/// Runs [`flush`] every `interval` until `shutdown`, then once more.
pub async fn run(
    engine: PresenceEngine,
    store: Arc<dyn Store>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        match flush(&engine, store.as_ref()).await {
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
