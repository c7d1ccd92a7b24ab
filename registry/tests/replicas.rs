//! Two registry services over the same PostgreSQL database and blob store,
//! as two berth-server replicas are: GC on one never deletes bytes that a
//! commit on the other holds, and only one of them collects at a time.
//! Each replica has its own connections, so the locks seen here are the
//! database's, not the process's.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use registry::{Registry, RegistryConfig};

mod common;
use common::*;

/// Two replicas (services over separately opened engines) of one store.
async fn replicas(backing: &Backing) -> (Registry, Registry) {
    let config = RegistryConfig {
        gc_grace: Duration::ZERO,
        ..RegistryConfig::default()
    };
    let (blobs_a, meta_a) = backing.open().await;
    let (blobs_b, meta_b) = backing.open().await;
    (
        Registry::new(blobs_a, meta_a, config.clone()),
        Registry::new(blobs_b, meta_b, config),
    )
}

/// How long a blocked operation is given to show that it waits.
const WAIT: Duration = Duration::from_millis(400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_waits_while_another_replica_holds_a_digest() {
    let backing = Backing::new(Engine::Postgres);
    let (a, _b) = replicas(&backing).await;
    let (blobs, meta_b) = backing.open().await;
    let name = repo("acme/app");
    let digest = push_blob(&a, &name, b"unreferenced soon").await;
    a.delete_blob(&name, &digest).await.unwrap();
    age().await;

    // Replica B is committing this digest (it found the bytes present).
    let held = meta_b.lock_digest(&digest).await.unwrap();
    let gc = tokio::spawn({
        let a = a.clone();
        async move { a.collect_garbage(false).await.unwrap() }
    });
    tokio::time::sleep(WAIT).await;
    assert!(
        !gc.is_finished(),
        "GC must wait for the other replica's commit"
    );
    assert_eq!(blobs.size(&digest).await.unwrap(), Some(17), "bytes kept");

    held.release().await;
    let report = tokio::time::timeout(Duration::from_secs(20), gc)
        .await
        .expect("GC goes on once the digest is released")
        .unwrap();
    assert_eq!(report.blobs, 1, "{report:?}");
    assert_eq!(blobs.size(&digest).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_waits_while_another_replica_collects_its_digest() {
    let backing = Backing::new(Engine::Postgres);
    let (a, _b) = replicas(&backing).await;
    let (_, meta_b) = backing.open().await;
    let name = repo("acme/app");
    let data = b"pushed while collected";
    let digest = registry::Digest::sha256_of(data);

    // Replica B's GC is between forgetting this digest and deleting bytes.
    let held = meta_b.lock_digest(&digest).await.unwrap();
    let push = tokio::spawn({
        let (a, name) = (a.clone(), name.clone());
        async move { push_blob(&a, &name, data).await }
    });
    tokio::time::sleep(WAIT).await;
    assert!(
        !push.is_finished(),
        "the commit must wait for the other replica's GC"
    );
    held.release().await;
    tokio::time::timeout(Duration::from_secs(20), push)
        .await
        .expect("the push completes once the digest is released")
        .unwrap();
    assert!(pullable(&a, &name, &[digest]).await);
}

#[tokio::test]
async fn only_one_replica_collects_at_a_time() {
    let backing = Backing::new(Engine::Postgres);
    let (a, _b) = replicas(&backing).await;
    let (_, meta_b) = backing.open().await;
    let collecting = meta_b.try_lock_gc().await.unwrap().expect("free at first");
    let report = a.collect_garbage(true).await.unwrap();
    assert!(
        report.skipped,
        "A must not collect while B does: {report:?}"
    );
    assert!(
        meta_b.try_lock_gc().await.unwrap().is_none(),
        "a second collector on B is refused too"
    );
    collecting.release().await;
    let report = a.collect_garbage(true).await.unwrap();
    assert!(!report.skipped, "{report:?}");
}
