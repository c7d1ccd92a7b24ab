//! Blob reads, deletes, and the upload protocol (monolithic, chunked,
//! streamed, cross-repository mount, status, cancel).

use std::io;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use registry::{Algorithm, ByteRange, ByteStream, Digest, MountSource, RegistryError, RepoName};

use super::error::{OciError, OciResult};
use super::{Query, repo_name};
use crate::auth::{Action, RequestMeta, Scope};
use crate::http::AppState;
use crate::http::headers::{DOCKER_CONTENT_DIGEST, DOCKER_UPLOAD_UUID};

fn digest_param(s: &str) -> OciResult<Digest> {
    Digest::parse(s).map_err(|e| OciError::digest_invalid(e.to_string()))
}

/// Streams a request body into the registry, counting bytes received.
fn body_stream(state: &AppState, body: Body) -> ByteStream {
    let counter = state.metrics.bytes_received.clone();
    body.into_data_stream()
        .map_err(io::Error::other)
        .inspect_ok(move |b| {
            counter.inc_by(b.len() as u64);
        })
        .boxed()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    header_str(headers, &header::CONTENT_LENGTH).and_then(|v| v.trim().parse().ok())
}

/// Whether a request carries a body worth streaming.
fn has_body(headers: &HeaderMap) -> bool {
    match content_length(headers) {
        Some(n) => n > 0,
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}

/// Parses a `Range: bytes=…` header. Forms the registry does not serve
/// (several ranges, other units, garbage) are ignored, as RFC 9110 allows,
/// and the whole blob is sent; `a-b` with `b < a` is kept so that it is
/// answered 416, as the conformance suite expects.
fn parse_range(headers: &HeaderMap) -> Option<ByteRange> {
    let v = header_str(headers, &header::RANGE)?.trim();
    let spec = v.strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    match (a.is_empty(), b.is_empty()) {
        (false, false) => Some(ByteRange::FromTo(a.parse().ok()?, b.parse().ok()?)),
        (false, true) => Some(ByteRange::From(a.parse().ok()?)),
        (true, false) => Some(ByteRange::Suffix(b.parse().ok()?)),
        (true, true) => None,
    }
}

/// Parses an upload's `Content-Range`: the spec's `start-end`, also
/// accepting `bytes start-end[/total]` as some clients send it.
fn parse_content_range(headers: &HeaderMap) -> OciResult<Option<(u64, u64)>> {
    let Some(v) = header_str(headers, &header::CONTENT_RANGE) else {
        if headers.contains_key(header::CONTENT_RANGE) {
            return Err(bad_range("Content-Range is not ASCII"));
        }
        return Ok(None);
    };
    let s = v.trim();
    let s = s.strip_prefix("bytes").map(str::trim_start).unwrap_or(s);
    let s = s.strip_prefix('=').unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s).trim();
    let parsed = s
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?)));
    match parsed {
        Some((a, b)) if b >= a => Ok(Some((a, b))),
        _ => Err(OciError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            super::error::Code::BlobUploadInvalid,
            format!("invalid Content-Range {v:?}: expected start-end"),
        )),
    }
}

fn bad_range(msg: &str) -> OciError {
    OciError::new(
        StatusCode::BAD_REQUEST,
        super::error::Code::BlobUploadInvalid,
        msg,
    )
}

fn upload_location(name: &RepoName, id: &str) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

fn blob_location(name: &RepoName, digest: &Digest) -> String {
    format!("/v2/{name}/blobs/{digest}")
}

/// `Range: 0-<last byte>` as distribution reports it (`0-0` when empty).
fn range_header(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

/// 202 answer for an upload session in progress.
fn upload_accepted(name: &RepoName, id: &str, size: u64, status: StatusCode) -> Response {
    let mut h = HeaderMap::new();
    insert(&mut h, header::LOCATION, &upload_location(name, id));
    insert(&mut h, header::RANGE, &range_header(size));
    insert(&mut h, DOCKER_UPLOAD_UUID, id);
    insert(&mut h, header::CONTENT_LENGTH, "0");
    (status, h).into_response()
}

/// 201 answer for a blob that now exists.
fn blob_created(name: &RepoName, digest: &Digest) -> Response {
    let mut h = HeaderMap::new();
    insert(&mut h, header::LOCATION, &blob_location(name, digest));
    insert(&mut h, DOCKER_CONTENT_DIGEST, digest.as_str());
    insert(&mut h, header::CONTENT_LENGTH, "0");
    (StatusCode::CREATED, h).into_response()
}

fn insert(h: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// Adds the session's headers to an upload error, so that a client told
/// 416 knows where the upload stands.
fn with_session(e: RegistryError, name: &RepoName, id: &str) -> OciError {
    let size = match &e {
        RegistryError::RangeNotSatisfiable { size } => Some(*size),
        _ => None,
    };
    let mut err = OciError::from(e);
    if let Some(size) = size {
        err = session_headers(err, name, id, size);
    }
    err
}

fn session_headers(err: OciError, name: &RepoName, id: &str, size: u64) -> OciError {
    err.header(header::LOCATION, &upload_location(name, id))
        .header(header::RANGE, &range_header(size))
        .header(DOCKER_UPLOAD_UUID, id)
}

pub(super) async fn get(
    state: &AppState,
    req: &RequestMeta<'_>,
    name: &str,
    digest: &str,
    head: bool,
) -> OciResult<Response> {
    let name = repo_name(name)?;
    state
        .auth
        .authorize(req, Scope::repository(&name, &[Action::Pull]))
        .await?;
    let digest = digest_param(digest)?;
    let mut h = HeaderMap::new();
    insert(&mut h, DOCKER_CONTENT_DIGEST, digest.as_str());
    insert(&mut h, header::ETAG, &format!("\"{digest}\""));
    insert(&mut h, header::ACCEPT_RANGES, "bytes");
    // Content-addressed: the bytes behind a digest never change.
    insert(&mut h, header::CACHE_CONTROL, "max-age=31536000");
    insert(&mut h, header::CONTENT_TYPE, "application/octet-stream");
    if head {
        let size = state.registry.stat_blob(&name, &digest).await?;
        insert(&mut h, header::CONTENT_LENGTH, &size.to_string());
        return Ok((StatusCode::OK, h).into_response());
    }
    let range = parse_range(req.headers);
    if let Some(ttl) = state.blob_redirect
        && let Some(url) = state.registry.blob_url(&name, &digest, ttl).await?
    {
        // The client fetches the bytes from the object store itself,
        // sending its Range header there; the presigned URL grants this one
        // blob for a few minutes, after the checks above.
        insert(&mut h, header::LOCATION, &url);
        insert(&mut h, header::CONTENT_LENGTH, "0");
        insert(&mut h, header::CACHE_CONTROL, "no-store");
        return Ok((StatusCode::TEMPORARY_REDIRECT, h).into_response());
    }
    let read = match state.registry.read_blob(&name, &digest, range).await {
        Ok(r) => r,
        Err(RegistryError::RangeNotSatisfiable { size }) => {
            return Err(OciError::from(RegistryError::RangeNotSatisfiable { size })
                .header(header::CONTENT_RANGE, &format!("bytes */{size}")));
        }
        Err(e) => return Err(e.into()),
    };
    insert(
        &mut h,
        header::CONTENT_LENGTH,
        &(read.end - read.start).to_string(),
    );
    let status = if read.partial {
        insert(
            &mut h,
            header::CONTENT_RANGE,
            &format!(
                "bytes {}-{}/{}",
                read.start,
                read.end.saturating_sub(1),
                read.size
            ),
        );
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let counter = state.metrics.bytes_sent.clone();
    let body = read.body.inspect_ok(move |b| {
        counter.inc_by(b.len() as u64);
    });
    Ok((status, h, Body::from_stream(body)).into_response())
}

pub(super) async fn delete(
    state: &AppState,
    req: &RequestMeta<'_>,
    name: &str,
    digest: &str,
) -> OciResult<Response> {
    let name = repo_name(name)?;
    let principal = state
        .auth
        .authorize(req, Scope::repository(&name, &[Action::Delete]))
        .await?;
    let digest = digest_param(digest)?;
    state.registry.delete_blob(&name, &digest).await?;
    state.audit(&principal, req, "delete", format!("{name} blob {digest}"));
    Ok((StatusCode::ACCEPTED, [(header::CONTENT_LENGTH, "0")]).into_response())
}

/// `POST /v2/<name>/blobs/uploads/`: mount, monolithic upload, or a new session.
pub(super) async fn start_upload(
    state: &AppState,
    req: &RequestMeta<'_>,
    name: &str,
    q: &Query,
    body: Body,
) -> OciResult<Response> {
    let name = repo_name(name)?;
    let principal = state
        .auth
        .authorize(req, Scope::repository(&name, &[Action::Pull, Action::Push]))
        .await?;
    if let Some(mount) = q.get("mount") {
        let digest = digest_param(mount)?;
        let from = q.get("from").map(repo_name).transpose()?;
        let may_read_source = match &from {
            Some(f) => state
                .auth
                .authorize(req, Scope::repository(f, &[Action::Pull]))
                .await
                .is_ok(),
            None => true,
        };
        // Without `from`, only repositories of the caller's own namespace
        // are searched: knowing a digest must not open another account's blob.
        let source = match &from {
            Some(f) => MountSource::Repository(f),
            None => MountSource::Anywhere {
                namespace: principal.namespace.as_deref(),
            },
        };
        if may_read_source
            && state
                .registry
                .mount_blob(&name, &digest, source)
                .await?
                .is_some()
        {
            return Ok(blob_created(&name, &digest));
        }
        // Nothing to mount: the spec says to fall back to a new upload.
    } else if let Some(d) = q.get("digest") {
        let digest = digest_param(d)?;
        let started = std::time::Instant::now();
        state
            .registry
            .put_blob(&name, &digest, body_stream(state, body))
            .await?;
        state
            .metrics
            .upload_duration
            .observe(started.elapsed().as_secs_f64());
        return Ok(blob_created(&name, &digest));
    }
    // A hint some clients send so the server hashes with the right algorithm.
    let algorithm = match q.get("digest-algorithm") {
        Some(a) => Algorithm::from_name(a).ok_or_else(|| {
            OciError::digest_invalid(format!("unsupported digest algorithm {a:?}"))
        })?,
        None => Algorithm::Sha256,
    };
    let upload = state.registry.start_upload(&name, algorithm).await?;
    Ok(upload_accepted(
        &name,
        &upload.id,
        upload.size,
        StatusCode::ACCEPTED,
    ))
}

pub(super) async fn upload_status(
    state: &AppState,
    req: &RequestMeta<'_>,
    name: &str,
    id: &str,
) -> OciResult<Response> {
    let name = repo_name(name)?;
    state
        .auth
        .authorize(req, Scope::repository(&name, &[Action::Push]))
        .await?;
    let s = state.registry.upload_status(&name, id).await?;
    Ok(upload_accepted(
        &name,
        &s.id,
        s.size,
        StatusCode::NO_CONTENT,
    ))
}

/// Checks `Content-Length` against `Content-Range` before any byte is read.
fn checked_range(headers: &HeaderMap) -> OciResult<Option<(u64, u64)>> {
    let range = parse_content_range(headers)?;
    if let (Some((a, b)), Some(len)) = (range, content_length(headers))
        && b - a + 1 != len
    {
        return Err(bad_range(&format!(
            "Content-Length {len} does not match Content-Range {a}-{b}"
        )));
    }
    Ok(range)
}

/// The chunk's range, checked. An unusable `Content-Range` is answered like
/// an out-of-order chunk (416), with where the upload stands, so that the
/// client can resume from there.
async fn chunk_range(
    state: &AppState,
    headers: &HeaderMap,
    name: &RepoName,
    id: &str,
) -> OciResult<Option<(u64, u64)>> {
    match checked_range(headers) {
        Err(e) if e.status == StatusCode::RANGE_NOT_SATISFIABLE => {
            let s = state.registry.upload_status(name, id).await?;
            Err(session_headers(e, name, id, s.size))
        }
        r => r,
    }
}

pub(super) async fn patch_upload(
    state: &AppState,
    req: &RequestMeta<'_>,
    name: &str,
    id: &str,
    body: Body,
) -> OciResult<Response> {
    let name = repo_name(name)?;
    state
        .auth
        .authorize(req, Scope::repository(&name, &[Action::Push]))
        .await?;
    let range = chunk_range(state, req.headers, &name, id).await?;
    let s = state
        .registry
        .upload_chunk(&name, id, range, body_stream(state, body))
        .await
        .map_err(|e| with_session(e, &name, id))?;
    Ok(upload_accepted(&name, &s.id, s.size, StatusCode::ACCEPTED))
}

pub(super) async fn put_upload(
    state: &AppState,
    req: &RequestMeta<'_>,
    name: &str,
    id: &str,
    q: &Query,
    body: Body,
) -> OciResult<Response> {
    let name = repo_name(name)?;
    state
        .auth
        .authorize(req, Scope::repository(&name, &[Action::Push]))
        .await?;
    let digest = q
        .get("digest")
        .ok_or_else(|| {
            OciError::digest_invalid("the digest query parameter is required to finish an upload")
        })
        .and_then(digest_param)?;
    let range = chunk_range(state, req.headers, &name, id).await?;
    let body = has_body(req.headers).then(|| body_stream(state, body));
    let started = std::time::Instant::now();
    state
        .registry
        .finish_upload(&name, id, &digest, range, body)
        .await
        .map_err(|e| with_session(e, &name, id))?;
    state
        .metrics
        .upload_duration
        .observe(started.elapsed().as_secs_f64());
    Ok(blob_created(&name, &digest))
}

pub(super) async fn cancel_upload(
    state: &AppState,
    req: &RequestMeta<'_>,
    name: &str,
    id: &str,
) -> OciResult<Response> {
    let name = repo_name(name)?;
    state
        .auth
        .authorize(req, Scope::repository(&name, &[Action::Push]))
        .await?;
    state.registry.cancel_upload(&name, id).await?;
    Ok((StatusCode::NO_CONTENT, [(header::CONTENT_LENGTH, "0")]).into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn h(name: header::HeaderName, v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(name, HeaderValue::from_str(v).unwrap());
        m
    }

    #[test]
    fn ranges() {
        let r = |v| parse_range(&h(header::RANGE, v));
        assert_eq!(r("bytes=500-1499"), Some(ByteRange::FromTo(500, 1499)));
        assert_eq!(r("bytes=500-"), Some(ByteRange::From(500)));
        assert_eq!(r("bytes=-500"), Some(ByteRange::Suffix(500)));
        assert_eq!(r("bytes=500-0"), Some(ByteRange::FromTo(500, 0)));
        assert_eq!(r("bytes=0-1,5-6"), None);
        assert_eq!(r("items=0-1"), None);
        assert_eq!(r("bytes=x-1"), None);
    }

    #[test]
    fn content_ranges() {
        let c = |v| parse_content_range(&h(header::CONTENT_RANGE, v));
        assert_eq!(c("0-99").unwrap(), Some((0, 99)));
        assert_eq!(c("bytes 100-199/1000").unwrap(), Some((100, 199)));
        assert!(c("5-1").is_err());
        assert!(c("nonsense").is_err());
        assert_eq!(parse_content_range(&HeaderMap::new()).unwrap(), None);
    }
}
