//! Planner and guard tests on synthetic batches (no IO). Source behaviour
//! against real slapd, Samba and a Graph stand-in is in `tests/`.

use std::cell::Cell;

use super::plan::{normalize_locator, plan, Plan, PlanInput, UserOp};
use super::*;
use crate::domain::{TenantId, Timestamp};
use crate::store::{Directory, DirectoryUser, SyncLink};
use crate::sync::*;

fn user(key: &str, name: &str, dn: &str) -> ExternalUser {
    ExternalUser {
        key: key.into(),
        locator: Some(dn.into()),
        base: "ou=people,dc=x".into(),
        user_name: name.into(),
        external_id: Some(key.into()),
        display_name: None,
        given_name: None,
        family_name: None,
        emails: vec![],
        active: true,
    }
}

fn group(key: &str, name: &str, members: &[&str]) -> ExternalGroup {
    ExternalGroup {
        key: key.into(),
        locator: Some(format!("cn={name},ou=groups,dc=x")),
        base: "ou=groups,dc=x".into(),
        display_name: name.into(),
        external_id: None,
        members: Members::Full(
            members
                .iter()
                .map(|m| MemberRef::Locator(m.to_string()))
                .collect(),
        ),
    }
}

struct World {
    tenant: TenantId,
    links: Vec<SyncLink>,
    dir: Directory,
    next: Cell<u32>,
}

impl World {
    fn new() -> Self {
        World {
            tenant: TenantId::new(),
            links: vec![],
            dir: Directory::default(),
            next: Cell::new(0),
        }
    }

    fn plan(&self, mut batch: Batch, complete: bool, now: &str, delete_before: &str) -> Plan {
        let new_id = || {
            self.next.set(self.next.get() + 1);
            format!("id{}", self.next.get())
        };
        let mut p = plan(
            &mut batch,
            &ReadOutcome {
                complete,
                cursor: None,
                bases: vec!["ou=people,dc=x".into(), "ou=groups,dc=x".into()],
            },
            &PlanInput {
                source: "s",
                tenant: self.tenant,
                links: &self.links,
                before: &self.dir,
                now: Timestamp::parse(now).expect("a test timestamp"),
                delete_before: Timestamp::parse(delete_before),
                new_id: &new_id,
            },
        );
        // As the run does: the world holds every link, so it counts them.
        p.measure(&super::plan::totals(&self.links, &self.dir));
        p
    }

    /// What `App::apply_sync` does, on the in-memory world.
    fn apply(&mut self, plan: &Plan) {
        self.dir = plan.simulate(&self.dir);
        let user_links: Vec<SyncLink> = plan
            .users
            .iter()
            .filter_map(|op| op.link("s", self.tenant))
            .collect();
        for l in plan.link_upserts.iter().chain(&user_links) {
            self.links
                .retain(|x| !(x.kind == l.kind && x.external_key == l.external_key));
            self.links.push(l.clone());
        }
        for (kind, key) in &plan.link_deletes {
            self.links
                .retain(|x| !(x.kind == *kind && &x.external_key == key));
        }
    }

    fn members(&self, group_name: &str) -> Vec<String> {
        let gid = &self
            .dir
            .groups
            .iter()
            .find(|g| g.display_name == group_name)
            .expect("group exists")
            .id;
        let mut names: Vec<String> = self
            .dir
            .edges
            .iter()
            .filter(|e| &e.group_id == gid)
            .map(|e| {
                self.dir
                    .users
                    .iter()
                    .map(|u| (&u.id, &u.user_name))
                    .chain(self.dir.groups.iter().map(|g| (&g.id, &g.display_name)))
                    .find(|(id, _)| **id == e.member_id)
                    .map(|(_, n)| n.clone())
                    .unwrap_or_default()
            })
            .collect();
        names.sort();
        names
    }

    fn user(&self, name: &str) -> &DirectoryUser {
        self.dir
            .users
            .iter()
            .find(|u| u.user_name == name)
            .expect("user exists")
    }
}

fn full_batch(users: &[ExternalUser], groups: &[ExternalGroup]) -> Batch {
    let mut b = Batch::new();
    for u in users {
        b.push(Change::User(u.clone()));
    }
    for g in groups {
        b.push(Change::Group(g.clone()));
    }
    b
}

const T0: &str = "2026-01-01T00:00:00.000000Z";
const T1: &str = "2026-01-02T00:00:00.000000Z";
const T9: &str = "2026-01-09T00:00:00.000000Z";

#[test]
fn first_sync_creates_and_resolves_member_dns_and_nested_groups() {
    let mut w = World::new();
    let users = [
        user("u1", "ann", "uid=ann,ou=people,dc=x"),
        user("u2", "bob", "UID=Bob, ou=People,dc=X"),
    ];
    let groups = [
        group(
            "g1",
            "eng",
            &["uid=ANN,ou=people,dc=x", "cn=ops,ou=groups,dc=x"],
        ),
        group(
            "g2",
            "ops",
            &["uid=bob,ou=people,dc=x", "cn=eng,ou=groups,dc=x"],
        ),
    ];
    let p = w.plan(full_batch(&users, &groups), true, T0, "");
    let c = p.counts();
    assert_eq!(
        (c.users_created, c.groups_created, c.members_added),
        (2, 2, 4)
    );
    assert!(p.skipped.is_empty(), "{:?}", p.skipped);
    w.apply(&p);
    assert_eq!(w.members("eng"), ["ann", "ops"]);
    assert_eq!(w.members("ops"), ["bob", "eng"]);
    // The same directory again changes nothing.
    let again = w.plan(full_batch(&users, &groups), true, T1, "");
    assert!(again.is_empty(), "{:?}", again.diff(&w.dir));
}

#[test]
fn a_rename_and_move_is_an_update_of_the_same_resource() {
    let mut w = World::new();
    let ann = user("u1", "ann", "uid=ann,ou=people,dc=x");
    let eng = group("g1", "eng", &["uid=ann,ou=people,dc=x"]);
    let p = w.plan(full_batch(std::slice::from_ref(&ann), &[eng]), true, T0, "");
    w.apply(&p);
    let id = w.user("ann").id.clone();
    let mut moved = ann.clone();
    moved.user_name = "anne".into();
    moved.locator = Some("uid=anne,ou=staff,ou=people,dc=x".into());
    let eng = group("g1", "eng", &["uid=anne,ou=staff,ou=people,dc=x"]);
    let p = w.plan(full_batch(&[moved], &[eng]), true, T1, "");
    let c = p.counts();
    assert_eq!(
        (c.users_created, c.users_updated, c.users_deleted),
        (0, 1, 0)
    );
    assert_eq!(
        (c.members_added, c.members_removed),
        (0, 0),
        "{:?}",
        p.diff(&w.dir)
    );
    w.apply(&p);
    assert_eq!(w.user("anne").id, id);
    assert_eq!(w.members("eng"), ["anne"]);
}

#[test]
fn vanished_users_are_deactivated_then_deleted_after_the_grace_period() {
    let mut w = World::new();
    let users = [
        user("u1", "ann", "uid=ann,ou=people,dc=x"),
        user("u2", "bob", "uid=bob,ou=people,dc=x"),
    ];
    let eng = group(
        "g1",
        "eng",
        &["uid=ann,ou=people,dc=x", "uid=bob,ou=people,dc=x"],
    );
    w.apply(&w.plan(full_batch(&users, std::slice::from_ref(&eng)), true, T0, ""));
    let eng2 = group("g1", "eng", &["uid=ann,ou=people,dc=x"]);
    // Bob is gone: deactivated at once, membership kept for a comeback.
    let p = w.plan(
        full_batch(&users[..1], std::slice::from_ref(&eng2)),
        true,
        T1,
        T0,
    );
    let c = p.counts();
    assert_eq!((c.users_deactivated, c.users_deleted), (1, 0));
    w.apply(&p);
    assert!(!w.user("bob").active);
    // Within the grace period, nothing more happens.
    let p = w.plan(
        full_batch(&users[..1], std::slice::from_ref(&eng2)),
        true,
        T1,
        T0,
    );
    assert_eq!(p.counts().users_deleted, 0);
    // After it (missing since T1, deleting what went missing before T9).
    let p = w.plan(
        full_batch(&users[..1], std::slice::from_ref(&eng2)),
        true,
        T9,
        T9,
    );
    assert_eq!(p.counts().users_deleted, 1);
    w.apply(&p);
    assert!(w.dir.users.iter().all(|u| u.user_name != "bob"));
    assert_eq!(w.members("eng"), ["ann"]);
}

#[test]
fn a_returning_user_is_reactivated() {
    let mut w = World::new();
    let users = [
        user("u1", "ann", "uid=ann,ou=people,dc=x"),
        user("u2", "bob", "uid=bob,ou=people,dc=x"),
    ];
    w.apply(&w.plan(full_batch(&users, &[]), true, T0, ""));
    w.apply(&w.plan(full_batch(&users[..1], &[]), true, T1, ""));
    assert!(!w.user("bob").active);
    let p = w.plan(full_batch(&users, &[]), true, T9, "");
    assert_eq!(p.counts().users_reactivated, 1);
    w.apply(&p);
    assert!(w.user("bob").active);
    assert!(w.links.iter().all(|l| l.missing_since.is_none()));
}

#[test]
fn an_incremental_read_removes_only_what_it_reports_deleted() {
    let mut w = World::new();
    let users = [
        user("u1", "ann", "uid=ann,ou=people,dc=x"),
        user("u2", "bob", "uid=bob,ou=people,dc=x"),
        user("u3", "cy", "uid=cy,ou=people,dc=x"),
    ];
    w.apply(&w.plan(full_batch(&users, &[]), true, T0, ""));
    let mut b = Batch::new();
    b.push(Change::Deleted {
        key: "u3".into(),
        kind: None,
    });
    let p = w.plan(b, false, T1, "");
    let c = p.counts();
    assert_eq!(
        (c.users_deactivated, c.users_deleted, c.users_updated),
        (1, 0, 0)
    );
    if let [UserOp::Deactivate { user_name, .. }] = p.users.as_slice() {
        assert_eq!(user_name, "cy");
    } else {
        panic!("{:?}", p.users);
    }
}

#[test]
fn member_deltas_accumulate_across_pages() {
    let mut w = World::new();
    let users = [
        user("u1", "ann", "uid=ann,ou=people,dc=x"),
        user("u2", "bob", "uid=bob,ou=people,dc=x"),
    ];
    let mut g = group("g1", "eng", &[]);
    g.members = Members::Delta {
        added: vec![MemberRef::Key("u1".into())],
        removed: vec![],
    };
    let mut b = full_batch(&users, &[g]);
    b.push(Change::GroupMembers {
        key: "g1".into(),
        added: vec![MemberRef::Key("u2".into())],
        removed: vec![],
    });
    w.apply(&w.plan(b, true, T0, ""));
    assert_eq!(w.members("eng"), ["ann", "bob"]);
    let mut b = Batch::new();
    b.push(Change::GroupMembers {
        key: "g1".into(),
        added: vec![],
        removed: vec![MemberRef::Key("u1".into())],
    });
    let p = w.plan(b, false, T1, "");
    assert_eq!(p.counts().members_removed, 1);
    w.apply(&p);
    assert_eq!(w.members("eng"), ["bob"]);
}

#[test]
fn the_guard_holds_an_emptied_base_and_mass_deletes() {
    let mut w = World::new();
    let users: Vec<ExternalUser> = (0..20)
        .map(|i| {
            user(
                &format!("u{i}"),
                &format!("n{i}"),
                &format!("uid=n{i},ou=people,dc=x"),
            )
        })
        .collect();
    w.apply(&w.plan(full_batch(&users, &[]), true, T0, ""));
    let guard = GuardConfig {
        max_deletes: 5,
        max_delete_percent: 50.0,
    };
    // Empty base: held whatever the thresholds.
    let p = w.plan(Batch::new(), true, T1, "");
    let lenient = GuardConfig {
        max_deletes: 1000,
        max_delete_percent: 100.0,
    };
    let reason = guard::check(&lenient, &p, &p.counts()).expect("held");
    assert!(reason.contains("ou=people,dc=x"), "{reason}");
    // Six of twenty: over the count.
    let p = w.plan(full_batch(&users[6..], &[]), true, T1, "");
    let reason = guard::check(&guard, &p, &p.counts()).expect("held");
    assert!(reason.contains("6 user"), "{reason}");
    // Two of twenty: under both.
    let p = w.plan(full_batch(&users[2..], &[]), true, T1, "");
    assert_eq!(guard::check(&guard, &p, &p.counts()), None);
    // A share over the percentage.
    let strict = GuardConfig {
        max_deletes: 100,
        max_delete_percent: 5.0,
    };
    let reason = guard::check(&strict, &p, &p.counts()).expect("held");
    assert!(reason.contains("10.0%"), "{reason}");
}

#[test]
fn dns_compare_without_case_or_spacing() {
    assert_eq!(
        normalize_locator(" CN=Ann Lee , OU=People,DC=x "),
        "cn=ann lee,ou=people,dc=x"
    );
}

#[test]
fn source_config_errors_name_the_source_and_key() {
    let t: toml::Table = toml::from_str(
        "name = \"corp\"\ntenant = \"acme\"\nkind = \"ldap\"\nschedule = \"soon\"\n",
    )
    .expect("toml");
    let errors = parse_sources(&[t]).expect_err("bad schedule");
    let msg = errors[0].to_string();
    assert!(msg.contains("corp") && msg.contains("schedule"), "{msg}");
    let t: toml::Table =
        toml::from_str("name = \"x\"\ntenant = \"acme\"\nkind = \"nis\"\n").expect("toml");
    let msg = parse_sources(&[t]).expect_err("bad kind")[0].to_string();
    assert!(msg.contains("unknown kind 'nis'"), "{msg}");
    let t: toml::Table = toml::from_str("name = \"x\"\nkind = \"ldap\"\n").expect("toml");
    let msg = parse_sources(&[t]).expect_err("no tenant")[0].to_string();
    assert!(msg.contains("'tenant'"), "{msg}");
}

#[test]
fn member_lists_that_come_back_empty_are_held() {
    let mut w = World::new();
    let users: Vec<ExternalUser> = (0..10)
        .map(|i| {
            user(
                &format!("u{i}"),
                &format!("n{i}"),
                &format!("uid=n{i},ou=people,dc=x"),
            )
        })
        .collect();
    let dns: Vec<String> = (0..10)
        .map(|i| format!("uid=n{i},ou=people,dc=x"))
        .collect();
    let refs: Vec<&str> = dns.iter().map(String::as_str).collect();
    let groups: Vec<ExternalGroup> = (0..4)
        .map(|g| group(&format!("g{g}"), &format!("team{g}"), &refs))
        .collect();
    w.apply(&w.plan(full_batch(&users, &groups), true, T0, ""));
    // The bind account lost read access to `member`: every list is empty.
    let blind: Vec<ExternalGroup> = (0..4)
        .map(|g| group(&format!("g{g}"), &format!("team{g}"), &[]))
        .collect();
    let p = w.plan(full_batch(&users, &blind), true, T1, "");
    assert_eq!((p.emptied_groups, p.linked_edges), (4, 40));
    let lenient_users = GuardConfig {
        max_deletes: 5,
        max_delete_percent: 50.0,
    };
    let reason = guard::check(&lenient_users, &p, &p.counts()).expect("held");
    assert!(reason.contains("4 group"), "{reason}");
    assert!(reason.contains("40 membership removals"), "{reason}");
    // Moving a few people between groups is not a mass loss.
    let mut moved = groups.clone();
    moved[0] = group("g0", "team0", &refs[3..]);
    let p = w.plan(full_batch(&users, &moved), true, T1, "");
    assert_eq!(p.counts().members_removed, 3);
    assert_eq!(guard::check(&lenient_users, &p, &p.counts()), None);
}

#[test]
fn memberships_lost_with_deleted_groups_count() {
    let mut w = World::new();
    let users: Vec<ExternalUser> = (0..10)
        .map(|i| {
            user(
                &format!("u{i}"),
                &format!("n{i}"),
                &format!("uid=n{i},ou=people,dc=x"),
            )
        })
        .collect();
    let dns: Vec<String> = (0..10)
        .map(|i| format!("uid=n{i},ou=people,dc=x"))
        .collect();
    let refs: Vec<&str> = dns.iter().map(String::as_str).collect();
    let mut groups: Vec<ExternalGroup> = (0..19)
        .map(|g| group(&format!("g{g}"), &format!("team{g}"), &refs[..1]))
        .collect();
    // One big group, nested in team0.
    groups.push(group("big", "big", &refs));
    groups[0] = group("g0", "team0", &["cn=big,ou=groups,dc=x", refs[0]]);
    w.apply(&w.plan(full_batch(&users, &groups), true, T0, ""));
    // The big group is deleted: 1 of 20 groups (5%), but 10 memberships
    // and its place in team0 go with it.
    let p = w.plan(full_batch(&users, &groups[..19]), true, T1, "");
    let c = p.counts();
    assert_eq!((c.groups_deleted, c.members_removed), (1, 11), "{c:?}");
    assert_eq!(p.members_lost_with_groups, 10 + 1);
    let guard = GuardConfig {
        max_deletes: 5,
        max_delete_percent: 50.0,
    };
    let reason = guard::check(&guard, &p, &c).expect("held");
    assert!(reason.contains("11 membership removals"), "{reason}");
    assert!(!reason.contains("group deletions"), "{reason}");
}

#[test]
fn an_incremental_run_that_empties_a_base_is_held() {
    let mut w = World::new();
    let users: Vec<ExternalUser> = (0..4)
        .map(|i| {
            user(
                &format!("u{i}"),
                &format!("n{i}"),
                &format!("uid=n{i},ou=people,dc=x"),
            )
        })
        .collect();
    w.apply(&w.plan(full_batch(&users, &[]), true, T0, ""));
    let mut b = Batch::new();
    for i in 0..4 {
        b.push(Change::Deleted {
            key: format!("u{i}").into(),
            kind: None,
        });
    }
    let p = w.plan(b, false, T1, "");
    assert_eq!(p.emptied_bases, ["ou=people,dc=x"]);
    let open = GuardConfig {
        max_deletes: 1000,
        max_delete_percent: 100.1,
    };
    let reason = guard::check(&open, &p, &p.counts()).expect("held");
    assert!(
        reason.contains("'ou=people,dc=x' would hold no active users"),
        "{reason}"
    );
    // Three of four is not an emptied base.
    let mut b = Batch::new();
    for i in 0..3 {
        b.push(Change::Deleted {
            key: format!("u{i}").into(),
            kind: None,
        });
    }
    let p = w.plan(b, false, T1, "");
    assert!(p.emptied_bases.is_empty(), "{:?}", p.emptied_bases);
    assert_eq!(guard::check(&open, &p, &p.counts()), None);
}

#[test]
fn a_present_phase_keeps_its_base_filled() {
    let mut w = World::new();
    let users = [
        user("u1", "ann", "uid=ann,ou=people,dc=x"),
        user("u2", "bob", "uid=bob,ou=people,dc=x"),
    ];
    w.apply(&w.plan(full_batch(&users, &[]), true, T0, ""));
    let mut b = Batch::new();
    b.push(Change::Present { key: "u1".into() });
    b.push(Change::Present { key: "u2".into() });
    let p = w.plan(b, true, T1, "");
    assert!(p.emptied_bases.is_empty(), "{:?}", p.emptied_bases);
    assert!(p.is_empty(), "{:?}", p.diff(&w.dir));
}

#[test]
fn an_incremental_re_creation_replaces_the_waiting_namesake() {
    let mut w = World::new();
    let users = [
        user("u1", "ann", "uid=ann,ou=people,dc=x"),
        user("u2", "bob", "uid=bob,ou=people,dc=x"),
    ];
    w.apply(&w.plan(full_batch(&users, &[]), true, T0, ""));
    w.apply(&w.plan(full_batch(&users[..1], &[]), true, T1, ""));
    assert!(!w.user("bob").active);
    let mut b = Batch::new();
    b.push(Change::User(user(
        "u2-new",
        "Bob",
        "uid=bob,ou=people,dc=x",
    )));
    let p = w.plan(b, false, T1, "");
    let c = p.counts();
    assert_eq!(
        (c.users_created, c.users_deleted),
        (1, 1),
        "{:?}",
        p.diff(&w.dir)
    );
    w.apply(&p);
    assert!(w.user("Bob").active);
    assert!(w.links.iter().all(|l| l.external_key != "u2"));
}
