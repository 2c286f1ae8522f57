//! `GET /api/presence/ws`: authenticates the upgrade request (when it carries an
//! `Authorization` header or, from this server's own pages, the session cookie) and hands the socket to [`crate::realtime::socket::serve`].

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::cookie;
use super::error::{ApiError, ErrorBody};
use super::extract::bearer_from_headers;
use super::limits::{self, ClientAddr};
use crate::auth::{AuthError, Session};
use crate::realtime::socket;

/// Initial read buffer of a socket; it grows for larger frames (up to `max_message_bytes`).
const READ_BUFFER: usize = 4 * 1024;
/// Frames are batched up to this many bytes before a write (and always written on flush).
const WRITE_BUFFER: usize = 4 * 1024;

/// The session of the browser cookie, for an upgrade from this server's own pages. A stale
/// cookie is ignored (the socket may still authenticate with its first message); a cookie
/// sent from another origin is refused, as browsers send cookies with cross-site upgrades.
async fn cookie_session(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Session>, ApiError> {
    let Some(token) = cookie::session_token(headers) else {
        return Ok(None);
    };
    if !cookie::same_origin(headers) {
        return Err(ApiError::CrossOrigin);
    }
    match state.auth.authenticate(token).await {
        Ok(session) => Ok(Some(session)),
        Err(AuthError::InvalidToken) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// Upgrade to a presence socket.
#[utoipa::path(
    get, path = "/api/presence/ws", tag = "realtime",
    security((), ("bearer" = [])),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol (see docs/REALTIME.md)"),
        (status = 400, description = "Not a WebSocket upgrade request", body = ErrorBody),
        (status = 401, description = "The Authorization header carries an invalid token", body = ErrorBody),
        (status = 403, description = "The session cookie was sent from another origin", body = ErrorBody),
        (status = 429, description = "Too many sockets and streams opened from this address (`connect_rate_limit`); see Retry-After", body = ErrorBody),
    )
)]
pub async fn upgrade(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    limits::count_connect(&state, &addr).await?;
    let session = match bearer_from_headers(&headers) {
        Ok(token) => Some(state.auth.authenticate(token).await?),
        Err(ApiError::NotAuthenticated) => cookie_session(&state, &headers).await?,
        Err(error) => return Err(error),
    };
    let limit = state.settings.max_message_bytes;
    let realtime = state.realtime.clone();
    Ok(upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        // tungstenite's defaults (128 KiB read buffer allocated up front, 128 KiB write
        // batching) would cost ~256 KiB per idle socket; presence frames are tiny.
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |ws| {
            let connections = realtime.connections.clone();
            // Tracked, so shutdown waits for sockets to close before the final flush.
            connections.track_future(socket::serve(ws, realtime, session))
        })
        .into_response())
}
