//! Consistency of the permissions API over HTTP: the revision every SCIM
//! write returns, checks at `at_least_as_fresh` / `consistency`, the batch
//! check, nested-group and limited-slot changes answered at once, and a
//! mapping reload switching a 2,000-user tenant atomically under
//! concurrent checks.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::cache::{revision, seed_members, tenant_of};
use crate::each_backend;
use crate::support::{Resp, TestServer, GROUP, PATCH_OP, USER};

const MAPPING: &str = "catalog: haptik\nrules:\n  - id: agents\n    match: {display_name: \"Chat Agents\"}\n    assign: {roles: [chat_agent]}\n";
/// Granted by `chat_agent`, not by `chat_agent_tl`.
const PERM: &str = "take_and_respond_to_chats";
/// Granted by `chat_agent_tl`, not by `chat_agent`.
const TL_PERM: &str = "manage_teams";
const GMS: &str = "catalog: gms\ndefault_role: designer\nrules:\n  - id: owners\n    match: {display_name: \"Owners\"}\n    assign: {roles: [owner]}\n    priority: 100\n";
const BULK: &str = "urn:ietf:params:scim:api:messages:2.0:BulkRequest";

/// The permissions API of one tenant, with a `permissions` token.
struct Api<'a> {
    srv: &'a TestServer,
    token: String,
    base: String,
}

impl<'a> Api<'a> {
    async fn new(srv: &'a TestServer) -> Api<'a> {
        Api {
            srv,
            token: srv.permissions_token().await,
            base: format!("http://{}/api/v1/tenants/{}", srv.addr, srv.tenant),
        }
    }
    async fn post(&self, path: &str, body: Value) -> Resp {
        self.srv
            .send_with(
                Method::POST,
                &format!("{}{path}", self.base),
                Some(body),
                &[],
                Some(&self.token),
            )
            .await
    }
    async fn check(&self, body: Value) -> Resp {
        self.post("/check", body).await
    }
    /// `allowed` and `revision` of a check that must succeed.
    async fn allowed(&self, body: Value) -> (bool, i64) {
        let r = self.check(body.clone()).await;
        assert_eq!(r.status, 200, "{body}: {}", r.body);
        (
            r.body["allowed"].as_bool().unwrap(),
            r.body["revision"].as_i64().unwrap(),
        )
    }
    async fn batch(&self, body: Value) -> Resp {
        self.post("/check/batch", body).await
    }
    async fn perms(&self, user: &str, query: &str) -> Resp {
        let url = format!("{}/users/{user}/permissions{query}", self.base);
        self.srv
            .send_with(Method::GET, &url, None, &[], Some(&self.token))
            .await
    }
    /// The roles of a user, by GET .../permissions at `query`.
    async fn roles(&self, user: &str, query: &str) -> Vec<String> {
        let r = self.perms(user, query).await;
        assert_eq!(r.status, 200, "{}", r.body);
        strings(&r.body["roles"])
    }
    /// The explanation text of a check with `explain: true`.
    async fn explain(&self, user: &str, permission: &str) -> (bool, String) {
        let r = self
            .check(json!({"user": user, "permission": permission, "explain": true}))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        (
            r.body["allowed"].as_bool().unwrap(),
            r.body["explanation"]["text"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        )
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

#[track_caller]
fn error_code(r: &Resp, status: u16) -> String {
    assert_eq!(r.status.as_u16(), status, "{}", r.body);
    r.body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code: {}", r.body))
        .to_string()
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

async fn group_of(srv: &TestServer, name: &str, members: &[&str]) -> (String, i64) {
    let r = srv
        .post(
            "/Groups",
            json!({"schemas": [GROUP], "displayName": name,
        "members": members.iter().map(|m| json!({"value": m})).collect::<Vec<_>>()}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    (r.body["id"].as_str().unwrap().to_string(), revision(&r))
}

/// The revision of a successful write, which must be above `last`.
#[track_caller]
fn advance(last: &mut i64, r: &Resp, what: &str) -> i64 {
    let rev = revision(r);
    assert!(rev > *last, "{what}: revision {rev} after {last}");
    *last = rev;
    rev
}

#[track_caller]
fn no_revision(r: &Resp, what: &str) {
    assert!(
        r.header("x-rolebridge-revision").is_none(),
        "{what} ({}) carries a revision",
        r.status
    );
}

each_backend! {
    async fn every_write_returns_a_growing_revision(backend) {
        let srv = TestServer::start_mapped(backend, MAPPING).await;
        let api = Api::new(&srv).await;
        let mut last = 0i64;
        let mut next = |r: &Resp, what: &str| advance(&mut last, r, what);
        let r = srv.post("/Users", json!({"schemas": [USER], "userName": "a"})).await;
        assert_eq!(r.status, 201);
        next(&r, "POST /Users");
        let a = r.body["id"].as_str().unwrap().to_string();
        let r = srv.post("/Users", json!({"schemas": [USER], "userName": "b"})).await;
        next(&r, "POST /Users");
        let b = r.body["id"].as_str().unwrap().to_string();
        let r = srv.put(&format!("/Users/{a}"), json!({"schemas": [USER], "userName": "a", "title": "Lead"})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        next(&r, "PUT /Users");
        let r = srv.patch(&format!("/Users/{a}"), replace("title", json!("Chief"))).await;
        assert_eq!(r.status, 200, "{}", r.body);
        next(&r, "PATCH /Users");
        let r = srv.post("/Groups", json!({"schemas": [GROUP], "displayName": "Chat Agents", "members": [{"value": a}]})).await;
        assert_eq!(r.status, 201);
        next(&r, "POST /Groups");
        let g = r.body["id"].as_str().unwrap().to_string();
        let r = srv.patch(&format!("/Groups/{g}"), add_member(&b)).await;
        assert_eq!(r.status, 204, "{}", r.body);
        let granted = next(&r, "PATCH /Groups (204)");
        assert!(api.allowed(json!({"user": b, "permission": PERM, "at_least_as_fresh": granted})).await.0);
        let r = srv.put(&format!("/Groups/{g}"), json!({"schemas": [GROUP], "displayName": "Chat Agents", "members": [{"value": a}]})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let revoked = next(&r, "PUT /Groups");
        assert!(!api.allowed(json!({"user": b, "permission": PERM, "at_least_as_fresh": revoked})).await.0);
        let r = srv.post("/Bulk", json!({"schemas": [BULK], "Operations": [
            {"method": "POST", "path": "/Users", "bulkId": "c", "data": {"schemas": [USER], "userName": "c"}},
            {"method": "PATCH", "path": format!("/Groups/{g}"), "data": add_member("bulkId:c")}
        ]})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["Operations"][1]["status"], "200", "{}", r.body);
        let bulk = next(&r, "POST /Bulk");
        let c = r.body["Operations"][0]["location"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
        // The bulk's revision covers its last operation.
        assert!(api.allowed(json!({"user": c, "permission": PERM, "at_least_as_fresh": bulk})).await.0);
        // Reads carry no revision.
        no_revision(&srv.get(&format!("/Users/{a}")).await, "GET /Users/{id}");
        no_revision(&srv.get("/Groups").await, "GET /Groups");
        // Failed writes carry none and do not advance the tenant.
        let failures = [
            ("duplicate userName", srv.post("/Users", json!({"schemas": [USER], "userName": "A"})).await, 409),
            ("no userName", srv.post("/Users", json!({"schemas": [USER]})).await, 400),
            ("bad PATCH path", srv.patch(&format!("/Users/{a}"), replace("nosuch[", json!(1))).await, 400),
            ("PATCH of a missing user", srv.patch("/Users/does-not-exist", replace("title", json!("x"))).await, 404),
            ("PUT renaming onto a taken userName", srv.put(&format!("/Users/{b}"), json!({"schemas": [USER], "userName": "a"})).await, 409),
            ("DELETE of a missing group", srv.delete("/Groups/does-not-exist").await, 404),
        ];
        for (what, r, status) in &failures {
            assert_eq!(r.status.as_u16(), *status, "{what}: {}", r.body);
            no_revision(r, what);
        }
        let r = srv.post("/Bulk", json!({"schemas": [BULK], "Operations": [
            {"method": "POST", "path": "/Users", "bulkId": "x", "data": {"schemas": [USER], "userName": "a"}}
        ]})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["Operations"][0]["status"], "409", "{}", r.body);
        no_revision(&r, "a bulk whose only operation failed");
        let (_, now) = api.allowed(json!({"user": a, "permission": PERM})).await;
        assert_eq!(now, last, "failed writes advanced the tenant revision");
        let mut next = |r: &Resp, what: &str| advance(&mut last, r, what);
        let r = srv.delete(&format!("/Users/{b}")).await;
        assert_eq!(r.status, 204);
        next(&r, "DELETE /Users");
        let r = srv.delete(&format!("/Groups/{g}")).await;
        assert_eq!(r.status, 204);
        let deleted = next(&r, "DELETE /Groups");
        let (allowed, at) = api.allowed(json!({"user": a, "permission": PERM, "at_least_as_fresh": deleted})).await;
        assert!(!allowed && at >= deleted);
    }
}

each_backend! {
    async fn check_consistency_parameters(backend) {
        let srv = TestServer::start_mapped(backend, MAPPING).await;
        let api = Api::new(&srv).await;
        let u = srv.user("u").await;
        let (g, _) = group_of(&srv, "Chat Agents", &[&u]).await;
        // Revoke and re-grant, each checked at the revision of its write.
        let mut revoked = 0;
        for cycle in 0..10 {
            revoked = revision(&srv.patch(&format!("/Groups/{g}"), remove_member(&u)).await);
            for body in [
                json!({"user": u, "permission": PERM, "at_least_as_fresh": revoked}),
                json!({"user": u, "permission": PERM, "at_least_as_fresh": revoked.to_string()}),
                json!({"user": "u", "permission": PERM, "at_least_as_fresh": revoked}),
                json!({"user": u, "permission": PERM}),
                json!({"user": u, "permission": PERM, "consistency": "full"}),
            ] {
                let (allowed, at) = api.allowed(body.clone()).await;
                assert!(!allowed, "cycle {cycle}: revoked grant served for {body}");
                assert!(at >= revoked, "cycle {cycle}: answered at {at} < {revoked}");
            }
            let granted = revision(&srv.patch(&format!("/Groups/{g}"), add_member(&u)).await);
            let (allowed, at) = api.allowed(json!({"user": u, "permission": PERM, "at_least_as_fresh": granted})).await;
            assert!(allowed && at >= granted, "cycle {cycle}: grant at {granted} not served");
        }
        let r = srv.patch(&format!("/Groups/{g}"), remove_member(&u)).await;
        let rev = revision(&r);
        assert!(rev > revoked);
        let (allowed, at) = api.allowed(json!({"user": u, "permission": PERM, "consistency": "minimize_latency"})).await;
        assert!(at <= rev, "minimize_latency answered at {at}, ahead of the tenant at {rev}");
        assert!(!allowed || at < rev, "an answer current at {at} must be the revoked one");
        // A revision the tenant has not reached, and malformed requests.
        let r = api.check(json!({"user": u, "permission": PERM, "at_least_as_fresh": rev + 1})).await;
        assert_eq!(error_code(&r, 400), "revision_ahead");
        let r = api.check(json!({"user": u, "permission": PERM, "at_least_as_fresh": (rev + 1000).to_string()})).await;
        assert_eq!(error_code(&r, 400), "revision_ahead");
        for (what, body) in [
            ("both modes", json!({"user": u, "permission": PERM, "consistency": "full", "at_least_as_fresh": rev})),
            ("an unknown consistency", json!({"user": u, "permission": PERM, "consistency": "bogus"})),
            ("a non-numeric revision", json!({"user": u, "permission": PERM, "at_least_as_fresh": "twelve"})),
            ("revision zero", json!({"user": u, "permission": PERM, "at_least_as_fresh": 0})),
            ("a negative revision", json!({"user": u, "permission": PERM, "at_least_as_fresh": -3})),
            ("an unknown field", json!({"user": u, "permission": PERM, "freshness": rev})),
        ] {
            let r = api.check(body).await;
            assert_eq!(r.status, 400, "{what}: {}", r.body);
            assert!(r.body["error"]["code"].is_string(), "{what}: {}", r.body);
        }
        // The same parameters on GET .../permissions.
        for query in [format!("?at_least_as_fresh={rev}"), "?consistency=full".into(), String::new(), format!("?by=userName&at_least_as_fresh={rev}")] {
            let who = if query.contains("userName") { "u" } else { u.as_str() };
            let r = api.perms(who, &query).await;
            assert_eq!(r.status, 200, "{query}: {}", r.body);
            assert!(r.body["revision"].as_i64().unwrap() >= rev, "{query}: {}", r.body);
            assert!(!strings(&r.body["permissions"]).contains(&PERM.to_string()), "{query}: revoked grant served: {}", r.body);
            assert_eq!(r.body["user"]["id"], u.as_str());
        }
        let r = api.perms(&u, "?consistency=minimize_latency").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body["revision"].as_i64().unwrap() <= rev);
        let r = api.perms(&u, &format!("?at_least_as_fresh={}", rev + 1)).await;
        assert_eq!(error_code(&r, 400), "revision_ahead");
        for query in ["?bogus=1", "?consistency=bogus", &format!("?consistency=full&at_least_as_fresh={rev}"), "?at_least_as_fresh=abc"] {
            let r = api.perms(&u, query).await;
            assert_eq!(r.status, 400, "{query}: {}", r.body);
        }
    }
}

each_backend! {
    async fn batch_checks(backend) {
        let srv = TestServer::start_mapped(backend, MAPPING).await;
        let api = Api::new(&srv).await;
        let a = srv.user("a").await;
        let b = srv.user("b").await;
        let (g, rev) = group_of(&srv, "Chat Agents", &[&a]).await;
        let r = api.batch(json!({"checks": [
            {"user": a, "permission": PERM},
            {"user": b, "permission": PERM},
            {"user": "nobody", "permission": PERM},
            {"user": a, "permission": "fly"},
            {"user": a, "permission": "assign_chats_different_team"},
            {"user": "a", "permission": PERM},
            {"user": b, "permission": "fly"},
        ]})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let results = r.body["results"].as_array().unwrap();
        assert_eq!(results.len(), 7, "{}", r.body);
        let allowed: Vec<Option<bool>> = results.iter().map(|x| x["allowed"].as_bool()).collect();
        assert_eq!(allowed, [Some(true), Some(false), None, None, Some(false), Some(true), None], "{}", r.body);
        assert_eq!(results[2]["error"]["code"], "unknown_user", "{}", r.body);
        assert_eq!(results[3]["error"]["code"], "unknown_permission", "{}", r.body);
        assert_eq!(results[6]["error"]["code"], "unknown_permission", "{}", r.body);
        for i in [0, 1, 4, 5] {
            assert!(results[i]["revision"].as_i64().unwrap() >= rev, "{}", results[i]);
            assert!(results[i].get("error").is_none());
        }
        // Sizes: 1 to 1,000 pairs.
        let pairs = |n: usize| (0..n).map(|i| json!({"user": if i % 2 == 0 { &a } else { &b }, "permission": PERM})).collect::<Vec<_>>();
        let r = api.batch(json!({"checks": pairs(1000)})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let results = r.body["results"].as_array().unwrap();
        assert_eq!(results.len(), 1000);
        assert!(results.iter().enumerate().all(|(i, x)| x["allowed"] == (i % 2 == 0)), "1,000 answers out of order");
        for (what, body) in [
            ("0 pairs", json!({"checks": []})),
            ("1,001 pairs", json!({"checks": pairs(1001)})),
            ("no checks", json!({})),
            ("an unknown field", json!({"checks": pairs(1), "limit": 3})),
            ("a pair without permission", json!({"checks": [{"user": a}]})),
            ("both modes", json!({"checks": pairs(1), "consistency": "full", "at_least_as_fresh": rev})),
            ("an unknown consistency", json!({"checks": pairs(1), "consistency": "bogus"})),
        ] {
            let r = api.batch(body).await;
            assert_eq!(r.status, 400, "{what}: {}", r.body);
        }
        // Right after a revoking write, no batch allows the revoked pair.
        for cycle in 0..15 {
            let revoked = revision(&srv.patch(&format!("/Groups/{g}"), remove_member(&a)).await);
            for extra in [json!({}), json!({"at_least_as_fresh": revoked}), json!({"at_least_as_fresh": revoked.to_string()})] {
                let mut body = json!({"checks": [{"user": b, "permission": PERM}, {"user": a, "permission": PERM}, {"user": "a", "permission": PERM}]});
                for (k, v) in extra.as_object().unwrap() {
                    body[k] = v.clone();
                }
                let r = api.batch(body.clone()).await;
                assert_eq!(r.status, 200, "{}", r.body);
                for x in r.body["results"].as_array().unwrap() {
                    assert_eq!(x["allowed"], false, "cycle {cycle}: {body} -> {}", r.body);
                    assert!(x["revision"].as_i64().unwrap() >= revoked, "cycle {cycle}: {}", r.body);
                }
            }
            let granted = revision(&srv.patch(&format!("/Groups/{g}"), add_member(&a)).await);
            let r = api.batch(json!({"checks": [{"user": a, "permission": PERM}], "at_least_as_fresh": granted})).await;
            assert_eq!(r.body["results"][0]["allowed"], true, "cycle {cycle}: {}", r.body);
        }
        // Another tenant's user, granted there, is unknown here.
        let (other, other_scim) = srv.other_tenant().await;
        std::fs::write(srv.mappings_dir().join("tenants").join(format!("{other}.yaml")), MAPPING).unwrap();
        srv.app.reload_mappings().unwrap();
        srv.app.reconcile_mappings().await.unwrap();
        let other_base = format!("http://{}/scim/v2/{other}", srv.addr);
        let r = srv.send_with(Method::POST, &format!("{other_base}/Users"), Some(json!({"schemas": [USER], "userName": "stranger"})), &[], Some(&other_scim)).await;
        assert_eq!(r.status, 201, "{}", r.body);
        let x = r.body["id"].as_str().unwrap().to_string();
        let r = srv.send_with(Method::POST, &format!("{other_base}/Groups"), Some(json!({"schemas": [GROUP], "displayName": "Chat Agents", "members": [{"value": x}]})), &[], Some(&other_scim)).await;
        assert_eq!(r.status, 201, "{}", r.body);
        let other_perm = srv.app.create_token(&rolebridge::domain::TenantName::parse(&other).unwrap(), rolebridge::domain::Scope::Permissions).await.unwrap();
        let r = srv.send_with(Method::POST, &format!("http://{}/api/v1/tenants/{other}/check/batch", srv.addr),
            Some(json!({"checks": [{"user": x, "permission": PERM}]})), &[], Some(other_perm.token.expose())).await;
        assert_eq!(r.body["results"][0]["allowed"], true, "the stranger is granted in their own tenant: {}", r.body);
        let r = api.batch(json!({"checks": [{"user": x, "permission": PERM}, {"user": "stranger", "permission": PERM}, {"user": a, "permission": PERM}]})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["results"][0]["error"]["code"], "unknown_user", "{}", r.body);
        assert_eq!(r.body["results"][1]["error"]["code"], "unknown_user", "{}", r.body);
        assert_eq!(r.body["results"][2]["allowed"], true, "{}", r.body);
        // And a token of one tenant never answers for the other.
        let r = srv.send_with(Method::POST, &format!("http://{}/api/v1/tenants/{other}/check/batch", srv.addr),
            Some(json!({"checks": [{"user": x, "permission": PERM}]})), &[], Some(&api.token)).await;
        assert!(r.status == 401 || r.status == 403, "{}: {}", r.status, r.body);
    }
}

each_backend! {
    async fn nested_group_changes_apply_at_once(backend) {
        let srv = TestServer::start_mapped(backend, MAPPING).await;
        let api = Api::new(&srv).await;
        let u = srv.user("u").await;
        let (inner, _) = group_of(&srv, "Inner", &[&u]).await;
        let (outer, rev) = group_of(&srv, "Chat Agents", &[&inner]).await;
        let expect = |allowed: bool, rev: i64, step: &'static str| {
            let api = &api;
            let u = u.clone();
            async move {
                for body in [json!({"user": u, "permission": PERM}), json!({"user": u, "permission": PERM, "at_least_as_fresh": rev})] {
                    let (got, at) = api.allowed(body).await;
                    assert_eq!(got, allowed, "{step} (revision {rev})");
                    assert!(at >= rev, "{step}: answered at {at} < {rev}");
                }
                let r = api.batch(json!({"checks": [{"user": u, "permission": PERM}], "at_least_as_fresh": rev})).await;
                assert_eq!(r.body["results"][0]["allowed"], allowed, "{step} (batch): {}", r.body);
                let p = api.perms(&u, "").await;
                assert_eq!(strings(&p.body["permissions"]).contains(&PERM.to_string()), allowed, "{step} (GET): {}", p.body);
            }
        };
        expect(true, rev, "granted through nesting").await;
        let rev = revision(&srv.patch(&format!("/Groups/{outer}"), remove_member(&inner)).await);
        expect(false, rev, "inner group removed from the mapped group").await;
        let rev = revision(&srv.patch(&format!("/Groups/{outer}"), add_member(&inner)).await);
        expect(true, rev, "inner group re-added").await;
        let rev = revision(&srv.patch(&format!("/Groups/{inner}"), remove_member(&u)).await);
        expect(false, rev, "user removed from the inner group").await;
        let rev = revision(&srv.patch(&format!("/Groups/{inner}"), add_member(&u)).await);
        expect(true, rev, "user back in the inner group").await;
        let rev = revision(&srv.patch(&format!("/Groups/{outer}"), replace("displayName", json!("Former Agents"))).await);
        expect(false, rev, "mapped group renamed away from the rule").await;
        let rev = revision(&srv.patch(&format!("/Groups/{outer}"), replace("displayName", json!("Chat Agents"))).await);
        expect(true, rev, "renamed back").await;
        let r = srv.delete(&format!("/Groups/{inner}")).await;
        expect(false, revision(&r), "inner group deleted").await;
    }
}

each_backend! {
    async fn limited_slot_handed_over_at_once(backend) {
        let srv = TestServer::start_mapped(backend, GMS).await;
        let api = Api::new(&srv).await;
        let ann = srv.user("ann").await;
        let bob = srv.user("bob").await;
        let carol = srv.user("carol").await;
        let (owners, rev) = group_of(&srv, "Owners", &[&ann, &bob]).await;
        const OWNER_PERM: &str = "invited_users_create";
        // Who holds the slot at the revision of a write, by GET and by check.
        let holders = |rev: i64, expected: [(&'static str, &'static str); 3], step: &'static str| {
            let api = &api;
            let ids = [("ann", ann.clone()), ("bob", bob.clone()), ("carol", carol.clone())];
            async move {
                for ((name, id), (ename, role)) in ids.iter().zip(expected) {
                    assert_eq!(*name, ename);
                    let want: Vec<String> = if role.is_empty() { vec![] } else { vec![role.to_string()] };
                    assert_eq!(api.roles(id, "").await, want, "{step}: {name}'s roles");
                    assert_eq!(api.roles(id, &format!("?at_least_as_fresh={rev}")).await, want, "{step}: {name}'s roles at {rev}");
                    let (allowed, at) = api.allowed(json!({"user": id, "permission": OWNER_PERM, "at_least_as_fresh": rev})).await;
                    assert_eq!(allowed, role == "owner", "{step}: {name} {OWNER_PERM}");
                    assert!(at >= rev);
                }
            }
        };
        holders(rev, [("ann", "owner"), ("bob", "designer"), ("carol", "designer")], "ann created first").await;
        let (allowed, why) = api.explain(&bob, OWNER_PERM).await;
        assert!(!allowed);
        assert!(why.contains("max_per_tenant") && why.contains(&ann), "the loser's explanation names the holder: {why}");
        // ann leaves Owners: bob takes the slot in the same write.
        let rev = revision(&srv.patch(&format!("/Groups/{owners}"), remove_member(&ann)).await);
        holders(rev, [("ann", "designer"), ("bob", "owner"), ("carol", "designer")], "ann removed from Owners").await;
        // ann is back: the earliest created holds it again, bob loses it.
        let rev = revision(&srv.patch(&format!("/Groups/{owners}"), add_member(&ann)).await);
        holders(rev, [("ann", "owner"), ("bob", "designer"), ("carol", "designer")], "ann re-added").await;
        let (_, why) = api.explain(&bob, OWNER_PERM).await;
        assert!(why.contains(&ann), "{why}");
        // carol, created last, joins: she never displaces a holder.
        let rev = revision(&srv.patch(&format!("/Groups/{owners}"), add_member(&carol)).await);
        holders(rev, [("ann", "owner"), ("bob", "designer"), ("carol", "designer")], "carol joins Owners").await;
        // ann deactivated: an inactive user holds nothing, bob (next created) takes it.
        let rev = revision(&srv.patch(&format!("/Users/{ann}"), replace("active", json!(false))).await);
        holders(rev, [("ann", ""), ("bob", "owner"), ("carol", "designer")], "ann deactivated").await;
        let (allowed, why) = api.explain(&carol, OWNER_PERM).await;
        assert!(!allowed && why.contains(&bob) && !why.contains(&ann), "carol's explanation names bob: {why}");
        let rev = revision(&srv.patch(&format!("/Users/{ann}"), replace("active", json!(true))).await);
        holders(rev, [("ann", "owner"), ("bob", "designer"), ("carol", "designer")], "ann reactivated").await;
        // ann deleted: bob holds it; then bob removed from Owners: carol.
        let rev = revision(&srv.delete(&format!("/Users/{ann}")).await);
        let gone = api.perms(&ann, "").await;
        assert_eq!(error_code(&gone, 404), "unknown_user");
        for ((name, id), role) in [("bob", &bob), ("carol", &carol)].iter().zip(["owner", "designer"]) {
            assert_eq!(api.roles(id, &format!("?at_least_as_fresh={rev}")).await, vec![role.to_string()], "ann deleted: {name}");
        }
        let rev = revision(&srv.patch(&format!("/Groups/{owners}"), remove_member(&bob)).await);
        assert_eq!(api.roles(&bob, &format!("?at_least_as_fresh={rev}")).await, vec!["designer"], "bob removed");
        assert_eq!(api.roles(&carol, &format!("?at_least_as_fresh={rev}")).await, vec!["owner"], "carol takes the slot");
        // The group renamed away from the rule: nobody holds it.
        let rev = revision(&srv.patch(&format!("/Groups/{owners}"), replace("displayName", json!("Former Owners"))).await);
        for id in [&bob, &carol] {
            assert_eq!(api.roles(id, &format!("?at_least_as_fresh={rev}")).await, vec!["designer"]);
        }
        let metrics = srv.client.get(format!("http://{}/metrics", srv.addr)).send().await.unwrap().text().await.unwrap();
        assert!(!metrics.contains(&format!("rolebridge_mapping_refusals{{tenant=\"{}\"", srv.tenant)), "no refusal left: {metrics}");
    }
}

/// One answer a checking task saw.
struct Seen {
    started: Instant,
    revision: i64,
    /// `true`: the new mapping's answer, `false`: the old one's.
    new: bool,
}

each_backend! {
    async fn mapping_reload_switches_atomically_under_checks(backend) {
        let test_started = Instant::now();
        let srv = TestServer::start_mapped(backend, MAPPING).await;
        let api = Api::new(&srv).await;
        let tenant = tenant_of(&srv).await;
        let gid = srv.group("Chat Agents").await;
        let users = Arc::new(seed_members(&srv.app, &tenant, &gid, "agent", 2000).await);
        eprintln!("seeded 2,000 users in {:?}", test_started.elapsed());
        let old = api.perms(&users[0], "").await.body;
        assert_eq!(strings(&old["roles"]), ["chat_agent"], "{old}");
        let old_perms: BTreeSet<String> = strings(&old["permissions"]).into_iter().collect();
        assert!(old_perms.contains(PERM) && !old_perms.contains(TL_PERM), "{old}");
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..8usize)
            .map(|k| {
                let (client, token, stop, users) = (srv.client.clone(), api.token.clone(), stop.clone(), users.clone());
                let base = api.base.clone();
                let old_perms = old_perms.clone();
                tokio::spawn(async move {
                    let mut seen: Vec<Seen> = Vec::new();
                    let mut new_perms: Option<BTreeSet<String>> = None;
                    let deadline = Instant::now() + Duration::from_secs(120);
                    for i in 0..100_000usize {
                        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                            break;
                        }
                        let u = &users[(k * 250 + i * 7) % users.len()];
                        let started = Instant::now();
                        if i % 2 == 0 {
                            // The whole answer of one user: the old set or the new one.
                            let r = client.get(format!("{base}/users/{u}/permissions")).bearer_auth(&token).send().await.unwrap();
                            let status = r.status();
                            let body: Value = r.json().await.unwrap();
                            assert_eq!(status, 200, "task {k}: {body}");
                            let roles = strings(&body["roles"]);
                            let perms: BTreeSet<String> = strings(&body["permissions"]).into_iter().collect();
                            let new = match roles.as_slice() {
                                [r] if r == "chat_agent" => {
                                    assert_eq!(perms, old_perms, "task {k}: old role, other permissions: {body}");
                                    false
                                }
                                [r] if r == "chat_agent_tl" => {
                                    assert!(perms.contains(TL_PERM) && !perms.contains(PERM), "task {k}: {body}");
                                    let expected = new_perms.get_or_insert_with(|| perms.clone());
                                    assert_eq!(&perms, expected, "task {k}: two different new answers");
                                    true
                                }
                                _ => panic!("task {k}: neither mapping's answer: {body}"),
                            };
                            seen.push(Seen { started, revision: body["revision"].as_i64().unwrap(), new });
                        } else {
                            // Two permissions that only go together under one mapping.
                            let body = json!({"checks": [{"user": u, "permission": PERM}, {"user": u, "permission": TL_PERM}]});
                            let r = client.post(format!("{base}/check/batch")).bearer_auth(&token).json(&body).send().await.unwrap();
                            let status = r.status();
                            let body: Value = r.json().await.unwrap();
                            assert_eq!(status, 200, "task {k}: {body}");
                            let res = &body["results"];
                            let pair = (res[0]["allowed"].as_bool(), res[1]["allowed"].as_bool());
                            let new = match pair {
                                (Some(true), Some(false)) => false,
                                (Some(false), Some(true)) => true,
                                _ => panic!("task {k}: a mixed answer: {body}"),
                            };
                            assert_eq!(res[0]["revision"], res[1]["revision"], "task {k}: {body}");
                            seen.push(Seen { started, revision: res[0]["revision"].as_i64().unwrap(), new });
                        }
                    }
                    seen
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let file = srv.mappings_dir().join("tenants").join(format!("{}.yaml", srv.tenant));
        std::fs::write(&file, MAPPING.replace("chat_agent]", "chat_agent_tl]")).unwrap();
        let reload_started = Instant::now();
        srv.app.reload_mappings().unwrap();
        assert_eq!(srv.app.reconcile_mappings().await.unwrap(), 1);
        let reconciled = Instant::now();
        eprintln!("reload + reconcile of 2,000 users in {:?}", reconciled - reload_started);
        let switched_at = srv.app.user_permissions(&tenant, &rolebridge::app::UserRef::Id(users[0].clone()), rolebridge::app::Consistency::Full).await.unwrap().revision;
        tokio::time::sleep(Duration::from_millis(700)).await;
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for (k, t) in tasks.into_iter().enumerate() {
            let seen = t.await.unwrap_or_else(|e| panic!("task {k}: {e}"));
            // Per task: once the new answer was seen, never the old one again.
            if let Some(first_new) = seen.iter().position(|s| s.new) {
                assert!(seen[first_new..].iter().all(|s| s.new), "task {k}: the old mapping's answer after the new one");
            }
            for pair in seen.windows(2) {
                assert!(pair[1].revision >= pair[0].revision, "task {k}: revision went back {} -> {}", pair[0].revision, pair[1].revision);
            }
            all.extend(seen);
        }
        let (old_n, new_n) = (all.iter().filter(|s| !s.new).count(), all.iter().filter(|s| s.new).count());
        let after = all.iter().filter(|s| s.started >= reconciled).count();
        let during = all.iter().filter(|s| s.started >= reload_started && s.started < reconciled).count();
        eprintln!("{} answers: {old_n} old, {new_n} new; {during} while reconciling, {after} after", all.len());
        assert!(old_n > 0 && after > 0, "the checks did not straddle the reload");
        for s in &all {
            // An answer is the mapping of the revision it reports...
            assert_eq!(s.new, s.revision >= switched_at, "answer at revision {} (switch at {switched_at}) is the {} mapping's", s.revision, if s.new { "new" } else { "old" });
            // ...and once reconcile returned, only the new one.
            if s.started >= reconciled {
                assert!(s.new, "the old mapping's answer after reconcile returned");
            }
        }
        let new = api.perms(&users[1999], "").await.body;
        assert_eq!(strings(&new["roles"]), ["chat_agent_tl"], "{new}");
        assert!(test_started.elapsed() < Duration::from_secs(180), "took {:?}", test_started.elapsed());
    }
}
