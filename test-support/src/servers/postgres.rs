//! [`Postgres`]: a private PostgreSQL server (Debian's `postgresql`
//! package) on a fresh data directory, an ephemeral port and its own Unix
//! socket directory, for running Berth's stores on PostgreSQL in tests.
//!
//! initdb and postgres refuse to run as root; tests run as root here, so
//! both then run as `nobody` through `setpriv` (util-linux, always present),
//! on a data directory handed to that user.
//!
//! The server is started under a small keeper shell whose stdin is a pipe
//! from the test process: when the test process ends for any reason (the
//! last test finished, a panic, SIGKILL), the pipe closes and the keeper
//! stops PostgreSQL and removes its directory. A [`Postgres::shared`]
//! instance, which lives in a static and is never dropped, is cleaned up
//! that way too.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{ProcessLog, TAIL_LINES};
use crate::net::free_port;
use crate::tools::require_tool;

/// How long PostgreSQL may take to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// The superuser the tests connect as.
const USER: &str = "berth";
/// Its password: the tests connect over TCP with password authentication,
/// as a deployment would.
const PASSWORD: &str = "berth-test-password";

/// Stops PostgreSQL and removes its directory when stdin closes (the test
/// process ended or dropped the handle), or when PostgreSQL exits by itself.
// A non-interactive shell gives background jobs /dev/null as stdin, so the
// watcher reads the keeper's stdin through fd 3.
pub(super) const KEEPER: &str = r#"
exec 3<&0
root="$1"; shift
"$@" &
pid=$!
( cat <&3 >/dev/null; kill -INT "$pid" 2>/dev/null ) &
watcher=$!
exec 3<&-
wait "$pid"
status=$?
kill "$watcher" 2>/dev/null
rm -rf "$root"
exit "$status"
"#;

/// A running private PostgreSQL server; stopped and removed when dropped.
#[derive(Debug)]
pub struct Postgres {
    keeper: Option<Child>,
    stdin: Option<ChildStdin>,
    port: u16,
    root: PathBuf,
    log: ProcessLog,
    psql: PathBuf,
    databases: AtomicU32,
}

/// Runs `cmd` as the unprivileged user when the test runs as root.
fn unprivileged(program: &Path, as_root: Option<(u32, u32)>) -> Command {
    match as_root {
        Some((uid, gid)) => {
            let mut cmd = Command::new("setpriv");
            cmd.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg("--")
                .arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// uid and gid of `nobody` when this process is root (PostgreSQL will not
/// run as root), `None` otherwise.
fn drop_to() -> anyhow::Result<Option<(u32, u32)>> {
    let uid = String::from_utf8(Command::new("id").arg("-u").output()?.stdout)?;
    if uid.trim() != "0" {
        return Ok(None);
    }
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = Command::new("id").args([flag, "nobody"]).output()?;
        if !out.status.success() {
            bail!("PostgreSQL cannot run as root and there is no user `nobody` to run it as");
        }
        Ok(String::from_utf8(out.stdout)?.trim().parse()?)
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

impl Postgres {
    /// Starts a server; panics with the reason (and PostgreSQL's log) if it
    /// cannot, e.g. "initdb is required for this test: apt-get install
    /// postgresql".
    pub fn start() -> Postgres {
        Self::try_start().unwrap_or_else(|e| panic!("PostgreSQL did not start: {e:#}"))
    }

    /// One server for the whole test process, started on first use. Tests
    /// take a database each ([`Postgres::create_database`]).
    pub fn shared() -> &'static Postgres {
        static SHARED: OnceLock<Postgres> = OnceLock::new();
        SHARED.get_or_init(Postgres::start)
    }

    pub fn try_start() -> anyhow::Result<Postgres> {
        // A port taken between choosing and binding makes PostgreSQL exit
        // at once: try again with another.
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once() {
                Ok(pg) => return Ok(pg),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
    }

    fn start_once() -> anyhow::Result<Postgres> {
        let initdb = require_tool("initdb");
        let postgres = require_tool("postgres");
        let psql = require_tool("psql");
        let as_root = drop_to()?;

        // Kept on disk (into_path) because the keeper removes it, after
        // PostgreSQL has stopped.
        let root = tempfile::Builder::new()
            .prefix("berth-postgres-")
            .tempdir()
            .context("creating a temp dir for PostgreSQL")?
            .keep();
        let data = root.join("data");
        let sockets = root.join("sockets");
        std::fs::create_dir(&sockets)?;
        let pwfile = root.join("pwfile");
        std::fs::write(&pwfile, PASSWORD)?;
        if let Some((uid, gid)) = as_root {
            for p in [&root, &sockets, &pwfile] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))
                    .with_context(|| format!("handing {} to nobody", p.display()))?;
            }
        }
        let log = ProcessLog::new("postgres")?;

        let (out, err) = log.stdio("initdb")?;
        let status = unprivileged(&initdb, as_root)
            .arg("-D")
            .arg(&data)
            .args(["-U", USER, "--pwfile"])
            .arg(&pwfile)
            // Password authentication over TCP, as the server would meet it;
            // the private socket trusts its (only) user.
            .args(["--auth-host=scram-sha-256", "--auth-local=trust"])
            .args(["--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .with_context(|| format!("running {}", initdb.display()))?;
        if !status.success() {
            let _ = std::fs::remove_dir_all(&root);
            bail!(
                "initdb failed with {status}; log tail:\n{}",
                log.tail(TAIL_LINES)
            );
        }

        let port = free_port();
        let server = unprivileged(&postgres, as_root);
        let (out, err) = log.stdio(&format!("postgres on port {port}"))?;
        let mut keeper = Command::new("sh");
        keeper
            .arg("-c")
            .arg(KEEPER)
            .arg("keeper")
            .arg(&root)
            .arg(server.get_program())
            .args(server.get_args())
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(&sockets)
            .args(["-c", "listen_addresses=127.0.0.1"])
            // Durability is not under test; speed is welcome.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            // Every test server opens two pools (registry, auth).
            .args(["-c", "max_connections=400"])
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err);
        let mut child = keeper.spawn().context("starting PostgreSQL")?;
        let stdin = child.stdin.take();
        let mut pg = Postgres {
            keeper: Some(child),
            stdin,
            port,
            root,
            log,
            psql,
            databases: AtomicU32::new(0),
        };
        pg.wait_ready()?;
        Ok(pg)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(keeper) = self.keeper.as_mut()
                && let Some(status) = keeper.try_wait()?
            {
                bail!(
                    "PostgreSQL exited during start-up with {status}; log tail:\n{}",
                    self.log.tail(TAIL_LINES)
                );
            }
            if self.psql_command("postgres", "SELECT 1").is_ok() {
                return Ok(());
            }
            if start.elapsed() > STARTUP_TIMEOUT {
                bail!(
                    "PostgreSQL did not accept connections within {STARTUP_TIMEOUT:?}; log tail:\n{}",
                    self.log.tail(TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs one SQL command in `database` as the superuser over TCP.
    pub fn psql_command(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let out = Command::new(&self.psql)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-U", USER, "-d", database])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql)
            .env("PGPASSWORD", PASSWORD)
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.psql.display()))?;
        if !out.status.success() {
            bail!(
                "psql {sql:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn user(&self) -> &'static str {
        USER
    }

    /// The superuser's password (kept out of [`Postgres::url`], as
    /// berth-server takes it from the environment or a file).
    pub fn password(&self) -> &'static str {
        PASSWORD
    }

    /// `postgres://berth@127.0.0.1:PORT/DATABASE`, without the password.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{database}", self.port)
    }

    /// Like [`Postgres::url`] with the password in it.
    pub fn url_with_password(&self, database: &str) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// Creates a fresh, empty database and returns its name: tests sharing
    /// one server never see each other's rows.
    pub fn create_database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("berth_{}_{n}", std::process::id());
        self.psql_command("postgres", &format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("creating database {name}: {e:#}"));
        name
    }

    /// The `BERTH_*` variables that put a `berth-server`'s metadata and
    /// auth store in `database` (the password in `BERTH_METADATA_PASSWORD`).
    pub fn server_env(&self, database: &str) -> Vec<(String, String)> {
        vec![
            ("BERTH_STORAGE__METADATA_URL".to_owned(), self.url(database)),
            (
                "BERTH_METADATA_PASSWORD".to_owned(),
                self.password().to_owned(),
            ),
        ]
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        self.log.text()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        super::stop_kept(self.stdin.take(), self.keeper.take(), &self.root, &self.log);
    }
}

/// Writes `text` to a new file in a fresh temp dir (for `*_file` settings);
/// the directory is returned so that it lives as long as the caller needs.
pub fn secret_file(text: &str) -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("secret");
    let mut f = std::fs::File::create(&path)?;
    f.write_all(text.as_bytes())?;
    Ok((dir, path))
}
