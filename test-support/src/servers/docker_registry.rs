//! [`DockerRegistry`]: Debian's `docker-registry` (CNCF distribution 2.8) on
//! 127.0.0.1 with filesystem storage in a temporary directory.
//!
//! distribution cannot report a port it picked itself, so a free port is
//! chosen first and the start is retried if another process takes it in
//! between.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

use super::{ProcessLog, TAIL_LINES, http_get_status, kill_and_reap};
use crate::net::free_port;
use crate::tools::require_tool;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Start attempts; each failure is most likely a lost race for the port.
const ATTEMPTS: u32 = 3;

/// A running distribution 2.8 registry, killed when dropped.
#[derive(Debug)]
pub struct DockerRegistry {
    child: Child,
    addr: SocketAddr,
    storage: TempDir,
    config_path: PathBuf,
    log: ProcessLog,
}

impl DockerRegistry {
    /// Starts a registry with deletes enabled and no authentication; panics
    /// (with its log) if it does not answer `GET /v2/` with 200.
    pub fn start() -> DockerRegistry {
        Self::start_with_config("")
    }

    /// Like [`start`](Self::start) with extra top-level YAML sections
    /// appended to the configuration (for example an `auth:` section). With
    /// authentication configured a 401 from `/v2/` also counts as ready.
    pub fn start_with_config(extra_yaml: &str) -> DockerRegistry {
        Self::try_start_with_config(extra_yaml)
            .unwrap_or_else(|e| panic!("docker-registry did not start: {e:#}"))
    }

    pub fn try_start_with_config(extra_yaml: &str) -> anyhow::Result<DockerRegistry> {
        let binary = require_tool("docker-registry");
        let storage = tempfile::Builder::new()
            .prefix("docker-registry-data-")
            .tempdir()
            .context("creating the registry's storage dir")?;
        let log = ProcessLog::new("docker-registry")?;
        let config_path = log.dir().join("config.yml");
        let mut last_error = None;
        for attempt in 1..=ATTEMPTS {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            std::fs::write(&config_path, config(addr, storage.path(), extra_yaml))
                .context("writing the registry config")?;
            let (out, err) = log.stdio(&format!("start attempt {attempt} on {addr}"))?;
            let mut child = Command::new(&binary)
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .with_context(|| format!("spawning {}", binary.display()))?;
            match wait_ready(&mut child, addr) {
                Ok(()) => {
                    return Ok(DockerRegistry {
                        child,
                        addr,
                        storage,
                        config_path,
                        log,
                    });
                }
                Err(e) => {
                    kill_and_reap(&mut child);
                    last_error = Some(e);
                }
            }
        }
        let e = last_error.unwrap_or_else(|| anyhow::anyhow!("no start attempted"));
        bail!(
            "{e:#} (after {ATTEMPTS} attempts); log tail:\n{}",
            log.tail(TAIL_LINES)
        )
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`, as image references want it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The filesystem storage root (`storage.filesystem.rootdirectory`).
    pub fn storage_dir(&self) -> &Path {
        self.storage.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn log_text(&self) -> String {
        self.log.text()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
        self.log.print_tail_if_panicking();
    }
}

fn config(addr: SocketAddr, storage: &Path, extra_yaml: &str) -> String {
    // A fixed http.secret keeps the registry from warning about a random
    // one; upload purging is off so that long benchmarks keep their uploads;
    // the access log is off because it would dwarf the useful lines.
    format!(
        r#"version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: "{root}"
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: "{addr}"
  secret: berth-test-secret
{extra_yaml}
"#,
        root = storage.display(),
    )
}

/// Waits until `/v2/` answers 200 (or 401 when authentication is on), the
/// child exits, or the start-up timeout passes.
fn wait_ready(child: &mut Child, addr: SocketAddr) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("docker-registry exited during start-up with {status}");
        }
        let last = match http_get_status(addr, "/v2/") {
            Ok(200 | 401) => return Ok(()),
            Ok(code) => format!("GET /v2/ answered {code}"),
            Err(e) => e.to_string(),
        };
        if start.elapsed() >= STARTUP_TIMEOUT {
            bail!("docker-registry on {addr} not ready within {STARTUP_TIMEOUT:?}: {last}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
