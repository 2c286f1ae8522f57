//! The online count over time, for the admin dashboard's chart: one sample per wall-clock
//! minute, the last day of them kept in memory (what the dashboard reads) and every one written
//! to the store, from which a restarted node reloads its chart. In a cluster every node samples
//! the shared count, so they all hold and write the same numbers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::engine::PresenceEngine;
use crate::store::{Store, StoreError};

/// Minutes the chart covers (and memory keeps).
pub const WINDOW_MINUTES: i64 = 24 * 60;

/// Samples older than this many minutes are deleted from the store.
const KEEP_MINUTES: i64 = 2 * WINDOW_MINUTES;

/// One minute's online count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Minutes since the Unix epoch.
    pub minute: i64,
    /// Users online then.
    pub online: u64,
}

impl Sample {
    /// The start of the sample's minute.
    pub fn at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.minute.saturating_mul(60), 0).unwrap_or_default()
    }
}

/// The last day of samples. Cheap to clone (a handle).
#[derive(Clone, Default)]
pub struct OnlineHistory {
    /// Oldest first, one per minute at most. Held only to push or copy, never across `.await`.
    samples: Arc<Mutex<VecDeque<Sample>>>,
}

/// The minute `at` falls in.
pub fn minute_of(at: DateTime<Utc>) -> i64 {
    at.timestamp().div_euclid(60)
}

impl OnlineHistory {
    /// The history of the last day as the store kept it.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub async fn load(store: &dyn Store, now: DateTime<Utc>) -> Result<Self, StoreError> {
        let since = minute_of(now) - WINDOW_MINUTES;
        let samples = store
            .online_samples(since)
            .await?
            .into_iter()
            .map(|(minute, online)| Sample { minute, online })
            .collect();
        Ok(Self {
            samples: Arc::new(Mutex::new(samples)),
        })
    }

    /// The samples of the last day, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples.iter().copied().collect()
    }

    /// Adds (or, for the same minute, replaces) a sample and forgets those out of the window.
    fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        match samples.back_mut() {
            Some(last) if last.minute == sample.minute => *last = sample,
            Some(last) if last.minute > sample.minute => return,
            _ => samples.push_back(sample),
        }
        let oldest = sample.minute - WINDOW_MINUTES;
        while samples.front().is_some_and(|s| s.minute < oldest) {
            samples.pop_front();
        }
    }
}

/// Takes a sample now and then at the start of every wall-clock minute, until `stop`.
pub async fn run(
    history: OnlineHistory,
    engine: PresenceEngine,
    store: Arc<dyn Store>,
    stop: CancellationToken,
) {
    let mut last_prune = None;
    loop {
        let now = Utc::now();
        let minute = minute_of(now);
        match engine.online_count().await {
            Ok(online) => {
                let sample = Sample {
                    minute,
                    online: u64::try_from(online).unwrap_or(u64::MAX),
                };
                history.push(sample);
                if let Err(error) = store.record_online_sample(minute, sample.online).await {
                    tracing::warn!(%error, "cannot store the online sample");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot count online users for the chart"),
        }
        if last_prune.is_none_or(|at| minute - at >= 60) {
            last_prune = Some(minute);
            if let Err(error) = store.prune_online_samples(minute - KEEP_MINUTES).await {
                tracing::warn!(%error, "cannot prune old online samples");
            }
        }
        let into_minute = u64::try_from(now.timestamp_millis().rem_euclid(60_000)).unwrap_or(0);
        let wait = Duration::from_millis(60_000 - into_minute);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_is_sampled_once_and_the_window_slides() {
        let history = OnlineHistory::default();
        history.push(Sample {
            minute: 10,
            online: 1,
        });
        history.push(Sample {
            minute: 10,
            online: 2,
        });
        history.push(Sample {
            minute: 9,
            online: 7,
        });
        assert_eq!(
            history.samples(),
            vec![Sample {
                minute: 10,
                online: 2
            }]
        );
        history.push(Sample {
            minute: 10 + WINDOW_MINUTES + 1,
            online: 3,
        });
        assert_eq!(history.samples().len(), 1);
        assert_eq!(history.samples()[0].online, 3);
    }
}
