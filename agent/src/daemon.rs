//! `berth-agent daemon`: for now the skeleton every later part hangs on:
//! the Prometheus endpoint on `metrics_listen` and a graceful shutdown on
//! SIGTERM or Ctrl-C.

use std::sync::Arc;

use agent::config::AgentConfig;
use anyhow::Context;
use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let up = Gauge::<i64>::default();
    registry.register("berth_agent_up", "1 while the agent runs", up.clone());
    up.set(1);
    let registry = Arc::new(registry);
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut out = String::new();
                    match prometheus_client::encoding::text::encode(&mut out, &registry) {
                        Ok(()) => (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            out,
                        )
                            .into_response(),
                        Err(_) => (
                            [(axum::http::header::CONTENT_TYPE, "text/plain")],
                            String::from("encoding failed"),
                        )
                            .into_response(),
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(cfg.metrics_listen)
        .await
        .with_context(|| format!("binding the metrics endpoint {}", cfg.metrics_listen))?;
    tracing::info!(addr = %listener.local_addr()?, "berth-agent daemon running");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await?;
    tracing::info!("berth-agent daemon stopped");
    Ok(())
}

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
