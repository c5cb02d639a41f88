//! Which attributes a resource may hold: the one rule POST, PUT and PATCH
//! share for attributes no published schema defines.
//!
//! - **Published schemas** (core User and Group, the common attributes,
//!   Enterprise User): an attribute or sub-attribute they do not define is
//!   not stored. It is dropped, and the service logs its name. Microsoft's
//!   SCIM test collection sends the typo `adreses` and expects 200; storing
//!   it would serve data that no filter, PATCH path or `/Schemas` entry can
//!   reach. An unknown PATCH *path* in these namespaces is dropped the same
//!   way instead of failing.
//! - **Custom extensions** ([`ResourceKind::is_custom_extension`], e.g.
//!   Entra's `urn:ietf:params:scim:schemas:extension:CustomExtensionName:2.0:User`):
//!   the object under the URN is kept as sent, its URN is listed in
//!   `schemas`, and its attributes can be patched
//!   (`urn:...:User:attr`) and filtered (typed by the operand; see
//!   [`crate::sql`]).
//! - The server's own namespace (`urn:rolebridge:`, directory sync's record
//!   of a resource's source and DN, which mapping rules match on) is
//!   read-only to clients: the service drops it from POST and PUT bodies,
//!   and a PATCH that writes it is `mutability`.
//! - Anything else that looks like a schema URN (a message URN, a proper
//!   prefix of a published one such as the typo
//!   `...:enterprise:2.0:User.manager`) names no attribute: as a PATCH path
//!   it is `invalidPath`, and in a filter `invalidFilter`.

use serde_json::{Map, Value};

use crate::schema::{common_attribute, Attribute, ResourceKind};

/// Removes from `doc` (a resource document with canonical names, as
/// [`crate::patch::normalize`] makes it) every attribute and sub-attribute
/// that no published schema defines, keeping custom extension objects and
/// `schemas`. Returns the removed names as paths (`adreses`, `name.nick`,
/// `urn:...:User:costCentre`), in document order.
pub fn strip(kind: ResourceKind, doc: &mut Map<String, Value>) -> Vec<String> {
    let mut dropped = Vec::new();
    doc.retain(|key, v| {
        // The server's own namespace is the service's to keep or refuse.
        if key == "schemas" || kind.is_custom_extension(key) || ResourceKind::is_server_owned(key) {
            return true;
        }
        if kind == ResourceKind::Group && key == "members" {
            return true;
        }
        if let Some(ext) = kind.extension(key) {
            if let Value::Object(o) = v {
                o.retain(|k2, v2| match ext.attribute(k2) {
                    Some(def) => {
                        strip_subs(def, v2, &format!("{}:{}", ext.id, def.name), &mut dropped);
                        true
                    }
                    None => {
                        dropped.push(format!("{}:{k2}", ext.id));
                        false
                    }
                });
            }
            return true;
        }
        match common_attribute(key).or_else(|| kind.core_schema().attribute(key)) {
            Some(def) => {
                strip_subs(def, v, def.name, &mut dropped);
                true
            }
            None => {
                dropped.push(key.clone());
                false
            }
        }
    });
    dropped
}

/// Drops the sub-attributes `def` does not define from a complex value (or
/// from each element of a multi-valued one).
fn strip_subs(def: &Attribute, v: &mut Value, shown: &str, dropped: &mut Vec<String>) {
    if def.sub_attributes.is_empty() {
        return;
    }
    let mut one = |o: &mut Map<String, Value>| {
        o.retain(|k, _| {
            let known = def.sub(k).is_some();
            if !known {
                let name = format!("{shown}.{k}");
                if !dropped.contains(&name) {
                    dropped.push(name);
                }
            }
            known
        });
    };
    match v {
        Value::Object(o) => one(o),
        Value::Array(items) => {
            for item in items {
                if let Value::Object(o) = item {
                    one(o);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::ENTERPRISE_URN;
    use serde_json::json;

    #[test]
    fn drops_what_no_schema_defines_and_keeps_custom_extensions() {
        let custom = "urn:ietf:params:scim:schemas:extension:CustomExtensionName:2.0:User";
        let mut doc = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", custom],
            "userName": "u",
            "adreses": [{"country": "Germany"}],
            "name": {"givenName": "A", "nick": "x"},
            "emails": [{"value": "a@x", "label": "l"}, {"value": "b@x", "label": "m"}],
            ENTERPRISE_URN: {"department": "d", "costCentre": "c"},
            custom: {"CustomAttribute": "701984"},
            "urn:ietf:params:scim:api:messages:2.0:PatchOp": {"x": 1}
        });
        let Value::Object(obj) = &mut doc else {
            unreachable!()
        };
        let dropped = strip(ResourceKind::User, obj);
        assert_eq!(
            dropped,
            vec![
                "adreses".to_string(),
                "name.nick".into(),
                "emails.label".into(),
                format!("{ENTERPRISE_URN}:costCentre"),
                "urn:ietf:params:scim:api:messages:2.0:PatchOp".into(),
            ]
        );
        assert_eq!(doc["name"], json!({"givenName": "A"}));
        assert_eq!(doc["emails"], json!([{"value": "a@x"}, {"value": "b@x"}]));
        assert_eq!(doc[ENTERPRISE_URN], json!({"department": "d"}));
        assert_eq!(doc[custom], json!({"CustomAttribute": "701984"}));
    }

    #[test]
    fn custom_extension_urns() {
        let k = ResourceKind::User;
        for yes in [
            "urn:ietf:params:scim:schemas:extension:CustomExtensionName:2.0:User",
            "urn:okta:onprem_app:1.0:user:custom",
            "urn:example:custom:2.0:User",
        ] {
            assert!(k.is_custom_extension(yes), "{yes}");
        }
        for no in [
            "urn:ietf:params:scim:schemas:core:2.0:User",
            ENTERPRISE_URN,
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:user",
            // What `...:enterprise:2.0:User.manager` parses to.
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0",
            "urn:ietf:params:scim:schemas:core:2.0:Group",
            "urn:ietf:params:scim:api:messages:2.0:PatchOp",
            "urn:x",
            "urn:a::b",
            "urn:a:b c",
            "urn:a:b'c",
            "adreses",
        ] {
            assert!(!k.is_custom_extension(no), "{no}");
        }
    }
}
