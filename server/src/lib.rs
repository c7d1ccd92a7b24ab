//! berth-server as a library: configuration, the HTTP edge and the serve
//! loop. `main.rs` only parses arguments, sets up logging and binds.
//!
//! Data flows one way: HTTP edge ([`http`]) → registry service
//! ([`registry::Registry`]) → storage. Nothing here knows the blob layout
//! or the SQL schema.

pub mod auth;
pub mod config;
pub mod gc;
pub mod http;
pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{Authorizer, OpenAccess};
use crate::config::Config;
use crate::http::AppState;
use crate::metrics::Metrics;

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("opening the data directory {dir}: {source}")]
    Storage {
        dir: std::path::PathBuf,
        source: registry::storage::StorageError,
    },
    #[error(
        "refusing to listen on {0}: without authentication berth-server serves loopback addresses only"
    )]
    NotLoopback(std::net::SocketAddr),
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

/// Everything a running server is made of, built from a configuration.
pub struct App {
    pub router: axum::Router,
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

impl App {
    /// Opens the embedded store in `cfg.data_dir` and builds the router.
    pub fn build(cfg: &Config) -> Result<App, ServeError> {
        let (blobs, meta) = registry::storage::open_embedded(&cfg.data_dir, cfg.storage.sync)
            .map_err(|source| ServeError::Storage {
                dir: cfg.data_dir.clone(),
                source,
            })?;
        let registry = Registry::new(blobs, meta, cfg.registry_config());
        let metrics = Arc::new(Metrics::new());
        let auth: Arc<dyn Authorizer> = Arc::new(OpenAccess);
        let state = AppState {
            registry: registry.clone(),
            auth,
            metrics: metrics.clone(),
            max_page: cfg.limits.max_page_entries,
        };
        Ok(App {
            router: http::router(state, cfg.limits.max_concurrent_requests),
            registry,
            metrics,
        })
    }
}

/// Serves `cfg` on `listener` until `shutdown` is cancelled, then lets
/// in-flight requests finish for up to `shutdown_timeout_secs`.
pub async fn run(
    cfg: &Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let local = listener.local_addr()?;
    if !local.ip().is_loopback() {
        return Err(ServeError::NotLoopback(local));
    }
    let app = App::build(cfg)?;
    let gc_task = cfg.gc.enabled.then(|| {
        tokio::spawn(gc::run(
            app.registry.clone(),
            cfg.gc.clone(),
            app.metrics.clone(),
            shutdown.child_token(),
        ))
    });
    tracing::info!(address = %local, data_dir = %cfg.data_dir.display(), "berth-server listening");
    let server = axum::serve(listener, app.router)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    let mut server = tokio::spawn(server);
    let result = tokio::select! {
        r = &mut server => r,
        _ = shutdown.cancelled() => {
            tracing::info!("shutting down: waiting for in-flight requests");
            match tokio::time::timeout(Duration::from_secs(cfg.shutdown_timeout_secs), &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!("in-flight requests did not finish in time; closing them");
                    server.abort();
                    Ok(Ok(()))
                }
            }
        }
    };
    if let Some(t) = gc_task {
        t.abort();
    }
    match result {
        Ok(r) => r.map_err(ServeError::Io),
        Err(join) => Err(ServeError::Io(std::io::Error::other(join))),
    }
}
