//! Brings client values into the stored shape: canonical names, coerced
//! booleans and numbers, multi-valued attributes as arrays, type checks.
//! POST and PUT bodies go through [`normalize`]; PATCH values through the
//! per-value functions.

use serde_json::{Map, Value};

use super::members::normalize_member;
use super::PatchError;
use crate::schema::{common_attribute, AttrType, Attribute, ResourceKind};

/// Removes null members of an object (unassigned sub-attributes).
pub(super) fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(o.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
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
    // An extension object whose attributes were all unknown is empty now:
    // unassigned, like an empty one sent as such (dropped above), so that a
    // normalised body normalises to itself.
    out.retain(|key, v| {
        kind.extension(key).is_none() || v.as_object().is_none_or(|o| !o.is_empty())
    });
    *doc = Value::Object(out);
    Ok(ignored)
}

/// Describes a JSON value's type for messages.
pub(super) fn type_of(v: &Value) -> &'static str {
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
pub(super) fn normalize_value(
    def: &Attribute,
    v: &Value,
    shown: &str,
) -> Result<Value, PatchError> {
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
pub(super) fn normalize_element(
    def: &Attribute,
    v: &Value,
    shown: &str,
) -> Result<Value, PatchError> {
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
pub(super) fn normalize_single(
    def: &Attribute,
    v: &Value,
    shown: &str,
) -> Result<Value, PatchError> {
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

pub(super) fn expected(def: &Attribute) -> &'static str {
    match def.kind {
        AttrType::Complex => "an object",
        AttrType::Boolean => "a boolean",
        AttrType::Integer => "an integer",
        AttrType::Decimal => "a number",
        _ => "a string",
    }
}
