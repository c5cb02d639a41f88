//! The deletion guard: the most common disaster in directory sync is a run
//! that deletes everyone (a wrong base DN, an expired bind account that
//! suddenly sees nothing, a filter typo, a server restarted empty). A run
//! that removes too much is held until an administrator confirms it.
//!
//! One rule, [`over`], for users, groups and memberships alike: what a run
//! removes is over the threshold when it is more than `max_deletes`, or
//! when it is `max_delete_percent` or more of what the source held before.
//! What counts as removed:
//! - users: deletions and deactivations (a mass disable revokes as much as
//!   a mass delete);
//! - groups: deletions, and groups whose whole member list vanished;
//! - memberships: removed edges, and the edges that go with deleted groups.
//!
//! Besides, a base that held active users and would hold none after the
//! run is held, for a full read and an incremental one alike.

use super::plan::{Counts, Plan};
use crate::sync::GuardConfig;

/// Why the run must be held, or `None` when it may apply.
pub fn check(guard: &GuardConfig, plan: &Plan, counts: &Counts) -> Option<String> {
    let mut reasons = Vec::new();
    if !plan.emptied_bases.is_empty() {
        reasons.push(format!(
            "base {} would hold no active users but held some before",
            plan.emptied_bases
                .iter()
                .map(|b| format!("'{b}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let users = counts.users_deactivated + counts.users_deleted;
    let groups = counts.groups_deleted + plan.emptied_groups;
    for (what, removed, before) in [
        ("user deletions/deactivations", users, plan.linked_users),
        ("group deletions", groups, plan.linked_groups),
        (
            "membership removals",
            counts.members_removed,
            plan.linked_edges,
        ),
    ] {
        if let Some(r) = over(guard, what, removed, before) {
            reasons.push(r);
        }
    }
    if reasons.is_empty() {
        None
    } else {
        Some(reasons.join("; "))
    }
}

/// The guard's one threshold rule (see the module docs), with the reason
/// when `removed` of `before` is over it.
pub fn over(guard: &GuardConfig, what: &str, removed: u64, before: u64) -> Option<String> {
    if removed == 0 {
        return None;
    }
    if removed > guard.max_deletes {
        return Some(format!(
            "{removed} {what} exceed guard.max_deletes = {}",
            guard.max_deletes
        ));
    }
    let share = if before == 0 {
        100.0
    } else {
        removed as f64 * 100.0 / before as f64
    };
    (share >= guard.max_delete_percent).then(|| {
        format!(
            "{removed} {what} of {before} ({share:.1}%) reach guard.max_delete_percent = {}",
            guard.max_delete_percent
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_count_or_share() {
        let g = GuardConfig {
            max_deletes: 50,
            max_delete_percent: 10.0,
        };
        assert_eq!(over(&g, "x", 0, 0), None);
        // Exactly the share is over it: 5 of 50 groups.
        assert!(over(&g, "x", 5, 50).unwrap().contains("10.0%"));
        assert_eq!(over(&g, "x", 4, 50), None);
        // More than the count, whatever the share.
        assert!(over(&g, "x", 51, 100_000).unwrap().contains("max_deletes"));
        assert_eq!(over(&g, "x", 50, 100_000), None);
        // Removing from nothing known is all of it.
        assert!(over(&g, "x", 1, 0).is_some());
    }
}
