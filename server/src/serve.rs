//! The accept loop: plain TCP or TLS (rustls, optionally verifying client
//! certificates), HTTP/1 and HTTP/2, graceful shutdown. Every request gets
//! the peer address, whether it came over TLS, and the verified client
//! certificate (node endpoint) as request extensions.
//!
//! Written over hyper-util rather than `axum::serve` because axum's loop
//! cannot do TLS or hand the client certificate to handlers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The verified leaf certificate (DER) a client presented over mTLS.
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub Arc<Vec<u8>>);

/// Whether a request arrived over TLS.
#[derive(Debug, Clone, Copy)]
pub struct Secure(pub bool);

/// TLS set-up failures.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading certificate or key: {0}")]
    Pem(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs_and_key(
    cert_pem: &str,
    key_pem: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    Ok((certs, key))
}

/// A TLS server configuration; with `client_ca_pem`, clients must present
/// a certificate chaining to it.
pub fn server_config(
    cert_pem: &str,
    key_pem: &str,
    client_ca_pem: Option<&str>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let (certs, key) = certs_and_key(cert_pem, key_pem)?;
    let builder =
        ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match client_ca_pem {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots
                    .add(c.map_err(|e| TlsError::Pem(e.to_string()))?)
                    .map_err(|e| TlsError::Verifier(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown`, then waits up to
/// `grace` for open connections to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<ServerConfig>>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    serve_with(listener, router, tls, shutdown, grace, None).await
}

/// [`serve`], with HTTP/2 keepalive PINGs every `keepalive` (the node
/// endpoint: a control-plane stream whose agent vanished behind NAT is
/// found and closed instead of held for good).
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<ServerConfig>>,
    shutdown: CancellationToken,
    grace: Duration,
    keepalive: Option<Duration>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            match tls {
                None => {
                    serve_connection(
                        TokioIo::new(tcp),
                        router,
                        peer,
                        None,
                        false,
                        watcher,
                        keepalive,
                    )
                    .await
                }
                Some(cfg) => {
                    let accepted = tokio::time::timeout(
                        HANDSHAKE_TIMEOUT,
                        tokio_rustls::TlsAcceptor::from(cfg).accept(tcp),
                    )
                    .await;
                    let stream = match accepted {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| PeerCertificate(Arc::new(c.to_vec())));
                    serve_connection(
                        TokioIo::new(stream),
                        router,
                        peer,
                        cert,
                        true,
                        watcher,
                        keepalive,
                    )
                    .await;
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period; closing them");
    }
}

async fn serve_connection<I>(
    io: TokioIo<I>,
    router: Router,
    peer: SocketAddr,
    cert: Option<PeerCertificate>,
    secure: bool,
    watcher: hyper_util::server::graceful::Watcher,
    keepalive: Option<Duration>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(Secure(secure));
            if let Some(c) = &cert {
                req.extensions_mut().insert(c.clone());
            }
            router.clone().oneshot(req.map(axum::body::Body::new))
        });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if let Some(every) = keepalive {
        builder
            .http2()
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Some(every))
            .keep_alive_timeout(every.min(Duration::from_secs(20)));
    }
    let conn = builder.serve_connection_with_upgrades(io, service);
    if let Err(e) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Binds the operator's Unix socket, owner-only: whoever can open it may
/// run operator actions.
pub fn bind_unix(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt as _;
    // A socket left by a previous run would make bind fail.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves `router` on a Unix socket until `shutdown`.
pub async fn serve_unix(
    listener: tokio::net::UnixListener,
    router: Router,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let router = router.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    router.clone().oneshot(req.map(axum::body::Body::new))
                });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

/// One message to systemd (`Type=notify` units); nothing without
/// `NOTIFY_SOCKET`. A failure is logged, never fatal: the server works
/// without systemd.
pub fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "notifying systemd");
    }
}

/// `WATCHDOG=1` every half `WATCHDOG_USEC` (the unit's `WatchdogSec=`)
/// while the server runs, then `STOPPING=1` when `shutdown` is cancelled.
/// The pings come from a task of the server's own runtime: a runtime that
/// no longer schedules tasks stops them, and systemd restarts the server.
pub async fn systemd_watchdog(shutdown: CancellationToken) {
    let every = sd_notify::watchdog_enabled().map(|t| (t / 2).max(Duration::from_millis(10)));
    loop {
        if every.is_some() {
            notify_systemd(&[sd_notify::NotifyState::Watchdog]);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every.unwrap_or(Duration::MAX)) => {}
        }
    }
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
}
