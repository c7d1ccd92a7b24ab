//! Helpers shared by the end-to-end test files: image references on a
//! running `berth-server`, pushing test images into it with skopeo, and the
//! Berth API calls the tests make.
//!
//! Each test file compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use reqwest::{Method, Response, StatusCode};
use tempfile::TempDir;
use test_support::{
    BerthServer, LayoutEntry, OciClient, Skopeo, read_oci_layout_blobs, write_oci_layout,
    write_skopeo_dir,
};

/// The namespace every test repository lives in.
pub const NS: &str = "acme";

/// `acme/NAME`.
pub fn repo(name: &str) -> String {
    format!("{NS}/{name}")
}

/// `HOST/acme/NAME_AND_REF` (no transport), as podman and ctr want it.
pub fn image_ref(server: &BerthServer, name_and_ref: &str) -> String {
    format!("{}/{NS}/{name_and_ref}", server.host())
}

/// `docker://HOST/acme/NAME_AND_REF`, as skopeo wants it.
pub fn docker_ref(server: &BerthServer, name_and_ref: &str) -> String {
    format!("docker://{}", image_ref(server, name_and_ref))
}

/// `oci:DIR:TAG`.
pub fn oci_ref(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

/// `dir:DIR`.
pub fn dir_ref(dir: &Path) -> String {
    format!("dir:{}", dir.display())
}

/// Writes `entry` into a fresh OCI layout under `tag` and copies it with
/// skopeo (`--preserve-digests`, plain HTTP, plus `extra`) to
/// `acme/NAME:TAG`. Returns the layout, for comparisons.
pub fn push_oci(
    skopeo: &Skopeo,
    server: &BerthServer,
    entry: LayoutEntry<'_>,
    name: &str,
    tag: &str,
    extra: &[&str],
) -> TempDir {
    let layout = tempfile::tempdir().expect("tempdir");
    write_oci_layout(layout.path(), &[(tag, entry)]).expect("writing the OCI layout");
    skopeo
        .copy(
            &oci_ref(layout.path(), tag),
            &docker_ref(server, &format!("{name}:{tag}")),
            extra,
        )
        .unwrap_or_else(|e| panic!("skopeo push of {name}:{tag} failed: {e:#}"));
    layout
}

/// Like [`push_oci`] through skopeo's `dir:` format (Docker-typed content).
pub fn push_dir(
    skopeo: &Skopeo,
    server: &BerthServer,
    entry: LayoutEntry<'_>,
    name: &str,
    tag: &str,
    extra: &[&str],
) -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_skopeo_dir(dir.path(), entry).expect("writing the skopeo dir");
    skopeo
        .copy(
            &dir_ref(dir.path()),
            &docker_ref(server, &format!("{name}:{tag}")),
            extra,
        )
        .unwrap_or_else(|e| panic!("skopeo push of {name}:{tag} failed: {e:#}"));
    dir
}

/// Copies `acme/NAME_AND_REF` with skopeo into a fresh OCI layout under
/// `tag` and returns the layout with every blob (manifests included) it
/// holds, each checked against its digest.
pub fn pull_oci(
    skopeo: &Skopeo,
    server: &BerthServer,
    name_and_ref: &str,
    tag: &str,
    extra: &[&str],
) -> (TempDir, BTreeMap<String, Bytes>) {
    let layout = tempfile::tempdir().expect("tempdir");
    skopeo
        .copy(
            &docker_ref(server, name_and_ref),
            &oci_ref(layout.path(), tag),
            extra,
        )
        .unwrap_or_else(|e| panic!("skopeo pull of {name_and_ref} failed: {e:#}"));
    let blobs = read_oci_layout_blobs(layout.path()).expect("reading the pulled layout");
    (layout, blobs)
}

/// Asserts two digest → bytes maps hold the same digests and bytes, naming
/// the differences instead of dumping megabytes.
pub fn assert_same_blobs(
    what: &str,
    expected: &BTreeMap<String, Bytes>,
    actual: &BTreeMap<String, Bytes>,
) {
    let missing: Vec<&String> = expected
        .keys()
        .filter(|k| !actual.contains_key(*k))
        .collect();
    let extra: Vec<&String> = actual
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing {missing:?}, unexpected {extra:?}"
    );
    for (digest, data) in expected {
        assert!(
            actual[digest] == *data,
            "{what}: {digest} differs ({} vs {} bytes)",
            data.len(),
            actual[digest].len()
        );
    }
}

/// `DELETE /api/v1/repositories/NAME?confirm=NAME` (NAME including the
/// namespace; the API wants the name typed again as confirmation).
pub async fn delete_repository(client: &OciClient, name: &str) -> Response {
    let url = client.url(&format!("/api/v1/repositories/{name}?confirm={name}"));
    client
        .request(Method::DELETE, url)
        .send()
        .await
        .expect("DELETE repository request")
}

/// `HEAD /v2/REPO/manifests/REF`: the status and `Docker-Content-Digest`.
pub async fn head_manifest(
    client: &OciClient,
    repo: &str,
    reference: &str,
) -> (StatusCode, Option<String>) {
    let resp = client
        .head_manifest(repo, reference, &[])
        .await
        .expect("HEAD manifest request");
    let digest = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (resp.status(), digest)
}

/// The text of a failed command's error, for asserting on what the client
/// reported.
pub fn error_text(result: anyhow::Result<impl std::fmt::Debug>) -> String {
    match result {
        Ok(v) => panic!("expected the command to fail, it succeeded with {v:?}"),
        Err(e) => format!("{e:#}"),
    }
}
