//! The Redis side of the quotas: the GCRA script (`gcra.lua`), the replica
//! heartbeat that tells every replica how many of them there are, and the
//! circuit breaker that keeps a dead or hung Redis off the request path.
//!
//! Keys, all under the configured prefix (`rolebridge:quota:` by default):
//! - `{prefix}{TENANT_ID}:tenant`: the tenant's TAT;
//! - `{prefix}{TENANT_ID}:token:TOKEN_ID`: a token's TAT (the token's
//!   public id, never its secret). The braces are a Redis Cluster hash tag:
//!   both keys of one decision hash to the same slot, which a script
//!   touching two keys needs there;
//! - `{prefix}replicas`: a sorted set of replica ids scored by the Redis
//!   time (ms) of their last heartbeat.
//!
//! Every key expires: a bucket's when it would be full again, the set
//! [`STALE_AFTER`] after the last heartbeat.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{interval_micros, Bucket, Decision, Error, TenantQuotas};
use crate::domain::TenantId;

/// Longest wait for one decision (or heartbeat) before the request is
/// decided locally. A decision answers in well under a millisecond on a
/// healthy Redis; 100 ms is the bound the permissions cache uses too, so a
/// hung Redis costs one request at most this much before the breaker opens.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(100);
/// How often each replica writes its heartbeat. The heartbeat is also the
/// breaker's probe: the first one that succeeds closes it.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A replica not heard from for this long is no longer counted: a few
/// missed heartbeats, so one slow beat does not shrink the count.
pub const STALE_AFTER: Duration = Duration::from_secs(5);

/// Registers this replica and counts the live ones, in Redis time so that
/// replicas' clocks do not matter. One sorted set rather than a key per
/// replica: counting is one ZCARD, not a SCAN of the keyspace.
const HEARTBEAT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local stale = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - stale)
redis.call('PEXPIRE', KEYS[1], stale)
return redis.call('ZCARD', KEYS[1])
";

/// Cluster-wide quotas in one Redis, shared by every replica that uses the
/// same prefix.
///
/// While Redis is unavailable (a connection error, a command error or a
/// call over [`CALL_TIMEOUT`]), [`ClusterQuota::decide`] answers
/// [`Error`] and the caller enforces this replica's share of each quota:
/// 1/N, with N from [`ClusterQuota::fallback_replicas`]. The first failure
/// opens a circuit breaker, so later decisions skip Redis at once instead
/// of each waiting out the timeout; the next heartbeat that succeeds
/// closes it. (The same rules as the permissions cache's breaker; the
/// heartbeat that runs anyway is the probe here, so no probe is ever
/// started by a request.)
///
/// How N is known: a background task writes this replica's heartbeat into
/// `{prefix}replicas` every [`HEARTBEAT`] and reads back how many replicas
/// beat within [`STALE_AFTER`]. The last count seen while Redis was up is
/// what N is when it goes down, since a replica cannot count the others
/// without it; the configured `[rate_limit] replicas` is a floor, and the
/// only figure before any count was seen (a replica that starts while
/// Redis is down). A stopped replica drops out of the count after
/// [`STALE_AFTER`]; until then N is too large, which errs towards refusing.
pub struct ClusterQuota {
    inner: Arc<Inner>,
}

/// State shared with the heartbeat task, which holds it weakly and stops
/// when the last [`ClusterQuota`] is dropped.
struct Inner {
    /// The parsed URL, or why it did not parse (then every decision is
    /// local; the URL itself is never logged, it may hold a password).
    client: Result<redis::Client, String>,
    /// One multiplexed connection for every request, made on first use; it
    /// reconnects by itself after I/O errors.
    conn: OnceLock<ConnectionManager>,
    prefix: String,
    /// This replica's member in the heartbeat set: random per process, so
    /// a restarted replica is a new member and the old one goes stale.
    replica: String,
    /// `[rate_limit] replicas`.
    floor: u32,
    /// Live replicas in the last successful heartbeat; 0 before the first.
    seen: AtomicU32,
    /// The circuit breaker: true from a failed call until a heartbeat
    /// succeeds.
    open: AtomicBool,
    /// Whether the heartbeat task was started (once per process).
    beating: AtomicBool,
    gcra: redis::Script,
    heartbeat: redis::Script,
}

impl ClusterQuota {
    /// Quotas in the Redis at `url`, under `prefix`, assuming at least
    /// `floor` replicas when Redis is down. Connecting happens on first
    /// use, so the service starts (and decides locally) while Redis is
    /// down; the heartbeat starts now when called within a tokio runtime,
    /// else with the first decision.
    pub fn new(url: &str, prefix: &str, floor: NonZeroU32) -> ClusterQuota {
        let client = redis::Client::open(url).map_err(|e| e.to_string());
        if let Err(e) = &client {
            tracing::error!(error = %e, "invalid redis url for quotas; each replica enforces its share locally");
        }
        let quota = ClusterQuota {
            inner: Arc::new(Inner {
                client,
                conn: OnceLock::new(),
                prefix: prefix.to_string(),
                replica: uuid::Uuid::new_v4().to_string(),
                floor: floor.get(),
                seen: AtomicU32::new(0),
                open: AtomicBool::new(false),
                beating: AtomicBool::new(false),
                gcra: redis::Script::new(include_str!("gcra.lua")),
                heartbeat: redis::Script::new(HEARTBEAT_SCRIPT),
            }),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            quota.start_heartbeat();
        }
        quota
    }

    /// One decision for a request of `token_id` on `tenant` under
    /// `quotas`: both buckets spent, or neither and the refusing bucket
    /// with its wait. An `Err` means Redis did not decide (it is down, hung
    /// or the breaker is open): nothing is known to be spent.
    pub async fn decide(
        &self,
        tenant: TenantId,
        token_id: &str,
        quotas: &TenantQuotas,
    ) -> Result<Decision, Error> {
        self.start_heartbeat();
        let inner = &self.inner;
        if inner.open.load(Ordering::Acquire) {
            return Err(Error::Open);
        }
        let result = match inner.connection() {
            Ok(mut conn) => {
                let mut call = inner.gcra.prepare_invoke();
                call.key(self.token_key(tenant, token_id))
                    .key(self.tenant_key(tenant))
                    .arg(interval_micros(quotas.token))
                    .arg(quotas.token.burst.get())
                    .arg(interval_micros(quotas.tenant))
                    .arg(quotas.tenant.burst.get());
                bounded(call.invoke_async::<Vec<i64>>(&mut conn))
                    .await
                    .and_then(decode)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            inner.fail(e);
        }
        result
    }

    /// N, the number of replicas each quota is divided by while Redis is
    /// down: the larger of `[rate_limit] replicas` and the live replicas
    /// last counted in Redis.
    pub fn fallback_replicas(&self) -> u32 {
        self.inner
            .floor
            .max(self.inner.seen.load(Ordering::Relaxed))
    }

    /// The live replicas counted by the last successful heartbeat, if any.
    pub fn live_replicas(&self) -> Option<u32> {
        Some(self.inner.seen.load(Ordering::Relaxed)).filter(|n| *n > 0)
    }

    /// False while the breaker is open (decisions are local).
    pub fn is_available(&self) -> bool {
        !self.inner.open.load(Ordering::Acquire)
    }

    /// The key of a tenant's bucket.
    pub fn tenant_key(&self, tenant: TenantId) -> String {
        format!("{}{{{tenant}}}:tenant", self.inner.prefix)
    }

    /// The key of a token's bucket.
    pub fn token_key(&self, tenant: TenantId, token_id: &str) -> String {
        format!("{}{{{tenant}}}:token:{token_id}", self.inner.prefix)
    }

    /// The key of the heartbeat set.
    pub fn replicas_key(&self) -> String {
        format!("{}replicas", self.inner.prefix)
    }

    fn start_heartbeat(&self) {
        if !self.inner.beating.swap(true, Ordering::AcqRel) {
            tokio::spawn(heartbeat(Arc::downgrade(&self.inner), self.replicas_key()));
        }
    }
}

impl Inner {
    /// The shared connection, made (lazily, without waiting) on first use.
    fn connection(&self) -> Result<ConnectionManager, Error> {
        if let Some(c) = self.conn.get() {
            return Ok(c.clone());
        }
        let client = self.client.as_ref().map_err(|e| Error::Url(e.clone()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| Error::Redis(e.to_string()))?;
        Ok(self.conn.get_or_init(|| conn).clone())
    }

    /// Opens the breaker after a failed call.
    fn fail(&self, e: &Error) {
        if matches!(e, Error::Open) {
            return;
        }
        if !self.open.swap(true, Ordering::AcqRel) {
            tracing::warn!(error = %e, "redis unavailable for quotas; each replica enforces its share until a heartbeat succeeds");
        }
    }

    /// One heartbeat: registers this replica, records the live count and
    /// closes the breaker, or opens it.
    async fn beat(&self, key: &str) {
        let result = match self.connection() {
            Ok(mut conn) => {
                let mut call = self.heartbeat.prepare_invoke();
                call.key(key)
                    .arg(&self.replica)
                    .arg(STALE_AFTER.as_millis() as u64);
                bounded(call.invoke_async::<u32>(&mut conn)).await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(n) => {
                self.seen.store(n, Ordering::Relaxed);
                if self.open.swap(false, Ordering::AcqRel) {
                    tracing::info!(
                        replicas = n,
                        "redis reachable again; quotas are cluster-wide again"
                    );
                }
            }
            Err(e) => self.fail(&e),
        }
    }
}

/// Beats every [`HEARTBEAT`] until the quotas are dropped.
async fn heartbeat(inner: Weak<Inner>, key: String) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.beat(&key).await;
    }
}

/// A Redis call bounded by [`CALL_TIMEOUT`].
async fn bounded<T>(
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, Error> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| Error::Timeout(CALL_TIMEOUT))?
        .map_err(|e| Error::Redis(e.to_string()))
}

/// The script's `{code, wait}` as a decision.
fn decode(answer: Vec<i64>) -> Result<Decision, Error> {
    let refused = |bucket, wait: i64| Decision::Refused {
        bucket,
        retry_after: Duration::from_micros(wait.max(1).unsigned_abs()),
    };
    match answer[..] {
        [0, _] => Ok(Decision::Admitted),
        [1, wait] => Ok(refused(Bucket::Token, wait)),
        [2, wait] => Ok(refused(Bucket::Tenant, wait)),
        _ => Err(Error::Answer(answer)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decode_into_decisions() {
        assert_eq!(decode(vec![0, 0]).unwrap(), Decision::Admitted);
        assert_eq!(
            decode(vec![1, 1_500_000]).unwrap(),
            Decision::Refused {
                bucket: Bucket::Token,
                retry_after: Duration::from_millis(1500)
            }
        );
        assert_eq!(
            decode(vec![2, 0]).unwrap(),
            Decision::Refused {
                bucket: Bucket::Tenant,
                retry_after: Duration::from_micros(1)
            }
        );
        assert!(matches!(decode(vec![3, 1]), Err(Error::Answer(_))));
        assert!(matches!(decode(vec![]), Err(Error::Answer(_))));
    }

    #[test]
    fn both_keys_of_a_decision_share_a_hash_tag() {
        let q = ClusterQuota::new("redis://127.0.0.1:1/", "p:", NonZeroU32::MIN);
        let t = TenantId::new();
        assert_eq!(q.tenant_key(t), format!("p:{{{t}}}:tenant"));
        assert_eq!(q.token_key(t, "abc"), format!("p:{{{t}}}:token:abc"));
        assert_eq!(q.replicas_key(), "p:replicas");
        assert_eq!(q.fallback_replicas(), 1);
        assert_eq!(q.live_replicas(), None);
    }
}
