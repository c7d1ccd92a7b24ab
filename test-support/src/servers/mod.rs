//! Real servers run as child processes for tests and benchmarks.
//!
//! - [`BerthServer`]: this workspace's `berth-server`.
//! - [`DockerRegistry`]: Debian's `docker-registry` (CNCF distribution 2.8),
//!   the reference registry clients are checked against and the baseline of
//!   the benchmarks.
//! - [`Postgres`]: a private PostgreSQL server (Debian's `postgresql`), for
//!   berth-server's stores on PostgreSQL.
//! - [`Garage`]: a private one-node Garage (an S3-compatible object store),
//!   for berth-server's blobs in S3.
//!
//! Both send their output to a log file and print its tail when dropped
//! during a panic, so a failing test shows what the server said. The log
//! plumbing shared by both lives here.

mod berth;
mod docker_registry;
mod garage;
mod postgres;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tempfile::TempDir;

pub use berth::{BerthServer, BerthServerBuilder, postgres_by_default};
pub use docker_registry::DockerRegistry;
pub use garage::{GARAGE_VERSION, Garage, S3Target, garage_binary};
pub use postgres::{Postgres, secret_file};

/// How many log lines a panicking test gets to see.
const TAIL_LINES: usize = 50;

/// The log file of one server (across restarts) in a temporary directory
/// that also holds any small files the harness exchanges with the server.
#[derive(Debug)]
struct ProcessLog {
    name: String,
    dir: TempDir,
    path: PathBuf,
}

impl ProcessLog {
    fn new(name: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-run-"))
            .tempdir()
            .context("creating a temp dir for the server log")?;
        let path = dir.path().join(format!("{name}.log"));
        File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(ProcessLog {
            name: name.to_owned(),
            dir,
            path,
        })
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stdout and stderr handles appending to the log, after a banner line
    /// that separates one start from the next.
    fn stdio(&self, banner: &str) -> anyhow::Result<(Stdio, Stdio)> {
        let mut file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening {}", self.path.display()))?;
        writeln!(file, "===== {banner} =====")?;
        let err = file.try_clone()?;
        Ok((Stdio::from(file), Stdio::from(err)))
    }

    fn text(&self) -> String {
        let mut out = Vec::new();
        if let Ok(mut f) = File::open(&self.path) {
            // A log that cannot be read is reported as empty: this runs in
            // error paths that must not fail themselves.
            let _ = f.read_to_end(&mut out);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn tail(&self, lines: usize) -> String {
        let text = self.text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Prints the tail of the log to stderr if the current thread is
    /// panicking; called from the servers' `Drop`.
    fn print_tail_if_panicking(&self) {
        if std::thread::panicking() {
            eprintln!(
                "----- last {TAIL_LINES} lines of the {} log ({}) -----\n{}\n----- end of {} log -----",
                self.name,
                self.path.display(),
                self.tail(TAIL_LINES),
                self.name
            );
        }
    }
}

/// Stops a server that runs under a keeper process (PostgreSQL, Garage):
/// closing the keeper's stdin makes it stop the server and remove the
/// server's directory; this waits for that, then makes sure, and shows the
/// log's tail if the test is panicking. For the servers' `Drop`.
fn stop_kept(
    stdin: Option<std::process::ChildStdin>,
    keeper: Option<Child>,
    root: &Path,
    log: &ProcessLog,
) {
    drop(stdin);
    if let Some(mut keeper) = keeper {
        match wait_timeout(&mut keeper, Duration::from_secs(20)) {
            Ok(Some(_)) => {}
            _ => kill_and_reap(&mut keeper),
        }
    }
    if root.exists() {
        let _ = std::fs::remove_dir_all(root);
    }
    log.print_tail_if_panicking();
}

/// Waits up to `timeout` for `child` to exit.
fn wait_timeout(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if start.elapsed() >= timeout {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills (SIGKILL) and reaps a child; errors are ignored because the child
/// may have exited already and this runs in cleanup paths.
fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Status code of a plain `GET path` over HTTP/1.0, without an HTTP client:
/// usable from synchronous code and outside any async runtime.
fn http_get_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut head = [0u8; 64];
    let mut len = 0;
    // The status line is "HTTP/1.x NNN …": twelve bytes are enough.
    while len < 12 {
        let n = stream.read(&mut head[len..])?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = String::from_utf8_lossy(&head[..len]);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP status line: {line:?}"),
            )
        })
}
