//! The filesystem blob store of the embedded default.
//!
//! Layout under the root directory:
//!
//! ```text
//! blobs/<algorithm>/<first two hex digits>/<hex>   committed, verified blobs
//! uploads/<upload id>                              staged upload data
//! uploads/<upload id>.progress                     its offset and hash state
//! ```
//!
//! Uploads and blobs live on one filesystem so that committing is a single
//! `rename(2)`: a blob path either does not exist or holds the whole,
//! verified, fsynced content.
//!
//! Neither staged bytes nor progress records are fsynced as chunks arrive.
//! An fsync per chunk (SQLite's durable commit of the progress, before the
//! progress file existed) waited on ext4 for the journal to write the
//! chunk's data out: ~20 ms of the ~55 ms a 16 MiB `PATCH` took. The page
//! cache holds exactly what was written as long as the machine keeps
//! running, so a record is trusted only if it was written since the last
//! boot (the kernel's boot id is in it): after a process crash an upload
//! resumes where it was acknowledged; after a power loss or a kernel crash
//! the session is lost and the client starts over, and a blob is never made
//! from bytes that did not survive.
//!
//! A progress file is rewritten in place, never replaced by `rename(2)`:
//! replacing it freed the previous file's inode, which waited for that
//! file's page to be written back behind the chunk's data (a `PATCH`
//! stalled 15-40 ms in `rename`). It holds two slots, written in turn, so
//! that a reader never sees only a half-written record.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::{BlobStore, ByteStream, StorageError, UploadProgress, UploadWrite, WriteInterruption};
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

/// Suffix of an upload's progress file beside its staged bytes.
const PROGRESS_SUFFIX: &str = ".progress";
/// First bytes of a progress record (format version 1).
const PROGRESS_MAGIC: &[u8] = b"berth upload progress 1\n";
/// Size of each of the two record slots of a progress file (one page each:
/// a record is written by one `pwrite` within one page). Records are
/// ~300 bytes.
const PROGRESS_SLOT: usize = 4096;
/// Length of a record's checksum (sha256).
const CHECK_LEN: usize = 32;

#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
    /// This boot of the machine, written into progress records. Empty where
    /// the kernel does not say (not Linux): records are then trusted after
    /// any restart, as the staged bytes' length is checked at commit anyway.
    boot_id: Arc<str>,
}

/// The kernel's id of the current boot: page-cache state from before it may
/// be gone.
fn read_boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl FsBlobStore {
    /// Opens (creating if needed) a blob store under `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StorageError> {
        let root = root.into();
        fs::create_dir_all(root.join("blobs"))?;
        fs::create_dir_all(root.join("uploads"))?;
        Ok(FsBlobStore {
            root,
            boot_id: read_boot_id().into(),
        })
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

    /// The progress file of upload `id`.
    fn progress_path(&self, id: &str) -> Result<PathBuf, StorageError> {
        let staged = self.upload_path(id)?;
        Ok(staged.with_file_name(format!("{id}{PROGRESS_SUFFIX}")))
    }
}

/// One upload's progress, as a slot of its progress file holds it.
#[derive(Debug)]
struct ProgressRecord {
    /// Which write of the file this was (the newer slot wins).
    seq: u64,
    boot_id: Vec<u8>,
    size: u64,
    hasher: Hasher,
}

/// A record: magic, body length, body (sequence number, size, then boot
/// id, upload id and hash state, each length-prefixed), and the sha256 of
/// all that: a torn or stale slot does not parse.
fn encode_progress(seq: u64, boot_id: &str, id: &str, size: u64, hasher: &Hasher) -> Vec<u8> {
    let state = hasher.save();
    let mut body = Vec::with_capacity(28 + boot_id.len() + id.len() + state.len());
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(&size.to_le_bytes());
    for part in [boot_id.as_bytes(), id.as_bytes(), &state] {
        // Boot and upload ids are short and hash states a few hundred bytes.
        body.extend_from_slice(&(part.len() as u32).to_le_bytes());
        body.extend_from_slice(part);
    }
    let mut out = Vec::with_capacity(PROGRESS_MAGIC.len() + 4 + body.len() + CHECK_LEN);
    out.extend_from_slice(PROGRESS_MAGIC);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    let check = sha2::Sha256::digest(&out);
    out.extend_from_slice(&check);
    out
}

/// Reads the record at the start of `slot` back: `None` if there is none
/// there, or it is damaged, or it is not upload `id`'s.
fn decode_progress(slot: &[u8], id: &str) -> Option<ProgressRecord> {
    let after_magic = slot.strip_prefix(PROGRESS_MAGIC)?;
    let (len, rest) = after_magic.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    let body = rest.get(..len)?;
    let check = rest.get(len..len.checked_add(CHECK_LEN)?)?;
    let record_len = PROGRESS_MAGIC.len() + 4 + len;
    if sha2::Sha256::digest(&slot[..record_len]).as_slice() != check {
        return None;
    }
    let (seq, rest) = body.split_first_chunk::<8>()?;
    let (size, mut rest) = rest.split_first_chunk::<8>()?;
    let mut part = || -> Option<&[u8]> {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let part = tail.get(..len)?;
        rest = &tail[len..];
        Some(part)
    };
    let boot_id = part()?.to_vec();
    if part()? != id.as_bytes() {
        return None;
    }
    let hasher = Hasher::restore(part()?).ok()?;
    Some(ProgressRecord {
        seq: u64::from_le_bytes(*seq),
        boot_id,
        size: u64::from_le_bytes(*size),
        hasher,
    })
}

/// Reads up to both slots of a progress file; returns the bytes read.
fn read_slots(file: &File, buf: &mut [u8; 2 * PROGRESS_SLOT]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The records of a progress file's two slots, by slot.
fn decode_slots(buf: &[u8], id: &str) -> [Option<ProgressRecord>; 2] {
    let (a, b) = buf.split_at(buf.len().min(PROGRESS_SLOT));
    [decode_progress(a, id), decode_progress(b, id)]
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
    // visible; if power fails first, the progress record says so (see the
    // module documentation) and the client restarts the upload rather than
    // a bad blob being stored.
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

    async fn upload_save_progress(
        &self,
        id: &str,
        size: u64,
        hasher: &Hasher,
    ) -> Result<(), StorageError> {
        let path = self.progress_path(id)?;
        let (id, boot_id, hasher) = (id.to_owned(), self.boot_id.clone(), hasher.clone());
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)?;
            let mut buf = [0u8; 2 * PROGRESS_SLOT];
            let n = read_slots(&file, &mut buf)?;
            // Overwrite the older slot (or an empty or damaged one), so the
            // newer record stays whole for a reader (a status request does
            // not wait for a PATCH in flight) while this one is written.
            let slots = decode_slots(&buf[..n], &id);
            let newest = (0..2)
                .filter_map(|i| slots[i].as_ref().map(|r| (r.seq, i)))
                .max();
            let (seq, slot) = match newest {
                Some((seq, i)) => (seq + 1, 1 - i),
                None => (1, 0),
            };
            let record = encode_progress(seq, &boot_id, &id, size, &hasher);
            if record.len() > PROGRESS_SLOT {
                return Err(StorageError::Corrupt(format!(
                    "progress record of {} bytes does not fit a slot",
                    record.len()
                )));
            }
            // No fsync: see the module documentation.
            file.write_all_at(&record, (slot * PROGRESS_SLOT) as u64)?;
            Ok(())
        })
        .await
        .map_err(|e| StorageError::Io(io::Error::other(e)))?
    }

    async fn upload_progress(&self, id: &str) -> Result<UploadProgress, StorageError> {
        let path = self.progress_path(id)?;
        let id = id.to_owned();
        let boot_id = self.boot_id.clone();
        tokio::task::spawn_blocking(move || -> Result<UploadProgress, StorageError> {
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Ok(UploadProgress::Missing);
                }
                Err(e) => return Err(e.into()),
            };
            let mut buf = [0u8; 2 * PROGRESS_SLOT];
            let n = read_slots(&file, &mut buf)?;
            if n == 0 {
                // Created, then the process died before the first write.
                return Ok(UploadProgress::Missing);
            }
            let newest = decode_slots(&buf[..n], &id)
                .into_iter()
                .flatten()
                .max_by_key(|r| r.seq);
            Ok(match newest {
                Some(r) if r.boot_id == boot_id.as_bytes() => UploadProgress::Current {
                    size: r.size,
                    hasher: r.hasher,
                },
                // Damaged, or from before the machine restarted.
                _ => UploadProgress::Lost,
            })
        })
        .await
        .map_err(|e| StorageError::Io(io::Error::other(e)))?
    }

    async fn upload_discard(&self, id: &str) -> Result<(), StorageError> {
        let staged = self.upload_path(id)?;
        let progress = self.progress_path(id)?;
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            for path in [staged, progress] {
                match fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| StorageError::Io(io::Error::other(e)))?
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
            // An upload is its staged bytes and its progress record; the
            // later of their times says when it was last written.
            let mut latest: HashMap<String, SystemTime> = HashMap::new();
            for entry in fs::read_dir(dir)? {
                let entry = entry?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let id = name.strip_suffix(PROGRESS_SUFFIX).unwrap_or(name);
                if let Some(mtime) = modified(&entry)? {
                    let t = latest.entry(id.to_owned()).or_insert(mtime);
                    *t = (*t).max(mtime);
                }
            }
            Ok(latest.into_iter().collect())
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

    fn current(p: UploadProgress) -> (u64, Digest) {
        match p {
            UploadProgress::Current { size, hasher } => (size, hasher.finish()),
            other => panic!("expected current progress, got {other:?}"),
        }
    }

    fn hashed(data: &[u8]) -> Hasher {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(data);
        h
    }

    #[tokio::test]
    async fn progress_is_kept_in_turn_in_two_slots() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).unwrap();
        assert!(matches!(
            store.upload_progress("u1").await.unwrap(),
            UploadProgress::Missing
        ));
        let path = dir.path().join("uploads/u1.progress");
        for (i, data) in [&b""[..], b"a", b"ab", b"abc"].into_iter().enumerate() {
            store
                .upload_save_progress("u1", data.len() as u64, &hashed(data))
                .await
                .unwrap();
            let got = current(store.upload_progress("u1").await.unwrap());
            assert_eq!(got, (data.len() as u64, Digest::sha256_of(data)));
            // Slot 0, then 1, then 0 again: the other slot keeps the record
            // before.
            let file = std::fs::read(&path).unwrap();
            let slots = decode_slots(&file, "u1");
            assert_eq!(slots[i % 2].as_ref().unwrap().seq, i as u64 + 1);
            if i > 0 {
                assert_eq!(slots[1 - i % 2].as_ref().unwrap().seq, i as u64);
            }
        }
        // A record torn while being written (here the newer one, in slot 1)
        // leaves the one before it.
        let mut file = std::fs::read(&path).unwrap();
        file[PROGRESS_SLOT + 40] ^= 0xff;
        std::fs::write(&path, &file).unwrap();
        assert_eq!(
            current(store.upload_progress("u1").await.unwrap()),
            (2, Digest::sha256_of(b"ab"))
        );
        // The next save replaces the damaged slot and is read back.
        store
            .upload_save_progress("u1", 4, &hashed(b"abcd"))
            .await
            .unwrap();
        assert_eq!(
            current(store.upload_progress("u1").await.unwrap()),
            (4, Digest::sha256_of(b"abcd"))
        );
        // Nothing readable at all: lost. A record of another upload does not
        // count either.
        std::fs::write(&path, vec![7u8; 2 * PROGRESS_SLOT]).unwrap();
        assert!(matches!(
            store.upload_progress("u1").await.unwrap(),
            UploadProgress::Lost
        ));
        store
            .upload_save_progress("u2", 1, &hashed(b"x"))
            .await
            .unwrap();
        std::fs::copy(dir.path().join("uploads/u2.progress"), &path).unwrap();
        assert!(matches!(
            store.upload_progress("u1").await.unwrap(),
            UploadProgress::Lost
        ));
        // An empty file (the process died between creating and writing it)
        // is no record.
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(
            store.upload_progress("u1").await.unwrap(),
            UploadProgress::Missing
        ));
    }

    #[tokio::test]
    async fn progress_from_before_a_reboot_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let before = FsBlobStore {
            boot_id: "boot-1".into(),
            ..FsBlobStore::open(dir.path()).unwrap()
        };
        before
            .upload_save_progress("u1", 1, &hashed(b"x"))
            .await
            .unwrap();
        // The same boot (a restarted process) trusts it.
        let restarted = FsBlobStore {
            boot_id: "boot-1".into(),
            ..FsBlobStore::open(dir.path()).unwrap()
        };
        assert_eq!(
            current(restarted.upload_progress("u1").await.unwrap()),
            (1, Digest::sha256_of(b"x"))
        );
        // After a reboot neither the record nor the staged bytes were ever
        // made durable.
        let rebooted = FsBlobStore {
            boot_id: "boot-2".into(),
            ..FsBlobStore::open(dir.path()).unwrap()
        };
        assert!(matches!(
            rebooted.upload_progress("u1").await.unwrap(),
            UploadProgress::Lost
        ));
    }

    #[tokio::test]
    async fn an_upload_is_listed_and_discarded_with_its_progress() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).unwrap();
        let w = store
            .upload_write("u1", 0, body(vec![b"data"]), hashed(b""), u64::MAX)
            .await
            .unwrap();
        store
            .upload_save_progress("u1", w.written, &w.hasher)
            .await
            .unwrap();
        store
            .upload_save_progress("u2", 0, &hashed(b""))
            .await
            .unwrap();
        let mut ids: Vec<String> = store
            .list_uploads()
            .await
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        ids.sort();
        assert_eq!(ids, ["u1", "u2"]);
        store.upload_discard("u1").await.unwrap();
        store.upload_discard("u2").await.unwrap();
        assert!(store.list_uploads().await.unwrap().is_empty());
        assert!(matches!(
            store.upload_progress("u1").await.unwrap(),
            UploadProgress::Missing
        ));
    }
}
