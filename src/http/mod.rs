//! The HTTP API: router, shared state, middleware stack and the OpenAPI document.
//!
//! Routes are declared without a trailing slash; [`service`] wraps the router so that the seed's
//! trailing-slash paths (`/api/users/heartbeat/`) reach the same handlers.

mod admin;
mod cookie;
mod dashboard;
mod dto;
mod error;
mod extract;
mod limits;
mod me;
pub mod ops;
mod presence;
mod privacy;
mod sse;
mod users;
mod web;
mod ws;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use tower::Layer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::normalize_path::{NormalizePath, NormalizePathLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::auth::Authenticator;
use crate::engine::PresenceEngine;
use crate::history::OnlineHistory;
use crate::integrations::EventLog;
use crate::presence::PresenceReader;
use crate::privacy::Privacy;
use crate::realtime::Realtime;
use crate::sessions::Sessions;
use crate::settings::Settings;
use crate::store::Store;
use crate::throttle::Throttle;

/// What every handler may use. Cheap to clone: every field is a handle.
#[derive(Clone)]
pub struct AppState {
    /// Validated settings.
    pub settings: Arc<Settings>,
    /// Durable storage.
    pub store: Arc<dyn Store>,
    /// Presence engine handle.
    pub engine: PresenceEngine,
    /// Accounts and tokens.
    pub auth: Authenticator,
    /// Logging in and ending sessions.
    pub sessions: Sessions,
    /// Current presence: the engine's view, else the stored row.
    pub reader: PresenceReader,
    /// Contacts, blocks, visibility settings; filters what ordinary users see.
    pub privacy: Privacy,
    /// Push to sockets and SSE streams.
    pub realtime: Realtime,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// The event log's recorder (the admin event stream waits on it before replaying).
    pub event_log: EventLog,
    /// The online count per minute (the dashboard's chart).
    pub history: OnlineHistory,
    /// Counters of the login, registration and connection throttles.
    pub throttle: Throttle,
}

/// The OpenAPI document, assembled from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(title = "lastseen", description = "WhatsApp-style online/offline presence server"),
    paths(
        users::register, users::login, users::logout, users::heartbeat, users::me, users::lookup,
        me::get_status, me::put_status, me::list_sessions, me::revoke_session,
        admin::online_users, admin::user_status, admin::events,
        dashboard::online_stats, dashboard::search_users, dashboard::user_detail,
        dashboard::end_session, dashboard::end_all_sessions,
        ws::upgrade, sse::events,
        presence::user_presence, presence::query_presence, presence::contacts_online,
        privacy::list_contacts, privacy::add_contact, privacy::remove_contact,
        privacy::list_blocked, privacy::block_user, privacy::unblock_user,
        privacy::get_privacy, privacy::put_privacy, privacy::patch_privacy,
        ops::healthz, ops::readyz, ops::metrics, ops::openapi,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "users", description = "Accounts and the caller's own presence"),
        (name = "presence", description = "Other users' presence, filtered by their privacy settings"),
        (name = "privacy", description = "The caller's contacts, blocked users and privacy settings"),
        (name = "admin", description = "Operator views (admin users only)"),
        (name = "realtime", description = "WebSocket and SSE push (protocol in docs/REALTIME.md)"),
        (name = "ops", description = "Health, metrics and this document"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "Opaque access token from POST /api/users/login/, or a JWT minted by another \
                 auth system (e.g. a Django simplejwt access token) when jwt_hs256_secret or \
                 jwt_public_key_file is set; see docs/INTEGRATIONS.md",
            ))
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
        let cookie = ApiKeyValue::with_description(
            "lastseen_session",
            "Browser session cookie set by POST /api/users/login/; accepted wherever a bearer \
             token is when no Authorization header is sent. Requests other than GET/HEAD/OPTIONS \
             authenticated by it need an Origin equal to this server's own (else 403 cross_origin).",
        );
        components.add_security_scheme("cookie", SecurityScheme::ApiKey(ApiKey::Cookie(cookie)));
    }
}

/// The router with every route and middleware, without the trailing-slash wrapper.
pub fn router(state: AppState) -> Router {
    let timeout = state.settings.request_timeout;
    let body_limit = state.settings.max_body_bytes;
    Router::new()
        .route("/api/users/register", post(users::register))
        .route("/api/users/login", post(users::login))
        .route("/api/users/logout", post(users::logout))
        .route("/api/users/heartbeat", post(users::heartbeat))
        .route("/api/users/me", get(users::me))
        .route("/api/users/lookup", get(users::lookup))
        .route(
            "/api/users/me/status",
            get(me::get_status).put(me::put_status),
        )
        .route("/api/users/me/sessions", get(me::list_sessions))
        .route("/api/users/me/sessions/{id}", delete(me::revoke_session))
        .route(
            "/api/users/me/contacts/online",
            get(presence::contacts_online),
        )
        .route(
            "/api/users/me/contacts",
            get(privacy::list_contacts).post(privacy::add_contact),
        )
        .route(
            "/api/users/me/contacts/{id}",
            delete(privacy::remove_contact),
        )
        .route(
            "/api/users/me/blocked",
            get(privacy::list_blocked).post(privacy::block_user),
        )
        .route("/api/users/me/blocked/{id}", delete(privacy::unblock_user))
        .route(
            "/api/users/me/privacy",
            get(privacy::get_privacy)
                .put(privacy::put_privacy)
                .patch(privacy::patch_privacy),
        )
        .route("/api/users/{id}/presence", get(presence::user_presence))
        .route("/api/presence/query", post(presence::query_presence))
        .route("/api/users/admin/users/online", get(admin::online_users))
        .route(
            "/api/users/admin/users/{id}/online-status",
            get(admin::user_status),
        )
        .route("/api/admin/events", get(admin::events))
        .route("/api/admin/stats/online", get(dashboard::online_stats))
        .route("/api/admin/users", get(dashboard::search_users))
        .route("/api/admin/users/{id}", get(dashboard::user_detail))
        .route(
            "/api/admin/users/{id}/sessions",
            delete(dashboard::end_all_sessions),
        )
        .route(
            "/api/admin/users/{id}/sessions/{session_id}",
            delete(dashboard::end_session),
        )
        .route("/admin", get(dashboard::page))
        .route("/static/admin.js", get(dashboard::script))
        .route("/api/presence/ws", get(ws::upgrade))
        .route("/api/presence/events", get(sse::events))
        .route("/", get(web::index))
        .route("/static/lastseen.js", get(web::client_js))
        .route("/favicon.svg", get(web::favicon))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/api/openapi.json", get(ops::openapi))
        .fallback(error::not_found)
        .with_state(state)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(CatchPanicLayer::new())
        .layer(axum::middleware::from_fn(error::normalize_errors))
        .layer(axum::middleware::from_fn(ops::track_requests))
        .layer(TraceLayer::new_for_http())
}

/// The service the server runs: the router behind trailing-slash normalisation.
pub type Service = NormalizePath<Router>;

/// The service to serve: the router behind trailing-slash normalisation.
pub fn service(state: AppState) -> Service {
    NormalizePathLayer::trim_trailing_slash().layer(router(state))
}
