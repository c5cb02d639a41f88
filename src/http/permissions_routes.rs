//! The permissions API under `/api/v1/tenants/{tenant}` (token scope
//! `permissions`): what a platform asks to enforce access.

use axum::extract::{Path, RawQuery, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use scim::ScimType;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::JsonApiError;
use super::extract::{parse_query, ApiJson, PermissionsRequest};
use std::collections::HashMap;

use crate::app::{App, Consistency, Error, UserRef};

type Result<T> = std::result::Result<T, JsonApiError>;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/users/{id}/permissions", get(user_permissions))
        .route("/check", post(check))
        .route("/check/batch", post(check_batch))
}

/// Most pairs one batch check may carry.
pub const MAX_BATCH: usize = 1000;

/// A revision as a JSON number or a decimal string (the header's form).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Revision {
    Number(i64),
    Text(String),
}

fn consistency(consistency: Option<&str>, at_least: Option<&Revision>) -> Result<Consistency> {
    let rev = match at_least {
        None => None,
        Some(Revision::Number(n)) => Some(*n),
        Some(Revision::Text(t)) => Some(t.trim().parse::<i64>().map_err(|_| {
            Error::Scim(ScimType::InvalidValue, format!(
                "at_least_as_fresh '{t}' is not a revision (a whole number from X-Rolebridge-Revision)"
            ))
        })?),
    };
    if rev.is_some_and(|r| r < 1) {
        return Err(Error::Scim(
            ScimType::InvalidValue,
            "at_least_as_fresh must be a revision of at least 1".into(),
        )
        .into());
    }
    match (consistency, rev) {
        (Some(_), Some(_)) => Err(Error::Scim(ScimType::InvalidValue,
            "give either 'consistency' or 'at_least_as_fresh', not both".into(),
        )
        .into()),
        (None | Some("full"), None) => Ok(Consistency::Full),
        (Some("minimize_latency"), None) => Ok(Consistency::MinimizeLatency),
        (None, Some(r)) => Ok(Consistency::AtLeastAsFresh(r)),
        (Some(other), None) => Err(Error::Scim(ScimType::InvalidValue, format!(
            "unknown consistency '{other}': use 'full' or 'minimize_latency', or give at_least_as_fresh"
        ))
        .into()),
    }
}

/// `GET .../users/{id}/permissions[?by=userName][&consistency=..|&at_least_as_fresh=N]`.
async fn user_permissions(
    State(app): State<App>,
    PermissionsRequest(auth): PermissionsRequest,
    Path((_, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>> {
    let query = parse_query(raw.as_deref().unwrap_or(""));
    for key in query.keys() {
        if !["by", "consistency", "at_least_as_fresh"].contains(&key.as_str()) {
            return Err(Error::Scim(
                ScimType::InvalidValue,
                format!(
                    "unknown query parameter '{key}': use by, consistency or at_least_as_fresh"
                ),
            )
            .into());
        }
    }
    let user = match query.get("by").map(String::as_str) {
        None | Some("id") => UserRef::Id(id),
        Some("userName") => UserRef::UserName(id),
        Some(other) => {
            return Err(Error::Scim(
                ScimType::InvalidValue,
                format!("unknown 'by' value '{other}': use 'id' or 'userName'"),
            )
            .into())
        }
    };
    let at_least = query
        .get("at_least_as_fresh")
        .map(|v| Revision::Text(v.clone()));
    let mode = consistency(
        query.get("consistency").map(String::as_str),
        at_least.as_ref(),
    )?;
    let checked = app.user_permissions(&auth.tenant, &user, mode).await?;
    let mut body = json!(*checked.summary);
    body["revision"] = json!(checked.revision);
    Ok(Json(body))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
    /// SCIM id or userName.
    user: String,
    permission: String,
    #[serde(default)]
    explain: bool,
    /// `full` (the default) or `minimize_latency`.
    #[serde(default)]
    consistency: Option<String>,
    /// A revision a SCIM write returned; never with `consistency`.
    #[serde(default)]
    at_least_as_fresh: Option<Revision>,
}

/// `POST .../check` with `{"user", "permission", "explain"?, "consistency"? |
/// "at_least_as_fresh"?}` → `{"allowed", "revision"}`.
async fn check(
    State(app): State<App>,
    PermissionsRequest(auth): PermissionsRequest,
    ApiJson(req): ApiJson<CheckRequest>,
) -> Result<Json<Value>> {
    let mode = consistency(req.consistency.as_deref(), req.at_least_as_fresh.as_ref())?;
    let permission = app.known_permission(&auth.tenant, &req.permission)?;
    let user = UserRef::IdOrUserName(req.user);
    if !req.explain {
        let checked = app.user_permissions(&auth.tenant, &user, mode).await?;
        let allowed = checked
            .summary
            .permissions
            .iter()
            .any(|p| p == permission.as_str());
        return Ok(Json(
            json!({"allowed": allowed, "revision": checked.revision}),
        ));
    }
    let (result, user_id) = app.permissions(&auth.tenant, &user).await?;
    let explanation = mapping::explain(&result, &user_id, Some(&permission))
        .map_err(|e| Error::UnknownUser(e.to_string()))?;
    let allowed = explanation.permissions.iter().any(|p| p.granted);
    Ok(Json(json!({
        "allowed": allowed,
        "explanation": {"text": explanation.to_string(), "detail": explanation},
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    checks: Vec<BatchItem>,
    #[serde(default)]
    consistency: Option<String>,
    #[serde(default)]
    at_least_as_fresh: Option<Revision>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchItem {
    user: String,
    permission: String,
}

/// `POST .../check/batch` with `{"checks": [{"user", "permission"}, ...],
/// "consistency"? | "at_least_as_fresh"?}` → `{"results": [...]}`, one
/// result per pair in order: `{"allowed", "revision"}`, or `{"error":
/// {"code", "message"}}` for a pair that cannot be answered (unknown user
/// or permission); the others are still answered.
async fn check_batch(
    State(app): State<App>,
    PermissionsRequest(auth): PermissionsRequest,
    ApiJson(req): ApiJson<BatchRequest>,
) -> Result<Json<Value>> {
    if req.checks.is_empty() || req.checks.len() > MAX_BATCH {
        return Err(Error::Scim(
            ScimType::InvalidValue,
            format!(
                "'checks' holds {} pairs: give 1 to {MAX_BATCH}",
                req.checks.len()
            ),
        )
        .into());
    }
    let mode = consistency(req.consistency.as_deref(), req.at_least_as_fresh.as_ref())?;
    let mut answered: HashMap<
        String,
        std::result::Result<(std::sync::Arc<crate::app::Summary>, i64), Value>,
    > = HashMap::new();
    let mut results = Vec::with_capacity(req.checks.len());
    for item in req.checks {
        let permission = match app.known_permission(&auth.tenant, &item.permission) {
            Ok(p) => p,
            Err(e) => {
                results.push(item_error(&e));
                continue;
            }
        };
        if !answered.contains_key(&item.user) {
            let got = app
                .user_permissions(
                    &auth.tenant,
                    &UserRef::IdOrUserName(item.user.clone()),
                    mode,
                )
                .await;
            let entry = match got {
                Ok(c) => Ok((c.summary, c.revision)),
                Err(e @ (Error::UnknownUser(_) | Error::RevisionAhead { .. })) => {
                    Err(item_error(&e))
                }
                Err(e) => return Err(e.into()),
            };
            answered.insert(item.user.clone(), entry);
        }
        results.push(match &answered[&item.user] {
            Ok((summary, revision)) => json!({
                "allowed": summary.permissions.iter().any(|p| p == permission.as_str()),
                "revision": revision,
            }),
            Err(e) => e.clone(),
        });
    }
    Ok(Json(json!({ "results": results })))
}

fn item_error(e: &Error) -> Value {
    json!({"error": {"code": super::error::code(e), "message": e.to_string()}})
}
