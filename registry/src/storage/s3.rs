//! The S3 blob store of the scale-out set-up: blobs in an S3-compatible
//! bucket (AWS S3, Garage, MinIO) that every replica shares.
//!
//! Layout under an optional key prefix:
//!
//! ```text
//! blobs/<algorithm>/<hex>            committed, verified blobs
//! uploads/<id>/progress              the upload's progress record
//! uploads/<id>/tail-<unique>         staged bytes not yet in a part
//! uploads/<id>/mpu-<unique>          the id of a multipart upload begun for it
//! uploads/<id>/data                  the assembled upload (completed multipart)
//! ```
//!
//! **One registry upload session is one S3 multipart upload.** Consecutive
//! `PATCH`es of a session may land on different replicas, so nothing of an
//! upload lives in a replica's memory between requests: the parts, the
//! tail and the progress record are in the bucket (and the session's row in
//! the shared metadata database). A write starts from the progress record
//! it reads from S3, never from memory, since another replica may have
//! written the previous chunk.
//!
//! Parts must be at least 5 MiB but the last, and a chunk may be any size;
//! so a write cuts its bytes (after the previous tail) into parts of
//! `part_size` and keeps the remainder as a *tail* object, which the next
//! write downloads and puts in front of its own bytes. A tail is named
//! after the write that made it and never overwritten: a record always
//! names bytes that nobody else can change. The multipart upload itself is
//! created lazily, when a first full part is ready, so a blob smaller than a
//! part (most config blobs and many layers) costs a PUT of its tail and a
//! COPY, never a multipart upload.
//!
//! **The progress record** (`upload_save_progress`) holds the acknowledged
//! size, the hasher's state, the multipart upload id, every part's ETag and
//! length, the tail's key and length, and a checksum: a damaged record
//! reads as [`UploadProgress::Lost`]. The service saves progress with only
//! (size, hasher), so `upload_write` leaves what it wrote in memory for the
//! `upload_save_progress` that follows it on the same replica; bytes a
//! write stored past what is later acknowledged are simply not named by any
//! record.
//!
//! **No cross-replica locks, and still no unverified bytes.** The service
//! serialises a session's requests within a replica only. Two replicas
//! writing the same session at once (a misbehaving client) may both upload
//! part N; S3 keeps the last one. Completion passes the ETags of the record
//! that hashed the digest to CompleteMultipartUpload, which fails when S3
//! holds another part under that number: the commit reports
//! [`StorageError::Corrupt`] (the client is told to start over) instead of
//! assembling bytes that were not hashed. `upload_commit` also checks that
//! the state it assembles is one whose hasher produced the digest.
//!
//! **Commit** completes the multipart upload into `uploads/<id>/data` (the
//! tail as the last part; or, when everything is in the tail, uses the tail
//! object), then copies it server-side to the blob key and checks the copy's
//! size. S3 PUT, COPY and CompleteMultipartUpload are atomic: a blob key
//! only ever appears whole, after the service verified the digest.
//! CopyObject takes at most 5 GiB on AWS; larger blobs are copied through
//! the server into a multipart upload at the blob key instead (atomic too).

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::{BlobStore, ByteStream, StorageError, UploadProgress, UploadWrite, WriteInterruption};
use crate::digest::{Algorithm, Digest, Hasher};

/// Smallest part S3 accepts (all but the last part of a multipart upload).
pub const MIN_PART_SIZE: usize = 5 << 20;
/// Largest part S3 accepts.
pub const MAX_PART_SIZE: usize = 5 << 30;
/// Most parts in one multipart upload.
pub const MAX_PARTS: usize = 10_000;
/// Default part size: 16 MiB parts take blobs up to 160 GiB.
pub const DEFAULT_PART_SIZE: usize = 16 << 20;
/// Largest object a single CopyObject may copy on AWS.
const COPY_LIMIT: u64 = 5 << 30;

/// First line of a progress record (format version 1).
const PROGRESS_MAGIC: &str = "berth s3 upload progress 1\n";

/// How to reach the bucket.
#[derive(Clone)]
pub struct S3Options {
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing `/`); empty for none.
    pub prefix: String,
    /// `http(s)://host:port` of an S3-compatible server (Garage, MinIO);
    /// `None` is AWS.
    pub endpoint: Option<String>,
    pub region: String,
    /// `None`: the usual AWS sources (environment, instance metadata).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Allow a plain-HTTP endpoint.
    pub allow_http: bool,
    /// Size of multipart upload parts, at least [`MIN_PART_SIZE`].
    pub part_size: usize,
}

impl std::fmt::Debug for S3Options {
    // The secret stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "…"),
            )
            .field("allow_http", &self.allow_http)
            .field("part_size", &self.part_size)
            .finish()
    }
}

impl S3Options {
    /// Options for `s3://bucket[/prefix]`, with the defaults for the rest.
    pub fn from_url(url: &str) -> Result<S3Options, StorageError> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            StorageError::Config(format!("blob URL {url:?} does not start with s3://"))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        // Bucket names: 3-63 of lowercase letters, digits, dots and hyphens.
        if bucket.len() < 3
            || bucket.len() > 63
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        {
            return Err(StorageError::Config(format!(
                "{bucket:?} is not an S3 bucket name (3-63 lowercase letters, digits, dots, hyphens)"
            )));
        }
        if !prefix.is_empty() && Path::parse(prefix).is_err() {
            return Err(StorageError::Config(format!(
                "{prefix:?} is not a usable key prefix"
            )));
        }
        Ok(S3Options {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            endpoint: None,
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
            allow_http: false,
            part_size: DEFAULT_PART_SIZE,
        })
    }

    /// Checks what can be checked without the network.
    pub fn validate(&self) -> Result<(), String> {
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            return Err(format!(
                "part size {} is outside S3's {MIN_PART_SIZE}..={MAX_PART_SIZE} bytes",
                self.part_size
            ));
        }
        if let Some(e) = &self.endpoint
            && !(e.starts_with("https://") || e.starts_with("http://"))
        {
            return Err(format!(
                "endpoint {e:?} must start with https:// or http://"
            ));
        }
        if let Some(e) = &self.endpoint
            && e.starts_with("http://")
            && !self.allow_http
        {
            return Err(format!(
                "endpoint {e:?} is plain HTTP: use https:// or allow plain HTTP explicitly"
            ));
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            return Err("an access key id and a secret access key go together".into());
        }
        Ok(())
    }

    /// Largest blob the part size allows (S3's 10,000 parts).
    pub fn max_blob_size(&self) -> u64 {
        self.part_size as u64 * MAX_PARTS as u64
    }
}

/// One part of a multipart upload, as a record names it. Its number is its
/// position in the record's list, plus one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Part {
    etag: String,
    len: u64,
}

/// Staged bytes not yet in a part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Tail {
    /// Key relative to the upload's directory (`tail-<unique>`).
    name: String,
    len: u64,
}

/// Where an upload's bytes are: what a progress record holds besides the
/// hasher.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Staged {
    size: u64,
    /// The multipart upload of `uploads/<id>/data`, once one was needed.
    multipart: Option<String>,
    parts: Vec<Part>,
    tail: Option<Tail>,
    /// The multipart upload was completed: `uploads/<id>/data` holds the
    /// `size` bytes (set by `upload_digest` and the commit, so that a retry
    /// does not complete it twice).
    assembled: bool,
    /// Digests under another algorithm than the hasher's, computed by
    /// `upload_digest` from the assembled bytes.
    verified: Vec<String>,
}

impl Staged {
    fn check_sizes(&self) -> Result<(), StorageError> {
        let parts: u64 = self.parts.iter().map(|p| p.len).sum();
        let tail = self.tail.as_ref().map_or(0, |t| t.len);
        if parts + tail != self.size && !self.assembled {
            return Err(StorageError::Corrupt(format!(
                "progress names {parts} + {tail} bytes for a size of {}",
                self.size
            )));
        }
        Ok(())
    }
}

/// The serialised body of a progress record.
#[derive(Debug, Serialize, Deserialize)]
struct RecordBody {
    id: String,
    /// [`Hasher::save`], hex.
    hasher: String,
    staged: Staged,
}

/// What the last `upload_write` of an upload on this replica left for the
/// `upload_save_progress` (or, for a monolithic upload, the commit) that
/// follows it.
#[derive(Debug)]
struct Pending {
    staged: Staged,
    hasher: Hasher,
    /// The tail the write replaced: deleted once the new record is saved.
    replaced_tail: Option<String>,
}

#[derive(Debug, Clone)]
pub struct S3BlobStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    s3: AmazonS3,
    prefix: String,
    part_size: usize,
    /// Uploads above this size are copied through the server at commit.
    copy_limit: u64,
    pending: Mutex<HashMap<String, Pending>>,
}

fn other(what: impl std::fmt::Display, e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { .. } => StorageError::Io(io::Error::new(
            io::ErrorKind::NotFound,
            format!("S3 {what}: not found"),
        )),
        e => StorageError::Io(io::Error::other(format!("S3 {what}: {e}"))),
    }
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

fn join_error(e: tokio::task::JoinError) -> StorageError {
    StorageError::Io(io::Error::other(e))
}

/// Upload ids come from the service (UUIDs); refuse anything that could
/// name keys outside the upload's directory.
fn check_id(id: &str) -> Result<(), StorageError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(StorageError::Corrupt(format!("invalid upload id {id:?}")));
    }
    Ok(())
}

fn encode_record(id: &str, staged: &Staged, hasher: &Hasher) -> Result<Bytes, StorageError> {
    let body = RecordBody {
        id: id.to_owned(),
        hasher: hex::encode(hasher.save()),
        staged: staged.clone(),
    };
    let json = serde_json::to_string(&body)
        .map_err(|e| StorageError::Corrupt(format!("encoding progress: {e}")))?;
    let mut out = String::with_capacity(PROGRESS_MAGIC.len() + json.len() + 66);
    out.push_str(PROGRESS_MAGIC);
    out.push_str(&json);
    out.push('\n');
    let check = hex::encode(sha2::Sha256::digest(out.as_bytes()));
    out.push_str(&check);
    Ok(Bytes::from(out))
}

/// `None` if the record is damaged or not upload `id`'s.
fn decode_record(bytes: &[u8], id: &str) -> Option<(Staged, Hasher)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let cut = text.rfind('\n')? + 1;
    let (signed, check) = text.split_at(cut);
    if hex::encode(sha2::Sha256::digest(signed.as_bytes())) != check {
        return None;
    }
    let json = signed.strip_prefix(PROGRESS_MAGIC)?;
    let body: RecordBody = serde_json::from_str(json.trim_end()).ok()?;
    if body.id != id {
        return None;
    }
    let hasher = Hasher::restore(&hex::decode(&body.hasher).ok()?).ok()?;
    body.staged.check_sizes().ok()?;
    Some((body.staged, hasher))
}

/// A progress record as read from the bucket.
// Read once per request and never stored: boxing would only allocate.
#[allow(clippy::large_enum_variant)]
enum Loaded {
    Current(Staged, Hasher),
    Damaged,
    Missing,
}

impl S3BlobStore {
    /// A store on the bucket `options` name. Makes no request: a wrong
    /// endpoint or key shows at the first use.
    pub fn open(options: &S3Options) -> Result<Self, StorageError> {
        options.validate().map_err(StorageError::Config)?;
        // reqwest's rustls is built without a bundled provider: the
        // process's default is ring, as for the rest of Berth (a no-op when
        // the server installed it already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&options.bucket)
            .with_region(&options.region)
            .with_allow_http(options.allow_http);
        if let Some(e) = &options.endpoint {
            // S3-compatible servers are addressed path-style
            // (`endpoint/bucket/key`), which is object_store's default.
            b = b.with_endpoint(e);
        }
        if let (Some(id), Some(secret)) = (&options.access_key_id, &options.secret_access_key) {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
        }
        let s3 = b
            .build()
            .map_err(|e| StorageError::Config(format!("S3 configuration: {e}")))?;
        Ok(S3BlobStore {
            inner: Arc::new(Inner {
                s3,
                prefix: options.prefix.clone(),
                part_size: options.part_size,
                copy_limit: COPY_LIMIT,
                pending: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Lowers the size above which a commit copies through the server
    /// instead of with CopyObject (tests of that path).
    #[doc(hidden)]
    pub fn with_copy_limit(mut self, limit: u64) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.copy_limit = limit;
        }
        self
    }

    fn key(&self, rest: &str) -> Path {
        if self.inner.prefix.is_empty() {
            Path::from(rest)
        } else {
            Path::from(format!("{}/{rest}", self.inner.prefix))
        }
    }

    fn blob_key(&self, digest: &Digest) -> Path {
        self.key(&format!(
            "blobs/{}/{}",
            digest.algorithm().name(),
            digest.hex()
        ))
    }

    fn upload_key(&self, id: &str, name: &str) -> Path {
        self.key(&format!("uploads/{id}/{name}"))
    }

    /// The key relative to the prefix (what listings are parsed from).
    fn relative<'a>(&self, key: &'a Path) -> Option<&'a str> {
        let key = key.as_ref();
        if self.inner.prefix.is_empty() {
            Some(key)
        } else {
            key.strip_prefix(self.inner.prefix.as_str())?
                .strip_prefix('/')
        }
    }

    async fn load(&self, id: &str) -> Result<Loaded, StorageError> {
        let key = self.upload_key(id, "progress");
        let bytes = match self.inner.s3.get(&key).await {
            Ok(r) => r.bytes().await.map_err(|e| other(&key, e))?,
            Err(e) if is_not_found(&e) => return Ok(Loaded::Missing),
            Err(e) => return Err(other(&key, e)),
        };
        Ok(match decode_record(&bytes, id) {
            Some((staged, hasher)) => Loaded::Current(staged, hasher),
            None => Loaded::Damaged,
        })
    }

    async fn save(&self, id: &str, staged: &Staged, hasher: &Hasher) -> Result<(), StorageError> {
        let key = self.upload_key(id, "progress");
        let record = encode_record(id, staged, hasher)?;
        self.inner
            .s3
            .put(&key, PutPayload::from_bytes(record))
            .await
            .map_err(|e| other(&key, e))?;
        Ok(())
    }

    async fn get_all(&self, key: &Path) -> Result<Bytes, StorageError> {
        let r = self.inner.s3.get(key).await.map_err(|e| other(key, e))?;
        r.bytes().await.map_err(|e| other(key, e))
    }

    async fn read_tail(&self, id: &str, tail: &Tail) -> Result<Bytes, StorageError> {
        let key = self.upload_key(id, &tail.name);
        let bytes = match self.get_all(&key).await {
            Ok(b) => b,
            Err(StorageError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StorageError::Corrupt(format!(
                    "the staged tail of upload {id} is gone"
                )));
            }
            Err(e) => return Err(e),
        };
        if bytes.len() as u64 != tail.len {
            return Err(StorageError::Corrupt(format!(
                "the staged tail of upload {id} holds {} bytes, {} were recorded",
                bytes.len(),
                tail.len
            )));
        }
        Ok(bytes)
    }

    /// Starts the upload's multipart upload, leaving a marker object that
    /// names it: an upload that never saved a record (a monolithic PUT
    /// whose process died) is still listed, and discarding it aborts it.
    async fn create_multipart(&self, id: &str) -> Result<String, StorageError> {
        let data = self.upload_key(id, "data");
        let mpu = self
            .inner
            .s3
            .create_multipart(&data)
            .await
            .map_err(|e| other(format_args!("create multipart {data}"), e))?;
        let marker = self.upload_key(id, &format!("mpu-{}", uuid::Uuid::new_v4()));
        self.inner
            .s3
            .put(&marker, PutPayload::from(mpu.clone()))
            .await
            .map_err(|e| other(&marker, e))?;
        Ok(mpu)
    }

    /// Completes the multipart upload of `staged` (its tail as the last
    /// part) and returns the key holding all of its bytes, `None` for an
    /// empty upload. Saves the record as assembled, so that a retried
    /// commit does not complete twice.
    async fn assemble(
        &self,
        id: &str,
        staged: &mut Staged,
        hasher: &Hasher,
    ) -> Result<Option<Path>, StorageError> {
        let data = self.upload_key(id, "data");
        if staged.assembled {
            return Ok(Some(data));
        }
        let Some(mpu) = staged.multipart.clone() else {
            return Ok(staged.tail.as_ref().map(|t| self.upload_key(id, &t.name)));
        };
        let mut parts: Vec<PartId> = staged
            .parts
            .iter()
            .map(|p| PartId {
                content_id: p.etag.clone(),
            })
            .collect();
        if let Some(tail) = &staged.tail {
            let bytes = self.read_tail(id, tail).await?;
            let part = self
                .inner
                .s3
                .put_part(&data, &mpu, parts.len(), PutPayload::from_bytes(bytes))
                .await
                .map_err(|e| other(format_args!("put last part of {data}"), e))?;
            parts.push(part);
        }
        if let Err(e) = self.inner.s3.complete_multipart(&data, &mpu, parts).await {
            // The ETags are those of the parts this record hashed: S3 holding
            // other bytes under one of the numbers (a concurrent writer on
            // another replica) or no longer knowing the upload fails here,
            // and nothing unverified is assembled.
            return Err(StorageError::Corrupt(format!(
                "completing the multipart upload of {id} failed (a part was replaced by a concurrent write, or the upload is gone): {e}"
            )));
        }
        staged.assembled = true;
        self.save(id, staged, hasher).await?;
        Ok(Some(data))
    }

    /// The state to commit or digest upload `id` from: its record, or what
    /// a write of this replica left unsaved (a monolithic upload saves no
    /// record), whichever is `len` bytes long and `accept`ed.
    async fn state_for(
        &self,
        id: &str,
        len: u64,
        accept: impl Fn(&Staged, &Hasher) -> bool,
    ) -> Result<(Staged, Hasher), StorageError> {
        let pending = self.inner.pending.lock().remove(id);
        if let Loaded::Current(staged, hasher) = self.load(id).await?
            && staged.size == len
            && accept(&staged, &hasher)
        {
            return Ok((staged, hasher));
        }
        if let Some(p) = pending
            && p.staged.size == len
            && accept(&p.staged, &p.hasher)
        {
            return Ok((p.staged, p.hasher));
        }
        Err(StorageError::Corrupt(format!(
            "upload {id}: no staged state of {len} bytes matches (staged data gone, or replaced by a concurrent write)"
        )))
    }

    /// Copies `from` to the blob key: CopyObject, or, above what one copy
    /// may take, through the server into a multipart upload at the blob
    /// key (CompleteMultipartUpload is atomic too).
    async fn copy_to_blob(&self, from: &Path, to: &Path, len: u64) -> Result<(), StorageError> {
        if len <= self.inner.copy_limit {
            return self
                .inner
                .s3
                .copy(from, to)
                .await
                .map_err(|e| other(format_args!("copy {from} to {to}"), e));
        }
        let s3 = &self.inner.s3;
        let mpu = s3
            .create_multipart(to)
            .await
            .map_err(|e| other(format_args!("create multipart {to}"), e))?;
        let result = async {
            let mut body = s3
                .get(from)
                .await
                .map_err(|e| other(from, e))?
                .into_stream();
            let mut buf = BytesMut::new();
            let mut parts = Vec::new();
            loop {
                let chunk = body.try_next().await.map_err(|e| other(from, e))?;
                let last = chunk.is_none();
                if let Some(c) = chunk {
                    buf.extend_from_slice(&c);
                }
                while buf.len() >= self.inner.part_size || (last && !buf.is_empty()) {
                    let n = buf.len().min(self.inner.part_size);
                    let part = buf.split_to(n).freeze();
                    parts.push(
                        s3.put_part(to, &mpu, parts.len(), PutPayload::from_bytes(part))
                            .await
                            .map_err(|e| other(format_args!("copy part to {to}"), e))?,
                    );
                }
                if last {
                    break;
                }
            }
            s3.complete_multipart(to, &mpu, parts)
                .await
                .map_err(|e| other(format_args!("complete copy to {to}"), e))?;
            Ok::<_, StorageError>(())
        }
        .await;
        if result.is_err() {
            let _ = s3.abort_multipart(to, &mpu).await;
        }
        result
    }
}

/// A part upload running while the next part's bytes arrive.
type PartTask = tokio::task::JoinHandle<Result<(PartId, u64), StorageError>>;

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn size(&self, digest: &Digest) -> Result<Option<u64>, StorageError> {
        let key = self.blob_key(digest);
        match self.inner.s3.head(&key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(other(&key, e)),
        }
    }

    async fn read(
        &self,
        digest: &Digest,
        start: u64,
        end: u64,
    ) -> Result<ByteStream, StorageError> {
        if start >= end {
            // S3 refuses empty ranges; there is nothing to fetch.
            return Ok(futures::stream::empty().boxed());
        }
        let key = self.blob_key(digest);
        let options = GetOptions {
            range: Some(GetRange::Bounded(start..end)),
            ..GetOptions::default()
        };
        let got = self
            .inner
            .s3
            .get_opts(&key, options)
            .await
            .map_err(|e| other(&key, e))?;
        // Streamed as S3 sends it: never the whole blob in memory.
        Ok(got
            .into_stream()
            .map_err(move |e| io::Error::other(format!("S3 read: {e}")))
            .boxed())
    }

    async fn delete(&self, digest: &Digest) -> Result<(), StorageError> {
        let key = self.blob_key(digest);
        match self.inner.s3.delete(&key).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(other(&key, e)),
        }
    }

    async fn upload_write(
        &self,
        id: &str,
        offset: u64,
        mut body: ByteStream,
        mut hasher: Hasher,
        max_total: u64,
    ) -> Result<UploadWrite, StorageError> {
        check_id(id)?;
        // Where the upload stands, from the bucket: the previous chunk may
        // have been written by another replica.
        let pending = self.inner.pending.lock().remove(id);
        let mut staged = match self.load(id).await? {
            Loaded::Current(s, _) if s.size == offset && !s.assembled => s,
            // No record, but this replica wrote the bytes before (a write
            // not followed by a save: the session of a monolithic upload).
            Loaded::Missing if pending.as_ref().is_some_and(|p| p.staged.size == offset) => {
                pending.map(|p| p.staged).unwrap_or_default()
            }
            Loaded::Current(s, _) => {
                return Err(StorageError::Corrupt(format!(
                    "upload {id} stands at {} bytes{}, a write at {offset} was asked",
                    s.size,
                    if s.assembled { " (assembled)" } else { "" }
                )));
            }
            Loaded::Missing if offset == 0 => Staged::default(),
            Loaded::Missing => {
                return Err(StorageError::Corrupt(format!(
                    "the staged data of upload {id} is gone"
                )));
            }
            Loaded::Damaged => {
                return Err(StorageError::Corrupt(format!(
                    "the progress record of upload {id} is damaged"
                )));
            }
        };
        let part_size = self.inner.part_size;
        let mut buf = BytesMut::new();
        let old_tail = staged.tail.take();
        if let Some(tail) = &old_tail {
            // Already hashed: only put in front of the new bytes.
            buf.extend_from_slice(&self.read_tail(id, tail).await?);
        }
        let mut written = 0u64;
        let mut interrupted = None;
        let mut in_flight: Option<PartTask> = None;
        let data = self.upload_key(id, "data");
        loop {
            let chunk = match body.next().await {
                None => break,
                Some(Err(e)) => {
                    interrupted = Some(WriteInterruption::Body(e));
                    break;
                }
                Some(Ok(c)) => c,
            };
            if offset + written + chunk.len() as u64 > max_total {
                interrupted = Some(WriteInterruption::TooLarge);
                break;
            }
            hasher.update(&chunk);
            written += chunk.len() as u64;
            buf.extend_from_slice(&chunk);
            while buf.len() >= part_size {
                let part = buf.split_to(part_size).freeze();
                // One part uploads while the next one's bytes arrive.
                if let Some(task) = in_flight.take() {
                    let (id, len) = task.await.map_err(join_error)??;
                    staged.parts.push(Part {
                        etag: id.content_id,
                        len,
                    });
                }
                if staged.parts.len() >= MAX_PARTS {
                    return Err(StorageError::Corrupt(format!(
                        "upload {id} needs more than {MAX_PARTS} parts of {part_size} bytes"
                    )));
                }
                let mpu = match &staged.multipart {
                    Some(m) => m.clone(),
                    None => {
                        let m = self.create_multipart(id).await?;
                        staged.multipart = Some(m.clone());
                        m
                    }
                };
                let (s3, key, index) = (self.inner.s3.clone(), data.clone(), staged.parts.len());
                in_flight = Some(tokio::spawn(async move {
                    let len = part.len() as u64;
                    let part = s3
                        .put_part(&key, &mpu, index, PutPayload::from_bytes(part))
                        .await
                        .map_err(|e| other(format_args!("put part {} of {key}", index + 1), e))?;
                    Ok((part, len))
                }));
            }
        }
        if let Some(task) = in_flight.take() {
            let (id, len) = task.await.map_err(join_error)??;
            staged.parts.push(Part {
                etag: id.content_id,
                len,
            });
        }
        let mut replaced_tail = None;
        if written == 0 {
            // Nothing new: the old tail stays as it is.
            staged.tail = old_tail;
        } else {
            replaced_tail = old_tail.map(|t| t.name);
            if !buf.is_empty() {
                // A new name for every tail: a record names bytes that no
                // other write can replace.
                let name = format!("tail-{}", uuid::Uuid::new_v4());
                let key = self.upload_key(id, &name);
                let len = buf.len() as u64;
                self.inner
                    .s3
                    .put(&key, PutPayload::from_bytes(buf.freeze()))
                    .await
                    .map_err(|e| other(&key, e))?;
                staged.tail = Some(Tail { name, len });
            }
        }
        staged.size = offset + written;
        staged.check_sizes()?;
        self.inner.pending.lock().insert(
            id.to_owned(),
            Pending {
                staged,
                hasher: hasher.clone(),
                replaced_tail,
            },
        );
        Ok(UploadWrite {
            written,
            hasher,
            interrupted,
        })
    }

    async fn upload_digest(
        &self,
        id: &str,
        len: u64,
        algorithm: Algorithm,
    ) -> Result<Digest, StorageError> {
        check_id(id)?;
        let (mut staged, hasher) = self.state_for(id, len, |_, _| true).await?;
        // Parts of an unfinished multipart upload cannot be read back:
        // assemble first (the client is finishing the upload anyway).
        let source = self.assemble(id, &mut staged, &hasher).await?;
        let mut h = Hasher::new(algorithm);
        let mut seen = 0u64;
        if let Some(key) = source {
            let mut body = self
                .inner
                .s3
                .get(&key)
                .await
                .map_err(|e| other(&key, e))?
                .into_stream();
            while let Some(chunk) = body.try_next().await.map_err(|e| other(&key, e))? {
                h.update(&chunk);
                seen += chunk.len() as u64;
            }
        }
        if seen != len {
            return Err(StorageError::Corrupt(format!(
                "upload {id} holds {seen} bytes, {len} were acknowledged"
            )));
        }
        let digest = h.finish();
        // The commit accepts this digest for these bytes.
        staged.verified.push(digest.as_str().to_owned());
        self.save(id, &staged, &hasher).await?;
        Ok(digest)
    }

    async fn upload_commit(&self, id: &str, len: u64, digest: &Digest) -> Result<(), StorageError> {
        check_id(id)?;
        let (mut staged, hasher) = self
            .state_for(id, len, |staged, hasher| {
                if hasher.algorithm() == digest.algorithm() {
                    &hasher.clone().finish() == digest
                } else {
                    staged.verified.iter().any(|d| d == digest.as_str())
                }
            })
            .await?;
        let target = self.blob_key(digest);
        match self.assemble(id, &mut staged, &hasher).await? {
            Some(source) => self.copy_to_blob(&source, &target, len).await?,
            None => {
                self.inner
                    .s3
                    .put(&target, PutPayload::default())
                    .await
                    .map_err(|e| other(&target, e))?;
            }
        }
        let copied = self
            .inner
            .s3
            .head(&target)
            .await
            .map_err(|e| other(&target, e))?
            .size;
        if copied != len {
            return Err(StorageError::Corrupt(format!(
                "blob {digest} holds {copied} bytes after the copy, {len} were expected"
            )));
        }
        // The staging goes with the service's upload_discard, once the
        // metadata row is written: a retried commit still finds it.
        Ok(())
    }

    async fn upload_save_progress(
        &self,
        id: &str,
        size: u64,
        hasher: &Hasher,
    ) -> Result<(), StorageError> {
        check_id(id)?;
        let pending = self.inner.pending.lock().remove(id);
        let state = hasher.save();
        let (staged, replaced_tail) = match pending {
            Some(p) if p.staged.size == size && p.hasher.save() == state => {
                (p.staged, p.replaced_tail)
            }
            _ => match self.load(id).await? {
                // The same bytes under a hasher given anew.
                Loaded::Current(s, _) if s.size == size => (s, None),
                Loaded::Missing if size == 0 => (Staged::default(), None),
                _ => {
                    return Err(StorageError::Corrupt(format!(
                        "upload {id}: no staged bytes to record {size} bytes of progress for"
                    )));
                }
            },
        };
        self.save(id, &staged, hasher).await?;
        if let Some(name) = replaced_tail {
            let key = self.upload_key(id, &name);
            // Only tidiness: the discard of the upload takes it otherwise.
            if let Err(e) = self.inner.s3.delete(&key).await
                && !is_not_found(&e)
            {
                tracing::debug!(upload = id, error = %e, "could not delete a replaced tail");
            }
        }
        Ok(())
    }

    async fn upload_progress(&self, id: &str) -> Result<UploadProgress, StorageError> {
        check_id(id)?;
        Ok(match self.load(id).await? {
            Loaded::Current(staged, hasher) => UploadProgress::Current {
                size: staged.size,
                hasher,
            },
            Loaded::Damaged => UploadProgress::Lost,
            Loaded::Missing => UploadProgress::Missing,
        })
    }

    async fn upload_discard(&self, id: &str) -> Result<(), StorageError> {
        check_id(id)?;
        self.inner.pending.lock().remove(id);
        let s3 = &self.inner.s3;
        let data = self.upload_key(id, "data");
        let mut multiparts = Vec::new();
        if let Loaded::Current(staged, _) = self.load(id).await?
            && let Some(m) = staged.multipart
            && !staged.assembled
        {
            multiparts.push(m);
        }
        let dir = self.key(&format!("uploads/{id}"));
        let objects: Vec<_> = s3
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| other(format_args!("list {dir}"), e))?;
        for o in &objects {
            if o.location
                .filename()
                .is_some_and(|name| name.starts_with("mpu-"))
            {
                match self.get_all(&o.location).await {
                    Ok(m) => multiparts.push(String::from_utf8_lossy(&m).into_owned()),
                    Err(e) => {
                        tracing::debug!(upload = id, error = %e, "unreadable multipart marker")
                    }
                }
            }
        }
        multiparts.sort();
        multiparts.dedup();
        for m in multiparts {
            // Gone already when the upload was completed or aborted before.
            if let Err(e) = s3.abort_multipart(&data, &m).await
                && !is_not_found(&e)
            {
                tracing::warn!(upload = id, error = %e, "could not abort a multipart upload (a bucket lifecycle rule for incomplete multipart uploads reclaims it)");
            }
        }
        for o in objects {
            match s3.delete(&o.location).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(other(&o.location, e)),
            }
        }
        Ok(())
    }

    async fn list_blobs(&self) -> Result<Vec<(Digest, SystemTime)>, StorageError> {
        let dir = self.key("blobs");
        let mut listing = self.inner.s3.list(Some(&dir));
        let mut out = Vec::new();
        while let Some(meta) = listing
            .try_next()
            .await
            .map_err(|e| other(format_args!("list {dir}"), e))?
        {
            let Some(rest) = self
                .relative(&meta.location)
                .and_then(|k| k.strip_prefix("blobs/"))
            else {
                continue;
            };
            // Anything that is not a well-formed blob key is not ours.
            let Some((algorithm, hex)) = rest.split_once('/') else {
                continue;
            };
            if let Ok(digest) = Digest::parse(&format!("{algorithm}:{hex}")) {
                out.push((digest, SystemTime::from(meta.last_modified)));
            }
        }
        Ok(out)
    }

    async fn list_uploads(&self) -> Result<Vec<(String, SystemTime)>, StorageError> {
        let dir = self.key("uploads");
        let mut listing = self.inner.s3.list(Some(&dir));
        // An upload is every object under its directory; the latest says
        // when it was last written.
        let mut latest: HashMap<String, SystemTime> = HashMap::new();
        while let Some(meta) = listing
            .try_next()
            .await
            .map_err(|e| other(format_args!("list {dir}"), e))?
        {
            let Some(id) = self
                .relative(&meta.location)
                .and_then(|k| k.strip_prefix("uploads/"))
                .and_then(|k| k.split_once('/'))
                .map(|(id, _)| id)
            else {
                continue;
            };
            let t = SystemTime::from(meta.last_modified);
            let e = latest.entry(id.to_owned()).or_insert(t);
            *e = (*e).max(t);
        }
        Ok(latest.into_iter().collect())
    }

    async fn presign_get(
        &self,
        digest: &Digest,
        ttl: Duration,
    ) -> Result<Option<String>, StorageError> {
        let key = self.blob_key(digest);
        let url = self
            .inner
            .s3
            .signed_url(http::Method::GET, &key, ttl)
            .await
            .map_err(|e| other(format_args!("presign {key}"), e))?;
        Ok(Some(url.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_and_options() {
        let o = S3Options::from_url("s3://berth-blobs").unwrap();
        assert_eq!((o.bucket.as_str(), o.prefix.as_str()), ("berth-blobs", ""));
        let o = S3Options::from_url("s3://berth-blobs/prod/eu/").unwrap();
        assert_eq!(o.prefix, "prod/eu");
        assert_eq!(o.part_size, DEFAULT_PART_SIZE);
        o.validate().unwrap();
        assert!(S3Options::from_url("s3://B").is_err());
        assert!(S3Options::from_url("gs://bucket").is_err());
        let mut o = S3Options::from_url("s3://bucket").unwrap();
        o.part_size = 1 << 20;
        assert!(o.validate().is_err());
        o.part_size = MIN_PART_SIZE;
        o.endpoint = Some("http://127.0.0.1:3900".into());
        assert!(o.validate().unwrap_err().contains("plain HTTP"));
        o.allow_http = true;
        o.validate().unwrap();
        o.access_key_id = Some("GK1".into());
        assert!(o.validate().is_err());
        o.secret_access_key = Some("secret".into());
        o.validate().unwrap();
        assert!(!format!("{o:?}").contains("secret\""));
    }

    #[test]
    fn records_round_trip_and_damage_is_detected() {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(b"abc");
        let staged = Staged {
            size: 3,
            multipart: Some("m".into()),
            parts: vec![],
            tail: Some(Tail {
                name: "tail-1".into(),
                len: 3,
            }),
            assembled: false,
            verified: vec![],
        };
        let rec = encode_record("u1", &staged, &h).unwrap();
        let (s, h2) = decode_record(&rec, "u1").unwrap();
        assert_eq!(s, staged);
        assert_eq!(h2.finish(), Digest::sha256_of(b"abc"));
        // Another upload's record, a flipped byte, a cut record: refused.
        assert!(decode_record(&rec, "u2").is_none());
        let mut bad = rec.to_vec();
        bad[PROGRESS_MAGIC.len() + 5] ^= 1;
        assert!(decode_record(&bad, "u1").is_none());
        assert!(decode_record(&rec[..rec.len() - 3], "u1").is_none());
        // Sizes that do not add up.
        let wrong = Staged { size: 4, ..staged };
        let rec = encode_record("u1", &wrong, &h).unwrap();
        assert!(decode_record(&rec, "u1").is_none());
    }
}
