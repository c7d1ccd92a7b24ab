//! Prometheus metrics of berth-server, served at `/metrics`.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

use crate::http::RouteLabel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub method: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
    pub method: &'static str,
}

/// Every metric the server exports. Routes are labelled by kind
/// (`manifest`, `blob`, …), never by repository, to bound cardinality.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabels, Histogram>,
    pub in_flight: Gauge,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    pub upload_duration: Histogram,
    pub gc_runs: Counter,
    pub gc_failures: Counter,
    pub gc_duration: Histogram,
    pub gc_blobs: Counter,
    pub gc_bytes: Counter,
    pub gc_manifests: Counter,
    /// Control-plane streams open on this replica.
    pub nodes_connected: Gauge,
    pub control_messages: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("berth");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        let request_duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 18))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time until the response head is ready, by route and method",
            request_duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "Requests being handled",
            in_flight.clone(),
        );
        let bytes_received = Counter::default();
        registry.register(
            "registry_received_bytes",
            "Blob and manifest bytes received",
            bytes_received.clone(),
        );
        let bytes_sent = Counter::default();
        registry.register(
            "registry_sent_bytes",
            "Blob and manifest bytes sent",
            bytes_sent.clone(),
        );
        let upload_duration = Histogram::new(exponential_buckets(0.001, 2.0, 20));
        registry.register(
            "registry_blob_upload_duration_seconds",
            "Duration of requests that complete a blob upload (monolithic POST, final PUT)",
            upload_duration.clone(),
        );
        let gc_runs = Counter::default();
        registry.register("gc_runs", "Garbage collection passes", gc_runs.clone());
        let gc_failures = Counter::default();
        registry.register(
            "gc_failures",
            "Garbage collection passes that failed",
            gc_failures.clone(),
        );
        let gc_duration = Histogram::new(exponential_buckets(0.001, 2.0, 20));
        registry.register(
            "gc_duration_seconds",
            "Duration of garbage collection passes",
            gc_duration.clone(),
        );
        let gc_blobs = Counter::default();
        registry.register(
            "gc_reclaimed_blobs",
            "Blobs deleted by garbage collection",
            gc_blobs.clone(),
        );
        let gc_bytes = Counter::default();
        registry.register(
            "gc_reclaimed_bytes",
            "Blob bytes reclaimed by garbage collection",
            gc_bytes.clone(),
        );
        let gc_manifests = Counter::default();
        registry.register(
            "gc_reclaimed_manifests",
            "Untagged manifests deleted by garbage collection",
            gc_manifests.clone(),
        );
        let nodes_connected = Gauge::default();
        registry.register(
            "control_nodes_connected",
            "Nodes holding a control-plane stream to this server",
            nodes_connected.clone(),
        );
        let control_messages = Counter::default();
        registry.register(
            "control_messages_received",
            "Messages received from nodes on control-plane streams",
            control_messages.clone(),
        );
        Metrics {
            registry,
            requests,
            request_duration,
            in_flight,
            bytes_received,
            bytes_sent,
            upload_duration,
            gc_runs,
            gc_failures,
            gc_duration,
            gc_blobs,
            gc_bytes,
            gc_manifests,
            nodes_connected,
            control_messages,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    pub fn record_gc(&self, report: &registry::GcReport, seconds: f64) {
        self.gc_runs.inc();
        self.gc_duration.observe(seconds);
        self.gc_blobs.inc_by(report.blobs + report.orphans);
        self.gc_bytes.inc_by(report.bytes);
        self.gc_manifests.inc_by(report.manifests);
    }
}

fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

/// Middleware counting every request by the route label its handler set.
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let method = method_label(req.method());
    let started = Instant::now();
    metrics.in_flight.inc();
    let resp = next.run(req).await;
    metrics.in_flight.dec();
    let route = resp
        .extensions()
        .get::<RouteLabel>()
        .map(|r| r.0)
        .unwrap_or("other");
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: resp.status().as_u16(),
        })
        .inc();
    metrics
        .request_duration
        .get_or_create(&RouteLabels { route, method })
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// `GET /metrics`.
pub async fn serve(State(metrics): State<Arc<Metrics>>) -> Response {
    let mut resp = (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
        .into_response();
    resp.extensions_mut().insert(RouteLabel("metrics"));
    resp
}
