//! Account and presence endpoints for ordinary users: register, login, logout, heartbeat, me.

use super::json::Json;
use axum::extract::State;
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, StatusCode};

use super::AppState;
use super::cookie;
use super::dto::{
    HeartbeatRequest, HeartbeatResponse, LoginRequest, LoginResponse, LogoutResponse, LookupQuery,
    RegisterRequest, RegisterResponse,
};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, ApiQuery, Authenticated, Caller, OptionalJson};
use super::limits::{self, ClientAddr};
use crate::domain::{Activity, Device, Password, PresenceStatus, Username};
use crate::presence::UserPresence;
use crate::telemetry::hot_counter;

fn interval_ms(state: &AppState) -> u64 {
    u64::try_from(state.settings.heartbeat_interval.as_millis()).unwrap_or(u64::MAX)
}

/// Create an account (if open registration is enabled).
#[utoipa::path(
    post, path = "/api/users/register/", tag = "users",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "User created", body = RegisterResponse),
        (status = 400, description = "Malformed body or invalid username/password", body = ErrorBody),
        (status = 403, description = "Open registration is disabled", body = ErrorBody),
        (status = 409, description = "Username taken", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "Too many registrations from this address (`register_rate_limit`); see Retry-After", body = ErrorBody),
    )
)]
pub async fn register(
    State(state): State<AppState>,
    addr: ClientAddr,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    if !state.settings.open_registration {
        return Err(ApiError::Forbidden("Registration is closed."));
    }
    limits::count_registration(&state, &addr).await?;
    let username = Username::parse(&body.username)?;
    let password = Password::parse(&body.password)?;
    let user = state.auth.register(&username, password, false).await?;
    metrics::counter!("lastseen_registrations_total").increment(1);
    Ok((
        StatusCode::CREATED,
        Json(RegisterResponse {
            id: user.id.0,
            username: user.username,
        }),
    ))
}

/// Log in: opens a session (device) and marks the user online at once.
#[utoipa::path(
    post, path = "/api/users/login/", tag = "users",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in; also sets the browser session cookie `lastseen_session` (HttpOnly, SameSite=Strict)", body = LoginResponse),
        (status = 400, description = "Malformed body or a bad device name", body = ErrorBody),
        (status = 401, description = "Unknown user or wrong password", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 429, description = "Too many failed logins for this username or address (`login_failure_limit`); see Retry-After", body = ErrorBody),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    addr: ClientAddr,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<(HeaderMap, Json<LoginResponse>), ApiError> {
    let device = match body.device {
        Some(device) => Device::parse(device.platform, device.name.as_deref())?,
        None => Device::default(),
    };
    limits::login_allowed(&state, &addr, &body.username).await?;
    let logged_in = state
        .sessions
        .login(&body.username, &body.password, &device)
        .await
        .map_err(ApiError::from);
    if let Err(ApiError::BadCredentials) = logged_in {
        limits::login_failed(&state, &addr, &body.username).await;
    }
    let (login, view) = logged_in?;
    metrics::counter!("lastseen_logins_total").increment(1);
    let session = login.session;
    let mut headers = HeaderMap::new();
    if let Some(cookie) = cookie::set_session(&login.token, state.settings.cookie_secure) {
        headers.insert(SET_COOKIE, cookie);
    }
    Ok((
        headers,
        Json(LoginResponse {
            access: login.token,
            token_type: "Bearer",
            user: UserPresence::full(session.user_id, session.username, &view),
            heartbeat_interval_ms: interval_ms(&state),
        }),
    ))
}

/// Log out: revokes the token; offline at once unless another session is live.
#[utoipa::path(
    post, path = "/api/users/logout/", tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Logged out; clears the `lastseen_session` cookie", body = LogoutResponse),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
    )
)]
pub async fn logout(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<(HeaderMap, Json<LogoutResponse>), ApiError> {
    let session = &caller.session;
    let view = state
        .sessions
        .end(session.user_id, session.session_id)
        .await?;
    let mut headers = HeaderMap::new();
    headers.insert(
        SET_COOKIE,
        cookie::clear_session(state.settings.cookie_secure),
    );
    Ok((
        headers,
        Json(LogoutResponse {
            message: "Logged out successfully",
            online_status: view.status,
        }),
    ))
}

/// Record a heartbeat: keeps the session live. With no body it says nothing about the user
/// (an idle user stays idle); `{"state": "active"}` or `{"state": "idle"}` reports whether
/// the user is at the device. Any other authenticated request counts as `active`.
#[utoipa::path(
    post, path = "/api/users/heartbeat/", tag = "users",
    security(("bearer" = [])),
    request_body(content = Option<HeartbeatRequest>, description = "Optional; empty for a plain heartbeat"),
    responses(
        (status = 200, description = "Heartbeat recorded", body = HeartbeatResponse),
        (status = 400, description = "Malformed body or unknown state", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 415, description = "A body that is not JSON", body = ErrorBody),
    )
)]
pub async fn heartbeat(
    State(state): State<AppState>,
    caller: Caller,
    OptionalJson(body): OptionalJson<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let activity = body
        .and_then(|body| body.state)
        .map_or(Activity::Keepalive, Activity::from);
    let caller = caller.record(&state, activity).await?;
    hot_counter!("lastseen_heartbeats_total").increment(1);
    Ok(Json(HeartbeatResponse {
        message: "Heartbeat recorded",
        online_status: PresenceStatus::Online,
        last_seen: caller.presence.last_seen,
        heartbeat_interval_ms: interval_ms(&state),
    }))
}

/// The caller's own presence.
#[utoipa::path(
    get, path = "/api/users/me/", tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = UserPresence),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
    )
)]
pub async fn me(caller: Authenticated) -> Json<UserPresence> {
    let session = caller.session;
    Json(UserPresence::full(
        session.user_id,
        session.username,
        &caller.presence,
    ))
}

/// Find a user's id by username (to subscribe to them or add them as a contact).
#[utoipa::path(
    get, path = "/api/users/lookup/", tag = "users",
    security(("bearer" = [])),
    params(LookupQuery),
    responses(
        (status = 200, description = "The user", body = RegisterResponse),
        (status = 400, description = "Missing username", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    )
)]
pub async fn lookup(
    State(state): State<AppState>,
    _caller: Authenticated,
    ApiQuery(query): ApiQuery<LookupQuery>,
) -> Result<Json<RegisterResponse>, ApiError> {
    let user = state
        .store
        .user_by_username(&query.username)
        .await?
        .ok_or(ApiError::NotFound("No such user."))?;
    Ok(Json(RegisterResponse {
        id: user.id.0,
        username: user.username,
    }))
}
