//! Issue #16's end-to-end test: three `rolebridge serve` replicas on one
//! fresh PostgreSQL database and one Redis, behind a real HAProxy on
//! loopback (tests/support/haproxy.rs), driven like an identity provider
//! drives them (creates, PATCHes, group pushes) through the balancer.
//!
//! - `kill_nine_under_load_loses_no_acknowledged_write_and_every_replica_checks_fresh`:
//!   one replica is killed -9 mid-load and restarted on its port; every
//!   acknowledged write is read back through each replica, and after each
//!   acknowledged grant or revocation every live replica is asked at once.
//! - `one_tenant_quota_across_the_cluster_behind_haproxy`: a burst spread
//!   round robin over the three is admitted once by the cluster.
//! - `sigterm_drops_no_request_and_a_scheduled_source_runs_once_at_a_time`:
//!   a replica SIGTERM'd under steady load, and an LDAP source scheduled
//!   on all three replicas whose runs never overlap.
//!
//! Each test has its own database, tenants, Redis key prefix and HAProxy,
//! so they run in parallel; every load is bounded in requests and time.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::cache::REDIS;
use crate::durability::{cli, cli_token, spawn_server, spawn_server_on};
use crate::graceful_shutdown::{sigterm, wait_exit};
use crate::mapping_admin::V1;
use crate::quota_cluster::{decisions, key_prefix, metrics_text, series};
use crate::rate_limits::retry_after_of_429;
use crate::support::haproxy::{Haproxy, SERVED_BY};
use crate::support::slapd::{
    base_ldif, group_ldif, user_dn, user_ldif, Slapd, GROUPS, PEOPLE, SYNC_DN, SYNC_PW,
};
use crate::support::{
    fresh_database, mappings_dir_for, unique, Backend, Resp, GROUP, PATCH_OP, USER,
};

const REPLICAS: usize = 3;
/// Granted by the gms catalog's `designer` role, which V1 gives the
/// members of "Designers"; no other rule of V1 applies to these users.
const PERM: &str = "project_view";

/// A replica as the load sees it: its name in HAProxy, its own address
/// (for asking it directly), and which process serves it: 0 while it is
/// down, else the process's generation (1, then 2 once restarted).
#[derive(Clone)]
struct ReplicaView {
    name: String,
    addr: String,
    up: Arc<AtomicU64>,
}

/// Three `serve` processes on one database and Redis behind HAProxy;
/// every process is killed on drop (HAProxy by its own drop).
struct Cluster {
    db: String,
    args: Vec<String>,
    children: Vec<Option<Child>>,
    views: Vec<ReplicaView>,
    lb: Haproxy,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Cluster {
    /// Starts the replicas at once (as a Deployment's pods start, on a
    /// store nobody has served yet), with `--mappings mappings --redis-url
    /// REDIS --config config`, then HAProxy in front of them once HAProxy
    /// sees all three ready.
    async fn start(db: &str, mappings: &std::path::Path, config: &std::path::Path) -> Cluster {
        let args: Vec<String> = [
            "--mappings",
            mappings.to_str().unwrap(),
            "--redis-url",
            REDIS,
            "--config",
            config.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let spawned: Vec<_> = (0..REPLICAS)
            .map(|_| {
                let (db, args) = (db.to_string(), args.clone());
                tokio::task::spawn_blocking(move || {
                    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                    spawn_server(&db, None, &argv)
                })
            })
            .collect();
        let mut started = Vec::new();
        let mut failed = None;
        for s in spawned {
            match s.await {
                Ok(replica) => started.push(replica),
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            for (mut child, _) in started {
                let _ = child.kill();
                let _ = child.wait();
            }
            std::panic::resume_unwind(e.into_panic());
        }
        let mut children = Vec::new();
        let mut views = Vec::new();
        for (i, (child, addr)) in started.into_iter().enumerate() {
            children.push(Some(child));
            views.push(ReplicaView {
                name: format!("r{i}"),
                addr,
                up: Arc::new(AtomicU64::new(1)),
            });
        }
        let servers: Vec<(String, String)> = views
            .iter()
            .map(|v| {
                (
                    v.name.clone(),
                    v.addr.trim_start_matches("http://").to_string(),
                )
            })
            .collect();
        let lb = Haproxy::start(&servers);
        for v in &views {
            lb.wait_status(&v.name, "UP", Duration::from_secs(10)).await;
        }
        Cluster {
            db: db.to_string(),
            args,
            children,
            views,
            lb,
        }
    }

    /// kill -9 of replica `i`; it is marked down before the signal, so a
    /// check that fails on it afterwards knows why.
    fn kill_nine(&mut self, i: usize) {
        self.views[i].up.store(0, Ordering::SeqCst);
        let mut child = self.children[i].take().expect("replica running");
        child.kill().expect("kill -9");
        let _ = child.wait();
    }

    /// Starts replica `i` again on its own port (HAProxy names it there),
    /// as generation `generation`.
    async fn restart(&mut self, i: usize, generation: u64) {
        let listen = self.views[i].addr.trim_start_matches("http://").to_string();
        let (db, args) = (self.db.clone(), self.args.clone());
        let (child, addr) = tokio::task::spawn_blocking(move || {
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            spawn_server_on(&db, None, &listen, &argv)
        })
        .await
        .unwrap();
        assert_eq!(addr, self.views[i].addr, "restarted on another address");
        self.children[i] = Some(child);
        self.views[i].up.store(generation, Ordering::SeqCst);
    }
}

/// A config file beside the mappings: the top-level keys `top`, the quota
/// keys under this test's own Redis prefix, then the tables `rest`.
fn config_file(dir: &std::path::Path, top: &str, rest: &str) -> std::path::PathBuf {
    let path = dir.join("rolebridge.toml");
    std::fs::write(
        &path,
        format!(
            "{top}[rate_limit]\nkey_prefix = \"{}\"\n{rest}",
            key_prefix()
        ),
    )
    .unwrap();
    path
}

/// What one HTTP request got back. HAProxy's own 502/503 pages are HTML,
/// so a body that is not JSON is kept as a string.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn revision(&self) -> i64 {
        self.header("x-rolebridge-revision")
            .unwrap_or_else(|| panic!("no X-Rolebridge-Revision on a {} write", self.status))
            .parse()
            .expect("revision is a number")
    }
    fn id(&self) -> String {
        self.body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id: {}", self.body))
            .to_string()
    }
    /// As the harness's `Resp`, for its SCIM error checks.
    fn resp(&self) -> Resp {
        Resp {
            status: reqwest::StatusCode::from_u16(self.status).unwrap(),
            headers: self.headers.clone(),
            body: self.body.clone(),
        }
    }
}

async fn send(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    token: &str,
    body: Option<&Value>,
) -> Result<Answer, String> {
    let mut req = client.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/scim+json")
            .body(b.to_string());
    }
    let resp = req.send().await.map_err(|e| error_chain(&e))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp
        .text()
        .await
        .map_err(|e| format!("body: {}", error_chain(&e)))?;
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// An error's kind and its causes, outermost first (without the URL).
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = if e.is_connect() {
        "connect".to_string()
    } else if e.is_timeout() {
        "timeout".to_string()
    } else {
        "request".to_string()
    };
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// One acknowledged write (a 2xx through the balancer), or a create found
/// applied after its request went unanswered.
#[derive(Debug, Clone)]
enum Ack {
    User {
        id: String,
        user_name: String,
        title: String,
        active: bool,
    },
    Group {
        id: String,
        name: String,
    },
    Title {
        id: String,
        title: String,
    },
    Active {
        id: String,
        active: bool,
    },
    Member {
        group: String,
        user: String,
        member: bool,
    },
}

/// A request through the balancer that got no answer, or a 5xx.
#[derive(Debug)]
struct Failure {
    at: Duration,
    what: String,
    outcome: String,
}

/// Every load loop stops after this many requests through HAProxy, or
/// this long.
const MAX_LB_REQUESTS: usize = 600;
const MAX_TIME: Duration = Duration::from_secs(60);

/// The IdP side: its clients share the balancer, the tokens, and the
/// record of what was acknowledged and what failed.
struct Idp {
    client: reqwest::Client,
    /// `{haproxy}/scim/v2/{tenant}`.
    lb: String,
    tenant: String,
    scim: String,
    perm: String,
    views: Vec<ReplicaView>,
    start: Instant,
    sent: AtomicUsize,
    acks: Mutex<Vec<Ack>>,
    /// 2xx writes, creates found after an unanswered POST not included.
    acked_writes: AtomicUsize,
    failures: Mutex<Vec<Failure>>,
    /// Each answer through the balancer: when, and which replica gave it.
    served: Mutex<Vec<(Duration, String)>>,
    /// Checks answered, per replica and generation.
    checks: Mutex<BTreeMap<(String, u64), usize>>,
    checks_skipped: AtomicUsize,
    /// Whether a failed request is retried (an IdP retries; the SIGTERM
    /// phase counts every failure instead).
    retry: bool,
}

impl Idp {
    fn new(
        lb: &Haproxy,
        tenant: &str,
        scim: &str,
        perm: &str,
        views: &[ReplicaView],
        retry: bool,
    ) -> Idp {
        Idp {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            lb: format!("{}/scim/v2/{tenant}", lb.url),
            tenant: tenant.to_string(),
            scim: scim.to_string(),
            perm: perm.to_string(),
            views: views.to_vec(),
            start: Instant::now(),
            sent: AtomicUsize::new(0),
            acks: Mutex::new(Vec::new()),
            acked_writes: AtomicUsize::new(0),
            failures: Mutex::new(Vec::new()),
            served: Mutex::new(Vec::new()),
            checks: Mutex::new(BTreeMap::new()),
            checks_skipped: AtomicUsize::new(0),
            retry,
        }
    }

    fn ack(&self, ack: Ack) {
        self.acks.lock().unwrap().push(ack);
    }

    /// One request through HAProxy, within the load's bounds. A 5xx or no
    /// answer is recorded as a failure and returned as `Err`.
    async fn lb(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, String> {
        let n = self.sent.fetch_add(1, Ordering::SeqCst) + 1;
        assert!(n <= MAX_LB_REQUESTS, "load over {MAX_LB_REQUESTS} requests");
        assert!(self.start.elapsed() < MAX_TIME, "load over {MAX_TIME:?}");
        let url = format!("{}{path}", self.lb);
        let got = send(&self.client, method, &url, &self.scim, body).await;
        let at = self.start.elapsed();
        let outcome = match got {
            Ok(a) => {
                self.served
                    .lock()
                    .unwrap()
                    .push((at, a.header(SERVED_BY).unwrap_or("(none)").to_string()));
                if a.status < 500 {
                    return Ok(a);
                }
                format!("{} {}", a.status, a.body)
            }
            Err(e) => e,
        };
        self.failures.lock().unwrap().push(Failure {
            at,
            what: what.to_string(),
            outcome: outcome.clone(),
        });
        Err(outcome)
    }

    /// Sends a write until it gets an answer that is not a failure (a
    /// fresh request each time, as an IdP retries: only for writes that
    /// mean the same applied twice, such as these PATCHes).
    async fn write(&self, what: &str, method: Method, path: &str, body: &Value) -> Answer {
        for attempt in 0..6u32 {
            match self.lb(what, method.clone(), path, Some(body)).await {
                Ok(a) => {
                    if (200..300).contains(&a.status) {
                        self.acked_writes.fetch_add(1, Ordering::SeqCst);
                    }
                    return a;
                }
                Err(e) => {
                    assert!(self.retry, "{what}: {e}");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt + 1))).await;
                }
            }
        }
        panic!("{what}: no answer in 6 attempts through the balancer");
    }

    /// The id of the resource whose `attr` is `value`, if there is one
    /// (an IdP looks before it creates).
    async fn find(&self, kind: &str, attr: &str, value: &str) -> Option<String> {
        let filter = format!("{attr} eq \"{value}\"");
        let path = format!(
            "/{kind}?filter={}",
            url::form_urlencoded::byte_serialize(filter.as_bytes()).collect::<String>()
        );
        for attempt in 0..6u32 {
            if let Ok(a) = self.lb("GET filter", Method::GET, &path, None).await {
                assert_eq!(a.status, 200, "{path}: {}", a.body);
                let found = a.body["Resources"].as_array().expect("Resources");
                assert!(
                    found.len() <= 1,
                    "{path}: {} matches: {}",
                    found.len(),
                    a.body
                );
                return found.first().map(|r| r["id"].as_str().unwrap().to_string());
            }
            assert!(self.retry, "GET {path} failed");
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt + 1))).await;
        }
        panic!("GET {path}: no answer in 6 attempts");
    }

    /// One POST, not retried here: the answer if it got one (a 2xx counted
    /// as acknowledged), `None` if it failed (it may have been applied).
    async fn post_once(&self, what: &str, path: &str, body: &Value) -> Option<Answer> {
        match self.lb(what, Method::POST, path, Some(body)).await {
            Ok(a) => {
                if (200..300).contains(&a.status) {
                    self.acked_writes.fetch_add(1, Ordering::SeqCst);
                }
                Some(a)
            }
            Err(e) => {
                assert!(self.retry, "{what}: {e}");
                None
            }
        }
    }

    /// Looks the resource up by `attr` (userName, displayName), creates it
    /// when absent, as an IdP does; a POST that went unanswered is looked
    /// up again before it is sent again (it may have been applied, and a
    /// group's displayName is not unique: a blind retry could make two).
    /// Returns the id.
    async fn ensure(&self, kind: &str, attr: &str, value: &str, body: &Value) -> String {
        let mut unanswered = 0;
        for attempt in 0..6u32 {
            if let Some(id) = self.find(kind, attr, value).await {
                assert!(
                    unanswered > 0,
                    "{kind} {value} exists before it was created"
                );
                return id;
            }
            let what = format!("POST /{kind}");
            match self.post_once(&what, &format!("/{kind}"), body).await {
                Some(a) if a.status == 201 => return a.id(),
                Some(a) => panic!(
                    "{what} {value} (not found just before): {} {}",
                    a.status, a.body
                ),
                None => unanswered += 1,
            }
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt + 1))).await;
        }
        panic!("{kind} {value} never created");
    }

    async fn ensure_user(&self, user_name: &str, title: &str) -> String {
        let body = json!({"schemas": [USER], "userName": user_name, "title": title,
            "name": {"givenName": "Ann", "familyName": user_name},
            "emails": [{"value": user_name, "type": "work", "primary": true}], "active": true});
        let id = self.ensure("Users", "userName", user_name, &body).await;
        self.ack(Ack::User {
            id: id.clone(),
            user_name: user_name.to_string(),
            title: title.to_string(),
            active: true,
        });
        id
    }

    async fn ensure_group(&self, name: &str) -> String {
        let body = json!({"schemas": [GROUP], "displayName": name});
        let id = self.ensure("Groups", "displayName", name, &body).await;
        self.ack(Ack::Group {
            id: id.clone(),
            name: name.to_string(),
        });
        id
    }

    /// A PATCH that must be acknowledged; its revision.
    async fn patch(&self, what: &str, path: &str, ops: Value, ack: Ack) -> i64 {
        let body = json!({"schemas": [PATCH_OP], "Operations": ops});
        let a = self.write(what, Method::PATCH, path, &body).await;
        assert!(
            (200..300).contains(&a.status),
            "{what}: {} {}",
            a.status,
            a.body
        );
        self.ack(ack);
        a.revision()
    }

    async fn set_title(&self, user: &str, title: &str) -> i64 {
        self.patch(
            "PATCH /Users title",
            &format!("/Users/{user}"),
            json!([{"op": "replace", "path": "title", "value": title}]),
            Ack::Title {
                id: user.to_string(),
                title: title.to_string(),
            },
        )
        .await
    }

    async fn set_active(&self, user: &str, active: bool) -> i64 {
        self.patch(
            "PATCH /Users active",
            &format!("/Users/{user}"),
            json!([{"op": "replace", "path": "active", "value": active}]),
            Ack::Active {
                id: user.to_string(),
                active,
            },
        )
        .await
    }

    /// Adds or removes one member, in the shapes Entra sends.
    async fn membership(&self, group: &str, user: &str, member: bool) -> i64 {
        let ops = if member {
            json!([{"op": "add", "path": "members", "value": [{"value": user}]}])
        } else {
            json!([{"op": "remove", "path": "members", "value": [{"value": user}]}])
        };
        self.patch(
            if member {
                "PATCH /Groups add member"
            } else {
                "PATCH /Groups remove member"
            },
            &format!("/Groups/{group}"),
            ops,
            Ack::Member {
                group: group.to_string(),
                user: user.to_string(),
                member,
            },
        )
        .await
    }

    /// Right after an acknowledged write at revision `rev` that leaves
    /// `user` with (`allowed`) or without the designer role, asks every
    /// live replica directly, at the default consistency and at
    /// `at_least_as_fresh: rev`: each must answer `allowed`, current at
    /// `rev` or later. A replica killed meanwhile is skipped (it is marked
    /// down before the kill); any other error fails the test.
    async fn check_everywhere(&self, user: &str, rev: i64, allowed: bool, what: &str) {
        for v in &self.views {
            let generation = v.up.load(Ordering::SeqCst);
            if generation == 0 {
                self.checks_skipped.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            let url = format!("{}/api/v1/tenants/{}/check", v.addr, self.tenant);
            for body in [
                json!({"user": user, "permission": PERM}),
                json!({"user": user, "permission": PERM, "at_least_as_fresh": rev}),
            ] {
                let a = match send(&self.client, Method::POST, &url, &self.perm, Some(&body)).await
                {
                    Ok(a) => a,
                    Err(_) if v.up.load(Ordering::SeqCst) != generation => {
                        self.checks_skipped.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    Err(e) => panic!(
                        "{} (up, generation {generation}) did not answer a check: {e}",
                        v.name
                    ),
                };
                assert_eq!(a.status, 200, "{} {body}: {}", v.name, a.body);
                let got = a.body["allowed"].as_bool().expect("allowed");
                let at = a.body["revision"].as_i64().expect("revision");
                assert_eq!(
                    got, allowed,
                    "{} (generation {generation}) answered allowed={got} for {user} right after {what} \
                     (write revision {rev}, answer revision {at}, request {body})",
                    v.name
                );
                assert!(
                    at >= rev,
                    "{}: answer at revision {at} after a write at {rev} ({body})",
                    v.name
                );
                *self
                    .checks
                    .lock()
                    .unwrap()
                    .entry((v.name.clone(), generation))
                    .or_default() += 1;
            }
        }
    }
}

/// What the acknowledged writes add up to: the last acknowledged value of
/// each attribute and each membership (every target is written by one
/// client, in order, and the log is in acknowledgement order).
#[derive(Debug, Default)]
struct Model {
    users: BTreeMap<String, (String, String, bool)>,
    groups: BTreeMap<String, (String, BTreeSet<String>)>,
}

impl Model {
    fn of(acks: &[Ack]) -> Model {
        let mut m = Model::default();
        for a in acks {
            match a {
                Ack::User {
                    id,
                    user_name,
                    title,
                    active,
                } => {
                    let old = m
                        .users
                        .insert(id.clone(), (user_name.clone(), title.clone(), *active));
                    assert!(old.is_none(), "user {id} created twice");
                }
                Ack::Group { id, name } => {
                    let old = m.groups.insert(id.clone(), (name.clone(), BTreeSet::new()));
                    assert!(old.is_none(), "group {id} created twice");
                }
                Ack::Title { id, title } => m.users.get_mut(id).unwrap().1 = title.clone(),
                Ack::Active { id, active } => m.users.get_mut(id).unwrap().2 = *active,
                Ack::Member {
                    group,
                    user,
                    member,
                } => {
                    let members = &mut m.groups.get_mut(group).unwrap().1;
                    if *member {
                        members.insert(user.clone());
                    } else {
                        members.remove(user);
                    }
                }
            }
        }
        m
    }

    fn allowed(&self, designers: &str, user: &str) -> bool {
        self.users[user].2 && self.groups[designers].1.contains(user)
    }
}

/// Users per IdP client, and the clients.
const USERS_PER_CLIENT: usize = 15;
const CLIENTS: usize = 4;

/// One IdP connection's work: a team group, then users one after another,
/// each created, renamed (title), pushed into the team; every other one
/// granted the designer role through "Designers", some of those
/// deactivated and reactivated or removed again; every fifth taken out of
/// the team. Each grant or revocation is checked on every replica.
async fn idp_client(idp: Arc<Idp>, c: usize, designers: String) {
    let team = idp.ensure_group(&format!("Team {c}")).await;
    for i in 0..USERS_PER_CLIENT {
        let name = format!("c{c}u{i}@idp.example");
        let id = idp.ensure_user(&name, "v0").await;
        idp.set_title(&id, &format!("v1-{c}-{i}")).await;
        idp.membership(&team, &id, true).await;
        if i % 2 == 0 {
            let rev = idp.membership(&designers, &id, true).await;
            idp.check_everywhere(&id, rev, true, "adding it to Designers")
                .await;
            if i % 4 == 0 {
                let rev = idp.set_active(&id, false).await;
                idp.check_everywhere(&id, rev, false, "deactivating it")
                    .await;
                let rev = idp.set_active(&id, true).await;
                idp.check_everywhere(&id, rev, true, "reactivating it")
                    .await;
            }
            if i % 6 == 0 {
                let rev = idp.membership(&designers, &id, false).await;
                idp.check_everywhere(&id, rev, false, "removing it from Designers")
                    .await;
            }
        }
        if i % 5 == 4 {
            idp.membership(&team, &id, false).await;
        }
    }
}

/// Reads everything back through each replica directly: every user with
/// its last acknowledged title and active flag and nothing else, every
/// group once with exactly its acknowledged members, and each user's check.
async fn verify_everywhere(idp: &Idp, model: &Model, designers: &str) {
    for v in &idp.views {
        let base = format!("{}/scim/v2/{}", v.addr, idp.tenant);
        // Every resource of a kind, as this replica lists it: 200, with
        // the model's count.
        let list = |kind: &'static str, total: usize| {
            let url = format!("{base}/{kind}?count=1000");
            async move {
                let a = send(&idp.client, Method::GET, &url, &idp.scim, None)
                    .await
                    .unwrap();
                assert_eq!(a.status, 200, "{}: {}", v.name, a.body);
                assert_eq!(
                    a.body["totalResults"], total,
                    "{}: {kind} {}",
                    v.name, a.body
                );
                a.body
            }
        };
        let users = list("Users", model.users.len()).await;
        for u in users["Resources"].as_array().unwrap() {
            let id = u["id"].as_str().unwrap();
            let (name, title, active) = model
                .users
                .get(id)
                .unwrap_or_else(|| panic!("{}: a user nobody created: {u}", v.name));
            assert_eq!(u["userName"], name.as_str(), "{}: {u}", v.name);
            assert_eq!(
                u["title"],
                title.as_str(),
                "{}: acknowledged title lost: {u}",
                v.name
            );
            assert_eq!(
                u["active"], *active,
                "{}: acknowledged active lost: {u}",
                v.name
            );
        }
        let groups = list("Groups", model.groups.len()).await;
        for g in groups["Resources"].as_array().unwrap() {
            let id = g["id"].as_str().unwrap();
            let (name, members) = model
                .groups
                .get(id)
                .unwrap_or_else(|| panic!("{}: a group nobody created: {g}", v.name));
            assert_eq!(g["displayName"], name.as_str(), "{}", v.name);
            let got: BTreeSet<String> = g["members"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .map(|m| m["value"].as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(&got, members, "{}: members of {name}", v.name);
        }
        let users: Vec<&String> = model.users.keys().collect();
        let checks: Vec<Value> = users
            .iter()
            .map(|u| json!({"user": u, "permission": PERM}))
            .collect();
        let a = send(
            &idp.client,
            Method::POST,
            &format!("{}/api/v1/tenants/{}/check/batch", v.addr, idp.tenant),
            &idp.perm,
            Some(&json!({"checks": checks})),
        )
        .await
        .unwrap();
        assert_eq!(a.status, 200, "{}: {}", v.name, a.body);
        let results = a.body["results"].as_array().unwrap();
        assert_eq!(results.len(), users.len());
        for (u, r) in users.iter().zip(results) {
            assert_eq!(
                r["allowed"].as_bool(),
                Some(model.allowed(designers, u)),
                "{}: final check of {u}: {r}",
                v.name
            );
        }
    }
}

/// A fresh database with `tenant` (mapped by V1, so "Designers" grants
/// the designer role), its SCIM and permissions tokens, and the mappings
/// directory.
async fn mapped_tenant(prefix: &str) -> (String, String, String, String, std::path::PathBuf) {
    let db = fresh_database(Backend::Postgres).await;
    let tenant = unique(prefix);
    let mappings = mappings_dir_for(&tenant, V1);
    let (code, _, err) = cli(&db, &["tenant", "create", &tenant]);
    assert_eq!(code, 0, "{err}");
    let scim = cli_token(&db, &tenant, "scim");
    let perm = cli_token(&db, &tenant, "permissions");
    (db, tenant, scim, perm, mappings)
}

/// How many answers each replica gave through the balancer (at or after
/// `since`).
fn served_by(idp: &Idp, since: Duration) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for (at, who) in idp.served.lock().unwrap().iter() {
        if *at >= since {
            *by.entry(who.clone()).or_default() += 1;
        }
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_under_load_loses_no_acknowledged_write_and_every_replica_checks_fresh() {
    let wall = Instant::now();
    let (db, tenant, scim, perm, mappings) = mapped_tenant("mrkill").await;
    let config = config_file(&mappings, "", "");
    let mut cluster = Cluster::start(&db, &mappings, &config).await;
    let idp = Arc::new(Idp::new(
        &cluster.lb,
        &tenant,
        &scim,
        &perm,
        &cluster.views,
        true,
    ));
    let designers = idp.ensure_group("Designers").await;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(idp_client(idp.clone(), c, designers.clone())))
        .collect();
    // kill -9 of r1 once a quarter of the load is acknowledged; the load
    // goes on over r0 and r2 for a second, then r1 comes back on its port.
    let victim = 1;
    while idp.acked_writes.load(Ordering::SeqCst) < 70 {
        assert!(
            idp.start.elapsed() < MAX_TIME,
            "the load never reached 70 acknowledged writes"
        );
        assert!(
            !clients.iter().all(|c| c.is_finished()),
            "the load ended before the kill"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let acked_at_kill = idp.acked_writes.load(Ordering::SeqCst);
    let killed_at = idp.start.elapsed();
    cluster.kill_nine(victim);
    let noticed = cluster
        .lb
        .wait_status("r1", "DOWN", Duration::from_secs(5))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.restart(victim, 2).await;
    let restarted_at = idp.start.elapsed();
    cluster
        .lb
        .wait_status("r1", "UP", Duration::from_secs(5))
        .await;
    let back_at = idp.start.elapsed();
    for c in clients {
        c.await.expect("IdP client");
    }
    let load_time = idp.start.elapsed();
    let acks = idp.acks.lock().unwrap().clone();
    let model = Model::of(&acks);
    assert_eq!(model.users.len(), CLIENTS * USERS_PER_CLIENT);
    assert_eq!(model.groups.len(), CLIENTS + 1);
    // (1) Nothing acknowledged is lost, read through every replica.
    verify_everywhere(&idp, &model, &designers).await;
    // Failures: only requests in flight on r1 when it died (at most one
    // per client, and one more each when a retry met a connection r1 had
    // left half-open), all within two seconds of the kill; each was
    // retried until acknowledged.
    let failures = std::mem::take(&mut *idp.failures.lock().unwrap());
    for f in &failures {
        assert!(
            f.at >= killed_at && f.at <= killed_at + Duration::from_secs(2),
            "a request failed outside the kill -9 window ({killed_at:?}): {f:?}; haproxy: {:?}",
            cluster.lb.log_tail(30)
        );
    }
    assert!(
        failures.len() <= 2 * CLIENTS,
        "{} failures: {failures:?}",
        failures.len()
    );
    // The restarted process served load through the balancer and answered
    // checks; every replica answered checks.
    let after = served_by(&idp, back_at);
    assert!(
        after.get("r1").copied().unwrap_or(0) > 0,
        "r1 served nothing after its restart: {after:?}"
    );
    let checks = idp.checks.lock().unwrap().clone();
    for key in [
        ("r0".to_string(), 1),
        ("r1".to_string(), 1),
        ("r1".to_string(), 2),
        ("r2".to_string(), 1),
    ] {
        assert!(
            checks.get(&key).copied().unwrap_or(0) > 0,
            "no check answered by {key:?}: {checks:?}"
        );
    }
    let role_changes = acks
        .iter()
        .filter(|a| {
            matches!(a, Ack::Active { .. })
                || matches!(a, Ack::Member { group, .. } if *group == designers)
        })
        .count();
    eprintln!(
        "multi_replica kill -9: {} requests through haproxy, {} acknowledged writes ({} when r1 was killed at {:?}; \
         haproxy saw it down {:?} later; restarted at {:?}, up at {:?}), {} failed requests {:?}, \
         {role_changes} grants/revocations each checked on every live replica: {checks:?} ({} skipped while r1 was down), \
         served {:?} (after the restart {after:?}), load {:?}, test {:?}",
        idp.sent.load(Ordering::SeqCst),
        idp.acked_writes.load(Ordering::SeqCst),
        acked_at_kill,
        killed_at,
        noticed,
        restarted_at,
        back_at,
        failures.len(),
        failures.iter().map(|f| format!("{} at {:?}: {}", f.what, f.at, f.outcome)).collect::<Vec<_>>(),
        idp.checks_skipped.load(Ordering::SeqCst),
        served_by(&idp, Duration::ZERO),
        load_time,
        wall.elapsed(),
    );
    drop(cluster);
    crate::support::drop_database(Backend::Postgres, &db).await;
}

/// The quota tenant's override: 30 at once, refilled at 1/s.
const BURST: u32 = 30;
/// The burst: this many clients, each this many POST /Users.
const BURST_CLIENTS: usize = 6;
const BURST_EACH: usize = 15;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_quota_across_the_cluster_behind_haproxy() {
    let wall = Instant::now();
    let (db, tenant, scim, _perm, mappings) = mapped_tenant("mrquota").await;
    let config = config_file(
        &mappings,
        "",
        &format!("[rate_limit.tenants.\"{tenant}\"]\nper_tenant_per_second = 1\nper_tenant_burst = {BURST}\n"),
    );
    let cluster = Cluster::start(&db, &mappings, &config).await;
    let client = reqwest::Client::new();
    // Each replica has counted the three (its Redis connection is up, so
    // Redis decides, not a replica's fallback share).
    let start = Instant::now();
    for v in &cluster.views {
        while series(
            &metrics_text(&client, &v.addr).await,
            "rolebridge_quota_fallback_replicas",
        ) != 3.0
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{} never counted three",
                v.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let url = format!("{}/scim/v2/{tenant}/Users", cluster.lb.url);
    let burst_start = Instant::now();
    let tasks: Vec<_> = (0..BURST_CLIENTS)
        .map(|c| {
            let (client, url, scim) = (client.clone(), url.clone(), scim.clone());
            tokio::spawn(async move {
                let mut got = Vec::new();
                for i in 0..BURST_EACH {
                    assert!(
                        burst_start.elapsed() < Duration::from_secs(30),
                        "burst over 30 s"
                    );
                    let body = json!({"schemas": [USER], "userName": format!("q{c}-{i}")});
                    got.push(
                        send(&client, Method::POST, &url, &scim, Some(&body))
                            .await
                            .expect("an answer"),
                    );
                }
                got
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.extend(t.await.unwrap());
    }
    let elapsed = burst_start.elapsed().as_secs_f64();
    let (mut admitted, mut refused) = (0u32, 0u32);
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for a in &answers {
        *by.entry(a.header(SERVED_BY).unwrap_or("(none)").to_string())
            .or_default() += 1;
        if a.status == 429 {
            retry_after_of_429(&a.resp());
            refused += 1;
        } else {
            assert_eq!(a.status, 201, "{}", a.body);
            admitted += 1;
        }
    }
    // GCRA: the burst at once, then one per second of the burst's span;
    // one more for a refill that falls due between Redis's clock reading
    // and ours (the quota_cluster test's bound).
    let most = BURST + elapsed.ceil() as u32 + 1;
    assert!(
        (BURST..=most).contains(&admitted),
        "{admitted} of {} admitted across the cluster in {elapsed:.2} s; quota {BURST} + 1/s",
        answers.len()
    );
    assert!(
        admitted < 2 * BURST,
        "{admitted}: near the per-replica 3 × {BURST}"
    );
    assert_eq!(admitted + refused, (BURST_CLIENTS * BURST_EACH) as u32);
    // Round robin spread the burst: each replica took a third or so, so
    // each alone stayed under the burst its local first line allows.
    for v in &cluster.views {
        let n = by.get(&v.name).copied().unwrap_or(0);
        assert!(
            n >= answers.len() / 5,
            "{} answered {n} of {}: {by:?}",
            v.name,
            answers.len()
        );
    }
    // Every replica decided in Redis; a refused request wrote nothing.
    let mut by_redis = 0.0;
    for v in &cluster.views {
        let text = metrics_text(&client, &v.addr).await;
        let mine = series(&text, &decisions(&tenant, "admitted", "both", "redis"));
        assert!(mine > 0.0, "{}: no admission decided in Redis", v.name);
        by_redis += mine;
        assert_eq!(
            series(&text, &decisions(&tenant, "admitted", "both", "fallback")),
            0.0,
            "{}",
            v.name
        );
    }
    assert_eq!(by_redis, f64::from(admitted));
    let store = rolebridge::store::Store::connect(&db).await.unwrap();
    let t = store
        .tenant_by_name(&rolebridge::domain::TenantName::parse(&tenant).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .count(t.id, scim::schema::ResourceKind::User)
            .await
            .unwrap(),
        i64::from(admitted)
    );
    eprintln!(
        "multi_replica quota: {} POST /Users through haproxy in {elapsed:.2} s ({by:?}): {admitted} admitted \
         (bound {BURST}..={most}), {refused} refused with 429 + Retry-After; test {:?}",
        answers.len(),
        wall.elapsed()
    );
    store.close().await;
    drop(cluster);
    crate::support::drop_database(Backend::Postgres, &db).await;
}

/// Steady load for the SIGTERM phase: each client creates a user, renames
/// it and reads it back, then pauses 200 ms, over and over, until `stop`
/// (about 40 requests a second in all: some 300 over the test).
const STEADY_CLIENTS: usize = 3;

async fn steady_client(idp: Arc<Idp>, c: usize, stop: Arc<AtomicBool>) {
    let mut i = 0;
    while !stop.load(Ordering::SeqCst) {
        let body = json!({"schemas": [USER], "userName": format!("s{c}-{i}")});
        if let Ok(a) = idp
            .lb("POST /Users", Method::POST, "/Users", Some(&body))
            .await
        {
            assert_eq!(a.status, 201, "{}", a.body);
            let id = a.id();
            let ops = json!({"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "title", "value": "t"}]});
            if let Ok(a) = idp
                .lb(
                    "PATCH /Users",
                    Method::PATCH,
                    &format!("/Users/{id}"),
                    Some(&ops),
                )
                .await
            {
                assert_eq!(a.status, 200, "{}", a.body);
            }
            if let Ok(a) = idp
                .lb("GET /Users", Method::GET, &format!("/Users/{id}"), None)
                .await
            {
                assert_eq!(a.status, 200, "{}", a.body);
                assert_eq!(a.body["title"], "t");
            }
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drops_no_request_and_a_scheduled_source_runs_once_at_a_time() {
    let wall = Instant::now();
    let (db, tenant, scim, _perm, mappings) = mapped_tenant("mrterm").await;
    // The directory a source syncs into its own tenant; a third tenant
    // stays idle, for long-polls that stay in flight.
    let dir_tenant = unique("mrdir");
    let idle = unique("mridle");
    for t in [&dir_tenant, &idle] {
        let (code, _, err) = cli(&db, &["tenant", "create", t]);
        assert_eq!(code, 0, "{err}");
    }
    let idle_perm = cli_token(&db, &idle, "permissions");
    let mut ldif = base_ldif();
    let mut staff = Vec::new();
    for i in 0..300 {
        let uid = format!("p{i}");
        ldif.push_str(&user_ldif(&uid, &format!("{uid}@example.org")));
        staff.push(user_dn(&uid));
    }
    ldif.push_str(&group_ldif("staff", &staff));
    let slapd = Slapd::start_with(&ldif);
    let pw = mappings.join("bind-pw");
    std::fs::write(&pw, format!("{SYNC_PW}\n")).unwrap();
    // Every replica schedules the source every 500 ms, each run a full
    // reconcile (full_every 1 s) of 300 users: runs are long enough, and
    // attempts frequent enough, for three schedulers to contend.
    let config = config_file(
        &mappings,
        "shutdown_delay = \"1s\"\nshutdown_grace = \"10s\"\n",
        &format!(
            "[[source]]\nname = \"corp\"\ntenant = \"{dir_tenant}\"\nkind = \"ldap\"\nschedule = \"500ms\"\n\
             full_every = \"1s\"\nurl = \"{}\"\nbind_dn = \"{SYNC_DN}\"\nbind_password = {{ file = \"{}\" }}\n\
             base_dns = [\"{PEOPLE}\", \"{GROUPS}\"]\n",
            slapd.url,
            pw.display()
        ),
    );
    let mut cluster = Cluster::start(&db, &mappings, &config).await;
    let store = rolebridge::store::Store::connect(&db).await.unwrap();
    let idp = Arc::new(Idp::new(
        &cluster.lb,
        &tenant,
        &scim,
        "",
        &cluster.views,
        false,
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..STEADY_CLIENTS)
        .map(|c| tokio::spawn(steady_client(idp.clone(), c, stop.clone())))
        .collect();
    // Load for a while, and a few scheduled runs recorded, before the signal.
    let start = Instant::now();
    loop {
        let runs = store.sync_runs("corp", 1000).await.unwrap().len();
        if runs >= 3 && start.elapsed() >= Duration::from_secs(1) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{runs} sync runs in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let victim = 2;
    let before = served_by(&idp, Duration::ZERO);
    assert!(
        before.get("r2").copied().unwrap_or(0) > 0,
        "r2 served nothing before SIGTERM: {before:?}"
    );
    // Two long-polls pinned to r2 (a header HAProxy routes on), in flight
    // across the whole shutdown delay.
    let polls: Vec<_> = (0..2)
        .map(|_| {
            let client = idp.client.clone();
            let url = format!("{}/api/v1/tenants/{idle}/changes?wait=3s", cluster.lb.url);
            let token = idle_perm.clone();
            tokio::spawn(async move {
                let sent = Instant::now();
                let r = client
                    .get(url)
                    .bearer_auth(token)
                    .header("x-replica", "r2")
                    .send()
                    .await;
                (
                    r.map(|r| {
                        (
                            r.status().as_u16(),
                            r.headers()
                                .get(SERVED_BY)
                                .map(|v| v.to_str().unwrap().to_string()),
                        )
                    }),
                    sent.elapsed(),
                )
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let term_at = idp.start.elapsed();
    let mut child = cluster.children[victim].take().unwrap();
    sigterm(&child);
    // HAProxy takes it out on its 503 /readyz well before the delay ends.
    let noticed = cluster
        .lb
        .wait_status("r2", "DOWN", Duration::from_secs(5))
        .await;
    assert!(
        noticed < Duration::from_millis(900),
        "haproxy saw r2 down only after {noticed:?}"
    );
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
            .await
            .unwrap();
    let exited_at = idp.start.elapsed();
    assert!(status.success(), "r2 exited with {status:?} after SIGTERM");
    cluster.views[victim].up.store(0, Ordering::SeqCst);
    // The load goes on past the exit.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("steady client");
    }
    for p in polls {
        let (r, took) = p.await.unwrap();
        let (status, by) = r.expect("a long-poll in flight on r2 was dropped");
        assert_eq!((status, by.as_deref()), (200, Some("r2")), "long-poll");
        assert!(
            took >= Duration::from_millis(2900),
            "long-poll answered after {took:?}, not its 3 s"
        );
    }
    // (5) No request of the load failed: before, during or after the
    // shutdown, every one got a non-5xx answer.
    let failures = std::mem::take(&mut *idp.failures.lock().unwrap());
    assert!(
        failures.is_empty(),
        "{} requests failed around the SIGTERM of r2 at {term_at:?} (exit at {exited_at:?}): {failures:?}; haproxy: {:?}",
        failures.len(),
        cluster.lb.log_tail(30)
    );
    let during = served_by(&idp, term_at);
    let phase: usize = during.values().sum();
    // (4) The run log: more than one run, none overlapping another.
    let mut runs = store.sync_runs("corp", 1000).await.unwrap();
    runs.sort_by_key(|r| r.started);
    assert!(runs.len() >= 2, "{} runs", runs.len());
    for r in &runs {
        assert!(
            r.outcome == "applied" || r.outcome == "unchanged",
            "run {} ended {}: {:?}",
            r.id,
            r.outcome,
            r.error
        );
    }
    let mut gaps = Vec::new();
    for w in runs.windows(2) {
        assert!(
            w[1].started >= w[0].finished,
            "runs overlap: {} ran {}..{} and {} started at {}",
            w[0].id,
            w[0].started,
            w[0].finished,
            w[1].id,
            w[1].started
        );
        gaps.push(w[1].started.since(w[0].finished));
    }
    let first_applied = runs.iter().filter(|r| r.outcome == "applied").count();
    assert!(first_applied >= 1, "no run applied the directory");
    let t = store
        .tenant_by_name(&rolebridge::domain::TenantName::parse(&dir_tenant).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .count(t.id, scim::schema::ResourceKind::User)
            .await
            .unwrap(),
        300
    );
    let durations: Vec<Duration> = runs.iter().map(|r| r.finished.since(r.started)).collect();
    eprintln!(
        "multi_replica SIGTERM: {} requests through haproxy, {phase} of them from the SIGTERM at {term_at:?} \
         (haproxy saw r2 down {noticed:?} later; exit 0 at {exited_at:?}) {during:?}, 0 failed; \
         sync: {} runs of corp, none overlapping, shortest gap {:?}, run durations {:?}..{:?}; test {:?}",
        idp.sent.load(Ordering::SeqCst),
        runs.len(),
        gaps.iter().min(),
        durations.iter().min(),
        durations.iter().max(),
        wall.elapsed()
    );
    store.close().await;
    drop(cluster);
    drop(slapd);
    crate::support::drop_database(Backend::Postgres, &db).await;
}
