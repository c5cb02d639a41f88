//! Refuses request input the service cannot hold or was not built to read:
//! a NUL character anywhere (path and query here, before any handler; JSON
//! bodies where the extractors parse them, through
//! [`crate::domain::nul_in_json`]), and a
//! SCIM body declared as something other than JSON.
//!
//! NUL is refused at the edge rather than per attribute because PostgreSQL
//! can store it in no `TEXT` column and in no `jsonb` value: a NUL that
//! reached the store made every filter over the tenant's documents fail.
//! SQLite would store it, so refusing it here is also what makes both
//! backends answer the same.

use axum::extract::Request;
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::Response;
use scim::ScimType;

use super::error;
use crate::app::Error;

/// Middleware: refuses NUL in the path and query, and a SCIM body declared
/// as something other than JSON, from the headers alone. Bodies are checked
/// for NUL where they are read ([`super::extract::ScimBody`],
/// [`super::extract::ApiJson`], with [`crate::domain::nul_in_json`]):
/// buffering them here, before the in-flight
/// cap and the handlers, would let slow bodies pile up outside the cap.
pub async fn screen(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if let Some(detail) = nul_in_path(&path) {
        return error::for_path(&path, Error::Scim(ScimType::InvalidValue, detail));
    }
    if let Some(detail) = req.uri().query().and_then(nul_in_query) {
        return error::for_path(&path, Error::Scim(ScimType::InvalidValue, detail));
    }
    if has_body(&req) && path.starts_with("/scim/") {
        if let Some(declared) = unsupported_content_type(&req) {
            return error::for_path(
                &path,
                Error::UnsupportedMediaType(format!(
                    "Content-Type '{declared}' is not accepted: send application/scim+json or application/json"
                )),
            );
        }
    }
    next.run(req).await
}

/// Whether a request carries a body a handler may read: announced
/// ([`super::unread_body::has_body`]) on a method whose handlers read one.
fn has_body(req: &Request) -> bool {
    // A body on these is meaningless to every handler; they never read it.
    !matches!(*req.method(), Method::GET | Method::HEAD | Method::DELETE)
        && super::unread_body::has_body(req)
}

/// The declared media type when it is neither `application/scim+json` nor
/// `application/json` (parameters such as `charset` allowed). A body sent
/// without a `Content-Type` is read as JSON.
fn unsupported_content_type(req: &Request) -> Option<String> {
    let value = req.headers().get(header::CONTENT_TYPE)?;
    let text = String::from_utf8_lossy(value.as_bytes()).to_string();
    let essence = text.split(';').next().unwrap_or("").trim();
    let ok = essence.eq_ignore_ascii_case(super::SCIM_JSON)
        || essence.eq_ignore_ascii_case("application/json");
    (!ok).then_some(text)
}

fn nul_in_path(path: &str) -> Option<String> {
    let decoded = percent_decode(path);
    decoded
        .contains(&0)
        .then(|| "the request path contains a NUL character (%00)".to_string())
}

fn nul_in_query(query: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes()).find_map(|(k, v)| {
        (k.contains('\0') || v.contains('\0')).then(|| {
            format!(
                "query parameter '{}' contains a NUL character",
                k.replace('\0', "\\u0000")
            )
        })
    })
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b.get(i),
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (Some(b'%'), Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (Some(c), _, _) => {
                out.push(*c);
                i += 1;
            }
            (None, _, _) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::nul_in_json;
    use serde_json::Value;

    #[test]
    fn names_where_the_nul_is() {
        let b = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert_eq!(nul_in_json(&b(r#"{"userName":"a"}"#)), None);
        // An escaped backslash followed by "u0000" is no NUL.
        assert_eq!(nul_in_json(&b(r#"{"title":"\\u0000"}"#)), None);
        assert_eq!(
            nul_in_json(&b(r#"{"userName":"a\u0000b"}"#)).as_deref(),
            Some("attribute 'userName' contains a NUL character, which cannot be stored")
        );
        assert_eq!(
            nul_in_json(&b(r#"{"emails":[{"value":"x"},{"value":"\u0000"}]}"#)).as_deref(),
            Some("attribute 'emails[1].value' contains a NUL character, which cannot be stored")
        );
        assert_eq!(
            nul_in_json(&b(
                r#"{"Operations":[{"op":"replace","path":"title","value":"x\u0000y"}]}"#
            ))
            .as_deref(),
            Some("attribute 'Operations[0].value' (path 'title') contains a NUL character, which cannot be stored")
        );
        assert!(nul_in_json(&b(r#"{"a\u0000":1}"#))
            .unwrap()
            .contains("a\\u0000"));
        assert!(nul_in_path("/scim/v2/t/Users/a%00b").is_some());
        assert!(nul_in_path("/scim/v2/t/Users/a%2500b").is_none());
        assert!(nul_in_query("filter=title%20eq%20%22a%00%22")
            .unwrap()
            .contains("'filter'"));
        assert!(nul_in_query("filter=title%20eq%20%22a%22").is_none());
    }
}
