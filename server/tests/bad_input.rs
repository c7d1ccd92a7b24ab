//! Malformed input, table-driven: every row is one request with the status
//! and OCI error code it must get, and after every row the registry must be
//! unchanged: same catalog, same tags, the same blobs and manifests visible,
//! and nothing the row sent visible under any digest.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

const REPO: &str = "bad/repo";
const OTHER: &str = "bad/other";

/// The body of a request.
#[derive(Clone)]
enum Body {
    Bytes(Vec<u8>),
    /// Sent with chunked transfer encoding (no Content-Length).
    Stream(Vec<u8>),
}

/// What exists before the request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    None,
    /// An upload session in `REPO` that already received this many bytes.
    Upload(usize),
}

/// What must hold after the request, besides "nothing changed".
#[derive(Clone, Copy, PartialEq, Eq)]
enum After {
    Nothing,
    /// The refused upload is over: its session is unknown.
    UploadGone,
    /// The upload session still stands at its setup offset.
    UploadIntact,
}

struct Row {
    name: String,
    setup: Setup,
    method: &'static str,
    /// `{upload}` is replaced by the setup upload's Location, `{id}` by its id.
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Option<Body>,
    /// Sent byte for byte, bypassing URL normalisation (`..`).
    raw: bool,
    status: u16,
    code: &'static str,
    /// Headers the answer must carry.
    answer_headers: Vec<&'static str>,
    /// Digests that must not be visible in `REPO` afterwards (besides the
    /// digests of everything the row sent, which are always checked).
    absent: Vec<String>,
    after: After,
}

fn row(name: &str, method: &'static str, path: impl Into<String>) -> Row {
    Row {
        name: name.to_owned(),
        setup: Setup::None,
        method,
        path: path.into(),
        headers: Vec::new(),
        body: None,
        raw: false,
        status: 0,
        code: "",
        answer_headers: Vec::new(),
        absent: Vec::new(),
        after: After::Nothing,
    }
}

impl Row {
    fn expect(mut self, status: u16, code: &'static str) -> Self {
        self.status = status;
        self.code = code;
        self
    }
    fn header(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.headers.push((k, v.into()));
        self
    }
    fn body(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.body = Some(Body::Bytes(b.into()));
        self
    }
    fn stream(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.body = Some(Body::Stream(b.into()));
        self
    }
    fn manifest(self, media_type: &str, doc: &Value) -> Self {
        self.header("Content-Type", media_type)
            .body(serde_json::to_vec(doc).unwrap())
    }
    fn raw(mut self) -> Self {
        self.raw = true;
        self
    }
    fn setup(mut self, s: Setup) -> Self {
        self.setup = s;
        self
    }
    fn answer_headers(mut self, h: &[&'static str]) -> Self {
        self.answer_headers = h.to_vec();
        self
    }
    fn absent(mut self, d: impl Into<String>) -> Self {
        self.absent.push(d.into());
        self
    }
    fn after(mut self, a: After) -> Self {
        self.after = a;
        self
    }
}

/// What exists before every row.
struct Fixture {
    config: (String, Vec<u8>),
    layer: (String, Vec<u8>),
    /// A blob that only `OTHER` holds.
    foreign: (String, Vec<u8>),
    image: (String, Vec<u8>),
}

impl Fixture {
    async fn create(srv: &Server) -> Fixture {
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                .to_vec();
        let layer = Rng::new(1).bytes(3000);
        let foreign = Rng::new(2).bytes(1000);
        let f = Fixture {
            config: (srv.push_blob(REPO, &config).await, config),
            layer: (srv.push_blob(REPO, &layer).await, layer),
            foreign: (srv.push_blob(OTHER, &foreign).await, foreign),
            image: (String::new(), Vec::new()),
        };
        let body = serde_json::to_vec(&f.manifest("fixture")).unwrap();
        let r = srv.put_manifest(REPO, "v1", OCI_MANIFEST, &body).await;
        assert_eq!(r.status, 201, "{}", r.describe());
        Fixture {
            image: (sha256(&body), body),
            ..f
        }
    }

    fn descriptor(media_type: &str, blob: &(String, Vec<u8>)) -> Value {
        json!({ "mediaType": media_type, "digest": blob.0, "size": blob.1.len() })
    }

    /// A valid image manifest of the fixture's blobs, made unique by `row`.
    fn manifest(&self, row: &str) -> Value {
        json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": Self::descriptor(OCI_CONFIG, &self.config),
            "layers": [Self::descriptor(OCI_LAYER_GZ, &self.layer)],
            "annotations": { "org.berth.test.row": row },
        })
    }

    fn index(&self, row: &str, children: Vec<Value>) -> Value {
        json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": children,
            "annotations": { "org.berth.test.row": row },
        })
    }

    /// What a client can observe of the registry's content.
    async fn snapshot(&self, srv: &Server) -> Vec<String> {
        let mut s = vec![
            format!("catalog {:?}", srv.catalog().await),
            format!("tags {REPO} {:?}", srv.tags(REPO).await),
            format!("tags {OTHER} {:?}", srv.tags(OTHER).await),
        ];
        for (repo, d) in [
            (REPO, &self.config.0),
            (REPO, &self.layer.0),
            (OTHER, &self.foreign.0),
            (REPO, &self.foreign.0),
        ] {
            let r = srv.head(&format!("/v2/{repo}/blobs/{d}")).await;
            s.push(format!("blob {repo} {d} {}", r.status));
        }
        for reference in [self.image.0.as_str(), "v1"] {
            let r = srv.head(&format!("/v2/{REPO}/manifests/{reference}")).await;
            s.push(format!(
                "manifest {reference} {} {:?}",
                r.status,
                r.header("docker-content-digest")
            ));
        }
        s
    }
}

fn set(doc: &mut Value, pointer: &str, v: Value) {
    *doc.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("no {pointer} in the document")) = v;
}

fn remove(doc: &mut Value, key: &str) {
    doc.as_object_mut().unwrap().remove(key);
}

const UUID: &str = "0b5a0b5e-1c2d-4e5f-8a9b-0c1d2e3f4a5b";

fn rows(f: &Fixture) -> Vec<Row> {
    let blob = |name: &str| format!("/v2/{REPO}/blobs/{name}");
    let uploads = format!("/v2/{REPO}/blobs/uploads/");
    let manifests = |r: &str| format!("/v2/{REPO}/manifests/{r}");
    let payload = b"some bytes that never become a blob".to_vec();
    let payload_digest = sha256(&payload);
    let unrelated = sha256(b"unrelated content");
    let foreign = &f.foreign.0;
    let m = |name: &str| f.manifest(name);

    let mut rows = vec![
        // --- repository names ---------------------------------------------
        row("uppercase name", "GET", "/v2/Bad/Repo/tags/list").expect(400, "NAME_INVALID"),
        row("dot-dot component", "GET", "/v2/bad/../repo/tags/list")
            .raw()
            .expect(400, "NAME_INVALID"),
        row("dot-dot inside a component", "GET", "/v2/bad..repo/tags/list")
            .expect(400, "NAME_INVALID"),
        row("empty component", "GET", "/v2/bad//repo/tags/list").expect(400, "NAME_INVALID"),
        row("trailing slash", "GET", "/v2/bad/repo//tags/list").expect(400, "NAME_INVALID"),
        row(
            "256-character name",
            "GET",
            format!("/v2/{}/tags/list", "a".repeat(256)),
        )
        .expect(400, "NAME_INVALID"),
        row(
            "uppercase name on a monolithic push",
            "POST",
            format!("/v2/Bad/Repo/blobs/uploads/?digest={payload_digest}"),
        )
        .body(payload.clone())
        .expect(400, "NAME_INVALID"),
        row("empty component on a manifest push", "PUT", "/v2/bad//repo/manifests/v2")
            .manifest(OCI_MANIFEST, &m("empty component"))
            .expect(400, "NAME_INVALID"),
        row("trailing slash on an upload start", "POST", "/v2/bad/repo//blobs/uploads/")
            .expect(400, "NAME_INVALID"),
        row(
            "dot-dot on a mount",
            "POST",
            format!("/v2/bad/../other/blobs/uploads/?mount={foreign}&from={OTHER}"),
        )
        .raw()
        .expect(400, "NAME_INVALID"),
        row(
            "invalid mount source",
            "POST",
            format!("{uploads}?mount={foreign}&from=Bad/Other"),
        )
        .expect(400, "NAME_INVALID"),
        // --- digests ----------------------------------------------------------
        row("short digest", "GET", blob("sha256:abc")).expect(400, "DIGEST_INVALID"),
        row("non-hex digest", "GET", blob(&format!("sha256:{}", "Z".repeat(64))))
            .expect(400, "DIGEST_INVALID"),
        row(
            "uppercase hex digest",
            "GET",
            blob(&unrelated.to_uppercase().replace("SHA256", "sha256")),
        )
        .expect(400, "DIGEST_INVALID"),
        row("unknown algorithm", "GET", blob("md5:d41d8cd98f00b204e9800998ecf8427e"))
            .expect(400, "DIGEST_INVALID"),
        row(
            "digest without algorithm",
            "GET",
            blob(unrelated.trim_start_matches("sha256:")),
        )
        .expect(400, "DIGEST_INVALID"),
        row("short digest as manifest reference", "GET", manifests("sha256:abc"))
            .expect(400, "DIGEST_INVALID"),
        row("short digest on manifest delete", "DELETE", manifests("sha256:abc"))
            .expect(400, "DIGEST_INVALID"),
        row("short digest on blob delete", "DELETE", blob("sha256:abc"))
            .expect(400, "DIGEST_INVALID"),
        row(
            "short digest on referrers",
            "GET",
            format!("/v2/{REPO}/referrers/sha256:abc"),
        )
        .expect(400, "DIGEST_INVALID"),
        row(
            "short digest on a monolithic push",
            "POST",
            format!("{uploads}?digest=sha256:abc"),
        )
        .body(payload.clone())
        .expect(400, "DIGEST_INVALID"),
        row(
            "unknown algorithm on a monolithic push",
            "POST",
            format!("{uploads}?digest=md5:d41d8cd98f00b204e9800998ecf8427e"),
        )
        .body(payload.clone())
        .expect(400, "DIGEST_INVALID"),
        row(
            "short digest on a mount",
            "POST",
            format!("{uploads}?mount=sha256:abc&from={OTHER}"),
        )
        .expect(400, "DIGEST_INVALID"),
        row(
            "unknown digest algorithm hint",
            "POST",
            format!("{uploads}?digest-algorithm=md5"),
        )
        .expect(400, "DIGEST_INVALID"),
        row("short digest finishing an upload", "PUT", "{upload}?digest=sha256:abc")
            .setup(Setup::Upload(100))
            .expect(400, "DIGEST_INVALID")
            .after(After::UploadIntact),
        row("finishing an upload without a digest", "PUT", "{upload}")
            .setup(Setup::Upload(100))
            .expect(400, "DIGEST_INVALID")
            .after(After::UploadIntact),
        // --- upload ranges ------------------------------------------------------
        row("chunk past the end of the upload", "PATCH", "{upload}")
            .setup(Setup::Upload(0))
            .header("Content-Range", "10-19")
            .body(vec![7u8; 10])
            .expect(416, "BLOB_UPLOAD_INVALID")
            .answer_headers(&["location", "range"])
            .after(After::UploadIntact),
        row("chunk rewinding the upload", "PATCH", "{upload}")
            .setup(Setup::Upload(100))
            .header("Content-Range", "0-99")
            .body(vec![7u8; 100])
            .expect(416, "BLOB_UPLOAD_INVALID")
            .answer_headers(&["location", "range"])
            .after(After::UploadIntact),
        row("reversed Content-Range", "PATCH", "{upload}")
            .setup(Setup::Upload(100))
            .header("Content-Range", "109-100")
            .body(vec![7u8; 10])
            .expect(416, "BLOB_UPLOAD_INVALID")
            .answer_headers(&["location", "range"])
            .after(After::UploadIntact),
        row("unparseable Content-Range", "PATCH", "{upload}")
            .setup(Setup::Upload(100))
            .header("Content-Range", "the-middle")
            .body(vec![7u8; 10])
            .expect(416, "BLOB_UPLOAD_INVALID")
            .answer_headers(&["location", "range"])
            .after(After::UploadIntact),
        row("last chunk out of order", "PUT", format!("{{upload}}?digest={unrelated}"))
            .setup(Setup::Upload(100))
            .header("Content-Range", "200-209")
            .body(vec![7u8; 10])
            .expect(416, "BLOB_UPLOAD_INVALID")
            .answer_headers(&["location", "range"])
            .after(After::UploadIntact),
        row("Content-Length does not match Content-Range", "PATCH", "{upload}")
            .setup(Setup::Upload(100))
            .header("Content-Range", "100-199")
            .body(vec![7u8; 50])
            .expect(400, "BLOB_UPLOAD_INVALID")
            .after(After::UploadIntact),
        // --- digest mismatches ----------------------------------------------------
        row(
            "digest mismatch finishing an upload",
            "PUT",
            format!("{{upload}}?digest={unrelated}"),
        )
        .setup(Setup::Upload(100))
        .expect(400, "DIGEST_INVALID")
        .absent(unrelated.clone())
        .after(After::UploadGone),
        row(
            "digest mismatch on the last chunk",
            "PUT",
            format!("{{upload}}?digest={unrelated}"),
        )
        .setup(Setup::Upload(100))
        .header("Content-Range", "100-109")
        .body(vec![7u8; 10])
        .expect(400, "DIGEST_INVALID")
        .absent(unrelated.clone())
        .after(After::UploadGone),
        row(
            "sha512 digest mismatch finishing an upload",
            "PUT",
            format!("{{upload}}?digest={}", Algo::Sha512.digest(b"unrelated")),
        )
        .setup(Setup::Upload(100))
        .expect(400, "DIGEST_INVALID")
        .after(After::UploadGone),
        row(
            "digest mismatch on a monolithic push",
            "POST",
            format!("{uploads}?digest={unrelated}"),
        )
        .body(payload.clone())
        .expect(400, "DIGEST_INVALID")
        .absent(unrelated.clone()),
        row(
            "digest mismatch on a streamed monolithic push",
            "POST",
            format!("{uploads}?digest={unrelated}"),
        )
        .stream(payload.clone())
        .expect(400, "DIGEST_INVALID")
        .absent(unrelated.clone()),
        // --- manifests ----------------------------------------------------------------
        row("manifest that is not JSON", "PUT", manifests("bad"))
            .header("Content-Type", OCI_MANIFEST)
            .body(b"{\"schemaVersion\": 2, \"config\": ".to_vec())
            .expect(400, "MANIFEST_INVALID"),
        row("schema 1 manifest", "PUT", manifests("bad"))
            .manifest(
                OCI_MANIFEST,
                &json!({"schemaVersion": 1, "name": REPO, "tag": "bad", "architecture": "amd64", "fsLayers": [], "history": []}),
            )
            .expect(400, "MANIFEST_INVALID"),
        row("schema 1 media type", "PUT", manifests("bad"))
            .manifest(
                "application/vnd.docker.distribution.manifest.v1+json",
                &json!({"schemaVersion": 1, "name": REPO, "tag": "bad", "architecture": "amd64", "fsLayers": [], "history": []}),
            )
            .expect(400, "MANIFEST_INVALID"),
        row("signed schema 1 media type", "PUT", manifests("bad"))
            .manifest(
                "application/vnd.docker.distribution.manifest.v1+prettyjws",
                &json!({"schemaVersion": 1, "name": REPO, "tag": "bad", "architecture": "amd64", "fsLayers": [], "history": [], "signatures": []}),
            )
            .expect(400, "MANIFEST_INVALID"),
        row("schemaVersion 3", "PUT", manifests("bad"))
            .manifest(OCI_MANIFEST, &{
                let mut d = m("schemaVersion 3");
                set(&mut d, "/schemaVersion", json!(3));
                d
            })
            .expect(400, "MANIFEST_INVALID"),
        row("unknown media type", "PUT", manifests("bad"))
            .manifest("text/plain", &{
                let mut d = m("unknown media type");
                remove(&mut d, "mediaType");
                d
            })
            .expect(400, "MANIFEST_INVALID"),
        row("unknown media type in the mediaType field", "PUT", manifests("bad"))
            .manifest("application/vnd.example.unknown+json", &{
                let mut d = m("unknown mediaType field");
                set(
                    &mut d,
                    "/mediaType",
                    json!("application/vnd.example.unknown+json"),
                );
                d
            })
            .expect(400, "MANIFEST_INVALID"),
        row("Content-Type text/plain for an OCI manifest", "PUT", manifests("bad"))
            .manifest("text/plain", &m("text/plain for a manifest"))
            .expect(400, "MANIFEST_INVALID"),
        row("Content-Type of an index for an image", "PUT", manifests("bad"))
            .manifest(OCI_INDEX, &m("index header"))
            .expect(400, "MANIFEST_INVALID"),
        row("Content-Type of an image for an index", "PUT", manifests("bad"))
            .manifest(
                OCI_MANIFEST,
                &f.index(
                    "image header",
                    vec![json!({"mediaType": OCI_MANIFEST, "digest": f.image.0, "size": f.image.1.len()})],
                ),
            )
            .expect(400, "MANIFEST_INVALID"),
        row("no media type at all", "PUT", manifests("bad"))
            .body(
                serde_json::to_vec(&{
                    let mut d = m("no media type");
                    remove(&mut d, "mediaType");
                    d
                })
                .unwrap(),
            )
            .expect(400, "MANIFEST_INVALID"),
        row("missing config", "PUT", manifests("bad"))
            .manifest(OCI_MANIFEST, &{
                let mut d = m("missing config");
                remove(&mut d, "config");
                d
            })
            .expect(400, "MANIFEST_INVALID"),
        row("missing layers", "PUT", manifests("bad"))
            .manifest(OCI_MANIFEST, &{
                let mut d = m("missing layers");
                remove(&mut d, "layers");
                d
            })
            .expect(400, "MANIFEST_INVALID"),
        row("layer with a malformed digest", "PUT", manifests("bad"))
            .manifest(OCI_MANIFEST, &{
                let mut d = m("bad layer digest");
                set(&mut d, "/layers/0/digest", json!("sha256:abc"));
                d
            })
            .expect(400, "MANIFEST_INVALID"),
        row("config with an unknown digest algorithm", "PUT", manifests("bad"))
            .manifest(OCI_MANIFEST, &{
                let mut d = m("md5 config");
                set(
                    &mut d,
                    "/config/digest",
                    json!("md5:d41d8cd98f00b204e9800998ecf8427e"),
                );
                d
            })
            .expect(400, "MANIFEST_INVALID"),
        row("layer with a negative size", "PUT", manifests("bad"))
            .manifest(OCI_MANIFEST, &{
                let mut d = m("negative size");
                set(&mut d, "/layers/0/size", json!(-1));
                d
            })
            .expect(400, "MANIFEST_INVALID"),
        row("layer without a media type", "PUT", manifests("bad"))
            .manifest(OCI_MANIFEST, &{
                let mut d = m("layer without media type");
                d["layers"][0].as_object_mut().unwrap().remove("mediaType");
                d
            })
            .expect(400, "MANIFEST_INVALID"),
        row("subject with a malformed digest", "PUT", manifests("bad"))
            .manifest(OCI_MANIFEST, &{
                let mut d = m("bad subject");
                d["subject"] = json!({"mediaType": OCI_MANIFEST, "digest": "sha256:abc", "size": 1});
                d
            })
            .expect(400, "MANIFEST_INVALID"),
        row("layer held by another repository only", "PUT", manifests("bad"))
            .manifest(OCI_MANIFEST, &{
                let mut d = m("foreign layer");
                d["layers"][0] = Fixture::descriptor(OCI_LAYER_GZ, &f.foreign);
                d
            })
            .expect(400, "MANIFEST_BLOB_UNKNOWN"),
        row("config unknown to the registry", "PUT", manifests("bad"))
            .manifest(OCI_MANIFEST, &{
                let mut d = m("unknown config");
                set(&mut d, "/config/digest", json!(unrelated));
                d
            })
            .expect(400, "MANIFEST_BLOB_UNKNOWN"),
        row("index with a missing child", "PUT", manifests("bad"))
            .manifest(
                OCI_INDEX,
                &f.index(
                    "missing child",
                    vec![
                        json!({"mediaType": OCI_MANIFEST, "digest": f.image.0, "size": f.image.1.len()}),
                        json!({"mediaType": OCI_MANIFEST, "digest": unrelated, "size": 10}),
                    ],
                ),
            )
            .expect(400, "MANIFEST_BLOB_UNKNOWN"),
        row("push by a digest the body does not have", "PUT", manifests(&unrelated))
            .manifest(OCI_MANIFEST, &m("wrong digest"))
            .expect(400, "DIGEST_INVALID")
            .absent(unrelated.clone()),
        row("invalid tag as the reference", "PUT", manifests(".hidden"))
            .manifest(OCI_MANIFEST, &m("invalid tag"))
            .expect(400, "MANIFEST_INVALID"),
        row(
            "invalid tag in a tag parameter",
            "PUT",
            format!("{}?tag=ok&tag=-dash", manifests(&sha256(&serde_json::to_vec(&m("tag param")).unwrap()))),
        )
        .manifest(OCI_MANIFEST, &m("tag param"))
        .expect(400, "MANIFEST_INVALID"),
        row(
            "129-character tag parameter",
            "PUT",
            format!(
                "{}?tag={}",
                manifests(&sha256(&serde_json::to_vec(&m("long tag")).unwrap())),
                "t".repeat(129)
            ),
        )
        .manifest(OCI_MANIFEST, &m("long tag"))
        .expect(400, "MANIFEST_INVALID"),
        // --- upload sessions ------------------------------------------------------
        row("unknown upload id", "GET", format!("{uploads}{UUID}"))
            .expect(404, "BLOB_UPLOAD_UNKNOWN"),
        row("chunk to an unknown upload", "PATCH", format!("{uploads}{UUID}"))
            .body(payload.clone())
            .expect(404, "BLOB_UPLOAD_UNKNOWN"),
        row(
            "finishing an unknown upload",
            "PUT",
            format!("{uploads}{UUID}?digest={payload_digest}"),
        )
        .body(payload.clone())
        .expect(404, "BLOB_UPLOAD_UNKNOWN"),
        row("cancelling an unknown upload", "DELETE", format!("{uploads}{UUID}"))
            .expect(404, "BLOB_UPLOAD_UNKNOWN"),
        row("upload id that is not an id", "GET", format!("{uploads}not-an-upload"))
            .expect(404, "BLOB_UPLOAD_UNKNOWN"),
        row(
            "upload id escaping the uploads directory",
            "PATCH",
            format!("{uploads}..%2F..%2Fmetadata.sqlite"),
        )
        .raw()
        .body(payload.clone())
        .expect(404, "BLOB_UPLOAD_UNKNOWN"),
        row(
            "upload status under another repository",
            "GET",
            format!("/v2/{OTHER}/blobs/uploads/{{id}}"),
        )
        .setup(Setup::Upload(100))
        .expect(404, "BLOB_UPLOAD_UNKNOWN")
        .after(After::UploadIntact),
        row(
            "chunk under another repository",
            "PATCH",
            format!("/v2/{OTHER}/blobs/uploads/{{id}}"),
        )
        .setup(Setup::Upload(100))
        .header("Content-Range", "100-134")
        .body(payload.clone())
        .expect(404, "BLOB_UPLOAD_UNKNOWN")
        .after(After::UploadIntact),
        row(
            "finishing under another repository",
            "PUT",
            format!("/v2/{OTHER}/blobs/uploads/{{id}}?digest={payload_digest}"),
        )
        .setup(Setup::Upload(0))
        .body(payload.clone())
        .expect(404, "BLOB_UPLOAD_UNKNOWN")
        .after(After::UploadIntact),
        row(
            "cancelling under another repository",
            "DELETE",
            format!("/v2/{OTHER}/blobs/uploads/{{id}}"),
        )
        .setup(Setup::Upload(100))
        .expect(404, "BLOB_UPLOAD_UNKNOWN")
        .after(After::UploadIntact),
        // --- methods and endpoints ----------------------------------------------
        row("POST on a manifest", "POST", manifests("v1"))
            .manifest(OCI_MANIFEST, &m("post"))
            .expect(405, "UNSUPPORTED"),
        row("PATCH on a manifest", "PATCH", manifests("v1"))
            .manifest(OCI_MANIFEST, &m("patch"))
            .expect(405, "UNSUPPORTED"),
        row("PUT on a blob", "PUT", blob(&payload_digest))
            .body(payload.clone())
            .expect(405, "UNSUPPORTED"),
        row("POST on a blob", "POST", blob(&payload_digest))
            .body(payload.clone())
            .expect(405, "UNSUPPORTED"),
        row("DELETE on a tag list", "DELETE", format!("/v2/{REPO}/tags/list"))
            .expect(405, "UNSUPPORTED"),
        row("DELETE on the catalog", "DELETE", "/v2/_catalog").expect(405, "UNSUPPORTED"),
        row(
            "PUT on referrers",
            "PUT",
            format!("/v2/{REPO}/referrers/{}", f.image.0),
        )
        .manifest(OCI_MANIFEST, &m("referrers put"))
        .expect(405, "UNSUPPORTED"),
        row("PUT on the upload collection", "PUT", uploads.clone())
            .body(payload.clone())
            .expect(405, "UNSUPPORTED"),
        row("unknown endpoint", "GET", format!("/v2/{REPO}/unknown/thing"))
            .expect(404, "UNSUPPORTED"),
        // --- things that do not exist --------------------------------------------
        row("blob of another repository", "GET", blob(foreign)).expect(404, "BLOB_UNKNOWN"),
        row("deleting a blob of another repository", "DELETE", blob(foreign))
            .expect(404, "BLOB_UNKNOWN"),
        row("unknown blob", "GET", blob(&unrelated)).expect(404, "BLOB_UNKNOWN"),
        row("unknown tag", "GET", manifests("v2")).expect(404, "MANIFEST_UNKNOWN"),
        row("tag that cannot exist", "GET", manifests("-v1")).expect(404, "MANIFEST_UNKNOWN"),
        row("deleting an unknown tag", "DELETE", manifests("v2"))
            .expect(404, "MANIFEST_UNKNOWN"),
        row("unknown manifest digest", "GET", manifests(&unrelated))
            .expect(404, "MANIFEST_UNKNOWN"),
        row(
            "manifest of another repository",
            "GET",
            format!("/v2/{OTHER}/manifests/{}", f.image.0),
        )
        .expect(404, "MANIFEST_UNKNOWN"),
        row("tags of an unknown repository", "GET", "/v2/bad/unknown/tags/list")
            .expect(404, "NAME_UNKNOWN"),
    ];

    // Refusals of large bodies: the client, still sending when the server
    // answers, must get the answer and not a reset connection.
    let large = Rng::new(3).bytes(16 << 20);
    rows.push(
        row(
            "large chunk past the end of the upload",
            "PATCH",
            "{upload}",
        )
        .setup(Setup::Upload(0))
        .header("Content-Range", format!("10-{}", 10 + large.len() - 1))
        .body(large.clone())
        .expect(416, "BLOB_UPLOAD_INVALID")
        .answer_headers(&["location", "range"])
        .after(After::UploadIntact),
    );
    rows.push(
        row(
            "large chunk to an unknown upload",
            "PATCH",
            format!("{uploads}{UUID}"),
        )
        .body(large.clone())
        .expect(404, "BLOB_UPLOAD_UNKNOWN"),
    );
    rows.push(
        row(
            "large monolithic push with a malformed digest",
            "POST",
            format!("{uploads}?digest=sha256:abc"),
        )
        .body(large)
        .expect(400, "DIGEST_INVALID"),
    );

    // Oversized manifests: one byte over the limit, announced or streamed.
    let mut big = serde_json::to_vec(&m("oversize")).unwrap();
    big.resize(4 * 1024 * 1024 + 1, b' ');
    rows.push(
        row("manifest one byte over 4 MiB", "PUT", manifests("big"))
            .header("Content-Type", OCI_MANIFEST)
            .body(big.clone())
            .expect(413, "MANIFEST_INVALID"),
    );
    rows.push(
        row(
            "streamed manifest one byte over 4 MiB",
            "PUT",
            manifests("big"),
        )
        .header("Content-Type", OCI_MANIFEST)
        .stream(big)
        .expect(413, "MANIFEST_INVALID"),
    );
    rows
}

async fn run_row(srv: &Server, row: &Row) -> Vec<String> {
    let mut sent: Vec<Vec<u8>> = Vec::new();
    let mut upload = None;
    if let Setup::Upload(n) = row.setup {
        let loc = srv.start_upload(REPO).await;
        if n > 0 {
            let data = Rng::new(n as u64).bytes(n);
            let r = srv
                .send(
                    srv.req(Method::PATCH, &loc)
                        .header("Content-Type", OCTET_STREAM)
                        .header("Content-Range", format!("0-{}", n - 1))
                        .body(data.clone()),
                )
                .await;
            assert_eq!(r.status, 202, "{}: setup: {}", row.name, r.describe());
            sent.push(data);
        }
        upload = Some((loc, n));
    }
    let path = match &upload {
        Some((loc, _)) => {
            let id = loc.rsplit('/').next().unwrap();
            row.path.replace("{upload}", loc).replace("{id}", id)
        }
        None => row.path.clone(),
    };
    let r = if row.raw {
        let headers: Vec<(&str, &str)> =
            row.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let body = match &row.body {
            Some(Body::Bytes(b)) => b.clone(),
            Some(Body::Stream(_)) => panic!("{}: raw rows send plain bodies", row.name),
            None => Vec::new(),
        };
        srv.raw(row.method, &path, &headers, &body).await
    } else {
        let method = Method::from_bytes(row.method.as_bytes()).unwrap();
        let mut rb = srv.req(method, &path);
        for (k, v) in &row.headers {
            rb = rb.header(*k, v);
        }
        match &row.body {
            Some(Body::Bytes(b)) => rb = rb.body(b.clone()),
            Some(Body::Stream(b)) => {
                let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
                    b.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
                rb = rb.body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)));
            }
            None => {}
        }
        srv.send(rb).await
    };
    if let Some(Body::Bytes(b) | Body::Stream(b)) = &row.body {
        sent.push(b.clone());
    }

    let mut failures = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(format!("{}: {what}", row.name));
        }
    };
    check(
        r.status == row.status,
        format!(
            "status {} (want {}): {}",
            r.status,
            row.status,
            r.describe()
        ),
    );
    if r.status >= 400 {
        let codes = r.error_codes();
        check(
            codes == [row.code],
            format!("codes {codes:?} (want {})", row.code),
        );
    }
    for h in &row.answer_headers {
        check(
            r.header(h).is_some(),
            format!("no {h} header: {}", r.describe()),
        );
    }
    if let Some((loc, n)) = &upload {
        let s = srv.get(loc).await;
        match row.after {
            After::UploadGone => check(
                s.status == 404,
                format!("upload still there: {}", s.describe()),
            ),
            After::UploadIntact => {
                let range = format!("0-{}", n.saturating_sub(1));
                check(
                    s.status == 204 && s.header("range") == Some(range.as_str()),
                    format!("upload moved: {}", s.describe()),
                );
            }
            After::Nothing => {}
        }
        if row.after != After::UploadGone {
            let c = srv.delete(loc).await;
            assert_eq!(c.status, 204, "{}: cleanup: {}", row.name, c.describe());
        }
    }
    // Nothing the row sent is visible, as a blob or as a manifest, under
    // either algorithm.
    let mut absent = row.absent.clone();
    for b in &sent {
        absent.push(sha256(b));
        absent.push(Algo::Sha512.digest(b));
    }
    for d in absent {
        for kind in ["blobs", "manifests"] {
            let h = srv.head(&format!("/v2/{REPO}/{kind}/{d}")).await;
            check(h.status == 404, format!("{kind} {d} is visible"));
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_refused_and_stores_nothing() {
    let srv = Server::start().await;
    let f = Fixture::create(&srv).await;
    let before = f.snapshot(&srv).await;
    assert_eq!(
        before,
        [
            format!("catalog [\"{OTHER}\", \"{REPO}\"]"),
            format!("tags {REPO} Some([\"v1\"])"),
            format!("tags {OTHER} Some([])"),
            format!("blob {REPO} {} 200", f.config.0),
            format!("blob {REPO} {} 200", f.layer.0),
            format!("blob {OTHER} {} 200", f.foreign.0),
            format!("blob {REPO} {} 404", f.foreign.0),
            format!("manifest {} 200 Some({:?})", f.image.0, f.image.0),
            format!("manifest v1 200 Some({:?})", f.image.0),
        ]
    );
    let rows = rows(&f);
    let mut failures = Vec::new();
    let mut before = before;
    for row in &rows {
        failures.extend(run_row(&srv, row).await);
        let after = f.snapshot(&srv).await;
        if after != before {
            failures.push(format!(
                "{}: registry changed from {before:?} to {after:?}",
                row.name
            ));
            // Report each row's own change only.
            before = after;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

/// The refusals above are not refusals of everything: the same requests,
/// made well-formed, succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_formed_counterparts_succeed() {
    let srv = Server::start().await;
    let f = Fixture::create(&srv).await;
    // A 255-character name is valid (and unknown).
    srv.get(&format!("/v2/{}/tags/list", "a".repeat(255)))
        .await
        .assert_error(404, "NAME_UNKNOWN");
    // The manifests refused for their Content-Type are accepted with the
    // right one.
    let doc = f.manifest("text/plain for a manifest");
    let r = srv
        .put_manifest(REPO, "ok", OCI_MANIFEST, &serde_json::to_vec(&doc).unwrap())
        .await;
    assert_eq!(r.status, 201, "{}", r.describe());
    // Tag parameters that are valid are applied.
    let body = serde_json::to_vec(&f.manifest("tag param")).unwrap();
    let d = sha256(&body);
    let r = srv
        .send(
            srv.req(
                Method::PUT,
                &format!("/v2/{REPO}/manifests/{d}?tag=ok2&tag=ok3"),
            )
            .header("Content-Type", OCI_MANIFEST)
            .body(body),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.describe());
    assert_eq!(r.header_all("oci-tag"), ["ok2", "ok3"]);
    // Mounting the foreign blob from its repository works.
    let r = srv
        .send(srv.req(
            Method::POST,
            &format!(
                "/v2/{REPO}/blobs/uploads/?mount={}&from={OTHER}",
                f.foreign.0
            ),
        ))
        .await;
    assert_eq!(r.status, 201, "{}", r.describe());
    // A manifest at exactly 4 MiB is accepted.
    let mut big = serde_json::to_vec(&f.manifest("exactly 4 MiB")).unwrap();
    big.resize(4 * 1024 * 1024, b' ');
    let r = srv.put_manifest(REPO, "big", OCI_MANIFEST, &big).await;
    assert_eq!(r.status, 201, "{}", r.describe());
    assert_eq!(
        srv.tags(REPO).await.unwrap(),
        ["big", "ok", "ok2", "ok3", "v1"]
    );
}
