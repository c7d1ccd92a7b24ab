//! The HTTP edge: the router and the layers every request passes through
//! (request id, tracing span, metrics, panic catching, concurrency bound,
//! the `Docker-Distribution-API-Version` header).

pub mod api;
pub mod headers;
pub mod oci;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::middleware;
use axum::routing::{any, get};
use http::HeaderValue;
use registry::Registry;
use tower::ServiceBuilder;
use tower::limit::ConcurrencyLimitLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::auth::Authorizer;
use crate::metrics::{self, Metrics};

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub registry: Registry,
    pub auth: Arc<dyn Authorizer>,
    pub metrics: Arc<Metrics>,
    /// Most entries in one tag-list or catalog page.
    pub max_page: usize,
}

/// Set by handlers on their response: the route kind, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct RouteLabel(pub &'static str);

fn request_span(req: &Request) -> tracing::Span {
    let id = req
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or("-");
    tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        request_id = %id,
    )
}

/// Builds the application with every route and layer.
pub fn router(state: AppState, max_concurrent_requests: usize) -> Router {
    let metrics_state = state.metrics.clone();
    let x_request_id = http::HeaderName::from_static("x-request-id");
    Router::new()
        .route("/v2/", get(oci::base).head(oci::base))
        .route("/v2", get(oci::base).head(oci::base))
        .route("/v2/{*path}", any(oci::dispatch))
        .route(
            "/api/v1/repositories/{*name}",
            axum::routing::delete(api::delete_repository),
        )
        .route("/api/v1/gc", axum::routing::post(api::collect_garbage))
        .route("/healthz", get(api::health))
        .route(
            "/metrics",
            get(metrics::serve).with_state(metrics_state.clone()),
        )
        .with_state(state)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(
                    x_request_id.clone(),
                    MakeRequestUuid,
                ))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(request_span)
                        .on_response(DefaultOnResponse::new().level(Level::DEBUG)),
                )
                .layer(PropagateRequestIdLayer::new(x_request_id))
                .layer(middleware::from_fn_with_state(
                    metrics_state,
                    metrics::track,
                ))
                .layer(CatchPanicLayer::new())
                .layer(SetResponseHeaderLayer::overriding(
                    headers::DOCKER_DISTRIBUTION_API_VERSION,
                    HeaderValue::from_static("registry/2.0"),
                ))
                .layer(ConcurrencyLimitLayer::new(max_concurrent_requests)),
        )
}
