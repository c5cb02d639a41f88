//! `rolebridge bench`: bounded end-to-end measurements against a real server
//! on 127.0.0.1 with a fresh tenant. Prints figures; asserts nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use scim::schema::ResourceKind;
use serde_json::json;

use crate::app::{now, App};
use crate::config::Config;
use crate::domain::{ResourceId, Scope, TenantName};
use crate::store::{Store, StoredResource};

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchWhat {
    /// SCIM: POST /Users throughput, filter latency, large-group PATCH.
    Scim(ScimArgs),
    /// Permission checks over HTTP: warm (in-process, Redis), cold.
    Checks(super::bench_checks::ChecksArgs),
    /// `mappings plan` on a tenant of N users, against one whole-tenant
    /// computation.
    Plan(super::bench_plan::PlanArgs),
    /// Webhooks: events delivered per second, write-to-receipt lag, and
    /// what delivery costs the writes.
    Webhooks(super::bench_webhooks::WebhooksArgs),
}

#[derive(Debug, Args)]
pub struct ScimArgs {
    /// Users stored before the filter and group measurements.
    #[arg(long, default_value_t = 100_000)]
    pub users: usize,
    /// Concurrent clients for the POST /Users measurement.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Users created through POST /Users, per round.
    #[arg(long, default_value_t = 4000)]
    pub posts: usize,
    /// Users created through the reference server's POST /Users, per round
    /// (it is slower: fewer keep a round short).
    #[arg(long, default_value_t = 1500)]
    pub reference_posts: usize,
    /// Alternated rounds of rolebridge and the reference; figures are the
    /// medians.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// GET /Users?filter=userName eq ... requests timed.
    #[arg(long, default_value_t = 2000)]
    pub queries: usize,
    /// Group sizes for the PATCH measurement.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1_000usize, 10_000, 100_000])]
    pub group_sizes: Vec<usize>,
}

pub async fn run(config: &Config, args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        BenchWhat::Scim(a) => scim(config, a).await,
        BenchWhat::Checks(a) => super::bench_checks::run(config, a).await,
        BenchWhat::Plan(a) => super::bench_plan::run(config, a).await,
        BenchWhat::Webhooks(a) => super::bench_webhooks::run(config, a).await,
    }
}

async fn scim(config: &Config, args: ScimArgs) -> anyhow::Result<()> {
    let max_group = args.group_sizes.iter().copied().max().unwrap_or(0);
    let store = Store::connect(&config.database_url).await?;
    let tenant_name = TenantName::parse(&format!(
        "bench-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ))?;
    let app = App::with_mappings(
        store.clone(),
        super::bench_webhooks::bench_mappings(config, &tenant_name)?,
    );
    let tenant = store.create_tenant(&tenant_name, &now()).await?;
    let token = app.create_token(&tenant_name, Scope::Scim).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // The bench measures the service, not the provisioning quota: the bench
    // tenant gets a quota far above what 2 cores can serve.
    let mut settings = config.http.clone();
    let unlimited = crate::config::Quota::new(u32::MAX / 2, u32::MAX / 2).context("bench quota")?;
    settings.rate_limit.tenants.insert(
        tenant_name.to_string(),
        crate::config::TenantQuotas {
            tenant: unlimited,
            token: unlimited,
        },
    );
    let router = crate::http::router_with(app.clone(), settings);
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let base = format!("http://{addr}/scim/v2/{tenant_name}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .timeout(Duration::from_secs(60))
        .build()?;
    let auth = format!("Bearer {}", token.token.expose());
    println!(
        "rolebridge bench: database {}, {} cores, tenant {tenant_name}",
        crate::store::redact_url(&config.database_url),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    // 1. POST /Users with N concurrent clients, alternated with the
    // reference server under the same load.
    let reference_auth = format!("Bearer {}", super::bench_reference::TOKEN);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..args.rounds.max(1) {
        // A fresh reference each round: it keeps resources in memory and
        // slows as they grow (404, 172, 103 req/s over three rounds of 1,500
        // on one instance), so every round measures it at the same size.
        let reference = super::bench_reference::Reference::start().await?;
        let r = post_users(
            &client,
            &reference.base,
            &reference_auth,
            &format!("ref{round}-"),
            args.reference_posts,
            args.clients,
        )
        .await?;
        println!("  round {round}: reference {}", r.line());
        theirs.push(r);
        drop(reference);
        let r = post_users(
            &client,
            &base,
            &auth,
            &format!("post{round}-"),
            args.posts,
            args.clients,
        )
        .await?;
        println!("  round {round}: rolebridge {}", r.line());
        ours.push(r);
    }
    let (ours, theirs) = (PostRun::median(ours), PostRun::median(theirs));
    let batches = app.metrics_text().await;
    println!(
        "POST /Users, {} clients, medians of {} rounds: rolebridge {:.0} req/s (p50 {:.2} ms, p99 {:.2} ms), \
         reference {} {:.0} req/s (p50 {:.2} ms, p99 {:.2} ms): ratio {:.1}x (goal >= 20x); {}",
        args.clients,
        args.rounds.max(1),
        ours.rate,
        ours.p50,
        ours.p99,
        super::bench_reference::SCIM2_SERVER,
        theirs.rate,
        theirs.p50,
        theirs.p99,
        ours.rate / theirs.rate,
        mean_batch(&batches),
    );

    // 2. Seed the rest directly through the store, 1,000 per transaction.
    let seeded = Instant::now();
    let mut ids = Vec::with_capacity(args.users);
    seed_users(
        &app,
        tenant.id,
        args.users.saturating_sub(args.posts),
        &mut ids,
    )
    .await?;
    let total_users = store.count(tenant.id, ResourceKind::User).await?;
    println!(
        "seeded {} users in {:.1} s; {total_users} users stored",
        ids.len(),
        seeded.elapsed().as_secs_f64()
    );

    // 3. GET /Users?filter=userName eq "..."
    let mut lat = Vec::with_capacity(args.queries);
    for q in 0..args.queries {
        let n = (q * 7919) % ids.len().max(1);
        let filter = format!("userName eq \"SEED{n}@bench.example\"");
        let t = Instant::now();
        let resp = client
            .get(format!("{base}/Users"))
            .query(&[("filter", filter.as_str())])
            .header("Authorization", &auth)
            .send()
            .await?;
        let body: serde_json::Value = resp.json().await?;
        lat.push(t.elapsed());
        if body["totalResults"] != 1 {
            bail!("filter {filter} found {}", body["totalResults"]);
        }
    }
    println!(
        "GET /Users?filter=userName eq (case-insensitive) with {total_users} users: p50 {:.2} ms p99 {:.2} ms over {} requests",
        pct(&mut lat, 50.0),
        pct(&mut lat, 99.0),
        args.queries
    );

    // 4. PATCH adding 100 members to groups of growing size. Each run adds
    // users that are in no group yet, so every PATCH inserts 100 rows.
    let spare_needed = max_group + 100 * 5 * args.group_sizes.len();
    if ids.len() < spare_needed {
        seed_users(&app, tenant.id, spare_needed - ids.len(), &mut ids).await?;
    }
    let mut spare = ids.len();
    // Fill every group first, so each PATCH runs against the same table size
    // and only the target group's size differs.
    let mut groups = Vec::new();
    for &size in &args.group_sizes {
        let resp = client
            .post(format!("{base}/Groups"))
            .header("Authorization", &auth)
            .json(&json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": format!("bench-{size}")}))
            .send()
            .await?;
        let group: serde_json::Value = resp.json().await?;
        let gid = ResourceId::from_client(group["id"].as_str().context("group id")?);
        for chunk in ids[..size].chunks(10_000) {
            let mut tx = store.begin_write().await?;
            let members: Vec<(String, &'static str)> =
                chunk.iter().map(|id| (id.to_string(), "User")).collect();
            tx.add_members(tenant.id, &gid, &members).await?;
            app.commit(tx).await?;
        }
        groups.push((size, gid));
    }
    for (size, gid) in groups {
        let mut times = Vec::new();
        for _ in 0..5 {
            spare -= 100;
            let members: Vec<_> = ids[spare..spare + 100]
                .iter()
                .map(|id| json!({"value": id.as_str()}))
                .collect();
            let t = Instant::now();
            let resp = client
                .patch(format!("{base}/Groups/{gid}"))
                .header("Authorization", &auth)
                .json(&json!({
                    "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                    "Operations": [{"op": "add", "path": "members", "value": members}]
                }))
                .send()
                .await?;
            times.push(t.elapsed());
            if resp.status().as_u16() != 204 {
                bail!("PATCH /Groups answered {}", resp.status());
            }
        }
        println!(
            "PATCH add 100 members to a group of {size}: median {:.2} ms (5 runs, min {:.2} max {:.2})",
            pct(&mut times, 50.0),
            pct(&mut times, 0.0),
            pct(&mut times, 100.0)
        );
    }
    server.abort();
    Ok(())
}

/// One POST /Users measurement.
struct PostRun {
    rate: f64,
    p50: f64,
    p99: f64,
}

impl PostRun {
    fn line(&self) -> String {
        format!(
            "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
            self.rate, self.p50, self.p99
        )
    }

    /// Each figure's median over the rounds.
    fn median(runs: Vec<PostRun>) -> PostRun {
        let mid = |f: fn(&PostRun) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        PostRun {
            rate: mid(|r| r.rate),
            p50: mid(|r| r.p50),
            p99: mid(|r| r.p99),
        }
    }
}

/// `posts` POST /Users from `clients` concurrent clients, after one
/// untimed request per client (connections open, the reference's lazy
/// imports done); every answer must be 201.
async fn post_users(
    client: &reqwest::Client,
    base: &str,
    auth: &str,
    prefix: &str,
    posts: usize,
    clients: usize,
) -> anyhow::Result<PostRun> {
    timed_posts(
        client,
        base,
        auth,
        &format!("{prefix}warm-"),
        clients,
        clients,
    )
    .await?;
    timed_posts(client, base, auth, prefix, posts, clients).await
}

async fn timed_posts(
    client: &reqwest::Client,
    base: &str,
    auth: &str,
    prefix: &str,
    posts: usize,
    clients: usize,
) -> anyhow::Result<PostRun> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url, auth, next, prefix) = (
            client.clone(),
            format!("{base}/Users"),
            auth.to_string(),
            next.clone(),
            prefix.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= posts {
                    break;
                }
                let t = Instant::now();
                let resp = client
                    .post(&url)
                    .header("Authorization", &auth)
                    .header("Content-Type", "application/scim+json")
                    .body(
                        json!({
                            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                            "userName": format!("{prefix}{i}@bench.example"),
                            "name": {"givenName": "Post", "familyName": format!("{i}")},
                            "emails": [{"value": format!("{prefix}{i}@bench.example"), "type": "work", "primary": true}],
                            "active": true
                        })
                        .to_string(),
                    )
                    .send()
                    .await?;
                if resp.status().as_u16() != 201 {
                    bail!("POST {url} answered {}", resp.status());
                }
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(PostRun {
        rate: posts as f64 / secs,
        p50: pct(&mut lat, 50.0),
        p99: pct(&mut lat, 99.0),
    })
}

/// "mean batch N writes" from the group-commit counters in `/metrics`.
fn mean_batch(metrics: &str) -> String {
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
    };
    match (
        value("rolebridge_group_commit_writes_total "),
        value("rolebridge_group_commit_batches_total "),
    ) {
        (Some(w), Some(b)) if b > 0.0 => format!(
            "group commit: {w:.0} writes in {b:.0} transactions, {:.1} per commit",
            w / b
        ),
        _ => "group commit: no batches counted".into(),
    }
}

/// Inserts `n` users straight through the store, 1,000 per transaction
/// (each committed through the app, so their permissions are derived).
pub(super) async fn seed_users(
    app: &App,
    tenant: crate::domain::TenantId,
    n: usize,
    ids: &mut Vec<ResourceId>,
) -> anyhow::Result<()> {
    let target = ids.len() + n;
    while ids.len() < target {
        let mut tx = app.store().begin_write().await?;
        for _ in 0..1000.min(target - ids.len()) {
            let ts = crate::domain::Timestamp::now();
            let r = StoredResource {
                id: ResourceId::generate(),
                doc: json!({
                    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                    "userName": format!("seed{}@bench.example", ids.len()),
                    "active": true
                }),
                created: ts,
                last_modified: ts,
                version: 1,
            };
            tx.insert(tenant, ResourceKind::User, &r).await?;
            ids.push(r.id);
        }
        app.commit(tx).await?;
    }
    Ok(())
}

/// The `p`th percentile in milliseconds (nearest rank).
pub(super) fn pct(samples: &mut [Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort();
    let rank = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[rank.min(samples.len() - 1)].as_secs_f64() * 1000.0
}
