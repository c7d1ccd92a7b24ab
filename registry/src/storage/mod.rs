//! The storage layer: the only code that knows how blobs are laid out and
//! what the metadata schema is.
//!
//! Two narrow traits separate the registry service from its engines:
//! [`BlobStore`] holds content-addressed bytes and staged uploads;
//! [`MetadataStore`] holds repositories, tags, manifests, references,
//! upload sessions and links. The embedded default is [`fs::FsBlobStore`]
//! plus [`sqlite::SqliteMetadata`]; scale-out engines implement the same
//! traits ([`postgres::PgMetadata`] for metadata, [`s3::S3BlobStore`] for
//! blobs). [`MetadataEngine`], [`BlobEngine`] and [`open`] choose and open
//! them from configuration.

use std::io;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

use crate::digest::{Digest, Hasher};
use crate::manifest::ParsedManifest;
use crate::names::{RepoName, Tag};

pub mod fs;
pub mod postgres;
pub mod s3;
pub mod sqlite;

/// A stream of body bytes, to or from a store.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Failures of a storage engine. None of them is the client's fault.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("metadata database failed: {0}")]
    Database(String),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    /// Settings that cannot work (a bad blob URL, part size, endpoint).
    #[error("{0}")]
    Config(String),
}

/// Unix time in milliseconds; every timestamp in metadata uses it.
pub type Millis = i64;

pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// The result of streaming a request body into a staged upload.
#[derive(Debug)]
pub struct UploadWrite {
    /// Bytes appended (see [`BlobStore::upload_write`] on durability) and
    /// fed to the hasher.
    pub written: u64,
    /// The hasher after those bytes.
    pub hasher: Hasher,
    /// Set when the body stopped early (client gone, size limit reached);
    /// `written` bytes were still kept so that the client can resume.
    pub interrupted: Option<WriteInterruption>,
}

#[derive(Debug)]
pub enum WriteInterruption {
    /// Reading the request body failed.
    Body(io::Error),
    /// The upload would exceed the configured maximum blob size.
    TooLarge,
}

/// Content-addressed blob storage with staged uploads.
///
/// Contract: a committed blob is complete and its digest verified; it only
/// becomes readable by [`BlobStore::upload_commit`], which is atomic.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Size of a committed blob, `None` if absent.
    async fn size(&self, digest: &Digest) -> Result<Option<u64>, StorageError>;

    /// Streams bytes `[start, end)` of a committed blob.
    async fn read(&self, digest: &Digest, start: u64, end: u64)
    -> Result<ByteStream, StorageError>;

    /// Removes a committed blob; absent blobs are not an error.
    async fn delete(&self, digest: &Digest) -> Result<(), StorageError>;

    /// Appends `body` to the staged upload `id` at `offset`, feeding the
    /// bytes to `hasher`. Bytes beyond `offset` left by an earlier,
    /// unacknowledged write are discarded first. Stops at `max_total` bytes.
    /// The written bytes survive a crash of the process when this returns;
    /// they are made durable against power loss by `upload_commit`, which
    /// reports staged data lost to a power failure as `Corrupt`.
    async fn upload_write(
        &self,
        id: &str,
        offset: u64,
        body: ByteStream,
        hasher: Hasher,
        max_total: u64,
    ) -> Result<UploadWrite, StorageError>;

    /// Digest of the first `len` staged bytes under `algorithm`. Needed only
    /// when a client finishes an upload with a digest of another algorithm
    /// than the one the upload was hashed with as it streamed in.
    async fn upload_digest(
        &self,
        id: &str,
        len: u64,
        algorithm: crate::digest::Algorithm,
    ) -> Result<Digest, StorageError>;

    /// Makes the first `len` bytes of upload `id` the blob `digest`,
    /// atomically, and removes the staged upload.
    async fn upload_commit(&self, id: &str, len: u64, digest: &Digest) -> Result<(), StorageError>;

    /// Records that upload `id` holds `size` staged bytes, hashed into
    /// `hasher`, replacing the previous record atomically (a reader sees the
    /// old record or the new one). Survives a crash of the process when this
    /// returns, like the bytes of [`BlobStore::upload_write`]; it is not made
    /// durable against power loss (no fsync: the price of one per chunk is a
    /// stalled upload), and [`BlobStore::upload_progress`] tells a record
    /// that may not match the staged bytes any more by answering
    /// [`UploadProgress::Lost`].
    async fn upload_save_progress(
        &self,
        id: &str,
        size: u64,
        hasher: &Hasher,
    ) -> Result<(), StorageError>;

    /// The last progress recorded by [`BlobStore::upload_save_progress`].
    async fn upload_progress(&self, id: &str) -> Result<UploadProgress, StorageError>;

    /// Drops a staged upload and its progress record; absent uploads are
    /// not an error.
    async fn upload_discard(&self, id: &str) -> Result<(), StorageError>;

    /// Every committed blob with its modification time (for the GC sweep of
    /// blobs whose metadata row was never written because of a crash).
    async fn list_blobs(&self) -> Result<Vec<(Digest, SystemTime)>, StorageError>;

    /// Every staged upload id (staged bytes or a progress record) with its
    /// latest modification time.
    async fn list_uploads(&self) -> Result<Vec<(String, SystemTime)>, StorageError>;

    /// A URL from which a client may GET the committed blob `digest` itself
    /// for `ttl`, without credentials (the registry answers blob GETs with a
    /// redirect to it when so configured). `None` when the store cannot
    /// hand out such URLs (the filesystem).
    async fn presign_get(
        &self,
        _digest: &Digest,
        _ttl: Duration,
    ) -> Result<Option<String>, StorageError> {
        Ok(None)
    }
}

/// Names in order (a page of tags or repositories), packed into one buffer:
/// a page holds up to 10,000 of them, and a `String` each was a sixth of the
/// CPU a full tag list cost.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NameList {
    text: String,
    /// Where each name ends in `text`.
    ends: Vec<usize>,
}

impl NameList {
    /// An empty list with room for `names` names (their text grows as needed).
    pub fn with_capacity(names: usize) -> Self {
        NameList {
            text: String::with_capacity(names * 8),
            ends: Vec::with_capacity(names),
        }
    }

    pub fn push(&mut self, name: &str) {
        self.text.push_str(name);
        self.ends.push(self.text.len());
    }

    /// A list from names laid end to end in `text`, name `i` ending at
    /// `ends[i]`; `None` unless `text` is UTF-8, cut only between
    /// characters, with `ends` ascending up to its end. (A storage engine
    /// gathers raw bytes and has them checked once: per name, the check
    /// cost more than the copy.)
    pub fn from_parts(text: Vec<u8>, ends: Vec<usize>) -> Option<Self> {
        if ends.last().copied().unwrap_or(0) != text.len() {
            return None;
        }
        let text = String::from_utf8(text).ok()?;
        let mut start = 0;
        for &end in &ends {
            if end < start || !text.is_char_boundary(end) {
                return None;
            }
            start = end;
        }
        Some(NameList { text, ends })
    }

    /// All names run together, in order.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = match i {
            0 => 0,
            _ => self.ends[i - 1],
        };
        self.text.get(start..end)
    }

    pub fn last(&self) -> Option<&str> {
        self.get(self.len().checked_sub(1)?)
    }

    /// Keeps the first `n` names.
    pub fn truncate(&mut self, n: usize) {
        if n < self.len() {
            self.ends.truncate(n);
            self.text.truncate(self.ends.last().copied().unwrap_or(0));
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let name = &self.text[start..end];
            start = end;
            name
        })
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(str::to_owned).collect()
    }
}

impl<'a> FromIterator<&'a str> for NameList {
    fn from_iter<I: IntoIterator<Item = &'a str>>(iter: I) -> Self {
        let mut list = NameList::default();
        for name in iter {
            list.push(name);
        }
        list
    }
}

impl std::fmt::Debug for NameList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// What the blob store knows of an upload's progress.
// Returned once per request and never stored: boxing the hasher would only
// add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum UploadProgress {
    /// The first `size` staged bytes are the upload's, and `hasher` has seen
    /// exactly them.
    Current { size: u64, hasher: Hasher },
    /// A record exists but cannot be trusted: it is damaged, or it was
    /// written before the machine restarted, when neither it nor the staged
    /// bytes had been made durable. The upload cannot go on.
    Lost,
    /// No record.
    Missing,
}

/// Where a cross-repository mount may take a blob from.
#[derive(Debug, Clone, Copy)]
pub enum MountSource<'a> {
    /// The named repository (`?from=`).
    Repository(&'a RepoName),
    /// Any repository under `<namespace>/` (an anonymous mount within one
    /// account), or any repository at all when `namespace` is `None`.
    Anywhere { namespace: Option<&'a str> },
}

/// An upload session as the metadata store keeps it.
///
/// The session's progress (offset and hash state) moves with every chunk and
/// is kept by the blob store beside the staged bytes
/// ([`BlobStore::upload_progress`]); `size` and `hash_state` here are where
/// the session was created, and where sessions written by Berth versions
/// that kept progress in this record stand.
#[derive(Debug, Clone)]
pub struct UploadRecord {
    pub id: String,
    pub repo: RepoName,
    /// Bytes acknowledged when the record was last written (0 when created).
    pub size: u64,
    /// [`Hasher::save`] output after `size` bytes.
    pub hash_state: Vec<u8>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A manifest as served to clients.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub content: Bytes,
}

/// A manifest about to be stored, with everything its rows need.
#[derive(Debug)]
pub struct NewManifest<'a> {
    pub repo: &'a RepoName,
    pub digest: &'a Digest,
    pub content: &'a [u8],
    pub parsed: &'a ParsedManifest,
    pub tags: &'a [Tag],
    pub now: Millis,
}

/// Outcome of storing a manifest.
#[derive(Debug, PartialEq, Eq)]
pub enum PutManifestOutcome {
    Stored,
    /// A config or layer is not in the repository.
    MissingBlob(Digest),
    /// A child manifest of an index is not in the repository.
    MissingManifest(Digest),
}

/// One entry of a referrers listing.
#[derive(Debug, Clone)]
pub struct Referrer {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    /// Annotations as a JSON object text.
    pub annotations: Option<String>,
}

/// A repository as listings (portal, management API) show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RepositorySummary {
    pub name: String,
    pub tag_count: u64,
    /// Bytes of the distinct blobs its manifests reference, plus the manifests.
    pub size: u64,
    /// Last push (a manifest or tag written), Unix milliseconds.
    pub last_push: Millis,
    /// Platforms of its tagged images, e.g. `linux/arm64`.
    pub platforms: Vec<String>,
}

/// One page of repository summaries, and how many match in all.
#[derive(Debug, Clone)]
pub struct RepositoryPage {
    pub repositories: Vec<RepositorySummary>,
    pub total: u64,
}

/// A tag as the repository view shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TagDetail {
    pub tag: String,
    pub digest: Digest,
    pub media_type: String,
    pub artifact_type: Option<String>,
    /// Manifest, config and layers (for an index: of every child too).
    pub size: u64,
    /// When the tag was last pointed at its manifest, Unix milliseconds.
    pub pushed_at: Millis,
    /// The image's platform, or every platform of an index.
    pub platforms: Vec<String>,
}

/// What one metadata-side GC pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MetadataGcReport {
    pub manifests: u64,
    pub links: u64,
    pub repositories: u64,
}

/// A lock that every replica sharing the metadata store respects, from
/// [`MetadataStore::lock_digest`] or [`MetadataStore::try_lock_gc`].
/// Release it with [`SharedLock::release`]; dropping it releases it too, in
/// the background.
#[derive(Debug)]
pub struct SharedLock {
    /// `None` for a store only one process uses (the embedded default),
    /// where the service's in-process locks are all there is to take.
    held: Option<pg_pool::AdvisoryLock>,
}

impl SharedLock {
    /// The lock of a store that one process owns: nothing to hold.
    pub fn in_process() -> Self {
        SharedLock { held: None }
    }

    pub(crate) fn postgres(lock: pg_pool::AdvisoryLock) -> Self {
        SharedLock { held: Some(lock) }
    }

    pub async fn release(self) {
        if let Some(lock) = self.held
            && let Err(e) = lock.release().await
        {
            // The lock was released with its broken connection: whatever
            // ran under it ran, but maybe not alone.
            tracing::warn!(error = %e, "a shared lock was lost while held");
        }
    }
}

/// Repositories, tags, manifests, references, links and upload sessions.
///
/// Every method is one transaction: a crash leaves either all of its rows or
/// none.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    // --- blobs -----------------------------------------------------------

    /// Size of `digest` if it is linked to `repo`.
    async fn blob_in_repo(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>, StorageError>;

    /// Size of `digest` if the blob store holds it (linked anywhere or not).
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, StorageError>;

    /// Records a committed blob and links it to `repo` (creating the
    /// repository), deleting upload `upload_id` if given.
    async fn commit_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        upload_id: Option<&str>,
        now: Millis,
    ) -> Result<(), StorageError>;

    /// Links an existing blob to `repo` if `from` holds it. Returns its
    /// size, or `None` when there was nothing to mount.
    async fn mount_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: MountSource<'_>,
        now: Millis,
    ) -> Result<Option<u64>, StorageError>;

    /// Removes the link of `digest` to `repo`; `false` if there was none.
    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool, StorageError>;

    /// Refreshes a link older than `older_than` so that GC's grace period
    /// starts again: a client that just saw the blob exist is about to
    /// reference it from a manifest instead of uploading it.
    async fn touch_link(
        &self,
        repo: &RepoName,
        digest: &Digest,
        now: Millis,
        older_than: Millis,
    ) -> Result<(), StorageError>;

    // --- uploads ---------------------------------------------------------

    async fn create_upload(&self, upload: &UploadRecord) -> Result<(), StorageError>;

    async fn get_upload(&self, id: &str) -> Result<Option<UploadRecord>, StorageError>;

    /// Marks the session active at `now` (upload expiry counts from it);
    /// `false` if there is no such session.
    async fn touch_upload(&self, id: &str, now: Millis) -> Result<bool, StorageError>;

    async fn delete_upload(&self, id: &str) -> Result<bool, StorageError>;

    // --- manifests and tags ------------------------------------------------

    async fn manifest_by_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<StoredManifest>, StorageError>;

    async fn manifest_by_digest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<StoredManifest>, StorageError>;

    /// Stores a manifest and points its tags at it, after checking in the
    /// same transaction that every referenced blob and child exists.
    async fn put_manifest(
        &self,
        manifest: NewManifest<'_>,
    ) -> Result<PutManifestOutcome, StorageError>;

    /// Deletes a manifest and every tag pointing at it.
    async fn delete_manifest(&self, repo: &RepoName, digest: &Digest)
    -> Result<bool, StorageError>;

    /// Deletes one tag, leaving the manifest and its other tags.
    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool, StorageError>;

    /// Tags of `repo` after `last` in lexical order, at most `limit`;
    /// `None` if the repository does not exist.
    async fn list_tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        limit: usize,
    ) -> Result<Option<NameList>, StorageError>;

    /// Repository names after `last` in lexical order, at most `limit`; only
    /// those under `<namespace>/` when a namespace is given.
    async fn list_repositories(
        &self,
        namespace: Option<&str>,
        last: Option<&str>,
        limit: usize,
    ) -> Result<NameList, StorageError>;

    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>, StorageError>;

    /// Repository summaries under `<namespace>/` whose names contain
    /// `filter`, after `after` in lexical order, at most `limit`.
    async fn repository_page(
        &self,
        namespace: Option<&str>,
        filter: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<RepositoryPage, StorageError>;

    /// Every tag of `repo` with its details; `None` if there is no such repository.
    async fn repository_tags(
        &self,
        repo: &RepoName,
    ) -> Result<Option<Vec<TagDetail>>, StorageError>;

    /// Deletes a repository with its tags, manifests, links and uploads;
    /// returns the ids of the uploads so their staged data can go too.
    async fn delete_repository(&self, repo: &RepoName)
    -> Result<Option<Vec<String>>, StorageError>;

    // --- coordination between replicas ------------------------------------

    /// Holds `digest` against blob commits and GC deletes on every process
    /// sharing this store, until the lock is released: the bytes of a blob
    /// live outside any metadata transaction, so a replica committing a
    /// digest whose bytes it found present must not interleave with another
    /// replica's GC forgetting that digest and deleting those bytes. A store
    /// only one process opens has nothing to add to the service's
    /// in-process locks.
    async fn lock_digest(&self, _digest: &Digest) -> Result<SharedLock, StorageError> {
        Ok(SharedLock::in_process())
    }

    /// Makes the caller the one garbage collector among the processes
    /// sharing this store; `None` while another one is collecting.
    async fn try_lock_gc(&self) -> Result<Option<SharedLock>, StorageError> {
        Ok(Some(SharedLock::in_process()))
    }

    // --- garbage collection ---------------------------------------------

    /// Removes manifests created before `cutoff` that no tag, index or
    /// subject keeps alive, then links created before `cutoff` that no
    /// manifest references, then empty repositories.
    async fn gc_metadata(&self, cutoff: Millis) -> Result<MetadataGcReport, StorageError>;

    /// Blobs (with their sizes) created before `cutoff` with no link and no
    /// manifest reference.
    async fn gc_blob_candidates(
        &self,
        cutoff: Millis,
        limit: usize,
    ) -> Result<Vec<(Digest, u64)>, StorageError>;

    /// Forgets a blob if it is still a candidate; `true` if it was forgotten
    /// and its bytes may now be deleted.
    async fn gc_forget_blob(&self, digest: &Digest, cutoff: Millis) -> Result<bool, StorageError>;

    /// Deletes upload sessions not updated since `cutoff`, returning their ids.
    async fn gc_expire_uploads(&self, cutoff: Millis) -> Result<Vec<String>, StorageError>;

    /// Whether an upload id is known (for sweeping staged data without a row).
    async fn upload_exists(&self, id: &str) -> Result<bool, StorageError>;
}

/// The two engines a registry runs on.
pub type Engines = (
    std::sync::Arc<dyn BlobStore>,
    std::sync::Arc<dyn MetadataStore>,
);

/// Opens the embedded default engines (filesystem blobs, SQLite metadata)
/// inside one data directory.
pub fn open_embedded(
    data_dir: &std::path::Path,
    synchronous: sqlite::Synchronous,
) -> Result<Engines, StorageError> {
    std::fs::create_dir_all(data_dir)?;
    let blobs = fs::FsBlobStore::open(data_dir.join("store"))?;
    let meta = sqlite::SqliteMetadata::open(data_dir.join("metadata.sqlite"), synchronous)?;
    Ok((std::sync::Arc::new(blobs), std::sync::Arc::new(meta)))
}

/// Where registry metadata lives.
#[derive(Debug, Clone)]
pub enum MetadataEngine {
    /// SQLite in the data directory (the embedded default).
    Embedded { synchronous: sqlite::Synchronous },
    /// A PostgreSQL database shared by every replica.
    Postgres(pg_pool::ConnectOptions),
}

impl MetadataEngine {
    /// The engine a metadata URL names: none (or `embedded`) is SQLite in
    /// the data directory; `postgres://…` or `postgresql://…` is
    /// PostgreSQL, with `password` (from the environment or a file: kept out
    /// of URLs, which end up in logs) replacing any in the URL.
    pub fn from_url(
        url: Option<&str>,
        password: Option<String>,
        synchronous: sqlite::Synchronous,
        max_connections: usize,
    ) -> Result<Self, StorageError> {
        match url.map(str::trim) {
            None | Some("") | Some("embedded") => Ok(MetadataEngine::Embedded { synchronous }),
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                Ok(MetadataEngine::Postgres(pg_pool::ConnectOptions {
                    url: u.to_owned(),
                    password,
                    max_connections,
                }))
            }
            Some(u) => Err(StorageError::Database(format!(
                "unsupported metadata URL {:?}: use postgres://… or leave it unset for the embedded SQLite store",
                u.split_once("://").map_or(u, |(scheme, _)| scheme)
            ))),
        }
    }

    pub fn is_embedded(&self) -> bool {
        matches!(self, MetadataEngine::Embedded { .. })
    }

    /// The PostgreSQL connection, for the stores that share the database.
    pub fn postgres(&self) -> Option<&pg_pool::ConnectOptions> {
        match self {
            MetadataEngine::Postgres(o) => Some(o),
            MetadataEngine::Embedded { .. } => None,
        }
    }
}

/// Opens the metadata store `engine` names (SQLite files go in `data_dir`).
pub async fn open_metadata(
    data_dir: &std::path::Path,
    engine: &MetadataEngine,
) -> Result<std::sync::Arc<dyn MetadataStore>, StorageError> {
    Ok(match engine {
        MetadataEngine::Embedded { synchronous } => {
            std::fs::create_dir_all(data_dir)?;
            std::sync::Arc::new(sqlite::SqliteMetadata::open(
                data_dir.join("metadata.sqlite"),
                *synchronous,
            )?)
        }
        MetadataEngine::Postgres(options) => {
            std::sync::Arc::new(postgres::PgMetadata::connect(options).await?)
        }
    })
}

/// Where blobs live.
#[derive(Debug, Clone)]
pub enum BlobEngine {
    /// The filesystem under the data directory (the embedded default).
    Filesystem,
    /// An S3-compatible bucket shared by every replica.
    S3(s3::S3Options),
}

impl BlobEngine {
    /// The engine a blob URL names: none (or `embedded`) is the
    /// filesystem under the data directory; `s3://bucket[/prefix]` is that
    /// bucket, reached with `s3` (endpoint, region, credentials: the
    /// secret comes from the environment or a file, never from the URL).
    pub fn from_url(url: Option<&str>, s3: S3Settings) -> Result<Self, StorageError> {
        match url.map(str::trim) {
            None | Some("") | Some("embedded") => Ok(BlobEngine::Filesystem),
            Some(u) if u.starts_with("s3://") => {
                if u.contains('@') || u.contains('?') {
                    return Err(StorageError::Config(
                        "an s3:// URL names only bucket and prefix: credentials and options are separate settings".into(),
                    ));
                }
                let options = s3::S3Options {
                    endpoint: s3.endpoint,
                    region: s3.region,
                    access_key_id: s3.access_key_id,
                    secret_access_key: s3.secret_access_key,
                    allow_http: s3.allow_http,
                    part_size: s3.part_size,
                    ..s3::S3Options::from_url(u)?
                };
                options.validate().map_err(StorageError::Config)?;
                Ok(BlobEngine::S3(options))
            }
            Some(u) => Err(StorageError::Config(format!(
                "unsupported blob URL {:?}: use s3://bucket[/prefix] or leave it unset for the data directory",
                u.split_once("://").map_or(u, |(scheme, _)| scheme)
            ))),
        }
    }

    pub fn is_embedded(&self) -> bool {
        matches!(self, BlobEngine::Filesystem)
    }
}

/// How to reach S3 for a `s3://` blob URL.
#[derive(Debug, Clone)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub allow_http: bool,
    pub part_size: usize,
}

impl Default for S3Settings {
    fn default() -> Self {
        S3Settings {
            endpoint: None,
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            part_size: s3::DEFAULT_PART_SIZE,
        }
    }
}

/// Opens the blob store `engine` names (the filesystem one under `data_dir`).
pub fn open_blobs(
    data_dir: &std::path::Path,
    engine: &BlobEngine,
) -> Result<std::sync::Arc<dyn BlobStore>, StorageError> {
    Ok(match engine {
        BlobEngine::Filesystem => {
            std::sync::Arc::new(fs::FsBlobStore::open(data_dir.join("store"))?)
        }
        BlobEngine::S3(options) => std::sync::Arc::new(s3::S3BlobStore::open(options)?),
    })
}

/// Opens the engines of a registry: metadata where `metadata` says, blobs
/// where `blobs` says (files of the embedded engines go in `data_dir`).
pub async fn open(
    data_dir: &std::path::Path,
    metadata: &MetadataEngine,
    blobs: &BlobEngine,
) -> Result<Engines, StorageError> {
    std::fs::create_dir_all(data_dir)?;
    let blobs = open_blobs(data_dir, blobs)?;
    let meta = open_metadata(data_dir, metadata).await?;
    Ok((blobs, meta))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn name_lists() {
        let mut names: NameList = ["a", "bc", "", "déf"].into_iter().collect();
        assert_eq!(names.len(), 4);
        assert_eq!(names.get(1), Some("bc"));
        assert_eq!(names.get(2), Some(""));
        assert_eq!(names.last(), Some("déf"));
        assert_eq!(names.get(4), None);
        assert_eq!(names.text(), "abcdéf");
        assert_eq!(format!("{names:?}"), r#"["a", "bc", "", "déf"]"#);
        names.truncate(9);
        assert_eq!(names.len(), 4);
        names.truncate(2);
        assert_eq!(names.to_vec(), ["a", "bc"]);
        assert_eq!(names.text(), "abc");
        names.truncate(0);
        assert!(names.is_empty());
        assert_eq!(names.last(), None);

        let built = NameList::from_parts("abcdéf".into(), vec![1, 3, 3, 7]).unwrap();
        assert_eq!(built.to_vec(), ["a", "bc", "", "déf"]);
        // Not UTF-8, cut inside a character, or out of order: refused.
        assert!(NameList::from_parts(vec![0xff], vec![1]).is_none());
        assert!(NameList::from_parts("é".into(), vec![1, 2]).is_none());
        assert!(NameList::from_parts("ab".into(), vec![2, 1]).is_none());
        assert!(NameList::from_parts("ab".into(), vec![3]).is_none());
        assert!(NameList::from_parts("ab".into(), vec![1]).is_none());
        assert!(
            NameList::from_parts(Vec::new(), Vec::new())
                .unwrap()
                .is_empty()
        );
    }
}
