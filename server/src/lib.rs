//! berth-server as a library: configuration, the HTTP edge and the serve
//! loop. `main.rs` only parses arguments, sets up logging and binds.
//!
//! Data flows one way: HTTP edge ([`http`]) → services ([`registry::Registry`],
//! [`auth::AuthService`]) → storage. Nothing here knows the blob layout or a
//! SQL schema.

pub mod auth;
pub mod config;
pub mod control_stream;
pub mod gc;
pub mod http;
pub mod metrics;
pub mod serve;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ::auth::AuthService;
use registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{Authorizer, BearerAuthorizer, OpenAccess};
use crate::config::Config;
use crate::http::AppState;
use crate::http::token::TokenState;
use crate::metrics::Metrics;

/// Why the server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("opening the stores (data directory {dir}): {source}")]
    Storage {
        dir: std::path::PathBuf,
        source: registry::storage::StorageError,
    },
    #[error("opening the auth store: {0}")]
    Auth(#[from] ::auth::AuthError),
    #[error("opening the control-plane store: {0}")]
    Control(::control::ControlError),
    #[error(
        "refusing to listen on {0}: without authentication berth-server serves loopback addresses only"
    )]
    NotLoopback(std::net::SocketAddr),
    #[error("TLS: {0}")]
    Tls(#[from] serve::TlsError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let context = context.into();
    move |source| ServeError::Io { context, source }
}

/// Everything a running server is made of, built from a configuration.
pub struct App {
    /// Registry, Berth API, token endpoint, metrics.
    pub router: axum::Router,
    /// The node endpoint (node-auth); present when auth is enabled.
    pub node_router: Option<axum::Router>,
    /// Operator actions, served on the admin socket.
    pub admin_router: axum::Router,
    pub registry: Registry,
    pub auth: Option<AuthService>,
    /// The control plane; present when auth is enabled (nodes need it).
    pub control: Option<::control::ControlPlane>,
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

impl App {
    /// Opens the stores (embedded in `cfg.data_dir`, or PostgreSQL per
    /// `storage.metadata_url`) and builds the routers.
    pub async fn build(cfg: &Config) -> Result<App, ServeError> {
        let engine = cfg.metadata_engine()?;
        match &engine {
            registry::storage::MetadataEngine::Embedded { .. } => {
                tracing::info!(data_dir = %cfg.data_dir.display(), "metadata and auth store: SQLite in the data directory");
            }
            // The options' Debug hides the password.
            registry::storage::MetadataEngine::Postgres(options) => {
                tracing::info!(database = ?options, "metadata and auth store: PostgreSQL");
            }
        }
        let blob_engine = cfg.blob_engine()?;
        match &blob_engine {
            registry::storage::BlobEngine::Filesystem => {
                tracing::info!(data_dir = %cfg.data_dir.display(), "blob store: files in the data directory");
            }
            // The options' Debug hides the secret.
            registry::storage::BlobEngine::S3(options) => {
                tracing::info!(bucket = ?options, redirect = cfg.storage.blob_redirect, "blob store: S3");
            }
        }
        let (blobs, meta) = registry::storage::open(&cfg.data_dir, &engine, &blob_engine)
            .await
            .map_err(|source| ServeError::Storage {
                dir: cfg.data_dir.clone(),
                source,
            })?;
        let registry = Registry::new(blobs, meta, cfg.registry_config());
        let metrics = Arc::new(Metrics::new());
        let auth = if cfg.auth.enabled {
            // The auth store goes where the metadata goes: one database for
            // every replica, or the data directory.
            let store = ::auth::open_store(&cfg.data_dir, engine.postgres()).await?;
            Some(AuthService::open(store, cfg.auth_config()).await?)
        } else {
            None
        };
        let authorizer: Arc<dyn Authorizer> = match &auth {
            Some(a) => Arc::new(BearerAuthorizer::new(
                a.clone(),
                cfg.auth.public_url.clone(),
            )),
            None => Arc::new(OpenAccess),
        };
        let state = AppState {
            registry: registry.clone(),
            auth: authorizer,
            metrics: metrics.clone(),
            max_page: cfg.limits.max_page_entries,
            audit: auth.clone(),
            blob_redirect: cfg.blob_redirect(),
        };
        let control = match &auth {
            Some(_) => {
                let store = ::control::open_store(&cfg.data_dir, engine.postgres())
                    .await
                    .map_err(ServeError::Control)?;
                let mut control_cfg = cfg.control_config(replica_name(cfg));
                // One process owns an embedded store: every command and
                // desired state is accepted here and wakes its session at
                // once, so polling would only repeat queries (two per node
                // per poll). A slow poll stays as a safety net.
                if engine.postgres().is_none() {
                    control_cfg.poll_interval = control_cfg
                        .poll_interval
                        .max(std::time::Duration::from_secs(30));
                }
                Some(::control::ControlPlane::new(store, control_cfg))
            }
            None => None,
        };
        let control_router = match (&control, &auth) {
            (Some(c), Some(a)) => Some(crate::control_stream::router(
                crate::control_stream::ControlService {
                    control: c.clone(),
                    auth: a.clone(),
                    metrics: metrics.clone(),
                },
            )),
            _ => None,
        };
        let tokens = auth.clone().map(|auth| TokenState { auth });
        let admin_state = AppState {
            auth: Arc::new(OpenAccess),
            ..state.clone()
        };
        let portal = portal::PortalState::new(registry.clone(), auth.clone())
            .with_public_url(cfg.auth.public_url.as_deref())
            .with_secure_cookies(cfg.tls_enabled())
            .with_control(control.clone());
        Ok(App {
            router: http::router(
                state,
                tokens.clone(),
                portal::router(portal.clone()),
                cfg.limits.max_concurrent_requests,
            ),
            node_router: tokens.map(|t| http::node_router(t, metrics.clone(), control_router)),
            // The node API in operator mode (every account) beside GC.
            admin_router: http::admin_router(admin_state)
                .merge(portal::admin_router(portal.clone())),
            registry,
            auth,
            control,
            metrics,
        })
    }
}

/// This process's name among replicas, in node status: host name and pid.
fn replica_name(cfg: &Config) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "berth-server".into());
    format!("{host}:{}:{}", std::process::id(), cfg.listen.port())
}

/// The sockets a server serves on.
#[derive(Debug)]
pub struct Listeners {
    pub main: TcpListener,
    /// The node endpoint (mTLS); needs auth enabled.
    pub node: Option<TcpListener>,
}

/// Serves `cfg` on `listener` (no node endpoint) until `shutdown`.
pub async fn run(
    cfg: &Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    run_with(
        cfg,
        Listeners {
            main: listener,
            node: None,
        },
        shutdown,
    )
    .await
}

/// The main listener's TLS: configured files, a self-signed pair kept in
/// the data directory, or none (plain HTTP).
fn main_tls(cfg: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, ServeError> {
    if let (Some(cert), Some(key)) = (&cfg.tls.cert_file, &cfg.tls.key_file) {
        let cert =
            std::fs::read_to_string(cert).map_err(io_err(format!("reading {}", cert.display())))?;
        let key =
            std::fs::read_to_string(key).map_err(io_err(format!("reading {}", key.display())))?;
        return Ok(Some(serve::server_config(&cert, &key, None)?));
    }
    if !cfg.tls.self_signed {
        return Ok(None);
    }
    let dir = cfg.data_dir.join("tls");
    let (cert_path, key_path) = (dir.join("self-signed.crt"), dir.join("self-signed.key"));
    if !cert_path.exists() || !key_path.exists() {
        let (cert, key) = AuthService::self_signed_server_certificate(&cfg.tls.names)?;
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        write_private(&key_path, &key)?;
        std::fs::write(&cert_path, cert)
            .map_err(io_err(format!("writing {}", cert_path.display())))?;
        tracing::info!(certificate = %cert_path.display(), "generated a self-signed TLS certificate");
    }
    let cert = std::fs::read_to_string(&cert_path)
        .map_err(io_err(format!("reading {}", cert_path.display())))?;
    let key = std::fs::read_to_string(&key_path)
        .map_err(io_err(format!("reading {}", key_path.display())))?;
    Ok(Some(serve::server_config(&cert, &key, None)?))
}

/// Writes a secret file readable by its owner only.
fn write_private(path: &Path, contents: &str) -> Result<(), ServeError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(format!("writing {}", path.display())))?;
    f.write_all(contents.as_bytes())
        .map_err(io_err(format!("writing {}", path.display())))
}

/// Serves everything until `shutdown` is cancelled, then lets in-flight
/// requests finish for up to `shutdown_timeout_secs`.
pub async fn run_with(
    cfg: &Config,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let local = listeners
        .main
        .local_addr()
        .map_err(io_err("reading the bound address"))?;
    if !cfg.auth.enabled && !local.ip().is_loopback() {
        return Err(ServeError::NotLoopback(local));
    }
    let app = App::build(cfg).await?;
    let tls = main_tls(cfg)?;
    let grace = Duration::from_secs(cfg.shutdown_timeout_secs);
    let mut tasks = tokio::task::JoinSet::new();

    if cfg.gc.enabled {
        tasks.spawn(gc::run(
            app.registry.clone(),
            cfg.gc.clone(),
            app.metrics.clone(),
            shutdown.child_token(),
        ));
    }
    if let Some(auth) = app.auth.clone() {
        let every = Duration::from_millis(cfg.auth.refresh_interval_ms.max(100));
        let stop = shutdown.child_token();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                if let Err(e) = auth.refresh().await {
                    tracing::warn!(error = %e, "reloading revocations and keys failed");
                }
            }
        });
    }
    if let Some(control) = app.control.clone() {
        tasks.spawn(control.housekeeping(shutdown.child_token()));
    }
    if let (Some(listener), Some(router), Some(auth)) =
        (listeners.node, app.node_router.clone(), &app.auth)
    {
        let (cert, key) = auth.node_endpoint_certificate(&cfg.tls.names)?;
        let node_tls = serve::server_config(&cert, &key, Some(auth.node_ca_pem()))?;
        let addr = listener
            .local_addr()
            .map_err(io_err("reading the node endpoint address"))?;
        tracing::info!(address = %addr, "node endpoint listening (mTLS: node tokens, control plane)");
        tasks.spawn(serve::serve_with(
            listener,
            router,
            Some(node_tls),
            shutdown.child_token(),
            grace,
            Some(Duration::from_secs(cfg.nodes.keepalive_secs)),
        ));
    }
    let socket = cfg.admin_socket_path();
    match serve::bind_unix(&socket) {
        Ok(l) => {
            tasks.spawn(serve::serve_unix(
                l,
                app.admin_router.clone(),
                shutdown.child_token(),
            ));
        }
        // The registry still works without it; the operator loses `admin gc`.
        Err(e) => {
            tracing::warn!(socket = %socket.display(), error = %e, "admin socket unavailable")
        }
    }

    tracing::info!(
        address = %local,
        tls = tls.is_some(),
        auth = cfg.auth.enabled,
        data_dir = %cfg.data_dir.display(),
        "berth-server listening"
    );
    // systemd (Type=notify): ready once every listener is bound and the
    // stores are open; then watchdog pings, and STOPPING at the shutdown.
    serve::notify_systemd(&[sd_notify::NotifyState::Ready]);
    tasks.spawn(serve::systemd_watchdog(shutdown.child_token()));
    serve::serve(listeners.main, app.router, tls, shutdown.clone(), grace).await;
    shutdown.cancel();
    // Background tasks stop at the cancellation; the node endpoint drains
    // its connections within the same grace.
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tasks.abort_all();
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
