//! The filesystem blob store of the embedded default.
//!
//! Layout under the root directory:
//!
//! ```text
//! blobs/<algorithm>/<first two hex digits>/<hex>   committed, verified blobs
//! uploads/<upload id>                              staged upload data
//! ```
//!
//! Uploads and blobs live on one filesystem so that committing is a single
//! `rename(2)`: a blob path either does not exist or holds the whole,
//! verified, fsynced content.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::{BlobStore, ByteStream, StorageError, UploadWrite, WriteInterruption};
use crate::digest::{Algorithm, Digest, Hasher};

/// Read size when streaming a blob out; large enough that per-call overhead
/// of the blocking pool does not show, small enough to keep memory flat.
const READ_CHUNK: usize = 512 * 1024;
/// Write buffer of the upload writer thread.
const WRITE_BUFFER: usize = 1024 * 1024;
/// Body chunks queued between the network task and the writer thread.
const WRITE_QUEUE: usize = 32;
/// Writeback of staged data is started every this many bytes, so that the
/// final fsync waits for the tail only instead of the whole blob.
const WRITEBACK_STEP: u64 = 8 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    /// Opens (creating if needed) a blob store under `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StorageError> {
        let root = root.into();
        fs::create_dir_all(root.join("blobs"))?;
        fs::create_dir_all(root.join("uploads"))?;
        Ok(FsBlobStore { root })
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join("blobs")
            .join(digest.algorithm().name())
            .join(&hex[..2])
            .join(hex)
    }

    fn upload_path(&self, id: &str) -> Result<PathBuf, StorageError> {
        // Ids come from the service (UUIDs); refuse anything that could leave
        // the uploads directory should a caller ever pass client input.
        if id.is_empty()
            || id.len() > 64
            || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(StorageError::Corrupt(format!("invalid upload id {id:?}")));
        }
        Ok(self.root.join("uploads").join(id))
    }
}

/// Modification time of a listed entry; `None` if it vanished since the
/// listing (uploads commit and blobs get collected concurrently).
fn modified(entry: &fs::DirEntry) -> io::Result<Option<SystemTime>> {
    match entry.metadata().and_then(|m| m.modified()) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Starts writing the staged file back to disk on a short-lived thread, so
/// that disk writes overlap with receiving the rest of the upload and the
/// commit's fsync waits for the tail only. Nobody waits for this thread: it
/// is a head start, not a durability step. (`sync_file_range` would do
/// this without a thread, but only through `unsafe` libc calls, which the
/// workspace forbids.)
fn start_writeback(file: &File, in_flight: &std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::Ordering;
    // One writeback at a time per upload; later kicks are covered by the
    // next one or by the commit's fsync.
    if in_flight.swap(true, Ordering::AcqRel) {
        return;
    }
    let Ok(file) = file.try_clone() else {
        in_flight.store(false, Ordering::Release);
        return;
    };
    let flag = in_flight.clone();
    let spawned = std::thread::Builder::new()
        .name("berth-writeback".into())
        .spawn(move || {
            // Errors surface in the commit's own fsync.
            let _ = file.sync_data();
            flag.store(false, Ordering::Release);
        });
    if spawned.is_err() {
        in_flight.store(false, Ordering::Release);
    }
}

/// Runs on the blocking pool: positions the staged file at `offset`, then
/// hashes and writes every chunk received until the channel closes.
fn write_chunks(
    path: &Path,
    offset: u64,
    mut hasher: Hasher,
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> Result<(u64, Hasher), StorageError> {
    let mut file = OpenOptions::new()
        .create(offset == 0)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)?;
    let len = file.metadata()?.len();
    if len < offset {
        return Err(StorageError::Corrupt(format!(
            "staged upload {} holds {len} bytes but {offset} were acknowledged",
            path.display()
        )));
    }
    if len > offset {
        // Bytes written by a request that never got acknowledged.
        file.set_len(offset)?;
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut written = 0u64;
    let mut kicked = 0u64;
    let writeback = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    while let Some(chunk) = rx.blocking_recv() {
        hasher.update(&chunk);
        out.write_all(&chunk)?;
        written += chunk.len() as u64;
        if written - kicked >= WRITEBACK_STEP {
            out.flush()?;
            start_writeback(out.get_ref(), &writeback);
            kicked = written;
        }
    }
    // In the page cache now: safe against a crash of the process. Staged
    // bytes are made durable by the commit's fsync, before anything becomes
    // visible; if power fails first, the session finds fewer bytes than it
    // acknowledged, and the next write or the commit reports it as corrupt
    // (the client restarts the upload) rather than storing a bad blob.
    out.flush()?;
    Ok((written, hasher))
}

#[async_trait]
impl BlobStore for FsBlobStore {
    async fn size(&self, digest: &Digest) -> Result<Option<u64>, StorageError> {
        match tokio::fs::metadata(self.blob_path(digest)).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn read(
        &self,
        digest: &Digest,
        start: u64,
        end: u64,
    ) -> Result<ByteStream, StorageError> {
        let mut file = tokio::fs::File::open(self.blob_path(digest)).await?;
        if start > 0 {
            file.seek(SeekFrom::Start(start)).await?;
        }
        let limited = file.take(end.saturating_sub(start));
        Ok(ReaderStream::with_capacity(limited, READ_CHUNK).boxed())
    }

    async fn delete(&self, digest: &Digest) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.blob_path(digest)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn upload_write(
        &self,
        id: &str,
        offset: u64,
        mut body: ByteStream,
        hasher: Hasher,
        max_total: u64,
    ) -> Result<UploadWrite, StorageError> {
        let path = self.upload_path(id)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(WRITE_QUEUE);
        // Hashing and writing run on their own thread so that the network
        // side keeps reading while the previous chunk is hashed and written.
        let writer = tokio::task::spawn_blocking(move || write_chunks(&path, offset, hasher, rx));
        let mut interrupted = None;
        let mut total = offset;
        while let Some(item) = body.next().await {
            match item {
                Ok(chunk) => {
                    if total + chunk.len() as u64 > max_total {
                        interrupted = Some(WriteInterruption::TooLarge);
                        break;
                    }
                    total += chunk.len() as u64;
                    if tx.send(chunk).await.is_err() {
                        // The writer failed; its error is reported below.
                        break;
                    }
                }
                Err(e) => {
                    interrupted = Some(WriteInterruption::Body(e));
                    break;
                }
            }
        }
        drop(tx);
        let (written, hasher) = writer
            .await
            .map_err(|e| StorageError::Io(io::Error::other(e)))??;
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
        let path = self.upload_path(id)?;
        tokio::task::spawn_blocking(move || -> Result<Digest, StorageError> {
            let mut hasher = Hasher::new(algorithm);
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound && len == 0 => {
                    return Ok(hasher.finish());
                }
                Err(e) => return Err(e.into()),
            };
            let mut reader = io::Read::take(file, len);
            let mut buf = vec![0u8; READ_CHUNK];
            let mut seen = 0u64;
            loop {
                let n = io::Read::read(&mut reader, &mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                seen += n as u64;
            }
            if seen != len {
                return Err(StorageError::Corrupt(format!(
                    "staged upload {id_path} is short",
                    id_path = path.display()
                )));
            }
            Ok(hasher.finish())
        })
        .await
        .map_err(|e| StorageError::Io(io::Error::other(e)))?
    }

    async fn upload_commit(&self, id: &str, len: u64, digest: &Digest) -> Result<(), StorageError> {
        let staged = self.upload_path(id)?;
        let target = self.blob_path(digest);
        let id_owned = id.to_owned();
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            let file = match OpenOptions::new().write(true).open(&staged) {
                Ok(f) => f,
                // A zero-length upload may never have created its file.
                Err(e) if e.kind() == io::ErrorKind::NotFound && len == 0 => File::create(&staged)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StorageError::Corrupt(format!(
                        "the staged data of upload {id_owned} is gone"
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            let on_disk = file.metadata()?.len();
            if on_disk < len {
                // Acknowledged bytes lost (power failure before the data
                // reached the disk): never pad, never publish.
                return Err(StorageError::Corrupt(format!(
                    "upload {id_owned} holds {on_disk} bytes, {len} were acknowledged"
                )));
            }
            if on_disk > len {
                // Bytes of a request that was never acknowledged.
                file.set_len(len)?;
            }
            file.sync_all()?;
            drop(file);
            let parent = target
                .parent()
                .ok_or_else(|| StorageError::Corrupt("blob path has no parent".into()))?;
            fs::create_dir_all(parent)?;
            fs::rename(&staged, &target)?;
            // The rename is durable only once the directory entry is.
            sync_dir(parent)?;
            Ok(())
        })
        .await
        .map_err(|e| StorageError::Io(io::Error::other(e)))?
    }

    async fn upload_discard(&self, id: &str) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.upload_path(id)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn list_blobs(&self) -> Result<Vec<(Digest, SystemTime)>, StorageError> {
        let root = self.root.join("blobs");
        tokio::task::spawn_blocking(move || -> Result<_, StorageError> {
            let mut out = Vec::new();
            for algo in [Algorithm::Sha256, Algorithm::Sha512] {
                let dir = root.join(algo.name());
                let Ok(prefixes) = fs::read_dir(&dir) else {
                    continue;
                };
                for prefix in prefixes {
                    let prefix = prefix?;
                    for entry in fs::read_dir(prefix.path())? {
                        let entry = entry?;
                        let name = entry.file_name();
                        let Some(name) = name.to_str() else { continue };
                        // Anything that is not a well-formed blob name is not ours.
                        let Ok(digest) = Digest::parse(&format!("{}:{name}", algo.name())) else {
                            continue;
                        };
                        if let Some(mtime) = modified(&entry)? {
                            out.push((digest, mtime));
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| StorageError::Io(io::Error::other(e)))?
    }

    async fn list_uploads(&self) -> Result<Vec<(String, SystemTime)>, StorageError> {
        let dir = self.root.join("uploads");
        tokio::task::spawn_blocking(move || -> Result<_, StorageError> {
            let mut out = Vec::new();
            for entry in fs::read_dir(dir)? {
                let entry = entry?;
                if let (Some(name), Some(mtime)) = (entry.file_name().to_str(), modified(&entry)?) {
                    out.push((name.to_owned(), mtime));
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| StorageError::Io(io::Error::other(e)))?
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures::stream;

    fn body(parts: Vec<&'static [u8]>) -> ByteStream {
        stream::iter(parts.into_iter().map(|p| Ok(Bytes::from_static(p)))).boxed()
    }

    async fn read_all(s: &FsBlobStore, d: &Digest, a: u64, b: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut st = s.read(d, a, b).await.unwrap();
        while let Some(c) = st.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn staged_write_resume_and_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).unwrap();
        let h = Hasher::new(Algorithm::Sha256);
        let w = store
            .upload_write("u1", 0, body(vec![b"hello ", b"wor"]), h, u64::MAX)
            .await
            .unwrap();
        assert_eq!(w.written, 9);
        // Simulate a write that was never acknowledged: extra bytes on disk.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("uploads/u1"))
            .unwrap()
            .write_all(b"GARBAGE")
            .unwrap();
        let w = store
            .upload_write("u1", 9, body(vec![b"ld"]), w.hasher, u64::MAX)
            .await
            .unwrap();
        let digest = w.hasher.finish();
        assert_eq!(digest, Digest::sha256_of(b"hello world"));
        assert_eq!(store.size(&digest).await.unwrap(), None);
        store.upload_commit("u1", 11, &digest).await.unwrap();
        assert_eq!(store.size(&digest).await.unwrap(), Some(11));
        assert_eq!(read_all(&store, &digest, 0, 11).await, b"hello world");
        assert_eq!(read_all(&store, &digest, 6, 9).await, b"wor");
        assert!(store.list_uploads().await.unwrap().is_empty());
        assert_eq!(store.list_blobs().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn size_limit_and_bad_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).unwrap();
        let h = Hasher::new(Algorithm::Sha256);
        let w = store
            .upload_write("u2", 0, body(vec![b"1234", b"5678"]), h, 6)
            .await
            .unwrap();
        assert_eq!(w.written, 4);
        assert!(matches!(w.interrupted, Some(WriteInterruption::TooLarge)));
        let h = Hasher::new(Algorithm::Sha256);
        assert!(
            store
                .upload_write("../x", 0, body(vec![]), h, 10)
                .await
                .is_err()
        );
        // Offset past what is on disk means the staged data was lost.
        let h = Hasher::new(Algorithm::Sha256);
        assert!(
            store
                .upload_write("u3", 5, body(vec![b"x"]), h, 10)
                .await
                .is_err()
        );
    }
}
