//! The `rolebridge` binary: parse the command line, run it, and turn any
//! error into one line on stderr and a non-zero exit.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: a full directory sync allocates and
/// frees millions of small strings and JSON values, and perf showed glibc's
/// malloc, free and consolidation as the largest part of the sync thread's
/// time. mimalloc also returns freed memory instead of fragmenting arenas.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match rolebridge::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{}", one_line_usage_error(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    rolebridge::telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(rolebridge::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line_error(&e));
            ExitCode::FAILURE
        }
    }
}

/// One line: the error and each cause its message does not already quote.
fn one_line_error(e: &anyhow::Error) -> String {
    rolebridge::telemetry::error_chain(e.as_ref())
}

/// Clap's usage errors span several lines (message, usage, hint); keep the
/// message and any list of possible values, on one line.
fn one_line_usage_error(rendered: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for line in rendered.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            continue;
        }
        parts.push(line);
    }
    let joined = parts.join(" ");
    if joined.starts_with("error:") {
        joined
    } else {
        format!("error: {joined}")
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("source 'corp': {0}")]
    struct Quoting(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("bind failed: invalidCredentials (49)")]
    struct Inner;

    #[test]
    fn a_cause_the_message_quotes_is_printed_once() {
        let e = anyhow::Error::new(Quoting(Inner));
        assert_eq!(
            super::one_line_error(&e),
            "source 'corp': bind failed: invalidCredentials (49)"
        );
        let e = anyhow::Error::new(Inner).context("cannot listen on 127.0.0.1:1");
        assert_eq!(
            super::one_line_error(&e),
            "cannot listen on 127.0.0.1:1: bind failed: invalidCredentials (49)"
        );
    }
}
