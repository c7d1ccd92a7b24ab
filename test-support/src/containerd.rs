//! [`Containerd`]: a private containerd daemon as a child process, and `ctr`
//! bound to it, for the end-to-end tests and the agent benchmark (which
//! starts a fresh one per timed pull, so every pull starts from an empty
//! content store and snapshotter).
//!
//! Each instance gets its own temporary directory holding the configuration,
//! `root`, `state`, the gRPC and ttrpc sockets and the daemon's log, so tests
//! neither need nor disturb a system containerd. The CRI plugin is disabled
//! (it wants CNI and a sandbox image); the snapshotters (`overlayfs`,
//! `native`) and runc-based tasks stay available, so `ctr images pull`
//! unpacks and `ctr run` runs.
//!
//! The daemon is stopped (SIGTERM, then SIGKILL) when the value is dropped;
//! if the test is panicking the tail of its log is printed first.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::tools::{debian_package_for, find_tool};

/// How long the daemon may take to create its socket and answer.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Drop`] waits after SIGTERM before SIGKILL.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of the daemon's log a panicking test gets to see.
const TAIL_LINES: usize = 40;
/// The containerd namespace `ctr` uses unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "test";

/// A running containerd with a private root, state and socket.
#[derive(Debug)]
pub struct Containerd {
    child: Option<Child>,
    dir: TempDir,
    socket: PathBuf,
    ctr: PathBuf,
    namespace: String,
}

impl Containerd {
    /// Starts containerd and waits until `ctr version` answers on its socket;
    /// panics (with the daemon's log) if it does not, or if `containerd`,
    /// `ctr` or `runc` are missing.
    pub fn start() -> Containerd {
        Self::try_start().unwrap_or_else(|e| panic!("containerd did not start: {e:#}"))
    }

    /// Like [`start`](Self::start), but a missing tool or a daemon that does
    /// not come up is an error (naming the package to install), not a panic:
    /// the benchmark reports it like any other failure.
    pub fn try_start() -> anyhow::Result<Containerd> {
        let containerd = tool("containerd")?;
        let ctr = tool("ctr")?;
        // Not needed for pulls and pushes, but a containerd that cannot run
        // containers is a broken test machine for the tests that use it.
        tool("runc")?;

        // Unix socket paths are limited to 108 bytes: keep the directory short.
        let dir = tempfile::Builder::new()
            .prefix("ctrd-")
            .tempdir_in("/tmp")
            .context("creating containerd's temp dir")?;
        let socket = dir.path().join("c.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(&config, config_toml(dir.path(), &socket))
            .context("writing containerd's config")?;
        let log =
            File::create(dir.path().join("containerd.log")).context("creating containerd's log")?;
        let child = Command::new(&containerd)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", containerd.display()))?;
        let mut daemon = Containerd {
            child: Some(child),
            dir,
            socket,
            ctr,
            namespace: DEFAULT_NAMESPACE.to_owned(),
        };
        daemon.wait_ready()?;
        Ok(daemon)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "containerd exited during start-up with {status}; log tail:\n{}",
                    self.log_tail(TAIL_LINES)
                );
            }
            if UnixStream::connect(&self.socket).is_ok() {
                let out = self.ctr().arg("version").output()?;
                if out.status.success() {
                    return Ok(());
                }
            }
            if start.elapsed() >= STARTUP_TIMEOUT {
                bail!(
                    "containerd did not answer on {} within {STARTUP_TIMEOUT:?}; log tail:\n{}",
                    self.socket.display(),
                    self.log_tail(TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The gRPC socket (`ctr --address`, `CONTAINERD_ADDRESS`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// containerd's `root` (content store, snapshots, metadata).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// containerd's `state` (sockets of shims, mounts of running tasks).
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The containerd namespace [`ctr`](Self::ctr) uses.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Use another containerd namespace for later [`ctr`](Self::ctr) calls.
    pub fn set_namespace(&mut self, namespace: &str) {
        self.namespace = namespace.to_owned();
    }

    /// Process id of the daemon.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("containerd was stopped").id()
    }

    /// `ctr --address SOCK --namespace NS`; add the subcommand and its
    /// arguments.
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new(&self.ctr);
        cmd.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(&self.namespace)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `ctr ARGS…`, returning stdout, or failing with the command,
    /// its status, stderr and stdout.
    pub fn run_ctr<I, S>(&self, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.ctr();
        cmd.args(args);
        let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        if !out.status.success() {
            bail!(
                "{cmd:?} failed with {}:\nstderr: {}\nstdout: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ctr run --rm IMAGE ID ARGS…` with this instance's own runc root and
    /// FIFO directory (ctr's defaults are shared by every containerd on the
    /// machine, under `/run/containerd`), returning the process's stdout.
    /// Container ids must still be unique on the machine: the cgroup is
    /// `/<namespace>/<id>`.
    pub fn run_container(&self, image: &str, id: &str, args: &[&str]) -> anyhow::Result<String> {
        let runc_root = self.dir.path().join("runc");
        let fifo_dir = self.dir.path().join("fifo");
        let mut cmd_args: Vec<&OsStr> = vec![
            OsStr::new("run"),
            OsStr::new("--rm"),
            OsStr::new("--runc-root"),
            runc_root.as_os_str(),
            OsStr::new("--fifo-dir"),
            fifo_dir.as_os_str(),
            OsStr::new(image),
            OsStr::new(id),
        ];
        cmd_args.extend(args.iter().map(OsStr::new));
        self.run_ctr(cmd_args)
    }

    /// The images of the namespace as `(name, digest)` pairs, from
    /// `ctr images ls`.
    pub fn images(&self) -> anyhow::Result<Vec<(String, String)>> {
        let out = self.run_ctr(["images", "ls"])?;
        parse_images_ls(&out)
    }

    /// Path of the daemon's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("containerd.log")
    }

    /// Everything the daemon has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops the daemon (SIGTERM, as systemd does for a restart) and starts
    /// it again on the same socket, root and state: what an upgrade does
    /// to its clients.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let containerd = tool("containerd")?;
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.log_path())
            .context("opening containerd's log")?;
        let child = Command::new(&containerd)
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", containerd.display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Stops the daemon: SIGTERM, then SIGKILL after 10 s. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // ESRCH only means it already exited; wait() reaps it.
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < SHUTDOWN_TIMEOUT {
            if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- last {TAIL_LINES} lines of the containerd log ({}) -----\n{}\n----- end of containerd log -----",
                self.log_path().display(),
                self.log_tail(TAIL_LINES)
            );
        }
        self.stop();
    }
}

/// `name` on the machine, or an error saying which package provides it.
fn tool(name: &str) -> anyhow::Result<PathBuf> {
    find_tool(name).with_context(|| {
        format!(
            "{name} is required: apt-get install {}",
            debian_package_for(name).unwrap_or(name)
        )
    })
}

/// containerd 1.6's configuration (version 2) for a private instance.
fn config_toml(dir: &Path, socket: &Path) -> String {
    let root = dir.join("root");
    let state = dir.join("state");
    let ttrpc = dir.join("c.sock.ttrpc");
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{ttrpc}"

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""
"#,
        root = root.display(),
        state = state.display(),
        socket = socket.display(),
        ttrpc = ttrpc.display(),
    )
}

/// Parses `ctr images ls` (a header line, then `REF TYPE DIGEST SIZE
/// PLATFORMS LABELS` columns separated by whitespace).
pub fn parse_images_ls(out: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut lines = out.lines();
    match lines.next() {
        Some(header) if header.starts_with("REF") => {}
        Some(other) => bail!("unexpected `ctr images ls` header: {other:?}"),
        None => return Ok(Vec::new()),
    }
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            match cols.as_slice() {
                [name, _kind, digest, ..] if digest.starts_with("sha256:") => {
                    Ok(((*name).to_owned(), (*digest).to_owned()))
                }
                _ => bail!("unexpected `ctr images ls` line: {line:?}"),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_images_ls() {
        let out = "REF                              TYPE                                    DIGEST                                                                  SIZE    PLATFORMS   LABELS \n\
                   127.0.0.1:5000/acme/busybox:v1 application/vnd.oci.image.manifest.v1+json sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef 1.2 MiB linux/amd64 -      \n";
        let images = parse_images_ls(out).expect("parses");
        assert_eq!(
            images,
            [(
                "127.0.0.1:5000/acme/busybox:v1".to_owned(),
                "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
                    .to_owned()
            )]
        );
        assert!(parse_images_ls("").expect("empty").is_empty());
        assert!(parse_images_ls("nonsense\n").is_err());
    }
}
