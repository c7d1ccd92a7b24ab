//! `berth-agent`: the node daemon and the local CLI for people on the box
//! (`pull`, `images`, `rmi`, `validate`, `daemon`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use agent::config::{AgentConfig, DEFAULT_CONFIG_PATH, Overrides};
use agent::containerd::Containerd;
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
