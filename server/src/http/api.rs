//! The Berth management API (`/api/v1/…`), beside the OCI API. Documented
//! in the README; the portal builds on it.
//!
//! Errors here are `{"error": {"code", "message"}}` with an HTTP status.

use std::net::SocketAddr;

use axum::Extension;
use axum::extract::{ConnectInfo, Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use registry::{RegistryError, RepoName};
use serde_json::json;

use super::{AppState, RouteLabel};
use crate::auth::{Action, RequestMeta, Scope};
use crate::serve::Secure;

fn api_error(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    (
        status,
        axum::Json(json!({ "error": { "code": code, "message": message.to_string() } })),
    )
        .into_response()
}

fn labelled(mut resp: Response) -> Response {
    resp.extensions_mut().insert(RouteLabel("api"));
    resp
}

/// `DELETE /api/v1/repositories/<name>`: deletes every tag, manifest, blob
/// link and upload of the repository; GC reclaims the storage nothing else
/// references. 204 on success, 404 if the repository does not exist.
pub async fn delete_repository(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    secure: Option<Extension<Secure>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let req = RequestMeta {
        headers: &headers,
        peer: peer.map(|p| p.0.0),
        secure: secure.is_some_and(|s| s.0.0),
    };
    let name = match RepoName::parse(&name) {
        Ok(n) => n,
        Err(e) => return labelled(api_error(StatusCode::BAD_REQUEST, "NAME_INVALID", e)),
    };
    let principal = match state
        .auth
        .authorize(&req, Scope::repository(&name, &[Action::Delete]))
        .await
    {
        Ok(p) => p,
        Err(e) => return labelled(e.into_response()),
    };
    let resp = match state.registry.delete_repository(&name).await {
        Ok(()) => {
            tracing::info!(repository = %name, "repository deleted");
            state.audit(&principal, &req, "delete", format!("repository {name}"));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(RegistryError::NameUnknown) => api_error(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            "repository not found",
        ),
        Err(e) => {
            tracing::error!(error = %e, "deleting repository failed");
            api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "internal server error",
            )
        }
    };
    labelled(resp)
}

/// `POST /api/v1/gc`: runs one garbage collection pass now (with the blob
/// store sweep) and answers with what it reclaimed.
pub async fn collect_garbage(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    let req = RequestMeta {
        headers: &headers,
        peer: peer.map(|p| p.0.0),
        secure: false,
    };
    if let Err(e) = state.auth.authorize(&req, Scope::Admin).await {
        return labelled(e.into_response());
    }
    let started = std::time::Instant::now();
    let resp = match state.registry.collect_garbage(true).await {
        Ok(r) => {
            state.metrics.record_gc(&r, started.elapsed().as_secs_f64());
            axum::Json(json!({
                "manifests": r.manifests,
                "links": r.links,
                "repositories": r.repositories,
                "blobs": r.blobs,
                "bytes": r.bytes,
                "uploads": r.uploads,
                "orphans": r.orphans,
            }))
            .into_response()
        }
        Err(e) => {
            state.metrics.gc_failures.inc();
            tracing::error!(error = %e, "garbage collection failed");
            api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "garbage collection failed",
            )
        }
    };
    labelled(resp)
}

/// `GET /healthz`: the process is up and serving.
pub async fn health() -> Response {
    labelled((StatusCode::OK, "ok\n").into_response())
}
