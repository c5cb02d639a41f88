//! What an incremental batch names (the store loads only that), and the
//! deletion guard's totals when everything is loaded anyway.

use std::collections::HashSet;

use super::normalize_locator;
use crate::store::{Directory, LinkTotals, ScopeKeys, SyncLink};
use crate::sync::{Batch, Kind, MemberRef, Members};

/// What an incremental batch names, so the run loads only those links
/// (and their resources) instead of everything the source holds: the keys
/// of its entries, deletions and member references, the DNs of its entries
/// (a re-created account takes over its old DN's memberships) and of its
/// member references, and the userNames its members name.
pub fn scope_keys(batch: &Batch) -> ScopeKeys {
    let mut scope = ScopeKeys::default();
    for (key, user) in &batch.users {
        scope.keys.insert(key.clone());
        if let Some(loc) = &user.locator {
            scope.locators.insert(normalize_locator(loc).into_owned());
        }
    }
    scope.keys.extend(batch.deleted.keys().cloned());
    for (key, change) in &batch.groups {
        scope.keys.insert(key.clone());
        // As the planner reads members: a whole list, and the changes the
        // batch folded into `added`/`removed` (a record's own delta is
        // taken out when it is pushed).
        let listed = match change.group.as_ref().map(|g| &g.members) {
            Some(Members::Full(list)) => list.as_slice(),
            _ => &[],
        };
        for m in listed.iter().chain(&change.added).chain(&change.removed) {
            name_member(&mut scope, m);
        }
        if let Some(loc) = change.group.as_ref().and_then(|g| g.locator.as_ref()) {
            scope.locators.insert(normalize_locator(loc).into_owned());
        }
    }
    scope
}

fn name_member(scope: &mut ScopeKeys, m: &MemberRef) {
    match m {
        MemberRef::Key(k) => {
            scope.keys.insert(k.clone());
        }
        MemberRef::Locator(dn) => {
            scope.locators.insert(normalize_locator(dn).into_owned());
        }
        MemberRef::UserName(n) => {
            scope.names.insert(n.to_lowercase());
        }
    }
}

/// The guard's totals over links and a directory held whole (a complete
/// read loads both); an incremental read has the store count them.
pub fn totals(links: &[SyncLink], dir: &Directory) -> LinkTotals {
    let mut t = LinkTotals::default();
    let mut groups: HashSet<&str> = HashSet::new();
    for l in links {
        match l.kind {
            Kind::User => {
                t.users += 1;
                if l.missing_since.is_none() {
                    match t.active_users_per_base.get_mut(&l.base) {
                        Some(n) => *n += 1,
                        None => {
                            t.active_users_per_base.insert(l.base.clone(), 1);
                        }
                    }
                }
            }
            Kind::Group => {
                t.groups += 1;
                groups.insert(l.resource_id.as_str());
            }
        }
    }
    t.edges = dir
        .edges
        .iter()
        .filter(|e| groups.contains(e.group_id.as_str()))
        .count() as u64;
    t
}
