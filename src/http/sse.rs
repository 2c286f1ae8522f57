//! `GET /api/presence/events?user_ids=1,2,3`: presence as Server-Sent Events.
//!
//! The same messages as the WebSocket (`event: snapshot`, `event: presence`, `event: typing`),
//! the same visibility, and the stream is a live session like a socket. This handler checks
//! the request and hands over to [`crate::realtime::stream::open`].

use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiQuery, Authenticated};
use super::limits::{self, ClientAddr};
use crate::realtime::stream;

/// Query of the SSE endpoint.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Comma-separated user ids to watch, e.g. `1,2,3` (required; may be empty). Optional in
    /// the type only so that a missing one gets our own 400.
    #[param(required = true)]
    pub user_ids: Option<String>,
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
        (status = 429, description = "Too many open connections for this user, or too many opened from this address (`connect_rate_limit`)", body = ErrorBody),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    addr: ClientAddr,
    caller: Authenticated,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    limits::count_connect(&state, &addr).await?;
    let Some(user_ids) = query.user_ids else {
        return Err(ApiError::invalid(
            "user_ids is required: the users to watch, comma-separated, e.g. \
             /api/presence/events?user_ids=1,2",
        ));
    };
    let ids = parse_ids(&user_ids)?;
    if ids.len() > state.settings.max_subscriptions {
        return Err(ApiError::invalid(format!(
            "at most {} user_ids per stream",
            state.settings.max_subscriptions
        )));
    }
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let events = stream::open(&state.realtime, &caller.session, &ids, last_event_id).await?;
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
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
