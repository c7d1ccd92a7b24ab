//! Helpers shared by the registry's integration tests: a registry on the
//! real engines (filesystem blobs in a temp dir; SQLite or PostgreSQL
//! metadata), tests run on both, and pushes through the service.

#![allow(clippy::unwrap_used, dead_code)]

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use pg_pool::ConnectOptions;
use registry::storage::sqlite::Synchronous;
use registry::storage::{ByteStream, Engines, MetadataEngine, open};
use registry::{Digest, Reference, Registry, RegistryConfig, RepoName, Tag};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The metadata engine a test runs on; blobs are always on the filesystem.
#[derive(Debug, Clone, Copy)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// Where a test's stores live, so that they can be opened again (a restart
/// of the process): a temp data directory, plus a fresh database on the
/// test process's private PostgreSQL server for [`Engine::Postgres`].
pub struct Backing {
    pub dir: tempfile::TempDir,
    engine: Engine,
    database: Option<String>,
}

impl Backing {
    pub fn new(engine: Engine) -> Backing {
        let database = match engine {
            Engine::Sqlite => None,
            Engine::Postgres => Some(test_support::Postgres::shared().create_database()),
        };
        Backing {
            dir: tempfile::tempdir().unwrap(),
            engine,
            database,
        }
    }

    /// Opens the engines (again), with SQLite at `synchronous`.
    pub async fn open_with(&self, synchronous: Synchronous) -> Engines {
        let engine = match (&self.engine, &self.database) {
            (Engine::Postgres, Some(db)) => {
                let pg = test_support::Postgres::shared();
                MetadataEngine::Postgres(ConnectOptions {
                    url: pg.url(db),
                    password: Some(pg.password().to_owned()),
                    max_connections: 8,
                })
            }
            _ => MetadataEngine::Embedded { synchronous },
        };
        open(self.dir.path(), &engine).await.unwrap()
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
