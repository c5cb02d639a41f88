//! SIGTERM to `serve`: readiness turns 503 at once while requests are still
//! accepted for the shutdown delay, then requests in flight finish within
//! the shutdown grace and the process exits 0; a request that would
//! outlast the grace does not hold the process past it.

use std::time::{Duration, Instant};

use crate::durability::{cli, cli_token, spawn_server};
use crate::mapping_admin::V1;
use crate::support::{fresh_database, mappings_dir_for, unique};

pub(crate) fn sigterm(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Waits for the child to exit, at most `limit`; its exit status.
pub(crate) fn wait_exit(
    child: &mut std::process::Child,
    limit: Duration,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not exit within {limit:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Served {
    child: std::process::Child,
    db: String,
    addr: String,
    tenant: String,
    scim: String,
    perm: String,
}

async fn server(backend: crate::support::Backend, delay: &str, grace: &str) -> Served {
    let db = fresh_database(backend).await;
    let tenant = unique("term");
    let dir = mappings_dir_for(&tenant, V1);
    let config = dir.join("rolebridge.toml");
    std::fs::write(
        &config,
        format!("shutdown_delay = \"{delay}\"\nshutdown_grace = \"{grace}\"\n"),
    )
    .unwrap();
    assert_eq!(cli(&db, &["tenant", "create", &tenant]).0, 0);
    let scim = cli_token(&db, &tenant, "scim");
    let perm = cli_token(&db, &tenant, "permissions");
    let (child, addr) = spawn_server(
        &db,
        None,
        &[
            "--mappings",
            dir.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    Served {
        child,
        db,
        addr,
        tenant,
        scim,
        perm,
    }
}

crate::each_backend! {
    async fn sigterm_turns_readiness_off_then_drains_in_flight_requests(backend) {
        let Served { mut child, db, addr, tenant, scim, perm } = server(backend, "1500ms", "10s").await;
        let client = reqwest::Client::new();
        assert_eq!(client.get(format!("{addr}/readyz")).send().await.unwrap().status(), 200);
        // A request in flight across the whole shutdown: a 4 s long-poll.
        let poll = tokio::spawn({
            let (client, url, perm) = (client.clone(), format!("{addr}/api/v1/tenants/{tenant}/changes?wait=4s"), perm.clone());
            async move { client.get(url).bearer_auth(perm).send().await.map(|r| r.status().as_u16()) }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let signalled = Instant::now();
        sigterm(&child);
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Readiness is off at once; requests are still served meanwhile.
        let r = client.get(format!("{addr}/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 503);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["failing"], "shutting down", "{body}");
        let r = client
            .post(format!("{addr}/scim/v2/{tenant}/Users"))
            .bearer_auth(&scim)
            .header("content-type", "application/scim+json")
            .body(r#"{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"userName":"late"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "a request during the shutdown delay is served");
        // The long-poll finishes normally; then the process exits 0.
        assert_eq!(poll.await.unwrap().expect("the in-flight request was not dropped"), 200);
        let status = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(10))).await.unwrap();
        assert!(status.success(), "{status:?}");
        assert!(signalled.elapsed() >= Duration::from_millis(3500), "exited before the in-flight request finished");
        assert!(client.get(format!("{addr}/healthz")).send().await.is_err(), "still listening after exit");
        // The user created during the delay was committed.
        let store = rolebridge::store::Store::connect(&db).await.unwrap();
        let t = store.tenant_by_name(&rolebridge::domain::TenantName::parse(&tenant).unwrap()).await.unwrap().unwrap();
        assert_eq!(store.count(t.id, scim::schema::ResourceKind::User).await.unwrap(), 1);
    }
}

crate::each_backend! {
    async fn a_request_longer_than_the_grace_does_not_hold_the_process(backend) {
        let Served { mut child, addr, tenant, perm, .. } = server(backend, "0s", "1s").await;
        let client = reqwest::Client::new();
        let poll = tokio::spawn({
            let (client, url) = (client.clone(), format!("{addr}/api/v1/tenants/{tenant}/changes?wait=30s"));
            async move { client.get(url).bearer_auth(perm).send().await.map(|r| r.status().as_u16()) }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let signalled = Instant::now();
        sigterm(&child);
        let status = tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(8))).await.unwrap();
        let took = signalled.elapsed();
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "exited after {took:?}, grace 1 s");
        assert!(status.success(), "{status:?}");
        assert!(poll.await.unwrap().is_err(), "the 30 s request cannot have been answered");
    }
}
