//! Operational endpoints: liveness, readiness, Prometheus metrics and the OpenAPI document.
//! (Request metrics are recorded by the request middleware, `middleware.rs`.)

use super::json::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;

use super::AppState;
use super::dto::HealthResponse;
use super::error::{ApiError, ErrorBody};

/// Liveness: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "Up", body = HealthResponse)))]
pub async fn healthz() -> Json<HealthResponse> {
    Json(HealthResponse { status: "ok" })
}

/// Readiness: the database answers and takes writes, and presence is reachable.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "Ready", body = HealthResponse),
        (status = 503, description = "Database or presence backend unreachable", body = ErrorBody),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<HealthResponse>, ApiError> {
    state.store.ping().await?;
    state.engine.ready().await?;
    Ok(Json(HealthResponse { status: "ok" }))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    if let Ok(online) = state.engine.online_count().await {
        metrics::gauge!("lastseen_online_users").set(online as f64);
    }
    let body = state.metrics.render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// This API's OpenAPI 3 document, generated from the handlers.
#[utoipa::path(get, path = "/api/openapi.json", tag = "ops",
    responses((status = 200, description = "OpenAPI document", content_type = "application/json")))]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(super::ApiDoc::openapi())
}
