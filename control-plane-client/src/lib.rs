//! The agent's side of the control plane: one outbound gRPC stream
//! (HTTP/2 over TLS, the node certificate as the client certificate) to the
//! server's node endpoint, kept open for good.
//!
//! - HTTP/2 keepalive pings (also while idle) find a dead path behind NAT
//!   or a proxy that dropped the connection without a FIN; TCP keepalive
//!   backs them up.
//! - After any failure the client reconnects with capped exponential
//!   backoff and full jitter (a fleet that lost the server at once does not
//!   come back at once), reset by a connection that got its welcome.
//! - Heartbeats at the interval the server's welcome names; every
//!   `report_every` heartbeats the handler's report.
//!
//! What the node does with the server's messages is the [`Handler`]'s
//! business (the agent's); this crate knows the protocol and the transport
//! only.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use control_plane_proto as proto;
use proto::control_plane_client::ControlPlaneClient;
use proto::{agent_message, server_message};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Failures of one connection attempt.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("control-plane URL {0:?}: {1}")]
    Url(String, String),
    #[error("connecting: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the server refused the stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("the server closed the stream")]
    Closed,
    #[error("no welcome from the server within {0:?}")]
    NoWelcome(Duration),
}

impl ClientError {
    /// Whether trying again cannot help until the configuration or the
    /// server's records change (revoked node, wrong certificate): the
    /// client keeps trying, but at the backoff's cap.
    pub fn is_refusal(&self) -> bool {
        matches!(self, ClientError::Status(s) if matches!(s.code(),
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated))
    }
}

/// Where and how to connect.
#[derive(Clone)]
pub struct ClientConfig {
    /// The server's node endpoint, `https://host:port`.
    pub url: String,
    /// PEM: the CA that signed the node endpoint's certificate.
    pub ca_pem: String,
    /// PEM: the node's certificate and key.
    pub cert_pem: String,
    pub key_pem: String,
    pub connect_timeout: Duration,
    /// HTTP/2 PING interval, and how long an unanswered one may wait.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("url", &self.url)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("backoff_max", &self.backoff_max)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    pub fn new(url: String, ca_pem: String, cert_pem: String, key_pem: String) -> ClientConfig {
        ClientConfig {
            url,
            ca_pem,
            cert_pem,
            key_pem,
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }

    fn endpoint(&self) -> Result<Endpoint, ClientError> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        Ok(Endpoint::from_shared(self.url.clone())
            .map_err(|e| ClientError::Url(self.url.clone(), e.to_string()))?
            .tls_config(tls)?
            .connect_timeout(self.connect_timeout)
            .http2_keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            .keep_alive_while_idle(true)
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .tcp_nodelay(true))
    }
}

/// Sends messages up the current connection, if there is one. Handlers
/// keep it across reconnects: what must not be lost (results) the agent
/// journals and sends again on the next connection; the rest (progress,
/// acks) is worth nothing once the connection is gone.
#[derive(Clone, Debug, Default)]
pub struct Uplink {
    current: Arc<Mutex<Option<mpsc::Sender<proto::AgentMessage>>>>,
}

impl Uplink {
    /// `false` when no connection took it.
    pub async fn send(&self, body: agent_message::Body) -> bool {
        let tx = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match tx {
            Some(tx) => tx
                .send(proto::AgentMessage { body: Some(body) })
                .await
                .is_ok(),
            None => false,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|t| !t.is_closed())
    }

    fn set(&self, tx: Option<mpsc::Sender<proto::AgentMessage>>) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = tx;
    }
}

/// What the node plugs into the connection.
pub trait Handler: Send + Sync + 'static {
    /// The first message of each connection.
    fn hello(&self) -> impl Future<Output = proto::Hello> + Send;
    /// The server accepted the connection; e.g. send what it has not
    /// confirmed yet (results) and a report.
    fn connected(&self, welcome: proto::Welcome, up: Uplink) -> impl Future<Output = ()> + Send;
    /// One message from the server. Must not block the stream: start long
    /// work (a pull) on a task of its own.
    fn message(&self, msg: server_message::Body, up: Uplink) -> impl Future<Output = ()> + Send;
    /// The periodic report (every `report_every` heartbeats).
    fn report(&self) -> impl Future<Output = Option<proto::NodeReport>> + Send;
}

/// The connection as the agent's metrics and logs see it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LinkState {
    pub connected: bool,
    /// Connections made so far (welcomes received).
    pub connections: u64,
    /// Failed attempts since the last good connection.
    pub failures: u32,
    pub last_error: Option<String>,
}

/// How long a connection waits for the welcome.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);

/// Keeps the connection up until `shutdown` turns true: connect, serve,
/// back off, again. `state` follows it.
pub async fn run<H: Handler>(
    cfg: ClientConfig,
    handler: Arc<H>,
    up: Uplink,
    state: watch::Sender<LinkState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failures: u32 = 0;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let welcomed = tokio::select! {
            r = session(&cfg, handler.clone(), &up, &state) => r,
            _ = shutdown.wait_for(|s| *s) => {
                up.set(None);
                return;
            }
        };
        up.set(None);
        let (welcomed, error) = match welcomed {
            Ok(()) => (true, ClientError::Closed),
            Err((welcomed, e)) => (welcomed, e),
        };
        if welcomed {
            failures = 0;
        }
        failures = failures.saturating_add(1);
        let delay = if error.is_refusal() {
            cfg.backoff_max
        } else {
            full_jitter(cfg.backoff_initial, cfg.backoff_max, failures)
        };
        tracing::warn!(error = %error, retry_in = ?delay, attempt = failures, "control plane: connection ended");
        state.send_modify(|s| {
            s.connected = false;
            s.failures = failures;
            s.last_error = Some(error.to_string());
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// A random delay in `[0, min(max, initial · 2^(attempt-1))]` (AWS's
/// "full jitter").
pub fn full_jitter(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(20);
    let cap = initial.saturating_mul(1u32 << exp).min(max);
    let ms = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::random_range(0..=ms))
}

/// One connection, until it fails. The error comes with whether the
/// server had welcomed it.
async fn session<H: Handler>(
    cfg: &ClientConfig,
    handler: Arc<H>,
    up: &Uplink,
    state: &watch::Sender<LinkState>,
) -> Result<(), (bool, ClientError)> {
    let channel = cfg
        .endpoint()
        .map_err(|e| (false, e))?
        .connect()
        .await
        .map_err(|e| (false, e.into()))?;
    let (tx, rx) = mpsc::channel::<proto::AgentMessage>(256);
    let hello = handler.hello().await;
    tx.send(proto::AgentMessage {
        body: Some(agent_message::Body::Hello(hello)),
    })
    .await
    .map_err(|_| (false, ClientError::Closed))?;
    let mut client = ControlPlaneClient::new(channel)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);
    let mut inbound = client
        .open(ReceiverStream::new(rx))
        .await
        .map_err(|e| (false, e.into()))?
        .into_inner();
    let welcome = match tokio::time::timeout(WELCOME_TIMEOUT, inbound.message()).await {
        Err(_) => return Err((false, ClientError::NoWelcome(WELCOME_TIMEOUT))),
        Ok(Err(e)) => return Err((false, e.into())),
        Ok(Ok(None)) => return Err((false, ClientError::Closed)),
        Ok(Ok(Some(proto::ServerMessage {
            body: Some(server_message::Body::Welcome(w)),
        }))) => w,
        Ok(Ok(Some(_))) => {
            return Err((
                false,
                ClientError::Status(tonic::Status::internal("first message is not a welcome")),
            ));
        }
    };
    tracing::info!(node = %welcome.node_id, name = %welcome.node_name, namespace = %welcome.namespace,
        "control plane: connected");
    up.set(Some(tx.clone()));
    state.send_modify(|s| {
        s.connected = true;
        s.connections += 1;
        s.failures = 0;
        s.last_error = None;
    });
    let heartbeat = Duration::from_secs(u64::from(welcome.heartbeat_secs.max(1)));
    let report_every = u64::from(welcome.report_every.max(1));
    handler.connected(welcome, up.clone()).await;
    let beats = {
        let handler = handler.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut n: u64 = 0;
            loop {
                tokio::time::sleep(heartbeat).await;
                n += 1;
                let sent_at_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
                let beat = agent_message::Body::Heartbeat(proto::Heartbeat { sent_at_ms });
                if tx
                    .send(proto::AgentMessage { body: Some(beat) })
                    .await
                    .is_err()
                {
                    return;
                }
                if n.is_multiple_of(report_every)
                    && let Some(r) = handler.report().await
                {
                    let body = Some(agent_message::Body::Report(r));
                    if tx.send(proto::AgentMessage { body }).await.is_err() {
                        return;
                    }
                }
            }
        })
    };
    drop(tx);
    let ended = loop {
        match inbound.message().await {
            Ok(Some(proto::ServerMessage { body: Some(body) })) => {
                handler.message(body, up.clone()).await;
            }
            Ok(Some(_)) => {}
            Ok(None) => break Ok(()),
            Err(e) => break Err((true, ClientError::from(e))),
        }
    };
    beats.abort();
    ended
}

pub mod stand_in;
