//! Helpers shared by the registry's integration tests: a registry on the
//! real embedded engines in a temp dir, and pushes through the service.

#![allow(clippy::unwrap_used, dead_code)]

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use registry::storage::sqlite::Synchronous;
use registry::storage::{ByteStream, open_embedded};
use registry::{Digest, Reference, Registry, RegistryConfig, RepoName, Tag};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub registry: Registry,
}

pub fn fixture(grace: Duration, upload_ttl: Duration) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (blobs, meta) = open_embedded(dir.path(), Synchronous::Normal).unwrap();
    let config = RegistryConfig {
        gc_grace: grace,
        upload_ttl,
        ..RegistryConfig::default()
    };
    Fixture {
        registry: Registry::new(blobs, meta, config),
        _dir: dir,
    }
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
