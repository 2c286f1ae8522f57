//! The browser client (`/static/lastseen.js`), the demo page (`/`) and its icon
//! (`/favicon.svg`), embedded in the binary: no build step, nothing fetched at run time.

use axum::http::header;
use axum::response::{Html, IntoResponse};

/// The demo page: sign in, contacts with live dots and "last seen", "typing…", settings.
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

/// The page's icon: a chat bubble with a green "online" dot.
pub async fn favicon() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        include_str!("../../web/favicon.svg"),
    )
}
