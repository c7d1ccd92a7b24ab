//! Two berth-server replicas over one PostgreSQL database and one
//! S3-compatible store (Garage), behind a round-robin proxy: the scale-out
//! set-up of the README. Every request through the proxy goes to the other
//! replica than the one before, so an upload's chunks, a token and the
//! requests it authorises, a push and its pull all cross replicas.
//!
//! - skopeo pushes and pulls through the proxy, chunked uploads alternate,
//!   tag and repository deletes through either replica are seen by both;
//! - GC passes on one replica while the other pushes lose nothing tagged;
//! - a replica killed in the middle of a `PATCH`: the client resumes the
//!   upload on the other replica from the acknowledged offset, nothing
//!   half-written is ever visible, and the blob is whole;
//! - a command sent through one replica reaches a node connected to the
//!   other (through the shared control store), and its result is read
//!   back through the first.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use test_support::client::expect_status;
use test_support::{
    BerthServer, OciClient, RoundRobinProxy, Skopeo, multi_layer_image, random_blob,
    read_oci_layout_blobs, sha256_digest, workspace_bin, write_oci_layout,
};

const NS: &str = "acme.io";

/// `berth-server admin --json ARGS` on `server`'s data directory with the
/// replicas' settings (the shared store); it must succeed.
fn admin_on(server: &BerthServer, env: &[(String, String)], args: &[&str]) -> Value {
    let out = std::process::Command::new(workspace_bin("berth-server"))
        .arg("admin")
        .arg("--data-dir")
        .arg(server.data_dir())
        .arg("--json")
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "admin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Two replicas, the proxy, and a user of account `acme` (namespace
/// `acme.io`) with a login credential.
struct Replicas {
    servers: Vec<BerthServer>,
    /// The settings every replica (and the operator CLI) runs with.
    env: Vec<(String, String)>,
    proxy: RoundRobinProxy,
    user: String,
    secret: String,
}

impl Replicas {
    fn start(extra_env: &[(&str, &str)]) -> Replicas {
        let pg = test_support::Postgres::shared();
        let s3 = test_support::Garage::shared().create_bucket();
        let mut env: Vec<(String, String)> = vec![("BERTH_AUTH__ENABLED".into(), "true".into())];
        env.extend(pg.server_env(&pg.create_database()));
        env.extend(s3.server_env());
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let servers: Vec<BerthServer> = (0..2)
            .map(|_| {
                let mut b = BerthServer::builder().postgres_metadata(false);
                for (k, v) in &env {
                    b = b.env(k, v);
                }
                b.start()
            })
            .collect();
        let proxy = RoundRobinProxy::start(servers.iter().map(BerthServer::addr).collect())
            .expect("the proxy starts");
        // The operator CLI on the shared store, from either replica's host.
        let admin = |args: &[&str]| admin_on(&servers[1], &env, args);
        admin(&["account", "create", "acme", "--namespace", NS]);
        admin(&[
            "user",
            "create",
            "dev",
            "--account",
            "acme",
            "--role",
            "admin",
        ]);
        let minted = admin(&["credential", "mint", "dev"]);
        Replicas {
            servers,
            env,
            proxy,
            user: "dev".into(),
            secret: minted["secret"].as_str().unwrap().to_owned(),
        }
    }

    /// An OCI client through the proxy with Basic credentials (the server
    /// takes them on the API as `docker login` stores them).
    fn client(&self) -> OciClient {
        OciClient::new(&self.proxy.url()).basic_auth(&self.user, &self.secret)
    }

    /// An OCI client straight to replica `i`.
    fn direct(&self, i: usize) -> OciClient {
        OciClient::new(&self.servers[i].url()).basic_auth(&self.user, &self.secret)
    }

    fn skopeo(&self) -> Skopeo {
        let skopeo = Skopeo::new();
        skopeo
            .login(&self.proxy.host(), &self.user, &self.secret)
            .unwrap();
        skopeo
    }

    fn docker_ref(&self, name_and_ref: &str) -> String {
        format!("docker://{}/{NS}/{name_and_ref}", self.proxy.host())
    }
}

/// `berth-server admin gc` on replica `i` (its operator socket): the
/// report, or `None` when the other replica was collecting.
async fn gc(data_dir: std::path::PathBuf, env: Vec<(String, String)>) -> Option<Value> {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(workspace_bin("berth-server"))
            .arg("admin")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--json")
            .arg("gc")
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("another berth-server replica is collecting") {
        return None;
    }
    assert!(out.status.success(), "admin gc: {stderr}");
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_pulls_and_deletes_cross_replicas() {
    let r = Replicas::start(&[]);
    let skopeo = r.skopeo();
    // Two layers of 12 MiB: S3 multipart uploads on the server side.
    let image = multi_layer_image(2, 12 << 20, 41);
    let layout = tempfile::tempdir().unwrap();
    write_oci_layout(layout.path(), &[("v1", (&image).into())]).unwrap();
    let src = format!("oci:{}:v1", layout.path().display());
    for tag in ["v1", "stable"] {
        skopeo
            .copy(&src, &r.docker_ref(&format!("app:{tag}")), &[])
            .unwrap();
    }
    let served = r.proxy.served();
    assert!(
        served.iter().all(|&n| n > 10),
        "both replicas served: {served:?}"
    );

    // Pulled back through the proxy (requests alternate again): same bytes.
    let pulled = tempfile::tempdir().unwrap();
    skopeo
        .copy(
            &r.docker_ref("app:v1"),
            &format!("oci:{}:v1", pulled.path().display()),
            &[],
        )
        .unwrap();
    assert_eq!(
        read_oci_layout_blobs(pulled.path()).unwrap(),
        read_oci_layout_blobs(layout.path()).unwrap()
    );

    // A chunked upload whose PATCHes alternate between the replicas.
    let c = r.client();
    let blob = random_blob(21 << 20, 7);
    let digest = sha256_digest(&blob);
    let before = r.proxy.served();
    let resp = c
        .push_blob_chunked(&format!("{NS}/app"), &digest, blob.clone(), 5 << 20)
        .await
        .unwrap();
    expect_status(resp, &[StatusCode::CREATED], "chunked upload")
        .await
        .unwrap();
    let after = r.proxy.served();
    assert!(
        (0..2).all(|i| after[i] - before[i] >= 3),
        "every replica took some of the 7 requests: {before:?} -> {after:?}"
    );
    for i in 0..2 {
        assert_eq!(
            r.direct(i)
                .get_blob_bytes(&format!("{NS}/app"), &digest)
                .await
                .unwrap(),
            blob,
            "replica {i} serves the blob"
        );
    }

    // A tag deleted through one replica is gone on both; the other tag stays.
    let resp = r
        .direct(0)
        .delete_manifest(&format!("{NS}/app"), "v1")
        .await
        .unwrap();
    expect_status(resp, &[StatusCode::ACCEPTED], "DELETE tag")
        .await
        .unwrap();
    for i in 0..2 {
        assert_eq!(
            r.direct(i).tags(&format!("{NS}/app")).await.unwrap(),
            ["stable"],
            "replica {i}"
        );
    }
    // The repository, deleted through the management API on replica 1.
    let url = r
        .direct(1)
        .url(&format!("/api/v1/repositories/{NS}/app?confirm={NS}/app"));
    let c1 = r.direct(1);
    let resp = c1.send(c1.request(Method::DELETE, url)).await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    for i in 0..2 {
        assert!(
            r.direct(i).repositories().await.unwrap().is_empty(),
            "replica {i} lists no repository"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_on_one_replica_while_the_other_pushes_loses_nothing_tagged() {
    // One push takes well under the grace period: GC may take what a push
    // has not referenced yet only after that.
    let r = Replicas::start(&[("BERTH_GC__GRACE_SECS", "1")]);
    let pusher = r.direct(1);
    let collector = r.direct(0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gc_task = tokio::spawn({
        let stop = stop.clone();
        let (dir, env) = (r.servers[0].data_dir().to_owned(), r.env.clone());
        async move {
            let (mut passes, mut blobs) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(report) = gc(dir.clone(), env.clone()).await {
                    passes += 1;
                    blobs += report["blobs"].as_u64().unwrap();
                }
            }
            (passes, blobs)
        }
    });
    let (mut kept, mut dropped) = (Vec::new(), 0);
    for i in 0..12u64 {
        let image = multi_layer_image(2, 64 << 10, 100 + i);
        let name = format!("{NS}/app{}", i % 3);
        let tag = format!("v{i}");
        pusher.push_image(&name, &image, &tag).await.unwrap();
        if i % 2 == 0 {
            // Untagged at once: garbage once the grace period is over.
            let resp = pusher.delete_manifest(&name, &tag).await.unwrap();
            expect_status(resp, &[StatusCode::ACCEPTED], "DELETE tag")
                .await
                .unwrap();
            dropped += image.blobs().count() as u64;
        } else {
            kept.push((name, image));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (passes, mut reclaimed) = gc_task.await.unwrap();
    assert!(passes > 0, "the collector ran");
    // What the concurrent passes left of the garbage, once it is all old.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let last = gc(r.servers[0].data_dir().to_owned(), r.env.clone())
        .await
        .expect("nobody else collects now");
    reclaimed += last["blobs"].as_u64().unwrap();
    assert_eq!(
        reclaimed, dropped,
        "exactly the untagged images' blobs were reclaimed ({passes} concurrent passes)"
    );
    // Still tagged: every blob readable from the other replica, intact.
    for (name, image) in &kept {
        for blob in image.blobs() {
            let got = collector.get_blob_bytes(name, &blob.digest).await.unwrap();
            assert_eq!(sha256_digest(&got), blob.digest, "{name}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_patch_the_upload_resumes_on_the_other() {
    let mut r = Replicas::start(&[]);
    let c = r.client();
    let name = format!("{NS}/big");
    let blob = random_blob(40 << 20, 99);
    let digest = sha256_digest(&blob);

    let started = expect_status(
        c.start_upload(&name).await.unwrap(),
        &[StatusCode::ACCEPTED],
        "POST upload",
    )
    .await
    .unwrap();
    let mut location = c.location(&started).unwrap();
    let first = 16 << 20;
    let resp = c
        .patch_chunk(&location, 0, blob.slice(..first))
        .await
        .unwrap();
    location = c
        .location(
            &expect_status(resp, &[StatusCode::ACCEPTED], "first PATCH")
                .await
                .unwrap(),
        )
        .unwrap();

    // The next PATCH goes to this replica: it dies with the body half sent.
    let victim = r.proxy.next_backend();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    }));
    let rest = blob.slice(first..);
    let patch = c
        .request(Method::PATCH, location.clone())
        .header("content-type", "application/octet-stream")
        .header("content-length", rest.len())
        .header("content-range", format!("{first}-{}", blob.len() - 1))
        .body(body);
    let in_flight = tokio::spawn(async move { patch.send().await });
    tx.send(Ok(rest.slice(..(10 << 20)))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    r.servers[victim].kill9();
    drop(tx);
    let outcome = in_flight.await.unwrap();
    assert!(
        !matches!(&outcome, Ok(resp) if resp.status().is_success()),
        "the PATCH cannot have succeeded: {outcome:?}"
    );
    assert_eq!(
        r.proxy.failed(),
        1,
        "the proxy saw the replica die mid-request"
    );

    // Nothing of it is visible.
    let head = c.head_blob(&name, &digest).await.unwrap();
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
    // The surviving replica knows where the upload stands: at the last
    // acknowledged byte, whatever the dead one had received.
    let status = expect_status(
        c.upload_status(&location).await.unwrap(),
        &[StatusCode::NO_CONTENT],
        "upload status",
    )
    .await
    .unwrap();
    let range = status.headers()["range"].to_str().unwrap().to_owned();
    assert_eq!(range, format!("0-{}", first - 1));
    location = c.location(&status).unwrap();

    // The client resumes from there, and the blob is whole.
    let resp = c
        .patch_chunk(&location, first as u64, blob.slice(first..))
        .await
        .unwrap();
    location = c
        .location(
            &expect_status(resp, &[StatusCode::ACCEPTED], "resumed PATCH")
                .await
                .unwrap(),
        )
        .unwrap();
    let resp = c.finish_upload(&location, &digest, None).await.unwrap();
    expect_status(resp, &[StatusCode::CREATED], "PUT")
        .await
        .unwrap();
    assert_eq!(c.get_blob_bytes(&name, &digest).await.unwrap(), blob);

    // The killed replica, restarted, serves it too.
    r.servers[victim].restart();
    assert_eq!(
        r.direct(victim)
            .get_blob_bytes(&name, &digest)
            .await
            .unwrap(),
        blob
    );
}

/// A node's control-plane stream is held by one replica; operators talk to
/// the other. The command goes through the shared PostgreSQL store to the
/// replica holding the stream, the result comes back the same way; then
/// the node moves to the other replica and it works the other way round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_reaches_a_node_connected_to_the_other_replica() {
    use control_plane_client::ClientConfig;
    use control_plane_client::stand_in;

    let pg = test_support::Postgres::shared();
    let s3 = test_support::Garage::shared().create_bucket();
    let files = tempfile::tempdir().unwrap();
    let mut env: Vec<(String, String)> = vec![
        ("BERTH_AUTH__ENABLED".into(), "true".into()),
        ("BERTH_NODES__LISTEN".into(), "127.0.0.1:0".into()),
        ("BERTH_NODES__POLL_MS".into(), "100".into()),
    ];
    env.extend(pg.server_env(&pg.create_database()));
    env.extend(s3.server_env());
    let servers: Vec<BerthServer> = (0..2)
        .map(|i| {
            let mut b = BerthServer::builder()
                .postgres_metadata(false)
                .arg("--node-addr-file")
                .arg(files.path().join(format!("node-addr-{i}")));
            for (k, v) in &env {
                b = b.env(k, v);
            }
            b.start()
        })
        .collect();
    let node_url = |i: usize| {
        let addr = std::fs::read_to_string(files.path().join(format!("node-addr-{i}"))).unwrap();
        format!("https://{}", addr.trim())
    };
    let admin = |args: &[&str]| admin_on(&servers[0], &env, args);
    admin(&["account", "create", "acme", "--namespace", NS]);
    admin(&[
        "user",
        "create",
        "dev",
        "--account",
        "acme",
        "--role",
        "developer",
    ]);
    let secret = admin(&["credential", "mint", "dev"])["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let node_dir = files.path().join("node");
    let node = admin(&[
        "node",
        "enroll",
        "edge",
        "--account",
        "acme",
        "--out",
        node_dir.to_str().unwrap(),
    ]);
    let node_id = node["node"]["id"].as_str().unwrap().to_owned();
    let read = |f: &str| std::fs::read_to_string(node_dir.join(f)).unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    for (holder, operator) in [(0usize, 1usize), (1, 0)] {
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let mut node = stand_in::spawn(
            ClientConfig::new(
                node_url(holder),
                read("ca.crt"),
                read("node.crt"),
                read("node.key"),
            ),
            stop,
        );
        node.connected(Duration::from_secs(30)).await.unwrap();
        let api = servers[operator].url();
        let listed: Value = http
            .get(format!("{api}/api/v1/nodes"))
            .basic_auth("dev", Some(&secret))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(listed["nodes"][0]["online"], true, "{listed}");
        let resp = http
            .post(format!("{api}/api/v1/nodes/{node_id}/commands"))
            .basic_auth("dev", Some(&secret))
            .json(&serde_json::json!({"action": {"pull": {"image": "box:v1"}}}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        let id = resp.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let start = std::time::Instant::now();
        let done = loop {
            let c: Value = http
                .get(format!("{api}/api/v1/nodes/{node_id}/commands/{id}"))
                .basic_auth("dev", Some(&secret))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if c["state"] == "succeeded" {
                break c;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the command never finished through replica {operator}: {c}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(
            done["result"]["output"]["pulled"]["image"], "box:v1",
            "{done}"
        );
        assert_eq!(done["progress"]["blobs"][0]["state"], "done", "{done}");
        assert_eq!(node.handler.received(), vec![id], "the node got it once");
        let _ = stop_tx.send(true);
        node.task.await.unwrap();
    }
}
