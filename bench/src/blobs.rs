//! Blob measurements: monolithic and chunked push throughput, 4-way
//! parallel pull throughput, and the peak RSS of a streamed 2 GiB push.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use sha2::{Digest as _, Sha256};
use test_support::images::layers::fill_random;
use test_support::{random_blob, sha256_digest};

use crate::progress;
use crate::registries::{Registry, check_digest, expect, next_seed, push_blob};
use crate::system;

/// How a blob is pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushKind {
    /// `POST`, then one `PUT ?digest=` with the whole body.
    Monolithic,
    /// `POST`, `PATCH`es of this many bytes with `Content-Range`, then an
    /// empty `PUT ?digest=`.
    Chunked(usize),
}

/// A fresh random blob of `size` bytes and its digest, generated off the
/// async threads.
pub async fn fresh_blob(size: usize) -> anyhow::Result<(Bytes, String)> {
    let seed = next_seed();
    tokio::task::spawn_blocking(move || {
        let data = random_blob(size, seed);
        let digest = sha256_digest(&data);
        (data, digest)
    })
    .await
    .context("generating a random blob")
}

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e6
}

/// Orders the two registries for run `run`: alternating who goes first, so
/// that neither always runs right after the other's writes.
pub fn order(run: u32) -> [usize; 2] {
    if run.is_multiple_of(2) {
        [0, 1]
    } else {
        [1, 0]
    }
}

/// Push throughput in MB/s per registry, one sample per run. Every run
/// pushes one fresh random blob (the same bytes to both registries, a new
/// blob each run); `sync` runs before each timed push so that the previous
/// push's dirty pages are not flushed during this one. The clock covers the
/// `POST` to the final `201` (digest verified, blob committed).
pub async fn push_rates(
    regs: &[Registry; 2],
    kind: PushKind,
    size: usize,
    runs: u32,
) -> anyhow::Result<([Vec<f64>; 2], [f64; 2])> {
    let repo = match kind {
        PushKind::Monolithic => "bench/push",
        PushKind::Chunked(_) => "bench/push-chunked",
    };
    let mut rates: [Vec<f64>; 2] = Default::default();
    let mut cpu = [Duration::ZERO; 2];
    for run in 0..runs {
        let (data, digest) = fresh_blob(size).await?;
        for i in order(run) {
            let reg = &regs[i];
            system::sync()?;
            let cpu_before = system::cpu_time(reg.pid)?;
            let start = Instant::now();
            let resp = match kind {
                PushKind::Monolithic => reg
                    .client
                    .push_blob_post_put(repo, &digest, data.clone())
                    .await
                    .with_context(|| format!("monolithic push to {}", reg.name))?,
                PushKind::Chunked(chunk) => reg
                    .client
                    .push_blob_chunked(repo, &digest, data.clone(), chunk)
                    .await
                    .with_context(|| format!("chunked push to {}", reg.name))?,
            };
            let resp = expect(reg, resp, StatusCode::CREATED, "blob PUT").await?;
            let elapsed = start.elapsed();
            cpu[i] += system::cpu_time(reg.pid)?.saturating_sub(cpu_before);
            check_digest(reg, &resp, &digest)?;
            let rate = mb_per_s(size as u64, elapsed);
            progress::line(format!(
                "  run {}/{runs} {}: {rate:.1} MB/s ({:.3} s)",
                run + 1,
                reg.name,
                elapsed.as_secs_f64()
            ));
            rates[i].push(rate);
        }
    }
    Ok((rates, cpu.map(|c| per_op_ms(c, runs))))
}

/// Milliseconds of `total` per operation.
pub fn per_op_ms(total: Duration, ops: u32) -> f64 {
    total.as_secs_f64() * 1e3 / f64::from(ops.max(1))
}

/// Digests of the pull blobs, the same on both registries.
pub struct PullSet {
    pub digests: Vec<String>,
    pub size: u64,
}

/// Pushes `count` fresh random blobs of `size` bytes to both registries
/// (set-up, not timed).
pub async fn pull_setup(
    regs: &[Registry; 2],
    count: usize,
    size: usize,
) -> anyhow::Result<PullSet> {
    let mut digests = Vec::new();
    for n in 0..count {
        progress::line(format!(
            "  pull set-up: pushing blob {}/{count} to both",
            n + 1
        ));
        let (data, digest) = fresh_blob(size).await?;
        for reg in regs {
            push_blob(reg, "bench/pull", &digest, data.clone()).await?;
        }
        digests.push(digest);
    }
    Ok(PullSet {
        digests,
        size: size as u64,
    })
}

/// One parallel pull: a `GET` per blob, all at once, each on its own task
/// (so the client uses every core) and its own pooled connection. Counts
/// the bytes received and, with `verify`, hashes them and compares with the
/// digest. Returns the total bytes and the wall time until the last body
/// ended.
pub async fn pull_once(
    reg: &Registry,
    set: &PullSet,
    verify: bool,
) -> anyhow::Result<(u64, Duration)> {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for digest in &set.digests {
        let reg = reg.clone();
        let digest = digest.clone();
        let size = set.size;
        tasks.spawn(async move {
            let resp = reg.client.get_blob("bench/pull", &digest, None).await?;
            let mut resp = expect(&reg, resp, StatusCode::OK, "blob GET").await?;
            let mut received = 0u64;
            let mut hasher = verify.then(Sha256::new);
            while let Some(chunk) = resp
                .chunk()
                .await
                .with_context(|| format!("reading blob {digest} from {}", reg.name))?
            {
                received += chunk.len() as u64;
                if let Some(h) = hasher.as_mut() {
                    h.update(&chunk);
                }
            }
            ensure!(
                received == size,
                "{} sent {received} bytes of blob {digest}, expected {size}",
                reg.name
            );
            if let Some(h) = hasher {
                let got = format!("sha256:{}", hex::encode(h.finalize()));
                ensure!(
                    got == digest,
                    "{} sent content hashing to {got} for blob {digest}",
                    reg.name
                );
            }
            anyhow::Ok(received)
        });
    }
    let mut total = 0;
    while let Some(res) = tasks.join_next().await {
        total += res.context("a pull task panicked")??;
    }
    Ok((total, start.elapsed()))
}

/// Pull throughput in MB/s per registry: one verified pull first (sha256 of
/// every byte received; also warms the page cache), then `runs` timed pulls
/// that only count bytes, because hashing 4 streams would make the client's
/// CPU the bottleneck on this machine.
pub async fn pull_rates(
    regs: &[Registry; 2],
    set: &PullSet,
    runs: u32,
) -> anyhow::Result<([Vec<f64>; 2], [f64; 2])> {
    for reg in regs {
        let (bytes, elapsed) = pull_once(reg, set, true).await?;
        progress::line(format!(
            "  verified pull from {}: sha256 of all {} blobs OK ({:.1} MB/s with hashing, not counted)",
            reg.name,
            set.digests.len(),
            mb_per_s(bytes, elapsed)
        ));
    }
    let mut rates: [Vec<f64>; 2] = Default::default();
    let mut cpu = [Duration::ZERO; 2];
    for run in 0..runs {
        for i in order(run) {
            let reg = &regs[i];
            let cpu_before = system::cpu_time(reg.pid)?;
            let (bytes, elapsed) = pull_once(reg, set, false).await?;
            cpu[i] += system::cpu_time(reg.pid)?.saturating_sub(cpu_before);
            let rate = mb_per_s(bytes, elapsed);
            progress::line(format!(
                "  run {}/{runs} {}: {rate:.1} MB/s ({:.3} s)",
                run + 1,
                reg.name,
                elapsed.as_secs_f64()
            ));
            rates[i].push(rate);
        }
    }
    Ok((rates, cpu.map(|c| per_op_ms(c, runs))))
}

/// Bytes generated per body chunk of the streamed big push.
const STREAM_CHUNK: usize = 1024 * 1024;

/// The digest of the `size`-byte pseudo-random stream for `seed`, computed
/// by generating it chunk by chunk (never held whole in memory).
pub async fn streamed_digest(seed: u64, size: u64) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 4 * STREAM_CHUNK];
        let mut offset = 0;
        while offset < size {
            let n = buf.len().min((size - offset) as usize);
            fill_random(seed, offset, &mut buf[..n]);
            hasher.update(&buf[..n]);
            offset += n as u64;
        }
        format!("sha256:{}", hex::encode(hasher.finalize()))
    })
    .await
    .context("hashing the big blob")
}

/// What the big push measured on one registry.
#[derive(Debug)]
pub struct RssSample {
    /// VmRSS just before the push.
    pub before: u64,
    /// VmHWM after the push (peak since the reset just before it).
    pub hwm: u64,
    /// The largest VmRSS seen by sampling every 50 ms during the push.
    pub sampled: u64,
    /// Whether the peak could be reset before the push; if not, `peak` is
    /// the peak since the server started.
    pub reset: bool,
    pub elapsed: Duration,
    /// Server CPU time (user + system) spent during the push.
    pub cpu: Duration,
}

/// Pushes the `size`-byte stream for `seed` to `reg` with `POST` and one
/// streamed `PUT` (Content-Length set, body generated 1 MiB at a time), and
/// reads the server's peak RSS around it.
pub async fn big_push(
    reg: &Registry,
    seed: u64,
    size: u64,
    digest: &str,
) -> anyhow::Result<RssSample> {
    system::sync()?;
    let reset = match system::reset_peak_rss(reg.pid) {
        Ok(()) => true,
        Err(e) => {
            progress::line(format!(
                "  cannot reset the peak RSS of {} ({e:#}): reporting the peak since start",
                reg.name
            ));
            false
        }
    };
    let before = system::proc_status_bytes(reg.pid, "VmRSS")?;
    let started = reg.client.start_upload("bench/big").await?;
    let started = expect(reg, started, StatusCode::ACCEPTED, "upload POST").await?;
    let mut url = reg.client.location(&started)?;
    url.query_pairs_mut().append_pair("digest", digest);

    let bar = progress::bytes(size, &format!("2 GiB-class push to {}", reg.name));
    let sent = Arc::new(AtomicU64::new(0));
    let body = futures::stream::unfold(0u64, move |offset| async move {
        if offset >= size {
            return None;
        }
        let n = STREAM_CHUNK.min((size - offset) as usize);
        let mut chunk = vec![0u8; n];
        fill_random(seed, offset, &mut chunk);
        Some((
            Ok::<_, std::io::Error>(Bytes::from(chunk)),
            offset + n as u64,
        ))
    });
    let (bar_for_body, sent_for_body) = (bar.clone(), sent.clone());
    let body = body.inspect(move |chunk| {
        if let Ok(c) = chunk {
            bar_for_body.inc(c.len() as u64);
            sent_for_body.fetch_add(c.len() as u64, Ordering::Relaxed);
        }
    });

    // Samples VmRSS while the push runs, as a cross-check of VmHWM.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        let pid = reg.pid;
        tokio::spawn(async move {
            let mut max = 0u64;
            while !done.load(Ordering::Relaxed) {
                if let Ok(rss) = system::proc_status_bytes(pid, "VmRSS") {
                    max = max.max(rss);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            max
        })
    };

    let cpu_before = system::cpu_time(reg.pid)?;
    let start = Instant::now();
    let result = reg
        .client
        .request(Method::PUT, url)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_LENGTH, size)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await;
    let elapsed = start.elapsed();
    let cpu = system::cpu_time(reg.pid)?.saturating_sub(cpu_before);
    done.store(true, Ordering::Relaxed);
    bar.finish_and_clear();
    let sampled_max = sampler.await.context("the RSS sampler panicked")?;
    let resp = result.with_context(|| format!("streamed PUT to {}", reg.name))?;
    let resp = expect(reg, resp, StatusCode::CREATED, "streamed blob PUT").await?;
    check_digest(reg, &resp, digest)?;
    let sent = sent.load(Ordering::Relaxed);
    if sent != size {
        bail!("sent {sent} bytes to {} instead of {size}", reg.name);
    }
    let hwm = system::proc_status_bytes(reg.pid, "VmHWM")?;
    progress::line(format!(
        "  {}: VmRSS before {:.1} MiB, VmHWM {:.1} MiB (max sampled VmRSS {:.1} MiB), {:.1} MB/s",
        reg.name,
        mib(before),
        mib(hwm),
        mib(sampled_max),
        mb_per_s(size, elapsed)
    ));
    Ok(RssSample {
        before,
        hwm,
        sampled: sampled_max,
        reset,
        elapsed,
        cpu,
    })
}

impl RssSample {
    /// The peak reported: VmHWM, or the sampled VmRSS if that was higher
    /// (the kernel updates its high-water mark lazily, so a short-lived peak
    /// can be missing from VmHWM).
    pub fn peak(&self) -> u64 {
        self.hwm.max(self.sampled)
    }
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
