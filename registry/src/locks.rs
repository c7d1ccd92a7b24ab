//! Per-key async mutexes: one upload session, or one digest, at a time.
//!
//! Entries exist only while someone holds or waits for them, so memory stays
//! bounded by concurrency, not by the number of keys ever seen. These
//! serialise work inside one process. Across replicas, a digest's commit
//! and its GC delete are ordered by the metadata store's shared lock
//! (`MetadataStore::lock_digest`, taken after this one, so one process asks
//! the database once per digest at a time), and an upload's chunks need no
//! lock: each write starts from the progress record the blob store keeps,
//! and a racing writer makes the commit fail rather than store unhashed
//! bytes. The metadata store's transactions (conditional deletes) keep GC
//! correct against concurrent pushes.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Debug, Default)]
pub struct KeyedLocks {
    map: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// Held lock; releasing it removes the entry if nobody else wants it.
#[derive(Debug)]
pub struct KeyedGuard<'a> {
    locks: &'a KeyedLocks,
    key: String,
    mutex: Arc<AsyncMutex<()>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    pub async fn lock(&self, key: &str) -> KeyedGuard<'_> {
        let mutex = self.map.lock().entry(key.to_owned()).or_default().clone();
        let guard = mutex.clone().lock_owned().await;
        KeyedGuard {
            locks: self,
            key: key.to_owned(),
            mutex,
            guard: Some(guard),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().len()
    }
}

impl Drop for KeyedGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = self.locks.map.lock();
        // Clones are only taken under the map lock, so the count is exact:
        // one in the map and ours means nobody else holds or awaits it.
        if Arc::strong_count(&self.mutex) == 2 {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn serialises_per_key_and_cleans_up() {
        let locks = Arc::new(KeyedLocks::default());
        let counter = Arc::new(Mutex::new((0u32, 0u32))); // (inside, max inside)
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (locks, counter) = (locks.clone(), counter.clone());
            tasks.push(tokio::spawn(async move {
                let _g = locks.lock("k").await;
                {
                    let mut c = counter.lock();
                    c.0 += 1;
                    c.1 = c.1.max(c.0);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                counter.lock().0 -= 1;
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(counter.lock().1, 1);
        assert_eq!(locks.len(), 0);
        let _a = locks.lock("a").await;
        let _b = locks.lock("b").await; // different keys do not block
        assert_eq!(locks.len(), 2);
    }
}
