//! The parse step: YAML text to `Raw*` structs that keep the position of every value. Owns the YAML
//! reader (`marked-yaml`, YAML 1.2: every scalar stays a string, so `on`/`off` are not booleans) and the
//! strict key check. Imports `error` only. Invariant: nothing here resolves a reference; unknown keys,
//! missing keys and wrong shapes are reported, everything else is left to `validate`.

use crate::error::{ErrorKind, Location, MappingError};
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{LoadError, LoaderOptions, Node, Span};

/// A string value with where it was written.
#[derive(Debug, Clone)]
pub(crate) struct Str {
    pub value: String,
    pub at: Location,
}

/// A `key: value` pair of a toggle map (`toggles`, `account_defaults`).
#[derive(Debug, Clone)]
pub(crate) struct RawToggle {
    pub permission: Str,
    pub state: Str,
}

#[derive(Debug, Default)]
pub(crate) struct RawCatalog {
    pub id: Option<Str>,
    pub name: Option<Str>,
    pub description: Option<Str>,
    pub source: Option<Str>,
    pub combinable_roles: Option<(bool, Location)>,
    pub max_profiles_per_user: Option<(u32, Location)>,
    pub max_profiles_per_role_per_user: Option<(u32, Location)>,
    pub policies: Vec<RawPolicy>,
    pub permissions: Vec<RawPermission>,
    pub roles: Vec<RawRole>,
    pub profiles: Vec<RawProfile>,
}

#[derive(Debug)]
pub(crate) struct RawPolicy {
    pub id: Option<Str>,
    pub text: Option<Str>,
    pub roles: Vec<Str>,
}

#[derive(Debug)]
pub(crate) struct RawPermission {
    pub id: Option<Str>,
    pub name: Option<Str>,
    pub description: Option<Str>,
    pub area: Option<Str>,
    pub level: Option<Str>,
    pub requires: Vec<Str>,
    pub implies: Vec<Str>,
}

/// A catalog role or a tenant custom role (which may only use `id`, `name`, `description`, `base`, `toggles`).
#[derive(Debug)]
pub(crate) struct RawRole {
    pub id: Option<Str>,
    pub at: Location,
    pub name: Option<Str>,
    pub description: Option<Str>,
    pub group: Option<Str>,
    pub rank: Option<(i64, Location)>,
    pub max_per_tenant: Option<(u32, Location)>,
    pub protected: Option<(bool, Location)>,
    pub core: Option<(Vec<Str>, Location)>,
    pub configurable: Option<(Vec<RawConfigurable>, Location)>,
    pub base: Option<Str>,
    pub toggles: Option<(Vec<RawToggle>, Location)>,
}

#[derive(Debug)]
pub(crate) struct RawConfigurable {
    pub permission: Option<Str>,
    pub default: Option<Str>,
    pub name: Option<Str>,
    pub description: Option<Str>,
    /// Role-scoped `requires` and `implies`: they apply only to this role's grant of the permission.
    pub requires: Vec<Str>,
    pub implies: Vec<Str>,
}

/// A `profiles[]` entry of a catalog or of a tenant file (same shape in both).
#[derive(Debug)]
pub(crate) struct RawProfile {
    pub id: Option<Str>,
    pub name: Option<Str>,
    pub description: Option<Str>,
    pub role: Option<Str>,
    pub toggles: Vec<RawToggle>,
}

#[derive(Debug, Default)]
pub(crate) struct RawTenant {
    pub catalog: Option<Str>,
    pub default_role: Option<Str>,
    pub account_defaults: Vec<RawToggle>,
    pub custom_roles: Vec<RawRole>,
    pub profiles: Vec<RawProfile>,
    pub rules: Vec<RawRule>,
}

#[derive(Debug)]
pub(crate) struct RawRule {
    pub at: Location,
    pub id: Option<Str>,
    pub matcher: Option<RawMatch>,
    pub assign: Option<RawAssign>,
    pub priority: Option<(i64, Location)>,
}

#[derive(Debug, Default)]
pub(crate) struct RawMatch {
    pub at: Option<Location>,
    pub display_name: Option<Str>,
    pub external_id: Option<Str>,
    pub dn: Option<Str>,
    pub name_regex: Option<Str>,
    pub source: Option<Str>,
}

/// Which list of `assign` an id came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AssignKey {
    Roles,
    Profiles,
    CustomRoles,
}

#[derive(Debug)]
pub(crate) struct RawAssign {
    pub at: Location,
    /// In document order: this order is the "position in the assign list" used to break ties.
    pub items: Vec<(AssignKey, Str)>,
}

/// Collects errors for one file while walking its nodes.
pub(crate) struct Reader<'e> {
    pub file: String,
    pub errors: &'e mut Vec<MappingError>,
    /// Line and column just past the last character of the text given to [`Reader::parse`]. The YAML
    /// scanner ends a text that lacks a final line break with one of its own, so a syntax error or an
    /// empty value at the end would be reported on a line the file does not have; positions are
    /// clamped to this one.
    end: (usize, usize),
}

/// Line and column just past the last character of `text`, counting line breaks as the YAML 1.2
/// scanner does (`\n`, `\r\n`, a lone `\r`).
fn end_of(text: &str) -> (usize, usize) {
    let (mut line, mut column) = (1, 1);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            '\r' | '\n' => {
                line += 1;
                column = 1;
            }
            _ => column += 1,
        }
    }
    (line, column)
}

impl<'e> Reader<'e> {
    pub fn new(file: &str, errors: &'e mut Vec<MappingError>) -> Self {
        Reader {
            file: file.to_owned(),
            errors,
            end: (usize::MAX, usize::MAX),
        }
    }
}

impl Reader<'_> {
    pub fn error(&mut self, at: Location, kind: ErrorKind) {
        self.errors.push(MappingError { at, kind });
    }

    /// The location of a 1-based position, no later than the end of the text.
    fn at(&self, line: usize, column: usize) -> Location {
        let (line, column) = if (line, column) > self.end {
            self.end
        } else {
            (line, column)
        };
        Location {
            file: self.file.clone(),
            line,
            column,
        }
    }

    fn loc(&self, span: &Span) -> Location {
        let (line, column) = span.start().map_or((1, 1), |m| (m.line(), m.column()));
        self.at(line, column)
    }

    /// Parses YAML text into its top-level mapping, reporting a syntax error with its position.
    pub fn parse(&mut self, text: &str) -> Option<Node> {
        self.end = end_of(text);
        let options = LoaderOptions::default()
            .error_on_duplicate_keys(true)
            .prevent_coercion(true);
        match marked_yaml::parse_yaml_with_options(0, text, options) {
            Ok(node) => Some(node),
            Err(err) => {
                let (marker, kind) = match err {
                    LoadError::TopLevelMustBeMapping(m) => {
                        (m, ErrorKind::Yaml("the top level must be a mapping".into()))
                    }
                    LoadError::TopLevelMustBeSequence(m) => (
                        m,
                        ErrorKind::Yaml("the top level must be a sequence".into()),
                    ),
                    LoadError::UnexpectedAnchor(m) => (
                        m,
                        ErrorKind::Yaml("anchors and aliases are not supported".into()),
                    ),
                    LoadError::MappingKeyMustBeScalar(m) => (
                        m,
                        ErrorKind::Yaml("mapping keys must be plain strings".into()),
                    ),
                    LoadError::UnexpectedTag(m) => {
                        (m, ErrorKind::Yaml("explicit tags are not supported".into()))
                    }
                    LoadError::ScanError(m, e) => (m, ErrorKind::Yaml(e.info().to_owned())),
                    LoadError::DuplicateKey(inner) => {
                        let key = inner.key.as_str().to_owned();
                        match inner.key.span().start() {
                            Some(m) => (*m, ErrorKind::DuplicateKey(key)),
                            None => (
                                marked_yaml::Marker::new(0, 0, 1, 1),
                                ErrorKind::DuplicateKey(key),
                            ),
                        }
                    }
                };
                let at = self.at(marker.line(), marker.column());
                self.error(at, kind);
                None
            }
        }
    }

    /// Views `node` as a mapping with the allowed keys; reports unknown keys and a wrong shape.
    pub fn object<'n>(
        &mut self,
        node: &'n Node,
        key: &str,
        context: &str,
        allowed: &[&str],
    ) -> Option<Obj<'n>> {
        let Some(map) = node.as_mapping() else {
            let at = self.loc(node.span());
            self.error(
                at,
                ErrorKind::WrongType {
                    key: key.to_owned(),
                    expected: "a mapping".into(),
                },
            );
            return None;
        };
        for k in map.keys() {
            if !allowed.contains(&k.as_str()) {
                let at = self.loc(k.span());
                self.error(
                    at,
                    ErrorKind::UnknownKey {
                        key: k.as_str().to_owned(),
                        context: context.to_owned(),
                        expected: allowed.join(", "),
                    },
                );
            }
        }
        // A block mapping's span starts at its first value; point at its first key instead.
        let at = match map.keys().next() {
            Some(first) => self.loc(first.span()),
            None => self.loc(node.span()),
        };
        Some(Obj {
            map,
            at,
            context: context.to_owned(),
        })
    }

    /// The elements of a sequence value; an empty value (`key:`) is an empty list.
    pub fn list<'n>(&mut self, node: &'n Node, key: &str) -> Vec<&'n Node> {
        match node {
            Node::Sequence(seq) => seq.iter().collect(),
            Node::Scalar(s) if s.as_str().is_empty() => Vec::new(),
            _ => {
                let at = self.loc(node.span());
                self.error(
                    at,
                    ErrorKind::WrongType {
                        key: key.to_owned(),
                        expected: "a list".into(),
                    },
                );
                Vec::new()
            }
        }
    }

    /// A scalar value as a string.
    pub fn scalar(&mut self, node: &Node, key: &str) -> Option<Str> {
        match node.as_scalar() {
            Some(s) => Some(self.str_of(s)),
            None => {
                let at = self.loc(node.span());
                self.error(
                    at,
                    ErrorKind::WrongType {
                        key: key.to_owned(),
                        expected: "a string".into(),
                    },
                );
                None
            }
        }
    }

    fn str_of(&self, s: &MarkedScalarNode) -> Str {
        Str {
            value: s.as_str().to_owned(),
            at: self.loc(s.span()),
        }
    }

    /// A `permission: on|off` map, in document order.
    pub fn toggles(&mut self, node: &Node, key: &str) -> Vec<RawToggle> {
        match node {
            Node::Mapping(map) => map
                .iter()
                .filter_map(|(k, v)| {
                    let state = self.scalar(v, k.as_str())?;
                    Some(RawToggle {
                        permission: self.str_of(k),
                        state,
                    })
                })
                .collect(),
            Node::Scalar(s) if s.as_str().is_empty() => Vec::new(),
            _ => {
                let at = self.loc(node.span());
                self.error(
                    at,
                    ErrorKind::WrongType {
                        key: key.to_owned(),
                        expected: "a mapping of permission: on|off".into(),
                    },
                );
                Vec::new()
            }
        }
    }

    pub fn str_list(&mut self, node: &Node, key: &str) -> Vec<Str> {
        self.list(node, key)
            .into_iter()
            .filter_map(|n| self.scalar(n, key))
            .collect()
    }

    pub fn int<T: std::str::FromStr>(
        &mut self,
        node: &Node,
        key: &str,
        expected: &str,
    ) -> Option<(T, Location)> {
        let s = self.scalar(node, key)?;
        match s.value.parse::<T>() {
            Ok(v) => Some((v, s.at)),
            Err(_) => {
                self.error(
                    s.at,
                    ErrorKind::BadValue {
                        key: key.to_owned(),
                        value: s.value,
                        expected: expected.to_owned(),
                    },
                );
                None
            }
        }
    }

    /// `true`/`false` (YAML 1.2); `yes`/`no`/`on`/`off` are refused so YAML 1.1 habits do not slip in.
    pub fn boolean(&mut self, node: &Node, key: &str) -> Option<(bool, Location)> {
        let s = self.scalar(node, key)?;
        match s.value.as_str() {
            "true" => Some((true, s.at)),
            "false" => Some((false, s.at)),
            _ => {
                self.error(
                    s.at,
                    ErrorKind::BadValue {
                        key: key.to_owned(),
                        value: s.value,
                        expected: "true or false".into(),
                    },
                );
                None
            }
        }
    }
}

/// A mapping node whose keys were checked against an allow list.
pub(crate) struct Obj<'n> {
    pub map: &'n MarkedMappingNode,
    pub at: Location,
    pub context: String,
}

impl<'n> Obj<'n> {
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.map.get_node(key)
    }

    pub fn opt_str(&self, r: &mut Reader<'_>, key: &str) -> Option<Str> {
        self.get(key).and_then(|n| r.scalar(n, key))
    }

    pub fn req_str(&self, r: &mut Reader<'_>, key: &str) -> Option<Str> {
        match self.get(key) {
            Some(n) => r.scalar(n, key),
            None => {
                r.error(
                    self.at.clone(),
                    ErrorKind::MissingKey {
                        context: self.context.clone(),
                        key: key.to_owned(),
                    },
                );
                None
            }
        }
    }

    pub fn str_list(&self, r: &mut Reader<'_>, key: &str) -> Vec<Str> {
        self.get(key)
            .map(|n| r.str_list(n, key))
            .unwrap_or_default()
    }
}

const CATALOG_KEYS: &[&str] = &[
    "catalog",
    "limits",
    "policies",
    "permissions",
    "roles",
    "profiles",
];
const HEADER_KEYS: &[&str] = &["id", "name", "description", "source"];
const LIMIT_KEYS: &[&str] = &[
    "combinable_roles",
    "max_profiles_per_user",
    "max_profiles_per_role_per_user",
];
const POLICY_KEYS: &[&str] = &["id", "text", "roles"];
const PERMISSION_KEYS: &[&str] = &[
    "id",
    "name",
    "description",
    "area",
    "level",
    "requires",
    "implies",
];
const ROLE_KEYS: &[&str] = &[
    "id",
    "name",
    "description",
    "group",
    "rank",
    "max_per_tenant",
    "protected",
    "core",
    "configurable",
    "base",
    "toggles",
];
const CUSTOM_ROLE_KEYS: &[&str] = &["id", "name", "description", "base", "toggles"];
const CONFIGURABLE_KEYS: &[&str] = &[
    "permission",
    "default",
    "name",
    "description",
    "requires",
    "implies",
];
const PROFILE_KEYS: &[&str] = &["id", "name", "description", "role", "toggles"];
const TENANT_KEYS: &[&str] = &[
    "catalog",
    "default_role",
    "account_defaults",
    "custom_roles",
    "profiles",
    "rules",
];
const RULE_KEYS: &[&str] = &["id", "match", "assign", "priority"];
const MATCH_KEYS: &[&str] = &["display_name", "external_id", "dn", "name_regex", "source"];
const ASSIGN_KEYS: &[&str] = &["roles", "profiles", "custom_roles"];

/// Reads a catalog file; `None` only when the YAML itself is unreadable.
pub(crate) fn read_catalog(r: &mut Reader<'_>, text: &str) -> Option<RawCatalog> {
    let root = r.parse(text)?;
    let top = r.object(&root, "catalog file", "catalog file", CATALOG_KEYS)?;
    let mut raw = RawCatalog::default();
    match top.get("catalog") {
        Some(n) => {
            if let Some(h) = r.object(n, "catalog", "catalog", HEADER_KEYS) {
                raw.id = h.req_str(r, "id");
                raw.name = h.opt_str(r, "name");
                raw.description = h.opt_str(r, "description");
                raw.source = h.opt_str(r, "source");
            }
        }
        None => r.error(
            top.at.clone(),
            ErrorKind::MissingKey {
                context: "catalog file".into(),
                key: "catalog".into(),
            },
        ),
    }
    if let Some(n) = top.get("limits") {
        if let Some(l) = r.object(n, "limits", "limits", LIMIT_KEYS) {
            raw.combinable_roles = l
                .get("combinable_roles")
                .and_then(|n| r.boolean(n, "combinable_roles"));
            for (key, slot) in [
                ("max_profiles_per_user", &mut raw.max_profiles_per_user),
                (
                    "max_profiles_per_role_per_user",
                    &mut raw.max_profiles_per_role_per_user,
                ),
            ] {
                *slot = l.get(key).and_then(|n| r.int(n, key, "a positive integer"));
            }
        }
    }
    for n in top
        .get("policies")
        .map(|n| r.list(n, "policies"))
        .unwrap_or_default()
    {
        if let Some(o) = r.object(n, "policies", "policy", POLICY_KEYS) {
            raw.policies.push(RawPolicy {
                id: o.req_str(r, "id"),
                text: o.req_str(r, "text"),
                roles: o.str_list(r, "roles"),
            });
        }
    }
    for n in top
        .get("permissions")
        .map(|n| r.list(n, "permissions"))
        .unwrap_or_default()
    {
        if let Some(o) = r.object(n, "permissions", "permission", PERMISSION_KEYS) {
            raw.permissions.push(RawPermission {
                id: o.req_str(r, "id"),
                name: o.opt_str(r, "name"),
                description: o.req_str(r, "description"),
                area: o.opt_str(r, "area"),
                level: o.opt_str(r, "level"),
                requires: o.str_list(r, "requires"),
                implies: o.str_list(r, "implies"),
            });
        }
    }
    for n in top
        .get("roles")
        .map(|n| r.list(n, "roles"))
        .unwrap_or_default()
    {
        if let Some(role) = read_role(r, n, ROLE_KEYS, "role") {
            raw.roles.push(role);
        }
    }
    raw.profiles = read_profiles(r, top.get("profiles"));
    Some(raw)
}

/// The `profiles` list of a catalog or a tenant file: one reader, so both files accept the same shape.
fn read_profiles(r: &mut Reader<'_>, node: Option<&Node>) -> Vec<RawProfile> {
    let mut out = Vec::new();
    for n in node.map(|n| r.list(n, "profiles")).unwrap_or_default() {
        if let Some(o) = r.object(n, "profiles", "profile", PROFILE_KEYS) {
            out.push(RawProfile {
                id: o.req_str(r, "id"),
                name: o.opt_str(r, "name"),
                description: o.opt_str(r, "description"),
                role: o.req_str(r, "role"),
                toggles: o
                    .get("toggles")
                    .map(|n| r.toggles(n, "toggles"))
                    .unwrap_or_default(),
            });
        }
    }
    out
}

fn read_role(r: &mut Reader<'_>, n: &Node, keys: &[&str], what: &str) -> Option<RawRole> {
    let o = r.object(n, what, what, keys)?;
    let core = o
        .get("core")
        .map(|n| (r.str_list(n, "core"), r.loc(n.span())));
    let configurable = o.get("configurable").map(|cn| {
        let at = r.loc(cn.span());
        let items = r
            .list(cn, "configurable")
            .into_iter()
            .filter_map(|e| {
                let c = r.object(e, "configurable", "configurable entry", CONFIGURABLE_KEYS)?;
                Some(RawConfigurable {
                    permission: c.req_str(r, "permission"),
                    default: c.req_str(r, "default"),
                    name: c.opt_str(r, "name"),
                    description: c.opt_str(r, "description"),
                    requires: c.str_list(r, "requires"),
                    implies: c.str_list(r, "implies"),
                })
            })
            .collect();
        (items, at)
    });
    Some(RawRole {
        id: o.req_str(r, "id"),
        at: o.at.clone(),
        name: o.opt_str(r, "name"),
        description: o.opt_str(r, "description"),
        group: o.opt_str(r, "group"),
        rank: o.get("rank").and_then(|n| r.int(n, "rank", "an integer")),
        max_per_tenant: o
            .get("max_per_tenant")
            .and_then(|n| r.int(n, "max_per_tenant", "a positive integer")),
        // Read only where allowed, so a custom role's `protected` is reported once (as an unknown key).
        protected: o
            .get("protected")
            .filter(|_| keys.contains(&"protected"))
            .and_then(|n| r.boolean(n, "protected")),
        core,
        configurable,
        base: o.opt_str(r, "base"),
        toggles: o
            .get("toggles")
            .map(|n| (r.toggles(n, "toggles"), r.loc(n.span()))),
    })
}

/// Reads a tenant mapping file; `None` only when the YAML itself is unreadable.
pub(crate) fn read_tenant(r: &mut Reader<'_>, text: &str) -> Option<RawTenant> {
    let root = r.parse(text)?;
    let top = r.object(&root, "tenant file", "tenant file", TENANT_KEYS)?;
    let mut raw = RawTenant {
        catalog: top.req_str(r, "catalog"),
        default_role: top.opt_str(r, "default_role"),
        account_defaults: top
            .get("account_defaults")
            .map(|n| r.toggles(n, "account_defaults"))
            .unwrap_or_default(),
        ..RawTenant::default()
    };
    for n in top
        .get("custom_roles")
        .map(|n| r.list(n, "custom_roles"))
        .unwrap_or_default()
    {
        if let Some(role) = read_role(r, n, CUSTOM_ROLE_KEYS, "custom role") {
            raw.custom_roles.push(role);
        }
    }
    raw.profiles = read_profiles(r, top.get("profiles"));
    for n in top
        .get("rules")
        .map(|n| r.list(n, "rules"))
        .unwrap_or_default()
    {
        let Some(o) = r.object(n, "rules", "rule", RULE_KEYS) else {
            continue;
        };
        let matcher = match o.get("match") {
            Some(m) => r.object(m, "match", "match", MATCH_KEYS).map(|m| RawMatch {
                at: Some(m.at.clone()),
                display_name: m.opt_str(r, "display_name"),
                external_id: m.opt_str(r, "external_id"),
                dn: m.opt_str(r, "dn"),
                name_regex: m.opt_str(r, "name_regex"),
                source: m.opt_str(r, "source"),
            }),
            None => {
                o.req_str(r, "match");
                None
            }
        };
        let assign = match o.get("assign") {
            Some(a) => r.object(a, "assign", "assign", ASSIGN_KEYS).map(|a| {
                let mut items = Vec::new();
                for (k, v) in a.map.iter() {
                    let key = match k.as_str() {
                        "roles" => AssignKey::Roles,
                        "profiles" => AssignKey::Profiles,
                        "custom_roles" => AssignKey::CustomRoles,
                        _ => continue,
                    };
                    for s in r.str_list(v, k.as_str()) {
                        items.push((key, s));
                    }
                }
                RawAssign {
                    at: a.at.clone(),
                    items,
                }
            }),
            None => {
                o.req_str(r, "assign");
                None
            }
        };
        raw.rules.push(RawRule {
            at: o.at.clone(),
            id: o.opt_str(r, "id"),
            matcher,
            assign,
            priority: o
                .get("priority")
                .and_then(|n| r.int(n, "priority", "an integer")),
        });
    }
    Some(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate_sources;

    fn positions(files: &[(&str, &str)]) -> Vec<String> {
        match validate_sources(files) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(|e| e.at.to_string()).collect(),
        }
    }

    /// Found by fuzz/fuzz_targets/mapping.rs (minimised to `[`): the YAML
    /// scanner ends a text without a final line break on a line of its own,
    /// so errors at the end named line 2 of a one-line file.
    #[test]
    fn errors_at_the_end_of_a_file_without_a_final_line_break_stay_inside_it() {
        assert_eq!(
            positions(&[("m/tenants/t.yaml", "[")]),
            ["m/tenants/t.yaml:1:2"]
        );
        assert_eq!(
            positions(&[("m/tenants/t.yaml", "catalog: c\nrules: [")]),
            ["m/tenants/t.yaml:2:9"]
        );
        // An empty value at the very end (the file has more errors).
        let at = positions(&[("m/catalogs/c.yaml", "permissions:\n  - id:")]);
        assert!(at.contains(&"m/catalogs/c.yaml:2:8".to_string()), "{at:?}");
        assert!(at.iter().all(|a| !a.contains(":3:")), "{at:?}");
        // With the final line break the end is the start of the next line.
        assert_eq!(
            positions(&[("m/tenants/t.yaml", "[\n")]),
            ["m/tenants/t.yaml:2:1"]
        );
    }

    #[test]
    fn end_of_counts_lines_as_yaml_does() {
        assert_eq!(end_of(""), (1, 1));
        assert_eq!(end_of("ab"), (1, 3));
        assert_eq!(end_of("a\r\nb"), (2, 2));
        assert_eq!(end_of("a\rb\n"), (3, 1));
        assert_eq!(end_of("é\u{2028}"), (1, 3));
    }
}
