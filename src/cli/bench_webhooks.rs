//! `rolebridge bench webhooks`: how fast permission changes reach a
//! webhook receiver, and what delivery costs the writes that cause them.
//!
//! One run, on 127.0.0.1: a mapped tenant (the GMS catalog, one rule), a
//! receiver (axum) that records when each event arrives, and concurrent
//! SCIM PATCHes that each change one user's grants (one event each).
//! Figures, each beside the reference or goal it is judged by:
//! - events per second delivered from a backlog, beside the receiver's own
//!   ceiling (the same receiver, one sequential client POSTing bodies of
//!   the same size), and live, beside the write rate that produces them;
//! - lag from a write's acknowledgement to the event's receipt, p50/p99;
//! - SCIM write throughput with delivery running, beside the same writes
//!   with no endpoint registered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};

use crate::app::{now, App, Mappings};
use crate::config::Config;
use crate::domain::{Scope, TenantName};
use crate::store::Store;

#[derive(Debug, Args)]
pub struct WebhooksArgs {
    /// Users changed per phase (one event each).
    #[arg(long, default_value_t = 2000)]
    pub users: usize,
    /// Concurrent SCIM clients.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Events per webhook POST (`[webhooks] batch`).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
}

/// Goals this bench judges by (the issue names the figures, not values):
/// a change reaches the receiver within a second at p99, and delivery
/// costs the writes at most 10 % of their throughput.
const LAG_GOAL: Duration = Duration::from_secs(1);
/// Rounds of each side (no endpoint, delivery running), alternated; even,
/// so each side does as many adds as removes (see [`delivering`]).
const ROUNDS: usize = 4;
const WRITE_COST_GOAL: f64 = 0.90;

const TENANT_FILE: &str = "catalog: gms\nrules:\n  - id: designers\n    match: {display_name: \"Designers\"}\n    assign: {roles: [designer]}\n";

#[derive(Default)]
struct Receipts {
    /// Event user id → when it arrived (the first time).
    at: HashMap<String, Instant>,
    posts: usize,
}

async fn receiver(
    receipts: Arc<Mutex<Receipts>>,
) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let receipts = receipts.clone();
            async move {
                let arrived = Instant::now();
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let mut r = receipts.lock().unwrap_or_else(|p| p.into_inner());
                r.posts += 1;
                for e in v["events"].as_array().into_iter().flatten() {
                    if let Some(u) = e["user"]["id"].as_str() {
                        r.at.entry(u.to_string()).or_insert(arrived);
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((format!("http://{addr}/hook"), task))
}

/// The operation to use now, and the one after it: adds and removes
/// alternate, so every round changes every user's grants.
fn flip(op: &mut &'static str) -> &'static str {
    let now = *op;
    *op = if now == "add" { "remove" } else { "add" };
    now
}

/// Waits until an event of each of `n` users arrived (at most 120 s).
async fn all_received(receipts: &Mutex<Receipts>, n: usize, phase: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = receipts.lock().unwrap_or_else(|p| p.into_inner()).at.len();
        if got >= n {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{phase}: only {got} of {n} events arrived in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Whether round `round` runs with delivery: no, yes, yes, no, no, yes, …
/// Rounds alternate adding and removing (each must change every user's
/// grants), and an add costs more than a remove; with sides strictly
/// alternating, every delivering round was an add and every plain round a
/// remove, which read as 0.81–0.86 "with ÷ without" on both backends.
fn delivering(round: usize) -> bool {
    matches!(round % 4, 1 | 2)
}

/// PATCHes each user into (or out of) the group with `clients` workers;
/// returns when each write was acknowledged, and the phase's duration.
async fn writes(
    client: &reqwest::Client,
    base: &str,
    auth: &str,
    group: &str,
    users: &[String],
    op: &str,
    clients: usize,
) -> anyhow::Result<(HashMap<String, Instant>, Duration)> {
    let queue = Arc::new(Mutex::new(users.to_vec()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, base, auth, group, queue, op) = (
            client.clone(),
            base.to_string(),
            auth.to_string(),
            group.to_string(),
            queue.clone(),
            op.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            loop {
                let Some(u) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop() else {
                    break;
                };
                let body = if op == "add" {
                    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "add", "path": "members", "value": [{"value": u}]}]})
                } else {
                    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [{"op": "remove", "path": format!("members[value eq \"{u}\"]")}]})
                };
                let r = client
                    .patch(format!("{base}/Groups/{group}"))
                    .header("Authorization", &auth)
                    .header("Content-Type", "application/scim+json")
                    .body(body.to_string())
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "PATCH answered {}", r.status());
                acked.push((u, Instant::now()));
            }
            anyhow::Ok(acked)
        }));
    }
    let mut out = HashMap::new();
    for t in tasks {
        out.extend(t.await??);
    }
    Ok((out, started.elapsed()))
}

/// Mappings in which the bench tenant is mapped like a customer's: the
/// shipped `gms` catalog, and group "Designers" granting `designer`. So a
/// bench write pays for its derivation as a production write does.
pub(super) fn bench_mappings(config: &Config, name: &TenantName) -> anyhow::Result<Mappings> {
    let dir = std::env::temp_dir().join(format!("rolebridge-bench-{name}"));
    std::fs::create_dir_all(dir.join("catalogs"))?;
    std::fs::create_dir_all(dir.join("tenants"))?;
    std::fs::copy(
        config.mappings.join("catalogs/gms.yaml"),
        dir.join("catalogs/gms.yaml"),
    )
    .context("the gms catalog under --mappings")?;
    std::fs::write(dir.join(format!("tenants/{name}.yaml")), TENANT_FILE)?;
    Mappings::load(&dir).map_err(|e| anyhow::anyhow!("bench mappings invalid: {e:?}"))
}

pub async fn run(config: &Config, args: WebhooksArgs) -> anyhow::Result<()> {
    let store = Store::connect(&config.database_url).await?;
    let name = TenantName::parse(&format!(
        "benchhook-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ))?;
    let mappings = bench_mappings(config, &name)?;
    let settings = crate::config::WebhookSettings {
        batch: args.batch,
        ..config.webhooks.clone()
    };
    let app = App::with_mappings(store.clone(), mappings).with_webhook_settings(settings);
    store.create_tenant(&name, &now()).await?;
    let tenant = app.tenant(&name).await?;
    let token = app.create_token(&name, Scope::Scim).await?;
    let mut http = config.http.clone();
    let unlimited = crate::config::Quota::new(u32::MAX / 2, u32::MAX / 2).context("bench quota")?;
    http.rate_limit.tenants.insert(
        name.to_string(),
        crate::config::TenantQuotas {
            tenant: unlimited,
            token: unlimited,
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = crate::http::router_with(app.clone(), http);
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let base = format!("http://{addr}/scim/v2/{name}");
    let auth = format!("Bearer {}", token.token.expose());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.clients)
        .timeout(Duration::from_secs(60))
        .build()?;
    println!(
        "rolebridge bench webhooks: database {}, {} cores, {} users per phase, {} clients, batch {}",
        crate::store::redact_url(&config.database_url),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        args.users,
        args.clients,
        args.batch
    );
    let post = |path: &str, body: Value| {
        client
            .post(format!("{base}{path}"))
            .header("Authorization", &auth)
            .header("Content-Type", "application/scim+json")
            .body(body.to_string())
            .send()
    };
    let group: Value = post("/Groups", json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Designers"}))
        .await?
        .json()
        .await?;
    let group = group["id"].as_str().context("group id")?.to_string();
    let mut users = Vec::with_capacity(args.users);
    for i in 0..args.users {
        let u: Value = post("/Users", json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": format!("hook{i:06}")}))
            .await?
            .json()
            .await?;
        users.push(u["id"].as_str().context("user id")?.to_string());
    }

    // A warm-up round, then rounds that alternate between no endpoint and
    // an endpoint with delivery running (each with a fresh endpoint, so it
    // starts with no backlog), the same writes each time: the comparison
    // is by medians, so a slow moment of the machine weighs on one round,
    // not on one side.
    let receipts = Arc::new(Mutex::new(Receipts::default()));
    let (url, receiver_task) = receiver(receipts.clone()).await?;
    let mut op = "add";
    writes(
        &client,
        &base,
        &auth,
        &group,
        &users,
        flip(&mut op),
        args.clients,
    )
    .await?;
    let (mut plain_rates, mut with_rates, mut live_rates) = (Vec::new(), Vec::new(), Vec::new());
    let (mut lags, mut posts) = (Vec::new(), 0usize);
    for round in 0..2 * ROUNDS {
        let this = flip(&mut op);
        if !delivering(round) {
            let (_, took) =
                writes(&client, &base, &auth, &group, &users, this, args.clients).await?;
            let rate = users.len() as f64 / took.as_secs_f64();
            println!("  round {round}: {this}, no endpoint: {rate:.0} PATCH/s");
            plain_rates.push(rate);
            continue;
        }
        *receipts.lock().unwrap_or_else(|p| p.into_inner()) = Receipts::default();
        let hook = app.create_webhook(&tenant, &url).await?;
        let delivery = crate::app::webhooks::spawn_delivery(app.clone());
        let started = Instant::now();
        let (acked, took) =
            writes(&client, &base, &auth, &group, &users, this, args.clients).await?;
        all_received(&receipts, users.len(), "live").await?;
        delivery.abort();
        app.delete_webhook(&tenant, &hook.webhook.id).await?;
        let r = receipts.lock().unwrap_or_else(|p| p.into_inner());
        posts += r.posts;
        let last = r.at.values().max().copied().unwrap_or(started);
        live_rates.push(users.len() as f64 / (last - started).as_secs_f64());
        let rate = users.len() as f64 / took.as_secs_f64();
        println!("  round {round}: {this}, delivering: {rate:.0} PATCH/s");
        with_rates.push(rate);
        lags.extend(acked.iter().map(|(u, ack)| {
            r.at.get(u)
                .map(|at| at.saturating_duration_since(*ack))
                .unwrap_or_default()
        }));
    }
    lags.sort();
    let pct = |p: f64| lags[((lags.len() as f64 * p) as usize).min(lags.len() - 1)];
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        if v.len() % 2 == 0 {
            (v[mid - 1] + v[mid]) / 2.0
        } else {
            v[mid]
        }
    };
    let (plain_rate, with_rate, events_per_sec) = (
        median(&mut plain_rates),
        median(&mut with_rates),
        median(&mut live_rates),
    );

    // A backlog: an endpoint, the same writes with delivery stopped, then
    // delivery starts and drains them: the delivery throughput itself.
    *receipts.lock().unwrap_or_else(|p| p.into_inner()) = Receipts::default();
    app.create_webhook(&tenant, &url).await?;
    writes(
        &client,
        &base,
        &auth,
        &group,
        &users,
        flip(&mut op),
        args.clients,
    )
    .await?;
    let drain_started = Instant::now();
    let delivery = crate::app::webhooks::spawn_delivery(app.clone());
    all_received(&receipts, users.len(), "backlog").await?;
    let drained = drain_started.elapsed();
    let drain_posts = receipts.lock().unwrap_or_else(|p| p.into_inner()).posts;
    let drain_rate = users.len() as f64 / drained.as_secs_f64();
    delivery.abort();

    // The reference: the receiver's ceiling for bodies of the same size,
    // one sequential client as the deliverer is.
    let sample = app
        .changes(&tenant, None, args.batch as i64, Duration::ZERO)
        .await?;
    let body = serde_json::to_vec(
        &json!({"webhook": "ref", "tenant": name.to_string(), "delivery": "ref", "events": sample.events}),
    )?;
    let per_post = sample.events.len().max(1);
    let reference_posts = 300usize;
    let t = Instant::now();
    for _ in 0..reference_posts {
        let r = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?;
        anyhow::ensure!(
            r.status().is_success(),
            "reference POST answered {}",
            r.status()
        );
    }
    let reference = (reference_posts * per_post) as f64 / t.elapsed().as_secs_f64();
    receiver_task.abort();
    server.abort();

    println!();
    println!("| figure | measured | reference (same run) | ratio | goal | verdict |");
    println!("|---|---:|---:|---:|---|---|");
    println!(
        "| events delivered per second, draining a backlog of {} | {drain_rate:.0} ({drain_posts} POSTs) | {reference:.0} (receiver ceiling, {per_post} events per POST) | {:.2} | (no figure set) | - |",
        users.len(),
        drain_rate / reference
    );
    println!(
        "| events delivered per second, live (bounded by the writes; median of {ROUNDS} rounds) | {events_per_sec:.0} ({posts} POSTs in all) | {with_rate:.0} (writes per second) | {:.2} | keeps up: ≥ 0.95 | {} |",
        events_per_sec / with_rate,
        if events_per_sec / with_rate >= 0.95 { "met" } else { "NOT met" }
    );
    println!(
        "| lag, write ack → receipt, p50 / p99 / max (all rounds) | {:.1} / {:.1} / {:.1} ms | | | p99 < {} ms | {} |",
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lags[lags.len() - 1].as_secs_f64() * 1e3,
        LAG_GOAL.as_millis(),
        if pct(0.99) < LAG_GOAL { "met" } else { "NOT met" }
    );
    println!(
        "| SCIM PATCH/s with delivery running (median of {ROUNDS} rounds, alternated) | {with_rate:.0} | {plain_rate:.0} (no endpoint) | {:.2} | ≥ {WRITE_COST_GOAL:.2} | {} |",
        with_rate / plain_rate,
        if with_rate / plain_rate >= WRITE_COST_GOAL { "met" } else { "NOT met" }
    );
    Ok(())
}
