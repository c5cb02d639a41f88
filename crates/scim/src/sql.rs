//! Renders a parsed SCIM filter (RFC 7644 §3.4.2.2) as a parameterised SQL
//! condition for SQLite or PostgreSQL, and a `sortBy` path (§3.4.2.3) as an
//! `ORDER BY` expression.
//!
//! This module owns the translation of filter *semantics* into SQL; it does
//! no IO and never sees a connection. Where each attribute lives (inside the
//! JSON document, in a dedicated column, or in a relation table) is decided
//! by the service through [`StorageMap`].
//!
//! Safety rules, relied upon by the service:
//! - Only canonical names taken from [`crate::schema`] and the SQL fragments
//!   supplied by the [`StorageMap`] are interpolated into SQL text; every
//!   client value goes through a bind ([`SqlCondition::binds`]).
//! - Placeholders are `$N` in both dialects, numbered consecutively from
//!   `first_placeholder` in the order they first appear in the text. A
//!   placeholder may appear several times (e.g. in `ew`); it is one bind.
//!
//! Semantics (the in-memory evaluator in [`crate::eval`] should agree):
//! - Textual attributes compare case-insensitively unless `caseExact`, by
//!   [`crate::schema::fold_case`] as the evaluator does: the operand is
//!   folded in Rust and compared with the column's precomputed folded twin,
//!   or with the stored text folded in SQL. Neither dialect has that fold
//!   (SQLite's `lower()` folds ASCII only; PostgreSQL's follows the
//!   database's locale), so the stored text goes through `lower()` for
//!   ASCII (in PostgreSQL under `COLLATE "C"`, which is ASCII-only in every
//!   locale) and `replace()` for each other character whose fold can change
//!   the outcome against this operand ([`fold_pairs_for`]). That is exact
//!   for stored text in NFC without a word-final capital sigma (`fold_case`
//!   lowercases `ΟΔΟΣ` to `οδος`, by context), and otherwise close.
//! - `co`/`sw`/`ew` never use `LIKE` (SQLite's `LIKE` ignores case even for
//!   `caseExact` attributes and treats `%`/`_` specially).
//! - `ne` is `NOT (eq)`: it matches resources where the attribute is absent,
//!   and for a multi-valued attribute it means "no value equals". `not` is
//!   rendered as `NOT COALESCE(x, FALSE)` so that absent attributes (SQL
//!   `NULL`) do not make the negation `NULL`.
//! - `eq null` means "not present", `ne null` means "present". `pr` on a
//!   complex value means one of its sub-attributes is present (RFC 7644
//!   §3.4.2.2: `{"givenName": ""}` is not), on a multi-valued one that an
//!   element is.
//! - A value filter on a single-valued complex attribute (`manager[value ne
//!   "x"]`) needs the value to exist, as an element does for `emails[...]`.
//! - All conditions of one value filter (`emails[type eq "work" and value co
//!   "@x"]`) apply to the same element; separate conditions on a
//!   multi-valued attribute (`emails.type eq "work" and emails.value co
//!   "@x"`) may be satisfied by different elements.
//! - dateTimes compare as text: the stored format is fixed so that text
//!   order is time order; [`StorageMap::normalize_datetime`] brings client
//!   literals to that format. PostgreSQL orderings use `COLLATE "C"` so they
//!   are byte order, as in SQLite.

use crate::ast::{AttrPath, CompValue, CompareOp, Filter};
use crate::filter::FilterError;
use crate::schema::{schemaless, AttrType, Attribute, ResolveError, Resolved, ResourceKind};

/// The SQL dialect to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Where an attribute is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// Inside the JSON document (the default).
    Json,
    /// A dedicated column holding the attribute's value as written. `lower`
    /// names a column holding the Unicode-lowercased value (for indexed
    /// case-insensitive equality), when there is one.
    Column { expr: String, lower: Option<String> },
    /// A multi-valued complex attribute kept in another table: rendered as
    /// `EXISTS (SELECT 1 FROM {from} WHERE {join} AND <cond>)`, where each
    /// sub-attribute maps to a column of that table (`sub_columns`: canonical
    /// sub-attribute name -> SQL column expression). A sub-attribute not
    /// listed there is an invalidFilter error.
    Relation {
        from: String,
        join: String,
        sub_columns: Vec<(&'static str, String)>,
    },
}

/// The service's storage layout, consulted for every attribute a filter
/// names, so that this module never hard-codes table or column names.
pub trait StorageMap {
    /// SQL expression of the JSON text column, e.g. `"r.data"`.
    fn json_column(&self) -> &str;

    /// Where the attribute lives. Single-valued paths are looked up as
    /// written (`meta.created` may be a column); multi-valued attributes are
    /// looked up with `sub = None` (the parent decides JSON or relation).
    fn storage(&self, resolved: &Resolved) -> Storage;

    /// Brings a client dateTime literal to the stored fixed format, so that
    /// text comparison is time comparison; `None` rejects it as invalid.
    /// The default passes the value through with `t`/`z` uppercased.
    fn normalize_datetime(&self, value: &str) -> Option<String> {
        Some(value.to_ascii_uppercase())
    }
}

/// Most characters one comparison may fold with `replace()`, and most in a
/// whole filter: they bound the nesting SQLite accepts (1000 levels) and the
/// binds both dialects accept. Real operands need a handful.
const MAX_FOLD_PAIRS: usize = 256;
const MAX_FILTER_FOLD_PAIRS: usize = 4096;

/// A bind value.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// A SQL boolean expression and its binds, in placeholder order.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlCondition {
    pub sql: String,
    pub binds: Vec<SqlValue>,
}

/// Renders `filter` as a condition over one row of `kind`. Placeholders are
/// `$first_placeholder`, `$first_placeholder + 1`, ...; the service puts its
/// own binds (tenant id, ...) before them. Errors (unknown attribute or
/// schema, operator not applicable to the attribute's type, value of the
/// wrong type) mean `400 invalidFilter`; their position is 0 because the
/// tree carries no positions.
pub fn render_filter(
    filter: &Filter,
    kind: ResourceKind,
    dialect: Dialect,
    map: &dyn StorageMap,
    first_placeholder: usize,
) -> Result<SqlCondition, FilterError> {
    let mut r = Renderer {
        kind,
        dialect,
        map,
        first: first_placeholder,
        binds: Vec::new(),
        aliases: 0,
        fold_pairs: 0,
    };
    let sql = r.render(filter, &Scope::Root)?;
    Ok(SqlCondition {
        sql,
        binds: r.binds,
    })
}

/// `ORDER BY` expression for `sortBy` (RFC 7644 §3.4.2.3). For a
/// multi-valued attribute it is the primary value if any, else the first;
/// case-insensitive strings sort by their lowercase form. It contains no
/// binds. RFC 7644 wants missing values last when ascending and first when
/// descending: append `NULLS LAST` / `NULLS FIRST` (SQLite sorts `NULL`
/// first by default).
pub fn render_sort_key(
    path: &AttrPath,
    kind: ResourceKind,
    dialect: Dialect,
    map: &dyn StorageMap,
) -> Result<String, FilterError> {
    let mut r = Renderer {
        kind,
        dialect,
        map,
        first: 1,
        binds: Vec::new(),
        aliases: 0,
        fold_pairs: 0,
    };
    r.sort_key(path)
}

fn invalid(message: impl Into<String>) -> FilterError {
    FilterError::new(message, 0)
}

fn resolve_error(e: ResolveError) -> FilterError {
    invalid(e.to_string())
}

/// `NOT COALESCE(x, FALSE)`: true when `x` is false or unknown (absent).
fn not(sql: &str) -> String {
    format!("NOT COALESCE({sql}, FALSE)")
}

/// What an attribute expression tests.
#[derive(Clone, Copy)]
enum Test<'f> {
    Present,
    /// Never `Ne` and never a `null` value: those are rewritten first.
    Compare(CompareOp, &'f CompValue),
}

/// Where a filter's paths are evaluated.
enum Scope {
    /// Paths are resolved from the resource root.
    Root,
    /// Inside `attr[...]` of a single-valued complex attribute: paths are
    /// sub-attributes of `parent`, resolved as `parent.sub`.
    Complex { parent: AttrPath },
    /// Inside `attr[...]` of a multi-valued attribute: paths are
    /// sub-attributes of `parent`, evaluated on one element.
    Element { parent: Resolved, target: Target },
}

/// One element of a multi-valued attribute.
enum Target {
    /// A JSON array element: `e1.value` (SQLite) or `e1.v` (PostgreSQL).
    Json(String),
    /// A row of a relation table.
    Relation(Vec<(&'static str, String)>),
}

/// A single value the condition reads.
enum Loc {
    /// The JSON value at `keys` below `base` (a document or an element).
    Json { base: String, keys: Vec<String> },
    /// A plain SQL column.
    Column { expr: String, lower: Option<String> },
}

/// JSON types, spelled per dialect by [`Renderer::json_type_is`].
#[derive(Clone, Copy)]
enum JsonKind {
    String,
    Number,
    Boolean,
    Object,
}

struct Renderer<'m> {
    kind: ResourceKind,
    dialect: Dialect,
    map: &'m dyn StorageMap,
    first: usize,
    binds: Vec<SqlValue>,
    aliases: usize,
    /// `replace()` pairs rendered so far ([`MAX_FILTER_FOLD_PAIRS`]).
    fold_pairs: usize,
}

impl Renderer<'_> {
    fn bind(&mut self, value: SqlValue) -> String {
        self.binds.push(value);
        format!("${}", self.first + self.binds.len() - 1)
    }

    fn alias(&mut self, prefix: &str) -> String {
        self.aliases += 1;
        format!("{prefix}{}", self.aliases)
    }

    fn resolve(&self, path: &AttrPath) -> Result<Resolved, FilterError> {
        self.kind.resolve(path).map_err(resolve_error)
    }

    fn render(&mut self, filter: &Filter, scope: &Scope) -> Result<String, FilterError> {
        match filter {
            Filter::And(a, b) => {
                let a = self.render(a, scope)?;
                let b = self.render(b, scope)?;
                Ok(format!("({a} AND {b})"))
            }
            Filter::Or(a, b) => {
                let a = self.render(a, scope)?;
                let b = self.render(b, scope)?;
                Ok(format!("({a} OR {b})"))
            }
            Filter::Not(inner) => Ok(not(&self.render(inner, scope)?)),
            Filter::Present(path) => self.atom(scope, path, Test::Present),
            Filter::Compare(path, op, value) => match (op, value) {
                (CompareOp::Eq, CompValue::Null) => {
                    Ok(not(&self.atom(scope, path, Test::Present)?))
                }
                (CompareOp::Ne, CompValue::Null) => self.atom(scope, path, Test::Present),
                (_, CompValue::Null) => Err(invalid(format!(
                    "operator '{}' cannot compare '{path}' with null",
                    op.as_str()
                ))),
                (CompareOp::Ne, v) => {
                    let eq = self.atom(scope, path, Test::Compare(CompareOp::Eq, v))?;
                    Ok(not(&eq))
                }
                (op, v) => self.atom(scope, path, Test::Compare(*op, v)),
            },
            Filter::ValuePath(path, inner) => self.value_path(scope, path, inner),
        }
    }

    /// `attr[inner]`: all of `inner` applies to one element.
    fn value_path(
        &mut self,
        scope: &Scope,
        path: &AttrPath,
        inner: &Filter,
    ) -> Result<String, FilterError> {
        if !matches!(scope, Scope::Root) {
            return Err(invalid(format!(
                "nested value filter on '{path}' is not allowed"
            )));
        }
        let resolved = self.resolve(path)?;
        if resolved.sub.is_some() || resolved.attr.kind != AttrType::Complex {
            return Err(invalid(format!(
                "a value filter needs a complex attribute, not '{path}'"
            )));
        }
        if !resolved.attr.multi_valued {
            // Like an element of a multi-valued attribute, the value must
            // exist for the filter to apply to it: `manager[value ne "x"]`
            // is false without a manager.
            let exists = match self.loc(&resolved)? {
                loc @ Loc::Json { .. } => self.json_type_is(&loc, JsonKind::Object)?,
                Loc::Column { expr, .. } => format!("{expr} IS NOT NULL"),
            };
            let scope = Scope::Complex {
                parent: path.clone(),
            };
            let cond = self.render(inner, &scope)?;
            return Ok(format!("({exists} AND {cond})"));
        }
        match self.map.storage(&resolved) {
            Storage::Json => self.exists_json(&resolved, |this, target| {
                let scope = Scope::Element {
                    parent: resolved,
                    target,
                };
                this.render(inner, &scope)
            }),
            Storage::Relation {
                from,
                join,
                sub_columns,
            } => {
                let scope = Scope::Element {
                    parent: resolved,
                    target: Target::Relation(sub_columns),
                };
                let cond = self.render(inner, &scope)?;
                Ok(format!(
                    "EXISTS (SELECT 1 FROM {from} WHERE {join} AND {cond})"
                ))
            }
            Storage::Column { .. } => Err(column_for_multi(&resolved)),
        }
    }

    /// `EXISTS` over the elements of the JSON array of `parent`, with a fresh
    /// alias; `cond` renders the condition on one element.
    fn exists_json(
        &mut self,
        parent: &Resolved,
        cond: impl FnOnce(&mut Self, Target) -> Result<String, FilterError>,
    ) -> Result<String, FilterError> {
        let keys = parent_keys(parent);
        let alias = self.alias("e");
        match self.dialect {
            Dialect::Sqlite => {
                let path = json_path(&keys)?;
                let cond = cond(self, Target::Json(format!("{alias}.value")))?;
                Ok(format!(
                    "EXISTS (SELECT 1 FROM json_each({}, {path}) AS {alias} WHERE {cond})",
                    self.map.json_column()
                ))
            }
            Dialect::Postgres => {
                let array = self.pg_array(&keys)?;
                let cond = cond(self, Target::Json(format!("{alias}.v")))?;
                Ok(format!(
                    "EXISTS (SELECT 1 FROM jsonb_array_elements({array}) AS {alias}(v) WHERE {cond})"
                ))
            }
        }
    }

    /// PostgreSQL: the array at `keys`, or `'[]'` when it is missing or not
    /// an array (`jsonb_array_elements` raises an error on non-arrays).
    fn pg_array(&self, keys: &[&'static str]) -> Result<String, FilterError> {
        let x = format!("({} #> {})", self.doc(), pg_path(keys)?);
        Ok(format!(
            "CASE WHEN jsonb_typeof({x}) = 'array' THEN {x} ELSE '[]'::jsonb END"
        ))
    }

    /// The JSON document as the dialect's JSON functions expect it.
    fn doc(&self) -> String {
        match self.dialect {
            Dialect::Sqlite => self.map.json_column().to_string(),
            Dialect::Postgres => format!("CAST({} AS jsonb)", self.map.json_column()),
        }
    }

    /// An attribute expression (`pr` or a comparison) in `scope`.
    fn atom(&mut self, scope: &Scope, path: &AttrPath, test: Test) -> Result<String, FilterError> {
        match scope {
            Scope::Root => self.atom_root(path, test),
            Scope::Complex { parent } => {
                let name = relative_name(parent, path)?;
                let full = AttrPath {
                    schema: parent.schema.clone(),
                    attr: parent.attr.clone(),
                    sub_attr: Some(name.to_string()),
                };
                self.atom_root(&full, test)
            }
            Scope::Element { parent, target } => {
                let name = relative_name(&attr_path_of(parent), path)?;
                let sub = parent.attr.sub(name).ok_or_else(|| {
                    invalid(format!("unknown attribute '{}.{name}'", parent.attr.name))
                })?;
                self.atom_element(parent.attr, sub, target, test)
            }
        }
    }

    /// A test on sub-attribute `sub` of one element of `parent`.
    fn atom_element(
        &mut self,
        parent: &Attribute,
        sub: &Attribute,
        target: &Target,
        test: Test,
    ) -> Result<String, FilterError> {
        let loc = match target {
            Target::Json(base) => Loc::Json {
                base: base.clone(),
                keys: vec![sub.name.to_string()],
            },
            Target::Relation(columns) => {
                let expr = columns
                    .iter()
                    .find(|(name, _)| *name == sub.name)
                    .map(|(_, expr)| expr.clone())
                    .ok_or_else(|| {
                        invalid(format!(
                            "attribute '{}.{}' cannot be filtered",
                            parent.name, sub.name
                        ))
                    })?;
                Loc::Column { expr, lower: None }
            }
        };
        self.test(&loc, sub, test)
    }

    /// A test on a path resolved from the resource root.
    fn atom_root(&mut self, path: &AttrPath, test: Test) -> Result<String, FilterError> {
        if let Some(loc) = self.custom_loc(path) {
            return self.custom_atom(&loc, path, test);
        }
        let mut resolved = self.resolve(path)?;
        if resolved.attr.multi_valued {
            if resolved.attr.kind != AttrType::Complex {
                return Err(invalid(format!(
                    "filtering multi-valued simple attribute '{path}' is not supported"
                )));
            }
            let sub = match (resolved.sub, test) {
                (Some(sub), _) => Some(sub),
                (None, Test::Present) => None,
                (None, Test::Compare(..)) => Some(value_sub(resolved.attr, path)?),
            };
            let parent = Resolved {
                sub: None,
                ..resolved
            };
            return match (self.map.storage(&parent), sub) {
                (Storage::Json, None) => self.any_element_present(&parent),
                (Storage::Json, Some(sub)) => self.exists_json(&parent, |this, target| {
                    this.atom_element(parent.attr, sub, &target, test)
                }),
                (Storage::Relation { from, join, .. }, None) => {
                    Ok(format!("EXISTS (SELECT 1 FROM {from} WHERE {join})"))
                }
                (
                    Storage::Relation {
                        from,
                        join,
                        sub_columns,
                    },
                    Some(sub),
                ) => {
                    let target = Target::Relation(sub_columns);
                    let cond = self.atom_element(parent.attr, sub, &target, test)?;
                    Ok(format!(
                        "EXISTS (SELECT 1 FROM {from} WHERE {join} AND {cond})"
                    ))
                }
                (Storage::Column { .. }, _) => Err(column_for_multi(&parent)),
            };
        }
        if resolved.leaf().kind == AttrType::Complex {
            if let Test::Compare(..) = test {
                // `manager eq "x"` compares the `value` sub-attribute.
                resolved.sub = Some(value_sub(resolved.attr, path)?);
            }
        }
        let loc = self.loc(&resolved)?;
        self.test(&loc, resolved.leaf(), test)
    }

    /// Where the value of a custom extension attribute is read
    /// ([`ResourceKind::is_custom_extension`]), when `path` names one: the
    /// JSON at `[urn, attr, sub]`, with the names as written (they have no
    /// canonical spelling).
    fn custom_loc(&self, path: &AttrPath) -> Option<Loc> {
        let urn = path.schema.as_deref()?;
        if !self.kind.is_custom_extension(urn) {
            return None;
        }
        let mut keys = vec![urn.to_string(), path.attr.clone()];
        keys.extend(path.sub_attr.clone());
        Some(Loc::Json {
            base: self.doc(),
            keys,
        })
    }

    /// A test on a custom extension attribute, which has no schema: the
    /// operand's JSON type decides the comparison, and only a stored value
    /// of that type can match (strings case-insensitively; numbers with
    /// orderings; booleans with `eq`/`ne`). `pr` is a non-empty string, any
    /// number or boolean, or a non-empty array or object.
    fn custom_atom(
        &mut self,
        loc: &Loc,
        path: &AttrPath,
        test: Test,
    ) -> Result<String, FilterError> {
        let (op, value) = match test {
            Test::Present => return self.custom_present(loc),
            Test::Compare(op, value) => (op, value),
        };
        let (kind, allowed, what) = match value {
            CompValue::String(_) => (AttrType::String, true, "a string"),
            CompValue::Number(_) => (
                AttrType::Decimal,
                !matches!(op, CompareOp::Co | CompareOp::Sw | CompareOp::Ew),
                "a number",
            ),
            CompValue::Bool(_) => (AttrType::Boolean, op == CompareOp::Eq, "a boolean"),
            CompValue::Null => (AttrType::String, false, "null"),
        };
        if !allowed {
            return Err(invalid(format!(
                "operator '{}' cannot compare '{path}' with {what}",
                op.as_str()
            )));
        }
        let cmp = self.compare(loc, schemaless(kind), op, value)?;
        if kind == AttrType::String {
            Ok(format!(
                "({} AND {cmp})",
                self.json_type_is(loc, JsonKind::String)?
            ))
        } else {
            Ok(cmp)
        }
    }

    /// `pr` on a custom extension attribute (see [`Self::custom_atom`]).
    fn custom_present(&self, loc: &Loc) -> Result<String, FilterError> {
        let text = self.text(loc)?;
        Ok(match self.dialect {
            Dialect::Sqlite => {
                let t = self.sqlite_type(loc)?;
                let Loc::Json { base, keys } = loc else {
                    return Err(invalid("a custom extension attribute is stored in JSON"));
                };
                let path = json_path(keys)?;
                format!(
                    "(CASE {t} WHEN 'text' THEN {text} <> '' WHEN 'integer' THEN 1 WHEN 'real' THEN 1 \
                     WHEN 'true' THEN 1 WHEN 'false' THEN 1 WHEN 'array' THEN json_array_length({base}, {path}) > 0 \
                     WHEN 'object' THEN {text} <> '{{}}' ELSE 0 END)"
                )
            }
            Dialect::Postgres => {
                let j = self.json(loc)?;
                format!(
                    "(CASE jsonb_typeof({j}) WHEN 'string' THEN {text} <> '' WHEN 'number' THEN TRUE \
                     WHEN 'boolean' THEN TRUE WHEN 'array' THEN {j} <> '[]'::jsonb \
                     WHEN 'object' THEN {j} <> '{{}}'::jsonb ELSE FALSE END)"
                )
            }
        })
    }

    /// Where a single-valued path's value is read.
    fn loc(&self, resolved: &Resolved) -> Result<Loc, FilterError> {
        match self.map.storage(resolved) {
            Storage::Json => Ok(Loc::Json {
                base: self.doc(),
                keys: resolved
                    .json_keys()
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
            }),
            Storage::Column { expr, lower } => Ok(Loc::Column { expr, lower }),
            Storage::Relation { .. } => Err(invalid(format!(
                "single-valued attribute '{}' cannot be stored in a relation",
                resolved.leaf().name
            ))),
        }
    }

    fn test(&mut self, loc: &Loc, attr: &Attribute, test: Test) -> Result<String, FilterError> {
        match test {
            Test::Present => self.present(loc, attr),
            Test::Compare(op, value) => self.compare(loc, attr, op, value),
        }
    }

    /// `pr` on a multi-valued complex attribute stored in JSON: an element
    /// that is present, i.e. has a present sub-attribute (`[{}]` and
    /// `[{"value": ""}]` are not present).
    fn any_element_present(&mut self, parent: &Resolved) -> Result<String, FilterError> {
        let attr = parent.attr;
        self.exists_json(parent, |this, target| match target {
            Target::Json(base) => this.present(
                &Loc::Json {
                    base,
                    keys: Vec::new(),
                },
                attr,
            ),
            Target::Relation(_) => Err(invalid("a JSON array has JSON elements")),
        })
    }

    /// `pr` on a single value: present, not null, and not empty.
    fn present(&self, loc: &Loc, attr: &Attribute) -> Result<String, FilterError> {
        match loc {
            Loc::Column { expr, .. } => Ok(if attr.kind.is_textual() {
                format!("({expr} IS NOT NULL AND {expr} <> '')")
            } else {
                format!("{expr} IS NOT NULL")
            }),
            Loc::Json { base, keys } => Ok(match attr.kind {
                AttrType::Boolean => self.json_type_is(loc, JsonKind::Boolean)?,
                AttrType::Integer | AttrType::Decimal => {
                    self.json_type_is(loc, JsonKind::Number)?
                }
                AttrType::Complex => {
                    // RFC 7644 §3.4.2.2: a complex value is present when it
                    // has a present sub-attribute (`{"givenName": ""}` is
                    // not), as in the evaluator.
                    let subs = attr
                        .sub_attributes
                        .iter()
                        .map(|sub| {
                            let mut keys = keys.clone();
                            keys.push(sub.name.to_string());
                            self.present(
                                &Loc::Json {
                                    base: base.clone(),
                                    keys,
                                },
                                sub,
                            )
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    if subs.is_empty() {
                        "FALSE".to_string()
                    } else {
                        format!("({})", subs.join(" OR "))
                    }
                }
                _ => format!(
                    "({} AND {} <> '')",
                    self.json_type_is(loc, JsonKind::String)?,
                    self.text(loc)?
                ),
            }),
        }
    }

    /// A comparison (`op` is not `Ne`, `value` is not `null`).
    fn compare(
        &mut self,
        loc: &Loc,
        attr: &Attribute,
        op: CompareOp,
        value: &CompValue,
    ) -> Result<String, FilterError> {
        let unsupported = || {
            invalid(format!(
                "operator '{}' is not supported for {} attribute '{}'",
                op.as_str(),
                attr.kind.as_str(),
                attr.name
            ))
        };
        // Operands of the wrong JSON type are coerced as the in-memory
        // evaluator does (`active eq "True"`, `employeeNumber eq 42`); one
        // that cannot be coerced matches nothing.
        match attr.kind {
            AttrType::Complex => Err(invalid(format!(
                "complex attribute '{}' cannot be compared with a value",
                attr.name
            ))),
            AttrType::Boolean => {
                if op != CompareOp::Eq {
                    return Err(unsupported());
                }
                let b = match value {
                    CompValue::Bool(b) => *b,
                    CompValue::String(t) if t.eq_ignore_ascii_case("true") => true,
                    CompValue::String(t) if t.eq_ignore_ascii_case("false") => false,
                    _ => return Ok("FALSE".to_string()),
                };
                Ok(match (loc, self.dialect) {
                    (Loc::Column { expr, .. }, _) => {
                        format!("{expr} = {}", self.bind(SqlValue::Bool(b)))
                    }
                    (Loc::Json { .. }, Dialect::Sqlite) => {
                        format!("{} = '{b}'", self.sqlite_type(loc)?)
                    }
                    (Loc::Json { .. }, Dialect::Postgres) => {
                        format!("{} = '{b}'::jsonb", self.json(loc)?)
                    }
                })
            }
            AttrType::Integer | AttrType::Decimal => {
                let sym = match op {
                    CompareOp::Co | CompareOp::Sw | CompareOp::Ew | CompareOp::Ne => {
                        return Err(unsupported())
                    }
                    op => ordering_symbol(op),
                };
                let bound = match value {
                    CompValue::Number(n) => match (n.as_i64(), n.as_f64()) {
                        (Some(i), _) => SqlValue::Int(i),
                        (None, Some(f)) => SqlValue::Float(f),
                        (None, None) => return Ok("FALSE".to_string()),
                    },
                    CompValue::String(t) => match t.trim().parse::<f64>() {
                        Ok(f) if f.is_finite() => SqlValue::Float(f),
                        _ => return Ok("FALSE".to_string()),
                    },
                    _ => return Ok("FALSE".to_string()),
                };
                let p = self.bind(bound);
                Ok(match (loc, self.dialect) {
                    (Loc::Column { expr, .. }, _) => format!("{expr} {sym} {p}"),
                    (Loc::Json { .. }, Dialect::Sqlite) => format!(
                        "({} AND {} {sym} {p})",
                        self.json_type_is(loc, JsonKind::Number)?,
                        self.text(loc)?
                    ),
                    (Loc::Json { .. }, Dialect::Postgres) => format!(
                        "(CASE WHEN {} THEN CAST({} AS numeric) END {sym} CAST({p} AS numeric))",
                        self.json_type_is(loc, JsonKind::Number)?,
                        self.text(loc)?
                    ),
                })
            }
            AttrType::Binary if op != CompareOp::Eq => Err(unsupported()),
            AttrType::DateTime => {
                let s = operand_text(value);
                let s = self
                    .map
                    .normalize_datetime(&s)
                    .ok_or_else(|| invalid(format!("invalid dateTime '{s}'")))?;
                let lhs = self.text(loc)?;
                Ok(self.text_compare(&lhs, op, s))
            }
            AttrType::String | AttrType::Reference | AttrType::Binary => {
                let s = operand_text(value);
                if attr.case_exact {
                    let lhs = self.text(loc)?;
                    return Ok(self.text_compare(&lhs, op, s));
                }
                let folded = crate::schema::fold_case(&s);
                let lhs = match loc {
                    // A lowercase column holds `fold_case` of the value.
                    Loc::Column {
                        lower: Some(lower), ..
                    } => lower.clone(),
                    _ => {
                        let text = self.text(loc)?;
                        self.fold(&text, &folded, op, attr)?
                    }
                };
                Ok(self.text_compare(&lhs, op, folded))
            }
        }
    }

    /// `text` folded as [`crate::schema::fold_case`] folds it, as far as
    /// comparing it by `op` with the folded operand `folded` can tell (see
    /// the module docs and [`fold_pairs_for`]).
    fn fold(
        &mut self,
        text: &str,
        folded: &str,
        op: CompareOp,
        attr: &Attribute,
    ) -> Result<String, FilterError> {
        let mut sql = match self.dialect {
            Dialect::Sqlite => format!("lower({text})"),
            Dialect::Postgres => format!("lower({text} COLLATE \"C\")"),
        };
        let ordering = matches!(
            op,
            CompareOp::Gt | CompareOp::Ge | CompareOp::Lt | CompareOp::Le
        );
        let pairs = fold_pairs_for(folded, ordering);
        self.fold_pairs += pairs.len();
        if pairs.len() > MAX_FOLD_PAIRS || self.fold_pairs > MAX_FILTER_FOLD_PAIRS {
            return Err(invalid(format!(
                "too many distinct letters to compare case-insensitively with '{}'",
                attr.name
            )));
        }
        for (upper, lower) in pairs {
            let u = self.bind(SqlValue::Text(upper.to_string()));
            let l = self.bind(SqlValue::Text(lower.clone()));
            sql = format!("replace({sql}, {u}, {l})");
        }
        Ok(sql)
    }

    /// A text comparison of `lhs` with the bound `value`, without `LIKE`.
    fn text_compare(&mut self, lhs: &str, op: CompareOp, value: String) -> String {
        if matches!(op, CompareOp::Co | CompareOp::Sw | CompareOp::Ew) && value.is_empty() {
            // Every string contains, starts and ends with "".
            return format!("{lhs} IS NOT NULL");
        }
        let p = self.bind(SqlValue::Text(value));
        match (op, self.dialect) {
            (CompareOp::Eq | CompareOp::Ne, _) => format!("{lhs} = {p}"),
            (CompareOp::Co, Dialect::Sqlite) => format!("instr({lhs}, {p}) > 0"),
            (CompareOp::Co, Dialect::Postgres) => format!("strpos({lhs}, {p}) > 0"),
            (CompareOp::Sw, Dialect::Sqlite) => format!("substr({lhs}, 1, length({p})) = {p}"),
            (CompareOp::Sw, Dialect::Postgres) => format!("left({lhs}, length({p})) = {p}"),
            (CompareOp::Ew, Dialect::Sqlite) => {
                format!("(length({lhs}) >= length({p}) AND substr({lhs}, -length({p})) = {p})")
            }
            (CompareOp::Ew, Dialect::Postgres) => format!("right({lhs}, length({p})) = {p}"),
            (op, Dialect::Sqlite) => format!("{lhs} {} {p}", ordering_symbol(op)),
            (op, Dialect::Postgres) => {
                format!("{lhs} COLLATE \"C\" {} {p}", ordering_symbol(op))
            }
        }
    }

    /// The value as SQL text (JSON strings unquoted).
    fn text(&self, loc: &Loc) -> Result<String, FilterError> {
        match loc {
            Loc::Column { expr, .. } => Ok(expr.clone()),
            Loc::Json { base, keys } => match self.dialect {
                Dialect::Sqlite => Ok(format!("json_extract({base}, {})", json_path(keys)?)),
                Dialect::Postgres => Ok(format!("({base} #>> {})", pg_path(keys)?)),
            },
        }
    }

    /// PostgreSQL: the value as `jsonb`.
    fn json(&self, loc: &Loc) -> Result<String, FilterError> {
        match loc {
            Loc::Column { expr, .. } => Ok(expr.clone()),
            Loc::Json { base, keys } => Ok(format!("({base} #> {})", pg_path(keys)?)),
        }
    }

    /// SQLite: `json_type(..)` of the value.
    fn sqlite_type(&self, loc: &Loc) -> Result<String, FilterError> {
        match loc {
            Loc::Column { expr, .. } => Ok(format!("json_type({expr})")),
            Loc::Json { base, keys } => Ok(format!("json_type({base}, {})", json_path(keys)?)),
        }
    }

    /// A check that the JSON value has type `kind`.
    fn json_type_is(&self, loc: &Loc, kind: JsonKind) -> Result<String, FilterError> {
        Ok(match self.dialect {
            Dialect::Sqlite => {
                let t = self.sqlite_type(loc)?;
                match kind {
                    JsonKind::String => format!("{t} = 'text'"),
                    JsonKind::Number => format!("{t} IN ('integer', 'real')"),
                    JsonKind::Boolean => format!("{t} IN ('true', 'false')"),
                    JsonKind::Object => format!("{t} = 'object'"),
                }
            }
            Dialect::Postgres => {
                let name = match kind {
                    JsonKind::String => "string",
                    JsonKind::Number => "number",
                    JsonKind::Boolean => "boolean",
                    JsonKind::Object => "object",
                };
                format!("jsonb_typeof({}) = '{name}'", self.json(loc)?)
            }
        })
    }

    fn sort_key(&mut self, path: &AttrPath) -> Result<String, FilterError> {
        if let Some(loc) = self.custom_loc(path) {
            let key = format!("lower({})", self.text(&loc)?);
            return Ok(self.collate_text(key, schemaless(AttrType::String)));
        }
        let mut resolved = self.resolve(path)?;
        if resolved.attr.multi_valued {
            if resolved.attr.kind != AttrType::Complex {
                return Err(invalid(format!("cannot sort by '{path}'")));
            }
            let sub = match resolved.sub {
                Some(sub) => sub,
                None => value_sub(resolved.attr, path)?,
            };
            let parent = Resolved {
                sub: None,
                ..resolved
            };
            let primary = resolved.attr.sub("primary").filter(|p| p.name != sub.name);
            let alias = self.alias("s");
            let key = match self.map.storage(&parent) {
                Storage::Json => {
                    let (base, from, position) = match self.dialect {
                        Dialect::Sqlite => (
                            format!("{alias}.value"),
                            format!(
                                "json_each({}, {}) AS {alias}",
                                self.map.json_column(),
                                json_path(&parent_keys(&parent))?
                            ),
                            format!("{alias}.key"),
                        ),
                        Dialect::Postgres => (
                            format!("{alias}.v"),
                            format!(
                                "jsonb_array_elements({}) WITH ORDINALITY AS {alias}(v, n)",
                                self.pg_array(&parent_keys(&parent))?
                            ),
                            format!("{alias}.n"),
                        ),
                    };
                    let value = self.sort_value(
                        &Loc::Json {
                            base: base.clone(),
                            keys: vec![sub.name.to_string()],
                        },
                        sub,
                    )?;
                    let first = match primary {
                        Some(p) => {
                            let is_primary = self.compare(
                                &Loc::Json {
                                    base,
                                    keys: vec![p.name.to_string()],
                                },
                                p,
                                CompareOp::Eq,
                                &CompValue::Bool(true),
                            )?;
                            format!("CASE WHEN {is_primary} THEN 0 ELSE 1 END, ")
                        }
                        None => String::new(),
                    };
                    format!("(SELECT {value} FROM {from} ORDER BY {first}{position} LIMIT 1)")
                }
                Storage::Relation {
                    from,
                    join,
                    sub_columns,
                } => {
                    let column = |name: &str| {
                        sub_columns
                            .iter()
                            .find(|(n, _)| *n == name)
                            .map(|(_, e)| e.clone())
                    };
                    let expr = column(sub.name)
                        .ok_or_else(|| invalid(format!("cannot sort by '{path}'")))?;
                    let value = self.sort_value(&Loc::Column { expr, lower: None }, sub)?;
                    let first = match primary.and_then(|p| column(p.name)) {
                        Some(p) => format!("CASE WHEN {p} THEN 0 ELSE 1 END, "),
                        None => String::new(),
                    };
                    format!(
                        "(SELECT {value} FROM {from} WHERE {join} ORDER BY {first}{value} LIMIT 1)"
                    )
                }
                Storage::Column { .. } => return Err(column_for_multi(&parent)),
            };
            return Ok(self.collate_text(key, sub));
        }
        if resolved.leaf().kind == AttrType::Complex {
            resolved.sub = Some(value_sub(resolved.attr, path)?);
        }
        let loc = self.loc(&resolved)?;
        let value = self.sort_value(&loc, resolved.leaf())?;
        Ok(self.collate_text(value, resolved.leaf()))
    }

    /// The sortable form of one value (lowercase for case-insensitive text).
    fn sort_value(&self, loc: &Loc, attr: &Attribute) -> Result<String, FilterError> {
        Ok(match attr.kind {
            AttrType::Complex => {
                return Err(invalid(format!(
                    "cannot sort by complex attribute '{}'",
                    attr.name
                )))
            }
            AttrType::Integer | AttrType::Decimal => match self.dialect {
                Dialect::Sqlite => self.text(loc)?,
                Dialect::Postgres => match loc {
                    Loc::Column { expr, .. } => expr.clone(),
                    Loc::Json { .. } => format!(
                        "CASE WHEN {} THEN CAST({} AS numeric) END",
                        self.json_type_is(loc, JsonKind::Number)?,
                        self.text(loc)?
                    ),
                },
            },
            AttrType::String | AttrType::Reference | AttrType::Binary if !attr.case_exact => {
                match loc {
                    Loc::Column {
                        lower: Some(lower), ..
                    } => lower.clone(),
                    _ => format!("lower({})", self.text(loc)?),
                }
            }
            _ => self.text(loc)?,
        })
    }

    /// PostgreSQL: byte-order collation for textual sort keys, as SQLite.
    fn collate_text(&self, key: String, attr: &Attribute) -> String {
        if self.dialect == Dialect::Postgres && attr.kind.is_textual() {
            format!("{key} COLLATE \"C\"")
        } else {
            key
        }
    }
}

/// Every character that can appear in NFC text, is not ASCII, and that
/// [`crate::schema::fold_case`] changes, with what it becomes, in code point
/// order (about 1,400: capitals of every cased script, titlecase digraphs,
/// `İ` to `i` + U+0307, `ẞ` to `ß`).
fn fold_pairs() -> &'static [(char, String)] {
    static PAIRS: std::sync::LazyLock<Vec<(char, String)>> = std::sync::LazyLock::new(|| {
        ('\u{80}'..=char::MAX)
            .filter(|c| c.to_lowercase().ne(std::iter::once(*c)))
            .filter_map(|c| {
                let one = c.to_string();
                let folded = crate::schema::fold_case(&one);
                (folded != one && unicode_normalization::is_nfc(&one)).then_some((c, folded))
            })
            .collect()
    });
    &PAIRS
}

/// The characters [`fold_pairs`] whose folding can change how a stored text
/// compares with the folded operand `folded`: those whose fold holds one of
/// its characters (else neither the character nor its fold can be part of
/// an equal, containing, starting or ending text); for an ordering also
/// those with one of its characters strictly between them and the first
/// character of their fold (else both sort on the same side of it). The
/// others may stay as stored: `lower()` folds ASCII.
fn fold_pairs_for(folded: &str, ordering: bool) -> Vec<&'static (char, String)> {
    let mut chars: Vec<char> = folded.chars().collect();
    chars.sort_unstable();
    chars.dedup();
    let holds = |c: char| chars.binary_search(&c).is_ok();
    let between = |a: char, b: char| {
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        // The first operand character after `lo`.
        let i = chars.partition_point(|&c| c <= lo);
        chars.get(i).is_some_and(|&c| c < hi)
    };
    fold_pairs()
        .iter()
        .filter(|(upper, lower)| {
            lower.chars().any(holds)
                || (ordering && lower.chars().next().is_some_and(|f| between(*upper, f)))
        })
        .collect()
}

/// The single name of a path inside `parent[...]`.
fn relative_name<'p>(parent: &AttrPath, path: &'p AttrPath) -> Result<&'p str, FilterError> {
    if path.schema.is_some() || path.sub_attr.is_some() {
        return Err(invalid(format!(
            "'{path}' inside the value filter of '{parent}' must name a sub-attribute"
        )));
    }
    Ok(&path.attr)
}

fn attr_path_of(resolved: &Resolved) -> AttrPath {
    AttrPath {
        schema: resolved.extension.map(str::to_string),
        attr: resolved.attr.name.to_string(),
        sub_attr: None,
    }
}

/// The `value` sub-attribute that stands for a complex attribute in
/// comparisons (`emails eq "x"`, `manager eq "id"`).
fn value_sub(attr: &'static Attribute, path: &AttrPath) -> Result<&'static Attribute, FilterError> {
    attr.sub("value").ok_or_else(|| {
        invalid(format!(
            "complex attribute '{path}' has no 'value' sub-attribute to compare"
        ))
    })
}

/// JSON keys of a multi-valued attribute's array (without the sub-attribute).
fn parent_keys(parent: &Resolved) -> Vec<&'static str> {
    let mut keys = Vec::with_capacity(2);
    keys.extend(parent.extension);
    keys.push(parent.attr.name);
    keys
}

fn column_for_multi(resolved: &Resolved) -> FilterError {
    invalid(format!(
        "multi-valued attribute '{}' cannot be stored in a column",
        resolved.attr.name
    ))
}

/// Canonical names are plain; refusing anything else keeps the quoting
/// below trivially correct even if a schema definition were mistyped.
fn check_key(key: &str) -> Result<&str, FilterError> {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'-' | b'$'))
    {
        Ok(key)
    } else {
        Err(invalid(format!(
            "attribute name '{key}' cannot be used in SQL"
        )))
    }
}

/// SQLite JSON path literal with quoted labels: `'$."name"."givenName"'`.
fn json_path<K: AsRef<str>>(keys: &[K]) -> Result<String, FilterError> {
    let mut out = String::from("'$");
    for key in keys {
        out.push_str(&format!(".\"{}\"", check_key(key.as_ref())?));
    }
    out.push('\'');
    Ok(out)
}

/// PostgreSQL `text[]` path literal with quoted elements:
/// `'{"urn:...:User","employeeNumber"}'`.
fn pg_path<K: AsRef<str>>(keys: &[K]) -> Result<String, FilterError> {
    let quoted = keys
        .iter()
        .map(|k| check_key(k.as_ref()).map(|k| format!("\"{k}\"")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(format!("'{{{}}}'", quoted.join(",")))
}

fn ordering_symbol(op: CompareOp) -> &'static str {
    match op {
        CompareOp::Gt => ">",
        CompareOp::Ge => ">=",
        CompareOp::Lt => "<",
        CompareOp::Le => "<=",
        _ => "=",
    }
}

/// A non-null operand as text (`42` compares as `"42"` with a string).
fn operand_text(value: &CompValue) -> String {
    match value {
        CompValue::String(s) => s.clone(),
        CompValue::Number(n) => n.to_string(),
        CompValue::Bool(b) => b.to_string(),
        CompValue::Null => String::new(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::filter::{parse_attr_path, parse_filter};
    use crate::schema::ENTERPRISE_URN;
    use serde_json::json;

    /// The layout the tests (and the SQLite execution tests) assume.
    struct TestMap;

    impl StorageMap for TestMap {
        fn json_column(&self) -> &str {
            "r.data"
        }

        fn storage(&self, r: &Resolved) -> Storage {
            let col = |expr: &str, lower: Option<&str>| Storage::Column {
                expr: expr.into(),
                lower: lower.map(str::to_string),
            };
            match (r.extension, r.attr.name, r.sub.map(|s| s.name)) {
                (None, "userName", None) => col("r.user_name", Some("r.user_name_lc")),
                (None, "id", None) => col("r.id", None),
                (None, "meta", Some("created")) => col("r.created", None),
                (None, "members", None) => Storage::Relation {
                    from: "group_members m".into(),
                    join: "m.tenant_id = r.tenant_id AND m.group_id = r.id".into(),
                    sub_columns: vec![
                        ("value", "m.member_id".into()),
                        ("type", "m.member_type".into()),
                        ("display", "m.display".into()),
                    ],
                },
                (None, "groups", None) => Storage::Relation {
                    from: "group_members g".into(),
                    join: "g.tenant_id = r.tenant_id AND g.member_id = r.id".into(),
                    sub_columns: vec![("value", "g.group_id".into())],
                },
                _ => Storage::Json,
            }
        }
    }

    fn t(s: &str) -> SqlValue {
        SqlValue::Text(s.into())
    }

    fn render(
        kind: ResourceKind,
        filter: &str,
        dialect: Dialect,
    ) -> Result<SqlCondition, FilterError> {
        render_filter(&parse_filter(filter).unwrap(), kind, dialect, &TestMap, 1)
    }

    fn check_kind(
        kind: ResourceKind,
        filter: &str,
        dialect: Dialect,
        sql: &str,
        binds: &[SqlValue],
    ) {
        let got = render(kind, filter, dialect).unwrap_or_else(|e| panic!("{filter}: {e}"));
        assert_eq!(got.sql, sql, "{filter} ({dialect:?})");
        assert_eq!(got.binds, binds, "{filter} ({dialect:?})");
    }

    fn check(filter: &str, dialect: Dialect, sql: &str, binds: &[SqlValue]) {
        check_kind(ResourceKind::User, filter, dialect, sql, binds);
    }

    fn rejects(kind: ResourceKind, filter: &str) -> String {
        match render(kind, filter, Dialect::Sqlite) {
            Ok(c) => panic!("{filter} rendered as {}", c.sql),
            Err(e) => e.message,
        }
    }

    use Dialect::{Postgres as Pg, Sqlite as Lite};

    #[test]
    fn columns_use_the_lowercase_twin_and_binds() {
        check(
            "userName eq \"BJensen\"",
            Lite,
            "r.user_name_lc = $1",
            &[t("bjensen")],
        );
        check(
            "USERNAME eq \"BJensen\"",
            Pg,
            "r.user_name_lc = $1",
            &[t("bjensen")],
        );
        check(
            "userName sw \"BJ\"",
            Lite,
            "substr(r.user_name_lc, 1, length($1)) = $1",
            &[t("bj")],
        );
        check(
            "userName sw \"BJ\"",
            Pg,
            "left(r.user_name_lc, length($1)) = $1",
            &[t("bj")],
        );
        check("id eq \"AbC\"", Lite, "r.id = $1", &[t("AbC")]);
        check(
            "meta.created gt \"2020-01-01t00:00:00z\"",
            Lite,
            "r.created > $1",
            &[t("2020-01-01T00:00:00Z")],
        );
        check(
            "meta.created ge \"2020\"",
            Pg,
            "r.created COLLATE \"C\" >= $1",
            &[t("2020")],
        );
        check("id pr", Lite, "(r.id IS NOT NULL AND r.id <> '')", &[]);
    }

    #[test]
    fn json_paths_per_dialect() {
        check(
            "name.givenName co \"BAR\"",
            Lite,
            "instr(lower(json_extract(r.data, '$.\"name\".\"givenName\"')), $1) > 0",
            &[t("bar")],
        );
        check(
            "name.givenName co \"BAR\"",
            Pg,
            "strpos(lower((CAST(r.data AS jsonb) #>> '{\"name\",\"givenName\"}') COLLATE \"C\"), $1) > 0",
            &[t("bar")],
        );
        check(
            "externalId ew \"X\"",
            Lite,
            "(length(json_extract(r.data, '$.\"externalId\"')) >= length($1) AND substr(json_extract(r.data, '$.\"externalId\"'), -length($1)) = $1)",
            &[t("X")],
        );
        check(
            "externalId ew \"X\"",
            Pg,
            "right((CAST(r.data AS jsonb) #>> '{\"externalId\"}'), length($1)) = $1",
            &[t("X")],
        );
        check(
            &format!("{ENTERPRISE_URN}:employeeNumber eq \"7A\""),
            Lite,
            "lower(json_extract(r.data, '$.\"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User\".\"employeeNumber\"')) = $1",
            &[t("7a")],
        );
        check(
            &format!("{ENTERPRISE_URN}:manager.value eq \"m\""),
            Pg,
            "lower((CAST(r.data AS jsonb) #>> '{\"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User\",\"manager\",\"value\"}') COLLATE \"C\") = $1",
            &[t("m")],
        );
        check(
            "meta.lastModified lt \"2020\"",
            Pg,
            "(CAST(r.data AS jsonb) #>> '{\"meta\",\"lastModified\"}') COLLATE \"C\" < $1",
            &[t("2020")],
        );
        check(
            "title gt \"B\"",
            Lite,
            "lower(json_extract(r.data, '$.\"title\"')) > $1",
            &[t("b")],
        );
    }

    #[test]
    fn booleans_presence_null_and_negation() {
        check(
            "active eq true",
            Lite,
            "json_type(r.data, '$.\"active\"') = 'true'",
            &[],
        );
        check(
            "active eq FALSE",
            Pg,
            "(CAST(r.data AS jsonb) #> '{\"active\"}') = 'false'::jsonb",
            &[],
        );
        check(
            "active ne true",
            Lite,
            "NOT COALESCE(json_type(r.data, '$.\"active\"') = 'true', FALSE)",
            &[],
        );
        check(
            "active pr",
            Pg,
            "jsonb_typeof((CAST(r.data AS jsonb) #> '{\"active\"}')) = 'boolean'",
            &[],
        );
        check(
            "title pr",
            Lite,
            "(json_type(r.data, '$.\"title\"') = 'text' AND json_extract(r.data, '$.\"title\"') <> '')",
            &[],
        );
        // A complex value is present when one of its sub-attributes is.
        let subs: Vec<String> = [
            "formatted",
            "familyName",
            "givenName",
            "middleName",
            "honorificPrefix",
            "honorificSuffix",
        ]
        .iter()
        .map(|sub| {
            render(ResourceKind::User, &format!("name.{sub} pr"), Pg)
                .unwrap()
                .sql
        })
        .collect();
        check("name pr", Pg, &format!("({})", subs.join(" OR ")), &[]);
        check(
            "title eq null",
            Lite,
            "NOT COALESCE((json_type(r.data, '$.\"title\"') = 'text' AND json_extract(r.data, '$.\"title\"') <> ''), FALSE)",
            &[],
        );
        check("id ne null", Lite, "(r.id IS NOT NULL AND r.id <> '')", &[]);
        check(
            "not (userName eq \"a\") or id eq \"b\" and id ne \"c\"",
            Lite,
            "(NOT COALESCE(r.user_name_lc = $1, FALSE) OR (r.id = $2 AND NOT COALESCE(r.id = $3, FALSE)))",
            &[t("a"), t("b"), t("c")],
        );
        check(
            "title co \"\"",
            Lite,
            "lower(json_extract(r.data, '$.\"title\"')) IS NOT NULL",
            &[],
        );
    }

    #[test]
    fn multi_valued_json_attributes_use_exists_per_element() {
        check(
            "emails[type eq \"work\" and value co \"@X\"]",
            Lite,
            "EXISTS (SELECT 1 FROM json_each(r.data, '$.\"emails\"') AS e1 WHERE (lower(json_extract(e1.value, '$.\"type\"')) = $1 AND instr(lower(json_extract(e1.value, '$.\"value\"')), $2) > 0))",
            &[t("work"), t("@x")],
        );
        check(
            "emails[type eq \"work\" and value co \"@X\"]",
            Pg,
            "EXISTS (SELECT 1 FROM jsonb_array_elements(CASE WHEN jsonb_typeof((CAST(r.data AS jsonb) #> '{\"emails\"}')) = 'array' THEN (CAST(r.data AS jsonb) #> '{\"emails\"}') ELSE '[]'::jsonb END) AS e1(v) WHERE (lower((e1.v #>> '{\"type\"}') COLLATE \"C\") = $1 AND strpos(lower((e1.v #>> '{\"value\"}') COLLATE \"C\"), $2) > 0))",
            &[t("work"), t("@x")],
        );
        check(
            "emails eq \"A\" or emails.value eq \"B\"",
            Lite,
            "(EXISTS (SELECT 1 FROM json_each(r.data, '$.\"emails\"') AS e1 WHERE lower(json_extract(e1.value, '$.\"value\"')) = $1) OR EXISTS (SELECT 1 FROM json_each(r.data, '$.\"emails\"') AS e2 WHERE lower(json_extract(e2.value, '$.\"value\"')) = $2))",
            &[t("a"), t("b")],
        );
        // An element is present when one of its sub-attributes is.
        check(
            "emails pr",
            Lite,
            "EXISTS (SELECT 1 FROM json_each(r.data, '$.\"emails\"') AS e1 WHERE ((json_type(e1.value, '$.\"value\"') = 'text' AND json_extract(e1.value, '$.\"value\"') <> '') OR (json_type(e1.value, '$.\"display\"') = 'text' AND json_extract(e1.value, '$.\"display\"') <> '') OR (json_type(e1.value, '$.\"type\"') = 'text' AND json_extract(e1.value, '$.\"type\"') <> '') OR json_type(e1.value, '$.\"primary\"') IN ('true', 'false')))",
            &[],
        );
        let pg = render(ResourceKind::User, "emails pr", Pg).unwrap().sql;
        assert!(pg.starts_with("EXISTS (SELECT 1 FROM jsonb_array_elements(CASE WHEN jsonb_typeof((CAST(r.data AS jsonb) #> '{\"emails\"}')) = 'array'"), "{pg}");
        assert!(
            pg.ends_with(" OR jsonb_typeof((e1.v #> '{\"primary\"}')) = 'boolean'))"),
            "{pg}"
        );
        check(
            "emails.primary eq true",
            Pg,
            "EXISTS (SELECT 1 FROM jsonb_array_elements(CASE WHEN jsonb_typeof((CAST(r.data AS jsonb) #> '{\"emails\"}')) = 'array' THEN (CAST(r.data AS jsonb) #> '{\"emails\"}') ELSE '[]'::jsonb END) AS e1(v) WHERE (e1.v #> '{\"primary\"}') = 'true'::jsonb)",
            &[],
        );
        check(
            "emails.value ne \"a\"",
            Lite,
            "NOT COALESCE(EXISTS (SELECT 1 FROM json_each(r.data, '$.\"emails\"') AS e1 WHERE lower(json_extract(e1.value, '$.\"value\"')) = $1), FALSE)",
            &[t("a")],
        );
        // A single-valued complex attribute: the value must exist.
        check(
            &format!("{ENTERPRISE_URN}:manager[value eq \"m\"]"),
            Lite,
            "(json_type(r.data, '$.\"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User\".\"manager\"') = 'object' AND lower(json_extract(r.data, '$.\"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User\".\"manager\".\"value\"')) = $1)",
            &[t("m")],
        );
    }

    #[test]
    fn relations_render_exists_over_the_table() {
        let g = ResourceKind::Group;
        let base = "EXISTS (SELECT 1 FROM group_members m WHERE m.tenant_id = r.tenant_id AND m.group_id = r.id";
        for (filter, cond, binds) in [
            ("members[value eq \"AbC\"]", " AND m.member_id = $1)", vec![t("AbC")]),
            ("members.value eq \"AbC\"", " AND m.member_id = $1)", vec![t("AbC")]),
            ("members eq \"AbC\"", " AND m.member_id = $1)", vec![t("AbC")]),
            ("members pr", ")", vec![]),
            ("members.display eq \"X\"", " AND lower(m.display) = $1)", vec![t("x")]),
            (
                "members[type eq \"User\" and not (value sw \"x\")]",
                " AND (lower(m.member_type) = $1 AND NOT COALESCE(substr(m.member_id, 1, length($2)) = $2, FALSE)))",
                vec![t("user"), t("x")],
            ),
        ] {
            check_kind(g, filter, Lite, &format!("{base}{cond}"), &binds);
        }
        check_kind(
            g,
            "members[value eq \"a\"]",
            Pg,
            &format!("{base} AND m.member_id = $1)"),
            &[t("a")],
        );
        check(
            "groups.value eq \"G1\"",
            Lite,
            "EXISTS (SELECT 1 FROM group_members g WHERE g.tenant_id = r.tenant_id AND g.member_id = r.id AND lower(g.group_id) = $1)",
            &[t("g1")],
        );
        assert!(rejects(g, "members.$ref eq \"x\"").contains("cannot be filtered"));
    }

    #[test]
    fn numbers_placeholders_from_the_given_start() {
        let f = parse_filter("userName eq \"a\" and (title sw \"b\" or id eq \"c\")").unwrap();
        let c = render_filter(&f, ResourceKind::User, Lite, &TestMap, 3).unwrap();
        assert_eq!(
            c.sql,
            "(r.user_name_lc = $3 AND (substr(lower(json_extract(r.data, '$.\"title\"')), 1, length($4)) = $4 OR r.id = $5))"
        );
        assert_eq!(c.binds, vec![t("a"), t("b"), t("c")]);
    }

    #[test]
    fn rejects_what_the_schema_forbids() {
        let u = ResourceKind::User;
        for (filter, message) in [
            ("nope eq \"x\"", "unknown attribute 'nope'"),
            // `urn:x:y` would be a custom extension; a SCIM message URN or
            // the dot-for-colon typo names no schema.
            (
                "urn:ietf:params:scim:api:messages:2.0:PatchOp:attr eq \"x\"",
                "unknown schema 'urn:ietf:params:scim:api:messages:2.0:PatchOp'",
            ),
            (
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User.manager eq \"x\"",
                "unknown schema 'urn:ietf:params:scim:schemas:extension:enterprise:2.0'",
            ),
            ("members pr", "unknown attribute 'members'"),
            (
                "active gt true",
                "operator 'gt' is not supported for boolean attribute 'active'",
            ),
            ("active co true", "operator 'co' is not supported"),
            (
                "name co \"x\"",
                "complex attribute 'name' has no 'value' sub-attribute",
            ),
            (
                "userName gt null",
                "operator 'gt' cannot compare 'userName' with null",
            ),
            (
                "x509Certificates.value co \"x\"",
                "operator 'co' is not supported for binary",
            ),
            ("emails[nope eq \"x\"]", "unknown attribute 'emails.nope'"),
            (
                "userName[value eq \"x\"]",
                "a value filter needs a complex attribute",
            ),
        ] {
            let got = rejects(u, filter);
            assert!(got.contains(message), "{filter}: {got}");
        }
        // Trees the parser never builds are still rejected, not mis-rendered.
        let nested = Filter::ValuePath(
            AttrPath::simple("emails"),
            Box::new(Filter::ValuePath(
                AttrPath::simple("value"),
                Box::new(Filter::Present(AttrPath::simple("x"))),
            )),
        );
        assert!(render_filter(&nested, u, Lite, &TestMap, 1).is_err());
        let qualified = Filter::ValuePath(
            AttrPath::simple("emails"),
            Box::new(Filter::Present(AttrPath {
                schema: None,
                attr: "value".into(),
                sub_attr: Some("x".into()),
            })),
        );
        assert!(render_filter(&qualified, u, Lite, &TestMap, 1).is_err());
    }

    #[test]
    fn coerces_operands_like_the_evaluator() {
        check(
            "active eq \"True\"",
            Lite,
            "json_type(r.data, '$.\"active\"') = 'true'",
            &[],
        );
        check("active eq 1", Lite, "FALSE", &[]);
        check(
            &format!("{ENTERPRISE_URN}:employeeNumber eq 42"),
            Lite,
            "lower(json_extract(r.data, '$.\"urn:ietf:params:scim:schemas:extension:enterprise:2.0:User\".\"employeeNumber\"')) = $1",
            &[t("42")],
        );
    }

    #[test]
    fn sort_keys() {
        let key = |path: &str, dialect| {
            render_sort_key(
                &parse_attr_path(path).unwrap(),
                ResourceKind::User,
                dialect,
                &TestMap,
            )
            .unwrap()
        };
        assert_eq!(key("userName", Lite), "r.user_name_lc");
        assert_eq!(key("userName", Pg), "r.user_name_lc COLLATE \"C\"");
        assert_eq!(key("meta.created", Lite), "r.created");
        assert_eq!(key("id", Pg), "r.id COLLATE \"C\"");
        assert_eq!(
            key("name.familyName", Lite),
            "lower(json_extract(r.data, '$.\"name\".\"familyName\"'))"
        );
        assert_eq!(
            key("active", Pg),
            "(CAST(r.data AS jsonb) #>> '{\"active\"}')"
        );
        assert_eq!(
            key("emails", Lite),
            "(SELECT lower(json_extract(s1.value, '$.\"value\"')) FROM json_each(r.data, '$.\"emails\"') AS s1 ORDER BY CASE WHEN json_type(s1.value, '$.\"primary\"') = 'true' THEN 0 ELSE 1 END, s1.key LIMIT 1)"
        );
        assert_eq!(
            key("emails.type", Pg),
            "(SELECT lower((s1.v #>> '{\"type\"}')) FROM jsonb_array_elements(CASE WHEN jsonb_typeof((CAST(r.data AS jsonb) #> '{\"emails\"}')) = 'array' THEN (CAST(r.data AS jsonb) #> '{\"emails\"}') ELSE '[]'::jsonb END) WITH ORDINALITY AS s1(v, n) ORDER BY CASE WHEN (s1.v #> '{\"primary\"}') = 'true'::jsonb THEN 0 ELSE 1 END, s1.n LIMIT 1) COLLATE \"C\""
        );
        assert_eq!(
            key("groups", Lite),
            "(SELECT lower(g.group_id) FROM group_members g WHERE g.tenant_id = r.tenant_id AND g.member_id = r.id ORDER BY lower(g.group_id) LIMIT 1)"
        );
        for bad in ["name", "addresses", "nope"] {
            assert!(
                render_sort_key(
                    &parse_attr_path(bad).unwrap(),
                    ResourceKind::User,
                    Lite,
                    &TestMap
                )
                .is_err(),
                "{bad}"
            );
        }
    }

    // ---- executed against SQLite ------------------------------------------

    const CUSTOM: &str = "urn:ietf:params:scim:schemas:extension:CustomExtensionName:2.0:User";

    #[test]
    fn custom_extension_operators_follow_the_operand_type() {
        for bad in [
            format!("{CUSTOM}:vip gt true"),
            format!("{CUSTOM}:level co 3"),
            // The dot-for-colon typo names no schema at all.
            format!("{ENTERPRISE_URN}.manager eq \"x\""),
            "urn:ietf:params:scim:api:messages:2.0:PatchOp:x eq \"y\"".to_string(),
        ] {
            let f = parse_filter(&bad).unwrap();
            assert!(
                render_filter(&f, ResourceKind::User, Dialect::Sqlite, &TestMap, 1).is_err(),
                "{bad}"
            );
            assert!(
                crate::eval::validate(&f, ResourceKind::User).is_err(),
                "{bad}"
            );
        }
        let f = parse_filter(&format!("{CUSTOM}:CustomAttribute eq \"x\"")).unwrap();
        let pg = render_filter(&f, ResourceKind::User, Dialect::Postgres, &TestMap, 1).unwrap();
        assert!(pg.sql.contains("jsonb_typeof"), "{}", pg.sql);
        assert_eq!(pg.binds, vec![SqlValue::Text("x".into())]);
    }

    fn users() -> Vec<serde_json::Value> {
        vec![
            json!({"id": "u1", "userName": "BJensen", "externalId": "EXT-1", "title": "Tour Guide",
                   "active": true,
                   "name": {"givenName": "Barbara", "familyName": "Jensen"},
                   "emails": [{"value": "bjensen@Example.com", "type": "work", "primary": true},
                              {"value": "babs@home.org", "type": "home"}],
                   "meta": {"created": "2020-01-01T00:00:00Z", "lastModified": "2024-05-01T10:00:00Z"},
                   ENTERPRISE_URN: {"employeeNumber": "701984", "manager": {"value": "u2"}},
                   CUSTOM: {"CustomAttribute": "Blue", "level": 3, "vip": true, "badge": {"color": "red"}}}),
            json!({"id": "u2", "userName": "jsmith", "active": false,
                   "name": {"givenName": "John"},
                   "emails": [{"value": "john@home.org", "type": "work"},
                              {"value": "js@example.com", "type": "home", "primary": true}],
                   "meta": {"created": "2021-06-15T12:00:00Z"},
                   ENTERPRISE_URN: {"employeeNumber": "42"},
                   CUSTOM: {"CustomAttribute": "", "level": "3", "tags": ["a"]}}),
            json!({"id": "u3", "userName": "Zoë", "title": "", "name": {}, "emails": [],
                   "meta": {"created": "2022-03-01T00:00:00Z"},
                   CUSTOM: {"vip": false, "tags": []}}),
            json!({"id": "u4", "userName": "alice", "externalId": "ext-1", "title": "tour guide",
                   "active": true,
                   "emails": [{"value": "ALICE@EXAMPLE.COM", "type": "work"}],
                   "meta": {"created": "2019-12-31T23:59:59Z"},
                   CUSTOM: {"CustomAttribute": 42}}),
            json!({"id": "u5", "userName": "bob", "meta": {"created": "2023-01-01T00:00:00Z"}}),
        ]
    }

    fn db() -> rusqlite::Connection {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE users (tenant_id TEXT, id TEXT, user_name TEXT, user_name_lc TEXT, created TEXT, data TEXT);
             CREATE TABLE groups (tenant_id TEXT, id TEXT, data TEXT);
             CREATE TABLE group_members (tenant_id TEXT, group_id TEXT, member_id TEXT, member_type TEXT, display TEXT);",
        )
        .unwrap();
        for u in users() {
            let name = u["userName"].as_str().unwrap();
            c.execute(
                "INSERT INTO users VALUES ('t1', ?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![
                    u["id"].as_str().unwrap(),
                    name,
                    name.to_lowercase(),
                    u["meta"]["created"].as_str().unwrap(),
                    u.to_string()
                ],
            )
            .unwrap();
        }
        // A user of another tenant that matches everything.
        c.execute(
            "INSERT INTO users VALUES ('t2', 'x1', 'bjensen', 'bjensen', '2020-01-01T00:00:00Z', ?1)",
            [json!({"userName": "bjensen", "title": "Tour Guide"}).to_string()],
        )
        .unwrap();
        c.execute_batch(
            "INSERT INTO groups VALUES ('t1', 'g1', '{\"displayName\": \"Admins\"}'), ('t1', 'g2', '{\"displayName\": \"Ops\"}'), ('t1', 'g3', '{\"displayName\": \"Empty\"}');
             INSERT INTO group_members VALUES ('t1', 'g1', 'u1', 'User', 'Barbara'), ('t1', 'g1', 'u2', 'User', 'John'), ('t1', 'g2', 'u4', 'User', 'Alice'), ('t2', 'g3', 'u5', 'User', 'Bob');",
        )
        .unwrap();
        c
    }

    fn run(c: &rusqlite::Connection, sql: &str, binds: &[SqlValue]) -> Vec<String> {
        let mut stmt = c.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        for (i, b) in binds.iter().enumerate() {
            let name = format!("${}", i + 1);
            let Some(idx) = stmt.parameter_index(&name).unwrap() else {
                continue;
            };
            let v = match b {
                SqlValue::Text(s) => rusqlite::types::Value::Text(s.clone()),
                SqlValue::Int(i) => rusqlite::types::Value::Integer(*i),
                SqlValue::Float(f) => rusqlite::types::Value::Real(*f),
                SqlValue::Bool(b) => rusqlite::types::Value::Integer(i64::from(*b)),
            };
            stmt.raw_bind_parameter(idx, v).unwrap();
        }
        let mut rows = stmt.raw_query();
        let mut ids = Vec::new();
        while let Some(row) = rows.next().unwrap_or_else(|e| panic!("{sql}: {e}")) {
            ids.push(row.get::<_, String>(0).unwrap());
        }
        ids
    }

    /// Ids of tenant t1's resources of `kind` that `filter` matches.
    fn matching(c: &rusqlite::Connection, kind: ResourceKind, filter: &str) -> Vec<String> {
        let f = parse_filter(filter).unwrap();
        let cond =
            render_filter(&f, kind, Lite, &TestMap, 2).unwrap_or_else(|e| panic!("{filter}: {e}"));
        let table = match kind {
            ResourceKind::User => "users",
            ResourceKind::Group => "groups",
        };
        let sql = format!(
            "SELECT r.id FROM {table} AS r WHERE r.tenant_id = $1 AND ({}) ORDER BY r.id",
            cond.sql
        );
        let mut binds = vec![t("t1")];
        binds.extend(cond.binds);
        run(c, &sql, &binds)
    }

    /// Filters over [`users`] and the tenant t1 groups, with the ids they match.
    fn user_cases() -> Vec<(String, Vec<&'static str>)> {
        let cases: &[(&str, &[&'static str])] = &[
            // Case rules: userName is case-insensitive, externalId/id caseExact.
            ("userName eq \"bjensen\"", &["u1"]),
            ("USERNAME Eq \"BJENSEN\"", &["u1"]),
            ("externalId eq \"EXT-1\"", &["u1"]),
            ("externalId eq \"ext-1\"", &["u4"]),
            ("externalId sw \"ext\"", &["u4"]),
            ("id eq \"U1\"", &[]),
            ("title eq \"TOUR guide\"", &["u1", "u4"]),
            ("title co \"R G\"", &["u1", "u4"]),
            ("title ew \"GUIDE\"", &["u1", "u4"]),
            ("title ew \"a much longer suffix than any title\"", &[]),
            ("title sw \"\"", &["u1", "u3", "u4"]),
            ("name.givenName sw \"J\"", &["u2"]),
            ("name.givenName co \"%\"", &[]),
            // ne and not match absent attributes.
            ("title ne \"tour guide\"", &["u2", "u3", "u5"]),
            ("not (title eq \"tour guide\")", &["u2", "u3", "u5"]),
            ("active ne true", &["u2", "u3", "u5"]),
            ("active eq false", &["u2"]),
            ("not (active eq true)", &["u2", "u3", "u5"]),
            // pr and null.
            ("title pr", &["u1", "u4"]),
            ("title eq null", &["u2", "u3", "u5"]),
            ("title ne null", &["u1", "u4"]),
            ("name pr", &["u1", "u2"]),
            ("emails pr", &["u1", "u2", "u4"]),
            ("not (emails pr)", &["u3", "u5"]),
            ("active pr", &["u1", "u2", "u4"]),
            // Multi-valued: same element inside a value filter only.
            (
                "emails[type eq \"work\" and value co \"example\"]",
                &["u1", "u4"],
            ),
            (
                "emails.type eq \"work\" and emails.value co \"example\"",
                &["u1", "u2", "u4"],
            ),
            ("emails[type eq \"home\" and primary eq true]", &["u2"]),
            ("emails[not (type eq \"work\")]", &["u1", "u2"]),
            ("emails eq \"JS@example.com\"", &["u2"]),
            ("emails.value ew \".org\"", &["u1", "u2"]),
            (
                "emails.value ne \"john@home.org\"",
                &["u1", "u3", "u4", "u5"],
            ),
            // Extension URN paths.
            (
                &format!("{ENTERPRISE_URN}:employeeNumber eq \"42\""),
                &["u2"],
            ),
            (
                &format!("{ENTERPRISE_URN}:employeeNumber pr"),
                &["u1", "u2"],
            ),
            (
                &format!("{ENTERPRISE_URN}:manager.value eq \"U2\""),
                &["u1"],
            ),
            (&format!("{ENTERPRISE_URN}:manager eq \"u2\""), &["u1"]),
            (
                "urn:ietf:params:scim:schemas:core:2.0:User:name.familyName eq \"jensen\"",
                &["u1"],
            ),
            // Entra's matching attribute: a sub-attribute after a value
            // filter tests the same element (a documented extension).
            (
                "emails[type eq \"work\"].value eq \"bjensen@example.com\"",
                &["u1"],
            ),
            (
                "emails[type eq \"work\"].value co \"example\"",
                &["u1", "u4"],
            ),
            ("emails[type eq \"home\"].primary eq true", &["u2"]),
            // A custom extension (no schema): typed by the operand, names as
            // written.
            (&format!("{CUSTOM}:CustomAttribute eq \"blue\""), &["u1"]),
            (&format!("{CUSTOM}:CustomAttribute sw \"BL\""), &["u1"]),
            (&format!("{CUSTOM}:CustomAttribute pr"), &["u1", "u4"]),
            (
                &format!("not ({CUSTOM}:CustomAttribute pr)"),
                &["u2", "u3", "u5"],
            ),
            (
                &format!("{CUSTOM}:CustomAttribute eq null"),
                &["u2", "u3", "u5"],
            ),
            (&format!("{CUSTOM}:CustomAttribute eq \"42\""), &[]),
            (&format!("{CUSTOM}:CustomAttribute eq 42"), &["u4"]),
            (&format!("{CUSTOM}:customattribute eq \"blue\""), &[]),
            (&format!("{CUSTOM}:level gt 2"), &["u1"]),
            (&format!("{CUSTOM}:level eq \"3\""), &["u2"]),
            (&format!("{CUSTOM}:vip eq true"), &["u1"]),
            (&format!("{CUSTOM}:vip ne true"), &["u2", "u3", "u4", "u5"]),
            (&format!("{CUSTOM}:vip pr"), &["u1", "u3"]),
            (&format!("{CUSTOM}:tags pr"), &["u2"]),
            (&format!("{CUSTOM}:badge.color eq \"RED\""), &["u1"]),
            (&format!("{CUSTOM}:badge pr"), &["u1"]),
            // dateTime ordering, in a column and in JSON.
            (
                "meta.created gt \"2020-01-01T00:00:00Z\"",
                &["u2", "u3", "u5"],
            ),
            (
                "meta.created ge \"2020-01-01T00:00:00Z\"",
                &["u1", "u2", "u3", "u5"],
            ),
            ("meta.created lt \"2020-01-01t00:00:00z\"", &["u4"]),
            ("meta.lastModified le \"2025-01-01T00:00:00Z\"", &["u1"]),
            ("meta.lastModified gt \"2025-01-01T00:00:00Z\"", &[]),
            // Precedence: and binds tighter than or.
            (
                "userName eq \"bob\" or userName eq \"alice\" and active eq true",
                &["u4", "u5"],
            ),
            (
                "(userName eq \"bob\" or userName eq \"alice\") and active eq true",
                &["u4"],
            ),
            (
                "userName eq \"bob\" or userName eq \"alice\" and active eq false",
                &["u5"],
            ),
            (
                "not (userName eq \"bob\" or title pr) and not (active eq false)",
                &["u3"],
            ),
            // Relations.
            ("groups.value eq \"g1\"", &["u1", "u2"]),
            ("groups pr", &["u1", "u2", "u4"]),
            ("not (groups pr)", &["u3", "u5"]),
        ];
        cases
            .iter()
            .map(|(f, w)| (f.to_string(), w.to_vec()))
            .collect()
    }

    fn group_cases() -> Vec<(&'static str, Vec<&'static str>)> {
        vec![
            ("members[value eq \"u1\"]", vec!["g1"]),
            ("members[value eq \"U1\"]", vec![]),
            ("members.value eq \"u4\"", vec!["g2"]),
            ("members eq \"u2\"", vec!["g1"]),
            ("members pr", vec!["g1", "g2"]),
            ("not (members pr)", vec!["g3"]),
            (
                "members[display eq \"ALICE\" and type eq \"user\"]",
                vec!["g2"],
            ),
            ("members.value ne \"u1\"", vec!["g2", "g3"]),
            ("displayName sw \"a\"", vec!["g1"]),
        ]
    }

    #[test]
    fn sqlite_executes_with_scim_semantics() {
        let c = db();
        let docs = users();
        for (filter, want) in user_cases() {
            assert_eq!(matching(&c, ResourceKind::User, &filter), want, "{filter}");
            // The in-memory evaluator must agree (relations are not in the
            // documents, so those filters are skipped).
            if !filter.contains("groups") {
                let f = parse_filter(&filter).unwrap();
                let by_eval: Vec<&str> = docs
                    .iter()
                    .filter(|d| crate::eval::matches(&f, ResourceKind::User, d).unwrap())
                    .map(|d| d["id"].as_str().unwrap())
                    .collect();
                assert_eq!(by_eval, want, "eval: {filter}");
            }
        }
        for (filter, want) in group_cases() {
            assert_eq!(matching(&c, ResourceKind::Group, filter), want, "{filter}");
        }
    }

    #[test]
    fn fold_pairs_are_what_fold_case_does_to_each_character() {
        let pairs = fold_pairs();
        assert!(pairs.len() > 1000, "{}", pairs.len());
        assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0));
        for (c, folded) in pairs {
            assert!(!c.is_ascii());
            // Folded text is a fixed point, so a stored character that is
            // left as is never equals an operand character.
            for f in folded.chars() {
                assert_eq!(
                    crate::schema::fold_case(&f.to_string()),
                    f.to_string(),
                    "{c}"
                );
            }
        }
        let find = |c: char| pairs.iter().find(|(u, _)| *u == c).map(|(_, l)| l.as_str());
        assert_eq!(find('É'), Some("é"));
        assert_eq!(find('ẞ'), Some("ß"));
        assert_eq!(find('İ'), Some("i\u{307}"));
        assert_eq!(find('ǅ'), Some("ǆ"));
        // Not NFC (it is `K`), and not a capital.
        assert_eq!(find('\u{212a}'), None);
        assert_eq!(find('ß'), None);
        // Only the pairs the operand can meet are rendered.
        let upper = |p: Vec<&(char, String)>| p.iter().map(|(u, _)| *u).collect::<String>();
        assert_eq!(upper(fold_pairs_for("bob", false)), "");
        assert_eq!(upper(fold_pairs_for("zoë", false)), "Ë");
        assert_eq!(upper(fold_pairs_for("i", false)), "İ");
        // `É` sorts below `ß` but `é` above: `gt "ß"` must fold it, `eq`
        // need not.
        assert!(upper(fold_pairs_for("ß", true)).contains('É'));
        assert!(!upper(fold_pairs_for("ß", false)).contains('É'));
        assert!(!upper(fold_pairs_for("é", true)).contains('Ω'));
        let c = render(ResourceKind::User, "title eq \"ZOË\"", Pg).unwrap();
        assert_eq!(
            c.sql,
            "replace(lower((CAST(r.data AS jsonb) #>> '{\"title\"}') COLLATE \"C\"), $1, $2) = $3"
        );
        assert_eq!(c.binds, vec![t("Ë"), t("ë"), t("zoë")]);
        // An operand no SQL statement could fold is refused, not sent.
        let many: String = pairs.iter().take(300).map(|(_, l)| l.as_str()).collect();
        let f = format!("title co {}", serde_json::Value::from(many));
        assert!(render(ResourceKind::User, &f, Lite).is_err());
    }

    /// `pr` and value filters on complex values that exist but hold nothing
    /// present, executed, against the evaluator.
    #[test]
    fn sqlite_presence_of_complex_values_follows_the_evaluator() {
        let docs = [
            json!({}),
            json!({"name": {}, "emails": [], ENTERPRISE_URN: {"manager": {}}}),
            json!({"name": {"givenName": ""}, "emails": [{}], ENTERPRISE_URN: {"manager": {"value": ""}}}),
            json!({"name": {"familyName": "x"}, "emails": [{"value": ""}, {"primary": false}]}),
            json!({"emails": [{"value": "", "type": ""}], ENTERPRISE_URN: {"manager": {"value": "m"}}}),
        ];
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE r (id TEXT, data TEXT)")
            .unwrap();
        for (i, d) in docs.iter().enumerate() {
            c.execute(
                "INSERT INTO r VALUES (?1, ?2)",
                rusqlite::params![i.to_string(), d.to_string()],
            )
            .unwrap();
        }
        for (filter, want) in [
            ("name pr", &["3"][..]),
            ("not (name pr)", &["0", "1", "2", "4"]),
            ("name eq null", &["0", "1", "2", "4"]),
            ("emails pr", &["3"]),
            ("emails eq null", &["0", "1", "2", "4"]),
            (&format!("{ENTERPRISE_URN}:manager pr"), &["4"]),
            (
                &format!("{ENTERPRISE_URN}:manager[value ne \"x\"]"),
                &["1", "2", "4"],
            ),
            (
                &format!("{ENTERPRISE_URN}:manager[not (value pr)]"),
                &["1", "2"],
            ),
            ("name[givenName eq null]", &["1", "2", "3"]),
            ("emails[value eq null]", &["2", "3", "4"]),
        ] {
            let f = parse_filter(filter).unwrap();
            let cond = render_filter(&f, ResourceKind::User, Lite, &TestMap, 1).unwrap();
            let got = run(
                &c,
                &format!("SELECT r.id FROM r WHERE {} ORDER BY r.id", cond.sql),
                &cond.binds,
            );
            assert_eq!(got, want, "{filter}");
            let by_eval: Vec<String> = docs
                .iter()
                .enumerate()
                .filter(|(_, d)| crate::eval::matches(&f, ResourceKind::User, d).unwrap())
                .map(|(i, _)| i.to_string())
                .collect();
            assert_eq!(by_eval, want, "eval: {filter}");
        }
    }

    /// SQLite folds text as [`crate::eval`] does: every stored value against
    /// every operand and operator, executed.
    #[test]
    fn sqlite_folds_case_as_the_evaluator() {
        let values = [
            "",
            "a",
            "A",
            "b",
            "Zoë",
            "ZOË",
            "zoë",
            "ZOE",
            "É",
            "é",
            "è",
            "ß",
            "ẞ",
            "ss",
            "SS",
            "Straße",
            "STRAẞE",
            "İ",
            "I",
            "i",
            "i\u{307}",
            "Ǆ",
            "ǅ",
            "ǆ",
            "Ωμέγα",
            "ΩΜΈΓΑ",
            "Москва",
            "МОСКВА",
            "ᏣᎳᎩ",
            "ꮳꮃꭹ",
            "Ꭓ",
            "中文",
            "Ǉa",
            "k",
            "@x.É",
        ];
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE r (id TEXT, data TEXT)")
            .unwrap();
        let mut docs = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let doc = json!({"id": format!("{i:02}"), "title": v});
            c.execute(
                "INSERT INTO r VALUES (?1, ?2)",
                rusqlite::params![format!("{i:02}"), doc.to_string()],
            )
            .unwrap();
            docs.push(doc);
        }
        for operand in values {
            for op in ["eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"] {
                let filter = format!("title {op} {}", serde_json::Value::from(operand));
                let f = parse_filter(&filter).unwrap();
                let cond = render_filter(&f, ResourceKind::User, Lite, &TestMap, 1).unwrap();
                let sql = format!("SELECT r.id FROM r WHERE {} ORDER BY r.id", cond.sql);
                let by_sql = run(&c, &sql, &cond.binds);
                let by_eval: Vec<String> = docs
                    .iter()
                    .filter(|d| crate::eval::matches(&f, ResourceKind::User, d).unwrap())
                    .map(|d| d["id"].as_str().unwrap().to_string())
                    .collect();
                assert_eq!(by_sql, by_eval, "{filter}: {}", cond.sql);
            }
        }
    }

    #[test]
    fn sqlite_executes_sort_keys() {
        let c = db();
        let order = |path: &str, dir: &str| {
            let key = render_sort_key(
                &parse_attr_path(path).unwrap(),
                ResourceKind::User,
                Lite,
                &TestMap,
            )
            .unwrap();
            let nulls = if dir == "ASC" {
                "NULLS LAST"
            } else {
                "NULLS FIRST"
            };
            run(
                &c,
                &format!("SELECT r.id FROM users AS r WHERE r.tenant_id = 't1' ORDER BY {key} {dir} {nulls}, r.id"),
                &[],
            )
        };
        assert_eq!(order("userName", "ASC"), ["u4", "u1", "u5", "u2", "u3"]);
        assert_eq!(
            order("meta.created", "DESC"),
            ["u5", "u3", "u2", "u1", "u4"]
        );
        // Primary email first: u2 sorts by js@example.com, not john@home.org.
        assert_eq!(order("emails", "ASC"), ["u4", "u1", "u2", "u3", "u5"]);
        assert_eq!(
            order("emails.value", "DESC"),
            ["u3", "u5", "u2", "u1", "u4"]
        );
        assert_eq!(order("title", "ASC"), ["u3", "u1", "u4", "u2", "u5"]);
    }
}
