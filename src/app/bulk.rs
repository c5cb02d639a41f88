//! Bulk (RFC 7644 §3.7): many operations in one request, each applied in its
//! own transaction, with `bulkId` cross-references and `failOnErrors`.
//!
//! Operations run in request order, except that an operation whose data
//! names `bulkId:X` waits until the operation with `bulkId: X` has run; an
//! operation whose references can never resolve (unknown, failed, or a
//! cycle) fails with 409 without being attempted.

use scim::ScimType;
use std::collections::HashMap;

use scim::schema::ResourceKind;
use serde_json::Value;

use super::{App, Error, RequestContext, Result};
use crate::domain::ResourceId;

/// Limits advertised in ServiceProviderConfig and enforced here.
#[derive(Debug, Clone, Copy)]
pub struct BulkLimits {
    pub max_operations: usize,
    pub max_payload_size: usize,
}

pub const BULK_LIMITS: BulkLimits = BulkLimits {
    max_operations: 1000,
    max_payload_size: 1024 * 1024,
};

/// One operation of a BulkRequest as it ended, in request order. The HTTP
/// layer turns it into a BulkResponse entry (status, error body).
#[derive(Debug)]
pub struct BulkOp {
    /// As the client sent it, uppercased.
    pub method: String,
    pub bulk_id: Option<String>,
    pub location: Option<String>,
    pub version: Option<String>,
    pub outcome: BulkOutcome,
}

/// What one bulk operation did.
#[derive(Debug)]
pub enum BulkOutcome {
    Created,
    Replaced,
    Patched,
    Deleted,
    /// The operation ran and failed, as the same single request would.
    Failed(Error),
    /// Not attempted: it references a `bulkId` that no successful operation
    /// of this request defined (unknown, failed, or a cycle).
    Unresolved(String),
}

impl BulkOutcome {
    fn is_failure(&self) -> bool {
        matches!(self, BulkOutcome::Failed(_) | BulkOutcome::Unresolved(_))
    }
}

impl App {
    /// Runs a BulkRequest and returns the BulkResponse body.
    pub async fn bulk(&self, ctx: &RequestContext, body: Value) -> Result<Vec<BulkOp>> {
        let schemas_ok = body
            .get("schemas")
            .and_then(Value::as_array)
            .is_some_and(|s| {
                s.iter().any(|v| {
                    v.as_str()
                        .is_some_and(|v| v.eq_ignore_ascii_case(scim::schema::BULK_REQUEST_URN))
                })
            });
        if !schemas_ok {
            return Err(Error::Scim(
                ScimType::InvalidSyntax,
                format!(
                    "'schemas' must contain '{}'",
                    scim::schema::BULK_REQUEST_URN
                ),
            ));
        }
        let ops = body
            .get("Operations")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                Error::Scim(
                    ScimType::InvalidSyntax,
                    "'Operations' must be an array".into(),
                )
            })?;
        if ops.len() > BULK_LIMITS.max_operations {
            return Err(Error::PayloadTooLarge(format!(
                "{} operations exceed maxOperations {}",
                ops.len(),
                BULK_LIMITS.max_operations
            )));
        }
        let fail_on_errors = match body.get("failOnErrors") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                Error::Scim(
                    ScimType::InvalidValue,
                    "'failOnErrors' must be a positive integer".into(),
                )
            })?),
        };

        let mut results: Vec<Option<BulkOp>> = (0..ops.len()).map(|_| None).collect();
        let mut created: HashMap<String, String> = HashMap::new();
        let mut failed_ids: Vec<String> = Vec::new();
        let mut errors = 0u64;
        let mut pending: Vec<usize> = (0..ops.len()).collect();
        'outer: while !pending.is_empty() {
            let mut progressed = false;
            let mut still = Vec::new();
            for &i in &pending {
                let op = &ops[i];
                let refs = bulk_refs(op.get("data"))
                    .into_iter()
                    .chain(bulk_refs(op.get("path")));
                let mut waiting = false;
                let mut broken = None;
                for r in refs {
                    if created.contains_key(&r) {
                        continue;
                    }
                    let declared_later = pending.iter().any(|&j| {
                        j != i && ops[j].get("bulkId").and_then(Value::as_str) == Some(r.as_str())
                    });
                    if declared_later && !failed_ids.contains(&r) {
                        waiting = true;
                    } else {
                        broken = Some(r);
                        break;
                    }
                }
                if waiting && broken.is_none() {
                    still.push(i);
                    continue;
                }
                progressed = true;
                let result = match broken {
                    Some(r) => unattempted(
                        op,
                        format!(
                            "bulkId '{r}' is not defined by a successful operation of this request"
                        ),
                    ),
                    None => self.bulk_one(ctx, op, &created).await,
                };
                if result.outcome.is_failure() {
                    errors += 1;
                    if let Some(id) = &result.bulk_id {
                        failed_ids.push(id.clone());
                    }
                } else if let (Some(bid), Some(loc)) = (&result.bulk_id, &result.location) {
                    if let Some(id) = loc.rsplit('/').next() {
                        created.insert(bid.clone(), id.to_string());
                    }
                }
                results[i] = Some(result);
                if fail_on_errors.is_some_and(|limit| errors >= limit) {
                    break 'outer;
                }
            }
            if !progressed {
                // Every remaining operation waits on another: a cycle.
                for &i in &still {
                    results[i] = Some(unattempted(&ops[i], "circular bulkId references".into()));
                }
                break;
            }
            pending = still;
        }
        Ok(results.into_iter().flatten().collect())
    }

    async fn bulk_one(
        &self,
        ctx: &RequestContext,
        op: &Value,
        created: &HashMap<String, String>,
    ) -> BulkOp {
        match self.try_bulk_one(ctx, op, created).await {
            Ok(r) => r,
            Err(e) => BulkOp {
                outcome: BulkOutcome::Failed(e),
                ..unattempted(op, String::new())
            },
        }
    }

    async fn try_bulk_one(
        &self,
        ctx: &RequestContext,
        op: &Value,
        created: &HashMap<String, String>,
    ) -> Result<BulkOp> {
        let method = op
            .get("method")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                Error::Scim(
                    ScimType::InvalidSyntax,
                    "each operation needs a 'method'".into(),
                )
            })?
            .to_ascii_uppercase();
        let bulk_id = op.get("bulkId").and_then(Value::as_str).map(str::to_string);
        let path = op.get("path").and_then(Value::as_str).ok_or_else(|| {
            Error::Scim(
                ScimType::InvalidSyntax,
                "each operation needs a 'path'".into(),
            )
        })?;
        let path = substitute_str(path, created);
        let data = op.get("data").cloned().map(|d| substitute(d, created));
        let if_match = op.get("version").and_then(Value::as_str);
        let (kind, id) = parse_bulk_path(&path)?;
        let need_data = || {
            data.clone().ok_or_else(|| {
                Error::Scim(ScimType::InvalidSyntax, format!("{method} needs 'data'"))
            })
        };
        let need_id = || {
            id.clone().ok_or_else(|| {
                Error::Scim(
                    ScimType::InvalidPath,
                    format!("{method} needs a path like /Users/{{id}}"),
                )
            })
        };
        let (done, outcome) = match method.as_str() {
            "POST" => {
                if id.is_some() {
                    return Err(Error::Scim(
                        ScimType::InvalidPath,
                        "POST path must be /Users or /Groups".into(),
                    ));
                }
                if bulk_id.is_none() {
                    return Err(Error::Scim(
                        ScimType::InvalidSyntax,
                        "POST operations need a 'bulkId'".into(),
                    ));
                }
                (
                    BulkOutcome::Created,
                    Some(self.create(ctx, kind, need_data()?).await?),
                )
            }
            "PUT" => (
                BulkOutcome::Replaced,
                Some(
                    self.replace(ctx, kind, &need_id()?, need_data()?, if_match)
                        .await?,
                ),
            ),
            "PATCH" => (
                BulkOutcome::Patched,
                self.patch(ctx, kind, &need_id()?, need_data()?, if_match, true)
                    .await?,
            ),
            "DELETE" => {
                self.delete(ctx, kind, &need_id()?, if_match).await?;
                (BulkOutcome::Deleted, None)
            }
            other => {
                return Err(Error::Scim(
                    ScimType::InvalidSyntax,
                    format!("unsupported bulk method '{other}': use POST, PUT, PATCH or DELETE"),
                ))
            }
        };
        let location = outcome
            .as_ref()
            .and_then(|o| o.body.pointer("/meta/location"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| {
                id.as_ref()
                    .map(|id| format!("{}{}/{id}", ctx.base_url, kind.endpoint()))
            });
        Ok(BulkOp {
            method,
            bulk_id,
            location,
            version: outcome.map(|o| o.etag),
            outcome: done,
        })
    }
}

/// An operation that was not attempted, with why.
fn unattempted(op: &Value, why: String) -> BulkOp {
    BulkOp {
        method: op
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_uppercase(),
        bulk_id: op.get("bulkId").and_then(Value::as_str).map(str::to_string),
        location: None,
        version: None,
        outcome: BulkOutcome::Unresolved(why),
    }
}

/// `/Users`, `/Users/{id}`, `/Groups`, `/Groups/{id}`.
fn parse_bulk_path(path: &str) -> Result<(ResourceKind, Option<ResourceId>)> {
    let trimmed = path.trim_start_matches('/');
    let (stem, id) = match trimmed.split_once('/') {
        Some((s, id)) if !id.is_empty() && !id.contains('/') => (s, Some(id)),
        Some(_) => {
            return Err(Error::Scim(
                ScimType::InvalidPath,
                format!("invalid bulk path '{path}'"),
            ))
        }
        None => (trimmed, None),
    };
    let kind = match stem {
        "Users" => ResourceKind::User,
        "Groups" => ResourceKind::Group,
        _ => {
            return Err(Error::Scim(
                ScimType::InvalidPath,
                format!("invalid bulk path '{path}': use /Users or /Groups"),
            ))
        }
    };
    Ok((kind, id.map(ResourceId::from_client)))
}

/// Every `bulkId:X` reference in a value.
fn bulk_refs(v: Option<&Value>) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => {
                if let Some(id) = s.strip_prefix("bulkId:") {
                    out.push(id.to_string());
                } else if let Some(pos) = s.find("bulkId:") {
                    // Paths such as "/Users/bulkId:qwerty".
                    out.push(s[pos + 7..].to_string());
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            Value::Object(map) => map.values().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    if let Some(v) = v {
        walk(v, &mut out);
    }
    out
}

fn substitute(v: Value, created: &HashMap<String, String>) -> Value {
    match v {
        Value::String(s) => Value::String(substitute_str(&s, created)),
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|i| substitute(i, created)).collect())
        }
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, substitute(v, created)))
                .collect(),
        ),
        other => other,
    }
}

fn substitute_str(s: &str, created: &HashMap<String, String>) -> String {
    match s.find("bulkId:") {
        Some(pos) => match created.get(&s[pos + 7..]) {
            Some(id) => format!("{}{id}", &s[..pos]),
            None => s.to_string(),
        },
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_and_substitutes_bulk_ids() {
        let data =
            json!({"members": [{"type": "User", "value": "bulkId:u1"}], "x": "/Users/bulkId:u2"});
        assert_eq!(
            bulk_refs(Some(&data)),
            vec!["u1".to_string(), "u2".to_string()]
        );
        let created = HashMap::from([("u1".to_string(), "abc".to_string())]);
        let out = substitute(data, &created);
        assert_eq!(out["members"][0]["value"], "abc");
        assert_eq!(out["x"], "/Users/bulkId:u2");
    }

    #[test]
    fn bulk_paths() {
        assert!(matches!(
            parse_bulk_path("/Users"),
            Ok((ResourceKind::User, None))
        ));
        assert!(matches!(
            parse_bulk_path("/Groups/x"),
            Ok((ResourceKind::Group, Some(_)))
        ));
        assert!(parse_bulk_path("/Nope").is_err());
        assert!(parse_bulk_path("/Users/a/b").is_err());
    }
}
