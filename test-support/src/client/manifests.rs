//! The manifest half of [`OciClient`]: manifests, tag and repository
//! listing, referrers, and whole-image pushes.

use anyhow::Context;
use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, Response, StatusCode, Url};
use serde::Deserialize;

use super::{OciClient, check_digest_header, expect_status};
use crate::images::{Image, Index, media_types};

/// The `Accept` list sent when a caller names none.
pub const ALL_MANIFEST_TYPES: &[&str] = &[
    media_types::OCI_MANIFEST,
    media_types::OCI_INDEX,
    media_types::DOCKER_MANIFEST,
    media_types::DOCKER_MANIFEST_LIST,
];

/// The body of `GET /v2/REPO/tags/list`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct TagList {
    pub name: String,
    /// distribution sends `null` for a repository without tags.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub tags: Vec<String>,
}

#[derive(Deserialize)]
struct Catalog {
    #[serde(default, deserialize_with = "null_as_empty")]
    repositories: Vec<String>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

fn with_page(mut url: Url, n: Option<usize>, last: Option<&str>) -> Url {
    if n.is_some() || last.is_some() {
        let mut query = url.query_pairs_mut();
        if let Some(n) = n {
            query.append_pair("n", &n.to_string());
        }
        if let Some(last) = last {
            query.append_pair("last", last);
        }
    }
    url
}

impl OciClient {
    /// `PUT /v2/REPO/manifests/REFERENCE` with `Content-Type: media_type`.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        manifest: impl Into<Bytes>,
    ) -> anyhow::Result<Response> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let req = self
            .request(Method::PUT, url)
            .header(CONTENT_TYPE, media_type)
            .body(manifest.into());
        self.send(req).await
    }

    /// `GET /v2/REPO/manifests/REFERENCE` accepting `accept` (all manifest
    /// types when empty).
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
        accept: &[&str],
    ) -> anyhow::Result<Response> {
        self.manifest_request(Method::GET, repo, reference, accept)
            .await
    }

    pub async fn head_manifest(
        &self,
        repo: &str,
        reference: &str,
        accept: &[&str],
    ) -> anyhow::Result<Response> {
        self.manifest_request(Method::HEAD, repo, reference, accept)
            .await
    }

    async fn manifest_request(
        &self,
        method: Method,
        repo: &str,
        reference: &str,
        accept: &[&str],
    ) -> anyhow::Result<Response> {
        let accept = if accept.is_empty() {
            ALL_MANIFEST_TYPES
        } else {
            accept
        };
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let req = self.request(method, url).header(ACCEPT, accept.join(", "));
        self.send(req).await
    }

    /// The manifest bytes and their `Content-Type`, failing unless 200.
    pub async fn get_manifest_bytes(
        &self,
        repo: &str,
        reference: &str,
    ) -> anyhow::Result<(String, Bytes)> {
        let resp = self.get_manifest(repo, reference, &[]).await?;
        let resp = expect_status(resp, &[StatusCode::OK], "GET manifest").await?;
        let media_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok((media_type, resp.bytes().await?))
    }

    pub async fn delete_manifest(&self, repo: &str, reference: &str) -> anyhow::Result<Response> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        self.send(self.request(Method::DELETE, url)).await
    }

    /// `GET /v2/REPO/tags/list[?n=N&last=L]`.
    pub async fn tags_list(
        &self,
        repo: &str,
        n: Option<usize>,
        last: Option<&str>,
    ) -> anyhow::Result<Response> {
        let url = with_page(self.url(&format!("/v2/{repo}/tags/list")), n, last);
        self.send(self.request(Method::GET, url)).await
    }

    /// The tags of `repo` (one unpaginated request), failing unless 200.
    pub async fn tags(&self, repo: &str) -> anyhow::Result<Vec<String>> {
        let resp = self.tags_list(repo, None, None).await?;
        let resp = expect_status(resp, &[StatusCode::OK], "GET tags/list").await?;
        let list: TagList = resp.json().await.context("parsing tags/list")?;
        Ok(list.tags)
    }

    /// `GET /v2/_catalog[?n=N&last=L]`.
    pub async fn catalog(&self, n: Option<usize>, last: Option<&str>) -> anyhow::Result<Response> {
        let url = with_page(self.url("/v2/_catalog"), n, last);
        self.send(self.request(Method::GET, url)).await
    }

    /// The repository names of one unpaginated catalog request.
    pub async fn repositories(&self) -> anyhow::Result<Vec<String>> {
        let resp = self.catalog(None, None).await?;
        let resp = expect_status(resp, &[StatusCode::OK], "GET _catalog").await?;
        let catalog: Catalog = resp.json().await.context("parsing _catalog")?;
        Ok(catalog.repositories)
    }

    /// `GET /v2/REPO/referrers/DIGEST[?artifactType=T]`.
    pub async fn referrers(
        &self,
        repo: &str,
        digest: &str,
        artifact_type: Option<&str>,
    ) -> anyhow::Result<Response> {
        let mut url = self.url(&format!("/v2/{repo}/referrers/{digest}"));
        if let Some(t) = artifact_type {
            url.query_pairs_mut().append_pair("artifactType", t);
        }
        self.send(self.request(Method::GET, url)).await
    }

    /// Pushes the image's blobs (skipping those `HEAD` finds), then its
    /// manifest under `reference` (a tag, or the image's digest). Fails on
    /// any unexpected status or a digest the registry reports differently.
    pub async fn push_image(
        &self,
        repo: &str,
        image: &Image,
        reference: &str,
    ) -> anyhow::Result<()> {
        for blob in image.blobs() {
            self.ensure_blob(repo, &blob.digest, blob.data.clone())
                .await
                .with_context(|| format!("pushing blob {} to {repo}", blob.digest))?;
        }
        let resp = self
            .put_manifest(
                repo,
                reference,
                &image.manifest_media_type,
                image.manifest.clone(),
            )
            .await?;
        let resp = expect_status(resp, &[StatusCode::CREATED], "PUT manifest").await?;
        check_digest_header(&resp, &image.digest)
    }

    /// Pushes every child image by digest, then the index under `reference`.
    pub async fn push_index(
        &self,
        repo: &str,
        index: &Index,
        reference: &str,
    ) -> anyhow::Result<()> {
        for child in &index.children {
            self.push_image(repo, child, &child.digest).await?;
        }
        let resp = self
            .put_manifest(repo, reference, &index.media_type, index.manifest.clone())
            .await?;
        let resp = expect_status(resp, &[StatusCode::CREATED], "PUT index").await?;
        check_digest_header(&resp, &index.digest)
    }
}
