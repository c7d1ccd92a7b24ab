//! `AuthService` on each real store (the embedded SQLite one and PostgreSQL):
//! credentials, tokens and their revocation, throttling, portal sessions,
//! nodes, key rotation. Every test runs once per engine (`sqlite::…`,
//! `postgres::…`), so the two stores are held to the same behaviour.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use auth::scope::parse_scopes;
use std::sync::Arc;

use auth::store::AuthStore;
use auth::{AuthConfig, AuthError, AuthService, PrincipalKind, Role};

#[derive(Debug, Clone, Copy)]
enum Engine {
    Sqlite,
    Postgres,
}

/// A fresh store on `engine`: SQLite in a temp dir, or a new database on
/// the test process's private PostgreSQL server.
async fn store(engine: Engine, dir: &std::path::Path) -> Arc<dyn AuthStore> {
    match engine {
        Engine::Sqlite => auth::open_embedded(dir).unwrap(),
        Engine::Postgres => {
            let pg = test_support::Postgres::shared();
            let options = pg_pool::ConnectOptions {
                url: pg.url(&pg.create_database()),
                password: Some(pg.password().to_owned()),
                max_connections: 4,
            };
            auth::open_store(dir, Some(&options)).await.unwrap()
        }
    }
}

/// Runs each named `async fn(Engine)` as a test on each engine.
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Engine::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Engine::Postgres).await
            })*
        }
    };
}

on_both_engines!(
    credentials_authenticate_until_revoked,
    failed_logins_are_throttled_per_user_and_source,
    refresh_tokens_follow_their_credential,
    portal_sessions,
    robots_use_api_keys_and_nodes_use_certificates,
    tokens_survive_a_key_rotation,
    replicas_opening_a_fresh_store_share_one_signing_key,
);

async fn service(engine: Engine, config: AuthConfig) -> (tempfile::TempDir, AuthService) {
    let dir = tempfile::tempdir().unwrap();
    let store = store(engine, dir.path()).await;
    let svc = AuthService::open(store, config).await.unwrap();
    svc.create_account("acme", "acme.io").await.unwrap();
    svc.create_user("acme", "alice", Role::Developer, Some("correct horse"))
        .await
        .unwrap();
    (dir, svc)
}

async fn credentials_authenticate_until_revoked(engine: Engine) {
    let (_d, svc) = service(engine, AuthConfig::default()).await;
    let minted = svc
        .mint_login_credential("alice", None, Some("laptop"))
        .await
        .unwrap();
    assert!(minted.secret.starts_with("bcl_"));
    let ttl = minted.credential.expires_at.unwrap() - minted.credential.created_at;
    assert_eq!(ttl, 24 * 3600 * 1000);
    let id = svc
        .authenticate("alice", &minted.secret, Some("10.0.0.1"))
        .await
        .unwrap();
    assert_eq!(
        (id.namespace.as_str(), id.role, id.kind),
        ("acme.io", Role::Developer, PrincipalKind::User)
    );
    // The account password is not a registry credential, nor is another user's secret.
    assert!(
        svc.authenticate("alice", "correct horse", None)
            .await
            .is_err()
    );
    svc.create_user("acme", "bob", Role::Reader, None)
        .await
        .unwrap();
    assert!(svc.authenticate("bob", &minted.secret, None).await.is_err());

    let token = svc
        .issue_token(
            &id,
            &parse_scopes(["repository:acme.io/app:pull,push,delete"]),
        )
        .unwrap();
    let claims = svc.verify_token(&token.token).unwrap();
    assert!(claims.allows("acme.io/app", "push"));
    assert!(!claims.allows("acme.io/app", "delete"));
    assert_eq!(token.expires_in, 300);

    assert!(svc.revoke_credential(&minted.credential.id).await.unwrap());
    assert!(
        svc.authenticate("alice", &minted.secret, None)
            .await
            .is_err()
    );
    assert!(matches!(
        svc.verify_token(&token.token),
        Err(AuthError::Token(_))
    ));
    // Longer than allowed.
    assert!(
        svc.mint_login_credential("alice", Some(Duration::from_secs(2 * 86400)), None)
            .await
            .is_err()
    );
}

async fn failed_logins_are_throttled_per_user_and_source(engine: Engine) {
    let config = AuthConfig {
        max_failed_logins: 3,
        failed_login_window: Duration::from_millis(700),
        ..AuthConfig::default()
    };
    let (_d, svc) = service(engine, config).await;
    let good = svc
        .mint_login_credential("alice", None, None)
        .await
        .unwrap()
        .secret;
    for _ in 0..3 {
        assert!(matches!(
            svc.authenticate("alice", "bcl_nope_nope", Some("10.0.0.9"))
                .await,
            Err(AuthError::Unauthenticated)
        ));
    }
    // Locked out even with the right secret, from anywhere, for the window.
    assert!(matches!(
        svc.authenticate("alice", &good, Some("10.0.0.2")).await,
        Err(AuthError::RateLimited { .. })
    ));
    tokio::time::sleep(Duration::from_millis(800)).await;
    svc.authenticate("alice", &good, Some("10.0.0.2"))
        .await
        .unwrap();
}

async fn refresh_tokens_follow_their_credential(engine: Engine) {
    let (_d, svc) = service(engine, AuthConfig::default()).await;
    let minted = svc
        .mint_login_credential("alice", None, None)
        .await
        .unwrap();
    let id = svc
        .authenticate("alice", &minted.secret, None)
        .await
        .unwrap();
    let refresh = svc.issue_refresh_token(&id).await.unwrap();
    assert_eq!(
        svc.authenticate_refresh(&refresh, None)
            .await
            .unwrap()
            .subject,
        "alice"
    );
    svc.revoke_credential(&minted.credential.id).await.unwrap();
    assert!(svc.authenticate_refresh(&refresh, None).await.is_err());
}

async fn portal_sessions(engine: Engine) {
    let (_d, svc) = service(engine, AuthConfig::default()).await;
    assert!(
        svc.sign_in("alice", "wrong password", None, Duration::from_secs(60))
            .await
            .is_err()
    );
    let s = svc
        .sign_in(
            "alice",
            "correct horse",
            Some("10.1.1.1"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let back = svc.session(&s.token).await.unwrap();
    assert_eq!(
        (back.identity.subject.as_str(), back.csrf.as_str()),
        ("alice", s.csrf.as_str())
    );
    assert!(svc.session("forged").await.is_err());
    svc.sign_out(&s.token).await.unwrap();
    assert!(svc.session(&s.token).await.is_err());
    let short = svc
        .sign_in("alice", "correct horse", None, Duration::from_millis(50))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(svc.session(&short.token).await.is_err());
}

async fn robots_use_api_keys_and_nodes_use_certificates(engine: Engine) {
    let (_d, svc) = service(engine, AuthConfig::default()).await;
    let robot = svc
        .create_robot("acme", "ci", Role::Developer)
        .await
        .unwrap();
    assert_eq!(robot.username, "robot+acme.io+ci");
    let key = svc
        .create_api_key(&robot.username, None, None)
        .await
        .unwrap();
    assert!(key.credential.expires_at.is_none());
    assert_eq!(
        svc.authenticate(&robot.username, &key.secret, None)
            .await
            .unwrap()
            .kind,
        PrincipalKind::Robot
    );
    // Robots do not get login credentials; users do not get API keys.
    assert!(
        svc.mint_login_credential(&robot.username, None, None)
            .await
            .is_err()
    );
    assert!(svc.create_api_key("alice", None, None).await.is_err());

    let e = svc.enroll_node("acme", "edge-1", None).await.unwrap();
    let der = pem_der(&e.cert_pem);
    let node = svc.node_identity(&der).await.unwrap();
    assert_eq!(
        (node.kind, node.namespace.as_str()),
        (PrincipalKind::Node, "acme.io")
    );
    let token = svc
        .issue_token(&node, &parse_scopes(["repository:acme.io/app:pull,push"]))
        .unwrap();
    let claims = svc.verify_token(&token.token).unwrap();
    assert!(claims.allows("acme.io/app", "pull") && !claims.allows("acme.io/app", "push"));
    assert_eq!(token.expires_in, 600);
    // Re-enrolling the name supersedes the old certificate.
    let again = svc.enroll_node("acme", "edge-1", None).await.unwrap();
    assert!(svc.node_identity(&der).await.is_err());
    let der2 = pem_der(&again.cert_pem);
    svc.node_identity(&der2).await.unwrap();
    svc.revoke_node(&again.node.id).await.unwrap();
    assert!(matches!(
        svc.node_identity(&der2).await,
        Err(AuthError::Forbidden(_))
    ));
    assert!(
        svc.verify_token(&token.token).is_ok(),
        "a superseded node's old token lives out its lifetime"
    );
}

async fn tokens_survive_a_key_rotation(engine: Engine) {
    let (_d, svc) = service(engine, AuthConfig::default()).await;
    let minted = svc
        .mint_login_credential("alice", None, None)
        .await
        .unwrap();
    let id = svc
        .authenticate("alice", &minted.secret, None)
        .await
        .unwrap();
    let before = svc.issue_token(&id, &[]).unwrap().token;
    svc.rotate_signing_key().await.unwrap();
    svc.verify_token(&before).unwrap();
    let after = svc.issue_token(&id, &[]).unwrap().token;
    let kid = |t: &str| jsonwebtoken_kid(t);
    assert_ne!(kid(&before), kid(&after));
}

fn jsonwebtoken_kid(token: &str) -> String {
    use base64::Engine as _;
    let header = token.split('.').next().unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["alg"], "ES256");
    v["kid"].as_str().unwrap().to_owned()
}

fn pem_der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

/// Two replicas (two stores on one database, or two processes on one
/// SQLite file) open a fresh store at once: one signing key results, and
/// each verifies the other's tokens.
async fn replicas_opening_a_fresh_store_share_one_signing_key(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = match engine {
        Engine::Sqlite => (
            auth::open_embedded(dir.path()).unwrap(),
            auth::open_embedded(dir.path()).unwrap(),
        ),
        Engine::Postgres => {
            let pg = test_support::Postgres::shared();
            let options = pg_pool::ConnectOptions {
                url: pg.url(&pg.create_database()),
                password: Some(pg.password().to_owned()),
                max_connections: 4,
            };
            let (a, b) = tokio::join!(
                auth::open_store(dir.path(), Some(&options)),
                auth::open_store(dir.path(), Some(&options))
            );
            (a.unwrap(), b.unwrap())
        }
    };
    let (sa, sb) = tokio::join!(
        AuthService::open(a.clone(), AuthConfig::default()),
        AuthService::open(b, AuthConfig::default())
    );
    let (sa, sb) = (sa.unwrap(), sb.unwrap());
    let keys = a.signing_keys().await.unwrap();
    let active: Vec<_> = keys.iter().filter(|k| k.retire_at.is_none()).collect();
    assert_eq!(active.len(), 1, "{keys:?}");
    sa.create_account("acme", "acme.io").await.unwrap();
    // The other replica sees the account at once: same store.
    assert!(matches!(
        sb.create_account("acme", "other.io").await,
        Err(AuthError::Conflict(_))
    ));
}

/// Replicas over one PostgreSQL database count failed logins together: a
/// client cannot get a fresh allowance by reaching another replica.
#[tokio::test]
async fn postgres_replicas_share_login_lockouts() {
    let dir = tempfile::tempdir().unwrap();
    let pg = test_support::Postgres::shared();
    let options = pg_pool::ConnectOptions {
        url: pg.url(&pg.create_database()),
        password: Some(pg.password().to_owned()),
        max_connections: 4,
    };
    let config = AuthConfig {
        max_failed_logins: 4,
        failed_login_window: Duration::from_secs(600),
        ..AuthConfig::default()
    };
    let a = auth::open_store(dir.path(), Some(&options)).await.unwrap();
    let b = auth::open_store(dir.path(), Some(&options)).await.unwrap();
    let sa = AuthService::open(a, config.clone()).await.unwrap();
    let sb = AuthService::open(b, config).await.unwrap();
    sa.create_account("acme", "acme.io").await.unwrap();
    sa.create_user("acme", "alice", Role::Developer, None)
        .await
        .unwrap();
    let good = sa
        .mint_login_credential("alice", None, None)
        .await
        .unwrap()
        .secret;
    // Two failures on each replica: four in all.
    for svc in [&sa, &sb, &sa, &sb] {
        assert!(matches!(
            svc.authenticate("alice", "bcl_nope_nope", Some("10.0.0.9"))
                .await,
            Err(AuthError::Unauthenticated)
        ));
    }
    for svc in [&sa, &sb] {
        match svc.authenticate("alice", &good, Some("10.0.0.2")).await {
            Err(AuthError::RateLimited { retry_after_secs }) => {
                assert!(
                    (590..=600).contains(&retry_after_secs),
                    "{retry_after_secs}"
                )
            }
            other => panic!("locked out on every replica, got {other:?}"),
        }
    }
    // The source address is locked out too, for any user.
    assert!(matches!(
        sb.authenticate("bob", "whatever", Some("10.0.0.9")).await,
        Err(AuthError::RateLimited { .. })
    ));
}
