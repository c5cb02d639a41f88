//! The effective-permission change feed: one event per user whose grants
//! change, written with the change, whatever caused it (a SCIM request, a
//! sync run, a mapping version); paging, long-polling, cursors that mean
//! the same on every replica, retention (410 and a listing to resync from).

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

pub(crate) use crate::mapping_admin::api;
use crate::mapping_admin::{token, V1, V2};
use crate::support::{Backend, Resp, TestServer, PATCH_OP};
use rolebridge::domain::{ChangeSeq, Scope, TenantName};

/// PATCHes members into (`op` add) or out of (remove) a group.
pub(crate) async fn members(srv: &TestServer, op: &str, group: &str, users: &[&str]) -> Resp {
    let value: Vec<Value> = users.iter().map(|u| json!({"value": u})).collect();
    let body = match op {
        "add" => {
            json!({"schemas": [PATCH_OP], "Operations": [{"op": "add", "path": "members", "value": value}]})
        }
        _ => {
            json!({"schemas": [PATCH_OP], "Operations": users.iter().map(|u| json!({"op": "remove", "path": format!("members[value eq \"{u}\"]")})).collect::<Vec<_>>()})
        }
    };
    let r = srv
        .send_with(
            Method::PATCH,
            &format!("{}/Groups/{group}", srv.base),
            Some(body),
            &[("x-request-id", "req-feed-1")],
            Some(&srv.token),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.body);
    r
}

/// A GMS tenant on V1, adopted as version 1, with a Designers group.
pub(crate) async fn mapped(backend: Backend) -> (TestServer, String) {
    let srv = TestServer::start_mapped(backend, V1).await;
    srv.app.adopt_store_mappings().await.expect("adopt");
    let designers = srv.group("Designers").await;
    (srv, designers)
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

crate::each_backend! {
    async fn scim_writes_append_one_event_per_user_whose_grants_change(backend) {
        let (srv, designers) = mapped(backend).await;
        let perm = token(&srv, Scope::Permissions).await;
        let ann = srv.user("ann").await;
        let bob = srv.user("bob").await;
        // Users without grants: no event yet.
        let r = api(&srv, &perm, Method::GET, "/changes", None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["events"], json!([]), "{}", r.body);
        assert_eq!(r.body["next"], 0);

        members(&srv, "add", &designers, &[&ann, &bob]).await;
        let r = api(&srv, &perm, Method::GET, "/changes", None).await;
        let events = r.body["events"].as_array().unwrap().clone();
        assert_eq!(events.len(), 2, "{}", r.body);
        assert_eq!(events.iter().map(|e| e["cursor"].as_i64().unwrap()).collect::<Vec<_>>(), [1, 2]);
        let e = events.iter().find(|e| e["user"]["id"] == ann.as_str()).unwrap();
        assert_eq!(e["user"]["userName"], "ann");
        assert_eq!(e["tenant"], srv.tenant.as_str());
        assert_eq!(strings(&e["added"]["roles"]), ["designer"]);
        assert!(!e["added"]["permissions"].as_array().unwrap().is_empty(), "{e}");
        assert_eq!(e["removed"]["roles"], json!([]));
        assert_eq!((e["active"].clone(), e["deleted"].clone()), (json!(true), json!(false)));
        assert_eq!(e["cause"]["kind"], "scim");
        assert_eq!(e["cause"]["method"], "PATCH");
        assert_eq!(e["cause"]["path"], format!("/scim/v2/{}/Groups/{designers}", srv.tenant));
        assert_eq!(e["cause"]["request_id"], "req-feed-1");
        // The token by its public id, never its secret.
        let token_id = e["cause"]["token"].as_str().unwrap();
        assert!(srv.token.starts_with(&format!("rb_{token_id}.")), "{e}");
        assert!(!e.to_string().contains(srv.token.split('.').nth(1).unwrap()), "the token's secret is in an event");
        let revision = e["revision"].as_i64().unwrap();
        assert!(revision >= 1);

        // Removing ann: an event that takes the role back. A userName
        // change alone changes no grant: no event.
        members(&srv, "remove", &designers, &[&ann]).await;
        let r = srv.patch(&format!("/Users/{bob}"), json!({"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "displayName", "value": "Bob B"}]})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = api(&srv, &perm, Method::GET, "/changes?after=2", None).await;
        let events = r.body["events"].as_array().unwrap().clone();
        assert_eq!(events.len(), 1, "{}", r.body);
        assert_eq!(events[0]["user"]["id"], ann.as_str());
        assert_eq!(strings(&events[0]["removed"]["roles"]), ["designer"]);
        assert!(events[0]["revision"].as_i64().unwrap() > revision);

        // Deactivating bob: what he held is removed, and `active` says why.
        let r = srv.patch(&format!("/Users/{bob}"), json!({"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "active", "value": false}]})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let r = api(&srv, &perm, Method::GET, "/changes?after=3", None).await;
        let e = &r.body["events"][0];
        assert_eq!((e["user"]["id"].clone(), e["active"].clone(), e["deleted"].clone()), (json!(bob), json!(false), json!(false)), "{}", r.body);
        assert_eq!(strings(&e["removed"]["roles"]), ["designer"]);
        assert_eq!(e["added"]["roles"], json!([]));

        // Deleting ann, who holds nothing now: no event. Reactivating and
        // then deleting bob: his grants come back, then go with `deleted`.
        assert_eq!(srv.delete(&format!("/Users/{ann}")).await.status, 204);
        let r = srv.patch(&format!("/Users/{bob}"), json!({"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "active", "value": true}]})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(srv.delete(&format!("/Users/{bob}")).await.status, 204);
        let r = api(&srv, &perm, Method::GET, "/changes?after=4", None).await;
        let events = r.body["events"].as_array().unwrap();
        assert_eq!(events.len(), 2, "{}", r.body);
        assert_eq!(strings(&events[0]["added"]["roles"]), ["designer"]);
        let e = &events[1];
        assert_eq!((e["user"]["id"].clone(), e["deleted"].clone(), e["active"].clone()), (json!(bob), json!(true), json!(false)), "{}", r.body);
        assert_eq!(strings(&e["removed"]["roles"]), ["designer"]);
        assert_eq!(e["cursor"], 6);
        assert_eq!(r.body["next"], 6);

        // Paging: limit, has_more, next.
        let r = api(&srv, &perm, Method::GET, "/changes?limit=4", None).await;
        assert_eq!(r.body["events"].as_array().unwrap().len(), 4);
        assert_eq!((r.body["next"].clone(), r.body["has_more"].clone()), (json!(4), json!(true)));
        let r = api(&srv, &perm, Method::GET, "/changes?after=4&limit=4", None).await;
        assert_eq!(r.body["events"].as_array().unwrap().len(), 2);
        assert_eq!((r.body["next"].clone(), r.body["has_more"].clone()), (json!(6), json!(false)));
        let r = api(&srv, &perm, Method::GET, "/changes?after=6", None).await;
        assert_eq!((r.body["events"].clone(), r.body["next"].clone()), (json!([]), json!(6)));

        // A request id too long to be one is not stored with the events.
        let cyd = srv.user("cyd").await;
        let body = json!({"schemas": [PATCH_OP], "Operations": [{"op": "add", "path": "members", "value": [{"value": cyd}]}]});
        let long = "r".repeat(300);
        let url = format!("{}/Groups/{designers}", srv.base);
        let r = srv.send_with(Method::PATCH, &url, Some(body), &[("x-request-id", long.as_str())], Some(&srv.token)).await;
        assert!(r.status.is_success(), "{}", r.body);
        let r = api(&srv, &perm, Method::GET, "/changes?after=6", None).await;
        let e = &r.body["events"][0];
        assert_eq!((e["user"]["id"].clone(), e["cause"]["method"].clone()), (json!(cyd), json!("PATCH")), "{}", r.body);
        assert!(e["cause"].get("request_id").is_none(), "{e}");
    }
}

crate::each_backend! {
    async fn feed_requests_are_checked(backend) {
        let (srv, designers) = mapped(backend).await;
        let perm = token(&srv, Scope::Permissions).await;
        let ann = srv.user("ann").await;
        members(&srv, "add", &designers, &[&ann]).await;
        for (query, code) in [
            ("after=abc", "invalid_request"),
            ("after=-1", "invalid_request"),
            ("after=99", "cursor_ahead"),
            ("limit=0", "invalid_request"),
            ("limit=5000", "invalid_request"),
            ("wait=soon", "invalid_request"),
            ("wait=90s", "invalid_request"),
            ("cursor=1", "invalid_request"),
        ] {
            let r = api(&srv, &perm, Method::GET, &format!("/changes?{query}"), None).await;
            assert_eq!(r.status, 400, "{query}: {}", r.body);
            assert_eq!(r.body["error"]["code"], code, "{query}: {}", r.body);
        }
        // Scope and tenant: a SCIM token, and another tenant's permissions token.
        let r = api(&srv, &srv.token, Method::GET, "/changes", None).await;
        assert_eq!(r.status, 403, "{}", r.body);
        let (other, _) = srv.other_tenant().await;
        let other_perm = srv.app.create_token(&TenantName::parse(&other).unwrap(), Scope::Permissions).await.unwrap();
        let r = api(&srv, other_perm.token.expose(), Method::GET, "/changes", None).await;
        assert_eq!(r.status, 403, "{}", r.body);
        // The other tenant's own feed is empty: tenants never see each other's events.
        let url = format!("http://{}/api/v1/tenants/{other}/changes", srv.addr);
        let r = Resp::read(srv.client.get(url).bearer_auth(other_perm.token.expose()).send().await.unwrap()).await;
        assert_eq!((r.status.as_u16(), r.body["events"].clone()), (200, json!([])), "{}", r.body);
    }
}

crate::each_backend! {
    async fn a_long_poll_wakes_on_a_write_here_and_on_another_replica(backend) {
        let (srv, designers) = mapped(backend).await;
        let perm = token(&srv, Scope::Permissions).await;
        let ann = srv.user("ann").await;
        let bob = srv.user("bob").await;
        // An empty wait lasts the wait.
        let t = Instant::now();
        let r = api(&srv, &perm, Method::GET, "/changes?wait=700ms", None).await;
        assert_eq!((r.status.as_u16(), r.body["events"].clone()), (200, json!([])));
        assert!(t.elapsed() >= Duration::from_millis(650), "{:?}", t.elapsed());

        // A waiting reader is answered when a write commits, long before the wait ends.
        let (srv_addr, tenant, perm2) = (srv.addr, srv.tenant.clone(), perm.clone());
        let waiter = tokio::spawn(async move {
            let t = Instant::now();
            let url = format!("http://{srv_addr}/api/v1/tenants/{tenant}/changes?wait=20s");
            let r = Resp::read(reqwest::Client::new().get(url).bearer_auth(perm2).send().await.unwrap()).await;
            (r, t.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        members(&srv, "add", &designers, &[&ann]).await;
        let (r, took) = waiter.await.unwrap();
        assert_eq!(r.body["events"].as_array().unwrap().len(), 1, "{}", r.body);
        assert!(took < Duration::from_secs(5), "answered after {took:?}");

        // Another replica (its own app on the same database) reads the same
        // events under the same cursors, and its waiting reader is woken by
        // this replica's write within its poll.
        let sibling = srv.sibling_app(None).await;
        let tenant = sibling.tenant(&TenantName::parse(&srv.tenant).unwrap()).await.unwrap();
        let mine = api(&srv, &perm, Method::GET, "/changes", None).await;
        let theirs = sibling.changes(&tenant, None, 100, Duration::ZERO).await.unwrap();
        assert_eq!(json!(theirs.events), mine.body["events"]);
        let wait = tokio::spawn({
            let sibling = sibling.clone();
            let tenant = tenant.clone();
            async move {
                let t = Instant::now();
                let page = sibling.changes(&tenant, Some(theirs.next), 100, Duration::from_secs(20)).await.unwrap();
                (page, t.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        members(&srv, "add", &designers, &[&bob]).await;
        let (page, took) = wait.await.unwrap();
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.events[0].user.id, bob);
        assert_eq!(page.events[0].cursor, ChangeSeq::new(2).unwrap());
        assert!(took < Duration::from_secs(5), "answered after {took:?}");
    }
}

crate::each_backend! {
    async fn a_mapping_version_appends_events_naming_it(backend) {
        let (srv, designers) = mapped(backend).await;
        let perm = token(&srv, Scope::Permissions).await;
        let admin = token(&srv, Scope::Admin).await;
        let ann = srv.user("ann").await;
        members(&srv, "add", &designers, &[&ann]).await;
        // V2 drops the designers rule: ann loses the role.
        let r = api(&srv, &admin, Method::POST, "/mappings/plan", Some(json!({"base": 1, "text": V2}))).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let hash = r.body["hash"].as_str().unwrap().to_string();
        let r = api(&srv, &admin, Method::POST, "/mappings", Some(json!({"base": 1, "text": V2, "confirm": hash}))).await;
        assert_eq!(r.status, 201, "{}", r.body);
        let r = api(&srv, &perm, Method::GET, "/changes?after=1", None).await;
        let events = r.body["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{}", r.body);
        assert_eq!(events[0]["user"]["id"], ann.as_str());
        assert_eq!(strings(&events[0]["removed"]["roles"]), ["designer"]);
        assert_eq!(events[0]["cause"], json!({"kind": "mapping", "version": 2}));
    }
}

crate::each_backend! {
    async fn an_expired_cursor_gets_410_and_the_listing_resyncs(backend) {
        let (srv, designers) = mapped(backend).await;
        let perm = token(&srv, Scope::Permissions).await;
        let mut users = Vec::new();
        for i in 0..5 {
            users.push(srv.user(&format!("u{i}")).await);
        }
        let refs: Vec<&str> = users.iter().map(String::as_str).collect();
        members(&srv, "add", &designers, &refs[..3]).await;
        // Everything older than now is past a 1 ms retention.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(srv.app.prune_changes(Duration::from_millis(1)).await.unwrap(), 3);
        members(&srv, "add", &designers, &refs[3..]).await;

        let r = api(&srv, &perm, Method::GET, "/changes?after=1", None).await;
        assert_eq!(r.status, 410, "{}", r.body);
        assert_eq!(r.body["error"]["code"], "cursor_expired");
        assert_eq!(r.body["error"]["oldest"], 3);
        assert_eq!(r.body["error"]["resync"], format!("/api/v1/tenants/{}/permissions", srv.tenant));
        // From the oldest retained (no cursor), and from exactly the pruned point: fine.
        let r = api(&srv, &perm, Method::GET, "/changes", None).await;
        assert_eq!(r.body["events"].as_array().unwrap().len(), 2, "{}", r.body);
        let r = api(&srv, &perm, Method::GET, "/changes?after=3", None).await;
        assert_eq!(r.status, 200);

        // The listing: every user with a row, by id, in pages, each with the
        // revision of its last change, and the cursor to read on from.
        let r = api(&srv, &perm, Method::GET, "/permissions?limit=2", None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["resume_after"], 5);
        let mut listed: Vec<Value> = r.body["users"].as_array().unwrap().clone();
        let mut page = r.body["next_page"].as_str().map(str::to_string);
        assert!(page.is_some(), "{}", r.body);
        // A change while paging: the later pages keep the first page's cursor.
        let extra = srv.user("late").await;
        members(&srv, "add", &designers, &[&extra]).await;
        while let Some(p) = page {
            let r = api(&srv, &perm, Method::GET, &format!("/permissions?limit=2&page={p}"), None).await;
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.body["resume_after"], 5);
            listed.extend(r.body["users"].as_array().unwrap().iter().cloned());
            page = r.body["next_page"].as_str().map(str::to_string);
        }
        let ids: Vec<&str> = listed.iter().map(|u| u["user"]["id"].as_str().unwrap()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "listed by user id");
        for u in &users {
            let entry = listed.iter().find(|l| l["user"]["id"] == u.as_str()).unwrap_or_else(|| panic!("{u} not listed"));
            assert_eq!(strings(&entry["roles"]), ["designer"]);
            assert!(entry["revision"].as_i64().unwrap() >= 1);
        }
        // Reading on from resume_after brings the change made while paging.
        let r = api(&srv, &perm, Method::GET, "/changes?after=5", None).await;
        assert_eq!(r.body["events"][0]["user"]["id"], extra.as_str(), "{}", r.body);
        let r = api(&srv, &perm, Method::GET, "/permissions?page=garbage", None).await;
        assert_eq!(r.status, 400, "{}", r.body);
    }
}
