//! A pull, from reference to runnable containerd image.
//!
//! Resolve the tag to a digest; from an index pick the node's platform;
//! refuse schema 1 and foreign layers; check free space; under a lease,
//! download the layers in parallel (bounded), each streamed into
//! containerd's content store while hashed, resumed with Range requests
//! after a cut and retried with backoff; write config, manifest and index
//! with their GC labels; unpack (Prepare / Apply / diff_id check / Commit);
//! create the image record; delete the lease. Blobs and snapshots are
//! locked per digest, in the process and across the node's agent
//! processes ([`crate::filelock`]), so two pulls sharing content download
//! and unpack it once: the second finds it in containerd.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use containerd_client::tonic::Code;
use containerd_client::types::Descriptor;
use futures::StreamExt;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::commit_gate::CommitGate;
use crate::config::AgentConfig;
use crate::containerd::{Containerd, ContainerdError};
use crate::identity::{AuthError, NodeAuth};
use crate::platform::Platform;
use crate::reference::{ImageRef, ReferenceError};
use crate::registry::{BlobRef, Failure, RateLimiter, Registry, RegistryError, RetryPolicy};
use crate::spool::Spool;
use crate::unpack::{Compression, Target};

/// Pieces sent to containerd at once: few round trips, bounded memory.
const WRITE_CHUNK: usize = 1 << 20;
/// How long a pull's lease keeps content alive if the agent dies mid-pull.
const LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Largest manifest or config read into memory.
const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// How long a pull waits for containerd to come back (a restart takes
/// seconds; longer is a broken node, better reported).
const CONTAINERD_RETRY_WINDOW: Duration = Duration::from_secs(60);

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("{what}: {source}")]
    Registry {
        what: String,
        #[source]
        source: RegistryError,
    },
    #[error("{0} not found in the registry")]
    NotFound(String),
    #[error("unsupported image: {0}")]
    Unsupported(String),
    #[error("digest mismatch for {expected}: the registry sent content hashing to {actual}")]
    Digest { expected: String, actual: String },
    #[error("layer {layer}: unpacked to {actual}, but the config says {expected}")]
    DiffId {
        layer: String,
        expected: String,
        actual: String,
    },
    #[error("layer {layer}: {source}")]
    Unpack {
        layer: String,
        #[source]
        source: crate::unpack::UnpackError,
    },
    #[error("not enough disk space on {path}: need {need} bytes, {free} free")]
    DiskSpace { path: String, need: u64, free: u64 },
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    #[error("{0}")]
    Other(String),
}

/// What a pull reports while it runs.
#[derive(Clone, Debug)]
pub enum Progress {
    Resolved {
        image: String,
        digest: String,
    },
    BlobStarted {
        digest: String,
        size: u64,
    },
    BlobBytes {
        digest: String,
        bytes: u64,
    },
    BlobDone {
        digest: String,
        existed: bool,
    },
    Retry {
        digest: String,
        attempt: u32,
        error: String,
    },
    Unpacking {
        layer: usize,
        of: usize,
    },
}

pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// The result of a pull.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Pulled {
    /// containerd's image name.
    pub name: String,
    /// The digest the image record points at (index or manifest).
    pub digest: String,
    /// The platform manifest unpacked.
    pub manifest: String,
    pub platform: String,
    pub layers: usize,
    /// Bytes downloaded (content that was already there is not counted).
    pub downloaded: u64,
}

#[derive(Deserialize)]
struct ConfigRootfs {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// Layer media types containerd's differ can apply.
fn unpackable(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.diff.tar"
    )
}

fn is_foreign(media_type: &str) -> bool {
    media_type.contains("foreign") || media_type.contains("nondistributable")
}

/// Per-digest locks: one download of a blob at a time in this process.
#[derive(Default)]
struct Locks(std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl Locks {
    fn get(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Forget locks nobody holds, so the map stays small.
        map.retain(|_, l| Arc::strong_count(l) > 1);
        map.entry(key.to_owned()).or_default().clone()
    }
}

/// Pulls images for one node into one containerd namespace.
pub struct Puller {
    registry: Registry,
    containerd: Containerd,
    registry_host: String,
    namespace: String,
    platform: Platform,
    retry: RetryPolicy,
    parallel: usize,
    limiter: Option<Arc<RateLimiter>>,
    disk_path: std::path::PathBuf,
    min_free: u64,
    locks: Locks,
    /// Where the locks shared with the node's other agent processes live.
    lock_dir: std::path::PathBuf,
    /// Whether the agent applies layers itself (see `unpack.rs`).
    unpack_in_agent: bool,
    /// Where layers wait for the unpacker (unnamed files).
    spool_dir: std::path::PathBuf,
}

impl std::fmt::Debug for Puller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Puller")
            .field("registry_host", &self.registry_host)
            .field("namespace", &self.namespace)
            .field("platform", &self.platform)
            .finish()
    }
}

/// Ends a spool with an error unless the download ended it well first.
struct SpoolEnd(Option<Arc<Spool>>);

impl Drop for SpoolEnd {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            s.finish(Err("the layer's download did not complete".into()));
            s.stored(Err("the layer's blob was not committed".into()));
        }
    }
}

/// What the downloads tell the unpacker.
enum LayerEvent {
    /// Layer `i` started downloading into this spool.
    Started(usize, Arc<Spool>),
    /// Layer `i` is in the content store (the bytes downloaded) or failed.
    Done(usize, Result<u64, PullError>),
}

/// A layer ready to download (see `Puller::open_blob`); its locks are
/// held until it is dropped.
struct Opened {
    writer: crate::containerd::ContentWriter,
    ingest: String,
    spool: SpoolEnd,
    _held: tokio::sync::OwnedMutexGuard<()>,
    _node_held: crate::filelock::FileLock,
}

/// One blob of the image, with the labels it gets in containerd.
struct Job {
    blob: BlobRef,
    labels: HashMap<String, String>,
}

impl Puller {
    /// Builds the node identity, registry client and containerd connection.
    pub async fn new(cfg: &AgentConfig) -> Result<Puller, PullError> {
        let auth = Arc::new(NodeAuth::new(&cfg.node)?);
        let extra_ca = match &cfg.registry.ca_file {
            Some(p) => Some(std::fs::read(p).map_err(|e| {
                PullError::Other(format!("reading registry.ca_file {}: {e}", p.display()))
            })?),
            None => None,
        };
        let registry = Registry::new(&cfg.registry.url, extra_ca.as_deref(), auth)
            .map_err(PullError::Other)?;
        let containerd = Containerd::connect(
            &cfg.containerd.socket,
            &cfg.containerd.namespace,
            &cfg.containerd.snapshotter,
        )
        .await?;
        Ok(Puller {
            registry,
            containerd,
            registry_host: cfg.registry_host(),
            namespace: cfg.registry.namespace.clone(),
            platform: cfg.platform(),
            retry: RetryPolicy {
                max_attempts: cfg.pull.max_attempts,
                base: Duration::from_millis(cfg.pull.backoff_base_ms),
                max: Duration::from_millis(cfg.pull.backoff_max_ms),
            },
            parallel: cfg.pull.max_parallel_layers,
            limiter: cfg
                .pull
                .bandwidth_limit_bytes_per_sec
                .map(|b| Arc::new(RateLimiter::new(b))),
            disk_path: cfg.containerd.root.clone(),
            min_free: cfg.pull.min_free_bytes,
            locks: Locks::default(),
            lock_dir: cfg.data_dir.join("locks"),
            unpack_in_agent: cfg.pull.unpack == crate::config::UnpackBy::Agent,
            spool_dir: cfg.data_dir.join("spool"),
        })
    }

    pub fn containerd(&self) -> &Containerd {
        &self.containerd
    }

    /// The node-wide lock of `key` (after this process's own lock of the
    /// same key, so a process waits on the file at most once per key).
    async fn node_lock(&self, key: &str) -> Result<crate::filelock::FileLock, PullError> {
        let name: String = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        crate::filelock::FileLock::acquire_async(&self.lock_dir, &format!("{name}.lock"))
            .await
            .map_err(|e| {
                PullError::Other(format!("locking {key} in {}: {e}", self.lock_dir.display()))
            })
    }

    /// Resolves a reference as typed on the box.
    pub fn resolve(&self, input: &str) -> Result<ImageRef, ReferenceError> {
        ImageRef::resolve(input, &self.registry_host, &self.namespace)
    }

    /// The digest `input` resolves to on the registry (a manifest fetch
    /// with the node's token): the control plane's connectivity test.
    pub async fn resolve_digest(&self, input: &str) -> Result<String, PullError> {
        let image = self.resolve(input)?;
        let reference = image
            .digest
            .clone()
            .or_else(|| image.tag.clone())
            .unwrap_or_else(|| "latest".into());
        Ok(self.manifest(&image, &reference).await?.1)
    }

    /// Fetches a manifest with retries.
    async fn manifest(
        &self,
        image: &ImageRef,
        reference: &str,
    ) -> Result<(Bytes, String), PullError> {
        let mut attempt = 0;
        loop {
            match self.registry.manifest(image, reference).await {
                Ok((bytes, digest)) if bytes.len() <= MAX_MANIFEST_BYTES => {
                    return Ok((bytes, digest));
                }
                Ok(_) => {
                    return Err(PullError::Unsupported(format!(
                        "manifest {reference} is over {MAX_MANIFEST_BYTES} bytes"
                    )));
                }
                Err(e) => match e.kind() {
                    Failure::NotFound => {
                        return Err(PullError::NotFound(format!(
                            "{}:{reference}",
                            image.repository
                        )));
                    }
                    Failure::Fatal => {
                        return Err(match e {
                            RegistryError::Auth(a) => PullError::Auth(a),
                            other => PullError::Registry {
                                what: format!("manifest {reference} of {}", image.repository),
                                source: other,
                            },
                        });
                    }
                    Failure::Transient | Failure::Unauthorized => {
                        attempt += 1;
                        if attempt >= self.retry.max_attempts {
                            return Err(PullError::Registry {
                                what: format!(
                                    "manifest {reference} of {} after {attempt} attempts",
                                    image.repository
                                ),
                                source: e,
                            });
                        }
                        tracing::warn!(%reference, attempt, error = %e, "manifest fetch failed; retrying");
                        tokio::time::sleep(self.retry.delay(attempt)).await;
                    }
                },
            }
        }
    }

    /// Pulls `input` and unpacks it for this node's platform.
    pub async fn pull(&self, input: &str, progress: ProgressFn) -> Result<Pulled, PullError> {
        let image = self.resolve(input)?;
        let (top_bytes, top_digest) = self.manifest(&image, image.reference()).await?;
        progress(Progress::Resolved {
            image: image.image_name(),
            digest: top_digest.clone(),
        });
        let top: serde_json::Value = serde_json::from_slice(&top_bytes)
            .map_err(|e| PullError::Unsupported(format!("manifest is not JSON: {e}")))?;
        if top["schemaVersion"].as_i64() == Some(1) {
            return Err(PullError::Unsupported(
                "Docker schema 1 manifests are not supported (deprecated and unverifiable); push it again with a current client".into(),
            ));
        }
        let top_media = top["mediaType"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| {
                if top.get("manifests").is_some() {
                    "application/vnd.oci.image.index.v1+json".into()
                } else {
                    "application/vnd.oci.image.manifest.v1+json".into()
                }
            });

        // An index: pick this node's platform.
        let mut index: Option<(Bytes, String, String, usize)> = None;
        let (manifest_bytes, manifest_digest, manifest_media) = if top.get("manifests").is_some() {
            let parsed: oci_spec::image::ImageIndex = serde_json::from_slice(&top_bytes)
                .map_err(|e| PullError::Unsupported(format!("index: {e}")))?;
            let (i, chosen) = parsed
                .manifests()
                .iter()
                .enumerate()
                .find(|(_, m)| {
                    m.platform().as_ref().is_some_and(|p| {
                        self.platform.matches(
                            &p.os().to_string(),
                            &p.architecture().to_string(),
                            p.variant().as_deref(),
                        )
                    })
                })
                .ok_or_else(|| {
                    PullError::Unsupported(format!(
                        "{image} has no manifest for this node's platform {}",
                        self.platform
                    ))
                })?;
            let child_digest = chosen.digest().to_string();
            let (bytes, digest) = self.manifest(&image, &child_digest).await?;
            let media = chosen.media_type().to_string();
            index = Some((top_bytes.clone(), top_digest.clone(), top_media.clone(), i));
            (bytes, digest, media)
        } else {
            (top_bytes.clone(), top_digest.clone(), top_media.clone())
        };

        let manifest: oci_spec::image::ImageManifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| PullError::Unsupported(format!("manifest {manifest_digest}: {e}")))?;
        for layer in manifest.layers() {
            let media = layer.media_type().to_string();
            if is_foreign(&media) || layer.urls().as_ref().is_some_and(|u| !u.is_empty()) {
                return Err(PullError::Unsupported(format!(
                    "layer {} is a foreign (non-distributable) layer; Berth serves only what it stores",
                    layer.digest()
                )));
            }
            if !unpackable(&media) {
                return Err(PullError::Unsupported(format!(
                    "layer {} has media type {media}, which containerd cannot unpack",
                    layer.digest()
                )));
            }
        }

        let config_desc = manifest.config();
        let config_ref = BlobRef {
            digest: config_desc.digest().to_string(),
            size: config_desc.size(),
            media_type: config_desc.media_type().to_string(),
        };
        let layers: Vec<BlobRef> = manifest
            .layers()
            .iter()
            .map(|l| BlobRef {
                digest: l.digest().to_string(),
                size: l.size(),
                media_type: l.media_type().to_string(),
            })
            .collect();

        // Two pulls of one image in this process: the second waits, then
        // finds everything in containerd and only refreshes the record.
        let image_lock = self.locks.get(&format!("image:{manifest_digest}"));
        let _image_held = image_lock.lock().await;
        // containerd restarting under a pull (an upgrade, a crash) is
        // waited out: the import starts over on the reconnected channel,
        // finds the blobs committed before the restart, and downloads
        // again only what was in flight.
        let started = std::time::Instant::now();
        let mut attempt = 0u32;
        let mut stale_leases = Vec::new();
        // Across attempts: what an attempt cut short committed stays.
        let downloaded = std::sync::atomic::AtomicU64::new(0);
        let imported = loop {
            let result = self
                .import_leased(
                    &image,
                    index.as_ref(),
                    (&manifest_bytes, &manifest_digest, &manifest_media),
                    &config_ref,
                    &layers,
                    &progress,
                    &downloaded,
                    &mut stale_leases,
                )
                .await;
            match result {
                Err(PullError::Containerd(e))
                    if e.is_unavailable() && started.elapsed() < CONTAINERD_RETRY_WINDOW =>
                {
                    attempt += 1;
                    progress(Progress::Retry {
                        digest: manifest_digest.clone(),
                        attempt,
                        error: e.to_string(),
                    });
                    tracing::warn!(attempt, error = %e, "containerd unavailable; retrying the import");
                    tokio::time::sleep(self.retry.delay(attempt)).await;
                }
                other => break other,
            }
        };
        for lease in stale_leases {
            if let Err(e) = self.containerd.delete_lease(&lease).await {
                tracing::warn!(%lease, error = %e, "could not delete the pull's lease");
            }
        }
        imported?;
        let downloaded = downloaded.into_inner();
        let target_digest = match &index {
            Some((_, d, _, _)) => d.clone(),
            None => manifest_digest.clone(),
        };
        // The image record, created while the lease still held everything
        // (see import), is what keeps it all alive now.
        Ok(Pulled {
            name: image.image_name(),
            digest: target_digest,
            manifest: manifest_digest,
            platform: self.platform.to_string(),
            layers: layers.len(),
            downloaded,
        })
    }

    /// [`Puller::import`] under a lease of its own.
    #[allow(clippy::too_many_arguments)]
    async fn import_leased(
        &self,
        image: &ImageRef,
        index: Option<&(Bytes, String, String, usize)>,
        manifest: (&Bytes, &String, &String),
        config: &BlobRef,
        layers: &[BlobRef],
        progress: &ProgressFn,
        downloaded: &std::sync::atomic::AtomicU64,
        stale_leases: &mut Vec<String>,
    ) -> Result<(), PullError> {
        let lease = self.containerd.create_lease(LEASE_TTL).await?;
        let result = self
            .import(
                image, &lease, index, manifest, config, layers, progress, downloaded,
            )
            .await;
        if let Err(e) = self.containerd.delete_lease(&lease).await {
            if e.is_unavailable() {
                // containerd is restarting: deleted after the retry.
                stale_leases.push(lease);
            } else {
                // It expires by itself; a leaked lease only delays GC.
                tracing::warn!(%lease, error = %e, "could not delete the pull's lease");
            }
        }
        result
    }

    /// Everything under the lease: blobs, unpack, image record; the bytes
    /// downloaded are added to `downloaded` blob by blob.
    #[allow(clippy::too_many_arguments)]
    async fn import(
        &self,
        image: &ImageRef,
        lease: &str,
        index: Option<&(Bytes, String, String, usize)>,
        manifest: (&Bytes, &String, &String),
        config: &BlobRef,
        layers: &[BlobRef],
        progress: &ProgressFn,
        downloaded: &std::sync::atomic::AtomicU64,
    ) -> Result<(), PullError> {
        let source_label = (
            format!("containerd.io/distribution.source.{}", image.registry),
            image.repository.clone(),
        );
        let with_source = |mut m: HashMap<String, String>| {
            m.insert(source_label.0.clone(), source_label.1.clone());
            m
        };

        // Free space: what is missing, compressed, plus as much again for
        // the unpacked layers (a floor: gzip often expands more), plus the
        // configured reserve. Checked before the first blob download (the
        // config's included), from the manifest's sizes alone: a node that
        // cannot hold the image should not spend bandwidth on any of it.
        let mut missing = 0u64;
        for l in layers {
            if self.containerd.content_info(&l.digest).await?.is_none() {
                missing = missing.saturating_add(l.size);
            }
        }
        self.check_disk(missing.saturating_mul(2))?;

        // The config first: its diff ids name the snapshots.
        let config_bytes = self.small_blob(image, config).await?;
        let rootfs: ConfigRootfs = serde_json::from_slice(&config_bytes)
            .map_err(|e| PullError::Unsupported(format!("config {}: {e}", config.digest)))?;
        let diff_ids = rootfs.rootfs.diff_ids;
        if diff_ids.len() != layers.len() {
            return Err(PullError::Unsupported(format!(
                "config lists {} diff ids for {} layers",
                diff_ids.len(),
                layers.len()
            )));
        }
        let chain = chain_ids(&diff_ids);
        let snapshotter = self.containerd.snapshotter().to_owned();
        // Every layer's snapshot goes into the lease now, not between two
        // unpacks: each lease update is a write to containerd's metadata,
        // which waits behind any blob commit in progress, and the unpacks
        // are the chain the pull's time hangs on.
        let snapshot_kind = format!("snapshots/{snapshotter}");
        for chain_id in &chain {
            self.containerd
                .lease_resource(lease, chain_id, &snapshot_kind)
                .await?;
        }

        // Layers, in parallel and bounded.
        let jobs: Vec<Job> = layers
            .iter()
            .zip(&diff_ids)
            .map(|(l, diff_id)| Job {
                blob: l.clone(),
                labels: with_source(HashMap::from([(
                    "containerd.io/uncompressed".to_owned(),
                    diff_id.clone(),
                )])),
            })
            .collect();
        // Downloads start in manifest order, so the lowest layers finish
        // first; each layer is unpacked as soon as the layers below it are,
        // while the later ones still download (unpacking after the last
        // download, as ctr 1.6 does, leaves the network idle during every
        // unpack and containerd's disk idle during the downloads). When the
        // agent unpacks (`unpack.rs`), a layer's unpacking starts with its
        // download, reading the bytes as they arrive through its spool;
        // with Diff.Apply it starts once the layer is in the content store.
        let (event_tx, mut events) = futures::channel::mpsc::unbounded::<LayerEvent>();
        // The bound is on transfers, and everything that touches
        // containerd's metadata happens outside it. Each content commit
        // fsyncs its whole blob while holding containerd's metadata lock, so
        // any metadata write (opening an ingest, a lease update) can wait
        // behind one for a tenth of a second or more. So a download gives
        // its slot up once its bytes are in and verified, before that
        // commit; and the next layer is opened (locks, lease, ingest) while
        // it still waits for a slot, so a freed slot starts moving bytes at
        // once. Layers are opened one after the other, in manifest order,
        // and take slots in that order: the lowest layers, which the
        // unpacker needs first, arrive first.
        let slots = Arc::new(tokio::sync::Semaphore::new(self.parallel.max(1)));
        // When the blobs' commits reach containerd (see `commit_gate.rs`).
        let gate = &CommitGate::default();
        let downloads = async move {
            futures::stream::iter(jobs.iter().enumerate())
                .then(|(i, job)| {
                    let slots = Arc::clone(&slots);
                    let events = event_tx.clone();
                    async move {
                        let started = |spool: Arc<Spool>| {
                            let _ = events.unbounded_send(LayerEvent::Started(i, spool));
                        };
                        let opened = self.open_blob(lease, job, progress, &started).await;
                        // Only a transfer takes a slot (the semaphore is
                        // never closed).
                        let slot = match &opened {
                            Ok(Some(_)) => slots.acquire_owned().await.ok(),
                            _ => None,
                        };
                        (i, job, opened, slot)
                    }
                })
                .for_each_concurrent(None, |(i, job, opened, slot)| {
                    let events = event_tx.clone();
                    async move {
                        let r = match opened {
                            Ok(Some(o)) => {
                                self.transfer_blob(image, job, o, slot, (i, gate), progress)
                                    .await
                            }
                            Ok(None) => Ok(0),
                            Err(e) => Err(e),
                        };
                        // The receiver outlives every download (it drains
                        // until all senders are gone).
                        let _ = events.unbounded_send(LayerEvent::Done(i, r));
                    }
                })
                .await;
        };
        let unpacking = async {
            let n = layers.len();
            let mut spools: Vec<Option<Arc<Spool>>> = vec![None; n];
            let mut done = vec![false; n];
            let mut failed: Option<PullError> = None;
            let mut unpack_failed: Option<PullError> = None;
            let mut next = 0;
            let mut parent = String::new();
            while let Some(event) = events.next().await {
                match event {
                    LayerEvent::Started(i, spool) => spools[i] = Some(spool),
                    LayerEvent::Done(i, Ok(bytes)) => {
                        downloaded.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
                        done[i] = true;
                    }
                    LayerEvent::Done(_, Err(e)) => {
                        failed.get_or_insert(e);
                    }
                }
                // After a failure the remaining downloads still run to
                // their end (as before): nothing is cancelled mid-write.
                while failed.is_none()
                    && unpack_failed.is_none()
                    && next < n
                    && (done[next] || spools[next].is_some())
                {
                    gate.close();
                    // A spooled layer is unpacked from its spool, while it
                    // downloads or after; one without (in the content
                    // store already, or not for the agent) by Diff.Apply.
                    let spool = spools[next].take();
                    let watched = spool.clone();
                    if let Err(e) = self
                        .unpack_layer(
                            lease, next, layers, &diff_ids, &chain, &parent, spool, gate, progress,
                        )
                        .await
                    {
                        // Corrupt bytes fail the unpacker before the
                        // download ends; when the download fails too, its
                        // error (a digest mismatch, say) is the one to
                        // report, and it comes next.
                        let download_failed = match watched {
                            Some(s) => !matches!(
                                tokio::task::spawn_blocking(move || s.wait_end()).await,
                                Ok(Ok(()))
                            ),
                            None => false,
                        };
                        if download_failed {
                            unpack_failed = Some(e);
                        } else {
                            failed = Some(e);
                        }
                        break;
                    }
                    parent.clone_from(&chain[next]);
                    next += 1;
                }
                // Waiting for a download, or done.
                gate.open();
            }
            match failed.or(unpack_failed) {
                Some(e) => Err(e),
                None if next < n => Err(PullError::Other(format!("{next} of {n} layers unpacked"))),
                None => Ok(()),
            }
        };
        let ((), unpacked) = futures::join!(downloads, unpacking);
        unpacked?;

        // Config, manifest, index: with the labels that make GC follow
        // them to their children.
        let config_labels = with_source(HashMap::from([(
            format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
            chain.last().cloned().unwrap_or_default(),
        )]));
        self.put_small(lease, config, config_bytes, config_labels)
            .await?;
        let mut manifest_labels = with_source(HashMap::from([(
            "containerd.io/gc.ref.content.config".to_owned(),
            config.digest.clone(),
        )]));
        for (i, l) in layers.iter().enumerate() {
            manifest_labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                l.digest.clone(),
            );
        }
        let (m_bytes, m_digest, m_media) = manifest;
        let m_ref = BlobRef {
            digest: m_digest.clone(),
            size: m_bytes.len() as u64,
            media_type: m_media.clone(),
        };
        self.put_small(lease, &m_ref, m_bytes.clone(), manifest_labels)
            .await?;
        if let Some((i_bytes, i_digest, i_media, i)) = index {
            let labels = with_source(HashMap::from([(
                format!("containerd.io/gc.ref.content.m.{i}"),
                m_digest.clone(),
            )]));
            let i_ref = BlobRef {
                digest: i_digest.clone(),
                size: i_bytes.len() as u64,
                media_type: i_media.clone(),
            };
            self.put_small(lease, &i_ref, i_bytes.clone(), labels)
                .await?;
        }

        let target = match index {
            Some((b, d, m, _)) => Descriptor {
                media_type: m.clone(),
                digest: d.clone(),
                size: b.len() as i64,
                annotations: HashMap::new(),
            },
            None => Descriptor {
                media_type: m_media.clone(),
                digest: m_digest.clone(),
                size: m_bytes.len() as i64,
                annotations: HashMap::new(),
            },
        };
        self.containerd
            .put_image(&image.image_name(), target)
            .await?;
        Ok(())
    }

    fn check_disk(&self, need: u64) -> Result<(), PullError> {
        // containerd's root may not exist yet on a fresh box: look at the
        // nearest existing ancestor, which is the same file system.
        let mut path: &Path = &self.disk_path;
        while !path.exists() {
            match path.parent() {
                Some(p) => path = p,
                None => break,
            }
        }
        let stat = nix::sys::statvfs::statvfs(path)
            .map_err(|e| PullError::Other(format!("statvfs {}: {e}", path.display())))?;
        #[allow(clippy::useless_conversion)]
        let free =
            u64::from(stat.blocks_available()).saturating_mul(u64::from(stat.fragment_size()));
        let need_total = need.saturating_add(self.min_free);
        if free < need_total {
            return Err(PullError::DiskSpace {
                path: path.display().to_string(),
                need: need_total,
                free,
            });
        }
        Ok(())
    }

    /// Downloads a small blob (the config) into memory, verified.
    async fn small_blob(&self, image: &ImageRef, blob: &BlobRef) -> Result<Bytes, PullError> {
        if blob.size > MAX_MANIFEST_BYTES as u64 {
            return Err(PullError::Unsupported(format!(
                "config {} is over {MAX_MANIFEST_BYTES} bytes",
                blob.digest
            )));
        }
        let mut attempt = 0;
        loop {
            let body = self.registry.blob(image, blob, 0).await;
            let result = match body {
                Ok(b) => {
                    let mut stream = b.stream;
                    let mut buf = BytesMut::new();
                    let mut err = None;
                    while let Some(chunk) = stream.next().await {
                        match chunk {
                            Ok(c) if buf.len() + c.len() <= MAX_MANIFEST_BYTES => {
                                buf.extend_from_slice(&c)
                            }
                            Ok(_) => {
                                return Err(PullError::Unsupported(format!(
                                    "config {} is larger than announced",
                                    blob.digest
                                )));
                            }
                            Err(e) => {
                                err = Some(e.to_string());
                                break;
                            }
                        }
                    }
                    match err {
                        None => {
                            let actual = sha256_digest(&buf);
                            if actual != blob.digest {
                                return Err(PullError::Digest {
                                    expected: blob.digest.clone(),
                                    actual,
                                });
                            }
                            return Ok(buf.freeze());
                        }
                        Some(e) => e,
                    }
                }
                Err(e) => match e.kind() {
                    Failure::NotFound => return Err(PullError::NotFound(blob.digest.clone())),
                    Failure::Fatal => {
                        return Err(PullError::Registry {
                            what: format!("config {}", blob.digest),
                            source: e,
                        });
                    }
                    _ => e.to_string(),
                },
            };
            attempt += 1;
            if attempt >= self.retry.max_attempts {
                return Err(PullError::Other(format!(
                    "config {}: {result} (after {attempt} attempts)",
                    blob.digest
                )));
            }
            tokio::time::sleep(self.retry.delay(attempt)).await;
        }
    }

    /// Takes a blob containerd already holds into `lease` and labels it;
    /// false when containerd does not hold it.
    ///
    /// The lease reference comes first: content seen before it was taken
    /// may be collected in between (a failed pull's lease was just
    /// dropped and containerd's GC runs in the background), and labelling
    /// it would then fail with NotFound. Seen after it, it stays.
    async fn adopt_existing(
        &self,
        lease: &str,
        digest: &str,
        labels: HashMap<String, String>,
    ) -> Result<bool, PullError> {
        self.containerd
            .lease_resource(lease, digest, "content")
            .await?;
        if self.containerd.content_info(digest).await?.is_none() {
            return Ok(false);
        }
        self.containerd.label_content(digest, labels).await?;
        Ok(true)
    }

    /// A spool for `blob` when the agent unpacks it itself.
    fn spool_for(&self, blob: &BlobRef) -> Option<Arc<Spool>> {
        if !self.unpack_in_agent || Compression::of_media_type(&blob.media_type).is_none() {
            return None;
        }
        match Spool::create(&self.spool_dir) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(dir = %self.spool_dir.display(), error = %e, "no spool; containerd unpacks this layer");
                None
            }
        }
    }

    /// Writes an in-memory blob (config, manifest, index) with `labels`,
    /// or labels it when containerd already has it.
    async fn put_small(
        &self,
        lease: &str,
        blob: &BlobRef,
        data: Bytes,
        labels: HashMap<String, String>,
    ) -> Result<(), PullError> {
        let lock = self.locks.get(&blob.digest);
        let _held = lock.lock().await;
        // The ingest ref is per digest: another agent process writing the
        // same blob must not abort this one's ingest.
        let _node_held = self.node_lock(&blob.digest).await?;
        if self
            .adopt_existing(lease, &blob.digest, labels.clone())
            .await?
        {
            return Ok(());
        }
        let ingest = format!("berth-{}", blob.digest);
        self.containerd.abort_write(&ingest).await?;
        let mut w = match self
            .containerd
            .writer(lease, &ingest, &blob.digest, blob.size)
            .await
        {
            Ok(w) => w,
            Err(e) if e.code() == Some(Code::AlreadyExists) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        // From offset 0 whatever the ingest holds (see `start_over`).
        w.start_over();
        w.write(data).await?;
        match w.commit(labels).await {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some(Code::AlreadyExists) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes a layer's download ready, outside any transfer slot: this
    /// process's and the node's lock of its digest, the lease, containerd's
    /// ingest and the unpacker's spool. None when containerd already holds
    /// the blob (taken into the lease and labelled).
    async fn open_blob(
        &self,
        lease: &str,
        job: &Job,
        progress: &ProgressFn,
        started: &(dyn Fn(Arc<Spool>) + Sync),
    ) -> Result<Option<Opened>, PullError> {
        let blob = &job.blob;
        let held = self.locks.get(&blob.digest).lock_owned().await;
        // Another agent process (the daemon, a CLI pull) may be
        // downloading it: wait, then find it in containerd.
        let node_held = self.node_lock(&blob.digest).await?;
        if self
            .adopt_existing(lease, &blob.digest, job.labels.clone())
            .await?
        {
            progress(Progress::BlobStarted {
                digest: blob.digest.clone(),
                size: blob.size,
            });
            progress(Progress::BlobDone {
                digest: blob.digest.clone(),
                existed: true,
            });
            return Ok(None);
        }
        if !blob.digest.starts_with("sha256:") {
            return Err(PullError::Unsupported(format!(
                "blob {}: only sha256 digests are verified",
                blob.digest
            )));
        }
        // An ingest left by an earlier process cannot be resumed with a
        // verified hash (its prefix was never hashed here): start over.
        // Looked for first, because the abort is a metadata write.
        let ingest = format!("berth-{}", blob.digest);
        if self.containerd.ingest_exists(&ingest).await? {
            self.containerd.abort_write(&ingest).await?;
        }
        let mut writer = self
            .containerd
            .writer(lease, &ingest, &blob.digest, blob.size)
            .await?;
        if writer.offset() != 0 {
            tracing::debug!(%ingest, kept = writer.offset(), "ingest not emptied by the abort; truncating");
            writer.start_over();
        }
        // The agent's unpacker reads the layer from here as it arrives.
        // Ended with an error by the guard whatever way the download ends,
        // unless it ends well.
        let spool = SpoolEnd(self.spool_for(blob));
        if let Some(sp) = &spool.0 {
            started(Arc::clone(sp));
        }
        Ok(Some(Opened {
            writer,
            ingest,
            spool,
            _held: held,
            _node_held: node_held,
        }))
    }

    /// Downloads an opened layer into containerd (and its spool), verifies
    /// its digest, gives `slot` back and commits it.
    async fn transfer_blob(
        &self,
        image: &ImageRef,
        job: &Job,
        opened: Opened,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
        (layer, gate): (usize, &CommitGate),
        progress: &ProgressFn,
    ) -> Result<u64, PullError> {
        let blob = &job.blob;
        // The locks are held to the end of this function.
        let Opened {
            mut writer,
            ingest,
            spool,
            _held,
            _node_held,
        } = opened;
        progress(Progress::BlobStarted {
            digest: blob.digest.clone(),
            size: blob.size,
        });
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        let mut attempt = 0u32;
        while written < blob.size {
            let before = written;
            let error = match self.registry.blob(image, blob, written).await {
                Ok(body) => {
                    let mut skip = if body.from_start { written } else { 0 };
                    let mut stream = body.stream;
                    let mut buf = BytesMut::with_capacity(WRITE_CHUNK);
                    let mut failed = None;
                    loop {
                        let next = stream.next().await;
                        let ended = !matches!(next, Some(Ok(_)));
                        match next {
                            Some(Ok(mut c)) => {
                                if skip > 0 {
                                    let n = usize::try_from(skip.min(c.len() as u64)).unwrap_or(0);
                                    let _ = c.split_to(n);
                                    skip -= n as u64;
                                }
                                buf.extend_from_slice(&c);
                            }
                            Some(Err(e)) => failed = Some(e.to_string()),
                            None => {}
                        }
                        if buf.len() >= WRITE_CHUNK || (ended && !buf.is_empty()) {
                            let piece =
                                std::mem::replace(&mut buf, BytesMut::with_capacity(WRITE_CHUNK))
                                    .freeze();
                            let n = piece.len() as u64;
                            if written + n > blob.size {
                                return Err(PullError::Digest {
                                    expected: blob.digest.clone(),
                                    actual: format!("more than {} bytes", blob.size),
                                });
                            }
                            if let Some(l) = &self.limiter {
                                l.acquire(piece.len()).await;
                            }
                            hasher.update(&piece);
                            if let Some(sp) = &spool.0 {
                                let (sp, piece) = (Arc::clone(sp), piece.clone());
                                tokio::task::spawn_blocking(move || sp.append(&piece))
                                    .await
                                    .map_err(|e| PullError::Other(format!("spool: {e}")))?
                                    .map_err(|e| PullError::Other(format!("spool: {e}")))?;
                            }
                            writer.write(piece).await?;
                            written += n;
                            progress(Progress::BlobBytes {
                                digest: blob.digest.clone(),
                                bytes: n,
                            });
                        }
                        if ended {
                            break;
                        }
                    }
                    match failed {
                        // Every byte arrived and only then the stream
                        // failed: that is oci-client's own digest check of
                        // a full body. Retrying cannot change the bytes,
                        // and with no attempts left the corruption would be
                        // reported as a failed download with its ingest
                        // left behind: the agent's hash below decides.
                        Some(_) if written == blob.size => break,
                        Some(e) => e,
                        None if written < blob.size => {
                            format!("connection closed at byte {written} of {}", blob.size)
                        }
                        None => break,
                    }
                }
                Err(e) => match e.kind() {
                    Failure::NotFound => return Err(PullError::NotFound(blob.digest.clone())),
                    Failure::Fatal => {
                        return Err(PullError::Registry {
                            what: format!("layer {}", blob.digest),
                            source: e,
                        });
                    }
                    _ => e.to_string(),
                },
            };
            // Progress resets the count: a flaky link that keeps moving
            // finishes; one that is dead gives up after max_attempts.
            if written > before {
                attempt = 0;
            }
            attempt += 1;
            if attempt >= self.retry.max_attempts {
                return Err(PullError::Other(format!(
                    "layer {}: {error} (after {attempt} attempts)",
                    blob.digest
                )));
            }
            progress(Progress::Retry {
                digest: blob.digest.clone(),
                attempt,
                error: error.clone(),
            });
            tracing::warn!(digest = %blob.digest, written, attempt, %error, "layer download interrupted; resuming");
            tokio::time::sleep(self.retry.delay(attempt)).await;
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != blob.digest {
            // Closed, not dropped: the abort must not race containerd's
            // writer (see `ContentWriter::close`).
            writer.close().await;
            // Nothing of the corrupt bytes stays in containerd.
            self.containerd.abort_write(&ingest).await?;
            return Err(PullError::Digest {
                expected: blob.digest.clone(),
                actual,
            });
        }
        // Verified: the unpacker may commit its snapshot, while containerd
        // commits (and fsyncs) the blob. Should that commit fail, the pull
        // fails and its lease takes the snapshot with it.
        if let Some(sp) = &spool.0 {
            sp.finish(Ok(()));
        }
        drop(slot);
        let pass = gate.pass(layer).await;
        match writer.commit(job.labels.clone()).await {
            Ok(()) => {}
            Err(e) if e.code() == Some(Code::AlreadyExists) => {}
            Err(e) => return Err(e.into()),
        }
        drop(pass);
        if let Some(sp) = &spool.0 {
            sp.stored(Ok(()));
        }
        progress(Progress::BlobDone {
            digest: blob.digest.clone(),
            existed: false,
        });
        Ok(written)
    }

    /// Applies layer `i` onto `parent` (the chain id of the layers below
    /// it, empty for the first) as the snapshot `chain[i]`.
    #[allow(clippy::too_many_arguments)]
    async fn unpack_layer(
        &self,
        lease: &str,
        i: usize,
        layers: &[BlobRef],
        diff_ids: &[String],
        chain: &[String],
        parent: &str,
        spool: Option<Arc<Spool>>,
        gate: &CommitGate,
        progress: &ProgressFn,
    ) -> Result<(), PullError> {
        let layer = &layers[i];
        progress(Progress::Unpacking {
            layer: i + 1,
            of: layers.len(),
        });
        let chain_id = &chain[i];
        let lock = self.locks.get(&format!("snapshot:{chain_id}"));
        let _held = lock.lock().await;
        let _node_held = self.node_lock(&format!("snapshot:{chain_id}")).await?;
        // Leased (by `import`, before any download) before the check, as
        // in `adopt_existing`: a snapshot seen unleased could be collected
        // before the lease took it.
        if self.containerd.snapshot_exists(chain_id).await? {
            return Ok(());
        }
        let key = format!("extract-{}-{chain_id}", uuid::Uuid::new_v4());
        let mounts = self.containerd.prepare(lease, &key, parent).await?;
        let desc = Descriptor {
            media_type: layer.media_type.clone(),
            digest: layer.digest.clone(),
            size: layer.size as i64,
            annotations: HashMap::new(),
        };
        let target = match (&spool, mounts.as_slice()) {
            (Some(_), [m]) => Target::from_mount(&m.r#type, &m.source, &m.options),
            _ => None,
        };
        let compression = Compression::of_media_type(&layer.media_type);
        let applied = match (spool, target, compression) {
            (Some(spool), Some(target), Some(compression)) => {
                gate.applying(i);
                let reader = spool.reader();
                let r = tokio::task::spawn_blocking(move || {
                    crate::unpack::apply(&target, compression, reader)
                })
                .await;
                match r {
                    // The whole stream was read, so the download ended
                    // well: its digest verified.
                    Ok(Ok(diff_id)) => diff_id,
                    Ok(Err(source)) => {
                        let _ = self.containerd.remove_snapshot(&key).await;
                        return Err(PullError::Unpack {
                            layer: layer.digest.clone(),
                            source,
                        });
                    }
                    Err(e) => {
                        let _ = self.containerd.remove_snapshot(&key).await;
                        return Err(PullError::Other(format!("unpacking {}: {e}", layer.digest)));
                    }
                }
            }
            (spool, _, _) => {
                // Diff.Apply reads the blob from the content store: it
                // must be committed there, and its commit may go now.
                gate.open();
                if let Some(spool) = spool {
                    let end = tokio::task::spawn_blocking(move || spool.wait_stored()).await;
                    if !matches!(end, Ok(Ok(()))) {
                        let _ = self.containerd.remove_snapshot(&key).await;
                        return Err(PullError::Other(format!(
                            "layer {}: the download did not complete",
                            layer.digest
                        )));
                    }
                }
                match self.containerd.apply(lease, desc, mounts).await {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = self.containerd.remove_snapshot(&key).await;
                        return Err(e.into());
                    }
                }
            }
        };
        gate.close();
        if applied != diff_ids[i] {
            let _ = self.containerd.remove_snapshot(&key).await;
            return Err(PullError::DiffId {
                layer: layer.digest.clone(),
                expected: diff_ids[i].clone(),
                actual: applied,
            });
        }
        match self.containerd.commit(lease, chain_id, &key).await {
            Ok(()) => {}
            // Another process committed the same chain meanwhile.
            Err(e) if e.code() == Some(Code::AlreadyExists) => {
                let _ = self.containerd.remove_snapshot(&key).await;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// containerd's chain ids: the first layer's diff id, then
/// `sha256(parent + " " + diff_id)`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => sha256_digest(format!("{parent} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_containerd() {
        let a = "sha256:aaaa".to_owned();
        let b = "sha256:bbbb".to_owned();
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], sha256_digest(b"sha256:aaaa sha256:bbbb"));
    }

    #[test]
    fn layer_media_types() {
        assert!(unpackable("application/vnd.oci.image.layer.v1.tar+gzip"));
        assert!(!unpackable(
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        ));
        assert!(is_foreign(
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        ));
    }
}
