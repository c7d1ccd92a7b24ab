//! `berth-agent`: the node daemon and the local CLI for people on the box
//! (`pull`, `images`, `rmi`, `run`, `ps`, `logs`, `stop`, `rm`, `volumes`, `validate`,
//! `daemon`, and `define`, `undefine`, `start` for the daemon's supervised
//! containers).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use agent::config::{AgentConfig, DEFAULT_CONFIG_PATH, Overrides};
use agent::containerd::Containerd;
use agent::runtime::logcopy;
use agent::runtime::settings::{self, LogLimits, Settings};
use agent::runtime::spec::Overrides as RunOverrides;
use agent::runtime::{RunRequest, Runtime};
use agent::supervisor::definition::{
    BackoffSettings, Definition, DefinitionStore, ExecType, HealthCheck, RunOptions, parse_duration,
};
use agent::{Progress, Puller};
use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

mod daemon;

#[derive(Parser, Debug)]
#[command(
    name = "berth-agent",
    version,
    about = "Berth's node agent: pulls the account's images into containerd"
)]
struct Cli {
    /// Configuration file (default /etc/berth/agent.toml; `BERTH_AGENT_CONFIG`).
    #[arg(long, global = true, env = "BERTH_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `registry.url`.
    #[arg(long, global = true)]
    registry_url: Option<String>,
    /// Overrides `registry.namespace`.
    #[arg(long, global = true)]
    namespace: Option<String>,
    /// Overrides `containerd.socket`.
    #[arg(long, global = true)]
    containerd_socket: Option<PathBuf>,
    /// Overrides `containerd.namespace`.
    #[arg(long, global = true)]
    containerd_namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check the configuration and report every problem.
    Validate {
        /// Print the effective configuration as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Pull an image (`nginx:1.27`, `team/app@sha256:…`) into containerd.
    Pull {
        reference: String,
        /// One JSON object on stdout instead of progress bars.
        #[arg(long)]
        json: bool,
    },
    /// List the images in the agent's containerd namespace.
    Images {
        #[command(subcommand)]
        action: Option<ImagesAction>,
        #[arg(long)]
        json: bool,
    },
    /// Remove an image record (containerd's GC reclaims what nothing else uses).
    Rmi { reference: String },
    /// Create and start a container from an image (pulled first when
    /// containerd does not have it). Output goes to a log file (`logs`).
    Run {
        /// The container's name (containerd's id).
        name: String,
        /// The image, as for `pull`.
        image: String,
        /// `KEY=VALUE`, over the image's variable of the same name; repeatable.
        #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Hostname inside the container (default: its name).
        #[arg(long)]
        hostname: Option<String>,
        /// Seconds `stop` waits between SIGTERM and SIGKILL (default 30).
        #[arg(long, value_name = "SECS")]
        stop_timeout: Option<u64>,
        /// `uid[:gid]` or `name[:group]` from the image's /etc/passwd and
        /// /etc/group (default: the image's user).
        #[arg(long, short = 'u')]
        user: Option<String>,
        // Boxed: the flags make the variant much larger than the others.
        #[command(flatten)]
        settings: Box<SettingsArgs>,
        #[arg(long)]
        json: bool,
        /// Replaces the image's command (its entrypoint stays): `-- CMD ARGS…`.
        #[arg(last = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
    /// (Internal) the rotating log copier `run --log-max-size` starts for
    /// each container: reads the container's output from FIFO into LOG.
    #[command(name = "log-copier", hide = true)]
    LogCopier {
        fifo: PathBuf,
        log: PathBuf,
        #[arg(long)]
        max_size: u64,
        #[arg(long)]
        max_files: u32,
    },
    /// List the named volumes (`<data_dir>/volumes/NAME`) and the
    /// containers using them.
    Volumes {
        #[arg(long)]
        json: bool,
    },
    /// List the containers with their state and exit status.
    Ps {
        #[arg(long)]
        json: bool,
    },
    /// Print a container's output (stdout and stderr, interleaved).
    Logs { name: String },
    /// Stop a container: SIGTERM, then SIGKILL after the timeout. A
    /// supervised service or recurring container is also held: not started
    /// again until `start NAME`.
    Stop {
        name: String,
        /// Seconds between SIGTERM and SIGKILL (default: the container's
        /// `--stop-timeout`, else 30).
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Remove a stopped container: its task, record, snapshot and log.
    Rm {
        name: String,
        /// Kill it first if it is running.
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Run as the node daemon: supervises the defined containers, serves
    /// metrics, shuts down gracefully (leaving containers running).
    Daemon,
    /// Define a container for the daemon to run: a `service` (restarted
    /// when it exits, with backoff), `recurring` (at each tick of a cron
    /// schedule; a tick is skipped while the previous run runs) or
    /// `on-demand` (run by `start`). Redefining a name replaces it.
    Define(Box<DefineArgs>),
    /// Remove a definition: the daemon stops supervising it, and the
    /// container is stopped and removed.
    Undefine { name: String },
    /// Ask the daemon to run an on-demand container once, or to take up
    /// again a service or recurring container that `stop` held.
    Start { name: String },
}

#[derive(clap::Subcommand, Debug)]
enum ImagesAction {
    /// Remove the images no container uses (running, stopped or defined)
    /// that were last used (or pulled) at least this long ago.
    Prune {
        /// `30s`, `15m`, `1h`, `7d` (default: `gc.max_image_age`, else 7d).
        #[arg(long, value_name = "AGE", value_parser = agent::gc::parse_age)]
        older_than: Option<std::time::Duration>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
struct DefineArgs {
    /// The container's name (containerd's id).
    name: String,
    /// The image, as for `pull`.
    image: String,
    /// `service`, `recurring` or `on-demand`.
    #[arg(long = "type", value_name = "TYPE")]
    exec_type: ExecType,
    /// Cron schedule of a recurring container: 5 fields ("*/5 * * * *"),
    /// or 6 with seconds first.
    #[arg(long)]
    schedule: Option<String>,
    /// Health check run inside the container with `/bin/sh -c`; exit 0 is
    /// healthy. After --health-retries failures in a row it is restarted.
    #[arg(long, value_name = "SHELL")]
    health_cmd: Option<String>,
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    health_interval: std::time::Duration,
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    health_timeout: std::time::Duration,
    #[arg(long, default_value_t = 3)]
    health_retries: u32,
    /// No probe during this long after each start.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    health_start_period: std::time::Duration,
    /// First restart delay of a service; doubled at each exit.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    backoff_initial: std::time::Duration,
    /// The cap of the restart delay.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    backoff_max: std::time::Duration,
    /// A run this long resets the delay to --backoff-initial.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    backoff_reset: std::time::Duration,
    /// `KEY=VALUE`, over the image's variable of the same name; repeatable.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Hostname inside the container (default: its name).
    #[arg(long)]
    hostname: Option<String>,
    /// Seconds between SIGTERM and SIGKILL when it is stopped (default 30).
    #[arg(long, value_name = "SECS")]
    stop_timeout: Option<u64>,
    /// `uid[:gid]` or `name[:group]` (default: the image's user).
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// The same settings as `run`'s, applied at every start.
    #[command(flatten)]
    settings: SettingsArgs,
    /// Replaces the image's command (its entrypoint stays): `-- CMD ARGS…`.
    #[arg(last = true, value_name = "CMD")]
    cmd: Vec<String>,
}

impl DefineArgs {
    fn definition(self) -> anyhow::Result<Definition> {
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let settings = self.settings.settings()?;
        Ok(Definition {
            name: self.name,
            image: self.image,
            exec_type: self.exec_type,
            schedule: self.schedule,
            run: RunOptions {
                cmd: self.cmd,
                env: self.env,
                hostname: self.hostname,
                user: self.user,
                stop_timeout_secs: self.stop_timeout,
                settings,
            },
            backoff: BackoffSettings {
                initial_ms: ms(self.backoff_initial),
                max_ms: ms(self.backoff_max),
                reset_after_secs: self.backoff_reset.as_secs(),
            },
            health: self.health_cmd.map(|c| HealthCheck {
                cmd: vec!["/bin/sh".into(), "-c".into(), c],
                interval_ms: ms(self.health_interval),
                timeout_ms: ms(self.health_timeout),
                retries: self.health_retries,
                start_period_ms: ms(self.health_start_period),
            }),
        })
    }
}

impl Cli {
    fn overrides(&self) -> Overrides {
        Overrides {
            registry_url: self.registry_url.clone(),
            namespace: self.namespace.clone(),
            containerd_socket: self.containerd_socket.clone(),
            containerd_namespace: self.containerd_namespace.clone(),
        }
    }

    fn config_path(&self) -> (PathBuf, bool) {
        match &self.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        }
    }
}

fn init_tracing(cfg: Option<&AgentConfig>) {
    let level = cfg.map_or("warn", |c| c.log.level.as_str());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.is_some_and(|c| c.log.format == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (path, required) = cli.config_path();
    if let Command::Validate { json } = &cli.command {
        init_tracing(None);
        return validate(&path, required, &cli.overrides(), *json);
    }
    if let Command::LogCopier {
        fifo,
        log,
        max_size,
        max_files,
    } = &cli.command
    {
        // No configuration, no tracing: it only copies bytes, and must
        // not fail because the configuration changed while it runs.
        let limits = LogLimits {
            max_size: Some(*max_size),
            max_files: *max_files,
        };
        return logcopy::run_copier(fifo, log, limits)
            .with_context(|| format!("copying {} into {}", fifo.display(), log.display()));
    }
    let cfg = AgentConfig::load(&path, required, &cli.overrides())
        .with_context(|| format!("configuration {}", path.display()))?;
    init_tracing(Some(&cfg));
    match cli.command {
        Command::Validate { .. } => Ok(()),
        Command::Pull { reference, json } => pull(&cfg, &reference, json).await,
        Command::Images {
            action: Some(ImagesAction::Prune { older_than, json }),
            ..
        } => prune(&cfg, older_than, json).await,
        Command::Images { action: None, json } => images(&cfg, json).await,
        Command::Rmi { reference } => rmi(&cfg, &reference).await,
        Command::Run {
            name,
            image,
            env,
            hostname,
            stop_timeout,
            user,
            settings,
            json,
            cmd,
        } => {
            let req = RunRequest {
                name,
                image,
                overrides: RunOverrides {
                    cmd,
                    env,
                    hostname,
                    user,
                    settings: settings.settings()?,
                },
                stop_timeout: stop_timeout.map(std::time::Duration::from_secs),
            };
            run(&cfg, &req, json).await
        }
        Command::Ps { json } => ps(&cfg, json).await,
        Command::Volumes { json } => volumes(&cfg, json).await,
        Command::LogCopier { .. } => Ok(()),
        Command::Logs { name } => logs(&cfg, &name).await,
        Command::Stop {
            name,
            timeout,
            json,
        } => stop(&cfg, &name, timeout, json).await,
        Command::Rm { name, force } => {
            Runtime::new(&cfg).await?.rm(&name, force).await?;
            println!("removed {name}");
            Ok(())
        }
        Command::Daemon => daemon::run(cfg).await,
        Command::Define(args) => {
            let def = args.definition()?;
            let store = DefinitionStore::new(&cfg.data_dir);
            store.save(&def)?;
            store.release(&def.name)?;
            println!(
                "{} defined ({}); the daemon picks it up within a second",
                def.name,
                def.exec_type.as_str()
            );
            Ok(())
        }
        Command::Undefine { name } => undefine(&cfg, &name).await,
        Command::Start { name } => {
            let store = DefinitionStore::new(&cfg.data_dir);
            match store.load(&name)? {
                Some(d) if d.exec_type == ExecType::OnDemand => {
                    store.request_start(&name)?;
                    println!("start of {name} requested");
                }
                // A service or recurring container stopped by hand: its
                // supervisor takes it up again.
                Some(_) if store.release(&name)? => {
                    println!("{name} released: its supervisor starts it again");
                }
                Some(d) => anyhow::bail!(
                    "{name} is a {} container and not stopped: its supervisor runs it",
                    d.exec_type.as_str()
                ),
                None => anyhow::bail!("no definition {name}"),
            }
            Ok(())
        }
    }
}

fn validate(
    path: &std::path::Path,
    required: bool,
    overrides: &Overrides,
    json: bool,
) -> anyhow::Result<()> {
    let cfg = match AgentConfig::load(path, required, overrides) {
        Ok(c) => c,
        Err(agent::config::ConfigError::Invalid(problems)) => {
            eprintln!("{}: {} problem(s):", path.display(), problems.len());
            for p in &problems {
                eprintln!("  - {p}");
            }
            std::process::exit(1);
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&cfg)?);
    } else {
        println!("{}: ok", path.display());
    }
    Ok(())
}

/// Progress bars, one per blob, drawn on stderr (hidden when it is not a
/// terminal).
fn progress_bars() -> agent::pull::ProgressFn {
    let multi = MultiProgress::new();
    let bars: Mutex<HashMap<String, ProgressBar>> = Mutex::new(HashMap::new());
    let style = ProgressStyle::with_template(
        "{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    Arc::new(move |p: Progress| {
        let mut bars = bars.lock().unwrap_or_else(|e| e.into_inner());
        match p {
            Progress::Resolved { image, digest } => {
                let _ = multi.println(format!("{image}: {digest}"));
            }
            Progress::BlobStarted { digest, size } => {
                let bar = multi.add(ProgressBar::new(size));
                bar.set_style(style.clone());
                bar.set_prefix(short(&digest));
                bars.insert(digest, bar);
            }
            Progress::BlobBytes { digest, bytes } => {
                if let Some(b) = bars.get(&digest) {
                    b.inc(bytes);
                }
            }
            Progress::BlobDone { digest, existed } => {
                if let Some(b) = bars.get(&digest) {
                    b.finish_with_message(if existed { "already there" } else { "done" });
                }
            }
            Progress::Retry {
                digest,
                attempt,
                error,
            } => {
                if let Some(b) = bars.get(&digest) {
                    b.set_message(format!("retry {attempt}: {error}"));
                }
            }
            Progress::Unpacking { layer, of } => {
                let _ = multi.println(format!("unpacking layer {layer}/{of}"));
            }
        }
    })
}

fn short(digest: &str) -> String {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    hex.chars().take(12).collect()
}

async fn pull(cfg: &AgentConfig, reference: &str, json: bool) -> anyhow::Result<()> {
    let puller = Puller::new(cfg).await?;
    let progress: agent::pull::ProgressFn = if json {
        Arc::new(|_| {})
    } else {
        progress_bars()
    };
    let pulled = puller.pull(reference, progress).await?;
    if json {
        println!("{}", serde_json::to_string(&pulled)?);
    } else {
        println!(
            "{} {} ({}, {} layers, {} bytes downloaded)",
            pulled.name, pulled.digest, pulled.platform, pulled.layers, pulled.downloaded
        );
    }
    Ok(())
}

async fn connect(cfg: &AgentConfig) -> anyhow::Result<Containerd> {
    Ok(Containerd::connect(
        &cfg.containerd.socket,
        &cfg.containerd.namespace,
        &cfg.containerd.snapshotter,
    )
    .await?)
}

async fn images(cfg: &AgentConfig, json: bool) -> anyhow::Result<()> {
    let list = connect(cfg).await?.list_images().await?;
    if json {
        println!("{}", serde_json::to_string(&list)?);
    } else {
        println!("{:<60} {:<72} SIZE", "NAME", "DIGEST");
        for i in list {
            println!("{:<60} {:<72} {}", i.name, i.digest, i.size);
        }
    }
    Ok(())
}

async fn prune(
    cfg: &AgentConfig,
    older_than: Option<std::time::Duration>,
    json: bool,
) -> anyhow::Result<()> {
    let max_age = match older_than {
        Some(d) => d,
        None => match &cfg.gc.max_image_age {
            Some(a) => agent::gc::parse_age(a).map_err(anyhow::Error::msg)?,
            None => std::time::Duration::from_secs(7 * 86_400),
        },
    };
    // Age only: disk watermarks are the daemon's, run on its interval.
    let policy = agent::gc::Policy {
        max_age: Some(max_age),
        watermarks: None,
    };
    let removed = agent::gc::prune(&Runtime::new(cfg).await?, cfg, &policy).await?;
    if json {
        println!("{}", serde_json::to_string(&removed)?);
    } else if removed.is_empty() {
        println!("nothing to remove");
    } else {
        for i in removed {
            println!(
                "removed {} ({} bytes, unused for {} s)",
                i.name, i.size, i.age_secs
            );
        }
    }
    Ok(())
}

async fn rmi(cfg: &AgentConfig, reference: &str) -> anyhow::Result<()> {
    let image = agent::ImageRef::resolve(reference, &cfg.registry_host(), &cfg.registry.namespace)?;
    let name = image.image_name();
    if connect(cfg).await?.delete_image(&name).await? {
        println!("removed {name}");
        Ok(())
    } else {
        anyhow::bail!("no image {name}")
    }
}

async fn run(cfg: &AgentConfig, req: &RunRequest, json: bool) -> anyhow::Result<()> {
    let started = Runtime::new(cfg).await?.run(req).await?;
    if json {
        println!("{}", serde_json::to_string(&started)?);
    } else {
        println!(
            "{} started (pid {}, image {}{}); output in {}",
            started.name,
            started.pid,
            started.image,
            if started.pulled { ", pulled" } else { "" },
            started.log.display()
        );
    }
    Ok(())
}

async fn ps(cfg: &AgentConfig, json: bool) -> anyhow::Result<()> {
    let list = Runtime::new(cfg).await?.ps().await?;
    // The supervisor's view: execution type and counts from the status
    // the daemon writes; defined containers that do not exist (yet) are
    // listed too.
    let (defs, _) = DefinitionStore::new(&cfg.data_dir).list()?;
    let status = agent::supervisor::read_status(&cfg.data_dir);
    let mut rows: Vec<serde_json::Value> = Vec::new();
    for c in &list {
        rows.push(serde_json::to_value(c)?);
    }
    for name in defs.keys() {
        if !list.iter().any(|c| &c.name == name) {
            rows.push(
                serde_json::json!({"name": name, "image": defs[name].image, "state": "defined",
                "pid": null, "exit_status": null}),
            );
        }
    }
    for row in &mut rows {
        let name = row["name"].as_str().unwrap_or_default().to_owned();
        let (exec_type, st) = match defs.get(&name) {
            Some(d) => (Some(d.exec_type.as_str()), status.get(&name).cloned()),
            None => (None, None),
        };
        let st = st.unwrap_or_default();
        row["type"] = serde_json::json!(exec_type);
        row["restarts"] = serde_json::json!(st.restarts);
        row["runs"] = serde_json::json!(st.runs);
        row["backoff_ms"] = serde_json::json!(st.backoff_ms);
        row["health_failures"] = serde_json::json!(st.health_failures);
        row["skipped_ticks"] = serde_json::json!(st.skipped_ticks);
        row["next_run"] = serde_json::json!(st.next_run);
    }
    rows.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    if json {
        println!("{}", serde_json::to_string(&rows)?);
    } else {
        println!(
            "{:<24} {:<10} {:<8} {:<6} {:<10} {:<8} IMAGE",
            "NAME", "STATE", "PID", "EXIT", "TYPE", "RESTARTS"
        );
        let cell = |v: &serde_json::Value| match v {
            serde_json::Value::Null => "-".to_owned(),
            serde_json::Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        for r in rows {
            println!(
                "{:<24} {:<10} {:<8} {:<6} {:<10} {:<8} {}",
                cell(&r["name"]),
                cell(&r["state"]),
                cell(&r["pid"]),
                cell(&r["exit_status"]),
                cell(&r["type"]),
                if r["type"].is_null() {
                    "-".to_owned()
                } else {
                    cell(&r["restarts"])
                },
                cell(&r["image"])
            );
        }
    }
    Ok(())
}

/// The definition goes first, so nothing restarts the container. A
/// running daemon then stops and removes it (and drops it from its status
/// file, which is how the CLI sees it is done): the daemon is the one that
/// may be starting it at that moment. Whatever is left after that, or with
/// no daemon at all, is stopped and removed here.
async fn undefine(cfg: &AgentConfig, name: &str) -> anyhow::Result<()> {
    let store = DefinitionStore::new(&cfg.data_dir);
    let def = store.load(name)?;
    let defined = store.remove(name)?;
    if defined {
        let stop = def.and_then(|d| d.run.stop_timeout_secs).map_or(
            agent::runtime::DEFAULT_STOP_TIMEOUT,
            std::time::Duration::from_secs,
        );
        let deadline = std::time::Instant::now() + stop + std::time::Duration::from_secs(5);
        while agent::supervisor::read_status(&cfg.data_dir).contains_key(name)
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let runtime = Runtime::new(cfg).await?;
    let existed = match runtime.stop(name, None).await {
        Ok(_) => {
            runtime.rm(name, true).await?;
            true
        }
        Err(agent::runtime::RuntimeError::NoContainer(_)) => false,
        Err(e) => return Err(e.into()),
    };
    if !defined && !existed {
        anyhow::bail!("no definition or container {name}");
    }
    println!("{name} undefined, stopped and removed");
    Ok(())
}

async fn logs(cfg: &AgentConfig, name: &str) -> anyhow::Result<()> {
    let path = Runtime::new(cfg).await?.logs(name).await?;
    // Rotated files first (oldest to newest), then the current one.
    let mut files = logcopy::files_oldest_first(&path);
    if files.is_empty() {
        files.push(path);
    }
    let mut out = std::io::stdout().lock();
    for p in files {
        let mut file = match std::fs::File::open(&p) {
            Ok(f) => f,
            // Rotated away between the listing and the open.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("{}", p.display())),
        };
        std::io::copy(&mut file, &mut out)?;
    }
    Ok(())
}

async fn stop(
    cfg: &AgentConfig,
    name: &str,
    timeout: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let held = agent::supervisor::hold_if_defined(&cfg.data_dir, name)?;
    let stopped = Runtime::new(cfg)
        .await?
        .stop(name, timeout.map(std::time::Duration::from_secs))
        .await?;
    if json {
        println!("{}", serde_json::to_string(&stopped)?);
    } else {
        match stopped.exit_status {
            Some(s) if stopped.killed => {
                println!(
                    "{name} killed after {} s (exit status {s})",
                    stopped.timeout_secs
                )
            }
            Some(s) => println!("{name} stopped (exit status {s})"),
            None => println!("{name} was not running"),
        }
        if held {
            println!(
                "{name} is held: its supervisor starts it again after `berth-agent start {name}`"
            );
        }
    }
    Ok(())
}

/// The per-container settings of `run` beyond the process (flattened into
/// its flags), turned into the runtime's validated [`Settings`].
#[derive(clap::Args, Debug, Default)]
struct SettingsArgs {
    /// Every capability, every host device, nothing masked in /proc,
    /// writable /sys. Only for containers that manage the box itself.
    #[arg(long)]
    privileged: bool,
    /// A capability to add (`NET_ADMIN`, `CAP_SYS_TIME`, `ALL`); repeatable.
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
    /// A capability to drop (`CHOWN`, `ALL`); repeatable.
    #[arg(long = "cap-drop", value_name = "CAP")]
    cap_drop: Vec<String>,
    /// `type=bind,source=/host,target=/ctr[,readonly]` (the source must
    /// exist) or `type=volume,source=NAME,target=/ctr`; repeatable.
    #[arg(long = "mount", value_name = "SPEC")]
    mounts: Vec<String>,
    /// `NAME:/target[:ro]`: a named volume (`<data_dir>/volumes/NAME`,
    /// created on first use, kept after `rm`); repeatable.
    #[arg(long = "volume", short = 'v', value_name = "NAME:/TARGET[:ro]")]
    volumes: Vec<String>,
    /// Memory limit: bytes, or with a unit (`512m`, `1g`).
    #[arg(long, value_name = "BYTES")]
    memory: Option<String>,
    /// CPU limit in CPUs (`0.5`, `2`): a CFS quota per 100 ms period.
    #[arg(long, value_name = "CPUS")]
    cpus: Option<String>,
    /// Size limit of each log file (`10m`); the log rotates past it.
    /// Without it the log grows unbounded.
    #[arg(long, value_name = "SIZE")]
    log_max_size: Option<String>,
    /// Log files kept, the current one included (default 1: the log is
    /// emptied when full). Needs --log-max-size.
    #[arg(long, value_name = "N")]
    log_max_files: Option<u32>,
    /// `host` (the host's network, the default), `bridge` (its own
    /// address on the agent's bridge, `network.subnet`, NAT outwards) or
    /// `none` (loopback only). `bridge` and `none` need the CNI plugins
    /// (package containernetworking-plugins).
    #[arg(long, value_name = "MODE")]
    network: Option<String>,
    /// `[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]`: forward a host port
    /// to the container (implies `--network bridge`); repeatable.
    #[arg(long = "publish", short = 'p', value_name = "PORTS")]
    publish: Vec<String>,
}

impl SettingsArgs {
    fn settings(&self) -> anyhow::Result<Settings> {
        Ok(settings::SettingsInput {
            privileged: self.privileged,
            cap_add: self.cap_add.clone(),
            cap_drop: self.cap_drop.clone(),
            mounts: self.mounts.clone(),
            volumes: self.volumes.clone(),
            memory: self.memory.clone(),
            cpus: self.cpus.clone(),
            log_max_size: self.log_max_size.clone(),
            log_max_files: self.log_max_files,
            network: self.network.clone(),
            publish: self.publish.clone(),
        }
        .settings()?)
    }
}

async fn volumes(cfg: &AgentConfig, json: bool) -> anyhow::Result<()> {
    let list = Runtime::new(cfg).await?.volumes().await?;
    if json {
        println!("{}", serde_json::to_string(&list)?);
    } else {
        println!("{:<24} {:<30} PATH", "NAME", "USED BY");
        for v in list {
            let used = if v.used_by.is_empty() {
                "-".to_owned()
            } else {
                v.used_by.join(",")
            };
            println!("{:<24} {:<30} {}", v.name, used, v.path.display());
        }
    }
    Ok(())
}
