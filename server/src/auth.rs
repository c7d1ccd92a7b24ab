//! The authorisation seam of the request path.
//!
//! Every handler states what it needs — a scope on a repository with the
//! actions it performs, the catalog, or an operator action — and asks the
//! configured [`Authorizer`] before it touches the registry. Until accounts
//! land, [`OpenAccess`] allows everything; the server then refuses to listen
//! anywhere but loopback.

use async_trait::async_trait;
use http::HeaderMap;
use registry::RepoName;

use crate::http::oci::error::OciError;

/// What a request does to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }
}

/// What a request needs to be allowed to do.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// `GET /v2/`.
    Base,
    /// `GET /v2/_catalog` (results are filtered to what the caller may see).
    Catalog,
    /// Actions on one repository.
    Repository {
        name: &'a RepoName,
        actions: &'a [Action],
    },
    /// Operator actions (GC, repository deletion through the Berth API).
    Admin,
}

impl<'a> Scope<'a> {
    pub fn repository(name: &'a RepoName, actions: &'a [Action]) -> Self {
        Scope::Repository { name, actions }
    }
}

/// Who made an allowed request, for logs and audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
}

/// Decides whether a request may proceed. Refusals are ready-made OCI
/// errors (401 with a challenge, or 403).
#[async_trait]
pub trait Authorizer: Send + Sync + 'static {
    async fn authorize(&self, headers: &HeaderMap, scope: Scope<'_>)
    -> Result<Principal, OciError>;
}

/// Allows every request: the pre-accounts mode, served on loopback only.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenAccess;

#[async_trait]
impl Authorizer for OpenAccess {
    async fn authorize(
        &self,
        _headers: &HeaderMap,
        _scope: Scope<'_>,
    ) -> Result<Principal, OciError> {
        Ok(Principal {
            subject: "anonymous".into(),
        })
    }
}
