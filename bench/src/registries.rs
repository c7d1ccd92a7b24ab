//! The two registries under test as the measurements see them, and the HTTP
//! helpers every measurement shares: status checks that abort on any
//! unexpected answer, and paged listings that follow `Link` headers.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use bytes::Bytes;
use reqwest::header::LINK;
use reqwest::{Method, Response, StatusCode, Url};
use serde::Deserialize;
use test_support::OciClient;

/// One registry under test: a name for the report and a client whose
/// connections are reused across requests.
#[derive(Debug, Clone)]
pub struct Registry {
    pub name: &'static str,
    pub client: OciClient,
    pub pid: u32,
    /// The largest `n` the registry accepts for `/v2/_catalog`: berth caps
    /// larger values at `limits.max_page_entries` (10000), distribution 2.8
    /// answers 400 PAGINATION_NUMBER_INVALID above `catalog.maxentries`
    /// (1000 by default).
    pub max_catalog_page: usize,
}

impl Registry {
    pub fn new(
        name: &'static str,
        base_url: &str,
        pid: u32,
        max_catalog_page: usize,
    ) -> anyhow::Result<Registry> {
        // One pooled client per registry: connections are reused, Nagle is
        // off, nothing times out on its own (a 2 GiB push may take a while;
        // a hung server is seen as no progress on stderr).
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(64)
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        Ok(Registry {
            name,
            client: OciClient::with_http_client(base_url, http),
            pid,
            max_catalog_page,
        })
    }
}

/// Seeds for random blobs: every blob of a run is different, so nothing is
/// ever deduplicated, and the same seed is pushed to both registries.
pub fn next_seed() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0xBE27_0000);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Passes `resp` through if its status is `expected`; otherwise fails with
/// the registry's name, the request, the status and the error body.
pub async fn expect(
    reg: &Registry,
    resp: Response,
    expected: StatusCode,
    what: &str,
) -> anyhow::Result<Response> {
    if resp.status() == expected {
        return Ok(resp);
    }
    let status = resp.status();
    let url = resp.url().clone();
    let body = resp.text().await.unwrap_or_default();
    bail!(
        "{} answered {status} to {what} ({url}), expected {expected}: {body}",
        reg.name
    )
}

/// Checks that a `Docker-Content-Digest` header, if sent, names `digest`.
pub fn check_digest(reg: &Registry, resp: &Response, digest: &str) -> anyhow::Result<()> {
    if let Some(v) = resp.headers().get("docker-content-digest") {
        let v = v.to_str().unwrap_or_default();
        if v != digest {
            bail!("{} stored digest {v}, expected {digest}", reg.name);
        }
    }
    Ok(())
}

/// Pushes a blob with `POST` then one `PUT ?digest=` carrying the body,
/// expecting 201.
pub async fn push_blob(
    reg: &Registry,
    repo: &str,
    digest: &str,
    data: Bytes,
) -> anyhow::Result<()> {
    let resp = reg.client.push_blob_post_put(repo, digest, data).await?;
    let resp = expect(reg, resp, StatusCode::CREATED, "blob PUT").await?;
    check_digest(reg, &resp, digest)
}

/// `PUT` a manifest, expecting 201 and the right digest.
pub async fn put_manifest(
    reg: &Registry,
    repo: &str,
    reference: &str,
    media_type: &str,
    manifest: Bytes,
    digest: &str,
) -> anyhow::Result<()> {
    let resp = reg
        .client
        .put_manifest(repo, reference, media_type, manifest)
        .await?;
    let resp = expect(reg, resp, StatusCode::CREATED, "manifest PUT").await?;
    check_digest(reg, &resp, digest)
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    repositories: Option<Vec<String>>,
}

/// A full listing: `GET url`, then every `Link: <…>; rel="next"` until
/// there is none. Returns the entries and the number of pages.
pub async fn list_all(reg: &Registry, first: Url) -> anyhow::Result<(Vec<String>, usize)> {
    let mut url = first;
    let mut entries = Vec::new();
    let mut pages = 0;
    loop {
        pages += 1;
        let resp = reg
            .client
            .request(Method::GET, url.clone())
            .send()
            .await
            .with_context(|| format!("GET {url} on {}", reg.name))?;
        let resp = expect(reg, resp, StatusCode::OK, "listing GET").await?;
        let next = match resp.headers().get(LINK) {
            Some(v) => next_link(v.to_str().context("Link header is not ASCII")?)
                .map(|l| reg.client.resolve(&l))
                .transpose()?,
            None => None,
        };
        let body = resp.bytes().await?;
        let page: Page = serde_json::from_slice(&body)
            .with_context(|| format!("parsing the listing from {} ({url})", reg.name))?;
        entries.extend(page.tags.into_iter().flatten());
        entries.extend(page.repositories.into_iter().flatten());
        match next {
            Some(n) => url = n,
            None => return Ok((entries, pages)),
        }
    }
}

/// The target of the `rel="next"` link in a `Link` header value.
pub fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| {
            let p = p.trim().replace(' ', "");
            p == "rel=\"next\"" || p == "rel=next"
        });
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then(|| target.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_next_links() {
        assert_eq!(
            next_link(r#"</v2/_catalog?last=a%2Fb&n=1000>; rel="next""#).as_deref(),
            Some("/v2/_catalog?last=a%2Fb&n=1000")
        );
        assert_eq!(
            next_link(r#"<http://x/v2/r/tags/list?n=2&last=t>; rel=next"#).as_deref(),
            Some("http://x/v2/r/tags/list?n=2&last=t")
        );
        assert_eq!(next_link(r#"</a>; rel="prev""#), None);
    }
}
