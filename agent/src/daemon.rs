//! `berth-agent daemon`: the Prometheus endpoint on `metrics_listen`, the
//! supervisor of the defined containers (see `agent::supervisor`), and a
//! graceful shutdown on SIGTERM or Ctrl-C that leaves the containers
//! running.

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
    let metrics = agent::supervisor::Metrics::default();
    metrics.register(&mut registry);
    let control_connected = Gauge::<i64>::default();
    registry.register(
        "berth_agent_control_connected",
        "1 while the control-plane connection is up",
        control_connected.clone(),
    );
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
    // One signal, two listeners: the HTTP server and the supervisor.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown().await;
        let _ = stop_tx.send(true);
    });
    let supervisor = tokio::spawn(agent::supervisor::run(
        cfg.clone(),
        metrics,
        stop_rx.clone(),
    ));
    let gc = tokio::spawn(gc_loop(cfg.clone(), stop_rx.clone()));
    let control = if cfg.control.enabled {
        Some(tokio::spawn(control_loop(
            cfg.clone(),
            control_connected,
            stop_rx.clone(),
        )))
    } else {
        tracing::info!("control plane disabled (control.enabled = false)");
        None
    };
    tracing::info!(addr = %listener.local_addr()?, "berth-agent daemon running");
    // Ready for systemd once the endpoint is bound and the supervisor runs
    // (it reaches containerd on its own, retrying while containerd is down).
    systemd_notify(&[sd_notify::NotifyState::Ready]);
    tokio::spawn(watchdog(stop_rx.clone()));
    let mut http_stop = stop_rx;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = http_stop.wait_for(|s| *s).await;
            systemd_notify(&[sd_notify::NotifyState::Stopping]);
        })
        .await?;
    supervisor.await.context("the supervisor task")?;
    gc.await.context("the image GC task")?;
    if let Some(c) = control {
        c.await.context("the control-plane task")?;
    }
    tracing::info!("berth-agent daemon stopped");
    Ok(())
}

/// A GC pass every `gc.interval` (the first one after an interval, so a
/// restarting daemon does not race the supervisor's first starts). A
/// failed pass is logged and retried at the next tick.
/// Keeps the control-plane connection (see `agent::remote`) until the
/// shutdown; the containers and the desired state do not depend on it.
async fn control_loop(
    cfg: AgentConfig,
    connected: Gauge<i64>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let read = |p: &std::path::Path| std::fs::read_to_string(p);
    let (ca, cert, key) = match (
        read(&cfg.node.ca_file),
        read(&cfg.node.cert_file),
        read(&cfg.node.key_file),
    ) {
        (Ok(ca), Ok(cert), Ok(key)) => (ca, cert, key),
        (a, b, c) => {
            let e = a.err().or(b.err()).or(c.err());
            tracing::error!(error = ?e, "control plane: reading the node certificate, key and CA; not connecting");
            return;
        }
    };
    agent::install_crypto_provider();
    let mut client =
        control_plane_client::ClientConfig::new(cfg.control_url().to_owned(), ca, cert, key);
    client.keepalive_interval = std::time::Duration::from_secs(cfg.control.keepalive_secs);
    client.backoff_max = std::time::Duration::from_secs(cfg.control.backoff_max_secs);
    let handler = Arc::new(agent::remote::RemoteHandler(agent::remote::Remote::new(
        cfg.clone(),
    )));
    let (state_tx, mut state_rx) =
        tokio::sync::watch::channel(control_plane_client::LinkState::default());
    tokio::spawn(async move {
        while state_rx.changed().await.is_ok() {
            connected.set(i64::from(state_rx.borrow().connected));
        }
    });
    control_plane_client::run(
        client,
        handler,
        control_plane_client::Uplink::default(),
        state_tx,
        stop,
    )
    .await;
}

async fn gc_loop(cfg: AgentConfig, mut stop: tokio::sync::watch::Receiver<bool>) {
    let (policy, interval) = match (
        agent::gc::policy_from_config(&cfg),
        agent::gc::parse_age(&cfg.gc.interval),
    ) {
        (Ok(p), Ok(i)) if !i.is_zero() => (p, i),
        _ => {
            tracing::error!("invalid gc settings: image GC disabled");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let pass = async {
            let rt = agent::runtime::Runtime::new(&cfg).await?;
            agent::gc::prune(&rt, &cfg, &policy).await
        };
        match pass.await {
            Ok(removed) if !removed.is_empty() => {
                tracing::info!(count = removed.len(), "image GC pass")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "image GC pass failed"),
        }
    }
}

/// One message to systemd (`Type=notify`); nothing without `NOTIFY_SOCKET`.
/// A failure is logged, never fatal: the daemon works without systemd.
fn systemd_notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "notifying systemd");
    }
}

/// `WATCHDOG=1` every half `WATCHDOG_USEC` (systemd's `WatchdogSec=`) until
/// the shutdown. The pings come from a task of the daemon's own runtime, so
/// a runtime that stops scheduling tasks stops them, and systemd restarts
/// the agent (the containers keep running: the shims own them).
async fn watchdog(mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(timeout) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (timeout / 2).max(std::time::Duration::from_millis(10));
    loop {
        systemd_notify(&[sd_notify::NotifyState::Watchdog]);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
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
