//! Tenants and API tokens.

use sqlx::Row;
use uuid::Uuid;

use super::{Error, Result, Store};
use crate::domain::{Scope, Tenant, TenantId, TenantName, Timestamp};

/// A stored token: never the secret, only its SHA-256.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub id: String,
    pub tenant_id: TenantId,
    pub tenant_name: TenantName,
    pub scope: Scope,
    pub secret_sha256: String,
    pub created: String,
    pub revoked: Option<String>,
    /// What the admin called it ("Okta production").
    pub label: Option<String>,
    /// After this instant the token is refused.
    pub expires: Option<Timestamp>,
    /// The last request it authenticated, to the minute.
    pub last_used: Option<Timestamp>,
}

impl Store {
    pub async fn create_tenant(&self, name: &TenantName, created: &str) -> Result<Tenant> {
        let _guard = self.exclusive().await;
        let tenant = Tenant {
            id: TenantId::new(),
            name: name.clone(),
            created: created.to_string(),
        };
        let res = sqlx::query("INSERT INTO tenants (id, name, created) VALUES ($1, $2, $3)")
            .bind(tenant.id.to_string())
            .bind(name.as_str())
            .bind(created)
            .execute(&self.pool)
            .await;
        match res {
            Ok(_) => Ok(tenant),
            Err(e) if Error::is_unique_violation(&e) => {
                Err(Error::TenantExists(name.as_str().to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        let rows = sqlx::query("SELECT id, name, created FROM tenants ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(tenant_from_row).collect()
    }

    pub async fn tenant_by_name(&self, name: &TenantName) -> Result<Option<Tenant>> {
        let row = sqlx::query("SELECT id, name, created FROM tenants WHERE name = $1")
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(tenant_from_row).transpose()
    }

    pub async fn tenant_by_id(&self, id: TenantId) -> Result<Option<Tenant>> {
        let row = sqlx::query("SELECT id, name, created FROM tenants WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(tenant_from_row).transpose()
    }

    pub async fn insert_token(&self, record: &TokenRecord) -> Result<()> {
        let _guard = self.exclusive().await;
        sqlx::query(
            "INSERT INTO api_tokens (id, tenant_id, scope, secret_sha256, created, label, expires) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&record.id)
        .bind(record.tenant_id.to_string())
        .bind(record.scope.as_str())
        .bind(&record.secret_sha256)
        .bind(&record.created)
        .bind(record.label.as_deref())
        .bind(record.expires.map(|t| t.to_string()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The token with this id, revoked or not.
    pub async fn token_by_id(&self, id: &str) -> Result<Option<TokenRecord>> {
        let row = sqlx::query(TOKEN_SELECT_BY_ID)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Tokens, newest first, optionally of one tenant.
    pub async fn list_tokens(&self, tenant: Option<TenantId>) -> Result<Vec<TokenRecord>> {
        let rows = match tenant {
            Some(t) => {
                sqlx::query(TOKEN_SELECT_BY_TENANT)
                    .bind(t.to_string())
                    .fetch_all(&self.pool)
                    .await?
            }
            None => sqlx::query(TOKEN_SELECT_ALL).fetch_all(&self.pool).await?,
        };
        rows.iter().map(token_from_row).collect()
    }

    /// Records that a token authenticated a request at `at`. Called at most
    /// once a minute per token (the caller compares with the last value),
    /// so a busy client does not turn every read into a write.
    pub async fn touch_token(&self, id: &str, at: Timestamp) -> Result<()> {
        let _guard = self.exclusive().await;
        sqlx::query("UPDATE api_tokens SET last_used = $1 WHERE id = $2")
            .bind(at.to_string())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Revokes a token of one tenant; false when that tenant has no live
    /// token with this id (another tenant's token is never touched).
    pub async fn revoke_tenant_token(&self, tenant: TenantId, id: &str, at: &str) -> Result<bool> {
        let _guard = self.exclusive().await;
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked = $1 WHERE id = $2 AND tenant_id = $3 AND revoked IS NULL",
        )
        .bind(at)
        .bind(id)
        .bind(tenant.to_string())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks a token revoked; false when no live token has this id.
    pub async fn revoke_token(&self, id: &str, at: &str) -> Result<bool> {
        let _guard = self.exclusive().await;
        let done =
            sqlx::query("UPDATE api_tokens SET revoked = $1 WHERE id = $2 AND revoked IS NULL")
                .bind(at)
                .bind(id)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// Tokens joined with their tenant's name; the callers add the condition.
macro_rules! token_select {
    ($tail:literal) => {
        concat!(
            "SELECT t.id, t.tenant_id, n.name, t.scope, t.secret_sha256, t.created, t.revoked, t.label, t.expires, t.last_used ",
            "FROM api_tokens t JOIN tenants n ON n.id = t.tenant_id ",
            $tail
        )
    };
}
const TOKEN_SELECT_BY_ID: &str = token_select!("WHERE t.id = $1");
const TOKEN_SELECT_BY_TENANT: &str =
    token_select!("WHERE t.tenant_id = $1 ORDER BY t.created DESC");
const TOKEN_SELECT_ALL: &str = token_select!("ORDER BY n.name, t.created DESC");

pub(super) fn tenant_from_row(row: &sqlx::any::AnyRow) -> Result<Tenant> {
    let id: String = row.try_get("id")?;
    let name: String = row.try_get("name")?;
    Ok(Tenant {
        id: TenantId::from_uuid(parse_uuid(&id)?),
        name: TenantName::parse(&name).map_err(|e| Error::Sql(sqlx::Error::Decode(Box::new(e))))?,
        created: row.try_get("created")?,
    })
}

fn token_from_row(row: &sqlx::any::AnyRow) -> Result<TokenRecord> {
    let tenant_id: String = row.try_get(1)?;
    let tenant_name: String = row.try_get(2)?;
    let scope: String = row.try_get(3)?;
    Ok(TokenRecord {
        id: row.try_get(0)?,
        tenant_id: TenantId::from_uuid(parse_uuid(&tenant_id)?),
        tenant_name: TenantName::parse(&tenant_name)
            .map_err(|e| Error::Sql(sqlx::Error::Decode(Box::new(e))))?,
        scope: Scope::parse(&scope).ok_or_else(|| {
            Error::Sql(sqlx::Error::Decode(
                format!("unknown token scope '{scope}'").into(),
            ))
        })?,
        secret_sha256: row.try_get(4)?,
        created: row.try_get(5)?,
        revoked: row.try_get(6)?,
        label: row.try_get(7)?,
        expires: optional_timestamp("api_tokens.expires", row.try_get(8)?)?,
        last_used: optional_timestamp("api_tokens.last_used", row.try_get(9)?)?,
    })
}

fn optional_timestamp(column: &'static str, raw: Option<String>) -> Result<Option<Timestamp>> {
    raw.map(|s| Timestamp::parse(&s).ok_or(Error::BadColumn { column, value: s }))
        .transpose()
}

fn parse_uuid(raw: &str) -> Result<Uuid> {
    Uuid::parse_str(raw).map_err(|e| Error::Sql(sqlx::Error::Decode(Box::new(e))))
}
