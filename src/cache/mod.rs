//! Caches of per-user effective permissions: in-process (always) and Redis
//! (with `--redis-url`, shared by every replica). Both hold at most one
//! entry per user, replaced in place when the user's permissions change.
//!
//! May use: `domain`. Invariant: the cache never computes a permission and
//! never decides whether an entry may be served. Every entry carries the
//! tenant revision it is known to be current at (`as_of`); `app` serves an
//! entry only to a check that allows it (`at_least_as_fresh` at most that
//! revision, or `minimize_latency`), and a default check never reads a
//! cache at all. TTLs exist only to collect garbage.

mod redis_cache;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use redis_cache::{RedisCache, RedisEntry, RedisError};

use crate::domain::TenantId;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct CacheMetrics {
    pub local_hits: AtomicU64,
    pub redis_hits: AtomicU64,
    /// Checks answered from the stored row.
    pub store_reads: AtomicU64,
    /// Checks whose user had no stored row yet (computed on the spot).
    pub computes: AtomicU64,
    /// Users recomputed by writes, and how many of them changed.
    pub recomputed_users: AtomicU64,
    pub changed_users: AtomicU64,
    /// Whole-tenant recomputations (a mapping change or a bulk write).
    pub full_recomputes: AtomicU64,
    pub redis_errors: AtomicU64,
}

impl CacheMetrics {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add_n(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Entries the in-process cache holds at most; past it the cache starts
/// over (it is a latency aid for relaxed checks, never the truth).
pub const LOCAL_CAPACITY: usize = 200_000;

/// One cached value and the tenant revision it is current at.
#[derive(Debug)]
pub struct Cached<V> {
    pub as_of: i64,
    pub value: Arc<V>,
}

impl<V> Clone for Cached<V> {
    fn clone(&self) -> Self {
        Cached {
            as_of: self.as_of,
            value: self.value.clone(),
        }
    }
}

/// The in-process cache: per (tenant, key), the entry with the highest
/// `as_of` seen. Keys are user ids, and `name:` + lowercased userName.
pub struct LocalCache<V> {
    entries: Mutex<HashMap<(TenantId, String), Cached<V>>>,
}

impl<V> Default for LocalCache<V> {
    fn default() -> Self {
        LocalCache {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<V> LocalCache<V> {
    pub fn get(&self, tenant: TenantId, key: &str) -> Option<Cached<V>> {
        let map = self.entries.lock().ok()?;
        map.get(&(tenant, key.to_string())).cloned()
    }

    /// Stores the entry unless one at a newer revision is held.
    pub fn put(&self, tenant: TenantId, key: &str, entry: Cached<V>) {
        let Ok(mut map) = self.entries.lock() else {
            return;
        };
        if map.len() >= LOCAL_CAPACITY {
            map.clear();
        }
        let slot = map.entry((tenant, key.to_string()));
        match slot {
            std::collections::hash_map::Entry::Occupied(mut o) => {
                if o.get().as_of <= entry.as_of {
                    o.insert(entry);
                }
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(entry);
            }
        }
    }

    pub fn remove(&self, tenant: TenantId, key: &str) {
        if let Ok(mut map) = self.entries.lock() {
            map.remove(&(tenant, key.to_string()));
        }
    }

    /// Drops everything (a mapping reload).
    pub fn clear(&self) {
        if let Ok(mut map) = self.entries.lock() {
            map.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The Redis key of one user's entry. The tenant id comes first, so
/// tenants never share a key; there is one key per user, whatever the
/// revision.
pub fn user_key(prefix: &str, tenant: TenantId, user_id: &str) -> String {
    format!("{prefix}eff:{tenant}:{user_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_tenant_scoped_and_one_per_user() {
        let t1 = TenantId::new();
        let t2 = TenantId::new();
        assert_ne!(user_key("rb:", t1, "u"), user_key("rb:", t2, "u"));
        assert!(user_key("rb:", t1, "u").starts_with(&format!("rb:eff:{t1}:")));
    }

    #[test]
    fn an_older_entry_never_replaces_a_newer_one() {
        let c: LocalCache<&'static str> = LocalCache::default();
        let t = TenantId::new();
        c.put(
            t,
            "u",
            Cached {
                as_of: 5,
                value: Arc::new("new"),
            },
        );
        c.put(
            t,
            "u",
            Cached {
                as_of: 3,
                value: Arc::new("old"),
            },
        );
        assert_eq!(*c.get(t, "u").unwrap().value, "new");
        c.put(
            t,
            "u",
            Cached {
                as_of: 6,
                value: Arc::new("newer"),
            },
        );
        assert_eq!(c.get(t, "u").unwrap().as_of, 6);
    }
}
