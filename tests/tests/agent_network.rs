//! berth-agent's container networks under a real containerd + runc and
//! the real CNI plugins (Debian's containernetworking-plugins), from an
//! image pulled from a real berth-server: `--publish` forwards a host port
//! to a web server in a bridge-networked container (reached on the host's
//! loopback, as `curl localhost:PORT` would), the container has its own
//! address on the agent's bridge, named in its `/etc/hosts`, and reaches
//! the host through NAT; `--network none` has only loopback; a host port
//! is not published twice; a stop takes the forward and the address away
//! and `rm` leaves no lease or firewall rule behind.
#![allow(clippy::unwrap_used)]

mod common_agent;
mod common_auth;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common_agent::{agent_config, agent_fails, agent_ok, busybox_layer, json, ps_entry};
use common_auth::{ACME, ACME_NS, AuthServer};
use test_support::images::LayerBuilder;
use test_support::net::free_port;
use test_support::{Arch, Image, ImageBuilder, require_tool};
use tests::Containerd;

/// busybox with a web root for `httpd`.
fn web_image() -> Image {
    let www = LayerBuilder::new().dir("www/").dir("tmp/").file(
        "www/index.html",
        0o644,
        Bytes::from_static(b"served from the bridge\n"),
    );
    ImageBuilder::new(Arch::Amd64)
        .layer(busybox_layer(&["sh", "echo", "sleep", "cat", "httpd", "ip", "wget"]).build())
        .layer(www.build())
        .cmd(&["/bin/httpd", "-f", "-p", "8080", "-h", "/www"])
        .build()
}

/// One HTTP/1.0 GET on `port` of the host's loopback; the body.
fn http_get(port: u16) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(3),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// [`common_agent::run_to_end`] with this test's image.
fn run_to_end(config: &Path, name: &str, flags: &[&str], script: &str) -> String {
    common_agent::run_to_end(config, name, "web:v1", flags, script)
}

fn iptables_save() -> String {
    let out = Command::new(require_tool("iptables-save"))
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Removes the test's containers (a failed assertion would leave them
/// running: their shims outlive containerd), then its bridge and
/// masquerade rule (the agent keeps both for its next container, as it
/// should on a real node).
struct HostCleanup {
    config: std::path::PathBuf,
    containers: Vec<String>,
    bridge: String,
    subnet: String,
}

impl Drop for HostCleanup {
    fn drop(&mut self) {
        for name in &self.containers {
            let _ = common_agent::agent(&self.config, &["rm", "--force", name]);
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
        let _ = Command::new("iptables")
            .args([
                "-w",
                "10",
                "-t",
                "nat",
                "-D",
                "POSTROUTING",
                "-s",
                &self.subnet,
                "!",
                "-o",
                &self.bridge,
                "-m",
                "comment",
                "--comment",
                "berth-agent bridge masquerade",
                "-j",
                "MASQUERADE",
            ])
            .status();
    }
}

#[tokio::test]
async fn published_ports_bridge_and_none_networks() {
    for plugin in ["bridge", "host-local", "portmap", "firewall", "loopback"] {
        assert!(
            Path::new("/usr/lib/cni").join(plugin).is_file(),
            "the CNI plugin {plugin} is missing: apt install containernetworking-plugins"
        );
    }
    require_tool("iptables");
    let srv = AuthServer::start();
    let t = srv.setup_tenants();
    let ctrd = Containerd::start();
    srv.push_as(&t.acme_dev, &format!("{ACME_NS}/web"), &web_image(), "v1")
        .await;
    let node = srv.enroll("edge-network", ACME, None);
    let config = agent_config(&srv, &node, &ctrd, srv.files());
    // A bridge and subnet of this test's own, so a node's real `berth0`
    // (or a parallel run) is never touched.
    let pid = std::process::id();
    let bridge = format!("bt{}", pid % 1_000_000);
    let octet = 100 + pid % 100;
    let subnet = format!("10.{octet}.7.0/24");
    let gateway = format!("10.{octet}.7.1");
    let web = format!("web-{pid}");
    let probe = format!("probe-{pid}");
    let isolated = format!("isolated-{pid}");
    // Declared after the server and containerd: dropped before them.
    let _cleanup = HostCleanup {
        config: config.clone(),
        containers: vec![web.clone(), probe.clone(), isolated.clone()],
        bridge: bridge.clone(),
        subnet: subnet.clone(),
    };
    let mut toml = std::fs::read_to_string(&config).unwrap();
    toml.push_str(&format!(
        "\n[network]\nbridge = \"{bridge}\"\nsubnet = \"{subnet}\"\n"
    ));
    std::fs::write(&config, toml).unwrap();
    agent_ok(&config, &["pull", "web:v1", "--json"]);

    // A web server with a published port, reached through the host.
    let port = free_port();
    let publish = format!("127.0.0.1:{port}:8080");
    agent_ok(&config, &["run", &web, "web:v1", "--publish", &publish]);
    let start = Instant::now();
    let page = loop {
        match http_get(port) {
            Ok(p) if p.contains("served from the bridge") => break p,
            other => {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "no answer on the published port: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert!(
        page.starts_with("HTTP/1.1 200") || page.starts_with("HTTP/1.0 200"),
        "{page}"
    );
    let entry = ps_entry(&config, &web).unwrap();
    assert_eq!(entry["network"], "bridge", "{entry}");
    assert_eq!(
        entry["ports"],
        serde_json::json!([format!("{publish}/tcp")]),
        "{entry}"
    );
    let address = entry["address"].as_str().unwrap().to_owned();
    assert!(address.starts_with(&format!("10.{octet}.7.")), "{address}");
    assert!(iptables_save().contains("berth-agent bridge masquerade"));

    // The same host port again is refused, naming who has it.
    let err = agent_fails(
        &config,
        &[
            "run",
            "second",
            "web:v1",
            "--publish",
            &format!("{port}:80"),
        ],
    );
    assert!(
        err.contains(&format!(
            "host port {port}/tcp is already published by container {web}"
        )),
        "{err}"
    );
    // Ports only make sense on the bridge.
    let err = agent_fails(
        &config,
        &["run", "second", "web:v1", "--network", "host", "-p", "9:9"],
    );
    assert!(err.contains("--publish needs --network bridge"), "{err}");

    // Its own address, named in its /etc/hosts; the host reached through
    // the gateway (NAT and forwarding in place).
    let listener = TcpListener::bind("0.0.0.0:0").unwrap();
    let host_port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 11\r\n\r\nhello-host\n")
            .unwrap();
    });
    let out = run_to_end(
        &config,
        &probe,
        &["--network", "bridge", "--hostname", "prober"],
        &format!(
            "cat /etc/hosts; ip -4 addr show eth0; wget -q -O - http://{gateway}:{host_port}/; echo end"
        ),
    );
    server.join().unwrap();
    assert!(
        out.contains("hello-host"),
        "the host was not reached:\n{out}"
    );
    let own = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("inet "))
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no eth0 address in:\n{out}"))
        .to_owned();
    assert!(own.starts_with(&format!("10.{octet}.7.")), "{own}");
    assert!(out.contains(&format!("{own}\tprober")), "{out}");
    assert!(out.contains("127.0.0.1\tlocalhost"), "{out}");

    // --network none: loopback only.
    let out = run_to_end(
        &config,
        &isolated,
        &["--network", "none"],
        "ip -4 addr; echo end",
    );
    assert!(out.contains("127.0.0.1"), "{out}");
    assert!(!out.contains("eth0"), "{out}");

    // Stop: the forward and the address go with the task.
    let ipam = srv.files().join("agent-data/cni/ipam/berth");
    assert!(ipam.join(&address).is_file(), "no lease for {address}");
    agent_ok(&config, &["stop", &web]);
    assert!(
        http_get(port).map_or(true, |p| !p.contains("served from the bridge")),
        "the port still answers after stop"
    );
    assert!(!ipam.join(&address).exists(), "the lease outlived the task");
    let cni_id = format!("{}-{web}", ctrd.namespace());
    let rules = iptables_save();
    assert!(
        !rules.contains(&cni_id),
        "rules left for {cni_id}:\n{rules}"
    );
    assert!(
        !rules.contains(&address),
        "rules left for {address}:\n{rules}"
    );
    let entry = ps_entry(&config, &web).unwrap();
    assert!(entry["address"].is_null(), "{entry}");

    // Started again (rm + run, as the supervisor restarts): served again.
    agent_ok(&config, &["rm", &web]);
    agent_ok(&config, &["run", &web, "web:v1", "-p", &publish]);
    let start = Instant::now();
    while !http_get(port).is_ok_and(|p| p.contains("served from the bridge")) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "not served after a new run"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    agent_ok(&config, &["rm", "--force", &web]);
    let rules = iptables_save();
    assert!(!rules.contains(&cni_id), "rules left after rm:\n{rules}");
    let leases: Vec<_> = std::fs::read_dir(&ipam)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("10."))
        .collect();
    assert!(leases.is_empty(), "leases left: {leases:?}");
    let listed = json(&config, &["ps", "--json"]);
    assert_eq!(listed, serde_json::json!([]), "{listed}");
}
