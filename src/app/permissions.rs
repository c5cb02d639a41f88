//! Effective permissions as served: the mapping set in force, and the read
//! path of a check.
//!
//! Each user's effective permissions are a stored row, kept current by the
//! writes that change them (`derive.rs`). A default check reads that row in
//! one query together with the tenant's revision; it never reads a cache, so
//! an acknowledged revocation is never served afterwards, by any replica.
//! Checks that allow it (`at_least_as_fresh`, `minimize_latency`) may be
//! answered from the in-process cache or Redis, by the revision an entry is
//! current at.
//!
//! The mapping set in force lives in `mappings/`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use mapping::{
    CompiledTenant, EffectivePermissions, GroupFact, PermissionId, Target, TenantResult, UserFact,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::mappings::LoadedMappings;
use super::{App, Error, Result};
use crate::cache::CacheMetrics;
use crate::domain::Tenant;
use crate::store::Directory;

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
    pub(super) fn of(eff: &EffectivePermissions) -> Summary {
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

/// How fresh a check's answer must be (the SpiceDB ZedToken / OpenFGA
/// consistency model, per tenant revision).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// The default: the stored row as of now. No stale allow is ever served
    /// after an acknowledged write, by any replica.
    Full,
    /// Any answer known current at this revision or later (a revision a
    /// SCIM write returned in `X-Rolebridge-Revision`): may come from a
    /// cache.
    AtLeastAsFresh(i64),
    /// Whatever a cache holds, else the store: may be stale.
    MinimizeLatency,
}

/// Where an answer came from, for responses and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnsweredFrom {
    Store,
    LocalCache,
    Redis,
    /// The user had no stored row yet (computed on the spot).
    Computed,
}

/// A check's answer and the tenant revision it is current at.
#[derive(Debug, Clone)]
pub struct Checked {
    pub summary: Arc<Summary>,
    pub revision: i64,
    pub from: AnsweredFrom,
}

/// The caches of an app.
#[derive(Default)]
pub struct PermissionCache {
    pub local: crate::cache::LocalCache<Summary>,
    pub redis: Option<crate::cache::RedisCache>,
    pub metrics: CacheMetrics,
}

/// The in-process cache key of a userName.
pub(super) fn name_key(user_name: &str) -> String {
    format!("name:{}", scim::schema::fold_case(user_name))
}

impl App {
    /// One user's permissions at the consistency asked for.
    pub async fn user_permissions(
        &self,
        tenant: &Tenant,
        user: &UserRef,
        consistency: Consistency,
    ) -> Result<Checked> {
        // An unmapped tenant is refused before any read.
        mapped(&self.mappings.current(), tenant)?;
        let m = &self.cache.metrics;
        let floor = match consistency {
            Consistency::Full => None,
            Consistency::AtLeastAsFresh(rev) => Some(rev),
            Consistency::MinimizeLatency => Some(i64::MIN),
        };
        if let Some(floor) = floor {
            let keys: Vec<String> = match user {
                UserRef::Id(k) => vec![k.clone()],
                UserRef::UserName(k) => vec![name_key(k)],
                UserRef::IdOrUserName(k) => vec![k.clone(), name_key(k)],
            };
            for key in &keys {
                if let Some(hit) = self.cache.local.get(tenant.id, key) {
                    if hit.as_of >= floor {
                        CacheMetrics::add(&m.local_hits);
                        return Ok(Checked {
                            summary: hit.value,
                            revision: hit.as_of,
                            from: AnsweredFrom::LocalCache,
                        });
                    }
                }
            }
            if let (Some(redis), UserRef::Id(id) | UserRef::IdOrUserName(id)) =
                (&self.cache.redis, user)
            {
                match redis.get(tenant.id, id).await {
                    Ok(Some(entry)) if entry.as_of >= floor => {
                        if let Some(s) = entry
                            .json
                            .as_deref()
                            .and_then(|j| serde_json::from_str::<Summary>(j).ok())
                        {
                            CacheMetrics::add(&m.redis_hits);
                            let hit = crate::cache::Cached {
                                as_of: entry.as_of,
                                value: Arc::new(s),
                            };
                            self.cache.local.put(tenant.id, id, hit.clone());
                            return Ok(Checked {
                                summary: hit.value,
                                revision: hit.as_of,
                                from: AnsweredFrom::Redis,
                            });
                        }
                    }
                    Ok(_) | Err(crate::cache::RedisError::Open) => {}
                    Err(_) => CacheMetrics::add(&m.redis_errors),
                }
            }
        }
        let (id, user_name) = lookup(user);
        let at = self.store.check_row(tenant.id, id, user_name).await?;
        if let Consistency::AtLeastAsFresh(rev) = consistency {
            if rev > at.revision {
                return Err(Error::RevisionAhead {
                    wanted: rev,
                    current: at.revision,
                });
            }
        }
        let (user_id, name) = at
            .user
            .ok_or_else(|| Error::UnknownUser(key_of(user).to_string()))?;
        // A stored row is served whatever mapping it was computed under:
        // rows switch a tenant whole in one transaction, so the answer is
        // the mapping of the revision it reports, on every replica, also
        // while replicas switch versions one after the other.
        let (summary, from) = match at.row {
            Some(row) => {
                CacheMetrics::add(&m.store_reads);
                let s: Summary = serde_json::from_str(&row.summary).map_err(|e| {
                    Error::Internal(format!(
                        "stored permissions of user {user_id} are corrupt: {e}"
                    ))
                })?;
                (Arc::new(s), AnsweredFrom::Store)
            }
            None => {
                CacheMetrics::add(&m.computes);
                // Computing here must not use a version older than one
                // another replica already stored rows under.
                let loaded = self.catch_up_mappings().await?;
                let compiled = mapped(&loaded, tenant)?;
                let result = self.compute_for(tenant, compiled, &user_id).await?;
                (
                    Arc::new(summary(&result, &user_id)?),
                    AnsweredFrom::Computed,
                )
            }
        };
        if floor.is_some() && from == AnsweredFrom::Store {
            // Relaxed checks fill the caches for the next relaxed check.
            let hit = crate::cache::Cached {
                as_of: at.revision,
                value: summary.clone(),
            };
            self.cache.local.put(tenant.id, &user_id, hit.clone());
            self.cache.local.put(tenant.id, &name_key(&name), hit);
        }
        Ok(Checked {
            summary,
            revision: at.revision,
            from,
        })
    }

    /// The user's result with everything `explain` needs: computed for the
    /// user (and, when they contend for a limited role, every contender),
    /// which equals the whole-tenant computation for them.
    pub async fn permissions(
        &self,
        tenant: &Tenant,
        user: &UserRef,
    ) -> Result<(Arc<TenantResult>, String)> {
        let loaded = self.mappings.current();
        let compiled = mapped(&loaded, tenant)?;
        let (id, user_name) = lookup(user);
        let at = self.store.check_row(tenant.id, id, user_name).await?;
        let (user_id, _) = at
            .user
            .ok_or_else(|| Error::UnknownUser(key_of(user).to_string()))?;
        let result = self.compute_for(tenant, compiled, &user_id).await?;
        if result.user(&user_id).is_none() {
            return Err(Error::UnknownUser(user_id));
        }
        Ok((Arc::new(result), user_id))
    }

    /// Computes one user exactly: their closure, plus every stored
    /// contender when the catalog limits a role. A tenant never computed
    /// under the mapping in force has no trustworthy contender list, so
    /// with limited roles it is computed whole (until its first write or
    /// reconcile stores its rows).
    async fn compute_for(
        &self,
        tenant: &Tenant,
        compiled: &CompiledTenant,
        user_id: &str,
    ) -> Result<TenantResult> {
        let limited = compiled.has_limited_roles();
        let dir = if limited && !self.tenant_is_current(tenant).await? {
            self.store.directory(tenant.id).await?
        } else {
            self.store
                .user_directory(tenant.id, &[user_id.to_string()], limited)
                .await?
        };
        Ok(mapping::compute_tenant(compiled, &user_facts(&dir)))
    }

    async fn tenant_is_current(&self, tenant: &Tenant) -> Result<bool> {
        let loaded = self.mappings.current();
        let stamp = self.store.tenant_stamp(tenant.id).await?;
        Ok(stamp.is_some() && stamp.as_deref() == loaded.tenant_fingerprint(tenant.name.as_str()))
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

    /// The refusal gauge, from the stored rows.
    pub async fn refusal_gauge(&self) -> Result<BTreeMap<(String, String), usize>> {
        Ok(self.store.refusal_counts().await?)
    }
}

fn lookup(user: &UserRef) -> (Option<&str>, Option<&str>) {
    match user {
        UserRef::Id(k) => (Some(k.as_str()), None),
        UserRef::UserName(k) => (None, Some(k.as_str())),
        UserRef::IdOrUserName(k) => (Some(k.as_str()), Some(k.as_str())),
    }
}

fn key_of(user: &UserRef) -> &str {
    match user {
        UserRef::Id(k) | UserRef::UserName(k) | UserRef::IdOrUserName(k) => k,
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
