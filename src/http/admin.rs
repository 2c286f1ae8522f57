//! Admin endpoints: the seed's (who is online, one user's status) and the stream of every
//! presence change. Admins see everything.

use std::collections::HashMap;
use std::convert::Infallible;

use super::json::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;

use super::AppState;
use super::dto::{OnlineUsersQuery, OnlineUsersResponse, UserStatusResponse};
use super::error::{ApiError, ErrorBody};
use super::extract::{Admin, ApiQuery, PathId};
use crate::domain::UserId;
use crate::integrations::stream::ChangeStream;
use crate::presence::UserPresence;

/// Largest (and default) page of the online list.
pub const MAX_PAGE: usize = 1000;

/// Online users, ordered by id, with keyset paging; `online_count` is always the total.
#[utoipa::path(
    get, path = "/api/users/admin/users/online/", tag = "admin",
    security(("bearer" = [])),
    params(OnlineUsersQuery),
    responses(
        (status = 200, description = "Online users", body = OnlineUsersResponse),
        (status = 400, description = "Bad limit or after", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 403, description = "Caller is not an admin", body = ErrorBody),
    )
)]
pub async fn online_users(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(query): ApiQuery<OnlineUsersQuery>,
) -> Result<Json<OnlineUsersResponse>, ApiError> {
    let limit = query.limit.unwrap_or(MAX_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let page = state
        .engine
        .online_page(query.after.map(UserId), limit)
        .await?;
    let ids: Vec<UserId> = page.users.iter().map(|(id, _)| *id).collect();
    let names: HashMap<UserId, String> = state
        .store
        .users_by_ids(&ids)
        .await?
        .into_iter()
        .map(|u| (u.id, u.username))
        .collect();
    let next_after = (page.users.len() == limit)
        .then(|| ids.last().map(|id| id.0))
        .flatten();
    let online_users = page
        .users
        .into_iter()
        .filter_map(|(id, view)| {
            let name = names.get(&id)?.clone();
            Some(UserPresence::full(id, name, &view))
        })
        .collect();
    Ok(Json(OnlineUsersResponse {
        online_users,
        online_count: page.total,
        next_after,
    }))
}

/// One user's online status.
#[utoipa::path(
    get, path = "/api/users/admin/users/{id}/online-status/", tag = "admin",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "User id")),
    responses(
        (status = 200, description = "The user's status", body = UserStatusResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 403, description = "Caller is not an admin", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    )
)]
pub async fn user_status(
    State(state): State<AppState>,
    _admin: Admin,
    PathId(id): PathId,
) -> Result<Json<UserStatusResponse>, ApiError> {
    let user = state
        .reader
        .one(UserId(id))
        .await?
        .ok_or(ApiError::NotFound("No such user."))?;
    Ok(Json(UserStatusResponse::from(user)))
}

/// Every presence change of every user, live (Server-Sent Events).
#[utoipa::path(
    get, path = "/api/admin/events", tag = "admin",
    security(("bearer" = [])),
    params(("Last-Event-ID" = Option<u64>, Header, description = "Resume after this position (the `id` of the last event received)")),
    responses(
        (status = 200, description = "text/event-stream of `presence` events, each a ChangeEvent", content_type = "text/event-stream"),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 403, description = "Caller is not an admin", body = ErrorBody),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    _admin: Admin,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let resume_after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let changes = ChangeStream::new(
        state.store.clone(),
        state.event_log.clone(),
        state.engine.subscribe(),
        resume_after,
        state.realtime.shutdown.clone(),
    );
    let events = futures_util::stream::unfold(changes, |mut changes| async move {
        let item = changes.next().await?;
        let event = Event::default()
            .event("presence")
            .id(item.position.to_string())
            .data(item.json);
        Some((Ok(event), changes))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
