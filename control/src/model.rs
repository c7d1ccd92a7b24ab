//! What the control plane keeps: node status, commands, desired state.

use control_plane_proto as proto;
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The node a session or a command is for, as the caller (the edge, after
/// authentication) established it. The control plane never takes a node id
/// from a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRef {
    pub node_id: String,
    pub node_name: String,
    pub account_id: i64,
    pub namespace: String,
}

/// What the server knows of a node's agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    pub node_id: String,
    pub account_id: i64,
    pub agent_version: String,
    /// `os/architecture[/variant]`.
    pub platform: String,
    pub hostname: String,
    pub connected_at: Millis,
    pub last_seen: Millis,
    /// The replica holding the node's connection; `None` once it closed.
    pub replica: Option<String>,
    /// The last [`proto::NodeReport`], with when it came.
    pub report: Option<proto::NodeReport>,
    pub report_at: Option<Millis>,
}

impl NodeStatus {
    /// Connected to some replica and heard from within `offline_after_ms`
    /// (a replica that died holding the connection never says it closed).
    pub fn online(&self, now: Millis, offline_after_ms: i64) -> bool {
        self.replica.is_some() && now - self.last_seen <= offline_after_ms
    }
}

/// Where a command is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    /// Stored; not yet sent on a connection.
    Queued,
    /// Sent; no acknowledgement yet (sent again on the next connection).
    Sent,
    /// The agent journalled it and runs it.
    Acked,
    Succeeded,
    Failed,
    /// Not delivered before it expired (the node stayed offline).
    Expired,
}

impl CommandState {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandState::Queued => "queued",
            CommandState::Sent => "sent",
            CommandState::Acked => "acked",
            CommandState::Succeeded => "succeeded",
            CommandState::Failed => "failed",
            CommandState::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<CommandState> {
        Some(match s {
            "queued" => CommandState::Queued,
            "sent" => CommandState::Sent,
            "acked" => CommandState::Acked,
            "succeeded" => CommandState::Succeeded,
            "failed" => CommandState::Failed,
            "expired" => CommandState::Expired,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            CommandState::Succeeded | CommandState::Failed | CommandState::Expired
        )
    }

    /// States only move forward; a late or repeated message never moves a
    /// command back (an ack after the result, say).
    pub fn rank(self) -> u8 {
        match self {
            CommandState::Queued => 0,
            CommandState::Sent => 1,
            CommandState::Acked => 2,
            CommandState::Succeeded | CommandState::Failed | CommandState::Expired => 3,
        }
    }
}

/// One command to one node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CommandRecord {
    pub id: String,
    pub node_id: String,
    pub account_id: i64,
    /// Who sent it (a username, `operator`).
    pub actor: String,
    pub kind: String,
    pub action: proto::command::Action,
    pub state: CommandState,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub expires_at: Millis,
    /// Pull progress so far: the latest of each blob, the last message.
    pub progress: Option<proto::CommandProgress>,
    pub result: Option<proto::CommandResult>,
}

impl CommandRecord {
    /// The wire form.
    pub fn to_proto(&self) -> proto::Command {
        proto::Command {
            id: self.id.clone(),
            issued_at_ms: u64::try_from(self.created_at).unwrap_or(0),
            action: Some(self.action.clone()),
        }
    }
}

/// A change to a command, applied only if it moves the state forward.
#[derive(Debug, Clone)]
pub enum CommandUpdate {
    Sent,
    Acked,
    Progress(proto::CommandProgress),
    Finished(proto::CommandResult),
}

/// What a node should run, as the operator last set it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DesiredRecord {
    pub node_id: String,
    pub account_id: i64,
    /// Starts at 1 and grows by one at each change.
    pub generation: u64,
    pub containers: Vec<proto::ContainerSpec>,
    pub updated_at: Millis,
    pub actor: String,
}

/// Merges a progress message into what is known: the newest entry of each
/// blob, the newest stage message.
pub fn merge_progress(
    known: Option<proto::CommandProgress>,
    new: proto::CommandProgress,
) -> proto::CommandProgress {
    let mut merged = known.unwrap_or_else(|| proto::CommandProgress {
        id: new.id.clone(),
        ..Default::default()
    });
    for b in new.blobs {
        match merged.blobs.iter_mut().find(|k| k.digest == b.digest) {
            Some(k) => *k = b,
            None => merged.blobs.push(b),
        }
    }
    if !new.message.is_empty() {
        merged.message = new.message;
    }
    merged
}
