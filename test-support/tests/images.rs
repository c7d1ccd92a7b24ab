//! Tests of the image builders: reproducibility, layer/config consistency
//! (`diff_ids`), media types, index and artifact structure, and the OCI
//! layout writer/reader.

use std::collections::BTreeMap;

use test_support::images::layers::{BUSYBOX_APPLETS, gunzip, gunzip_diff_id};
use test_support::images::layout::REF_NAME;
use test_support::images::media_types;
use test_support::{
    Arch, Image, LayoutEntry, artifact_with_subject, busybox_image, busybox_image_with_cmd,
    busybox_multi_arch, docker_image, multi_arch_index, multi_layer_image, random_blob,
    read_oci_layout_blobs, read_oci_layout_index, read_oci_layout_manifest, sha256_digest,
    write_oci_layout,
};

/// Every blob digest matches its bytes, the manifest's descriptors match
/// the blobs, and the config's diff_ids are the digests of the decompressed
/// layers.
fn check_consistent(image: &Image) {
    assert_eq!(image.digest, sha256_digest(&image.manifest));
    let manifest = image.manifest_json();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], image.manifest_media_type.as_str());
    for blob in image.blobs() {
        assert_eq!(blob.digest, sha256_digest(&blob.data));
    }
    assert_eq!(manifest["config"]["digest"], image.config.digest.as_str());
    assert_eq!(manifest["config"]["size"], image.config.size());
    assert_eq!(
        manifest["config"]["mediaType"],
        image.config.media_type.as_str()
    );
    let layers = manifest["layers"].as_array().expect("layers array");
    assert_eq!(layers.len(), image.layers.len());
    for (d, blob) in layers.iter().zip(&image.layers) {
        assert_eq!(d["digest"], blob.digest.as_str());
        assert_eq!(d["size"], blob.size());
        assert_eq!(d["mediaType"], blob.media_type.as_str());
    }
    if image.artifact_type.is_none() {
        let config = image.config_json();
        assert_eq!(config["rootfs"]["type"], "layers");
        let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"]
            .as_array()
            .expect("diff_ids")
            .iter()
            .map(|v| v.as_str().expect("diff_id string"))
            .collect();
        let actual: Vec<String> = image
            .layers
            .iter()
            .map(|l| gunzip_diff_id(&l.data).expect("layer is gzip"))
            .collect();
        assert_eq!(diff_ids, actual);
    }
}

#[test]
fn busybox_image_is_reproducible_and_consistent() {
    let a = busybox_image(Arch::Amd64);
    let b = busybox_image(Arch::Amd64);
    assert_eq!(a, b);
    check_consistent(&a);
    assert_eq!(a.manifest_media_type, media_types::OCI_MANIFEST);
    assert_eq!(a.config.media_type, media_types::OCI_CONFIG);
    assert_eq!(a.layers.len(), 1);
    assert_eq!(a.layers[0].media_type, media_types::OCI_LAYER_GZIP);

    let config = a.config_json();
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["/bin/sh"]));

    // Same layer for every architecture; configs (and so manifests) differ.
    let arm = busybox_image(Arch::ArmV7);
    check_consistent(&arm);
    assert_eq!(arm.layers, a.layers);
    assert_ne!(arm.digest, a.digest);
    assert_eq!(arm.config_json()["variant"], "v7");
    assert_ne!(
        busybox_image_with_cmd(Arch::Amd64, &["/bin/true"]).digest,
        a.digest
    );
}

#[test]
fn busybox_layer_holds_the_host_busybox_and_applet_links() {
    let image = busybox_image(Arch::Amd64);
    let tar_bytes = gunzip(&image.layers[0].data).expect("gzip layer");
    let host = std::fs::read("/bin/busybox").expect("apt-get install busybox-static");
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let mut links = BTreeMap::new();
    let mut found_binary = false;
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        let header = entry.header().clone();
        assert_eq!(header.mtime().expect("mtime"), 0);
        assert_eq!(header.uid().expect("uid"), 0);
        assert_eq!(header.gid().expect("gid"), 0);
        let path = entry.path().expect("path").display().to_string();
        match header.entry_type() {
            tar::EntryType::Symlink => {
                let target = entry.link_name().expect("link").expect("target");
                links.insert(path, target.display().to_string());
            }
            tar::EntryType::Regular => {
                assert_eq!(path, "bin/busybox");
                assert_eq!(header.mode().expect("mode"), 0o755);
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut entry, &mut data).expect("read busybox");
                assert!(data == host, "bin/busybox differs from /bin/busybox");
                found_binary = true;
            }
            tar::EntryType::Directory => assert_eq!(path, "bin/"),
            other => panic!("unexpected entry type {other:?} for {path}"),
        }
    }
    assert!(found_binary);
    for applet in ["sh", "echo", "cat", "sleep"] {
        assert!(BUSYBOX_APPLETS.contains(&applet));
        assert_eq!(links[&format!("bin/{applet}")], "busybox");
    }
    // The gzip header carries no mtime and no file name.
    let gz = &image.layers[0].data;
    assert_eq!(&gz[..3], &[0x1f, 0x8b, 8]);
    assert_eq!(gz[3] & 0x08, 0, "FNAME flag set");
    assert_eq!(&gz[4..8], &[0, 0, 0, 0], "mtime set");
}

#[test]
fn multi_layer_image_is_deterministic_per_seed() {
    let a = multi_layer_image(3, 100_000, 42);
    let b = multi_layer_image(3, 100_000, 42);
    let c = multi_layer_image(3, 100_000, 43);
    assert_eq!(a, b);
    assert_ne!(a.digest, c.digest);
    check_consistent(&a);
    assert_eq!(a.layers.len(), 3);
    let distinct: std::collections::BTreeSet<_> = a.layers.iter().map(|l| &l.digest).collect();
    assert_eq!(distinct.len(), 3, "layers must differ from each other");
    for layer in &a.layers {
        // Stored blocks: a little gzip and tar overhead over the payload.
        assert!(
            layer.size() > 100_000 && layer.size() < 104_000,
            "{}",
            layer.size()
        );
    }
    assert_eq!(random_blob(4096, 9), random_blob(4096, 9));
    assert_ne!(random_blob(4096, 9), random_blob(4096, 10));
    assert_eq!(random_blob(1000, 1).len(), 1000);
}

#[test]
fn docker_image_uses_schema2_media_types() {
    let image = docker_image(Arch::Amd64);
    check_consistent(&image);
    assert_eq!(image.manifest_media_type, media_types::DOCKER_MANIFEST);
    assert_eq!(image.config.media_type, media_types::DOCKER_CONFIG);
    assert_eq!(image.layers[0].media_type, media_types::DOCKER_LAYER_GZIP);
    // Same bytes as the OCI flavour, different manifest.
    let oci = busybox_image(Arch::Amd64);
    assert_eq!(image.layers[0].data, oci.layers[0].data);
    assert_eq!(image.config.data, oci.config.data);
    assert_ne!(image.digest, oci.digest);
    assert_eq!(docker_image(Arch::Amd64), image);
}

#[test]
fn index_entries_carry_platforms() {
    let index = busybox_multi_arch();
    assert_eq!(index, busybox_multi_arch());
    assert_eq!(index.digest, sha256_digest(&index.manifest));
    let json = index.manifest_json();
    assert_eq!(json["mediaType"], media_types::OCI_INDEX);
    let entries = json["manifests"].as_array().expect("manifests");
    let platforms: Vec<String> = entries
        .iter()
        .map(|e| {
            let p = &e["platform"];
            let mut s = format!(
                "{}/{}",
                p["os"].as_str().expect("os"),
                p["architecture"].as_str().expect("architecture")
            );
            if let Some(v) = p["variant"].as_str() {
                s = format!("{s}/{v}");
            }
            s
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64/v8", "linux/arm/v7"]);
    for (entry, child) in entries.iter().zip(&index.children) {
        assert_eq!(entry["digest"], child.digest.as_str());
        assert_eq!(entry["size"], child.manifest.len());
        assert_eq!(entry["mediaType"], media_types::OCI_MANIFEST);
    }
    let pair = multi_arch_index(&index.children[..2]);
    assert_eq!(
        pair.manifest_json()["manifests"].as_array().map(Vec::len),
        Some(2)
    );
}

#[test]
fn artifact_refers_to_its_subject() {
    let subject = busybox_image(Arch::Amd64);
    let artifact = artifact_with_subject(
        &subject,
        "application/vnd.example.sbom+json",
        b"{\"sbom\":1}",
    );
    check_consistent(&artifact);
    assert_eq!(
        artifact,
        artifact_with_subject(
            &subject,
            "application/vnd.example.sbom+json",
            b"{\"sbom\":1}"
        )
    );
    let json = artifact.manifest_json();
    assert_eq!(json["artifactType"], "application/vnd.example.sbom+json");
    assert_eq!(json["config"]["mediaType"], media_types::OCI_EMPTY);
    assert_eq!(json["config"]["size"], 2);
    assert_eq!(json["config"]["digest"], sha256_digest(b"{}").as_str());
    assert_eq!(
        json["config"]["digest"],
        "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    );
    assert_eq!(json["subject"]["digest"], subject.digest.as_str());
    assert_eq!(json["subject"]["size"], subject.manifest.len());
    assert_eq!(json["subject"]["mediaType"], media_types::OCI_MANIFEST);
    assert!(json["subject"].get("platform").is_none());
    assert!(
        json["annotations"]
            .as_object()
            .is_some_and(|a| !a.is_empty())
    );
    assert_eq!(&artifact.layers[0].data[..], b"{\"sbom\":1}");
    assert_eq!(
        artifact.descriptor().artifact_type.as_deref(),
        Some("application/vnd.example.sbom+json")
    );
}

#[test]
fn oci_layout_round_trips_through_the_reader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = busybox_image(Arch::Amd64);
    let index = busybox_multi_arch();
    write_oci_layout(
        dir.path(),
        &[
            ("single", LayoutEntry::from(&image)),
            ("multi", (&index).into()),
        ],
    )
    .expect("write layout");
    // Writing a tag again replaces it and keeps the others.
    write_oci_layout(dir.path(), &[("single", (&image).into())]).expect("rewrite layout");

    let layout = std::fs::read_to_string(dir.path().join("oci-layout")).expect("oci-layout");
    assert_eq!(layout, r#"{"imageLayoutVersion":"1.0.0"}"#);
    let entries = read_oci_layout_index(dir.path()).expect("index.json");
    let tags: Vec<&str> = entries
        .iter()
        .map(|d| d.annotations.as_ref().expect("annotations")[REF_NAME].as_str())
        .collect();
    assert_eq!(tags, ["multi", "single"]);

    let blobs = read_oci_layout_blobs(dir.path()).expect("blobs");
    let mut expected = BTreeMap::new();
    for img in std::iter::once(&image).chain(&index.children) {
        expected.insert(img.digest.clone(), img.manifest.clone());
        for blob in img.blobs() {
            expected.insert(blob.digest.clone(), blob.data.clone());
        }
    }
    expected.insert(index.digest.clone(), index.manifest.clone());
    assert_eq!(blobs, expected);

    let single = read_oci_layout_manifest(dir.path(), "single").expect("single");
    assert_eq!(single.data, image.manifest);
    assert_eq!(single.media_type, media_types::OCI_MANIFEST);
    let multi = read_oci_layout_manifest(dir.path(), "multi").expect("multi");
    assert_eq!(multi.digest, index.digest);
    assert!(read_oci_layout_manifest(dir.path(), "nope").is_err());
}
