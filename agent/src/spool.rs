//! A layer's verified-order bytes on their way from the download to the
//! agent's unpacker (`unpack.rs`), which reads them while they arrive.
//!
//! A file rather than a channel: the unpacker of layer N+1 cannot start
//! before layer N is committed, while both download at once. Bytes that
//! arrive before their reader is ready wait in the page cache (an unnamed
//! file: nothing is left behind by a crash), not in the agent's memory,
//! and a layer whose turn comes early is read as it is written.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

#[derive(Debug)]
pub struct Spool {
    file: File,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    written: u64,
    /// Set once: Ok once the blob's digest verified, Err when the
    /// download failed.
    end: Option<Result<(), String>>,
    /// Set once: Ok once containerd committed the blob, Err when it did
    /// not (or the download failed).
    stored: Option<Result<(), String>>,
}

impl Spool {
    /// An empty spool in `dir` (created if missing).
    pub fn create(dir: &Path) -> io::Result<Arc<Spool>> {
        std::fs::create_dir_all(dir)?;
        Ok(Arc::new(Spool {
            file: tempfile::tempfile_in(dir)?,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }))
    }

    /// Appends `data` (blocking: call it off the async threads).
    pub fn append(&self, data: &[u8]) -> io::Result<()> {
        let at = self.lock().written;
        self.file.write_all_at(data, at)?;
        self.lock().written = at + data.len() as u64;
        self.changed.notify_all();
        Ok(())
    }

    /// Ends the stream: the reader sees the end of the data (Ok) or the
    /// error. Only the first call counts.
    pub fn finish(&self, end: Result<(), String>) {
        self.set_once(|s| &mut s.end, end);
    }

    /// Records whether containerd committed the blob. Only the first call
    /// counts.
    pub fn stored(&self, stored: Result<(), String>) {
        self.set_once(|s| &mut s.stored, stored);
    }

    /// Waits (blocking) until containerd committed the blob, or did not:
    /// what reads the blob back from containerd needs this, not just the
    /// end of the stream.
    pub fn wait_stored(&self) -> Result<(), String> {
        self.wait_for(|s| s.stored.clone())
    }

    /// Waits (blocking) for the end of the stream.
    pub fn wait_end(&self) -> Result<(), String> {
        self.wait_for(|s| s.end.clone())
    }

    fn set_once(
        &self,
        field: impl FnOnce(&mut State) -> &mut Option<Result<(), String>>,
        value: Result<(), String>,
    ) {
        field(&mut self.lock()).get_or_insert(value);
        self.changed.notify_all();
    }

    fn wait_for<T>(&self, ready: impl Fn(&State) -> Option<T>) -> T {
        let mut s = self.lock();
        loop {
            if let Some(v) = ready(&s) {
                return v;
            }
            s = self
                .changed
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// A reader from the start that blocks until bytes arrive.
    pub fn reader(self: &Arc<Self>) -> SpoolReader {
        SpoolReader {
            spool: Arc::clone(self),
            pos: 0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Debug)]
pub struct SpoolReader {
    spool: Arc<Spool>,
    pos: u64,
}

impl Read for SpoolReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let available = {
            let mut s = self.spool.lock();
            loop {
                if s.written > self.pos {
                    break s.written - self.pos;
                }
                match &s.end {
                    Some(Ok(())) => return Ok(0),
                    Some(Err(e)) => return Err(io::Error::other(e.clone())),
                    None => {}
                }
                s = self
                    .spool
                    .changed
                    .wait(s)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        };
        let want = buf
            .len()
            .min(usize::try_from(available).unwrap_or(usize::MAX));
        let n = self.spool.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_reader_follows_the_writer_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::create(dir.path()).unwrap();
        let mut reader = spool.reader();
        let writer = Arc::clone(&spool);
        let t = std::thread::spawn(move || {
            for i in 0..50u8 {
                writer.append(&[i; 1000]).unwrap();
            }
            writer.finish(Ok(()));
        });
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        t.join().unwrap();
        assert_eq!(all.len(), 50_000);
        assert!(
            all.chunks(1000)
                .enumerate()
                .all(|(i, c)| c.iter().all(|b| usize::from(*b) == i))
        );
        // Nothing named is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_failed_download_fails_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::create(dir.path()).unwrap();
        spool.append(b"abc").unwrap();
        spool.finish(Err("digest mismatch".into()));
        let mut reader = spool.reader();
        let mut buf = [0u8; 8];
        assert_eq!(reader.read(&mut buf).unwrap(), 3);
        let err = reader.read(&mut buf).unwrap_err();
        assert!(err.to_string().contains("digest mismatch"));
        assert_eq!(spool.wait_end(), Err("digest mismatch".into()));
    }

    #[test]
    fn stored_is_its_own_signal() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::create(dir.path()).unwrap();
        spool.finish(Ok(()));
        let waiter = {
            let spool = Arc::clone(&spool);
            std::thread::spawn(move || spool.wait_stored())
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(
            !waiter.is_finished(),
            "the end of the stream is not the commit"
        );
        spool.stored(Err("commit failed".into()));
        spool.stored(Ok(()));
        assert_eq!(waiter.join().unwrap(), Err("commit failed".into()));
    }
}
