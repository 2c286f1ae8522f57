//! The HTTP API: router, shared state, middleware stack and the OpenAPI document.
//!
//! Routes are declared without a trailing slash and registered in both forms, so the seed's
//! trailing-slash paths (`/api/users/heartbeat/`) reach the same handlers. Every endpoint runs
//! behind one middleware, [`middleware::RequestLayer`] (metrics, timeout, panics, error shape,
//! span).

mod admin;
mod cookie;
mod dashboard;
mod dto;
mod error;
mod extract;
mod json;
mod limits;
mod me;
mod middleware;
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
use axum::routing::{MethodRouter, delete, get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use tower::ServiceBuilder;
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
use middleware::RequestLayer;

/// What every handler may use: one shared [`Shared`], read through `Deref`. axum clones the
/// state for every request (and each `State` extractor clones it again), so a clone is one
/// reference count here rather than one per handle inside.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// Shares `parts` with every handler.
    pub fn new(parts: Shared) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The handles behind an [`AppState`].
pub struct Shared {
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

/// Every route: path (without its trailing slash) and handlers.
fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/api/users/register", post(users::register)),
        ("/api/users/login", post(users::login)),
        ("/api/users/logout", post(users::logout)),
        ("/api/users/heartbeat", post(users::heartbeat)),
        ("/api/users/me", get(users::me)),
        ("/api/users/lookup", get(users::lookup)),
        (
            "/api/users/me/status",
            get(me::get_status).put(me::put_status),
        ),
        ("/api/users/me/sessions", get(me::list_sessions)),
        ("/api/users/me/sessions/{id}", delete(me::revoke_session)),
        (
            "/api/users/me/contacts/online",
            get(presence::contacts_online),
        ),
        (
            "/api/users/me/contacts",
            get(privacy::list_contacts).post(privacy::add_contact),
        ),
        (
            "/api/users/me/contacts/{id}",
            delete(privacy::remove_contact),
        ),
        (
            "/api/users/me/blocked",
            get(privacy::list_blocked).post(privacy::block_user),
        ),
        ("/api/users/me/blocked/{id}", delete(privacy::unblock_user)),
        (
            "/api/users/me/privacy",
            get(privacy::get_privacy)
                .put(privacy::put_privacy)
                .patch(privacy::patch_privacy),
        ),
        ("/api/users/{id}/presence", get(presence::user_presence)),
        ("/api/presence/query", post(presence::query_presence)),
        ("/api/users/admin/users/online", get(admin::online_users)),
        (
            "/api/users/admin/users/{id}/online-status",
            get(admin::user_status),
        ),
        ("/api/admin/events", get(admin::events)),
        ("/api/admin/stats/online", get(dashboard::online_stats)),
        ("/api/admin/users", get(dashboard::search_users)),
        ("/api/admin/users/{id}", get(dashboard::user_detail)),
        (
            "/api/admin/users/{id}/sessions",
            delete(dashboard::end_all_sessions),
        ),
        (
            "/api/admin/users/{id}/sessions/{session_id}",
            delete(dashboard::end_session),
        ),
        ("/admin", get(dashboard::page)),
        ("/static/admin.js", get(dashboard::script)),
        ("/api/presence/ws", get(ws::upgrade)),
        ("/api/presence/events", get(sse::events)),
        ("/", get(web::index)),
        ("/static/lastseen.js", get(web::client_js)),
        ("/favicon.svg", get(web::favicon)),
        ("/healthz", get(ops::healthz)),
        ("/readyz", get(ops::readyz)),
        ("/metrics", get(ops::metrics)),
        ("/api/openapi.json", get(ops::openapi)),
    ]
}

/// The router with every route and middleware. Each route is registered with and without a
/// trailing slash (the seed's clients send `/api/users/heartbeat/`), so matching either form
/// costs the same as matching one and no request's URI is rewritten.
pub fn router(state: AppState) -> Router {
    let middleware = ServiceBuilder::new()
        .layer(RequestLayer::new(state.settings.request_timeout))
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes));
    routes()
        .into_iter()
        .fold(Router::new(), |router, (path, handlers)| {
            let router = router.route(path, handlers.clone());
            if path == "/" {
                router
            } else {
                router.route(&format!("{path}/"), handlers)
            }
        })
        .fallback(error::not_found)
        .with_state(state)
        .layer(middleware)
}

/// The service the server runs.
pub type Service = Router;

/// The service to serve: the router with every route and middleware.
pub fn service(state: AppState) -> Service {
    router(state)
}
