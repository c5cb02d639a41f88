//! The PATCH engine (RFC 7644 §3.5.2) and the normalisation of resource
//! bodies written by POST, PUT and PATCH.
//!
//! It owns: parsing a `PatchOp` request body ([`parse_request`]), applying
//! its operations atomically to a stored JSON document ([`apply`]), turning
//! operations on a Group's `members` into [`MemberOp`]s, and bringing client
//! values into the stored shape ([`normalize`]). It does no IO: the service
//! loads the document, calls [`apply`], and persists the result and the
//! member operations in one transaction.
//!
//! Group membership is never part of the document: a group may have 100,000
//! members, so `members` operations are translated into [`MemberOp`]s whose
//! cost is proportional to the members named, not to the group.
//!
//! Decisions where RFC 7644 is silent or clients deviate from it (each one
//! is exercised by a test below):
//! - `remove` with a value filter that matches nothing is a no-op (Entra
//!   removes values it believes exist; failing would stall provisioning).
//! - `add`/`replace` on `attr[filter].sub` with no matching element create
//!   the element, seeded with the `eq` conditions of an `and`-only filter
//!   (Entra: `emails[type eq "work"].value`); with any other filter shape
//!   the result is `noTarget`. `replace` on `attr[filter]` (no sub-attribute)
//!   with no match is `noTarget`; `add` creates the element.
//! - A syntactically bad path, an unknown schema URN and a bad or unknown
//!   attribute inside a value filter are all `invalidPath`. An attribute a
//!   published schema does not define is dropped and reported in
//!   [`PatchOutcome::ignored`], as POST and PUT drop it ([`crate::unknown`]).
//! - A readOnly attribute in a path-less value that equals the stored value
//!   is ignored (Okta sends `{"id": .., "displayName": ..}` to rename a
//!   group); a different value is `mutability`.
//! - `schemas` in a path-less value is ignored (the service owns `schemas`);
//!   as an explicit path it is `invalidPath` (it is not an attribute).
//! - Removing a required attribute (`userName`, Group `displayName`), or
//!   replacing it with `null`, is `invalidValue`.
//! - `add` or `replace` with a `null` value: `add` is a no-op, `replace`
//!   removes (RFC 7643 §2.5: null is "unassigned").
//! - `remove` with a `value` on a multi-valued attribute other than
//!   `members` removes the elements equal to the given ones (matched on
//!   `value` when given), instead of the whole attribute.
//! - Custom extensions (no published schema) are written as sent, under
//!   `urn:...:attr` paths or as objects in a path-less value; a path that is
//!   a whole URN names the extension when the resource holds or declares
//!   it, else an attribute of the shorter URN (Entra adds its first custom
//!   attribute as `urn:...:CustomExtensionName:2.0:User:attr`).
//! - A single-valued complex attribute with a `value` sub-attribute
//!   (`manager`) accepts a bare string (`"value": "id"`) and a one-element
//!   array, as Entra sends both.
//! - Writing `primary: true` on one element sets `primary: false` on the
//!   others (RFC 7643 §2.4); a body with two primary elements is
//!   `invalidValue`.
//! - Any operation on `members` counts as a change; the service may refine
//!   this with the number of rows its membership statements affect.

use serde_json::{Map, Value};

use crate::ast::{AttrPath, CompValue, CompareOp, Filter, PatchPath};
use crate::error::ScimType;
use crate::eval::{matches_element, validate_element};
use crate::filter::parse_patch_path;
use crate::schema::{
    common_attribute, AttrType, Attribute, Mutability, ResolveError, Resolved, ResourceKind,
    PATCH_OP_URN,
};

/// One parsed operation of a PATCH request.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchOperation {
    pub op: OpKind,
    pub path: Option<PatchPath>,
    pub value: Option<Value>,
}

/// The operation verbs of RFC 7644 §3.5.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Add,
    Remove,
    Replace,
}

impl OpKind {
    /// The lower-case RFC spelling, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Add => "add",
            OpKind::Remove => "remove",
            OpKind::Replace => "replace",
        }
    }
}

/// A change to a Group's membership, which the service keeps in its own
/// table. Applied in order after the document changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberOp {
    /// Add these members (already members are not an error).
    Add(Vec<MemberRef>),
    /// Remove the members with these ids (absent ids are not an error).
    Remove(Vec<String>),
    /// Remove every member.
    RemoveAll,
}

/// A member named by a client: `{"value": id, "type"?, "display"?}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRef {
    /// The member's resource id.
    pub value: String,
    /// `User` or `Group` when the client said (Okta omits it).
    pub member_type: Option<String>,
    /// The display name the client sent; `members.display` is readOnly, so
    /// the service may ignore it.
    pub display: Option<String>,
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PatchOutcome {
    /// Membership changes, in request order.
    pub member_ops: Vec<MemberOp>,
    /// Whether the document changed or any membership operation was
    /// produced; lets the service skip bumping the version on a no-op.
    pub changed: bool,
    /// Attributes no published schema defines, dropped instead of stored
    /// ([`crate::unknown`]), as paths; the service logs them.
    pub ignored: Vec<String>,
}

/// A rejected PATCH request or resource body. Messages are lower-case and
/// quote the offending path or value; [`PatchError::scim_type`] gives the
/// RFC 7644 §3.12 `scimType`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The request body is not a well-formed PatchOp.
    #[error("{0}")]
    InvalidSyntax(String),
    /// The path is malformed or names no attribute.
    #[error("{0}")]
    InvalidPath(String),
    /// The path selects nothing and the operation cannot create it.
    #[error("{0}")]
    NoTarget(String),
    /// The value has the wrong shape or type for the attribute.
    #[error("{0}")]
    InvalidValue(String),
    /// The attribute may not be modified (readOnly, or immutable with a value).
    #[error("{0}")]
    Mutability(String),
    /// A `members` value filter this server does not support.
    #[error("{0}")]
    InvalidFilter(String),
}

impl PatchError {
    /// The SCIM `scimType` (RFC 7644 §3.12).
    pub fn scim_type(&self) -> ScimType {
        match self {
            PatchError::InvalidSyntax(_) => ScimType::InvalidSyntax,
            PatchError::InvalidPath(_) => ScimType::InvalidPath,
            PatchError::NoTarget(_) => ScimType::NoTarget,
            PatchError::InvalidValue(_) => ScimType::InvalidValue,
            PatchError::Mutability(_) => ScimType::Mutability,
            PatchError::InvalidFilter(_) => ScimType::InvalidFilter,
        }
    }
}

type Obj = Map<String, Value>;

/// Case-insensitive key lookup: clients send `Operations`, `operations`,
/// `Op`, `op`...
fn get_key<'v>(obj: &'v Obj, key: &str) -> Option<&'v Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// Parses a PATCH request body. Checks the PatchOp schema URN and a
/// non-empty `Operations` array; `op` is case-insensitive (Entra sends
/// `Replace`), and `path` is parsed here so a bad path fails before anything
/// is applied. An empty `path` string means no path.
pub fn parse_request(body: &Value) -> Result<Vec<PatchOperation>, PatchError> {
    let Value::Object(body) = body else {
        return Err(PatchError::InvalidSyntax(
            "the patch request must be a json object".into(),
        ));
    };
    let has_urn = get_key(body, "schemas")
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter().any(|s| {
                s.as_str()
                    .is_some_and(|s| s.eq_ignore_ascii_case(PATCH_OP_URN))
            })
        });
    if !has_urn {
        return Err(PatchError::InvalidSyntax(format!(
            "'schemas' must contain '{PATCH_OP_URN}'"
        )));
    }
    let ops = match get_key(body, "Operations") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => {
            return Err(PatchError::InvalidSyntax(
                "'Operations' must not be empty".into(),
            ))
        }
        _ => {
            return Err(PatchError::InvalidSyntax(
                "'Operations' must be an array of operations".into(),
            ))
        }
    };
    ops.iter()
        .enumerate()
        .map(|(i, op)| parse_operation(i, op))
        .collect()
}

fn parse_operation(i: usize, op: &Value) -> Result<PatchOperation, PatchError> {
    let Value::Object(op) = op else {
        return Err(PatchError::InvalidSyntax(format!(
            "operation {i} must be a json object"
        )));
    };
    let verb = match get_key(op, "op") {
        Some(Value::String(s)) => s,
        _ => {
            return Err(PatchError::InvalidSyntax(format!(
                "operation {i} has no 'op'"
            )))
        }
    };
    let kind = match verb.to_ascii_lowercase().as_str() {
        "add" => OpKind::Add,
        "remove" => OpKind::Remove,
        "replace" => OpKind::Replace,
        _ => {
            return Err(PatchError::InvalidSyntax(format!(
                "operation {i} has unknown op '{verb}': expected add, remove or replace"
            )))
        }
    };
    let path = match get_key(op, "path") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(
            parse_patch_path(s)
                .map_err(|e| PatchError::InvalidPath(format!("invalid path '{s}': {e}")))?,
        ),
        Some(other) => {
            return Err(PatchError::InvalidPath(format!(
                "operation {i} has a non-string path {other}"
            )))
        }
    };
    let value = get_key(op, "value").cloned();
    if kind != OpKind::Remove && value.is_none() {
        return Err(PatchError::InvalidValue(format!(
            "operation {i} ('{}') requires a 'value'",
            kind.as_str()
        )));
    }
    Ok(PatchOperation {
        op: kind,
        path,
        value,
    })
}

/// Applies `ops` to `doc`, all or nothing: the operations run on a copy,
/// which replaces `doc` only when every one succeeded. `doc` must never
/// contain a Group's `members`: those operations come back as
/// [`PatchOutcome::member_ops`].
pub fn apply(
    kind: ResourceKind,
    doc: &mut Value,
    ops: &[PatchOperation],
) -> Result<PatchOutcome, PatchError> {
    let Value::Object(original) = &*doc else {
        return Err(PatchError::InvalidValue(
            "the resource is not a json object".into(),
        ));
    };
    let mut work = original.clone();
    let mut engine = Engine {
        kind,
        member_ops: Vec::new(),
        touched_ext: Vec::new(),
        ignored: Vec::new(),
    };
    for op in ops {
        engine.apply_op(&mut work, op)?;
    }
    // Values written whole (`emails`, `name`) may carry sub-attributes no
    // schema defines; a document stored before the rule may hold some too.
    for name in crate::unknown::strip(kind, &mut work) {
        if !engine.ignored.contains(&name) {
            engine.ignored.push(name);
        }
    }
    engine.sync_schemas(&mut work);
    let doc_changed = work != *original;
    let changed = doc_changed || !engine.member_ops.is_empty();
    if doc_changed {
        *doc = Value::Object(work);
    }
    Ok(PatchOutcome {
        member_ops: engine.member_ops,
        changed,
        ignored: engine.ignored,
    })
}

/// State of one [`apply`] call.
struct Engine {
    kind: ResourceKind,
    member_ops: Vec<MemberOp>,
    /// Extension URNs written or removed, whose `schemas` entry is synced at
    /// the end.
    touched_ext: Vec<String>,
    /// See [`PatchOutcome::ignored`].
    ignored: Vec<String>,
}

/// `path` as the client would have written it, for messages.
fn show_path(p: &PatchPath) -> String {
    let mut s = p.attr.to_string();
    if let Some(f) = &p.filter {
        s.push('[');
        s.push_str(&show_filter(f));
        s.push(']');
    }
    if let Some(sub) = &p.sub_attr {
        s.push('.');
        s.push_str(sub);
    }
    s
}

fn show_filter(f: &Filter) -> String {
    match f {
        Filter::Present(p) => format!("{p} pr"),
        Filter::Compare(p, op, v) => {
            let op = match op {
                CompareOp::Eq => "eq",
                CompareOp::Ne => "ne",
                CompareOp::Co => "co",
                CompareOp::Sw => "sw",
                CompareOp::Ew => "ew",
                CompareOp::Gt => "gt",
                CompareOp::Ge => "ge",
                CompareOp::Lt => "lt",
                CompareOp::Le => "le",
            };
            let v = match v {
                CompValue::Null => "null".to_string(),
                CompValue::Bool(b) => b.to_string(),
                CompValue::Number(n) => n.to_string(),
                CompValue::String(s) => Value::String(s.clone()).to_string(),
            };
            format!("{p} {op} {v}")
        }
        Filter::ValuePath(p, inner) => format!("{p}[{}]", show_filter(inner)),
        Filter::And(a, b) => format!("{} and {}", show_filter(a), show_filter(b)),
        Filter::Or(a, b) => format!("({} or {})", show_filter(a), show_filter(b)),
        Filter::Not(inner) => format!("not ({})", show_filter(inner)),
    }
}

/// Whether `path` names a Group's `members` (or a User's, which is an error).
fn is_members(kind: ResourceKind, path: &AttrPath) -> bool {
    path.attr.eq_ignore_ascii_case("members")
        && path
            .schema
            .as_deref()
            .is_none_or(|s| s.eq_ignore_ascii_case(kind.core_schema().id))
}

/// A key of a path-less value that is a plain attribute name rather than a
/// path (`name.givenName`, `urn:...:employeeNumber`, `emails[...]`).
fn is_plain_name(key: &str) -> bool {
    !key.is_empty() && !key.contains(['.', ':', '['])
}

impl Engine {
    fn apply_op(&mut self, doc: &mut Obj, op: &PatchOperation) -> Result<(), PatchError> {
        match &op.path {
            Some(path) => self.apply_path(doc, op.op, path, op.value.as_ref()),
            None if op.op == OpKind::Remove => {
                Err(PatchError::NoTarget("'remove' requires a 'path'".into()))
            }
            None => self.apply_pathless(doc, op.op, op.value.as_ref()),
        }
    }

    /// `add`/`replace` without a path: the value is a partial resource whose
    /// keys are attribute names, extension URNs, or (Entra) paths.
    fn apply_pathless(
        &mut self,
        doc: &mut Obj,
        op: OpKind,
        value: Option<&Value>,
    ) -> Result<(), PatchError> {
        let Some(Value::Object(obj)) = value else {
            return Err(PatchError::InvalidValue(format!(
                "'{}' without a 'path' requires an object value",
                op.as_str()
            )));
        };
        for (key, v) in obj {
            if key.eq_ignore_ascii_case("schemas") {
                continue;
            }
            if let Some(ext) = self.kind.extension(key) {
                let eobj = match v {
                    Value::Object(o) => o,
                    Value::Null if op == OpKind::Add => continue,
                    _ => {
                        return Err(PatchError::InvalidValue(format!(
                            "extension '{}' must be an object",
                            ext.id
                        )))
                    }
                };
                for (k2, v2) in eobj {
                    let path = AttrPath {
                        schema: Some(ext.id.to_string()),
                        attr: k2.clone(),
                        sub_attr: None,
                    };
                    if ext.attribute(k2).is_some() {
                        self.apply_path(doc, op, &whole(path), Some(v2))?;
                    } else {
                        self.ignore(format!("{}:{k2}", ext.id));
                    }
                }
                continue;
            }
            if ResourceKind::is_server_owned(key) {
                if doc.get(key) == Some(v) {
                    continue;
                }
                return Err(PatchError::Mutability(format!(
                    "'{key}' is written by the server only"
                )));
            }
            if self.kind.is_custom_extension(key) && self.names_extension(doc, key, v) {
                match v {
                    Value::Object(eobj) => {
                        for (k2, v2) in eobj {
                            self.custom_op(doc, op, key, k2, None, Some(v2))?;
                        }
                    }
                    Value::Null if op == OpKind::Add => {}
                    Value::Null => self.custom_whole(doc, OpKind::Remove, key, None)?,
                    _ => {
                        return Err(PatchError::InvalidValue(format!(
                            "extension '{key}' must be an object"
                        )))
                    }
                }
                continue;
            }
            let path = if is_plain_name(key) {
                whole(AttrPath::simple(key.clone()))
            } else {
                parse_patch_path(key)
                    .map_err(|e| PatchError::InvalidPath(format!("invalid path '{key}': {e}")))?
            };
            let resolved = self.kind.resolve(&path.attr).ok();
            if resolved.is_some_and(|r| unchanged_read_only(doc, &r, &path, v)) {
                // Okta echoes `id` in a path-less replace: a readOnly value
                // equal to the stored one is not a modification.
                continue;
            }
            self.apply_path(doc, op, &path, Some(v))?;
        }
        Ok(())
    }

    /// Whether the path-less key `key` (a custom-extension-shaped URN) names
    /// the extension itself rather than an attribute in Entra's path form
    /// (`urn:...:2.0:User:attr`): it does when its value is an object or
    /// null, unless the resource holds the shorter URN and not this one.
    fn names_extension(&self, doc: &Obj, key: &str, v: &Value) -> bool {
        if !(v.is_object() || v.is_null()) {
            return false;
        }
        if holds_extension(doc, key) {
            return true;
        }
        match key.rsplit_once(':') {
            Some((prefix, _)) => {
                !(self.kind.is_custom_extension(prefix) && holds_extension(doc, prefix))
            }
            None => true,
        }
    }

    /// Records an attribute dropped by [`crate::unknown`]'s rule.
    fn ignore(&mut self, name: String) {
        if !self.ignored.contains(&name) {
            self.ignored.push(name);
        }
    }

    /// The key under which the document holds custom extension `urn`: its
    /// stored spelling, else as written.
    fn custom_key(doc: &Obj, urn: &str) -> String {
        doc.keys()
            .find(|k| k.eq_ignore_ascii_case(urn))
            .cloned()
            .unwrap_or_else(|| urn.to_string())
    }

    /// `add`, `replace` or `remove` of a whole custom extension object.
    fn custom_whole(
        &mut self,
        doc: &mut Obj,
        op: OpKind,
        urn: &str,
        value: Option<&Value>,
    ) -> Result<(), PatchError> {
        let key = Self::custom_key(doc, urn);
        match (op, value) {
            (OpKind::Remove, _) | (OpKind::Replace, None | Some(Value::Null)) => {
                self.container(doc, Some(&key))?.clear();
                Ok(())
            }
            (_, None | Some(Value::Null)) => Ok(()),
            (op, Some(Value::Object(o))) => {
                if op == OpKind::Replace {
                    self.container(doc, Some(&key))?.clear();
                }
                for (k2, v2) in o {
                    self.custom_op(doc, op, &key, k2, None, Some(v2))?;
                }
                Ok(())
            }
            (_, Some(_)) => Err(PatchError::InvalidValue(format!(
                "extension '{urn}' must be an object"
            ))),
        }
    }

    /// An operation on attribute `attr` (or its `sub`) of custom extension
    /// `urn`, which has no schema: values are stored as sent (nulls inside
    /// dropped), `add` appends to a stored array and merges into a stored
    /// object, and names match the stored spelling case-insensitively.
    fn custom_op(
        &mut self,
        doc: &mut Obj,
        op: OpKind,
        urn: &str,
        attr: &str,
        sub: Option<&str>,
        value: Option<&Value>,
    ) -> Result<(), PatchError> {
        let key = Self::custom_key(doc, urn);
        let ext = self.container(doc, Some(&key))?;
        let find = |o: &Obj, name: &str| {
            o.keys()
                .find(|k| k.eq_ignore_ascii_case(name))
                .cloned()
                .unwrap_or_else(|| name.to_string())
        };
        let attr_key = find(ext, attr);
        let value = value.cloned().map(strip_nulls);
        let shown = format!("{key}:{attr}");
        match sub {
            None => match (op, value) {
                (OpKind::Remove, _) | (OpKind::Replace, None | Some(Value::Null)) => {
                    ext.shift_remove(&attr_key);
                }
                (_, None | Some(Value::Null)) => {}
                (OpKind::Add, Some(Value::Array(new)))
                    if ext.get(&attr_key).is_some_and(Value::is_array) =>
                {
                    let arr = array_of(ext, &attr_key)?;
                    for item in new {
                        if !arr.contains(&item) {
                            arr.push(item);
                        }
                    }
                }
                (OpKind::Add, Some(Value::Object(new)))
                    if ext.get(&attr_key).is_some_and(Value::is_object) =>
                {
                    let obj = object_of(ext, &attr_key, &shown)?;
                    for (k, v) in new {
                        let k = find(obj, &k);
                        obj.insert(k, v);
                    }
                }
                (_, Some(v)) => {
                    ext.insert(attr_key, v);
                }
            },
            Some(sub) => {
                match (op, value) {
                    (OpKind::Remove, _) | (OpKind::Replace, None | Some(Value::Null)) => {
                        if let Some(Value::Object(o)) = ext.get_mut(&attr_key) {
                            let sub_key = find(o, sub);
                            o.shift_remove(&sub_key);
                        }
                    }
                    (_, None | Some(Value::Null)) => {}
                    (_, Some(v)) => {
                        let obj = object_of(ext, &attr_key, &shown)?;
                        let sub_key = find(obj, sub);
                        obj.insert(sub_key, v);
                    }
                }
                drop_if_empty(ext, &attr_key);
            }
        }
        Ok(())
    }

    /// The object holding the attribute: the document, or the extension
    /// object under its URN (created when absent; `sync_schemas` drops it again if it stays empty).
    fn container<'d>(
        &mut self,
        doc: &'d mut Obj,
        ext: Option<&str>,
    ) -> Result<&'d mut Obj, PatchError> {
        let Some(urn) = ext else {
            return Ok(doc);
        };
        if !self.touched_ext.iter().any(|t| t == urn) {
            self.touched_ext.push(urn.to_string());
        }
        if !doc.contains_key(urn) {
            // Adopt a non-canonical spelling of the URN, if stored.
            if let Some(k) = doc.keys().find(|k| k.eq_ignore_ascii_case(urn)).cloned() {
                if let Some(v) = doc.shift_remove(&k) {
                    doc.insert(urn.to_string(), v);
                }
            }
        }
        match doc
            .entry(urn.to_string())
            .or_insert_with(|| Value::Object(Map::new()))
        {
            Value::Object(o) => Ok(o),
            _ => Err(PatchError::InvalidValue(format!(
                "stored extension '{urn}' is not an object"
            ))),
        }
    }

    /// Adds/removes extension URNs in `schemas` for the extensions this
    /// request touched, and drops extension objects left empty.
    fn sync_schemas(&self, doc: &mut Obj) {
        for urn in &self.touched_ext {
            let non_empty = doc
                .get(urn.as_str())
                .and_then(Value::as_object)
                .is_some_and(|o| !o.is_empty());
            if !non_empty {
                doc.shift_remove(urn.as_str());
            }
            if let Some(Value::Array(schemas)) = doc.get_mut("schemas") {
                let pos = schemas
                    .iter()
                    .position(|s| s.as_str().is_some_and(|s| s.eq_ignore_ascii_case(urn)));
                match (non_empty, pos) {
                    (true, None) => schemas.push(Value::String(urn.clone())),
                    (false, Some(i)) => {
                        schemas.remove(i);
                    }
                    _ => {}
                }
            }
        }
    }

    fn apply_path(
        &mut self,
        doc: &mut Obj,
        op: OpKind,
        path: &PatchPath,
        value: Option<&Value>,
    ) -> Result<(), PatchError> {
        let shown = show_path(path);
        if is_members(self.kind, &path.attr) {
            return match self.kind {
                ResourceKind::Group => self.members_op(op, path, value, &shown),
                ResourceKind::User => Err(PatchError::Mutability(format!(
                    "'{shown}' cannot be modified on a user: change the group's members instead"
                ))),
            };
        }
        if path
            .attr
            .schema
            .as_deref()
            .is_some_and(ResourceKind::is_server_owned)
        {
            return Err(PatchError::Mutability(format!(
                "'{shown}' is written by the server only"
            )));
        }
        if path.attr.schema.is_none() && path.attr.attr.eq_ignore_ascii_case("schemas") {
            return Err(PatchError::InvalidPath(format!(
                "invalid path '{shown}': 'schemas' is not an attribute; the server maintains it"
            )));
        }
        if path.filter.is_none() && path.sub_attr.is_none() {
            let full = path.attr.to_string();
            if let Some(ext) = self.kind.extension(&full) {
                return self.whole_extension(doc, op, ext.id, value);
            }
            // `urn:a:2.0:User` parses as attribute `User` of `urn:a:2.0`; it
            // is the whole extension when the resource holds or declares it.
            if path.attr.sub_attr.is_none()
                && self.kind.is_custom_extension(&full)
                && holds_extension(doc, &full)
            {
                return self.custom_whole(doc, op, &full, value);
            }
        }
        if let Some(urn) = path.attr.schema.as_deref() {
            if self.kind.is_custom_extension(urn) {
                if path.filter.is_some() {
                    return Err(PatchError::InvalidPath(format!(
                        "invalid path '{shown}': a value filter needs a schema, and extension '{urn}' has none"
                    )));
                }
                if path.attr.sub_attr.is_some() && path.sub_attr.is_some() {
                    return Err(PatchError::InvalidPath(format!(
                        "invalid path '{shown}': an attribute path has at most one sub-attribute"
                    )));
                }
                let sub = path.attr.sub_attr.as_deref().or(path.sub_attr.as_deref());
                return self.custom_op(doc, op, urn, &path.attr.attr, sub, value);
            }
        }
        let r = match self.kind.resolve(&path.attr) {
            Ok(r) => r,
            // An attribute a published schema does not define is dropped,
            // as POST and PUT drop it ([`crate::unknown`]).
            Err(ResolveError::UnknownAttribute(_)) => {
                let parent = AttrPath {
                    sub_attr: None,
                    ..path.attr.clone()
                };
                if path.attr.sub_attr.is_some()
                    && self
                        .kind
                        .resolve(&parent)
                        .is_ok_and(|r| r.attr.sub_attributes.is_empty())
                {
                    return Err(PatchError::InvalidPath(format!(
                        "invalid path '{shown}': '{parent}' has no sub-attributes"
                    )));
                }
                self.ignore(shown);
                return Ok(());
            }
            Err(e) => {
                return Err(PatchError::InvalidPath(format!(
                    "invalid path '{shown}': {e}"
                )))
            }
        };
        let attr = r.attr;
        let elem_sub = match &path.sub_attr {
            None => None,
            Some(s) => match attr.sub(s) {
                Some(sub) => Some(sub),
                None if attr.sub_attributes.is_empty() => {
                    return Err(PatchError::InvalidPath(format!(
                        "invalid path '{shown}': '{}' has no sub-attributes",
                        attr.name
                    )))
                }
                None => {
                    self.ignore(shown);
                    return Ok(());
                }
            },
        };
        let leaf = elem_sub.or(r.sub).unwrap_or(attr);
        if attr.mutability == Mutability::ReadOnly || leaf.mutability == Mutability::ReadOnly {
            return Err(PatchError::Mutability(format!(
                "attribute '{shown}' is readOnly and cannot be modified"
            )));
        }
        if let Some(f) = &path.filter {
            if !(attr.multi_valued && attr.kind == AttrType::Complex) {
                return Err(PatchError::InvalidPath(format!(
                    "invalid path '{shown}': a value filter needs a multi-valued complex attribute"
                )));
            }
            validate_element(f, attr).map_err(|e| {
                PatchError::InvalidPath(format!("invalid filter in path '{shown}': {e}"))
            })?;
        }
        // null is "unassigned" (RFC 7643 §2.5).
        let (op, value) = match (op, value) {
            (OpKind::Add, None | Some(Value::Null)) => return Ok(()),
            (OpKind::Replace, None | Some(Value::Null)) => (OpKind::Remove, None),
            (OpKind::Remove, Some(Value::Null)) => (OpKind::Remove, None),
            (op, v) => (op, v),
        };
        if op == OpKind::Remove && attr.required && r.sub.is_none() && path.filter.is_none() {
            return Err(PatchError::InvalidValue(format!(
                "attribute '{shown}' is required and cannot be removed"
            )));
        }
        if op == OpKind::Remove && r.extension.is_some_and(|urn| !doc.contains_key(urn)) {
            return Ok(());
        }
        let container = self.container(doc, r.extension)?;
        let name = attr.name;

        if let Some(filter) = &path.filter {
            return filtered(container, op, attr, filter, elem_sub, value, &shown);
        }
        match (value, op) {
            (Some(v), OpKind::Add | OpKind::Replace) => match r.sub {
                Some(sub) if attr.multi_valued => {
                    // `emails.value` without a filter: every element.
                    let v = normalize_single(sub, v, &shown)?;
                    let arr = array_of(container, name)?;
                    if arr.is_empty() {
                        let mut e = Map::new();
                        e.insert(sub.name.to_string(), v);
                        arr.push(Value::Object(e));
                    } else {
                        for e in arr.iter_mut() {
                            if let Value::Object(o) = e {
                                o.insert(sub.name.to_string(), v.clone());
                            }
                        }
                    }
                    Ok(())
                }
                Some(sub) => {
                    let v = normalize_single(sub, v, &shown)?;
                    let obj = object_of(container, name, &shown)?;
                    check_immutable(sub, obj.get(sub.name), Some(&v), &shown)?;
                    obj.insert(sub.name.to_string(), v);
                    Ok(())
                }
                None if attr.multi_valued => {
                    let Value::Array(items) = normalize_value(attr, v, &shown)? else {
                        return Ok(());
                    };
                    if op == OpKind::Replace {
                        if items.is_empty() {
                            container.shift_remove(name);
                        } else {
                            container.insert(name.to_string(), Value::Array(items));
                        }
                        return Ok(());
                    }
                    let arr = array_of(container, name)?;
                    let mut touched = Vec::new();
                    for item in items {
                        if !arr.contains(&item) {
                            arr.push(item);
                            touched.push(arr.len() - 1);
                        }
                    }
                    fix_primary(arr, &touched);
                    if arr.is_empty() {
                        container.shift_remove(name);
                    }
                    Ok(())
                }
                None if attr.kind == AttrType::Complex => {
                    // RFC 7644 §3.5.2.1/§3.5.2.3: the sub-attributes given
                    // replace or add; those not given are left unchanged.
                    let Value::Object(given) = normalize_value(attr, v, &shown)? else {
                        return Ok(());
                    };
                    let obj = object_of(container, name, &shown)?;
                    for (k, sv) in given {
                        if sv.is_null() {
                            obj.shift_remove(&k);
                        } else {
                            obj.insert(k, sv);
                        }
                    }
                    if obj.is_empty() {
                        container.shift_remove(name);
                    }
                    Ok(())
                }
                None => {
                    let v = normalize_value(attr, v, &shown)?;
                    check_immutable(attr, container.get(name), Some(&v), &shown)?;
                    container.insert(name.to_string(), v);
                    Ok(())
                }
            },
            (given, _) => {
                // Remove.
                match r.sub {
                    Some(sub) => {
                        let Some(current) = container.get_mut(name) else {
                            return Ok(());
                        };
                        match current {
                            Value::Array(arr) => {
                                for e in arr.iter_mut() {
                                    if let Value::Object(o) = e {
                                        check_immutable(sub, o.get(sub.name), None, &shown)?;
                                        o.shift_remove(sub.name);
                                    }
                                }
                                arr.retain(|e| e.as_object().is_none_or(|o| !o.is_empty()));
                            }
                            Value::Object(o) => {
                                check_immutable(sub, o.get(sub.name), None, &shown)?;
                                o.shift_remove(sub.name);
                            }
                            _ => {}
                        }
                        drop_if_empty(container, name);
                        Ok(())
                    }
                    None => {
                        if let (true, Some(given)) = (attr.multi_valued, given) {
                            let Value::Array(remove) = normalize_value(attr, given, &shown)? else {
                                return Ok(());
                            };
                            if let Some(Value::Array(arr)) = container.get_mut(name) {
                                arr.retain(|e| !remove.iter().any(|r| same_element(e, r)));
                            }
                            drop_if_empty(container, name);
                            return Ok(());
                        }
                        check_immutable(attr, container.get(name), None, &shown)?;
                        container.shift_remove(name);
                        Ok(())
                    }
                }
            }
        }
    }

    /// A path naming a whole extension (`urn:...:enterprise:2.0:User`):
    /// `remove` drops it, `add`/`replace` merge the given object into it.
    fn whole_extension(
        &mut self,
        doc: &mut Obj,
        op: OpKind,
        urn: &'static str,
        value: Option<&Value>,
    ) -> Result<(), PatchError> {
        match (op, value) {
            (OpKind::Remove, _) | (OpKind::Replace, None | Some(Value::Null)) => {
                self.container(doc, Some(urn))?.clear();
                Ok(())
            }
            (_, None | Some(Value::Null)) => Ok(()),
            (op, Some(v)) => {
                let mut wrapped = Map::new();
                wrapped.insert(urn.to_string(), v.clone());
                self.apply_pathless(doc, op, Some(&Value::Object(wrapped)))
            }
        }
    }

    /// Operations on a Group's `members`, which become [`MemberOp`]s.
    fn members_op(
        &mut self,
        op: OpKind,
        path: &PatchPath,
        value: Option<&Value>,
        shown: &str,
    ) -> Result<(), PatchError> {
        if path.attr.sub_attr.is_some() || path.sub_attr.is_some() {
            return Err(PatchError::Mutability(format!(
                "'{shown}' cannot be modified: add or remove the member instead"
            )));
        }
        let value = value.filter(|v| !v.is_null());
        match (op, &path.filter) {
            (OpKind::Add, None) => {
                let refs = member_refs(value, shown)?;
                if !refs.is_empty() {
                    self.member_ops.push(MemberOp::Add(refs));
                }
            }
            (OpKind::Replace, None) => {
                let refs = member_refs(value, shown)?;
                self.member_ops.push(MemberOp::RemoveAll);
                if !refs.is_empty() {
                    self.member_ops.push(MemberOp::Add(refs));
                }
            }
            (OpKind::Remove, None) => match value {
                None => self.member_ops.push(MemberOp::RemoveAll),
                Some(v) => {
                    let ids: Vec<String> = member_refs(Some(v), shown)?
                        .into_iter()
                        .map(|m| m.value)
                        .collect();
                    if !ids.is_empty() {
                        self.member_ops.push(MemberOp::Remove(ids));
                    }
                }
            },
            (OpKind::Remove, Some(f)) => {
                let mut ids = Vec::new();
                if !member_ids_from_filter(f, &mut ids) {
                    return Err(PatchError::InvalidFilter(format!(
                        "unsupported filter in path '{shown}': members can only be selected with 'value eq \"id\"' conditions joined by 'or'"
                    )));
                }
                dedup(&mut ids);
                self.member_ops.push(MemberOp::Remove(ids));
            }
            (_, Some(_)) => {
                return Err(PatchError::InvalidFilter(format!(
                    "unsupported path '{shown}': a value filter on members is only supported with 'remove'"
                )))
            }
        }
        Ok(())
    }
}

/// Whether `path` (from a path-less value) names a readOnly attribute whose
/// stored value already equals `v`.
fn unchanged_read_only(doc: &Obj, r: &Resolved, path: &PatchPath, v: &Value) -> bool {
    if r.attr.mutability != Mutability::ReadOnly || r.sub.is_some() || path.filter.is_some() {
        return false;
    }
    let container = match r.extension {
        None => Some(doc),
        Some(urn) => doc.get(urn).and_then(Value::as_object),
    };
    container.and_then(|c| c.get(r.attr.name)) == Some(v)
}

/// Whether `doc` holds an object under extension `urn`, or lists it in
/// `schemas` (case-insensitively).
fn holds_extension(doc: &Obj, urn: &str) -> bool {
    doc.iter()
        .any(|(k, v)| k.eq_ignore_ascii_case(urn) && v.is_object())
        || doc
            .get("schemas")
            .and_then(Value::as_array)
            .is_some_and(|list| {
                list.iter()
                    .any(|s| s.as_str().is_some_and(|s| s.eq_ignore_ascii_case(urn)))
            })
}

/// A path naming the whole attribute.
fn whole(attr: AttrPath) -> PatchPath {
    PatchPath {
        attr,
        filter: None,
        sub_attr: None,
    }
}

/// The array at `name`, created empty when absent. A stored non-array is
/// an error rather than overwritten: data is never silently dropped.
fn array_of<'o>(obj: &'o mut Obj, name: &str) -> Result<&'o mut Vec<Value>, PatchError> {
    obj.entry(name.to_string())
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or_else(|| {
            PatchError::InvalidValue(format!("stored value of '{name}' is not an array"))
        })
}

/// The object at `name`, created empty when absent.
fn object_of<'o>(obj: &'o mut Obj, name: &str, shown: &str) -> Result<&'o mut Obj, PatchError> {
    match obj
        .entry(name.to_string())
        .or_insert_with(|| Value::Object(Map::new()))
    {
        Value::Object(o) => Ok(o),
        _ => Err(PatchError::InvalidValue(format!(
            "stored value of '{shown}' is not an object"
        ))),
    }
}

/// Removes `name` when it is an empty array or object.
fn drop_if_empty(obj: &mut Obj, name: &str) {
    let empty = match obj.get(name) {
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        _ => false,
    };
    if empty {
        obj.shift_remove(name);
    }
}

/// RFC 7644: an immutable attribute may be set when unassigned, never
/// changed or removed afterwards.
fn check_immutable(
    def: &Attribute,
    current: Option<&Value>,
    new: Option<&Value>,
    shown: &str,
) -> Result<(), PatchError> {
    if def.mutability != Mutability::Immutable {
        return Ok(());
    }
    match current {
        Some(c) if !c.is_null() && Some(c) != new => Err(PatchError::Mutability(format!(
            "attribute '{shown}' is immutable and already has a value"
        ))),
        _ => Ok(()),
    }
}

/// Whether `stored` is the element named by `given` in a remove-with-value:
/// equal `value` sub-attributes when `given` has one, else equal elements.
fn same_element(stored: &Value, given: &Value) -> bool {
    match given.get("value") {
        Some(v) => stored.get("value") == Some(v),
        None => stored == given,
    }
}

/// RFC 7643 §2.4: at most one element is primary. When an element written
/// by this operation is primary, every other one stops being primary.
fn fix_primary(arr: &mut [Value], touched: &[usize]) {
    let winner = touched
        .iter()
        .rev()
        .copied()
        .find(|&i| arr.get(i).and_then(|e| e.get("primary")) == Some(&Value::Bool(true)));
    let Some(winner) = winner else {
        return;
    };
    for (i, e) in arr.iter_mut().enumerate() {
        if i == winner {
            continue;
        }
        if let Some(p) = e.get_mut("primary") {
            if *p == Value::Bool(true) {
                *p = Value::Bool(false);
            }
        }
    }
}

/// Builds the element created by `add`/`replace` on an unmatched value
/// filter: the `eq` conditions of an `and`-only filter become sub-attribute
/// values. `false` when the filter has any other shape.
fn seed_from_filter(filter: &Filter, parent: &Attribute, out: &mut Obj) -> bool {
    match filter {
        Filter::And(a, b) => seed_from_filter(a, parent, out) && seed_from_filter(b, parent, out),
        Filter::Compare(p, CompareOp::Eq, v) if p.schema.is_none() && p.sub_attr.is_none() => {
            let Some(def) = parent.sub(&p.attr) else {
                return false;
            };
            let raw = match v {
                CompValue::String(s) => Value::String(s.clone()),
                CompValue::Bool(b) => Value::Bool(*b),
                CompValue::Number(n) => Value::Number(n.clone()),
                CompValue::Null => return false,
            };
            match normalize_single(def, &raw, def.name) {
                Ok(v) => {
                    out.insert(def.name.to_string(), v);
                    true
                }
                Err(_) => false,
            }
        }
        _ => false,
    }
}

/// Operations on `attr[filter]` and `attr[filter].sub`.
fn filtered(
    container: &mut Obj,
    op: OpKind,
    attr: &'static Attribute,
    filter: &Filter,
    sub: Option<&'static Attribute>,
    value: Option<&Value>,
    shown: &str,
) -> Result<(), PatchError> {
    let name = attr.name;
    let mut matched = Vec::new();
    if let Some(Value::Array(arr)) = container.get(name) {
        for (i, e) in arr.iter().enumerate() {
            let hit = matches_element(filter, attr, e).map_err(|err| {
                PatchError::InvalidPath(format!("invalid filter in path '{shown}': {err}"))
            })?;
            if hit {
                matched.push(i);
            }
        }
    }
    let new_value = match (op, value, sub) {
        (OpKind::Remove, _, _) => None,
        (_, Some(v), Some(s)) => Some(normalize_single(s, v, shown)?),
        (_, Some(v), None) => Some(normalize_element(attr, v, shown)?),
        (_, None, _) => None,
    };
    let arr = array_of(container, name)?;
    let mut touched = Vec::new();
    match (op, new_value) {
        (OpKind::Remove, _) => match sub {
            None => {
                let mut i = 0;
                arr.retain(|_| {
                    let keep = !matched.contains(&i);
                    i += 1;
                    keep
                });
            }
            Some(s) => {
                for &i in &matched {
                    if let Some(Value::Object(o)) = arr.get_mut(i) {
                        check_immutable(s, o.get(s.name), None, shown)?;
                        o.shift_remove(s.name);
                    }
                }
                arr.retain(|e| e.as_object().is_none_or(|o| !o.is_empty()));
            }
        },
        (_, None) => {}
        (op, Some(v)) if matched.is_empty() => {
            if op == OpKind::Replace && sub.is_none() {
                drop_if_empty(container, name);
                return Err(PatchError::NoTarget(format!(
                    "no value of '{name}' matches the path '{shown}'"
                )));
            }
            let mut seed = Map::new();
            if !seed_from_filter(filter, attr, &mut seed) {
                drop_if_empty(container, name);
                return Err(PatchError::NoTarget(format!(
                    "no value of '{name}' matches the path '{shown}', and its filter cannot describe a new one"
                )));
            }
            match (sub, v) {
                (Some(s), v) => {
                    seed.insert(s.name.to_string(), v);
                }
                (None, Value::Object(given)) => {
                    for (k, gv) in given {
                        if !gv.is_null() {
                            seed.insert(k, gv);
                        }
                    }
                }
                (None, _) => {}
            }
            arr.push(Value::Object(seed));
            touched.push(arr.len() - 1);
        }
        (op, Some(v)) => {
            for &i in &matched {
                let Some(e) = arr.get_mut(i) else {
                    continue;
                };
                match (op, sub, &v) {
                    (_, Some(s), v) => {
                        if let Value::Object(o) = e {
                            check_immutable(s, o.get(s.name), Some(v), shown)?;
                            if v.is_null() {
                                o.shift_remove(s.name);
                            } else {
                                o.insert(s.name.to_string(), v.clone());
                            }
                        }
                    }
                    (OpKind::Add, None, Value::Object(given)) => {
                        if let Value::Object(o) = e {
                            for (k, gv) in given {
                                if gv.is_null() {
                                    o.shift_remove(k);
                                } else {
                                    o.insert(k.clone(), gv.clone());
                                }
                            }
                        }
                    }
                    (_, None, v) => *e = strip_nulls(v.clone()),
                }
                touched.push(i);
            }
        }
    }
    fix_primary(arr, &touched);
    drop_if_empty(container, name);
    Ok(())
}

/// Removes null members of an object (unassigned sub-attributes).
fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(o.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
    }
}

fn dedup(ids: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(id.clone()));
}

/// Collects the ids of `value eq "id" [or value eq "id2" ...]`; `false` for
/// any other filter shape.
fn member_ids_from_filter(f: &Filter, out: &mut Vec<String>) -> bool {
    match f {
        Filter::Or(a, b) => member_ids_from_filter(a, out) && member_ids_from_filter(b, out),
        Filter::Compare(p, CompareOp::Eq, CompValue::String(id))
            if p.schema.is_none()
                && p.sub_attr.is_none()
                && p.attr.eq_ignore_ascii_case("value") =>
        {
            out.push(id.clone());
            true
        }
        _ => false,
    }
}

/// Parses the members named by a value: an array of member objects or one
/// object (a bare id string is accepted too).
fn member_refs(value: Option<&Value>, shown: &str) -> Result<Vec<MemberRef>, PatchError> {
    let items: Vec<&Value> = match value {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.iter().filter(|v| !v.is_null()).collect(),
        Some(v) => vec![v],
    };
    let mut refs: Vec<MemberRef> = Vec::with_capacity(items.len());
    for item in items {
        let m = match item {
            Value::String(s) if !s.is_empty() => MemberRef {
                value: s.clone(),
                member_type: None,
                display: None,
            },
            _ => member_ref(&normalize_member(item, shown)?),
        };
        if !refs.iter().any(|r| r.value == m.value) {
            refs.push(m);
        }
    }
    Ok(refs)
}

fn member_ref(m: &Obj) -> MemberRef {
    let s = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_string);
    MemberRef {
        value: s("value").unwrap_or_default(),
        member_type: s("type"),
        display: s("display"),
    }
}

/// One `members` entry in canonical form: `{value, type?, display?, $ref?}`.
/// `value` is required and must be a non-empty string; `type` is `User` or
/// `Group` in canonical case; other keys are dropped (membership rows store
/// nothing else).
fn normalize_member(item: &Value, shown: &str) -> Result<Obj, PatchError> {
    let Value::Object(o) = item else {
        return Err(PatchError::InvalidValue(format!(
            "each member in '{shown}' must be an object with a 'value', got {item}"
        )));
    };
    let mut out = Map::new();
    for key in ["value", "type", "display", "$ref"] {
        match get_key(o, key) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => {
                let s = if key == "type" {
                    match ["User", "Group"].iter().find(|c| c.eq_ignore_ascii_case(s)) {
                        Some(c) => c.to_string(),
                        None => {
                            return Err(PatchError::InvalidValue(format!(
                                "member type '{s}' in '{shown}' must be 'User' or 'Group'"
                            )))
                        }
                    }
                } else {
                    s.clone()
                };
                out.insert(key.to_string(), Value::String(s));
            }
            Some(other) => {
                return Err(PatchError::InvalidValue(format!(
                    "member '{key}' in '{shown}' must be a string, got {other}"
                )))
            }
        }
    }
    match out.get("value") {
        Some(Value::String(s)) if !s.is_empty() => Ok(out),
        _ => Err(PatchError::InvalidValue(format!(
            "each member in '{shown}' needs a non-empty string 'value', got {item}"
        ))),
    }
}

/// Normalises a whole resource body for POST/PUT (and is the rule PATCH
/// applies to the values it writes): canonical attribute names (matched
/// case-insensitively), booleans sent as `"True"`/`"false"` made booleans,
/// a single object for a multi-valued attribute wrapped in an array, type
/// checks, extension objects under their canonical URN, `null`s dropped
/// (unassigned), and for Groups `members` entries in canonical form.
///
/// Attributes no schema defines are dropped by [`crate::unknown`]'s rule and
/// returned, so the service can log them; custom extension objects are kept
/// as sent. On error `doc` is unchanged. readOnly values (`id`, `meta`) are
/// left for the caller to overwrite.
pub fn normalize(kind: ResourceKind, doc: &mut Value) -> Result<Vec<String>, PatchError> {
    let Value::Object(map) = &*doc else {
        return Err(PatchError::InvalidSyntax(
            "the resource must be a json object".into(),
        ));
    };
    let mut out = Map::new();
    for (key, v) in map {
        if key.eq_ignore_ascii_case("schemas") {
            out.insert("schemas".into(), v.clone());
            continue;
        }
        if let Some(ext) = kind.extension(key) {
            let eobj = match v {
                Value::Object(o) => o,
                Value::Null => continue,
                _ => {
                    return Err(PatchError::InvalidValue(format!(
                        "extension '{}' must be an object",
                        ext.id
                    )))
                }
            };
            let mut eout = Map::new();
            for (k2, v2) in eobj {
                match ext.attribute(k2) {
                    Some(def) => {
                        let shown = format!("{}:{}", ext.id, def.name);
                        let nv = strip_nulls(normalize_value(def, v2, &shown)?);
                        if !nv.is_null() {
                            eout.insert(def.name.to_string(), nv);
                        }
                    }
                    None => {
                        eout.insert(k2.clone(), v2.clone());
                    }
                }
            }
            if !eout.is_empty() {
                out.insert(ext.id.to_string(), Value::Object(eout));
            }
            continue;
        }
        if kind.is_custom_extension(key) {
            match v {
                Value::Null => continue,
                Value::Object(o) => {
                    let kept = strip_nulls(Value::Object(o.clone()));
                    if kept.as_object().is_some_and(|o| !o.is_empty()) {
                        out.insert(key.clone(), kept);
                    }
                }
                _ => {
                    return Err(PatchError::InvalidValue(format!(
                        "extension '{key}' must be an object"
                    )))
                }
            }
            continue;
        }
        if kind == ResourceKind::Group && key.eq_ignore_ascii_case("members") {
            let items: Vec<&Value> = match v {
                Value::Null => continue,
                Value::Array(a) => a.iter().filter(|v| !v.is_null()).collect(),
                other => vec![other],
            };
            let members = items
                .into_iter()
                .map(|m| normalize_member(m, "members").map(Value::Object))
                .collect::<Result<Vec<_>, _>>()?;
            out.insert("members".into(), Value::Array(members));
            continue;
        }
        match common_attribute(key).or_else(|| kind.core_schema().attribute(key)) {
            Some(def) => {
                let nv = strip_nulls(normalize_value(def, v, def.name)?);
                if !nv.is_null() {
                    out.insert(def.name.to_string(), nv);
                }
            }
            None => {
                out.insert(key.clone(), v.clone());
            }
        }
    }
    let ignored = crate::unknown::strip(kind, &mut out);
    *doc = Value::Object(out);
    Ok(ignored)
}

/// Describes a JSON value's type for messages.
fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A client value for attribute `def` in stored form: an array for a
/// multi-valued attribute (a single element is wrapped; nulls dropped;
/// at most one `primary`), else as [`normalize_single`].
fn normalize_value(def: &Attribute, v: &Value, shown: &str) -> Result<Value, PatchError> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    if !def.multi_valued {
        return normalize_single(def, v, shown);
    }
    let items: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        Value::Object(_) => vec![v],
        _ if def.kind != AttrType::Complex => vec![v],
        _ => {
            return Err(PatchError::InvalidValue(format!(
                "attribute '{shown}' expects an array of objects, got {}",
                type_of(v)
            )))
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        if item.is_null() {
            continue;
        }
        let n = normalize_single(def, item, shown)?;
        out.push(strip_nulls(n));
    }
    let primaries = out
        .iter()
        .filter(|e| e.get("primary") == Some(&Value::Bool(true)))
        .count();
    if primaries > 1 {
        return Err(PatchError::InvalidValue(format!(
            "at most one value of '{shown}' may be primary"
        )));
    }
    Ok(Value::Array(out))
}

/// One element of a multi-valued complex attribute, as written by
/// `attr[filter]` operations: an object, or a one-element array of one.
fn normalize_element(def: &Attribute, v: &Value, shown: &str) -> Result<Value, PatchError> {
    match v {
        Value::Array(a) if a.len() == 1 => match a.first() {
            Some(one) => normalize_element(def, one, shown),
            None => Ok(Value::Null),
        },
        Value::Object(_) => normalize_single(def, v, shown),
        _ => Err(PatchError::InvalidValue(format!(
            "'{shown}' expects an object, got {}",
            type_of(v)
        ))),
    }
}

/// One value of `def` (an element, for a multi-valued attribute). Complex
/// values keep `null` sub-attributes so that a merge can clear them; the
/// callers strip them where the value is stored whole.
fn normalize_single(def: &Attribute, v: &Value, shown: &str) -> Result<Value, PatchError> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    let bad = || {
        PatchError::InvalidValue(format!(
            "attribute '{shown}' expects {}, got {} {v}",
            expected(def),
            type_of(v)
        ))
    };
    match def.kind {
        AttrType::Complex => match v {
            Value::Object(o) => {
                let mut out = Map::new();
                for (k, sv) in o {
                    match def.sub(k) {
                        Some(sub) => {
                            let shown = format!("{shown}.{}", sub.name);
                            out.insert(sub.name.to_string(), normalize_single(sub, sv, &shown)?);
                        }
                        None => {
                            out.insert(k.clone(), sv.clone());
                        }
                    }
                }
                Ok(Value::Object(out))
            }
            // Entra sends `manager` as a bare id or as a one-element array.
            Value::String(_) if !def.multi_valued && def.sub("value").is_some() => {
                let mut out = Map::new();
                out.insert("value".into(), v.clone());
                Ok(Value::Object(out))
            }
            Value::Array(a) if !def.multi_valued && a.len() == 1 => match a.first() {
                Some(one) => normalize_single(def, one, shown),
                None => Err(bad()),
            },
            _ => Err(bad()),
        },
        AttrType::Boolean => match v {
            Value::Bool(_) => Ok(v.clone()),
            Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Ok(Value::Bool(true)),
            Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Ok(Value::Bool(false)),
            _ => Err(bad()),
        },
        AttrType::Integer => match v {
            Value::Number(n) if n.is_i64() || n.is_u64() => Ok(v.clone()),
            Value::String(s) => s.trim().parse::<i64>().map(Value::from).map_err(|_| bad()),
            _ => Err(bad()),
        },
        AttrType::Decimal => match v {
            Value::Number(_) => Ok(v.clone()),
            Value::String(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(bad),
            _ => Err(bad()),
        },
        AttrType::String | AttrType::Reference | AttrType::Binary | AttrType::DateTime => match v {
            Value::String(_) => Ok(v.clone()),
            _ => Err(bad()),
        },
    }
}

fn expected(def: &Attribute) -> &'static str {
    match def.kind {
        AttrType::Complex => "an object",
        AttrType::Boolean => "a boolean",
        AttrType::Integer => "an integer",
        AttrType::Decimal => "a number",
        _ => "a string",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::ENTERPRISE_URN;
    use serde_json::json;

    const USER: ResourceKind = ResourceKind::User;
    const GROUP: ResourceKind = ResourceKind::Group;

    fn body(ops: Value) -> Value {
        json!({"schemas": [PATCH_OP_URN], "Operations": ops})
    }

    fn run(
        kind: ResourceKind,
        doc: &Value,
        ops: Value,
    ) -> Result<(Value, PatchOutcome), PatchError> {
        let ops = parse_request(&body(ops))?;
        let mut out = doc.clone();
        let outcome = apply(kind, &mut out, &ops)?;
        Ok((out, outcome))
    }

    /// Applies `ops` to the User `before` and expects `after`.
    fn check(before: Value, ops: Value, after: Value) {
        let (got, outcome) = run(USER, &before, ops.clone())
            .map_err(|e| format!("{ops}: {e}"))
            .expect("applies");
        assert_eq!(got, after, "ops: {ops}");
        assert_eq!(outcome.changed, before != after, "changed flag for {ops}");
    }

    /// Expects `ops` on `before` to fail with `scim_type`, leaving it as is.
    fn check_err(kind: ResourceKind, before: Value, ops: Value, scim_type: &str) -> String {
        let parsed = match parse_request(&body(ops.clone())) {
            Ok(p) => p,
            Err(e) => {
                assert_eq!(e.scim_type().as_str(), scim_type, "{ops}: {e}");
                return e.to_string();
            }
        };
        let mut doc = before.clone();
        let e = apply(kind, &mut doc, &parsed).expect_err("must fail");
        assert_eq!(e.scim_type().as_str(), scim_type, "{ops}: {e}");
        assert_eq!(doc, before, "document untouched on error");
        e.to_string()
    }

    /// Member operations produced by `ops` on a Group.
    fn member_ops(ops: Value) -> Vec<MemberOp> {
        let doc = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "id": "g1", "displayName": "Eng"});
        let (got, outcome) = run(GROUP, &doc, ops.clone())
            .map_err(|e| format!("{ops}: {e}"))
            .expect("applies");
        assert_eq!(got, doc, "members never touch the document");
        assert_eq!(outcome.changed, !outcome.member_ops.is_empty());
        outcome.member_ops
    }

    fn m(id: &str) -> MemberRef {
        MemberRef {
            value: id.into(),
            member_type: None,
            display: None,
        }
    }

    fn base() -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "id": "u1",
            "userName": "bjensen",
            "active": true,
            "name": {"givenName": "Barbara", "familyName": "Jensen"},
            "emails": [{"value": "b@work.example", "type": "work", "primary": true}],
            "meta": {"resourceType": "User"}
        })
    }

    fn with(mut doc: Value, key: &str, v: Value) -> Value {
        if let Some(o) = doc.as_object_mut() {
            if v.is_null() {
                o.shift_remove(key);
            } else {
                o.insert(key.into(), v);
            }
        }
        doc
    }

    #[test]
    fn parse_request_checks_shape_and_accepts_capitalised_ops() {
        let ops = parse_request(&json!({
            "schemas": [PATCH_OP_URN],
            "Operations": [{"op": "Replace", "path": "active", "value": "False"}, {"op": "REMOVE", "path": "title"}, {"op": "add", "path": "", "value": {}}]
        }))
        .expect("parses");
        assert_eq!(ops.len(), 3);
        assert_eq!(ops[0].op, OpKind::Replace);
        assert_eq!(ops[1].op, OpKind::Remove);
        assert!(ops[2].path.is_none());
        let bad = |b: Value| parse_request(&b).expect_err("rejects").scim_type().as_str();
        assert_eq!(
            bad(json!({"Operations": [{"op": "add", "value": {}}]})),
            "invalidSyntax"
        );
        assert_eq!(
            bad(json!({"schemas": [PATCH_OP_URN], "Operations": []})),
            "invalidSyntax"
        );
        assert_eq!(
            bad(json!({"schemas": [PATCH_OP_URN], "Operations": [{"op": "move", "path": "x"}]})),
            "invalidSyntax"
        );
        assert_eq!(
            bad(
                json!({"schemas": [PATCH_OP_URN], "Operations": [{"op": "add", "path": "emails[type eq]"  , "value": 1}]})
            ),
            "invalidPath"
        );
        assert_eq!(
            bad(
                json!({"schemas": [PATCH_OP_URN], "Operations": [{"op": "replace", "path": "title"}]})
            ),
            "invalidValue"
        );
    }

    #[test]
    fn add_replace_remove_with_simple_paths() {
        check(
            base(),
            json!([{"op": "add", "path": "title", "value": "Boss"}]),
            with(base(), "title", json!("Boss")),
        );
        check(
            base(),
            json!([{"op": "replace", "path": "userName", "value": "babs"}]),
            with(base(), "userName", json!("babs")),
        );
        check(
            base(),
            json!([{"op": "remove", "path": "active"}]),
            with(base(), "active", Value::Null),
        );
        check(
            base(),
            json!([{"op": "remove", "path": "nickName"}]),
            base(),
        );
        check(
            base(),
            json!([{"op": "replace", "path": "USERNAME", "value": "bjensen"}]),
            base(),
        );
    }

    #[test]
    fn remove_without_path_is_no_target() {
        check_err(USER, base(), json!([{"op": "remove"}]), "noTarget");
    }

    #[test]
    fn pathless_add_merges_and_appends_without_duplicates() {
        let ops = json!([{"op": "add", "value": {
            "title": "Boss",
            "emails": [{"value": "b@work.example", "type": "work", "primary": true}, {"value": "b@home.example", "type": "home"}],
            "x-unknown": {"kept": true}
        }}]);
        let after = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "id": "u1", "userName": "bjensen", "active": true,
            "name": {"givenName": "Barbara", "familyName": "Jensen"},
            "emails": [{"value": "b@work.example", "type": "work", "primary": true}, {"value": "b@home.example", "type": "home"}],
            "meta": {"resourceType": "User"},
            "title": "Boss"
        });
        check(base(), ops, after);
    }

    #[test]
    fn pathless_replace_replaces_multi_valued_and_merges_complex() {
        let ops = json!([{"op": "replace", "value": {
            "emails": [{"value": "new@x.example", "type": "home"}],
            "name": {"givenName": "Babs"}
        }}]);
        let after = with(
            with(
                base(),
                "emails",
                json!([{"value": "new@x.example", "type": "home"}]),
            ),
            "name",
            json!({"givenName": "Babs", "familyName": "Jensen"}),
        );
        check(base(), ops, after);
    }

    #[test]
    fn entra_pathless_replace_with_dotted_and_urn_keys() {
        let ops = json!([{"op": "Replace", "value": {
            "name.givenName": "A",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber": "9",
            "active": "False"
        }}]);
        let mut after = with(
            base(),
            "name",
            json!({"givenName": "A", "familyName": "Jensen"}),
        );
        after = with(after, "active", json!(false));
        after = with(after, ENTERPRISE_URN, json!({"employeeNumber": "9"}));
        after["schemas"] = json!(["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE_URN]);
        check(base(), ops, after);
    }

    #[test]
    fn pathless_extension_object_merges_into_the_extension() {
        let before = with(
            base(),
            ENTERPRISE_URN,
            json!({"employeeNumber": "1", "department": "Ops"}),
        );
        let ops = json!([{"op": "replace", "value": {ENTERPRISE_URN: {"department": "Sales", "costCenter": "42"}}}]);
        let mut after = with(
            base(),
            ENTERPRISE_URN,
            json!({"employeeNumber": "1", "department": "Sales", "costCenter": "42"}),
        );
        after["schemas"] = json!(["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE_URN]);
        check(before, ops, after);
    }

    #[test]
    fn sub_attribute_and_extension_paths() {
        check(
            base(),
            json!([{"op": "replace", "path": "name.familyName", "value": "Doe"}]),
            with(
                base(),
                "name",
                json!({"givenName": "Barbara", "familyName": "Doe"}),
            ),
        );
        let mut after = with(
            base(),
            ENTERPRISE_URN,
            json!({"department": "Ops", "manager": {"value": "m1"}}),
        );
        after["schemas"] = json!(["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE_URN]);
        check(
            base(),
            json!([
                {"op": "Add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department", "value": "Ops"},
                {"op": "Add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value", "value": "m1"}
            ]),
            after.clone(),
        );
        // Entra's bare-id manager form.
        check(
            with(base(), ENTERPRISE_URN, json!({"department": "Ops"})),
            json!([{"op": "Replace", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager", "value": "m1"}]),
            after.clone(),
        );
        // Removing the last extension attribute removes the extension and its URN.
        check(
            after,
            json!([
                {"op": "Remove", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager"},
                {"op": "Remove", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department"}
            ]),
            base(),
        );
    }

    #[test]
    fn value_path_filters_select_elements() {
        let before = with(
            base(),
            "emails",
            json!([
                {"value": "b@work.example", "type": "work", "primary": true},
                {"value": "b@home.example", "type": "home"}
            ]),
        );
        check(
            before.clone(),
            json!([{"op": "replace", "path": "emails[type eq \"work\"].value", "value": "new@work.example"}]),
            with(
                base(),
                "emails",
                json!([
                    {"value": "new@work.example", "type": "work", "primary": true},
                    {"value": "b@home.example", "type": "home"}
                ]),
            ),
        );
        check(
            before.clone(),
            json!([{"op": "remove", "path": "emails[type eq \"work\"]"}]),
            with(
                base(),
                "emails",
                json!([{"value": "b@home.example", "type": "home"}]),
            ),
        );
        check(
            before.clone(),
            json!([{"op": "replace", "path": "emails[type eq \"home\"]", "value": {"value": "h2@x.example", "type": "home"}}]),
            with(
                base(),
                "emails",
                json!([
                    {"value": "b@work.example", "type": "work", "primary": true},
                    {"value": "h2@x.example", "type": "home"}
                ]),
            ),
        );
        let addr = with(
            base(),
            "addresses",
            json!([{"type": "work", "locality": "Paris"}]),
        );
        check(
            addr,
            json!([{"op": "replace", "path": "addresses[type eq \"work\"].streetAddress", "value": "1 Rue"}]),
            with(
                base(),
                "addresses",
                json!([{"type": "work", "locality": "Paris", "streetAddress": "1 Rue"}]),
            ),
        );
    }

    #[test]
    fn unmatched_value_path_with_sub_attribute_creates_the_element() {
        let no_emails = with(base(), "emails", Value::Null);
        check(
            no_emails.clone(),
            json!([{"op": "Add", "path": "emails[type eq \"work\"].value", "value": "w@x.example"}]),
            with(
                no_emails.clone(),
                "emails",
                json!([{"type": "work", "value": "w@x.example"}]),
            ),
        );
        check(
            no_emails.clone(),
            json!([{"op": "Replace", "path": "addresses[type eq \"work\"].streetAddress", "value": "1 Main St"}]),
            with(
                no_emails.clone(),
                "addresses",
                json!([{"type": "work", "streetAddress": "1 Main St"}]),
            ),
        );
        check(
            no_emails.clone(),
            json!([{"op": "Replace", "path": "phoneNumbers[type eq \"mobile\" and primary eq true].value", "value": "+1"}]),
            with(
                no_emails.clone(),
                "phoneNumbers",
                json!([{"type": "mobile", "primary": true, "value": "+1"}]),
            ),
        );
        // An `or` filter cannot describe the new element.
        check_err(
            USER,
            no_emails.clone(),
            json!([{"op": "Replace", "path": "emails[type eq \"work\" or type eq \"home\"].value", "value": "x"}]),
            "noTarget",
        );
        // replace of a whole element that does not exist: noTarget.
        check_err(
            USER,
            no_emails.clone(),
            json!([{"op": "replace", "path": "emails[type eq \"home\"]", "value": {"value": "x"}}]),
            "noTarget",
        );
        // remove with no match: a no-op.
        check(
            base(),
            json!([{"op": "remove", "path": "emails[type eq \"home\"]"}]),
            base(),
        );
        check(
            base(),
            json!([{"op": "remove", "path": "emails[type eq \"home\"].value"}]),
            base(),
        );
    }

    #[test]
    fn string_booleans_are_coerced() {
        check(
            base(),
            json!([{"op": "Replace", "path": "active", "value": "False"}]),
            with(base(), "active", json!(false)),
        );
        check(
            base(),
            json!([{"op": "replace", "path": "active", "value": "false"}]),
            with(base(), "active", json!(false)),
        );
        check(
            base(),
            json!([{"op": "Replace", "value": {"active": "True"}}]),
            base(),
        );
        check_err(
            USER,
            base(),
            json!([{"op": "replace", "path": "active", "value": "maybe"}]),
            "invalidValue",
        );
    }

    #[test]
    fn adding_a_present_value_is_idempotent_and_primary_is_unique() {
        check(
            base(),
            json!([{"op": "add", "path": "emails", "value": [{"value": "b@work.example", "type": "work", "primary": true}]}]),
            base(),
        );
        check(
            base(),
            json!([{"op": "add", "path": "emails", "value": {"value": "b@home.example", "type": "home", "primary": "True"}}]),
            with(
                base(),
                "emails",
                json!([
                    {"value": "b@work.example", "type": "work", "primary": false},
                    {"value": "b@home.example", "type": "home", "primary": true}
                ]),
            ),
        );
        let two = with(
            base(),
            "emails",
            json!([
                {"value": "b@work.example", "type": "work", "primary": true},
                {"value": "b@home.example", "type": "home"}
            ]),
        );
        check(
            two,
            json!([{"op": "replace", "path": "emails[type eq \"home\"].primary", "value": true}]),
            with(
                base(),
                "emails",
                json!([
                    {"value": "b@work.example", "type": "work", "primary": false},
                    {"value": "b@home.example", "type": "home", "primary": true}
                ]),
            ),
        );
        check_err(
            USER,
            base(),
            json!([{"op": "replace", "path": "emails", "value": [{"value": "a", "primary": true}, {"value": "b", "primary": true}]}]),
            "invalidValue",
        );
    }

    #[test]
    fn mutability_is_enforced() {
        for path in [
            "id",
            "meta",
            "meta.lastModified",
            "groups",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.displayName",
        ] {
            check_err(
                USER,
                base(),
                json!([{"op": "replace", "path": path, "value": "x"}]),
                "mutability",
            );
        }
        check_err(
            USER,
            base(),
            json!([{"op": "add", "path": "groups", "value": [{"value": "g1"}]}]),
            "mutability",
        );
        check_err(
            USER,
            base(),
            json!([{"op": "add", "path": "members", "value": [{"value": "g1"}]}]),
            "mutability",
        );
        check_err(
            GROUP,
            json!({"displayName": "g"}),
            json!([{"op": "replace", "path": "members[value eq \"u1\"].display", "value": "x"}]),
            "mutability",
        );
        // writeOnly may be written.
        check(
            base(),
            json!([{"op": "replace", "path": "password", "value": "s3cret"}]),
            with(base(), "password", json!("s3cret")),
        );
    }

    #[test]
    fn schemas_in_a_value_are_ignored_and_required_attributes_stay() {
        check(
            base(),
            json!([{"op": "replace", "value": {"schemas": ["urn:x"], "title": "T"}}]),
            with(base(), "title", json!("T")),
        );
        check_err(
            USER,
            base(),
            json!([{"op": "replace", "path": "schemas", "value": ["urn:x"]}]),
            "invalidPath",
        );
        let msg = check_err(
            USER,
            base(),
            json!([{"op": "remove", "path": "userName"}]),
            "invalidValue",
        );
        assert!(msg.contains("'userName'"), "{msg}");
        check_err(
            USER,
            base(),
            json!([{"op": "replace", "path": "userName", "value": null}]),
            "invalidValue",
        );
        check_err(
            GROUP,
            json!({"displayName": "g"}),
            json!([{"op": "remove", "path": "displayName"}]),
            "invalidValue",
        );
    }

    #[test]
    fn custom_extension_attributes_are_patched_and_declared() {
        const CUSTOM: &str = "urn:ietf:params:scim:schemas:extension:CustomExtensionName:2.0:User";
        let attr = format!("{CUSTOM}:CustomAttribute");
        // Entra adds a newly mapped custom attribute to a user created
        // without it: the extension is created and declared.
        let (doc, outcome) = run(
            USER,
            &base(),
            json!([{"op": "Add", "path": attr, "value": "701984"}]),
        )
        .expect("applies");
        assert!(outcome.changed && outcome.ignored.is_empty(), "{outcome:?}");
        assert_eq!(doc[CUSTOM], json!({"CustomAttribute": "701984"}));
        assert!(
            doc["schemas"].as_array().unwrap().contains(&json!(CUSTOM)),
            "{doc}"
        );
        // Names match the stored spelling case-insensitively; replace, then
        // a sub-attribute, then a path-less object merge.
        let (doc, _) = run(
            USER,
            &doc,
            json!([
                {"op": "replace", "path": format!("{CUSTOM}:customattribute"), "value": "42"},
                {"op": "add", "path": format!("{CUSTOM}:badge.color"), "value": "blue"},
                {"op": "add", "value": {CUSTOM: {"level": 3, "gone": null}}}
            ]),
        )
        .expect("applies");
        assert_eq!(
            doc[CUSTOM],
            json!({"CustomAttribute": "42", "badge": {"color": "blue"}, "level": 3})
        );
        // A path that is the whole (held) extension URN names the extension.
        let (doc, _) = run(USER, &doc, json!([{"op": "remove", "path": CUSTOM}])).expect("applies");
        assert!(doc.get(CUSTOM).is_none(), "{doc}");
        assert!(
            !doc["schemas"].as_array().unwrap().contains(&json!(CUSTOM)),
            "{doc}"
        );
        // No value filters without a schema.
        check_err(
            USER,
            base(),
            json!([{"op": "replace", "path": format!("{CUSTOM}:tags[value eq \"x\"]"), "value": "y"}]),
            "invalidPath",
        );
    }

    #[test]
    fn unknown_paths_are_ignored_and_malformed_ones_invalid_path() {
        // An attribute a published schema does not define is dropped, as
        // POST and PUT drop it (Microsoft's suite expects 200 for a typo).
        for (ops, name) in [
            (json!([{"op": "add", "path": "nope", "value": "x"}]), "nope"),
            (
                json!([{"op": "add", "path": "name.nope", "value": "x"}]),
                "name.nope",
            ),
            (
                json!([{"op": "replace", "value": {"name.nope": "x"}}]),
                "name.nope",
            ),
            (
                json!([{"op": "replace", "value": {"adreses": [{"country": "DE"}]}}]),
                "adreses",
            ),
            (json!([{"op": "remove", "path": "nope"}]), "nope"),
            (
                json!([{"op": "add", "path": "emails[type eq \"work\"].nope", "value": "x"}]),
                "emails[type eq \"work\"].nope",
            ),
            (
                json!([{"op": "add", "path": format!("{ENTERPRISE_URN}:nope"), "value": "x"}]),
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:nope",
            ),
        ] {
            let (out, outcome) = run(USER, &base(), ops.clone()).expect("applies");
            assert_eq!(out, base(), "{ops}");
            assert!(!outcome.changed, "{ops}");
            assert_eq!(outcome.ignored, vec![name.to_string()], "{ops}");
        }
        for path in [
            "emails[type eq \"work\"",
            "emails[bogus eq \"work\"].value",
            // The dot-for-colon typo Microsoft's inbound collection sends:
            // `...:2.0` is no schema, so it names nothing.
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User.manager",
            "urn:ietf:params:scim:api:messages:2.0:PatchOp:foo",
            "title.x",
        ] {
            check_err(
                USER,
                base(),
                json!([{"op": "replace", "path": path, "value": "x"}]),
                "invalidPath",
            );
        }
    }

    #[test]
    fn type_checks_reject_wrong_shapes() {
        check_err(
            USER,
            base(),
            json!([{"op": "replace", "path": "title", "value": 5}]),
            "invalidValue",
        );
        check_err(
            USER,
            base(),
            json!([{"op": "replace", "path": "name", "value": "x"}]),
            "invalidValue",
        );
        check_err(
            USER,
            base(),
            json!([{"op": "add", "path": "emails", "value": "x@y"}]),
            "invalidValue",
        );
        check_err(
            USER,
            base(),
            json!([{"op": "add", "value": "x"}]),
            "invalidValue",
        );
    }

    #[test]
    fn operations_are_atomic() {
        check_err(
            USER,
            base(),
            json!([
                {"op": "replace", "path": "title", "value": "Boss"},
                {"op": "replace", "path": "id", "value": "other"}
            ]),
            "mutability",
        );
    }

    #[test]
    fn members_add_and_replace() {
        // Okta: members without a type.
        assert_eq!(
            member_ops(
                json!([{"op": "add", "path": "members", "value": [{"value": "u1", "display": "Ann"}, {"value": "u2"}]}])
            ),
            vec![MemberOp::Add(vec![
                MemberRef {
                    display: Some("Ann".into()),
                    ..m("u1")
                },
                m("u2")
            ])]
        );
        assert_eq!(
            member_ops(
                json!([{"op": "Add", "value": {"members": [{"value": "u1", "type": "user"}]}}])
            ),
            vec![MemberOp::Add(vec![MemberRef {
                member_type: Some("User".into()),
                ..m("u1")
            }])]
        );
        assert_eq!(
            member_ops(
                json!([{"op": "replace", "value": {"displayName": "Eng", "members": [{"value": "u1"}]}}])
            ),
            vec![MemberOp::RemoveAll, MemberOp::Add(vec![m("u1")])]
        );
        assert_eq!(
            member_ops(json!([{"op": "replace", "path": "members", "value": [{"value": "u3"}]}])),
            vec![MemberOp::RemoveAll, MemberOp::Add(vec![m("u3")])]
        );
        assert_eq!(
            member_ops(json!([{"op": "replace", "path": "members", "value": []}])),
            vec![MemberOp::RemoveAll]
        );
        check_err(
            GROUP,
            json!({"displayName": "g"}),
            json!([{"op": "add", "path": "members", "value": [{"display": "x"}]}]),
            "invalidValue",
        );
        check_err(
            GROUP,
            json!({"displayName": "g"}),
            json!([{"op": "add", "path": "members", "value": [{"value": 7}]}]),
            "invalidValue",
        );
    }

    #[test]
    fn okta_group_rename_echoes_the_id() {
        let doc = json!({"id": "g1", "displayName": "Eng"});
        let (got, out) = run(
            GROUP,
            &doc,
            json!([{"op": "replace", "value": {"id": "g1", "displayName": "Eng2"}}]),
        )
        .expect("applies");
        assert_eq!(got, json!({"id": "g1", "displayName": "Eng2"}));
        assert!(out.changed && out.member_ops.is_empty());
        check_err(
            GROUP,
            doc,
            json!([{"op": "replace", "value": {"id": "g2"}}]),
            "mutability",
        );
    }

    #[test]
    fn members_remove() {
        // Entra: one member by filter.
        assert_eq!(
            member_ops(json!([{"op": "Remove", "path": "members[value eq \"u1\"]"}])),
            vec![MemberOp::Remove(vec!["u1".into()])]
        );
        assert_eq!(
            member_ops(
                json!([{"op": "remove", "path": "members[value eq \"a\" or value eq \"b\"]"}])
            ),
            vec![MemberOp::Remove(vec!["a".into(), "b".into()])]
        );
        // Entra: members named in the value.
        assert_eq!(
            member_ops(
                json!([{"op": "Remove", "path": "members", "value": [{"value": "u1"}, {"value": "u2"}]}])
            ),
            vec![MemberOp::Remove(vec!["u1".into(), "u2".into()])]
        );
        assert_eq!(
            member_ops(json!([{"op": "remove", "path": "members"}])),
            vec![MemberOp::RemoveAll]
        );
        // In request order, with document changes alongside.
        let doc = json!({"displayName": "Eng"});
        let (got, out) = run(
            GROUP,
            &doc,
            json!([
                {"op": "replace", "path": "displayName", "value": "Eng2"},
                {"op": "add", "path": "members", "value": [{"value": "u9"}]},
                {"op": "remove", "path": "members[value eq \"u1\"]"}
            ]),
        )
        .expect("applies");
        assert_eq!(got, json!({"displayName": "Eng2"}));
        assert!(out.changed);
        assert_eq!(
            out.member_ops,
            vec![
                MemberOp::Add(vec![m("u9")]),
                MemberOp::Remove(vec!["u1".into()])
            ]
        );
        let msg = check_err(
            GROUP,
            doc.clone(),
            json!([{"op": "remove", "path": "members[display eq \"Ann\"]"}]),
            "invalidFilter",
        );
        assert!(msg.contains("members[display eq \"Ann\"]"), "{msg}");
        check_err(
            GROUP,
            doc,
            json!([{"op": "replace", "path": "members[value eq \"u1\"]", "value": {"value": "u2"}}]),
            "invalidFilter",
        );
    }

    #[test]
    fn normalize_canonicalises_coerces_and_type_checks() {
        let mut doc = json!({
            "Schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "USERNAME": "bjensen",
            "Active": "True",
            "emails": {"Value": "a@x", "TYPE": "work", "primary": "false"},
            "name": {"GivenName": "B", "middleName": null},
            "nickName": null,
            "x-vendor": {"Keep": 1},
            "URN:IETF:PARAMS:SCIM:SCHEMAS:EXTENSION:ENTERPRISE:2.0:USER": {"EmployeeNumber": "7", "other": true}
        });
        let ignored = normalize(USER, &mut doc).expect("normalises");
        assert_eq!(
            doc,
            json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                "userName": "bjensen",
                "active": true,
                "emails": [{"value": "a@x", "type": "work", "primary": false}],
                "name": {"givenName": "B"},
                ENTERPRISE_URN: {"employeeNumber": "7"}
            })
        );
        // What no published schema defines is dropped and reported.
        assert_eq!(
            ignored,
            vec!["x-vendor".to_string(), format!("{ENTERPRISE_URN}:other")]
        );
        for bad in [
            json!({"userName": 5}),
            json!({"name": "x"}),
            json!({"emails": "a@x"}),
            json!({"active": "yes"}),
            json!([1]),
        ] {
            let mut d = bad.clone();
            assert!(normalize(USER, &mut d).is_err(), "{bad}");
            assert_eq!(d, bad);
        }
        let mut g = json!({"displayName": "Eng", "Members": [{"Value": "u1", "display": "Ann", "$ref": "https://x/Users/u1", "junk": 1}, {"value": "g2", "type": "group"}]});
        normalize(GROUP, &mut g).expect("normalises");
        assert_eq!(
            g,
            json!({"displayName": "Eng", "members": [
                {"value": "u1", "display": "Ann", "$ref": "https://x/Users/u1"},
                {"value": "g2", "type": "Group"}
            ]})
        );
        let mut g = json!({"displayName": "Eng", "members": [{"display": "no id"}]});
        assert_eq!(
            normalize(GROUP, &mut g).map_err(|e| e.scim_type().as_str()),
            Err("invalidValue")
        );
    }
}
