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
