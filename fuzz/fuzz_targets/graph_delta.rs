//! Microsoft Graph delta pages (src/sync/entra/mod.rs) from arbitrary bytes:
//! the body of one `/users/delta` or `/groups/delta` page (`value` with
//! `@removed` and `members@delta`, `@odata.nextLink` / `@odata.deltaLink`),
//! through `rolebridge::sync::entra::parse_page`, the code a read runs on
//! each page, for two attribute maps, every group selection, full and
//! incremental reads.
//!
//! Invariants checked besides "never panics": users have a non-empty key
//! and userName; no key is both deleted and updated as the same kind in one
//! batch (a later change replaces an earlier one).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rolebridge::sync::entra::{parse_page, AttributeMap, Collection, GroupSelection};
use rolebridge::sync::record::Kind;
use rolebridge::sync::source::Batch;

/// What a group fetched alone answers, made up from its id: gone, nameless
/// or named, security-enabled or not.
fn lookup(id: &str) -> Option<(Option<String>, Option<bool>)> {
    match id.len() % 4 {
        0 => None,
        1 => Some((None, Some(true))),
        2 => Some((Some(format!("Looked up {id}")), Some(false))),
        _ => Some((Some(id.to_uppercase()), None)),
    }
}

fn check(batch: &Batch) {
    for (key, u) in &batch.users {
        assert!(
            !key.is_empty() && *key == u.key,
            "user key {key:?} / {:?}",
            u.key
        );
        assert!(!u.user_name.is_empty(), "empty userName for {key}");
    }
    for (key, kind) in &batch.deleted {
        if *kind != Some(Kind::Group) {
            assert!(
                !batch.users.contains_key(key),
                "user {key} deleted and updated"
            );
        }
        if *kind != Some(Kind::User) {
            assert!(
                !batch.groups.contains_key(key),
                "group {key} deleted and updated"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let by_mail = AttributeMap {
        user_name: "mail".into(),
        external_id: Some("onPremisesImmutableId".into()),
        display_name: Some("id".into()),
        given_name: None,
        family_name: None,
        emails: Some("otherMails".into()),
        active: None,
    };
    for map in [AttributeMap::default(), by_mail] {
        let mut batch = Batch::default();
        let mut no_lookup = |_: &str| -> Option<(Option<String>, Option<bool>)> {
            panic!("a users page looked a group up")
        };
        if parse_page(
            Collection::Users,
            data,
            &map,
            &GroupSelection::All,
            true,
            &mut no_lookup,
            &mut batch,
        )
        .is_ok()
        {
            check(&batch);
        }
    }
    let selections = [
        GroupSelection::All,
        GroupSelection::Security,
        GroupSelection::Named(vec!["g1".into(), "Admins".into(), "LOOKED UP G2".into()]),
    ];
    for selection in &selections {
        for full in [true, false] {
            let mut batch = Batch::default();
            if parse_page(
                Collection::Groups,
                data,
                &AttributeMap::default(),
                selection,
                full,
                &mut lookup,
                &mut batch,
            )
            .is_ok()
            {
                check(&batch);
            }
        }
    }
});
