//! berth-server's configuration: one typed struct, loaded by the `config`
//! crate from an optional TOML file, then `BERTH_*` environment variables
//! (`BERTH_GC__GRACE_SECS=60` sets `gc.grace_secs`), then command-line flags.
//! Every key has a default, documented on its field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use registry::storage::sqlite::Synchronous;
use registry::storage::{BlobEngine, MetadataEngine, S3Settings};
use serde::{Deserialize, Serialize};

/// The whole configuration of berth-server.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the registry, API and metrics listen on. Default `127.0.0.1:5000`.
    pub listen: SocketAddr,
    /// Directory holding the embedded store: SQLite metadata and blobs.
    /// Default `/var/lib/berth`.
    pub data_dir: PathBuf,
    pub log: LogConfig,
    pub storage: StorageConfig,
    pub limits: LimitsConfig,
    pub gc: GcConfig,
    pub auth: AuthSection,
    pub tls: TlsSection,
    pub nodes: NodesSection,
    /// Unix socket for operator actions (`berth-server admin gc`), mode 0600.
    /// Default `<data_dir>/admin.sock`.
    pub admin_socket: Option<PathBuf>,
    /// How long in-flight requests may run on after SIGTERM. Default 30.
    pub shutdown_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Require authentication (Docker token auth). Default true. When
    /// false every request is allowed, and the server listens on loopback only.
    pub enabled: bool,
    /// The URL clients reach this server at, e.g. `https://registry.example.com`;
    /// the token realm is `<public_url>/auth/token`. Default: derived from
    /// each request's Host header.
    pub public_url: Option<String>,
    /// Service name in challenges and token audiences. Default `berth-registry`.
    pub service: String,
    /// Issuer of tokens. Default `berth`.
    pub issuer: String,
    /// Lifetime of user and robot tokens, seconds. Default 300.
    pub token_ttl_secs: u64,
    /// Lifetime of node tokens, seconds. Default 600.
    pub node_token_ttl_secs: u64,
    /// Longest (and default) lifetime of a login credential, seconds. Default 86400.
    pub login_credential_ttl_secs: u64,
    /// Failed logins per user or per source address before refusing. Default 10.
    pub max_failed_logins: u32,
    /// Window of that count, seconds. Default 300.
    pub failed_login_window_secs: u64,
    /// How often revocations and keys changed elsewhere (CLI, other
    /// replicas) are picked up, milliseconds. Default 1000.
    pub refresh_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain for the main listener.
    pub cert_file: Option<PathBuf>,
    /// PEM private key for the main listener.
    pub key_file: Option<PathBuf>,
    /// Without files, generate a self-signed pair (kept in the data
    /// directory) for local use. Default false.
    pub self_signed: bool,
    /// Names (DNS or IP) put in generated certificates: the self-signed
    /// one and the node endpoint's. Default `localhost`, `127.0.0.1`.
    pub names: Vec<String>,
    /// Allow plain HTTP on a non-loopback address. Default false.
    pub insecure_plain_http: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodesSection {
    /// Address of the node endpoint: TLS requiring a client certificate of
    /// Berth's node CA (node-auth tokens and the control plane's gRPC
    /// stream). Unset: no node endpoint.
    pub listen: Option<SocketAddr>,
    /// How often connected agents send a heartbeat, seconds. Default 15.
    pub heartbeat_secs: u64,
    /// Every this many heartbeats an agent reports its containers, images
    /// and drift. Default 4.
    pub report_every: u32,
    /// How long a command waits for an offline node before it expires,
    /// seconds. Default 86400.
    pub command_ttl_secs: u64,
    /// How often a connection looks for commands accepted by another
    /// replica, milliseconds (commands accepted by the same replica go out
    /// at once). Default 1000. With the embedded store (one process) it is
    /// at least 30 s: every command wakes its connection directly.
    pub poll_ms: u64,
    /// A node not heard from for this long is shown offline, seconds.
    /// Default 45 (three heartbeats).
    pub offline_after_secs: u64,
    /// HTTP/2 keepalive PING interval on node connections, seconds: finds
    /// agents that vanished without closing. Default 30.
    pub keepalive_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `info,registry=debug`. Default `info`;
    /// `RUST_LOG` overrides it.
    pub level: String,
    /// `text` or `json`. Default `text`.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `full` (default): every metadata commit is fsynced, so an
    /// acknowledged push survives power loss. `normal`: survives a crash of
    /// the process but may lose the last commits on power loss. (The
    /// embedded SQLite metadata only.)
    pub sync: Synchronous,
    /// Where registry metadata and the auth store live. Unset (default):
    /// embedded SQLite files in `data_dir`. `postgres://USER@HOST:PORT/DB`:
    /// a PostgreSQL database that several replicas share (tables in the
    /// schemas `registry` and `auth`). Keep the password out of the URL:
    /// `metadata_password_file` or the `BERTH_METADATA_PASSWORD` variable.
    /// Blobs stay in `data_dir`.
    pub metadata_url: Option<String>,
    /// File holding the database password (trailing newline ignored);
    /// `BERTH_METADATA_PASSWORD`, if set, wins.
    pub metadata_password_file: Option<PathBuf>,
    /// Most connections each store (registry, auth) opens to PostgreSQL.
    /// Default 16.
    pub metadata_max_connections: usize,
    /// Where blobs live. Unset (default): files in `data_dir`.
    /// `s3://BUCKET[/PREFIX]`: an S3-compatible bucket that several replicas
    /// share (keys `blobs/…` and `uploads/…` under the prefix). Credentials
    /// are separate keys, never in the URL.
    pub blob_url: Option<String>,
    /// `http(s)://HOST:PORT` of an S3-compatible server (Garage, MinIO).
    /// Unset: AWS S3.
    pub s3_endpoint: Option<String>,
    /// Region requests are signed for. Default `us-east-1`.
    pub s3_region: String,
    /// Access key id. Unset: the usual AWS sources (`AWS_*` variables,
    /// instance metadata).
    pub s3_access_key_id: Option<String>,
    /// File holding the secret access key (trailing newline ignored);
    /// `BERTH_S3_SECRET_ACCESS_KEY`, if set, wins.
    pub s3_secret_access_key_file: Option<PathBuf>,
    /// Allow a plain-HTTP `s3_endpoint`. Default false.
    pub s3_allow_http: bool,
    /// Size of multipart upload parts, bytes: 5 MiB to 5 GiB, and at least
    /// `limits.max_blob_bytes` / 10000. Default 16 MiB.
    pub s3_part_size: usize,
    /// Answer blob GETs with a 307 redirect to a presigned S3 URL (valid
    /// `blob_redirect_secs`) instead of streaming the bytes through
    /// berth-server; after the usual authorisation. Needs `blob_url`.
    /// Default false.
    pub blob_redirect: bool,
    /// Lifetime of a redirect's presigned URL, seconds. Default 300.
    pub blob_redirect_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest blob accepted, in bytes. Default 64 GiB.
    pub max_blob_bytes: u64,
    /// Most entries a tag list or catalog page returns. Default 10000.
    pub max_page_entries: usize,
    /// Requests handled at once; further connections wait. Default 1024.
    pub max_concurrent_requests: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GcConfig {
    /// Run online garbage collection periodically. Default true.
    pub enabled: bool,
    /// Seconds between GC passes. Default 600.
    pub interval_secs: u64,
    /// Content younger than this many seconds is never collected, so that a
    /// push in progress is safe. Default 3600.
    pub grace_secs: u64,
    /// Upload sessions idle this many seconds are abandoned. Default 86400.
    pub upload_ttl_secs: u64,
    /// Every Nth pass also sweeps the blob store for files without
    /// metadata (left by a crash). Default 6.
    pub sweep_every: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            data_dir: PathBuf::from("/var/lib/berth"),
            log: LogConfig {
                level: "info".into(),
                format: LogFormat::Text,
            },
            storage: StorageConfig {
                sync: Synchronous::Full,
                metadata_url: None,
                metadata_password_file: None,
                metadata_max_connections: 16,
                blob_url: None,
                s3_endpoint: None,
                s3_region: "us-east-1".into(),
                s3_access_key_id: None,
                s3_secret_access_key_file: None,
                s3_allow_http: false,
                s3_part_size: registry::storage::s3::DEFAULT_PART_SIZE,
                blob_redirect: false,
                blob_redirect_secs: 300,
            },
            limits: LimitsConfig {
                max_blob_bytes: 64 << 30,
                max_page_entries: 10_000,
                max_concurrent_requests: 1024,
            },
            gc: GcConfig {
                enabled: true,
                interval_secs: 600,
                grace_secs: 3600,
                upload_ttl_secs: 86_400,
                sweep_every: 6,
            },
            auth: AuthSection {
                enabled: true,
                public_url: None,
                service: "berth-registry".into(),
                issuer: "berth".into(),
                token_ttl_secs: 300,
                node_token_ttl_secs: 600,
                login_credential_ttl_secs: 86_400,
                max_failed_logins: 10,
                failed_login_window_secs: 300,
                refresh_interval_ms: 1000,
            },
            tls: TlsSection {
                cert_file: None,
                key_file: None,
                self_signed: false,
                names: vec!["localhost".into(), "127.0.0.1".into()],
                insecure_plain_http: false,
            },
            nodes: NodesSection {
                listen: None,
                heartbeat_secs: 15,
                report_every: 4,
                command_ttl_secs: 86_400,
                poll_ms: 1000,
                offline_after_secs: 45,
                keepalive_secs: 30,
            },
            admin_socket: None,
            shutdown_timeout_secs: 30,
        }
    }
}

/// A configuration that cannot be used, with every problem found.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

/// The variable holding the metadata database's password (not a
/// configuration key: it stays out of the configuration dump).
pub const METADATA_PASSWORD_ENV: &str = "BERTH_METADATA_PASSWORD";

/// The variable holding the S3 secret access key (kept out of the
/// configuration, like the database password).
pub const S3_SECRET_ENV: &str = "BERTH_S3_SECRET_ACCESS_KEY";

/// Values given on the command line, applied last.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

/// Top-level configuration keys: `BERTH_*` variables naming anything else
/// (`BERTH_CONFIG`, read by the command line, or other tools' variables)
/// are not configuration. Typos below a known key are still refused.
const TOP_LEVEL_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "log",
    "storage",
    "limits",
    "gc",
    "auth",
    "tls",
    "nodes",
    "admin_socket",
    "shutdown_timeout_secs",
];

fn config_env_vars() -> std::collections::HashMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| {
            k.strip_prefix("BERTH_").is_some_and(|rest| {
                let key = rest.to_ascii_lowercase();
                TOP_LEVEL_KEYS.contains(&key.split("__").next().unwrap_or(""))
            })
        })
        .collect()
}

impl Config {
    /// Loads defaults, then `file` (if given; it must exist), then the
    /// environment, then `overrides`, and validates the result.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let defaults = config::Config::try_from(&Config::default())
            .map_err(|e| ConfigError(vec![format!("defaults: {e}")]))?;
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(f) = file {
            builder = builder.add_source(
                config::File::from(f)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        builder = builder.add_source(
            config::Environment::with_prefix("BERTH")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(config_env_vars())),
        );
        let set = |b: config::ConfigBuilder<config::builder::DefaultState>, k: &str, v: String| {
            b.set_override(k, v)
                .map_err(|e| ConfigError(vec![format!("{k}: {e}")]))
        };
        if let Some(l) = overrides.listen {
            builder = set(builder, "listen", l.to_string())?;
        }
        if let Some(d) = &overrides.data_dir {
            builder = set(builder, "data_dir", d.display().to_string())?;
        }
        let cfg: Config = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError(vec![e.to_string()]))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that parse but cannot work, reporting all of them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.data_dir.as_os_str().is_empty() {
            problems.push("data_dir must not be empty".to_owned());
        } else if self.data_dir.is_relative() {
            problems.push(format!(
                "data_dir {:?} must be an absolute path",
                self.data_dir
            ));
        }
        if self.limits.max_blob_bytes == 0 {
            problems.push("limits.max_blob_bytes must be positive".into());
        }
        if self.limits.max_page_entries == 0 {
            problems.push("limits.max_page_entries must be positive".into());
        }
        if self.limits.max_concurrent_requests == 0 {
            problems.push("limits.max_concurrent_requests must be positive".into());
        }
        if self.gc.enabled && self.gc.interval_secs == 0 {
            problems.push("gc.interval_secs must be positive when gc.enabled".into());
        }
        let n = &self.nodes;
        if n.heartbeat_secs == 0 || n.heartbeat_secs > 3600 {
            problems.push("nodes.heartbeat_secs must be 1 to 3600".into());
        }
        if n.offline_after_secs <= n.heartbeat_secs {
            problems.push("nodes.offline_after_secs must exceed nodes.heartbeat_secs".into());
        }
        if n.poll_ms < 50 {
            problems.push("nodes.poll_ms must be at least 50".into());
        }
        if n.report_every == 0 {
            problems.push("nodes.report_every must be positive".into());
        }
        if n.command_ttl_secs == 0 {
            problems.push("nodes.command_ttl_secs must be positive".into());
        }
        if n.keepalive_secs == 0 {
            problems.push("nodes.keepalive_secs must be positive".into());
        }
        if let Err(e) = MetadataEngine::from_url(
            self.storage.metadata_url.as_deref(),
            None,
            self.storage.sync,
            1,
        ) {
            problems.push(format!("storage.metadata_url: {e}"));
        }
        // The secret is not read here (validate stays side-effect free): a
        // placeholder stands for it when a key id is given.
        let mut s3 = self.s3_settings(None);
        if s3.access_key_id.is_some() {
            s3.secret_access_key = Some(String::new());
        }
        match BlobEngine::from_url(self.storage.blob_url.as_deref(), s3) {
            Err(e) => problems.push(format!("storage.blob_url: {e}")),
            Ok(BlobEngine::S3(o)) => {
                if o.max_blob_size() < self.limits.max_blob_bytes {
                    problems.push(format!(
                        "storage.s3_part_size {} allows blobs up to {} bytes (10000 parts), below limits.max_blob_bytes {}: raise the part size",
                        o.part_size,
                        o.max_blob_size(),
                        self.limits.max_blob_bytes
                    ));
                }
            }
            Ok(BlobEngine::Filesystem) => {
                if self.storage.blob_redirect {
                    problems
                        .push("storage.blob_redirect needs storage.blob_url (blobs in S3)".into());
                }
            }
        }
        if self.storage.blob_redirect && self.storage.blob_redirect_secs == 0 {
            problems.push("storage.blob_redirect_secs must be positive".into());
        }
        if self.storage.metadata_max_connections == 0 {
            problems.push("storage.metadata_max_connections must be positive".into());
        }
        if self.gc.sweep_every == 0 {
            problems.push("gc.sweep_every must be positive".into());
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            problems.push("tls.cert_file and tls.key_file go together".into());
        }
        if self.tls.cert_file.is_some() && self.tls.self_signed {
            problems.push("tls.self_signed conflicts with tls.cert_file".into());
        }
        if self.tls.names.is_empty() {
            problems.push("tls.names must not be empty".into());
        }
        if self.auth.enabled {
            if self.auth.token_ttl_secs == 0 || self.auth.node_token_ttl_secs == 0 {
                problems.push("auth token lifetimes must be positive".into());
            }
            if self.auth.login_credential_ttl_secs == 0 {
                problems.push("auth.login_credential_ttl_secs must be positive".into());
            }
            if self.auth.service.is_empty() || self.auth.issuer.is_empty() {
                problems.push("auth.service and auth.issuer must not be empty".into());
            }
            if let Some(u) = &self.auth.public_url
                && !(u.starts_with("https://") || u.starts_with("http://"))
            {
                problems.push(format!(
                    "auth.public_url {u:?} must start with https:// or http://"
                ));
            }
        }
        if !self.auth.enabled && self.nodes.listen.is_some() {
            problems.push("nodes.listen needs auth.enabled".into());
        }
        if !self.auth.enabled && !self.listen.ip().is_loopback() {
            problems.push(format!(
                "listen {} is not loopback: without authentication berth-server serves loopback only",
                self.listen
            ));
        }
        if self.auth.enabled
            && !self.listen.ip().is_loopback()
            && !self.tls_enabled()
            && !self.tls.insecure_plain_http
        {
            problems.push(format!(
                "listen {} is not loopback: configure tls (cert_file/key_file or self_signed) or set tls.insecure_plain_http",
                self.listen
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            problems.push(format!("log.level {:?}: {e}", self.log.level));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(problems))
        }
    }

    /// Whether the main listener speaks TLS.
    pub fn tls_enabled(&self) -> bool {
        self.tls.cert_file.is_some() || self.tls.self_signed
    }

    pub fn admin_socket_path(&self) -> PathBuf {
        self.admin_socket
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin.sock"))
    }

    /// The control plane's settings; `replica` names this process in node
    /// status (which replica holds a node's connection).
    pub fn control_config(&self, replica: String) -> control::ControlConfig {
        let n = &self.nodes;
        control::ControlConfig {
            replica,
            heartbeat: Duration::from_secs(n.heartbeat_secs),
            report_every: n.report_every,
            command_ttl: Duration::from_secs(n.command_ttl_secs),
            poll_interval: Duration::from_millis(n.poll_ms),
            offline_after: Duration::from_secs(n.offline_after_secs),
            ..control::ControlConfig::default()
        }
    }

    pub fn auth_config(&self) -> auth::AuthConfig {
        let a = &self.auth;
        auth::AuthConfig {
            issuer: a.issuer.clone(),
            service: a.service.clone(),
            token_ttl: Duration::from_secs(a.token_ttl_secs),
            node_token_ttl: Duration::from_secs(a.node_token_ttl_secs),
            login_credential_ttl: Duration::from_secs(a.login_credential_ttl_secs),
            max_failed_logins: a.max_failed_logins,
            failed_login_window: Duration::from_secs(a.failed_login_window_secs),
            ..auth::AuthConfig::default()
        }
    }

    /// The metadata engine `storage.metadata_url` names, with the password
    /// from `BERTH_METADATA_PASSWORD` or `storage.metadata_password_file`.
    pub fn metadata_engine(&self) -> Result<MetadataEngine, ConfigError> {
        let st = &self.storage;
        let password = match (
            std::env::var(METADATA_PASSWORD_ENV).ok(),
            &st.metadata_password_file,
        ) {
            (Some(p), _) => Some(p),
            (None, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .map_err(|e| {
                        ConfigError(vec![format!(
                            "storage.metadata_password_file {}: {e}",
                            file.display()
                        )])
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            (None, None) => None,
        };
        MetadataEngine::from_url(
            st.metadata_url.as_deref(),
            password,
            st.sync,
            st.metadata_max_connections,
        )
        .map_err(|e| ConfigError(vec![format!("storage.metadata_url: {e}")]))
    }

    fn s3_settings(&self, secret_access_key: Option<String>) -> S3Settings {
        let st = &self.storage;
        S3Settings {
            endpoint: st.s3_endpoint.clone(),
            region: st.s3_region.clone(),
            access_key_id: st.s3_access_key_id.clone(),
            secret_access_key,
            allow_http: st.s3_allow_http,
            part_size: st.s3_part_size,
        }
    }

    /// The blob engine `storage.blob_url` names, with the S3 secret from
    /// `BERTH_S3_SECRET_ACCESS_KEY` or `storage.s3_secret_access_key_file`.
    pub fn blob_engine(&self) -> Result<BlobEngine, ConfigError> {
        let st = &self.storage;
        let secret = match (
            std::env::var(S3_SECRET_ENV).ok(),
            &st.s3_secret_access_key_file,
        ) {
            (Some(s), _) => Some(s),
            (None, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .map_err(|e| {
                        ConfigError(vec![format!(
                            "storage.s3_secret_access_key_file {}: {e}",
                            file.display()
                        )])
                    })?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            (None, None) => None,
        };
        if st.blob_url.is_some() && st.s3_access_key_id.is_some() && secret.is_none() {
            return Err(ConfigError(vec![format!(
                "storage.s3_access_key_id is set but there is no secret: set {S3_SECRET_ENV} or storage.s3_secret_access_key_file"
            )]));
        }
        BlobEngine::from_url(st.blob_url.as_deref(), self.s3_settings(secret))
            .map_err(|e| ConfigError(vec![format!("storage.blob_url: {e}")]))
    }

    /// How long a blob redirect's presigned URL is valid, when blob GETs
    /// redirect.
    pub fn blob_redirect(&self) -> Option<Duration> {
        self.storage
            .blob_redirect
            .then(|| Duration::from_secs(self.storage.blob_redirect_secs))
    }

    pub fn registry_config(&self) -> registry::RegistryConfig {
        registry::RegistryConfig {
            max_blob_size: self.limits.max_blob_bytes,
            gc_grace: Duration::from_secs(self.gc.grace_secs),
            upload_ttl: Duration::from_secs(self.gc.upload_ttl_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn file_then_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:6000\"\ndata_dir = \"/srv/berth\"\n[gc]\ngrace_secs = 5\n",
        )
        .unwrap();
        let cfg = Config::load(
            Some(&path),
            &Overrides {
                listen: Some("127.0.0.1:7000".parse().unwrap()),
                data_dir: None,
            },
        )
        .unwrap();
        assert_eq!(cfg.listen.port(), 7000);
        assert_eq!(cfg.data_dir, PathBuf::from("/srv/berth"));
        assert_eq!(cfg.gc.grace_secs, 5);
        assert_eq!(cfg.gc.interval_secs, 600);
    }

    #[test]
    fn reports_every_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            "data_dir = \"relative\"\n[limits]\nmax_blob_bytes = 0\n",
        )
        .unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        let unknown = dir.path().join("unknown.toml");
        std::fs::write(&unknown, "listn = \"x\"\n").unwrap();
        assert!(Config::load(Some(&unknown), &Overrides::default()).is_err());
    }

    #[test]
    fn metadata_url_picks_the_engine() {
        let mut cfg = Config::default();
        assert!(cfg.metadata_engine().unwrap().is_embedded());
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("pw");
        std::fs::write(&secret, "s3cret\n").unwrap();
        cfg.storage.metadata_url = Some("postgres://berth@db.example:5432/berth".into());
        cfg.storage.metadata_password_file = Some(secret);
        cfg.validate().unwrap();
        match cfg.metadata_engine().unwrap() {
            MetadataEngine::Postgres(o) => {
                assert_eq!(o.url, "postgres://berth@db.example:5432/berth");
                // Unless BERTH_METADATA_PASSWORD is set around this test.
                if std::env::var(METADATA_PASSWORD_ENV).is_err() {
                    assert_eq!(o.password.as_deref(), Some("s3cret"));
                }
                assert_eq!(o.max_connections, 16);
            }
            other => panic!("{other:?}"),
        }
        cfg.storage.metadata_url = Some("mysql://db/berth".into());
        let err = cfg.validate().unwrap_err();
        assert!(
            err.to_string().contains("unsupported metadata URL"),
            "{err}"
        );
        assert!(
            !err.to_string().contains("db/berth"),
            "the URL may hold a password: {err}"
        );
    }

    #[test]
    fn blob_url_picks_the_engine() {
        let mut cfg = Config::default();
        assert!(cfg.blob_engine().unwrap().is_embedded());
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("s3");
        std::fs::write(&secret, "the-secret\n").unwrap();
        cfg.storage.blob_url = Some("s3://berth-blobs/prod".into());
        cfg.storage.s3_endpoint = Some("http://garage.internal:3900".into());
        cfg.storage.s3_region = "garage".into();
        cfg.storage.s3_access_key_id = Some("GK1".into());
        cfg.storage.s3_secret_access_key_file = Some(secret);
        cfg.storage.s3_allow_http = true;
        cfg.storage.blob_redirect = true;
        cfg.validate().unwrap();
        assert_eq!(cfg.blob_redirect(), Some(Duration::from_secs(300)));
        match cfg.blob_engine().unwrap() {
            BlobEngine::S3(o) => {
                assert_eq!(
                    (o.bucket.as_str(), o.prefix.as_str()),
                    ("berth-blobs", "prod")
                );
                assert_eq!(o.endpoint.as_deref(), Some("http://garage.internal:3900"));
                assert_eq!(o.region, "garage");
                assert_eq!(o.part_size, 16 << 20);
                // Unless BERTH_S3_SECRET_ACCESS_KEY is set around this test.
                if std::env::var(S3_SECRET_ENV).is_err() {
                    assert_eq!(o.secret_access_key.as_deref(), Some("the-secret"));
                }
                // The secret never shows in logs.
                assert!(!format!("{o:?}").contains("the-secret"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn blob_settings_that_cannot_work_are_reported_one_line_each() {
        let mut cfg = Config::default();
        cfg.storage.blob_redirect = true;
        let err = cfg.validate().unwrap_err();
        assert_eq!(
            err.0,
            ["storage.blob_redirect needs storage.blob_url (blobs in S3)"]
        );

        let mut cfg = Config::default();
        cfg.storage.blob_url = Some("s3://berth-blobs".into());
        cfg.storage.s3_endpoint = Some("http://garage.internal:3900".into());
        let err = cfg.validate().unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(err.0[0].contains("plain HTTP"), "{err}");

        cfg.storage.s3_allow_http = true;
        cfg.storage.s3_part_size = 1 << 20;
        let err = cfg.validate().unwrap_err();
        assert!(err.0[0].starts_with("storage.blob_url: part size"), "{err}");

        // 10,000 parts of 5 MiB hold less than the 64 GiB default limit.
        cfg.storage.s3_part_size = 5 << 20;
        let err = cfg.validate().unwrap_err();
        assert!(err.0[0].contains("raise the part size"), "{err}");
        cfg.limits.max_blob_bytes = 10 << 30;
        cfg.validate().unwrap();

        for bad in ["gs://bucket", "s3://Bad_Bucket", "s3://key:secret@bucket"] {
            cfg.storage.blob_url = Some(bad.into());
            let err = cfg.validate().unwrap_err();
            assert_eq!(err.0.len(), 1, "{bad}: {err}");
            assert!(err.0[0].starts_with("storage.blob_url: "), "{err}");
            assert!(!err.0[0].contains("secret"), "{err}");
            assert!(!err.0[0].contains('\n'), "{err}");
        }

        // A key id without a secret anywhere.
        let mut cfg = Config::default();
        cfg.storage.blob_url = Some("s3://berth-blobs".into());
        cfg.storage.s3_access_key_id = Some("GK1".into());
        cfg.validate().unwrap();
        if std::env::var(S3_SECRET_ENV).is_err() {
            let err = cfg.blob_engine().unwrap_err();
            assert!(err.to_string().contains(S3_SECRET_ENV), "{err}");
        }
    }
}
