//! SCIM filters (RFC 7644 §3.4.2.2) and PATCH/attribute paths from
//! arbitrary UTF-8.
//!
//! A filter that parses is rendered as SQL for SQLite and PostgreSQL under
//! two storage layouts (everything in JSON, and the columns/relations of the
//! `TestMap` in crates/scim/src/sql.rs), validated and evaluated against a
//! fixed User and a fixed Group document for both resource kinds.
//!
//! Invariants checked besides "never panics":
//! - placeholders are `$first`, `$first + 1`, ... in order of first
//!   appearance, one per bind, never inside a string literal, and string
//!   literals and parentheses are balanced (crates/scim/src/sql.rs's safety
//!   rules);
//! - the SQLite condition prepares and runs in SQLite over a one-row table;
//! - `eval::matches` fails exactly when `eval::validate` does, whatever the
//!   document (eval.rs: errors never depend on the data).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use scim::ast::Filter;
use scim::eval;
use scim::filter::{parse_attr_path, parse_filter, parse_patch_path};
use scim::schema::{Resolved, ResourceKind};
use scim::sql::{render_filter, Dialect, SqlValue, Storage, StorageMap};
use serde_json::{json, Value};

/// Every attribute in the JSON document.
struct JsonMap;

impl StorageMap for JsonMap {
    fn json_column(&self) -> &str {
        "r.data"
    }

    fn storage(&self, _: &Resolved) -> Storage {
        Storage::Json
    }
}

/// The layout of crates/scim/src/sql.rs's tests: userName, id and
/// meta.created in columns, members and groups in a relation.
struct ColumnMap;

impl StorageMap for ColumnMap {
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

const CUSTOM: &str = "urn:example:params:scim:schemas:extension:acme:2.0:User";

fn user() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        json!({
            "schemas": [
                "urn:ietf:params:scim:schemas:core:2.0:User",
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
                CUSTOM
            ],
            "id": "u1",
            "externalId": "EXT-1",
            "userName": "bjensen",
            "displayName": "Babs Jensen",
            "title": "Tour Guide",
            "active": true,
            "name": {"givenName": "Barbara", "familyName": "Jensen", "formatted": "Ms. Barbara J Jensen"},
            "emails": [
                {"value": "bjensen@example.com", "type": "work", "primary": true},
                {"value": "babs@jensen.org", "type": "home"}
            ],
            "phoneNumbers": [{"value": "555-555-8377", "type": "work"}],
            "groups": [{"value": "g1", "$ref": "../Groups/g1", "display": "Admins"}],
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {
                "employeeNumber": "701984",
                "manager": {"value": "m1", "displayName": "John Smith"}
            },
            CUSTOM: {"CustomAttribute": 42, "flag": true, "tags": ["a", "b"]},
            "meta": {
                "resourceType": "User",
                "created": "2010-01-23T04:56:22Z",
                "lastModified": "2011-05-13T04:42:34Z",
                "version": "W/\"3694e05e9dff591\""
            }
        })
    })
}

fn group() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "id": "g1",
            "displayName": "Admins",
            "externalId": "ext-g1",
            "members": [
                {"value": "u1", "type": "User", "display": "Babs Jensen"},
                {"value": "g2", "type": "Group"}
            ],
            "meta": {"resourceType": "Group", "created": "2010-01-23T04:56:22Z"}
        })
    })
}

/// An in-memory database with one user and one group row holding the fixed
/// documents, in the layout both maps assume.
fn db() -> &'static std::sync::Mutex<rusqlite::Connection> {
    static DB: OnceLock<std::sync::Mutex<rusqlite::Connection>> = OnceLock::new();
    DB.get_or_init(|| {
        let c = rusqlite::Connection::open_in_memory().expect("in-memory sqlite");
        c.execute_batch(
            "CREATE TABLE users (tenant_id TEXT, id TEXT, user_name TEXT, user_name_lc TEXT, created TEXT, data TEXT);
             CREATE TABLE groups (tenant_id TEXT, id TEXT, user_name TEXT, user_name_lc TEXT, created TEXT, data TEXT);
             CREATE TABLE group_members (tenant_id TEXT, group_id TEXT, member_id TEXT, member_type TEXT, display TEXT);
             INSERT INTO group_members VALUES ('t1', 'g1', 'u1', 'User', 'Babs Jensen'), ('t1', 'g1', 'g2', 'Group', NULL);",
        )
        .expect("schema");
        c.execute(
            "INSERT INTO users VALUES ('t1', 'u1', 'bjensen', 'bjensen', '2010-01-23T04:56:22Z', ?1)",
            [user().to_string()],
        )
        .expect("user row");
        c.execute(
            "INSERT INTO groups VALUES ('t1', 'g1', NULL, NULL, '2010-01-23T04:56:22Z', ?1)",
            [group().to_string()],
        )
        .expect("group row");
        std::sync::Mutex::new(c)
    })
}

/// Checks the placeholder and quoting rules of crates/scim/src/sql.rs on
/// rendered SQL: `$N` outside string literals, numbered from `first` in
/// order of first appearance, exactly one number per bind.
fn check_placeholders(sql: &str, first: usize, binds: usize, filter: &str) {
    let b = sql.as_bytes();
    let mut i = 0;
    let mut next = first;
    let mut depth: i64 = 0;
    while i < b.len() {
        match b[i] {
            b'\'' => {
                // A string literal; '' is an escaped quote.
                i += 1;
                loop {
                    assert!(i < b.len(), "unterminated literal in {sql:?} ({filter:?})");
                    if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'(' => {
                depth += 1;
                i += 1;
            }
            b')' => {
                depth -= 1;
                assert!(depth >= 0, "unbalanced ')' in {sql:?} ({filter:?})");
                i += 1;
            }
            b'$' => {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                assert!(j > start, "'$' without a number in {sql:?} ({filter:?})");
                let n: usize = sql[start..j].parse().expect("placeholder number");
                assert!(
                    n >= first && n <= next,
                    "placeholder ${n} out of order (next new one is ${next}) in {sql:?} ({filter:?})"
                );
                if n == next {
                    next += 1;
                }
                i = j;
            }
            _ => i += 1,
        }
    }
    assert_eq!(depth, 0, "unbalanced '(' in {sql:?} ({filter:?})");
    assert_eq!(
        next - first,
        binds,
        "{binds} binds for placeholders ${first}..${next} in {sql:?} ({filter:?})"
    );
}

/// Prepares and runs the SQLite condition over the one-row table of `kind`.
fn run_sqlite(kind: ResourceKind, sql: &str, binds: &[SqlValue], filter: &str) {
    let table = match kind {
        ResourceKind::User => "users",
        ResourceKind::Group => "groups",
    };
    let query = format!("SELECT r.id FROM {table} AS r WHERE r.tenant_id = 't1' AND ({sql})");
    let c = db().lock().expect("db lock");
    let mut stmt = c.prepare(&query).unwrap_or_else(|e| {
        panic!("rendered SQL does not prepare: {e}\n{query}\nfilter: {filter:?}")
    });
    assert_eq!(
        stmt.parameter_count(),
        binds.len(),
        "parameter count of {query} ({filter:?})"
    );
    for (i, b) in binds.iter().enumerate() {
        let name = format!("${}", i + 1);
        let idx = stmt
            .parameter_index(&name)
            .expect("parameter name")
            .unwrap_or_else(|| panic!("no {name} in {query} ({filter:?})"));
        let v = match b {
            SqlValue::Text(s) => rusqlite::types::Value::Text(s.clone()),
            SqlValue::Int(i) => rusqlite::types::Value::Integer(*i),
            SqlValue::Float(f) => rusqlite::types::Value::Real(*f),
            SqlValue::Bool(b) => rusqlite::types::Value::Integer(i64::from(*b)),
        };
        stmt.raw_bind_parameter(idx, v).expect("bind");
    }
    let mut rows = stmt.raw_query();
    loop {
        match rows.next() {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => panic!("rendered SQL fails in SQLite: {e}\n{query}\nfilter: {filter:?}"),
        }
    }
}

fn check_filter(f: &Filter, input: &str) {
    for kind in [ResourceKind::User, ResourceKind::Group] {
        for map in [&JsonMap as &dyn StorageMap, &ColumnMap] {
            for dialect in [Dialect::Sqlite, Dialect::Postgres] {
                // Placeholders from 1, as SQLite binds them by name below.
                if let Ok(c) = render_filter(f, kind, dialect, map, 1) {
                    check_placeholders(&c.sql, 1, c.binds.len(), input);
                    if dialect == Dialect::Sqlite {
                        run_sqlite(kind, &c.sql, &c.binds, input);
                    }
                }
                // Any start: the service puts its own binds first.
                if let Ok(c) = render_filter(f, kind, dialect, map, 7) {
                    check_placeholders(&c.sql, 7, c.binds.len(), input);
                }
            }
        }
        let valid = eval::validate(f, kind);
        for doc in [user(), group(), &Value::Null, &json!({})] {
            let m = eval::matches(f, kind, doc);
            assert_eq!(
                m.is_err(),
                valid.is_err(),
                "matches {m:?} but validate {valid:?} for {input:?} ({kind:?}) on {doc}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(f) = parse_filter(input) {
        check_filter(&f, input);
    }
    let _ = parse_patch_path(input);
    let _ = parse_attr_path(input);
});
