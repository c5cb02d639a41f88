//! The deletion guard: the most common disaster in directory sync is a run
//! that deletes everyone (a wrong base DN, an expired bind account that
//! suddenly sees nothing, a filter typo). A run whose removals exceed the
//! configured count or share is held until an administrator confirms it.

use super::config::GuardConfig;
use super::plan::{Counts, Plan};

/// Why the run must be held, or `None` when it may apply.
pub fn check(guard: &GuardConfig, plan: &Plan, counts: &Counts) -> Option<String> {
    let mut reasons = Vec::new();
    if !plan.emptied_bases.is_empty() {
        reasons.push(format!(
            "base {} returned no users but held users before",
            plan.emptied_bases
                .iter()
                .map(|b| format!("'{b}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    // Directory-disabled accounts count too: a mass disable revokes as
    // much as a mass delete.
    let users = counts.users_deactivated + counts.users_deleted;
    if let Some(r) = exceeds(guard, "user", users, plan.linked_users) {
        reasons.push(r);
    }
    // A group whose whole member list vanished counts as deleted: to the
    // users in it, it is.
    let groups = counts.groups_deleted + plan.emptied_groups;
    if let Some(r) = exceeds(guard, "group", groups, plan.linked_groups) {
        reasons.push(r);
    }
    // Membership loss: held only when it is both over the count and over
    // the share of this source's memberships, so a reorganisation moving
    // people between groups applies, and losing read access to `member`
    // (every list empty) does not.
    let removed = counts.members_removed;
    if removed > guard.max_deletes && plan.linked_edges > 0 {
        let share = removed as f64 * 100.0 / plan.linked_edges as f64;
        if share > guard.max_delete_percent {
            reasons.push(format!(
                "{removed} of {} memberships ({share:.1}%) would be removed, over guard.max_deletes = {} and guard.max_delete_percent = {}",
                plan.linked_edges, guard.max_deletes, guard.max_delete_percent
            ));
        }
    }
    if reasons.is_empty() {
        None
    } else {
        Some(reasons.join("; "))
    }
}

fn exceeds(guard: &GuardConfig, what: &str, removed: u64, before: u64) -> Option<String> {
    if removed == 0 {
        return None;
    }
    if removed > guard.max_deletes {
        return Some(format!(
            "{removed} {what} deletions/deactivations exceed guard.max_deletes = {}",
            guard.max_deletes
        ));
    }
    let share = if before == 0 {
        100.0
    } else {
        removed as f64 * 100.0 / before as f64
    };
    if share > guard.max_delete_percent {
        return Some(format!(
            "{removed} of {before} {what}s ({share:.1}%) would be deleted or deactivated, over guard.max_delete_percent = {}",
            guard.max_delete_percent
        ));
    }
    None
}
