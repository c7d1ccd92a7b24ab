//! Online garbage collection against the real engines (filesystem blobs;
//! SQLite and PostgreSQL metadata, each test once per engine): what is reclaimed, what must survive, and that
//! GC running beside concurrent pushes never loses referenced content.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use registry::{Digest, Reference, RegistryError};

mod common;
use common::*;

on_every_engine!(
    untagged_content_is_reclaimed,
    shared_blobs_survive_a_repository_delete,
    grace_period_protects_a_push_in_progress,
    indexes_and_referrers_keep_their_manifests_alive,
    abandoned_uploads_expire,
    gc_never_races_concurrent_pushes { flavor = "multi_thread", worker_threads = 4 },
);

async fn untagged_content_is_reclaimed(engine: Engine) {
    let f = fixture(engine, Duration::ZERO, Duration::from_secs(3600)).await;
    let r = &f.registry;
    let name = repo("acme/app");
    let (digest, blobs) = push_image(r, &name, &tag("v1"), &[b"layer-one", b"layer-two"]).await;
    age().await;
    let report = r.collect_garbage(true).await.unwrap();
    assert_eq!(report.blobs, 0, "tagged image must survive: {report:?}");
    assert!(pullable(r, &name, &blobs).await);

    r.delete_manifest(&name, &tag("v1")).await.unwrap();
    age().await;
    let report = r.collect_garbage(true).await.unwrap();
    assert_eq!(report.manifests, 1, "{report:?}");
    assert_eq!(report.blobs, 3, "{report:?}");
    assert_eq!(
        report.bytes,
        (b"layer-one".len() + b"layer-two".len() + 12) as u64
    );
    assert!(matches!(
        r.get_manifest(&name, &Reference::Digest(digest)).await,
        Err(RegistryError::ManifestUnknown)
    ));
    for b in &blobs {
        assert!(matches!(
            r.stat_blob(&name, b).await,
            Err(RegistryError::BlobUnknown)
        ));
    }
    // A second pass finds nothing left, and the emptied repository is gone.
    let again = r.collect_garbage(true).await.unwrap();
    assert_eq!((again.blobs, again.orphans), (0, 0), "{again:?}");
    assert!(r.catalog(None, None, 100).await.unwrap().is_empty());
}

async fn shared_blobs_survive_a_repository_delete(engine: Engine) {
    let f = fixture(engine, Duration::ZERO, Duration::from_secs(3600)).await;
    let r = &f.registry;
    let (a, b) = (repo("acme/a"), repo("acme/b"));
    let (_, blobs_a) = push_image(r, &a, &tag("v1"), &[b"shared", b"only-a"]).await;
    let (_, blobs_b) = push_image(r, &b, &tag("v1"), &[b"shared", b"only-b"]).await;
    r.delete_repository(&a).await.unwrap();
    age().await;
    let report = r.collect_garbage(true).await.unwrap();
    // a's config ({"layers":2} is shared too) and "only-a" differ from b's blobs
    // only in "only-a": the config and "shared" stay for b.
    assert_eq!(report.blobs, 1, "{report:?}");
    assert!(pullable(r, &b, &blobs_b).await);
    assert!(matches!(
        r.list_tags(&a, None, 10).await,
        Err(RegistryError::NameUnknown)
    ));
    assert!(!pullable(r, &a, &blobs_a).await);
}

async fn grace_period_protects_a_push_in_progress(engine: Engine) {
    let f = fixture(engine, Duration::from_secs(3600), Duration::from_secs(3600)).await;
    let r = &f.registry;
    let name = repo("acme/app");
    // A blob uploaded whose manifest is not pushed yet, and a manifest
    // untagged moments ago: both younger than the grace period.
    let d = push_blob(r, &name, b"in-flight layer").await;
    let (untagged, blobs) = push_image(r, &name, &tag("tmp"), &[b"layer"]).await;
    r.delete_manifest(&name, &tag("tmp")).await.unwrap();
    age().await;
    let report = r.collect_garbage(true).await.unwrap();
    assert_eq!(report, registry::GcReport::default());
    assert_eq!(r.stat_blob(&name, &d).await.unwrap(), 15);
    r.get_manifest(&name, &Reference::Digest(untagged))
        .await
        .unwrap();
    assert!(pullable(r, &name, &blobs).await);
}

async fn indexes_and_referrers_keep_their_manifests_alive(engine: Engine) {
    let f = fixture(engine, Duration::ZERO, Duration::from_secs(3600)).await;
    let r = &f.registry;
    let name = repo("acme/multi");
    // Two platform manifests pushed by digest, untagged.
    let mut children = Vec::new();
    for arch in ["amd64", "arm64"] {
        let layer = format!("layer-{arch}");
        let cfg = format!("{{\"architecture\":\"{arch}\"}}");
        let cfg_d = push_blob(r, &name, cfg.as_bytes()).await;
        let l_d = push_blob(r, &name, layer.as_bytes()).await;
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cfg_d}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{l_d}","size":{}}}]}}"#,
            cfg.len(),
            layer.len()
        );
        let d = Digest::sha256_of(m.as_bytes());
        r.put_manifest(
            &name,
            &Reference::Digest(d.clone()),
            Some(OCI_MANIFEST),
            &Bytes::from(m.clone()),
            &[],
        )
        .await
        .unwrap();
        children.push((d, m.len(), arch, vec![cfg_d, l_d]));
    }
    let entries: Vec<String> = children
        .iter()
        .map(|(d, len, arch, _)| {
            format!(
                r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":{len},"platform":{{"os":"linux","architecture":"{arch}"}}}}"#
            )
        })
        .collect();
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
        entries.join(",")
    );
    let index_digest = r
        .put_manifest(
            &name,
            &tag("latest"),
            Some(OCI_INDEX),
            &Bytes::from(index.clone()),
            &[],
        )
        .await
        .unwrap()
        .digest;
    // A signature referring to the index, untagged.
    let empty = push_blob(r, &name, b"{}").await;
    let sig_layer = push_blob(r, &name, b"signature").await;
    let sig = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/vnd.example.sig","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}},"layers":[{{"mediaType":"application/octet-stream","digest":"{sig_layer}","size":9}}],"subject":{{"mediaType":"{OCI_INDEX}","digest":"{index_digest}","size":{}}}}}"#,
        index.len()
    );
    let sig_digest = Digest::sha256_of(sig.as_bytes());
    r.put_manifest(
        &name,
        &Reference::Digest(sig_digest.clone()),
        Some(OCI_MANIFEST),
        &Bytes::from(sig),
        &[],
    )
    .await
    .unwrap();
    age().await;
    let report = r.collect_garbage(true).await.unwrap();
    assert_eq!((report.manifests, report.blobs), (0, 0), "{report:?}");
    for (d, _, _, blobs) in &children {
        r.get_manifest(&name, &Reference::Digest(d.clone()))
            .await
            .unwrap();
        assert!(pullable(r, &name, blobs).await);
    }
    assert_eq!(
        r.referrers(&name, &index_digest, None).await.unwrap().len(),
        1
    );

    // Untag the index: index, children and the signature all go.
    r.delete_manifest(&name, &tag("latest")).await.unwrap();
    age().await;
    let report = r.collect_garbage(true).await.unwrap();
    assert_eq!(report.manifests, 4, "{report:?}");
    assert_eq!(report.blobs, 6, "{report:?}");
    assert!(
        r.get_manifest(&name, &Reference::Digest(sig_digest))
            .await
            .is_err()
    );
}

async fn abandoned_uploads_expire(engine: Engine) {
    let f = fixture(engine, Duration::ZERO, Duration::ZERO).await;
    let r = &f.registry;
    let name = repo("acme/app");
    let up = r
        .start_upload(&name, registry::Algorithm::Sha256)
        .await
        .unwrap();
    r.upload_chunk(&name, &up.id, None, stream(b"partial data"))
        .await
        .unwrap();
    age().await;
    let report = r.collect_garbage(true).await.unwrap();
    assert_eq!(report.uploads, 1, "{report:?}");
    assert!(matches!(
        r.upload_status(&name, &up.id).await,
        Err(RegistryError::UploadUnknown)
    ));
}

/// GC runs continuously (grace shorter than the test, longer than any
/// single push) while several tasks push images and mount blobs across
/// repositories. Every push must succeed and every tagged image must stay
/// whole: GC never deletes a blob a concurrent push or mount relies on.
async fn gc_never_races_concurrent_pushes(engine: Engine) {
    let f = fixture(
        engine,
        Duration::from_millis(800),
        Duration::from_secs(3600),
    )
    .await;
    let r = f.registry.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let gc = {
        let (r, stop) = (r.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut passes, mut reclaimed) = (0u32, 0u64);
            while !stop.load(Ordering::Relaxed) {
                reclaimed += r.collect_garbage(passes % 3 == 0).await.unwrap().blobs;
                passes += 1;
            }
            (passes, reclaimed)
        })
    };
    let mut pushers = Vec::new();
    for worker in 0..4 {
        let r = r.clone();
        pushers.push(tokio::spawn(async move {
            let mut kept = Vec::new();
            // Push for well over the grace period, so that overwritten
            // images age into garbage while pushes go on.
            let started = std::time::Instant::now();
            for i in
                (0..).take_while(|i| *i < 25 || started.elapsed() < Duration::from_millis(2500))
            {
                let name = repo(&format!("acme/w{worker}"));
                let shared = b"base layer shared by every image".as_slice();
                let own = format!("layer {worker}-{i}");
                // Overwrite the same tag each round: the previous image
                // becomes garbage while new pushes reuse its base layer.
                let (d, blobs) =
                    push_image(&r, &name, &tag("latest"), &[shared, own.as_bytes()]).await;
                // Mount the base layer into a second repository and push there too.
                let other = repo(&format!("acme/m{worker}"));
                let base = Digest::sha256_of(shared);
                if r.mount_blob(
                    &other,
                    &base,
                    registry::storage::MountSource::Repository(&name),
                )
                .await
                .unwrap()
                .is_none()
                {
                    panic!("mount of a blob just referenced failed");
                }
                let (_, mblobs) = push_image(&r, &other, &tag(&format!("t{i}")), &[shared]).await;
                kept.push((other, mblobs));
                kept.push((name, blobs));
                let _ = d;
            }
            kept
        }));
    }
    let mut all = Vec::new();
    for p in pushers {
        all.extend(p.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let (passes, reclaimed) = gc.await.unwrap();
    assert!(passes > 3, "GC ran only {passes} passes");
    // Overwritten images became garbage during the run: GC really worked.
    assert!(reclaimed > 0, "GC reclaimed nothing in {passes} passes");
    // The mirrors keep every tag; each must be complete.
    for (name, blobs) in all.iter().filter(|(n, _)| n.as_str().contains("/m")) {
        assert!(pullable(&r, name, blobs).await, "{name} lost a blob");
    }
    // Latest tags of the worker repositories must be complete too.
    for worker in 0..4 {
        let name = repo(&format!("acme/w{worker}"));
        let m = r.get_manifest(&name, &tag("latest")).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m.content).unwrap();
        let mut blobs = vec![Digest::parse(v["config"]["digest"].as_str().unwrap()).unwrap()];
        for l in v["layers"].as_array().unwrap() {
            blobs.push(Digest::parse(l["digest"].as_str().unwrap()).unwrap());
        }
        assert!(
            pullable(&r, &name, &blobs).await,
            "{name}:latest lost a blob"
        );
    }
}
