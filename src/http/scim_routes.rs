//! SCIM endpoints under `/scim/v2/{tenant}`: each handler extracts, makes one
//! `app` call and converts the result.

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use scim::schema::{self, ResourceKind, LIST_RESPONSE_URN, SEARCH_REQUEST_URN};
use scim::ScimType;
use serde_json::{json, Value};

use super::error::{self, ApiError};
use super::extract::{attr_list, if_match, parse_query, ScimBody, ScimRequest};
use super::scim_json;
use crate::app::{App, Error, ListQuery, Outcome, RequestContext, BULK_LIMITS};
use crate::domain::ResourceId;

type Result<T> = std::result::Result<T, ApiError>;

pub fn routes() -> Router<App> {
    Router::new()
        .route("/ServiceProviderConfig", get(service_provider_config))
        .route("/ResourceTypes", get(resource_types))
        .route("/ResourceTypes/{id}", get(resource_type))
        .route("/Schemas", get(schemas))
        .route("/Schemas/{id}", get(schema_by_id))
        .route("/Users", get(list_users).post(create_user))
        // Microsoft's SCIM test collection (and clients that join a base URL
        // and a path naively) send `Users/?filter=...`: same endpoint.
        .route("/Users/", get(list_users).post(create_user))
        .route("/Users/.search", post(search_users))
        .route(
            "/Users/{id}",
            get(get_user)
                .put(put_user)
                .patch(patch_user)
                .delete(delete_user),
        )
        .route("/Groups", get(list_groups).post(create_group))
        .route("/Groups/", get(list_groups).post(create_group))
        .route("/Groups/.search", post(search_groups))
        .route(
            "/Groups/{id}",
            get(get_group)
                .put(put_group)
                .patch(patch_group)
                .delete(delete_group),
        )
        .route("/Bulk", post(bulk))
        .route("/.search", post(search_all))
}

/// The header that carries the tenant revision a write produced.
pub const REVISION_HEADER: &str = "x-rolebridge-revision";

/// Adds `X-Rolebridge-Revision` when the request wrote.
fn with_revision(mut resp: Response, ctx: &RequestContext) -> Response {
    if let Some(rev) = ctx.revision() {
        if let Ok(v) = HeaderValue::from_str(&rev.to_string()) {
            resp.headers_mut().insert(REVISION_HEADER, v);
        }
    }
    resp
}

fn resource(status: StatusCode, outcome: Outcome) -> Response {
    let mut resp = scim_json(status, &outcome.body);
    if let Ok(v) = HeaderValue::from_str(&outcome.etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    if status == StatusCode::CREATED {
        if let Some(loc) = outcome
            .body
            .pointer("/meta/location")
            .and_then(Value::as_str)
            .and_then(|l| HeaderValue::from_str(l).ok())
        {
            resp.headers_mut().insert(header::LOCATION, loc);
        }
    }
    resp
}

macro_rules! resource_handlers {
    ($kind:expr, $list:ident, $search:ident, $create:ident, $get:ident, $put:ident, $patch:ident, $delete:ident) => {
        async fn $list(
            State(app): State<App>,
            ScimRequest(ctx): ScimRequest,
            RawQuery(raw): RawQuery,
        ) -> Result<Response> {
            let q = parse_query(raw.as_deref().unwrap_or(""));
            let query = ListQuery {
                filter: q.get("filter").cloned(),
                sort_by: q.get("sortBy").cloned(),
                sort_order: q.get("sortOrder").cloned(),
                start_index: int_param(&q, "startIndex")?,
                count: int_param(&q, "count")?,
            };
            list_response(&app, &ctx, $kind, &query).await
        }

        async fn $search(
            State(app): State<App>,
            ScimRequest(mut ctx): ScimRequest,
            ScimBody(body): ScimBody,
        ) -> Result<Response> {
            let query = search_query(&body, &mut ctx)?;
            list_response(&app, &ctx, $kind, &query).await
        }

        async fn $create(
            State(app): State<App>,
            ScimRequest(ctx): ScimRequest,
            ScimBody(body): ScimBody,
        ) -> Result<Response> {
            let out = app.create(&ctx, $kind, body).await?;
            Ok(with_revision(resource(StatusCode::CREATED, out), &ctx))
        }

        async fn $get(
            State(app): State<App>,
            ScimRequest(ctx): ScimRequest,
            Path((_, id)): Path<(String, String)>,
            headers: HeaderMap,
        ) -> Result<Response> {
            let out = app.get(&ctx, $kind, &ResourceId::from_client(&id)).await?;
            let none_match = headers
                .get(header::IF_NONE_MATCH)
                .and_then(|v| v.to_str().ok());
            if none_match.is_some_and(|tags| {
                tags.split(',')
                    .any(|t| t.trim() == out.etag || t.trim() == "*")
            }) {
                let mut resp = StatusCode::NOT_MODIFIED.into_response();
                if let Ok(v) = HeaderValue::from_str(&out.etag) {
                    resp.headers_mut().insert(header::ETAG, v);
                }
                return Ok(resp);
            }
            Ok(resource(StatusCode::OK, out))
        }

        async fn $put(
            State(app): State<App>,
            ScimRequest(ctx): ScimRequest,
            Path((_, id)): Path<(String, String)>,
            headers: HeaderMap,
            ScimBody(body): ScimBody,
        ) -> Result<Response> {
            let out = app
                .replace(
                    &ctx,
                    $kind,
                    &ResourceId::from_client(&id),
                    body,
                    if_match(&headers).as_deref(),
                )
                .await?;
            Ok(with_revision(resource(StatusCode::OK, out), &ctx))
        }

        async fn $patch(
            State(app): State<App>,
            ScimRequest(ctx): ScimRequest,
            Path((_, id)): Path<(String, String)>,
            headers: HeaderMap,
            ScimBody(body): ScimBody,
        ) -> Result<Response> {
            // RFC 7644 §3.5.2: the server may answer 204 when the client
            // asked for no attributes. Groups do, so a PATCH of a
            // 100,000-member group never serialises its membership.
            let render = $kind == ResourceKind::User || !ctx.attributes.is_empty();
            let out = app
                .patch(
                    &ctx,
                    $kind,
                    &ResourceId::from_client(&id),
                    body,
                    if_match(&headers).as_deref(),
                    render,
                )
                .await?;
            let resp = match out {
                Some(out) => resource(StatusCode::OK, out),
                None => StatusCode::NO_CONTENT.into_response(),
            };
            Ok(with_revision(resp, &ctx))
        }

        async fn $delete(
            State(app): State<App>,
            ScimRequest(ctx): ScimRequest,
            Path((_, id)): Path<(String, String)>,
            headers: HeaderMap,
        ) -> Result<Response> {
            app.delete(
                &ctx,
                $kind,
                &ResourceId::from_client(&id),
                if_match(&headers).as_deref(),
            )
            .await?;
            Ok(with_revision(StatusCode::NO_CONTENT.into_response(), &ctx))
        }
    };
}

resource_handlers!(
    ResourceKind::User,
    list_users,
    search_users,
    create_user,
    get_user,
    put_user,
    patch_user,
    delete_user
);
resource_handlers!(
    ResourceKind::Group,
    list_groups,
    search_groups,
    create_group,
    get_group,
    put_group,
    patch_group,
    delete_group
);

async fn list_response(
    app: &App,
    ctx: &crate::app::RequestContext,
    kind: ResourceKind,
    query: &ListQuery,
) -> Result<Response> {
    Ok(list_body(app.list(ctx, kind, query).await?))
}

/// A ListResponse (RFC 7644 §3.4.2) with integer counters.
fn list_body(page: crate::app::ListResult) -> Response {
    scim_json(
        StatusCode::OK,
        &json!({
            "schemas": [LIST_RESPONSE_URN],
            "totalResults": page.total,
            "itemsPerPage": page.resources.len(),
            "startIndex": page.start_index,
            "Resources": page.resources,
        }),
    )
}

/// An integer query parameter; anything else is 400 `invalidValue`.
fn int_param(q: &std::collections::HashMap<String, String>, name: &str) -> Result<Option<i64>> {
    match q.get(name) {
        None => Ok(None),
        Some(v) => v.trim().parse::<i64>().map(Some).map_err(|_| {
            ApiError(Error::Scim(
                ScimType::InvalidValue,
                format!("'{name}' must be an integer, not '{v}'"),
            ))
        }),
    }
}

/// The list parameters of a `POST /.search` body (RFC 7644 §3.4.3).
fn search_query(body: &Value, ctx: &mut crate::app::RequestContext) -> Result<ListQuery> {
    let has_schema = body
        .get("schemas")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().any(|v| v.as_str() == Some(SEARCH_REQUEST_URN)));
    if !has_schema {
        return Err(ApiError(Error::Scim(
            ScimType::InvalidSyntax,
            format!("'schemas' must contain '{SEARCH_REQUEST_URN}'"),
        )));
    }
    let text = |k: &str| -> Result<Option<String>> {
        match body.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError(Error::Scim(
                ScimType::InvalidValue,
                format!("'{k}' must be a string"),
            ))),
        }
    };
    let int = |k: &str| -> Result<Option<i64>> {
        match body.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| {
                ApiError(Error::Scim(
                    ScimType::InvalidValue,
                    format!("'{k}' must be an integer"),
                ))
            }),
        }
    };
    let list = |k: &str| -> Result<Option<String>> {
        match body.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => Ok(Some(
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
            )),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ApiError(Error::Scim(
                ScimType::InvalidValue,
                format!("'{k}' must be an array of strings"),
            ))),
        }
    };
    if let Some(a) = list("attributes")? {
        ctx.attributes = attr_list(Some(&a));
    }
    if let Some(a) = list("excludedAttributes")? {
        ctx.excluded = attr_list(Some(&a));
    }
    Ok(ListQuery {
        filter: text("filter")?,
        sort_by: text("sortBy")?,
        sort_order: text("sortOrder")?,
        start_index: int("startIndex")?,
        count: int("count")?,
    })
}

async fn search_all(
    State(app): State<App>,
    ScimRequest(mut ctx): ScimRequest,
    ScimBody(body): ScimBody,
) -> Result<Response> {
    let query = search_query(&body, &mut ctx)?;
    Ok(list_body(app.search_all(&ctx, &query).await?))
}

async fn bulk(
    State(app): State<App>,
    ScimRequest(ctx): ScimRequest,
    ScimBody(body): ScimBody,
) -> Result<Response> {
    let ops = app.bulk(&ctx, body).await?;
    let operations: Vec<Value> = ops.into_iter().map(error::bulk_operation).collect();
    let out = json!({"schemas": [scim::schema::BULK_RESPONSE_URN], "Operations": operations});
    Ok(with_revision(scim_json(StatusCode::OK, &out), &ctx))
}

async fn service_provider_config(ScimRequest(ctx): ScimRequest) -> Response {
    scim_json(
        StatusCode::OK,
        &json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
            "documentationUri": "https://github.com/rolebridge/rolebridge/blob/main/README.md",
            "patch": {"supported": true},
            "bulk": {
                "supported": true,
                "maxOperations": BULK_LIMITS.max_operations,
                "maxPayloadSize": BULK_LIMITS.max_payload_size,
            },
            "filter": {"supported": true, "maxResults": crate::app::MAX_COUNT},
            "changePassword": {"supported": false},
            "sort": {"supported": true},
            "etag": {"supported": true},
            "authenticationSchemes": [{
                "type": "oauthbearertoken",
                "name": "Bearer token",
                "description": "A per-tenant API token created with `rolebridge token create --scope scim`.",
                "primary": true,
            }],
            "meta": {
                "resourceType": "ServiceProviderConfig",
                "location": format!("{}/ServiceProviderConfig", ctx.base_url),
            }
        }),
    )
}

async fn resource_types(ScimRequest(ctx): ScimRequest) -> Response {
    let items: Vec<Value> = [ResourceKind::User, ResourceKind::Group]
        .iter()
        .map(|k| k.resource_type_json(&ctx.base_url))
        .collect();
    list_of(items)
}

async fn resource_type(
    ScimRequest(ctx): ScimRequest,
    Path((_, id)): Path<(String, String)>,
) -> Response {
    match [ResourceKind::User, ResourceKind::Group]
        .into_iter()
        .find(|k| k.name() == id)
    {
        Some(k) => scim_json(StatusCode::OK, &k.resource_type_json(&ctx.base_url)),
        None => error::response(
            StatusCode::NOT_FOUND,
            None,
            &format!("resource type '{id}' not found"),
        ),
    }
}

async fn schemas(ScimRequest(ctx): ScimRequest) -> Response {
    list_of(
        schema::all_schemas()
            .iter()
            .map(|s| s.to_json(&ctx.base_url))
            .collect(),
    )
}

async fn schema_by_id(
    ScimRequest(ctx): ScimRequest,
    Path((_, id)): Path<(String, String)>,
) -> Response {
    match schema::all_schemas().into_iter().find(|s| s.id == id) {
        Some(s) => scim_json(StatusCode::OK, &s.to_json(&ctx.base_url)),
        None => error::response(
            StatusCode::NOT_FOUND,
            None,
            &format!("schema '{id}' not found"),
        ),
    }
}

fn list_of(items: Vec<Value>) -> Response {
    scim_json(
        StatusCode::OK,
        &json!({
            "schemas": [LIST_RESPONSE_URN],
            "totalResults": items.len(),
            "itemsPerPage": items.len(),
            "startIndex": 1,
            "Resources": items,
        }),
    )
}
