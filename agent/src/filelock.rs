//! Locks shared by every berth-agent process of a node (the daemon and
//! CLI pulls), so that two processes pulling the same blob download it
//! once: the second waits, then finds it in containerd.
//!
//! One lock file per key, `flock`ed (released by the kernel when a
//! process dies, so a crash never leaves a stale lock). The holder deletes
//! its file on release, so the directory does not grow with every digest
//! ever pulled; a waiter that then gets the lock of a deleted file sees
//! that its path now names another file (or none) and tries again. That
//! check is why this is not just `Flock::lock`.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// A held lock; released (and its file removed) on drop.
#[derive(Debug)]
pub struct FileLock {
    path: PathBuf,
    // Dropped after the file is removed: see `Drop`.
    lock: Option<Flock<File>>,
}

impl FileLock {
    /// Blocks until the lock on `dir/name` is held. `name` must be a
    /// plain file name (callers derive it from a digest).
    pub fn acquire(dir: &Path, name: &str) -> std::io::Result<FileLock> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(name);
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            let lock = Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, errno)| std::io::Error::from(errno))?;
            // Still the file the path names? A holder that released in the
            // meantime removed it, and a third process may be holding a
            // new one at the same path.
            let held = lock.metadata()?;
            match std::fs::metadata(&path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(FileLock {
                        path,
                        lock: Some(lock),
                    });
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// [`FileLock::acquire`] off the async runtime's threads.
    pub async fn acquire_async(dir: &Path, name: &str) -> std::io::Result<FileLock> {
        let (dir, name) = (dir.to_path_buf(), name.to_owned());
        tokio::task::spawn_blocking(move || FileLock::acquire(&dir, &name))
            .await
            .map_err(std::io::Error::other)?
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Removed while still locked, so no one can lock this path's
        // current file after we let go of it without noticing.
        let _ = std::fs::remove_file(&self.path);
        drop(self.lock.take());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn one_holder_at_a_time_and_no_files_left() {
        let dir = tempfile::tempdir().unwrap();
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (dir, inside, most) = (dir.path().to_path_buf(), inside.clone(), most.clone());
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let _held = FileLock::acquire(&dir, "sha256-abc.lock").unwrap();
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        std::thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
