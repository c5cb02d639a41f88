//! `rolebridge bench plan`: how long `mappings plan` takes on a tenant of N
//! users (the goal: a 10,000-user tenant in under 2 s), beside the floor
//! measured in the same run: one directory read and one whole-tenant
//! computation, which a plan does once per side.

use std::time::{Duration, Instant};

use clap::Args;

use super::bench_checks::{seed, write_mappings};
use crate::app::mappings::{tenant_file, ChangeScope, MappingChange, MappingFiles};
use crate::app::{now, user_facts, App, Mappings};
use crate::config::Config;
use crate::domain::TenantName;
use crate::store::Store;

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Tenant sizes in users.
    #[arg(long, value_delimiter = ',', default_values_t = vec![10_000usize])]
    pub users: Vec<usize>,
    /// Timed plans per size.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
}

/// The goal of the issue: a 10,000-user tenant plans in under 2 s.
const GOAL: Duration = Duration::from_secs(2);

pub async fn run(config: &Config, args: PlanArgs) -> anyhow::Result<()> {
    let store = Store::connect(&config.database_url).await?;
    println!("| users | plan p50 | plan max | floor (directory read + one compute) | plan ÷ floor | users losing | goal | verdict |");
    println!("|---:|---:|---:|---:|---:|---:|---|---|");
    for &n in &args.users {
        one_size(config, &store, n, args.rounds.max(1)).await?;
    }
    Ok(())
}

async fn one_size(config: &Config, store: &Store, n: usize, rounds: usize) -> anyhow::Result<()> {
    let name = TenantName::parse(&format!(
        "benchplan-{}k-{}",
        n / 1000,
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    ))?;
    let tenant = store.create_tenant(&name, &now()).await?;
    let dir = write_mappings(config, &name)?;
    let mappings =
        Mappings::load(&dir).map_err(|e| anyhow::anyhow!("bench mappings invalid: {e:?}"))?;
    let app = App::with_mappings(store.clone(), mappings);
    let (tx, _, _, _) = seed(store, &tenant, n, 3).await?;
    app.commit(tx).await?;
    // This size's catalog and tenant file become the store's next version
    // (the database may hold other sizes' versions already): the operator's
    // apply of the whole set, confirmed with its plan's hash (earlier
    // sizes' tenants are left unmapped by it).
    let files = crate::app::mappings::read_dir(&dir)
        .map_err(|e| anyhow::anyhow!("bench mappings unreadable: {e:?}"))?;
    let setup = MappingChange {
        base: app.latest_mapping_version().await?,
        scope: ChangeScope::Operator,
        files,
    };
    let reviewed = app.plan_mappings(&setup).await?;
    app.apply_mappings(
        &setup,
        Some(&reviewed.hash),
        &crate::app::mappings::operator(),
    )
    .await?;
    // The change: drop the rule that gives every leaf member `chat_agent`,
    // so most of the tenant loses something.
    let own = tenant_file(name.as_str());
    let text = app
        .mappings()
        .current()
        .files
        .get(&own)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("bench tenant file missing"))?;
    let edited = text.replace("\"^leaf-\"", "\"^no-such-group-\"");
    anyhow::ensure!(edited != text, "the bench mapping has no every_leaf rule");
    let change = MappingChange {
        base: app.latest_mapping_version().await?,
        scope: ChangeScope::Tenant(mapping::TenantName::new(name.as_str())),
        files: MappingFiles::from([(own, edited)]),
    };
    let mut times = Vec::with_capacity(rounds);
    let mut losing = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let plan = app.plan_mappings(&change).await?;
        times.push(t.elapsed());
        losing = plan.totals.users_losing;
    }
    // The floor, in the same run.
    let mut floors = Vec::with_capacity(rounds);
    let loaded = app.mappings().current();
    let compiled = loaded
        .set
        .tenant(&mapping::TenantName::new(name.as_str()))
        .ok_or_else(|| anyhow::anyhow!("bench tenant not mapped"))?;
    for _ in 0..rounds {
        let t = Instant::now();
        let directory = store.directory(tenant.id).await?;
        let result = mapping::compute_tenant(compiled, &user_facts(&directory));
        floors.push(t.elapsed());
        anyhow::ensure!(
            result.users().count() == n,
            "floor computed a partial tenant"
        );
    }
    times.sort();
    floors.sort();
    let p50 = times[times.len() / 2];
    let max = times[times.len() - 1];
    let floor = floors[floors.len() / 2];
    println!(
        "| {n} | {:.3} s | {:.3} s | {:.3} s | {:.2} | {losing} | < {} s at 10,000 users | {} |",
        p50.as_secs_f64(),
        max.as_secs_f64(),
        floor.as_secs_f64(),
        p50.as_secs_f64() / floor.as_secs_f64(),
        GOAL.as_secs(),
        if n > 10_000 {
            "(beyond the goal's size)"
        } else if max < GOAL {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}
