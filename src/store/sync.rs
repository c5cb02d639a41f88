//! Directory-sync bookkeeping: links from a source's stable ids to
//! resources, each source's cursor and run lease, and the run log.

use scim::schema::ResourceKind;
use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, Row};

use super::resources::positional;
use super::{Dialect, Result, Store, WriteTx};
use crate::domain::{TenantId, Timestamp};

/// Runs kept per source in the run log.
pub const RUNS_KEPT: i64 = 1000;

/// A source's entry and the resource it became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncLink {
    pub source: String,
    pub kind: ResourceKind,
    pub external_key: crate::domain::ExternalKey,
    pub tenant: TenantId,
    pub resource_id: String,
    pub locator: Option<String>,
    pub name_lc: String,
    pub base: String,
    pub content_hash: crate::domain::ContentHash,
    pub missing_since: Option<Timestamp>,
}

/// A source's persisted state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncState {
    /// The tenant the cursor describes (None before the first applied run,
    /// and for state saved before the column existed).
    pub tenant: Option<TenantId>,
    pub cursor: Option<String>,
    pub last_full: Option<Timestamp>,
    pub lease_owner: Option<String>,
    pub lease_until: Option<Timestamp>,
}

/// One finished run, as `sync status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRunRecord {
    pub id: String,
    pub source: String,
    pub started: Timestamp,
    pub finished: Timestamp,
    /// `applied`, `unchanged`, `held`, `dry-run` or `failed`.
    pub outcome: String,
    /// The run report as JSON.
    pub report: String,
    pub error: Option<String>,
}

impl Store {
    /// Every link a source holds in a tenant.
    pub async fn sync_links(&self, source: &str, tenant: TenantId) -> Result<Vec<SyncLink>> {
        let sql =
            format!("SELECT {LINK_COLUMNS} FROM sync_links WHERE source = $1 AND tenant_id = $2");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(source)
            .bind(tenant.to_string())
            .fetch(&self.pool);
        super::map_rows(rows, |r| link_from_row(r, tenant)).await
    }

    /// The tenants other than `tenant` in which a source still holds links:
    /// none, unless the source was pointed at another tenant since.
    pub async fn sync_link_tenants_besides(
        &self,
        source: &str,
        tenant: TenantId,
    ) -> Result<Vec<TenantId>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT tenant_id FROM sync_links WHERE source = $1 AND tenant_id <> $2",
        )
        .bind(source)
        .bind(tenant.to_string())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(t,)| uuid::Uuid::parse_str(&t).ok().map(TenantId::from_uuid))
            .collect())
    }

    pub async fn sync_state(&self, source: &str) -> Result<SyncState> {
        let row = sqlx::query(
            "SELECT cursor, last_full, lease_owner, lease_until, tenant_id FROM sync_state WHERE source = $1",
        )
        .bind(source)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => SyncState {
                tenant: r
                    .try_get::<Option<String>, _>(4)?
                    .map(|value| match uuid::Uuid::parse_str(&value) {
                        Ok(id) => Ok(TenantId::from_uuid(id)),
                        Err(_) => Err(super::Error::BadColumn {
                            column: "sync_state.tenant_id",
                            value,
                        }),
                    })
                    .transpose()?,
                cursor: r.try_get(0)?,
                last_full: timestamp_column("sync_state.last_full", r.try_get(1)?)?,
                lease_owner: r.try_get(2)?,
                lease_until: timestamp_column("sync_state.lease_until", r.try_get(3)?)?,
            },
            None => SyncState::default(),
        })
    }

    /// Takes the source's run lease for `owner` until `until`, unless
    /// another owner holds an unexpired one. Returns whether it was taken.
    /// The lease is a row update, so it excludes runs in other processes
    /// and replicas as well as in this one.
    pub async fn acquire_sync_lease(
        &self,
        source: &str,
        owner: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<bool> {
        sqlx::query("INSERT INTO sync_state (source) VALUES ($1) ON CONFLICT (source) DO NOTHING")
            .bind(source)
            .execute(&self.pool)
            .await?;
        let done = sqlx::query(
            "UPDATE sync_state SET lease_owner = $1, lease_until = $2 \
             WHERE source = $3 AND (lease_owner IS NULL OR lease_until IS NULL OR lease_until < $4)",
        )
        .bind(owner)
        .bind(until.to_string())
        .bind(source)
        .bind(now.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Extends `owner`'s lease to `until`; false when `owner` no longer
    /// holds it (it expired and another run took it).
    pub async fn renew_sync_lease(
        &self,
        source: &str,
        owner: &str,
        until: Timestamp,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE sync_state SET lease_until = $1 WHERE source = $2 AND lease_owner = $3",
        )
        .bind(until.to_string())
        .bind(source)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn release_sync_lease(&self, source: &str, owner: &str) -> Result<()> {
        sqlx::query(
            "UPDATE sync_state SET lease_owner = NULL, lease_until = NULL WHERE source = $1 AND lease_owner = $2",
        )
        .bind(source)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Refreshes PostgreSQL's statistics of the tables a sync writes. After
    /// a bulk load the planner would otherwise cost the next run's lookups
    /// on an empty table, until autovacuum analyses it (up to a minute
    /// later): the bench's first incremental run spent 340 ms planning
    /// against 105,000 links it took for none. SQLite plans by its indexes
    /// and needs nothing.
    pub async fn analyze_sync_tables(&self) -> Result<()> {
        if self.dialect == super::Dialect::Postgres {
            sqlx::query("ANALYZE scim_users, scim_groups, group_members, sync_links")
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    pub async fn record_sync_run(&self, run: &SyncRunRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO sync_runs (id, source, started, finished, outcome, report, error) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&run.id)
        .bind(&run.source)
        .bind(run.started.to_string())
        .bind(run.finished.to_string())
        .bind(&run.outcome)
        .bind(&run.report)
        .bind(run.error.as_deref())
        .execute(&self.pool)
        .await?;
        // Retention: a source scheduled every minute logs 1,440 runs a day.
        sqlx::query(
            "DELETE FROM sync_runs WHERE source = $1 AND id NOT IN \
             (SELECT id FROM sync_runs WHERE source = $1 ORDER BY started DESC, id DESC LIMIT $2)",
        )
        .bind(&run.source)
        .bind(RUNS_KEPT)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The source's most recent runs, newest first.
    pub async fn sync_runs(&self, source: &str, limit: i64) -> Result<Vec<SyncRunRecord>> {
        let rows = sqlx::query(
            "SELECT id, source, started, finished, outcome, report, error FROM sync_runs \
             WHERE source = $1 ORDER BY started DESC, id DESC LIMIT $2",
        )
        .bind(source)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SyncRunRecord {
                    id: r.try_get(0)?,
                    source: r.try_get(1)?,
                    started: required_timestamp("sync_runs.started", r.try_get(2)?)?,
                    finished: required_timestamp("sync_runs.finished", r.try_get(3)?)?,
                    outcome: r.try_get(4)?,
                    report: r.try_get(5)?,
                    error: r.try_get(6)?,
                })
            })
            .collect()
    }
}

/// Links as ready-to-run upserts, their values bound: like
/// [`super::EncodedInsert`], built without a connection, so a bulk load
/// builds the next chunk's while another task writes this one.
pub struct EncodedLinks {
    statements: Vec<Query<'static, Any, AnyArguments>>,
}

impl EncodedLinks {
    pub fn new<'a>(dialect: Dialect, links: impl IntoIterator<Item = &'a SyncLink>) -> Self {
        let links: Vec<&SyncLink> = links.into_iter().collect();
        let mut statements = Vec::new();
        for chunk in links.chunks(super::resources::MULTI_ROW) {
            let values = super::resources::row_placeholders(chunk.len(), 10);
            // Only `$N` placeholders are interpolated; every value is bound.
            let sql = format!(
                "INSERT INTO sync_links (source, kind, external_key, tenant_id, resource_id, locator, name_lc, base, content_hash, missing_since) \
                 VALUES {values} ON CONFLICT (source, kind, external_key) DO UPDATE SET tenant_id = excluded.tenant_id, \
                 resource_id = excluded.resource_id, locator = excluded.locator, name_lc = excluded.name_lc, \
                 base = excluded.base, content_hash = excluded.content_hash, missing_since = excluded.missing_since"
            );
            let mut q = sqlx::query(positional(dialect, sql));
            for link in chunk {
                q = q
                    .bind(link.source.clone())
                    .bind(link.kind.name())
                    .bind(link.external_key.as_str().to_string())
                    .bind(link.tenant.to_string())
                    .bind(link.resource_id.clone())
                    .bind(link.locator.clone())
                    .bind(link.name_lc.clone())
                    .bind(link.base.clone())
                    .bind(link.content_hash.to_hex())
                    .bind(link.missing_since.map(|t| t.to_string()));
            }
            statements.push(q);
        }
        EncodedLinks { statements }
    }
}

impl WriteTx {
    /// Creates or replaces many links, [`super::resources::MULTI_ROW`] per
    /// statement.
    pub async fn upsert_sync_links(&mut self, links: &[&SyncLink]) -> Result<()> {
        let encoded = EncodedLinks::new(self.dialect, links.iter().copied());
        self.upsert_encoded_links(encoded).await
    }

    /// Runs the statements of an [`EncodedLinks`].
    pub async fn upsert_encoded_links(&mut self, encoded: EncodedLinks) -> Result<()> {
        if encoded.statements.is_empty() {
            return Ok(());
        }
        self.generic_plans().await?;
        for q in encoded.statements {
            q.execute(self.conn()).await?;
        }
        self.custom_plans().await
    }

    /// Drops a source's links in every tenant but `tenant`: the resources
    /// there stay, no longer owned by the source, so their tenant's SCIM
    /// clients may manage them, and the source never touches them again.
    pub async fn release_sync_links_besides(
        &mut self,
        source: &str,
        tenant: TenantId,
    ) -> Result<u64> {
        let done = sqlx::query("DELETE FROM sync_links WHERE source = $1 AND tenant_id <> $2")
            .bind(source)
            .bind(tenant.to_string())
            .execute(self.conn())
            .await?;
        Ok(done.rows_affected())
    }

    pub async fn delete_sync_link(
        &mut self,
        source: &str,
        kind: ResourceKind,
        key: &crate::domain::ExternalKey,
    ) -> Result<()> {
        sqlx::query("DELETE FROM sync_links WHERE source = $1 AND kind = $2 AND external_key = $3")
            .bind(source)
            .bind(kind.name())
            .bind(key.as_str())
            .execute(self.conn())
            .await?;
        Ok(())
    }

    /// Saves the cursor a run returned, in the transaction that applied the
    /// run, so the cursor never runs ahead of the data; and checks that the
    /// run still holds the source's lease. A run that outlived its lease
    /// while another took it planned from a stale read: its whole
    /// transaction is refused ([`Error::LeaseLost`]). The tenant is saved
    /// with the cursor, which describes what that tenant holds.
    pub async fn save_sync_cursor(
        &mut self,
        source: &str,
        tenant: TenantId,
        lease_owner: &str,
        cursor: Option<&str>,
        full_at: Option<Timestamp>,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE sync_state SET cursor = $1, last_full = COALESCE($2, last_full), tenant_id = $3 \
             WHERE source = $4 AND lease_owner = $5",
        )
        .bind(cursor)
        .bind(full_at.map(|t| t.to_string()))
        .bind(tenant.to_string())
        .bind(source)
        .bind(lease_owner)
        .execute(self.conn())
        .await?;
        if done.rows_affected() != 1 {
            return Err(super::Error::LeaseLost(source.to_string()));
        }
        Ok(())
    }
}

/// A `sync_links.kind` value.
pub(super) fn kind_column(value: &str) -> Result<ResourceKind> {
    match value {
        "User" => Ok(ResourceKind::User),
        "Group" => Ok(ResourceKind::Group),
        other => Err(super::Error::BadColumn {
            column: "sync_links.kind",
            value: other.to_string(),
        }),
    }
}

/// The columns [`link_from_row`] reads, in its order.
pub(super) const LINK_COLUMNS: &str = "source, kind, external_key, tenant_id, resource_id, locator, name_lc, base, content_hash, missing_since";

/// A row of `SELECT {LINK_COLUMNS}`.
pub(super) fn link_from_row(r: &sqlx::any::AnyRow, tenant: TenantId) -> Result<SyncLink> {
    Ok(SyncLink {
        source: r.try_get(0)?,
        kind: kind_column(&r.try_get::<String, _>(1)?)?,
        external_key: crate::domain::ExternalKey::new(r.try_get::<String, _>(2)?),
        tenant,
        resource_id: r.try_get(4)?,
        locator: r.try_get(5)?,
        name_lc: r.try_get(6)?,
        base: r.try_get(7)?,
        content_hash: {
            let text: String = r.try_get(8)?;
            crate::domain::ContentHash::from_hex(&text).ok_or(super::Error::BadColumn {
                column: "sync_links.content_hash",
                value: text,
            })?
        },
        missing_since: timestamp_column("sync_links.missing_since", r.try_get(9)?)?,
    })
}

/// A nullable timestamp column; text in another format is corrupt.
pub(super) fn timestamp_column(
    column: &'static str,
    value: Option<String>,
) -> Result<Option<Timestamp>> {
    value
        .map(|v| Timestamp::parse(&v).ok_or(super::Error::BadColumn { column, value: v }))
        .transpose()
}

/// A NOT NULL timestamp column (also the webhook tables').
pub(super) fn required_timestamp(column: &'static str, value: String) -> Result<Timestamp> {
    Timestamp::parse(&value).ok_or(super::Error::BadColumn { column, value })
}
