//! Validated catalog types: one platform's permission model. Owns `Catalog` and what it contains;
//! imports `ids` and `error`. Invariant: a `Catalog` exists only after `validate` accepted its file, so
//! every id it mentions resolves, no profile or derived role touches a core permission, `requires` has
//! no cycle (catalog-wide and role-scoped together), no permission implies itself, a role-scoped
//! `implies` only names permissions of its role, and every derived role's base is a base role.

use crate::error::Location;
use crate::ids::{CatalogId, PermissionId, ProfileId, RoleId};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// One platform's permission model, as validated from `mappings/catalogs/{id}.yaml`.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub(crate) id: CatalogId,
    pub(crate) name: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) source: Option<String>,
    pub(crate) file: String,
    pub(crate) limits: Limits,
    pub(crate) policies: Vec<Policy>,
    pub(crate) permissions: BTreeMap<PermissionId, Permission>,
    pub(crate) roles: BTreeMap<RoleId, Role>,
    pub(crate) profiles: BTreeMap<ProfileId, Profile>,
}

impl Catalog {
    pub fn id(&self) -> &CatalogId {
        &self.id
    }
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }
    /// The seed file this catalog transcribes.
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }
    /// The file it was read from, as named to the validator.
    pub fn file(&self) -> &str {
        &self.file
    }
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
    /// Administrative rules quoted from the seed; informational only, never used to grant or deny.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }
    pub fn permissions(&self) -> &BTreeMap<PermissionId, Permission> {
        &self.permissions
    }
    /// Lets the service answer "unknown permission" distinctly from "not granted".
    pub fn permission(&self, id: &PermissionId) -> Option<&Permission> {
        self.permissions.get(id)
    }
    /// Base and derived roles of the catalog (tenant custom roles live in `CompiledTenant`).
    pub fn roles(&self) -> &BTreeMap<RoleId, Role> {
        &self.roles
    }
    pub fn role(&self, id: &RoleId) -> Option<&Role> {
        self.roles.get(id)
    }
    pub fn profiles(&self) -> &BTreeMap<ProfileId, Profile> {
        &self.profiles
    }
    pub fn profile(&self, id: &ProfileId) -> Option<&Profile> {
        self.profiles.get(id)
    }
}

/// Assignment limits of the platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// May a user hold several roles at once (LoyJoy, Haptik, LivePerson) or only one (GMS, iAdvize).
    pub combinable_roles: bool,
    /// LivePerson: 4. A bare role assignment counts as that role's default profile.
    pub max_profiles_per_user: Option<u32>,
    /// LivePerson: 1.
    pub max_profiles_per_role_per_user: Option<u32>,
}

/// The label a seed gives a permission's kind of access; never cumulative, never used to grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    View,
    Edit,
    Export,
    AnonymizedView,
    Create,
    Update,
    Delete,
    Import,
}

impl Level {
    pub(crate) const NAMES: &'static str =
        "view, edit, export, anonymized_view, create, update, delete or import";

    pub(crate) fn parse(s: &str) -> Option<Level> {
        Some(match s {
            "view" => Level::View,
            "edit" => Level::Edit,
            "export" => Level::Export,
            "anonymized_view" => Level::AnonymizedView,
            "create" => Level::Create,
            "update" => Level::Update,
            "delete" => Level::Delete,
            "import" => Level::Import,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Permission {
    pub id: PermissionId,
    pub name: Option<String>,
    pub description: String,
    pub area: Option<String>,
    pub level: Option<Level>,
    /// Permissions that must also be effective for this one to take effect, whichever role grants it.
    pub requires: Vec<PermissionId>,
    /// Co-grants: whenever an assignment makes this permission effective, these are granted through
    /// the same assignment too (LivePerson's "also assign"). Applied before `requires`; a cycle is
    /// harmless (it is a closure), so only a permission implying itself is refused.
    pub implies: Vec<PermissionId>,
    pub at: Location,
}

#[derive(Debug, Clone, Serialize)]
pub struct Role {
    pub id: RoleId,
    pub name: Option<String>,
    pub description: Option<String>,
    pub group: Option<String>,
    pub rank: Option<i64>,
    /// Cap on holders per tenant (GMS Owner: 1); base roles only.
    pub max_per_tenant: Option<u32>,
    /// The platform needs at least one holder of this role (GMS Owner, LoyJoy Owner, LivePerson
    /// Admin); base roles only. Never changes effective permissions: it lets the service refuse a
    /// mapping change that leaves the role unheld (`TenantResult::unheld_protected_roles`).
    pub protected: bool,
    pub kind: RoleKind,
    pub at: Location,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleKind {
    Base {
        /// Always granted, can never be disabled.
        core: BTreeSet<PermissionId>,
        /// In file order.
        configurable: Vec<Configurable>,
    },
    /// A custom role: its base's permissions with some configurable ones switched.
    Derived {
        base: RoleId,
        toggles: BTreeMap<PermissionId, bool>,
    },
}

impl Role {
    /// The base role whose permissions and limits this role uses (itself for a base role).
    pub fn base_role(&self) -> &RoleId {
        match &self.kind {
            RoleKind::Base { .. } => &self.id,
            RoleKind::Derived { base, .. } => base,
        }
    }

    /// This base role's configurable entry for `p` (`None` for a derived role, a core permission or a
    /// permission the role does not list): where role-scoped `requires`/`implies` live.
    pub fn configurable(&self, p: &PermissionId) -> Option<&Configurable> {
        match &self.kind {
            RoleKind::Base { configurable, .. } => configurable.iter().find(|c| &c.permission == p),
            RoleKind::Derived { .. } => None,
        }
    }

    /// Whether this base role lists `p`, core or configurable.
    pub fn lists(&self, p: &PermissionId) -> bool {
        match &self.kind {
            RoleKind::Base { core, configurable } => {
                core.contains(p) || configurable.iter().any(|c| &c.permission == p)
            }
            RoleKind::Derived { .. } => false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Configurable {
    pub permission: PermissionId,
    pub default: DefaultState,
    /// This role's wording of the permission, if it differs.
    pub name: Option<String>,
    pub description: Option<String>,
    /// Role-scoped `requires`: only this role's grant of the permission needs them, and any effective
    /// permission of the user satisfies them (another held role may supply one this role lacks,
    /// as LivePerson's Agent needs API Developer, which the Agent table has no row for).
    pub requires: Vec<PermissionId>,
    /// Role-scoped `implies`: co-grants of this role's grant of the permission only (LivePerson writes
    /// "also assign Bot Builder Lite and API Developer" in three of its four role tables). Always
    /// permissions this role lists, so a role-scoped rule never grants what the role cannot hold.
    pub implies: Vec<PermissionId>,
}

/// A configurable permission's default; `Account` is LivePerson's "Dependant on account", decided by the
/// tenant's `account_defaults` (off when the tenant does not say).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultState {
    On,
    Off,
    Account,
}

#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub id: ProfileId,
    pub name: Option<String>,
    pub description: Option<String>,
    /// Always a base role.
    pub role: RoleId,
    pub toggles: BTreeMap<PermissionId, bool>,
    pub at: Location,
}

#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    pub id: String,
    pub text: String,
    pub roles: Vec<RoleId>,
}
