//! berth-agent's figures: pulling and unpacking an image into containerd
//! beside `ctr images pull` of the same image from the same berth-server,
//! the daemon's idle memory, and the size of the stripped binary.
//!
//! Both clients pull from one berth-server with accounts on, over plain
//! HTTP on its registry endpoint: the agent with a pull token bought on the
//! node endpoint (mTLS, its enrolled node certificate), `ctr` with a user's
//! login credential (`--user`: ctr POSTs the OAuth2 password grant). Every
//! timed pull gets a private containerd started for it alone (fresh root,
//! state and socket): content store, snapshots and metadata start empty, so
//! neither client finds anything left by the other (containerd shares
//! content across namespaces, so a fresh namespace alone would not do).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;
use test_support::containerd::Containerd;
use test_support::{BerthServer, Image, OciClient, free_port, multi_layer_image};

use crate::auth::admin_env;
use crate::progress;
use crate::report::median;
use crate::system;

const MIB: usize = 1024 * 1024;
/// The account the bench's node and user belong to.
const NAMESPACE: &str = "bench.local";
/// The containerd namespace of every pull (each in its own containerd).
const CTRD_NAMESPACE: &str = "bench";
/// How long the daemon must have been up, and quiet, before its memory is
/// read.
const IDLE_WAIT: Duration = Duration::from_secs(5);

/// Environment of berth-server and of its admin CLI, which must read the
/// same configuration as the server it administers.
fn server_env() -> [(&'static str, &'static str); 2] {
    [
        ("BERTH_AUTH__ENABLED", "true"),
        ("BERTH_NODES__LISTEN", "127.0.0.1:0"),
    ]
}

/// berth-server with accounts on, a node endpoint, one account with a
/// developer user (for ctr and the pushes) and an enrolled node (for the
/// agent).
pub struct Setup {
    server: BerthServer,
    agent_binary: PathBuf,
    node_addr: String,
    node_dir: PathBuf,
    user: String,
    secret: String,
    /// Node files and agent configurations; removed on drop.
    files: TempDir,
}

impl Setup {
    pub fn start(server_binary: &Path, agent_binary: &Path) -> anyhow::Result<Setup> {
        let files = tempfile::Builder::new()
            .prefix("berth-bench-agent-")
            .tempdir()
            .context("creating the agent bench's temp dir")?;
        let node_addr_file = files.path().join("node-addr");
        let mut builder = BerthServer::builder()
            .binary(server_binary)
            .arg("--node-addr-file")
            .arg(&node_addr_file);
        for (k, v) in server_env() {
            builder = builder.env(k, v);
        }
        let server = builder
            .try_start()
            .context("starting berth-server with accounts on")?;
        // Written before the main address, which try_start waited for.
        let node_addr = std::fs::read_to_string(&node_addr_file)
            .context("reading the node endpoint's address")?
            .trim()
            .to_owned();
        let dir = server.data_dir().to_path_buf();
        let env = server_env();
        admin_env(
            server_binary,
            &dir,
            &["account", "create", "bench", "--namespace", NAMESPACE],
            &env,
        )?;
        let user = "bench-puller";
        admin_env(
            server_binary,
            &dir,
            &[
                "user",
                "create",
                user,
                "--account",
                "bench",
                "--role",
                "developer",
            ],
            &env,
        )?;
        let minted = admin_env(server_binary, &dir, &["credential", "mint", user], &env)?;
        let secret = minted["secret"]
            .as_str()
            .context("no secret in the minted credential")?
            .to_owned();
        let node_dir = files.path().join("node");
        let node_dir_s = node_dir.display().to_string();
        admin_env(
            server_binary,
            &dir,
            &[
                "node",
                "enroll",
                "bench-node",
                "--account",
                "bench",
                "--out",
                &node_dir_s,
            ],
            &env,
        )?;
        for f in ["node.crt", "node.key", "ca.crt"] {
            ensure!(
                node_dir.join(f).is_file(),
                "node enroll wrote no {f} into {node_dir_s}"
            );
        }
        Ok(Setup {
            server,
            agent_binary: agent_binary.to_path_buf(),
            node_addr,
            node_dir,
            user: user.to_owned(),
            secret,
            files,
        })
    }

    pub fn server_pid(&self) -> u32 {
        self.server.pid()
    }

    pub fn server_log(&self) -> String {
        self.server.log_text()
    }

    /// `host:port` of the registry endpoint: the first part of image names.
    fn host(&self) -> String {
        self.server.host()
    }

    /// Pushes `image` to `repo:tag` as the bench user.
    async fn push(&self, repo: &str, image: &Image, tag: &str) -> anyhow::Result<()> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        let url = format!(
            "{}/auth/token?service=berth-registry&scope=repository:{repo}:pull,push",
            self.server.url()
        );
        let resp = http
            .get(&url)
            .basic_auth(&self.user, Some(&self.secret))
            .send()
            .await
            .context("token request")?;
        ensure!(
            resp.status() == StatusCode::OK,
            "the token endpoint answered {}",
            resp.status()
        );
        let body: Value = resp.json().await.context("token answer")?;
        let token = body["token"].as_str().context("no token in the answer")?;
        OciClient::with_http_client(&self.server.url(), http)
            .bearer_token(token)
            .push_image(repo, image, tag)
            .await
            .with_context(|| format!("pushing {repo}:{tag}"))
    }

    /// The agent's configuration against `ctrd`, written into `dir`. Pull
    /// settings are the agent's defaults (`BERTH_AGENT_PULL__*` in the
    /// bench's environment overrides them, as on a node).
    fn agent_config(
        &self,
        ctrd: &Containerd,
        dir: &Path,
        metrics_port: u16,
    ) -> anyhow::Result<PathBuf> {
        let toml = format!(
            r#"data_dir = "{data}"
metrics_listen = "127.0.0.1:{metrics_port}"

[registry]
url = "{url}"
namespace = "{NAMESPACE}"

[node]
auth_url = "https://{node_addr}"
cert_file = "{node_dir}/node.crt"
key_file = "{node_dir}/node.key"
ca_file = "{node_dir}/ca.crt"

[containerd]
socket = "{socket}"
namespace = "{ns}"
snapshotter = "overlayfs"
root = "{root}"

[log]
level = "info"
"#,
            data = dir.join("agent-data").display(),
            url = self.server.url(),
            node_addr = self.node_addr,
            node_dir = self.node_dir.display(),
            socket = ctrd.socket().display(),
            ns = ctrd.namespace(),
            root = ctrd.root().display(),
        );
        let path = dir.join("agent.toml");
        std::fs::write(&path, toml).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    fn agent(&self, config: &Path) -> Command {
        let mut cmd = Command::new(&self.agent_binary);
        cmd.arg("--config")
            .arg(config)
            // A RUST_LOG meant for something else must not turn on debug
            // logging inside a timed pull.
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    /// The agent's effective pull settings (`validate --json`), for the
    /// notes.
    fn agent_pull_settings(&self, ctrd: &Containerd, dir: &Path) -> anyhow::Result<Value> {
        let config = self.agent_config(ctrd, dir, 0)?;
        let out = run_checked(self.agent(&config).args(["validate", "--json"]))?;
        let v: Value =
            serde_json::from_slice(&out.stdout).context("parsing berth-agent validate --json")?;
        Ok(v["pull"].clone())
    }
}

/// One of the two images of the pull measurement.
struct BenchImage {
    label: String,
    repo: String,
    manifest_digest: String,
    layers: usize,
    bytes: u64,
}

impl BenchImage {
    /// The short name the agent resolves into the account's namespace.
    fn short(&self) -> String {
        let repo = self
            .repo
            .trim_start_matches(NAMESPACE)
            .trim_start_matches('/');
        format!("{repo}:v1")
    }

    /// The full reference, which is also containerd's image name.
    fn full(&self, host: &str) -> String {
        format!("{host}/{}:v1", self.repo)
    }
}

/// Builds and pushes `layers` layers of `layer_mib` MiB of random data
/// (stored gzip: random data does not compress), then drops the bytes.
async fn push_image(
    setup: &Setup,
    repo: &str,
    layers: usize,
    layer_mib: usize,
    seed: u64,
) -> anyhow::Result<BenchImage> {
    let image =
        tokio::task::spawn_blocking(move || multi_layer_image(layers, layer_mib * MIB, seed))
            .await
            .context("building the image")?;
    setup.push(repo, &image, "v1").await?;
    Ok(BenchImage {
        label: format!("{layers} x {layer_mib} MiB"),
        repo: repo.to_owned(),
        manifest_digest: image.digest.clone(),
        layers,
        bytes: image.layers.iter().map(|l| l.size()).sum(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Agent,
    Ctr,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Agent => "berth-agent",
            Side::Ctr => "ctr",
        }
    }
}

/// One pull: wall time, CPU of the client process, CPU of containerd, and
/// for ctr the unpack time it prints itself.
#[derive(Debug, Clone, Copy)]
struct PullSample {
    wall: Duration,
    client_cpu: Duration,
    containerd_cpu: Duration,
    ctr_unpack: Option<Duration>,
}

/// The unpack time `ctr images pull` prints after fetching everything
/// (`unpacking linux/amd64 sha256:…` then `done: 638.10ms`): ctr 1.6 fetches
/// all blobs first, then unpacks.
fn ctr_unpack_time(stdout: &str) -> Option<Duration> {
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("done: "))?;
    parse_go_duration(line.trim())
}

/// Go's `time.Duration` text for what a pull can take: `638.1ms`, `1.5s`,
/// `1m2.5s`, `950µs`.
fn parse_go_duration(s: &str) -> Option<Duration> {
    let (minutes, rest) = match s.split_once('m') {
        Some((m, rest)) if !rest.starts_with('s') && !m.is_empty() => {
            (m.parse::<f64>().ok()?, rest)
        }
        _ => (0.0, s),
    };
    let secs = if rest.is_empty() {
        0.0
    } else if let Some(v) = rest.strip_suffix("ms") {
        v.parse::<f64>().ok()? / 1e3
    } else if let Some(v) = rest.strip_suffix("µs").or_else(|| rest.strip_suffix("us")) {
        v.parse::<f64>().ok()? / 1e6
    } else if let Some(v) = rest.strip_suffix("ns") {
        v.parse::<f64>().ok()? / 1e9
    } else {
        rest.strip_suffix('s')?.parse::<f64>().ok()?
    };
    Some(Duration::from_secs_f64(minutes * 60.0 + secs))
}

/// Runs `cmd` to its end; fails with its output unless it succeeded.
fn run_checked(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}:\nstderr: {}\nstdout: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(out)
}

/// CPU time (user + system) of every child of this process waited for so
/// far: `cutime` + `cstime` of `/proc/self/stat`. The only child reaped
/// during a timed pull is the client (containerd is reaped later), so the
/// difference across a pull is the client's CPU time.
fn children_cpu() -> anyhow::Result<Duration> {
    let text = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    system::children_cpu_time(&text).context("parsing /proc/self/stat")
}

/// One timed pull of `image` by `side` into a containerd of its own.
fn timed_pull(
    setup: &Setup,
    image: &BenchImage,
    side: Side,
    scratch: &Path,
) -> anyhow::Result<PullSample> {
    let mut ctrd = Containerd::try_start().context("starting a private containerd")?;
    ctrd.set_namespace(CTRD_NAMESPACE);
    // The daemon's first answers (namespace, metadata, snapshotter) are
    // paid here, outside the clock, for both clients alike.
    ctrd.run_ctr(["images", "ls"])?;
    ctrd.run_ctr(["snapshots", "ls"])?;
    let host = setup.host();
    let full = image.full(&host);
    let mut cmd = match side {
        Side::Agent => {
            // A fresh data dir too: nothing of an earlier pull may help.
            let dir = tempfile::Builder::new()
                .prefix("agent-")
                .tempdir_in(scratch)
                .context("creating the agent's data dir")?
                .keep();
            let config = setup.agent_config(&ctrd, &dir, 0)?;
            let mut cmd = setup.agent(&config);
            cmd.args(["pull", "--json", &image.short()]);
            cmd
        }
        Side::Ctr => {
            let mut cmd = ctrd.ctr();
            cmd.args([
                "images",
                "pull",
                "--plain-http",
                "--user",
                &format!("{}:{}", setup.user, setup.secret),
                &full,
            ]);
            cmd
        }
    };
    // The previous pull's writes (and the removal of its containerd) must
    // not be flushed inside this one.
    system::sync()?;
    let ctrd_cpu = system::cpu_time(ctrd.pid())?;
    let client_cpu = children_cpu()?;
    let started = Instant::now();
    let out = run_checked(&mut cmd)?;
    let wall = started.elapsed();
    let client_cpu = children_cpu()?.saturating_sub(client_cpu);
    let containerd_cpu = system::cpu_time(ctrd.pid())?.saturating_sub(ctrd_cpu);

    // What each pull left must be the whole image, unpacked.
    let ctr_unpack = match side {
        Side::Ctr => ctr_unpack_time(&String::from_utf8_lossy(&out.stdout)),
        Side::Agent => None,
    };
    if side == Side::Agent {
        let pulled: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("parsing berth-agent pull --json: {:?}", out.stdout))?;
        ensure!(
            pulled["downloaded"].as_u64() == Some(image.bytes),
            "berth-agent downloaded {} bytes of a {}-byte image: it must start empty",
            pulled["downloaded"],
            image.bytes
        );
    }
    let listed = ctrd
        .images()?
        .into_iter()
        .find(|(name, _)| *name == full)
        .map(|(_, digest)| digest);
    ensure!(
        listed.as_deref() == Some(image.manifest_digest.as_str()),
        "after {}'s pull, ctr images ls lists {full} as {listed:?}, expected {}",
        side.name(),
        image.manifest_digest
    );
    let snapshots = ctrd.run_ctr(["snapshots", "ls"])?;
    let committed = snapshots
        .lines()
        // KEY [PARENT] KIND: the first layer's snapshot has no parent.
        .filter(|l| l.split_whitespace().last() == Some("Committed"))
        .count();
    ensure!(
        committed == image.layers,
        "after {}'s pull, containerd holds {committed} committed snapshots for {} layers:\n{snapshots}",
        side.name(),
        image.layers
    );
    ctrd.stop();
    Ok(PullSample {
        wall,
        client_cpu,
        containerd_cpu,
        ctr_unpack,
    })
}

/// The pull figures of one image.
pub struct PullFigures {
    pub label: String,
    pub layers: usize,
    pub bytes: u64,
    /// Seconds per timed pull.
    pub agent: Vec<f64>,
    pub ctr: Vec<f64>,
    pub note: String,
}

/// The pull measurement: both images, one untimed pull of each by each
/// client first (it checks the set-up and warms the registry's page cache
/// and both binaries), then `runs` timed rounds, alternating which client
/// goes first.
pub async fn pull(
    setup: &Setup,
    runs: u32,
    quick: bool,
) -> anyhow::Result<(Vec<PullFigures>, String)> {
    let (many, one) = if quick { (8, 40) } else { (50, 250) };
    progress::line(format!(
        "agent-pull: pushing a 5 x {many} MiB and a 1 x {one} MiB image"
    ));
    let images = [
        push_image(
            setup,
            &format!("{NAMESPACE}/agent/five"),
            5,
            many,
            0xA6E7_0005,
        )
        .await?,
        push_image(
            setup,
            &format!("{NAMESPACE}/agent/one"),
            1,
            one,
            0xA6E7_0001,
        )
        .await?,
    ];
    let scratch = tempfile::Builder::new()
        .prefix("pull-")
        .tempdir_in(setup.files.path())
        .context("creating the agent's scratch dir")?;

    let settings = {
        let ctrd = Containerd::try_start().context("starting a private containerd")?;
        setup.agent_pull_settings(&ctrd, scratch.path())?
    };
    let sides = [Side::Agent, Side::Ctr];
    for image in &images {
        for side in sides {
            progress::line(format!("  warm-up: {} pulls {}", side.name(), image.label));
            timed_pull(setup, image, side, scratch.path())
                .with_context(|| format!("warm-up pull of {} by {}", image.label, side.name()))?;
        }
    }

    let mut samples: Vec<[Vec<PullSample>; 2]> = images.iter().map(|_| [vec![], vec![]]).collect();
    for run in 0..runs {
        let order = if run % 2 == 0 {
            [Side::Agent, Side::Ctr]
        } else {
            [Side::Ctr, Side::Agent]
        };
        for (i, image) in images.iter().enumerate() {
            for side in order {
                let s = timed_pull(setup, image, side, scratch.path()).with_context(|| {
                    format!(
                        "run {} of {}: {} pulling {}",
                        run + 1,
                        runs,
                        side.name(),
                        image.label
                    )
                })?;
                progress::line(format!(
                    "  run {}/{runs}: {} {}: {:.2} s",
                    run + 1,
                    side.name(),
                    image.label,
                    s.wall.as_secs_f64()
                ));
                samples[i][usize::from(side == Side::Ctr)].push(s);
            }
        }
    }

    let mut figures = Vec::new();
    for (image, [agent, ctr]) in images.iter().zip(samples) {
        let secs = |v: &[PullSample], f: fn(&PullSample) -> Duration| -> Vec<f64> {
            v.iter().map(|s| f(s).as_secs_f64()).collect()
        };
        let (aw, cw) = (secs(&agent, |s| s.wall), secs(&ctr, |s| s.wall));
        let mb = image.bytes as f64 / 1e6;
        let ctr_unpack: Vec<f64> = ctr
            .iter()
            .filter_map(|s| s.ctr_unpack.map(|d| d.as_secs_f64()))
            .collect();
        let ctr_split = if ctr_unpack.is_empty() {
            String::new()
        } else {
            format!(
                "; ctr's own split (it fetches everything, then unpacks): unpack median {:.2} s",
                median(&ctr_unpack)
            )
        };
        let note = format!(
            "agent-pull {}: median wall berth-agent {:.2} s ({:.0} MB/s), ctr {:.2} s ({:.0} MB/s); \
             median CPU (user+sys) of the client process: berth-agent {:.2} s, ctr {:.2} s; of \
             containerd during the pull: with berth-agent {:.2} s, with ctr {:.2} s{ctr_split}",
            image.label,
            median(&aw),
            mb / median(&aw),
            median(&cw),
            mb / median(&cw),
            median(&secs(&agent, |s| s.client_cpu)),
            median(&secs(&ctr, |s| s.client_cpu)),
            median(&secs(&agent, |s| s.containerd_cpu)),
            median(&secs(&ctr, |s| s.containerd_cpu)),
        );
        figures.push(PullFigures {
            label: image.label.clone(),
            layers: image.layers,
            bytes: image.bytes,
            agent: aw,
            ctr: cw,
            note,
        });
    }
    let settings_note = format!(
        "agent-pull: berth-agent's pull settings (its defaults unless BERTH_AGENT_PULL__* is set): \
         max_parallel_layers {}, unpack by {}, bandwidth limit {}; ctr images pull with its \
         defaults (--max-concurrent-downloads 0: every layer at once; Diff.Apply)",
        settings["max_parallel_layers"],
        settings["unpack"].as_str().unwrap_or("?"),
        match &settings["bandwidth_limit_bytes_per_sec"] {
            Value::Null => "none".to_owned(),
            v => v.to_string(),
        }
    );
    Ok((figures, settings_note))
}

/// The daemon's memory once idle.
#[derive(Debug, Clone, Copy)]
pub struct IdleMemory {
    pub rss: u64,
    pub hwm: u64,
    /// CPU the daemon used while it was watched idle.
    pub idle_cpu: Duration,
    pub watched: Duration,
}

/// `berth-agent daemon` against a private containerd and the bench's
/// berth-server, read after [`IDLE_WAIT`] without anything to do.
pub async fn idle_rss(setup: &Setup) -> anyhow::Result<IdleMemory> {
    let ctrd = Containerd::try_start().context("starting a private containerd")?;
    let dir = tempfile::Builder::new()
        .prefix("daemon-")
        .tempdir_in(setup.files.path())
        .context("creating the daemon's dir")?;
    let port = free_port();
    let config = setup.agent_config(&ctrd, dir.path(), port)?;
    let log_path = dir.path().join("daemon.log");
    let log = std::fs::File::create(&log_path).context("creating the daemon's log")?;
    let child = setup
        .agent(&config)
        .arg("daemon")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting berth-agent daemon")?;
    let mut daemon = Daemon(child);
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let http = reqwest::Client::builder().no_proxy().build()?;
    let started = Instant::now();
    loop {
        if let Some(status) = daemon.0.try_wait()? {
            bail!("berth-agent daemon exited with {status}:\n{}", log_text());
        }
        let healthy = http
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK);
        if healthy {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "berth-agent daemon did not answer /healthz within 30 s:\n{}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = daemon.0.id();
    let cpu_before = system::cpu_time(pid)?;
    tokio::time::sleep(IDLE_WAIT).await;
    if let Some(status) = daemon.0.try_wait()? {
        bail!("berth-agent daemon exited with {status}:\n{}", log_text());
    }
    let rss = system::proc_status_bytes(pid, "VmRSS")?;
    let hwm = system::proc_status_bytes(pid, "VmHWM")?;
    let idle_cpu = system::cpu_time(pid)?.saturating_sub(cpu_before);
    drop(daemon);
    drop(ctrd);
    Ok(IdleMemory {
        rss,
        hwm,
        idle_cpu,
        watched: IDLE_WAIT,
    })
}

/// The daemon, killed when dropped: it runs no container here, so there is
/// nothing a graceful stop would protect.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sizes of the agent binary as built and stripped (`strip` on a copy).
pub fn binary_sizes(agent_binary: &Path) -> anyhow::Result<(u64, u64)> {
    let strip = test_support::tools::find_tool("strip")
        .context("strip is required for agent-size: apt-get install binutils")?;
    let dir = tempfile::Builder::new()
        .prefix("berth-bench-strip-")
        .tempdir()
        .context("creating a temp dir")?;
    let copy = dir.path().join("berth-agent");
    std::fs::copy(agent_binary, &copy)
        .with_context(|| format!("copying {}", agent_binary.display()))?;
    let built = std::fs::metadata(agent_binary)?.len();
    run_checked(Command::new(strip).arg(&copy))?;
    let stripped = std::fs::metadata(&copy)?.len();
    Ok((built, stripped))
}

/// `/proc/loadavg`'s three averages, for the notes.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Bytes → MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ctr_unpack_time() {
        let out = "elapsed: 2.1 s   total: 250.0 M (119.0 MiB/s)\n\
                   unpacking linux/amd64 sha256:0123...\n\
                   done: 638.102235ms\n";
        let unpack = ctr_unpack_time(out).expect("parsed").as_secs_f64();
        assert!((unpack - 0.638_102_235).abs() < 1e-9, "{unpack}");
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(
            parse_go_duration("1m2.5s"),
            Some(Duration::from_millis(62_500))
        );
        assert_eq!(parse_go_duration("950µs"), Some(Duration::from_micros(950)));
        assert_eq!(ctr_unpack_time("no unpack here"), None);
    }
}
