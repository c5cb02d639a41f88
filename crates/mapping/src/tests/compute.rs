//! Matching, conflicts, default role, inactive users and nesting, on a small inline mapping.
use super::*;

const CAT: &str = "\
catalog: {id: c}
limits: {combinable_roles: true, max_profiles_per_role_per_user: 1}
permissions:
  - {id: a, description: A}
  - {id: b, description: B}
  - {id: x, description: X, requires: [b]}
  - {id: y, description: Y, requires: [x]}
roles:
  - id: r
    core: [a]
    configurable:
      - {permission: b, default: off}
      - {permission: x, default: on}
      - {permission: y, default: on}
  - {id: s, core: [a]}
profiles:
  - {id: p_on, role: r, toggles: {b: on}}
  - {id: p_off, role: r, toggles: {y: off}}
";

fn run(tenant_yaml: &str, users: &[UserFact]) -> TenantResult {
    let set = validate_sources(&[
        ("m/catalogs/c.yaml", CAT),
        ("m/tenants/t.yaml", tenant_yaml),
    ])
    .unwrap();
    compute_tenant(set.tenant(&TenantName::from("t")).unwrap(), users)
}

/// `(tenant rules, user groups, expected held targets)`.
fn check(rules: &str, groups: Vec<GroupFact>, expected: &[&str]) {
    let r = run(
        &format!("catalog: c\nrules:\n{rules}"),
        &[user("u", groups)],
    );
    assert_eq!(
        held(&r, "u"),
        expected,
        "{}",
        explain(&r, "u", None).unwrap()
    );
}

#[test]
fn priority_then_rule_order_decide_conflicts() {
    let rules = "  - {match: {display_name: G1}, assign: {profiles: [p_off]}, priority: 5}\n  - {match: {display_name: G2}, assign: {profiles: [p_on]}, priority: 10}\n";
    check(rules, vec![group("G1"), group("G2")], &["p_on"]);
    let tie = "  - {match: {display_name: G1}, assign: {profiles: [p_off]}}\n  - {match: {display_name: G2}, assign: {profiles: [p_on]}}\n";
    check(tie, vec![group("G2"), group("G1")], &["p_off"]);
}

#[test]
fn requires_are_dropped_to_a_fixed_point() {
    // r: b off, so x (requires b) is dropped, then y (requires x) too.
    let r = run(
        "catalog: c\nrules:\n  - {match: {display_name: G}, assign: {roles: [r]}}\n",
        &[user("u", vec![group("G")])],
    );
    check_perms(&r, "u", &["a"], &["b", "x", "y"]);
    let dropped: Vec<&str> = r
        .user("u")
        .unwrap()
        .dropped
        .iter()
        .map(|d| d.permission.as_str())
        .collect();
    assert_eq!(dropped, ["x", "y"]);
    let r = run(
        "catalog: c\nrules:\n  - {match: {display_name: G}, assign: {profiles: [p_on]}}\n",
        &[user("u", vec![group("G")])],
    );
    check_perms(&r, "u", &["a", "b", "x", "y"], &[]);
}

#[test]
fn matchers() {
    let by = |g: GroupFact, m: &str| {
        check(
            &format!("  - {{match: {m}, assign: {{roles: [s]}}}}\n"),
            vec![g],
            &["s"],
        )
    };
    by(
        GroupFact {
            external_id: Some("E-1".into()),
            ..group("x")
        },
        "{external_id: E-1}",
    );
    by(
        GroupFact {
            dn: Some("CN=Ops, OU=G,DC=ex".into()),
            ..group("x")
        },
        "{dn: \"cn=ops,ou=g,dc=ex\"}",
    );
    by(group("team-ops-eu"), "{name_regex: \"ops-(eu|us)$\"}");
    by(group("OPS"), "{display_name: ops}");
    by(
        GroupFact {
            source: Some("okta".into()),
            ..group("O")
        },
        "{display_name: O, source: okta}",
    );
    // All keys must match the same group.
    check(
        "  - {match: {display_name: O, source: okta}, assign: {roles: [s]}}\n",
        vec![group("O")],
        &[],
    );
    check(
        "  - {match: {external_id: E}, assign: {roles: [s]}}\n",
        vec![group("E")],
        &[],
    );
}

#[test]
fn default_role_inactive_and_no_match() {
    let t = "catalog: c\ndefault_role: s\nrules:\n  - {match: {display_name: G}, assign: {profiles: [p_on]}}\n";
    let mut gone = user("gone", vec![group("G")]);
    gone.active = false;
    let r = run(t, &[user("u", vec![group("G")]), user("v", vec![]), gone]);
    assert_eq!(held(&r, "u"), ["p_on", "s"]);
    assert_eq!(held(&r, "v"), ["s"]);
    assert!(matches!(
        r.user("v").unwrap().assignments[0].source,
        Source::DefaultRole { .. }
    ));
    check_perms(&r, "gone", &[], &["a"]);
    let why = explain(&r, "gone", Some(&PermissionId::from("a"))).unwrap();
    assert!(matches!(
        why.permissions[0].why_not[..],
        [WhyNot::InactiveUser]
    ));
    let r = run("catalog: c\nrules: []\n", &[user("v", vec![group("G")])]);
    let why = explain(&r, "v", Some(&PermissionId::from("a"))).unwrap();
    assert!(matches!(
        why.permissions[0].why_not[..],
        [WhyNot::NoRuleMatched]
    ));
    let why = explain(&r, "v", Some(&PermissionId::from("zzz"))).unwrap();
    assert!(matches!(
        why.permissions[0].why_not[..],
        [WhyNot::NotInCatalog]
    ));
    assert!(explain(&r, "nobody", None).is_err());
}

#[test]
fn nested_group_chain_is_explained() {
    let nested = GroupFact {
        via: vec!["Direct".into(), "Middle".into()],
        ..group("Leaf")
    };
    let r = run(
        "catalog: c\nrules:\n  - {id: leafy, match: {display_name: Leaf}, assign: {roles: [s]}}\n",
        &[user("u", vec![group("Direct"), nested])],
    );
    let why = explain(&r, "u", Some(&PermissionId::from("a"))).unwrap();
    let text = why.to_string();
    assert!(text.contains("core permission of role 's' <- rule 'leafy' (m/tenants/t.yaml:3:6, priority 0) <- group 'Leaf' (nested: 'Direct' > 'Middle' > 'Leaf')"), "{text}");
    let json = serde_json::to_value(&why).unwrap();
    assert_eq!(
        json["permissions"][0]["grants"][0]["source"]["group"]["via"][1],
        "Middle"
    );
}

#[test]
fn max_profiles_per_user_keeps_the_first_n() {
    let cat = CAT.replace(
        "max_profiles_per_role_per_user: 1",
        "max_profiles_per_user: 1",
    );
    let t = "catalog: c\nrules:\n  - {match: {display_name: G}, assign: {roles: [s, r]}}\n";
    let set =
        validate_sources(&[("m/catalogs/c.yaml", cat.as_str()), ("m/tenants/t.yaml", t)]).unwrap();
    let r = compute_tenant(
        set.tenant(&TenantName::from("t")).unwrap(),
        &[user("u", vec![group("G")])],
    );
    assert_eq!(held(&r, "u"), ["s"]);
    let lost = &r.refusals()[0].lost;
    assert_eq!(
        lost.reason,
        LossReason::ProfilesPerUser {
            max: 1,
            kept: vec![Target::Role(RoleId::from("s"))]
        }
    );
    assert!(explain(&r, "u", None)
        .unwrap()
        .to_string()
        .contains("role 'r' from rule #0"));
}

/// Validates `cat` as catalog `c` and `tenant_yaml` as tenant `t`, then computes `users`.
fn run_cat(cat: &str, tenant_yaml: &str, users: &[UserFact]) -> TenantResult {
    let set = validate_sources(&[
        ("m/catalogs/c.yaml", cat),
        ("m/tenants/t.yaml", tenant_yaml),
    ])
    .unwrap_or_else(|e| panic!("{e:?}"));
    compute_tenant(set.tenant(&TenantName::from("t")).unwrap(), users)
}

/// The exact effective permissions of `user`.
fn perms(r: &TenantResult, user: &str) -> Vec<String> {
    r.user(user)
        .expect("user")
        .permissions
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// The explanation of one permission, as printed, without its header lines.
fn why(r: &TenantResult, user: &str, p: &str) -> String {
    let text = explain(r, user, Some(&PermissionId::from(p)))
        .unwrap()
        .to_string();
    let at = text.find("permission '").expect("permission line");
    text[at..].to_owned()
}

const IMPLIES: &str = "\
catalog: {id: c}
permissions:
  - {id: a, description: A, implies: [b]}
  - {id: b, description: B, implies: [c]}
  - {id: c, description: C}
  - {id: d, description: D}
  - {id: e, description: E, implies: [f]}
  - {id: f, description: F, implies: [e]}
roles:
  - id: r
    core: [d]
    configurable:
      - {permission: a, default: off}
      - {permission: b, default: off}
      - {permission: e, default: off}
profiles:
  - {id: p, role: r, toggles: {a: on}}
  - {id: q, role: r, toggles: {e: on}}
";

#[test]
fn implies_is_transitive_overrides_off_and_reaches_unlisted_permissions() {
    let t = "catalog: c\nrules:\n  - {id: g, match: {display_name: G}, assign: {profiles: [p]}}\n  - {id: h, match: {display_name: H}, assign: {roles: [r]}}\n  - {id: k, match: {display_name: K}, assign: {profiles: [q]}}\n";
    let r = run_cat(
        IMPLIES,
        t,
        &[
            user("u", vec![group("G")]),
            user("v", vec![group("H")]),
            user("w", vec![group("K")]),
        ],
    );
    // a on; b is off in r but implied by a; c is not listed by r at all, implied by b.
    assert_eq!(perms(&r, "u"), ["a", "b", "c", "d"]);
    assert_eq!(
        why(&r, "u", "b"),
        "permission 'b': granted\n  implied by 'a' in profile 'p' <- rule 'g' (m/tenants/t.yaml:3:6, priority 0) <- group 'G'\n"
    );
    assert_eq!(
        why(&r, "u", "c"),
        "permission 'c': granted\n  implied by 'b' in profile 'p' <- rule 'g' (m/tenants/t.yaml:3:6, priority 0) <- group 'G'\n"
    );
    let grant = &r.user("u").unwrap().grants[&PermissionId::from("c")][0];
    assert_eq!(
        grant.state,
        PermState::Implied {
            by: PermissionId::from("b"),
            role: None
        }
    );
    // Nothing on, nothing implied.
    assert_eq!(perms(&r, "v"), ["d"]);
    // An implication cycle (e <-> f) is a closure: either one on grants both.
    assert_eq!(perms(&r, "w"), ["d", "e", "f"]);
    assert!(r.user("w").unwrap().dropped.is_empty());
}

const IMPLIES_REQUIRES: &str = "\
catalog: {id: c}
permissions:
  - {id: a, description: A, requires: [need], implies: [b]}
  - {id: b, description: B}
  - {id: need, description: Need}
  - {id: x, description: X, requires: [y], implies: [y, w]}
  - {id: y, description: Y}
  - {id: w, description: W, requires: [need]}
roles:
  - id: r
    configurable:
      - {permission: a, default: on}
      - {permission: x, default: on}
  - {id: s, core: [b]}
  - {id: t, core: [need]}
";

#[test]
fn implies_first_then_requires_and_a_dropped_permission_takes_its_implications() {
    let t = "catalog: c\nrules:\n  - {id: rr, match: {display_name: R}, assign: {roles: [r]}}\n  - {id: ss, match: {display_name: S}, assign: {roles: [s]}}\n  - {id: tt, match: {display_name: T}, assign: {roles: [t]}}\n";
    let r = run_cat(
        IMPLIES_REQUIRES,
        t,
        &[
            user("alone", vec![group("R")]),
            user("with_b", vec![group("R"), group("S")]),
            user("with_need", vec![group("R"), group("T")]),
        ],
    );
    // x requires y and implies it: the implication comes first, so x stays. a lacks `need`: dropped,
    // and b, implied by a only, goes with it. w, implied by x (which stays), lacks `need` too: an
    // implied permission is subject to its own `requires`.
    assert_eq!(perms(&r, "alone"), ["x", "y"]);
    let dropped: Vec<(&str, Vec<&str>, Vec<&str>)> = r
        .user("alone")
        .unwrap()
        .dropped
        .iter()
        .map(|d| {
            (
                d.permission.as_str(),
                d.missing.iter().map(PermissionId::as_str).collect(),
                d.implied_by.iter().map(PermissionId::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        dropped,
        [
            ("a", vec!["need"], vec![]),
            ("b", vec![], vec!["a"]),
            ("w", vec!["need"], vec![])
        ]
    );
    assert_eq!(
        why(&r, "alone", "b"),
        "permission 'b': not granted\n  - dropped: implied by 'a' which was dropped\n      granted by implied by 'a' in role 'r' <- rule 'rr' (m/tenants/t.yaml:3:6, priority 0) <- group 'R'\n"
    );
    // Unless otherwise granted: role s has b as core.
    assert_eq!(perms(&r, "with_b"), ["b", "x", "y"]);
    let b = &r.user("with_b").unwrap().grants[&PermissionId::from("b")];
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].state, PermState::Core);
    // With `need` effective, a and its implication stay.
    assert_eq!(perms(&r, "with_need"), ["a", "b", "need", "w", "x", "y"]);
}

const SCOPED: &str = "\
catalog: {id: c}
permissions:
  - {id: creds, description: Creds}
  - {id: lite, description: Lite}
  - {id: dev, description: Dev}
roles:
  - id: agent
    configurable:
      - {permission: creds, default: on, requires: [lite, dev]}
      - {permission: lite, default: on}
  - id: manager
    configurable:
      - {permission: creds, default: on, implies: [lite, dev]}
      - {permission: lite, default: off}
      - {permission: dev, default: off}
  - {id: developer, core: [dev]}
  - id: plain
    configurable:
      - {permission: creds, default: on}
";

#[test]
fn role_scoped_requires_and_implies_apply_to_their_role_only() {
    let t = "catalog: c\nrules:\n  - {id: ag, match: {display_name: AG}, assign: {roles: [agent]}}\n  - {id: ma, match: {display_name: MA}, assign: {roles: [manager]}}\n  - {id: de, match: {display_name: DE}, assign: {roles: [developer]}}\n  - {id: pl, match: {display_name: PL}, assign: {roles: [plain]}}\n";
    let r = run_cat(
        SCOPED,
        t,
        &[
            user("agent", vec![group("AG")]),
            user("agent_dev", vec![group("AG"), group("DE")]),
            user("manager", vec![group("MA")]),
            user("agent_manager", vec![group("AG"), group("MA")]),
            user("agent_plain", vec![group("AG"), group("PL")]),
            user("plain", vec![group("PL")]),
        ],
    );
    // The agent's grant of creds needs dev, which the agent role does not list.
    assert_eq!(perms(&r, "agent"), ["lite"]);
    let d = &r.user("agent").unwrap().dropped;
    assert_eq!(d.len(), 1);
    assert!(d[0].missing.is_empty());
    assert_eq!(
        d[0].missing_in_role,
        [RoleRequires {
            role: RoleId::from("agent"),
            missing: vec![PermissionId::from("dev")]
        }]
    );
    assert_eq!(
        why(&r, "agent", "creds"),
        "permission 'creds': not granted\n  - dropped: role 'agent' requires 'dev' for it, which is not effective\n      granted by on in role 'agent' (role default) <- rule 'ag' (m/tenants/t.yaml:3:6, priority 0) <- group 'AG'\n"
    );
    // The requirement is met by the user's whole effective set: dev from another held role.
    assert_eq!(perms(&r, "agent_dev"), ["creds", "dev", "lite"]);
    // The manager's entry implies lite and dev (both off in the role) for the manager's grant.
    assert_eq!(perms(&r, "manager"), ["creds", "dev", "lite"]);
    assert_eq!(
        why(&r, "manager", "dev"),
        "permission 'dev': granted\n  implied by 'creds' (implies of role 'manager') in role 'manager' <- rule 'ma' (m/tenants/t.yaml:4:6, priority 0) <- group 'MA'\n"
    );
    // Agent + manager: the manager's implication satisfies the agent's requirement; both grant creds.
    assert_eq!(perms(&r, "agent_manager"), ["creds", "dev", "lite"]);
    let creds = &r.user("agent_manager").unwrap().grants[&PermissionId::from("creds")];
    let targets: Vec<&str> = creds.iter().map(|g| g.target.id()).collect();
    assert_eq!(targets, ["agent", "manager"]);
    // Agent + plain: only the agent's grant is dropped; plain's grant keeps creds, nothing is dropped.
    assert_eq!(perms(&r, "agent_plain"), ["creds", "lite"]);
    let eff = r.user("agent_plain").unwrap();
    let targets: Vec<&str> = eff.grants[&PermissionId::from("creds")]
        .iter()
        .map(|g| g.target.id())
        .collect();
    assert_eq!(targets, ["plain"]);
    assert!(eff.dropped.is_empty());
    // A role without the entries' rules: neither requirement nor implication.
    assert_eq!(perms(&r, "plain"), ["creds"]);
}

#[test]
fn tenant_profiles_compute_count_against_profile_limits_and_are_explained() {
    let t = "\
catalog: c
profiles:
  - {id: tp, name: Tenant profile, role: r, toggles: {b: on, y: off}}
rules:
  - {id: mine, match: {display_name: G}, assign: {profiles: [tp]}, priority: 5}
  - {id: theirs, match: {display_name: G}, assign: {profiles: [p_on]}}
  - {id: only, match: {display_name: H}, assign: {profiles: [tp]}}
";
    let r = run(
        t,
        &[user("u", vec![group("G")]), user("v", vec![group("H")])],
    );
    // max_profiles_per_role_per_user: 1 counts the tenant profile like a catalog one.
    assert_eq!(held(&r, "u"), ["tp"]);
    assert_eq!(
        r.user("u").unwrap().lost[0].reason,
        LossReason::ProfilesPerRole {
            role: RoleId::from("r"),
            max: 1,
            kept: vec![Target::Profile(ProfileId::from("tp"))]
        }
    );
    // r: core a; tp turns b on (so x, which requires b, stays) and y off.
    assert_eq!(perms(&r, "u"), ["a", "b", "x"]);
    assert_eq!(perms(&r, "v"), ["a", "b", "x"]);
    assert_eq!(
        why(&r, "v", "y"),
        "permission 'y': not granted\n  - off in profile 'tp' (toggled by profile 'tp')\n"
    );
    let tenant = r.tenant();
    assert_eq!(
        tenant
            .profiles()
            .keys()
            .map(ProfileId::as_str)
            .collect::<Vec<_>>(),
        ["tp"]
    );
    assert_eq!(
        tenant.profile(&ProfileId::from("tp")).unwrap().role,
        RoleId::from("r")
    );
    assert!(tenant.profile(&ProfileId::from("p_on")).is_some());
    assert!(tenant.catalog().profile(&ProfileId::from("tp")).is_none());
}

#[test]
fn protected_roles_never_change_permissions_and_report_missing_holders() {
    let cat = "\
catalog: {id: c}
permissions:
  - {id: a, description: A}
roles:
  - {id: owner, protected: true, core: [a]}
  - {id: member, protected: false, core: [a]}
  - {id: guest, core: [a]}
";
    let t = "catalog: c\nprofiles:\n  - {id: owner_view, role: owner}\nrules:\n  - {match: {display_name: O}, assign: {roles: [owner]}}\n  - {match: {display_name: P}, assign: {profiles: [owner_view]}}\n  - {match: {display_name: M}, assign: {roles: [member]}}\n";
    let set = validate_sources(&[("m/catalogs/c.yaml", cat), ("m/tenants/t.yaml", t)]).unwrap();
    let tenant = set.tenant(&TenantName::from("t")).unwrap();
    let catalog = tenant.catalog();
    let protected: Vec<&str> = catalog
        .roles()
        .values()
        .filter(|r| r.protected)
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(protected, ["owner"]);
    let mut gone = user("gone", vec![group("O")]);
    gone.active = false;
    let r = compute_tenant(tenant, &[user("m", vec![group("M")]), gone.clone()]);
    assert_eq!(r.unheld_protected_roles(), [RoleId::from("owner")]);
    // Same permission through a protected role or not: informational only.
    assert_eq!(perms(&r, "m"), ["a"]);
    let r = compute_tenant(tenant, &[user("o", vec![group("O")])]);
    assert_eq!(perms(&r, "o"), ["a"]);
    assert!(r.unheld_protected_roles().is_empty());
    // A profile of the protected role holds it too.
    let r = compute_tenant(tenant, &[user("p", vec![group("P")]), gone]);
    assert!(r.unheld_protected_roles().is_empty());
}
