//! Upload sessions across restarts: resumed where they were acknowledged
//! after the process restarts; ended cleanly (the client starts over) when
//! their staged data or progress is gone (a crash left it orphaned and the
//! GC sweep took it, or the machine restarted before it was durable). On
//! each engine pair, S3 included.

#![allow(clippy::unwrap_used)]

use registry::storage::sqlite::Synchronous;
use registry::storage::{UploadProgress, UploadRecord};
use registry::{Algorithm, Digest, Hasher, Registry, RegistryConfig, RegistryError};

mod common;
use common::*;

on_every_engine!(
    a_session_whose_staged_data_is_gone_is_unknown_not_broken,
    a_chunked_upload_resumes_after_a_restart_of_the_process,
    a_session_whose_progress_is_lost_is_unknown_and_gone,
    a_session_of_an_earlier_version_resumes_from_its_row,
);

async fn a_session_whose_staged_data_is_gone_is_unknown_not_broken(engine: Engine) {
    let backing = Backing::new(engine);
    let (blobs, meta) = backing.open_with(Synchronous::Normal).await;
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

/// The first `n` bytes of a deterministic test blob.
fn blob(n: usize) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

async fn a_chunked_upload_resumes_after_a_restart_of_the_process(engine: Engine) {
    let backing = Backing::new(engine);
    let data = blob(300_000);
    let name = repo("acme/app");
    let id = {
        let (blobs, meta) = backing.open_with(Synchronous::Full).await;
        let r = Registry::new(blobs, meta, RegistryConfig::default());
        let up = r.start_upload(&name, Algorithm::Sha256).await.unwrap();
        let s = r
            .upload_chunk(&name, &up.id, Some((0, 99_999)), stream(&data[..100_000]))
            .await
            .unwrap();
        assert_eq!(s.size, 100_000);
        let s = r
            .upload_chunk(&name, &up.id, None, stream(&data[100_000..250_000]))
            .await
            .unwrap();
        assert_eq!(s.size, 250_000);
        up.id
    };
    // A new process on the same data directory: nothing of the first one
    // is left in memory.
    let (blobs, meta) = backing.open_with(Synchronous::Full).await;
    let r = Registry::new(blobs.clone(), meta, RegistryConfig::default());
    assert_eq!(r.upload_status(&name, &id).await.unwrap().size, 250_000);
    // Out of order: told where it stands.
    assert!(matches!(
        r.upload_chunk(&name, &id, Some((0, 9)), stream(&data[..10]))
            .await,
        Err(RegistryError::RangeNotSatisfiable { size: 250_000 })
    ));
    let digest = Digest::sha256_of(&data);
    let size = r
        .finish_upload(
            &name,
            &id,
            &digest,
            Some((250_000, 299_999)),
            Some(stream(&data[250_000..])),
        )
        .await
        .unwrap();
    assert_eq!(size, 300_000);
    assert!(pullable(&r, &name, &[digest]).await);
    assert!(matches!(
        r.upload_status(&name, &id).await,
        Err(RegistryError::UploadUnknown)
    ));
    // Nothing of the session is left in the blob store.
    assert!(blobs.list_uploads().await.unwrap().is_empty());
}

async fn a_session_whose_progress_is_lost_is_unknown_and_gone(engine: Engine) {
    let backing = Backing::new(engine);
    let (blobs, meta) = backing.open_with(Synchronous::Normal).await;
    let r = Registry::new(blobs.clone(), meta, RegistryConfig::default());
    let name = repo("acme/app");
    let data = blob(10_000);
    let up = r.start_upload(&name, Algorithm::Sha256).await.unwrap();
    r.upload_chunk(&name, &up.id, None, stream(&data[..5_000]))
        .await
        .unwrap();
    // What a power loss leaves of a record written without fsync (or one
    // from before a reboot, which the store refuses the same way).
    backing.damage_progress(&up.id).await;
    // A status request only reports it; the next chunk ends the session.
    assert!(matches!(
        r.upload_status(&name, &up.id).await,
        Err(RegistryError::UploadUnknown)
    ));
    assert!(matches!(
        r.upload_chunk(&name, &up.id, None, stream(&data[5_000..]))
            .await,
        Err(RegistryError::UploadUnknown)
    ));
    // Its progress and staged bytes are gone.
    assert!(matches!(
        blobs.upload_progress(&up.id).await.unwrap(),
        UploadProgress::Missing
    ));
    assert!(blobs.list_uploads().await.unwrap().is_empty());
    assert!(matches!(
        r.finish_upload(&name, &up.id, &Digest::sha256_of(&data), None, None)
            .await,
        Err(RegistryError::UploadUnknown)
    ));
    push_blob(&r, &name, &data).await;
}

async fn a_session_of_an_earlier_version_resumes_from_its_row(engine: Engine) {
    // Berth versions before the progress files kept an upload's offset and
    // hash state in its metadata row.
    let backing = Backing::new(engine);
    let (blobs, meta) = backing.open_with(Synchronous::Normal).await;
    let name = repo("acme/app");
    let data = blob(20_000);
    let id = "0c9a3b4e-1f2d-4a5b-8c6d-7e8f90a1b2c3".to_owned();
    let w = blobs
        .upload_write(
            &id,
            0,
            stream(&data[..12_000]),
            Hasher::new(Algorithm::Sha256),
            u64::MAX,
        )
        .await
        .unwrap();
    meta.create_upload(&UploadRecord {
        id: id.clone(),
        repo: name.clone(),
        size: w.written,
        hash_state: w.hasher.save(),
        created_at: 1,
        updated_at: registry::storage::now_millis(),
    })
    .await
    .unwrap();
    let r = Registry::new(blobs, meta, RegistryConfig::default());
    assert_eq!(r.upload_status(&name, &id).await.unwrap().size, 12_000);
    let digest = Digest::sha256_of(&data);
    r.finish_upload(&name, &id, &digest, None, Some(stream(&data[12_000..])))
        .await
        .unwrap();
    assert!(pullable(&r, &name, &[digest]).await);
}
