//! Mapping sets versioned in the store, and the audit trail of changes.
//!
//! A version is the whole set (every catalog and tenant file), so a replica
//! switches from one complete set to another and can never hold a mix. File
//! texts are stored once per content (`mapping_blobs`).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use sqlx::Row;

use super::resources::{placeholders, positional};
use super::{Error, Result, Store};
use crate::domain::{MappingVersion, Timestamp};

/// How a version came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionOrigin {
    /// `serve --mappings DIR` on a store that held no version.
    Import,
    /// `mappings apply` or the admin API.
    Apply,
    /// A new version equal to an older one.
    Rollback,
}

impl VersionOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            VersionOrigin::Import => "import",
            VersionOrigin::Apply => "apply",
            VersionOrigin::Rollback => "rollback",
        }
    }

    fn parse(raw: &str) -> Result<Self> {
        match raw {
            "import" => Ok(VersionOrigin::Import),
            "apply" => Ok(VersionOrigin::Apply),
            "rollback" => Ok(VersionOrigin::Rollback),
            other => Err(Error::BadColumn {
                column: "mapping_versions.origin",
                value: other.to_string(),
            }),
        }
    }
}

/// Who made a change: a token (its id and label) or the operator's CLI.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Actor {
    pub id: String,
    pub label: Option<String>,
}

/// A version as stored, with its files.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredVersion {
    pub version: MappingVersion,
    pub parent: Option<MappingVersion>,
    pub fingerprint: String,
    pub created: Timestamp,
    pub origin: VersionOrigin,
    pub rollback_of: Option<MappingVersion>,
    pub actor: Actor,
    pub plan_hash: Option<String>,
    /// The plan's totals, as the app wrote them (JSON).
    pub totals: Option<serde_json::Value>,
    /// File name (`catalogs/x.yaml`, `tenants/y.yaml`) → text.
    #[serde(skip)]
    pub files: BTreeMap<String, String>,
    /// File name → SHA-256 of its text.
    pub manifest: BTreeMap<String, String>,
}

/// A version to write.
pub struct NewVersion<'a> {
    /// The version this one must follow; the write is refused with
    /// [`Error::VersionConflict`] when another version came first.
    pub after: Option<MappingVersion>,
    pub fingerprint: &'a str,
    pub files: &'a BTreeMap<String, String>,
    pub created: Timestamp,
    pub origin: VersionOrigin,
    pub rollback_of: Option<MappingVersion>,
    pub actor: &'a Actor,
    pub plan_hash: Option<&'a str>,
    pub totals: Option<&'a serde_json::Value>,
}

/// What an audit record says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditAction {
    Applied,
    /// The guard refused it (unconfirmed, or confirmed with a stale hash).
    Refused,
    /// Another change came first (409).
    Conflict,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Applied => "applied",
            AuditAction::Refused => "refused",
            AuditAction::Conflict => "conflict",
        }
    }

    fn parse(raw: &str) -> Result<Self> {
        match raw {
            "applied" => Ok(AuditAction::Applied),
            "refused" => Ok(AuditAction::Refused),
            "conflict" => Ok(AuditAction::Conflict),
            other => Err(Error::BadColumn {
                column: "mapping_audit.action",
                value: other.to_string(),
            }),
        }
    }
}

/// One audit record.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditRecord {
    pub id: String,
    pub at: Timestamp,
    pub actor: Actor,
    /// The tenant whose mapping the change edits; `None` for an operator
    /// change of the whole set.
    pub tenant: Option<String>,
    pub action: AuditAction,
    pub base: Option<MappingVersion>,
    pub version: Option<MappingVersion>,
    pub plan_hash: Option<String>,
    pub totals: Option<serde_json::Value>,
    pub detail: Option<String>,
}

/// SHA-256 of a file's text, hex.
pub fn blob_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

impl Store {
    /// The newest version's number: what replicas poll.
    pub async fn latest_mapping_version(&self) -> Result<Option<MappingVersion>> {
        let row = sqlx::query("SELECT MAX(version) FROM mapping_versions")
            .fetch_one(&self.pool)
            .await?;
        let v: Option<i64> = row.try_get(0)?;
        Ok(v.map(MappingVersion))
    }

    /// One version with its files.
    pub async fn mapping_version(&self, v: MappingVersion) -> Result<Option<StoredVersion>> {
        let row = sqlx::query(
            "SELECT version, parent, fingerprint, manifest, created, origin, rollback_of, actor, actor_label, plan_hash, totals FROM mapping_versions WHERE version = $1",
        )
        .bind(v.0)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let mut version = version_from_row(&row)?;
        // Every text in one query; a manifest names each content once per file.
        let shas: std::collections::BTreeSet<&String> = version.manifest.values().collect();
        let mut texts: BTreeMap<String, String> = BTreeMap::new();
        if !shas.is_empty() {
            let sql = format!(
                "SELECT sha256, text FROM mapping_blobs WHERE sha256 IN ({})",
                placeholders(1, shas.len())
            );
            let mut q = sqlx::query(positional(self.dialect, sql));
            for sha in &shas {
                q = q.bind(sha.as_str());
            }
            for r in q.fetch_all(&self.pool).await? {
                texts.insert(r.try_get(0)?, r.try_get(1)?);
            }
        }
        let mut files = BTreeMap::new();
        for (name, sha) in &version.manifest {
            let text = texts.get(sha).cloned().ok_or_else(|| Error::BadColumn {
                column: "mapping_versions.manifest",
                value: format!("version {} names missing file content {sha} ({name})", v.0),
            })?;
            files.insert(name.clone(), text);
        }
        version.files = files;
        Ok(Some(version))
    }

    /// Versions newest first, without their files.
    pub async fn mapping_versions(&self, limit: i64) -> Result<Vec<StoredVersion>> {
        let rows = sqlx::query(
            "SELECT version, parent, fingerprint, manifest, created, origin, rollback_of, actor, actor_label, plan_hash, totals FROM mapping_versions ORDER BY version DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(version_from_row).collect()
    }

    /// Writes a version as `after + 1` (1 for the first), or refuses with
    /// [`Error::VersionConflict`] when the newest version is not `after`.
    /// Versions are consecutive, so "`after + 1` is free" is exactly
    /// "`after` is the newest": the primary key decides, even between
    /// processes, and the version row is the transaction's first statement
    /// (a write, so SQLite waits for the write lock instead of failing a
    /// read-to-write upgrade).
    pub async fn insert_mapping_version(&self, new: NewVersion<'_>) -> Result<MappingVersion> {
        let _guard = self.exclusive().await;
        let version = new.after.map_or(1, |v| v.0 + 1);
        let manifest: BTreeMap<&String, String> = new
            .files
            .iter()
            .map(|(name, text)| (name, blob_hash(text)))
            .collect();
        let manifest_json = serde_json::to_string(&manifest).map_err(|e| Error::BadColumn {
            column: "mapping_versions.manifest",
            value: e.to_string(),
        })?;
        let mut tx = self.pool.begin().await?;
        let res = sqlx::query(
            "INSERT INTO mapping_versions (version, parent, fingerprint, manifest, created, origin, rollback_of, actor, actor_label, plan_hash, totals) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(version)
        .bind(new.after.map(|v| v.0))
        .bind(new.fingerprint)
        .bind(manifest_json)
        .bind(new.created.to_string())
        .bind(new.origin.as_str())
        .bind(new.rollback_of.map(|v| v.0))
        .bind(&new.actor.id)
        .bind(new.actor.label.as_deref())
        .bind(new.plan_hash)
        .bind(new.totals.map(|t| t.to_string()))
        .execute(&mut *tx)
        .await;
        match res {
            Ok(_) => {}
            Err(e) if Error::is_unique_violation(&e) => {
                drop(tx);
                return Err(Error::VersionConflict {
                    expected: new.after,
                    latest: self.latest_mapping_version().await?,
                });
            }
            Err(e) => return Err(e.into()),
        }
        // The parent must exist: a version after a number nobody wrote
        // would break "consecutive".
        if let Some(after) = new.after {
            let row = sqlx::query("SELECT COUNT(*) FROM mapping_versions WHERE version = $1")
                .bind(after.0)
                .fetch_one(&mut *tx)
                .await?;
            if row.try_get::<i64, _>(0)? == 0 {
                drop(tx);
                return Err(Error::VersionConflict {
                    expected: new.after,
                    latest: self.latest_mapping_version().await?,
                });
            }
        }
        for (name, sha) in &manifest {
            sqlx::query(
                "INSERT INTO mapping_blobs (sha256, text) VALUES ($1, $2) ON CONFLICT (sha256) DO NOTHING",
            )
            .bind(sha)
            .bind(&new.files[*name])
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(MappingVersion(version))
    }

    pub async fn insert_mapping_audit(&self, r: &AuditRecord) -> Result<()> {
        let _guard = self.exclusive().await;
        sqlx::query(
            "INSERT INTO mapping_audit (id, at, actor, actor_label, tenant, action, base, version, plan_hash, totals, detail) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&r.id)
        .bind(r.at.to_string())
        .bind(&r.actor.id)
        .bind(r.actor.label.as_deref())
        .bind(r.tenant.as_deref())
        .bind(r.action.as_str())
        .bind(r.base.map(|v| v.0))
        .bind(r.version.map(|v| v.0))
        .bind(r.plan_hash.as_deref())
        .bind(r.totals.as_ref().map(|t| t.to_string()))
        .bind(r.detail.as_deref())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Audit records newest first; of one tenant's changes, or of all.
    pub async fn mapping_audit(
        &self,
        tenant: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuditRecord>> {
        const COLS: &str =
            "id, at, actor, actor_label, tenant, action, base, version, plan_hash, totals, detail";
        let rows = match tenant {
            Some(t) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLS} FROM mapping_audit WHERE tenant = $1 ORDER BY at DESC, id DESC LIMIT $2"
                )))
                .bind(t)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLS} FROM mapping_audit ORDER BY at DESC, id DESC LIMIT $1"
                )))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(audit_from_row).collect()
    }
}

fn timestamp(column: &'static str, raw: String) -> Result<Timestamp> {
    Timestamp::parse(&raw).ok_or(Error::BadColumn { column, value: raw })
}

fn json_column(column: &'static str, raw: Option<String>) -> Result<Option<serde_json::Value>> {
    raw.map(|s| serde_json::from_str(&s).map_err(|_| Error::BadColumn { column, value: s }))
        .transpose()
}

fn version_from_row(row: &sqlx::any::AnyRow) -> Result<StoredVersion> {
    let manifest: String = row.try_get("manifest")?;
    let manifest: BTreeMap<String, String> =
        serde_json::from_str(&manifest).map_err(|_| Error::BadColumn {
            column: "mapping_versions.manifest",
            value: manifest.clone(),
        })?;
    Ok(StoredVersion {
        version: MappingVersion(row.try_get("version")?),
        parent: row.try_get::<Option<i64>, _>("parent")?.map(MappingVersion),
        fingerprint: row.try_get("fingerprint")?,
        created: timestamp("mapping_versions.created", row.try_get("created")?)?,
        origin: VersionOrigin::parse(&row.try_get::<String, _>("origin")?)?,
        rollback_of: row
            .try_get::<Option<i64>, _>("rollback_of")?
            .map(MappingVersion),
        actor: Actor {
            id: row.try_get("actor")?,
            label: row.try_get("actor_label")?,
        },
        plan_hash: row.try_get("plan_hash")?,
        totals: json_column("mapping_versions.totals", row.try_get("totals")?)?,
        files: BTreeMap::new(),
        manifest,
    })
}

fn audit_from_row(row: &sqlx::any::AnyRow) -> Result<AuditRecord> {
    Ok(AuditRecord {
        id: row.try_get("id")?,
        at: timestamp("mapping_audit.at", row.try_get("at")?)?,
        actor: Actor {
            id: row.try_get("actor")?,
            label: row.try_get("actor_label")?,
        },
        tenant: row.try_get("tenant")?,
        action: AuditAction::parse(&row.try_get::<String, _>("action")?)?,
        base: row.try_get::<Option<i64>, _>("base")?.map(MappingVersion),
        version: row
            .try_get::<Option<i64>, _>("version")?
            .map(MappingVersion),
        plan_hash: row.try_get("plan_hash")?,
        totals: json_column("mapping_audit.totals", row.try_get("totals")?)?,
        detail: row.try_get("detail")?,
    })
}
