//! Repository and tag listings (what the portal and management API show):
//! sizes, tag counts, platforms of images and indexes, namespace and name
//! filtering, paging.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use registry::{Digest, Reference};

mod common;
use common::*;

on_every_engine!(summaries_and_tags_show_sizes_and_platforms,);

/// Pushes an image whose config names `os/arch[/variant]`; returns the
/// manifest digest and size, and config + layer bytes.
async fn push_platform_image(
    r: &registry::Registry,
    name: &registry::RepoName,
    reference: &Reference,
    arch: &str,
    variant: Option<&str>,
) -> (Digest, usize, u64) {
    let variant_json = variant
        .map(|v| format!(",\"variant\":\"{v}\""))
        .unwrap_or_default();
    let config =
        format!("{{\"architecture\":\"{arch}\",\"os\":\"linux\"{variant_json},\"rootfs\":{{}}}}");
    let layer = format!("layer for {arch}");
    let cfg_d = push_blob(r, name, config.as_bytes()).await;
    let layer_d = push_blob(r, name, layer.as_bytes()).await;
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cfg_d}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer_d}","size":{}}}]}}"#,
        config.len(),
        layer.len()
    );
    let reference = match reference {
        Reference::Digest(_) => Reference::Digest(Digest::sha256_of(m.as_bytes())),
        r => r.clone(),
    };
    let d = r
        .put_manifest(
            name,
            &reference,
            Some(OCI_MANIFEST),
            &Bytes::from(m.clone()),
            &[],
        )
        .await
        .unwrap()
        .digest;
    (d, m.len(), (config.len() + layer.len()) as u64)
}

async fn summaries_and_tags_show_sizes_and_platforms(engine: Engine) {
    let f = fixture(engine, Duration::from_secs(3600), Duration::from_secs(3600)).await;
    let r = &f.registry;
    let app = repo("acme.io/app");
    let placeholder = Reference::Digest(Digest::sha256_of(b"x"));
    let (arm, arm_len, arm_content) =
        push_platform_image(r, &app, &tag("1.0"), "arm64", None).await;
    // Same manifest, second tag.
    push_platform_image(r, &app, &tag("latest"), "arm64", None).await;
    // A multi-arch index over two images pushed by digest.
    let (amd, amd_len, amd_content) =
        push_platform_image(r, &app, &placeholder, "amd64", None).await;
    let (v7, v7_len, v7_content) =
        push_platform_image(r, &app, &placeholder, "arm", Some("v7")).await;
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{amd}","size":{amd_len},"platform":{{"os":"linux","architecture":"amd64"}}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{v7}","size":{v7_len},"platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{amd}","size":{amd_len},"platform":{{"os":"unknown","architecture":"unknown"}}}}]}}"#
    );
    r.put_manifest(
        &app,
        &tag("multi"),
        Some(OCI_INDEX),
        &Bytes::from(index.clone()),
        &[],
    )
    .await
    .unwrap();

    let tags = r.repository_tags(&app).await.unwrap();
    let names: Vec<&str> = tags.iter().map(|t| t.tag.as_str()).collect();
    assert_eq!(names, ["1.0", "latest", "multi"]);
    assert_eq!(tags[0].digest, arm);
    assert_eq!(tags[0].platforms, ["linux/arm64"]);
    assert_eq!(tags[0].size, arm_len as u64 + arm_content);
    assert_eq!(tags[2].platforms, ["linux/amd64", "linux/arm/v7"]);
    // The index's own bytes, plus each child's manifest and content (the
    // amd64 child is listed twice, as attestation manifests are).
    let child = |len: usize, content: u64| len as u64 + content;
    assert_eq!(
        tags[2].size,
        index.len() as u64 + 2 * child(amd_len, amd_content) + child(v7_len, v7_content)
    );
    assert_eq!(tags[2].media_type, OCI_INDEX);

    // Another namespace and another repository in this one.
    push_blob(r, &repo("globex.io/app"), b"theirs").await;
    push_platform_image(r, &repo("acme.io/db"), &tag("v1"), "amd64", None).await;
    let page = r
        .repository_page(Some("acme.io"), None, None, 10)
        .await
        .unwrap();
    assert_eq!(page.total, 2);
    let summary = &page.repositories[0];
    assert_eq!(summary.name, "acme.io/app");
    assert_eq!(summary.tag_count, 3);
    assert_eq!(
        summary.platforms,
        ["linux/amd64", "linux/arm/v7", "linux/arm64"]
    );
    // Distinct blobs (3 configs, 3 layers) plus every manifest once.
    let blobs = arm_content + amd_content + v7_content;
    assert_eq!(
        summary.size,
        blobs + (arm_len + amd_len + v7_len + index.len()) as u64
    );
    assert!(summary.last_push > 0);

    let filtered = r
        .repository_page(Some("acme.io"), Some("db"), None, 10)
        .await
        .unwrap();
    assert_eq!(
        (filtered.total, filtered.repositories[0].name.as_str()),
        (1, "acme.io/db")
    );
    let second = r
        .repository_page(Some("acme.io"), None, Some("acme.io/app"), 1)
        .await
        .unwrap();
    assert_eq!(second.repositories[0].name, "acme.io/db");
    assert_eq!(
        r.repository_page(None, None, None, 10).await.unwrap().total,
        3
    );
    assert!(r.repository_tags(&repo("acme.io/none")).await.is_err());
}
