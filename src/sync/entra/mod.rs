//! Microsoft Entra ID through Microsoft Graph delta queries.
//!
//! A full read walks `/groups/delta`, then `/users/delta`, from the start (the
//! documented way to enumerate for a later incremental sync,
//! https://learn.microsoft.com/en-us/graph/delta-query-overview) and keeps
//! both final `@odata.deltaLink`s as the cursor; the next read follows them
//! and sees only what changed since. Group members arrive as
//! `members@delta` (https://learn.microsoft.com/en-us/graph/api/group-delta),
//! a large group spread over several pages, repeated without its
//! attributes; removals carry `"@removed"`.
//!
//! Every failure (token, HTTP after retries, a malformed page) ends the read
//! with an error, so the runner applies nothing and deletes nothing.

mod client;
pub mod config;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub use client::GRAPH_SCOPE;
use client::{display_path, GraphClient};
pub use config::{AttributeMap, EntraConfig, GroupSelection};

use super::{Batch, Change, ExternalGroup, ExternalUser, Kind, MemberRef, Members};
use super::{ReadOutcome, ReadRequest, Source, SourceError};

/// The `base` of every record: Graph has no subtrees.
pub const BASE: &str = "graph";

/// Pages one collection may take, a bound in case a server keeps handing out
/// nextLinks (999 objects a page makes this far beyond any directory).
const MAX_PAGES: u64 = 1_000_000;

/// Why the Entra source could not read. Messages name the endpoint and the
/// server's error code, never a secret or a token.
#[derive(Debug, thiserror::Error)]
pub enum EntraError {
    #[error("client secret: {0}")]
    Secret(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// Worded by the error the endpoint returned (`meaning`).
    #[error("token endpoint {url} {meaning}: {error}: {description}")]
    TokenRejected {
        url: String,
        meaning: &'static str,
        error: String,
        description: String,
    },
    #[error("token request to {url} failed: {message}")]
    TokenRequest { url: String, message: String },
    #[error("{what} unreachable after {attempts} attempts: {message}")]
    Unreachable {
        what: String,
        attempts: u32,
        message: String,
    },
    #[error("{what} still answers HTTP {status} {code} after {attempts} attempts ({waited_s:.1}s waited)")]
    Throttled {
        what: String,
        status: u16,
        code: String,
        attempts: u32,
        waited_s: f64,
    },
    #[error("{what} ({reason}): the run has waited {waited_s:.1}s for retries in all, and another wait would pass max_run_wait = {budget_s:.0}s")]
    RunWaitExhausted {
        what: String,
        reason: String,
        waited_s: f64,
        budget_s: f64,
    },
    #[error("Graph {path} denied access (HTTP {status} {code}): {message}")]
    Denied {
        status: u16,
        path: String,
        code: String,
        message: String,
    },
    #[error("Graph {path} answered HTTP {status} {code}: {message}")]
    Http {
        status: u16,
        path: String,
        code: String,
        message: String,
    },
    #[error("Graph {path} sent a malformed response: {message}")]
    Malformed { path: String, message: String },
    #[error("link {link} is not under the configured graph_url {base}; refusing to send the token there")]
    ForeignLink { link: String, base: String },
    #[error("Graph {path} kept returning nextLinks for {max} pages")]
    TooManyPages { path: String, max: u64 },
}

/// What a finished read hands back: both deltaLinks, and a fingerprint of
/// the settings the links were made for, since Graph bakes `$select` into
/// them and a changed group selection needs a full read to pick up groups
/// that did not change.
#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    users: String,
    groups: String,
    scope: String,
}

/// One page of a delta collection.
#[derive(Deserialize)]
struct Page<T> {
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink")]
    delta_link: Option<String>,
    #[serde(default = "Vec::new")]
    value: Vec<T>,
}

#[derive(Deserialize)]
struct Removed {}

#[derive(Deserialize)]
struct GraphGroup {
    id: String,
    #[serde(rename = "displayName")]
    display_name: Option<String>,
    #[serde(rename = "securityEnabled")]
    security_enabled: Option<bool>,
    #[serde(rename = "members@delta", default)]
    members: Vec<GraphMember>,
    #[serde(rename = "@removed")]
    removed: Option<Removed>,
}

#[derive(Deserialize)]
struct GraphMember {
    #[serde(rename = "@odata.type")]
    odata_type: Option<String>,
    id: String,
    #[serde(rename = "@removed")]
    removed: Option<Removed>,
}

impl GraphMember {
    /// Users and groups are members here; devices, service principals and
    /// contacts carry no permissions.
    fn is_user_or_group(&self) -> bool {
        matches!(
            self.odata_type.as_deref(),
            Some("#microsoft.graph.user" | "#microsoft.graph.group")
        )
    }
}

/// A group fetched alone, to learn whether it is in scope.
#[derive(Deserialize)]
struct GroupAttributes {
    #[serde(rename = "displayName")]
    display_name: Option<String>,
    #[serde(rename = "securityEnabled")]
    security_enabled: Option<bool>,
}

/// The Entra ID source. Built without IO; the token is fetched on the first
/// read and reused by later ones until shortly before it expires.
pub struct EntraSource {
    config: EntraConfig,
    client: GraphClient,
}

impl EntraSource {
    /// Builds the source from its config; does no IO (the token is fetched
    /// by the first read).
    pub fn new(config: &EntraConfig) -> Result<EntraSource, EntraError> {
        Ok(EntraSource {
            config: config.clone(),
            client: GraphClient::new(config)?,
        })
    }

    pub fn config(&self) -> &EntraConfig {
        &self.config
    }

    /// Graph requests sent so far, retries included.
    pub fn requests(&self) -> u64 {
        self.client.requests
    }

    fn users_url(&self) -> String {
        format!(
            "{}/users/delta?$select={}",
            self.config.graph_url,
            self.config.attributes.select().join(",")
        )
    }

    fn groups_url(&self) -> String {
        format!(
            "{}/groups/delta?$select=displayName,securityEnabled,members",
            self.config.graph_url
        )
    }

    /// Identifies what a cursor was made for: graph_url, the user
    /// properties selected and the group selection.
    fn scope_fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.users_url());
        h.update("\n");
        h.update(self.groups_url());
        h.update("\n");
        h.update(format!("{:?}", self.config.groups));
        hex::encode(&h.finalize()[..12])
    }

    /// The saved cursor, or `CursorExpired` when it cannot be used with the
    /// current settings (the runner then reads in full).
    fn parse_cursor(&self, cursor: &str) -> Result<Cursor, SourceError> {
        let c: Cursor = match serde_json::from_str(cursor) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable Entra cursor; a full read follows");
                return Err(SourceError::CursorExpired);
            }
        };
        if c.scope != self.scope_fingerprint() {
            tracing::info!(
                "Entra settings changed since the cursor was saved; a full read follows"
            );
            return Err(SourceError::CursorExpired);
        }
        if self.client.check_link(&c.users).is_err() || self.client.check_link(&c.groups).is_err() {
            tracing::info!("the cursor points outside graph_url; a full read follows");
            return Err(SourceError::CursorExpired);
        }
        Ok(c)
    }
}

/// Where a page leads: on to the next page, or to the collection's deltaLink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Page(String),
    Done(String),
}

/// A page's objects and where it leads: a nextLink wins over a deltaLink,
/// and a page with neither is malformed.
fn page_parts<T>(page: Page<T>) -> Result<(Vec<T>, Next), &'static str> {
    let next = match (page.next_link, page.delta_link) {
        (Some(next), _) => Next::Page(next),
        (None, Some(delta)) => Next::Done(delta),
        (None, None) => return Err("a page with neither @odata.nextLink nor @odata.deltaLink"),
    };
    Ok((page.value, next))
}

/// Which delta collection a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    Users,
    Groups,
}

/// Answers a group's `(displayName, securityEnabled)` for [`parse_page`],
/// or `None` when the group is gone.
pub type GroupLookup<'a> = dyn FnMut(&str) -> Option<(Option<String>, Option<bool>)> + 'a;

/// Decodes one page of `/users/delta` or `/groups/delta` (its JSON body) and
/// pushes its changes into `batch`, through the code a read uses: the page's
/// shape, the nextLink/deltaLink rule, the user conversion and the group
/// scan (`selection` and `full` as for a read, the scan starting on this
/// page). A group the scan would fetch alone is handed to `lookup`, which
/// answers its `(displayName, securityEnabled)`, or `None` when it is gone.
///
/// Exists for fuzzing (`fuzz/fuzz_targets/graph_delta.rs`) and tests; it
/// does no IO.
pub fn parse_page(
    collection: Collection,
    body: &[u8],
    map: &AttributeMap,
    selection: &GroupSelection,
    full: bool,
    lookup: &mut GroupLookup<'_>,
    batch: &mut Batch,
) -> Result<Next, String> {
    match collection {
        Collection::Users => {
            let page: Page<Map<String, Value>> =
                serde_json::from_slice(body).map_err(|e| e.to_string())?;
            let (objects, next) = page_parts(page)?;
            for o in objects {
                batch.push(user_change(map, o)?);
            }
            Ok(next)
        }
        Collection::Groups => {
            let page: Page<GraphGroup> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            let (groups, next) = page_parts(page)?;
            let mut scan = GroupScan {
                full,
                selection: selection.clone(),
                seen: HashMap::new(),
            };
            for g in groups {
                let Some(mut p) = scan.begin(g, batch) else {
                    continue;
                };
                if p.look_up {
                    match lookup(&p.id) {
                        Some((name, security)) => {
                            p.name = name;
                            p.security = security;
                        }
                        None => {
                            scan.seen.insert(p.id, false);
                            continue;
                        }
                    }
                }
                scan.finish(p, batch);
            }
            Ok(next)
        }
    }
}

/// Fetches one page of a delta collection.
async fn fetch_page<T: serde::de::DeserializeOwned>(
    client: &mut GraphClient,
    url: &str,
) -> Result<(Vec<T>, Next), SourceError> {
    page_parts(get_page(client, url).await?).map_err(|m| malformed(url, m).into())
}

/// GETs one page of a Graph collection.
async fn get_page<T: serde::de::DeserializeOwned>(
    client: &mut GraphClient,
    url: &str,
) -> Result<Page<T>, SourceError> {
    Ok(client
        .get(url, false)
        .await?
        .ok_or_else(|| malformed(url, "empty response"))?)
}

fn malformed(url: &str, message: &str) -> EntraError {
    EntraError::Malformed {
        path: display_path(url),
        message: message.to_string(),
    }
}

/// A group's direct members that are users or groups, every page of
/// `/groups/{id}/members` (https://learn.microsoft.com/en-us/graph/api/group-list-members).
async fn members_of(
    client: &mut GraphClient,
    graph_url: &str,
    id: &str,
) -> Result<Vec<MemberRef>, SourceError> {
    let mut url = format!("{graph_url}/groups/{id}/members?$select=id");
    let mut out = Vec::new();
    for _ in 0..MAX_PAGES {
        let page: Page<GraphMember> = get_page(client, &url).await?;
        out.extend(
            page.value
                .into_iter()
                .filter(GraphMember::is_user_or_group)
                .map(|m| MemberRef::Key(m.id.into())),
        );
        match page.next_link {
            Some(next) => url = next,
            None => return Ok(out),
        }
    }
    Err(EntraError::TooManyPages {
        path: display_path(&url),
        max: MAX_PAGES,
    }
    .into())
}

impl Source for EntraSource {
    async fn read(
        &mut self,
        request: &ReadRequest,
        batch: &mut Batch,
    ) -> Result<ReadOutcome, SourceError> {
        let cursor = match (&request.cursor, request.full) {
            (Some(c), false) => Some(self.parse_cursor(c)?),
            _ => None,
        };
        let full = cursor.is_none();
        let (users_start, groups_start) = match cursor {
            Some(c) => (c.users, c.groups),
            None => (self.users_url(), self.groups_url()),
        };
        let started = std::time::Instant::now();
        let requests_before = self.client.requests;
        self.client.begin_run();

        // Groups. Scope decisions are remembered per read, because a group
        // repeated on later pages comes back without its attributes.
        let mut scan = GroupScan {
            full,
            selection: self.config.groups.clone(),
            seen: HashMap::new(),
        };
        let mut url = groups_start;
        let mut groups_link = None;
        for _ in 0..MAX_PAGES {
            let (groups, next) = fetch_page::<GraphGroup>(&mut self.client, &url).await?;
            for g in groups {
                scan.group(&mut self.client, &self.config.graph_url, g, batch)
                    .await?;
            }
            match next {
                Next::Page(next) => url = next,
                Next::Done(delta) => {
                    groups_link = Some(delta);
                    break;
                }
            }
        }
        let groups_link = groups_link.ok_or_else(|| EntraError::TooManyPages {
            path: display_path(&url),
            max: MAX_PAGES,
        })?;

        // Users, after the groups: a member the groups read names was
        // created before it, so before this read too, and is in it (or in
        // the links of an earlier run). Read the other way round, a user
        // created between the reads and added to a group was a member
        // nobody knew, and the next delta never repeats the membership.
        let map = self.config.attributes.clone();
        let mut url = users_start;
        let mut users_link = None;
        for _ in 0..MAX_PAGES {
            let (objects, next) = fetch_page::<Map<String, Value>>(&mut self.client, &url).await?;
            for o in objects {
                let change = user_change(&map, o).map_err(|message| EntraError::Malformed {
                    path: display_path(&url),
                    message,
                })?;
                batch.push(change);
            }
            match next {
                Next::Page(next) => url = next,
                Next::Done(delta) => {
                    users_link = Some(delta);
                    break;
                }
            }
        }
        let users_link = users_link.ok_or_else(|| EntraError::TooManyPages {
            path: display_path(&url),
            max: MAX_PAGES,
        })?;

        let cursor = Cursor {
            users: users_link,
            groups: groups_link,
            scope: self.scope_fingerprint(),
        };
        tracing::info!(
            mode = if full { "full" } else { "delta" },
            entries = batch.received,
            requests = self.client.requests - requests_before,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "Entra read finished"
        );
        Ok(ReadOutcome {
            complete: full,
            cursor: Some(serde_json::to_string(&cursor).expect("cursor serialises")),
            bases: vec![BASE.to_string()],
        })
    }
}

/// One user object of `/users/delta` as a change. A user without the
/// property mapped to userName cannot be provisioned; it is reported
/// present (so a full read does not delete an earlier copy) and logged.
fn user_change(map: &AttributeMap, mut o: Map<String, Value>) -> Result<Change, String> {
    let key = match o.remove("id") {
        Some(Value::String(id)) if !id.is_empty() => id,
        _ => return Err("a user object without an id".into()),
    };
    if o.contains_key("@removed") {
        // "changed": soft-deleted (restorable for 30 days); "deleted":
        // gone for good. Either way it no longer signs in.
        return Ok(Change::Deleted {
            key: key.into(),
            kind: Some(Kind::User),
        });
    }
    // Read, not taken: two attributes may map the same property (userName
    // and emails both from `mail`).
    let text = |prop: &Option<String>| -> Option<String> {
        let prop = prop.as_ref()?;
        if prop == "id" {
            return Some(key.clone());
        }
        match o.get(prop)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let Some(user_name) = text(&Some(map.user_name.clone())) else {
        tracing::warn!(
            id = %key,
            property = %map.user_name,
            "Entra user has no value for the property mapped to userName; not provisioned"
        );
        return Ok(Change::Present { key: key.into() });
    };
    let external_id = text(&map.external_id);
    let display_name = text(&map.display_name);
    let given_name = text(&map.given_name);
    let family_name = text(&map.family_name);
    let emails = match map.emails.as_ref().and_then(|p| o.get(p).cloned()) {
        Some(Value::String(s)) if !s.is_empty() => vec![s],
        Some(Value::Array(a)) => a
            .into_iter()
            .filter_map(|v| match v {
                Value::String(s) if !s.is_empty() => Some(s),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    // A property never set is left out of delta responses; absent means
    // the account was never disabled.
    let active = match map.active.as_ref().and_then(|p| o.get(p)) {
        Some(Value::Bool(b)) => *b,
        Some(Value::Null) | None => true,
        Some(other) => {
            return Err(format!(
                "user {key}: 'active' property is {other}, not a boolean"
            ))
        }
    };
    Ok(Change::User(ExternalUser {
        key: key.into(),
        locator: None,
        base: BASE.to_string(),
        user_name,
        external_id,
        display_name,
        given_name,
        family_name,
        emails,
        active,
    }))
}

/// The group half of a read.
struct GroupScan {
    full: bool,
    selection: GroupSelection,
    /// Groups met in this read, and whether they are in scope.
    seen: HashMap<String, bool>,
}

/// A group of a page whose scope is still to be decided: what
/// [`GroupScan::begin`] learnt from the page.
struct PendingGroup {
    id: String,
    name: Option<String>,
    security: Option<bool>,
    /// The whole member list, fetched for a group that entered scope in a
    /// delta read (its delta carries member changes only).
    all_members: Option<Vec<MemberRef>>,
    /// Attributes on the page mean they changed (a members-only change
    /// carries none), which is the only way a group can leave scope.
    attributes_changed: bool,
    added: Vec<MemberRef>,
    removed: Vec<MemberRef>,
    /// Its attributes must be fetched before its scope is decided.
    look_up: bool,
}

impl GroupScan {
    async fn group(
        &mut self,
        client: &mut GraphClient,
        graph_url: &str,
        g: GraphGroup,
        batch: &mut Batch,
    ) -> Result<(), SourceError> {
        let Some(mut p) = self.begin(g, batch) else {
            return Ok(());
        };
        if p.look_up {
            let url = format!(
                "{graph_url}/groups/{}?$select=id,displayName,securityEnabled",
                p.id
            );
            match client.get::<GroupAttributes>(&url, true).await? {
                Some(a) => {
                    p.name = a.display_name;
                    p.security = a.security_enabled;
                }
                // Deleted since the page was made; its removal follows.
                None => {
                    self.seen.insert(p.id, false);
                    return Ok(());
                }
            }
        }
        // A delta names a group whose attributes changed with its member
        // *changes* only. Under a selection, such a group may just have
        // entered scope (made a security group, renamed into the list):
        // read its whole member list, or it would arrive empty.
        if !self.full
            && p.attributes_changed
            && !matches!(self.selection, GroupSelection::All)
            && self.in_scope(&p.id, p.name.as_deref(), p.security)
        {
            p.all_members = Some(members_of(client, graph_url, &p.id).await?);
        }
        self.finish(p, batch);
        Ok(())
    }

    /// Whether the selection takes a group with this id, name and flag.
    fn in_scope(&self, id: &str, name: Option<&str>, security: Option<bool>) -> bool {
        match &self.selection {
            GroupSelection::All => true,
            GroupSelection::Security => security == Some(true),
            GroupSelection::Named(list) => list
                .iter()
                .any(|s| s == id || name.is_some_and(|n| n.to_lowercase() == s.to_lowercase())),
        }
    }

    /// The part of a group's handling that needs no request: removals and
    /// repeats are pushed here (`None`); otherwise what is known so far.
    fn begin(&mut self, g: GraphGroup, batch: &mut Batch) -> Option<PendingGroup> {
        if g.removed.is_some() {
            self.seen.insert(g.id.clone(), false);
            batch.push(Change::Deleted {
                key: g.id.into(),
                kind: Some(Kind::Group),
            });
            return None;
        }
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for m in g.members {
            if !m.is_user_or_group() {
                continue;
            }
            if m.removed.is_some() {
                removed.push(MemberRef::Key(m.id.into()));
            } else {
                added.push(MemberRef::Key(m.id.into()));
            }
        }
        if let Some(&in_scope) = self.seen.get(&g.id) {
            // A repeat: more members of a group already reported.
            if in_scope && !(added.is_empty() && removed.is_empty()) {
                batch.push(Change::GroupMembers {
                    key: g.id.into(),
                    added,
                    removed,
                });
            }
            return None;
        }
        let attributes_changed = g.display_name.is_some() || g.security_enabled.is_some();
        let decidable = match &self.selection {
            GroupSelection::All => true,
            GroupSelection::Security => g.security_enabled.is_some(),
            GroupSelection::Named(list) => list.contains(&g.id) || g.display_name.is_some(),
        };
        // A full read must name every group; a selection must know what it
        // selects on. Members-only changes omit both, so ask for the group.
        let look_up = (self.full && g.display_name.is_none()) || !decidable;
        Some(PendingGroup {
            id: g.id,
            name: g.display_name,
            security: g.security_enabled,
            attributes_changed,
            added,
            removed,
            look_up,
            all_members: None,
        })
    }

    /// Decides the scope of a group and pushes what follows from it.
    fn finish(&mut self, p: PendingGroup, batch: &mut Batch) {
        let PendingGroup {
            id,
            name,
            security,
            attributes_changed,
            added,
            removed,
            look_up: _,
            all_members,
        } = p;
        let in_scope = self.in_scope(&id, name.as_deref(), security);
        self.seen.insert(id.clone(), in_scope);
        if !in_scope {
            // A group whose attributes changed and is outside the
            // selection: if an earlier read synced it (it was renamed out of
            // a list), it has left scope. Unknown keys are ignored.
            if !self.full && attributes_changed {
                batch.push(Change::Deleted {
                    key: id.into(),
                    kind: Some(Kind::Group),
                });
            }
            return;
        }
        match name {
            Some(display_name) => batch.push(Change::Group(ExternalGroup {
                external_id: Some(id.clone()),
                key: id.into(),
                locator: None,
                base: BASE.to_string(),
                display_name,
                members: match all_members {
                    Some(all) => Members::Full(all),
                    None if self.full => Members::Full(added),
                    None => Members::Delta { added, removed },
                },
            })),
            None => batch.push(Change::GroupMembers {
                key: id.into(),
                added,
                removed,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_attributes_may_map_one_graph_property() {
        let map = AttributeMap {
            user_name: "mail".into(),
            ..AttributeMap::default()
        };
        let o = serde_json::json!({"id": "1", "mail": "ann@contoso.com", "accountEnabled": false});
        let Value::Object(o) = o else { unreachable!() };
        let Ok(Change::User(u)) = user_change(&map, o) else {
            panic!("not a user")
        };
        assert_eq!(u.user_name, "ann@contoso.com");
        assert_eq!(u.emails, ["ann@contoso.com"]);
        assert!(!u.active);
    }

    #[test]
    fn parse_page_runs_the_read_rules_on_one_page() {
        let map = AttributeMap::default();
        let mut batch = Batch::default();
        let users = br#"{"@odata.nextLink": "n", "value": [
            {"id": "u1", "userPrincipalName": "ann@contoso.com"},
            {"id": "u2", "@removed": {"reason": "deleted"}}]}"#;
        let mut never = |_: &str| -> Option<(Option<String>, Option<bool>)> { unreachable!() };
        let next = parse_page(
            Collection::Users,
            users,
            &map,
            &GroupSelection::All,
            true,
            &mut never,
            &mut batch,
        )
        .unwrap();
        assert_eq!(next, Next::Page("n".into()));
        assert!(batch.users.contains_key("u1"));
        assert_eq!(batch.deleted.get("u2"), Some(&Some(Kind::User)));

        // g1 is named on the page; g2 (members only) is looked up in a full
        // read; g3 is gone by then; the repeat of g1 adds a member.
        let groups = br##"{"@odata.deltaLink": "d", "value": [
            {"id": "g1", "displayName": "Admins", "members@delta": [
                {"@odata.type": "#microsoft.graph.user", "id": "u1"},
                {"@odata.type": "#microsoft.graph.device", "id": "d1"}]},
            {"id": "g2", "members@delta": []},
            {"id": "g3"},
            {"id": "g1", "members@delta": [{"@odata.type": "#microsoft.graph.group", "id": "g2"}]}]}"##;
        let mut looked_up = Vec::new();
        let mut lookup = |id: &str| {
            looked_up.push(id.to_string());
            (id == "g2").then(|| (Some("Ops".to_string()), Some(true)))
        };
        let mut batch = Batch::default();
        let next = parse_page(
            Collection::Groups,
            groups,
            &map,
            &GroupSelection::All,
            true,
            &mut lookup,
            &mut batch,
        )
        .unwrap();
        assert_eq!(next, Next::Done("d".into()));
        assert_eq!(looked_up, ["g2", "g3"]);
        let g1 = &batch.groups["g1"];
        assert_eq!(g1.group.as_ref().unwrap().display_name, "Admins");
        assert!(g1.added.contains(&MemberRef::Key("g2".into())));
        assert_eq!(
            batch.groups["g2"].group.as_ref().unwrap().display_name,
            "Ops"
        );
        assert!(!batch.groups.contains_key("g3"));

        let neither = parse_page(
            Collection::Groups,
            br#"{"value": []}"#,
            &map,
            &GroupSelection::All,
            false,
            &mut never,
            &mut batch,
        );
        assert!(neither.unwrap_err().contains("neither"));
    }
}
