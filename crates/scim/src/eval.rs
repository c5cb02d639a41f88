//! In-memory evaluation of SCIM filters (RFC 7644 §3.4.2.2) against stored
//! JSON resources.
//!
//! The service filters lists in SQL ([`crate::sql`]); this module serves the
//! places where a document is already in memory: PATCH value filters
//! (`emails[type eq "work"]`) select array elements with
//! [`matches_element`], and [`matches`] evaluates a whole filter against one
//! resource (bulk references, tests, and a reference semantics to check the
//! SQL renderer against). It does no IO.
//!
//! Semantics, all read from [`crate::schema`] rather than hard-coded:
//! - string comparisons honour `caseExact` (case-insensitive comparisons
//!   lower-case both sides);
//! - `dateTime` values are compared as instants ([`datetime_micros`]: RFC
//!   3339, at the microsecond precision the service stores), and an operand
//!   that is not an RFC 3339 date-time is an error, as in [`crate::sql`];
//!   `co`/`sw`/`ew` on a dateTime mean `eq` (the SQL renderer compares
//!   fixed-width texts); numbers compare numerically, booleans only with
//!   `eq`/`ne`;
//! - a multi-valued attribute matches when any of its values matches, and a
//!   complex attribute compared directly means its `value` sub-attribute
//!   (`emails eq "x"` is `emails.value eq "x"`);
//! - `ne` is the negation of `eq`, so it is true when the attribute is
//!   absent, and for a multi-valued attribute it is true when no value
//!   equals the operand;
//! - `eq null` is true when the attribute is absent, `ne null` when present;
//! - an attribute the schema does not know is an error, never a silent
//!   `false`: a typo in a filter must not look like "no results". The
//!   exception is a custom extension ([`crate::unknown`]), which has no
//!   schema: its attributes are typed by the operand, as in [`crate::sql`].

use serde_json::Value;

use crate::ast::{AttrPath, CompValue, CompareOp, Filter};
use crate::schema::{AttrType, Attribute, ResolveError, ResourceKind};

/// Why a filter cannot be evaluated. Every variant is a client error with
/// SCIM `scimType` `invalidFilter` (RFC 7644 §3.12).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// The path names no attribute of the schema.
    #[error("unknown attribute '{0}'")]
    UnknownAttribute(String),
    /// The path is qualified by a schema URN this resource type lacks.
    #[error("unknown schema '{0}'")]
    UnknownSchema(String),
    /// The operator is meaningless for the attribute's type
    /// (`active gt true`, `meta co "x"`).
    #[error("operator '{op}' is not supported for {kind} attribute '{path}'")]
    UnsupportedOperator {
        op: &'static str,
        kind: &'static str,
        path: String,
    },
    /// A complex attribute without a `value` sub-attribute was compared to
    /// a scalar (`name eq "x"`).
    #[error(
        "complex attribute '{0}' cannot be compared to a value; name one of its sub-attributes"
    )]
    ComplexComparison(String),
    /// A value filter inside a value filter (`emails[type[x eq 1]]`).
    #[error("value filter '{0}' cannot be nested inside another value filter")]
    NestedValuePath(String),
    /// A value filter on an attribute that is not complex (`userName[x eq 1]`).
    #[error("value filter on '{0}', which is not a complex attribute")]
    NotComplex(String),
    /// A dateTime attribute compared with something that is not an RFC 3339
    /// date-time (`meta.created gt "yesterday"`).
    #[error("'{value}' is not a dateTime such as 2011-05-13T04:42:34Z (attribute '{path}')")]
    InvalidDateTime { path: String, value: String },
}

impl EvalError {
    /// The SCIM `scimType` for this error (RFC 7644 §3.12).
    pub fn scim_type(&self) -> crate::ScimType {
        crate::ScimType::InvalidFilter
    }
}

impl From<ResolveError> for EvalError {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::UnknownAttribute(p) => EvalError::UnknownAttribute(p),
            ResolveError::UnknownSchema(s) => EvalError::UnknownSchema(s),
        }
    }
}

/// Whether `resource` (a stored document of kind `kind`) satisfies `filter`.
///
/// Both sides of `and`/`or` are always evaluated, so an unknown attribute is
/// reported whatever the data: the error does not depend on which resource
/// happens to be tested first.
pub fn matches(filter: &Filter, kind: ResourceKind, resource: &Value) -> Result<bool, EvalError> {
    eval(filter, Scope::Resource(kind), resource)
}

/// Whether one element of the multi-valued complex attribute `parent`
/// satisfies `filter`, whose paths name sub-attributes of `parent` (the
/// inside of `emails[type eq "work"]`). Used by PATCH to select elements.
pub fn matches_element(
    filter: &Filter,
    parent: &'static Attribute,
    element: &Value,
) -> Result<bool, EvalError> {
    eval(filter, Scope::Element(parent), element)
}

/// Checks that every path in `filter` resolves against `kind` and every
/// operator suits its attribute, without any data. Lets callers reject a bad
/// filter even when there is nothing to evaluate it against.
pub fn validate(filter: &Filter, kind: ResourceKind) -> Result<(), EvalError> {
    validate_in(filter, Scope::Resource(kind))
}

/// [`validate`] for the inner filter of a value path on `parent`.
pub fn validate_element(filter: &Filter, parent: &'static Attribute) -> Result<(), EvalError> {
    validate_in(filter, Scope::Element(parent))
}

/// What the paths of a filter are relative to.
#[derive(Clone, Copy)]
enum Scope {
    /// A whole resource: paths resolve through the schema.
    Resource(ResourceKind),
    /// One element of a multi-valued complex attribute: paths are its
    /// sub-attributes.
    Element(&'static Attribute),
}

impl Scope {
    /// The custom extension URN `path` is qualified by
    /// ([`ResourceKind::is_custom_extension`]), at the resource root only.
    fn custom_urn(self, path: &AttrPath) -> Option<&str> {
        match self {
            Scope::Resource(kind) => path
                .schema
                .as_deref()
                .filter(|urn| kind.is_custom_extension(urn)),
            Scope::Element(_) => None,
        }
    }

    /// The definition governing the value at the end of `path`.
    fn resolve(self, path: &AttrPath) -> Result<&'static Attribute, EvalError> {
        match self {
            Scope::Resource(kind) => Ok(kind.resolve(path)?.leaf()),
            Scope::Element(parent) => {
                if path.schema.is_some() || path.sub_attr.is_some() {
                    return Err(EvalError::UnknownAttribute(format!(
                        "{}.{path}",
                        parent.name
                    )));
                }
                parent
                    .sub(&path.attr)
                    .ok_or_else(|| EvalError::UnknownAttribute(format!("{}.{path}", parent.name)))
            }
        }
    }

    /// The definition and every value at `path` in `node`; multi-valued
    /// attributes contribute one value per element.
    fn values<'v>(
        self,
        path: &AttrPath,
        node: &'v Value,
    ) -> Result<(&'static Attribute, Vec<&'v Value>), EvalError> {
        match self {
            Scope::Resource(kind) => {
                let r = kind.resolve(path)?;
                let mut cur = node;
                if let Some(urn) = r.extension {
                    match get_ci(cur, urn) {
                        Some(ext) => cur = ext,
                        None => return Ok((r.leaf(), Vec::new())),
                    }
                }
                let Some(v) = get_ci(cur, r.attr.name) else {
                    return Ok((r.leaf(), Vec::new()));
                };
                let items: Vec<&Value> = match v {
                    Value::Array(a) => a.iter().collect(),
                    other => vec![other],
                };
                let out = match r.sub {
                    None => items,
                    Some(sub) => items
                        .into_iter()
                        .filter_map(|i| get_ci(i, sub.name))
                        .collect(),
                };
                Ok((r.leaf(), out))
            }
            Scope::Element(_) => {
                let def = self.resolve(path)?;
                let out = get_ci(node, def.name).into_iter().collect();
                Ok((def, out))
            }
        }
    }
}

/// Looks up `key` in an object, exactly first and then case-insensitively
/// (stored documents use canonical names, but a value written verbatim for
/// an unknown-then-known attribute must still be found).
pub(crate) fn get_ci<'v>(node: &'v Value, key: &str) -> Option<&'v Value> {
    let obj = node.as_object()?;
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn eval(filter: &Filter, scope: Scope, node: &Value) -> Result<bool, EvalError> {
    match filter {
        Filter::And(a, b) => {
            let x = eval(a, scope, node)?;
            let y = eval(b, scope, node)?;
            Ok(x && y)
        }
        Filter::Or(a, b) => {
            let x = eval(a, scope, node)?;
            let y = eval(b, scope, node)?;
            Ok(x || y)
        }
        Filter::Not(f) => Ok(!eval(f, scope, node)?),
        Filter::Present(path) => {
            if let Some(urn) = scope.custom_urn(path) {
                return Ok(custom_value(node, urn, path).is_some_and(custom_present));
            }
            let (_, values) = scope.values(path, node)?;
            Ok(values.into_iter().any(is_present))
        }
        Filter::Compare(path, op, operand) => {
            if let Some(urn) = scope.custom_urn(path) {
                check_custom_operator(*op, operand, path)?;
                let stored = custom_value(node, urn, path);
                return Ok(match (op, operand) {
                    (CompareOp::Eq, CompValue::Null) => !stored.is_some_and(custom_present),
                    (_, CompValue::Null) => stored.is_some_and(custom_present),
                    (CompareOp::Ne, _) => {
                        !stored.is_some_and(|v| custom_compare(CompareOp::Eq, v, operand))
                    }
                    _ => stored.is_some_and(|v| custom_compare(*op, v, operand)),
                });
            }
            let (def, values) = scope.values(path, node)?;
            if let CompValue::Null = operand {
                // Presence of the attribute itself (`name eq null`,
                // `emails ne null`), not of an implied `value`.
                check_operator(def, *op, operand, path)?;
                let present = values.into_iter().any(is_present);
                return Ok(match op {
                    CompareOp::Eq => !present,
                    _ => present,
                });
            }
            let (def, values) = comparable(def, values, path)?;
            check_operator(def, *op, operand, path)?;
            if *op == CompareOp::Ne {
                return Ok(!values
                    .into_iter()
                    .any(|v| compare(def, CompareOp::Eq, v, operand)));
            }
            Ok(values.into_iter().any(|v| compare(def, *op, v, operand)))
        }
        Filter::ValuePath(path, inner) => {
            let Scope::Resource(kind) = scope else {
                return Err(EvalError::NestedValuePath(path.to_string()));
            };
            let r = kind.resolve(path)?;
            if r.sub.is_some() || r.attr.kind != AttrType::Complex {
                return Err(EvalError::NotComplex(path.to_string()));
            }
            validate_element(inner, r.attr)?;
            let (_, elements) = scope.values(path, node)?;
            for e in elements {
                if eval(inner, Scope::Element(r.attr), e)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
    }
}

fn validate_in(filter: &Filter, scope: Scope) -> Result<(), EvalError> {
    match filter {
        Filter::And(a, b) | Filter::Or(a, b) => {
            validate_in(a, scope)?;
            validate_in(b, scope)
        }
        Filter::Not(f) => validate_in(f, scope),
        Filter::Present(path) if scope.custom_urn(path).is_some() => Ok(()),
        Filter::Present(path) => scope.resolve(path).map(|_| ()),
        Filter::Compare(path, op, operand) if scope.custom_urn(path).is_some() => {
            check_custom_operator(*op, operand, path)
        }
        Filter::Compare(path, op, operand) => {
            let def = scope.resolve(path)?;
            if let CompValue::Null = operand {
                return check_operator(def, *op, operand, path);
            }
            let (def, _) = comparable(def, Vec::new(), path)?;
            check_operator(def, *op, operand, path)
        }
        Filter::ValuePath(path, inner) => {
            let Scope::Resource(kind) = scope else {
                return Err(EvalError::NestedValuePath(path.to_string()));
            };
            let r = kind.resolve(path)?;
            if r.sub.is_some() || r.attr.kind != AttrType::Complex {
                return Err(EvalError::NotComplex(path.to_string()));
            }
            validate_element(inner, r.attr)
        }
    }
}

/// A complex attribute compared to a scalar means its `value`
/// sub-attribute (RFC 7644 §3.4.2.2, `emails eq "x"`).
fn comparable<'v>(
    def: &'static Attribute,
    values: Vec<&'v Value>,
    path: &AttrPath,
) -> Result<(&'static Attribute, Vec<&'v Value>), EvalError> {
    if def.kind != AttrType::Complex {
        return Ok((def, values));
    }
    let Some(value_def) = def.sub("value") else {
        return Err(EvalError::ComplexComparison(path.to_string()));
    };
    let inner = values
        .into_iter()
        .filter_map(|v| get_ci(v, value_def.name))
        .collect();
    Ok((value_def, inner))
}

/// Rejects operators the attribute type cannot support (RFC 7644
/// §3.4.2.2: booleans and binaries have no ordering or substring match).
fn check_operator(
    def: &Attribute,
    op: CompareOp,
    operand: &CompValue,
    path: &AttrPath,
) -> Result<(), EvalError> {
    let equality = matches!(op, CompareOp::Eq | CompareOp::Ne);
    let substring = matches!(op, CompareOp::Co | CompareOp::Sw | CompareOp::Ew);
    let ok = match (def.kind, operand) {
        (_, CompValue::Null) => equality,
        (AttrType::Boolean, _) | (AttrType::Binary, _) => equality,
        (AttrType::Integer | AttrType::Decimal, _) => !substring,
        (AttrType::Complex, _) => false,
        _ => true,
    };
    if ok && def.kind == AttrType::DateTime {
        // What the SQL renderer needs to compare instants (the service's
        // `normalize_datetime` accepts exactly these).
        let valid = match operand {
            CompValue::Null => true,
            CompValue::String(s) => datetime_micros(s).is_some(),
            CompValue::Bool(_) | CompValue::Number(_) => false,
        };
        if !valid {
            return Err(EvalError::InvalidDateTime {
                path: path.to_string(),
                value: match operand {
                    CompValue::String(s) => s.clone(),
                    CompValue::Number(n) => n.to_string(),
                    CompValue::Bool(b) => b.to_string(),
                    CompValue::Null => "null".into(),
                },
            });
        }
    }
    if ok {
        Ok(())
    } else {
        Err(EvalError::UnsupportedOperator {
            op: op.as_str(),
            kind: def.kind.as_str(),
            path: path.to_string(),
        })
    }
}

/// The value of a custom extension attribute: `[urn][attr][sub]` with the
/// names as written, exactly as the SQL renderer reads it.
fn custom_value<'v>(node: &'v Value, urn: &str, path: &AttrPath) -> Option<&'v Value> {
    let v = node.get(urn)?.get(&path.attr)?;
    match &path.sub_attr {
        Some(sub) => v.get(sub),
        None => Some(v),
    }
}

/// `pr` on a custom extension attribute: a non-empty string, any number or
/// boolean, or a non-empty array or object (as [`crate::sql`] renders it).
fn custom_present(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Bool(_) | Value::Number(_) => true,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// A custom extension attribute has no schema, so the operand's type
/// decides: numbers have no substring match, booleans only `eq`/`ne`.
fn check_custom_operator(
    op: CompareOp,
    operand: &CompValue,
    path: &AttrPath,
) -> Result<(), EvalError> {
    let substring = matches!(op, CompareOp::Co | CompareOp::Sw | CompareOp::Ew);
    let equality = matches!(op, CompareOp::Eq | CompareOp::Ne);
    let (ok, kind) = match operand {
        CompValue::String(_) => (true, "string"),
        CompValue::Number(_) => (!substring, "decimal"),
        CompValue::Bool(_) => (equality, "boolean"),
        CompValue::Null => (equality, "string"),
    };
    if ok {
        Ok(())
    } else {
        Err(EvalError::UnsupportedOperator {
            op: op.as_str(),
            kind,
            path: path.to_string(),
        })
    }
}

/// A stored custom extension value against a non-null operand: only a
/// value of the operand's JSON type matches.
fn custom_compare(op: CompareOp, stored: &Value, operand: &CompValue) -> bool {
    match (stored, operand) {
        (Value::String(_), CompValue::String(_)) => compare(
            crate::schema::schemaless(AttrType::String),
            op,
            stored,
            operand,
        ),
        (Value::Number(_), CompValue::Number(_)) => compare(
            crate::schema::schemaless(AttrType::Decimal),
            op,
            stored,
            operand,
        ),
        (Value::Bool(_), CompValue::Bool(_)) => compare(
            crate::schema::schemaless(AttrType::Boolean),
            op,
            stored,
            operand,
        ),
        _ => false,
    }
}

/// RFC 7644 `pr`: a non-empty value, or a complex value with a non-empty
/// sub-value.
fn is_present(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => a.iter().any(is_present),
        Value::Object(o) => o.values().any(is_present),
        Value::Bool(_) | Value::Number(_) => true,
    }
}

/// One stored value against the operand. Type mismatches (a string operand
/// for a number attribute that does not parse) are "no match", not errors:
/// the stored value may be one the schema did not always describe.
fn compare(def: &Attribute, op: CompareOp, stored: &Value, operand: &CompValue) -> bool {
    match def.kind {
        AttrType::Boolean => {
            let Some(s) = as_bool(stored) else {
                return false;
            };
            let o = match operand {
                CompValue::Bool(b) => *b,
                CompValue::String(t) if t.eq_ignore_ascii_case("true") => true,
                CompValue::String(t) if t.eq_ignore_ascii_case("false") => false,
                _ => return false,
            };
            match op {
                CompareOp::Eq => s == o,
                CompareOp::Ne => s != o,
                _ => false,
            }
        }
        AttrType::DateTime => {
            let (Some(s), CompValue::String(o)) = (stored.as_str(), operand) else {
                return false;
            };
            let (Some(s), Some(o)) = (datetime_micros(s), datetime_micros(o)) else {
                return false;
            };
            match op {
                // Fixed-width texts in SQL: containment is equality.
                CompareOp::Co | CompareOp::Sw | CompareOp::Ew => s == o,
                _ => ordered(op, Some(s.cmp(&o))),
            }
        }
        AttrType::Integer | AttrType::Decimal => {
            let Some(s) = as_f64(stored) else {
                return false;
            };
            let o = match operand {
                CompValue::Number(n) => n.as_f64(),
                CompValue::String(t) => t.trim().parse::<f64>().ok(),
                _ => None,
            };
            let Some(o) = o else {
                return false;
            };
            ordered(op, s.partial_cmp(&o))
        }
        _ => {
            let Some(s) = as_text(stored) else {
                return false;
            };
            let o = match operand {
                CompValue::String(t) => t.clone(),
                CompValue::Number(n) => n.to_string(),
                CompValue::Bool(b) => b.to_string(),
                CompValue::Null => return false,
            };
            let (s, o) = if def.case_exact {
                (s, o)
            } else {
                (crate::schema::fold_case(&s), crate::schema::fold_case(&o))
            };
            match op {
                CompareOp::Co => s.contains(&o),
                CompareOp::Sw => s.starts_with(&o),
                CompareOp::Ew => s.ends_with(&o),
                _ => ordered(op, Some(s.as_str().cmp(o.as_str()))),
            }
        }
    }
}

fn ordered(op: CompareOp, ord: Option<std::cmp::Ordering>) -> bool {
    use std::cmp::Ordering::*;
    match (op, ord) {
        (_, None) => false,
        (CompareOp::Eq, Some(o)) => o == Equal,
        (CompareOp::Ne, Some(o)) => o != Equal,
        (CompareOp::Gt, Some(o)) => o == Greater,
        (CompareOp::Ge, Some(o)) => o != Less,
        (CompareOp::Lt, Some(o)) => o == Less,
        (CompareOp::Le, Some(o)) => o != Greater,
        (CompareOp::Co | CompareOp::Sw | CompareOp::Ew, _) => false,
    }
}

fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// An RFC 3339 date-time (RFC 7643 §2.3.5), as microseconds since
/// 1970-01-01T00:00:00Z: `2011-05-13T04:42:34Z`, with an optional fraction
/// (digits past the sixth are dropped: the service stores microseconds) and
/// a `Z` or a `+hh:mm`/`-hh:mm` offset; `T` and `Z` may be lowercase (RFC
/// 3339 §5.6). `None` for anything else, leap seconds included. The
/// service's SQL normalisation of filter literals accepts exactly what this
/// accepts, so a filter is valid for both or for neither.
pub fn datetime_micros(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0i64, |acc, d| {
            d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
        })
    };
    let sep = |at: usize, want: &[u8]| b.get(at).is_some_and(|c| want.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut at = 19;
    let mut micros = 0;
    if sep(at, b".") {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            if at - start < 6 {
                micros = micros * 10 + i64::from(b[at] - b'0');
            }
            at += 1;
        }
        if at == start {
            return None;
        }
        for _ in (at - start)..6 {
            micros *= 10;
        }
    }
    let offset = match b.get(at..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (num(at + 1, 2)?, num(at + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let secs = h * 3600 + m * 60;
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };
    // Days from 1970-01-01 to year-month-day (proleptic Gregorian).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(secs * 1_000_000 + micros)
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::ENTERPRISE_URN;
    use serde_json::json;

    fn p(s: &str) -> AttrPath {
        match s.split_once('.') {
            Some((a, b)) => AttrPath {
                schema: None,
                attr: a.into(),
                sub_attr: Some(b.into()),
            },
            None => AttrPath::simple(s),
        }
    }
    fn st(s: &str) -> CompValue {
        CompValue::String(s.into())
    }
    fn cmp(path: &str, op: CompareOp, v: CompValue) -> Filter {
        Filter::Compare(p(path), op, v)
    }
    fn and(a: Filter, b: Filter) -> Filter {
        Filter::And(Box::new(a), Box::new(b))
    }
    fn or(a: Filter, b: Filter) -> Filter {
        Filter::Or(Box::new(a), Box::new(b))
    }

    fn user() -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "id": "2819c223",
            "externalId": "Ext-1",
            "userName": "Bjensen@Example.com",
            "name": {"givenName": "Barbara", "familyName": "Jensen"},
            "active": true,
            "emails": [
                {"value": "bjensen@example.com", "type": "work", "primary": true},
                {"value": "babs@jensen.org", "type": "home"}
            ],
            "meta": {"lastModified": "2024-05-01T10:00:00Z", "resourceType": "User"},
            ENTERPRISE_URN: {"employeeNumber": "701984", "manager": {"value": "26118915"}}
        })
    }

    fn t(f: &Filter) -> bool {
        matches(f, ResourceKind::User, &user()).expect("evaluates")
    }

    #[test]
    fn string_comparisons_honour_case_exact() {
        use CompareOp::*;
        // userName is caseExact false; externalId and id are caseExact true.
        assert!(t(&cmp("userName", Eq, st("bjensen@example.com"))));
        assert!(t(&cmp("USERNAME", Eq, st("BJENSEN@EXAMPLE.COM"))));
        assert!(t(&cmp("externalId", Eq, st("Ext-1"))));
        assert!(!t(&cmp("externalId", Eq, st("ext-1"))));
        assert!(t(&cmp("name.familyName", Co, st("ENS"))));
        assert!(t(&cmp("userName", Sw, st("bjen"))));
        assert!(t(&cmp("userName", Ew, st(".COM"))));
        assert!(!t(&cmp("userName", Ew, st(".org"))));
        assert!(t(&cmp("userName", Gt, st("a"))));
        assert!(t(&cmp("userName", Le, st("bjensen@example.com"))));
        assert!(!t(&cmp("userName", Lt, st("bjensen@example.com"))));
    }

    #[test]
    fn ne_is_true_when_absent_and_pr_checks_presence() {
        use CompareOp::*;
        assert!(t(&cmp("nickName", Ne, st("x"))));
        assert!(!t(&cmp("nickName", Eq, st("x"))));
        assert!(t(&cmp("userName", Ne, st("someone"))));
        assert!(!t(&cmp("userName", Ne, st("BJENSEN@example.com"))));
        assert!(t(&Filter::Present(p("name.givenName"))));
        assert!(!t(&Filter::Present(p("nickName"))));
        assert!(t(&Filter::Present(p("emails"))));
        assert!(t(&cmp("nickName", Eq, CompValue::Null)));
        assert!(t(&cmp("userName", Ne, CompValue::Null)));
        // null tests the attribute itself, complex ones included.
        assert!(t(&cmp("name", Ne, CompValue::Null)));
        assert!(!t(&cmp("name", Eq, CompValue::Null)));
        assert!(validate(&cmp("name", Eq, CompValue::Null), ResourceKind::User).is_ok());
        assert!(validate(&cmp("name", Gt, CompValue::Null), ResourceKind::User).is_err());
        let no_value = json!({"emails": [{"type": "work"}], "name": {"givenName": ""}});
        let m = |f: &Filter| matches(f, ResourceKind::User, &no_value).expect("evaluates");
        assert!(m(&cmp("emails", Ne, CompValue::Null)));
        assert!(m(&cmp("emails.value", Eq, CompValue::Null)));
        assert!(m(&cmp("name", Eq, CompValue::Null)));
        assert!(t(&Filter::Not(Box::new(Filter::Present(p("title"))))));
    }

    #[test]
    fn multi_valued_any_element_and_implicit_value() {
        use CompareOp::*;
        assert!(t(&cmp("emails", Eq, st("BABS@jensen.org"))));
        assert!(t(&cmp("emails.type", Eq, st("home"))));
        assert!(!t(&cmp("emails.type", Eq, st("other"))));
        // ne over a multi-valued attribute: no element equals the operand.
        assert!(!t(&cmp("emails.type", Ne, st("home"))));
        assert!(t(&cmp("emails.type", Ne, st("other"))));
        let vp = Filter::ValuePath(
            p("emails"),
            Box::new(and(
                cmp("type", Eq, st("work")),
                cmp("value", Co, st("@example")),
            )),
        );
        assert!(t(&vp));
        // Conditions of a value filter must hold on the same element.
        let vp = Filter::ValuePath(
            p("emails"),
            Box::new(and(
                cmp("type", Eq, st("home")),
                cmp("value", Co, st("@example")),
            )),
        );
        assert!(!t(&vp));
    }

    #[test]
    fn booleans_numbers_and_date_times() {
        use CompareOp::*;
        assert!(t(&cmp("active", Eq, CompValue::Bool(true))));
        assert!(t(&cmp("active", Ne, CompValue::Bool(false))));
        assert!(t(&cmp("emails.primary", Eq, CompValue::Bool(true))));
        assert!(t(&cmp("meta.lastModified", Gt, st("2024-01-01T00:00:00Z"))));
        assert!(!t(&cmp(
            "meta.lastModified",
            Lt,
            st("2024-01-01T00:00:00Z")
        )));
        let e = matches(
            &cmp("active", Gt, CompValue::Bool(true)),
            ResourceKind::User,
            &user(),
        );
        assert!(matches!(
            e,
            Err(EvalError::UnsupportedOperator { op: "gt", .. })
        ));
    }

    #[test]
    fn extension_paths_and_logic() {
        use CompareOp::*;
        let emp = Filter::Compare(
            AttrPath {
                schema: Some(ENTERPRISE_URN.into()),
                attr: "employeeNumber".into(),
                sub_attr: None,
            },
            Eq,
            st("701984"),
        );
        assert!(t(&emp));
        let mgr = Filter::Compare(
            AttrPath {
                schema: Some(ENTERPRISE_URN.to_lowercase()),
                attr: "manager".into(),
                sub_attr: Some("value".into()),
            },
            Eq,
            st("26118915"),
        );
        assert!(t(&mgr));
        assert!(t(&or(cmp("userName", Eq, st("nobody")), emp.clone())));
        assert!(!t(&and(cmp("userName", Eq, st("nobody")), emp)));
    }

    #[test]
    fn unknown_attributes_and_bad_shapes_are_errors() {
        use CompareOp::*;
        let u = user();
        let k = ResourceKind::User;
        assert!(matches!(
            matches(&cmp("nope", Eq, st("x")), k, &u),
            Err(EvalError::UnknownAttribute(_))
        ));
        // Reported even when the other side of `and` is already false.
        assert!(matches(
            &and(cmp("userName", Eq, st("z")), cmp("nope", Eq, st("x"))),
            k,
            &u
        )
        .is_err());
        assert!(matches!(
            matches(&cmp("name", Eq, st("x")), k, &u),
            Err(EvalError::ComplexComparison(_))
        ));
        let nested = Filter::ValuePath(
            p("emails"),
            Box::new(Filter::ValuePath(
                p("type"),
                Box::new(Filter::Present(p("x"))),
            )),
        );
        assert!(matches!(
            matches(&nested, k, &u),
            Err(EvalError::NestedValuePath(_))
        ));
        let bad_inner = Filter::ValuePath(p("emails"), Box::new(cmp("nope", Eq, st("x"))));
        assert!(matches(&bad_inner, k, &json!({"userName": "a"})).is_err());
        assert!(validate(&bad_inner, k).is_err());
        assert_eq!(
            EvalError::UnknownAttribute("x".into()).scim_type().as_str(),
            "invalidFilter"
        );
    }

    #[test]
    fn date_times_are_instants_and_other_operands_are_errors() {
        use CompareOp::*;
        let us = |s: &str| datetime_micros(s);
        assert_eq!(us("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(us("1970-01-01t00:00:01.5z"), Some(1_500_000));
        assert_eq!(us("1969-12-31T23:59:59.9999999Z"), Some(-1));
        assert_eq!(us("2000-03-01T00:00:00Z"), Some(951_868_800_000_000));
        assert_eq!(
            us("2011-05-13T06:42:34+02:00"),
            us("2011-05-13T04:42:34.000000Z")
        );
        assert_eq!(us("2024-02-29T00:00:00-00:00"), Some(1_709_164_800_000_000));
        for bad in [
            "",
            "yesterday",
            "2011-05-13",
            "2011-05-13T04:42:34",
            "2011-05-13 04:42:34Z",
            "2011-05-13T04:42:34.Z",
            "2011-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2011-13-01T00:00:00Z",
            "2011-05-13T24:00:00Z",
            "2016-12-31T23:59:60Z",
            "2011-05-13T04:42:34+2:00",
            "2011-05-13T04:42:34+24:00",
            "2011-05-13T04:42:34Zjunk",
            "+2011-05-13T04:42:34Z",
        ] {
            assert_eq!(us(bad), None, "{bad}");
        }
        let u = user();
        let f = |op, v: &str| cmp("meta.lastModified", op, st(v));
        assert!(t(&f(Eq, "2024-05-01T12:00:00+02:00")));
        assert!(t(&f(Co, "2024-05-01t10:00:00.000z")));
        assert!(t(&f(Ge, "2024-05-01T10:00:00Z")));
        assert!(!t(&f(Gt, "2024-05-01T10:00:00.000000Z")));
        assert!(t(&f(Lt, "2024-05-01T10:00:00.000001Z")));
        for bad in [
            st(""),
            st("2024"),
            CompValue::Bool(true),
            CompValue::Number(1.into()),
        ] {
            let f = cmp("meta.lastModified", Gt, bad);
            assert!(matches!(
                matches(&f, ResourceKind::User, &u),
                Err(EvalError::InvalidDateTime { .. })
            ));
            assert!(validate(&f, ResourceKind::User).is_err());
        }
        assert!(!t(&Filter::Not(Box::new(cmp(
            "meta.created",
            Eq,
            CompValue::Null
        )))));
    }

    #[test]
    fn element_matching_for_patch() {
        use CompareOp::*;
        let emails = ResourceKind::User
            .resolve(&AttrPath::simple("emails"))
            .expect("emails")
            .attr;
        let f = cmp("type", Eq, st("WORK"));
        assert!(matches_element(&f, emails, &json!({"type": "work", "value": "a"})).expect("ok"));
        assert!(!matches_element(&f, emails, &json!({"type": "home"})).expect("ok"));
        assert!(matches_element(&cmp("bogus", Eq, st("x")), emails, &json!({})).is_err());
        let members = ResourceKind::Group
            .resolve(&AttrPath::simple("members"))
            .expect("members")
            .attr;
        // members.value is caseExact: ids are compared exactly.
        let f = cmp("value", Eq, st("ABC"));
        assert!(matches_element(&f, members, &json!({"value": "ABC"})).expect("ok"));
        assert!(!matches_element(&f, members, &json!({"value": "abc"})).expect("ok"));
    }
}
