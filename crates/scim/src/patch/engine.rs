//! Applies PATCH operations atomically to a stored JSON document.

use serde_json::{Map, Value};

use super::members::{dedup, member_ids_from_filter, member_refs, MemberOp};
use super::normalize::{normalize_element, normalize_single, normalize_value, strip_nulls};
use super::{Obj, OpKind, PatchError, PatchOperation, PatchOutcome};
use crate::ast::{AttrPath, CompValue, CompareOp, Filter, PatchPath};
use crate::eval::{matches_element, validate_element};
use crate::filter::parse_patch_path;
use crate::schema::{AttrType, Attribute, Mutability, ResolveError, Resolved, ResourceKind};

/// Applies `ops` to `doc`, all or nothing: the operations run on a copy,
/// which replaces `doc` only when every one succeeded. `doc` must never
/// contain a Group's `members`: those operations come back as
/// [`PatchOutcome::member_ops`].
pub fn apply(
    kind: ResourceKind,
    doc: &mut Value,
    ops: &[PatchOperation],
) -> Result<PatchOutcome, PatchError> {
    let Value::Object(original) = &*doc else {
        return Err(PatchError::InvalidValue(
            "the resource is not a json object".into(),
        ));
    };
    let mut work = original.clone();
    let mut engine = Engine {
        kind,
        member_ops: Vec::new(),
        touched_ext: Vec::new(),
        ignored: Vec::new(),
    };
    for op in ops {
        engine.apply_op(&mut work, op)?;
    }
    // Values written whole (`emails`, `name`) may carry sub-attributes no
    // schema defines; a document stored before the rule may hold some too.
    for name in crate::unknown::strip(kind, &mut work) {
        if !engine.ignored.contains(&name) {
            engine.ignored.push(name);
        }
    }
    engine.sync_schemas(&mut work);
    let doc_changed = work != *original;
    let changed = doc_changed || !engine.member_ops.is_empty();
    if doc_changed {
        *doc = Value::Object(work);
    }
    Ok(PatchOutcome {
        member_ops: engine.member_ops,
        changed,
        ignored: engine.ignored,
    })
}

/// State of one [`apply`] call.
pub(super) struct Engine {
    kind: ResourceKind,
    member_ops: Vec<MemberOp>,
    /// Extension URNs written or removed, whose `schemas` entry is synced at
    /// the end.
    touched_ext: Vec<String>,
    /// See [`PatchOutcome::ignored`].
    ignored: Vec<String>,
}

/// `path` as the client would have written it, for messages.
pub(super) fn show_path(p: &PatchPath) -> String {
    let mut s = p.attr.to_string();
    if let Some(f) = &p.filter {
        s.push('[');
        s.push_str(&show_filter(f));
        s.push(']');
    }
    if let Some(sub) = &p.sub_attr {
        s.push('.');
        s.push_str(sub);
    }
    s
}

pub(super) fn show_filter(f: &Filter) -> String {
    match f {
        Filter::Present(p) => format!("{p} pr"),
        Filter::Compare(p, op, v) => {
            let op = op.as_str();
            let v = match v {
                CompValue::Null => "null".to_string(),
                CompValue::Bool(b) => b.to_string(),
                CompValue::Number(n) => n.to_string(),
                CompValue::String(s) => Value::String(s.clone()).to_string(),
            };
            format!("{p} {op} {v}")
        }
        Filter::ValuePath(p, inner) => format!("{p}[{}]", show_filter(inner)),
        Filter::And(a, b) => format!("{} and {}", show_filter(a), show_filter(b)),
        Filter::Or(a, b) => format!("({} or {})", show_filter(a), show_filter(b)),
        Filter::Not(inner) => format!("not ({})", show_filter(inner)),
    }
}

/// Whether `path` names a Group's `members` (or a User's, which is an error).
pub(super) fn is_members(kind: ResourceKind, path: &AttrPath) -> bool {
    path.attr.eq_ignore_ascii_case("members")
        && path
            .schema
            .as_deref()
            .is_none_or(|s| s.eq_ignore_ascii_case(kind.core_schema().id))
}

/// A key of a path-less value that is a plain attribute name rather than a
/// path (`name.givenName`, `urn:...:employeeNumber`, `emails[...]`).
pub(super) fn is_plain_name(key: &str) -> bool {
    !key.is_empty() && !key.contains(['.', ':', '['])
}

impl Engine {
    fn apply_op(&mut self, doc: &mut Obj, op: &PatchOperation) -> Result<(), PatchError> {
        match &op.path {
            Some(path) => self.apply_path(doc, op.op, path, op.value.as_ref()),
            None if op.op == OpKind::Remove => {
                Err(PatchError::NoTarget("'remove' requires a 'path'".into()))
            }
            None => self.apply_pathless(doc, op.op, op.value.as_ref()),
        }
    }

    /// `add`/`replace` without a path: the value is a partial resource whose
    /// keys are attribute names, extension URNs, or (Entra) paths.
    fn apply_pathless(
        &mut self,
        doc: &mut Obj,
        op: OpKind,
        value: Option<&Value>,
    ) -> Result<(), PatchError> {
        let Some(Value::Object(obj)) = value else {
            return Err(PatchError::InvalidValue(format!(
                "'{}' without a 'path' requires an object value",
                op.as_str()
            )));
        };
        for (key, v) in obj {
            if key.eq_ignore_ascii_case("schemas") {
                continue;
            }
            if let Some(ext) = self.kind.extension(key) {
                let eobj = match v {
                    Value::Object(o) => o,
                    Value::Null if op == OpKind::Add => continue,
                    _ => {
                        return Err(PatchError::InvalidValue(format!(
                            "extension '{}' must be an object",
                            ext.id
                        )))
                    }
                };
                for (k2, v2) in eobj {
                    let path = AttrPath {
                        schema: Some(ext.id.to_string()),
                        attr: k2.clone(),
                        sub_attr: None,
                    };
                    if ext.attribute(k2).is_some() {
                        self.apply_path(doc, op, &whole(path), Some(v2))?;
                    } else {
                        self.ignore(format!("{}:{k2}", ext.id));
                    }
                }
                continue;
            }
            if ResourceKind::is_server_owned(key) {
                if doc.get(key) == Some(v) {
                    continue;
                }
                return Err(PatchError::Mutability(format!(
                    "'{key}' is written by the server only"
                )));
            }
            if self.kind.is_custom_extension(key) && self.names_extension(doc, key, v) {
                match v {
                    Value::Object(eobj) => {
                        for (k2, v2) in eobj {
                            self.custom_op(doc, op, key, k2, None, Some(v2))?;
                        }
                    }
                    Value::Null if op == OpKind::Add => {}
                    Value::Null => self.custom_whole(doc, OpKind::Remove, key, None)?,
                    _ => {
                        return Err(PatchError::InvalidValue(format!(
                            "extension '{key}' must be an object"
                        )))
                    }
                }
                continue;
            }
            let path = if is_plain_name(key) {
                whole(AttrPath::simple(key.clone()))
            } else {
                parse_patch_path(key)
                    .map_err(|e| PatchError::InvalidPath(format!("invalid path '{key}': {e}")))?
            };
            let resolved = self.kind.resolve(&path.attr).ok();
            if resolved.is_some_and(|r| unchanged_read_only(doc, &r, &path, v)) {
                // Okta echoes `id` in a path-less replace: a readOnly value
                // equal to the stored one is not a modification.
                continue;
            }
            self.apply_path(doc, op, &path, Some(v))?;
        }
        Ok(())
    }

    /// Whether the path-less key `key` (a custom-extension-shaped URN) names
    /// the extension itself rather than an attribute in Entra's path form
    /// (`urn:...:2.0:User:attr`): it does when its value is an object or
    /// null, unless the resource holds the shorter URN and not this one.
    fn names_extension(&self, doc: &Obj, key: &str, v: &Value) -> bool {
        if !(v.is_object() || v.is_null()) {
            return false;
        }
        if holds_extension(doc, key) {
            return true;
        }
        match key.rsplit_once(':') {
            Some((prefix, _)) => {
                !(self.kind.is_custom_extension(prefix) && holds_extension(doc, prefix))
            }
            None => true,
        }
    }

    /// Records an attribute dropped by [`crate::unknown`]'s rule.
    fn ignore(&mut self, name: String) {
        if !self.ignored.contains(&name) {
            self.ignored.push(name);
        }
    }

    /// The key under which the document holds custom extension `urn`: its
    /// stored spelling, else as written.
    fn custom_key(doc: &Obj, urn: &str) -> String {
        doc.keys()
            .find(|k| k.eq_ignore_ascii_case(urn))
            .cloned()
            .unwrap_or_else(|| urn.to_string())
    }

    /// `add`, `replace` or `remove` of a whole custom extension object.
    fn custom_whole(
        &mut self,
        doc: &mut Obj,
        op: OpKind,
        urn: &str,
        value: Option<&Value>,
    ) -> Result<(), PatchError> {
        let key = Self::custom_key(doc, urn);
        match (op, value) {
            (OpKind::Remove, _) | (OpKind::Replace, None | Some(Value::Null)) => {
                self.container(doc, Some(&key))?.clear();
                Ok(())
            }
            (_, None | Some(Value::Null)) => Ok(()),
            (op, Some(Value::Object(o))) => {
                if op == OpKind::Replace {
                    self.container(doc, Some(&key))?.clear();
                }
                for (k2, v2) in o {
                    self.custom_op(doc, op, &key, k2, None, Some(v2))?;
                }
                Ok(())
            }
            (_, Some(_)) => Err(PatchError::InvalidValue(format!(
                "extension '{urn}' must be an object"
            ))),
        }
    }

    /// An operation on attribute `attr` (or its `sub`) of custom extension
    /// `urn`, which has no schema: values are stored as sent (nulls inside
    /// dropped), `add` appends to a stored array and merges into a stored
    /// object, and names match the stored spelling case-insensitively.
    fn custom_op(
        &mut self,
        doc: &mut Obj,
        op: OpKind,
        urn: &str,
        attr: &str,
        sub: Option<&str>,
        value: Option<&Value>,
    ) -> Result<(), PatchError> {
        let key = Self::custom_key(doc, urn);
        let ext = self.container(doc, Some(&key))?;
        let find = |o: &Obj, name: &str| {
            o.keys()
                .find(|k| k.eq_ignore_ascii_case(name))
                .cloned()
                .unwrap_or_else(|| name.to_string())
        };
        let attr_key = find(ext, attr);
        let value = value.cloned().map(strip_nulls);
        let shown = format!("{key}:{attr}");
        match sub {
            None => match (op, value) {
                (OpKind::Remove, _) | (OpKind::Replace, None | Some(Value::Null)) => {
                    ext.shift_remove(&attr_key);
                }
                (_, None | Some(Value::Null)) => {}
                (OpKind::Add, Some(Value::Array(new)))
                    if ext.get(&attr_key).is_some_and(Value::is_array) =>
                {
                    let arr = array_of(ext, &attr_key)?;
                    for item in new {
                        if !arr.contains(&item) {
                            arr.push(item);
                        }
                    }
                }
                (OpKind::Add, Some(Value::Object(new)))
                    if ext.get(&attr_key).is_some_and(Value::is_object) =>
                {
                    let obj = object_of(ext, &attr_key, &shown)?;
                    for (k, v) in new {
                        let k = find(obj, &k);
                        obj.insert(k, v);
                    }
                }
                (_, Some(v)) => {
                    ext.insert(attr_key, v);
                }
            },
            Some(sub) => {
                match (op, value) {
                    (OpKind::Remove, _) | (OpKind::Replace, None | Some(Value::Null)) => {
                        if let Some(Value::Object(o)) = ext.get_mut(&attr_key) {
                            let sub_key = find(o, sub);
                            o.shift_remove(&sub_key);
                        }
                    }
                    (_, None | Some(Value::Null)) => {}
                    (_, Some(v)) => {
                        let obj = object_of(ext, &attr_key, &shown)?;
                        let sub_key = find(obj, sub);
                        obj.insert(sub_key, v);
                    }
                }
                drop_if_empty(ext, &attr_key);
            }
        }
        Ok(())
    }

    /// The object holding the attribute: the document, or the extension
    /// object under its URN (created when absent; `sync_schemas` drops it again if it stays empty).
    fn container<'d>(
        &mut self,
        doc: &'d mut Obj,
        ext: Option<&str>,
    ) -> Result<&'d mut Obj, PatchError> {
        let Some(urn) = ext else {
            return Ok(doc);
        };
        if !self.touched_ext.iter().any(|t| t == urn) {
            self.touched_ext.push(urn.to_string());
        }
        if !doc.contains_key(urn) {
            // Adopt a non-canonical spelling of the URN, if stored.
            if let Some(k) = doc.keys().find(|k| k.eq_ignore_ascii_case(urn)).cloned() {
                if let Some(v) = doc.shift_remove(&k) {
                    doc.insert(urn.to_string(), v);
                }
            }
        }
        match doc
            .entry(urn.to_string())
            .or_insert_with(|| Value::Object(Map::new()))
        {
            Value::Object(o) => Ok(o),
            _ => Err(PatchError::InvalidValue(format!(
                "stored extension '{urn}' is not an object"
            ))),
        }
    }

    /// Adds/removes extension URNs in `schemas` for the extensions this
    /// request touched, and drops extension objects left empty.
    fn sync_schemas(&self, doc: &mut Obj) {
        for urn in &self.touched_ext {
            let non_empty = doc
                .get(urn.as_str())
                .and_then(Value::as_object)
                .is_some_and(|o| !o.is_empty());
            if !non_empty {
                doc.shift_remove(urn.as_str());
            }
            if let Some(Value::Array(schemas)) = doc.get_mut("schemas") {
                let pos = schemas
                    .iter()
                    .position(|s| s.as_str().is_some_and(|s| s.eq_ignore_ascii_case(urn)));
                match (non_empty, pos) {
                    (true, None) => schemas.push(Value::String(urn.clone())),
                    (false, Some(i)) => {
                        schemas.remove(i);
                    }
                    _ => {}
                }
            }
        }
    }

    fn apply_path(
        &mut self,
        doc: &mut Obj,
        op: OpKind,
        path: &PatchPath,
        value: Option<&Value>,
    ) -> Result<(), PatchError> {
        let shown = show_path(path);
        if is_members(self.kind, &path.attr) {
            return match self.kind {
                ResourceKind::Group => self.members_op(op, path, value, &shown),
                ResourceKind::User => Err(PatchError::Mutability(format!(
                    "'{shown}' cannot be modified on a user: change the group's members instead"
                ))),
            };
        }
        if path
            .attr
            .schema
            .as_deref()
            .is_some_and(ResourceKind::is_server_owned)
        {
            return Err(PatchError::Mutability(format!(
                "'{shown}' is written by the server only"
            )));
        }
        if path.attr.schema.is_none() && path.attr.attr.eq_ignore_ascii_case("schemas") {
            return Err(PatchError::InvalidPath(format!(
                "invalid path '{shown}': 'schemas' is not an attribute; the server maintains it"
            )));
        }
        if path.filter.is_none() && path.sub_attr.is_none() {
            let full = path.attr.to_string();
            if let Some(ext) = self.kind.extension(&full) {
                return self.whole_extension(doc, op, ext.id, value);
            }
            // `urn:a:2.0:User` parses as attribute `User` of `urn:a:2.0`; it
            // is the whole extension when the resource holds or declares it.
            if path.attr.sub_attr.is_none()
                && self.kind.is_custom_extension(&full)
                && holds_extension(doc, &full)
            {
                return self.custom_whole(doc, op, &full, value);
            }
        }
        if let Some(urn) = path.attr.schema.as_deref() {
            if self.kind.is_custom_extension(urn) {
                if path.filter.is_some() {
                    return Err(PatchError::InvalidPath(format!(
                        "invalid path '{shown}': a value filter needs a schema, and extension '{urn}' has none"
                    )));
                }
                if path.attr.sub_attr.is_some() && path.sub_attr.is_some() {
                    return Err(PatchError::InvalidPath(format!(
                        "invalid path '{shown}': an attribute path has at most one sub-attribute"
                    )));
                }
                let sub = path.attr.sub_attr.as_deref().or(path.sub_attr.as_deref());
                return self.custom_op(doc, op, urn, &path.attr.attr, sub, value);
            }
        }
        let r = match self.kind.resolve(&path.attr) {
            Ok(r) => r,
            // An attribute a published schema does not define is dropped,
            // as POST and PUT drop it ([`crate::unknown`]).
            Err(ResolveError::UnknownAttribute(_)) => {
                let parent = AttrPath {
                    sub_attr: None,
                    ..path.attr.clone()
                };
                if path.attr.sub_attr.is_some()
                    && self
                        .kind
                        .resolve(&parent)
                        .is_ok_and(|r| r.attr.sub_attributes.is_empty())
                {
                    return Err(PatchError::InvalidPath(format!(
                        "invalid path '{shown}': '{parent}' has no sub-attributes"
                    )));
                }
                self.ignore(shown);
                return Ok(());
            }
            Err(e) => {
                return Err(PatchError::InvalidPath(format!(
                    "invalid path '{shown}': {e}"
                )))
            }
        };
        let attr = r.attr;
        let elem_sub = match &path.sub_attr {
            None => None,
            Some(s) => match attr.sub(s) {
                Some(sub) => Some(sub),
                None if attr.sub_attributes.is_empty() => {
                    return Err(PatchError::InvalidPath(format!(
                        "invalid path '{shown}': '{}' has no sub-attributes",
                        attr.name
                    )))
                }
                None => {
                    self.ignore(shown);
                    return Ok(());
                }
            },
        };
        let leaf = elem_sub.or(r.sub).unwrap_or(attr);
        if attr.mutability == Mutability::ReadOnly || leaf.mutability == Mutability::ReadOnly {
            return Err(PatchError::Mutability(format!(
                "attribute '{shown}' is readOnly and cannot be modified"
            )));
        }
        if let Some(f) = &path.filter {
            if !(attr.multi_valued && attr.kind == AttrType::Complex) {
                return Err(PatchError::InvalidPath(format!(
                    "invalid path '{shown}': a value filter needs a multi-valued complex attribute"
                )));
            }
            validate_element(f, attr).map_err(|e| {
                PatchError::InvalidPath(format!("invalid filter in path '{shown}': {e}"))
            })?;
        }
        // null is "unassigned" (RFC 7643 §2.5).
        let (op, value) = match (op, value) {
            (OpKind::Add, None | Some(Value::Null)) => return Ok(()),
            (OpKind::Replace, None | Some(Value::Null)) => (OpKind::Remove, None),
            (OpKind::Remove, Some(Value::Null)) => (OpKind::Remove, None),
            (op, v) => (op, v),
        };
        if op == OpKind::Remove && attr.required && r.sub.is_none() && path.filter.is_none() {
            return Err(PatchError::InvalidValue(format!(
                "attribute '{shown}' is required and cannot be removed"
            )));
        }
        if op == OpKind::Remove && r.extension.is_some_and(|urn| !doc.contains_key(urn)) {
            return Ok(());
        }
        let container = self.container(doc, r.extension)?;
        let name = attr.name;

        if let Some(filter) = &path.filter {
            return filtered(container, op, attr, filter, elem_sub, value, &shown);
        }
        match (value, op) {
            (Some(v), OpKind::Add | OpKind::Replace) => match r.sub {
                Some(sub) if attr.multi_valued => {
                    // `emails.value` without a filter: every element.
                    let v = normalize_single(sub, v, &shown)?;
                    let arr = array_of(container, name)?;
                    if arr.is_empty() {
                        let mut e = Map::new();
                        e.insert(sub.name.to_string(), v);
                        arr.push(Value::Object(e));
                    } else {
                        for e in arr.iter_mut() {
                            if let Value::Object(o) = e {
                                o.insert(sub.name.to_string(), v.clone());
                            }
                        }
                    }
                    Ok(())
                }
                Some(sub) => {
                    let v = normalize_single(sub, v, &shown)?;
                    let obj = object_of(container, name, &shown)?;
                    check_immutable(sub, obj.get(sub.name), Some(&v), &shown)?;
                    obj.insert(sub.name.to_string(), v);
                    Ok(())
                }
                None if attr.multi_valued => {
                    let Value::Array(items) = normalize_value(attr, v, &shown)? else {
                        return Ok(());
                    };
                    if op == OpKind::Replace {
                        if items.is_empty() {
                            container.shift_remove(name);
                        } else {
                            container.insert(name.to_string(), Value::Array(items));
                        }
                        return Ok(());
                    }
                    let arr = array_of(container, name)?;
                    let mut touched = Vec::new();
                    for item in items {
                        if !arr.contains(&item) {
                            arr.push(item);
                            touched.push(arr.len() - 1);
                        }
                    }
                    fix_primary(arr, &touched);
                    if arr.is_empty() {
                        container.shift_remove(name);
                    }
                    Ok(())
                }
                None if attr.kind == AttrType::Complex => {
                    // RFC 7644 §3.5.2.1/§3.5.2.3: the sub-attributes given
                    // replace or add; those not given are left unchanged.
                    let Value::Object(given) = normalize_value(attr, v, &shown)? else {
                        return Ok(());
                    };
                    let obj = object_of(container, name, &shown)?;
                    for (k, sv) in given {
                        if sv.is_null() {
                            obj.shift_remove(&k);
                        } else {
                            obj.insert(k, sv);
                        }
                    }
                    if obj.is_empty() {
                        container.shift_remove(name);
                    }
                    Ok(())
                }
                None => {
                    let v = normalize_value(attr, v, &shown)?;
                    check_immutable(attr, container.get(name), Some(&v), &shown)?;
                    container.insert(name.to_string(), v);
                    Ok(())
                }
            },
            (given, _) => {
                // Remove.
                match r.sub {
                    Some(sub) => {
                        let Some(current) = container.get_mut(name) else {
                            return Ok(());
                        };
                        match current {
                            Value::Array(arr) => {
                                for e in arr.iter_mut() {
                                    if let Value::Object(o) = e {
                                        check_immutable(sub, o.get(sub.name), None, &shown)?;
                                        o.shift_remove(sub.name);
                                    }
                                }
                                arr.retain(|e| e.as_object().is_none_or(|o| !o.is_empty()));
                            }
                            Value::Object(o) => {
                                check_immutable(sub, o.get(sub.name), None, &shown)?;
                                o.shift_remove(sub.name);
                            }
                            _ => {}
                        }
                        drop_if_empty(container, name);
                        Ok(())
                    }
                    None => {
                        if let (true, Some(given)) = (attr.multi_valued, given) {
                            let Value::Array(remove) = normalize_value(attr, given, &shown)? else {
                                return Ok(());
                            };
                            if let Some(Value::Array(arr)) = container.get_mut(name) {
                                arr.retain(|e| !remove.iter().any(|r| same_element(e, r)));
                            }
                            drop_if_empty(container, name);
                            return Ok(());
                        }
                        check_immutable(attr, container.get(name), None, &shown)?;
                        container.shift_remove(name);
                        Ok(())
                    }
                }
            }
        }
    }

    /// A path naming a whole extension (`urn:...:enterprise:2.0:User`):
    /// `remove` drops it, `add`/`replace` merge the given object into it.
    fn whole_extension(
        &mut self,
        doc: &mut Obj,
        op: OpKind,
        urn: &'static str,
        value: Option<&Value>,
    ) -> Result<(), PatchError> {
        match (op, value) {
            (OpKind::Remove, _) | (OpKind::Replace, None | Some(Value::Null)) => {
                self.container(doc, Some(urn))?.clear();
                Ok(())
            }
            (_, None | Some(Value::Null)) => Ok(()),
            (op, Some(v)) => {
                let mut wrapped = Map::new();
                wrapped.insert(urn.to_string(), v.clone());
                self.apply_pathless(doc, op, Some(&Value::Object(wrapped)))
            }
        }
    }

    /// Operations on a Group's `members`, which become [`MemberOp`]s.
    fn members_op(
        &mut self,
        op: OpKind,
        path: &PatchPath,
        value: Option<&Value>,
        shown: &str,
    ) -> Result<(), PatchError> {
        if path.attr.sub_attr.is_some() || path.sub_attr.is_some() {
            return Err(PatchError::Mutability(format!(
                "'{shown}' cannot be modified: add or remove the member instead"
            )));
        }
        let value = value.filter(|v| !v.is_null());
        match (op, &path.filter) {
            (OpKind::Add, None) => {
                let refs = member_refs(value, shown)?;
                if !refs.is_empty() {
                    self.member_ops.push(MemberOp::Add(refs));
                }
            }
            (OpKind::Replace, None) => {
                let refs = member_refs(value, shown)?;
                self.member_ops.push(MemberOp::RemoveAll);
                if !refs.is_empty() {
                    self.member_ops.push(MemberOp::Add(refs));
                }
            }
            (OpKind::Remove, None) => match value {
                None => self.member_ops.push(MemberOp::RemoveAll),
                Some(v) => {
                    let ids: Vec<String> = member_refs(Some(v), shown)?
                        .into_iter()
                        .map(|m| m.value)
                        .collect();
                    if !ids.is_empty() {
                        self.member_ops.push(MemberOp::Remove(ids));
                    }
                }
            },
            (OpKind::Remove, Some(f)) => {
                let mut ids = Vec::new();
                if !member_ids_from_filter(f, &mut ids) {
                    return Err(PatchError::InvalidFilter(format!(
                        "unsupported filter in path '{shown}': members can only be selected with 'value eq \"id\"' conditions joined by 'or'"
                    )));
                }
                dedup(&mut ids);
                self.member_ops.push(MemberOp::Remove(ids));
            }
            (_, Some(_)) => {
                return Err(PatchError::InvalidFilter(format!(
                    "unsupported path '{shown}': a value filter on members is only supported with 'remove'"
                )))
            }
        }
        Ok(())
    }
}

/// Whether `path` (from a path-less value) names a readOnly attribute whose
/// stored value already equals `v`.
pub(super) fn unchanged_read_only(doc: &Obj, r: &Resolved, path: &PatchPath, v: &Value) -> bool {
    if r.attr.mutability != Mutability::ReadOnly || r.sub.is_some() || path.filter.is_some() {
        return false;
    }
    let container = match r.extension {
        None => Some(doc),
        Some(urn) => doc.get(urn).and_then(Value::as_object),
    };
    container.and_then(|c| c.get(r.attr.name)) == Some(v)
}

/// Whether `doc` holds an object under extension `urn`, or lists it in
/// `schemas` (case-insensitively).
pub(super) fn holds_extension(doc: &Obj, urn: &str) -> bool {
    doc.iter()
        .any(|(k, v)| k.eq_ignore_ascii_case(urn) && v.is_object())
        || doc
            .get("schemas")
            .and_then(Value::as_array)
            .is_some_and(|list| {
                list.iter()
                    .any(|s| s.as_str().is_some_and(|s| s.eq_ignore_ascii_case(urn)))
            })
}

/// A path naming the whole attribute.
pub(super) fn whole(attr: AttrPath) -> PatchPath {
    PatchPath {
        attr,
        filter: None,
        sub_attr: None,
    }
}

/// The array at `name`, created empty when absent. A stored non-array is
/// an error rather than overwritten: data is never silently dropped.
pub(super) fn array_of<'o>(obj: &'o mut Obj, name: &str) -> Result<&'o mut Vec<Value>, PatchError> {
    obj.entry(name.to_string())
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or_else(|| {
            PatchError::InvalidValue(format!("stored value of '{name}' is not an array"))
        })
}

/// The object at `name`, created empty when absent.
pub(super) fn object_of<'o>(
    obj: &'o mut Obj,
    name: &str,
    shown: &str,
) -> Result<&'o mut Obj, PatchError> {
    match obj
        .entry(name.to_string())
        .or_insert_with(|| Value::Object(Map::new()))
    {
        Value::Object(o) => Ok(o),
        _ => Err(PatchError::InvalidValue(format!(
            "stored value of '{shown}' is not an object"
        ))),
    }
}

/// Removes `name` when it is an empty array or object.
pub(super) fn drop_if_empty(obj: &mut Obj, name: &str) {
    let empty = match obj.get(name) {
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        _ => false,
    };
    if empty {
        obj.shift_remove(name);
    }
}

/// RFC 7644: an immutable attribute may be set when unassigned, never
/// changed or removed afterwards.
pub(super) fn check_immutable(
    def: &Attribute,
    current: Option<&Value>,
    new: Option<&Value>,
    shown: &str,
) -> Result<(), PatchError> {
    if def.mutability != Mutability::Immutable {
        return Ok(());
    }
    match current {
        Some(c) if !c.is_null() && Some(c) != new => Err(PatchError::Mutability(format!(
            "attribute '{shown}' is immutable and already has a value"
        ))),
        _ => Ok(()),
    }
}

/// Whether `stored` is the element named by `given` in a remove-with-value:
/// equal `value` sub-attributes when `given` has one, else equal elements.
pub(super) fn same_element(stored: &Value, given: &Value) -> bool {
    match given.get("value") {
        Some(v) => stored.get("value") == Some(v),
        None => stored == given,
    }
}

/// RFC 7643 §2.4: at most one element is primary. When an element written
/// by this operation is primary, every other one stops being primary.
pub(super) fn fix_primary(arr: &mut [Value], touched: &[usize]) {
    let winner = touched
        .iter()
        .rev()
        .copied()
        .find(|&i| arr.get(i).and_then(|e| e.get("primary")) == Some(&Value::Bool(true)));
    let Some(winner) = winner else {
        return;
    };
    for (i, e) in arr.iter_mut().enumerate() {
        if i == winner {
            continue;
        }
        if let Some(p) = e.get_mut("primary") {
            if *p == Value::Bool(true) {
                *p = Value::Bool(false);
            }
        }
    }
}

/// Builds the element created by `add`/`replace` on an unmatched value
/// filter: the `eq` conditions of an `and`-only filter become sub-attribute
/// values. `false` when the filter has any other shape.
pub(super) fn seed_from_filter(filter: &Filter, parent: &Attribute, out: &mut Obj) -> bool {
    match filter {
        Filter::And(a, b) => seed_from_filter(a, parent, out) && seed_from_filter(b, parent, out),
        Filter::Compare(p, CompareOp::Eq, v) if p.schema.is_none() && p.sub_attr.is_none() => {
            let Some(def) = parent.sub(&p.attr) else {
                return false;
            };
            let raw = match v {
                CompValue::String(s) => Value::String(s.clone()),
                CompValue::Bool(b) => Value::Bool(*b),
                CompValue::Number(n) => Value::Number(n.clone()),
                CompValue::Null => return false,
            };
            match normalize_single(def, &raw, def.name) {
                Ok(v) => {
                    out.insert(def.name.to_string(), v);
                    true
                }
                Err(_) => false,
            }
        }
        _ => false,
    }
}

/// Operations on `attr[filter]` and `attr[filter].sub`.
pub(super) fn filtered(
    container: &mut Obj,
    op: OpKind,
    attr: &'static Attribute,
    filter: &Filter,
    sub: Option<&'static Attribute>,
    value: Option<&Value>,
    shown: &str,
) -> Result<(), PatchError> {
    let name = attr.name;
    let mut matched = Vec::new();
    if let Some(Value::Array(arr)) = container.get(name) {
        for (i, e) in arr.iter().enumerate() {
            let hit = matches_element(filter, attr, e).map_err(|err| {
                PatchError::InvalidPath(format!("invalid filter in path '{shown}': {err}"))
            })?;
            if hit {
                matched.push(i);
            }
        }
    }
    let new_value = match (op, value, sub) {
        (OpKind::Remove, _, _) => None,
        (_, Some(v), Some(s)) => Some(normalize_single(s, v, shown)?),
        (_, Some(v), None) => Some(normalize_element(attr, v, shown)?),
        (_, None, _) => None,
    };
    let arr = array_of(container, name)?;
    let mut touched = Vec::new();
    match (op, new_value) {
        (OpKind::Remove, _) => match sub {
            None => {
                let mut i = 0;
                arr.retain(|_| {
                    let keep = !matched.contains(&i);
                    i += 1;
                    keep
                });
            }
            Some(s) => {
                for &i in &matched {
                    if let Some(Value::Object(o)) = arr.get_mut(i) {
                        check_immutable(s, o.get(s.name), None, shown)?;
                        o.shift_remove(s.name);
                    }
                }
                arr.retain(|e| e.as_object().is_none_or(|o| !o.is_empty()));
            }
        },
        (_, None) => {}
        (op, Some(v)) if matched.is_empty() => {
            if op == OpKind::Replace && sub.is_none() {
                drop_if_empty(container, name);
                return Err(PatchError::NoTarget(format!(
                    "no value of '{name}' matches the path '{shown}'"
                )));
            }
            let mut seed = Map::new();
            if !seed_from_filter(filter, attr, &mut seed) {
                drop_if_empty(container, name);
                return Err(PatchError::NoTarget(format!(
                    "no value of '{name}' matches the path '{shown}', and its filter cannot describe a new one"
                )));
            }
            match (sub, v) {
                (Some(s), v) => {
                    seed.insert(s.name.to_string(), v);
                }
                (None, Value::Object(given)) => {
                    for (k, gv) in given {
                        if !gv.is_null() {
                            seed.insert(k, gv);
                        }
                    }
                }
                (None, _) => {}
            }
            arr.push(Value::Object(seed));
            touched.push(arr.len() - 1);
        }
        (op, Some(v)) => {
            for &i in &matched {
                let Some(e) = arr.get_mut(i) else {
                    continue;
                };
                match (op, sub, &v) {
                    (_, Some(s), v) => {
                        if let Value::Object(o) = e {
                            check_immutable(s, o.get(s.name), Some(v), shown)?;
                            if v.is_null() {
                                o.shift_remove(s.name);
                            } else {
                                o.insert(s.name.to_string(), v.clone());
                            }
                        }
                    }
                    (OpKind::Add, None, Value::Object(given)) => {
                        if let Value::Object(o) = e {
                            for (k, gv) in given {
                                if gv.is_null() {
                                    o.shift_remove(k);
                                } else {
                                    o.insert(k.clone(), gv.clone());
                                }
                            }
                        }
                    }
                    (_, None, v) => *e = strip_nulls(v.clone()),
                }
                touched.push(i);
            }
        }
    }
    fix_primary(arr, &touched);
    drop_if_empty(container, name);
    Ok(())
}
