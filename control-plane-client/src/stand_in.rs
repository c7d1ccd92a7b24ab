//! A stand-in node for load tests and benchmarks (many nodes from one
//! process): it speaks the protocol as an agent does (hello, heartbeats,
//! acknowledgements, results, reports) but runs nothing: every command is
//! acknowledged and answered at once with an empty success (a pull sends
//! one progress message first). It records the
//! command ids it received, so a test can check that each node got exactly
//! its own commands, each once.

use std::sync::Mutex;

use crate::proto::{self, agent_message, command, command_result, server_message};
use crate::{Handler, Uplink};

#[derive(Debug, Default)]
pub struct StandIn {
    received: Mutex<Vec<String>>,
}

impl StandIn {
    /// The command ids received, in order (repeats included).
    pub fn received(&self) -> Vec<String> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Handler for StandIn {
    async fn hello(&self) -> proto::Hello {
        proto::Hello {
            agent_version: "stand-in".into(),
            platform: Some(proto::Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: String::new(),
            }),
            hostname: "stand-in".into(),
            desired_generation: 0,
        }
    }

    async fn connected(&self, _welcome: proto::Welcome, _up: Uplink) {}

    async fn message(&self, msg: server_message::Body, up: Uplink) {
        let server_message::Body::Command(c) = msg else {
            return;
        };
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(c.id.clone());
        up.send(agent_message::Body::Ack(proto::CommandAck {
            id: c.id.clone(),
        }))
        .await;
        if let Some(command::Action::Pull(p)) = &c.action {
            // One progress message, as a pull would send, then the result.
            let blob = proto::BlobProgress {
                digest: "sha256:stand-in".into(),
                done: 1,
                total: 1,
                state: "done".into(),
            };
            up.send(agent_message::Body::Progress(proto::CommandProgress {
                id: c.id.clone(),
                blobs: vec![blob],
                message: format!("stand-in pulling {}", p.image),
            }))
            .await;
        }
        let output = match c.action {
            Some(command::Action::Pull(p)) => command_result::Output::Pulled(proto::Pulled {
                image: p.image,
                digest: "sha256:stand-in".into(),
                platform: "linux/amd64".into(),
                layers: 1,
                downloaded: 1,
            }),
            Some(command::Action::ListImages(_)) => {
                command_result::Output::Images(proto::ImageList::default())
            }
            Some(command::Action::ListContainers(_)) => {
                command_result::Output::Containers(proto::ContainerList::default())
            }
            _ => command_result::Output::Removed(proto::Done {
                message: "stand-in".into(),
            }),
        };
        up.send(agent_message::Body::Result(proto::CommandResult {
            id: c.id,
            error: String::new(),
            finished_at_ms: 0,
            output: Some(output),
        }))
        .await;
    }

    async fn report(&self) -> Option<proto::NodeReport> {
        Some(proto::NodeReport::default())
    }
}

/// A stand-in node running on the current runtime: its handler, its link
/// state, the connection task.
#[derive(Debug)]
pub struct StandInNode {
    pub handler: std::sync::Arc<StandIn>,
    pub state: tokio::sync::watch::Receiver<crate::LinkState>,
    pub task: tokio::task::JoinHandle<()>,
}

impl StandInNode {
    /// Waits until the node is connected; `false` after `timeout`.
    pub async fn connected(&mut self, timeout: std::time::Duration) -> Result<(), String> {
        let waited = tokio::time::timeout(timeout, self.state.wait_for(|s| s.connected))
            .await
            .map(|r| r.map(|_| ()));
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("the connection task ended".into()),
            Err(_) => Err(format!(
                "not connected within {timeout:?}: {:?}",
                self.state.borrow().last_error
            )),
        }
    }
}

/// Connects a stand-in node with `cfg` until `stop` turns true.
pub fn spawn(cfg: crate::ClientConfig, stop: tokio::sync::watch::Receiver<bool>) -> StandInNode {
    let handler = std::sync::Arc::new(StandIn::default());
    let (tx, state) = tokio::sync::watch::channel(crate::LinkState::default());
    let task = tokio::spawn(crate::run(
        cfg,
        handler.clone(),
        Uplink::default(),
        tx,
        stop,
    ));
    StandInNode {
        handler,
        state,
        task,
    }
}
