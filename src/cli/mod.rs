//! The command line: `serve`, `tenant`, `token` and `bench`. Other tools
//! drive this exact interface, so flags and output formats are stable.

mod bench;
mod bench_checks;
mod bench_plan;
mod bench_reference;
mod bench_webhooks;
mod changes;
mod mappings;
mod sync;
mod webhooks;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::app::{App, Mappings, UserRef};
use crate::config::{Config, Overrides};
use crate::domain::{Scope, TenantName};
use crate::store::{self, Store};

#[derive(Debug, Parser)]
#[command(
    name = "rolebridge",
    version,
    about = "Identity provisioning bridge: SCIM 2.0 in, effective permissions out"
)]
pub struct Cli {
    /// Database: sqlite://PATH (default sqlite://data/rolebridge.db) or postgres://...
    #[arg(long, env = "ROLEBRIDGE_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Optional TOML file with the same keys and `[[source]]` tables.
    #[arg(long, env = "ROLEBRIDGE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long, env = "ROLEBRIDGE_LISTEN", global = true)]
    pub listen: Option<String>,
    /// Redis for the shared permissions cache (default: in-process cache).
    #[arg(long, env = "ROLEBRIDGE_REDIS_URL", global = true)]
    pub redis_url: Option<String>,
    /// Directory of mapping files (default ./mappings).
    #[arg(long, env = "ROLEBRIDGE_MAPPINGS", global = true)]
    pub mappings: Option<PathBuf>,
    /// Log lines on stderr: text, or one JSON object per line.
    #[arg(long, env = "ROLEBRIDGE_LOG_FORMAT", global = true, value_enum, default_value_t = crate::telemetry::LogFormat::Text)]
    pub log_format: crate::telemetry::LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service.
    Serve,
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Mapping files and versions: validate, plan, apply, history, rollback, audit.
    #[command(subcommand)]
    Mappings(mappings::MappingsCommand),
    /// Explain a user's permissions: group -> rule -> role/profile -> permission.
    Explain(ExplainArgs),
    /// Measure the service; prints figures.
    Bench(bench::BenchArgs),
    /// Run a directory source once (`--source S`), or show every source's
    /// state (`sync status`).
    Sync(sync::SyncArgs),
    /// The effective-permission change feed (`changes tail`).
    #[command(subcommand)]
    Changes(changes::ChangesCommand),
    /// Webhook endpoints: add, status, dead letters, rotate, remove.
    #[command(subcommand)]
    Webhooks(webhooks::WebhooksCommand),
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[arg(long)]
    pub tenant: String,
    /// SCIM id or userName.
    #[arg(long)]
    pub user: String,
    /// Explain only this permission (granted or not).
    #[arg(long)]
    pub permission: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant.
    Create { name: String },
    /// List tenants.
    List,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it, alone, on stdout. It is shown only once.
    Create(TokenCreate),
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a token by id.
    Revoke { id: String },
}

#[derive(Debug, Args)]
pub struct TokenCreate {
    #[arg(long)]
    pub tenant: String,
    #[arg(long, value_enum)]
    pub scope: Scope,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(
        cli.config.as_deref(),
        Overrides {
            listen: cli.listen,
            database_url: cli.database_url,
            redis_url: cli.redis_url,
            mappings: cli.mappings,
        },
    )?;
    match cli.command {
        Command::Serve => serve(config, cli.log_format).await,
        Command::Tenant(cmd) => tenant(&config, cmd).await,
        Command::Token(cmd) => token(&config, cmd).await,
        Command::Mappings(cmd) => mappings::run(&config, cmd).await,
        Command::Explain(args) => explain(&config, args).await,
        Command::Bench(args) => bench::run(&config, args).await,
        Command::Sync(args) => sync::run(&config, args).await,
        Command::Changes(cmd) => changes::run(&config, cmd).await,
        Command::Webhooks(cmd) => webhooks::run(&config, cmd).await,
    }
}

/// Prefix of every Redis key rolebridge writes.
pub const REDIS_PREFIX: &str = "rolebridge:";

async fn open(config: &Config) -> anyhow::Result<App> {
    let store = Store::connect(&config.database_url).await?;
    Ok(App::new(store).with_webhook_settings(config.webhooks.clone()))
}

/// Loads the mapping directory, refusing to go on with an invalid one.
pub(crate) fn load_mappings(dir: &Path) -> anyhow::Result<Mappings> {
    if !dir.is_dir() {
        bail!("mappings directory '{}' does not exist", dir.display());
    }
    Mappings::load(dir).map_err(|errors| {
        for e in &errors {
            eprintln!("{e}");
        }
        anyhow::anyhow!("{} error(s) in mappings '{}'", errors.len(), dir.display())
    })
}

/// The app with the mappings in force: the store's newest version when it
/// holds one, else the mapping directory (when it exists). `serve` passes
/// `import`, which records the directory as version 1 of an empty store.
pub(crate) async fn open_with_mappings(config: &Config, import: bool) -> anyhow::Result<App> {
    let store = Store::connect(&config.database_url).await?;
    let mappings = if config.mappings.is_dir() {
        load_mappings(&config.mappings)?
    } else if import {
        bail!(
            "mappings directory '{}' does not exist",
            config.mappings.display()
        );
    } else {
        Mappings::empty()
    };
    let app = App::with_mappings(store, mappings)
        .with_mapping_guard(config.mapping_guard.clone())
        .with_webhook_settings(config.webhooks.clone());
    if import {
        let (version, warning) = app.adopt_store_mappings().await?;
        if let Some(w) = warning {
            tracing::warn!("{w}");
        }
        tracing::info!(version = %version, "mappings in force");
    } else {
        app.use_store_mappings().await?;
    }
    Ok(app)
}

async fn explain(config: &Config, args: ExplainArgs) -> anyhow::Result<()> {
    let app = open_with_mappings(config, false).await?;
    let tenant = app.tenant(&TenantName::parse(&args.tenant)?).await?;
    let (result, user_id) = app
        .permissions(&tenant, &UserRef::IdOrUserName(args.user.clone()))
        .await?;
    let permission = match &args.permission {
        Some(p) => Some(app.known_permission(&tenant, p)?),
        None => None,
    };
    let explanation = mapping::explain(&result, &user_id, permission.as_ref())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&explanation)?);
    } else {
        print!("{explanation}");
    }
    Ok(())
}

async fn serve(config: Config, log_format: crate::telemetry::LogFormat) -> anyhow::Result<()> {
    let sources = crate::sync::parse_sources(&config.sources).map_err(|errors| {
        for e in &errors {
            eprintln!("{e}");
        }
        anyhow::anyhow!("{} error(s) in [[source]] configuration", errors.len())
    })?;
    let mut app = open_with_mappings(&config, true).await?;
    if let Some(url) = &config.redis_url {
        app = app
            .with_redis(url, REDIS_PREFIX)
            .map_err(|e| anyhow::anyhow!("invalid --redis-url: {e}"))?;
    }
    spawn_follow_mapping_versions(app.clone(), config.mapping_poll);
    spawn_reconcile(app.clone());
    let delivery = crate::app::webhooks::spawn_delivery(app.clone());
    spawn_prune_changes(app.clone(), config.change_retention);
    for source in sources {
        spawn_sync_schedule(app.clone(), source);
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        database = %store::redact_url(&config.database_url),
        address = %format!("http://{addr}"),
        "rolebridge listening on http://{addr}"
    );
    // Tools that start the server on port 0 read the address from this
    // line; in JSON mode every line is JSON, so they read `fields.address`
    // of the line above instead.
    if log_format == crate::telemetry::LogFormat::Text {
        eprintln!("rolebridge listening on http://{addr}");
    }
    // SIGTERM: readiness turns 503 at once while requests are still
    // accepted for `shutdown_delay` (a balancer's health checks see it and
    // stop sending), then the listener closes and requests in flight get
    // `shutdown_grace` to finish. A sync run still going writes only in its
    // one final transaction: that commits before the pool closes, or the
    // run is dropped with the process without writing; its lease lapses.
    let draining = Arc::new(tokio::sync::Notify::new());
    let signal = {
        let (app, draining) = (app.clone(), draining.clone());
        let delay = config.shutdown_delay;
        async move {
            shutdown_signal().await;
            app.begin_shutdown();
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "readiness is 503; still accepting requests for the shutdown delay"
            );
            tokio::time::sleep(delay).await;
            tracing::info!("no longer accepting requests; draining those in flight");
            draining.notify_one();
        }
    };
    let server = axum::serve(
        listener,
        crate::http::router_with(app.clone(), config.http.clone()),
    )
    .with_graceful_shutdown(signal);
    let grace = config.shutdown_grace;
    tokio::select! {
        r = server => r?,
        () = async {
            draining.notified().await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!(grace_ms = grace.as_millis() as u64, "requests still in flight after the shutdown grace; exiting"),
    }
    // No send after this point, then the leases go, so another replica
    // delivers at once rather than after the lease runs out.
    delivery.abort();
    let _ = delivery.await;
    if let Err(e) = app.release_webhook_leases().await {
        tracing::warn!(error = %e, "cannot release webhook delivery leases; other replicas take over when they expire");
    }
    app.close().await;
    Ok(())
}

/// Runs a source now and then every `schedule`, one run after another, so
/// runs of one source never overlap in this process; the store lease keeps
/// other replicas and `rolebridge sync` out while a run is going.
fn spawn_sync_schedule(app: App, source: crate::sync::SourceConfig) {
    tokio::spawn(async move {
        let mut reader = match crate::app::sync::AnySource::new(&source.kind) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(source = %source.name, error = %e, "sync source cannot be built; it will not run");
                return;
            }
        };
        // A moment after start, so the listener is up before a long run.
        let mut next = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            tokio::time::sleep_until(next).await;
            let options = crate::app::sync::RunOptions::default();
            match crate::app::sync::run_with_source(&app, &source, &mut reader, options, None).await
            {
                Ok(r) => tracing::info!(
                    source = %source.name,
                    outcome = %r.outcome,
                    mode = %r.mode,
                    users_created = r.counts.users_created,
                    users_updated = r.counts.users_updated,
                    users_deactivated = r.counts.users_deactivated,
                    users_deleted = r.counts.users_deleted,
                    members_added = r.counts.members_added,
                    members_removed = r.counts.members_removed,
                    held = r.held_reason.as_deref().unwrap_or(""),
                    elapsed_ms = r.elapsed_ms,
                    "sync run finished"
                ),
                Err(crate::app::sync::SyncError::Busy(_)) => tracing::info!(
                    source = %source.name,
                    "sync run skipped: another process is running this source"
                ),
                Err(e) => {
                    tracing::error!(source = %source.name, error = %e, "sync run failed; nothing was changed")
                }
            }
            next = tokio::time::Instant::now() + source.schedule;
        }
    });
}

/// Prunes change-feed events past retention, every minute (any replica
/// may; the delete is idempotent).
fn spawn_prune_changes(app: App, retention: std::time::Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            match app.prune_changes(retention).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(events = n, "change-feed events past retention pruned"),
                Err(e) => tracing::warn!(error = %e, "cannot prune change-feed events; will retry"),
            }
        }
    });
}

/// Recomputes, in the background, every tenant whose stored permissions
/// were computed under another mapping (start-up after an upgrade or an
/// edit, a reload). Checks keep being answered meanwhile, from each
/// tenant's rows of the previous mapping until its switch commits.
fn spawn_reconcile(app: App) {
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        match app.reconcile_mappings().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                tenants = n,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "effective permissions recomputed under the mappings in force"
            ),
            Err(e) => {
                tracing::error!(error = %e, "recomputing effective permissions failed; the next write to each tenant retries")
            }
        }
    });
}

/// Follows the store's mapping versions: every `poll`, and at once on
/// SIGHUP, switches to a newer version and recomputes the tenants under it.
/// A failed poll is logged and retried; the set in force stays.
fn spawn_follow_mapping_versions(app: App, poll: std::time::Duration) {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(_) => {
                tracing::error!("cannot listen for SIGHUP; mapping versions are still polled");
                None
            }
        };
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            {
                let hup_recv = async {
                    match hup.as_mut() {
                        Some(h) => {
                            h.recv().await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    _ = tick.tick() => {},
                    _ = hup_recv => {},
                }
            }
            #[cfg(not(unix))]
            tick.tick().await;
            match app.refresh_mappings().await {
                Ok(Some(v)) => tracing::info!(version = %v, "switched to mapping version"),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "cannot follow mapping versions; the set in force stays")
                }
            }
        }
    });
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

async fn tenant(config: &Config, cmd: TenantCommand) -> anyhow::Result<()> {
    let app = open(config).await?;
    match cmd {
        TenantCommand::Create { name } => {
            let name = TenantName::parse(&name)?;
            let t = app.create_tenant(&name).await?;
            println!("{}", t.name);
        }
        TenantCommand::List => {
            for t in app.list_tenants().await? {
                println!("{}\t{}\t{}", t.name, t.id, t.created);
            }
        }
    }
    Ok(())
}

async fn token(config: &Config, cmd: TokenCommand) -> anyhow::Result<()> {
    let app = open(config).await?;
    match cmd {
        TokenCommand::Create(args) => {
            let name = TenantName::parse(&args.tenant)?;
            let t = app.create_token(&name, args.scope).await?;
            println!("{}", t.token.expose());
        }
        TokenCommand::List { tenant } => {
            let tenant = tenant.map(|n| TenantName::parse(&n)).transpose()?;
            for t in app.list_tokens(tenant.as_ref()).await? {
                let state = match &t.revoked {
                    Some(at) => format!("revoked {at}"),
                    None => "active".into(),
                };
                println!(
                    "{}\t{}\t{}\t{}\t{state}",
                    t.id, t.tenant_name, t.scope, t.created
                );
            }
        }
        TokenCommand::Revoke { id } => {
            if !app.revoke_token(&id).await? {
                bail!("no active token with id '{id}'");
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}
