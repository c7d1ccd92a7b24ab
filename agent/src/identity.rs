//! The node's identity: its certificate and key, and the pull tokens they
//! buy at berth-server's node endpoint (`GET /auth/node-token` over mTLS).
//!
//! This goes around oci-client on purpose: oci-client cannot present a
//! client certificate. Tokens are cached per repository (Berth grants per
//! repository name), renewed a minute before they expire (or at 80 % of a
//! short lifetime), and dropped after a 401 so the next request buys a new
//! one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;

use crate::config::NodeSettings;

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("node identity: {0}")]
    Identity(String),
    #[error("node endpoint {url} unreachable: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("node endpoint refused the node certificate ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("node endpoint answered something that is not a token: {0}")]
    BadAnswer(String),
}

impl AuthError {
    /// Worth trying again later (the endpoint was down), as opposed to a
    /// refusal or a broken identity that only an operator can fix.
    pub fn is_transient(&self) -> bool {
        match self {
            AuthError::Unreachable { source, .. } => source.is_connect() || source.is_timeout(),
            AuthError::Refused { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

struct Cached {
    token: String,
    renew_at: Instant,
}

/// Buys and caches node tokens.
pub struct NodeAuth {
    http: reqwest::Client,
    url: String,
    service: String,
    cache: Mutex<HashMap<String, Cached>>,
}

impl std::fmt::Debug for NodeAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAuth").field("url", &self.url).finish()
    }
}

fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path)
        .map_err(|e| AuthError::Identity(format!("reading the {what} {}: {e}", path.display())))
}

impl NodeAuth {
    /// Loads the certificate, key and CA named in `settings`.
    pub fn new(settings: &NodeSettings) -> Result<NodeAuth, AuthError> {
        crate::install_crypto_provider();
        let cert = read(&settings.cert_file, "node certificate")?;
        let key = read(&settings.key_file, "node key")?;
        let ca = read(&settings.ca_file, "node CA certificate")?;
        let mut pem = key;
        pem.push(b'\n');
        pem.extend_from_slice(&cert);
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
            AuthError::Identity(format!(
                "{} and {} are not a matching PEM certificate and key: {e}",
                settings.cert_file.display(),
                settings.key_file.display()
            ))
        })?;
        let ca = reqwest::Certificate::from_pem(&ca)
            .map_err(|e| AuthError::Identity(format!("{}: {e}", settings.ca_file.display())))?;
        // Only the node CA is trusted here: the node endpoint's certificate
        // is signed by it, and nothing else should be able to hand out
        // tokens to this node.
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .identity(identity)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| AuthError::Identity(format!("building the TLS client: {e}")))?;
        Ok(NodeAuth {
            http,
            url: format!("{}/auth/node-token", settings.auth_url),
            service: settings.service.clone(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// A pull token for `repository`, from the cache while it is fresh.
    pub async fn token(&self, repository: &str) -> Result<String, AuthError> {
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.get(repository)
            && Instant::now() < c.renew_at
        {
            return Ok(c.token.clone());
        }
        let fetched_at = Instant::now();
        let answer = self.fetch(repository).await?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(60));
        let margin = Duration::from_secs(60).min(lifetime / 5);
        cache.insert(
            repository.to_owned(),
            Cached {
                token: answer.token.clone(),
                renew_at: fetched_at + lifetime - margin,
            },
        );
        Ok(answer.token)
    }

    /// Forgets `token` after the registry answered 401 to it, so that the
    /// next [`token`](Self::token) buys a new one (a rotated signing key, a
    /// server restart with a new one, a clock skew).
    pub async fn invalidate(&self, repository: &str, token: &str) {
        let mut cache = self.cache.lock().await;
        if cache.get(repository).is_some_and(|c| c.token == token) {
            cache.remove(repository);
        }
    }

    async fn fetch(&self, repository: &str) -> Result<TokenAnswer, AuthError> {
        let scope = format!("repository:{repository}:pull");
        let resp = self
            .http
            .get(&self.url)
            .query(&[
                ("service", self.service.as_str()),
                ("scope", scope.as_str()),
            ])
            .send()
            .await
            .map_err(|source| AuthError::Unreachable {
                url: self.url.clone(),
                source,
            })?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|source| AuthError::Unreachable {
                url: self.url.clone(),
                source,
            })?;
        if !status.is_success() {
            return Err(AuthError::Refused {
                status: status.as_u16(),
                message: String::from_utf8_lossy(&body).chars().take(300).collect(),
            });
        }
        tracing::debug!(%repository, "bought a node token");
        serde_json::from_slice(&body).map_err(|e| AuthError::BadAnswer(e.to_string()))
    }
}
