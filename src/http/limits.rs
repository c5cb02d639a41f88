//! Inbound load control: provisioning quotas per tenant and per token
//! (`governor`), and the service-wide cap on requests in flight.
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

use std::collections::HashMap;
use std::time::Duration;

use axum::http::Uri;
use axum::response::Response;
use axum::BoxError;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, RateLimiter};

use crate::config::{Quota, RateLimitSettings};
use crate::domain::TenantId;

/// Which bucket refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Tenant,
    Token,
}

impl Bucket {
    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Tenant => "tenant",
            Bucket::Token => "token",
        }
    }
}

/// A refused request: the bucket that was empty and how long until it
/// holds one request again.
#[derive(Debug, Clone, Copy)]
pub struct Refused {
    pub bucket: Bucket,
    pub retry_after: Duration,
}

/// The quota limiters of one router.
pub struct RateLimits {
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

fn governor_quota(q: Quota) -> governor::Quota {
    governor::Quota::per_second(q.per_second).allow_burst(q.burst)
}

impl RateLimits {
    pub fn new(settings: &RateLimitSettings) -> Self {
        RateLimits {
            tenants: RateLimiter::keyed(governor_quota(settings.default.tenant)),
            tokens: RateLimiter::keyed(governor_quota(settings.default.token)),
            overridden: settings
                .tenants
                .iter()
                .map(|(name, q)| {
                    (
                        name.clone(),
                        Overridden {
                            tenant: RateLimiter::direct(governor_quota(q.tenant)),
                            tokens: RateLimiter::keyed(governor_quota(q.token)),
                        },
                    )
                })
                .collect(),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request from the token's bucket, then from the tenant's.
    /// The token is checked first so that a token over its own quota does
    /// not spend its tenant's.
    pub fn admit(
        &self,
        tenant: TenantId,
        tenant_name: &str,
        token_id: &str,
    ) -> Result<(), Refused> {
        let token_key = token_id.to_string();
        let (token_check, own_tenant_limiter) = match self.overridden.get(tenant_name) {
            Some(o) => (o.tokens.check_key(&token_key), Some(&o.tenant)),
            None => (self.tokens.check_key(&token_key), None),
        };
        let refuse = |bucket, not_until: governor::NotUntil<_>| Refused {
            bucket,
            retry_after: not_until.wait_time_from(self.clock.now()),
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

    #[test]
    fn tenants_have_separate_buckets() {
        let limits = RateLimits::new(&settings(2, 100));
        let (a, b) = (TenantId::new(), TenantId::new());
        assert!(limits.admit(a, "a", "ta").is_ok());
        assert!(limits.admit(a, "a", "ta").is_ok());
        let refused = limits.admit(a, "a", "ta").unwrap_err();
        assert_eq!(refused.bucket, Bucket::Tenant);
        assert!(refused.retry_after > Duration::ZERO);
        assert!(limits.admit(b, "b", "tb").is_ok());
    }

    #[test]
    fn tokens_have_separate_buckets_and_overrides_apply() {
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
        assert!(limits.admit(t, "t", "one").is_ok());
        assert_eq!(
            limits.admit(t, "t", "one").unwrap_err().bucket,
            Bucket::Token
        );
        assert!(limits.admit(t, "t", "two").is_ok());
        let big = TenantId::new();
        for _ in 0..3 {
            assert!(limits.admit(big, "big", "one").is_ok());
        }
        assert_eq!(
            limits.admit(big, "big", "one").unwrap_err().bucket,
            Bucket::Token
        );
    }
}
