//! The part of a source's state one incremental batch touches: the links
//! it names (by key, DN or userName), the users in their grace period, and
//! the resources of those links and the memberships around them; and, only
//! for a run that removes something, the totals the deletion guard
//! measures against. An incremental run of 100
//! changes reads what those 100 changes name, never the whole tenant.
//!
//! The planner gives the same plan on this scope as on everything the
//! source holds; `tests/sync_scope.rs` checks that against the full load.

use std::collections::{BTreeMap, BTreeSet};

use scim::schema::ResourceKind;
use sqlx::Row;

use super::directory::group_from_row;
use super::resources::{member_from_row, placeholders, positional, CHUNK};
use super::sync::LINK_COLUMNS;
use super::{Directory, DirectoryUser, MemberRow, Result, Store, SyncLink};
use crate::domain::{ExternalKey, TenantId};

/// What a batch names, for [`Store::sync_scope`].
#[derive(Debug, Clone, Default)]
pub struct ScopeKeys {
    /// Stable ids, of either kind.
    pub keys: BTreeSet<ExternalKey>,
    /// Normalised DNs.
    pub locators: BTreeSet<String>,
    /// Lowercased userNames.
    pub names: BTreeSet<String>,
}

/// What a source's links add up to: the bases of the deletion guard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkTotals {
    pub users: u64,
    pub groups: u64,
    /// Membership edges in the source's groups.
    pub edges: u64,
    /// Per base, the linked users not missing (deactivated by a complete
    /// read that did not find them).
    pub active_users_per_base: BTreeMap<String, u64>,
}

/// The links and directory slice a batch touches.
#[derive(Debug, Default)]
pub struct SyncScope {
    pub links: Vec<SyncLink>,
    /// The users and groups of `links`, and every membership edge whose
    /// group or member is one of them. Not the whole tenant.
    pub directory: Directory,
}

impl Store {
    /// Loads the scope of a batch in one read snapshot (repeatable read on
    /// PostgreSQL), so links, resources and totals agree.
    pub async fn sync_scope(
        &self,
        source: &str,
        tenant: TenantId,
        wanted: &ScopeKeys,
    ) -> Result<SyncScope> {
        let mut tx = self.begin_snapshot().await?;
        let conn = &mut *tx;
        let t = tenant.to_string();
        let dialect = self.dialect;
        let mut links: BTreeMap<(ResourceKind, ExternalKey), SyncLink> = BTreeMap::new();
        let by = |column: &str| {
            format!(
                "SELECT {LINK_COLUMNS} FROM sync_links WHERE source = $1 AND tenant_id = $2 AND {column} IN "
            )
        };
        fn strs(set: &BTreeSet<String>) -> Vec<&str> {
            set.iter().map(String::as_str).collect()
        }
        for (sql, values) in [
            (
                by("kind IN ('User', 'Group') AND external_key"),
                wanted.keys.iter().map(ExternalKey::as_str).collect(),
            ),
            (by("locator"), strs(&wanted.locators)),
            (by("kind = 'User' AND name_lc"), strs(&wanted.names)),
        ] {
            for r in rows_in(conn, dialect, &sql, &[source, &t], &values).await? {
                let l = super::sync::link_from_row(&r, tenant)?;
                links.insert((l.kind, l.external_key.clone()), l);
            }
        }
        // Users in their grace period, whatever the batch names.
        let missing = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {LINK_COLUMNS} FROM sync_links WHERE source = $1 AND tenant_id = $2 AND missing_since IS NOT NULL"
        )))
        .bind(source)
        .bind(&t)
        .fetch_all(&mut *conn)
        .await?;
        for r in &missing {
            let l = super::sync::link_from_row(r, tenant)?;
            links.insert((l.kind, l.external_key.clone()), l);
        }
        let links: Vec<SyncLink> = links.into_values().collect();

        let ids_of = |kind| -> Vec<&str> {
            let ids: BTreeSet<&str> = links
                .iter()
                .filter(|l| l.kind == kind)
                .map(|l| l.resource_id.as_str())
                .collect();
            ids.into_iter().collect()
        };
        let (user_ids, group_ids) = (ids_of(ResourceKind::User), ids_of(ResourceKind::Group));
        let mut directory = Directory {
            epoch: super::directory::tenant_epoch(conn, tenant).await?,
            ..Directory::default()
        };
        let users =
            "SELECT id, user_name, active, created FROM scim_users WHERE tenant_id = $1 AND id IN ";
        for r in rows_in(conn, dialect, users, &[&t], &user_ids).await? {
            directory.users.push(DirectoryUser {
                id: r.try_get(0)?,
                user_name: r.try_get(1)?,
                active: r.try_get::<i64, _>(2)? != 0,
                created: r.try_get(3)?,
            });
        }
        let groups = "SELECT id, display_name, external_id, data FROM scim_groups WHERE tenant_id = $1 AND id IN ";
        for r in rows_in(conn, dialect, groups, &[&t], &group_ids).await? {
            directory.groups.push(group_from_row(&r)?);
        }
        let mut edges: BTreeSet<(String, String, String)> = BTreeSet::new();
        let all_ids: Vec<&str> = user_ids.iter().chain(&group_ids).copied().collect();
        for column in ["group_id", "member_id"] {
            let sql = format!(
                "SELECT group_id, member_id, member_type FROM group_members WHERE tenant_id = $1 AND {column} IN "
            );
            for r in rows_in(conn, dialect, &sql, &[&t], &all_ids).await? {
                let m = member_from_row(&r)?;
                edges.insert((m.group_id, m.member_id, m.member_type));
            }
        }
        directory.edges = edges
            .into_iter()
            .map(|(group_id, member_id, member_type)| MemberRow {
                group_id,
                member_id,
                member_type,
            })
            .collect();
        tx.commit().await?;
        Ok(SyncScope { links, directory })
    }

    /// The deletion guard's totals over everything the source holds,
    /// counted by the database (the links stay there). A run asks for them
    /// only when it removes something.
    pub async fn link_totals(&self, source: &str, tenant: TenantId) -> Result<LinkTotals> {
        let mut tx = self.begin_snapshot().await?;
        let totals = link_totals_on(&mut tx, source, tenant).await?;
        tx.commit().await?;
        Ok(totals)
    }
}

/// The guard's totals, counted by the database (the links stay there).
async fn link_totals_on(
    conn: &mut sqlx::AnyConnection,
    source: &str,
    tenant: TenantId,
) -> Result<LinkTotals> {
    let t = tenant.to_string();
    let mut totals = LinkTotals::default();
    let rows = sqlx::query(
        "SELECT kind, base, CASE WHEN missing_since IS NULL THEN 1 ELSE 0 END, COUNT(*) \
         FROM sync_links WHERE source = $1 AND tenant_id = $2 GROUP BY 1, 2, 3",
    )
    .bind(source)
    .bind(&t)
    .fetch_all(&mut *conn)
    .await?;
    for r in rows {
        let kind = super::sync::kind_column(&r.try_get::<String, _>(0)?)?;
        let base: String = r.try_get(1)?;
        let active = r.try_get::<i64, _>(2)? == 1;
        let n = r.try_get::<i64, _>(3)?.max(0) as u64;
        match kind {
            ResourceKind::User => {
                totals.users += n;
                if active {
                    *totals.active_users_per_base.entry(base).or_default() += n;
                }
            }
            ResourceKind::Group => totals.groups += n,
        }
    }
    let edges: i64 = sqlx::query(
        "SELECT COUNT(*) FROM sync_links l JOIN group_members m \
         ON m.tenant_id = l.tenant_id AND m.group_id = l.resource_id \
         WHERE l.source = $1 AND l.tenant_id = $2 AND l.kind = 'Group'",
    )
    .bind(source)
    .bind(&t)
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;
    totals.edges = edges.max(0) as u64;
    Ok(totals)
}

/// The rows of `head (...)` for every value, a chunk of [`CHUNK`] at a
/// time, with `fixed` bound first (as `$1`, `$2`, ... in `head`). Only
/// placeholders are interpolated; every value is bound.
async fn rows_in(
    conn: &mut sqlx::AnyConnection,
    dialect: super::Dialect,
    head: &str,
    fixed: &[&str],
    values: &[&str],
) -> Result<Vec<sqlx::any::AnyRow>> {
    let mut out = Vec::new();
    for chunk in values.chunks(CHUNK) {
        let sql = format!("{head}({})", placeholders(fixed.len() + 1, chunk.len()));
        let mut q = sqlx::query(positional(dialect, sql));
        for v in fixed.iter().chain(chunk) {
            q = q.bind(*v);
        }
        out.extend(q.fetch_all(&mut *conn).await?);
    }
    Ok(out)
}
