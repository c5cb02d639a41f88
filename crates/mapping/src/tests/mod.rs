//! Tests of the whole pipeline, as data: validation errors with exact positions, the shipped mappings,
//! and each seed's model. Kept apart from the modules because they cross every step.

mod compute;
mod seeds;
mod validation;

use crate::*;

pub(crate) const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../mappings");

pub(crate) fn shipped() -> MappingSet {
    match validate_dir(std::path::Path::new(SHIPPED)) {
        Ok(set) => set,
        Err(errors) => {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            panic!("shipped mappings invalid:\n{}", lines.join("\n"))
        }
    }
}

pub(crate) fn group(name: &str) -> GroupFact {
    GroupFact {
        id: format!("g-{name}"),
        display_name: name.into(),
        external_id: None,
        dn: None,
        source: None,
        via: vec![],
    }
}

pub(crate) fn user(id: &str, groups: Vec<GroupFact>) -> UserFact {
    UserFact {
        id: id.into(),
        user_name: format!("{id}@example.com"),
        active: true,
        created: format!("2024-01-01T00:00:00Z-{id}"),
        groups,
    }
}

/// Asserts that `user` has every permission of `has` and none of `lacks`.
pub(crate) fn check_perms(result: &TenantResult, user: &str, has: &[&str], lacks: &[&str]) {
    let eff = result.user(user).expect("user computed");
    for p in has {
        assert!(
            eff.permissions.contains(&PermissionId::from(*p)),
            "{user} should have '{p}'\n{}",
            explain(result, user, Some(&PermissionId::from(*p))).unwrap()
        );
    }
    for p in lacks {
        assert!(
            !eff.permissions.contains(&PermissionId::from(*p)),
            "{user} should lack '{p}'\n{}",
            explain(result, user, Some(&PermissionId::from(*p))).unwrap()
        );
    }
}

pub(crate) fn held(result: &TenantResult, user: &str) -> Vec<String> {
    result
        .user(user)
        .expect("user")
        .assignments
        .iter()
        .map(|a| a.target.id().to_owned())
        .collect()
}
