//! Shared set-up of the berth-agent tests (`agent_*.rs`): the agent's
//! configuration file for an enrolled node, running the `berth-agent`
//! binary, and reading what containerd and the kernel hold.
//!
//! Each test file compiles this module on its own (next to `common_auth`,
//! which it builds on) and uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use test_support::images::LayerBuilder;
use test_support::{Image, require_tool, sha256_digest, workspace_bin};
use tests::Containerd;

use crate::common_auth::{ACME_NS, AuthServer, Enrolled};

/// What differs between the agent configurations of the tests.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// `registry.url`; the server's own URL when unset (a fault-injecting
    /// proxy in front of it otherwise).
    pub registry_url: Option<String>,
    /// `pull.min_free_bytes` (0 by default here: test machines' disks are
    /// small and the agent's 256 MiB reserve is irrelevant to the tests).
    pub min_free_bytes: u64,
    pub bandwidth_limit_bytes_per_sec: Option<u64>,
    /// `pull.max_attempts` (the agent's default when unset).
    pub max_attempts: Option<u32>,
    /// JSON log lines (tests that read the daemon's log).
    pub log_json: bool,
    /// `pull.unpack` (`agent` or `containerd`; the agent's default when unset).
    pub unpack: Option<&'static str>,
    /// `node.auth_url`; the server's node endpoint when unset (a
    /// forwarder in front of it otherwise).
    pub node_url: Option<String>,
    /// `control.backoff_max_secs` (the agent's default when unset).
    pub control_backoff_max_secs: Option<u64>,
}

/// The agent's configuration file for `node` against `srv` and `ctrd`.
pub fn agent_config(srv: &AuthServer, node: &Enrolled, ctrd: &Containerd, dir: &Path) -> PathBuf {
    agent_config_with(srv, node, ctrd, dir, &AgentOptions::default())
}

/// [`agent_config`] with `opts`.
pub fn agent_config_with(
    srv: &AuthServer,
    node: &Enrolled,
    ctrd: &Containerd,
    dir: &Path,
    opts: &AgentOptions,
) -> PathBuf {
    let bandwidth = opts
        .bandwidth_limit_bytes_per_sec
        .map(|b| format!("bandwidth_limit_bytes_per_sec = {b}\n"))
        .unwrap_or_default();
    let attempts = opts
        .max_attempts
        .map(|n| format!("max_attempts = {n}\n"))
        .unwrap_or_default();
    let unpack = opts
        .unpack
        .map(|u| format!("unpack = \"{u}\"\n"))
        .unwrap_or_default();
    let control = opts
        .control_backoff_max_secs
        .map(|s| format!("\n[control]\nbackoff_max_secs = {s}\n"))
        .unwrap_or_default();
    let log = if opts.log_json {
        "\n[log]\nlevel = \"info\"\nformat = \"json\"\n"
    } else {
        ""
    };
    let toml = format!(
        r#"data_dir = "{data}"
metrics_listen = "127.0.0.1:0"

[registry]
url = "{url}"
namespace = "{ACME_NS}"

[node]
auth_url = "{node_url}"
cert_file = "{node_dir}/node.crt"
key_file = "{node_dir}/node.key"
ca_file = "{node_dir}/ca.crt"

[containerd]
socket = "{socket}"
namespace = "{ns}"
snapshotter = "overlayfs"
root = "{root}"

[pull]
max_parallel_layers = 3
backoff_base_ms = 50
backoff_max_ms = 500
min_free_bytes = {min_free}
{bandwidth}{attempts}{unpack}{log}{control}"#,
        data = dir.join("agent-data").display(),
        url = opts.registry_url.clone().unwrap_or_else(|| srv.url()),
        node_url = opts
            .node_url
            .clone()
            .unwrap_or_else(|| format!("https://{}", srv.node_addr)),
        node_dir = node.dir.display(),
        socket = ctrd.socket().display(),
        ns = ctrd.namespace(),
        root = ctrd.root().display(),
        min_free = opts.min_free_bytes,
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

pub fn agent(config: &Path, args: &[&str]) -> Output {
    Command::new(workspace_bin("berth-agent"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Runs the agent, which must succeed; its stdout.
pub fn agent_ok(config: &Path, args: &[&str]) -> String {
    let out = agent(config, args);
    assert!(
        out.status.success(),
        "berth-agent {args:?} failed with {}:\nstderr: {}\nstdout: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the agent, which must fail; its stderr.
pub fn agent_fails(config: &Path, args: &[&str]) -> String {
    let out = agent(config, args);
    assert!(
        !out.status.success(),
        "berth-agent {args:?} should have failed; printed {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stderr).unwrap()
}

/// The digest `ctr images ls` lists for `name`.
pub fn listed_digest(ctrd: &Containerd, name: &str) -> Option<String> {
    ctrd.images()
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, d)| d)
}

/// The agent's `--json` output of `args`.
pub fn json(config: &Path, args: &[&str]) -> Value {
    serde_json::from_str(agent_ok(config, args).trim()).unwrap()
}

/// `ps --json`'s entry for `name`, if listed.
pub fn ps_entry(config: &Path, name: &str) -> Option<Value> {
    json(config, &["ps", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
}

/// The host directory of process `pid`'s cgroup for `controller` (cgroups v1).
pub fn cgroup_dir(pid: u64, controller: &str) -> PathBuf {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let line = cgroups
        .lines()
        .find(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|c| c == controller))
        })
        .unwrap_or_else(|| panic!("no {controller} cgroup in {cgroups}"));
    let path = line.splitn(3, ':').nth(2).unwrap();
    Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(path.trim_start_matches('/'))
}

/// A file's text without surrounding whitespace.
pub fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// A layer with the host's static busybox as `/bin/busybox` and `applets`
/// linked to it in `/bin`.
pub fn busybox_layer(applets: &[&str]) -> LayerBuilder {
    let busybox = std::fs::read(require_tool("busybox")).unwrap();
    let mut base = LayerBuilder::new()
        .dir("bin/")
        .file("bin/busybox", 0o755, Bytes::from(busybox));
    for applet in applets {
        base = base.symlink(&format!("bin/{applet}"), "busybox");
    }
    base
}

/// Runs `/bin/sh -c script` in container `name` from `image` with `flags`
/// to its end; its output (the script echoes `end` last), then removes it.
pub fn run_to_end(config: &Path, name: &str, image: &str, flags: &[&str], script: &str) -> String {
    let mut args = vec!["run", name, image];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--", "/bin/sh", "-c", script]);
    agent_ok(config, &args);
    let start = Instant::now();
    loop {
        let entry = ps_entry(config, name).unwrap();
        if entry["state"] == "stopped" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{entry}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The shim copies output asynchronously: "end" marks its last line.
    let start = Instant::now();
    loop {
        let out = agent_ok(config, &["logs", name]);
        if out.contains("end") || start.elapsed() > Duration::from_secs(10) {
            agent_ok(config, &["rm", name]);
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// containerd's chain id of the image's top layer.
pub fn top_chain_id(image: &Image) -> String {
    let config: Value = serde_json::from_slice(&image.config.data).unwrap();
    let mut chain = String::new();
    for d in config["rootfs"]["diff_ids"].as_array().unwrap() {
        let d = d.as_str().unwrap();
        chain = if chain.is_empty() {
            d.to_owned()
        } else {
            sha256_digest(format!("{chain} {d}").as_bytes())
        };
    }
    chain
}

/// A running `berth-agent daemon` (JSON log, `log_json` in the
/// configuration) and its metrics address; its log goes to a file.
pub struct Daemon {
    child: Child,
    pub metrics: SocketAddr,
}

impl Daemon {
    /// Starts the daemon and reads its metrics address from its JSON log.
    pub fn start(config: &Path, log: &Path) -> Daemon {
        let mut child = Command::new(workspace_bin("berth-agent"))
            .arg("--config")
            .arg(config)
            .arg("daemon")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = log.to_owned();
        // The rest of the log goes to a file, for a failing test to show.
        std::thread::spawn(move || {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                use std::io::Write;
                let _ = writeln!(file, "{line}");
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["fields"]["message"] == "berth-agent daemon running"
                    && let Some(addr) = v["fields"]["addr"].as_str()
                {
                    let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                }
            }
        });
        let metrics = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the daemon did not report its metrics address");
        Daemon { child, metrics }
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.metrics))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// SIGTERM and a clean exit.
    pub fn stop(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "daemon exited with {status}");
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "daemon did not stop"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: a crash.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
