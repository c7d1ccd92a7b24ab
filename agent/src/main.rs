//! `berth-agent`: the node daemon and the local CLI for people on the box
//! (`pull`, `images`, `rmi`, `run`, `ps`, `logs`, `stop`, `rm`, `validate`,
//! `daemon`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use agent::config::{AgentConfig, DEFAULT_CONFIG_PATH, Overrides};
use agent::containerd::Containerd;
use agent::runtime::spec::Overrides as RunOverrides;
use agent::runtime::{RunRequest, Runtime};
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
        #[arg(long)]
        json: bool,
        /// Replaces the image's command (its entrypoint stays): `-- CMD ARGS…`.
        #[arg(last = true, value_name = "CMD")]
        cmd: Vec<String>,
    },
    /// List the containers with their state and exit status.
    Ps {
        #[arg(long)]
        json: bool,
    },
    /// Print a container's output (stdout and stderr, interleaved).
    Logs { name: String },
    /// Stop a container: SIGTERM, then SIGKILL after the timeout.
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
    /// Run as the node daemon: metrics endpoint, graceful shutdown.
    Daemon,
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
    let cfg = AgentConfig::load(&path, required, &cli.overrides())
        .with_context(|| format!("configuration {}", path.display()))?;
    init_tracing(Some(&cfg));
    match cli.command {
        Command::Validate { .. } => Ok(()),
        Command::Pull { reference, json } => pull(&cfg, &reference, json).await,
        Command::Images { json } => images(&cfg, json).await,
        Command::Rmi { reference } => rmi(&cfg, &reference).await,
        Command::Run {
            name,
            image,
            env,
            hostname,
            stop_timeout,
            user,
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
                },
                stop_timeout: stop_timeout.map(std::time::Duration::from_secs),
            };
            run(&cfg, &req, json).await
        }
        Command::Ps { json } => ps(&cfg, json).await,
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
    if json {
        println!("{}", serde_json::to_string(&list)?);
    } else {
        println!(
            "{:<24} {:<10} {:<8} {:<6} IMAGE",
            "NAME", "STATE", "PID", "EXIT"
        );
        for c in list {
            let opt = |v: Option<u32>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
            println!(
                "{:<24} {:<10} {:<8} {:<6} {}",
                c.name,
                c.state,
                opt(c.pid),
                opt(c.exit_status),
                c.image
            );
        }
    }
    Ok(())
}

async fn logs(cfg: &AgentConfig, name: &str) -> anyhow::Result<()> {
    let path = Runtime::new(cfg).await?.logs(name).await?;
    let mut file = std::fs::File::open(&path).with_context(|| format!("{}", path.display()))?;
    std::io::copy(&mut file, &mut std::io::stdout().lock())?;
    Ok(())
}

async fn stop(
    cfg: &AgentConfig,
    name: &str,
    timeout: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
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
    }
    Ok(())
}
