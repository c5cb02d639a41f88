//! A real Samba Active Directory domain controller for the `ad` test binary.
//!
//! Only one process can own 127.0.0.1:389, so the binary provisions and
//! starts ONE DC, the first time a test asks for it ([`dc`]), and every test
//! works in its own OU. The DC lives in a fixed directory under the temp dir
//! so a DC left behind by an earlier, killed run is found (by its pid file)
//! and stopped before provisioning again.
//!
//! Shutdown: samba runs in the foreground (`-i`) with its stdin a pipe that
//! only this process holds. Samba ends itself on EOF on stdin, and the kernel
//! closes that pipe when the test process exits for any reason (even
//! SIGKILL), so no DC outlives its test run.

#![allow(dead_code)]

use std::collections::HashSet;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use ldap3::{LdapConnAsync, LdapConnSettings, Mod, Scope, SearchEntry};

pub const REALM: &str = "RB.TEST";
pub const DOMAIN: &str = "RB";
pub const BASE_DN: &str = "DC=rb,DC=test";
pub const URL: &str = "ldap://127.0.0.1:389";
/// Test-only passwords of a throwaway domain on loopback.
const ADMIN_PASSWORD: &str = "Adm1n!Passw0rd-rb";
const SYNC_USER: &str = "rbsync";
const SYNC_PASSWORD: &str = "Sync!Passw0rd-rb1";

/// Bound on `samba-tool domain provision` (about 4 s on a laptop).
const PROVISION_TIMEOUT: Duration = Duration::from_secs(180);
/// Bound on samba answering a bind on 389 after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// Concurrent adds when seeding many users.
const SEED_LANES: usize = 8;
/// How many values one modify adds to a group's `member`.
const MEMBER_BATCH: usize = 250;

/// The running DC and how to reach it.
pub struct Dc {
    pub url: String,
    pub base_dn: String,
    pub admin_dn: String,
    pub admin_password: String,
    /// A plain domain user the sync binds as (not an administrator).
    pub sync_dn: String,
    pub sync_password: String,
    /// A file holding `sync_password`, for `bind_password = { file = .. }`.
    pub sync_password_file: PathBuf,
    pub dir: PathBuf,
    pub provision_time: Duration,
    pub start_time: Duration,
    /// The write end of samba's stdin. Statics are never dropped: the
    /// kernel closes it when this process exits, and samba stops on EOF.
    stdin: Mutex<Option<ChildStdin>>,
    child: Mutex<Child>,
}

static DC: OnceLock<Result<Dc, String>> = OnceLock::new();

/// The DC of this test binary, provisioned and started on first use.
///
/// Blocks the calling thread while provisioning (tests call it from a
/// multi-threaded runtime). A failure is remembered, so every test reports
/// the same cause instead of provisioning again.
pub fn dc() -> &'static Dc {
    match DC.get_or_init(|| {
        // Provisioning and the child are owned by no test thread.
        std::thread::spawn(start_dc)
            .join()
            .unwrap_or_else(|_| Err("the DC start thread panicked".to_string()))
    }) {
        Ok(dc) => dc,
        Err(e) => panic!("Samba AD DC unavailable: {e}"),
    }
}

fn root_dir() -> PathBuf {
    std::env::temp_dir().join("rolebridge-ad-dc")
}

fn run_bounded(cmd: &mut Command, timeout: Duration, what: &str) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: cannot run: {e} (is the samba package installed?)"))?;
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("{what}: wait: {e}"))? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what}: still running after {timeout:?}; killed"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    if !status.success() {
        return Err(format!(
            "{what}: {status}\n--- stdout tail ---\n{}\n--- stderr tail ---\n{}",
            tail(&stdout, 30),
            tail(&stderr, 30)
        ));
    }
    Ok(stdout)
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn log_tail(dir: &Path) -> String {
    let mut out = String::new();
    for name in ["samba.out", "log.samba"] {
        if let Ok(s) = std::fs::read_to_string(dir.join(name)) {
            out.push_str(&format!("--- {name} (tail) ---\n{}\n", tail(&s, 40)));
        }
    }
    out
}

/// Stops a samba an earlier run left behind (its pid file is in our fixed
/// directory), so the port and the directory are free.
fn stop_stale(dir: &Path) -> Result<(), String> {
    let pidfile = dir.join("run").join("samba.pid");
    let Ok(text) = std::fs::read_to_string(&pidfile) else {
        return Ok(());
    };
    let Ok(pid) = text.trim().parse::<u32>() else {
        return Ok(());
    };
    let is_samba = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim().starts_with("samba"))
            .unwrap_or(false)
    };
    if !is_samba(pid) {
        return Ok(());
    }
    // A samba whose parent is still a test binary of this name belongs to
    // a concurrent run (a samba whose run died gets EOF on stdin and
    // stops by itself, or is reparented): leave it alone.
    let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_comm = stat.rsplit_once(')')?.1.to_string();
            after_comm.split_whitespace().nth(1)?.parse::<u32>().ok()
        });
    if let Some(ppid) = parent {
        let comm = std::fs::read_to_string(format!("/proc/{ppid}/comm")).unwrap_or_default();
        if comm.trim().starts_with("ad-") {
            return Err(format!(
                "another AD test run (pid {ppid}) is using the DC (samba pid {pid}) on 127.0.0.1:389"
            ));
        }
    }
    for signal in ["-TERM", "-KILL"] {
        let _ = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !is_samba(pid) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Err(format!(
        "a stale samba (pid {pid}) from an earlier run does not stop"
    ))
}

fn port_389_open() -> bool {
    let addr: SocketAddr = "127.0.0.1:389".parse().expect("addr");
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

fn smb_conf(dir: &Path) -> String {
    let d = dir.display();
    // Everything lives under `dir`; only the LDAP service runs, on loopback.
    // Simple binds over plain LDAP are allowed (test only).
    format!(
        "[global]
\tnetbios name = DC1
\trealm = {REALM}
\tworkgroup = {DOMAIN}
\tserver role = active directory domain controller
\tserver services = ldap
\tinterfaces = 127.0.0.1
\tbind interfaces only = yes
\tldap server require strong auth = no
\tprivate dir = {d}/private
\tstate directory = {d}/state
\tcache directory = {d}/cache
\tlock directory = {d}/lock
\tpid directory = {d}/run
\tbinddns dir = {d}/bind-dns
\tncalrpc dir = {d}/ncalrpc
\twinbindd socket directory = {d}/winbindd
\tlog file = {d}/log.samba
\tlogging = file
\tlog level = 1
\tmax log size = 0
\tidmap_ldb:use rfc2307 = yes
[sysvol]
\tpath = {d}/state/sysvol
\tread only = No
[netlogon]
\tpath = {d}/state/sysvol/rb.test/scripts
\tread only = No
"
    )
}

fn start_dc() -> Result<Dc, String> {
    let dir = root_dir();
    stop_stale(&dir)?;
    if port_389_open() {
        return Err(
            "127.0.0.1:389 is already in use by another process; the AD tests need it".to_string(),
        );
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| format!("remove {}: {e}", dir.display()))?;
    }
    for sub in ["etc", "run", "cache", "lock", "state", "private"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| format!("mkdir: {e}"))?;
    }

    let t0 = Instant::now();
    run_bounded(
        Command::new("samba-tool")
            .args(["domain", "provision"])
            .arg(format!("--targetdir={}", dir.display()))
            .arg(format!("--realm={REALM}"))
            .arg(format!("--domain={DOMAIN}"))
            .args([
                "--server-role=dc",
                "--dns-backend=NONE",
                "--use-rfc2307",
                "--host-name=dc1",
            ])
            .arg(format!("--adminpass={ADMIN_PASSWORD}"))
            .arg("--option=interfaces=127.0.0.1")
            .arg("--option=bind interfaces only=yes"),
        PROVISION_TIMEOUT,
        "samba-tool domain provision",
    )?;
    let provision_time = t0.elapsed();
    let conf = dir.join("etc").join("smb.conf");
    std::fs::write(&conf, smb_conf(&dir)).map_err(|e| format!("write smb.conf: {e}"))?;

    // The account the sync binds as: an ordinary domain user.
    run_bounded(
        Command::new("samba-tool")
            .args(["user", "create", SYNC_USER, SYNC_PASSWORD])
            .arg(format!("--configfile={}", conf.display())),
        Duration::from_secs(60),
        "samba-tool user create",
    )?;

    let sync_password_file = dir.join("sync.pw");
    std::fs::write(&sync_password_file, format!("{SYNC_PASSWORD}\n"))
        .map_err(|e| format!("write sync.pw: {e}"))?;

    let t1 = Instant::now();
    let out = std::fs::File::create(dir.join("samba.out")).map_err(|e| e.to_string())?;
    let mut child = Command::new("samba")
        .args(["-i", "-M", "single", "-s"])
        .arg(&conf)
        .stdin(Stdio::piped())
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(out)
        .spawn()
        .map_err(|e| format!("cannot start samba: {e}"))?;
    let stdin = child.stdin.take();
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "samba exited at start: {status}\n{}",
                log_tail(&dir)
            ));
        }
        if port_389_open() && bind_works(&admin_dn(), ADMIN_PASSWORD) {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "samba did not answer an LDAP bind on 127.0.0.1:389 within {START_TIMEOUT:?}\n{}",
                log_tail(&dir)
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let start_time = t1.elapsed();
    eprintln!(
        "samba AD DC in {}: provisioned in {provision_time:?}, answering LDAP {start_time:?} after start",
        dir.display()
    );
    Ok(Dc {
        url: URL.to_string(),
        base_dn: BASE_DN.to_string(),
        admin_dn: admin_dn(),
        admin_password: ADMIN_PASSWORD.to_string(),
        sync_dn: format!("CN={SYNC_USER},CN=Users,{BASE_DN}"),
        sync_password: SYNC_PASSWORD.to_string(),
        sync_password_file,
        dir,
        provision_time,
        start_time,
        stdin: Mutex::new(stdin),
        child: Mutex::new(child),
    })
}

fn admin_dn() -> String {
    format!("CN=Administrator,CN=Users,{BASE_DN}")
}

/// One simple bind, on a runtime of its own: this runs on the DC start
/// thread, outside any test's runtime.
fn bind_works(dn: &str, password: &str) -> bool {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return false;
    };
    rt.block_on(async {
        let settings = LdapConnSettings::new().set_conn_timeout(Duration::from_secs(2));
        let Ok((conn, mut ldap)) = LdapConnAsync::with_settings(settings, URL).await else {
            return false;
        };
        ldap3::drive!(conn);
        ldap.with_timeout(Duration::from_secs(5));
        let ok = ldap
            .simple_bind(dn, password)
            .await
            .and_then(|r| r.success())
            .is_ok();
        let _ = ldap.unbind().await;
        ok
    })
}

impl Dc {
    /// A connection bound as Administrator, for seeding.
    pub async fn admin(&self) -> Admin {
        let settings = LdapConnSettings::new().set_conn_timeout(Duration::from_secs(10));
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.url)
            .await
            .expect("connect to samba");
        ldap3::drive!(conn);
        ldap.with_timeout(Duration::from_secs(60));
        ldap.simple_bind(&self.admin_dn, &self.admin_password)
            .await
            .and_then(|r| r.success())
            .expect("bind as Administrator");
        Admin { ldap }
    }

    /// `samba-tool {user|group} show NAME`'s objectGUID: samba's own
    /// decoding of the GUID, independent of rolebridge's.
    pub fn samba_tool_guid(&self, kind: &str, sam_account_name: &str) -> String {
        let out = run_bounded(
            Command::new("samba-tool")
                .args([kind, "show", sam_account_name, "-H", &self.url, "-U"])
                .arg(format!("Administrator%{}", self.admin_password))
                .args(["--attributes=objectGUID"])
                .arg(format!(
                    "--configfile={}",
                    self.dir.join("etc/smb.conf").display()
                )),
            Duration::from_secs(60),
            "samba-tool user show",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        out.lines()
            .find_map(|l| l.strip_prefix("objectGUID: "))
            .unwrap_or_else(|| panic!("no objectGUID in samba-tool output:\n{out}"))
            .trim()
            .to_string()
    }

    /// The tail of samba's logs, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.dir)
    }

    /// Stops samba now (normally the pipe closing at exit does it).
    pub fn stop(&self) {
        self.stdin.lock().expect("lock").take();
        let mut child = self.child.lock().expect("lock");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// An Administrator connection with seeding helpers. Every helper panics
/// with the DN and the server's answer on failure (test setup).
pub struct Admin {
    pub ldap: ldap3::Ldap,
}

/// A seeded user.
#[derive(Debug, Clone)]
pub struct AdUser {
    pub dn: String,
    pub sam: String,
    pub upn: String,
}

impl Admin {
    /// Creates `OU=name` under the domain and returns its DN.
    pub async fn ou(&mut self, name: &str) -> String {
        let dn = format!("OU={name},{BASE_DN}");
        self.add(&dn, vec![("objectClass", vec!["organizationalUnit"])])
            .await;
        dn
    }

    /// Creates a user with `userAccountControl` 512 (enabled) or 514
    /// (disabled), a UPN `sam@rb.test`, names and a mail.
    pub async fn user(&mut self, ou: &str, sam: &str, enabled: bool) -> AdUser {
        let dn = format!("CN={sam},{ou}");
        let upn = format!("{sam}@rb.test");
        let mail = format!("{sam}@mail.rb.test");
        let given = format!("Given{sam}");
        let family = format!("Family{sam}");
        let display = format!("Display {sam}");
        let uac = if enabled { "512" } else { "514" };
        self.add(
            &dn,
            vec![
                ("objectClass", vec!["user"]),
                ("sAMAccountName", vec![sam]),
                ("userPrincipalName", vec![&upn]),
                ("givenName", vec![&given]),
                ("sn", vec![&family]),
                ("displayName", vec![&display]),
                ("mail", vec![&mail]),
                ("userAccountControl", vec![uac]),
            ],
        )
        .await;
        AdUser {
            dn,
            sam: sam.to_string(),
            upn,
        }
    }

    /// Creates many users, `SEED_LANES` requests in flight at once over this
    /// one connection (ldap3 multiplexes), in `names`' order.
    pub async fn users(&mut self, ou: &str, names: &[String], enabled: bool) -> Vec<AdUser> {
        let mut lanes = tokio::task::JoinSet::new();
        for lane in 0..SEED_LANES {
            let mut admin = Admin {
                ldap: self.ldap.clone(),
            };
            let ou = ou.to_string();
            let mine: Vec<(usize, String)> = names
                .iter()
                .enumerate()
                .skip(lane)
                .step_by(SEED_LANES)
                .map(|(i, n)| (i, n.clone()))
                .collect();
            lanes.spawn(async move {
                let mut out = Vec::with_capacity(mine.len());
                for (i, name) in mine {
                    out.push((i, admin.user(&ou, &name, enabled).await));
                }
                out
            });
        }
        let mut all: Vec<(usize, AdUser)> = Vec::with_capacity(names.len());
        while let Some(done) = lanes.join_next().await {
            all.extend(done.unwrap_or_else(|e| panic!("seeding users: {e}")));
        }
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, u)| u).collect()
    }

    /// Creates a global security group and returns its DN.
    pub async fn group(&mut self, ou: &str, name: &str) -> String {
        let dn = format!("CN={name},{ou}");
        self.add(
            &dn,
            vec![
                ("objectClass", vec!["group"]),
                ("sAMAccountName", vec![name]),
            ],
        )
        .await;
        dn
    }

    /// Adds members to a group, `MEMBER_BATCH` values per modify.
    pub async fn add_members(&mut self, group: &str, members: &[String]) {
        for chunk in members.chunks(MEMBER_BATCH) {
            let values: HashSet<&str> = chunk.iter().map(String::as_str).collect();
            self.modify(group, vec![Mod::Add("member", values)]).await;
        }
    }

    pub async fn remove_members(&mut self, group: &str, members: &[String]) {
        let values: HashSet<&str> = members.iter().map(String::as_str).collect();
        self.modify(group, vec![Mod::Delete("member", values)])
            .await;
    }

    /// Sets `userAccountControl` to 512 or 514.
    pub async fn set_enabled(&mut self, dn: &str, enabled: bool) {
        let uac = if enabled { "512" } else { "514" };
        self.replace(dn, "userAccountControl", uac).await;
    }

    pub async fn replace(&mut self, dn: &str, attr: &str, value: &str) {
        self.modify(dn, vec![Mod::Replace(attr, HashSet::from([value]))])
            .await;
    }

    /// Renames the entry to `CN=new_cn` in the same OU; returns the new DN.
    pub async fn rename(&mut self, dn: &str, new_cn: &str) -> String {
        let rdn = format!("CN={new_cn}");
        self.ldap
            .modifydn(dn, &rdn, true, None)
            .await
            .and_then(|r| r.success())
            .unwrap_or_else(|e| panic!("rename {dn} to {rdn}: {e}"));
        let parent = dn.split_once(',').map(|(_, p)| p).expect("parent");
        format!("{rdn},{parent}")
    }

    /// Creates an OU at a full DN (e.g. nested in a test's OU).
    pub async fn add_ou_at(&mut self, dn: &str) {
        self.add(dn, vec![("objectClass", vec!["organizationalUnit"])])
            .await;
    }

    /// Moves the entry under `new_parent`, keeping its RDN; returns the new
    /// DN.
    pub async fn move_to(&mut self, dn: &str, new_parent: &str) -> String {
        let rdn = dn.split_once(',').map(|(r, _)| r).expect("rdn");
        self.ldap
            .modifydn(dn, rdn, true, Some(new_parent))
            .await
            .and_then(|r| r.success())
            .unwrap_or_else(|e| panic!("move {dn} under {new_parent}: {e}"));
        format!("{rdn},{new_parent}")
    }

    pub async fn delete(&mut self, dn: &str) {
        self.ldap
            .delete(dn)
            .await
            .and_then(|r| r.success())
            .unwrap_or_else(|e| panic!("delete {dn}: {e}"));
    }

    /// The raw 16 bytes of an entry's `objectGUID`.
    pub async fn guid_bytes(&mut self, dn: &str) -> Vec<u8> {
        let mut entry = self.read(dn, &["objectGUID"]).await;
        let mut values = entry
            .bin_attrs
            .remove("objectGUID")
            .unwrap_or_else(|| panic!("{dn} has no binary objectGUID: {entry:?}"));
        assert_eq!(values.len(), 1, "{dn}: one objectGUID");
        let guid = values.remove(0);
        assert_eq!(guid.len(), 16, "{dn}: objectGUID is 16 bytes");
        guid
    }

    /// An entry's `uSNChanged`.
    pub async fn usn_changed(&mut self, dn: &str) -> u64 {
        let entry = self.read(dn, &["uSNChanged"]).await;
        entry.attrs["uSNChanged"][0].parse().expect("uSNChanged")
    }

    /// The rootDSE's `highestCommittedUSN`.
    pub async fn highest_committed_usn(&mut self) -> u64 {
        let entry = self.read("", &["highestCommittedUSN"]).await;
        entry.attrs["highestCommittedUSN"][0]
            .parse()
            .expect("highestCommittedUSN")
    }

    /// Base-scope read of one entry.
    pub async fn read(&mut self, dn: &str, attrs: &[&str]) -> SearchEntry {
        let (mut entries, _) = self
            .ldap
            .search(dn, Scope::Base, "(objectClass=*)", attrs.to_vec())
            .await
            .and_then(|r| r.success())
            .unwrap_or_else(|e| panic!("read {dn}: {e}"));
        assert_eq!(entries.len(), 1, "read {dn}");
        SearchEntry::construct(entries.remove(0))
    }

    async fn add(&mut self, dn: &str, attrs: Vec<(&str, Vec<&str>)>) {
        let attrs: Vec<(&str, HashSet<&str>)> = attrs
            .into_iter()
            .map(|(a, v)| (a, v.into_iter().collect()))
            .collect();
        self.ldap
            .add(dn, attrs)
            .await
            .and_then(|r| r.success())
            .unwrap_or_else(|e| panic!("add {dn}: {e}"));
    }

    async fn modify(&mut self, dn: &str, mods: Vec<Mod<&str>>) {
        self.ldap
            .modify(dn, mods)
            .await
            .and_then(|r| r.success())
            .unwrap_or_else(|e| panic!("modify {dn}: {e}"));
    }
}

/// Decodes an `objectGUID` independently of rolebridge: the first three
/// fields are little-endian, the last eight bytes are in order.
pub fn guid_string(b: &[u8]) -> String {
    assert_eq!(b.len(), 16);
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
        b[15]
    )
}
