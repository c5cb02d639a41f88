//! `/admin`: the admin web page, compiled into the binary (no CDN; it works
//! offline). It holds no secret: the admin pastes a token of scope `admin`,
//! kept in the tab's sessionStorage, and the page calls the admin API
//! (`admin_routes.rs`) with it. A strict CSP allows only this server's
//! own script and style.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::app::App;

const HTML: &str = include_str!("admin_page/index.html");
const JS: &str = include_str!("admin_page/app.js");
const CSS: &str = include_str!("admin_page/app.css");

pub fn routes() -> Router<App> {
    Router::new()
        .route(
            "/admin",
            get(|| async { asset(HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/admin/app.js",
            get(|| async { asset(JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/admin/app.css",
            get(|| async { asset(CSS, "text/css; charset=utf-8") }),
        )
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}
