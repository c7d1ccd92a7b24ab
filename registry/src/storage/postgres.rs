//! The PostgreSQL metadata store, for several berth-server replicas sharing
//! one database (`metadata_url = "postgres://…"`). Same tables and the same
//! behaviour as [`super::sqlite`]; its tables live in the schema `registry`.
//!
//! Every write runs at SERIALIZABLE isolation (retried on conflict by
//! `pg_pool::transaction!`): SQLite serialises its writers, and the
//! registry's rules rely on that. A manifest PUT checks its references and
//! inserts the rows that pin them in one transaction, so GC (whose deletes
//! re-check "unreferenced" in their own transaction) can never remove a
//! blob or link a concurrent push has just relied on: one of the two
//! transactions sees the other's writes or is run again. GC's metadata pass
//! also takes a transaction-scoped advisory lock, so only one replica
//! collects at a time. Reads are single statements (or, for summaries, one
//! REPEATABLE READ snapshot), like the SQLite store's readers.

use async_trait::async_trait;
use bytes::Bytes;
use pg_pool::deadpool_postgres::GenericClient;
use pg_pool::tokio_postgres::Row;
use pg_pool::{ConnectOptions, Pool, TxError, all, exec, opt, transaction};

use super::{
    MetadataGcReport, MetadataStore, Millis, MountSource, NameList, NewManifest,
    PutManifestOutcome, Referrer, RepositoryPage, RepositorySummary, SharedLock, StorageError,
    StoredManifest, TagDetail, UploadRecord,
};
use crate::digest::Digest;
use crate::names::{RepoName, Tag};

/// Schema history, embedded in the binary. Append new migrations; never
/// edit a released one.
const MIGRATIONS: &[&str] = &[include_str!("postgres/0001_initial.sql")];

/// The PostgreSQL schema holding the registry's tables.
pub const SCHEMA: &str = "registry";

/// Key of the advisory lock GC's metadata pass holds (one collector at a time).
const GC_LOCK: i64 = 0x6265_7274_6867_6301; // "berthgc\x01"

/// Advisory lock classes (PostgreSQL's two-`int4` key space, apart from
/// [`GC_LOCK`]'s one-`int8` space): one digest, keyed by the first 32 bits
/// of its hash (a collision only makes two digests wait for each other),
/// and the whole GC pass.
const DIGEST_LOCK_CLASS: i32 = 0x6272_6431; // "brd1"
const GC_PASS_LOCK_CLASS: i32 = 0x6272_6731; // "brg1"

/// The advisory key of `digest`.
fn digest_lock_key(digest: &Digest) -> i32 {
    let hex = digest.hex();
    let head = hex.get(..8).unwrap_or(hex);
    u32::from_str_radix(head, 16).unwrap_or(0) as i32
}

/// PostgreSQL-backed [`MetadataStore`].
#[derive(Debug, Clone)]
pub struct PgMetadata {
    pool: Pool,
    /// Advisory locks shared with the other replicas (their own connections).
    locks: pg_pool::Locks,
}

type TxResult<T> = Result<T, TxError<StorageError>>;

fn db(e: pg_pool::tokio_postgres::Error) -> StorageError {
    StorageError::Database(pg_pool::describe(&e))
}

fn from_tx(e: TxError<StorageError>) -> StorageError {
    match e {
        TxError::Db(e) => db(e),
        TxError::Pool(e) => StorageError::Database(e),
        TxError::Store(e) => e,
    }
}

fn corrupt(e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(e.to_string())
}

fn store<T>(r: Result<T, StorageError>) -> TxResult<T> {
    r.map_err(TxError::Store)
}

impl From<pg_pool::PgError> for StorageError {
    fn from(e: pg_pool::PgError) -> Self {
        StorageError::Database(e.to_string())
    }
}

fn to_u64(v: i64) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(corrupt)
}

fn to_i64(v: u64) -> Result<i64, StorageError> {
    i64::try_from(v).map_err(corrupt)
}

fn parse_digest(s: &str) -> Result<Digest, StorageError> {
    Digest::parse(s).map_err(corrupt)
}

fn stored_manifest(row: &Row) -> Result<StoredManifest, StorageError> {
    Ok(StoredManifest {
        digest: parse_digest(row.get(0))?,
        media_type: row.get(1),
        content: Bytes::from(row.get::<_, Vec<u8>>(2)),
    })
}

fn names(rows: &[Row], limit: usize) -> Result<NameList, StorageError> {
    let mut list = NameList::with_capacity(rows.len().min(limit));
    for r in rows {
        list.push(r.get(0));
    }
    Ok(list)
}

/// Display names of stored platforms, as the SQLite store shows them.
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

async fn ensure_repo<C: GenericClient + Sync>(c: &C, repo: &str, now: Millis) -> TxResult<i64> {
    exec(
        c,
        "INSERT INTO repositories (name, created_at, updated_at) VALUES ($1, $2, $2)
         ON CONFLICT (name) DO NOTHING",
        &[&repo, &now],
    )
    .await?;
    let row = opt(c, "SELECT id FROM repositories WHERE name = $1", &[&repo]).await?;
    match row {
        Some(r) => Ok(r.get(0)),
        None => Err(TxError::Store(corrupt(
            "repository vanished inside its transaction",
        ))),
    }
}

/// `LIMIT` bound of a listing (`usize::MAX` means no limit).
fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl PgMetadata {
    /// Connects to the database and migrates the `registry` schema.
    pub async fn connect(options: &ConnectOptions) -> Result<Self, StorageError> {
        Ok(PgMetadata {
            pool: Pool::connect(options, SCHEMA, MIGRATIONS).await?,
            // As many digests locked at once as queries in flight: commits
            // and GC deletes hold one each while they work.
            locks: pg_pool::Locks::new(options, options.max_connections)?,
        })
    }

    async fn client(&self) -> Result<pg_pool::Client, StorageError> {
        Ok(self.pool.client().await?)
    }
}

#[async_trait]
impl MetadataStore for PgMetadata {
    async fn blob_in_repo(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>, StorageError> {
        let c = self.client().await?;
        let row = opt(
            &c,
            "SELECT b.size FROM repositories r
             JOIN repository_blobs rb ON rb.repository_id = r.id
             JOIN blobs b ON b.digest = rb.digest
             WHERE r.name = $1 AND rb.digest = $2",
            &[&repo.as_str(), &digest.as_str()],
        )
        .await
        .map_err(db)?;
        row.map(|r| to_u64(r.get(0))).transpose()
    }

    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, StorageError> {
        let c = self.client().await?;
        let row = opt(
            &c,
            "SELECT size FROM blobs WHERE digest = $1",
            &[&digest.as_str()],
        )
        .await
        .map_err(db)?;
        row.map(|r| to_u64(r.get(0))).transpose()
    }

    async fn commit_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        size: u64,
        upload_id: Option<&str>,
        now: Millis,
    ) -> Result<(), StorageError> {
        let (repo, digest) = (repo.as_str(), digest.as_str());
        let size = to_i64(size)?;
        transaction!(self.pool, Serializable, StorageError, |tx| {
            let rid = ensure_repo(&tx, repo, now).await?;
            exec(
                &tx,
                "INSERT INTO blobs (digest, size, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (digest) DO NOTHING",
                &[&digest, &size, &now],
            )
            .await?;
            exec(
                &tx,
                "INSERT INTO repository_blobs (repository_id, digest, linked_at) VALUES ($1, $2, $3)
                 ON CONFLICT (repository_id, digest) DO UPDATE SET linked_at = excluded.linked_at",
                &[&rid, &digest, &now],
            )
            .await?;
            if let Some(id) = upload_id {
                exec(&tx, "DELETE FROM uploads WHERE id = $1", &[&id]).await?;
            }
            Ok(())
        })
        .map_err(from_tx)
    }

    async fn mount_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: MountSource<'_>,
        now: Millis,
    ) -> Result<Option<u64>, StorageError> {
        let (repo, digest) = (repo.as_str(), digest.as_str());
        transaction!(self.pool, Serializable, StorageError, |tx| {
            let row = match from {
                MountSource::Repository(from) => {
                    opt(
                        &tx,
                        "SELECT b.size FROM repositories r
                         JOIN repository_blobs rb ON rb.repository_id = r.id
                         JOIN blobs b ON b.digest = rb.digest
                         WHERE r.name = $1 AND rb.digest = $2",
                        &[&from.as_str(), &digest],
                    )
                    .await?
                }
                MountSource::Anywhere { namespace } => {
                    opt(
                        &tx,
                        "SELECT b.size FROM blobs b WHERE b.digest = $1
                         AND EXISTS (SELECT 1 FROM repository_blobs rb
                                     JOIN repositories r ON r.id = rb.repository_id
                                     WHERE rb.digest = b.digest AND ($2::text IS NULL
                                       OR (r.name >= ($2 || '/') AND r.name < ($2 || '0'))))",
                        &[&digest, &namespace],
                    )
                    .await?
                }
            };
            let Some(row) = row else { return Ok(None) };
            let size: i64 = row.get(0);
            let rid = ensure_repo(&tx, repo, now).await?;
            exec(
                &tx,
                "INSERT INTO repository_blobs (repository_id, digest, linked_at) VALUES ($1, $2, $3)
                 ON CONFLICT (repository_id, digest) DO UPDATE SET linked_at = excluded.linked_at",
                &[&rid, &digest, &now],
            )
            .await?;
            Ok(Some(store(to_u64(size))?))
        })
        .map_err(from_tx)
    }

    async fn unlink_blob(&self, repo: &RepoName, digest: &Digest) -> Result<bool, StorageError> {
        let (repo, digest) = (repo.as_str(), digest.as_str());
        transaction!(self.pool, Serializable, StorageError, |tx| {
            let n = exec(
                &tx,
                "DELETE FROM repository_blobs WHERE digest = $2
                 AND repository_id = (SELECT id FROM repositories WHERE name = $1)",
                &[&repo, &digest],
            )
            .await?;
            Ok(n > 0)
        })
        .map_err(from_tx)
    }

    async fn touch_link(
        &self,
        repo: &RepoName,
        digest: &Digest,
        now: Millis,
        older_than: Millis,
    ) -> Result<(), StorageError> {
        let (repo, digest) = (repo.as_str(), digest.as_str());
        transaction!(self.pool, Serializable, StorageError, |tx| {
            exec(
                &tx,
                "UPDATE repository_blobs SET linked_at = $3 WHERE digest = $2 AND linked_at < $4
                 AND repository_id = (SELECT id FROM repositories WHERE name = $1)",
                &[&repo, &digest, &now, &older_than],
            )
            .await?;
            Ok(())
        })
        .map_err(from_tx)
    }

    async fn create_upload(&self, u: &UploadRecord) -> Result<(), StorageError> {
        let size = to_i64(u.size)?;
        transaction!(self.pool, Serializable, StorageError, |tx| {
            exec(
                &tx,
                "INSERT INTO uploads (id, repository, size, hash_state, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &u.id,
                    &u.repo.as_str(),
                    &size,
                    &u.hash_state,
                    &u.created_at,
                    &u.updated_at,
                ],
            )
            .await?;
            Ok(())
        })
        .map_err(from_tx)
    }

    async fn get_upload(&self, id: &str) -> Result<Option<UploadRecord>, StorageError> {
        let c = self.client().await?;
        let row = opt(
            &c,
            "SELECT id, repository, size, hash_state, created_at, updated_at
             FROM uploads WHERE id = $1",
            &[&id],
        )
        .await
        .map_err(db)?;
        row.map(|r| {
            Ok(UploadRecord {
                id: r.get(0),
                repo: RepoName::parse(r.get(1)).map_err(corrupt)?,
                size: to_u64(r.get(2))?,
                hash_state: r.get(3),
                created_at: r.get(4),
                updated_at: r.get(5),
            })
        })
        .transpose()
    }

    async fn touch_upload(&self, id: &str, now: Millis) -> Result<bool, StorageError> {
        transaction!(self.pool, Serializable, StorageError, |tx| {
            let n = exec(
                &tx,
                "UPDATE uploads SET updated_at = $2 WHERE id = $1",
                &[&id, &now],
            )
            .await?;
            Ok(n == 1)
        })
        .map_err(from_tx)
    }

    async fn delete_upload(&self, id: &str) -> Result<bool, StorageError> {
        transaction!(self.pool, Serializable, StorageError, |tx| {
            Ok(exec(&tx, "DELETE FROM uploads WHERE id = $1", &[&id]).await? > 0)
        })
        .map_err(from_tx)
    }

    async fn manifest_by_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<StoredManifest>, StorageError> {
        let c = self.client().await?;
        let row = opt(
            &c,
            "SELECT m.digest, m.media_type, m.content FROM repositories r
             JOIN tags t ON t.repository_id = r.id
             JOIN manifests m ON m.repository_id = r.id AND m.digest = t.manifest_digest
             WHERE r.name = $1 AND t.name = $2",
            &[&repo.as_str(), &tag.as_str()],
        )
        .await
        .map_err(db)?;
        row.as_ref().map(stored_manifest).transpose()
    }

    async fn manifest_by_digest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<StoredManifest>, StorageError> {
        let c = self.client().await?;
        let row = opt(
            &c,
            "SELECT m.digest, m.media_type, m.content FROM repositories r
             JOIN manifests m ON m.repository_id = r.id
             WHERE r.name = $1 AND m.digest = $2",
            &[&repo.as_str(), &digest.as_str()],
        )
        .await
        .map_err(db)?;
        row.as_ref().map(stored_manifest).transpose()
    }

    async fn put_manifest(&self, m: NewManifest<'_>) -> Result<PutManifestOutcome, StorageError> {
        let repo = m.repo.as_str();
        let digest = m.digest.as_str();
        let p = m.parsed;
        let now = m.now;
        let size = to_i64(m.content.len() as u64)?;
        let content_size = to_i64(p.content_size)?;
        let platform = p
            .platform
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(corrupt)?;
        let subject = p.subject.as_ref().map(|s| s.as_str().to_owned());
        let mut children = Vec::with_capacity(p.children.len());
        for (i, c) in p.children.iter().enumerate() {
            let platform = c
                .platform
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(corrupt)?;
            children.push((i as i64, c.digest.as_str(), platform));
        }
        transaction!(self.pool, Serializable, StorageError, |tx| {
            let rid = ensure_repo(&tx, repo, now).await?;
            // The references are checked in the transaction that pins them
            // (manifest_blobs rows): under SERIALIZABLE, a GC deleting the
            // link or blob concurrently makes one of the two run again.
            for b in &p.blobs {
                let linked = opt(
                    &tx,
                    "SELECT 1 FROM repository_blobs WHERE repository_id = $1 AND digest = $2",
                    &[&rid, &b.as_str()],
                )
                .await?;
                if linked.is_none() {
                    return Ok(PutManifestOutcome::MissingBlob(b.clone()));
                }
            }
            for c in &p.children {
                let present = opt(
                    &tx,
                    "SELECT 1 FROM manifests WHERE repository_id = $1 AND digest = $2",
                    &[&rid, &c.digest.as_str()],
                )
                .await?;
                if present.is_none() {
                    return Ok(PutManifestOutcome::MissingManifest(c.digest.clone()));
                }
            }
            let inserted = exec(
                &tx,
                "INSERT INTO manifests (repository_id, digest, media_type, artifact_type,
                    config_media_type, subject, annotations, size, content_size, content,
                    created_at, pushed_at, platform)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12)
                 ON CONFLICT (repository_id, digest) DO NOTHING",
                &[
                    &rid,
                    &digest,
                    &p.media_type,
                    &p.artifact_type,
                    &p.config_media_type,
                    &subject,
                    &p.annotations,
                    &size,
                    &content_size,
                    &m.content,
                    &now,
                    &platform,
                ],
            )
            .await?;
            if inserted == 0 {
                // Re-pushed: the content is identical (same digest); restart
                // its GC grace period.
                exec(
                    &tx,
                    "UPDATE manifests SET pushed_at = $3 WHERE repository_id = $1 AND digest = $2",
                    &[&rid, &digest, &now],
                )
                .await?;
            } else {
                for b in &p.blobs {
                    exec(
                        &tx,
                        "INSERT INTO manifest_blobs (repository_id, manifest_digest, blob_digest)
                         VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                        &[&rid, &digest, &b.as_str()],
                    )
                    .await?;
                }
                for b in &p.optional_blobs {
                    exec(
                        &tx,
                        "INSERT INTO manifest_blobs (repository_id, manifest_digest, blob_digest)
                         SELECT $1, $2, $3 WHERE EXISTS
                           (SELECT 1 FROM repository_blobs WHERE repository_id = $1 AND digest = $3)
                         ON CONFLICT DO NOTHING",
                        &[&rid, &digest, &b.as_str()],
                    )
                    .await?;
                }
                for (i, child, platform) in &children {
                    exec(
                        &tx,
                        "INSERT INTO manifest_children (repository_id, parent_digest, position, child_digest, platform)
                         VALUES ($1, $2, $3, $4, $5)",
                        &[&rid, &digest, i, child, platform],
                    )
                    .await?;
                }
            }
            for t in m.tags {
                exec(
                    &tx,
                    "INSERT INTO tags (repository_id, name, manifest_digest, updated_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (repository_id, name) DO UPDATE
                     SET manifest_digest = excluded.manifest_digest, updated_at = excluded.updated_at",
                    &[&rid, &t.as_str(), &digest, &now],
                )
                .await?;
            }
            exec(
                &tx,
                "UPDATE repositories SET updated_at = $2 WHERE id = $1",
                &[&rid, &now],
            )
            .await?;
            Ok(PutManifestOutcome::Stored)
        },
        // A refused manifest leaves nothing behind, not even its repository.
        keep |outcome| *outcome == PutManifestOutcome::Stored)
        .map_err(from_tx)
    }

    async fn delete_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<bool, StorageError> {
        let (repo, digest) = (repo.as_str(), digest.as_str());
        transaction!(self.pool, Serializable, StorageError, |tx| {
            // Tags, references and children go with it (ON DELETE CASCADE).
            let n = exec(
                &tx,
                "DELETE FROM manifests WHERE digest = $2
                 AND repository_id = (SELECT id FROM repositories WHERE name = $1)",
                &[&repo, &digest],
            )
            .await?;
            Ok(n > 0)
        })
        .map_err(from_tx)
    }

    async fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<bool, StorageError> {
        let (repo, tag) = (repo.as_str(), tag.as_str());
        transaction!(self.pool, Serializable, StorageError, |tx| {
            let n = exec(
                &tx,
                "DELETE FROM tags WHERE name = $2
                 AND repository_id = (SELECT id FROM repositories WHERE name = $1)",
                &[&repo, &tag],
            )
            .await?;
            Ok(n > 0)
        })
        .map_err(from_tx)
    }

    async fn list_tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        limit: usize,
    ) -> Result<Option<NameList>, StorageError> {
        let c = self.client().await?;
        let last = last.unwrap_or("");
        // One statement: the repository's existence and its tags from one
        // snapshot. The LEFT JOIN yields one row with a NULL name for a
        // repository without (matching) tags.
        let rows = all(
            &c,
            "SELECT t.name FROM repositories r
             LEFT JOIN LATERAL (SELECT name FROM tags WHERE repository_id = r.id AND name > $2
                                ORDER BY name LIMIT $3) t ON true
             WHERE r.name = $1 ORDER BY t.name",
            &[&repo.as_str(), &last, &sql_limit(limit)],
        )
        .await
        .map_err(db)?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut list = NameList::with_capacity(rows.len());
        for r in &rows {
            if let Some(name) = r.get::<_, Option<&str>>(0) {
                list.push(name);
            }
        }
        Ok(Some(list))
    }

    async fn list_repositories(
        &self,
        namespace: Option<&str>,
        last: Option<&str>,
        limit: usize,
    ) -> Result<NameList, StorageError> {
        let c = self.client().await?;
        let last = last.unwrap_or("");
        // '/' < '0' in byte order: names in a namespace sort between
        // "<ns>/" and "<ns>0", a range scan of the unique index.
        let rows = all(
            &c,
            "SELECT name FROM repositories WHERE name > $1
               AND ($3::text IS NULL OR (name >= ($3 || '/') AND name < ($3 || '0')))
             ORDER BY name LIMIT $2",
            &[&last, &sql_limit(limit), &namespace],
        )
        .await
        .map_err(db)?;
        names(&rows, limit)
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>, StorageError> {
        let c = self.client().await?;
        let rows = all(
            &c,
            "SELECT m.digest, m.media_type, m.size, m.artifact_type, m.annotations
             FROM repositories r JOIN manifests m ON m.repository_id = r.id
             WHERE r.name = $1 AND m.subject = $2
               AND ($3::text IS NULL OR m.artifact_type = $3)
             ORDER BY m.created_at, m.digest",
            &[&repo.as_str(), &subject.as_str(), &artifact_type],
        )
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(Referrer {
                    digest: parse_digest(r.get(0))?,
                    media_type: r.get(1),
                    size: to_u64(r.get(2))?,
                    artifact_type: r.get(3),
                    annotations: r.get(4),
                })
            })
            .collect()
    }

    async fn delete_repository(
        &self,
        repo: &RepoName,
    ) -> Result<Option<Vec<String>>, StorageError> {
        let repo = repo.as_str();
        transaction!(self.pool, Serializable, StorageError, |tx| {
            let uploads: Vec<String> = all(
                &tx,
                "DELETE FROM uploads WHERE repository = $1 RETURNING id",
                &[&repo],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
            let rid: Option<i64> =
                opt(&tx, "SELECT id FROM repositories WHERE name = $1", &[&repo])
                    .await?
                    .map(|r| r.get(0));
            let Some(rid) = rid else {
                return Ok(if uploads.is_empty() {
                    None
                } else {
                    Some(uploads)
                });
            };
            // Children first: tags reference manifests, which reference the repository.
            exec(&tx, "DELETE FROM tags WHERE repository_id = $1", &[&rid]).await?;
            exec(
                &tx,
                "DELETE FROM manifests WHERE repository_id = $1",
                &[&rid],
            )
            .await?;
            exec(
                &tx,
                "DELETE FROM repository_blobs WHERE repository_id = $1",
                &[&rid],
            )
            .await?;
            exec(&tx, "DELETE FROM repositories WHERE id = $1", &[&rid]).await?;
            Ok(Some(uploads))
        })
        .map_err(from_tx)
    }

    async fn repository_page(
        &self,
        namespace: Option<&str>,
        filter: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<RepositoryPage, StorageError> {
        let filter = filter.filter(|f| !f.is_empty());
        let after = after.unwrap_or("");
        let limit = sql_limit(limit);
        // The count and the page from one snapshot, as SQLite's reader sees them.
        transaction!(self.pool, RepeatableRead, StorageError, |tx| {
            const WHERE: &str = "($1::text IS NULL OR (r.name >= ($1 || '/') AND r.name < ($1 || '0')))
                                 AND ($2::text IS NULL OR strpos(r.name, $2) > 0)";
            let total: i64 = opt(
                &tx,
                &format!("SELECT count(*) FROM repositories r WHERE {WHERE}"),
                &[&namespace, &filter],
            )
            .await?
            .map(|r| r.get(0))
            .unwrap_or(0);
            let rows = all(
                &tx,
                &format!(
                    "SELECT r.id, r.name, r.updated_at,
                       (SELECT count(*) FROM tags t WHERE t.repository_id = r.id),
                       ((SELECT coalesce(sum(b.size), 0) FROM blobs b WHERE b.digest IN
                          (SELECT mb.blob_digest FROM manifest_blobs mb WHERE mb.repository_id = r.id))
                       + (SELECT coalesce(sum(m.size), 0) FROM manifests m WHERE m.repository_id = r.id))::bigint
                     FROM repositories r WHERE {WHERE} AND r.name > $3
                     ORDER BY r.name LIMIT $4"
                ),
                &[&namespace, &filter, &after, &limit],
            )
            .await?;
            let mut repositories = Vec::with_capacity(rows.len());
            for r in &rows {
                let id: i64 = r.get(0);
                let found: Vec<String> = all(
                    &tx,
                    "SELECT m.platform FROM tags t JOIN manifests m
                       ON m.repository_id = t.repository_id AND m.digest = t.manifest_digest
                     WHERE t.repository_id = $1 AND m.platform IS NOT NULL
                     UNION
                     SELECT ch.platform FROM tags t JOIN manifest_children ch
                       ON ch.repository_id = t.repository_id AND ch.parent_digest = t.manifest_digest
                     WHERE t.repository_id = $1 AND ch.platform IS NOT NULL",
                    &[&id],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
                repositories.push(RepositorySummary {
                    name: r.get(1),
                    tag_count: store(to_u64(r.get(3)))?,
                    size: store(to_u64(r.get(4)))?,
                    last_push: r.get(2),
                    platforms: platform_names(found),
                });
            }
            Ok(RepositoryPage {
                repositories,
                total: store(to_u64(total))?,
            })
        })
        .map_err(from_tx)
    }

    async fn repository_tags(
        &self,
        repo: &RepoName,
    ) -> Result<Option<Vec<TagDetail>>, StorageError> {
        let repo = repo.as_str();
        transaction!(self.pool, RepeatableRead, StorageError, |tx| {
            let rid: Option<i64> =
                opt(&tx, "SELECT id FROM repositories WHERE name = $1", &[&repo])
                    .await?
                    .map(|r| r.get(0));
            let Some(rid) = rid else { return Ok(None) };
            let rows = all(
                &tx,
                "SELECT t.name, m.digest, m.media_type, m.artifact_type, t.updated_at, m.platform,
                   (m.size + coalesce((SELECT sum(cm.size + cm.content_size)
                     FROM manifest_children ch JOIN manifests cm
                       ON cm.repository_id = ch.repository_id AND cm.digest = ch.child_digest
                     WHERE ch.repository_id = m.repository_id AND ch.parent_digest = m.digest),
                     -- An image: its config and layers. (An index's
                     -- content_size counts its children's manifests only.)
                     m.content_size))::bigint
                 FROM tags t JOIN manifests m
                   ON m.repository_id = t.repository_id AND m.digest = t.manifest_digest
                 WHERE t.repository_id = $1 ORDER BY t.name",
                &[&rid],
            )
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let digest: &str = r.get(1);
                let mut found: Vec<String> = r.get::<_, Option<String>>(5).into_iter().collect();
                found.extend(
                    all(
                        &tx,
                        "SELECT platform FROM manifest_children
                         WHERE repository_id = $1 AND parent_digest = $2 AND platform IS NOT NULL
                         ORDER BY position",
                        &[&rid, &digest],
                    )
                    .await?
                    .iter()
                    .map(|r| r.get::<_, String>(0)),
                );
                out.push(TagDetail {
                    tag: r.get(0),
                    digest: store(parse_digest(digest))?,
                    media_type: r.get(2),
                    artifact_type: r.get(3),
                    size: store(to_u64(r.get(6)))?,
                    pushed_at: r.get(4),
                    platforms: platform_names(found),
                });
            }
            Ok(Some(out))
        })
        .map_err(from_tx)
    }

    async fn lock_digest(&self, digest: &Digest) -> Result<SharedLock, StorageError> {
        Ok(SharedLock::postgres(
            self.locks
                .lock(DIGEST_LOCK_CLASS, digest_lock_key(digest))
                .await?,
        ))
    }

    async fn try_lock_gc(&self) -> Result<Option<SharedLock>, StorageError> {
        Ok(self
            .locks
            .try_lock(GC_PASS_LOCK_CLASS, 0)
            .await?
            .map(SharedLock::postgres))
    }

    async fn gc_metadata(&self, cutoff: Millis) -> Result<MetadataGcReport, StorageError> {
        transaction!(self.pool, Serializable, StorageError, |tx| {
            // One collector at a time across replicas; pushes do not take
            // it (SERIALIZABLE orders them against this transaction).
            exec(&tx, "SELECT pg_advisory_xact_lock($1)", &[&GC_LOCK]).await?;
            // A manifest lives while it is tagged, recently pushed, listed by
            // a living index, or refers (as `subject`) to a living manifest.
            // (PostgreSQL allows one recursive reference, so both kinds of
            // edge are one relation.)
            let manifests = exec(
                &tx,
                "WITH RECURSIVE edges(repository_id, from_digest, to_digest) AS (
                    SELECT repository_id, parent_digest, child_digest FROM manifest_children
                    UNION ALL
                    SELECT repository_id, subject, digest FROM manifests WHERE subject IS NOT NULL
                 ), alive(repository_id, digest) AS (
                    SELECT m.repository_id, m.digest FROM manifests m
                    WHERE m.pushed_at >= $1
                       OR EXISTS (SELECT 1 FROM tags t
                                  WHERE t.repository_id = m.repository_id
                                    AND t.manifest_digest = m.digest)
                    UNION
                    SELECT e.repository_id, e.to_digest FROM edges e
                    JOIN alive a ON a.repository_id = e.repository_id AND a.digest = e.from_digest
                 )
                 DELETE FROM manifests WHERE (repository_id, digest) NOT IN
                    (SELECT repository_id, digest FROM alive)",
                &[&cutoff],
            )
            .await?;
            let links = exec(
                &tx,
                "DELETE FROM repository_blobs WHERE linked_at < $1 AND NOT EXISTS
                    (SELECT 1 FROM manifest_blobs mb
                     WHERE mb.repository_id = repository_blobs.repository_id
                       AND mb.blob_digest = repository_blobs.digest)",
                &[&cutoff],
            )
            .await?;
            let repositories = exec(
                &tx,
                "DELETE FROM repositories WHERE updated_at < $1
                   AND NOT EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = repositories.id)
                   AND NOT EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.repository_id = repositories.id)
                   AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.repository = repositories.name)",
                &[&cutoff],
            )
            .await?;
            Ok(MetadataGcReport {
                manifests,
                links,
                repositories,
            })
        })
        .map_err(from_tx)
    }

    async fn gc_blob_candidates(
        &self,
        cutoff: Millis,
        limit: usize,
    ) -> Result<Vec<(Digest, u64)>, StorageError> {
        let c = self.client().await?;
        let rows = all(
            &c,
            "SELECT b.digest, b.size FROM blobs b WHERE b.created_at < $1
               AND NOT EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = b.digest)
               AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob_digest = b.digest)
             LIMIT $2",
            &[&cutoff, &sql_limit(limit)],
        )
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| Ok((parse_digest(r.get(0))?, to_u64(r.get(1))?)))
            .collect()
    }

    async fn gc_forget_blob(&self, digest: &Digest, cutoff: Millis) -> Result<bool, StorageError> {
        let digest = digest.as_str();
        transaction!(self.pool, Serializable, StorageError, |tx| {
            let n = exec(
                &tx,
                "DELETE FROM blobs WHERE digest = $1 AND created_at < $2
                   AND NOT EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = blobs.digest)
                   AND NOT EXISTS (SELECT 1 FROM manifest_blobs mb WHERE mb.blob_digest = blobs.digest)",
                &[&digest, &cutoff],
            )
            .await?;
            Ok(n > 0)
        })
        .map_err(from_tx)
    }

    async fn gc_expire_uploads(&self, cutoff: Millis) -> Result<Vec<String>, StorageError> {
        transaction!(self.pool, Serializable, StorageError, |tx| {
            Ok(all(
                &tx,
                "DELETE FROM uploads WHERE updated_at < $1 RETURNING id",
                &[&cutoff],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
        })
        .map_err(from_tx)
    }

    async fn upload_exists(&self, id: &str) -> Result<bool, StorageError> {
        let c = self.client().await?;
        Ok(opt(&c, "SELECT 1 FROM uploads WHERE id = $1", &[&id])
            .await
            .map_err(db)?
            .is_some())
    }
}
