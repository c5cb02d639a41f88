//! Delivery: one task per endpoint in every replica; the one holding the
//! endpoint's lease sends.
//!
//! Order: an endpoint's events go out in seq order, one batch at a time,
//! and the position moves past a batch only after a 2xx (or after its last
//! attempt, when it is dead-lettered). So a receiver sees each user's
//! events in order, and a crash between the send and the record resends
//! the batch (at least once; receivers deduplicate on the event id).
//!
//! Two replicas: the lease is taken for longer than a POST may take and
//! renewed before each POST, and the position update names the lease
//! owner, so a replica that lost the lease can neither send nor record.

use std::collections::HashMap;
use std::time::Duration;

use rand::Rng;
use serde_json::json;

use super::{live_secrets, WebhookMetrics, SIGNATURE_HEADER};
use crate::app::changes::ChangeEvent;
use crate::app::{App, Result};
use crate::domain::{Tenant, Timestamp};
use crate::store::{DeadLetter, WebhookRecord};

/// How long a deliverer woken by a commit waits for more before sending.
const LINGER: Duration = Duration::from_millis(25);

/// What one step of an endpoint's deliverer did.
#[derive(Debug)]
enum Step {
    /// A batch went out (or was given up); `full`: it held a whole batch,
    /// so more are likely waiting: look for the next at once.
    Sent { full: bool },
    /// Nothing to send.
    Idle,
    /// Another replica holds the endpoint.
    NotOurs,
    /// A failed batch waits for its next attempt.
    Backoff(Duration),
    /// The endpoint was removed.
    Gone,
}

/// This process's name on delivery leases: one per process, so a
/// deliverer restarted in the same process keeps its endpoints' leases.
fn owner() -> &'static str {
    static OWNER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    OWNER.get_or_init(|| format!("{}:{}", std::process::id(), uuid::Uuid::new_v4().simple()))
}

impl App {
    /// Gives up this process's delivery leases (at shutdown), so another
    /// replica takes the endpoints over at once instead of after the lease.
    pub async fn release_webhook_leases(&self) -> Result<()> {
        Ok(self.store.release_webhook_leases(owner()).await?)
    }
}

/// Starts delivering every tenant's webhooks from this process; returns
/// the supervisor's handle. Endpoints added later (by any replica) are
/// picked up within one poll interval.
pub fn spawn_delivery(app: App) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let owner = owner().to_string();
        let client = match reqwest::Client::builder()
            .timeout(app.webhook_settings.timeout)
            // A receiver cannot send events elsewhere by redirecting.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("rolebridge/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the webhook HTTP client; webhooks will not be delivered");
                return;
            }
        };
        let mut running = Drivers::default();
        loop {
            running.0.retain(|_, h| !h.is_finished());
            match app.store.webhooks(None).await {
                Ok(list) => {
                    for w in list {
                        if let std::collections::hash_map::Entry::Vacant(slot) =
                            running.0.entry(w.id.clone())
                        {
                            slot.insert(tokio::spawn(drive(
                                app.clone(),
                                client.clone(),
                                w.id,
                                owner.clone(),
                            )));
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list webhooks; retrying"),
            }
            tokio::time::sleep(app.webhook_settings.poll * 4).await;
        }
    })
}

/// The per-endpoint tasks; aborted with the supervisor, so stopping
/// delivery (its handle aborted) stops every send.
#[derive(Default)]
struct Drivers(HashMap<String, tokio::task::JoinHandle<()>>);

impl Drop for Drivers {
    fn drop(&mut self) {
        for h in self.0.values() {
            h.abort();
        }
    }
}

/// Delivers one endpoint for as long as it exists.
async fn drive(app: App, client: reqwest::Client, id: String, owner: String) {
    let poll = app.webhook_settings.poll;
    let mut tenant = None;
    loop {
        let notified = app.change_notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let step = app.deliver_step(&client, &id, &owner, &mut tenant).await;
        match step {
            Ok(Step::Sent { full: true }) => continue,
            // A partial batch: what commits meanwhile goes in the next POST.
            Ok(Step::Sent { full: false }) => tokio::time::sleep(LINGER).await,
            Ok(Step::Gone) => return,
            Ok(Step::Idle) => {
                if tokio::time::timeout(poll, notified).await.is_ok() {
                    // Woken by a commit: a moment more gathers the commits
                    // right behind it into the same POST.
                    tokio::time::sleep(LINGER).await;
                }
            }
            Ok(Step::NotOurs) => tokio::time::sleep(poll).await,
            Ok(Step::Backoff(d)) => tokio::time::sleep(d.min(poll * 4)).await,
            Err(e) => {
                tracing::warn!(webhook = %id, error = %e, "webhook delivery step failed; retrying");
                tokio::time::sleep(poll * 4).await;
            }
        }
    }
}

/// The longest `Retry-After` honoured: a receiver may ask for a pause, not
/// stop its feed for days.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The delay before attempt `attempts + 1`: exponential from the base up
/// to the maximum, with jitter (half to all of it) so that receivers
/// coming back are not hit by every sender at once; and at least what the
/// receiver's `Retry-After` asked (up to an hour).
fn backoff(
    base: Duration,
    max: Duration,
    attempts: u32,
    retry_after: Option<Duration>,
) -> Duration {
    let exp = base.saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    let jittered = exp
        .min(max)
        .mul_f64(rand::thread_rng().gen_range(0.5..=1.0));
    jittered.max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER))
}

/// `Retry-After` as seconds or an HTTP date (RFC 9110 §10.2.3).
fn retry_after(headers: &reqwest::header::HeaderMap, now: Timestamp) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822).ok()?;
    let at = Timestamp::new(at)?;
    (at > now).then(|| at.since(now))
}

impl App {
    async fn deliver_step(
        &self,
        client: &reqwest::Client,
        id: &str,
        owner: &str,
        tenant: &mut Option<Tenant>,
    ) -> Result<Step> {
        let settings = &self.webhook_settings;
        let Some(w) = self.store.webhook(id).await? else {
            return Ok(Step::Gone);
        };
        let now = self.clock().now();
        if let Some(next) = w.next_attempt.filter(|n| *n > now) {
            return Ok(Step::Backoff(next.since(now)));
        }
        // A read decides whether there is work: idle endpoints cost no write.
        let mut stored = self
            .store
            .changes_after(w.tenant_id, w.position, settings.batch as i64)
            .await?;
        if stored.is_empty() {
            return Ok(Step::Idle);
        }
        // A lease still good for longer than a POST may take is used as it
        // is (no other replica can have moved the position meanwhile);
        // otherwise it is taken or renewed, and the endpoint re-read.
        let margin = settings.timeout + Duration::from_secs(1);
        let held = w.lease_owner.as_deref() == Some(owner)
            && w.lease_until
                .zip(now.checked_add(margin))
                .is_some_and(|(until, needed)| until > needed);
        let w = if held {
            w
        } else {
            let Some(until) = now.checked_add(settings.lease()) else {
                return Ok(Step::Idle);
            };
            if !self
                .store
                .acquire_webhook_lease(id, owner, until, now)
                .await?
            {
                return Ok(Step::NotOurs);
            }
            let before = w.position;
            let Some(w) = self.store.webhook(id).await? else {
                return Ok(Step::Gone);
            };
            if w.position != before {
                stored = self
                    .store
                    .changes_after(w.tenant_id, w.position, settings.batch as i64)
                    .await?;
            }
            w
        };
        // Tenant names never change: read once per deliverer.
        let tenant = match tenant {
            Some(t) if t.id == w.tenant_id => t.clone(),
            _ => match self.store.tenant_by_id(w.tenant_id).await? {
                Some(t) => tenant.insert(t).clone(),
                None => return Ok(Step::Gone),
            },
        };
        let (Some(first), Some(last)) = (stored.first(), stored.last()) else {
            return Ok(Step::Idle);
        };
        let (first, last) = (first.seq, last.seq);
        let events = stored
            .into_iter()
            .map(|c| ChangeEvent::from_stored(&tenant, c))
            .collect::<Result<Vec<_>>>()?;
        let delivery = format!("{}:{}-{}", w.id, first, last);
        let body = serde_json::to_vec(&json!({
            "webhook": w.id,
            "tenant": tenant.name.to_string(),
            "delivery": delivery,
            "events": events,
        }))
        .map_err(|e| crate::app::Error::Internal(format!("cannot encode a webhook body: {e}")))?;
        let outcome = self.post(client, &w, &tenant, &delivery, &body).await;
        let m: &WebhookMetrics = &self.webhook_metrics;
        let now = self.clock().now();
        match outcome {
            Ok(()) => {
                WebhookMetrics::add(&m.attempts_ok, 1);
                let n = events.len() as i64;
                if self
                    .store
                    .record_webhook_delivery(id, owner, last, n, now)
                    .await?
                {
                    WebhookMetrics::add(&m.events_delivered, n as u64);
                }
                Ok(Step::Sent {
                    full: events.len() >= settings.batch,
                })
            }
            Err((error, wait)) => {
                WebhookMetrics::add(&m.attempts_failed, 1);
                let attempts = w.attempts + 1;
                if attempts >= settings.max_attempts {
                    tracing::error!(
                        tenant = %tenant.name, webhook = %id, first = %first, last = %last,
                        attempts, error = %error,
                        "webhook batch dead-lettered after its last attempt"
                    );
                    let letter = DeadLetter {
                        webhook_id: w.id.clone(),
                        first_seq: first,
                        last_seq: last,
                        at: now,
                        attempts,
                        last_error: error,
                        body: String::from_utf8_lossy(&body).into_owned(),
                    };
                    if self.store.dead_letter_webhook_batch(owner, &letter).await? {
                        WebhookMetrics::add(&m.events_dead_lettered, events.len() as u64);
                    }
                    return Ok(Step::Sent { full: true });
                }
                let delay = backoff(settings.backoff_base, settings.backoff_max, attempts, wait);
                let next = now.checked_add(delay).unwrap_or(now);
                tracing::warn!(
                    tenant = %tenant.name, webhook = %id, attempts, error = %error,
                    retry_in_ms = delay.as_millis() as u64,
                    "webhook delivery failed; will retry"
                );
                self.store
                    .record_webhook_failure(id, owner, attempts, next, &error)
                    .await?;
                Ok(Step::Backoff(delay))
            }
        }
    }

    /// One signed POST; the error and the receiver's `Retry-After`.
    async fn post(
        &self,
        client: &reqwest::Client,
        w: &WebhookRecord,
        tenant: &Tenant,
        delivery: &str,
        body: &[u8],
    ) -> std::result::Result<(), (String, Option<Duration>)> {
        let now = self.clock().now();
        let secrets = live_secrets(w, now);
        if secrets.is_empty() {
            return Err((
                format!(
                    "webhook {} of tenant '{}' has no live secret",
                    w.id, tenant.name
                ),
                None,
            ));
        }
        let signature = super::signature_header(&secrets, now.datetime().unix_timestamp(), body);
        let response = client
            .post(&w.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .header("rolebridge-webhook-id", &w.id)
            .header("rolebridge-delivery-id", delivery)
            .body(body.to_vec())
            .send()
            .await;
        match response {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => {
                let wait = retry_after(r.headers(), self.clock().now());
                Err((format!("the receiver answered {}", r.status()), wait))
            }
            // reqwest's error names the URL; the URL is the admin's own.
            Err(e) if e.is_timeout() => Err((
                format!("no answer within {:?}", self.webhook_settings.timeout),
                None,
            )),
            Err(e) if e.is_connect() => Err(("cannot connect to the receiver".to_string(), None)),
            Err(e) => Err((format!("the request failed: {e}"), None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_and_honours_retry_after_within_the_maximum() {
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..100 {
            let d1 = backoff(base, max, 1, None);
            assert!(d1 >= Duration::from_millis(500) && d1 <= base, "{d1:?}");
            let d4 = backoff(base, max, 4, None);
            assert!(
                d4 >= Duration::from_secs(4) && d4 <= Duration::from_secs(8),
                "{d4:?}"
            );
            let d30 = backoff(base, max, 30, None);
            assert!(d30 >= max / 2 && d30 <= max, "{d30:?}");
            assert_eq!(
                backoff(base, max, 1, Some(Duration::from_secs(70))),
                Duration::from_secs(70)
            );
            assert_eq!(
                backoff(base, max, 1, Some(Duration::from_secs(86_400))),
                MAX_RETRY_AFTER
            );
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = Timestamp::parse("2026-12-03T10:00:00.000000Z").unwrap();
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "5".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(5)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "Thu, 03 Dec 2026 10:00:30 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
    }
}
