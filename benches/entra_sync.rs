//! Entra sync at scale: the Graph stand-in (tests/support/graph.rs) holds
//! 50,000 users and 2,000 groups; the release binary runs
//! `rolebridge sync --source S --json` against a fresh SQLite database as a
//! child process, first in full, then incrementally after 1% of the users
//! changed. Reports users/s and the child's peak RSS (getrusage
//! RUSAGE_CHILDREN) as a markdown table.
//!
//! `cargo bench --bench entra_sync` (ENTRA_BENCH_USERS / ENTRA_BENCH_GROUPS
//! to change the size).

#[path = "../tests/support/graph.rs"]
mod graph;

use std::process::Command;
use std::time::Instant;

use graph::{GraphOptions, GraphStandIn};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Peak resident set of every child waited for so far, in MiB.
fn children_peak_rss_mib() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0, "getrusage");
    usage.ru_maxrss as f64 / 1024.0 // KiB on Linux
}

struct Run {
    label: &'static str,
    seconds: f64,
    users: u64,
    report: serde_json::Value,
}

async fn sync(db: &str, config: &std::path::Path, label: &'static str, users: u64) -> Run {
    let (db, config) = (db.to_string(), config.to_path_buf());
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_rolebridge"))
            .arg("--config")
            .arg(&config)
            .args(["sync", "--source", "bench", "--json"])
            .env("ROLEBRIDGE_DATABASE_URL", &db)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run rolebridge")
    })
    .await
    .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "sync failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    Run {
        label,
        seconds,
        users,
        report,
    }
}

fn main() {
    let users = env_usize("ENTRA_BENCH_USERS", 50_000);
    let groups = env_usize("ENTRA_BENCH_GROUPS", 2_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let g = GraphStandIn::start_with(GraphOptions {
            // Graph's largest page.
            page_size: 999,
            member_chunk: 100,
            ..GraphOptions::default()
        })
        .await;
        let setup = Instant::now();
        let ids: Vec<String> = (0..users)
            .map(|i| g.add_user(&format!("user{i}@contoso.example"), "User", &format!("{i}")))
            .collect();
        let gids: Vec<String> = (0..groups)
            .map(|i| g.add_group(&format!("Group {i}"), i % 4 != 3))
            .collect();
        // Each user in one team group of 25; every 10th group nested in the
        // next; one all-staff group repeated over many pages.
        let per = users.div_ceil(groups.max(1)).max(1);
        for (i, u) in ids.iter().enumerate() {
            g.add_member(&gids[(i / per).min(groups - 1)], u);
        }
        for i in (0..groups.saturating_sub(1)).step_by(10) {
            g.add_member(&gids[i + 1], &gids[i]);
        }
        for u in ids.iter().take(5_000) {
            g.add_member(&gids[0], u);
        }
        let memberships = users + groups / 10 + ids.len().min(5_000);
        eprintln!(
            "stand-in ready in {:.1} s: {users} users, {groups} groups, ~{memberships} memberships",
            setup.elapsed().as_secs_f64()
        );

        let dir = std::env::temp_dir().join(format!("rolebridge-entra-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = format!("sqlite://{}/bench.db", dir.display());
        let secret = dir.join("secret");
        std::fs::write(&secret, &g.options.client_secret).unwrap();
        let config = dir.join("rolebridge.toml");
        std::fs::write(
            &config,
            format!(
                "[[source]]\nname = \"bench\"\ntenant = \"bench\"\nkind = \"entra\"\n\
                 directory_id = \"{}\"\nclient_id = \"{}\"\nclient_secret = {{ file = \"{}\" }}\n\
                 authority_url = \"{}\"\ngraph_url = \"{}\"\n",
                g.options.directory_id,
                g.options.client_id,
                secret.display(),
                g.authority,
                g.graph_url
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_rolebridge"))
            .args(["tenant", "create", "bench"])
            .env("ROLEBRIDGE_DATABASE_URL", &db)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

        let full = sync(&db, &config, "full (first sync)", users as u64).await;
        let peak_full = children_peak_rss_mib();
        assert_eq!(full.report["users_created"], users as u64, "{}", full.report);

        let changed = users / 100;
        for u in ids.iter().take(changed) {
            g.set_user(u, "surname", serde_json::json!("Changed"));
        }
        let delta = sync(&db, &config, "incremental (1% changed)", changed as u64).await;
        assert_eq!(delta.report["users_updated"], changed as u64, "{}", delta.report);
        let graph_requests = g.graph_requests();

        println!("\n## Entra sync: {users} users, {groups} groups, SQLite, release binary\n");
        println!("| run | users | wall s | users/s | entries read | created | updated | members added | peak RSS MiB |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (r, rss) in [(&full, peak_full), (&delta, children_peak_rss_mib())] {
            println!(
                "| {} | {} | {:.2} | {:.0} | {} | {} | {} | {} | {:.1} |",
                r.label,
                r.users,
                r.seconds,
                r.users as f64 / r.seconds,
                r.report["entries_read"],
                r.report["users_created"],
                r.report["users_updated"],
                r.report["members_added"],
                rss,
            );
        }
        println!(
            "\nGraph requests served: {graph_requests}. Peak RSS is the maximum over all children so far \
             (getrusage RUSAGE_CHILDREN), so the incremental row cannot be lower than the full one."
        );
        let _ = std::fs::remove_dir_all(&dir);
    });
}
