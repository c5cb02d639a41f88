//! Group commit of SCIM writes: the writes queued for a tenant while one
//! commits share the next transaction; each is answered only after that
//! commit, each keeps its own outcome (a failing one is undone alone), and
//! under `kill -9` every acknowledged write survives.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use sqlx::Connection;

use crate::changes_feed::mapped;
use crate::durability::{cli, cli_token, spawn_server};
use crate::mapping_admin::api;
use crate::quota_cluster::{metrics_text, series};
use crate::support::{fresh_database, unique, Backend, Resp, TestServer, PATCH_OP, USER};

/// The group-commit counters of `/metrics`: (transactions, writes).
async fn counters(client: &reqwest::Client, addr: &str) -> (u64, u64) {
    let text = metrics_text(client, addr).await;
    let value = |name: &str| -> u64 {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} not in /metrics"
        );
        series(&text, name) as u64
    };
    (
        value("rolebridge_group_commit_batches_total "),
        value("rolebridge_group_commit_writes_total "),
    )
}

/// Holds, from a connection of its own, what a tenant's write transaction
/// takes first: the tenant's row on PostgreSQL, the database's write lock
/// on SQLite. Writes sent meanwhile wait in the tenant's lane.
struct Blocker(sqlx::AnyConnection);

impl Blocker {
    async fn hold(srv: &TestServer) -> Blocker {
        let mut conn = sqlx::AnyConnection::connect(&srv.database_url)
            .await
            .unwrap();
        match srv.backend {
            Backend::Sqlite => {
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
            Backend::Postgres => {
                sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
                sqlx::query("SELECT id FROM tenants WHERE name = $1 FOR UPDATE")
                    .bind(&srv.tenant)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            }
        }
        Blocker(conn)
    }

    async fn release(mut self) {
        sqlx::query("COMMIT").execute(&mut self.0).await.unwrap();
    }
}

fn send(
    srv: &TestServer,
    method: Method,
    path: String,
    body: Value,
    if_match: Option<&str>,
) -> tokio::task::JoinHandle<Resp> {
    let mut req = srv
        .client
        .request(method, format!("{}{path}", srv.base))
        .bearer_auth(&srv.token)
        .json(&body);
    if let Some(tag) = if_match {
        req = req.header("If-Match", tag);
    }
    if let Some(id) = path
        .strip_prefix("/Groups/")
        .and(body["Operations"][0]["value"][0]["value"].as_str())
    {
        // A member push names its request after the member it adds.
        req = req.header("X-Request-Id", format!("req-{id}"));
    }
    tokio::spawn(async move { Resp::read(req.send().await.unwrap()).await })
}

crate::each_backend! {
    async fn queued_writes_share_one_commit_and_a_failing_one_fails_alone(backend) {
        let (srv, designers) = mapped(backend).await;
        let addr = format!("http://{}", srv.addr);
        let base_user = srv.user("base").await;
        let (ann, bob) = (srv.user("ann").await, srv.user("bob").await);
        let before = counters(&srv.client, &addr).await;
        let blocker = Blocker::hold(&srv).await;
        // 32 new users, 8 more reusing 8 of their names, 4 PATCHes of one
        // user, one PATCH with a stale If-Match, and two pushes to
        // Designers (ann's, then bob's).
        let mut creates = Vec::new();
        for i in 0..40 {
            let name = format!("gc{}", i % 32);
            creates.push((name.clone(), send(&srv, Method::POST, "/Users".into(), json!({"schemas": [USER], "userName": name}), None)));
        }
        let mut patches = Vec::new();
        for i in 0..4 {
            let body = json!({"schemas": [PATCH_OP], "Operations": [{"op": "add", "path": format!("nickName"), "value": format!("n{i}")}, {"op": "add", "path": format!("title"), "value": format!("t{i}")}]});
            patches.push(send(&srv, Method::PATCH, format!("/Users/{base_user}"), body, None));
        }
        let stale = send(&srv, Method::PATCH, format!("/Users/{base_user}"), json!({"schemas": [PATCH_OP], "Operations": [{"op": "add", "path": "title", "value": "stale"}]}), Some("W/\"999\""));
        let push = |user: &str| send(&srv, Method::PATCH, format!("/Groups/{designers}"), json!({"schemas": [PATCH_OP], "Operations": [{"op": "add", "path": "members", "value": [{"value": user}]}]}), None);
        let grants = [push(&ann), push(&bob)];
        // Nothing is answered while the first write cannot commit.
        tokio::time::sleep(Duration::from_millis(600)).await;
        if let Some((name, _)) = creates.iter().find(|(_, t)| t.is_finished()) {
            let i = creates.iter().position(|(n, _)| n == name).unwrap();
            let r = creates.remove(i).1.await.unwrap();
            panic!("a write was answered before its commit: {} {}", r.status, r.body);
        }
        assert!(patches.iter().chain(&grants).all(|t| !t.is_finished()) && !stale.is_finished());
        blocker.release().await;

        let mut created: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut refused = 0;
        for (name, t) in creates {
            let r = t.await.unwrap();
            match r.status.as_u16() {
                201 => created.entry(name).or_default().push(r.body["id"].as_str().unwrap().to_string()),
                409 => {
                    r.assert_error(409, Some("uniqueness"));
                    refused += 1;
                }
                other => panic!("POST /Users answered {other}: {}", r.body),
            }
        }
        assert_eq!((created.len(), refused), (32, 8), "each name created once, each repeat refused alone");
        assert!(created.values().all(|ids| ids.len() == 1));
        let mut versions = HashSet::new();
        for t in patches {
            let r = t.await.unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
            versions.insert(r.body["meta"]["version"].as_str().unwrap().to_string());
        }
        // Four PATCHes of one user, one after another in one transaction.
        let expect: HashSet<String> = (2..=5).map(|v| format!("W/\"{v}\"")).collect();
        assert_eq!(versions, expect);
        stale.await.unwrap().assert_error(412, None);
        let mut revisions = HashSet::new();
        for t in grants {
            let r = t.await.unwrap();
            assert!(r.status.is_success(), "{}", r.body);
            revisions.insert(r.header("x-rolebridge-revision").unwrap().to_string());
        }
        // One commit, one revision for both pushes.
        assert_eq!(revisions.len(), 1, "{revisions:?}");

        // One transaction held all 38 writes that succeeded.
        let after = counters(&srv.client, &addr).await;
        assert_eq!((after.0 - before.0, after.1 - before.1), (1, 38), "{before:?} -> {after:?}");
        // All of them are there, and the refused ones left nothing.
        for ids in created.values() {
            assert_eq!(srv.get(&format!("/Users/{}", ids[0])).await.status, 200);
        }
        let list = srv.query("/Users", &[("filter", "userName sw \"gc\""), ("count", "100")]).await;
        assert_eq!(list.body["totalResults"], 32, "{}", list.body);
        let base = srv.get(&format!("/Users/{base_user}")).await;
        assert_eq!(base.body["meta"]["version"], "W/\"5\"");
        assert_ne!(base.body["title"], "stale");
        // The grants were derived in the same commit, and each user's event
        // names the request that changed that user.
        let perm = srv.permissions_token().await;
        for user in [&ann, &bob] {
            let r = api(&srv, &perm, Method::GET, &format!("/users/{user}/permissions"), None).await;
            assert_eq!(r.body["roles"], json!(["designer"]), "{}", r.body);
        }
        let feed = api(&srv, &perm, Method::GET, "/changes?limit=1000", None).await.body;
        let events = feed["events"].as_array().unwrap();
        for user in [&ann, &bob] {
            let mine: Vec<&Value> = events.iter().filter(|e| e["user"]["id"] == user.as_str()).collect();
            assert_eq!(mine.len(), 1, "{feed}");
            assert_eq!(mine[0]["cause"]["request_id"], format!("req-{user}"), "{}", mine[0]);
            assert_eq!(mine[0]["added"]["roles"], json!(["designer"]));
        }
    }
}

/// 12 clients creating users and adding them to a group as fast as the
/// server answers, `kill -9` after 1.5 s, a restart: every acknowledged
/// create and membership is there. Bounded to 4,000 requests and 10 s.
async fn kill_nine_under_load(backend: Backend) {
    let db = fresh_database(backend).await;
    let tenant = unique("gcdur");
    assert_eq!(cli(&db, &["tenant", "create", &tenant]).0, 0);
    let token = cli_token(&db, &tenant, "scim");
    let (mut child, addr) = spawn_server(&db, None, &[]);
    let client = reqwest::Client::new();
    let base = format!("{addr}/scim/v2/{tenant}");
    let r = client
        .post(format!("{base}/Groups"))
        .bearer_auth(&token)
        .json(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Load"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let group = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (client, base, token, group, next) = (
            client.clone(),
            base.clone(),
            token.clone(),
            group.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            // (user id, whether its membership was acknowledged)
            let mut acked: Vec<(String, bool)> = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= 2000 || Instant::now() > deadline {
                    return acked;
                }
                let Ok(r) = client.post(format!("{base}/Users")).bearer_auth(&token).json(&json!({"schemas": [USER], "userName": format!("load{i}")})).send().await else {
                    return acked;
                };
                if r.status() == 429 {
                    // Over the default quota: not acknowledged; go on.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                assert_eq!(r.status(), 201, "POST /Users under load");
                let Ok(body) = r.json::<Value>().await else { return acked };
                let id = body["id"].as_str().unwrap().to_string();
                acked.push((id.clone(), false));
                let patch = json!({"schemas": [PATCH_OP], "Operations": [{"op": "add", "path": "members", "value": [{"value": id}]}]});
                let Ok(r) = client.patch(format!("{base}/Groups/{group}")).bearer_auth(&token).json(&patch).send().await else {
                    return acked;
                };
                if r.status().is_success() {
                    acked.last_mut().unwrap().1 = true;
                } else {
                    assert_eq!(r.status(), 429, "PATCH under load");
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (batches, writes) = counters(&client, &addr).await;
    child.kill().expect("kill -9");
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    let _ = child.wait();
    let members_acked = acked.iter().filter(|(_, m)| *m).count();
    eprintln!("{backend:?}: {} creates and {members_acked} memberships acknowledged before kill -9; {writes} writes in {batches} commits by then", acked.len());
    assert!(
        acked.len() >= 20,
        "the load ran: {} creates acknowledged",
        acked.len()
    );
    let (mut child, addr) = spawn_server(&db, None, &[]);
    let r = client
        .get(format!("{addr}/scim/v2/{tenant}/Groups/{group}"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    let members: HashSet<&str> = body["members"]
        .as_array()
        .map(|m| m.iter().filter_map(|x| x["value"].as_str()).collect())
        .unwrap_or_default();
    for (id, member) in &acked {
        let r = client
            .get(format!("{addr}/scim/v2/{tenant}/Users/{id}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "acknowledged user {id} lost after kill -9");
        if *member {
            assert!(
                members.contains(id.as_str()),
                "acknowledged membership of {id} lost after kill -9"
            );
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_under_load_keeps_every_acknowledged_write_sqlite() {
    kill_nine_under_load(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_under_load_keeps_every_acknowledged_write_postgres() {
    kill_nine_under_load(Backend::Postgres).await;
}

/// A write PostgreSQL undoes to break a deadlock is answered 503
/// `not_committed` (retry), not 500: two transactions lock two rows in
/// opposite orders, as a sync apply and a SCIM batch of one tenant can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_undone_by_a_deadlock_is_not_committed_and_retryable() {
    let db = fresh_database(Backend::Postgres).await;
    // Connecting installs sqlx's drivers and migrates the database.
    let _store = rolebridge::store::Store::connect(&db).await.unwrap();
    for name in ["dla", "dlb"] {
        assert_eq!(cli(&db, &["tenant", "create", name]).0, 0);
    }
    let lock =
        |name: &'static str| format!("UPDATE tenants SET epoch = epoch WHERE name = '{name}'");
    let (mut a, mut b) = (
        sqlx::AnyConnection::connect(&db).await.unwrap(),
        sqlx::AnyConnection::connect(&db).await.unwrap(),
    );
    for (conn, first) in [(&mut a, "dla"), (&mut b, "dlb")] {
        sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(lock(first)))
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    let second_a = tokio::spawn(async move {
        let r = sqlx::query(sqlx::AssertSqlSafe(lock("dlb")))
            .execute(&mut a)
            .await
            .map(|_| ());
        (r, a)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rb = sqlx::query(sqlx::AssertSqlSafe(lock("dla")))
        .execute(&mut b)
        .await
        .map(|_| ());
    let _ = sqlx::query("ROLLBACK").execute(&mut b).await;
    let (ra, mut a) = second_a.await.unwrap();
    let _ = sqlx::query("ROLLBACK").execute(&mut a).await;
    // Exactly one of the two was chosen to break the cycle.
    let err = match (ra, rb) {
        (Err(e), Ok(())) | (Ok(()), Err(e)) => rolebridge::store::Error::Sql(e),
        other => panic!("expected one deadlock victim: {other:?}"),
    };
    assert!(err.is_transient_conflict(), "{err}");
    let app = rolebridge::app::Error::from(err);
    assert!(
        matches!(app, rolebridge::app::Error::NotCommitted(_)),
        "{app:?}"
    );
    let (status, body) = rolebridge::http::error::error_body(&app);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["detail"], "the write was not committed; retry it");
}

/// Two `serve` processes on one SQLite file, both writing at once: each
/// write transaction takes the write lock at BEGIN (IMMEDIATE) and waits
/// for the other process's within `busy_timeout`, so no write fails with
/// SQLITE_BUSY (a 500 before). Bounded to 408 requests and 20 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_sqlite_file_write_without_busy_errors() {
    let db = fresh_database(Backend::Sqlite).await;
    let tenant = unique("gcsq");
    assert_eq!(cli(&db, &["tenant", "create", &tenant]).0, 0);
    let token = cli_token(&db, &tenant, "scim");
    let (mut one, a) = spawn_server(&db, None, &[]);
    let (mut two, b) = spawn_server(&db, None, &[]);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut tasks = Vec::new();
    for c in 0..8 {
        let (client, token, addr) = (
            client.clone(),
            token.clone(),
            if c % 2 == 0 { a.clone() } else { b.clone() },
        );
        let url = format!("{addr}/scim/v2/{tenant}/Users");
        tasks.push(tokio::spawn(async move {
            // A create, then PATCHes of it: a PATCH reads the user before it
            // writes, which is where a deferred transaction met the other
            // process's writer and failed at once.
            let r = client
                .post(&url)
                .bearer_auth(&token)
                .json(&json!({"schemas": [USER], "userName": format!("p{c}")}))
                .send()
                .await
                .unwrap();
            let mut statuses = vec![r.status().as_u16()];
            let id = r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
            for i in 0..50 {
                if Instant::now() > deadline {
                    break;
                }
                let patch = json!({"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "title", "value": format!("t{i}")}]});
                let r = client
                    .patch(format!("{url}/{id}"))
                    .bearer_auth(&token)
                    .json(&patch)
                    .send()
                    .await
                    .unwrap();
                statuses.push(r.status().as_u16());
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.extend(t.await.unwrap());
    }
    let failed: Vec<&u16> = statuses
        .iter()
        .filter(|s| !matches!(**s, 200 | 201))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} writes failed: {failed:?}",
        failed.len(),
        statuses.len()
    );
    assert!(statuses.len() >= 100, "the load ran: {}", statuses.len());
    let created = 8;
    // Both processes see all of them.
    for addr in [&a, &b] {
        let r = client
            .get(format!("{addr}/scim/v2/{tenant}/Users?count=0"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["totalResults"], created, "{addr}: {body}");
    }
    for p in [&mut one, &mut two] {
        let _ = p.kill();
        let _ = p.wait();
    }
}
