//! `GET /api/presence/events?user_ids=1,2,3`: presence as Server-Sent Events.
//!
//! The same messages as the WebSocket (`event: snapshot`, `event: presence`, `event: typing`),
//! the same visibility, and the stream is a live session like a socket. Each presence-bearing
//! event's `id` is the highest `seq` delivered so far; a reconnecting `EventSource` sends it
//! back as `Last-Event-ID` and its snapshot then holds only users that changed after it.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::hub::Connection;
use super::protocol::ServerMessage;
use super::{Delivered, LiveSession};
use crate::http::AppState;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiQuery, Authenticated};

/// Margin (µs) subtracted from `Last-Event-ID`: transitions of different users published
/// within this window may reach the stream out of `seq` order, so they are re-sent rather than
/// risk missing one.
const RESUME_MARGIN_MICROS: u64 = 1_000_000;

/// Query of the SSE endpoint.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Comma-separated user ids to watch, e.g. `1,2,3`.
    pub user_ids: String,
}

fn parse_ids(raw: &str) -> Result<Vec<i64>, ApiError> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| ApiError::invalid(format!("user_ids: {s:?} is not a user id")))
        })
        .collect()
}

/// Stream presence changes of `user_ids` as Server-Sent Events.
#[utoipa::path(
    get, path = "/api/presence/events", tag = "realtime",
    security(("bearer" = [])),
    params(EventsQuery, ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event id")),
    responses(
        (status = 200, description = "text/event-stream of snapshot, presence and typing events", content_type = "text/event-stream"),
        (status = 400, description = "Bad user_ids or too many of them", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 429, description = "Too many open connections for this user", body = ErrorBody),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    caller: Authenticated,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let ids = parse_ids(&query.user_ids)?;
    if ids.len() > state.settings.max_subscriptions {
        return Err(ApiError::invalid(format!(
            "at most {} user_ids per stream",
            state.settings.max_subscriptions
        )));
    }
    let resume_after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|id| id.saturating_sub(RESUME_MARGIN_MICROS));
    let session = &caller.session;
    let mut connection = state
        .hub
        .connect(session.viewer(), session.session_id)
        .map_err(|e| ApiError::TooManyRequests(e.to_string()))?;
    let live = LiveSession::open(&state, session.user_id, session.session_id).await?;
    super::subscribe(&state, &mut connection, &ids, |_| resume_after).await?;
    let stream = EventStream {
        connection,
        _live: live,
        delivered: Delivered::default(),
        pending: VecDeque::new(),
        shutdown: state.shutdown.clone(),
        done: false,
    };
    Ok(
        Sse::new(futures_util::stream::unfold(stream, EventStream::next))
            .keep_alive(KeepAlive::default()),
    )
}

struct EventStream {
    connection: Connection,
    /// Keeps the session live while the stream is open.
    _live: LiveSession,
    delivered: Delivered,
    pending: VecDeque<Event>,
    shutdown: CancellationToken,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_parse_as_a_comma_separated_list() {
        assert_eq!(parse_ids("1,2, 3,").unwrap(), vec![1, 2, 3]);
        assert!(parse_ids("1,x").is_err());
        assert!(parse_ids("").unwrap().is_empty());
    }
}
