//! Async access to one SQLite database: a single writer connection (SQLite
//! serialises writers anyway; one connection avoids `SQLITE_BUSY` churn) and
//! a few reader connections, which WAL mode lets run beside the writer.
//! Every call runs on tokio's blocking pool.
//!
//! Berth's embedded stores (registry metadata, auth) each own a database
//! file through this; their schemas stay private to their crates. Written
//! here rather than taken from `r2d2_sqlite`/`deadpool-sqlite` because those
//! pin their own rusqlite versions and add nothing the writer/reader split
//! needs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
pub use rusqlite;
use rusqlite::{Connection, Transaction, TransactionBehavior};
use rusqlite_migration::{M, Migrations};

/// How hard SQLite syncs a commit to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    /// fsync on every commit: an acknowledged write survives power loss.
    Full,
    /// fsync at WAL checkpoints: survives a process crash, may lose the
    /// last commits on power loss.
    Normal,
}

/// Failures of the database layer.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database migration: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    #[error("database task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    synchronous: Synchronous,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

/// A SQLite database opened for async use. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

/// Most reader connections kept open for reuse.
const MAX_IDLE_READERS: usize = 8;

fn open_connection(path: &Path, synchronous: Synchronous) -> Result<Connection, PoolError> {
    let conn = Connection::open(path)?;
    let sync = match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    // busy_timeout first: switching a new database to WAL takes a lock
    // another process opening it at the same moment may hold.
    conn.execute_batch(&format!(
        "PRAGMA busy_timeout = 10000;
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = {sync};
         PRAGMA foreign_keys = ON;
         PRAGMA cache_size = -4000;"
    ))?;
    Ok(conn)
}

impl Pool {
    /// Opens (creating if needed) the database at `path` and applies
    /// `migrations` (each an SQL script; append, never edit released ones).
    pub fn open(
        path: impl Into<PathBuf>,
        synchronous: Synchronous,
        migrations: &[&str],
    ) -> Result<Self, PoolError> {
        let path = path.into();
        let migrations = Migrations::new(migrations.iter().map(|m| M::up(m)).collect());
        // Two processes may open a new database at once (the server and
        // `berth-server admin`, say). rusqlite_migration reads the schema
        // version before its transaction, so the second one applies the
        // scripts the first just committed again and fails ("table …
        // already exists"), and switching a new file to WAL can meet a
        // lock the busy handler does not wait for. Trying again sees the
        // committed state; a broken migration fails every time.
        let mut attempt = 0;
        let writer = loop {
            attempt += 1;
            let opened = open_connection(&path, synchronous).and_then(|mut conn| {
                conn.set_transaction_behavior(TransactionBehavior::Immediate);
                migrations.to_latest(&mut conn)?;
                Ok(conn)
            });
            match opened {
                Ok(conn) => break conn,
                Err(_) if attempt < 5 => {
                    std::thread::sleep(std::time::Duration::from_millis(20 * attempt))
                }
                Err(e) => return Err(e),
            }
        };
        Ok(Pool {
            inner: Arc::new(Inner {
                path,
                synchronous,
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Runs `f` on a reader connection.
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<PoolError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let idle = inner.readers.lock().pop();
            let conn = match idle {
                Some(c) => c,
                None => open_connection(&inner.path, inner.synchronous)?,
            };
            let out = f(&conn);
            let mut idle = inner.readers.lock();
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
            out
        })
        .await
        .map_err(|e| E::from(PoolError::Join(e)))?
    }

    /// Runs `f` in an immediate write transaction, committed if `f`
    /// returns `Ok` and `commit(&value)` is true, rolled back otherwise.
    pub async fn write_if<T, E, F, C>(&self, f: F, commit: C) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<PoolError> + Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, E> + Send + 'static,
        C: FnOnce(&T) -> bool + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(PoolError::from)?;
            let out = f(&tx)?;
            if commit(&out) {
                tx.commit().map_err(PoolError::from)?;
            } else {
                tx.rollback().map_err(PoolError::from)?;
            }
            Ok(out)
        })
        .await
        .map_err(|e| E::from(PoolError::Join(e)))?
    }

    /// Runs `f` in an immediate write transaction, committed if it returns `Ok`.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<PoolError> + Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, E> + Send + 'static,
    {
        self.write_if(f, |_| true).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn migrates_reads_writes_and_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(
            dir.path().join("t.db"),
            Synchronous::Normal,
            &["CREATE TABLE t (v INTEGER NOT NULL);"],
        )
        .unwrap();
        pool.write(|tx| {
            tx.execute("INSERT INTO t (v) VALUES (1)", [])
                .map_err(PoolError::from)
        })
        .await
        .unwrap();
        // Refused by the commit predicate: rolled back.
        pool.write_if(
            |tx| {
                tx.execute("INSERT INTO t (v) VALUES (2)", [])
                    .map_err(PoolError::from)
            },
            |_| false,
        )
        .await
        .unwrap();
        let n: i64 = pool
            .read(|c| {
                c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                    .map_err(PoolError::from)
            })
            .await
            .unwrap();
        assert_eq!(n, 1);
        // Reopening applies no migration twice.
        drop(pool);
        Pool::open(
            dir.path().join("t.db"),
            Synchronous::Normal,
            &["CREATE TABLE t (v INTEGER NOT NULL);"],
        )
        .unwrap();
    }

    #[test]
    fn concurrent_opens_of_a_new_database_all_migrate() {
        const MIGRATIONS: &[&str] = &[
            "CREATE TABLE a (v INTEGER NOT NULL);",
            "CREATE TABLE b (v INTEGER NOT NULL);",
        ];
        for _ in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t.db");
            let opened: Vec<_> = (0..6)
                .map(|_| {
                    let path = path.clone();
                    std::thread::spawn(move || Pool::open(path, Synchronous::Normal, MIGRATIONS))
                })
                .collect();
            for handle in opened {
                handle.join().unwrap().unwrap();
            }
        }
    }
}
