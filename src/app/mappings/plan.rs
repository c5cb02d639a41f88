//! What a mapping change does to whom: per user, the roles, profiles and
//! permissions gained and lost and the assignments newly refused by a
//! limit, computed against the live directory under both sets (`terraform
//! plan` for access).
//!
//! A mapping change is a whole-tenant event (rules, limits and `requires`
//! can move anyone), so each affected tenant is computed whole, twice, with
//! `compute_tenant`: the same function the service serves from, so the plan
//! cannot disagree with what the apply will serve.

use std::collections::{BTreeMap, BTreeSet};

use mapping::{CompiledTenant, EffectivePermissions, TenantResult, UserFact};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::super::permissions::Summary;
use crate::domain::MappingVersion;

/// One user whose access the change moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserChange {
    pub user_id: String,
    #[serde(rename = "userName")]
    pub user_name: String,
    pub roles_gained: Vec<String>,
    pub roles_lost: Vec<String>,
    pub profiles_gained: Vec<String>,
    pub profiles_lost: Vec<String>,
    pub permissions_gained: Vec<String>,
    pub permissions_lost: Vec<String>,
    /// Assignments a limit refuses under the new set and did not before,
    /// as `target (limit)`.
    pub newly_refused: Vec<String>,
}

impl UserChange {
    /// True when the user ends up with less than before: the guard's
    /// measure of harm.
    pub fn loses_access(&self) -> bool {
        !self.permissions_lost.is_empty()
            || !self.roles_lost.is_empty()
            || !self.profiles_lost.is_empty()
    }
}

/// Totals of one tenant, or of a whole plan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Users the computation covered.
    pub users: usize,
    pub users_changed: usize,
    pub users_gaining: usize,
    /// Users losing any role, profile or permission.
    pub users_losing: usize,
    pub permissions_gained: usize,
    pub permissions_lost: usize,
    pub newly_refused: usize,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.users += o.users;
        self.users_changed += o.users_changed;
        self.users_gaining += o.users_gaining;
        self.users_losing += o.users_losing;
        self.permissions_gained += o.permissions_gained;
        self.permissions_lost += o.permissions_lost;
        self.newly_refused += o.newly_refused;
    }
}

/// A protected role and how many users hold it before and after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProtectedRole {
    pub role: String,
    pub holders_before: usize,
    pub holders_after: usize,
}

/// What the change does to one tenant.
#[derive(Debug, Clone, Serialize)]
pub struct TenantPlan {
    pub tenant: String,
    /// The catalog the tenant is mapped to after the change (`None`:
    /// unmapped, so nothing is served).
    pub catalog_before: Option<String>,
    pub catalog_after: Option<String>,
    pub totals: Totals,
    /// Users whose access changes, by userName.
    pub users: Vec<UserChange>,
    /// The catalog's protected roles with their holder counts.
    pub protected: Vec<ProtectedRole>,
}

/// The whole plan.
#[derive(Debug, Clone, Serialize)]
pub struct MappingPlan {
    /// The version the change edits (`None` before the first version).
    pub base: Option<MappingVersion>,
    /// Fingerprint of the proposed set.
    pub fingerprint: String,
    /// Files added, changed or removed, by name.
    pub files_changed: Vec<String>,
    pub tenants: Vec<TenantPlan>,
    pub totals: Totals,
    /// Why the guard wants a confirmation; empty when it does not.
    pub guard: Vec<String>,
    /// SHA-256 over the base, the proposed files and every per-user change:
    /// an apply confirmed with it applies exactly what was reviewed, and a
    /// directory change in between makes it stale.
    pub hash: String,
}

/// Computes one tenant under the old and the new mapping and diffs users.
pub fn plan_tenant(
    tenant: &str,
    before: Option<&CompiledTenant>,
    after: Option<&CompiledTenant>,
    facts: &[UserFact],
) -> TenantPlan {
    // The two sides are independent: compute them on two threads.
    let (old, new) = std::thread::scope(|s| {
        let old = s.spawn(|| before.map(|c| mapping::compute_tenant(c, facts)));
        let new = after.map(|c| mapping::compute_tenant(c, facts));
        (old.join(), new)
    });
    let old = match old {
        Ok(old) => old,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    let mut users = Vec::new();
    let mut totals = Totals {
        users: facts.len(),
        ..Totals::default()
    };
    for f in facts {
        let was = old.as_ref().and_then(|r| r.user(&f.id));
        let is = new.as_ref().and_then(|r| r.user(&f.id));
        let change = diff_user(&f.id, &f.user_name, was, is);
        if change == UserChange::unchanged(&f.id, &f.user_name) {
            continue;
        }
        totals.users_changed += 1;
        if !change.permissions_gained.is_empty()
            || !change.roles_gained.is_empty()
            || !change.profiles_gained.is_empty()
        {
            totals.users_gaining += 1;
        }
        if change.loses_access() {
            totals.users_losing += 1;
        }
        totals.permissions_gained += change.permissions_gained.len();
        totals.permissions_lost += change.permissions_lost.len();
        totals.newly_refused += change.newly_refused.len();
        users.push(change);
    }
    users.sort_by(|a, b| (&a.user_name, &a.user_id).cmp(&(&b.user_name, &b.user_id)));
    let protected = after
        .or(before)
        .map(|c| protected_roles(c, old.as_ref(), new.as_ref()))
        .unwrap_or_default();
    TenantPlan {
        tenant: tenant.to_string(),
        catalog_before: before.map(|c| c.catalog().id().to_string()),
        catalog_after: after.map(|c| c.catalog().id().to_string()),
        totals,
        users,
        protected,
    }
}

impl UserChange {
    fn unchanged(id: &str, user_name: &str) -> UserChange {
        UserChange {
            user_id: id.to_string(),
            user_name: user_name.to_string(),
            roles_gained: vec![],
            roles_lost: vec![],
            profiles_gained: vec![],
            profiles_lost: vec![],
            permissions_gained: vec![],
            permissions_lost: vec![],
            newly_refused: vec![],
        }
    }
}

fn diff_user(
    id: &str,
    user_name: &str,
    was: Option<&EffectivePermissions>,
    is: Option<&EffectivePermissions>,
) -> UserChange {
    let before = was.map(Summary::of);
    let after = is.map(Summary::of);
    let list = |s: &Option<Summary>, f: fn(&Summary) -> &Vec<String>| -> BTreeSet<String> {
        s.as_ref()
            .map(|s| f(s).iter().cloned().collect())
            .unwrap_or_default()
    };
    let split = |f: fn(&Summary) -> &Vec<String>| {
        let (b, a) = (list(&before, f), list(&after, f));
        (
            a.difference(&b).cloned().collect::<Vec<_>>(),
            b.difference(&a).cloned().collect::<Vec<_>>(),
        )
    };
    let (roles_gained, roles_lost) = split(|s| &s.roles);
    let (profiles_gained, profiles_lost) = split(|s| &s.profiles);
    let (permissions_gained, permissions_lost) = split(|s| &s.permissions);
    let refused = |e: Option<&EffectivePermissions>| -> BTreeSet<String> {
        e.map(|e| {
            e.lost
                .iter()
                .filter(|l| l.reason.kind() != "single_role")
                .map(|l| format!("{} ({})", l.target, l.reason.kind()))
                .collect()
        })
        .unwrap_or_default()
    };
    let newly_refused = refused(is).difference(&refused(was)).cloned().collect();
    UserChange {
        user_id: id.to_string(),
        user_name: user_name.to_string(),
        roles_gained,
        roles_lost,
        profiles_gained,
        profiles_lost,
        permissions_gained,
        permissions_lost,
        newly_refused,
    }
}

/// Holders of each protected role of the tenant's catalog, before and after.
fn protected_roles(
    compiled: &CompiledTenant,
    old: Option<&TenantResult>,
    new: Option<&TenantResult>,
) -> Vec<ProtectedRole> {
    // A holder has the role as the base of an assignment: the bare role, a
    // profile of it or a custom role derived from it (the same rule as
    // `TenantResult::unheld_protected_roles`). Inactive users hold nothing.
    let holders = |r: Option<&TenantResult>, role: &mapping::RoleId| -> usize {
        r.map(|r| {
            r.users()
                .filter(|u| u.active && u.assignments.iter().any(|a| a.base_role == *role))
                .count()
        })
        .unwrap_or(0)
    };
    compiled
        .catalog()
        .roles()
        .values()
        .filter(|r| r.protected)
        .map(|r| ProtectedRole {
            role: r.id.to_string(),
            holders_before: holders(old, &r.id),
            holders_after: holders(new, &r.id),
        })
        .collect()
}

/// The plan's hash (see [`MappingPlan::hash`]).
pub fn plan_hash(
    base: Option<MappingVersion>,
    files: &BTreeMap<String, String>,
    tenants: &[TenantPlan],
) -> String {
    let mut h = Sha256::new();
    h.update(format!("base={:?}\n", base.map(|v| v.0)).as_bytes());
    for (name, text) in files {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(Sha256::digest(text.as_bytes()));
    }
    for t in tenants {
        // Serialising our own plain structs cannot fail.
        let json = serde_json::to_vec(t).unwrap_or_default();
        h.update(&json);
    }
    hex::encode(h.finalize())
}

/// Adds up tenants' totals.
pub fn total(tenants: &[TenantPlan]) -> Totals {
    let mut t = Totals::default();
    for p in tenants {
        t.add(&p.totals);
    }
    t
}
