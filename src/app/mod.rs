//! Use cases. The only module that combines the store with the SCIM engine
//! (and, later, mappings, permissions and the cache), so transactions and
//! invalidation have one home.
//!
//! May use: everything below `http`. Invariant: every write that a caller
//! sees acknowledged was committed first; a failed operation rolls back and
//! leaves no partial change.

mod bulk;
mod changes;
mod derive;
mod error;
mod group_commit;
pub mod mappings;
mod permissions;
mod resources;
pub mod sync;
mod tokens;
pub mod webhooks;

pub use crate::domain::{format_timestamp, now};
pub use bulk::{BulkLimits, BulkOp, BulkOutcome, BULK_LIMITS};
pub use changes::{
    ChangeEvent, ChangePage, Grants, ListedUser, PermissionDiff, PermissionListing, MAX_PAGE,
    MAX_WAIT,
};
pub use derive::Committed;
pub use error::Error;
pub use group_commit::{GroupCommitMetrics, MAX_BATCH};
pub use mappings::{LoadedMappings, Mappings};
pub use permissions::{
    user_facts, AnsweredFrom, Checked, Consistency, PermissionCache, Summary, SummaryUser, UserRef,
    SYNC_URN,
};
pub use resources::{ListQuery, ListResult, Outcome, RequestContext, MAX_COUNT};
pub use sync::{group_doc, user_doc, Applied, CursorUpdate, SyncMetrics, SYNC_USER_URN};
pub use tokens::{hash_secret, Authenticated, NewToken, TokenOptions};

use std::sync::Arc;

use crate::domain::{Clock, SystemClock};
use crate::store::Store;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The application: a cheap handle shared by every request. Its parts are
/// private: `http` and `cli` reach the store only through these use cases,
/// so every write goes through `commit` (derivation, epoch, cache).
#[derive(Clone)]
pub struct App {
    store: Store,
    /// The mapping files in force; swapped whole on reload.
    mappings: Arc<Mappings>,
    /// Effective-permission caches (in-process, and Redis when configured).
    cache: Arc<PermissionCache>,
    /// Directory-sync run counters (`/metrics`).
    sync_metrics: Arc<SyncMetrics>,
    /// Where sync runs read the time (grace periods, leases, schedules).
    clock: Arc<dyn Clock>,
    /// How long a sync run's lease lasts and how often it is renewed.
    sync_lease: sync::SyncLease,
    /// When a mapping change needs confirmation.
    mapping_guard: Arc<mappings::GuardSettings>,
    /// Woken after every commit that appended change-feed events.
    change_notify: Arc<tokio::sync::Notify>,
    /// Webhook delivery counters (`/metrics`).
    webhook_metrics: Arc<webhooks::WebhookMetrics>,
    /// How webhooks are delivered (`[webhooks]`).
    webhook_settings: Arc<webhooks::WebhookSettings>,
    /// Set at SIGTERM: readiness answers 503 from then on.
    shutting_down: Arc<std::sync::atomic::AtomicBool>,
    /// Each tenant's group-commit lane for SCIM writes.
    lanes: Arc<group_commit::Lanes>,
}

impl App {
    /// An app with no mapping files: SCIM works, no tenant is mapped.
    pub fn new(store: Store) -> Self {
        App {
            store,
            mappings: Arc::new(Mappings::empty()),
            cache: Arc::new(PermissionCache::default()),
            sync_metrics: Arc::new(SyncMetrics::default()),
            clock: Arc::new(SystemClock),
            sync_lease: sync::SyncLease::default(),
            mapping_guard: Arc::default(),
            change_notify: Arc::default(),
            webhook_metrics: Arc::default(),
            webhook_settings: Arc::default(),
            shutting_down: Arc::default(),
            lanes: Arc::default(),
        }
    }

    /// The same app reading time from `clock` (tests move a
    /// [`crate::domain::ManualClock`] instead of sleeping).
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Self {
        App { clock, ..self }
    }

    /// The same app with another mapping guard (`[mapping_guard]`).
    pub fn with_mapping_guard(self, guard: mappings::GuardSettings) -> Self {
        App {
            mapping_guard: Arc::new(guard),
            ..self
        }
    }

    /// Turns readiness to 503 for good (SIGTERM): balancers stop sending new
    /// requests while those in flight finish.
    pub fn begin_shutdown(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The same app with other webhook delivery settings (`[webhooks]`).
    pub fn with_webhook_settings(self, settings: webhooks::WebhookSettings) -> Self {
        App {
            webhook_settings: Arc::new(settings),
            ..self
        }
    }

    pub fn mapping_guard(&self) -> &mappings::GuardSettings {
        &self.mapping_guard
    }

    /// The same app with another sync lease (tests renew in milliseconds).
    pub fn with_sync_lease(self, sync_lease: sync::SyncLease) -> Self {
        App { sync_lease, ..self }
    }

    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    /// Readiness: the store answers (and Redis, when configured). The error
    /// says which dependency failed, without secrets.
    pub async fn ready(&self) -> Result<(), String> {
        if self
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err("shutting down: this replica is draining".into());
        }
        self.store.ping().await.map_err(|e| format!("store: {e}"))?;
        if let Some(redis) = &self.cache.redis {
            redis.ping().await.map_err(|e| format!("redis: {e}"))?;
        }
        Ok(())
    }

    /// App-level metrics (mapping refusals, cache) in Prometheus text
    /// format, for `/metrics` to append to the HTTP metrics. The refusal
    /// gauge is read from the stored rows, so every replica reports the
    /// same figures.
    pub async fn metrics_text(&self) -> String {
        let mut out = String::from(
            "# HELP rolebridge_mapping_refusals Assignments that mapping limits refused, by tenant and kind.\n\
             # TYPE rolebridge_mapping_refusals gauge\n",
        );
        match self.refusal_gauge().await {
            Ok(gauge) => {
                for ((tenant, kind), n) in gauge {
                    out.push_str(&format!(
                        "rolebridge_mapping_refusals{{tenant=\"{tenant}\",kind=\"{kind}\"}} {n}\n"
                    ));
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the refusal gauge"),
        }
        let m = &self.cache.metrics;
        let read = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let (redis_writes, redis_dropped) = self
            .cache
            .redis
            .as_ref()
            .map(|r| (r.writes(), r.dropped()))
            .unwrap_or((0, 0));
        for (name, help, value) in [
            (
                "rolebridge_cache_hits_total{layer=\"local\"}",
                "Relaxed checks answered from a cache.",
                read(&m.local_hits),
            ),
            (
                "rolebridge_cache_hits_total{layer=\"redis\"}",
                "",
                read(&m.redis_hits),
            ),
            (
                "rolebridge_check_store_reads_total",
                "Checks answered from the stored row.",
                read(&m.store_reads),
            ),
            (
                "rolebridge_check_computes_total",
                "Checks of users with no stored row yet, computed on the spot.",
                read(&m.computes),
            ),
            (
                "rolebridge_permission_recomputed_users_total",
                "Users whose effective permissions writes recomputed.",
                read(&m.recomputed_users),
            ),
            (
                "rolebridge_permission_changed_users_total",
                "Users whose effective permissions writes changed.",
                read(&m.changed_users),
            ),
            (
                "rolebridge_permission_full_recomputes_total",
                "Whole-tenant recomputations (a mapping change or a bulk write).",
                read(&m.full_recomputes),
            ),
            (
                "rolebridge_redis_errors_total",
                "Redis calls that failed or timed out.",
                read(&m.redis_errors),
            ),
            (
                "rolebridge_redis_entry_writes_total",
                "Per-user Redis entries written.",
                redis_writes,
            ),
            (
                "rolebridge_redis_entry_dropped_total",
                "Per-user Redis entries not written (Redis down or queue full).",
                redis_dropped,
            ),
        ] {
            let base = name.split('{').next().unwrap_or(name);
            if !help.is_empty() {
                out.push_str(&format!("# HELP {base} {help}\n# TYPE {base} counter\n"));
            }
            out.push_str(&format!("{name} {value}\n"));
        }
        out.push_str(&self.sync_metrics.text());
        out.push_str(&self.lanes.metrics.text());
        out.push_str(&self.webhook_metrics_text().await);
        out
    }

    /// The store, read-only by contract: for test fixtures, benchmarks and
    /// inspection. A use case belongs in `App`, not at a caller.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The mapping set in force.
    pub fn mappings(&self) -> &Mappings {
        &self.mappings
    }

    /// The permission caches and their counters.
    pub fn cache(&self) -> &PermissionCache {
        &self.cache
    }

    /// Closes the store's connections (at shutdown).
    pub async fn close(&self) {
        self.store.close().await;
    }

    pub fn with_mappings(store: Store, mappings: Mappings) -> Self {
        App {
            store,
            mappings: Arc::new(mappings),
            cache: Arc::new(PermissionCache::default()),
            sync_metrics: Arc::new(SyncMetrics::default()),
            clock: Arc::new(SystemClock),
            sync_lease: sync::SyncLease::default(),
            mapping_guard: Arc::default(),
            change_notify: Arc::default(),
            webhook_metrics: Arc::default(),
            webhook_settings: Arc::default(),
            shutting_down: Arc::default(),
            lanes: Arc::default(),
        }
    }

    /// Shares cached permissions through Redis at `url`, under `prefix`.
    /// Only the URL is checked here: the service starts, and answers from
    /// the store, while Redis is down.
    pub fn with_redis(self, url: &str, prefix: &str) -> Result<Self, crate::cache::RedisError> {
        let redis = crate::cache::RedisCache::new(url, prefix)?;
        Ok(App {
            cache: Arc::new(PermissionCache {
                redis: Some(redis),
                ..PermissionCache::default()
            }),
            ..self
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_have_a_fixed_width() {
        let a = super::now();
        assert_eq!(a.len(), "2026-11-25T02:41:16.123456Z".len(), "{a}");
        assert!(a.ends_with('Z'));
    }
}
