//! The HTTP edge: axum router, authentication, body limits, and the mapping
//! between SCIM wire requests and `app` calls.
//!
//! May use: `app`, `scim`, `domain`. Invariant: never touches the store or
//! SQL; it is the only module that knows HTTP status codes and the SCIM error
//! JSON (in [`error`]).

pub mod error;
mod extract;
mod permissions_routes;
mod scim_routes;

use std::time::Duration;

use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::Value;
use tower_http::trace::TraceLayer;

use crate::app::App;

/// The SCIM media type (RFC 7644 §3.1).
pub const SCIM_JSON: &str = "application/scim+json";

/// Largest request body accepted. Bulk requests are held to the same bound,
/// which ServiceProviderConfig advertises as `bulk.maxPayloadSize`.
pub const MAX_BODY: usize = crate::app::BULK_LIMITS.max_payload_size;

/// The whole HTTP API.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .nest("/scim/v2/{tenant}", scim_routes::routes())
        .nest("/api/v1/tenants/{tenant}", permissions_routes::routes())
        .fallback(|| async { error::response(StatusCode::NOT_FOUND, None, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            error::response(
                StatusCode::METHOD_NOT_ALLOWED,
                None,
                "method not allowed on this endpoint",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(log_internal_errors))
        .layer(TraceLayer::new_for_http())
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(60),
        ))
        .with_state(app)
}

/// Prometheus text format.
async fn metrics(axum::extract::State(app): axum::extract::State<App>) -> Response {
    let mut resp = app.metrics_text().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

/// Logs the error text that [`error::ApiError`] attached to a 5xx response.
async fn log_internal_errors(req: Request<Body>, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    if let Some(err) = resp.extensions().get::<error::InternalError>() {
        tracing::error!(%method, %path, error = %err.0, "request failed");
    }
    resp
}

/// A JSON response with the SCIM media type.
pub fn scim_json(status: StatusCode, value: &Value) -> Response {
    let mut resp = (status, value.to_string()).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(SCIM_JSON));
    resp
}
