//! The control plane end to end: a real berth-server (accounts on, node
//! endpoint), `berth-agent daemon` holding its mTLS gRPC stream, a real
//! containerd + runc started by the harness, an image pushed with skopeo.
//! The operator drives the node with `berth-server admin nodes …` only:
//! remote pull (the image appears in containerd), run, status and logs back
//! on the CLI, stop, remove, connectivity test, a desired state the agent
//! reconciles, a command queued while the node is offline delivered once
//! when it reconnects, and revocation closing the stream.
#![allow(clippy::unwrap_used)]

mod common_agent;
mod common_auth;

use std::path::Path;
use std::time::{Duration, Instant};

use common_agent::{AgentOptions, Daemon, agent_config_with, busybox_layer, listed_digest};
use common_auth::{ACME, ACME_NS, AuthServer, GLOBEX};
use serde_json::Value;
use test_support::{Arch, ImageBuilder, LayoutEntry, Skopeo, write_oci_layout};
use tests::Containerd;

/// `berth-server admin --json nodes ARGS…`, which must succeed.
fn nodes(srv: &AuthServer, args: &[&str]) -> Value {
    let mut all = vec!["nodes"];
    all.extend_from_slice(args);
    srv.admin(&all)
}

fn node_entry(srv: &AuthServer, id: &str) -> Value {
    let list = nodes(srv, &["list", "--account", ACME]);
    list["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> Option<Value>) -> Value {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn containers(result: &Value) -> Vec<Value> {
    result["containers"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn operator_drives_a_node_through_the_control_plane() {
    let srv = AuthServer::start_with(&[
        ("BERTH_NODES__HEARTBEAT_SECS", "1"),
        ("BERTH_NODES__OFFLINE_AFTER_SECS", "3"),
        ("BERTH_NODES__POLL_MS", "100"),
    ]);
    let t = srv.setup_tenants();
    let ctrd = Containerd::start();

    // An image pushed with skopeo into acme's namespace.
    let base = busybox_layer(&["sh", "echo", "sleep", "cat"]);
    let image = ImageBuilder::new(Arch::Amd64)
        .layer(base.build())
        .cmd(&["/bin/sh", "-c", "echo default command"])
        .build();
    let layout = tempfile::tempdir().unwrap();
    write_oci_layout(layout.path(), &[("v1", LayoutEntry::from(&image))]).unwrap();
    Skopeo::new()
        .copy(
            &format!("oci:{}:v1", layout.path().display()),
            &format!("docker://{}/{ACME_NS}/box:v1", srv.host()),
            &[
                "--dest-creds",
                &format!("{}:{}", t.acme_dev.username, t.acme_dev.secret),
            ],
        )
        .unwrap();

    let node = srv.enroll("edge-control", ACME, None);
    let config = agent_config_with(
        &srv,
        &node,
        &ctrd,
        srv.files(),
        &AgentOptions {
            log_json: true,
            ..Default::default()
        },
    );
    let log = srv.files().join("daemon.log");
    let daemon = Daemon::start(&config, &log);

    // The node shows online with its agent and platform.
    let entry = wait_until("the node online", 30, || {
        let e = node_entry(&srv, &node.id);
        (e["online"] == true).then_some(e)
    });
    assert_eq!(entry["name"], "edge-control");
    assert!(
        entry["platform"].as_str().unwrap().starts_with("linux/"),
        "{entry}"
    );
    assert!(!entry["agent_version"].as_str().unwrap().is_empty());
    // Another account's operator view does not list it.
    let globex = nodes(&srv, &["list", "--account", GLOBEX]);
    assert!(
        !globex.to_string().contains(&node.id),
        "globex sees acme's node: {globex}"
    );

    // Remote pull: the image lands in the node's containerd.
    let pulled = nodes(&srv, &["pull", &node.id, "box:v1"]);
    let digest = pulled["result"]["output"]["pulled"]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let name = format!("{}/{ACME_NS}/box:v1", srv.host());
    assert_eq!(
        listed_digest(&ctrd, &name).as_deref(),
        Some(digest.as_str())
    );
    let progress = &pulled["progress"]["blobs"];
    assert!(
        progress.as_array().is_some_and(|b| !b.is_empty()),
        "no pull progress came back: {pulled}"
    );

    // Remote run; status and logs come back.
    let web = format!("web-{}", std::process::id());
    let started = nodes(
        &srv,
        &[
            "run",
            &node.id,
            &web,
            "box:v1",
            "--stop-timeout",
            "1",
            "--",
            "/bin/sh",
            "-c",
            "echo hello-from-the-node; sleep 1000",
        ],
    );
    assert!(
        started["result"]["output"]["started"]["pid"]
            .as_u64()
            .unwrap()
            > 0,
        "{started}"
    );
    let ps = nodes(&srv, &["ps", &node.id]);
    let running = containers(&ps["result"]["output"]);
    assert!(
        running
            .iter()
            .any(|c| c["name"] == web.as_str() && c["state"] == "running"),
        "{ps}"
    );
    wait_until("the container's output", 30, || {
        let logs = nodes(&srv, &["logs", &node.id, &web]);
        logs["result"]["output"]["logs"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("hello-from-the-node"))
            .then_some(logs)
    });
    let test = nodes(&srv, &["test", &node.id, "box:v1"]);
    let check = &test["result"]["output"]["registry"];
    assert_eq!(check["token_ok"], true, "{test}");
    assert_eq!(check["api_ok"], true, "{test}");
    assert_eq!(check["resolved"], digest.as_str(), "{test}");

    // Stop, then remove.
    let stopped = nodes(&srv, &["stop", &node.id, &web, "--timeout", "1"]);
    assert_eq!(stopped["state"], "succeeded", "{stopped}");
    nodes(&srv, &["rm", &node.id, &web]);
    let ps = nodes(&srv, &["ps", &node.id]);
    assert!(
        !containers(&ps["result"]["output"])
            .iter()
            .any(|c| c["name"] == web.as_str()),
        "{ps}"
    );
    // A bad command is refused by the node with its reason.
    let err = srv.admin_fails(&["nodes", "rmi", &node.id, "docker.io/library/nginx"]);
    assert!(err.contains("failed on the node"), "{err}");

    // Desired state: the agent defines and runs it.
    let svc = format!("svc-{}", std::process::id());
    let spec = srv.files().join("desired.json");
    std::fs::write(
        &spec,
        serde_json::json!([{
            "name": svc, "image": "box:v1", "exec_type": "service",
            "stop_timeout_secs": 1, "cmd": ["/bin/sleep", "1000"]
        }])
        .to_string(),
    )
    .unwrap();
    let set = nodes(
        &srv,
        &["desired", &node.id, "--file", spec.to_str().unwrap()],
    );
    let generation = set["generation"].as_u64().unwrap();
    wait_until("the desired service running", 60, || {
        let ps = nodes(&srv, &["ps", &node.id]);
        containers(&ps["result"]["output"])
            .iter()
            .find(|c| c["name"] == svc.as_str() && c["state"] == "running" && c["desired"] == true)
            .cloned()
    });
    wait_until(
        "a report of the applied generation without drift",
        30,
        || {
            let st = nodes(&srv, &["status", &node.id]);
            let r = &st["report"];
            (r["desired_generation"].as_u64() == Some(generation)
                && r["drift"].as_array().is_none_or(Vec::is_empty))
            .then_some(st)
        },
    );

    // The agent dies; a command queued meanwhile waits for it, and runs
    // once when it is back. The desired service keeps running throughout.
    daemon.kill();
    wait_until("the node offline", 30, || {
        let e = node_entry(&srv, &node.id);
        (e["online"] == false).then_some(e)
    });
    let queued = nodes(&srv, &["images", &node.id, "--no-wait"]);
    let id = queued["id"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_secs(1));
    let still = nodes(&srv, &["command", &node.id, &id]);
    assert_eq!(still["state"], "queued", "{still}");
    let daemon = Daemon::start(&config, &log);
    let done = wait_until("the queued command done after the reconnect", 60, || {
        let c = nodes(&srv, &["command", &node.id, &id]);
        (c["state"] == "succeeded").then_some(c)
    });
    let images = done["result"]["output"]["images"]["images"]
        .as_array()
        .unwrap();
    assert!(
        images.iter().any(|i| i["digest"] == digest.as_str()),
        "{done}"
    );
    let journal = srv
        .files()
        .join("agent-data/control/commands")
        .join(format!("{id}.json"));
    assert!(journal.exists(), "the agent journalled {id}");
    let ps = nodes(&srv, &["ps", &node.id]);
    assert!(
        containers(&ps["result"]["output"])
            .iter()
            .any(|c| c["name"] == svc.as_str() && c["state"] == "running"),
        "the desired service stopped with the agent: {ps}"
    );

    // A remote stop holds the supervised service: its supervisor does not
    // start it again, and the report shows the drift; the desired state
    // applied again takes it up.
    nodes(&srv, &["stop", &node.id, &svc, "--timeout", "1"]);
    std::thread::sleep(Duration::from_secs(4));
    let ps = nodes(&srv, &["ps", &node.id]);
    let held = containers(&ps["result"]["output"])
        .into_iter()
        .find(|c| c["name"] == svc.as_str())
        .unwrap();
    assert_ne!(
        held["state"], "running",
        "the supervisor restarted a stopped service: {ps}"
    );
    nodes(
        &srv,
        &["desired", &node.id, "--file", spec.to_str().unwrap()],
    );
    wait_until("the service running again", 60, || {
        let ps = nodes(&srv, &["ps", &node.id]);
        containers(&ps["result"]["output"])
            .iter()
            .find(|c| c["name"] == svc.as_str() && c["state"] == "running")
            .cloned()
    });

    // An empty desired state removes what the previous one ran.
    std::fs::write(&spec, "[]").unwrap();
    nodes(
        &srv,
        &["desired", &node.id, "--file", spec.to_str().unwrap()],
    );
    wait_until("the undesired service removed", 60, || {
        let ps = nodes(&srv, &["ps", &node.id]);
        (!containers(&ps["result"]["output"])
            .iter()
            .any(|c| c["name"] == svc.as_str()))
        .then_some(ps)
    });

    // Revoking the node closes its stream, and it cannot come back.
    srv.admin(&["node", "revoke", &node.id]);
    wait_until("the revoked node offline", 30, || {
        let e = node_entry(&srv, &node.id);
        (e["online"] == false).then_some(e)
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(node_entry(&srv, &node.id)["online"], false);
    drop(daemon);
}

/// Lines of the daemon's JSON log with `message` and `id`.
fn log_lines(log: &Path, message: &str, id: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == message && v["fields"]["id"] == id)
        .count()
}

fn push_with_skopeo(
    srv: &AuthServer,
    cred: &common_auth::Cred,
    repo: &str,
    image: &test_support::Image,
) {
    let layout = tempfile::tempdir().unwrap();
    write_oci_layout(layout.path(), &[("v1", LayoutEntry::from(image))]).unwrap();
    Skopeo::new()
        .copy(
            &format!("oci:{}:v1", layout.path().display()),
            &format!("docker://{}/{repo}:v1", srv.host()),
            &[
                "--dest-creds",
                &format!("{}:{}", cred.username, cred.secret),
            ],
        )
        .unwrap();
}

/// An enrolled node's `berth-agent daemon` reaching the node endpoint
/// through a [`test_support::TcpForwarder`], once the node shows online.
struct Behind {
    node: common_auth::Enrolled,
    forward: test_support::TcpForwarder,
    config: std::path::PathBuf,
    log: std::path::PathBuf,
    daemon: Daemon,
}

fn agent_behind_forwarder(
    srv: &AuthServer,
    ctrd: &Containerd,
    name: &str,
    bandwidth_limit_bytes_per_sec: Option<u64>,
) -> Behind {
    let forward = test_support::TcpForwarder::start(srv.node_addr).unwrap();
    let node = srv.enroll(name, ACME, None);
    let config = agent_config_with(
        srv,
        &node,
        ctrd,
        srv.files(),
        &AgentOptions {
            log_json: true,
            bandwidth_limit_bytes_per_sec,
            node_url: Some(format!("https://{}", forward.addr())),
            control_backoff_max_secs: Some(2),
            ..Default::default()
        },
    );
    let log = srv.files().join("daemon.log");
    let daemon = Daemon::start(&config, &log);
    wait_until("the node online", 30, || {
        let e = node_entry(srv, &node.id);
        (e["online"] == true).then_some(e)
    });
    Behind {
        node,
        forward,
        config,
        log,
        daemon,
    }
}

/// The connection is cut while the node runs a (bandwidth-limited) pull:
/// the agent reconnects, the server sends the unfinished command again, the
/// agent recognises it from its journal and does not start it twice, and
/// the one result arrives.
#[test]
fn a_command_survives_a_cut_connection_and_runs_once() {
    let srv = AuthServer::start_with(&[
        ("BERTH_NODES__HEARTBEAT_SECS", "1"),
        ("BERTH_NODES__POLL_MS", "100"),
    ]);
    let t = srv.setup_tenants();
    let ctrd = Containerd::start();
    let image = ImageBuilder::new(Arch::Amd64)
        .layer(busybox_layer(&["sh"]).build())
        .layer(
            test_support::images::LayerBuilder::new()
                .random_file("data/big.bin", 6 << 20, 7)
                .build(),
        )
        .build();
    push_with_skopeo(&srv, &t.acme_dev, &format!("{ACME_NS}/big"), &image);
    // About 6 s for the big layer at 1 MiB/s: time to cut the connection.
    let Behind {
        node,
        forward,
        log,
        daemon: _daemon,
        ..
    } = agent_behind_forwarder(&srv, &ctrd, "edge-cut", Some(1 << 20));
    let queued = nodes(&srv, &["pull", &node.id, "big:v1", "--no-wait"]);
    let id = queued["id"].as_str().unwrap().to_owned();
    wait_until("the pull running on the node", 30, || {
        let c = nodes(&srv, &["command", &node.id, &id]);
        (c["state"] == "acked").then_some(c)
    });
    let before = forward.accepted();
    assert!(forward.cut() > 0, "no connection to cut");
    let done = wait_until("the pull's result after the reconnect", 90, || {
        let c = nodes(&srv, &["command", &node.id, &id]);
        matches!(c["state"].as_str(), Some("succeeded" | "failed")).then_some(c)
    });
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(forward.accepted() > before, "the agent did not reconnect");
    assert_eq!(
        log_lines(&log, "running a command", &id),
        1,
        "the command ran more than once (or never); log: {}",
        log.display()
    );
    let name = format!("{}/{ACME_NS}/big:v1", srv.host());
    assert!(
        listed_digest(&ctrd, &name).is_some(),
        "the image is not in containerd"
    );
}

/// The server is killed while the node runs a container: the container
/// keeps running, the agent reconnects to the restarted server, and its
/// report shows the container.
#[test]
fn a_killed_server_leaves_containers_running_and_the_agent_reports_back() {
    let mut srv = AuthServer::start_with(&[
        ("BERTH_NODES__HEARTBEAT_SECS", "1"),
        ("BERTH_NODES__OFFLINE_AFTER_SECS", "3"),
        ("BERTH_NODES__POLL_MS", "100"),
    ]);
    let t = srv.setup_tenants();
    let ctrd = Containerd::start();
    let image = ImageBuilder::new(Arch::Amd64)
        .layer(busybox_layer(&["sh", "sleep"]).build())
        .build();
    push_with_skopeo(&srv, &t.acme_dev, &format!("{ACME_NS}/box"), &image);
    let Behind {
        node,
        forward,
        config,
        daemon: _daemon,
        ..
    } = agent_behind_forwarder(&srv, &ctrd, "edge-restart", None);
    let name = format!("keep-{}", std::process::id());
    nodes(
        &srv,
        &[
            "run",
            &node.id,
            &name,
            "box:v1",
            "--stop-timeout",
            "1",
            "--",
            "/bin/sleep",
            "1000",
        ],
    );

    srv.server.kill9();
    // The container does not depend on the server.
    std::thread::sleep(Duration::from_secs(2));
    let local = common_agent::ps_entry(&config, &name).unwrap();
    assert_eq!(local["state"], "running", "{local}");

    srv.server.restart();
    let node_addr: std::net::SocketAddr = std::fs::read_to_string(srv.files().join("node-addr"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    forward.set_target(node_addr);
    wait_until("the node online again", 60, || {
        let e = node_entry(&srv, &node.id);
        (e["online"] == true).then_some(e)
    });
    // The report it sent on reconnecting shows the container running.
    let st = wait_until("a report with the container", 30, || {
        let st = nodes(&srv, &["status", &node.id]);
        st["report"]["containers"]
            .as_array()
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["name"] == name.as_str() && c["state"] == "running")
            })
            .then_some(st)
    });
    assert!(st["report"].is_object());
    nodes(&srv, &["rm", &node.id, &name, "--force"]);
}

/// 200 nodes on one server on this machine: stand-in agents (the real
/// client library with each node's own certificate; no containerd) keep
/// their streams up with heartbeats; every node gets a command through the
/// management API, answers it, and receives nothing meant for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_nodes_with_heartbeats_and_commands() {
    use control_plane_client::ClientConfig;
    use control_plane_client::stand_in::{self, StandInNode};

    const NODES: usize = 200;
    let srv = AuthServer::start_with(&[
        ("BERTH_NODES__HEARTBEAT_SECS", "1"),
        ("BERTH_NODES__OFFLINE_AFTER_SECS", "5"),
    ]);
    let t = srv.setup_tenants();
    let enrolled: Vec<common_auth::Enrolled> = tokio::task::block_in_place(|| {
        (0..NODES)
            .map(|i| srv.enroll(&format!("sim-{i}"), ACME, None))
            .collect()
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut sims: Vec<StandInNode> = enrolled
        .iter()
        .map(|n| {
            let cfg = ClientConfig::new(
                format!("https://{}", srv.node_addr),
                n.ca_pem.clone(),
                n.cert_pem.clone(),
                n.key_pem.clone().unwrap(),
            );
            stand_in::spawn(cfg, stop_rx.clone())
        })
        .collect();
    for s in &mut sims {
        s.connected(Duration::from_secs(60))
            .await
            .expect("every node connects within 60 s");
    }
    let api = |path: &str| format!("{}/api/v1/{path}", srv.url());
    let dev = &t.acme_dev;
    let online = || async {
        let list: Value = srv
            .http
            .get(api("nodes"))
            .basic_auth(&dev.username, Some(&dev.secret))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        list["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["online"] == true)
            .count()
    };
    assert_eq!(online().await, NODES);
    // Heartbeats keep them online past the offline threshold.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        online().await,
        NODES,
        "heartbeats did not keep every node online"
    );

    // One command per node, all at once.
    let posts = enrolled.iter().map(|n| {
        let http = srv.http.clone();
        let url = api(&format!("nodes/{}/commands", n.id));
        let (user, secret) = (dev.username.clone(), dev.secret.clone());
        async move {
            let resp = http
                .post(url)
                .basic_auth(user, Some(secret))
                .json(&serde_json::json!({"action": {"list_containers": {}}}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 202);
            resp.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    });
    let ids: Vec<String> = futures::future::join_all(posts).await;
    for (i, n) in enrolled.iter().enumerate() {
        let url = api(&format!("nodes/{}/commands/{}", n.id, ids[i]));
        let start = Instant::now();
        loop {
            let c: Value = srv
                .http
                .get(&url)
                .basic_auth(&dev.username, Some(&dev.secret))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if c["state"] == "succeeded" {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{c}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for (i, s) in sims.iter().enumerate() {
        assert_eq!(
            s.handler.received(),
            vec![ids[i].clone()],
            "node {i} got other commands, or its own more than once"
        );
    }
    let _ = stop_tx.send(true);
}
