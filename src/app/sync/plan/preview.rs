//! What a dry or held run shows: one line per change, and the directory as
//! it would be after the plan (to count permission changes before
//! anything is written).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::{GroupOp, Plan, UserOp};
use crate::store::{Directory, DirectoryGroup, DirectoryUser, MemberRow};

impl Plan {
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
                UserOp::Create { id, user, .. } => {
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
                    ..
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
                UserOp::Create { id, user, .. } => {
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
