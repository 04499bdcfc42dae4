//! The stylesheet and script, compiled into the binary so that pages load
//! nothing from any other origin.

use axum::http::header;
use axum::response::IntoResponse;

const CSS: &str = include_str!("../../assets/app.css");
const JS: &str = include_str!("../../assets/app.js");

pub(super) async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        CSS,
    )
}

pub(super) async fn js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        JS,
    )
}

/// No icon; answering 204 keeps browsers from logging a 404 on every page.
pub(super) async fn favicon() -> axum::http::StatusCode {
    axum::http::StatusCode::NO_CONTENT
}
