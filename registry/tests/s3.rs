//! The S3 blob store on a real S3 server (a private Garage node, one
//! bucket per test) with PostgreSQL metadata, the scale-out pair: chunked
//! uploads whose chunks land on different replicas, resumption after a
//! cut body, nothing visible after a digest mismatch, concurrent writers
//! that cannot assemble unverified bytes, presigned GETs, and the S3
//! layout an operator sees in the bucket.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::ObjectStore;
use registry::storage::s3::S3BlobStore;
use registry::storage::{BlobEngine, BlobStore, ByteStream, UploadProgress};
use registry::{Algorithm, Digest, Hasher, Registry, RegistryConfig, RegistryError};

mod common;
use common::*;

const MIB: usize = 1 << 20;

/// The first `n` bytes of a deterministic test blob, varied by `seed`.
fn blob(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32)
        .map(|i| ((i ^ seed).wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

/// A body in pieces of `piece` bytes, as a network stream delivers it.
fn pieces(data: &[u8], piece: usize) -> ByteStream {
    let chunks: Vec<_> = data
        .chunks(piece)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks).boxed()
}

/// A body that delivers `data` and then fails, like a client that went away.
fn cut_after(data: &[u8]) -> ByteStream {
    let items = vec![
        Ok(Bytes::copy_from_slice(data)),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "client went away",
        )),
    ];
    futures::stream::iter(items).boxed()
}

async fn read_all(r: &Registry, name: &registry::RepoName, d: &Digest) -> Vec<u8> {
    let mut body = r.read_blob(name, d, None).await.unwrap().body;
    let mut out = Vec::new();
    while let Some(c) = body.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

/// Every key in the test's bucket.
async fn keys(backing: &Backing) -> Vec<String> {
    let bucket = backing.bucket();
    let mut listing = bucket.list(None);
    let mut out = Vec::new();
    while let Some(meta) = listing.next().await {
        out.push(meta.unwrap().location.to_string());
    }
    out.sort();
    out
}

/// Two replicas: two registries, each with its own blob store client and
/// database pool, over the same bucket and database.
async fn two_replicas(backing: &Backing) -> (Registry, Registry) {
    let (b1, m1) = backing.open().await;
    let (b2, m2) = backing.open().await;
    (
        Registry::new(b1, m1, RegistryConfig::default()),
        Registry::new(b2, m2, RegistryConfig::default()),
    )
}

fn s3_store(backing: &Backing) -> S3BlobStore {
    match backing.blob_engine() {
        BlobEngine::S3(o) => S3BlobStore::open(&o).unwrap(),
        BlobEngine::Filesystem => unreachable!("an S3 backing"),
    }
}

#[tokio::test]
async fn a_multipart_upload_alternating_between_replicas_reads_back_whole() {
    let backing = Backing::new(Engine::S3);
    let (r1, r2) = two_replicas(&backing).await;
    let name = repo("acme/app");
    // 23 MiB in PATCHes of 7 MiB (not aligned to the 5 MiB parts), each on
    // the other replica, the last 2 MiB with the closing PUT: four parts
    // and a tail.
    let data = blob(23 * MIB, 1);
    let digest = Digest::sha256_of(&data);
    let up = r1.start_upload(&name, Algorithm::Sha256).await.unwrap();
    let mut offset = 0;
    for (i, chunk) in data[..21 * MIB].chunks(7 * MIB).enumerate() {
        let r = if i % 2 == 0 { &r2 } else { &r1 };
        let end = offset + chunk.len() as u64 - 1;
        let s = r
            .upload_chunk(&name, &up.id, Some((offset, end)), pieces(chunk, 64 * 1024))
            .await
            .unwrap();
        offset = end + 1;
        assert_eq!(s.size, offset);
        // Either replica knows where the upload stands.
        assert_eq!(r1.upload_status(&name, &up.id).await.unwrap().size, offset);
        assert_eq!(r2.upload_status(&name, &up.id).await.unwrap().size, offset);
    }
    let size = r2
        .finish_upload(
            &name,
            &up.id,
            &digest,
            Some((offset, data.len() as u64 - 1)),
            Some(pieces(&data[21 * MIB..], 100_000)),
        )
        .await
        .unwrap();
    assert_eq!(size, data.len() as u64);
    // Read back through both replicas, whole and by ranges across part
    // boundaries.
    assert!(read_all(&r1, &name, &digest).await == data);
    assert!(read_all(&r2, &name, &digest).await == data);
    let read = r1
        .read_blob(
            &name,
            &digest,
            Some(registry::ByteRange::FromTo(
                5 * MIB as u64 - 10,
                10 * MIB as u64 + 9,
            )),
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut body = read.body;
    while let Some(c) = body.next().await {
        got.extend_from_slice(&c.unwrap());
    }
    assert!(got == data[5 * MIB - 10..10 * MIB + 10]);
    // The bucket holds the blob under its content address and nothing of
    // the upload.
    assert_eq!(
        keys(&backing).await,
        [format!("berth/blobs/sha256/{}", digest.hex())]
    );
}

#[tokio::test]
async fn a_small_blob_is_one_put_and_a_copy_not_a_multipart_upload() {
    let backing = Backing::new(Engine::S3);
    let store = s3_store(&backing);
    let data = blob(MIB, 2);
    let id = uuid::Uuid::new_v4().to_string();
    let w = store
        .upload_write(
            &id,
            0,
            pieces(&data, 8192),
            Hasher::new(Algorithm::Sha256),
            u64::MAX,
        )
        .await
        .unwrap();
    assert_eq!(w.written, data.len() as u64);
    // Staged: one tail object, no multipart marker.
    let staged = keys(&backing).await;
    assert_eq!(staged.len(), 1, "{staged:?}");
    assert!(staged[0].starts_with(&format!("berth/uploads/{id}/tail-")));
    let digest = w.hasher.finish();
    store
        .upload_commit(&id, data.len() as u64, &digest)
        .await
        .unwrap();
    store.upload_discard(&id).await.unwrap();
    assert_eq!(store.size(&digest).await.unwrap(), Some(data.len() as u64));
    assert_eq!(
        keys(&backing).await,
        [format!("berth/blobs/sha256/{}", digest.hex())]
    );
    // Empty blobs too.
    let id = uuid::Uuid::new_v4().to_string();
    let w = store
        .upload_write(&id, 0, pieces(&[], 1), Hasher::new(Algorithm::Sha256), 10)
        .await
        .unwrap();
    let empty = w.hasher.finish();
    store.upload_commit(&id, 0, &empty).await.unwrap();
    assert_eq!(store.size(&empty).await.unwrap(), Some(0));
    let mut body = store.read(&empty, 0, 0).await.unwrap();
    assert!(body.next().await.is_none());
}

#[tokio::test]
async fn an_interrupted_body_resumes_on_the_other_replica() {
    let backing = Backing::new(Engine::S3);
    let (r1, r2) = two_replicas(&backing).await;
    let name = repo("acme/app");
    let data = blob(14 * MIB, 3);
    let digest = Digest::sha256_of(&data);
    let up = r1.start_upload(&name, Algorithm::Sha256).await.unwrap();
    // 8 MiB arrive, then the connection drops: what arrived is kept (one
    // part and a tail) and the client is told where it stands.
    let err = r1
        .upload_chunk(&name, &up.id, None, cut_after(&data[..8 * MIB]))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::UploadInvalid(_)), "{err:?}");
    let at = r2.upload_status(&name, &up.id).await.unwrap().size;
    assert_eq!(at, 8 * MIB as u64);
    // The client resumes from there, on the other replica.
    r2.upload_chunk(
        &name,
        &up.id,
        Some((at, 12 * MIB as u64 - 1)),
        pieces(&data[8 * MIB..12 * MIB], 1 << 16),
    )
    .await
    .unwrap();
    r1.finish_upload(
        &name,
        &up.id,
        &digest,
        None,
        Some(pieces(&data[12 * MIB..], 1 << 16)),
    )
    .await
    .unwrap();
    assert!(read_all(&r2, &name, &digest).await == data);
}

#[tokio::test]
async fn a_digest_mismatch_leaves_nothing_visible() {
    let backing = Backing::new(Engine::S3);
    let (r1, r2) = two_replicas(&backing).await;
    let name = repo("acme/app");
    let data = blob(12 * MIB, 4);
    let actual = Digest::sha256_of(&data);
    let claimed = Digest::sha256_of(b"something else");
    let up = r1.start_upload(&name, Algorithm::Sha256).await.unwrap();
    r1.upload_chunk(&name, &up.id, None, pieces(&data[..6 * MIB], 1 << 16))
        .await
        .unwrap();
    let err = r2
        .finish_upload(
            &name,
            &up.id,
            &claimed,
            None,
            Some(pieces(&data[6 * MIB..], 1 << 16)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );
    // A monolithic upload with a wrong digest, too.
    let err = r1
        .put_blob(&name, &claimed, pieces(&data, 1 << 16))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );
    for d in [&actual, &claimed] {
        assert!(matches!(
            r1.read_blob(&name, d, None).await,
            Err(RegistryError::BlobUnknown)
        ));
    }
    // Not a byte left in the bucket: no blob, no staging (the multipart
    // uploads were aborted with them).
    assert_eq!(keys(&backing).await, Vec::<String>::new());
}

#[tokio::test]
async fn writers_racing_on_a_part_cannot_commit_bytes_that_were_not_hashed() {
    let backing = Backing::new(Engine::S3);
    // Two replicas' stores writing the same session at once (a misbehaving
    // client): each believes it wrote part 2.
    let a = s3_store(&backing);
    let b = s3_store(&backing);
    let id = uuid::Uuid::new_v4().to_string();
    let first = blob(6 * MIB, 5);
    a.upload_save_progress(&id, 0, &Hasher::new(Algorithm::Sha256))
        .await
        .unwrap();
    let w = a
        .upload_write(
            &id,
            0,
            pieces(&first, 1 << 16),
            Hasher::new(Algorithm::Sha256),
            u64::MAX,
        )
        .await
        .unwrap();
    a.upload_save_progress(&id, w.written, &w.hasher)
        .await
        .unwrap();
    let base = w.hasher;
    let mine = blob(6 * MIB, 6);
    let theirs = blob(6 * MIB, 7);
    let wa = a
        .upload_write(
            &id,
            6 * MIB as u64,
            pieces(&mine, 1 << 16),
            base.clone(),
            u64::MAX,
        )
        .await
        .unwrap();
    let wb = b
        .upload_write(
            &id,
            6 * MIB as u64,
            pieces(&theirs, 1 << 16),
            base,
            u64::MAX,
        )
        .await
        .unwrap();
    // A records its progress last: the record names A's part 2, but S3
    // holds B's bytes under that number.
    b.upload_save_progress(&id, 12 * MIB as u64, &wb.hasher)
        .await
        .unwrap();
    a.upload_save_progress(&id, 12 * MIB as u64, &wa.hasher)
        .await
        .unwrap();
    let digest_a = wa.hasher.finish();
    let digest_b = wb.hasher.finish();
    let err = a
        .upload_commit(&id, 12 * MIB as u64, &digest_a)
        .await
        .unwrap_err();
    // Refused by S3 itself: the recorded ETag of part 2 is not what it holds.
    assert!(
        matches!(&err, registry::storage::StorageError::Corrupt(why) if why.contains("completing the multipart upload")),
        "{err:?}"
    );
    // B's digest is not what the record hashed: refused as well.
    let err = b
        .upload_commit(&id, 12 * MIB as u64, &digest_b)
        .await
        .unwrap_err();
    assert!(
        matches!(err, registry::storage::StorageError::Corrupt(_)),
        "{err:?}"
    );
    assert_eq!(a.size(&digest_a).await.unwrap(), None);
    assert_eq!(a.size(&digest_b).await.unwrap(), None);
    a.upload_discard(&id).await.unwrap();
    assert_eq!(keys(&backing).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_damaged_progress_record_is_lost_not_trusted() {
    let backing = Backing::new(Engine::S3);
    let store = s3_store(&backing);
    let id = uuid::Uuid::new_v4().to_string();
    store
        .upload_save_progress(&id, 0, &Hasher::new(Algorithm::Sha256))
        .await
        .unwrap();
    assert!(matches!(
        store.upload_progress(&id).await.unwrap(),
        UploadProgress::Current { size: 0, .. }
    ));
    backing.damage_progress(&id).await;
    assert!(matches!(
        store.upload_progress(&id).await.unwrap(),
        UploadProgress::Lost
    ));
    let err = store
        .upload_write(&id, 0, pieces(b"x", 1), Hasher::new(Algorithm::Sha256), 10)
        .await
        .unwrap_err();
    assert!(
        matches!(err, registry::storage::StorageError::Corrupt(_)),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_digest_of_another_algorithm_is_checked_on_the_assembled_bytes() {
    let backing = Backing::new(Engine::S3);
    let (r1, r2) = two_replicas(&backing).await;
    let name = repo("acme/app");
    let data = blob(11 * MIB, 8);
    // Hashed as sha256 while streaming; the client finishes with sha512.
    let up = r1.start_upload(&name, Algorithm::Sha256).await.unwrap();
    r1.upload_chunk(&name, &up.id, None, pieces(&data, 1 << 16))
        .await
        .unwrap();
    let d512 = Digest::of_bytes(Algorithm::Sha512, &data);
    r2.finish_upload(&name, &up.id, &d512, None, None)
        .await
        .unwrap();
    assert!(read_all(&r1, &name, &d512).await == data);
}

#[tokio::test]
async fn blobs_above_the_copy_limit_are_copied_through_the_server() {
    let backing = Backing::new(Engine::S3);
    // CopyObject takes 5 GiB at most on AWS; a lowered limit takes the
    // other path with a few MiB.
    let store = s3_store(&backing).with_copy_limit(MIB as u64);
    let data = blob(12 * MIB, 9);
    let id = uuid::Uuid::new_v4().to_string();
    let w = store
        .upload_write(
            &id,
            0,
            pieces(&data, 1 << 16),
            Hasher::new(Algorithm::Sha256),
            u64::MAX,
        )
        .await
        .unwrap();
    let digest = w.hasher.finish();
    store
        .upload_commit(&id, data.len() as u64, &digest)
        .await
        .unwrap();
    store.upload_discard(&id).await.unwrap();
    let mut body = store.read(&digest, 0, data.len() as u64).await.unwrap();
    let mut got = Vec::new();
    while let Some(c) = body.next().await {
        got.extend_from_slice(&c.unwrap());
    }
    assert!(got == data);
}

#[tokio::test]
async fn a_presigned_url_serves_the_blob_without_credentials() {
    let backing = Backing::new(Engine::S3);
    let (blobs, meta) = backing.open().await;
    let r = Registry::new(blobs.clone(), meta, RegistryConfig::default());
    let name = repo("acme/app");
    let data = blob(300_000, 10);
    let digest = push_blob(&r, &name, &data).await;
    let url = r
        .blob_url(&name, &digest, Duration::from_secs(120))
        .await
        .unwrap()
        .expect("S3 presigns");
    let client = reqwest::Client::new();
    let got = client.get(&url).send().await.unwrap();
    assert_eq!(got.status(), 200);
    assert!(got.bytes().await.unwrap() == data);
    let part = client
        .get(&url)
        .header("Range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert!(part.bytes().await.unwrap() == data[1000..2000]);
    // The URL is for that object only.
    let other = url.replace(digest.hex(), Digest::sha256_of(b"x").hex());
    assert_eq!(client.get(&other).send().await.unwrap().status(), 403);
    // Not linked to the repository: no URL.
    assert!(matches!(
        r.blob_url(&repo("acme/other"), &digest, Duration::from_secs(60))
            .await,
        Err(RegistryError::BlobUnknown)
    ));
    // The filesystem store has none to give.
    let fs = Backing::new(Engine::Sqlite);
    let (fs_blobs, _) = fs.open().await;
    assert_eq!(
        fs_blobs
            .presign_get(&digest, Duration::from_secs(60))
            .await
            .unwrap(),
        None
    );
    let _: Arc<dyn BlobStore> = blobs;
}
