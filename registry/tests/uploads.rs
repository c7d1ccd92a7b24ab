//! Upload sessions whose staged data disappeared (a crash left it orphaned
//! and the GC sweep took it) end cleanly instead of failing forever.

#![allow(clippy::unwrap_used)]

use registry::storage::open_embedded;
use registry::storage::sqlite::Synchronous;
use registry::{Algorithm, Digest, Registry, RegistryConfig, RegistryError};

mod common;
use common::*;

#[tokio::test]
async fn a_session_whose_staged_data_is_gone_is_unknown_not_broken() {
    let dir = tempfile::tempdir().unwrap();
    let (blobs, meta) = open_embedded(dir.path(), Synchronous::Normal).unwrap();
    let r = Registry::new(blobs.clone(), meta, RegistryConfig::default());
    let name = repo("acme/app");
    let data = b"every byte acknowledged";
    let up = r.start_upload(&name, Algorithm::Sha256).await.unwrap();
    r.upload_chunk(&name, &up.id, None, stream(data))
        .await
        .unwrap();
    blobs.upload_discard(&up.id).await.unwrap();
    let err = r
        .finish_upload(&name, &up.id, &Digest::sha256_of(data), None, None)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::UploadUnknown), "{err:?}");
    assert!(matches!(
        r.upload_status(&name, &up.id).await,
        Err(RegistryError::UploadUnknown)
    ));
    // Starting over works.
    push_blob(&r, &name, data).await;
}
