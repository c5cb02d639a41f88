//! `rolebridge sync` and `rolebridge sync status` through the real binary,
//! against a real slapd: dry run, JSON report, status, a held run (exit 3)
//! and its confirmation, configuration errors, and no password in output.

use serde_json::Value;

use crate::durability::{cli, spawn_server};
use crate::support::slapd::*;
use crate::support::unique;

struct Setup {
    slapd: Slapd,
    db: String,
    config: std::path::PathBuf,
    tenant: String,
}

fn setup(users: usize) -> Setup {
    setup_with(users, "10m")
}

fn setup_with(users: usize, schedule: &str) -> Setup {
    let mut ldif = base_ldif();
    let mut members = Vec::new();
    for i in 0..users {
        let uid = format!("u{i}");
        ldif.push_str(&user_ldif(&uid, &format!("{uid}@example.org")));
        members.push(user_dn(&uid));
    }
    ldif.push_str(&group_ldif("staff", &members));
    let slapd = Slapd::start_with(&ldif);
    let dir = crate::support::test_dir().join(unique("synccli"));
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}/db.sqlite", dir.display());
    let tenant = unique("t");
    let pw = dir.join("bind-pw");
    std::fs::write(&pw, format!("{SYNC_PW}\n")).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[source]]\nname = \"corp\"\ntenant = \"{tenant}\"\nkind = \"ldap\"\nschedule = \"{schedule}\"\n\
             url = \"{}\"\nbind_dn = \"{SYNC_DN}\"\nbind_password = {{ file = \"{}\" }}\n\
             base_dns = [\"{PEOPLE}\", \"{GROUPS}\"]\n[source.guard]\nmax_deletes = 3\nmax_delete_percent = 100\n",
            slapd.url,
            pw.display()
        ),
    )
    .unwrap();
    let (code, _, err) = cli(&db, &["tenant", "create", &tenant]);
    assert_eq!(code, 0, "{err}");
    Setup {
        slapd,
        db,
        config,
        tenant,
    }
}

impl Setup {
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let mut all = vec![
            "--config",
            self.config.to_str().unwrap(),
            "--mappings",
            "/nonexistent",
        ];
        all.extend_from_slice(args);
        let out = cli(&self.db, &all);
        assert!(
            !out.1.contains(SYNC_PW) && !out.2.contains(SYNC_PW),
            "password printed"
        );
        out
    }
}

#[test]
fn dry_run_then_sync_then_status() {
    let s = setup(5);
    let (code, out, err) = s.run(&["sync", "--source", "corp", "--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("+ user u3"), "{out}");
    assert!(out.contains("+ member u3 -> staff"), "{out}");
    assert!(out.contains("users: 5 created"), "{out}");
    assert!(out.contains("dry run: nothing was changed"), "{out}");
    let (_, status, _) = s.run(&["sync", "status"]);
    assert!(status.contains("last run: never"), "{status}");

    let (code, out, err) = s.run(&["sync", "--source", "corp", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(report["outcome"], "applied");
    assert_eq!(report["mode"], "full");
    assert_eq!(report["users_created"], 5);
    assert_eq!(report["groups_created"], 1);
    assert_eq!(report["members_added"], 5);
    assert_eq!(report["tenant"], s.tenant.as_str());

    let (code, out, _) = s.run(&["sync", "status", "--json"]);
    assert_eq!(code, 0);
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status[0]["source"], "corp");
    assert_eq!(status[0]["last_run"]["outcome"], "applied");
    assert_eq!(status[0]["last_run"]["report"]["users_created"], 5);
    assert!(status[0]["next_run"].is_string(), "{out}");
    assert!(status[0]["held"].is_null());

    // Text summary of an incremental run with nothing to do.
    let (code, out, _) = s.run(&["sync", "--source", "corp"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("sync corp (tenant "), "{out}");
    assert!(out.contains(": unchanged in "), "{out}");
}

#[test]
fn a_mass_delete_is_held_until_confirmed() {
    let s = setup(6);
    let (code, out, err) = s.run(&["sync", "--source", "corp"]);
    assert_eq!(code, 0, "{out}{err}");
    s.slapd.delete(
        &(0..5)
            .map(|i| user_dn(&format!("u{i}")))
            .collect::<Vec<_>>(),
    );
    let (code, out, _) = s.run(&["sync", "--source", "corp", "--full"]);
    assert_eq!(code, 3, "held runs exit 3: {out}");
    assert!(out.contains("HELD by the deletion guard"), "{out}");
    assert!(
        out.contains("! user u4 (deactivated: gone from the directory)"),
        "{out}"
    );
    assert!(out.contains("--confirm-deletes"), "{out}");
    let (_, status, _) = s.run(&["sync", "status"]);
    assert!(status.contains("HELD: 5 user"), "{status}");
    // A run that fails meanwhile (here: the server is unreachable) does not
    // end the hold.
    let unreachable = s.config.with_file_name("unreachable.toml");
    let text = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &unreachable,
        text.replace(&s.slapd.url, "ldap://127.0.0.1:9"),
    )
    .unwrap();
    let (code, _, err) = cli(
        &s.db,
        &[
            "--config",
            unreachable.to_str().unwrap(),
            "sync",
            "--source",
            "corp",
        ],
    );
    assert_eq!(code, 1, "{err}");
    let (_, status, _) = s.run(&["sync", "status"]);
    assert!(status.contains("last run: failed"), "{status}");
    assert!(status.contains("HELD: 5 user"), "{status}");
    let (code, out, _) = s.run(&[
        "sync",
        "--source",
        "corp",
        "--full",
        "--confirm-deletes",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["outcome"], "applied");
    assert_eq!(report["users_deactivated"], 5);
    let (_, status, _) = s.run(&["sync", "status"]);
    assert!(!status.contains("HELD"), "{status}");
}

#[test]
fn configuration_and_connection_errors_are_one_clear_line() {
    let s = setup(1);
    let (code, _, err) = s.run(&["sync", "--source", "nope"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no [[source]] named 'nope' (configured: corp)"),
        "{err}"
    );
    // A wrong password: said once, with the server's result code.
    let pw = s.config.with_file_name("bind-pw");
    std::fs::write(&pw, "wrong\n").unwrap();
    let (code, _, err) = s.run(&["sync", "--source", "corp"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.matches("invalidCredentials").count(), 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    std::fs::write(&pw, format!("{SYNC_PW}\n")).unwrap();
    // A source whose server is gone: the error names it once, nothing changes.
    let url = s.slapd.url.clone();
    drop(s.slapd);
    let (code, _, err) = cli(
        &s.db,
        &[
            "--config",
            s.config.to_str().unwrap(),
            "sync",
            "--source",
            "corp",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("source 'corp'") && err.contains(&url), "{err}");
    assert_eq!(err.matches("source 'corp'").count(), 1, "{err}");
    assert_eq!(err.matches(url.as_str()).count(), 1, "{err}");
    let bad = s.config.with_file_name("bad.toml");
    std::fs::write(
        &bad,
        "[[source]]\nname = \"x\"\ntenant = \"t\"\nkind = \"ldap\"\nurl = \"http://host\"\nbase_dns = [\"dc=x\"]\n",
    )
    .unwrap();
    let (code, _, err) = cli(
        &s.db,
        &["--config", bad.to_str().unwrap(), "sync", "status"],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("source 'x'") && err.contains("http://host"),
        "{err}"
    );
}

/// Polls `sync status --json` until `pred` holds on the source's entry.
fn wait_status(s: &Setup, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, out, _) = s.run(&["sync", "status", "--json"]);
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        if pred(&v[0]) {
            return v[0].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}: {out}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn serve_runs_each_source_on_its_schedule() {
    let s = setup_with(3, "1s");
    let (mut server, _addr) = spawn_server(&s.db, None, &["--config", s.config.to_str().unwrap()]);
    let first = wait_status(&s, "the first scheduled run", |v| {
        v["last_run"]["outcome"] == "applied"
    });
    assert_eq!(first["last_run"]["report"]["users_created"], 3, "{first}");
    s.slapd.add(&user_ldif("late", "late@example.org"));
    let later = wait_status(&s, "a later run to pick up the new user", |v| {
        v["last_run"]["report"]["users_created"] == 1
    });
    assert_eq!(
        later["last_run"]["report"]["mode"], "incremental",
        "{later}"
    );
    // While serve holds the schedule, a manual run either runs between
    // scheduled ones or is refused as busy; it never overlaps one.
    let (code, _, err) = s.run(&["sync", "--source", "corp"]);
    assert!(code == 0 || err.contains("already running"), "{code} {err}");
    let _ = server.kill();
    let _ = server.wait();
}

/// On a terminal, `sync` draws a progress spinner on stderr; redirected, it
/// prints nothing but the summary. `script` gives the run a real pty.
#[test]
fn a_terminal_gets_a_progress_spinner() {
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("`script` (util-linux) is needed for the pty test");
    }
    let s = setup_with(600, "10m");
    let command = format!(
        "ROLEBRIDGE_DATABASE_URL='{}' '{}' --config '{}' --mappings /nonexistent sync --source corp",
        s.db,
        crate::durability::bin(),
        s.config.display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .expect("run script");
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(
        tty.contains("connecting") || tty.contains("entries read"),
        "no spinner on a terminal: {tty}"
    );
    assert!(tty.contains("users: 600 created"), "{tty}");
    let (_, piped, err) = s.run(&["sync", "--source", "corp", "--full"]);
    assert!(
        !err.contains("connecting") && !err.contains("entries read"),
        "{err}"
    );
    assert!(piped.contains("sync corp"), "{piped}");
}

/// An LDAP "server" that accepts the bind, then drops the connection at
/// the first search: a directory lost mid-run, deterministically.
fn drops_after_bind() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ldap://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming().take(8) {
            let Ok(mut conn) = conn else { return };
            conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .ok();
            let mut buf = [0u8; 4096];
            let Ok(n) = conn.read(&mut buf) else { continue };
            // The bind request's messageID: 30 len 02 idlen id...
            let at = if n > 1 && buf[1] & 0x80 != 0 {
                2 + usize::from(buf[1] & 0x7f)
            } else {
                2
            };
            if n < at + 2 || buf[at] != 0x02 {
                continue;
            }
            let id = &buf[at + 2..(at + 2 + usize::from(buf[at + 1])).min(n)];
            // BindResponse: success, no matched DN, no message.
            let mut op = vec![0x02, id.len() as u8];
            op.extend_from_slice(id);
            op.extend_from_slice(&[0x61, 0x07, 0x0a, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00]);
            let mut msg = vec![0x30, op.len() as u8];
            msg.extend_from_slice(&op);
            if conn.write_all(&msg).is_err() {
                continue;
            }
            let _ = conn.read(&mut buf);
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    });
    url
}

/// A directory lost mid-run: ldap3's own warnings about the socket go
/// through tracing like every other line (level and target, no colour
/// codes when stderr is not a terminal), and the error is one line.
#[test]
fn a_lost_connection_logs_through_tracing_without_colour() {
    let s = setup(1);
    let config = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace(&s.slapd.url, &drops_after_bind());
    let lost = s.config.with_file_name("lost.toml");
    std::fs::write(&lost, config).unwrap();
    // Whether ldap3 gets to warn depends on a race between its driver
    // seeing the close and the stream's finish; a few runs see it.
    let mut ldap3_warned = false;
    for _ in 0..5 {
        let (code, _, err) = cli(
            &s.db,
            &[
                "--config",
                lost.to_str().unwrap(),
                "sync",
                "--source",
                "corp",
            ],
        );
        assert_eq!(code, 1, "{err}");
        assert!(
            !err.contains('\u{1b}'),
            "ANSI escape in a redirected log: {err:?}"
        );
        let error_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(error_lines.len(), 1, "{err}");
        assert!(error_lines[0].contains("source 'corp'"), "{err}");
        for line in err.lines().filter(|l| !l.starts_with("error: ")) {
            assert!(
                [" WARN ", " INFO ", " ERROR ", " DEBUG "]
                    .iter()
                    .any(|lvl| line.contains(lvl)),
                "a stderr line that did not come through tracing: {line:?}\n{err}"
            );
        }
        // ldap3 warns about the stream it could not close: through
        // tracing, inside the run's span.
        ldap3_warned |= err
            .lines()
            .any(|l| l.contains(" WARN ") && l.contains("sync_run{") && l.contains("ldap3"));
        if ldap3_warned {
            break;
        }
    }
    assert!(
        ldap3_warned,
        "ldap3 never warned in 5 runs: the test no longer exercises its log path"
    );
}
