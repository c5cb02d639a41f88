//! Runs scim2-tester (through `scim2 test` from PyPI's scim2-cli) against a
//! fresh server and tenant, and fails on any result that is not a success,
//! unless it is listed in [`DOCUMENTED_DEVIATIONS`] with its justification.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::both_backends;

/// Checks allowed to report something other than success, with the reason.
/// Empty: every check of scim2-tester 0.5.2 succeeds.
const DOCUMENTED_DEVIATIONS: &[(&str, &str)] = &[];

/// Statuses scim2-tester prints for a check that conforms.
const PASSING: &[&str] = &["SUCCESS", "COMPLIANT", "ACCEPTABLE"];
/// Every status it can print (scim2_tester.utils.Status).
const ALL: &[&str] = &[
    "SUCCESS",
    "COMPLIANT",
    "ACCEPTABLE",
    "DEVIATION",
    "ERROR",
    "CRITICAL",
    "SKIPPED",
];

/// The `scim2` executable: `$ROLEBRIDGE_SCIM2`, else a virtualenv under
/// `target/` that is created on first use from the pinned requirements.
fn scim2() -> PathBuf {
    if let Ok(p) = std::env::var("ROLEBRIDGE_SCIM2") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target").join("scim2-venv");
    let bin = venv.join("bin").join("scim2");
    if !bin.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
            && Command::new(venv.join("bin").join("pip"))
                .args(["install", "--quiet", "-r"])
                .arg(root.join("tests/conformance-requirements.txt"))
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        assert!(
            ok,
            "could not install scim2-cli into {}: python3 and PyPI are needed",
            venv.display()
        );
    }
    bin
}

/// (status, check name) for every result line of `scim2 test`.
fn parse(output: &str) -> Vec<(String, String)> {
    output
        .lines()
        .filter_map(|line| {
            let (status, name) = line.split_once(' ')?;
            ALL.contains(&status)
                .then(|| (status.to_string(), name.trim().to_string()))
        })
        .collect()
}

both_backends! {
    async fn scim2_tester_reports_no_error(srv) {
        let bin = scim2();
        let base = srv.base.clone();
        let header = format!("Authorization: Bearer {}", srv.token);
        let output = tokio::time::timeout(
            Duration::from_secs(300),
            tokio::process::Command::new(&bin)
                .args(["--url", &base, "--header", &header, "test"])
                .output(),
        )
        .await
        .expect("scim2 test took over 300 s")
        .expect("run scim2");
        let text = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        let results = parse(&text);
        assert!(results.len() >= 100, "scim2-tester ran only {} checks:\n{text}", results.len());
        let failures: Vec<_> = results
            .iter()
            .filter(|(status, name)| {
                !PASSING.contains(&status.as_str())
                    && !DOCUMENTED_DEVIATIONS.iter().any(|(n, _)| n == name)
            })
            .collect();
        assert!(failures.is_empty(), "scim2-tester failures {failures:?}:\n{text}");
        eprintln!("scim2-tester: {} checks passed", results.len());
    }
}

#[test]
fn parser_reads_statuses_and_ignores_details() {
    let out = "Performing a SCIM compliance check on http://x/ ...\nSUCCESS a\n  detail\nERROR search_with_attributes\n  no such endpoint\nSKIPPED c\n";
    assert_eq!(
        parse(out),
        vec![
            ("SUCCESS".into(), "a".into()),
            ("ERROR".into(), "search_with_attributes".into()),
            ("SKIPPED".into(), "c".into())
        ]
    );
}
