//! Manifest pull (with Accept negotiation), push (by tag, by digest, with
//! `?tag=` parameters) and delete (a tag, or a manifest by digest).

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use registry::manifest::{self, MAX_MANIFEST_BYTES};
use registry::names::NameError;
use registry::{Reference, RegistryError, Tag};

use super::error::{Code, OciError, OciResult};
use super::{Query, repo_name};
use crate::auth::{Action, RequestMeta, Scope};
use crate::http::AppState;
use crate::http::headers::{DOCKER_CONTENT_DIGEST, OCI_SUBJECT, OCI_TAG};

/// Parses a reference for a read or delete: a tag that cannot exist is
/// simply unknown, a malformed digest is the client's error.
fn reference_for_lookup(s: &str) -> OciResult<Reference> {
    match Reference::parse(s) {
        Ok(r) => Ok(r),
        Err(NameError::Tag(_)) => Err(RegistryError::ManifestUnknown.into()),
        Err(e) => Err(OciError::digest_invalid(e.to_string())),
    }
}

pub(super) async fn get(
    state: &AppState,
    req: &RequestMeta<'_>,
    name: &str,
    reference: &str,
    head: bool,
) -> OciResult<Response> {
    let name = repo_name(name)?;
    state
        .auth
        .authorize(req, Scope::repository(&name, &[Action::Pull]))
        .await?;
    let reference = reference_for_lookup(reference)?;
    let m = state.registry.get_manifest(&name, &reference).await?;
    let accept: Vec<&str> = req
        .headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !manifest::accepts(&accept, &m.media_type) {
        return Err(RegistryError::ManifestNotAcceptable(m.media_type).into());
    }
    let mut h = HeaderMap::new();
    let mut put = |k: header::HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    put(header::CONTENT_TYPE, &m.media_type);
    put(DOCKER_CONTENT_DIGEST, m.digest.as_str());
    put(header::ETAG, &format!("\"{}\"", m.digest));
    put(header::CONTENT_LENGTH, &m.content.len().to_string());
    if head {
        return Ok((StatusCode::OK, h).into_response());
    }
    state.metrics.bytes_sent.inc_by(m.content.len() as u64);
    Ok((StatusCode::OK, h, Body::from(m.content)).into_response())
}

pub(super) async fn put(
    state: &AppState,
    req: &RequestMeta<'_>,
    name: &str,
    reference: &str,
    q: &Query,
    body: Body,
) -> OciResult<Response> {
    let name = repo_name(name)?;
    let principal = state
        .auth
        .authorize(req, Scope::repository(&name, &[Action::Push]))
        .await?;
    let reference = Reference::parse(reference).map_err(|e| match e {
        NameError::Tag(_) => OciError::new(
            StatusCode::BAD_REQUEST,
            Code::ManifestInvalid,
            e.to_string(),
        ),
        e => OciError::digest_invalid(e.to_string()),
    })?;
    let extra_tags = q
        .all("tag")
        .map(Tag::parse)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            OciError::new(
                StatusCode::BAD_REQUEST,
                Code::ManifestInvalid,
                e.to_string(),
            )
        })?;
    let too_large = || {
        OciError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::ManifestInvalid,
            format!("manifest is larger than {MAX_MANIFEST_BYTES} bytes"),
        )
    };
    let declared = req
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_MANIFEST_BYTES) {
        return Err(too_large());
    }
    // Bounded read: a manifest is held in memory, so it must be small.
    let bytes = Limited::new(body, MAX_MANIFEST_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                OciError::new(
                    StatusCode::BAD_REQUEST,
                    Code::ManifestInvalid,
                    format!("reading manifest: {e}"),
                )
            }
        })?
        .to_bytes();
    state.metrics.bytes_received.inc_by(bytes.len() as u64);
    let content_type = req
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let pushed = state
        .registry
        .put_manifest(&name, &reference, content_type, &bytes, &extra_tags)
        .await?;
    let tags: Vec<&str> = pushed.tags.iter().map(|t| t.as_str()).collect();
    state.audit(
        &principal,
        req,
        "push",
        format!("{name}@{} [{}]", pushed.digest, tags.join(",")),
    );
    let mut resp = (StatusCode::CREATED, [(header::CONTENT_LENGTH, "0")]).into_response();
    let h = resp.headers_mut();
    let mut put = |k: header::HeaderName, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.append(k, v);
        }
    };
    put(
        header::LOCATION,
        &format!("/v2/{name}/manifests/{}", pushed.digest),
    );
    put(DOCKER_CONTENT_DIGEST, pushed.digest.as_str());
    if let Some(s) = &pushed.subject {
        put(OCI_SUBJECT, s.as_str());
    }
    if !extra_tags.is_empty() {
        for t in &pushed.tags {
            put(OCI_TAG, t.as_str());
        }
    }
    Ok(resp)
}

pub(super) async fn delete(
    state: &AppState,
    req: &RequestMeta<'_>,
    name: &str,
    reference: &str,
) -> OciResult<Response> {
    let name = repo_name(name)?;
    let principal = state
        .auth
        .authorize(req, Scope::repository(&name, &[Action::Delete]))
        .await?;
    let reference = reference_for_lookup(reference)?;
    state.registry.delete_manifest(&name, &reference).await?;
    let what = match &reference {
        Reference::Tag(t) => format!("{name}:{t}"),
        Reference::Digest(d) => format!("{name}@{d}"),
    };
    state.audit(&principal, req, "delete", what);
    Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, "0")]).into_response())
}
