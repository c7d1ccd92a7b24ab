//! berth-agent against a real berth-server (accounts on, node endpoint over
//! mTLS) and a real containerd + runc started by the harness: pull by tag
//! a multi-layer image and a multi-arch index (the node's platform picked),
//! see `ctr` list, unpack-check and run them; `images` and `rmi`; two
//! concurrent pulls of one image download it once; references outside the
//! namespace and a node without its certificate are refused clearly.
#![allow(clippy::unwrap_used)]

mod common_agent;
mod common_auth;

use std::sync::Arc;

use bytes::Bytes;
use common_agent::{agent_config, agent_fails, agent_ok, listed_digest, top_chain_id};
use common_auth::{ACME, ACME_NS, AuthServer};
use serde_json::Value;
use test_support::images::LayerBuilder;
use test_support::{Arch, Image, ImageBuilder, busybox_multi_arch, require_tool};
use tests::Containerd;

/// A runnable three-layer image: busybox, then two layers writing
/// `/etc/berth-test` (the last one wins) and some random bytes.
fn runnable_multi_layer() -> Image {
    let busybox = std::fs::read(require_tool("busybox")).unwrap();
    let mut base = LayerBuilder::new()
        .dir("bin/")
        .file("bin/busybox", 0o755, Bytes::from(busybox));
    for applet in ["sh", "cat", "echo", "ls"] {
        base = base.symlink(&format!("bin/{applet}"), "busybox");
    }
    let two = LayerBuilder::new()
        .dir("etc/")
        .file("etc/berth-test", 0o644, Bytes::from_static(b"layer two\n"))
        .random_file("data.bin", 300 * 1024, 7);
    let three = LayerBuilder::new().dir("etc/").file(
        "etc/berth-test",
        0o644,
        Bytes::from_static(b"layer three\n"),
    );
    ImageBuilder::new(Arch::Amd64)
        .layer(base.build())
        .layer(two.build())
        .layer(three.build())
        .cmd(&["/bin/cat", "/etc/berth-test"])
        .build()
}

#[tokio::test]
async fn agent_pulls_into_containerd_and_ctr_runs_it() {
    let srv = AuthServer::start();
    let t = srv.setup_tenants();
    let ctrd = Containerd::start();
    let image = runnable_multi_layer();
    srv.push_as(&t.acme_dev, &format!("{ACME_NS}/app"), &image, "v1")
        .await;
    let index = busybox_multi_arch();
    let token = srv
        .token(
            &t.acme_dev,
            &[&common_auth::repo_scope(
                &format!("{ACME_NS}/multi"),
                "pull,push",
            )],
        )
        .await;
    srv.client(&token)
        .push_index(&format!("{ACME_NS}/multi"), &index, "v1")
        .await
        .unwrap();
    let node = srv.enroll("edge-agent", ACME, None);
    let config = agent_config(&srv, &node, &ctrd, srv.files());
    assert!(agent_ok(&config, &["validate"]).contains("ok"));

    // A short name, resolved into the namespace, pulled by tag.
    let out = agent_ok(&config, &["pull", "app:v1", "--json"]);
    let pulled: Value = serde_json::from_str(out.trim()).unwrap();
    let name = format!("{}/{ACME_NS}/app:v1", srv.host());
    assert_eq!(pulled["name"], name.as_str());
    assert_eq!(pulled["digest"], image.digest.as_str());
    assert_eq!(pulled["layers"], 3);
    let total: u64 = image.layers.iter().map(|l| l.size()).sum();
    assert_eq!(pulled["downloaded"], total);
    assert_eq!(listed_digest(&ctrd, &name), Some(image.digest.clone()));
    // What containerd stored is what was pushed.
    for blob in image.blobs() {
        let out = ctrd
            .ctr()
            .args(["content", "get", &blob.digest])
            .output()
            .unwrap();
        assert!(out.status.success(), "ctr content get {}", blob.digest);
        assert!(out.stdout == blob.data, "content {} differs", blob.digest);
    }
    // Unpacked by the agent, not later by ctr: the top snapshot is there.
    let snapshots = ctrd
        .run_ctr(["snapshots", "--snapshotter", "overlayfs", "ls"])
        .unwrap();
    assert!(
        snapshots.contains(&top_chain_id(&image)),
        "no committed top snapshot in:\n{snapshots}"
    );
    let out = ctrd
        .run_container(&name, &format!("berth-agent-{}", std::process::id()), &[])
        .unwrap();
    assert_eq!(out.trim(), "layer three");

    // Pulling again downloads nothing.
    let again: Value =
        serde_json::from_str(agent_ok(&config, &["pull", "app:v1", "--json"]).trim()).unwrap();
    assert_eq!(again["downloaded"], 0);

    // A multi-arch index by its full name: the record points at the index,
    // the node's platform (amd64 here) is what got unpacked and runs.
    let multi = format!("{}/{ACME_NS}/multi:v1", srv.host());
    let pulled: Value =
        serde_json::from_str(agent_ok(&config, &["pull", &multi, "--json"]).trim()).unwrap();
    assert_eq!(pulled["digest"], index.digest.as_str());
    let amd64 = index
        .children
        .iter()
        .find(|c| c.platform.as_ref().unwrap().architecture == "amd64")
        .unwrap();
    assert_eq!(pulled["manifest"], amd64.digest.as_str());
    assert_eq!(pulled["platform"], "linux/amd64");
    assert_eq!(listed_digest(&ctrd, &multi), Some(index.digest.clone()));
    let out = ctrd
        .run_container(
            &multi,
            &format!("berth-agent-multi-{}", std::process::id()),
            &["echo", "hello from the index"],
        )
        .unwrap();
    assert_eq!(out.trim(), "hello from the index");

    // images and rmi.
    let listed: Value =
        serde_json::from_str(agent_ok(&config, &["images", "--json"]).trim()).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&name.as_str()) && names.contains(&multi.as_str()),
        "{names:?}"
    );
    agent_ok(&config, &["rmi", "multi:v1"]);
    assert_eq!(listed_digest(&ctrd, &multi), None);
    assert!(agent_fails(&config, &["rmi", "multi:v1"]).contains("no image"));
}

#[tokio::test]
async fn concurrent_pulls_of_one_image_download_once() {
    let srv = AuthServer::start();
    let t = srv.setup_tenants();
    let ctrd = Containerd::start();
    let image = test_support::multi_layer_image(4, 256 * 1024, 3);
    srv.push_as(&t.acme_dev, &format!("{ACME_NS}/big"), &image, "v1")
        .await;
    let node = srv.enroll("edge-concurrent", ACME, None);
    let config = agent_config(&srv, &node, &ctrd, srv.files());
    let cfg = agent::AgentConfig::load(&config, true, &Default::default()).unwrap();
    let puller = agent::Puller::new(&cfg).await.unwrap();
    let quiet: agent::pull::ProgressFn = Arc::new(|_| {});
    let (a, b) = tokio::join!(
        puller.pull("big:v1", quiet.clone()),
        puller.pull("big:v1", quiet.clone())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let total: u64 = image.layers.iter().map(|l| l.size()).sum();
    assert_eq!(a.downloaded + b.downloaded, total, "{a:?} {b:?}");
    assert_eq!(a.digest, image.digest);
    assert_eq!(
        listed_digest(&ctrd, &format!("{}/{ACME_NS}/big:v1", srv.host())),
        Some(image.digest.clone())
    );
    // No lease is left behind.
    let leases = ctrd.run_ctr(["leases", "ls"]).unwrap();
    assert!(!leases.contains("berth-agent-"), "{leases}");
}

#[tokio::test]
async fn refusals_are_clear() {
    let srv = AuthServer::start();
    let _t = srv.setup_tenants();
    let ctrd = Containerd::start();
    let node = srv.enroll("edge-refusals", ACME, None);
    let config = agent_config(&srv, &node, &ctrd, srv.files());

    // Outside the namespace: refused before any network traffic.
    for reference in [
        "globex.example.io/app:v1".to_owned(),
        format!("{}/globex.example.io/app:v1", srv.host()),
        "docker.io/library/nginx:1.27".to_owned(),
    ] {
        let err = agent_fails(&config, &["pull", &reference]);
        assert!(
            err.contains("outside this node's namespace"),
            "{reference}: {err}"
        );
    }
    // A tag that does not exist.
    let err = agent_fails(&config, &["pull", "nothing:v1"]);
    assert!(err.contains("not found"), "{err}");

    // No node certificate: validate names it, pull says so.
    std::fs::remove_file(node.dir.join("node.crt")).unwrap();
    let err = agent_fails(&config, &["validate"]);
    assert!(err.contains("node.cert_file"), "{err}");
    let err = agent_fails(&config, &["pull", "app:v1"]);
    assert!(err.contains("node.cert_file"), "{err}");

    // A revoked node gets a clear refusal from the node endpoint.
    let revoked = srv.enroll("edge-revoked", ACME, None);
    srv.admin(&["node", "revoke", &revoked.id]);
    let dir = srv.files().join("revoked");
    std::fs::create_dir_all(&dir).unwrap();
    let config = agent_config(&srv, &revoked, &ctrd, &dir);
    let err = agent_fails(&config, &["pull", "app:v1"]);
    assert!(err.contains("refused the node certificate (403)"), "{err}");
}
