//! Token scopes: parsing what a client asks for (`repository:NS/APP:pull,push`,
//! `registry:catalog:*`) and computing what it gets: the intersection of
//! the request with what the identity may do. Asking for more is not an
//! error; it just is not granted.

use std::collections::BTreeSet;

use crate::model::{Action, Identity, PrincipalKind};
use crate::tokens::AccessEntry;

/// One requested scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeRequest {
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// Parses `scope` values; each may hold several space-separated scopes
/// (the OAuth2 form). Malformed items are ignored.
pub fn parse_scopes<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<ScopeRequest> {
    values
        .into_iter()
        .flat_map(str::split_whitespace)
        .filter_map(|item| {
            let (kind, rest) = item.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            if kind.is_empty() || name.is_empty() {
                return None;
            }
            Some(ScopeRequest {
                kind: kind.to_owned(),
                name: name.to_owned(),
                actions: actions
                    .split(',')
                    .filter(|a| !a.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
        })
        .collect()
}

/// Whether `repo` lies in `namespace` (`<namespace>/<path>`).
pub fn in_namespace(repo: &str, namespace: &str) -> bool {
    repo.strip_prefix(namespace)
        .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1)
}

fn allowed(identity: &Identity, action: Action) -> bool {
    match identity.kind {
        // A node only ever pulls.
        PrincipalKind::Node => action == Action::Pull,
        PrincipalKind::User | PrincipalKind::Robot => identity.role.allows(action),
    }
}

/// What `identity` is granted of `requests`.
pub fn grant(identity: &Identity, requests: &[ScopeRequest]) -> Vec<AccessEntry> {
    let mut out: Vec<AccessEntry> = Vec::new();
    for r in requests {
        match r.kind.as_str() {
            "repository" => {
                if registry::RepoName::parse(&r.name).is_err()
                    || !in_namespace(&r.name, &identity.namespace)
                {
                    continue;
                }
                let mut actions = BTreeSet::new();
                for a in &r.actions {
                    if a == "*" {
                        actions.extend(Action::ALL.into_iter().filter(|x| allowed(identity, *x)));
                    } else if let Some(x) = Action::parse(a).filter(|x| allowed(identity, *x)) {
                        actions.insert(x);
                    }
                }
                if actions.is_empty() {
                    continue;
                }
                let actions: Vec<String> =
                    actions.into_iter().map(|a| a.as_str().to_owned()).collect();
                // Merge repeated scopes for the same repository.
                match out
                    .iter_mut()
                    .find(|e| e.kind == "repository" && e.name == r.name)
                {
                    Some(e) => {
                        for a in actions {
                            if !e.actions.contains(&a) {
                                e.actions.push(a);
                            }
                        }
                        e.actions.sort_by_key(|a| Action::parse(a));
                    }
                    None => out.push(AccessEntry {
                        kind: "repository".into(),
                        name: r.name.clone(),
                        actions,
                    }),
                }
            }
            "registry"
                if r.name == "catalog"
                    && r.actions.iter().any(|a| a == "*")
                    && !out.iter().any(|e| e.kind == "registry") =>
            {
                out.push(AccessEntry {
                    kind: "registry".into(),
                    name: "catalog".into(),
                    actions: vec!["*".into()],
                });
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::Role;

    fn ident(role: Role, kind: PrincipalKind) -> Identity {
        Identity {
            subject: "u".into(),
            account_id: 1,
            namespace: "acme.io".into(),
            role,
            kind,
            credential_id: None,
            node_id: None,
            user_id: None,
        }
    }

    #[test]
    fn parses_scopes() {
        let s = parse_scopes([
            "repository:acme.io/a/b:pull,push",
            "registry:catalog:* repository:x:pull",
            "junk",
        ]);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "acme.io/a/b");
        assert_eq!(s[0].actions, vec!["pull", "push"]);
        assert_eq!(s[1].kind, "registry");
    }

    #[test]
    fn grants_the_intersection() {
        let req = parse_scopes(["repository:acme.io/app:pull,push,delete"]);
        let g = grant(&ident(Role::Developer, PrincipalKind::User), &req);
        assert_eq!(g[0].actions, vec!["pull", "push"]);
        let g = grant(&ident(Role::Reader, PrincipalKind::User), &req);
        assert_eq!(g[0].actions, vec!["pull"]);
        let g = grant(&ident(Role::Admin, PrincipalKind::Node), &req);
        assert_eq!(g[0].actions, vec!["pull"]);
        let g = grant(
            &ident(Role::Admin, PrincipalKind::User),
            &parse_scopes(["repository:acme.io/app:*"]),
        );
        assert_eq!(g[0].actions, vec!["pull", "push", "delete"]);
        // Another namespace, a prefix trick, the bare namespace: nothing.
        for other in [
            "repository:evil.io/app:pull",
            "repository:acme.io.evil/app:pull",
            "repository:acme.io:pull",
        ] {
            assert!(
                grant(
                    &ident(Role::Admin, PrincipalKind::User),
                    &parse_scopes([other])
                )
                .is_empty(),
                "{other}"
            );
        }
        let g = grant(
            &ident(Role::Reader, PrincipalKind::User),
            &parse_scopes(["registry:catalog:*"]),
        );
        assert_eq!(g[0].kind, "registry");
    }
}
