//! `rolebridge bench checks`: permission checks over HTTP with N concurrent
//! connections, warm (in-process cache; Redis alone), `redis-benchmark -t
//! get` as the reference, and the cost of a cold check for a user in 50
//! groups under 200 rules.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use scim::schema::ResourceKind;
use serde_json::json;

use super::bench::{pct, seed_users};
use crate::app::{now, App, Mappings, UserRef};
use crate::config::Config;
use crate::domain::{ResourceId, Scope, TenantName};
use crate::store::{Store, StoredResource};

#[derive(Debug, Args)]
pub struct ChecksArgs {
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Checks per warm measurement.
    #[arg(long, default_value_t = 50_000)]
    pub requests: usize,
    /// Users in the tenant.
    #[arg(long, default_value_t = 1_000)]
    pub users: usize,
    /// Groups each user belongs to.
    #[arg(long, default_value_t = 50)]
    pub groups_per_user: usize,
    /// Mapping rules (one per group).
    #[arg(long, default_value_t = 200)]
    pub rules: usize,
}

pub async fn run(config: &Config, args: ChecksArgs) -> anyhow::Result<()> {
    let redis_url = config
        .redis_url
        .clone()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".to_string());
    let store = Store::connect(&config.database_url).await?;
    let tenant_name = TenantName::parse(&format!(
        "benchk-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ))?;
    let tenant = store.create_tenant(&tenant_name, &now()).await?;

    // Mappings: the shipped haptik catalog, and `rules` rules, one per group.
    let dir = std::env::temp_dir().join(format!("rolebridge-bench-{tenant_name}"));
    std::fs::create_dir_all(dir.join("tenants"))?;
    std::fs::create_dir_all(dir.join("catalogs"))?;
    std::fs::copy(
        config.mappings.join("catalogs/haptik.yaml"),
        dir.join("catalogs/haptik.yaml"),
    )
    .context("the haptik catalog under --mappings")?;
    let roles = [
        "chat_agent",
        "chat_agent_tl",
        "bot_builder_view",
        "iva_analytics_view",
        "assign_chats_same_team",
    ];
    let mut yaml = String::from("catalog: haptik\nrules:\n");
    for i in 0..args.rules {
        yaml.push_str(&format!(
            "  - id: r{i}\n    match: {{display_name: \"group-{i}\"}}\n    assign: {{roles: [{}]}}\n    priority: {}\n",
            roles[i % roles.len()],
            i % 7
        ));
    }
    std::fs::write(
        dir.join("tenants").join(format!("{tenant_name}.yaml")),
        yaml,
    )?;
    let mappings =
        || Mappings::load(&dir).map_err(|e| anyhow::anyhow!("bench mappings invalid: {e:?}"));

    // Directory: users, `rules` groups, each user in `groups_per_user` of them.
    let mut users = Vec::new();
    seed_users(&App::new(store.clone()), tenant.id, args.users, &mut users).await?;
    let mut groups = Vec::new();
    let mut tx = store.begin_write().await?;
    for i in 0..args.rules {
        let ts = now();
        let g = StoredResource {
            id: ResourceId::generate(),
            doc: json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": format!("group-{i}")}),
            created: ts.clone(),
            last_modified: ts,
            version: 1,
        };
        tx.insert(tenant.id, ResourceKind::Group, &g).await?;
        groups.push(g.id);
    }
    for (u, user) in users.iter().enumerate() {
        for k in 0..args.groups_per_user {
            let g = &groups[(u * 7 + k * 13) % groups.len()];
            tx.add_members(tenant.id, g, &[(user.to_string(), "User")])
                .await?;
        }
    }
    tx.commit().await?;
    println!(
        "rolebridge bench checks: database {}, {} cores; {} users x {} groups each, {} rules, {} connections",
        crate::store::redact_url(&config.database_url),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        args.users,
        args.groups_per_user,
        args.rules,
        args.connections
    );

    // Cold check: the first answer after a write computes the tenant.
    let app = App::with_mappings(store.clone(), mappings()?);
    let t = tenant.clone();
    let mut cold = Vec::new();
    for round in 0..5 {
        let mut tx = store.begin_write().await?;
        tx.add_members(
            tenant.id,
            &groups[round],
            &[(users[round].to_string(), "User")],
        )
        .await?;
        tx.commit().await?;
        let started = Instant::now();
        app.user_permissions(
            &t,
            &UserRef::Id(users[0].to_string()),
            crate::app::Consistency::Full,
        )
        .await?;
        cold.push(started.elapsed());
    }
    let loaded = app.mappings.current();
    let compiled = loaded
        .set
        .tenant(&mapping::TenantName::new(tenant_name.as_str()))
        .context("tenant mapping")?;
    let directory = store.directory(tenant.id).await?;
    let facts = crate::app::user_facts(&directory);
    let one: Vec<_> = facts.iter().take(1).cloned().collect();
    let started = Instant::now();
    for _ in 0..100 {
        std::hint::black_box(mapping::compute_tenant(compiled, &one));
    }
    let per_user = started.elapsed() / 100;
    println!(
        "cold check (tenant recomputed from the store: {} users, {} memberships): median {:.1} ms; compute for one user in {} groups under {} rules: {:.3} ms",
        args.users,
        args.users * args.groups_per_user,
        pct(&mut cold, 50.0),
        one.first().map_or(0, |f| f.groups.len()),
        args.rules,
        per_user.as_secs_f64() * 1000.0
    );

    let perm_token = app.create_token(&tenant_name, Scope::Permissions).await?;
    let variants: Vec<(&str, App)> = vec![
        (
            "in-process cache",
            App::with_mappings(store.clone(), mappings()?),
        ),
        (
            "Redis (in-process reads off)",
            App::with_mappings(store.clone(), mappings()?)
                .with_redis(&redis_url, "rolebridge-bench:")?,
        ),
    ];
    for (label, app) in variants {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let router = crate::http::router(app.clone());
        let server = tokio::spawn(async move { axum::serve(listener, router).await });
        let url = format!("http://{addr}/api/v1/tenants/{tenant_name}/check");
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(args.connections)
            .build()?;
        // Warm: one check per user fills the cache.
        for u in &users {
            check(&client, &url, perm_token.token.expose(), u.as_str()).await?;
        }
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..args.connections {
            let (client, url, token, next, users) = (
                client.clone(),
                url.clone(),
                perm_token.token.expose().to_string(),
                next.clone(),
                users.clone(),
            );
            let total = args.requests;
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let t = Instant::now();
                    check(
                        &client,
                        &url,
                        &token,
                        users[(i * 31) % users.len()].as_str(),
                    )
                    .await?;
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
        let m = &app.cache.metrics;
        println!(
            "warm checks over HTTP, {label}: {:.0} req/s, p50 {:.2} ms p99 {:.2} ms ({} requests; local hits {}, redis hits {}, computes {})",
            args.requests as f64 / secs,
            pct(&mut lat, 50.0),
            pct(&mut lat, 99.0),
            args.requests,
            m.local_hits.load(Ordering::Relaxed),
            m.redis_hits.load(Ordering::Relaxed),
            m.computes.load(Ordering::Relaxed),
        );
        server.abort();
    }

    // The reference: Redis itself, same machine, same concurrency.
    let port = url::Url::parse(&redis_url)
        .ok()
        .and_then(|u| u.port())
        .unwrap_or(6379);
    match tokio::process::Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "get",
            "-n",
            "100000",
            "-c",
            &args.connections.to_string(),
            "-q",
        ])
        .output()
        .await
    {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let line = text
                .split('\r')
                .rfind(|l| l.contains("GET"))
                .unwrap_or("no output")
                .trim()
                .to_string();
            println!(
                "reference redis-benchmark -t get -c {}: {line}",
                args.connections
            );
        }
        Err(e) => println!("reference redis-benchmark not run: {e}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn check(client: &reqwest::Client, url: &str, token: &str, user: &str) -> anyhow::Result<()> {
    let resp = client
        .post(url)
        .bearer_auth(token)
        .json(&json!({"user": user, "permission": "take_and_respond_to_chats"}))
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!(
            "check answered {}: {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
    }
    let _ = Duration::ZERO;
    Ok(())
}
