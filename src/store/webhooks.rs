//! Webhook endpoints, their delivery position and lease, and the batches
//! given up (dead letters).
//!
//! Invariant: an endpoint's position only moves forward, and only the
//! replica holding its lease moves it (every update names the owner), so
//! two replicas never deliver past each other.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::sync::{required_timestamp, timestamp_column};
use super::{Result, Store};
use crate::domain::{ChangeSeq, Secret, TenantId, Timestamp};

/// One signing secret of an endpoint.
#[derive(Debug, Clone)]
pub struct WebhookSecret {
    pub secret: Secret,
    pub created: Timestamp,
    /// A rotated-out secret keeps signing until then.
    pub expires: Option<Timestamp>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SecretJson {
    secret: String,
    created: String,
    expires: Option<String>,
}

/// A stored endpoint.
#[derive(Debug, Clone)]
pub struct WebhookRecord {
    pub id: String,
    pub tenant_id: TenantId,
    pub url: String,
    pub created: Timestamp,
    /// Newest first.
    pub secrets: Vec<WebhookSecret>,
    /// The last event delivered or dead-lettered.
    pub position: ChangeSeq,
    pub lease_owner: Option<String>,
    pub lease_until: Option<Timestamp>,
    /// Failed attempts at the batch at the head.
    pub attempts: u32,
    pub next_attempt: Option<Timestamp>,
    pub last_error: Option<String>,
    pub last_success: Option<Timestamp>,
    pub delivered: i64,
    pub dead_lettered: i64,
}

/// A batch given up after its last attempt.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub webhook_id: String,
    pub first_seq: ChangeSeq,
    pub last_seq: ChangeSeq,
    pub at: Timestamp,
    pub attempts: u32,
    pub last_error: String,
    pub body: String,
}

const COLUMNS: &str = "id, tenant_id, url, created, secrets, position, lease_owner, lease_until, \
    attempts, next_attempt, last_error, last_success, delivered, dead_lettered";

fn bad(column: &'static str, value: impl Into<String>) -> super::Error {
    super::Error::BadColumn {
        column,
        value: value.into(),
    }
}

fn webhook_from(r: &AnyRow) -> Result<WebhookRecord> {
    let tenant: String = r.try_get(1)?;
    let secrets: String = r.try_get(4)?;
    let parsed: Vec<SecretJson> =
        serde_json::from_str(&secrets).map_err(|_| bad("webhooks.secrets", "(not shown)"))?;
    let secrets = parsed
        .into_iter()
        .map(|s| {
            Ok(WebhookSecret {
                secret: Secret::new(s.secret),
                created: required_timestamp("webhooks.secrets.created", s.created)?,
                expires: timestamp_column("webhooks.secrets.expires", s.expires)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(WebhookRecord {
        id: r.try_get(0)?,
        tenant_id: uuid::Uuid::parse_str(&tenant)
            .map(TenantId::from_uuid)
            .map_err(|_| bad("webhooks.tenant_id", tenant))?,
        url: r.try_get(2)?,
        created: required_timestamp("webhooks.created", r.try_get(3)?)?,
        secrets,
        position: ChangeSeq::new(r.try_get(5)?).unwrap_or(ChangeSeq::START),
        lease_owner: r.try_get(6)?,
        lease_until: timestamp_column("webhooks.lease_until", r.try_get(7)?)?,
        attempts: r.try_get::<i64, _>(8)?.max(0) as u32,
        next_attempt: timestamp_column("webhooks.next_attempt", r.try_get(9)?)?,
        last_error: r.try_get(10)?,
        last_success: timestamp_column("webhooks.last_success", r.try_get(11)?)?,
        delivered: r.try_get(12)?,
        dead_lettered: r.try_get(13)?,
    })
}

fn secrets_json(secrets: &[WebhookSecret]) -> String {
    let list: Vec<SecretJson> = secrets
        .iter()
        .map(|s| SecretJson {
            secret: s.secret.expose().to_string(),
            created: s.created.to_string(),
            expires: s.expires.map(|e| e.to_string()),
        })
        .collect();
    serde_json::to_string(&list).unwrap_or_else(|_| "[]".into())
}

impl Store {
    /// Registers an endpoint that starts after the tenant's newest event.
    pub async fn create_webhook(
        &self,
        tenant: TenantId,
        id: &str,
        url: &str,
        secret: WebhookSecret,
    ) -> Result<WebhookRecord> {
        let _guard = self.exclusive().await;
        let created = secret.created;
        sqlx::query(
            "INSERT INTO webhooks (id, tenant_id, url, created, secrets, position) \
             SELECT $1, id, $2, $3, $4, change_seq FROM tenants WHERE id = $5",
        )
        .bind(id)
        .bind(url)
        .bind(created.to_string())
        .bind(secrets_json(&[secret]))
        .bind(tenant.to_string())
        .execute(&self.pool)
        .await?;
        drop(_guard);
        self.webhook(id)
            .await?
            .ok_or_else(|| bad("webhooks.id", id.to_string()))
    }

    pub async fn webhook(&self, id: &str) -> Result<Option<WebhookRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM webhooks WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(webhook_from).transpose()
    }

    /// Every endpoint, or a tenant's.
    pub async fn webhooks(&self, tenant: Option<TenantId>) -> Result<Vec<WebhookRecord>> {
        let rows = match tenant {
            Some(t) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM webhooks WHERE tenant_id = $1 ORDER BY created, id"
                )))
                .bind(t.to_string())
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {COLUMNS} FROM webhooks ORDER BY tenant_id, created, id"
                )))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(webhook_from).collect()
    }

    /// Removes a tenant's endpoint; false when it has none by that id.
    pub async fn delete_webhook(&self, tenant: TenantId, id: &str) -> Result<bool> {
        let _guard = self.exclusive().await;
        let done = sqlx::query("DELETE FROM webhooks WHERE id = $1 AND tenant_id = $2")
            .bind(id)
            .bind(tenant.to_string())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Replaces a tenant endpoint's secrets (a rotation).
    pub async fn set_webhook_secrets(
        &self,
        tenant: TenantId,
        id: &str,
        secrets: &[WebhookSecret],
    ) -> Result<bool> {
        let _guard = self.exclusive().await;
        let done = sqlx::query("UPDATE webhooks SET secrets = $1 WHERE id = $2 AND tenant_id = $3")
            .bind(secrets_json(secrets))
            .bind(id)
            .bind(tenant.to_string())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Takes or extends the endpoint's delivery lease for `owner` until
    /// `until`, unless another owner holds it past `now`.
    pub async fn acquire_webhook_lease(
        &self,
        id: &str,
        owner: &str,
        until: Timestamp,
        now: Timestamp,
    ) -> Result<bool> {
        let _guard = self.exclusive().await;
        let done = sqlx::query(
            "UPDATE webhooks SET lease_owner = $1, lease_until = $2 WHERE id = $3 \
             AND (lease_owner IS NULL OR lease_owner = $1 OR lease_until IS NULL OR lease_until < $4)",
        )
        .bind(owner)
        .bind(until.to_string())
        .bind(id)
        .bind(now.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Gives up every lease `owner` holds.
    pub async fn release_webhook_leases(&self, owner: &str) -> Result<()> {
        let _guard = self.exclusive().await;
        sqlx::query(
            "UPDATE webhooks SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1",
        )
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a delivered batch: the position moves to `through`. False
    /// when `owner` no longer holds the lease or the position is already
    /// past (another replica delivered it): nothing is changed then.
    pub async fn record_webhook_delivery(
        &self,
        id: &str,
        owner: &str,
        through: ChangeSeq,
        events: i64,
        at: Timestamp,
    ) -> Result<bool> {
        let _guard = self.exclusive().await;
        let done = sqlx::query(
            "UPDATE webhooks SET position = $1, delivered = delivered + $2, attempts = 0, \
             next_attempt = NULL, last_error = NULL, last_success = $3 \
             WHERE id = $4 AND lease_owner = $5 AND position < $1",
        )
        .bind(through.get())
        .bind(events)
        .bind(at.to_string())
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records a failed attempt at the batch at the head.
    pub async fn record_webhook_failure(
        &self,
        id: &str,
        owner: &str,
        attempts: u32,
        next_attempt: Timestamp,
        error: &str,
    ) -> Result<bool> {
        let _guard = self.exclusive().await;
        let done = sqlx::query(
            "UPDATE webhooks SET attempts = $1, next_attempt = $2, last_error = $3 \
             WHERE id = $4 AND lease_owner = $5",
        )
        .bind(i64::from(attempts))
        .bind(next_attempt.to_string())
        .bind(error)
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Gives a batch up: it is kept as a dead letter and the position moves
    /// past it, in one transaction.
    pub async fn dead_letter_webhook_batch(
        &self,
        owner: &str,
        letter: &DeadLetter,
    ) -> Result<bool> {
        let _guard = self.exclusive().await;
        let mut tx = self.pool.begin().await?;
        let moved = sqlx::query(
            "UPDATE webhooks SET position = $1, dead_lettered = dead_lettered + $2, attempts = 0, \
             next_attempt = NULL, last_error = $3 \
             WHERE id = $4 AND lease_owner = $5 AND position < $1",
        )
        .bind(letter.last_seq.get())
        .bind(letter.last_seq.get() - letter.first_seq.get() + 1)
        .bind(letter.last_error.as_str())
        .bind(letter.webhook_id.as_str())
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        if moved.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO webhook_dead_letters (webhook_id, first_seq, last_seq, at, attempts, last_error, body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(letter.webhook_id.as_str())
        .bind(letter.first_seq.get())
        .bind(letter.last_seq.get())
        .bind(letter.at.to_string())
        .bind(i64::from(letter.attempts))
        .bind(letter.last_error.as_str())
        .bind(letter.body.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// An endpoint's dead letters, newest first.
    pub async fn webhook_dead_letters(&self, id: &str, limit: i64) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query(
            "SELECT webhook_id, first_seq, last_seq, at, attempts, last_error, body \
             FROM webhook_dead_letters WHERE webhook_id = $1 ORDER BY first_seq DESC LIMIT $2",
        )
        .bind(id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeadLetter {
                    webhook_id: r.try_get(0)?,
                    first_seq: ChangeSeq::new(r.try_get(1)?).unwrap_or(ChangeSeq::START),
                    last_seq: ChangeSeq::new(r.try_get(2)?).unwrap_or(ChangeSeq::START),
                    at: required_timestamp("webhook_dead_letters.at", r.try_get(3)?)?,
                    attempts: r.try_get::<i64, _>(4)?.max(0) as u32,
                    last_error: r.try_get(5)?,
                    body: r.try_get(6)?,
                })
            })
            .collect()
    }
}
