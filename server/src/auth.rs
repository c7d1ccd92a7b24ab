//! The authorisation seam of the request path.
//!
//! Every handler states what it needs — actions on a repository, the
//! catalog, or an operator action — and asks the configured [`Authorizer`]
//! before it touches the registry. [`BearerAuthorizer`] implements the
//! Docker token protocol over [`auth::AuthService`]; [`OpenAccess`] allows
//! everything and is only served on loopback (tests, local use with
//! `auth.enabled = false`).

use std::net::SocketAddr;

use async_trait::async_trait;
use auth::tokens::Claims;
use auth::{AuthError, AuthService};
use http::{HeaderMap, StatusCode, header};
use registry::RepoName;

use crate::http::oci::error::{Code, OciError};

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
    /// `GET /v2/_catalog` (results are filtered to the caller's namespace).
    Catalog,
    /// Actions on one repository.
    Repository {
        name: &'a RepoName,
        actions: &'a [Action],
    },
    /// Operator actions (on-demand GC).
    Admin,
}

impl<'a> Scope<'a> {
    pub fn repository(name: &'a RepoName, actions: &'a [Action]) -> Self {
        Scope::Repository { name, actions }
    }
}

/// What the authoriser sees of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestMeta<'a> {
    pub headers: &'a HeaderMap,
    pub peer: Option<SocketAddr>,
    pub secure: bool,
}

impl RequestMeta<'_> {
    pub fn source(&self) -> Option<String> {
        self.peer.map(|p| p.ip().to_string())
    }
}

/// Who made an allowed request, for filtering, logs and audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub account_id: Option<i64>,
    /// The namespace the caller may see; `None` means everything.
    pub namespace: Option<String>,
}

/// Decides whether a request may proceed. Refusals are ready-made OCI
/// errors (401 with a challenge, or 403).
#[async_trait]
pub trait Authorizer: Send + Sync + 'static {
    async fn authorize(
        &self,
        req: &RequestMeta<'_>,
        scope: Scope<'_>,
    ) -> Result<Principal, OciError>;
}

/// Allows every request: served on loopback only.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenAccess;

#[async_trait]
impl Authorizer for OpenAccess {
    async fn authorize(
        &self,
        _req: &RequestMeta<'_>,
        _scope: Scope<'_>,
    ) -> Result<Principal, OciError> {
        Ok(Principal {
            subject: "anonymous".into(),
            account_id: None,
            namespace: None,
        })
    }
}

/// The Docker token protocol: bearer tokens from `/auth/token` (or Basic
/// credentials directly, which scripts like `curl -u` use).
#[derive(Debug, Clone)]
pub struct BearerAuthorizer {
    auth: AuthService,
    /// `https://registry.example.com` when configured; otherwise the realm
    /// is derived from the request's Host.
    public_url: Option<String>,
}

impl BearerAuthorizer {
    pub fn new(auth: AuthService, public_url: Option<String>) -> Self {
        BearerAuthorizer {
            auth,
            public_url: public_url.map(|u| u.trim_end_matches('/').to_owned()),
        }
    }

    fn realm(&self, req: &RequestMeta<'_>) -> String {
        if let Some(u) = &self.public_url {
            return format!("{u}/auth/token");
        }
        let host = req
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| {
                !h.is_empty()
                    && h.len() < 256
                    && h.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                    })
            })
            .map(str::to_owned)
            .or_else(|| req.peer.map(|p| p.to_string()))
            .unwrap_or_else(|| "localhost".into());
        let scheme = if req.secure { "https" } else { "http" };
        format!("{scheme}://{host}/auth/token")
    }

    fn challenge(
        &self,
        req: &RequestMeta<'_>,
        scope: Option<String>,
        error: Option<&str>,
        message: &str,
    ) -> OciError {
        let mut v = format!(
            "Bearer realm=\"{}\",service=\"{}\"",
            self.realm(req),
            self.auth.config().service
        );
        if let Some(s) = &scope {
            v.push_str(&format!(",scope=\"{s}\""));
        }
        if let Some(e) = error {
            v.push_str(&format!(",error=\"{e}\""));
        }
        let mut err = OciError::new(StatusCode::UNAUTHORIZED, Code::Unauthorized, message)
            .header(header::WWW_AUTHENTICATE, &v);
        if let Some(s) = scope {
            err = err.detail(serde_json::json!([{ "Type": "repository", "Scope": s }]));
        }
        err
    }

    /// The scope string a client should ask for to do `actions`.
    fn scope_string(name: &RepoName, actions: &[Action]) -> String {
        let mut wanted: Vec<&str> = Vec::new();
        // Clients that push also read (HEAD before upload), and ask for both.
        if actions
            .iter()
            .any(|a| matches!(a, Action::Pull | Action::Push))
        {
            wanted.push("pull");
        }
        if actions.contains(&Action::Push) {
            wanted.push("push");
        }
        if actions.contains(&Action::Delete) {
            wanted.push("delete");
        }
        format!("repository:{name}:{}", wanted.join(","))
    }

    /// Claims for a request carrying Basic credentials: the identity gets
    /// exactly the token it would have got from the token endpoint.
    async fn basic_claims(
        &self,
        req: &RequestMeta<'_>,
        value: &str,
        scope: &Scope<'_>,
    ) -> Result<Claims, AuthError> {
        let (user, secret) =
            crate::http::token::decode_basic(value).ok_or(AuthError::Unauthenticated)?;
        let identity = self
            .auth
            .authenticate(&user, &secret, req.source().as_deref())
            .await?;
        let requests = match scope {
            Scope::Repository { name, actions } => {
                auth::scope::parse_scopes([Self::scope_string(name, actions).as_str()])
            }
            Scope::Catalog => auth::scope::parse_scopes(["registry:catalog:*"]),
            Scope::Base | Scope::Admin => Vec::new(),
        };
        // The same claims the token endpoint would sign, without signing:
        // the identity was just authenticated.
        Ok(self.auth.claims_for(&identity, &requests))
    }
}

#[async_trait]
impl Authorizer for BearerAuthorizer {
    async fn authorize(
        &self,
        req: &RequestMeta<'_>,
        scope: Scope<'_>,
    ) -> Result<Principal, OciError> {
        let wanted = match &scope {
            Scope::Repository { name, actions } => Some(Self::scope_string(name, actions)),
            Scope::Catalog => Some("registry:catalog:*".to_owned()),
            Scope::Base | Scope::Admin => None,
        };
        let value = req
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        // `basic`: the credentials were checked just now, so a missing
        // action is a refusal (403), not a reason to ask for a token.
        let (claims, basic) = match value {
            Some(v) if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") => {
                match self.auth.verify_token(v[7..].trim()) {
                    Ok(c) => (c, false),
                    Err(e) => {
                        tracing::debug!(error = %e, "bearer token refused");
                        return Err(self.challenge(
                            req,
                            wanted,
                            Some("invalid_token"),
                            "invalid or expired token",
                        ));
                    }
                }
            }
            Some(v) if v.len() > 6 && v[..6].eq_ignore_ascii_case("basic ") => {
                match self.basic_claims(req, &v[6..], &scope).await {
                    Ok(c) => (c, true),
                    Err(AuthError::RateLimited { retry_after_secs }) => {
                        return Err(OciError::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            Code::TooManyRequests,
                            "too many failed logins",
                        )
                        .header(header::RETRY_AFTER, &retry_after_secs.to_string()));
                    }
                    Err(_) => {
                        return Err(self.challenge(req, wanted, None, "authentication failed"));
                    }
                }
            }
            _ => return Err(self.challenge(req, wanted, None, "authentication required")),
        };
        let principal = Principal {
            subject: claims.sub.clone(),
            account_id: Some(claims.berth.acct),
            namespace: Some(claims.berth.ns.clone()),
        };
        match scope {
            Scope::Base => Ok(principal),
            Scope::Catalog if claims.allows_catalog() => Ok(principal),
            Scope::Catalog => Err(self.challenge(
                req,
                wanted,
                Some("insufficient_scope"),
                "catalog access not granted",
            )),
            Scope::Repository { name, actions } => {
                let missing: Vec<&str> = actions
                    .iter()
                    .filter(|a| !claims.allows(name.as_str(), a.as_str()))
                    .map(|a| a.as_str())
                    .collect();
                if missing.is_empty() {
                    Ok(principal)
                } else if basic || claims.mentions(name.as_str()) {
                    // The token was issued for this repository without these
                    // actions, or valid Basic credentials lack them: asking
                    // again will not help. (Without `basic`, a reader's
                    // `curl -u` DELETE got a 401, as if its credentials
                    // were wrong, while its PUT got this 403.)
                    Err(OciError::new(
                        StatusCode::FORBIDDEN,
                        Code::Denied,
                        format!(
                            "requested access to the resource is denied: {}",
                            missing.join(", ")
                        ),
                    ))
                } else {
                    Err(self.challenge(
                        req,
                        wanted,
                        Some("insufficient_scope"),
                        "authentication required",
                    ))
                }
            }
            // Operator actions go through the admin socket, never a token.
            Scope::Admin => Err(OciError::new(
                StatusCode::FORBIDDEN,
                Code::Denied,
                "operator actions are available on the admin socket only",
            )),
        }
    }
}
