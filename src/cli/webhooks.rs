//! `rolebridge webhooks`: add, list, status (with dead letters), rotate a
//! secret, remove. The operator's view of every tenant's endpoints; the
//! admin API offers the same per tenant.

use clap::{Args, Subcommand};

use crate::config::Config;
use crate::domain::TenantName;

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Register an endpoint; prints its id and secret (shown once).
    Add {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        url: String,
    },
    /// Every endpoint's delivery state: position, pending events, retries,
    /// dead letters. `--json` for one JSON document.
    Status {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// An endpoint's dead-lettered batches, newest first, as JSON.
    DeadLetters(WebhookRef),
    /// Make a new signing secret; the old ones keep signing for
    /// `[webhooks] rotation_grace`. Prints the new secret.
    Rotate(WebhookRef),
    /// Remove an endpoint.
    Remove(WebhookRef),
}

#[derive(Debug, Args)]
pub struct WebhookRef {
    #[arg(long)]
    pub tenant: String,
    pub id: String,
}

pub async fn run(config: &Config, cmd: WebhooksCommand) -> anyhow::Result<()> {
    let app = super::open(config).await?;
    let tenant = |name: &str| {
        let app = app.clone();
        let name = name.to_string();
        async move { anyhow::Ok(app.tenant(&TenantName::parse(&name)?).await?) }
    };
    match cmd {
        WebhooksCommand::Add { tenant: t, url } => {
            let t = tenant(&t).await?;
            let new = app.create_webhook(&t, &url).await?;
            println!("id: {}", new.webhook.id);
            println!("secret: {}", new.secret.expose());
            eprintln!("The secret is shown only once; receivers verify the rolebridge-signature header with it.");
        }
        WebhooksCommand::Status { tenant: t, json } => {
            let t = match t {
                Some(t) => Some(tenant(&t).await?),
                None => None,
            };
            let list = app.list_webhooks(t.as_ref()).await?;
            if json {
                let items: Vec<_> = list
                    .iter()
                    .map(|(tenant, w)| {
                        let mut v = serde_json::json!(w);
                        v["tenant"] = serde_json::json!(tenant);
                        v
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else if list.is_empty() {
                println!("no webhooks");
            } else {
                println!(
                    "{:<12} {:<38} {:<10} {:>8} {:>8} {:>10} {:>8}  last error",
                    "TENANT", "ID", "STATE", "POSITION", "PENDING", "DELIVERED", "DEAD"
                );
                for (tenant, w) in &list {
                    println!(
                        "{:<12} {:<38} {:<10} {:>8} {:>8} {:>10} {:>8}  {}",
                        tenant,
                        w.id,
                        w.state,
                        w.position,
                        w.pending,
                        w.delivered,
                        w.dead_lettered,
                        w.last_error.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        WebhooksCommand::DeadLetters(r) => {
            let t = tenant(&r.tenant).await?;
            let letters = app.webhook_dead_letters(&t, &r.id, 100).await?;
            println!("{}", serde_json::to_string_pretty(&letters)?);
        }
        WebhooksCommand::Rotate(r) => {
            let t = tenant(&r.tenant).await?;
            let new = app.rotate_webhook_secret(&t, &r.id).await?;
            println!("secret: {}", new.secret.expose());
        }
        WebhooksCommand::Remove(r) => {
            let t = tenant(&r.tenant).await?;
            app.delete_webhook(&t, &r.id).await?;
            println!("removed {}", r.id);
        }
    }
    Ok(())
}
