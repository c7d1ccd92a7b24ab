//! The `berth-server` command: parses arguments, loads the configuration,
//! sets up logging, binds and serves.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use server::config::{Config, LogFormat, Overrides};
use tokio_util::sync::CancellationToken;

mod cli;
mod cli_nodes;

/// Berth's private container registry for fleets of edge appliances.
///
/// Configuration comes from defaults, then the file given with --config,
/// then BERTH_* environment variables (nested keys joined with "__", e.g.
/// BERTH_GC__GRACE_SECS=60), then the flags below.
#[derive(Parser, Debug)]
#[command(name = "berth-server", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the registry (OCI Distribution API), the Berth API and /metrics.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Write the bound address (host:port) to this file once listening;
        /// useful with --listen 127.0.0.1:0.
        #[arg(long, value_name = "FILE")]
        addr_file: Option<PathBuf>,
        /// Write the node endpoint's bound address to this file.
        #[arg(long, value_name = "FILE")]
        node_addr_file: Option<PathBuf>,
    },
    /// Operator commands: accounts, users, robots, credentials, nodes,
    /// signing keys, the audit log, garbage collection. Run them on the
    /// machine holding the data directory.
    Admin {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        opts: cli::AdminOpts,
        #[command(subcommand)]
        command: cli::Admin,
    },
    /// Check the configuration and report every problem, then exit
    /// (0 when valid). Suitable for systemd's ExecStartPre.
    Validate {
        #[command(flatten)]
        common: Common,
        /// Print the effective configuration as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
struct Common {
    /// TOML configuration file.
    #[arg(long, short, value_name = "FILE", env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:5000).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Data directory for metadata and blobs (default /var/lib/berth).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

impl Common {
    fn load(&self) -> anyhow::Result<Config> {
        let data_dir = match &self.data_dir {
            // Relative paths on the command line are meant from here.
            Some(d) if d.is_relative() => Some(std::env::current_dir()?.join(d)),
            other => other.clone(),
        };
        let overrides = Overrides {
            listen: self.listen,
            data_dir,
        };
        Ok(Config::load(self.config.as_deref(), &overrides)?)
    }
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Writes atomically so that a watcher never reads a partial address.
fn write_addr_file(path: &Path, addr: SocketAddr) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, addr.to_string()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

async fn shutdown_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    token.cancel();
}

async fn serve(
    common: Common,
    addr_file: Option<PathBuf>,
    node_addr_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let cfg = common.load()?;
    init_logging(&cfg);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let node = match cfg.nodes.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the node endpoint {addr}"))?,
        ),
        None => None,
    };
    if let (Some(path), Some(l)) = (node_addr_file, &node) {
        write_addr_file(&path, l.local_addr()?)?;
    }
    // Last: the address file tells watchers the server is ready to start.
    if let Some(path) = addr_file {
        write_addr_file(&path, listener.local_addr()?)?;
    }
    let token = CancellationToken::new();
    tokio::spawn(shutdown_signal(token.clone()));
    server::run_with(
        &cfg,
        server::Listeners {
            main: listener,
            node,
        },
        token,
    )
    .await?;
    tracing::info!("berth-server stopped");
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { common, json } => common.load().and_then(|cfg| {
            if json {
                println!("{}", serde_json::to_string_pretty(&cfg)?);
            } else {
                println!("configuration is valid");
            }
            Ok(())
        }),
        Command::Serve {
            common,
            addr_file,
            node_addr_file,
        } => runtime().and_then(|rt| rt.block_on(serve(common, addr_file, node_addr_file))),
        Command::Admin {
            common,
            opts,
            command,
        } => common.load().and_then(|cfg| {
            let rt = runtime()?;
            rt.block_on(cli::run(&cfg, command, opts))
        }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable line (causes joined), not a backtrace.
            eprintln!("berth-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
