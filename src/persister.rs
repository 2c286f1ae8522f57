//! Presence between the engine and the store: write-behind in batches, and restoring the
//! engine from the store when its state is new or was lost.
//!
//! One step ([`flush`]) takes everything that changed since the last step and writes it in
//! transactions of up to 512 users, spaced so that a large batch does not take a core away from
//! requests at once; the loop runs it about every `persist_interval` and once more at shutdown. A
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

use crate::domain::{PresenceWrite, UserId};
use crate::engine::PresenceEngine;
use crate::store::{Liveness, Store, StoreError};

/// Users written per transaction: a large batch is written in chunks of this many.
const CHUNK: usize = 512;

/// Writes whose keys [`InUserOrder`] reads between two yields (about 100 µs' worth).
const KEYS_PER_STEP: usize = 8192;

/// How [`flush`] spaces its chunks.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// One chunk after the other (at shutdown, or in tests).
    Eager,
    /// After each chunk, wait as long as it took, while the step has run for less than this:
    /// a large batch then takes at most half of one core at a time (the store's writer shares
    /// the cores with the request workers), instead of a burst that delays requests.
    Spread(Duration),
}

/// Writes the engine's changed state once, in chunks of [`CHUNK`] users; returns how many
/// users were written.
///
/// # Errors
/// The store's error; the chunk that failed and those not yet written are handed back to the
/// engine so the next step retries them.
pub async fn flush(
    engine: &PresenceEngine,
    store: &dyn Store,
    pace: Pace,
) -> Result<usize, StoreError> {
    let maintenance = engine.maintenance();
    let mut batch = InUserOrder::of(maintenance.take_dirty().await).await;
    let started = tokio::time::Instant::now();
    let mut written = 0;
    while let Some(chunk) = batch.next_chunk() {
        let chunk_started = tokio::time::Instant::now();
        if let Err(error) = store.write_presence(&chunk).await {
            let mut unwritten = chunk;
            unwritten.extend(batch.rest());
            maintenance.mark_dirty(unwritten).await;
            return Err(error);
        }
        metrics::counter!("lastseen_presence_flushes_total").increment(1);
        metrics::counter!("lastseen_presence_rows_written_total").increment(chunk.len() as u64);
        maintenance.evict_persisted(&chunk).await;
        written += chunk.len();
        if let Pace::Spread(within) = pace
            && !batch.is_empty()
            && started.elapsed() < within
        {
            tokio::time::sleep(chunk_started.elapsed()).await;
        }
    }
    Ok(written)
}

/// A flush's writes in user-id order, handed out [`CHUNK`] at a time. In id order each chunk
/// updates a narrow range of the tables' pages; in the engine's (hash) order every chunk would
/// rewrite nearly every page, multiplying what each commit writes (measured: the SQLite
/// writer's share of the server's CPU went from 15% to 35%).
///
/// Sorting 100,000 writes in place took 5.5 ms, all of it on one request worker. Here only
/// `(user, position)` keys are sorted, on the blocking pool when there are more than a
/// chunk's worth, and each chunk's writes are gathered when it is written (~50 µs for 512).
struct InUserOrder {
    writes: Vec<Option<PresenceWrite>>,
    /// Positions in `writes`, in user-id order; what is left to hand out.
    order: std::vec::IntoIter<(UserId, usize)>,
}

impl InUserOrder {
    async fn of(writes: Vec<PresenceWrite>) -> Self {
        let mut order = Self::keys_of(&writes).await;
        if order.len() > CHUNK {
            order = match tokio::task::spawn_blocking(move || {
                order.sort_unstable();
                order
            })
            .await
            {
                Ok(sorted) => sorted,
                // The blocking pool is shutting down (the keys went with it): sort here.
                Err(_) => {
                    let mut order = Self::keys_of(&writes).await;
                    order.sort_unstable();
                    order
                }
            };
        } else {
            order.sort_unstable();
        }
        Self {
            writes: writes.into_iter().map(Some).collect(),
            order: order.into_iter(),
        }
    }

    /// Each write's user and position. Reading 100,000 writes' ids took 1.2 ms (the writes
    /// are cold in the cache), so it goes in steps with a yield between them.
    async fn keys_of(writes: &[PresenceWrite]) -> Vec<(UserId, usize)> {
        let mut keys = Vec::with_capacity(writes.len());
        for (at, write) in writes.iter().enumerate() {
            if at % KEYS_PER_STEP == KEYS_PER_STEP - 1 {
                tokio::task::yield_now().await;
            }
            keys.push((write.user_id, at));
        }
        keys
    }

    /// The next chunk, if any writes are left.
    fn next_chunk(&mut self) -> Option<Vec<PresenceWrite>> {
        let chunk: Vec<_> = self
            .order
            .by_ref()
            .take(CHUNK)
            .filter_map(|(_, at)| self.writes.get_mut(at).and_then(Option::take))
            .collect();
        (!chunk.is_empty()).then_some(chunk)
    }

    /// Whether every write has been handed out.
    fn is_empty(&self) -> bool {
        self.order.len() == 0
    }

    /// The writes not handed out yet.
    fn rest(self) -> impl Iterator<Item = PresenceWrite> {
        self.writes.into_iter().flatten()
    }
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
        let flushed = flush(&engine, store.as_ref(), Pace::Spread(interval / 2)).await;
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
    match flush(&engine, store.as_ref(), Pace::Eager).await {
        Ok(count) => tracing::info!(users = count, "final presence flush done"),
        Err(error) => {
            tracing::error!(error = %error, cause = ?std::error::Error::source(&error), "final presence flush failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{CHUNK, InUserOrder, Pace, flush, next_step_after};
    use std::sync::Arc;
    use std::time::Duration;

    use chrono::Utc;

    use crate::domain::{
        Activity, Platform, PresenceStatus, PresenceWrite, SessionRef, UserId, Username,
    };
    use crate::engine::PresenceEngine;
    use crate::engine::local::LocalBackend;
    use crate::store::Liveness;

    #[tokio::test]
    async fn a_batch_larger_than_a_chunk_is_written_in_full_and_once() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("p.db").display());
        let store = crate::store::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        let timeout = Duration::from_secs(300);
        let engine = PresenceEngine::new(Arc::new(LocalBackend::new(timeout, None)));
        let users = CHUNK * 2 + 7;
        for i in 0..users {
            let name = Username::parse(&format!("user{i}")).unwrap();
            let user = store.create_user(&name, "x", false).await.unwrap();
            let hash = i.to_le_bytes();
            let id = store
                .create_session(user.id, &hash, Utc::now())
                .await
                .unwrap();
            let session = SessionRef {
                id,
                platform: Platform::Web,
            };
            engine
                .touch(user.id, session, Activity::Keepalive)
                .await
                .unwrap();
        }
        let pace = Pace::Spread(Duration::from_millis(200));
        let written = flush(&engine, store.as_ref(), pace).await.unwrap();
        assert_eq!(written, users);
        assert_eq!(flush(&engine, store.as_ref(), pace).await.unwrap(), 0);
        let live = store
            .load_live(Liveness::at(Utc::now(), timeout))
            .await
            .unwrap();
        assert_eq!(live.len(), users, "every user is stored online");
    }

    fn write(user: i64) -> PresenceWrite {
        PresenceWrite {
            user_id: UserId(user),
            status: PresenceStatus::Online,
            last_seen: None,
            seq: 0,
            sessions: Vec::new(),
            expired_status: None,
        }
    }

    #[tokio::test]
    async fn writes_come_out_in_user_order_a_chunk_at_a_time_and_what_is_left_is_kept() {
        // Scrambled ids, more than two chunks' worth (so the keys are sorted off this thread).
        let users = i64::try_from(CHUNK * 2 + 7).unwrap();
        let scrambled: Vec<_> = (0..users).map(|i| write(i * 7919 % users)).collect();
        let mut batch = InUserOrder::of(scrambled).await;
        let first = batch.next_chunk().unwrap();
        let second = batch.next_chunk().unwrap();
        assert_eq!((first.len(), second.len()), (CHUNK, CHUNK));
        let ids: Vec<i64> = first.iter().chain(&second).map(|w| w.user_id.0).collect();
        let expected: Vec<i64> = (0..i64::try_from(CHUNK * 2).unwrap()).collect();
        assert_eq!(ids, expected, "ascending across chunks");
        assert!(!batch.is_empty());
        let mut rest: Vec<i64> = batch.rest().map(|w| w.user_id.0).collect();
        rest.sort_unstable();
        assert_eq!(
            rest,
            (i64::try_from(CHUNK * 2).unwrap()..users).collect::<Vec<_>>()
        );

        let mut small = InUserOrder::of(vec![write(3), write(1), write(2)]).await;
        let only: Vec<i64> = small
            .next_chunk()
            .unwrap()
            .iter()
            .map(|w| w.user_id.0)
            .collect();
        assert_eq!(only, [1, 2, 3]);
        assert!(small.is_empty());
        assert!(small.next_chunk().is_none());
    }

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
