//! One run of one source: lease, read, plan, guard, apply, record.

use serde::Serialize;

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use futures_util::FutureExt;
use tracing::Instrument;

use super::plan::{self, Counts, PlanInput};
use super::{guard, CursorUpdate};
use crate::app::{user_facts, App};
use crate::domain::{Clock, ResourceId, TenantId, Timestamp};
use crate::store::{Directory, SyncLink, SyncRunRecord, SyncState};
use crate::sync::entra::EntraSource;
use crate::sync::ldap::LdapSource;
use crate::sync::{Batch, ReadOutcome, ReadRequest, Source, SourceConfig, SourceError, SourceKind};

/// How a run was asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Read and plan, print the diff, change nothing (not even the cursor).
    pub dry_run: bool,
    /// Apply deletions the guard would hold (after an admin looked at the
    /// held run).
    pub confirm_deletes: bool,
    /// Read everything even if a cursor is saved.
    pub force_full: bool,
}

/// Whether a run read everything (and so reconciled deletions) or only what
/// changed since its cursor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunMode {
    #[default]
    Full,
    Incremental,
}

/// What became of a run that read its source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunOutcome {
    /// Its changes were written.
    Applied,
    /// The deletion guard held it: nothing was written.
    Held,
    /// `--dry-run`: nothing was written.
    DryRun,
    /// It read nothing to change.
    #[default]
    Unchanged,
}

impl RunMode {
    /// As in the JSON report and the run log.
    pub fn as_str(self) -> &'static str {
        match self {
            RunMode::Full => "full",
            RunMode::Incremental => "incremental",
        }
    }
}

impl RunOutcome {
    /// As in the JSON report and the run log (`sync_runs.outcome`, which
    /// also holds `failed` for runs that never got this far).
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Applied => "applied",
            RunOutcome::Held => "held",
            RunOutcome::DryRun => "dry-run",
            RunOutcome::Unchanged => "unchanged",
        }
    }
}

impl std::fmt::Display for RunMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a run did (or, for a dry run or a held run, would do).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RunReport {
    pub source: String,
    pub tenant: String,
    pub mode: RunMode,
    pub outcome: RunOutcome,
    /// Users, groups and memberships created, changed and removed; flat in
    /// the JSON report.
    #[serde(flatten)]
    pub counts: Counts,
    /// Users whose effective permissions changed (0 when the tenant has no
    /// mapping).
    pub permission_changes: u64,
    /// Entries not applied, with the reason (a userName taken by a resource
    /// another source or SCIM owns, a member that names nothing).
    pub skipped: Vec<String>,
    /// Why the guard held the run, when it did.
    pub held_reason: Option<String>,
    /// One line per change, for `--dry-run` and held runs.
    pub diff: Vec<String>,
    pub entries_read: u64,
    pub elapsed_ms: u64,
    /// Where the time went: reading the source, loading the stored state
    /// and planning, and the write transaction.
    pub read_ms: u64,
    pub plan_ms: u64,
    pub apply_ms: u64,
}

/// Why a run failed. None of these changes anything.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("source '{source_name}': {error}")]
    Source {
        source_name: String,
        #[source]
        error: SourceError,
    },
    #[error("source '{0}' is already running (another process holds its lease)")]
    Busy(String),
    /// The run panicked (a bug, or a library's decoder on malformed server
    /// input); nothing was applied.
    #[error("source '{source_name}': the run panicked: {message}")]
    Panicked {
        source_name: String,
        message: String,
    },
    #[error("tenant '{0}' does not exist; create it with `rolebridge tenant create`")]
    UnknownTenant(String),
    #[error(transparent)]
    App(#[from] crate::app::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

impl SyncError {
    /// A panic caught in the run, with its message when it has one.
    fn panicked(source_name: &str, payload: &(dyn std::any::Any + Send)) -> SyncError {
        SyncError::Panicked {
            source_name: source_name.to_string(),
            message: crate::telemetry::panic_message(payload)
                .unwrap_or("a panic without a message")
                .to_string(),
        }
    }
}

/// Diff lines kept per run in the run log.
const LOGGED_DIFF_LINES: usize = 1000;

fn capped(diff: &[String]) -> Vec<String> {
    let mut out: Vec<String> = diff.iter().take(LOGGED_DIFF_LINES).cloned().collect();
    if diff.len() > LOGGED_DIFF_LINES {
        out.push(format!(
            "... and {} more (run `sync --dry-run --json` for all)",
            diff.len() - LOGGED_DIFF_LINES
        ));
    }
    out
}

/// A source's run lease. A live run renews it every `renew_every`; a
/// process that died stops renewing, so its lease expires within `ttl` and
/// the next run can take the source. A run that ends in any way (a panic
/// included) releases it at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncLease {
    pub ttl: std::time::Duration,
    pub renew_every: std::time::Duration,
}

impl Default for SyncLease {
    /// A minute, renewed every 20 s: three chances before it expires.
    fn default() -> Self {
        SyncLease {
            ttl: std::time::Duration::from_secs(60),
            renew_every: std::time::Duration::from_secs(20),
        }
    }
}

/// Renews a run's lease until dropped (the run ended), so only a dead
/// process leaves a lease to expire.
struct LeaseKeeper(tokio::task::JoinHandle<()>);

impl LeaseKeeper {
    fn start(
        store: crate::store::Store,
        clock: std::sync::Arc<dyn Clock>,
        lease: SyncLease,
        source: String,
        owner: String,
    ) -> LeaseKeeper {
        LeaseKeeper(tokio::spawn(async move {
            let mut tick = tokio::time::interval(lease.renew_every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(until) = clock.now().checked_add(lease.ttl) else {
                    continue;
                };
                match store.renew_sync_lease(&source, &owner, until).await {
                    Ok(true) => {}
                    Ok(false) => {
                        // Another run holds the source now; this run's
                        // apply will be refused (save_sync_cursor checks).
                        tracing::warn!(source, "sync lease lost to another run");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(source, error = %e, "sync lease renewal failed; retrying")
                    }
                }
            }
        }))
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reports entries read so far (the CLI draws a progress bar with it).
pub type Progress = std::sync::Arc<dyn Fn(u64) + Send + Sync>;

/// Runs one source once.
pub async fn run_source(
    app: &App,
    config: &SourceConfig,
    options: RunOptions,
) -> Result<RunReport, SyncError> {
    run_source_with_progress(app, config, options, None).await
}

/// Runs one source once, reporting progress. Takes the source's lease (so
/// no two runs of one source overlap, in any process), records the run in
/// `sync_runs` whatever its result, and releases the lease.
pub async fn run_source_with_progress(
    app: &App,
    config: &SourceConfig,
    options: RunOptions,
    progress: Option<Progress>,
) -> Result<RunReport, SyncError> {
    let mut source = AnySource::new(&config.kind).map_err(|error| SyncError::Source {
        source_name: config.name.clone(),
        error,
    })?;
    run_with_source(app, config, &mut source, options, progress).await
}

/// Runs `config` once, reading from `source` (which must be the directory
/// `config` describes; `run_source` builds it from the config).
pub async fn run_with_source<S: Source>(
    app: &App,
    config: &SourceConfig,
    source: &mut S,
    options: RunOptions,
    progress: Option<Progress>,
) -> Result<RunReport, SyncError> {
    // Every log line of the run carries its source and run id, the id
    // `sync_runs` records it under.
    let run_id = uuid::Uuid::new_v4().to_string();
    let span = tracing::info_span!("sync_run", source = %config.name, run_id = %run_id);
    run_in_span(app, config, source, options, progress, run_id)
        .instrument(span)
        .await
}

async fn run_in_span<S: Source>(
    app: &App,
    config: &SourceConfig,
    source: &mut S,
    options: RunOptions,
    progress: Option<Progress>,
    run_id: String,
) -> Result<RunReport, SyncError> {
    let clock = Instant::now();
    let tenant = app
        .store
        .tenant_by_name(&config.tenant)
        .await?
        .ok_or_else(|| SyncError::UnknownTenant(config.tenant.to_string()))?;
    let owner = format!("{}:{}", std::process::id(), uuid::Uuid::new_v4());
    let asked = app.clock().now();
    let until = asked
        .checked_add(app.sync_lease.ttl)
        .ok_or_else(|| SyncError::Busy(config.name.clone()))?;
    if !app
        .store
        .acquire_sync_lease(&config.name, &owner, asked, until)
        .await?
    {
        return Err(SyncError::Busy(config.name.clone()));
    }
    // The run log's interval lies inside the lease: `started` once it is
    // held, `finished` before it is released. Read before the acquire, a
    // run that took the lease the moment another released it was logged
    // as starting before that one finished.
    let started = app.clock().now();
    let keeper = LeaseKeeper::start(
        app.store.clone(),
        app.clock.clone(),
        app.sync_lease,
        config.name.clone(),
        owner.clone(),
    );
    // A panic anywhere in the run (ldap3's decoders panic on some malformed
    // server replies) fails this run like any error: recorded, lease
    // released, the schedule going on.
    let result = std::panic::AssertUnwindSafe(run_leased(
        app, config, source, tenant.id, options, progress, started, &owner, &run_id,
    ))
    .catch_unwind()
    .await
    .unwrap_or_else(|payload| Err(SyncError::panicked(&config.name, payload.as_ref())));
    drop(keeper);
    let finished = app.clock().now();
    let released = app.store.release_sync_lease(&config.name, &owner).await;
    let (outcome, report_json, error) = match &result {
        Ok(r) => (
            r.outcome.as_str().to_string(),
            serde_json::to_string(&RunReport {
                elapsed_ms: clock.elapsed().as_millis() as u64,
                // The log keeps the start of a long diff; `--dry-run --json`
                // shows all of it.
                diff: capped(&r.diff),
                ..r.clone()
            })
            .unwrap_or_default(),
            None,
        ),
        Err(e) => ("failed".to_string(), "{}".to_string(), Some(e.to_string())),
    };
    app.sync_metrics.record(&config.name, &outcome);
    if !options.dry_run || result.is_err() {
        app.store
            .record_sync_run(&SyncRunRecord {
                id: run_id,
                source: config.name.clone(),
                started,
                finished,
                outcome,
                report: report_json,
                error,
            })
            .await?;
    }
    released?;
    let mut report = result?;
    report.elapsed_ms = clock.elapsed().as_millis() as u64;
    Ok(report)
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
async fn run_leased<S: Source>(
    app: &App,
    config: &SourceConfig,
    source: &mut S,
    tenant: TenantId,
    options: RunOptions,
    progress: Option<Progress>,
    started: Timestamp,
    owner: &str,
    run_id: &str,
) -> Result<RunReport, SyncError> {
    let state = app.store.sync_state(&config.name).await?;
    let reconcile_due = state
        .last_full
        .is_none_or(|at| started.since(at) >= config.full_every);
    // A source pointed at another tenant since its last run: its cursor
    // describes what the old tenant holds, so the new one is read in full,
    // and the old tenant's links are released with the run.
    // The tenant saved with the cursor answers that without reading links;
    // state from before the column (or a first run) asks the links.
    let moved_from = if state.tenant == Some(tenant) {
        Vec::new()
    } else {
        app.store
            .sync_link_tenants_besides(&config.name, tenant)
            .await?
    };
    if !moved_from.is_empty() {
        tracing::warn!(source = %config.name, from = ?moved_from, "the source now syncs another tenant; reading in full");
    }
    let mut full =
        options.force_full || state.cursor.is_none() || reconcile_due || !moved_from.is_empty();
    let source_error = |error| SyncError::Source {
        source_name: config.name.clone(),
        error,
    };
    let new_batch = || {
        let batch = Batch::new();
        match &progress {
            Some(p) => {
                let p = p.clone();
                batch.with_progress(move |n| p(n))
            }
            None => batch,
        }
    };
    let mut batch = new_batch();
    let phase = Instant::now();
    // A complete read is planned against everything the source holds. When
    // the run reads in full from the start, that state loads while the
    // source is read: the read waits on the directory server, the load on
    // the database (at 100,000 users each took about a second, one after
    // the other). Dropped unfinished if the read fails. The stored state is
    // then as of the read's start, not its end: a resource a SCIM client
    // deletes meanwhile is planned as an update, which the apply finds gone
    // and skips (the next run creates it again), as it always has for a
    // deletion between the plan and the apply.
    let preload = full.then(|| Preload::start(app, &config.name, tenant));
    let request = ReadRequest {
        full,
        cursor: if full { None } else { state.cursor.clone() },
    };
    let outcome = match source.read(&request, &mut batch).await {
        Err(SourceError::CursorExpired) if !full => {
            tracing::warn!(source = %config.name, "saved cursor expired; running a full resync");
            full = true;
            batch = new_batch();
            source
                .read(
                    &ReadRequest {
                        full: true,
                        cursor: None,
                    },
                    &mut batch,
                )
                .await
                .map_err(source_error)?
        }
        other => other.map_err(source_error)?,
    };
    let read_ms = phase.elapsed().as_millis() as u64;
    tracing::debug!(
        read_ms,
        peak_rss_kib = crate::telemetry::peak_rss_kib(),
        "sync read done"
    );
    let phase = Instant::now();
    // A complete read is planned against everything the source holds (it
    // finds what vanished); an incremental one against what its batch
    // names, so it costs what it changed.
    let (links, mut before) = if outcome.complete {
        match preload {
            Some(preload) => preload.finish(&config.name).await?,
            None => Preload::load(app.store.clone(), config.name.clone(), tenant).await?,
        }
    } else {
        drop(preload);
        let scope = app
            .store
            .sync_scope(&config.name, tenant, &plan::scope_keys(&batch))
            .await?;
        (scope.links, scope.directory)
    };
    // A grace period too long to represent deletes nothing.
    let delete_before = started.checked_sub(config.delete_after);
    let new_id = || ResourceId::generate().as_str().to_string();
    let entries_read = batch.received;
    let mut plan = plan::plan(
        &mut batch,
        &outcome,
        &PlanInput {
            source: &config.name,
            tenant,
            links: &links,
            before: &before,
            now: started,
            delete_before,
            new_id: &new_id,
        },
    );
    // The guard measures removals against what the source held: counted
    // here for a complete read, by the database for an incremental run
    // that removes anything (one that only adds and changes needs nothing).
    if outcome.complete {
        plan.measure(&plan::totals(&links, &before));
    } else if plan.removes_anything() {
        plan.measure(&app.store.link_totals(&config.name, tenant).await?);
    }
    tracing::debug!(
        peak_rss_kib = crate::telemetry::peak_rss_kib(),
        "sync plan done"
    );
    drop(batch);
    drop(links);
    let counts = plan.counts();
    let mut report = RunReport {
        source: config.name.clone(),
        tenant: config.tenant.to_string(),
        mode: if full {
            RunMode::Full
        } else {
            RunMode::Incremental
        },
        counts,
        skipped: plan.skipped.clone(),
        entries_read,
        read_ms,
        ..RunReport::default()
    };
    report.plan_ms = phase.elapsed().as_millis() as u64;
    let held = guard::check(&config.guard, &plan, &counts);
    // A preview (dry or held run) simulates the plan over the whole tenant,
    // twice; an applied run counts what its own commit changed instead.
    if options.dry_run || (held.is_some() && !options.confirm_deletes) {
        if !outcome.complete {
            before = app.store.directory(tenant).await?;
        }
        report.permission_changes = permission_changes(app, &config.tenant, &before, &plan);
    }
    if options.dry_run {
        report.outcome = RunOutcome::DryRun;
        report.held_reason = held;
        report.diff = plan.diff(&before);
        return Ok(report);
    }
    if let Some(reason) = held {
        if !options.confirm_deletes {
            tracing::warn!(source = %config.name, %reason, "sync run held by the deletion guard");
            report.outcome = RunOutcome::Held;
            report.held_reason = Some(reason);
            report.diff = plan.diff(&before);
            return Ok(report);
        }
        tracing::warn!(source = %config.name, %reason, "deletion guard overridden by --confirm-deletes");
    }
    // The stored directory is no longer needed: free it before the write,
    // and give the memory the read and the plan freed back, so the write's
    // page cache reuses it instead of adding to it.
    drop(before);
    crate::telemetry::return_freed_memory();
    let phase = Instant::now();
    let unchanged = plan.is_empty();
    let applied = app
        .apply_sync(
            tenant,
            &config.name,
            plan,
            CursorUpdate {
                lease_owner: owner,
                run_id,
                cursor: outcome.cursor.as_deref(),
                full_at: outcome.complete.then_some(started),
                release_other_tenants: !moved_from.is_empty(),
            },
        )
        .await?;
    report.apply_ms = phase.elapsed().as_millis() as u64;
    tracing::debug!(
        apply_ms = report.apply_ms,
        peak_rss_kib = crate::telemetry::peak_rss_kib(),
        "sync apply done"
    );
    report.permission_changes = applied.permissions_changed as u64;
    report.skipped.extend(applied.skipped);
    report.outcome = if unchanged {
        RunOutcome::Unchanged
    } else {
        RunOutcome::Applied
    };
    Ok(report)
}

/// The stored state a complete read is planned against (the source's links
/// and the tenant's directory), loaded on a task of its own.
struct Preload(tokio::task::JoinHandle<Result<(Vec<SyncLink>, Directory), crate::store::Error>>);

impl Preload {
    fn start(app: &App, source: &str, tenant: TenantId) -> Preload {
        Preload(tokio::spawn(
            Preload::load(app.store.clone(), source.to_string(), tenant).in_current_span(),
        ))
    }

    async fn load(
        store: crate::store::Store,
        source: String,
        tenant: TenantId,
    ) -> Result<(Vec<SyncLink>, Directory), crate::store::Error> {
        let links = store.sync_links(&source, tenant).await?;
        let before = store.directory(tenant).await?;
        Ok((links, before))
    }

    /// The loaded state; a panic in the load fails the run as one in the
    /// run itself does.
    async fn finish(mut self, source: &str) -> Result<(Vec<SyncLink>, Directory), SyncError> {
        match (&mut self.0).await {
            Ok(loaded) => Ok(loaded?),
            Err(e) => Err(match e.try_into_panic() {
                Ok(payload) => SyncError::panicked(source, payload.as_ref()),
                Err(e) => SyncError::Panicked {
                    source_name: source.to_string(),
                    message: e.to_string(),
                },
            }),
        }
    }
}

impl Drop for Preload {
    /// A failed read stops the load it no longer needs.
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl App {
    /// A source's saved state: cursor, last reconcile, lease (`sync status`).
    pub async fn sync_state(&self, source: &str) -> Result<SyncState, SyncError> {
        Ok(self.store.sync_state(source).await?)
    }

    /// A source's most recent runs, newest first (`sync status`).
    pub async fn sync_runs(
        &self,
        source: &str,
        limit: i64,
    ) -> Result<Vec<SyncRunRecord>, SyncError> {
        Ok(self.store.sync_runs(source, limit).await?)
    }
}

/// Users whose effective permissions differ between the stored directory
/// and the directory the plan leads to; 0 when the tenant has no mapping.
fn permission_changes(
    app: &App,
    tenant: &crate::domain::TenantName,
    before: &crate::store::Directory,
    plan: &plan::Plan,
) -> u64 {
    if plan.is_empty() {
        return 0;
    }
    let loaded = app.mappings.current();
    let Some(compiled) = loaded
        .set
        .tenant(&mapping::TenantName::new(tenant.as_str()))
    else {
        return 0;
    };
    let after = plan.simulate(before);
    let a = mapping::compute_tenant(compiled, &user_facts(before));
    let b = mapping::compute_tenant(compiled, &user_facts(&after));
    let perms = |r: &mapping::TenantResult| -> HashMap<String, BTreeSet<String>> {
        r.users()
            .map(|u| {
                (
                    u.user_id.clone(),
                    u.permissions.iter().map(|p| p.to_string()).collect(),
                )
            })
            .collect()
    };
    let (pa, pb) = (perms(&a), perms(&b));
    let empty = BTreeSet::new();
    let ids: BTreeSet<&String> = pa.keys().chain(pb.keys()).collect();
    ids.into_iter()
        .filter(|id| pa.get(*id).unwrap_or(&empty) != pb.get(*id).unwrap_or(&empty))
        .count() as u64
}

/// A source of any kind, built from its config without IO. `serve` keeps
/// one per `[[source]]` across runs, so state a source caches between runs
/// (the Graph access token) outlives a run.
pub enum AnySource {
    Ldap(Box<LdapSource>),
    Entra(Box<EntraSource>),
}

impl AnySource {
    pub fn new(kind: &SourceKind) -> Result<Self, SourceError> {
        Ok(match kind {
            SourceKind::Ldap(c) => AnySource::Ldap(Box::new(LdapSource::new(c)?)),
            SourceKind::Entra(c) => AnySource::Entra(Box::new(EntraSource::new(c)?)),
        })
    }
}

impl Source for AnySource {
    async fn read(
        &mut self,
        request: &ReadRequest,
        batch: &mut Batch,
    ) -> Result<ReadOutcome, SourceError> {
        match self {
            AnySource::Ldap(s) => s.read(request, batch).await,
            AnySource::Entra(s) => s.read(request, batch).await,
        }
    }
}
