//! The crash test: `berth-server` is killed with SIGKILL in the middle of
//! concurrent pushes, restarted on the same data directory, and checked
//! against everything the pushers sent and were told.
//!
//! Each round runs six pushers against the real binary: two monolithic blob
//! pushers (single-request `POST ?digest=` and `POST` + `PUT` with the body),
//! two chunked pushers (multi-MiB blobs in 1 MiB `PATCH`es), an image
//! manifest pusher (unique tags, `?tag=` parameters and a moving `latest`)
//! and an index pusher (child manifests by digest, then an index over them).
//! At a random moment the server is killed, then restarted, and the test
//! checks that:
//!
//! - every blob any pusher attempted is served with exactly the pushed bytes
//!   or not at all (404), by `HEAD` and `GET`: never short or wrong content;
//! - every manifest readable by digest or tag is byte-identical to one a
//!   pusher sent, a tag points at the last acknowledged manifest or at one
//!   pushed after it, and everything a readable manifest references is in
//!   its repository;
//! - everything acknowledged (201) before the kill is still there;
//! - interrupted upload sessions report (`GET`, 204, `Range`) at least the
//!   acknowledged offset and at most what was sent, and can be resumed from
//!   there, or abandoned (`DELETE`) and pushed again from scratch;
//! - after a GC pass (`POST /api/v1/gc`, grace 1 s) everything still
//!   referenced is intact, unreferenced content and staged uploads are gone,
//!   and the blob files on disk are exactly the blobs the registry serves,
//!   each named by the sha256 of its contents.
//!
//! Seed and length: `CRASH_SEED=<n>` reproduces a run's sizes and kill
//! moments (the seed is printed at the start); `CRASH_ROUNDS=<n>` sets the
//! number of rounds (default 12). Thread scheduling is not reproducible, so a
//! failure may need a few runs with its seed.
//!
//! Build the binary first: `cargo build --bins`.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use reqwest::{Method, Response, StatusCode};
use serde_json::json;
use test_support::client::expect_status;
use test_support::{BerthServer, OciClient, media_types, random_blob, sha256_digest};

const REPO_A: &str = "crash/alpha";
const REPO_B: &str = "crash/beta";
const REPOS: [&str; 2] = [REPO_A, REPO_B];
/// PATCH size of the chunked pushers.
const CHUNK: usize = 1 << 20;
/// GC grace period (and upload TTL) of the server under test, in seconds.
const GRACE_SECS: u64 = 1;
/// How long to wait before a GC pass so that everything is past the grace.
const PAST_GRACE: Duration = Duration::from_millis(1300);
const DEFAULT_ROUNDS: usize = 12;
/// Parallel requests of the verification passes.
const CHECK_PARALLELISM: usize = 4;

// --- a small deterministic PRNG (SplitMix64), so a seed reproduces a run ---

#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn fork(&mut self) -> Rng {
        Rng(self.next())
    }
}

// --- what the pushers attempted and were acknowledged -----------------------

type Key = (String, String);

fn key(repo: &str, s: &str) -> Key {
    (repo.to_owned(), s.to_owned())
}

#[derive(Debug, Clone)]
struct BlobRec {
    size: u64,
    /// Got a 201 and must be there until GC may legitimately reclaim it.
    acked: bool,
}

#[derive(Debug, Clone)]
struct ManifestRec {
    media_type: &'static str,
    bytes: Bytes,
    acked: bool,
    /// Config and layers, with the sizes the descriptors give.
    blobs: Vec<(String, u64)>,
    /// Child manifests (indexes).
    children: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct TagRec {
    acked: Option<String>,
    /// Digests the tag may point at: the last acknowledged one and every one
    /// pushed under the tag since (a push cut by the kill may have landed).
    candidates: Vec<String>,
}

/// An upload session open at the kill.
#[derive(Debug, Clone)]
struct Session {
    repo: &'static str,
    /// The `Location` path of the session (the port changes on restart).
    path: String,
    digest: String,
    size: u64,
    seed: u64,
    /// Bytes the registry acknowledged (202 with this `Range`).
    acked: u64,
    /// Bytes sent, acknowledged or not.
    sent: u64,
    /// Whether the closing `PUT` was sent.
    put_sent: bool,
}

#[derive(Debug, Default)]
struct Stats {
    kills: u64,
    blob_attempts: u64,
    blobs_acked: u64,
    manifest_attempts: u64,
    manifests_acked: u64,
    tags_acked: u64,
    /// Pushes without an answer that turned out to have landed.
    unacked_but_stored: u64,
    sessions_interrupted: u64,
    sessions_resumed: u64,
    sessions_restarted: u64,
    /// Sessions whose closing PUT landed although its answer was lost.
    sessions_committed_at_kill: u64,
    /// Sessions holding every byte whose PUT was cut by the kill, finished by
    /// a second PUT (the kill may have hit between the blob's rename into
    /// place and its metadata row).
    sessions_put_retried: u64,
    bytes_verified: u64,
    gc_blobs: u64,
    gc_manifests: u64,
    gc_orphans: u64,
    gc_uploads: u64,
}

#[derive(Debug, Default)]
struct Model {
    blobs: BTreeMap<Key, BlobRec>,
    manifests: BTreeMap<Key, ManifestRec>,
    tags: BTreeMap<Key, TagRec>,
    /// Upload sessions in progress, by path.
    open_sessions: BTreeMap<String, Session>,
    /// Blobs a manifest may reference now: acknowledged this round, or
    /// referenced by live manifests at the last GC (so no GC can have taken
    /// them since).
    referencable: BTreeMap<String, Vec<(String, u64)>>,
    stats: Stats,
}

impl Model {
    fn attempt_blob(&mut self, repo: &str, digest: &str, size: u64) {
        self.stats.blob_attempts += 1;
        self.blobs
            .entry(key(repo, digest))
            .or_insert(BlobRec { size, acked: false });
    }

    fn ack_blob(&mut self, repo: &str, digest: &str) {
        let rec = self.blobs.get_mut(&key(repo, digest)).unwrap();
        rec.acked = true;
        let size = rec.size;
        self.stats.blobs_acked += 1;
        self.open_sessions
            .retain(|_, s| !(s.repo == repo && s.digest == digest));
        self.referencable
            .entry(repo.to_owned())
            .or_default()
            .push((digest.to_owned(), size));
    }

    fn attempt_manifest(&mut self, repo: &str, digest: &str, rec: ManifestRec) {
        self.stats.manifest_attempts += 1;
        self.manifests.entry(key(repo, digest)).or_insert(rec);
    }

    fn attempt_tag(&mut self, repo: &str, tag: &str, digest: &str) {
        self.tags
            .entry(key(repo, tag))
            .or_default()
            .candidates
            .push(digest.to_owned());
    }

    fn ack_manifest(&mut self, repo: &str, digest: &str, tags: &[&str]) {
        self.manifests.get_mut(&key(repo, digest)).unwrap().acked = true;
        self.stats.manifests_acked += 1;
        for t in tags {
            let rec = self.tags.get_mut(&key(repo, t)).unwrap();
            rec.acked = Some(digest.to_owned());
            rec.candidates = vec![digest.to_owned()];
            self.stats.tags_acked += 1;
        }
    }
}

// --- the pushers ---------------------------------------------------------------

#[derive(Clone)]
struct Ctx {
    client: OciClient,
    model: Arc<Mutex<Model>>,
    /// Set just before the kill: pushers start no new request after it.
    stop: Arc<AtomicBool>,
    /// Unique content seeds across the whole run.
    seeds: Arc<AtomicU64>,
    round: usize,
}

impl Ctx {
    fn model(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap()
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn next_seed(&self) -> u64 {
        self.seeds.fetch_add(1, Ordering::SeqCst)
    }

    /// The response, or `None` when the request died with the server the
    /// test killed. A transport failure before the kill is an error.
    fn live(&self, r: anyhow::Result<Response>) -> anyhow::Result<Option<Response>> {
        match r {
            Ok(resp) => Ok(Some(resp)),
            Err(_) if self.stopping() => Ok(None),
            Err(e) => Err(e.context("request failed although the server was not killed")),
        }
    }
}

/// Sends a request; on a transport failure caused by the kill, evaluates
/// `$killed` (a `return` out of the pusher).
macro_rules! live {
    ($ctx:expr, $request:expr, $killed:expr) => {
        match $ctx.live($request.await)? {
            Some(resp) => resp,
            None => $killed,
        }
    };
}

fn header(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn check_digest_header(resp: &Response, digest: &str, what: &str) -> anyhow::Result<()> {
    let got = header(resp, "docker-content-digest");
    ensure!(
        got.as_deref() == Some(digest),
        "{what}: Docker-Content-Digest {got:?}, expected {digest}"
    );
    Ok(())
}

/// Offset of an upload from its `Range: 0-<last>` header. `0-0` is how an
/// empty upload is reported; no upload here ever holds exactly one byte.
fn upload_offset(resp: &Response) -> anyhow::Result<u64> {
    let range = header(resp, "range").context("upload answer has no Range header")?;
    let last: u64 = range
        .strip_prefix("0-")
        .and_then(|l| l.parse().ok())
        .with_context(|| format!("bad upload Range {range:?}"))?;
    Ok(if last == 0 { 0 } else { last + 1 })
}

/// Single-request pushes (`POST ?digest=`) and `POST` + `PUT` with the whole
/// body (a session the kill may interrupt after its `POST`).
async fn mono_pusher(ctx: Ctx, repo: &'static str, mut rng: Rng) -> anyhow::Result<()> {
    while !ctx.stopping() {
        let size = rng.between(64 << 10, 3 << 19);
        let seed = ctx.next_seed();
        let data = random_blob(size as usize, seed);
        let digest = sha256_digest(&data);
        ctx.model().attempt_blob(repo, &digest, size);
        let resp = if rng.chance(65) {
            live!(
                ctx,
                ctx.client.push_blob_monolithic(repo, &digest, data),
                return Ok(())
            )
        } else {
            let started = live!(ctx, ctx.client.start_upload(repo), return Ok(()));
            let started = expect_status(started, &[StatusCode::ACCEPTED], "POST upload").await?;
            let location = ctx.client.location(&started)?;
            ctx.model().open_sessions.insert(
                location.path().to_owned(),
                Session {
                    repo,
                    path: location.path().to_owned(),
                    digest: digest.clone(),
                    size,
                    seed,
                    acked: 0,
                    sent: size,
                    put_sent: true,
                },
            );
            live!(
                ctx,
                ctx.client.finish_upload(&location, &digest, Some(data)),
                return Ok(())
            )
        };
        let resp = expect_status(resp, &[StatusCode::CREATED], "push blob").await?;
        check_digest_header(&resp, &digest, "push blob")?;
        ctx.model().ack_blob(repo, &digest);
    }
    Ok(())
}

/// Chunked pushes of multi-MiB blobs in 1 MiB `PATCH`es.
async fn chunk_pusher(ctx: Ctx, repo: &'static str, mut rng: Rng) -> anyhow::Result<()> {
    while !ctx.stopping() {
        let size = rng.between(2 << 20, 9 << 19);
        let seed = ctx.next_seed();
        let data = random_blob(size as usize, seed);
        let digest = sha256_digest(&data);
        ctx.model().attempt_blob(repo, &digest, size);
        let started = live!(ctx, ctx.client.start_upload(repo), return Ok(()));
        let started = expect_status(started, &[StatusCode::ACCEPTED], "POST upload").await?;
        let mut location = ctx.client.location(&started)?;
        let path = location.path().to_owned();
        ctx.model().open_sessions.insert(
            path.clone(),
            Session {
                repo,
                path: path.clone(),
                digest: digest.clone(),
                size,
                seed,
                acked: 0,
                sent: 0,
                put_sent: false,
            },
        );
        let mut offset = 0;
        while offset < data.len() {
            if ctx.stopping() {
                return Ok(());
            }
            let end = (offset + CHUNK).min(data.len());
            ctx.model().open_sessions.get_mut(&path).unwrap().sent = end as u64;
            let resp = live!(
                ctx,
                ctx.client
                    .patch_chunk(&location, offset as u64, data.slice(offset..end)),
                return Ok(())
            );
            let resp = expect_status(resp, &[StatusCode::ACCEPTED], "PATCH").await?;
            ensure!(
                upload_offset(&resp)? == end as u64,
                "PATCH up to {end} answered Range {:?}",
                header(&resp, "range")
            );
            location = ctx.client.location(&resp)?;
            ctx.model().open_sessions.get_mut(&path).unwrap().acked = end as u64;
            offset = end;
        }
        if ctx.stopping() {
            return Ok(());
        }
        ctx.model().open_sessions.get_mut(&path).unwrap().put_sent = true;
        let resp = live!(
            ctx,
            ctx.client.finish_upload(&location, &digest, None),
            return Ok(())
        );
        let resp = expect_status(resp, &[StatusCode::CREATED], "PUT upload").await?;
        check_digest_header(&resp, &digest, "PUT upload")?;
        ctx.model().ack_blob(repo, &digest);
    }
    Ok(())
}

/// Pushes a small blob in one request; `None` if the kill cut it.
async fn push_small(ctx: &Ctx, repo: &str, data: Bytes) -> anyhow::Result<Option<(String, u64)>> {
    let digest = sha256_digest(&data);
    let size = data.len() as u64;
    ctx.model().attempt_blob(repo, &digest, size);
    let resp = live!(
        ctx,
        ctx.client.push_blob_monolithic(repo, &digest, data),
        return Ok(None)
    );
    let resp = expect_status(resp, &[StatusCode::CREATED], "push small blob").await?;
    check_digest_header(&resp, &digest, "push small blob")?;
    ctx.model().ack_blob(repo, &digest);
    Ok(Some((digest, size)))
}

/// Pushes a config, one or two fresh layers and maybe a blob acknowledged
/// earlier, and returns the image manifest over them (not pushed yet).
async fn image_parts(
    ctx: &Ctx,
    repo: &str,
    rng: &mut Rng,
    arch: &str,
) -> anyhow::Result<Option<ManifestRec>> {
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
        "config": {"Labels": {"berth.crash.seed": ctx.next_seed().to_string()}},
    }))?;
    let Some(config) = push_small(ctx, repo, Bytes::from(config)).await? else {
        return Ok(None);
    };
    let mut layers = Vec::new();
    for _ in 0..rng.between(1, 2) {
        let data = random_blob(rng.between(4 << 10, 256 << 10) as usize, ctx.next_seed());
        match push_small(ctx, repo, data).await? {
            Some(l) => layers.push(l),
            None => return Ok(None),
        }
    }
    if rng.chance(60) {
        // Share a blob another pusher uploaded: its link must survive too.
        let shared = {
            let m = ctx.model();
            m.referencable
                .get(repo)
                .filter(|v| !v.is_empty())
                .map(|v| v[(rng.next() % v.len() as u64) as usize].clone())
        };
        if let Some(s) = shared
            && !layers.contains(&s)
        {
            layers.push(s);
        }
    }
    let descriptor = |media_type: &str, (digest, size): &(String, u64)| json!({"mediaType": media_type, "digest": digest, "size": size});
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_MANIFEST,
        "config": descriptor(media_types::OCI_CONFIG, &config),
        "layers": layers.iter().map(|l| descriptor(media_types::OCI_LAYER_GZIP, l)).collect::<Vec<_>>(),
        "annotations": {"berth.crash.round": ctx.round.to_string()},
    });
    let mut blobs = vec![config];
    blobs.extend(layers);
    Ok(Some(ManifestRec {
        media_type: media_types::OCI_MANIFEST,
        bytes: Bytes::from(serde_json::to_vec(&manifest)?),
        acked: false,
        blobs,
        children: Vec::new(),
    }))
}

/// Pushes manifest `rec` as `reference` (a tag, or its digest with `?tag=`
/// parameters for `tags`); `false` if the kill cut it.
async fn push_manifest(
    ctx: &Ctx,
    repo: &str,
    rec: ManifestRec,
    by_digest: bool,
    tags: &[&str],
) -> anyhow::Result<bool> {
    let digest = sha256_digest(&rec.bytes);
    let (media_type, bytes) = (rec.media_type, rec.bytes.clone());
    {
        let mut m = ctx.model();
        m.attempt_manifest(repo, &digest, rec);
        for t in tags {
            m.attempt_tag(repo, t, &digest);
        }
    }
    let reference = if by_digest {
        let query: Vec<String> = tags.iter().map(|t| format!("tag={t}")).collect();
        if query.is_empty() {
            digest.clone()
        } else {
            format!("{digest}?{}", query.join("&"))
        }
    } else {
        assert_eq!(tags.len(), 1, "a push by tag sets one tag");
        tags[0].to_owned()
    };
    let resp = live!(
        ctx,
        ctx.client.put_manifest(repo, &reference, media_type, bytes),
        return Ok(false)
    );
    let resp = expect_status(resp, &[StatusCode::CREATED], "PUT manifest").await?;
    check_digest_header(&resp, &digest, "PUT manifest")?;
    ctx.model().ack_manifest(repo, &digest, tags);
    Ok(true)
}

/// Image manifests under unique tags, sometimes by digest with `?tag=`, and
/// every other one also as `latest`.
async fn manifest_pusher(ctx: Ctx, repo: &'static str, mut rng: Rng) -> anyhow::Result<()> {
    let mut n = 0;
    while !ctx.stopping() {
        let Some(rec) = image_parts(&ctx, repo, &mut rng, "amd64").await? else {
            return Ok(());
        };
        let tag = format!("r{}-m{n}", ctx.round);
        let latest = n % 2 == 1;
        let pushed = if rng.chance(35) {
            let tags: Vec<&str> = if latest {
                vec![&tag, "latest"]
            } else {
                vec![&tag]
            };
            push_manifest(&ctx, repo, rec, true, &tags).await?
        } else {
            push_manifest(&ctx, repo, rec.clone(), false, &[&tag]).await?
                && (!latest || push_manifest(&ctx, repo, rec, false, &["latest"]).await?)
        };
        if !pushed {
            return Ok(());
        }
        n += 1;
    }
    Ok(())
}

/// Two child manifests by digest, then an index over them under a unique
/// tag, every other one also as `latest`.
async fn index_pusher(ctx: Ctx, repo: &'static str, mut rng: Rng) -> anyhow::Result<()> {
    let mut n = 0;
    while !ctx.stopping() {
        let mut children = Vec::new();
        for arch in ["amd64", "arm64"] {
            let Some(rec) = image_parts(&ctx, repo, &mut rng, arch).await? else {
                return Ok(());
            };
            let digest = sha256_digest(&rec.bytes);
            let size = rec.bytes.len();
            if !push_manifest(&ctx, repo, rec, true, &[]).await? {
                return Ok(());
            }
            children.push((digest, size, arch));
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_INDEX,
            "manifests": children.iter().map(|(d, s, arch)| json!({
                "mediaType": media_types::OCI_MANIFEST,
                "digest": d,
                "size": s,
                "platform": {"os": "linux", "architecture": arch},
            })).collect::<Vec<_>>(),
        });
        let rec = ManifestRec {
            media_type: media_types::OCI_INDEX,
            bytes: Bytes::from(serde_json::to_vec(&index)?),
            acked: false,
            blobs: Vec::new(),
            children: children.into_iter().map(|(d, _, _)| d).collect(),
        };
        let tag = format!("r{}-i{n}", ctx.round);
        let pushed = push_manifest(&ctx, repo, rec.clone(), false, &[&tag]).await?
            && (n % 2 == 0 || push_manifest(&ctx, repo, rec, false, &["latest"]).await?);
        if !pushed {
            return Ok(());
        }
        n += 1;
    }
    Ok(())
}

// --- checks ------------------------------------------------------------------

/// What the registry served in one verification pass.
#[derive(Debug, Default)]
struct Observed {
    /// Blobs served, with exactly the pushed bytes.
    blobs: BTreeSet<Key>,
    /// Manifests served by digest, byte-identical to what was pushed.
    manifests: BTreeSet<Key>,
    /// Tag → digest of the manifest it served.
    tags: BTreeMap<Key, String>,
    bytes_read: u64,
}

/// `HEAD` and `GET` of a blob: `Some(bytes)` when served with exactly the
/// right content, `None` when absent (404 to both); an error otherwise.
async fn check_blob(
    client: &OciClient,
    repo: &str,
    digest: &str,
    size: u64,
) -> anyhow::Result<Option<u64>> {
    let head = client.head_blob(repo, digest).await?;
    let head_found = match head.status() {
        StatusCode::OK => {
            let len = header(&head, "content-length");
            ensure!(
                len == Some(size.to_string()),
                "HEAD {repo}@{digest}: Content-Length {len:?}, pushed {size} bytes"
            );
            true
        }
        StatusCode::NOT_FOUND => false,
        s => bail!("HEAD {repo}@{digest}: unexpected {s}"),
    };
    let get = client.get_blob(repo, digest, None).await?;
    match get.status() {
        StatusCode::OK => {
            ensure!(head_found, "{repo}@{digest}: HEAD said 404 but GET 200");
            let body = get
                .bytes()
                .await
                .with_context(|| format!("reading {repo}@{digest}"))?;
            ensure!(
                body.len() as u64 == size,
                "GET {repo}@{digest}: {} bytes served, {size} pushed (partial blob visible)",
                body.len()
            );
            let actual = sha256_digest(&body);
            ensure!(
                actual == digest,
                "GET {repo}@{digest}: served content hashes to {actual} (wrong blob content)"
            );
            Ok(Some(size))
        }
        StatusCode::NOT_FOUND => {
            ensure!(!head_found, "{repo}@{digest}: HEAD said 200 but GET 404");
            Ok(None)
        }
        s => bail!("GET {repo}@{digest}: unexpected {s}"),
    }
}

/// `GET` of a manifest by digest or tag: `Some((digest, bytes))` or `None`.
async fn fetch_manifest(
    client: &OciClient,
    repo: &str,
    reference: &str,
) -> anyhow::Result<Option<(String, String, Bytes)>> {
    let resp = client.get_manifest(repo, reference, &[]).await?;
    match resp.status() {
        StatusCode::OK => {
            let digest = header(&resp, "docker-content-digest").unwrap_or_default();
            let media_type = header(&resp, "content-type").unwrap_or_default();
            let body = resp.bytes().await?;
            Ok(Some((digest, media_type, body)))
        }
        StatusCode::NOT_FOUND => Ok(None),
        s => bail!("GET manifest {repo}:{reference}: unexpected {s}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Right after the restart: nothing may be missing.
    Restarted,
    /// After a GC pass: only what is referenced must be there.
    AfterGc,
}

/// One pass over everything the pushers ever attempted. Collects every
/// violation and fails with all of them.
async fn verify(
    client: &OciClient,
    model: &Mutex<Model>,
    phase: Phase,
) -> anyhow::Result<Observed> {
    let (blobs, manifests, tags) = {
        let m = model.lock().unwrap();
        (m.blobs.clone(), m.manifests.clone(), m.tags.clone())
    };
    let mut obs = Observed::default();
    let mut problems: Vec<String> = Vec::new();

    // Blobs: right bytes or 404.
    let results: Vec<(Key, Option<u64>)> = stream::iter(blobs.iter())
        .map(|((repo, digest), rec)| async move {
            let r = check_blob(client, repo, digest, rec.size).await?;
            anyhow::Ok((key(repo, digest), r))
        })
        .buffer_unordered(CHECK_PARALLELISM)
        .try_collect()
        .await?;
    for (k, r) in results {
        if let Some(n) = r {
            obs.bytes_read += n;
            obs.blobs.insert(k);
        }
    }

    // Manifests by digest: identical bytes or 404.
    for ((repo, digest), rec) in &manifests {
        if let Some((served, media_type, body)) = fetch_manifest(client, repo, digest).await? {
            if body != rec.bytes || served != *digest {
                problems.push(format!(
                    "manifest {repo}@{digest} served as {served} with {} bytes that differ from the pushed {}",
                    body.len(),
                    rec.bytes.len()
                ));
            }
            if media_type != rec.media_type {
                problems.push(format!(
                    "manifest {repo}@{digest} served as {media_type}, pushed as {}",
                    rec.media_type
                ));
            }
            obs.manifests.insert(key(repo, digest));
        }
    }

    // Tags: a manifest pushed under the tag, byte for byte.
    for ((repo, tag), rec) in &tags {
        if let Some((served, _, body)) = fetch_manifest(client, repo, tag).await? {
            let digest = sha256_digest(&body);
            if served != digest {
                problems.push(format!(
                    "tag {repo}:{tag} served content {digest} under Docker-Content-Digest {served}"
                ));
            }
            if !rec.candidates.contains(&digest) {
                problems.push(format!(
                    "tag {repo}:{tag} points at {digest}, which was never pushed under it after \
                     its last acknowledged push {:?} (candidates {:?})",
                    rec.acked, rec.candidates
                ));
            } else if manifests.get(&key(repo, &digest)).map(|m| &m.bytes) != Some(&body) {
                problems.push(format!(
                    "tag {repo}:{tag} serves bytes that differ from manifest {digest}"
                ));
            }
            if !obs.manifests.contains(&key(repo, &digest)) {
                problems.push(format!(
                    "tag {repo}:{tag} serves {digest}, which is not readable by digest"
                ));
            }
            obs.tags.insert(key(repo, tag), digest);
        }
    }

    // Tag listing agrees with the tags served.
    for repo in REPOS {
        let resp = client.tags_list(repo, None, None).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            if obs.tags.keys().any(|(r, _)| r == repo) {
                problems.push(format!("{repo} has tags but tags/list says 404"));
            }
            continue;
        }
        let resp = expect_status(resp, &[StatusCode::OK], "tags/list").await?;
        let list: test_support::client::TagList = resp.json().await?;
        let listed: BTreeSet<&str> = list.tags.iter().map(String::as_str).collect();
        let served: BTreeSet<&str> = obs
            .tags
            .keys()
            .filter(|(r, _)| r == repo)
            .map(|(_, t)| t.as_str())
            .collect();
        if listed != served {
            problems.push(format!(
                "{repo}: tags/list {listed:?} differs from the tags served {served:?}"
            ));
        }
    }

    // Every readable manifest's references are in its repository.
    for (repo, digest) in &obs.manifests {
        let rec = &manifests[&key(repo, digest)];
        for (b, size) in &rec.blobs {
            let k = key(repo, b);
            match blobs.get(&k) {
                Some(br) if br.size == *size => {}
                other => bail!("test bug: manifest {digest} references {b} ({size}) as {other:?}"),
            }
            if !obs.blobs.contains(&k) {
                problems.push(format!(
                    "manifest {repo}@{digest} is readable but its blob {b} is not"
                ));
            }
        }
        for c in &rec.children {
            if !obs.manifests.contains(&key(repo, c)) {
                problems.push(format!(
                    "index {repo}@{digest} is readable but its child {c} is not"
                ));
            }
        }
    }

    if !problems.is_empty() {
        bail!(
            "{} problem(s) after {phase:?}:\n  - {}",
            problems.len(),
            problems.join("\n  - ")
        );
    }

    // What must be there. After GC, that is what tags still reach; right
    // after a restart, everything acknowledged.
    let mut live_manifests: BTreeSet<Key> = obs.tags.iter().map(|((r, _), d)| key(r, d)).collect();
    let mut stack: Vec<Key> = live_manifests.iter().cloned().collect();
    while let Some(k) = stack.pop() {
        for c in &manifests[&k].children {
            let ck = key(&k.0, c);
            if live_manifests.insert(ck.clone()) {
                stack.push(ck);
            }
        }
    }
    let live_blobs: BTreeSet<Key> = live_manifests
        .iter()
        .flat_map(|(r, d)| manifests[&key(r, d)].blobs.iter().map(|(b, _)| key(r, b)))
        .collect();
    for ((repo, tag), rec) in &tags {
        if let Some(d) = &rec.acked
            && !obs.tags.contains_key(&key(repo, tag))
        {
            problems.push(format!(
                "acknowledged tag {repo}:{tag} (→ {d}) is gone ({phase:?})"
            ));
        }
    }
    for (k, rec) in &manifests {
        let must = match phase {
            Phase::Restarted => rec.acked,
            Phase::AfterGc => live_manifests.contains(k),
        };
        if must && !obs.manifests.contains(k) {
            problems.push(format!(
                "manifest {}@{} (acknowledged: {}) is gone ({phase:?})",
                k.0, k.1, rec.acked
            ));
        }
        if phase == Phase::AfterGc && !live_manifests.contains(k) && obs.manifests.contains(k) {
            problems.push(format!(
                "manifest {}@{} is unreferenced and past the grace period but survived GC",
                k.0, k.1
            ));
        }
    }
    for (k, rec) in &blobs {
        let must = match phase {
            Phase::Restarted => rec.acked,
            Phase::AfterGc => live_blobs.contains(k),
        };
        if must && !obs.blobs.contains(k) {
            problems.push(format!(
                "blob {}@{} ({} bytes, acknowledged: {}) is gone ({phase:?})",
                k.0, k.1, rec.size, rec.acked
            ));
        }
        if phase == Phase::AfterGc && !live_blobs.contains(k) && obs.blobs.contains(k) {
            problems.push(format!(
                "blob {}@{} is unreferenced and past the grace period but survived GC",
                k.0, k.1
            ));
        }
    }

    if !problems.is_empty() {
        bail!(
            "{} problem(s) after {phase:?}:\n  - {}",
            problems.len(),
            problems.join("\n  - ")
        );
    }

    let mut m = model.lock().unwrap();
    m.stats.bytes_verified += obs.bytes_read;
    if phase == Phase::Restarted {
        m.stats.unacked_but_stored += blobs
            .iter()
            .filter(|(k, r)| !r.acked && obs.blobs.contains(*k))
            .count() as u64
            + manifests
                .iter()
                .filter(|(k, r)| !r.acked && obs.manifests.contains(*k))
                .count() as u64;
    } else {
        // GC took (or may take) everything unreferenced: from now on it
        // is no longer owed, and manifests may only reference what lives.
        for (k, rec) in m.blobs.iter_mut() {
            rec.acked &= live_blobs.contains(k);
        }
        for (k, rec) in m.manifests.iter_mut() {
            rec.acked &= live_manifests.contains(k);
        }
        let mut referencable: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for (repo, digest) in &live_blobs {
            referencable
                .entry(repo.clone())
                .or_default()
                .push((digest.clone(), blobs[&key(repo, digest)].size));
        }
        m.referencable = referencable;
    }
    Ok(obs)
}

/// Resumes (or abandons and redoes) every upload session the kill cut.
async fn resume_sessions(
    client: &OciClient,
    model: &Mutex<Model>,
    rng: &mut Rng,
) -> anyhow::Result<()> {
    let sessions: Vec<Session> = std::mem::take(&mut model.lock().unwrap().open_sessions)
        .into_values()
        .collect();
    model.lock().unwrap().stats.sessions_interrupted += sessions.len() as u64;
    for s in sessions {
        let what = format!("upload {} of {}@{}", s.path, s.repo, s.digest);
        let url = client.url(&s.path);
        let status = client.upload_status(&url).await?;
        match status.status() {
            StatusCode::NO_CONTENT => {
                let n = upload_offset(&status)?;
                ensure!(
                    s.acked <= n && n <= s.sent,
                    "{what}: reports {n} bytes after the restart; {} were acknowledged and {} sent",
                    s.acked,
                    s.sent
                );
                let data = random_blob(s.size as usize, s.seed);
                let retry_put = s.put_sent && n == s.size;
                if retry_put || rng.chance(70) {
                    // Resume from where the registry stands.
                    let mut location = client.location(&status)?;
                    let mut offset = n as usize;
                    while offset < data.len() {
                        let end = (offset + CHUNK).min(data.len());
                        let resp = client
                            .patch_chunk(&location, offset as u64, data.slice(offset..end))
                            .await?;
                        let resp =
                            expect_status(resp, &[StatusCode::ACCEPTED], &format!("{what}: PATCH"))
                                .await?;
                        ensure!(
                            upload_offset(&resp)? == end as u64,
                            "{what}: resumed PATCH up to {end} answered Range {:?}",
                            header(&resp, "range")
                        );
                        location = client.location(&resp)?;
                        offset = end;
                    }
                    let resp = client.finish_upload(&location, &s.digest, None).await?;
                    let resp = expect_status(
                        resp,
                        &[StatusCode::CREATED],
                        &format!("{what}: resumed PUT"),
                    )
                    .await?;
                    check_digest_header(&resp, &s.digest, &what)?;
                    let mut m = model.lock().unwrap();
                    m.stats.sessions_resumed += 1;
                    m.stats.sessions_put_retried += u64::from(retry_put);
                } else {
                    // Give up on the session and push again from scratch.
                    let resp = client.cancel_upload(&url).await?;
                    expect_status(resp, &[StatusCode::NO_CONTENT], &format!("{what}: DELETE"))
                        .await?;
                    let resp = client.upload_status(&url).await?;
                    ensure!(
                        resp.status() == StatusCode::NOT_FOUND,
                        "{what}: still there after DELETE ({})",
                        resp.status()
                    );
                    let resp = client
                        .push_blob_chunked(s.repo, &s.digest, data, CHUNK)
                        .await?;
                    let resp =
                        expect_status(resp, &[StatusCode::CREATED], &format!("{what}: fresh push"))
                            .await?;
                    check_digest_header(&resp, &s.digest, &what)?;
                    model.lock().unwrap().stats.sessions_restarted += 1;
                }
            }
            StatusCode::NOT_FOUND => {
                // Only the commit of the closing PUT ends a session (the
                // blob row and the session's removal are one transaction).
                ensure!(
                    s.put_sent,
                    "{what}: the session is gone after the restart, though it was never closed"
                );
                model.lock().unwrap().stats.sessions_committed_at_kill += 1;
            }
            other => bail!("{what}: GET after the restart answered {other}"),
        }
        let served = check_blob(client, s.repo, &s.digest, s.size).await?;
        ensure!(
            served.is_some(),
            "{what}: blob missing after the upload completed"
        );
        model.lock().unwrap().ack_blob(s.repo, &s.digest);
    }
    Ok(())
}

/// Runs one GC pass through the Berth API.
async fn collect_garbage(
    client: &OciClient,
    model: &Mutex<Model>,
) -> anyhow::Result<serde_json::Value> {
    let resp = client
        .request(Method::POST, client.url("/api/v1/gc"))
        .send()
        .await?;
    let resp = expect_status(resp, &[StatusCode::OK], "POST /api/v1/gc").await?;
    let report: serde_json::Value = resp.json().await?;
    let count = |k: &str| report[k].as_u64().unwrap_or(0);
    let mut m = model.lock().unwrap();
    m.stats.gc_blobs += count("blobs");
    m.stats.gc_manifests += count("manifests");
    m.stats.gc_orphans += count("orphans");
    m.stats.gc_uploads += count("uploads");
    Ok(report)
}

/// Checks the blob files in the data directory and returns their digests.
///
/// Only this test knows the embedded store's layout
/// (`<data_dir>/store/blobs/sha256/<2 hex>/<hex>` for committed blobs,
/// `<data_dir>/store/uploads/` for staged data), and only to verify it from
/// outside: every file under `blobs/` must be a complete blob whose sha256
/// is its name, so that no crash can leave a partial or wrong file where a
/// blob is looked up. Files already hashed with the same length and mtime
/// are not read again.
fn check_blob_files(
    data_dir: &Path,
    hashed: &mut HashMap<PathBuf, (u64, SystemTime)>,
) -> anyhow::Result<BTreeSet<String>> {
    let blobs = data_dir.join("store/blobs");
    let mut found = BTreeSet::new();
    for algo in std::fs::read_dir(&blobs).with_context(|| format!("listing {}", blobs.display()))? {
        let algo = algo?;
        let name = algo.file_name().to_string_lossy().into_owned();
        ensure!(
            name == "sha256" || name == "sha512",
            "unexpected entry {} in the blob store",
            algo.path().display()
        );
        for prefix in std::fs::read_dir(algo.path())? {
            let prefix = prefix?;
            let prefix_name = prefix.file_name().to_string_lossy().into_owned();
            for file in std::fs::read_dir(prefix.path())? {
                let file = file?;
                let path = file.path();
                let hex = file.file_name().to_string_lossy().into_owned();
                ensure!(
                    name == "sha256"
                        && hex.len() == 64
                        && hex.starts_with(&prefix_name)
                        && hex.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{} is not a sha256 blob name in its place (stray or temporary file among committed blobs)",
                    path.display()
                );
                let meta = file.metadata()?;
                let stamp = (meta.len(), meta.modified()?);
                if hashed.get(&path) != Some(&stamp) {
                    let content = std::fs::read(&path)?;
                    let actual = sha256_digest(&content);
                    ensure!(
                        actual == format!("sha256:{hex}"),
                        "blob file {} ({} bytes) hashes to {actual}: partial or wrong content under a blob name",
                        path.display(),
                        content.len()
                    );
                    hashed.insert(path, stamp);
                }
                found.insert(format!("sha256:{hex}"));
            }
        }
    }
    Ok(found)
}

fn staged_uploads(data_dir: &Path) -> anyhow::Result<Vec<String>> {
    let dir = data_dir.join("store/uploads");
    Ok(std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?)
}

// --- the test ------------------------------------------------------------------

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not valid")),
        Err(_) => default,
    }
}

async fn run(server: &mut BerthServer, seed: u64, rounds: usize) -> anyhow::Result<Stats> {
    let mut rng = Rng(seed);
    let model = Arc::new(Mutex::new(Model::default()));
    let seeds = Arc::new(AtomicU64::new(rng.next() >> 16));
    let mut hashed = HashMap::new();

    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = Ctx {
            client: OciClient::new(&server.url()),
            model: model.clone(),
            stop: stop.clone(),
            seeds: seeds.clone(),
            round,
        };
        let mut pushers = vec![
            tokio::spawn(mono_pusher(ctx.clone(), REPO_A, rng.fork())),
            tokio::spawn(mono_pusher(ctx.clone(), REPO_B, rng.fork())),
            tokio::spawn(chunk_pusher(ctx.clone(), REPO_A, rng.fork())),
            tokio::spawn(chunk_pusher(ctx.clone(), REPO_B, rng.fork())),
            tokio::spawn(manifest_pusher(ctx.clone(), REPO_A, rng.fork())),
            tokio::spawn(index_pusher(ctx.clone(), REPO_B, rng.fork())),
        ];
        let traffic = Duration::from_millis(rng.between(150, 1200));
        tokio::time::sleep(traffic).await;

        stop.store(true, Ordering::SeqCst);
        tokio::task::block_in_place(|| server.kill9());
        model.lock().unwrap().stats.kills += 1;
        for p in pushers.drain(..) {
            tokio::time::timeout(Duration::from_secs(60), p)
                .await
                .with_context(|| format!("round {round}: a pusher hung after the kill"))?
                .context("pusher panicked")?
                .with_context(|| format!("round {round}: a pusher failed before the kill"))?;
        }

        tokio::task::block_in_place(|| server.restart());
        let client = OciClient::new(&server.url());
        verify(&client, &model, Phase::Restarted)
            .await
            .with_context(|| format!("round {round}, after the kill at {traffic:?}"))?;
        let on_disk =
            tokio::task::block_in_place(|| check_blob_files(server.data_dir(), &mut hashed))
                .with_context(|| format!("round {round}: blob files after the restart"))?;
        let attempted: BTreeSet<String> = model
            .lock()
            .unwrap()
            .blobs
            .keys()
            .map(|(_, d)| d.clone())
            .collect();
        ensure!(
            on_disk.is_subset(&attempted),
            "round {round}: blob files for digests no pusher sent: {:?}",
            on_disk.difference(&attempted).collect::<Vec<_>>()
        );
        resume_sessions(&client, &model, &mut rng)
            .await
            .with_context(|| format!("round {round}: resuming uploads"))?;

        // Everything is now past the grace period: GC must take exactly
        // what nothing references, including staged uploads and blob files
        // without metadata, and nothing else.
        tokio::time::sleep(PAST_GRACE).await;
        let report = collect_garbage(&client, &model).await?;
        let obs = verify(&client, &model, Phase::AfterGc)
            .await
            .with_context(|| format!("round {round}, after GC {report}"))?;
        let on_disk =
            tokio::task::block_in_place(|| check_blob_files(server.data_dir(), &mut hashed))
                .with_context(|| format!("round {round}: blob files after GC"))?;
        let served: BTreeSet<String> = obs.blobs.iter().map(|(_, d)| d.clone()).collect();
        ensure!(
            on_disk == served,
            "round {round}: after GC the blob files on disk and the blobs served differ:\n  \
             files without a served blob: {:?}\n  served blobs without a file: {:?}",
            on_disk.difference(&served).collect::<Vec<_>>(),
            served.difference(&on_disk).collect::<Vec<_>>()
        );
        let staged = staged_uploads(server.data_dir())?;
        ensure!(
            staged.is_empty(),
            "round {round}: staged uploads left after GC past their TTL: {staged:?}"
        );
        hashed.retain(|p, _| p.exists());
        eprintln!(
            "round {round}: killed after {traffic:?}; GC {report}; {} blobs and {} manifests live",
            obs.blobs.len(),
            obs.manifests.len()
        );
    }
    let mut m = model.lock().unwrap();
    Ok(std::mem::take(&mut m.stats))
}

/// SIGKILL during concurrent pushes, restart, check everything; repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_push_loses_nothing_acknowledged_and_exposes_nothing_partial() {
    let seed = env_or(
        "CRASH_SEED",
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            ^ u64::from(std::process::id()),
    );
    let rounds = env_or("CRASH_ROUNDS", DEFAULT_ROUNDS);
    eprintln!("crash test: seed {seed}, {rounds} rounds (rerun with CRASH_SEED={seed})");
    let started = Instant::now();
    let mut server = tokio::task::block_in_place(|| {
        BerthServer::builder()
            // GC runs only when the test asks, with a grace period (and
            // upload TTL) the test can wait out.
            .env("BERTH_GC__ENABLED", "false")
            .env("BERTH_GC__GRACE_SECS", GRACE_SECS.to_string())
            .env("BERTH_GC__UPLOAD_TTL_SECS", GRACE_SECS.to_string())
            .env("BERTH_LOG__LEVEL", "warn")
            .start()
    });
    let stats = match run(&mut server, seed, rounds).await {
        Ok(s) => s,
        // Panicking with the server alive prints the tail of its log.
        Err(e) => panic!("crash test failed (CRASH_SEED={seed}): {e:#}"),
    };
    eprintln!(
        "crash test summary (seed {seed}, {:.1} s): {rounds} rounds, {} kills; \
         blobs {} attempted / {} acknowledged; manifests {} attempted / {} acknowledged, \
         {} tag pushes acknowledged; {} unacknowledged pushes found stored; \
         upload sessions: {} interrupted, {} resumed ({} by repeating the PUT), {} abandoned and redone, \
         {} committed at the kill; \
         {} MiB verified; GC reclaimed {} blobs, {} manifests, {} orphan files, {} uploads",
        started.elapsed().as_secs_f64(),
        stats.kills,
        stats.blob_attempts,
        stats.blobs_acked,
        stats.manifest_attempts,
        stats.manifests_acked,
        stats.tags_acked,
        stats.unacked_but_stored,
        stats.sessions_interrupted,
        stats.sessions_resumed,
        stats.sessions_put_retried,
        stats.sessions_restarted,
        stats.sessions_committed_at_kill,
        stats.bytes_verified >> 20,
        stats.gc_blobs,
        stats.gc_manifests,
        stats.gc_orphans,
        stats.gc_uploads,
    );
    // A run that exercised nothing proves nothing.
    assert!(
        stats.blobs_acked > 0 && stats.manifests_acked > 0,
        "{stats:?}"
    );
    assert!(
        stats.sessions_resumed > 0,
        "no upload was resumed: {stats:?}"
    );
}
