//! The browser client (`/static/lastseen.js`) and the demo page (`/`), embedded in the binary.

use axum::http::header;
use axum::response::{Html, IntoResponse};

/// The demo page: log in, watch users, see live dots, "last seen", "typing…".
pub async fn index() -> Html<&'static str> {
    Html(include_str!("../../web/index.html"))
}

/// The dependency-free ES module client.
pub async fn client_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../../web/lastseen.js"),
    )
}
