//! The permissions API under `/api/v1/tenants/{tenant}` (token scope
//! `permissions`): what a platform asks to enforce access.

use axum::extract::{Path, RawQuery, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use mapping::{EffectivePermissions, Target};
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
    let (result, user_id) = app.permissions(&auth.tenant, &user).await?;
    let eff = result
        .user(&user_id)
        .ok_or_else(|| Error::UnknownUser(user_id.clone()))?;
    Ok(Json(summary(eff)))
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
    // A SCIM id first, then a userName: ids are UUIDs, so the two never clash.
    let (result, user_id) = match app
        .permissions(&auth.tenant, &UserRef::Id(req.user.clone()))
        .await
    {
        Err(Error::UnknownUser(_)) => {
            app.permissions(&auth.tenant, &UserRef::UserName(req.user.clone()))
                .await?
        }
        other => other?,
    };
    let permission = app.known_permission(&result, &req.permission)?;
    let eff = result
        .user(&user_id)
        .ok_or_else(|| Error::UnknownUser(user_id.clone()))?;
    let allowed = eff.permissions.contains(&permission);
    let mut out = json!({"allowed": allowed});
    if req.explain {
        let explanation = mapping::explain(&result, &user_id, Some(&permission))
            .map_err(|e| Error::UnknownUser(e.to_string()))?;
        out["explanation"] = json!({
            "text": explanation.to_string(),
            "detail": explanation,
        });
    }
    Ok(Json(out))
}

/// `{"user", "roles", "profiles", "permissions"}` with sorted ids.
fn summary(eff: &EffectivePermissions) -> Value {
    let mut roles: Vec<String> = Vec::new();
    let mut profiles: Vec<String> = Vec::new();
    for a in &eff.assignments {
        match &a.target {
            Target::Role(r) | Target::CustomRole(r) => roles.push(r.to_string()),
            Target::Profile(p) => {
                profiles.push(p.to_string());
                roles.push(a.base_role.to_string());
            }
        }
    }
    roles.sort();
    roles.dedup();
    profiles.sort();
    json!({
        "user": {"id": eff.user_id, "userName": eff.user_name, "active": eff.active},
        "roles": roles,
        "profiles": profiles,
        "permissions": eff.permissions.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
    })
}
