//! containerd's `ctr` against a real `berth-server`, with a private
//! containerd ([`tests::Containerd`]: own root, state and socket, CRI
//! disabled): pull (with unpack into the default overlayfs snapshotter) an
//! image pushed with skopeo, run it under runc, push it to another
//! repository, check `ctr images ls` and that the registry holds exactly the
//! pushed manifest and blobs; the same for a multi-arch index fetched with
//! `--all-platforms`; and a failing pull after the tag is deleted.
#![allow(clippy::unwrap_used)]

mod common;

use common::{head_manifest, image_ref, push_oci, repo};
use reqwest::StatusCode;
use test_support::{Arch, BerthServer, OciClient, Skopeo, busybox_image, busybox_multi_arch};
use tests::Containerd;

/// The digest `ctr images ls` shows for `name`, if it lists it.
fn listed_digest(containerd: &Containerd, name: &str) -> Option<String> {
    containerd
        .images()
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, d)| d)
}

#[tokio::test]
async fn ctr_pull_run_push_and_failed_pull_after_delete() {
    let server = BerthServer::start();
    let skopeo = Skopeo::new();
    let client = OciClient::new(&server.url());
    let containerd = Containerd::start();
    let image = busybox_image(Arch::Amd64);
    push_oci(&skopeo, &server, (&image).into(), "busybox", "v1", &[]);

    // Pull: fetch and unpack into the default (overlayfs) snapshotter.
    let source = image_ref(&server, "busybox:v1");
    containerd
        .run_ctr(["images", "pull", "--plain-http", &source])
        .unwrap();
    assert_eq!(
        listed_digest(&containerd, &source),
        Some(image.digest.clone())
    );
    // What containerd stored is what was pushed.
    for blob in image.blobs() {
        let out = containerd
            .ctr()
            .args(["content", "get", &blob.digest])
            .output()
            .unwrap();
        assert!(out.status.success(), "ctr content get {}", blob.digest);
        assert!(out.stdout == blob.data, "content {} differs", blob.digest);
    }

    // The unpacked image runs.
    let id = format!("berth-e2e-{}", std::process::id());
    let out = containerd
        .run_container(&source, &id, &["echo", "hello from berth"])
        .unwrap();
    assert_eq!(out.trim(), "hello from berth");

    // Push the pulled image to another repository.
    let target = image_ref(&server, "ctr-pushed:v2");
    containerd
        .run_ctr(["images", "tag", &source, &target])
        .unwrap();
    containerd
        .run_ctr(["images", "push", "--plain-http", &target])
        .unwrap();
    assert_eq!(
        listed_digest(&containerd, &target),
        Some(image.digest.clone())
    );
    assert_eq!(
        listed_digest(&containerd, &source),
        Some(image.digest.clone())
    );
    assert_eq!(
        head_manifest(&client, &repo("ctr-pushed"), "v2").await,
        (StatusCode::OK, Some(image.digest.clone()))
    );
    let (_, manifest) = client
        .get_manifest_bytes(&repo("ctr-pushed"), "v2")
        .await
        .unwrap();
    assert!(manifest == image.manifest, "manifest bytes differ");
    for blob in image.blobs() {
        let data = client
            .get_blob_bytes(&repo("ctr-pushed"), &blob.digest)
            .await
            .unwrap();
        assert!(data == blob.data, "blob {} differs", blob.digest);
    }

    // Delete the pushed tag through the registry API: pulling it fails.
    let resp = client
        .delete_manifest(&repo("ctr-pushed"), "v2")
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let err = containerd
        .run_ctr(["images", "pull", "--plain-http", &target])
        .expect_err("pull of a deleted tag");
    assert!(format!("{err:#}").contains("not found"), "{err:#}");
}

#[tokio::test]
async fn ctr_pushes_a_multi_arch_index_fetched_with_all_platforms() {
    let server = BerthServer::start();
    let skopeo = Skopeo::new();
    let client = OciClient::new(&server.url());
    let containerd = Containerd::start();
    let index = busybox_multi_arch();
    push_oci(&skopeo, &server, (&index).into(), "multi", "v1", &["--all"]);

    let source = image_ref(&server, "multi:v1");
    containerd
        .run_ctr(["images", "pull", "--plain-http", "--all-platforms", &source])
        .unwrap();
    assert_eq!(
        listed_digest(&containerd, &source),
        Some(index.digest.clone())
    );

    let target = image_ref(&server, "ctr-multi:v1");
    containerd
        .run_ctr(["images", "tag", &source, &target])
        .unwrap();
    containerd
        .run_ctr(["images", "push", "--plain-http", &target])
        .unwrap();
    assert_eq!(
        listed_digest(&containerd, &target),
        Some(index.digest.clone())
    );

    let (_, served) = client
        .get_manifest_bytes(&repo("ctr-multi"), "v1")
        .await
        .unwrap();
    assert!(served == index.manifest, "index bytes differ");
    for child in &index.children {
        let (_, served) = client
            .get_manifest_bytes(&repo("ctr-multi"), &child.digest)
            .await
            .unwrap();
        assert!(served == child.manifest, "child {} differs", child.digest);
        for blob in child.blobs() {
            let data = client
                .get_blob_bytes(&repo("ctr-multi"), &blob.digest)
                .await
                .unwrap();
            assert!(data == blob.data, "blob {} differs", blob.digest);
        }
    }
}
