//! The registry side of a pull, over oci-client: manifests (with their
//! digests verified) and blob streams from an offset.
//!
//! oci-client does the HTTP of the distribution API; the agent adds what it
//! lacks: tokens come from the node endpoint over mTLS ([`NodeAuth`], which
//! oci-client cannot do: it has no client certificates), are handed to
//! oci-client as ready bearer tokens before each request and renewed after a
//! 401; blob downloads resume with Range requests
//! (`pull_blob_stream_partial`), whose digest oci-client does NOT verify, so
//! the puller hashes every blob itself; retries, backoff and the bandwidth
//! limit are the agent's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::BoxStream;
use oci_client::Reference;
use oci_client::RegistryOperation;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use rand::Rng;
use tokio::sync::Mutex;

use crate::identity::{AuthError, NodeAuth};
use crate::reference::ImageRef;

/// Manifest media types the agent asks for (no schema 1).
pub const ACCEPTED_MANIFESTS: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// How a registry failure should be handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The token was refused: buy a new one and try again.
    Unauthorized,
    NotFound,
    /// Network, 5xx, 429: try again after a pause.
    Transient,
    /// Anything else: give up.
    Fatal,
}

/// A registry failure with its classification.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Auth(#[from] AuthError),
    #[error("{message}")]
    Oci { kind: Failure, message: String },
}

impl RegistryError {
    pub fn kind(&self) -> Failure {
        match self {
            RegistryError::Auth(e) if e.is_transient() => Failure::Transient,
            RegistryError::Auth(_) => Failure::Fatal,
            RegistryError::Oci { kind, .. } => *kind,
        }
    }
}

fn classify(e: &OciDistributionError) -> Failure {
    use OciDistributionError as E;
    let from_status = |code: u16| match code {
        401 => Failure::Unauthorized,
        404 => Failure::NotFound,
        408 | 429 | 500..=599 => Failure::Transient,
        _ => Failure::Fatal,
    };
    match e {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => Failure::Unauthorized,
        E::ImageManifestNotFoundError(_) => Failure::NotFound,
        E::RequestError(_) | E::IoError(_) => Failure::Transient,
        E::ServerError { code, .. } => from_status(*code),
        E::RegistryError { envelope, .. } => match envelope.errors.first().map(|e| &e.code) {
            Some(OciErrorCode::Unauthorized) => Failure::Unauthorized,
            Some(
                OciErrorCode::ManifestUnknown
                | OciErrorCode::BlobUnknown
                | OciErrorCode::NameUnknown
                | OciErrorCode::NotFound,
            ) => Failure::NotFound,
            Some(OciErrorCode::Toomanyrequests) => Failure::Transient,
            _ => Failure::Fatal,
        },
        _ => Failure::Fatal,
    }
}

fn oci_error(e: OciDistributionError) -> RegistryError {
    RegistryError::Oci {
        kind: classify(&e),
        message: e.to_string(),
    }
}

/// Retries: capped exponential backoff with full jitter (a random pause
/// in `[0, min(max, base·2^attempt)]`), so many nodes hit by one outage do
/// not come back in lockstep.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    pub fn delay(&self, attempt: u32) -> Duration {
        let cap = self
            .base
            .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.max);
        let millis = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }
}

/// A token bucket shared by every download of the process: the optional
/// bandwidth limit. One second of burst.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(bytes_per_sec: u64) -> RateLimiter {
        let rate = bytes_per_sec as f64;
        RateLimiter {
            rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    /// Waits until `n` bytes may pass.
    pub async fn acquire(&self, n: usize) {
        let wait = {
            let mut s = self.state.lock().await;
            let now = Instant::now();
            let (tokens, last) = *s;
            let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate)
                .min(self.rate)
                - n as f64;
            *s = (tokens, now);
            if tokens < 0.0 {
                Duration::from_secs_f64(-tokens / self.rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// A blob body from some offset.
pub struct BlobBody {
    /// The registry ignored the Range request and sends from byte 0.
    pub from_start: bool,
    pub stream: BoxStream<'static, std::io::Result<Bytes>>,
}

/// The registry, as the node's account sees it.
pub struct Registry {
    oci: oci_client::Client,
    auth: Arc<NodeAuth>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("auth", &self.auth)
            .finish()
    }
}

/// A blob to download: what oci-client needs to name it.
#[derive(Clone, Debug)]
pub struct BlobRef {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

impl Registry {
    /// `url` is `http(s)://host[:port]`; plain HTTP is used only when the
    /// URL says so (validated config).
    pub fn new(
        url: &str,
        extra_ca: Option<&[u8]>,
        auth: Arc<NodeAuth>,
    ) -> Result<Registry, String> {
        crate::install_crypto_provider();
        let protocol = if url.starts_with("http://") {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let mut config = ClientConfig {
            protocol,
            connect_timeout: Some(Duration::from_secs(10)),
            // A stalled connection (a cut cable rather than a reset)
            // surfaces as a read timeout and is resumed.
            read_timeout: Some(Duration::from_secs(30)),
            ..ClientConfig::default()
        };
        if let Some(pem) = extra_ca {
            config
                .extra_root_certificates
                .push(oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Pem,
                    data: pem.to_vec(),
                });
        }
        let oci = oci_client::Client::try_from(config).map_err(|e| e.to_string())?;
        Ok(Registry { oci, auth })
    }

    fn oci_ref(image: &ImageRef, reference: &str) -> Reference {
        if reference.contains(':') {
            Reference::with_digest(
                image.registry.clone(),
                image.repository.clone(),
                reference.to_owned(),
            )
        } else {
            Reference::with_tag(
                image.registry.clone(),
                image.repository.clone(),
                reference.to_owned(),
            )
        }
    }

    /// Hands oci-client the current token for `r`'s repository; returns it
    /// so that a 401 can invalidate exactly that one.
    async fn authorize(&self, r: &Reference) -> Result<String, RegistryError> {
        let token = self.auth.token(r.repository()).await?;
        self.oci
            .auth(
                r,
                &RegistryAuth::Bearer(token.clone()),
                RegistryOperation::Pull,
            )
            .await
            .map_err(oci_error)?;
        Ok(token)
    }

    async fn on_error(&self, r: &Reference, token: &str, e: OciDistributionError) -> RegistryError {
        let e = oci_error(e);
        if e.kind() == Failure::Unauthorized {
            self.auth.invalidate(r.repository(), token).await;
        }
        e
    }

    /// The manifest (or index) `reference` of `image`: bytes and digest,
    /// the digest checked against the bytes by oci-client (and against the
    /// requested digest when pulling by digest).
    pub async fn manifest(
        &self,
        image: &ImageRef,
        reference: &str,
    ) -> Result<(Bytes, String), RegistryError> {
        let r = Self::oci_ref(image, reference);
        let token = self.authorize(&r).await?;
        match self
            .oci
            .pull_manifest_raw(&r, &RegistryAuth::Bearer(token.clone()), ACCEPTED_MANIFESTS)
            .await
        {
            Ok(v) => Ok(v),
            Err(e) => Err(self.on_error(&r, &token, e).await),
        }
    }

    /// The blob from `offset` on.
    pub async fn blob(
        &self,
        image: &ImageRef,
        blob: &BlobRef,
        offset: u64,
    ) -> Result<BlobBody, RegistryError> {
        let r = Self::oci_ref(image, &blob.digest);
        let token = self.authorize(&r).await?;
        let desc = oci_client::manifest::OciDescriptor {
            media_type: blob.media_type.clone(),
            digest: blob.digest.clone(),
            size: i64::try_from(blob.size).unwrap_or(i64::MAX),
            ..oci_client::manifest::OciDescriptor::default()
        };
        // Always as a range request, from byte 0 too: oci-client hashes a
        // full (200) body as it streams, and the puller hashes every byte
        // itself anyway (it has to, to resume a blob with Range), so that
        // second SHA-256 over every layer would be CPU spent for nothing.
        // A registry that ignores the range answers 200 and is verified
        // twice, which is only slower.
        let result = self
            .oci
            .pull_blob_stream_partial(&r, &desc, offset, None)
            .await
            .map(|b| match b {
                oci_client::client::BlobResponse::Full(s) => BlobBody {
                    from_start: true,
                    stream: s.stream,
                },
                oci_client::client::BlobResponse::Partial(s) => BlobBody {
                    from_start: false,
                    stream: s.stream,
                },
            });
        match result {
            Ok(b) => Ok(b),
            Err(e) => Err(self.on_error(&r, &token, e).await),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let p = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        for attempt in 0..40 {
            let d = p.delay(attempt);
            let cap = (100u64 << attempt.min(10)).min(1000);
            assert!(d <= Duration::from_millis(cap), "{attempt}: {d:?}");
        }
    }

    #[test]
    fn failures_are_classified() {
        let server = |code| OciDistributionError::ServerError {
            code,
            url: String::new(),
            message: String::new(),
        };
        assert_eq!(classify(&server(401)), Failure::Unauthorized);
        assert_eq!(classify(&server(404)), Failure::NotFound);
        assert_eq!(classify(&server(503)), Failure::Transient);
        assert_eq!(classify(&server(400)), Failure::Fatal);
    }

    #[tokio::test]
    async fn rate_limiter_paces() {
        let l = RateLimiter::new(1_000_000);
        let start = Instant::now();
        // One second of burst, then 0.5 s of pacing.
        for _ in 0..15 {
            l.acquire(100_000).await;
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(450), "{took:?}");
    }
}
