//! A Group's `members` in PATCH and POST/PUT bodies: member references and
//! the membership operations the service runs against its member table
//! (never the group document, so their cost is the members named).

use serde_json::{Map, Value};

use super::{get_key, Obj, PatchError};
use crate::ast::{CompValue, CompareOp, Filter};

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

pub(super) fn dedup(ids: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(id.clone()));
}

/// Collects the ids of `value eq "id" [or value eq "id2" ...]`; `false` for
/// any other filter shape.
pub(super) fn member_ids_from_filter(f: &Filter, out: &mut Vec<String>) -> bool {
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
pub(super) fn member_refs(
    value: Option<&Value>,
    shown: &str,
) -> Result<Vec<MemberRef>, PatchError> {
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

pub(super) fn member_ref(m: &Obj) -> MemberRef {
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
pub(super) fn normalize_member(item: &Value, shown: &str) -> Result<Obj, PatchError> {
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
