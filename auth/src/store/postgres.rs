//! The PostgreSQL auth store, shared by every berth-server replica (signing
//! keys and the node CA included, so any replica signs and verifies alike).
//! Same tables and behaviour as [`super::sqlite`], in the schema `auth`.
//!
//! Writes run at SERIALIZABLE isolation, retried on conflict
//! (`pg_pool::transaction!`), as SQLite's single writer runs them: e.g.
//! two replicas starting on a fresh database both try
//! `add_first_signing_key`, and exactly one key results.

use async_trait::async_trait;
use pg_pool::deadpool_postgres::GenericClient;
use pg_pool::tokio_postgres::Row;
use pg_pool::{ConnectOptions, Params, Pool, TxError, all, exec, opt, transaction};

use super::{AuditQuery, AuthStore, CaRecord, Revocations, Session, SigningKey};
use crate::error::{AuthError, Result};
use crate::model::{
    Account, AccountId, AuditEvent, Credential, CredentialKind, Millis, Node, Role, User, UserId,
    UserKind,
};

/// Schema history, embedded in the binary. Append new migrations; never
/// edit a released one.
const MIGRATIONS: &[&str] = &[
    include_str!("postgres/0001_initial.sql"),
    include_str!("postgres/0002_login_failures.sql"),
];

/// The PostgreSQL schema holding the auth tables.
pub const SCHEMA: &str = "auth";

/// PostgreSQL-backed [`AuthStore`].
#[derive(Debug, Clone)]
pub struct PgAuthStore {
    pool: Pool,
}

fn db(e: pg_pool::tokio_postgres::Error) -> AuthError {
    AuthError::Storage(pg_pool::describe(&e))
}

fn from_tx(e: TxError<AuthError>) -> AuthError {
    match e {
        TxError::Db(e) => db(e),
        TxError::Pool(e) => AuthError::Storage(e),
        TxError::Store(e) => e,
    }
}

/// Maps a constraint violation (SQLSTATE class 23: unique, foreign key,
/// check) to a conflict on `what`, as the SQLite store maps its
/// `ConstraintViolation`.
fn unique(what: String) -> impl FnOnce(TxError<AuthError>) -> AuthError {
    move |e| match &e {
        TxError::Db(d) if d.code().is_some_and(|c| c.code().starts_with("23")) => {
            AuthError::Conflict(what)
        }
        _ => from_tx(e),
    }
}

impl From<pg_pool::PgError> for AuthError {
    fn from(e: pg_pool::PgError) -> Self {
        AuthError::Storage(e.to_string())
    }
}

async fn bump<C: GenericClient + Sync>(
    c: &C,
) -> std::result::Result<(), pg_pool::tokio_postgres::Error> {
    exec(c, "UPDATE revision SET value = value + 1 WHERE id = 1", &[]).await?;
    Ok(())
}

const ACCOUNT_COLS: &str = "id, name, namespace, created_at";

fn account_row(r: &Row) -> Account {
    Account {
        id: r.get(0),
        name: r.get(1),
        namespace: r.get(2),
        created_at: r.get(3),
    }
}

const USER_COLS: &str =
    "id, account_id, username, kind, role, password_hash, created_at, disabled_at";

fn user_row(r: &Row) -> User {
    let kind: &str = r.get(3);
    let role: &str = r.get(4);
    User {
        id: r.get(0),
        account_id: r.get(1),
        username: r.get(2),
        kind: if kind == "robot" {
            UserKind::Robot
        } else {
            UserKind::User
        },
        // The CHECK constraint guarantees a known role.
        role: Role::parse(role).unwrap_or(Role::Reader),
        password_hash: r.get(5),
        created_at: r.get(6),
        disabled_at: r.get(7),
    }
}

const CRED_COLS: &str =
    "id, user_id, kind, secret_hash, description, created_at, expires_at, revoked_at, parent_id";

fn credential_row(r: &Row) -> Credential {
    let kind: &str = r.get(2);
    Credential {
        id: r.get(0),
        user_id: r.get(1),
        // The CHECK constraint guarantees one of the three.
        kind: CredentialKind::parse(kind).unwrap_or(CredentialKind::Login),
        secret_hash: r.get(3),
        description: r.get(4),
        created_at: r.get(5),
        expires_at: r.get(6),
        revoked_at: r.get(7),
        parent_id: r.get(8),
    }
}

const NODE_COLS: &str =
    "id, account_id, name, cert_serial, cert_fingerprint, enrolled_at, revoked_at";

fn node_row(r: &Row) -> Node {
    Node {
        id: r.get(0),
        account_id: r.get(1),
        name: r.get(2),
        cert_serial: r.get(3),
        cert_fingerprint: r.get(4),
        enrolled_at: r.get(5),
        revoked_at: r.get(6),
    }
}

fn ca_row(r: &Row) -> CaRecord {
    CaRecord {
        cert_pem: r.get(0),
        key_pem: r.get(1),
        created_at: r.get(2),
    }
}

impl PgAuthStore {
    /// Connects to the database and migrates the `auth` schema.
    pub async fn connect(options: &ConnectOptions) -> Result<Self> {
        Ok(PgAuthStore {
            pool: Pool::connect(options, SCHEMA, MIGRATIONS).await?,
        })
    }

    async fn client(&self) -> Result<pg_pool::Client> {
        Ok(self.pool.client().await?)
    }

    async fn read_opt<T>(
        &self,
        sql: &str,
        params: Params<'_>,
        f: impl FnOnce(&Row) -> T,
    ) -> Result<Option<T>> {
        let c = self.client().await?;
        Ok(opt(&c, sql, params).await.map_err(db)?.as_ref().map(f))
    }

    async fn read_all<T>(
        &self,
        sql: &str,
        params: Params<'_>,
        f: impl FnMut(&Row) -> T,
    ) -> Result<Vec<T>> {
        let c = self.client().await?;
        Ok(all(&c, sql, params)
            .await
            .map_err(db)?
            .iter()
            .map(f)
            .collect())
    }
}

#[async_trait]
impl AuthStore for PgAuthStore {
    async fn create_account(&self, name: &str, namespace: &str, now: Millis) -> Result<Account> {
        let id: i64 = transaction!(self.pool, Serializable, AuthError, |tx| {
            let row = opt(
                &tx,
                "INSERT INTO accounts (name, namespace, created_at) VALUES ($1, $2, $3) RETURNING id",
                &[&name, &namespace, &now],
            )
            .await?;
            Ok(row.map(|r| r.get(0)).unwrap_or_default())
        })
        .map_err(unique(format!(
            "account {name:?} or namespace {namespace:?}"
        )))?;
        Ok(Account {
            id,
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            created_at: now,
        })
    }

    async fn account_by_name(&self, name: &str) -> Result<Option<Account>> {
        self.read_opt(
            &format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE name = $1"),
            &[&name],
            account_row,
        )
        .await
    }

    async fn account_by_id(&self, id: AccountId) -> Result<Option<Account>> {
        self.read_opt(
            &format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE id = $1"),
            &[&id],
            account_row,
        )
        .await
    }

    async fn list_accounts(&self) -> Result<Vec<Account>> {
        self.read_all(
            &format!("SELECT {ACCOUNT_COLS} FROM accounts ORDER BY name"),
            &[],
            account_row,
        )
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
        let id: i64 = transaction!(self.pool, Serializable, AuthError, |tx| {
            let row = opt(
                &tx,
                "INSERT INTO users (account_id, username, kind, role, password_hash, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[
                    &account_id,
                    &username,
                    &kind.as_str(),
                    &role.as_str(),
                    &password_hash,
                    &now,
                ],
            )
            .await?;
            Ok(row.map(|r| r.get(0)).unwrap_or_default())
        })
        .map_err(unique(format!("user {username:?}")))?;
        Ok(User {
            id,
            account_id,
            username: username.to_owned(),
            kind,
            role,
            password_hash: password_hash.map(str::to_owned),
            created_at: now,
            disabled_at: None,
        })
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<User>> {
        self.read_opt(
            &format!("SELECT {USER_COLS} FROM users WHERE username = $1"),
            &[&username],
            user_row,
        )
        .await
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<User>> {
        self.read_opt(
            &format!("SELECT {USER_COLS} FROM users WHERE id = $1"),
            &[&id],
            user_row,
        )
        .await
    }

    async fn list_users(&self, account_id: AccountId) -> Result<Vec<User>> {
        self.read_all(
            &format!("SELECT {USER_COLS} FROM users WHERE account_id = $1 ORDER BY username"),
            &[&account_id],
            user_row,
        )
        .await
    }

    async fn set_password(&self, id: UserId, password_hash: &str) -> Result<bool> {
        transaction!(self.pool, Serializable, AuthError, |tx| {
            let n = exec(
                &tx,
                "UPDATE users SET password_hash = $2 WHERE id = $1",
                &[&id, &password_hash],
            )
            .await?;
            Ok(n > 0)
        })
        .map_err(from_tx)
    }

    async fn set_role(&self, id: UserId, role: Role) -> Result<bool> {
        transaction!(self.pool, Serializable, AuthError, |tx| {
            let n = exec(
                &tx,
                "UPDATE users SET role = $2 WHERE id = $1",
                &[&id, &role.as_str()],
            )
            .await?;
            Ok(n > 0)
        })
        .map_err(from_tx)
    }

    async fn disable_user(&self, id: UserId, now: Millis) -> Result<bool> {
        transaction!(self.pool, Serializable, AuthError, |tx| {
            let n = exec(
                &tx,
                "UPDATE users SET disabled_at = $2 WHERE id = $1 AND disabled_at IS NULL",
                &[&id, &now],
            )
            .await?;
            exec(
                &tx,
                "UPDATE credentials SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
                &[&id, &now],
            )
            .await?;
            bump(&tx).await?;
            Ok(n > 0)
        })
        .map_err(from_tx)
    }

    async fn insert_credential(&self, c: &Credential) -> Result<()> {
        transaction!(self.pool, Serializable, AuthError, |tx| {
            exec(
                &tx,
                &format!(
                    "INSERT INTO credentials ({CRED_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                ),
                &[
                    &c.id,
                    &c.user_id,
                    &c.kind.as_str(),
                    &c.secret_hash,
                    &c.description,
                    &c.created_at,
                    &c.expires_at,
                    &c.revoked_at,
                    &c.parent_id,
                ],
            )
            .await?;
            Ok(())
        })
        .map_err(unique(format!("credential {}", c.id)))
    }

    async fn credential(&self, id: &str) -> Result<Option<Credential>> {
        self.read_opt(
            &format!("SELECT {CRED_COLS} FROM credentials WHERE id = $1"),
            &[&id],
            credential_row,
        )
        .await
    }

    async fn list_credentials(&self, user_id: UserId) -> Result<Vec<Credential>> {
        self.read_all(
            &format!(
                "SELECT {CRED_COLS} FROM credentials WHERE user_id = $1 AND kind != 'refresh'
                 ORDER BY created_at, id"
            ),
            &[&user_id],
            credential_row,
        )
        .await
    }

    async fn revoke_credential(&self, id: &str, now: Millis) -> Result<bool> {
        transaction!(self.pool, Serializable, AuthError, |tx| {
            let n = exec(
                &tx,
                "UPDATE credentials SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                &[&id, &now],
            )
            .await?;
            exec(
                &tx,
                "UPDATE credentials SET revoked_at = $2 WHERE parent_id = $1 AND revoked_at IS NULL",
                &[&id, &now],
            )
            .await?;
            bump(&tx).await?;
            Ok(n > 0)
        })
        .map_err(from_tx)
    }

    async fn insert_node(&self, n: &Node) -> Result<()> {
        transaction!(self.pool, Serializable, AuthError, |tx| {
            // A revoked node keeps its row (renamed aside; '#' is not
            // allowed in node names): the upsert below would replace its
            // id and clear `revoked_at`, dropping it from the revocations
            // and making the tokens it was issued valid again.
            exec(
                &tx,
                "UPDATE nodes SET name = name || '#revoked-' || id
                 WHERE account_id = $1 AND name = $2 AND revoked_at IS NOT NULL",
                &[&n.account_id, &n.name],
            )
            .await?;
            // Re-enrolling a node name replaces its certificate: the old
            // one stops working because its fingerprint no longer matches.
            exec(
                &tx,
                &format!(
                    "INSERT INTO nodes ({NODE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (account_id, name) DO UPDATE SET id = excluded.id,
                       cert_serial = excluded.cert_serial, cert_fingerprint = excluded.cert_fingerprint,
                       enrolled_at = excluded.enrolled_at, revoked_at = NULL"
                ),
                &[
                    &n.id,
                    &n.account_id,
                    &n.name,
                    &n.cert_serial,
                    &n.cert_fingerprint,
                    &n.enrolled_at,
                    &n.revoked_at,
                ],
            )
            .await?;
            bump(&tx).await?;
            Ok(())
        })
        .map_err(from_tx)
    }

    async fn node(&self, id: &str) -> Result<Option<Node>> {
        self.read_opt(
            &format!("SELECT {NODE_COLS} FROM nodes WHERE id = $1"),
            &[&id],
            node_row,
        )
        .await
    }

    async fn list_nodes(&self, account_id: AccountId) -> Result<Vec<Node>> {
        self.read_all(
            &format!("SELECT {NODE_COLS} FROM nodes WHERE account_id = $1 ORDER BY name"),
            &[&account_id],
            node_row,
        )
        .await
    }

    async fn revoke_node(&self, id: &str, now: Millis) -> Result<bool> {
        transaction!(self.pool, Serializable, AuthError, |tx| {
            let n = exec(
                &tx,
                "UPDATE nodes SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                &[&id, &now],
            )
            .await?;
            bump(&tx).await?;
            Ok(n > 0)
        })
        .map_err(from_tx)
    }

    async fn revision(&self) -> Result<i64> {
        Ok(self
            .read_opt("SELECT value FROM revision WHERE id = 1", &[], |r| {
                r.get::<_, i64>(0)
            })
            .await?
            .unwrap_or_default())
    }

    async fn revocations(&self, since: Millis) -> Result<Revocations> {
        // The three lists from one snapshot, as SQLite's reader sees them.
        transaction!(self.pool, RepeatableRead, AuthError, |tx| {
            let credentials = all(
                &tx,
                "SELECT id FROM credentials WHERE revoked_at >= $1",
                &[&since],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
            let nodes = all(
                &tx,
                "SELECT id FROM nodes WHERE revoked_at >= $1",
                &[&since],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
            let users = all(
                &tx,
                "SELECT id FROM users WHERE disabled_at >= $1",
                &[&since],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
            Ok(Revocations {
                credentials,
                nodes,
                users,
            })
        })
        .map_err(from_tx)
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKey>> {
        self.read_all(
            "SELECT kid, private_pem, public_pem, created_at, retire_at FROM signing_keys
             ORDER BY created_at, kid",
            &[],
            |r| SigningKey {
                kid: r.get(0),
                private_pem: r.get(1),
                public_pem: r.get(2),
                created_at: r.get(3),
                retire_at: r.get(4),
            },
        )
        .await
    }

    async fn add_first_signing_key(&self, k: &SigningKey, now: Millis) -> Result<bool> {
        transaction!(self.pool, Serializable, AuthError, |tx| {
            let added = exec(
                &tx,
                "INSERT INTO signing_keys (kid, private_pem, public_pem, created_at, retire_at)
                 SELECT $1, $2, $3, $4, $5
                 WHERE NOT EXISTS (SELECT 1 FROM signing_keys
                                   WHERE retire_at IS NULL OR retire_at > $6)",
                &[
                    &k.kid,
                    &k.private_pem,
                    &k.public_pem,
                    &k.created_at,
                    &k.retire_at,
                    &now,
                ],
            )
            .await?;
            if added > 0 {
                bump(&tx).await?;
            }
            Ok(added > 0)
        })
        .map_err(from_tx)
    }

    async fn add_signing_key(&self, k: &SigningKey, retire_others_at: Millis) -> Result<()> {
        let long_ago = k.created_at - 24 * 3600 * 1000;
        transaction!(self.pool, Serializable, AuthError, |tx| {
            exec(
                &tx,
                "UPDATE signing_keys SET retire_at = $1 WHERE retire_at IS NULL OR retire_at > $1",
                &[&retire_others_at],
            )
            .await?;
            exec(
                &tx,
                "INSERT INTO signing_keys (kid, private_pem, public_pem, created_at, retire_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &k.kid,
                    &k.private_pem,
                    &k.public_pem,
                    &k.created_at,
                    &k.retire_at,
                ],
            )
            .await?;
            // Keys retired long ago verify nothing; drop their material.
            exec(
                &tx,
                "DELETE FROM signing_keys WHERE retire_at < $1",
                &[&long_ago],
            )
            .await?;
            bump(&tx).await?;
            Ok(())
        })
        .map_err(from_tx)
    }

    async fn node_ca(&self) -> Result<Option<CaRecord>> {
        self.read_opt(
            "SELECT cert_pem, key_pem, created_at FROM node_ca WHERE id = 1",
            &[],
            ca_row,
        )
        .await
    }

    async fn init_node_ca(&self, ca: &CaRecord) -> Result<CaRecord> {
        transaction!(self.pool, Serializable, AuthError, |tx| {
            exec(
                &tx,
                "INSERT INTO node_ca (id, cert_pem, key_pem, created_at) VALUES (1, $1, $2, $3)
                 ON CONFLICT (id) DO NOTHING",
                &[&ca.cert_pem, &ca.key_pem, &ca.created_at],
            )
            .await?;
            let row = opt(
                &tx,
                "SELECT cert_pem, key_pem, created_at FROM node_ca WHERE id = 1",
                &[],
            )
            .await?;
            row.as_ref()
                .map(ca_row)
                .ok_or_else(|| TxError::Store(AuthError::Storage("node CA vanished".into())))
        })
        .map_err(from_tx)
    }

    async fn create_session(&self, x: &Session) -> Result<()> {
        transaction!(self.pool, Serializable, AuthError, |tx| {
            // Expired sessions are swept here rather than by a timer.
            exec(
                &tx,
                "DELETE FROM sessions WHERE expires_at < $1",
                &[&x.created_at],
            )
            .await?;
            exec(
                &tx,
                "INSERT INTO sessions (id_hash, user_id, csrf, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &x.id_hash,
                    &x.user_id,
                    &x.csrf,
                    &x.created_at,
                    &x.expires_at,
                ],
            )
            .await?;
            Ok(())
        })
        .map_err(from_tx)
    }

    async fn session(&self, id_hash: &str) -> Result<Option<Session>> {
        self.read_opt(
            "SELECT id_hash, user_id, csrf, created_at, expires_at FROM sessions WHERE id_hash = $1",
            &[&id_hash],
            |r| Session {
                id_hash: r.get(0),
                user_id: r.get(1),
                csrf: r.get(2),
                created_at: r.get(3),
                expires_at: r.get(4),
            },
        )
        .await
    }

    async fn delete_session(&self, id_hash: &str) -> Result<bool> {
        transaction!(self.pool, Serializable, AuthError, |tx| {
            Ok(exec(&tx, "DELETE FROM sessions WHERE id_hash = $1", &[&id_hash]).await? > 0)
        })
        .map_err(from_tx)
    }

    async fn audit(&self, e: &AuditEvent) -> Result<()> {
        // A single insert: nothing to serialise against, and the audit log
        // is written on every token grant.
        let c = self.client().await?;
        exec(
            &c,
            "INSERT INTO audit (at, account_id, actor, action, target, source, outcome, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &e.at,
                &e.account_id,
                &e.actor,
                &e.action,
                &e.target,
                &e.source,
                &e.outcome,
                &e.detail,
            ],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn audit_query(&self, q: &AuditQuery) -> Result<Vec<AuditEvent>> {
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
        self.read_all(
            "SELECT at, account_id, actor, action, target, source, outcome, detail FROM audit
             WHERE ($1::bigint IS NULL OR account_id = $1) AND ($2::bigint IS NULL OR at >= $2)
               AND ($3::text IS NULL OR action = $3)
             ORDER BY at DESC, id DESC LIMIT $4",
            &[&q.account_id, &q.since, &q.action, &limit],
            |r| AuditEvent {
                at: r.get(0),
                account_id: r.get(1),
                actor: r.get(2),
                action: r.get(3),
                target: r.get(4),
                source: r.get(5),
                outcome: r.get(6),
                detail: r.get(7),
            },
        )
        .await
    }

    fn keeps_login_failures(&self) -> bool {
        true
    }

    async fn login_failures(&self, key: &str, since: Millis) -> Result<Option<(u32, Millis)>> {
        let c = self.client().await?;
        let row = opt(
            &c,
            "SELECT failures, first_at FROM login_failures WHERE key = $1 AND first_at >= $2",
            &[&key, &since],
        )
        .await
        .map_err(db)?;
        Ok(row.map(|r| (u32::try_from(r.get::<_, i32>(0)).unwrap_or(0), r.get(1))))
    }

    async fn record_login_failure(&self, key: &str, now: Millis, since: Millis) -> Result<()> {
        let c = self.client().await?;
        // One statement: concurrent failures on several replicas each count
        // (the upsert locks the row), with no transaction to retry.
        exec(
            &c,
            "INSERT INTO login_failures (key, failures, first_at) VALUES ($1, 1, $2)
             ON CONFLICT (key) DO UPDATE SET
                failures = CASE WHEN login_failures.first_at < $3 THEN 1
                                ELSE login_failures.failures + 1 END,
                first_at = CASE WHEN login_failures.first_at < $3 THEN $2
                                ELSE login_failures.first_at END",
            &[&key, &now, &since],
        )
        .await
        .map_err(db)?;
        // Windows that ended are worth nothing; failures are rare enough
        // that pruning on each costs little (the index finds them).
        exec(
            &c,
            "DELETE FROM login_failures WHERE first_at < $1",
            &[&since],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn clear_login_failures(&self, key: &str) -> Result<()> {
        let c = self.client().await?;
        exec(&c, "DELETE FROM login_failures WHERE key = $1", &[&key])
            .await
            .map_err(db)?;
        Ok(())
    }
}
