//! The caller's own status and devices: the manual status (`auto`/`away`/`dnd`, a text, an
//! emoji, an expiry) and the list of sessions, any of which can be revoked.

use std::collections::HashSet;

use super::json::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;

use super::AppState;
use super::dto::{SessionResponse, SessionsResponse, StatusBody};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, Authenticated, PathId};
use crate::domain::{ManualStatus, SessionId, UserId};
use crate::engine::LastKnown;

/// The caller's manual status.
#[utoipa::path(
    get, path = "/api/users/me/status/", tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's status", body = StatusBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
    )
)]
pub async fn get_status(caller: Authenticated) -> Json<StatusBody> {
    Json(StatusBody::from(&caller.presence.manual))
}

/// Set the caller's manual status. It applies to every session at once, is pushed to
/// watchers, survives restarts, and resets itself to `auto` with no text or emoji at
/// `expires_at`.
#[utoipa::path(
    put, path = "/api/users/me/status/", tag = "users",
    security(("bearer" = [])),
    request_body = StatusBody,
    responses(
        (status = 200, description = "The new status", body = StatusBody),
        (status = 400, description = "Unknown mode, text over 100 characters, not one emoji, or expires_at not in the future", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
    )
)]
pub async fn put_status(
    State(state): State<AppState>,
    caller: Authenticated,
    ApiJson(body): ApiJson<StatusBody>,
) -> Result<Json<StatusBody>, ApiError> {
    let status = ManualStatus::parse(
        body.mode,
        body.text.as_deref(),
        body.emoji.as_deref(),
        body.expires_at,
        Utc::now(),
    )?;
    let user = caller.session.user_id;
    // Stored first: once the engine shows it, a restart keeps it.
    state.store.set_manual_status(user, &status).await?;
    let last = LastKnown {
        last_seen: caller.presence.last_seen,
        seq: caller.presence.seq,
    };
    let view = state.engine.set_status(user, status, last).await?;
    Ok(Json(StatusBody::from(&view.manual)))
}

/// The caller's sessions (one per login), newest first.
#[utoipa::path(
    get, path = "/api/users/me/sessions/", tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's sessions", body = SessionsResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
    )
)]
pub async fn list_sessions(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Json<SessionsResponse>, ApiError> {
    let session = &caller.session;
    let sessions = sessions_of(&state, session.user_id, Some(session.session_id)).await?;
    Ok(Json(SessionsResponse { sessions }))
}

/// `user`'s sessions, newest first, each marked live or not and `current` when it is
/// `current`.
///
/// # Errors
/// Store or engine failures.
pub async fn sessions_of(
    state: &AppState,
    user: UserId,
    current: Option<SessionId>,
) -> Result<Vec<SessionResponse>, ApiError> {
    let stored = state.store.sessions_of(user).await?;
    let live: HashSet<SessionId> = state
        .engine
        .live_sessions(user)
        .await?
        .into_iter()
        .collect();
    Ok(stored
        .into_iter()
        .map(|session| SessionResponse {
            id: session.id.0,
            platform: session.platform,
            name: session.name,
            created_at: session.created_at,
            last_activity: session.last_activity,
            live: live.contains(&session.id),
            current: Some(session.id) == current,
        })
        .collect())
}

/// Revoke one of the caller's sessions at once: its token stops working, its sockets close
/// with 4401, and presence is updated (offline unless another session is live).
#[utoipa::path(
    delete, path = "/api/users/me/sessions/{id}/", tag = "users",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "Session id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 404, description = "Not one of the caller's sessions", body = ErrorBody),
    )
)]
pub async fn revoke_session(
    State(state): State<AppState>,
    caller: Authenticated,
    PathId(id): PathId,
) -> Result<StatusCode, ApiError> {
    let user = caller.session.user_id;
    state
        .sessions
        .end_owned(user, SessionId(id))
        .await?
        .ok_or(ApiError::NotFound("No such session."))?;
    Ok(StatusCode::NO_CONTENT)
}
