//! The node part of the management API (`/api/v1/nodes/…`): the nodes
//! enrolled into the caller's account (from [`auth::AuthService`]) joined
//! with what the control plane knows of them (status, last report, commands,
//! desired state).
//!
//! A node of another account answers exactly as a missing one does (404
//! `NODE_UNKNOWN`). Every role reads; only roles that may push (developer,
//! admin) send commands or set the desired state. On the admin socket
//! ([`crate::admin_router`]) the caller is the operator: every account.

use std::collections::HashMap;

use auth::AuthService;
use auth::model::{Account, Node};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use control::proto;
use control::{CommandRecord, ControlPlane, DesiredRecord, NodeStatus};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::PortalState;
use crate::api::{json_body, query_pairs, query_value};
use crate::caller::Caller;
use crate::error::ApiError;
use crate::html::rfc3339;

/// Commands shown with a node, and the default page of its command list.
pub const DEFAULT_COMMANDS: u32 = 20;
/// Largest `limit` of `GET /api/v1/nodes/{id}/commands`.
pub const MAX_COMMANDS: u32 = 200;

/// An enrolled node with what the control plane knows of it.
#[derive(Debug, Clone)]
pub(crate) struct NodeView {
    pub node: Node,
    /// The name of the node's account.
    pub account: String,
    /// `None`: the node never connected.
    pub status: Option<NodeStatus>,
    pub online: bool,
}

impl NodeView {
    pub fn report(&self) -> Option<&proto::NodeReport> {
        self.status.as_ref().and_then(|s| s.report.as_ref())
    }

    pub fn revoked(&self) -> bool {
        self.node.revoked_at.is_some()
    }
}

/// The control plane, or 400 UNSUPPORTED.
pub(crate) fn plane(state: &PortalState) -> Result<&ControlPlane, ApiError> {
    state.control.as_ref().ok_or_else(|| {
        ApiError::Unsupported("this server runs no control plane: there are no nodes".into())
    })
}

fn accounts(state: &PortalState) -> Result<&AuthService, ApiError> {
    state.auth.as_ref().ok_or_else(|| {
        ApiError::Unsupported(
            "accounts are disabled on this server (auth.enabled = false): nodes need accounts"
                .into(),
        )
    })
}

/// Who acts: the caller, or on the admin socket the operator.
fn actor(caller: &Caller) -> &str {
    if caller.identity.is_none() {
        "operator"
    } else {
        caller.subject()
    }
}

fn view(plane: &ControlPlane, node: Node, account: &str, status: Option<NodeStatus>) -> NodeView {
    let online = status.as_ref().is_some_and(|s| plane.online(s));
    NodeView {
        node,
        account: account.to_owned(),
        status,
        online,
    }
}

/// The caller's nodes (the operator's: of `account`, or of every account),
/// by account then name.
pub(crate) async fn node_list(
    state: &PortalState,
    caller: &Caller,
    account: Option<&str>,
) -> Result<Vec<NodeView>, ApiError> {
    let plane = plane(state)?;
    let auth = accounts(state)?;
    let list: Vec<Account> = match (&caller.identity, account) {
        (Some(id), _) => vec![auth.account_by_id(id.account_id).await?],
        (None, Some(name)) => match auth.account(name).await {
            Ok(a) => vec![a],
            Err(auth::AuthError::NotFound(_)) => {
                return Err(ApiError::Invalid(format!("no account named {name:?}")));
            }
            Err(e) => return Err(e.into()),
        },
        (None, None) => auth.accounts().await?,
    };
    let mut out = Vec::new();
    for a in list {
        let mut statuses: HashMap<String, NodeStatus> = plane
            .statuses(Some(a.id))
            .await?
            .into_iter()
            .map(|s| (s.node_id.clone(), s))
            .collect();
        let mut nodes = auth.nodes_of(a.id).await?;
        nodes.sort_by(|x, y| x.name.cmp(&y.name).then_with(|| x.id.cmp(&y.id)));
        for n in nodes {
            let status = statuses.remove(&n.id);
            out.push(view(plane, n, &a.name, status));
        }
    }
    Ok(out)
}

/// A node the caller may see, or 404 as if it did not exist.
pub(crate) async fn visible_node(
    state: &PortalState,
    caller: &Caller,
    id: &str,
) -> Result<NodeView, ApiError> {
    let plane = plane(state)?;
    let auth = accounts(state)?;
    let unknown = || ApiError::NodeUnknown(id.to_owned());
    if id.is_empty() || id.len() > 128 {
        return Err(unknown());
    }
    let node = auth.node(id).await?.ok_or_else(unknown)?;
    if let Some(me) = &caller.identity
        && me.account_id != node.account_id
    {
        return Err(unknown());
    }
    let account = auth.account_by_id(node.account_id).await?;
    let status = plane
        .status(id)
        .await?
        .filter(|s| s.account_id == node.account_id);
    Ok(view(plane, node, &account.name, status))
}

pub(crate) fn node_json(v: &NodeView) -> Value {
    let s = v.status.as_ref();
    let report = v.report();
    json!({
        "id": v.node.id,
        "name": v.node.name,
        "account": v.account,
        "revoked": v.revoked(),
        "online": v.online,
        "agent_version": s.map(|s| s.agent_version.as_str()),
        "platform": s.map(|s| s.platform.as_str()),
        "hostname": s.map(|s| s.hostname.as_str()),
        "last_seen": s.map(|s| rfc3339(s.last_seen)),
        "containers": report.map_or(0, |r| r.containers.len()),
        "images": report.map_or(0, |r| r.images.len()),
        "drift": report.map_or(0, |r| r.drift.len()),
    })
}

pub(crate) fn command_json(c: &CommandRecord) -> Value {
    json!({
        "id": c.id,
        "node_id": c.node_id,
        "kind": c.kind,
        "state": c.state.as_str(),
        "actor": c.actor,
        "created_at": rfc3339(c.created_at),
        "updated_at": rfc3339(c.updated_at),
        "expires_at": rfc3339(c.expires_at),
        "action": c.action,
        "progress": c.progress,
        "result": c.result,
    })
}

fn desired_json(d: &DesiredRecord) -> Value {
    json!({
        "generation": d.generation,
        "containers": d.containers,
        "updated_at": rfc3339(d.updated_at),
        "actor": d.actor,
    })
}

/// `GET /api/v1/nodes` (operator: `?account=NAME`).
pub async fn list_nodes(
    State(state): State<PortalState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(query.as_deref());
    let account = query_value(&pairs, "account").filter(|a| !a.is_empty());
    let nodes = node_list(&state, &caller, account).await?;
    Ok(axum::Json(json!({
        "nodes": nodes.iter().map(node_json).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// `GET /api/v1/nodes/{id}`: the node, its last report, desired state and
/// newest commands.
pub async fn get_node(
    State(state): State<PortalState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let v = visible_node(&state, &caller, &id).await?;
    let plane = plane(&state)?;
    let desired = plane.desired(&v.node.id).await?;
    let commands = plane.commands(&v.node.id, DEFAULT_COMMANDS).await?;
    let mut body = node_json(&v);
    body["report"] = json!(v.report());
    body["desired"] = desired.as_ref().map_or(Value::Null, desired_json);
    body["commands"] = commands.iter().map(command_json).collect::<Vec<_>>().into();
    Ok(axum::Json(body).into_response())
}

/// `GET /api/v1/nodes/{id}/commands?limit=`: newest first.
pub async fn list_commands(
    State(state): State<PortalState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(query.as_deref());
    let limit = match query_value(&pairs, "limit") {
        None | Some("") => DEFAULT_COMMANDS,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_COMMANDS).contains(n))
            .ok_or_else(|| {
                ApiError::Invalid(format!("limit must be a number from 1 to {MAX_COMMANDS}"))
            })?,
    };
    let v = visible_node(&state, &caller, &id).await?;
    let commands = plane(&state)?.commands(&v.node.id, limit).await?;
    Ok(axum::Json(json!({
        "commands": commands.iter().map(command_json).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// `GET /api/v1/nodes/{id}/commands/{cid}`.
pub async fn get_command(
    State(state): State<PortalState>,
    caller: Caller,
    Path((id, cid)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let v = visible_node(&state, &caller, &id).await?;
    let command = plane(&state)?
        .command(&cid)
        .await?
        .filter(|c| c.node_id == v.node.id)
        .ok_or_else(|| ApiError::CommandUnknown(cid.clone()))?;
    Ok(axum::Json(command_json(&command)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandRequest {
    action: proto::command::Action,
}

fn not_revoked(v: &NodeView) -> Result<(), ApiError> {
    if v.revoked() {
        Err(ApiError::Invalid("node is revoked".into()))
    } else {
        Ok(())
    }
}

/// `POST /api/v1/nodes/{id}/commands` with `{"action": {"pull": {"image":
/// "nginx"}}}`: 202 with the queued command.
pub async fn submit_command(
    State(state): State<PortalState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.require_operate()?;
    let v = visible_node(&state, &caller, &id).await?;
    not_revoked(&v)?;
    let request: CommandRequest = json_body(&headers, &body)?;
    let command = plane(&state)?
        .submit(
            &v.node.id,
            v.node.account_id,
            request.action,
            actor(&caller),
        )
        .await?;
    Ok((StatusCode::ACCEPTED, axum::Json(command_json(&command))).into_response())
}

/// `GET /api/v1/nodes/{id}/desired`: generation 0 and no containers when
/// none was ever set.
pub async fn get_desired(
    State(state): State<PortalState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let v = visible_node(&state, &caller, &id).await?;
    let body = match plane(&state)?.desired(&v.node.id).await? {
        Some(d) => desired_json(&d),
        None => json!({ "generation": 0, "containers": [], "updated_at": null, "actor": null }),
    };
    Ok(axum::Json(body).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DesiredRequest {
    containers: Vec<proto::ContainerSpec>,
}

/// `PUT /api/v1/nodes/{id}/desired` with `{"containers": [...]}`: the new
/// generation.
pub async fn put_desired(
    State(state): State<PortalState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.require_operate()?;
    let v = visible_node(&state, &caller, &id).await?;
    not_revoked(&v)?;
    let request: DesiredRequest = json_body(&headers, &body)?;
    let generation = plane(&state)?
        .set_desired(
            &v.node.id,
            v.node.account_id,
            request.containers,
            actor(&caller),
        )
        .await?;
    Ok(axum::Json(json!({ "generation": generation })).into_response())
}
