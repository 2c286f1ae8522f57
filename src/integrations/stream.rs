//! The admin event stream: every presence change of every user, live, resumable from the
//! event log.
//!
//! A stream subscribes to the engine's changes first, then replays the log from the resume
//! point, then goes live; a change that arrives both ways is sent once (per user, nothing at or
//! below the highest `seq` sent is sent again). The resume point is the highest `seq` the
//! client saw less a margin: changes of different users can be heard out of `seq` order
//! (they come from different nodes, and the log is written in batches), so a change just below
//! it may still be missing; clients tell repeats by the change's `id`. A stream that falls
//! behind the live channel goes back to the log rather than skip.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{ChangeEvent, EventLog};
use crate::domain::{PresenceEvent, UserId};
use crate::store::Store;

/// Margin (µs) below the resume point that is replayed again.
pub const RESUME_MARGIN_MICROS: u64 = 1_000_000;
/// Changes read from the log at a time.
const PAGE: usize = 500;

/// One change to send: the stream position after it (the SSE `id`) and its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamItem {
    /// The highest `seq` sent so far (resume from here with `Last-Event-ID`).
    pub position: u64,
    /// The change ([`ChangeEvent`] JSON).
    pub json: String,
}

/// A stream of every change; `resume_after` is the client's `Last-Event-ID`, if any.
pub struct ChangeStream {
    store: Arc<dyn Store>,
    log: EventLog,
    /// Whether the log was asked to write what was heard before the subscription.
    synced: bool,
    live: broadcast::Receiver<PresenceEvent>,
    /// Where the next log read starts; `None` while live.
    replay: Option<(u64, UserId)>,
    sent: HashMap<UserId, u64>,
    position: u64,
    shutdown: CancellationToken,
    buffered: std::collections::VecDeque<StreamItem>,
}

impl ChangeStream {
    /// Subscribes to `live` changes and prepares the replay from `resume_after`.
    pub fn new(
        store: Arc<dyn Store>,
        log: EventLog,
        live: broadcast::Receiver<PresenceEvent>,
        resume_after: Option<u64>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            log,
            synced: false,
            live,
            replay: resume_after
                .map(|position| (position.saturating_sub(RESUME_MARGIN_MICROS), UserId(0))),
            sent: HashMap::new(),
            position: resume_after.unwrap_or(0),
            shutdown,
            buffered: std::collections::VecDeque::new(),
        }
    }

    /// Records `seq` of `user` as sent; `false` if it was already.
    fn admit(&mut self, user: UserId, seq: u64) -> bool {
        let sent = self.sent.entry(user).or_insert(0);
        if seq <= *sent {
            return false;
        }
        *sent = seq;
        self.position = self.position.max(seq);
        true
    }

    /// The next change, or `None` when the server shuts down.
    pub async fn next(&mut self) -> Option<StreamItem> {
        loop {
            if let Some(item) = self.buffered.pop_front() {
                return Some(item);
            }
            if let Some(after) = self.replay {
                if !self.synced {
                    // Changes heard before the subscription may still be on their way to the
                    // log; the replay must find them there.
                    self.log.written().await;
                    self.synced = true;
                }
                match self.store.events_after(after, PAGE).await {
                    Ok(page) => {
                        self.replay = page
                            .last()
                            .filter(|_| page.len() == PAGE)
                            .map(|last| (last.seq, last.user_id));
                        for event in page {
                            if self.admit(event.user_id, event.seq) {
                                let position = self.position;
                                self.buffered.push_back(StreamItem {
                                    position,
                                    json: event.payload,
                                });
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the event log; streaming live only");
                        self.replay = None;
                    }
                }
                continue;
            }
            let received = tokio::select! {
                () = self.shutdown.cancelled() => return None,
                received = self.live.recv() => received,
            };
            match received {
                Ok(event) => {
                    if self.admit(event.user_id, event.seq) {
                        return Some(StreamItem {
                            position: self.position,
                            json: ChangeEvent::from(&event).to_json(),
                        });
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "an admin event stream fell behind; replaying the log"
                    );
                    let from = self.position.saturating_sub(RESUME_MARGIN_MICROS);
                    self.replay = Some((from, UserId(0)));
                    self.synced = false;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
