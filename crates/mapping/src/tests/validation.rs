//! Each error kind with its exact file:line:column; sources are minimal inline YAML.
use super::*;

/// Validates `files` and compares every error's full text, in order.
fn check(files: &[(&str, &str)], expected: &[&str]) {
    let errors = match validate_sources(files) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
    };
    assert_eq!(errors, expected, "\n{}", errors.join("\n"));
}

/// A valid catalog `c`: permissions a, b, x (x requires a); base role r (core a, configurable b off,
/// x on); profile p of r.
const CAT: &str = "\
catalog: {id: c}
permissions:
  - {id: a, description: A}
  - {id: b, description: B}
  - {id: x, description: X, requires: [a]}
roles:
  - id: r
    core: [a]
    configurable:
      - {permission: b, default: off}
      - {permission: x, default: on}
profiles:
  - {id: p, role: r, toggles: {b: on}}
";

fn with_cat(tenant: &str) -> Vec<(&'static str, String)> {
    vec![
        ("m/catalogs/c.yaml", CAT.to_owned()),
        ("m/tenants/t.yaml", tenant.to_owned()),
    ]
}

fn check_tenant(tenant: &str, expected: &[&str]) {
    let files = with_cat(tenant);
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    check(&refs, expected);
}

#[test]
fn valid_inline_mapping_has_no_errors() {
    check_tenant(
        "catalog: c\nrules:\n  - {match: {display_name: G}, assign: {roles: [r]}}\n",
        &[],
    );
}

#[test]
fn unknown_permission_in_role() {
    let cat = CAT.replace("core: [a]", "core: [a, projct_view]");
    check(
        &[("m/catalogs/c.yaml", &cat)],
        &["m/catalogs/c.yaml:8:15: role 'r' names unknown permission 'projct_view'"],
    );
}

#[test]
fn unknown_role_in_profile_and_rule() {
    let cat = CAT.replace("{id: p, role: r,", "{id: p, role: rr,");
    check(
        &[("m/catalogs/c.yaml", &cat)],
        &["m/catalogs/c.yaml:13:19: profile 'p' names unknown role 'rr'"],
    );
    check_tenant(
        "catalog: c\nrules:\n  - id: one\n    match: {display_name: G}\n    assign: {roles: [r, ownr]}\n",
        &["m/tenants/t.yaml:5:25: rule 'one' names unknown role 'ownr'"],
    );
}

#[test]
fn profile_disabling_a_core_permission() {
    let cat = CAT.replace("toggles: {b: on}", "toggles: {a: off}");
    check(
        &[("m/catalogs/c.yaml", &cat)],
        &["m/catalogs/c.yaml:13:32: profile 'p' disables core permission 'a' of role 'r'; core permissions can never be disabled"],
    );
}

#[test]
fn toggle_of_an_unlisted_permission_and_bad_toggle_value() {
    let cat = CAT
        .replace("  - {id: x,", "  - {id: z, description: Z}\n  - {id: x,")
        .replace("toggles: {b: on}", "toggles: {z: on, b: yes}");
    check(
        &[("m/catalogs/c.yaml", &cat)],
        &[
            "m/catalogs/c.yaml:14:32: profile 'p' toggles 'z', which role 'r' does not list as configurable",
            "m/catalogs/c.yaml:14:42: bad value 'yes' for 'b': expected on or off",
        ],
    );
}

#[test]
fn duplicate_ids() {
    let cat = CAT.replace(
        "  - {id: b, description: B}",
        "  - {id: b, description: B}\n  - {id: a, description: again}",
    );
    check(&[("m/catalogs/c.yaml", &cat)], &["m/catalogs/c.yaml:5:10: duplicate permission id 'a' (first defined at m/catalogs/c.yaml:3:10)"]);
    // Profiles share the namespace of roles.
    let cat = CAT.replace("{id: p, role: r,", "{id: r, role: r,");
    check(&[("m/catalogs/c.yaml", &cat)], &["m/catalogs/c.yaml:13:10: duplicate profile id 'r' (first defined at m/catalogs/c.yaml:7:9)"]);
}

#[test]
fn requires_cycle_is_named() {
    let cat = CAT
        .replace(
            "{id: a, description: A}",
            "{id: a, description: A, requires: [b]}",
        )
        .replace(
            "{id: b, description: B}",
            "{id: b, description: B, requires: [x]}",
        );
    check(
        &[("m/catalogs/c.yaml", &cat)],
        &["m/catalogs/c.yaml:3:40: requires cycle: 'a' -> 'b' -> 'x' -> 'a'"],
    );
}

#[test]
fn unknown_catalog() {
    check_tenant(
        "# t\ncatalog: gmss\n",
        &["m/tenants/t.yaml:2:10: unknown catalog 'gmss' (known: c)"],
    );
}

#[test]
fn bad_regex() {
    check_tenant(
        "catalog: c\nrules:\n  - match: {name_regex: \"^bot-(\"}\n    assign: {roles: [r]}\n",
        &["m/tenants/t.yaml:3:25: bad regex '^bot-(': error: unclosed group"],
    );
}

#[test]
fn yaml_syntax_error() {
    check_tenant("catalog: c\nrules:\n  - match: {display_name: G\n", &["m/tenants/t.yaml:4:1: yaml syntax error: while parsing a flow mapping, did not find expected ',' or '}'"]);
}

#[test]
fn duplicate_yaml_key() {
    check_tenant(
        "catalog: c\ncatalog: c\n",
        &["m/tenants/t.yaml:2:1: duplicate key 'catalog'"],
    );
}

#[test]
fn unknown_keys_are_errors() {
    check_tenant(
        "catalog: c\nrules:\n  - match: {display_nme: G}\n    asign: {roles: [r]}\n",
        &[
            "m/tenants/t.yaml:4:5: unknown key 'asign' in rule (expected one of: id, match, assign, priority)",
            "m/tenants/t.yaml:3:13: unknown key 'display_nme' in match (expected one of: display_name, external_id, dn, name_regex, source)",
            "m/tenants/t.yaml:3:5: rule is missing required key 'assign'",
            "m/tenants/t.yaml:3:13: rule #0 must match on at least one of 'display_name', 'external_id', 'dn', 'name_regex'",
        ],
    );
}

#[test]
fn all_errors_are_collected_across_files() {
    let cat = CAT.replace("core: [a]", "core: [a, nope]");
    check(
        &[
            ("m/catalogs/c.yaml", &cat),
            ("m/tenants/t.yaml", "catalog: zz\n"),
            (
                "m/tenants/u.yaml",
                "catalog: c\nrules: [{match: {dn: X}, assign: {profiles: [q]}}]\n",
            ),
        ],
        &[
            "m/catalogs/c.yaml:8:15: role 'r' names unknown permission 'nope'",
            "m/tenants/t.yaml:1:10: unknown catalog 'zz' (known: c)",
        ],
    );
}

#[test]
fn catalog_level_checks() {
    let cat = CAT
        .replace("catalog: {id: c}", "catalog: {id: d}")
        .replace(
            "{id: b, description: B}",
            "{id: b, description: B, level: admin}",
        )
        .replace("default: off", "default: maybe")
        .replace("core: [a]", "core: [a, b]");
    check(
        &[("m/catalogs/c.yaml", &cat)],
        &[
            "m/catalogs/c.yaml:1:15: catalog id 'd' does not match the file name 'c'",
            "m/catalogs/c.yaml:4:36: bad value 'admin' for 'level': expected view, edit, export, anonymized_view, create, update, delete or import",
            "m/catalogs/c.yaml:10:34: bad value 'maybe' for 'default': expected on, off or account",
            "m/catalogs/c.yaml:10:22: role 'r' lists 'b' as both core and configurable",
            "m/catalogs/c.yaml:13:32: profile 'p' toggles core permission 'b' of role 'r'; core permissions are always on, remove the toggle",
        ],
    );
}

#[test]
fn derived_role_checks() {
    let cat = format!("{CAT}  - {{id: d, base: r, toggles: {{a: off}}}}\n  - {{id: e, base: d}}\n  - {{id: f, base: r, core: [a]}}\n")
        .replace("profiles:\n  - {id: p, role: r, toggles: {b: on}}\n", "")
        + "profiles:\n  - {id: p, role: d}\n";
    check(
        &[("m/catalogs/c.yaml", &cat)],
        &[
            "m/catalogs/c.yaml:12:32: role 'd' disables core permission 'a' of role 'r'; core permissions can never be disabled",
            "m/catalogs/c.yaml:13:19: role 'e' has base 'd', which is itself a derived role; use its base role 'r'",
            "m/catalogs/c.yaml:14:28: derived role 'f' has 'core'; a derived role only has 'base' and 'toggles'",
            "m/catalogs/c.yaml:16:19: profile 'p' must be a base role, but 'd' is a derived role",
        ],
    );
}

#[test]
fn tenant_assign_kind_and_custom_roles() {
    check_tenant(
        "catalog: c\ncustom_roles:\n  - {id: p, base: r}\n  - {id: k, base: r, toggles: {x: off}}\nrules:\n  - {match: {external_id: E}, assign: {roles: [p], custom_roles: [k, r]}}\n",
        &[
            "m/tenants/t.yaml:3:10: duplicate custom role id 'p' (first defined at m/catalogs/c.yaml:13:10)",
            "m/tenants/t.yaml:6:48: rule #0 names 'p', which is a profile; list it under 'profiles'",
            "m/tenants/t.yaml:6:70: rule #0 names 'r', which is a base role; list it under 'roles'",
        ],
    );
}

#[test]
fn implies_checks_unknown_repeated_and_self_but_allows_cycles() {
    let cat = CAT
        .replace(
            "{id: a, description: A}",
            "{id: a, description: A, implies: [zz, b, b, a]}",
        )
        .replace(
            "{id: b, description: B}",
            "{id: b, description: B, implies: [x]}",
        )
        .replace(
            "{id: x, description: X, requires: [a]}",
            "{id: x, description: X, requires: [a], implies: [b]}",
        );
    check(
        &[("m/catalogs/c.yaml", &cat)],
        &[
            "m/catalogs/c.yaml:3:39: permission 'a' implies names unknown permission 'zz'",
            "m/catalogs/c.yaml:3:46: permission 'a' implies lists 'b' more than once",
            "m/catalogs/c.yaml:3:49: permission 'a' implies itself; remove 'a' from its 'implies'",
        ],
    );
}

#[test]
fn role_scoped_requires_and_implies_checks() {
    let cat = CAT
        .replace("  - {id: x,", "  - {id: z, description: Z}\n  - {id: x,")
        .replace(
            "{permission: b, default: off}",
            "{permission: b, default: off, requires: [nope, z, z], implies: [b, z, x]}",
        )
        .replace(
            "{permission: x, default: on}",
            "{permission: x, default: on, require: [a]}",
        );
    check(
        &[("m/catalogs/c.yaml", &cat)],
        &[
            "m/catalogs/c.yaml:12:38: unknown key 'require' in configurable entry (expected one of: permission, default, name, description, requires, implies)",
            "m/catalogs/c.yaml:11:50: role 'r' configurable 'b' requires names unknown permission 'nope'",
            "m/catalogs/c.yaml:11:59: role 'r' configurable 'b' requires lists 'z' more than once",
            "m/catalogs/c.yaml:11:73: role 'r' configurable 'b' implies itself; remove 'b' from its 'implies'",
            "m/catalogs/c.yaml:11:76: role 'r' configurable 'b' implies 'z', which role 'r' does not list; a role-scoped 'implies' only grants permissions of its role (put 'implies' on the permission itself to grant it in every role)",
        ],
    );
}

#[test]
fn role_scoped_requires_join_the_cycle_check() {
    // x requires a (catalog-wide); r's entry for b requires x, and a now requires b.
    let cat = CAT
        .replace(
            "{id: a, description: A}",
            "{id: a, description: A, requires: [b]}",
        )
        .replace(
            "{permission: b, default: off}",
            "{permission: b, default: off, requires: [x]}",
        );
    check(
        &[("m/catalogs/c.yaml", &cat)],
        &["m/catalogs/c.yaml:3:40: requires cycle: 'a' -> 'b' -[role 'r']-> 'x' -> 'a'"],
    );
    let cat = CAT.replace(
        "{permission: b, default: off}",
        "{permission: b, default: off, requires: [b]}",
    );
    check(
        &[("m/catalogs/c.yaml", &cat)],
        &["m/catalogs/c.yaml:10:50: requires cycle: 'b' -[role 'r']-> 'b'"],
    );
}

#[test]
fn protected_is_a_boolean_of_base_roles() {
    let cat = format!("{CAT}  - {{id: d, base: r, protected: true}}\n")
        .replace("  - id: r\n", "  - id: r\n    protected: yes\n")
        .replace("profiles:\n  - {id: p, role: r, toggles: {b: on}}\n", "")
        + "profiles:\n  - {id: p, role: r}\n";
    check(
        &[("m/catalogs/c.yaml", &cat)],
        &[
            "m/catalogs/c.yaml:8:16: bad value 'yes' for 'protected': expected true or false",
            "m/catalogs/c.yaml:13:33: derived role 'd' has 'protected'; a derived role only has 'base' and 'toggles'",
        ],
    );
    check_tenant(
        "catalog: c\ncustom_roles:\n  - {id: k, base: r, protected: true}\n",
        &["m/tenants/t.yaml:3:22: unknown key 'protected' in custom role (expected one of: id, name, description, base, toggles)"],
    );
}

#[test]
fn account_defaults_must_answer_a_default_account() {
    // x becomes `default: account` in r; z is listed by no role; s lists b on.
    let cat = CAT
        .replace("  - {id: x,", "  - {id: z, description: Z}\n  - {id: x,")
        .replace(
            "{permission: x, default: on}",
            "{permission: x, default: account}",
        )
        .replace(
            "profiles:",
            "  - id: s\n    configurable:\n      - {permission: b, default: on}\nprofiles:",
        );
    let tenant = "catalog: c\naccount_defaults:\n  x: on\n  a: on\n  b: off\n  z: on\n  zz: on\n";
    check(
        &[("m/catalogs/c.yaml", cat.as_str()), ("m/tenants/t.yaml", tenant)],
        &[
            "m/tenants/t.yaml:4:3: account_defaults names 'a', a core permission of role 'r' and 'default: account' in no role; core permissions are always on, so an account default would change nothing",
            "m/tenants/t.yaml:5:3: account_defaults names 'b', which is 'default: account' in no role of catalog 'c' (default off in role 'r', on in role 's'); account_defaults only decides 'default: account' entries",
            "m/tenants/t.yaml:6:3: account_defaults names 'z', which is 'default: account' in no role of catalog 'c' (no role lists it); account_defaults only decides 'default: account' entries",
            "m/tenants/t.yaml:7:3: account_defaults names unknown permission 'zz'",
        ],
    );
    // Core in one role but `default: account` in another: the answer matters for the other role.
    let cat = cat.replace(
        "      - {permission: b, default: on}\n",
        "      - {permission: b, default: on}\n      - {permission: a, default: account}\n",
    );
    check(
        &[
            ("m/catalogs/c.yaml", cat.as_str()),
            (
                "m/tenants/t.yaml",
                "catalog: c\naccount_defaults: {a: on, x: off}\n",
            ),
        ],
        &[],
    );
}

#[test]
fn tenant_profiles_share_the_namespace_and_are_checked_like_catalog_ones() {
    check_tenant(
        "\
catalog: c
custom_roles:
  - {id: k, base: r}
profiles:
  - {id: r, role: r}
  - {id: p, role: r}
  - {id: k, role: r}
  - {id: t1, role: r, toggles: {b: on}}
  - {id: t1, role: r}
  - {id: t2, role: rr}
  - {id: t3, role: k}
  - {id: t4, role: r, toggles: {a: off, zz: on}}
  - {id: t5, name: No role}
  - {id: Bad, role: r}
rules:
  - {match: {display_name: G}, assign: {roles: [t1], profiles: [t1, p, nope]}}
",
        &[
            "m/tenants/t.yaml:13:6: profile is missing required key 'role'",
            "m/tenants/t.yaml:5:10: duplicate profile id 'r' (first defined at m/catalogs/c.yaml:7:9)",
            "m/tenants/t.yaml:6:10: duplicate profile id 'p' (first defined at m/catalogs/c.yaml:13:10)",
            "m/tenants/t.yaml:7:10: duplicate profile id 'k' (first defined at m/tenants/t.yaml:3:10)",
            "m/tenants/t.yaml:9:10: duplicate profile id 't1' (first defined at m/tenants/t.yaml:8:10)",
            "m/tenants/t.yaml:10:20: profile 't2' names unknown role 'rr'",
            "m/tenants/t.yaml:11:20: profile 't3' must be a base role, but 'k' is a derived role",
            "m/tenants/t.yaml:12:33: profile 't4' disables core permission 'a' of role 'r'; core permissions can never be disabled",
            "m/tenants/t.yaml:12:41: profile 't4' names unknown permission 'zz'",
            "m/tenants/t.yaml:14:10: bad profile id 'Bad': ids are lowercase snake_case (^[a-z][a-z0-9_]*$)",
            "m/tenants/t.yaml:16:49: rule #0 names 't1', which is a profile; list it under 'profiles'",
            "m/tenants/t.yaml:16:72: rule #0 names unknown profile 'nope'",
        ],
    );
}
