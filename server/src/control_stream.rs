//! The control plane's edge: the `ControlPlane/Open` gRPC stream on the
//! node endpoint. The node is whoever TLS verified the client certificate
//! of, checked against the auth store as for node-auth tokens; the stream
//! then belongs to [`control::ControlPlane`] for that node only.
//!
//! The stream ends when the agent closes it, when the node connects again
//! (the newer connection wins), or within about a second of the node being
//! revoked (auth's revocation list, refreshed every second); a re-enrolled
//! node's old certificate is caught by the full check every minute.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ::auth::AuthService;
use control::{ControlPlane, NodeRef};
use control_plane_proto as proto;
use futures::Stream;
use futures::StreamExt as _;
use proto::agent_message;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::Metrics;
use crate::serve::PeerCertificate;

/// How long a new stream may take to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a stream checks the in-memory revocation list.
const REVOKED_CHECK: Duration = Duration::from_secs(1);
/// How often a stream checks its certificate against the store (a newer
/// enrolment supersedes it).
const FULL_CHECK: Duration = Duration::from_secs(60);

/// The gRPC service.
#[derive(Clone)]
pub struct ControlService {
    pub control: ControlPlane,
    pub auth: AuthService,
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for ControlService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlService").finish_non_exhaustive()
    }
}

/// The router serving it, to merge into the node endpoint's.
pub fn router(svc: ControlService) -> axum::Router {
    tonic::service::Routes::new(
        proto::control_plane_server::ControlPlaneServer::new(svc)
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20),
    )
    .into_axum_router()
}

type OutStream = Pin<Box<dyn Stream<Item = Result<proto::ServerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl proto::control_plane_server::ControlPlane for ControlService {
    type OpenStream = OutStream;

    async fn open(
        &self,
        req: Request<Streaming<proto::AgentMessage>>,
    ) -> Result<Response<OutStream>, Status> {
        let cert = req
            .extensions()
            .get::<PeerCertificate>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("a node client certificate is required"))?;
        let identity = self.auth.node_identity(&cert.0).await.map_err(|e| {
            tracing::info!(error = %e, "control plane: node refused");
            Status::permission_denied("node certificate not accepted")
        })?;
        let node_id = identity
            .node_id
            .clone()
            .ok_or_else(|| Status::permission_denied("not a node"))?;
        let name = match self.auth.node(&node_id).await {
            Ok(Some(n)) => n.name,
            Ok(None) => return Err(Status::permission_denied("unknown node")),
            Err(e) => {
                tracing::error!(error = %e, "control plane: reading the node");
                return Err(Status::unavailable("try again"));
            }
        };
        let node = NodeRef {
            node_id: node_id.clone(),
            node_name: name,
            account_id: identity.account_id,
            namespace: identity.namespace.clone(),
        };
        let mut inbound = req.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(proto::AgentMessage {
                body: Some(agent_message::Body::Hello(h)),
            }))) => h,
            Ok(Ok(_)) => return Err(Status::invalid_argument("the first message must be Hello")),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Status::deadline_exceeded("no Hello")),
        };
        let (mut session, rx) = self.control.attach(node, hello).await.map_err(|e| {
            tracing::error!(error = %e, "control plane: attaching a node");
            Status::unavailable("try again")
        })?;
        self.metrics.nodes_connected.inc();
        let (auth, metrics) = (self.auth.clone(), self.metrics.clone());
        let span = tracing::info_span!("node", node = %node_id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let closed = session.closed();
                let mut revoked = tokio::time::interval(REVOKED_CHECK);
                let mut full = tokio::time::interval(FULL_CHECK);
                full.tick().await;
                loop {
                    tokio::select! {
                        _ = closed.cancelled() => break,
                        msg = inbound.message() => match msg {
                            Ok(Some(m)) => {
                                metrics.control_messages.inc();
                                if let Err(e) = session.receive(m).await {
                                    tracing::warn!(error = %e, "handling a node message");
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                tracing::debug!(error = %e, "node stream ended");
                                break;
                            }
                        },
                        _ = revoked.tick() => if auth.node_revoked(&session.node().node_id) {
                            tracing::info!("node revoked: closing its control-plane stream");
                            break;
                        },
                        _ = full.tick() => if auth.node_identity(&cert.0).await.is_err() {
                            tracing::info!("node certificate no longer accepted: closing its stream");
                            break;
                        },
                    }
                }
                session.detach().await;
                metrics.nodes_connected.dec();
            },
            span,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(Ok))))
    }
}
