//! The change feed under `/api/v1/tenants/{tenant}` (token scope
//! `permissions`): `GET /changes` pages through the tenant's
//! effective-permission events and long-polls for new ones; `GET
//! /permissions` lists every user's, with the cursor to read the feed on
//! from (a new consumer, or one whose cursor is older than retention).

use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::error::JsonApiError;
use super::extract::{checked_query, query_number, PermissionsRequest};
use crate::app::{App, Error, MAX_PAGE, MAX_WAIT};
use crate::domain::ChangeSeq;

type Result<T> = std::result::Result<T, JsonApiError>;

/// A page holds this many events or users unless `limit` says otherwise.
const DEFAULT_LIMIT: i64 = 100;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/changes", get(changes))
        .route("/permissions", get(listing))
}

fn limit(q: &std::collections::HashMap<String, String>) -> Result<i64> {
    let n = query_number(q, "limit")?.unwrap_or(DEFAULT_LIMIT);
    if n > MAX_PAGE {
        return Err(Error::Usage(format!("limit is at most {MAX_PAGE}, got {n}")).into());
    }
    Ok(n)
}

/// `GET .../changes?after=CURSOR&limit=N&wait=30s`: events after the
/// cursor (from the oldest retained without one). With `wait`, an empty
/// page is answered only once an event arrives or the wait is over.
async fn changes(
    State(app): State<App>,
    PermissionsRequest(auth): PermissionsRequest,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>> {
    let q = checked_query(raw.as_deref(), &["after", "limit", "wait"])?;
    let after = q
        .get("after")
        .map(|v| {
            ChangeSeq::parse(v).ok_or_else(|| {
                Error::Usage(format!(
                    "after must be a cursor from this feed (a whole number ≥ 0), got '{v}'"
                ))
            })
        })
        .transpose()?;
    let wait = match q.get("wait") {
        None => Duration::ZERO,
        Some(v) => {
            let d = humantime::parse_duration(v).map_err(|e| {
                Error::Usage(format!(
                    "wait must be a duration such as 30s, got '{v}': {e}"
                ))
            })?;
            if d > MAX_WAIT {
                return Err(Error::Usage(format!(
                    "wait is at most {}s, got '{v}'",
                    MAX_WAIT.as_secs()
                ))
                .into());
            }
            d
        }
    };
    let page = app.changes(&auth.tenant, after, limit(&q)?, wait).await?;
    Ok(Json(json!(page)))
}

/// `GET .../permissions?page=TOKEN&limit=N`: every user's effective
/// permissions by user id, and `resume_after`, the feed cursor to read on
/// from once the last page is read.
async fn listing(
    State(app): State<App>,
    PermissionsRequest(auth): PermissionsRequest,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>> {
    let q = checked_query(raw.as_deref(), &["page", "limit"])?;
    let listing = app
        .permission_listing(&auth.tenant, q.get("page").map(String::as_str), limit(&q)?)
        .await?;
    Ok(Json(json!(listing)))
}
