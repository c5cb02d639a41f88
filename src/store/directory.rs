//! A tenant's whole directory in three queries (users, groups, membership
//! edges), as input to the permissions computation.

use serde_json::Value;
use sqlx::Row;

use super::{map_rows, MemberRow, Result, Store};
use crate::domain::TenantId;

/// A user as the permissions computation needs it.
#[derive(Debug, Clone)]
pub struct DirectoryUser {
    pub id: String,
    pub user_name: String,
    pub active: bool,
    pub created: String,
}

/// A group as rules match it.
#[derive(Debug, Clone)]
pub struct DirectoryGroup {
    pub id: String,
    pub display_name: String,
    pub external_id: Option<String>,
    /// The group document, for attributes that directory sync records.
    pub doc: Value,
}

/// Everything a tenant's permissions depend on in the store.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    /// The tenant's epoch in the same snapshot as the lists: a result
    /// computed from them is exactly as new as this epoch.
    pub epoch: i64,
    pub users: Vec<DirectoryUser>,
    pub groups: Vec<DirectoryGroup>,
    pub edges: Vec<MemberRow>,
}

impl Store {
    /// A read-only transaction whose queries all see one snapshot:
    /// repeatable read on PostgreSQL; a SQLite read transaction is one
    /// snapshot already.
    pub(super) async fn begin_snapshot(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        let mut tx = self.pool.begin().await?;
        if self.dialect == super::Dialect::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// Reads the tenant's users, groups and memberships. Runs in one
    /// repeatable-read snapshot on PostgreSQL (one read transaction on
    /// SQLite), so the three lists agree with each other.
    pub async fn directory(&self, tenant: TenantId) -> Result<Directory> {
        let mut tx = self.begin_snapshot().await?;
        let dir = directory_on(&mut tx, tenant).await?;
        tx.commit().await?;
        Ok(dir)
    }
}

/// The whole directory of a tenant, on a connection already in the
/// transaction the caller wants.
pub(super) async fn directory_on(
    conn: &mut sqlx::AnyConnection,
    tenant: TenantId,
) -> Result<Directory> {
    let t = tenant.to_string();
    let epoch = tenant_epoch(conn, tenant).await?;
    let users = map_rows(
        sqlx::query(
            "SELECT id, user_name, active, created FROM scim_users WHERE tenant_id = $1 ORDER BY created, id",
        )
        .bind(&t)
        .fetch(&mut *conn),
        |r| {
            Ok(DirectoryUser {
                id: r.try_get(0)?,
                user_name: r.try_get(1)?,
                active: r.try_get::<i64, _>(2)? != 0,
                created: r.try_get(3)?,
            })
        },
    )
    .await?;
    let groups = map_rows(
        sqlx::query(
            "SELECT id, display_name, external_id, data FROM scim_groups WHERE tenant_id = $1 ORDER BY created, id",
        )
        .bind(&t)
        .fetch(&mut *conn),
        group_from_row,
    )
    .await?;
    let edges = map_rows(
        sqlx::query(
            "SELECT group_id, member_id, member_type FROM group_members WHERE tenant_id = $1 ORDER BY group_id, member_id",
        )
        .bind(&t)
        .fetch(&mut *conn),
        super::resources::member_from_row,
    )
    .await?;
    Ok(Directory {
        epoch,
        users,
        groups,
        edges,
    })
}

/// The tenant's revision, read on the caller's connection (inside its
/// snapshot).
pub(super) async fn tenant_epoch(conn: &mut sqlx::AnyConnection, tenant: TenantId) -> Result<i64> {
    Ok(sqlx::query("SELECT epoch FROM tenants WHERE id = $1")
        .bind(tenant.to_string())
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?)
}

/// A group row of `SELECT id, display_name, external_id, data`.
pub(super) fn group_from_row(r: &sqlx::any::AnyRow) -> Result<DirectoryGroup> {
    let id: String = r.try_get(0)?;
    let data: String = r.try_get(3)?;
    let doc = serde_json::from_str(&data).map_err(|source| super::Error::Corrupt {
        kind: "Group",
        id: id.clone(),
        source,
    })?;
    Ok(DirectoryGroup {
        id,
        display_name: r.try_get(1)?,
        external_id: r.try_get(2)?,
        doc,
    })
}
