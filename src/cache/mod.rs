//! Caches of effective permissions: in-process (always) and Redis (with
//! `--redis-url`, shared by every replica).
//!
//! May use: `domain`, `mapping` (result types). Invariant: the cache never
//! computes a permission and never decides whether an entry is current. Keys
//! carry the tenant's epoch, read from the database by `app` for every check,
//! and the mapping fingerprint; an entry is returned only for exactly the
//! key asked for, so an entry written before a revocation is unreachable
//! after it. TTLs exist only to collect garbage.

mod redis_cache;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mapping::TenantResult;

pub use redis_cache::{RedisCache, RedisError};

use crate::domain::TenantId;

/// What a cached computation is valid for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    /// The tenant's epoch (`tenants.epoch`) of the snapshot computed from.
    pub epoch: i64,
    /// Fingerprint of the mapping files in force.
    pub mapping: String,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct CacheMetrics {
    pub local_hits: AtomicU64,
    pub redis_hits: AtomicU64,
    pub misses: AtomicU64,
    pub computes: AtomicU64,
    /// In-process entries replaced because the tenant's version moved on.
    pub invalidations: AtomicU64,
    pub redis_errors: AtomicU64,
}

impl CacheMetrics {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The in-process cache: each tenant's latest computed result. Older
/// versions are dropped as soon as a newer one is stored.
#[derive(Default)]
pub struct LocalCache {
    tenants: Mutex<HashMap<TenantId, (Version, Arc<TenantResult>)>>,
    /// One computation per tenant at a time: concurrent misses wait for the
    /// first and then find its result (no stampede).
    flights: Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<()>>>>,
}

impl LocalCache {
    /// The result for exactly this version, if held.
    pub fn get(&self, tenant: TenantId, version: &Version) -> Option<Arc<TenantResult>> {
        let map = self.tenants.lock().ok()?;
        match map.get(&tenant) {
            Some((v, r)) if v == version => Some(r.clone()),
            _ => None,
        }
    }

    /// Stores a result unless a newer epoch is already held. Returns true
    /// when it replaced an entry of another version.
    pub fn put(&self, tenant: TenantId, version: Version, result: Arc<TenantResult>) -> bool {
        let Ok(mut map) = self.tenants.lock() else {
            return false;
        };
        match map.get(&tenant) {
            Some((v, _)) if v.epoch > version.epoch && v.mapping == version.mapping => false,
            Some((v, _)) => {
                let replaced = *v != version;
                map.insert(tenant, (version, result));
                replaced
            }
            None => {
                map.insert(tenant, (version, result));
                false
            }
        }
    }

    /// The lock that serialises computations of one tenant.
    pub fn flight(&self, tenant: TenantId) -> Arc<tokio::sync::Mutex<()>> {
        match self.flights.lock() {
            Ok(mut f) => f.entry(tenant).or_default().clone(),
            Err(_) => Arc::new(tokio::sync::Mutex::new(())),
        }
    }
}

/// The Redis key of one user's permission summary at one version. The
/// tenant id comes first, so tenants never share a key.
pub fn user_key(prefix: &str, tenant: TenantId, version: &Version, user_id: &str) -> String {
    format!(
        "{prefix}perm:{tenant}:{}:{}:{user_id}",
        version.epoch, version.mapping
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_tenant_and_version_scoped() {
        let t1 = TenantId::new();
        let t2 = TenantId::new();
        let v = Version {
            epoch: 3,
            mapping: "abc".into(),
        };
        let w = Version {
            epoch: 4,
            mapping: "abc".into(),
        };
        assert_ne!(user_key("rb:", t1, &v, "u"), user_key("rb:", t2, &v, "u"));
        assert_ne!(user_key("rb:", t1, &v, "u"), user_key("rb:", t1, &w, "u"));
        assert!(user_key("rb:", t1, &v, "u").starts_with(&format!("rb:perm:{t1}:")));
    }
}
