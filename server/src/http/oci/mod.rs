//! The OCI Distribution API (`/v2/…`).
//!
//! Repository names contain slashes, so one catch-all route parses the path
//! from its end (`…/manifests/<ref>`, `…/blobs/uploads/<id>`, …) and
//! dispatches on the route and method. Every handler authorises its scope
//! through [`crate::auth::Authorizer`] before touching the registry.

mod blobs;
mod discovery;
mod drain;
pub mod error;
mod manifests;

use std::net::SocketAddr;

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode, Uri, header};
use registry::RepoName;

use self::error::{Code, OciError, OciResult};
use super::{AppState, RouteLabel};
use crate::auth::{RequestMeta, Scope};
use crate::serve::Secure;

/// Where a `/v2/` path leads.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Catalog,
    Tags { name: &'a str },
    Manifest { name: &'a str, reference: &'a str },
    Blob { name: &'a str, digest: &'a str },
    UploadStart { name: &'a str },
    Upload { name: &'a str, id: &'a str },
    Referrers { name: &'a str, digest: &'a str },
}

impl Route<'_> {
    fn label(&self) -> &'static str {
        match self {
            Route::Catalog => "catalog",
            Route::Tags { .. } => "tags",
            Route::Manifest { .. } => "manifest",
            Route::Blob { .. } => "blob",
            Route::UploadStart { .. } | Route::Upload { .. } => "blob_upload",
            Route::Referrers { .. } => "referrers",
        }
    }
}

/// Parses the part of the path after `/v2/`.
fn parse_route(rest: &str) -> Option<Route<'_>> {
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    // `name/<kind>/<arg>`: split the last two segments off.
    let (head, last) = rest.rsplit_once('/')?;
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags { name });
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Some(Route::UploadStart { name });
    }
    let (name, kind) = head.rsplit_once('/')?;
    match kind {
        "manifests" => Some(Route::Manifest {
            name,
            reference: last,
        }),
        "blobs" => Some(Route::Blob { name, digest: last }),
        "referrers" => Some(Route::Referrers { name, digest: last }),
        "uploads" => {
            let name = name.strip_suffix("/blobs")?;
            Some(Route::Upload { name, id: last })
        }
        _ => None,
    }
}

pub(crate) fn repo_name(name: &str) -> OciResult<RepoName> {
    RepoName::parse(name).map_err(OciError::name_invalid)
}

/// `GET /v2/`: API version check.
pub async fn base(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    secure: Option<Extension<Secure>>,
    headers: HeaderMap,
) -> Response {
    let req = RequestMeta {
        headers: &headers,
        peer: peer.map(|p| p.0.0),
        secure: secure.is_some_and(|s| s.0.0),
    };
    let mut resp = match state.auth.authorize(&req, Scope::Base).await {
        Ok(_) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{}",
        )
            .into_response(),
        Err(e) => e.into_response(),
    };
    resp.extensions_mut().insert(RouteLabel("base"));
    resp
}

/// Every other `/v2/…` request.
pub async fn dispatch(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    secure: Option<Extension<Secure>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let rest = uri.path().strip_prefix("/v2/").unwrap_or_default();
    let Some(route) = parse_route(rest) else {
        let mut resp = OciError::new(
            StatusCode::NOT_FOUND,
            Code::Unsupported,
            "unknown registry API endpoint",
        )
        .into_response();
        resp.extensions_mut().insert(RouteLabel("unknown"));
        return resp;
    };
    let label = route.label();
    let query = uri.query().unwrap_or("");
    let (body, unread) = drain::share(body, &headers);
    let req = RequestMeta {
        headers: &headers,
        peer: peer.map(|p| p.0.0),
        secure: secure.is_some_and(|s| s.0.0),
    };
    let result = handle(&state, route, &method, query, &req, body).await;
    // Answering with part of the body unread would reset the connection
    // under a client still sending, losing the answer.
    unread.drain().await;
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    resp.extensions_mut().insert(RouteLabel(label));
    resp
}

async fn handle(
    state: &AppState,
    route: Route<'_>,
    method: &Method,
    query: &str,
    req: &RequestMeta<'_>,
    body: Body,
) -> OciResult<Response> {
    let q = Query::parse(query);
    match (route, method.clone()) {
        (Route::Catalog, Method::GET) => discovery::catalog(state, req, &q).await,
        (Route::Tags { name }, Method::GET) => discovery::tags(state, req, name, &q).await,
        (Route::Referrers { name, digest }, Method::GET) => {
            discovery::referrers(state, req, name, digest, &q).await
        }
        (Route::Manifest { name, reference }, m @ (Method::GET | Method::HEAD)) => {
            manifests::get(state, req, name, reference, m == Method::HEAD).await
        }
        (Route::Manifest { name, reference }, Method::PUT) => {
            manifests::put(state, req, name, reference, &q, body).await
        }
        (Route::Manifest { name, reference }, Method::DELETE) => {
            manifests::delete(state, req, name, reference).await
        }
        (Route::Blob { name, digest }, m @ (Method::GET | Method::HEAD)) => {
            blobs::get(state, req, name, digest, m == Method::HEAD).await
        }
        (Route::Blob { name, digest }, Method::DELETE) => {
            blobs::delete(state, req, name, digest).await
        }
        (Route::UploadStart { name }, Method::POST) => {
            blobs::start_upload(state, req, name, &q, body).await
        }
        (Route::Upload { name, id }, Method::GET) => {
            blobs::upload_status(state, req, name, id).await
        }
        (Route::Upload { name, id }, Method::PATCH) => {
            blobs::patch_upload(state, req, name, id, body).await
        }
        (Route::Upload { name, id }, Method::PUT) => {
            blobs::put_upload(state, req, name, id, &q, body).await
        }
        (Route::Upload { name, id }, Method::DELETE) => {
            blobs::cancel_upload(state, req, name, id).await
        }
        (_, m) => Err(OciError::unsupported(format!(
            "method {m} is not supported on this endpoint"
        ))),
    }
}

/// Query parameters; repeated keys (`tag=a&tag=b`) are kept in order.
#[derive(Debug, Default)]
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    fn parse(q: &str) -> Self {
        Query {
            pairs: form_urlencoded::parse(q.as_bytes()).into_owned().collect(),
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn all(&self, key: &str) -> impl Iterator<Item = &str> {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn routes() {
        use Route::*;
        let cases = [
            ("_catalog", Some(Catalog)),
            ("a/b/tags/list", Some(Tags { name: "a/b" })),
            (
                "a/manifests/latest",
                Some(Manifest {
                    name: "a",
                    reference: "latest",
                }),
            ),
            (
                "x/manifests/y/manifests/v1",
                Some(Manifest {
                    name: "x/manifests/y",
                    reference: "v1",
                }),
            ),
            (
                "a/b/blobs/sha256:ab",
                Some(Blob {
                    name: "a/b",
                    digest: "sha256:ab",
                }),
            ),
            ("a/blobs/uploads/", Some(UploadStart { name: "a" })),
            ("a/blobs/uploads", Some(UploadStart { name: "a" })),
            (
                "a/b/blobs/uploads/1234",
                Some(Upload {
                    name: "a/b",
                    id: "1234",
                }),
            ),
            (
                "a/referrers/sha256:ab",
                Some(Referrers {
                    name: "a",
                    digest: "sha256:ab",
                }),
            ),
            ("a", None),
            ("a/unknown/x", None),
            ("manifests/x", None),
        ];
        for (path, want) in cases {
            assert_eq!(parse_route(path), want, "{path}");
        }
    }
}
