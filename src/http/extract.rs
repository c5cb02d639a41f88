//! Extractors that replace axum's rejections with SCIM errors: a malformed
//! or oversized body, a bad token or a bad query parameter all answer in the
//! SCIM error format. Authentication, and the provisioning quotas that
//! depend on who is asking, happen here before any handler runs.

use scim::ScimType;
use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use scim::ast::AttrPath;
use serde_json::Value;

use super::error::{self, ApiError, JsonApiError};
use super::limits::{self, RateLimits};
use super::metrics::{self, HttpMetrics};
use crate::app::{App, Authenticated, Error, RequestContext};
use crate::domain::Scope;

/// A JSON request body. Unparsable JSON is 400 `invalidSyntax`; a body over
/// the limit is 413.
pub struct ScimBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for ScimBody {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| match e {
            BytesRejection::FailedToBufferBody(_) => error::response(
                StatusCode::PAYLOAD_TOO_LARGE,
                None,
                &format!("request body exceeds {} bytes", super::MAX_BODY),
            ),
            other => error::response(
                StatusCode::BAD_REQUEST,
                Some("invalidSyntax"),
                &other.body_text(),
            ),
        })?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            error::response(
                StatusCode::BAD_REQUEST,
                Some("invalidSyntax"),
                &format!("request body is not valid JSON: {e}"),
            )
        })?;
        if let Some(detail) = crate::domain::nul_in_json(&value) {
            return Err(ApiError(Error::Scim(ScimType::InvalidValue, detail)).into_response());
        }
        Ok(ScimBody(value))
    }
}

/// A JSON body of the permissions API, deserialised into `T`: invalid JSON
/// or a wrong shape is 400 in the API's format, a NUL in any string is 400
/// naming where, and a body over the limit is 413.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| match e {
            BytesRejection::FailedToBufferBody(_) => JsonApiError(Error::PayloadTooLarge(format!(
                "request body exceeds {} bytes",
                super::MAX_BODY
            )))
            .into_response(),
            other => JsonApiError(Error::Scim(ScimType::InvalidSyntax, other.body_text()))
                .into_response(),
        })?;
        let bad = |detail: String| {
            JsonApiError(Error::Scim(ScimType::InvalidSyntax, detail)).into_response()
        };
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("request body is not valid JSON: {e}")))?;
        if let Some(detail) = crate::domain::nul_in_json(&value) {
            return Err(JsonApiError(Error::Scim(ScimType::InvalidValue, detail)).into_response());
        }
        serde_json::from_value(value)
            .map(ApiJson)
            .map_err(|e| bad(format!("invalid request body: {e}")))
    }
}

/// An authenticated SCIM request: the tenant from the URL, checked against
/// the bearer token, plus the request's projection and base URL.
pub struct ScimRequest(pub RequestContext);

impl FromRequestParts<App> for ScimRequest {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let Path(params): Path<HashMap<String, String>> = Path::from_request_parts(parts, app)
            .await
            .map_err(|e| error::response(StatusCode::NOT_FOUND, None, &e.body_text()))?;
        let tenant = params.get("tenant").cloned().unwrap_or_default();
        let auth = authenticate(parts, app, &tenant, Scope::Scim)
            .await
            .map_err(|e| ApiError(e).into_response())?;
        admit(parts, &auth)
            .await
            .map_err(error::too_many_requests)?;
        let query = parse_query(parts.uri.query().unwrap_or(""));
        let attributes = attr_list(query.get("attributes"));
        let excluded = attr_list(query.get("excludedAttributes"));
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("localhost");
        let proto = parts
            .headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .filter(|p| *p == "https" || *p == "http")
            .unwrap_or("http");
        // The change feed names this request as the cause of what it
        // changes: method, path as the client sent it, its request id.
        let path = parts
            .extensions
            .get::<axum::extract::OriginalUri>()
            .map(|u| u.0.path().to_string())
            .unwrap_or_else(|| parts.uri.path().to_string());
        let cause = crate::domain::ChangeCause::Scim {
            method: parts.method.to_string(),
            path,
            // A client's own id, kept only while it is a plausible one: it
            // is stored with every event the request causes.
            request_id: parts
                .headers
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .filter(|id| id.len() <= 128 && !id.chars().any(char::is_control))
                .map(str::to_string),
            token: auth.token_id.clone(),
        };
        Ok(ScimRequest(RequestContext {
            tenant: auth.tenant.id,
            base_url: format!("{proto}://{host}/scim/v2/{}", auth.tenant.name),
            attributes,
            excluded,
            written: Default::default(),
            cause,
        }))
    }
}

/// Holds an authenticated provisioning request to its token's and tenant's
/// quotas and counts it as a SCIM operation; when over either, the error is
/// the `Retry-After` in seconds, for [`error::too_many_requests`]. Every
/// extractor of a quota-bound API calls it right after authentication; the
/// permissions API's does not. The router puts [`RateLimits`] and
/// [`HttpMetrics`] in the request extensions; a router built without them
/// (none is) would admit everything.
async fn admit(parts: &Parts, auth: &Authenticated) -> Result<(), u64> {
    let tenant = auth.tenant.name.as_str();
    let metrics = parts.extensions.get::<Arc<HttpMetrics>>().cloned();
    if let Some(limits) = parts.extensions.get::<Arc<RateLimits>>().cloned() {
        let decision = limits.admit(auth.tenant.id, tenant, &auth.token_id).await;
        match decision {
            Ok(source) => {
                if let Some(m) = &metrics {
                    m.quota_decision(tenant, "admitted", "both", source.as_str());
                }
            }
            Err(refused) => {
                if let Some(m) = &metrics {
                    m.rate_limited(tenant, refused.bucket.as_str());
                    m.quota_decision(
                        tenant,
                        "refused",
                        refused.bucket.as_str(),
                        refused.source.as_str(),
                    );
                }
                tracing::debug!(
                    tenant,
                    token_id = %auth.token_id,
                    bucket = refused.bucket.as_str(),
                    source = refused.source.as_str(),
                    "request over quota"
                );
                return Err(limits::retry_after_secs(refused.retry_after));
            }
        }
    }
    if let Some(m) = metrics {
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .map(MatchedPath::as_str);
        m.scim_operation(tenant, &metrics::scim_operation(&parts.method, route));
    }
    Ok(())
}

/// The bearer token of a request, checked for `scope` on `tenant`.
async fn authenticate(
    parts: &Parts,
    app: &App,
    tenant: &str,
    scope: Scope,
) -> Result<Authenticated, Error> {
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or(Error::Unauthorized)?;
    app.authenticate(bearer, tenant, scope).await
}

/// A request to the permissions API: the tenant from the URL, checked
/// against a token of scope `permissions`.
pub struct PermissionsRequest(pub Authenticated);

impl FromRequestParts<App> for PermissionsRequest {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        api_token(parts, app, Scope::Permissions)
            .await
            .map(PermissionsRequest)
    }
}

/// The `/api/v1` bearer token checked for `scope` on the tenant the path
/// names; a refusal in the API's JSON error format.
async fn api_token(parts: &mut Parts, app: &App, scope: Scope) -> Result<Authenticated, Response> {
    let Path(params): Path<HashMap<String, String>> =
        Path::from_request_parts(parts, app).await.map_err(|e| {
            JsonApiError(Error::Scim(ScimType::InvalidValue, e.body_text())).into_response()
        })?;
    let tenant = params.get("tenant").cloned().unwrap_or_default();
    authenticate(parts, app, &tenant, scope)
        .await
        .map_err(|e| JsonApiError(e).into_response())
}

/// A request to the admin API: the tenant from the URL, checked against a
/// token of scope `admin`.
pub struct AdminRequest(pub Authenticated);

impl FromRequestParts<App> for AdminRequest {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        api_token(parts, app, Scope::Admin).await.map(AdminRequest)
    }
}

/// Query parameters, percent-decoded. The last value of a repeated key wins.
pub fn parse_query(raw: &str) -> HashMap<String, String> {
    url::form_urlencoded::parse(raw.as_bytes())
        .into_owned()
        .collect()
}

/// A comma-separated attribute list (`attributes=userName,name.givenName`).
/// Names that do not parse are ignored, as unknown attributes are
/// (RFC 7644 §3.9 gives no error for them).
pub fn attr_list(raw: Option<&String>) -> Vec<AttrPath> {
    raw.map(|s| {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .filter_map(|p| scim::filter::parse_attr_path(p).ok())
            .collect()
    })
    .unwrap_or_default()
}

/// The `If-Match` header, if any.
pub fn if_match(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Query keys a route reads; any other is a 400 (a typo must not be
/// silently ignored).
pub fn checked_query(
    raw: Option<&str>,
    allowed: &[&str],
) -> Result<HashMap<String, String>, JsonApiError> {
    let q = parse_query(raw.unwrap_or(""));
    if let Some(k) = q.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(Error::Usage(format!(
            "unknown query parameter '{k}' (expected one of: {})",
            allowed.join(", ")
        ))
        .into());
    }
    Ok(q)
}

pub fn query_number(q: &HashMap<String, String>, key: &str) -> Result<Option<i64>, JsonApiError> {
    q.get(key)
        .map(|v| {
            v.parse::<i64>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| Error::Usage(format!("{key} must be a whole number ≥ 1, got '{v}'")))
        })
        .transpose()
        .map_err(Into::into)
}
