//! The effective-permission change feed: what each event says, how a write
//! produces it (in its own transaction, see `derive.rs`), and how readers
//! page through it and wait for more.
//!
//! Events are diffs of the served summary (roles, profiles, permissions),
//! so a reader that replays every event after a listing's cursor, in
//! order, ends where the store is: the last event touching a permission
//! decides it.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::permissions::Summary;
use super::{App, Error, Result};
use crate::domain::{ChangeCause, ChangeSeq, Tenant};
use crate::store::{NewChange, StoredChange};

/// Most events one page holds, and the longest a reader may wait (under
/// the HTTP layer's 60 s request timeout).
pub const MAX_PAGE: i64 = 1000;
pub const MAX_WAIT: Duration = Duration::from_secs(50);
/// How often a waiting reader looks at the store for events other
/// replicas committed (this replica's own commits wake it at once).
const WAIT_POLL: Duration = Duration::from_millis(200);

/// What one side of a change holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    pub roles: Vec<String>,
    pub profiles: Vec<String>,
    pub permissions: Vec<String>,
}

impl Grants {
    fn is_empty(&self) -> bool {
        self.roles.is_empty() && self.profiles.is_empty() && self.permissions.is_empty()
    }
}

/// What changed for one user, as stored with the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionDiff {
    pub added: Grants,
    pub removed: Grants,
    /// The user's state after the change.
    pub active: bool,
    /// The user was deleted: everything they held is in `removed`.
    pub deleted: bool,
}

fn minus(a: &[String], b: &[String]) -> Vec<String> {
    let b: BTreeSet<&String> = b.iter().collect();
    let mut out: Vec<String> = a.iter().filter(|x| !b.contains(x)).cloned().collect();
    out.sort();
    out.dedup();
    out
}

/// The diff between a user's summary before and after a write; `None`
/// when neither roles, profiles nor permissions changed.
pub fn diff(before: Option<&Summary>, after: Option<&Summary>) -> Option<PermissionDiff> {
    fn side(s: Option<&Summary>) -> (&[String], &[String], &[String]) {
        match s {
            Some(s) => (&s.roles, &s.profiles, &s.permissions),
            None => (&[], &[], &[]),
        }
    }
    let (br, bp, bperm) = side(before);
    let (ar, ap, aperm) = side(after);
    let d = PermissionDiff {
        added: Grants {
            roles: minus(ar, br),
            profiles: minus(ap, bp),
            permissions: minus(aperm, bperm),
        },
        removed: Grants {
            roles: minus(br, ar),
            profiles: minus(bp, ap),
            permissions: minus(bperm, aperm),
        },
        active: after.is_some_and(|s| s.user.active),
        deleted: after.is_none(),
    };
    (!d.added.is_empty() || !d.removed.is_empty()).then_some(d)
}

/// The event to append for one user, if their grants changed.
pub(super) fn new_change(
    user_id: &str,
    before: Option<&Summary>,
    after: Option<&Summary>,
    revision: i64,
) -> Result<Option<NewChange>> {
    let Some(d) = diff(before, after) else {
        return Ok(None);
    };
    let user_name = after
        .or(before)
        .map(|s| s.user.user_name.clone())
        .unwrap_or_default();
    Ok(Some(NewChange {
        user_id: user_id.to_string(),
        user_name,
        revision,
        diff: serde_json::to_string(&d)
            .map_err(|e| Error::Internal(format!("cannot encode a permission diff: {e}")))?,
        cause: None,
    }))
}

/// One event as readers and webhooks receive it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// Unique across tenants: `{tenant id}.{seq}`. Receivers deduplicate
    /// on it (delivery is at least once).
    pub id: String,
    /// The feed position of this event: pass it as `after` to read on.
    pub cursor: ChangeSeq,
    pub tenant: String,
    pub user: EventUser,
    /// The tenant revision of the write; the user's rows are at least this
    /// fresh once the event is read.
    pub revision: i64,
    pub added: Grants,
    pub removed: Grants,
    pub active: bool,
    pub deleted: bool,
    pub cause: ChangeCause,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventUser {
    pub id: String,
    #[serde(rename = "userName")]
    pub user_name: String,
}

impl ChangeEvent {
    pub(super) fn from_stored(tenant: &Tenant, c: StoredChange) -> Result<ChangeEvent> {
        let corrupt = |what: &str, e: serde_json::Error| {
            Error::Internal(format!(
                "stored change {} of tenant '{}' has an unreadable {what}: {e}",
                c.seq, tenant.name
            ))
        };
        let d: PermissionDiff = serde_json::from_str(&c.diff).map_err(|e| corrupt("diff", e))?;
        let cause: ChangeCause = serde_json::from_str(&c.cause).map_err(|e| corrupt("cause", e))?;
        Ok(ChangeEvent {
            id: format!("{}.{}", tenant.id, c.seq),
            cursor: c.seq,
            tenant: tenant.name.to_string(),
            user: EventUser {
                id: c.user_id,
                user_name: c.user_name,
            },
            revision: c.revision,
            added: d.added,
            removed: d.removed,
            active: d.active,
            deleted: d.deleted,
            cause,
            at: c.at,
        })
    }
}

/// One page of the feed.
#[derive(Debug, Clone, Serialize)]
pub struct ChangePage {
    pub events: Vec<ChangeEvent>,
    /// Where to read on: the last event's cursor, or the `after` given
    /// when the page is empty.
    pub next: ChangeSeq,
    /// More events are already waiting after `next`.
    pub has_more: bool,
}

/// A page of every user's effective permissions, for a reader starting
/// over (a new consumer, or a cursor older than retention).
#[derive(Debug, Clone, Serialize)]
pub struct PermissionListing {
    /// Read the feed from here after the last page: taken before the first
    /// page was read, so replaying from it never misses a change.
    pub resume_after: ChangeSeq,
    pub users: Vec<ListedUser>,
    /// Pass as `page` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListedUser {
    /// The tenant revision that last changed this user's permissions.
    pub revision: i64,
    #[serde(flatten)]
    pub summary: Value,
}

impl App {
    /// Events after `after` (from the oldest retained when `None`), at most
    /// `limit`; when there are none yet, waits up to `wait` for one.
    pub async fn changes(
        &self,
        tenant: &Tenant,
        after: Option<ChangeSeq>,
        limit: i64,
        wait: Duration,
    ) -> Result<ChangePage> {
        let limit = limit.clamp(1, MAX_PAGE);
        let wait = wait.min(MAX_WAIT);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the read, so a commit between the read and
            // the wait still wakes this reader.
            let notified = self.change_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let bounds = self.store.change_bounds(tenant.id).await?;
            let after = after.unwrap_or(bounds.pruned_through);
            if after < bounds.pruned_through {
                return Err(Error::CursorExpired {
                    tenant: tenant.name.to_string(),
                    cursor: after,
                    oldest: bounds.pruned_through,
                });
            }
            if after > bounds.head {
                return Err(Error::CursorAhead {
                    tenant: tenant.name.to_string(),
                    cursor: after,
                    head: bounds.head,
                });
            }
            let stored = self
                .store
                .changes_after(tenant.id, after, limit + 1)
                .await?;
            if !stored.is_empty() || tokio::time::Instant::now() >= deadline {
                let has_more = stored.len() as i64 > limit;
                let events = stored
                    .into_iter()
                    .take(limit as usize)
                    .map(|c| ChangeEvent::from_stored(tenant, c))
                    .collect::<Result<Vec<_>>>()?;
                let next = events.last().map(|e| e.cursor).unwrap_or(after);
                return Ok(ChangePage {
                    events,
                    next,
                    has_more,
                });
            }
            let nap = (deadline - tokio::time::Instant::now()).min(WAIT_POLL);
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    /// A page of every user's stored effective permissions, by user id.
    /// `page` is the previous page's `next_page` (none for the first).
    pub async fn permission_listing(
        &self,
        tenant: &Tenant,
        page: Option<&str>,
        limit: i64,
    ) -> Result<PermissionListing> {
        let limit = limit.clamp(1, MAX_PAGE);
        // The cursor first, then the rows: the rows are at least as new as
        // the cursor, and replaying what follows it converges. Later pages
        // carry the first page's cursor in their token.
        let (resume_after, after_user) = match page {
            Some(token) => parse_page_token(token)?,
            None => (
                self.store.change_bounds(tenant.id).await?.head,
                String::new(),
            ),
        };
        let rows = self
            .store
            .effective_page(tenant.id, &after_user, limit + 1)
            .await?;
        let more = rows.len() as i64 > limit;
        let mut users = Vec::with_capacity(rows.len().min(limit as usize));
        let mut last_id = None;
        for row in rows.into_iter().take(limit as usize) {
            let summary: Value = serde_json::from_str(&row.summary).map_err(|e| {
                Error::Internal(format!(
                    "stored summary of '{}' is unreadable: {e}",
                    row.user_id
                ))
            })?;
            last_id = Some(row.user_id);
            users.push(ListedUser {
                revision: row.revision,
                summary,
            });
        }
        Ok(PermissionListing {
            resume_after,
            users,
            next_page: last_id
                .filter(|_| more)
                .map(|id| format!("{resume_after}:{id}")),
        })
    }

    /// Deletes events older than `retention` that every webhook has passed.
    pub async fn prune_changes(&self, retention: Duration) -> Result<u64> {
        let Some(before) = self.clock().now().checked_sub(retention) else {
            return Ok(0);
        };
        Ok(self.store.prune_changes(before).await?)
    }
}

/// A listing's page token: the first page's cursor and the last user id.
fn parse_page_token(token: &str) -> Result<(ChangeSeq, String)> {
    token
        .split_once(':')
        .and_then(|(seq, user)| Some((ChangeSeq::parse(seq)?, user.to_string())))
        .ok_or_else(|| {
            Error::Scim(
                scim::ScimType::InvalidValue,
                format!("page '{token}' is not a page token from this listing's next_page"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::SummaryUser;

    fn summary(roles: &[&str], perms: &[&str], active: bool) -> Summary {
        Summary {
            user: SummaryUser {
                id: "u1".into(),
                user_name: "ann".into(),
                active,
            },
            roles: roles.iter().map(|s| s.to_string()).collect(),
            profiles: vec![],
            permissions: perms.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_diff_names_what_was_added_and_removed() {
        let a = summary(&["agent"], &["chat.read", "chat.write"], true);
        let b = summary(&["agent", "admin"], &["chat.read", "users.manage"], true);
        let d = diff(Some(&a), Some(&b)).unwrap();
        assert_eq!(d.added.roles, vec!["admin"]);
        assert_eq!(d.added.permissions, vec!["users.manage"]);
        assert_eq!(d.removed.permissions, vec!["chat.write"]);
        assert!(d.removed.roles.is_empty());
        assert!(d.active && !d.deleted);
        assert_eq!(diff(Some(&a), Some(&a)), None);
        // A userName or active change alone changes no grant.
        assert_eq!(
            diff(
                Some(&a),
                Some(&summary(&["agent"], &["chat.read", "chat.write"], false))
            ),
            None
        );
        let gone = diff(Some(&a), None).unwrap();
        assert!(gone.deleted && !gone.active);
        assert_eq!(gone.removed.permissions, vec!["chat.read", "chat.write"]);
        assert_eq!(diff(None, Some(&summary(&[], &[], true))), None);
    }

    #[test]
    fn page_tokens_round_trip_and_garbage_is_refused() {
        let (seq, user) = parse_page_token("42:abc-def").unwrap();
        assert_eq!((seq.get(), user.as_str()), (42, "abc-def"));
        assert!(parse_page_token("nonsense").is_err());
        assert!(parse_page_token("-1:x").is_err());
    }
}
