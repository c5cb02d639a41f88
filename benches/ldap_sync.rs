//! LDAP sync benchmark: 100,000 users and 5,000 groups loaded into a real
//! slapd with slapadd, then the release `rolebridge sync --source S --json`
//! as a child process on a fresh SQLite database (wall time, peak RSS,
//! users/s), against the floor of a plain paged `ldapsearch` dump of the
//! same entries; then 100 changes and an incremental sync.
//!
//! Run: `cargo bench --bench ldap_sync` (needs slapd, ldap-utils and
//! /usr/bin/time). `LDAP_BENCH_USERS` scales it down for a quick look.

#[path = "../tests/support/slapd.rs"]
mod slapd;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use slapd::*;

/// Every child process is bounded: a hung run fails the bench, not the CI.
const LIMIT: Duration = Duration::from_secs(900);

struct Run {
    wall: Duration,
    peak_rss_kib: u64,
    stdout: String,
}

/// Runs `cmd` under `/usr/bin/time -f %M` (peak RSS in KiB), bounded by LIMIT.
fn timed(program: &str, args: &[&str], envs: &[(&str, String)]) -> Run {
    let rss_file = std::env::temp_dir().join(format!("ldap-bench-rss-{}", std::process::id()));
    let started = Instant::now();
    let mut child = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&rss_file)
        .arg(program)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn /usr/bin/time");
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut { stdout }, &mut s);
        s
    });
    let stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut { stderr }, &mut s);
        s
    });
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let wall = started.elapsed();
            let stdout = reader.join().unwrap();
            let stderr = err_reader.join().unwrap();
            assert!(
                status.success(),
                "{program} {args:?} failed: {stderr}\n{stdout}"
            );
            let peak_rss_kib = std::fs::read_to_string(&rss_file)
                .ok()
                .and_then(|s| s.lines().last().and_then(|l| l.trim().parse().ok()))
                .unwrap_or(0);
            let _ = std::fs::remove_file(&rss_file);
            return Run {
                wall,
                peak_rss_kib,
                stdout,
            };
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("{program} {args:?} exceeded {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // useful: only run the full thing when benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        println!("ldap_sync: run with `cargo bench --bench ldap_sync`");
        return;
    }
    let users: usize = std::env::var("LDAP_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let groups = (users / 20).max(1);
    let bin = env!("CARGO_BIN_EXE_rolebridge");

    // Directory: users u000000.., groups g0000.. of 20 members each, and
    // every 50th group nested in the one before it.
    let t = Instant::now();
    let mut ldif = base_ldif();
    ldif.reserve(users * 220);
    for i in 0..users {
        ldif.push_str(&user_ldif(
            &format!("u{i:06}"),
            &format!("u{i}@example.org"),
        ));
    }
    for g in 0..groups {
        let mut members: Vec<String> = (0..20)
            .map(|k| g * 20 + k)
            .filter(|&i| i < users)
            .map(|i| user_dn(&format!("u{i:06}")))
            .collect();
        if g % 50 == 1 {
            members.push(group_dn(&format!("g{:04}", g - 1)));
        }
        ldif.push_str(&group_ldif(&format!("g{g:04}"), &members));
    }
    let slapd = Slapd::start_with(&ldif);
    drop(ldif);
    let load = t.elapsed();

    // Config, tenant, fresh database.
    let dir = slapd.dir.join("bench");
    std::fs::create_dir_all(dir.join("mappings")).unwrap();
    let pw = dir.join("pw");
    std::fs::write(&pw, SYNC_PW).unwrap();
    let config = dir.join("rolebridge.toml");
    std::fs::write(
        &config,
        format!(
            "[[source]]\nname = \"bench\"\ntenant = \"bench\"\nkind = \"ldap\"\nurl = \"{}\"\n\
             bind_dn = \"{SYNC_DN}\"\nbind_password = {{ file = \"{}\" }}\n\
             base_dns = [\"{PEOPLE}\", \"{GROUPS}\"]\npage_size = 1000\n\
             [source.guard]\nmax_deletes = 1000\nmax_delete_percent = 100\n",
            slapd.url,
            pw.display()
        ),
    )
    .unwrap();
    let envs = [
        (
            "ROLEBRIDGE_DATABASE_URL",
            format!("sqlite://{}", dir.join("bench.db").display()),
        ),
        ("ROLEBRIDGE_CONFIG", config.display().to_string()),
        (
            "ROLEBRIDGE_MAPPINGS",
            dir.join("mappings").display().to_string(),
        ),
        ("RUST_LOG", "warn".to_string()),
    ];
    timed(bin, &["tenant", "create", "bench"], &envs);

    // The floor: a plain paged dump of the same entries.
    let mut floor = Duration::ZERO;
    let mut floor_entries = 0usize;
    for base in [PEOPLE, GROUPS] {
        let r = timed(
            "ldapsearch",
            &[
                "-x",
                "-LLL",
                "-H",
                &slapd.url,
                "-D",
                SYNC_DN,
                "-w",
                SYNC_PW,
                "-E",
                "pr=1000/noprompt",
                "-b",
                base,
                "(|(objectClass=inetOrgPerson)(objectClass=groupOfNames))",
                "uid",
                "cn",
                "mail",
                "givenName",
                "sn",
                "entryUUID",
                "member",
            ],
            &[],
        );
        floor += r.wall;
        floor_entries +=
            r.stdout.matches("\ndn: ").count() + usize::from(r.stdout.starts_with("dn: "));
    }

    // The source alone, in process: LDAP read and conversion into a Batch,
    // without planning or applying (what the runner adds is the rest).
    let (source_wall, source_users, source_groups) = {
        let text = std::fs::read_to_string(&config).unwrap();
        let doc: toml::Table = toml::from_str(&text).unwrap();
        let table = doc["source"].as_array().unwrap()[0]
            .as_table()
            .unwrap()
            .clone();
        let cfg = rolebridge::sync::parse_sources(&[table]).unwrap().remove(0);
        let rolebridge::sync::SourceKind::Ldap(l) = &cfg.kind else {
            unreachable!()
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            use rolebridge::sync::Source as _;
            let mut src = rolebridge::sync::ldap::LdapSource::new(l).unwrap();
            let mut batch = rolebridge::sync::Batch::new();
            let t = Instant::now();
            let request = rolebridge::sync::ReadRequest {
                full: true,
                cursor: None,
            };
            tokio::time::timeout(LIMIT, src.read(&request, &mut batch))
                .await
                .expect("source read in time")
                .expect("source read");
            (t.elapsed(), batch.users.len(), batch.groups.len())
        })
    };
    assert_eq!(source_users, users);

    let full = timed(bin, &["sync", "--source", "bench", "--json"], &envs);
    let report: serde_json::Value =
        serde_json::from_str(full.stdout.trim()).expect("sync --json output");
    assert_eq!(report["outcome"], "applied", "{report}");
    assert_eq!(
        report["users_created"].as_u64(),
        Some(users as u64),
        "{report}"
    );

    // 100 changes: 60 modified users, 20 renamed, 20 membership changes.
    let mut changes = String::new();
    for i in 0..60 {
        let u = user_dn(&format!("u{:06}", i * 997 % users));
        changes.push_str(&format!(
            "dn: {u}\nchangetype: modify\nreplace: sn\nsn: Changed{i}\n\n"
        ));
    }
    for i in 0..20 {
        let n = (i * 1931 + 7) % users;
        changes.push_str(&format!(
            "dn: {}\nchangetype: modrdn\nnewrdn: uid=r{n:06}\ndeleteoldrdn: 1\n\n",
            user_dn(&format!("u{n:06}"))
        ));
    }
    for i in 0..20 {
        let g = group_dn(&format!("g{:04}", (i * 37 + 3) % groups));
        let extra = user_dn(&format!("u{:06}", (i * 4241 + 11) % users));
        changes.push_str(&format!(
            "dn: {g}\nchangetype: modify\nadd: member\nmember: {extra}\n\n"
        ));
    }
    slapd.modify(&changes);
    let incr = timed(bin, &["sync", "--source", "bench", "--json"], &envs);
    let ireport: serde_json::Value =
        serde_json::from_str(incr.stdout.trim()).expect("sync --json output");
    assert_eq!(ireport["mode"], "incremental", "{ireport}");

    let secs = |d: Duration| d.as_secs_f64();
    println!();
    println!("LDAP sync: {users} users, {groups} groups (slapd mdb, loopback, SQLite)");
    println!();
    println!("| step | wall | peak RSS | throughput | notes |");
    println!("|---|---:|---:|---:|---|");
    println!(
        "| slapadd load (LDIF generation + slapadd + start) | {:.2} s | | | |",
        secs(load)
    );
    println!(
        "| floor: ldapsearch -E pr=1000 dump | {:.2} s | | {:.0} entries/s | {floor_entries} entries |",
        secs(floor),
        floor_entries as f64 / secs(floor)
    );
    println!(
        "| LdapSource::read alone (full read: paged search into a Batch, in process) | {:.2} s | | {:.0} users/s | {source_users} users, {source_groups} groups |",
        secs(source_wall),
        users as f64 / secs(source_wall)
    );
    println!(
        "| rolebridge sync (full, first run) | {:.2} s | {:.1} MiB | {:.0} users/s | {} users, {} groups, {} members created; {} |",
        secs(full.wall),
        full.peak_rss_kib as f64 / 1024.0,
        users as f64 / secs(full.wall),
        report["users_created"],
        report["groups_created"],
        report["members_added"],
        phases(&report),
    );
    println!(
        "| rolebridge sync (incremental, 100 changes) | {:.2} s | {:.1} MiB | | {} users updated, {} members added, {} entries read; {} |",
        secs(incr.wall),
        incr.peak_rss_kib as f64 / 1024.0,
        ireport["users_updated"],
        ireport["members_added"],
        ireport["entries_read"],
        phases(&ireport),
    );
}

/// The run's own split of its time, from the JSON report.
fn phases(r: &serde_json::Value) -> String {
    format!(
        "read {} ms, load+plan {} ms, apply {} ms",
        r["read_ms"], r["plan_ms"], r["apply_ms"]
    )
}
