//! The effective-permission change feed as stored: an outbox written in the
//! transaction of the change, numbered per tenant, read by cursor and
//! pruned by age.
//!
//! Invariant: a tenant's events are numbered 1, 2, 3… in commit order. The
//! numbers come from `tenants.change_seq`, advanced in the writing
//! transaction after `advance_tenant` locked the tenant row (PostgreSQL)
//! or under the single writer (SQLite). So a reader that saw seq N never
//! sees an event N-1 appear later: a cursor skips nothing.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::resources::{positional, row_placeholders, MULTI_ROW};
use super::{Result, Store, WriteTx};
use crate::domain::{ChangeCause, ChangeSeq, TenantId, Timestamp};

/// One event to append: a user whose effective permissions changed.
#[derive(Debug, Clone)]
pub struct NewChange {
    pub user_id: String,
    pub user_name: String,
    /// The tenant revision of the write.
    pub revision: i64,
    /// JSON of what was added and removed.
    pub diff: String,
    /// The write that caused this change, when not the one
    /// [`WriteTx::append_changes`] names for all (a group commit's writes
    /// each name their own).
    pub cause: Option<ChangeCause>,
}

/// One stored event.
#[derive(Debug, Clone)]
pub struct StoredChange {
    pub seq: ChangeSeq,
    pub revision: i64,
    pub user_id: String,
    pub user_name: String,
    pub at: String,
    /// JSON of a [`ChangeCause`].
    pub cause: String,
    /// JSON of the diff.
    pub diff: String,
}

/// Where a tenant's feed starts and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeBounds {
    /// Events up to here may have been pruned.
    pub pruned_through: ChangeSeq,
    /// The newest event's seq (0: none yet).
    pub head: ChangeSeq,
}

const CHANGE_COLUMNS: &str = "seq, revision, user_id, user_name, at, cause, diff";

fn change_from(r: &AnyRow) -> Result<StoredChange> {
    Ok(StoredChange {
        seq: ChangeSeq::new(r.try_get(0)?).unwrap_or(ChangeSeq::START),
        revision: r.try_get(1)?,
        user_id: r.try_get(2)?,
        user_name: r.try_get(3)?,
        at: r.try_get(4)?,
        cause: r.try_get(5)?,
        diff: r.try_get(6)?,
    })
}

impl WriteTx {
    /// Names the cause the events of this transaction carry.
    pub fn set_cause(&mut self, cause: ChangeCause) {
        self.cause = Some(cause);
    }

    /// The cause named with [`WriteTx::set_cause`].
    pub fn cause(&self) -> Option<&ChangeCause> {
        self.cause.as_ref()
    }

    /// Appends events to the tenant's feed, numbered after its newest one.
    /// Call after `advance_tenant`, which locked the tenant row.
    pub async fn append_changes(
        &mut self,
        tenant: TenantId,
        at: &str,
        cause: &ChangeCause,
        changes: &[NewChange],
    ) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let (last,): (i64,) = sqlx::query_as(
            "UPDATE tenants SET change_seq = change_seq + $1 WHERE id = $2 RETURNING change_seq",
        )
        .bind(changes.len() as i64)
        .bind(tenant.to_string())
        .fetch_one(&mut *self.tx)
        .await?;
        let encode = |cause: &ChangeCause| {
            serde_json::to_string(cause)
                .map_err(|e| super::Error::Sql(sqlx::Error::Encode(Box::new(e))))
        };
        let common = encode(cause)?;
        let mut seq = last - changes.len() as i64;
        for chunk in changes.chunks(MULTI_ROW) {
            let sql = format!(
                "INSERT INTO permission_changes (tenant_id, seq, revision, user_id, user_name, at, cause, diff) VALUES {}",
                row_placeholders(chunk.len(), 8)
            );
            let mut q = sqlx::query(positional(self.dialect, sql));
            for c in chunk {
                seq += 1;
                q = q
                    .bind(tenant.to_string())
                    .bind(seq)
                    .bind(c.revision)
                    .bind(c.user_id.as_str())
                    .bind(c.user_name.as_str())
                    .bind(at)
                    .bind(match &c.cause {
                        Some(own) => encode(own)?,
                        None => common.clone(),
                    })
                    .bind(c.diff.as_str());
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }
}

impl Store {
    /// Up to `limit` events after `after`, oldest first.
    pub async fn changes_after(
        &self,
        tenant: TenantId,
        after: ChangeSeq,
        limit: i64,
    ) -> Result<Vec<StoredChange>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CHANGE_COLUMNS} FROM permission_changes WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        )))
        .bind(tenant.to_string())
        .bind(after.get())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(change_from).collect()
    }

    /// The tenant's feed bounds.
    pub async fn change_bounds(&self, tenant: TenantId) -> Result<ChangeBounds> {
        let (pruned, head): (i64, i64) =
            sqlx::query_as("SELECT changes_pruned_through, change_seq FROM tenants WHERE id = $1")
                .bind(tenant.to_string())
                .fetch_one(&self.pool)
                .await?;
        Ok(ChangeBounds {
            pruned_through: ChangeSeq::new(pruned).unwrap_or(ChangeSeq::START),
            head: ChangeSeq::new(head).unwrap_or(ChangeSeq::START),
        })
    }

    /// Deletes each tenant's events older than `before` that every one of
    /// the tenant's webhooks has passed (an endpoint that is behind keeps
    /// its events until it delivers or dead-letters them), and records how
    /// far each tenant was pruned. Returns the events deleted.
    pub async fn prune_changes(&self, before: Timestamp) -> Result<u64> {
        let _guard = self.exclusive().await;
        let tenants: Vec<(String, i64)> =
            sqlx::query_as("SELECT id, changes_pruned_through FROM tenants")
                .fetch_all(&self.pool)
                .await?;
        let mut deleted = 0;
        for (tenant, pruned) in tenants {
            let (floor,): (Option<i64>,) =
                sqlx::query_as("SELECT MIN(position) FROM webhooks WHERE tenant_id = $1")
                    .bind(&tenant)
                    .fetch_one(&self.pool)
                    .await?;
            let (through,): (Option<i64>,) = sqlx::query_as(
                "SELECT MAX(seq) FROM permission_changes WHERE tenant_id = $1 AND at < $2 AND seq <= $3",
            )
            .bind(&tenant)
            .bind(before.to_string())
            .bind(floor.unwrap_or(i64::MAX))
            .fetch_one(&self.pool)
            .await?;
            let Some(through) = through.filter(|t| *t > pruned) else {
                continue;
            };
            let mut tx = self.pool.begin().await?;
            let done =
                sqlx::query("DELETE FROM permission_changes WHERE tenant_id = $1 AND seq <= $2")
                    .bind(&tenant)
                    .bind(through)
                    .execute(&mut *tx)
                    .await?;
            sqlx::query(
                "UPDATE tenants SET changes_pruned_through = $1 WHERE id = $2 AND changes_pruned_through < $1",
            )
            .bind(through)
            .bind(&tenant)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            deleted += done.rows_affected();
        }
        Ok(deleted)
    }
}
