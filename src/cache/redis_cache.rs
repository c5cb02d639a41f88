//! The Redis side of the cache: bounded-time GET and pipelined SET through a
//! `ConnectionManager`, which reconnects by itself. When Redis is down or
//! slow every call fails fast and the caller computes from the store; the
//! first failure and the recovery are logged once each.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use tokio::sync::RwLock;

/// Longest wait for one Redis call before the check falls back to the store.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// Entries are garbage after their epoch passes; this only frees memory.
pub const ENTRY_TTL_SECS: u64 = 3600;
/// How often to try connecting again while Redis is down.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis is unreachable: {0}")]
    Unavailable(String),
    #[error("redis call timed out after {0:?}")]
    Timeout(Duration),
    #[error("redis error: {0}")]
    Command(#[from] redis::RedisError),
}

pub struct RedisCache {
    client: redis::Client,
    /// Key prefix, so several deployments can share one Redis.
    pub prefix: String,
    conn: RwLock<Option<ConnectionManager>>,
    last_attempt: std::sync::Mutex<Option<Instant>>,
    healthy: AtomicBool,
}

impl RedisCache {
    /// Parses the URL; connecting happens on first use, so the service starts
    /// (and answers from the store) while Redis is down.
    pub fn new(url: &str, prefix: &str) -> Result<Self, RedisError> {
        let client = redis::Client::open(url).map_err(RedisError::Command)?;
        Ok(RedisCache {
            client,
            prefix: prefix.to_string(),
            conn: RwLock::new(None),
            last_attempt: std::sync::Mutex::new(None),
            healthy: AtomicBool::new(true),
        })
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    async fn connection(&self) -> Result<ConnectionManager, RedisError> {
        if let Some(c) = self.conn.read().await.as_ref() {
            return Ok(c.clone());
        }
        {
            let mut last = self
                .last_attempt
                .lock()
                .map_err(|_| RedisError::Unavailable("poisoned".into()))?;
            if last.is_some_and(|t| t.elapsed() < RECONNECT_EVERY) {
                return Err(RedisError::Unavailable("reconnect pending".into()));
            }
            *last = Some(Instant::now());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1);
        let manager = tokio::time::timeout(
            CALL_TIMEOUT * 3,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| RedisError::Timeout(CALL_TIMEOUT * 3))?
        .map_err(|e| RedisError::Unavailable(e.to_string()))?;
        *self.conn.write().await = Some(manager.clone());
        Ok(manager)
    }

    fn record<T>(&self, result: Result<T, RedisError>) -> Result<T, RedisError> {
        match &result {
            Ok(_) => {
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("redis is reachable again; cache shared again");
                }
            }
            Err(e) => {
                if self.healthy.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "redis unavailable; answering from the store");
                }
            }
        }
        result
    }

    /// GET with a bounded wait.
    pub async fn get(&self, key: &str) -> Result<Option<String>, RedisError> {
        let result = async {
            let mut c = self.connection().await?;
            tokio::time::timeout(CALL_TIMEOUT, redis::cmd("GET").arg(key).query_async(&mut c))
                .await
                .map_err(|_| RedisError::Timeout(CALL_TIMEOUT))?
                .map_err(RedisError::Command)
        }
        .await;
        self.record(result)
    }

    /// SET EX of many entries in pipelines of 1,000.
    pub async fn put_many(&self, entries: &[(String, String)]) -> Result<(), RedisError> {
        let result = async {
            let mut c = self.connection().await?;
            for chunk in entries.chunks(1000) {
                let mut pipe = redis::pipe();
                for (k, v) in chunk {
                    pipe.cmd("SET")
                        .arg(k)
                        .arg(v)
                        .arg("EX")
                        .arg(ENTRY_TTL_SECS)
                        .ignore();
                }
                tokio::time::timeout(CALL_TIMEOUT * 10, pipe.query_async::<()>(&mut c))
                    .await
                    .map_err(|_| RedisError::Timeout(CALL_TIMEOUT * 10))??;
            }
            Ok(())
        }
        .await;
        self.record(result)
    }

    /// PING, for `/readyz`.
    pub async fn ping(&self) -> Result<(), RedisError> {
        let result = async {
            let mut c = self.connection().await?;
            tokio::time::timeout(
                CALL_TIMEOUT,
                redis::cmd("PING").query_async::<String>(&mut c),
            )
            .await
            .map_err(|_| RedisError::Timeout(CALL_TIMEOUT))??;
            Ok(())
        }
        .await;
        self.record(result)
    }
}
