//! `rolebridge sync --source S [--dry-run] [--confirm-deletes] [--full] [--json]`
//! and `rolebridge sync status [--json]`.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::app::sync::{self as sync_run, RunOptions, RunOutcome, RunReport};
use crate::app::App;
use crate::config::Config;
use crate::store::Store;
use crate::sync::{self, SourceConfig};

/// Exit status of a run the deletion guard held: not a failure, but a
/// script must notice it.
pub const EXIT_HELD: i32 = 3;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SyncArgs {
    #[command(subcommand)]
    pub command: Option<SyncCommand>,
    /// The `[[source]]` to run, by name.
    #[arg(long)]
    pub source: Option<String>,
    /// Read and plan, print the changes, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply deletions and deactivations the deletion guard holds.
    #[arg(long)]
    pub confirm_deletes: bool,
    /// Read everything, even when an incremental cursor is saved.
    #[arg(long)]
    pub full: bool,
    /// Print the run report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum SyncCommand {
    /// Each source's last run, its result, the next run and any held run.
    Status {
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(config: &Config, args: SyncArgs) -> anyhow::Result<()> {
    let sources = sources(config)?;
    if let Some(SyncCommand::Status { json }) = args.command {
        let store = Store::connect(&config.database_url).await?;
        return status(&App::new(store), &sources, json).await;
    }
    let Some(name) = args.source else {
        bail!(
            "give --source NAME (one of: {}) or `sync status`",
            names(&sources)
        );
    };
    let Some(source) = sources.iter().find(|s| s.name == name) else {
        bail!(
            "no [[source]] named '{name}' (configured: {})",
            names(&sources)
        );
    };
    let app = super::open_with_mappings(config, false).await?;
    let bar = progress_bar();
    let progress: Option<sync_run::Progress> = bar.clone().map(|b| {
        Arc::new(move |n: u64| {
            if n % 256 == 0 {
                b.set_message(format!("{n} entries read"));
            }
        }) as sync_run::Progress
    });
    let options = RunOptions {
        dry_run: args.dry_run,
        confirm_deletes: args.confirm_deletes,
        force_full: args.full,
    };
    let result = sync_run::run_source_with_progress(&app, source, options, progress).await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    app.close().await;
    if report.outcome == RunOutcome::Held {
        std::process::exit(EXIT_HELD);
    }
    Ok(())
}

fn sources(config: &Config) -> anyhow::Result<Vec<SourceConfig>> {
    sync::parse_sources(&config.sources).map_err(|errors| {
        for e in &errors {
            eprintln!("{e}");
        }
        anyhow::anyhow!("{} error(s) in [[source]] configuration", errors.len())
    })
}

fn names(sources: &[SourceConfig]) -> String {
    if sources.is_empty() {
        return "none; add [[source]] tables to the --config file".into();
    }
    sources
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A spinner on a terminal; nothing when stderr is redirected.
fn progress_bar() -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar.set_message("connecting");
    Some(bar)
}

fn print_report(r: &RunReport) {
    let shown = 200;
    if matches!(r.outcome, RunOutcome::DryRun | RunOutcome::Held) {
        for line in r.diff.iter().take(shown) {
            println!("{line}");
        }
        if r.diff.len() > shown {
            println!(
                "... and {} more change(s) (--json lists all)",
                r.diff.len() - shown
            );
        }
    }
    println!(
        "sync {} (tenant {}, {}): {} in {:.2} s, {} entries read",
        r.source,
        r.tenant,
        r.mode,
        r.outcome,
        r.elapsed_ms as f64 / 1000.0,
        r.entries_read
    );
    println!(
        "  users: {} created, {} updated, {} deactivated, {} reactivated, {} deleted",
        r.counts.users_created,
        r.counts.users_updated,
        r.counts.users_deactivated,
        r.counts.users_reactivated,
        r.counts.users_deleted
    );
    println!(
        "  groups: {} created, {} updated, {} deleted",
        r.counts.groups_created, r.counts.groups_updated, r.counts.groups_deleted
    );
    println!(
        "  memberships: {} added, {} removed",
        r.counts.members_added, r.counts.members_removed
    );
    println!("  permission changes: {} user(s)", r.permission_changes);
    for s in &r.skipped {
        println!("  skipped: {s}");
    }
    match r.outcome {
        RunOutcome::DryRun => {
            if let Some(reason) = &r.held_reason {
                println!("  the deletion guard would hold this run: {reason}");
            }
            println!("dry run: nothing was changed");
        }
        RunOutcome::Held => {
            println!(
                "HELD by the deletion guard: {}",
                r.held_reason.as_deref().unwrap_or("")
            );
            println!(
                "nothing was changed; to apply: rolebridge sync --source {} --confirm-deletes",
                r.source
            );
        }
        _ => {}
    }
}

async fn status(app: &App, sources: &[SourceConfig], as_json: bool) -> anyhow::Result<()> {
    let mut out = Vec::new();
    for s in sources {
        let runs = app
            .sync_runs(&s.name, 20)
            .await
            .with_context(|| format!("reading the run log of '{}'", s.name))?;
        let state = app.sync_state(&s.name).await?;
        let last = runs
            .iter()
            .find(|r| r.outcome != RunOutcome::DryRun.as_str());
        // A failed run after a held one leaves it held: only an applied
        // (or confirmed) run ends the hold.
        let held = runs
            .iter()
            .find(|r| r.outcome != RunOutcome::DryRun.as_str() && r.outcome != "failed")
            .filter(|r| r.outcome == RunOutcome::Held.as_str())
            .map(|r| {
                serde_json::from_str::<serde_json::Value>(&r.report)
                    .ok()
                    .and_then(|v| {
                        v.get("held_reason")
                            .and_then(|h| h.as_str())
                            .map(String::from)
                    })
                    .unwrap_or_default()
            });
        let next = last.and_then(|r| r.finished.checked_add(s.schedule));
        let now = app.clock().now();
        let running = state.lease_until.is_some_and(|until| until > now);
        out.push(json!({
            "source": s.name,
            "kind": s.kind.name(),
            "tenant": s.tenant.as_str(),
            "schedule_seconds": s.schedule.as_secs(),
            "running": running,
            "last_run": last.map(|r| json!({
                "started": r.started,
                "finished": r.finished,
                "outcome": r.outcome,
                "error": r.error,
                "report": serde_json::from_str::<serde_json::Value>(&r.report).unwrap_or_default(),
            })),
            "next_run": next,
            "held": held,
            "last_full_reconcile": state.last_full,
            "has_cursor": state.cursor.is_some(),
        }));
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if out.is_empty() {
        println!("no [[source]] configured");
    }
    for s in &out {
        let last = &s["last_run"];
        println!(
            "{} ({}, tenant {}){}",
            s["source"].as_str().unwrap_or(""),
            s["kind"].as_str().unwrap_or(""),
            s["tenant"].as_str().unwrap_or(""),
            if s["running"].as_bool() == Some(true) {
                " [running]"
            } else {
                ""
            }
        );
        if last.is_null() {
            println!("  last run: never");
        } else {
            println!(
                "  last run: {} at {}{}",
                last["outcome"].as_str().unwrap_or(""),
                last["finished"].as_str().unwrap_or(""),
                last["error"]
                    .as_str()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
            let r = &last["report"];
            if r.get("users_created").is_some() {
                println!(
                    "    users +{} ~{} deactivated {} deleted {}; groups +{} ~{} -{}; members +{} -{}",
                    r["users_created"], r["users_updated"], r["users_deactivated"],
                    r["users_deleted"], r["groups_created"], r["groups_updated"],
                    r["groups_deleted"], r["members_added"], r["members_removed"]
                );
            }
        }
        println!(
            "  next run: {}",
            s["next_run"]
                .as_str()
                .unwrap_or("at the next `serve` start")
        );
        if let Some(reason) = s["held"].as_str() {
            println!("  HELD: {reason}");
            println!(
                "    apply with: rolebridge sync --source {} --confirm-deletes",
                s["source"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}
