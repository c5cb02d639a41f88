//! The one place where application errors become HTTP statuses and SCIM
//! error bodies (RFC 7644 §3.12). Client mistakes are not logged; internal
//! errors get a generic body and the real error rides along as a response
//! extension for the logging middleware, so this conversion has no side
//! effects.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use scim::schema::ERROR_URN;
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
        InvalidSyntax(_) => (StatusCode::BAD_REQUEST, Some("invalidSyntax")),
        InvalidValue(_) | Usage(_) => (StatusCode::BAD_REQUEST, Some("invalidValue")),
        InvalidFilter(_) => (StatusCode::BAD_REQUEST, Some("invalidFilter")),
        InvalidPath(_) => (StatusCode::BAD_REQUEST, Some("invalidPath")),
        NoTarget(_) => (StatusCode::BAD_REQUEST, Some("noTarget")),
        Mutability(_) => (StatusCode::BAD_REQUEST, Some("mutability")),
        TooMany(_) => (StatusCode::BAD_REQUEST, Some("tooMany")),
        Uniqueness(_) => (StatusCode::CONFLICT, Some("uniqueness")),
        Conflict => (StatusCode::CONFLICT, None),
        PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, None),
        PreconditionFailed { .. } => (StatusCode::PRECONDITION_FAILED, None),
        Unauthorized => (StatusCode::UNAUTHORIZED, None),
        Forbidden(_) => (StatusCode::FORBIDDEN, None),
        TenantNotMapped(_) => (StatusCode::CONFLICT, None),
        UnknownUser(_) => (StatusCode::NOT_FOUND, None),
        UnknownPermission(_) => (StatusCode::BAD_REQUEST, None),
        Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, None),
    }
}

/// The SCIM error body of an error, with its status; used by single
/// requests and by each failed operation of a bulk request.
pub fn error_body(err: &Error) -> (u16, Value) {
    let (status, scim_type) = classify(err);
    let detail = if status.is_server_error() {
        "internal error; see the server log".to_string()
    } else {
        err.to_string()
    };
    (status.as_u16(), body(status, scim_type, &detail))
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

/// A SCIM error response that does not come from the application (unknown
/// route, unsupported method, oversized body).
pub fn response(status: StatusCode, scim_type: Option<&str>, detail: &str) -> Response {
    super::scim_json(status, &body(status, scim_type, detail))
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
        Store(_) => "internal",
        PayloadTooLarge(_) => "payload_too_large",
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
        let body = json!({"error": {"status": status.as_u16(), "code": code(&self.0), "message": message}});
        let mut resp = (status, axum::Json(body)).into_response();
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
        check(Error::InvalidFilter("x".into()), 400, Some("invalidFilter"));
        check(Error::InvalidPath("x".into()), 400, Some("invalidPath"));
        check(Error::NoTarget("x".into()), 400, Some("noTarget"));
        check(Error::InvalidValue("x".into()), 400, Some("invalidValue"));
        check(Error::InvalidSyntax("x".into()), 400, Some("invalidSyntax"));
        check(Error::Mutability("x".into()), 400, Some("mutability"));
        check(Error::Uniqueness("x".into()), 409, Some("uniqueness"));
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
