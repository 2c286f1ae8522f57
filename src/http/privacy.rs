//! The caller's privacy: contacts, blocked users and visibility settings (incl. invisible
//! mode). Handlers only translate; the rules and the cache live in [`crate::privacy`].

use std::collections::BTreeSet;

use super::json::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};

use super::AppState;
use super::dto::{
    BlockedResponse, ContactsResponse, PrivacyPatch, PrivacyRequest, PrivacyResponse, UserRef,
    UserSummary,
};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, Authenticated, PathId};
use crate::domain::UserId;
use crate::domain::{PrivacyChange, SettingsUpdate};

/// The time of this request: the caller's `last_seen` after the activity it recorded, so
/// invisible mode freezes `last_seen` at exactly the value it had when it was turned on.
fn request_time(caller: &Authenticated) -> DateTime<Utc> {
    caller.presence.last_seen.unwrap_or_else(Utc::now)
}

/// The users `ids` names, ordered by id.
async fn summaries(state: &AppState, ids: &BTreeSet<UserId>) -> Result<Vec<UserSummary>, ApiError> {
    let ids: Vec<UserId> = ids.iter().copied().collect();
    let mut users = state.store.users_by_ids(&ids).await?;
    users.sort_by_key(|u| u.id);
    Ok(users.iter().map(UserSummary::from).collect())
}

/// Adds `user_id` to one of the caller's lists; `201` with the user.
async fn add(
    state: &AppState,
    caller: &Authenticated,
    user_id: i64,
    change: fn(UserId) -> PrivacyChange,
) -> Result<(StatusCode, Json<UserSummary>), ApiError> {
    let user = state
        .store
        .user_by_id(UserId(user_id))
        .await?
        .ok_or(ApiError::NotFound("No such user."))?;
    let owner = caller.session.user_id;
    state
        .privacy
        .change(owner, change(user.id), request_time(caller))
        .await?;
    Ok((StatusCode::CREATED, Json(UserSummary::from(&user))))
}

/// Removes a user from one of the caller's lists; `204`.
async fn remove(
    state: &AppState,
    caller: &Authenticated,
    change: PrivacyChange,
) -> Result<StatusCode, ApiError> {
    let at = request_time(caller);
    state
        .privacy
        .change(caller.session.user_id, change, at)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's contacts.
#[utoipa::path(
    get, path = "/api/users/me/contacts/", tag = "privacy",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's contacts", body = ContactsResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
    )
)]
pub async fn list_contacts(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Json<ContactsResponse>, ApiError> {
    let data = state.privacy.load(caller.session.user_id).await?;
    let contacts = summaries(&state, &data.contacts).await?;
    Ok(Json(ContactsResponse { contacts }))
}

/// Add a user to the caller's contacts (who `contacts` and `contacts_except` let see).
#[utoipa::path(
    post, path = "/api/users/me/contacts/", tag = "privacy",
    security(("bearer" = [])),
    request_body = UserRef,
    responses(
        (status = 201, description = "Added", body = UserSummary),
        (status = 400, description = "Malformed body, or the caller themself", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "Already a contact, or the list is full", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
    )
)]
pub async fn add_contact(
    State(state): State<AppState>,
    caller: Authenticated,
    ApiJson(body): ApiJson<UserRef>,
) -> Result<(StatusCode, Json<UserSummary>), ApiError> {
    add(&state, &caller, body.user_id, PrivacyChange::AddContact).await
}

/// Remove a user from the caller's contacts.
#[utoipa::path(
    delete, path = "/api/users/me/contacts/{id}/", tag = "privacy",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "User id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 404, description = "Not one of the caller's contacts", body = ErrorBody),
    )
)]
pub async fn remove_contact(
    State(state): State<AppState>,
    caller: Authenticated,
    PathId(id): PathId,
) -> Result<StatusCode, ApiError> {
    remove(&state, &caller, PrivacyChange::RemoveContact(UserId(id))).await
}

/// The users the caller blocked.
#[utoipa::path(
    get, path = "/api/users/me/blocked/", tag = "privacy",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's blocked users", body = BlockedResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
    )
)]
pub async fn list_blocked(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Json<BlockedResponse>, ApiError> {
    let data = state.privacy.load(caller.session.user_id).await?;
    let blocked = summaries(&state, &data.blocked).await?;
    Ok(Json(BlockedResponse { blocked }))
}

/// Block a user: they see none of the caller's presence, and no typing passes between them.
#[utoipa::path(
    post, path = "/api/users/me/blocked/", tag = "privacy",
    security(("bearer" = [])),
    request_body = UserRef,
    responses(
        (status = 201, description = "Blocked", body = UserSummary),
        (status = 400, description = "Malformed body, or the caller themself", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "Already blocked, or the list is full", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
    )
)]
pub async fn block_user(
    State(state): State<AppState>,
    caller: Authenticated,
    ApiJson(body): ApiJson<UserRef>,
) -> Result<(StatusCode, Json<UserSummary>), ApiError> {
    add(&state, &caller, body.user_id, PrivacyChange::Block).await
}

/// Unblock a user.
#[utoipa::path(
    delete, path = "/api/users/me/blocked/{id}/", tag = "privacy",
    security(("bearer" = [])),
    params(("id" = i64, Path, description = "User id")),
    responses(
        (status = 204, description = "Unblocked"),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 404, description = "Not blocked by the caller", body = ErrorBody),
    )
)]
pub async fn unblock_user(
    State(state): State<AppState>,
    caller: Authenticated,
    PathId(id): PathId,
) -> Result<StatusCode, ApiError> {
    remove(&state, &caller, PrivacyChange::Unblock(UserId(id))).await
}

/// The caller's privacy settings.
#[utoipa::path(
    get, path = "/api/users/me/privacy/", tag = "privacy",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's settings", body = PrivacyResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
    )
)]
pub async fn get_privacy(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Json<PrivacyResponse>, ApiError> {
    let data = state.privacy.load(caller.session.user_id).await?;
    Ok(Json(PrivacyResponse::from(data.as_ref())))
}

/// Replace the caller's privacy settings; they apply to every read at once.
#[utoipa::path(
    put, path = "/api/users/me/privacy/", tag = "privacy",
    security(("bearer" = [])),
    request_body = PrivacyRequest,
    responses(
        (status = 200, description = "The new settings", body = PrivacyResponse),
        (status = 400, description = "Malformed body, unknown value, or a bad except list (unknown users, the caller, over 10000)", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
    )
)]
pub async fn put_privacy(
    State(state): State<AppState>,
    caller: Authenticated,
    ApiJson(body): ApiJson<PrivacyRequest>,
) -> Result<Json<PrivacyResponse>, ApiError> {
    let update = SettingsUpdate::replace(
        body.last_seen,
        body.online,
        body.invisible,
        body.except.into_iter().map(UserId).collect(),
    );
    change_settings(&state, &caller, update).await
}

/// Change some of the caller's privacy settings: the fields the body names (the others keep
/// their values).
#[utoipa::path(
    patch, path = "/api/users/me/privacy/", tag = "privacy",
    security(("bearer" = [])),
    request_body = PrivacyPatch,
    responses(
        (status = 200, description = "The new settings", body = PrivacyResponse),
        (status = 400, description = "Malformed body, unknown value, or a bad except list (unknown users, the caller, over 10000)", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
    )
)]
pub async fn patch_privacy(
    State(state): State<AppState>,
    caller: Authenticated,
    ApiJson(body): ApiJson<PrivacyPatch>,
) -> Result<Json<PrivacyResponse>, ApiError> {
    let update = SettingsUpdate {
        last_seen: body.last_seen,
        online: body.online,
        invisible: body.invisible,
        except: body
            .except
            .map(|except| except.into_iter().map(UserId).collect()),
    };
    change_settings(&state, &caller, update).await
}

async fn change_settings(
    state: &AppState,
    caller: &Authenticated,
    update: SettingsUpdate,
) -> Result<Json<PrivacyResponse>, ApiError> {
    let at = request_time(caller);
    let data = state
        .privacy
        .change(caller.session.user_id, PrivacyChange::Settings(update), at)
        .await?;
    Ok(Json(PrivacyResponse::from(data.as_ref())))
}
