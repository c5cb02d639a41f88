//! Webhook endpoints under `/api/v1/tenants/{tenant}/webhooks` (token
//! scope `admin`): create (the secret is shown once), list, status,
//! rotate the secret, remove, and read the dead letters.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::JsonApiError;
use super::extract::{checked_query, query_number, AdminRequest, ApiJson};
use crate::app::webhooks::NewWebhook;
use crate::app::App;

type Result<T> = std::result::Result<T, JsonApiError>;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/webhooks", get(list).post(create))
        .route("/webhooks/{id}", get(status).delete(remove))
        .route("/webhooks/{id}/rotate", post(rotate))
        .route("/webhooks/{id}/dead_letters", get(dead_letters))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    url: String,
}

fn with_secret(new: NewWebhook) -> Value {
    let mut body = json!(new.webhook);
    // Shown once: the store keeps it to sign, no listing shows it again.
    body["secret"] = json!(new.secret.expose());
    body
}

async fn create(
    State(app): State<App>,
    AdminRequest(auth): AdminRequest,
    ApiJson(req): ApiJson<CreateRequest>,
) -> Result<(StatusCode, Json<Value>)> {
    let new = app.create_webhook(&auth.tenant, &req.url).await?;
    Ok((StatusCode::CREATED, Json(with_secret(new))))
}

async fn list(State(app): State<App>, AdminRequest(auth): AdminRequest) -> Result<Json<Value>> {
    let list = app.list_webhooks(Some(&auth.tenant)).await?;
    let webhooks: Vec<_> = list.into_iter().map(|(_, w)| w).collect();
    Ok(Json(json!({ "webhooks": webhooks })))
}

async fn status(
    State(app): State<App>,
    AdminRequest(auth): AdminRequest,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    Ok(Json(json!(app.webhook_status(&auth.tenant, &id).await?)))
}

async fn rotate(
    State(app): State<App>,
    AdminRequest(auth): AdminRequest,
    Path((_, id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let new = app.rotate_webhook_secret(&auth.tenant, &id).await?;
    Ok(Json(with_secret(new)))
}

async fn remove(
    State(app): State<App>,
    AdminRequest(auth): AdminRequest,
    Path((_, id)): Path<(String, String)>,
) -> Result<StatusCode> {
    app.delete_webhook(&auth.tenant, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn dead_letters(
    State(app): State<App>,
    AdminRequest(auth): AdminRequest,
    Path((_, id)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>> {
    let q = checked_query(raw.as_deref(), &["limit"])?;
    let limit = query_number(&q, "limit")?.unwrap_or(100);
    let letters = app.webhook_dead_letters(&auth.tenant, &id, limit).await?;
    Ok(Json(json!({ "dead_letters": letters })))
}
