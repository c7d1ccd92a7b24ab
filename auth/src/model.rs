//! The identity model: accounts owning one namespace, users and robots with
//! roles, credentials, nodes, audit events, and the authenticated
//! [`Identity`] every check works from.

use serde::{Deserialize, Serialize};

use crate::error::AuthError;

pub type AccountId = i64;
pub type UserId = i64;
/// Unix time in milliseconds.
pub type Millis = i64;

/// What a role may do in its account's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, deletes included.
    Admin,
    /// Push and pull.
    Developer,
    /// Pull only.
    Reader,
}

impl Role {
    pub fn parse(s: &str) -> Result<Role, AuthError> {
        match s {
            "admin" => Ok(Role::Admin),
            "developer" => Ok(Role::Developer),
            "reader" => Ok(Role::Reader),
            _ => Err(AuthError::Invalid(format!(
                "unknown role {s:?} (admin, developer or reader)"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Developer => "developer",
            Role::Reader => "reader",
        }
    }

    pub fn allows(self, action: Action) -> bool {
        matches!(
            (self, action),
            (Role::Admin, _)
                | (Role::Developer, Action::Pull | Action::Push)
                | (Role::Reader, Action::Pull)
        )
    }
}

/// An action on a repository, as in token scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }
}

/// A tenant. Every repository of the account is `<namespace>/<path>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    pub id: AccountId,
    pub name: String,
    pub namespace: String,
    pub created_at: Millis,
}

/// Humans sign in with a password and mint login credentials; robots
/// (CI) authenticate with long-lived API keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UserKind {
    User,
    Robot,
}

impl UserKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UserKind::User => "user",
            UserKind::Robot => "robot",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: UserId,
    pub account_id: AccountId,
    pub username: String,
    pub kind: UserKind,
    pub role: Role,
    #[serde(skip)]
    pub password_hash: Option<String>,
    pub created_at: Millis,
    pub disabled_at: Option<Millis>,
}

/// Kinds of secrets a client presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// A registry login credential (`docker login -p`), ~24 h.
    Login,
    /// A robot's API key, long-lived and revocable.
    ApiKey,
    /// An OAuth2 refresh token, bound to the credential it came from.
    Refresh,
}

impl CredentialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Login => "login",
            CredentialKind::ApiKey => "api_key",
            CredentialKind::Refresh => "refresh",
        }
    }

    /// The prefix of the secret string, so a leaked secret is recognisable.
    pub fn prefix(self) -> &'static str {
        match self {
            CredentialKind::Login => "bcl",
            CredentialKind::ApiKey => "bck",
            CredentialKind::Refresh => "bcr",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "login" => Some(CredentialKind::Login),
            "api_key" => Some(CredentialKind::ApiKey),
            "refresh" => Some(CredentialKind::Refresh),
            _ => None,
        }
    }
}

/// A stored credential; the secret itself is only an argon2 hash.
#[derive(Debug, Clone, Serialize)]
pub struct Credential {
    pub id: String,
    pub user_id: UserId,
    pub kind: CredentialKind,
    #[serde(skip)]
    pub secret_hash: String,
    pub description: Option<String>,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
    /// For refresh tokens: the credential they were issued from.
    pub parent_id: Option<String>,
}

impl Credential {
    pub fn usable_at(&self, now: Millis) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }
}

/// An enrolled node appliance.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub id: String,
    pub account_id: AccountId,
    pub name: String,
    pub cert_serial: String,
    /// SHA-256 of the certificate's DER: only the latest enrolment's
    /// certificate is accepted.
    pub cert_fingerprint: String,
    pub enrolled_at: Millis,
    pub revoked_at: Option<Millis>,
}

/// What kind of principal an identity is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKind {
    User,
    Robot,
    Node,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Username, or `node:<id>`.
    pub subject: String,
    pub account_id: AccountId,
    pub namespace: String,
    pub role: Role,
    pub kind: PrincipalKind,
    /// The credential presented (login credential or API key), if any.
    pub credential_id: Option<String>,
    pub node_id: Option<String>,
    pub user_id: Option<UserId>,
}

/// One line of the audit log.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    pub at: Millis,
    pub account_id: Option<AccountId>,
    /// Who acted: a username, `node:<id>`, `operator`, or what was claimed.
    pub actor: String,
    /// e.g. `login`, `token`, `push`, `delete`, `node.enroll`.
    pub action: String,
    pub target: Option<String>,
    /// Source address, when known.
    pub source: Option<String>,
    /// `ok` or `denied` (with the reason in `detail`).
    pub outcome: String,
    pub detail: Option<String>,
}

/// Validates an account namespace: a DNS-like name (`acme.example.io`)
/// that is also a valid first path component of repository names.
pub fn validate_namespace(ns: &str) -> Result<(), AuthError> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if ns.is_empty() || ns.len() > 200 || !ns.split('.').all(label_ok) {
        return Err(AuthError::Invalid(format!(
            "namespace {ns:?} must be a DNS-like name of lowercase letters, digits and '-', e.g. acme.example.io"
        )));
    }
    // It must also parse as the first component of a repository name.
    registry::RepoName::parse(&format!("{ns}/x"))
        .map_err(|e| AuthError::Invalid(format!("namespace {ns:?}: {e}")))?;
    Ok(())
}

/// Usernames: what `docker login -u` accepts without quoting trouble.
pub fn validate_username(name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(AuthError::Invalid(format!(
            "username {name:?} may hold letters, digits and . _ - @ + (1 to 128 characters)"
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn roles_allow_what_they_should() {
        assert!(Role::Admin.allows(Action::Delete));
        assert!(Role::Developer.allows(Action::Push));
        assert!(!Role::Developer.allows(Action::Delete));
        assert!(Role::Reader.allows(Action::Pull));
        assert!(!Role::Reader.allows(Action::Push));
    }

    #[test]
    fn namespaces() {
        for ok in ["acme.example.io", "acme", "a-b.c1"] {
            validate_namespace(ok).unwrap();
        }
        for bad in ["", "Acme.io", "-a.io", "a..b", "a_b", "a/b", "a.io-"] {
            assert!(validate_namespace(bad).is_err(), "{bad}");
        }
    }
}
