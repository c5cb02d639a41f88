//! Logging setup: `tracing` to stderr, filtered by `RUST_LOG` (default
//! `info`), as text or as one JSON object per line (`--log-format json`).
//!
//! Invariant: no log line carries a secret. Tokens, passwords and bind
//! secrets are typed [`crate::domain::Secret`] and print as `***`; request
//! spans record method and URI but never headers (`http::router_with`), and
//! a token is identified in logs by its public id only.

/// The shape of log lines on stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

pub fn init(format: LogFormat) {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_env_filter(filter()).try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter())
            .try_init(),
    };
}
