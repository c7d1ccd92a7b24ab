//! Storage of the control plane: the only code that knows its schema.
//! [`sqlite::SqliteControlStore`] is the embedded default (its own file in
//! the data directory); [`postgres::PgControlStore`] is shared by replicas
//! (schema `control`), which is how a command accepted by one replica
//! reaches the node connected to another.

use async_trait::async_trait;

use crate::error::Result;
use crate::model::{CommandRecord, CommandUpdate, DesiredRecord, Millis, NodeStatus};

pub mod postgres;
pub mod sqlite;

#[async_trait]
pub trait ControlStore: Send + Sync + std::fmt::Debug {
    /// A node connected to `status.replica`: its agent, platform, hostname.
    async fn node_connected(&self, status: &NodeStatus) -> Result<()>;
    /// A heartbeat (or any message) from a node connected to `replica`.
    async fn node_seen(&self, node_id: &str, replica: &str, at: Millis) -> Result<()>;
    /// The connection on `replica` closed; nothing if the node has since
    /// connected elsewhere.
    async fn node_disconnected(&self, node_id: &str, replica: &str, at: Millis) -> Result<()>;
    async fn save_report(&self, node_id: &str, report_json: &str, at: Millis) -> Result<()>;
    async fn node_status(&self, node_id: &str) -> Result<Option<NodeStatus>>;
    /// Every node that ever connected, of one account or of all.
    async fn node_statuses(&self, account_id: Option<i64>) -> Result<Vec<NodeStatus>>;

    async fn insert_command(&self, command: &CommandRecord) -> Result<()>;
    async fn command(&self, id: &str) -> Result<Option<CommandRecord>>;
    /// A node's newest commands first.
    async fn commands(&self, node_id: &str, limit: u32) -> Result<Vec<CommandRecord>>;
    /// A node's commands without a result that have not expired, oldest
    /// first: what a connection delivers.
    async fn open_commands(&self, node_id: &str, now: Millis) -> Result<Vec<CommandRecord>>;
    /// Applies `update` to the command `id` of `node_id` (a node's message
    /// never touches another node's command) if it moves the command
    /// forward; `true` when it did.
    async fn update_command(
        &self,
        id: &str,
        node_id: &str,
        update: &CommandUpdate,
        at: Millis,
    ) -> Result<bool>;
    /// Marks undelivered commands past their expiry as expired.
    async fn expire_commands(&self, now: Millis) -> Result<u64>;

    /// Replaces a node's desired state; the new generation.
    async fn set_desired(
        &self,
        node_id: &str,
        account_id: i64,
        containers_json: &str,
        actor: &str,
        at: Millis,
    ) -> Result<u64>;
    async fn desired(&self, node_id: &str) -> Result<Option<DesiredRecord>>;
}

/// A command's JSON columns, decoded.
pub(crate) fn decode_command(
    row: RawCommand,
) -> std::result::Result<CommandRecord, crate::error::ControlError> {
    use crate::error::ControlError;
    let bad = |what: &str, e: serde_json::Error| {
        ControlError::Storage(format!("command {}: {what}: {e}", row.id))
    };
    Ok(CommandRecord {
        action: serde_json::from_str(&row.action).map_err(|e| bad("action", e))?,
        state: crate::model::CommandState::parse(&row.state).ok_or_else(|| {
            ControlError::Storage(format!("command {}: state {}", row.id, row.state))
        })?,
        progress: row
            .progress
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| bad("progress", e))?,
        result: row
            .result
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| bad("result", e))?,
        id: row.id,
        node_id: row.node_id,
        account_id: row.account_id,
        actor: row.actor,
        kind: row.kind,
        created_at: row.created_at,
        updated_at: row.updated_at,
        expires_at: row.expires_at,
    })
}

/// A command row as both engines read it.
#[derive(Debug)]
pub(crate) struct RawCommand {
    pub id: String,
    pub node_id: String,
    pub account_id: i64,
    pub actor: String,
    pub kind: String,
    pub action: String,
    pub state: String,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub expires_at: Millis,
    pub progress: Option<String>,
    pub result: Option<String>,
}

pub(crate) const COMMAND_COLS: &str = "id, node_id, account_id, actor, kind, action, state, created_at, updated_at, expires_at, progress, result";
pub(crate) const STATUS_COLS: &str = "node_id, account_id, agent_version, platform, hostname, connected_at, last_seen, replica, report, report_at";

pub(crate) fn decode_report(
    node_id: &str,
    json: Option<String>,
) -> std::result::Result<Option<control_plane_proto::NodeReport>, crate::error::ControlError> {
    json.as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| crate::error::ControlError::Storage(format!("node {node_id} report: {e}")))
}

/// The new state and the JSON columns an update writes: `None` when the
/// update does not move the command forward from `current`.
pub(crate) struct Planned {
    pub state: crate::model::CommandState,
    pub progress: Option<String>,
    pub result: Option<String>,
}

pub(crate) fn plan_update(
    current: &CommandRecord,
    update: &CommandUpdate,
) -> std::result::Result<Option<Planned>, crate::error::ControlError> {
    use crate::model::CommandState as S;
    let keep_progress = current
        .progress
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| crate::error::ControlError::Storage(e.to_string()))?;
    Ok(match update {
        CommandUpdate::Sent if current.state == S::Queued => Some(Planned {
            state: S::Sent,
            progress: keep_progress,
            result: None,
        }),
        CommandUpdate::Acked if current.state.rank() < S::Acked.rank() => Some(Planned {
            state: S::Acked,
            progress: keep_progress,
            result: None,
        }),
        CommandUpdate::Progress(p) if !current.state.is_final() => {
            let merged = crate::model::merge_progress(current.progress.clone(), p.clone());
            Some(Planned {
                // Progress means it runs: acknowledged, whatever came first.
                state: S::Acked,
                progress: Some(
                    serde_json::to_string(&merged)
                        .map_err(|e| crate::error::ControlError::Storage(e.to_string()))?,
                ),
                result: None,
            })
        }
        CommandUpdate::Finished(r) if !current.state.is_final() => Some(Planned {
            state: if r.error.is_empty() {
                S::Succeeded
            } else {
                S::Failed
            },
            progress: keep_progress,
            result: Some(
                serde_json::to_string(r)
                    .map_err(|e| crate::error::ControlError::Storage(e.to_string()))?,
            ),
        }),
        _ => None,
    })
}
