//! The Redis side of the cache: one key per user holding `as_of|json`,
//! written only when the user's permissions change, never ahead of a newer
//! entry (a compare-and-set script), and read with a bounded wait.
//!
//! Redis is never on the critical path while it is down or hung: a circuit
//! breaker opens on the first failure, every call is then skipped at once,
//! and a background probe (never a check) closes it again when Redis
//! answers. Writes go through a bounded queue drained by one task, so a
//! hung Redis never slows a SCIM write; what cannot be queued is dropped
//! and counted (an older entry only ever answers relaxed checks that allow
//! it, see `cache`). No lock is held across a Redis call.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use crate::domain::TenantId;

/// Longest wait for one GET before the check goes to the store.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(100);
/// Longest wait for one pipelined batch of writes.
const WRITE_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long the breaker stays open before a background probe.
pub const OPEN_FOR: Duration = Duration::from_millis(1000);
/// Garbage collection only: entries are replaced in place, so at most one
/// per user exists; a deleted user's tombstone and a deleted tenant's
/// entries go after this.
pub const ENTRY_TTL_SECS: u64 = 86_400;
/// Write batches queued at most before new ones are dropped.
const QUEUE: usize = 1024;

/// SET only when the stored entry's revision is older: two replicas'
/// writes, or a write racing a fill, never move an entry backwards.
const CAS: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur then
  local at = tonumber(string.match(cur, '^(%d+)|'))
  if at and at >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 'EX', ARGV[3])
return 1
";

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis is unreachable: {0}")]
    Unavailable(String),
    #[error("redis call timed out after {0:?}")]
    Timeout(Duration),
    #[error("redis skipped: the circuit breaker is open after a failure")]
    Open,
    #[error("redis error: {0}")]
    Command(#[from] redis::RedisError),
}

/// One user's entry: the summary JSON (`None`: the user was deleted) and
/// the tenant revision it is current at.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisEntry {
    pub as_of: i64,
    pub json: Option<String>,
}

impl RedisEntry {
    fn encode(&self) -> String {
        self.json.clone().unwrap_or_default()
    }
    fn decode(raw: &str) -> Option<RedisEntry> {
        let (at, json) = raw.split_once('|')?;
        Some(RedisEntry {
            as_of: at.parse().ok()?,
            json: (!json.is_empty()).then(|| json.to_string()),
        })
    }
}

#[derive(Debug, Default)]
struct Breaker {
    open_until: Option<Instant>,
    probing: bool,
}

struct Inner {
    client: redis::Client,
    prefix: String,
    conn: Mutex<Option<ConnectionManager>>,
    connecting: AtomicBool,
    breaker: Mutex<Breaker>,
    healthy: AtomicBool,
    writes: AtomicU64,
    dropped: AtomicU64,
    /// Entries queued and not yet written or dropped (`flush`).
    pending: AtomicU64,
}

pub struct RedisCache {
    inner: Arc<Inner>,
    queue: OnceLock<tokio::sync::mpsc::Sender<Vec<(String, RedisEntry)>>>,
}

impl RedisCache {
    /// Parses the URL; connecting happens in the background, so the service
    /// starts (and answers from the store) while Redis is down.
    pub fn new(url: &str, prefix: &str) -> Result<Self, RedisError> {
        let client = redis::Client::open(url).map_err(RedisError::Command)?;
        Ok(RedisCache {
            inner: Arc::new(Inner {
                client,
                prefix: prefix.to_string(),
                conn: Mutex::new(None),
                connecting: AtomicBool::new(false),
                breaker: Mutex::new(Breaker::default()),
                healthy: AtomicBool::new(true),
                writes: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                pending: AtomicU64::new(0),
            }),
            queue: OnceLock::new(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    pub fn is_healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed)
    }

    /// Entries written (each a compare-and-set of one user's key).
    pub fn writes(&self) -> u64 {
        self.inner.writes.load(Ordering::Relaxed)
    }

    /// Entries not written because the queue was full or the breaker open.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// One user's entry. Skipped at once (`Open`) while the breaker is
    /// open or no connection is up yet.
    pub async fn get(
        &self,
        tenant: TenantId,
        user_id: &str,
    ) -> Result<Option<RedisEntry>, RedisError> {
        let inner = &self.inner;
        let mut conn = inner.usable()?;
        let key = super::user_key(&inner.prefix, tenant, user_id);
        let result = tokio::time::timeout(
            CALL_TIMEOUT,
            redis::cmd("GET")
                .arg(&key)
                .query_async::<Option<String>>(&mut conn),
        )
        .await
        .map_err(|_| RedisError::Timeout(CALL_TIMEOUT))
        .and_then(|r| r.map_err(RedisError::Command));
        inner.record(&result);
        Ok(result?.as_deref().and_then(RedisEntry::decode))
    }

    /// Queues entries for the writer task; never waits. Must be called
    /// from within a tokio runtime.
    pub fn enqueue(&self, tenant: TenantId, entries: Vec<(String, RedisEntry)>) {
        if entries.is_empty() {
            return;
        }
        let n = entries.len() as u64;
        if !self.inner.allowed() {
            self.inner.dropped.fetch_add(n, Ordering::Relaxed);
            return;
        }
        let keyed: Vec<(String, RedisEntry)> = entries
            .into_iter()
            .map(|(user, e)| (super::user_key(&self.inner.prefix, tenant, &user), e))
            .collect();
        let tx = self.queue.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
            tokio::spawn(writer(self.inner.clone(), rx));
            tx
        });
        self.inner.pending.fetch_add(n, Ordering::AcqRel);
        if tx.try_send(keyed).is_err() {
            self.inner.pending.fetch_sub(n, Ordering::AcqRel);
            self.inner.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// PING, for `/readyz` (bounded; ignores the breaker so readiness
    /// reports the truth).
    pub async fn ping(&self) -> Result<(), RedisError> {
        self.inner.ping().await
    }

    /// Waits (at most 5 s) until every queued entry was written or dropped
    /// (tests, benchmarks).
    pub async fn flush(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.inner.pending.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Inner {
    /// True while calls may go to Redis. When the open period is over, the
    /// first caller starts a background probe; calls stay skipped until it
    /// succeeds.
    fn allowed(self: &Arc<Self>) -> bool {
        let Ok(mut b) = self.breaker.lock() else {
            return false;
        };
        match b.open_until {
            None => true,
            Some(until) if Instant::now() < until || b.probing => false,
            Some(_) => {
                b.probing = true;
                drop(b);
                let me = self.clone();
                tokio::spawn(async move {
                    let _ = me.ping().await;
                });
                false
            }
        }
    }

    /// A connection to use now, or `Open` when calls are skipped. With no
    /// connection yet, one is made in the background and this call skips.
    fn usable(self: &Arc<Self>) -> Result<ConnectionManager, RedisError> {
        if !self.allowed() {
            return Err(RedisError::Open);
        }
        if let Some(c) = self.conn.lock().ok().and_then(|g| g.clone()) {
            return Ok(c);
        }
        if !self.connecting.swap(true, Ordering::AcqRel) {
            let me = self.clone();
            tokio::spawn(async move {
                let result = me.connect().await.map(|_| ());
                me.record(&result);
            });
        }
        Err(RedisError::Open)
    }

    /// A bounded PING whose outcome closes or opens the breaker.
    async fn ping(&self) -> Result<(), RedisError> {
        let result = match self.connect().await {
            Ok(mut c) => tokio::time::timeout(
                CALL_TIMEOUT * 3,
                redis::cmd("PING").query_async::<String>(&mut c),
            )
            .await
            .map_err(|_| RedisError::Timeout(CALL_TIMEOUT * 3))
            .and_then(|r| r.map(|_| ()).map_err(RedisError::Command)),
            Err(e) => Err(e),
        };
        self.record(&result);
        result
    }

    async fn connect(&self) -> Result<ConnectionManager, RedisError> {
        if let Some(c) = self.conn.lock().ok().and_then(|g| g.clone()) {
            return Ok(c);
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT * 3))
            .set_response_timeout(Some(WRITE_TIMEOUT))
            .set_number_of_retries(1);
        let result = tokio::time::timeout(
            CALL_TIMEOUT * 6,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| RedisError::Timeout(CALL_TIMEOUT * 6))
        .and_then(|r| r.map_err(|e| RedisError::Unavailable(e.to_string())));
        self.connecting.store(false, Ordering::Release);
        let manager = result?;
        if let Ok(mut g) = self.conn.lock() {
            *g = Some(manager.clone());
        }
        Ok(manager)
    }

    fn record<T>(&self, result: &Result<T, RedisError>) {
        match result {
            Ok(_) => {
                if let Ok(mut b) = self.breaker.lock() {
                    *b = Breaker::default();
                }
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("redis is reachable again; cache shared again");
                }
            }
            Err(RedisError::Open) => {}
            Err(e) => {
                if let Ok(mut b) = self.breaker.lock() {
                    b.open_until = Some(Instant::now() + OPEN_FOR);
                    b.probing = false;
                }
                if self.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "redis unavailable; skipping it until a probe succeeds");
                }
            }
        }
    }
}

/// Entries per pipeline: a whole-tenant recomputation queues one batch per
/// tenant (100,000 entries at 100k users), which as one pipeline outlasts
/// any sane timeout; pipelines of this size each answer in milliseconds.
const PIPELINE: usize = 1000;

/// Drains the queue: pipelines of compare-and-set calls, [`PIPELINE`] at a
/// time.
async fn writer(inner: Arc<Inner>, mut rx: tokio::sync::mpsc::Receiver<Vec<(String, RedisEntry)>>) {
    let script = redis::Script::new(CAS);
    while let Some(batch) = rx.recv().await {
        for chunk in batch.chunks(PIPELINE) {
            let n = chunk.len() as u64;
            let mut conn = match inner.usable() {
                Ok(c) => c,
                Err(_) => {
                    inner.dropped.fetch_add(n, Ordering::Relaxed);
                    inner.pending.fetch_sub(n, Ordering::AcqRel);
                    continue;
                }
            };
            let mut pipe = redis::pipe();
            // EVALSHA fails with NOSCRIPT on a Redis that never saw the
            // script (a fresh or restarted server): load it first, in the
            // same pipeline.
            pipe.load_script(&script).ignore();
            for (key, entry) in chunk {
                pipe.invoke_script(
                    script
                        .key(key)
                        .arg(entry.as_of)
                        .arg(entry.encode())
                        .arg(ENTRY_TTL_SECS),
                )
                .ignore();
            }
            let result = tokio::time::timeout(WRITE_TIMEOUT, pipe.query_async::<()>(&mut conn))
                .await
                .map_err(|_| RedisError::Timeout(WRITE_TIMEOUT))
                .and_then(|r| r.map_err(RedisError::Command));
            inner.record(&result);
            match result {
                Ok(()) => inner.writes.fetch_add(n, Ordering::Relaxed),
                Err(_) => inner.dropped.fetch_add(n, Ordering::Relaxed),
            };
            inner.pending.fetch_sub(n, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_tombstones_have_no_json() {
        let e = RedisEntry {
            as_of: 12,
            json: Some("{\"a\":\"x|y\"}".into()),
        };
        let raw = format!("{}|{}", e.as_of, e.encode());
        assert_eq!(RedisEntry::decode(&raw), Some(e));
        assert_eq!(
            RedisEntry::decode("7|"),
            Some(RedisEntry {
                as_of: 7,
                json: None
            })
        );
        assert_eq!(RedisEntry::decode("garbage"), None);
    }
}
