//! The HTTP edge: the router and the layers every request passes through
//! (request id, tracing span, metrics, panic catching, concurrency bound,
//! the `Docker-Distribution-API-Version` header).

pub mod api;
pub mod headers;
pub mod oci;
pub mod token;

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

use crate::auth::{Authorizer, Principal, RequestMeta};
use crate::metrics::{self, Metrics};

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub registry: Registry,
    pub auth: Arc<dyn Authorizer>,
    pub metrics: Arc<Metrics>,
    /// Most entries in one tag-list or catalog page.
    pub max_page: usize,
    /// Where pushes and deletes are audited (when accounts are on).
    pub audit: Option<auth::AuthService>,
    /// Blob GETs answer 307 to a presigned URL valid this long, when set
    /// (`storage.blob_redirect`).
    pub blob_redirect: Option<std::time::Duration>,
}

impl AppState {
    /// Records a push or delete in the audit log, off the request path.
    pub fn audit(&self, who: &Principal, req: &RequestMeta<'_>, action: &str, target: String) {
        let Some(audit) = self.audit.clone() else {
            return;
        };
        let event = auth::model::AuditEvent {
            at: auth::service::now_millis(),
            account_id: who.account_id,
            actor: who.subject.clone(),
            action: action.to_owned(),
            target: Some(target),
            source: req.source(),
            outcome: "ok".into(),
            detail: None,
        };
        tokio::spawn(async move { audit.audit(event).await });
    }
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

/// Builds the application with every route and layer; `tokens` adds the
/// token endpoint (when accounts are on); `portal` brings the portal pages
/// and the management API (`/api/v1/…` but GC).
pub fn router(
    state: AppState,
    tokens: Option<token::TokenState>,
    portal: Router,
    max_concurrent_requests: usize,
) -> Router {
    let metrics_state = state.metrics.clone();
    let mut app = Router::new();
    if let Some(t) = tokens {
        app = app.route(
            "/auth/token",
            get(token::get_token).post(token::post_token).with_state(t),
        );
    }
    let app = app
        .route("/v2/", get(oci::base).head(oci::base))
        .route("/v2", get(oci::base).head(oci::base))
        .route("/v2/{*path}", any(oci::dispatch))
        .route("/api/v1/gc", axum::routing::post(api::collect_garbage))
        .route("/healthz", get(api::health))
        .route(
            "/metrics",
            get(metrics::serve).with_state(metrics_state.clone()),
        )
        .with_state(state)
        .merge(portal.layer(middleware::map_response(label_portal)));
    layered(app, metrics_state, max_concurrent_requests)
}

/// Labels the portal's answers for metrics: `api` for the management API,
/// `portal` for pages and assets.
async fn label_portal(
    req_path: http::Uri,
    mut resp: axum::response::Response,
) -> axum::response::Response {
    let label = if req_path.path().starts_with("/api/") {
        "api"
    } else {
        "portal"
    };
    resp.extensions_mut().insert(RouteLabel(label));
    resp
}

/// The node endpoint: node-auth tokens for a client certificate.
/// The node endpoint: node-auth tokens for a client certificate, and the
/// control plane's gRPC stream (`control`), which stays outside the request
/// layers: one stream per node lasts for days, so it must not count
/// against the bound on concurrent requests.
pub fn node_router(
    tokens: token::TokenState,
    metrics: Arc<Metrics>,
    control: Option<Router>,
) -> Router {
    let app = Router::new()
        .route("/auth/node-token", get(token::node_token))
        .route("/healthz", get(api::health))
        .with_state(tokens);
    let app = layered(app, metrics, 1024);
    match control {
        Some(c) => app.merge(c),
        None => app,
    }
}

/// Operator actions on the admin socket (no authentication: the socket's
/// permissions are the access control).
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/gc", axum::routing::post(api::collect_garbage))
        .route("/healthz", get(api::health))
        .with_state(state)
}

/// The layers every request passes through.
fn layered(app: Router, metrics_state: Arc<Metrics>, max_concurrent_requests: usize) -> Router {
    let x_request_id = http::HeaderName::from_static("x-request-id");
    app.layer(
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
