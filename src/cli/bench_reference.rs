//! The reference SCIM server of `rolebridge bench scim`: the Python
//! `scim2-server` from PyPI (in memory, no durability), measured in the same
//! run and under the same client load as rolebridge, so a figure is read
//! as a ratio to it rather than against another machine's numbers.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The version measured; pinned so that runs stay comparable.
pub const SCIM2_SERVER: &str = "scim2-server==0.8.3";

/// The bearer token the reference accepts (it serves loopback only).
pub const TOKEN: &str = "bench-reference-token";

/// A running `scim2-server`, killed on drop.
pub struct Reference {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `scim2-server` executable: `ROLEBRIDGE_SCIM2_SERVER` if set, else
/// a venv under the temp dir, created with `python3 -m venv` and `pip` on
/// first use. Fails with the step that failed; never measures without it.
pub fn executable() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("ROLEBRIDGE_SCIM2_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let venv = std::env::temp_dir().join("rolebridge-scim2-server-venv");
    let exe = venv.join("bin/scim2-server");
    if exe.exists() {
        return Ok(exe);
    }
    eprintln!(
        "installing the reference {SCIM2_SERVER} into {}",
        venv.display()
    );
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
        .context("python3 -m venv (Debian: apt-get install python3-venv)")?;
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", SCIM2_SERVER]))
        .with_context(|| format!("pip install {SCIM2_SERVER}"))?;
    if !exe.exists() {
        bail!("{SCIM2_SERVER} installed no {}", exe.display());
    }
    Ok(exe)
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.stdout(Stdio::null()).output()?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl Reference {
    /// Starts the reference on a free loopback port and waits (at most
    /// 30 s) until it answers.
    pub async fn start() -> anyhow::Result<Reference> {
        let exe = executable()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(&exe)
            .args(["--hostname", "127.0.0.1", "--port", &port.to_string()])
            .args(["--bearer-token", TOKEN])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", exe.display()))?;
        let reference = Reference {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let probe = client
                .get(format!("{}/ServiceProviderConfig", reference.base))
                .bearer_auth(TOKEN)
                .send()
                .await;
            if probe.is_ok_and(|r| r.status().is_success()) {
                return Ok(reference);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer on port {port} within 30 s",
                    exe.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
