//! API tokens: `rb_<id>.<secret>`. The id finds the row; only SHA-256 of the
//! secret is stored, and it is compared in constant time. A token grants one
//! scope in one tenant.

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{now, App, Error, Result};
use crate::domain::{Scope, Secret, Tenant, TenantName};
use crate::store::TokenRecord;

/// A token just created: the only moment its secret exists in clear.
/// How often `last_used` is written for one token: it tells a stale
/// connection, and to the minute is enough for that.
const LAST_USED_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// A new token's label and expiry.
#[derive(Debug, Clone, Default)]
pub struct TokenOptions {
    pub label: Option<String>,
    pub expires: Option<crate::domain::Timestamp>,
}

pub struct NewToken {
    pub id: String,
    pub token: Secret,
}

/// Who a request is, once its token checked out.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub tenant: Tenant,
    pub token_id: String,
    /// The token's label, for the audit trail.
    pub token_label: Option<String>,
}

/// 256 random bits from the OS, base64url: the secret half of an API token
/// and of a webhook signing secret.
pub(super) fn random_256_bits() -> String {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// Hex SHA-256 of a token secret. Tokens carry 256 random bits, so a fast
/// hash is enough: there is nothing to brute-force that a slow KDF protects.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl App {
    pub async fn create_tenant(&self, name: &TenantName) -> Result<Tenant> {
        Ok(self.store.create_tenant(name, &now()).await?)
    }

    pub async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        Ok(self.store.list_tenants().await?)
    }

    /// Every token (of one tenant, or of all), revoked ones included.
    pub async fn list_tokens(&self, tenant: Option<&TenantName>) -> Result<Vec<TokenRecord>> {
        let tenant = match tenant {
            Some(name) => Some(self.tenant(name).await?.id),
            None => None,
        };
        Ok(self.store.list_tokens(tenant).await?)
    }

    /// Revokes one of a tenant's tokens (the admin API); false when the
    /// tenant has no active token with that id.
    pub async fn revoke_tenant_token(&self, tenant: &Tenant, id: &str) -> Result<bool> {
        Ok(self
            .store
            .revoke_tenant_token(tenant.id, id, &now())
            .await?)
    }

    /// Revokes a token; false when no active token has that id.
    pub async fn revoke_token(&self, id: &str) -> Result<bool> {
        Ok(self.store.revoke_token(id, &now()).await?)
    }

    pub async fn create_token(&self, tenant: &TenantName, scope: Scope) -> Result<NewToken> {
        self.create_token_with(tenant, scope, TokenOptions::default())
            .await
    }

    /// A token with a label and an expiry: what a tenant admin issues for
    /// an IdP connection.
    pub async fn create_token_with(
        &self,
        tenant: &TenantName,
        scope: Scope,
        options: TokenOptions,
    ) -> Result<NewToken> {
        if let Some(label) = &options.label {
            if label.chars().count() > 200 || label.chars().any(char::is_control) {
                return Err(Error::Usage(
                    "a token label is at most 200 characters, with no control characters".into(),
                ));
            }
        }
        if options.expires.is_some_and(|e| e <= self.clock().now()) {
            return Err(Error::Usage(
                "a token's expiry must be in the future".into(),
            ));
        }
        let tenant = self.tenant(tenant).await?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let secret = random_256_bits();
        self.store
            .insert_token(&TokenRecord {
                id: id.clone(),
                tenant_id: tenant.id,
                tenant_name: tenant.name.clone(),
                scope,
                secret_sha256: hash_secret(&secret),
                created: now(),
                revoked: None,
                label: options.label,
                expires: options.expires,
                last_used: None,
            })
            .await?;
        Ok(NewToken {
            token: Secret::new(format!("rb_{id}.{secret}")),
            id,
        })
    }

    pub async fn tenant(&self, name: &TenantName) -> Result<Tenant> {
        self.store
            .tenant_by_name(name)
            .await?
            .ok_or_else(|| Error::Usage(format!("tenant '{name}' does not exist")))
    }

    /// Checks a bearer token for `scope` on the tenant named in the URL.
    /// Every failure looks the same to the caller (401) except a valid token
    /// used outside its tenant or scope (403), which reveals nothing the
    /// holder does not already know.
    pub async fn authenticate(
        &self,
        bearer: &str,
        tenant: &str,
        scope: Scope,
    ) -> Result<Authenticated> {
        let (id, secret) = bearer
            .strip_prefix("rb_")
            .and_then(|rest| rest.split_once('.'))
            .ok_or(Error::Unauthorized)?;
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Unauthorized);
        }
        let record = self.store.token_by_id(id).await?;
        // Hash even when the id is unknown, so timing does not tell a valid
        // id from an invalid one.
        let presented = hash_secret(secret);
        let stored = record
            .as_ref()
            .map(|r| r.secret_sha256.clone())
            .unwrap_or_else(|| "0".repeat(64));
        let same: bool = presented.as_bytes().ct_eq(stored.as_bytes()).into();
        let now = self.clock().now();
        let record = match record {
            Some(r) if same && r.revoked.is_none() && r.expires.is_none_or(|e| now < e) => r,
            _ => return Err(Error::Unauthorized),
        };
        if record
            .last_used
            .is_none_or(|t| now.since(t) >= LAST_USED_EVERY)
        {
            // Off the request path: on SQLite a long write (a directory
            // sync) holds the database, and a request must not wait for it
            // only to note when its token was last seen.
            let (store, id) = (self.store.clone(), record.id.clone());
            tokio::spawn(async move {
                if let Err(e) = store.touch_token(&id, now).await {
                    tracing::warn!(token = %id, error = %e, "cannot record when a token was last used");
                }
            });
        }
        if record.tenant_name.as_str() != tenant {
            return Err(Error::Forbidden(
                "this token belongs to another tenant".into(),
            ));
        }
        if record.scope != scope {
            return Err(Error::Forbidden(format!(
                "this token has scope '{}', not '{scope}'",
                record.scope
            )));
        }
        Ok(Authenticated {
            tenant: Tenant {
                id: record.tenant_id,
                name: record.tenant_name,
                created: String::new(),
            },
            token_id: record.id,
            token_label: record.label,
        })
    }
}
