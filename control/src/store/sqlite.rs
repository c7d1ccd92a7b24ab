//! The SQLite control store of the embedded default: `control.sqlite` in the
//! data directory.

use std::path::Path;

use async_trait::async_trait;
use sqlite_pool::rusqlite::{self, OptionalExtension, Row, params};
use sqlite_pool::{Pool, Synchronous};

use super::{
    COMMAND_COLS, ControlStore, RawCommand, STATUS_COLS, decode_command, decode_report, plan_update,
};
use crate::error::{ControlError, Result};
use crate::model::{CommandRecord, CommandUpdate, DesiredRecord, Millis, NodeStatus};

/// Schema history. Append new migrations; never edit a released one.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE node_status (
    node_id       TEXT PRIMARY KEY,
    account_id    INTEGER NOT NULL,
    agent_version TEXT NOT NULL,
    platform      TEXT NOT NULL,
    hostname      TEXT NOT NULL,
    connected_at  INTEGER NOT NULL,
    last_seen     INTEGER NOT NULL,
    replica       TEXT,
    report        TEXT,
    report_at     INTEGER
) WITHOUT ROWID;
CREATE INDEX node_status_account ON node_status(account_id);

CREATE TABLE commands (
    id          TEXT PRIMARY KEY,
    node_id     TEXT NOT NULL,
    account_id  INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    action      TEXT NOT NULL,
    state       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    progress    TEXT,
    result      TEXT
) WITHOUT ROWID;
CREATE INDEX commands_node ON commands(node_id, created_at);
CREATE INDEX commands_open ON commands(state, expires_at);

CREATE TABLE desired_state (
    node_id     TEXT PRIMARY KEY,
    account_id  INTEGER NOT NULL,
    generation  INTEGER NOT NULL,
    containers  TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    actor       TEXT NOT NULL
) WITHOUT ROWID;
"#];

/// SQLite-backed [`ControlStore`].
#[derive(Debug, Clone)]
pub struct SqliteControlStore {
    pool: Pool,
}

fn db(e: rusqlite::Error) -> ControlError {
    ControlError::Storage(e.to_string())
}

impl SqliteControlStore {
    /// Opens (creating) `control.sqlite` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<SqliteControlStore> {
        // Status and commands are re-sent by the agents after a power
        // loss; NORMAL spares an fsync per heartbeat.
        let pool = Pool::open(
            data_dir.join("control.sqlite"),
            Synchronous::Normal,
            MIGRATIONS,
        )?;
        Ok(SqliteControlStore { pool })
    }
}

fn raw_command(r: &Row) -> rusqlite::Result<RawCommand> {
    Ok(RawCommand {
        id: r.get(0)?,
        node_id: r.get(1)?,
        account_id: r.get(2)?,
        actor: r.get(3)?,
        kind: r.get(4)?,
        action: r.get(5)?,
        state: r.get(6)?,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
        expires_at: r.get(9)?,
        progress: r.get(10)?,
        result: r.get(11)?,
    })
}

type RawStatus = (NodeStatus, Option<String>);

fn raw_status(r: &Row) -> rusqlite::Result<RawStatus> {
    Ok((
        NodeStatus {
            node_id: r.get(0)?,
            account_id: r.get(1)?,
            agent_version: r.get(2)?,
            platform: r.get(3)?,
            hostname: r.get(4)?,
            connected_at: r.get(5)?,
            last_seen: r.get(6)?,
            replica: r.get(7)?,
            report: None,
            report_at: r.get(9)?,
        },
        r.get(8)?,
    ))
}

fn status((mut s, report): RawStatus) -> Result<NodeStatus> {
    s.report = decode_report(&s.node_id, report)?;
    Ok(s)
}

fn read_command(c: &rusqlite::Connection, id: &str) -> Result<Option<CommandRecord>> {
    c.query_row(
        &format!("SELECT {COMMAND_COLS} FROM commands WHERE id = ?1"),
        params![id],
        raw_command,
    )
    .optional()
    .map_err(db)?
    .map(decode_command)
    .transpose()
}

#[async_trait]
impl ControlStore for SqliteControlStore {
    async fn node_connected(&self, s: &NodeStatus) -> Result<()> {
        let s = s.clone();
        self.pool
            .write(move |tx| {
                tx.execute(
                    "INSERT INTO node_status (node_id, account_id, agent_version, platform, hostname, connected_at, last_seen, replica)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (node_id) DO UPDATE SET account_id = excluded.account_id,
                        agent_version = excluded.agent_version, platform = excluded.platform,
                        hostname = excluded.hostname, connected_at = excluded.connected_at,
                        last_seen = excluded.last_seen, replica = excluded.replica",
                    params![s.node_id, s.account_id, s.agent_version, s.platform, s.hostname, s.connected_at, s.last_seen, s.replica],
                )
                .map_err(db)?;
                Ok(())
            })
            .await
    }

    async fn node_seen(&self, node_id: &str, replica: &str, at: Millis) -> Result<()> {
        let (node_id, replica) = (node_id.to_owned(), replica.to_owned());
        self.pool
            .write(move |tx| {
                tx.execute(
                    "UPDATE node_status SET last_seen = ?3 WHERE node_id = ?1 AND replica = ?2",
                    params![node_id, replica, at],
                )
                .map_err(db)?;
                Ok(())
            })
            .await
    }

    async fn node_disconnected(&self, node_id: &str, replica: &str, at: Millis) -> Result<()> {
        let (node_id, replica) = (node_id.to_owned(), replica.to_owned());
        self.pool
            .write(move |tx| {
                tx.execute(
                    "UPDATE node_status SET replica = NULL, last_seen = ?3 WHERE node_id = ?1 AND replica = ?2",
                    params![node_id, replica, at],
                )
                .map_err(db)?;
                Ok(())
            })
            .await
    }

    async fn save_report(&self, node_id: &str, report_json: &str, at: Millis) -> Result<()> {
        let (node_id, report) = (node_id.to_owned(), report_json.to_owned());
        self.pool
            .write(move |tx| {
                tx.execute(
                    "UPDATE node_status SET report = ?2, report_at = ?3 WHERE node_id = ?1",
                    params![node_id, report, at],
                )
                .map_err(db)?;
                Ok(())
            })
            .await
    }

    async fn node_status(&self, node_id: &str) -> Result<Option<NodeStatus>> {
        let node_id = node_id.to_owned();
        let raw = self
            .pool
            .read(move |c| {
                c.query_row(
                    &format!("SELECT {STATUS_COLS} FROM node_status WHERE node_id = ?1"),
                    params![node_id],
                    raw_status,
                )
                .optional()
                .map_err(db)
            })
            .await?;
        raw.map(status).transpose()
    }

    async fn node_statuses(&self, account_id: Option<i64>) -> Result<Vec<NodeStatus>> {
        let raw = self
            .pool
            .read(move |c| {
                let mut st = c
                    .prepare(&format!(
                        "SELECT {STATUS_COLS} FROM node_status
                         WHERE ?1 IS NULL OR account_id = ?1 ORDER BY node_id"
                    ))
                    .map_err(db)?;
                let rows = st
                    .query_map(params![account_id], raw_status)
                    .map_err(db)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(db)?;
                Ok::<_, ControlError>(rows)
            })
            .await?;
        raw.into_iter().map(status).collect()
    }

    async fn insert_command(&self, c: &CommandRecord) -> Result<()> {
        let action =
            serde_json::to_string(&c.action).map_err(|e| ControlError::Storage(e.to_string()))?;
        let c = c.clone();
        self.pool
            .write(move |tx| {
                tx.execute(
                    &format!("INSERT INTO commands ({COMMAND_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, NULL, NULL)"),
                    params![c.id, c.node_id, c.account_id, c.actor, c.kind, action, c.state.as_str(), c.created_at, c.updated_at, c.expires_at],
                )
                .map_err(db)?;
                Ok(())
            })
            .await
    }

    async fn command(&self, id: &str) -> Result<Option<CommandRecord>> {
        let id = id.to_owned();
        self.pool.read(move |c| read_command(c, &id)).await
    }

    async fn commands(&self, node_id: &str, limit: u32) -> Result<Vec<CommandRecord>> {
        let node_id = node_id.to_owned();
        self.pool
            .read(move |c| {
                let mut st = c
                    .prepare(&format!(
                        "SELECT {COMMAND_COLS} FROM commands WHERE node_id = ?1
                         ORDER BY created_at DESC, id DESC LIMIT ?2"
                    ))
                    .map_err(db)?;
                let rows = st
                    .query_map(params![node_id, limit], raw_command)
                    .map_err(db)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(db)?;
                rows.into_iter().map(decode_command).collect()
            })
            .await
    }

    async fn open_commands(&self, node_id: &str, now: Millis) -> Result<Vec<CommandRecord>> {
        let node_id = node_id.to_owned();
        self.pool
            .read(move |c| {
                let mut st = c
                    .prepare(&format!(
                        "SELECT {COMMAND_COLS} FROM commands
                         WHERE node_id = ?1 AND state IN ('queued', 'sent', 'acked') AND expires_at > ?2
                         ORDER BY created_at, id"
                    ))
                    .map_err(db)?;
                let rows = st
                    .query_map(params![node_id, now], raw_command)
                    .map_err(db)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(db)?;
                rows.into_iter().map(decode_command).collect()
            })
            .await
    }

    async fn update_command(
        &self,
        id: &str,
        node_id: &str,
        update: &CommandUpdate,
        at: Millis,
    ) -> Result<bool> {
        let (id, node_id, update) = (id.to_owned(), node_id.to_owned(), update.clone());
        self.pool
            .write(move |tx| {
                let Some(current) = read_command(tx, &id)? else {
                    return Ok(false);
                };
                if current.node_id != node_id {
                    return Ok(false);
                }
                let Some(p) = plan_update(&current, &update)? else {
                    return Ok(false);
                };
                tx.execute(
                    "UPDATE commands SET state = ?2, progress = ?3, result = ?4, updated_at = ?5 WHERE id = ?1",
                    params![id, p.state.as_str(), p.progress, p.result, at],
                )
                .map_err(db)?;
                Ok(true)
            })
            .await
    }

    async fn expire_commands(&self, now: Millis) -> Result<u64> {
        self.pool
            .write(move |tx| {
                // Only commands no agent acknowledged: an acknowledged one
                // runs, and its result will come.
                let n = tx
                    .execute(
                        "UPDATE commands SET state = 'expired', updated_at = ?1
                         WHERE state IN ('queued', 'sent') AND expires_at <= ?1",
                        params![now],
                    )
                    .map_err(db)?;
                Ok(n as u64)
            })
            .await
    }

    async fn set_desired(
        &self,
        node_id: &str,
        account_id: i64,
        containers_json: &str,
        actor: &str,
        at: Millis,
    ) -> Result<u64> {
        let (node_id, containers, actor) = (
            node_id.to_owned(),
            containers_json.to_owned(),
            actor.to_owned(),
        );
        self.pool
            .write(move |tx| {
                let generation: i64 = tx
                    .query_row(
                        "INSERT INTO desired_state (node_id, account_id, generation, containers, updated_at, actor)
                         VALUES (?1, ?2, 1, ?3, ?4, ?5)
                         ON CONFLICT (node_id) DO UPDATE SET generation = generation + 1,
                            containers = excluded.containers, updated_at = excluded.updated_at,
                            actor = excluded.actor
                         RETURNING generation",
                        params![node_id, account_id, containers, at, actor],
                        |r| r.get(0),
                    )
                    .map_err(db)?;
                Ok(u64::try_from(generation).unwrap_or(0))
            })
            .await
    }

    async fn desired(&self, node_id: &str) -> Result<Option<DesiredRecord>> {
        let node_id = node_id.to_owned();
        let raw = self
            .pool
            .read(move |c| {
                c.query_row(
                    "SELECT node_id, account_id, generation, containers, updated_at, actor
                     FROM desired_state WHERE node_id = ?1",
                    params![node_id],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, i64>(4)?,
                            r.get::<_, String>(5)?,
                        ))
                    },
                )
                .optional()
                .map_err(db)
            })
            .await?;
        raw.map(
            |(node_id, account_id, generation, containers, updated_at, actor)| {
                Ok(DesiredRecord {
                    containers: serde_json::from_str(&containers).map_err(|e| {
                        ControlError::Storage(format!("desired state of {node_id}: {e}"))
                    })?,
                    node_id,
                    account_id,
                    generation: u64::try_from(generation).unwrap_or(0),
                    updated_at,
                    actor,
                })
            },
        )
        .transpose()
    }
}
