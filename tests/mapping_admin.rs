//! Versioned mappings and the admin workflow: plan, guarded apply with the
//! plan's hash, conflicts, history, diff, rollback, audit, tenant tokens,
//! and replicas following the store's versions.

use reqwest::Method;
use serde_json::{json, Value};

use crate::durability::{cli, cli_token, spawn_server};
use crate::support::{fresh_database, unique, Backend, Resp, TestServer, GROUP, PATCH_OP};
use rolebridge::app::mappings::{ChangeScope, MappingChange, MappingFiles};
use rolebridge::domain::{MappingVersion, Scope, TenantName};

pub(crate) const V1: &str = "catalog: gms\nrules:\n  - id: owners\n    match: {display_name: \"Owners\"}\n    assign: {roles: [owner]}\n  - id: designers\n    match: {display_name: \"Designers\"}\n    assign: {roles: [designer]}\n";
/// V1 without the designers rule: every designer loses the role.
pub(crate) const V2: &str = "catalog: gms\nrules:\n  - id: owners\n    match: {display_name: \"Owners\"}\n    assign: {roles: [owner]}\n";
/// V1 without the owners rule: the protected owner role loses its holder.
const NO_OWNER: &str = "catalog: gms\nrules:\n  - id: designers\n    match: {display_name: \"Designers\"}\n    assign: {roles: [designer]}\n";

/// A GMS tenant on V1 with one owner and `designers` designers, adopted as
/// version 1 of the store.
pub(crate) async fn setup(backend: Backend, designers: usize) -> (TestServer, Vec<String>, String) {
    let srv = TestServer::start_mapped(backend, V1).await;
    let (v, warning) = srv.app.adopt_store_mappings().await.expect("adopt");
    assert_eq!((v, warning), (MappingVersion(1), None));
    let owners = srv.group("Owners").await;
    let boss = srv.user("boss").await;
    add(&srv, &owners, std::slice::from_ref(&boss)).await;
    let designers_group = srv.group("Designers").await;
    let mut ids = Vec::new();
    for i in 0..designers {
        ids.push(srv.user(&format!("designer{i:02}")).await);
    }
    add(&srv, &designers_group, &ids).await;
    (srv, ids, boss)
}

async fn add(srv: &TestServer, group: &str, users: &[String]) {
    let members: Vec<Value> = users.iter().map(|u| json!({"value": u})).collect();
    let r = srv
        .patch(
            &format!("/Groups/{group}"),
            json!({"schemas": [PATCH_OP], "Operations": [{"op": "add", "path": "members", "value": members}]}),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.body);
}

pub(crate) async fn token(srv: &TestServer, scope: Scope) -> String {
    srv.app
        .create_token(&TenantName::parse(&srv.tenant).unwrap(), scope)
        .await
        .unwrap()
        .token
        .expose()
        .to_string()
}

/// A call to `/api/v1/tenants/{tenant}{path}` with `token`.
pub(crate) async fn api(
    srv: &TestServer,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Resp {
    let url = format!("http://{}/api/v1/tenants/{}{path}", srv.addr, srv.tenant);
    let mut req = srv.client.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    Resp::read(req.send().await.unwrap()).await
}

async fn roles_of(srv: &TestServer, perm: &str, user: &str) -> Vec<String> {
    let r = api(
        srv,
        perm,
        Method::GET,
        &format!("/users/{user}/permissions"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

crate::each_backend! {
    async fn plan_guard_apply_conflict_rollback_and_audit(backend) {
        let (srv, designers, boss) = setup(backend, 12).await;
        let admin = token(&srv, Scope::Admin).await;
        let perm = token(&srv, Scope::Permissions).await;
        let file = format!("tenants/{}.yaml", srv.tenant);
        assert_eq!(roles_of(&srv, &perm, &designers[0]).await, ["designer"]);

        // The tenant's file in force, with its version.
        let r = api(&srv, &admin, Method::GET, "/mappings", None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!((r.body["version"].clone(), r.body["file"].clone(), r.body["text"].clone()), (json!(1), json!(file), json!(V1)));

        // Other scopes and other tenants' admins are refused.
        let r = api(&srv, &perm, Method::GET, "/mappings", None).await;
        assert_eq!(r.status, 403, "{}", r.body);
        let (other, _) = srv.other_tenant().await;
        let other_admin = srv.app.create_token(&TenantName::parse(&other).unwrap(), Scope::Admin).await.unwrap();
        let r = api(&srv, other_admin.token.expose(), Method::GET, "/mappings", None).await;
        assert_eq!(r.status, 403, "{}", r.body);

        // An invalid edit: every error, with file, line and column.
        let bad = "catalog: gms\nrules:\n  - match: {display_name: X}\n    assign: {roles: [nope]}\n";
        let r = api(&srv, &admin, Method::POST, "/mappings/plan", Some(json!({"base": 1, "text": bad}))).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.body["error"]["code"], "invalid_mapping", "{}", r.body);
        let e = &r.body["error"]["errors"][0];
        assert_eq!((e["file"].clone(), e["line"].clone()), (json!(file), json!(4)), "{}", r.body);
        assert!(e["column"].as_u64().unwrap() > 1 && e["message"].as_str().unwrap().contains("nope"), "{}", r.body);

        // The plan: twelve designers lose their role and its permissions.
        let r = api(&srv, &admin, Method::POST, "/mappings/plan", Some(json!({"base": 1, "text": V2}))).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let plan = r.body.clone();
        let t = &plan["tenants"][0];
        assert_eq!(t["tenant"], srv.tenant.as_str());
        assert_eq!(t["totals"]["users"], 13, "{plan}");
        assert_eq!(t["totals"]["users_losing"], 12, "{plan}");
        assert_eq!(t["totals"]["users_gaining"], 0, "{plan}");
        let users = t["users"].as_array().unwrap();
        assert_eq!(users.len(), 12);
        assert_eq!(users[0]["userName"], "designer00");
        assert_eq!(users[0]["roles_lost"], json!(["designer"]));
        assert!(!users[0]["permissions_lost"].as_array().unwrap().is_empty(), "{plan}");
        assert!(users.iter().all(|u| u["userName"] != "boss"));
        let reasons = plan["guard"].as_array().unwrap();
        assert_eq!(reasons.len(), 1, "{plan}");
        assert!(reasons[0].as_str().unwrap().contains("12 users lose access"), "{plan}");
        let hash = plan["hash"].as_str().unwrap().to_string();

        // Unconfirmed: refused with the guard's verdict, nothing changes.
        let r = api(&srv, &admin, Method::POST, "/mappings", Some(json!({"base": 1, "text": V2}))).await;
        assert_eq!(r.status, 428, "{}", r.body);
        assert_eq!(r.body["error"]["code"], "confirmation_required");
        assert_eq!(r.body["error"]["plan_hash"], hash.as_str());
        // Confirmed with another plan's hash: refused as stale.
        let r = api(&srv, &admin, Method::POST, "/mappings", Some(json!({"base": 1, "text": V2, "confirm": "0".repeat(64)}))).await;
        assert_eq!(r.status, 412, "{}", r.body);
        assert_eq!(roles_of(&srv, &perm, &designers[0]).await, ["designer"]);
        assert_eq!(srv.app.latest_mapping_version().await.unwrap(), Some(MappingVersion(1)));

        // Confirmed with the reviewed hash: applied as version 2 and served.
        let r = api(&srv, &admin, Method::POST, "/mappings", Some(json!({"base": 1, "text": V2, "confirm": hash}))).await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.body["version"], 2);
        assert_eq!(roles_of(&srv, &perm, &designers[0]).await, Vec::<String>::new());
        assert_eq!(roles_of(&srv, &perm, &boss).await, ["owner"]);

        // An edit against version 1 now conflicts.
        let r = api(&srv, &admin, Method::POST, "/mappings", Some(json!({"base": 1, "text": V1}))).await;
        assert_eq!(r.status, 409, "{}", r.body);
        assert_eq!(r.body["error"]["code"], "version_conflict");
        assert_eq!(r.body["error"]["latest"], 2);

        // Leaving the protected owner role without a holder trips the guard
        // even though only one user loses access.
        let r = api(&srv, &admin, Method::POST, "/mappings", Some(json!({"base": 2, "text": NO_OWNER}))).await;
        assert_eq!(r.status, 428, "{}", r.body);
        let why = r.body["error"]["reasons"].to_string();
        assert!(why.contains("protected role 'owner' would have no holder"), "{why}");

        // Rollback to version 1: a new version equal to it (only gains, so
        // the guard passes), served at once.
        let r = api(&srv, &admin, Method::POST, "/mappings/rollback", Some(json!({"version": 1, "base": 2, "plan_only": true}))).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["tenants"][0]["totals"]["users_gaining"], 12, "{}", r.body);
        assert_eq!(r.body["guard"], json!([]));
        let r = api(&srv, &admin, Method::POST, "/mappings/rollback", Some(json!({"version": 1, "base": 2}))).await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.body["version"], 3);
        assert_eq!(roles_of(&srv, &perm, &designers[11]).await, ["designer"]);
        let r = api(&srv, &admin, Method::GET, "/mappings", None).await;
        assert_eq!((r.body["version"].clone(), r.body["text"].clone()), (json!(3), json!(V1)));

        // History, one version, and the diff.
        let r = api(&srv, &admin, Method::GET, "/mappings/versions", None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let versions: Vec<(i64, String)> = r.body["versions"].as_array().unwrap().iter()
            .map(|v| (v["version"].as_i64().unwrap(), v["origin"].as_str().unwrap().to_string())).collect();
        assert_eq!(versions, [(3, "rollback".into()), (2, "apply".into()), (1, "import".into())]);
        let r = api(&srv, &admin, Method::GET, "/mappings/versions/2", None).await;
        assert_eq!(r.body["text"], V2, "{}", r.body);
        let r = api(&srv, &admin, Method::GET, "/mappings/diff?from=1&to=2", None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let diff = r.body["files"][0]["diff"].as_str().unwrap();
        assert!(diff.contains("-  - id: designers") && !diff.contains("+  - id"), "{diff}");
        let r = api(&srv, &admin, Method::GET, "/mappings/diff?from=1&to=2&x=1", None).await;
        assert_eq!(r.status, 400, "{}", r.body);

        // The audit trail: who, which version, what the plan said.
        let admin_id = &admin[3..35];
        let r = api(&srv, &admin, Method::GET, "/mappings/audit", None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let records = r.body["records"].as_array().unwrap();
        let actions: Vec<&str> = records.iter().map(|r| r["action"].as_str().unwrap()).collect();
        assert_eq!(actions, ["applied", "refused", "conflict", "applied", "refused", "refused"], "{}", r.body);
        assert!(records.iter().all(|r| r["actor"]["id"] == admin_id), "{}", r.body);
        assert_eq!(records[3]["version"], 2);
        assert_eq!(records[3]["totals"]["users_losing"], 12);
        assert_eq!(records[3]["plan_hash"], hash.as_str());
        assert_eq!(records[0]["detail"], "rollback to v1");
        // The other tenant's admin sees none of it.
        let url = format!("http://{}/api/v1/tenants/{other}/mappings/audit", srv.addr);
        let r = Resp::read(srv.client.get(url).bearer_auth(other_admin.token.expose()).send().await.unwrap()).await;
        assert_eq!(r.body["records"], json!([]), "{}", r.body);
    }
}

crate::each_backend! {
    async fn tenant_tokens_with_label_expiry_and_last_use(backend) {
        let srv = TestServer::start(backend).await;
        let admin = token(&srv, Scope::Admin).await;
        let r = api(&srv, &admin, Method::POST, "/tokens", Some(json!({"scope": "scim", "label": "Okta production"}))).await;
        assert_eq!(r.status, 201, "{}", r.body);
        let scim = r.body["token"].as_str().unwrap().to_string();
        let id = r.body["id"].as_str().unwrap().to_string();
        // Never used yet.
        let r = api(&srv, &admin, Method::GET, "/tokens", None).await;
        let listed = r.body["tokens"].as_array().unwrap().iter().find(|t| t["id"] == id.as_str()).unwrap().clone();
        assert_eq!((listed["label"].clone(), listed["last_used"].clone()), (json!("Okta production"), Value::Null));
        assert!(!r.body.to_string().contains(&scim[36..]), "a listing shows a secret");
        // Used: last_used is set (written off the request path, so it
        // may land a moment after the response).
        let users = format!("{}/Users", srv.base);
        let r = srv.client.get(&users).bearer_auth(&scim).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let r = api(&srv, &admin, Method::GET, "/tokens", None).await;
            let listed = r.body["tokens"].as_array().unwrap().iter().find(|t| t["id"] == id.as_str()).unwrap().clone();
            if listed["last_used"].is_string() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "last_used never set: {listed}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Bad input is a precise 400.
        for body in [json!({"scope": "root"}), json!({"scope": "scim", "expires": "tomorrow"}), json!({"scope": "scim", "expires": "2001-01-01T00:00:00Z"}), json!({"scope": "scim", "colour": "red"})] {
            let r = api(&srv, &admin, Method::POST, "/tokens", Some(body.clone())).await;
            assert_eq!(r.status, 400, "{body}: {}", r.body);
        }
        // A token that has expired is refused like a revoked one.
        let soon = (time::OffsetDateTime::now_utc() + time::Duration::seconds(2)).format(&time::format_description::well_known::Rfc3339).unwrap();
        let r = api(&srv, &admin, Method::POST, "/tokens", Some(json!({"scope": "scim", "expires": soon}))).await;
        assert_eq!(r.status, 201, "{}", r.body);
        let short = r.body["token"].as_str().unwrap().to_string();
        assert_eq!(srv.client.get(&users).bearer_auth(&short).send().await.unwrap().status(), 200);
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        assert_eq!(srv.client.get(&users).bearer_auth(&short).send().await.unwrap().status(), 401);
        // Revoke: the token stops working; another tenant's id is a 404.
        let r = api(&srv, &admin, Method::DELETE, &format!("/tokens/{id}"), None).await;
        assert_eq!(r.status, 204, "{}", r.body);
        assert_eq!(srv.client.get(&users).bearer_auth(&scim).send().await.unwrap().status(), 401);
        let (_, other_scim) = srv.other_tenant().await;
        let r = api(&srv, &admin, Method::DELETE, &format!("/tokens/{}", &other_scim[3..35]), None).await;
        assert_eq!(r.status, 404, "{}", r.body);
    }
}

crate::each_backend! {
    async fn a_replica_follows_the_new_version_and_never_mixes(backend) {
        let (srv, designers, _) = setup(backend, 3).await;
        let sibling = srv.sibling_app(None).await;
        assert_eq!(sibling.adopt_store_mappings().await.unwrap(), (MappingVersion(1), None));
        let tenant = sibling.tenant(&TenantName::parse(&srv.tenant).unwrap()).await.unwrap();
        let user = rolebridge::app::UserRef::Id(designers[0].clone());
        let served = |app: rolebridge::app::App| {
            let (tenant, user) = (tenant.clone(), user.clone());
            async move {
                app.user_permissions(&tenant, &user, rolebridge::app::Consistency::Full).await.unwrap().summary.roles.clone()
            }
        };
        assert_eq!(served(sibling.clone()).await, ["designer"]);
        let change = MappingChange {
            base: Some(MappingVersion(1)),
            scope: ChangeScope::Tenant(mapping::TenantName::new(&srv.tenant)),
            files: MappingFiles::from([(format!("tenants/{}.yaml", srv.tenant), V2.to_string())]),
        };
        // Three of four users lose access: the guard wants the hash.
        let plan = srv.app.plan_mappings(&change).await.unwrap();
        assert_eq!(plan.totals.users_losing, 3);
        let applied = srv.app.apply_mappings(&change, Some(&plan.hash), &rolebridge::app::mappings::operator()).await.unwrap();
        assert_eq!(applied.version, MappingVersion(2));
        // The sibling has not polled yet. A check reads the stored row,
        // which the switch rewrote under version 2 in one transaction: an
        // answer is the version of the revision it reports, on every
        // replica.
        assert_eq!(sibling.mapping_version_in_force(), Some(MappingVersion(1)));
        assert_eq!(served(sibling.clone()).await, Vec::<String>::new());
        assert_eq!(served(srv.app.clone()).await, Vec::<String>::new());
        // A write through the lagging sibling does not rewrite the tenant
        // under version 1: it catches up first.
        let mut tx = sibling.store().begin_write().await.unwrap();
        tx.touch_tenant(tenant.id);
        sibling.commit(tx).await.unwrap();
        assert_eq!(sibling.mapping_version_in_force(), Some(MappingVersion(2)));
        for d in &designers {
            let user = rolebridge::app::UserRef::Id(d.clone());
            let roles = srv.app.user_permissions(&tenant, &user, rolebridge::app::Consistency::Full).await.unwrap().summary.roles.clone();
            assert_eq!(roles, Vec::<String>::new(), "a lagging replica rewrote {d} under version 1");
        }
        // Its poll has nothing left to switch.
        assert_eq!(sibling.refresh_mappings().await.unwrap(), None);
        assert_eq!(served(sibling.clone()).await, Vec::<String>::new());
    }
}

/// Two `serve` processes on one database: `mappings apply` from the CLI
/// (refused by the guard, then confirmed with the plan's hash) reaches both
/// within 2 s, with no signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_processes_switch_within_two_seconds() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        two_serve_processes(backend).await;
    }
}

async fn two_serve_processes(backend: Backend) {
    let db = fresh_database(backend).await;
    let tenant = unique("gitops");
    assert_eq!(cli(&db, &["tenant", "create", &tenant]).0, 0);
    let scim = cli_token(&db, &tenant, "scim");
    let perm = cli_token(&db, &tenant, "permissions");
    let dir = crate::support::mappings_dir_for(&tenant, V1);
    let tenant_yaml = dir.join("tenants").join(format!("{tenant}.yaml"));
    let config = dir.join("rolebridge.toml");
    std::fs::write(
        &config,
        "mapping_poll = \"200ms\"\n[mapping_guard]\nmax_users_losing = 0\n",
    )
    .unwrap();
    let args = [
        "--mappings",
        dir.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    let (mut a, a_addr) = spawn_server(&db, None, &args);
    let (mut b, b_addr) = spawn_server(&db, None, &args);
    let client = reqwest::Client::new();
    let scim_base = format!("{a_addr}/scim/v2/{tenant}");
    let post = |path: &str, body: Value| {
        let req = client
            .post(format!("{scim_base}{path}"))
            .bearer_auth(&scim)
            .json(&body);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let user = post(
        "/Users",
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "dana"}),
    )
    .await;
    let uid = user["id"].as_str().unwrap().to_string();
    let group = post(
        "/Groups",
        json!({"schemas": [GROUP], "displayName": "Designers", "members": [{"value": uid}]}),
    )
    .await;
    assert!(group["id"].is_string(), "{group}");
    let roles = |addr: String| {
        let (client, perm, uid, tenant) =
            (client.clone(), perm.clone(), uid.clone(), tenant.clone());
        async move {
            let r: Value = client
                .get(format!(
                    "{addr}/api/v1/tenants/{tenant}/users/{uid}/permissions"
                ))
                .bearer_auth(&perm)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            r["roles"].clone()
        }
    };
    assert_eq!(roles(a_addr.clone()).await, json!(["designer"]));
    assert_eq!(roles(b_addr.clone()).await, json!(["designer"]));

    // The GitOps path: plan, a refused apply that prints the hash, and the
    // confirmed apply.
    std::fs::write(&tenant_yaml, V2).unwrap();
    let cfg = config.to_str().unwrap();
    let d = dir.to_str().unwrap();
    let mappings = |args: &[&str]| {
        let mut all = vec!["--config", cfg, "mappings"];
        all.extend_from_slice(args);
        cli(&db, &all)
    };
    let (code, out, err) = mappings(&["plan", d, "--json"]);
    assert_eq!(code, 0, "{err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["totals"]["users_losing"], 1, "{plan}");
    let hash = plan["hash"].as_str().unwrap().to_string();
    let (code, _, err) = mappings(&["apply", d]);
    assert_ne!(code, 0);
    assert!(
        err.contains(&hash) && err.contains("1 users lose access"),
        "{err}"
    );
    let (code, out, err) = mappings(&["apply", d, "--confirm", &hash]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("applied as v2"), "{out}");
    let applied = std::time::Instant::now();
    for addr in [&a_addr, &b_addr] {
        loop {
            if roles(addr.clone()).await == json!([]) {
                break;
            }
            assert!(
                applied.elapsed() < std::time::Duration::from_secs(2),
                "{addr} still serves version 1 after 2 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let (_, history, _) = cli(&db, &["mappings", "history"]);
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 2, "{history}");
    assert!(
        lines[0].starts_with("v2\t") && lines[0].contains("\tapply\toperator"),
        "{history}"
    );
    assert!(
        lines[1].starts_with("v1\t") && lines[1].contains("\timport\t"),
        "{history}"
    );
    let (code, out, err) = cli(&db, &["mappings", "rollback", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("rolled back to v1 as v3"), "{out}");
    let (_, audit, _) = cli(&db, &["mappings", "audit"]);
    let actions: Vec<&str> = audit
        .lines()
        .map(|l| l.split('\t').nth(1).unwrap())
        .collect();
    assert_eq!(actions, ["applied", "applied", "refused"], "{audit}");
    let _ = (a.kill(), b.kill());
    let _ = (a.wait(), b.wait());
    crate::support::drop_database(backend, &db).await;
}

/// A second tenant in `srv`'s store, mapped by the operator to V1 (version
/// 2), with one user, olga, in its Designers group: (tenant, olga's id, the
/// files of version 2, the apply).
async fn second_tenant_with_a_designer(
    srv: &TestServer,
) -> (
    String,
    String,
    MappingFiles,
    rolebridge::app::mappings::AppliedChange,
) {
    let (other, other_scim) = srv.other_tenant().await;
    let mut files: MappingFiles = srv.app.mappings().current().files.as_ref().clone();
    files.insert(format!("tenants/{other}.yaml"), V1.to_string());
    let add = MappingChange {
        base: Some(MappingVersion(1)),
        scope: ChangeScope::Operator,
        files: files.clone(),
    };
    let applied = srv
        .app
        .apply_mappings(&add, None, &rolebridge::app::mappings::operator())
        .await
        .unwrap();
    let url = format!("http://{}/scim/v2/{other}", srv.addr);
    let olga: Value = srv
        .client
        .post(format!("{url}/Users"))
        .bearer_auth(&other_scim)
        .json(
            &json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "olga"}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = srv
        .client
        .post(format!("{url}/Groups"))
        .bearer_auth(&other_scim)
        .json(&json!({"schemas": [GROUP], "displayName": "Designers", "members": [{"value": olga["id"]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let olga = olga["id"].as_str().expect("olga's id").to_string();
    (other, olga, files, applied)
}

crate::each_backend! {
    async fn a_tenant_edit_recomputes_only_that_tenant(backend) {
        let (srv, designers, _) = setup(backend, 3).await;
        let operator = rolebridge::app::mappings::operator();
        let (other, olga, _, applied) = second_tenant_with_a_designer(&srv).await;
        assert_eq!((applied.version, applied.tenants_recomputed), (MappingVersion(2), 1), "only the new tenant");
        let other_tenant = srv.app.tenant(&TenantName::parse(&other).unwrap()).await.unwrap();
        let revision = |t: rolebridge::domain::Tenant, id: String| {
            let app = srv.app.clone();
            async move {
                app.user_permissions(&t, &rolebridge::app::UserRef::Id(id), rolebridge::app::Consistency::Full).await.unwrap()
            }
        };
        let before = revision(other_tenant.clone(), olga.clone()).await;
        assert_eq!(before.summary.roles, ["designer"]);
        // This tenant's own edit: its tenant is recomputed, the other keeps
        // its rows and its revision.
        let change = MappingChange {
            base: Some(MappingVersion(2)),
            scope: ChangeScope::Tenant(mapping::TenantName::new(&srv.tenant)),
            files: MappingFiles::from([(format!("tenants/{}.yaml", srv.tenant), V2.to_string())]),
        };
        let plan = srv.app.plan_mappings(&change).await.unwrap();
        let applied = srv.app.apply_mappings(&change, Some(&plan.hash), &operator).await.unwrap();
        assert_eq!((applied.version, applied.tenants_recomputed), (MappingVersion(3), 1));
        let after = revision(other_tenant, olga).await;
        assert_eq!((after.summary.roles.clone(), after.revision), (before.summary.roles.clone(), before.revision));
        let mine = srv.app.tenant(&TenantName::parse(&srv.tenant).unwrap()).await.unwrap();
        assert_eq!(revision(mine, designers[0].clone()).await.summary.roles, Vec::<String>::new());
    }
}

crate::each_backend! {
    async fn a_catalog_change_is_planned_and_guarded_across_every_tenant_that_uses_it(backend) {
        let (srv, designers, _) = setup(backend, 3).await;
        let operator = rolebridge::app::mappings::operator();
        let (other, olga, mut files, _) = second_tenant_with_a_designer(&srv).await;

        // The operator takes agent_export out of the catalog's designer role.
        let catalog = files.keys().find(|f| f.starts_with("catalogs/") && files[*f].contains("id: gms")).cloned()
            .unwrap_or_else(|| panic!("the gms catalog among {:?}", files.keys().collect::<Vec<_>>()));
        let text = files[&catalog].clone();
        let role = text.find("  - id: designer\n").expect("designer role");
        let line = role + text[role..].find("      - agent_export").expect("designer grants agent_export");
        let end = line + text[line..].find('\n').unwrap() + 1;
        files.insert(catalog.clone(), format!("{}{}", &text[..line], &text[end..]));
        let change = MappingChange { base: Some(MappingVersion(2)), scope: ChangeScope::Operator, files };
        let plan = srv.app.plan_mappings(&change).await.unwrap();
        assert_eq!(plan.files_changed, std::slice::from_ref(&catalog));
        let losing: std::collections::BTreeMap<&str, usize> =
            plan.tenants.iter().map(|t| (t.tenant.as_str(), t.totals.users_losing)).collect();
        assert_eq!(losing.get(srv.tenant.as_str()), Some(&3), "{losing:?}");
        assert_eq!(losing.get(other.as_str()), Some(&1), "{losing:?}");
        let theirs = plan.tenants.iter().find(|t| t.tenant == other).unwrap();
        assert_eq!(theirs.users[0].user_name, "olga");
        assert_eq!(theirs.users[0].permissions_lost, ["agent_export"]);
        // 3 of 4 users of this tenant lose a permission: over the 5 % rule,
        // so the apply wants the plan's hash, then takes it.
        assert!(!plan.guard.is_empty(), "{:?}", plan.guard);
        assert!(srv.app.apply_mappings(&change, None, &operator).await.is_err());
        assert_eq!(srv.app.latest_mapping_version().await.unwrap(), Some(MappingVersion(2)));
        let applied = srv.app.apply_mappings(&change, Some(&plan.hash), &operator).await.unwrap();
        assert_eq!((applied.version, applied.tenants_recomputed), (MappingVersion(3), 2));
        for (tenant, user) in [(srv.tenant.clone(), designers[0].clone()), (other.clone(), olga)] {
            let t = srv.app.tenant(&TenantName::parse(&tenant).unwrap()).await.unwrap();
            let served = srv.app.user_permissions(&t, &rolebridge::app::UserRef::Id(user), rolebridge::app::Consistency::Full).await.unwrap();
            assert_eq!(served.summary.roles, ["designer"], "{tenant}");
            assert!(!served.summary.permissions.iter().any(|p| p == "agent_export"), "{tenant}: {:?}", served.summary.permissions);
            assert!(served.summary.permissions.iter().any(|p| p == "project_view"), "{tenant}: {:?}", served.summary.permissions);
        }
    }
}
