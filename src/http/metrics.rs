//! HTTP metrics in Prometheus text format: requests and latency per route and
//! status, quota decisions and requests refused by a quota per tenant, and
//! SCIM operations per tenant.
//!
//! One registry per router (the `prometheus` crate's `Registry`, not its
//! global default), so tests that run several servers in one process read
//! their own counts. The crate is used rather than hand-written text because
//! histograms, label escaping and the exposition format are easy to get
//! subtly wrong, and it needs no other dependency of weight (its protobuf
//! feature is off). Invariant: every label value comes from a closed or
//! authenticated set (route templates from `MatchedPath`, standard methods,
//! tenant names after authentication), never from a raw path or header, so a
//! client cannot grow the number of series.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// The label of requests that matched no route (404 fallback).
const UNMATCHED: &str = "unmatched";

/// Reads the current N of the quotas' fallback share (`None`: no Redis).
pub type FallbackReplicas = Box<dyn Fn() -> Option<u32> + Send + Sync>;

/// The HTTP edge's metrics; shared by the middleware, the SCIM extractor and
/// `/metrics`.
pub struct HttpMetrics {
    registry: Registry,
    /// `rolebridge_http_requests_total{method,route,status}`.
    requests: IntCounterVec,
    /// `rolebridge_http_request_duration_seconds{method,route,status}`.
    duration: HistogramVec,
    /// `rolebridge_rate_limited_total{tenant,bucket}`.
    rate_limited: IntCounterVec,
    /// `rolebridge_quota_decisions_total{tenant,decision,bucket,source}`:
    /// every quota decision, admitted (`bucket="both"`) or refused (the
    /// bucket that was empty), by who decided (`redis`, `local` or
    /// `fallback`, see `limits::Source`). Refusals are also counted in
    /// `rate_limited`, which predates this and is kept for dashboards.
    quota_decisions: IntCounterVec,
    /// `rolebridge_quota_fallback_replicas`: the N this replica divides each
    /// quota by while Redis is down, read from [`Self::fallback_replicas`]
    /// at each render (0 without Redis).
    quota_fallback_replicas: IntGauge,
    /// Where the gauge above is read from: the router's quotas, set once
    /// when the router is built.
    fallback_replicas: OnceLock<FallbackReplicas>,
    /// `rolebridge_scim_operations_total{tenant,operation}`, counted once a
    /// request passed authentication and its quotas.
    scim_operations: IntCounterVec,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let labels = ["method", "route", "status"];
        let requests = IntCounterVec::new(
            Opts::new(
                "rolebridge_http_requests_total",
                "HTTP requests answered, by method, route template and status.",
            ),
            &labels,
        )
        .expect("metric options are valid constants");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "rolebridge_http_request_duration_seconds",
                "Time to produce a response, by method, route template and status.",
            ),
            &labels,
        )
        .expect("metric options are valid constants");
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "rolebridge_rate_limited_total",
                "Requests refused with 429, by tenant and the bucket (tenant or token) that was empty.",
            ),
            &["tenant", "bucket"],
        )
        .expect("metric options are valid constants");
        let quota_decisions = IntCounterVec::new(
            Opts::new(
                "rolebridge_quota_decisions_total",
                "Provisioning quota decisions, by tenant, decision (admitted or refused), the bucket \
                 that refused (both when admitted) and source (redis: cluster-wide; local: this \
                 replica at the full quota; fallback: this replica's share while Redis is down).",
            ),
            &["tenant", "decision", "bucket", "source"],
        )
        .expect("metric options are valid constants");
        let quota_fallback_replicas = IntGauge::new(
            "rolebridge_quota_fallback_replicas",
            "The number of replicas each quota is divided by while Redis is down: the larger of \
             [rate_limit] replicas and the live replicas last counted in Redis.",
        )
        .expect("metric options are valid constants");
        let scim_operations = IntCounterVec::new(
            Opts::new(
                "rolebridge_scim_operations_total",
                "SCIM requests admitted, by tenant and operation (method and endpoint template).",
            ),
            &["tenant", "operation"],
        )
        .expect("metric options are valid constants");
        for metric in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(rate_limited.clone()),
            Box::new(quota_decisions.clone()),
            Box::new(quota_fallback_replicas.clone()),
            Box::new(scim_operations.clone()),
        ] {
            registry
                .register(metric)
                .expect("metric names are unique in a fresh registry");
        }
        HttpMetrics {
            registry,
            requests,
            duration,
            rate_limited,
            quota_decisions,
            quota_fallback_replicas,
            fallback_replicas: OnceLock::new(),
            scim_operations,
        }
    }

    /// Records one answered request.
    pub fn observe(&self, method: &Method, route: &str, status: StatusCode, elapsed: Duration) {
        let status = status.as_str();
        let labels = [method_label(method), route, status];
        self.requests.with_label_values(&labels).inc();
        self.duration
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Records a request refused by a quota.
    pub fn rate_limited(&self, tenant: &str, bucket: &str) {
        self.rate_limited.with_label_values(&[tenant, bucket]).inc();
    }

    /// Records one quota decision: `decision` is `admitted` or `refused`,
    /// `bucket` the refusing bucket (`both` when admitted), `source` who
    /// decided.
    pub fn quota_decision(&self, tenant: &str, decision: &str, bucket: &str, source: &str) {
        self.quota_decisions
            .with_label_values(&[tenant, decision, bucket, source])
            .inc();
    }

    /// Makes `/metrics` show the quotas' fallback N as `read` tells it at
    /// each render (which follows the heartbeat, not the last request).
    /// Only the first call counts: a router has one set of quotas.
    pub fn report_fallback_replicas(&self, read: FallbackReplicas) {
        let _ = self.fallback_replicas.set(read);
    }

    /// Records an admitted SCIM request; `operation` is e.g.
    /// `PATCH /Users/{id}`.
    pub fn scim_operation(&self, tenant: &str, operation: &str) {
        self.scim_operations
            .with_label_values(&[tenant, operation])
            .inc();
    }

    /// Every metric of this registry in the text exposition format.
    pub fn render(&self) -> String {
        if let Some(n) = self.fallback_replicas.get().and_then(|read| read()) {
            self.quota_fallback_replicas.set(i64::from(n));
        }
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot encode HTTP metrics");
                String::new()
            })
    }
}

/// Standard methods by name; anything else as `other`, since a client may
/// send any token as a method.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The SCIM operation of a request: its method and the endpoint template
/// below `/scim/v2/{tenant}`, e.g. `PATCH /Users/{id}`.
pub fn scim_operation(method: &Method, matched: Option<&str>) -> String {
    let route = matched.unwrap_or(UNMATCHED);
    let endpoint = route.strip_prefix("/scim/v2/{tenant}").unwrap_or(route);
    format!("{} {endpoint}", method_label(method))
}

/// Middleware: times every request and counts it under its route template.
pub async fn track(State(metrics): State<Arc<HttpMetrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| UNMATCHED.to_string());
    let method = req.method().clone();
    let start = Instant::now();
    let resp = next.run(req).await;
    metrics.observe(&method, &route, resp.status(), start.elapsed());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_histograms_with_labels() {
        let m = HttpMetrics::new();
        m.observe(
            &Method::GET,
            "/scim/v2/{tenant}/Users/{id}",
            StatusCode::OK,
            Duration::from_millis(3),
        );
        m.observe(
            &Method::from_bytes(b"BREW").unwrap(),
            UNMATCHED,
            StatusCode::NOT_FOUND,
            Duration::from_millis(1),
        );
        m.rate_limited("acme", "tenant");
        m.quota_decision("acme", "refused", "tenant", "redis");
        m.quota_decision("acme", "admitted", "both", "fallback");
        m.quota_decision("acme", "admitted", "both", "fallback");
        m.report_fallback_replicas(Box::new(|| Some(3)));
        m.scim_operation("acme", "POST /Users");
        let text = m.render();
        for line in [
            r#"rolebridge_http_requests_total{method="GET",route="/scim/v2/{tenant}/Users/{id}",status="200"} 1"#,
            r#"rolebridge_http_requests_total{method="other",route="unmatched",status="404"} 1"#,
            r#"rolebridge_http_request_duration_seconds_count{method="GET",route="/scim/v2/{tenant}/Users/{id}",status="200"} 1"#,
            r#"rolebridge_rate_limited_total{bucket="tenant",tenant="acme"} 1"#,
            r#"rolebridge_scim_operations_total{operation="POST /Users",tenant="acme"} 1"#,
            r#"rolebridge_quota_decisions_total{bucket="tenant",decision="refused",source="redis",tenant="acme"} 1"#,
            r#"rolebridge_quota_decisions_total{bucket="both",decision="admitted",source="fallback",tenant="acme"} 2"#,
            "rolebridge_quota_fallback_replicas 3",
            "# TYPE rolebridge_http_request_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn operations_are_templates_below_the_tenant() {
        let op = scim_operation(&Method::PATCH, Some("/scim/v2/{tenant}/Users/{id}"));
        assert_eq!(op, "PATCH /Users/{id}");
        assert_eq!(scim_operation(&Method::GET, None), "GET unmatched");
    }
}
