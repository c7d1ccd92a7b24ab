//! skopeo accepts the OCI layouts this crate writes: each kind of test image
//! is copied to a real distribution 2.8 registry and back, and the registry
//! serves the manifests byte for byte.

use std::collections::BTreeMap;

use bytes::Bytes;
use test_support::{
    Arch, DockerRegistry, Index, LayoutEntry, Skopeo, artifact_with_subject, busybox_image,
    busybox_multi_arch, docker_image, docker_manifest_list, multi_layer_image,
    read_oci_layout_blobs, read_oci_layout_manifest, read_skopeo_dir, write_oci_layout,
    write_skopeo_dir,
};

/// Copies `entry` from a fresh layout to `repo:tag` on the registry and back
/// into another layout; checks manifest bytes and that the pulled layout
/// holds exactly the pushed blobs.
fn round_trip(
    skopeo: &Skopeo,
    registry: &DockerRegistry,
    repo: &str,
    entry: LayoutEntry<'_>,
    extra: &[&str],
) -> BTreeMap<String, Bytes> {
    let src = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    write_oci_layout(src.path(), &[("v1", entry)]).expect("writing layout");
    let remote = format!("docker://{}/{repo}:v1", registry.host());

    skopeo
        .copy(&format!("oci:{}:v1", src.path().display()), &remote, extra)
        .expect("skopeo push");
    let pushed = read_oci_layout_manifest(src.path(), "v1").expect("source manifest");
    let served = skopeo.inspect_raw(&remote).expect("skopeo inspect --raw");
    assert!(
        served == pushed.data,
        "registry serves different manifest bytes for {repo}:\n{}\nvs pushed\n{}",
        String::from_utf8_lossy(&served),
        String::from_utf8_lossy(&pushed.data)
    );

    skopeo
        .copy(&remote, &format!("oci:{}:v1", dst.path().display()), extra)
        .expect("skopeo pull");
    let pulled = read_oci_layout_manifest(dst.path(), "v1").expect("pulled manifest");
    assert_eq!(pulled.digest, pushed.digest);
    let original = read_oci_layout_blobs(src.path()).expect("source blobs");
    let copy = read_oci_layout_blobs(dst.path()).expect("pulled blobs");
    assert_eq!(
        original.keys().collect::<Vec<_>>(),
        copy.keys().collect::<Vec<_>>(),
        "pulled layout holds different blobs"
    );
    assert_eq!(
        skopeo
            .list_tags(&format!("docker://{}/{repo}", registry.host()))
            .expect("list-tags"),
        ["v1"]
    );
    copy
}

#[test]
fn single_images_round_trip() {
    let registry = DockerRegistry::start();
    let skopeo = Skopeo::new();

    let busybox = busybox_image(Arch::Amd64);
    round_trip(&skopeo, &registry, "test/busybox", (&busybox).into(), &[]);

    let big = multi_layer_image(3, 256 * 1024, 7);
    let blobs = round_trip(&skopeo, &registry, "test/multi", (&big).into(), &[]);
    for layer in &big.layers {
        assert_eq!(blobs[&layer.digest], layer.data);
    }
}

/// Docker schema 2 content goes through skopeo's `dir:` format: skopeo
/// 1.9's `oci:` transport only looks at OCI-typed `index.json` entries.
fn dir_round_trip(
    skopeo: &Skopeo,
    registry: &DockerRegistry,
    repo: &str,
    entry: LayoutEntry<'_>,
    manifest: &Bytes,
    extra: &[&str],
) {
    let src = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    write_skopeo_dir(src.path(), entry).expect("writing dir");
    let remote = format!("docker://{}/{repo}:v1", registry.host());
    skopeo
        .copy(&format!("dir:{}", src.path().display()), &remote, extra)
        .expect("skopeo push");
    let served = skopeo.inspect_raw(&remote).expect("inspect --raw");
    assert!(
        served == *manifest,
        "registry serves different bytes for {repo}"
    );
    skopeo
        .copy(&remote, &format!("dir:{}", dst.path().display()), extra)
        .expect("skopeo pull");
    assert_eq!(
        read_skopeo_dir(src.path()).expect("source"),
        read_skopeo_dir(dst.path()).expect("pulled")
    );
}

#[test]
fn docker_typed_images_round_trip() {
    let registry = DockerRegistry::start();
    let skopeo = Skopeo::new();
    let docker = docker_image(Arch::Amd64);
    dir_round_trip(
        &skopeo,
        &registry,
        "test/docker",
        (&docker).into(),
        &docker.manifest,
        &[],
    );
    let list = docker_manifest_list(&[docker_image(Arch::Amd64), docker_image(Arch::Arm64)]);
    dir_round_trip(
        &skopeo,
        &registry,
        "test/docker-list",
        (&list).into(),
        &list.manifest,
        &["--all"],
    );
}

#[test]
fn skopeo_oci_transport_ignores_docker_typed_entries() {
    // Documents why write_skopeo_dir exists; if a newer skopeo accepts this,
    // the dir detour can go.
    let skopeo = Skopeo::new();
    let src = tempfile::tempdir().expect("tempdir");
    let dst = tempfile::tempdir().expect("tempdir");
    let docker = docker_image(Arch::Amd64);
    write_oci_layout(src.path(), &[("v1", (&docker).into())]).expect("layout");
    let err = skopeo
        .copy(
            &format!("oci:{}:v1", src.path().display()),
            &format!("dir:{}", dst.path().display()),
            &[],
        )
        .expect_err("skopeo 1.9 does not find Docker-typed layout entries");
    assert!(
        format!("{err:#}").contains("no descriptor found"),
        "{err:#}"
    );
}

#[test]
fn multi_arch_index_round_trips_with_all() {
    let registry = DockerRegistry::start();
    let skopeo = Skopeo::new();
    let index: Index = busybox_multi_arch();
    let blobs = round_trip(
        &skopeo,
        &registry,
        "test/index",
        (&index).into(),
        &["--all"],
    );
    for child in &index.children {
        assert_eq!(blobs[&child.digest], child.manifest);
        let served = skopeo
            .inspect_raw(&format!(
                "docker://{}/test/index@{}",
                registry.host(),
                child.digest
            ))
            .expect("inspect child");
        assert!(served == child.manifest, "child {} differs", child.digest);
    }
}

#[test]
fn artifact_round_trips() {
    let registry = DockerRegistry::start();
    let skopeo = Skopeo::new();
    let subject = busybox_image(Arch::Amd64);
    let artifact = artifact_with_subject(&subject, "application/vnd.example.sbom+json", b"sbom");
    let blobs = round_trip(&skopeo, &registry, "test/artifact", (&artifact).into(), &[]);
    assert_eq!(&blobs[&artifact.layers[0].digest][..], b"sbom");
}
