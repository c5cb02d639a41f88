//! The HTTP edge: axum router, authentication, quotas and load limits, body
//! limits, metrics and probes, and the mapping between SCIM wire requests
//! and `app` calls.
//!
//! May use: `app`, `scim`, `domain`. Invariant: never touches the store or
//! SQL; it is the only module that knows HTTP status codes and the SCIM error
//! JSON (in [`error`]).

mod admin_page;
mod admin_routes;
mod changes_routes;
pub mod error;
mod extract;
mod input;
pub mod limits;
pub mod metrics;
mod permissions_routes;
mod scim_routes;
mod unread_body;
mod webhook_routes;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde_json::{json, Value};
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;

use crate::app::{App, Error};
pub use crate::config::HttpSettings;
use limits::RateLimits;
use metrics::HttpMetrics;

/// The SCIM media type (RFC 7644 §3.1).
pub const SCIM_JSON: &str = "application/scim+json";

/// Largest request body accepted. Bulk requests are held to the same bound,
/// which ServiceProviderConfig advertises as `bulk.maxPayloadSize`.
pub const MAX_BODY: usize = crate::app::BULK_LIMITS.max_payload_size;

/// How long `/readyz` waits for the store before answering 503.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// The whole HTTP API with the default quotas and limits.
pub fn router(app: App) -> Router {
    router_with(app, HttpSettings::default())
}

/// The whole HTTP API with the given quotas and limits.
///
/// Layers, outermost first: metrics (so they see every final status,
/// including 408, 413, 429 and 503), the unread-body drain
/// ([`unread_body`]), tracing, the 60 s timeout, then, for
/// the SCIM and permissions APIs only, the in-flight cap. Probes and
/// `/metrics` stay outside the cap so that an overloaded service still
/// answers its monitoring. Provisioning quotas are enforced after
/// authentication, in `extract::ScimRequest` (see [`limits`]).
pub fn router_with(app: App, settings: HttpSettings) -> Router {
    let http_metrics = Arc::new(HttpMetrics::new());
    let rate_limits = Arc::new(RateLimits::new(&settings.rate_limit));
    let limits = rate_limits.clone();
    http_metrics.report_fallback_replicas(Box::new(move || limits.fallback_replicas()));
    let apis = Router::new()
        .nest("/scim/v2/{tenant}", scim_routes::routes())
        .nest(
            "/api/v1/tenants/{tenant}",
            permissions_routes::routes()
                .merge(changes_routes::routes())
                .merge(admin_routes::routes())
                .merge(webhook_routes::routes()),
        )
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(limits::shed))
                .layer(tower::load_shed::LoadShedLayer::new())
                .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                    settings.max_in_flight,
                )),
        );
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(admin_page::routes())
        .merge(apis)
        .fallback(|uri: Uri| async move {
            error::for_path(uri.path(), Error::NoSuchEndpoint(uri.path().to_string()))
        })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            error::for_path(
                uri.path(),
                Error::MethodNotAllowed {
                    method: method.to_string(),
                    path: uri.path().to_string(),
                },
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        // A handler that panics (a bug; no input should make one) answers
        // a generic 500 in its API's format instead of dropping the
        // connection; the panic hook has logged it.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .layer(middleware::from_fn(input::screen))
        .layer(middleware::from_fn(log_internal_errors))
        .layer(Extension(rate_limits))
        .layer(Extension(http_metrics.clone()))
        // Spans carry method, URI, the request id and the tenant named in
        // the path only: request headers hold bearer tokens, so they are
        // never recorded, at any log level.
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        // The id is the client's `X-Request-Id` when it sent one, else a
        // fresh UUID; the response carries it back.
        .layer(tower_http::request_id::PropagateRequestIdLayer::x_request_id())
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(60),
        ))
        // Outside the timeout, so that a 408 also leaves the connection
        // reusable or says it is not.
        .layer(middleware::from_fn(unread_body::drain))
        .layer(tower_http::request_id::SetRequestIdLayer::x_request_id(
            tower_http::request_id::MakeRequestUuid,
        ))
        .layer(middleware::from_fn_with_state(http_metrics, metrics::track))
        .with_state(app)
}

/// The span of one request: method, URI, request id and the tenant its
/// path names (`/scim/v2/{tenant}/...`, `/api/v1/tenants/{tenant}/...`),
/// which authentication has not checked yet.
fn request_span(req: &Request<Body>) -> tracing::Span {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let path = req.uri().path();
    let tenant = path
        .strip_prefix("/scim/v2/")
        .or_else(|| path.strip_prefix("/api/v1/tenants/"))
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("");
    tracing::info_span!(
        "request",
        method = %req.method(),
        uri = %req.uri(),
        version = ?req.version(),
        request_id,
        tenant,
    )
}

/// Prometheus text format: the HTTP metrics, then the application's.
async fn metrics_text(
    State(app): State<App>,
    Extension(http_metrics): Extension<Arc<HttpMetrics>>,
) -> Response {
    let mut text = http_metrics.render();
    text.push_str(&app.metrics_text().await);
    let mut resp = text.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

/// Readiness: 200 once the store (and Redis, when configured) answers
/// within [`READY_TIMEOUT`], else 503 naming the failing dependency.
async fn readyz(State(app): State<App>) -> Response {
    match tokio::time::timeout(READY_TIMEOUT, app.ready()).await {
        Ok(Ok(())) => axum::Json(json!({"status": "ready"})).into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready");
            error::not_ready(
                e.split_once(':')
                    .map_or(e.as_str(), |(dependency, _)| dependency),
            )
        }
        Err(_) => {
            tracing::warn!(timeout = ?READY_TIMEOUT, "readiness check timed out");
            error::not_ready("timeout")
        }
    }
}

/// The response for a handler panic. The request path is not at hand here,
/// so the body is the SCIM error; `/api/v1` clients still get a 500.
fn panic_response(payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let text = crate::telemetry::panic_message(payload.as_ref()).unwrap_or_default();
    error::internal("/scim", &format!("handler panicked: {text}"))
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
