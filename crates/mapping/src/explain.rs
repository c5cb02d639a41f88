//! Explanations of a computed result: why a user has, or lacks, a permission. Owns `Explanation`
//! (serde for `--json` and HTTP, `Display` for humans); imports `compute`, `compile`, `tenant`.
//! Invariant: an explanation is derived only from a `TenantResult`, so it can never disagree with the
//! permissions the service serves.

use crate::compile::{PermState, StateReason};
use crate::compute::{Assignment, Grant, LossReason, Lost, RoleRequires, Source, TenantResult};
use crate::ids::{CatalogId, PermissionId, TenantName};
use crate::tenant::Target;
use serde::Serialize;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("unknown user '{0}' in tenant '{1}'")]
    UnknownUser(String, String),
}

#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub tenant: TenantName,
    pub catalog: CatalogId,
    pub user_id: String,
    pub user_name: String,
    pub active: bool,
    pub assignments: Vec<Assignment>,
    /// Offered but not held, with the winner or limit.
    pub lost: Vec<Lost>,
    /// The asked permission, or every granted and every dropped permission.
    pub permissions: Vec<PermissionExplanation>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PermissionExplanation {
    pub permission: PermissionId,
    pub granted: bool,
    /// Each chain group -> rule -> target -> state that grants it.
    pub grants: Vec<Grant>,
    /// Why it is missing; empty when granted.
    pub why_not: Vec<WhyNot>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum WhyNot {
    /// SCIM `active=false`.
    InactiveUser,
    /// The tenant's catalog has no such permission.
    NotInCatalog,
    /// No rule matched any of the user's groups and there is no default role.
    NoRuleMatched,
    /// A held target lists it, switched off.
    OffInAssignment {
        target: Target,
        because: StateReason,
    },
    /// A target that would grant it lost a conflict or was refused by a limit.
    LostAssignment { lost: Lost },
    /// Granted, then dropped: these catalog-wide `requires` (`missing`) or role-scoped ones
    /// (`missing_in_role`) are not effective, or the permissions that implied it were dropped
    /// (`implied_by`).
    MissingRequires {
        missing: Vec<PermissionId>,
        missing_in_role: Vec<RoleRequires>,
        implied_by: Vec<PermissionId>,
        grants: Vec<Grant>,
    },
    /// Nothing the user holds lists it; these targets of the tenant would grant it.
    NotInAssignments { granted_by: Vec<Target> },
}

/// Explains `user_id`'s permissions (all of them, or only `permission`).
pub fn explain(
    result: &TenantResult,
    user_id: &str,
    permission: Option<&PermissionId>,
) -> Result<Explanation, ExplainError> {
    let tenant = result.tenant();
    let user = result
        .user(user_id)
        .ok_or_else(|| ExplainError::UnknownUser(user_id.to_owned(), tenant.name().to_string()))?;
    let targets = tenant.targets();
    let one = |p: &PermissionId| -> PermissionExplanation {
        if let Some(grants) = user.grants.get(p) {
            return PermissionExplanation {
                permission: p.clone(),
                granted: true,
                grants: grants.clone(),
                why_not: Vec::new(),
            };
        }
        let mut why = Vec::new();
        if !user.active {
            why.push(WhyNot::InactiveUser);
        } else if !tenant.has_permission(p) {
            why.push(WhyNot::NotInCatalog);
        } else {
            if let Some(d) = user.dropped.iter().find(|d| &d.permission == p) {
                why.push(WhyNot::MissingRequires {
                    missing: d.missing.clone(),
                    missing_in_role: d.missing_in_role.clone(),
                    implied_by: d.implied_by.clone(),
                    grants: d.grants.clone(),
                });
            }
            for a in &user.assignments {
                if let Some(PermState::Off(because)) =
                    targets.get(&a.target).and_then(|c| c.states.get(p))
                {
                    why.push(WhyNot::OffInAssignment {
                        target: a.target.clone(),
                        because: because.clone(),
                    });
                }
            }
            for l in &user.lost {
                if targets.get(&l.target).is_some_and(|c| c.grants(p)) {
                    why.push(WhyNot::LostAssignment { lost: l.clone() });
                }
            }
            if user.assignments.is_empty() && user.lost.is_empty() {
                why.push(WhyNot::NoRuleMatched);
            } else if why.is_empty() {
                let granted_by = targets
                    .values()
                    .filter(|c| c.grants(p))
                    .map(|c| c.target.clone())
                    .collect();
                why.push(WhyNot::NotInAssignments { granted_by });
            }
        }
        PermissionExplanation {
            permission: p.clone(),
            granted: false,
            grants: Vec::new(),
            why_not: why,
        }
    };
    let permissions = match permission {
        Some(p) => vec![one(p)],
        None => user
            .permissions
            .iter()
            .chain(user.dropped.iter().map(|d| &d.permission))
            .map(one)
            .collect(),
    };
    Ok(Explanation {
        tenant: tenant.name().clone(),
        catalog: tenant.catalog().id().clone(),
        user_id: user.user_id.clone(),
        user_name: user.user_name.clone(),
        active: user.active,
        assignments: user.assignments.clone(),
        lost: user.lost.clone(),
        permissions,
    })
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::DefaultRole { at } => write!(f, "default_role ({at})"),
            Source::Rule { rule, group } => {
                write!(
                    f,
                    "rule {} ({}, priority {}) <- group '{}'",
                    rule.label(),
                    rule.at,
                    rule.priority,
                    group.display_name
                )?;
                if !group.via.is_empty() {
                    let chain: Vec<String> = group.via.iter().map(|g| format!("'{g}'")).collect();
                    write!(
                        f,
                        " (nested: {} > '{}')",
                        chain.join(" > "),
                        group.display_name
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for LossReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |ts: &[Target]| {
            ts.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            LossReason::SingleRole { winner } => write!(
                f,
                "lost to {winner}: one role per user (combinable_roles: false)"
            ),
            LossReason::ProfilesPerRole { role, max, kept } => {
                write!(f, "refused by limit max_profiles_per_role_per_user {max} for role '{role}', kept {}", list(kept))
            }
            LossReason::ProfilesPerUser { max, kept } => write!(
                f,
                "refused by limit max_profiles_per_user {max}, kept {}",
                list(kept)
            ),
            LossReason::MaxPerTenant { role, max, holders } => {
                let h: Vec<String> = holders.iter().map(|h| format!("'{h}'")).collect();
                write!(
                    f,
                    "refused by limit max_per_tenant {max} of role '{role}', held by user {}",
                    h.join(", ")
                )
            }
        }
    }
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} from {}: {}", self.target, self.source, self.reason)
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            PermState::Core => write!(f, "core permission of {} <- {}", self.target, self.source),
            PermState::On(r) | PermState::Off(r) => {
                write!(f, "on in {} ({r}) <- {}", self.target, self.source)
            }
            PermState::Implied { by, role: None } => {
                write!(f, "implied by '{by}' in {} <- {}", self.target, self.source)
            }
            PermState::Implied {
                by,
                role: Some(role),
            } => write!(
                f,
                "implied by '{by}' (implies of role '{role}') in {} <- {}",
                self.target, self.source
            ),
        }
    }
}

impl fmt::Display for WhyNot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WhyNot::InactiveUser => f.write_str("the user is inactive (SCIM active=false)"),
            WhyNot::NotInCatalog => f.write_str("the catalog has no such permission"),
            WhyNot::NoRuleMatched => {
                f.write_str("no rule matched any of the user's groups and there is no default role")
            }
            WhyNot::OffInAssignment { target, because } => write!(f, "off in {target} ({because})"),
            WhyNot::LostAssignment { lost } => write!(f, "{lost}"),
            WhyNot::MissingRequires {
                missing,
                missing_in_role,
                implied_by,
                grants,
            } => {
                let quoted = |ps: &[PermissionId]| {
                    ps.iter()
                        .map(|p| format!("'{p}'"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let mut parts = Vec::new();
                if !missing.is_empty() {
                    parts.push(format!(
                        "requires {} which is not effective",
                        quoted(missing)
                    ));
                }
                for m in missing_in_role {
                    parts.push(format!(
                        "role '{}' requires {} for it, which is not effective",
                        m.role,
                        quoted(&m.missing)
                    ));
                }
                if !implied_by.is_empty() {
                    parts.push(format!(
                        "implied by {} which was dropped",
                        quoted(implied_by)
                    ));
                }
                write!(f, "dropped: {}", parts.join("; "))?;
                for g in grants {
                    write!(f, "\n      granted by {g}")?;
                }
                Ok(())
            }
            WhyNot::NotInAssignments { granted_by } => {
                let t: Vec<String> = granted_by.iter().map(ToString::to_string).collect();
                if t.is_empty() {
                    f.write_str("no role or profile of the tenant grants it")
                } else {
                    write!(
                        f,
                        "no held role or profile lists it; granted by {}",
                        t.join(", ")
                    )
                }
            }
        }
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "user '{}' (id {}) in tenant '{}', catalog '{}'",
            self.user_name, self.user_id, self.tenant, self.catalog
        )?;
        if !self.active {
            writeln!(f, "inactive: no permissions")?;
        }
        writeln!(f, "assignments:")?;
        for a in &self.assignments {
            writeln!(f, "  {} <- {}", a.target, a.source)?;
            for s in &a.also_from {
                writeln!(f, "    also offered by {s}")?;
            }
        }
        if !self.lost.is_empty() {
            writeln!(f, "not assigned:")?;
            for l in &self.lost {
                writeln!(f, "  {l}")?;
            }
        }
        for p in &self.permissions {
            writeln!(
                f,
                "permission '{}': {}",
                p.permission,
                if p.granted { "granted" } else { "not granted" }
            )?;
            for g in &p.grants {
                writeln!(f, "  {g}")?;
            }
            for w in &p.why_not {
                writeln!(f, "  - {w}")?;
            }
        }
        Ok(())
    }
}
