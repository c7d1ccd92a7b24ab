//! The storage layer: the only code that knows how blobs are laid out and
//! what the metadata schema is.
//!
//! Two narrow traits separate the registry service from its engines:
//! [`BlobStore`] holds content-addressed bytes and staged uploads;
//! [`MetadataStore`] holds repositories, tags, manifests, references,
//! upload sessions and links. The embedded default is [`fs::FsBlobStore`]
//! plus [`sqlite::SqliteMetadata`]; scale-out engines implement the same
//! traits.

use std::io;
use std::pin::Pin;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

use crate::digest::{Digest, Hasher};
use crate::manifest::ParsedManifest;
use crate::names::{RepoName, Tag};

pub mod fs;
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
    /// Bytes appended durably and fed to the hasher.
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

    /// Drops a staged upload; absent uploads are not an error.
    async fn upload_discard(&self, id: &str) -> Result<(), StorageError>;

    /// Every committed blob with its modification time (for the GC sweep of
    /// blobs whose metadata row was never written because of a crash).
    async fn list_blobs(&self) -> Result<Vec<(Digest, SystemTime)>, StorageError>;

    /// Every staged upload id with its modification time.
    async fn list_uploads(&self) -> Result<Vec<(String, SystemTime)>, StorageError>;
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
#[derive(Debug, Clone)]
pub struct UploadRecord {
    pub id: String,
    pub repo: RepoName,
    /// Bytes acknowledged to the client so far.
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

    /// Records progress if the upload is still at `expected_size`; `false`
    /// if another request moved it meanwhile.
    async fn advance_upload(
        &self,
        id: &str,
        expected_size: u64,
        new_size: u64,
        hash_state: &[u8],
        now: Millis,
    ) -> Result<bool, StorageError>;

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
    ) -> Result<Option<Vec<String>>, StorageError>;

    /// Repository names after `last` in lexical order, at most `limit`; only
    /// those under `<namespace>/` when a namespace is given.
    async fn list_repositories(
        &self,
        namespace: Option<&str>,
        last: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError>;

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
