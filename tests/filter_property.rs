//! The SQL filter path against the in-memory evaluator (property test).
//!
//! `GET /Users?filter=` renders the filter as SQL (`scim::sql`) and runs it
//! in SQLite or PostgreSQL; `scim::eval::matches` is the reference semantics
//! written in Rust. For random populations of users (values from a small
//! alphabet so that they collide, with mixed case and non-ASCII letters) and
//! random filters over the attributes whose semantics differ (case rules,
//! absent and empty values, multi-valued and complex attributes, `pr`,
//! `eq null`/`ne null`, `not`, and/or precedence, value filters, the
//! enterprise and a custom extension, and the `emails[type eq
//! "work"].value eq ...` extension), the server must return exactly the users
//! whose GET document the evaluator accepts, and it must answer `400
//! invalidFilter` exactly when `scim::eval::validate` rejects the filter.
//!
//! Filters are generated as trees and printed with only the parentheses
//! and-over-or precedence needs (plus some redundant ones); the evaluator's
//! verdict on the whole filter must also equal the tree evaluated leaf by
//! leaf, so a precedence slip in the parser, which both sides share, would
//! not go unseen.
//!
//! Not generated, because SQL cannot agree with the evaluator there (see
//! `scim::sql`'s module docs): stored text that is not NFC (the evaluator's
//! `scim::schema::fold_case` composes it, SQL cannot; operands may be NFD,
//! they are folded in Rust), a word-final capital sigma (`ΟΔΟΣ` lowercases
//! to `οδος` by context), and `meta.location` (built from the request's base
//! URL, which the SQL never sees).
//!
//! Each backend runs one server; each case (a population and a batch of
//! filters) gets a fresh tenant. `FILTER_PROPERTY_SEED=N` replays a run (the
//! seed is printed), `FILTER_PROPERTY_CASES=N` runs more or fewer cases.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};
use reqwest::Method;
use scim::schema::ResourceKind;
use serde_json::{json, Map, Value};

use crate::support::{drop_database, Backend, TestServer, USER};

const ENT: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const CUSTOM: &str = "urn:ietf:params:scim:schemas:extension:CustomExtensionName:2.0:User";

/// Cases per backend, and filters per case (uniform in `1..=MAX_FILTERS`,
/// so a failure shrinks to one filter): about 400 filters per backend, a
/// few seconds.
const CASES: u32 = 8;
const MAX_FILTERS: usize = 100;

// ---- populations -----------------------------------------------------------

/// Pieces of every stored string. Mixed case, letters whose lowercase is
/// not ASCII (`É`, `ZOË`, `Ω`), whose uppercase is two letters (`ß`), the
/// capital sharp s (`ẞ`), a capital lowercasing to two code points (`İ`),
/// and digits, so that `co`/`sw`/`ew` and orderings meet collisions. All in
/// NFC: SQL folds NFC text exactly, but cannot compose stored NFD text as
/// `scim::schema::fold_case` does (see `scim::sql`'s module docs).
const TOKENS: &[&str] = &[
    "a", "A", "b", "B", "k", "K", "é", "É", "ß", "ẞ", "Zoë", "ZOË", "zoe", "İ", "i", "Ω", "ω",
    "@x", ".", " ", "1", "10",
];

/// Pieces of filter operands: the same, plus forms only an operand may take
/// (folded in Rust): decomposed `é` (NFD) and the Kelvin sign (NFC `K`).
const OPERAND_TOKENS: &[&str] = &[
    "a", "A", "b", "B", "k", "K", "é", "É", "ß", "ẞ", "Zoë", "ZOË", "zoe", "İ", "i", "Ω", "ω",
    "@x", ".", " ", "1", "10", "e\u{301}", "E\u{301}", "\u{212a}", "SS",
];

fn text(max: usize) -> impl Strategy<Value = String> {
    vec(select(TOKENS), 0..=max).prop_map(|t| t.concat())
}

/// A userName: non-blank (the server requires one).
fn user_name() -> impl Strategy<Value = String> {
    vec(select(TOKENS), 1..=3)
        .prop_map(|t| t.concat())
        .prop_filter("userName must not be blank", |s| !s.trim().is_empty())
}

/// An optional string attribute: absent, empty, or text.
fn opt_text() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(String::new())),
        4 => text(3).prop_map(Some),
    ]
}

fn email() -> impl Strategy<Value = Value> {
    (
        opt_text(),
        proptest::option::of(select(&["work", "home", "other", "Work", "WORK"][..])),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(value, kind, primary)| {
            let mut e = Map::new();
            if let Some(v) = value {
                e.insert("value".into(), json!(v));
            }
            if let Some(t) = kind {
                e.insert("type".into(), json!(t));
            }
            if let Some(p) = primary {
                e.insert("primary".into(), json!(p));
            }
            Value::Object(e)
        })
}

/// A custom extension value of any JSON type the operand may meet.
fn custom_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => text(2).prop_map(Value::from),
        2 => select(&[0i64, 1, 2, 10, -3][..]).prop_map(Value::from),
        1 => select(&[2.5f64, 0.5][..]).prop_map(Value::from),
        1 => any::<bool>().prop_map(Value::from),
    ]
}

fn custom_extension() -> impl Strategy<Value = Option<Value>> {
    proptest::option::weighted(
        0.7,
        (
            proptest::option::of(custom_scalar()),
            proptest::option::of(custom_scalar()),
            proptest::option::of(prop_oneof![
                3 => any::<bool>().prop_map(Value::from),
                1 => select(&["true", "False"][..]).prop_map(Value::from),
            ]),
            proptest::option::of(opt_text()),
            proptest::option::of(vec(text(1), 0..=2)),
        ),
    )
    .prop_map(|c| {
        let (attr, level, vip, badge, tags) = c?;
        let mut o = Map::new();
        if let Some(v) = attr {
            o.insert("CustomAttribute".into(), v);
        }
        if let Some(v) = level {
            o.insert("level".into(), v);
        }
        if let Some(v) = vip {
            o.insert("vip".into(), v);
        }
        if let Some(color) = badge {
            let mut b = Map::new();
            if let Some(c) = color {
                b.insert("color".into(), json!(c));
            }
            o.insert("badge".into(), Value::Object(b));
        }
        if let Some(t) = tags {
            o.insert("tags".into(), json!(t));
        }
        Some(Value::Object(o))
    })
}

fn enterprise() -> impl Strategy<Value = Option<Value>> {
    proptest::option::of((opt_text(), proptest::option::of(opt_text()))).prop_map(|e| {
        let (number, manager) = e?;
        let mut o = Map::new();
        if let Some(n) = number {
            o.insert("employeeNumber".into(), json!(n));
        }
        if let Some(m) = manager {
            let mut mo = Map::new();
            if let Some(v) = m {
                mo.insert("value".into(), json!(v));
            }
            o.insert("manager".into(), Value::Object(mo));
        }
        Some(Value::Object(o))
    })
}

/// One POST body.
fn user() -> impl Strategy<Value = Value> {
    (
        (user_name(), opt_text(), opt_text(), opt_text(), opt_text()),
        (
            proptest::option::of(any::<bool>()),
            proptest::option::of((opt_text(), opt_text())),
            vec(email(), 0..=3),
        ),
        (enterprise(), custom_extension()),
    )
        .prop_map(
            |(
                (user_name, display, title, nick, external),
                (active, name, mut emails),
                (ent, custom),
            )| {
                let mut u = Map::new();
                u.insert("schemas".into(), json!([USER]));
                u.insert("userName".into(), json!(user_name));
                for (key, v) in [
                    ("displayName", display),
                    ("title", title),
                    ("nickName", nick),
                    ("externalId", external),
                ] {
                    if let Some(v) = v {
                        u.insert(key.into(), json!(v));
                    }
                }
                if let Some(a) = active {
                    u.insert("active".into(), json!(a));
                }
                if let Some((given, family)) = name {
                    let mut n = Map::new();
                    if let Some(g) = given {
                        n.insert("givenName".into(), json!(g));
                    }
                    if let Some(f) = family {
                        n.insert("familyName".into(), json!(f));
                    }
                    u.insert("name".into(), Value::Object(n));
                }
                // At most one primary email (the server refuses more).
                let mut primary_seen = false;
                for e in &mut emails {
                    if e.get("primary") == Some(&json!(true)) {
                        if primary_seen {
                            e["primary"] = json!(false);
                        }
                        primary_seen = true;
                    }
                }
                if !emails.is_empty() {
                    u.insert("emails".into(), json!(emails));
                }
                if let Some(e) = ent {
                    u.insert(ENT.into(), e);
                }
                if let Some(c) = custom {
                    u.insert(CUSTOM.into(), c);
                }
                Value::Object(u)
            },
        )
}

// ---- filters ---------------------------------------------------------------

/// What a path names, which decides the operators and operands most often
/// generated for it (any other combination is generated too, rarely).
#[derive(Clone, Copy, Debug)]
enum Ty {
    Text,
    Bool,
    /// A complex attribute (`name`, `manager`, `emails`): `pr`, or the
    /// implicit `value` sub-attribute.
    Complex,
    /// A custom extension attribute: typed by the operand.
    Custom,
    DateTime,
}

fn paths() -> Vec<(String, Ty)> {
    use Ty::*;
    let mut p: Vec<(String, Ty)> = [
        ("userName", Text),
        ("USERNAME", Text),
        ("urn:ietf:params:scim:schemas:core:2.0:User:userName", Text),
        ("displayName", Text),
        ("title", Text),
        ("nickName", Text),
        ("externalId", Text),
        ("id", Text),
        ("active", Bool),
        ("name", Complex),
        ("name.givenName", Text),
        ("NAME.familyname", Text),
        ("emails", Complex),
        ("emails.value", Text),
        ("emails.type", Text),
        ("emails.primary", Bool),
        ("emails.display", Text),
        ("groups", Complex),
        ("meta", Complex),
        ("meta.resourceType", Text),
        ("meta.created", DateTime),
        ("meta.lastModified", DateTime),
    ]
    .iter()
    .map(|(s, t)| (s.to_string(), *t))
    .collect();
    for (suffix, ty) in [
        ("employeeNumber", Text),
        ("manager", Complex),
        ("manager.value", Text),
    ] {
        p.push((format!("{ENT}:{suffix}"), ty));
    }
    p.push((format!("{}:manager.value", ENT.to_lowercase()), Text));
    for suffix in [
        "CustomAttribute",
        "level",
        "vip",
        "badge",
        "badge.color",
        "tags",
        // Custom names are matched as written: this one is never stored.
        "customattribute",
    ] {
        p.push((format!("{CUSTOM}:{suffix}"), Ty::Custom));
    }
    p
}

/// Paths that name no attribute: always invalidFilter.
fn invalid_paths() -> Vec<(String, Ty)> {
    vec![
        ("nope".to_string(), Ty::Text),
        ("emails.nope".to_string(), Ty::Text),
        ("name.givenName.x".to_string(), Ty::Text),
        // The dot-for-colon typo names no schema.
        (format!("{ENT}.manager"), Ty::Text),
        (
            "urn:ietf:params:scim:api:messages:2.0:PatchOp:userName".to_string(),
            Ty::Text,
        ),
    ]
}

const OPS: &[&str] = &["eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"];

/// A string operand, most often one token (so that it often matches).
fn string_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(Vec::new()),
        8 => vec(select(OPERAND_TOKENS), 1..=1),
        2 => vec(select(OPERAND_TOKENS), 2..=2),
    ]
    .prop_map(|t| Value::String(t.concat()).to_string())
}

/// Any operand: a string (most often), a number, a boolean or null.
fn operand() -> BoxedStrategy<String> {
    prop_oneof![
        6 => string_literal(),
        2 => select(&["0", "1", "2", "2.5", "10", "-3", "1e1"][..]).prop_map(str::to_string),
        1 => select(&["true", "false", "True"][..]).prop_map(str::to_string),
        1 => Just("null".to_string()),
    ]
    .boxed()
}

fn datetime_literal() -> impl Strategy<Value = String> {
    select(
        &[
            "\"2000-01-01T00:00:00Z\"",
            "\"2999-12-31T23:59:59Z\"",
            "\"2000-01-01t00:00:00z\"",
            "\"2999-01-01T00:00:00+02:00\"",
        ][..],
    )
    .prop_map(str::to_string)
}

/// ` op value` or ` pr` for a path of type `ty`.
fn test_for(ty: Ty) -> BoxedStrategy<String> {
    let any_op = select(OPS).prop_map(str::to_string);
    let generic = (any_op.clone(), operand()).prop_map(|(o, v)| format!(" {o} {v}"));
    let pr = Just(" pr".to_string());
    match ty {
        Ty::Text => prop_oneof![
            1 => pr,
            6 => (any_op, string_literal()).prop_map(|(o, v)| format!(" {o} {v}")),
            2 => generic,
        ]
        .boxed(),
        Ty::Bool => prop_oneof![
            1 => pr,
            5 => (
                select(&["eq", "ne"][..]),
                select(&["true", "false", "\"True\"", "\"false\"", "\"x\"", "1", "null"][..])
            )
                .prop_map(|(o, v)| format!(" {o} {v}")),
            1 => generic,
        ]
        .boxed(),
        Ty::Complex => prop_oneof![
            4 => pr,
            2 => (any_op, string_literal()).prop_map(|(o, v)| format!(" {o} {v}")),
            1 => select(&[" eq null", " ne null"][..]).prop_map(str::to_string),
            1 => generic,
        ]
        .boxed(),
        Ty::Custom => prop_oneof![1 => pr, 5 => generic].boxed(),
        Ty::DateTime => prop_oneof![
            1 => pr,
            4 => (any_op, datetime_literal()).prop_map(|(o, v)| format!(" {o} {v}")),
            1 => generic,
        ]
        .boxed(),
    }
}

/// A boolean combination of `L`eaves, as generated (before printing).
#[derive(Clone, Debug)]
enum Tree {
    Leaf(String),
    And(Box<Tree>, Box<Tree>),
    Or(Box<Tree>, Box<Tree>),
    Not(Box<Tree>),
    /// Redundant parentheses.
    Group(Box<Tree>),
}

fn tree(leaf: BoxedStrategy<String>, depth: u32, size: u32) -> BoxedStrategy<Tree> {
    leaf.prop_map(Tree::Leaf)
        .prop_recursive(depth, size, 2, |inner| {
            prop_oneof![
                3 => (inner.clone(), inner.clone()).prop_map(|(a, b)| Tree::And(Box::new(a), Box::new(b))),
                3 => (inner.clone(), inner.clone()).prop_map(|(a, b)| Tree::Or(Box::new(a), Box::new(b))),
                2 => inner.clone().prop_map(|a| Tree::Not(Box::new(a))),
                1 => inner.prop_map(|a| Tree::Group(Box::new(a))),
            ]
        })
        .boxed()
}

impl Tree {
    /// The filter text, with parentheses only where `or` sits under `and`
    /// (and after `not`, which needs them), or where `Group` asks for them.
    fn print(&self) -> String {
        match self {
            Tree::Leaf(s) => s.clone(),
            Tree::And(a, b) => format!("{} and {}", a.print_in_and(), b.print_in_and()),
            Tree::Or(a, b) => format!("{} or {}", a.print(), b.print()),
            Tree::Not(a) => format!("not ({})", a.print()),
            Tree::Group(a) => format!("({})", a.print()),
        }
    }

    fn print_in_and(&self) -> String {
        match self {
            Tree::Or(..) => format!("({})", self.print()),
            _ => self.print(),
        }
    }

    fn leaves(&self) -> Vec<&str> {
        match self {
            Tree::Leaf(s) => vec![s.as_str()],
            Tree::And(a, b) | Tree::Or(a, b) => {
                let mut v = a.leaves();
                v.extend(b.leaves());
                v
            }
            Tree::Not(a) | Tree::Group(a) => a.leaves(),
        }
    }

    /// The tree's value when each leaf's value is `leaf(text)`.
    fn value(&self, leaf: &dyn Fn(&str) -> bool) -> bool {
        match self {
            Tree::Leaf(s) => leaf(s),
            Tree::And(a, b) => a.value(leaf) && b.value(leaf),
            Tree::Or(a, b) => a.value(leaf) || b.value(leaf),
            Tree::Not(a) => !a.value(leaf),
            Tree::Group(a) => a.value(leaf),
        }
    }
}

/// Tests inside `emails[...]`: sub-attribute names relative to the element.
fn email_sub_test() -> BoxedStrategy<String> {
    let sub = prop_oneof![
        10 => Just(("value", Ty::Text)),
        10 => Just(("type", Ty::Text)),
        6 => Just(("primary", Ty::Bool)),
        3 => Just(("display", Ty::Text)),
        3 => Just(("VALUE", Ty::Text)),
        // Unknown sub-attribute: invalidFilter.
        1 => Just(("nope", Ty::Text)),
    ];
    sub.prop_flat_map(|(name, ty)| test_for(ty).prop_map(move |t| format!("{name}{t}")))
        .boxed()
}

/// An attribute expression: a comparison or `pr` on any path, or a value
/// filter (`emails[...]`, the single-valued `manager[...]`, `name[...]`),
/// or the `emails[...].sub op value` extension.
fn leaf() -> BoxedStrategy<String> {
    let on = |paths: Vec<(String, Ty)>| {
        select(paths)
            .prop_flat_map(|(path, ty)| test_for(ty).prop_map(move |t| format!("{path}{t}")))
    };
    let emails_filter = tree(email_sub_test(), 2, 4).prop_map(|t| t.print());
    prop_oneof![
        30 => on(paths()),
        1 => on(invalid_paths()),
        9 => emails_filter.clone().prop_map(|inner| format!("emails[{inner}]")),
        6 => (emails_filter, email_sub_test()).prop_map(|(inner, t)| format!("emails[{inner}].{t}")),
        3 => test_for(Ty::Text).prop_map(|t| format!("{ENT}:manager[value{t}]")),
        3 => (select(&["givenName", "familyName"][..]), test_for(Ty::Text))
            .prop_map(|(sub, t)| format!("name[{sub}{t}]")),
        // Values the wire representation adds (not in the stored document).
        3 => select(&[
            "meta.version eq \"W/\\\"1\\\"\"",
            "meta.version co \"1\"",
            "meta.resourceType eq \"User\"",
            "meta.resourceType eq \"user\"",
            "meta[resourceType sw \"U\"]",
        ][..])
        .prop_map(str::to_string),
    ]
    .boxed()
}

fn filter() -> BoxedStrategy<Tree> {
    tree(leaf(), 3, 6)
}

// ---- cases -----------------------------------------------------------------

#[derive(Clone)]
struct Case {
    users: Vec<Value>,
    filters: Vec<Tree>,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "population ({} users):", self.users.len())?;
        for u in &self.users {
            writeln!(f, "  {u}")?;
        }
        writeln!(f, "filters ({}):", self.filters.len())?;
        for t in &self.filters {
            writeln!(f, "  {}", t.print())?;
        }
        Ok(())
    }
}

fn case() -> impl Strategy<Value = Case> {
    (vec(user(), 8..=15), vec(filter(), 1..=MAX_FILTERS))
        .prop_map(|(users, filters)| Case { users, filters })
}

#[derive(Default)]
struct Stats {
    cases: usize,
    users: usize,
    duplicates: usize,
    filters: usize,
    rejected: usize,
    /// Accepted filters that selected some but not all users.
    discriminating: usize,
    empty: usize,
    all: usize,
}

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

struct Tenant<'s> {
    srv: &'s TestServer,
    base: String,
    token: String,
}

impl Tenant<'_> {
    async fn send(&self, method: Method, url: reqwest::Url, body: Option<&Value>) -> (u16, Value) {
        let mut req = self
            .srv
            .client
            .request(method, url)
            .header("Authorization", format!("Bearer {}", self.token));
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/scim+json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    fn url(&self, path: &str, params: &[(&str, &str)]) -> reqwest::Url {
        reqwest::Url::parse_with_params(&format!("{}{path}", self.base), params).expect("url")
    }
}

/// The ids the evaluator accepts, or its rejection.
fn by_eval(
    text: &str,
    docs: &BTreeMap<String, Value>,
) -> Result<Result<BTreeSet<String>, String>, String> {
    let parsed = match scim::filter::parse_filter(text) {
        Ok(f) => f,
        Err(e) => return Ok(Err(format!("parse: {e}"))),
    };
    if let Err(e) = scim::eval::validate(&parsed, ResourceKind::User) {
        return Ok(Err(format!("validate: {e}")));
    }
    let mut ids = BTreeSet::new();
    for (id, doc) in docs {
        match scim::eval::matches(&parsed, ResourceKind::User, doc) {
            Ok(true) => {
                ids.insert(id.clone());
            }
            Ok(false) => {}
            Err(e) => {
                return Err(format!(
                    "validate accepted {text} but matches failed on {doc}: {e}"
                ))
            }
        }
    }
    Ok(Ok(ids))
}

async fn run_case(srv: &TestServer, case: &Case, stats: &mut Stats) -> Result<(), TestCaseError> {
    let (tenant, token) = srv.other_tenant().await;
    let t = Tenant {
        srv,
        base: format!("http://{}/scim/v2/{tenant}", srv.addr),
        token,
    };
    // id -> GET document.
    let mut docs = BTreeMap::new();
    for body in &case.users {
        let (status, created) = t.send(Method::POST, t.url("/Users", &[]), Some(body)).await;
        match status {
            201 => {}
            // userName is unique case-insensitively: the alphabet collides.
            409 => {
                stats.duplicates += 1;
                continue;
            }
            _ => return Err(fail(format!("POST {body} answered {status}: {created}"))),
        }
        let id = created["id"].as_str().expect("id").to_string();
        let (status, doc) = t
            .send(Method::GET, t.url(&format!("/Users/{id}"), &[]), None)
            .await;
        if status != 200 {
            return Err(fail(format!("GET /Users/{id} answered {status}: {doc}")));
        }
        docs.insert(id, doc);
    }
    stats.users += docs.len();
    let describe = |ids: &BTreeSet<String>| -> Vec<String> {
        ids.iter()
            .map(|id| docs[id]["userName"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    for tree in &case.filters {
        let text = tree.print();
        let (status, body) = t
            .send(
                Method::GET,
                t.url("/Users", &[("filter", &text), ("count", "1000")]),
                None,
            )
            .await;
        let server: Result<BTreeSet<String>, String> = match status {
            200 => {
                let ids: BTreeSet<String> = body["Resources"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|r| r["id"].as_str().unwrap_or("?").to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                if body["totalResults"] != json!(ids.len()) {
                    return Err(fail(format!(
                        "filter {text}: totalResults {} but {} resources",
                        body["totalResults"],
                        ids.len()
                    )));
                }
                Ok(ids)
            }
            400 if body["scimType"] == "invalidFilter" => {
                Err(body["detail"].as_str().unwrap_or("").to_string())
            }
            _ => {
                return Err(fail(format!(
                    "filter {text}: the server answered {status}: {body}"
                )))
            }
        };
        let eval = by_eval(&text, &docs).map_err(fail)?;
        stats.filters += 1;
        match (&server, &eval) {
            (Err(_), Err(_)) => {
                stats.rejected += 1;
                continue;
            }
            (Ok(s), Ok(e)) if s == e => {
                if s.is_empty() {
                    stats.empty += 1;
                } else if s.len() == docs.len() {
                    stats.all += 1;
                } else {
                    stats.discriminating += 1;
                }
            }
            (Ok(s), Ok(e)) => {
                let only_sql: BTreeSet<String> = s.difference(e).cloned().collect();
                let only_eval: BTreeSet<String> = e.difference(s).cloned().collect();
                let show = |ids: &BTreeSet<String>| {
                    ids.iter()
                        .map(|id| format!("    {}", docs[id]))
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                return Err(fail(format!(
                    "filter {text}\n  SQL ({:?}) and the evaluator disagree\n  selected by SQL only: {:?}\n{}\n  selected by the evaluator only: {:?}\n{}",
                    srv.backend,
                    describe(&only_sql),
                    show(&only_sql),
                    describe(&only_eval),
                    show(&only_eval),
                )));
            }
            (Err(why), Ok(_)) => {
                return Err(fail(format!(
                "filter {text}: the server rejects it ({why}) but scim::eval::validate accepts it"
            )))
            }
            (Ok(_), Err(why)) => {
                return Err(fail(format!(
                    "filter {text}: the server accepts it but the evaluator rejects it ({why})"
                )))
            }
        }
        // The parser's precedence against the generator's tree: each leaf
        // evaluated alone, combined as generated.
        let leaves: BTreeMap<&str, Result<BTreeSet<String>, String>> = tree
            .leaves()
            .into_iter()
            .map(|l| Ok((l, by_eval(l, &docs)?)))
            .collect::<Result<_, String>>()
            .map_err(fail)?;
        if let Some((l, Err(why))) = leaves.iter().find(|(_, r)| r.is_err()) {
            return Err(fail(format!(
                "filter {text} is accepted, but its part {l} alone is not ({why})"
            )));
        }
        let model: BTreeSet<String> = docs
            .keys()
            .filter(|id| {
                tree.value(&|l: &str| {
                    leaves[l]
                        .as_ref()
                        .map(|ids| ids.contains(*id))
                        .unwrap_or(false)
                })
            })
            .cloned()
            .collect();
        if let Ok(e) = &eval {
            if &model != e {
                return Err(fail(format!(
                    "filter {text}: parsed as another tree than generated ({tree:?}); the tree selects {:?}, the filter {:?}",
                    describe(&model),
                    describe(e)
                )));
            }
        }
    }
    stats.cases += 1;
    Ok(())
}

fn run(backend: Backend) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let seed: u64 = match std::env::var("FILTER_PROPERTY_SEED") {
        Ok(s) => s.trim().parse().expect("FILTER_PROPERTY_SEED is a u64"),
        Err(_) => rand::random(),
    };
    let cases = match std::env::var("FILTER_PROPERTY_CASES") {
        Ok(s) => s.trim().parse().expect("FILTER_PROPERTY_CASES is a number"),
        Err(_) => CASES,
    };
    let mut runner = TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 2000,
        max_shrink_time: 120_000,
        ..Config::default()
    });
    let started = std::time::Instant::now();
    let server = rt.block_on(TestServer::start(backend));
    let stats = std::cell::RefCell::new(Stats::default());
    let outcome = runner.run(&case(), |c| {
        rt.block_on(run_case(&server, &c, &mut stats.borrow_mut()))
    });
    let url = server.database_url.clone();
    drop(server);
    rt.block_on(drop_database(backend, &url));
    match outcome {
        Ok(()) => {}
        Err(TestError::Fail(why, minimal)) => panic!(
            "filter_property {backend:?} (FILTER_PROPERTY_SEED={seed}): {why}\nminimal case:\n{minimal:?}"
        ),
        Err(TestError::Abort(why)) => {
            panic!("filter_property {backend:?} (FILTER_PROPERTY_SEED={seed}) aborted: {why}")
        }
    }
    let s = stats.into_inner();
    println!(
        "filter_property {backend:?} (FILTER_PROPERTY_SEED={seed}): {} cases, {} users ({} userName collisions skipped), {} filters: {} rejected by both, {} selecting a proper subset, {} none, {} all; {:.1} s",
        s.cases,
        s.users,
        s.duplicates,
        s.filters,
        s.rejected,
        s.discriminating,
        s.empty,
        s.all,
        started.elapsed().as_secs_f64()
    );
    // The property is only as good as its filters: most must be valid and
    // many must tell users apart.
    assert!(
        s.discriminating * 6 >= s.filters,
        "too few discriminating filters"
    );
    assert!(s.rejected * 2 <= s.filters, "too many rejected filters");
}

#[test]
fn sqlite() {
    run(Backend::Sqlite)
}

#[test]
fn postgres() {
    run(Backend::Postgres)
}
