//! JSON shapes of the HTTP API. Field names and types follow the seed system exactly where it
//! defines them (`UserPresence`, the heartbeat and admin responses).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use utoipa::ToSchema;

use crate::domain::{PresenceStatus, UserId};
use crate::engine::PresenceView;
use crate::store::UserRecord;

/// Serialises timestamps as the seed does: RFC 3339 UTC with a `Z` (`2024-01-15T10:30:00Z`),
/// with fractional seconds only when present.
pub fn rfc3339<S: Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        None => s.serialize_none(),
    }
}

/// A user's presence, as the seed's endpoints return it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UserPresence {
    /// User id.
    pub id: i64,
    /// Username.
    pub username: String,
    /// `online` or `offline`.
    pub online_status: PresenceStatus,
    /// Time of the last activity (RFC 3339 UTC), or null if the user was never active.
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_seen: Option<DateTime<Utc>>,
    /// `online_status == "online"`.
    pub is_online: bool,
}

impl UserPresence {
    /// A user's presence from the engine's view.
    pub fn from_view(id: UserId, username: String, view: PresenceView) -> Self {
        Self {
            id: id.0,
            username,
            online_status: view.status,
            last_seen: view.last_seen,
            is_online: view.status.is_online(),
        }
    }

    /// Combines a stored user with the engine's view. Without a view the user is offline and
    /// the stored `last_seen` is current: the engine keeps every user it holds fresher state
    /// for until that state is written.
    pub fn new(user: &UserRecord, view: Option<PresenceView>) -> Self {
        let view = view.unwrap_or(PresenceView {
            status: PresenceStatus::Offline,
            last_seen: user.last_seen,
            seq: user.presence_seq,
        });
        Self::from_view(user.id, user.username.clone(), view)
    }
}

/// `POST /api/users/register/` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// 1–150 characters of letters, digits and `_ . @ + -`.
    pub username: String,
    /// At least 8 characters.
    pub password: String,
}

/// `POST /api/users/register/` response (also a user reference elsewhere).
#[derive(Debug, Serialize, ToSchema)]
pub struct RegisterResponse {
    /// New user's id.
    pub id: i64,
    /// New user's name.
    pub username: String,
}

/// `GET /api/users/lookup/` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LookupQuery {
    /// Exact username.
    pub username: String,
}

/// `POST /api/users/login/` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Username.
    pub username: String,
    /// Password.
    pub password: String,
}

/// `POST /api/users/login/` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    /// Opaque bearer token for `Authorization: Bearer ...`; valid until logout.
    pub access: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// The user, now online.
    pub user: UserPresence,
    /// Suggested heartbeat period in milliseconds.
    pub heartbeat_interval_ms: u64,
}

/// `POST /api/users/logout/` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogoutResponse {
    /// Human-readable confirmation.
    pub message: &'static str,
    /// `offline`, or `online` if another session of the user is still live.
    pub online_status: PresenceStatus,
}

/// `POST /api/users/heartbeat/` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeartbeatResponse {
    /// Always `Heartbeat recorded`.
    pub message: &'static str,
    /// Always `online` after a heartbeat.
    pub online_status: PresenceStatus,
    /// Time of this heartbeat.
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_seen: Option<DateTime<Utc>>,
    /// Suggested heartbeat period in milliseconds.
    pub heartbeat_interval_ms: u64,
}

/// `GET /api/users/admin/users/online/` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct OnlineUsersResponse {
    /// Online users on this page, ordered by id.
    pub online_users: Vec<UserPresence>,
    /// Online users in total.
    pub online_count: usize,
    /// Value for `after` to fetch the next page; null on the last page.
    pub next_after: Option<i64>,
}

/// `GET /api/users/admin/users/online/` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct OnlineUsersQuery {
    /// Page size, 1–1000 (default 1000).
    pub limit: Option<usize>,
    /// Return users with ids greater than this (keyset paging).
    pub after: Option<i64>,
}

/// `GET /api/users/admin/users/<id>/online-status/` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserStatusResponse {
    /// User id.
    pub user_id: i64,
    /// Username.
    pub username: String,
    /// `online` or `offline`.
    pub online_status: PresenceStatus,
    /// Time of the last activity, or null.
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_seen: Option<DateTime<Utc>>,
    /// `online_status == "online"`.
    pub is_online: bool,
}

impl From<UserPresence> for UserStatusResponse {
    fn from(p: UserPresence) -> Self {
        Self {
            user_id: p.id,
            username: p.username,
            online_status: p.online_status,
            last_seen: p.last_seen,
            is_online: p.is_online,
        }
    }
}

/// Liveness and readiness response.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    /// `ok`.
    pub status: &'static str,
}
