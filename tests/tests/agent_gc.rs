//! Image GC end to end under a real containerd + runc: two images pulled
//! from berth-server, a container running from one; `images prune
//! --older-than 0s` removes only the other, records the last use on the
//! image in use, and containerd's GC reclaims the removed image's content.
#![allow(clippy::unwrap_used)]

mod common_agent;
mod common_auth;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common_agent::{agent_config, agent_ok, busybox_layer};
use common_auth::{ACME, ACME_NS, AuthServer};
use serde_json::Value;
use test_support::images::LayerBuilder;
use test_support::{Arch, Image, ImageBuilder};
use tests::Containerd;

fn busybox_image() -> Image {
    let base = busybox_layer(&["sh", "sleep"]);
    ImageBuilder::new(Arch::Amd64).layer(base.build()).build()
}

/// An image nothing runs, with a layer of its own (unique per test run, so
/// no other image shares its content).
fn data_image() -> Image {
    let data = LayerBuilder::new().file(
        "data.txt",
        0o644,
        Bytes::from(format!("gc test {}\n", std::process::id())),
    );
    ImageBuilder::new(Arch::Amd64).layer(data.build()).build()
}

#[tokio::test]
async fn prune_removes_only_unused_images_and_containerd_reclaims_them() {
    let srv = AuthServer::start();
    let t = srv.setup_tenants();
    let ctrd = Containerd::start();
    let boxed = busybox_image();
    let data = data_image();
    srv.push_as(&t.acme_dev, &format!("{ACME_NS}/box"), &boxed, "v1")
        .await;
    srv.push_as(&t.acme_dev, &format!("{ACME_NS}/data"), &data, "v1")
        .await;
    let node = srv.enroll("edge-gc", ACME, None);
    let config = agent_config(&srv, &node, &ctrd, srv.files());
    agent_ok(&config, &["pull", "box:v1", "--json"]);
    agent_ok(&config, &["pull", "data:v1", "--json"]);
    let layer = &data.layers[0].digest;
    assert!(
        ctrd.run_ctr(["content", "ls", "-q"])
            .unwrap()
            .contains(layer.as_str())
    );

    // Container ids are shared by every containerd on the machine.
    let name = format!("gc-keep-{}", std::process::id());
    agent_ok(
        &config,
        &["run", &name, "box:v1", "--json", "--", "/bin/sleep", "1000"],
    );
    // `run` recorded the image's last use on its record.
    let images = ctrd.run_ctr(["images", "ls"]).unwrap();
    let box_line = images.lines().find(|l| l.contains("/box:v1")).unwrap();
    assert!(box_line.contains("io.berth.agent/last-used="), "{images}");

    let out = agent_ok(
        &config,
        &["images", "prune", "--older-than", "0s", "--json"],
    );
    let removed: Vec<Value> = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = removed
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 1, "{out}");
    assert!(names[0].ends_with("/data:v1"), "{out}");
    let left = ctrd.run_ctr(["images", "ls", "-q"]).unwrap();
    assert!(left.contains("/box:v1"), "{left}");
    assert!(!left.contains("/data:v1"), "{left}");

    // containerd's GC is asynchronous: its content goes within a bound.
    let start = Instant::now();
    loop {
        let content = ctrd.run_ctr(["content", "ls", "-q"]).unwrap();
        if !content.contains(layer.as_str()) && !content.contains(data.digest.as_str()) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{content}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The image in use kept its content.
    let content = ctrd.run_ctr(["content", "ls", "-q"]).unwrap();
    assert!(
        content.contains(boxed.layers[0].digest.as_str()),
        "{content}"
    );

    // A second pass has nothing left to remove.
    let out = agent_ok(
        &config,
        &["images", "prune", "--older-than", "0s", "--json"],
    );
    assert_eq!(out.trim(), "[]");
    agent_ok(&config, &["rm", "-f", &name]);
}
