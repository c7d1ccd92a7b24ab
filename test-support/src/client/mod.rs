//! [`OciClient`]: a small client of the OCI Distribution API for tests and
//! the benchmark.
//!
//! Most methods return the raw [`reqwest::Response`] so that tests can assert
//! on status codes and headers of every step, including the failing ones;
//! the multi-step helpers (`push_blob_*`, `push_image`) check the
//! intermediate steps and return the final response.
//!
//! This file holds the client itself and blob operations; manifests, listing
//! and whole-image pushes are in [`manifests`].

mod manifests;

use anyhow::{Context, bail};
use bytes::Bytes;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderMap, LOCATION, RANGE};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};

pub use manifests::{ALL_MANIFEST_TYPES, TagList};

/// Credentials added to every request.
#[derive(Clone, Debug)]
enum Auth {
    Bearer(String),
    Basic(String, String),
}

/// An OCI Distribution API client bound to one registry base URL.
#[derive(Clone, Debug)]
pub struct OciClient {
    http: reqwest::Client,
    base: Url,
    auth: Option<Auth>,
}

impl OciClient {
    /// A client for the registry at `base_url` (`http://127.0.0.1:PORT`).
    /// Proxies from the environment are ignored: tests talk to loopback.
    pub fn new(base_url: &str) -> OciClient {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .expect("building a reqwest client");
        Self::with_http_client(base_url, http)
    }

    /// Like [`new`](Self::new) with a caller-configured reqwest client.
    pub fn with_http_client(base_url: &str, http: reqwest::Client) -> OciClient {
        let base = Url::parse(base_url)
            .unwrap_or_else(|e| panic!("invalid registry base URL {base_url:?}: {e}"));
        OciClient {
            http,
            base,
            auth: None,
        }
    }

    /// Sends `Authorization: Bearer TOKEN` with every request.
    pub fn bearer_token(mut self, token: &str) -> OciClient {
        self.auth = Some(Auth::Bearer(token.to_owned()));
        self
    }

    /// Sends HTTP basic credentials with every request.
    pub fn basic_auth(mut self, user: &str, password: &str) -> OciClient {
        self.auth = Some(Auth::Basic(user.to_owned(), password.to_owned()));
        self
    }

    /// Stops sending credentials.
    pub fn anonymous(mut self) -> OciClient {
        self.auth = None;
        self
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `path` (starting with `/`, may carry a query) appended to the base
    /// URL, keeping any path prefix the base has.
    pub fn url(&self, path: &str) -> Url {
        let joined = format!("{}{}", self.base.as_str().trim_end_matches('/'), path);
        Url::parse(&joined).unwrap_or_else(|e| panic!("invalid URL {joined:?}: {e}"))
    }

    /// A request with the client's credentials; the escape hatch for tests
    /// that need headers or methods the helpers do not produce.
    pub fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let builder = self.http.request(method, url);
        match &self.auth {
            Some(Auth::Bearer(token)) => builder.bearer_auth(token),
            Some(Auth::Basic(user, password)) => builder.basic_auth(user, Some(password)),
            None => builder,
        }
    }

    /// Resolves a `Location` header value (absolute URL, absolute path or
    /// relative path) against the base URL.
    pub fn resolve(&self, location: &str) -> anyhow::Result<Url> {
        self.base
            .join(location)
            .with_context(|| format!("invalid Location {location:?}"))
    }

    /// The resolved `Location` header of a response.
    pub fn location(&self, response: &Response) -> anyhow::Result<Url> {
        location_of(&self.base, response.headers())
    }

    /// `GET /v2/`.
    pub async fn ping(&self) -> anyhow::Result<Response> {
        self.send(self.request(Method::GET, self.url("/v2/"))).await
    }

    pub async fn head_blob(&self, repo: &str, digest: &str) -> anyhow::Result<Response> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        self.send(self.request(Method::HEAD, url)).await
    }

    /// `GET` a blob, optionally with `Range: bytes=START-END` (`END`
    /// inclusive; `None` for an open range).
    pub async fn get_blob(
        &self,
        repo: &str,
        digest: &str,
        range: Option<(u64, Option<u64>)>,
    ) -> anyhow::Result<Response> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        let mut req = self.request(Method::GET, url);
        if let Some((start, end)) = range {
            let end = end.map(|e| e.to_string()).unwrap_or_default();
            req = req.header(RANGE, format!("bytes={start}-{end}"));
        }
        self.send(req).await
    }

    /// The whole blob, failing unless the registry answers 200.
    pub async fn get_blob_bytes(&self, repo: &str, digest: &str) -> anyhow::Result<Bytes> {
        let resp = self.get_blob(repo, digest, None).await?;
        let resp = expect_status(resp, &[StatusCode::OK], "GET blob").await?;
        Ok(resp.bytes().await?)
    }

    pub async fn delete_blob(&self, repo: &str, digest: &str) -> anyhow::Result<Response> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"));
        self.send(self.request(Method::DELETE, url)).await
    }

    /// `POST /v2/REPO/blobs/uploads/`: opens an upload session.
    pub async fn start_upload(&self, repo: &str) -> anyhow::Result<Response> {
        let url = self.url(&format!("/v2/{repo}/blobs/uploads/"));
        self.send(self.request(Method::POST, url).header(CONTENT_LENGTH, 0))
            .await
    }

    /// Single-request upload: `POST …/uploads/?digest=D` with the body.
    /// Registries that do not support it answer 202 with an upload location
    /// (distribution 2.8 does), which the response lets a test see.
    pub async fn push_blob_monolithic(
        &self,
        repo: &str,
        digest: &str,
        data: Bytes,
    ) -> anyhow::Result<Response> {
        let mut url = self.url(&format!("/v2/{repo}/blobs/uploads/"));
        url.query_pairs_mut().append_pair("digest", digest);
        let req = self
            .request(Method::POST, url)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(data);
        self.send(req).await
    }

    /// `POST` to open an upload, then one `PUT ?digest=D` with the whole
    /// body; returns the PUT's response.
    pub async fn push_blob_post_put(
        &self,
        repo: &str,
        digest: &str,
        data: Bytes,
    ) -> anyhow::Result<Response> {
        let started = self.start_upload(repo).await?;
        let started = expect_status(started, &[StatusCode::ACCEPTED], "POST upload").await?;
        let location = self.location(&started)?;
        self.finish_upload(&location, digest, Some(data)).await
    }

    /// `POST`, then `PATCH`es of `chunk_size` bytes (each with
    /// `Content-Range: START-END`, following the `Location` each response
    /// returns), then `PUT ?digest=D` with an empty body; returns the PUT's
    /// response. Chunks are slices of `data`, never copies.
    pub async fn push_blob_chunked(
        &self,
        repo: &str,
        digest: &str,
        data: Bytes,
        chunk_size: usize,
    ) -> anyhow::Result<Response> {
        assert!(chunk_size > 0, "chunk_size must be positive");
        let started = self.start_upload(repo).await?;
        let started = expect_status(started, &[StatusCode::ACCEPTED], "POST upload").await?;
        let mut location = self.location(&started)?;
        let mut offset = 0;
        while offset < data.len() {
            let end = (offset + chunk_size).min(data.len());
            let resp = self
                .patch_chunk(&location, offset as u64, data.slice(offset..end))
                .await?;
            let resp = expect_status(
                resp,
                &[StatusCode::ACCEPTED],
                &format!("PATCH bytes {offset}-{}", end - 1),
            )
            .await?;
            location = self.location(&resp)?;
            offset = end;
        }
        self.finish_upload(&location, digest, None).await
    }

    /// One `PATCH` of an upload with `Content-Range: START-END` (END
    /// inclusive, as the distribution spec writes it).
    pub async fn patch_chunk(
        &self,
        location: &Url,
        start: u64,
        chunk: Bytes,
    ) -> anyhow::Result<Response> {
        let mut req = self
            .request(Method::PATCH, location.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, chunk.len());
        if !chunk.is_empty() {
            let end = start + chunk.len() as u64 - 1;
            req = req.header(CONTENT_RANGE, format!("{start}-{end}"));
        }
        self.send(req.body(chunk)).await
    }

    /// The closing `PUT LOCATION?digest=D`, with the last bytes if any.
    pub async fn finish_upload(
        &self,
        location: &Url,
        digest: &str,
        last_chunk: Option<Bytes>,
    ) -> anyhow::Result<Response> {
        let mut url = location.clone();
        url.query_pairs_mut().append_pair("digest", digest);
        let body = last_chunk.unwrap_or_default();
        let req = self
            .request(Method::PUT, url)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, body.len())
            .body(body);
        self.send(req).await
    }

    /// `GET` an upload session: 204 with `Range: 0-END` while it is open.
    pub async fn upload_status(&self, location: &Url) -> anyhow::Result<Response> {
        self.send(self.request(Method::GET, location.clone())).await
    }

    /// `DELETE` an upload session.
    pub async fn cancel_upload(&self, location: &Url) -> anyhow::Result<Response> {
        self.send(self.request(Method::DELETE, location.clone()))
            .await
    }

    /// Cross-repository mount: `POST …/uploads/?mount=D[&from=REPO]`; 201 if
    /// mounted, 202 (an upload session) if not.
    pub async fn mount_blob(
        &self,
        repo: &str,
        digest: &str,
        from: Option<&str>,
    ) -> anyhow::Result<Response> {
        let mut url = self.url(&format!("/v2/{repo}/blobs/uploads/"));
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("mount", digest);
            if let Some(from) = from {
                query.append_pair("from", from);
            }
        }
        self.send(self.request(Method::POST, url).header(CONTENT_LENGTH, 0))
            .await
    }

    /// Pushes a blob unless `HEAD` finds it: the usual client behaviour.
    pub async fn ensure_blob(&self, repo: &str, digest: &str, data: Bytes) -> anyhow::Result<()> {
        let head = self.head_blob(repo, digest).await?;
        if head.status() == StatusCode::OK {
            return Ok(());
        }
        let resp = self.push_blob_post_put(repo, digest, data).await?;
        let resp = expect_status(resp, &[StatusCode::CREATED], "PUT blob").await?;
        check_digest_header(&resp, digest)
    }

    /// Sends a request built with [`Self::request`] (credentials applied).
    pub async fn send(&self, req: RequestBuilder) -> anyhow::Result<Response> {
        // Keep the method and URL for the error: reqwest's own message
        // omits the method.
        let (client, req) = req.build_split();
        let req = req.context("building request")?;
        let what = format!("{} {}", req.method(), req.url());
        client
            .execute(req)
            .await
            .with_context(|| format!("{what} failed"))
    }
}

fn location_of(base: &Url, headers: &HeaderMap) -> anyhow::Result<Url> {
    let location = headers
        .get(LOCATION)
        .context("response has no Location header")?
        .to_str()
        .context("Location header is not ASCII")?;
    base.join(location)
        .with_context(|| format!("invalid Location {location:?}"))
}

/// Passes `resp` through if its status is one of `expected`; otherwise fails
/// with the status and body (the registry's error JSON).
pub async fn expect_status(
    resp: Response,
    expected: &[StatusCode],
    what: &str,
) -> anyhow::Result<Response> {
    if expected.contains(&resp.status()) {
        return Ok(resp);
    }
    let status = resp.status();
    let url = resp.url().clone();
    let body = resp.text().await.unwrap_or_default();
    bail!("{what} ({url}): expected {expected:?}, got {status}: {body}")
}

/// Checks `Docker-Content-Digest` if the registry sent it.
fn check_digest_header(resp: &Response, digest: &str) -> anyhow::Result<()> {
    if let Some(value) = resp.headers().get("docker-content-digest") {
        let value = value.to_str().unwrap_or_default();
        if value != digest {
            bail!("registry stored digest {value}, expected {digest}");
        }
    }
    Ok(())
}
