//! Storage of the auth domain: the only code that knows the auth schema.
//! [`AuthStore`] is the seam; [`sqlite::SqliteAuthStore`] is the embedded
//! default (a database file in the data directory, beside the registry's);
//! [`postgres::PgAuthStore`] is shared by scale-out replicas.

use async_trait::async_trait;

use crate::error::Result;
use crate::model::{
    Account, AccountId, AuditEvent, Credential, Millis, Node, Role, User, UserId, UserKind,
};

pub mod postgres;
pub mod sqlite;

/// A token signing key (ES256). Private keys live in the database, in the
/// data directory, so that every replica signs and verifies alike.
#[derive(Debug, Clone)]
pub struct SigningKey {
    pub kid: String,
    pub private_pem: String,
    pub public_pem: String,
    pub created_at: Millis,
    /// After this instant the key no longer verifies anything.
    pub retire_at: Option<Millis>,
}

/// The node certificate authority's certificate and key.
#[derive(Debug, Clone)]
pub struct CaRecord {
    pub cert_pem: String,
    pub key_pem: String,
    pub created_at: Millis,
}

/// Identities revoked recently enough that tokens issued to them may still
/// be unexpired; the token verifier refuses them.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    pub credentials: Vec<String>,
    pub nodes: Vec<String>,
    pub users: Vec<UserId>,
}

/// A portal sign-in session.
#[derive(Debug, Clone)]
pub struct Session {
    /// SHA-256 (hex) of the cookie value: a stolen database copy yields no
    /// usable session.
    pub id_hash: String,
    pub user_id: UserId,
    /// The anti-CSRF token pages send back on every change.
    pub csrf: String,
    pub created_at: Millis,
    pub expires_at: Millis,
}

/// Query of the audit log.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub account_id: Option<AccountId>,
    pub since: Option<Millis>,
    pub action: Option<String>,
    pub limit: usize,
}

#[async_trait]
pub trait AuthStore: Send + Sync + 'static {
    // accounts and users
    async fn create_account(&self, name: &str, namespace: &str, now: Millis) -> Result<Account>;
    async fn account_by_name(&self, name: &str) -> Result<Option<Account>>;
    async fn account_by_id(&self, id: AccountId) -> Result<Option<Account>>;
    async fn list_accounts(&self) -> Result<Vec<Account>>;
    async fn create_user(
        &self,
        account_id: AccountId,
        username: &str,
        kind: UserKind,
        role: Role,
        password_hash: Option<&str>,
        now: Millis,
    ) -> Result<User>;
    async fn user_by_name(&self, username: &str) -> Result<Option<User>>;
    async fn user_by_id(&self, id: UserId) -> Result<Option<User>>;
    async fn list_users(&self, account_id: AccountId) -> Result<Vec<User>>;
    async fn set_password(&self, id: UserId, password_hash: &str) -> Result<bool>;
    async fn set_role(&self, id: UserId, role: Role) -> Result<bool>;
    /// Disables a user and revokes its credentials.
    async fn disable_user(&self, id: UserId, now: Millis) -> Result<bool>;

    // credentials
    async fn insert_credential(&self, c: &Credential) -> Result<()>;
    async fn credential(&self, id: &str) -> Result<Option<Credential>>;
    async fn list_credentials(&self, user_id: UserId) -> Result<Vec<Credential>>;
    /// Revokes a credential and the refresh tokens issued from it.
    async fn revoke_credential(&self, id: &str, now: Millis) -> Result<bool>;

    // nodes
    async fn insert_node(&self, n: &Node) -> Result<()>;
    async fn node(&self, id: &str) -> Result<Option<Node>>;
    async fn list_nodes(&self, account_id: AccountId) -> Result<Vec<Node>>;
    async fn revoke_node(&self, id: &str, now: Millis) -> Result<bool>;

    // revocation snapshot for token verification
    /// A number that changes whenever revocations or signing keys change.
    async fn revision(&self) -> Result<i64>;
    async fn revocations(&self, since: Millis) -> Result<Revocations>;

    // signing keys and the node CA
    async fn signing_keys(&self) -> Result<Vec<SigningKey>>;
    /// Adds a key and schedules every other key's retirement at `retire_others_at`.
    async fn add_signing_key(&self, key: &SigningKey, retire_others_at: Millis) -> Result<()>;
    /// Adds `key` only if no key is active at `now` (retire_at unset or
    /// later), in one transaction; whether it was added. Two processes
    /// opening the same store at once then create one first key, and
    /// neither retires a key the other is already signing with.
    async fn add_first_signing_key(&self, key: &SigningKey, now: Millis) -> Result<bool>;
    async fn node_ca(&self) -> Result<Option<CaRecord>>;
    /// Stores the CA unless one exists; returns the one in force.
    async fn init_node_ca(&self, ca: &CaRecord) -> Result<CaRecord>;

    // portal sessions
    async fn create_session(&self, session: &Session) -> Result<()>;
    async fn session(&self, id_hash: &str) -> Result<Option<Session>>;
    async fn delete_session(&self, id_hash: &str) -> Result<bool>;

    // audit
    async fn audit(&self, e: &AuditEvent) -> Result<()>;
    async fn audit_query(&self, q: &AuditQuery) -> Result<Vec<AuditEvent>>;

    // failed-login counters
    /// Whether this store keeps the failed-login counters, for every process
    /// that shares it. The embedded store, which one process owns, does not:
    /// that process counts in memory, which costs no write per failure.
    fn keeps_login_failures(&self) -> bool {
        false
    }
    /// The failures of `key` in its current window, if that window started
    /// at or after `since`: (failures, start of the window).
    async fn login_failures(&self, _key: &str, _since: Millis) -> Result<Option<(u32, Millis)>> {
        Ok(None)
    }
    /// Counts one failure of `key` at `now`, starting a new window if the
    /// current one started before `since`.
    async fn record_login_failure(&self, _key: &str, _now: Millis, _since: Millis) -> Result<()> {
        Ok(())
    }
    /// Forgets the failures of `key` (a successful login).
    async fn clear_login_failures(&self, _key: &str) -> Result<()> {
        Ok(())
    }
}
