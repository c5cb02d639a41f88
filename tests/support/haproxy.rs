//! A real HAProxy (Debian's `haproxy`, `/usr/sbin/haproxy`) on loopback in
//! front of `serve` replicas: round robin, `GET /readyz` health checks every
//! 200 ms (one failure takes a replica out, one success puts it back), a
//! connection that failed before the request was sent retried on another
//! replica and nothing else retried, the replica that answered named in
//! `X-Served-By`, and `X-Replica: NAME` pinning a request to one replica. It runs in the foreground as a child process, killed on
//! drop; its admin socket reports each replica's state.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// The response header naming the replica (its `server` name) that answered.
pub const SERVED_BY: &str = "x-served-by";

pub struct Haproxy {
    child: Child,
    /// `http://127.0.0.1:PORT`, the frontend.
    pub url: String,
    dir: PathBuf,
    socket: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
}

/// The configuration: `servers` are `(name, "127.0.0.1:PORT")`.
fn config(dir: &std::path::Path, port: u16, servers: &[(String, String)]) -> String {
    let mut backend = String::new();
    // A request with `X-Replica: NAME` goes to that replica while it is
    // up (a test pins a request in flight on the one it stops).
    for (name, _) in servers {
        backend.push_str(&format!(
            "    use-server {name} if {{ req.hdr(x-replica) -m str {name} }}\n"
        ));
    }
    for (name, addr) in servers {
        backend.push_str(&format!("    server {name} {addr} check\n"));
    }
    format!(
        "global
    maxconn 1024
    stats socket {socket} mode 600 level admin
    log stderr format raw local0 info

defaults
    mode http
    log global
    option httplog
    timeout connect 500ms
    timeout client 30s
    timeout server 30s
    timeout check 1s
    # A connection refused or reset before the request went out is tried
    # again, on another replica each time; nothing sent is ever sent twice
    # (no L7 retries: no empty-response, response-timeout or status codes).
    retries 3
    retry-on conn-failure
    option redispatch 1

frontend scim
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 200ms fastinter 200ms downinter 200ms fall 1 rise 1
    http-response set-header X-Served-By %[srv_name]
{backend}",
        socket = dir.join("admin.sock").display(),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Haproxy {
    /// Starts HAProxy in front of `servers` on a free loopback port, and
    /// waits until its admin socket answers. Fails the test when Debian's
    /// haproxy is not installed: the multi-replica tests never skip.
    pub fn start(servers: &[(String, String)]) -> Haproxy {
        assert!(
            std::path::Path::new(HAPROXY).is_file(),
            "{HAPROXY} is missing: the multi-replica tests need Debian's HAProxy \
             (apt-get install haproxy; .ci/run installs it)"
        );
        let dir = super::test_dir().join(super::unique("haproxy"));
        std::fs::create_dir_all(&dir).expect("haproxy dir");
        let socket = dir.join("admin.sock");
        let mut last_log = Vec::new();
        // A port found free may be taken before HAProxy binds it: try again.
        for _attempt in 0..5 {
            let port = free_port();
            let cfg = dir.join("haproxy.cfg");
            std::fs::write(&cfg, config(&dir, port, servers)).expect("haproxy.cfg");
            let _ = std::fs::remove_file(&socket);
            let mut child = Command::new(HAPROXY)
                .arg("-db")
                .arg("-f")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {HAPROXY}: {e}"));
            let log = Arc::new(Mutex::new(Vec::new()));
            {
                let log = log.clone();
                let stderr = child.stderr.take().expect("stderr");
                std::thread::spawn(move || {
                    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                        log.lock().unwrap().push(line);
                    }
                });
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    std::thread::sleep(Duration::from_millis(50));
                    last_log = log.lock().unwrap().clone();
                    eprintln!("haproxy exited at start ({status}): {last_log:?}");
                    break;
                }
                let listening = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
                if listening && stats(&socket).is_ok() {
                    return Haproxy {
                        child,
                        url: format!("http://127.0.0.1:{port}"),
                        dir,
                        socket,
                        log,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("haproxy did not start in 10 s: {:?}", log.lock().unwrap());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("haproxy did not start in 5 attempts: {last_log:?}");
    }

    /// Each replica's state as HAProxy sees it: `(name, status)` with
    /// status `UP`, `DOWN`, `MAINT`, ... (`show stat`).
    pub fn servers(&self) -> Vec<(String, String)> {
        let text = stats(&self.socket).expect("haproxy admin socket");
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .expect("show stat header")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
        let (px, sv, status) = (col("pxname"), col("svname"), col("status"));
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > status && f[px] == "replicas")
            .filter(|f| f[sv] != "BACKEND")
            .map(|f| (f[sv].to_string(), f[status].to_string()))
            .collect()
    }

    /// The state of one replica.
    pub fn status(&self, server: &str) -> String {
        self.servers()
            .into_iter()
            .find(|(name, _)| name == server)
            .map(|(_, status)| status)
            .unwrap_or_else(|| panic!("haproxy has no server {server}"))
    }

    /// Waits (at most `limit`) until HAProxy reports `server` in `status`
    /// (its first word: `DOWN 1/2` is `DOWN`); how long that took.
    pub async fn wait_status(&self, server: &str, status: &str, limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let now = self.status(server);
            if now.split_whitespace().next() == Some(status) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < limit,
                "haproxy never saw {server} {status} within {limit:?} (it says {now}); log: {:?}",
                self.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The last `n` lines HAProxy logged (one per request, and its own).
    pub fn log_tail(&self, n: usize) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(n)..].to_vec()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `show stat` through the admin socket.
fn stats(socket: &std::path::Path) -> std::io::Result<String> {
    let mut conn = UnixStream::connect(socket)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(b"show stat\n")?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    Ok(text)
}
