//! The `MetadataStore` contract checked on the store itself, on each engine
//! (SQLite and PostgreSQL): what the service tests reach only indirectly —
//! byte-order paging, namespace bounds, refused manifests leaving nothing,
//! mounts within a namespace, GC re-checks, deletes returning uploads.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use registry::manifest;
use registry::storage::{
    MetadataStore, MountSource, NewManifest, PutManifestOutcome, UploadRecord,
};
use registry::{Digest, Tag};

mod common;
use common::*;

on_both_engines!(
    listings_page_in_byte_order_within_namespaces,
    a_refused_manifest_leaves_nothing_behind,
    mounts_stay_inside_the_namespace,
    gc_rechecks_and_deletes_return_uploads,
);

async fn store(engine: Engine) -> (Backing, Arc<dyn MetadataStore>) {
    let backing = Backing::new(engine);
    let (_, meta) = backing.open().await;
    (backing, meta)
}

async fn blob(meta: &dyn MetadataStore, repo: &str, data: &[u8], now: i64) -> Digest {
    let d = Digest::sha256_of(data);
    meta.commit_blob(&common::repo(repo), &d, data.len() as u64, None, now)
        .await
        .unwrap();
    d
}

fn image(config: &Digest, layer: &Digest) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":1}}]}}"#
    )
    .into_bytes()
}

async fn put(
    meta: &dyn MetadataStore,
    repo: &str,
    body: &[u8],
    tags: &[&str],
    now: i64,
) -> PutManifestOutcome {
    let parsed = manifest::parse(Some(OCI_MANIFEST), body).unwrap();
    let tags: Vec<Tag> = tags.iter().map(|t| Tag::parse(t).unwrap()).collect();
    meta.put_manifest(NewManifest {
        repo: &common::repo(repo),
        digest: &Digest::sha256_of(body),
        content: body,
        parsed: &parsed,
        tags: &tags,
        now,
    })
    .await
    .unwrap()
}

async fn listings_page_in_byte_order_within_namespaces(engine: Engine) {
    let (_b, meta) = store(engine).await;
    let meta = meta.as_ref();
    // '-' < '.' < '/' < '0' in byte order; a locale's collation would
    // order these otherwise.
    for r in [
        "acme/b", "acme/a.b", "acme/a-b", "acme/a", "acme-x/y", "acme0/z", "acmez/w", "other/q",
    ] {
        blob(meta, r, b"x", 1).await;
    }
    let all = meta.list_repositories(None, None, 100).await.unwrap();
    assert_eq!(
        all.to_vec(),
        [
            "acme-x/y", "acme/a", "acme/a-b", "acme/a.b", "acme/b", "acme0/z", "acmez/w", "other/q"
        ]
    );
    let acme = meta
        .list_repositories(Some("acme"), None, 100)
        .await
        .unwrap();
    assert_eq!(acme.to_vec(), ["acme/a", "acme/a-b", "acme/a.b", "acme/b"]);
    let page = meta
        .list_repositories(Some("acme"), Some("acme/a"), 1)
        .await
        .unwrap();
    assert_eq!(page.to_vec(), ["acme/a-b"]);

    let config = blob(meta, "acme/a-b", b"{}", 1).await;
    let layer = blob(meta, "acme/a-b", b"l", 1).await;
    let body = image(&config, &layer);
    let tags = ["v2", "V1", "latest", "a-b", "v10", "a.b"];
    assert_eq!(
        put(meta, "acme/a-b", &body, &tags, 2).await,
        PutManifestOutcome::Stored
    );
    let r = common::repo("acme/a-b");
    let listed = meta.list_tags(&r, None, 100).await.unwrap().unwrap();
    assert_eq!(listed.to_vec(), ["V1", "a-b", "a.b", "latest", "v10", "v2"]);
    let page = meta
        .list_tags(&r, Some("latest"), 2)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page.to_vec(), ["v10", "v2"]);
    // A repository without tags lists none; an unknown one is unknown.
    let untagged = meta
        .list_tags(&common::repo("acme/b"), None, 10)
        .await
        .unwrap();
    assert!(untagged.unwrap().is_empty());
    assert!(
        meta.list_tags(&common::repo("acme/none"), None, 10)
            .await
            .unwrap()
            .is_none()
    );

    let page = meta
        .repository_page(Some("acme"), Some("a-b"), None, 10)
        .await
        .unwrap();
    assert_eq!(page.total, 1, "{page:?}");
    assert_eq!(page.repositories[0].name, "acme/a-b");
    assert_eq!(page.repositories[0].tag_count, 6);
    // Layer, config and the manifest itself.
    assert_eq!(page.repositories[0].size, 1 + 2 + body.len() as u64);
    let details = meta.repository_tags(&r).await.unwrap().unwrap();
    assert_eq!(details.len(), 6);
    assert_eq!(details[0].tag, "V1");
}

async fn a_refused_manifest_leaves_nothing_behind(engine: Engine) {
    let (_b, meta) = store(engine).await;
    let meta = meta.as_ref();
    let config = blob(meta, "acme/elsewhere", b"{}", 1).await;
    let layer = Digest::sha256_of(b"never pushed");
    let body = image(&config, &layer);
    // The config is in another repository only: refused.
    assert!(matches!(
        put(meta, "acme/new", &body, &["v1"], 2).await,
        PutManifestOutcome::MissingBlob(_)
    ));
    let repos = meta.list_repositories(None, None, 10).await.unwrap();
    assert_eq!(repos.to_vec(), ["acme/elsewhere"], "no repository was left");
    blob(meta, "acme/new", b"{}", 3).await;
    assert_eq!(
        put(meta, "acme/new", &body, &["v1"], 4).await,
        PutManifestOutcome::MissingBlob(layer)
    );
    assert!(
        meta.manifest_by_digest(&common::repo("acme/new"), &Digest::sha256_of(&body))
            .await
            .unwrap()
            .is_none()
    );
}

async fn mounts_stay_inside_the_namespace(engine: Engine) {
    let (_b, meta) = store(engine).await;
    let meta = meta.as_ref();
    let d = blob(meta, "other/src", b"shared", 1).await;
    let target = common::repo("acme/app");
    let inside = MountSource::Anywhere {
        namespace: Some("acme"),
    };
    assert_eq!(meta.mount_blob(&target, &d, inside, 2).await.unwrap(), None);
    assert_eq!(meta.blob_in_repo(&target, &d).await.unwrap(), None);
    let from = common::repo("other/src");
    assert_eq!(
        meta.mount_blob(&target, &d, MountSource::Repository(&from), 2)
            .await
            .unwrap(),
        Some(6)
    );
    let sibling = common::repo("acme/sibling");
    assert_eq!(
        meta.mount_blob(&sibling, &d, inside, 3).await.unwrap(),
        Some(6)
    );
    assert_eq!(meta.blob_in_repo(&sibling, &d).await.unwrap(), Some(6));
}

async fn gc_rechecks_and_deletes_return_uploads(engine: Engine) {
    let (_b, meta) = store(engine).await;
    let meta = meta.as_ref();
    let r = common::repo("acme/app");
    let linked = blob(meta, "acme/app", b"linked", 1).await;
    // Linked: no candidate, and forgetting it anyway is refused.
    assert!(meta.gc_blob_candidates(10, 10).await.unwrap().is_empty());
    assert!(!meta.gc_forget_blob(&linked, 10).await.unwrap());
    assert!(meta.unlink_blob(&r, &linked).await.unwrap());
    assert!(!meta.unlink_blob(&r, &linked).await.unwrap());
    assert_eq!(
        meta.gc_blob_candidates(10, 10).await.unwrap(),
        [(linked.clone(), 6)]
    );
    // Younger than the cutoff: kept.
    assert!(!meta.gc_forget_blob(&linked, 1).await.unwrap());
    assert!(meta.gc_forget_blob(&linked, 10).await.unwrap());
    assert_eq!(meta.blob_size(&linked).await.unwrap(), None);

    let upload = UploadRecord {
        id: "0c9a3b4e-1f2d-4a5b-8c6d-7e8f90a1b2c3".into(),
        repo: r.clone(),
        size: 0,
        hash_state: vec![1, 2, 3],
        created_at: 5,
        updated_at: 5,
    };
    meta.create_upload(&upload).await.unwrap();
    assert!(meta.touch_upload(&upload.id, 6).await.unwrap());
    assert!(!meta.touch_upload("unknown", 6).await.unwrap());
    let got = meta.get_upload(&upload.id).await.unwrap().unwrap();
    assert_eq!((got.hash_state, got.updated_at), (vec![1, 2, 3], 6));
    assert_eq!(
        meta.delete_repository(&r).await.unwrap(),
        Some(vec![upload.id.clone()])
    );
    assert!(!meta.upload_exists(&upload.id).await.unwrap());
    assert_eq!(meta.delete_repository(&r).await.unwrap(), None);
    assert_eq!(
        meta.gc_metadata(i64::MAX).await.unwrap(),
        registry::storage::MetadataGcReport::default()
    );
}
