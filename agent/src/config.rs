//! The agent's one typed configuration: a TOML file (default
//! `/etc/berth/agent.toml`), overridden by `BERTH_AGENT_*` environment
//! variables (nested keys joined with `__`), overridden by flags. Loading
//! never stops at the first problem: [`AgentConfig::validate`] lists them all,
//! so `berth-agent validate` (a unit's `ExecStartPre`) shows everything an
//! operator has to fix in one go.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::platform::Platform;

/// Where the configuration is read from unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/agent.toml";
/// Prefix of the environment overrides (`BERTH_AGENT_REGISTRY__URL=…`).
pub const ENV_PREFIX: &str = "BERTH_AGENT";

/// Problems found while loading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Everything the agent needs to know about its node.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    pub registry: RegistrySettings,
    pub node: NodeSettings,
    pub containerd: ContainerdSettings,
    pub pull: PullSettings,
    pub log: LogSettings,
    pub gc: GcSettings,
    pub network: NetworkSettings,
    pub control: ControlSettings,
    /// Local state of the agent (cached tokens are kept in memory only;
    /// this is for what must survive restarts).
    pub data_dir: PathBuf,
    /// Address of the Prometheus `/metrics` endpoint of `berth-agent daemon`;
    /// loopback by default because the metrics are for the box's own
    /// scraper.
    pub metrics_listen: SocketAddr,
}

/// The control-plane connection of `berth-agent daemon`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlSettings {
    /// Keep a connection to the server's control plane (on the node
    /// endpoint) and take its commands and desired state. Default true.
    pub enabled: bool,
    /// The control plane's URL; default `node.auth_url` (the same
    /// endpoint).
    pub url: Option<String>,
    /// HTTP/2 keepalive PING interval, seconds: a dead path (NAT timeout,
    /// a proxy dropping the connection) is found within about twice this.
    pub keepalive_secs: u64,
    /// Longest wait between reconnection attempts, seconds (the waits grow
    /// exponentially from one second, each a random part of its cap).
    pub backoff_max_secs: u64,
}

impl Default for ControlSettings {
    fn default() -> Self {
        ControlSettings {
            enabled: true,
            url: None,
            keepalive_secs: 20,
            backoff_max_secs: 60,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySettings {
    /// Base URL of berth-server's registry endpoint, e.g.
    /// `https://registry.example.com`. Its host becomes the first part of
    /// every image name.
    pub url: String,
    /// The account's namespace (`acme.example.io`): short names are
    /// resolved into it, and nothing outside it is pulled.
    pub namespace: String,
    /// Extra CA certificate (PEM) trusted for the registry endpoint, beside
    /// the system store (self-signed registries).
    pub ca_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSettings {
    /// Base URL of the node endpoint (berth-server's `nodes.listen`), e.g.
    /// `https://registry.example.com:5443`.
    pub auth_url: String,
    /// The node certificate and key written by `berth-server admin node
    /// enroll`, and the CA that signed the node endpoint's certificate.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
    /// The token service name (berth-server's `auth.service`).
    pub service: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerdSettings {
    pub socket: PathBuf,
    pub namespace: String,
    pub snapshotter: String,
    /// containerd's `root`: the free-space check before a pull looks at the
    /// file system holding it.
    pub root: PathBuf,
}

/// Who applies layers to snapshots (see `PullSettings::unpack`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnpackBy {
    Agent,
    Containerd,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PullSettings {
    /// Layers downloaded at once by one pull.
    pub max_parallel_layers: usize,
    /// Who writes layers into snapshots: `agent` (as they download, with
    /// containerd's rules; overlayfs and native snapshotters, gzip and
    /// plain tar layers; anything else falls back) or `containerd`
    /// (Diff.Apply after each download).
    pub unpack: UnpackBy,
    /// Download limit over all pulls of this process, bytes per second.
    pub bandwidth_limit_bytes_per_sec: Option<u64>,
    /// Attempts per blob or manifest before a pull fails.
    pub max_attempts: u32,
    /// Backoff between attempts: full jitter over `base * 2^n`, capped.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Free space kept on containerd's file system beyond what a pull needs.
    pub min_free_bytes: u64,
    /// The node's platform as `os/arch[/variant]`; detected when unset.
    pub platform: Option<String>,
}

/// The daemon's image GC (see `agent::gc`). Durations as `30s`, `15m`,
/// `1h`, `7d`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcSettings {
    /// Unused images not used (or pulled) for this long are removed;
    /// unset: no removal by age.
    pub max_image_age: Option<String>,
    /// Used space (percent) of containerd's root file system above which
    /// unused images are removed, oldest first…
    pub high_disk_percent: u8,
    /// …until usage is below this.
    pub low_disk_percent: u8,
    /// Time between two GC passes of the daemon.
    pub interval: String,
}

impl Default for GcSettings {
    fn default() -> Self {
        // No age limit by default: an appliance may run offline for
        // months and should keep what it has until the disk fills.
        GcSettings {
            max_image_age: None,
            high_disk_percent: 85,
            low_disk_percent: 75,
            interval: "1h".into(),
        }
    }
}

/// The bridge network of containers run with `--network bridge` (or
/// `--publish`), set up by the standard CNI plugins.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSettings {
    /// Where the CNI plugins are looked for, in order (Debian's
    /// containernetworking-plugins installs into /usr/lib/cni).
    pub cni_bin_dirs: Vec<PathBuf>,
    /// The host's bridge interface.
    pub bridge: String,
    /// The containers' IPv4 subnet; the bridge takes its first address.
    pub subnet: String,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings {
            cni_bin_dirs: vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")],
            bridge: "berth0".into(),
            // Outside Docker's 172.17/16 and podman's 10.88/16, so a box
            // running either keeps working.
            subnet: "10.87.0.0/16".into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// tracing filter (`RUST_LOG` overrides).
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            registry: RegistrySettings::default(),
            node: NodeSettings::default(),
            containerd: ContainerdSettings::default(),
            pull: PullSettings::default(),
            log: LogSettings::default(),
            gc: GcSettings::default(),
            network: NetworkSettings::default(),
            control: ControlSettings::default(),
            data_dir: PathBuf::from("/var/lib/berth-agent"),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9465)),
        }
    }
}

impl Default for NodeSettings {
    fn default() -> Self {
        let dir = Path::new("/etc/berth");
        NodeSettings {
            auth_url: String::new(),
            cert_file: dir.join("node.crt"),
            key_file: dir.join("node.key"),
            ca_file: dir.join("ca.crt"),
            service: "berth-registry".into(),
        }
    }
}

impl Default for ContainerdSettings {
    fn default() -> Self {
        ContainerdSettings {
            socket: PathBuf::from("/run/containerd/containerd.sock"),
            namespace: "berth".into(),
            snapshotter: "overlayfs".into(),
            root: PathBuf::from("/var/lib/containerd"),
        }
    }
}

impl Default for PullSettings {
    fn default() -> Self {
        PullSettings {
            max_parallel_layers: 3,
            unpack: UnpackBy::Agent,
            bandwidth_limit_bytes_per_sec: None,
            max_attempts: 6,
            backoff_base_ms: 200,
            backoff_max_ms: 10_000,
            min_free_bytes: 256 * 1024 * 1024,
            platform: None,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// Overrides given as flags, applied over the file and the environment.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub registry_url: Option<String>,
    pub namespace: Option<String>,
    pub containerd_socket: Option<PathBuf>,
    pub containerd_namespace: Option<String>,
}

impl AgentConfig {
    /// Reads `path` (which must exist when `required`, i.e. given
    /// explicitly), then the environment, then `overrides`; validates.
    pub fn load(
        path: &Path,
        required: bool,
        overrides: &Overrides,
    ) -> Result<AgentConfig, ConfigError> {
        let mut cfg = Self::load_unvalidated(path, required, overrides)?;
        cfg.normalise();
        let problems = cfg.validate();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// [`load`](Self::load) without the validation, for `validate` to
    /// report problems itself.
    pub fn load_unvalidated(
        path: &Path,
        required: bool,
        overrides: &Overrides,
    ) -> Result<AgentConfig, ConfigError> {
        let built = config::Config::builder()
            .add_source(config::File::from(path).required(required))
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("_")
                    .separator("__"),
            )
            .build()?;
        let mut cfg: AgentConfig = built.try_deserialize()?;
        if let Some(v) = &overrides.registry_url {
            cfg.registry.url.clone_from(v);
        }
        if let Some(v) = &overrides.namespace {
            cfg.registry.namespace.clone_from(v);
        }
        if let Some(v) = &overrides.containerd_socket {
            cfg.containerd.socket.clone_from(v);
        }
        if let Some(v) = &overrides.containerd_namespace {
            cfg.containerd.namespace.clone_from(v);
        }
        Ok(cfg)
    }

    /// Trailing slashes of URLs would double up in request paths.
    fn normalise(&mut self) {
        while self.registry.url.ends_with('/') {
            self.registry.url.pop();
        }
        while self.node.auth_url.ends_with('/') {
            self.node.auth_url.pop();
        }
    }

    /// Every problem of this configuration, empty when it is usable.
    /// Files are checked for existence here so that a unit's
    /// `ExecStartPre=berth-agent validate` catches a missing certificate.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match url_host(&self.registry.url) {
            Ok(_) => {}
            Err(e) => problems.push(format!("registry.url: {e}")),
        }
        if self.registry.namespace.is_empty() {
            problems.push("registry.namespace: must be set (the account's namespace)".into());
        } else if !valid_namespace(&self.registry.namespace) {
            problems.push(format!(
                "registry.namespace: {:?} is not a repository name component",
                self.registry.namespace
            ));
        }
        match url_host(&self.node.auth_url) {
            Ok(_) if !self.node.auth_url.starts_with("https://") => problems
                .push("node.auth_url: must be https:// (the node endpoint is mTLS only)".into()),
            Ok(_) => {}
            Err(e) => problems.push(format!("node.auth_url: {e}")),
        }
        for (key, path) in [
            ("node.cert_file", &self.node.cert_file),
            ("node.key_file", &self.node.key_file),
            ("node.ca_file", &self.node.ca_file),
        ] {
            if !path.is_file() {
                problems.push(format!("{key}: {} is not a readable file", path.display()));
            }
        }
        if let Some(url) = &self.control.url {
            match url_host(url) {
                Ok(_) if !url.starts_with("https://") => problems
                    .push("control.url: must be https:// (the node endpoint is mTLS only)".into()),
                Ok(_) => {}
                Err(e) => problems.push(format!("control.url: {e}")),
            }
        }
        if self.control.keepalive_secs == 0 {
            problems.push("control.keepalive_secs: must be positive".into());
        }
        if self.control.backoff_max_secs == 0 {
            problems.push("control.backoff_max_secs: must be positive".into());
        }
        if let Some(ca) = &self.registry.ca_file
            && !ca.is_file()
        {
            problems.push(format!(
                "registry.ca_file: {} is not a readable file",
                ca.display()
            ));
        }
        if self.containerd.namespace.is_empty() {
            problems.push("containerd.namespace: must not be empty".into());
        }
        if self.containerd.snapshotter.is_empty() {
            problems.push("containerd.snapshotter: must not be empty".into());
        }
        if !(1..=64).contains(&self.pull.max_parallel_layers) {
            problems.push("pull.max_parallel_layers: must be between 1 and 64".into());
        }
        if self.pull.bandwidth_limit_bytes_per_sec == Some(0) {
            problems.push("pull.bandwidth_limit_bytes_per_sec: must be positive (or unset)".into());
        }
        if self.pull.max_attempts == 0 {
            problems.push("pull.max_attempts: must be at least 1".into());
        }
        if self.pull.backoff_base_ms == 0 || self.pull.backoff_max_ms < self.pull.backoff_base_ms {
            problems.push("pull.backoff_base_ms / backoff_max_ms: need 0 < base <= max".into());
        }
        if let Some(p) = &self.pull.platform
            && let Err(e) = p.parse::<Platform>()
        {
            problems.push(format!("pull.platform: {e}"));
        }
        if let Some(age) = &self.gc.max_image_age
            && let Err(e) = crate::gc::parse_age(age)
        {
            problems.push(format!("gc.max_image_age: {e}"));
        }
        match crate::gc::parse_age(&self.gc.interval) {
            Ok(d) if d.is_zero() => problems.push("gc.interval: must be positive".into()),
            Ok(_) => {}
            Err(e) => problems.push(format!("gc.interval: {e}")),
        }
        if !(self.gc.low_disk_percent < self.gc.high_disk_percent
            && self.gc.high_disk_percent <= 100)
        {
            problems.push("gc.low_disk_percent / high_disk_percent: need low < high <= 100".into());
        }
        if let Err(e) = crate::runtime::network::Subnet::parse(&self.network.subnet) {
            problems.push(format!("network.subnet: {e}"));
        }
        if !crate::runtime::network::valid_interface_name(&self.network.bridge) {
            problems.push(format!(
                "network.bridge: {:?} is not an interface name (1-15 of a-z, 0-9, `-`, `_`, `.`)",
                self.network.bridge
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            problems.push(format!(
                "log.format: {:?} is neither \"text\" nor \"json\"",
                self.log.format
            ));
        }
        problems
    }

    /// `host[:port]` of the registry: the first component of image names.
    pub fn registry_host(&self) -> String {
        url_host(&self.registry.url).unwrap_or_default()
    }

    /// The platform to pull: configured, or the one this binary runs on.
    /// The control plane's URL: `control.url`, else `node.auth_url`.
    pub fn control_url(&self) -> &str {
        self.control.url.as_deref().unwrap_or(&self.node.auth_url)
    }

    pub fn platform(&self) -> Platform {
        self.pull
            .platform
            .as_deref()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(Platform::host)
    }
}

/// `host[:port]` of an `http(s)://host[:port]` URL without a path.
fn url_host(url: &str) -> Result<String, String> {
    if url.is_empty() {
        return Err("must be set".into());
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?} must start with http:// or https://"))?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "{url:?} must be a scheme and host[:port], nothing else"
        ));
    }
    Ok(rest.to_owned())
}

/// A namespace is one or more lowercase path components (the registry's
/// repository-name grammar, which allows dots in components).
fn valid_namespace(ns: &str) -> bool {
    ns.split('/').all(|c| {
        !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_report_every_missing_setting() {
        let cfg = AgentConfig {
            node: NodeSettings {
                cert_file: "/nonexistent/node.crt".into(),
                key_file: "/nonexistent/node.key".into(),
                ca_file: "/nonexistent/ca.crt".into(),
                ..NodeSettings::default()
            },
            ..AgentConfig::default()
        };
        let problems = cfg.validate();
        let joined = problems.join("\n");
        for key in [
            "registry.url",
            "registry.namespace",
            "node.auth_url",
            "node.cert_file",
            "node.key_file",
            "node.ca_file",
        ] {
            assert!(joined.contains(key), "{key} missing from {joined}");
        }
    }

    #[test]
    fn file_environment_and_flags_layer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "data_dir = \"/x\"\n[registry]\nurl = \"http://a:1/\"\nnamespace = \"acme.io\"\n\
             [pull]\nmax_parallel_layers = 5\nplatform = \"linux/arm/v7\"\n",
        )
        .unwrap();
        let overrides = Overrides {
            namespace: Some("other.io".into()),
            ..Overrides::default()
        };
        let mut cfg = AgentConfig::load_unvalidated(&path, true, &overrides).unwrap();
        cfg.normalise();
        assert_eq!(cfg.registry.url, "http://a:1");
        assert_eq!(cfg.registry_host(), "a:1");
        assert_eq!(cfg.registry.namespace, "other.io");
        assert_eq!(cfg.pull.max_parallel_layers, 5);
        assert_eq!(cfg.platform().to_string(), "linux/arm/v7");
        // Unknown keys are typos, not silently ignored settings.
        std::fs::write(&path, "[registry]\nulr = \"x\"\n").unwrap();
        assert!(AgentConfig::load_unvalidated(&path, true, &Overrides::default()).is_err());
    }

    #[test]
    fn bad_values_are_named() {
        let cfg = AgentConfig {
            registry: RegistrySettings {
                url: "ftp://x".into(),
                namespace: "Acme".into(),
                ca_file: None,
            },
            pull: PullSettings {
                max_parallel_layers: 0,
                platform: Some("linux".into()),
                ..PullSettings::default()
            },
            ..AgentConfig::default()
        };
        let joined = cfg.validate().join("\n");
        assert!(joined.contains("ftp://x"), "{joined}");
        assert!(joined.contains("\"Acme\""), "{joined}");
        assert!(joined.contains("max_parallel_layers"), "{joined}");
        assert!(joined.contains("pull.platform"), "{joined}");
    }
}
