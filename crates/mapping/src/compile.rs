//! The compile step: for each target a tenant can assign, the state of every permission its role lists,
//! with the reason for that state. Owns `CompiledTarget`, `PermState` and `StateReason`; imports
//! `catalog` and `tenant::Target`. Invariant: a state is decided in mappings/README.md's order (role default,
//! `account` from the tenant's `account_defaults`, then the derived role's toggles, then the profile's).

use crate::catalog::{Catalog, DefaultState, Profile, Role, RoleKind};
use crate::ids::{PermissionId, ProfileId, RoleId};
use crate::tenant::Target;
use serde::Serialize;
use std::collections::BTreeMap;

/// What one assignable target grants, before `implies` and `requires` are applied.
#[derive(Debug, Clone, Serialize)]
pub struct CompiledTarget {
    pub target: Target,
    /// The base role whose limits (`max_per_tenant`, per-role profile limit) this target counts against.
    pub base_role: RoleId,
    /// Every permission the base role lists (core and configurable), on or off.
    pub states: BTreeMap<PermissionId, PermState>,
}

impl CompiledTarget {
    pub fn grants(&self, p: &PermissionId) -> bool {
        matches!(self.states.get(p), Some(PermState::Core | PermState::On(_)))
    }
}

/// The state of one permission in one target, or (`Implied`) how a grant came about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum PermState {
    /// A core permission of the base role: always on.
    Core,
    On(StateReason),
    Off(StateReason),
    /// Only in a `Grant`, never in `CompiledTarget::states`: granted because `by` is effective
    /// through the same assignment and implies it. `role` names the role whose configurable entry
    /// carries the implication; `None` when the permission `by` itself does (catalog-wide).
    Implied {
        by: PermissionId,
        role: Option<RoleId>,
    },
}

/// Which setting decided a configurable permission's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "by", content = "id", rename_all = "snake_case")]
pub enum StateReason {
    /// The role's `default: on|off`.
    RoleDefault,
    /// `default: account`, decided by the tenant's `account_defaults`.
    AccountDefault,
    /// `default: account` with no `account_defaults` entry: off.
    AccountDefaultUnset,
    /// A derived (custom) role's toggle.
    DerivedRole(RoleId),
    /// A profile's toggle (a catalog or tenant profile).
    Profile(ProfileId),
}

impl std::fmt::Display for StateReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateReason::RoleDefault => f.write_str("role default"),
            StateReason::AccountDefault => f.write_str("account default (tenant account_defaults)"),
            StateReason::AccountDefaultUnset => {
                f.write_str("account default not set by the tenant")
            }
            StateReason::DerivedRole(r) => write!(f, "toggled by custom role '{r}'"),
            StateReason::Profile(p) => write!(f, "toggled by profile '{p}'"),
        }
    }
}

fn base_states(
    role: &Role,
    account: &BTreeMap<PermissionId, bool>,
) -> BTreeMap<PermissionId, PermState> {
    let mut states = BTreeMap::new();
    if let RoleKind::Base { core, configurable } = &role.kind {
        for c in core {
            states.insert(c.clone(), PermState::Core);
        }
        for c in configurable {
            let state = match c.default {
                DefaultState::On => PermState::On(StateReason::RoleDefault),
                DefaultState::Off => PermState::Off(StateReason::RoleDefault),
                DefaultState::Account => match account.get(&c.permission) {
                    Some(true) => PermState::On(StateReason::AccountDefault),
                    Some(false) => PermState::Off(StateReason::AccountDefault),
                    None => PermState::Off(StateReason::AccountDefaultUnset),
                },
            };
            states.insert(c.permission.clone(), state);
        }
    }
    states
}

fn apply(
    states: &mut BTreeMap<PermissionId, PermState>,
    toggles: &BTreeMap<PermissionId, bool>,
    reason: &StateReason,
) {
    for (p, on) in toggles {
        // Validation guarantees toggles name configurable permissions only, never core ones.
        if matches!(states.get(p), Some(PermState::On(_) | PermState::Off(_))) {
            let s = if *on {
                PermState::On(reason.clone())
            } else {
                PermState::Off(reason.clone())
            };
            states.insert(p.clone(), s);
        }
    }
}

/// Compiles every role, derived role, tenant custom role, catalog profile and tenant profile of one
/// tenant.
pub(crate) fn compile_targets(
    catalog: &Catalog,
    custom_roles: &BTreeMap<RoleId, Role>,
    profiles: &BTreeMap<ProfileId, Profile>,
    account: &BTreeMap<PermissionId, bool>,
) -> BTreeMap<Target, CompiledTarget> {
    let mut out = BTreeMap::new();
    for role in catalog.roles.values().chain(custom_roles.values()) {
        let (target, base_id, states) = match &role.kind {
            RoleKind::Base { .. } => (
                Target::Role(role.id.clone()),
                role.id.clone(),
                base_states(role, account),
            ),
            RoleKind::Derived { base, toggles } => {
                let Some(base_role) = catalog.roles.get(base) else {
                    continue;
                };
                let mut states = base_states(base_role, account);
                apply(
                    &mut states,
                    toggles,
                    &StateReason::DerivedRole(role.id.clone()),
                );
                (Target::CustomRole(role.id.clone()), base.clone(), states)
            }
        };
        out.insert(
            target.clone(),
            CompiledTarget {
                target,
                base_role: base_id,
                states,
            },
        );
    }
    for profile in catalog.profiles.values().chain(profiles.values()) {
        let Some(role) = catalog.roles.get(&profile.role) else {
            continue;
        };
        let mut states = base_states(role, account);
        apply(
            &mut states,
            &profile.toggles,
            &StateReason::Profile(profile.id.clone()),
        );
        let target = Target::Profile(profile.id.clone());
        out.insert(
            target.clone(),
            CompiledTarget {
                target,
                base_role: profile.role.clone(),
                states,
            },
        );
    }
    out
}
