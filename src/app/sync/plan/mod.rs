//! Turns a batch into the exact changes to make, against what this source
//! synced before (its links) and the tenant's directory as stored. Pure:
//! no IO, so a dry run, a held run and an applied run plan identically.
//!
//! - this file: the plan's types and the entries (users, groups, what
//!   vanished, emptied bases);
//! - `members`: member references resolved and diffed against the stored
//!   edges;
//! - `identity`: how entries are compared (DNs, content hashes);
//! - `scope`: what an incremental batch names, and the guard's totals;
//! - `preview`: the diff lines and the simulated directory of a dry run.

mod identity;
mod members;
mod preview;
mod scope;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;

use crate::domain::{ContentHash, Timestamp};
use crate::store::{Directory, DirectoryUser, LinkTotals, SyncLink};
use crate::sync::{Batch, ExternalGroup, ExternalKey, ExternalUser, Kind, Members, ReadOutcome};

use identity::group_hash;
pub use identity::{normalize_locator, user_hash};
pub use scope::{scope_keys, totals};

/// Everything a run would change.
#[derive(Debug, Default)]
pub struct Plan {
    pub users: Vec<UserOp>,
    pub groups: Vec<GroupOp>,
    /// Per group resource id: members to add (id, type) and to remove.
    pub members: BTreeMap<String, MemberDelta>,
    /// Links to write (groups', and users marked missing) and to drop.
    /// Created and changed users' links come from their operations
    /// ([`UserOp::link`]), so a first sync does not hold 100,000 links
    /// beside the 100,000 users.
    pub link_upserts: Vec<SyncLink>,
    pub link_deletes: Vec<(Kind, ExternalKey)>,
    pub skipped: Vec<String>,
    /// Users this source holds before the run, and groups (guard base; set
    /// by [`Plan::measure`]).
    pub linked_users: u64,
    pub linked_groups: u64,
    /// Bases that held users before and returned none in a complete read.
    pub emptied_bases: Vec<String>,
    /// Membership edges of this source's groups before the run (guard
    /// base; set by [`Plan::measure`]).
    pub linked_edges: u64,
    /// Per base, the active users this plan deactivates or deletes, and the
    /// bases it creates or keeps active users in: with the base's active
    /// users, [`Plan::measure`] finds a base this plan empties.
    pub removed_per_base: BTreeMap<String, u64>,
    pub filled_bases: BTreeSet<String>,
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
    /// `hash` is the content hash its new link records.
    Create {
        id: String,
        user: ExternalUser,
        hash: ContentHash,
    },
    /// `relink` is the content hash to record in the user's link, when the
    /// link changes (the record did, or it was missing); `None` when only
    /// the stored user's state differs.
    Update {
        id: String,
        user: ExternalUser,
        reactivated: bool,
        deactivated: bool,
        relink: Option<ContentHash>,
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

impl UserOp {
    /// The link this operation records, built when it is written (a first
    /// sync writes 100,000): a created user's, and a changed one's whose
    /// record changed or whose link was missing.
    pub fn link(&self, source: &str, tenant: crate::domain::TenantId) -> Option<SyncLink> {
        let (id, user, hash) = match self {
            UserOp::Create { id, user, hash } => (id, user, hash),
            UserOp::Update {
                id,
                user,
                relink: Some(hash),
                ..
            } => (id, user, hash),
            _ => return None,
        };
        Some(SyncLink {
            source: source.to_string(),
            kind: Kind::User,
            external_key: user.key.clone(),
            tenant,
            resource_id: id.clone(),
            locator: user
                .locator
                .as_deref()
                .map(|l| normalize_locator(l).into_owned()),
            name_lc: user.user_name.to_lowercase(),
            base: user.base.clone(),
            content_hash: *hash,
            missing_since: None,
        })
    }
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

    /// Whether the plan removes anything: only then does the deletion
    /// guard need the totals it measures removals against (an incremental
    /// run that only adds and changes skips counting them).
    pub fn removes_anything(&self) -> bool {
        let c = self.counts();
        c.users_deactivated + c.users_deleted + c.groups_deleted + c.members_removed > 0
            || self.emptied_groups > 0
            || !self.removed_per_base.is_empty()
    }

    /// Records the guard's bases from the source's totals, and holds a base
    /// whose every active user this plan removes.
    pub fn measure(&mut self, totals: &LinkTotals) {
        self.linked_users = totals.users;
        self.linked_groups = totals.groups;
        self.linked_edges = totals.edges;
        for (base, n) in &self.removed_per_base {
            if totals.active_users_per_base.get(base).copied().unwrap_or(0) == *n
                && !self.filled_bases.contains(base)
                && !self.emptied_bases.contains(base)
            {
                self.emptied_bases.push(base.clone());
            }
        }
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
    pub now: Timestamp,
    /// Deactivated users missing since this or before are deleted (none
    /// when the grace period reaches before any representable time).
    pub delete_before: Option<Timestamp>,
    /// A new resource id (injectable for tests).
    pub new_id: &'a dyn Fn() -> String,
}

/// The users a batch read, by key: the creates and updates at the head of
/// `plan.users`, and the links of the unchanged ones, both in key order.
/// Looked up by binary search, so a first sync holds no map of 100,000
/// keys and ids beside the operations that already carry them.
pub(super) struct ReadUsers<'a> {
    pub changed: &'a [UserOp],
    pub unchanged: &'a [&'a SyncLink],
}

impl<'a> ReadUsers<'a> {
    /// The resource id of a user read under `key`.
    pub fn id(&self, key: &str) -> Option<&'a str> {
        let changed = self.changed;
        if let Ok(i) = changed.binary_search_by(|op| read_key(op).cmp(key)) {
            return match &changed[i] {
                UserOp::Create { id, .. } | UserOp::Update { id, .. } => Some(id.as_str()),
                UserOp::Deactivate { .. } | UserOp::Delete { .. } => None,
            };
        }
        let unchanged = self.unchanged;
        unchanged
            .binary_search_by(|l| l.external_key.as_str().cmp(key))
            .ok()
            .map(|i| unchanged[i].resource_id.as_str())
    }

    pub fn contains(&self, key: &str) -> bool {
        self.id(key).is_some()
    }
}

/// The key of a read user's operation (the read prefix holds creates and
/// updates only; the other two carry no record and sort first).
fn read_key(op: &UserOp) -> &str {
    match op {
        UserOp::Create { user, .. } | UserOp::Update { user, .. } => user.key.as_str(),
        UserOp::Deactivate { .. } | UserOp::Delete { .. } => "",
    }
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

/// Counts one more user under `base`, copying the base's name only the
/// first time (a full read counts 100,000 users under a handful of bases).
fn count_base(per_base: &mut HashMap<String, u64>, base: &str) {
    match per_base.get_mut(base) {
        Some(n) => *n += 1,
        None => {
            per_base.insert(base.to_string(), 1);
        }
    }
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
    let mut group_ids: HashMap<&str, String> = HashMap::new();

    // Users, in key order so plans are deterministic.
    let mut batch_users: Vec<ExternalUser> =
        std::mem::take(&mut batch.users).into_values().collect();
    batch_users.sort_by(|a, b| a.key.cmp(&b.key));
    // The links of the users read and unchanged, in key order: with the
    // operations, they answer whether a key was read ([`ReadUsers`]).
    let mut unchanged: Vec<&SyncLink> = Vec::new();
    // Sized once: doubling a Vec of 100,000 operations holds both buffers.
    plan.users.reserve(batch_users.len());
    let mut users_per_base: HashMap<String, u64> = HashMap::new();
    for user in batch_users {
        let key = &user.key;
        count_base(&mut users_per_base, &user.base);
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
        // The user's link is written from its operation (`UserOp::link`),
        // not held here a second time.
        let relink = link
            .is_none_or(|l| l.content_hash != hash || l.missing_since.is_some())
            .then_some(hash);
        match (link, update) {
            (None, _) => plan.users.push(UserOp::Create {
                id,
                user,
                hash: relink.unwrap_or_default(),
            }),
            (Some(_), Some((reactivated, deactivated))) => plan.users.push(UserOp::Update {
                id,
                user,
                reactivated,
                deactivated,
                relink,
            }),
            // Unchanged: the record is dropped here; its link keeps its DN.
            (Some(l), None) => unchanged.push(l),
        }
    }
    // So far the plan holds the read users' creates and updates, in key
    // order; the operations on users that vanished come after them.
    let n_read = plan.users.len();

    // Groups.
    let mut keys: Vec<&ExternalKey> = batch.groups.keys().collect();
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
                        locator: group
                            .locator
                            .as_deref()
                            .map(|l| normalize_locator(l).into_owned()),
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
    let read = ReadUsers {
        changed: &plan.users[..n_read],
        unchanged: &unchanged,
    };
    let present = |key: &ExternalKey| batch.present.contains(key);
    let mut vanished_users: Vec<&SyncLink> = Vec::new();
    let mut vanished_groups: Vec<&SyncLink> = Vec::new();
    if outcome.complete {
        for l in user_links.values() {
            if !read.contains(l.external_key.as_str()) && !present(&l.external_key) {
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
                && !read.contains(l.external_key.as_str())
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
                    && !read.contains(l.external_key.as_str())
                    && !listed.contains(l.external_key.as_str())
            })
            .copied()
            .collect();
        waiting.sort_by(|a, b| a.external_key.cmp(&b.external_key));
        vanished_users.extend(waiting);
    }
    let mut gone: Vec<UserOp> = Vec::new();
    for l in vanished_users {
        let reclaimed = new_names.contains(&l.name_lc);
        let Some(stored) = stored_users.get(l.resource_id.as_str()) else {
            // Deleted meanwhile (over SCIM): only the link remains.
            plan.link_deletes.push((Kind::User, l.external_key.clone()));
            continue;
        };
        match &l.missing_since {
            _ if reclaimed => {
                gone.push(UserOp::Delete {
                    id: l.resource_id.clone(),
                    user_name: stored.user_name.clone(),
                });
                plan.link_deletes.push((Kind::User, l.external_key.clone()));
            }
            Some(since) if input.delete_before.is_some_and(|d| *since <= d) => {
                gone.push(UserOp::Delete {
                    id: l.resource_id.clone(),
                    user_name: stored.user_name.clone(),
                });
                plan.link_deletes.push((Kind::User, l.external_key.clone()));
            }
            Some(_) => {}
            None => {
                gone.push(UserOp::Deactivate {
                    id: l.resource_id.clone(),
                    user_name: stored.user_name.clone(),
                });
                let mut link = (*l).clone();
                link.missing_since = Some(input.now);
                plan.link_upserts.push(link);
            }
        }
    }
    plan.users.extend(gone);
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
                count_base(&mut users_per_base, &l.base);
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
    // reported. What the plan removes per base is kept here; `measure`
    // compares it with the base's active users.
    {
        // Few runs remove anyone: the links are walked only when one does
        // (a map of every link's base cost an unchanged 100,000-user run
        // 0.1 s).
        let removed: HashSet<&str> = plan
            .users
            .iter()
            .filter_map(|op| match op {
                UserOp::Deactivate { id, .. }
                | UserOp::Update {
                    id,
                    deactivated: true,
                    ..
                } => Some(id.as_str()),
                _ => None,
            })
            .collect();
        if !removed.is_empty() {
            for l in user_links.values() {
                if removed.contains(l.resource_id.as_str()) {
                    *plan.removed_per_base.entry(l.base.clone()).or_default() += 1;
                }
            }
        }
        let filled: BTreeSet<&str> = plan
            .users
            .iter()
            .filter_map(|op| match op {
                UserOp::Create { user, .. }
                | UserOp::Update {
                    user,
                    deactivated: false,
                    ..
                } => Some(user.base.as_str()),
                _ => None,
            })
            .collect();
        plan.filled_bases = filled.into_iter().map(str::to_string).collect();
    }

    members::plan_members(
        batch,
        input,
        &user_links,
        &group_links,
        n_read,
        &unchanged,
        &group_ids,
        &mut plan,
    );
    plan
}
