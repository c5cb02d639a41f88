//! The whole-tenant computation as the oracle of the incremental one.
//!
//! `App::commit` recomputes only the users a write affects (and the
//! contenders of limited roles). This property test drives the real app
//! over HTTP SCIM with random directories, random writes and occasional
//! mapping changes, over a small catalog written here, and after every
//! step compares, for every user, what the app serves (the stored row of a
//! `Full` check, an `AtLeastAsFresh` check at the current revision) and
//! explains with `mapping::compute_tenant` over the whole directory read
//! back from the store. It also checks the refusal gauge, that exactly the
//! live users have a stored row (none for a deleted user, who is unknown to
//! `/permissions`), and that plain directory writes never took the
//! whole-tenant path.
//!
//! Proptest drives the cases (a case is a `Vec` of operations, so a failure
//! shrinks to a short sequence). Each backend runs one server in one tokio
//! runtime; each case gets a fresh tenant, the only one the mappings
//! directory maps while it runs. `PROPTEST_CASES=N` runs more cases.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use reqwest::Method;
use rolebridge::app::{AnsweredFrom, Consistency, Summary, SummaryUser, UserRef};
use rolebridge::domain::{Scope, Tenant, TenantName};
use serde_json::{json, Value};

use crate::support::{drop_database, Backend, Resp, TestServer, GROUP, PATCH_OP, USER};

/// Cases per backend, and the most steps one case has (users, groups and
/// further operations together).
const CASES: u32 = 32;
const MAX_USERS: usize = 5;
const MAX_GROUPS: usize = 4;
const MAX_OPS: usize = 16;

const USER_NAMES: &[&str] = &["ann", "bob", "cy", "dee", "eve", "fay", "gus", "hal"];
const GROUP_NAMES: &[&str] = &[
    "Eng",
    "Ops",
    "Admins",
    "Eng Ops",
    "eng-admins",
    "Sales",
    "Owners",
];
const EXTERNAL_IDS: &[&str] = &["x1", "x2", "x3"];
/// What rules match by `display_name` (case-insensitive; one names no group).
const DISPLAY_MATCH: &[&str] = &[
    "eng", "OPS", "Admins", "eng ops", "sales", "Owners", "Nobody",
];
const REGEXES: &[&str] = &["^Eng", "(?i)admins", "Ops$", "^S", "."];
const SOURCES: &[&str] = &["scim", "okta"];
/// Everything a rule or `default_role` can assign: (assign key, id).
const TARGETS: &[(&str, &str)] = &[
    ("roles", "viewer"),
    ("roles", "editor"),
    ("roles", "owner"),
    ("roles", "auditor"),
    ("profiles", "editor_default"),
    ("profiles", "editor_export"),
    ("profiles", "viewer_export"),
    ("profiles", "owner_quiet"),
    ("custom_roles", "editor_lite"),
    ("custom_roles", "co_owner"),
    ("custom_roles", "viewer_plus"),
];

#[derive(Debug, Clone)]
struct MappingGen {
    combinable: bool,
    per_user: Option<u32>,
    per_role: Option<u32>,
    owner_max: u32,
    auditor_max: u32,
    /// Index into `TARGETS`.
    default_role: Option<usize>,
    rules: Vec<RuleGen>,
}

#[derive(Debug, Clone)]
struct RuleGen {
    matcher: MatchGen,
    /// Optional `source` key (index into `SOURCES`).
    source: Option<usize>,
    /// Indexes into `TARGETS`.
    assign: Vec<usize>,
    priority: Option<i64>,
    named: bool,
}

#[derive(Debug, Clone)]
enum MatchGen {
    DisplayName(usize),
    Regex(usize),
    ExternalId(usize),
    NameAndExternalId(usize, usize),
}

/// A member reference, resolved against the live users or groups at the
/// time of the step (index modulo their number).
#[derive(Debug, Clone, Copy)]
enum Member {
    User(usize),
    Group(usize),
}

#[derive(Debug, Clone)]
enum Op {
    CreateUser {
        name: usize,
        active: bool,
    },
    SetActive {
        user: usize,
        active: bool,
    },
    RenameUser {
        user: usize,
        name: usize,
    },
    DeleteUser {
        user: usize,
    },
    CreateGroup {
        name: usize,
        ext: Option<usize>,
        members: Vec<Member>,
    },
    AddMembers {
        group: usize,
        members: Vec<Member>,
    },
    /// Removes some of the group's current members (indexes into its
    /// member list, read just before).
    RemoveMembers {
        group: usize,
        picks: Vec<usize>,
        /// Pick among the nested groups only, when the group has any.
        groups_only: bool,
    },
    ClearMembers {
        group: usize,
    },
    RenameGroup {
        group: usize,
        name: usize,
    },
    SetExternalId {
        group: usize,
        ext: Option<usize>,
    },
    PutGroup {
        group: usize,
        name: usize,
        ext: Option<usize>,
        members: Vec<Member>,
    },
    DeleteGroup {
        group: usize,
    },
    Remap(MappingGen),
}

#[derive(Debug, Clone)]
struct Case {
    mapping: MappingGen,
    ops: Vec<Op>,
}

fn matcher() -> impl Strategy<Value = MatchGen> {
    prop_oneof![
        (0..DISPLAY_MATCH.len()).prop_map(MatchGen::DisplayName),
        (0..REGEXES.len()).prop_map(MatchGen::Regex),
        (0..EXTERNAL_IDS.len()).prop_map(MatchGen::ExternalId),
        (0..DISPLAY_MATCH.len(), 0..EXTERNAL_IDS.len())
            .prop_map(|(a, b)| MatchGen::NameAndExternalId(a, b)),
    ]
}

/// An index into `TARGETS`, roles limited per tenant (and their profiles
/// and derived roles) drawn twice as often: contention is where a
/// user's result depends on others'.
fn target() -> impl Strategy<Value = usize> {
    prop::sample::select(vec![0, 1, 2, 2, 3, 3, 4, 5, 6, 7, 7, 8, 9, 9, 10])
}

fn rule() -> impl Strategy<Value = RuleGen> {
    (
        matcher(),
        prop::option::weighted(0.2, 0..SOURCES.len()),
        vec(target(), 1..=3),
        prop::option::of(prop::sample::select(vec![-5i64, 10, 20])),
        any::<bool>(),
    )
        .prop_map(|(matcher, source, assign, priority, named)| RuleGen {
            matcher,
            source,
            assign,
            priority,
            named,
        })
}

fn mapping() -> impl Strategy<Value = MappingGen> {
    (
        any::<bool>(),
        prop::option::weighted(0.7, 1u32..=3),
        prop::option::weighted(0.7, 1u32..=2),
        1u32..=2,
        1u32..=2,
        prop::option::of(target()),
        vec(rule(), 1..=5),
    )
        .prop_map(
            |(combinable, per_user, per_role, owner_max, auditor_max, default_role, rules)| {
                MappingGen {
                    combinable,
                    per_user,
                    per_role,
                    owner_max,
                    auditor_max,
                    default_role,
                    rules,
                }
            },
        )
}

fn member() -> impl Strategy<Value = Member> {
    prop_oneof![
        1 => (0usize..8).prop_map(Member::User),
        1 => (0usize..8).prop_map(Member::Group),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let i = || 0usize..8;
    prop_oneof![
        3 => (0..USER_NAMES.len(), prop::bool::weighted(0.85))
            .prop_map(|(name, active)| Op::CreateUser { name, active }),
        3 => (i(), any::<bool>()).prop_map(|(user, active)| Op::SetActive { user, active }),
        1 => (i(), 0..USER_NAMES.len()).prop_map(|(user, name)| Op::RenameUser { user, name }),
        1 => i().prop_map(|user| Op::DeleteUser { user }),
        2 => (0..GROUP_NAMES.len(), prop::option::of(0..EXTERNAL_IDS.len()), vec(member(), 0..=3))
            .prop_map(|(name, ext, members)| Op::CreateGroup { name, ext, members }),
        5 => (i(), vec(member(), 1..=3)).prop_map(|(group, members)| Op::AddMembers { group, members }),
        4 => (i(), vec(i(), 1..=2), any::<bool>())
            .prop_map(|(group, picks, groups_only)| Op::RemoveMembers { group, picks, groups_only }),
        1 => i().prop_map(|group| Op::ClearMembers { group }),
        3 => (i(), 0..GROUP_NAMES.len()).prop_map(|(group, name)| Op::RenameGroup { group, name }),
        2 => (i(), prop::option::of(0..EXTERNAL_IDS.len()))
            .prop_map(|(group, ext)| Op::SetExternalId { group, ext }),
        1 => (i(), 0..GROUP_NAMES.len(), prop::option::of(0..EXTERNAL_IDS.len()), vec(member(), 0..=3))
            .prop_map(|(group, name, ext, members)| Op::PutGroup { group, name, ext, members }),
        1 => i().prop_map(|group| Op::DeleteGroup { group }),
        1 => mapping().prop_map(Op::Remap),
    ]
}

/// A random mapping, a random directory (users, then groups with members,
/// nested ones included), then random writes and mapping changes.
fn case() -> impl Strategy<Value = Case> {
    (
        mapping(),
        vec(prop::bool::weighted(0.85), 1..=MAX_USERS),
        vec(
            (
                0..GROUP_NAMES.len(),
                prop::option::of(0..EXTERNAL_IDS.len()),
                vec(member(), 1..=4),
            ),
            1..=MAX_GROUPS,
        ),
        vec(op(), 0..=MAX_OPS),
    )
        .prop_map(|(mapping, users, groups, more)| {
            let mut ops: Vec<Op> = users
                .into_iter()
                .enumerate()
                .map(|(name, active)| Op::CreateUser { name, active })
                .collect();
            ops.extend(
                groups
                    .into_iter()
                    .map(|(name, ext, members)| Op::CreateGroup { name, ext, members }),
            );
            ops.extend(more);
            Case { mapping, ops }
        })
}

/// Limits for the catalog the shared server starts with (each case writes
/// its own).
fn case_defaults() -> MappingGen {
    MappingGen {
        combinable: true,
        per_user: None,
        per_role: None,
        owner_max: 1,
        auditor_max: 1,
        default_role: None,
        rules: Vec::new(),
    }
}

/// One case's tenant on the shared server: its SCIM base and tokens.
struct Ctx<'a> {
    server: &'a TestServer,
    app: &'a rolebridge::app::App,
    tenant: String,
    addr: std::net::SocketAddr,
    database_url: String,
    base: String,
    token: String,
    permissions_token: String,
}

impl Ctx<'_> {
    fn mappings_dir(&self) -> std::path::PathBuf {
        self.server.mappings_dir()
    }
    async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        self.server
            .send_with(
                method,
                &format!("{}{path}", self.base),
                body,
                &[],
                Some(&self.token),
            )
            .await
    }
    async fn send_with(
        &self,
        method: Method,
        url: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
        token: Option<&str>,
    ) -> Resp {
        self.server
            .send_with(method, url, body, headers, token)
            .await
    }
    async fn post(&self, path: &str, body: Value) -> Resp {
        self.send(Method::POST, path, Some(body)).await
    }
    async fn put(&self, path: &str, body: Value) -> Resp {
        self.send(Method::PUT, path, Some(body)).await
    }
    async fn patch(&self, path: &str, body: Value) -> Resp {
        self.send(Method::PATCH, path, Some(body)).await
    }
    async fn delete(&self, path: &str) -> Resp {
        self.send(Method::DELETE, path, None).await
    }
    /// The member ids of a group, sorted.
    async fn member_ids(&self, group: &str) -> Result<Vec<String>, TestCaseError> {
        let r = self
            .send(Method::GET, &format!("/Groups/{group}"), None)
            .await;
        if r.status != 200 {
            return Err(fail(format!("GET group {group}: {} {}", r.status, r.body)));
        }
        let mut ids: Vec<String> = r.body["members"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m["value"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        Ok(ids)
    }
}

fn catalog_yaml(m: &MappingGen) -> String {
    let mut limits = format!("combinable_roles: {}", m.combinable);
    if let Some(n) = m.per_user {
        limits.push_str(&format!(", max_profiles_per_user: {n}"));
    }
    if let Some(n) = m.per_role {
        limits.push_str(&format!(", max_profiles_per_role_per_user: {n}"));
    }
    let (owner_max, auditor_max) = (m.owner_max, m.auditor_max);
    format!(
        r#"catalog: {{id: pt, name: Property test, description: "The catalog of tests/permissions_incremental.rs", source: none}}
limits: {{{limits}}}
permissions:
  - {{id: read, description: "Read"}}
  - {{id: write, description: "Write", requires: [read]}}
  - {{id: admin_panel, description: "Admin panel", requires: [write]}}
  - {{id: audit, description: "Audit"}}
  - {{id: export, description: "Export", requires: [audit, read]}}
  - {{id: billing, description: "Billing"}}
roles:
  - id: viewer
    name: Viewer
    core: [read]
    configurable:
      - {{permission: export, default: off}}
      - {{permission: audit, default: off}}
  - id: editor
    name: Editor
    core: [write]
    configurable:
      - {{permission: audit, default: on}}
      - {{permission: export, default: off}}
  - id: owner
    name: Owner
    max_per_tenant: {owner_max}
    core: [admin_panel, billing]
    configurable:
      - {{permission: read, default: on}}
      - {{permission: write, default: on}}
  - id: auditor
    name: Auditor
    max_per_tenant: {auditor_max}
    core: [audit]
    configurable:
      - {{permission: export, default: on}}
  - id: editor_lite
    name: Editor lite
    base: editor
    toggles: {{audit: off}}
  - id: co_owner
    name: Co-owner
    base: owner
    toggles: {{read: off}}
profiles:
  - {{id: editor_default, name: "Editor (default)", role: editor, toggles: {{}}}}
  - {{id: editor_export, name: "Editor export", role: editor, toggles: {{export: on}}}}
  - {{id: viewer_export, name: "Viewer export", role: viewer, toggles: {{export: on, audit: on}}}}
  - {{id: owner_quiet, name: "Owner quiet", role: owner, toggles: {{write: off}}}}
"#
    )
}

fn tenant_yaml(m: &MappingGen) -> String {
    let mut y = String::from("catalog: pt\n");
    if let Some(t) = m.default_role {
        y.push_str(&format!("default_role: {}\n", TARGETS[t].1));
    }
    y.push_str(
        "custom_roles:\n  - {id: viewer_plus, name: Viewer plus, base: viewer, toggles: {export: on}}\n",
    );
    if m.rules.is_empty() {
        y.push_str("rules: []\n");
        return y;
    }
    y.push_str("rules:\n");
    for (i, r) in m.rules.iter().enumerate() {
        let mut keys: Vec<String> = match r.matcher {
            MatchGen::DisplayName(n) => vec![format!("display_name: '{}'", DISPLAY_MATCH[n])],
            MatchGen::Regex(n) => vec![format!("name_regex: '{}'", REGEXES[n])],
            MatchGen::ExternalId(n) => vec![format!("external_id: '{}'", EXTERNAL_IDS[n])],
            MatchGen::NameAndExternalId(n, e) => vec![
                format!("display_name: '{}'", DISPLAY_MATCH[n]),
                format!("external_id: '{}'", EXTERNAL_IDS[e]),
            ],
        };
        if let Some(s) = r.source {
            keys.push(format!("source: {}", SOURCES[s]));
        }
        // `assign` keys in the order their first target appears, each
        // target once.
        let mut assign: Vec<(&str, Vec<&str>)> = Vec::new();
        for &t in &r.assign {
            let (key, id) = TARGETS[t];
            match assign.iter_mut().find(|(k, _)| *k == key) {
                Some((_, ids)) if ids.contains(&id) => {}
                Some((_, ids)) => ids.push(id),
                None => assign.push((key, vec![id])),
            }
        }
        let assign: Vec<String> = assign
            .iter()
            .map(|(k, ids)| format!("{k}: [{}]", ids.join(", ")))
            .collect();
        if r.named {
            y.push_str(&format!(
                "  - id: r{i}\n    match: {{{}}}\n",
                keys.join(", ")
            ));
        } else {
            y.push_str(&format!("  - match: {{{}}}\n", keys.join(", ")));
        }
        y.push_str(&format!("    assign: {{{}}}\n", assign.join(", ")));
        if let Some(p) = r.priority {
            y.push_str(&format!("    priority: {p}\n"));
        }
    }
    y
}

/// What the test knows of the directory: live resources in creation order,
/// with labels for the trace.
#[derive(Default)]
struct Model {
    users: Vec<(String, String)>,
    groups: Vec<(String, String)>,
    deleted_users: Vec<(String, String)>,
    next_user: usize,
    next_group: usize,
    /// The mapping fingerprint the tenant's rows were last computed under
    /// (`None` before the first derivation).
    stamped: Option<String>,
    /// The tenant revision last seen.
    revision: Option<i64>,
}

impl Model {
    fn user(&self, i: usize) -> Option<&(String, String)> {
        (!self.users.is_empty()).then(|| &self.users[i % self.users.len()])
    }
    fn group(&self, i: usize) -> Option<&(String, String)> {
        (!self.groups.is_empty()).then(|| &self.groups[i % self.groups.len()])
    }
    /// The label of a user or group (else the id itself).
    fn label(&self, id: &str) -> String {
        self.users
            .iter()
            .chain(&self.groups)
            .chain(&self.deleted_users)
            .find(|r| r.1 == id)
            .map(|r| r.0.clone())
            .unwrap_or_else(|| id.to_string())
    }

    /// Member references as SCIM member objects (with their labels), each
    /// once, never `except` itself.
    fn members(&self, refs: &[Member], except: Option<&str>) -> (Vec<Value>, Vec<String>) {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        let mut labels = Vec::new();
        for r in refs {
            let found = match *r {
                Member::User(i) => self.user(i),
                Member::Group(i) => self.group(i),
            };
            let Some((label, id)) = found else { continue };
            if Some(id.as_str()) == except || !seen.insert(id.clone()) {
                continue;
            }
            out.push(json!({"value": id}));
            labels.push(label.clone());
        }
        (out, labels)
    }
}

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

fn patch(ops: Value) -> Value {
    json!({"schemas": [PATCH_OP], "Operations": ops})
}

/// What one step did.
enum Step {
    /// Nothing to apply it to (no user or group yet).
    Skipped,
    /// A SCIM write; `committed` when the server acknowledged it.
    Write { committed: bool },
    /// A mapping change, reloaded and reconciled (`reconciled` tenants
    /// recomputed whole).
    Remap { reconciled: usize },
}

struct Stats {
    cases: Cell<usize>,
    steps: Cell<usize>,
    users_compared: Cell<usize>,
    incremental_writes: Cell<usize>,
    recomputed_users: Cell<u64>,
    directory_users_at_writes: Cell<u64>,
    /// Steps whose state had each feature, to show what was exercised.
    slot_refusals: Cell<usize>,
    profile_refusals: Cell<usize>,
    single_role_losses: Cell<usize>,
    dropped: Cell<usize>,
    nested: Cell<usize>,
    cycles: Cell<usize>,
}

/// What one verified state held.
#[derive(Default)]
struct Seen {
    users: usize,
    slot_refusals: bool,
    profile_refusals: bool,
    single_role_losses: bool,
    dropped: bool,
    nested: bool,
    cycles: bool,
}

impl Stats {
    fn add(c: &Cell<usize>, n: usize) {
        c.set(c.get() + n);
    }
}

/// Applies one op through the real server, updating the model.
async fn apply(
    srv: &Ctx<'_>,
    m: &mut Model,
    op: &Op,
    trace: &mut Vec<String>,
) -> Result<Step, TestCaseError> {
    let (resp, desc) = match op {
        Op::CreateUser { name, active } => {
            let body = json!({"schemas": [USER], "userName": USER_NAMES[*name], "active": active});
            let r = srv.post("/Users", body).await;
            if r.status == 201 {
                let label = format!("U{}", m.next_user);
                m.next_user += 1;
                let id = r.body["id"].as_str().unwrap_or_default().to_string();
                m.users.push((label, id));
            }
            let label = if r.status == 201 {
                m.users.last().map(|u| u.0.clone()).unwrap_or_default()
            } else {
                "-".into()
            };
            (
                r,
                format!(
                    "create user {label} '{}' active={active}",
                    USER_NAMES[*name]
                ),
            )
        }
        Op::SetActive { user, active } => {
            let Some((label, id)) = m.user(*user).cloned() else {
                return Ok(Step::Skipped);
            };
            let r = srv
                .patch(
                    &format!("/Users/{id}"),
                    patch(json!([{"op": "replace", "path": "active", "value": active}])),
                )
                .await;
            (r, format!("patch user {label} active={active}"))
        }
        Op::RenameUser { user, name } => {
            let Some((label, id)) = m.user(*user).cloned() else {
                return Ok(Step::Skipped);
            };
            let r = srv
                .patch(
                    &format!("/Users/{id}"),
                    patch(
                        json!([{"op": "replace", "path": "userName", "value": USER_NAMES[*name]}]),
                    ),
                )
                .await;
            (
                r,
                format!("patch user {label} userName='{}'", USER_NAMES[*name]),
            )
        }
        Op::DeleteUser { user } => {
            let Some((label, id)) = m.user(*user).cloned() else {
                return Ok(Step::Skipped);
            };
            let r = srv.delete(&format!("/Users/{id}")).await;
            if r.status == 204 {
                m.users.retain(|u| u.1 != id);
                m.deleted_users.push((label.clone(), id));
            }
            (r, format!("delete user {label}"))
        }
        Op::CreateGroup { name, ext, members } => {
            let (objs, labels) = m.members(members, None);
            let mut body =
                json!({"schemas": [GROUP], "displayName": GROUP_NAMES[*name], "members": objs});
            if let Some(e) = ext {
                body["externalId"] = json!(EXTERNAL_IDS[*e]);
            }
            let r = srv.post("/Groups", body).await;
            let label = if r.status == 201 {
                let label = format!("G{}", m.next_group);
                m.next_group += 1;
                let id = r.body["id"].as_str().unwrap_or_default().to_string();
                m.groups.push((label.clone(), id));
                label
            } else {
                "-".into()
            };
            (
                r,
                format!(
                    "create group {label} '{}' externalId={:?} members={labels:?}",
                    GROUP_NAMES[*name],
                    ext.map(|e| EXTERNAL_IDS[e])
                ),
            )
        }
        Op::AddMembers { group, members } => {
            let Some((label, id)) = m.group(*group).cloned() else {
                return Ok(Step::Skipped);
            };
            let (objs, labels) = m.members(members, Some(&id));
            if objs.is_empty() {
                return Ok(Step::Skipped);
            }
            let r = srv
                .patch(
                    &format!("/Groups/{id}"),
                    patch(json!([{"op": "add", "path": "members", "value": objs}])),
                )
                .await;
            (r, format!("patch group {label} add members {labels:?}"))
        }
        Op::RemoveMembers {
            group,
            picks,
            groups_only,
        } => {
            let Some((label, id)) = m.group(*group).cloned() else {
                return Ok(Step::Skipped);
            };
            let mut current = srv.member_ids(&id).await?;
            let nested: Vec<String> = current
                .iter()
                .filter(|c| m.groups.iter().any(|g| g.1 == **c))
                .cloned()
                .collect();
            if *groups_only && !nested.is_empty() {
                current = nested;
            }
            if current.is_empty() {
                return Ok(Step::Skipped);
            }
            let mut chosen: Vec<&String> =
                picks.iter().map(|p| &current[p % current.len()]).collect();
            chosen.sort();
            chosen.dedup();
            let labels: Vec<String> = chosen.iter().map(|c| m.label(c)).collect();
            let ops: Vec<Value> = chosen
                .iter()
                .map(|c| json!({"op": "remove", "path": format!("members[value eq \"{c}\"]")}))
                .collect();
            let r = srv
                .patch(&format!("/Groups/{id}"), patch(Value::Array(ops)))
                .await;
            (r, format!("patch group {label} remove members {labels:?}"))
        }
        Op::ClearMembers { group } => {
            let Some((label, id)) = m.group(*group).cloned() else {
                return Ok(Step::Skipped);
            };
            let r = srv
                .patch(
                    &format!("/Groups/{id}"),
                    patch(json!([{"op": "remove", "path": "members"}])),
                )
                .await;
            (r, format!("patch group {label} remove all members"))
        }
        Op::RenameGroup { group, name } => {
            let Some((label, id)) = m.group(*group).cloned() else {
                return Ok(Step::Skipped);
            };
            let r = srv
                .patch(
                    &format!("/Groups/{id}"),
                    patch(
                        json!([{"op": "replace", "path": "displayName", "value": GROUP_NAMES[*name]}]),
                    ),
                )
                .await;
            (
                r,
                format!("patch group {label} displayName='{}'", GROUP_NAMES[*name]),
            )
        }
        Op::SetExternalId { group, ext } => {
            let Some((label, id)) = m.group(*group).cloned() else {
                return Ok(Step::Skipped);
            };
            let body = match ext {
                Some(e) => patch(
                    json!([{"op": "replace", "path": "externalId", "value": EXTERNAL_IDS[*e]}]),
                ),
                None => patch(json!([{"op": "remove", "path": "externalId"}])),
            };
            let r = srv.patch(&format!("/Groups/{id}"), body).await;
            (
                r,
                format!(
                    "patch group {label} externalId={:?}",
                    ext.map(|e| EXTERNAL_IDS[e])
                ),
            )
        }
        Op::PutGroup {
            group,
            name,
            ext,
            members,
        } => {
            let Some((label, id)) = m.group(*group).cloned() else {
                return Ok(Step::Skipped);
            };
            let (objs, labels) = m.members(members, Some(&id));
            let mut body =
                json!({"schemas": [GROUP], "displayName": GROUP_NAMES[*name], "members": objs});
            if let Some(e) = ext {
                body["externalId"] = json!(EXTERNAL_IDS[*e]);
            }
            let r = srv.put(&format!("/Groups/{id}"), body).await;
            (
                r,
                format!(
                    "put group {label} '{}' externalId={:?} members={labels:?}",
                    GROUP_NAMES[*name],
                    ext.map(|e| EXTERNAL_IDS[e])
                ),
            )
        }
        Op::DeleteGroup { group } => {
            let Some((label, id)) = m.group(*group).cloned() else {
                return Ok(Step::Skipped);
            };
            let r = srv.delete(&format!("/Groups/{id}")).await;
            if r.status == 204 {
                m.groups.retain(|g| g.1 != id);
            }
            (r, format!("delete group {label}"))
        }
        Op::Remap(gen) => {
            let dir = srv.mappings_dir();
            std::fs::write(dir.join("catalogs/pt.yaml"), catalog_yaml(gen))
                .map_err(|e| fail(format!("write catalog: {e}")))?;
            let tenant_file = tenant_yaml(gen);
            std::fs::write(
                dir.join("tenants").join(format!("{}.yaml", srv.tenant)),
                &tenant_file,
            )
            .map_err(|e| fail(format!("write tenant mapping: {e}")))?;
            srv.app
                .reload_mappings()
                .map_err(|e| fail(format!("generated mapping invalid: {e:?}\n{tenant_file}")))?;
            let fingerprint = srv.app.mappings().current().fingerprint.clone();
            let expect = usize::from(m.stamped.as_deref() != Some(fingerprint.as_str()));
            let done = srv
                .app
                .reconcile_mappings()
                .await
                .map_err(|e| fail(format!("reconcile: {e}")))?;
            trace.push(format!(
                "remap {gen:?} (reconciled {done} tenant(s))\n--- tenant file:\n{tenant_file}---"
            ));
            if done != expect {
                return Err(fail(format!(
                    "reconcile_mappings recomputed {done} tenant(s), expected {expect}"
                )));
            }
            m.stamped = Some(fingerprint);
            m.revision = None;
            return Ok(Step::Remap { reconciled: done });
        }
    };
    // A write that changed something carries the revision it committed;
    // one that changed nothing (a PATCH to the same value) carries none.
    let revision = resp
        .header("x-rolebridge-revision")
        .map(|v| v.parse::<i64>())
        .transpose()
        .map_err(|e| fail(format!("step '{desc}': bad X-Rolebridge-Revision: {e}")))?;
    trace.push(format!(
        "{desc} -> {}{}",
        resp.status.as_u16(),
        revision
            .map(|r| format!(" (revision {r})"))
            .unwrap_or_default()
    ));
    // A write the server refuses must be a client error we provoke on
    // purpose (a userName or displayName already taken), never a 5xx.
    if !resp.status.is_success() && resp.status != 409 {
        return Err(fail(format!(
            "step '{desc}' answered {}: {}",
            resp.status, resp.body
        )));
    }
    if !resp.status.is_success() && revision.is_some() {
        return Err(fail(format!(
            "step '{desc}' failed but returned a revision"
        )));
    }
    let always_writes = matches!(
        op,
        Op::CreateUser { .. }
            | Op::CreateGroup { .. }
            | Op::DeleteUser { .. }
            | Op::DeleteGroup { .. }
    );
    if always_writes && resp.status.is_success() && revision.is_none() {
        return Err(fail(format!(
            "step '{desc}' created or deleted without a revision"
        )));
    }
    let committed = revision.is_some();
    if let Some(rev) = revision {
        if let Some(before) = m.revision {
            if rev <= before {
                return Err(fail(format!(
                    "step '{desc}': revision {rev} after {before}"
                )));
            }
        }
        m.revision = Some(rev);
    }
    Ok(Step::Write { committed })
}

/// The served summary the oracle's result implies.
fn expected_summary(eff: &mapping::EffectivePermissions) -> Summary {
    let mut roles = Vec::new();
    let mut profiles = Vec::new();
    for a in &eff.assignments {
        match &a.target {
            mapping::Target::Role(r) | mapping::Target::CustomRole(r) => roles.push(r.to_string()),
            mapping::Target::Profile(p) => {
                profiles.push(p.to_string());
                roles.push(a.base_role.to_string());
            }
        }
    }
    roles.sort();
    roles.dedup();
    profiles.sort();
    Summary {
        user: SummaryUser {
            id: eff.user_id.clone(),
            user_name: eff.user_name.clone(),
            active: eff.active,
        },
        roles,
        profiles,
        permissions: eff.permissions.iter().map(|p| p.to_string()).collect(),
    }
}

fn pretty<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("<unserializable: {e}>"))
}

/// True when group nesting has a cycle: peel off groups that contain no
/// group still standing; a cycle is what cannot be peeled.
fn has_cycle(edges: &[rolebridge::store::MemberRow]) -> bool {
    let mut nested: Vec<(&str, &str)> = edges
        .iter()
        .filter(|e| e.member_type == "Group")
        .map(|e| (e.group_id.as_str(), e.member_id.as_str()))
        .collect();
    loop {
        let parents: BTreeSet<&str> = nested.iter().map(|e| e.0).collect();
        let before = nested.len();
        // An edge whose member contains no group is not part of a cycle.
        nested.retain(|e| parents.contains(e.1));
        if nested.len() == before {
            return !nested.is_empty();
        }
    }
}

/// Compares everything the app serves with the whole-tenant oracle.
/// Returns the number of users compared.
async fn verify(
    srv: &Ctx<'_>,
    tenant: &Tenant,
    m: &mut Model,
    db: &mut sqlx::AnyConnection,
) -> Result<Seen, TestCaseError> {
    let app = srv.app;
    let loaded = app.mappings().current();
    let compiled = loaded
        .set
        .tenant(&mapping::TenantName::new(&srv.tenant))
        .ok_or_else(|| fail("the test tenant is not mapped".into()))?;
    let dir = app
        .store()
        .directory(tenant.id)
        .await
        .map_err(|e| fail(format!("directory: {e}")))?;
    let live: BTreeSet<&str> = m.users.iter().map(|u| u.1.as_str()).collect();
    let stored: BTreeSet<&str> = dir.users.iter().map(|u| u.id.as_str()).collect();
    if live != stored {
        return Err(fail(format!(
            "the directory holds users {stored:?}, the acknowledged writes made {live:?}"
        )));
    }
    let oracle = mapping::compute_tenant(compiled, &rolebridge::app::user_facts(&dir));
    let mut revision: Option<i64> = None;
    for u in &dir.users {
        let want = oracle
            .user(&u.id)
            .ok_or_else(|| fail(format!("oracle has no result for {}", m.label(&u.id))))?;
        // (a) The stored row, as a Full check serves it.
        let checked = app
            .user_permissions(tenant, &UserRef::Id(u.id.clone()), Consistency::Full)
            .await
            .map_err(|e| fail(format!("user_permissions({}): {e}", m.label(&u.id))))?;
        if checked.from != AnsweredFrom::Store {
            return Err(fail(format!(
                "user {} has no stored row: answered from {:?}",
                m.label(&u.id),
                checked.from
            )));
        }
        let want_summary = expected_summary(want);
        if *checked.summary != want_summary {
            return Err(fail(format!(
                "stored permissions of user {} differ from the whole-tenant oracle\nexpected: {}\nactual: {}",
                m.label(&u.id),
                pretty(&want_summary),
                pretty(&*checked.summary)
            )));
        }
        match revision {
            None => revision = Some(checked.revision),
            Some(r) if r != checked.revision => {
                return Err(fail(format!(
                    "checks of one state answered revisions {r} and {}",
                    checked.revision
                )))
            }
            Some(_) => {}
        }
        // An answer "at least as fresh as" the current revision may come
        // from the in-process cache, and must be current all the same.
        let fresh = app
            .user_permissions(
                tenant,
                &UserRef::Id(u.id.clone()),
                Consistency::AtLeastAsFresh(checked.revision),
            )
            .await
            .map_err(|e| fail(format!("user_permissions({}, fresh): {e}", m.label(&u.id))))?;
        if *fresh.summary != want_summary {
            return Err(fail(format!(
                "permissions of user {} at least as fresh as revision {} (from {:?}) differ from the whole-tenant oracle\nexpected: {}\nactual: {}",
                m.label(&u.id),
                checked.revision,
                fresh.from,
                pretty(&want_summary),
                pretty(&*fresh.summary)
            )));
        }
        // (b) The explanation data: assignments, losses with slot holders,
        // grants, dropped permissions.
        let (result, uid) = app
            .permissions(tenant, &UserRef::Id(u.id.clone()))
            .await
            .map_err(|e| fail(format!("permissions({}): {e}", m.label(&u.id))))?;
        if uid != u.id {
            return Err(fail(format!(
                "permissions({}) answered user {uid}",
                m.label(&u.id)
            )));
        }
        let got = serde_json::to_value(result.user(&uid)).map_err(|e| fail(e.to_string()))?;
        let expected = serde_json::to_value(want).map_err(|e| fail(e.to_string()))?;
        if got != expected {
            return Err(fail(format!(
                "explanation data of user {} differs from the whole-tenant oracle\nexpected: {}\nactual: {}",
                m.label(&u.id),
                pretty(&expected),
                pretty(&got)
            )));
        }
    }
    if let (Some(seen), Some(now)) = (m.revision, revision) {
        if now != seen {
            return Err(fail(format!(
                "checks answered revision {now}, the last write returned {seen}"
            )));
        }
    }
    if revision.is_some() {
        m.revision = revision;
    }
    // (c) The refusal gauge, from the stored rows, against the oracle's
    // refusals other than plain rule precedence.
    let mut want_gauge: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in oracle.refusals() {
        let kind = r.lost.reason.kind();
        if kind != "single_role" {
            *want_gauge
                .entry((srv.tenant.clone(), kind.to_string()))
                .or_default() += 1;
        }
    }
    let mut gauge = app
        .refusal_gauge()
        .await
        .map_err(|e| fail(format!("refusal_gauge: {e}")))?;
    // Earlier cases' tenants (unmapped now) keep their rows.
    gauge.retain(|(t, _), _| *t == srv.tenant);
    if gauge != want_gauge {
        return Err(fail(format!(
            "refusal gauge {gauge:?}, the oracle's refusals give {want_gauge:?}"
        )));
    }
    // (d) Exactly the live users have a stored row: none is left behind
    // for a deleted user (the check path cannot see such a row, the table
    // can).
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT user_id FROM effective_permissions WHERE tenant_id = $1")
            .bind(tenant.id.to_string())
            .fetch_all(&mut *db)
            .await
            .map_err(|e| fail(format!("read effective_permissions: {e}")))?;
    let with_rows: BTreeSet<String> = rows.into_iter().map(|(id,)| id).collect();
    let live: BTreeSet<String> = m.users.iter().map(|u| u.1.clone()).collect();
    if with_rows != live {
        let extra: Vec<String> = with_rows.difference(&live).map(|id| m.label(id)).collect();
        let deleted: Vec<&str> = m
            .deleted_users
            .iter()
            .filter(|d| with_rows.contains(&d.1))
            .map(|d| d.0.as_str())
            .collect();
        let missing: Vec<String> = live.difference(&with_rows).map(|id| m.label(id)).collect();
        return Err(fail(format!(
            "stored rows for users not in the directory {extra:?} (deleted: {deleted:?}); live users without a row {missing:?}"
        )));
    }
    // Deleted users: the API does not know them.
    for (label, id) in &m.deleted_users {
        let at = app
            .store()
            .check_row(tenant.id, Some(id), None)
            .await
            .map_err(|e| fail(format!("check_row: {e}")))?;
        if at.user.is_some() || at.row.is_some() {
            return Err(fail(format!(
                "deleted user {label} still has {:?} / row {:?}",
                at.user, at.row
            )));
        }
        let url = format!(
            "http://{}/api/v1/tenants/{}/users/{id}/permissions",
            srv.addr, srv.tenant
        );
        let r = srv
            .send_with(Method::GET, &url, None, &[], Some(&srv.permissions_token))
            .await;
        if r.status != 404 || r.body["error"]["code"] != "unknown_user" {
            return Err(fail(format!(
                "permissions of deleted user {label}: {} {}",
                r.status, r.body
            )));
        }
    }
    let facts = rolebridge::app::user_facts(&dir);
    let seen = Seen {
        users: dir.users.len(),
        slot_refusals: want_gauge.keys().any(|(_, k)| k == "max_per_tenant"),
        profile_refusals: want_gauge.keys().any(|(_, k)| k != "max_per_tenant"),
        single_role_losses: oracle
            .refusals()
            .iter()
            .any(|r| r.lost.reason.kind() == "single_role"),
        dropped: oracle.users().any(|u| !u.dropped.is_empty()),
        nested: facts
            .iter()
            .any(|u| u.groups.iter().any(|g| !g.via.is_empty())),
        cycles: has_cycle(&dir.edges),
    };
    Ok(seen)
}

/// One case: a fresh tenant on the shared server, the only tenant the
/// mappings directory maps while the case runs.
async fn run_case(server: &TestServer, case: &Case, stats: &Stats) -> Result<(), TestCaseError> {
    let (name, token) = server.other_tenant().await;
    let dir = server.mappings_dir();
    for entry in std::fs::read_dir(dir.join("tenants")).expect("tenants dir") {
        std::fs::remove_file(entry.expect("entry").path()).expect("remove tenant mapping");
    }
    std::fs::write(dir.join("catalogs/pt.yaml"), catalog_yaml(&case.mapping)).expect("catalog");
    std::fs::write(
        dir.join("tenants").join(format!("{name}.yaml")),
        tenant_yaml(&case.mapping),
    )
    .expect("tenant mapping");
    server
        .app
        .reload_mappings()
        .map_err(|e| fail(format!("generated mapping invalid: {e:?}")))?;
    let tenant_name = TenantName::parse(&name).expect("tenant name");
    let tenant = server
        .app
        .store()
        .tenant_by_name(&tenant_name)
        .await
        .expect("tenant")
        .expect("the case's tenant exists");
    let permissions_token = server
        .app
        .create_token(&tenant_name, Scope::Permissions)
        .await
        .expect("token")
        .token
        .expose()
        .to_string();
    let ctx = Ctx {
        server,
        app: &server.app,
        addr: server.addr,
        database_url: server.database_url.clone(),
        base: format!("http://{}/scim/v2/{name}", server.addr),
        tenant: name,
        token,
        permissions_token,
    };
    run_steps(&ctx, &tenant, case, stats).await
}

async fn run_steps(
    srv: &Ctx<'_>,
    tenant: &Tenant,
    case: &Case,
    stats: &Stats,
) -> Result<(), TestCaseError> {
    let mut m = Model::default();
    let mut trace = vec![format!(
        "initial mapping {:?}\n--- tenant file:\n{}---",
        case.mapping,
        tenant_yaml(&case.mapping)
    )];
    let mut db = {
        use sqlx::Connection;
        sqlx::AnyConnection::connect(&srv.database_url)
            .await
            .expect("connect to the test database")
    };
    let metrics = &srv.app.cache().metrics;
    for op in &case.ops {
        let full_before = metrics.full_recomputes.load(Ordering::Relaxed);
        let recomputed_before = metrics.recomputed_users.load(Ordering::Relaxed);
        let step = match apply(srv, &mut m, op, &mut trace).await {
            Ok(s) => s,
            Err(e) => return Err(fail(format!("{e}\nsteps:\n{}", trace.join("\n")))),
        };
        let full = metrics.full_recomputes.load(Ordering::Relaxed) - full_before;
        match step {
            Step::Skipped => continue,
            Step::Write { committed } => {
                // Only the first derivation of the tenant (rows never
                // computed under this mapping) may take the whole-tenant
                // path; every other directory write is incremental.
                let fingerprint = srv.app.mappings().current().fingerprint.clone();
                let first = committed && m.stamped.as_deref() != Some(fingerprint.as_str());
                let expect = u64::from(first);
                if full != expect {
                    return Err(fail(format!(
                        "a directory write made {full} whole-tenant recomputation(s), expected {expect}\nsteps:\n{}",
                        trace.join("\n")
                    )));
                }
                if committed {
                    m.stamped = Some(fingerprint);
                }
                if committed && !first {
                    Stats::add(&stats.incremental_writes, 1);
                    let n = metrics.recomputed_users.load(Ordering::Relaxed) - recomputed_before;
                    stats.recomputed_users.set(stats.recomputed_users.get() + n);
                    stats
                        .directory_users_at_writes
                        .set(stats.directory_users_at_writes.get() + m.users.len() as u64);
                }
            }
            Step::Remap { reconciled } => {
                if full != reconciled as u64 {
                    return Err(fail(format!(
                        "a mapping change reconciled {reconciled} tenant(s) with {full} whole-tenant recomputation(s)\nsteps:\n{}",
                        trace.join("\n")
                    )));
                }
            }
        }
        Stats::add(&stats.steps, 1);
        match verify(srv, tenant, &mut m, &mut db).await {
            Ok(seen) => {
                Stats::add(&stats.users_compared, seen.users);
                for (flag, counter) in [
                    (seen.slot_refusals, &stats.slot_refusals),
                    (seen.profile_refusals, &stats.profile_refusals),
                    (seen.single_role_losses, &stats.single_role_losses),
                    (seen.dropped, &stats.dropped),
                    (seen.nested, &stats.nested),
                    (seen.cycles, &stats.cycles),
                ] {
                    Stats::add(counter, usize::from(flag));
                }
            }
            Err(e) => return Err(fail(format!("{e}\nsteps:\n{}", trace.join("\n")))),
        }
    }
    Stats::add(&stats.cases, 1);
    Ok(())
}

fn run(backend: Backend) {
    let rt = crate::support::property_runtime();
    let mut runner = crate::support::property_runner(CASES);
    let stats = Stats {
        cases: Cell::new(0),
        steps: Cell::new(0),
        users_compared: Cell::new(0),
        incremental_writes: Cell::new(0),
        recomputed_users: Cell::new(0),
        directory_users_at_writes: Cell::new(0),
        slot_refusals: Cell::new(0),
        profile_refusals: Cell::new(0),
        single_role_losses: Cell::new(0),
        dropped: Cell::new(0),
        nested: Cell::new(0),
        cycles: Cell::new(0),
    };
    let started = std::time::Instant::now();
    let server = rt.block_on(TestServer::start_with_catalogs(
        backend,
        &[("pt", &catalog_yaml(&case_defaults()))],
        "catalog: pt\nrules: []\n",
    ));
    let outcome = runner.run(&case(), |c| rt.block_on(run_case(&server, &c, &stats)));
    let (url, mappings) = (server.database_url.clone(), server.mappings_dir());
    drop(server);
    rt.block_on(drop_database(backend, &url));
    let _ = std::fs::remove_dir_all(mappings);
    crate::support::expect_property(outcome, "incremental permissions differ from the oracle");
    println!(
        "permissions_incremental {backend:?}: {} cases, {} steps, {} users compared; {} incremental writes recomputed {} users (whole tenant: {}); steps with slot refusals {}, profile-limit refusals {}, single-role losses {}, dropped permissions {}, nesting {}, nesting cycles {}; {:.1} s",
        stats.cases.get(),
        stats.steps.get(),
        stats.users_compared.get(),
        stats.incremental_writes.get(),
        stats.recomputed_users.get(),
        stats.directory_users_at_writes.get(),
        stats.slot_refusals.get(),
        stats.profile_refusals.get(),
        stats.single_role_losses.get(),
        stats.dropped.get(),
        stats.nested.get(),
        stats.cycles.get(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        stats.incremental_writes.get() > 0,
        "no incremental write was exercised"
    );
    assert!(
        stats.recomputed_users.get() < stats.directory_users_at_writes.get(),
        "directory writes recomputed as many users as whole-tenant passes would"
    );
}

#[test]
fn sqlite() {
    run(Backend::Sqlite)
}

#[test]
fn postgres() {
    run(Backend::Postgres)
}
