//! `rolebridge mappings …`: validate a directory, and the operator's side of
//! versioned mappings (plan, apply, history, show, diff, rollback, audit).
//! The GitOps path: CI runs `mappings plan DIR`, a reviewer reads it, and
//! `mappings apply DIR --confirm HASH` applies exactly what was reviewed.

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::{Args, Subcommand};

use crate::app::mappings::{
    operator, read_dir, tenant_file, under, ChangeScope, MappingChange, MappingFiles, MappingPlan,
};
use crate::app::App;
use crate::config::Config;
use crate::domain::MappingVersion;

#[derive(Debug, Subcommand)]
pub enum MappingsCommand {
    /// Validate every catalog and tenant file; print each error as
    /// file:line:column and exit 1 on any.
    Validate {
        /// The mappings directory (default: --mappings, else ./mappings).
        dir: Option<PathBuf>,
    },
    /// Show what applying DIR would change, per user, against the live
    /// directory: roles, profiles and permissions gained and lost.
    Plan(ChangeArgs),
    /// Apply DIR as the next mapping version. Refused when the guard trips
    /// unless confirmed with the plan's hash.
    Apply(ChangeArgs),
    /// Versions, newest first.
    History {
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// One version's files.
    Show {
        version: i64,
        /// Print only this file (e.g. tenants/acme.yaml).
        #[arg(long)]
        file: Option<String>,
    },
    /// Unified diff between two versions.
    Diff { from: i64, to: i64 },
    /// Apply a new version equal to VERSION (planned and guarded like any
    /// other change).
    Rollback {
        version: i64,
        /// Roll back only this tenant's file.
        #[arg(long)]
        tenant: Option<String>,
        /// Only plan it.
        #[arg(long)]
        plan: bool,
        #[arg(long)]
        base: Option<i64>,
        #[arg(long)]
        confirm: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Who changed what and when, newest first.
    Audit {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct ChangeArgs {
    /// The mappings directory (catalogs/ and tenants/).
    pub dir: PathBuf,
    /// Change only this tenant's file (tenants/T.yaml from DIR), as that
    /// tenant's admin would.
    #[arg(long)]
    pub tenant: Option<String>,
    /// The version the change edits (default: the newest at the time of
    /// the command; a confirmed apply is pinned by its hash anyway).
    #[arg(long)]
    pub base: Option<i64>,
    /// The plan's hash, from `mappings plan`: required when the guard trips.
    #[arg(long)]
    pub confirm: Option<String>,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(config: &Config, cmd: MappingsCommand) -> anyhow::Result<()> {
    if let MappingsCommand::Validate { dir } = &cmd {
        return validate(dir.as_deref().unwrap_or(&config.mappings));
    }
    let app = super::open_with_mappings(config, false).await?;
    match cmd {
        MappingsCommand::Validate { .. } => unreachable!("handled above"),
        MappingsCommand::Plan(args) => {
            let change = change_from_dir(&app, &args).await?;
            let plan = app
                .plan_mappings(&change)
                .await
                .map_err(|e| located(e, &args.dir))?;
            print_plan(&plan, args.json)?;
        }
        MappingsCommand::Apply(args) => {
            let change = change_from_dir(&app, &args).await?;
            let applied = app
                .apply_mappings(&change, args.confirm.as_deref(), &operator())
                .await
                .map_err(|e| located(e, &args.dir))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&applied)?);
            } else {
                print_plan(&applied.plan, false)?;
                println!(
                    "applied as {} ({} tenant(s) recomputed)",
                    applied.version, applied.tenants_recomputed
                );
            }
        }
        MappingsCommand::History { limit, json } => {
            let versions = app.mapping_history(limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&versions)?);
            } else {
                for v in versions {
                    println!(
                        "{}\t{}\t{}\t{}{}\t{}",
                        v.version,
                        v.created,
                        v.origin.as_str(),
                        v.actor.id,
                        v.actor
                            .label
                            .as_deref()
                            .map(|l| format!(" ({l})"))
                            .unwrap_or_default(),
                        v.rollback_of
                            .map(|r| format!("rollback of {r}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        MappingsCommand::Show { version, file } => {
            let v = app
                .mapping_version(MappingVersion(version), &ChangeScope::Operator)
                .await?;
            match file {
                Some(f) => match v.files.get(&f) {
                    Some(text) => print!("{text}"),
                    None => bail!("version {} has no file '{f}'", v.version),
                },
                None => {
                    for (name, text) in &v.files {
                        println!("--- {name}");
                        print!("{text}");
                    }
                }
            }
        }
        MappingsCommand::Diff { from, to } => {
            let d = app
                .mapping_diff(
                    MappingVersion(from),
                    MappingVersion(to),
                    &ChangeScope::Operator,
                )
                .await?;
            for f in d.files {
                print!("{}", f.diff);
            }
        }
        MappingsCommand::Rollback {
            version,
            tenant,
            plan,
            base,
            confirm,
            json,
        } => {
            let scope = scope_of(tenant.as_deref())?;
            let base = match base {
                Some(b) => Some(MappingVersion(b)),
                None => app.latest_mapping_version().await?,
            };
            let to = MappingVersion(version);
            if plan {
                let change = app.rollback_change(to, base, scope).await?;
                print_plan(&app.plan_mappings(&change).await?, json)?;
            } else {
                let applied = app
                    .rollback_mappings(to, base, scope, confirm.as_deref(), &operator())
                    .await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&applied)?);
                } else {
                    print_plan(&applied.plan, false)?;
                    println!("rolled back to {to} as {}", applied.version);
                }
            }
        }
        MappingsCommand::Audit {
            tenant,
            limit,
            json,
        } => {
            let records = app.mapping_audit(tenant.as_deref(), limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else {
                for r in records {
                    println!(
                        "{}\t{}\t{}{}\t{}\tbase {}\t{}\t{}",
                        r.at,
                        r.action.as_str(),
                        r.actor.id,
                        r.actor
                            .label
                            .as_deref()
                            .map(|l| format!(" ({l})"))
                            .unwrap_or_default(),
                        r.tenant.as_deref().unwrap_or("(all tenants)"),
                        r.base.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
                        r.version
                            .map(|v| v.to_string())
                            .unwrap_or_else(|| "-".into()),
                        r.detail.as_deref().unwrap_or("")
                    );
                }
            }
        }
    }
    Ok(())
}

/// Validation errors of a directory's files: each on its own line on
/// stderr, at its path under `dir`; other errors as they are.
fn located(e: crate::app::Error, dir: &Path) -> anyhow::Error {
    match e {
        crate::app::Error::MappingInvalid(errors) => {
            let errors = under(dir, errors);
            for e in &errors {
                eprintln!("{e}");
            }
            anyhow::anyhow!("{} error(s) in mappings '{}'", errors.len(), dir.display())
        }
        other => other.into(),
    }
}

fn validate(dir: &Path) -> anyhow::Result<()> {
    let loaded = super::load_mappings(dir)?.current();
    let set = &loaded.set;
    println!(
        "ok: {} catalog(s), {} tenant mapping(s) in {}",
        set.catalogs().len(),
        set.tenants().len(),
        dir.display()
    );
    Ok(())
}

fn scope_of(tenant: Option<&str>) -> anyhow::Result<ChangeScope> {
    Ok(match tenant {
        Some(t) => ChangeScope::Tenant(mapping::TenantName::new(
            crate::domain::TenantName::parse(t)?.as_str(),
        )),
        None => ChangeScope::Operator,
    })
}

/// The change DIR proposes: the whole set, or one tenant's file.
async fn change_from_dir(app: &App, args: &ChangeArgs) -> anyhow::Result<MappingChange> {
    if !args.dir.is_dir() {
        bail!("mappings directory '{}' does not exist", args.dir.display());
    }
    let files = read_dir(&args.dir).map_err(|errors| {
        for e in &errors {
            eprintln!("{e}");
        }
        anyhow::anyhow!("{} error(s) reading '{}'", errors.len(), args.dir.display())
    })?;
    let scope = scope_of(args.tenant.as_deref())?;
    let files = match &scope {
        ChangeScope::Operator => files,
        ChangeScope::Tenant(t) => {
            let own = tenant_file(t.as_str());
            let Some(text) = files.get(&own) else {
                bail!("'{}' has no {own}", args.dir.display());
            };
            MappingFiles::from([(own, text.clone())])
        }
    };
    let base = match args.base {
        Some(b) => Some(MappingVersion(b)),
        None => app.latest_mapping_version().await?,
    };
    Ok(MappingChange { base, scope, files })
}

fn print_plan(plan: &MappingPlan, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(plan)?);
        return Ok(());
    }
    println!(
        "plan against {}: {} file(s) changed",
        plan.base
            .map(|v| v.to_string())
            .unwrap_or_else(|| "no version".into()),
        plan.files_changed.len()
    );
    for f in &plan.files_changed {
        println!("  {f}");
    }
    for t in &plan.tenants {
        println!(
            "tenant {} ({} → {}): {} users, {} change, {} gain, {} lose; {} permission grant(s) added, {} removed, {} newly refused",
            t.tenant,
            t.catalog_before.as_deref().unwrap_or("unmapped"),
            t.catalog_after.as_deref().unwrap_or("unmapped"),
            t.totals.users,
            t.totals.users_changed,
            t.totals.users_gaining,
            t.totals.users_losing,
            t.totals.permissions_gained,
            t.totals.permissions_lost,
            t.totals.newly_refused,
        );
        for u in &t.users {
            let mut parts = Vec::new();
            for (sign, what, list) in [
                ("+", "role", &u.roles_gained),
                ("-", "role", &u.roles_lost),
                ("+", "profile", &u.profiles_gained),
                ("-", "profile", &u.profiles_lost),
                ("+", "permission", &u.permissions_gained),
                ("-", "permission", &u.permissions_lost),
            ] {
                for x in list {
                    parts.push(format!("{sign}{what} {x}"));
                }
            }
            for r in &u.newly_refused {
                parts.push(format!("refused {r}"));
            }
            println!("  {}: {}", u.user_name, parts.join(", "));
        }
        for p in &t.protected {
            println!(
                "  protected role {}: {} holder(s) → {}",
                p.role, p.holders_before, p.holders_after
            );
        }
    }
    if plan.guard.is_empty() {
        println!("guard: passes");
    } else {
        for r in &plan.guard {
            println!("guard: {r}");
        }
        println!("guard: apply with --confirm {}", plan.hash);
    }
    println!("plan hash: {}", plan.hash);
    Ok(())
}
