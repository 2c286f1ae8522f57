//! What lastseen offers the backends beside it: every presence change, recorded in the store
//! (the admin event stream resumes from that log) and delivered to webhook endpoints.
//!
//! [`record`] listens to the engine's changes (on a multi-node deployment every node hears
//! every change) and writes them in batches; the store queues a change for the webhook
//! endpoints only where its insert into the log was the first, so every change is queued once
//! per endpoint. [`webhooks::deliver`] then sends each endpoint's queue, in order, signed, with
//! retries; the log is pruned after `event_retention`.

pub mod stream;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::domain::{Availability, Platform, PresenceEvent, PresenceStatus};
use crate::presence::rfc3339;
use crate::store::Store;
use crate::store::events::{LoggedEvent, OFFLINE_PREFIX, WebhookPlan};

/// Longest a batch of changes waits before it is written.
const BATCH_PERIOD: Duration = Duration::from_millis(100);
/// Most changes written in one transaction.
const BATCH_MAX: usize = 1000;
/// Most changes kept while the store refuses them (the oldest are dropped beyond it).
const BUFFER_MAX: usize = 100_000;
/// How often the log is pruned.
const PRUNE_PERIOD: Duration = Duration::from_secs(600);

/// One presence change as integrators receive it (webhooks, `GET /api/admin/events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ChangeEvent {
    /// Unique and stable (the same on every retry and every node): `<user_id>-<seq>`.
    pub id: String,
    /// Whose presence changed.
    pub user_id: i64,
    /// `online` or `offline`.
    pub online_status: PresenceStatus,
    /// The user's last activity (RFC 3339 UTC).
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_seen: Option<DateTime<Utc>>,
    /// Per user, strictly increasing; the change's time in microseconds.
    pub seq: u64,
    /// `active`, `idle` or `dnd`; null while offline.
    pub availability: Option<Availability>,
    /// The custom status text, or null.
    pub status_text: Option<String>,
    /// The custom status emoji, or null.
    pub status_emoji: Option<String>,
    /// The sorted distinct platforms of the live sessions (`[]` while offline).
    pub platforms: Vec<Platform>,
}

impl From<&PresenceEvent> for ChangeEvent {
    fn from(event: &PresenceEvent) -> Self {
        Self {
            id: format!("{}-{}", event.user_id.0, event.seq),
            user_id: event.user_id.0,
            online_status: event.status,
            last_seen: Some(event.last_seen),
            seq: event.seq,
            availability: event.availability,
            status_text: event.manual.text.as_deref().map(str::to_owned),
            status_emoji: event.manual.emoji.as_deref().map(str::to_owned),
            platforms: event.platforms.to_vec(),
        }
    }
}

impl ChangeEvent {
    /// The JSON text of this change.
    pub fn to_json(&self) -> String {
        // Plain fields only: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The log entry of a change: its JSON, and the state a viewer sees after it.
fn logged(event: &PresenceEvent) -> LoggedEvent {
    let change = ChangeEvent::from(event);
    let offline = event.status == PresenceStatus::Offline;
    let state = format!(
        "{}|{}|{}|{}|{}",
        if offline { OFFLINE_PREFIX } else { "online" },
        event.availability.map_or("", Availability::as_str),
        event.platforms.bits(),
        event.manual.text.as_deref().unwrap_or_default(),
        event.manual.emoji.as_deref().unwrap_or_default(),
    );
    LoggedEvent {
        user_id: event.user_id,
        seq: event.seq,
        at_us: micros_of_seq(event.seq),
        state,
        offline,
        payload: change.to_json(),
    }
}

/// A change's time: its `seq` is its time in microseconds (bumped past the previous one).
fn micros_of_seq(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// Now, in microseconds since the Unix epoch.
pub(crate) fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

/// Asks the recorder to write what it has heard so far; the reply says it is written.
type FlushRequest = oneshot::Sender<()>;

/// A handle on the event log's recorder: lets a reader wait until every change heard so far is
/// in the log (so a replay from the log followed by live changes misses none).
#[derive(Debug, Clone, Default)]
pub struct EventLog {
    flush: Option<mpsc::Sender<FlushRequest>>,
}

/// The recorder's side of [`EventLog`].
#[derive(Debug)]
pub struct FlushRequests(mpsc::Receiver<FlushRequest>);

impl EventLog {
    /// A log with a recorder (hand the [`FlushRequests`] to [`record`]).
    pub fn recorded() -> (Self, FlushRequests) {
        let (sender, receiver) = mpsc::channel(64);
        (
            Self {
                flush: Some(sender),
            },
            FlushRequests(receiver),
        )
    }

    /// Waits (at most two seconds) until the changes heard before this call are written;
    /// returns at once when nothing records changes.
    pub async fn written(&self) {
        let Some(flush) = &self.flush else { return };
        let (reply, written) = oneshot::channel();
        if flush.send(reply).await.is_ok() {
            let _ = tokio::time::timeout(FLUSH_WAIT, written).await;
        }
    }
}

/// Longest wait for the recorder to confirm a flush.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

/// Records the changes heard on `events` until `shutdown` (then writes what it still holds),
/// waking the webhook deliverers after each write and answering flush requests.
pub async fn record(
    mut events: broadcast::Receiver<PresenceEvent>,
    store: Arc<dyn Store>,
    plan: WebhookPlan,
    written: Arc<Notify>,
    FlushRequests(mut flushes): FlushRequests,
    shutdown: CancellationToken,
) {
    use broadcast::error::RecvError;
    let mut batch: Vec<LoggedEvent> = Vec::new();
    let mut failing = false;
    loop {
        let mut replies = Vec::new();
        let stop = tokio::select! {
            () = shutdown.cancelled() => true,
            Some(reply) = flushes.recv() => {
                replies.push(reply);
                false
            }
            received = events.recv() => {
                match received {
                    Ok(event) => batch.push(logged(&event)),
                    Err(RecvError::Lagged(missed)) => missed_events(missed),
                    Err(RecvError::Closed) => return,
                }
                // Gather what else arrives within the batch period.
                let deadline = tokio::time::Instant::now() + BATCH_PERIOD;
                while batch.len() < BATCH_MAX {
                    match tokio::time::timeout_at(deadline, events.recv()).await {
                        Ok(Ok(event)) => batch.push(logged(&event)),
                        Ok(Err(RecvError::Lagged(missed))) => missed_events(missed),
                        Ok(Err(RecvError::Closed)) | Err(_) => break,
                    }
                }
                false
            }
        };
        if stop || !replies.is_empty() {
            // Everything heard until now goes into this write.
            drain(&mut events, &mut batch);
            while let Ok(reply) = flushes.try_recv() {
                replies.push(reply);
            }
        }
        match store.record_events(&batch, &plan).await {
            Ok(()) => {
                if failing {
                    failing = false;
                    tracing::info!("presence changes are recorded again");
                }
                metrics::counter!("lastseen_events_recorded_total").increment(batch.len() as u64);
                batch.clear();
                written.notify_waiters();
            }
            Err(error) => {
                if !failing {
                    failing = true;
                    tracing::error!(%error, "cannot record presence changes; retrying");
                }
                if batch.len() > BUFFER_MAX {
                    let dropped = batch.len() - BUFFER_MAX;
                    batch.drain(..dropped);
                    missed_events(dropped as u64);
                }
                if !stop && replies.is_empty() {
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
        for reply in replies {
            let _ = reply.send(());
        }
        if stop {
            return;
        }
    }
}

/// Moves every change already heard into `batch`.
fn drain(events: &mut broadcast::Receiver<PresenceEvent>, batch: &mut Vec<LoggedEvent>) {
    use broadcast::error::TryRecvError;
    loop {
        match events.try_recv() {
            Ok(event) => batch.push(logged(&event)),
            Err(TryRecvError::Lagged(missed)) => missed_events(missed),
            Err(TryRecvError::Empty | TryRecvError::Closed) => return,
        }
    }
}

fn missed_events(missed: u64) {
    metrics::counter!("lastseen_events_missed_total").increment(missed);
    tracing::warn!(
        missed,
        "presence changes were not recorded (the recorder fell behind)"
    );
}

/// Forgets logged changes older than `retention`, every ten minutes until `shutdown`.
pub async fn prune(store: Arc<dyn Store>, retention: Duration, shutdown: CancellationToken) {
    let retention_us = i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
    loop {
        match store
            .prune_events(now_us().saturating_sub(retention_us))
            .await
        {
            Ok(pruned) if pruned > 0 => tracing::debug!(pruned, "pruned the event log"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "could not prune the event log"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(PRUNE_PERIOD) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ManualStatus, Platforms, UserId};

    fn event(status: PresenceStatus, seq: u64) -> PresenceEvent {
        PresenceEvent {
            user_id: UserId(7),
            status,
            last_seen: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            seq,
            availability: (status == PresenceStatus::Online).then_some(Availability::Active),
            platforms: if status == PresenceStatus::Online {
                [Platform::Web].into_iter().collect()
            } else {
                Platforms::default()
            },
            manual: ManualStatus::default(),
        }
    }

    #[test]
    fn a_change_has_a_stable_id_and_the_presence_fields() {
        let change = ChangeEvent::from(&event(PresenceStatus::Online, 1_700_000_000_000_001));
        let json: serde_json::Value = serde_json::from_str(&change.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "7-1700000000000001", "user_id": 7, "online_status": "online",
                "last_seen": "2023-11-14T22:13:20Z", "seq": 1_700_000_000_000_001_u64,
                "availability": "active", "status_text": null, "status_emoji": null,
                "platforms": ["web"]
            })
        );
    }

    #[test]
    fn the_logged_state_tells_offline_from_online_and_ignores_times() {
        let online = logged(&event(PresenceStatus::Online, 10));
        let again = logged(&event(PresenceStatus::Online, 99));
        let offline = logged(&event(PresenceStatus::Offline, 20));
        assert!(!online.offline && offline.offline);
        assert!(offline.state.starts_with(OFFLINE_PREFIX));
        assert_eq!(online.state, again.state, "the same look at another time");
        assert_ne!(online.state, offline.state);
        assert_eq!(online.at_us, 10);
    }
}
