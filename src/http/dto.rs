//! JSON shapes of the HTTP API. Field names and types follow the seed system exactly where it
//! defines them (`UserPresence`, the heartbeat and admin responses). `UserPresence` itself is
//! shared with push and lives with the presence reader.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::{LastSeenAudience, OnlineAudience, PresenceStatus, UserPrivacy};
use crate::presence::{Known, UserPresence, rfc3339};
use crate::store::UserRecord;

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

impl From<Known> for UserStatusResponse {
    fn from(user: Known) -> Self {
        Self {
            user_id: user.id.0,
            username: user.username,
            online_status: user.view.status,
            last_seen: user.view.last_seen,
            is_online: user.view.status.is_online(),
        }
    }
}

/// Liveness and readiness response.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    /// `ok`.
    pub status: &'static str,
}

/// `POST /api/presence/query/` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceQueryRequest {
    /// Users to look up, at most 500; unknown ids are left out of the answer.
    pub user_ids: Vec<i64>,
}

/// `POST /api/presence/query/` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct PresenceQueryResponse {
    /// The users that exist, in request order, each once, as the caller may see them.
    pub users: Vec<UserPresence>,
}

/// Body of `POST /api/users/me/contacts/` and `POST /api/users/me/blocked/`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRef {
    /// The user to add.
    pub user_id: i64,
}

/// A user in a contact or block list.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserSummary {
    /// User id.
    pub id: i64,
    /// Username.
    pub username: String,
}

impl From<&UserRecord> for UserSummary {
    fn from(user: &UserRecord) -> Self {
        Self {
            id: user.id.0,
            username: user.username.clone(),
        }
    }
}

/// `GET /api/users/me/contacts/` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContactsResponse {
    /// The caller's contacts, ordered by id.
    pub contacts: Vec<UserSummary>,
}

/// `GET /api/users/me/blocked/` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct BlockedResponse {
    /// The users the caller blocked, ordered by id.
    pub blocked: Vec<UserSummary>,
}

/// `PUT /api/users/me/privacy/` body. Every field but `except` is required, so a client can
/// never widen its audience by leaving a field out.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrivacyRequest {
    /// Who sees your last seen.
    pub last_seen: LastSeenAudience,
    /// Users hidden from by `contacts_except` (replaces the stored list; default empty).
    #[serde(default)]
    pub except: Vec<i64>,
    /// Who sees whether you are online.
    pub online: OnlineAudience,
    /// Appear offline to everyone else, with last seen frozen at the moment you turn it on.
    pub invisible: bool,
}

/// `GET`/`PUT /api/users/me/privacy/` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct PrivacyResponse {
    /// Who sees your last seen.
    pub last_seen: LastSeenAudience,
    /// The `contacts_except` list, ordered by id (kept while another setting is active).
    pub except: Vec<i64>,
    /// Who sees whether you are online.
    pub online: OnlineAudience,
    /// Whether invisible mode is on.
    pub invisible: bool,
    /// When invisible mode was turned on (the last seen others see); null when off.
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub invisible_since: Option<DateTime<Utc>>,
}

impl From<&UserPrivacy> for PrivacyResponse {
    fn from(data: &UserPrivacy) -> Self {
        Self {
            last_seen: data.settings.last_seen,
            except: data.except.iter().map(|id| id.0).collect(),
            online: data.settings.online,
            invisible: data.settings.invisible_since.is_some(),
            invisible_since: data.settings.invisible_since,
        }
    }
}
