//! LDAP sync benchmark: 100,000 users and 5,000 groups loaded into a real
//! slapd with slapadd, then the release `rolebridge sync --source S --json`
//! as a child process on a fresh SQLite database (wall time, peak RSS,
//! users/s), against the floor of a plain paged `ldapsearch` dump of the
//! same entries; then a second complete read with nothing changed, 100
//! changes and an incremental sync.
//!
//! The write floor: after the first full run, the rows it wrote (tenant,
//! users, groups, memberships, links) are exported and loaded into a fresh
//! database of the same schema by the database's own bulk path (SQLite
//! `INSERT … SELECT` from the attached file, `synchronous=FULL` as the
//! service uses; PostgreSQL `\copy` in one transaction). No client can
//! write those rows faster, so it bounds what the full run can reach.
//!
//! Each backend (SQLite, then PostgreSQL at `ROLEBRIDGE_TEST_POSTGRES`)
//! gets a fresh database; every figure is printed beside the dump's time,
//! as a ratio, with its goal.
//!
//! Run: `cargo bench --bench ldap_sync` (installs slapd, ldap-utils and GNU
//! time with apt-get when they are missing). `LDAP_BENCH_USERS` scales it
//! down for a quick look.

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
    stderr: String,
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
                stderr,
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
    ensure_tools();
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

    // Each backend syncs the same directory into a fresh database: a full
    // run, then 100 changes (different ones per backend) and an
    // incremental run.
    let mut rows = Vec::new();
    // `LDAP_BENCH_BACKEND=SQLite` (or `PostgreSQL`) runs one backend only.
    let only = std::env::var("LDAP_BENCH_BACKEND").ok();
    for (round, backend) in ["SQLite", "PostgreSQL"]
        .into_iter()
        .enumerate()
        .filter(|(_, b)| only.as_deref().is_none_or(|o| o.eq_ignore_ascii_case(b)))
    {
        let database_url = match backend {
            "SQLite" => format!("sqlite://{}", dir.join("bench.db").display()),
            _ => fresh_postgres(),
        };
        let envs = [
            ("ROLEBRIDGE_DATABASE_URL", database_url.clone()),
            ("ROLEBRIDGE_CONFIG", config.display().to_string()),
            (
                "ROLEBRIDGE_MAPPINGS",
                dir.join("mappings").display().to_string(),
            ),
            // The run logs its steps' times and peak RSS at debug level
            // (`apply_split`, `rss_split`).
            ("RUST_LOG", "warn,rolebridge::app::sync=debug".to_string()),
        ];
        timed(bin, &["tenant", "create", "bench"], &envs);
        let (full, report) = sync(bin, &[], &envs);
        assert_eq!(report["outcome"], "applied", "{report}");
        assert_eq!(
            report["users_created"].as_u64(),
            Some(users as u64),
            "{report}"
        );
        let store_floor = write_floor(bin, &database_url, &dir);
        let (again, areport) = sync(bin, &["--full"], &envs);
        assert_eq!(areport["mode"], "full", "{areport}");
        assert_eq!(areport["users_created"].as_u64(), Some(0), "{areport}");
        assert_eq!(areport["outcome"], "unchanged", "{areport}");
        slapd.modify(&changes(round, users, groups));
        let (incr, ireport) = sync(bin, &[], &envs);
        assert_eq!(ireport["mode"], "incremental", "{ireport}");
        assert_eq!(ireport["entries_read"].as_u64(), Some(100), "{ireport}");
        rows.push(Round {
            backend,
            full,
            report,
            store_floor,
            again,
            areport,
            incr,
            ireport,
        });
        if backend == "PostgreSQL" {
            drop_postgres(&database_url);
        }
        // The next backend's full run starts from a fresh cursor.
        let _ = std::fs::remove_file(dir.join("bench.db"));
    }

    let secs = |d: Duration| d.as_secs_f64();
    let dump = secs(floor);
    println!();
    println!("LDAP sync: {users} users, {groups} groups (slapd mdb, loopback)");
    println!();
    println!("| step | wall | × dump | goal | peak RSS | notes |");
    println!("|---|---:|---:|---|---:|---|");
    println!(
        "| slapadd load (LDIF generation + slapadd + start) | {:.2} s | | | | |",
        secs(load)
    );
    println!(
        "| reference: ldapsearch -E pr=1000 dump | {dump:.2} s | 1.00 | | | {floor_entries} entries, {:.0} entries/s |",
        floor_entries as f64 / dump
    );
    println!(
        "| LdapSource::read alone (paged search into a Batch, in process) | {:.2} s | {:.2} | | | {source_users} users, {source_groups} groups |",
        secs(source_wall),
        secs(source_wall) / dump
    );
    for Round {
        backend,
        full,
        report,
        store_floor,
        again,
        areport,
        incr,
        ireport,
    } in &rows
    {
        println!(
            "| write floor: the same rows bulk-loaded by {backend} itself | {:.2} s | {:.2} | | | {} |",
            secs(*store_floor),
            secs(*store_floor) / dump,
            match *backend {
                "SQLite" => "INSERT … SELECT from the first run's file, one transaction, synchronous=FULL",
                _ => "\\copy of the first run's rows, one transaction",
            }
        );
        println!(
            "| rolebridge sync, full, first run, {backend} | {:.2} s | {:.2} | ≤ 2.00 × dump, < 200 MB: {} | {:.1} MiB | {} users, {} groups, {} members created; {}{}{} |",
            secs(full.wall),
            secs(full.wall) / dump,
            full_goal(full, dump),
            full.peak_rss_kib as f64 / 1024.0,
            report["users_created"],
            report["groups_created"],
            report["members_added"],
            phases(report),
            apply_split(full),
            rss_split(full),
        );
        println!(
            "| rolebridge sync --full, nothing changed, {backend} | {:.2} s | {:.2} | ≤ 2.00 × dump, < 200 MB: {} | {:.1} MiB | {} entries read, outcome {}; {}{} |",
            secs(again.wall),
            secs(again.wall) / dump,
            full_goal(again, dump),
            again.peak_rss_kib as f64 / 1024.0,
            areport["entries_read"],
            areport["outcome"],
            phases(areport),
            rss_split(again),
        );
        println!(
            "| rolebridge sync, incremental, 100 changes, {backend} | {:.2} s | {:.2} | < 0.50 s: {} | {:.1} MiB | {} users updated, {} members added, {} entries read; {} |",
            secs(incr.wall),
            secs(incr.wall) / dump,
            met(secs(incr.wall) < 0.5),
            incr.peak_rss_kib as f64 / 1024.0,
            ireport["users_updated"],
            ireport["members_added"],
            ireport["entries_read"],
            phases(ireport),
        );
    }
}

/// `rolebridge sync --source bench --json [extra]`: the run and its report.
fn sync(bin: &str, extra: &[&str], envs: &[(&str, String)]) -> (Run, serde_json::Value) {
    let mut args = vec!["sync", "--source", "bench", "--json"];
    args.extend_from_slice(extra);
    let run = timed(bin, &args, envs);
    let report = serde_json::from_str(run.stdout.trim()).expect("sync --json output");
    (run, report)
}

/// The goal for a complete read: at most twice the dump, and a
/// peak RSS under 200 MB (10^6 bytes).
fn full_goal(run: &Run, dump_secs: f64) -> &'static str {
    met(run.wall.as_secs_f64() <= 2.0 * dump_secs && run.peak_rss_kib < 200 * 1000 * 1000 / 1024)
}

/// One backend's runs.
struct Round {
    backend: &'static str,
    full: Run,
    report: serde_json::Value,
    store_floor: Duration,
    again: Run,
    areport: serde_json::Value,
    incr: Run,
    ireport: serde_json::Value,
}

/// The tables a full sync writes, in foreign-key order.
const SYNC_TABLES: [&str; 5] = [
    "tenants",
    "scim_users",
    "scim_groups",
    "group_members",
    "sync_links",
];

/// Loads the rows the first full run wrote into a fresh database of the
/// same schema with the database's own bulk path, and returns how long the
/// load took (the export is not timed).
fn write_floor(bin: &str, database_url: &str, dir: &std::path::Path) -> Duration {
    if let Some(path) = database_url.strip_prefix("sqlite://") {
        let target = dir.join("floor.db");
        let _ = std::fs::remove_file(&target);
        // The service's migrations give the schema; no tenant is created.
        let envs = [
            (
                "ROLEBRIDGE_DATABASE_URL",
                format!("sqlite://{}", target.display()),
            ),
            ("RUST_LOG", "warn".to_string()),
        ];
        timed(bin, &["tenant", "list"], &envs);
        let mut script = format!(
            "PRAGMA journal_mode = WAL;\nPRAGMA synchronous = FULL;\nPRAGMA cache_size = -32768;\nATTACH '{path}' AS src;\nBEGIN;\n"
        );
        for t in SYNC_TABLES {
            script.push_str(&format!("INSERT INTO main.{t} SELECT * FROM src.{t};\n"));
        }
        script.push_str("COMMIT;\n");
        let script_file = dir.join("floor.sql");
        std::fs::write(&script_file, script).unwrap();
        let run = timed(
            "sh",
            &[
                "-c",
                &format!(
                    "sqlite3 '{}' < '{}' >/dev/null",
                    target.display(),
                    script_file.display()
                ),
            ],
            &[],
        );
        let _ = std::fs::remove_file(&target);
        return run.wall;
    }
    let target = fresh_postgres_named("rbfloor");
    let envs = [
        ("ROLEBRIDGE_DATABASE_URL", target.clone()),
        ("RUST_LOG", "warn".to_string()),
    ];
    timed(bin, &["tenant", "list"], &envs);
    let mut export = String::new();
    let mut load = String::from("BEGIN;\n");
    for t in SYNC_TABLES {
        let file = dir.join(format!("floor-{t}.copy"));
        export.push_str(&format!("\\copy {t} TO '{}'\n", file.display()));
        load.push_str(&format!("\\copy {t} FROM '{}'\n", file.display()));
    }
    load.push_str("COMMIT;\n");
    let psql = |url: &str, script: &str, name: &str| {
        let file = dir.join(name);
        std::fs::write(&file, script).unwrap();
        timed(
            "psql",
            &[
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                url,
                "-f",
                &file.display().to_string(),
            ],
            &[],
        )
    };
    psql(database_url, &export, "floor-export.sql");
    let run = psql(&target, &load, "floor-load.sql");
    for t in SYNC_TABLES {
        let _ = std::fs::remove_file(dir.join(format!("floor-{t}.copy")));
    }
    drop_postgres(&target);
    run.wall
}

/// Installs what the bench runs, from Debian, when it is missing: GNU
/// time (peak RSS), slapd and ldap-utils.
fn ensure_tools() {
    let missing: Vec<&str> = [
        ("/usr/bin/time", "time"),
        ("/usr/sbin/slapd", "slapd"),
        ("/usr/bin/ldapsearch", "ldap-utils"),
        ("/usr/bin/sqlite3", "sqlite3"),
        ("/usr/bin/psql", "postgresql-client"),
    ]
    .into_iter()
    .filter(|(path, _)| !std::path::Path::new(path).exists())
    .map(|(_, package)| package)
    .collect();
    if missing.is_empty() {
        return;
    }
    eprintln!("ldap_sync: installing {missing:?} with apt-get");
    let run = |args: &[&str]| {
        let ok = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "apt-get {args:?} failed: install {missing:?} by hand");
    };
    run(&["update", "-q"]);
    let mut install = vec!["install", "-y", "-q"];
    install.extend(&missing);
    run(&install);
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

/// 100 changes: 60 modified users, 20 renamed, 20 membership changes; a
/// different 100 for each round.
fn changes(round: usize, users: usize, groups: usize) -> String {
    let mut out = String::new();
    for i in 0..60 {
        let u = user_dn(&format!("u{:06}", (i * 997 + round * 31) % users));
        out.push_str(&format!(
            "dn: {u}\nchangetype: modify\nreplace: sn\nsn: Changed{round}x{i}\n\n"
        ));
    }
    for i in 0..20 {
        let n = (i * 1931 + 7 + round * 53) % users;
        out.push_str(&format!(
            "dn: {}\nchangetype: modrdn\nnewrdn: uid=r{round}x{n:06}\ndeleteoldrdn: 1\n\n",
            user_dn(&format!("u{n:06}"))
        ));
    }
    for i in 0..20 {
        let g = group_dn(&format!("g{:04}", (i * 37 + 3 + round * 7) % groups));
        let extra = user_dn(&format!("u{:06}", (i * 4241 + 11 + round * 17) % users));
        out.push_str(&format!(
            "dn: {g}\nchangetype: modify\nadd: member\nmember: {extra}\n\n"
        ));
    }
    out
}

/// The PostgreSQL server the tests use (`ROLEBRIDGE_TEST_POSTGRES`).
fn postgres_admin() -> String {
    std::env::var("ROLEBRIDGE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

fn postgres_admin_run(sql: String) {
    use sqlx::Connection;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(&postgres_admin())
            .await
            .expect("PostgreSQL for the bench (ROLEBRIDGE_TEST_POSTGRES)");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut c)
            .await
            .expect("bench database statement");
    });
}

fn fresh_postgres() -> String {
    fresh_postgres_named("rbbench")
}

fn fresh_postgres_named(prefix: &str) -> String {
    let name = format!("{prefix}_{}", std::process::id());
    postgres_admin_run(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"));
    postgres_admin_run(format!("CREATE DATABASE \"{name}\""));
    let mut url = url::Url::parse(&postgres_admin()).expect("admin url");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

fn drop_postgres(url: &str) {
    let name = url::Url::parse(url)
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_string();
    postgres_admin_run(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"));
}

/// The apply's own split of its time, from its debug log line ("users
/// created 2900 ms, groups 40 ms, ..."), or nothing when it logged none.
fn apply_split(run: &Run) -> String {
    run.stderr
        .lines()
        .find_map(|l| l.split("phases=").nth(1))
        .map(|p| format!(" (apply: {})", p.trim()))
        .unwrap_or_default()
}

/// The peak RSS the run logged after its read and after its plan (MiB).
fn rss_split(run: &Run) -> String {
    // A log line's `peak_rss_kib=…`, in MiB.
    let mib = |line: &str| {
        let kib: f64 = line
            .split("peak_rss_kib=")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(format!("{:.0}", kib / 1024.0))
    };
    let at = |event: &str| {
        run.stderr
            .lines()
            .filter(|l| l.contains(event))
            .find_map(mib)
            .unwrap_or_else(|| "?".into())
    };
    // The apply's steps, where the run logged them (a run with nothing to
    // apply has none).
    let steps: Vec<String> = run
        .stderr
        .lines()
        .filter(|l| l.contains("sync apply step done"))
        .filter_map(|l| {
            let what = l.split("what=\"").nth(1)?.split('"').next()?;
            Some(format!("{what} {}", mib(l)?))
        })
        .collect();
    format!(
        "; peak RSS after the read {} MiB, after the plan {} MiB{}",
        at("sync read done"),
        at("sync plan done"),
        if steps.is_empty() {
            String::new()
        } else {
            format!(", after the apply's steps: {} MiB", steps.join(", "))
        }
    )
}

/// The run's own split of its time, from the JSON report.
fn phases(r: &serde_json::Value) -> String {
    format!(
        "read {} ms, load+plan {} ms, apply {} ms",
        r["read_ms"], r["plan_ms"], r["apply_ms"]
    )
}
