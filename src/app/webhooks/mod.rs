//! Webhooks: a tenant's endpoints that receive its change feed, signed,
//! in order, at least once.
//!
//! `mod.rs` manages endpoints (create, list, rotate a secret, remove,
//! status); `deliver.rs` runs delivery; `sign.rs` signs and verifies.
//! Delivery reads the outbox the writes filled, on its own tasks, so a slow
//! or dead receiver never slows a SCIM write or a check.

mod deliver;
pub mod sign;

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::{App, Error, Result};
use crate::domain::{ChangeSeq, Secret, Tenant, Timestamp};
use crate::store::{WebhookRecord, WebhookSecret};

pub use crate::config::WebhookSettings;
pub use deliver::spawn_delivery;
pub use sign::{signature_header, verify, SignatureError, SIGNATURE_HEADER};

/// Delivery counters of this process (`/metrics`).
#[derive(Debug, Default)]
pub struct WebhookMetrics {
    pub attempts_ok: AtomicU64,
    pub attempts_failed: AtomicU64,
    pub events_delivered: AtomicU64,
    pub events_dead_lettered: AtomicU64,
}

impl WebhookMetrics {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// An endpoint as admins see it: never its secrets.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub created: String,
    /// The last event delivered or dead-lettered.
    pub position: ChangeSeq,
    /// Events committed and not yet delivered.
    pub pending: i64,
    /// `delivering`, `retrying` (a failed batch waits for its next
    /// attempt) or `idle`.
    pub state: &'static str,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success: Option<String>,
    pub delivered: i64,
    pub dead_lettered: i64,
    /// When each live secret was made and, once rotated out, expires.
    pub secrets: Vec<SecretView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecretView {
    pub created: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// A dead-lettered batch as admins see it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterView {
    pub first: ChangeSeq,
    pub last: ChangeSeq,
    pub at: String,
    pub attempts: u32,
    pub last_error: String,
    /// The body that was sent, events included.
    pub body: serde_json::Value,
}

/// A new endpoint and its secret, shown once.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    pub webhook: WebhookView,
    pub secret: Secret,
}

fn new_secret() -> Secret {
    Secret::new(format!("whsec_{}", super::tokens::random_256_bits()))
}

/// The secrets that sign at `now`: the newest, and rotated-out ones not
/// expired yet.
pub(crate) fn live_secrets(w: &WebhookRecord, now: Timestamp) -> Vec<&Secret> {
    w.secrets
        .iter()
        .filter(|s| s.expires.is_none_or(|e| e > now))
        .map(|s| &s.secret)
        .collect()
}

fn view(w: &WebhookRecord, head: ChangeSeq, now: Timestamp) -> WebhookView {
    let pending = (head.get() - w.position.get()).max(0);
    WebhookView {
        id: w.id.clone(),
        url: w.url.clone(),
        created: w.created.to_string(),
        position: w.position,
        pending,
        state: if w.attempts > 0 {
            "retrying"
        } else if pending > 0 {
            "delivering"
        } else {
            "idle"
        },
        attempts: w.attempts,
        next_attempt: w.next_attempt.map(|t| t.to_string()),
        last_error: w.last_error.clone(),
        last_success: w.last_success.map(|t| t.to_string()),
        delivered: w.delivered,
        dead_lettered: w.dead_lettered,
        secrets: w
            .secrets
            .iter()
            .filter(|s| s.expires.is_none_or(|e| e > now))
            .map(|s| SecretView {
                created: s.created.to_string(),
                expires: s.expires.map(|e| e.to_string()),
            })
            .collect(),
    }
}

/// Checks an endpoint URL: absolute, https (or http on loopback, or
/// anywhere when allowed), with no credentials in it (they would be stored
/// and shown in listings).
fn check_url(raw: &str, allow_http: bool) -> Result<url::Url> {
    let bad = |why: &str| Error::Usage(format!("webhook url '{raw}': {why}"));
    if raw.len() > 2048 {
        return Err(bad("longer than 2048 characters"));
    }
    let url = url::Url::parse(raw).map_err(|e| bad(&e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "must not carry credentials; the signature authenticates deliveries",
        ));
    }
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => return Err(bad("has no host")),
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback || allow_http => Ok(url),
        "http" => Err(bad(
            "use https (http is accepted on loopback only, unless [webhooks] allow_http = true)",
        )),
        other => Err(bad(&format!("scheme '{other}' is not http or https"))),
    }
}

impl App {
    fn unknown_webhook(tenant: &Tenant, id: &str) -> Error {
        Error::UnknownWebhook {
            tenant: tenant.name.to_string(),
            id: id.to_string(),
        }
    }

    /// The tenant's endpoint by id, or 404.
    async fn tenant_webhook(&self, tenant: &Tenant, id: &str) -> Result<WebhookRecord> {
        match self.store.webhook(id).await? {
            Some(w) if w.tenant_id == tenant.id => Ok(w),
            _ => Err(Self::unknown_webhook(tenant, id)),
        }
    }

    /// Registers an endpoint for the tenant's events from now on, with a
    /// new secret (shown once).
    pub async fn create_webhook(&self, tenant: &Tenant, url: &str) -> Result<NewWebhook> {
        let url = check_url(url, self.webhook_settings.allow_http)?;
        let id = format!("wh_{}", uuid::Uuid::new_v4().simple());
        let secret = new_secret();
        let now = self.clock().now();
        let record = self
            .store
            .create_webhook(
                tenant.id,
                &id,
                url.as_str(),
                WebhookSecret {
                    secret: secret.clone(),
                    created: now,
                    expires: None,
                },
            )
            .await?;
        tracing::info!(tenant = %tenant.name, webhook = %id, url = %url, "webhook created");
        Ok(NewWebhook {
            webhook: view(&record, record.position, now),
            secret,
        })
    }

    /// A tenant's endpoints, or every tenant's (the operator's status).
    pub async fn list_webhooks(
        &self,
        tenant: Option<&Tenant>,
    ) -> Result<Vec<(String, WebhookView)>> {
        let now = self.clock().now();
        let mut out = Vec::new();
        for w in self.store.webhooks(tenant.map(|t| t.id)).await? {
            let bounds = self.store.change_bounds(w.tenant_id).await?;
            let name = match tenant {
                Some(t) => t.name.to_string(),
                None => self
                    .store
                    .tenant_by_id(w.tenant_id)
                    .await?
                    .map(|t| t.name.to_string())
                    .unwrap_or_else(|| w.tenant_id.to_string()),
            };
            out.push((name, view(&w, bounds.head, now)));
        }
        Ok(out)
    }

    pub async fn webhook_status(&self, tenant: &Tenant, id: &str) -> Result<WebhookView> {
        let w = self.tenant_webhook(tenant, id).await?;
        let head = self.store.change_bounds(tenant.id).await?.head;
        Ok(view(&w, head, self.clock().now()))
    }

    /// Makes a new secret the signing one; the previous secrets keep
    /// signing for the rotation grace, so receivers can switch.
    pub async fn rotate_webhook_secret(&self, tenant: &Tenant, id: &str) -> Result<NewWebhook> {
        let w = self.tenant_webhook(tenant, id).await?;
        let now = self.clock().now();
        let until = now
            .checked_add(self.webhook_settings.rotation_grace)
            .ok_or_else(|| Error::Internal("rotation grace out of range".into()))?;
        let secret = new_secret();
        let mut secrets = vec![WebhookSecret {
            secret: secret.clone(),
            created: now,
            expires: None,
        }];
        for old in w
            .secrets
            .iter()
            .filter(|s| s.expires.is_none_or(|e| e > now))
        {
            secrets.push(WebhookSecret {
                expires: Some(old.expires.map_or(until, |e| e.min(until))),
                ..old.clone()
            });
        }
        if !self
            .store
            .set_webhook_secrets(tenant.id, id, &secrets)
            .await?
        {
            return Err(Self::unknown_webhook(tenant, id));
        }
        tracing::info!(tenant = %tenant.name, webhook = %id, "webhook secret rotated");
        let w = self.tenant_webhook(tenant, id).await?;
        let head = self.store.change_bounds(tenant.id).await?.head;
        Ok(NewWebhook {
            webhook: view(&w, head, now),
            secret,
        })
    }

    pub async fn delete_webhook(&self, tenant: &Tenant, id: &str) -> Result<()> {
        if !self.store.delete_webhook(tenant.id, id).await? {
            return Err(Self::unknown_webhook(tenant, id));
        }
        tracing::info!(tenant = %tenant.name, webhook = %id, "webhook removed");
        Ok(())
    }

    /// The endpoint's dead letters, newest first.
    pub async fn webhook_dead_letters(
        &self,
        tenant: &Tenant,
        id: &str,
        limit: i64,
    ) -> Result<Vec<DeadLetterView>> {
        self.tenant_webhook(tenant, id).await?;
        Ok(self
            .store
            .webhook_dead_letters(id, limit.clamp(1, 1000))
            .await?
            .into_iter()
            .map(|d| DeadLetterView {
                first: d.first_seq,
                last: d.last_seq,
                at: d.at.to_string(),
                attempts: d.attempts,
                last_error: d.last_error,
                body: serde_json::from_str(&d.body).unwrap_or(serde_json::Value::Null),
            })
            .collect())
    }

    /// `/metrics` lines: this process's delivery counters, and per endpoint
    /// the pending events and dead letters as stored (the same on every
    /// replica).
    pub(super) async fn webhook_metrics_text(&self) -> String {
        let m = &self.webhook_metrics;
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = format!(
            "# HELP rolebridge_webhook_attempts_total Webhook POSTs by this process, by outcome.\n\
             # TYPE rolebridge_webhook_attempts_total counter\n\
             rolebridge_webhook_attempts_total{{outcome=\"ok\"}} {}\n\
             rolebridge_webhook_attempts_total{{outcome=\"failed\"}} {}\n\
             # HELP rolebridge_webhook_events_delivered_total Events this process delivered.\n\
             # TYPE rolebridge_webhook_events_delivered_total counter\n\
             rolebridge_webhook_events_delivered_total {}\n\
             # HELP rolebridge_webhook_events_dead_lettered_total Events this process gave up on.\n\
             # TYPE rolebridge_webhook_events_dead_lettered_total counter\n\
             rolebridge_webhook_events_dead_lettered_total {}\n",
            read(&m.attempts_ok),
            read(&m.attempts_failed),
            read(&m.events_delivered),
            read(&m.events_dead_lettered),
        );
        match self.list_webhooks(None).await {
            Ok(list) => {
                out.push_str(
                    "# HELP rolebridge_webhook_pending_events Events committed and not yet delivered, per endpoint.\n\
                     # TYPE rolebridge_webhook_pending_events gauge\n",
                );
                for (tenant, w) in &list {
                    out.push_str(&format!(
                        "rolebridge_webhook_pending_events{{tenant=\"{tenant}\",webhook=\"{}\"}} {}\n",
                        w.id, w.pending
                    ));
                }
                out.push_str(
                    "# HELP rolebridge_webhook_dead_lettered_events Events given up after the last attempt, per endpoint.\n\
                     # TYPE rolebridge_webhook_dead_lettered_events gauge\n",
                );
                for (tenant, w) in &list {
                    out.push_str(&format!(
                        "rolebridge_webhook_dead_lettered_events{{tenant=\"{tenant}\",webhook=\"{}\"}} {}\n",
                        w.id, w.dead_lettered
                    ));
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read webhook states for /metrics"),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls_are_checked() {
        assert!(check_url("https://hooks.example.com/rb", false).is_ok());
        assert!(check_url("http://127.0.0.1:9000/rb", false).is_ok());
        assert!(check_url("http://[::1]:9000/rb", false).is_ok());
        assert!(check_url("http://localhost/rb", false).is_ok());
        let err = check_url("http://hooks.example.com/rb", false).unwrap_err();
        assert!(err.to_string().contains("use https"), "{err}");
        assert!(check_url("http://hooks.example.com/rb", true).is_ok());
        assert!(check_url("https://u:p@hooks.example.com/", false)
            .unwrap_err()
            .to_string()
            .contains("credentials"));
        assert!(check_url("ftp://hooks.example.com/", false).is_err());
        assert!(check_url("not a url", false).is_err());
    }
}
