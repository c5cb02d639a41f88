//! The validate step for catalogs, and the entry points that validate a whole mapping set. Owns the
//! rules of mappings/README.md "Validation errors"; imports `raw`, `catalog`, `tenant`, `error`, `ids`.
//! Invariant: validation collects every error of every file; a set with any error yields no
//! `MappingSet`, so the service keeps its last good mappings.

use crate::catalog::{
    Catalog, Configurable, DefaultState, Level, Limits, Permission, Policy, Profile, Role, RoleKind,
};
use crate::error::{ErrorKind, Location, MappingError};
use crate::ids::{is_valid_id, CatalogId, PermissionId, ProfileId, RoleId, TenantName};
use crate::raw::{self, RawRole, RawToggle, Reader, Str};
use crate::tenant::{self, CompiledTenant};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

/// Every catalog and tenant mapping of one mappings directory, all valid together.
/// The default is the empty set: no tenant is mapped.
#[derive(Debug, Clone, Default)]
pub struct MappingSet {
    pub(crate) catalogs: BTreeMap<CatalogId, Arc<Catalog>>,
    pub(crate) tenants: BTreeMap<TenantName, CompiledTenant>,
}

impl MappingSet {
    pub fn catalogs(&self) -> &BTreeMap<CatalogId, Arc<Catalog>> {
        &self.catalogs
    }
    pub fn catalog(&self, id: &CatalogId) -> Option<&Arc<Catalog>> {
        self.catalogs.get(id)
    }
    pub fn tenants(&self) -> &BTreeMap<TenantName, CompiledTenant> {
        &self.tenants
    }
    /// Lets the service answer "unknown tenant" distinctly.
    pub fn tenant(&self, name: &TenantName) -> Option<&CompiledTenant> {
        self.tenants.get(name)
    }
}

/// Reads `dir/catalogs/*.yaml` and `dir/tenants/*.yaml` and validates them together. This is the only
/// function of the crate that does IO.
pub fn validate_dir(dir: &Path) -> Result<MappingSet, Vec<MappingError>> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for sub in ["catalogs", "tenants"] {
        let folder = dir.join(sub);
        let entries = match std::fs::read_dir(&folder) {
            Ok(e) => e,
            Err(e) => {
                errors.push(io_error(&folder, &e));
                continue;
            }
        };
        let mut paths: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        paths.sort();
        for path in paths {
            match std::fs::read_to_string(&path) {
                Ok(text) => files.push((path.display().to_string(), text)),
                Err(e) => errors.push(io_error(&path, &e)),
            }
        }
    }
    match validate_sources(&files) {
        Ok(set) if errors.is_empty() => Ok(set),
        Ok(_) => Err(errors),
        Err(mut more) => {
            errors.append(&mut more);
            Err(errors)
        }
    }
}

fn io_error(path: &Path, e: &std::io::Error) -> MappingError {
    MappingError {
        at: Location {
            file: path.display().to_string(),
            line: 1,
            column: 1,
        },
        kind: ErrorKind::Io(e.to_string()),
    }
}

/// Validates in-memory files `(name, text)`. A name's parent folder says its kind (`.../catalogs/x.yaml`
/// or `.../tenants/x.yaml`) and its stem is the catalog id or tenant name. Pure, for tests and reloads.
pub fn validate_sources<N: AsRef<str>, T: AsRef<str>>(
    files: &[(N, T)],
) -> Result<MappingSet, Vec<MappingError>> {
    let mut errors = Vec::new();
    let mut catalogs = BTreeMap::new();
    let mut known_catalogs = BTreeSet::new();
    let mut tenant_files = Vec::new();
    for (name, text) in files {
        let name = name.as_ref();
        let path = Path::new(name);
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let kind = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|s| s.to_string_lossy().into_owned());
        match kind.as_deref() {
            Some("catalogs") => {
                known_catalogs.insert(stem.clone());
                if let Some(c) = validate_catalog(name, &stem, text.as_ref(), &mut errors) {
                    catalogs.insert(c.id.clone(), Arc::new(c));
                }
            }
            Some("tenants") => tenant_files.push((name, stem, text.as_ref())),
            _ => errors.push(MappingError {
                at: Location {
                    file: name.to_owned(),
                    line: 1,
                    column: 1,
                },
                kind: ErrorKind::UnknownFileKind(name.to_owned()),
            }),
        }
    }
    let mut tenants = BTreeMap::new();
    for (name, stem, text) in tenant_files {
        if let Some(t) =
            tenant::validate_tenant(name, &stem, text, &catalogs, &known_catalogs, &mut errors)
        {
            tenants.insert(t.name().clone(), t);
        }
    }
    if errors.is_empty() {
        Ok(MappingSet { catalogs, tenants })
    } else {
        Err(errors)
    }
}

/// Records first definitions of ids to report duplicates with both positions.
#[derive(Default)]
pub(crate) struct Seen(BTreeMap<String, Location>);

impl Seen {
    /// Checks syntax and uniqueness of `id`; returns whether it is usable.
    pub fn define(&mut self, r: &mut Reader<'_>, id: &Str, what: &str) -> bool {
        if !is_valid_id(&id.value) {
            r.error(
                id.at.clone(),
                ErrorKind::BadId {
                    what: what.into(),
                    id: id.value.clone(),
                },
            );
            return false;
        }
        if let Some(first) = self.0.get(&id.value) {
            r.error(
                id.at.clone(),
                ErrorKind::DuplicateId {
                    what: what.into(),
                    id: id.value.clone(),
                    first: first.to_string(),
                },
            );
            return false;
        }
        self.0.insert(id.value.clone(), id.at.clone());
        true
    }
}

/// Parses `on`/`off` (and `true`/`false`, for files written by YAML 1.1 tools) of a toggle.
pub(crate) fn on_off(r: &mut Reader<'_>, key: &str, s: &Str) -> Option<bool> {
    match s.value.as_str() {
        "on" | "true" => Some(true),
        "off" | "false" => Some(false),
        _ => {
            r.error(
                s.at.clone(),
                ErrorKind::BadValue {
                    key: key.into(),
                    value: s.value.clone(),
                    expected: "on or off".into(),
                },
            );
            None
        }
    }
}

/// Checks toggles of a profile or derived role against the base role they modify.
pub(crate) fn check_toggles(
    r: &mut Reader<'_>,
    context: &str,
    base: &Role,
    toggles: &[RawToggle],
    permissions: &BTreeMap<PermissionId, Permission>,
) -> BTreeMap<PermissionId, bool> {
    let mut out = BTreeMap::new();
    let RoleKind::Base { core, configurable } = &base.kind else {
        return out;
    };
    for t in toggles {
        let state = on_off(r, &t.permission.value, &t.state);
        let pid = PermissionId::new(t.permission.value.clone());
        let at = t.permission.at.clone();
        if !permissions.contains_key(&pid) {
            r.error(
                at,
                ErrorKind::UnknownPermission {
                    context: context.into(),
                    permission: pid.to_string(),
                },
            );
        } else if core.contains(&pid) {
            let (context, permission, role) =
                (context.to_owned(), pid.to_string(), base.id.to_string());
            let kind = if state == Some(true) {
                ErrorKind::TogglesCore {
                    context,
                    permission,
                    role,
                }
            } else {
                ErrorKind::DisablesCore {
                    context,
                    permission,
                    role,
                }
            };
            r.error(at, kind);
        } else if !configurable.iter().any(|c| c.permission == pid) {
            r.error(
                at,
                ErrorKind::ToggleNotInRole {
                    context: context.into(),
                    permission: pid.to_string(),
                    role: base.id.to_string(),
                },
            );
        } else if let Some(state) = state {
            out.insert(pid, state);
        }
    }
    out
}

/// Resolves a derived role's `base`, which must be a base role of `roles`.
pub(crate) fn derived_base<'c>(
    r: &mut Reader<'_>,
    context: &str,
    base: &Str,
    roles: &'c BTreeMap<RoleId, Role>,
    derived: &BTreeMap<String, String>,
) -> Option<&'c Role> {
    match roles.get(&RoleId::new(base.value.clone())) {
        None if derived.contains_key(&base.value) => {
            let base_of_base = derived.get(&base.value).cloned().unwrap_or_default();
            r.error(
                base.at.clone(),
                ErrorKind::BaseIsDerived {
                    context: context.into(),
                    base: base.value.clone(),
                    base_of_base,
                },
            );
            None
        }
        None => {
            r.error(
                base.at.clone(),
                ErrorKind::UnknownRole {
                    context: context.into(),
                    role: base.value.clone(),
                },
            );
            None
        }
        Some(role) => match &role.kind {
            RoleKind::Base { .. } => Some(role),
            RoleKind::Derived { base: bb, .. } => {
                r.error(
                    base.at.clone(),
                    ErrorKind::BaseIsDerived {
                        context: context.into(),
                        base: base.value.clone(),
                        base_of_base: bb.to_string(),
                    },
                );
                None
            }
        },
    }
}

fn opt(s: &Option<Str>) -> Option<String> {
    s.as_ref().map(|s| s.value.clone())
}

fn validate_catalog(
    file: &str,
    stem: &str,
    text: &str,
    errors: &mut Vec<MappingError>,
) -> Option<Catalog> {
    let before = errors.len();
    let mut r = Reader::new(file, errors);
    let raw = raw::read_catalog(&mut r, text)?;
    let mut id = CatalogId::new(stem);
    if let Some(i) = &raw.id {
        if Seen::default().define(&mut r, i, "catalog") && i.value != stem {
            r.error(
                i.at.clone(),
                ErrorKind::CatalogIdMismatch {
                    id: i.value.clone(),
                    stem: stem.into(),
                },
            );
        }
        id = CatalogId::new(i.value.clone());
    }
    let mut limits = Limits {
        combinable_roles: true,
        max_profiles_per_user: None,
        max_profiles_per_role_per_user: None,
    };
    if let Some((b, _)) = raw.combinable_roles {
        limits.combinable_roles = b;
    }
    for (key, value, slot) in [
        (
            "max_profiles_per_user",
            &raw.max_profiles_per_user,
            &mut limits.max_profiles_per_user,
        ),
        (
            "max_profiles_per_role_per_user",
            &raw.max_profiles_per_role_per_user,
            &mut limits.max_profiles_per_role_per_user,
        ),
    ] {
        if let Some((n, at)) = value {
            if *n == 0 {
                r.error(
                    at.clone(),
                    ErrorKind::BadValue {
                        key: key.into(),
                        value: "0".into(),
                        expected: "a positive integer".into(),
                    },
                );
            } else {
                *slot = Some(*n);
            }
        }
    }

    // Permissions first: everything else refers to them.
    let mut seen_perm = Seen::default();
    let mut permissions = BTreeMap::new();
    for p in &raw.permissions {
        let Some(pid) = &p.id else { continue };
        if !seen_perm.define(&mut r, pid, "permission") {
            continue;
        }
        let level = p.level.as_ref().and_then(|l| {
            let parsed = Level::parse(&l.value);
            if parsed.is_none() {
                r.error(
                    l.at.clone(),
                    ErrorKind::BadValue {
                        key: "level".into(),
                        value: l.value.clone(),
                        expected: Level::NAMES.into(),
                    },
                );
            }
            parsed
        });
        permissions.insert(
            PermissionId::new(pid.value.clone()),
            Permission {
                id: PermissionId::new(pid.value.clone()),
                name: opt(&p.name),
                description: opt(&p.description).unwrap_or_default(),
                area: opt(&p.area),
                level,
                requires: Vec::new(),
                implies: Vec::new(),
                at: pid.at.clone(),
            },
        );
    }
    // Every `requires` edge, catalog-wide and role-scoped, for one cycle check over both.
    let mut requires_graph: RequiresGraph = BTreeMap::new();
    for p in &raw.permissions {
        let Some(pid) = &p.id else { continue };
        let pid = PermissionId::new(pid.value.clone());
        // Lists of a permission whose id was refused are still checked (every error is reported), but
        // only defined permissions take part in the cycle check.
        let defined = permissions.contains_key(&pid);
        let context = format!("permission '{pid}'");
        let reqs = id_list(
            &mut r,
            &format!("{context} requires"),
            &p.requires,
            &permissions,
        );
        for (q, at) in reqs.iter().filter(|_| defined) {
            requires_graph.entry(pid.clone()).or_default().push(Edge {
                to: q.clone(),
                role: None,
                at: at.clone(),
            });
        }
        let implies = implies_list(&mut r, &context, &pid, &p.implies, &permissions);
        if let Some(perm) = permissions.get_mut(&pid) {
            perm.requires = reqs.into_iter().map(|(q, _)| q).collect();
            perm.implies = implies.into_iter().map(|(q, _)| q).collect();
        }
    }

    // Base roles before derived ones, so a derived role can check its toggles against its base.
    let mut seen_assignable = Seen::default();
    let mut roles: BTreeMap<RoleId, Role> = BTreeMap::new();
    let mut derived: Vec<&RawRole> = Vec::new();
    for raw_role in &raw.roles {
        let Some(rid) = &raw_role.id else { continue };
        if !seen_assignable.define(&mut r, rid, "role") {
            continue;
        }
        if raw_role.base.is_some() {
            derived.push(raw_role);
            continue;
        }
        let context = format!("role '{}'", rid.value);
        if raw_role.core.is_none() && raw_role.configurable.is_none() {
            r.error(raw_role.at.clone(), ErrorKind::EmptyRole(rid.value.clone()));
        }
        if let Some((_, at)) = &raw_role.toggles {
            r.error(
                at.clone(),
                ErrorKind::DerivedWithPermissions {
                    role: rid.value.clone(),
                    key: "toggles".into(),
                },
            );
        }
        let mut listed = BTreeSet::new();
        let mut core = BTreeSet::new();
        for c in raw_role.core.iter().flat_map(|(v, _)| v) {
            let cid = PermissionId::new(c.value.clone());
            if !permissions.contains_key(&cid) {
                r.error(
                    c.at.clone(),
                    ErrorKind::UnknownPermission {
                        context: context.clone(),
                        permission: c.value.clone(),
                    },
                );
            } else if !listed.insert(cid.clone()) {
                r.error(
                    c.at.clone(),
                    ErrorKind::DuplicatePermission {
                        context: context.clone(),
                        permission: c.value.clone(),
                    },
                );
            } else {
                core.insert(cid);
            }
        }
        let mut configurable = Vec::new();
        // Entries whose role-scoped lists are checked once the role's whole listing is known.
        let mut scoped = Vec::new();
        for c in raw_role.configurable.iter().flat_map(|(v, _)| v) {
            let Some(p) = &c.permission else { continue };
            let cid = PermissionId::new(p.value.clone());
            let default = c.default.as_ref().and_then(|d| match d.value.as_str() {
                "on" | "true" => Some(DefaultState::On),
                "off" | "false" => Some(DefaultState::Off),
                "account" => Some(DefaultState::Account),
                _ => {
                    r.error(
                        d.at.clone(),
                        ErrorKind::BadValue {
                            key: "default".into(),
                            value: d.value.clone(),
                            expected: "on, off or account".into(),
                        },
                    );
                    None
                }
            });
            if !permissions.contains_key(&cid) {
                r.error(
                    p.at.clone(),
                    ErrorKind::UnknownPermission {
                        context: context.clone(),
                        permission: p.value.clone(),
                    },
                );
            } else if core.contains(&cid) {
                r.error(
                    p.at.clone(),
                    ErrorKind::CoreAndConfigurable {
                        role: rid.value.clone(),
                        permission: p.value.clone(),
                    },
                );
            } else if !listed.insert(cid.clone()) {
                r.error(
                    p.at.clone(),
                    ErrorKind::DuplicatePermission {
                        context: context.clone(),
                        permission: p.value.clone(),
                    },
                );
            } else if let Some(default) = default {
                scoped.push((configurable.len(), c));
                configurable.push(Configurable {
                    permission: cid,
                    default,
                    name: opt(&c.name),
                    description: opt(&c.description),
                    requires: Vec::new(),
                    implies: Vec::new(),
                });
            }
        }
        let role_id = RoleId::new(rid.value.clone());
        for (index, c) in scoped {
            let Some(entry) = configurable.get(index) else {
                continue;
            };
            let pid = entry.permission.clone();
            let context = format!("role '{role_id}' configurable '{pid}'");
            let reqs = id_list(
                &mut r,
                &format!("{context} requires"),
                &c.requires,
                &permissions,
            );
            for (q, at) in &reqs {
                requires_graph.entry(pid.clone()).or_default().push(Edge {
                    to: q.clone(),
                    role: Some(role_id.clone()),
                    at: at.clone(),
                });
            }
            let mut implies = Vec::new();
            for (q, at) in implies_list(&mut r, &context, &pid, &c.implies, &permissions) {
                if listed.contains(&q) {
                    implies.push(q);
                } else {
                    r.error(
                        at,
                        ErrorKind::ImpliedNotInRole {
                            context: context.clone(),
                            permission: q.to_string(),
                            role: role_id.to_string(),
                        },
                    );
                }
            }
            if let Some(entry) = configurable.get_mut(index) {
                entry.requires = reqs.into_iter().map(|(q, _)| q).collect();
                entry.implies = implies;
            }
        }
        let max_per_tenant = positive(&mut r, "max_per_tenant", raw_role.max_per_tenant.as_ref());
        let mut role = role_shell(
            raw_role,
            rid,
            max_per_tenant,
            RoleKind::Base { core, configurable },
        );
        role.protected = raw_role.protected.as_ref().is_some_and(|(b, _)| *b);
        roles.insert(role_id, role);
    }
    report_cycles(&mut r, &requires_graph, &raw.permissions);
    let derived_names = derived_names(&derived);
    let derived_roles: Vec<Role> = derived
        .into_iter()
        .filter_map(|raw_role| derived_role(&mut r, raw_role, &roles, &permissions, &derived_names))
        .collect();
    for d in derived_roles {
        roles.insert(d.id.clone(), d);
    }

    let mut profiles = BTreeMap::new();
    for p in &raw.profiles {
        let Some(pid) = &p.id else { continue };
        if !seen_assignable.define(&mut r, pid, "profile") {
            continue;
        }
        if let Some(profile) = profile(&mut r, p, pid, &roles, &BTreeMap::new(), &permissions) {
            profiles.insert(profile.id.clone(), profile);
        }
    }

    let mut seen_policy = Seen::default();
    let mut policies = Vec::new();
    for p in &raw.policies {
        let (Some(pid), Some(text)) = (&p.id, &p.text) else {
            continue;
        };
        seen_policy.define(&mut r, pid, "policy");
        let mut policy_roles = Vec::new();
        for role in &p.roles {
            let rid = RoleId::new(role.value.clone());
            if roles.contains_key(&rid) {
                policy_roles.push(rid);
            } else {
                r.error(
                    role.at.clone(),
                    ErrorKind::UnknownRole {
                        context: format!("policy '{}'", pid.value),
                        role: role.value.clone(),
                    },
                );
            }
        }
        policies.push(Policy {
            id: pid.value.clone(),
            text: text.value.clone(),
            roles: policy_roles,
        });
    }

    if errors.len() > before {
        return None;
    }
    Some(Catalog {
        id,
        name: opt(&raw.name),
        description: opt(&raw.description),
        source: opt(&raw.source),
        file: file.to_owned(),
        limits,
        policies,
        permissions,
        roles,
        profiles,
    })
}

/// Validates a profile (catalog `profiles[]` or tenant `profiles[]`) whose id `pid` is already
/// defined: its `role` must be a base role of the catalog (`roles`), not a derived role of the catalog
/// or of the tenant (`custom`), and its toggles must fit that role.
pub(crate) fn profile(
    r: &mut Reader<'_>,
    raw: &raw::RawProfile,
    pid: &Str,
    roles: &BTreeMap<RoleId, Role>,
    custom: &BTreeMap<RoleId, Role>,
    permissions: &BTreeMap<PermissionId, Permission>,
) -> Option<Profile> {
    let role_name = raw.role.as_ref()?;
    let context = format!("profile '{}'", pid.value);
    let rid = RoleId::new(role_name.value.clone());
    let Some(role) = roles.get(&rid).or_else(|| custom.get(&rid)) else {
        r.error(
            role_name.at.clone(),
            ErrorKind::UnknownRole {
                context,
                role: role_name.value.clone(),
            },
        );
        return None;
    };
    if !matches!(role.kind, RoleKind::Base { .. }) {
        r.error(
            role_name.at.clone(),
            ErrorKind::NotABaseRole {
                context,
                role: role_name.value.clone(),
            },
        );
        return None;
    }
    let toggles = check_toggles(r, &context, role, &raw.toggles, permissions);
    Some(Profile {
        id: ProfileId::new(pid.value.clone()),
        name: opt(&raw.name),
        description: opt(&raw.description),
        role: role.id.clone(),
        toggles,
        at: pid.at.clone(),
    })
}

/// Derived role id -> its `base`, so a derived role based on another derived role gets a precise error.
pub(crate) fn derived_names(raw: &[&RawRole]) -> BTreeMap<String, String> {
    raw.iter()
        .filter_map(|r| Some((r.id.as_ref()?.value.clone(), r.base.as_ref()?.value.clone())))
        .collect()
}

fn positive(r: &mut Reader<'_>, key: &str, v: Option<&(u32, Location)>) -> Option<u32> {
    let (n, at) = v?;
    if *n == 0 {
        r.error(
            at.clone(),
            ErrorKind::BadValue {
                key: key.into(),
                value: "0".into(),
                expected: "a positive integer".into(),
            },
        );
        return None;
    }
    Some(*n)
}

fn role_shell(raw: &RawRole, id: &Str, max_per_tenant: Option<u32>, kind: RoleKind) -> Role {
    Role {
        id: RoleId::new(id.value.clone()),
        name: opt(&raw.name),
        description: opt(&raw.description),
        group: opt(&raw.group),
        rank: raw.rank.as_ref().map(|(n, _)| *n),
        max_per_tenant,
        protected: false,
        kind,
        at: id.at.clone(),
    }
}

/// Validates a derived role (catalog `roles[]` with `base`, or a tenant `custom_roles[]` entry).
pub(crate) fn derived_role(
    r: &mut Reader<'_>,
    raw: &RawRole,
    roles: &BTreeMap<RoleId, Role>,
    permissions: &BTreeMap<PermissionId, Permission>,
    derived: &BTreeMap<String, String>,
) -> Option<Role> {
    let id = raw.id.as_ref()?;
    let base = raw.base.as_ref()?;
    let context = format!("role '{}'", id.value);
    for (key, at) in [
        ("core", raw.core.as_ref().map(|(_, a)| a)),
        ("configurable", raw.configurable.as_ref().map(|(_, a)| a)),
        (
            "max_per_tenant",
            raw.max_per_tenant.as_ref().map(|(_, a)| a),
        ),
        ("protected", raw.protected.as_ref().map(|(_, a)| a)),
    ] {
        if let Some(at) = at {
            r.error(
                at.clone(),
                ErrorKind::DerivedWithPermissions {
                    role: id.value.clone(),
                    key: key.into(),
                },
            );
        }
    }
    let base_role = derived_base(r, &context, base, roles, derived)?;
    let toggles = raw
        .toggles
        .as_ref()
        .map(|(t, _)| t.as_slice())
        .unwrap_or_default();
    let toggles = check_toggles(r, &context, base_role, toggles, permissions);
    Some(role_shell(
        raw,
        id,
        None,
        RoleKind::Derived {
            base: base_role.id.clone(),
            toggles,
        },
    ))
}

/// One `requires` edge: `to` is required, catalog-wide (`role: None`) or by one role's entry.
struct Edge {
    to: PermissionId,
    role: Option<RoleId>,
    at: Location,
}

/// Permission -> the permissions it requires, in file order (catalog-wide edges first).
type RequiresGraph = BTreeMap<PermissionId, Vec<Edge>>;

/// Resolves a list of permission ids, reporting unknown and repeated ones; keeps each id's position.
fn id_list(
    r: &mut Reader<'_>,
    context: &str,
    ids: &[Str],
    permissions: &BTreeMap<PermissionId, Permission>,
) -> Vec<(PermissionId, Location)> {
    let mut out: Vec<(PermissionId, Location)> = Vec::new();
    for q in ids {
        let qid = PermissionId::new(q.value.clone());
        if !permissions.contains_key(&qid) {
            r.error(
                q.at.clone(),
                ErrorKind::UnknownPermission {
                    context: context.into(),
                    permission: q.value.clone(),
                },
            );
        } else if out.iter().any(|(x, _)| *x == qid) {
            r.error(
                q.at.clone(),
                ErrorKind::DuplicatePermission {
                    context: context.into(),
                    permission: q.value.clone(),
                },
            );
        } else {
            out.push((qid, q.at.clone()));
        }
    }
    out
}

/// An `implies` list (of a permission or a role's entry for `of`): like `id_list`, and `of` itself is
/// refused. A longer implication cycle is allowed: implication is a closure, so a cycle just grants
/// its members together, whereas a self-reference can only be a typo.
fn implies_list(
    r: &mut Reader<'_>,
    context: &str,
    of: &PermissionId,
    ids: &[Str],
    permissions: &BTreeMap<PermissionId, Permission>,
) -> Vec<(PermissionId, Location)> {
    let mut out = Vec::new();
    for (q, at) in id_list(r, &format!("{context} implies"), ids, permissions) {
        if &q == of {
            r.error(
                at,
                ErrorKind::ImpliesItself {
                    context: context.into(),
                    permission: q.to_string(),
                },
            );
        } else {
            out.push((q, at));
        }
    }
    out
}

/// Reports each `requires` cycle once, at the `requires` entry leaving its first permission in file
/// order. Role-scoped edges are part of the graph (shown as `-[role 'r']->`): a user holding the
/// roles involved would meet the same mutual requirement a catalog-wide cycle expresses.
fn report_cycles(r: &mut Reader<'_>, graph: &RequiresGraph, order: &[raw::RawPermission]) {
    struct Dfs<'g> {
        graph: &'g RequiresGraph,
        // 0 = unvisited, 1 = on the stack, 2 = done.
        state: BTreeMap<&'g PermissionId, u8>,
        stack: Vec<&'g PermissionId>,
        /// `edges[i]` leads from `stack[i]` to `stack[i + 1]`.
        edges: Vec<&'g Edge>,
        cycles: Vec<(Vec<&'g PermissionId>, Vec<&'g Edge>)>,
    }
    impl<'g> Dfs<'g> {
        fn visit(&mut self, p: &'g PermissionId) {
            self.state.insert(p, 1);
            self.stack.push(p);
            for e in self.graph.get(p).map(Vec::as_slice).unwrap_or_default() {
                match self.state.get(&e.to).copied().unwrap_or(0) {
                    0 => {
                        self.edges.push(e);
                        self.visit(&e.to);
                        self.edges.pop();
                    }
                    1 => {
                        if let Some(start) = self.stack.iter().position(|s| **s == e.to) {
                            let mut edges = self.edges[start..].to_vec();
                            edges.push(e);
                            self.cycles.push((self.stack[start..].to_vec(), edges));
                        }
                    }
                    _ => {}
                }
            }
            self.stack.pop();
            self.state.insert(p, 2);
        }
    }
    let ids: Vec<PermissionId> = order
        .iter()
        .filter_map(|p| p.id.as_ref())
        .map(|s| PermissionId::new(s.value.clone()))
        .collect();
    let mut dfs = Dfs {
        graph,
        state: BTreeMap::new(),
        stack: Vec::new(),
        edges: Vec::new(),
        cycles: Vec::new(),
    };
    for p in &ids {
        if let Some(key) = graph.get_key_value(p).map(|(k, _)| k) {
            if dfs.state.get(key).copied().unwrap_or(0) == 0 {
                dfs.visit(key);
            }
        }
    }
    let mut reported: BTreeSet<BTreeSet<&PermissionId>> = BTreeSet::new();
    for (nodes, edges) in dfs.cycles {
        if !reported.insert(nodes.iter().copied().collect()) {
            continue;
        }
        // Start the cycle at its first permission in file order so the message is stable.
        let first = ids
            .iter()
            .find_map(|i| nodes.iter().position(|n| *n == i))
            .unwrap_or(0);
        let n = nodes.len();
        let mut text = format!("'{}'", nodes[first]);
        for k in 0..n {
            let e = edges[(first + k) % n];
            match &e.role {
                None => text.push_str(&format!(" -> '{}'", e.to)),
                Some(role) => text.push_str(&format!(" -[role '{role}']-> '{}'", e.to)),
            }
        }
        r.error(edges[first].at.clone(), ErrorKind::RequiresCycle(text));
    }
}
