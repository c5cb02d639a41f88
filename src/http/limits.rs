//! Inbound load control: provisioning quotas per tenant and per token, and
//! the service-wide cap on requests in flight.
//!
//! Quotas are checked after authentication, in the extractor of every
//! endpoint they cover ([`super::extract::ScimRequest`]; an admin extractor
//! would call [`RateLimits::admit`] the same way). Keys are therefore only
//! tenants and tokens that exist, so the keyed limiters cannot be grown by
//! an anonymous client, and an unauthenticated flood aimed at a tenant's URL
//! cannot spend that tenant's quota. Such a flood is bounded by the
//! in-flight cap instead. Invariant: every tenant has buckets of its own,
//! so one tenant's traffic never delays or refuses another's; the
//! permissions API (`/api/v1`) never draws on these quotas.
//!
//! With a Redis URL the quotas are cluster-wide: each decision is one
//! script in Redis ([`crate::quota::ClusterQuota`]), so N replicas admit a
//! tenant's quota once, not N times. Two layers of `governor` buckets stay
//! in the process:
//! - the first line, at the full quota: a replica never admits more than
//!   the whole cluster's quota by itself, so a request it would refuse is
//!   refused without a Redis round trip;
//! - the fallback, at 1/N of each quota, used only while Redis is down,
//!   hung (a call over [`crate::quota::CALL_TIMEOUT`]) or skipped by the
//!   breaker: N replicas each admitting their share admit about the quota
//!   together. N is the larger of `[rate_limit] replicas` and the live
//!   replicas last counted by the heartbeat
//!   ([`crate::quota::ClusterQuota::fallback_replicas`]).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::Uri;
use axum::response::Response;
use axum::BoxError;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, RateLimiter};

use crate::config::{Quota, RateLimitSettings};
use crate::domain::TenantId;
pub use crate::quota::Bucket;
use crate::quota::{ClusterQuota, Decision};

/// Who decided: Redis for the whole cluster, this process's first line at
/// the full quota (also every decision without Redis), or this process's
/// share while Redis is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Redis,
    Local,
    Fallback,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Redis => "redis",
            Source::Local => "local",
            Source::Fallback => "fallback",
        }
    }
}

/// A refused request: the bucket that was empty, how long until it holds
/// one request again, and who refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub bucket: Bucket,
    pub retry_after: Duration,
    pub source: Source,
}

/// The quota limiters of one router.
pub struct RateLimits {
    /// The quotas, for the per-tenant figures the Redis script is given.
    settings: RateLimitSettings,
    /// The first line: every quota in full, in this process.
    local: Limiters,
    /// The cluster-wide buckets, when a Redis URL is configured.
    cluster: Option<Cluster>,
}

struct Cluster {
    quota: ClusterQuota,
    /// The fallback limiters and the N they divide by. Built at the first
    /// decision Redis cannot make, and kept across outages (a Redis that
    /// flaps does not refill them), unless N has changed since.
    fallback: Mutex<Option<(u32, Arc<Limiters>)>>,
}

impl RateLimits {
    pub fn new(settings: &RateLimitSettings) -> Self {
        let cluster = settings.redis_url.as_deref().map(|url| Cluster {
            quota: ClusterQuota::new(url, &settings.key_prefix, settings.replicas),
            fallback: Mutex::new(None),
        });
        RateLimits {
            settings: settings.clone(),
            local: Limiters::new(settings, NonZeroU32::MIN),
            cluster,
        }
    }

    /// Takes one request from the token's bucket, then from the tenant's,
    /// and says who decided. The token is checked first so that a token
    /// over its own quota does not spend its tenant's.
    pub async fn admit(
        &self,
        tenant: TenantId,
        tenant_name: &str,
        token_id: &str,
    ) -> Result<Source, Refused> {
        self.local
            .check(tenant, tenant_name, token_id)
            .map_err(|(bucket, retry_after)| Refused {
                bucket,
                retry_after,
                source: Source::Local,
            })?;
        let Some(cluster) = &self.cluster else {
            return Ok(Source::Local);
        };
        let quotas = self.settings.for_tenant(tenant_name);
        match cluster.quota.decide(tenant, token_id, quotas).await {
            Ok(Decision::Admitted) => Ok(Source::Redis),
            Ok(Decision::Refused {
                bucket,
                retry_after,
            }) => Err(Refused {
                bucket,
                retry_after,
                source: Source::Redis,
            }),
            Err(e) => {
                tracing::debug!(error = %e, tenant = tenant_name, "quota decided by this replica's share");
                self.fallback(cluster)
                    .check(tenant, tenant_name, token_id)
                    .map(|()| Source::Fallback)
                    .map_err(|(bucket, retry_after)| Refused {
                        bucket,
                        retry_after,
                        source: Source::Fallback,
                    })
            }
        }
    }

    /// N, what each quota is divided by while Redis is down; `None`
    /// without Redis.
    pub fn fallback_replicas(&self) -> Option<u32> {
        self.cluster.as_ref().map(|c| c.quota.fallback_replicas())
    }

    /// The limiters of this replica's share under the current N.
    fn fallback(&self, cluster: &Cluster) -> Arc<Limiters> {
        let n = cluster.quota.fallback_replicas();
        let mut slot = match cluster.fallback.lock() {
            Ok(g) => g,
            // A panic while building limiters leaves nothing half-written
            // in the slot; the guard is still usable.
            Err(poisoned) => poisoned.into_inner(),
        };
        match &*slot {
            Some((built_for, limiters)) if *built_for == n => limiters.clone(),
            _ => {
                let share = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
                let limiters = Arc::new(Limiters::new(&self.settings, share));
                *slot = Some((n, limiters.clone()));
                limiters
            }
        }
    }
}

/// One set of in-process buckets: every tenant's and token's, each at
/// `1/share` of its quota.
struct Limiters {
    /// Tenants on the default quota, keyed by id.
    tenants: DefaultKeyedRateLimiter<TenantId>,
    /// Tokens of tenants on the default quota, keyed by token id (the
    /// public half of a token, never its secret).
    tokens: DefaultKeyedRateLimiter<String>,
    /// Tenants with a `[rate_limit.tenants.NAME]` override: their own
    /// tenant and token limiters, by tenant name as the file spells it.
    overridden: HashMap<String, Overridden>,
    clock: DefaultClock,
}

struct Overridden {
    tenant: governor::DefaultDirectRateLimiter,
    tokens: DefaultKeyedRateLimiter<String>,
}

/// A quota divided among `share` replicas: the burst divided (rounded
/// down, so N shares never exceed the whole, but at least 1) and the
/// interval between refills multiplied.
fn governor_quota(q: Quota, share: NonZeroU32) -> governor::Quota {
    if share == NonZeroU32::MIN {
        return governor::Quota::per_second(q.per_second).allow_burst(q.burst);
    }
    let n = share.get();
    let burst = NonZeroU32::new(q.burst.get() / n).unwrap_or(NonZeroU32::MIN);
    let nanos = (1e9 * f64::from(n) / f64::from(q.per_second.get())).ceil() as u64;
    governor::Quota::with_period(Duration::from_nanos(nanos.max(1)))
        .unwrap_or_else(|| governor::Quota::per_second(q.per_second))
        .allow_burst(burst)
}

impl Limiters {
    fn new(settings: &RateLimitSettings, share: NonZeroU32) -> Self {
        Limiters {
            tenants: RateLimiter::keyed(governor_quota(settings.default.tenant, share)),
            tokens: RateLimiter::keyed(governor_quota(settings.default.token, share)),
            overridden: settings
                .tenants
                .iter()
                .map(|(name, q)| {
                    (
                        name.clone(),
                        Overridden {
                            tenant: RateLimiter::direct(governor_quota(q.tenant, share)),
                            tokens: RateLimiter::keyed(governor_quota(q.token, share)),
                        },
                    )
                })
                .collect(),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request from the token's bucket, then from the tenant's;
    /// when either is empty, that bucket and the wait.
    fn check(
        &self,
        tenant: TenantId,
        tenant_name: &str,
        token_id: &str,
    ) -> Result<(), (Bucket, Duration)> {
        let token_key = token_id.to_string();
        let (token_check, own_tenant_limiter) = match self.overridden.get(tenant_name) {
            Some(o) => (o.tokens.check_key(&token_key), Some(&o.tenant)),
            None => (self.tokens.check_key(&token_key), None),
        };
        let refuse = |bucket, not_until: governor::NotUntil<_>| {
            (bucket, not_until.wait_time_from(self.clock.now()))
        };
        token_check.map_err(|n| refuse(Bucket::Token, n))?;
        match own_tenant_limiter {
            Some(limiter) => limiter.check(),
            None => self.tenants.check_key(&tenant),
        }
        .map_err(|n| refuse(Bucket::Tenant, n))
    }
}

/// `Retry-After` in whole seconds (RFC 9110 §10.2.3): the wait rounded up,
/// and at least 1 so that a client never retries at once.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// Turns a request shed by the in-flight cap into a 503 in the format of
/// the API it addressed.
///
/// The cap (`[http] max_in_flight`) answers at once rather than queueing: a
/// queue in front of a saturated store only adds latency to every request
/// until clients time out, while identity providers retry a 503 on their
/// own. `tower`'s `GlobalConcurrencyLimitLayer` is used rather than
/// `ConcurrencyLimitLayer` because axum applies a layer to each route
/// separately, and only the global one shares its semaphore among them.
pub async fn shed(uri: Uri, err: BoxError) -> Response {
    if err.is::<tower::load_shed::error::Overloaded>() {
        super::error::overloaded(uri.path())
    } else {
        // The cap's layers fail only by shedding; anything else is a bug
        // worth a log line, answered as a generic 500.
        super::error::internal(uri.path(), &err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    }

    fn settings(tenant_burst: u32, token_burst: u32) -> RateLimitSettings {
        let mut s = RateLimitSettings::default();
        s.default.tenant = Quota::new(1, tenant_burst).unwrap();
        s.default.token = Quota::new(1, token_burst).unwrap();
        s
    }

    #[tokio::test]
    async fn tenants_have_separate_buckets() {
        let limits = RateLimits::new(&settings(2, 100));
        let (a, b) = (TenantId::new(), TenantId::new());
        assert_eq!(limits.admit(a, "a", "ta").await.unwrap(), Source::Local);
        assert!(limits.admit(a, "a", "ta").await.is_ok());
        let refused = limits.admit(a, "a", "ta").await.unwrap_err();
        assert_eq!(refused.bucket, Bucket::Tenant);
        assert_eq!(refused.source, Source::Local);
        assert!(refused.retry_after > Duration::ZERO);
        assert!(limits.admit(b, "b", "tb").await.is_ok());
        assert_eq!(limits.fallback_replicas(), None);
    }

    #[tokio::test]
    async fn tokens_have_separate_buckets_and_overrides_apply() {
        let mut s = settings(100, 1);
        s.tenants.insert(
            "big".into(),
            crate::config::TenantQuotas {
                tenant: Quota::new(1, 100).unwrap(),
                token: Quota::new(1, 3).unwrap(),
            },
        );
        let limits = RateLimits::new(&s);
        let t = TenantId::new();
        assert!(limits.admit(t, "t", "one").await.is_ok());
        assert_eq!(
            limits.admit(t, "t", "one").await.unwrap_err().bucket,
            Bucket::Token
        );
        assert!(limits.admit(t, "t", "two").await.is_ok());
        let big = TenantId::new();
        for _ in 0..3 {
            assert!(limits.admit(big, "big", "one").await.is_ok());
        }
        assert_eq!(
            limits.admit(big, "big", "one").await.unwrap_err().bucket,
            Bucket::Token
        );
    }

    /// A share is the burst divided, rounded down but at least one, and
    /// the refill slowed by the same factor.
    #[test]
    fn shares_divide_burst_and_rate() {
        let q = Quota::new(1, 30).unwrap();
        let three = NonZeroU32::new(3).unwrap();
        let share = governor_quota(q, three);
        assert_eq!(share.burst_size().get(), 10);
        assert_eq!(share.replenish_interval(), Duration::from_secs(3));
        let whole = governor_quota(q, NonZeroU32::MIN);
        assert_eq!(whole.burst_size().get(), 30);
        assert_eq!(whole.replenish_interval(), Duration::from_secs(1));
        let tiny = governor_quota(Quota::new(100, 2).unwrap(), three);
        assert_eq!(tiny.burst_size().get(), 1);
        assert_eq!(tiny.replenish_interval(), Duration::from_millis(30));
    }
}
