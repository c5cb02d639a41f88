//! Tenant mappings: the validate step for `tenants/*.yaml` and the compiled, ready-to-compute form.
//! Owns `CompiledTenant`, `Rule`, `Matcher` and `Target`; imports `raw`, `validate` helpers, `catalog`,
//! `compile`. Invariant: every rule of a `CompiledTenant` assigns only targets that exist in its
//! catalog or its own custom roles and profiles, every regex compiled, and every `account_defaults`
//! entry answers a `default: account` of some role.

use crate::catalog::{Catalog, DefaultState, Profile, Role, RoleKind};
use crate::compile::{compile_targets, CompiledTarget};
use crate::error::{ErrorKind, Location, MappingError};
use crate::ids::{PermissionId, ProfileId, RoleId, RuleId, TenantName};
use crate::raw::{self, AssignKey, Reader, Str};
use crate::validate::{self, derived_role, on_off, Seen};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

/// Something a rule can assign. Roles, profiles and custom roles share one id namespace per tenant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Target {
    /// A base role of the catalog (`assign.roles`).
    Role(RoleId),
    /// A derived role, from the catalog or the tenant's `custom_roles` (`assign.custom_roles`).
    CustomRole(RoleId),
    /// A profile of the catalog or of the tenant's `profiles` (`assign.profiles`).
    Profile(ProfileId),
}

impl Target {
    pub fn id(&self) -> &str {
        match self {
            Target::Role(r) | Target::CustomRole(r) => r.as_str(),
            Target::Profile(p) => p.as_str(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Role(r) => write!(f, "role '{r}'"),
            Target::CustomRole(r) => write!(f, "custom role '{r}'"),
            Target::Profile(p) => write!(f, "profile '{p}'"),
        }
    }
}

/// A validated, compiled tenant mapping; cheap to clone (one `Arc`), so results can keep it.
#[derive(Debug, Clone)]
pub struct CompiledTenant {
    pub(crate) inner: Arc<TenantInner>,
}

#[derive(Debug)]
pub(crate) struct TenantInner {
    pub name: TenantName,
    pub file: String,
    pub catalog: Arc<Catalog>,
    pub default_role: Option<(Target, Location)>,
    pub account_defaults: BTreeMap<PermissionId, bool>,
    pub custom_roles: BTreeMap<RoleId, Role>,
    pub profiles: BTreeMap<ProfileId, Profile>,
    pub rules: Vec<Rule>,
    pub targets: BTreeMap<Target, CompiledTarget>,
}

impl CompiledTenant {
    pub fn name(&self) -> &TenantName {
        &self.inner.name
    }
    pub fn file(&self) -> &str {
        &self.inner.file
    }
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.inner.catalog
    }
    /// Assigned to every active user, below every rule (mappings/README.md `default_role`).
    pub fn default_role(&self) -> Option<&Target> {
        self.inner.default_role.as_ref().map(|(t, _)| t)
    }
    /// The tenant's answers to `default: account` permissions.
    pub fn account_defaults(&self) -> &BTreeMap<PermissionId, bool> {
        &self.inner.account_defaults
    }
    pub fn rules(&self) -> &[Rule] {
        &self.inner.rules
    }
    pub fn custom_roles(&self) -> &BTreeMap<RoleId, Role> {
        &self.inner.custom_roles
    }
    /// The tenant's own profiles (`profiles:` of the tenant file); the catalog's are in `catalog()`.
    pub fn profiles(&self) -> &BTreeMap<ProfileId, Profile> {
        &self.inner.profiles
    }
    /// A profile of the tenant or of its catalog: they share one namespace, so at most one matches.
    pub fn profile(&self, id: &ProfileId) -> Option<&Profile> {
        self.inner
            .profiles
            .get(id)
            .or_else(|| self.inner.catalog.profiles.get(id))
    }
    /// Per assignable target: its base role and the state of every permission it lists.
    pub fn targets(&self) -> &BTreeMap<Target, CompiledTarget> {
        &self.inner.targets
    }
    /// Whether the tenant's catalog defines `id`; lets the HTTP layer reject unknown permissions.
    pub fn has_permission(&self, id: &PermissionId) -> bool {
        self.inner.catalog.permissions.contains_key(id)
    }
}

/// One `rules[]` entry.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Position in the file, 0-based: the tie-breaker after priority.
    pub index: usize,
    pub id: Option<RuleId>,
    pub at: Location,
    pub priority: i64,
    pub matcher: Matcher,
    /// In document order (the third sort key of candidates).
    pub assign: Vec<Target>,
}

impl Rule {
    /// `'id'` or `#index`, as explain shows it.
    pub fn label(&self) -> String {
        match &self.id {
            Some(id) => format!("'{id}'"),
            None => format!("#{}", self.index),
        }
    }
}

/// All given fields must match the same group.
#[derive(Debug, Clone)]
pub struct Matcher {
    /// Case-insensitive equality with the group's displayName.
    pub display_name: Option<String>,
    /// Exact equality with the group's externalId.
    pub external_id: Option<String>,
    /// Case-insensitive equality with the group's LDAP DN, ignoring spaces around commas.
    pub dn: Option<String>,
    /// Unanchored search in the displayName.
    pub name_regex: Option<regex::Regex>,
    /// Exact equality with the provisioning source label.
    pub source: Option<String>,
}

impl Matcher {
    pub fn matches(&self, g: &crate::compute::GroupFact) -> bool {
        self.display_name
            .as_ref()
            .is_none_or(|n| n.to_lowercase() == g.display_name.to_lowercase())
            && self
                .external_id
                .as_ref()
                .is_none_or(|e| g.external_id.as_deref() == Some(e.as_str()))
            && self.dn.as_ref().is_none_or(|d| {
                g.dn.as_deref()
                    .is_some_and(|gd| normalize_dn(gd) == normalize_dn(d))
            })
            && self
                .name_regex
                .as_ref()
                .is_none_or(|re| re.is_match(&g.display_name))
            && self
                .source
                .as_ref()
                .is_none_or(|s| g.source.as_deref() == Some(s.as_str()))
    }
}

fn normalize_dn(dn: &str) -> String {
    dn.split(',')
        .map(|p| p.trim().to_lowercase())
        .collect::<Vec<_>>()
        .join(",")
}

fn valid_tenant_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some('a'..='z' | '0'..='9'))
        && c.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '_'))
}

pub(crate) fn validate_tenant(
    file: &str,
    stem: &str,
    text: &str,
    catalogs: &BTreeMap<crate::ids::CatalogId, Arc<Catalog>>,
    known_catalogs: &BTreeSet<String>,
    errors: &mut Vec<MappingError>,
) -> Option<CompiledTenant> {
    let before = errors.len();
    let mut r = Reader::new(file, errors);
    let raw = raw::read_tenant(&mut r, text)?;
    if !valid_tenant_name(stem) {
        r.error(
            Location {
                file: file.to_owned(),
                line: 1,
                column: 1,
            },
            ErrorKind::BadTenantName(stem.to_owned()),
        );
    }
    let catalog_name = raw.catalog.as_ref()?;
    let Some(catalog) = catalogs.get(&crate::ids::CatalogId::new(catalog_name.value.clone()))
    else {
        // A catalog that exists but failed validation already has its own errors.
        if !known_catalogs.contains(&catalog_name.value) {
            let known: Vec<&str> = known_catalogs.iter().map(String::as_str).collect();
            r.error(
                catalog_name.at.clone(),
                ErrorKind::UnknownCatalog {
                    catalog: catalog_name.value.clone(),
                    known: known.join(", "),
                },
            );
        }
        return None;
    };

    let mut account_defaults = BTreeMap::new();
    for t in &raw.account_defaults {
        let pid = PermissionId::new(t.permission.value.clone());
        let state = on_off(&mut r, &t.permission.value, &t.state);
        if !catalog.permissions.contains_key(&pid) {
            r.error(
                t.permission.at.clone(),
                ErrorKind::UnknownPermission {
                    context: "account_defaults".into(),
                    permission: pid.to_string(),
                },
            );
        } else if let Some(kind) = not_an_account_default(catalog, &pid) {
            r.error(t.permission.at.clone(), kind);
        } else if let Some(s) = state {
            account_defaults.insert(pid, s);
        }
    }

    // Custom roles share the namespace of catalog roles and profiles.
    let mut seen = Seen::default();
    let mut custom_roles = BTreeMap::new();
    let raw_custom: Vec<&raw::RawRole> = raw.custom_roles.iter().collect();
    let custom_names = crate::validate::derived_names(&raw_custom);
    for c in &raw.custom_roles {
        let Some(id) = &c.id else { continue };
        let rid = RoleId::new(id.value.clone());
        if clashes_with_catalog(&mut r, catalog, id, "custom role") {
            continue;
        }
        if !seen.define(&mut r, id, "custom role") {
            continue;
        }
        match &c.base {
            None => r.error(
                c.at.clone(),
                ErrorKind::MissingKey {
                    context: "custom role".into(),
                    key: "base".into(),
                },
            ),
            Some(_) => {
                if let Some(role) = derived_role(
                    &mut r,
                    c,
                    &catalog.roles,
                    &catalog.permissions,
                    &custom_names,
                ) {
                    custom_roles.insert(rid, role);
                }
            }
        }
    }

    // Tenant profiles: the shape of catalog profiles, in the same namespace as every assignable id.
    let mut profiles = BTreeMap::new();
    for p in &raw.profiles {
        let Some(id) = &p.id else { continue };
        if clashes_with_catalog(&mut r, catalog, id, "profile") {
            continue;
        }
        if !seen.define(&mut r, id, "profile") {
            continue;
        }
        if let Some(profile) = validate::profile(
            &mut r,
            p,
            id,
            &catalog.roles,
            &custom_roles,
            &catalog.permissions,
        ) {
            profiles.insert(profile.id.clone(), profile);
        }
    }

    let resolve =
        |r: &mut Reader<'_>, key: Option<AssignKey>, s: &Str, context: &str| -> Option<Target> {
            let rid = RoleId::new(s.value.clone());
            let found = if let Some(role) = catalog.roles.get(&rid) {
                match role.kind {
                    RoleKind::Base { .. } => Some((Target::Role(rid), "a base role", "roles")),
                    RoleKind::Derived { .. } => {
                        Some((Target::CustomRole(rid), "a derived role", "custom_roles"))
                    }
                }
            } else if custom_roles.contains_key(&rid) {
                Some((Target::CustomRole(rid), "a custom role", "custom_roles"))
            } else if catalog
                .profiles
                .contains_key(&ProfileId::new(s.value.clone()))
                || profiles.contains_key(&ProfileId::new(s.value.clone()))
            {
                Some((
                    Target::Profile(ProfileId::new(s.value.clone())),
                    "a profile",
                    "profiles",
                ))
            } else {
                None
            };
            let (context, value) = (context.to_owned(), s.value.clone());
            let expected = match key {
                Some(AssignKey::Roles) => "roles",
                Some(AssignKey::Profiles) => "profiles",
                Some(AssignKey::CustomRoles) => "custom_roles",
                None => "",
            };
            match found {
                Some((t, _, k)) if key.is_none() || k == expected => Some(t),
                Some((_, actual, k)) => {
                    r.error(
                        s.at.clone(),
                        ErrorKind::WrongAssignKind {
                            context,
                            id: value,
                            actual: actual.into(),
                            expected_key: k.into(),
                        },
                    );
                    None
                }
                None => {
                    let kind = match key {
                        Some(AssignKey::Profiles) => ErrorKind::UnknownProfile {
                            context,
                            profile: value,
                        },
                        Some(AssignKey::CustomRoles) => ErrorKind::UnknownCustomRole {
                            context,
                            role: value,
                        },
                        _ => ErrorKind::UnknownRole {
                            context,
                            role: value,
                        },
                    };
                    r.error(s.at.clone(), kind);
                    None
                }
            }
        };

    let default_role = raw
        .default_role
        .as_ref()
        .and_then(|d| resolve(&mut r, None, d, "default_role").map(|t| (t, d.at.clone())));

    let mut rule_ids = Seen::default();
    let mut rules = Vec::new();
    for (index, rr) in raw.rules.iter().enumerate() {
        if let Some(id) = &rr.id {
            rule_ids.define(&mut r, id, "rule");
        }
        let context = match &rr.id {
            Some(id) => format!("rule '{}'", id.value),
            None => format!("rule #{index}"),
        };
        let mut matcher = Matcher {
            display_name: None,
            external_id: None,
            dn: None,
            name_regex: None,
            source: None,
        };
        if let Some(m) = &rr.matcher {
            matcher.display_name = m.display_name.as_ref().map(|s| s.value.clone());
            matcher.external_id = m.external_id.as_ref().map(|s| s.value.clone());
            matcher.dn = m.dn.as_ref().map(|s| s.value.clone());
            matcher.source = m.source.as_ref().map(|s| s.value.clone());
            if let Some(re) = &m.name_regex {
                match regex::Regex::new(&re.value) {
                    Ok(compiled) => matcher.name_regex = Some(compiled),
                    Err(e) => {
                        let error = e
                            .to_string()
                            .lines()
                            .last()
                            .unwrap_or_default()
                            .trim()
                            .to_owned();
                        r.error(
                            re.at.clone(),
                            ErrorKind::BadRegex {
                                pattern: re.value.clone(),
                                error,
                            },
                        );
                    }
                }
            }
            if m.display_name.is_none()
                && m.external_id.is_none()
                && m.dn.is_none()
                && m.name_regex.is_none()
            {
                r.error(
                    m.at.clone().unwrap_or_else(|| rr.at.clone()),
                    ErrorKind::EmptyMatch(context.clone()),
                );
            }
        }
        let mut assign = Vec::new();
        if let Some(a) = &rr.assign {
            for (key, s) in &a.items {
                if let Some(t) = resolve(&mut r, Some(*key), s, &context) {
                    if !assign.contains(&t) {
                        assign.push(t);
                    }
                }
            }
            if a.items.is_empty() {
                r.error(a.at.clone(), ErrorKind::EmptyAssign(context.clone()));
            }
        }
        rules.push(Rule {
            index,
            id: rr.id.as_ref().map(|s| RuleId::new(s.value.clone())),
            at: rr.at.clone(),
            priority: rr.priority.as_ref().map_or(0, |(p, _)| *p),
            matcher,
            assign,
        });
    }
    if errors.len() > before {
        return None;
    }
    let targets = compile_targets(catalog, &custom_roles, &profiles, &account_defaults);
    Some(CompiledTenant {
        inner: Arc::new(TenantInner {
            name: TenantName::new(stem),
            file: file.to_owned(),
            catalog: Arc::clone(catalog),
            default_role,
            account_defaults,
            custom_roles,
            profiles,
            rules,
            targets,
        }),
    })
}

/// Why `p` (a permission of `catalog`) cannot be an `account_defaults` entry, if it cannot: the tenant's
/// answer is read only for `default: account` entries, so any other entry would be silently ignored.
/// A tenant-defined assignable id (custom role, profile) that a catalog role or profile already
/// uses: reported as a duplicate at the tenant's id, naming where the catalog defines it.
fn clashes_with_catalog(r: &mut Reader<'_>, catalog: &Catalog, id: &Str, what: &str) -> bool {
    let first = catalog
        .roles
        .get(&RoleId::new(id.value.clone()))
        .map(|x| x.at.clone())
        .or_else(|| {
            catalog
                .profiles
                .get(&ProfileId::new(id.value.clone()))
                .map(|x| x.at.clone())
        });
    let Some(first) = first else { return false };
    r.error(
        id.at.clone(),
        ErrorKind::DuplicateId {
            what: what.into(),
            id: id.value.clone(),
            first: first.to_string(),
        },
    );
    true
}

fn not_an_account_default(catalog: &Catalog, p: &PermissionId) -> Option<ErrorKind> {
    let mut core_in = Vec::new();
    let mut defaults = Vec::new();
    for role in catalog.roles.values() {
        let RoleKind::Base { core, .. } = &role.kind else {
            continue;
        };
        if core.contains(p) {
            core_in.push(format!("'{}'", role.id));
        } else if let Some(c) = role.configurable(p) {
            let state = match c.default {
                DefaultState::Account => return None,
                DefaultState::On => "on",
                DefaultState::Off => "off",
            };
            defaults.push(format!("{state} in role '{}'", role.id));
        }
    }
    if !core_in.is_empty() {
        let roles = match core_in.len() {
            1 => format!("role {}", core_in.join(", ")),
            _ => format!("roles {}", core_in.join(", ")),
        };
        return Some(ErrorKind::AccountDefaultCore {
            permission: p.to_string(),
            roles,
        });
    }
    let defaults = if defaults.is_empty() {
        "no role lists it".to_owned()
    } else {
        format!("default {}", defaults.join(", "))
    };
    Some(ErrorKind::AccountDefaultNotAccount {
        permission: p.to_string(),
        catalog: catalog.id.to_string(),
        defaults,
    })
}
