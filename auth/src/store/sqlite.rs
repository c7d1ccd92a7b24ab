//! The SQLite auth store of the embedded default.

use std::path::PathBuf;

use async_trait::async_trait;
use sqlite_pool::rusqlite::{self, OptionalExtension, Row, params};
use sqlite_pool::{Pool, PoolError, Synchronous};

use super::{AuditQuery, AuthStore, CaRecord, Revocations, Session, SigningKey};
use crate::error::{AuthError, Result};
use crate::model::{
    Account, AccountId, AuditEvent, Credential, CredentialKind, Millis, Node, Role, User, UserId,
    UserKind,
};

/// Schema history. Append new migrations; never edit a released one.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE accounts (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    namespace   TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

-- Humans and robots. Usernames are global: they are what clients send.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    account_id    INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    username      TEXT NOT NULL UNIQUE,
    kind          TEXT NOT NULL CHECK (kind IN ('user', 'robot')),
    role          TEXT NOT NULL CHECK (role IN ('admin', 'developer', 'reader')),
    password_hash TEXT,
    created_at    INTEGER NOT NULL,
    disabled_at   INTEGER
);
CREATE INDEX users_account ON users(account_id);

-- Login credentials, robot API keys and refresh tokens; secrets as argon2 hashes.
CREATE TABLE credentials (
    id          TEXT PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind        TEXT NOT NULL CHECK (kind IN ('login', 'api_key', 'refresh')),
    secret_hash TEXT NOT NULL,
    description TEXT,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER,
    parent_id   TEXT REFERENCES credentials(id) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX credentials_user ON credentials(user_id);
CREATE INDEX credentials_parent ON credentials(parent_id);

CREATE TABLE nodes (
    id               TEXT PRIMARY KEY,
    account_id       INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    name             TEXT NOT NULL,
    cert_serial      TEXT NOT NULL,
    cert_fingerprint TEXT NOT NULL,
    enrolled_at      INTEGER NOT NULL,
    revoked_at       INTEGER,
    UNIQUE (account_id, name)
) WITHOUT ROWID;

CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    private_pem TEXT NOT NULL,
    public_pem  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    retire_at   INTEGER
) WITHOUT ROWID;

CREATE TABLE node_ca (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    cert_pem   TEXT NOT NULL,
    key_pem    TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- Bumped by every change token verifiers must notice (revocations, keys).
CREATE TABLE revision (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT INTO revision (id, value) VALUES (1, 0);

CREATE TABLE audit (
    id         INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
    account_id INTEGER,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT,
    source     TEXT,
    outcome    TEXT NOT NULL,
    detail     TEXT
);
CREATE INDEX audit_account_at ON audit(account_id, at);
"#,
    r#"
-- Portal sign-in sessions; the cookie value is stored as its SHA-256.
CREATE TABLE sessions (
    id_hash    TEXT PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX sessions_expiry ON sessions(expires_at);
"#,
];

/// SQLite-backed [`AuthStore`].
#[derive(Debug, Clone)]
pub struct SqliteAuthStore {
    pool: Pool,
}

impl From<PoolError> for AuthError {
    fn from(e: PoolError) -> Self {
        AuthError::Storage(e.to_string())
    }
}

fn db(e: rusqlite::Error) -> AuthError {
    AuthError::Storage(e.to_string())
}

/// Maps a UNIQUE violation to a conflict on `what`.
fn unique(what: String) -> impl FnOnce(rusqlite::Error) -> AuthError {
    move |e| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => AuthError::Conflict(what),
        _ => db(e),
    }
}

fn bump(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    tx.execute("UPDATE revision SET value = value + 1 WHERE id = 1", [])
        .map_err(db)?;
    Ok(())
}

fn account_row(r: &Row<'_>) -> rusqlite::Result<Account> {
    Ok(Account {
        id: r.get(0)?,
        name: r.get(1)?,
        namespace: r.get(2)?,
        created_at: r.get(3)?,
    })
}

const USER_COLS: &str =
    "id, account_id, username, kind, role, password_hash, created_at, disabled_at";

fn user_row(r: &Row<'_>) -> rusqlite::Result<User> {
    let kind: String = r.get(3)?;
    let role: String = r.get(4)?;
    Ok(User {
        id: r.get(0)?,
        account_id: r.get(1)?,
        username: r.get(2)?,
        kind: if kind == "robot" {
            UserKind::Robot
        } else {
            UserKind::User
        },
        role: Role::parse(&role).unwrap_or(Role::Reader),
        password_hash: r.get(5)?,
        created_at: r.get(6)?,
        disabled_at: r.get(7)?,
    })
}

const CRED_COLS: &str =
    "id, user_id, kind, secret_hash, description, created_at, expires_at, revoked_at, parent_id";

fn credential_row(r: &Row<'_>) -> rusqlite::Result<Credential> {
    let kind: String = r.get(2)?;
    Ok(Credential {
        id: r.get(0)?,
        user_id: r.get(1)?,
        // The CHECK constraint guarantees one of the three.
        kind: CredentialKind::parse(&kind).unwrap_or(CredentialKind::Login),
        secret_hash: r.get(3)?,
        description: r.get(4)?,
        created_at: r.get(5)?,
        expires_at: r.get(6)?,
        revoked_at: r.get(7)?,
        parent_id: r.get(8)?,
    })
}

const NODE_COLS: &str =
    "id, account_id, name, cert_serial, cert_fingerprint, enrolled_at, revoked_at";

fn node_row(r: &Row<'_>) -> rusqlite::Result<Node> {
    Ok(Node {
        id: r.get(0)?,
        account_id: r.get(1)?,
        name: r.get(2)?,
        cert_serial: r.get(3)?,
        cert_fingerprint: r.get(4)?,
        enrolled_at: r.get(5)?,
        revoked_at: r.get(6)?,
    })
}

fn audit_row(r: &Row<'_>) -> rusqlite::Result<AuditEvent> {
    Ok(AuditEvent {
        at: r.get(0)?,
        account_id: r.get(1)?,
        actor: r.get(2)?,
        action: r.get(3)?,
        target: r.get(4)?,
        source: r.get(5)?,
        outcome: r.get(6)?,
        detail: r.get(7)?,
    })
}

impl SqliteAuthStore {
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        // Auth changes are rare and must not be lost: always fsync.
        let pool = Pool::open(path, Synchronous::Full, MIGRATIONS)?;
        Ok(SqliteAuthStore { pool })
    }
}

#[async_trait]
impl AuthStore for SqliteAuthStore {
    async fn create_account(&self, name: &str, namespace: &str, now: Millis) -> Result<Account> {
        let (name, namespace) = (name.to_owned(), namespace.to_owned());
        self.pool
            .write(move |tx| {
                tx.execute(
                    "INSERT INTO accounts (name, namespace, created_at) VALUES (?1, ?2, ?3)",
                    params![name, namespace, now],
                )
                .map_err(unique(format!(
                    "account {name:?} or namespace {namespace:?}"
                )))?;
                Ok(Account {
                    id: tx.last_insert_rowid(),
                    name,
                    namespace,
                    created_at: now,
                })
            })
            .await
    }

    async fn account_by_name(&self, name: &str) -> Result<Option<Account>> {
        let name = name.to_owned();
        self.pool
            .read(move |c| {
                c.query_row(
                    "SELECT id, name, namespace, created_at FROM accounts WHERE name = ?1",
                    params![name],
                    account_row,
                )
                .optional()
                .map_err(db)
            })
            .await
    }

    async fn account_by_id(&self, id: AccountId) -> Result<Option<Account>> {
        self.pool
            .read(move |c| {
                c.query_row(
                    "SELECT id, name, namespace, created_at FROM accounts WHERE id = ?1",
                    params![id],
                    account_row,
                )
                .optional()
                .map_err(db)
            })
            .await
    }

    async fn list_accounts(&self) -> Result<Vec<Account>> {
        self.pool
            .read(|c| {
                let mut s = c
                    .prepare("SELECT id, name, namespace, created_at FROM accounts ORDER BY name")
                    .map_err(db)?;
                let rows = s.query_map([], account_row).map_err(db)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
            })
            .await
    }

    async fn create_user(
        &self,
        account_id: AccountId,
        username: &str,
        kind: UserKind,
        role: Role,
        password_hash: Option<&str>,
        now: Millis,
    ) -> Result<User> {
        let username = username.to_owned();
        let password_hash = password_hash.map(str::to_owned);
        self.pool
            .write(move |tx| {
                tx.execute(
                    "INSERT INTO users (account_id, username, kind, role, password_hash, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![account_id, username, kind.as_str(), role.as_str(), password_hash, now],
                )
                .map_err(unique(format!("user {username:?}")))?;
                Ok(User {
                    id: tx.last_insert_rowid(),
                    account_id,
                    username,
                    kind,
                    role,
                    password_hash,
                    created_at: now,
                    disabled_at: None,
                })
            })
            .await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<User>> {
        let username = username.to_owned();
        self.pool
            .read(move |c| {
                c.query_row(
                    &format!("SELECT {USER_COLS} FROM users WHERE username = ?1"),
                    params![username],
                    user_row,
                )
                .optional()
                .map_err(db)
            })
            .await
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>> {
        self.pool
            .read(move |c| {
                c.query_row(
                    &format!("SELECT {USER_COLS} FROM users WHERE id = ?1"),
                    params![id],
                    user_row,
                )
                .optional()
                .map_err(db)
            })
            .await
    }

    async fn list_users(&self, account_id: AccountId) -> Result<Vec<User>> {
        self.pool
            .read(move |c| {
                let mut s = c
                    .prepare(&format!(
                        "SELECT {USER_COLS} FROM users WHERE account_id = ?1 ORDER BY username"
                    ))
                    .map_err(db)?;
                let rows = s.query_map(params![account_id], user_row).map_err(db)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
            })
            .await
    }

    async fn set_password(&self, id: UserId, password_hash: &str) -> Result<bool> {
        let h = password_hash.to_owned();
        self.pool
            .write(move |tx| {
                let n = tx
                    .execute(
                        "UPDATE users SET password_hash = ?2 WHERE id = ?1",
                        params![id, h],
                    )
                    .map_err(db)?;
                Ok(n > 0)
            })
            .await
    }

    async fn set_role(&self, id: UserId, role: Role) -> Result<bool> {
        self.pool
            .write(move |tx| {
                let n = tx
                    .execute(
                        "UPDATE users SET role = ?2 WHERE id = ?1",
                        params![id, role.as_str()],
                    )
                    .map_err(db)?;
                Ok(n > 0)
            })
            .await
    }

    async fn disable_user(&self, id: UserId, now: Millis) -> Result<bool> {
        self.pool
            .write(move |tx| {
                let n = tx
                    .execute(
                        "UPDATE users SET disabled_at = ?2 WHERE id = ?1 AND disabled_at IS NULL",
                        params![id, now],
                    )
                    .map_err(db)?;
                tx.execute(
                    "UPDATE credentials SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL",
                    params![id, now],
                )
                .map_err(db)?;
                bump(tx)?;
                Ok(n > 0)
            })
            .await
    }

    async fn insert_credential(&self, c: &Credential) -> Result<()> {
        let c = c.clone();
        self.pool
            .write(move |tx| {
                tx.execute(
                    &format!("INSERT INTO credentials ({CRED_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                    params![
                        c.id,
                        c.user_id,
                        c.kind.as_str(),
                        c.secret_hash,
                        c.description,
                        c.created_at,
                        c.expires_at,
                        c.revoked_at,
                        c.parent_id
                    ],
                )
                .map_err(unique(format!("credential {}", c.id)))?;
                Ok(())
            })
            .await
    }

    async fn credential(&self, id: &str) -> Result<Option<Credential>> {
        let id = id.to_owned();
        self.pool
            .read(move |c| {
                c.query_row(
                    &format!("SELECT {CRED_COLS} FROM credentials WHERE id = ?1"),
                    params![id],
                    credential_row,
                )
                .optional()
                .map_err(db)
            })
            .await
    }

    async fn list_credentials(&self, user_id: UserId) -> Result<Vec<Credential>> {
        self.pool
            .read(move |c| {
                let mut s = c
                    .prepare(&format!(
                        "SELECT {CRED_COLS} FROM credentials WHERE user_id = ?1 AND kind != 'refresh'
                         ORDER BY created_at"
                    ))
                    .map_err(db)?;
                let rows = s.query_map(params![user_id], credential_row).map_err(db)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
            })
            .await
    }

    async fn revoke_credential(&self, id: &str, now: Millis) -> Result<bool> {
        let id = id.to_owned();
        self.pool
            .write(move |tx| {
                let n = tx
                    .execute(
                        "UPDATE credentials SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                        params![id, now],
                    )
                    .map_err(db)?;
                tx.execute(
                    "UPDATE credentials SET revoked_at = ?2 WHERE parent_id = ?1 AND revoked_at IS NULL",
                    params![id, now],
                )
                .map_err(db)?;
                bump(tx)?;
                Ok(n > 0)
            })
            .await
    }

    async fn insert_node(&self, n: &Node) -> Result<()> {
        let n = n.clone();
        self.pool
            .write(move |tx| {
                // A revoked node keeps its row (renamed aside; '#' is not
                // allowed in node names): the upsert below would replace its
                // id and clear `revoked_at`, dropping it from the revocations
                // and making the tokens it was issued valid again.
                tx.execute(
                    "UPDATE nodes SET name = name || '#revoked-' || id
                     WHERE account_id = ?1 AND name = ?2 AND revoked_at IS NOT NULL",
                    params![n.account_id, n.name],
                )
                .map_err(db)?;
                // Re-enrolling a node name replaces its certificate: the old
                // one stops working because its fingerprint no longer matches.
                tx.execute(
                    &format!(
                        "INSERT INTO nodes ({NODE_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                         ON CONFLICT (account_id, name) DO UPDATE SET id = excluded.id,
                           cert_serial = excluded.cert_serial, cert_fingerprint = excluded.cert_fingerprint,
                           enrolled_at = excluded.enrolled_at, revoked_at = NULL"
                    ),
                    params![
                        n.id,
                        n.account_id,
                        n.name,
                        n.cert_serial,
                        n.cert_fingerprint,
                        n.enrolled_at,
                        n.revoked_at
                    ],
                )
                .map_err(db)?;
                bump(tx)?;
                Ok(())
            })
            .await
    }

    async fn node(&self, id: &str) -> Result<Option<Node>> {
        let id = id.to_owned();
        self.pool
            .read(move |c| {
                c.query_row(
                    &format!("SELECT {NODE_COLS} FROM nodes WHERE id = ?1"),
                    params![id],
                    node_row,
                )
                .optional()
                .map_err(db)
            })
            .await
    }

    async fn list_nodes(&self, account_id: AccountId) -> Result<Vec<Node>> {
        self.pool
            .read(move |c| {
                let mut s = c
                    .prepare(&format!(
                        "SELECT {NODE_COLS} FROM nodes WHERE account_id = ?1 ORDER BY name"
                    ))
                    .map_err(db)?;
                let rows = s.query_map(params![account_id], node_row).map_err(db)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
            })
            .await
    }

    async fn revoke_node(&self, id: &str, now: Millis) -> Result<bool> {
        let id = id.to_owned();
        self.pool
            .write(move |tx| {
                let n = tx
                    .execute(
                        "UPDATE nodes SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                        params![id, now],
                    )
                    .map_err(db)?;
                bump(tx)?;
                Ok(n > 0)
            })
            .await
    }

    async fn revision(&self) -> Result<i64> {
        self.pool
            .read(|c| {
                c.query_row("SELECT value FROM revision WHERE id = 1", [], |r| r.get(0))
                    .map_err(db)
            })
            .await
    }

    async fn revocations(&self, since: Millis) -> Result<Revocations> {
        self.pool
            .read(move |c| {
                let strings = |sql: &str| -> Result<Vec<String>> {
                    let mut s = c.prepare(sql).map_err(db)?;
                    let rows = s.query_map(params![since], |r| r.get(0)).map_err(db)?;
                    rows.collect::<rusqlite::Result<Vec<String>>>().map_err(db)
                };
                let credentials = strings("SELECT id FROM credentials WHERE revoked_at >= ?1")?;
                let nodes = strings("SELECT id FROM nodes WHERE revoked_at >= ?1")?;
                let mut s = c
                    .prepare("SELECT id FROM users WHERE disabled_at >= ?1")
                    .map_err(db)?;
                let users = s
                    .query_map(params![since], |r| r.get(0))
                    .map_err(db)?
                    .collect::<rusqlite::Result<Vec<UserId>>>()
                    .map_err(db)?;
                Ok(Revocations {
                    credentials,
                    nodes,
                    users,
                })
            })
            .await
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKey>> {
        self.pool
            .read(|c| {
                let mut s = c
                    .prepare(
                        "SELECT kid, private_pem, public_pem, created_at, retire_at FROM signing_keys
                         ORDER BY created_at",
                    )
                    .map_err(db)?;
                let rows = s
                    .query_map([], |r| {
                        Ok(SigningKey {
                            kid: r.get(0)?,
                            private_pem: r.get(1)?,
                            public_pem: r.get(2)?,
                            created_at: r.get(3)?,
                            retire_at: r.get(4)?,
                        })
                    })
                    .map_err(db)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
            })
            .await
    }

    async fn add_first_signing_key(&self, key: &SigningKey, now: Millis) -> Result<bool> {
        let k = key.clone();
        self.pool
            .write(move |tx| {
                let added = tx
                    .execute(
                        "INSERT INTO signing_keys (kid, private_pem, public_pem, created_at, retire_at)
                         SELECT ?1, ?2, ?3, ?4, ?5
                         WHERE NOT EXISTS (SELECT 1 FROM signing_keys
                                           WHERE retire_at IS NULL OR retire_at > ?6)",
                        params![
                            k.kid,
                            k.private_pem,
                            k.public_pem,
                            k.created_at,
                            k.retire_at,
                            now
                        ],
                    )
                    .map_err(db)?;
                if added > 0 {
                    bump(tx)?;
                }
                Ok(added > 0)
            })
            .await
    }

    async fn add_signing_key(&self, key: &SigningKey, retire_others_at: Millis) -> Result<()> {
        let k = key.clone();
        self.pool
            .write(move |tx| {
                tx.execute(
                    "UPDATE signing_keys SET retire_at = ?1 WHERE retire_at IS NULL OR retire_at > ?1",
                    params![retire_others_at],
                )
                .map_err(db)?;
                tx.execute(
                    "INSERT INTO signing_keys (kid, private_pem, public_pem, created_at, retire_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![k.kid, k.private_pem, k.public_pem, k.created_at, k.retire_at],
                )
                .map_err(db)?;
                // Keys retired long ago verify nothing; drop their material.
                tx.execute(
                    "DELETE FROM signing_keys WHERE retire_at < ?1",
                    params![k.created_at - 24 * 3600 * 1000],
                )
                .map_err(db)?;
                bump(tx)?;
                Ok(())
            })
            .await
    }

    async fn node_ca(&self) -> Result<Option<CaRecord>> {
        self.pool
            .read(|c| {
                c.query_row(
                    "SELECT cert_pem, key_pem, created_at FROM node_ca WHERE id = 1",
                    [],
                    |r| {
                        Ok(CaRecord {
                            cert_pem: r.get(0)?,
                            key_pem: r.get(1)?,
                            created_at: r.get(2)?,
                        })
                    },
                )
                .optional()
                .map_err(db)
            })
            .await
    }

    async fn init_node_ca(&self, ca: &CaRecord) -> Result<CaRecord> {
        let ca = ca.clone();
        self.pool
            .write(move |tx| {
                tx.execute(
                    "INSERT INTO node_ca (id, cert_pem, key_pem, created_at) VALUES (1, ?1, ?2, ?3)
                     ON CONFLICT (id) DO NOTHING",
                    params![ca.cert_pem, ca.key_pem, ca.created_at],
                )
                .map_err(db)?;
                tx.query_row(
                    "SELECT cert_pem, key_pem, created_at FROM node_ca WHERE id = 1",
                    [],
                    |r| {
                        Ok(CaRecord {
                            cert_pem: r.get(0)?,
                            key_pem: r.get(1)?,
                            created_at: r.get(2)?,
                        })
                    },
                )
                .map_err(db)
            })
            .await
    }

    async fn create_session(&self, session: &Session) -> Result<()> {
        let x = session.clone();
        self.pool
            .write(move |tx| {
                // Expired sessions are swept here rather than by a timer.
                tx.execute(
                    "DELETE FROM sessions WHERE expires_at < ?1",
                    params![x.created_at],
                )
                .map_err(db)?;
                tx.execute(
                    "INSERT INTO sessions (id_hash, user_id, csrf, created_at, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![x.id_hash, x.user_id, x.csrf, x.created_at, x.expires_at],
                )
                .map_err(db)?;
                Ok(())
            })
            .await
    }

    async fn session(&self, id_hash: &str) -> Result<Option<Session>> {
        let id = id_hash.to_owned();
        self.pool
            .read(move |c| {
                c.query_row(
                    "SELECT id_hash, user_id, csrf, created_at, expires_at FROM sessions WHERE id_hash = ?1",
                    params![id],
                    |r| {
                        Ok(Session {
                            id_hash: r.get(0)?,
                            user_id: r.get(1)?,
                            csrf: r.get(2)?,
                            created_at: r.get(3)?,
                            expires_at: r.get(4)?,
                        })
                    },
                )
                .optional()
                .map_err(db)
            })
            .await
    }

    async fn delete_session(&self, id_hash: &str) -> Result<bool> {
        let id = id_hash.to_owned();
        self.pool
            .write(move |tx| {
                Ok(tx
                    .execute("DELETE FROM sessions WHERE id_hash = ?1", params![id])
                    .map_err(db)?
                    > 0)
            })
            .await
    }

    async fn audit(&self, e: &AuditEvent) -> Result<()> {
        let e = e.clone();
        self.pool
            .write(move |tx| {
                tx.execute(
                    "INSERT INTO audit (at, account_id, actor, action, target, source, outcome, detail)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    params![e.at, e.account_id, e.actor, e.action, e.target, e.source, e.outcome, e.detail],
                )
                .map_err(db)?;
                Ok(())
            })
            .await
    }

    async fn audit_query(&self, q: &AuditQuery) -> Result<Vec<AuditEvent>> {
        let q = q.clone();
        self.pool
            .read(move |c| {
                let mut s = c
                    .prepare(
                        "SELECT at, account_id, actor, action, target, source, outcome, detail FROM audit
                         WHERE (?1 IS NULL OR account_id = ?1) AND (?2 IS NULL OR at >= ?2)
                           AND (?3 IS NULL OR action = ?3)
                         ORDER BY at DESC, id DESC LIMIT ?4",
                    )
                    .map_err(db)?;
                let rows = s
                    .query_map(params![q.account_id, q.since, q.action, q.limit as i64], audit_row)
                    .map_err(db)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db)
            })
            .await
    }
}
