//! The server side of the control plane, below the edge: which nodes are
//! connected (to this replica, and through the store to any), the commands
//! sent to them and where each one is, the desired state of each node.
//!
//! The edge (berth-server's gRPC handler) authenticates a node by its
//! client certificate and hands this crate a [`NodeRef`]; nothing here
//! trusts a node id a message carries. Commands and desired state live in
//! the [`store::ControlStore`] before anything is sent, so a command
//! accepted by one replica reaches the node through whichever replica holds
//! its connection (that replica's session polls the store; on the embedded
//! default the submitting call wakes the session at once).

pub mod error;
pub mod model;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use control_plane_proto as proto;
use parking_lot::Mutex;
use proto::{agent_message, server_message};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

pub use crate::error::{ControlError, Result};
pub use crate::model::{
    CommandRecord, CommandState, CommandUpdate, DesiredRecord, Millis, NodeRef, NodeStatus,
    now_millis,
};
use crate::store::ControlStore;

/// Opens the control store where the other stores are: PostgreSQL when
/// replicas share one, else `control.sqlite` in the data directory.
pub async fn open_store(
    data_dir: &std::path::Path,
    postgres: Option<&pg_pool::ConnectOptions>,
) -> Result<Arc<dyn ControlStore>> {
    Ok(match postgres {
        Some(options) => Arc::new(store::postgres::PgControlStore::connect(options).await?),
        None => Arc::new(store::sqlite::SqliteControlStore::open(data_dir)?),
    })
}

/// Tunables of the control plane.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// This replica's name in node status (which replica holds a node).
    pub replica: String,
    /// How often agents send a heartbeat.
    pub heartbeat: Duration,
    /// Every this many heartbeats an agent sends a full report.
    pub report_every: u32,
    /// How long an undelivered command waits for its node.
    pub command_ttl: Duration,
    /// How often a session looks in the store for commands another replica
    /// accepted (commands accepted here wake it at once).
    pub poll_interval: Duration,
    /// A node not heard from for this long counts as offline.
    pub offline_after: Duration,
    /// Outgoing messages buffered per connection.
    pub queue: usize,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            replica: uuid::Uuid::new_v4().to_string(),
            heartbeat: Duration::from_secs(15),
            report_every: 4,
            command_ttl: Duration::from_secs(24 * 3600),
            poll_interval: Duration::from_secs(1),
            offline_after: Duration::from_secs(45),
            queue: 64,
        }
    }
}

/// The control plane service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn ControlStore>,
    cfg: ControlConfig,
    /// The sessions this replica holds, by node id.
    sessions: Mutex<HashMap<String, SessionEntry>>,
    next_session: AtomicU64,
}

#[derive(Debug)]
struct SessionEntry {
    id: u64,
    wake: Arc<Notify>,
    close: CancellationToken,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl ControlPlane {
    pub fn new(store: Arc<dyn ControlStore>, cfg: ControlConfig) -> ControlPlane {
        ControlPlane {
            inner: Arc::new(Inner {
                store,
                cfg,
                sessions: Mutex::new(HashMap::new()),
                next_session: AtomicU64::new(1),
            }),
        }
    }

    pub fn config(&self) -> &ControlConfig {
        &self.inner.cfg
    }

    /// Nodes connected to this replica.
    pub fn connected_here(&self) -> usize {
        self.inner.sessions.lock().len()
    }

    /// Starts a node's session after its Hello: records it as online here,
    /// closes an older session of the same node (a reconnect the server
    /// has not noticed the end of), and starts sending: the welcome, the
    /// desired state if the agent's generation differs, then every open
    /// command. The receiver is the stream to the agent.
    pub async fn attach(
        &self,
        node: NodeRef,
        hello: proto::Hello,
    ) -> Result<(Session, mpsc::Receiver<proto::ServerMessage>)> {
        let now = now_millis();
        let platform = hello.platform.clone().unwrap_or_default();
        let platform = if platform.variant.is_empty() {
            format!("{}/{}", platform.os, platform.architecture)
        } else {
            format!(
                "{}/{}/{}",
                platform.os, platform.architecture, platform.variant
            )
        };
        let status = NodeStatus {
            node_id: node.node_id.clone(),
            account_id: node.account_id,
            agent_version: bounded(&hello.agent_version, 64),
            platform: bounded(&platform, 64),
            hostname: bounded(&hello.hostname, 255),
            connected_at: now,
            last_seen: now,
            replica: Some(self.inner.cfg.replica.clone()),
            report: None,
            report_at: None,
        };
        self.inner.store.node_connected(&status).await?;
        let id = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Notify::new());
        let close = CancellationToken::new();
        let replaced = self.inner.sessions.lock().insert(
            node.node_id.clone(),
            SessionEntry {
                id,
                wake: wake.clone(),
                close: close.clone(),
            },
        );
        if let Some(old) = replaced {
            old.close.cancel();
        }
        let (tx, rx) = mpsc::channel(self.inner.cfg.queue);
        tokio::spawn(pump(
            self.clone(),
            node.clone(),
            tx.clone(),
            wake,
            close.clone(),
            hello.desired_generation,
        ));
        tracing::info!(node = %node.node_id, name = %node.node_name, agent = %status.agent_version,
            platform = %status.platform, "node connected");
        Ok((
            Session {
                plane: self.clone(),
                node,
                id,
                tx,
                close,
                last_seen_written: now,
            },
            rx,
        ))
    }

    fn wake(&self, node_id: &str) {
        if let Some(s) = self.inner.sessions.lock().get(node_id) {
            s.wake.notify_one();
        }
    }

    /// Closes the node's session on this replica (revoked, say).
    pub fn disconnect(&self, node_id: &str) -> bool {
        match self.inner.sessions.lock().get(node_id) {
            Some(s) => {
                s.close.cancel();
                true
            }
            None => false,
        }
    }

    /// Queues a command for a node; it is sent at once if the node is
    /// connected (here, or to another replica at its next poll), else when
    /// it connects, until `command_ttl` has passed.
    pub async fn submit(
        &self,
        node_id: &str,
        account_id: i64,
        action: proto::command::Action,
        actor: &str,
    ) -> Result<CommandRecord> {
        validate_action(&action)?;
        let now = now_millis();
        let record = CommandRecord {
            id: uuid::Uuid::new_v4().to_string(),
            node_id: node_id.to_owned(),
            account_id,
            actor: actor.to_owned(),
            kind: action.kind().to_owned(),
            action,
            state: CommandState::Queued,
            created_at: now,
            updated_at: now,
            expires_at: now.saturating_add(ms(self.inner.cfg.command_ttl)),
            progress: None,
            result: None,
        };
        self.inner.store.insert_command(&record).await?;
        tracing::info!(node = %node_id, command = %record.id, kind = %record.kind, actor, "command queued");
        self.wake(node_id);
        Ok(record)
    }

    pub async fn command(&self, id: &str) -> Result<Option<CommandRecord>> {
        self.inner.store.command(id).await
    }

    /// A node's newest commands first.
    pub async fn commands(&self, node_id: &str, limit: u32) -> Result<Vec<CommandRecord>> {
        self.inner.store.commands(node_id, limit.min(1000)).await
    }

    /// Replaces what the node should run; the new generation. Containers
    /// of a desired state are supervised by the agent: an empty execution
    /// type means `service`.
    pub async fn set_desired(
        &self,
        node_id: &str,
        account_id: i64,
        mut containers: Vec<proto::ContainerSpec>,
        actor: &str,
    ) -> Result<u64> {
        let mut names = HashSet::new();
        for c in &mut containers {
            if c.exec_type.is_empty() {
                c.exec_type = "service".into();
            }
            validate_spec(c)?;
            if !names.insert(c.name.clone()) {
                return Err(ControlError::Invalid(format!(
                    "container {} appears twice",
                    c.name
                )));
            }
        }
        let json =
            serde_json::to_string(&containers).map_err(|e| ControlError::Invalid(e.to_string()))?;
        let generation = self
            .inner
            .store
            .set_desired(node_id, account_id, &json, actor, now_millis())
            .await?;
        tracing::info!(node = %node_id, generation, containers = containers.len(), actor, "desired state set");
        self.wake(node_id);
        Ok(generation)
    }

    pub async fn desired(&self, node_id: &str) -> Result<Option<DesiredRecord>> {
        self.inner.store.desired(node_id).await
    }

    pub async fn status(&self, node_id: &str) -> Result<Option<NodeStatus>> {
        self.inner.store.node_status(node_id).await
    }

    /// Every node that ever connected, of one account or all.
    pub async fn statuses(&self, account_id: Option<i64>) -> Result<Vec<NodeStatus>> {
        self.inner.store.node_statuses(account_id).await
    }

    /// Whether a status counts as online now.
    pub fn online(&self, status: &NodeStatus) -> bool {
        status.online(now_millis(), ms(self.inner.cfg.offline_after))
    }

    /// Expires undelivered commands now and then, until `shutdown`.
    pub async fn housekeeping(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
            match self.inner.store.expire_commands(now_millis()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(count = n, "undelivered commands expired"),
                Err(e) => tracing::warn!(error = %e, "expiring commands"),
            }
        }
    }
}

fn bounded(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// What the server checks before storing a command: what it needs to be
/// meaningful. The agent checks the rest (reference syntax, settings) and
/// answers with an error result.
pub fn validate_action(action: &proto::command::Action) -> Result<()> {
    use proto::command::Action;
    let need = |v: &str, what: &str| {
        if v.trim().is_empty() {
            Err(ControlError::Invalid(format!("{what} is required")))
        } else if v.len() > 512 {
            Err(ControlError::Invalid(format!("{what} is too long")))
        } else {
            Ok(())
        }
    };
    match action {
        Action::Pull(p) => need(&p.image, "image"),
        Action::Run(r) => match &r.container {
            Some(c) => validate_spec(c),
            None => Err(ControlError::Invalid("container is required".into())),
        },
        Action::Stop(s) => need(&s.name, "name"),
        Action::Remove(r) => need(&r.name, "name"),
        Action::DeleteImage(d) => need(&d.image, "image"),
        Action::Logs(l) => need(&l.name, "name"),
        Action::ListImages(_) | Action::ListContainers(_) | Action::TestRegistry(_) => Ok(()),
    }
}

fn validate_spec(c: &proto::ContainerSpec) -> Result<()> {
    if c.name.is_empty()
        || c.name.len() > 128
        || !c
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(ControlError::Invalid(format!(
            "container name {:?}: 1 to 128 letters, digits, '-', '_' or '.'",
            c.name
        )));
    }
    if c.image.trim().is_empty() {
        return Err(ControlError::Invalid(format!(
            "container {}: image is required",
            c.name
        )));
    }
    match c.exec_type.as_str() {
        "" | "service" | "on-demand" => Ok(()),
        "recurring" if !c.schedule.is_empty() => Ok(()),
        "recurring" => Err(ControlError::Invalid(format!(
            "container {}: a recurring container needs a schedule",
            c.name
        ))),
        other => Err(ControlError::Invalid(format!(
            "container {}: execution type {other:?}: expected service, recurring or on-demand",
            c.name
        ))),
    }
}

/// One node's connection, as the edge drives it: feed it what the agent
/// sends; drop or [`Session::detach`] it when the stream ends.
#[derive(Debug)]
pub struct Session {
    plane: ControlPlane,
    node: NodeRef,
    id: u64,
    tx: mpsc::Sender<proto::ServerMessage>,
    close: CancellationToken,
    last_seen_written: Millis,
}

impl Session {
    pub fn node(&self) -> &NodeRef {
        &self.node
    }

    /// Cancelled when the session must end: a newer connection of the
    /// same node, or [`ControlPlane::disconnect`].
    pub fn closed(&self) -> CancellationToken {
        self.close.clone()
    }

    /// Handles one message from the agent.
    pub async fn receive(&mut self, msg: proto::AgentMessage) -> Result<()> {
        let store = &self.plane.inner.store;
        let node_id = self.node.node_id.as_str();
        let now = now_millis();
        let Some(body) = msg.body else {
            return Ok(());
        };
        match body {
            agent_message::Body::Hello(_) => {}
            agent_message::Body::Heartbeat(_) => {
                // One write per half heartbeat at most, however chatty.
                let every = ms(self.plane.inner.cfg.heartbeat) / 2;
                if now - self.last_seen_written >= every {
                    store
                        .node_seen(node_id, &self.plane.inner.cfg.replica, now)
                        .await?;
                    self.last_seen_written = now;
                }
            }
            agent_message::Body::Ack(a) => {
                store
                    .update_command(&a.id, node_id, &CommandUpdate::Acked, now)
                    .await?;
            }
            agent_message::Body::Progress(p) => {
                let id = p.id.clone();
                store
                    .update_command(&id, node_id, &CommandUpdate::Progress(p), now)
                    .await?;
            }
            agent_message::Body::Result(r) => {
                let id = r.id.clone();
                let applied = store
                    .update_command(&id, node_id, &CommandUpdate::Finished(r), now)
                    .await?;
                if applied {
                    tracing::info!(node = %node_id, command = %id, "command finished");
                }
                // Confirmed even when it was a repeat: the agent may
                // forget it either way.
                let _ = self
                    .tx
                    .send(proto::ServerMessage {
                        body: Some(server_message::Body::ResultReceived(
                            proto::ResultReceived { id },
                        )),
                    })
                    .await;
            }
            agent_message::Body::Report(r) => {
                let json =
                    serde_json::to_string(&r).map_err(|e| ControlError::Storage(e.to_string()))?;
                store.save_report(node_id, &json, now).await?;
            }
        }
        Ok(())
    }

    /// Ends the session: offline in the store, unless the node has already
    /// connected again (here or elsewhere).
    pub async fn detach(self) {
        self.close.cancel();
        let current = {
            let mut sessions = self.plane.inner.sessions.lock();
            match sessions.get(&self.node.node_id) {
                Some(s) if s.id == self.id => {
                    sessions.remove(&self.node.node_id);
                    true
                }
                _ => false,
            }
        };
        if current
            && let Err(e) = self
                .plane
                .inner
                .store
                .node_disconnected(
                    &self.node.node_id,
                    &self.plane.inner.cfg.replica,
                    now_millis(),
                )
                .await
        {
            tracing::warn!(node = %self.node.node_id, error = %e, "recording the disconnection");
        }
        tracing::info!(node = %self.node.node_id, "node disconnected");
    }
}

/// Sends a session's downstream: welcome, desired state, commands.
async fn pump(
    plane: ControlPlane,
    node: NodeRef,
    tx: mpsc::Sender<proto::ServerMessage>,
    wake: Arc<Notify>,
    close: CancellationToken,
    agent_generation: u64,
) {
    let cfg = &plane.inner.cfg;
    let send = |body: server_message::Body| {
        let tx = tx.clone();
        async move {
            tx.send(proto::ServerMessage { body: Some(body) })
                .await
                .is_ok()
        }
    };
    let welcome = proto::Welcome {
        node_id: node.node_id.clone(),
        node_name: node.node_name.clone(),
        namespace: node.namespace.clone(),
        heartbeat_secs: u32::try_from(cfg.heartbeat.as_secs().max(1)).unwrap_or(15),
        report_every: cfg.report_every.max(1),
    };
    if !send(server_message::Body::Welcome(welcome)).await {
        return;
    }
    let mut desired_sent = agent_generation;
    // Commands sent on this connection (a reconnect sends them again).
    let mut sent: HashSet<String> = HashSet::new();
    loop {
        if close.is_cancelled() {
            return;
        }
        match plane.inner.store.desired(&node.node_id).await {
            Ok(Some(d)) if d.generation != desired_sent => {
                let msg = proto::DesiredState {
                    generation: d.generation,
                    containers: d.containers,
                };
                if !send(server_message::Body::DesiredState(msg)).await {
                    return;
                }
                desired_sent = d.generation;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(node = %node.node_id, error = %e, "reading the desired state"),
        }
        match plane
            .inner
            .store
            .open_commands(&node.node_id, now_millis())
            .await
        {
            Ok(commands) => {
                for c in commands {
                    if sent.contains(&c.id) {
                        continue;
                    }
                    // Marked first: a send that fails leaves it `sent`,
                    // which the next connection sends again all the same.
                    if let Err(e) = plane
                        .inner
                        .store
                        .update_command(&c.id, &node.node_id, &CommandUpdate::Sent, now_millis())
                        .await
                    {
                        tracing::warn!(command = %c.id, error = %e, "recording a delivery");
                    }
                    if !send(server_message::Body::Command(c.to_proto())).await {
                        return;
                    }
                    sent.insert(c.id);
                }
            }
            Err(e) => tracing::warn!(node = %node.node_id, error = %e, "reading open commands"),
        }
        tokio::select! {
            _ = close.cancelled() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(cfg.poll_interval) => {}
        }
    }
}
