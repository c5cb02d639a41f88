//! SCIM Users and Groups: create, read, replace, patch, delete and list, each
//! in one transaction.

use scim::ScimType;
use std::collections::HashMap;

use scim::ast::AttrPath;
use scim::patch::{MemberOp, MemberRef};
use scim::schema::ResourceKind;
use serde_json::{json, Map, Value};

use super::group_commit::Undo;
use super::{App, Error, Result};
use crate::domain::{ResourceId, TenantId};
use crate::store::{MemberRow, StoredResource, WriteTx};

/// The page size when a client gives no `count`, and the largest one served
/// (advertised as `filter.maxResults`).
pub const DEFAULT_COUNT: i64 = 100;
pub const MAX_COUNT: i64 = 1000;

/// What every resource operation needs to know about its request.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub tenant: TenantId,
    /// `http://host/scim/v2/{tenant}`, for `meta.location` and `$ref`.
    pub base_url: String,
    /// `attributes` requested (RFC 7644 §3.9); empty means the defaults.
    pub attributes: Vec<AttrPath>,
    /// `excludedAttributes` requested.
    pub excluded: Vec<AttrPath>,
    /// The highest tenant revision this request's writes produced (0: none
    /// yet): the `X-Rolebridge-Revision` a client passes to a check as
    /// `at_least_as_fresh`. Shared, so every operation of a bulk request
    /// adds to the one response.
    pub written: std::sync::Arc<std::sync::atomic::AtomicI64>,
    /// What the change feed names as the cause of this request's changes.
    pub cause: crate::domain::ChangeCause,
}

impl RequestContext {
    /// The revision the request's writes produced, if it wrote.
    pub fn revision(&self) -> Option<i64> {
        let r = self.written.load(std::sync::atomic::Ordering::Acquire);
        (r > 0).then_some(r)
    }
}

/// A resource as the client sees it, with its ETag.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub body: Value,
    pub etag: String,
}

/// A list or search request (RFC 7644 §3.4.2).
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub filter: Option<String>,
    pub sort_by: Option<String>,
    pub sort_order: Option<String>,
    pub start_index: Option<i64>,
    pub count: Option<i64>,
}

/// One page of results.
#[derive(Debug, Clone)]
pub struct ListResult {
    pub total: i64,
    pub start_index: i64,
    pub resources: Vec<Value>,
}

impl App {
    pub async fn create(
        &self,
        ctx: &RequestContext,
        kind: ResourceKind,
        body: Value,
    ) -> Result<Outcome> {
        let (doc, members, ignored) = prepare(kind, body, Writer::Client)?;
        log_ignored(ctx, kind, "POST", &ignored);
        let ts = self.clock().now();
        let stored = StoredResource {
            id: ResourceId::generate(),
            doc,
            created: ts,
            last_modified: ts,
            version: 1,
        };
        let tenant = ctx.tenant;
        // A create without members is one INSERT, which refuses a taken
        // userName without an error in the database: it needs no savepoint.
        let undo = match members {
            None => Undo::OneStatement,
            Some(_) => Undo::Savepoint,
        };
        let stored = self
            .write_undone_by(ctx, undo, move |tx| {
                Box::pin(async move {
                    tx.insert(tenant, kind, &stored).await?;
                    if let Some(members) = members {
                        let resolved = resolve_members(tx, tenant, &stored.id, members).await?;
                        tx.add_members(tenant, &stored.id, &resolved).await?;
                    }
                    Ok(stored)
                })
            })
            .await?;
        if kind == ResourceKind::User {
            // A user just created is in no group: nothing to look up.
            return Ok(outcome(ctx, kind, &stored, None));
        }
        self.render(ctx, kind, stored).await
    }

    pub async fn get(
        &self,
        ctx: &RequestContext,
        kind: ResourceKind,
        id: &ResourceId,
    ) -> Result<Outcome> {
        let stored = self
            .store
            .get(ctx.tenant, kind, id)
            .await?
            .ok_or_else(|| not_found(kind, id))?;
        self.render(ctx, kind, stored).await
    }

    /// PUT: replaces every client-writable attribute (RFC 7644 §3.5.1).
    pub async fn replace(
        &self,
        ctx: &RequestContext,
        kind: ResourceKind,
        id: &ResourceId,
        body: Value,
        if_match: Option<&str>,
    ) -> Result<Outcome> {
        let (mut doc, members, ignored) = prepare(kind, body, Writer::Client)?;
        log_ignored(ctx, kind, "PUT", &ignored);
        let (tenant, id, if_match) = (ctx.tenant, id.clone(), if_match.map(str::to_string));
        let at = self.clock().now();
        let stored = self
            .write(ctx, move |tx| {
                Box::pin(async move {
                    let current =
                        current_for_write(tx, tenant, kind, &id, if_match.as_deref()).await?;
                    keep_server_owned(&current.doc, &mut doc);
                    let stored = current.next_version(doc, at);
                    tx.update(tenant, kind, &stored, current.version).await?;
                    if kind == ResourceKind::Group {
                        tx.clear_members(tenant, &stored.id).await?;
                        let resolved =
                            resolve_members(tx, tenant, &stored.id, members.unwrap_or_default())
                                .await?;
                        tx.add_members(tenant, &stored.id, &resolved).await?;
                    }
                    Ok(stored)
                })
            })
            .await?;
        self.render(ctx, kind, stored).await
    }

    /// PATCH (RFC 7644 §3.5.2): all operations or none. Returns the updated
    /// resource; the HTTP layer may answer 204 instead for groups.
    pub async fn patch(
        &self,
        ctx: &RequestContext,
        kind: ResourceKind,
        id: &ResourceId,
        body: Value,
        if_match: Option<&str>,
        render: bool,
    ) -> Result<Option<Outcome>> {
        let ops = scim::patch::parse_request(&body)?;
        let (tenant, id, if_match) = (ctx.tenant, id.clone(), if_match.map(str::to_string));
        let at = self.clock().now();
        let (stored, ignored) = self
            .write(ctx, move |tx| {
                Box::pin(async move {
                    let current =
                        current_for_write(tx, tenant, kind, &id, if_match.as_deref()).await?;
                    // `id` lives in its own column; the PATCH engine sees it
                    // so that a path-less value echoing the id (Okta's group
                    // rename) is accepted as unchanged, while any other
                    // value is a mutability error.
                    let mut doc = current.doc.clone();
                    if let Some(obj) = doc.as_object_mut() {
                        obj.insert("id".into(), Value::String(id.to_string()));
                    }
                    let outcome = scim::patch::apply(kind, &mut doc, &ops)?;
                    if let Some(obj) = doc.as_object_mut() {
                        obj.remove("id");
                        // The password is write-only and never stored (see
                        // `prepare`).
                        obj.remove("password");
                    }
                    check_required(kind, &doc)?;
                    let mut membership_changed = false;
                    for op in outcome.member_ops {
                        membership_changed |= match op {
                            MemberOp::Add(refs) => {
                                let resolved = resolve_members(tx, tenant, &id, refs).await?;
                                tx.add_members(tenant, &id, &resolved).await? > 0
                            }
                            MemberOp::Remove(ids) => {
                                tx.remove_members(tenant, &id, &ids).await? > 0
                            }
                            MemberOp::RemoveAll => tx.clear_members(tenant, &id).await? > 0,
                        };
                    }
                    let stored = if doc != current.doc || membership_changed {
                        let next = current.next_version(doc, at);
                        tx.update(tenant, kind, &next, current.version).await?;
                        next
                    } else {
                        current
                    };
                    Ok((stored, outcome.ignored))
                })
            })
            .await?;
        log_ignored(ctx, kind, "PATCH", &ignored);
        if render {
            Ok(Some(self.render(ctx, kind, stored).await?))
        } else {
            Ok(None)
        }
    }

    pub async fn delete(
        &self,
        ctx: &RequestContext,
        kind: ResourceKind,
        id: &ResourceId,
        if_match: Option<&str>,
    ) -> Result<()> {
        let (tenant, id, if_match) = (ctx.tenant, id.clone(), if_match.map(str::to_string));
        self.write(ctx, move |tx| {
            Box::pin(async move {
                current_for_write(tx, tenant, kind, &id, if_match.as_deref()).await?;
                tx.delete(tenant, kind, &id).await?;
                Ok(())
            })
        })
        .await
    }

    /// `POST /.search` at the root (RFC 7644 §3.4.3): Users, then Groups,
    /// paged as one list. A filter naming an attribute one type lacks
    /// matches nothing of that type; it is `invalidFilter` only when no type
    /// can evaluate it.
    pub async fn search_all(&self, ctx: &RequestContext, query: &ListQuery) -> Result<ListResult> {
        let start_index = query.start_index.unwrap_or(1).max(1);
        let count = query.count.unwrap_or(DEFAULT_COUNT).clamp(0, MAX_COUNT);
        let mut skip = start_index - 1;
        let mut total = 0;
        let mut resources = Vec::new();
        let mut first_error = None;
        let mut evaluated = false;
        for kind in [ResourceKind::User, ResourceKind::Group] {
            let want = count - resources.len() as i64;
            let q = ListQuery {
                start_index: Some(skip + 1),
                count: Some(want),
                ..query.clone()
            };
            match self.list(ctx, kind, &q).await {
                Ok(page) => {
                    evaluated = true;
                    total += page.total;
                    skip = (skip - page.total).max(0);
                    resources.extend(page.resources);
                }
                Err(
                    e @ (Error::Scim(ScimType::InvalidFilter, _)
                    | Error::Scim(ScimType::InvalidValue, _)),
                ) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        match (evaluated, first_error) {
            (false, Some(e)) => Err(e),
            _ => Ok(ListResult {
                total,
                start_index,
                resources,
            }),
        }
    }

    /// Lists resources. The filter and sort run in the database.
    pub async fn list(
        &self,
        ctx: &RequestContext,
        kind: ResourceKind,
        query: &ListQuery,
    ) -> Result<ListResult> {
        let dialect = self.store.dialect();
        let columns = crate::store::Columns(kind);
        let condition = match query.filter.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => {
                let filter = scim::filter::parse_filter(text).map_err(|e| {
                    Error::Scim(ScimType::InvalidFilter, format!("invalid filter: {e}"))
                })?;
                if let Some(path) = nul_operand(&filter) {
                    // A `\u0000` escape in a filter literal: no stored value
                    // can hold one, and PostgreSQL refuses it as a bind.
                    return Err(Error::Scim(
                        ScimType::InvalidValue,
                        format!("the filter value for '{path}' contains a NUL character"),
                    ));
                }
                Some(
                    scim::sql::render_filter(&filter, kind, dialect, &columns, 2).map_err(|e| {
                        Error::Scim(ScimType::InvalidFilter, format!("invalid filter: {e}"))
                    })?,
                )
            }
        };
        let sort_key = match query.sort_by.as_deref() {
            None | Some("") => None,
            Some(raw) => {
                let path = scim::filter::parse_attr_path(raw).map_err(|e| {
                    Error::Scim(
                        ScimType::InvalidValue,
                        format!("invalid sortBy '{raw}': {e}"),
                    )
                })?;
                Some(
                    scim::sql::render_sort_key(&path, kind, dialect, &columns).map_err(|e| {
                        Error::Scim(
                            ScimType::InvalidValue,
                            format!("invalid sortBy '{raw}': {e}"),
                        )
                    })?,
                )
            }
        };
        let descending = match query.sort_order.as_deref() {
            None | Some("") => false,
            Some(o) if o.eq_ignore_ascii_case("ascending") => false,
            Some(o) if o.eq_ignore_ascii_case("descending") => true,
            Some(o) => {
                return Err(Error::Scim(
                    ScimType::InvalidValue,
                    format!("invalid sortOrder '{o}': use 'ascending' or 'descending'"),
                ))
            }
        };
        // RFC 7644 §3.4.2.4: startIndex below 1 means 1; a negative count
        // means 0.
        let start_index = query.start_index.unwrap_or(1).max(1);
        let count = query.count.unwrap_or(DEFAULT_COUNT).clamp(0, MAX_COUNT);
        let page = self
            .store
            .list(
                ctx.tenant,
                kind,
                condition.as_ref(),
                sort_key.as_deref().map(|k| (k, descending)),
                start_index - 1,
                count,
            )
            .await?;
        let resources = self.render_many(ctx, kind, page.items).await?;
        Ok(ListResult {
            total: page.total,
            start_index,
            resources: resources.into_iter().map(|o| o.body).collect(),
        })
    }

    async fn render(
        &self,
        ctx: &RequestContext,
        kind: ResourceKind,
        stored: StoredResource,
    ) -> Result<Outcome> {
        let mut out = self.render_many(ctx, kind, vec![stored]).await?;
        out.pop().ok_or_else(|| Error::Conflict)
    }

    /// Wire representations of stored resources, loading memberships only
    /// when the response will show them.
    async fn render_many(
        &self,
        ctx: &RequestContext,
        kind: ResourceKind,
        items: Vec<StoredResource>,
    ) -> Result<Vec<Outcome>> {
        let ids: Vec<&str> = items.iter().map(|r| r.id.as_str()).collect();
        let mut related: HashMap<String, Vec<Value>> = HashMap::new();
        match kind {
            // Skipping the membership query when the response will not show
            // it keeps `GET /Groups?excludedAttributes=members` cheap for
            // huge groups.
            ResourceKind::Group if shows(ctx, kind, "members") && !ids.is_empty() => {
                for row in self.store.members_of(ctx.tenant, &ids).await? {
                    related
                        .entry(row.group_id.clone())
                        .or_default()
                        .push(member_json(ctx, &row));
                }
            }
            ResourceKind::User if shows(ctx, kind, "groups") && !ids.is_empty() => {
                for (row, display) in self.store.groups_of(ctx.tenant, &ids).await? {
                    related
                        .entry(row.member_id.clone())
                        .or_default()
                        .push(json!({
                            "value": row.group_id,
                            "$ref": format!("{}/Groups/{}", ctx.base_url, row.group_id),
                            "display": display,
                            "type": "direct",
                        }));
                }
            }
            _ => {}
        }
        Ok(items
            .into_iter()
            .map(|stored| {
                let rel = related.remove(stored.id.as_str());
                outcome(ctx, kind, &stored, rel)
            })
            .collect())
    }
}

/// A resource's wire representation, with its memberships (`groups` of a
/// user, `members` of a group) as loaded.
fn outcome(
    ctx: &RequestContext,
    kind: ResourceKind,
    stored: &StoredResource,
    related: Option<Vec<Value>>,
) -> Outcome {
    let related_key = match kind {
        ResourceKind::User => "groups",
        ResourceKind::Group => "members",
    };
    let full = wire(ctx, kind, stored, related_key, related);
    Outcome {
        body: scim::projection::project(kind, &full, &ctx.attributes, &ctx.excluded),
        etag: etag(stored.version),
    }
}

/// The path of the first comparison whose string operand holds a NUL.
fn nul_operand(f: &scim::ast::Filter) -> Option<String> {
    use scim::ast::{CompValue, Filter};
    match f {
        Filter::Compare(path, _, CompValue::String(s)) if s.contains('\0') => {
            Some(path.to_string())
        }
        Filter::Compare(..) | Filter::Present(_) => None,
        Filter::Not(inner) => nul_operand(inner),
        Filter::And(a, b) | Filter::Or(a, b) => nul_operand(a).or_else(|| nul_operand(b)),
        Filter::ValuePath(path, inner) => nul_operand(inner).map(|sub| format!("{path}.{sub}")),
    }
}

fn shows(ctx: &RequestContext, kind: ResourceKind, attr: &str) -> bool {
    scim::projection::includes_attribute(kind, attr, &ctx.attributes, &ctx.excluded)
}

fn member_json(ctx: &RequestContext, row: &MemberRow) -> Value {
    let stem = if row.member_type == "Group" {
        "Groups"
    } else {
        "Users"
    };
    json!({
        "value": row.member_id,
        "$ref": format!("{}/{stem}/{}", ctx.base_url, row.member_id),
        "type": row.member_type,
    })
}

/// The full wire representation: `schemas`, `id`, the stored document, the
/// related resources, then `meta`.
fn wire(
    ctx: &RequestContext,
    kind: ResourceKind,
    stored: &StoredResource,
    related_key: &str,
    related: Option<Vec<Value>>,
) -> Value {
    let mut out = Map::new();
    let schemas = stored
        .doc
        .get("schemas")
        .cloned()
        .unwrap_or_else(|| json!([kind.core_schema().id]));
    out.insert("schemas".into(), schemas);
    out.insert("id".into(), json!(stored.id.as_str()));
    if let Some(doc) = stored.doc.as_object() {
        for (k, v) in doc {
            if k != "schemas" {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(rel) = related {
        out.insert(related_key.into(), Value::Array(rel));
    } else if kind == ResourceKind::Group {
        out.insert(related_key.into(), json!([]));
    }
    out.insert(
        "meta".into(),
        json!({
            "resourceType": kind.name(),
            "created": stored.created.to_string(),
            "lastModified": stored.last_modified.to_string(),
            "location": format!("{}{}/{}", ctx.base_url, kind.endpoint(), stored.id),
            "version": etag(stored.version),
        }),
    );
    Value::Object(out)
}

/// The weak ETag of a version (RFC 7644 §3.14).
pub fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

/// `If-Match`: `*`, or a list of ETags one of which must be current. Weak
/// and strong forms compare equal, since versions are all we have.
/// The resource a write replaces, locked until commit (PostgreSQL), after
/// its `If-Match` precondition: 404 when it does not exist, 412 when the
/// client's version is not the current one.
async fn current_for_write(
    tx: &mut WriteTx,
    tenant: TenantId,
    kind: ResourceKind,
    id: &ResourceId,
    if_match: Option<&str>,
) -> Result<StoredResource> {
    let current = tx
        .get_for_update(tenant, kind, id)
        .await?
        .ok_or_else(|| not_found(kind, id))?;
    check_if_match(if_match, current.version)?;
    Ok(current)
}

fn check_if_match(if_match: Option<&str>, version: i64) -> Result<()> {
    let Some(header) = if_match else {
        return Ok(());
    };
    let current = version.to_string();
    let ok = header
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/").trim_matches('"') == current);
    if ok {
        Ok(())
    } else {
        Err(Error::PreconditionFailed {
            expected: header.to_string(),
            current: etag(version),
        })
    }
}

fn not_found(kind: ResourceKind, id: &ResourceId) -> Error {
    Error::NotFound {
        kind: kind.name(),
        id: id.to_string(),
    }
}

/// Logs the attributes a write dropped because no published schema defines
/// them (`scim::unknown`): names only, never values, which may be personal
/// data.
fn log_ignored(ctx: &RequestContext, kind: ResourceKind, method: &str, ignored: &[String]) {
    if !ignored.is_empty() {
        tracing::info!(
            tenant = %ctx.tenant,
            resource = kind.name(),
            method,
            attributes = ?ignored,
            "ignored attributes that no published schema defines"
        );
    }
}

/// Who writes a document: a SCIM client, or directory sync (which alone
/// writes the server-owned `urn:rolebridge:` namespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Writer {
    Client,
    Directory,
}

/// A PUT replaces what the client may write; the server-owned namespace
/// (directory sync's record of source and DN) stays as stored.
fn keep_server_owned(current: &Value, doc: &mut Value) {
    let (Some(cur), Some(new)) = (current.as_object(), doc.as_object_mut()) else {
        return;
    };
    for (k, v) in cur {
        if ResourceKind::is_server_owned(k) {
            new.insert(k.clone(), v.clone());
        }
    }
}

/// Validates and normalises a POST/PUT body into the stored document, and
/// takes out group members (stored in their own table). Also returns the
/// attributes dropped: those no published schema defines, and, from a
/// client, the server-owned namespace (readOnly: RFC 7643 §7 has a client's
/// readOnly values ignored).
pub(super) fn prepare(
    kind: ResourceKind,
    mut body: Value,
    writer: Writer,
) -> Result<(Value, Option<Vec<MemberRef>>, Vec<String>)> {
    // The HTTP edge refuses NUL already; a directory may send one too, and
    // PostgreSQL can store none.
    if let Some(detail) = crate::domain::nul_in_json(&body) {
        return Err(Error::Scim(ScimType::InvalidValue, detail));
    }
    let obj = body.as_object_mut().ok_or_else(|| {
        Error::Scim(
            ScimType::InvalidSyntax,
            "the request body must be a JSON object".into(),
        )
    })?;
    let mut dropped = Vec::new();
    if writer == Writer::Client {
        obj.retain(|k, _| {
            let owned = ResourceKind::is_server_owned(k);
            if owned {
                dropped.push(k.clone());
            }
            !owned
        });
    }
    let schemas: Vec<String> = match obj.get("schemas") {
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    Error::Scim(
                        ScimType::InvalidSyntax,
                        "'schemas' must be an array of strings".into(),
                    )
                })
            })
            .collect::<Result<_>>()?,
        Some(_) => {
            return Err(Error::Scim(
                ScimType::InvalidSyntax,
                "'schemas' must be an array of strings".into(),
            ))
        }
        None => {
            return Err(Error::Scim(
                ScimType::InvalidSyntax,
                format!(
                    "'schemas' is required and must contain '{}'",
                    kind.core_schema().id
                ),
            ))
        }
    };
    if !schemas
        .iter()
        .any(|s| s.eq_ignore_ascii_case(kind.core_schema().id))
    {
        return Err(Error::Scim(
            ScimType::InvalidSyntax,
            format!("'schemas' must contain '{}'", kind.core_schema().id),
        ));
    }
    // RFC 7643 §7: readOnly values sent by a client are ignored.
    obj.remove("id");
    obj.remove("meta");
    if kind == ResourceKind::User {
        obj.remove("groups");
    }
    let mut ignored = scim::patch::normalize(kind, &mut body)?;
    ignored.extend(dropped);
    let obj = body.as_object_mut().ok_or_else(|| {
        Error::Scim(
            ScimType::InvalidSyntax,
            "the request body must be a JSON object".into(),
        )
    })?;
    // The password is write-only: rolebridge never authenticates users, so it
    // keeps no password, not even a hash (RFC 7643 §4.1.1 allows this).
    obj.remove("password");
    let members = match kind {
        ResourceKind::Group => Some(member_refs(obj.remove("members"))?),
        ResourceKind::User => None,
    };
    // An extension's URN belongs in `schemas` when its attributes are sent
    // (the enterprise one, or a custom extension: `scim::unknown`).
    let extensions: Vec<String> = obj
        .keys()
        .filter(|k| kind.extension(k).is_some() || kind.is_custom_extension(k))
        .cloned()
        .collect();
    if let Some(Value::Array(list)) = obj.get_mut("schemas") {
        for urn in extensions {
            if !list
                .iter()
                .any(|s| s.as_str().is_some_and(|s| s.eq_ignore_ascii_case(&urn)))
            {
                list.push(json!(urn));
            }
        }
    }
    check_required(kind, &body)?;
    Ok((body, members, ignored))
}

fn member_refs(raw: Option<Value>) -> Result<Vec<MemberRef>> {
    let items = match raw {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(Error::Scim(
                ScimType::InvalidValue,
                "'members' must be an array".into(),
            ))
        }
    };
    items
        .into_iter()
        .map(|m| {
            let value = m.get("value").and_then(Value::as_str).ok_or_else(|| {
                Error::Scim(
                    ScimType::InvalidValue,
                    "each member needs a string 'value'".into(),
                )
            })?;
            Ok(MemberRef {
                value: value.to_string(),
                member_type: m.get("type").and_then(Value::as_str).map(str::to_string),
                display: m.get("display").and_then(Value::as_str).map(str::to_string),
            })
        })
        .collect()
}

/// Longest userName, externalId or group displayName, in characters. They
/// are copied into indexed columns, and a PostgreSQL b-tree entry cannot
/// exceed about 2,700 bytes: a longer value would fail in the store instead
/// of being refused here. Entra caps userPrincipalName at 113 characters.
pub const MAX_INDEXED_CHARS: usize = 512;

/// The required attribute is present, and the indexed ones fit their index.
fn check_required(kind: ResourceKind, doc: &Value) -> Result<()> {
    let key = match kind {
        ResourceKind::User => "userName",
        ResourceKind::Group => "displayName",
    };
    match doc.get(key).and_then(Value::as_str) {
        Some(s) if !s.trim().is_empty() => {}
        _ => {
            return Err(Error::Scim(
                ScimType::InvalidValue,
                format!("'{key}' is required and must be a non-empty string"),
            ))
        }
    }
    for attr in [key, "externalId"] {
        if let Some(v) = doc.get(attr).and_then(Value::as_str) {
            let n = v.chars().count();
            if n > MAX_INDEXED_CHARS {
                return Err(Error::Scim(
                    ScimType::InvalidValue,
                    format!(
                        "'{attr}' is {n} characters long; at most {MAX_INDEXED_CHARS} are accepted"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Checks that every member names a User or Group of this tenant (and agrees
/// with a `type` the client gave), returning ids with their types.
async fn resolve_members(
    tx: &mut WriteTx,
    tenant: TenantId,
    group: &ResourceId,
    refs: Vec<MemberRef>,
) -> Result<Vec<(String, &'static str)>> {
    if refs.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = refs.iter().map(|r| r.value.clone()).collect();
    let types = tx.member_types(tenant, &ids).await?;
    let mut out = Vec::with_capacity(refs.len());
    for r in refs {
        if r.value == group.as_str() {
            return Err(Error::Scim(
                ScimType::InvalidValue,
                format!("group '{}' cannot be a member of itself", r.value),
            ));
        }
        let actual = types.get(&r.value).copied().ok_or_else(|| {
            Error::Scim(
                ScimType::InvalidValue,
                format!("member '{}' is not a User or Group of this tenant", r.value),
            )
        })?;
        if let Some(claimed) = &r.member_type {
            if !claimed.eq_ignore_ascii_case(actual) {
                return Err(Error::Scim(
                    ScimType::InvalidValue,
                    format!("member '{}' is a {actual}, not a {claimed}", r.value),
                ));
            }
        }
        out.push((r.value, actual));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::SYNC_URN;

    #[test]
    fn if_match_accepts_weak_strong_star_and_lists() {
        assert!(check_if_match(None, 3).is_ok());
        assert!(check_if_match(Some("W/\"3\""), 3).is_ok());
        assert!(check_if_match(Some("\"3\""), 3).is_ok());
        assert!(check_if_match(Some("*"), 3).is_ok());
        assert!(check_if_match(Some("W/\"1\", W/\"3\""), 3).is_ok());
        assert!(matches!(
            check_if_match(Some("W/\"2\""), 3),
            Err(Error::PreconditionFailed { .. })
        ));
    }

    #[test]
    fn bodies_need_the_core_schema_and_required_attributes() {
        assert!(prepare(ResourceKind::User, json!({"userName": "a"}), Writer::Client).is_err());
        assert!(prepare(
            ResourceKind::User,
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "userName": "a"}),
            Writer::Client
        )
        .is_err());
        assert!(prepare(
            ResourceKind::User,
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"]}),
            Writer::Client
        )
        .is_err());
        let (doc, _, _) = prepare(
            ResourceKind::User,
            json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "a", "password": "p", "id": "x"}),
            Writer::Client,
        )
        .unwrap();
        assert!(doc.get("password").is_none());
        assert!(doc.get("id").is_none());
    }

    #[test]
    fn only_directory_sync_writes_the_server_owned_namespace() {
        let body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Admins",
            SYNC_URN: {"source": "corp-ldap", "dn": "cn=admins,dc=corp"}});
        let (doc, _, ignored) = prepare(ResourceKind::Group, body.clone(), Writer::Client).unwrap();
        assert!(doc.get(SYNC_URN).is_none(), "{doc}");
        assert_eq!(ignored, vec![SYNC_URN.to_string()]);
        assert_eq!(
            doc["schemas"],
            json!(["urn:ietf:params:scim:schemas:core:2.0:Group"])
        );
        let (doc, _, _) = prepare(ResourceKind::Group, body, Writer::Directory).unwrap();
        assert_eq!(doc[SYNC_URN]["source"], "corp-ldap");
    }
}
