//! Turns a batch into the exact changes to make, against what this source
//! synced before (its links) and the tenant's directory as stored. Pure:
//! no IO, so a dry run, a held run and an applied run plan identically.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::store::{
    Directory, DirectoryGroup, DirectoryUser, LinkTotals, MemberRow, ScopeKeys, SyncLink,
};
use crate::sync::{Batch, ExternalGroup, ExternalUser, Kind, MemberRef, Members, ReadOutcome};

/// Everything a run would change.
#[derive(Debug, Default)]
pub struct Plan {
    pub users: Vec<UserOp>,
    pub groups: Vec<GroupOp>,
    /// Per group resource id: members to add (id, type) and to remove.
    pub members: BTreeMap<String, MemberDelta>,
    /// Links to write (created, changed, marked missing) and to drop.
    pub link_upserts: Vec<SyncLink>,
    pub link_deletes: Vec<(Kind, String)>,
    pub skipped: Vec<String>,
    /// Users this source holds before the run, and groups (guard base).
    pub linked_users: u64,
    pub linked_groups: u64,
    /// Bases that held users before and returned none in a complete read.
    pub emptied_bases: Vec<String>,
    /// Membership edges of this source's groups before the run (guard base).
    pub linked_edges: u64,
    /// Groups that had members and whose full member list is now empty (a
    /// bind account that lost read access to `member` looks like this).
    pub emptied_groups: u64,
    /// Memberships that go with the groups this plan deletes: the group's
    /// own members, and its place in the groups it was nested in. To a
    /// user, losing the group is losing the membership.
    pub members_lost_with_groups: u64,
}

#[derive(Debug, Clone)]
pub enum UserOp {
    Create {
        id: String,
        user: ExternalUser,
    },
    Update {
        id: String,
        user: ExternalUser,
        reactivated: bool,
        deactivated: bool,
    },
    /// Vanished from the directory: deactivated now, deleted after the
    /// grace period.
    Deactivate {
        id: String,
        user_name: String,
    },
    Delete {
        id: String,
        user_name: String,
    },
}

#[derive(Debug, Clone)]
pub enum GroupOp {
    Create { id: String, group: ExternalGroup },
    Update { id: String, group: ExternalGroup },
    Delete { id: String, display_name: String },
}

#[derive(Debug, Clone, Default)]
pub struct MemberDelta {
    pub add: Vec<(String, Kind)>,
    pub remove: Vec<String>,
}

/// The counts a report and the guard need.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub users_created: u64,
    pub users_updated: u64,
    pub users_deactivated: u64,
    pub users_reactivated: u64,
    pub users_deleted: u64,
    pub groups_created: u64,
    pub groups_updated: u64,
    pub groups_deleted: u64,
    pub members_added: u64,
    pub members_removed: u64,
}

impl Plan {
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for op in &self.users {
            match op {
                UserOp::Create { .. } => c.users_created += 1,
                UserOp::Update {
                    reactivated,
                    deactivated,
                    ..
                } => {
                    c.users_updated += 1;
                    c.users_reactivated += u64::from(*reactivated);
                    c.users_deactivated += u64::from(*deactivated);
                }
                UserOp::Deactivate { .. } => c.users_deactivated += 1,
                UserOp::Delete { .. } => c.users_deleted += 1,
            }
        }
        for op in &self.groups {
            match op {
                GroupOp::Create { .. } => c.groups_created += 1,
                GroupOp::Update { .. } => c.groups_updated += 1,
                GroupOp::Delete { .. } => c.groups_deleted += 1,
            }
        }
        for d in self.members.values() {
            c.members_added += d.add.len() as u64;
            c.members_removed += d.remove.len() as u64;
        }
        c.members_removed += self.members_lost_with_groups;
        c
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
            && self.groups.is_empty()
            && self
                .members
                .values()
                .all(|d| d.add.is_empty() && d.remove.is_empty())
            && self.link_upserts.is_empty()
            && self.link_deletes.is_empty()
    }

    /// One line per change, for `--dry-run` and held runs.
    pub fn diff(&self, dir: &Directory) -> Vec<String> {
        let names: HashMap<&str, &str> = dir
            .users
            .iter()
            .map(|u| (u.id.as_str(), u.user_name.as_str()))
            .chain(
                dir.groups
                    .iter()
                    .map(|g| (g.id.as_str(), g.display_name.as_str())),
            )
            .collect();
        let mut new_names: HashMap<&str, &str> = HashMap::new();
        let mut out = Vec::new();
        for op in &self.users {
            match op {
                UserOp::Create { id, user } => {
                    new_names.insert(id, &user.user_name);
                    out.push(format!(
                        "+ user {}{}",
                        user.user_name,
                        if user.active { "" } else { " (inactive)" }
                    ));
                }
                UserOp::Update {
                    id,
                    user,
                    reactivated,
                    deactivated,
                } => {
                    let old = names.get(id.as_str()).copied().unwrap_or("?");
                    let what = if *reactivated {
                        " (reactivated)"
                    } else if *deactivated {
                        " (deactivated: disabled in the directory)"
                    } else {
                        ""
                    };
                    if old == user.user_name {
                        out.push(format!("~ user {}{what}", user.user_name));
                    } else {
                        out.push(format!("~ user {old} -> {}{what}", user.user_name));
                    }
                }
                UserOp::Deactivate { user_name, .. } => out.push(format!(
                    "! user {user_name} (deactivated: gone from the directory)"
                )),
                UserOp::Delete { user_name, .. } => out.push(format!("- user {user_name}")),
            }
        }
        for op in &self.groups {
            match op {
                GroupOp::Create { id, group } => {
                    new_names.insert(id, &group.display_name);
                    out.push(format!("+ group {}", group.display_name));
                }
                GroupOp::Update { group, .. } => {
                    out.push(format!("~ group {}", group.display_name))
                }
                GroupOp::Delete { display_name, .. } => out.push(format!("- group {display_name}")),
            }
        }
        let name = |id: &str| -> String {
            names
                .get(id)
                .or_else(|| new_names.get(id))
                .map(|s| s.to_string())
                .unwrap_or_else(|| id.to_string())
        };
        for (group, d) in &self.members {
            for (m, _) in &d.add {
                out.push(format!("+ member {} -> {}", name(m), name(group)));
            }
            for m in &d.remove {
                out.push(format!("- member {} -> {}", name(m), name(group)));
            }
        }
        out
    }

    /// The directory as it will be once the plan is applied (skips aside),
    /// to count permission changes before anything is written.
    pub fn simulate(&self, before: &Directory) -> Directory {
        let mut users: BTreeMap<String, DirectoryUser> = before
            .users
            .iter()
            .map(|u| (u.id.clone(), u.clone()))
            .collect();
        let mut groups: BTreeMap<String, DirectoryGroup> = before
            .groups
            .iter()
            .map(|g| (g.id.clone(), g.clone()))
            .collect();
        let mut edges: BTreeSet<(String, String, String)> = before
            .edges
            .iter()
            .map(|e| {
                (
                    e.group_id.clone(),
                    e.member_id.clone(),
                    e.member_type.clone(),
                )
            })
            .collect();
        let mut gone: HashSet<String> = HashSet::new();
        for op in &self.users {
            match op {
                UserOp::Create { id, user } => {
                    users.insert(
                        id.clone(),
                        DirectoryUser {
                            id: id.clone(),
                            user_name: user.user_name.clone(),
                            active: user.active,
                            created: crate::domain::now(),
                        },
                    );
                }
                UserOp::Update { id, user, .. } => {
                    if let Some(u) = users.get_mut(id) {
                        u.user_name = user.user_name.clone();
                        u.active = user.active;
                    }
                }
                UserOp::Deactivate { id, .. } => {
                    if let Some(u) = users.get_mut(id) {
                        u.active = false;
                    }
                }
                UserOp::Delete { id, .. } => {
                    users.remove(id);
                    gone.insert(id.clone());
                }
            }
        }
        for op in &self.groups {
            match op {
                GroupOp::Create { id, group } | GroupOp::Update { id, group } => {
                    let created = groups.get(id).map(|g| g.doc.clone());
                    groups.insert(
                        id.clone(),
                        DirectoryGroup {
                            id: id.clone(),
                            display_name: group.display_name.clone(),
                            external_id: group.external_id.clone(),
                            doc: created.unwrap_or_default(),
                        },
                    );
                }
                GroupOp::Delete { id, .. } => {
                    groups.remove(id);
                    gone.insert(id.clone());
                }
            }
        }
        for (group, d) in &self.members {
            for m in &d.remove {
                edges.retain(|(g, mm, _)| !(g == group && mm == m));
            }
            for (m, ty) in &d.add {
                edges.insert((group.clone(), m.clone(), ty.name().to_string()));
            }
        }
        edges.retain(|(g, m, _)| !gone.contains(g) && !gone.contains(m));
        Directory {
            epoch: before.epoch,
            users: users.into_values().collect(),
            groups: groups.into_values().collect(),
            edges: edges
                .into_iter()
                .map(|(group_id, member_id, member_type)| MemberRow {
                    group_id,
                    member_id,
                    member_type,
                })
                .collect(),
        }
    }
}

/// What the planner needs besides the batch.
pub struct PlanInput<'a> {
    pub source: &'a str,
    pub tenant: crate::domain::TenantId,
    /// The source's links: all of them, or for an incremental read, at
    /// least those [`scope_keys`] names (see `store::SyncScope`).
    pub links: &'a [SyncLink],
    /// The tenant's directory: whole, or the part around `links`.
    pub before: &'a Directory,
    /// Counted over all the source's links, whichever `links` holds.
    pub totals: &'a LinkTotals,
    pub now: &'a str,
    /// Deactivated users missing since before this are deleted.
    pub delete_before: &'a str,
    /// A new resource id (injectable for tests).
    pub new_id: &'a dyn Fn() -> String,
}

/// Normalises a DN for comparison: lowercase, no spaces around `,`, `=`
/// and `+`. Renamed entries are matched by key, never by DN; this only
/// resolves member references.
pub fn normalize_locator(dn: &str) -> String {
    let lower = dn.trim().to_lowercase();
    let mut out = String::with_capacity(lower.len());
    let mut pending_space = false;
    let mut prev: Option<char> = None;
    for c in lower.chars() {
        if c == ' ' && prev != Some('\\') {
            pending_space = true;
            continue;
        }
        if pending_space && !matches!(c, ',' | '=' | '+') && !matches!(prev, Some(',' | '=' | '+'))
        {
            out.push(' ');
        }
        pending_space = false;
        out.push(c);
        prev = Some(c);
    }
    out
}

/// The content hash of a user record (everything the stored document is
/// built from).
pub fn user_hash(u: &ExternalUser) -> String {
    let json = serde_json::to_string(u).unwrap_or_default();
    hex::encode(Sha256::digest(json.as_bytes()))
}

fn group_hash(g: &ExternalGroup) -> String {
    let json =
        serde_json::to_string(&(&g.key, &g.locator, &g.base, &g.display_name, &g.external_id))
            .unwrap_or_default();
    hex::encode(Sha256::digest(json.as_bytes()))
}

/// A group without its member list (members are planned separately), so
/// operations never copy a large group's members.
fn attributes_only(g: &ExternalGroup) -> ExternalGroup {
    ExternalGroup {
        key: g.key.clone(),
        locator: g.locator.clone(),
        base: g.base.clone(),
        display_name: g.display_name.clone(),
        external_id: g.external_id.clone(),
        members: Members::Full(Vec::new()),
    }
}

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
            scope.locators.insert(normalize_locator(loc));
        }
    }
    scope.keys.extend(batch.deleted.keys().cloned());
    for (key, change) in &batch.groups {
        scope.keys.insert(key.clone());
        let listed = match change.group.as_ref().map(|g| &g.members) {
            Some(Members::Full(list)) => list.as_slice(),
            Some(Members::Delta { added, removed }) => {
                // A batch folds a group's deltas into `added`/`removed`;
                // a delta left on the record is named too.
                for m in added.iter().chain(removed) {
                    name_member(&mut scope, m);
                }
                &[]
            }
            None => &[],
        };
        for m in listed.iter().chain(&change.added).chain(&change.removed) {
            name_member(&mut scope, m);
        }
        if let Some(loc) = change.group.as_ref().and_then(|g| g.locator.as_ref()) {
            scope.locators.insert(normalize_locator(loc));
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
            scope.locators.insert(normalize_locator(dn));
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
                    *t.active_users_per_base.entry(l.base.clone()).or_default() += 1;
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

/// Plans a run. The batch's user records move into the plan (unchanged ones
/// are dropped), so the directory is held once, not twice.
pub fn plan(batch: &mut Batch, outcome: &ReadOutcome, input: &PlanInput<'_>) -> Plan {
    let mut plan = Plan::default();
    let user_links: HashMap<&str, &SyncLink> = input
        .links
        .iter()
        .filter(|l| l.kind == Kind::User)
        .map(|l| (l.external_key.as_str(), l))
        .collect();
    let group_links: HashMap<&str, &SyncLink> = input
        .links
        .iter()
        .filter(|l| l.kind == Kind::Group)
        .map(|l| (l.external_key.as_str(), l))
        .collect();
    plan.linked_users = input.totals.users;
    plan.linked_groups = input.totals.groups;
    let stored_users: HashMap<&str, &DirectoryUser> = input
        .before
        .users
        .iter()
        .map(|u| (u.id.as_str(), u))
        .collect();
    let stored_groups: HashMap<&str, &str> = input
        .before
        .groups
        .iter()
        .map(|g| (g.id.as_str(), g.display_name.as_str()))
        .collect();

    // Resource ids: linked ones (whose resource still exists), else new.
    let mut user_ids: HashMap<String, String> = HashMap::new();
    let mut group_ids: HashMap<&str, String> = HashMap::new();

    // Users, in key order so plans are deterministic.
    let mut batch_users: Vec<ExternalUser> =
        std::mem::take(&mut batch.users).into_values().collect();
    batch_users.sort_by(|a, b| a.key.cmp(&b.key));
    let mut seen_users: HashSet<String> = HashSet::with_capacity(batch_users.len());
    let mut users_per_base: HashMap<String, u64> = HashMap::new();
    for user in batch_users {
        let key = &user.key;
        seen_users.insert(key.clone());
        *users_per_base.entry(user.base.clone()).or_default() += 1;
        let hash = user_hash(&user);
        let link = user_links
            .get(key.as_str())
            .filter(|l| stored_users.contains_key(l.resource_id.as_str()));
        let (id, update) = match link {
            Some(l) => {
                let stored = stored_users[l.resource_id.as_str()];
                let reactivated = l.missing_since.is_some() && user.active;
                let deactivated = stored.active && !user.active && l.missing_since.is_none();
                let changed = l.content_hash != hash
                    || l.missing_since.is_some()
                    || stored.active != user.active;
                (
                    l.resource_id.clone(),
                    changed.then_some((reactivated, deactivated)),
                )
            }
            None => ((input.new_id)(), None),
        };
        if link.is_none_or(|l| l.content_hash != hash || l.missing_since.is_some()) {
            plan.link_upserts.push(SyncLink {
                source: input.source.to_string(),
                kind: Kind::User,
                external_key: key.clone(),
                tenant: input.tenant,
                resource_id: id.clone(),
                locator: user.locator.as_deref().map(normalize_locator),
                name_lc: user.user_name.to_lowercase(),
                base: user.base.clone(),
                content_hash: hash,
                missing_since: None,
            });
        }
        user_ids.insert(key.clone(), id.clone());
        match (link, update) {
            (None, _) => plan.users.push(UserOp::Create { id, user }),
            (Some(_), Some((reactivated, deactivated))) => plan.users.push(UserOp::Update {
                id,
                user,
                reactivated,
                deactivated,
            }),
            // Unchanged: the record is dropped here; its link keeps its DN.
            (Some(_), None) => {}
        }
    }

    // Groups.
    let mut keys: Vec<&String> = batch.groups.keys().collect();
    keys.sort();
    for key in keys {
        let change = &batch.groups[key];
        let link = group_links
            .get(key.as_str())
            .filter(|l| stored_groups.contains_key(l.resource_id.as_str()));
        match (&change.group, link) {
            (Some(group), link) => {
                let hash = group_hash(group);
                let id = match link {
                    Some(l) => {
                        if l.content_hash != hash {
                            plan.groups.push(GroupOp::Update {
                                id: l.resource_id.clone(),
                                group: attributes_only(group),
                            });
                        }
                        l.resource_id.clone()
                    }
                    None => {
                        let id = (input.new_id)();
                        plan.groups.push(GroupOp::Create {
                            id: id.clone(),
                            group: attributes_only(group),
                        });
                        id
                    }
                };
                if link.is_none_or(|l| l.content_hash != hash) {
                    plan.link_upserts.push(SyncLink {
                        source: input.source.to_string(),
                        kind: Kind::Group,
                        external_key: key.clone(),
                        tenant: input.tenant,
                        resource_id: id.clone(),
                        locator: group.locator.as_deref().map(normalize_locator),
                        name_lc: group.display_name.to_lowercase(),
                        base: group.base.clone(),
                        content_hash: hash,
                        missing_since: None,
                    });
                }
                group_ids.insert(key.as_str(), id);
            }
            (None, Some(l)) => {
                group_ids.insert(key.as_str(), l.resource_id.clone());
            }
            (None, None) => plan.skipped.push(format!(
                "group {key}: member changes for a group this source never synced"
            )),
        }
    }

    // Vanished entries.
    let present = |key: &str| batch.present.contains(key);
    let mut vanished_users: Vec<&SyncLink> = Vec::new();
    let mut vanished_groups: Vec<&SyncLink> = Vec::new();
    if outcome.complete {
        for l in user_links.values() {
            if !seen_users.contains(&l.external_key) && !present(&l.external_key) {
                vanished_users.push(l);
            }
        }
        for l in group_links.values() {
            if !batch.groups.contains_key(&l.external_key) && !present(&l.external_key) {
                vanished_groups.push(l);
            }
        }
    } else {
        for (key, kind) in &batch.deleted {
            if *kind != Some(Kind::Group) {
                if let Some(l) = user_links.get(key.as_str()) {
                    vanished_users.push(l);
                }
            }
            if *kind != Some(Kind::User) {
                if let Some(l) = group_links.get(key.as_str()) {
                    vanished_groups.push(l);
                }
            }
        }
        // Users whose grace period ran out are deleted by any run.
        for l in user_links.values() {
            if l.missing_since.is_some()
                && !seen_users.contains(&l.external_key)
                && !batch.deleted.contains_key(&l.external_key)
            {
                vanished_users.push(l);
            }
        }
    }
    vanished_users.sort_by(|a, b| a.external_key.cmp(&b.external_key));
    vanished_groups.sort_by(|a, b| a.external_key.cmp(&b.external_key));
    // A new entry taking the userName of a vanished one (an account deleted
    // and re-created, a rehire) replaces it at once: deactivated, the old
    // resource would hold the name for the whole grace period.
    let new_names: HashSet<String> = plan
        .users
        .iter()
        .filter_map(|op| match op {
            UserOp::Create { user, .. } => Some(user.user_name.to_lowercase()),
            _ => None,
        })
        .collect();
    if !new_names.is_empty() {
        let listed: HashSet<&str> = vanished_users
            .iter()
            .map(|l| l.external_key.as_str())
            .collect();
        let mut waiting: Vec<&SyncLink> = user_links
            .values()
            .filter(|l| {
                l.missing_since.is_some()
                    && new_names.contains(&l.name_lc)
                    && !seen_users.contains(&l.external_key)
                    && !listed.contains(l.external_key.as_str())
            })
            .copied()
            .collect();
        waiting.sort_by(|a, b| a.external_key.cmp(&b.external_key));
        vanished_users.extend(waiting);
    }
    for l in vanished_users {
        let reclaimed = new_names.contains(&l.name_lc);
        let Some(stored) = stored_users.get(l.resource_id.as_str()) else {
            // Deleted meanwhile (over SCIM): only the link remains.
            plan.link_deletes.push((Kind::User, l.external_key.clone()));
            continue;
        };
        match &l.missing_since {
            _ if reclaimed => {
                plan.users.push(UserOp::Delete {
                    id: l.resource_id.clone(),
                    user_name: stored.user_name.clone(),
                });
                plan.link_deletes.push((Kind::User, l.external_key.clone()));
            }
            Some(since) if since.as_str() <= input.delete_before => {
                plan.users.push(UserOp::Delete {
                    id: l.resource_id.clone(),
                    user_name: stored.user_name.clone(),
                });
                plan.link_deletes.push((Kind::User, l.external_key.clone()));
            }
            Some(_) => {}
            None => {
                plan.users.push(UserOp::Deactivate {
                    id: l.resource_id.clone(),
                    user_name: stored.user_name.clone(),
                });
                let mut link = (*l).clone();
                link.missing_since = Some(input.now.to_string());
                plan.link_upserts.push(link);
            }
        }
    }
    for l in vanished_groups {
        plan.link_deletes
            .push((Kind::Group, l.external_key.clone()));
        if let Some(name) = stored_groups.get(l.resource_id.as_str()) {
            plan.groups.push(GroupOp::Delete {
                id: l.resource_id.clone(),
                display_name: name.to_string(),
            });
        }
    }

    // Empty bases. Users reported present and unchanged (a syncrepl
    // present phase) still live under their linked base.
    if outcome.complete {
        for key in &batch.present {
            if let Some(l) = user_links.get(key.as_str()) {
                *users_per_base.entry(l.base.clone()).or_default() += 1;
            }
        }
        let mut before: BTreeMap<&str, u64> = BTreeMap::new();
        for l in user_links.values() {
            *before.entry(l.base.as_str()).or_default() += 1;
        }
        for base in &outcome.bases {
            if before.get(base.as_str()).copied().unwrap_or(0) > 0
                && users_per_base.get(base).copied().unwrap_or(0) == 0
            {
                plan.emptied_bases.push(base.clone());
            }
        }
    }

    // Any run, incremental too: a base all of whose active users this
    // plan deactivates or deletes has been emptied, whatever the read
    // reported.
    {
        let active = &input.totals.active_users_per_base;
        let base_of: HashMap<&str, &str> = user_links
            .values()
            .map(|l| (l.resource_id.as_str(), l.base.as_str()))
            .collect();
        let mut removed: BTreeMap<&str, u64> = BTreeMap::new();
        for op in &plan.users {
            let id = match op {
                UserOp::Deactivate { id, .. } => id,
                UserOp::Update {
                    id,
                    deactivated: true,
                    ..
                } => id,
                _ => continue,
            };
            if let Some(base) = base_of.get(id.as_str()) {
                *removed.entry(base).or_default() += 1;
            }
        }
        let kept_or_added: HashSet<&str> = plan
            .users
            .iter()
            .filter_map(|op| match op {
                UserOp::Create { user, .. } => Some(user.base.as_str()),
                UserOp::Update {
                    user,
                    deactivated: false,
                    ..
                } => Some(user.base.as_str()),
                _ => None,
            })
            .collect();
        for (base, n) in removed {
            if active.get(base).copied().unwrap_or(0) == n
                && !kept_or_added.contains(base)
                && !plan.emptied_bases.iter().any(|b| b == base)
            {
                plan.emptied_bases.push(base.to_string());
            }
        }
    }

    plan_members(
        batch,
        input,
        &user_links,
        &group_links,
        &user_ids,
        &group_ids,
        &mut plan,
    );
    plan
}

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
        let UserOp::Create { id, user } = op else {
            continue;
        };
        let Some(loc) = &user.locator else { continue };
        for old in old_by_locator
            .get(normalize_locator(loc).as_str())
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

/// Resolves member references and diffs them against stored edges.
#[allow(clippy::too_many_arguments)]
fn plan_members(
    batch: &Batch,
    input: &PlanInput<'_>,
    user_links: &HashMap<&str, &SyncLink>,
    group_links: &HashMap<&str, &SyncLink>,
    user_ids: &HashMap<String, String>,
    group_ids: &HashMap<&str, String>,
    plan: &mut Plan,
) {
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
    let mut by_locator: HashMap<String, (String, Kind)> = HashMap::new();
    let mut by_name: HashMap<String, String> = HashMap::new();
    let precedence = |l: &&&SyncLink| (l.missing_since.is_none(), l.external_key.clone());
    let mut stored_users: Vec<&&SyncLink> = user_links.values().collect();
    stored_users.sort_by_key(precedence);
    for l in stored_users {
        if let Some(loc) = &l.locator {
            by_locator.insert(loc.clone(), (l.resource_id.clone(), Kind::User));
        }
        by_name.insert(l.name_lc.clone(), l.resource_id.clone());
    }
    let mut stored_groups: Vec<&&SyncLink> = group_links.values().collect();
    stored_groups.sort_by_key(precedence);
    for l in stored_groups {
        if let Some(loc) = &l.locator {
            by_locator.insert(loc.clone(), (l.resource_id.clone(), Kind::Group));
        }
    }
    // Unchanged users keep their DN in their link; changed and new ones
    // carry it in their operation.
    for op in &plan.users {
        if let UserOp::Create { id, user } | UserOp::Update { id, user, .. } = op {
            if let Some(loc) = &user.locator {
                by_locator.insert(normalize_locator(loc), (id.clone(), Kind::User));
            }
            by_name.insert(user.user_name.to_lowercase(), id.clone());
        }
    }
    for (key, g) in &batch.groups {
        if let (Some(id), Some(group)) = (group_ids.get(key.as_str()), &g.group) {
            if let Some(loc) = &group.locator {
                by_locator.insert(normalize_locator(loc), (id.clone(), Kind::Group));
            }
        }
    }
    let resolve = |m: &MemberRef| -> Option<(String, Kind)> {
        match m {
            MemberRef::Key(k) => user_ids
                .get(k.as_str())
                .map(|id| (id.clone(), Kind::User))
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
            MemberRef::Locator(dn) => by_locator.get(&normalize_locator(dn)).cloned(),
            MemberRef::UserName(n) => by_name
                .get(&n.to_lowercase())
                .map(|id| (id.clone(), Kind::User)),
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
    plan.linked_edges = input.totals.edges;
    let mut keys: Vec<&String> = batch.groups.keys().collect();
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
