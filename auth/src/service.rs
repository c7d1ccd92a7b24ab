//! `AuthService`: everything the server and the operator CLI do with
//! identities — accounts, users, robots, credentials, tokens, nodes, key
//! rotation, audit — over an [`AuthStore`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use sha2::Digest as _;

use crate::ca::{self, NodeCa};
use crate::error::{AuthError, Result};
use crate::model::{
    Account, AccountId, AuditEvent, Credential, CredentialKind, Identity, Millis, Node,
    PrincipalKind, Role, User, UserKind, validate_namespace, validate_username,
};
use crate::ratelimit::FailureLimiter;
use crate::scope::{self, ScopeRequest};
use crate::secrets;
use crate::store::{AuditQuery, AuthStore, CaRecord, Session};
use crate::tokens::{AccessEntry, BerthClaims, Claims, Keyring, VerifiedTokens, generate_key};

/// Tunables of the auth service.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `iss` of issued tokens.
    pub issuer: String,
    /// The registry's service name: `aud` of tokens and `service` of challenges.
    pub service: String,
    /// Lifetime of user and robot tokens.
    pub token_ttl: Duration,
    /// Lifetime of node tokens.
    pub node_token_ttl: Duration,
    /// Longest (and default) lifetime of a login credential.
    pub login_credential_ttl: Duration,
    /// Longest lifetime of a refresh token (never beyond its credential's).
    pub refresh_ttl: Duration,
    /// Clock skew tolerated when checking token times.
    pub leeway_secs: u64,
    pub max_failed_logins: u32,
    pub failed_login_window: Duration,
    /// Validity of node certificates.
    pub node_cert_days: i64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            issuer: "berth".into(),
            service: "berth-registry".into(),
            token_ttl: Duration::from_secs(300),
            node_token_ttl: Duration::from_secs(600),
            login_credential_ttl: Duration::from_secs(24 * 3600),
            refresh_ttl: Duration::from_secs(24 * 3600),
            leeway_secs: 30,
            max_failed_logins: 10,
            failed_login_window: Duration::from_secs(300),
            node_cert_days: 365,
        }
    }
}

/// A token as the token endpoint returns it.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_in: u64,
    /// RFC 3339.
    pub issued_at: String,
    pub access: Vec<AccessEntry>,
}

/// A newly minted secret: shown once, stored only as a hash.
#[derive(Debug, Clone)]
pub struct MintedSecret {
    pub credential: Credential,
    pub secret: String,
}

/// A signed-in portal user.
#[derive(Debug, Clone)]
pub struct PortalSession {
    /// The cookie value (only its hash is stored).
    pub token: String,
    /// Sent back by pages on every change (header or form field).
    pub csrf: String,
    pub expires_at: Millis,
    pub identity: Identity,
}

fn session_hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// What enrolling a node hands to the operator.
#[derive(Debug, Clone)]
pub struct Enrollment {
    pub node: Node,
    pub cert_pem: String,
    /// Absent when the node sent a CSR and keeps its own key.
    pub key_pem: Option<String>,
    pub ca_pem: String,
}

#[derive(Debug, Default)]
struct Revoked {
    credentials: HashSet<String>,
    nodes: HashSet<String>,
    users: HashSet<i64>,
}

struct Inner {
    store: Arc<dyn AuthStore>,
    config: AuthConfig,
    keyring: RwLock<Arc<Keyring>>,
    /// When the keyring must be rebuilt because a key retires.
    next_retirement: AtomicI64,
    revoked: RwLock<Revoked>,
    revision: AtomicI64,
    limiter: FailureLimiter,
    ca: NodeCa,
    /// Credential id → SHA-256 of its secret, filled after an argon2 check
    /// succeeded, so that clients asking for a token per repository do not
    /// pay argon2 each time. Revocation and expiry are still checked on the
    /// stored row every time.
    verified: Mutex<HashMap<String, [u8; 32]>>,
    /// Bearer tokens already verified (see [`VerifiedTokens`]).
    verified_tokens: VerifiedTokens,
}

/// The auth service. Cheap to clone.
#[derive(Clone)]
pub struct AuthService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

fn millis(d: Duration) -> Millis {
    d.as_millis().min(i64::MAX as u128) as Millis
}

fn rfc3339(ms: Millis) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Constant-time equality of two digests (no early exit on a mismatch).
fn digest_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Robot usernames: `robot+<namespace>+<name>`.
pub fn robot_username(namespace: &str, name: &str) -> String {
    format!("robot+{namespace}+{name}")
}

/// How many verified bearer tokens are remembered: a few per active client
/// (tokens live 5 minutes), about 2 KiB each.
const VERIFIED_TOKENS: usize = 8192;

/// How far back revocations matter: tokens live at most this long.
const REVOCATION_HORIZON: Millis = 2 * 3600 * 1000;

impl AuthService {
    /// Opens the service: creates the first signing key and the node CA if
    /// the store has none, and loads revocations.
    pub async fn open(store: Arc<dyn AuthStore>, config: AuthConfig) -> Result<AuthService> {
        let now = now_millis();
        if store
            .signing_keys()
            .await?
            .iter()
            .all(|k| k.retire_at.is_some_and(|r| r <= now))
        {
            // Checked again inside the insert's transaction: another
            // process (the server and an operator CLI started together)
            // may have created the first key meanwhile, and retiring it
            // here would void the tokens it already signed.
            let key = generate_key(&secrets::random_id(16), now)?;
            store.add_first_signing_key(&key, now).await?;
        }
        let ca = match store.node_ca().await? {
            Some(c) => c,
            None => {
                let fresh = NodeCa::generate()?;
                store
                    .init_node_ca(&CaRecord {
                        cert_pem: fresh.cert_pem.clone(),
                        key_pem: fresh.key_pem().to_owned(),
                        created_at: now,
                    })
                    .await?
            }
        };
        let limiter = FailureLimiter::new(config.max_failed_logins, config.failed_login_window);
        let svc = AuthService {
            inner: Arc::new(Inner {
                store,
                config,
                keyring: RwLock::new(Arc::new(Keyring::from_keys(&[], now)?)),
                next_retirement: AtomicI64::new(i64::MAX),
                revoked: RwLock::new(Revoked::default()),
                revision: AtomicI64::new(-1),
                limiter,
                ca: NodeCa::from_pem(&ca.cert_pem, &ca.key_pem),
                verified: Mutex::new(HashMap::new()),
                verified_tokens: VerifiedTokens::new(VERIFIED_TOKENS),
            }),
        };
        svc.reload().await?;
        Ok(svc)
    }

    pub fn config(&self) -> &AuthConfig {
        &self.inner.config
    }

    pub fn store(&self) -> &Arc<dyn AuthStore> {
        &self.inner.store
    }

    /// Reloads keys and revocations if the store changed (another process,
    /// such as the operator CLI, or another replica) or a key retired.
    /// Servers call this every second or so.
    pub async fn refresh(&self) -> Result<()> {
        let rev = self.inner.store.revision().await?;
        let retiring = self.inner.next_retirement.load(Ordering::Relaxed) <= now_millis();
        if rev != self.inner.revision.load(Ordering::Relaxed) || retiring {
            self.reload().await?;
        }
        Ok(())
    }

    async fn reload(&self) -> Result<()> {
        let now = now_millis();
        let rev = self.inner.store.revision().await?;
        let keys = self.inner.store.signing_keys().await?;
        let ring = Keyring::from_keys(&keys, now)?;
        let next = keys
            .iter()
            .filter_map(|k| k.retire_at)
            .filter(|r| *r > now)
            .min()
            .unwrap_or(i64::MAX);
        let r = self
            .inner
            .store
            .revocations(now - REVOCATION_HORIZON)
            .await?;
        *self.inner.keyring.write() = Arc::new(ring);
        self.inner.next_retirement.store(next, Ordering::Relaxed);
        {
            let mut revoked = self.inner.revoked.write();
            revoked.credentials = r.credentials.into_iter().collect();
            revoked.nodes = r.nodes.into_iter().collect();
            revoked.users = r.users.into_iter().collect();
        }
        self.inner.revision.store(rev, Ordering::Relaxed);
        Ok(())
    }

    // --- accounts, users, robots --------------------------------------------------

    pub async fn create_account(&self, name: &str, namespace: &str) -> Result<Account> {
        if name.trim().is_empty() || name.len() > 200 {
            return Err(AuthError::Invalid(
                "account name must be 1 to 200 characters".into(),
            ));
        }
        validate_namespace(namespace)?;
        self.inner
            .store
            .create_account(name, namespace, now_millis())
            .await
    }

    pub async fn account(&self, name: &str) -> Result<Account> {
        self.inner
            .store
            .account_by_name(name)
            .await?
            .ok_or_else(|| AuthError::NotFound(format!("account {name:?}")))
    }

    pub async fn accounts(&self) -> Result<Vec<Account>> {
        self.inner.store.list_accounts().await
    }

    pub async fn account_by_id(&self, id: i64) -> Result<Account> {
        self.inner
            .store
            .account_by_id(id)
            .await?
            .ok_or_else(|| AuthError::NotFound(format!("account {id}")))
    }

    pub async fn create_user(
        &self,
        account: &str,
        username: &str,
        role: Role,
        password: Option<&str>,
    ) -> Result<User> {
        validate_username(username)?;
        if username.starts_with("robot+") {
            return Err(AuthError::Invalid(
                "usernames starting with robot+ are reserved for robots".into(),
            ));
        }
        let account = self.account(account).await?;
        let hash = password
            .map(|p| {
                if p.len() < 8 {
                    Err(AuthError::Invalid(
                        "passwords must be at least 8 characters".into(),
                    ))
                } else {
                    secrets::hash(p)
                }
            })
            .transpose()?;
        self.inner
            .store
            .create_user(
                account.id,
                username,
                UserKind::User,
                role,
                hash.as_deref(),
                now_millis(),
            )
            .await
    }

    pub async fn create_robot(&self, account: &str, name: &str, role: Role) -> Result<User> {
        validate_username(name)?;
        let account = self.account(account).await?;
        let username = robot_username(&account.namespace, name);
        self.inner
            .store
            .create_user(
                account.id,
                &username,
                UserKind::Robot,
                role,
                None,
                now_millis(),
            )
            .await
    }

    pub async fn user(&self, username: &str) -> Result<User> {
        self.inner
            .store
            .user_by_name(username)
            .await?
            .ok_or_else(|| AuthError::NotFound(format!("user {username:?}")))
    }

    pub async fn users(&self, account: &str) -> Result<Vec<User>> {
        let account = self.account(account).await?;
        self.inner.store.list_users(account.id).await
    }

    pub async fn set_password(&self, username: &str, password: &str) -> Result<()> {
        if password.len() < 8 {
            return Err(AuthError::Invalid(
                "passwords must be at least 8 characters".into(),
            ));
        }
        let user = self.user(username).await?;
        self.inner
            .store
            .set_password(user.id, &secrets::hash(password)?)
            .await?;
        Ok(())
    }

    pub async fn set_role(&self, username: &str, role: Role) -> Result<()> {
        let user = self.user(username).await?;
        self.inner.store.set_role(user.id, role).await?;
        Ok(())
    }

    /// Disables a user or robot; its credentials and tokens stop working.
    pub async fn disable_user(&self, username: &str) -> Result<()> {
        let user = self.user(username).await?;
        self.inner.store.disable_user(user.id, now_millis()).await?;
        self.reload().await
    }

    // --- credentials --------------------------------------------------------------

    /// Creates a credential; `expires_at` computes its expiry from the
    /// creation instant, so that a 24 h credential lasts exactly 24 h.
    async fn mint(
        &self,
        user: &User,
        kind: CredentialKind,
        expires_at: impl FnOnce(Millis) -> Option<Millis>,
        description: Option<&str>,
        parent: Option<&str>,
    ) -> Result<MintedSecret> {
        let now = now_millis();
        let id = secrets::random_id(12);
        let secret = secrets::random_token(32);
        let credential = Credential {
            id: id.clone(),
            user_id: user.id,
            kind,
            secret_hash: secrets::hash(&secret)?,
            description: description.map(str::to_owned),
            created_at: now,
            expires_at: expires_at(now),
            revoked_at: None,
            parent_id: parent.map(str::to_owned),
        };
        self.inner.store.insert_credential(&credential).await?;
        Ok(MintedSecret {
            secret: secrets::format_credential(kind, &id, &secret),
            credential,
        })
    }

    /// Mints a registry login credential (`docker login -p`), valid `ttl`
    /// (at most, and by default, `login_credential_ttl`).
    pub async fn mint_login_credential(
        &self,
        username: &str,
        ttl: Option<Duration>,
        description: Option<&str>,
    ) -> Result<MintedSecret> {
        let user = self.user(username).await?;
        if user.kind != UserKind::User || user.disabled_at.is_some() {
            return Err(AuthError::Invalid(format!(
                "{username:?} is not an active user"
            )));
        }
        let max = self.inner.config.login_credential_ttl;
        let ttl = ttl.unwrap_or(max);
        if ttl.is_zero() || ttl > max {
            return Err(AuthError::Invalid(format!(
                "a login credential lasts between 1 s and {} s",
                max.as_secs()
            )));
        }
        self.mint(
            &user,
            CredentialKind::Login,
            |now| Some(now + millis(ttl)),
            description,
            None,
        )
        .await
    }

    /// Creates an API key for a robot, valid until revoked or `ttl`.
    pub async fn create_api_key(
        &self,
        robot_username: &str,
        ttl: Option<Duration>,
        description: Option<&str>,
    ) -> Result<MintedSecret> {
        let user = self.user(robot_username).await?;
        if user.kind != UserKind::Robot || user.disabled_at.is_some() {
            return Err(AuthError::Invalid(format!(
                "{robot_username:?} is not an active robot"
            )));
        }
        let expires = |now| ttl.map(|t| now + millis(t));
        self.mint(&user, CredentialKind::ApiKey, expires, description, None)
            .await
    }

    pub async fn credentials(&self, username: &str) -> Result<Vec<Credential>> {
        let user = self.user(username).await?;
        self.inner.store.list_credentials(user.id).await
    }

    pub async fn credential(&self, id: &str) -> Result<Credential> {
        self.inner
            .store
            .credential(id)
            .await?
            .ok_or_else(|| AuthError::NotFound(format!("credential {id:?}")))
    }

    /// Revokes a credential (and its refresh tokens); takes effect at once
    /// in this process and within a refresh interval elsewhere.
    pub async fn revoke_credential(&self, id: &str) -> Result<bool> {
        let done = self.inner.store.revoke_credential(id, now_millis()).await?;
        self.inner.verified.lock().remove(id);
        self.reload().await?;
        Ok(done)
    }

    // --- authentication ------------------------------------------------------------

    /// Refuses a login attempt while its user or source is locked out.
    async fn throttle(&self, username: &str, source: Option<&str>) -> Result<()> {
        let keys = [
            Some(format!("user:{username}")),
            source.map(|s| format!("ip:{s}")),
        ];
        for k in keys.iter().flatten() {
            if let Some(retry_after_secs) = self.locked_out(k).await? {
                return Err(AuthError::RateLimited { retry_after_secs });
            }
        }
        Ok(())
    }

    /// Seconds until `key` may try again, while it is locked out. Counted
    /// in the store when replicas share it (a client must not get a fresh
    /// allowance from each replica), else in this process's memory.
    async fn locked_out(&self, key: &str) -> Result<Option<u64>> {
        let limiter = &self.inner.limiter;
        if !self.inner.store.keeps_login_failures() {
            return Ok(limiter.check(key).err());
        }
        let now = now_millis();
        let window = limiter.window_millis();
        Ok(
            match self.inner.store.login_failures(key, now - window).await? {
                Some((failures, first)) if failures >= limiter.max_failures() => {
                    Some((u64::try_from(first + window - now).unwrap_or(0) / 1000).max(1))
                }
                _ => None,
            },
        )
    }

    async fn failed(&self, username: &str, source: Option<&str>) {
        let keys = [
            Some(format!("user:{username}")),
            source.map(|s| format!("ip:{s}")),
        ];
        for k in keys.iter().flatten() {
            if !self.inner.store.keeps_login_failures() {
                self.inner.limiter.failure(k);
                continue;
            }
            let now = now_millis();
            let since = now - self.inner.limiter.window_millis();
            if let Err(e) = self.inner.store.record_login_failure(k, now, since).await {
                // The attempt is refused anyway; only the count is lost.
                tracing::warn!(key = %k, error = %e, "could not count a failed login");
            }
        }
    }

    async fn succeeded(&self, username: &str) {
        let key = format!("user:{username}");
        if !self.inner.store.keeps_login_failures() {
            self.inner.limiter.success(&key);
        } else if let Err(e) = self.inner.store.clear_login_failures(&key).await {
            tracing::warn!(key = %key, error = %e, "could not clear failed logins");
        }
    }

    /// Checks a presented secret against a credential, via the verified
    /// cache or argon2 (on the blocking pool: it takes tens of ms).
    async fn secret_matches(&self, credential: &Credential, secret: &str) -> bool {
        let presented: [u8; 32] = sha2::Sha256::digest(secret.as_bytes()).into();
        if let Some(known) = self.inner.verified.lock().get(&credential.id)
            && digest_eq(known, &presented)
        {
            return true;
        }
        let (s, h) = (secret.to_owned(), credential.secret_hash.clone());
        let ok = tokio::task::spawn_blocking(move || secrets::verify(&s, &h))
            .await
            .unwrap_or(false);
        if ok {
            self.inner
                .verified
                .lock()
                .insert(credential.id.clone(), presented);
        }
        ok
    }

    async fn identity_for(&self, user: &User, credential_id: Option<String>) -> Result<Identity> {
        let account = self.account_by_id(user.account_id).await?;
        Ok(Identity {
            subject: user.username.clone(),
            account_id: account.id,
            namespace: account.namespace,
            role: user.role,
            kind: match user.kind {
                UserKind::User => PrincipalKind::User,
                UserKind::Robot => PrincipalKind::Robot,
            },
            credential_id,
            node_id: None,
            user_id: Some(user.id),
        })
    }

    /// Authenticates a client presenting `username` and a login credential
    /// or API key (what `docker login` sends). Rate-limited per user and
    /// per source; failures are audited.
    pub async fn authenticate(
        &self,
        username: &str,
        secret: &str,
        source: Option<&str>,
    ) -> Result<Identity> {
        self.throttle(username, source).await?;
        match self
            .check_credential(
                username,
                secret,
                &[CredentialKind::Login, CredentialKind::ApiKey],
            )
            .await
        {
            Ok((user, cred)) => {
                self.succeeded(username).await;
                self.identity_for(&user, Some(cred.id)).await
            }
            Err(e) => {
                self.failed(username, source).await;
                // Attributed to the account of the user named, if any, so
                // that `admin audit --account` shows attempts on its users.
                let account_id = match self.inner.store.user_by_name(username).await {
                    Ok(Some(u)) => Some(u.account_id),
                    _ => None,
                };
                self.audit(AuditEvent {
                    at: now_millis(),
                    account_id,
                    actor: username.chars().take(128).collect(),
                    action: "login".into(),
                    target: None,
                    source: source.map(str::to_owned),
                    outcome: "denied".into(),
                    detail: Some(e.to_string()),
                })
                .await;
                Err(AuthError::Unauthenticated)
            }
        }
    }

    async fn check_credential(
        &self,
        username: &str,
        secret: &str,
        kinds: &[CredentialKind],
    ) -> Result<(User, Credential)> {
        let now = now_millis();
        let parsed = secrets::parse_credential(secret).filter(|(k, _, _)| kinds.contains(k));
        let user = self.inner.store.user_by_name(username).await?;
        let cred = match parsed {
            Some((_, id, _)) => self.inner.store.credential(id).await?,
            None => None,
        };
        match (user, cred, parsed) {
            (Some(user), Some(cred), Some((_, _, sec)))
                if cred.user_id == user.id && user.disabled_at.is_none() && cred.usable_at(now) =>
            {
                if self.secret_matches(&cred, sec).await {
                    Ok((user, cred))
                } else {
                    Err(AuthError::Unauthenticated)
                }
            }
            _ => {
                // Same work as a real check, so timing tells nothing.
                let s = secret.to_owned();
                let _ =
                    tokio::task::spawn_blocking(move || secrets::verify(&s, secrets::decoy_hash()))
                        .await;
                Err(AuthError::Unauthenticated)
            }
        }
    }

    /// Authenticates a user by password (portal sign-in).
    pub async fn authenticate_password(
        &self,
        username: &str,
        password: &str,
        source: Option<&str>,
    ) -> Result<Identity> {
        self.throttle(username, source).await?;
        let user = self.inner.store.user_by_name(username).await?;
        let (hash, active) = match &user {
            Some(u) => (
                u.password_hash
                    .clone()
                    .unwrap_or_else(|| secrets::decoy_hash().to_owned()),
                u.password_hash.is_some() && u.disabled_at.is_none() && u.kind == UserKind::User,
            ),
            None => (secrets::decoy_hash().to_owned(), false),
        };
        let p = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || secrets::verify(&p, &hash))
            .await
            .unwrap_or(false);
        match user {
            Some(user) if ok && active => {
                self.succeeded(username).await;
                self.identity_for(&user, None).await
            }
            _ => {
                self.failed(username, source).await;
                Err(AuthError::Unauthenticated)
            }
        }
    }

    /// Authenticates an OAuth2 refresh token.
    pub async fn authenticate_refresh(
        &self,
        refresh_token: &str,
        source: Option<&str>,
    ) -> Result<Identity> {
        let Some((CredentialKind::Refresh, id, _)) = secrets::parse_credential(refresh_token)
        else {
            return Err(AuthError::Unauthenticated);
        };
        let cred = self
            .inner
            .store
            .credential(id)
            .await?
            .ok_or(AuthError::Unauthenticated)?;
        let user = self
            .inner
            .store
            .user_by_id(cred.user_id)
            .await?
            .ok_or(AuthError::Unauthenticated)?;
        let checked = self
            .check_credential(&user.username, refresh_token, &[CredentialKind::Refresh])
            .await;
        if checked.is_err() {
            self.failed(&user.username, source).await;
        }
        let (user, cred) = checked?;
        let parent = match &cred.parent_id {
            Some(p) => self.inner.store.credential(p).await?,
            None => None,
        };
        match parent {
            Some(p) if p.usable_at(now_millis()) => self.identity_for(&user, Some(p.id)).await,
            _ => Err(AuthError::Unauthenticated),
        }
    }

    /// Issues a refresh token bound to the identity's credential.
    pub async fn issue_refresh_token(&self, identity: &Identity) -> Result<String> {
        let parent_id = identity
            .credential_id
            .as_deref()
            .ok_or_else(|| AuthError::Invalid("refresh tokens need a credential".into()))?;
        let parent = self.credential(parent_id).await?;
        let user = self
            .inner
            .store
            .user_by_id(parent.user_id)
            .await?
            .ok_or_else(|| AuthError::NotFound("user".into()))?;
        let refresh_ttl = millis(self.inner.config.refresh_ttl);
        // Never outlives the credential it came from.
        let expires = |now: Millis| {
            let cap = now + refresh_ttl;
            Some(parent.expires_at.map_or(cap, |e| e.min(cap)))
        };
        Ok(self
            .mint(
                &user,
                CredentialKind::Refresh,
                expires,
                None,
                Some(parent_id),
            )
            .await?
            .secret)
    }

    // --- tokens ---------------------------------------------------------------------

    /// The claims a token for `identity` asking for `requests` carries:
    /// the part of the request the identity may have.
    pub fn claims_for(&self, identity: &Identity, requests: &[ScopeRequest]) -> Claims {
        let access = scope::grant(identity, requests);
        let secs = now_millis() / 1000;
        let ttl = match identity.kind {
            PrincipalKind::Node => self.inner.config.node_token_ttl,
            _ => self.inner.config.token_ttl,
        };
        Claims {
            iss: self.inner.config.issuer.clone(),
            sub: identity.subject.clone(),
            aud: self.inner.config.service.clone(),
            exp: secs + ttl.as_secs() as i64,
            nbf: secs,
            iat: secs,
            jti: secrets::random_token(16),
            access,
            berth: BerthClaims {
                acct: identity.account_id,
                ns: identity.namespace.clone(),
                kind: identity.kind,
                cred: identity.credential_id.clone(),
                node: identity.node_id.clone(),
                uid: identity.user_id,
            },
        }
    }

    /// Issues a signed token granting `identity` the part of `requests` it may have.
    pub fn issue_token(
        &self,
        identity: &Identity,
        requests: &[ScopeRequest],
    ) -> Result<IssuedToken> {
        let claims = self.claims_for(identity, requests);
        let token = self.inner.keyring.read().sign(&claims)?;
        Ok(IssuedToken {
            token,
            expires_in: (claims.exp - claims.iat).max(0) as u64,
            issued_at: rfc3339(claims.iat * 1000),
            access: claims.access,
        })
    }

    /// Verifies a bearer token: signature, key, issuer, audience, times,
    /// and that nothing it was issued from has been revoked since.
    pub fn verify_token(&self, token: &str) -> Result<Claims> {
        let keyring = self.inner.keyring.read().clone();
        let c = self.inner.verified_tokens.verify(
            &keyring,
            token,
            &self.inner.config.issuer,
            &self.inner.config.service,
            now_millis(),
            self.inner.config.leeway_secs,
        )?;
        let revoked = self.inner.revoked.read();
        let gone = c
            .berth
            .cred
            .as_ref()
            .is_some_and(|id| revoked.credentials.contains(id))
            || c.berth
                .node
                .as_ref()
                .is_some_and(|id| revoked.nodes.contains(id))
            || c.berth.uid.is_some_and(|id| revoked.users.contains(&id));
        if gone {
            return Err(AuthError::Token("revoked".into()));
        }
        Ok(c)
    }

    /// Signs claims with the current key (tests and tools forging edge cases).
    pub fn sign_claims(&self, claims: &Claims) -> Result<String> {
        self.inner.keyring.read().sign(claims)
    }

    /// Starts signing with a new key. The previous keys keep verifying
    /// until every token they signed has expired.
    pub async fn rotate_signing_key(&self) -> Result<String> {
        let now = now_millis();
        let key = generate_key(&secrets::random_id(16), now)?;
        let longest = self
            .inner
            .config
            .token_ttl
            .max(self.inner.config.node_token_ttl);
        let grace = millis(longest) + (self.inner.config.leeway_secs as Millis) * 1000;
        self.inner.store.add_signing_key(&key, now + grace).await?;
        self.reload().await?;
        Ok(key.kid)
    }

    // --- nodes -------------------------------------------------------------------------

    pub fn node_ca_pem(&self) -> &str {
        &self.inner.ca.cert_pem
    }

    /// Server certificate for the node endpoint (signed by the node CA, so
    /// nodes trust it through the CA they were enrolled with).
    pub fn node_endpoint_certificate(&self, names: &[String]) -> Result<(String, String)> {
        let issued = self.inner.ca.issue_server(names, 825)?;
        Ok((issued.cert_pem, issued.key_pem.unwrap_or_default()))
    }

    pub fn self_signed_server_certificate(names: &[String]) -> Result<(String, String)> {
        ca::self_signed_server(names)
    }

    /// Enrolls node `name` into `account`: a fresh key and certificate, or
    /// a certificate for the node's own CSR. Enrolling a name again
    /// replaces its certificate.
    pub async fn enroll_node(
        &self,
        account: &str,
        name: &str,
        csr_pem: Option<&str>,
    ) -> Result<Enrollment> {
        validate_username(name)?;
        let account = self.account(account).await?;
        let id = uuid::Uuid::new_v4().to_string();
        let days = self.inner.config.node_cert_days;
        let issued = match csr_pem {
            Some(csr) => self.inner.ca.sign_node_csr(&id, csr, days)?,
            None => self.inner.ca.issue_node(&id, days)?,
        };
        let node = Node {
            id: id.clone(),
            account_id: account.id,
            name: name.to_owned(),
            cert_serial: issued.serial,
            cert_fingerprint: issued.fingerprint,
            enrolled_at: now_millis(),
            revoked_at: None,
        };
        self.inner.store.insert_node(&node).await?;
        self.audit(AuditEvent {
            at: node.enrolled_at,
            account_id: Some(account.id),
            actor: "operator".into(),
            action: "node.enroll".into(),
            target: Some(format!("{name} ({id})")),
            source: None,
            outcome: "ok".into(),
            detail: None,
        })
        .await;
        self.reload().await?;
        Ok(Enrollment {
            node,
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            ca_pem: self.inner.ca.cert_pem.clone(),
        })
    }

    pub async fn nodes(&self, account: &str) -> Result<Vec<Node>> {
        let account = self.account(account).await?;
        self.inner.store.list_nodes(account.id).await
    }

    /// The nodes enrolled into an account, by the account's id.
    pub async fn nodes_of(&self, account_id: AccountId) -> Result<Vec<Node>> {
        self.inner.store.list_nodes(account_id).await
    }

    /// Revokes a node: it gets no new token, and its tokens stop working.
    pub async fn revoke_node(&self, id: &str) -> Result<bool> {
        let done = self.inner.store.revoke_node(id, now_millis()).await?;
        if let Some(n) = self.inner.store.node(id).await? {
            self.audit(AuditEvent {
                at: now_millis(),
                account_id: Some(n.account_id),
                actor: "operator".into(),
                action: "node.revoke".into(),
                target: Some(format!("{} ({id})", n.name)),
                source: None,
                outcome: "ok".into(),
                detail: None,
            })
            .await;
        }
        self.reload().await?;
        Ok(done)
    }

    /// A node by id (any account: callers scope it themselves).
    pub async fn node(&self, id: &str) -> Result<Option<Node>> {
        self.inner.store.node(id).await
    }

    /// Whether the node was revoked, as of the last [`AuthService::refresh`]
    /// (about a second): cheap enough to ask often, e.g. for every open
    /// control-plane connection.
    pub fn node_revoked(&self, id: &str) -> bool {
        self.inner.revoked.read().nodes.contains(id)
    }

    /// The identity of a node presenting `cert_der`, which TLS verified
    /// against the node CA. Checked against the store every time: a revoked
    /// or re-enrolled node's certificate gets nothing.
    pub async fn node_identity(&self, cert_der: &[u8]) -> Result<Identity> {
        let presented = ca::presented_node(cert_der)?;
        let node = self
            .inner
            .store
            .node(&presented.node_id)
            .await?
            .ok_or_else(|| AuthError::Forbidden("unknown node".into()))?;
        if node.revoked_at.is_some() {
            return Err(AuthError::Forbidden("node revoked".into()));
        }
        if node.cert_fingerprint != presented.fingerprint {
            return Err(AuthError::Forbidden(
                "certificate superseded by a newer enrolment".into(),
            ));
        }
        let account = self.account_by_id(node.account_id).await?;
        Ok(Identity {
            subject: format!("node:{}", node.id),
            account_id: account.id,
            namespace: account.namespace,
            role: Role::Reader,
            kind: PrincipalKind::Node,
            credential_id: None,
            node_id: Some(node.id),
            user_id: None,
        })
    }

    // --- portal sessions -------------------------------------------------------------

    /// Signs a user in with their password: a new session (cookie value and
    /// anti-CSRF token) valid `ttl`.
    pub async fn sign_in(
        &self,
        username: &str,
        password: &str,
        source: Option<&str>,
        ttl: Duration,
    ) -> Result<PortalSession> {
        let identity = match self.authenticate_password(username, password, source).await {
            Ok(i) => i,
            Err(e) => {
                self.audit(AuditEvent {
                    at: now_millis(),
                    account_id: None,
                    actor: username.chars().take(128).collect(),
                    action: "signin".into(),
                    target: None,
                    source: source.map(str::to_owned),
                    outcome: "denied".into(),
                    detail: Some(e.to_string()),
                })
                .await;
                return Err(e);
            }
        };
        let user_id = identity
            .user_id
            .ok_or_else(|| AuthError::Invalid("only users sign in".into()))?;
        let token = secrets::random_token(32);
        let now = now_millis();
        let session = Session {
            id_hash: session_hash(&token),
            user_id,
            csrf: secrets::random_token(24),
            created_at: now,
            expires_at: now + millis(ttl),
        };
        self.inner.store.create_session(&session).await?;
        self.audit(AuditEvent {
            at: now,
            account_id: Some(identity.account_id),
            actor: identity.subject.clone(),
            action: "signin".into(),
            target: None,
            source: source.map(str::to_owned),
            outcome: "ok".into(),
            detail: None,
        })
        .await;
        Ok(PortalSession {
            token,
            csrf: session.csrf,
            expires_at: session.expires_at,
            identity,
        })
    }

    /// The identity and anti-CSRF token of a session cookie value.
    pub async fn session(&self, token: &str) -> Result<PortalSession> {
        let s = self
            .inner
            .store
            .session(&session_hash(token))
            .await?
            .ok_or(AuthError::Unauthenticated)?;
        if s.expires_at <= now_millis() {
            return Err(AuthError::Unauthenticated);
        }
        let user = self
            .inner
            .store
            .user_by_id(s.user_id)
            .await?
            .filter(|u| u.disabled_at.is_none())
            .ok_or(AuthError::Unauthenticated)?;
        Ok(PortalSession {
            token: token.to_owned(),
            csrf: s.csrf,
            expires_at: s.expires_at,
            identity: self.identity_for(&user, None).await?,
        })
    }

    pub async fn sign_out(&self, token: &str) -> Result<()> {
        self.inner
            .store
            .delete_session(&session_hash(token))
            .await?;
        Ok(())
    }

    // --- audit ---------------------------------------------------------------------------

    /// Records an audit event. Never fails the caller: a lost audit line is
    /// logged loudly instead.
    pub async fn audit(&self, event: AuditEvent) {
        if let Err(e) = self.inner.store.audit(&event).await {
            tracing::error!(error = %e, action = %event.action, actor = %event.actor, "audit log write failed");
        }
    }

    pub async fn audit_log(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>> {
        self.inner.store.audit_query(query).await
    }
}
