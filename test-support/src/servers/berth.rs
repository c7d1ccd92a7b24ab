//! [`BerthServer`]: `berth-server serve` as a child process on an ephemeral
//! port, with a data directory that survives restarts and crashes.
//!
//! The contract with the binary: `berth-server serve --listen 127.0.0.1:0
//! --data-dir DIR --addr-file FILE [extra args]` binds, then writes the bound
//! `host:port` to FILE. Binding port 0 and reading the address back avoids
//! the race of picking a free port first and binding it later.

use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::{ProcessLog, TAIL_LINES, kill_and_reap, wait_timeout};
use crate::tools::workspace_bin;

/// How long the server may take to bind and write its address file.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`BerthServer::terminate`] waits after SIGTERM.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Options for starting a [`BerthServer`]; see [`BerthServer::builder`].
#[derive(Debug, Clone)]
pub struct BerthServerBuilder {
    binary: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    startup_timeout: Duration,
    postgres: Option<bool>,
}

/// Whether servers keep their metadata in PostgreSQL unless a test says:
/// with `BERTH_TEST_METADATA=postgres`, or in a test binary whose target
/// name ends in `_postgres` (a target that runs another's tests again,
/// e.g. `deletes_postgres`).
pub fn postgres_by_default() -> bool {
    if let Ok(v) = std::env::var("BERTH_TEST_METADATA") {
        return v == "postgres";
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_name().map(|n| n.to_string_lossy().into_owned()))
        // Cargo names test binaries `<target>-<hash>`.
        .is_some_and(|name| {
            name.rsplit_once('-')
                .is_some_and(|(target, _)| target.ends_with("_postgres"))
        })
}

impl BerthServerBuilder {
    /// Keep registry metadata and the auth store in a fresh database on the
    /// test process's private PostgreSQL ([`crate::Postgres::shared`]) instead
    /// of the data directory's SQLite files (blobs stay in the data
    /// directory). The default follows [`postgres_by_default`].
    pub fn postgres_metadata(mut self, on: bool) -> Self {
        self.postgres = Some(on);
        self
    }

    /// Use this data directory instead of a fresh temporary one. It is left
    /// in place when the server is dropped.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// An extra argument after the standard `serve` arguments.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// An environment variable for the server (on top of the test's own).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Run this binary instead of the workspace's `berth-server`.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Starts the server and waits until it listens; panics (with the
    /// server's log) if it does not.
    pub fn start(self) -> BerthServer {
        self.try_start()
            .unwrap_or_else(|e| panic!("berth-server did not start: {e:#}"))
    }

    /// Like [`start`](Self::start), returning the failure (which includes the
    /// tail of the server's log): for tests of start-up errors.
    pub fn try_start(self) -> anyhow::Result<BerthServer> {
        let data_dir = match self.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating data dir {}", dir.display()))?;
                DataDir::Given(dir)
            }
            None => DataDir::Owned(
                tempfile::Builder::new()
                    .prefix("berth-data-")
                    .tempdir()
                    .context("creating a temp data dir")?,
            ),
        };
        let binary = match self.binary {
            Some(b) => b,
            None => workspace_bin("berth-server"),
        };
        let mut envs = self.envs;
        let postgres = self.postgres.unwrap_or_else(postgres_by_default);
        let metadata_env = if postgres {
            let pg = super::Postgres::shared();
            // The database outlives restarts, like the data directory.
            pg.server_env(&pg.create_database())
        } else {
            Vec::new()
        };
        envs.extend(
            metadata_env
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        );
        let mut server = BerthServer {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            log: ProcessLog::new("berth-server")?,
            binary,
            args: self.args,
            envs,
            startup_timeout: self.startup_timeout,
            starts: 0,
            postgres: false,
            metadata_env,
        };
        server.postgres = postgres;
        server.spawn()?;
        Ok(server)
    }
}

#[derive(Debug)]
enum DataDir {
    Owned(TempDir),
    Given(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Owned(t) => t.path(),
            DataDir::Given(p) => p,
        }
    }
}

/// A running `berth-server`. Killed when dropped; if the test is panicking,
/// the last lines of its log are printed to stderr first.
#[derive(Debug)]
pub struct BerthServer {
    child: Option<Child>,
    addr: SocketAddr,
    data_dir: DataDir,
    log: ProcessLog,
    binary: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    startup_timeout: Duration,
    starts: u32,
    postgres: bool,
    metadata_env: Vec<(String, String)>,
}

impl BerthServer {
    pub fn builder() -> BerthServerBuilder {
        BerthServerBuilder {
            binary: None,
            data_dir: None,
            args: Vec::new(),
            envs: Vec::new(),
            startup_timeout: STARTUP_TIMEOUT,
            postgres: None,
        }
    }

    /// A server with default options on a fresh data directory.
    pub fn start() -> BerthServer {
        Self::builder().start()
    }

    /// Whether its metadata and auth store are in PostgreSQL.
    pub fn uses_postgres(&self) -> bool {
        self.postgres
    }

    /// The environment that points berth-server at its metadata database
    /// (empty on the embedded store): what `berth-server admin` needs too.
    pub fn metadata_env(&self) -> &[(String, String)] {
        &self.metadata_env
    }

    /// The address of the current (or last) run.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`, as image references and `docker login` want it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The log file collecting stdout and stderr of every run.
    pub fn log_path(&self) -> &Path {
        &self.log.path
    }

    /// Everything the server has logged so far, across restarts.
    pub fn log_text(&self) -> String {
        self.log.text()
    }

    /// Process id of the running server; panics if it was stopped.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("berth-server is not running (it was killed or terminated)")
            .id()
    }

    /// Whether the server process is still alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the server with SIGKILL (a crash: no shutdown code runs) and
    /// reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// Sends SIGTERM and waits up to 30 s for a graceful exit, returning the
    /// exit status. Panics (after SIGKILL) if the server does not exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.terminate_timeout(SHUTDOWN_TIMEOUT)
    }

    pub fn terminate_timeout(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self
            .child
            .take()
            .expect("berth-server is not running (it was killed or terminated)");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"));
        // ESRCH only means the process already exited; wait() reaps it.
        let _ = kill(pid, Signal::SIGTERM);
        match wait_timeout(&mut child, timeout) {
            Ok(Some(status)) => status,
            Ok(None) => {
                kill_and_reap(&mut child);
                panic!(
                    "berth-server did not exit within {timeout:?} after SIGTERM; log tail:\n{}",
                    self.log.tail(TAIL_LINES)
                );
            }
            Err(e) => panic!("waiting for berth-server failed: {e}"),
        }
    }

    /// Starts the server again on the same data directory with the same
    /// arguments (a new port is likely). A still-running server is first
    /// stopped gracefully.
    pub fn restart(&mut self) {
        self.try_restart()
            .unwrap_or_else(|e| panic!("berth-server did not restart: {e:#}"));
    }

    /// Like [`restart`](Self::restart) with new extra arguments, which also
    /// apply to later restarts.
    pub fn restart_with_args<I, S>(&mut self, args: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        self.restart();
    }

    pub fn try_restart(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            self.terminate();
        } else if let Some(mut child) = self.child.take() {
            // Exited on its own: reap it.
            let _ = child.wait();
        }
        self.spawn()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        self.starts += 1;
        let addr_file = self.log.dir().join(format!("addr-{}", self.starts));
        let mut cmd = Command::new(&self.binary);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .arg("--addr-file")
            .arg(&addr_file)
            .args(&self.args)
            // Log files are read by people and by assertions: no ANSI
            // colours (tracing-subscriber honours NO_COLOR). Callers may
            // override it.
            .env("NO_COLOR", "1")
            // Open access unless a test turns accounts on
            // (`.env("BERTH_AUTH__ENABLED", "true")`): most tests exercise
            // the registry, not authentication.
            .env("BERTH_AUTH__ENABLED", "false")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        let (out, err) = self
            .log
            .stdio(&format!("start #{}: {cmd:?}", self.starts))?;
        cmd.stdout(out).stderr(err);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;

        let start = Instant::now();
        let addr = loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "berth-server exited during start-up with {status}; log tail:\n{}",
                    self.log.tail(TAIL_LINES)
                );
            }
            // The file may be seen half-written; only a parseable address
            // counts.
            if let Ok(text) = std::fs::read_to_string(&addr_file)
                && let Ok(addr) = text.trim().parse::<SocketAddr>()
            {
                break addr;
            }
            if start.elapsed() >= self.startup_timeout {
                kill_and_reap(&mut child);
                bail!(
                    "berth-server did not write its address to {} within {:?}; log tail:\n{}",
                    addr_file.display(),
                    self.startup_timeout,
                    self.log.tail(TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.addr = addr;
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for BerthServer {
    fn drop(&mut self) {
        self.kill9();
        self.log.print_tail_if_panicking();
        // A test meant for PostgreSQL really ran on it. Checked at the end:
        // the server writes its address before it opens its stores.
        if self.postgres
            && !std::thread::panicking()
            && self.data_dir().join("metadata.sqlite").exists()
        {
            panic!(
                "berth-server was to keep its metadata in PostgreSQL but wrote {}",
                self.data_dir().join("metadata.sqlite").display()
            );
        }
    }
}
