//! The operator side of the Berth API beside the OCI API: on-demand GC and
//! the health check. The management API (`/api/v1/repositories…`) lives in
//! the `portal` crate.
//!
//! Errors here are `{"error": {"code", "message"}}` with an HTTP status.

use std::net::SocketAddr;

use axum::Extension;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde_json::json;

use super::{AppState, RouteLabel};
use crate::auth::{RequestMeta, Scope};

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
        Ok(r) if r.skipped => api_error(
            StatusCode::CONFLICT,
            "GC_IN_PROGRESS",
            "another berth-server replica is collecting garbage; try again when it is done",
        ),
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
