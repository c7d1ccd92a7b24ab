//! The SQLite metadata store of the embedded default (connections through
//! `sqlite-pool`: one writer, several readers, on tokio's blocking pool).

use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use sqlite_pool::rusqlite::{Connection, OptionalExtension, Transaction, params};
use sqlite_pool::{Pool, PoolError};

use super::{
    MetadataGcReport, MetadataStore, Millis, MountSource, NewManifest, PutManifestOutcome,
    Referrer, RepositoryPage, RepositorySummary, StorageError, StoredManifest, TagDetail,
    UploadRecord,
};
use crate::digest::Digest;
use crate::names::{RepoName, Tag};
use crate::storage::NameList;

/// Schema history. Append new migrations; never edit a released one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE repositories (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- Blobs present in the blob store, verified.
CREATE TABLE blobs (
    digest      TEXT PRIMARY KEY,
    size        INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;

-- Which repositories a blob belongs to (by upload or mount).
CREATE TABLE repository_blobs (
    repository_id INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    digest        TEXT NOT NULL REFERENCES blobs(digest),
    linked_at     INTEGER NOT NULL,
    PRIMARY KEY (repository_id, digest)
) WITHOUT ROWID;
CREATE INDEX repository_blobs_digest ON repository_blobs(digest);

CREATE TABLE manifests (
    repository_id     INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    digest            TEXT NOT NULL,
    media_type        TEXT NOT NULL,
    artifact_type     TEXT,
    config_media_type TEXT,
    subject           TEXT,
    annotations       TEXT,
    size              INTEGER NOT NULL,
    content_size      INTEGER NOT NULL,
    content           BLOB NOT NULL,
    created_at        INTEGER NOT NULL,
    pushed_at         INTEGER NOT NULL,
    PRIMARY KEY (repository_id, digest)
);
CREATE INDEX manifests_subject ON manifests(repository_id, subject) WHERE subject IS NOT NULL;

-- Config and layers a manifest references.
CREATE TABLE manifest_blobs (
    repository_id   INTEGER NOT NULL,
    manifest_digest TEXT NOT NULL,
    blob_digest     TEXT NOT NULL REFERENCES blobs(digest),
    PRIMARY KEY (repository_id, manifest_digest, blob_digest),
    FOREIGN KEY (repository_id, manifest_digest)
        REFERENCES manifests(repository_id, digest) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX manifest_blobs_blob ON manifest_blobs(blob_digest);

-- Manifests an index lists, in order, with their platforms.
CREATE TABLE manifest_children (
    repository_id INTEGER NOT NULL,
    parent_digest TEXT NOT NULL,
    position      INTEGER NOT NULL,
    child_digest  TEXT NOT NULL,
    platform      TEXT,
    PRIMARY KEY (repository_id, parent_digest, position),
    FOREIGN KEY (repository_id, parent_digest)
        REFERENCES manifests(repository_id, digest) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX manifest_children_child ON manifest_children(repository_id, child_digest);

CREATE TABLE tags (
    repository_id   INTEGER NOT NULL,
    name            TEXT NOT NULL,
    manifest_digest TEXT NOT NULL,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (repository_id, name),
    FOREIGN KEY (repository_id, manifest_digest)
        REFERENCES manifests(repository_id, digest) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX tags_manifest ON tags(repository_id, manifest_digest);

-- Upload sessions: the acknowledged offset and the hash state after it.
CREATE TABLE uploads (
    id          TEXT PRIMARY KEY,
    repository  TEXT NOT NULL,
    size        INTEGER NOT NULL,
    hash_state  BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX uploads_repository ON uploads(repository);
"#,
    r#"
-- The platform an image manifest's config names (JSON), for listings.
ALTER TABLE manifests ADD COLUMN platform TEXT;
"#,
    r#"
-- Tag names alone, in order: what a tag list reads. The table's own key
-- has them in the same order, but its rows carry digest and time as well,
-- so a listing walked several times the pages (listing 10,000 tags through
-- this index takes ~0.7x the time).
CREATE INDEX tags_names ON tags(repository_id, name);
"#,
];

/// How hard SQLite syncs a commit to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync on every commit: an acknowledged push survives power loss.
    Full,
    /// fsync at WAL checkpoints: survives a process crash, may lose the last
    /// commits on power loss.
    Normal,
}

/// SQLite-backed [`MetadataStore`].
#[derive(Debug, Clone)]
pub struct SqliteMetadata {
    pool: Pool,
}

fn db_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::Database(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(e.to_string())
}

impl From<PoolError> for StorageError {
    fn from(e: PoolError) -> Self {
        StorageError::Database(e.to_string())
    }
}

impl SqliteMetadata {
    /// Opens (creating and migrating if needed) the database at `path`.
    pub fn open(path: impl Into<PathBuf>, synchronous: Synchronous) -> Result<Self, StorageError> {
        let sync = match synchronous {
            Synchronous::Full => sqlite_pool::Synchronous::Full,
            Synchronous::Normal => sqlite_pool::Synchronous::Normal,
        };
        Ok(SqliteMetadata {
            pool: Pool::open(path, sync, MIGRATIONS)?,
        })
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    {
        self.pool.read(f).await
    }

    async fn write<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T, StorageError> + Send + 'static,
    {
        self.pool.write(f).await
    }
}

/// Display names (`linux/arm/v7`) of stored platforms (JSON), sorted,
/// without duplicates and without the `unknown/unknown` entries build tools
/// use for attestations.
fn platform_names(stored: Vec<String>) -> Vec<String> {
    let mut names: Vec<String> = stored
        .iter()
        .filter_map(|s| serde_json::from_str::<crate::manifest::Platform>(s).ok())
        .filter(|p| p.os != "unknown" && p.architecture != "unknown")
        .map(|p| p.display())
        .collect();
    names.sort();
    names.dedup();
    names
}

fn repo_id(conn: &Connection, repo: &str) -> Result<Option<i64>, StorageError> {
    conn.prepare_cached("SELECT id FROM repositories WHERE name = ?1")
        .map_err(db_err)?
        .query_row(params![repo], |r| r.get(0))
        .optional()
        .map_err(db_err)
}

/// Name slots reserved up front for a listing page (it grows past them).
const NAME_SLOTS: usize = 1024;

/// Runs a query whose rows are one text column into a [`NameList`], copying
/// each name out of SQLite's row buffer straight into the list.
fn collect_names(
    stmt: &mut sqlite_pool::rusqlite::CachedStatement<'_>,
    params: impl sqlite_pool::rusqlite::Params,
    limit: usize,
) -> Result<NameList, StorageError> {
    let slots = limit.min(NAME_SLOTS);
    let (mut text, mut ends) = (Vec::with_capacity(slots * 8), Vec::with_capacity(slots));
    let mut rows = stmt.query(params).map_err(db_err)?;
    while let Some(row) = rows.next().map_err(db_err)? {
        text.extend_from_slice(
            row.get_ref(0)
                .map_err(db_err)?
                .as_bytes()
                .map_err(corrupt)?,
        );
        ends.push(text.len());
    }
    NameList::from_parts(text, ends).ok_or_else(|| corrupt("a stored name is not UTF-8"))
}

fn ensure_repo(tx: &Transaction<'_>, repo: &str, now: Millis) -> Result<i64, StorageError> {
    tx.execute(
        "INSERT INTO repositories (name, created_at, updated_at) VALUES (?1, ?2, ?2)
         ON CONFLICT (name) DO NOTHING",
        params![repo, now],
    )
    .map_err(db_err)?;
    repo_id(tx, repo)?.ok_or_else(|| corrupt("repository vanished inside its transaction"))
}

fn parse_digest(s: String) -> Result<Digest, StorageError> {
    Digest::parse(&s).map_err(corrupt)
}

fn stored_manifest(row: (String, String, Vec<u8>)) -> Result<StoredManifest, StorageError> {
    Ok(StoredManifest {
        digest: parse_digest(row.0)?,
        media_type: row.1,
        content: Bytes::from(row.2),
    })
}

fn to_u64(v: i64) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(corrupt)
}

fn to_i64(v: u64) -> Result<i64, StorageError> {
    i64::try_from(v).map_err(corrupt)
}

#[async_trait]
impl MetadataStore for SqliteMetadata {
    async fn blob_in_repo(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>, StorageError> {
        let (repo, digest) = (repo.as_str().to_owned(), digest.as_str().to_owned());
        self.read(move |c| {
            let size: Option<i64> = c
                .query_row(
                    "SELECT b.size FROM repositories r
                     JOIN repository_blobs rb ON rb.repository_id = r.id
                     JOIN blobs b ON b.digest = rb.digest
                     WHERE r.name = ?1 AND rb.digest = ?2",
                    params![repo, digest],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            size.map(to_u64).transpose()
        })
        .await
    }

    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, StorageError> {
        let digest = digest.as_str().to_owned();
        self.read(move |c| {
            let size: Option<i64> = c
                .query_row(
                    "SELECT size FROM blobs WHERE digest = ?1",
                    params![digest],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            size.map(to_u64).transpose()
        })
        .await
    }

    async fn commit_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        upload_id: Option<&str>,
        now: Millis,
    ) -> Result<(), StorageError> {
        let (repo, digest) = (repo.as_str().to_owned(), digest.as_str().to_owned());
        let upload_id = upload_id.map(str::to_owned);
        let size = to_i64(size)?;
        self.write(move |tx| {
            let rid = ensure_repo(tx, &repo, now)?;
            tx.execute(
                "INSERT INTO blobs (digest, size, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (digest) DO NOTHING",
                params![digest, size, now],
            )
            .map_err(db_err)?;
            tx.execute(
                "INSERT INTO repository_blobs (repository_id, digest, linked_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (repository_id, digest) DO UPDATE SET linked_at = excluded.linked_at",
                params![rid, digest, now],
            )
            .map_err(db_err)?;
            if let Some(id) = upload_id {
                tx.execute("DELETE FROM uploads WHERE id = ?1", params![id])
                    .map_err(db_err)?;
            }
            Ok(())
        })
        .await
    }

    async fn mount_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: MountSource<'_>,
        now: Millis,
    ) -> Result<Option<u64>, StorageError> {
        let (repo, digest) = (repo.as_str().to_owned(), digest.as_str().to_owned());
        let (from, namespace) = match from {
            MountSource::Repository(r) => (Some(r.as_str().to_owned()), None),
            MountSource::Anywhere { namespace } => (None, namespace.map(str::to_owned)),
        };
        self.write(move |tx| {
            let size: Option<i64> = match &from {
                Some(from) => tx
                    .query_row(
                        "SELECT b.size FROM repositories r
                         JOIN repository_blobs rb ON rb.repository_id = r.id
                         JOIN blobs b ON b.digest = rb.digest
                         WHERE r.name = ?1 AND rb.digest = ?2",
                        params![from, digest],
                        |r| r.get(0),
                    )
                    .optional(),
                None => tx
                    .query_row(
                        "SELECT b.size FROM blobs b WHERE b.digest = ?1
                         AND EXISTS (SELECT 1 FROM repository_blobs rb
                                     JOIN repositories r ON r.id = rb.repository_id
                                     WHERE rb.digest = b.digest AND (?2 IS NULL
                                       OR (r.name >= ?2 || '/' AND r.name < ?2 || '0')))",
                        params![digest, namespace],
                        |r| r.get(0),
                    )
                    .optional(),
            }
            .map_err(db_err)?;
            let Some(size) = size else { return Ok(None) };
            let rid = ensure_repo(tx, &repo, now)?;
            tx.execute(
                "INSERT INTO repository_blobs (repository_id, digest, linked_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (repository_id, digest) DO UPDATE SET linked_at = excluded.linked_at",
                params![rid, digest, now],
            )
            .map_err(db_err)?;
            Ok(Some(to_u64(size)?))
        })
        .await
    }

    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool, StorageError> {
        let (repo, digest) = (repo.as_str().to_owned(), digest.as_str().to_owned());
        self.write(move |tx| {
            let n = tx
                .execute(
                    "DELETE FROM repository_blobs WHERE digest = ?2
                     AND repository_id = (SELECT id FROM repositories WHERE name = ?1)",
                    params![repo, digest],
                )
                .map_err(db_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn touch_link(
        &self,
        repo: &RepoName,
        digest: &Digest,
        now: Millis,
        older_than: Millis,
    ) -> Result<(), StorageError> {
        let (repo, digest) = (repo.as_str().to_owned(), digest.as_str().to_owned());
        self.write(move |tx| {
            tx.execute(
                "UPDATE repository_blobs SET linked_at = ?3 WHERE digest = ?2 AND linked_at < ?4
                 AND repository_id = (SELECT id FROM repositories WHERE name = ?1)",
                params![repo, digest, now, older_than],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn create_upload(&self, upload: &UploadRecord) -> Result<(), StorageError> {
        let u = upload.clone();
        let size = to_i64(u.size)?;
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO uploads (id, repository, size, hash_state, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    u.id,
                    u.repo.as_str(),
                    size,
                    u.hash_state,
                    u.created_at,
                    u.updated_at
                ],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn get_upload(&self, id: &str) -> Result<Option<UploadRecord>, StorageError> {
        let id = id.to_owned();
        self.read(move |c| {
            let row: Option<(String, String, i64, Vec<u8>, i64, i64)> = c
                .query_row(
                    "SELECT id, repository, size, hash_state, created_at, updated_at
                     FROM uploads WHERE id = ?1",
                    params![id],
                    |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                        ))
                    },
                )
                .optional()
                .map_err(db_err)?;
            row.map(|(id, repo, size, hash_state, created_at, updated_at)| {
                Ok(UploadRecord {
                    id,
                    repo: RepoName::parse(&repo).map_err(corrupt)?,
                    size: to_u64(size)?,
                    hash_state,
                    created_at,
                    updated_at,
                })
            })
            .transpose()
        })
        .await
    }

    async fn touch_upload(&self, id: &str, now: Millis) -> Result<bool, StorageError> {
        let id = id.to_owned();
        self.write(move |tx| {
            let n = tx
                .prepare_cached("UPDATE uploads SET updated_at = ?2 WHERE id = ?1")
                .map_err(db_err)?
                .execute(params![id, now])
                .map_err(db_err)?;
            Ok(n == 1)
        })
        .await
    }

    async fn delete_upload(&self, id: &str) -> Result<bool, StorageError> {
        let id = id.to_owned();
        self.write(move |tx| {
            Ok(tx
                .execute("DELETE FROM uploads WHERE id = ?1", params![id])
                .map_err(db_err)?
                > 0)
        })
        .await
    }

    async fn manifest_by_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<StoredManifest>, StorageError> {
        let (repo, tag) = (repo.as_str().to_owned(), tag.as_str().to_owned());
        self.read(move |c| {
            let row = c
                .query_row(
                    "SELECT m.digest, m.media_type, m.content FROM repositories r
                     JOIN tags t ON t.repository_id = r.id
                     JOIN manifests m ON m.repository_id = r.id AND m.digest = t.manifest_digest
                     WHERE r.name = ?1 AND t.name = ?2",
                    params![repo, tag],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(db_err)?;
            row.map(stored_manifest).transpose()
        })
        .await
    }

    async fn manifest_by_digest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<StoredManifest>, StorageError> {
        let (repo, digest) = (repo.as_str().to_owned(), digest.as_str().to_owned());
        self.read(move |c| {
            let row = c
                .query_row(
                    "SELECT m.digest, m.media_type, m.content FROM repositories r
                     JOIN manifests m ON m.repository_id = r.id
                     WHERE r.name = ?1 AND m.digest = ?2",
                    params![repo, digest],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(db_err)?;
            row.map(stored_manifest).transpose()
        })
        .await
    }

    async fn put_manifest(&self, m: NewManifest<'_>) -> Result<PutManifestOutcome, StorageError> {
        let repo = m.repo.as_str().to_owned();
        let digest = m.digest.as_str().to_owned();
        let content = m.content.to_vec();
        let p = m.parsed.clone();
        let tags: Vec<String> = m.tags.iter().map(|t| t.as_str().to_owned()).collect();
        let now = m.now;
        let size = to_i64(content.len() as u64)?;
        let content_size = to_i64(p.content_size)?;
        let platform = p
            .platform
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(corrupt)?;
        self.pool.write_if(move |tx| {
            let rid = ensure_repo(tx, &repo, now)?;
            {
                let mut linked = tx
                    .prepare_cached(
                        "SELECT 1 FROM repository_blobs WHERE repository_id = ?1 AND digest = ?2",
                    )
                    .map_err(db_err)?;
                for b in &p.blobs {
                    if !linked.exists(params![rid, b.as_str()]).map_err(db_err)? {
                        return Ok(PutManifestOutcome::MissingBlob(b.clone()));
                    }
                }
                let mut present = tx
                    .prepare_cached("SELECT 1 FROM manifests WHERE repository_id = ?1 AND digest = ?2")
                    .map_err(db_err)?;
                for c in &p.children {
                    if !present.exists(params![rid, c.digest.as_str()]).map_err(db_err)? {
                        return Ok(PutManifestOutcome::MissingManifest(c.digest.clone()));
                    }
                }
            }
            let inserted = tx
                .execute(
                    "INSERT INTO manifests (repository_id, digest, media_type, artifact_type,
                        config_media_type, subject, annotations, size, content_size, content,
                        created_at, pushed_at, platform)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12)
                     ON CONFLICT (repository_id, digest) DO NOTHING",
                    params![
                        rid,
                        digest,
                        p.media_type,
                        p.artifact_type,
                        p.config_media_type,
                        p.subject.as_ref().map(|s| s.as_str().to_owned()),
                        p.annotations,
                        size,
                        content_size,
                        content,
                        now,
                        platform
                    ],
                )
                .map_err(db_err)?;
            if inserted == 0 {
                // Re-pushed: the content is identical (same digest); restart
                // its GC grace period.
                tx.execute(
                    "UPDATE manifests SET pushed_at = ?3 WHERE repository_id = ?1 AND digest = ?2",
                    params![rid, digest, now],
                )
                .map_err(db_err)?;
            } else {
                let mut add_blob = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO manifest_blobs (repository_id, manifest_digest, blob_digest)
                         VALUES (?1, ?2, ?3)",
                    )
                    .map_err(db_err)?;
                for b in &p.blobs {
                    add_blob.execute(params![rid, digest, b.as_str()]).map_err(db_err)?;
                }
                let mut add_optional = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO manifest_blobs (repository_id, manifest_digest, blob_digest)
                         SELECT ?1, ?2, ?3 WHERE EXISTS
                           (SELECT 1 FROM repository_blobs WHERE repository_id = ?1 AND digest = ?3)",
                    )
                    .map_err(db_err)?;
                for b in &p.optional_blobs {
                    add_optional.execute(params![rid, digest, b.as_str()]).map_err(db_err)?;
                }
                let mut add_child = tx
                    .prepare_cached(
                        "INSERT INTO manifest_children (repository_id, parent_digest, position, child_digest, platform)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .map_err(db_err)?;
                for (i, c) in p.children.iter().enumerate() {
                    let platform = c
                        .platform
                        .as_ref()
                        .map(serde_json::to_string)
                        .transpose()
                        .map_err(corrupt)?;
                    add_child
                        .execute(params![rid, digest, i as i64, c.digest.as_str(), platform])
                        .map_err(db_err)?;
                }
            }
            let mut set_tag = tx
                .prepare_cached(
                    "INSERT INTO tags (repository_id, name, manifest_digest, updated_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (repository_id, name) DO UPDATE
                     SET manifest_digest = excluded.manifest_digest, updated_at = excluded.updated_at",
                )
                .map_err(db_err)?;
            for t in &tags {
                set_tag.execute(params![rid, t, digest, now]).map_err(db_err)?;
            }
            tx.execute(
                "UPDATE repositories SET updated_at = ?2 WHERE id = ?1",
                params![rid, now],
            )
            .map_err(db_err)?;
            Ok(PutManifestOutcome::Stored)
        },
        // A refused manifest leaves nothing behind, not even its repository.
        |outcome| *outcome == PutManifestOutcome::Stored)
        .await
    }

    async fn delete_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<bool, StorageError> {
        let (repo, digest) = (repo.as_str().to_owned(), digest.as_str().to_owned());
        self.write(move |tx| {
            // Tags, references and children go with it (ON DELETE CASCADE).
            let n = tx
                .execute(
                    "DELETE FROM manifests WHERE digest = ?2
                     AND repository_id = (SELECT id FROM repositories WHERE name = ?1)",
                    params![repo, digest],
                )
                .map_err(db_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool, StorageError> {
        let (repo, tag) = (repo.as_str().to_owned(), tag.as_str().to_owned());
        self.write(move |tx| {
            let n = tx
                .execute(
                    "DELETE FROM tags WHERE name = ?2
                     AND repository_id = (SELECT id FROM repositories WHERE name = ?1)",
                    params![repo, tag],
                )
                .map_err(db_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn list_tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        limit: usize,
    ) -> Result<Option<NameList>, StorageError> {
        let repo = repo.as_str().to_owned();
        let last = last.unwrap_or("").to_owned();
        self.read(move |c| {
            let Some(rid) = repo_id(c, &repo)? else {
                return Ok(None);
            };
            // The index is named so that the planner cannot fall back to
            // the wide table. `LIMIT ?3 + 0`: SQLite compiles a bare bound
            // LIMIT as a constant and so prepares the statement again
            // whenever it is bound, which was every call.
            let mut stmt = c
                .prepare_cached(
                    "SELECT name FROM tags INDEXED BY tags_names
                     WHERE repository_id = ?1 AND name > ?2 ORDER BY name LIMIT ?3 + 0",
                )
                .map_err(db_err)?;
            let sql_limit = i64::try_from(limit).unwrap_or(i64::MAX);
            collect_names(&mut stmt, params![rid, last, sql_limit], limit).map(Some)
        })
        .await
    }

    async fn list_repositories(
        &self,
        namespace: Option<&str>,
        last: Option<&str>,
        limit: usize,
    ) -> Result<NameList, StorageError> {
        let last = last.unwrap_or("").to_owned();
        let namespace = namespace.map(str::to_owned);
        self.read(move |c| {
            // '/' < '0' in byte order: names in a namespace sort between
            // "<ns>/" and "<ns>0", so the range scan uses the unique index.
            // `?2 + 0`: see `list_tags`.
            let mut stmt = c
                .prepare_cached(
                    "SELECT name FROM repositories WHERE name > ?1
                       AND (?3 IS NULL OR (name >= ?3 || '/' AND name < ?3 || '0'))
                     ORDER BY name LIMIT ?2 + 0",
                )
                .map_err(db_err)?;
            let sql_limit = i64::try_from(limit).unwrap_or(i64::MAX);
            collect_names(&mut stmt, params![last, sql_limit, namespace], limit)
        })
        .await
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>, StorageError> {
        let (repo, subject) = (repo.as_str().to_owned(), subject.as_str().to_owned());
        let artifact_type = artifact_type.map(str::to_owned);
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT m.digest, m.media_type, m.size, m.artifact_type, m.annotations
                     FROM repositories r JOIN manifests m ON m.repository_id = r.id
                     WHERE r.name = ?1 AND m.subject = ?2
                       AND (?3 IS NULL OR m.artifact_type = ?3)
                     ORDER BY m.created_at, m.digest",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![repo, subject, artifact_type], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                    ))
                })
                .map_err(db_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_err)?;
            rows.into_iter()
                .map(|(d, mt, size, at, ann)| {
                    Ok(Referrer {
                        digest: parse_digest(d)?,
                        media_type: mt,
                        size: to_u64(size)?,
                        artifact_type: at,
                        annotations: ann,
                    })
                })
                .collect()
        })
        .await
    }

    async fn delete_repository(
        &self,
        repo: &RepoName,
    ) -> Result<Option<Vec<String>>, StorageError> {
        let repo = repo.as_str().to_owned();
        self.write(move |tx| {
            let mut stmt = tx
                .prepare_cached("SELECT id FROM uploads WHERE repository = ?1")
                .map_err(db_err)?;
            let uploads = stmt
                .query_map(params![repo], |r| r.get(0))
                .map_err(db_err)?
                .collect::<Result<Vec<String>, _>>()
                .map_err(db_err)?;
            tx.execute("DELETE FROM uploads WHERE repository = ?1", params![repo])
                .map_err(db_err)?;
            let Some(rid) = repo_id(tx, &repo)? else {
                return Ok(if uploads.is_empty() {
                    None
                } else {
                    Some(uploads)
                });
            };
            // Children first: tags reference manifests, which reference the repository.
            tx.execute("DELETE FROM tags WHERE repository_id = ?1", params![rid])
                .map_err(db_err)?;
            tx.execute(
                "DELETE FROM manifests WHERE repository_id = ?1",
                params![rid],
            )
            .map_err(db_err)?;
            tx.execute(
                "DELETE FROM repository_blobs WHERE repository_id = ?1",
                params![rid],
            )
            .map_err(db_err)?;
            tx.execute("DELETE FROM repositories WHERE id = ?1", params![rid])
                .map_err(db_err)?;
            Ok(Some(uploads))
        })
        .await
    }

    async fn repository_page(
        &self,
        namespace: Option<&str>,
        filter: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<RepositoryPage, StorageError> {
        let namespace = namespace.map(str::to_owned);
        let filter = filter.filter(|f| !f.is_empty()).map(str::to_owned);
        let after = after.unwrap_or("").to_owned();
        let limit = limit as i64;
        self.read(move |c| {
            // '/' < '0': a namespace's repositories sort between "<ns>/" and "<ns>0".
            const WHERE: &str = "(?1 IS NULL OR (r.name >= ?1 || '/' AND r.name < ?1 || '0'))
                                 AND (?2 IS NULL OR instr(r.name, ?2) > 0)";
            let total: i64 = c
                .prepare_cached(&format!("SELECT count(*) FROM repositories r WHERE {WHERE}"))
                .map_err(db_err)?
                .query_row(params![namespace, filter], |r| r.get(0))
                .map_err(db_err)?;
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT r.id, r.name, r.updated_at,
                       (SELECT count(*) FROM tags t WHERE t.repository_id = r.id),
                       (SELECT coalesce(sum(b.size), 0) FROM blobs b WHERE b.digest IN
                          (SELECT mb.blob_digest FROM manifest_blobs mb WHERE mb.repository_id = r.id))
                       + (SELECT coalesce(sum(m.size), 0) FROM manifests m WHERE m.repository_id = r.id)
                     FROM repositories r WHERE {WHERE} AND r.name > ?3
                     ORDER BY r.name LIMIT ?4"
                ))
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![namespace, filter, after, limit], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                })
                .map_err(db_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_err)?;
            let mut platforms = c
                .prepare_cached(
                    "SELECT m.platform FROM tags t JOIN manifests m
                       ON m.repository_id = t.repository_id AND m.digest = t.manifest_digest
                     WHERE t.repository_id = ?1 AND m.platform IS NOT NULL
                     UNION
                     SELECT ch.platform FROM tags t JOIN manifest_children ch
                       ON ch.repository_id = t.repository_id AND ch.parent_digest = t.manifest_digest
                     WHERE t.repository_id = ?1 AND ch.platform IS NOT NULL",
                )
                .map_err(db_err)?;
            let mut repositories = Vec::with_capacity(rows.len());
            for (id, name, last_push, tags, size) in rows {
                let found = platforms
                    .query_map(params![id], |r| r.get::<_, String>(0))
                    .map_err(db_err)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(db_err)?;
                repositories.push(RepositorySummary {
                    name,
                    tag_count: to_u64(tags)?,
                    size: to_u64(size)?,
                    last_push,
                    platforms: platform_names(found),
                });
            }
            Ok(RepositoryPage {
                repositories,
                total: to_u64(total)?,
            })
        })
        .await
    }

    async fn repository_tags(
        &self,
        repo: &RepoName,
    ) -> Result<Option<Vec<TagDetail>>, StorageError> {
        let repo = repo.as_str().to_owned();
        self.read(move |c| {
            let Some(rid) = repo_id(c, &repo)? else {
                return Ok(None);
            };
            let mut stmt = c
                .prepare_cached(
                    "SELECT t.name, m.digest, m.media_type, m.artifact_type, t.updated_at, m.platform,
                       m.size + coalesce((SELECT sum(cm.size + cm.content_size)
                         FROM manifest_children ch JOIN manifests cm
                           ON cm.repository_id = ch.repository_id AND cm.digest = ch.child_digest
                         WHERE ch.repository_id = m.repository_id AND ch.parent_digest = m.digest),
                         -- An image: its config and layers. (An index's
                         -- content_size counts its children's manifests only.)
                         m.content_size)
                     FROM tags t JOIN manifests m
                       ON m.repository_id = t.repository_id AND m.digest = t.manifest_digest
                     WHERE t.repository_id = ?1 ORDER BY t.name",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![rid], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, Option<String>>(5)?,
                        r.get::<_, i64>(6)?,
                    ))
                })
                .map_err(db_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_err)?;
            let mut children = c
                .prepare_cached(
                    "SELECT platform FROM manifest_children
                     WHERE repository_id = ?1 AND parent_digest = ?2 AND platform IS NOT NULL
                     ORDER BY position",
                )
                .map_err(db_err)?;
            let mut out = Vec::with_capacity(rows.len());
            for (tag, digest, media_type, artifact_type, pushed_at, platform, size) in rows {
                let mut found: Vec<String> = platform.into_iter().collect();
                found.extend(
                    children
                        .query_map(params![rid, digest], |r| r.get::<_, String>(0))
                        .map_err(db_err)?
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(db_err)?,
                );
                out.push(TagDetail {
                    tag,
                    digest: parse_digest(digest)?,
                    media_type,
                    artifact_type,
                    size: to_u64(size)?,
                    pushed_at,
                    platforms: platform_names(found),
                });
            }
            Ok(Some(out))
        })
        .await
    }

    async fn gc_metadata(&self, cutoff: Millis) -> Result<MetadataGcReport, StorageError> {
        self.write(move |tx| {
            // A manifest lives while it is tagged, recently pushed, listed by a
            // living index, or refers (as `subject`) to a living manifest.
            let manifests = tx
                .execute(
                    "WITH RECURSIVE alive(repository_id, digest) AS (
                        SELECT m.repository_id, m.digest FROM manifests m
                        WHERE m.pushed_at >= ?1
                           OR EXISTS (SELECT 1 FROM tags t
                                      WHERE t.repository_id = m.repository_id
                                        AND t.manifest_digest = m.digest)
                        UNION
                        SELECT c.repository_id, c.child_digest FROM manifest_children c
                        JOIN alive a ON a.repository_id = c.repository_id AND a.digest = c.parent_digest
                        UNION
                        SELECT m.repository_id, m.digest FROM manifests m
                        JOIN alive a ON a.repository_id = m.repository_id AND a.digest = m.subject
                     )
                     DELETE FROM manifests WHERE (repository_id, digest) NOT IN
                        (SELECT repository_id, digest FROM alive)",
                    params![cutoff],
                )
                .map_err(db_err)? as u64;
            let links = tx
                .execute(
                    "DELETE FROM repository_blobs WHERE linked_at < ?1 AND NOT EXISTS
                        (SELECT 1 FROM manifest_blobs mb
                         WHERE mb.repository_id = repository_blobs.repository_id
                           AND mb.blob_digest = repository_blobs.digest)",
                    params![cutoff],
                )
                .map_err(db_err)? as u64;
            let repositories = tx
                .execute(
                    "DELETE FROM repositories WHERE updated_at < ?1
                       AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = repositories.id)
                       AND NOT EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.repository_id = repositories.id)
                       AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.repository = repositories.name)",
                    params![cutoff],
                )
                .map_err(db_err)? as u64;
            Ok(MetadataGcReport {
                manifests,
                links,
                repositories,
            })
        })
        .await
    }

    async fn gc_blob_candidates(
        &self,
        cutoff: Millis,
        limit: usize,
    ) -> Result<Vec<(Digest, u64)>, StorageError> {
        let limit = limit as i64;
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT b.digest, b.size FROM blobs b WHERE b.created_at < ?1
                       AND NOT EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = b.digest)
                       AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob_digest = b.digest)
                     LIMIT ?2",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![cutoff, limit], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(db_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_err)?;
            rows.into_iter()
                .map(|(d, s)| Ok((parse_digest(d)?, to_u64(s)?)))
                .collect()
        })
        .await
    }

    async fn gc_forget_blob(&self, digest: &Digest, cutoff: Millis) -> Result<bool, StorageError> {
        let digest = digest.as_str().to_owned();
        self.write(move |tx| {
            let n = tx
                .execute(
                    "DELETE FROM blobs WHERE digest = ?1 AND created_at < ?2
                       AND NOT EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = blobs.digest)
                       AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob_digest = blobs.digest)",
                    params![digest, cutoff],
                )
                .map_err(db_err)?;
            Ok(n > 0)
        })
        .await
    }

    async fn gc_expire_uploads(&self, cutoff: Millis) -> Result<Vec<String>, StorageError> {
        self.write(move |tx| {
            let mut stmt = tx
                .prepare_cached("DELETE FROM uploads WHERE updated_at < ?1 RETURNING id")
                .map_err(db_err)?;
            let ids = stmt
                .query_map(params![cutoff], |r| r.get(0))
                .map_err(db_err)?
                .collect::<Result<Vec<String>, _>>()
                .map_err(db_err)?;
            Ok(ids)
        })
        .await
    }

    async fn upload_exists(&self, id: &str) -> Result<bool, StorageError> {
        let id = id.to_owned();
        self.read(move |c| {
            c.prepare_cached("SELECT 1 FROM uploads WHERE id = ?1")
                .map_err(db_err)?
                .exists(params![id])
                .map_err(db_err)
        })
        .await
    }
}
