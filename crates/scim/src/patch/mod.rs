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
//!
//! Layout: this module holds the request types and the PatchOp parser;
//! [`engine`] applies operations to a document; [`normalize`] brings POST,
//! PUT and PATCH values into the stored shape; [`members`] turns a Group's
//! `members` operations into [`MemberOp`]s.

use serde_json::{Map, Value};

use crate::ast::PatchPath;
use crate::error::ScimType;
use crate::filter::parse_patch_path;
use crate::schema::PATCH_OP_URN;

mod engine;
mod members;
mod normalize;
#[cfg(test)]
mod tests;

pub use engine::apply;
pub use members::{MemberOp, MemberRef};
pub use normalize::normalize;

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

pub(super) type Obj = Map<String, Value>;

/// Case-insensitive key lookup: clients send `Operations`, `operations`,
/// `Op`, `op`...
pub(super) fn get_key<'v>(obj: &'v Obj, key: &str) -> Option<&'v Value> {
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
