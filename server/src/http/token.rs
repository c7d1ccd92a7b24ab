//! The token endpoint of the Docker token protocol (`/auth/token`): GET
//! with Basic credentials, POST with the OAuth2 `password` and
//! `refresh_token` grants (what containerd sends), and the node endpoint
//! (`/auth/node-token`) where a node's client certificate is its credential.

use std::net::SocketAddr;

use auth::model::AuditEvent;
use auth::scope::parse_scopes;
use auth::service::now_millis;
use auth::{AuthError, AuthService, Identity};
use axum::Extension;
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, StatusCode, Uri, header};
use serde_json::{Value, json};

use super::RouteLabel;
use crate::serve::PeerCertificate;

/// State of the token endpoints.
#[derive(Clone, Debug)]
pub struct TokenState {
    pub auth: AuthService,
}

/// Decodes a Basic `Authorization` value (after the scheme) into user and secret.
pub fn decode_basic(value: &str) -> Option<(String, String)> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

fn labelled(mut r: Response) -> Response {
    r.extensions_mut().insert(RouteLabel("token"));
    r
}

/// Errors in the registry's error shape (what docker prints to the user).
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "errors": [{ "code": code, "message": message }] })),
    )
        .into_response()
}

fn auth_error(e: AuthError, basic_challenge: bool) -> Response {
    match e {
        AuthError::RateLimited { retry_after_secs } => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                &e.to_string(),
            );
            if let Ok(v) = retry_after_secs.to_string().parse() {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        AuthError::Forbidden(_) => error(StatusCode::FORBIDDEN, "DENIED", &e.to_string()),
        AuthError::Invalid(_) => error(StatusCode::BAD_REQUEST, "UNSUPPORTED", &e.to_string()),
        AuthError::Storage(_) | AuthError::Crypto(_) => {
            tracing::error!(error = %e, "token endpoint failure");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "internal server error",
            )
        }
        _ => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "authentication failed",
            );
            if basic_challenge {
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Basic realm=\"berth\""),
                );
            }
            r
        }
    }
}

fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn values<'a>(pairs: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    pairs
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The refusal when a client names another service than this registry.
fn check_service(auth: &AuthService, pairs: &[(String, String)]) -> Option<Response> {
    match values(pairs, "service").first() {
        Some(s) if *s != auth.config().service => Some(error(
            StatusCode::BAD_REQUEST,
            "UNSUPPORTED",
            &format!(
                "unknown service {s:?}; this registry is {:?}",
                auth.config().service
            ),
        )),
        _ => None,
    }
}

/// Issues a token for `identity`, audits it, and shapes the answer.
async fn grant(
    auth: &AuthService,
    identity: &Identity,
    scopes: &[&str],
    refresh: bool,
    source: Option<String>,
) -> Response {
    let requests = parse_scopes(scopes.iter().copied());
    let issued = match auth.issue_token(identity, &requests) {
        Ok(t) => t,
        Err(e) => return auth_error(e, false),
    };
    let granted: Vec<String> = issued
        .access
        .iter()
        .map(|a| format!("{}:{}:{}", a.kind, a.name, a.actions.join(",")))
        .collect();
    auth.audit(AuditEvent {
        at: now_millis(),
        account_id: Some(identity.account_id),
        actor: identity.subject.clone(),
        action: "token".into(),
        target: (!granted.is_empty()).then(|| granted.join(" ")),
        source,
        outcome: "ok".into(),
        detail: (requests.len() > issued.access.len())
            .then(|| format!("asked: {}", scopes.join(" "))),
    })
    .await;
    let mut body = json!({
        "token": issued.token,
        "access_token": issued.token,
        "expires_in": issued.expires_in,
        "issued_at": issued.issued_at,
    });
    if refresh {
        match auth.issue_refresh_token(identity).await {
            Ok(r) => body["refresh_token"] = Value::String(r),
            Err(e) => tracing::warn!(error = %e, "could not issue a refresh token"),
        }
    }
    // Tokens are credentials: never cached by intermediaries.
    (
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(body),
    )
        .into_response()
}

/// `GET /auth/token?service=…&scope=…` with Basic credentials.
pub async fn get_token(
    State(state): State<TokenState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let pairs = query_pairs(&uri);
    if let Some(r) = check_service(&state.auth, &pairs) {
        return labelled(r);
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() > 6 && v[..6].eq_ignore_ascii_case("basic "))
        .and_then(|v| decode_basic(&v[6..]));
    let Some((user, secret)) = basic else {
        // No anonymous access: every repository belongs to an account.
        return labelled(auth_error(AuthError::Unauthenticated, true));
    };
    let source = Some(peer.ip().to_string());
    let identity = match state
        .auth
        .authenticate(&user, &secret, source.as_deref())
        .await
    {
        Ok(i) => i,
        Err(e) => return labelled(auth_error(e, true)),
    };
    let offline = values(&pairs, "offline_token")
        .first()
        .is_some_and(|v| *v == "true");
    labelled(
        grant(
            &state.auth,
            &identity,
            &values(&pairs, "scope"),
            offline,
            source,
        )
        .await,
    )
}

/// `POST /auth/token`: OAuth2 `password` and `refresh_token` grants.
pub async fn post_token(
    State(state): State<TokenState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    if body.len() > 64 * 1024 {
        return labelled(oauth_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            "form too large",
        ));
    }
    let pairs: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    if let Some(r) = check_service(&state.auth, &pairs) {
        return labelled(r);
    }
    let get = |k: &str| values(&pairs, k).first().map(|v| v.to_string());
    let source = Some(peer.ip().to_string());
    let identity = match get("grant_type").as_deref() {
        Some("password") => {
            let (Some(user), Some(secret)) = (get("username"), get("password")) else {
                return labelled(oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "username and password required",
                ));
            };
            state
                .auth
                .authenticate(&user, &secret, source.as_deref())
                .await
        }
        Some("refresh_token") => {
            let Some(token) = get("refresh_token") else {
                return labelled(oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "refresh_token required",
                ));
            };
            state
                .auth
                .authenticate_refresh(&token, source.as_deref())
                .await
        }
        _ => {
            return labelled(oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant_type must be password or refresh_token",
            ));
        }
    };
    let identity = match identity {
        Ok(i) => i,
        Err(e @ AuthError::RateLimited { .. }) => return labelled(auth_error(e, false)),
        Err(_) => {
            return labelled(oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_grant",
                "authentication failed",
            ));
        }
    };
    // OAuth2 puts several scopes in one space-separated parameter.
    let scopes = values(&pairs, "scope");
    let offline = get("access_type").as_deref() == Some("offline");
    labelled(grant(&state.auth, &identity, &scopes, offline, source).await)
}

fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": code, "error_description": description })),
    )
        .into_response()
}

/// `GET /auth/node-token?scope=…` on the node endpoint: the client
/// certificate, verified by TLS against the node CA, is the credential.
pub async fn node_token(
    State(state): State<TokenState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    cert: Option<Extension<PeerCertificate>>,
    uri: Uri,
) -> Response {
    let pairs = query_pairs(&uri);
    if let Some(r) = check_service(&state.auth, &pairs) {
        return labelled(r);
    }
    let Some(Extension(cert)) = cert else {
        return labelled(error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "a node client certificate is required",
        ));
    };
    let source = Some(peer.ip().to_string());
    let identity = match state.auth.node_identity(&cert.0).await {
        Ok(i) => i,
        Err(e) => {
            state
                .auth
                .audit(AuditEvent {
                    at: now_millis(),
                    account_id: None,
                    actor: "node".into(),
                    action: "token".into(),
                    target: None,
                    source: source.clone(),
                    outcome: "denied".into(),
                    detail: Some(e.to_string()),
                })
                .await;
            return labelled(auth_error(e, false));
        }
    };
    labelled(
        grant(
            &state.auth,
            &identity,
            &values(&pairs, "scope"),
            false,
            source,
        )
        .await,
    )
}
