//! [`Garage`]: a private one-node Garage (an S3-compatible object store,
//! <https://garagehq.deuxfleurs.fr>) on a fresh directory and ephemeral
//! ports, for running Berth's S3 blob store in tests.
//!
//! One node, `replication_factor = 1`, `db_engine = "sqlite"`: the recipe
//! of the environment notes. The binary is not a Debian package; it is
//! built once with `cargo install` into a cache directory (`scripts/test`
//! does it) and found through [`garage_binary`].
//!
//! Like [`crate::Postgres`], the server runs under a keeper shell whose
//! stdin is a pipe from the test process: when the test process ends for
//! any reason, Garage is stopped and its directory removed.

use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::postgres::KEEPER;
use super::{ProcessLog, TAIL_LINES};
use crate::net::free_port;

/// The Garage release the tests and `scripts/test` use.
pub const GARAGE_VERSION: &str = "2.5.0";
/// How long Garage may take to start and accept a layout.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// The region Garage's S3 API signs requests for.
const REGION: &str = "garage";

/// Where to reach one test's bucket.
#[derive(Debug, Clone)]
pub struct S3Target {
    pub bucket: String,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    pub region: String,
    pub key_id: String,
    pub secret: String,
}

impl S3Target {
    /// The `BERTH_*` variables that put a `berth-server`'s blobs in this
    /// bucket (the secret in `BERTH_S3_SECRET_ACCESS_KEY`).
    pub fn server_env(&self) -> Vec<(String, String)> {
        [
            ("BERTH_STORAGE__BLOB_URL", format!("s3://{}", self.bucket)),
            ("BERTH_STORAGE__S3_ENDPOINT", self.endpoint.clone()),
            ("BERTH_STORAGE__S3_REGION", self.region.clone()),
            ("BERTH_STORAGE__S3_ACCESS_KEY_ID", self.key_id.clone()),
            ("BERTH_STORAGE__S3_ALLOW_HTTP", "true".to_owned()),
            ("BERTH_S3_SECRET_ACCESS_KEY", self.secret.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// A running private Garage node; stopped and removed when dropped.
#[derive(Debug)]
pub struct Garage {
    keeper: Option<Child>,
    stdin: Option<ChildStdin>,
    binary: PathBuf,
    config: PathBuf,
    root: PathBuf,
    rpc_port: u16,
    s3_port: u16,
    key_id: String,
    secret: String,
    log: ProcessLog,
    buckets: AtomicU32,
}

/// The garage binary: `$BERTH_GARAGE`, else the cache `scripts/test`
/// installs into (`${BERTH_TOOL_CACHE:-/var/cache/berth-tools}/garage-VERSION`),
/// else `garage` on `PATH`. Panics with how to install it when there is
/// none: a missing tool is a broken test machine, never a reason to skip.
pub fn garage_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("BERTH_GARAGE") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return p;
        }
        panic!(
            "BERTH_GARAGE={} does not name a file: point it at a garage {GARAGE_VERSION} binary",
            p.display()
        );
    }
    let cache = std::env::var_os("BERTH_TOOL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/berth-tools"));
    let cached = cache.join(format!("garage-{GARAGE_VERSION}/bin/garage"));
    if cached.is_file() {
        return cached;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("garage");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "garage (the S3 server of the S3 blob store tests) is required for this test: \
         ./scripts/test installs it into {}, or run `cargo install garage --version {GARAGE_VERSION} \
         --locked --no-default-features --features bundled-libs,sqlite --root DIR` \
         and set BERTH_GARAGE=DIR/bin/garage",
        cached.display()
    );
}

impl Garage {
    /// Starts a node; panics with the reason (and Garage's log) if it cannot.
    pub fn start() -> Garage {
        Self::try_start().unwrap_or_else(|e| panic!("Garage did not start: {e:#}"))
    }

    /// One node for the whole test process, started on first use. Tests
    /// take a bucket each ([`Garage::create_bucket`]).
    pub fn shared() -> &'static Garage {
        static SHARED: OnceLock<Garage> = OnceLock::new();
        SHARED.get_or_init(Garage::start)
    }

    pub fn try_start() -> anyhow::Result<Garage> {
        let binary = garage_binary();
        // Ports taken between choosing and binding make Garage exit: try
        // again with others.
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once(&binary) {
                Ok(g) => return Ok(g),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
    }

    fn start_once(binary: &std::path::Path) -> anyhow::Result<Garage> {
        // Kept on disk (keep) because the keeper removes it, after Garage
        // has stopped.
        let root = tempfile::Builder::new()
            .prefix("berth-garage-")
            .tempdir()
            .context("creating a temp dir for Garage")?
            .keep();
        let (rpc, s3, admin) = (free_port(), free_port(), free_port());
        let secret: [u8; 32] = rand_bytes();
        let config = root.join("garage.toml");
        std::fs::write(
            &config,
            format!(
                r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "{token}"
"#,
                meta = root.join("meta").display(),
                data = root.join("data").display(),
                secret = hex::encode(secret),
                token = hex::encode(rand_bytes::<16>()),
            ),
        )?;
        let log = ProcessLog::new("garage")?;
        let (out, err) = log.stdio(&format!("garage server, S3 on port {s3}"))?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(KEEPER)
            .arg("keeper")
            .arg(&root)
            .arg(binary)
            .arg("-c")
            .arg(&config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting Garage")?;
        let stdin = child.stdin.take();
        let mut garage = Garage {
            keeper: Some(child),
            stdin,
            binary: binary.to_owned(),
            config,
            root,
            rpc_port: rpc,
            s3_port: s3,
            key_id: String::new(),
            secret: String::new(),
            log,
            buckets: AtomicU32::new(0),
        };
        garage.set_up()?;
        Ok(garage)
    }

    /// Waits for the node, gives it a layout, and creates the key every
    /// test bucket is opened to.
    fn set_up(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        // The node writes its key, then listens for RPC; `node id` reads the
        // key from disk.
        self.wait_listening(self.rpc_port, start)?;
        let node = self.cli(&["node", "id", "-q"])?;
        // `node id -q` prints `<id>@<addr>`; the layout wants the id.
        let node = node.split('@').next().unwrap_or(&node).trim().to_owned();
        loop {
            if let Some(keeper) = self.keeper.as_mut()
                && let Some(status) = keeper.try_wait()?
            {
                bail!(
                    "Garage exited during start-up with {status}; log tail:\n{}",
                    self.log.tail(TAIL_LINES)
                );
            }
            match self.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]) {
                Ok(_) => break,
                Err(e) if start.elapsed() > STARTUP_TIMEOUT => bail!(
                    "Garage did not answer within {STARTUP_TIMEOUT:?}: {e:#}; log tail:\n{}",
                    self.log.tail(TAIL_LINES)
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        self.cli(&["layout", "apply", "--version", "1"])?;
        let created = self.cli(&["key", "create", "berth-tests"])?;
        let info = self.cli(&["key", "info", "berth-tests", "--show-secret"])?;
        let field = |name: &str| {
            created
                .lines()
                .chain(info.lines())
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_owned())
                })
                .with_context(|| format!("no {name:?} in `garage key info`:\n{info}"))
        };
        self.key_id = field("Key ID")?;
        self.secret = field("Secret key")?;
        self.wait_listening(self.s3_port, start)
    }

    /// Waits until the node accepts connections on `port`.
    fn wait_listening(&mut self, port: u16, start: Instant) -> anyhow::Result<()> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(keeper) = self.keeper.as_mut()
                && let Some(status) = keeper.try_wait()?
            {
                bail!(
                    "Garage exited during start-up with {status}; log tail:\n{}",
                    self.log.tail(TAIL_LINES)
                );
            }
            if start.elapsed() > STARTUP_TIMEOUT {
                bail!(
                    "Garage did not listen on {addr} within {STARTUP_TIMEOUT:?}; log tail:\n{}",
                    self.log.tail(TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Runs `garage -c CONFIG ARGS`; its stdout, or the failure with stderr.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.binary.display()))?;
        if !out.status.success() {
            bail!(
                "garage {} failed with {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `http://127.0.0.1:PORT` of the S3 API.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// A fresh, empty bucket that the test key may read, write and own:
    /// tests sharing one node never see each other's objects.
    pub fn create_bucket(&self) -> S3Target {
        let n = self.buckets.fetch_add(1, Ordering::Relaxed);
        let bucket = format!("berth-{}-{n}", std::process::id());
        let made = self.cli(&["bucket", "create", &bucket]).and_then(|_| {
            self.cli(&[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                &bucket,
                "--key",
                "berth-tests",
            ])
        });
        if let Err(e) = made {
            panic!(
                "creating bucket {bucket}: {e:#}; Garage log tail:\n{}",
                self.log.tail(TAIL_LINES)
            );
        }
        S3Target {
            bucket,
            endpoint: self.endpoint(),
            region: REGION.to_owned(),
            key_id: self.key_id.clone(),
            secret: self.secret.clone(),
        }
    }

    /// The node's log so far.
    pub fn log_text(&self) -> String {
        self.log.text()
    }
}

/// Random bytes for secrets, from the kernel.
fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut out));
    if let Err(e) = filled {
        panic!("reading /dev/urandom: {e}");
    }
    out
}

impl Drop for Garage {
    fn drop(&mut self) {
        super::stop_kept(self.stdin.take(), self.keeper.take(), &self.root, &self.log);
    }
}
