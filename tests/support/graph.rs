//! A local stand-in for Microsoft Graph and the Microsoft identity platform
//! token endpoint, on 127.0.0.1:0, speaking the documented wire format:
//!
//! - token: `POST {authority}/{tenant}/oauth2/v2.0/token`, client
//!   credentials grant, success and error bodies as in
//!   https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow
//!   (`{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":..}`;
//!   `invalid_client` / AADSTS7000215 for a wrong secret).
//! - `GET /v1.0/users/delta`, `GET /v1.0/groups/delta`: pages with
//!   `@odata.context`, `value`, and `@odata.nextLink` (`$skiptoken`) or, on
//!   the last page, `@odata.deltaLink` (`$deltatoken`), as in
//!   https://learn.microsoft.com/en-us/graph/api/user-delta,
//!   https://learn.microsoft.com/en-us/graph/api/group-delta and
//!   https://learn.microsoft.com/en-us/graph/delta-query-groups: groups carry
//!   `members@delta` (`@odata.type` + `id`, `"@removed": {"reason":
//!   "deleted"}` for removals), a group's members spread over several pages
//!   repeat the group with `id` and `members@delta` only, a members-only
//!   change returns the group without its other properties, deleted objects
//!   are `{"id", "@removed": {"reason": "changed"|"deleted"}}`, and
//!   properties never set are left out.
//! - `GET /v1.0/groups/{id}?$select=`.
//! - errors `{"error": {"code", "message", "innerError": {"date",
//!   "request-id", "client-request-id"}}}` (https://learn.microsoft.com/en-us/graph/errors):
//!   401 `InvalidAuthenticationToken`, 429 `TooManyRequests` with
//!   `Retry-After` (https://learn.microsoft.com/en-us/graph/throttling),
//!   410 `syncStateNotFound` for an expired delta token
//!   (https://learn.microsoft.com/en-us/graph/delta-query-overview#synchronization-reset).
//!
//! Tests edit the directory between reads; every edit is logged, so delta
//! tokens (a position in the log) return exactly what changed. Faults
//! (throttling, token revocation, expired delta tokens, going down) are
//! switched on by the test.

#![allow(dead_code)]
// Handlers short-circuit with the response to send; boxing it buys nothing here.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

pub const USER_TYPE: &str = "#microsoft.graph.user";
pub const GROUP_TYPE: &str = "#microsoft.graph.group";

/// How the stand-in pages and what credentials it accepts.
#[derive(Debug, Clone)]
pub struct GraphOptions {
    pub directory_id: String,
    pub client_id: String,
    pub client_secret: String,
    /// Objects per page (Graph's default for users is 100, at most 999).
    pub page_size: usize,
    /// Members per group entry; more members repeat the group on later pages.
    pub member_chunk: usize,
    /// `expires_in` of issued tokens.
    pub token_lifetime: u64,
}

impl Default for GraphOptions {
    fn default() -> Self {
        GraphOptions {
            directory_id: uuid::Uuid::new_v4().to_string(),
            client_id: uuid::Uuid::new_v4().to_string(),
            client_secret: format!("Qx8Q~{}", uuid::Uuid::new_v4().simple()),
            page_size: 100,
            member_chunk: 20,
            token_lifetime: 3599,
        }
    }
}

#[derive(Debug, Clone)]
struct Group {
    props: Map<String, Value>,
    /// member id → `@odata.type`.
    members: BTreeMap<String, &'static str>,
}

#[derive(Debug, Clone)]
enum Event {
    User(String),
    UserRemoved(String, &'static str),
    GroupAttrs(String),
    GroupRemoved(String, &'static str),
    Member {
        group: String,
        member: String,
        kind: &'static str,
        added: bool,
    },
}

#[derive(Default)]
struct Faults {
    /// Next Graph requests answered with this status (and Retry-After).
    fail_next: usize,
    fail_status: u16,
    fail_retry_after: Option<u64>,
    /// After this many more Graph requests, every issued token is revoked.
    revoke_tokens_after: Option<usize>,
    /// Every token is rejected (a tenant that revoked the app's consent).
    reject_all_tokens: bool,
    /// After this many more Graph requests, the server shuts down.
    down_after: Option<usize>,
    /// The next token requests answered with this transient error:
    /// (count, HTTP status, `Retry-After` seconds).
    token_fail: Option<(usize, u16, Option<u64>)>,
    /// The status of the "sync state gone" answer (410 unless set): the
    /// docs only promise "40X-series".
    reset_status: Option<u16>,
    /// The first request to this path is held until the test releases it.
    pause: Option<(String, Arc<Gate>)>,
}

/// A request held at the stand-in's door: the test learns it arrived,
/// edits the directory, and lets it through.
#[derive(Default)]
pub struct Gate {
    reached: tokio::sync::Notify,
    released: tokio::sync::Notify,
}

impl Gate {
    /// Waits (at most 30 s) until the held request has arrived.
    pub async fn reached(&self) {
        tokio::time::timeout(std::time::Duration::from_secs(30), self.reached.notified())
            .await
            .expect("the paused request never came");
    }

    /// Lets the held request through.
    pub fn release(&self) {
        self.released.notify_one();
    }
}

struct Inner {
    options: GraphOptions,
    graph_url: String,
    users: BTreeMap<String, Map<String, Value>>,
    groups: BTreeMap<String, Group>,
    log: Vec<Event>,
    /// Bumped to expire every delta and skip token handed out before.
    generation: u64,
    tokens: HashSet<String>,
    faults: Faults,
    graph_requests: usize,
    token_requests: usize,
    /// Paths with query of Graph requests, in order.
    paths: Vec<String>,
}

/// The running stand-in; shut down on drop.
pub struct GraphStandIn {
    /// `http://127.0.0.1:PORT`, the `authority_url`.
    pub authority: String,
    /// `http://127.0.0.1:PORT/v1.0`, the `graph_url`.
    pub graph_url: String,
    pub options: GraphOptions,
    inner: Arc<Mutex<Inner>>,
    shutdown: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GraphStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    shutdown: Arc<tokio::sync::Notify>,
}

/// What a `$skiptoken` / `$deltatoken` stands for. Graph's are opaque; so
/// are these to the client (base64url JSON).
#[derive(Serialize, Deserialize)]
struct Token {
    /// Log position the session reports changes after (`None`: everything).
    since: Option<usize>,
    /// Log position when the session began.
    upto: usize,
    /// Entry offset of the next page.
    offset: usize,
    generation: u64,
    select: String,
}

fn encode(t: &Token) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(t).unwrap())
}

fn decode(s: &str) -> Option<Token> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl GraphStandIn {
    pub async fn start() -> GraphStandIn {
        Self::start_with(GraphOptions::default()).await
    }

    pub async fn start_with(options: GraphOptions) -> GraphStandIn {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind stand-in");
        let addr = listener.local_addr().unwrap();
        let authority = format!("http://{addr}");
        let graph_url = format!("{authority}/v1.0");
        let inner = Arc::new(Mutex::new(Inner {
            options: options.clone(),
            graph_url: graph_url.clone(),
            users: BTreeMap::new(),
            groups: BTreeMap::new(),
            log: Vec::new(),
            generation: 1,
            tokens: HashSet::new(),
            faults: Faults::default(),
            graph_requests: 0,
            token_requests: 0,
            paths: Vec::new(),
        }));
        let shutdown = Arc::new(tokio::sync::Notify::new());
        let shared = Shared {
            inner: inner.clone(),
            shutdown: shutdown.clone(),
        };
        let router = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .route("/v1.0/users/delta", get(users_delta))
            .route("/v1.0/groups/delta", get(groups_delta))
            .route("/v1.0/groups/{id}", get(group_get))
            .route("/v1.0/groups/{id}/members", get(group_members))
            .with_state(shared);
        let signal = shutdown.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move { signal.notified().await })
                .await;
        });
        GraphStandIn {
            authority,
            graph_url,
            options,
            inner,
            shutdown,
            task,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().unwrap())
    }

    // ---- the directory ----

    /// Adds an enabled member user; returns its id.
    pub fn add_user(&self, upn: &str, given: &str, surname: &str) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let mut p = Map::new();
        p.insert("id".into(), json!(id));
        p.insert("userPrincipalName".into(), json!(upn));
        p.insert("displayName".into(), json!(format!("{given} {surname}")));
        p.insert("givenName".into(), json!(given));
        p.insert("surname".into(), json!(surname));
        p.insert("mail".into(), json!(upn));
        p.insert("accountEnabled".into(), json!(true));
        self.with(|s| {
            s.users.insert(id.clone(), p);
            s.log.push(Event::User(id.clone()));
        });
        id
    }

    /// Sets (or, with `Value::Null`, clears) a user property.
    pub fn set_user(&self, id: &str, property: &str, value: Value) {
        self.with(|s| {
            let u = s.users.get_mut(id).expect("no such user");
            u.insert(property.into(), value);
            s.log.push(Event::User(id.to_string()));
        });
    }

    /// Deletes a user: `permanent` is a hard delete (`reason: deleted`),
    /// otherwise a soft delete into the recycle bin (`reason: changed`).
    /// Its memberships go with it.
    pub fn delete_user(&self, id: &str, permanent: bool) {
        self.with(|s| {
            s.users.remove(id).expect("no such user");
            s.drop_memberships(id);
            s.log.push(Event::UserRemoved(
                id.to_string(),
                if permanent { "deleted" } else { "changed" },
            ));
        });
    }

    pub fn add_group(&self, name: &str, security: bool) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        let mut p = Map::new();
        p.insert("id".into(), json!(id));
        p.insert("displayName".into(), json!(name));
        p.insert("description".into(), json!(format!("{name} group")));
        p.insert("securityEnabled".into(), json!(security));
        p.insert("mailEnabled".into(), json!(!security));
        self.with(|s| {
            s.groups.insert(
                id.clone(),
                Group {
                    props: p,
                    members: BTreeMap::new(),
                },
            );
            s.log.push(Event::GroupAttrs(id.clone()));
        });
        id
    }

    /// Sets a group's `securityEnabled` (a change of its attributes).
    pub fn set_security(&self, id: &str, security: bool) {
        self.with(|s| {
            s.groups
                .get_mut(id)
                .expect("no such group")
                .props
                .insert("securityEnabled".into(), json!(security));
            s.log.push(Event::GroupAttrs(id.to_string()));
        });
    }

    pub fn rename_group(&self, id: &str, name: &str) {
        self.with(|s| {
            s.groups
                .get_mut(id)
                .expect("no such group")
                .props
                .insert("displayName".into(), json!(name));
            s.log.push(Event::GroupAttrs(id.to_string()));
        });
    }

    /// Deletes a group (security groups are deleted for good, Microsoft 365
    /// groups go to the recycle bin, as Graph reports them).
    pub fn delete_group(&self, id: &str) {
        self.with(|s| {
            let g = s.groups.remove(id).expect("no such group");
            let security = g.props["securityEnabled"] == json!(true);
            s.drop_memberships(id);
            s.log.push(Event::GroupRemoved(
                id.to_string(),
                if security { "deleted" } else { "changed" },
            ));
        });
    }

    /// Adds a user or a group to a group.
    pub fn add_member(&self, group: &str, member: &str) {
        self.with(|s| {
            let kind = s.kind_of(member);
            s.groups
                .get_mut(group)
                .expect("no such group")
                .members
                .insert(member.to_string(), kind);
            s.log.push(Event::Member {
                group: group.into(),
                member: member.into(),
                kind,
                added: true,
            });
        });
    }

    pub fn remove_member(&self, group: &str, member: &str) {
        self.with(|s| {
            let kind = s
                .groups
                .get_mut(group)
                .expect("no such group")
                .members
                .remove(member)
                .expect("not a member");
            s.log.push(Event::Member {
                group: group.into(),
                member: member.into(),
                kind,
                added: false,
            });
        });
    }

    // ---- faults ----

    /// The next `n` Graph requests get `status` (429 `TooManyRequests`, 503
    /// `ServiceUnavailable`), with `Retry-After: secs` when given.
    pub fn fail_next(&self, n: usize, status: u16, retry_after: Option<u64>) {
        self.with(|s| {
            s.faults.fail_next = n;
            s.faults.fail_status = status;
            s.faults.fail_retry_after = retry_after;
        });
    }

    /// After `n` more Graph requests every token issued so far stops
    /// working, as when a token expires (or is revoked) in the middle of a
    /// run; new tokens work.
    pub fn revoke_tokens_after(&self, n: usize) {
        self.with(|s| s.faults.revoke_tokens_after = Some(n));
    }

    /// Every token, even a new one, is rejected by Graph.
    pub fn reject_all_tokens(&self) {
        self.with(|s| s.faults.reject_all_tokens = true);
    }

    /// Expired delta tokens are answered with `status` and
    /// `syncStateNotFound` instead of 410.
    pub fn reset_status(&self, status: u16) {
        self.with(|s| s.faults.reset_status = Some(status));
    }

    /// Every delta and skip token handed out so far is expired (410).
    pub fn expire_delta_tokens(&self) {
        self.with(|s| s.generation += 1);
    }

    /// After `n` more Graph requests the server stops listening.
    pub fn go_down_after(&self, n: usize) {
        self.with(|s| s.faults.down_after = Some(n));
    }

    /// The next `n` token requests fail as the Microsoft identity platform
    /// does when its directory store is unavailable: `status` (429 or 503)
    /// with `temporarily_unavailable` / AADSTS90033, and `Retry-After`
    /// when given.
    pub fn fail_token_next(&self, n: usize, status: u16, retry_after: Option<u64>) {
        self.with(|s| s.faults.token_fail = Some((n, status, retry_after)));
    }

    /// Holds the first Graph request to `path` (`/v1.0/users/delta`, say)
    /// until the returned gate is released, so a test can change the
    /// directory between two reads of one run.
    pub fn pause_before(&self, path: &str) -> Arc<Gate> {
        let gate = Arc::new(Gate::default());
        self.with(|s| s.faults.pause = Some((path.to_string(), gate.clone())));
        gate
    }

    /// Stops listening now.
    pub fn go_down(&self) {
        self.shutdown.notify_one();
    }

    pub fn graph_requests(&self) -> usize {
        self.with(|s| s.graph_requests)
    }

    pub fn token_requests(&self) -> usize {
        self.with(|s| s.token_requests)
    }

    /// Graph request paths (with query) so far.
    pub fn paths(&self) -> Vec<String> {
        self.with(|s| s.paths.clone())
    }
}

impl Inner {
    fn kind_of(&self, id: &str) -> &'static str {
        if self.users.contains_key(id) {
            USER_TYPE
        } else if self.groups.contains_key(id) {
            GROUP_TYPE
        } else {
            panic!("no user or group {id}")
        }
    }

    fn drop_memberships(&mut self, id: &str) {
        let mut events = Vec::new();
        for (gid, g) in self.groups.iter_mut() {
            if let Some(kind) = g.members.remove(id) {
                events.push(Event::Member {
                    group: gid.clone(),
                    member: id.to_string(),
                    kind,
                    added: false,
                });
            }
        }
        self.log.extend(events);
    }

    /// Counts a Graph request and applies the faults due; `Err` is the
    /// response to send instead.
    fn admit(
        &mut self,
        headers: &HeaderMap,
        shutdown: &tokio::sync::Notify,
    ) -> Result<(), Response> {
        self.graph_requests += 1;
        if let Some(n) = self.faults.down_after {
            if n == 0 {
                shutdown.notify_one();
                self.faults.down_after = None;
                return Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    "The service is shutting down.",
                    None,
                ));
            }
            self.faults.down_after = Some(n - 1);
        }
        if let Some(n) = self.faults.revoke_tokens_after {
            if n == 0 {
                self.tokens.clear();
                self.faults.revoke_tokens_after = None;
            } else {
                self.faults.revoke_tokens_after = Some(n - 1);
            }
        }
        let bearer = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let valid =
            bearer.is_some_and(|t| self.tokens.contains(t)) && !self.faults.reject_all_tokens;
        if !valid {
            let (code, message) = if bearer.is_none() {
                ("InvalidAuthenticationToken", "Access token is empty.")
            } else {
                (
                    "InvalidAuthenticationToken",
                    "Access token has expired or is not yet valid.",
                )
            };
            return Err(error(StatusCode::UNAUTHORIZED, code, message, None));
        }
        if self.faults.fail_next > 0 {
            self.faults.fail_next -= 1;
            let status = StatusCode::from_u16(self.faults.fail_status).unwrap();
            let (code, message) = match status.as_u16() {
                429 => ("TooManyRequests", "Too many requests."),
                503 => (
                    "ServiceUnavailable",
                    "The service is temporarily unavailable.",
                ),
                _ => ("generalException", "An error occurred."),
            };
            return Err(error(status, code, message, self.faults.fail_retry_after));
        }
        Ok(())
    }

    /// The session a delta request belongs to: a new one (no token), or the
    /// one its `$skiptoken`/`$deltatoken` names.
    fn session(
        &self,
        q: &HashMap<String, String>,
        default_select: &str,
    ) -> Result<Token, Response> {
        let status = StatusCode::from_u16(self.faults.reset_status.unwrap_or(410)).unwrap();
        let expired = || {
            error(
                status,
                "syncStateNotFound",
                "The sync state generation is not found. The delta token is expired and data must be synchronized again.",
                None,
            )
        };
        if let Some(t) = q.get("$skiptoken") {
            let t = decode(t).ok_or_else(|| bad_token("$skiptoken"))?;
            if t.generation != self.generation {
                return Err(expired());
            }
            return Ok(t);
        }
        if let Some(t) = q.get("$deltatoken") {
            let t = decode(t).ok_or_else(|| bad_token("$deltatoken"))?;
            if t.generation != self.generation {
                return Err(expired());
            }
            // A new round: changes after the position the link was made at.
            return Ok(Token {
                since: t.since,
                upto: self.log.len(),
                offset: 0,
                generation: self.generation,
                select: t.select,
            });
        }
        Ok(Token {
            since: None,
            upto: self.log.len(),
            offset: 0,
            generation: self.generation,
            select: q
                .get("$select")
                .cloned()
                .unwrap_or_else(|| default_select.to_string()),
        })
    }

    /// Ids whose latest event in the session's log window concerns them, in
    /// order of that event (users).
    fn changed_users(&self, t: &Token) -> Vec<(String, Option<&'static str>)> {
        let mut last: HashMap<&str, (usize, Option<&'static str>)> = HashMap::new();
        for (i, e) in self.log[t.since.unwrap_or(0)..t.upto].iter().enumerate() {
            match e {
                Event::User(id) => {
                    last.insert(id, (i, None));
                }
                Event::UserRemoved(id, why) => {
                    last.insert(id, (i, Some(*why)));
                }
                _ => {}
            }
        }
        let mut v: Vec<_> = last
            .into_iter()
            .map(|(id, (i, removed))| (i, id.to_string(), removed))
            .collect();
        v.sort();
        v.into_iter().map(|(_, id, r)| (id, r)).collect()
    }

    fn render_user(&self, id: &str, removed: Option<&str>, select: &[&str]) -> Value {
        if let Some(reason) = removed {
            return json!({"id": id, "@removed": {"reason": reason}});
        }
        match self.users.get(id) {
            // Deleted later than the session began: reported next round.
            None => json!({"id": id, "@removed": {"reason": "changed"}}),
            Some(u) => {
                let mut o = Map::new();
                o.insert("id".into(), json!(id));
                for p in select {
                    // Properties never set are left out.
                    if let Some(v) = u.get(*p) {
                        o.insert((*p).to_string(), v.clone());
                    }
                }
                Value::Object(o)
            }
        }
    }

    /// Group entries of a session: (`id`, whether to show its properties,
    /// whether removed (reason), members (id, type, removed)).
    fn group_entries(&self, t: &Token) -> Vec<GroupEntry> {
        let chunk = self.options.member_chunk.max(1);
        let mut out = Vec::new();
        let push = |out: &mut Vec<GroupEntry>,
                    id: &str,
                    attrs: bool,
                    members: Vec<(String, &'static str, bool)>| {
            if members.is_empty() {
                out.push(GroupEntry {
                    id: id.to_string(),
                    attrs,
                    removed: None,
                    members: Vec::new(),
                });
            }
            for (i, c) in members.chunks(chunk).enumerate() {
                out.push(GroupEntry {
                    id: id.to_string(),
                    attrs: attrs && i == 0,
                    removed: None,
                    members: c.to_vec(),
                });
            }
        };
        match t.since {
            None => {
                for (id, g) in &self.groups {
                    let members = g
                        .members
                        .iter()
                        .map(|(m, k)| (m.clone(), *k, false))
                        .collect();
                    push(&mut out, id, true, members);
                }
            }
            Some(since) => {
                // Per group: attributes changed? removed? net member changes.
                let mut order: Vec<String> = Vec::new();
                let mut state: HashMap<String, GroupDelta> = HashMap::new();
                for e in &self.log[since..t.upto] {
                    let gid = match e {
                        Event::GroupAttrs(id) | Event::GroupRemoved(id, _) => id,
                        Event::Member { group, .. } => group,
                        _ => continue,
                    };
                    if !state.contains_key(gid) {
                        order.push(gid.clone());
                    }
                    let st = state.entry(gid.clone()).or_default();
                    match e {
                        Event::GroupAttrs(_) => st.0 = true,
                        Event::GroupRemoved(_, why) => st.1 = Some(*why),
                        Event::Member {
                            member,
                            kind,
                            added,
                            ..
                        } => {
                            st.2.insert(member.clone(), (*kind, *added));
                        }
                        _ => {}
                    }
                }
                for gid in order {
                    let (attrs, removed, members) = state.remove(&gid).unwrap();
                    if removed.is_some() || !self.groups.contains_key(&gid) {
                        out.push(GroupEntry {
                            id: gid,
                            attrs: false,
                            removed: Some(removed.unwrap_or("changed")),
                            members: Vec::new(),
                        });
                        continue;
                    }
                    let members = members
                        .into_iter()
                        .map(|(m, (k, added))| (m, k, !added))
                        .collect();
                    push(&mut out, &gid, attrs, members);
                }
            }
        }
        out
    }

    fn render_group(&self, e: &GroupEntry, select: &[&str]) -> Value {
        let mut o = Map::new();
        o.insert("id".into(), json!(e.id));
        if let Some(reason) = e.removed {
            o.insert("@removed".into(), json!({"reason": reason}));
            return Value::Object(o);
        }
        if e.attrs {
            if let Some(g) = self.groups.get(&e.id) {
                for p in select {
                    if *p == "members" {
                        continue;
                    }
                    if let Some(v) = g.props.get(*p) {
                        o.insert((*p).to_string(), v.clone());
                    }
                }
            }
        }
        if select.contains(&"members") && (!e.members.is_empty() || e.attrs) {
            let members: Vec<Value> = e
                .members
                .iter()
                .map(|(id, kind, removed)| {
                    if *removed {
                        json!({"@odata.type": kind, "id": id, "@removed": {"reason": "deleted"}})
                    } else {
                        json!({"@odata.type": kind, "id": id})
                    }
                })
                .collect();
            o.insert("members@delta".into(), Value::Array(members));
        }
        Value::Object(o)
    }
}

/// Per group in a delta window: attributes changed, removed (reason), and
/// the last add (true) or remove (false) of each member with its type.
type GroupDelta = (
    bool,
    Option<&'static str>,
    BTreeMap<String, (&'static str, bool)>,
);

#[derive(Debug, Clone)]
struct GroupEntry {
    id: String,
    attrs: bool,
    removed: Option<&'static str>,
    members: Vec<(String, &'static str, bool)>,
}

fn bad_token(which: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        &format!("Invalid {which} value."),
        None,
    )
}

/// A Graph error response.
fn error(status: StatusCode, code: &str, message: &str, retry_after: Option<u64>) -> Response {
    let body = json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": "2024-05-01T10:00:00",
                "request-id": uuid::Uuid::new_v4().to_string(),
                "client-request-id": uuid::Uuid::new_v4().to_string(),
            }
        }
    });
    let mut r = (status, axum::Json(body)).into_response();
    if let Some(s) = retry_after {
        r.headers_mut().insert(
            "retry-after",
            HeaderValue::from_str(&s.to_string()).unwrap(),
        );
    }
    r
}

fn page_response(
    graph_url: &str,
    collection: &str,
    select: &str,
    value: Vec<Value>,
    next: Option<Token>,
    delta: Token,
) -> Response {
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        json!(format!("{graph_url}/$metadata#{collection}({select})")),
    );
    match next {
        Some(t) => {
            body.insert(
                "@odata.nextLink".into(),
                json!(format!(
                    "{graph_url}/{collection}/delta?$skiptoken={}",
                    encode(&t)
                )),
            );
        }
        None => {
            body.insert(
                "@odata.deltaLink".into(),
                json!(format!(
                    "{graph_url}/{collection}/delta?$deltatoken={}",
                    encode(&delta)
                )),
            );
        }
    }
    body.insert("value".into(), Value::Array(value));
    axum::Json(Value::Object(body)).into_response()
}

/// Waits at the gate when this is the paused path's first request.
async fn hold_if_paused(shared: &Shared, path: &str) {
    let gate = {
        let mut s = shared.inner.lock().unwrap();
        match &s.faults.pause {
            Some((p, _)) if p == path => s.faults.pause.take().map(|(_, g)| g),
            _ => None,
        }
    };
    if let Some(gate) = gate {
        gate.reached.notify_one();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), gate.released.notified())
            .await;
    }
}

async fn users_delta(
    State(shared): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    hold_if_paused(&shared, uri.path()).await;
    let mut s = shared.inner.lock().unwrap();
    s.paths.push(uri.to_string());
    if let Err(r) = s.admit(&headers, &shared.shutdown) {
        return r;
    }
    let t = match s.session(&q, "id,displayName,userPrincipalName") {
        Ok(t) => t,
        Err(r) => return r,
    };
    let select: Vec<&str> = t.select.split(',').map(str::trim).collect();
    let size = s.options.page_size.max(1);
    let (items, total): (Vec<Value>, usize) = match t.since {
        None => {
            let total = s.users.len();
            let items = s
                .users
                .keys()
                .skip(t.offset)
                .take(size)
                .map(|id| s.render_user(id, None, &select))
                .collect();
            (items, total)
        }
        Some(_) => {
            let changed = s.changed_users(&t);
            let total = changed.len();
            let items = changed
                .iter()
                .skip(t.offset)
                .take(size)
                .map(|(id, r)| s.render_user(id, *r, &select))
                .collect();
            (items, total)
        }
    };
    let end = t.offset + size;
    let next = (end < total).then(|| Token {
        offset: end,
        select: t.select.clone(),
        ..t
    });
    let delta = Token {
        since: Some(t.upto),
        upto: t.upto,
        offset: 0,
        generation: s.generation,
        select: t.select.clone(),
    };
    page_response(&s.graph_url, "users", &t.select, items, next, delta)
}

async fn groups_delta(
    State(shared): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    hold_if_paused(&shared, uri.path()).await;
    let mut s = shared.inner.lock().unwrap();
    s.paths.push(uri.to_string());
    if let Err(r) = s.admit(&headers, &shared.shutdown) {
        return r;
    }
    let t = match s.session(&q, "displayName,description") {
        Ok(t) => t,
        Err(r) => return r,
    };
    let select: Vec<&str> = t.select.split(',').map(str::trim).collect();
    let size = s.options.page_size.max(1);
    let entries = s.group_entries(&t);
    // A page ends at `size` entries, or where a group would appear twice:
    // its further members go on the next page.
    let mut items = Vec::new();
    let mut on_page = BTreeSet::new();
    let mut i = t.offset;
    while i < entries.len() && items.len() < size && on_page.insert(entries[i].id.clone()) {
        items.push(s.render_group(&entries[i], &select));
        i += 1;
    }
    let next = (i < entries.len()).then(|| Token {
        offset: i,
        select: t.select.clone(),
        ..t
    });
    let delta = Token {
        since: Some(t.upto),
        upto: t.upto,
        offset: 0,
        generation: s.generation,
        select: t.select.clone(),
    };
    page_response(&s.graph_url, "groups", &t.select, items, next, delta)
}

/// Graph's 404 for a group id it does not know.
fn no_such_group(id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "Request_ResourceNotFound",
        &format!("Resource '{id}' does not exist or one of its queried reference-property objects are not present."),
        None,
    )
}

async fn group_get(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let mut s = shared.inner.lock().unwrap();
    s.paths.push(uri.to_string());
    if let Err(r) = s.admit(&headers, &shared.shutdown) {
        return r;
    }
    let Some(g) = s.groups.get(&id) else {
        return no_such_group(&id);
    };
    let select = q
        .get("$select")
        .cloned()
        .unwrap_or_else(|| "id,displayName".into());
    let mut o = Map::new();
    o.insert(
        "@odata.context".into(),
        json!(format!(
            "{}/$metadata#groups({select})/$entity",
            s.graph_url
        )),
    );
    for p in select.split(',') {
        if let Some(v) = g.props.get(p.trim()) {
            o.insert(p.trim().to_string(), v.clone());
        }
    }
    axum::Json(Value::Object(o)).into_response()
}

/// `GET /groups/{id}/members?$select=id` (List group members,
/// https://learn.microsoft.com/en-us/graph/api/group-list-members): direct
/// members with their `@odata.type`, `page_size` a page, `@odata.nextLink`
/// (`$skiptoken`) until the last page, which has neither link.
async fn group_members(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let mut s = shared.inner.lock().unwrap();
    s.paths.push(uri.to_string());
    if let Err(r) = s.admit(&headers, &shared.shutdown) {
        return r;
    }
    let Some(g) = s.groups.get(&id) else {
        return no_such_group(&id);
    };
    let offset: usize = q
        .get("$skiptoken")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let size = s.options.page_size.max(1);
    let all: Vec<(&String, &&str)> = g.members.iter().collect();
    let value: Vec<Value> = all
        .iter()
        .skip(offset)
        .take(size)
        .map(|(m, kind)| json!({"@odata.type": kind, "id": m}))
        .collect();
    let mut o = Map::new();
    o.insert(
        "@odata.context".into(),
        json!(format!("{}/$metadata#directoryObjects(id)", s.graph_url)),
    );
    o.insert("value".into(), Value::Array(value));
    if offset + size < all.len() {
        o.insert(
            "@odata.nextLink".into(),
            json!(format!(
                "{}/groups/{id}/members?$select=id&$skiptoken={}",
                s.graph_url,
                offset + size
            )),
        );
    }
    axum::Json(Value::Object(o)).into_response()
}

/// The token endpoint error body, as the identity platform sends it.
fn token_error(status: StatusCode, error: &str, code: u32, description: &str) -> Response {
    let trace = uuid::Uuid::new_v4();
    let correlation = uuid::Uuid::new_v4();
    let body = json!({
        "error": error,
        "error_description": format!(
            "AADSTS{code}: {description} Trace ID: {trace} Correlation ID: {correlation} Timestamp: 2024-05-01 10:00:00Z"
        ),
        "error_codes": [code],
        "timestamp": "2024-05-01 10:00:00Z",
        "trace_id": trace.to_string(),
        "correlation_id": correlation.to_string(),
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    (status, axum::Json(body)).into_response()
}

async fn token(
    State(shared): State<Shared>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut s = shared.inner.lock().unwrap();
    s.token_requests += 1;
    if let Some((n, status, retry_after)) = s.faults.token_fail {
        s.faults.token_fail = (n > 1).then(|| (n - 1, status, retry_after));
        let mut r = token_error(
            StatusCode::from_u16(status).unwrap(),
            "temporarily_unavailable",
            90033,
            "A transient error has occurred. Please try again.",
        );
        if let Some(secs) = retry_after {
            r.headers_mut().insert(
                "retry-after",
                HeaderValue::from_str(&secs.to_string()).unwrap(),
            );
        }
        return r;
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    // The secret may come in the body or as HTTP Basic.
    let (mut client_id, mut secret) = (
        form.get("client_id").cloned(),
        form.get("client_secret").cloned(),
    );
    if let Some(basic) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    {
        if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(basic) {
            let raw = String::from_utf8_lossy(&raw).to_string();
            if let Some((id, sec)) = raw.split_once(':') {
                let dec = |x: &str| {
                    url::form_urlencoded::parse(format!("x={x}").as_bytes())
                        .next()
                        .map(|(_, v)| v.into_owned())
                };
                client_id = dec(id);
                secret = dec(sec);
            }
        }
    }
    let o = s.options.clone();
    if tenant != o.directory_id {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."),
        );
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return token_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    if client_id.as_deref() != Some(o.client_id.as_str()) {
        return token_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{}' was not found in the directory '{tenant}'.",
                client_id.unwrap_or_default()
            ),
        );
    }
    if secret.as_deref() != Some(o.client_secret.as_str()) {
        return token_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            &format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.", o.client_id),
        );
    }
    if form.get("scope").map(String::as_str) != Some("https://graph.microsoft.com/.default") {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            "The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).",
        );
    }
    let access = format!(
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.{}",
        uuid::Uuid::new_v4().simple()
    );
    s.tokens.insert(access.clone());
    axum::Json(json!({
        "token_type": "Bearer",
        "expires_in": o.token_lifetime,
        "ext_expires_in": o.token_lifetime,
        "access_token": access,
    }))
    .into_response()
}
