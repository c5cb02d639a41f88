//! `rolebridge changes tail`: the tenant's change feed on stdout, one JSON
//! event per line, from a cursor or the oldest retained event, following
//! new events with `--follow`.

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::config::Config;
use crate::domain::{ChangeSeq, TenantName};

#[derive(Debug, Subcommand)]
pub enum ChangesCommand {
    /// Print a tenant's effective-permission events as JSON lines.
    Tail(TailArgs),
}

#[derive(Debug, Args)]
pub struct TailArgs {
    #[arg(long)]
    pub tenant: String,
    /// Start after this cursor (default: the oldest retained event).
    #[arg(long)]
    pub after: Option<i64>,
    /// Keep waiting for new events (stop with Ctrl-C).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Stop after this many events.
    #[arg(long)]
    pub limit: Option<usize>,
}

pub async fn run(config: &Config, cmd: ChangesCommand) -> anyhow::Result<()> {
    let ChangesCommand::Tail(args) = cmd;
    let app = super::open(config).await?;
    let tenant = app.tenant(&TenantName::parse(&args.tenant)?).await?;
    let mut after = match args.after {
        Some(n) => Some(
            ChangeSeq::new(n)
                .ok_or_else(|| anyhow::anyhow!("--after must be at least 0, got {n}"))?,
        ),
        None => None,
    };
    let mut printed = 0usize;
    let stdout = std::io::stdout();
    loop {
        let wait = if args.follow {
            Duration::from_secs(30)
        } else {
            Duration::ZERO
        };
        let page = app.changes(&tenant, after, 500, wait).await?;
        let mut out = stdout.lock();
        for e in &page.events {
            if args.limit.is_some_and(|l| printed >= l) {
                return Ok(());
            }
            // A closed pipe (`| head`) ends the command quietly.
            if writeln!(out, "{}", serde_json::to_string(e)?).is_err() {
                return Ok(());
            }
            printed += 1;
        }
        let _ = out.flush();
        after = Some(page.next);
        if !page.has_more && !args.follow {
            return Ok(());
        }
    }
}
