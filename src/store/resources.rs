//! SCIM Users and Groups, and group membership.
//!
//! A resource row holds the client's whole document as JSON text, so no
//! attribute is lost, plus copies of the attributes that need an index or a
//! unique constraint. Membership lives in `group_members` and is never
//! embedded in the group document.

use std::collections::HashMap;

use scim::schema::ResourceKind;
use scim::sql::{SqlCondition, SqlValue};
use serde_json::Value;
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
// Dynamic SQL here interpolates only table names, canonical column
// expressions and `$N` placeholders chosen by this module and `scim::sql`;
// every client value is a bind.
use sqlx::{Any, AssertSqlSafe, Row};

use super::effective::Changes;
use super::sync::required_timestamp;
use super::{Dialect, Error, Result, Store};
use crate::domain::{ResourceId, TenantId, Timestamp};

/// A resource as stored: the document without `id`, `meta` and (for groups)
/// `members`, plus the metadata columns.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResource {
    pub id: ResourceId,
    pub doc: Value,
    /// `meta.created` and `meta.lastModified`.
    pub created: Timestamp,
    pub last_modified: Timestamp,
    pub version: i64,
}

impl StoredResource {
    /// The resource replaced by `doc` at `at`: same id and creation, the
    /// next version (what an update writes, and what If-Match compares).
    pub fn next_version(&self, doc: Value, at: Timestamp) -> StoredResource {
        StoredResource {
            id: self.id.clone(),
            doc,
            created: self.created,
            last_modified: at,
            version: self.version + 1,
        }
    }
}

/// One membership edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRow {
    pub group_id: String,
    pub member_id: String,
    /// `User` or `Group`.
    pub member_type: String,
}

/// One page of a list query.
#[derive(Debug, Clone)]
pub struct Page {
    /// Matches over all pages.
    pub total: i64,
    pub items: Vec<StoredResource>,
}

/// How many rows one multi-row INSERT or IN-list carries: keeps statements
/// well under SQLite's 32766-parameter limit.
pub(super) const CHUNK: usize = 500;

/// Rows per multi-row INSERT. It was 50 while SQLite bound `$N` by name,
/// which made binding quadratic in the parameter count; with positional
/// parameters (`positional`) a statement of 200 rows of 10 values binds in
/// linear time, and fewer statements cost fewer round trips to the driver's
/// worker and fewer re-plans on PostgreSQL.
pub(super) const MULTI_ROW: usize = 200;

/// New resources as ready-to-run multi-row INSERTs: documents serialised and
/// values bound. Building it costs as much CPU as the database spends
/// running it, and needs no connection, so a bulk load builds the next one
/// while another task's [`WriteTx::insert_encoded`] runs this one.
pub struct EncodedInsert {
    tenant: TenantId,
    kind: ResourceKind,
    statements: Vec<EncodedStatement>,
    /// One slot per resource given: the refusals known before the database
    /// sees them (a userName repeated within the resources).
    out: Vec<Option<Error>>,
}

struct EncodedStatement {
    query: Query<'static, Any, AnyArguments>,
    /// Users only: each row's slot, id and userName, to tell which ones the
    /// database refused.
    rows: Vec<(usize, ResourceId, String)>,
}

impl EncodedInsert {
    pub fn new(
        dialect: Dialect,
        tenant: TenantId,
        kind: ResourceKind,
        resources: &[StoredResource],
    ) -> Self {
        let mut out: Vec<Option<Error>> = Vec::with_capacity(resources.len());
        let mut statements = Vec::new();
        let mut names: std::collections::HashSet<String> = std::collections::HashSet::new();
        let tenant_text = tenant.to_string();
        for chunk in resources.chunks(MULTI_ROW) {
            let mut accepted: Vec<(usize, &StoredResource, IndexedColumns)> = Vec::new();
            for res in chunk {
                let c = IndexedColumns::of(kind, &res.doc);
                // A name repeated within `resources`: the database would
                // see it only once the first copy is in.
                if kind == ResourceKind::User && !names.insert(c.name_lc.clone()) {
                    out.push(Some(Error::Uniqueness {
                        attribute: "userName",
                        value: c.name.clone(),
                    }));
                    continue;
                }
                accepted.push((out.len(), res, c));
                out.push(None);
            }
            if accepted.is_empty() {
                continue;
            }
            let width = match kind {
                ResourceKind::User => 10,
                ResourceKind::Group => 9,
            };
            let values = row_placeholders(accepted.len(), width);
            // A name already taken in the tenant is refused by the unique
            // index, not by a read first: that read cannot use the index's
            // second column while the planner's statistics predate the load,
            // and scanned the whole tenant once per chunk (5.6 of a 100,000
            // user first sync's 20 s on PostgreSQL).
            let sql = match kind {
                ResourceKind::User => format!(
                    "INSERT INTO scim_users (tenant_id, id, user_name, user_name_lc, external_id, active, data, created, last_modified, version) VALUES {values} \
                     ON CONFLICT (tenant_id, user_name_lc) DO NOTHING"
                ),
                ResourceKind::Group => format!(
                    "INSERT INTO scim_groups (tenant_id, id, display_name, display_name_lc, external_id, data, created, last_modified, version) VALUES {values}"
                ),
            };
            let mut query = sqlx::query(positional(dialect, sql));
            let mut rows = Vec::new();
            for (slot, res, c) in accepted {
                query = query
                    .bind(tenant_text.clone())
                    .bind(res.id.as_str().to_string())
                    .bind(c.name.clone())
                    .bind(c.name_lc)
                    .bind(c.external_id);
                if kind == ResourceKind::User {
                    query = query.bind(i64::from(c.active));
                    rows.push((slot, res.id.clone(), c.name));
                }
                query = query
                    .bind(res.doc.to_string())
                    .bind(res.created.to_string())
                    .bind(res.last_modified.to_string())
                    .bind(res.version);
            }
            statements.push(EncodedStatement { query, rows });
        }
        EncodedInsert {
            tenant,
            kind,
            statements,
            out,
        }
    }
}

/// One resource by tenant and id, with an optional locking suffix.
fn select_one(kind: ResourceKind, suffix: &str) -> String {
    format!(
        "SELECT id, data, created, last_modified, version FROM {} WHERE tenant_id = $1 AND id = $2{suffix}",
        table(kind)
    )
}

fn table(kind: ResourceKind) -> &'static str {
    match kind {
        ResourceKind::User => "scim_users",
        ResourceKind::Group => "scim_groups",
    }
}

impl Store {
    /// Starts a write transaction (holding the SQLite writer lock, if any).
    pub async fn begin_write(&self) -> Result<WriteTx> {
        let guard = match &self.write_lock {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        // SQLite: IMMEDIATE takes the write lock at BEGIN, where a writer
        // in another process (a CLI command) is waited for up to
        // `busy_timeout`; a deferred transaction that read first would get
        // SQLITE_BUSY at once when it came to write.
        let tx = match self.dialect {
            Dialect::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => self.writer.begin().await?,
        };
        Ok(WriteTx {
            tx,
            dialect: self.dialect,
            changes: std::collections::BTreeMap::new(),
            settled: std::collections::BTreeMap::new(),
            cause: None,
            _guard: guard,
        })
    }

    pub async fn get(
        &self,
        tenant: TenantId,
        kind: ResourceKind,
        id: &ResourceId,
    ) -> Result<Option<StoredResource>> {
        let row = sqlx::query(AssertSqlSafe(select_one(kind, "")))
            .bind(tenant.to_string())
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| resource_from_row(kind, &r)).transpose()
    }

    /// One page of resources matching `filter`, in a stable order: the sort
    /// key (if any), then creation time, then id.
    #[allow(clippy::too_many_arguments)]
    pub async fn list(
        &self,
        tenant: TenantId,
        kind: ResourceKind,
        filter: Option<&SqlCondition>,
        sort: Option<(&str, bool)>,
        offset: i64,
        limit: i64,
    ) -> Result<Page> {
        let table = table(kind);
        let condition = filter
            .map(|f| format!(" AND ({})", f.sql))
            .unwrap_or_default();
        let count_sql = format!("SELECT COUNT(*) FROM {table} r WHERE r.tenant_id = $1{condition}");
        let mut count = sqlx::query(AssertSqlSafe(count_sql)).bind(tenant.to_string());
        if let Some(f) = filter {
            count = bind_values(count, &f.binds);
        }
        let total: i64 = count.fetch_one(&self.pool).await?.try_get(0)?;
        if limit == 0 || offset >= total {
            return Ok(Page {
                total,
                items: Vec::new(),
            });
        }
        let order = match sort {
            // RFC 7644 §3.4.2.3: resources without the attribute sort last
            // when ascending and first when descending.
            Some((expr, desc)) => format!(
                "{expr} {}, r.created, r.id",
                if desc {
                    "DESC NULLS FIRST"
                } else {
                    "ASC NULLS LAST"
                }
            ),
            None => "r.created, r.id".to_string(),
        };
        let next = 2 + filter.map_or(0, |f| f.binds.len());
        let sql = format!(
            "SELECT r.id, r.data, r.created, r.last_modified, r.version FROM {table} r \
             WHERE r.tenant_id = $1{condition} ORDER BY {order} LIMIT ${} OFFSET ${}",
            next,
            next + 1
        );
        let mut q = sqlx::query(positional(self.dialect, sql)).bind(tenant.to_string());
        if let Some(f) = filter {
            q = bind_values(q, &f.binds);
        }
        let rows = q.bind(limit).bind(offset).fetch_all(&self.pool).await?;
        let items = rows
            .iter()
            .map(|r| resource_from_row(kind, r))
            .collect::<Result<Vec<_>>>()?;
        Ok(Page { total, items })
    }

    /// The members of the given groups, in a stable order.
    pub async fn members_of(&self, tenant: TenantId, groups: &[&str]) -> Result<Vec<MemberRow>> {
        let mut out = Vec::new();
        for chunk in groups.chunks(CHUNK) {
            let sql = format!(
                "SELECT group_id, member_id, member_type FROM group_members \
                 WHERE tenant_id = $1 AND group_id IN ({}) ORDER BY group_id, member_id",
                placeholders(2, chunk.len())
            );
            let mut q = sqlx::query(positional(self.dialect, sql)).bind(tenant.to_string());
            for g in chunk {
                q = q.bind(*g);
            }
            for row in q.fetch_all(&self.pool).await? {
                out.push(member_from_row(&row)?);
            }
        }
        Ok(out)
    }

    /// The groups that directly contain each of `members`, with the group's
    /// displayName, for the User `groups` attribute.
    pub async fn groups_of(
        &self,
        tenant: TenantId,
        members: &[&str],
    ) -> Result<Vec<(MemberRow, String)>> {
        let mut out = Vec::new();
        for chunk in members.chunks(CHUNK) {
            let sql = format!(
                "SELECT m.group_id, m.member_id, m.member_type, g.display_name \
                 FROM group_members m JOIN scim_groups g ON g.tenant_id = m.tenant_id AND g.id = m.group_id \
                 WHERE m.tenant_id = $1 AND m.member_id IN ({}) ORDER BY m.member_id, g.display_name_lc, m.group_id",
                placeholders(2, chunk.len())
            );
            let mut q = sqlx::query(positional(self.dialect, sql)).bind(tenant.to_string());
            for m in chunk {
                q = q.bind(*m);
            }
            for row in q.fetch_all(&self.pool).await? {
                out.push((member_from_row(&row)?, row.try_get(3)?));
            }
        }
        Ok(out)
    }

    /// Counts resources of a kind in a tenant.
    pub async fn count(&self, tenant: TenantId, kind: ResourceKind) -> Result<i64> {
        let sql = format!("SELECT COUNT(*) FROM {} WHERE tenant_id = $1", table(kind));
        Ok(sqlx::query(AssertSqlSafe(sql))
            .bind(tenant.to_string())
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?)
    }
}

/// A write transaction. Dropping it without [`WriteTx::commit`] rolls back,
/// which is how a failed PATCH or PUT leaves nothing half-applied.
pub struct WriteTx {
    pub(super) tx: sqlx::Transaction<'static, Any>,
    pub(super) dialect: Dialect,
    /// What this transaction wrote, per tenant: whose effective
    /// permissions may have changed. `app` takes it before commit.
    pub(super) changes: std::collections::BTreeMap<TenantId, Changes>,
    /// Tenants whose revision was advanced and whose effective permissions
    /// were brought up to date in this transaction, with the new revision.
    pub(super) settled: std::collections::BTreeMap<TenantId, i64>,
    /// What the change-feed events of this transaction name as their cause.
    pub(super) cause: Option<crate::domain::ChangeCause>,
    _guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// The transaction's bookkeeping when a savepoint was opened, restored when
/// the unit after it is rolled back.
#[derive(Debug)]
pub struct Savepoint {
    /// False for a [`WriteTx::mark`]: bookkeeping only.
    in_database: bool,
    changes: Vec<TenantId>,
    settled: std::collections::BTreeMap<TenantId, i64>,
    cause: Option<crate::domain::ChangeCause>,
}

impl WriteTx {
    /// The transaction's connection, for the store's other modules.
    pub(super) fn conn(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.tx
    }

    /// Commits. Every tenant this transaction wrote must have been settled
    /// first ([`WriteTx::advance_tenant`], then its effective permissions
    /// written): a write whose derived state was not brought up to date in
    /// the same transaction is refused, never committed. Returns each
    /// written tenant's new revision.
    pub async fn commit(self) -> Result<std::collections::BTreeMap<TenantId, i64>> {
        if let Some(t) = self.changes.keys().find(|t| !self.settled.contains_key(t)) {
            return Err(Error::Unsettled(t.to_string()));
        }
        self.tx.commit().await?;
        Ok(self.settled)
    }

    /// Opens a savepoint: one unit of a group commit, undone alone by
    /// [`WriteTx::rollback_to`] when it fails, while the units before it
    /// stay in the transaction. A unit that succeeds leaves its savepoint
    /// open until the transaction ends (releasing it would cost a round
    /// trip and change nothing); the next unit's savepoint, of the same
    /// name, nests inside it, and `ROLLBACK TO` names the innermost.
    pub async fn savepoint(&mut self) -> Result<Savepoint> {
        sqlx::query("SAVEPOINT unit").execute(&mut *self.tx).await?;
        Ok(Savepoint {
            in_database: true,
            ..self.mark()
        })
    }

    /// The transaction's bookkeeping only, without a savepoint in the
    /// database: for a unit of one statement that either writes or refuses
    /// without an error inside the database (a user insert), so there is
    /// nothing to roll back there. Saves a round trip per write.
    pub fn mark(&self) -> Savepoint {
        Savepoint {
            in_database: false,
            changes: self.changes.keys().copied().collect(),
            settled: self.settled.clone(),
            cause: self.cause.clone(),
        }
    }

    /// Undoes everything since the savepoint, in the database (on
    /// PostgreSQL this also ends an aborted statement's error state) and
    /// in the transaction's bookkeeping: changes recorded and revisions
    /// settled since then are forgotten.
    pub async fn rollback_to(&mut self, savepoint: Savepoint) -> Result<()> {
        if savepoint.in_database {
            sqlx::query("ROLLBACK TO SAVEPOINT unit")
                .execute(&mut *self.tx)
                .await?;
            sqlx::query("RELEASE SAVEPOINT unit")
                .execute(&mut *self.tx)
                .await?;
        }
        self.changes = savepoint
            .changes
            .into_iter()
            .map(|t| (t, Changes::default()))
            .collect();
        self.settled = savepoint.settled;
        self.cause = savepoint.cause;
        Ok(())
    }

    /// PostgreSQL: lets the statements that follow, until
    /// [`WriteTx::custom_plans`], reuse a prepared statement's plan. Every
    /// connection forces a fresh plan per execution (see
    /// `Store::connect`), against plans cached while a new tenant's tables
    /// were empty. An `INSERT … VALUES` has no scan such a plan could get
    /// wrong, yet under that setting PostgreSQL re-planned it, and the
    /// foreign-key check of every row it inserts, on each run: 26% of the
    /// backend's time while a first sync wrote 100,000 users. Only the bulk
    /// inserts call this. It is `SET LOCAL`: a savepoint taken before it
    /// and rolled back undoes it with the rest, and so does the end of the
    /// transaction.
    pub(super) async fn generic_plans(&mut self) -> Result<()> {
        self.plan_cache_mode("SET LOCAL plan_cache_mode = auto")
            .await
    }

    /// Back to a fresh plan per execution, after [`WriteTx::generic_plans`].
    pub(super) async fn custom_plans(&mut self) -> Result<()> {
        self.plan_cache_mode("SET LOCAL plan_cache_mode = force_custom_plan")
            .await
    }

    async fn plan_cache_mode(&mut self, set: &'static str) -> Result<()> {
        if self.dialect == Dialect::Postgres {
            sqlx::query(set).execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    /// Locks the tenant's row until commit (PostgreSQL; SQLite's single
    /// writer already excludes everyone). A group commit takes it before
    /// any unit runs, so every batch of a tenant locks the tenant first and
    /// resources after: two replicas' batches never wait on each other in a
    /// cycle.
    pub async fn lock_tenant(&mut self, tenant: TenantId) -> Result<()> {
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT id FROM tenants WHERE id = $1 FOR UPDATE")
                .bind(tenant.to_string())
                .fetch_optional(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    /// Records a changed user (its own attributes or its direct groups).
    pub(super) fn user_changed(&mut self, tenant: TenantId, id: &str) {
        self.changes
            .entry(tenant)
            .or_default()
            .users
            .insert(id.to_string());
    }

    /// Records a changed group: every user under it is affected.
    pub(super) fn group_changed(&mut self, tenant: TenantId, id: &str) {
        self.changes
            .entry(tenant)
            .or_default()
            .groups
            .insert(id.to_string());
    }

    /// Records that the tenant was written, whoever is affected.
    pub fn touch_tenant(&mut self, tenant: TenantId) {
        self.changes.entry(tenant).or_default();
    }

    /// Reads a resource and, on PostgreSQL, locks its row until commit so
    /// concurrent PATCHes of one resource serialise instead of losing updates.
    pub async fn get_for_update(
        &mut self,
        tenant: TenantId,
        kind: ResourceKind,
        id: &ResourceId,
    ) -> Result<Option<StoredResource>> {
        let lock = match self.dialect {
            Dialect::Postgres => " FOR UPDATE",
            Dialect::Sqlite => "",
        };
        let row = sqlx::query(AssertSqlSafe(select_one(kind, lock)))
            .bind(tenant.to_string())
            .bind(id.as_str())
            .fetch_optional(&mut *self.tx)
            .await?;
        row.map(|r| resource_from_row(kind, &r)).transpose()
    }

    pub async fn insert(
        &mut self,
        tenant: TenantId,
        kind: ResourceKind,
        res: &StoredResource,
    ) -> Result<()> {
        match kind {
            // A new group has no members yet: nobody's permissions change
            // until members are added (recorded by `add_members`).
            ResourceKind::User => self.user_changed(tenant, res.id.as_str()),
            ResourceKind::Group => self.touch_tenant(tenant),
        }
        let cols = IndexedColumns::of(kind, &res.doc);
        // No read first: the unique index on (tenant, lower-cased userName)
        // refuses a taken name (`unique_or` names it), across replicas too,
        // and a failed unit is undone by its savepoint.
        let data = res.doc.to_string();
        let result = match kind {
            ResourceKind::User => {
                sqlx::query(
                    "INSERT INTO scim_users (tenant_id, id, user_name, user_name_lc, external_id, active, data, created, last_modified, version) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     ON CONFLICT (tenant_id, user_name_lc) DO NOTHING",
                )
                .bind(tenant.to_string())
                .bind(res.id.as_str())
                .bind(cols.name.clone())
                .bind(cols.name_lc.clone())
                .bind(cols.external_id.clone())
                .bind(i64::from(cols.active))
                .bind(data)
                .bind(res.created.to_string())
                .bind(res.last_modified.to_string())
                .bind(res.version)
                .execute(&mut *self.tx)
                .await
            }
            ResourceKind::Group => {
                sqlx::query(
                    "INSERT INTO scim_groups (tenant_id, id, display_name, display_name_lc, external_id, data, created, last_modified, version) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(tenant.to_string())
                .bind(res.id.as_str())
                .bind(cols.name.clone())
                .bind(cols.name_lc.clone())
                .bind(cols.external_id.clone())
                .bind(data)
                .bind(res.created.to_string())
                .bind(res.last_modified.to_string())
                .bind(res.version)
                .execute(&mut *self.tx)
                .await
            }
        };
        let done = result.map_err(|e| unique_or(e, &cols))?;
        if kind == ResourceKind::User && done.rows_affected() == 0 {
            // ON CONFLICT DO NOTHING: the name is taken. Refused without an
            // error inside the database, so the transaction stays usable
            // and a group commit's other writes are not lost with it.
            return Err(Error::Uniqueness {
                attribute: "userName",
                value: cols.name.clone(),
            });
        }
        Ok(())
    }

    /// Inserts many new resources with a few statements per [`MULTI_ROW`] rows
    /// instead of four per row (directory sync creates a whole directory at
    /// once). A user whose userName is taken, in the tenant or earlier in
    /// `resources`, is not inserted: its slot in the result holds the
    /// [`Error::Uniqueness`]. externalId is not unique (migration 0005).
    ///
    /// Every id must be new (from [`ResourceId::generate`]): which users were
    /// written is told by the ids present afterwards (`insert_encoded`).
    pub async fn insert_many(
        &mut self,
        tenant: TenantId,
        kind: ResourceKind,
        resources: &[StoredResource],
    ) -> Result<Vec<Option<Error>>> {
        let encoded = EncodedInsert::new(self.dialect, tenant, kind, resources);
        self.insert_encoded(encoded).await
    }

    /// Runs the statements of an [`EncodedInsert`]; the result is as
    /// [`WriteTx::insert_many`]'s.
    pub async fn insert_encoded(&mut self, encoded: EncodedInsert) -> Result<Vec<Option<Error>>> {
        let EncodedInsert {
            tenant,
            kind,
            statements,
            mut out,
        } = encoded;
        // Nothing given, nothing written: the tenant's revision stays (a
        // sync run with no new groups still calls this).
        if !out.is_empty() {
            self.touch_tenant(tenant);
        }
        if statements.is_empty() {
            return Ok(out);
        }
        self.generic_plans().await?;
        // Rows of the statements that wrote fewer rows than they carried.
        let mut short: Vec<(usize, ResourceId, String)> = Vec::new();
        for statement in statements {
            if kind == ResourceKind::Group {
                statement.query.execute(&mut *self.tx).await?;
                continue;
            }
            let written = statement
                .query
                .execute(&mut *self.tx)
                .await?
                .rows_affected();
            // Every row written is the common case, told by the count
            // alone (returning each inserted id cost a row per user through
            // the driver).
            if written == statement.rows.len() as u64 {
                for (_, id, _) in &statement.rows {
                    self.user_changed(tenant, id.as_str());
                }
            } else {
                short.extend(statement.rows);
            }
        }
        self.custom_plans().await?;
        if !short.is_empty() {
            // The ids now present are the ones written, since every id is
            // new (see `insert_many`): a row skipped for its taken userName
            // left its id absent. Asked after the inserts, under fresh plans
            // like every other read.
            let ids: Vec<&str> = short.iter().map(|(_, id, _)| id.as_str()).collect();
            let present = self.present_ids(tenant, ResourceKind::User, &ids).await?;
            for (slot, id, name) in short {
                if present.contains(id.as_str()) {
                    self.user_changed(tenant, id.as_str());
                } else {
                    out[slot] = Some(Error::Uniqueness {
                        attribute: "userName",
                        value: name,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Which of these ids name a resource of `kind` in the tenant, in this
    /// transaction.
    async fn present_ids<S: AsRef<str>>(
        &mut self,
        tenant: TenantId,
        kind: ResourceKind,
        ids: &[S],
    ) -> Result<std::collections::HashSet<String>> {
        let mut present = std::collections::HashSet::new();
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT id FROM {} WHERE tenant_id = $1 AND id IN ({})",
                table(kind),
                placeholders(2, chunk.len())
            );
            let mut q = sqlx::query(positional(self.dialect, sql)).bind(tenant.to_string());
            for id in chunk {
                q = q.bind(id.as_ref());
            }
            for row in q.fetch_all(&mut *self.tx).await? {
                present.insert(row.try_get(0)?);
            }
        }
        Ok(present)
    }

    /// Replaces a resource's document and metadata; fails with
    /// [`Error::Conflict`] when its version is no longer `prev_version`.
    pub async fn update(
        &mut self,
        tenant: TenantId,
        kind: ResourceKind,
        res: &StoredResource,
        prev_version: i64,
    ) -> Result<()> {
        match kind {
            ResourceKind::User => self.user_changed(tenant, res.id.as_str()),
            ResourceKind::Group => {
                // A member-only PATCH bumps the version but leaves the
                // document as it was: the members named are recorded by
                // the member operations, and the group's other members are
                // not recomputed.
                let before = sqlx::query(
                    "SELECT display_name, data FROM scim_groups WHERE tenant_id = $1 AND id = $2",
                )
                .bind(tenant.to_string())
                .bind(res.id.as_str())
                .fetch_optional(&mut *self.tx)
                .await?;
                let same = match &before {
                    Some(row) => {
                        let name: String = row.try_get(0)?;
                        let data: String = row.try_get(1)?;
                        serde_json::from_str::<Value>(&data).ok().as_ref() == Some(&res.doc)
                            && res.doc.get("displayName").and_then(Value::as_str)
                                == Some(name.as_str())
                    }
                    None => false,
                };
                if same {
                    self.touch_tenant(tenant);
                } else {
                    self.group_changed(tenant, res.id.as_str());
                }
            }
        }
        let cols = IndexedColumns::of(kind, &res.doc);
        self.check_unique(tenant, kind, &res.id, &cols).await?;
        let data = res.doc.to_string();
        let result = match kind {
            ResourceKind::User => {
                sqlx::query(
                    "UPDATE scim_users SET user_name = $1, user_name_lc = $2, external_id = $3, active = $4, data = $5, last_modified = $6, version = $7 \
                     WHERE tenant_id = $8 AND id = $9 AND version = $10",
                )
                .bind(cols.name.clone())
                .bind(cols.name_lc.clone())
                .bind(cols.external_id.clone())
                .bind(i64::from(cols.active))
                .bind(data)
                .bind(res.last_modified.to_string())
                .bind(res.version)
                .bind(tenant.to_string())
                .bind(res.id.as_str())
                .bind(prev_version)
                .execute(&mut *self.tx)
                .await
            }
            ResourceKind::Group => {
                sqlx::query(
                    "UPDATE scim_groups SET display_name = $1, display_name_lc = $2, external_id = $3, data = $4, last_modified = $5, version = $6 \
                     WHERE tenant_id = $7 AND id = $8 AND version = $9",
                )
                .bind(cols.name.clone())
                .bind(cols.name_lc.clone())
                .bind(cols.external_id.clone())
                .bind(data)
                .bind(res.last_modified.to_string())
                .bind(res.version)
                .bind(tenant.to_string())
                .bind(res.id.as_str())
                .bind(prev_version)
                .execute(&mut *self.tx)
                .await
            }
        };
        let done = result.map_err(|e| unique_or(e, &cols))?;
        if done.rows_affected() != 1 {
            return Err(Error::Conflict);
        }
        Ok(())
    }

    /// Deletes a resource and every membership edge that names it.
    pub async fn delete(
        &mut self,
        tenant: TenantId,
        kind: ResourceKind,
        id: &ResourceId,
    ) -> Result<bool> {
        match kind {
            ResourceKind::User => self.user_changed(tenant, id.as_str()),
            ResourceKind::Group => {
                // The edges below the group go with it: find whom it
                // reaches while they are still there.
                let under = self.users_under(tenant, &[id.to_string()]).await?;
                let entry = self.changes.entry(tenant).or_default();
                entry.users.extend(under);
            }
        }
        let sql = format!(
            "DELETE FROM {} WHERE tenant_id = $1 AND id = $2",
            table(kind)
        );
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(tenant.to_string())
            .bind(id.as_str())
            .execute(&mut *self.tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM group_members WHERE tenant_id = $1 AND member_id = $2")
            .bind(tenant.to_string())
            .bind(id.as_str())
            .execute(&mut *self.tx)
            .await?;
        if kind == ResourceKind::Group {
            sqlx::query("DELETE FROM group_members WHERE tenant_id = $1 AND group_id = $2")
                .bind(tenant.to_string())
                .bind(id.as_str())
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(true)
    }

    /// For each id that names a User or Group of this tenant, its type.
    /// Ids that name nothing are absent from the map.
    pub async fn member_types(
        &mut self,
        tenant: TenantId,
        ids: &[String],
    ) -> Result<HashMap<String, &'static str>> {
        let mut out = HashMap::with_capacity(ids.len());
        for (kind, name) in [(ResourceKind::User, "User"), (ResourceKind::Group, "Group")] {
            for id in self.present_ids(tenant, kind, ids).await? {
                out.entry(id).or_insert(name);
            }
        }
        Ok(out)
    }

    /// Adds members; existing edges are left as they are, so a repeated add
    /// is idempotent. Cost is O(members added).
    pub async fn add_members(
        &mut self,
        tenant: TenantId,
        group: &ResourceId,
        members: &[(String, &'static str)],
    ) -> Result<u64> {
        let edges: Vec<(&ResourceId, &str, &'static str)> = members
            .iter()
            .map(|(id, ty)| (group, id.as_str(), *ty))
            .collect();
        self.add_edges(tenant, &edges).await
    }

    /// Adds `(group, member, member type)` edges of many groups, in
    /// statements of [`CHUNK`] edges whatever group they belong to: a
    /// first directory sync adds 100,000 memberships of 5,000 groups, and
    /// a statement per group was 5,020 round trips.
    pub async fn add_edges(
        &mut self,
        tenant: TenantId,
        edges: &[(&ResourceId, &str, &'static str)],
    ) -> Result<u64> {
        self.touch_tenant(tenant);
        for (_, id, ty) in edges {
            if *ty == "Group" {
                self.group_changed(tenant, id);
            } else {
                self.user_changed(tenant, id);
            }
        }
        let mut added = 0;
        let tenant = tenant.to_string();
        if edges.is_empty() {
            return Ok(0);
        }
        self.generic_plans().await?;
        for chunk in edges.chunks(CHUNK) {
            // Every value bound in order (no shared `$1`), so SQLite binds
            // them positionally (see `positional`).
            let values = row_placeholders(chunk.len(), 4);
            let sql = format!(
                "INSERT INTO group_members (tenant_id, group_id, member_id, member_type) VALUES {values} \
                 ON CONFLICT (tenant_id, group_id, member_id) DO NOTHING"
            );
            let mut q = sqlx::query(positional(self.dialect, sql));
            for (group, id, ty) in chunk {
                q = q
                    .bind(tenant.as_str())
                    .bind(group.as_str())
                    .bind(*id)
                    .bind(*ty);
            }
            added += q.execute(&mut *self.tx).await?.rows_affected();
        }
        self.custom_plans().await?;
        Ok(added)
    }

    /// Removes the named members. Cost is O(members removed).
    pub async fn remove_members(
        &mut self,
        tenant: TenantId,
        group: &ResourceId,
        ids: &[String],
    ) -> Result<u64> {
        self.touch_tenant(tenant);
        // An id may name a user or a nested group; recording it as both is
        // exact (a user has nothing under it, a group is no user).
        for id in ids {
            self.user_changed(tenant, id);
            self.group_changed(tenant, id);
        }
        let mut removed = 0;
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "DELETE FROM group_members WHERE tenant_id = $1 AND group_id = $2 AND member_id IN ({})",
                placeholders(3, chunk.len())
            );
            let mut q = sqlx::query(positional(self.dialect, sql))
                .bind(tenant.to_string())
                .bind(group.as_str());
            for id in chunk {
                q = q.bind(id.as_str());
            }
            removed += q.execute(&mut *self.tx).await?.rows_affected();
        }
        Ok(removed)
    }

    /// Removes every member of a group.
    pub async fn clear_members(&mut self, tenant: TenantId, group: &ResourceId) -> Result<u64> {
        self.touch_tenant(tenant);
        let members = sqlx::query(
            "SELECT member_id, member_type FROM group_members WHERE tenant_id = $1 AND group_id = $2",
        )
        .bind(tenant.to_string())
        .bind(group.as_str())
        .fetch_all(&mut *self.tx)
        .await?;
        for row in &members {
            let id: String = row.try_get(0)?;
            let ty: String = row.try_get(1)?;
            if ty == "Group" {
                self.group_changed(tenant, &id);
            } else {
                self.user_changed(tenant, &id);
            }
        }
        Ok(
            sqlx::query("DELETE FROM group_members WHERE tenant_id = $1 AND group_id = $2")
                .bind(tenant.to_string())
                .bind(group.as_str())
                .execute(&mut *self.tx)
                .await?
                .rows_affected(),
        )
    }

    /// Looks for another user holding the same userName, so the client
    /// learns which attribute clashed. The unique index remains the guard
    /// against races; this only names the attribute. userName is the one
    /// unique attribute: RFC 7643 gives `externalId` and a group's
    /// `displayName` no uniqueness (migration 0005).
    async fn check_unique(
        &mut self,
        tenant: TenantId,
        kind: ResourceKind,
        id: &ResourceId,
        cols: &IndexedColumns,
    ) -> Result<()> {
        if kind != ResourceKind::User {
            return Ok(());
        }
        let taken = sqlx::query(
            "SELECT 1 FROM scim_users WHERE tenant_id = $1 AND user_name_lc = $2 AND id <> $3",
        )
        .bind(tenant.to_string())
        .bind(cols.name_lc.as_str())
        .bind(id.as_str())
        .fetch_optional(&mut *self.tx)
        .await?;
        if taken.is_some() {
            return Err(Error::Uniqueness {
                attribute: "userName",
                value: cols.name.clone(),
            });
        }
        Ok(())
    }
}

/// The indexed copies of a document's attributes.
struct IndexedColumns {
    /// userName for Users, displayName for Groups.
    name: String,
    name_lc: String,
    external_id: Option<String>,
    active: bool,
}

impl IndexedColumns {
    fn of(kind: ResourceKind, doc: &Value) -> Self {
        let key = match kind {
            ResourceKind::User => "userName",
            ResourceKind::Group => "displayName",
        };
        let name = doc
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        IndexedColumns {
            name_lc: scim::schema::fold_case(&name),
            name,
            external_id: doc
                .get("externalId")
                .and_then(Value::as_str)
                .map(str::to_string),
            // RFC 7643 leaves `active` optional; an account nobody
            // deactivated is active.
            active: doc.get("active").and_then(Value::as_bool).unwrap_or(true),
        }
    }
}

/// A unique-index violation that [`WriteTx::check_unique`] did not see
/// (a concurrent writer): only userName is unique.
fn unique_or(err: sqlx::Error, cols: &IndexedColumns) -> Error {
    if Error::is_unique_violation(&err) {
        Error::Uniqueness {
            attribute: "userName",
            value: cols.name.clone(),
        }
    } else {
        err.into()
    }
}

fn resource_from_row(kind: ResourceKind, row: &AnyRow) -> Result<StoredResource> {
    let id: String = row.try_get(0)?;
    let data: String = row.try_get(1)?;
    let doc = serde_json::from_str(&data).map_err(|source| Error::Corrupt {
        kind: kind.name(),
        id: id.clone(),
        source,
    })?;
    Ok(StoredResource {
        id: ResourceId::from_client(&id),
        doc,
        created: required_timestamp("created", row.try_get(2)?)?,
        last_modified: required_timestamp("last_modified", row.try_get(3)?)?,
        version: row.try_get(4)?,
    })
}

pub(super) fn member_from_row(row: &AnyRow) -> Result<MemberRow> {
    Ok(MemberRow {
        group_id: row.try_get(0)?,
        member_id: row.try_get(1)?,
        member_type: row.try_get(2)?,
    })
}

/// `($1, ..., $width), ($width+1, ...), ...` for a multi-row INSERT of
/// `rows` rows.
pub(super) fn row_placeholders(rows: usize, width: usize) -> String {
    let mut out = String::with_capacity(rows * width * 7);
    for row in 0..rows {
        if row > 0 {
            out.push_str(", ");
        }
        out.push('(');
        push_placeholders(&mut out, 1 + row * width, width);
        out.push(')');
    }
    out
}

/// The statement as SQLite should get it. SQLite binds `$N` by name: sqlx
/// asks SQLite for each parameter's name, and SQLite finds it by walking
/// the statement's list of names, so binding a statement with n named
/// parameters costs O(n²): a 500-value multi-row INSERT spent more time
/// there than in the insert itself. Anonymous `?` parameters need no
/// lookup. `$1, $2, ...` used once each, in order (every multi-row and
/// `IN (...)` statement here), become `?`; any other use of `$N` is left
/// as written. PostgreSQL keeps `$N`.
pub(super) fn positional(dialect: Dialect, sql: String) -> AssertSqlSafe<String> {
    if dialect != Dialect::Sqlite {
        return AssertSqlSafe(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut expect = 1usize;
    let mut rest = sql.as_str();
    while let Some(at) = rest.find('$') {
        let digits = rest[at + 1..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        out.push_str(&rest[..at]);
        if digits == 0 {
            out.push('$');
            rest = &rest[at + 1..];
            continue;
        }
        if rest[at + 1..at + 1 + digits].parse::<usize>().ok() != Some(expect) {
            return AssertSqlSafe(sql);
        }
        expect += 1;
        out.push('?');
        rest = &rest[at + 1 + digits..];
    }
    out.push_str(rest);
    AssertSqlSafe(out)
}

/// The dialect of a connection, for functions that get only the connection.
pub(super) fn dialect_of(conn: &sqlx::AnyConnection) -> Dialect {
    if conn.backend_name().eq_ignore_ascii_case("sqlite") {
        Dialect::Sqlite
    } else {
        Dialect::Postgres
    }
}

/// `$first, $first+1, ...` for an IN list of `n` values.
pub(super) fn placeholders(first: usize, n: usize) -> String {
    let mut out = String::with_capacity(n * 7);
    push_placeholders(&mut out, first, n);
    out
}

/// Written into one buffer: a first sync's 2,000-parameter INSERTs spent
/// about 10 % of the apply's own CPU formatting and joining a `String` per
/// placeholder.
fn push_placeholders(out: &mut String, first: usize, n: usize) {
    use std::fmt::Write;
    for i in first..first + n {
        if i > first {
            out.push_str(", ");
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "${i}");
    }
}

fn bind_values<'q>(
    mut q: Query<'q, Any, AnyArguments>,
    values: &'q [SqlValue],
) -> Query<'q, Any, AnyArguments> {
    for v in values {
        q = match v {
            SqlValue::Text(s) => q.bind(s.as_str()),
            SqlValue::Int(i) => q.bind(*i),
            SqlValue::Float(f) => q.bind(*f),
            SqlValue::Bool(b) => q.bind(*b),
        };
    }
    q
}
