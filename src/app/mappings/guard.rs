//! The mapping-change guard: a change that takes access from many users, or
//! leaves a protected role (admin, owner) with no holder, is applied only
//! when confirmed with its plan's hash.
//!
//! One rule, stated once: a tenant trips the guard when more than
//! `max_users_losing` of its users lose any role, profile or permission, or
//! when those users are more than `max_percent_losing` percent of its
//! users; or when a protected role of its catalog had a holder before the
//! change and has none after it.

use super::plan::TenantPlan;
pub use crate::config::{GuardLimits, GuardSettings};

/// Why the plan needs a confirmation, one line per reason; empty when it
/// does not.
pub fn verdict(settings: &GuardSettings, tenants: &[TenantPlan]) -> Vec<String> {
    let mut reasons = Vec::new();
    for t in tenants {
        let limits = settings.limits_for(&t.tenant);
        let losing = t.totals.users_losing;
        let users = t.totals.users.max(1);
        let percent = losing as f64 * 100.0 / users as f64;
        if losing > limits.max_users_losing {
            reasons.push(format!(
                "tenant '{}': {losing} users lose access, more than max_users_losing = {}",
                t.tenant, limits.max_users_losing
            ));
        } else if losing > 0 && percent > limits.max_percent_losing {
            reasons.push(format!(
                "tenant '{}': {losing} of {} users ({percent:.1} %) lose access, more than max_percent_losing = {} %",
                t.tenant, t.totals.users, limits.max_percent_losing
            ));
        }
        for p in &t.protected {
            if p.holders_before > 0 && p.holders_after == 0 {
                reasons.push(format!(
                    "tenant '{}': protected role '{}' would have no holder (it has {} now)",
                    t.tenant, p.role, p.holders_before
                ));
            }
        }
    }
    reasons
}
