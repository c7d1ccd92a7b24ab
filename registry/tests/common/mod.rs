//! Helpers shared by the registry's integration tests: a registry on the
//! real engines (filesystem blobs in a temp dir with SQLite or PostgreSQL
//! metadata; or the scale-out pair, PostgreSQL metadata with blobs in a
//! bucket of a private Garage), tests run on each, and pushes through the
//! service.

#![allow(clippy::unwrap_used, dead_code)]

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use pg_pool::ConnectOptions;
use registry::storage::sqlite::Synchronous;
use registry::storage::{BlobEngine, ByteStream, Engines, MetadataEngine, S3Settings, open};
use registry::{Digest, Reference, Registry, RegistryConfig, RepoName, Tag};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The engines a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// SQLite metadata, filesystem blobs (the embedded default).
    Sqlite,
    /// PostgreSQL metadata, filesystem blobs.
    Postgres,
    /// PostgreSQL metadata, blobs in S3 (Garage): the scale-out pair.
    S3,
}

/// The part size of S3 tests: S3's smallest, so that multipart uploads
/// need only a few MiB.
pub const S3_PART_SIZE: usize = registry::storage::s3::MIN_PART_SIZE;

/// Where a test's stores live, so that they can be opened again (a restart
/// of the process): a temp data directory, plus a fresh database on the
/// test process's private PostgreSQL server for [`Engine::Postgres`].
pub struct Backing {
    pub dir: tempfile::TempDir,
    pub engine: Engine,
    database: Option<String>,
    /// The test's bucket, for [`Engine::S3`].
    pub s3: Option<test_support::S3Target>,
}

impl Backing {
    pub fn new(engine: Engine) -> Backing {
        let database = match engine {
            Engine::Sqlite => None,
            Engine::Postgres | Engine::S3 => {
                Some(test_support::Postgres::shared().create_database())
            }
        };
        let s3 = (engine == Engine::S3).then(|| test_support::Garage::shared().create_bucket());
        Backing {
            dir: tempfile::tempdir().unwrap(),
            engine,
            database,
            s3,
        }
    }

    /// The blob engine: the test's bucket, or files in the data directory.
    pub fn blob_engine(&self) -> BlobEngine {
        match &self.s3 {
            Some(t) => BlobEngine::from_url(
                Some(&format!("s3://{}/berth", t.bucket)),
                S3Settings {
                    endpoint: Some(t.endpoint.clone()),
                    region: t.region.clone(),
                    access_key_id: Some(t.key_id.clone()),
                    secret_access_key: Some(t.secret.clone()),
                    allow_http: true,
                    part_size: S3_PART_SIZE,
                },
            )
            .unwrap(),
            None => BlobEngine::Filesystem,
        }
    }

    /// A raw client of the test's bucket (under the store's key prefix),
    /// for tests that tamper with what the store wrote.
    pub fn bucket(&self) -> object_store::aws::AmazonS3 {
        let t = self.s3.as_ref().expect("an S3 test");
        let _ = rustls::crypto::ring::default_provider().install_default();
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&t.bucket)
            .with_endpoint(&t.endpoint)
            .with_region(&t.region)
            .with_access_key_id(&t.key_id)
            .with_secret_access_key(&t.secret)
            .with_allow_http(true)
            .build()
            .unwrap()
    }

    /// Overwrites the progress record of upload `id` with garbage: what a
    /// torn or damaged record looks like to the store.
    pub async fn damage_progress(&self, id: &str) {
        match self.engine {
            Engine::S3 => {
                use object_store::ObjectStoreExt;
                let key = object_store::path::Path::from(format!("berth/uploads/{id}/progress"));
                self.bucket()
                    .put(&key, vec![0xa5u8; 8192].into())
                    .await
                    .unwrap();
            }
            Engine::Sqlite | Engine::Postgres => {
                let record = self.dir.path().join(format!("store/uploads/{id}.progress"));
                assert!(
                    record.exists(),
                    "no progress record at {}",
                    record.display()
                );
                std::fs::write(&record, vec![0xa5; 8192]).unwrap();
            }
        }
    }

    /// Opens the engines (again), with SQLite at `synchronous`.
    pub async fn open_with(&self, synchronous: Synchronous) -> Engines {
        let engine = match (&self.engine, &self.database) {
            (Engine::Postgres | Engine::S3, Some(db)) => {
                let pg = test_support::Postgres::shared();
                MetadataEngine::Postgres(ConnectOptions {
                    url: pg.url(db),
                    password: Some(pg.password().to_owned()),
                    max_connections: 8,
                })
            }
            _ => MetadataEngine::Embedded { synchronous },
        };
        open(self.dir.path(), &engine, &self.blob_engine())
            .await
            .unwrap()
    }

    pub async fn open(&self) -> Engines {
        self.open_with(Synchronous::Normal).await
    }
}

pub struct Fixture {
    pub _backing: Backing,
    pub registry: Registry,
}

pub async fn fixture(engine: Engine, grace: Duration, upload_ttl: Duration) -> Fixture {
    let backing = Backing::new(engine);
    let (blobs, meta) = backing.open().await;
    let config = RegistryConfig {
        gc_grace: grace,
        upload_ttl,
        ..RegistryConfig::default()
    };
    Fixture {
        registry: Registry::new(blobs, meta, config),
        _backing: backing,
    }
}

/// Runs each named `async fn(Engine)` as a test on each metadata engine
/// (`sqlite::NAME`, `postgres::NAME`); `NAME { flavor = … }` passes
/// arguments to `#[tokio::test]`.
#[macro_export]
macro_rules! on_both_engines {
    ($($name:ident $({ $($args:tt)* })?),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test$(($($args)*))?]
            async fn $name() {
                super::$name($crate::common::Engine::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test$(($($args)*))?]
            async fn $name() {
                super::$name($crate::common::Engine::Postgres).await
            })*
        }
    };
}

/// [`on_both_engines!`] plus `s3::NAME`: the test once more on the
/// scale-out pair (PostgreSQL metadata, blobs in Garage), for suites that
/// exercise the blob store.
#[macro_export]
macro_rules! on_every_engine {
    ($($name:ident $({ $($args:tt)* })?),* $(,)?) => {
        $crate::on_both_engines!($($name $({ $($args)* })?),*);
        mod s3 {
            $(#[tokio::test$(($($args)*))?]
            async fn $name() {
                super::$name($crate::common::Engine::S3).await
            })*
        }
    };
}

pub fn stream(data: &[u8]) -> ByteStream {
    futures::stream::iter(vec![Ok(Bytes::copy_from_slice(data))]).boxed()
}

pub fn repo(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

pub fn tag(s: &str) -> Reference {
    Reference::Tag(Tag::parse(s).unwrap())
}

pub async fn push_blob(r: &Registry, name: &RepoName, data: &[u8]) -> Digest {
    let d = Digest::sha256_of(data);
    r.put_blob(name, &d, stream(data)).await.unwrap();
    d
}

/// Pushes an image manifest over the given layer contents; returns
/// (manifest digest, blob digests).
pub async fn push_image(
    r: &Registry,
    name: &RepoName,
    reference: &Reference,
    layers: &[&[u8]],
) -> (Digest, Vec<Digest>) {
    let config = format!("{{\"layers\":{}}}", layers.len());
    let config_digest = push_blob(r, name, config.as_bytes()).await;
    let mut blobs = vec![config_digest.clone()];
    let mut descs = Vec::new();
    for l in layers {
        let d = push_blob(r, name, l).await;
        descs.push(format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":{}}}"#,
            l.len()
        ));
        blobs.push(d);
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{}]}}"#,
        config.len(),
        descs.join(",")
    );
    let pushed = r
        .put_manifest(
            name,
            reference,
            Some(OCI_MANIFEST),
            &Bytes::from(manifest),
            &[],
        )
        .await
        .unwrap();
    (pushed.digest, blobs)
}

pub async fn pullable(r: &Registry, name: &RepoName, blobs: &[Digest]) -> bool {
    for b in blobs {
        match r.read_blob(name, b, None).await {
            Ok(read) => {
                let mut body = read.body;
                let mut got = Vec::new();
                while let Some(c) = body.next().await {
                    got.extend_from_slice(&c.unwrap());
                }
                if &Digest::sha256_of(&got) != b {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

/// Waits long enough that everything written so far is older than a zero
/// grace period's cutoff (timestamps have millisecond resolution).
pub async fn age() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}
