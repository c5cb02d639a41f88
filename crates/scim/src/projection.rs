//! Attribute projection of responses: the `attributes` and
//! `excludedAttributes` query parameters (RFC 7644 §3.4.2.5, §3.9) and the
//! `returned` characteristic of each attribute (RFC 7643 §7).
//!
//! It owns deciding which parts of a stored resource go into a response. It
//! does no IO: the service passes the stored document (with `members`
//! filled in, when it loaded them) and gets the response body back.
//!
//! Rules, read from [`crate::schema`]:
//! - `returned: never` (`password`) is never in a response;
//! - `returned: always` (`id`) and `schemas` (not a schema attribute, but
//!   every resource must carry it) are always in it;
//! - with `attributes`, only the listed attributes (and the `always` ones)
//!   are returned, down to sub-attributes (`name.givenName`,
//!   `emails.value`, `urn:...:enterprise:2.0:User:employeeNumber`); a whole
//!   extension can be listed by its URN;
//! - `returned: request` attributes only when listed in `attributes`;
//! - with `excludedAttributes` (ignored when `attributes` is given, which
//!   RFC 7644 §3.9 says takes precedence), the listed attributes or
//!   sub-attributes are removed unless `always`;
//! - names the schema does not know are ignored in both lists; custom
//!   extensions ([`crate::unknown`]) are returned by default and can be
//!   listed by URN or `urn:attr` in either list.

use serde_json::{Map, Value};

use crate::ast::AttrPath;
use crate::schema::{Attribute, ResourceKind, Returned, Schema};

/// What a list asks about one top-level attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pick {
    /// The whole attribute.
    Whole,
    /// Only these sub-attributes (canonical names).
    Subs(Vec<&'static str>),
}

/// A resolved `attributes`/`excludedAttributes` list: per container
/// (`None` for the top level, or an extension URN) and attribute name.
#[derive(Debug, Default)]
struct Selection {
    /// Whole extensions listed by URN.
    extensions: Vec<&'static str>,
    attrs: Vec<(Option<&'static str>, &'static str, Pick)>,
}

impl Selection {
    fn build(kind: ResourceKind, list: &[AttrPath]) -> Self {
        let mut sel = Selection::default();
        for path in list {
            if path.sub_attr.is_none() {
                if let Some(ext) = kind.extension(&path.to_string()) {
                    if !sel.extensions.contains(&ext.id) {
                        sel.extensions.push(ext.id);
                    }
                    continue;
                }
            }
            let Ok(r) = kind.resolve(path) else {
                continue;
            };
            let pos = sel
                .attrs
                .iter()
                .position(|(e, n, _)| *e == r.extension && *n == r.attr.name);
            match (pos, r.sub) {
                (None, None) => sel.attrs.push((r.extension, r.attr.name, Pick::Whole)),
                (None, Some(sub)) => {
                    sel.attrs
                        .push((r.extension, r.attr.name, Pick::Subs(vec![sub.name])))
                }
                (Some(i), None) => {
                    if let Some(entry) = sel.attrs.get_mut(i) {
                        entry.2 = Pick::Whole;
                    }
                }
                (Some(i), Some(sub)) => {
                    if let Some((_, _, Pick::Subs(subs))) = sel.attrs.get_mut(i) {
                        if !subs.contains(&sub.name) {
                            subs.push(sub.name);
                        }
                    }
                }
            }
        }
        sel
    }

    fn pick(&self, ext: Option<&'static str>, name: &str) -> Option<&Pick> {
        if let Some(urn) = ext {
            if self.extensions.contains(&urn) {
                return Some(&Pick::Whole);
            }
        }
        self.attrs
            .iter()
            .find(|(e, n, _)| *e == ext && *n == name)
            .map(|(_, _, p)| p)
    }

    /// Whether the list names any attribute of extension `urn`.
    fn touches_extension(&self, urn: &'static str) -> bool {
        self.extensions.contains(&urn) || self.attrs.iter().any(|(e, _, _)| *e == Some(urn))
    }
}

/// The response form of `resource` for the given `attributes` and
/// `excludedAttributes` lists (either may be empty).
pub fn project(
    kind: ResourceKind,
    resource: &Value,
    attributes: &[AttrPath],
    excluded: &[AttrPath],
) -> Value {
    let Value::Object(obj) = resource else {
        return resource.clone();
    };
    let mode = if !attributes.is_empty() {
        Mode::Only(Selection::build(kind, attributes))
    } else {
        Mode::Except(Selection::build(kind, excluded))
    };
    let mut out = Map::new();
    for (key, v) in obj {
        if key.eq_ignore_ascii_case("schemas") {
            out.insert(key.clone(), v.clone());
            continue;
        }
        if let Some(ext) = kind.extension(key) {
            if let Some(pv) = project_container(Some(ext), v, &mode) {
                out.insert(key.clone(), pv);
            }
            continue;
        }
        if kind.is_custom_extension(key) {
            let (list, only) = if attributes.is_empty() {
                (excluded, false)
            } else {
                (attributes, true)
            };
            if let Some(pv) = project_custom(key, v, list, only) {
                out.insert(key.clone(), pv);
            }
            continue;
        }
        match top_level(kind, key) {
            Some(def) => {
                if let Some(pv) = project_attr(None, def, v, &mode) {
                    out.insert(key.clone(), pv);
                }
            }
            None => {
                if matches!(mode, Mode::Except(_)) {
                    out.insert(key.clone(), v.clone());
                }
            }
        }
    }
    Value::Object(out)
}

/// A custom extension object (no schema, so every attribute is returned
/// by default) for an `attributes` list (`only`) or an
/// `excludedAttributes` list: the list may name the whole URN or
/// `urn:attr`, compared case-insensitively.
fn project_custom(urn: &str, v: &Value, list: &[AttrPath], only: bool) -> Option<Value> {
    let whole = list
        .iter()
        .any(|p| p.sub_attr.is_none() && p.to_string().eq_ignore_ascii_case(urn));
    let named: Vec<&str> = list
        .iter()
        .filter(|p| {
            p.schema
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case(urn))
        })
        .map(|p| p.attr.as_str())
        .collect();
    let Value::Object(obj) = v else {
        return (!only).then(|| v.clone());
    };
    let keep = |k: &str| {
        let listed = named.iter().any(|n| n.eq_ignore_ascii_case(k));
        if only {
            whole || listed
        } else {
            !whole && !listed
        }
    };
    let out: Map<String, Value> = obj
        .iter()
        .filter(|(k, _)| keep(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (!out.is_empty()).then_some(Value::Object(out))
}

/// Whether top-level attribute `name` (e.g. `members`) would appear in a
/// response for these lists, so the service can skip loading it: Entra
/// reads groups with `excludedAttributes=members`.
pub fn includes_attribute(
    kind: ResourceKind,
    name: &str,
    attributes: &[AttrPath],
    excluded: &[AttrPath],
) -> bool {
    let Some(def) = top_level(kind, name) else {
        return attributes.is_empty();
    };
    match def.returned {
        Returned::Never => false,
        Returned::Always => true,
        _ if !attributes.is_empty() => Selection::build(kind, attributes)
            .pick(None, def.name)
            .is_some(),
        Returned::Request => false,
        Returned::Default => {
            Selection::build(kind, excluded).pick(None, def.name) != Some(&Pick::Whole)
        }
    }
}

/// Removes every `returned: never` attribute and sub-attribute (the
/// password) from `resource` in place. Cheap enough for every response.
pub fn strip_never(kind: ResourceKind, resource: &mut Value) {
    let Value::Object(obj) = resource else {
        return;
    };
    strip_schema(kind.core_schema(), obj);
    obj.retain(|k, _| common_or_core(kind, k).is_none_or(|d| d.returned != Returned::Never));
    for ext in kind.extensions() {
        if let Some(Value::Object(eobj)) = obj.get_mut(ext.id) {
            strip_schema(ext, eobj);
        }
    }
}

fn strip_schema(schema: &Schema, obj: &mut Map<String, Value>) {
    for def in &schema.attributes {
        if def.returned == Returned::Never {
            obj.retain(|k, _| !k.eq_ignore_ascii_case(def.name));
            continue;
        }
        if def
            .sub_attributes
            .iter()
            .all(|s| s.returned != Returned::Never)
        {
            continue;
        }
        let strip = |v: &mut Value| {
            if let Value::Object(o) = v {
                for sub in def
                    .sub_attributes
                    .iter()
                    .filter(|s| s.returned == Returned::Never)
                {
                    o.retain(|k, _| !k.eq_ignore_ascii_case(sub.name));
                }
            }
        };
        match obj.get_mut(def.name) {
            Some(Value::Array(a)) => a.iter_mut().for_each(strip),
            Some(v) => strip(v),
            None => {}
        }
    }
}

enum Mode {
    Only(Selection),
    Except(Selection),
}

fn common_or_core(kind: ResourceKind, key: &str) -> Option<&'static Attribute> {
    crate::schema::common_attribute(key).or_else(|| kind.core_schema().attribute(key))
}

/// A top-level (common or core) attribute definition, or `members` of a
/// Group, which the service adds to the stored document before projection.
fn top_level(kind: ResourceKind, key: &str) -> Option<&'static Attribute> {
    common_or_core(kind, key)
}

/// Projects an extension object; `None` when nothing of it remains.
fn project_container(ext: Option<&'static Schema>, v: &Value, mode: &Mode) -> Option<Value> {
    let (Some(ext), Value::Object(eobj)) = (ext, v) else {
        return Some(v.clone());
    };
    if let Mode::Only(sel) = mode {
        if !sel.touches_extension(ext.id) {
            return None;
        }
    }
    let mut out = Map::new();
    for (k, ev) in eobj {
        match ext.attribute(k) {
            Some(def) => {
                if let Some(pv) = project_attr(Some(ext.id), def, ev, mode) {
                    out.insert(k.clone(), pv);
                }
            }
            None => {
                let keep = match mode {
                    Mode::Only(sel) => sel.extensions.contains(&ext.id),
                    Mode::Except(_) => true,
                };
                if keep {
                    out.insert(k.clone(), ev.clone());
                }
            }
        }
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

/// Projects one attribute's value; `None` when it is not returned.
fn project_attr(
    ext: Option<&'static str>,
    def: &'static Attribute,
    v: &Value,
    mode: &Mode,
) -> Option<Value> {
    match def.returned {
        Returned::Never => return None,
        Returned::Always => return Some(v.clone()),
        Returned::Default | Returned::Request => {}
    }
    match mode {
        Mode::Only(sel) => match sel.pick(ext, def.name)? {
            Pick::Whole => Some(v.clone()),
            Pick::Subs(subs) => keep_subs(v, |name| {
                subs.iter().any(|s| s.eq_ignore_ascii_case(name))
                    || def
                        .sub(name)
                        .is_some_and(|d| d.returned == Returned::Always)
            }),
        },
        Mode::Except(sel) => {
            if def.returned == Returned::Request {
                return None;
            }
            match sel.pick(ext, def.name) {
                None => Some(v.clone()),
                Some(Pick::Whole) => None,
                Some(Pick::Subs(subs)) => keep_subs(v, |name| {
                    !subs.iter().any(|s| s.eq_ignore_ascii_case(name))
                        || def
                            .sub(name)
                            .is_some_and(|d| d.returned == Returned::Always)
                }),
            }
        }
    }
}

/// Keeps the sub-attributes for which `keep` holds, in a complex value or
/// in each element of a multi-valued one; `None` when nothing remains.
fn keep_subs(v: &Value, keep: impl Fn(&str) -> bool) -> Option<Value> {
    let filter_obj = |o: &Map<String, Value>| -> Map<String, Value> {
        o.iter()
            .filter(|(k, _)| keep(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    match v {
        Value::Object(o) => {
            let f = filter_obj(o);
            (!f.is_empty()).then_some(Value::Object(f))
        }
        Value::Array(a) => {
            let items: Vec<Value> = a
                .iter()
                .filter_map(|e| match e {
                    Value::Object(o) => {
                        let f = filter_obj(o);
                        (!f.is_empty()).then_some(Value::Object(f))
                    }
                    _ => None,
                })
                .collect();
            (!items.is_empty()).then_some(Value::Array(items))
        }
        // A scalar where a complex value was expected has no sub-attributes
        // to select.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::ENTERPRISE_URN;
    use serde_json::json;

    fn p(s: &str) -> AttrPath {
        if let Some(rest) = s.strip_prefix(&format!("{ENTERPRISE_URN}:")) {
            return AttrPath {
                schema: Some(ENTERPRISE_URN.into()),
                attr: rest.into(),
                sub_attr: None,
            };
        }
        match s.split_once('.') {
            Some((a, b)) => AttrPath {
                schema: None,
                attr: a.into(),
                sub_attr: Some(b.into()),
            },
            None => AttrPath::simple(s),
        }
    }
    fn ps(list: &[&str]) -> Vec<AttrPath> {
        list.iter().map(|s| p(s)).collect()
    }

    fn user() -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE_URN],
            "id": "u1",
            "externalId": "e1",
            "userName": "bjensen",
            "password": "secret",
            "name": {"givenName": "Barbara", "familyName": "Jensen"},
            "emails": [{"value": "a@x.org", "type": "work", "primary": true}, {"value": "b@x.org", "type": "home"}],
            "x-custom": 1,
            "meta": {"resourceType": "User", "version": "W/\"1\""},
            ENTERPRISE_URN: {"employeeNumber": "7", "department": "Ops"}
        })
    }

    fn check(attributes: &[&str], excluded: &[&str], expected: Value) {
        let got = project(ResourceKind::User, &user(), &ps(attributes), &ps(excluded));
        assert_eq!(
            got, expected,
            "attributes={attributes:?} excluded={excluded:?}"
        );
    }

    #[test]
    fn default_drops_never_and_keeps_everything_else() {
        let mut expected = user();
        if let Some(o) = expected.as_object_mut() {
            o.shift_remove("password");
        }
        check(&[], &[], expected.clone());
        let mut stripped = user();
        strip_never(ResourceKind::User, &mut stripped);
        assert_eq!(stripped, expected);
    }

    #[test]
    fn attributes_keep_only_listed_plus_always() {
        check(
            &["userName", "password"],
            &[],
            json!({"schemas": user()["schemas"], "id": "u1", "userName": "bjensen"}),
        );
        check(
            &["name.givenName", "emails.value"],
            &[],
            json!({
                "schemas": user()["schemas"], "id": "u1",
                "name": {"givenName": "Barbara"},
                "emails": [{"value": "a@x.org"}, {"value": "b@x.org"}]
            }),
        );
        // Listing the whole attribute wins over one of its sub-attributes.
        check(
            &["name.givenName", "NAME"],
            &[],
            json!({"schemas": user()["schemas"], "id": "u1", "name": user()["name"]}),
        );
    }

    #[test]
    fn extension_attributes_by_urn() {
        check(
            &[&format!("{ENTERPRISE_URN}:employeeNumber")],
            &[],
            json!({"schemas": user()["schemas"], "id": "u1", ENTERPRISE_URN: {"employeeNumber": "7"}}),
        );
        let whole = AttrPath {
            schema: Some("urn:ietf:params:scim:schemas:extension:enterprise:2.0".into()),
            attr: "User".into(),
            sub_attr: None,
        };
        let got = project(ResourceKind::User, &user(), &[whole], &[]);
        assert_eq!(got[ENTERPRISE_URN], user()[ENTERPRISE_URN]);
        assert!(got.get("userName").is_none());
    }

    #[test]
    fn excluded_attributes_remove_unless_always() {
        let mut expected = user();
        if let Some(o) = expected.as_object_mut() {
            o.shift_remove("password");
            o.shift_remove("emails");
            o.insert("name".into(), json!({"familyName": "Jensen"}));
            o.insert(ENTERPRISE_URN.into(), json!({"employeeNumber": "7"}));
        }
        check(
            &[],
            &[
                "emails",
                "id",
                "name.givenName",
                &format!("{ENTERPRISE_URN}:department"),
                "bogus",
            ],
            expected,
        );
    }

    #[test]
    fn unknown_names_are_ignored_and_attributes_wins() {
        check(
            &["nope", "userName"],
            &["userName"],
            json!({"schemas": user()["schemas"], "id": "u1", "userName": "bjensen"}),
        );
    }

    #[test]
    fn includes_attribute_tells_whether_to_load_members() {
        let g = ResourceKind::Group;
        assert!(includes_attribute(g, "members", &[], &[]));
        assert!(!includes_attribute(g, "members", &[], &ps(&["members"])));
        assert!(includes_attribute(
            g,
            "members",
            &[],
            &ps(&["members.display"])
        ));
        assert!(!includes_attribute(
            g,
            "members",
            &ps(&["displayName"]),
            &[]
        ));
        assert!(includes_attribute(
            g,
            "members",
            &ps(&["members.value"]),
            &[]
        ));
        assert!(includes_attribute(g, "id", &ps(&["displayName"]), &[]));
        assert!(!includes_attribute(
            ResourceKind::User,
            "password",
            &[],
            &[]
        ));
    }
}
