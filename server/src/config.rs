//! berth-server's configuration: one typed struct, loaded by the `config`
//! crate from an optional TOML file, then `BERTH_*` environment variables
//! (`BERTH_GC__GRACE_SECS=60` sets `gc.grace_secs`), then command-line flags.
//! Every key has a default, documented on its field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use registry::storage::sqlite::Synchronous;
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
    /// How long in-flight requests may run on after SIGTERM. Default 30.
    pub shutdown_timeout_secs: u64,
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
    /// the process but may lose the last commits on power loss.
    pub sync: Synchronous,
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
            shutdown_timeout_secs: 30,
        }
    }
}

/// A configuration that cannot be used, with every problem found.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

/// Values given on the command line, applied last.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
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
                .try_parsing(true),
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
        if self.gc.sweep_every == 0 {
            problems.push("gc.sweep_every must be positive".into());
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
}
