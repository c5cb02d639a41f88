//! `rolebridge bench checks`: permission checks against tenants of 1k, 10k
//! and 100k users (each in several leaf groups; 50 leaf groups nested under
//! 10 departments under 2 divisions; rules at every level, haptik catalog),
//! each figure next to its goal and, where there is one, a reference
//! measured in the same run:
//!
//! 1. a check of a user right after a SCIM write that touched them, and the
//!    check alone (goal: flat, under 5 ms at 100k);
//! 2. warm checks over HTTP with N connections, `full` and
//!    `minimize_latency`, against `redis-benchmark -t get` (goal: >= 50%);
//! 3. check p99 while SCIM PATCHes go on at 10/s, against the same paced
//!    check load without writes, in alternating windows (goal: <= 2x);
//! 4. Redis entries written per SCIM write, against the users the write
//!    changed (goal: equal), verified with `INFO commandstats` and the keys;
//! 5. peak RSS (VmHWM) per tenant size.
//!
//! The check load uses a minimal keep-alive HTTP/1.1 client, so the two
//! cores the client shares with the server go to the server rather than to
//! an HTTP client library.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scim::schema::ResourceKind;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::bench::pct;
use crate::app::{now, App, Consistency, Mappings, UserRef};
use crate::config::Config;
use crate::domain::{ResourceId, Scope, Tenant, TenantName};
use crate::store::{Store, StoredResource};

#[derive(Debug, Args)]
pub struct ChecksArgs {
    /// Tenant sizes in users, run one after the other.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1_000usize, 10_000, 100_000])]
    pub users: Vec<usize>,
    /// Leaf groups each user is a direct member of.
    #[arg(long, default_value_t = 3)]
    pub groups_per_user: usize,
    /// Concurrent HTTP connections of the check load.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Checks per warm throughput measurement (each consistency mode).
    #[arg(long, default_value_t = 40_000)]
    pub requests: usize,
    /// GETs of the redis-benchmark reference.
    #[arg(long, default_value_t = 200_000)]
    pub redis_requests: usize,
    /// Write-then-check rounds of the cold-check measurement.
    #[arg(long, default_value_t = 50)]
    pub cold_rounds: usize,
    /// Seconds of step 3 without writes, and as many with writes, in
    /// alternating 2 s windows.
    #[arg(long, default_value_t = 20)]
    pub p99_secs: u64,
    /// SCIM writes per second during the windows with writes.
    #[arg(long, default_value_t = 10)]
    pub write_rate: u32,
    /// Check load of step 3, as a fraction of the `full` throughput
    /// measured in step 2.
    #[arg(long, default_value_t = 0.5)]
    pub p99_load: f64,
}

/// 2 divisions > 10 departments > 50 leaf groups.
const DIVISIONS: usize = 2;
const DEPARTMENTS: usize = 10;
const LEAVES: usize = 50;
const DIVISION_ROLES: [&str; 2] = ["bot_builder_view", "iva_analytics_view"];
const DEPARTMENT_ROLES: [&str; 5] = [
    "chat_agent_tl",
    "assign_chats_same_team",
    "chat_agent_view_personal_details",
    "iva_analytics_edit",
    "bot_builder_publish",
];
const LEAF_ROLES: [&str; 7] = [
    "chat_agent_daily_password_update",
    "chat_agent_inactive_auto_logout",
    "chat_agent_metrics_email",
    "access_to_business_canned_responses",
    "assign_chats_different_team",
    "iva_analytics_email_report",
    "bot_builder_edit",
];
/// The groups SCIM writes toggle memberships of, each nested under a
/// department, each granting a role (and permission) no other rule grants:
/// every write changes exactly the user it names.
const ONCALL: [(&str, &str); 4] = [
    ("account_admin", "manage_account_users_and_roles"),
    (
        "content_management",
        "manage_forms_canned_responses_content_stores",
    ),
    ("proactive_messaging", "switch_to_interakt_account"),
    (
        "bot_builder_business_manager",
        "manage_business_configurations",
    ),
];
/// Granted to every user (a regex rule over every leaf group): what the
/// warm checks ask for.
const CHECKED: &str = "take_and_respond_to_chats";

/// Windows of step 3: even ones without writes, odd ones with.
const P99_WINDOW_SECS: f64 = 2.0;

fn in_write_window(offset: Duration, window: Duration) -> bool {
    (offset.as_nanos() / window.as_nanos().max(1)) % 2 == 1
}

/// Goals.
const COLD_GOAL_MS: f64 = 5.0;
const THROUGHPUT_GOAL: f64 = 0.5;
const P99_GOAL: f64 = 2.0;

pub async fn run(config: &Config, args: ChecksArgs) -> anyhow::Result<()> {
    ensure!(
        args.groups_per_user >= 1 && args.groups_per_user <= LEAVES,
        "--groups-per-user must be 1 to {LEAVES}"
    );
    ensure!(
        args.connections >= 1 && args.requests >= args.connections,
        "--requests must be at least --connections"
    );
    ensure!(
        args.p99_load > 0.0 && args.p99_load <= 1.0,
        "--p99-load must be in (0, 1]"
    );
    let redis_url = config
        .redis_url
        .clone()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".to_string());
    let store = Store::connect(&config.database_url).await?;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let prefix = format!("rolebridge-bench-{run_id}:");
    let redis_client = redis::Client::open(redis_url.as_str())?;
    let mut redis_conn = redis_client
        .get_multiplexed_async_connection()
        .await
        .context("bench checks needs Redis (--redis-url)")?;
    println!(
        "rolebridge bench checks: database {}, Redis {} (prefix {prefix}), {} cores, load average {}",
        crate::store::redact_url(&config.database_url),
        crate::store::redact_url(&redis_url),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        load_average()
    );
    println!(
        "directory: each user in {} of {LEAVES} leaf groups; leaf groups nested under {DEPARTMENTS} departments under {DIVISIONS} divisions; \
         {} on-call groups under departments; one rule per group at every level plus one regex rule over every leaf ({} rules), catalog haptik",
        args.groups_per_user,
        ONCALL.len(),
        DIVISIONS + DEPARTMENTS + LEAVES + ONCALL.len() + 1
    );
    println!(
        "check load: {} keep-alive HTTP/1.1 connections, POST /api/v1/tenants/T/check; writes: SCIM PATCH /Groups/{{id}} toggling one user's membership of an on-call group",
        args.connections
    );
    let mut summaries = Vec::new();
    for &n in &args.users {
        let s = one_size(
            config,
            &args,
            &store,
            &redis_url,
            &prefix,
            &mut redis_conn,
            n,
        )
        .await?;
        summaries.push(s);
    }
    println!();
    println!(
        "summary (goals: cold < {COLD_GOAL_MS} ms and flat; warm >= {:.0}% of redis-benchmark; p99 with writes <= {P99_GOAL}x idle; Redis writes = changed users)",
        THROUGHPUT_GOAL * 100.0
    );
    println!(
        "{:>7} | {:>8} | {:>21} | {:>17} | {:>22} | {:>22} | {:>13} | {:>15} | {:>8}",
        "users",
        "seed s",
        "write+check p50/p99",
        "check p50/p99",
        "full req/s (x redis)",
        "min_lat req/s (x redis)",
        "p99 idle/w",
        "redis w/changed",
        "VmHWM"
    );
    for s in &summaries {
        println!("{s}");
    }
    if let (Some(small), Some(large)) = (summaries.first(), summaries.last()) {
        if large.users > small.users {
            println!(
                "flatness, {} users against {}: write+check p50 {:.2}x, check p50 {:.2}x, check p99 {:.2}x",
                large.users,
                small.users,
                large.cold_total.0 / small.cold_total.0,
                large.cold_check.0 / small.cold_check.0,
                large.cold_check.1 / small.cold_check.1
            );
        }
    }
    // The run's Redis entries: delete them (Redis is shared).
    let mut cursor = 0u64;
    for _ in 0..100_000 {
        let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut redis_conn)
            .await
        else {
            break;
        };
        if !keys.is_empty() {
            let _: redis::RedisResult<i64> = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut redis_conn)
                .await;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    Ok(())
}

/// One line of the final table.
struct SizeSummary {
    users: usize,
    seed_secs: f64,
    cold_total: (f64, f64),
    cold_check: (f64, f64),
    full: (f64, f64),
    minimize: (f64, f64),
    p99: (f64, f64),
    redis: (u64, u64),
    hwm_mib: f64,
}

impl std::fmt::Display for SizeSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>7} | {:>8.1} | {:>21} | {:>17} | {:>22} | {:>22} | {:>13} | {:>15} | {:>4.0} MiB",
            self.users,
            self.seed_secs,
            format!("{:.2}/{:.2} ms", self.cold_total.0, self.cold_total.1),
            format!("{:.2}/{:.2} ms", self.cold_check.0, self.cold_check.1),
            format!("{:.0} ({:.2})", self.full.0, self.full.1),
            format!("{:.0} ({:.2})", self.minimize.0, self.minimize.1),
            format!("{:.2}/{:.2}", self.p99.0, self.p99.1),
            format!("{}/{}", self.redis.0, self.redis.1),
            self.hwm_mib
        )
    }
}

/// The ids of the tenant's groups by level.
pub(super) struct Groups {
    divisions: Vec<ResourceId>,
    departments: Vec<ResourceId>,
    leaves: Vec<ResourceId>,
    oncall: Vec<ResourceId>,
}

#[allow(clippy::too_many_arguments)]
async fn one_size(
    config: &Config,
    args: &ChecksArgs,
    store: &Store,
    redis_url: &str,
    prefix: &str,
    redis_conn: &mut redis::aio::MultiplexedConnection,
    n: usize,
) -> anyhow::Result<SizeSummary> {
    // Peak RSS of this size only: reset the high-water mark (Linux >= 4.0).
    let hwm_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let rss_start = proc_status_kib("VmRSS").unwrap_or(0);
    let tenant_name = TenantName::parse(&format!(
        "benchk-{}k-{}",
        n / 1000,
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    ))?;
    let tenant = store.create_tenant(&tenant_name, &now()).await?;
    println!();
    println!(
        "== {n} users (tenant {tenant_name}; load average {}) ==",
        load_average()
    );
    let dir = write_mappings(config, &tenant_name)?;
    let mappings =
        Mappings::load(&dir).map_err(|e| anyhow::anyhow!("bench mappings invalid: {e:?}"))?;
    let app = App::with_mappings(store.clone(), mappings)
        .with_redis(redis_url, prefix)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Connect to Redis before the first write, so its entries are not
    // dropped for want of a connection.
    app.ready()
        .await
        .map_err(|e| anyhow::anyhow!("not ready: {e}"))?;

    // Seeding: one transaction, one whole-tenant derivation.
    let seeded = Instant::now();
    let (tx, users, groups, edges) = seed(store, &tenant, n, args.groups_per_user).await?;
    let inserted = seeded.elapsed();
    let hwm_inserts = proc_status_kib("VmHWM").unwrap_or(0);
    let derive_started = Instant::now();
    let committed = app.commit(tx).await?;
    let derived = derive_started.elapsed();
    let seed_secs = seeded.elapsed().as_secs_f64();
    let hwm_commit = proc_status_kib("VmHWM").unwrap_or(0);
    let settled = Instant::now();
    let seeded_redis = Counters::read(&app, redis_conn).await;
    println!(
        "seeding: {n} users, {} groups, {edges} membership edges in one transaction: inserts {:.1} s, app.commit {:.1} s \
         (whole-tenant derivation: {} recomputed, {} rows written); total {seed_secs:.1} s",
        groups.divisions.len() + groups.departments.len() + groups.leaves.len() + groups.oncall.len(),
        inserted.as_secs_f64(),
        derived.as_secs_f64(),
        committed.recomputed,
        committed.changed,
    );
    println!(
        "   after seeding: Redis entries written {}, dropped {} ({:.1} s after the commit); VmHWM {:.0} MiB after the inserts, {:.0} MiB after app.commit",
        seeded_redis.redis_writes,
        seeded_redis.redis_dropped,
        settled.elapsed().as_secs_f64(),
        hwm_inserts as f64 / 1024.0,
        hwm_commit as f64 / 1024.0
    );

    // The server.
    let perm_token = app.create_token(&tenant_name, Scope::Permissions).await?;
    let scim_token = app.create_token(&tenant_name, Scope::Scim).await?;
    let mut settings = config.http.clone();
    let unlimited = crate::config::Quota::new(u32::MAX / 2, u32::MAX / 2).context("bench quota")?;
    settings.rate_limit.tenants.insert(
        tenant_name.to_string(),
        crate::config::TenantQuotas {
            tenant: unlimited,
            token: unlimited,
        },
    );
    settings.max_in_flight = settings.max_in_flight.max(args.connections * 2);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = crate::http::router_with(app.clone(), settings);
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let user_ids: Arc<Vec<String>> = Arc::new(users.iter().map(|u| u.to_string()).collect());
    let checks = CheckRequests {
        head: format!(
            "POST /api/v1/tenants/{tenant_name}/check HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n",
            perm_token.token.expose()
        ),
    };
    let mut writer = Writer {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?,
        base: format!("http://{addr}/scim/v2/{tenant_name}/Groups"),
        auth: format!("Bearer {}", scim_token.token.expose()),
        users: user_ids.clone(),
        oncall: groups.oncall.iter().map(|g| g.to_string()).collect(),
        member: HashSet::new(),
        rng: StdRng::seed_from_u64(n as u64),
    };

    // The first write after seeding checkpoints the seeding's WAL on
    // SQLite: timed and shown, then four more writes before measuring.
    let first = writer.write().await?;
    for _ in 0..4 {
        writer.write().await?;
    }
    println!(
        "   first SCIM write after seeding: {:.1} ms (four more untimed before step 1)",
        first.took.as_secs_f64() * 1000.0
    );
    // Peak RSS while serving: from here on.
    let hwm_serving_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();

    // 1. Cold check right after a write that touched the user.
    let samples = cold_checks(args, &checks, addr, &mut writer, &user_ids).await?;
    let inproc = in_process_cold(args, &app, &tenant, &groups, &mut writer).await?;
    let cold = print_cold(&samples, &inproc, args.cold_rounds);

    // 2. Warm checks, against redis-benchmark.
    println!(
        "2. warm checks over HTTP, {} connections, {} requests each, users visited in a stride over all {n}:",
        args.connections, args.requests
    );
    let mut warm = HashMap::new();
    for mode in [None, Some("minimize_latency")] {
        let load = Arc::new(Load::Check {
            requests: checks.clone(),
            users: user_ids.clone(),
            consistency: mode,
        });
        // Warm-up: connections, page cache, in-process cache.
        closed_loop(
            addr,
            &load,
            args.connections,
            (args.requests / 4).max(args.connections),
        )
        .await?;
        let before = Sources::of(&app);
        let (secs, mut lat) = closed_loop(addr, &load, args.connections, args.requests).await?;
        let src = Sources::of(&app).minus(&before);
        let rps = args.requests as f64 / secs;
        warm.insert(mode, (rps, pct(&mut lat, 50.0), pct(&mut lat, 99.0), src));
    }
    let healthz = {
        let load = Arc::new(Load::Healthz(format!(
            "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n"
        )));
        closed_loop(addr, &load, args.connections, args.requests / 4).await?;
        let (secs, mut lat) = closed_loop(addr, &load, args.connections, args.requests).await?;
        (
            args.requests as f64 / secs,
            pct(&mut lat, 50.0),
            pct(&mut lat, 99.0),
        )
    };
    let inproc_auth = in_process_rate(
        &app,
        &tenant,
        &user_ids,
        Some(perm_token.token.expose()),
        args.connections,
        args.requests / 2,
    )
    .await?;
    let inproc_check = in_process_rate(
        &app,
        &tenant,
        &user_ids,
        None,
        args.connections,
        args.requests / 2,
    )
    .await?;
    let reference = redis_benchmark(redis_url, args.connections, args.redis_requests).await;
    let mut ratios = HashMap::new();
    for mode in [None, Some("minimize_latency")] {
        let (rps, p50, p99, src) = &warm[&mode];
        let ratio = reference.as_ref().map(|r| rps / r.0).unwrap_or(f64::NAN);
        ratios.insert(mode, (*rps, ratio));
        println!(
            "   consistency {:<16}: {rps:>7.0} req/s, p50 {p50:.2} ms p99 {p99:.2} ms (answered from: store {}, local cache {}, Redis {}, computed {}) \
             = {ratio:.2} x redis-benchmark  [goal >= {THROUGHPUT_GOAL:.2}: {}]",
            mode.unwrap_or("full (default)"),
            src.store,
            src.local,
            src.redis,
            src.computed,
            verdict(ratio >= THROUGHPUT_GOAL)
        );
    }
    match &reference {
        Ok((rps, line)) => println!(
            "   reference redis-benchmark -t get -c {} -n {} -q: {rps:.0} req/s ({line})",
            args.connections, args.redis_requests
        ),
        Err(e) => println!("   reference redis-benchmark not run: {e}"),
    }
    println!(
        "   without HTTP, {} tasks calling the app (consistency full): app.authenticate + app.user_permissions {inproc_auth:.0}/s, \
         app.user_permissions alone {inproc_check:.0}/s",
        args.connections
    );
    println!(
        "   reference GET /healthz through the same client and server (the HTTP floor): {:.0} req/s, p50 {:.2} ms p99 {:.2} ms = {:.2} x redis-benchmark",
        healthz.0,
        healthz.1,
        healthz.2,
        reference.as_ref().map(|r| healthz.0 / r.0).unwrap_or(f64::NAN)
    );

    // 3. p99 while SCIM writes go on, against the same load without:
    // one paced load, alternating windows without and with writes, so
    // whatever else the machine does weighs on both alike.
    let rate = ratios[&None].0 * args.p99_load;
    let secs = args.p99_secs as f64;
    let window = Duration::from_secs_f64(P99_WINDOW_SECS);
    let load = Arc::new(Load::Check {
        requests: checks.clone(),
        users: user_ids.clone(),
        consistency: None,
    });
    let before = Counters::read(&app, redis_conn).await;
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let total = Duration::from_secs_f64(2.0 * secs);
    let write_rate = args.write_rate.max(1);
    let writes_task = tokio::spawn(async move {
        let mut tick =
            tokio::time::interval_at(start, Duration::from_secs_f64(1.0 / f64::from(write_rate)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut done = Vec::new();
        loop {
            let at = tick.tick().await;
            let offset = at - start;
            if offset >= total {
                break;
            }
            if in_write_window(offset, window) {
                done.push(writer.write().await?);
            }
        }
        anyhow::Ok((writer, done))
    });
    let samples = paced_loop(addr, &load, args.connections, rate, start, total).await?;
    let (_writer, written) = writes_task.await??;
    let (mut idle, mut busy): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
    let mut windows: Vec<Vec<Duration>> = Vec::new();
    for (offset, lat) in samples {
        let w = (offset.as_nanos() / window.as_nanos().max(1)) as usize;
        if windows.len() <= w {
            windows.resize(w + 1, Vec::new());
        }
        windows[w].push(lat);
        if in_write_window(offset, window) {
            busy.push(lat);
        } else {
            idle.push(lat);
        }
    }
    // Each window's p99, and their median: one window that something
    // else on the machine stalled moves the median little.
    let mut per_window = |writes: bool| {
        let mut p99s: Vec<f64> = windows
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| (i % 2 == 1) == writes)
            .map(|(_, w)| pct(w, 99.0))
            .collect();
        let text = p99s
            .iter()
            .map(|p| format!("{p:.1}"))
            .collect::<Vec<_>>()
            .join(" ");
        p99s.sort_by(f64::total_cmp);
        (text, p99s.get(p99s.len() / 2).copied().unwrap_or(f64::NAN))
    };
    let (idle_windows, idle_median) = per_window(false);
    let (busy_windows, busy_median) = per_window(true);
    let (idle_p99, busy_p99) = (pct(&mut idle, 99.0), pct(&mut busy, 99.0));
    let after = Counters::read(&app, redis_conn).await;
    let mut write_lat: Vec<Duration> = written.iter().map(|w| w.took).collect();
    let ratio = busy_p99 / idle_p99;
    println!(
        "3. check p99 under SCIM writes: {} connections paced at {rate:.0} checks/s ({:.0}% of the full throughput above) for {:.0} s, \
         alternating {P99_WINDOW_SECS:.0} s windows without and with writes; latency from the scheduled send:",
        args.connections,
        args.p99_load * 100.0,
        total.as_secs_f64()
    );
    println!(
        "   without writes: p50 {:.2} ms p99 {idle_p99:.2} ms ({} checks); with {} SCIM PATCHes at {:.1}/s (PATCH p50 {:.2} ms p99 {:.2} ms): \
         p50 {:.2} ms p99 {busy_p99:.2} ms ({} checks) = {ratio:.2} x  [goal <= {P99_GOAL:.1}: {}]",
        pct(&mut idle, 50.0),
        idle.len(),
        written.len(),
        written.len() as f64 / secs,
        pct(&mut write_lat, 50.0),
        pct(&mut write_lat, 99.0),
        pct(&mut busy, 50.0),
        busy.len(),
        verdict(ratio <= P99_GOAL)
    );
    println!(
        "   p99 per {P99_WINDOW_SECS:.0} s window, ms: without writes {idle_windows}; with writes {busy_windows}; \
         median window p99 {idle_median:.2} ms without, {busy_median:.2} ms with = {:.2} x",
        busy_median / idle_median
    );

    // 4. Redis entries per SCIM write.
    let d = after.minus(&before);
    let verified = verify_keys(redis_conn, prefix, &tenant, &written, &user_ids).await;
    println!(
        "4. Redis writes per SCIM write ({} PATCHes of step 3): users recomputed {} ({:.2}/write), changed {} ({:.2}/write); \
         Redis entries written {} ({:.2}/write), dropped {}  [goal = changed users: {}]",
        written.len(),
        d.recomputed,
        d.recomputed as f64 / written.len().max(1) as f64,
        d.changed,
        d.changed as f64 / written.len().max(1) as f64,
        d.redis_writes,
        d.redis_writes as f64 / written.len().max(1) as f64,
        d.redis_dropped,
        verdict(d.redis_writes == d.changed && d.redis_dropped == 0)
    );
    println!(
        "   INFO commandstats over the phase (whole server, other clients included): evalsha calls +{} (failed +{}), eval +{}, script load +{}; \
         keys of the written users holding the revision of their last write: {verified}",
        d.evalsha.0, d.evalsha.1, d.eval, d.script_load
    );
    let redis_summary = (d.redis_writes, d.changed);
    nested_moves(&app, &tenant, &groups, redis_conn).await?;

    // 5. Peak RSS.
    let hwm_serving = proc_status_kib("VmHWM").unwrap_or(0);
    let hwm = hwm_commit.max(hwm_serving);
    println!(
        "5. peak RSS (VmHWM) of this size: {:.0} MiB (seeding: {:.0} MiB; serving steps 1-4: {:.0} MiB){}; VmRSS {:.0} MiB when this size started, {:.0} MiB now; \
         in-process cache entries {}",
        hwm as f64 / 1024.0,
        hwm_commit as f64 / 1024.0,
        hwm_serving as f64 / 1024.0,
        if hwm_reset && hwm_serving_reset {
            ""
        } else {
            " (clear_refs not writable: peaks since the process started)"
        },
        rss_start as f64 / 1024.0,
        proc_status_kib("VmRSS").unwrap_or(0) as f64 / 1024.0,
        app.cache().local.len()
    );
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(SizeSummary {
        users: n,
        seed_secs,
        cold_total: (cold.total.0, cold.total.1),
        cold_check: (cold.check.0, cold.check.1),
        full: ratios[&None],
        minimize: ratios[&Some("minimize_latency")],
        p99: (idle_p99, busy_p99),
        redis: redis_summary,
        hwm_mib: hwm as f64 / 1024.0,
    })
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// The tenant's mapping: one rule per group at every level, one regex rule
/// over every leaf group, on a copy of the shipped haptik catalog.
pub(super) fn write_mappings(config: &Config, tenant: &TenantName) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("rolebridge-bench-{tenant}"));
    std::fs::create_dir_all(dir.join("tenants"))?;
    std::fs::create_dir_all(dir.join("catalogs"))?;
    std::fs::copy(
        config.mappings.join("catalogs/haptik.yaml"),
        dir.join("catalogs/haptik.yaml"),
    )
    .context("the haptik catalog under --mappings")?;
    let mut yaml = String::from("catalog: haptik\nrules:\n");
    let mut rule = |id: String, matcher: String, role: &str, priority: usize| {
        yaml.push_str(&format!(
            "  - id: {id}\n    match: {matcher}\n    assign: {{roles: [{role}]}}\n    priority: {priority}\n"
        ));
    };
    for i in 0..DIVISIONS {
        let role = DIVISION_ROLES[i % DIVISION_ROLES.len()];
        rule(
            format!("division_{i}"),
            format!("{{display_name: \"div-{i}\"}}"),
            role,
            30,
        );
    }
    for i in 0..DEPARTMENTS {
        let role = DEPARTMENT_ROLES[i % DEPARTMENT_ROLES.len()];
        rule(
            format!("department_{i}"),
            format!("{{display_name: \"dept-{i}\"}}"),
            role,
            20,
        );
    }
    for i in 0..LEAVES {
        let role = LEAF_ROLES[i % LEAF_ROLES.len()];
        rule(
            format!("leaf_{i}"),
            format!("{{display_name: \"leaf-{i}\"}}"),
            role,
            10,
        );
    }
    rule(
        "every_leaf".into(),
        "{name_regex: \"^leaf-\"}".into(),
        "chat_agent",
        5,
    );
    for (i, (role, _)) in ONCALL.iter().enumerate() {
        rule(
            format!("oncall_{i}"),
            format!("{{display_name: \"oncall-{i}\"}}"),
            role,
            40,
        );
    }
    std::fs::write(dir.join("tenants").join(format!("{tenant}.yaml")), yaml)?;
    Ok(dir)
}

/// Users, groups, nesting and memberships in one transaction (not yet
/// committed): users through `insert_many`, memberships through
/// `add_members`, one statement per few hundred rows.
pub(super) async fn seed(
    store: &Store,
    tenant: &Tenant,
    n: usize,
    per_user: usize,
) -> anyhow::Result<(crate::store::WriteTx, Vec<ResourceId>, Groups, usize)> {
    let mut tx = store.begin_write().await?;
    let resource = |doc: Value| {
        let ts = crate::domain::Timestamp::now();
        StoredResource {
            id: ResourceId::generate(),
            doc,
            created: ts,
            last_modified: ts,
            version: 1,
        }
    };
    let level = |prefix: &str, count: usize| -> Vec<StoredResource> {
        (0..count)
            .map(|i| {
                resource(json!({
                    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                    "displayName": format!("{prefix}-{i}")
                }))
            })
            .collect()
    };
    let divisions = level("div", DIVISIONS);
    let departments = level("dept", DEPARTMENTS);
    let leaves = level("leaf", LEAVES);
    let oncall = level("oncall", ONCALL.len());
    for set in [&divisions, &departments, &leaves, &oncall] {
        let refused = tx.insert_many(tenant.id, ResourceKind::Group, set).await?;
        ensure!(
            refused.iter().all(Option::is_none),
            "a bench group was refused"
        );
    }
    let mut users = Vec::with_capacity(n);
    for start in (0..n).step_by(10_000) {
        let chunk: Vec<StoredResource> = (start..(start + 10_000).min(n))
            .map(|i| {
                resource(json!({
                    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                    "userName": format!("user{i}@bench.example"),
                    "active": true
                }))
            })
            .collect();
        let refused = tx
            .insert_many(tenant.id, ResourceKind::User, &chunk)
            .await?;
        ensure!(
            refused.iter().all(Option::is_none),
            "a bench user was refused"
        );
        users.extend(chunk.into_iter().map(|r| r.id));
    }
    let mut edges = 0usize;
    let nest = |parent: &ResourceId, child: &ResourceId| (parent.clone(), child.to_string());
    let mut nesting = Vec::new();
    for (d, dept) in departments.iter().enumerate() {
        nesting.push(nest(&divisions[d * DIVISIONS / DEPARTMENTS].id, &dept.id));
    }
    for (l, leaf) in leaves.iter().enumerate() {
        nesting.push(nest(&departments[l * DEPARTMENTS / LEAVES].id, &leaf.id));
    }
    for (i, g) in oncall.iter().enumerate() {
        nesting.push(nest(&departments[(i * 3) % DEPARTMENTS].id, &g.id));
    }
    for (parent, child) in nesting {
        edges += tx
            .add_members(tenant.id, &parent, &[(child, "Group")])
            .await? as usize;
    }
    let mut members: Vec<Vec<(String, &'static str)>> = vec![Vec::new(); LEAVES];
    for (u, id) in users.iter().enumerate() {
        for k in 0..per_user {
            members[(u + 17 * k) % LEAVES].push((id.to_string(), "User"));
        }
    }
    for (leaf, m) in leaves.iter().zip(&members) {
        edges += tx.add_members(tenant.id, &leaf.id, m).await? as usize;
    }
    let ids = |v: Vec<StoredResource>| v.into_iter().map(|r| r.id).collect();
    Ok((
        tx,
        users,
        Groups {
            divisions: ids(divisions),
            departments: ids(departments),
            leaves: ids(leaves),
            oncall: ids(oncall),
        },
        edges,
    ))
}

/// Users visited in this stride (a prime: every user of any size below it
/// squared is visited once before any twice).
const STRIDE: usize = 7919;

/// Check requests of one tenant, as raw HTTP/1.1.
#[derive(Clone)]
struct CheckRequests {
    head: String,
}

impl CheckRequests {
    fn build(&self, out: &mut Vec<u8>, user: &str, permission: &str, consistency: Option<&str>) {
        let body = match consistency {
            None => format!(r#"{{"user":"{user}","permission":"{permission}"}}"#),
            Some(c) => {
                format!(r#"{{"user":"{user}","permission":"{permission}","consistency":"{c}"}}"#)
            }
        };
        out.clear();
        out.extend_from_slice(self.head.as_bytes());
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        out.extend_from_slice(body.as_bytes());
    }
}

/// What a load sends.
enum Load {
    /// A check of every user in turn, for the permission every user holds.
    Check {
        requests: CheckRequests,
        users: Arc<Vec<String>>,
        consistency: Option<&'static str>,
    },
    /// `GET /healthz`: the HTTP floor of this client and server.
    Healthz(String),
}

impl Load {
    fn build(&self, i: usize, out: &mut Vec<u8>) {
        match self {
            Load::Check {
                requests,
                users,
                consistency,
            } => requests.build(
                out,
                &users[(i * STRIDE) % users.len()],
                CHECKED,
                *consistency,
            ),
            Load::Healthz(r) => {
                out.clear();
                out.extend_from_slice(r.as_bytes());
            }
        }
    }

    fn accept(&self, status: u16, body: &str) -> bool {
        status == 200
            && match self {
                Load::Check { .. } => body.contains("\"allowed\":true"),
                Load::Healthz(_) => true,
            }
    }
}

/// A keep-alive HTTP/1.1 connection with one request in flight: the least
/// client work per request (responses carry Content-Length).
struct HttpConn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    async fn open(addr: SocketAddr) -> anyhow::Result<HttpConn> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one request, reads one response: status and body.
    async fn call(&mut self, request: &[u8]) -> anyhow::Result<(u16, String)> {
        self.stream.write_all(request).await?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end])?;
                let status: u16 = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .context("no HTTP status line")?;
                let len = head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    if k.eq_ignore_ascii_case("content-length") {
                        v.trim().parse::<usize>().ok()
                    } else {
                        None
                    }
                });
                let len = match (len, status) {
                    (Some(len), _) => len,
                    (None, 204 | 304) => 0,
                    (None, _) => bail!("a {status} response without Content-Length"),
                };
                let total = end + 4 + len;
                while self.buf.len() < total {
                    let n = self.stream.read(&mut chunk).await?;
                    ensure!(n > 0, "the server closed the connection mid-response");
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&self.buf[end + 4..total]).into_owned();
                return Ok((status, body));
            }
            let n = self.stream.read(&mut chunk).await?;
            ensure!(n > 0, "the server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

async fn connections(addr: SocketAddr, n: usize) -> anyhow::Result<Vec<HttpConn>> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(HttpConn::open(addr).await?);
    }
    Ok(conns)
}

/// `total` requests over `connections`, each sent as soon as the one before
/// on its connection was answered. Returns seconds and latencies.
async fn closed_loop(
    addr: SocketAddr,
    load: &Arc<Load>,
    connections_n: usize,
    total: usize,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let conns = connections(addr, connections_n).await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut conn in conns {
        let (load, next) = (load.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(total / connections_n + 1);
            let mut req = Vec::with_capacity(512);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                load.build(i, &mut req);
                let t = Instant::now();
                let (status, body) = conn.call(&req).await?;
                lat.push(t.elapsed());
                if !load.accept(status, &body) {
                    bail!("answered {status}: {body}");
                }
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::with_capacity(total);
    for t in tasks {
        lat.extend(t.await??);
    }
    Ok((started.elapsed().as_secs_f64(), lat))
}

/// `rate` requests a second spread over `connections` from `start` for
/// `total`; each latency counts from the request's scheduled send (a stall
/// delays the requests behind it, and they count it). Returns (scheduled
/// offset from `start`, latency) per request.
async fn paced_loop(
    addr: SocketAddr,
    load: &Arc<Load>,
    connections_n: usize,
    rate: f64,
    start: tokio::time::Instant,
    total: Duration,
) -> anyhow::Result<Vec<(Duration, Duration)>> {
    let rate = rate.max(1.0);
    let period = Duration::from_secs_f64(connections_n as f64 / rate);
    let conns = connections(addr, connections_n).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = start + total;
    let mut tasks = Vec::new();
    for (k, mut conn) in conns.into_iter().enumerate() {
        let (load, next) = (load.clone(), next.clone());
        let first = start + period.mul_f64(k as f64 / connections_n as f64);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(first, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut lat = Vec::new();
            let mut req = Vec::with_capacity(512);
            loop {
                let at = tick.tick().await;
                if at >= deadline {
                    break;
                }
                load.build(next.fetch_add(1, Ordering::Relaxed), &mut req);
                let (status, body) = conn.call(&req).await?;
                lat.push((at - start, at.elapsed()));
                if !load.accept(status, &body) {
                    bail!("answered {status}: {body}");
                }
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    Ok(lat)
}

/// What the check route does besides HTTP, called by `tasks` tasks at
/// once: (with `token`) the token's authentication, then the check's read
/// at consistency full. Returns calls per second.
async fn in_process_rate(
    app: &App,
    tenant: &Tenant,
    users: &Arc<Vec<String>>,
    token: Option<&str>,
    tasks: usize,
    total: usize,
) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (app, tenant, users, next) = (app.clone(), tenant.clone(), users.clone(), next.clone());
        let token = token.map(str::to_string);
        handles.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                if let Some(token) = &token {
                    app.authenticate(token, tenant.name.as_str(), Scope::Permissions)
                        .await?;
                }
                let user = UserRef::IdOrUserName(users[(i * STRIDE) % users.len()].clone());
                app.user_permissions(&tenant, &user, Consistency::Full)
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// SCIM writes: toggles a random user's membership of a random on-call
/// group (each toggle changes that user's permissions).
struct Writer {
    client: reqwest::Client,
    base: String,
    auth: String,
    users: Arc<Vec<String>>,
    oncall: Vec<String>,
    member: HashSet<(usize, usize)>,
    rng: StdRng,
}

/// One SCIM write done.
struct Written {
    user: usize,
    group: usize,
    added: bool,
    revision: i64,
    took: Duration,
}

impl Writer {
    /// The next toggle: (user, on-call group, true when it adds).
    fn pick(&mut self) -> (usize, usize, bool) {
        let user = self.rng.gen_range(0..self.users.len());
        let group = self.rng.gen_range(0..self.oncall.len());
        let added = self.member.insert((user, group));
        if !added {
            self.member.remove(&(user, group));
        }
        (user, group, added)
    }

    async fn write(&mut self) -> anyhow::Result<Written> {
        let (user, group, added) = self.pick();
        let uid = &self.users[user];
        let op = if added {
            json!({"op": "add", "path": "members", "value": [{"value": uid}]})
        } else {
            json!({"op": "remove", "path": format!("members[value eq \"{uid}\"]")})
        };
        let started = Instant::now();
        let resp = self
            .client
            .patch(format!("{}/{}", self.base, self.oncall[group]))
            .header("Authorization", &self.auth)
            .header("Content-Type", crate::http::SCIM_JSON)
            .body(json!({"schemas": [PATCH_OP], "Operations": [op]}).to_string())
            .send()
            .await?;
        let status = resp.status();
        let revision = resp
            .headers()
            .get("x-rolebridge-revision")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok());
        let body = resp.text().await.unwrap_or_default();
        let took = started.elapsed();
        if !status.is_success() {
            bail!("PATCH /Groups answered {status}: {body}");
        }
        Ok(Written {
            user,
            group,
            added,
            revision: revision
                .context("a PATCH that changed a membership carries X-Rolebridge-Revision")?,
            took,
        })
    }
}

/// Latency samples of step 1.
#[derive(Default)]
struct ColdSamples {
    total: Vec<Duration>,
    write: Vec<Duration>,
    check: Vec<Duration>,
    reference: Vec<Duration>,
}

/// p50 and p99 of step 1, over HTTP.
struct Cold {
    total: (f64, f64),
    check: (f64, f64),
}

/// Step 1 over HTTP: a PATCH adding (or removing) the user to an on-call
/// group, then a check of that user for the permission only that group
/// grants; the answer must reflect the write. Between rounds, a check of
/// another user on the same connection is the reference.
async fn cold_checks(
    args: &ChecksArgs,
    checks: &CheckRequests,
    addr: SocketAddr,
    writer: &mut Writer,
    users: &Arc<Vec<String>>,
) -> anyhow::Result<ColdSamples> {
    let mut conn = HttpConn::open(addr).await?;
    let mut req = Vec::with_capacity(512);
    let mut rng = StdRng::seed_from_u64(7);
    let mut s = ColdSamples::default();
    for _ in 0..args.cold_rounds {
        let t0 = Instant::now();
        let w = writer.write().await?;
        let t1 = Instant::now();
        checks.build(&mut req, &users[w.user], ONCALL[w.group].1, None);
        let (status, body) = conn.call(&req).await?;
        let t2 = Instant::now();
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        ensure!(
            status == 200
                && v["allowed"] == json!(w.added)
                && v["revision"].as_i64() >= Some(w.revision),
            "the check after a write (added: {}, revision {}) answered {status}: {body}",
            w.added,
            w.revision
        );
        s.total.push(t2 - t0);
        s.write.push(t1 - t0);
        s.check.push(t2 - t1);
        let other = rng.gen_range(0..users.len());
        checks.build(&mut req, &users[other], CHECKED, None);
        let t3 = Instant::now();
        let (status, body) = conn.call(&req).await?;
        s.reference.push(t3.elapsed());
        ensure!(
            status == 200 && body.contains("\"allowed\":true"),
            "reference check answered {status}: {body}"
        );
    }
    Ok(s)
}

/// Step 1 without HTTP: the same toggle through the store and
/// `app.commit(tx)`, then `app.user_permissions` (consistency full).
async fn in_process_cold(
    args: &ChecksArgs,
    app: &App,
    tenant: &Tenant,
    groups: &Groups,
    writer: &mut Writer,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let (mut commit, mut check) = (Vec::new(), Vec::new());
    for _ in 0..args.cold_rounds {
        let (user, group, added) = writer.pick();
        let uid = writer.users[user].clone();
        let t0 = Instant::now();
        let mut tx = app.store().begin_write().await?;
        if added {
            tx.add_members(tenant.id, &groups.oncall[group], &[(uid.clone(), "User")])
                .await?;
        } else {
            tx.remove_members(tenant.id, &groups.oncall[group], std::slice::from_ref(&uid))
                .await?;
        }
        let c = app.commit(tx).await?;
        let t1 = Instant::now();
        let checked = app
            .user_permissions(tenant, &UserRef::Id(uid), Consistency::Full)
            .await?;
        let t2 = Instant::now();
        ensure!(
            checked
                .summary
                .permissions
                .iter()
                .any(|p| p == ONCALL[group].1)
                == added
                && Some(checked.revision) >= c.revision(tenant.id),
            "the in-process check after a write (added: {added}) answered {:?} at revision {}",
            checked.summary.permissions,
            checked.revision
        );
        commit.push(t1 - t0);
        check.push(t2 - t1);
    }
    Ok((commit, check))
}

fn print_cold(s: &ColdSamples, inproc: &(Vec<Duration>, Vec<Duration>), rounds: usize) -> Cold {
    let p = |v: &[Duration], q: f64| pct(&mut v.to_vec(), q);
    let total = (p(&s.total, 50.0), p(&s.total, 99.0));
    let check = (p(&s.check, 50.0), p(&s.check, 99.0));
    let reference = (p(&s.reference, 50.0), p(&s.reference, 99.0));
    println!(
        "1. cold check right after a SCIM write that touched the user ({rounds} rounds: PATCH /Groups/{{id}} adding or removing the user, \
         then POST /check of that user for the permission only that group grants, consistency full, answer verified):"
    );
    println!(
        "   write start -> answered check: p50 {:.2} ms p99 {:.2} ms  [goal < {COLD_GOAL_MS} ms: p50 {}, p99 {}]",
        total.0,
        total.1,
        verdict(total.0 < COLD_GOAL_MS),
        verdict(total.1 < COLD_GOAL_MS)
    );
    println!(
        "   the PATCH: p50 {:.2} ms p99 {:.2} ms; the check alone: p50 {:.2} ms p99 {:.2} ms  [goal < {COLD_GOAL_MS} ms: p50 {}, p99 {}]; \
         reference, a check of an untouched user on the same connection: p50 {:.2} ms p99 {:.2} ms; cold/reference at p50 {:.2}",
        p(&s.write, 50.0),
        p(&s.write, 99.0),
        check.0,
        check.1,
        verdict(check.0 < COLD_GOAL_MS),
        verdict(check.1 < COLD_GOAL_MS),
        reference.0,
        reference.1,
        check.0 / reference.0
    );
    println!(
        "   in process (store write + app.commit, then app.user_permissions, {rounds} rounds): commit p50 {:.2} ms p99 {:.2} ms; check p50 {:.3} ms p99 {:.3} ms",
        p(&inproc.0, 50.0),
        p(&inproc.0, 99.0),
        p(&inproc.1, 50.0),
        p(&inproc.1, 99.0)
    );
    Cold { total, check }
}

/// Where checks were answered from (the app's counters).
#[derive(Default)]
struct Sources {
    store: u64,
    local: u64,
    redis: u64,
    computed: u64,
}

impl Sources {
    fn of(app: &App) -> Sources {
        let m = &app.cache().metrics;
        Sources {
            store: m.store_reads.load(Ordering::Relaxed),
            local: m.local_hits.load(Ordering::Relaxed),
            redis: m.redis_hits.load(Ordering::Relaxed),
            computed: m.computes.load(Ordering::Relaxed),
        }
    }

    fn minus(&self, o: &Sources) -> Sources {
        Sources {
            store: self.store - o.store,
            local: self.local - o.local,
            redis: self.redis - o.redis,
            computed: self.computed - o.computed,
        }
    }
}

/// Derivation and Redis counters, after the Redis queue drained.
#[derive(Default)]
struct Counters {
    recomputed: u64,
    changed: u64,
    redis_writes: u64,
    redis_dropped: u64,
    /// `INFO commandstats`: EVALSHA (calls, failed), EVAL and SCRIPT LOAD calls.
    evalsha: (u64, u64),
    eval: u64,
    script_load: u64,
}

impl Counters {
    /// First waits (bounded) until Redis accounted for every entry the app
    /// enqueued, written or dropped: one per changed user (this bench
    /// deletes no user). `RedisCache::flush` alone returns once the queue
    /// is empty, while the writer may still hold a batch.
    async fn read(app: &App, conn: &mut redis::aio::MultiplexedConnection) -> Counters {
        let m = &app.cache().metrics;
        let (redis_writes, redis_dropped) = match &app.cache().redis {
            Some(r) => {
                r.flush().await;
                let expected = m.changed_users.load(Ordering::Relaxed);
                let deadline = Instant::now() + Duration::from_secs(60);
                while r.writes() + r.dropped() < expected && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (r.writes(), r.dropped())
            }
            None => (0, 0),
        };
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(conn)
            .await
            .unwrap_or_default();
        let stat = |name: &str| -> (u64, u64) {
            let line = info
                .lines()
                .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:")));
            let field = |key: &str| {
                line.and_then(|l| {
                    l.split(',')
                        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
                        .and_then(|v| v.parse().ok())
                })
                .unwrap_or(0)
            };
            (field("calls"), field("failed_calls"))
        };
        Counters {
            recomputed: m.recomputed_users.load(Ordering::Relaxed),
            changed: m.changed_users.load(Ordering::Relaxed),
            redis_writes,
            redis_dropped,
            evalsha: stat("evalsha"),
            eval: stat("eval").0,
            script_load: stat("script|load").0,
        }
    }

    fn minus(&self, o: &Counters) -> Counters {
        Counters {
            recomputed: self.recomputed - o.recomputed,
            changed: self.changed - o.changed,
            redis_writes: self.redis_writes - o.redis_writes,
            redis_dropped: self.redis_dropped - o.redis_dropped,
            evalsha: (
                self.evalsha.0.saturating_sub(o.evalsha.0),
                self.evalsha.1.saturating_sub(o.evalsha.1),
            ),
            eval: self.eval.saturating_sub(o.eval),
            script_load: self.script_load.saturating_sub(o.script_load),
        }
    }
}

/// For every user step 3 wrote, whether their Redis key holds the revision
/// of their last write.
async fn verify_keys(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    tenant: &Tenant,
    written: &[Written],
    users: &[String],
) -> String {
    let mut last: HashMap<usize, i64> = HashMap::new();
    for w in written {
        last.insert(w.user, w.revision);
    }
    let (mut ok, mut missing, mut other) = (0, 0, 0);
    for (u, rev) in &last {
        let key = crate::cache::user_key(prefix, tenant.id, &users[*u]);
        let value: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(conn)
            .await
            .ok()
            .flatten();
        match value.and_then(|v| v.split_once('|').and_then(|(a, _)| a.parse::<i64>().ok())) {
            Some(at) if at == *rev => ok += 1,
            Some(_) => other += 1,
            None => missing += 1,
        }
    }
    format!(
        "{ok} of {} ({missing} missing, {other} at another revision)",
        last.len()
    )
}

/// Step 4, a nested-group write: leaf-0 moves from its department (in one
/// division) to the last department (in the other), and back. Every user
/// under leaf-0 is recomputed; those whose roles change are written.
async fn nested_moves(
    app: &App,
    tenant: &Tenant,
    groups: &Groups,
    conn: &mut redis::aio::MultiplexedConnection,
) -> anyhow::Result<()> {
    let leaf = groups.leaves[0].to_string();
    let home = &groups.departments[0];
    let away = &groups.departments[DEPARTMENTS - 1];
    for (label, from, to) in [
        ("leaf-0 from dept-0 to dept-9", home, away),
        ("and back", away, home),
    ] {
        let before = Counters::read(app, conn).await;
        let started = Instant::now();
        let mut tx = app.store().begin_write().await?;
        tx.remove_members(tenant.id, from, std::slice::from_ref(&leaf))
            .await?;
        tx.add_members(tenant.id, to, &[(leaf.clone(), "Group")])
            .await?;
        let c = app.commit(tx).await?;
        let took = started.elapsed();
        let d = Counters::read(app, conn).await.minus(&before);
        println!(
            "   nested-group write ({label}; store + app.commit {:.1} ms): users recomputed {}, changed {}; Redis entries written {}, dropped {}; \
             evalsha +{} (failed +{})  [goal = changed users: {}]",
            took.as_secs_f64() * 1000.0,
            c.recomputed,
            c.changed,
            d.redis_writes,
            d.redis_dropped,
            d.evalsha.0,
            d.evalsha.1,
            verdict(d.redis_writes == c.changed as u64 && d.redis_dropped == 0)
        );
    }
    Ok(())
}

/// `redis-benchmark -t get -c C -n N -q` against the configured Redis:
/// requests per second and its summary line.
async fn redis_benchmark(url: &str, connections: usize, n: usize) -> anyhow::Result<(f64, String)> {
    let u = url::Url::parse(url)?;
    let host = u.host_str().unwrap_or("127.0.0.1").to_string();
    let port = u.port().unwrap_or(6379).to_string();
    let out = tokio::process::Command::new("redis-benchmark")
        .args([
            "-h",
            &host,
            "-p",
            &port,
            "-t",
            "get",
            "-n",
            &n.to_string(),
            "-c",
            &connections.to_string(),
            "-q",
        ])
        .output()
        .await
        .context("running redis-benchmark")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .split(['\r', '\n'])
        .rfind(|l| l.contains("requests per second"))
        .context("no figure in redis-benchmark's output")?
        .trim()
        .to_string();
    let words: Vec<&str> = line.split_whitespace().collect();
    let rps = words
        .iter()
        .position(|w| *w == "requests")
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| words[i].parse::<f64>().ok())
        .context("no requests per second in redis-benchmark's output")?;
    Ok((rps, line))
}

/// The 1-minute load average: other work on the machine shares the cores.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split(' ').next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// A `/proc/self/status` figure in KiB.
fn proc_status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(key)?
            .strip_prefix(':')?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}
