//! berth-agent running containers under a real containerd + runc started by
//! the harness, from an image pulled from a real berth-server with the
//! node certificate: `run` (image config merged with `--env`, `--user`,
//! `--hostname` and a command), `logs`, `ps`, `stop` (SIGTERM honoured
//! within the timeout; SIGKILL after it when ignored), `rm`; `ctr` sees
//! the container while it exists and not after.
#![allow(clippy::unwrap_used)]

mod common_agent;
mod common_auth;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common_agent::{agent_config, agent_fails, agent_ok, busybox_layer, json, ps_entry};
use common_auth::{ACME, ACME_NS, AuthServer};
use test_support::images::LayerBuilder;
use test_support::{Arch, Image, ImageBuilder};
use tests::Containerd;

/// busybox with the applets the test uses, an `/etc/passwd` naming user
/// `app` (1234:2345) in a second layer, an environment variable and a
/// default command.
fn busybox_image() -> Image {
    let base = busybox_layer(&["sh", "echo", "sleep", "id", "hostname", "cat"]);
    let users = LayerBuilder::new().dir("etc/").file(
        "etc/passwd",
        0o644,
        Bytes::from_static(b"root:x:0:0:root:/:/bin/sh\napp:x:1234:2345:app:/:/bin/sh\n"),
    );
    ImageBuilder::new(Arch::Amd64)
        .layer(base.build())
        .layer(users.build())
        .env("GREETING=from-the-image")
        .env("KEPT=image-value")
        .cmd(&["/bin/sh", "-c", "echo default command"])
        .build()
}

/// The container ids `ctr containers ls` prints.
fn ctr_containers(ctrd: &Containerd) -> Vec<String> {
    ctrd.run_ctr(["containers", "ls"])
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Polls `logs` until it contains `needle` (the shim copies output
/// asynchronously).
fn wait_for_log(config: &Path, name: &str, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let out = agent_ok(config, &["logs", name]);
        if out.contains(needle) {
            return out;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{needle:?} not in the logs of {name} after 20 s:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn agent_runs_logs_stops_and_removes_containers() {
    let srv = AuthServer::start();
    let t = srv.setup_tenants();
    let ctrd = Containerd::start();
    let image = busybox_image();
    for tag in ["v1", "v2"] {
        srv.push_as(&t.acme_dev, &format!("{ACME_NS}/box"), &image, tag)
            .await;
    }
    let node = srv.enroll("edge-run", ACME, None);
    let config = agent_config(&srv, &node, &ctrd, srv.files());
    let image_name = format!("{}/{ACME_NS}/box:v1", srv.host());
    // Container ids must be unique on the machine (cgroups and runc's
    // state are per namespace and id, shared by every containerd).
    let pid = std::process::id();
    let name = format!("greeter-{pid}");
    let stubborn = format!("stubborn-{pid}");

    // Pulled with the node certificate, then run.
    agent_ok(&config, &["pull", "box:v1", "--json"]);
    // The init process traps SIGTERM (as PID 1 it would otherwise ignore
    // it) and says goodbye; stderr goes to the same log.
    let script = "trap 'echo got TERM; exit 0' TERM; \
                  echo \"greeting=$GREETING kept=$KEPT extra=$EXTRA\"; \
                  echo \"user=$(id -u):$(id -g) host=$(hostname)\"; \
                  echo to-stderr >&2; \
                  sleep 1000 & wait";
    let started = json(
        &config,
        &[
            "run",
            &name,
            "box:v1",
            "--env",
            "GREETING=from-the-flag",
            "--env",
            "EXTRA=x1",
            "--user",
            "app",
            "--hostname",
            "edge-box",
            "--json",
            "--",
            "/bin/sh",
            "-c",
            script,
        ],
    );
    assert_eq!(started["name"], name.as_str());
    assert_eq!(started["image"], image_name.as_str());
    assert_eq!(started["pulled"], false);
    assert!(started["pid"].as_u64().unwrap() > 0, "{started}");

    let log = wait_for_log(&config, &name, "to-stderr");
    assert!(
        log.contains("greeting=from-the-flag kept=image-value extra=x1"),
        "{log}"
    );
    assert!(log.contains("user=1234:2345 host=edge-box"), "{log}");

    let entry = ps_entry(&config, &name).unwrap();
    assert_eq!(entry["state"], "running", "{entry}");
    assert_eq!(entry["image"], image_name.as_str());
    assert!(entry["exit_status"].is_null(), "{entry}");
    assert!(ctr_containers(&ctrd).contains(&name));
    let table = agent_ok(&config, &["ps"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&name) && l.contains(" running ")),
        "{table}"
    );
    // The same name twice is refused.
    let err = agent_fails(&config, &["run", &name, "box:v1"]);
    assert!(err.contains("already exists"), "{err}");
    // A running container is not removed without --force.
    let err = agent_fails(&config, &["rm", &name]);
    assert!(err.contains("is running"), "{err}");

    // SIGTERM is honoured well within the timeout.
    let t0 = Instant::now();
    let stopped = json(&config, &["stop", &name, "--timeout", "20", "--json"]);
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    assert_eq!(stopped["killed"], false, "{stopped}");
    assert_eq!(stopped["exit_status"], 0, "{stopped}");
    assert_eq!(stopped["timeout_secs"], 20, "{stopped}");
    assert!(wait_for_log(&config, &name, "got TERM").contains("got TERM"));
    let entry = ps_entry(&config, &name).unwrap();
    assert_eq!(entry["state"], "stopped", "{entry}");
    assert_eq!(entry["exit_status"], 0, "{entry}");
    assert!(ctr_containers(&ctrd).contains(&name));

    agent_ok(&config, &["rm", &name]);
    assert!(ps_entry(&config, &name).is_none());
    assert!(!ctr_containers(&ctrd).contains(&name));
    let snapshots = ctrd
        .run_ctr(["snapshots", "--snapshotter", "overlayfs", "ls"])
        .unwrap();
    assert!(!snapshots.contains(&name), "{snapshots}");
    assert!(
        !srv.files()
            .join("agent-data/containers")
            .join(&name)
            .exists()
    );
    let err = agent_fails(&config, &["logs", &name]);
    assert!(err.contains("no container"), "{err}");

    // An image not pulled yet is pulled by `run`; a PID 1 without a
    // SIGTERM handler ignores it and is killed after the timeout.
    let started = json(
        &config,
        &[
            "run",
            &stubborn,
            "box:v2",
            "--stop-timeout",
            "1",
            "--json",
            "--",
            "/bin/sleep",
            "1000",
        ],
    );
    assert_eq!(started["pulled"], true, "{started}");
    let entry = ps_entry(&config, &stubborn).unwrap();
    assert_eq!(entry["state"], "running", "{entry}");
    let t0 = Instant::now();
    // No --timeout: the container's own --stop-timeout applies.
    let stopped = json(&config, &["stop", &stubborn, "--json"]);
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    assert_eq!(stopped["timeout_secs"], 1, "{stopped}");
    assert_eq!(stopped["killed"], true, "{stopped}");
    assert_eq!(stopped["exit_status"], 137, "{stopped}");
    // The image's own command and environment, by default.
    agent_ok(&config, &["rm", &stubborn]);
    let plain = format!("plain-{pid}");
    agent_ok(&config, &["run", &plain, "box:v1"]);
    assert!(wait_for_log(&config, &plain, "default command").contains("default command"));
    let start = Instant::now();
    loop {
        let entry = ps_entry(&config, &plain).unwrap();
        if entry["state"] == "stopped" {
            assert_eq!(entry["exit_status"], 0, "{entry}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{entry}");
        std::thread::sleep(Duration::from_millis(100));
    }
    agent_ok(&config, &["rm", &plain]);
    assert!(
        ctr_containers(&ctrd).is_empty(),
        "{:?}",
        ctr_containers(&ctrd)
    );
}
