//! Effective permissions of every user of one tenant: rule matching, conflicts, limits, `implies`,
//! `requires`.
//! Owns the input facts (`UserFact`, `GroupFact`) and the result types; imports `tenant`, `compile`,
//! `catalog`. Pure: the service computes group closures and passes them in. Invariant: nothing a rule
//! offers is dropped silently; every candidate ends up either in `assignments` or in `lost` with a reason.

use crate::catalog::Role;
use crate::compile::PermState;
use crate::error::Location;
use crate::ids::{PermissionId, RoleId, RuleId};
use crate::tenant::{CompiledTenant, Target};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

/// A group the user belongs to, directly or through nesting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupFact {
    pub id: String,
    pub display_name: String,
    pub external_id: Option<String>,
    /// LDAP distinguished name, for directory-synced groups.
    pub dn: Option<String>,
    /// Label of the provisioning source (a SCIM client such as `okta`, or `ldap`).
    pub source: Option<String>,
    /// Display names from the user's direct group down to this group's parent; empty for a direct
    /// membership. Explain prints `via[0] > via[1] > ... > display_name`.
    #[serde(default)]
    pub via: Vec<String>,
}

/// One user with the closure of their groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserFact {
    /// SCIM id.
    pub id: String,
    pub user_name: String,
    /// SCIM `active`; an inactive user has no permissions and holds no limited slot.
    pub active: bool,
    /// SCIM `meta.created`, RFC 3339 in UTC with one precision, compared as text: the earliest-created
    /// user keeps a `max_per_tenant` slot on a tie, so a newly provisioned user never displaces a holder.
    pub created: String,
    pub groups: Vec<GroupFact>,
}

/// Why a user was offered a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    Rule {
        rule: RuleRef,
        group: MatchedGroup,
    },
    /// The tenant's `default_role`.
    DefaultRole {
        at: Location,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    pub index: usize,
    pub id: Option<RuleId>,
    pub at: Location,
    pub priority: i64,
}

impl RuleRef {
    pub fn label(&self) -> String {
        match &self.id {
            Some(id) => format!("'{id}'"),
            None => format!("#{}", self.index),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MatchedGroup {
    pub id: String,
    pub display_name: String,
    pub via: Vec<String>,
}

/// A target the user holds after conflicts and limits.
#[derive(Debug, Clone, Serialize)]
pub struct Assignment {
    pub target: Target,
    pub base_role: RoleId,
    /// The winning (first-ordered) source.
    pub source: Source,
    /// Other rules that offered the same target; they change nothing.
    pub also_from: Vec<Source>,
}

/// A target a rule offered that the user does not hold.
#[derive(Debug, Clone, Serialize)]
pub struct Lost {
    pub target: Target,
    pub base_role: RoleId,
    pub source: Source,
    pub reason: LossReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LossReason {
    /// `combinable_roles: false`: the user keeps only `winner`.
    SingleRole { winner: Target },
    /// `max_profiles_per_role_per_user`.
    ProfilesPerRole {
        role: RoleId,
        max: u32,
        kept: Vec<Target>,
    },
    /// `max_profiles_per_user`.
    ProfilesPerUser { max: u32, kept: Vec<Target> },
    /// `max_per_tenant`: the slots are held by `holders` (user ids).
    MaxPerTenant {
        role: RoleId,
        max: u32,
        holders: Vec<String>,
    },
}

impl LossReason {
    /// A stable label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            LossReason::SingleRole { .. } => "single_role",
            LossReason::ProfilesPerRole { .. } => "max_profiles_per_role_per_user",
            LossReason::ProfilesPerUser { .. } => "max_profiles_per_user",
            LossReason::MaxPerTenant { .. } => "max_per_tenant",
        }
    }
}

/// One way a permission is granted.
#[derive(Debug, Clone, Serialize)]
pub struct Grant {
    pub target: Target,
    /// `Core` or `On(reason)` when the target lists it on; `Implied` when a permission effective
    /// through the same assignment implies it.
    pub state: PermState,
    pub source: Source,
}

/// Role-scoped `requires` of one role that are not effective.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoleRequires {
    pub role: RoleId,
    pub missing: Vec<PermissionId>,
}

/// A permission some assignment granted (directly or by `implies`) but that was dropped: a
/// `requires` is missing, or every permission that implied it was dropped.
#[derive(Debug, Clone, Serialize)]
pub struct Dropped {
    pub permission: PermissionId,
    /// Its catalog-wide `requires` that are not effective.
    pub missing: Vec<PermissionId>,
    /// Role-scoped `requires` that are not effective, for each role whose grant they dropped.
    pub missing_in_role: Vec<RoleRequires>,
    /// Dropped permissions that had implied it, for grants that were implications only.
    pub implied_by: Vec<PermissionId>,
    /// Every grant it had before `requires` were checked.
    pub grants: Vec<Grant>,
}

/// The result for one user.
#[derive(Debug, Clone, Serialize)]
pub struct EffectivePermissions {
    pub user_id: String,
    pub user_name: String,
    pub active: bool,
    pub permissions: BTreeSet<PermissionId>,
    pub assignments: Vec<Assignment>,
    pub lost: Vec<Lost>,
    /// For each effective permission, every grant of it.
    pub grants: BTreeMap<PermissionId, Vec<Grant>>,
    pub dropped: Vec<Dropped>,
}

/// An assignment a rule offered and conflicts or limits refused: for the service's log and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    pub user_id: String,
    pub user_name: String,
    pub lost: Lost,
}

/// Everything computed for one tenant. Keeps the tenant (one `Arc`) so `explain` needs nothing else.
#[derive(Debug, Clone)]
pub struct TenantResult {
    pub(crate) tenant: CompiledTenant,
    pub(crate) users: BTreeMap<String, EffectivePermissions>,
    pub(crate) refusals: Vec<Refusal>,
}

impl TenantResult {
    pub fn tenant(&self) -> &CompiledTenant {
        &self.tenant
    }
    /// By SCIM id.
    pub fn user(&self, id: &str) -> Option<&EffectivePermissions> {
        self.users.get(id)
    }
    pub fn user_by_name(&self, user_name: &str) -> Option<&EffectivePermissions> {
        self.users
            .values()
            .find(|u| u.user_name.eq_ignore_ascii_case(user_name))
    }
    pub fn users(&self) -> impl Iterator<Item = &EffectivePermissions> {
        self.users.values()
    }
    /// Every refused or losing assignment of every user, in user id order.
    pub fn refusals(&self) -> &[Refusal] {
        &self.refusals
    }

    /// The catalog's `protected` roles that no user holds in this result, in id order. A user holds a
    /// role when an assignment has it as base role: the bare role, a profile of it or a custom role
    /// derived from it. Inactive users hold nothing. The service refuses a mapping change whose
    /// result would make this list grow, since the platform cannot run without such a holder.
    pub fn unheld_protected_roles(&self) -> Vec<RoleId> {
        self.tenant
            .inner
            .catalog
            .roles
            .values()
            .filter(|r| r.protected)
            .filter(|r| {
                !self
                    .users
                    .values()
                    .any(|u| u.assignments.iter().any(|a| a.base_role == r.id))
            })
            .map(|r| r.id.clone())
            .collect()
    }
}

impl EffectivePermissions {
    /// True when a rule or the default role offers this user a role with
    /// `max_per_tenant` (held or refused): only such users' results depend
    /// on other users', so only they must be computed together.
    pub fn contends(&self, tenant: &CompiledTenant) -> bool {
        let limited = |r: &RoleId| {
            tenant
                .inner
                .catalog
                .roles
                .get(r)
                .is_some_and(|role| role.max_per_tenant.is_some())
        };
        self.assignments.iter().any(|a| limited(&a.base_role))
            || self.lost.iter().any(|l| limited(&l.base_role))
    }

    /// The kinds of the limits that refused an assignment (one entry per
    /// refusal, sorted); losing a plain conflict is rule precedence, not a
    /// limit, and is left out.
    pub fn limit_refusals(&self) -> Vec<&'static str> {
        let mut kinds: Vec<&'static str> = self
            .lost
            .iter()
            .map(|l| l.reason.kind())
            .filter(|k| *k != "single_role")
            .collect();
        kinds.sort_unstable();
        kinds
    }
}

impl CompiledTenant {
    /// True when the catalog has a role with `max_per_tenant`.
    pub fn has_limited_roles(&self) -> bool {
        self.inner
            .catalog
            .roles
            .values()
            .any(|r| r.max_per_tenant.is_some())
    }
}

/// Sort key of a candidate: rules before the default role, then priority (higher first), rule order,
/// position in the rule's `assign`.
type Key = (bool, Reverse<i64>, usize, usize);

#[derive(Debug, Clone)]
struct Candidate {
    target: Target,
    base_role: RoleId,
    source: Source,
    also_from: Vec<Source>,
    key: Key,
}

fn candidates(tenant: &CompiledTenant, user: &UserFact) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    let base_of = |t: &Target| tenant.inner.targets.get(t).map(|c| c.base_role.clone());
    for rule in tenant.rules() {
        // Prefer a direct membership, then the shortest chain, then input order.
        let Some(group) = user
            .groups
            .iter()
            .filter(|g| rule.matcher.matches(g))
            .min_by_key(|g| g.via.len())
        else {
            continue;
        };
        let source = Source::Rule {
            rule: RuleRef {
                index: rule.index,
                id: rule.id.clone(),
                at: rule.at.clone(),
                priority: rule.priority,
            },
            group: MatchedGroup {
                id: group.id.clone(),
                display_name: group.display_name.clone(),
                via: group.via.clone(),
            },
        };
        for (pos, target) in rule.assign.iter().enumerate() {
            let Some(base_role) = base_of(target) else {
                continue;
            };
            let key = (false, Reverse(rule.priority), rule.index, pos);
            out.push(Candidate {
                target: target.clone(),
                base_role,
                source: source.clone(),
                also_from: Vec::new(),
                key,
            });
        }
    }
    if let Some((target, at)) = &tenant.inner.default_role {
        if let Some(base_role) = base_of(target) {
            let key = (true, Reverse(0), usize::MAX, 0);
            out.push(Candidate {
                target: target.clone(),
                base_role,
                source: Source::DefaultRole { at: at.clone() },
                also_from: Vec::new(),
                key,
            });
        }
    }
    out.sort_by_key(|c| c.key);
    let mut deduped: Vec<Candidate> = Vec::new();
    for c in out {
        match deduped.iter_mut().find(|d| d.target == c.target) {
            Some(first) => first.also_from.push(c.source),
            None => deduped.push(c),
        }
    }
    deduped
}

/// Applies per-user conflicts and limits to ordered candidates; `refused` are tenant-limit refusals.
fn resolve(
    tenant: &CompiledTenant,
    cands: &[Candidate],
    refused: &BTreeMap<usize, LossReason>,
) -> (Vec<usize>, Vec<(usize, LossReason)>) {
    let limits = &tenant.inner.catalog.limits;
    let mut kept: Vec<usize> = Vec::new();
    let mut lost = Vec::new();
    for (i, c) in cands.iter().enumerate() {
        if let Some(reason) = refused.get(&i) {
            lost.push((i, reason.clone()));
            continue;
        }
        let same_role: Vec<Target> = kept
            .iter()
            .filter(|k| cands[**k].base_role == c.base_role)
            .map(|k| cands[*k].target.clone())
            .collect();
        if let (false, Some(first)) = (limits.combinable_roles, kept.first()) {
            lost.push((
                i,
                LossReason::SingleRole {
                    winner: cands[*first].target.clone(),
                },
            ));
        } else if limits
            .max_profiles_per_role_per_user
            .is_some_and(|n| same_role.len() >= n as usize)
        {
            let max = limits.max_profiles_per_role_per_user.unwrap_or_default();
            lost.push((
                i,
                LossReason::ProfilesPerRole {
                    role: c.base_role.clone(),
                    max,
                    kept: same_role,
                },
            ));
        } else if limits
            .max_profiles_per_user
            .is_some_and(|n| kept.len() >= n as usize)
        {
            let max = limits.max_profiles_per_user.unwrap_or_default();
            lost.push((
                i,
                LossReason::ProfilesPerUser {
                    max,
                    kept: kept.iter().map(|k| cands[*k].target.clone()).collect(),
                },
            ));
        } else {
            kept.push(i);
        }
    }
    (kept, lost)
}

/// Computes every user's effective permissions in one tenant. Tenant-wide because `max_per_tenant`
/// slots depend on the other users: only users who would actually keep the limited role contend, the
/// slots go by candidate order then earliest `created` then id, and a refused user's next candidate
/// takes its place (iterated to a fixed point; refusals only grow, so it terminates).
pub fn compute_tenant(tenant: &CompiledTenant, users: &[UserFact]) -> TenantResult {
    let mut sorted: Vec<&UserFact> = users.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let active: Vec<&UserFact> = sorted.iter().copied().filter(|u| u.active).collect();
    let cands: Vec<Vec<Candidate>> = active.iter().map(|u| candidates(tenant, u)).collect();
    let mut refused: Vec<BTreeMap<usize, LossReason>> = vec![BTreeMap::new(); active.len()];
    let limited: Vec<(&RoleId, u32)> = tenant
        .inner
        .catalog
        .roles
        .values()
        .filter_map(|r| r.max_per_tenant.map(|m| (&r.id, m)))
        .collect();
    let mut holders: BTreeMap<RoleId, Vec<String>> = BTreeMap::new();
    let resolved = loop {
        let resolved: Vec<_> = (0..active.len())
            .map(|u| resolve(tenant, &cands[u], &refused[u]))
            .collect();
        let mut changed = false;
        for (role, max) in &limited {
            let mut contenders: Vec<(Key, &str, &str, usize)> = Vec::new();
            for (u, (kept, _)) in resolved.iter().enumerate() {
                if let Some(k) = kept.iter().find(|k| cands[u][**k].base_role == **role) {
                    contenders.push((
                        cands[u][*k].key,
                        active[u].created.as_str(),
                        active[u].id.as_str(),
                        u,
                    ));
                }
            }
            contenders.sort();
            let ids: Vec<String> = contenders
                .iter()
                .take(*max as usize)
                .map(|c| c.2.to_owned())
                .collect();
            for c in contenders.iter().skip(*max as usize) {
                let u = c.3;
                for k in &resolved[u].0 {
                    if cands[u][*k].base_role == **role {
                        refused[u].insert(
                            *k,
                            LossReason::MaxPerTenant {
                                role: (*role).clone(),
                                max: *max,
                                holders: ids.clone(),
                            },
                        );
                        changed = true;
                    }
                }
            }
            holders.insert((*role).clone(), ids);
        }
        if !changed {
            break resolved;
        }
    };

    let mut out = BTreeMap::new();
    let mut refusals = Vec::new();
    for user in &sorted {
        out.insert(
            user.id.clone(),
            EffectivePermissions {
                user_id: user.id.clone(),
                user_name: user.user_name.clone(),
                active: user.active,
                permissions: BTreeSet::new(),
                assignments: Vec::new(),
                lost: Vec::new(),
                grants: BTreeMap::new(),
                dropped: Vec::new(),
            },
        );
    }
    for (u, (kept, lost)) in resolved.into_iter().enumerate() {
        let user = active[u];
        let Some(eff) = out.get_mut(&user.id) else {
            continue;
        };
        eff.assignments = kept
            .iter()
            .map(|k| {
                let c = &cands[u][*k];
                Assignment {
                    target: c.target.clone(),
                    base_role: c.base_role.clone(),
                    source: c.source.clone(),
                    also_from: c.also_from.clone(),
                }
            })
            .collect();
        eff.lost = lost
            .into_iter()
            .map(|(k, mut reason)| {
                // Report the final holders, not those of the round that refused it.
                if let LossReason::MaxPerTenant {
                    role, holders: h, ..
                } = &mut reason
                {
                    *h = holders.get(role).cloned().unwrap_or_default();
                }
                let c = &cands[u][k];
                Lost {
                    target: c.target.clone(),
                    base_role: c.base_role.clone(),
                    source: c.source.clone(),
                    reason,
                }
            })
            .collect();
        grant(tenant, eff);
        refusals.extend(eff.lost.iter().map(|l| Refusal {
            user_id: user.id.clone(),
            user_name: user.user_name.clone(),
            lost: l.clone(),
        }));
    }
    TenantResult {
        tenant: tenant.clone(),
        users: out,
        refusals,
    }
}

/// The grant step of one user: which permission is effective through which assignment ("node").
/// Implication is followed per assignment, so an implied permission is attributed to the assignment
/// whose permission implied it, and role-scoped rules apply to that assignment's base role only.
struct Nodes<'t> {
    catalog: &'t crate::catalog::Catalog,
    /// Per assignment: the permissions its target lists on (core or on), with their state.
    direct: Vec<BTreeMap<&'t PermissionId, &'t PermState>>,
    /// Per assignment: its base role in the catalog.
    roles: Vec<Option<&'t Role>>,
}

/// Per assignment, the permissions effective through it.
type Present<'t> = Vec<BTreeSet<&'t PermissionId>>;

/// Implied permission -> (implying permission, role of a role-scoped rule), within one assignment.
type Impliers<'t> = BTreeMap<&'t PermissionId, Vec<(&'t PermissionId, Option<&'t RoleId>)>>;

impl<'t> Nodes<'t> {
    /// What `p`, effective through assignment `a`, implies: the permission's own `implies`
    /// (`None`), then the base role's entry's (`Some(role)`).
    fn implied(
        &self,
        a: usize,
        p: &PermissionId,
    ) -> impl Iterator<Item = (&'t PermissionId, Option<&'t RoleId>)> {
        let wide = self
            .catalog
            .permissions
            .get(p)
            .into_iter()
            .flat_map(|x| x.implies.iter().map(|q| (q, None)));
        let scoped = self
            .roles
            .get(a)
            .copied()
            .flatten()
            .and_then(|r| r.configurable(p).map(|c| (r, c)))
            .into_iter()
            .flat_map(|(r, c)| c.implies.iter().map(move |q| (q, Some(&r.id))));
        wide.chain(scoped)
    }

    /// The implication closure of each assignment's direct permissions, skipping pruned nodes (a
    /// pruned node neither counts nor implies anything).
    fn present(&self, pruned: &BTreeSet<(usize, &'t PermissionId)>) -> Present<'t> {
        (0..self.direct.len())
            .map(|a| {
                let mut stack: Vec<&'t PermissionId> = self.direct[a]
                    .keys()
                    .copied()
                    .filter(|p| !pruned.contains(&(a, *p)))
                    .collect();
                let mut seen: BTreeSet<&'t PermissionId> = stack.iter().copied().collect();
                while let Some(p) = stack.pop() {
                    for (q, _) in self.implied(a, p) {
                        if !pruned.contains(&(a, q)) && seen.insert(q) {
                            stack.push(q);
                        }
                    }
                }
                seen
            })
            .collect()
    }

    /// Catalog-wide `requires` of `p` that are not in `effective`.
    fn missing(&self, p: &PermissionId, effective: &BTreeSet<&PermissionId>) -> Vec<PermissionId> {
        self.catalog
            .permissions
            .get(p)
            .map(|x| absent(&x.requires, effective))
            .unwrap_or_default()
    }

    /// Role-scoped `requires` of `p` through assignment `a` (its base role's entry) that are not in
    /// `effective`.
    fn missing_in_role(
        &self,
        a: usize,
        p: &PermissionId,
        effective: &BTreeSet<&PermissionId>,
    ) -> Vec<PermissionId> {
        self.roles
            .get(a)
            .copied()
            .flatten()
            .and_then(|r| r.configurable(p))
            .map(|c| absent(&c.requires, effective))
            .unwrap_or_default()
    }

    /// Per assignment, implied permission -> what implies it there (implier, role of a role-scoped
    /// rule), among the permissions `present` through it: built once per result, so listing the
    /// grants stays linear in the permissions rather than quadratic.
    fn impliers(&self, present: &Present<'t>) -> Vec<Impliers<'t>> {
        present
            .iter()
            .enumerate()
            .map(|(a, ps)| {
                let mut map: Impliers<'t> = BTreeMap::new();
                for p in ps {
                    for (q, role) in self.implied(a, p) {
                        map.entry(q).or_default().push((*p, role));
                    }
                }
                map
            })
            .collect()
    }

    /// Every way `q` is granted through assignment `a`: its direct state, then each implication.
    fn reasons(&self, a: usize, q: &PermissionId, impliers: &Impliers<'t>) -> Vec<PermState> {
        let direct = self.direct[a].get(q).map(|s| (*s).clone());
        let implied = impliers
            .get(q)
            .into_iter()
            .flatten()
            .map(|(p, role)| PermState::Implied {
                by: (*p).clone(),
                role: role.cloned(),
            });
        direct.into_iter().chain(implied).collect()
    }
}

fn absent(required: &[PermissionId], effective: &BTreeSet<&PermissionId>) -> Vec<PermissionId> {
    required
        .iter()
        .filter(|q| !effective.contains(q))
        .cloned()
        .collect()
}

fn union<'t>(present: &Present<'t>) -> BTreeSet<&'t PermissionId> {
    present.iter().flatten().copied().collect()
}

/// Unions the assignments' permissions, closes them under `implies`, then drops the grants whose
/// `requires` (catalog-wide, or role-scoped for that assignment's role) are not all effective, with
/// whatever only they implied, to a fixed point. Each round only removes, so the effective set only
/// shrinks and a grant found invalid stays invalid: the result is unique and the loop terminates.
fn grant(tenant: &CompiledTenant, eff: &mut EffectivePermissions) {
    let catalog = &*tenant.inner.catalog;
    let nodes = Nodes {
        catalog,
        direct: eff
            .assignments
            .iter()
            .map(|a| {
                tenant
                    .inner
                    .targets
                    .get(&a.target)
                    .map(|c| {
                        c.states
                            .iter()
                            .filter(|(_, s)| matches!(s, PermState::Core | PermState::On(_)))
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect(),
        roles: eff
            .assignments
            .iter()
            .map(|a| catalog.roles.get(&a.base_role))
            .collect(),
    };
    let mut pruned: BTreeSet<(usize, &PermissionId)> = BTreeSet::new();
    let initial = nodes.present(&pruned);
    let mut present = initial.clone();
    let mut effective = union(&present);
    // Permissions in the order they left the effective set.
    let mut gone: Vec<&PermissionId> = Vec::new();
    loop {
        let invalid: Vec<(usize, &PermissionId)> = present
            .iter()
            .enumerate()
            .flat_map(|(a, ps)| ps.iter().map(move |p| (a, *p)))
            .filter(|(a, p)| {
                !nodes.missing(p, &effective).is_empty()
                    || !nodes.missing_in_role(*a, p, &effective).is_empty()
            })
            .collect();
        // Present nodes are never pruned ones, so `pruned` grows every round; checked anyway, so the
        // loop ends even if that invariant were broken.
        let before = pruned.len();
        pruned.extend(invalid);
        if pruned.len() == before {
            break;
        }
        present = nodes.present(&pruned);
        let next = union(&present);
        gone.extend(effective.difference(&next).copied());
        effective = next;
    }

    let final_impliers = nodes.impliers(&present);
    let initial_impliers = nodes.impliers(&initial);
    let grants_of = |present: &Present<'_>, impliers: &[Impliers<'_>], p: &PermissionId| {
        let mut out = Vec::new();
        for (a, assignment) in eff.assignments.iter().enumerate() {
            if !present[a].contains(p) {
                continue;
            }
            for state in nodes.reasons(a, p, &impliers[a]) {
                out.push(Grant {
                    target: assignment.target.clone(),
                    state,
                    source: assignment.source.clone(),
                });
            }
        }
        out
    };
    let mut grants: BTreeMap<PermissionId, Vec<Grant>> = BTreeMap::new();
    for p in &effective {
        grants.insert((*p).clone(), grants_of(&present, &final_impliers, p));
    }
    let mut dropped = Vec::new();
    for p in gone {
        let missing = nodes.missing(p, &effective);
        let mut missing_in_role: Vec<RoleRequires> = Vec::new();
        let mut implied_by: BTreeSet<PermissionId> = BTreeSet::new();
        for (a, before) in initial.iter().enumerate() {
            if !before.contains(p) {
                continue;
            }
            if pruned.contains(&(a, p)) {
                let scoped = nodes.missing_in_role(a, p, &effective);
                let role = nodes.roles[a].map(|r| r.id.clone());
                if let (false, Some(role)) = (scoped.is_empty(), role) {
                    if !missing_in_role.iter().any(|m| m.role == role) {
                        missing_in_role.push(RoleRequires {
                            role,
                            missing: scoped,
                        });
                    }
                }
            } else {
                for (by, _) in initial_impliers[a].get(p).into_iter().flatten() {
                    implied_by.insert((*by).clone());
                }
            }
        }
        dropped.push(Dropped {
            permission: p.clone(),
            missing,
            missing_in_role,
            implied_by: implied_by.into_iter().collect(),
            grants: grants_of(&initial, &initial_impliers, p),
        });
    }
    eff.permissions = grants.keys().cloned().collect();
    eff.grants = grants;
    eff.dropped = dropped;
}
