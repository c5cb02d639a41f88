//! Provisioning quotas: 429 with a SCIM body and `Retry-After`, one bucket
//! per tenant and per token, the permissions API outside them, overrides
//! from the config file, and the in-flight cap (503).

use std::time::{Duration, Instant};

use reqwest::Method;
use rolebridge::config::{Config, HttpSettings, Overrides, Quota};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Backend, Resp, TestServer};

/// Every load loop stops after this many requests or this long.
const MAX_REQUESTS: usize = 50;
const MAX_TIME: Duration = Duration::from_secs(20);

/// Settings whose default quotas are `burst` requests refilled at 1/s.
fn small(tenant_burst: u32, token_burst: u32) -> HttpSettings {
    let mut s = HttpSettings::default();
    s.rate_limit.default.tenant = Quota::new(1, tenant_burst).unwrap();
    s.rate_limit.default.token = Quota::new(1, token_burst).unwrap();
    s
}

/// GETs `/Users` with `token` on `base` until a 429, within the bounds;
/// returns the 429 and how many requests passed before it.
async fn until_429(srv: &TestServer, base: &str, token: &str) -> (Resp, usize) {
    let start = Instant::now();
    for passed in 0..MAX_REQUESTS {
        assert!(start.elapsed() < MAX_TIME, "no 429 within {MAX_TIME:?}");
        let r = srv
            .send_with(
                Method::GET,
                &format!("{base}/Users"),
                None,
                &[],
                Some(token),
            )
            .await;
        if r.status == 429 {
            return (r, passed);
        }
        assert_eq!(r.status, 200, "{}", r.body);
    }
    panic!("no 429 after {MAX_REQUESTS} requests");
}

/// A 429 in the SCIM format with a `Retry-After` of at least a second;
/// returns the seconds.
#[track_caller]
pub(crate) fn retry_after_of_429(r: &Resp) -> u64 {
    r.assert_error(429, None);
    let secs: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("Retry-After in whole seconds");
    assert!(secs >= 1, "Retry-After {secs}");
    secs
}

/// A 429 whose `Retry-After` is the 1 s these tests' quotas refill in, or 2.
#[track_caller]
fn assert_429(r: &Resp) {
    let secs = retry_after_of_429(r);
    assert!(secs <= 2, "Retry-After {secs}");
}

crate::each_backend! {
    async fn tenant_over_quota_gets_429_with_retry_after(backend) {
        let srv = TestServer::start_with_settings(backend, |_| small(3, 1000)).await;
        let (r, passed) = until_429(&srv, &srv.base, &srv.token).await;
        assert_429(&r);
        // The burst passes whole; at 1/s at most one more slips in.
        assert!((3..=4).contains(&passed), "{passed} passed");
        let metrics = srv
            .client
            .get(format!("http://{}/metrics", srv.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let line = format!(
            r#"rolebridge_rate_limited_total{{bucket="tenant",tenant="{}"}}"#,
            srv.tenant
        );
        assert!(metrics.contains(&line), "{metrics}");
    }
}

crate::each_backend! {
    async fn one_tenants_flood_leaves_another_untouched(backend) {
        let srv = TestServer::start_with_settings(backend, |_| small(5, 1000)).await;
        let (other, other_token) = srv.other_tenant().await;
        let other_base = format!("http://{}/scim/v2/{other}", srv.addr);
        // The flood: concurrent requests, far over the tenant's burst.
        let flood = futures_join(&srv, MAX_REQUESTS).await;
        assert!(flood.contains(&429), "{flood:?}");
        assert!(flood.iter().all(|s| *s == 200 || *s == 429), "{flood:?}");
        // The other tenant still has its whole burst.
        for _ in 0..5 {
            let r = srv
                .send_with(Method::GET, &format!("{other_base}/Users"), None, &[], Some(&other_token))
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
        }
    }
}

/// `n` concurrent GET /Users of the server's tenant; their statuses.
async fn futures_join(srv: &TestServer, n: usize) -> Vec<u16> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (client, url, token) = (
            srv.client.clone(),
            format!("{}/Users", srv.base),
            srv.token.clone(),
        );
        tasks.spawn(async move {
            client
                .get(url)
                .bearer_auth(token)
                .timeout(MAX_TIME)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        });
    }
    tasks.join_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_has_its_own_quota() {
    let srv = TestServer::start_with_settings(Backend::Sqlite, |_| small(1000, 2)).await;
    let (r, passed) = until_429(&srv, &srv.base, &srv.token).await;
    assert_429(&r);
    assert!((2..=3).contains(&passed), "{passed} passed");
    // A second token of the same tenant is not held to the first's bucket.
    let second = srv.scim_token().await;
    let r = srv
        .send_with(
            Method::GET,
            &format!("{}/Users", srv.base),
            None,
            &[],
            Some(&second),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissions_api_is_not_held_to_the_provisioning_quota() {
    let srv = TestServer::start_with_settings(Backend::Sqlite, |_| small(1, 1)).await;
    let (r, _) = until_429(&srv, &srv.base, &srv.token).await;
    assert_429(&r);
    let token = srv.permissions_token().await;
    let url = format!(
        "http://{}/api/v1/tenants/{}/users/nobody/permissions",
        srv.addr, srv.tenant
    );
    for _ in 0..10 {
        let r = srv
            .send_with(Method::GET, &url, None, &[], Some(&token))
            .await;
        // No mapping file for this tenant: the API answers, never 429.
        assert!(
            r.status != 429 && !r.status.is_server_error(),
            "{:?} {}",
            r.status,
            r.body
        );
        assert!(r.body["error"]["code"].is_string(), "{}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_overrides_one_tenants_quota() {
    let srv = TestServer::start_with_settings(Backend::Sqlite, |tenant| {
        let path = crate::support::test_dir().join(format!("rb-rl-{tenant}.toml"));
        std::fs::write(
            &path,
            format!(
                "[rate_limit]\nper_tenant_per_second = 1000\nper_tenant_burst = 1000\n\
                 [rate_limit.tenants.{tenant}]\nper_tenant_per_second = 1\nper_tenant_burst = 2\n"
            ),
        )
        .unwrap();
        let config = Config::load(Some(&path), Overrides::default()).unwrap();
        assert_eq!(
            config.http.rate_limit.for_tenant(tenant).tenant,
            Quota::new(1, 2).unwrap()
        );
        config.http
    })
    .await;
    let (r, passed) = until_429(&srv, &srv.base, &srv.token).await;
    assert_429(&r);
    assert!((2..=3).contains(&passed), "{passed} passed");
    // Another tenant is on the generous default.
    let (other, token) = srv.other_tenant().await;
    let base = format!("http://{}/scim/v2/{other}", srv.addr);
    for _ in 0..10 {
        let r = srv
            .send_with(
                Method::GET,
                &format!("{base}/Users"),
                None,
                &[],
                Some(&token),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

/// With one request allowed in flight, a request whose body is still
/// arriving holds the slot: the next is shed at once with 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_in_flight_cap_are_shed_with_503() {
    let srv = TestServer::start_with_settings(Backend::Sqlite, |_| HttpSettings {
        max_in_flight: 1,
        ..HttpSettings::default()
    })
    .await;
    let mut held = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let head = format!(
        "POST /scim/v2/{}/Users HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/scim+json\r\nContent-Length: 100\r\n\r\n{{",
        srv.tenant, srv.addr, srv.token
    );
    held.write_all(head.as_bytes()).await.unwrap();
    let start = Instant::now();
    let shed = loop {
        if start.elapsed() > MAX_TIME {
            // What the held request got, if the server answered it before
            // its body was complete (it should not have).
            let mut answer = vec![0u8; 4096];
            let got =
                match tokio::time::timeout(Duration::from_secs(1), held.read(&mut answer)).await {
                    Ok(Ok(n)) => String::from_utf8_lossy(&answer[..n]).into_owned(),
                    Ok(Err(e)) => format!("read error: {e}"),
                    Err(_) => "nothing (still waiting for its body)".to_string(),
                };
            panic!("no 503 while a request is held; the held request got: {got}");
        }
        let r = srv.get("/Users").await;
        if r.status == 503 {
            break r;
        }
        // The held request may not have reached its handler yet.
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    shed.assert_error(503, None);
    assert_eq!(shed.header("retry-after"), Some("1"));
    // Probes and /metrics are outside the cap.
    let health = srv
        .client
        .get(format!("http://{}/healthz", srv.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // Releasing the slot lets requests through again.
    drop(held);
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < MAX_TIME, "slot never released");
        if srv.get("/Users").await.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
