//! The mapping YAML loader and validator (crates/mapping) on arbitrary
//! text, through `mapping::validate_sources`:
//! - the input as a tenant file next to the shipped catalog it names
//!   (`catalog: <id>` anywhere in the input picks one of mappings/catalogs,
//!   iAdvize when none is named);
//! - the input as a catalog, alone and with a small tenant file using it.
//!
//! When the mappings validate, `compute_tenant` and `explain` run on a few
//! users whose groups match the shipped tenants' rules.
//!
//! Invariants checked besides "never panics": every error names one of the
//! files given, at a 1-based line and column no later than the end of that
//! file's text (crates/mapping/src/error.rs: errors carry file:line:column).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mapping::{compute_tenant, explain, validate_sources, GroupFact, MappingError, UserFact};

const CATALOGS: &[(&str, &str)] = &[
    (
        "iadvize",
        include_str!("../../mappings/catalogs/iadvize.yaml"),
    ),
    ("gms", include_str!("../../mappings/catalogs/gms.yaml")),
    (
        "haptik",
        include_str!("../../mappings/catalogs/haptik.yaml"),
    ),
    (
        "liveperson",
        include_str!("../../mappings/catalogs/liveperson.yaml"),
    ),
    (
        "loyjoy",
        include_str!("../../mappings/catalogs/loyjoy.yaml"),
    ),
];

/// A tenant of the fuzzed catalog `fuzz`: ids it may or may not define.
const TENANT_OF_FUZZ: &str = "catalog: fuzz\nrules:\n  - {match: {display_name: A}, assign: {roles: [agent, admin]}}\n  - {match: {name_regex: \"^b\"}, assign: {profiles: [p]}, priority: 5}\n";

/// The catalog a tenant file names, from its text (a plain scan: the input
/// need not be YAML).
fn named_catalog(text: &str) -> &'static (&'static str, &'static str) {
    for c in CATALOGS {
        if text.contains(&format!("catalog: {}", c.0)) {
            return c;
        }
    }
    &CATALOGS[0]
}

/// Line and column just past the end of `text`, counting line breaks as
/// the YAML 1.2 scanner does (`\n`, `\r\n`, a lone `\r`).
fn end_of(text: &str) -> (usize, usize) {
    let (mut line, mut column) = (1, 1);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' if chars.peek() == Some(&'\n') => {}
            '\r' | '\n' => {
                line += 1;
                column = 1;
            }
            _ => column += 1,
        }
    }
    (line, column)
}

fn check_errors(files: &[(&str, &str)], errors: &[MappingError]) {
    assert!(!errors.is_empty(), "Err with no errors");
    for e in errors {
        let Some((_, text)) = files.iter().find(|(name, _)| *name == e.at.file) else {
            panic!("error names a file not given: {e}");
        };
        assert!(e.at.line >= 1 && e.at.column >= 1, "0-based position: {e}");
        let end = end_of(text);
        assert!(
            (e.at.line, e.at.column) <= end,
            "position past the end of the file (which ends at {}:{}): {e}",
            end.0,
            end.1
        );
        // Display is `file:line:column: message`.
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!("{}:{}:{}: ", e.at.file, e.at.line, e.at.column)),
            "{shown}"
        );
    }
}

fn group(
    name: &str,
    dn: Option<&str>,
    source: Option<&str>,
    external_id: Option<&str>,
) -> GroupFact {
    GroupFact {
        id: format!("g-{name}"),
        display_name: name.into(),
        external_id: external_id.map(str::to_string),
        dn: dn.map(str::to_string),
        source: source.map(str::to_string),
        via: vec![],
    }
}

fn users() -> Vec<UserFact> {
    let user = |id: &str, active: bool, groups: Vec<GroupFact>| UserFact {
        id: id.into(),
        user_name: format!("{id}@example.com"),
        active,
        created: format!("2024-01-01T00:00:00Z-{id}"),
        groups,
    };
    vec![
        user(
            "u1",
            true,
            vec![
                group("A", None, None, None),
                group("Support Seniors", None, Some("okta"), None),
                group(
                    "Support Agents",
                    Some("CN=Support Agents,OU=Groups,DC=acme,DC=example"),
                    Some("ldap"),
                    None,
                ),
            ],
        ),
        user(
            "u2",
            true,
            vec![
                group("b-team", None, Some("okta"), Some("7f3c2a10-admins")),
                group("Customer Care Managers", None, None, None),
                group("cc-managers-de", None, Some("okta"), None),
            ],
        ),
        user("u3", false, vec![group("A", None, None, None)]),
        user("u4", true, vec![]),
    ]
}

fn run(files: &[(&str, &str)]) {
    match validate_sources(files) {
        Err(errors) => check_errors(files, &errors),
        Ok(set) => {
            let users = users();
            for tenant in set.tenants().values() {
                let result = compute_tenant(tenant, &users);
                for u in &users {
                    let _ = explain(&result, &u.id, None);
                    if let Some(eff) = result.user(&u.id) {
                        for p in eff.permissions.iter().take(3) {
                            let _ = explain(&result, &u.id, Some(p));
                        }
                    }
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (id, catalog) = named_catalog(text);
    let catalog_name = format!("m/catalogs/{id}.yaml");
    run(&[
        (catalog_name.as_str(), catalog),
        ("m/tenants/fuzz.yaml", text),
    ]);
    run(&[("m/catalogs/fuzz.yaml", text)]);
    run(&[
        ("m/catalogs/fuzz.yaml", text),
        ("m/tenants/t.yaml", TENANT_OF_FUZZ),
    ]);
});
