//! Webhooks against a real local HTTP receiver: signed deliveries after a
//! SCIM change, a sync run and a mapping version; a receiver down and
//! back; retries honouring Retry-After; dead letters in status and
//! /metrics; secret rotation; kill -9 of `serve` mid-delivery; two
//! replicas delivering one endpoint.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::changes_feed::{api, mapped, members};
use crate::mapping_admin::{token, V1, V2};
use crate::support::receiver::{assert_per_user_order, Answer, Receiver};
use crate::support::{Backend, TestServer};
use rolebridge::app::webhooks::{spawn_delivery, verify, SignatureError, WebhookSettings};
use rolebridge::app::App;
use rolebridge::domain::{Scope, Secret};

/// Delivery settings for tests: retries in tens of milliseconds.
pub(crate) fn fast() -> WebhookSettings {
    WebhookSettings {
        batch: 100,
        max_attempts: 50,
        backoff_base: Duration::from_millis(30),
        backoff_max: Duration::from_millis(300),
        timeout: Duration::from_secs(5),
        poll: Duration::from_millis(50),
        rotation_grace: Duration::from_secs(3600),
        allow_http: false,
    }
}

/// Registers the receiver for the server's tenant through the admin API;
/// returns the endpoint id and its secret.
async fn register(srv: &TestServer, admin: &str, url: &str) -> (String, Secret) {
    let r = api(
        srv,
        admin,
        Method::POST,
        "/webhooks",
        Some(json!({"url": url})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let secret = r.body["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"), "{}", r.body);
    // Shown once: the listing never has it.
    let list = api(srv, admin, Method::GET, "/webhooks", None).await;
    assert!(!list.body.to_string().contains(secret), "{}", list.body);
    (
        r.body["id"].as_str().unwrap().to_string(),
        Secret::new(secret),
    )
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Runs the verification snippet of README.md (the Python block after
/// "A receiver checks it like this") on a delivery; prints True or False.
fn readme_python_verify(secret: &Secret, header: &str, body: &[u8]) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let after = readme
        .split("A receiver checks it like this")
        .nth(1)
        .expect("README's snippet");
    let code = after
        .split("```python\n")
        .nth(1)
        .and_then(|c| c.split("```").next())
        .expect("a python block");
    let dir = crate::support::test_dir().join(crate::support::unique("pyverify"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("body"), body).unwrap();
    let script = format!(
        "{code}\nimport sys\nprint(verify(sys.argv[1], sys.argv[2], open(sys.argv[3], 'rb').read()))\n"
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(secret.expose())
        .arg(header)
        .arg(dir.join("body"))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An endpoint's status once `pred` holds (within 10 s): delivery state is
/// written after the receiver answers, so a test that has just seen a
/// request arrive must wait for the status to follow.
async fn status_until(
    srv: &TestServer,
    admin: &str,
    id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = api(srv, admin, Method::GET, &format!("/webhooks/{id}"), None).await;
        if pred(&s.body) {
            return s.body;
        }
        assert!(
            Instant::now() < deadline,
            "webhook status not {what} in 10 s: {}",
            s.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn deliverer(
    srv: &TestServer,
    settings: WebhookSettings,
) -> (App, tokio::task::JoinHandle<()>) {
    let app = srv.app.clone().with_webhook_settings(settings);
    let handle = spawn_delivery(app.clone());
    (app, handle)
}

crate::each_backend! {
    async fn deliveries_are_signed_and_follow_scim_and_mapping_changes(backend) {
        let (srv, designers) = mapped(backend).await;
        let admin = token(&srv, Scope::Admin).await;
        let receiver = Receiver::start().await;
        let (id, secret) = register(&srv, &admin, &receiver.url()).await;
        let (_app, task) = deliverer(&srv, fast()).await;
        let ann = srv.user("ann").await;
        members(&srv, "add", &designers, &[&ann]).await;
        let events = receiver.wait_for(Duration::from_secs(10), |e| !e.is_empty()).await;
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["user"]["id"], ann.as_str());
        assert_eq!(events[0]["added"]["roles"], json!(["designer"]));
        assert_eq!(events[0]["cause"]["kind"], "scim");
        let got = receiver.received().remove(0);
        assert_eq!(got.json["webhook"], id.as_str());
        assert_eq!(got.json["tenant"], srv.tenant.as_str());
        assert_eq!(got.delivery, format!("{id}:1-1"));
        // The signature verifies under the secret, and any tampering shows.
        assert_eq!(verify(&secret, &got.signature, &got.body, now_unix(), 300), Ok(()));
        let mut tampered = got.body.clone();
        let at = tampered.iter().position(|b| *b == b'1').unwrap();
        tampered[at] = b'2';
        assert_eq!(verify(&secret, &got.signature, &tampered, now_unix(), 300), Err(SignatureError::Mismatch));
        assert_eq!(verify(&Secret::new("whsec_wrong"), &got.signature, &got.body, now_unix(), 300), Err(SignatureError::Mismatch));
        assert!(matches!(verify(&secret, &got.signature, &got.body, now_unix() + 3600, 300), Err(SignatureError::Stale { .. })));
        // README's Python snippet, run as written, agrees.
        assert_eq!(readme_python_verify(&secret, &got.signature, &got.body), "True");
        assert_eq!(readme_python_verify(&secret, &got.signature, &tampered), "False");
        assert_eq!(readme_python_verify(&Secret::new("whsec_wrong"), &got.signature, &got.body), "False");

        // A mapping version: ann loses the role; the event names version 2.
        let r = api(&srv, &admin, Method::POST, "/mappings/plan", Some(json!({"base": 1, "text": V2}))).await;
        let hash = r.body["hash"].as_str().unwrap().to_string();
        let r = api(&srv, &admin, Method::POST, "/mappings", Some(json!({"base": 1, "text": V2, "confirm": hash}))).await;
        assert_eq!(r.status, 201, "{}", r.body);
        let events = receiver.wait_for(Duration::from_secs(10), |e| e.len() >= 2).await;
        assert_eq!(events[1]["cause"], json!({"kind": "mapping", "version": 2}));
        assert_eq!(events[1]["removed"]["roles"], json!(["designer"]));

        // Rotation: both secrets sign until the old one expires.
        let r = api(&srv, &admin, Method::POST, &format!("/webhooks/{id}/rotate"), None).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let newer = Secret::new(r.body["secret"].as_str().unwrap());
        assert_eq!(r.body["secrets"].as_array().unwrap().len(), 2, "{}", r.body);
        let bob = srv.user("bob").await;
        let r = api(&srv, &admin, Method::POST, "/mappings/plan", Some(json!({"base": 2, "text": V1}))).await;
        let hash = r.body["hash"].as_str().unwrap().to_string();
        let r = api(&srv, &admin, Method::POST, "/mappings", Some(json!({"base": 2, "text": V1, "confirm": hash}))).await;
        assert_eq!(r.status, 201, "{}", r.body);
        members(&srv, "add", &designers, &[&bob]).await;
        receiver.wait_for(Duration::from_secs(10), |e| e.len() >= 4).await;
        let last = receiver.received().pop().unwrap();
        assert_eq!(last.signature.matches("v1=").count(), 2, "{}", last.signature);
        assert_eq!(verify(&newer, &last.signature, &last.body, now_unix(), 300), Ok(()));
        assert_eq!(verify(&secret, &last.signature, &last.body, now_unix(), 300), Ok(()));
        assert_per_user_order(&receiver.events(), false);

        // The receiver has the batch before the deliverer has read its 2xx
        // and moved the position, so the status catches up a moment later.
        let status = status_until(&srv, &admin, &id, "nothing pending", |s| s["pending"] == 0).await;
        assert_eq!(status["delivered"], 4, "{status}");
        assert_eq!(status["state"], "idle", "{status}");
        // Another tenant's admin sees no such endpoint.
        let (other, _) = srv.other_tenant().await;
        let other_admin = srv.app.create_token(&rolebridge::domain::TenantName::parse(&other).unwrap(), Scope::Admin).await.unwrap();
        let url = format!("http://{}/api/v1/tenants/{other}/webhooks/{id}", srv.addr);
        let r = crate::support::Resp::read(srv.client.get(url).bearer_auth(other_admin.token.expose()).send().await.unwrap()).await;
        assert_eq!((r.status.as_u16(), r.body["error"]["code"].clone()), (404, json!("unknown_webhook")), "{}", r.body);
        task.abort();
    }
}

crate::each_backend! {
    async fn a_receiver_down_then_up_gets_everything_in_order(backend) {
        let (srv, designers) = mapped(backend).await;
        let admin = token(&srv, Scope::Admin).await;
        let mut receiver = Receiver::start().await;
        let (id, _) = register(&srv, &admin, &receiver.url()).await;
        receiver.stop().await;
        let (_app, task) = deliverer(&srv, WebhookSettings { batch: 3, ..fast() }).await;
        let users = [srv.user("a").await, srv.user("b").await, srv.user("c").await];
        // 18 changes: each user joins and leaves three times.
        for round in 0..3 {
            for u in &users {
                members(&srv, "add", &designers, &[u]).await;
            }
            for u in &users {
                members(&srv, "remove", &designers, &[u]).await;
            }
            if round == 0 {
                // Down: the endpoint retries with backoff, and says so.
                tokio::time::sleep(Duration::from_millis(400)).await;
                let s = api(&srv, &admin, Method::GET, &format!("/webhooks/{id}"), None).await;
                assert_eq!(s.body["state"], "retrying", "{}", s.body);
                assert!(s.body["attempts"].as_u64().unwrap() >= 1, "{}", s.body);
                assert_eq!(s.body["last_error"], "cannot connect to the receiver", "{}", s.body);
                assert_eq!(s.body["position"], 0, "{}", s.body);
            }
        }
        assert!(receiver.events().is_empty());
        receiver.restart().await;
        let events = receiver.wait_for(Duration::from_secs(20), |e| e.len() >= 18).await;
        assert_eq!(events.len(), 18, "nothing lost, nothing twice");
        assert_eq!(events.iter().map(|e| e["cursor"].as_i64().unwrap()).collect::<Vec<_>>(), (1..=18).collect::<Vec<_>>());
        assert_per_user_order(&events, false);
        // Batches of at most 3.
        assert!(receiver.received().iter().all(|r| r.json["events"].as_array().unwrap().len() <= 3));
        task.abort();
    }
}

crate::each_backend! {
    async fn retry_after_is_honoured_and_a_batch_is_dead_lettered_after_its_last_attempt(backend) {
        let (srv, designers) = mapped(backend).await;
        let admin = token(&srv, Scope::Admin).await;
        let receiver = Receiver::start().await;
        let (id, _) = register(&srv, &admin, &receiver.url()).await;
        // 429 with Retry-After: 1, then fine.
        receiver.script(&[Answer::Fail(429, Some(1))]);
        let (_app, task) = deliverer(&srv, WebhookSettings { max_attempts: 3, ..fast() }).await;
        let ann = srv.user("ann").await;
        members(&srv, "add", &designers, &[&ann]).await;
        receiver.wait_for(Duration::from_secs(10), |e| e.len() >= 2).await;
        let got = receiver.received();
        let gap = got[1].at - got[0].at;
        assert!(gap >= Duration::from_millis(950), "retried after {gap:?}, before Retry-After: 1");
        assert_eq!(got[0].delivery, got[1].delivery, "the same batch again");

        // Failing for good: three attempts, then a dead letter, and the
        // next event goes out.
        receiver.answer(Answer::Fail(500, None));
        members(&srv, "remove", &designers, &[&ann]).await;
        let s = status_until(&srv, &admin, &id, "dead-lettered", |s| s["dead_lettered"] == 1).await;
        assert_eq!(s["position"], 2, "{s}");
        assert_eq!(s["last_error"], "the receiver answered 500 Internal Server Error");
        assert_eq!(receiver.received().len(), 2 + 3, "exactly max_attempts attempts");
        let letters = api(&srv, &admin, Method::GET, &format!("/webhooks/{id}/dead_letters"), None).await;
        let l = &letters.body["dead_letters"][0];
        assert_eq!((l["first"].clone(), l["last"].clone(), l["attempts"].clone()), (json!(2), json!(2), json!(3)), "{}", letters.body);
        assert_eq!(l["body"]["events"][0]["user"]["id"], ann.as_str());
        // Visible in /metrics, from the store.
        let metrics = srv.client.get(format!("http://{}/metrics", srv.addr)).send().await.unwrap().text().await.unwrap();
        let line = format!("rolebridge_webhook_dead_lettered_events{{tenant=\"{}\",webhook=\"{id}\"}} 1", srv.tenant);
        assert!(metrics.contains(&line), "{line} not in /metrics");

        receiver.answer(Answer::Ok);
        members(&srv, "add", &designers, &[&ann]).await;
        let events = receiver.wait_for(Duration::from_secs(10), |e| e.iter().any(|e| e["cursor"] == 3)).await;
        assert_eq!(events.last().unwrap()["cursor"], 3);
        task.abort();
    }
}

// ---- Through the binary: kill -9 mid-delivery, and two replicas. ----

use crate::durability::{cli, cli_token, spawn_server};
use crate::support::{fresh_database, mappings_dir_for, unique, PATCH_OP};

/// A config file with fast delivery settings.
fn config_file(dir: &std::path::Path, batch: usize) -> std::path::PathBuf {
    let path = dir.join("rolebridge.toml");
    std::fs::write(
        &path,
        format!("mapping_poll = \"200ms\"\n[webhooks]\nbackoff_base = \"50ms\"\nbackoff_max = \"500ms\"\npoll = \"50ms\"\ntimeout = \"2s\"\nmax_attempts = 1000\nbatch = {batch}\n"),
    )
    .unwrap();
    path
}

struct Cluster {
    db: String,
    tenant: String,
    token: String,
    mappings: std::path::PathBuf,
    config: std::path::PathBuf,
    client: reqwest::Client,
}

impl Cluster {
    /// `batch`: events per POST.
    async fn new(backend: Backend, batch: usize) -> Cluster {
        let db = fresh_database(backend).await;
        let tenant = unique("hook");
        let mappings = mappings_dir_for(&tenant, V1);
        let config = config_file(&mappings, batch);
        assert_eq!(cli(&db, &["tenant", "create", &tenant]).0, 0);
        let token = cli_token(&db, &tenant, "scim");
        Cluster {
            db,
            tenant,
            token,
            mappings,
            config,
            client: reqwest::Client::new(),
        }
    }

    fn serve(&self) -> (std::process::Child, String) {
        spawn_server(
            &self.db,
            None,
            &[
                "--mappings",
                self.mappings.to_str().unwrap(),
                "--config",
                self.config.to_str().unwrap(),
            ],
        )
    }

    async fn scim(&self, addr: &str, method: Method, path: &str, body: Value) -> Value {
        let r = self
            .client
            .request(method, format!("{addr}/scim/v2/{}{path}", self.tenant))
            .bearer_auth(&self.token)
            .header("content-type", "application/scim+json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        r.json().await.unwrap_or(Value::Null)
    }
}

crate::each_backend! {
    async fn kill_nine_mid_delivery_then_restart_loses_nothing(backend) {
        let c = Cluster::new(backend, 100).await;
        let receiver = Receiver::start().await;
        // The receiver holds the first delivery for 3 s: the kill lands
        // while it is in flight.
        receiver.script(&[Answer::Slow(Duration::from_secs(3))]);
        let (code, out, err) = cli(&c.db, &["--config", c.config.to_str().unwrap(), "webhooks", "add", "--tenant", &c.tenant, "--url", &receiver.url()]);
        assert_eq!(code, 0, "{out}{err}");
        let (mut server, addr) = c.serve();
        let group = c.scim(&addr, Method::POST, "/Groups", json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Designers"})).await;
        let group = group["id"].as_str().unwrap().to_string();
        let mut users = Vec::new();
        for i in 0..4 {
            let u = c.scim(&addr, Method::POST, "/Users", json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": format!("k{i}")})).await;
            users.push(u["id"].as_str().unwrap().to_string());
        }
        let add = |u: &str| json!({"schemas": [PATCH_OP], "Operations": [{"op": "add", "path": "members", "value": [{"value": u}]}]});
        let remove = |u: &str| json!({"schemas": [PATCH_OP], "Operations": [{"op": "remove", "path": format!("members[value eq \"{u}\"]")}]});
        for u in &users {
            c.scim(&addr, Method::PATCH, &format!("/Groups/{group}"), add(u)).await;
        }
        receiver.wait_for(Duration::from_secs(10), |e| !e.is_empty()).await;
        // The first POST is being held: kill -9 now.
        server.kill().unwrap();
        server.wait().unwrap();
        let before = receiver.received().len();
        // Writes go on after the restart; the held batch is sent again.
        let (mut server, addr) = c.serve();
        for u in &users {
            c.scim(&addr, Method::PATCH, &format!("/Groups/{group}"), remove(u)).await;
        }
        let events = receiver.wait_for(Duration::from_secs(30), |e| {
            let ids: std::collections::HashSet<_> = e.iter().map(|e| e["cursor"].as_i64().unwrap()).collect();
            ids.len() >= 8
        }).await;
        assert!(receiver.received().len() > before, "delivery resumed after the restart");
        let cursors: std::collections::BTreeSet<i64> = events.iter().map(|e| e["cursor"].as_i64().unwrap()).collect();
        assert_eq!(cursors, (1..=8).collect(), "every event, none lost");
        // The interrupted batch came again (at least once), and per-user
        // order holds over first receipts.
        assert!(events.len() > 8, "the batch held at the kill was redelivered");
        assert_per_user_order(&events, true);
        server.kill().unwrap();
        server.wait().unwrap();
    }
}

/// Several replicas share PostgreSQL (a SQLite file belongs to one
/// process: the deployment docs and the chart say so), so this runs there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_deliver_each_event_once_in_per_user_order() {
    {
        // One event per POST: the most sends for the two to contend over.
        let c = Cluster::new(Backend::Postgres, 1).await;
        let receiver = Receiver::start().await;
        let (code, out, err) = cli(
            &c.db,
            &[
                "--config",
                c.config.to_str().unwrap(),
                "webhooks",
                "add",
                "--tenant",
                &c.tenant,
                "--url",
                &receiver.url(),
            ],
        );
        assert_eq!(code, 0, "{out}{err}");
        let (mut one, addr1) = c.serve();
        let (mut two, addr2) = c.serve();
        let group = c.scim(&addr1, Method::POST, "/Groups", json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Designers"})).await;
        let group = group["id"].as_str().unwrap().to_string();
        let mut users = Vec::new();
        for i in 0..5 {
            let u = c.scim(&addr2, Method::POST, "/Users", json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": format!("r{i}")})).await;
            users.push(u["id"].as_str().unwrap().to_string());
        }
        // 30 changes, alternating replicas.
        let mut n = 0;
        for round in 0..6 {
            for u in &users {
                let addr = if n % 2 == 0 { &addr1 } else { &addr2 };
                n += 1;
                let body = if round % 2 == 0 {
                    json!({"schemas": [PATCH_OP], "Operations": [{"op": "add", "path": "members", "value": [{"value": u}]}]})
                } else {
                    json!({"schemas": [PATCH_OP], "Operations": [{"op": "remove", "path": format!("members[value eq \"{u}\"]")}]})
                };
                c.scim(addr, Method::PATCH, &format!("/Groups/{group}"), body)
                    .await;
            }
        }
        receiver
            .wait_for(Duration::from_secs(20), |e| e.len() >= 30)
            .await;
        // A moment more: nothing arrives twice.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let events = receiver.events();
        assert_eq!(events.len(), 30, "each event once: {}", events.len());
        assert_per_user_order(&events, false);
        // `changes tail` prints the same feed as JSON lines.
        let (code, out, err) = cli(&c.db, &["changes", "tail", "--tenant", &c.tenant]);
        assert_eq!(code, 0, "{err}");
        let tailed: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            tailed
                .iter()
                .map(|e| e["cursor"].as_i64().unwrap())
                .collect::<Vec<_>>(),
            (1..=30).collect::<Vec<_>>()
        );
        let (code, out, _) = cli(
            &c.db,
            &["changes", "tail", "--tenant", &c.tenant, "--after", "28"],
        );
        assert_eq!((code, out.lines().count()), (0, 2), "{out}");
        // The status through the CLI agrees.
        let (code, out, _) = cli(
            &c.db,
            &["webhooks", "status", "--tenant", &c.tenant, "--json"],
        );
        assert_eq!(code, 0);
        let status: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (
                status[0]["position"].clone(),
                status[0]["pending"].clone(),
                status[0]["delivered"].clone()
            ),
            (json!(30), json!(0), json!(30)),
            "{out}"
        );
        one.kill().unwrap();
        two.kill().unwrap();
        let _ = (one.wait(), two.wait());
    }
}

crate::each_backend! {
    async fn a_sync_run_is_delivered_naming_the_run(backend) {
        use crate::support::slapd::{base_ldif, group_ldif, user_dn, user_ldif, Slapd};
        let (srv, _) = mapped(backend).await;
        let admin = token(&srv, Scope::Admin).await;
        let receiver = Receiver::start().await;
        register(&srv, &admin, &receiver.url()).await;
        let (_app, task) = deliverer(&srv, fast()).await;
        let slapd = Slapd::start_with(&format!(
            "{}{}{}{}",
            base_ldif(),
            user_ldif("dora", "dora@example.org"),
            user_ldif("emil", "emil@example.org"),
            group_ldif("Designers", &[user_dn("dora"), user_dn("emil")]),
        ));
        let cfg = crate::sync_ldap::source(&srv, &slapd, crate::sync_ldap::LENIENT);
        let report = rolebridge::app::sync::run_source(&srv.app, &cfg, rolebridge::app::sync::RunOptions::default())
            .await
            .unwrap();
        let events = receiver.wait_for(Duration::from_secs(10), |e| e.len() >= 2).await;
        let names: std::collections::BTreeSet<&str> = events.iter().map(|e| e["user"]["userName"].as_str().unwrap()).collect();
        assert_eq!(names, ["dora", "emil"].into_iter().collect(), "{events:?}");
        for e in &events {
            assert_eq!(e["added"]["roles"], json!(["designer"]), "{e}");
            assert_eq!(e["cause"]["kind"], "sync", "{e}");
            assert_eq!(e["cause"]["source"], cfg.name.as_str(), "{e}");
            assert!(!e["cause"]["run_id"].as_str().unwrap().is_empty(), "{e}");
        }
        // The run id is the one the run log records.
        let runs = srv.app.sync_runs(&cfg.name, 1).await.unwrap();
        assert_eq!(events[0]["cause"]["run_id"], runs[0].id.as_str());
        assert_eq!(report.outcome.as_str(), "applied");
        task.abort();
    }
}
