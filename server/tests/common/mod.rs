//! Shared helpers of the in-process integration tests: a berth-server on an
//! ephemeral loopback port with its own data directory, a small HTTP client
//! wrapper that checks every error body it sees, digests, a seeded RNG, and
//! a raw HTTP/1.1 client for requests `reqwest` would normalise.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::SocketAddr;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, RequestBuilder};
use serde_json::Value;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ND: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
pub const OCI_LAYER_ND_GZ: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const OCI_EMPTY_JSON: &str = "application/vnd.oci.empty.v1+json";
pub const OCTET_STREAM: &str = "application/octet-stream";

/// Every error code the OCI Distribution Spec defines.
pub const SPEC_ERROR_CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
];

/// A berth-server running inside the test's runtime. Stops when dropped.
pub struct Server {
    pub base: String,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
    _secret: Option<tempfile::TempDir>,
    _s3_secret: Option<tempfile::TempDir>,
}

/// Whether servers keep their metadata (and auth store) in PostgreSQL: in
/// test targets named `*_postgres` or `*_s3` (which run another target's
/// tests again), or with `BERTH_TEST_METADATA=postgres`.
pub fn metadata_on_postgres() -> bool {
    env!("CARGO_CRATE_NAME").ends_with("_postgres")
        || blobs_on_s3()
        || std::env::var("BERTH_TEST_METADATA").is_ok_and(|v| v == "postgres")
}

/// Whether servers keep their blobs in S3 (a bucket of the test process's
/// private Garage): in test targets named `*_s3`, the scale-out pair with
/// PostgreSQL metadata.
pub fn blobs_on_s3() -> bool {
    env!("CARGO_CRATE_NAME").ends_with("_s3")
}

/// Points `cfg` at a fresh bucket of the test process's Garage (the secret
/// from a file, as an operator would give it); returns the file's directory.
pub fn use_s3_blobs(cfg: &mut server::config::Config) -> tempfile::TempDir {
    let t = test_support::Garage::shared().create_bucket();
    cfg.storage.blob_url = Some(format!("s3://{}/berth", t.bucket));
    cfg.storage.s3_endpoint = Some(t.endpoint);
    cfg.storage.s3_region = t.region;
    cfg.storage.s3_access_key_id = Some(t.key_id);
    cfg.storage.s3_allow_http = true;
    cfg.storage.s3_part_size = registry::storage::s3::MIN_PART_SIZE;
    // 10,000 parts of 5 MiB.
    cfg.limits.max_blob_bytes = cfg.limits.max_blob_bytes.min(50_000 << 20);
    let (dir, path) = test_support::servers::secret_file(&t.secret).expect("secret file");
    cfg.storage.s3_secret_access_key_file = Some(path);
    dir
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if !std::thread::panicking() {
            self.assert_blob_engine();
        }
    }
}

impl Server {
    /// Starts a server with the default configuration, a fresh data
    /// directory, and background GC off (tests decide what exists).
    pub async fn start() -> Server {
        Self::start_with(|_| {}).await
    }

    /// [`Self::start`] with changes to the configuration.
    pub async fn start_with(tweak: impl FnOnce(&mut server::config::Config)) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = server::config::Config {
            data_dir: dir.path().to_path_buf(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Default::default()
        };
        cfg.gc.enabled = false;
        // Open access: these suites test the registry protocol.
        cfg.auth.enabled = false;
        cfg.shutdown_timeout_secs = 5;
        // Durability is not under test here; skip the fsync of every commit.
        cfg.storage.sync = registry::storage::sqlite::Synchronous::Normal;
        let secret = metadata_on_postgres().then(|| {
            // A fresh database on the test process's private PostgreSQL,
            // the password from a file as an operator would give it.
            let pg = test_support::Postgres::shared();
            cfg.storage.metadata_url = Some(pg.url(&pg.create_database()));
            let (dir, path) =
                test_support::servers::secret_file(pg.password()).expect("password file");
            cfg.storage.metadata_password_file = Some(path);
            dir
        });
        let s3_secret = blobs_on_s3().then(|| use_s3_blobs(&mut cfg));
        tweak(&mut cfg);
        cfg.validate().expect("test configuration is valid");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = server::run(&cfg, listener, token).await {
                panic!("berth-server stopped: {e}");
            }
        });
        let srv = Server {
            base: format!("http://{addr}"),
            addr,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            shutdown,
            _dir: dir,
            _secret: secret,
            _s3_secret: s3_secret,
        };
        let ping = srv.send(srv.req(Method::GET, "/v2/")).await;
        assert_eq!(ping.status, 200, "server did not answer GET /v2/");
        // The suite really runs on the engine it claims to.
        let sqlite = srv._dir.path().join("metadata.sqlite").exists();
        assert_eq!(sqlite, !metadata_on_postgres(), "metadata engine");
        srv.assert_blob_engine();
        srv
    }

    /// The suite really keeps blobs where it claims to: no blob files in
    /// the data directory of an S3 server (checked after a push, too).
    pub fn assert_blob_engine(&self) {
        if blobs_on_s3() {
            let store = self._dir.path().join("store");
            assert!(!store.exists(), "an S3 server wrote {}", store.display());
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// An absolute URL for a path (`/v2/...`) or a `Location` header value,
    /// which may be relative or absolute.
    pub fn url(&self, path_or_location: &str) -> String {
        if path_or_location.starts_with("http://") || path_or_location.starts_with("https://") {
            path_or_location.to_owned()
        } else {
            format!("{}{}", self.base, path_or_location)
        }
    }

    pub fn req(&self, method: Method, path_or_location: &str) -> RequestBuilder {
        self.client.request(method, self.url(path_or_location))
    }

    /// Sends a request and reads the whole response. Every error answer to
    /// a request that can carry a body must be a spec error document.
    pub async fn send(&self, rb: RequestBuilder) -> Resp {
        let req = rb.build().expect("request builds");
        let method = req.method().clone();
        let what = format!("{method} {}", req.url());
        let resp = self
            .client
            .execute(req)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{what}: reading body: {e}"))
            .to_vec();
        let r = Resp {
            what,
            status,
            headers,
            body,
        };
        if status >= 400 && method != Method::HEAD {
            r.error_codes();
        }
        r
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(self.req(Method::GET, path)).await
    }

    pub async fn head(&self, path: &str) -> Resp {
        self.send(self.req(Method::HEAD, path)).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send(self.req(Method::DELETE, path)).await
    }

    /// Monolithic upload (`POST ?digest=`); asserts it was created.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        self.push_blob_as(repo, data, &sha256(data)).await
    }

    pub async fn push_blob_as(&self, repo: &str, data: &[u8], digest: &str) -> String {
        let r = self
            .send(
                self.req(
                    Method::POST,
                    &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
                )
                .header("Content-Type", OCTET_STREAM)
                .body(data.to_vec()),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.describe());
        assert_eq!(r.header("docker-content-digest"), Some(digest));
        digest.to_owned()
    }

    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Resp {
        self.send(
            self.req(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
                .header("Content-Type", media_type)
                .body(body.to_vec()),
        )
        .await
    }

    /// Opens an upload session and returns its `Location`.
    pub async fn start_upload(&self, repo: &str) -> String {
        let r = self
            .send(self.req(Method::POST, &format!("/v2/{repo}/blobs/uploads/")))
            .await;
        assert_eq!(r.status, 202, "{}", r.describe());
        r.header("location")
            .unwrap_or_else(|| panic!("{}: no Location", r.what))
            .to_owned()
    }

    /// All tags of a repository (`None` when it is unknown).
    pub async fn tags(&self, repo: &str) -> Option<Vec<String>> {
        let r = self.get(&format!("/v2/{repo}/tags/list")).await;
        match r.status {
            404 => {
                assert_eq!(r.error_codes(), ["NAME_UNKNOWN"]);
                None
            }
            200 => Some(strings(&r.json()["tags"])),
            _ => panic!("{}", r.describe()),
        }
    }

    pub async fn catalog(&self) -> Vec<String> {
        let r = self.get("/v2/_catalog").await;
        assert_eq!(r.status, 200, "{}", r.describe());
        strings(&r.json()["repositories"])
    }

    /// A request sent byte for byte as given (`Connection: close`), for
    /// paths a URL library would normalise (`..`) and headers it would fix.
    pub async fn raw(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        let what = format!("{method} {target} (raw)");
        let mut stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        let mut has_length = false;
        for (k, v) in headers {
            has_length |= k.eq_ignore_ascii_case("content-length")
                || k.eq_ignore_ascii_case("transfer-encoding");
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !has_length {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("Connection: close\r\n\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body);
        // The server may answer (and close) before reading a body it refuses;
        // what matters is the answer, so a failed write is not an error here.
        let _ = stream.write_all(&out).await;
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf).await;
        parse_raw_response(what, &buf, method == "HEAD")
    }
}

fn parse_raw_response(what: String, buf: &[u8], head: bool) -> Resp {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{what}: no complete response ({} bytes)", buf.len()));
    let text = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{what}: bad status line {status_line:?}"));
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            headers.append(
                HeaderName::from_bytes(k.trim().as_bytes()).expect("header name"),
                HeaderValue::from_str(v.trim()).expect("header value"),
            );
        }
    }
    let mut body = buf[split + 4..].to_vec();
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    if head {
        body.clear();
    } else if chunked {
        body = dechunk(&body);
    }
    let r = Resp {
        what,
        status,
        headers,
        body,
    };
    if status >= 400 && !head {
        r.error_codes();
    }
    r
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .expect("chunk size");
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

/// A response read to the end.
#[derive(Debug)]
pub struct Resp {
    /// The request, for assertion messages.
    pub what: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{}: body is not JSON ({e}): {}", self.what, self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body)
            .chars()
            .take(2000)
            .collect()
    }

    pub fn describe(&self) -> String {
        format!(
            "{} -> {} {:?} {}",
            self.what,
            self.status,
            self.headers,
            self.text()
        )
    }

    /// The codes of a spec error document, checking its shape: a JSON
    /// object whose `errors` is a non-empty array of objects, each with a
    /// spec `code` and a string `message` (`detail` is free-form).
    pub fn error_codes(&self) -> Vec<String> {
        let ct = self.header("content-type").unwrap_or_default();
        assert!(
            ct.starts_with("application/json"),
            "{}: error answered with Content-Type {ct:?}",
            self.describe()
        );
        let doc = self.json();
        let errors = doc["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: no errors array", self.describe()));
        assert!(
            !errors.is_empty(),
            "{}: empty errors array",
            self.describe()
        );
        errors
            .iter()
            .map(|e| {
                let code = e["code"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{}: error without code", self.describe()));
                assert!(
                    SPEC_ERROR_CODES.contains(&code),
                    "{}: {code} is not a spec error code",
                    self.describe()
                );
                assert!(
                    e["message"].is_string(),
                    "{}: error without message",
                    self.describe()
                );
                code.to_owned()
            })
            .collect()
    }

    /// Asserts status and (for requests with a body) the single error code.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.describe());
        if !self.what.starts_with("HEAD ") {
            assert_eq!(self.error_codes(), [code], "{}", self.describe());
        }
    }
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().expect("string entry").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub fn sorted(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algo {
    Sha256,
    Sha512,
}

impl Algo {
    pub fn digest(self, data: &[u8]) -> String {
        match self {
            Algo::Sha256 => sha256(data),
            Algo::Sha512 => format!("sha512:{}", hex::encode(sha2::Sha512::digest(data))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algo::Sha256 => "sha256",
            Algo::Sha512 => "sha512",
        }
    }
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// A small seeded generator (SplitMix64): reproducible test data without a
/// dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(n);
        out
    }

    /// Random text from `[A-Z2-7]`, like Go's `rand.Text` (26 characters).
    pub fn text(&mut self) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        (0..26)
            .map(|_| ALPHABET[(self.next_u64() % 32) as usize] as char)
            .collect()
    }
}

/// Standard base64 with padding (descriptor `data` fields).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn helpers_are_right() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    assert_eq!(
        sha256(b""),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert!(
        Algo::Sha512
            .digest(b"")
            .starts_with("sha512:cf83e1357eefb8bd")
    );
    assert_eq!(dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), b"abcde");
}
