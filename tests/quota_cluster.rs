//! Cluster-wide provisioning quotas against the real Redis on 127.0.0.1:6379:
//! the GCRA script alone (burst, refill, token first, both or neither, key
//! expiry), one quota across three `serve` processes, each replica's share
//! while Redis is refused or hung, the replica count last seen in Redis used
//! once it is gone, and the decisions in `/metrics`. Every test has its own
//! key prefix, so they run in parallel.

use std::num::NonZeroU32;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rolebridge::config::{HttpSettings, Quota, TenantQuotas};
use rolebridge::domain::TenantId;
use rolebridge::http::limits::{Bucket, RateLimits, Source};
use rolebridge::quota::{ClusterQuota, Decision, CALL_TIMEOUT};

use crate::cache::REDIS;
use crate::durability::{cli, cli_token, spawn_server};
use crate::rate_limits::retry_after_of_429;
use crate::support::{fresh_database, unique, Backend, Resp, TestServer};

/// Every load loop stops after this many requests or this long.
const MAX_REQUESTS: usize = 120;
const MAX_TIME: Duration = Duration::from_secs(30);

/// The override every test tenant is on: 30 at once, refilled at 1/s.
const BURST: u32 = 30;

pub(crate) fn key_prefix() -> String {
    format!("{}:", unique("rbquota"))
}

async fn redis_conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("Redis on 127.0.0.1:6379 (.ci/run starts it)")
}

/// Waits (bounded) until `q` has counted the live replicas once: its
/// connection is up and its breaker closed, as in a replica that has been
/// running for a second.
async fn wait_live(q: &ClusterQuota) {
    let start = Instant::now();
    while q.live_replicas().is_none() || !q.is_available() {
        assert!(
            start.elapsed() < MAX_TIME,
            "no heartbeat within {MAX_TIME:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[track_caller]
fn refused(d: Decision) -> (Bucket, Duration) {
    match d {
        Decision::Refused {
            bucket,
            retry_after,
        } => (bucket, retry_after),
        Decision::Admitted => panic!("admitted, expected a refusal"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcra_admits_the_burst_at_once_then_refills_at_the_rate() {
    let q = ClusterQuota::new(REDIS, &key_prefix(), NonZeroU32::MIN);
    wait_live(&q).await;
    let t = TenantId::new();
    // 5 at once, one more every 500 ms; the token is not the limit here.
    let quotas = TenantQuotas {
        tenant: Quota::new(2, 5).unwrap(),
        token: Quota::new(1000, 1000).unwrap(),
    };
    for i in 0..5 {
        let d = q.decide(t, "tok", &quotas).await.unwrap();
        assert_eq!(d, Decision::Admitted, "request {i} of the burst");
    }
    let (bucket, wait) = refused(q.decide(t, "tok", &quotas).await.unwrap());
    assert_eq!(bucket, Bucket::Tenant);
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(500),
        "{wait:?}"
    );
    // The bucket expires when it would be full again: 5 intervals of 500 ms.
    let mut conn = redis_conn().await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(q.tenant_key(t))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((2000..=2500).contains(&pttl), "PTTL {pttl}");
    // Refill: after the wait the script named, one request and no more.
    // (Redis's clock cannot be paused, so this waits for real.)
    tokio::time::sleep(wait).await;
    let d = q.decide(t, "tok", &quotas).await.unwrap();
    assert_eq!(d, Decision::Admitted, "after {wait:?}");
    let (bucket, wait) = refused(q.decide(t, "tok", &quotas).await.unwrap());
    assert_eq!(bucket, Bucket::Tenant);
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(500),
        "{wait:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcra_judges_the_token_first_and_spends_both_or_neither() {
    let q = ClusterQuota::new(REDIS, &key_prefix(), NonZeroU32::MIN);
    wait_live(&q).await;
    let t = TenantId::new();
    let quotas = TenantQuotas {
        tenant: Quota::new(1, 3).unwrap(),
        token: Quota::new(1, 1).unwrap(),
    };
    assert_eq!(q.decide(t, "a", &quotas).await.unwrap(), Decision::Admitted);
    let (bucket, wait) = refused(q.decide(t, "a", &quotas).await.unwrap());
    assert_eq!(bucket, Bucket::Token);
    assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
    // The token's refusal took nothing from the tenant: two more fit.
    assert_eq!(q.decide(t, "b", &quotas).await.unwrap(), Decision::Admitted);
    assert_eq!(q.decide(t, "c", &quotas).await.unwrap(), Decision::Admitted);
    let (bucket, _) = refused(q.decide(t, "d", &quotas).await.unwrap());
    assert_eq!(bucket, Bucket::Tenant);
    let mut conn = redis_conn().await;
    // The tenant's refusal took nothing from d's bucket: it was never written.
    let exists: i64 = redis::cmd("EXISTS")
        .arg(q.token_key(t, "d"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0, "a refused request spent its token's bucket");
    for (key, max) in [(q.tenant_key(t), 3000), (q.token_key(t, "a"), 1000)] {
        let pttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(pttl > 0 && pttl <= max, "{key}: PTTL {pttl}");
    }
    // Another tenant's bucket is its own.
    let other = TenantId::new();
    assert_eq!(
        q.decide(other, "d", &quotas).await.unwrap(),
        Decision::Admitted
    );
}

/// Kills the `serve` processes it holds, also when a test fails.
struct Replicas(Vec<(Child, String)>);

impl Drop for Replicas {
    fn drop(&mut self) {
        for (child, _) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) async fn metrics_text(client: &reqwest::Client, base: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one series in a `/metrics` text; 0 when absent.
pub(crate) fn series(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

pub(crate) fn decisions(tenant: &str, decision: &str, bucket: &str, source: &str) -> String {
    format!(
        r#"rolebridge_quota_decisions_total{{bucket="{bucket}",decision="{decision}",source="{source}",tenant="{tenant}"}}"#
    )
}

async fn get_users(client: &reqwest::Client, base: &str, token: &str) -> Resp {
    Resp::read(
        client
            .get(format!("{base}/Users"))
            .bearer_auth(token)
            .timeout(MAX_TIME)
            .send()
            .await
            .expect("request"),
    )
    .await
}

/// The quota holds across three real `serve` processes on one SQLite file
/// (WAL: the three read it at once; a PostgreSQL database would do the same,
/// but another test process's start-up sweep may drop it) and one Redis: the tenant's burst is admitted once by the
/// cluster, not once per process (the per-process buckets admitted 3×).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_quota_across_three_serve_processes() {
    let db = fresh_database(Backend::Sqlite).await;
    let tenant = unique("q3x");
    assert_eq!(cli(&db, &["tenant", "create", &tenant]).0, 0);
    let token = cli_token(&db, &tenant, "scim");
    let prefix = key_prefix();
    let config = crate::support::test_dir().join(format!("{tenant}.toml"));
    std::fs::write(
        &config,
        format!(
            "[rate_limit]\nkey_prefix = \"{prefix}\"\n\
             [rate_limit.tenants.{tenant}]\nper_tenant_per_second = 1\nper_tenant_burst = {BURST}\n"
        ),
    )
    .unwrap();
    let mappings = concat!(env!("CARGO_MANIFEST_DIR"), "/mappings");
    let args = [
        "--mappings",
        mappings,
        "--redis-url",
        REDIS,
        "--config",
        config.to_str().unwrap(),
    ];
    let replicas = Replicas((0..3).map(|_| spawn_server(&db, None, &args)).collect());
    // Every replica has beaten once: all three are in the set.
    let mut conn = redis_conn().await;
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < MAX_TIME, "three heartbeats never seen");
        let n: u32 = redis::cmd("ZCARD")
            .arg(format!("{prefix}replicas"))
            .query_async(&mut conn)
            .await
            .unwrap();
        if n == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and each has counted all three since (its gauge follows its own
    // heartbeat).
    let client = reqwest::Client::new();
    for (_, addr) in &replicas.0 {
        while series(
            &metrics_text(&client, addr).await,
            "rolebridge_quota_fallback_replicas",
        ) != 3.0
        {
            assert!(start.elapsed() < MAX_TIME, "{addr} never counted three");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (mut admitted, mut refused) = (0u32, 0u32);
    let start = Instant::now();
    for i in 0..MAX_REQUESTS {
        assert!(start.elapsed() < MAX_TIME, "load over {MAX_TIME:?}");
        let addr = &replicas.0[i % 3].1;
        let r = get_users(&client, &format!("{addr}/scim/v2/{tenant}"), &token).await;
        if r.status == 429 {
            retry_after_of_429(&r);
            refused += 1;
        } else {
            assert_eq!(r.status, 200, "{}", r.body);
            admitted += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // The burst, plus what 1/s refilled while the load ran.
    let most = BURST + elapsed.ceil() as u32 + 1;
    assert!(
        (BURST..=most).contains(&admitted),
        "{admitted} admitted by the cluster in {elapsed:.1} s; quota {BURST} + 1/s"
    );
    assert!(refused > 0);
    // Each replica says Redis decided, and every replica counts three.
    // A refusal is Redis's, or the first line's once a replica alone was
    // asked for more than the whole burst (it still spends its own buckets).
    let (mut by_redis, mut refused_by_redis, mut refused_locally) = (0.0, 0.0, 0.0);
    for (_, addr) in &replicas.0 {
        let text = metrics_text(&client, addr).await;
        by_redis += series(&text, &decisions(&tenant, "admitted", "both", "redis"));
        refused_by_redis += series(&text, &decisions(&tenant, "refused", "tenant", "redis"));
        refused_locally += series(&text, &decisions(&tenant, "refused", "tenant", "local"));
        assert_eq!(
            series(&text, "rolebridge_quota_fallback_replicas"),
            3.0,
            "{addr}"
        );
        let limited =
            format!(r#"rolebridge_rate_limited_total{{bucket="tenant",tenant="{tenant}"}}"#);
        assert!(series(&text, &limited) > 0.0, "{addr}: {text}");
    }
    assert_eq!(by_redis, f64::from(admitted));
    assert!(refused_by_redis > 0.0);
    assert_eq!(refused_by_redis + refused_locally, f64::from(refused));
    drop(replicas);
    crate::support::drop_database(Backend::Sqlite, &db).await;
}

/// A Redis that refuses connections (`Closed`) or accepts them and never
/// answers (`Hung`), on a loopback port of its own.
enum DeadRedis {
    Closed,
    Hung,
}

impl DeadRedis {
    /// Its URL, and what keeps a hung one's port and sockets open.
    async fn start(&self) -> (String, Option<tokio::task::JoinHandle<()>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}/", listener.local_addr().unwrap());
        match self {
            DeadRedis::Closed => (url, None),
            DeadRedis::Hung => {
                let task = tokio::spawn(async move {
                    let mut held = Vec::new();
                    while let Ok((socket, _)) = listener.accept().await {
                        held.push(socket);
                    }
                });
                (url, Some(task))
            }
        }
    }
}

/// Settings with the test tenant on `BURST` at 1/s, quotas in Redis at
/// `redis_url` under `prefix`, and `replicas` as the floor of N.
fn cluster_settings(tenant: &str, redis_url: &str, prefix: &str, replicas: u32) -> HttpSettings {
    let mut s = HttpSettings::default();
    s.rate_limit.redis_url = Some(redis_url.to_string());
    s.rate_limit.key_prefix = prefix.to_string();
    s.rate_limit.replicas = NonZeroU32::new(replicas).unwrap();
    s.rate_limit.tenants.insert(
        tenant.to_string(),
        TenantQuotas {
            tenant: Quota::new(1, BURST).unwrap(),
            token: s.rate_limit.default.token,
        },
    );
    s
}

/// Sends GET /Users until `n` were sent; returns (admitted, refused, the
/// slowest request, how many took at least [`CALL_TIMEOUT`], elapsed).
async fn load(srv: &TestServer, n: usize) -> (u32, u32, Duration, usize, Duration) {
    let (mut admitted, mut refused, mut slowest, mut slow) = (0, 0, Duration::ZERO, 0);
    let start = Instant::now();
    for _ in 0..n {
        assert!(start.elapsed() < MAX_TIME, "load over {MAX_TIME:?}");
        let sent = Instant::now();
        let r = get_users(&srv.client, &srv.base, &srv.token).await;
        let took = sent.elapsed();
        slowest = slowest.max(took);
        slow += usize::from(took >= CALL_TIMEOUT);
        if r.status == 429 {
            retry_after_of_429(&r);
            refused += 1;
        } else {
            assert_eq!(r.status, 200, "{}", r.body);
            admitted += 1;
        }
    }
    (admitted, refused, slowest, slow, start.elapsed())
}

/// While Redis is down, a replica admits its share of the quota (1/N with
/// N = `[rate_limit] replicas` before any count was seen), not the whole;
/// after the first failure the breaker skips Redis, so requests do not
/// each wait out the timeout. A refusal comes from the share or, once the
/// whole burst was asked for, from the first line too (both spend).
async fn redis_down_each_replica_admits_its_share(dead: DeadRedis) {
    let (url, _keep) = dead.start().await;
    let prefix = key_prefix();
    let srv = TestServer::start_with_settings(Backend::Sqlite, |tenant| {
        cluster_settings(tenant, &url, &prefix, 3)
    })
    .await;
    let (admitted, refused, slowest, slow, elapsed) = load(&srv, 40).await;
    let share = BURST / 3;
    // The share refills at 1/3 per second.
    let most = share + (elapsed.as_secs_f64() / 3.0).ceil() as u32 + 1;
    assert!(
        (share..=most).contains(&admitted),
        "{admitted} admitted in {elapsed:?}; share {share} of {BURST}"
    );
    assert_eq!(admitted + refused, 40);
    assert!(
        slowest < CALL_TIMEOUT + Duration::from_millis(900),
        "slowest request {slowest:?}"
    );
    assert!(slow <= 2, "{slow} requests waited out the Redis timeout");
    let text = metrics_text(&srv.client, &format!("http://{}", srv.addr)).await;
    let t = &srv.tenant;
    assert_eq!(
        series(&text, &decisions(t, "admitted", "both", "fallback")),
        f64::from(admitted),
        "{text}"
    );
    assert_eq!(
        series(&text, &decisions(t, "refused", "tenant", "fallback"))
            + series(&text, &decisions(t, "refused", "tenant", "local")),
        f64::from(refused),
        "{text}"
    );
    assert_eq!(
        series(&text, &decisions(t, "admitted", "both", "redis")),
        0.0
    );
    assert_eq!(series(&text, "rolebridge_quota_fallback_replicas"), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refused_each_replica_admits_its_share() {
    redis_down_each_replica_admits_its_share(DeadRedis::Closed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hung_each_replica_admits_its_share_without_waiting_each_time() {
    redis_down_each_replica_admits_its_share(DeadRedis::Hung).await;
}

/// A loopback TCP proxy to the real Redis that can be cut: the listener
/// closed and every connection through it dropped.
struct Proxy {
    url: String,
    accept: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}/", listener.local_addr().unwrap());
        let conns = Arc::new(Mutex::new(Vec::new()));
        let held = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:6379").await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                held.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy { url, accept, conns }
    }

    fn cut(&self) {
        self.accept.abort();
        for c in self.conns.lock().unwrap().iter() {
            c.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// How N is known: with `[rate_limit] replicas = 1`, a replica that saw
/// three live replicas in Redis still divides by three once Redis is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_count_last_seen_in_redis_divides_the_quota_when_it_is_gone() {
    let proxy = Proxy::start().await;
    let prefix = key_prefix();
    let srv = TestServer::start_with_settings(Backend::Sqlite, |tenant| {
        cluster_settings(tenant, &proxy.url, &prefix, 1)
    })
    .await;
    // Two other replicas beating in the same set (scored in Redis time).
    let mut conn = redis_conn().await;
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let now_ms = secs * 1000 + micros / 1000;
    let _: () = redis::cmd("ZADD")
        .arg(format!("{prefix}replicas"))
        .arg(now_ms)
        .arg("other-1")
        .arg(now_ms)
        .arg("other-2")
        .query_async(&mut conn)
        .await
        .unwrap();
    // Probe with another tenant until this replica's next heartbeat counted
    // three, so the test tenant's quota is untouched.
    let (other, other_token) = srv.other_tenant().await;
    let other_base = format!("http://{}/scim/v2/{other}", srv.addr);
    let metrics_base = format!("http://{}", srv.addr);
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < MAX_TIME, "three replicas never counted");
        let r = get_users(&srv.client, &other_base, &other_token).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let text = metrics_text(&srv.client, &metrics_base).await;
        if series(&text, "rolebridge_quota_fallback_replicas") == 3.0 {
            assert!(series(&text, &decisions(&other, "admitted", "both", "redis")) > 0.0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.cut();
    // Until the replica notices, a probe may still be decided by Redis.
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < MAX_TIME, "Redis never seen gone");
        let r = get_users(&srv.client, &other_base, &other_token).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let text = metrics_text(&srv.client, &metrics_base).await;
        if series(&text, &decisions(&other, "admitted", "both", "fallback")) > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (admitted, _, _, _, elapsed) = load(&srv, 40).await;
    let share = BURST / 3;
    let most = share + (elapsed.as_secs_f64() / 3.0).ceil() as u32 + 1;
    assert!(
        (share..=most).contains(&admitted),
        "{admitted} admitted in {elapsed:?}; expected the share {share} of {BURST} (N = 3 last seen), \
         not the floor's {BURST}"
    );
    let text = metrics_text(&srv.client, &metrics_base).await;
    assert_eq!(series(&text, "rolebridge_quota_fallback_replicas"), 3.0);
}

/// The cost of a decision: 1,000 admits through `RateLimits` with the
/// governor buckets alone, then with Redis behind them (run with
/// `--nocapture` to see the figures; only the outcome is asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_admits_with_and_without_redis() {
    const N: usize = 1000;
    let roomy = Quota::new(100_000, 100_000).unwrap();
    let mut settings = HttpSettings::default().rate_limit;
    settings.default = TenantQuotas {
        tenant: roomy,
        token: roomy,
    };
    settings.key_prefix = key_prefix();
    let local = RateLimits::new(&settings);
    settings.redis_url = Some(REDIS.to_string());
    let cluster = RateLimits::new(&settings);
    // Connected and counted once, as a running replica is.
    let start = Instant::now();
    while cluster.admit(TenantId::new(), "warm", "warm").await != Ok(Source::Redis) {
        assert!(start.elapsed() < MAX_TIME, "Redis never decided");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tenant = TenantId::new();
    let mut figures = Vec::new();
    for (name, limits, source) in [
        ("governor alone", &local, Source::Local),
        ("governor + Redis", &cluster, Source::Redis),
    ] {
        let start = Instant::now();
        for i in 0..N {
            assert!(start.elapsed() < MAX_TIME, "{name}: over {MAX_TIME:?}");
            let d = limits.admit(tenant, "bench", "tok").await;
            assert_eq!(d, Ok(source), "{name}: admit {i}");
        }
        figures.push(format!(
            "{name}: {N} admits in {:?} ({:.1} µs each)",
            start.elapsed(),
            start.elapsed().as_secs_f64() * 1e6 / N as f64
        ));
    }
    eprintln!(
        "quota decisions on {} cores: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        figures.join("; ")
    );
}

/// The quota keys live under the prefix of every key the service writes.
#[test]
fn quota_keys_default_under_the_service_prefix() {
    assert_eq!(
        rolebridge::config::DEFAULT_QUOTA_PREFIX,
        format!("{}quota:", rolebridge::cli::REDIS_PREFIX)
    );
}
