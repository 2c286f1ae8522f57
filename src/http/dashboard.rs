//! The admin dashboard at `/admin/` and the admin endpoints only it needs: the online chart,
//! user search, one user's page (presence, sessions, recent transitions) and ending sessions.
//! The live parts of the page come from `GET /api/admin/events` and the seed's online list.

use super::json::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::dto::SessionResponse;
use super::error::{ApiError, ErrorBody};
use super::extract::{Admin, ApiQuery, PathId, PathIds};
use crate::domain::{SessionId, UserId};
use crate::presence::{UserPresence, rfc3339_at};

/// Largest (and default) page of a user search.
const MAX_SEARCH_PAGE: usize = 100;

/// Transitions shown on a user's page.
const RECENT_TRANSITIONS: usize = 50;

/// The dashboard page (it asks for an admin login itself).
pub async fn page() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "no-cache")],
        Html(include_str!("../../web/admin.html")),
    )
}

/// The dashboard's script.
pub async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../../web/admin.js"),
    )
}

/// One minute of the online chart.
#[derive(Debug, Serialize, ToSchema)]
pub struct OnlineSample {
    /// Start of the minute (RFC 3339 UTC).
    #[serde(serialize_with = "rfc3339_at")]
    #[schema(value_type = String, format = DateTime)]
    pub at: DateTime<Utc>,
    /// Users online then.
    pub online: u64,
}

/// `GET /api/admin/stats/online/` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct OnlineStatsResponse {
    /// Seconds between samples (60).
    pub interval_seconds: u32,
    /// The last 24 hours, oldest first; minutes the server was not running are missing.
    pub samples: Vec<OnlineSample>,
    /// Users online now.
    pub online_count: usize,
}

/// The online count per minute over the last 24 hours.
#[utoipa::path(
    get, path = "/api/admin/stats/online/", tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Per-minute online counts", body = OnlineStatsResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 403, description = "Caller is not an admin", body = ErrorBody),
    )
)]
pub async fn online_stats(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<OnlineStatsResponse>, ApiError> {
    let online_count = state.engine.online_count().await?;
    let samples = state
        .history
        .samples()
        .into_iter()
        .map(|sample| OnlineSample {
            at: sample.at(),
            online: sample.online,
        })
        .collect();
    Ok(Json(OnlineStatsResponse {
        interval_seconds: 60,
        samples,
        online_count,
    }))
}

/// Query of `GET /api/admin/users/`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UserSearchQuery {
    /// Part of the username, any case (empty or absent: every user).
    pub search: Option<String>,
    /// Page size, 1–100 (default 100).
    pub limit: Option<usize>,
    /// Return users with ids greater than this (keyset paging).
    pub after: Option<i64>,
}

/// `GET /api/admin/users/` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserSearchResponse {
    /// Matching users with their presence, ordered by id.
    pub users: Vec<UserPresence>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_after: Option<i64>,
}

/// Users whose name contains `search`, online or not.
#[utoipa::path(
    get, path = "/api/admin/users/", tag = "admin",
    security(("bearer" = [])),
    params(UserSearchQuery),
    responses(
        (status = 200, description = "Matching users", body = UserSearchResponse),
        (status = 400, description = "Bad limit, after or search", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 403, description = "Caller is not an admin", body = ErrorBody),
    )
)]
pub async fn search_users(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(query): ApiQuery<UserSearchQuery>,
) -> Result<Json<UserSearchResponse>, ApiError> {
    let limit = query.limit.unwrap_or(MAX_SEARCH_PAGE);
    if !(1..=MAX_SEARCH_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit must be between 1 and {MAX_SEARCH_PAGE}"
        )));
    }
    let search = query.search.unwrap_or_default();
    let search = search.trim();
    if search.chars().count() > 150 {
        return Err(ApiError::invalid("search: at most 150 characters"));
    }
    let found = state
        .store
        .search_users(search, query.after.map(UserId), limit)
        .await?;
    let ids: Vec<UserId> = found.iter().map(|user| user.id).collect();
    let next_after = (ids.len() == limit)
        .then(|| ids.last().map(|id| id.0))
        .flatten();
    let users = state
        .reader
        .named(&ids)
        .await?
        .into_iter()
        .map(|known| UserPresence::full(known.id, known.username, &known.view))
        .collect();
    Ok(Json(UserSearchResponse { users, next_after }))
}

/// `GET /api/admin/users/<id>/` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserDetailResponse {
    /// The user's presence.
    pub user: UserPresence,
    /// Whether the user may use the admin endpoints.
    pub is_admin: bool,
    /// The user's sessions (devices), newest first; `current` is always false.
    pub sessions: Vec<SessionResponse>,
    /// The user's latest presence changes, newest first (from the event log, which keeps
    /// `event_retention`), each as the admin event stream and webhooks carry it.
    #[schema(value_type = Vec<Object>)]
    pub transitions: Vec<serde_json::Value>,
}

/// One user's presence, sessions and recent transitions.
#[utoipa::path(
    get, path = "/api/admin/users/{id}/", tag = "admin",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "User id")),
    responses(
        (status = 200, description = "The user", body = UserDetailResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 403, description = "Caller is not an admin", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    )
)]
pub async fn user_detail(
    State(state): State<AppState>,
    _admin: Admin,
    PathId(id): PathId,
) -> Result<Json<UserDetailResponse>, ApiError> {
    let id = UserId(id);
    let record = state
        .store
        .user_by_id(id)
        .await?
        .ok_or(ApiError::NotFound("No such user."))?;
    let known = state
        .reader
        .one(id)
        .await?
        .ok_or(ApiError::NotFound("No such user."))?;
    let sessions = super::me::sessions_of(&state, id, None).await?;
    let transitions = state
        .store
        .events_of(id, RECENT_TRANSITIONS)
        .await?
        .into_iter()
        .filter_map(|event| serde_json::from_str(&event.payload).ok())
        .collect();
    Ok(Json(UserDetailResponse {
        user: UserPresence::full(known.id, known.username, &known.view),
        is_admin: record.is_admin,
        sessions,
        transitions,
    }))
}

/// End one of a user's sessions: its token stops working, its sockets close with 4401, and
/// the user goes offline unless another session is live.
#[utoipa::path(
    delete, path = "/api/admin/users/{id}/sessions/{session_id}/", tag = "admin",
    security(("bearer" = [])),
    params(
        ("id" = i64, Path, description = "User id"),
        ("session_id" = i64, Path, description = "Session id"),
    ),
    responses(
        (status = 204, description = "Ended"),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 403, description = "Caller is not an admin", body = ErrorBody),
        (status = 404, description = "No such session of that user", body = ErrorBody),
    )
)]
pub async fn end_session(
    State(state): State<AppState>,
    _admin: Admin,
    PathIds(id, session_id): PathIds,
) -> Result<StatusCode, ApiError> {
    state
        .sessions
        .end_owned(UserId(id), SessionId(session_id))
        .await?
        .ok_or(ApiError::NotFound("No such session."))?;
    Ok(StatusCode::NO_CONTENT)
}

/// End every session of a user (they go offline at once).
#[utoipa::path(
    delete, path = "/api/admin/users/{id}/sessions/", tag = "admin",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "User id")),
    responses(
        (status = 204, description = "Ended"),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 403, description = "Caller is not an admin", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    )
)]
pub async fn end_all_sessions(
    State(state): State<AppState>,
    _admin: Admin,
    PathId(id): PathId,
) -> Result<StatusCode, ApiError> {
    let user = UserId(id);
    if state.store.user_by_id(user).await?.is_none() {
        return Err(ApiError::NotFound("No such user."));
    }
    state.sessions.end_all(user).await?;
    Ok(StatusCode::NO_CONTENT)
}
