//! The SSE side of push: an open stream is a connection of the hub whose outbox is drained
//! into `snapshot`, `presence`, `typing` and `error` events. Each presence-bearing event's `id`
//! is the highest `seq` delivered so far; a reconnecting `EventSource` sends it back as
//! `Last-Event-ID`, and its snapshot then holds only users that changed after it.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::response::sse::Event;
use futures_util::Stream;
use tokio_util::sync::CancellationToken;

use super::hub::Connection;
use super::protocol::ServerMessage;
use super::{Delivered, LiveSession, Realtime, RealtimeError};
use crate::auth::Session;

/// Margin (µs) subtracted from `Last-Event-ID`: transitions of different users published
/// within this window may reach the stream out of `seq` order, so they are re-sent rather than
/// risk missing one.
const RESUME_MARGIN_MICROS: u64 = 1_000_000;

/// Opens a stream of `session` watching `ids` (resuming after `last_event_id` if given): the
/// stream holds the session live while it is open.
///
/// # Errors
/// Too many open connections for the user, a subscription over the limit, or a failure to
/// read presence.
pub async fn open(
    realtime: &Realtime,
    session: &Session,
    ids: &[i64],
    last_event_id: Option<u64>,
) -> Result<impl Stream<Item = Result<Event, Infallible>> + use<>, RealtimeError> {
    let resume_after = last_event_id.map(|id| id.saturating_sub(RESUME_MARGIN_MICROS));
    let mut connection = realtime.hub.connect(session.viewer(), session.session_id)?;
    let live = LiveSession::open(realtime, session.user_id, session.reference()).await?;
    super::subscribe(realtime, &mut connection, ids, |_| resume_after).await?;
    let stream = EventStream {
        connection,
        _live: live,
        delivered: Delivered::default(),
        pending: VecDeque::new(),
        shutdown: realtime.shutdown.clone(),
        expires: session.deadline(),
        done: false,
    };
    Ok(futures_util::stream::unfold(stream, EventStream::next))
}

struct EventStream {
    connection: Connection,
    /// Keeps the session live while the stream is open.
    _live: LiveSession,
    delivered: Delivered,
    pending: VecDeque<Event>,
    shutdown: CancellationToken,
    /// When the session's token expires; the stream ends then (a reconnect needs a new one).
    expires: Option<tokio::time::Instant>,
    done: bool,
}

impl EventStream {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.done {
                return None;
            }
            let outbox = self.connection.outbox().clone();
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                () = super::until(self.expires) => return None,
                () = outbox.ready() => {}
            }
            let (messages, close) = outbox.drain();
            for message in messages {
                if let Some(message) = self.delivered.admit(message) {
                    let event = self.to_event(&message);
                    self.pending.push_back(event);
                }
            }
            self.done = close.is_some();
        }
    }

    fn to_event(&self, message: &ServerMessage) -> Event {
        let name = match message {
            ServerMessage::Ready { .. } => "ready",
            ServerMessage::Snapshot { .. } => "snapshot",
            ServerMessage::Presence(_) => "presence",
            ServerMessage::Typing { .. } => "typing",
            ServerMessage::Error { .. } => "error",
        };
        let event = Event::default().event(name).data(message.to_json());
        match message {
            ServerMessage::Snapshot { .. } | ServerMessage::Presence(_) => {
                event.id(self.delivered.high_water().to_string())
            }
            _ => event,
        }
    }
}
