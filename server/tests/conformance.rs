//! The OCI Distribution Spec conformance suite, ported to in-process Rust
//! tests, with every optional part enabled (the suite's `OCI_VERSION=dev`
//! configuration with all data kinds except "sparse", which Berth refuses on
//! purpose: a manifest's blobs must be in the repository).
//!
//! The suite's structure is kept: blob upload APIs per digest algorithm,
//! then per data kind push, tag list, HEAD, pull, referrers and delete, then
//! manifest error cases. Each data kind runs against its own server. On top
//! of what the suite checks, these tests assert the exact status of every
//! answer (the suite tolerates fallbacks), that refused content never
//! becomes visible, and that every error body is a spec error document
//! (see `common::Server::send`).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write as _;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

const REPO: &str = "conformance/repo1";
const REPO2: &str = "conformance/repo2";
/// The suite's smallest chunk (its `chunkMin`).
const CHUNK_MIN: usize = 1024;
const EXAMPLE_CONF1: &str = "application/vnd.example.oci.conformance.v1";
const EXAMPLE_CONF2: &str = "application/vnd.example.oci.conformance.v2";

// --- test data, generated as the suite generates it --------------------------

type Platform = (&'static str, &'static str);

/// Generation options (the suite's `genWith*`).
#[derive(Clone, Default)]
struct Gen {
    algo: Option<Algo>,
    annotations: Option<BTreeMap<String, String>>,
    annotation_uniq: bool,
    artifact_type: Option<&'static str>,
    uncompressed: bool,
    config_bytes: Option<Vec<u8>>,
    config_media_type: Option<&'static str>,
    extra_field: bool,
    layer_bytes: Option<Vec<u8>>,
    layer_count: Option<usize>,
    layer_media_type: Option<&'static str>,
    platform: Option<Platform>,
    platforms: Option<Vec<Option<Platform>>>,
    set_data: bool,
    subject: Option<Value>,
    tag: Option<&'static str>,
}

impl Gen {
    fn algo(&self) -> Algo {
        self.algo.unwrap_or(Algo::Sha256)
    }
}

/// One data set: what to push, and what the registry must then answer.
struct TestData {
    name: &'static str,
    rng: Rng,
    tags: BTreeMap<String, String>,
    desc: HashMap<String, Value>,
    blobs: BTreeMap<String, Vec<u8>>,
    manifests: HashMap<String, Vec<u8>>,
    /// Push order; each manifest's children come first.
    man_order: Vec<String>,
    /// Subject digest → the descriptors the referrers API must list.
    referrers: BTreeMap<String, Vec<Value>>,
    /// Manifests pushed by digest with `?tag=` for each of their tags.
    tag_param: HashSet<String>,
    /// Manifests whose bytes no longer match their digest: refused.
    bad_digest: HashSet<String>,
}

fn platforms2() -> Vec<Option<Platform>> {
    vec![Some(("linux", "amd64")), Some(("linux", "arm64"))]
}

fn conformance_annotation() -> Option<BTreeMap<String, String>> {
    Some(BTreeMap::from([(
        "org.opencontainers.conformance".to_owned(),
        "hello conformance test".to_owned(),
    )]))
}

/// A tar holding one small text file, as the suite's layers are.
fn make_tar(n: usize, lucky: u64) -> Vec<u8> {
    let content = format!(
        "Conformance test file contents for file number {n}.\nTodays lucky number is {lucky}\n"
    );
    let mut header = tar::Header::new_ustar();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(
        &mut header,
        format!("conformance-{n}.txt"),
        content.as_bytes(),
    )
    .unwrap();
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

impl TestData {
    fn new(name: &'static str, seed: u64) -> Self {
        TestData {
            name,
            rng: Rng::new(seed),
            tags: BTreeMap::new(),
            desc: HashMap::new(),
            blobs: BTreeMap::new(),
            manifests: HashMap::new(),
            man_order: Vec::new(),
            referrers: BTreeMap::new(),
            tag_param: HashSet::new(),
            bad_digest: HashSet::new(),
        }
    }

    fn descriptor(media_type: &str, digest: &str, data: &[u8], g: &Gen) -> Value {
        let mut d = json!({ "mediaType": media_type, "digest": digest, "size": data.len() });
        if g.set_data {
            d["data"] = json!(base64(data));
        }
        d
    }

    fn add_blob(&mut self, data: Vec<u8>, media_type: &str, g: &Gen) -> String {
        let dig = g.algo().digest(&data);
        self.desc
            .insert(dig.clone(), Self::descriptor(media_type, &dig, &data, g));
        self.blobs.insert(dig.clone(), data);
        dig
    }

    fn gen_blob(&mut self, size: usize, media_type: &str, g: &Gen) -> String {
        let data = self.rng.bytes(size);
        self.add_blob(data, media_type, g)
    }

    /// A layer blob; returns its digest and the digest of its tar (for the
    /// config's `diff_ids`).
    fn gen_layer(&mut self, n: usize, g: &Gen) -> (String, String) {
        let tar = make_tar(n, self.rng.next_u64());
        let diff_id = g.algo().digest(&tar);
        let (body, mt) = if g.uncompressed {
            (tar, OCI_LAYER)
        } else {
            (gzip(&tar), OCI_LAYER_GZ)
        };
        (self.add_blob(body, mt, g), diff_id)
    }

    fn add_extra_field(&mut self, v: &mut Value) {
        let key = format!("org.{}", self.rng.text());
        v[key] = json!(self.rng.text());
    }

    fn gen_config(&mut self, platform: Platform, diff_ids: &[String], g: &Gen) -> String {
        let mut config = json!({
            "author": "OCI Conformance Test",
            "architecture": platform.1,
            "os": platform.0,
            "config": {},
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        });
        if g.extra_field {
            self.add_extra_field(&mut config);
        }
        let body = serde_json::to_vec(&config).unwrap();
        self.add_blob(body, OCI_CONFIG, g)
    }

    fn annotations(&mut self, g: &Gen) -> Option<BTreeMap<String, String>> {
        let mut a = g.annotations.clone();
        if g.annotation_uniq {
            let (k, v) = (self.rng.text(), self.rng.text());
            a.get_or_insert_default()
                .insert(format!("org.example.{k}"), v);
        }
        a
    }

    /// Records a generated manifest: its descriptor, referrer entry and tag.
    fn record_manifest(
        &mut self,
        doc: Value,
        media_type: &str,
        artifact_type: Option<String>,
        annotations: Option<BTreeMap<String, String>>,
        g: &Gen,
    ) -> String {
        let body = serde_json::to_vec(&doc).unwrap();
        let dig = g.algo().digest(&body);
        self.desc
            .insert(dig.clone(), Self::descriptor(media_type, &dig, &body, g));
        if let Some(s) = &g.subject {
            let mut d = json!({ "mediaType": media_type, "digest": dig, "size": body.len() });
            if let Some(at) = artifact_type.filter(|a| !a.is_empty()) {
                d["artifactType"] = json!(at);
            }
            if let Some(a) = annotations {
                d["annotations"] = json!(a);
            }
            let subject = s["digest"].as_str().unwrap().to_owned();
            self.referrers.entry(subject).or_default().push(d);
        }
        if let Some(t) = g.tag {
            self.tags.insert(t.to_owned(), dig.clone());
        }
        self.manifests.insert(dig.clone(), body);
        self.man_order.push(dig.clone());
        dig
    }

    fn gen_manifest(&mut self, config: Value, layers: Vec<Value>, g: &Gen) -> String {
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config,
            "layers": layers,
        });
        if let Some(at) = g.artifact_type {
            m["artifactType"] = json!(at);
        }
        if let Some(s) = &g.subject {
            m["subject"] = s.clone();
        }
        let annotations = self.annotations(g);
        if let Some(a) = &annotations {
            m["annotations"] = json!(a);
        }
        if g.extra_field {
            self.add_extra_field(&mut m);
        }
        // The referrers API reports an image's config type when it has no
        // artifactType.
        let at = g
            .artifact_type
            .map(str::to_owned)
            .or_else(|| m["config"]["mediaType"].as_str().map(str::to_owned));
        self.record_manifest(m, OCI_MANIFEST, at, annotations, g)
    }

    fn gen_manifest_full(&mut self, g: &Gen) -> String {
        let platform = g.platform.unwrap_or(("linux", "amd64"));
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for n in 0..g.layer_count.unwrap_or(2) {
            match g.layer_media_type {
                Some(mt) if !mt.starts_with("application/vnd.oci.image.layer.v1.") => {
                    let d = match &g.layer_bytes {
                        Some(b) => self.add_blob(b.clone(), mt, g),
                        None => self.gen_blob(2048, mt, g),
                    };
                    diff_ids.push(d.clone());
                    layers.push(d);
                }
                _ => {
                    let (d, diff_id) = self.gen_layer(n, g);
                    layers.push(d);
                    diff_ids.push(diff_id);
                }
            }
        }
        let config = match g.config_media_type {
            None | Some(OCI_CONFIG) => self.gen_config(platform, &diff_ids, g),
            Some(mt) => self.add_blob(g.config_bytes.clone().unwrap_or_default(), mt, g),
        };
        let config = self.desc[&config].clone();
        let layers = layers.iter().map(|d| self.desc[d].clone()).collect();
        self.gen_manifest(config, layers, g)
    }

    fn gen_index(
        &mut self,
        platforms: &[Option<Platform>],
        children: &[String],
        g: &Gen,
    ) -> String {
        let entries: Vec<Value> = children
            .iter()
            .zip(platforms)
            .map(|(d, p)| {
                let mut e = self.desc[d].clone();
                if let Some((os, arch)) = p {
                    e["platform"] = json!({ "architecture": arch, "os": os });
                }
                e
            })
            .collect();
        let mut ind = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries });
        if let Some(at) = g.artifact_type {
            ind["artifactType"] = json!(at);
        }
        if let Some(s) = &g.subject {
            ind["subject"] = s.clone();
        }
        let annotations = self.annotations(g);
        if let Some(a) = &annotations {
            ind["annotations"] = json!(a);
        }
        if g.extra_field {
            self.add_extra_field(&mut ind);
        }
        let at = g.artifact_type.map(str::to_owned);
        self.record_manifest(ind, OCI_INDEX, at, annotations, g)
    }

    /// An index of one image per platform; every option (tag, subject,
    /// artifact type…) applies to the images too, as in the suite.
    fn gen_index_full(&mut self, g: &Gen) -> String {
        let platforms = g.platforms.clone().unwrap_or_else(platforms2);
        let mut children = Vec::new();
        for p in &platforms {
            let child = Gen {
                platform: *p,
                ..g.clone()
            };
            children.push(self.gen_manifest_full(&child));
        }
        self.gen_index(&platforms, &children, g)
    }

    /// Tags every manifest with `<prefix>-<i>` and pushes them by digest with
    /// `?tag=` parameters.
    fn use_tag_params(&mut self, prefix: &str) {
        for (i, d) in self.man_order.clone().into_iter().enumerate() {
            self.tags.insert(format!("{prefix}-{i}"), d.clone());
            self.tag_param.insert(d);
        }
    }
}

/// The data kinds of the suite's `GenerateData`, in its order.
fn data_kind(name: &'static str) -> TestData {
    let seed = name.bytes().fold(0xC0FFEEu64, |h, b| {
        h.wrapping_mul(0x100_0000_01B3) ^ u64::from(b)
    });
    let mut td = TestData::new(name, seed);
    match name {
        "image" => {
            td.gen_manifest_full(&Gen {
                tag: Some("image"),
                ..Gen::default()
            });
        }
        "image-uncompressed" => {
            td.gen_manifest_full(&Gen {
                tag: Some("image-uncompressed"),
                uncompressed: true,
                ..Gen::default()
            });
        }
        "large-manifest" => {
            let annotations = (0..390)
                .map(|i| (format!("large-annotation-{i}"), "A".repeat(10_000)))
                .collect();
            td.gen_manifest_full(&Gen {
                tag: Some("large-manifest"),
                annotations: Some(annotations),
                ..Gen::default()
            });
        }
        "index" => {
            td.gen_index_full(&Gen {
                tag: Some("index"),
                platforms: Some(platforms2()),
                ..Gen::default()
            });
        }
        "nested-index" => {
            let a = td.gen_index_full(&Gen::default());
            let b = td.gen_index_full(&Gen::default());
            td.gen_index(
                &[None, None],
                &[a, b],
                &Gen {
                    tag: Some("index-of-index"),
                    ..Gen::default()
                },
            );
        }
        "empty-index" => {
            td.gen_index_full(&Gen {
                tag: Some("index"),
                platforms: Some(Vec::new()),
                ..Gen::default()
            });
        }
        "artifact" => {
            td.gen_manifest_full(&artifact_gen(Some("artifact")));
        }
        "artifact-index" => {
            td.gen_index_full(&Gen {
                platforms: Some(platforms2()),
                ..artifact_gen(Some("artifact-index"))
            });
        }
        "artifact-without-layers" => {
            td.gen_manifest_full(&Gen {
                layer_bytes: Some(b"{}".to_vec()),
                layer_media_type: Some(OCI_EMPTY_JSON),
                ..artifact_gen(Some("artifact-without-layers"))
            });
        }
        "artifacts-with-subject" => {
            let subject = td.gen_manifest_full(&Gen {
                tag: Some("image"),
                ..Gen::default()
            });
            let subject = td.desc[&subject].clone();
            td.gen_manifest_full(&Gen {
                subject: Some(subject.clone()),
                ..Gen::default()
            });
            td.gen_manifest_full(&Gen {
                annotations: conformance_annotation(),
                annotation_uniq: true,
                subject: Some(subject.clone()),
                ..artifact_gen(Some("tagged-artifact1"))
            });
            td.gen_manifest_full(&Gen {
                artifact_type: Some(EXAMPLE_CONF2),
                annotations: conformance_annotation(),
                annotation_uniq: true,
                layer_media_type: Some(OCTET_STREAM),
                subject: Some(subject),
                ..artifact_gen(Some("tagged-artifact2"))
            });
        }
        "index-with-subject" => {
            let subject = td.gen_index_full(&Gen {
                tag: Some("index"),
                ..Gen::default()
            });
            let subject = td.desc[&subject].clone();
            td.gen_index_full(&Gen {
                annotations: conformance_annotation(),
                annotation_uniq: true,
                subject: Some(subject),
                ..artifact_gen(Some("tagged-artifact"))
            });
        }
        "missing-subject" => {
            let missing = sha256(b"missing content");
            td.gen_manifest_full(&Gen {
                annotations: conformance_annotation(),
                annotation_uniq: true,
                subject: Some(json!({ "mediaType": OCI_MANIFEST, "size": 123, "digest": missing })),
                ..artifact_gen(Some("tagged-artifact"))
            });
        }
        "data-field" => {
            td.gen_manifest_full(&Gen {
                tag: Some("data-field"),
                set_data: true,
                ..Gen::default()
            });
        }
        "non-distributable-layers" => {
            // Two foreign layers that are never pushed, then a normal one.
            let g = Gen::default();
            let mut foreign = Vec::new();
            let mut diff_ids = Vec::new();
            for (mt, size) in [(OCI_LAYER_ND_GZ, 123_456), (OCI_LAYER_ND, 12_345)] {
                let d = sha256(&td.rng.bytes(256));
                diff_ids.push(d.clone());
                let hex = d.trim_start_matches("sha256:").to_owned();
                foreign.push(json!({
                    "mediaType": mt,
                    "digest": d,
                    "size": size,
                    "urls": [format!("https://store.example.com/blobs/sha256/{hex}")],
                }));
            }
            let (layer, diff_id) = td.gen_layer(1, &g);
            diff_ids.push(diff_id);
            foreign.push(td.desc[&layer].clone());
            let config = td.gen_config(("linux", "amd64"), &diff_ids, &g);
            let config = td.desc[&config].clone();
            td.gen_manifest(
                config,
                foreign,
                &Gen {
                    tag: Some("non-distributable-image"),
                    ..Gen::default()
                },
            );
        }
        "custom-fields" => {
            td.gen_index_full(&Gen {
                tag: Some("custom-fields"),
                platforms: Some(platforms2()),
                extra_field: true,
                ..Gen::default()
            });
        }
        "no-layers" => {
            td.gen_manifest_full(&Gen {
                tag: Some("no-layers"),
                layer_count: Some(0),
                ..Gen::default()
            });
        }
        "sha512" => {
            // Non-canonical digests can only be pushed by digest.
            td.gen_index_full(&Gen {
                algo: Some(Algo::Sha512),
                ..Gen::default()
            });
        }
        "tag-param-sha256" => {
            td.gen_index_full(&Gen {
                tag: Some("tag-param-sha256"),
                ..Gen::default()
            });
            td.use_tag_params("tag-param-sha256");
        }
        "tag-param-sha512" => {
            td.gen_index_full(&Gen {
                tag: Some("tag-param-sha512"),
                algo: Some(Algo::Sha512),
                ..Gen::default()
            });
            td.use_tag_params("tag-param-sha512");
        }
        "bad-digest-image" => {
            let d = td.gen_manifest_full(&Gen::default());
            // Whitespace after the JSON: the bytes no longer match the digest.
            td.manifests.get_mut(&d).unwrap().extend_from_slice(b"  ");
            td.bad_digest.insert(d);
        }
        other => panic!("unknown data kind {other}"),
    }
    td
}

fn artifact_gen(tag: Option<&'static str>) -> Gen {
    Gen {
        tag,
        artifact_type: Some(EXAMPLE_CONF1),
        config_media_type: Some(OCI_EMPTY_JSON),
        config_bytes: Some(b"{}".to_vec()),
        layer_count: Some(1),
        layer_media_type: Some(EXAMPLE_CONF1),
        ..Gen::default()
    }
}

/// The media type a client pushes a manifest with: its `mediaType` field.
fn detect_media_type(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_owned))
        .unwrap_or_else(|| OCI_MANIFEST.to_owned())
}

fn detect_subject(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["subject"]["digest"].as_str().map(str::to_owned))
}

// --- blob push APIs ---------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PushApi {
    PostPut,
    PostOnly,
    PatchStream,
    PatchChunked,
}

const PUSH_APIS: [PushApi; 4] = [
    PushApi::PostPut,
    PushApi::PostOnly,
    PushApi::PatchStream,
    PushApi::PatchChunked,
];

/// What a blob push is expected to end with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    Created,
    /// The data does not match the digest: 400 DIGEST_INVALID, nothing stored.
    BadDigest,
}

#[derive(Clone, Copy, Default)]
struct Chunking {
    put_last_chunk: bool,
    out_of_order: bool,
}

/// `<location>?digest=` or `<location>&digest=`.
fn with_digest(location: &str, digest: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

fn location(r: &Resp) -> String {
    r.header("location")
        .unwrap_or_else(|| panic!("{}: no Location header", r.describe()))
        .to_owned()
}

async fn push_blob(srv: &Server, repo: &str, api: PushApi, dig: &str, data: &[u8]) {
    match api {
        PushApi::PostPut => blob_post_put(srv, repo, dig, data, Expect::Created).await,
        PushApi::PostOnly => blob_post_only(srv, repo, dig, data, Expect::Created).await,
        PushApi::PatchStream => blob_patch_stream(srv, repo, dig, data, Expect::Created).await,
        PushApi::PatchChunked => {
            blob_patch_chunked(srv, repo, dig, data, Chunking::default(), Expect::Created).await
        }
    }
}

/// Checks a 201 answer to a blob upload and that its `Location` serves the
/// blob.
async fn blob_created(srv: &Server, r: &Resp, dig: &str, data: &[u8]) {
    assert_eq!(r.status, 201, "{}", r.describe());
    assert_eq!(r.header("docker-content-digest"), Some(dig), "{}", r.what);
    let got = srv.get(&location(r)).await;
    assert_eq!(got.status, 200, "{}", got.describe());
    assert!(
        got.body == data,
        "{}: body differs from the upload",
        got.what
    );
}

/// A refused upload: 400 DIGEST_INVALID and neither the claimed digest nor
/// the real content became visible.
async fn blob_refused(srv: &Server, repo: &str, r: &Resp, dig: &str, data: &[u8]) {
    r.assert_error(400, "DIGEST_INVALID");
    let algo = if dig.starts_with("sha512:") {
        Algo::Sha512
    } else {
        Algo::Sha256
    };
    for d in [dig.to_owned(), algo.digest(data)] {
        srv.head(&format!("/v2/{repo}/blobs/{d}"))
            .await
            .assert_error(404, "BLOB_UNKNOWN");
    }
}

async fn blob_post_only(srv: &Server, repo: &str, dig: &str, data: &[u8], expect: Expect) {
    let r = srv
        .send(
            srv.req(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={dig}"),
            )
            .header("Content-Type", OCTET_STREAM)
            .body(data.to_vec()),
        )
        .await;
    match expect {
        Expect::Created => blob_created(srv, &r, dig, data).await,
        Expect::BadDigest => blob_refused(srv, repo, &r, dig, data).await,
    }
}

async fn blob_post_put(srv: &Server, repo: &str, dig: &str, data: &[u8], expect: Expect) {
    let loc = srv.start_upload(repo).await;
    let r = srv
        .send(
            srv.req(Method::PUT, &with_digest(&loc, dig))
                .header("Content-Type", OCTET_STREAM)
                .body(data.to_vec()),
        )
        .await;
    match expect {
        Expect::Created => blob_created(srv, &r, dig, data).await,
        Expect::BadDigest => blob_refused(srv, repo, &r, dig, data).await,
    }
}

async fn blob_patch_stream(srv: &Server, repo: &str, dig: &str, data: &[u8], expect: Expect) {
    let loc = srv.start_upload(repo).await;
    // No Content-Length and no Content-Range: a chunked transfer of the
    // whole blob.
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(700).map(|c| Ok(c.to_vec())).collect();
    let r = srv
        .send(
            srv.req(Method::PATCH, &loc)
                .header("Content-Type", OCTET_STREAM)
                .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces))),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.describe());
    let expected_range = format!("0-{}", data.len().saturating_sub(1));
    assert_eq!(
        r.header("range"),
        Some(expected_range.as_str()),
        "{}",
        r.what
    );
    let loc = location(&r);
    let r = srv
        .send(
            srv.req(Method::PUT, &with_digest(&loc, dig))
                .header("Content-Type", OCTET_STREAM)
                .body(Vec::new()),
        )
        .await;
    match expect {
        Expect::Created => blob_created(srv, &r, dig, data).await,
        Expect::BadDigest => blob_refused(srv, repo, &r, dig, data).await,
    }
}

async fn blob_patch_chunked(
    srv: &Server,
    repo: &str,
    dig: &str,
    data: &[u8],
    how: Chunking,
    expect: Expect,
) {
    let r = srv
        .send(
            srv.req(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
                .body(Vec::new()),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.describe());
    assert_eq!(r.header("range"), Some("0-0"), "{}", r.what);
    let mut loc = location(&r);
    // Three chunks, but never less than the server's minimum or the suite's.
    let server_min = r
        .header("oci-chunk-min-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let chunk = (data.len() / 3 + 1).max(server_min).max(CHUNK_MIN);
    let chunk = chunk.min(data.len());
    let len = data.len() as i64;
    let mut last: i64 = -1;
    let mut finished = None;
    while last < len - 1 {
        if how.out_of_order {
            // Skip ahead (or back to the start): refused with 416 and the
            // upload's state, then the client asks where it stands.
            let mut bad_start = (last + 1) as usize + chunk;
            if bad_start >= data.len() {
                bad_start = 0;
            }
            let bad_last = (bad_start + chunk - 1).min(data.len() - 1);
            let (method, url) = if how.put_last_chunk && bad_last == data.len() - 1 {
                (Method::PUT, with_digest(&loc, dig))
            } else {
                (Method::PATCH, loc.clone())
            };
            let r = srv
                .send(
                    srv.req(method, &url)
                        .header("Content-Type", OCTET_STREAM)
                        .header("Content-Range", format!("{bad_start}-{bad_last}"))
                        .body(data[bad_start..=bad_last].to_vec()),
                )
                .await;
            r.assert_error(416, "BLOB_UPLOAD_INVALID");
            let expected_range = format!("0-{}", last.max(0));
            assert_eq!(
                r.header("range"),
                Some(expected_range.as_str()),
                "{}",
                r.what
            );
            loc = location(&r);
            let s = srv.get(&loc).await;
            assert_eq!(s.status, 204, "{}", s.describe());
            assert!(s.body.is_empty(), "{}", s.what);
            assert_eq!(
                s.header("range"),
                Some(expected_range.as_str()),
                "{}",
                s.what
            );
            loc = location(&s);
        }
        let start = (last + 1) as usize;
        last = (start + chunk - 1).min(data.len() - 1) as i64;
        let end = last as usize;
        let is_last = last == len - 1;
        let (method, url) = if how.put_last_chunk && is_last {
            (Method::PUT, with_digest(&loc, dig))
        } else {
            (Method::PATCH, loc.clone())
        };
        let r = srv
            .send(
                srv.req(method.clone(), &url)
                    .header("Content-Type", OCTET_STREAM)
                    .header("Content-Range", format!("{start}-{end}"))
                    .body(data[start..=end].to_vec()),
            )
            .await;
        if method == Method::PUT {
            finished = Some(r);
            break;
        }
        assert_eq!(r.status, 202, "{}", r.describe());
        let expected_range = format!("0-{end}");
        assert_eq!(
            r.header("range"),
            Some(expected_range.as_str()),
            "{}",
            r.what
        );
        loc = location(&r);
    }
    let r = match finished {
        Some(r) => r,
        None => {
            srv.send(
                srv.req(Method::PUT, &with_digest(&loc, dig))
                    .header("Content-Type", OCTET_STREAM)
                    .body(Vec::new()),
            )
            .await
        }
    };
    match expect {
        Expect::Created => blob_created(srv, &r, dig, data).await,
        Expect::BadDigest => {
            blob_refused(srv, repo, &r, dig, data).await;
            // A refused upload is over: its session is gone.
            srv.get(&loc).await.assert_error(404, "BLOB_UPLOAD_UNKNOWN");
        }
    }
}

/// Cross-repository mount; returns the status of the POST (201 mounted,
/// 202 fell back to an upload, which is then completed).
async fn blob_mount(srv: &Server, repo: &str, from: Option<&str>, dig: &str, data: &[u8]) -> u16 {
    let mut path = format!("/v2/{repo}/blobs/uploads/?mount={dig}");
    if let Some(f) = from {
        path.push_str(&format!("&from={f}"));
    }
    let r = srv
        .send(srv.req(Method::POST, &path).body(Vec::new()))
        .await;
    match r.status {
        201 => blob_created(srv, &r, dig, data).await,
        202 => {
            let put = srv
                .send(
                    srv.req(Method::PUT, &with_digest(&location(&r), dig))
                        .header("Content-Type", OCTET_STREAM)
                        .body(data.to_vec()),
                )
                .await;
            blob_created(srv, &put, dig, data).await;
        }
        _ => panic!("{}", r.describe()),
    }
    r.status
}

async fn blob_post_cancel(srv: &Server, repo: &str) {
    let loc = srv.start_upload(repo).await;
    let r = srv
        .send(srv.req(Method::DELETE, &loc).body(Vec::new()))
        .await;
    assert_eq!(r.status, 204, "{}", r.describe());
    srv.get(&loc).await.assert_error(404, "BLOB_UPLOAD_UNKNOWN");
    let r = srv
        .send(
            srv.req(Method::PATCH, &loc)
                .header("Content-Type", OCTET_STREAM)
                .body(b"late".to_vec()),
        )
        .await;
    r.assert_error(404, "BLOB_UPLOAD_UNKNOWN");
}

async fn check_blob_head(srv: &Server, repo: &str, dig: &str, data: &[u8]) {
    let r = srv.head(&format!("/v2/{repo}/blobs/{dig}")).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(r.body.is_empty(), "{}", r.what);
    let len = data.len().to_string();
    assert_eq!(r.header("content-length"), Some(len.as_str()), "{}", r.what);
    assert_eq!(r.header("docker-content-digest"), Some(dig), "{}", r.what);
}

async fn check_blob_get(srv: &Server, repo: &str, dig: &str, data: &[u8]) {
    let r = srv.get(&format!("/v2/{repo}/blobs/{dig}")).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert!(r.body == data, "{}: wrong body", r.what);
    let len = data.len().to_string();
    assert_eq!(r.header("content-length"), Some(len.as_str()), "{}", r.what);
    assert_eq!(r.header("docker-content-digest"), Some(dig), "{}", r.what);
}

/// DELETE then HEAD: 202 for a blob linked to the repository, 404 after.
async fn delete_blob(srv: &Server, repo: &str, dig: &str, existed: bool) {
    let r = srv.delete(&format!("/v2/{repo}/blobs/{dig}")).await;
    if existed {
        assert_eq!(r.status, 202, "{}", r.describe());
    } else {
        r.assert_error(404, "BLOB_UNKNOWN");
    }
    srv.head(&format!("/v2/{repo}/blobs/{dig}"))
        .await
        .assert_error(404, "BLOB_UNKNOWN");
    srv.get(&format!("/v2/{repo}/blobs/{dig}"))
        .await
        .assert_error(404, "BLOB_UNKNOWN");
}

/// The suite's `TestBlobAPIs` for one digest algorithm.
async fn blob_apis(algo: Algo, seed: u64) {
    let srv = Server::start().await;
    let mut rng = Rng::new(seed);
    let mut gen_blob = |n: usize| {
        let data = rng.bytes(n);
        (algo.digest(&data), data)
    };

    // A blob never pushed.
    let (dig, _) = gen_blob(512);
    srv.get(&format!("/v2/{REPO}/blobs/{dig}"))
        .await
        .assert_error(404, "BLOB_UNKNOWN");

    // Every upload API, then HEAD, GET and DELETE of the result.
    for api in PUSH_APIS {
        let (dig, data) = gen_blob(512);
        push_blob(&srv, REPO, api, &dig, &data).await;
        check_blob_head(&srv, REPO, &dig, &data).await;
        check_blob_get(&srv, REPO, &dig, &data).await;
        delete_blob(&srv, REPO, &dig, true).await;
    }
    let size = CHUNK_MIN * 3 - 5;
    for how in [
        Chunking::default(),
        Chunking {
            put_last_chunk: true,
            out_of_order: false,
        },
        Chunking {
            put_last_chunk: false,
            out_of_order: true,
        },
        Chunking {
            put_last_chunk: true,
            out_of_order: true,
        },
    ] {
        let (dig, data) = gen_blob(size);
        blob_patch_chunked(&srv, REPO, &dig, &data, how, Expect::Created).await;
        check_blob_head(&srv, REPO, &dig, &data).await;
        check_blob_get(&srv, REPO, &dig, &data).await;
        delete_blob(&srv, REPO, &dig, true).await;
    }

    // Mount from a repository holding the blob.
    let (dig, data) = gen_blob(512);
    push_blob(&srv, REPO2, PushApi::PostPut, &dig, &data).await;
    assert_eq!(blob_mount(&srv, REPO, Some(REPO2), &dig, &data).await, 201);
    check_blob_head(&srv, REPO, &dig, &data).await;
    check_blob_get(&srv, REPO, &dig, &data).await;
    delete_blob(&srv, REPO, &dig, true).await;
    // Unlinking from one repository leaves the other's link alone.
    check_blob_get(&srv, REPO2, &dig, &data).await;
    delete_blob(&srv, REPO2, &dig, true).await;

    // Anonymous mount: no `from`.
    let (dig, data) = gen_blob(512);
    push_blob(&srv, REPO2, PushApi::PostOnly, &dig, &data).await;
    assert_eq!(blob_mount(&srv, REPO, None, &dig, &data).await, 201);
    check_blob_head(&srv, REPO, &dig, &data).await;
    check_blob_get(&srv, REPO, &dig, &data).await;
    delete_blob(&srv, REPO, &dig, true).await;
    delete_blob(&srv, REPO2, &dig, true).await;

    // Mount from a repository without the blob falls back to an upload,
    // even when a third repository holds it.
    let (dig, data) = gen_blob(512);
    push_blob(&srv, "conformance/other", PushApi::PostOnly, &dig, &data).await;
    assert_eq!(blob_mount(&srv, REPO, Some(REPO2), &dig, &data).await, 202);
    srv.head(&format!("/v2/{REPO2}/blobs/{dig}"))
        .await
        .assert_error(404, "BLOB_UNKNOWN");
    check_blob_head(&srv, REPO, &dig, &data).await;
    check_blob_get(&srv, REPO, &dig, &data).await;
    delete_blob(&srv, REPO, &dig, true).await;

    // A cancelled upload leaves nothing behind.
    blob_post_cancel(&srv, REPO).await;

    // Range requests on a 2048-byte blob.
    let (dig, data) = gen_blob(2048);
    push_blob(&srv, REPO, PushApi::PostOnly, &dig, &data).await;
    let path = format!("/v2/{REPO}/blobs/{dig}");
    for (range, want) in [
        ("bytes=500-1499", Some((500, 1499))),
        ("bytes=500-", Some((500, 2047))),
        ("bytes=-500", Some((1548, 2047))),
        ("bytes=2000-5000", Some((2000, 2047))),
        ("bytes=500-0", None),
        ("bytes=5000-10000", None),
    ] {
        let r = srv
            .send(srv.req(Method::GET, &path).header("Range", range))
            .await;
        match want {
            Some((a, b)) => {
                assert_eq!(r.status, 206, "{range}: {}", r.describe());
                assert!(r.body == data[a..=b], "{range}: wrong bytes");
                let len = (b - a + 1).to_string();
                assert_eq!(r.header("content-length"), Some(len.as_str()), "{range}");
                let cr = format!("bytes {a}-{b}/2048");
                assert_eq!(r.header("content-range"), Some(cr.as_str()), "{range}");
            }
            None => {
                assert_eq!(r.status, 416, "{range}: {}", r.describe());
                r.error_codes();
                assert_eq!(r.header("content-range"), Some("bytes */2048"), "{range}");
            }
        }
    }
    delete_blob(&srv, REPO, &dig, true).await;

    // Well-known contents: the empty blob and the empty JSON object, by
    // every upload API.
    for data in [&b""[..], &b"{}"[..]] {
        let dig = algo.digest(data);
        for api in PUSH_APIS {
            push_blob(&srv, REPO, api, &dig, data).await;
            check_blob_head(&srv, REPO, &dig, data).await;
            check_blob_get(&srv, REPO, &dig, data).await;
            delete_blob(&srv, REPO, &dig, true).await;
        }
    }

    // Every upload API refuses data that does not match the digest.
    let bad = |rng_blob: (String, Vec<u8>)| {
        let (dig, mut data) = rng_blob;
        data.extend_from_slice(b"oh no");
        (dig, data)
    };
    let (dig, data) = bad(gen_blob(size));
    blob_post_only(&srv, REPO, &dig, &data, Expect::BadDigest).await;
    let (dig, data) = bad(gen_blob(size));
    blob_post_put(&srv, REPO, &dig, &data, Expect::BadDigest).await;
    let (dig, data) = bad(gen_blob(size));
    blob_patch_chunked(
        &srv,
        REPO,
        &dig,
        &data,
        Chunking::default(),
        Expect::BadDigest,
    )
    .await;
    let (dig, data) = bad(gen_blob(size));
    blob_patch_chunked(
        &srv,
        REPO,
        &dig,
        &data,
        Chunking {
            put_last_chunk: true,
            out_of_order: false,
        },
        Expect::BadDigest,
    )
    .await;
    let (dig, data) = bad(gen_blob(size));
    blob_patch_stream(&srv, REPO, &dig, &data, Expect::BadDigest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_sha256() {
    blob_apis(Algo::Sha256, 256).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_sha512() {
    blob_apis(Algo::Sha512, 512).await;
}

// --- data kinds -------------------------------------------------------------

/// GET (or HEAD) of a manifest: exact status, Content-Type, Content-Length,
/// Docker-Content-Digest and body.
async fn check_manifest(srv: &Server, reference: &str, dig: &str, body: &[u8], head: bool) {
    let method = if head { Method::HEAD } else { Method::GET };
    let r = srv
        .send(
            srv.req(method, &format!("/v2/{REPO}/manifests/{reference}"))
                .header("Accept", OCI_INDEX)
                .header("Accept", OCI_MANIFEST),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.describe());
    let mt = detect_media_type(body);
    assert_eq!(r.header("content-type"), Some(mt.as_str()), "{}", r.what);
    let len = body.len().to_string();
    assert_eq!(r.header("content-length"), Some(len.as_str()), "{}", r.what);
    assert_eq!(r.header("docker-content-digest"), Some(dig), "{}", r.what);
    if head {
        assert!(r.body.is_empty(), "{}: HEAD with a body", r.what);
    } else {
        assert!(
            r.body == body,
            "{}: body differs from what was pushed",
            r.what
        );
    }
}

async fn push_manifest(srv: &Server, td: &TestData, reference: &str, dig: &str, tags: &[String]) {
    let body = &td.manifests[dig];
    let mt = detect_media_type(body);
    let mut path = format!("/v2/{REPO}/manifests/{reference}");
    for (i, t) in tags.iter().enumerate() {
        path.push(if i == 0 { '?' } else { '&' });
        path.push_str(&format!("tag={t}"));
    }
    let r = srv
        .send(
            srv.req(Method::PUT, &path)
                .header("Content-Type", mt.as_str())
                .body(body.clone()),
        )
        .await;
    if td.bad_digest.contains(dig) {
        r.assert_error(400, "DIGEST_INVALID");
        return;
    }
    assert_eq!(r.status, 201, "{}: {}", td.name, r.describe());
    assert_eq!(r.header("docker-content-digest"), Some(dig), "{}", r.what);
    match detect_subject(body) {
        Some(s) => assert_eq!(r.header("oci-subject"), Some(s.as_str()), "{}", r.what),
        None => assert_eq!(r.header("oci-subject"), None, "{}", r.what),
    }
    let answered: Vec<String> = r
        .header_all("oci-tag")
        .iter()
        .flat_map(|v| v.split(',').map(|t| t.trim().to_owned()))
        .collect();
    for t in tags {
        assert!(
            answered.contains(t),
            "{}: no OCI-Tag {t}: {answered:?}",
            r.what
        );
    }
    let got = srv
        .send(
            srv.req(Method::GET, &location(&r))
                .header("Accept", OCI_INDEX)
                .header("Accept", OCI_MANIFEST),
        )
        .await;
    assert_eq!(got.status, 200, "{}", got.describe());
    assert_eq!(
        got.header("content-type"),
        Some(mt.as_str()),
        "{}",
        got.what
    );
    let len = body.len().to_string();
    assert_eq!(
        got.header("content-length"),
        Some(len.as_str()),
        "{}",
        got.what
    );
    assert!(got.body == *body, "{}: body differs", got.what);
}

/// Whether a referrers entry describes `goal` (annotations may be a superset).
fn referrer_matches(entry: &Value, goal: &Value) -> bool {
    let at = |v: &Value| v["artifactType"].as_str().unwrap_or("").to_owned();
    entry["digest"] == goal["digest"]
        && entry["mediaType"] == goal["mediaType"]
        && entry["size"] == goal["size"]
        && at(entry) == at(goal)
        && goal["annotations"]
            .as_object()
            .map(|a| a.iter().all(|(k, v)| entry["annotations"][k] == *v))
            .unwrap_or(true)
}

async fn referrers(srv: &Server, subject: &str, artifact_type: Option<&str>) -> Resp {
    let mut path = format!("/v2/{REPO}/referrers/{subject}");
    if let Some(at) = artifact_type {
        // Query encoding as Go's url.Values does it: a raw '+' would mean ' '.
        let at = at.replace('+', "%2B");
        path.push_str(&format!("?artifactType={at}"));
    }
    let r = srv.get(&path).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(r.header("content-type"), Some(OCI_INDEX), "{}", r.what);
    let doc = r.json();
    assert_eq!(doc["schemaVersion"], 2, "{}", r.what);
    assert_eq!(doc["mediaType"], OCI_INDEX, "{}", r.what);
    assert!(doc["manifests"].is_array(), "{}", r.what);
    r
}

async fn run_data_kind(name: &'static str) {
    let td = data_kind(name);
    let srv = Server::start().await;

    // Push: blobs by each upload API in turn, manifests by digest (children
    // first), then tags.
    for (i, (dig, data)) in td.blobs.iter().enumerate() {
        push_blob(&srv, REPO, PUSH_APIS[i % PUSH_APIS.len()], dig, data).await;
    }
    let mut tag_pushed = BTreeSet::new();
    for dig in &td.man_order {
        let tags: Vec<String> = if td.tag_param.contains(dig) {
            td.tags
                .iter()
                .filter(|(_, d)| *d == dig)
                .map(|(t, _)| t.clone())
                .collect()
        } else {
            Vec::new()
        };
        push_manifest(&srv, &td, dig, dig, &tags).await;
        tag_pushed.extend(tags);
    }
    for (tag, dig) in &td.tags {
        if !tag_pushed.contains(tag) {
            push_manifest(&srv, &td, tag, dig, &[]).await;
        }
    }

    // Tag list, with `last`.
    if td.tags.is_empty() {
        // Only refused manifests or pushes by digest: no tag exists.
        if let Some(tags) = srv.tags(REPO).await {
            assert!(tags.is_empty(), "{name}: unexpected tags {tags:?}");
        }
    } else {
        let listed = srv.tags(REPO).await.unwrap();
        let want: Vec<String> = td.tags.keys().cloned().collect();
        assert_eq!(listed, want, "{name}: tag list");
        if listed.len() >= 2 {
            let end = listed.len() / 2;
            let last = &listed[end - 1];
            let r = srv.get(&format!("/v2/{REPO}/tags/list?last={last}")).await;
            assert_eq!(r.status, 200, "{}", r.describe());
            assert_eq!(strings(&r.json()["tags"]), listed[end..], "{}", r.what);
        }
    }

    // HEAD, then GET, by tag and by digest; blobs.
    for head in [true, false] {
        for (tag, dig) in &td.tags {
            check_manifest(&srv, tag, dig, &td.manifests[dig], head).await;
        }
        for dig in &td.man_order {
            if td.bad_digest.contains(dig) {
                let r = srv.get(&format!("/v2/{REPO}/manifests/{dig}")).await;
                r.assert_error(404, "MANIFEST_UNKNOWN");
                continue;
            }
            check_manifest(&srv, dig, dig, &td.manifests[dig], head).await;
        }
        for (dig, data) in &td.blobs {
            if head {
                check_blob_head(&srv, REPO, dig, data).await;
            } else {
                check_blob_get(&srv, REPO, dig, data).await;
            }
        }
    }

    // Referrers, unfiltered and filtered by each artifact type.
    for (subject, goals) in &td.referrers {
        let r = referrers(&srv, subject, None).await;
        let listed = r.json()["manifests"].as_array().unwrap().clone();
        for goal in goals {
            assert!(
                listed.iter().any(|e| referrer_matches(e, goal)),
                "{name}: {goal} missing from {listed:?}"
            );
        }
        assert_eq!(listed.len(), goals.len(), "{name}: referrers {listed:?}");
        assert_eq!(r.header("oci-filters-applied"), None, "{}", r.what);
        let types: BTreeSet<String> = goals
            .iter()
            .map(|g| g["artifactType"].as_str().unwrap_or("").to_owned())
            .filter(|t| !t.is_empty())
            .collect();
        for at in &types {
            let r = referrers(&srv, subject, Some(at)).await;
            let applied = r.header("oci-filters-applied").unwrap_or_default();
            assert!(
                applied.split(',').any(|f| f.trim() == "artifactType"),
                "{}: OCI-Filters-Applied is {applied:?}",
                r.what
            );
            let listed = r.json()["manifests"].as_array().unwrap().clone();
            let wanted: Vec<&Value> = goals
                .iter()
                .filter(|g| g["artifactType"].as_str() == Some(at))
                .collect();
            for goal in &wanted {
                assert!(
                    listed.iter().any(|e| referrer_matches(e, goal)),
                    "{name}: {goal} missing from filtered {listed:?}"
                );
            }
            assert_eq!(listed.len(), wanted.len(), "{name}: filtered {listed:?}");
        }
    }

    // Delete: tags (the manifest and its other tags stay), manifests in
    // reverse push order, blobs.
    let mut remaining: BTreeMap<&String, &String> = td.tags.iter().collect();
    for (tag, dig) in &td.tags {
        let r = srv.delete(&format!("/v2/{REPO}/manifests/{tag}")).await;
        assert_eq!(r.status, 202, "{}", r.describe());
        remaining.remove(tag);
        srv.head(&format!("/v2/{REPO}/manifests/{tag}"))
            .await
            .assert_error(404, "MANIFEST_UNKNOWN");
        check_manifest(&srv, dig, dig, &td.manifests[dig], true).await;
        for (other, other_dig) in &remaining {
            check_manifest(&srv, other, other_dig, &td.manifests[*other_dig], true).await;
        }
    }
    for dig in td.man_order.iter().rev() {
        let r = srv.delete(&format!("/v2/{REPO}/manifests/{dig}")).await;
        if td.bad_digest.contains(dig) {
            r.assert_error(404, "MANIFEST_UNKNOWN");
        } else {
            assert_eq!(r.status, 202, "{}", r.describe());
        }
        srv.head(&format!("/v2/{REPO}/manifests/{dig}"))
            .await
            .assert_error(404, "MANIFEST_UNKNOWN");
        srv.get(&format!("/v2/{REPO}/manifests/{dig}"))
            .await
            .assert_error(404, "MANIFEST_UNKNOWN");
    }
    for dig in td.blobs.keys() {
        delete_blob(&srv, REPO, dig, true).await;
    }
    // Deleting referrers removes them from the listing.
    for subject in td.referrers.keys() {
        let r = referrers(&srv, subject, None).await;
        assert_eq!(r.json()["manifests"], json!([]), "{}", r.what);
    }
}

macro_rules! data_kind_tests {
    ($($test:ident => $name:literal,)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            run_data_kind($name).await;
        }
    )*};
}

data_kind_tests! {
    data_image => "image",
    data_image_uncompressed => "image-uncompressed",
    data_large_manifest => "large-manifest",
    data_index => "index",
    data_nested_index => "nested-index",
    data_empty_index => "empty-index",
    data_artifact => "artifact",
    data_artifact_index => "artifact-index",
    data_artifact_without_layers => "artifact-without-layers",
    data_artifacts_with_subject => "artifacts-with-subject",
    data_index_with_subject => "index-with-subject",
    data_missing_subject => "missing-subject",
    data_data_field => "data-field",
    data_non_distributable_layers => "non-distributable-layers",
    data_custom_fields => "custom-fields",
    data_no_layers => "no-layers",
    data_sha512 => "sha512",
    data_tag_param_sha256 => "tag-param-sha256",
    data_tag_param_sha512 => "tag-param-sha512",
    data_bad_digest_image => "bad-digest-image",
}

/// The generated data is what the suite generates (shapes and sizes).
#[test]
fn generated_data_has_the_suite_shapes() {
    let large = data_kind("large-manifest");
    let m = &large.manifests[&large.tags["large-manifest"]];
    assert!(
        (3_900_000..4 * 1024 * 1024).contains(&m.len()),
        "{}",
        m.len()
    );
    let nested = data_kind("nested-index");
    assert_eq!(nested.man_order.len(), 7);
    let with_subject = data_kind("index-with-subject");
    // Both images and the index refer to the subject index.
    assert_eq!(with_subject.referrers.values().next().unwrap().len(), 3);
    let sha512 = data_kind("sha512");
    assert!(sha512.man_order.iter().all(|d| d.starts_with("sha512:")));
    assert!(sha512.blobs.keys().all(|d| d.starts_with("sha512:")));
    let tp = data_kind("tag-param-sha256");
    assert_eq!(tp.tags.len(), 4);
    let nd = data_kind("non-distributable-layers");
    let m: Value = serde_json::from_slice(&nd.manifests[&nd.man_order[0]]).unwrap();
    assert_eq!(m["layers"].as_array().unwrap().len(), 3);
    assert_eq!(nd.blobs.len(), 2, "foreign layers are not pushed");
    let awl = data_kind("artifact-without-layers");
    assert_eq!(
        awl.blobs.len(),
        1,
        "config and layer are the same {{}} blob"
    );
}

// --- suite-level checks -----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_empty_repository() {
    let srv = Server::start().await;
    let r = srv.get("/v2/").await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(
        r.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    // An unknown repository has no tags.
    srv.get(&format!("/v2/{REPO}/tags/list"))
        .await
        .assert_error(404, "NAME_UNKNOWN");
    // The referrers API never answers 404 for a well-formed digest.
    let mut rng = Rng::new(7);
    let subject = sha256(rng.text().as_bytes());
    let r = referrers(&srv, &subject, None).await;
    assert_eq!(r.json()["manifests"], json!([]));
    let r = referrers(&srv, &subject, Some(EXAMPLE_CONF1)).await;
    assert_eq!(r.json()["manifests"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_errors() {
    let srv = Server::start().await;
    let mut rng = Rng::new(99);
    // Missing, by digest and by tag.
    let dig = sha256(&rng.bytes(1024));
    srv.get(&format!("/v2/{REPO}/manifests/{dig}"))
        .await
        .assert_error(404, "MANIFEST_UNKNOWN");
    let tag = format!("missing-{}", rng.text().to_lowercase());
    srv.get(&format!("/v2/{REPO}/manifests/{tag}"))
        .await
        .assert_error(404, "MANIFEST_UNKNOWN");

    // An invalid digest as the reference of a push and of a pull.
    let mut td = TestData::new("invalid-manifest-digest", 5);
    let dig = td.gen_manifest_full(&Gen {
        layer_count: Some(1),
        ..Gen::default()
    });
    for (i, (d, data)) in td.blobs.iter().enumerate() {
        push_blob(&srv, REPO, PUSH_APIS[i], d, data).await;
    }
    let body = &td.manifests[&dig];
    srv.put_manifest(REPO, "sha256:baddigeststring", OCI_MANIFEST, body)
        .await
        .assert_error(400, "DIGEST_INVALID");
    let r = srv
        .get(&format!("/v2/{REPO}/manifests/sha256:baddigeststring"))
        .await;
    assert!(matches!(r.status, 400 | 404), "{}", r.describe());
    // Nothing was stored by the refused push.
    srv.head(&format!("/v2/{REPO}/manifests/{dig}"))
        .await
        .assert_error(404, "MANIFEST_UNKNOWN");
    assert_eq!(srv.tags(REPO).await, Some(Vec::new()));
    for d in td.blobs.keys() {
        delete_blob(&srv, REPO, d, true).await;
    }
}

async fn push_small_image(srv: &Server, repo: &str, seed: u64) -> (String, Vec<u8>) {
    let mut td = TestData::new("small", seed);
    let dig = td.gen_manifest_full(&Gen {
        layer_count: Some(1),
        ..Gen::default()
    });
    for (d, data) in &td.blobs {
        push_blob(srv, repo, PushApi::PostOnly, d, data).await;
    }
    let body = td.manifests.remove(&dig).unwrap();
    let r = srv.put_manifest(repo, &dig, OCI_MANIFEST, &body).await;
    assert_eq!(r.status, 201, "{}", r.describe());
    (dig, body)
}

/// Follows `Link: <…>; rel="next"` pages of `key` from `first`.
async fn pages(srv: &Server, first: &str, key: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut next = Some(first.to_owned());
    while let Some(path) = next.take() {
        let r = srv.get(&path).await;
        assert_eq!(r.status, 200, "{}", r.describe());
        out.push(strings(&r.json()[key]));
        if let Some(link) = r.header("link") {
            assert!(link.ends_with("rel=\"next\""), "{}: Link {link}", r.what);
            let target = link
                .strip_prefix('<')
                .and_then(|l| l.split_once('>'))
                .map(|(t, _)| t.to_owned())
                .unwrap_or_else(|| panic!("{}: bad Link {link}", r.what));
            next = Some(target);
        }
        assert!(out.len() < 20, "paging does not end");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_list_paging() {
    let srv = Server::start().await;
    let (dig, body) = push_small_image(&srv, REPO, 11).await;
    for t in ["t3", "t0", "t4", "t1", "t2"] {
        let r = srv.put_manifest(REPO, t, OCI_MANIFEST, &body).await;
        assert_eq!(r.status, 201, "{}", r.describe());
        assert_eq!(r.header("docker-content-digest"), Some(dig.as_str()));
    }
    let all: Vec<String> = (0..5).map(|i| format!("t{i}")).collect();
    assert_eq!(srv.tags(REPO).await.unwrap(), all);
    let p = pages(&srv, &format!("/v2/{REPO}/tags/list?n=2"), "tags").await;
    assert_eq!(p, [vec!["t0", "t1"], vec!["t2", "t3"], vec!["t4"]]);
    let p = pages(&srv, &format!("/v2/{REPO}/tags/list?n=5"), "tags").await;
    assert_eq!(p, std::slice::from_ref(&all));
    let r = srv.get(&format!("/v2/{REPO}/tags/list?last=t2")).await;
    assert_eq!(strings(&r.json()["tags"]), ["t3", "t4"]);
    assert_eq!(r.json()["name"], REPO);
    let r = srv.get(&format!("/v2/{REPO}/tags/list?n=1&last=t4")).await;
    assert_eq!(r.status, 200, "{}", r.describe());
    assert_eq!(strings(&r.json()["tags"]), Vec::<String>::new());
    assert_eq!(r.header("link"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_paging() {
    let srv = Server::start().await;
    assert_eq!(srv.catalog().await, Vec::<String>::new());
    let names = ["cat/e", "cat/a", "cat/c", "cat/b/x", "cat/d"];
    for n in names {
        srv.push_blob(n, n.as_bytes()).await;
    }
    let mut all: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    all.sort();
    assert_eq!(srv.catalog().await, all);
    let p = pages(&srv, "/v2/_catalog?n=2", "repositories").await;
    assert_eq!(p, [&all[0..2], &all[2..4], &all[4..]]);
    let r = srv.get("/v2/_catalog?last=cat/c").await;
    assert_eq!(strings(&r.json()["repositories"]), ["cat/d", "cat/e"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_tag_keeps_manifest_and_other_tags() {
    let srv = Server::start().await;
    let (dig, body) = push_small_image(&srv, REPO, 13).await;
    for t in ["a", "b"] {
        let r = srv.put_manifest(REPO, t, OCI_MANIFEST, &body).await;
        assert_eq!(r.status, 201, "{}", r.describe());
    }
    let r = srv.delete(&format!("/v2/{REPO}/manifests/a")).await;
    assert_eq!(r.status, 202, "{}", r.describe());
    srv.head(&format!("/v2/{REPO}/manifests/a"))
        .await
        .assert_error(404, "MANIFEST_UNKNOWN");
    srv.delete(&format!("/v2/{REPO}/manifests/a"))
        .await
        .assert_error(404, "MANIFEST_UNKNOWN");
    check_manifest(&srv, "b", &dig, &body, false).await;
    check_manifest(&srv, &dig, &dig, &body, false).await;
    assert_eq!(srv.tags(REPO).await.unwrap(), ["b"]);
    // Deleting the manifest takes its remaining tags with it.
    let r = srv.delete(&format!("/v2/{REPO}/manifests/{dig}")).await;
    assert_eq!(r.status, 202, "{}", r.describe());
    for reference in ["b", dig.as_str()] {
        srv.get(&format!("/v2/{REPO}/manifests/{reference}"))
            .await
            .assert_error(404, "MANIFEST_UNKNOWN");
    }
    assert_eq!(srv.tags(REPO).await, Some(Vec::new()));
    // A re-push by tag brings it back.
    let r = srv.put_manifest(REPO, "b", OCI_MANIFEST, &body).await;
    assert_eq!(r.status, 201, "{}", r.describe());
    check_manifest(&srv, "b", &dig, &body, true).await;
}
