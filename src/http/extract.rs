//! Request extractors: our JSON/path/query wrappers (so bad input gets our 400 body) and the
//! authentication extractors that also record activity, like the seed's middleware.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRef, FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;
use crate::auth::Session;
use crate::domain::PresenceView;

/// `Json<T>` whose rejections are [`ApiError`]s.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
        JsonRejection::JsonDataError(e) => ApiError::BadRequest {
            detail: e.body_text(),
            code: "invalid",
        },
        JsonRejection::JsonSyntaxError(e) => ApiError::BadRequest {
            detail: e.body_text(),
            code: "parse_error",
        },
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        other => ApiError::BadRequest {
            detail: other.body_text(),
            code: "parse_error",
        },
    }
}

/// `Path<T>` whose rejections are 404s: a path that does not parse names no resource.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| Self(value))
            .map_err(|_: PathRejection| ApiError::NotFound("Not found."))
    }
}

/// `Query<T>` whose rejections are 400s.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| Self(value))
            .map_err(|e: QueryRejection| ApiError::invalid(e.body_text()))
    }
}

/// An authenticated request. Extracting it records activity for the session (without a
/// database write), which is what makes every authenticated request count as presence.
pub struct Authenticated {
    /// Who is calling.
    pub session: Session,
    /// The caller's presence after this activity.
    pub presence: PresenceView,
}

impl<S> FromRequestParts<S> for Authenticated
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let token = bearer_from_headers(&parts.headers)?;
        let session = state.auth.authenticate(&token).await?;
        let presence = state
            .engine
            .touch(session.user_id, session.session_id)
            .await?;
        if !state.auth.is_cached(&token) {
            // The session was logged out while this request ran: undo its activity.
            let (user, session) = (session.user_id, session.session_id);
            state.sessions.end(user, session).await?;
            return Err(ApiError::InvalidToken);
        }
        Ok(Self { session, presence })
    }
}

/// The bearer token of a request's `Authorization` header.
///
/// # Errors
/// [`ApiError::NotAuthenticated`] without the header, [`ApiError::InvalidToken`] if it is not a
/// non-empty `Bearer` credential.
pub fn bearer_from_headers(headers: &HeaderMap) -> Result<String, ApiError> {
    let header = headers
        .get(AUTHORIZATION)
        .ok_or(ApiError::NotAuthenticated)?;
    let value = header.to_str().map_err(|_| ApiError::InvalidToken)?;
    let (scheme, token) = value.split_once(' ').ok_or(ApiError::InvalidToken)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(ApiError::InvalidToken);
    }
    Ok(token.to_owned())
}

/// An authenticated request by an admin.
pub struct Admin;

impl<S> FromRequestParts<S> for Admin
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let caller = Authenticated::from_request_parts(parts, state).await?;
        if !caller.session.is_admin {
            return Err(ApiError::Forbidden(
                "You do not have permission to perform this action.",
            ));
        }
        Ok(Self)
    }
}
