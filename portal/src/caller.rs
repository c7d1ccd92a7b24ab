//! Who is calling the management API, and what they may do.
//!
//! Two ways in: the portal's session cookie (then every change must carry
//! the session's anti-CSRF token in `X-CSRF-Token`, since a browser sends the
//! cookie on its own), or `Authorization: Basic user:<login credential or
//! robot API key>` for scripts (nothing is sent implicitly, so no CSRF
//! token). With accounts disabled everything is open.

use std::net::SocketAddr;

use auth::{Action, Identity, PrincipalKind, Role};
use axum::extract::{ConnectInfo, FromRequestParts};
use base64::Engine as _;
use http::request::Parts;
use http::{HeaderMap, Method, header};
use registry::RepoName;

use crate::PortalState;
use crate::error::ApiError;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "berth_session";
/// Header carrying the anti-CSRF token on changes made through a session.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// An authenticated (or, with accounts disabled, anonymous) caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `None`: accounts are disabled and everything is allowed.
    pub identity: Option<Identity>,
    /// The session's anti-CSRF token when the caller came with a cookie.
    pub csrf: Option<String>,
}

impl Caller {
    pub fn subject(&self) -> &str {
        self.identity
            .as_ref()
            .map(|i| i.subject.as_str())
            .unwrap_or("anonymous")
    }

    /// The namespace whose repositories the caller sees; `None`: all.
    pub fn namespace(&self) -> Option<&str> {
        self.identity.as_ref().map(|i| i.namespace.as_str())
    }

    pub fn role(&self) -> Option<Role> {
        self.identity.as_ref().map(|i| i.role)
    }

    /// Deletes need the role that may delete in the registry (admin).
    pub fn can_delete(&self) -> bool {
        self.role().is_none_or(|r| r.allows(Action::Delete))
    }

    /// Whether `repo` is inside the caller's namespace. Repositories
    /// outside it are answered as unknown, never as forbidden, so that an
    /// account cannot probe another's names.
    pub fn sees(&self, repo: &RepoName) -> bool {
        match self.namespace() {
            None => true,
            Some(ns) => repo
                .as_str()
                .strip_prefix(ns)
                .is_some_and(|rest| rest.starts_with('/')),
        }
    }

    pub fn require_delete(&self) -> Result<(), ApiError> {
        if self.can_delete() {
            Ok(())
        } else {
            Err(ApiError::Denied(format!(
                "role {} may not delete; ask an account admin",
                self.role().map(Role::as_str).unwrap_or("?")
            )))
        }
    }

    /// Whether the caller may change nodes (commands, desired state): the
    /// roles that may push.
    pub fn can_operate(&self) -> bool {
        self.role().is_none_or(|r| r.allows(Action::Push))
    }

    pub fn require_operate(&self) -> Result<(), ApiError> {
        if self.can_operate() {
            Ok(())
        } else {
            Err(ApiError::Denied(format!(
                "role {} may not change nodes; ask an account admin or developer",
                self.role().map(Role::as_str).unwrap_or("?")
            )))
        }
    }

    /// Users (not robots) mint login credentials for themselves.
    pub fn is_user(&self) -> bool {
        self.identity
            .as_ref()
            .is_some_and(|i| i.kind == PrincipalKind::User)
    }
}

/// The value of cookie `name` in the request, if any.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The client's address, for login throttling and the audit log.
pub fn source(parts_ext: &http::Extensions) -> Option<String> {
    parts_ext
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
}

/// Equality that takes the same time wherever the strings differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn decode_basic(value: &str) -> Option<(String, String)> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

/// Safe methods change nothing and need no anti-CSRF token.
fn is_change(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

impl FromRequestParts<PortalState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &PortalState,
    ) -> Result<Self, Self::Rejection> {
        let Some(auth) = state.auth.as_ref().filter(|_| !state.operator) else {
            return Ok(Caller {
                identity: None,
                csrf: None,
            });
        };
        if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
            let value = value.to_str().unwrap_or("");
            let Some(basic) = value
                .get(..6)
                .filter(|s| s.eq_ignore_ascii_case("basic "))
                .map(|_| &value[6..])
            else {
                return Err(ApiError::Unauthenticated(
                    "use Basic credentials (username and login credential or API key) or a portal session".into(),
                ));
            };
            let (user, secret) = decode_basic(basic)
                .ok_or_else(|| ApiError::Unauthenticated("malformed Basic credentials".into()))?;
            let identity = auth
                .authenticate(&user, &secret, source(&parts.extensions).as_deref())
                .await?;
            return Ok(Caller {
                identity: Some(identity),
                csrf: None,
            });
        }
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(ApiError::Unauthenticated(
                "sign in to the portal or send Basic credentials".into(),
            ));
        };
        let session = auth.session(token).await.map_err(|e| match e {
            auth::AuthError::Unauthenticated => {
                ApiError::Unauthenticated("the portal session expired; sign in again".into())
            }
            other => other.into(),
        })?;
        if is_change(&parts.method) {
            let sent = parts
                .headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !constant_time_eq(sent, &session.csrf) {
                return Err(ApiError::Csrf);
            }
        }
        Ok(Caller {
            identity: Some(session.identity),
            csrf: Some(session.csrf),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1; berth_session=xyz".parse().unwrap());
        h.append(header::COOKIE, "b=2".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "berth"), None);
    }

    #[test]
    fn namespaces_are_path_prefixes() {
        let caller = |ns: &str| Caller {
            identity: Some(Identity {
                subject: "u".into(),
                account_id: 1,
                namespace: ns.into(),
                role: Role::Admin,
                kind: PrincipalKind::User,
                credential_id: None,
                node_id: None,
                user_id: None,
            }),
            csrf: None,
        };
        let repo = RepoName::parse("acme.io/app").unwrap();
        assert!(caller("acme.io").sees(&repo));
        assert!(!caller("acme").sees(&repo));
        assert!(!caller("acme.io/app").sees(&repo));
    }

    #[test]
    fn equality_in_constant_time() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "ab"));
    }
}
