//! A real OpenLDAP slapd per test: its own directory, an mdb database with
//! the memberof and syncprov overlays (sessionlog on, so deletes are
//! reported by syncrepl), a root DN for seeding and a separate sync bind DN
//! with unlimited size/time limits. Killed and removed on drop.

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const SUFFIX: &str = "dc=example,dc=org";
pub const ROOT_DN: &str = "cn=admin,dc=example,dc=org";
pub const ROOT_PW: &str = "rootsecret";
pub const SYNC_DN: &str = "cn=sync,dc=example,dc=org";
pub const SYNC_PW: &str = "sync-pw-7f3a";
/// A DN bound by the default `sizelimit 10`, for the size-limit test.
pub const LIMITED_DN: &str = "cn=limited,dc=example,dc=org";
pub const PEOPLE: &str = "ou=people,dc=example,dc=org";
pub const GROUPS: &str = "ou=groups,dc=example,dc=org";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The pid and a random suffix: pids wrap, and a directory an earlier
/// process left must never be taken for this one's (the benches include
/// this file without the rest of the test support).
fn run_token() -> &'static str {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    RUN.get_or_init(|| format!("{}r{:06x}", std::process::id(), rand::random::<u32>() >> 8))
}

pub struct Slapd {
    child: Option<Child>,
    pub port: u16,
    pub url: String,
    pub dir: PathBuf,
}

/// The entries every directory starts with.
pub fn base_ldif() -> String {
    format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n\
         dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups\n\n\
         dn: {SYNC_DN}\nobjectClass: person\nobjectClass: simpleSecurityObject\ncn: sync\nsn: sync\nuserPassword: {SYNC_PW}\n\n\
         dn: {LIMITED_DN}\nobjectClass: person\nobjectClass: simpleSecurityObject\ncn: limited\nsn: limited\nuserPassword: {SYNC_PW}\n\n"
    )
}

/// An inetOrgPerson under ou=people.
pub fn user_ldif(uid: &str, mail: &str) -> String {
    format!(
        "dn: uid={uid},{PEOPLE}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid} Person\ngivenName: {uid}\nsn: Person\nmail: {mail}\n\n"
    )
}

/// A groupOfNames under ou=groups with the given member DNs.
pub fn group_ldif(cn: &str, members: &[String]) -> String {
    let mut s = format!("dn: cn={cn},{GROUPS}\nobjectClass: groupOfNames\ncn: {cn}\n");
    for m in members {
        s.push_str(&format!("member: {m}\n"));
    }
    s.push('\n');
    s
}

pub fn user_dn(uid: &str) -> String {
    format!("uid={uid},{PEOPLE}")
}

pub fn group_dn(cn: &str) -> String {
    format!("cn={cn},{GROUPS}")
}

fn config(dir: &std::path::Path) -> String {
    let d = dir.display();
    format!(
        "include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
moduleload syncprov
pidfile {d}/slapd.pid
argsfile {d}/slapd.args
sizelimit 10
timelimit 60
database mdb
maxsize 4294967296
suffix \"{SUFFIX}\"
rootdn \"{ROOT_DN}\"
rootpw {ROOT_PW}
directory {d}/db
index objectClass,entryUUID,entryCSN,uid,cn eq
limits dn.exact=\"{SYNC_DN}\" size=unlimited time=unlimited
access to attrs=userPassword by self read by anonymous auth by * none
access to * by * read
overlay memberof
overlay syncprov
syncprov-checkpoint 100 10
syncprov-sessionlog 10000
"
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Whether an LDAP server at `url` answers an anonymous rootDSE search.
fn answers_ldap(url: &str) -> bool {
    Command::new("ldapsearch")
        .args(["-x", "-LLL", "-o", "nettimeout=2", "-H", url])
        .args(["-b", "", "-s", "base", "namingContexts"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Starts slapd on `dir`'s config and database, listening on `url`; the
/// child once its port answers, `None` if it exited first (port taken, bad
/// config) or did not answer within `wait`.
fn spawn_until_listening(
    dir: &std::path::Path,
    url: &str,
    port: u16,
    wait: Duration,
) -> Option<Child> {
    let mut child = Command::new("slapd")
        .arg("-f")
        .arg(dir.join("slapd.conf"))
        .arg("-h")
        .arg(format!("{url}/"))
        .arg("-d")
        .arg("0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start slapd");
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        // A TCP accept alone can fool this: another test's listener on a
        // port just freed, or a self-connect (the kernel may pick the
        // target port as the source port). Only slapd answers a rootDSE
        // search, and only our child if it is still alive afterwards.
        if TcpStream::connect(("127.0.0.1", port)).is_ok()
            && answers_ldap(url)
            && matches!(child.try_wait(), Ok(None))
        {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

impl Slapd {
    /// Starts slapd with the base entries.
    pub fn start() -> Slapd {
        Self::start_with(&base_ldif())
    }

    /// Starts slapd with `ldif` loaded offline by slapadd (fast for large
    /// directories); it must include the base entries.
    pub fn start_with(ldif: &str) -> Slapd {
        let dir = std::env::temp_dir().join(format!(
            "rolebridge-slapd-{}-{}",
            run_token(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("db")).expect("slapd dir");
        std::fs::write(dir.join("slapd.conf"), config(&dir)).expect("slapd.conf");
        std::fs::write(dir.join("seed.ldif"), ldif).expect("seed.ldif");
        let out = Command::new("slapadd")
            .arg("-q")
            .arg("-f")
            .arg(dir.join("slapd.conf"))
            .arg("-l")
            .arg(dir.join("seed.ldif"))
            .output()
            .expect("run slapadd (apt-get install slapd)");
        assert!(
            out.status.success(),
            "slapadd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_file(dir.join("seed.ldif"));
        for _attempt in 0..5 {
            let port = free_port();
            let url = format!("ldap://127.0.0.1:{port}");
            if let Some(child) = spawn_until_listening(&dir, &url, port, Duration::from_secs(10)) {
                return Slapd {
                    child: Some(child),
                    port,
                    url,
                    dir,
                };
            }
        }
        panic!("slapd did not start");
    }

    /// Starts slapd again on the same database and port, after [`kill`]:
    /// a crashed server coming back.
    ///
    /// [`kill`]: Slapd::kill
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart a killed slapd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            // The port may still be held for a moment: retry.
            if let Some(child) =
                spawn_until_listening(&self.dir, &self.url, self.port, Duration::from_secs(5))
            {
                self.child = Some(child);
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("slapd did not restart on port {}", self.port);
    }

    /// The server's `contextCSN` on the suffix.
    pub fn context_csn(&self) -> String {
        let out = Command::new("ldapsearch")
            .args(["-x", "-LLL", "-H", &self.url, "-D", ROOT_DN, "-w", ROOT_PW])
            .args(["-b", SUFFIX, "-s", "base", "contextCSN"])
            .output()
            .expect("ldapsearch");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("contextCSN: "))
            .unwrap_or_else(|| panic!("no contextCSN: {text}"))
            .to_string()
    }

    /// The pid, for killing it from a callback.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Kills slapd at once (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn tool(&self, tool: &str, extra: &[&str], ldif: &str) {
        use std::io::Write;
        let mut child = Command::new(tool)
            .args(["-x", "-H", &self.url, "-D", ROOT_DN, "-w", ROOT_PW])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ldap-utils (apt-get install ldap-utils)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ldif.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{tool} failed: {}\n{ldif}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Adds entries (LDIF) as the root DN.
    pub fn add(&self, ldif: &str) {
        self.tool("ldapadd", &[], ldif)
    }

    /// Applies an LDIF change file (changetype: modify/delete/modrdn).
    pub fn modify(&self, ldif: &str) {
        self.tool("ldapmodify", &[], ldif)
    }

    /// Applies LDIF changes with the relax control (RFC draft-zeilenga-ldap-
    /// relax, OpenLDAP's `-e relax`), which lets the root DN write
    /// operational attributes such as `modifyTimestamp`: tests set a
    /// second of their own instead of sleeping through slapd's clock.
    pub fn modify_relaxed(&self, ldif: &str) {
        self.tool("ldapmodify", &["-e", "relax"], ldif)
    }

    /// Deletes entries by DN.
    pub fn delete(&self, dns: &[String]) {
        let mut ldif = String::new();
        for dn in dns {
            ldif.push_str(&format!("dn: {dn}\nchangetype: delete\n\n"));
        }
        self.modify(&ldif)
    }

    /// The `entryUUID` of one entry.
    pub fn entry_uuid(&self, dn: &str) -> String {
        self.attribute(dn, "entryUUID")
    }

    /// One entry's value of a single-valued attribute (operational ones
    /// included).
    pub fn attribute(&self, dn: &str, name: &str) -> String {
        let out = Command::new("ldapsearch")
            .args(["-x", "-LLL", "-H", &self.url, "-D", ROOT_DN, "-w", ROOT_PW])
            .args(["-b", dn, "-s", "base", name])
            .output()
            .expect("ldapsearch");
        let text = String::from_utf8_lossy(&out.stdout);
        let prefix = format!("{name}: ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {name} for {dn}: {text}"))
            .to_string()
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
