//! Member references resolved to resources (by key, DN or userName) and
//! diffed against the stored edges; memberships that move to an account
//! re-created under its old DN.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use super::{normalize_locator, GroupOp, MemberDelta, Plan, PlanInput, ReadUsers, UserOp};
use crate::store::SyncLink;
use crate::sync::{Batch, ExternalKey, Kind, MemberRef, Members};

/// A user deleted and created again under the same DN (a new stable id)
/// holds the groups that name that DN, though those groups did not change
/// and are not in an incremental batch: the membership moves from the old
/// account to the new one now, not at the next full reconcile. Groups in
/// the batch with a full member list were resolved by DN already.
fn memberships_of_a_reused_dn(
    batch: &Batch,
    user_links: &HashMap<&str, &SyncLink>,
    group_ids: &HashMap<&str, String>,
    current: &HashMap<&str, HashSet<&str>>,
    deleted: &HashSet<&str>,
    plan: &Plan,
) -> Vec<(String, String, String)> {
    if !plan
        .users
        .iter()
        .any(|op| matches!(op, UserOp::Create { .. }))
    {
        return Vec::new();
    }
    // Every old account that held the DN (in key order, so the plan never
    // depends on hash order).
    let mut old_by_locator: HashMap<&str, Vec<&SyncLink>> = HashMap::new();
    for l in user_links.values() {
        if let Some(loc) = l.locator.as_deref() {
            old_by_locator.entry(loc).or_default().push(*l);
        }
    }
    for olds in old_by_locator.values_mut() {
        olds.sort_by(|a, b| a.external_key.cmp(&b.external_key));
    }
    let mut moved: Vec<(&str, &str)> = Vec::new();
    for op in &plan.users {
        let UserOp::Create { id, user, .. } = op else {
            continue;
        };
        let Some(loc) = &user.locator else { continue };
        for old in old_by_locator
            .get(normalize_locator(loc).as_ref())
            .into_iter()
            .flatten()
        {
            if old.external_key != user.key && old.resource_id != *id {
                moved.push((old.resource_id.as_str(), id.as_str()));
            }
        }
    }
    let mut out = Vec::new();
    if moved.is_empty() {
        return out;
    }
    let full_groups: HashSet<&str> = batch
        .groups
        .iter()
        .filter(|(_, g)| matches!(g.group.as_ref().map(|g| &g.members), Some(Members::Full(_))))
        .filter_map(|(key, _)| group_ids.get(key.as_str()).map(String::as_str))
        .collect();
    let mut groups: Vec<(&&str, &HashSet<&str>)> = current.iter().collect();
    groups.sort_by_key(|(g, _)| **g);
    for (gid, members) in groups {
        if deleted.contains(*gid) || full_groups.contains(*gid) {
            continue;
        }
        for (old, new) in &moved {
            if members.contains(old) && !members.contains(new) {
                out.push((gid.to_string(), new.to_string(), old.to_string()));
            }
        }
    }
    out
}

/// `name` as `str::to_lowercase` gives it, borrowed when that is `name`
/// itself (checked on ASCII only, where it is exact).
fn lowercase(name: &str) -> Cow<'_, str> {
    if name.is_ascii() && !name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Borrowed(name)
    } else {
        Cow::Owned(name.to_lowercase())
    }
}

/// Resolves member references and diffs them against stored edges.
#[allow(clippy::too_many_arguments)]
pub(super) fn plan_members(
    batch: &Batch,
    input: &PlanInput<'_>,
    user_links: &HashMap<&str, &SyncLink>,
    group_links: &HashMap<&str, &SyncLink>,
    n_read: usize,
    unchanged: &[&SyncLink],
    group_ids: &HashMap<&str, String>,
    plan: &mut Plan,
) {
    let read = ReadUsers {
        changed: &plan.users[..n_read],
        unchanged,
    };
    let deleted_groups: HashSet<&str> = plan
        .groups
        .iter()
        .filter_map(|op| match op {
            GroupOp::Delete { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    let deleted: HashSet<&str> = plan
        .users
        .iter()
        .filter_map(|op| match op {
            UserOp::Delete { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .chain(plan.groups.iter().filter_map(|op| match op {
            GroupOp::Delete { id, .. } => Some(id.as_str()),
            _ => None,
        }))
        .collect();
    // Locator and name indexes: stored links first, then this batch (a
    // renamed entry's new DN wins over its old one). Two stored links can
    // share a DN or name (an account deleted, waiting out its grace
    // period, and created again under its old DN): the live one wins, then
    // the greater key, so the answer never depends on hash order, nor on
    // which other links a run happened to load.
    // Borrowed where they can be (a first sync indexes 100,000 users).
    let mut by_locator: HashMap<Cow<str>, (&str, Kind)> = HashMap::new();
    let mut by_name: HashMap<Cow<str>, &str> = HashMap::new();
    let precedence = |a: &&&SyncLink, b: &&&SyncLink| {
        (a.missing_since.is_none(), &a.external_key)
            .cmp(&(b.missing_since.is_none(), &b.external_key))
    };
    let mut stored_users: Vec<&&SyncLink> = user_links.values().collect();
    stored_users.sort_by(precedence);
    for l in stored_users {
        if let Some(loc) = &l.locator {
            by_locator.insert(Cow::Borrowed(loc), (&l.resource_id, Kind::User));
        }
        by_name.insert(Cow::Borrowed(&l.name_lc), &l.resource_id);
    }
    let mut stored_groups: Vec<&&SyncLink> = group_links.values().collect();
    stored_groups.sort_by(precedence);
    for l in stored_groups {
        if let Some(loc) = &l.locator {
            by_locator.insert(Cow::Borrowed(loc), (&l.resource_id, Kind::Group));
        }
    }
    // Unchanged users keep their DN in their link; changed and new ones
    // carry it in their operation.
    for op in &plan.users {
        if let UserOp::Create { id, user, .. } | UserOp::Update { id, user, .. } = op {
            if let Some(loc) = &user.locator {
                by_locator.insert(normalize_locator(loc), (id, Kind::User));
            }
            by_name.insert(lowercase(&user.user_name), id);
        }
    }
    for (key, g) in &batch.groups {
        if let (Some(id), Some(group)) = (group_ids.get(key.as_str()), &g.group) {
            if let Some(loc) = &group.locator {
                by_locator.insert(normalize_locator(loc), (id, Kind::Group));
            }
        }
    }
    let resolve = |m: &MemberRef| -> Option<(String, Kind)> {
        match m {
            MemberRef::Key(k) => read
                .id(k.as_str())
                .map(|id| (id.to_string(), Kind::User))
                .or_else(|| {
                    user_links
                        .get(k.as_str())
                        .map(|l| (l.resource_id.clone(), Kind::User))
                })
                .or_else(|| {
                    group_ids
                        .get(k.as_str())
                        .map(|id| (id.clone(), Kind::Group))
                })
                .or_else(|| {
                    group_links
                        .get(k.as_str())
                        .map(|l| (l.resource_id.clone(), Kind::Group))
                }),
            MemberRef::Locator(dn) => by_locator
                .get(normalize_locator(dn).as_ref())
                .map(|(id, kind)| (id.to_string(), *kind)),
            MemberRef::UserName(n) => by_name
                .get(lowercase(n).as_ref())
                .map(|id| (id.to_string(), Kind::User)),
        }
    };
    let mut current: HashMap<&str, HashSet<&str>> = HashMap::new();
    for e in &input.before.edges {
        current
            .entry(e.group_id.as_str())
            .or_default()
            .insert(e.member_id.as_str());
    }
    let mut unresolved = 0usize;
    let mut emptied = 0u64;
    let mut keys: Vec<&ExternalKey> = batch.groups.keys().collect();
    keys.sort();
    for key in keys {
        let change = &batch.groups[key];
        let Some(gid) = group_ids.get(key.as_str()) else {
            continue;
        };
        if deleted.contains(gid.as_str()) {
            continue;
        }
        let have = current.get(gid.as_str());
        let mut delta = MemberDelta::default();
        let mut resolve_all = |refs: &mut dyn Iterator<Item = &MemberRef>| {
            let mut out: BTreeMap<String, Kind> = BTreeMap::new();
            for m in refs {
                match resolve(m) {
                    Some((id, ty)) if id != *gid => {
                        out.insert(id, ty);
                    }
                    Some(_) => {}
                    None => {
                        unresolved += 1;
                        if plan.skipped.len() < 50 {
                            plan.skipped.push(format!(
                                "group {key}: member {m:?} is not a user or group this source syncs"
                            ));
                        }
                    }
                }
            }
            out
        };
        match change.group.as_ref().map(|g| &g.members) {
            Some(Members::Full(list)) => {
                let mut want = resolve_all(&mut list.iter().chain(change.added.iter()));
                for (id, _) in resolve_all(&mut change.removed.iter()) {
                    want.remove(&id);
                }
                for (id, ty) in &want {
                    if !have.is_some_and(|h| h.contains(id.as_str())) {
                        delta.add.push((id.clone(), *ty));
                    }
                }
                if want.is_empty() && have.is_some_and(|h| !h.is_empty()) {
                    emptied += 1;
                }
                if let Some(h) = have {
                    let mut gone: Vec<String> = h
                        .iter()
                        .filter(|id| !want.contains_key(**id))
                        .map(|id| id.to_string())
                        .collect();
                    gone.sort();
                    delta.remove = gone;
                }
            }
            _ => {
                for (id, ty) in resolve_all(&mut change.added.iter()) {
                    if !have.is_some_and(|h| h.contains(id.as_str())) {
                        delta.add.push((id, ty));
                    }
                }
                for (id, _) in resolve_all(&mut change.removed.iter()) {
                    if have.is_some_and(|h| h.contains(id.as_str())) {
                        delta.remove.push(id);
                    }
                }
            }
        }
        delta.add.retain(|(id, _)| !deleted.contains(id.as_str()));
        if !delta.add.is_empty() || !delta.remove.is_empty() {
            plan.members.insert(gid.clone(), delta);
        }
    }
    plan.emptied_groups = emptied;
    let transfers =
        memberships_of_a_reused_dn(batch, user_links, group_ids, &current, &deleted, plan);
    // Edges of deleted groups, unless a parent's delta already removes it.
    plan.members_lost_with_groups = input
        .before
        .edges
        .iter()
        .filter(|e| {
            deleted_groups.contains(e.group_id.as_str())
                || (deleted_groups.contains(e.member_id.as_str())
                    && !plan
                        .members
                        .get(e.group_id.as_str())
                        .is_some_and(|d| d.remove.contains(&e.member_id)))
        })
        .count() as u64;
    for (gid, new, old) in transfers {
        let delta = plan.members.entry(gid).or_default();
        if !delta.add.iter().any(|(id, _)| *id == new) {
            delta.add.push((new, Kind::User));
        }
        if !delta.remove.contains(&old) {
            delta.remove.push(old);
        }
    }
    if unresolved > plan.skipped.len() {
        plan.skipped.push(format!(
            "{unresolved} member reference(s) in all name no user or group this source syncs"
        ));
    }
}
