//! The permissions API under `/api/v1/tenants/{tenant}` (token scope
//! `permissions`): what a platform asks to enforce access.

use axum::extract::{Path, RawQuery, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::JsonApiError;
use super::extract::{parse_query, PermissionsRequest};
use crate::app::{App, Error, UserRef};

type Result<T> = std::result::Result<T, JsonApiError>;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/users/{id}/permissions", get(user_permissions))
        .route("/check", post(check))
}

/// `GET .../users/{id}/permissions[?by=userName]`.
async fn user_permissions(
    State(app): State<App>,
    PermissionsRequest(auth): PermissionsRequest,
    Path((_, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>> {
    let by = parse_query(raw.as_deref().unwrap_or("")).get("by").cloned();
    let user = match by.as_deref() {
        None | Some("id") => UserRef::Id(id),
        Some("userName") => UserRef::UserName(id),
        Some(other) => {
            return Err(Error::InvalidValue(format!(
                "unknown 'by' value '{other}': use 'id' or 'userName'"
            ))
            .into())
        }
    };
    Ok(Json(json!(
        app.user_permissions(&auth.tenant, &user).await?
    )))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
    /// SCIM id or userName.
    user: String,
    permission: String,
    #[serde(default)]
    explain: bool,
}

/// `POST .../check` with `{"user", "permission", "explain"?}`.
async fn check(
    State(app): State<App>,
    PermissionsRequest(auth): PermissionsRequest,
    body: std::result::Result<Json<CheckRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>> {
    let Json(req) = body.map_err(|e| Error::InvalidSyntax(e.body_text()))?;
    let permission = app.known_permission(&auth.tenant, &req.permission)?;
    let user = UserRef::IdOrUserName(req.user);
    if !req.explain {
        let summary = app.user_permissions(&auth.tenant, &user).await?;
        let allowed = summary.permissions.iter().any(|p| p == permission.as_str());
        return Ok(Json(json!({"allowed": allowed})));
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
