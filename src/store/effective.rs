//! Effective permissions as stored: one row per user, written by `app` in
//! the transaction of the write that changed it, and the reads a write
//! needs to find whom it affected (the users under a group, the group
//! closure of a few users, the users contending for limited slots).
//!
//! Every query here is bounded by what the write touched: a group's
//! descendants, a user's ancestors, the contenders of one tenant. The one
//! whole-tenant read, [`WriteTx::directory`], is for a mapping change or a
//! bulk write that touched most of the tenant anyway.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::directory::{directory_on, group_from_row, tenant_epoch, Directory, DirectoryUser};
use super::resources::{
    dialect_of, member_from_row, placeholders, positional, row_placeholders, MULTI_ROW,
};
use super::tenants::tenant_from_row;
use super::{Error, Result, Store, WriteTx};
use crate::domain::{Tenant, TenantId, TenantName};

/// Ids per IN list.
const IN_CHUNK: usize = 500;

/// What one transaction wrote in one tenant.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Users whose own attributes or direct memberships changed.
    pub users: BTreeSet<String>,
    /// Groups whose attributes changed, or that were added to or removed
    /// from another group: every user under them is affected.
    pub groups: BTreeSet<String>,
}

/// One user's stored effective permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveRow {
    pub user_id: String,
    /// The tenant revision of the write that last changed the row.
    pub revision: i64,
    pub mapping: String,
    pub contends: bool,
    /// JSON of the served summary.
    pub summary: String,
    /// Limit refusal kinds, comma-separated; `None` when none.
    pub refused: Option<String>,
}

impl EffectiveRow {
    /// Equal but for the revision: an unchanged recomputation rewrites
    /// nothing.
    pub fn same_content(&self, other: &EffectiveRow) -> bool {
        self.mapping == other.mapping
            && self.contends == other.contends
            && self.summary == other.summary
            && self.refused == other.refused
    }
}

/// The tenant row after a write advanced its revision.
#[derive(Debug, Clone)]
pub struct TenantRevision {
    pub revision: i64,
    pub name: TenantName,
    /// The mapping fingerprint the tenant's rows were computed under.
    pub mapping: Option<String>,
}

/// What a check reads: the tenant's revision, the user and their row, in
/// one query.
#[derive(Debug, Clone)]
pub struct CheckRow {
    pub revision: i64,
    /// `(id, userName)`; `None` when no user has that id or userName.
    pub user: Option<(String, String)>,
    pub row: Option<EffectiveRow>,
}

const ROW_COLUMNS: &str = "user_id, revision, mapping, contends, summary, refused";

fn row_from(r: &AnyRow, at: usize) -> Result<EffectiveRow> {
    Ok(EffectiveRow {
        user_id: r.try_get(at)?,
        revision: r.try_get(at + 1)?,
        mapping: r.try_get(at + 2)?,
        contends: r.try_get::<i64, _>(at + 3)? != 0,
        summary: r.try_get(at + 4)?,
        refused: r.try_get(at + 5)?,
    })
}

impl WriteTx {
    /// Takes what the transaction wrote so far, per tenant.
    pub fn take_changes(&mut self) -> BTreeMap<TenantId, Changes> {
        let taken = std::mem::take(&mut self.changes);
        // Still written: commit refuses them until they are settled.
        for t in taken.keys() {
            self.changes.entry(*t).or_default();
        }
        taken
    }

    /// Advances the tenant's revision inside the transaction (locking the
    /// tenant row on PostgreSQL, so the derived writes of one tenant's
    /// transactions happen one at a time, each after the one before has
    /// committed) and marks the tenant settled.
    pub async fn advance_tenant(&mut self, tenant: TenantId) -> Result<TenantRevision> {
        let row = sqlx::query(
            "UPDATE tenants SET epoch = epoch + 1 WHERE id = $1 RETURNING epoch, name, mapping",
        )
        .bind(tenant.to_string())
        .fetch_one(&mut *self.tx)
        .await?;
        let revision: i64 = row.try_get(0)?;
        let name: String = row.try_get(1)?;
        self.settled.insert(tenant, revision);
        Ok(TenantRevision {
            revision,
            name: TenantName::parse(&name)
                .map_err(|e| Error::Sql(sqlx::Error::Decode(Box::new(e))))?,
            mapping: row.try_get(2)?,
        })
    }

    /// Records the mapping the tenant's rows are now computed under.
    pub async fn set_tenant_mapping(
        &mut self,
        tenant: TenantId,
        mapping: Option<&str>,
    ) -> Result<()> {
        sqlx::query("UPDATE tenants SET mapping = $1 WHERE id = $2")
            .bind(mapping)
            .bind(tenant.to_string())
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Every user under these groups, through nesting (cycles cut).
    pub async fn users_under(
        &mut self,
        tenant: TenantId,
        groups: &[String],
    ) -> Result<BTreeSet<String>> {
        users_under_on(&mut self.tx, tenant, groups).await
    }

    /// These users (those that exist) with every group above them and the
    /// edges between: enough for their group closures, nothing more.
    pub async fn user_directory(
        &mut self,
        tenant: TenantId,
        users: &[String],
    ) -> Result<Directory> {
        user_directory_on(&mut self.tx, tenant, users).await
    }

    /// The tenant's whole directory, for a whole-tenant recomputation.
    pub async fn directory(&mut self, tenant: TenantId) -> Result<Directory> {
        directory_on(&mut self.tx, tenant).await
    }

    pub async fn user_count(&mut self, tenant: TenantId) -> Result<i64> {
        Ok(
            sqlx::query("SELECT COUNT(*) FROM scim_users WHERE tenant_id = $1")
                .bind(tenant.to_string())
                .fetch_one(&mut *self.tx)
                .await?
                .try_get(0)?,
        )
    }

    /// The stored rows of these users.
    pub async fn effective_rows(
        &mut self,
        tenant: TenantId,
        users: &[String],
    ) -> Result<HashMap<String, EffectiveRow>> {
        let mut out = HashMap::with_capacity(users.len());
        for chunk in users.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT {ROW_COLUMNS} FROM effective_permissions WHERE tenant_id = $1 AND user_id IN ({})",
                placeholders(2, chunk.len())
            );
            let mut q = sqlx::query(positional(self.dialect, sql)).bind(tenant.to_string());
            for u in chunk {
                q = q.bind(u.as_str());
            }
            for r in q.fetch_all(&mut *self.tx).await? {
                let row = row_from(&r, 0)?;
                out.insert(row.user_id.clone(), row);
            }
        }
        Ok(out)
    }

    /// Every stored row of the tenant (a whole-tenant recomputation diffs
    /// against them, so it rewrites only what changed).
    pub async fn all_effective_rows(
        &mut self,
        tenant: TenantId,
    ) -> Result<HashMap<String, EffectiveRow>> {
        let sql = format!("SELECT {ROW_COLUMNS} FROM effective_permissions WHERE tenant_id = $1");
        let mut out = HashMap::new();
        for r in sqlx::query(positional(self.dialect, sql))
            .bind(tenant.to_string())
            .fetch_all(&mut *self.tx)
            .await?
        {
            let row = row_from(&r, 0)?;
            out.insert(row.user_id.clone(), row);
        }
        Ok(out)
    }

    /// Users whose stored row says they contend for a limited slot.
    pub async fn contenders(&mut self, tenant: TenantId) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT user_id FROM effective_permissions WHERE tenant_id = $1 AND contends = 1",
        )
        .bind(tenant.to_string())
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Inserts or replaces rows.
    pub async fn put_effective(&mut self, tenant: TenantId, rows: &[EffectiveRow]) -> Result<()> {
        for chunk in rows.chunks(MULTI_ROW) {
            let sql = format!(
                "INSERT INTO effective_permissions (tenant_id, user_id, revision, mapping, contends, summary, refused) \
                 VALUES {} ON CONFLICT (tenant_id, user_id) DO UPDATE SET revision = excluded.revision, \
                 mapping = excluded.mapping, contends = excluded.contends, summary = excluded.summary, \
                 refused = excluded.refused",
                row_placeholders(chunk.len(), 7)
            );
            let mut q = sqlx::query(positional(self.dialect, sql));
            for r in chunk {
                q = q
                    .bind(tenant.to_string())
                    .bind(r.user_id.as_str())
                    .bind(r.revision)
                    .bind(r.mapping.as_str())
                    .bind(i64::from(r.contends))
                    .bind(r.summary.as_str())
                    .bind(r.refused.as_deref());
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Removes the rows of these users (deleted users).
    pub async fn delete_effective(&mut self, tenant: TenantId, users: &[String]) -> Result<()> {
        for chunk in users.chunks(IN_CHUNK) {
            let sql = format!(
                "DELETE FROM effective_permissions WHERE tenant_id = $1 AND user_id IN ({})",
                placeholders(2, chunk.len())
            );
            let mut q = sqlx::query(positional(self.dialect, sql)).bind(tenant.to_string());
            for u in chunk {
                q = q.bind(u.as_str());
            }
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }
}

impl Store {
    /// The tenant's revision, the user with this SCIM id (else this
    /// userName, case-insensitively) and their stored row: one indexed
    /// query, the whole cost of a check.
    pub async fn check_row(
        &self,
        tenant: TenantId,
        id: Option<&str>,
        user_name: Option<&str>,
    ) -> Result<CheckRow> {
        let sql = format!(
            "SELECT t.epoch, u.id, u.user_name, {} FROM tenants t \
             LEFT JOIN scim_users u ON u.tenant_id = t.id AND (u.id = $2 OR u.user_name_lc = $3) \
             LEFT JOIN effective_permissions e ON e.tenant_id = t.id AND e.user_id = u.id \
             WHERE t.id = $1 ORDER BY CASE WHEN u.id = $2 THEN 0 ELSE 1 END LIMIT 1",
            ROW_COLUMNS
                .split(", ")
                .map(|c| format!("e.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let r = sqlx::query(positional(self.dialect, sql))
            .bind(tenant.to_string())
            .bind(id)
            .bind(user_name.map(scim::schema::fold_case))
            .fetch_one(&self.pool)
            .await?;
        let uid: Option<String> = r.try_get(1)?;
        let name: Option<String> = r.try_get(2)?;
        let has_row = r.try_get::<Option<String>, _>(3)?.is_some();
        Ok(CheckRow {
            revision: r.try_get(0)?,
            user: uid.zip(name),
            row: if has_row {
                Some(row_from(&r, 3)?)
            } else {
                None
            },
        })
    }

    /// For an explanation or a user whose row is missing: these users'
    /// closures, plus (with `contenders`) every stored contender's, read in
    /// one snapshot.
    pub async fn user_directory(
        &self,
        tenant: TenantId,
        users: &[String],
        contenders: bool,
    ) -> Result<Directory> {
        let mut tx = self.begin_snapshot().await?;
        let mut wanted: Vec<String> = users.to_vec();
        if contenders {
            let rows = sqlx::query(
                "SELECT user_id FROM effective_permissions WHERE tenant_id = $1 AND contends = 1",
            )
            .bind(tenant.to_string())
            .fetch_all(&mut *tx)
            .await?;
            for r in rows {
                wanted.push(r.try_get(0)?);
            }
        }
        wanted.sort();
        wanted.dedup();
        let dir = user_directory_on(&mut tx, tenant, &wanted).await?;
        tx.commit().await?;
        Ok(dir)
    }

    /// Limit refusals per tenant name and kind, over every stored row that
    /// has one (an index holds only those).
    pub async fn refusal_counts(&self) -> Result<BTreeMap<(String, String), usize>> {
        let rows = sqlx::query(
            "SELECT t.name, e.refused FROM effective_permissions e JOIN tenants t ON t.id = e.tenant_id \
             WHERE e.refused IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out: BTreeMap<(String, String), usize> = BTreeMap::new();
        for r in rows {
            let tenant: String = r.try_get(0)?;
            let kinds: String = r.try_get(1)?;
            for kind in kinds.split(',').filter(|k| !k.is_empty()) {
                *out.entry((tenant.clone(), kind.to_string())).or_default() += 1;
            }
        }
        Ok(out)
    }

    /// Every tenant with the mapping stamp its rows were computed under
    /// (`None` before the first computation).
    pub async fn tenant_stamps(&self) -> Result<Vec<(Tenant, Option<String>)>> {
        let rows = sqlx::query("SELECT id, name, created, mapping FROM tenants ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((tenant_from_row(r)?, r.try_get("mapping")?)))
            .collect()
    }

    /// One tenant's mapping stamp.
    pub async fn tenant_stamp(&self, tenant: TenantId) -> Result<Option<String>> {
        let row = sqlx::query("SELECT mapping FROM tenants WHERE id = $1")
            .bind(tenant.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("mapping")).transpose()?.flatten())
    }
}

async fn users_under_on(
    conn: &mut AnyConnection,
    tenant: TenantId,
    groups: &[String],
) -> Result<BTreeSet<String>> {
    let mut users = BTreeSet::new();
    let mut seen: HashSet<String> = groups.iter().cloned().collect();
    let mut frontier: Vec<String> = groups.to_vec();
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for chunk in frontier.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT member_id, member_type FROM group_members WHERE tenant_id = $1 AND group_id IN ({})",
                placeholders(2, chunk.len())
            );
            let mut q = sqlx::query(positional(dialect_of(conn), sql)).bind(tenant.to_string());
            for g in chunk {
                q = q.bind(g.as_str());
            }
            for r in q.fetch_all(&mut *conn).await? {
                let id: String = r.try_get(0)?;
                let ty: String = r.try_get(1)?;
                if ty == "Group" {
                    if seen.insert(id.clone()) {
                        next.push(id);
                    }
                } else {
                    users.insert(id);
                }
            }
        }
        frontier = next;
    }
    Ok(users)
}

async fn user_directory_on(
    conn: &mut AnyConnection,
    tenant: TenantId,
    users: &[String],
) -> Result<Directory> {
    let t = tenant.to_string();
    let epoch = tenant_epoch(conn, tenant).await?;
    let mut dir = Directory {
        epoch,
        ..Directory::default()
    };
    for chunk in users.chunks(IN_CHUNK) {
        let sql = format!(
            "SELECT id, user_name, active, created FROM scim_users WHERE tenant_id = $1 AND id IN ({})",
            placeholders(2, chunk.len())
        );
        let mut q = sqlx::query(positional(dialect_of(conn), sql)).bind(&t);
        for u in chunk {
            q = q.bind(u.as_str());
        }
        for r in q.fetch_all(&mut *conn).await? {
            dir.users.push(DirectoryUser {
                id: r.try_get(0)?,
                user_name: r.try_get(1)?,
                active: r.try_get::<i64, _>(2)? != 0,
                created: r.try_get(3)?,
            });
        }
    }
    // Up the membership edges, level by level.
    let mut seen: HashSet<String> = HashSet::new();
    let mut frontier: Vec<String> = dir.users.iter().map(|u| u.id.clone()).collect();
    let mut group_ids: Vec<String> = Vec::new();
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for chunk in frontier.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT group_id, member_id, member_type FROM group_members WHERE tenant_id = $1 AND member_id IN ({})",
                placeholders(2, chunk.len())
            );
            let mut q = sqlx::query(positional(dialect_of(conn), sql)).bind(&t);
            for m in chunk {
                q = q.bind(m.as_str());
            }
            for r in q.fetch_all(&mut *conn).await? {
                let edge = member_from_row(&r)?;
                if seen.insert(edge.group_id.clone()) {
                    next.push(edge.group_id.clone());
                    group_ids.push(edge.group_id.clone());
                }
                dir.edges.push(edge);
            }
        }
        frontier = next;
    }
    // The order `Store::directory` reads them in: a user's groups, and so
    // which group explain names on a tie, come out the same either way.
    dir.edges.sort_by(|a, b| {
        (a.group_id.as_str(), a.member_id.as_str())
            .cmp(&(b.group_id.as_str(), b.member_id.as_str()))
    });
    dir.edges.dedup();
    for chunk in group_ids.chunks(IN_CHUNK) {
        let sql = format!(
            "SELECT id, display_name, external_id, data FROM scim_groups WHERE tenant_id = $1 AND id IN ({})",
            placeholders(2, chunk.len())
        );
        let mut q = sqlx::query(positional(dialect_of(conn), sql)).bind(&t);
        for g in chunk {
            q = q.bind(g.as_str());
        }
        for r in q.fetch_all(&mut *conn).await? {
            dir.groups.push(group_from_row(&r)?);
        }
    }
    Ok(dir)
}

impl Store {
    /// Up to `limit` stored rows of the tenant with user ids after
    /// `after_user`, by user id: a page of the permission listing.
    pub async fn effective_page(
        &self,
        tenant: TenantId,
        after_user: &str,
        limit: i64,
    ) -> Result<Vec<EffectiveRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ROW_COLUMNS} FROM effective_permissions WHERE tenant_id = $1 AND user_id > $2 \
             ORDER BY user_id LIMIT $3"
        )))
        .bind(tenant.to_string())
        .bind(after_user)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| row_from(r, 0)).collect()
    }
}
