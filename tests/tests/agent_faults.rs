//! berth-agent under faults, against a real berth-server (accounts on, node
//! endpoint over mTLS) and a real containerd started by the harness. The
//! only stand-in is a fault-injecting TCP proxy written here, between the
//! agent and the registry's HTTP listener:
//!
//! - it cuts the connection in the middle of a layer: the agent resumes
//!   with a Range request, the whole blob's digest verifies, `ctr` lists
//!   the image;
//! - it flips a byte of a layer: the pull fails naming the digest, and
//!   containerd holds neither the corrupt blob, nor an ingest, nor a lease;
//!   a later clean pull succeeds;
//!
//! - it drops every connection for a while (the registry is down): the
//!   pull retries with backoff and succeeds once it is back;
//! - it only watches while two agent processes pull the same image at
//!   once: each layer crosses it once;
//!
//! containerd restarted (SIGTERM, start again on the same socket and
//! state) in the middle of a pull: the agent waits for it and finishes,
//! with exactly the pushed bytes in containerd;
//!
//! and without a proxy's fault: a pull that would leave less than
//! `pull.min_free_bytes` is refused before any blob is downloaded, and
//! `pull.bandwidth_limit_bytes_per_sec` really slows a pull down.
#![allow(clippy::unwrap_used)]

mod common_agent;
mod common_auth;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common_agent::{AgentOptions, agent_config_with, agent_fails, agent_ok, listed_digest};
use common_auth::{ACME, ACME_NS, AuthServer, Enrolled, Tenants};
use flate2::Compression;
use serde_json::Value;
use test_support::images::LayerBuilder;
use test_support::{Arch, Image, ImageBuilder, sha256_digest};
use tests::Containerd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The largest request or response head the proxy reads.
const MAX_HEAD: usize = 64 * 1024;

/// What the proxy does to the response body of one blob.
#[derive(Clone, Debug)]
enum Fault {
    /// Forward `after` bytes of the first full (200) body of `digest`, then
    /// close the connection: a cut cable, once.
    CutOnce { digest: String, after: u64 },
    /// Invert byte `at` of every full (200) body of `digest` while set: a
    /// corrupting middlebox.
    Flip { digest: String, at: u64 },
    /// Close every connection at once, unanswered, while set: a registry
    /// that is down behind its load balancer.
    Down,
}

/// One request through the proxy and what became of its response.
#[derive(Clone, Debug)]
struct Exchange {
    path: String,
    /// The request's `Range` header.
    range: Option<String>,
    status: u16,
    /// Response body bytes forwarded to the agent.
    body_bytes: u64,
    cut: bool,
    flipped: bool,
}

impl Exchange {
    fn is_blob(&self, digest: &str) -> bool {
        self.path.ends_with(&format!("/blobs/{digest}"))
    }

    /// A whole blob's body: a plain GET, or what the agent asks first, a
    /// range from byte 0 (so oci-client leaves the hashing to the agent).
    fn is_whole(&self) -> bool {
        self.status == 200 || (self.status == 206 && self.range.as_deref() == Some("bytes=0-"))
    }
}

#[derive(Default)]
struct Shared {
    fault: Mutex<Option<Fault>>,
    log: Mutex<Vec<Exchange>>,
    connections: AtomicUsize,
    /// Connections closed unanswered by [`Fault::Down`].
    dropped: AtomicUsize,
}

/// A TCP proxy on an ephemeral port in front of `upstream`, speaking just
/// enough HTTP/1.1 to find body offsets. It turns every request into
/// `Connection: close`, so each connection carries one exchange and a
/// response's body is simply everything after its head (no framing to
/// follow across keep-alive requests). It runs on its own thread and
/// runtime, so the tests may block on the agent process meanwhile.
struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let s = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                tokio::pin!(stopped);
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => {
                            let Ok((client, _)) = accepted else { continue };
                            if matches!(*s.fault.lock().unwrap(), Some(Fault::Down)) {
                                s.dropped.fetch_add(1, Ordering::SeqCst);
                                drop(client);
                                continue;
                            }
                            let s = s.clone();
                            tokio::spawn(async move {
                                // A failed exchange is the agent's problem
                                // to handle (and the test's to see).
                                let _ = relay(client, upstream, s).await;
                            });
                        }
                    }
                }
            });
            // Connections still open are dropped with the runtime.
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        Proxy {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:PORT`: the registry host in the names of images pulled
    /// through the proxy.
    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn set_fault(&self, fault: Option<Fault>) {
        *self.shared.fault.lock().unwrap() = fault;
    }

    fn exchanges(&self) -> Vec<Exchange> {
        self.shared.log.lock().unwrap().clone()
    }

    fn blob_exchanges(&self, digest: &str) -> Vec<Exchange> {
        self.exchanges()
            .into_iter()
            .filter(|e| e.is_blob(digest))
            .collect()
    }

    fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    fn dropped(&self) -> usize {
        self.shared.dropped.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads up to the end of an HTTP head (`\r\n\r\n`); returns the head
/// (terminator included) and whatever was read past it.
async fn read_head<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::other("HTTP head too large"));
        }
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One connection: the request (made `Connection: close`) upstream, the
/// response back with the fault applied, the exchange logged.
async fn relay(
    mut client: TcpStream,
    upstream: SocketAddr,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    shared.connections.fetch_add(1, Ordering::SeqCst);
    let (head, rest) = read_head(&mut client).await?;
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let mut forwarded = format!("{request_line}\r\n");
    let mut range = None;
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line.split_once(':').map_or(line, |(n, _)| n).trim();
        if name.eq_ignore_ascii_case("connection") {
            continue;
        }
        if name.eq_ignore_ascii_case("range") {
            range = line.split_once(':').map(|(_, v)| v.trim().to_owned());
        }
        forwarded.push_str(line);
        forwarded.push_str("\r\n");
    }
    forwarded.push_str("Connection: close\r\n\r\n");

    let mut server = TcpStream::connect(upstream).await?;
    server.write_all(forwarded.as_bytes()).await?;
    server.write_all(&rest).await?;
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    // The agent sends no request bodies, but pass on whatever comes.
    let upload = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_rd, &mut server_wr).await;
    });

    let (resp_head, mut pending) = read_head(&mut server_rd).await?;
    let status: u16 = String::from_utf8_lossy(&resp_head)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut exchange = Exchange {
        path,
        range,
        status,
        body_bytes: 0,
        cut: false,
        flipped: false,
    };
    // Which fault applies to this response (only whole bodies of the
    // chosen blob, where body offsets are blob offsets); a cut is used up
    // by the first response it applies to.
    let (cut_after, flip_at) = {
        let mut fault = shared.fault.lock().unwrap();
        match fault.clone() {
            Some(Fault::CutOnce { digest, after })
                if exchange.is_whole() && exchange.is_blob(&digest) =>
            {
                *fault = None;
                (Some(after), None)
            }
            Some(Fault::Flip { digest, at })
                if exchange.is_whole() && exchange.is_blob(&digest) =>
            {
                (None, Some(at))
            }
            _ => (None, None),
        }
    };
    client_wr.write_all(&resp_head).await?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut chunk = if pending.is_empty() {
            let n = server_rd.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            buf[..n].to_vec()
        } else {
            std::mem::take(&mut pending)
        };
        let start = exchange.body_bytes;
        let end = start + chunk.len() as u64;
        if let Some(at) = flip_at
            && (start..end).contains(&at)
        {
            chunk[usize::try_from(at - start).unwrap()] ^= 0xff;
            exchange.flipped = true;
        }
        if let Some(after) = cut_after
            && end >= after
        {
            client_wr
                .write_all(&chunk[..usize::try_from(after - start).unwrap()])
                .await?;
            exchange.body_bytes = after;
            exchange.cut = true;
            break;
        }
        client_wr.write_all(&chunk).await?;
        exchange.body_bytes = end;
    }
    // Dropping both halves closes the agent's connection: after a cut, in
    // the middle of the body its Content-Length announced.
    upload.abort();
    drop(client_wr);
    drop(server_rd);
    shared.log.lock().unwrap().push(exchange);
    Ok(())
}

/// A two-layer image: `big` bytes of incompressible data (stored, not
/// deflated, so the blob is about as large) and a small layer.
fn big_image(big: u64, seed: u64) -> Image {
    let one = LayerBuilder::new()
        .dir("data/")
        .random_file("data/big.bin", big, seed)
        .compression(Compression::none())
        .build();
    let two = LayerBuilder::new().dir("etc/").file(
        "etc/berth-test",
        0o644,
        Bytes::from(format!("seed {seed}\n")),
    );
    ImageBuilder::new(Arch::Amd64)
        .layer(one)
        .layer(two.build())
        .build()
}

/// A server with the two tenants, a containerd, an enrolled node, and
/// `image` pushed as `acme.example.io/big:v1`.
struct Setup {
    srv: AuthServer,
    ctrd: Containerd,
    node: Enrolled,
    _tenants: Tenants,
}

async fn setup(node_name: &str, image: &Image) -> Setup {
    let srv = AuthServer::start();
    let tenants = srv.setup_tenants();
    let ctrd = Containerd::start();
    srv.push_as(&tenants.acme_dev, &format!("{ACME_NS}/big"), image, "v1")
        .await;
    let node = srv.enroll(node_name, ACME, None);
    Setup {
        srv,
        ctrd,
        node,
        _tenants: tenants,
    }
}

impl Setup {
    fn proxy(&self) -> Proxy {
        Proxy::start(self.srv.host().parse().unwrap())
    }

    fn config(&self, opts: &AgentOptions) -> std::path::PathBuf {
        agent_config_with(&self.srv, &self.node, &self.ctrd, self.srv.files(), opts)
    }

    fn through(&self, proxy: &Proxy) -> std::path::PathBuf {
        self.config(&AgentOptions {
            registry_url: Some(proxy.url()),
            ..AgentOptions::default()
        })
    }

    /// No pull's lease is left in containerd.
    fn assert_no_lease(&self) {
        let leases = self.ctrd.run_ctr(["leases", "ls"]).unwrap();
        assert!(!leases.contains("berth-agent-"), "leases left:\n{leases}");
    }

    /// containerd's content store holds `digest` (committed or ingesting).
    fn holds(&self, digest: &str) -> bool {
        let hex = digest.trim_start_matches("sha256:");
        let committed = self.ctrd.run_ctr(["content", "ls"]).unwrap();
        let active = self.ctrd.run_ctr(["content", "active"]).unwrap();
        committed.contains(hex) || active.contains(hex)
    }
}

#[tokio::test]
async fn a_cut_mid_layer_is_resumed_with_a_range_request() {
    let image = big_image(6 << 20, 101);
    let s = setup("edge-cut", &image).await;
    let proxy = s.proxy();
    let layer = &image.layers[0];
    // Not on a 1 MiB boundary: the agent must keep exactly what it got.
    let after = (2 << 20) + 12_345;
    assert!(layer.size() > after + (1 << 20));
    proxy.set_fault(Some(Fault::CutOnce {
        digest: layer.digest.clone(),
        after,
    }));
    let config = s.through(&proxy);

    let out = agent_ok(&config, &["pull", "big:v1", "--json"]);
    let pulled: Value = serde_json::from_str(out.trim()).unwrap();
    let name = format!("{}/{ACME_NS}/big:v1", proxy.host());
    assert_eq!(pulled["name"], name.as_str());
    assert_eq!(pulled["digest"], image.digest.as_str());

    // The proxy really cut once, in the middle of the layer, and the agent
    // asked for the rest only: one full response cut short, then a Range
    // request from exactly where the cut was.
    let tries = proxy.blob_exchanges(&layer.digest);
    assert_eq!(tries.len(), 2, "{tries:#?}");
    assert!(tries[0].cut && tries[0].is_whole(), "{tries:#?}");
    assert_eq!(tries[0].range.as_deref(), Some("bytes=0-"));
    assert_eq!(tries[0].body_bytes, after);
    assert_eq!(
        tries[1].range,
        Some(format!("bytes={after}-")),
        "{tries:#?}"
    );
    assert_eq!(tries[1].status, 206, "{tries:#?}");
    assert!(!tries[1].cut);
    assert_eq!(tries[1].body_bytes, layer.size() - after);
    let cuts = proxy.exchanges().iter().filter(|e| e.cut).count();
    assert_eq!(cuts, 1);
    assert!(proxy.connections() >= proxy.exchanges().len());

    // containerd has the image and exactly the pushed bytes.
    assert_eq!(listed_digest(&s.ctrd, &name), Some(image.digest.clone()));
    for blob in image.blobs() {
        let out = s
            .ctrd
            .ctr()
            .args(["content", "get", &blob.digest])
            .output()
            .unwrap();
        assert!(out.status.success(), "ctr content get {}", blob.digest);
        assert!(out.stdout == blob.data, "content {} differs", blob.digest);
    }
    s.assert_no_lease();
}

#[tokio::test]
async fn a_flipped_byte_fails_the_pull_and_leaves_nothing_corrupt() {
    let image = big_image(3 << 20, 202);
    let s = setup("edge-flip", &image).await;
    let proxy = s.proxy();
    let layer = &image.layers[0];
    let at = layer.size() / 2;
    proxy.set_fault(Some(Fault::Flip {
        digest: layer.digest.clone(),
        at,
    }));
    let mut corrupt = layer.data.to_vec();
    corrupt[usize::try_from(at).unwrap()] ^= 0xff;
    let corrupt_digest = sha256_digest(&corrupt);
    let config = s.through(&proxy);

    let err = agent_fails(&config, &["pull", "big:v1"]);
    assert!(
        err.contains(&format!("digest mismatch for {}", layer.digest)),
        "{err}"
    );
    assert!(err.contains(&corrupt_digest), "{err}");
    let flips = proxy.blob_exchanges(&layer.digest);
    assert!(flips.iter().any(|e| e.flipped), "{flips:#?}");
    // Without retries too: the corruption is reported as such, not as a
    // failed download.
    let dir = s.srv.files().join("one-attempt");
    std::fs::create_dir_all(&dir).unwrap();
    let one_attempt = agent_config_with(
        &s.srv,
        &s.node,
        &s.ctrd,
        &dir,
        &AgentOptions {
            registry_url: Some(proxy.url()),
            max_attempts: Some(1),
            ..AgentOptions::default()
        },
    );
    let err = agent_fails(&one_attempt, &["pull", "big:v1"]);
    assert!(
        err.contains(&format!("digest mismatch for {}", layer.digest)),
        "{err}"
    );

    // Nothing of it in containerd: no blob under either digest, no
    // half-written ingest, no lease, no image record.
    assert!(!s.holds(&layer.digest), "the layer is in containerd");
    assert!(
        !s.holds(&corrupt_digest),
        "the corrupt blob is in containerd"
    );
    s.assert_no_lease();
    let name = format!("{}/{ACME_NS}/big:v1", proxy.host());
    assert_eq!(listed_digest(&s.ctrd, &name), None);
    // Nor a snapshot the agent was unpacking the bytes into as they came.
    let snapshots = s.ctrd.run_ctr(["snapshots", "ls"]).unwrap();
    assert_eq!(snapshots.lines().count(), 1, "{snapshots}");

    // The path is clean again: the same pull succeeds.
    proxy.set_fault(None);
    let out = agent_ok(&config, &["pull", "big:v1", "--json"]);
    let pulled: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(pulled["digest"], image.digest.as_str());
    assert_eq!(listed_digest(&s.ctrd, &name), Some(image.digest.clone()));
    let got = s
        .ctrd
        .ctr()
        .args(["content", "get", &layer.digest])
        .output()
        .unwrap();
    assert!(got.status.success() && got.stdout == layer.data);
    assert!(!s.holds(&corrupt_digest));
    s.assert_no_lease();
}

#[tokio::test]
async fn too_little_free_space_refuses_the_pull_before_any_download() {
    let image = big_image(1 << 20, 303);
    let s = setup("edge-disk", &image).await;
    let proxy = s.proxy();
    let config = s.config(&AgentOptions {
        registry_url: Some(proxy.url()),
        // 1 EiB: no test machine has it.
        min_free_bytes: 1 << 60,
        ..AgentOptions::default()
    });

    let err = agent_fails(&config, &["pull", "big:v1"]);
    assert!(err.contains("not enough disk space on"), "{err}");
    // The layers twice (compressed, then unpacked) plus the reserve.
    let layers: u64 = image.layers.iter().map(|l| l.size()).sum();
    let need = 2 * layers + (1u64 << 60);
    assert!(err.contains(&format!("need {need} bytes")), "{err}");
    // Manifests only: no blob (layer or config) went over the wire.
    let blobs: Vec<Exchange> = proxy
        .exchanges()
        .into_iter()
        .filter(|e| e.path.contains("/blobs/"))
        .collect();
    assert!(blobs.is_empty(), "{blobs:#?}");
    assert!(
        proxy
            .exchanges()
            .iter()
            .any(|e| e.path.contains("/manifests/")),
        "{:#?}",
        proxy.exchanges()
    );
    for blob in image.blobs() {
        assert!(!s.holds(&blob.digest), "{} is in containerd", blob.digest);
    }
    s.assert_no_lease();
}

#[tokio::test]
async fn the_bandwidth_limit_slows_the_pull_down() {
    let image = big_image(4 << 20, 404);
    let s = setup("edge-slow", &image).await;
    let limit: u64 = 512 * 1024;
    let config = s.config(&AgentOptions {
        bandwidth_limit_bytes_per_sec: Some(limit),
        ..AgentOptions::default()
    });
    let total: u64 = image.layers.iter().map(|l| l.size()).sum();
    // The limiter allows one second of burst: the pull takes at least
    // (total - limit) / limit seconds, which is above the 0.8 · total /
    // limit checked here only when total / limit ≥ 5.
    assert!(total / limit >= 5, "{total}");

    let start = Instant::now();
    let out = agent_ok(&config, &["pull", "big:v1", "--json"]);
    let took = start.elapsed();
    let pulled: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(pulled["digest"], image.digest.as_str());
    assert_eq!(pulled["downloaded"], total);
    // A lower bound only: this checks that the limiter limits, not how
    // fast anything is.
    let floor = Duration::from_secs_f64(0.8 * total as f64 / limit as f64);
    assert!(
        took >= floor,
        "{total} bytes at {limit} B/s took {took:?}, under {floor:?}"
    );
    let name = format!("{}/{ACME_NS}/big:v1", s.srv.host());
    assert_eq!(listed_digest(&s.ctrd, &name), Some(image.digest.clone()));
}

/// `count` layers of `size` bytes of incompressible data each.
fn layered_image(count: u64, size: u64, seed: u64) -> Image {
    let mut builder = ImageBuilder::new(Arch::Amd64);
    for i in 0..count {
        builder = builder.layer(
            LayerBuilder::new()
                .dir("data/")
                .random_file(&format!("data/{i}.bin"), size, seed + i)
                .compression(Compression::none())
                .build(),
        );
    }
    builder.build()
}

/// `berth-agent pull` started in the background.
fn spawn_pull(config: &std::path::Path, reference: &str) -> std::process::Child {
    std::process::Command::new(test_support::workspace_bin("berth-agent"))
        .arg("--config")
        .arg(config)
        .args(["pull", reference, "--json"])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a background pull, which must succeed; its JSON result and
/// its stderr.
fn finished_pull(child: std::process::Child) -> (Value, String) {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "the pull failed with {}:\n{stderr}",
        out.status
    );
    let result = serde_json::from_slice(&out.stdout).unwrap();
    (result, stderr)
}

#[tokio::test]
async fn a_registry_that_is_down_then_up_is_retried_until_the_pull_succeeds() {
    let image = big_image(1 << 20, 505);
    let s = setup("edge-down", &image).await;
    let proxy = s.proxy();
    proxy.set_fault(Some(Fault::Down));
    // Enough attempts to outlast the outage below at a 500 ms cap.
    let config = s.config(&AgentOptions {
        registry_url: Some(proxy.url()),
        max_attempts: Some(30),
        ..AgentOptions::default()
    });
    let child = spawn_pull(&config, "big:v1");
    // Down long enough for several attempts, then back.
    let start = Instant::now();
    while proxy.dropped() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the agent did not retry"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.set_fault(None);
    let (pulled, stderr) = finished_pull(child);
    assert_eq!(pulled["digest"], image.digest.as_str(), "{stderr}");
    assert!(proxy.dropped() >= 3);
    let name = format!("{}/{ACME_NS}/big:v1", proxy.host());
    assert_eq!(listed_digest(&s.ctrd, &name), Some(image.digest.clone()));
    s.assert_no_lease();
}

#[tokio::test]
async fn two_agent_processes_pulling_one_image_download_each_layer_once() {
    // Three layers, slowed down so the two pulls overlap for seconds.
    let image = layered_image(3, 2 << 20, 600);
    let s = setup("edge-twice", &image).await;
    let proxy = s.proxy();
    let config = s.config(&AgentOptions {
        registry_url: Some(proxy.url()),
        bandwidth_limit_bytes_per_sec: Some(2 << 20),
        ..AgentOptions::default()
    });
    let first = spawn_pull(&config, "big:v1");
    let second = spawn_pull(&config, "big:v1");
    let (a, a_err) = finished_pull(first);
    let (b, b_err) = finished_pull(second);
    assert_eq!(a["digest"], image.digest.as_str(), "{a_err}");
    assert_eq!(b["digest"], image.digest.as_str(), "{b_err}");
    // Each layer crossed the proxy once, in one full response; between
    // them the two processes downloaded each byte once.
    for layer in &image.layers {
        let tries = proxy.blob_exchanges(&layer.digest);
        assert_eq!(tries.len(), 1, "{}: {tries:#?}", layer.digest);
        assert!(tries[0].is_whole(), "{tries:#?}");
        assert_eq!(tries[0].body_bytes, layer.size());
    }
    let total: u64 = image.layers.iter().map(|l| l.size()).sum();
    let downloaded = a["downloaded"].as_u64().unwrap() + b["downloaded"].as_u64().unwrap();
    assert_eq!(downloaded, total, "{a} {b}\n{a_err}\n{b_err}");
    // Nothing left of the node-wide locks.
    let locks = s.srv.files().join("agent-data/locks");
    assert_eq!(std::fs::read_dir(&locks).unwrap().count(), 0);
    s.assert_no_lease();
}

#[tokio::test]
async fn containerd_restarted_mid_pull_is_waited_for() {
    let image = layered_image(3, 4 << 20, 700);
    let mut s = setup("edge-ctrd", &image).await;
    // About six seconds of download: the restart lands in the middle.
    let config = s.config(&AgentOptions {
        bandwidth_limit_bytes_per_sec: Some(2 << 20),
        log_json: true,
        ..AgentOptions::default()
    });
    let mut child = spawn_pull(&config, "big:v1");
    // Wait until containerd is taking in a layer, then restart it.
    let start = Instant::now();
    loop {
        let active = s.ctrd.run_ctr(["content", "active"]).unwrap();
        if active.lines().count() > 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no ingest started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.ctrd.restart().unwrap();
    assert!(
        child.try_wait().unwrap().is_none(),
        "the pull ended before containerd was back"
    );
    let (pulled, stderr) = finished_pull(child);
    assert_eq!(pulled["digest"], image.digest.as_str(), "{stderr}");
    assert!(
        stderr.contains("containerd unavailable; retrying the import"),
        "the restart did not reach the pull:\n{stderr}"
    );
    let name = format!("{}/{ACME_NS}/big:v1", s.srv.host());
    assert_eq!(listed_digest(&s.ctrd, &name), Some(image.digest.clone()));
    for blob in image.blobs() {
        let out = s
            .ctrd
            .ctr()
            .args(["content", "get", &blob.digest])
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stdout == blob.data,
            "{}",
            blob.digest
        );
    }
    let active = s.ctrd.run_ctr(["content", "active"]).unwrap();
    assert!(active.lines().count() <= 1, "ingests left:\n{active}");
    s.assert_no_lease();
    // Unpacked: a committed snapshot per layer (and the header line).
    let snapshots = s.ctrd.run_ctr(["snapshots", "ls"]).unwrap();
    assert!(snapshots.lines().count() > 3, "{snapshots}");
}
