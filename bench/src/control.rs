//! The control plane's figures: berth-server's memory per idle node
//! connection, and the round trip of a command.
//!
//! One berth-server (accounts on, node endpoint); N nodes enrolled with
//! `admin node enroll`; N stand-in nodes (`control_plane_client::stand_in`:
//! the real client library, TLS with each node's own certificate,
//! heartbeats, reports, but no containerd) connected from this process.
//! Memory: the server's VmRSS with no node connected (after one connected
//! and left, so that lazily built state exists), then with all N connected
//! and idle for a few heartbeats; the difference divided by N. Round trip:
//! a developer POSTs a `list-images` command to one node through the
//! management API and polls the command every 2 ms until it is
//! `succeeded`; wall time from the POST to that answer (the 2 ms poll is
//! part of it).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use control_plane_client::{ClientConfig, stand_in};
use serde_json::{Value, json};
use test_support::BerthServer;
use tokio::sync::watch;

use crate::auth::admin_env;
use crate::{progress, system};

const ACCOUNT: &str = "fleet";
const NAMESPACE: &str = "fleet.local";

pub struct Figures {
    pub nodes: usize,
    pub rss_before: u64,
    pub rss_connected: u64,
    pub per_node_bytes: f64,
    pub rtt_ms: Vec<f64>,
    pub connect_secs: f64,
}

fn env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("BERTH_AUTH__ENABLED", "true"),
        ("BERTH_NODES__LISTEN", "127.0.0.1:0"),
        ("BERTH_NODES__HEARTBEAT_SECS", "2"),
    ]
}

struct Node {
    id: String,
    cfg: ClientConfig,
}

pub async fn measure(binary: &Path, n: usize, commands: usize) -> anyhow::Result<Figures> {
    let files = tempfile::Builder::new()
        .prefix("berth-bench-control-")
        .tempdir()?;
    let node_addr_file = files.path().join("node-addr");
    let mut builder = BerthServer::builder()
        .binary(binary)
        .arg("--node-addr-file")
        .arg(&node_addr_file);
    for (k, v) in env() {
        builder = builder.env(k, v);
    }
    let server = builder.try_start().context("starting berth-server")?;
    let node_addr = std::fs::read_to_string(&node_addr_file)?.trim().to_owned();
    let dir = server.data_dir().to_path_buf();
    let env = env();
    admin_env(
        binary,
        &dir,
        &["account", "create", ACCOUNT, "--namespace", NAMESPACE],
        &env,
    )?;
    admin_env(
        binary,
        &dir,
        &[
            "user",
            "create",
            "operator",
            "--account",
            ACCOUNT,
            "--role",
            "developer",
        ],
        &env,
    )?;
    let minted = admin_env(binary, &dir, &["credential", "mint", "operator"], &env)?;
    let secret = minted["secret"].as_str().context("no secret")?.to_owned();

    progress::line(format!("control: enrolling {n} nodes"));
    let mut nodes = Vec::with_capacity(n);
    for i in 0..=n {
        let out = files.path().join(format!("node-{i}"));
        let name = format!("node-{i}");
        let v = admin_env(
            binary,
            &dir,
            &[
                "node",
                "enroll",
                &name,
                "--account",
                ACCOUNT,
                "--out",
                &out.display().to_string(),
            ],
            &env,
        )?;
        let id = v["node"]["id"]
            .as_str()
            .or_else(|| v["id"].as_str())
            .context("enroll printed no node id")?
            .to_owned();
        let read = |f: &str| std::fs::read_to_string(out.join(f));
        let cfg = ClientConfig::new(
            format!("https://{node_addr}"),
            read("ca.crt")?,
            read("node.crt")?,
            read("node.key")?,
        );
        nodes.push(Node { id, cfg });
    }
    let warm = nodes.pop().context("no warm-up node")?;
    let (stop_tx, stop_rx) = watch::channel(false);

    // One node in and out first: what a first connection builds once (TLS
    // and HTTP/2 machinery, store statements) is not per-node memory.
    {
        let (warm_stop_tx, warm_stop) = watch::channel(false);
        let mut node = stand_in::spawn(warm.cfg.clone(), warm_stop);
        node.connected(Duration::from_secs(60))
            .await
            .map_err(anyhow::Error::msg)?;
        let _ = warm_stop_tx.send(true);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = server.pid();
    let rss_before = system::proc_status_bytes(pid, "VmRSS")?;

    let started = Instant::now();
    let mut links: Vec<_> = nodes
        .iter()
        .map(|node| stand_in::spawn(node.cfg.clone(), stop_rx.clone()))
        .collect();
    for link in &mut links {
        link.connected(Duration::from_secs(60))
            .await
            .map_err(anyhow::Error::msg)
            .context("a stand-in node")?;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    progress::line(format!(
        "control: {n} nodes connected in {connect_secs:.1} s; idle for 6 s"
    ));
    tokio::time::sleep(Duration::from_secs(6)).await;
    let rss_connected = system::proc_status_bytes(pid, "VmRSS")?;

    let http = reqwest::Client::builder().no_proxy().build()?;
    let base = server.url();
    let mut rtt_ms = Vec::with_capacity(commands);
    for i in 0..commands {
        let node = &nodes[i % nodes.len()];
        let t0 = Instant::now();
        let resp = http
            .post(format!("{base}/api/v1/nodes/{}/commands", node.id))
            .basic_auth("operator", Some(&secret))
            .json(&json!({"action": {"list_images": {}}}))
            .send()
            .await?;
        ensure!(
            resp.status().is_success(),
            "POST command: {}",
            resp.status()
        );
        let cmd: Value = resp.json().await?;
        let id = cmd["id"].as_str().context("no command id")?.to_owned();
        loop {
            let c: Value = http
                .get(format!("{base}/api/v1/nodes/{}/commands/{id}", node.id))
                .basic_auth("operator", Some(&secret))
                .send()
                .await?
                .json()
                .await?;
            match c["state"].as_str() {
                Some("succeeded") => break,
                Some("failed" | "expired") => anyhow::bail!("command {id} ended {c}"),
                _ => tokio::time::sleep(Duration::from_millis(2)).await,
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(30),
                "command {id} took over 30 s"
            );
        }
        rtt_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = stop_tx.send(true);
    Ok(Figures {
        nodes: n,
        rss_before,
        rss_connected,
        per_node_bytes: (rss_connected.saturating_sub(rss_before)) as f64 / n as f64,
        rtt_ms,
        connect_secs,
    })
}
