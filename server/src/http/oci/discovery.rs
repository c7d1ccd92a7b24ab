//! Content discovery: tag lists and the catalog (paged with `n`/`last` and
//! `Link`), and the referrers API.

use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use registry::manifest::media_types::OCI_INDEX;
use registry::{Digest, NameList};
use serde_json::{Value, json};

use super::error::{Code, OciError, OciResult};
use super::{Query, repo_name};
use crate::auth::{Action, RequestMeta, Scope};
use crate::http::AppState;
use crate::http::headers::OCI_FILTERS_APPLIED;

/// Page size from `n`, capped by the configured maximum.
fn page_size(state: &AppState, q: &Query) -> OciResult<usize> {
    match q.get("n") {
        None => Ok(state.max_page),
        Some(n) => n
            .parse::<usize>()
            .map(|n| n.min(state.max_page))
            .map_err(|_| {
                OciError::new(
                    StatusCode::BAD_REQUEST,
                    Code::Unsupported,
                    format!("invalid page size n={n:?}"),
                )
            }),
    }
}

/// Fetches one extra entry to learn whether a next page exists.
fn paged_response(
    mut items: NameList,
    n: usize,
    key: &str,
    extra: Option<(&str, &str)>,
    link_path: &str,
) -> Response {
    let more = items.len() > n;
    items.truncate(n);
    // Written straight from the list (no intermediate JSON value): a page
    // may hold thousands of names.
    let mut body = Vec::with_capacity(
        64 + key.len()
            + extra.map_or(0, |(k, v)| k.len() + v.len())
            + items.text().len()
            + 3 * items.len(),
    );
    body.push(b'{');
    if let Some((k, v)) = extra {
        write_json_str(&mut body, k);
        body.push(b':');
        write_json_str(&mut body, v);
        body.push(b',');
    }
    write_json_str(&mut body, key);
    body.extend_from_slice(b":[");
    // Tag and repository names never need escaping (their grammar allows no
    // `"`, `\` or control character): one check over all of them, then each
    // is copied as it is.
    let plain = items.text().bytes().all(json_plain);
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        if plain {
            body.push(b'"');
            body.extend_from_slice(item.as_bytes());
            body.push(b'"');
        } else {
            write_json_str(&mut body, item);
        }
    }
    body.extend_from_slice(b"]}");
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response();
    if let (true, Some(last)) = (more, items.last()) {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("n", &n.to_string())
            .append_pair("last", last)
            .finish();
        if let Ok(v) = format!("<{link_path}?{query}>; rel=\"next\"").parse() {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    resp
}

/// Whether byte `b` stands for itself inside a JSON string.
fn json_plain(b: u8) -> bool {
    b >= 0x20 && b != b'"' && b != b'\\'
}

/// Appends `s` as a JSON string (serde_json escapes it).
fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Serialising a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

pub(super) async fn tags(
    state: &AppState,
    req: &RequestMeta<'_>,
    name: &str,
    q: &Query,
) -> OciResult<Response> {
    let name = repo_name(name)?;
    state
        .auth
        .authorize(req, Scope::repository(&name, &[Action::Pull]))
        .await?;
    let n = page_size(state, q)?;
    let tags = if n == 0 {
        // Still answer 404 for an unknown repository.
        state.registry.list_tags(&name, None, 0).await?
    } else {
        state
            .registry
            .list_tags(&name, q.get("last"), n + 1)
            .await?
    };
    Ok(paged_response(
        tags,
        n,
        "tags",
        Some(("name", name.as_str())),
        &format!("/v2/{name}/tags/list"),
    ))
}

pub(super) async fn catalog(
    state: &AppState,
    req: &RequestMeta<'_>,
    q: &Query,
) -> OciResult<Response> {
    let principal = state.auth.authorize(req, Scope::Catalog).await?;
    let n = page_size(state, q)?;
    let repos = if n == 0 {
        NameList::default()
    } else {
        // An account sees only its own namespace.
        state
            .registry
            .catalog(principal.namespace.as_deref(), q.get("last"), n + 1)
            .await?
    };
    Ok(paged_response(
        repos,
        n,
        "repositories",
        None,
        "/v2/_catalog",
    ))
}

pub(super) async fn referrers(
    state: &AppState,
    req: &RequestMeta<'_>,
    name: &str,
    digest: &str,
    q: &Query,
) -> OciResult<Response> {
    let name = repo_name(name)?;
    state
        .auth
        .authorize(req, Scope::repository(&name, &[Action::Pull]))
        .await?;
    let subject = Digest::parse(digest).map_err(|e| OciError::digest_invalid(e.to_string()))?;
    let artifact_type = q.get("artifactType").filter(|a| !a.is_empty());
    let found = state
        .registry
        .referrers(&name, &subject, artifact_type)
        .await?;
    let manifests: Vec<Value> = found
        .into_iter()
        .map(|r| {
            let mut d = json!({
                "mediaType": r.media_type,
                "digest": r.digest.as_str(),
                "size": r.size,
            });
            if let Some(at) = r.artifact_type {
                d["artifactType"] = Value::String(at);
            }
            if let Some(a) = r
                .annotations
                .and_then(|a| serde_json::from_str::<Value>(&a).ok())
            {
                d["annotations"] = a;
            }
            d
        })
        .collect();
    let body = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, OCI_INDEX)],
        body.to_string(),
    )
        .into_response();
    if artifact_type.is_some() {
        resp.headers_mut().insert(
            OCI_FILTERS_APPLIED,
            http::HeaderValue::from_static("artifactType"),
        );
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::BodyExt;

    async fn body_json(resp: Response) -> Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn pages_are_json_with_a_link_to_the_next() {
        let names: NameList = ["a", "b", "c"].into_iter().collect();
        let resp = paged_response(names, 2, "tags", Some(("name", "x/y")), "/v2/x/y/tags/list");
        assert_eq!(
            resp.headers()[header::LINK],
            "</v2/x/y/tags/list?n=2&last=b>; rel=\"next\""
        );
        assert_eq!(
            body_json(resp).await,
            json!({"name": "x/y", "tags": ["a", "b"]})
        );
        let resp = paged_response(NameList::default(), 5, "repositories", None, "/v2/_catalog");
        assert!(resp.headers().get(header::LINK).is_none());
        assert_eq!(body_json(resp).await, json!({"repositories": []}));
    }

    #[tokio::test]
    async fn names_that_need_escaping_are_escaped() {
        // Not names the registry accepts, but the writer must not rely on it.
        let odd = ["plain", "quo\"te", "back\\slash", "new\nline", "tab\t", "é"];
        let names: NameList = odd.into_iter().collect();
        let resp = paged_response(names, 10, "tags", None, "/v2/x/tags/list");
        assert_eq!(body_json(resp).await, json!({ "tags": odd }));
    }
}
