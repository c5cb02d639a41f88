//! A write acknowledged with 2xx survives `kill -9` of the server process.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{fresh_database, Backend, USER};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_rolebridge")
}

/// Runs a CLI command to completion; returns (status, stdout, stderr).
pub fn cli(db: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .env("ROLEBRIDGE_DATABASE_URL", db)
        .env_remove("ROLEBRIDGE_CONFIG")
        .output()
        .expect("run rolebridge");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Creates a token with `rolebridge token create` and returns it; fails
/// the test when the command does.
pub fn cli_token(db: &str, tenant: &str, scope: &str) -> String {
    let (code, token, err) = cli(
        db,
        &["token", "create", "--tenant", tenant, "--scope", scope],
    );
    assert_eq!(code, 0, "token create --scope {scope}: {err}");
    token.trim().to_string()
}

/// Starts `rolebridge serve` on a free port; returns the child and its address.
pub fn spawn_server(db: &str, cwd: Option<&std::path::Path>, extra: &[&str]) -> (Child, String) {
    spawn_server_on(db, cwd, "127.0.0.1:0", extra)
}

/// Starts `rolebridge serve --listen LISTEN` (a replica restarted on the
/// port a balancer already names); returns the child and its address.
pub fn spawn_server_on(
    db: &str,
    cwd: Option<&std::path::Path>,
    listen: &str,
    extra: &[&str],
) -> (Child, String) {
    let mut cmd = Command::new(bin());
    cmd.args(["serve", "--listen", listen])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if !db.is_empty() {
        cmd.env("ROLEBRIDGE_DATABASE_URL", db);
    } else {
        cmd.env_remove("ROLEBRIDGE_DATABASE_URL");
    }
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().expect("spawn server");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("server did not start in 30 s");
        }
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let addr = addr.trim().to_string();
                    // Keep draining stderr so the server never blocks on it;
                    // errors are echoed so a failing test shows the cause.
                    std::thread::spawn(move || {
                        for line in lines.map_while(Result::ok) {
                            if line.contains("ERROR") {
                                eprintln!("server: {line}");
                            }
                        }
                    });
                    return (child, addr);
                }
            }
            _ => {
                let _ = child.wait();
                panic!("server exited before listening");
            }
        }
    }
}

async fn kill_nine_keeps_acknowledged_writes(backend: Backend) {
    let db = fresh_database(backend).await;
    let tenant = crate::support::unique("dur");
    assert_eq!(cli(&db, &["tenant", "create", &tenant]).0, 0);
    let token = cli_token(&db, &tenant, "scim");
    let (mut child, addr) = spawn_server(&db, None, &[]);
    let client = reqwest::Client::new();
    let base = format!("{addr}/scim/v2/{tenant}");
    // 20 creates acknowledged one by one, then 40 concurrent ones with a
    // kill -9 while they are in flight: every acknowledged one must survive.
    let create = |i: usize| {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        async move {
            let r = client
                .post(format!("{base}/Users"))
                .bearer_auth(&token)
                .json(&json!({"schemas": [USER], "userName": format!("durable{i}")}))
                .send()
                .await
                .ok()?;
            if r.status() != 201 {
                return None;
            }
            let body: serde_json::Value = r.json().await.ok()?;
            body["id"].as_str().map(str::to_string)
        }
    };
    let mut acked = Vec::new();
    for i in 0..20 {
        acked.push(create(i).await.expect("sequential create acknowledged"));
    }
    let tasks: Vec<_> = (20..60).map(|i| tokio::spawn(create(i))).collect();
    tokio::time::sleep(Duration::from_millis(30)).await;
    child.kill().expect("kill -9");
    for t in tasks {
        if let Some(id) = t.await.expect("task") {
            acked.push(id);
        }
    }
    let _ = child.wait();
    eprintln!("{} writes acknowledged before kill -9", acked.len());
    let (mut child, addr) = spawn_server(&db, None, &[]);
    for id in &acked {
        let r = client
            .get(format!("{addr}/scim/v2/{tenant}/Users/{id}"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200, "acknowledged user {id} lost after kill -9");
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn kill_nine_sqlite() {
    kill_nine_keeps_acknowledged_writes(Backend::Sqlite).await;
}

#[tokio::test]
async fn kill_nine_postgres() {
    kill_nine_keeps_acknowledged_writes(Backend::Postgres).await;
}

/// `rolebridge serve --log-format json` on a free port, for tests that read
/// its log: every stderr line is collected by a thread, and the address is
/// read from the start-up line's `fields.address` (in JSON mode it is JSON).
pub struct JsonServer {
    pub child: Child,
    pub addr: String,
    pub lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl JsonServer {
    /// Starts it on `db` with `RUST_LOG=log_level` and `extra` arguments.
    pub fn start(db: &str, log_level: &str, extra: &[&str]) -> JsonServer {
        let mut child = Command::new(bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(extra)
            .env("ROLEBRIDGE_DATABASE_URL", db)
            .env("RUST_LOG", log_level)
            .env_remove("ROLEBRIDGE_CONFIG")
            .env_remove("ROLEBRIDGE_LOG_FORMAT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn server");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let reader = {
            let lines = lines.clone();
            let stderr = child.stderr.take().expect("stderr");
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                        if let Some(addr) = v["fields"]["address"].as_str() {
                            let _ = addr_tx.send(addr.to_string());
                        }
                    }
                    lines.lock().unwrap().push(line);
                }
            })
        };
        let addr = match addr_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not start: {:?}", lines.lock().unwrap());
            }
        };
        JsonServer {
            child,
            addr,
            lines,
            reader,
        }
    }

    /// Kills it and returns every line it logged.
    pub fn stop(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.reader.join();
        std::mem::take(&mut *self.lines.lock().unwrap())
    }
}
