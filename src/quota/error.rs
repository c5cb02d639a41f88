/// Why Redis did not decide: the caller then enforces the replica's share
/// of the quota locally. Every variant means "unavailable"; none is fatal.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("redis skipped: the quota circuit breaker is open until a heartbeat succeeds")]
    Open,
    #[error("redis quota call timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("redis quota call failed: {0}")]
    Redis(String),
    /// The URL is not echoed: it may hold a password.
    #[error("invalid redis url for quotas: {0}")]
    Url(String),
    #[error("redis answered the quota script with {0:?}, expected [code, wait]")]
    Answer(Vec<i64>),
}
