//! The admin API under `/api/v1/tenants/{tenant}` (token scope `admin`): a
//! tenant's own mapping file (read, plan, guarded apply, history, diff,
//! rollback, audit) and its API tokens. An admin token changes its own
//! tenant's file only; catalogs are the operator's (`mappings apply`).

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::JsonApiError;
use super::extract::{checked_query as query, query_number as number, AdminRequest, ApiJson};
use crate::app::mappings::{tenant_file, Actor, ChangeScope, MappingChange, MappingFiles};
use crate::app::{App, Authenticated, Error, TokenOptions, UserRef};
use crate::domain::{MappingVersion, Scope, Timestamp};

type Result<T> = std::result::Result<T, JsonApiError>;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/mappings", get(current).post(apply))
        .route("/mappings/plan", post(plan))
        .route("/mappings/versions", get(history))
        .route("/mappings/versions/{version}", get(version))
        .route("/mappings/diff", get(diff))
        .route("/mappings/rollback", post(rollback))
        .route("/mappings/audit", get(audit))
        .route("/explain", get(explain))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{id}", delete(revoke_token))
}

fn scope(auth: &Authenticated) -> ChangeScope {
    ChangeScope::Tenant(mapping::TenantName::new(auth.tenant.name.as_str()))
}

fn actor(auth: &Authenticated) -> Actor {
    Actor {
        id: auth.token_id.clone(),
        label: auth.token_label.clone(),
    }
}

/// `GET .../mappings`: the tenant's file in force and its version.
async fn current(State(app): State<App>, AdminRequest(auth): AdminRequest) -> Result<Json<Value>> {
    let file = tenant_file(auth.tenant.name.as_str());
    let loaded = app.mappings().current();
    Ok(Json(json!({
        "version": loaded.version,
        "file": file,
        "text": loaded.files.get(&file),
    })))
}

/// A proposed edit of the tenant's file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Edit {
    /// The version the edit was made against (from `GET .../mappings`).
    base: Option<MappingVersion>,
    /// The whole new text of `tenants/{tenant}.yaml`.
    text: String,
    /// The plan's hash, when the guard asks for it.
    confirm: Option<String>,
}

fn change_of(auth: &Authenticated, edit: &Edit) -> MappingChange {
    MappingChange {
        base: edit.base,
        scope: scope(auth),
        files: MappingFiles::from([(tenant_file(auth.tenant.name.as_str()), edit.text.clone())]),
    }
}

/// `POST .../mappings/plan`.
async fn plan(
    State(app): State<App>,
    AdminRequest(auth): AdminRequest,
    ApiJson(edit): ApiJson<Edit>,
) -> Result<Json<Value>> {
    let plan = app.plan_mappings(&change_of(&auth, &edit)).await?;
    Ok(Json(json!(plan)))
}

/// `POST .../mappings`: the guarded apply.
async fn apply(
    State(app): State<App>,
    AdminRequest(auth): AdminRequest,
    ApiJson(edit): ApiJson<Edit>,
) -> Result<(StatusCode, Json<Value>)> {
    let applied = app
        .apply_mappings(
            &change_of(&auth, &edit),
            edit.confirm.as_deref(),
            &actor(&auth),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(json!(applied))))
}

/// `GET .../mappings/versions[?limit=N]`: versions that changed this
/// tenant's file, newest first.
async fn history(
    State(app): State<App>,
    AdminRequest(auth): AdminRequest,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>> {
    let q = query(raw.as_deref(), &["limit"])?;
    let limit = number(&q, "limit")?.unwrap_or(50).min(1000);
    let versions = app
        .tenant_mapping_history(auth.tenant.name.as_str(), limit)
        .await?;
    Ok(Json(json!({ "versions": versions })))
}

/// `GET .../mappings/versions/{v}`: the tenant's file at that version.
async fn version(
    State(app): State<App>,
    AdminRequest(auth): AdminRequest,
    Path((_, v)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let v = v
        .trim_start_matches('v')
        .parse::<i64>()
        .map_err(|_| Error::Usage(format!("'{v}' is not a version number")))?;
    let stored = app
        .mapping_version(MappingVersion(v), &scope(&auth))
        .await?;
    let file = tenant_file(auth.tenant.name.as_str());
    Ok(Json(json!({
        "version": stored.version,
        "created": stored.created,
        "origin": stored.origin,
        "actor": stored.actor,
        "file": file,
        "text": stored.files.get(&file),
    })))
}

/// `GET .../mappings/diff?from=V1&to=V2`.
async fn diff(
    State(app): State<App>,
    AdminRequest(auth): AdminRequest,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>> {
    let q = query(raw.as_deref(), &["from", "to"])?;
    let (Some(from), Some(to)) = (number(&q, "from")?, number(&q, "to")?) else {
        return Err(Error::Usage("give both 'from' and 'to' versions".into()).into());
    };
    let d = app
        .mapping_diff(MappingVersion(from), MappingVersion(to), &scope(&auth))
        .await?;
    Ok(Json(json!(d)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rollback {
    /// The version whose file to restore.
    version: MappingVersion,
    base: Option<MappingVersion>,
    confirm: Option<String>,
    /// Only plan it.
    #[serde(default)]
    plan_only: bool,
}

/// `POST .../mappings/rollback`: a new version with the tenant's file as
/// it was at `version`, planned and guarded like any edit.
async fn rollback(
    State(app): State<App>,
    AdminRequest(auth): AdminRequest,
    ApiJson(r): ApiJson<Rollback>,
) -> Result<(StatusCode, Json<Value>)> {
    if r.plan_only {
        let change = app.rollback_change(r.version, r.base, scope(&auth)).await?;
        let plan = app.plan_mappings(&change).await?;
        return Ok((StatusCode::OK, Json(json!(plan))));
    }
    let applied = app
        .rollback_mappings(
            r.version,
            r.base,
            scope(&auth),
            r.confirm.as_deref(),
            &actor(&auth),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(json!(applied))))
}

/// `GET .../mappings/audit[?limit=N]`: this tenant's mapping changes,
/// applied and refused.
async fn audit(
    State(app): State<App>,
    AdminRequest(auth): AdminRequest,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>> {
    let q = query(raw.as_deref(), &["limit"])?;
    let limit = number(&q, "limit")?.unwrap_or(100).min(1000);
    let records = app
        .mapping_audit(Some(auth.tenant.name.as_str()), limit)
        .await?;
    Ok(Json(json!({ "records": records })))
}

/// `GET .../explain?user=U[&permission=P]`: why a user has what it has
/// (group, nested path, rule at file:line, role or profile, permission),
/// and why a permission is missing. For the admin page's user view.
async fn explain(
    State(app): State<App>,
    AdminRequest(auth): AdminRequest,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>> {
    let q = query(raw.as_deref(), &["user", "permission"])?;
    let Some(user) = q.get("user").filter(|u| !u.is_empty()) else {
        return Err(Error::Usage("give 'user': a SCIM id or a userName".into()).into());
    };
    let permission = q
        .get("permission")
        .filter(|p| !p.is_empty())
        .map(|p| app.known_permission(&auth.tenant, p))
        .transpose()?;
    let (result, user_id) = app
        .permissions(&auth.tenant, &UserRef::IdOrUserName(user.clone()))
        .await?;
    let explanation = mapping::explain(&result, &user_id, permission.as_ref())
        .map_err(|e| Error::UnknownUser(e.to_string()))?;
    Ok(Json(
        json!({"text": explanation.to_string(), "detail": explanation}),
    ))
}

/// `GET .../tokens`: the tenant's tokens, never their secrets.
async fn list_tokens(
    State(app): State<App>,
    AdminRequest(auth): AdminRequest,
) -> Result<Json<Value>> {
    let tokens = app.list_tokens(Some(&auth.tenant.name)).await?;
    let tokens: Vec<Value> = tokens
        .into_iter()
        .map(|t| {
            json!({
                "id": t.id,
                "scope": t.scope.as_str(),
                "label": t.label,
                "created": t.created,
                "expires": t.expires,
                "last_used": t.last_used,
                "revoked": t.revoked,
            })
        })
        .collect();
    Ok(Json(json!({ "tokens": tokens })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTokenBody {
    scope: String,
    label: Option<String>,
    /// RFC 3339 UTC, e.g. 2027-01-01T00:00:00.000000Z.
    expires: Option<String>,
}

/// `POST .../tokens`: a new token, shown once.
async fn create_token(
    State(app): State<App>,
    AdminRequest(auth): AdminRequest,
    ApiJson(body): ApiJson<NewTokenBody>,
) -> Result<(StatusCode, Json<Value>)> {
    let scope = Scope::parse(&body.scope).ok_or_else(|| {
        Error::Usage(format!(
            "unknown scope '{}': use scim, permissions or admin",
            body.scope
        ))
    })?;
    let expires = body
        .expires
        .as_deref()
        .map(|e| {
            time::OffsetDateTime::parse(e, &time::format_description::well_known::Rfc3339)
                .ok()
                .and_then(Timestamp::new)
                .ok_or_else(|| Error::Usage(format!("expires '{e}' is not an RFC 3339 time")))
        })
        .transpose()?;
    let t = app
        .create_token_with(
            &auth.tenant.name,
            scope,
            TokenOptions {
                label: body.label,
                expires,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": t.id, "token": t.token.expose(), "scope": scope.as_str()})),
    ))
}

/// `DELETE .../tokens/{id}`.
async fn revoke_token(
    State(app): State<App>,
    AdminRequest(auth): AdminRequest,
    Path((_, id)): Path<(String, String)>,
) -> Result<StatusCode> {
    if app.revoke_tenant_token(&auth.tenant, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Error::NotFound { kind: "token", id }.into())
    }
}
