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
    let cfg = std::env::temp_dir().join(format!("rb-bad-{}.toml", std::process::id()));
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
    let dir = std::env::temp_dir().join(crate::support::unique("rb-defaults"));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut child, addr) = spawn_server("", Some(&dir), &[]);
    let health = reqwest::get(format!("{addr}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(dir.join("data/rolebridge.db").is_file());
    let _ = child.kill();
    let _ = child.wait();
}
