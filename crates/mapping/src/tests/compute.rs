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
