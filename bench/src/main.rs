//! `berth-bench`: runs `berth-server` (embedded default) and Debian's
//! `docker-registry` (CNCF distribution 2.8) side by side in one run, drives
//! both with the same client code and the same data, and prints each figure
//! for both, their ratio, and whether the target from the issue is met.
//!
//! Needs the release `berth-server` (and `berth-agent` for the agent
//! figures): `cargo build --release --bins`, then
//! `cargo run --release -p bench --bin berth-bench -- [options]`. The
//! binaries are looked up beside `berth-bench` (same target directory and
//! profile) or in `BERTH_BIN_DIR`. `--help` explains every measurement.
//!
//! Modules: [`blobs`] (push, pull, peak RSS), [`manifests`] (manifest GET
//! and PUT, tag and catalog listings), [`agent`] (berth-agent beside `ctr
//! images pull`, its idle RSS and size), [`system`] (dd, /proc, wrk output),
//! [`registries`] (the two servers as the measurements see them and shared
//! HTTP checks), [`report`] (table and JSON), [`progress`] (stderr).

mod agent;
mod auth;
mod blobs;
mod control;
mod manifests;
mod portal;
mod progress;
mod registries;
mod report;
mod scaleout;
mod system;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, ensure};
use clap::{Parser, ValueEnum};
use reqwest::StatusCode;
use test_support::tools::find_tool;
use test_support::{BerthServer, DockerRegistry};

use blobs::PushKind;
use manifests::WrkParams;
use registries::{Registry, expect};
use report::{Better, Report, Row, Target, median};

const MIB: usize = 1024 * 1024;

const LONG_ABOUT: &str = "\
Runs berth-server (embedded default: SQLite metadata and filesystem blobs in
a fresh temporary data dir) and Debian's docker-registry (distribution 2.8,
filesystem driver, fresh temporary root) side by side, drives both with the
same client code and the same data (one warm-up each), and prints every
figure for both, the ratio berth/distribution, which way is better, the
target from the issue and whether it is met. Any non-2xx answer aborts the
run with the registry's error. Progress goes to stderr, results to stdout.

Build first: cargo build --release --bins (berth-server and berth-agent are
looked up beside this binary, or in BERTH_BIN_DIR). MB means 10^6 bytes, as
dd prints it.

Measurements (names for --only):

  dd            The machine's own write rate: dd if=/dev/zero bs=1M count=256
                conv=fdatasync into a file on the filesystem holding both data
                dirs (median of --runs). Run automatically with the pushes,
                whose rates are also shown as a percentage of it.
  push          Monolithic push: POST an upload, then one PUT ?digest= with a
                256 MiB body (distribution answers 202 to POST ?digest=, so
                both get the two-request form). A fresh random blob per run
                (same bytes to both, never deduplicated); `sync` before each
                timed push; the clock runs from the POST to the 201. Median
                MB/s of --runs. Target: >= 1.3x distribution and >= 80 % of dd.
  push-chunked  Chunked push of a fresh 256 MiB blob: POST, 16 MiB PATCHes with
                Content-Range, empty PUT ?digest=. Same rules and targets.
  pull          4 concurrent GETs of 4 different 256 MiB blobs (page cache
                warm), MB/s over the wall time until the last body ends, bytes
                counted. The sha256 of everything received is verified once
                per registry before the timed runs (that run also warms the
                cache); timed runs do not hash, so that client CPU is not the
                bottleneck. Median of --runs. Target: >= 1.0x.
  manifest-get  wrk -t2 -c32 -d10s --latency on GET /v2/<repo>/manifests/<tag>
                with Accept: the OCI manifest type, after one checked GET and a
                1 s warm-up. Requests/s (target >= 5x) and p99 latency.
  manifest-put  2000 PUTs of distinct manifests (one annotation differs), each
                under its own tag, 8 in flight, all over the same config and
                layer pushed beforehand; 50 warm-up PUTs first. PUT/s (target
                >= 2x) and p99 latency.
  tags          A full tag listing of a repository with 10,000 tags: GET
                /v2/<repo>/tags/list following Link headers, every page parsed
                and counted. Set-up (16 concurrent tag PUTs) is not timed. One
                warm-up, median ms of max(--runs, 21). Target: 3x faster.
  catalog       A full catalog listing with 10,000 repositories (each created
                by pushing one tiny blob, 16 concurrently, not timed): GET
                /v2/_catalog?n=N following Link headers until done, N being the
                largest page each accepts (berth 10000; distribution 1000, its
                catalog.maxentries: it refuses n=10000 with 400). Median ms of
                max(--runs, 5). Target: 3x faster.
  rss           Peak RSS (VmHWM from /proc/<pid>/status, reset through
                /proc/<pid>/clear_refs just before; VmRSS sampled every 50 ms
                if that is higher) of each server while a 2 GiB blob is pushed
                with one streamed PUT, generated on the fly 1 MiB at a time.
                Target: berth under 64 MiB; distribution's is shown.
  auth          What accounts cost, on two fresh berth-servers (distribution has
                no token server of its own): token grants per second (GET
                /auth/token with Basic credentials, 8 in flight; the first
                grant pays argon2, the rest reuse the verified credential), and
                manifest GETs per second with a bearer token (wrk as in
                manifest-get) beside the same GETs with accounts off. Target:
                auth costs under 10 % (with/without >= 0.9x). The berth column
                holds accounts-on figures, the distribution column the
                accounts-off figure of berth.
  portal        The portal with 10,000 repositories in one namespace, on a
                berth-server with accounts on, signed in through the sign-in
                form: median and p99 of 200 sequential GETs of the Repositories
                page (first page, filtered, mid-list), a repository page, and
                the same through the management API. Target: p99 under 50 ms.
                Distribution has no portal: berth's figures only.
  scale-out     berth-server on its scale-out engines: PostgreSQL metadata and
                blobs in Garage (S3), private servers started for the run. The
                push (monolithic), pull and manifest-get measurements above
                again, with one replica (distribution straight, as above), then
                with two replicas behind a round-robin HTTP proxy that sends each
                request to the next replica (distribution behind the same proxy,
                one backend, so both columns pay the hop). Informational: the
                embedded default's figures are the push, pull and manifest-get
                rows; add them to --only to have all in one run. Needs Garage
                (BERTH_GARAGE, or the cache scripts/test fills) and PostgreSQL.
  control       The control plane, on a berth-server with accounts on: 200
                nodes enrolled with `admin node enroll` and connected from
                this process as stand-in agents (the real client library:
                mTLS with each node's certificate, heartbeats every 2 s,
                reports; no containerd). Server VmRSS with no node connected
                (after one came and went) and with all 200 idle for 6 s: the
                difference per node. Then 200 commands (list-images, one node
                after the other) POSTed by a developer through the
                management API, each polled every 2 ms until `succeeded`:
                median and p99 round trip. berth's figures only
                (distribution has no control plane); no target.
  agent-pull    berth-agent beside ctr (containerd 1.6's `ctr images pull`),
                both pulling by tag and unpacking into containerd (overlayfs)
                the same two images from one berth-server (accounts on): 5
                gzip layers of 50 MiB random data, and 1 layer of 250 MiB.
                Transport, as close as the two clients allow: both fetch
                manifests and blobs over plain HTTP from the registry
                endpoint on 127.0.0.1; berth-agent buys its pull token on the
                node endpoint (mTLS, a node enrolled with `admin node enroll`)
                with its default pull settings (max_parallel_layers 3;
                BERTH_AGENT_PULL__* in the environment overrides them), ctr
                uses `--plain-http --user USER:CREDENTIAL` (it POSTs the OAuth2
                password grant) with its defaults (all layers at once). Every
                timed pull runs against a private containerd started for it
                alone (own root, state and socket; a fresh namespace would not
                do: containerd shares content across namespaces), so both
                start from an empty content store and snapshotter; `sync`
                before each. One untimed pull of each image by each client
                first (checks the set-up, warms the registry's page cache and
                both binaries); then max(--runs, 5) rounds, alternating which
                client goes first. The clock runs from spawning the client to
                its exit (process start, token, manifest, blobs, unpack, image
                record). After each pull the image record and one committed
                snapshot per layer are checked. Median seconds; ratio
                agent/ctr. Targets: <= 0.7x on 5 layers, <= 1.0x on 1 layer.
                The notes give each side's client and containerd CPU time.
  agent-rss     `berth-agent daemon` (this build) with a valid configuration
                against a private containerd and the bench's berth-server,
                nothing defined (no pull runs): VmRSS from /proc/<pid>/status
                5 s after its /healthz first answers (VmHWM in the notes).
                Target: <= 15 MiB.
  agent-size    The size of berth-agent after `strip` of a copy (binutils), as
                it ships: the `appliance` profile's build (LTO, one codegen
                unit; target/appliance/berth-agent, made by `cargo build
                --profile appliance -p agent`, which packaging/build-debs uses).
                Target: <= 15 MiB. This build's (release profile) size is in
                the notes.

--quick shrinks everything for smoke tests: 32 MiB blobs, 1000 tags and
repositories, a 256 MiB big blob, 500 manifest PUTs, 3 s of wrk, agent images
of 5 x 8 MiB and 1 x 40 MiB.

Beside the wall-clock figures, the notes give each server's CPU time (user +
system, from /proc/<pid>/stat) per operation in the timed runs: on a shared,
busy machine it is the steadier comparison.";

/// The measurements, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Measure {
    Dd,
    Push,
    PushChunked,
    Pull,
    ManifestGet,
    ManifestPut,
    Tags,
    Catalog,
    Rss,
    Auth,
    Portal,
    ScaleOut,
    Control,
    AgentPull,
    AgentRss,
    AgentSize,
}

impl Measure {
    fn name(self) -> &'static str {
        match self {
            Measure::Dd => "dd",
            Measure::Push => "push",
            Measure::PushChunked => "push-chunked",
            Measure::Pull => "pull",
            Measure::ManifestGet => "manifest-get",
            Measure::ManifestPut => "manifest-put",
            Measure::Tags => "tags",
            Measure::Catalog => "catalog",
            Measure::Rss => "rss",
            Measure::Auth => "auth",
            Measure::Portal => "portal",
            Measure::ScaleOut => "scale-out",
            Measure::Control => "control",
            Measure::AgentPull => "agent-pull",
            Measure::AgentRss => "agent-rss",
            Measure::AgentSize => "agent-size",
        }
    }

    fn is_agent(self) -> bool {
        matches!(
            self,
            Measure::AgentPull | Measure::AgentRss | Measure::AgentSize
        )
    }
}

/// berth-server against distribution 2.8, side by side.
#[derive(Parser, Debug)]
#[command(name = "berth-bench", long_about = LONG_ABOUT)]
struct Cli {
    /// Timed runs per throughput figure; the median is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Run only these measurements (comma-separated; see the list above).
    /// `dd` is added whenever a push is measured.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "NAME,...")]
    only: Vec<Measure>,
    /// Print the results as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Smaller sizes for smoke testing (32 MiB blobs, 1000 tags and
    /// repositories, a 256 MiB big blob, 3 s of wrk).
    #[arg(long)]
    quick: bool,
    /// Seconds of each measured wrk run (default 10, 3 with --quick).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u32).range(1..))]
    wrk_duration: Option<u32>,
}

/// The sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    blob: usize,
    chunk: usize,
    pull_blobs: usize,
    dd_mib: u64,
    manifest_puts: usize,
    put_concurrency: usize,
    tags: usize,
    repos: usize,
    big_blob: u64,
    wrk: WrkParams,
}

impl Sizes {
    fn new(cli: &Cli) -> Sizes {
        let quick = cli.quick;
        Sizes {
            blob: if quick { 32 * MIB } else { 256 * MIB },
            chunk: 16 * MIB,
            pull_blobs: 4,
            dd_mib: if quick { 32 } else { 256 },
            manifest_puts: if quick { 500 } else { 2000 },
            put_concurrency: 8,
            tags: if quick { 1000 } else { 10_000 },
            repos: if quick { 1000 } else { 10_000 },
            big_blob: if quick { 256 << 20 } else { 2 << 30 },
            wrk: WrkParams {
                threads: 2,
                connections: 32,
                secs: cli.wrk_duration.unwrap_or(if quick { 3 } else { 10 }),
            },
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `berth-server` beside this executable (same target dir and profile), or
/// in `BERTH_BIN_DIR`.
fn berth_binary() -> anyhow::Result<PathBuf> {
    workspace_binary("berth-server")
}

/// A binary of this workspace beside this executable, or in `BERTH_BIN_DIR`.
fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let (dir, origin) = match std::env::var_os("BERTH_BIN_DIR") {
        Some(dir) => (PathBuf::from(dir), "BERTH_BIN_DIR"),
        None => {
            let exe = std::env::current_exe().context("locating berth-bench itself")?;
            let mut dir = exe
                .parent()
                .context("berth-bench has no parent directory")?
                .to_path_buf();
            // A test harness runs from target/<profile>/deps.
            if dir.ends_with("deps") {
                dir.pop();
            }
            (dir, "berth-bench's own directory")
        }
    };
    let path = dir.join(name);
    ensure!(
        path.is_file(),
        "{name} not found at {} (from {origin}): run `cargo build --release --bins` \
         first, or set BERTH_BIN_DIR to the directory holding it",
        path.display()
    );
    Ok(path)
}

fn log_tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let mut selected: Vec<Measure> = if cli.only.is_empty() {
        Measure::value_variants().to_vec()
    } else {
        cli.only.clone()
    };
    if selected.contains(&Measure::Push) || selected.contains(&Measure::PushChunked) {
        selected.push(Measure::Dd);
    }
    selected.sort();
    selected.dedup();
    let sizes = Sizes::new(cli);

    // Fail before anything slow when a tool is missing.
    for (tool, package) in [
        ("docker-registry", "docker-registry"),
        ("dd", "coreutils"),
        ("sync", "coreutils"),
    ] {
        find_tool(tool)
            .with_context(|| format!("{tool} is required: apt-get install {package}"))?;
    }
    if selected.contains(&Measure::ManifestGet) {
        find_tool("wrk").context("wrk is required for manifest-get: apt-get install wrk")?;
    }
    if selected.contains(&Measure::AgentPull) || selected.contains(&Measure::AgentRss) {
        for (tool, package) in [
            ("containerd", "containerd"),
            ("ctr", "containerd"),
            ("runc", "runc"),
        ] {
            find_tool(tool).with_context(|| {
                format!("{tool} is required for the agent measurements: apt-get install {package}")
            })?;
        }
    }
    if selected.contains(&Measure::AgentSize) {
        find_tool("strip").context("strip is required for agent-size: apt-get install binutils")?;
    }
    let binary = berth_binary()?;
    if selected.iter().any(|m| m.is_agent()) {
        workspace_binary("berth-agent")?;
    }

    progress::line("starting berth-server and docker-registry");
    let berth = BerthServer::builder()
        .binary(&binary)
        .try_start()
        .context("starting berth-server")?;
    let distribution =
        DockerRegistry::try_start_with_config("").context("starting docker-registry")?;

    progress::line(format!(
        "berth-server pid {} at {}, docker-registry pid {} at {}",
        berth.pid(),
        berth.url(),
        distribution.pid(),
        distribution.url()
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let result = runtime.block_on(bench(cli, &selected, sizes, &binary, &berth, &distribution));
    match result {
        Ok(mut report) => {
            if let Some(note) = gc_note(&berth.log_text()) {
                report.notes.push(note);
            }
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&report.json())?);
            } else {
                print!("{}", report.table());
            }
            Ok(())
        }
        Err(e) => Err(e.context(format!(
            "the benchmark failed\n----- berth-server log tail -----\n{}\n\
             ----- docker-registry log tail -----\n{}\n-----",
            log_tail(&berth.log_text(), 20),
            log_tail(&distribution.log_text(), 20)
        ))),
    }
}

/// berth-server runs its periodic GC every 10 minutes by default; a pass
/// during a measurement would be worth knowing about.
fn gc_note(log: &str) -> Option<String> {
    let passes = log
        .lines()
        .filter(|l| l.contains("garbage collection pass"))
        .count();
    (passes > 0).then(|| {
        format!("berth-server ran {passes} periodic GC pass(es) during the run (see its log)")
    })
}

/// A warm-up on each registry, outside any measurement: ping, a small push
/// in both forms and a pull, so that first-request costs land nowhere.
pub(crate) async fn warm_up(reg: &Registry) -> anyhow::Result<()> {
    let resp = reg.client.ping().await?;
    expect(reg, resp, StatusCode::OK, "GET /v2/").await?;
    let (data, digest) = blobs::fresh_blob(4 * MIB).await?;
    registries::push_blob(reg, "bench/warm-up", &digest, data.clone()).await?;
    let (data2, digest2) = blobs::fresh_blob(4 * MIB).await?;
    let resp = reg
        .client
        .push_blob_chunked("bench/warm-up", &digest2, data2, MIB)
        .await?;
    expect(reg, resp, StatusCode::CREATED, "chunked warm-up PUT").await?;
    let got = reg.client.get_blob_bytes("bench/warm-up", &digest).await?;
    ensure!(got == data, "{} returned other bytes", reg.name);
    Ok(())
}

/// A note on the servers' CPU time (user + system, from /proc/<pid>/stat)
/// per operation during the timed runs: less sensitive to a busy machine
/// than wall times.
fn cpu_note(measure: &str, op: &str, ms: [f64; 2]) -> String {
    format!(
        "{measure}: server CPU (user+system) per {op}: berth {:.1} ms, distribution {:.1} ms",
        ms[0], ms[1]
    )
}

/// The rows and notes of agent-pull or agent-rss.
async fn agent_measure(
    m: Measure,
    setup: &agent::Setup,
    runs: u32,
    quick: bool,
    report: &mut Report,
) -> anyhow::Result<()> {
    if m == Measure::AgentPull {
        progress::line(format!(
            "agent-pull: berth-agent and ctr, {runs} round(s) after a warm-up"
        ));
        let (figures, settings) = agent::pull(setup, runs, quick).await?;
        for f in figures {
            let target = if f.layers > 1 { 0.7 } else { 1.0 };
            report.rows.push(
                Row::new(
                    "agent-pull",
                    format!(
                        "agent pull+unpack, {} ({} MB) (dist. column: ctr images pull)",
                        f.label,
                        f.bytes / 1_000_000
                    ),
                    "s",
                    Better::Lower,
                    (median(&f.agent), median(&f.ctr)),
                    Target::RatioAtMost(target),
                )
                .with_samples(f.agent, f.ctr),
            );
            report.notes.push(f.note);
        }
        report.notes.push(settings);
        report.notes.push(format!(
            "agent-pull: every timed pull in a freshly started private containerd (empty \
             content store and snapshots), `sync` before it, clock from spawn to exit; one \
             untimed warm-up pull per image and client; {runs} rounds alternating which \
             client goes first; berth-server (accounts on) pid {}",
            setup.server_pid()
        ));
    } else {
        progress::line("agent-rss: berth-agent daemon, idle");
        let idle = agent::idle_rss(setup).await?;
        report.rows.push(
            Row::new(
                "agent-rss",
                "berth-agent daemon idle RSS (VmRSS)",
                "MiB",
                Better::Lower,
                (agent::mib(idle.rss), f64::NAN),
                Target::BerthAtMost(15.0),
            )
            .without_ratio(),
        );
        report.notes.push(format!(
            "agent-rss: berth-agent daemon read {:.0} s after /healthz first answered, nothing \
             defined: VmRSS {:.1} MiB, VmHWM {:.1} MiB; it used {:.2} s of CPU while watched",
            idle.watched.as_secs_f64(),
            agent::mib(idle.rss),
            agent::mib(idle.hwm),
            idle.idle_cpu.as_secs_f64()
        ));
    }
    Ok(())
}

fn same_filesystem(paths: &[&Path]) -> anyhow::Result<bool> {
    let first = system::device_of(paths[0])?;
    for p in &paths[1..] {
        if system::device_of(p)? != first {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn bench(
    cli: &Cli,
    selected: &[Measure],
    sizes: Sizes,
    binary: &Path,
    berth: &BerthServer,
    distribution: &DockerRegistry,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let regs = [
        Registry::new("berth", &berth.url(), berth.pid(), 10_000)?,
        Registry::new(
            "distribution",
            &distribution.url(),
            distribution.pid(),
            1000,
        )?,
    ];
    let runs = cli.runs;
    let mut report = Report::default();
    report.header.push(format!(
        "berth-bench: berth-server {} (embedded default: SQLite + filesystem, default config) \
         vs distribution 2.8 ({}, filesystem driver)",
        binary.display(),
        find_tool("docker-registry").unwrap_or_default().display()
    ));
    let dd_dir = tempfile::Builder::new()
        .prefix("berth-bench-dd-")
        .tempdir_in(berth.data_dir().parent().unwrap_or(Path::new("/tmp")))
        .context("creating the dd directory")?;
    let same_fs = same_filesystem(&[berth.data_dir(), distribution.storage_dir(), dd_dir.path()])?;
    report.header.push(format!(
        "data: {} and {}; dd file in {} ({})",
        berth.data_dir().display(),
        distribution.storage_dir().display(),
        dd_dir.path().display(),
        if same_fs {
            "all on one filesystem"
        } else {
            "NOT all on one filesystem"
        }
    ));
    ensure!(
        same_fs,
        "the data dirs and the dd file are not on one filesystem: set TMPDIR"
    );
    report.header.push(format!(
        "sizes{}: blobs {} MiB, chunks {} MiB, pull {} x {} MiB, {} manifest PUTs ({} in flight), \
         {} tags, {} repositories, big blob {} MiB; --runs {} (medians); MB = 10^6 bytes",
        if cli.quick { " (--quick)" } else { "" },
        sizes.blob / MIB,
        sizes.chunk / MIB,
        sizes.pull_blobs,
        sizes.blob / MIB,
        sizes.manifest_puts,
        sizes.put_concurrency,
        sizes.tags,
        sizes.repos,
        sizes.big_blob >> 20,
        runs
    ));
    report.header.push(format!(
        "measurements: {}",
        selected
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(", ")
    ));

    for reg in &regs {
        progress::line(format!("warm-up on {}", reg.name));
        warm_up(reg)
            .await
            .with_context(|| format!("warm-up on {}", reg.name))?;
    }

    // A catalog listing of distribution takes seconds; a tag listing takes
    // milliseconds, where scheduling noise on a shared machine matters more:
    // more samples for the median.
    let listing_runs = runs.max(5);
    let tag_listing_runs = runs.max(21);
    // A pull takes seconds and each client's order alternates: at least 5
    // rounds, so that the median is one real pull and each client went first
    // at least twice.
    let agent_runs = runs.max(5);
    // The accounts-on server and enrolled node of the agent measurements,
    // made on first use and shared by them.
    let mut agent_setup: Option<agent::Setup> = None;
    report.header.push(format!(
        "load average at start: {} (2 cores shared; other work may be running)",
        agent::load_average()
    ));
    for &m in selected {
        let step = Instant::now();
        match m {
            Measure::Dd => {
                progress::line(format!(
                    "dd: {} MiB with conv=fdatasync, {runs} run(s)",
                    sizes.dd_mib
                ));
                let mut samples = Vec::new();
                for run in 0..runs {
                    system::sync()?;
                    let rate = system::dd_write_rate(dd_dir.path(), sizes.dd_mib)?;
                    progress::line(format!("  run {}/{runs}: {rate:.1} MB/s", run + 1));
                    samples.push(rate);
                }
                report.dd = Some((median(&samples), samples));
            }
            Measure::Push | Measure::PushChunked => {
                let (kind, label) = if m == Measure::Push {
                    (
                        PushKind::Monolithic,
                        format!("monolithic push ({} MiB, POST+PUT)", sizes.blob / MIB),
                    )
                } else {
                    (
                        PushKind::Chunked(sizes.chunk),
                        format!(
                            "chunked push ({} MiB, {} MiB PATCHes)",
                            sizes.blob / MIB,
                            sizes.chunk / MIB
                        ),
                    )
                };
                progress::line(format!("{}: {label}, {runs} run(s)", m.name()));
                let ([b, d], cpu) = blobs::push_rates(&regs, kind, sizes.blob, runs).await?;
                if m == Measure::Push || !selected.contains(&Measure::Push) {
                    report.notes.push(
                        "push: `sync` before every timed push, clock from POST to the final \
                         201; the same fresh random blob goes to both registries in each run, \
                         alternating which goes first"
                            .to_owned(),
                    );
                }
                report.notes.push(cpu_note(m.name(), "push", cpu));
                let (bm, dm) = (median(&b), median(&d));
                report.rows.push(
                    Row::new(
                        m.name(),
                        label.clone(),
                        "MB/s",
                        Better::Higher,
                        (bm, dm),
                        Target::RatioAtLeast(1.3),
                    )
                    .with_samples(b, d),
                );
                if let Some((dd, _)) = report.dd {
                    report.rows.push(
                        Row::new(
                            m.name(),
                            format!("  {} as % of dd fdatasync", m.name()),
                            "%",
                            Better::Higher,
                            (bm / dd * 100.0, dm / dd * 100.0),
                            Target::BerthAtLeast(80.0),
                        )
                        .without_ratio(),
                    );
                }
            }
            Measure::Pull => {
                progress::line(format!(
                    "pull: {} x {} MiB in parallel, {runs} run(s)",
                    sizes.pull_blobs,
                    sizes.blob / MIB
                ));
                let set = blobs::pull_setup(&regs, sizes.pull_blobs, sizes.blob).await?;
                let ([b, d], cpu) = blobs::pull_rates(&regs, &set, runs).await?;
                report.notes.push(cpu_note("pull", "4-blob pull", cpu));
                report.rows.push(
                    Row::new(
                        "pull",
                        format!(
                            "{}-way parallel pull ({} x {} MiB)",
                            sizes.pull_blobs,
                            sizes.pull_blobs,
                            sizes.blob / MIB
                        ),
                        "MB/s",
                        Better::Higher,
                        (median(&b), median(&d)),
                        Target::RatioAtLeast(1.0),
                    )
                    .with_samples(b, d),
                );
                report.notes.push(
                    "pull: the sha256 of every byte received was verified once per registry \
                     before the timed runs (that run also warmed the page cache); the timed \
                     runs count bytes without hashing, so that client CPU does not cap them"
                        .to_owned(),
                );
            }
            Measure::ManifestGet => {
                progress::line("manifest-get: wrk on GET manifests/<tag>");
                let ([b, d], cpu_us) = manifests::manifest_get(&regs, sizes.wrk).await?;
                report.rows.push(Row::new(
                    "manifest-get",
                    format!(
                        "manifest GET by tag (wrk -t{} -c{} -d{}s)",
                        sizes.wrk.threads, sizes.wrk.connections, sizes.wrk.secs
                    ),
                    "req/s",
                    Better::Higher,
                    (b.requests_per_sec, d.requests_per_sec),
                    Target::RatioAtLeast(5.0),
                ));
                report.rows.push(Row::new(
                    "manifest-get",
                    "  manifest GET p99 latency",
                    "ms",
                    Better::Lower,
                    (b.p99.as_secs_f64() * 1e3, d.p99.as_secs_f64() * 1e3),
                    Target::None,
                ));
                report.notes.push(format!(
                    "manifest-get: wrk shares the machine's 2 cores with the server under test \
                     ({} and {} requests in the measured runs); server CPU (user+system) per \
                     request: berth {:.0} us, distribution {:.0} us",
                    b.requests, d.requests, cpu_us[0], cpu_us[1]
                ));
            }
            Measure::ManifestPut => {
                progress::line(format!(
                    "manifest-put: {} distinct manifests, {} in flight",
                    sizes.manifest_puts, sizes.put_concurrency
                ));
                let [b, d] =
                    manifests::manifest_put(&regs, sizes.manifest_puts, sizes.put_concurrency)
                        .await?;
                report.rows.push(Row::new(
                    "manifest-put",
                    format!(
                        "manifest PUT ({} distinct, {} in flight)",
                        sizes.manifest_puts, sizes.put_concurrency
                    ),
                    "PUT/s",
                    Better::Higher,
                    (b.per_sec, d.per_sec),
                    Target::RatioAtLeast(2.0),
                ));
                report.notes.push(cpu_note(
                    "manifest-put",
                    "manifest PUT",
                    [b.cpu_ms, d.cpu_ms],
                ));
                report.rows.push(Row::new(
                    "manifest-put",
                    "  manifest PUT p99 latency",
                    "ms",
                    Better::Lower,
                    (b.p99_ms, d.p99_ms),
                    Target::None,
                ));
            }
            Measure::Tags => {
                progress::line(format!("tags: listing {} tags", sizes.tags));
                manifests::tags_setup(&regs, sizes.tags).await?;
                let want = sizes.tags;
                let (times, pages, cpu) = manifests::listing_times(
                    &regs,
                    |_| "/v2/bench/tags/tags/list".to_owned(),
                    tag_listing_runs,
                    |reg, entries| {
                        ensure!(
                            entries.len() == want,
                            "{} listed {} tags, expected {want}",
                            reg.name,
                            entries.len()
                        );
                        Ok(())
                    },
                )
                .await?;
                let [b, d] = times;
                report.rows.push(
                    Row::new(
                        "tags",
                        format!("tags list, {} tags (full listing)", sizes.tags),
                        "ms",
                        Better::Lower,
                        (median(&b), median(&d)),
                        Target::FasterBy(3.0),
                    )
                    .with_samples(b, d),
                );
                report.notes.push(format!(
                    "tags: median of {tag_listing_runs} full listings after one warm-up; berth \
                     answered in {} page(s), distribution in {}",
                    pages[0], pages[1]
                ));
                report.notes.push(cpu_note("tags", "tag listing", cpu));
            }
            Measure::Catalog => {
                progress::line(format!("catalog: listing {} repositories", sizes.repos));
                manifests::catalog_setup(&regs, sizes.repos).await?;
                let want = sizes.repos;
                let (times, pages, cpu) = manifests::listing_times(
                    &regs,
                    |reg| format!("/v2/_catalog?n={}", reg.max_catalog_page),
                    listing_runs,
                    |reg, entries| {
                        let ours = entries
                            .iter()
                            .filter(|r| r.starts_with("bench-catalog/"))
                            .count();
                        ensure!(
                            ours == want,
                            "{} listed {ours} of the {want} bench-catalog repositories",
                            reg.name
                        );
                        Ok(())
                    },
                )
                .await?;
                let [b, d] = times;
                report.rows.push(
                    Row::new(
                        "catalog",
                        format!("catalog, {} repositories (full listing)", sizes.repos),
                        "ms",
                        Better::Lower,
                        (median(&b), median(&d)),
                        Target::FasterBy(3.0),
                    )
                    .with_samples(b, d),
                );
                report.notes.push(format!(
                    "catalog: GET /v2/_catalog?n=N following Link until done, N = the largest \
                     page each accepts (berth {}, its limits.max_page_entries; distribution {}, its \
                     catalog.maxentries: it answers 400 PAGINATION_NUMBER_INVALID to n=10000); \
                     median of {listing_runs} after one warm-up; berth answered in {} page(s), \
                     distribution in {} (the catalog also holds the few bench/* repositories of \
                     other measurements)",
                    regs[0].max_catalog_page, regs[1].max_catalog_page, pages[0], pages[1]
                ));
                report
                    .notes
                    .push(cpu_note("catalog", "catalog listing", cpu));
            }
            Measure::Rss => {
                progress::line(format!(
                    "rss: peak RSS while pushing a {} MiB blob (streamed)",
                    sizes.big_blob >> 20
                ));
                let seed = registries::next_seed();
                let digest = blobs::streamed_digest(seed, sizes.big_blob).await?;
                let mut samples = Vec::new();
                for reg in &regs {
                    samples.push(blobs::big_push(reg, seed, sizes.big_blob, &digest).await?);
                }
                report.rows.push(Row::new(
                    "rss",
                    format!("peak RSS (VmHWM) pushing {} MiB", sizes.big_blob >> 20),
                    "MiB",
                    Better::Lower,
                    (blobs::mib(samples[0].peak()), blobs::mib(samples[1].peak())),
                    Target::BerthBelow(64.0),
                ));
                let describe = |s: &blobs::RssSample| {
                    format!(
                        "VmRSS {:.1} MiB before, VmHWM {:.1} MiB, max sampled VmRSS {:.1} MiB, \
                         push took {:.1} s and {:.1} s of server CPU{}",
                        blobs::mib(s.before),
                        blobs::mib(s.hwm),
                        blobs::mib(s.sampled),
                        s.elapsed.as_secs_f64(),
                        s.cpu.as_secs_f64(),
                        if s.reset {
                            ""
                        } else {
                            ", peak NOT reset (since process start)"
                        }
                    )
                };
                report.notes.push(format!(
                    "rss: VmHWM reset via /proc/<pid>/clear_refs right before one streamed PUT; \
                     the figure is VmHWM after it, or the largest VmRSS sampled every 50 ms if \
                     higher; berth: {}; distribution: {}",
                    describe(&samples[0]),
                    describe(&samples[1])
                ));
            }
            Measure::Portal => {
                let samples = if cli.quick { 50 } else { 200 };
                progress::line(format!("portal: {} repositories", sizes.repos));
                for f in portal::measure(binary, sizes.repos, samples).await? {
                    report.rows.push(
                        Row::new(
                            "portal",
                            format!("{} ({} repos), p99", f.label, sizes.repos),
                            "ms",
                            Better::Lower,
                            (f.p99_ms, f64::NAN),
                            Target::BerthBelow(50.0),
                        )
                        .without_ratio(),
                    );
                    report
                        .notes
                        .push(format!("portal: {}: median {:.2} ms", f.label, f.median_ms));
                }
            }
            Measure::ScaleOut => {
                progress::line("scale-out: PostgreSQL, Garage and two berth-server replicas");
                let so = scaleout::ScaleOut::start(binary, distribution.addr())?;
                report.header.push(so.describe());
                scaleout::measure(&so, &regs[1], &sizes, runs, &mut report)
                    .await
                    .map_err(|e| e.context(format!("scale-out failed\n{}", so.log_tails(20))))?;
            }
            Measure::Control => {
                let (n, commands) = if cli.quick { (20, 20) } else { (200, 200) };
                progress::line(format!("control: {n} stand-in nodes, {commands} commands"));
                let f = control::measure(binary, n, commands).await?;
                report.rows.push(
                    Row::new(
                        "control",
                        format!("server memory per idle node connection ({n} nodes)"),
                        "KiB",
                        Better::Lower,
                        (f.per_node_bytes / 1024.0, f64::NAN),
                        Target::None,
                    )
                    .without_ratio(),
                );
                report.rows.push(
                    Row::new(
                        "control",
                        "command round trip (API POST to succeeded), median",
                        "ms",
                        Better::Lower,
                        (median(&f.rtt_ms), f64::NAN),
                        Target::None,
                    )
                    .without_ratio(),
                );
                report.rows.push(
                    Row::new(
                        "control",
                        "command round trip, p99",
                        "ms",
                        Better::Lower,
                        (report::percentile(&f.rtt_ms, 99.0), f64::NAN),
                        Target::None,
                    )
                    .without_ratio(),
                );
                report.notes.push(format!(
                    "control: server VmRSS {:.1} MiB with no node connected, {:.1} MiB with {} \
                     idle stand-in nodes connected ({:.1} s to connect them all); round trips \
                     include the 2 ms poll of the command",
                    blobs::mib(f.rss_before),
                    blobs::mib(f.rss_connected),
                    f.nodes,
                    f.connect_secs
                ));
            }
            Measure::AgentPull | Measure::AgentRss => {
                if agent_setup.is_none() {
                    progress::line("agent: berth-server with accounts on, an enrolled node");
                    agent_setup = Some(agent::Setup::start(
                        binary,
                        &workspace_binary("berth-agent")?,
                    )?);
                }
                let setup = agent_setup
                    .as_ref()
                    .context("the agent set-up was just made")?;
                agent_measure(m, setup, agent_runs, cli.quick, &mut report)
                    .await
                    .map_err(|e| {
                        e.context(format!(
                            "{} failed\n----- berth-server (accounts on) log tail -----\n{}\n-----",
                            m.name(),
                            log_tail(&setup.server_log(), 20)
                        ))
                    })?;
            }
            Measure::AgentSize => {
                let release = workspace_binary("berth-agent")?;
                // What ships: the appliance profile, beside this build's
                // profile directory.
                let shipped = release
                    .parent()
                    .and_then(Path::parent)
                    .map(|t| t.join("appliance").join("berth-agent"))
                    .filter(|p| p.is_file())
                    .context(
                        "agent-size measures the shipped build: run `cargo build --profile \
                         appliance -p agent` first (target/appliance/berth-agent)",
                    )?;
                let (built, stripped) = agent::binary_sizes(&shipped)?;
                let (release_built, release_stripped) = agent::binary_sizes(&release)?;
                report.rows.push(
                    Row::new(
                        "agent-size",
                        "berth-agent binary as shipped (appliance profile), stripped",
                        "MiB",
                        Better::Lower,
                        (agent::mib(stripped), f64::NAN),
                        Target::BerthAtMost(15.0),
                    )
                    .without_ratio(),
                );
                report.notes.push(format!(
                    "agent-size: {} is {:.1} MiB as built, {:.1} MiB after strip of a copy; \
                     this build's {} is {:.1} MiB, {:.1} MiB stripped",
                    shipped.display(),
                    agent::mib(built),
                    agent::mib(stripped),
                    release.display(),
                    agent::mib(release_built),
                    agent::mib(release_stripped)
                ));
            }
            Measure::Auth => {
                let grants = if cli.quick { 300 } else { 2000 };
                progress::line("auth: token grants and manifest GETs with accounts on and off");
                let f = auth::measure(binary, sizes.wrk, grants).await?;
                report.rows.push(
                    Row::new(
                        "auth",
                        format!("token grants (GET /auth/token, {grants}, 8 in flight)"),
                        "grant/s",
                        Better::Higher,
                        (f.grants_per_sec, f64::NAN),
                        Target::None,
                    )
                    .without_ratio(),
                );
                report.rows.push(Row::new(
                    "auth",
                    "manifest GET, bearer token (dist. column: berth, accounts off)",
                    "req/s",
                    Better::Higher,
                    (f.auth_rps, f.open_rps),
                    Target::RatioAtLeast(0.9),
                ));
                report.rows.push(Row::new(
                    "auth",
                    "  manifest GET p99, bearer token (dist. column: accounts off)",
                    "ms",
                    Better::Lower,
                    (f.auth_p99_ms, f.open_p99_ms),
                    Target::None,
                ));
                report.rows.push(Row::new(
                    "auth",
                    "  server CPU per manifest GET, bearer token (dist. column: accounts off)",
                    "us",
                    Better::Lower,
                    (f.auth_cpu_us, f.open_cpu_us),
                    Target::None,
                ));
                report.notes.push(format!(
                    "auth: two fresh berth-servers (accounts on / off) in this run; token grant \
                     p99 {:.2} ms; auth costs {:.1} % of manifest GET throughput and {:.1} % \
                     more server CPU per GET",
                    f.grant_p99_ms,
                    (1.0 - f.auth_rps / f.open_rps) * 100.0,
                    (f.auth_cpu_us / f.open_cpu_us - 1.0) * 100.0
                ));
            }
        }
        if m.is_agent() {
            let load = format!(
                "{}: load average after it: {}",
                m.name(),
                agent::load_average()
            );
            report.notes.push(load);
        }
        progress::line(format!(
            "{} done in {:.1} s",
            m.name(),
            step.elapsed().as_secs_f64()
        ));
    }
    progress::line(format!(
        "finished in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(report)
}
