//! Presence reads for ordinary users: one user, or a batch. Every answer goes through
//! [`crate::privacy::Privacy::filter`], so hidden fields are `null`.

use std::collections::HashSet;

use super::json::Json;
use axum::extract::State;
use chrono::Utc;

use super::AppState;
use super::dto::{ContactsOnlineResponse, PresenceQueryRequest, PresenceQueryResponse};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, Authenticated, PathId};
use crate::domain::{PresenceStatus, UserId};
use crate::presence::UserPresence;

/// Most user ids one `POST /api/presence/query/` may ask for.
pub const MAX_QUERY_IDS: usize = 500;

/// The presence of `ids` (distinct) as `caller` may see it, in the order given; ids of users
/// that do not exist are left out.
async fn visible_presence(
    state: &AppState,
    caller: &Authenticated,
    ids: &[UserId],
) -> Result<Vec<UserPresence>, ApiError> {
    let users = state.reader.named(ids).await?;
    let viewer = caller.session.viewer();
    let mut involved: Vec<UserId> = users.iter().map(|user| user.id).collect();
    involved.push(viewer.id);
    state.privacy.ensure_loaded(&involved).await?;
    let now = Utc::now();
    Ok(users
        .into_iter()
        .map(|user| {
            let visible = state.privacy.filter_at(viewer, user.id, &user.view, now);
            UserPresence::visible(user.id, user.username, visible)
        })
        .collect())
}

/// One user's presence, as the caller may see it.
#[utoipa::path(
    get, path = "/api/users/{id}/presence/", tag = "presence",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "User id")),
    responses(
        (status = 200, description = "The user's presence; hidden fields are null", body = UserPresence),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    )
)]
pub async fn user_presence(
    State(state): State<AppState>,
    caller: Authenticated,
    PathId(id): PathId,
) -> Result<Json<UserPresence>, ApiError> {
    visible_presence(&state, &caller, &[UserId(id)])
        .await?
        .pop()
        .map(Json)
        .ok_or(ApiError::NotFound("No such user."))
}

/// Several users' presence at once, as the caller may see it.
#[utoipa::path(
    post, path = "/api/presence/query/", tag = "presence",
    security(("bearer" = [])),
    request_body = PresenceQueryRequest,
    responses(
        (status = 200, description = "The users that exist, in request order; hidden fields are null", body = PresenceQueryResponse),
        (status = 400, description = "Malformed body or more than 500 ids", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
    )
)]
pub async fn query_presence(
    State(state): State<AppState>,
    caller: Authenticated,
    ApiJson(body): ApiJson<PresenceQueryRequest>,
) -> Result<Json<PresenceQueryResponse>, ApiError> {
    if body.user_ids.len() > MAX_QUERY_IDS {
        return Err(ApiError::invalid(format!(
            "user_ids may list at most {MAX_QUERY_IDS} users (got {})",
            body.user_ids.len()
        )));
    }
    let mut seen = HashSet::with_capacity(body.user_ids.len());
    let ids: Vec<UserId> = body
        .user_ids
        .into_iter()
        .map(UserId)
        .filter(|id| seen.insert(*id))
        .collect();
    let users = visible_presence(&state, &caller, &ids).await?;
    Ok(Json(PresenceQueryResponse { users }))
}

/// The caller's contacts whom the caller can see online now, ordered by username: a contact who
/// hides their online status from the caller (or blocked them, or is invisible) is left out.
#[utoipa::path(
    get, path = "/api/users/me/contacts/online/", tag = "presence",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Contacts visible online", body = ContactsOnlineResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
    )
)]
pub async fn contacts_online(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Json<ContactsOnlineResponse>, ApiError> {
    let viewer = caller.session.viewer();
    let contacts: Vec<UserId> = state
        .privacy
        .load(viewer.id)
        .await?
        .contacts
        .iter()
        .copied()
        .collect();
    let users = state.reader.online(&contacts).await?;
    let mut involved: Vec<UserId> = users.iter().map(|user| user.id).collect();
    involved.push(viewer.id);
    state.privacy.ensure_loaded(&involved).await?;
    let now = Utc::now();
    let mut online: Vec<UserPresence> = users
        .into_iter()
        .filter_map(|user| {
            let visible = state.privacy.filter_at(viewer, user.id, &user.view, now);
            (visible.status == Some(PresenceStatus::Online))
                .then(|| UserPresence::visible(user.id, user.username, visible))
        })
        .collect();
    online.sort_by(|a, b| a.username.cmp(&b.username).then(a.id.cmp(&b.id)));
    Ok(Json(ContactsOnlineResponse {
        online_count: online.len(),
        online,
    }))
}
