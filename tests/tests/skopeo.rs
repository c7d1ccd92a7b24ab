//! skopeo against a real `berth-server`: every kind of test image is copied
//! from an OCI layout (or skopeo's `dir:` format for Docker-typed content)
//! to `acme/<repo>:<tag>` with `--preserve-digests` and back into a fresh
//! directory, and what comes back must be byte for byte what went in: every
//! blob and manifest, with identical digests. Along the way `inspect --raw`
//! must return the pushed manifest bytes, `list-tags` the pushed tags, the
//! referrers API must list an artifact pushed with a `subject`, and
//! `skopeo delete` (which deletes by digest) must remove the manifest with
//! every tag pointing at it while other manifests stay.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    assert_same_blobs, docker_ref, head_manifest, oci_ref, pull_oci, push_dir, push_oci, repo,
};
use reqwest::StatusCode;
use test_support::{
    Arch, BerthServer, Image, ImageBuilder, LayerBuilder, OciClient, Skopeo, artifact_with_subject,
    busybox_image, busybox_image_with_cmd, busybox_multi_arch, docker_image, docker_manifest_list,
    media_types, read_oci_layout_blobs, read_oci_layout_manifest, read_skopeo_dir,
};

const MIB: u64 = 1024 * 1024;

/// `skopeo list-tags`, sorted.
fn tags(skopeo: &Skopeo, server: &BerthServer, name: &str) -> Vec<String> {
    let mut tags = skopeo
        .list_tags(&docker_ref(server, name))
        .unwrap_or_else(|e| panic!("skopeo list-tags {name}: {e:#}"));
    tags.sort();
    tags
}

/// Asserts that `skopeo inspect --raw` of `name_and_ref` returns `expected`.
fn assert_inspect_raw(skopeo: &Skopeo, server: &BerthServer, name_and_ref: &str, expected: &[u8]) {
    let served = skopeo
        .inspect_raw(&docker_ref(server, name_and_ref))
        .unwrap_or_else(|e| panic!("skopeo inspect --raw {name_and_ref}: {e:#}"));
    assert!(
        served == expected,
        "{name_and_ref}: registry serves\n{}\nbut this was pushed\n{}",
        String::from_utf8_lossy(&served),
        String::from_utf8_lossy(expected)
    );
}

/// Pushes `image` as `acme/NAME:TAG` from an OCI layout, checks `inspect
/// --raw`, pulls it into a fresh layout and checks that it holds exactly the
/// pushed blobs and manifest.
fn round_trip_image(skopeo: &Skopeo, server: &BerthServer, name: &str, tag: &str, image: &Image) {
    let src = push_oci(skopeo, server, image.into(), name, tag, &[]);
    assert_inspect_raw(skopeo, server, &format!("{name}:{tag}"), &image.manifest);
    let (dst, pulled) = pull_oci(skopeo, server, &format!("{name}:{tag}"), tag, &[]);
    let pulled_manifest = read_oci_layout_manifest(dst.path(), tag).unwrap();
    assert_eq!(pulled_manifest.digest, image.digest);
    assert_eq!(pulled_manifest.media_type, image.manifest_media_type);
    let pushed = read_oci_layout_blobs(src.path()).unwrap();
    assert_same_blobs(&format!("{name}:{tag} pulled back"), &pushed, &pulled);
    for blob in image.blobs() {
        assert!(pulled[&blob.digest] == blob.data, "{} differs", blob.digest);
    }
}

#[tokio::test]
async fn busybox_round_trip_then_skopeo_delete() {
    let server = BerthServer::start();
    let skopeo = Skopeo::new();
    let client = OciClient::new(&server.url());
    let image = busybox_image(Arch::Amd64);

    round_trip_image(&skopeo, &server, "busybox", "v1", &image);
    assert_eq!(tags(&skopeo, &server, "busybox"), ["v1"]);

    // A second tag on the same manifest (registry-to-registry copy), and a
    // third tag on another manifest sharing the layer.
    skopeo
        .copy(
            &docker_ref(&server, "busybox:v1"),
            &docker_ref(&server, "busybox:v2"),
            &[],
        )
        .unwrap();
    let other = busybox_image_with_cmd(Arch::Amd64, &["/bin/true"]);
    assert_ne!(other.digest, image.digest);
    assert_eq!(other.layers, image.layers);
    push_oci(&skopeo, &server, (&other).into(), "busybox", "v3", &[]);
    assert_eq!(tags(&skopeo, &server, "busybox"), ["v1", "v2", "v3"]);
    assert_inspect_raw(&skopeo, &server, "busybox:v2", &image.manifest);
    assert_inspect_raw(
        &skopeo,
        &server,
        &format!("busybox@{}", image.digest),
        &image.manifest,
    );

    // skopeo delete resolves the tag and deletes the manifest by digest:
    // the registry documents that every tag pointing at it goes with it.
    skopeo
        .run([
            "delete",
            "--tls-verify=false",
            &docker_ref(&server, "busybox:v1"),
        ])
        .unwrap();
    for gone in ["busybox:v1", "busybox:v2"] {
        let err = skopeo
            .inspect_raw(&docker_ref(&server, gone))
            .expect_err(&format!("{gone} should be gone after skopeo delete"));
        assert!(
            format!("{err:#}").contains("manifest unknown"),
            "{gone}: unexpected error {err:#}"
        );
    }
    let (status, _) = head_manifest(&client, &repo("busybox"), &image.digest).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "deleted manifest by digest");
    assert_eq!(tags(&skopeo, &server, "busybox"), ["v3"]);
    // The other manifest and the shared layer are untouched.
    assert_inspect_raw(&skopeo, &server, "busybox:v3", &other.manifest);
    let (_, pulled) = pull_oci(&skopeo, &server, "busybox:v3", "v3", &[]);
    assert!(pulled[&other.layers[0].digest] == other.layers[0].data);

    // Deleting it again: skopeo's GET of the tag finds nothing (404).
    let err = skopeo
        .run([
            "delete",
            "--tls-verify=false",
            &docker_ref(&server, "busybox:v1"),
        ])
        .expect_err("second delete of v1");
    assert!(
        format!("{err:#}").contains("Image may not exist"),
        "{err:#}"
    );
}

#[tokio::test]
async fn multi_layer_image_round_trips() {
    let server = BerthServer::start();
    let skopeo = Skopeo::new();
    let client = OciClient::new(&server.url());

    // Five layers of 1 to 4 MiB of incompressible data, stored in gzip
    // without compression (random data does not compress).
    let mut builder = ImageBuilder::new(Arch::Amd64).cmd(&["/bin/sh"]);
    for (i, size) in [1, 4, 2, 3, 1].into_iter().enumerate() {
        let layer = LayerBuilder::new()
            .dir("data/")
            .random_file(
                &format!("data/layer-{i}.bin"),
                size * MIB + i as u64,
                1000 + i as u64,
            )
            .compression(flate2::Compression::none())
            .build();
        builder = builder.layer(layer);
    }
    let image = builder.build();
    assert_eq!(image.layers.len(), 5);

    round_trip_image(&skopeo, &server, "multi-layer", "v1", &image);
    assert_eq!(tags(&skopeo, &server, "multi-layer"), ["v1"]);
    // The registry's own view agrees: manifest type and digest.
    let (media_type, manifest) = client
        .get_manifest_bytes(&repo("multi-layer"), "v1")
        .await
        .unwrap();
    assert_eq!(media_type, media_types::OCI_MANIFEST);
    assert!(manifest == image.manifest);
    for layer in &image.layers {
        let resp = client
            .head_blob(&repo("multi-layer"), &layer.digest)
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        // reqwest's content_length() is the body's (empty) length for HEAD.
        let length = resp
            .headers()
            .get("content-length")
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(length, layer.size().to_string(), "HEAD {}", layer.digest);
    }
}

#[tokio::test]
async fn multi_arch_index_round_trips_with_all() {
    let server = BerthServer::start();
    let skopeo = Skopeo::new();
    let client = OciClient::new(&server.url());
    let index = busybox_multi_arch();
    assert_eq!(index.children.len(), 3);

    let src = push_oci(&skopeo, &server, (&index).into(), "multi", "v1", &["--all"]);
    assert_inspect_raw(&skopeo, &server, "multi:v1", &index.manifest);
    for child in &index.children {
        assert_inspect_raw(
            &skopeo,
            &server,
            &format!("multi@{}", child.digest),
            &child.manifest,
        );
    }
    let (media_type, _) = client
        .get_manifest_bytes(&repo("multi"), "v1")
        .await
        .unwrap();
    assert_eq!(media_type, media_types::OCI_INDEX);

    let (dst, pulled) = pull_oci(&skopeo, &server, "multi:v1", "v1", &["--all"]);
    assert_eq!(
        read_oci_layout_manifest(dst.path(), "v1").unwrap().digest,
        index.digest
    );
    let pushed = read_oci_layout_blobs(src.path()).unwrap();
    assert_same_blobs("multi-arch index pulled back", &pushed, &pulled);
    assert!(pulled[&index.digest] == index.manifest);
    for child in &index.children {
        assert!(pulled[&child.digest] == child.manifest);
        assert!(pulled[&child.config.digest] == child.config.data);
    }
    assert_eq!(tags(&skopeo, &server, "multi"), ["v1"]);

    // Without --all skopeo picks the platform's image out of the index.
    let arm = tempfile::tempdir().unwrap();
    let mut cmd = skopeo.command();
    cmd.args([
        "--override-os",
        "linux",
        "--override-arch",
        "arm",
        "--override-variant",
        "v7",
        "copy",
        "--quiet",
        "--preserve-digests",
        "--src-tls-verify=false",
        &docker_ref(&server, "multi:v1"),
        &oci_ref(arm.path(), "arm"),
    ]);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let arm_image = index
        .children
        .iter()
        .find(|c| c.platform.as_ref().is_some_and(|p| p.architecture == "arm"))
        .unwrap();
    assert_eq!(
        read_oci_layout_manifest(arm.path(), "arm").unwrap().digest,
        arm_image.digest
    );
}

#[tokio::test]
async fn artifact_with_subject_round_trips_and_is_listed_as_referrer() {
    let server = BerthServer::start();
    let skopeo = Skopeo::new();
    let client = OciClient::new(&server.url());
    let subject = busybox_image(Arch::Amd64);
    let sbom_type = "application/vnd.example.sbom+json";
    let sig_type = "application/vnd.example.signature";
    let sbom = artifact_with_subject(&subject, sbom_type, br#"{"packages":["busybox"]}"#);
    let sig = artifact_with_subject(&subject, sig_type, b"signed");

    round_trip_image(&skopeo, &server, "app", "v1", &subject);
    round_trip_image(&skopeo, &server, "app", "sbom", &sbom);
    push_oci(&skopeo, &server, (&sig).into(), "app", "sig", &[]);
    assert_eq!(tags(&skopeo, &server, "app"), ["sbom", "sig", "v1"]);

    let resp = client
        .referrers(&repo("app"), &subject.digest, None)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let content_type = resp
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with(media_types::OCI_INDEX),
        "{content_type}"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    let mut listed: Vec<(String, String, u64)> = body["manifests"]
        .as_array()
        .unwrap_or_else(|| panic!("referrers response without manifests: {body}"))
        .iter()
        .map(|d| {
            assert_eq!(d["mediaType"], media_types::OCI_MANIFEST, "{d}");
            (
                d["digest"].as_str().unwrap().to_owned(),
                d["artifactType"].as_str().unwrap_or_default().to_owned(),
                d["size"].as_u64().unwrap(),
            )
        })
        .collect();
    listed.sort();
    let mut expected = vec![
        (
            sbom.digest.clone(),
            sbom_type.to_owned(),
            sbom.manifest.len() as u64,
        ),
        (
            sig.digest.clone(),
            sig_type.to_owned(),
            sig.manifest.len() as u64,
        ),
    ];
    expected.sort();
    assert_eq!(listed, expected, "referrers of the subject: {body}");

    // Filtered by artifact type.
    let resp = client
        .referrers(&repo("app"), &subject.digest, Some(sbom_type))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = resp.json().await.unwrap();
    let digests: Vec<&str> = body["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap())
        .collect();
    assert_eq!(digests, [sbom.digest.as_str()], "{body}");

    // The artifacts themselves are not subjects of anything.
    let resp = client
        .referrers(&repo("app"), &sbom.digest, None)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["manifests"], serde_json::json!([]), "{body}");
}

#[tokio::test]
async fn docker_typed_image_and_list_round_trip() {
    let server = BerthServer::start();
    let skopeo = Skopeo::new();
    let client = OciClient::new(&server.url());

    let image = docker_image(Arch::Amd64);
    let src = push_dir(&skopeo, &server, (&image).into(), "docker", "v1", &[]);
    assert_inspect_raw(&skopeo, &server, "docker:v1", &image.manifest);
    let (media_type, _) = client
        .get_manifest_bytes(&repo("docker"), "v1")
        .await
        .unwrap();
    assert_eq!(media_type, media_types::DOCKER_MANIFEST);
    let dst = tempfile::tempdir().unwrap();
    skopeo
        .copy(
            &docker_ref(&server, "docker:v1"),
            &common::dir_ref(dst.path()),
            &[],
        )
        .unwrap();
    assert_same_blobs(
        "Docker image pulled back",
        &read_skopeo_dir(src.path()).unwrap(),
        &read_skopeo_dir(dst.path()).unwrap(),
    );

    let list = docker_manifest_list(&[docker_image(Arch::Amd64), docker_image(Arch::Arm64)]);
    let src = push_dir(
        &skopeo,
        &server,
        (&list).into(),
        "docker",
        "list",
        &["--all"],
    );
    assert_inspect_raw(&skopeo, &server, "docker:list", &list.manifest);
    let (media_type, _) = client
        .get_manifest_bytes(&repo("docker"), "list")
        .await
        .unwrap();
    assert_eq!(media_type, media_types::DOCKER_MANIFEST_LIST);
    let dst = tempfile::tempdir().unwrap();
    skopeo
        .copy(
            &docker_ref(&server, "docker:list"),
            &common::dir_ref(dst.path()),
            &["--all"],
        )
        .unwrap();
    assert_same_blobs(
        "Docker manifest list pulled back",
        &read_skopeo_dir(src.path()).unwrap(),
        &read_skopeo_dir(dst.path()).unwrap(),
    );
    assert_eq!(tags(&skopeo, &server, "docker"), ["list", "v1"]);
}
