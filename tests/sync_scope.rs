//! The full load as the oracle of the incremental one.
//!
//! An incremental sync run plans against `Store::sync_scope`: only the
//! links its batch names, their resources and the memberships around them,
//! with the guard's totals counted by the database. A complete read plans
//! against every link and the whole directory. This property test drives
//! random directories through the real store (SQLite and PostgreSQL) and
//! the real apply: complete reads, and incremental batches of user and
//! group changes, deletions, member deltas, accounts re-created under an
//! old DN or userName, and grace periods that run out. Before each
//! incremental batch is applied it is planned both ways, and the two plans
//! must be identical, counts, guard bases, member deltas, links and skips
//! included.
//!
//! Proptest drives the cases; each case gets its own tenant and source.
//! `PROPTEST_CASES=N` runs more cases.

use std::cell::Cell;
use std::collections::BTreeMap;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rolebridge::app::sync::plan::{self, Plan, PlanInput};
use rolebridge::app::{App, CursorUpdate};
use rolebridge::domain::{ResourceId, TenantId, TenantName, Timestamp};
use rolebridge::store::Store;
use rolebridge::sync::{
    Batch, Change, ExternalGroup, ExternalUser, Kind, MemberRef, Members, ReadOutcome,
};

use crate::support::{drop_database, fresh_database, unique, Backend};

const CASES: u32 = 24;
const USERS: usize = 7;
const GROUPS: usize = 4;
/// Fewer DNs and names than users, so accounts re-created under an old DN
/// or userName happen often.
const DNS: usize = 5;
const NAMES: &[&str] = &["ann", "bob", "cy", "dee", "eve"];
const BASES: &[&str] = &["ou=a,dc=x", "ou=b,dc=x"];

/// A member reference: by stable id, DN or userName, to a user or group
/// (some name nothing).
#[derive(Debug, Clone)]
enum MemberGen {
    Key(bool, usize),
    Locator(bool, usize),
    UserName(usize),
}

#[derive(Debug, Clone)]
enum ChangeGen {
    /// Creates or changes user `n` (a new stable id when `rekey`: the
    /// account was deleted and re-created).
    User {
        n: usize,
        name: usize,
        dn: usize,
        base: usize,
        active: bool,
        mail: bool,
        rekey: bool,
    },
    DeleteUser {
        n: usize,
        say_kind: bool,
    },
    Group {
        n: usize,
        renamed: bool,
        members: Vec<MemberGen>,
    },
    GroupMembers {
        n: usize,
        added: Vec<MemberGen>,
        removed: Vec<MemberGen>,
    },
    DeleteGroup {
        n: usize,
        say_kind: bool,
    },
}

#[derive(Debug, Clone)]
enum Step {
    /// A complete read of the directory as it is now.
    Full { expire: bool },
    /// An incremental read of these changes (applied to the directory).
    Incremental {
        changes: Vec<ChangeGen>,
        expire: bool,
    },
}

fn member() -> impl Strategy<Value = MemberGen> {
    prop_oneof![
        (any::<bool>(), 0..USERS + 1).prop_map(|(g, n)| MemberGen::Key(g, n)),
        (any::<bool>(), 0..DNS + 1).prop_map(|(g, n)| MemberGen::Locator(g, n)),
        (0..NAMES.len() + 1).prop_map(MemberGen::UserName),
    ]
}

fn change() -> impl Strategy<Value = ChangeGen> {
    prop_oneof![
        4 => (0..USERS, 0..NAMES.len(), 0..DNS, 0..BASES.len(), any::<bool>(), any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(n, name, dn, base, active, mail, rekey)| ChangeGen::User { n, name, dn, base, active, mail, rekey }),
        1 => (0..USERS, any::<bool>()).prop_map(|(n, say_kind)| ChangeGen::DeleteUser { n, say_kind }),
        2 => (0..GROUPS, any::<bool>(), vec(member(), 0..5))
            .prop_map(|(n, renamed, members)| ChangeGen::Group { n, renamed, members }),
        2 => (0..GROUPS, vec(member(), 0..3), vec(member(), 0..3))
            .prop_map(|(n, added, removed)| ChangeGen::GroupMembers { n, added, removed }),
        1 => (0..GROUPS, any::<bool>()).prop_map(|(n, say_kind)| ChangeGen::DeleteGroup { n, say_kind }),
    ]
}

fn case() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        1 => any::<bool>().prop_map(|expire| Step::Full { expire }),
        4 => (vec(change(), 1..5), prop::bool::weighted(0.2))
            .prop_map(|(changes, expire)| Step::Incremental { changes, expire }),
    ];
    vec(step, 1..10)
}

/// The directory the source reads, kept by the test.
#[derive(Default)]
struct Model {
    users: BTreeMap<usize, ExternalUser>,
    groups: BTreeMap<usize, ExternalGroup>,
    /// Bumped for a re-created account's new stable id.
    generation: usize,
}

fn dn(n: usize) -> String {
    format!("uid=p{n},ou=a,dc=x")
}

fn group_dn(n: usize) -> String {
    format!("cn=g{n},ou=groups,dc=x")
}

impl Model {
    fn reference(&self, m: &MemberGen) -> MemberRef {
        match m {
            MemberGen::Key(false, n) => MemberRef::Key(
                self.users
                    .get(n)
                    .map_or(format!("no-user-{n}").into(), |u| u.key.clone()),
            ),
            MemberGen::Key(true, n) => MemberRef::Key(format!("g{n}").into()),
            MemberGen::Locator(false, n) => MemberRef::Locator(dn(*n).to_uppercase()),
            MemberGen::Locator(true, n) => MemberRef::Locator(group_dn(*n)),
            MemberGen::UserName(n) => {
                MemberRef::UserName(NAMES.get(*n).map_or("nobody", |s| s).to_uppercase())
            }
        }
    }

    fn group(&self, n: usize, renamed: bool, members: Vec<MemberRef>) -> ExternalGroup {
        ExternalGroup {
            key: format!("g{n}").into(),
            locator: Some(group_dn(n)),
            base: "ou=groups,dc=x".into(),
            display_name: format!("Group {n}{}", if renamed { " (renamed)" } else { "" }),
            external_id: None,
            members: Members::Full(members),
        }
    }

    /// Applies a change to the model and says what the source reports.
    fn change(&mut self, c: &ChangeGen) -> Vec<Change> {
        match c {
            ChangeGen::User {
                n,
                name,
                dn: d,
                base,
                active,
                mail,
                rekey,
            } => {
                let mut out = Vec::new();
                // One DN names one live entry: a DN another user holds is
                // not taken.
                let taken = self
                    .users
                    .iter()
                    .any(|(k, u)| k != n && u.locator.as_deref() == Some(dn(*d).as_str()));
                let locator = if taken {
                    self.users.get(n).and_then(|u| u.locator.clone())
                } else {
                    Some(dn(*d))
                };
                let key = match self.users.get(n) {
                    Some(u) if !rekey => u.key.clone(),
                    Some(u) => {
                        // Deleted and re-created: the old entry goes first.
                        out.push(Change::Deleted {
                            key: u.key.clone(),
                            kind: None,
                        });
                        self.generation += 1;
                        format!("u{n}-{}", self.generation).into()
                    }
                    None => {
                        self.generation += 1;
                        format!("u{n}-{}", self.generation).into()
                    }
                };
                let user = ExternalUser {
                    key,
                    locator: locator
                        .clone()
                        .or_else(|| Some(format!("uid=q{n},ou=a,dc=x"))),
                    base: BASES[*base].into(),
                    user_name: NAMES[*name].into(),
                    external_id: None,
                    display_name: None,
                    given_name: None,
                    family_name: None,
                    emails: if *mail {
                        vec![format!("{}@x.test", NAMES[*name])]
                    } else {
                        vec![]
                    },
                    active: *active,
                };
                self.users.insert(*n, user.clone());
                out.push(Change::User(user));
                out
            }
            ChangeGen::DeleteUser { n, say_kind } => match self.users.remove(n) {
                Some(u) => vec![Change::Deleted {
                    key: u.key,
                    kind: say_kind.then_some(Kind::User),
                }],
                None => vec![],
            },
            ChangeGen::Group {
                n,
                renamed,
                members,
            } => {
                let refs = members.iter().map(|m| self.reference(m)).collect();
                let g = self.group(*n, *renamed, refs);
                self.groups.insert(*n, g.clone());
                vec![Change::Group(g)]
            }
            ChangeGen::GroupMembers { n, added, removed } => {
                let added: Vec<MemberRef> = added.iter().map(|m| self.reference(m)).collect();
                let removed: Vec<MemberRef> = removed.iter().map(|m| self.reference(m)).collect();
                if let Some(g) = self.groups.get_mut(n) {
                    if let Members::Full(list) = &mut g.members {
                        list.retain(|m| !removed.contains(m));
                        list.extend(added.iter().cloned());
                    }
                }
                vec![Change::GroupMembers {
                    key: format!("g{n}").into(),
                    added,
                    removed,
                }]
            }
            ChangeGen::DeleteGroup { n, say_kind } => match self.groups.remove(n) {
                Some(g) => vec![Change::Deleted {
                    key: g.key,
                    kind: say_kind.then_some(Kind::Group),
                }],
                None => vec![],
            },
        }
    }

    fn full(&self) -> Vec<Change> {
        self.users
            .values()
            .cloned()
            .map(Change::User)
            .chain(self.groups.values().cloned().map(Change::Group))
            .collect()
    }
}

fn batch_of(changes: &[Change]) -> Batch {
    let mut b = Batch::new();
    for c in changes {
        b.push(c.clone());
    }
    b
}

struct Ctx<'a> {
    app: &'a App,
    tenant: TenantId,
    source: String,
    owner: String,
    clock: Cell<u32>,
    ids: Cell<u64>,
}

impl Ctx<'_> {
    fn now(&self) -> Timestamp {
        Timestamp::parse(&format!(
            "2026-01-{:02}T00:00:00.000000Z",
            1 + self.clock.get()
        ))
        .expect("a day in January")
    }

    /// Plans a batch, with every link and the whole directory, or with the
    /// batch's scope. Ids are issued from the same counter position, so
    /// both plans name new resources alike.
    async fn plan(
        &self,
        changes: &[Change],
        outcome: &ReadOutcome,
        expire: bool,
        scoped: bool,
    ) -> Result<Plan, TestCaseError> {
        let store = &self.app.store();
        let mut batch = batch_of(changes);
        let (links, before, totals) = if scoped {
            let s = store
                .sync_scope(&self.source, self.tenant, &plan::scope_keys(&batch))
                .await
                .map_err(|e| TestCaseError::fail(format!("sync_scope: {e}")))?;
            // Counted by the database, as a run that removes something does
            // (measured here whatever the plan removes, to compare them).
            let totals = store
                .link_totals(&self.source, self.tenant)
                .await
                .map_err(|e| TestCaseError::fail(format!("link_totals: {e}")))?;
            (s.links, s.directory, totals)
        } else {
            let links = store
                .sync_links(&self.source, self.tenant)
                .await
                .map_err(|e| TestCaseError::fail(format!("sync_links: {e}")))?;
            let dir = store
                .directory(self.tenant)
                .await
                .map_err(|e| TestCaseError::fail(format!("directory: {e}")))?;
            let totals = plan::totals(&links, &dir);
            (links, dir, totals)
        };
        let first = self.ids.get();
        let next = Cell::new(first);
        let new_id = || {
            next.set(next.get() + 1);
            format!("00000000-0000-4000-8000-{:012}", next.get())
        };
        let now = self.now();
        // Expired: every user missing since before now is past its grace.
        let delete_before = if expire {
            Some(now)
        } else {
            Timestamp::parse("2000-01-01T00:00:00.000000Z")
        };
        let mut p = plan::plan(
            &mut batch,
            outcome,
            &PlanInput {
                source: &self.source,
                tenant: self.tenant,
                links: &links,
                before: &before,
                now,
                delete_before,
                new_id: &new_id,
            },
        );
        p.measure(&totals);
        if !scoped {
            self.ids.set(next.get());
        }
        Ok(p)
    }

    async fn apply(&self, p: Plan, complete: bool) -> Result<(), TestCaseError> {
        let now = self.now();
        self.app
            .apply_sync(
                self.tenant,
                &self.source,
                p,
                CursorUpdate {
                    lease_owner: &self.owner,
                    run_id: "proptest",
                    cursor: Some("c"),
                    full_at: complete.then_some(now),
                    release_other_tenants: false,
                },
            )
            .await
            .map_err(|e| TestCaseError::fail(format!("apply_sync: {e}")))?;
        self.clock.set(self.clock.get() + 1);
        Ok(())
    }
}

#[derive(Default)]
struct Stats {
    cases: Cell<u64>,
    compared: Cell<u64>,
    scope_links: Cell<u64>,
    all_links: Cell<u64>,
    grace_deletes: Cell<u64>,
    member_changes: Cell<u64>,
    transfers_or_reclaims: Cell<u64>,
}

async fn run_case(app: &App, steps: &[Step], stats: &Stats) -> Result<(), TestCaseError> {
    let name = TenantName::parse(&unique("scope").to_lowercase().replace('_', "-"))
        .map_err(|e| TestCaseError::fail(format!("tenant name: {e}")))?;
    let tenant = app
        .store()
        .create_tenant(&name, "2026-01-01T00:00:00.000000Z")
        .await
        .map_err(|e| TestCaseError::fail(format!("create_tenant: {e}")))?;
    let ctx = Ctx {
        app,
        tenant: tenant.id,
        source: format!("src-{}", ResourceId::generate().as_str()),
        owner: "proptest".into(),
        clock: Cell::new(0),
        ids: Cell::new(stats.cases.get() * 1_000_000),
    };
    let took = app
        .store()
        .acquire_sync_lease(
            &ctx.source,
            &ctx.owner,
            Timestamp::parse("2026-01-01T00:00:00.000000Z").expect("start"),
            Timestamp::parse("9999-12-31T00:00:00.000000Z").expect("far"),
        )
        .await
        .map_err(|e| TestCaseError::fail(format!("lease: {e}")))?;
    prop_assert!(took, "lease not taken");
    let mut model = Model::default();
    // Every case starts from a complete read of a small directory.
    for n in 0..4 {
        model.change(&ChangeGen::User {
            n,
            name: n,
            dn: n,
            base: n % 2,
            active: true,
            mail: false,
            rekey: false,
        });
    }
    let first = model.group(
        0,
        false,
        vec![MemberRef::Locator(dn(0)), MemberRef::Locator(dn(1))],
    );
    model.groups.insert(0, first);
    let complete = ReadOutcome {
        complete: true,
        cursor: Some("c".into()),
        bases: BASES.iter().map(|b| b.to_string()).collect(),
    };
    let incremental = ReadOutcome {
        complete: false,
        cursor: Some("c".into()),
        bases: BASES.iter().map(|b| b.to_string()).collect(),
    };
    let p = ctx.plan(&model.full(), &complete, false, false).await?;
    ctx.apply(p, true).await?;
    for step in steps {
        match step {
            Step::Full { expire } => {
                let p = ctx.plan(&model.full(), &complete, *expire, false).await?;
                ctx.apply(p, true).await?;
            }
            Step::Incremental { changes, expire } => {
                let reported: Vec<Change> = changes.iter().flat_map(|c| model.change(c)).collect();
                // The scoped plan first: only the oracle's ids are kept.
                let scoped = ctx.plan(&reported, &incremental, *expire, true).await?;
                let oracle = ctx.plan(&reported, &incremental, *expire, false).await?;
                let (a, b) = (format!("{oracle:#?}"), format!("{scoped:#?}"));
                prop_assert!(
                    a == b,
                    "the scoped plan differs from the full one\nbatch: {reported:#?}\nfull: {a}\nscoped: {b}"
                );
                prop_assert_eq!(oracle.counts(), scoped.counts());
                stats.compared.set(stats.compared.get() + 1);
                let all = app
                    .store()
                    .sync_links(&ctx.source, ctx.tenant)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let scope = app
                    .store()
                    .sync_scope(
                        &ctx.source,
                        ctx.tenant,
                        &plan::scope_keys(&batch_of(&reported)),
                    )
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                stats
                    .all_links
                    .set(stats.all_links.get() + all.len() as u64);
                stats
                    .scope_links
                    .set(stats.scope_links.get() + scope.links.len() as u64);
                let c = oracle.counts();
                stats
                    .grace_deletes
                    .set(stats.grace_deletes.get() + c.users_deleted);
                stats
                    .member_changes
                    .set(stats.member_changes.get() + c.members_added + c.members_removed);
                if oracle
                    .diff(&scope.directory)
                    .iter()
                    .any(|l| l.starts_with("- user"))
                {
                    stats
                        .transfers_or_reclaims
                        .set(stats.transfers_or_reclaims.get() + 1);
                }
                ctx.apply(oracle, false).await?;
            }
        }
    }
    stats.cases.set(stats.cases.get() + 1);
    Ok(())
}

fn run(backend: Backend) {
    let rt = crate::support::property_runtime();
    let mut runner = crate::support::property_runner(CASES);
    let cases = runner.config().cases;
    let url = rt.block_on(fresh_database(backend));
    let store = rt
        .block_on(Store::connect(&url))
        .unwrap_or_else(|e| panic!("store at {url}: {e}"));
    let app = App::new(store);
    let stats = Stats::default();
    let outcome = runner.run(&case(), |c| rt.block_on(run_case(&app, &c, &stats)));
    drop(app);
    rt.block_on(drop_database(backend, &url));
    crate::support::expect_property(outcome, "the scoped plan differs from the full one");
    println!(
        "sync_scope {backend:?}: {} cases, {} incremental batches planned both ways; the scopes held {} links of {} ({} grace-period or reclaim deletes, {} member changes, {} batches deleting a user)",
        stats.cases.get(),
        stats.compared.get(),
        stats.scope_links.get(),
        stats.all_links.get(),
        stats.grace_deletes.get(),
        stats.member_changes.get(),
        stats.transfers_or_reclaims.get(),
    );
    // The test means something only if the interesting paths ran.
    assert!(
        stats.compared.get() >= u64::from(cases),
        "too few batches compared"
    );
    assert!(
        stats.member_changes.get() > 0,
        "no member change was planned"
    );
    assert!(stats.grace_deletes.get() > 0, "no user was deleted");
}

#[test]
fn sqlite() {
    run(Backend::Sqlite)
}

#[test]
fn postgres() {
    run(Backend::Postgres)
}
