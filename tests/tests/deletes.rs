//! Deletes seen through real clients: a tag deleted with the registry API is
//! gone for skopeo while other tags of the same manifest stay, and a
//! repository deleted with `DELETE /api/v1/repositories/<name>` can no longer
//! be pulled, inspected or listed, disappears from the catalog, leaves other
//! repositories sharing its blobs intact (even after a GC pass), and can be
//! pushed again.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    assert_same_blobs, delete_repository, docker_ref, error_text, head_manifest, pull_oci,
    push_oci, repo,
};
use reqwest::StatusCode;
use test_support::{Arch, BerthServer, OciClient, Skopeo, busybox_image, read_oci_layout_blobs};

#[tokio::test]
async fn tag_deleted_through_the_api_is_gone_for_skopeo() {
    let server = BerthServer::start();
    let skopeo = Skopeo::new();
    let client = OciClient::new(&server.url());
    let image = busybox_image(Arch::Amd64);
    push_oci(&skopeo, &server, (&image).into(), "app", "v1", &[]);
    push_oci(&skopeo, &server, (&image).into(), "app", "stable", &[]);

    let resp = client.delete_manifest(&repo("app"), "v1").await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED, "DELETE tag v1");

    let err = error_text(skopeo.inspect_raw(&docker_ref(&server, "app:v1")));
    assert!(err.contains("manifest unknown"), "{err}");
    let err = error_text(pull_oci_result(&skopeo, &server, "app:v1"));
    assert!(err.contains("manifest unknown"), "{err}");
    assert_eq!(
        skopeo.list_tags(&docker_ref(&server, "app")).unwrap(),
        ["stable"]
    );
    // Deleting a tag leaves the manifest and its other tags.
    assert_eq!(
        skopeo
            .inspect_raw(&docker_ref(&server, "app:stable"))
            .unwrap(),
        image.manifest
    );
    assert_eq!(
        head_manifest(&client, &repo("app"), &image.digest).await,
        (StatusCode::OK, Some(image.digest.clone()))
    );
    // A second delete of the same tag is a 404 MANIFEST_UNKNOWN.
    let resp = client.delete_manifest(&repo("app"), "v1").await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "MANIFEST_UNKNOWN", "{body}");
}

/// `skopeo copy docker://… oci:…`, returning the failure instead of
/// panicking.
fn pull_oci_result(
    skopeo: &Skopeo,
    server: &BerthServer,
    name_and_ref: &str,
) -> anyhow::Result<()> {
    let dst = tempfile::tempdir().unwrap();
    skopeo.copy(
        &docker_ref(server, name_and_ref),
        &common::oci_ref(dst.path(), "x"),
        &[],
    )
}

#[tokio::test]
async fn deleted_repository_cannot_be_pulled_and_leaves_the_catalog() {
    // GC with no grace period, so that the pass below really collects what
    // the deleted repository alone referenced.
    let server = BerthServer::builder()
        .env("BERTH_GC__GRACE_SECS", "0")
        .env("BERTH_GC__ENABLED", "false")
        .start();
    let skopeo = Skopeo::new();
    let client = OciClient::new(&server.url());
    let image = busybox_image(Arch::Amd64);
    let doomed_only = busybox_image(Arch::Arm64);
    assert_ne!(doomed_only.config.digest, image.config.digest);

    let src = push_oci(&skopeo, &server, (&image).into(), "doomed", "v1", &[]);
    push_oci(
        &skopeo,
        &server,
        (&doomed_only).into(),
        "doomed",
        "arm64",
        &[],
    );
    push_oci(&skopeo, &server, (&image).into(), "keeper", "v1", &[]);
    let mut catalog = client.repositories().await.unwrap();
    catalog.sort();
    assert_eq!(catalog, [repo("doomed"), repo("keeper")]);

    let resp = delete_repository(&client, &repo("doomed")).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "DELETE repository");

    for reference in ["doomed:v1", "doomed:arm64"] {
        let err = error_text(pull_oci_result(&skopeo, &server, reference));
        assert!(
            err.contains("manifest unknown") || err.contains("name unknown"),
            "pull of {reference} after repository delete: {err}"
        );
        let err = error_text(skopeo.inspect_raw(&docker_ref(&server, reference)));
        assert!(
            err.contains("manifest unknown") || err.contains("name unknown"),
            "inspect of {reference} after repository delete: {err}"
        );
    }
    let err = error_text(skopeo.list_tags(&docker_ref(&server, "doomed")));
    // skopeo 1.9 reports only the status of a failed tag listing.
    assert!(err.contains("404"), "list-tags: {err}");
    let resp = client.tags_list(&repo("doomed"), None, None).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "NAME_UNKNOWN", "{body}");
    // The blobs are no longer reachable through the deleted repository.
    let resp = client
        .head_blob(&repo("doomed"), &image.layers[0].digest)
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::NOT_FOUND,
        "blob via deleted repo"
    );
    assert_eq!(client.repositories().await.unwrap(), [repo("keeper")]);

    // A second delete: 404 NAME_UNKNOWN in the Berth API's error format.
    let resp = delete_repository(&client, &repo("doomed")).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "NAME_UNKNOWN", "{body}");

    // GC reclaims what only the deleted repository referenced, and nothing
    // the other repository still needs.
    let resp = client
        .request(reqwest::Method::POST, client.url("/api/v1/gc"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let report: serde_json::Value = resp.json().await.unwrap();
    assert!(
        report["blobs"].as_u64().unwrap() >= 1,
        "GC should reclaim the arm64 config, referenced by the deleted repository only: {report}"
    );
    let (_, pulled) = pull_oci(&skopeo, &server, "keeper:v1", "v1", &[]);
    assert_same_blobs(
        "keeper after the other repository's delete and GC",
        &read_oci_layout_blobs(src.path()).unwrap(),
        &pulled,
    );

    // The name can be used again.
    push_oci(&skopeo, &server, (&image).into(), "doomed", "v2", &[]);
    assert_eq!(
        skopeo.list_tags(&docker_ref(&server, "doomed")).unwrap(),
        ["v2"]
    );
    let mut catalog = client.repositories().await.unwrap();
    catalog.sort();
    assert_eq!(catalog, [repo("doomed"), repo("keeper")]);
}
