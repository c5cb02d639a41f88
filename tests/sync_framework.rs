//! The sync runner over the real store (SQLite and PostgreSQL) and the real
//! HTTP API, fed by an in-memory directory. The protocol sources have their
//! own tests against real slapd, Samba and a Graph stand-in; these pin what
//! every source shares: one-transaction apply, failure without change, the
//! deletion guard and its confirmation, dry runs, the lease, conflicts with
//! SCIM-owned users, and permissions served after a sync.

use std::sync::{Arc, Mutex};

use reqwest::Method;
use rolebridge::app::sync::{run_with_source, RunOptions, SyncError};
use rolebridge::sync::{
    parse_sources, Batch, Change, ExternalGroup, ExternalUser, MemberRef, Members, ReadOutcome,
    ReadRequest, Source, SourceConfig, SourceError,
};

use crate::each_backend;
use crate::support::TestServer;

/// An in-memory directory: a full read reports everything; `fail_after`
/// makes a read fail after that many entries, as a dropped connection
/// would.
#[derive(Clone, Default)]
struct Directory {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    users: Vec<ExternalUser>,
    groups: Vec<ExternalGroup>,
    fail_after: Option<usize>,
    reads: usize,
    /// Another run takes the source's lease while this one reads (as if
    /// this run had outlived its lease).
    thief: Option<(rolebridge::store::Store, String)>,
    /// A read takes this long (a large directory).
    delay: Option<std::time::Duration>,
}

impl Directory {
    fn with(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap());
    }
}

impl Source for Directory {
    async fn read(
        &mut self,
        _request: &ReadRequest,
        batch: &mut Batch,
    ) -> Result<ReadOutcome, SourceError> {
        let (changes, fail_after) = {
            let mut s = self.state.lock().unwrap();
            s.reads += 1;
            let changes: Vec<Change> = s
                .users
                .iter()
                .cloned()
                .map(Change::User)
                .chain(s.groups.iter().cloned().map(Change::Group))
                .collect();
            (changes, s.fail_after)
        };
        let delay = self.state.lock().unwrap().delay;
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let thief = self.state.lock().unwrap().thief.take();
        if let Some((store, source)) = thief {
            let far = rolebridge::domain::Timestamp::parse("9999-12-31T00:00:00.000000Z").unwrap();
            assert!(store
                .acquire_sync_lease(&source, "thief", far, far)
                .await
                .unwrap());
        }
        for (i, c) in changes.into_iter().enumerate() {
            if fail_after == Some(i) {
                // Whatever a source's failure, the runner must discard
                // the batch; this one has the cursor variant at hand.
                return Err(SourceError::CursorExpired);
            }
            batch.push(c);
        }
        Ok(ReadOutcome {
            complete: true,
            cursor: Some(format!("cursor-{}", self.state.lock().unwrap().reads)),
            bases: vec!["ou=people".into()],
        })
    }
}

fn person(n: usize) -> ExternalUser {
    ExternalUser {
        key: format!("key-{n}").into(),
        locator: Some(format!("uid=user{n},ou=people")),
        base: "ou=people".into(),
        user_name: format!("user{n}@example.org"),
        external_id: Some(format!("key-{n}")),
        display_name: Some(format!("User {n}")),
        given_name: Some("User".into()),
        family_name: Some(format!("{n}")),
        emails: vec![format!("user{n}@example.org")],
        active: true,
    }
}

fn team(key: &str, name: &str, members: &[usize]) -> ExternalGroup {
    ExternalGroup {
        key: key.into(),
        locator: Some(format!("cn={name},ou=groups")),
        base: "ou=groups".into(),
        display_name: name.into(),
        external_id: None,
        members: Members::Full(
            members
                .iter()
                .map(|n| MemberRef::Locator(format!("uid=user{n},ou=people")))
                .collect(),
        ),
    }
}

fn config(srv: &TestServer, guard: &str) -> SourceConfig {
    let t: toml::Table = toml::from_str(&format!(
        "name = \"dir-{}\"\ntenant = \"{}\"\nkind = \"ldap\"\nurl = \"ldap://127.0.0.1:1\"\nbase_dns = [\"ou=people\"]\n{guard}",
        srv.tenant, srv.tenant
    ))
    .expect("toml");
    parse_sources(&[t])
        .unwrap_or_else(|e| panic!("{e:?}"))
        .remove(0)
}

const LENIENT: &str = "[guard]\nmax_deletes = 1000\nmax_delete_percent = 100\n";

async fn users(srv: &TestServer) -> serde_json::Value {
    let r = srv.get("/Users?count=1000").await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

/// A user's effective permissions, by userName.
async fn permissions_of(srv: &TestServer, token: &str, user: &str) -> crate::support::Resp {
    let url = format!(
        "http://{}/api/v1/tenants/{}/users/{user}/permissions?by=userName",
        srv.addr, srv.tenant
    );
    srv.send_with(Method::GET, &url, None, &[], Some(token))
        .await
}

async fn user_by_name(srv: &TestServer, name: &str) -> serde_json::Value {
    let r = srv
        .get(&format!("/Users?filter=userName%20eq%20%22{name}%22"))
        .await;
    assert_eq!(r.body["totalResults"], 1, "{}", r.body);
    r.body["Resources"][0].clone()
}

each_backend! {
    async fn a_full_sync_lands_through_scim_and_a_second_changes_nothing(backend) {
        let srv = TestServer::start(backend).await;
        let dir = Directory::default();
        dir.with(|s| {
            s.users = (0..5).map(person).collect();
            s.groups = vec![team("g1", "Engineering", &[0, 1, 2])];
        });
        let cfg = config(&srv, LENIENT);
        let r = run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        assert_eq!((r.outcome.as_str(), r.mode.as_str()), ("applied", "full"));
        assert_eq!((r.counts.users_created, r.counts.groups_created, r.counts.members_added), (5, 1, 3));
        let u = user_by_name(&srv, "user1@example.org").await;
        assert_eq!(u["name"]["familyName"], "1");
        assert_eq!(u["emails"][0]["value"], "user1@example.org");
        assert_eq!(u["externalId"], "key-1");
        assert_eq!(u["groups"][0]["display"], "Engineering", "{u}");
        let g = srv.get("/Groups?filter=displayName%20eq%20%22Engineering%22").await;
        assert_eq!(g.body["Resources"][0]["members"].as_array().unwrap().len(), 3);
        assert_eq!(g.body["Resources"][0]["urn:rolebridge:params:sync:1.0:Group"]["dn"], "cn=Engineering,ou=groups");
        let again = run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        assert_eq!(again.outcome, rolebridge::app::sync::RunOutcome::Unchanged, "{again:?}");
        let state = srv.app.store().sync_state(&cfg.name).await.unwrap();
        assert_eq!(state.cursor.as_deref(), Some("cursor-2"));
        assert!(state.lease_owner.is_none(), "lease released");
        assert_eq!(srv.app.store().sync_runs(&cfg.name, 10).await.unwrap().len(), 2);
    }
}

each_backend! {
    async fn a_failed_read_changes_nothing_and_keeps_the_cursor(backend) {
        let srv = TestServer::start(backend).await;
        let dir = Directory::default();
        dir.with(|s| {
            s.users = (0..10).map(person).collect();
            s.groups = vec![team("g1", "Engineering", &[0, 1, 2, 3])];
        });
        let cfg = config(&srv, LENIENT);
        run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        let epoch = srv.app.store().directory(srv.app.tenant(&cfg.tenant).await.unwrap().id).await.unwrap().epoch;
        // The directory now has fewer users and a changed group, but the
        // read breaks off half-way.
        dir.with(|s| {
            s.users.truncate(3);
            s.groups = vec![team("g1", "Engineering", &[0])];
            s.fail_after = Some(2);
        });
        let err = run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap_err();
        assert!(matches!(err, SyncError::Source { .. }), "{err}");
        let after = srv.app.store().directory(srv.app.tenant(&cfg.tenant).await.unwrap().id).await.unwrap();
        assert_eq!(after.epoch, epoch, "no write at all");
        assert_eq!(after.users.iter().filter(|u| u.active).count(), 10);
        assert_eq!(after.edges.len(), 4);
        assert_eq!(srv.app.store().sync_state(&cfg.name).await.unwrap().cursor.as_deref(), Some("cursor-1"));
        let runs = srv.app.store().sync_runs(&cfg.name, 1).await.unwrap();
        assert_eq!(runs[0].outcome, "failed");
        assert!(runs[0].error.as_deref().unwrap_or("").contains(&cfg.name), "{:?}", runs[0].error);
    }
}

each_backend! {
    async fn the_guard_holds_a_mass_delete_until_confirmed(backend) {
        let srv = TestServer::start(backend).await;
        let dir = Directory::default();
        dir.with(|s| s.users = (0..20).map(person).collect());
        let cfg = config(&srv, "[guard]\nmax_deletes = 5\nmax_delete_percent = 100\n");
        run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        dir.with(|s| s.users.truncate(10));
        let held = run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        assert_eq!(held.outcome, rolebridge::app::sync::RunOutcome::Held);
        assert!(held.held_reason.as_deref().unwrap().contains("10 user"), "{held:?}");
        assert_eq!(held.diff.iter().filter(|l| l.starts_with("! user")).count(), 10);
        let all = users(&srv).await;
        assert_eq!(all["Resources"].as_array().unwrap().iter().filter(|u| u["active"] == true).count(), 20);
        assert!(srv.app.metrics_text().await.contains(&format!("rolebridge_sync_held{{source=\"{}\"}} 1", cfg.name)));
        // Held again on the next scheduled run: nothing moves without a person.
        let again = run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        assert_eq!(again.outcome, rolebridge::app::sync::RunOutcome::Held);
        let confirmed = run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions { confirm_deletes: true, ..RunOptions::default() }, None).await.unwrap();
        assert_eq!((confirmed.outcome.as_str(), confirmed.counts.users_deactivated), ("applied", 10));
        let all = users(&srv).await;
        assert_eq!(all["Resources"].as_array().unwrap().iter().filter(|u| u["active"] == false).count(), 10);
        assert!(srv.app.metrics_text().await.contains(&format!("rolebridge_sync_held{{source=\"{}\"}} 0", cfg.name)));
    }
}

each_backend! {
    async fn an_empty_directory_always_trips_the_guard(backend) {
        let srv = TestServer::start(backend).await;
        let dir = Directory::default();
        dir.with(|s| s.users = (0..3).map(person).collect());
        let cfg = config(&srv, LENIENT);
        run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        dir.with(|s| s.users.clear());
        let held = run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        assert_eq!(held.outcome, rolebridge::app::sync::RunOutcome::Held, "{held:?}");
        assert!(held.held_reason.unwrap().contains("'ou=people' would hold no active users"));
    }
}

each_backend! {
    async fn a_dry_run_writes_nothing(backend) {
        let srv = TestServer::start(backend).await;
        let dir = Directory::default();
        dir.with(|s| {
            s.users = (0..4).map(person).collect();
            s.groups = vec![team("g1", "Ops", &[0, 3])];
        });
        let cfg = config(&srv, LENIENT);
        let r = run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions { dry_run: true, ..RunOptions::default() }, None).await.unwrap();
        assert_eq!(r.outcome, rolebridge::app::sync::RunOutcome::DryRun);
        assert_eq!(r.counts.users_created, 4);
        assert!(r.diff.contains(&"+ user user3@example.org".to_string()), "{:?}", r.diff);
        assert!(r.diff.contains(&"+ member user3@example.org -> Ops".to_string()), "{:?}", r.diff);
        assert_eq!(users(&srv).await["totalResults"], 0);
        let state = srv.app.store().sync_state(&cfg.name).await.unwrap();
        assert_eq!(state.cursor, None, "a dry run does not move the cursor");
    }
}

each_backend! {
    async fn a_user_name_owned_by_scim_is_skipped_not_taken(backend) {
        let srv = TestServer::start(backend).await;
        let scim_id = srv.user("user1@example.org").await;
        let dir = Directory::default();
        dir.with(|s| {
            s.users = (0..3).map(person).collect();
            s.groups = vec![team("g1", "Ops", &[0, 1, 2])];
        });
        let cfg = config(&srv, LENIENT);
        let r = run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        assert_eq!(r.outcome, rolebridge::app::sync::RunOutcome::Applied);
        assert!(r.skipped.iter().any(|s| s.contains("user1@example.org")), "{:?}", r.skipped);
        let u = user_by_name(&srv, "user1@example.org").await;
        assert_eq!(u["id"], scim_id.as_str(), "the SCIM user is untouched");
        assert!(u.get("groups").is_none_or(|g| g.as_array().unwrap().is_empty()), "{u}");
        assert_eq!(users(&srv).await["totalResults"], 3);
        // Its link went with the refusal (written with the user's chunk,
        // removed when the user was refused): no link names a resource
        // that does not exist, and the next run tries the entry again.
        let tenant = srv.app.store().tenant_by_name(&cfg.tenant).await.unwrap().unwrap().id;
        let links = srv.app.store().sync_links(&cfg.name, tenant).await.unwrap();
        assert_eq!(links.len(), 3, "two users and the group: {links:?}");
        assert!(links.iter().all(|l| l.external_key.as_str() != "key-1"), "{links:?}");
        let again = run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        assert_eq!(again.counts.users_created, 1, "{again:?}");
        assert!(again.skipped.iter().any(|s| s.contains("user1@example.org")), "{:?}", again.skipped);
        assert_eq!(users(&srv).await["totalResults"], 3);
    }
}

each_backend! {
    async fn an_external_id_held_by_scim_resources_is_no_clash(backend) {
        // externalId is not unique (migration 0005): a source recognises its
        // own resources by its links, so a SCIM user and group holding the
        // directory's ids neither block the sync nor are taken over.
        let srv = TestServer::start(backend).await;
        let scim_user = srv
            .post("/Users", serde_json::json!({"schemas": [crate::support::USER], "userName": "scim@example.org", "externalId": "key-0"}))
            .await;
        assert_eq!(scim_user.status, 201, "{}", scim_user.body);
        let scim_group = srv
            .post("/Groups", serde_json::json!({"schemas": [crate::support::GROUP], "displayName": "Ops", "externalId": "g1"}))
            .await;
        assert_eq!(scim_group.status, 201, "{}", scim_group.body);
        let dir = Directory::default();
        dir.with(|s| {
            s.users = (0..2).map(person).collect();
            let mut g = team("g1", "Ops", &[0, 1]);
            g.external_id = Some("g1".into());
            s.groups = vec![g];
        });
        let cfg = config(&srv, LENIENT);
        let r = run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        assert_eq!(r.outcome, rolebridge::app::sync::RunOutcome::Applied);
        assert!(r.skipped.is_empty(), "{:?}", r.skipped);
        assert_eq!(r.counts.users_created, 2);
        let same = srv.get("/Users?filter=externalId%20eq%20%22key-0%22").await;
        assert_eq!(same.body["totalResults"], 2, "{}", same.body);
        let synced = user_by_name(&srv, "user0@example.org").await;
        assert_ne!(synced["id"], scim_user.body["id"]);
        let untouched = srv.get(&format!("/Users/{}", scim_user.body["id"].as_str().unwrap())).await;
        assert_eq!(untouched.body["userName"], "scim@example.org");
        assert_eq!(untouched.body["meta"]["version"], "W/\"1\"", "{}", untouched.body);
        let groups = srv.get("/Groups?filter=externalId%20eq%20%22g1%22").await;
        assert_eq!(groups.body["totalResults"], 2, "{}", groups.body);
        // The SCIM group keeps no members; the source's group has both.
        let scim_gid = scim_group.body["id"].as_str().unwrap();
        assert!(srv.member_ids(scim_gid).await.is_empty());
        let synced_group = groups.body["Resources"].as_array().unwrap().iter()
            .find(|g| g["id"] != scim_gid).cloned().unwrap();
        assert_eq!(srv.member_ids(synced_group["id"].as_str().unwrap()).await.len(), 2);
        // A second run changes nothing.
        let again = run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        assert_eq!(again.counts.users_created + again.counts.users_updated, 0, "{:?}", again.counts);
    }
}

each_backend! {
    async fn a_run_holds_a_short_lease_and_renews_it_while_alive(backend) {
        // A lease held by a dead process must expire within a minute, so it
        // is short; a live run renews it however long it reads. The clock
        // is the test's and the renewal comes every 300 ms, so the test
        // sees the lease's own arithmetic without sleeping through it.
        let srv = TestServer::start(backend).await;
        let clock = std::sync::Arc::new(rolebridge::domain::ManualClock::starting_now());
        let lease = rolebridge::app::sync::SyncLease {
            renew_every: std::time::Duration::from_millis(300),
            ..Default::default()
        };
        assert_eq!(rolebridge::app::sync::SyncLease::default().ttl, std::time::Duration::from_secs(60));
        let app = srv.app.clone().with_clock(clock.clone()).with_sync_lease(lease);
        let started = rolebridge::domain::Clock::now(&*clock);
        let dir = Directory::default();
        dir.with(|s| {
            s.users = vec![person(0)];
            s.delay = Some(std::time::Duration::from_millis(1500));
        });
        let cfg = config(&srv, LENIENT);
        let run = {
            let app = app.clone();
            let cfg = cfg.clone();
            let mut dir = dir.clone();
            tokio::spawn(async move { run_with_source(&app, &cfg, &mut dir, RunOptions::default(), None).await })
        };
        let lease_until = || async {
            let state = srv.app.store().sync_state(&cfg.name).await.unwrap();
            assert!(state.lease_owner.is_some(), "the run holds the lease");
            state.lease_until.unwrap()
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(lease_until().await, started.checked_add(std::time::Duration::from_secs(60)).unwrap());
        clock.advance(std::time::Duration::from_secs(20));
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        assert_eq!(
            lease_until().await,
            started.checked_add(std::time::Duration::from_secs(80)).unwrap(),
            "renewed for a minute from the clock's now"
        );
        let r = run.await.unwrap().unwrap();
        assert_eq!(r.outcome, rolebridge::app::sync::RunOutcome::Applied);
        assert_eq!(srv.app.store().sync_state(&cfg.name).await.unwrap().lease_owner, None);
    }
}

each_backend! {
    async fn a_directory_entry_the_store_cannot_hold_is_skipped_not_fatal(backend) {
        // A NUL (LDAP values may hold one; PostgreSQL stores none) or an
        // over-long name in one entry skips that entry, reported; the run
        // applies the rest, and the next run is not stuck on it.
        let srv = TestServer::start(backend).await;
        let dir = Directory::default();
        dir.with(|s| {
            s.users = (0..4).map(person).collect();
            s.users[1].display_name = Some("Bad\u{0}Name".into());
            s.users[2].user_name = format!("{}@example.org", "x".repeat(600));
            s.groups = vec![team("g1", "Ops", &[0, 1, 2, 3]), team("g2", "Nul\u{0}Group", &[0])];
        });
        let cfg = config(&srv, LENIENT);
        for run in 0..2 {
            let r = run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions::default(), None)
                .await
                .unwrap_or_else(|e| panic!("run {run}: {e}"));
            assert_eq!(r.outcome, rolebridge::app::sync::RunOutcome::Applied, "run {run}");
            assert_eq!(r.skipped.len(), 3, "run {run}: {:?}", r.skipped);
            assert!(r.skipped.iter().any(|s| s.contains("NUL") && s.contains("displayName")), "{:?}", r.skipped);
            assert!(r.skipped.iter().any(|s| s.contains("at most 512")), "{:?}", r.skipped);
            assert!(r.skipped.iter().any(|s| s.contains("Nul\\u0000Group")), "{:?}", r.skipped);
        }
        assert_eq!(users(&srv).await["totalResults"], 2);
        let ops = srv.get("/Groups?filter=displayName%20eq%20%22Ops%22").await;
        let gid = ops.body["Resources"][0]["id"].as_str().unwrap().to_string();
        assert_eq!(srv.member_ids(&gid).await.len(), 2, "only the stored users are members");
    }
}

each_backend! {
    async fn overlapping_runs_of_one_source_are_refused(backend) {
        let srv = TestServer::start(backend).await;
        let cfg = config(&srv, LENIENT);
        assert!(srv.app.store().acquire_sync_lease(&cfg.name, "other-process", srv.app.clock().now(), rolebridge::domain::Timestamp::parse("9999-01-01T00:00:00.000000Z").unwrap()).await.unwrap());
        let err = run_with_source(&srv.app, &cfg, &mut Directory::default(), RunOptions::default(), None).await.unwrap_err();
        assert!(matches!(err, SyncError::Busy(_)), "{err}");
        assert!(err.to_string().contains("already running"));
    }
}

each_backend! {
    async fn permissions_follow_the_directory_and_revocation_is_immediate(backend) {
        let yaml = "catalog: loyjoy\nrules:\n  - id: editors\n    match: {display_name: \"Editors\"}\n    assign: {roles: [editor]}\n  - id: owners\n    match: {display_name: \"Owners\"}\n    assign: {roles: [owner]}\n";
        let srv = TestServer::start_mapped(backend, yaml).await;
        let token = srv.permissions_token().await;
        let dir = Directory::default();
        // user0 is in Team; Team is nested in Editors; Editors in Team (a cycle).
        let mut editors = team("g-ed", "Editors", &[]);
        editors.members = Members::Full(vec![MemberRef::Locator("cn=Team,ou=groups".into())]);
        let mut teamg = team("g-team", "Team", &[0]);
        if let Members::Full(m) = &mut teamg.members {
            m.push(MemberRef::Locator("cn=Editors,ou=groups".into()));
        }
        dir.with(|s| {
            s.users = (0..2).map(person).collect();
            s.groups = vec![editors, teamg, team("g-own", "Owners", &[1])];
        });
        let cfg = config(&srv, LENIENT);
        let r = run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        assert_eq!(r.permission_changes, 2, "{r:?}");
        let get = |user: &'static str| permissions_of(&srv, &token, user);
        let p = get("user0@example.org").await;
        assert_eq!(p.status, 200, "{}", p.body);
        assert!(p.body["roles"].to_string().contains("editor"), "{}", p.body);
        let p1 = get("user1@example.org").await;
        assert!(p1.body["roles"].to_string().contains("owner"), "{}", p1.body);
        // explain names the nesting path that led to Editors.
        let url = format!("http://{}/api/v1/tenants/{}/check", srv.addr, srv.tenant);
        let c = srv.send_with(Method::POST, &url, Some(serde_json::json!({"user": "user0@example.org", "permission": "knowledge_edit", "explain": true})), &[], Some(&token)).await;
        assert_eq!(c.body["allowed"], true, "{}", c.body);
        let text = c.body["explanation"]["text"].as_str().unwrap_or("").to_string();
        assert!(text.contains("(nested: 'Team' > 'Editors')"), "{text}");
        // user1 leaves Owners in the directory: the next check after the
        // sync must not grant owner (a revoked grant is never served).
        dir.with(|s| s.groups[2] = team("g-own", "Owners", &[]));
        let r = run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        assert_eq!((r.counts.members_removed, r.permission_changes), (1, 1), "{r:?}");
        let p1 = get("user1@example.org").await;
        assert!(!p1.body["roles"].to_string().contains("owner"), "{}", p1.body);
    }
}

each_backend! {
    async fn a_scim_client_cannot_claim_a_directory_group(backend) {
        // Rules may match a group's DN or source, which directory sync
        // records under `urn:rolebridge:`; a SCIM client must not be able to
        // write them.
        const SYNC: &str = "urn:rolebridge:params:sync:1.0:Group";
        let yaml = "catalog: loyjoy\nrules:\n  - id: admins\n    match: {dn: \"cn=Admins,ou=groups\"}\n    assign: {roles: [owner]}\n";
        let srv = TestServer::start_mapped(backend, yaml).await;
        let token = srv.permissions_token().await;
        let mallory = srv.user("mallory@example.org").await;
        let forged = srv
            .post("/Groups", serde_json::json!({"schemas": [crate::support::GROUP], "displayName": "Admins",
                SYNC: {"source": "corp-ldap", "dn": "cn=Admins,ou=groups"},
                "members": [{"value": mallory}]}))
            .await;
        assert_eq!(forged.status, 201, "{}", forged.body);
        assert!(forged.body.get(SYNC).is_none(), "{}", forged.body);
        let gid = forged.body["id"].as_str().unwrap().to_string();
        let patch = |value: serde_json::Value| serde_json::json!({"schemas": [crate::support::PATCH_OP], "Operations": [value]});
        srv.patch(&format!("/Groups/{gid}"), patch(serde_json::json!({"op": "add", "path": format!("{SYNC}:dn"), "value": "cn=Admins,ou=groups"})))
            .await
            .assert_error(400, Some("mutability"));
        srv.patch(&format!("/Groups/{gid}"), patch(serde_json::json!({"op": "add", "value": {SYNC: {"dn": "cn=Admins,ou=groups"}}})))
            .await
            .assert_error(400, Some("mutability"));
        let get = |user: &'static str| permissions_of(&srv, &token, user);
        let p = get("mallory@example.org").await;
        assert_eq!(p.status, 200, "{}", p.body);
        assert!(!p.body["roles"].to_string().contains("owner"), "{}", p.body);
        // The directory's own Admins group grants owner, and a SCIM PUT on it
        // (a rename) keeps what sync recorded.
        let dir = Directory::default();
        dir.with(|s| {
            s.users = vec![person(0)];
            s.groups = vec![team("g-admins", "Admins", &[0])];
        });
        let cfg = config(&srv, LENIENT);
        run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        assert!(get("user0@example.org").await.body["roles"].to_string().contains("owner"));
        let groups = srv.get("/Groups?filter=displayName%20eq%20%22Admins%22").await;
        let synced = groups.body["Resources"].as_array().unwrap().iter()
            .find(|g| g["id"] != gid.as_str()).cloned().unwrap();
        let sid = synced["id"].as_str().unwrap();
        assert_eq!(synced[SYNC]["dn"], "cn=Admins,ou=groups", "{synced}");
        let user0 = user_by_name(&srv, "user0@example.org").await;
        let put = srv
            .put(&format!("/Groups/{sid}"), serde_json::json!({"schemas": [crate::support::GROUP], "displayName": "Admins (renamed)",
                SYNC: {"dn": "cn=other,ou=groups"}, "members": [{"value": user0["id"]}]}))
            .await;
        assert_eq!(put.status, 200, "{}", put.body);
        assert_eq!(put.body[SYNC], synced[SYNC], "{}", put.body);
        assert!(get("user0@example.org").await.body["roles"].to_string().contains("owner"));
    }
}

each_backend! {
    async fn a_vanished_user_is_deactivated_then_deleted_after_the_grace_period(backend) {
        let srv = TestServer::start(backend).await;
        // The grace period passes on a clock the test moves, not in sleep.
        let clock = std::sync::Arc::new(rolebridge::domain::ManualClock::starting_now());
        let app = srv.app.clone().with_clock(clock.clone());
        let dir = Directory::default();
        dir.with(|s| {
            s.users = (0..3).map(person).collect();
            s.groups = vec![team("g1", "Ops", &[0, 1, 2])];
        });
        let cfg = config(&srv, &format!("delete_after = \"2s\"\n{LENIENT}"));
        run_with_source(&app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        dir.with(|s| {
            s.users.truncate(2);
            s.groups = vec![team("g1", "Ops", &[0, 1])];
        });
        let r = run_with_source(&app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        assert_eq!((r.counts.users_deactivated, r.counts.users_deleted), (1, 0), "{r:?}");
        let u = user_by_name(&srv, "user2@example.org").await;
        assert_eq!(u["active"], false);
        // Still within the grace period: nothing more.
        let r = run_with_source(&app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        assert_eq!((r.outcome.as_str(), r.counts.users_deleted), ("unchanged", 0), "{r:?}");
        clock.advance(std::time::Duration::from_millis(1900));
        let r = run_with_source(&app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        assert_eq!(r.counts.users_deleted, 0, "deleted 1.9 s into a 2 s grace period: {r:?}");
        clock.advance(std::time::Duration::from_millis(200));
        let r = run_with_source(&app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        assert_eq!(r.counts.users_deleted, 1, "{r:?}");
        let gone = srv.get("/Users?filter=userName%20eq%20%22user2@example.org%22").await;
        assert_eq!(gone.body["totalResults"], 0, "{}", gone.body);
        assert_eq!(users(&srv).await["totalResults"], 2);
    }
}

each_backend! {
    async fn two_directory_entries_with_one_user_name_create_one_user(backend) {
        let srv = TestServer::start(backend).await;
        let dir = Directory::default();
        let mut twin = person(1);
        twin.key = "key-twin".into();
        twin.external_id = Some("key-twin".into());
        twin.user_name = "USER1@example.org".into();
        dir.with(|s| s.users = vec![person(0), person(1), twin]);
        let cfg = config(&srv, LENIENT);
        let r = run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        assert_eq!(r.counts.users_created, 3, "planned");
        assert_eq!(r.skipped.len(), 1, "{:?}", r.skipped);
        assert!(r.skipped[0].contains("userName"), "{:?}", r.skipped);
        assert_eq!(users(&srv).await["totalResults"], 2);
        // The skipped entry has no link, so it is tried again next run.
        let again = run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        assert_eq!((again.counts.users_created, again.skipped.len()), (1, 1), "{again:?}");
    }
}

each_backend! {
    async fn a_run_that_lost_its_lease_applies_nothing(backend) {
        let srv = TestServer::start(backend).await;
        let dir = Directory::default();
        let cfg = config(&srv, LENIENT);
        dir.with(|s| {
            s.users = (0..3).map(person).collect();
            s.thief = Some((srv.app.store().clone(), cfg.name.clone()));
        });
        let err = run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap_err();
        assert!(err.to_string().contains("lease expired"), "{err}");
        assert_eq!(users(&srv).await["totalResults"], 0);
        let state = srv.app.store().sync_state(&cfg.name).await.unwrap();
        assert_eq!((state.cursor, state.lease_owner.as_deref()), (None, Some("thief")));
    }
}

each_backend! {
    async fn a_recreated_account_replaces_its_deactivated_namesake(backend) {
        let srv = TestServer::start(backend).await;
        let dir = Directory::default();
        dir.with(|s| s.users = (0..3).map(person).collect());
        let cfg = config(&srv, LENIENT);
        run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        let old = user_by_name(&srv, "user2@example.org").await["id"].clone();
        // Deleted in the directory: deactivated, within its grace period.
        dir.with(|s| s.users.truncate(2));
        let r = run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        assert_eq!(r.counts.users_deactivated, 1);
        // Re-created with a new stable id and the same userName.
        let mut again = person(2);
        again.key = "key-2-recreated".into();
        again.external_id = Some("key-2-recreated".into());
        dir.with(|s| s.users.push(again));
        let r = run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        assert_eq!((r.counts.users_created, r.counts.users_deleted), (1, 1), "{r:?}");
        assert!(r.skipped.is_empty(), "{:?}", r.skipped);
        let now = user_by_name(&srv, "user2@example.org").await;
        assert_ne!(now["id"], old);
        assert_eq!((now["active"].clone(), now["externalId"].clone()), (serde_json::json!(true), serde_json::json!("key-2-recreated")));
        assert_eq!(users(&srv).await["totalResults"], 3);
    }
}

each_backend! {
    async fn a_refused_rename_still_applies_a_disable(backend) {
        let srv = TestServer::start(backend).await;
        srv.user("taken@example.org").await;
        let dir = Directory::default();
        dir.with(|s| s.users = (0..2).map(person).collect());
        let cfg = config(&srv, LENIENT);
        run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        // Offboarding: renamed to a name SCIM owns, and disabled.
        dir.with(|s| {
            s.users[1].user_name = "taken@example.org".into();
            s.users[1].active = false;
        });
        let r = run_with_source(&srv.app, &cfg, &mut dir.clone(), RunOptions::default(), None).await.unwrap();
        assert!(r.skipped.iter().any(|s| s.contains("taken@example.org")), "{:?}", r.skipped);
        let u = user_by_name(&srv, "user1@example.org").await;
        assert_eq!(u["active"], false, "{u}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_log_keeps_the_newest_runs_per_source() {
    use rolebridge::store::{SyncRunRecord, RUNS_KEPT};
    let srv = TestServer::start(crate::support::Backend::Sqlite).await;
    for i in 0..RUNS_KEPT + 5 {
        for source in ["a", "b"] {
            if source == "b" && i > 2 {
                continue;
            }
            srv.app
                .store()
                .record_sync_run(&SyncRunRecord {
                    id: format!("{source}-{i:05}"),
                    source: source.into(),
                    started: rolebridge::domain::Timestamp::parse(&format!(
                        "2026-01-01T00:00:00.{i:06}Z"
                    ))
                    .unwrap(),
                    finished: rolebridge::domain::Timestamp::parse(&format!(
                        "2026-01-01T00:00:00.{i:06}Z"
                    ))
                    .unwrap(),
                    outcome: "unchanged".into(),
                    report: "{}".into(),
                    error: None,
                })
                .await
                .unwrap();
        }
    }
    let a = srv.app.store().sync_runs("a", 5000).await.unwrap();
    assert_eq!(a.len() as i64, RUNS_KEPT);
    assert_eq!(a[0].id, format!("a-{:05}", RUNS_KEPT + 4), "newest first");
    assert_eq!(a.last().unwrap().id, "a-00005", "the oldest five are gone");
    assert_eq!(
        srv.app.store().sync_runs("b", 5000).await.unwrap().len(),
        3,
        "other sources untouched"
    );
}
