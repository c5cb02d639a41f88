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
    use std::io::IsTerminal;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    let _ = match format {
        // Colour codes belong on a terminal, not in a file or a collector.
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_env_filter(filter())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter())
            .try_init(),
    };
    install_panic_hook();
}

/// Panics are logged through `tracing` instead of printed raw, so that in
/// `--log-format json` every line on stderr is JSON, and a panic carries the
/// span (request, sync run) it happened in.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        let payload = panic_message(info.payload()).unwrap_or("(non-string panic payload)");
        let backtrace = std::backtrace::Backtrace::capture();
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        match backtrace.status() {
            std::backtrace::BacktraceStatus::Captured => tracing::error!(
                panic = %payload,
                %location,
                %thread,
                backtrace = %backtrace,
                "panic"
            ),
            _ => tracing::error!(panic = %payload, %location, %thread, "panic"),
        }
    }));
}

/// An error and its causes on one line, each cause only where the text
/// before it does not already quote it: our errors quote their cause in
/// their own message (so a log line shows it whole), and reqwest hides
/// "connection refused" deep in its source chain. At most 8 causes.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string().replace('\n', " ");
    let mut cause = e.source();
    for _ in 0..8 {
        let Some(c) = cause else { break };
        let text = c.to_string().replace('\n', " ");
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// The message of a panic payload (`panic!` gives a `&str` or a `String`),
/// for the hook and for the places that catch a panic and report it.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
}

/// The process's peak resident set so far, in KiB (Linux `VmHWM`); `None`
/// where `/proc` does not say. Sync runs log it after each phase, so a
/// memory regression shows which phase holds the peak.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Hands the memory the process has freed back to the OS. The binary's
/// allocator is mimalloc (`main.rs`), which keeps freed pages for the
/// process's next Rust allocations; SQLite allocates its page cache with
/// the C allocator and cannot reuse them. A 100,000-user sync frees its
/// plan's scratch before the bulk write, and without this the write's
/// page cache came on top of that memory (the run's peak RSS). With no
/// mimalloc heap in use (the tests' allocator), there is nothing to free.
pub fn return_freed_memory() {
    // SAFETY: `mi_collect` takes no pointers and has no preconditions; it
    // may be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
