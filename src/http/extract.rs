//! Request extractors: our JSON/path/query wrappers (so bad input gets our 400 body) and the
//! authentication extractors that also record activity, like the seed's middleware.

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use serde::de::DeserializeOwned;

use super::AppState;
use super::cookie;
use super::error::ApiError;
use crate::auth::{Session, TokenHash};
use crate::domain::{Activity, PresenceView};

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

/// The id in a path (`/api/users/{id}/...`), parsed strictly: canonical decimal digits only, so
/// `+1`, `01`, `-1` or ` 1` name no resource (404) rather than user 1. Any rejection is a 404:
/// a path that does not parse names no resource.
pub struct PathId(pub i64);

impl<S> FromRequestParts<S> for PathId
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_: PathRejection| ApiError::NotFound("Not found."))?;
        parse_id(&raw)
            .map(Self)
            .ok_or(ApiError::NotFound("Not found."))
    }
}

/// Two ids in a path (`/api/admin/users/{id}/sessions/{session_id}/`), each parsed as strictly
/// as [`PathId`].
pub struct PathIds(pub i64, pub i64);

impl<S> FromRequestParts<S> for PathIds
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((first, second)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|_: PathRejection| ApiError::NotFound("Not found."))?;
        parse_id(&first)
            .zip(parse_id(&second))
            .map(|(first, second)| Self(first, second))
            .ok_or(ApiError::NotFound("Not found."))
    }
}

/// `raw` as an id if it is spelt canonically: digits, no sign, no leading zero, fits an `i64`.
fn parse_id(raw: &str) -> Option<i64> {
    let canonical = !raw.is_empty()
        && raw.bytes().all(|b| b.is_ascii_digit())
        && (raw == "0" || !raw.starts_with('0'));
    canonical.then(|| raw.parse().ok()).flatten()
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

/// An authenticated caller, with no activity recorded yet: for the heartbeat, whose body says
/// what activity it reports.
pub struct Caller {
    /// Who is calling.
    pub session: Session,
    /// What the session is cached under, to re-check it without hashing the token again.
    key: TokenHash,
}

// The authentication extractors take the router's `AppState` by reference: `FromRef` would
// clone every handle in it (dozens of reference counts) on every request.
impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = request_token(&parts.method, &parts.headers)?;
        let (session, key) = state.auth.authenticate_keyed(token).await?;
        Ok(Self { session, key })
    }
}

impl Caller {
    /// Records `activity` for the caller's session (without a database write); returns the
    /// caller's presence after it.
    ///
    /// # Errors
    /// [`ApiError::InvalidToken`] if the session was logged out meanwhile; engine failures.
    pub async fn record(
        self,
        state: &AppState,
        activity: Activity,
    ) -> Result<Authenticated, ApiError> {
        let session = self.session;
        let presence = state
            .engine
            .touch(session.user_id, session.reference(), activity)
            .await?;
        if !state.auth.still_valid(&self.key) {
            // The session was logged out while this request ran: undo its activity.
            let (user, session) = (session.user_id, session.session_id);
            state.sessions.end(user, session).await?;
            return Err(ApiError::InvalidToken);
        }
        Ok(Authenticated { session, presence })
    }
}

/// An authenticated request. Extracting it records real activity for the session (without a
/// database write), which is what makes every authenticated request count as presence.
pub struct Authenticated {
    /// Who is calling.
    pub session: Session,
    /// The caller's presence after this activity.
    pub presence: PresenceView,
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.record(state, Activity::Active).await
    }
}

/// A JSON body that may be absent: an empty body is `None` (whatever its content type), any
/// other body must be JSON of `T`.
pub struct OptionalJson<T>(pub Option<T>);

impl<S, T> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(is_json_type);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::invalid(rejection.body_text())
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        axum::Json::<T>::from_bytes(&bytes)
            .map(|axum::Json(value)| Self(Some(value)))
            .map_err(|rejection| json_rejection(&rejection))
    }
}

/// Whether a `Content-Type` value is JSON (`application/json`, `application/*+json`, with or
/// without parameters).
fn is_json_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or_default().trim();
    let essence = essence.to_ascii_lowercase();
    essence
        .strip_prefix("application/")
        .is_some_and(|sub| sub == "json" || sub.ends_with("+json"))
}

/// The bearer token of a request's `Authorization` header.
///
/// # Errors
/// [`ApiError::NotAuthenticated`] without the header, [`ApiError::InvalidToken`] if it is not a
/// non-empty `Bearer` credential.
pub fn bearer_from_headers(headers: &HeaderMap) -> Result<&str, ApiError> {
    let header = headers
        .get(AUTHORIZATION)
        .ok_or(ApiError::NotAuthenticated)?;
    let value = header.to_str().map_err(|_| ApiError::InvalidToken)?;
    let (scheme, token) = value.split_once(' ').ok_or(ApiError::InvalidToken)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(ApiError::InvalidToken);
    }
    Ok(token)
}

/// The token a request authenticates with: its `Authorization: Bearer` header, else the
/// browser session cookie, which a request that changes something may only use from this
/// server's own origin.
///
/// # Errors
/// [`ApiError::NotAuthenticated`] with neither, [`ApiError::InvalidToken`] for a malformed
/// header, [`ApiError::CrossOrigin`] for a cookie on a cross-origin unsafe request.
pub fn request_token<'h>(method: &Method, headers: &'h HeaderMap) -> Result<&'h str, ApiError> {
    match bearer_from_headers(headers) {
        Err(ApiError::NotAuthenticated) => match cookie::session_token(headers) {
            Some(token) if cookie::allowed(method, headers) => Ok(token),
            Some(_) => Err(ApiError::CrossOrigin),
            None => Err(ApiError::NotAuthenticated),
        },
        other => other,
    }
}

/// An authenticated request by an admin.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = Authenticated::from_request_parts(parts, state).await?;
        if !caller.session.is_admin {
            return Err(ApiError::Forbidden(
                "You do not have permission to perform this action.",
            ));
        }
        Ok(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::parse_id;

    #[test]
    fn path_ids_are_canonical_decimal_only() {
        for (raw, id) in [("1", Some(1)), ("0", Some(0)), ("42", Some(42))] {
            assert_eq!(parse_id(raw), id, "{raw:?}");
        }
        let max = i64::MAX.to_string();
        assert_eq!(parse_id(&max), Some(i64::MAX));
        for raw in [
            "",
            "+1",
            "-1",
            "01",
            " 1",
            "1 ",
            "1e3",
            "0x1",
            "9223372036854775808",
        ] {
            assert_eq!(parse_id(raw), None, "{raw:?}");
        }
    }
}
