//! The PostgreSQL control store, shared by every berth-server replica
//! (schema `control`, same database as the registry and auth): a command
//! accepted by one replica is delivered by the replica holding the node's
//! connection, which finds it when it polls.

use async_trait::async_trait;
use pg_pool::tokio_postgres::Row;
use pg_pool::{ConnectOptions, Pool, TxError, all, exec, opt, transaction};

use super::{
    COMMAND_COLS, ControlStore, RawCommand, STATUS_COLS, decode_command, decode_report, plan_update,
};
use crate::error::{ControlError, Result};
use crate::model::{CommandRecord, CommandUpdate, DesiredRecord, Millis, NodeStatus};

/// Schema history, embedded in the binary. Append new migrations; never
/// edit a released one.
const MIGRATIONS: &[&str] = &[include_str!("postgres/0001_initial.sql")];

/// The PostgreSQL schema holding the control-plane tables.
pub const SCHEMA: &str = "control";

/// PostgreSQL-backed [`ControlStore`].
#[derive(Debug, Clone)]
pub struct PgControlStore {
    pool: Pool,
}

fn db(e: pg_pool::tokio_postgres::Error) -> ControlError {
    ControlError::Storage(pg_pool::describe(&e))
}

fn from_tx(e: TxError<ControlError>) -> ControlError {
    match e {
        TxError::Db(e) => db(e),
        TxError::Pool(e) => ControlError::Storage(e),
        TxError::Store(e) => e,
    }
}

fn raw_command(r: &Row) -> RawCommand {
    RawCommand {
        id: r.get(0),
        node_id: r.get(1),
        account_id: r.get(2),
        actor: r.get(3),
        kind: r.get(4),
        action: r.get(5),
        state: r.get(6),
        created_at: r.get(7),
        updated_at: r.get(8),
        expires_at: r.get(9),
        progress: r.get(10),
        result: r.get(11),
    }
}

fn status_row(r: &Row) -> Result<NodeStatus> {
    let node_id: String = r.get(0);
    let report = decode_report(&node_id, r.get(8))?;
    Ok(NodeStatus {
        node_id,
        account_id: r.get(1),
        agent_version: r.get(2),
        platform: r.get(3),
        hostname: r.get(4),
        connected_at: r.get(5),
        last_seen: r.get(6),
        replica: r.get(7),
        report,
        report_at: r.get(9),
    })
}

impl PgControlStore {
    pub async fn connect(options: &ConnectOptions) -> Result<PgControlStore> {
        Ok(PgControlStore {
            pool: Pool::connect(options, SCHEMA, MIGRATIONS).await?,
        })
    }

    async fn client(&self) -> Result<pg_pool::Client> {
        Ok(self.pool.client().await?)
    }

    async fn commands_where(
        &self,
        sql: &str,
        params: pg_pool::Params<'_>,
    ) -> Result<Vec<CommandRecord>> {
        let c = self.client().await?;
        all(&c, sql, params)
            .await
            .map_err(db)?
            .iter()
            .map(|r| decode_command(raw_command(r)))
            .collect()
    }
}

#[async_trait]
impl ControlStore for PgControlStore {
    async fn node_connected(&self, s: &NodeStatus) -> Result<()> {
        let c = self.client().await?;
        exec(
            &c,
            "INSERT INTO node_status (node_id, account_id, agent_version, platform, hostname, connected_at, last_seen, replica)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (node_id) DO UPDATE SET account_id = excluded.account_id,
                agent_version = excluded.agent_version, platform = excluded.platform,
                hostname = excluded.hostname, connected_at = excluded.connected_at,
                last_seen = excluded.last_seen, replica = excluded.replica",
            &[&s.node_id, &s.account_id, &s.agent_version, &s.platform, &s.hostname, &s.connected_at, &s.last_seen, &s.replica],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn node_seen(&self, node_id: &str, replica: &str, at: Millis) -> Result<()> {
        let c = self.client().await?;
        exec(
            &c,
            "UPDATE node_status SET last_seen = $3 WHERE node_id = $1 AND replica = $2",
            &[&node_id, &replica, &at],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn node_disconnected(&self, node_id: &str, replica: &str, at: Millis) -> Result<()> {
        let c = self.client().await?;
        exec(
            &c,
            "UPDATE node_status SET replica = NULL, last_seen = $3 WHERE node_id = $1 AND replica = $2",
            &[&node_id, &replica, &at],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn save_report(&self, node_id: &str, report_json: &str, at: Millis) -> Result<()> {
        let c = self.client().await?;
        exec(
            &c,
            "UPDATE node_status SET report = $2, report_at = $3 WHERE node_id = $1",
            &[&node_id, &report_json, &at],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn node_status(&self, node_id: &str) -> Result<Option<NodeStatus>> {
        let c = self.client().await?;
        opt(
            &c,
            &format!("SELECT {STATUS_COLS} FROM node_status WHERE node_id = $1"),
            &[&node_id],
        )
        .await
        .map_err(db)?
        .as_ref()
        .map(status_row)
        .transpose()
    }

    async fn node_statuses(&self, account_id: Option<i64>) -> Result<Vec<NodeStatus>> {
        let c = self.client().await?;
        all(
            &c,
            &format!(
                "SELECT {STATUS_COLS} FROM node_status
                 WHERE $1::BIGINT IS NULL OR account_id = $1 ORDER BY node_id"
            ),
            &[&account_id],
        )
        .await
        .map_err(db)?
        .iter()
        .map(status_row)
        .collect()
    }

    async fn insert_command(&self, cmd: &CommandRecord) -> Result<()> {
        let action =
            serde_json::to_string(&cmd.action).map_err(|e| ControlError::Storage(e.to_string()))?;
        let c = self.client().await?;
        exec(
            &c,
            &format!("INSERT INTO commands ({COMMAND_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, NULL)"),
            &[&cmd.id, &cmd.node_id, &cmd.account_id, &cmd.actor, &cmd.kind, &action, &cmd.state.as_str(), &cmd.created_at, &cmd.updated_at, &cmd.expires_at],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn command(&self, id: &str) -> Result<Option<CommandRecord>> {
        let c = self.client().await?;
        opt(
            &c,
            &format!("SELECT {COMMAND_COLS} FROM commands WHERE id = $1"),
            &[&id],
        )
        .await
        .map_err(db)?
        .as_ref()
        .map(|r| decode_command(raw_command(r)))
        .transpose()
    }

    async fn commands(&self, node_id: &str, limit: u32) -> Result<Vec<CommandRecord>> {
        let limit = i64::from(limit);
        self.commands_where(
            &format!(
                "SELECT {COMMAND_COLS} FROM commands WHERE node_id = $1
                 ORDER BY created_at DESC, id DESC LIMIT $2"
            ),
            &[&node_id, &limit],
        )
        .await
    }

    async fn open_commands(&self, node_id: &str, now: Millis) -> Result<Vec<CommandRecord>> {
        self.commands_where(
            &format!(
                "SELECT {COMMAND_COLS} FROM commands
                 WHERE node_id = $1 AND state IN ('queued', 'sent', 'acked') AND expires_at > $2
                 ORDER BY created_at, id"
            ),
            &[&node_id, &now],
        )
        .await
    }

    async fn update_command(
        &self,
        id: &str,
        node_id: &str,
        update: &CommandUpdate,
        at: Millis,
    ) -> Result<bool> {
        transaction!(self.pool, Serializable, ControlError, |tx| {
            let row = opt(
                &tx,
                &format!("SELECT {COMMAND_COLS} FROM commands WHERE id = $1 FOR UPDATE"),
                &[&id],
            )
            .await?;
            let Some(row) = row else {
                return Ok(false);
            };
            let current = decode_command(raw_command(&row)).map_err(TxError::Store)?;
            if current.node_id != node_id {
                return Ok(false);
            }
            let Some(p) = plan_update(&current, update).map_err(TxError::Store)? else {
                return Ok(false);
            };
            exec(
                &tx,
                "UPDATE commands SET state = $2, progress = $3, result = $4, updated_at = $5 WHERE id = $1",
                &[&id, &p.state.as_str(), &p.progress, &p.result, &at],
            )
            .await?;
            Ok(true)
        })
        .map_err(from_tx)
    }

    async fn expire_commands(&self, now: Millis) -> Result<u64> {
        let c = self.client().await?;
        exec(
            &c,
            "UPDATE commands SET state = 'expired', updated_at = $1
             WHERE state IN ('queued', 'sent') AND expires_at <= $1",
            &[&now],
        )
        .await
        .map_err(db)
    }

    async fn set_desired(
        &self,
        node_id: &str,
        account_id: i64,
        containers_json: &str,
        actor: &str,
        at: Millis,
    ) -> Result<u64> {
        let generation: i64 = transaction!(self.pool, Serializable, ControlError, |tx| {
            let row = opt(
                &tx,
                "INSERT INTO desired_state (node_id, account_id, generation, containers, updated_at, actor)
                 VALUES ($1, $2, 1, $3, $4, $5)
                 ON CONFLICT (node_id) DO UPDATE SET generation = desired_state.generation + 1,
                    containers = excluded.containers, updated_at = excluded.updated_at,
                    actor = excluded.actor
                 RETURNING generation",
                &[&node_id, &account_id, &containers_json, &at, &actor],
            )
            .await?;
            Ok(row.map_or(0, |r| r.get::<_, i64>(0)))
        })
        .map_err(from_tx)?;
        Ok(u64::try_from(generation).unwrap_or(0))
    }

    async fn desired(&self, node_id: &str) -> Result<Option<DesiredRecord>> {
        let c = self.client().await?;
        let row = opt(
            &c,
            "SELECT node_id, account_id, generation, containers, updated_at, actor
             FROM desired_state WHERE node_id = $1",
            &[&node_id],
        )
        .await
        .map_err(db)?;
        row.map(|r| {
            let node_id: String = r.get(0);
            let containers: String = r.get(3);
            Ok(DesiredRecord {
                containers: serde_json::from_str(&containers).map_err(|e| {
                    ControlError::Storage(format!("desired state of {node_id}: {e}"))
                })?,
                node_id,
                account_id: r.get(1),
                generation: u64::try_from(r.get::<_, i64>(2)).unwrap_or(0),
                updated_at: r.get(4),
                actor: r.get(5),
            })
        })
        .transpose()
    }
}
