//! The command line as other tools drive it.

use crate::durability::{bin, cli, spawn_server};
use crate::support::{fresh_database, Backend};

#[tokio::test]
async fn tenants_and_tokens() {
    let db = fresh_database(Backend::Sqlite).await;
    let (code, out, _) = cli(&db, &["tenant", "create", "acme"]);
    assert_eq!((code, out.trim()), (0, "acme"));
    let (code, _, err) = cli(&db, &["tenant", "create", "acme"]);
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("already exists"), "{err}");
    let (_, out, _) = cli(&db, &["tenant", "list"]);
    assert!(out.starts_with("acme\t"), "{out}");

    let (code, token, err) = cli(
        &db,
        &["token", "create", "--tenant", "acme", "--scope", "scim"],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        token.lines().count(),
        1,
        "the token alone on stdout: {token:?}"
    );
    let token = token.trim();
    assert!(token.starts_with("rb_"), "{token}");
    let id = &token[3..35];
    let (_, list, _) = cli(&db, &["token", "list"]);
    assert!(
        list.contains(id) && list.contains("scim") && list.contains("active"),
        "{list}"
    );
    assert!(!list.contains(&token[36..]), "token list shows a secret");
    // Nothing in the database holds the secret either.
    let raw = std::fs::read(db.trim_start_matches("sqlite://")).unwrap();
    assert!(!raw
        .windows(token.len() - 36)
        .any(|w| w == &token.as_bytes()[36..]));
    let (code, out, _) = cli(&db, &["token", "revoke", id]);
    assert_eq!((code, out.trim().to_string()), (0, format!("revoked {id}")));
    let (code, _, err) = cli(&db, &["token", "revoke", id]);
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1);
    let (code, _, err) = cli(
        &db,
        &["token", "create", "--tenant", "nope", "--scope", "scim"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("'nope' does not exist"), "{err}");
}

#[tokio::test]
async fn bad_input_is_one_line_and_non_zero() {
    let db = fresh_database(Backend::Sqlite).await;
    for args in [
        vec!["token", "create", "--tenant", "acme", "--scope", "root"],
        vec!["tenant", "create", "Bad Name"],
        vec!["frobnicate"],
        vec!["--database-url", "mysql://x", "tenant", "list"],
        vec!["--listen", "not-an-address", "serve"],
    ] {
        let out = std::process::Command::new(bin())
            .args(&args)
            .env("ROLEBRIDGE_DATABASE_URL", &db)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let cfg = crate::support::test_dir()
        .join(crate::support::unique("rb-bad"))
        .with_extension("toml");
    std::fs::write(&cfg, "listen = 5\n").unwrap();
    let out = std::process::Command::new(bin())
        .args(["--config", cfg.to_str().unwrap(), "tenant", "list"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("config file"), "{err}");
}

#[tokio::test]
async fn serve_defaults_create_a_sqlite_file_under_data() {
    let dir = crate::support::test_dir().join(crate::support::unique("rb-defaults"));
    std::fs::create_dir_all(&dir).unwrap();
    let mappings = concat!(env!("CARGO_MANIFEST_DIR"), "/mappings");
    let (mut child, addr) = spawn_server("", Some(&dir), &["--mappings", mappings]);
    let health = reqwest::get(format!("{addr}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(dir.join("data/rolebridge.db").is_file());
    let _ = child.kill();
    let _ = child.wait();
}

/// The README's quick start, run as written: the `sh` block that creates
/// `acme-liveperson`, against `serve` on its embedded defaults (SQLite under
/// `./data`, the shipped `./mappings`), with only `cargo run -q --release --`
/// replaced by the built binary and the address by the test server's. It
/// must end at ana's effective permissions and an explain of them.
#[tokio::test]
async fn the_readme_quick_start_reaches_permissions_and_explain() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let script = readme
        .split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split("\n```").next())
        .find(|b| b.contains("tenant create acme-liveperson"))
        .expect("README has the quick-start block");
    assert!(
        script.contains("cargo run -q --release --") && script.contains("http://127.0.0.1:8080"),
        "{script}"
    );
    assert!(
        script.lines().filter(|l| !l.starts_with(' ')).count() <= 8,
        "a handful of commands: {script}"
    );

    let dir = crate::support::test_dir().join(crate::support::unique("rb-quickstart"));
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(
        concat!(env!("CARGO_MANIFEST_DIR"), "/mappings"),
        dir.join("mappings"),
    )
    .unwrap();
    let (mut child, addr) = spawn_server("", Some(&dir), &[]);
    let script = script
        .replace("cargo run -q --release --", bin())
        .replace("http://127.0.0.1:8080", &addr);
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(&dir)
        .env_remove("ROLEBRIDGE_DATABASE_URL")
        .env_remove("ROLEBRIDGE_CONFIG")
        .output()
        .expect("run bash");
    let _ = child.kill();
    let _ = child.wait();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "the quick start failed: {stderr}\n{stdout}"
    );

    // The outputs, in order: the tenant's name, the Bulk response, the
    // permissions, the feed, then explain's text.
    let json = stdout
        .strip_prefix("acme-liveperson\n")
        .unwrap_or_else(|| panic!("tenant create printed: {stdout}"));
    let mut values = serde_json::Deserializer::from_str(json).into_iter::<serde_json::Value>();
    let mut next = || {
        values
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("expected JSON in: {stdout}"))
    };
    let bulk = next();
    let statuses: Vec<&str> = bulk["Operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["201", "201"], "{bulk}");
    let perms = next();
    assert_eq!(
        perms["profiles"],
        serde_json::json!(["senior_agent"]),
        "{perms}"
    );
    assert!(
        perms["roles"].as_array().is_some_and(|r| !r.is_empty()),
        "{perms}"
    );
    assert!(
        perms["permissions"].as_array().is_some_and(|p| p.len() > 3),
        "{perms}"
    );
    let feed = next();
    let events = feed["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["user"]["userName"] == "ana@acme.example"
                && e["added"]["profiles"] == serde_json::json!(["senior_agent"])),
        "{feed}"
    );
    let explain = &json[values.byte_offset()..];
    assert!(
        explain.contains("Support Seniors") && explain.contains("senior_agent"),
        "{explain}"
    );
}

#[tokio::test]
async fn mappings_validate_points_at_the_line() {
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/mappings");
    let (code, out, err) = cli("sqlite://unused.db", &["mappings", "validate", repo]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("ok: 5 catalog(s), 5 tenant mapping(s)"),
        "{out}"
    );

    let dir = crate::support::test_dir().join(crate::support::unique("rb-badmap"));
    std::fs::create_dir_all(dir.join("catalogs")).unwrap();
    std::fs::create_dir_all(dir.join("tenants")).unwrap();
    std::fs::write(
        dir.join("catalogs/c.yaml"),
        "catalog:\n  id: c\n  name: C\npermissions:\n  - {id: a, description: A}\nroles:\n  - id: r\n    name: R\n    core: [a, nope]\n",
    )
    .unwrap();
    std::fs::write(dir.join("tenants/t.yaml"), "catalog: missing\nrules: []\n").unwrap();
    let (code, _, err) = cli(
        "sqlite://unused.db",
        &["mappings", "validate", dir.to_str().unwrap()],
    );
    assert_eq!(code, 1, "{err}");
    let c = dir.join("catalogs/c.yaml").display().to_string();
    let t = dir.join("tenants/t.yaml").display().to_string();
    assert!(
        err.contains(&format!("{c}:9:15: ")) && err.contains("'nope'"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{t}:1:10: ")) && err.contains("unknown catalog 'missing'"),
        "{err}"
    );
}

#[tokio::test]
async fn explain_text_and_json() {
    use serde_json::json;
    let srv = crate::support::TestServer::start_mapped(
        Backend::Sqlite,
        "catalog: gms\ndefault_role: designer\nrules:\n  - id: owners\n    match: {display_name: \"Owners\"}\n    assign: {roles: [owner]}\n",
    )
    .await;
    let a = srv.user("first").await;
    let b = srv.user("second").await;
    let g = srv
        .post("/Groups", json!({"schemas": [crate::support::GROUP], "displayName": "Owners", "members": [{"value": a}, {"value": b}]}))
        .await;
    assert_eq!(g.status, 201);
    let dir = srv.mappings_dir();
    let args = |extra: &[&str]| {
        let mut v = vec![
            "--mappings",
            dir.to_str().unwrap(),
            "explain",
            "--tenant",
            &srv.tenant,
        ];
        v.extend_from_slice(extra);
        v.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        cli(&srv.database_url, &refs)
    };
    let (code, out, err) = run(args(&[
        "--user",
        "first",
        "--permission",
        "invited_users_create",
    ]));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("Owners") && out.contains("owners") && out.contains("owner"),
        "{out}"
    );
    let (code, out, err) = run(args(&[
        "--user",
        &b,
        "--permission",
        "invited_users_create",
        "--json",
    ]));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["permissions"][0]["granted"], false, "{v}");
    assert!(
        out.contains("max_per_tenant") || out.contains("MaxPerTenant"),
        "{out}"
    );
    let (code, _, err) = run(args(&["--user", "ghost"]));
    assert_ne!(code, 0);
    assert!(err.contains("'ghost'"), "{err}");
}
