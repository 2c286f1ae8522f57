//! The API's error type and the one place errors become `{"detail": ..., "code": ...}`.
//!
//! Handlers return [`ApiError`]; [`finish`] (run on every response by the request middleware)
//! also rewrites the error responses axum produces on its own (404 of no route, 405, 413, 415),
//! so every error a client sees has the same JSON shape; [`status_response`] makes that shape
//! for the middleware's own 408 and 500. Internal errors are logged in [`finish`], with their
//! cause chain, and never shown to the client.

use std::sync::Arc;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::AuthError;
use crate::domain::DomainError;
use crate::engine::EngineError;
use crate::presence::ReadError;
use crate::privacy::PrivacyError;
use crate::realtime::RealtimeError;
use crate::realtime::hub::HubError;
use crate::sessions::SessionError;
use crate::store::{Conflict, Missing, StoreError};

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Human-readable explanation.
    pub detail: String,
    /// Stable machine-readable code (Django REST framework's names where it has one).
    pub code: String,
}

/// Every way an API call can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: malformed JSON, wrong types, missing fields, invalid values.
    #[error("{detail}")]
    BadRequest {
        /// What is wrong.
        detail: String,
        /// `parse_error` for undecodable bodies, `invalid` for bad values.
        code: &'static str,
    },
    /// 401: no `Authorization: Bearer` header.
    #[error("Authentication credentials were not provided.")]
    NotAuthenticated,
    /// 401: unknown, malformed or revoked token.
    #[error("Invalid or revoked token.")]
    InvalidToken,
    /// 401: unknown user or wrong password.
    #[error("Invalid username or password.")]
    BadCredentials,
    /// 403: authenticated but not allowed.
    #[error("{0}")]
    Forbidden(&'static str),
    /// 403: a request authenticated by the session cookie came from another origin.
    #[error(
        "Cross-origin request refused: the session cookie only authenticates this server's own \
         pages; send an Authorization header instead."
    )]
    CrossOrigin,
    /// 404: unknown user or route.
    #[error("{0}")]
    NotFound(&'static str),
    /// 409: the resource already exists.
    #[error("{0}")]
    Conflict(&'static str),
    /// 413: body over the size limit.
    #[error("Request body is too large.")]
    PayloadTooLarge,
    /// 415: the body is not `application/json`.
    #[error("Expected a request with `Content-Type: application/json`.")]
    UnsupportedMediaType,
    /// 429: a per-user limit was reached.
    #[error("{0}")]
    TooManyRequests(String),
    /// 429: a throttle (failed logins, registrations, connection opens) is used up until its
    /// window ends in `retry_after`.
    #[error("{detail}")]
    Throttled {
        /// What was throttled.
        detail: &'static str,
        /// Time left in the window (sent as `Retry-After`, whole seconds rounded up).
        retry_after: std::time::Duration,
    },
    /// 503: the database is unreachable or cannot take writes.
    #[error("Service temporarily unavailable.")]
    Unavailable(#[source] anyhow::Error),
    /// 503: presence cannot be read or changed now (the shared Redis is unreachable).
    #[error("Presence is temporarily unavailable; retry shortly.")]
    PresenceUnavailable(#[source] anyhow::Error),
    /// 500: a bug or an unexpected failure; details are logged, not returned.
    #[error("Internal server error.")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// A 400 for a value that failed validation.
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::BadRequest {
            detail: detail.into(),
            code: "invalid",
        }
    }

    /// Status and code of this error.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            Self::NotAuthenticated => (StatusCode::UNAUTHORIZED, "not_authenticated"),
            Self::InvalidToken | Self::BadCredentials => {
                (StatusCode::UNAUTHORIZED, "authentication_failed")
            }
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "permission_denied"),
            Self::CrossOrigin => (StatusCode::FORBIDDEN, "cross_origin"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Self::TooManyRequests(_) | Self::Throttled { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "throttled")
            }
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable"),
            Self::PresenceUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "presence_unavailable")
            }
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }
}

/// Seconds a client should wait before retrying a `503`: a failing store is probed and
/// recovers within about this long once the fault goes away.
const RETRY_AFTER_SECS: &str = "2";

/// The failure behind a 5xx, kept in the response's extensions for [`finish`] to log.
#[derive(Clone)]
struct LoggedCause(Arc<anyhow::Error>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = ErrorBody {
            detail: self.to_string(),
            code: code.to_owned(),
        };
        let mut response = (status, Json(body)).into_response();
        if let Self::Throttled { retry_after, .. } = &self {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if let Self::Internal(cause) | Self::Unavailable(cause) | Self::PresenceUnavailable(cause) =
            self
        {
            response
                .extensions_mut()
                .insert(LoggedCause(Arc::new(cause)));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        Self::invalid(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(conflict) => Self::Conflict(match conflict {
                Conflict::UsernameTaken => "A user with that username already exists.",
                Conflict::TokenInUse => "That token is in use; log in again.",
                Conflict::AlreadyContact => "That user is already in your contacts.",
                Conflict::AlreadyBlocked => "You already blocked that user.",
            }),
            StoreError::NotFound(missing) => Self::NotFound(match missing {
                Missing::User => "No such user.",
                Missing::Contact => "That user is not in your contacts.",
                Missing::Block => "You have not blocked that user.",
            }),
            StoreError::Unavailable(_) | StoreError::Setup(_) => Self::Unavailable(e.into()),
            StoreError::Other(_) => Self::Internal(e.into()),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Unavailable(_) => Self::PresenceUnavailable(e.into()),
            EngineError::SessionEnded => Self::InvalidToken,
        }
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Auth(e) => e.into(),
            SessionError::Engine(e) => e.into(),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Engine(e) => e.into(),
            ReadError::Store(e) => e.into(),
        }
    }
}

impl From<RealtimeError> for ApiError {
    fn from(e: RealtimeError) -> Self {
        match e {
            RealtimeError::Read(e) => e.into(),
            RealtimeError::Privacy(e) => e.into(),
            RealtimeError::Engine(e) => e.into(),
            RealtimeError::Limit(e @ HubError::NodeFull(_)) => {
                Self::Unavailable(anyhow::Error::new(e))
            }
            RealtimeError::Limit(e) => Self::TooManyRequests(e.to_string()),
        }
    }
}

impl From<PrivacyError> for ApiError {
    fn from(e: PrivacyError) -> Self {
        match e {
            PrivacyError::SelfReference(_)
            | PrivacyError::UnknownUsers(_)
            | PrivacyError::TooLong => Self::invalid(e.to_string()),
            PrivacyError::ListFull(what) => Self::Conflict(what),
            PrivacyError::Store(e) => e.into(),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::BadCredentials => Self::BadCredentials,
            AuthError::InvalidToken => Self::InvalidToken,
            AuthError::Busy => {
                Self::TooManyRequests("Too many logins in progress; retry shortly.".into())
            }
            AuthError::Store(e) => e.into(),
            AuthError::Hashing(_) => Self::Internal(e.into()),
        }
    }
}

fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "parse_error",
        StatusCode::UNAUTHORIZED => "not_authenticated",
        StatusCode::FORBIDDEN => "permission_denied",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::TOO_MANY_REQUESTS => "throttled",
        StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
        s if s.is_server_error() => "internal_error",
        _ => "error",
    }
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The error response for `status` when no handler said more: `{"detail": "<reason>.", "code"}`.
pub fn status_response(status: StatusCode) -> Response {
    let detail = status.canonical_reason().unwrap_or("Error").to_owned() + ".";
    let body = ErrorBody {
        detail,
        code: code_for(status).to_owned(),
    };
    (status, Json(body)).into_response()
}

/// Last step of every response (run by the request middleware): logs 5xx causes and gives
/// every error response the JSON error shape. A success or a JSON error passes untouched.
pub fn finish(mut response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    if let Some(LoggedCause(cause)) = response.extensions_mut().remove::<LoggedCause>() {
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(%status, error = %cause, cause_chain = ?cause, "request refused");
        } else {
            tracing::error!(%status, error = %cause, cause_chain = ?cause, "request failed");
        }
    }
    if is_json(&response) {
        return response;
    }
    if status.is_server_error() {
        tracing::error!(%status, "request failed without a typed error");
    }
    let (mut parts, _) = response.into_parts();
    let (shaped, body) = status_response(status).into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in &shaped.headers {
        parts.headers.insert(name, value.clone());
    }
    Response::from_parts(parts, body)
}

/// Fallback for unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("Not found.")
}
