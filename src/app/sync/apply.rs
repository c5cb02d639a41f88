//! Applying a directory-sync plan: one write transaction for every user,
//! group, membership, link and the source's cursor, so a run is applied
//! whole or not at all, and the tenant's epoch moves once (cache
//! invalidation is exactly as for SCIM writes).
//!
//! Documents go through the same preparation as a SCIM POST body, so a
//! synced user is indistinguishable from a pushed one to the rest of the
//! service.

use std::collections::HashSet;

use scim::schema::ResourceKind;
use serde_json::{json, Map, Value};

use super::plan::{GroupOp, Plan, UserOp};
use crate::app::resources::{prepare, Writer};
use crate::app::{App, Result, SYNC_URN};
use crate::domain::{ResourceId, TenantId, Timestamp};
use crate::store::{
    Dialect, EncodedInsert, EncodedLinks, Error as StoreError, StoredResource, SyncLink, WriteTx,
};
use crate::sync::{ExternalGroup, ExternalUser};

/// Where directory sync records a user's source and DN in its document.
pub const SYNC_USER_URN: &str = "urn:rolebridge:params:sync:1.0:User";

/// Rows a run must create or remove before the store's statistics are
/// refreshed (a first sync; a reorganisation).
const ANALYZE_AFTER: u64 = 10_000;

/// What applying changed beyond the plan: entries the store refused.
#[derive(Debug, Default)]
pub struct Applied {
    pub skipped: Vec<String>,
    /// Users whose effective permission set changed (from the commit's own
    /// derivation: no whole-tenant computation).
    pub permissions_changed: usize,
}

/// New users per encoded chunk: what one trip through the channel carries.
const CREATE_CHUNK: usize = 200;

/// What the bulk writer of a first sync runs, in the order sent: every
/// chunk of new users, then every chunk of their links. Each chunk's users
/// followed by their links was slower (100,000 users on SQLite: 7.6 s for
/// both, against 5.9 s one table after the other): the two tables' indexes
/// then compete for the page cache.
enum Bulk {
    Users(EncodedUsers),
    /// Links of users the encoder accepted. One the database then refuses
    /// has its link removed again ([`App::apply_sync`]).
    Links(EncodedLinks),
}

/// One chunk of new users, encoded for the store: the INSERTs and which
/// plan operations they hold.
struct EncodedUsers {
    insert: EncodedInsert,
    /// The index in `plan.users` of each resource in `insert`, in order.
    accepted: Vec<usize>,
    /// Operations whose document no resource may hold, with why.
    skipped: Vec<(usize, String)>,
}

/// Builds and encodes one chunk of new users' documents (most of a first
/// sync's CPU outside the database).
fn encode_users(
    plan: &Plan,
    chunk: &[usize],
    source: &str,
    ts: Timestamp,
    dialect: Dialect,
    tenant: TenantId,
) -> Result<EncodedUsers> {
    let mut docs = Vec::with_capacity(chunk.len());
    let mut accepted = Vec::with_capacity(chunk.len());
    let mut skipped = Vec::new();
    for &i in chunk {
        let UserOp::Create { id, user, .. } = &plan.users[i] else {
            continue;
        };
        match checked_doc(ResourceKind::User, user_doc(user, source))? {
            Ok(doc) => {
                docs.push(new_resource(id, doc, ts));
                accepted.push(i);
            }
            Err(detail) => skipped.push((i, detail)),
        }
    }
    Ok(EncodedUsers {
        insert: EncodedInsert::new(dialect, tenant, ResourceKind::User, &docs),
        accepted,
        skipped,
    })
}

/// The cursor to save with the changes.
pub struct CursorUpdate<'a> {
    /// The run's lease; the write is refused if another run holds it now.
    pub lease_owner: &'a str,
    /// The run, named as the cause of the change-feed events it produces.
    pub run_id: &'a str,
    pub cursor: Option<&'a str>,
    /// Set when the run was a complete read (a reconcile).
    pub full_at: Option<Timestamp>,
    /// The source was pointed at this tenant from another: release its
    /// links in every other tenant.
    pub release_other_tenants: bool,
}

impl App {
    /// Applies a plan in one transaction. The plan is consumed: the new
    /// users' records are dropped once they are written, so the rest of a
    /// first sync's write does not hold them.
    pub async fn apply_sync(
        &self,
        tenant: TenantId,
        source: &str,
        mut plan: Plan,
        cursor: CursorUpdate<'_>,
    ) -> Result<Applied> {
        let counts = plan.counts();
        let mut applied = Applied::default();
        let mut refused: HashSet<String> = HashSet::new();
        let ts = self.clock().now();
        let mut tx = self.store.begin_write().await?;
        tx.set_cause(crate::domain::ChangeCause::Sync {
            source: source.to_string(),
            run_id: cursor.run_id.to_string(),
        });
        let mut phases = Phases::start();
        // Deletions first: a re-created account takes its old userName.
        for op in &plan.users {
            if let UserOp::Delete { id, .. } = op {
                tx.delete(tenant, ResourceKind::User, &ResourceId::from_client(id))
                    .await?;
            }
        }
        // New users in bulk (a first sync creates the whole directory), a
        // chunk at a time so their documents are never all in memory. A
        // task of its own writes each chunk, then the new users' links,
        // while this one builds, serialises and binds the next, so the
        // database and the encoding use both CPUs. The encoding stays on
        // this task: the memory the plan freed is reused for it (on a
        // thread of its own it added 15 to 25 MiB of fresh pages to a
        // 100,000-user run's peak).
        let (chunks, mut encoded) = tokio::sync::mpsc::channel::<Bulk>(1);
        let writer = tokio::spawn(async move {
            let mut refusals: Vec<(usize, StoreError)> = Vec::new();
            while let Some(work) = encoded.recv().await {
                let chunk = match work {
                    Bulk::Users(chunk) => chunk,
                    Bulk::Links(links) => match tx.upsert_encoded_links(links).await {
                        Ok(()) => continue,
                        Err(e) => return (tx, Err(e)),
                    },
                };
                match tx.insert_encoded(chunk.insert).await {
                    Ok(results) => refusals.extend(
                        chunk
                            .accepted
                            .into_iter()
                            .zip(results)
                            .filter_map(|(i, r)| r.map(|e| (i, e))),
                    ),
                    Err(e) => return (tx, Err(e)),
                }
            }
            (tx, Ok(refusals))
        });
        let creates: Vec<usize> = plan
            .users
            .iter()
            .enumerate()
            .filter(|(_, op)| matches!(op, UserOp::Create { .. }))
            .map(|(i, _)| i)
            .collect();
        let dialect = self.store.dialect();
        let mut encoding = Ok(());
        for chunk in creates.chunks(CREATE_CHUNK) {
            let next = match encode_users(&plan, chunk, source, ts, dialect, tenant) {
                Ok(next) => next,
                Err(e) => {
                    encoding = Err(e);
                    break;
                }
            };
            for &(i, ref detail) in &next.skipped {
                if let UserOp::Create { id, user, .. } = &plan.users[i] {
                    skip(&mut applied, &mut refused, id, &user.user_name, detail);
                }
            }
            // Closed: the writer stopped on an error, returned below.
            if chunks.send(Bulk::Users(next)).await.is_err() {
                break;
            }
        }
        if encoding.is_ok() {
            // The encoder's skips are in `refused` by now.
            for chunk in creates.chunks(CREATE_CHUNK) {
                let links: Vec<SyncLink> = chunk
                    .iter()
                    .filter_map(|&i| plan.users[i].link(source, tenant))
                    .filter(|l| !refused.contains(&l.resource_id))
                    .collect();
                let next = Bulk::Links(EncodedLinks::new(dialect, &links));
                if chunks.send(next).await.is_err() {
                    break;
                }
            }
        }
        drop(chunks);
        // A panicking writer takes the transaction with it: rolled back.
        let (returned, written) = writer
            .await
            .map_err(|e| crate::app::Error::Internal(format!("writing new users failed: {e}")))?;
        tx = returned;
        encoding?;
        for (i, e) in written? {
            if let UserOp::Create { id, user, .. } = &plan.users[i] {
                refuse(e, &mut applied, &mut refused, id, &user.user_name)?;
                // Its link was written before the refusal was known.
                tx.delete_sync_link(source, ResourceKind::User, &user.key)
                    .await?;
            }
        }
        // The new users are written: their records go, and the memory goes
        // back to the OS before the rest of the write grows SQLite's page
        // cache (at 100,000 users on SQLite the run's peak RSS was 189 MiB,
        // in the members step; now it is the plan's, 165 MiB).
        if !creates.is_empty() {
            plan.users.retain(|op| !matches!(op, UserOp::Create { .. }));
            plan.users.shrink_to_fit();
            crate::telemetry::return_freed_memory();
        }
        phases.mark("users created");
        for op in &plan.users {
            match op {
                UserOp::Create { .. } => {}
                UserOp::Update { id, user, .. } => {
                    let doc = user_doc(user, source);
                    let Some(doc) = valid_doc(
                        ResourceKind::User,
                        doc,
                        &mut applied,
                        &mut refused,
                        id,
                        &user.user_name,
                    )?
                    else {
                        // The entry is unusable, but a disable must still
                        // revoke access.
                        if !user.active {
                            deactivate(&mut tx, tenant, id, ts).await?;
                        }
                        continue;
                    };
                    if let Err(e) = replace(&mut tx, tenant, ResourceKind::User, id, doc, ts).await
                    {
                        refuse(e, &mut applied, &mut refused, id, &user.user_name)?;
                        // The rename is refused, but a disable in the same
                        // change must still revoke access.
                        if !user.active {
                            deactivate(&mut tx, tenant, id, ts).await?;
                        }
                    }
                }
                UserOp::Deactivate { id, .. } => deactivate(&mut tx, tenant, id, ts).await?,
                UserOp::Delete { .. } => {}
            }
        }
        phases.mark("users updated");
        let mut new_groups = Vec::new();
        let mut new_names = Vec::new();
        for op in &plan.groups {
            if let GroupOp::Create { id, group } = op {
                let doc = group_doc(group, source);
                if let Some(doc) = valid_doc(
                    ResourceKind::Group,
                    doc,
                    &mut applied,
                    &mut refused,
                    id,
                    &group.display_name,
                )? {
                    new_groups.push(new_resource(id, doc, ts));
                    new_names.push((id.as_str(), group.display_name.as_str()));
                }
            }
        }
        let results = tx
            .insert_many(tenant, ResourceKind::Group, &new_groups)
            .await?;
        for ((id, name), result) in new_names.into_iter().zip(results) {
            if let Some(e) = result {
                refuse(e, &mut applied, &mut refused, id, name)?;
            }
        }
        for op in &plan.groups {
            match op {
                GroupOp::Create { .. } => {}
                GroupOp::Update { id, group } => {
                    let doc = group_doc(group, source);
                    let Some(doc) = valid_doc(
                        ResourceKind::Group,
                        doc,
                        &mut applied,
                        &mut refused,
                        id,
                        &group.display_name,
                    )?
                    else {
                        continue;
                    };
                    if let Err(e) = replace(&mut tx, tenant, ResourceKind::Group, id, doc, ts).await
                    {
                        refuse(e, &mut applied, &mut refused, id, &group.display_name)?;
                    }
                }
                GroupOp::Delete { id, .. } => {
                    tx.delete(tenant, ResourceKind::Group, &ResourceId::from_client(id))
                        .await?;
                }
            }
        }
        phases.mark("groups");
        // Every group's additions in shared statements, then each group's
        // removals (additions before removals, as for one group before).
        let groups: Vec<(ResourceId, &super::plan::MemberDelta)> = plan
            .members
            .iter()
            .filter(|(group, _)| !refused.contains(*group))
            .map(|(group, delta)| (ResourceId::from_client(group), delta))
            .collect();
        let edges: Vec<(&ResourceId, &str, &'static str)> = groups
            .iter()
            .flat_map(|(gid, delta)| {
                delta
                    .add
                    .iter()
                    .filter(|(id, _)| !refused.contains(id))
                    .map(move |(id, kind)| (gid, id.as_str(), kind.name()))
            })
            .collect();
        if !edges.is_empty() {
            tx.add_edges(tenant, &edges).await?;
        }
        for (gid, delta) in &groups {
            if !delta.remove.is_empty() {
                tx.remove_members(tenant, gid, &delta.remove).await?;
            }
        }
        phases.mark("members");
        let links: Vec<&SyncLink> = plan
            .link_upserts
            .iter()
            .filter(|l| !refused.contains(&l.resource_id))
            .collect();
        tx.upsert_sync_links(&links).await?;
        // Changed users' links, built from their operations a chunk at a
        // time (the new users' went with their chunks, and their operations
        // are gone from the plan).
        let mut user_links = plan
            .users
            .iter()
            .filter_map(|op| op.link(source, tenant))
            .filter(|l| !refused.contains(&l.resource_id));
        loop {
            let chunk: Vec<SyncLink> = user_links.by_ref().take(1000).collect();
            if chunk.is_empty() {
                break;
            }
            tx.upsert_sync_links(&chunk.iter().collect::<Vec<_>>())
                .await?;
        }
        for (kind, key) in &plan.link_deletes {
            tx.delete_sync_link(source, *kind, key).await?;
        }
        if cursor.release_other_tenants {
            let released = tx.release_sync_links_besides(source, tenant).await?;
            tracing::warn!(
                source,
                released,
                "the source moved to another tenant; its links in the old one are released"
            );
        }
        phases.mark("links");
        tx.save_sync_cursor(
            source,
            tenant,
            cursor.lease_owner,
            cursor.cursor,
            cursor.full_at,
        )
        .await?;
        applied.permissions_changed = self.commit(tx).await?.permissions_changed;
        phases.mark("commit");
        tracing::debug!(source, phases = %phases, "sync apply phases");
        let c = counts;
        let written = c.users_created + c.groups_created + c.members_added + c.members_removed;
        if written >= ANALYZE_AFTER {
            // Statistics are an optimisation: a failure here is logged, and
            // the committed run stands.
            if let Err(e) = self.store.analyze_sync_tables().await {
                tracing::warn!(source, error = %e, "refreshing table statistics after a bulk sync failed");
            }
        }
        Ok(applied)
    }
}

/// Where an apply's time went, for the debug log (a large first sync
/// spends seconds here; which step is the one to look at).
struct Phases {
    last: std::time::Instant,
    done: Vec<(&'static str, u128)>,
}

impl Phases {
    fn start() -> Self {
        Phases {
            last: std::time::Instant::now(),
            done: Vec::new(),
        }
    }

    fn mark(&mut self, what: &'static str) {
        tracing::debug!(
            what,
            peak_rss_kib = crate::telemetry::peak_rss_kib(),
            "sync apply step done"
        );
        self.done.push((what, self.last.elapsed().as_millis()));
        self.last = std::time::Instant::now();
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (what, ms)) in self.done.iter().enumerate() {
            write!(f, "{}{what} {ms} ms", if i == 0 { "" } else { ", " })?;
        }
        Ok(())
    }
}

/// The stored document of a directory entry, or `None` when the directory
/// sent something no resource may hold (a NUL, an over-long or empty name):
/// the entry is skipped and reported, like a uniqueness clash, and the rest
/// of the run applies. One bad entry must not stop a source for good.
fn valid_doc(
    kind: ResourceKind,
    doc: Value,
    applied: &mut Applied,
    refused: &mut HashSet<String>,
    id: &str,
    name: &str,
) -> Result<Option<Value>> {
    match checked_doc(kind, doc)? {
        Ok(doc) => Ok(Some(doc)),
        Err(detail) => {
            skip(applied, refused, id, name, &detail);
            Ok(None)
        }
    }
}

/// The prepared document, or why the entry cannot be stored (`Err` inside:
/// the entry is skipped); the outer error is a fault that stops the apply.
fn checked_doc(kind: ResourceKind, doc: Value) -> Result<Result<Value, String>> {
    match prepare(kind, doc, Writer::Directory) {
        Ok((doc, _, _)) => Ok(Ok(doc)),
        Err(crate::app::Error::Scim(_, detail)) => Ok(Err(detail)),
        Err(e) => Err(e),
    }
}

/// Reports an entry whose document is unusable and leaves it out of the run.
fn skip(applied: &mut Applied, refused: &mut HashSet<String>, id: &str, name: &str, detail: &str) {
    applied
        .skipped
        .push(format!("'{}': {detail}", name.replace('\0', "\\u0000")));
    refused.insert(id.to_string());
}

/// A uniqueness clash skips the entry (it is reported and retried next
/// run); any other error aborts the whole apply.
fn refuse(
    e: StoreError,
    applied: &mut Applied,
    refused: &mut HashSet<String>,
    id: &str,
    name: &str,
) -> Result<()> {
    match e {
        StoreError::Uniqueness { attribute, value } => {
            applied.skipped.push(format!(
                "'{name}': {attribute} '{value}' is already taken by a resource this source does not own"
            ));
            refused.insert(id.to_string());
            Ok(())
        }
        other => Err(other.into()),
    }
}

fn new_resource(id: &str, doc: Value, ts: Timestamp) -> StoredResource {
    StoredResource {
        id: ResourceId::from_client(id),
        doc,
        created: ts,
        last_modified: ts,
        version: 1,
    }
}

async fn deactivate(
    tx: &mut WriteTx,
    tenant: TenantId,
    id: &str,
    ts: Timestamp,
) -> Result<(), StoreError> {
    let rid = ResourceId::from_client(id);
    if let Some(cur) = tx.get_for_update(tenant, ResourceKind::User, &rid).await? {
        let mut doc = cur.doc.clone();
        doc["active"] = Value::Bool(false);
        update(tx, tenant, ResourceKind::User, cur, doc, ts).await?;
    }
    Ok(())
}

async fn replace(
    tx: &mut WriteTx,
    tenant: TenantId,
    kind: ResourceKind,
    id: &str,
    doc: Value,
    ts: Timestamp,
) -> Result<(), StoreError> {
    let rid = ResourceId::from_client(id);
    match tx.get_for_update(tenant, kind, &rid).await? {
        Some(cur) => update(tx, tenant, kind, cur, doc, ts).await,
        None => Ok(()),
    }
}

async fn update(
    tx: &mut WriteTx,
    tenant: TenantId,
    kind: ResourceKind,
    cur: StoredResource,
    doc: Value,
    ts: Timestamp,
) -> Result<(), StoreError> {
    let next = cur.next_version(doc, ts);
    tx.update(tenant, kind, &next, cur.version).await
}

fn sync_ext(source: &str, locator: Option<&str>) -> Value {
    let mut ext = Map::new();
    ext.insert("source".into(), json!(source));
    if let Some(dn) = locator {
        ext.insert("dn".into(), json!(dn));
    }
    Value::Object(ext)
}

/// The SCIM User a directory user becomes.
pub fn user_doc(u: &ExternalUser, source: &str) -> Value {
    let mut doc = Map::new();
    doc.insert(
        "schemas".into(),
        json!([ResourceKind::User.core_schema().id]),
    );
    doc.insert("userName".into(), json!(u.user_name));
    if let Some(x) = &u.external_id {
        doc.insert("externalId".into(), json!(x));
    }
    if let Some(x) = &u.display_name {
        doc.insert("displayName".into(), json!(x));
    }
    let mut name = Map::new();
    if let Some(x) = &u.given_name {
        name.insert("givenName".into(), json!(x));
    }
    if let Some(x) = &u.family_name {
        name.insert("familyName".into(), json!(x));
    }
    if !name.is_empty() {
        doc.insert("name".into(), Value::Object(name));
    }
    if !u.emails.is_empty() {
        let emails: Vec<Value> = u
            .emails
            .iter()
            .enumerate()
            .map(|(i, e)| json!({"value": e, "type": "work", "primary": i == 0}))
            .collect();
        doc.insert("emails".into(), Value::Array(emails));
    }
    doc.insert("active".into(), json!(u.active));
    doc.insert(SYNC_USER_URN.into(), sync_ext(source, u.locator.as_deref()));
    Value::Object(doc)
}

/// The SCIM Group a directory group becomes (members live in their table).
pub fn group_doc(g: &ExternalGroup, source: &str) -> Value {
    let mut doc = Map::new();
    doc.insert(
        "schemas".into(),
        json!([ResourceKind::Group.core_schema().id]),
    );
    doc.insert("displayName".into(), json!(g.display_name));
    if let Some(x) = &g.external_id {
        doc.insert("externalId".into(), json!(x));
    }
    doc.insert(SYNC_URN.into(), sync_ext(source, g.locator.as_deref()));
    Value::Object(doc)
}

/// Per-source run counters and the held flag, for `/metrics`.
#[derive(Debug, Default)]
pub struct SyncMetrics {
    sources: std::sync::Mutex<std::collections::BTreeMap<String, SourceMetrics>>,
}

#[derive(Debug, Default, Clone)]
struct SourceMetrics {
    runs: std::collections::BTreeMap<String, u64>,
    held: bool,
    last_success: Option<i64>,
}

impl SyncMetrics {
    /// Counts a finished run. A held run raises the held flag; an applied
    /// one (including a confirmed one) lowers it; a dry run leaves it.
    pub fn record(&self, source: &str, outcome: &str) {
        let Ok(mut all) = self.sources.lock() else {
            return;
        };
        let m = all.entry(source.to_string()).or_default();
        *m.runs.entry(outcome.to_string()).or_default() += 1;
        match outcome {
            "held" => m.held = true,
            "applied" | "unchanged" => {
                m.held = false;
                m.last_success = Some(time::OffsetDateTime::now_utc().unix_timestamp());
            }
            _ => {}
        }
    }

    /// Prometheus text.
    pub fn text(&self) -> String {
        let Ok(all) = self.sources.lock() else {
            return String::new();
        };
        if all.is_empty() {
            return String::new();
        }
        let mut out = String::from(
            "# HELP rolebridge_sync_runs_total Directory sync runs, by source and outcome.\n\
             # TYPE rolebridge_sync_runs_total counter\n",
        );
        for (source, m) in all.iter() {
            for (outcome, n) in &m.runs {
                out.push_str(&format!(
                    "rolebridge_sync_runs_total{{source=\"{source}\",outcome=\"{outcome}\"}} {n}\n"
                ));
            }
        }
        out.push_str(
            "# HELP rolebridge_sync_held 1 while a source's last run is held by the deletion guard.\n\
             # TYPE rolebridge_sync_held gauge\n",
        );
        for (source, m) in all.iter() {
            out.push_str(&format!(
                "rolebridge_sync_held{{source=\"{source}\"}} {}\n",
                u8::from(m.held)
            ));
        }
        out.push_str(
            "# HELP rolebridge_sync_last_success_timestamp_seconds When a source's last run applied.\n\
             # TYPE rolebridge_sync_last_success_timestamp_seconds gauge\n",
        );
        for (source, m) in all.iter() {
            if let Some(t) = m.last_success {
                out.push_str(&format!(
                    "rolebridge_sync_last_success_timestamp_seconds{{source=\"{source}\"}} {t}\n"
                ));
            }
        }
        out
    }
}
