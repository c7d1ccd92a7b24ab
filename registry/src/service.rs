//! The registry service: the operations of the OCI Distribution Spec on top
//! of the two storage traits, with the rules that keep them consistent
//! (digest verification before visibility, reference checks on manifest
//! push, serialisation of uploads and of commits against GC).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::digest::{Algorithm, Digest, Hasher};
use crate::locks::KeyedLocks;
use crate::manifest::{self, ManifestError};
use crate::names::{Reference, RepoName, Tag};
use crate::storage::{
    BlobStore, ByteStream, MetadataStore, Millis, MountSource, NameList, NewManifest,
    PutManifestOutcome, Referrer, RepositoryPage, StorageError, StoredManifest, TagDetail,
    UploadProgress, UploadRecord, WriteInterruption, now_millis,
};

/// Tunables of the registry service.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Largest blob accepted, in bytes.
    pub max_blob_size: u64,
    /// Content younger than this is never collected, so that a push in
    /// progress (blobs uploaded, manifest not yet) is safe from GC.
    pub gc_grace: Duration,
    /// Upload sessions idle for longer are abandoned and reclaimed.
    pub upload_ttl: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            max_blob_size: 64 << 30,
            gc_grace: Duration::from_secs(3600),
            upload_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// Failures of registry operations, one variant per distinct answer a client
/// gets; the HTTP edge maps each to its OCI error code.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("blob unknown to registry")]
    BlobUnknown,
    #[error("blob upload unknown to registry")]
    UploadUnknown,
    #[error("blob upload invalid: {0}")]
    UploadInvalid(String),
    #[error("provided digest {expected} does not match the uploaded content ({actual})")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("manifest references blob {0}, which is not in the repository")]
    ManifestBlobUnknown(Digest),
    #[error("index references manifest {0}, which is not in the repository")]
    ManifestChildUnknown(Digest),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(#[from] ManifestError),
    #[error("manifest unknown to registry")]
    ManifestUnknown,
    #[error("manifest found, but its media type {0} is not in the Accept header")]
    ManifestNotAcceptable(String),
    #[error("repository name not known to registry")]
    NameUnknown,
    /// The requested range does not fit: for uploads `size` is the current
    /// offset, for blob reads the blob size.
    #[error("requested range not satisfiable")]
    RangeNotSatisfiable { size: u64 },
    #[error("blob is larger than the registry accepts ({limit} bytes)")]
    TooLarge { limit: u64 },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// State of an upload session, as the client sees it.
#[derive(Debug, Clone)]
pub struct UploadState {
    pub id: String,
    /// Bytes received and acknowledged so far.
    pub size: u64,
}

/// A byte range of a blob GET, as the client asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-b`, inclusive.
    FromTo(u64, u64),
    /// `bytes=a-`
    From(u64),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// The `[start, end)` this range selects in a blob of `size` bytes.
    pub fn resolve(self, size: u64) -> Result<(u64, u64)> {
        let unsatisfiable = Err(RegistryError::RangeNotSatisfiable { size });
        match self {
            ByteRange::FromTo(a, b) if a <= b && a < size => Ok((a, (b + 1).min(size))),
            ByteRange::From(a) if a < size => Ok((a, size)),
            ByteRange::Suffix(n) if n > 0 && size > 0 => Ok((size - n.min(size), size)),
            _ => unsatisfiable,
        }
    }
}

/// An open blob read.
pub struct BlobRead {
    pub size: u64,
    /// `[start, end)` served.
    pub start: u64,
    pub end: u64,
    pub partial: bool,
    pub body: ByteStream,
}

impl std::fmt::Debug for BlobRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobRead")
            .field("size", &self.size)
            .field("start", &self.start)
            .field("end", &self.end)
            .finish()
    }
}

/// Outcome of a manifest push.
#[derive(Debug, Clone)]
pub struct PushedManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
    pub tags: Vec<Tag>,
}

/// What one garbage collection pass reclaimed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcReport {
    pub manifests: u64,
    pub links: u64,
    pub repositories: u64,
    pub blobs: u64,
    pub bytes: u64,
    pub uploads: u64,
    /// Blob files without metadata (left by a crash between commit steps).
    pub orphans: u64,
    /// Nothing was done: another replica was collecting.
    pub skipped: bool,
}

/// The registry service. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    blobs: Arc<dyn BlobStore>,
    meta: Arc<dyn MetadataStore>,
    config: RegistryConfig,
    /// Serialises requests on one upload session.
    uploads: KeyedLocks,
    /// Serialises blob commits against GC deletion of the same digest.
    digests: KeyedLocks,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> Millis {
    d.as_millis().min(i64::MAX as u128) as Millis
}

impl Registry {
    pub fn new(
        blobs: Arc<dyn BlobStore>,
        meta: Arc<dyn MetadataStore>,
        config: RegistryConfig,
    ) -> Self {
        Registry {
            inner: Arc::new(Inner {
                blobs,
                meta,
                config,
                uploads: KeyedLocks::default(),
                digests: KeyedLocks::default(),
            }),
        }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    // --- blobs -------------------------------------------------------------

    /// Size of a blob of `repo` (HEAD). Seeing a blob exist is how clients
    /// decide not to upload it, so its link's GC grace period restarts.
    pub async fn stat_blob(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        let size = self
            .inner
            .meta
            .blob_in_repo(repo, digest)
            .await?
            .ok_or(RegistryError::BlobUnknown)?;
        let now = now_millis();
        let grace = millis(self.inner.config.gc_grace);
        // Only rewrite links older than half the grace period: HEAD stays a
        // read in the common case.
        self.inner
            .meta
            .touch_link(repo, digest, now, now - grace / 2)
            .await?;
        Ok(size)
    }

    pub async fn read_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<BlobRead> {
        let size = self
            .inner
            .meta
            .blob_in_repo(repo, digest)
            .await?
            .ok_or(RegistryError::BlobUnknown)?;
        let (start, end) = match range {
            Some(r) => r.resolve(size)?,
            None => (0, size),
        };
        let body = self.inner.blobs.read(digest, start, end).await?;
        Ok(BlobRead {
            size,
            start,
            end,
            partial: range.is_some(),
            body,
        })
    }

    /// A URL from which the client may GET blob `digest` of `repo` directly
    /// for `ttl` (a presigned object-store URL), `None` when the blob store
    /// cannot give one: the caller then streams the blob with
    /// [`Self::read_blob`].
    pub async fn blob_url(
        &self,
        repo: &RepoName,
        digest: &Digest,
        ttl: Duration,
    ) -> Result<Option<String>> {
        self.inner
            .meta
            .blob_in_repo(repo, digest)
            .await?
            .ok_or(RegistryError::BlobUnknown)?;
        Ok(self.inner.blobs.presign_get(digest, ttl).await?)
    }

    /// Removes a blob from a repository. Its bytes go when GC finds nothing
    /// else referencing them.
    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        if self.inner.meta.unlink_blob(repo, digest).await? {
            Ok(())
        } else {
            Err(RegistryError::BlobUnknown)
        }
    }

    /// Links a blob held by `from` into `repo`. `None` when there is nothing
    /// to mount: the client then uploads.
    pub async fn mount_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: MountSource<'_>,
    ) -> Result<Option<u64>> {
        Ok(self
            .inner
            .meta
            .mount_blob(repo, digest, from, now_millis())
            .await?)
    }

    // --- uploads -----------------------------------------------------------

    /// Opens an upload session. `algorithm` is the hash the bytes are
    /// digested with as they stream in (clients may hint it; sha256 if not).
    pub async fn start_upload(&self, repo: &RepoName, algorithm: Algorithm) -> Result<UploadState> {
        let now = now_millis();
        let hasher = Hasher::new(algorithm);
        let record = UploadRecord {
            id: uuid::Uuid::new_v4().to_string(),
            repo: repo.clone(),
            size: 0,
            hash_state: hasher.save(),
            created_at: now,
            updated_at: now,
        };
        // Progress first: a session row always has a progress record, so a
        // missing one means it was lost (see `progress`). A crash in
        // between leaves a record without a row, which the GC sweep takes.
        self.inner
            .blobs
            .upload_save_progress(&record.id, 0, &hasher)
            .await?;
        self.inner.meta.create_upload(&record).await?;
        Ok(UploadState {
            id: record.id,
            size: 0,
        })
    }

    async fn upload_record(&self, repo: &RepoName, id: &str) -> Result<UploadRecord> {
        if uuid::Uuid::try_parse(id).is_err() {
            return Err(RegistryError::UploadUnknown);
        }
        match self.inner.meta.get_upload(id).await? {
            // An upload id is only valid under the repository it was opened for.
            Some(r) if &r.repo == repo => Ok(r),
            _ => Err(RegistryError::UploadUnknown),
        }
    }

    /// Where upload `record` stands: its offset and the hash of the bytes
    /// before it. `None` when that is lost: the record was damaged or
    /// written before the machine restarted, or it is gone with the staged
    /// bytes (swept after a crash orphaned them).
    async fn progress(&self, record: &UploadRecord) -> Result<Option<(u64, Hasher)>> {
        match self.inner.blobs.upload_progress(&record.id).await? {
            UploadProgress::Current { size, hasher } => Ok(Some((size, hasher))),
            // A session of a Berth version that kept progress in the row:
            // the row's offset and hash state are its progress.
            UploadProgress::Missing if record.size > 0 => Hasher::restore(&record.hash_state)
                .map(|h| Some((record.size, h)))
                .map_err(|e| RegistryError::UploadInvalid(e.to_string())),
            UploadProgress::Missing | UploadProgress::Lost => Ok(None),
        }
    }

    /// [`Self::progress`] for a request holding the session's lock: a lost
    /// session is ended, and the client told to start over.
    async fn progress_or_abandon(&self, record: &UploadRecord) -> Result<(u64, Hasher)> {
        match self.progress(record).await? {
            Some(p) => Ok(p),
            None => {
                tracing::warn!(
                    upload = %record.id,
                    "abandoning an upload whose progress is lost (machine restarted, or staged data swept)"
                );
                self.abandon_upload(&record.id).await;
                Err(RegistryError::UploadUnknown)
            }
        }
    }

    pub async fn upload_status(&self, repo: &RepoName, id: &str) -> Result<UploadState> {
        let r = self.upload_record(repo, id).await?;
        // Without the session's lock (a status request does not wait for a
        // chunk in flight): a lost session is only reported, and ended by
        // its next chunk or by expiry.
        let (size, _) = self
            .progress(&r)
            .await?
            .ok_or(RegistryError::UploadUnknown)?;
        Ok(UploadState { id: r.id, size })
    }

    /// Appends a chunk. `range` is the inclusive `Content-Range` the client
    /// sent, if any; it must start where the upload stands.
    pub async fn upload_chunk(
        &self,
        repo: &RepoName,
        id: &str,
        range: Option<(u64, u64)>,
        body: ByteStream,
    ) -> Result<UploadState> {
        let _lock = self.inner.uploads.lock(id).await;
        let record = self.upload_record(repo, id).await?;
        let (size, hasher) = self.progress_or_abandon(&record).await?;
        let (size, _) = self.append(&record, size, hasher, range, body).await?;
        Ok(UploadState {
            id: record.id,
            size,
        })
    }

    /// Writes a chunk to an upload whose lock the caller holds, at `size`
    /// with `hasher` (its progress), and records the new progress. Returns
    /// the new size and hasher.
    async fn append(
        &self,
        record: &UploadRecord,
        size: u64,
        hasher: Hasher,
        range: Option<(u64, u64)>,
        body: ByteStream,
    ) -> Result<(u64, Hasher)> {
        if let Some((start, end)) = range
            && (start != size || end < start)
        {
            return Err(RegistryError::RangeNotSatisfiable { size });
        }
        let written = self
            .inner
            .blobs
            .upload_write(
                &record.id,
                size,
                body,
                hasher,
                self.inner.config.max_blob_size,
            )
            .await;
        let w = match written {
            Ok(w) => w,
            Err(StorageError::Corrupt(why)) => {
                self.abandon_upload(&record.id).await;
                return Err(RegistryError::UploadInvalid(why));
            }
            Err(e) => return Err(e.into()),
        };
        let new_size = size + w.written;
        if w.written > 0 {
            // Progress is kept even when the body was cut short, so that the
            // client can resume from the new offset.
            self.inner
                .blobs
                .upload_save_progress(&record.id, new_size, &w.hasher)
                .await?;
            self.keep_alive(record).await?;
        }
        match w.interrupted {
            Some(WriteInterruption::TooLarge) => Err(RegistryError::TooLarge {
                limit: self.inner.config.max_blob_size,
            }),
            Some(WriteInterruption::Body(e)) => Err(RegistryError::UploadInvalid(format!(
                "request body ended early after {} bytes: {e}",
                w.written
            ))),
            None => {
                if let Some((start, end)) = range
                    && end - start + 1 != w.written
                {
                    return Err(RegistryError::UploadInvalid(format!(
                        "Content-Range announced {} bytes but the body held {}",
                        end - start + 1,
                        w.written
                    )));
                }
                Ok((new_size, w.hasher))
            }
        }
    }

    /// Refreshes the session's last activity, which upload expiry counts
    /// from. Only now and then: it is a durable (fsynced) metadata commit,
    /// which on ext4 also waits for the staged chunk's data to reach the
    /// disk, and a chunk must not wait for that.
    async fn keep_alive(&self, record: &UploadRecord) -> Result<()> {
        let now = now_millis();
        // An eighth of the TTL: an active session is never taken for an
        // idle one, and a long upload commits a few times a day at most.
        let every = millis(self.inner.config.upload_ttl) / 8;
        if now - record.updated_at >= every
            && !self.inner.meta.touch_upload(&record.id, now).await?
        {
            // Expired by GC, or cancelled, while this chunk was written.
            self.inner.blobs.upload_discard(&record.id).await?;
            return Err(RegistryError::UploadUnknown);
        }
        Ok(())
    }

    async fn abandon_upload(&self, id: &str) {
        // Best effort: GC expires whatever this leaves behind.
        if let Err(e) = self.inner.meta.delete_upload(id).await {
            tracing::warn!(upload = id, error = %e, "could not delete upload record");
        }
        if let Err(e) = self.inner.blobs.upload_discard(id).await {
            tracing::warn!(upload = id, error = %e, "could not discard staged upload");
        }
    }

    /// Completes an upload (PUT), with an optional last chunk, verifying the
    /// digest before the blob becomes visible.
    pub async fn finish_upload(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        range: Option<(u64, u64)>,
        body: Option<ByteStream>,
    ) -> Result<u64> {
        let _lock = self.inner.uploads.lock(id).await;
        let record = self.upload_record(repo, id).await?;
        let (size, hasher) = self.progress_or_abandon(&record).await?;
        let (size, hasher) = match body {
            Some(body) => self.append(&record, size, hasher, range, body).await?,
            None => (size, hasher),
        };
        let actual = if hasher.algorithm() == digest.algorithm() {
            hasher.finish()
        } else {
            // The client did not say which algorithm it would use when the
            // upload started; hash the staged bytes once more.
            self.inner
                .blobs
                .upload_digest(id, size, digest.algorithm())
                .await?
        };
        if &actual != digest {
            self.abandon_upload(id).await;
            return Err(RegistryError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        if size > self.inner.config.max_blob_size {
            self.abandon_upload(id).await;
            return Err(RegistryError::TooLarge {
                limit: self.inner.config.max_blob_size,
            });
        }
        self.commit(repo, id, digest, size, true).await?;
        Ok(size)
    }

    /// Makes staged upload `id` visible as `digest` in `repo`.
    async fn commit(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        size: u64,
        has_record: bool,
    ) -> Result<()> {
        let _lock = self.inner.digests.lock(digest.as_str()).await;
        // Other replicas' GC too: between seeing the bytes present and the
        // row going in, nobody may delete them.
        let shared = self.inner.meta.lock_digest(digest).await?;
        let committed = self.commit_locked(repo, id, digest, size, has_record).await;
        shared.release().await;
        committed
    }

    /// [`Self::commit`] under the digest's locks.
    async fn commit_locked(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        size: u64,
        has_record: bool,
    ) -> Result<()> {
        // The blob file alone decides: it only ever appears by the rename of
        // verified, fsynced content. Requiring the metadata row too made a
        // retried PUT fail for good (500: staged data gone) after a crash
        // between that rename and the row's insert (found by tests/crash.rs).
        let present = self.inner.blobs.size(digest).await? == Some(size);
        if !present {
            match self.inner.blobs.upload_commit(id, size, digest).await {
                Ok(()) => {}
                // The staged bytes are gone (swept after a crash left them
                // orphaned): the session cannot complete; tell the client
                // to start over rather than fail the same way forever.
                Err(StorageError::Corrupt(why)) if has_record => {
                    tracing::warn!(upload = id, %why, "abandoning an upload whose staged data is gone");
                    self.abandon_upload(id).await;
                    return Err(RegistryError::UploadUnknown);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let record = has_record.then_some(id);
        self.inner
            .meta
            .commit_blob(repo, digest, size, record, now_millis())
            .await?;
        // Only now that the session row is gone: until then a retried PUT
        // after a crash needs the progress record (and, if the blob was
        // already there, finds the staged bytes still in place).
        if let Err(e) = self.inner.blobs.upload_discard(id).await {
            // The blob is in; the GC sweep takes what is left.
            tracing::warn!(upload = id, error = %e, "could not discard a committed upload's staging");
        }
        Ok(())
    }

    /// Cancels an upload session (DELETE).
    pub async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<()> {
        let _lock = self.inner.uploads.lock(id).await;
        self.upload_record(repo, id).await?;
        self.abandon_upload(id).await;
        Ok(())
    }

    /// A monolithic upload in one request (POST with `?digest=`).
    pub async fn put_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        body: ByteStream,
    ) -> Result<u64> {
        // No session row: nothing can resume a single-request upload, and GC
        // sweeps staged data that a crash leaves without one.
        let id = uuid::Uuid::new_v4().to_string();
        let hasher = Hasher::new(digest.algorithm());
        let w = self
            .inner
            .blobs
            .upload_write(&id, 0, body, hasher, self.inner.config.max_blob_size)
            .await?;
        if let Some(why) = w.interrupted {
            let _ = self.inner.blobs.upload_discard(&id).await;
            return Err(match why {
                WriteInterruption::TooLarge => RegistryError::TooLarge {
                    limit: self.inner.config.max_blob_size,
                },
                WriteInterruption::Body(e) => {
                    RegistryError::UploadInvalid(format!("request body ended early: {e}"))
                }
            });
        }
        let actual = w.hasher.finish();
        if &actual != digest {
            let _ = self.inner.blobs.upload_discard(&id).await;
            return Err(RegistryError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        self.commit(repo, &id, digest, w.written, false).await?;
        Ok(w.written)
    }

    // --- manifests -------------------------------------------------------------

    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        let found = match reference {
            Reference::Tag(t) => self.inner.meta.manifest_by_tag(repo, t).await?,
            Reference::Digest(d) => self.inner.meta.manifest_by_digest(repo, d).await?,
        };
        found.ok_or(RegistryError::ManifestUnknown)
    }

    /// Stores a manifest under a tag or its digest, plus `extra_tags`
    /// (the `?tag=` parameters of a push by digest).
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: &Bytes,
        extra_tags: &[Tag],
    ) -> Result<PushedManifest> {
        let digest = match reference {
            Reference::Digest(expected) => {
                let actual = Digest::of_bytes(expected.algorithm(), body);
                if &actual != expected {
                    return Err(RegistryError::DigestMismatch {
                        expected: expected.clone(),
                        actual,
                    });
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256_of(body),
        };
        let mut parsed = manifest::parse(content_type, body)?;
        parsed.platform = self.config_platform(repo, &parsed).await;
        let mut tags = extra_tags.to_vec();
        if let Reference::Tag(t) = reference {
            tags.push(t.clone());
        }
        tags.sort();
        tags.dedup();
        let outcome = self
            .inner
            .meta
            .put_manifest(NewManifest {
                repo,
                digest: &digest,
                content: body,
                parsed: &parsed,
                tags: &tags,
                now: now_millis(),
            })
            .await?;
        match outcome {
            PutManifestOutcome::Stored => Ok(PushedManifest {
                digest,
                subject: parsed.subject,
                tags,
            }),
            PutManifestOutcome::MissingBlob(d) => Err(RegistryError::ManifestBlobUnknown(d)),
            PutManifestOutcome::MissingManifest(d) => Err(RegistryError::ManifestChildUnknown(d)),
        }
    }

    /// The platform an image's config names, for listings. Best effort: a
    /// missing or unreadable config is the reference check's business.
    async fn config_platform(
        &self,
        repo: &RepoName,
        parsed: &manifest::ParsedManifest,
    ) -> Option<manifest::Platform> {
        /// Configs larger than this are not images' configs worth reading.
        const MAX_CONFIG: u64 = 1 << 20;
        let (digest, size) = parsed.config.as_ref()?;
        let media_type = parsed.config_media_type.as_deref()?;
        if !manifest::IMAGE_CONFIGS.contains(&media_type) || *size > MAX_CONFIG {
            return None;
        }
        let stored = self.inner.meta.blob_in_repo(repo, digest).await.ok()??;
        let mut body = self
            .inner
            .blobs
            .read(digest, 0, stored.min(MAX_CONFIG))
            .await
            .ok()?;
        let mut bytes = Vec::with_capacity(stored as usize);
        while let Some(chunk) = futures::StreamExt::next(&mut body).await {
            bytes.extend_from_slice(&chunk.ok()?);
        }
        manifest::platform_from_config(&bytes)
    }

    /// Deletes a tag (only that tag) or a manifest by digest (with its tags).
    pub async fn delete_manifest(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        let deleted = match reference {
            Reference::Tag(t) => self.inner.meta.delete_tag(repo, t).await?,
            Reference::Digest(d) => self.inner.meta.delete_manifest(repo, d).await?,
        };
        if deleted {
            Ok(())
        } else {
            Err(RegistryError::ManifestUnknown)
        }
    }

    // --- discovery ---------------------------------------------------------

    pub async fn list_tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        limit: usize,
    ) -> Result<NameList> {
        self.inner
            .meta
            .list_tags(repo, last, limit)
            .await?
            .ok_or(RegistryError::NameUnknown)
    }

    /// Repository names after `last`, at most `limit`, limited to
    /// `<namespace>/…` when a namespace is given (an account sees only its own).
    pub async fn catalog(
        &self,
        namespace: Option<&str>,
        last: Option<&str>,
        limit: usize,
    ) -> Result<NameList> {
        Ok(self
            .inner
            .meta
            .list_repositories(namespace, last, limit)
            .await?)
    }

    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>> {
        Ok(self
            .inner
            .meta
            .referrers(repo, subject, artifact_type)
            .await?)
    }

    /// A page of repository summaries for listings (portal, management API).
    pub async fn repository_page(
        &self,
        namespace: Option<&str>,
        filter: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<RepositoryPage> {
        Ok(self
            .inner
            .meta
            .repository_page(namespace, filter, after, limit)
            .await?)
    }

    /// Every tag of a repository with digest, size, platforms and push time.
    pub async fn repository_tags(&self, repo: &RepoName) -> Result<Vec<TagDetail>> {
        self.inner
            .meta
            .repository_tags(repo)
            .await?
            .ok_or(RegistryError::NameUnknown)
    }

    /// Deletes a repository: its tags, manifests, blob links and uploads.
    /// Storage nothing else references is reclaimed by GC.
    pub async fn delete_repository(&self, repo: &RepoName) -> Result<()> {
        let uploads = self
            .inner
            .meta
            .delete_repository(repo)
            .await?
            .ok_or(RegistryError::NameUnknown)?;
        for id in uploads {
            self.inner.blobs.upload_discard(&id).await?;
        }
        Ok(())
    }

    // --- garbage collection ----------------------------------------------------

    /// One online GC pass. `sweep` also walks the blob store for files the
    /// metadata does not know (a crash between rename and insert leaves
    /// such files); it costs a directory walk, so callers run it less often.
    pub async fn collect_garbage(&self, sweep: bool) -> Result<GcReport> {
        let now = now_millis();
        let cutoff = now - millis(self.inner.config.gc_grace);
        let mut report = GcReport::default();
        // One collector at a time among the replicas sharing the metadata:
        // passes would only trip over each other's deletes.
        let Some(gc_lock) = self.inner.meta.try_lock_gc().await? else {
            report.skipped = true;
            return Ok(report);
        };
        let collected = self.collect_locked(now, cutoff, sweep, &mut report).await;
        gc_lock.release().await;
        collected.map(|()| report)
    }

    async fn collect_locked(
        &self,
        now: Millis,
        cutoff: Millis,
        sweep: bool,
        report: &mut GcReport,
    ) -> Result<()> {
        let meta = &self.inner.meta;
        let blobs = &self.inner.blobs;
        let m = meta.gc_metadata(cutoff).await?;
        report.manifests = m.manifests;
        report.links = m.links;
        report.repositories = m.repositories;

        let upload_cutoff = now - millis(self.inner.config.upload_ttl);
        for id in meta.gc_expire_uploads(upload_cutoff).await? {
            blobs.upload_discard(&id).await?;
            report.uploads += 1;
        }

        const BATCH: usize = 500;
        loop {
            let candidates = meta.gc_blob_candidates(cutoff, BATCH).await?;
            let mut forgotten = 0;
            for (digest, size) in &candidates {
                let _lock = self.inner.digests.lock(digest.as_str()).await;
                let shared = meta.lock_digest(digest).await?;
                // Re-checked inside the delete's transaction: a push that
                // linked or referenced the blob since wins.
                let deleted = match meta.gc_forget_blob(digest, cutoff).await {
                    Ok(true) => blobs.delete(digest).await.map(|()| true),
                    Ok(false) => Ok(false),
                    Err(e) => Err(e),
                };
                shared.release().await;
                if deleted? {
                    report.blobs += 1;
                    report.bytes += size;
                    forgotten += 1;
                }
            }
            if candidates.len() < BATCH || forgotten == 0 {
                break;
            }
        }

        if sweep {
            let old = |t: std::time::SystemTime, age: Millis| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map(|d| millis(d) < now - age)
                    .unwrap_or(false)
            };
            let grace = millis(self.inner.config.gc_grace);
            for (digest, mtime) in blobs.list_blobs().await? {
                if !old(mtime, grace) {
                    continue;
                }
                let _lock = self.inner.digests.lock(digest.as_str()).await;
                let shared = meta.lock_digest(&digest).await?;
                let deleted = match meta.blob_size(&digest).await {
                    Ok(None) => blobs.delete(&digest).await.map(|()| true),
                    Ok(Some(_)) => Ok(false),
                    Err(e) => Err(e),
                };
                shared.release().await;
                if deleted? {
                    report.orphans += 1;
                }
            }
            let ttl = millis(self.inner.config.upload_ttl);
            for (id, mtime) in blobs.list_uploads().await? {
                if old(mtime, ttl) && !meta.upload_exists(&id).await? {
                    blobs.upload_discard(&id).await?;
                    report.uploads += 1;
                }
            }
        }
        Ok(())
    }
}
