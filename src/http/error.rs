//! The one place where application errors become HTTP statuses and SCIM
//! error bodies (RFC 7644 §3.12). Client mistakes are not logged; internal
//! errors get a generic body and the real error rides along as a response
//! extension for the logging middleware, so this conversion has no side
//! effects.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use scim::schema::ERROR_URN;
use scim::ScimType;
use serde_json::{json, Value};

use crate::app::Error;

/// An error on its way to becoming a SCIM error response.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        ApiError(err)
    }
}

/// The full text of an internal error, for the logging middleware only.
#[derive(Debug, Clone)]
pub struct InternalError(pub String);

/// Status and `scimType` of each error. Unit-tested below.
pub fn classify(err: &Error) -> (StatusCode, Option<&'static str>) {
    use Error::*;
    match err {
        NotFound { .. } => (StatusCode::NOT_FOUND, None),
        // RFC 7644 §3.12: 409 for uniqueness, 400 for every other type.
        Scim(ScimType::Uniqueness, _) => (StatusCode::CONFLICT, Some("uniqueness")),
        Scim(kind, _) => (StatusCode::BAD_REQUEST, Some(kind.as_str())),
        Usage(_) => (
            StatusCode::BAD_REQUEST,
            Some(ScimType::InvalidValue.as_str()),
        ),
        Conflict => (StatusCode::CONFLICT, None),
        PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, None),
        UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, None),
        NoSuchEndpoint(_) => (StatusCode::NOT_FOUND, None),
        MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, None),
        PreconditionFailed { .. } => (StatusCode::PRECONDITION_FAILED, None),
        Unauthorized => (StatusCode::UNAUTHORIZED, None),
        Forbidden(_) => (StatusCode::FORBIDDEN, None),
        TenantNotMapped(_) => (StatusCode::CONFLICT, None),
        UnknownUser(_) => (StatusCode::NOT_FOUND, None),
        UnknownPermission(_) => (StatusCode::BAD_REQUEST, None),
        RevisionAhead { .. } => (
            StatusCode::BAD_REQUEST,
            Some(ScimType::InvalidValue.as_str()),
        ),
        MappingInvalid(_) => (
            StatusCode::BAD_REQUEST,
            Some(ScimType::InvalidValue.as_str()),
        ),
        MappingConflict { .. } => (StatusCode::CONFLICT, None),
        // RFC 6585: the apply must carry a condition (the plan's hash).
        MappingGuarded { .. } => (StatusCode::PRECONDITION_REQUIRED, None),
        MappingPlanStale { .. } => (StatusCode::PRECONDITION_FAILED, None),
        // The events after the cursor are gone for good: 410, not 404.
        CursorExpired { .. } => (StatusCode::GONE, None),
        CursorAhead { .. } => (
            StatusCode::BAD_REQUEST,
            Some(ScimType::InvalidValue.as_str()),
        ),
        UnknownWebhook { .. } => (StatusCode::NOT_FOUND, None),
        NotCommitted(_) => (StatusCode::SERVICE_UNAVAILABLE, None),
        Store(_) | Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, None),
    }
}

/// The SCIM error body of an error, with its status; used by single
/// requests and by each failed operation of a bulk request.
pub fn error_body(err: &Error) -> (u16, Value) {
    let (status, scim_type) = classify(err);
    let detail = match err {
        // Nothing of the request was kept: say so, without the database's
        // words (they are in the server log).
        Error::NotCommitted(_) => "the write was not committed; retry it".to_string(),
        _ if status.is_server_error() => "internal error; see the server log".to_string(),
        _ => err.to_string(),
    };
    (status.as_u16(), body(status, scim_type, &detail))
}

/// One entry of a BulkResponse (RFC 7644 §3.7.3): the operation's status
/// and, when it failed, the SCIM error body a single request would get. An
/// operation not attempted for an unresolvable `bulkId` is 409.
pub fn bulk_operation(op: crate::app::BulkOp) -> Value {
    use crate::app::BulkOutcome;
    let (status, response) = match op.outcome {
        BulkOutcome::Created => (StatusCode::CREATED, None),
        BulkOutcome::Replaced | BulkOutcome::Patched => (StatusCode::OK, None),
        BulkOutcome::Deleted => (StatusCode::NO_CONTENT, None),
        BulkOutcome::Failed(e) => {
            let (status, body) = error_body(&e);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, Some(body))
        }
        BulkOutcome::Unresolved(why) => (
            StatusCode::CONFLICT,
            Some(body(
                StatusCode::CONFLICT,
                Some(ScimType::InvalidValue.as_str()),
                &why,
            )),
        ),
    };
    let mut o = serde_json::Map::new();
    o.insert("method".into(), json!(op.method));
    if let Some(b) = op.bulk_id {
        o.insert("bulkId".into(), json!(b));
    }
    if let Some(v) = op.version {
        o.insert("version".into(), json!(v));
    }
    if let Some(l) = op.location {
        o.insert("location".into(), json!(l));
    }
    o.insert("status".into(), json!(status.as_u16().to_string()));
    if let Some(r) = response {
        o.insert("response".into(), r);
    }
    Value::Object(o)
}

/// A SCIM error body.
pub fn body(status: StatusCode, scim_type: Option<&str>, detail: &str) -> Value {
    let mut v = json!({
        "schemas": [ERROR_URN],
        "status": status.as_u16().to_string(),
        "detail": detail,
    });
    if let Some(t) = scim_type {
        v["scimType"] = json!(t);
    }
    v
}

/// An error answered before any handler ran (`http::input`, fallbacks), in
/// the format of the API that `path` addresses: `{"error": ...}` under
/// `/api/`, a SCIM error body elsewhere.
pub fn for_path(path: &str, err: Error) -> Response {
    if path.starts_with("/api/") {
        JsonApiError(err).into_response()
    } else {
        ApiError(err).into_response()
    }
}

/// A SCIM error response that does not come from the application (unknown
/// route, unsupported method, oversized body).
pub fn response(status: StatusCode, scim_type: Option<&str>, detail: &str) -> Response {
    super::scim_json(status, &body(status, scim_type, detail))
}

/// 429 for a request over a provisioning quota (RFC 6585 §4): a SCIM error
/// without `scimType` (RFC 7644 §3.12 defines none for 429) and
/// `Retry-After` in whole seconds.
pub fn too_many_requests(retry_after_secs: u64) -> Response {
    let mut resp = response(
        StatusCode::TOO_MANY_REQUESTS,
        None,
        &format!("request rate over quota; retry after {retry_after_secs} s"),
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    resp
}

/// 503 for a request shed by the in-flight cap, in the format of the API
/// that `path` addresses, with `Retry-After: 1`.
pub fn overloaded(path: &str) -> Response {
    let detail = "server busy: too many requests in flight; retry shortly";
    let mut resp = if path.starts_with("/api/") {
        json_error(StatusCode::SERVICE_UNAVAILABLE, "overloaded", detail, None)
    } else {
        response(StatusCode::SERVICE_UNAVAILABLE, None, detail)
    };
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(1u64));
    resp
}

/// A generic 500 for a failure outside any handler; `error` rides along for
/// the logging middleware.
pub fn internal(path: &str, error: &str) -> Response {
    let detail = "internal error; see the server log";
    let mut resp = if path.starts_with("/api/") {
        json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail, None)
    } else {
        response(StatusCode::INTERNAL_SERVER_ERROR, None, detail)
    };
    resp.extensions_mut()
        .insert(InternalError(error.to_string()));
    resp
}

/// `/readyz` when a dependency does not answer: 503 naming the dependency
/// only; the probe is unauthenticated, so the error itself goes to the log.
pub fn not_ready(dependency: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"status": "unavailable", "failing": dependency})),
    )
        .into_response()
}

/// The permissions API's error body, `{"error": {status, code, message}}`.
fn json_error(status: StatusCode, code: &str, message: &str, details: Option<Value>) -> Response {
    let mut body = json!({"error": {"status": status.as_u16(), "code": code, "message": message}});
    if let Some(Value::Object(extra)) = details {
        if let Some(Value::Object(e)) = body.get_mut("error") {
            e.extend(extra);
        }
    }
    (status, axum::Json(body)).into_response()
}

/// What an admin needs beyond the message: every validation error with its
/// file, line and column; the guard's reasons and the plan hash to confirm.
fn details(err: &Error) -> Option<Value> {
    match err {
        Error::MappingInvalid(errors) => Some(json!({
            "errors": errors.iter().map(|e| json!({
                "file": e.at.file,
                "line": e.at.line,
                "column": e.at.column,
                "message": e.kind.to_string(),
            })).collect::<Vec<_>>()
        })),
        Error::MappingGuarded { reasons, hash } => {
            Some(json!({"reasons": reasons, "plan_hash": hash}))
        }
        Error::MappingPlanStale { hash } => Some(json!({"plan_hash": hash})),
        Error::MappingConflict { base, latest } => Some(json!({"base": base, "latest": latest})),
        Error::CursorExpired { tenant, oldest, .. } => Some(json!({
            "oldest": oldest,
            "resync": format!("/api/v1/tenants/{tenant}/permissions"),
        })),
        Error::CursorAhead { head, .. } => Some(json!({"head": head})),
        _ => None,
    }
}

/// A stable machine-readable code for the permissions API's JSON errors.
pub fn code(err: &Error) -> &'static str {
    use Error::*;
    match err {
        NotFound { .. } => "not_found",
        TenantNotMapped(_) => "unknown_tenant",
        UnknownUser(_) => "unknown_user",
        UnknownPermission(_) => "unknown_permission",
        Unauthorized => "unauthorized",
        Forbidden(_) => "forbidden",
        RevisionAhead { .. } => "revision_ahead",
        Store(_) | Internal(_) => "internal",
        NotCommitted(_) => "not_committed",
        PayloadTooLarge(_) => "payload_too_large",
        UnsupportedMediaType(_) => "unsupported_media_type",
        NoSuchEndpoint(_) => "not_found",
        MethodNotAllowed { .. } => "method_not_allowed",
        MappingInvalid(_) => "invalid_mapping",
        MappingConflict { .. } => "version_conflict",
        MappingGuarded { .. } => "confirmation_required",
        MappingPlanStale { .. } => "plan_changed",
        CursorExpired { .. } => "cursor_expired",
        CursorAhead { .. } => "cursor_ahead",
        UnknownWebhook { .. } => "unknown_webhook",
        _ => "invalid_request",
    }
}

/// An error of the permissions API (`/api/v1`): plain JSON, not the SCIM
/// error schema, because its clients are platforms, not SCIM clients.
#[derive(Debug)]
pub struct JsonApiError(pub Error);

impl From<Error> for JsonApiError {
    fn from(err: Error) -> Self {
        JsonApiError(err)
    }
}

impl IntoResponse for JsonApiError {
    fn into_response(self) -> Response {
        let (status, _) = classify(&self.0);
        let message = if status.is_server_error() {
            "internal error; see the server log".to_string()
        } else {
            self.0.to_string()
        };
        let mut resp = json_error(status, code(&self.0), &message, details(&self.0));
        if status.is_server_error() {
            resp.extensions_mut()
                .insert(InternalError(format!("{:#}", anyhow::Error::from(self.0))));
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, value) = error_body(&self.0);
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = super::scim_json(status, &value);
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"rolebridge\""),
            );
        }
        if status.is_server_error() {
            resp.extensions_mut()
                .insert(InternalError(format!("{:#}", anyhow::Error::from(self.0))));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(err: Error, status: u16, scim_type: Option<&str>) {
        let (s, body) = error_body(&err);
        assert_eq!(s, status, "{err:?}");
        assert_eq!(body["status"], status.to_string());
        assert_eq!(body["schemas"][0], ERROR_URN);
        assert_eq!(body.get("scimType").and_then(Value::as_str), scim_type);
    }

    #[test]
    fn statuses_and_scim_types() {
        check(
            Error::Scim(ScimType::InvalidFilter, "x".into()),
            400,
            Some("invalidFilter"),
        );
        check(
            Error::Scim(ScimType::InvalidPath, "x".into()),
            400,
            Some("invalidPath"),
        );
        check(
            Error::Scim(ScimType::NoTarget, "x".into()),
            400,
            Some("noTarget"),
        );
        check(
            Error::Scim(ScimType::InvalidValue, "x".into()),
            400,
            Some("invalidValue"),
        );
        check(
            Error::Scim(ScimType::InvalidSyntax, "x".into()),
            400,
            Some("invalidSyntax"),
        );
        check(
            Error::Scim(ScimType::Mutability, "x".into()),
            400,
            Some("mutability"),
        );
        check(
            Error::Scim(ScimType::Uniqueness, "x".into()),
            409,
            Some("uniqueness"),
        );
        check(
            Error::NotFound {
                kind: "User",
                id: "x".into(),
            },
            404,
            None,
        );
        check(
            Error::PreconditionFailed {
                expected: "a".into(),
                current: "b".into(),
            },
            412,
            None,
        );
        check(Error::Unauthorized, 401, None);
        check(Error::Forbidden("x".into()), 403, None);
        check(Error::PayloadTooLarge("x".into()), 413, None);
        check(Error::UnsupportedMediaType("x".into()), 415, None);
        check(Error::NoSuchEndpoint("x".into()), 404, None);
        check(
            Error::MethodNotAllowed {
                method: "POST".into(),
                path: "/x".into(),
            },
            405,
            None,
        );
    }

    #[test]
    fn load_errors_answer_in_the_format_of_their_api() {
        let resp = too_many_requests(3);
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "3");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], crate::http::SCIM_JSON);
        let scim = overloaded("/scim/v2/acme/Users");
        assert_eq!(scim.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(scim.headers()[header::CONTENT_TYPE], crate::http::SCIM_JSON);
        assert_eq!(scim.headers()[header::RETRY_AFTER], "1");
        let api = overloaded("/api/v1/tenants/acme/check");
        assert_eq!(api.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn permission_api_errors_are_distinct() {
        let cases = [
            (Error::TenantNotMapped("t".into()), 409, "unknown_tenant"),
            (Error::UnknownUser("u".into()), 404, "unknown_user"),
            (
                Error::UnknownPermission("p".into()),
                400,
                "unknown_permission",
            ),
        ];
        for (err, status, c) in cases {
            assert_eq!(classify(&err).0.as_u16(), status);
            assert_eq!(code(&err), c);
        }
    }

    #[test]
    fn internal_errors_hide_their_detail() {
        let err = Error::Store(crate::store::Error::UnsupportedUrl(
            "postgres://u:pw@h".into(),
        ));
        let (status, body) = error_body(&err);
        assert_eq!(status, 500);
        assert!(!body["detail"].as_str().unwrap().contains("pw"));
    }
}
