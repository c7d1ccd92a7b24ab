//! Metadata measurements: manifest GETs with `wrk`, manifest PUTs, and full
//! listings of 10,000 tags and of a 10,000-repository catalog.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use bytes::Bytes;
use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use test_support::images::media_types::OCI_MANIFEST;
use test_support::{Arch, Image, ImageBuilder, LayerBuilder, sha256_digest};

use crate::blobs::order;
use crate::progress;
use crate::registries::{Registry, expect, list_all, next_seed, push_blob, put_manifest};
use crate::report::{median, percentile};
use crate::system::{self, WrkResult};

/// A small OCI image (one 4 KiB random-file layer) and the builder that made
/// it, for variants over the same blobs.
pub(crate) fn small_image() -> (ImageBuilder, Image) {
    let layer = LayerBuilder::new()
        .random_file("bench/data", 4096, next_seed())
        .build();
    let builder = ImageBuilder::new(Arch::Amd64).layer(layer);
    let image = builder.clone().build();
    (builder, image)
}

pub(crate) async fn push_image(
    reg: &Registry,
    repo: &str,
    image: &Image,
    tag: &str,
) -> anyhow::Result<()> {
    for blob in image.blobs() {
        push_blob(reg, repo, &blob.digest, blob.data.clone())
            .await
            .with_context(|| format!("pushing blob {} to {repo} on {}", blob.digest, reg.name))?;
    }
    put_manifest(
        reg,
        repo,
        tag,
        &image.manifest_media_type,
        image.manifest.clone(),
        &image.digest,
    )
    .await
}

/// Runs `op(i)` for `i` in `0..n`, at most `concurrency` at a time, each on
/// its own task; returns each operation's latency. The first error aborts.
pub(crate) async fn run_concurrent<F, Fut>(
    n: usize,
    concurrency: usize,
    bar: Option<&indicatif::ProgressBar>,
    op: F,
) -> anyhow::Result<Vec<Duration>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut results = futures::stream::iter(0..n)
        .map(|i| {
            let fut = op(i);
            tokio::spawn(async move {
                let start = Instant::now();
                fut.await.map(|()| start.elapsed())
            })
        })
        .buffer_unordered(concurrency);
    let mut latencies = Vec::with_capacity(n);
    while let Some(res) = results.next().await {
        latencies.push(res.context("a request task panicked")??);
        if let Some(bar) = bar {
            bar.inc(1);
        }
    }
    Ok(latencies)
}

/// wrk's parameters for the manifest GET measurement.
#[derive(Debug, Clone, Copy)]
pub struct WrkParams {
    pub threads: u32,
    pub connections: u32,
    pub secs: u32,
}

async fn wrk(
    url: &str,
    p: WrkParams,
    secs: u32,
    header: Option<&str>,
) -> anyhow::Result<WrkResult> {
    let wrk = test_support::tools::find_tool("wrk")
        .context("wrk is required for manifest-get: apt-get install wrk")?;
    let out = tokio::process::Command::new(wrk)
        .arg(format!("-t{}", p.threads))
        .arg(format!("-c{}", p.connections))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .arg("-H")
        .arg(format!("Accept: {OCI_MANIFEST}"))
        .args(header.map(|h| ["-H", h]).into_iter().flatten())
        .arg(url)
        .output()
        .await
        .context("running wrk")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "wrk failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    system::parse_wrk(&stdout)
}

/// Manifest GET by tag with wrk: the same small manifest on both; one
/// checked GET, one 1-second warm-up, then the measured run.
/// Also returns each server's CPU time per request (µs) in the measured run.
pub async fn manifest_get(
    regs: &[Registry; 2],
    p: WrkParams,
) -> anyhow::Result<([WrkResult; 2], [f64; 2])> {
    let (_, image) = small_image();
    let mut results = Vec::new();
    let mut cpu_us = [0.0; 2];
    for (i, reg) in regs.iter().enumerate() {
        push_image(reg, "bench/manifest", &image, "latest").await?;
        // What wrk will ask for, checked once in full.
        let url = reg.client.url("/v2/bench/manifest/manifests/latest");
        let resp = reg
            .client
            .http()
            .get(url.clone())
            .header(ACCEPT, OCI_MANIFEST)
            .send()
            .await?;
        let resp = expect(reg, resp, StatusCode::OK, "manifest GET").await?;
        let ctype = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        ensure!(
            ctype == OCI_MANIFEST,
            "{} served the manifest as {ctype:?}",
            reg.name
        );
        let body = resp.bytes().await?;
        ensure!(
            body == image.manifest,
            "{} served other manifest bytes",
            reg.name
        );
        progress::line(format!("  {}: wrk warm-up (1 s)", reg.name));
        wrk(url.as_str(), p, 1, None).await?;
        progress::line(format!(
            "  {}: wrk -t{} -c{} -d{}s --latency",
            reg.name, p.threads, p.connections, p.secs
        ));
        let cpu_before = system::cpu_time(reg.pid)?;
        let r = wrk(url.as_str(), p, p.secs, None).await?;
        let cpu = system::cpu_time(reg.pid)?.saturating_sub(cpu_before);
        cpu_us[i] = cpu.as_secs_f64() * 1e6 / r.requests.max(1) as f64;
        progress::line(format!(
            "  {}: {:.0} req/s, p99 {:.3} ms",
            reg.name,
            r.requests_per_sec,
            r.p99.as_secs_f64() * 1e3
        ));
        results.push(r);
    }
    let [b, d]: [WrkResult; 2] = results
        .try_into()
        .map_err(|_| anyhow::anyhow!("expected two wrk results"))?;
    Ok(([b, d], cpu_us))
}

/// Manifest GET by tag with wrk on two berth-servers, the second with an
/// extra request header (a bearer token): the same image pushed to both,
/// one checked GET and a warm-up each, then the measured runs.
pub async fn manifest_get_pair(
    open: &Registry,
    secured: &Registry,
    repo: &str,
    p: WrkParams,
    auth_header: &str,
) -> anyhow::Result<((WrkResult, f64), (WrkResult, f64))> {
    let (_, image) = small_image();
    let mut out = Vec::new();
    for (reg, header) in [(open, None), (secured, Some(auth_header))] {
        push_image(reg, repo, &image, "latest").await?;
        let url = reg.client.url(&format!("/v2/{repo}/manifests/latest"));
        let mut req = reg
            .client
            .http()
            .get(url.clone())
            .header(ACCEPT, OCI_MANIFEST);
        if let Some(h) = header.and_then(|h| h.split_once(": ")) {
            req = req.header(h.0, h.1);
        }
        let resp = expect(reg, req.send().await?, StatusCode::OK, "manifest GET").await?;
        ensure!(
            resp.bytes().await? == image.manifest,
            "{} served other manifest bytes",
            reg.name
        );
        wrk(url.as_str(), p, 1, header).await?;
        progress::line(format!(
            "  {}: wrk -t{} -c{} -d{}s --latency",
            reg.name, p.threads, p.connections, p.secs
        ));
        let cpu_before = system::cpu_time(reg.pid)?;
        let r = wrk(url.as_str(), p, p.secs, header).await?;
        let cpu = system::cpu_time(reg.pid)?.saturating_sub(cpu_before);
        // Server CPU per request: what auth costs, whatever else runs on
        // the machine meanwhile.
        let cpu_us = cpu.as_secs_f64() * 1e6 / r.requests.max(1) as f64;
        progress::line(format!(
            "  {}: {:.0} req/s, p99 {:.3} ms, {cpu_us:.0} us of server CPU per request",
            reg.name,
            r.requests_per_sec,
            r.p99.as_secs_f64() * 1e3
        ));
        out.push((r, cpu_us));
    }
    let auth = out.pop().context("no result")?;
    let open = out.pop().context("no result")?;
    Ok((open, auth))
}

/// What the manifest PUT measurement found on one registry.
#[derive(Debug, Clone)]
pub struct PutResult {
    pub per_sec: f64,
    pub p99_ms: f64,
    /// Server CPU time (user + system) per PUT, in ms.
    pub cpu_ms: f64,
}

/// `count` distinct manifests (one annotation differs) over the same config
/// and layer, each PUT under its own tag with `concurrency` requests in
/// flight; 50 others first as warm-up. The same manifests go to both.
pub async fn manifest_put(
    regs: &[Registry; 2],
    count: usize,
    concurrency: usize,
) -> anyhow::Result<[PutResult; 2]> {
    const WARM_UP: usize = 50;
    let (builder, image) = small_image();
    let manifests: Vec<(String, Bytes, String)> = (0..WARM_UP + count)
        .map(|i| {
            let m = builder
                .clone()
                .annotation("org.berth.bench.sequence", &i.to_string())
                .build();
            let tag = if i < WARM_UP {
                format!("warm-{i}")
            } else {
                format!("put-{}", i - WARM_UP)
            };
            (tag, m.manifest, m.digest)
        })
        .collect();
    debug_assert_eq!(
        sha256_digest(&manifests[0].1),
        manifests[0].2,
        "digest of the built manifest"
    );
    let manifests = std::sync::Arc::new(manifests);
    let mut results = Vec::new();
    for reg in regs {
        for blob in image.blobs() {
            push_blob(reg, "bench/put", &blob.digest, blob.data.clone()).await?;
        }
        let put = |offset: usize| {
            let reg = reg.clone();
            let manifests = manifests.clone();
            move |i: usize| {
                let reg = reg.clone();
                let manifests = manifests.clone();
                async move {
                    let (tag, body, digest) = &manifests[offset + i];
                    put_manifest(&reg, "bench/put", tag, OCI_MANIFEST, body.clone(), digest).await
                }
            }
        };
        run_concurrent(WARM_UP, concurrency, None, put(0)).await?;
        system::sync()?;
        progress::line(format!(
            "  {}: {count} manifest PUTs, {concurrency} in flight",
            reg.name
        ));
        let bar = progress::counter(count as u64, &format!("manifest PUTs to {}", reg.name));
        let cpu_before = system::cpu_time(reg.pid)?;
        let start = Instant::now();
        let latencies = run_concurrent(count, concurrency, Some(&bar), put(WARM_UP)).await?;
        let elapsed = start.elapsed();
        let cpu = system::cpu_time(reg.pid)?.saturating_sub(cpu_before);
        bar.finish_and_clear();
        let ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        let r = PutResult {
            per_sec: count as f64 / elapsed.as_secs_f64(),
            p99_ms: percentile(&ms, 99.0),
            cpu_ms: cpu.as_secs_f64() * 1e3 / count.max(1) as f64,
        };
        progress::line(format!(
            "  {}: {:.0} PUT/s, p99 {:.2} ms",
            reg.name, r.per_sec, r.p99_ms
        ));
        results.push(r);
    }
    let [b, d]: [PutResult; 2] = results
        .try_into()
        .map_err(|_| anyhow::anyhow!("expected two PUT results"))?;
    Ok([b, d])
}

/// Concurrency of set-up requests (not measured).
pub(crate) const SETUP_CONCURRENCY: usize = 16;

/// Tags `count` tags (`t00000`…) on one small manifest in `bench/tags`.
pub async fn tags_setup(regs: &[Registry; 2], count: usize) -> anyhow::Result<()> {
    let (_, image) = small_image();
    for reg in regs {
        let started = Instant::now();
        progress::line(format!(
            "  set-up: {count} tags on {} (not timed)",
            reg.name
        ));
        push_image(reg, "bench/tags", &image, "t00000").await?;
        let bar = progress::counter(count as u64, &format!("tagging on {}", reg.name));
        let image = std::sync::Arc::new(image.clone());
        run_concurrent(count, SETUP_CONCURRENCY, Some(&bar), |i| {
            let reg = reg.clone();
            let image = image.clone();
            async move {
                put_manifest(
                    &reg,
                    "bench/tags",
                    &format!("t{i:05}"),
                    &image.manifest_media_type,
                    image.manifest.clone(),
                    &image.digest,
                )
                .await
            }
        })
        .await?;
        bar.finish_and_clear();
        progress::line(format!(
            "  set-up on {} took {:.1} s",
            reg.name,
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}

/// Creates `count` repositories (`bench-catalog/r00000`…) by pushing one
/// tiny distinct blob to each.
pub async fn catalog_setup(regs: &[Registry; 2], count: usize) -> anyhow::Result<()> {
    for reg in regs {
        let started = Instant::now();
        progress::line(format!(
            "  set-up: {count} repositories on {} (not timed)",
            reg.name
        ));
        let bar = progress::counter(count as u64, &format!("repositories on {}", reg.name));
        run_concurrent(count, SETUP_CONCURRENCY, Some(&bar), |i| {
            let reg = reg.clone();
            async move {
                let data = Bytes::from(format!("berth-bench catalog repository {i}"));
                let digest = sha256_digest(&data);
                push_blob(&reg, &catalog_repo(i), &digest, data).await
            }
        })
        .await?;
        bar.finish_and_clear();
        progress::line(format!(
            "  set-up on {} took {:.1} s",
            reg.name,
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}

pub fn catalog_repo(i: usize) -> String {
    format!("bench-catalog/r{i:05}")
}

/// Timed full listings (`GET path(registry)`, following `Link` until done,
/// parsing every page): one warm-up, then `runs` timed listings per
/// registry, alternating who goes first. `check` validates each listing's
/// entries. Returns the milliseconds per listing, the page count and the
/// server CPU time per listing (ms) of each registry.
pub async fn listing_times(
    regs: &[Registry; 2],
    path: impl Fn(&Registry) -> String,
    runs: u32,
    check: impl Fn(&Registry, &[String]) -> anyhow::Result<()>,
) -> anyhow::Result<([Vec<f64>; 2], [usize; 2], [f64; 2])> {
    let mut pages = [0; 2];
    for (i, reg) in regs.iter().enumerate() {
        let (entries, n) = list_all(reg, reg.client.url(&path(reg))).await?;
        check(reg, &entries)?;
        pages[i] = n;
    }
    let mut times: [Vec<f64>; 2] = Default::default();
    let mut cpu = [Duration::ZERO; 2];
    for run in 0..runs {
        for i in order(run) {
            let reg = &regs[i];
            let url = reg.client.url(&path(reg));
            let cpu_before = system::cpu_time(reg.pid)?;
            let start = Instant::now();
            let (entries, n) = list_all(reg, url).await?;
            let ms = start.elapsed().as_secs_f64() * 1e3;
            cpu[i] += system::cpu_time(reg.pid)?.saturating_sub(cpu_before);
            check(reg, &entries)?;
            ensure!(
                n == pages[i],
                "{} changed its page count from {} to {n}",
                reg.name,
                pages[i]
            );
            times[i].push(ms);
        }
    }
    for (i, reg) in regs.iter().enumerate() {
        progress::line(format!(
            "  {}: median {:.2} ms over {runs} listings ({} page(s) each)",
            reg.name,
            median(&times[i]),
            pages[i]
        ));
    }
    Ok((times, pages, cpu.map(|c| crate::blobs::per_op_ms(c, runs))))
}
