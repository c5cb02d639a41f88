//! Effective permissions: the tenant's directory from the store, the
//! tenant's compiled mapping, and `mapping::compute_tenant` over them, behind
//! the caches.
//!
//! Correctness of the cache rests on one read per check: the tenant's epoch
//! from the database (bumped in the same transaction as every write). The
//! cache key holds that epoch and the mapping fingerprint, so an entry from
//! before a committed write or a mapping reload is never used after it, in
//! this process or any other sharing the database.
//!
//! The mapping set in force is swapped whole on reload: an invalid edit is
//! rejected with every error and the last good set stays (see
//! [`App::reload_mappings`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use mapping::{
    CompiledTenant, EffectivePermissions, GroupFact, MappingError, MappingSet, PermissionId,
    Target, TenantResult, UserFact,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{App, Error, Result};
use crate::cache::{user_key, CacheMetrics, Version};
use crate::domain::Tenant;
use crate::store::Directory;

/// A validated mapping set and the fingerprint of the files it came from.
pub struct LoadedMappings {
    pub set: MappingSet,
    /// SHA-256 (first 16 hex digits) over every file's path and content:
    /// part of every cache key, so replicas with different mappings never
    /// share entries.
    pub fingerprint: String,
}

/// The mapping files in force and where they come from.
pub struct Mappings {
    /// The directory reloads read; `None` for an app built without one.
    dir: Option<PathBuf>,
    /// The last set that validated whole.
    current: RwLock<Arc<LoadedMappings>>,
    /// Refused assignments per (tenant, limit kind), from the last
    /// computation of each tenant: the `rolebridge_mapping_refusals` gauge.
    refusals: Mutex<BTreeMap<(String, String), usize>>,
}

impl Mappings {
    /// No mapping files: every tenant is unmapped.
    pub fn empty() -> Self {
        Mappings {
            dir: None,
            current: RwLock::new(Arc::new(LoadedMappings {
                set: MappingSet::default(),
                fingerprint: "none".into(),
            })),
            refusals: Mutex::new(BTreeMap::new()),
        }
    }

    /// Loads and validates `dir`; every error is returned, nothing is loaded
    /// on any error.
    pub fn load(dir: &Path) -> Result<Self, Vec<MappingError>> {
        Ok(Mappings {
            dir: Some(dir.to_path_buf()),
            current: RwLock::new(Arc::new(read_dir(dir)?)),
            refusals: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn current(&self) -> Arc<LoadedMappings> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The refusal gauge, for `/metrics`.
    pub fn refusal_gauge(&self) -> BTreeMap<(String, String), usize> {
        self.refusals.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

/// Reads `catalogs/*.yaml` and `tenants/*.yaml` once, fingerprints exactly
/// the bytes read, and validates those same bytes (so the fingerprint can
/// never describe another version of a file than the one validated).
fn read_dir(dir: &Path) -> Result<LoadedMappings, Vec<MappingError>> {
    let mut files: Vec<(String, String)> = Vec::new();
    let mut errors = Vec::new();
    for sub in ["catalogs", "tenants"] {
        let folder = dir.join(sub);
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(text) => files.push((path.display().to_string(), text)),
                Err(e) => errors.push(path.display().to_string() + ": " + &e.to_string()),
            }
        }
    }
    if !errors.is_empty() {
        // Unreadable files: let the crate's own loader report them with its
        // error type and positions.
        return mapping::validate_dir(dir).map(|set| LoadedMappings {
            set,
            fingerprint: "unreadable".into(),
        });
    }
    files.sort();
    let mut hash = Sha256::new();
    for (name, text) in &files {
        hash.update(name.as_bytes());
        hash.update([0]);
        hash.update(text.as_bytes());
        hash.update([0]);
    }
    let fingerprint = hex::encode(hash.finalize())[..16].to_string();
    let set = mapping::validate_sources(&files)?;
    Ok(LoadedMappings { set, fingerprint })
}

/// Who a permissions request is about: a SCIM id, or a userName.
#[derive(Debug, Clone)]
pub enum UserRef {
    Id(String),
    UserName(String),
    /// A SCIM id, else a userName: what `check` and `explain` accept.
    /// Ids are UUIDs, so the two never clash in practice.
    IdOrUserName(String),
}

/// One user's effective permissions, as served and as cached in Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub user: SummaryUser,
    pub roles: Vec<String>,
    pub profiles: Vec<String>,
    /// Sorted permission ids.
    pub permissions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryUser {
    pub id: String,
    #[serde(rename = "userName")]
    pub user_name: String,
    pub active: bool,
}

impl Summary {
    fn of(eff: &EffectivePermissions) -> Summary {
        let mut roles: Vec<String> = Vec::new();
        let mut profiles: Vec<String> = Vec::new();
        for a in &eff.assignments {
            match &a.target {
                Target::Role(r) | Target::CustomRole(r) => roles.push(r.to_string()),
                Target::Profile(p) => {
                    profiles.push(p.to_string());
                    roles.push(a.base_role.to_string());
                }
            }
        }
        roles.sort();
        roles.dedup();
        profiles.sort();
        Summary {
            user: SummaryUser {
                id: eff.user_id.clone(),
                user_name: eff.user_name.clone(),
                active: eff.active,
            },
            roles,
            profiles,
            permissions: eff.permissions.iter().map(|p| p.to_string()).collect(),
        }
    }
}

/// The caches of an app.
#[derive(Default)]
pub struct PermissionCache {
    pub local: crate::cache::LocalCache,
    /// Skip the in-process layer on reads, so a benchmark can measure the
    /// Redis path alone. Never set by `serve`.
    pub skip_local: bool,
    pub redis: Option<crate::cache::RedisCache>,
    pub metrics: CacheMetrics,
}

impl App {
    /// Re-reads the mapping directory. On any error the set in force stays
    /// and every error is returned.
    pub fn reload_mappings(&self) -> Result<(), Vec<MappingError>> {
        let Some(dir) = &self.mappings.dir else {
            return Ok(());
        };
        let loaded = Arc::new(read_dir(dir)?);
        match self.mappings.current.write() {
            Ok(mut g) => *g = loaded,
            Err(poisoned) => *poisoned.into_inner() = loaded,
        }
        Ok(())
    }

    /// One user's permissions: from the in-process cache, else Redis, else
    /// computed (once per tenant and version, however many ask).
    pub async fn user_permissions(&self, tenant: &Tenant, user: &UserRef) -> Result<Summary> {
        let loaded = self.mappings.current();
        let compiled = mapped(&loaded, tenant)?;
        let (user_id, version) = self.resolve(tenant, user, &loaded).await?;
        let m = &self.cache.metrics;
        if !self.cache.skip_local {
            if let Some(result) = self.cache.local.get(tenant.id, &version) {
                CacheMetrics::add(&m.local_hits);
                return summary(&result, &user_id);
            }
        }
        let key = self
            .cache
            .redis
            .as_ref()
            .map(|r| user_key(&r.prefix, tenant.id, &version, &user_id));
        if let (Some(redis), Some(key)) = (&self.cache.redis, &key) {
            match redis.get(key).await {
                Ok(Some(json)) => {
                    if let Ok(s) = serde_json::from_str::<Summary>(&json) {
                        CacheMetrics::add(&m.redis_hits);
                        return Ok(s);
                    }
                }
                Ok(None) => {}
                Err(_) => CacheMetrics::add(&m.redis_errors),
            }
        }
        CacheMetrics::add(&m.misses);
        let result = self
            .compute(tenant, compiled, &loaded.fingerprint, &version)
            .await?;
        summary(&result, &user_id)
    }

    /// The whole tenant's result and the user's id, for explanations.
    pub async fn permissions(
        &self,
        tenant: &Tenant,
        user: &UserRef,
    ) -> Result<(Arc<TenantResult>, String)> {
        let loaded = self.mappings.current();
        let compiled = mapped(&loaded, tenant)?;
        let (user_id, version) = self.resolve(tenant, user, &loaded).await?;
        let result = match self.cache.local.get(tenant.id, &version) {
            Some(r) => {
                CacheMetrics::add(&self.cache.metrics.local_hits);
                r
            }
            None => {
                CacheMetrics::add(&self.cache.metrics.misses);
                self.compute(tenant, compiled, &loaded.fingerprint, &version)
                    .await?
            }
        };
        if result.user(&user_id).is_none() {
            return Err(Error::UnknownUser(user_id));
        }
        Ok((result, user_id))
    }

    /// Checks that a permission id exists in the tenant's catalog.
    pub fn known_permission(&self, tenant: &Tenant, permission: &str) -> Result<PermissionId> {
        let loaded = self.mappings.current();
        let compiled = mapped(&loaded, tenant)?;
        let p = PermissionId::new(permission);
        if compiled.has_permission(&p) {
            Ok(p)
        } else {
            Err(Error::UnknownPermission(format!(
                "permission '{permission}' is not in catalog '{}'",
                compiled.catalog().id()
            )))
        }
    }

    /// The user's id and the version a cached answer must have.
    async fn resolve(
        &self,
        tenant: &Tenant,
        user: &UserRef,
        loaded: &LoadedMappings,
    ) -> Result<(String, Version)> {
        let (key, id, user_name) = match user {
            UserRef::Id(k) => (k, Some(k.as_str()), None),
            UserRef::UserName(k) => (k, None, Some(k.as_str())),
            UserRef::IdOrUserName(k) => (k, Some(k.as_str()), Some(k.as_str())),
        };
        let at = self.store.user_at_epoch(tenant.id, id, user_name).await?;
        let (user_id, _) = at.user.ok_or_else(|| Error::UnknownUser(key.to_string()))?;
        Ok((
            user_id,
            Version {
                epoch: at.epoch,
                mapping: loaded.fingerprint.clone(),
            },
        ))
    }

    /// Computes the tenant once per version: concurrent misses wait on the
    /// tenant's flight lock and then find the first one's result.
    async fn compute(
        &self,
        tenant: &Tenant,
        compiled: &CompiledTenant,
        fingerprint: &str,
        wanted: &Version,
    ) -> Result<Arc<TenantResult>> {
        let flight = self.cache.local.flight(tenant.id);
        let _turn = flight.lock().await;
        if let Some(r) = self.cache.local.get(tenant.id, wanted) {
            return Ok(r);
        }
        // The directory snapshot carries its own epoch: the result is
        // stored under exactly the version it was computed from, which is
        // the wanted one or newer.
        let directory = self.store.directory(tenant.id).await?;
        let version = Version {
            epoch: directory.epoch,
            mapping: fingerprint.to_string(),
        };
        let result = Arc::new(mapping::compute_tenant(compiled, &user_facts(&directory)));
        CacheMetrics::add(&self.cache.metrics.computes);
        self.record_refusals(tenant, &result);
        if self
            .cache
            .local
            .put(tenant.id, version.clone(), result.clone())
        {
            CacheMetrics::add(&self.cache.metrics.invalidations);
        }
        if let Some(redis) = &self.cache.redis {
            let entries: Vec<(String, String)> = result
                .users()
                .filter_map(|eff| {
                    let json = serde_json::to_string(&Summary::of(eff)).ok()?;
                    Some((
                        user_key(&redis.prefix, tenant.id, &version, &eff.user_id),
                        json,
                    ))
                })
                .collect();
            if redis.put_many(&entries).await.is_err() {
                CacheMetrics::add(&self.cache.metrics.redis_errors);
            }
        }
        Ok(result)
    }

    /// Updates the refusal gauge and logs when a tenant's refusals change.
    fn record_refusals(&self, tenant: &Tenant, result: &TenantResult) {
        // Losing a plain conflict (one role per user) is ordinary rule
        // precedence; the gauge and the log are for limits.
        let limits: Vec<&mapping::Refusal> = result
            .refusals()
            .iter()
            .filter(|r| r.lost.reason.kind() != "single_role")
            .collect();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for r in &limits {
            *counts.entry(r.lost.reason.kind().to_string()).or_default() += 1;
        }
        let Ok(mut gauge) = self.mappings.refusals.lock() else {
            return;
        };
        let key = tenant.name.to_string();
        let before: BTreeMap<String, usize> = gauge
            .iter()
            .filter(|((t, _), _)| *t == key)
            .map(|((_, k), v)| (k.clone(), *v))
            .collect();
        if before != counts {
            for r in &limits {
                tracing::warn!(
                    tenant = %tenant.name,
                    user = %r.user_name,
                    target = %r.lost.target,
                    reason = r.lost.reason.kind(),
                    "mapping limit refused an assignment"
                );
            }
            gauge.retain(|(t, _), _| *t != key);
            for (kind, n) in counts {
                gauge.insert((key.clone(), kind), n);
            }
        }
    }
}

/// The tenant's compiled mapping, or why there is none.
fn mapped<'a>(loaded: &'a LoadedMappings, tenant: &Tenant) -> Result<&'a CompiledTenant> {
    loaded
        .set
        .tenant(&mapping::TenantName::new(tenant.name.as_str()))
        .ok_or_else(|| Error::TenantNotMapped(tenant.name.to_string()))
}

fn summary(result: &TenantResult, user_id: &str) -> Result<Summary> {
    result
        .user(user_id)
        .map(Summary::of)
        .ok_or_else(|| Error::UnknownUser(user_id.to_string()))
}

/// Where directory sync records a group's DN and source in its document;
/// groups pushed over SCIM have neither and count as source `scim`.
pub const SYNC_URN: &str = "urn:rolebridge:params:sync:1.0:Group";

/// Users with the closure of their groups: direct groups, then the groups
/// containing those, with the chain of names that led there. Cycles in
/// group nesting are cut at the first repeat.
pub fn user_facts(dir: &Directory) -> Vec<UserFact> {
    let groups: HashMap<&str, &crate::store::DirectoryGroup> =
        dir.groups.iter().map(|g| (g.id.as_str(), g)).collect();
    let mut parents: HashMap<&str, Vec<&str>> = HashMap::new();
    for e in &dir.edges {
        parents
            .entry(e.member_id.as_str())
            .or_default()
            .push(e.group_id.as_str());
    }
    dir.users
        .iter()
        .map(|u| {
            let mut facts = Vec::new();
            let mut seen: HashSet<&str> = HashSet::new();
            let mut queue: VecDeque<(&str, Vec<String>)> = parents
                .get(u.id.as_str())
                .into_iter()
                .flatten()
                .map(|g| (*g, Vec::new()))
                .collect();
            while let Some((gid, via)) = queue.pop_front() {
                if !seen.insert(gid) {
                    continue;
                }
                let Some(g) = groups.get(gid) else { continue };
                for parent in parents.get(gid).into_iter().flatten() {
                    let mut next = via.clone();
                    next.push(g.display_name.clone());
                    queue.push_back((parent, next));
                }
                let sync = |key: &str| {
                    g.doc
                        .get(SYNC_URN)
                        .and_then(|s| s.get(key))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                };
                facts.push(GroupFact {
                    id: g.id.clone(),
                    display_name: g.display_name.clone(),
                    external_id: g.external_id.clone(),
                    dn: sync("dn"),
                    source: Some(sync("source").unwrap_or_else(|| "scim".to_string())),
                    via,
                });
            }
            UserFact {
                id: u.id.clone(),
                user_name: u.user_name.clone(),
                active: u.active,
                created: u.created.clone(),
                groups: facts,
            }
        })
        .collect()
}
