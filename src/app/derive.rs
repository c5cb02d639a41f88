//! Effective permissions kept up to date by the writes that change them.
//!
//! Every write transaction ends in [`App::commit`]: it advances each written
//! tenant's revision, finds exactly whose inputs changed (a user written;
//! the users under a group whose attributes or nesting changed; and, when
//! any of those contends for a `max_per_tenant` role, every contender of
//! the tenant), recomputes only them with `mapping::compute_tenant`, and
//! writes the rows that changed in the same transaction. So a committed
//! write and its effective permissions are one atomic step, in every
//! replica's view.
//!
//! Computing a subset with `compute_tenant` is exact, not an approximation:
//! a user who contends for no limited role depends on nobody else, and the
//! contenders are always computed together. `tests/permissions_incremental.rs`
//! holds the whole-tenant computation as the oracle for every step.
//!
//! Whole-tenant work happens only when the tenant's rows were computed
//! under another mapping (a mapping change) or a write touched most of the
//! tenant anyway (a first directory sync).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use mapping::CompiledTenant;

use super::changes;
use super::mappings::LoadedMappings;
use super::permissions::{user_facts, Summary};
use super::{App, Result};
use crate::cache::{CacheMetrics, Cached, RedisEntry};
use crate::domain::{ChangeCause, TenantId};
use crate::store::{Changes, EffectiveRow, WriteTx};

/// A write touching more users than this, and more than half the tenant,
/// recomputes the tenant in one pass (one directory read instead of
/// thousands of closure reads).
const WHOLE_TENANT_ABOVE: usize = 2_000;

/// What a commit produced.
#[derive(Debug, Clone, Default)]
pub struct Committed {
    /// Each written tenant's new revision.
    pub revisions: BTreeMap<TenantId, i64>,
    /// Users whose effective permissions were recomputed, and whose rows
    /// changed (roles, profiles, permissions, userName or refusals).
    pub recomputed: usize,
    pub changed: usize,
    /// Users whose set of effective permissions changed (a new user with
    /// any, a deleted user who had any): what sync reports.
    pub permissions_changed: usize,
}

impl Committed {
    /// The revision of the one tenant a request wrote.
    pub fn revision(&self, tenant: TenantId) -> Option<i64> {
        self.revisions.get(&tenant).copied()
    }
}

/// What one tenant's derivation wrote, for the caches after commit.
pub(super) struct Derived {
    tenant: TenantId,
    revision: i64,
    changed: Vec<(EffectiveRow, String)>,
    removed: Vec<String>,
    recomputed: usize,
    permissions_changed: usize,
    /// Change-feed events appended, and the cause they name.
    events: usize,
    cause: ChangeCause,
    /// Users whose event names another cause than `cause`: in a group
    /// commit, the write (the last in the batch) that affected them.
    causes: HashMap<String, ChangeCause>,
}

/// One write of a group commit: its cause and what it changed, per tenant.
pub(super) type UnitChanges = (ChangeCause, BTreeMap<TenantId, Changes>);

impl App {
    /// Derives every written tenant's effective permissions inside `tx`,
    /// commits, then updates the caches (after commit: a cache never holds
    /// what was not committed).
    pub async fn commit(&self, mut tx: WriteTx) -> Result<Committed> {
        // A replica behind the store's newest mapping version catches up
        // before it derives: rows are never written under an older version
        // than rows other replicas already wrote.
        let loaded = self.catch_up_mappings().await?;
        let derived = self.derive_written(&mut tx, &loaded).await?;
        let revisions = tx.commit().await?;
        Ok(self.committed(revisions, derived))
    }

    /// Derives every tenant written in `tx` since the last call, inside
    /// `tx`. What it returns goes to [`App::committed`] once `tx` commits.
    pub(super) async fn derive_written(
        &self,
        tx: &mut WriteTx,
        loaded: &LoadedMappings,
    ) -> Result<Vec<Derived>> {
        let mut derived = Vec::new();
        for (tenant, changes) in tx.take_changes() {
            derived.push(self.derive(tx, tenant, changes, loaded, &[]).await?);
        }
        Ok(derived)
    }

    /// Derives a group commit's writes once for all of them: one revision,
    /// one recomputation of every user any of them affected, one set of
    /// rows and events. Each event names the cause of the last write in
    /// `units` that affected its user.
    pub(super) async fn derive_batch(
        &self,
        tx: &mut WriteTx,
        loaded: &LoadedMappings,
        units: &[UnitChanges],
    ) -> Result<Vec<Derived>> {
        let mut merged: BTreeMap<TenantId, Changes> = BTreeMap::new();
        for (_, written) in units {
            for (tenant, c) in written {
                let m = merged.entry(*tenant).or_default();
                m.users.extend(c.users.iter().cloned());
                m.groups.extend(c.groups.iter().cloned());
            }
        }
        let mut derived = Vec::new();
        for (tenant, changes) in merged {
            let own: Vec<(&ChangeCause, &Changes)> = units
                .iter()
                .filter_map(|(cause, written)| written.get(&tenant).map(|c| (cause, c)))
                .collect();
            derived.push(self.derive(tx, tenant, changes, loaded, &own).await?);
        }
        Ok(derived)
    }

    /// Which write of a batch each affected user's event names: the last
    /// that changed the user or a group above them. Empty for one write
    /// (its cause is the transaction's).
    async fn attribute(
        tx: &mut WriteTx,
        tenant: TenantId,
        units: &[(&ChangeCause, &Changes)],
    ) -> Result<HashMap<String, ChangeCause>> {
        let mut by_user = HashMap::new();
        if units.len() < 2 {
            return Ok(by_user);
        }
        for (cause, c) in units {
            let mut users: Vec<String> = c.users.iter().cloned().collect();
            if !c.groups.is_empty() {
                let groups: Vec<String> = c.groups.iter().cloned().collect();
                users.extend(tx.users_under(tenant, &groups).await?);
            }
            for u in users {
                by_user.insert(u, (*cause).clone());
            }
        }
        Ok(by_user)
    }

    /// After commit: wakes the feed's readers and updates the caches with
    /// what the committed transaction derived.
    pub(super) fn committed(
        &self,
        revisions: BTreeMap<TenantId, i64>,
        derived: Vec<Derived>,
    ) -> Committed {
        let mut out = Committed {
            revisions,
            ..Committed::default()
        };
        if derived.iter().any(|d| d.events > 0) {
            // Long-polling readers and webhook deliverers of this replica;
            // other replicas find the events by polling.
            self.change_notify.notify_waiters();
        }
        let m = &self.cache.metrics;
        for d in derived {
            out.recomputed += d.recomputed;
            out.changed += d.changed.len();
            out.permissions_changed += d.permissions_changed;
            CacheMetrics::add_n(&m.recomputed_users, d.recomputed as u64);
            CacheMetrics::add_n(&m.changed_users, d.changed.len() as u64);
            self.publish(d);
        }
        out
    }

    /// Recomputes the users one tenant's changes affect and writes the rows
    /// that changed.
    async fn derive(
        &self,
        tx: &mut WriteTx,
        tenant: TenantId,
        changes: Changes,
        loaded: &LoadedMappings,
        units: &[(&ChangeCause, &Changes)],
    ) -> Result<Derived> {
        let t = tx.advance_tenant(tenant).await?;
        let mut out = Derived {
            tenant,
            revision: t.revision,
            changed: Vec::new(),
            removed: Vec::new(),
            recomputed: 0,
            permissions_changed: 0,
            events: 0,
            cause: tx.cause().cloned().unwrap_or(ChangeCause::Recompute),
            causes: HashMap::new(),
        };
        let Some(compiled) = loaded
            .set
            .tenant(&mapping::TenantName::new(t.name.as_str()))
        else {
            // Unmapped: nothing is served. Forget the stamp, so mapping the
            // tenant later recomputes it whole.
            if t.mapping.is_some() {
                tx.set_tenant_mapping(tenant, None).await?;
            }
            return Ok(out);
        };
        let fingerprint = loaded.tenant_fingerprint(t.name.as_str()).ok_or_else(|| {
            super::Error::Internal(format!("mapped tenant '{}' has no stamp", t.name))
        })?;
        if t.mapping.as_deref() != Some(fingerprint) {
            // The tenant's rows are under another mapping: what changes now
            // is the mapping's doing, whatever write got here first.
            let cause = match loaded.version {
                Some(v) => ChangeCause::Mapping { version: v.0 },
                None => ChangeCause::Recompute,
            };
            out.cause = cause;
            self.derive_whole(tx, tenant, compiled, fingerprint, &mut out)
                .await?;
            tx.set_tenant_mapping(tenant, Some(fingerprint)).await?;
            return Ok(out);
        }
        let mut affected: BTreeSet<String> = changes.users;
        if !changes.groups.is_empty() {
            let groups: Vec<String> = changes.groups.into_iter().collect();
            affected.extend(tx.users_under(tenant, &groups).await?);
        }
        if affected.is_empty() {
            return Ok(out);
        }
        out.causes = Self::attribute(tx, tenant, units).await?;
        if affected.len() > WHOLE_TENANT_ABOVE {
            let total = tx.user_count(tenant).await?;
            if affected.len() as i64 * 2 > total {
                return self
                    .derive_whole(tx, tenant, compiled, fingerprint, &mut out)
                    .await
                    .map(|()| out);
            }
        }
        let mut ids: Vec<String> = affected.into_iter().collect();
        let mut dir = tx.user_directory(tenant, &ids).await?;
        let mut old = tx.effective_rows(tenant, &ids).await?;
        let mut result = mapping::compute_tenant(compiled, &user_facts(&dir));
        if compiled.has_limited_roles()
            && (old.values().any(|r| r.contends) || result.users().any(|u| u.contends(compiled)))
        {
            // Slots of limited roles depend on every contender: compute
            // them all together with the affected users.
            let contenders = tx.contenders(tenant).await?;
            if contenders.iter().any(|c| ids.binary_search(c).is_err()) {
                ids.extend(contenders);
                ids.sort();
                ids.dedup();
                dir = tx.user_directory(tenant, &ids).await?;
                old = tx.effective_rows(tenant, &ids).await?;
                result = mapping::compute_tenant(compiled, &user_facts(&dir));
            }
        }
        // Ids recorded by member removals may name groups: count users.
        out.recomputed = dir.users.len();
        self.settle(tx, compiled, fingerprint, &result, &old, &mut out)
            .await?;
        Ok(out)
    }

    /// Recomputes the whole tenant (a mapping change, or a write that
    /// touched most of it) and rewrites only the rows that changed.
    async fn derive_whole(
        &self,
        tx: &mut WriteTx,
        tenant: TenantId,
        compiled: &CompiledTenant,
        fingerprint: &str,
        out: &mut Derived,
    ) -> Result<()> {
        CacheMetrics::add(&self.cache.metrics.full_recomputes);
        let dir = tx.directory(tenant).await?;
        let old = tx.all_effective_rows(tenant).await?;
        let result = mapping::compute_tenant(compiled, &user_facts(&dir));
        out.recomputed = dir.users.len();
        self.settle(tx, compiled, fingerprint, &result, &old, out)
            .await
    }

    /// Writes the rows of `result` that differ from `old`, removes the rows
    /// of users `result` no longer has (deleted), and logs new limit
    /// refusals.
    async fn settle(
        &self,
        tx: &mut WriteTx,
        compiled: &CompiledTenant,
        fingerprint: &str,
        result: &mapping::TenantResult,
        old: &HashMap<String, EffectiveRow>,
        out: &mut Derived,
    ) -> Result<()> {
        let mut rows = Vec::new();
        for eff in result.users() {
            let (row, name) = row_of(compiled, eff, fingerprint, out.revision)?;
            if old.get(&row.user_id).is_none_or(|o| !o.same_content(&row)) {
                rows.push((row, name));
            }
        }
        out.removed = old
            .keys()
            .filter(|id| result.user(id).is_none())
            .cloned()
            .collect();
        let plain: Vec<EffectiveRow> = rows.iter().map(|(r, _)| r.clone()).collect();
        tx.put_effective(out.tenant, &plain).await?;
        tx.delete_effective(out.tenant, &out.removed).await?;
        let summary = |json: &str| serde_json::from_str::<Summary>(json).ok();
        let mut events = Vec::new();
        for id in &out.removed {
            let before = old.get(id).and_then(|o| summary(&o.summary));
            if before.as_ref().is_some_and(|b| !b.permissions.is_empty()) {
                out.permissions_changed += 1;
            }
            events.extend(
                changes::new_change(id, before.as_ref(), None, out.revision)?
                    .map(|c| own_cause(c, &out.causes)),
            );
        }
        for (row, name) in &rows {
            let before = old.get(&row.user_id);
            let (was, now) = (
                before.and_then(|o| summary(&o.summary)),
                summary(&row.summary),
            );
            let perms = |s: &Option<Summary>| {
                s.as_ref()
                    .map(|s| s.permissions.clone())
                    .unwrap_or_default()
            };
            if perms(&was) != perms(&now) {
                out.permissions_changed += 1;
            }
            events.extend(
                changes::new_change(&row.user_id, was.as_ref(), now.as_ref(), out.revision)?
                    .map(|c| own_cause(c, &out.causes)),
            );
            if row.refused.is_some() && row.refused != before.and_then(|o| o.refused.clone()) {
                tracing::warn!(
                    tenant = %out.tenant,
                    user = %name,
                    refused = row.refused.as_deref().unwrap_or_default(),
                    "mapping limit refused an assignment"
                );
            }
        }
        // The outbox: each change's event in the change's own transaction.
        let at = self.clock().now().to_string();
        tx.append_changes(out.tenant, &at, &out.cause, &events)
            .await?;
        out.events = events.len();
        out.changed = rows;
        Ok(())
    }

    /// After commit: the in-process cache and Redis get the changed users'
    /// entries (Redis through its queue: a write never waits for Redis).
    fn publish(&self, d: Derived) {
        let mut redis_entries = Vec::with_capacity(d.changed.len() + d.removed.len());
        for (row, _) in &d.changed {
            if let Ok(summary) = serde_json::from_str::<Summary>(&row.summary) {
                let value = Arc::new(summary);
                let entry = Cached {
                    as_of: d.revision,
                    value,
                };
                self.cache.local.put(d.tenant, &row.user_id, entry.clone());
                self.cache.local.put(
                    d.tenant,
                    &super::permissions::name_key(&entry.value.user.user_name),
                    entry,
                );
            }
            redis_entries.push((
                row.user_id.clone(),
                RedisEntry {
                    as_of: d.revision,
                    json: Some(row.summary.clone()),
                },
            ));
        }
        for id in &d.removed {
            self.cache.local.remove(d.tenant, id);
            redis_entries.push((
                id.clone(),
                RedisEntry {
                    as_of: d.revision,
                    json: None,
                },
            ));
        }
        if let Some(redis) = &self.cache.redis {
            redis.enqueue(d.tenant, redis_entries);
        }
    }

    /// Recomputes every tenant whose rows were computed under another
    /// mapping than the one in force (start-up, reload). Each tenant
    /// switches in one transaction: until it commits, checks are answered
    /// from the rows of the previous mapping; after, from the new one.
    pub async fn reconcile_mappings(&self) -> Result<usize> {
        let loaded = self.mappings.current();
        let mut done = 0;
        for (tenant, stamp) in self.store.tenant_stamps().await? {
            // Unmapped tenants have nothing to recompute; a tenant whose
            // own file and catalog did not change keeps its rows.
            let Some(fingerprint) = loaded.tenant_fingerprint(tenant.name.as_str()) else {
                continue;
            };
            if stamp.as_deref() == Some(fingerprint) {
                continue;
            }
            let mut tx = self.store.begin_write().await?;
            tx.touch_tenant(tenant.id);
            self.commit(tx).await?;
            done += 1;
        }
        Ok(done)
    }
}

/// An event naming its user's own write, when a batch had several.
fn own_cause(
    mut c: crate::store::NewChange,
    causes: &HashMap<String, ChangeCause>,
) -> crate::store::NewChange {
    c.cause = causes.get(&c.user_id).cloned();
    c
}

/// The revision `tenant` reached in these derivations (the last one).
pub(super) fn revision_of(derived: &[Derived], tenant: TenantId) -> Option<i64> {
    derived
        .iter()
        .rev()
        .find(|d| d.tenant == tenant)
        .map(|d| d.revision)
}

/// The stored row of one user's result, and their userName for the log.
fn row_of(
    compiled: &CompiledTenant,
    eff: &mapping::EffectivePermissions,
    fingerprint: &str,
    revision: i64,
) -> Result<(EffectiveRow, String)> {
    let summary = Summary::of(eff);
    let refused = eff.limit_refusals();
    Ok((
        EffectiveRow {
            user_id: eff.user_id.clone(),
            revision,
            mapping: fingerprint.to_string(),
            contends: eff.contends(compiled),
            summary: serde_json::to_string(&summary).map_err(|e| {
                super::Error::Internal(format!("cannot encode a permission summary: {e}"))
            })?,
            refused: (!refused.is_empty()).then(|| refused.join(",")),
        },
        eff.user_name.clone(),
    ))
}
