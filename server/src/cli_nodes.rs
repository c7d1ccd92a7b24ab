//! `berth-server admin nodes …`: the operator's remote commands, sent
//! through the running server's admin socket (the node API in operator
//! mode: every account). A command is queued, delivered when the node is
//! connected, and followed here until it finishes (pull progress as bars),
//! unless `--no-wait`.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use server::config::Config;

#[derive(Subcommand, Debug)]
pub enum NodesCmd {
    /// List nodes: online state, agent, platform, last seen.
    List {
        /// Only this account's nodes.
        #[arg(long)]
        account: Option<String>,
    },
    /// A node's status: containers, images, drift, desired state, recent commands.
    Status { node: String },
    /// Pull an image on a node (short names resolve into its namespace).
    Pull {
        node: String,
        image: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Run a container on a node: once, or supervised with --type.
    Run(Box<RunArgs>),
    /// Stop a container on a node.
    Stop {
        node: String,
        name: String,
        /// Seconds between SIGTERM and SIGKILL (default: the container's).
        #[arg(long)]
        timeout: Option<u64>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Remove a container (and its definition) from a node.
    Rm {
        node: String,
        name: String,
        /// Kill it first if it runs.
        #[arg(long, short = 'f')]
        force: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List a node's images.
    Images {
        node: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List a node's containers.
    Ps {
        node: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Delete an image from a node (refused while a container uses it).
    Rmi {
        node: String,
        image: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// The end of a container's output on a node.
    Logs {
        node: String,
        name: String,
        /// Bytes from the end (default 64 KiB, at most 1 MiB).
        #[arg(long, default_value_t = 0)]
        tail: u64,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Test the node's way to the registry: a node token, and IMAGE's manifest if given.
    Test {
        node: String,
        image: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Show a node's desired state, or replace it with --file (a JSON list
    /// of container specs, as `run` builds them; `[]` empties it).
    Desired {
        node: String,
        #[arg(long, value_name = "FILE")]
        file: Option<std::path::PathBuf>,
    },
    /// One command's state, progress and result.
    Command { node: String, id: String },
}

#[derive(Args, Debug, Clone, Copy)]
pub struct WaitArgs {
    /// Queue the command and print its id without waiting for the result.
    #[arg(long)]
    no_wait: bool,
    /// Give up waiting after this many seconds (the command stays queued).
    #[arg(long, default_value_t = 300)]
    wait_secs: u64,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    node: String,
    /// The container's name on the node.
    name: String,
    image: String,
    /// `service`, `recurring` or `on-demand` (supervised by the agent, kept
    /// across reboots); without it the container runs once.
    #[arg(long = "type")]
    exec_type: Option<String>,
    /// Cron schedule of a recurring container.
    #[arg(long)]
    schedule: Option<String>,
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    env: Vec<String>,
    #[arg(long)]
    hostname: Option<String>,
    #[arg(long, short = 'u')]
    user: Option<String>,
    #[arg(long, value_name = "SECS")]
    stop_timeout: Option<u64>,
    #[arg(long)]
    privileged: bool,
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
    #[arg(long = "cap-drop", value_name = "CAP")]
    cap_drop: Vec<String>,
    /// As `berth-agent run --mount`.
    #[arg(long = "mount", value_name = "SPEC")]
    mounts: Vec<String>,
    #[arg(long = "volume", short = 'v', value_name = "NAME:/TARGET[:ro]")]
    volumes: Vec<String>,
    #[arg(long = "publish", short = 'p', value_name = "PORTS")]
    publish: Vec<String>,
    #[arg(long)]
    network: Option<String>,
    #[arg(long)]
    memory: Option<String>,
    #[arg(long)]
    cpus: Option<String>,
    #[arg(long)]
    log_max_size: Option<String>,
    #[arg(long)]
    log_max_files: Option<u32>,
    /// Health check run with /bin/sh -c inside the container.
    #[arg(long, value_name = "SHELL")]
    health_cmd: Option<String>,
    #[command(flatten)]
    wait: WaitArgs,
    /// Replaces the image's command: `-- CMD ARGS…`.
    #[arg(last = true, value_name = "CMD")]
    cmd: Vec<String>,
}

impl RunArgs {
    fn spec(&self) -> Value {
        json!({
            "name": self.name, "image": self.image,
            "exec_type": self.exec_type.clone().unwrap_or_default(),
            "schedule": self.schedule.clone().unwrap_or_default(),
            "cmd": self.cmd, "env": self.env,
            "hostname": self.hostname.clone().unwrap_or_default(),
            "user": self.user.clone().unwrap_or_default(),
            "stop_timeout_secs": self.stop_timeout,
            "privileged": self.privileged, "cap_add": self.cap_add, "cap_drop": self.cap_drop,
            "mounts": self.mounts, "volumes": self.volumes, "publish": self.publish,
            "network": self.network.clone().unwrap_or_default(),
            "memory": self.memory.clone().unwrap_or_default(),
            "cpus": self.cpus.clone().unwrap_or_default(),
            "log_max_size": self.log_max_size.clone().unwrap_or_default(),
            "log_max_files": self.log_max_files,
            "health": self.health_cmd.as_ref().map(|s| json!({"shell": s})),
        })
    }
}

/// One request to the running server's admin socket: status and JSON.
pub async fn admin_request(
    cfg: &Config,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(hyper::StatusCode, Value)> {
    use http_body_util::{BodyExt, Full};
    let socket = cfg.admin_socket_path();
    let stream = tokio::net::UnixStream::connect(&socket)
        .await
        .with_context(|| {
            format!(
                "connecting to {} (is berth-server running?)",
                socket.display()
            )
        })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let bytes = match &body {
        Some(v) => serde_json::to_vec(v)?,
        None => Vec::new(),
    };
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "localhost");
    if body.is_some() {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let resp = sender
        .send_request(req.body(Full::new(bytes::Bytes::from(bytes)))?)
        .await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    let value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| json!({"text": String::from_utf8_lossy(&body)}))
    };
    Ok((status, value))
}

/// The error message of an API answer, for one readable line.
fn api_failure(status: hyper::StatusCode, v: &Value) -> anyhow::Error {
    let msg = v["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| v.to_string());
    anyhow::anyhow!("{msg} ({status})")
}

async fn get(cfg: &Config, path: &str) -> anyhow::Result<Value> {
    let (status, v) = admin_request(cfg, "GET", path, None).await?;
    if !status.is_success() {
        return Err(api_failure(status, &v));
    }
    Ok(v)
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub async fn run(cfg: &Config, cmd: NodesCmd, json_mode: bool) -> anyhow::Result<()> {
    let out = |v: &Value, text: String| {
        if json_mode {
            println!("{v}");
        } else {
            println!("{text}");
        }
    };
    let (node, action, wait) = match cmd {
        NodesCmd::List { account } => {
            let path = match account {
                Some(a) => format!("/api/v1/nodes?account={}", enc(&a)),
                None => "/api/v1/nodes".into(),
            };
            let v = get(cfg, &path).await?;
            let mut lines = vec![format!(
                "{:<38} {:<20} {:<8} {:<10} {:<16} LAST SEEN",
                "ID", "NAME", "STATE", "AGENT", "PLATFORM"
            )];
            for n in v["nodes"].as_array().into_iter().flatten() {
                let state = if n["revoked"].as_bool() == Some(true) {
                    "revoked"
                } else if n["online"].as_bool() == Some(true) {
                    "online"
                } else {
                    "offline"
                };
                lines.push(format!(
                    "{:<38} {:<20} {:<8} {:<10} {:<16} {}",
                    cell(&n["id"]),
                    cell(&n["name"]),
                    state,
                    cell(&n["agent_version"]),
                    cell(&n["platform"]),
                    cell(&n["last_seen"])
                ));
            }
            out(&v, lines.join("\n"));
            return Ok(());
        }
        NodesCmd::Status { node } => {
            let v = get(cfg, &format!("/api/v1/nodes/{}", enc(&node))).await?;
            out(&v, serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        NodesCmd::Command { node, id } => {
            let v = get(
                cfg,
                &format!("/api/v1/nodes/{}/commands/{}", enc(&node), enc(&id)),
            )
            .await?;
            out(&v, serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        NodesCmd::Desired { node, file } => {
            let path = format!("/api/v1/nodes/{}/desired", enc(&node));
            let v = match file {
                None => get(cfg, &path).await?,
                Some(f) => {
                    let text = std::fs::read_to_string(&f)
                        .with_context(|| format!("reading {}", f.display()))?;
                    let containers: Value = serde_json::from_str(&text)
                        .with_context(|| format!("{}: not JSON", f.display()))?;
                    let (status, v) =
                        admin_request(cfg, "PUT", &path, Some(json!({ "containers": containers })))
                            .await?;
                    if !status.is_success() {
                        return Err(api_failure(status, &v));
                    }
                    v
                }
            };
            out(&v, serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        NodesCmd::Pull { node, image, wait } => (node, json!({"pull": {"image": image}}), wait),
        NodesCmd::Run(r) => (
            r.node.clone(),
            json!({"run": {"container": r.spec()}}),
            r.wait,
        ),
        NodesCmd::Stop {
            node,
            name,
            timeout,
            wait,
        } => (
            node,
            json!({"stop": {"name": name, "timeout_secs": timeout}}),
            wait,
        ),
        NodesCmd::Rm {
            node,
            name,
            force,
            wait,
        } => (
            node,
            json!({"remove": {"name": name, "force": force}}),
            wait,
        ),
        NodesCmd::Images { node, wait } => (node, json!({"list_images": {}}), wait),
        NodesCmd::Ps { node, wait } => (node, json!({"list_containers": {}}), wait),
        NodesCmd::Rmi { node, image, wait } => {
            (node, json!({"delete_image": {"image": image}}), wait)
        }
        NodesCmd::Logs {
            node,
            name,
            tail,
            wait,
        } => (
            node,
            json!({"logs": {"name": name, "tail_bytes": tail}}),
            wait,
        ),
        NodesCmd::Test { node, image, wait } => (
            node,
            json!({"test_registry": {"image": image.unwrap_or_default()}}),
            wait,
        ),
    };
    let base = format!("/api/v1/nodes/{}/commands", enc(&node));
    let (status, cmd) =
        admin_request(cfg, "POST", &base, Some(json!({ "action": action }))).await?;
    if !status.is_success() {
        return Err(api_failure(status, &cmd));
    }
    let id = cmd["id"].as_str().unwrap_or_default().to_owned();
    if wait.no_wait {
        out(&cmd, format!("command {id} queued"));
        return Ok(());
    }
    let done = follow(cfg, &format!("{base}/{}", enc(&id)), wait, json_mode).await?;
    let result = &done["result"];
    let error = result["error"].as_str().unwrap_or_default();
    match done["state"].as_str() {
        Some("succeeded") => {
            out(&done, describe(&result["output"]));
            Ok(())
        }
        Some("failed") => bail!("command {id} failed on the node: {error}"),
        Some("expired") => bail!("command {id} expired before the node connected"),
        other => bail!(
            "command {id} is still {} after {} s (it stays queued; `berth-server admin nodes command {node} {id}`)",
            other.unwrap_or("unknown"),
            wait.wait_secs
        ),
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// Polls a command until it is final or the wait is over; progress bars
/// for pulls (on a terminal).
async fn follow(
    cfg: &Config,
    path: &str,
    wait: WaitArgs,
    json_mode: bool,
) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait.wait_secs);
    let multi = MultiProgress::new();
    if json_mode {
        multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style =
        ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    let mut last_state = String::new();
    let spinner = multi.add(ProgressBar::new_spinner());
    loop {
        let v = get(cfg, path).await?;
        let state = v["state"].as_str().unwrap_or_default().to_owned();
        if state != last_state {
            spinner.set_message(format!("command {state}"));
            last_state.clone_from(&state);
        }
        for b in v["progress"]["blobs"].as_array().into_iter().flatten() {
            let digest = b["digest"].as_str().unwrap_or_default().to_owned();
            let bar = bars.entry(digest.clone()).or_insert_with(|| {
                let bar = multi.add(ProgressBar::new(b["total"].as_u64().unwrap_or(0)));
                bar.set_style(style.clone());
                bar.set_prefix(
                    digest
                        .split(':')
                        .nth(1)
                        .unwrap_or(&digest)
                        .chars()
                        .take(12)
                        .collect::<String>(),
                );
                bar
            });
            bar.set_length(b["total"].as_u64().unwrap_or(0));
            bar.set_position(b["done"].as_u64().unwrap_or(0));
            bar.set_message(b["state"].as_str().unwrap_or_default().to_owned());
        }
        if matches!(state.as_str(), "succeeded" | "failed" | "expired") {
            for b in bars.values() {
                b.finish();
            }
            spinner.finish_and_clear();
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            spinner.finish_and_clear();
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A result's output in one readable block.
fn describe(o: &Value) -> String {
    if let Some(p) = o.get("pulled") {
        return format!(
            "{} {} ({}, {} layers, {} bytes downloaded)",
            cell(&p["image"]),
            cell(&p["digest"]),
            cell(&p["platform"]),
            cell(&p["layers"]),
            cell(&p["downloaded"])
        );
    }
    if let Some(s) = o.get("started") {
        return match s["how"].as_str() {
            Some("started") => format!("{} started (pid {})", cell(&s["name"]), cell(&s["pid"])),
            how => format!(
                "{} defined as {} on the node; its supervisor runs it",
                cell(&s["name"]),
                how.unwrap_or("?")
            ),
        };
    }
    if let Some(s) = o.get("stopped") {
        return format!(
            "{} stopped (exit status {})",
            cell(&s["name"]),
            cell(&s["exit_status"])
        );
    }
    for key in ["removed", "image_deleted"] {
        if let Some(d) = o.get(key) {
            return cell(&d["message"]);
        }
    }
    if let Some(l) = o.get("logs") {
        return l["text"].as_str().unwrap_or_default().trim_end().to_owned();
    }
    if let Some(i) = o.get("images") {
        let mut lines = vec![format!("{:<60} {:<72} SIZE", "NAME", "DIGEST")];
        for i in i["images"].as_array().into_iter().flatten() {
            lines.push(format!(
                "{:<60} {:<72} {}",
                cell(&i["name"]),
                cell(&i["digest"]),
                cell(&i["size"])
            ));
        }
        return lines.join("\n");
    }
    if let Some(c) = o.get("containers") {
        let mut lines = vec![format!(
            "{:<24} {:<10} {:<8} {:<10} IMAGE",
            "NAME", "STATE", "PID", "TYPE"
        )];
        for c in c["containers"].as_array().into_iter().flatten() {
            lines.push(format!(
                "{:<24} {:<10} {:<8} {:<10} {}",
                cell(&c["name"]),
                cell(&c["state"]),
                cell(&c["pid"]),
                c["exec_type"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .unwrap_or("-"),
                cell(&c["image"])
            ));
        }
        return lines.join("\n");
    }
    if let Some(r) = o.get("registry") {
        return format!(
            "registry {}: token {}, API {}, {} ms{}{}",
            cell(&r["registry"]),
            if r["token_ok"].as_bool() == Some(true) {
                "ok"
            } else {
                "FAILED"
            },
            if r["api_ok"].as_bool() == Some(true) {
                "ok"
            } else {
                "FAILED"
            },
            cell(&r["latency_ms"]),
            r["resolved"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(|d| format!(", resolved {d}"))
                .unwrap_or_default(),
            r["detail"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(|d| format!(": {d}"))
                .unwrap_or_default(),
        );
    }
    o.to_string()
}
