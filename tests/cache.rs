//! The permissions caches against the real Redis on 127.0.0.1:6379: one
//! entry per user replaced in place (bounded by users, written once per
//! changed user), answers from Redis at the revision a write returned, the
//! default check never reading a cache, every write path reaching a second
//! app, 1,000 revoke-then-check cycles across two `serve` processes, and
//! Redis killed or hung and coming back.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rolebridge::app::{AnsweredFrom, App, Checked, Consistency, UserRef};
use rolebridge::cache::RedisCache;
use rolebridge::domain::{ResourceId, Tenant, TenantName};
use rolebridge::store::StoredResource;
use scim::schema::ResourceKind;
use serde_json::{json, Value};

use crate::durability::{cli, spawn_server};
use crate::each_backend;
use crate::support::{fresh_database, unique, Resp, TestServer, GROUP, PATCH_OP, USER};

pub const REDIS: &str = "redis://127.0.0.1:6379/";

const MAPPING: &str = "catalog: haptik\nrules:\n  - id: agents\n    match: {display_name: \"Chat Agents\"}\n    assign: {roles: [chat_agent]}\n";
const PERM: &str = "take_and_respond_to_chats";

pub async fn tenant_of(srv: &TestServer) -> Tenant {
    srv.app
        .store()
        .tenant_by_name(&TenantName::parse(&srv.tenant).unwrap())
        .await
        .unwrap()
        .unwrap()
}

/// The `X-Rolebridge-Revision` of a successful write.
#[track_caller]
pub fn revision(r: &Resp) -> i64 {
    assert!(r.status.is_success(), "{} {}", r.status, r.body);
    r.header("x-rolebridge-revision")
        .unwrap_or_else(|| panic!("no X-Rolebridge-Revision on a {} write", r.status))
        .parse()
        .expect("revision is a number")
}

async fn answer(app: &App, tenant: &Tenant, user: &str, c: Consistency) -> Checked {
    app.user_permissions(tenant, &UserRef::Id(user.to_string()), c)
        .await
        .unwrap_or_else(|e| panic!("permissions of {user} at {c:?}: {e}"))
}

fn grants(c: &Checked) -> bool {
    c.summary.permissions.iter().any(|p| p == PERM)
}

async fn allowed(app: &App, tenant: &Tenant, user: &str) -> bool {
    grants(&answer(app, tenant, user, Consistency::Full).await)
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis on 127.0.0.1:6379 (.ci/run starts it)")
}

async fn keys(url: &str, prefix: &str) -> Vec<String> {
    let mut conn = redis_conn(url).await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    keys
}

async fn drop_keys(url: &str, prefix: &str) {
    let k = keys(url, prefix).await;
    if !k.is_empty() {
        let mut conn = redis_conn(url).await;
        let _: () = redis::cmd("DEL")
            .arg(&k)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn redis_of(app: &App) -> &RedisCache {
    app.cache().redis.as_ref().expect("app built with Redis")
}

/// Waits until the writer has attempted at least `expect` entries since
/// `since` (writes, dropped), then a little longer so that any extra entry
/// shows; returns the entries written and dropped since `since`.
async fn settle(redis: &RedisCache, since: (u64, u64), expect: u64) -> (u64, u64) {
    redis.flush().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.writes() + redis.dropped() < since.0 + since.1 + expect && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    (redis.writes() - since.0, redis.dropped() - since.1)
}

fn patch(ops: Value) -> Value {
    json!({"schemas": [PATCH_OP], "Operations": ops})
}

fn add_member(id: &str) -> Value {
    patch(json!([{"op": "add", "path": "members", "value": [{"value": id}]}]))
}

fn remove_member(id: &str) -> Value {
    patch(json!([{"op": "remove", "path": format!("members[value eq \"{id}\"]")}]))
}

fn replace(path: &str, value: Value) -> Value {
    patch(json!([{"op": "replace", "path": path, "value": value}]))
}

/// Seeds `n` users (`{stem}{i}`) through the store, as directory sync does,
/// all direct members of `group`, in one transaction; returns their ids.
pub async fn seed_members(
    app: &App,
    tenant: &Tenant,
    group: &str,
    stem: &str,
    n: usize,
) -> Vec<String> {
    let ts = rolebridge::domain::Timestamp::now();
    let docs: Vec<StoredResource> = (0..n)
        .map(|i| StoredResource {
            id: ResourceId::generate(),
            doc: json!({"schemas": [USER], "userName": format!("{stem}{i}")}),
            created: ts,
            last_modified: ts,
            version: 1,
        })
        .collect();
    let mut tx = app.store().begin_write().await.unwrap();
    let refused = tx
        .insert_many(tenant.id, ResourceKind::User, &docs)
        .await
        .unwrap();
    assert!(refused.iter().all(Option::is_none), "{refused:?}");
    let members: Vec<(String, &'static str)> =
        docs.iter().map(|d| (d.id.to_string(), "User")).collect();
    tx.add_members(tenant.id, &ResourceId::from_client(group), &members)
        .await
        .unwrap();
    app.commit(tx).await.unwrap();
    docs.iter().map(|d| d.id.to_string()).collect()
}

each_backend! {
    async fn entries_are_per_user_and_written_once_per_change(backend) {
        let prefix = format!("{}:", unique("rbtest"));
        let srv = TestServer::start_mapped_redis(backend, MAPPING, REDIS, &prefix).await;
        // Connected before the first write: entries are never queued for a
        // connection that is not up yet.
        srv.app.ready().await.expect("Redis on 127.0.0.1:6379");
        let tenant = tenant_of(&srv).await;
        let redis = redis_of(&srv.app);
        let direct: Vec<String> = {
            let mut v = Vec::new();
            for name in ["a", "b", "c", "d"] {
                v.push(srv.user(name).await);
            }
            v
        };
        let nested: Vec<String> = {
            let mut v = Vec::new();
            for name in ["n1", "n2", "n3"] {
                v.push(srv.user(name).await);
            }
            v
        };
        let a = direct[0].clone();
        let g = srv.post("/Groups", json!({"schemas": [GROUP], "displayName": "Chat Agents", "members": [{"value": a}]})).await;
        let gid = g.body["id"].as_str().unwrap().to_string();
        let all_users = direct.len() + nested.len();
        let (_, dropped) = settle(redis, (0, 0), all_users as u64 + 1).await;
        assert_eq!(dropped, 0, "entries dropped with Redis up");
        // Each write recomputes whom it affects and writes one entry per
        // user whose permissions changed, none for the others.
        let steps: Vec<(&str, String, Value, u64)> = vec![
            ("deactivate one user", format!("/Users/{a}"), replace("active", json!(false)), 1),
            ("reactivate one user", format!("/Users/{a}"), replace("active", json!(true)), 1),
            ("a title: nothing served changes", format!("/Users/{a}"), replace("title", json!("Lead")), 0),
            ("a member removed", format!("/Groups/{gid}"), remove_member(&a), 1),
            ("a member re-added", format!("/Groups/{gid}"), add_member(&a), 1),
        ];
        for (step, path, body, k) in steps {
            let since = (redis.writes(), redis.dropped());
            let r = srv.patch(&path, body).await;
            revision(&r);
            assert_eq!(settle(redis, since, k).await, (k, 0), "{step}: entry writes, dropped");
        }
        // A group of three matching no rule: recomputed, unchanged, no entry.
        let since = (redis.writes(), redis.dropped());
        let inner = srv.post("/Groups", json!({"schemas": [GROUP], "displayName": "Inner",
            "members": nested.iter().map(|n| json!({"value": n})).collect::<Vec<_>>()})).await;
        let inner_id = inner.body["id"].as_str().unwrap().to_string();
        assert_eq!(settle(redis, since, 0).await, (0, 0), "an unmapped group of three");
        // Nested into the mapped group: its three users gain the role.
        let since = (redis.writes(), redis.dropped());
        srv.patch(&format!("/Groups/{gid}"), add_member(&inner_id)).await;
        assert_eq!(settle(redis, since, 3).await, (3, 0), "a nested group of three added");
        for n in &nested {
            assert!(allowed(&srv.app, &tenant, n).await);
        }
        // Renamed away from the rule: the direct member and the three nested lose it.
        let since = (redis.writes(), redis.dropped());
        srv.patch(&format!("/Groups/{gid}"), replace("displayName", json!("Renamed"))).await;
        assert_eq!(settle(redis, since, 4).await, (4, 0), "the mapped group renamed");
        let since = (redis.writes(), redis.dropped());
        srv.patch(&format!("/Groups/{gid}"), replace("displayName", json!("Chat Agents"))).await;
        assert_eq!(settle(redis, since, 4).await, (4, 0), "renamed back");
        let keys_before = keys(REDIS, &prefix).await;
        // Forty more writes, each flipping one user: forty entries, no new key.
        let since = (redis.writes(), redis.dropped());
        for i in 0..40 {
            let u = &direct[1 + i % 3];
            let body = if (i / 3) % 2 == 0 { add_member(u) } else { remove_member(u) };
            let r = srv.patch(&format!("/Groups/{gid}"), body).await;
            assert_eq!(r.status, 204, "{}", r.body);
        }
        assert_eq!(settle(redis, since, 40).await, (40, 0), "forty one-user writes");
        // A deleted user's entry becomes a tombstone in place.
        let gone = nested[2].clone();
        let since = (redis.writes(), redis.dropped());
        let del_rev = revision(&srv.delete(&format!("/Users/{gone}")).await);
        assert_eq!(settle(redis, since, 1).await, (1, 0), "a user deleted");
        let keys_after = keys(REDIS, &prefix).await;
        assert_eq!(keys_before, keys_after, "writes added keys instead of replacing them in place");
        assert!(keys_after.len() <= all_users, "{} keys for {all_users} users: {keys_after:?}", keys_after.len());
        let key_of = |u: &str| format!("{prefix}eff:{}:{u}", tenant.id);
        let mut expected: Vec<String> = direct.iter().chain(&nested).map(|u| key_of(u)).collect();
        expected.sort();
        assert_eq!(keys_after, expected, "one key per user, under the tenant's id");
        // Every entry is the user's current answer (or the tombstone).
        let mut conn = redis_conn(REDIS).await;
        let current = answer(&srv.app, &tenant, &a, Consistency::Full).await.revision;
        for u in direct.iter().chain(&nested) {
            let raw: String = redis::cmd("GET").arg(key_of(u)).query_async(&mut conn).await.unwrap();
            let (as_of, body) = raw.split_once('|').expect("as_of|json");
            let as_of: i64 = as_of.parse().unwrap();
            assert!(as_of <= current, "entry of {u} ahead of the tenant: {as_of} > {current}");
            if *u == gone {
                assert_eq!((as_of, body), (del_rev, ""), "tombstone of the deleted user");
                continue;
            }
            let full = answer(&srv.app, &tenant, u, Consistency::Full).await;
            let cached: Value = serde_json::from_str(body).unwrap();
            assert_eq!(cached, serde_json::to_value(&*full.summary).unwrap(), "entry of {u}");
        }
        drop_keys(REDIS, &prefix).await;
    }
}

each_backend! {
    async fn a_second_app_answers_from_redis_at_the_write_revision(backend) {
        let prefix = format!("{}:", unique("rbtest"));
        let srv = TestServer::start_mapped_redis(backend, MAPPING, REDIS, &prefix).await;
        srv.app.ready().await.expect("Redis on 127.0.0.1:6379");
        let tenant = tenant_of(&srv).await;
        let u = srv.user("u").await;
        let v = srv.user("v").await;
        let g = srv.post("/Groups", json!({"schemas": [GROUP], "displayName": "Chat Agents", "members": [{"value": u}]})).await;
        let rev = revision(&g);
        redis_of(&srv.app).flush().await;
        // A Redis GET may time out on a loaded 2-core machine (the check then
        // reads the store, correctly); a fresh second app per attempt keeps
        // that from hiding behind its breaker or its in-process cache.
        let mut served = None;
        for _ in 0..5 {
            let sibling = srv.sibling_app(Some((REDIS, &prefix))).await;
            sibling.ready().await.expect("sibling reaches Redis");
            let c = answer(&sibling, &tenant, &u, Consistency::AtLeastAsFresh(rev)).await;
            assert!(grants(&c), "at_least_as_fresh({rev}) after the grant");
            assert!(c.revision >= rev, "answered at {} < {rev}", c.revision);
            if c.from == AnsweredFrom::Redis {
                assert_eq!(c.revision, rev, "the entry is current as of the write that changed the user");
                served = Some(sibling);
                break;
            }
            assert_eq!(c.from, AnsweredFrom::Store);
            assert!(count(&sibling.cache().metrics.redis_errors) >= 1, "a Redis miss without an error: the entry was not shared");
        }
        let sibling = served.expect("a second app never got the answer from Redis");
        // The same question again: the in-process cache now holds it.
        let c = answer(&sibling, &tenant, &u, Consistency::AtLeastAsFresh(rev)).await;
        assert_eq!((c.from, grants(&c)), (AnsweredFrom::LocalCache, true));
        // The default never reads a cache, in either app.
        let m = &sibling.cache().metrics;
        let (local, remote) = (count(&m.local_hits), count(&m.redis_hits));
        for app in [&sibling, &srv.app] {
            let c = answer(app, &tenant, &u, Consistency::Full).await;
            assert_eq!((c.from, grants(&c), c.revision), (AnsweredFrom::Store, true, rev));
        }
        assert_eq!((count(&m.local_hits), count(&m.redis_hits)), (local, remote), "a full check touched a cache");
        // A write that does not change u: u's entry (as of `rev`) is older
        // than the new revision, so that revision is answered by the store.
        let rev2 = revision(&srv.patch(&format!("/Users/{v}"), replace("title", json!("x"))).await);
        assert!(rev2 > rev);
        redis_of(&srv.app).flush().await;
        let c = answer(&sibling, &tenant, &u, Consistency::AtLeastAsFresh(rev2)).await;
        assert_eq!((c.from, grants(&c), c.revision), (AnsweredFrom::Store, true, rev2));
        // A revision the tenant has not reached is refused, not waited for.
        let ahead = sibling.user_permissions(&tenant, &UserRef::Id(u.clone()), Consistency::AtLeastAsFresh(rev2 + 100)).await;
        assert!(matches!(ahead, Err(rolebridge::app::Error::RevisionAhead { .. })), "{ahead:?}");
        // A forged entry at a huge revision: relaxed checks of a fresh app
        // take it from Redis, the default check never sees it.
        let forged = json!({"user": {"id": v, "userName": "v", "active": true}, "roles": ["chat_agent"], "profiles": [], "permissions": [PERM]});
        let mut conn = redis_conn(REDIS).await;
        let _: () = redis::cmd("SET").arg(format!("{prefix}eff:{}:{v}", tenant.id)).arg(format!("999999999|{forged}"))
            .query_async(&mut conn).await.unwrap();
        let fresh = srv.sibling_app(Some((REDIS, &prefix))).await;
        fresh.ready().await.expect("Redis");
        let full = answer(&fresh, &tenant, &v, Consistency::Full).await;
        assert_eq!((full.from, grants(&full)), (AnsweredFrom::Store, false), "the default check read the cache");
        let mut relaxed_read_redis = false;
        for _ in 0..5 {
            let c = answer(&fresh, &tenant, &v, Consistency::MinimizeLatency).await;
            if c.from == AnsweredFrom::Redis {
                assert!(grants(&c));
                relaxed_read_redis = true;
                break;
            }
            assert!(count(&fresh.cache().metrics.redis_errors) >= 1, "{:?} without a Redis error", c.from);
            tokio::time::sleep(Duration::from_millis(1100)).await;
            fresh.ready().await.expect("Redis");
        }
        assert!(relaxed_read_redis, "minimize_latency never read Redis");
        let full = answer(&fresh, &tenant, &v, Consistency::Full).await;
        assert_eq!((full.from, grants(&full)), (AnsweredFrom::Store, false), "the default check read a cache");
        drop_keys(REDIS, &prefix).await;
    }
}

each_backend! {
    async fn every_write_path_invalidates(backend) {
        let prefix = format!("{}:", unique("rbtest"));
        let srv = TestServer::start_mapped_redis(backend, MAPPING, REDIS, &prefix).await;
        srv.app.ready().await.expect("Redis on 127.0.0.1:6379");
        let tenant = tenant_of(&srv).await;
        let sibling = srv.sibling_app(Some((REDIS, &prefix))).await;
        sibling.ready().await.expect("sibling reaches Redis");
        let u = srv.user("u").await;
        let g = srv.post("/Groups", json!({"schemas": [GROUP], "displayName": "Chat Agents", "members": [{"value": u}]})).await;
        let gid = g.body["id"].as_str().unwrap().to_string();
        let both = |expected: bool, rev: i64, step: &'static str| {
            let (app, sib, tenant, u) = (srv.app.clone(), sibling.clone(), tenant.clone(), u.clone());
            async move {
                assert_eq!(allowed(&app, &tenant, &u).await, expected, "{step} (serving app)");
                assert_eq!(allowed(&sib, &tenant, &u).await, expected, "{step} (second app)");
                // The revision of the write: whatever cache answers, the answer follows it.
                for (who, a) in [("serving app", &app), ("second app", &sib)] {
                    let c = answer(a, &tenant, &u, Consistency::AtLeastAsFresh(rev)).await;
                    assert_eq!(grants(&c), expected, "{step} ({who}, at_least_as_fresh {rev}, from {:?})", c.from);
                    assert!(c.revision >= rev, "{step} ({who}): answered at {} < {rev}", c.revision);
                }
                // Warm the second app's caches with this answer before the next write.
                let _ = answer(&sib, &tenant, &u, Consistency::MinimizeLatency).await;
            }
        };
        both(true, revision(&g), "granted").await;
        let r = srv.patch(&format!("/Groups/{gid}"), remove_member(&u)).await;
        both(false, revision(&r), "member removed").await;
        let r = srv.patch(&format!("/Groups/{gid}"), add_member(&u)).await;
        both(true, revision(&r), "member re-added").await;
        let r = srv.patch(&format!("/Users/{u}"), replace("active", json!(false))).await;
        both(false, revision(&r), "user deactivated").await;
        let r = srv.patch(&format!("/Users/{u}"), replace("active", json!(true))).await;
        both(true, revision(&r), "user reactivated").await;
        let r = srv.patch(&format!("/Groups/{gid}"), replace("displayName", json!("Renamed"))).await;
        both(false, revision(&r), "group renamed away from the rule").await;
        let r = srv.patch(&format!("/Groups/{gid}"), replace("displayName", json!("Chat Agents"))).await;
        both(true, revision(&r), "group renamed back").await;
        // Mapping reload: the serving app reloads and reconciles (as serve
        // does on SIGHUP); the second process reloads its in-memory set.
        let file = srv.mappings_dir().join("tenants").join(format!("{}.yaml", srv.tenant));
        for (yaml, expected, step) in [
            (MAPPING.replace("Chat Agents", "Someone Else"), false, "mapping reloaded"),
            (MAPPING.to_string(), true, "mapping restored"),
        ] {
            std::fs::write(&file, yaml).unwrap();
            srv.app.reload_mappings().unwrap();
            assert_eq!(srv.app.reconcile_mappings().await.unwrap(), 1, "{step}: the tenant reconciled");
            sibling.reload_mappings().unwrap();
            let rev = answer(&srv.app, &tenant, &u, Consistency::Full).await.revision;
            both(expected, rev, step).await;
        }
        // Direct store writes (the path sync batches take) go through App::commit too.
        let mut tx = srv.app.store().begin_write().await.unwrap();
        tx.remove_members(tenant.id, &ResourceId::from_client(&gid), std::slice::from_ref(&u)).await.unwrap();
        let committed = srv.app.commit(tx).await.unwrap();
        let rev = committed.revision(tenant.id).expect("the batch's revision");
        assert_eq!(committed.changed, 1, "{committed:?}");
        both(false, rev, "store batch").await;
        let mut tx = srv.app.store().begin_write().await.unwrap();
        tx.add_members(tenant.id, &ResourceId::from_client(&gid), &[(u.clone(), "User")]).await.unwrap();
        let rev = srv.app.commit(tx).await.unwrap().revision(tenant.id).unwrap();
        both(true, rev, "store batch re-adds").await;
        let r = srv.delete(&format!("/Groups/{gid}")).await;
        both(false, revision(&r), "group deleted").await;
        let r = srv.delete(&format!("/Users/{u}")).await;
        let rev = revision(&r);
        for app in [&srv.app, &sibling] {
            for c in [Consistency::Full, Consistency::AtLeastAsFresh(rev)] {
                let gone = app.user_permissions(&tenant, &UserRef::Id(u.clone()), c).await;
                assert!(matches!(gone, Err(rolebridge::app::Error::UnknownUser(_))), "deleted user still answered at {c:?}: {gone:?}");
            }
        }
        drop_keys(REDIS, &prefix).await;
    }
}

each_backend! {
    async fn thousand_revokes_across_two_serve_processes(backend) {
        let db = fresh_database(backend).await;
        let tenant = unique("cyc");
        assert_eq!(cli(&db, &["tenant", "create", &tenant]).0, 0);
        let scim = crate::durability::cli_token(&db, &tenant, "scim");
        let perm = crate::durability::cli_token(&db, &tenant, "permissions");
        let dir = crate::support::mappings_dir_for(&tenant, MAPPING);
        let args = ["--mappings", dir.to_str().unwrap(), "--redis-url", REDIS];
        let (mut writer, waddr) = spawn_server(&db, None, &args);
        let (mut reader, raddr) = spawn_server(&db, None, &args);
        let client = reqwest::Client::new();
        let scim_base = format!("{waddr}/scim/v2/{tenant}");
        let user: serde_json::Value = client.post(format!("{scim_base}/Users")).bearer_auth(&scim)
            .json(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "cycler"}))
            .send().await.unwrap().json().await.unwrap();
        let uid = user["id"].as_str().unwrap().to_string();
        let group: serde_json::Value = client.post(format!("{scim_base}/Groups")).bearer_auth(&scim)
            .json(&json!({"schemas": [GROUP], "displayName": "Chat Agents"}))
            .send().await.unwrap().json().await.unwrap();
        let gid = group["id"].as_str().unwrap().to_string();
        let check = |url: String| {
            let (client, perm, uid) = (client.clone(), perm.clone(), uid.clone());
            async move {
                let r: serde_json::Value = client.post(url).bearer_auth(&perm)
                    .json(&json!({"user": uid, "permission": PERM}))
                    .send().await.unwrap().json().await.unwrap();
                r["allowed"].as_bool().unwrap_or_else(|| panic!("{r}"))
            }
        };
        let set_member = |present: bool| {
            let (client, scim, url, uid) = (client.clone(), scim.clone(), format!("{scim_base}/Groups/{gid}"), uid.clone());
            async move {
                let op = if present {
                    json!({"op": "add", "path": "members", "value": [{"value": uid}]})
                } else {
                    json!({"op": "remove", "path": format!("members[value eq \"{uid}\"]")})
                };
                let r = client.patch(url).bearer_auth(&scim).json(&json!({"schemas": [PATCH_OP], "Operations": [op]})).send().await.unwrap();
                let status = r.status();
                assert_eq!(status, 204, "{}", r.text().await.unwrap_or_default());
            }
        };
        let started = Instant::now();
        let mut stale = 0;
        let cycles = 1000;
        for i in 0..cycles {
            assert!(started.elapsed() < Duration::from_secs(240), "cycle {i}: over the time bound");
            set_member(true).await;
            // Warm the reader's caches with the grant...
            if !check(format!("{raddr}/api/v1/tenants/{tenant}/check")).await { stale += 1; }
            // ...then revoke through the writer and ask the reader again.
            set_member(false).await;
            if check(format!("{raddr}/api/v1/tenants/{tenant}/check")).await { stale += 1; }
            if check(format!("{waddr}/api/v1/tenants/{tenant}/check")).await { stale += 1; }
        }
        let _ = writer.kill();
        let _ = reader.kill();
        let _ = writer.wait();
        let _ = reader.wait();
        assert_eq!(stale, 0, "{stale} stale answers in {cycles} revoke-then-check cycles");
        eprintln!("{cycles} revoke-then-check cycles in {:.1} s, 0 stale", started.elapsed().as_secs_f64());
    }
}

/// A private redis-server on a free loopback port, killed on drop.
struct PrivateRedis {
    child: std::process::Child,
    port: u16,
}

impl PrivateRedis {
    fn start(port: Option<u16>) -> PrivateRedis {
        let port = port.unwrap_or_else(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        });
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server; .ci/run does)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        PrivateRedis { child, port }
    }
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    /// SIGSTOP: the port still accepts connections, nothing is answered.
    fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }
    fn resume(&self) {
        self.signal(libc::SIGCONT);
    }
    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        );
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        // SIGKILL also ends a stopped process.
        self.stop();
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outage {
    /// redis-server killed, later restarted on the same port.
    Killed,
    /// redis-server stopped (SIGSTOP), later continued.
    Hung,
}

/// The median, p99 and maximum of some latencies.
fn percentiles(mut v: Vec<Duration>) -> [Duration; 3] {
    v.sort();
    let at = |q: usize| v[(v.len() * q / 100).min(v.len() - 1)];
    [at(50), at(99), v[v.len() - 1]]
}

/// Checks every user once from `app`, alternating minimize_latency and
/// at_least_as_fresh(`rev`), each followed by the same check from
/// `control` (an app without Redis, so under the same machine load);
/// every answer must grant. Returns both apps' latencies.
async fn timed_checks(
    app: &App,
    control: &App,
    tenant: &Tenant,
    users: &[String],
    rev: i64,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut out, mut base) = (
        Vec::with_capacity(users.len()),
        Vec::with_capacity(users.len()),
    );
    for (i, u) in users.iter().enumerate() {
        let c = if i % 2 == 0 {
            Consistency::MinimizeLatency
        } else {
            Consistency::AtLeastAsFresh(rev)
        };
        for (a, lat) in [(app, &mut out), (control, &mut base)] {
            let t = Instant::now();
            let got = answer(a, tenant, u, c).await;
            lat.push(t.elapsed());
            assert!(grants(&got), "seeded member {u} denied at {c:?}");
        }
    }
    (out, base)
}

/// The bound on a check's p99 during an outage: generous for a store read
/// on a loaded 2-core machine, far below the 0.75-1.5 s of a check that
/// waits on Redis.
const OUTAGE_P99: Duration = Duration::from_millis(300);
/// How much slower than the same checks without Redis the median check may
/// be during an outage: a check that waited on Redis's 100 ms GET timeout
/// would be that much slower, whatever the machine's load.
const OUTAGE_MEDIAN_OVER_CONTROL: Duration = Duration::from_millis(50);

async fn outage(backend: crate::support::Backend, kind: Outage) {
    let mut redis_server = PrivateRedis::start(None);
    let url = redis_server.url();
    let prefix = "rb:";
    let srv = TestServer::start_mapped_redis(backend, MAPPING, &url, prefix).await;
    srv.app.ready().await.expect("the private Redis is up");
    let tenant = tenant_of(&srv).await;
    let gid = srv.group("Chat Agents").await;
    // 1,100 members: the second app's checks below each miss its
    // in-process cache, so each would go to Redis if nothing stopped it.
    let seeded = seed_members(&srv.app, &tenant, &gid, "member", 1100).await;
    let u = srv.user("u").await;
    let w = srv.user("w").await;
    let mut rev = revision(&srv.patch(&format!("/Groups/{gid}"), add_member(&u)).await);
    let redis = redis_of(&srv.app);
    // 1,100 seeded, u and w created, u added.
    let (written, _) = settle(redis, (0, 0), 1103).await;
    assert!(written >= 1100, "seeded entries reached Redis: {written}");
    let sibling = srv.sibling_app(Some((&url, prefix))).await;
    sibling.ready().await.expect("the sibling reaches Redis");
    let control = srv.sibling_app(None).await;
    // Before the outage the sibling does read Redis: the path measured below is live.
    let mut from_redis = 0;
    for s in &seeded[1000..1100] {
        let c = answer(&sibling, &tenant, s, Consistency::MinimizeLatency).await;
        assert!(grants(&c));
        from_redis += usize::from(c.from == AnsweredFrom::Redis);
    }
    assert!(
        from_redis >= 1,
        "the sibling never answered from Redis while it was up"
    );
    assert!(allowed(&sibling, &tenant, &u).await);

    match kind {
        Outage::Killed => redis_server.stop(),
        Outage::Hung => redis_server.pause(),
    }
    let errors_before =
        count(&sibling.cache().metrics.redis_errors) + count(&srv.app.cache().metrics.redis_errors);
    // Revokes and grants right after: writes stay fast, no check serves the old answer.
    for cycle in 0..10 {
        for present in [false, true] {
            let t = Instant::now();
            let body = if present {
                add_member(&u)
            } else {
                remove_member(&u)
            };
            let r = srv.patch(&format!("/Groups/{gid}"), body).await;
            assert_eq!(r.status, 204, "{}", r.body);
            rev = revision(&r);
            assert!(
                t.elapsed() < Duration::from_secs(1),
                "{kind:?} Redis, cycle {cycle}: a PATCH took {:?}",
                t.elapsed()
            );
            for app in [&srv.app, &sibling] {
                for c in [Consistency::Full, Consistency::AtLeastAsFresh(rev)] {
                    let got = answer(app, &tenant, &u, c).await;
                    assert_eq!(
                        grants(&got),
                        present,
                        "{kind:?} Redis, cycle {cycle}, {c:?}, from {:?}",
                        got.from
                    );
                }
            }
        }
    }
    let t = Instant::now();
    assert!(srv.app.ready().await.is_err(), "/readyz reports Redis down");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "readiness waited {:?}",
        t.elapsed()
    );
    // Latency while Redis is out: 200 sequential checks, then 8 tasks x
    // 100, each paired with the same check from an app without Redis.
    let sequential = timed_checks(&sibling, &control, &tenant, &seeded[..200], rev).await;
    let tasks: Vec<_> = (0..8)
        .map(|k| {
            let (app, control, tenant) = (sibling.clone(), control.clone(), tenant.clone());
            let users = seeded[200 + k * 100..300 + k * 100].to_vec();
            tokio::spawn(async move { timed_checks(&app, &control, &tenant, &users, rev).await })
        })
        .collect();
    let (mut concurrent, mut concurrent_control) = (Vec::new(), Vec::new());
    for t in tasks {
        let (a, b) = t.await.unwrap();
        concurrent.extend(a);
        concurrent_control.extend(b);
    }
    for (what, lat, control_lat) in [
        ("200 sequential checks", sequential.0, sequential.1),
        ("8 tasks x 100 checks", concurrent, concurrent_control),
    ] {
        let [p50, p99, max] = percentiles(lat);
        let [c50, c99, cmax] = percentiles(control_lat);
        eprintln!("{kind:?} Redis, {what}: p50 {p50:?} p99 {p99:?} max {max:?}; without Redis p50 {c50:?} p99 {c99:?} max {cmax:?}");
        assert!(p99 < OUTAGE_P99, "{kind:?} Redis, {what}: p99 {p99:?}");
        assert!(
            p50 < c50 + OUTAGE_MEDIAN_OVER_CONTROL,
            "{kind:?} Redis, {what}: median {p50:?}, without Redis {c50:?}"
        );
    }
    let errors = count(&sibling.cache().metrics.redis_errors)
        + count(&srv.app.cache().metrics.redis_errors)
        - errors_before;
    assert!(errors <= 3, "{kind:?} Redis: {errors} Redis calls failed in 1,040 checks: the breaker did not skip Redis");
    assert!(
        !redis.is_healthy() && !redis_of(&sibling).is_healthy(),
        "the breaker is closed while Redis is out"
    );

    // Redis comes back: both apps use it again by themselves.
    let _back = match kind {
        Outage::Killed => Some(PrivateRedis::start(Some(redis_server.port))),
        Outage::Hung => {
            redis_server.resume();
            None
        }
    };
    let writes_before = redis.writes();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut active = true;
    loop {
        // A change of w's served permissions writes w's entry.
        active = !active;
        let r = srv
            .patch(&format!("/Users/{w}"), replace("active", json!(active)))
            .await;
        let rev_w = revision(&r);
        redis.flush().await;
        let c = answer(&sibling, &tenant, &w, Consistency::AtLeastAsFresh(rev_w)).await;
        assert_eq!(c.summary.user.active, active, "w's answer at {rev_w}");
        assert!(allowed(&sibling, &tenant, &u).await);
        if redis.writes() > writes_before
            && c.from == AnsweredFrom::Redis
            && srv.app.ready().await.is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "{kind:?} Redis: not used again 15 s after it came back (writes {} -> {}, last answer from {:?})",
            writes_before, redis.writes(), c.from);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(sibling.ready().await.is_ok());
}

each_backend! {
    async fn redis_killed_then_back(backend) {
        outage(backend, Outage::Killed).await;
    }
}

each_backend! {
    async fn redis_hung_then_back(backend) {
        outage(backend, Outage::Hung).await;
    }
}
