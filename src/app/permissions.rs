//! Effective permissions: the tenant's directory from the store, the
//! tenant's compiled mapping, and `mapping::compute_tenant` over them.
//!
//! The mapping set in force is swapped whole on reload: an invalid edit is
//! rejected with every error and the last good set stays (see
//! [`App::reload_mappings`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use mapping::{GroupFact, MappingError, MappingSet, PermissionId, TenantResult, UserFact};
use serde_json::Value;

use super::{App, Error, Result};
use crate::domain::Tenant;
use crate::store::Directory;

/// The mapping files in force and where they come from.
pub struct Mappings {
    /// The directory reloads read; `None` for an app built without one.
    dir: Option<PathBuf>,
    /// The last set that validated whole.
    current: RwLock<Arc<MappingSet>>,
    /// Refused assignments per (tenant, limit kind), from the last
    /// computation of each tenant: the `rolebridge_mapping_refusals` gauge.
    refusals: Mutex<BTreeMap<(String, String), usize>>,
}

impl Mappings {
    /// No mapping files: every tenant is unmapped.
    pub fn empty() -> Self {
        Mappings {
            dir: None,
            current: RwLock::new(Arc::new(MappingSet::default())),
            refusals: Mutex::new(BTreeMap::new()),
        }
    }

    /// Loads and validates `dir`; every error is returned, nothing is loaded
    /// on any error.
    pub fn load(dir: &Path) -> Result<Self, Vec<MappingError>> {
        let set = mapping::validate_dir(dir)?;
        Ok(Mappings {
            dir: Some(dir.to_path_buf()),
            current: RwLock::new(Arc::new(set)),
            refusals: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn current(&self) -> Arc<MappingSet> {
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

/// Who a permissions request is about: a SCIM id, or a userName.
#[derive(Debug, Clone)]
pub enum UserRef {
    Id(String),
    UserName(String),
}

impl App {
    /// Re-reads the mapping directory. On any error the set in force stays
    /// and every error is returned.
    pub fn reload_mappings(&self) -> Result<(), Vec<MappingError>> {
        let Some(dir) = &self.mappings.dir else {
            return Ok(());
        };
        let set = mapping::validate_dir(dir)?;
        match self.mappings.current.write() {
            Ok(mut g) => *g = Arc::new(set),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(set),
        }
        Ok(())
    }

    /// Computes the permissions of every user of `tenant` and returns the
    /// result with the SCIM id of `user`.
    pub async fn permissions(
        &self,
        tenant: &Tenant,
        user: &UserRef,
    ) -> Result<(TenantResult, String)> {
        let set = self.mappings.current();
        let name = mapping::TenantName::new(tenant.name.as_str());
        let compiled = set
            .tenant(&name)
            .ok_or_else(|| Error::TenantNotMapped(tenant.name.to_string()))?;
        let directory = self.store.directory(tenant.id).await?;
        let facts = user_facts(&directory);
        let result = mapping::compute_tenant(compiled, &facts);
        self.record_refusals(tenant, &result);
        let found = match user {
            UserRef::Id(id) => result.user(id),
            UserRef::UserName(n) => result.user_by_name(n),
        };
        let id = found.map(|u| u.user_id.clone()).ok_or_else(|| {
            Error::UnknownUser(match user {
                UserRef::Id(s) | UserRef::UserName(s) => s.clone(),
            })
        })?;
        Ok((result, id))
    }

    /// Checks that a permission id exists in the tenant's catalog.
    pub fn known_permission(
        &self,
        result: &TenantResult,
        permission: &str,
    ) -> Result<PermissionId> {
        let p = PermissionId::new(permission);
        if result.tenant().has_permission(&p) {
            Ok(p)
        } else {
            Err(Error::UnknownPermission(format!(
                "permission '{permission}' is not in catalog '{}'",
                result.tenant().catalog().id()
            )))
        }
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
