//! JSON shapes of the HTTP API. Field names and types follow the seed system exactly where it
//! defines them (`UserPresence`, the heartbeat and admin responses). `UserPresence` itself is
//! shared with push and lives with the presence reader.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::{
    ActivityState, Availability, LastSeenAudience, ManualStatus, OnlineAudience, Platform,
    PresenceStatus, StatusMode, UserPrivacy,
};
use crate::presence::{Known, UserPresence, rfc3339, rfc3339_at};
use crate::store::UserRecord;

/// `POST /api/users/register/` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// 1–150 characters of letters, digits and `_ . @ + -`.
    #[schema(min_length = 1, max_length = 150, pattern = r"^[A-Za-z0-9_.@+\-]+$")]
    pub username: String,
    /// At least 8 characters.
    #[schema(min_length = 8)]
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
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LookupQuery {
    /// Username, in any case.
    #[param(min_length = 1)]
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
    /// The device this session runs on (default: platform `web`, no name).
    #[serde(default)]
    pub device: Option<DeviceRequest>,
}

/// The device of a login.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceRequest {
    /// `web` (default), `mobile` or `desktop`.
    #[serde(default)]
    pub platform: Platform,
    /// A name for the device, 1-64 characters ("Ahmad's phone").
    #[serde(default)]
    pub name: Option<String>,
}

/// `POST /api/users/heartbeat/` body (optional: no body is a plain heartbeat that keeps the
/// session live and says nothing about the user).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// `active`: the user is at the device; `idle`: they are away from it.
    #[serde(default)]
    pub state: Option<ActivityState>,
}

/// `PUT /api/users/me/status/` body, and the `GET` response.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusBody {
    /// `auto` (availability follows activity), `away` (always `idle`) or `dnd`.
    pub mode: StatusMode,
    /// Custom status text, at most 100 characters.
    #[serde(default)]
    pub text: Option<String>,
    /// One emoji.
    #[serde(default)]
    pub emoji: Option<String>,
    /// When the server resets the status to `auto` with no text or emoji (RFC 3339, in the
    /// future); null: never.
    #[serde(default, serialize_with = "rfc3339")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<DateTime<Utc>>,
}

impl From<&ManualStatus> for StatusBody {
    fn from(status: &ManualStatus) -> Self {
        Self {
            mode: status.mode,
            text: status.text.as_deref().map(str::to_owned),
            emoji: status.emoji.as_deref().map(str::to_owned),
            expires_at: status.expires_at,
        }
    }
}

/// One of the caller's sessions (logins, devices).
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionResponse {
    /// Session id (for `DELETE /api/users/me/sessions/<id>/`).
    pub id: i64,
    /// `web`, `mobile` or `desktop`.
    pub platform: Platform,
    /// The device name given at login, or null.
    pub name: Option<String>,
    /// When the session was created (the login).
    #[serde(serialize_with = "rfc3339_at")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    /// Its last activity (as stored, within `persist_interval`, for sessions of other nodes).
    #[serde(serialize_with = "rfc3339_at")]
    #[schema(value_type = String, format = DateTime)]
    pub last_activity: DateTime<Utc>,
    /// Whether the session is live (counts toward online) now.
    pub live: bool,
    /// Whether this is the session making the request.
    pub current: bool,
}

/// `GET /api/users/me/sessions/` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionsResponse {
    /// The caller's sessions, newest first.
    pub sessions: Vec<SessionResponse>,
}

/// `GET /api/users/me/contacts/online/` response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContactsOnlineResponse {
    /// The caller's contacts the caller can see online now, ordered by username.
    pub online: Vec<UserPresence>,
    /// How many there are.
    pub online_count: usize,
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
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct OnlineUsersQuery {
    /// Page size, 1–1000 (default 1000).
    #[param(minimum = 1, maximum = 1000)]
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
    /// `active`, `idle` or `dnd`; null when offline.
    pub availability: Option<Availability>,
    /// The custom status text, or null.
    pub status_text: Option<String>,
    /// The custom status emoji, or null.
    pub status_emoji: Option<String>,
    /// The sorted distinct platforms of the live sessions (`[]` when offline).
    pub platforms: Vec<Platform>,
}

impl From<Known> for UserStatusResponse {
    fn from(user: Known) -> Self {
        let view = user.view;
        Self {
            user_id: user.id.0,
            username: user.username,
            online_status: view.status,
            last_seen: view.last_seen,
            is_online: view.status.is_online(),
            availability: view.availability,
            status_text: view.manual.text.as_deref().map(str::to_owned),
            status_emoji: view.manual.emoji.as_deref().map(str::to_owned),
            platforms: view.platforms.to_vec(),
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

/// `PATCH /api/users/me/privacy/` body: only the fields given change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrivacyPatch {
    /// Who sees your last seen.
    #[serde(default)]
    pub last_seen: Option<LastSeenAudience>,
    /// Users hidden from by `contacts_except` (replaces the stored list).
    #[serde(default)]
    pub except: Option<Vec<i64>>,
    /// Who sees whether you are online.
    #[serde(default)]
    pub online: Option<OnlineAudience>,
    /// Appear offline to everyone else, with last seen frozen at the moment you turn it on.
    #[serde(default)]
    pub invisible: Option<bool>,
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
