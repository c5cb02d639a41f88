//! Keeps HTTP/1.1 keep-alive honest when a response is sent before its
//! request body was read: a 405 from a discovery endpoint, a 401 or 429
//! decided from the headers, a 413, a 408.
//!
//! hyper drains such a body only if it already sits in its read buffer;
//! otherwise it closes the connection, sometimes after it has written a
//! response head that promised keep-alive. A client that reuses the
//! connection then sees "server disconnected without sending a response".
//! So the body is read to its end here, bounded by [`MAX_BODY`] and
//! [`DRAIN_TIMEOUT`], before the response leaves; when that is not possible
//! the response says `Connection: close`, so the client knows not to reuse
//! the connection.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};

use super::MAX_BODY;

/// How long an unread body may take to arrive before the connection is
/// given up instead.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The request body, shared between the handler (which may read it) and
/// this layer (which reads what the handler left).
type Shared = Arc<Mutex<Option<Body>>>;

struct SharedBody(Shared);

impl HttpBody for SharedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        let slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref().map(HttpBody::size_hint).unwrap_or_default()
    }
}

/// Whether the request announces a body (`Content-Length` above zero, or
/// any `Transfer-Encoding`).
pub(super) fn has_body(req: &Request) -> bool {
    let headers = req.headers();
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// Middleware: after the handler answered, reads the rest of an unread
/// request body (at most [`MAX_BODY`] bytes, within [`DRAIN_TIMEOUT`]), or
/// marks the response `Connection: close` when it cannot.
pub async fn drain(req: Request, next: Next) -> Response {
    if !has_body(&req) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let shared: Shared = Arc::new(Mutex::new(Some(body)));
    let req = Request::from_parts(parts, Body::new(SharedBody(shared.clone())));
    let mut resp = next.run(req).await;
    let rest = shared.lock().unwrap_or_else(PoisonError::into_inner).take();
    let Some(rest) = rest else {
        return resp;
    };
    if rest.is_end_stream() {
        return resp;
    }
    // A declared length past the bound cannot be drained: do not wait.
    if rest.size_hint().lower() > MAX_BODY as u64 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, axum::body::to_bytes(rest, MAX_BODY)).await;
    if !matches!(drained, Ok(Ok(_))) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}
