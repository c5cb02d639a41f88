//! Mapping sets: the set in force, its versions in the store, and the
//! admin workflow over them (plan, guarded apply, history, rollback,
//! audit).
//!
//! Every replica follows the store's newest version (polled; see
//! [`App::refresh_mappings`]) and switches from one whole set to the next,
//! so it never serves a mix. A change is planned against the live
//! directory, refused when the guard trips unless confirmed with the plan's
//! hash, written as the next version (a concurrent change gets a conflict),
//! recorded in the audit trail, and put in force.

mod guard;
mod plan;
mod set;

use std::collections::BTreeSet;
use std::sync::Arc;

pub use guard::{GuardLimits, GuardSettings};
pub use plan::{MappingPlan, ProtectedRole, TenantPlan, Totals, UserChange};
pub use set::{fingerprint, load_dir, read_dir, under, LoadedMappings, MappingFiles, Mappings};

use mapping::{MappingError, TenantName};
use serde::Serialize;

use super::permissions::user_facts;
use super::{App, Error, Result};
use crate::domain::MappingVersion;
use crate::store::{self, NewVersion};
pub use crate::store::{Actor, AuditAction, AuditRecord, StoredVersion, VersionOrigin};

/// Whose mapping a change edits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeScope {
    /// The whole set, catalogs included: the operator (`mappings apply`).
    Operator,
    /// One tenant's file only: the tenant's admin token.
    Tenant(TenantName),
}

impl ChangeScope {
    fn tenant(&self) -> Option<&str> {
        match self {
            ChangeScope::Operator => None,
            ChangeScope::Tenant(t) => Some(t.as_str()),
        }
    }
}

/// A proposed change.
#[derive(Debug, Clone)]
pub struct MappingChange {
    /// The version the change was made against; `None` only while the
    /// store holds no version.
    pub base: Option<MappingVersion>,
    pub scope: ChangeScope,
    /// [`ChangeScope::Operator`]: the whole proposed set.
    /// [`ChangeScope::Tenant`]: the tenant's file alone, as
    /// `tenants/{tenant}.yaml`.
    pub files: MappingFiles,
}

/// An applied change.
#[derive(Debug, Clone, Serialize)]
pub struct AppliedChange {
    pub version: MappingVersion,
    pub plan: MappingPlan,
    /// Tenants whose stored permissions were recomputed in this process.
    pub tenants_recomputed: usize,
}

/// The differences between two versions, per file (unified diff).
#[derive(Debug, Clone, Serialize)]
pub struct VersionDiff {
    pub from: MappingVersion,
    pub to: MappingVersion,
    pub files: Vec<FileDiff>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileDiff {
    pub file: String,
    /// added | removed | changed
    pub status: &'static str,
    pub diff: String,
}

/// The actor of the operator's own commands.
pub fn operator() -> Actor {
    Actor {
        id: "operator".into(),
        label: Some("rolebridge CLI".into()),
    }
}

/// Where a tenant's own mapping file lives in a set.
pub fn tenant_file(tenant: &str) -> String {
    format!("tenants/{tenant}.yaml")
}

impl App {
    /// Re-reads the mapping directory of an app that is not following the
    /// store (tests, `mappings validate`). On any error the set in force
    /// stays and every error is returned. The tenants' stored rows are
    /// recomputed by [`App::reconcile_mappings`], which the caller runs next.
    pub fn reload_mappings(&self) -> Result<(), Vec<MappingError>> {
        let Some(dir) = self.mappings.dir() else {
            return Ok(());
        };
        let loaded = load_dir(dir)?;
        self.mappings.swap(Arc::new(loaded));
        self.cache.local.clear();
        Ok(())
    }

    /// Starts following the store's versions: puts the newest in force, or,
    /// when the store holds none, records the set in force (the directory
    /// `serve --mappings` read) as version 1. Returns the version in force
    /// and, when the directory differs from it, a warning to log: the
    /// store's version wins, and `mappings apply` changes it.
    pub async fn adopt_store_mappings(&self) -> Result<(MappingVersion, Option<String>)> {
        let current = self.mappings.current();
        match self.store.latest_mapping_version().await? {
            None => {
                let files = current.files.as_ref().clone();
                let v = self
                    .store
                    .insert_mapping_version(NewVersion {
                        after: None,
                        fingerprint: &current.fingerprint,
                        files: &files,
                        created: self.clock().now(),
                        origin: VersionOrigin::Import,
                        rollback_of: None,
                        actor: &operator(),
                        plan_hash: None,
                        totals: None,
                    })
                    .await;
                let v = match v {
                    Ok(v) => v,
                    // Another replica imported first: follow it.
                    Err(store::Error::VersionConflict { .. }) => {
                        return Box::pin(self.adopt_store_mappings()).await
                    }
                    Err(e) => return Err(e.into()),
                };
                self.put_in_force(self.load_version(v).await?);
                Ok((v, None))
            }
            Some(latest) => {
                let stored = self.load_version(latest).await?;
                let warning = (self.mappings.dir().is_some()
                    && stored.fingerprint != current.fingerprint)
                    .then(|| {
                        format!(
                            "the mappings directory differs from the store's version {latest}; \
                             {latest} is in force (use `rolebridge mappings apply DIR` to change it)"
                        )
                    });
                self.put_in_force(stored);
                Ok((latest, warning))
            }
        }
    }

    /// Puts the store's newest version in force, when the store holds one
    /// (commands other than `serve`: they never import).
    pub async fn use_store_mappings(&self) -> Result<Option<MappingVersion>> {
        let Some(latest) = self.store.latest_mapping_version().await? else {
            return Ok(None);
        };
        self.put_in_force(self.load_version(latest).await?);
        Ok(Some(latest))
    }

    /// The store's newest version.
    pub async fn latest_mapping_version(&self) -> Result<Option<MappingVersion>> {
        Ok(self.store.latest_mapping_version().await?)
    }

    /// Switches to the store's newest version when it is newer than the one
    /// in force, and recomputes the tenants' stored permissions under it.
    /// Replicas call this on a timer: no signal is needed.
    pub async fn refresh_mappings(&self) -> Result<Option<MappingVersion>> {
        let Some(latest) = self.store.latest_mapping_version().await? else {
            return Ok(None);
        };
        let current = self.mappings.current().version;
        if current.is_some_and(|c| c >= latest) {
            if self.mappings.take_reconcile_due() {
                self.reconcile_mappings().await?;
            }
            return Ok(None);
        }
        let loaded = self.load_version(latest).await?;
        self.put_in_force(loaded);
        self.mappings.take_reconcile_due();
        self.reconcile_mappings().await?;
        Ok(Some(latest))
    }

    /// The set to compute under now: the one in force, or, for an app that
    /// follows the store's versions and lags its newest, that newest one
    /// (put in force here, with the other tenants' rows recomputed in the
    /// background). One indexed query when nothing changed; nothing at all
    /// for an app that does not follow versions.
    pub async fn catch_up_mappings(&self) -> Result<Arc<LoadedMappings>> {
        let current = self.mappings.current();
        let Some(in_force) = current.version else {
            return Ok(current);
        };
        match self.store.latest_mapping_version().await? {
            Some(latest) if latest > in_force => {
                let loaded = Arc::new(self.load_version(latest).await?);
                self.mappings.swap(loaded.clone());
                self.cache.local.clear();
                // The other tenants are recomputed by the next poll
                // (`refresh_mappings`), outside this request.
                self.mappings.reconcile_due();
                Ok(loaded)
            }
            _ => Ok(current),
        }
    }

    /// The version in force in this process.
    pub fn mapping_version_in_force(&self) -> Option<MappingVersion> {
        self.mappings.current().version
    }

    /// A stored version with its files, or 404.
    async fn stored_version(&self, v: MappingVersion) -> Result<StoredVersion> {
        self.store
            .mapping_version(v)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "mapping version",
                id: v.to_string(),
            })
    }

    async fn load_version(&self, v: MappingVersion) -> Result<LoadedMappings> {
        let stored = self.stored_version(v).await?;
        LoadedMappings::from_files(stored.files, Some(v)).map_err(|errors| {
            // A stored version was validated before it was written; one that
            // no longer validates was written by another release.
            Error::Internal(format!(
                "stored mapping version {v} does not validate in this release: {}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        })
    }

    fn put_in_force(&self, loaded: LoadedMappings) {
        self.mappings.swap(Arc::new(loaded));
        self.cache.local.clear();
    }

    /// Plans a change against the live directory: see [`MappingPlan`].
    pub async fn plan_mappings(&self, change: &MappingChange) -> Result<MappingPlan> {
        Ok(self.prepare(change).await?.plan)
    }

    /// The proposed set and its plan.
    async fn prepare(&self, change: &MappingChange) -> Result<Prepared> {
        let latest = self.store.latest_mapping_version().await?;
        let current = match latest {
            Some(v) if self.mappings.current().version == Some(v) => self.mappings.current(),
            Some(v) => Arc::new(self.load_version(v).await?),
            None => self.mappings.current(),
        };
        let proposed_files = match &change.scope {
            ChangeScope::Operator => {
                if change.base != latest {
                    return Err(conflict(change.base, latest));
                }
                change.files.clone()
            }
            ChangeScope::Tenant(t) => {
                let own = tenant_file(t.as_str());
                if let Some(other) = change.files.keys().find(|k| **k != own) {
                    return Err(Error::Forbidden(format!(
                        "a tenant admin changes only its own mapping file ({own}), not '{other}'"
                    )));
                }
                let Some(text) = change.files.get(&own) else {
                    return Err(Error::Usage(format!("the change must hold {own}")));
                };
                if change.base != latest {
                    self.check_rebase(change, t, latest, &current).await?;
                }
                let mut files = current.files.as_ref().clone();
                files.insert(own, text.clone());
                files
            }
        };
        let proposed = LoadedMappings::from_files(proposed_files.clone(), None)
            .map_err(Error::MappingInvalid)?;
        if let ChangeScope::Tenant(t) = &change.scope {
            if proposed.set.tenant(t).is_none() {
                return Err(Error::Usage(format!(
                    "{} does not define tenant '{t}'",
                    tenant_file(t.as_str())
                )));
            }
        }
        let files_changed = changed_files(&current.files, &proposed_files);
        let mut tenants = Vec::new();
        for tenant in self.store.list_tenants().await? {
            let name = TenantName::new(tenant.name.as_str());
            if let ChangeScope::Tenant(t) = &change.scope {
                if *t != name {
                    continue;
                }
            }
            let before = current.set.tenant(&name);
            let after = proposed.set.tenant(&name);
            if !depends_on_change(tenant.name.as_str(), before, after, &files_changed) {
                continue;
            }
            let dir = self.store.directory(tenant.id).await?;
            let facts = user_facts(&dir);
            drop(dir);
            // Whole-tenant computations are CPU work: off the async workers.
            let (name, before, after) = (
                tenant.name.as_str().to_string(),
                before.cloned(),
                after.cloned(),
            );
            let planned = tokio::task::spawn_blocking(move || {
                plan::plan_tenant(&name, before.as_ref(), after.as_ref(), &facts)
            })
            .await
            .map_err(|e| Error::Internal(format!("planning a tenant failed: {e}")))?;
            tenants.push(planned);
        }
        let totals = plan::total(&tenants);
        let guard = guard::verdict(self.mapping_guard(), &tenants);
        let hash = plan::plan_hash(change.base, &change.files, &tenants);
        Ok(Prepared {
            latest,
            proposed,
            plan: MappingPlan {
                base: change.base,
                fingerprint: fingerprint(&proposed_files),
                files_changed: files_changed.into_iter().collect(),
                tenants,
                totals,
                guard,
                hash,
            },
        })
    }

    /// A tenant's change made against an older version may still apply,
    /// on top of the newest, when nothing it depends on (its file, its
    /// catalog) changed in between; otherwise it is a conflict.
    async fn check_rebase(
        &self,
        change: &MappingChange,
        tenant: &TenantName,
        latest: Option<MappingVersion>,
        current: &LoadedMappings,
    ) -> Result<()> {
        let Some(base) = change.base else {
            return Err(conflict(change.base, latest));
        };
        let old = self.stored_version(base).await?;
        let own = tenant_file(tenant.as_str());
        let mut deps: BTreeSet<String> = BTreeSet::from([own]);
        if let Some(c) = current.set.tenant(tenant) {
            deps.insert(format!("catalogs/{}.yaml", c.catalog().id()));
        }
        if deps
            .iter()
            .any(|f| old.files.get(f) != current.files.get(f))
        {
            return Err(conflict(change.base, latest));
        }
        Ok(())
    }

    /// Applies a change: refused when the guard trips unless `confirm` is
    /// the plan's hash (and refused when `confirm` is given but stale);
    /// written as the next version; audited; put in force here at once
    /// and in every other replica at its next poll.
    pub async fn apply_mappings(
        &self,
        change: &MappingChange,
        confirm: Option<&str>,
        actor: &Actor,
    ) -> Result<AppliedChange> {
        self.write_version(change, confirm, actor, VersionOrigin::Apply, None)
            .await
    }

    /// A new version equal to `to` (the whole set for the operator; the
    /// tenant's file for a tenant admin), planned and guarded like any
    /// other change.
    pub async fn rollback_mappings(
        &self,
        to: MappingVersion,
        base: Option<MappingVersion>,
        scope: ChangeScope,
        confirm: Option<&str>,
        actor: &Actor,
    ) -> Result<AppliedChange> {
        let change = self.rollback_change(to, base, scope).await?;
        self.write_version(&change, confirm, actor, VersionOrigin::Rollback, Some(to))
            .await
    }

    /// The change a rollback to `to` makes, for planning it first.
    pub async fn rollback_change(
        &self,
        to: MappingVersion,
        base: Option<MappingVersion>,
        scope: ChangeScope,
    ) -> Result<MappingChange> {
        let old = self.stored_version(to).await?;
        let files = match &scope {
            ChangeScope::Operator => old.files,
            ChangeScope::Tenant(t) => {
                let own = tenant_file(t.as_str());
                let text = old.files.get(&own).cloned().ok_or_else(|| {
                    Error::Usage(format!("version {to} has no mapping file for tenant '{t}'"))
                })?;
                MappingFiles::from([(own, text)])
            }
        };
        Ok(MappingChange { base, scope, files })
    }

    async fn write_version(
        &self,
        change: &MappingChange,
        confirm: Option<&str>,
        actor: &Actor,
        origin: VersionOrigin,
        rollback_of: Option<MappingVersion>,
    ) -> Result<AppliedChange> {
        let prepared = self.prepare(change).await;
        let prepared = match prepared {
            Ok(p) => p,
            Err(e @ Error::MappingConflict { .. }) => {
                self.audit(
                    actor,
                    change,
                    AuditAction::Conflict,
                    None,
                    None,
                    &e.to_string(),
                )
                .await?;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let plan = &prepared.plan;
        let refusal = match confirm {
            Some(h) if h != plan.hash => Some(Error::MappingPlanStale {
                hash: plan.hash.clone(),
            }),
            None if !plan.guard.is_empty() => Some(Error::MappingGuarded {
                reasons: plan.guard.clone(),
                hash: plan.hash.clone(),
            }),
            _ => None,
        };
        if let Some(e) = refusal {
            self.audit(
                actor,
                change,
                AuditAction::Refused,
                None,
                Some(plan),
                &e.to_string(),
            )
            .await?;
            return Err(e);
        }
        let totals = serde_json::to_value(plan.totals).ok();
        let written = self
            .store
            .insert_mapping_version(NewVersion {
                after: prepared.latest,
                fingerprint: &prepared.proposed.fingerprint,
                files: &prepared.proposed.files,
                created: self.clock().now(),
                origin,
                rollback_of,
                actor,
                plan_hash: Some(&plan.hash),
                totals: totals.as_ref(),
            })
            .await;
        let version = match written {
            Ok(v) => v,
            Err(store::Error::VersionConflict { latest, .. }) => {
                let e = conflict(prepared.latest, latest);
                self.audit(
                    actor,
                    change,
                    AuditAction::Conflict,
                    None,
                    Some(plan),
                    &e.to_string(),
                )
                .await?;
                return Err(e);
            }
            Err(e) => return Err(e.into()),
        };
        let detail = match rollback_of {
            Some(v) => format!("rollback to {v}"),
            None => format!("{} file(s) changed", plan.files_changed.len()),
        };
        self.audit(
            actor,
            change,
            AuditAction::Applied,
            Some(version),
            Some(plan),
            &detail,
        )
        .await?;
        self.put_in_force(prepared.proposed.at_version(version));
        let tenants_recomputed = self.reconcile_mappings().await?;
        Ok(AppliedChange {
            version,
            plan: prepared.plan,
            tenants_recomputed,
        })
    }

    async fn audit(
        &self,
        actor: &Actor,
        change: &MappingChange,
        action: AuditAction,
        version: Option<MappingVersion>,
        plan: Option<&MappingPlan>,
        detail: &str,
    ) -> Result<()> {
        self.store
            .insert_mapping_audit(&AuditRecord {
                id: uuid::Uuid::new_v4().to_string(),
                at: self.clock().now(),
                actor: actor.clone(),
                tenant: change.scope.tenant().map(str::to_string),
                action,
                base: change.base,
                version,
                plan_hash: plan.map(|p| p.hash.clone()),
                totals: plan.and_then(|p| serde_json::to_value(p.totals).ok()),
                detail: Some(detail.to_string()),
            })
            .await?;
        Ok(())
    }

    /// Versions, newest first.
    pub async fn mapping_history(&self, limit: i64) -> Result<Vec<StoredVersion>> {
        Ok(self.store.mapping_versions(limit).await?)
    }

    /// The versions that changed one tenant's file, newest first (what its
    /// admin sees: other tenants' changes are not theirs to read).
    pub async fn tenant_mapping_history(
        &self,
        tenant: &str,
        limit: i64,
    ) -> Result<Vec<StoredVersion>> {
        let own = tenant_file(tenant);
        // Oldest first, so each version is compared with the one before it.
        let mut all = self.store.mapping_versions(HISTORY_SCAN).await?;
        all.reverse();
        let mut previous: Option<&String> = None;
        let mut out = Vec::new();
        for v in &all {
            let now = v.manifest.get(&own);
            if now != previous {
                let mut v = v.clone();
                v.manifest.retain(|k, _| *k == own);
                out.push(v);
            }
            previous = now;
        }
        out.reverse();
        out.truncate(usize::try_from(limit).unwrap_or(0));
        Ok(out)
    }

    /// One version with its files; for a tenant admin, its own file only.
    pub async fn mapping_version(
        &self,
        v: MappingVersion,
        scope: &ChangeScope,
    ) -> Result<StoredVersion> {
        let mut stored = self.stored_version(v).await?;
        if let ChangeScope::Tenant(t) = scope {
            let own = tenant_file(t.as_str());
            stored.files.retain(|k, _| *k == own);
            stored.manifest.retain(|k, _| *k == own);
        }
        Ok(stored)
    }

    /// Unified diffs between two versions (a tenant admin sees its file).
    pub async fn mapping_diff(
        &self,
        from: MappingVersion,
        to: MappingVersion,
        scope: &ChangeScope,
    ) -> Result<VersionDiff> {
        let a = self.mapping_version(from, scope).await?;
        let b = self.mapping_version(to, scope).await?;
        let names: BTreeSet<&String> = a.files.keys().chain(b.files.keys()).collect();
        let mut files = Vec::new();
        for name in names {
            let (old, new) = (a.files.get(name), b.files.get(name));
            if old == new {
                continue;
            }
            let status = match (old, new) {
                (None, Some(_)) => "added",
                (Some(_), None) => "removed",
                _ => "changed",
            };
            let (old, new) = (
                old.map(String::as_str).unwrap_or(""),
                new.map(String::as_str).unwrap_or(""),
            );
            let diff = similar::TextDiff::from_lines(old, new)
                .unified_diff()
                .header(&format!("{from}/{name}"), &format!("{to}/{name}"))
                .to_string();
            files.push(FileDiff {
                file: name.clone(),
                status,
                diff,
            });
        }
        Ok(VersionDiff { from, to, files })
    }

    /// The audit trail, newest first: one tenant's, or every change.
    pub async fn mapping_audit(
        &self,
        tenant: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuditRecord>> {
        Ok(self.store.mapping_audit(tenant, limit).await?)
    }
}

/// How many versions a tenant's history looks through.
const HISTORY_SCAN: i64 = 10_000;

struct Prepared {
    latest: Option<MappingVersion>,
    proposed: LoadedMappings,
    plan: MappingPlan,
}

fn conflict(base: Option<MappingVersion>, latest: Option<MappingVersion>) -> Error {
    Error::MappingConflict { base, latest }
}

/// Files that differ between two sets.
fn changed_files(a: &MappingFiles, b: &MappingFiles) -> BTreeSet<String> {
    a.keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// True when a tenant's computation can change: its file, or the catalog
/// it uses before or after, is among the changed files.
fn depends_on_change(
    tenant: &str,
    before: Option<&mapping::CompiledTenant>,
    after: Option<&mapping::CompiledTenant>,
    changed: &BTreeSet<String>,
) -> bool {
    changed.contains(&tenant_file(tenant))
        || [before, after]
            .into_iter()
            .flatten()
            .any(|c| changed.contains(&format!("catalogs/{}.yaml", c.catalog().id())))
}
