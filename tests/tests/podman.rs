//! podman against a real `berth-server`, with private vfs storage and a
//! `registries.conf` marking the server insecure (plain HTTP): pull an image
//! pushed with skopeo and inspect it, push it to another repository (OCI and
//! Docker schema 2), and to a second, empty server (where podman has no blob
//! to reuse and compresses the layer itself), and check that what the
//! registry serves is what podman says it pushed (`--digestfile`), that
//! skopeo pulls it back intact with the original uncompressed layers, and
//! that a pull fails once the tag is deleted through the registry API.
#![allow(clippy::unwrap_used)]

mod common;

use common::{docker_ref, error_text, head_manifest, image_ref, pull_oci, push_oci, repo};
use reqwest::StatusCode;
use test_support::images::gunzip_diff_id;
use test_support::{
    Arch, BerthServer, OciClient, Skopeo, busybox_image, media_types, read_oci_layout_manifest,
    sha256_digest,
};
use tests::Podman;

/// Checks what the registry holds under `acme/NAME:TAG` against what podman
/// said it pushed (`digest`) and the original image's uncompressed layers
/// (`diff_ids`); returns the manifest.
async fn check_pushed(
    client: &OciClient,
    skopeo: &Skopeo,
    server: &BerthServer,
    name: &str,
    tag: &str,
    digest: &str,
    diff_ids: &[String],
) -> serde_json::Value {
    assert_eq!(
        head_manifest(client, &repo(name), tag).await,
        (StatusCode::OK, Some(digest.to_owned())),
        "HEAD {name}:{tag} after podman push"
    );
    let raw = skopeo
        .inspect_raw(&docker_ref(server, &format!("{name}:{tag}")))
        .unwrap();
    assert_eq!(
        sha256_digest(&raw),
        digest,
        "manifest bytes of {name}:{tag}"
    );
    let manifest: serde_json::Value = serde_json::from_slice(&raw).unwrap();

    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config = client
        .get_blob_bytes(&repo(name), config_digest)
        .await
        .unwrap();
    assert_eq!(sha256_digest(&config), config_digest);
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!(diff_ids));
    assert_eq!(config["architecture"], "amd64");

    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), diff_ids.len());
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        let layer_digest = layer["digest"].as_str().unwrap();
        let data = client
            .get_blob_bytes(&repo(name), layer_digest)
            .await
            .unwrap();
        assert_eq!(sha256_digest(&data), layer_digest);
        assert_eq!(Some(data.len() as u64), layer["size"].as_u64());
        assert_eq!(
            &gunzip_diff_id(&data).unwrap(),
            diff_id,
            "layer {layer_digest} of {name}:{tag} does not hold the original tar"
        );
    }
    manifest
}

#[tokio::test]
async fn podman_pull_push_inspect_and_failed_pull_after_delete() {
    let server = BerthServer::start();
    let skopeo = Skopeo::new();
    let client = OciClient::new(&server.url());
    // A second, empty registry: pushing there, podman finds no blob to
    // reuse or mount and has to compress and upload the layer itself.
    let empty = BerthServer::start();
    let podman = Podman::new(&[&server.host(), &empty.host()]);
    let image = busybox_image(Arch::Amd64);
    let diff_ids: Vec<String> = image.config_json()["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_owned())
        .collect();
    push_oci(&skopeo, &server, (&image).into(), "busybox", "v1", &[]);

    // Pull and inspect.
    let source = image_ref(&server, "busybox:v1");
    let id = podman.pull(&source).unwrap();
    assert_eq!(format!("sha256:{id}"), image.config.digest, "image id");
    let info = podman.inspect(&source).unwrap();
    assert_eq!(info["Digest"], image.digest.as_str(), "{info:#}");
    let repo_digest = format!("{}@{}", image_ref(&server, "busybox"), image.digest);
    assert!(
        info["RepoDigests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == repo_digest.as_str()),
        "RepoDigests lacks {repo_digest}: {info:#}"
    );
    assert!(
        info["RepoTags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == source.as_str()),
        "{info:#}"
    );
    assert_eq!(info["Architecture"], "amd64");
    assert_eq!(info["Os"], "linux");
    assert_eq!(info["Config"]["Cmd"], serde_json::json!(["/bin/sh"]));
    assert_eq!(info["RootFS"]["Layers"], serde_json::json!(diff_ids));

    // Push to another repository, keeping the manifest type (OCI).
    let pushed = podman
        .push(
            &source,
            &format!("docker://{}", image_ref(&server, "pushed:v2")),
            &[],
        )
        .unwrap();
    let manifest = check_pushed(
        &client, &skopeo, &server, "pushed", "v2", &pushed, &diff_ids,
    )
    .await;
    assert_eq!(
        manifest["mediaType"],
        media_types::OCI_MANIFEST,
        "{manifest}"
    );
    let reused = manifest["layers"][0]["digest"] == image.layers[0].digest.as_str();
    eprintln!(
        "podman push {} the original compressed layer (manifest {pushed}, original {})",
        if reused { "reused" } else { "recompressed" },
        image.digest
    );

    // skopeo pulls what podman pushed, intact.
    let (layout, blobs) = pull_oci(&skopeo, &server, "pushed:v2", "v2", &[]);
    assert_eq!(
        read_oci_layout_manifest(layout.path(), "v2")
            .unwrap()
            .digest,
        pushed
    );
    for layer in manifest["layers"].as_array().unwrap() {
        assert!(blobs.contains_key(layer["digest"].as_str().unwrap()));
    }

    // Push to the empty registry: podman compresses the layer itself (the
    // bytes may differ from the original gzip stream); the registry must
    // hold exactly what podman says it pushed, with the original tar inside.
    let empty_client = OciClient::new(&empty.url());
    let recompressed = podman
        .push(
            &source,
            &format!("docker://{}", image_ref(&empty, "recompressed:v1")),
            &[],
        )
        .unwrap();
    let manifest = check_pushed(
        &empty_client,
        &skopeo,
        &empty,
        "recompressed",
        "v1",
        &recompressed,
        &diff_ids,
    )
    .await;
    eprintln!(
        "podman push to an empty registry: layer {} (original {})",
        manifest["layers"][0]["digest"], image.layers[0].digest
    );
    let (layout, blobs) = pull_oci(&skopeo, &empty, "recompressed:v1", "v1", &[]);
    assert_eq!(
        read_oci_layout_manifest(layout.path(), "v1")
            .unwrap()
            .digest,
        recompressed
    );
    for layer in manifest["layers"].as_array().unwrap() {
        assert!(blobs.contains_key(layer["digest"].as_str().unwrap()));
    }

    // Push as Docker schema 2: the registry stores and serves that type.
    let pushed_docker = podman
        .push(
            &source,
            &format!("docker://{}", image_ref(&server, "pushed:docker")),
            &["--format", "v2s2"],
        )
        .unwrap();
    let manifest = check_pushed(
        &client,
        &skopeo,
        &server,
        "pushed",
        "docker",
        &pushed_docker,
        &diff_ids,
    )
    .await;
    assert_eq!(manifest["mediaType"], media_types::DOCKER_MANIFEST);
    let (media_type, _) = client
        .get_manifest_bytes(&repo("pushed"), "docker")
        .await
        .unwrap();
    assert_eq!(media_type, media_types::DOCKER_MANIFEST);

    // podman pulls its own push back.
    let pushed_ref = image_ref(&server, "pushed:v2");
    let id2 = podman.pull(&pushed_ref).unwrap();
    assert_eq!(id2, id, "same config, same image id");
    let info = podman.inspect(&pushed_ref).unwrap();
    assert_eq!(info["Digest"], pushed.as_str());

    // Delete the tag through the registry API: the next pull fails (podman
    // pull always asks the registry), the other tag still pulls.
    let resp = client.delete_manifest(&repo("pushed"), "v2").await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let err = error_text(podman.pull(&pushed_ref));
    assert!(err.contains("manifest unknown"), "{err}");
    podman.pull(&image_ref(&server, "pushed:docker")).unwrap();

    // Delete the repository podman pulled from, then push again: podman
    // remembers the layer there and asks to mount it from that repository;
    // the registry must answer so that the push still completes.
    let resp = common::delete_repository(&client, &repo("busybox")).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let err = error_text(podman.pull(&source));
    assert!(
        err.contains("manifest unknown") || err.contains("name unknown"),
        "{err}"
    );
    let after = podman
        .push(
            &source,
            &format!("docker://{}", image_ref(&server, "after-delete:v1")),
            &[],
        )
        .unwrap();
    check_pushed(
        &client,
        &skopeo,
        &server,
        "after-delete",
        "v1",
        &after,
        &diff_ids,
    )
    .await;
}
