//! Cluster-wide provisioning quotas: one bucket per tenant and per token,
//! shared by every replica through Redis, decided by the generic cell rate
//! algorithm (GCRA) in one atomic script per request ([`ClusterQuota`]).
//!
//! May use: `domain`, `config` (the [`Quota`] vocabulary). Never `app`,
//! `store`, `cache`, `http`, `cli` or `sync` (`.ci/run` greps for it); the
//! HTTP edge (`http::limits`) calls it after authentication and turns a
//! refusal into a 429. Invariant: a decision spends the token's and the
//! tenant's buckets together or not at all, and the token is judged first,
//! so a token over its own quota never spends its tenant's.
//!
//! Why GCRA rather than a token bucket in Redis: a bucket's whole state is
//! one number, its theoretical arrival time (TAT: when the bucket will have
//! been drained by the requests admitted so far), so a decision is one GET
//! and one SET per key, with no refill arithmetic or second field to keep
//! consistent. The script reads Redis's own clock (`TIME`), so replicas
//! whose clocks disagree still share one timeline. Each key expires when
//! its bucket would be full again, which is exactly when its state stops
//! mattering.
//!
//! What happens while Redis is down, and how the number of replicas N is
//! known, is decided by the caller with [`ClusterQuota::fallback_replicas`]:
//! each replica writes a heartbeat into one sorted set (see [`ClusterQuota`]).

mod error;
mod redis;

use std::time::Duration;

pub use self::error::Error;
pub use self::redis::{ClusterQuota, CALL_TIMEOUT, HEARTBEAT, STALE_AFTER};
pub use crate::config::{Quota, TenantQuotas};

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

/// The answer of one quota decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Both buckets had room, and one request was taken from each.
    Admitted,
    /// `bucket` had no room; nothing was taken from either bucket.
    /// `retry_after` is how long until it holds one request again.
    Refused {
        bucket: Bucket,
        retry_after: Duration,
    },
}

/// The time between two requests a quota refills, in microseconds (the
/// unit of the script's clock). Fractional: a quota above a million a
/// second (the benchmarks' "unlimited" one) has an interval below 1 µs.
pub fn interval_micros(q: Quota) -> f64 {
    1e6 / f64::from(q.per_second.get())
}
