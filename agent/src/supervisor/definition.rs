//! Container definitions: what the supervisor keeps running, one JSON file
//! per container under `<data_dir>/containers.d/`, plus the `start`
//! requests of on-demand containers (`<name>.start` beside them).
//!
//! Files rather than a socket: the CLI works whether or not the daemon
//! runs (a definition written while it is down is picked up when it
//! starts), the desired state survives reboots with no extra step, and the
//! daemon needs no listener to secure. Every write is a temp file, fsync,
//! rename and a directory fsync, so a crash leaves the old file or the new
//! one, never half of one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::SupervisorError;
use crate::runtime::settings::Settings;
use crate::runtime::spec::Overrides;
use crate::runtime::{RunRequest, validate_name};

type Result<T> = std::result::Result<T, SupervisorError>;

/// How a container is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecType {
    /// Started, and restarted whenever it exits.
    Service,
    /// Started at each tick of its cron schedule.
    Recurring,
    /// Started only by `berth-agent start`.
    OnDemand,
}

impl ExecType {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecType::Service => "service",
            ExecType::Recurring => "recurring",
            ExecType::OnDemand => "on-demand",
        }
    }
}

impl std::str::FromStr for ExecType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "service" => Ok(ExecType::Service),
            "recurring" => Ok(ExecType::Recurring),
            "on-demand" => Ok(ExecType::OnDemand),
            _ => Err(format!("{s:?}: expected service, recurring or on-demand")),
        }
    }
}

/// The `run` options kept in a definition. A copy of what `run` takes
/// rather than [`Overrides`] itself, which is not serialisable and grows
/// with the runtime; [`Definition::run_request`] maps one onto the other.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunOptions {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub hostname: Option<String>,
    pub user: Option<String>,
    pub stop_timeout_secs: Option<u64>,
    /// Privileged mode, capabilities, mounts, volumes, limits, log limits.
    /// Defaulted so definitions written before settings existed still load
    /// (as ordinary containers without limits).
    #[serde(default)]
    pub settings: Settings,
}

/// Restart backoff of a service: `initial`, doubled at each exit up to
/// `max`; back to `initial` once a run lasted `reset_after`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackoffSettings {
    pub initial_ms: u64,
    pub max_ms: u64,
    pub reset_after_secs: u64,
}

impl Default for BackoffSettings {
    fn default() -> Self {
        // kubelet's shape (10 s doubling to 5 min) is tuned for clusters;
        // an appliance has nothing else to do, so restart sooner.
        BackoffSettings {
            initial_ms: 1_000,
            max_ms: 60_000,
            reset_after_secs: 60,
        }
    }
}

/// A health check: `cmd` run inside the container (Tasks.Exec) every
/// `interval_ms`; exit 0 within `timeout_ms` passes. After `retries`
/// failures in a row the container is restarted. No probe during the
/// first `start_period_ms` of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthCheck {
    pub cmd: Vec<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
    pub start_period_ms: u64,
}

impl Default for HealthCheck {
    fn default() -> Self {
        // Docker's defaults.
        HealthCheck {
            cmd: Vec::new(),
            interval_ms: 30_000,
            timeout_ms: 30_000,
            retries: 3,
            start_period_ms: 0,
        }
    }
}

/// One supervised container.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub name: String,
    /// As typed on the box (`app:v1`); resolved into the namespace by `run`.
    pub image: String,
    #[serde(rename = "type")]
    pub exec_type: ExecType,
    /// Cron schedule of a recurring container: 5 fields, or 6 with
    /// seconds first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default)]
    pub run: RunOptions,
    #[serde(default)]
    pub backoff: BackoffSettings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
}

impl Definition {
    /// Every problem of the definition, so `define` refuses it before
    /// the daemon ever sees it.
    pub fn validate(&self) -> Result<()> {
        validate_name(&self.name)?;
        let bad = |m: String| Err(SupervisorError::Invalid(format!("{}: {m}", self.name)));
        if self.image.is_empty() {
            return bad("no image".into());
        }
        match (self.exec_type, &self.schedule) {
            (ExecType::Recurring, None) => {
                return bad("a recurring container needs --schedule".into());
            }
            (ExecType::Recurring, Some(s)) => {
                super::policy::parse_schedule(s)?;
            }
            (_, Some(_)) => return bad("--schedule is for recurring containers only".into()),
            (_, None) => {}
        }
        let b = &self.backoff;
        if b.initial_ms == 0 || b.max_ms < b.initial_ms {
            return bad("backoff: initial must be > 0 and max >= initial".into());
        }
        if let Some(h) = &self.health {
            if h.cmd.is_empty() {
                return bad("health check without a command".into());
            }
            if h.interval_ms == 0 || h.timeout_ms == 0 || h.retries == 0 {
                return bad("health check interval, timeout and retries must be > 0".into());
            }
        }
        // A hand-edited file can carry settings `define` would refuse;
        // refused here so `list` skips it instead of failing every start.
        self.run.settings.validate()?;
        Ok(())
    }

    /// What the runtime's `run` is given for each start.
    pub fn run_request(&self) -> RunRequest {
        RunRequest {
            name: self.name.clone(),
            image: self.image.clone(),
            overrides: Overrides {
                cmd: self.run.cmd.clone(),
                env: self.run.env.clone(),
                hostname: self.run.hostname.clone(),
                user: self.run.user.clone(),
                settings: self.run.settings.clone(),
            },
            stop_timeout: self.run.stop_timeout_secs.map(Duration::from_secs),
        }
    }
}

/// `500ms`, `2s`, `1m`, or plain seconds.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration like 500ms, 5s or 1m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unit must be ms, s or m")),
    }
}

/// The definitions directory.
#[derive(Clone, Debug)]
pub struct DefinitionStore {
    dir: PathBuf,
}

const DEF_EXT: &str = "json";
const START_EXT: &str = "start";
const HOLD_EXT: &str = "hold";

impl DefinitionStore {
    /// `<data_dir>/containers.d`.
    pub fn new(data_dir: &Path) -> DefinitionStore {
        DefinitionStore {
            dir: data_dir.join("containers.d"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{name}.{ext}"))
    }

    pub fn save(&self, def: &Definition) -> Result<()> {
        def.validate()?;
        let bytes = serde_json::to_vec_pretty(def)
            .map_err(|e| SupervisorError::Invalid(format!("encoding {}: {e}", def.name)))?;
        write_atomic(&self.path(&def.name, DEF_EXT), &bytes)
    }

    pub fn load(&self, name: &str) -> Result<Option<Definition>> {
        validate_name(name)?;
        read_def(&self.path(name, DEF_EXT))
    }

    /// Removes the definition (and any pending start); `false` when there
    /// was none.
    pub fn remove(&self, name: &str) -> Result<bool> {
        validate_name(name)?;
        let start = remove_file(&self.path(name, START_EXT))?;
        let held = remove_file(&self.path(name, HOLD_EXT))?;
        let removed = remove_file(&self.path(name, DEF_EXT))?;
        // Nothing removed, nothing to sync (the directory may not exist:
        // nothing was ever defined on this box).
        if start || held || removed {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Every readable definition by name. A file that does not parse is
    /// logged and skipped rather than failing the others; its container
    /// is left alone (not stopped) until it is fixed or undefined.
    pub fn list(&self) -> Result<(BTreeMap<String, Definition>, Vec<String>)> {
        let mut defs = BTreeMap::new();
        let mut broken = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((defs, broken)),
            Err(e) => return Err(SupervisorError::io(&self.dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| SupervisorError::io(&self.dir, e))?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some(DEF_EXT) {
                continue;
            }
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            match read_def(&path) {
                Ok(Some(d)) if d.name == stem && d.validate().is_ok() => {
                    defs.insert(d.name.clone(), d);
                }
                Ok(None) => {}
                Ok(Some(_)) | Err(_) => broken.push(stem.to_owned()),
            }
        }
        Ok((defs, broken))
    }

    /// Asks the daemon to start on-demand container `name`.
    pub fn request_start(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        write_atomic(&self.path(name, START_EXT), b"")
    }

    /// Holds `name`: the supervisor starts it no more (a service is not
    /// restarted, recurring ticks are skipped) until [`Self::release`],
    /// which a new `run`/`define`, a start request or a desired state
    /// naming it does. What `stop` of a supervised container means.
    pub fn hold(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        write_atomic(&self.path(name, HOLD_EXT), b"")
    }

    /// Ends a hold; `true` when there was one.
    pub fn release(&self, name: &str) -> Result<bool> {
        validate_name(name)?;
        let released = remove_file(&self.path(name, HOLD_EXT))?;
        if released {
            sync_dir(&self.dir)?;
        }
        Ok(released)
    }

    pub fn is_held(&self, name: &str) -> bool {
        validate_name(name).is_ok() && self.path(name, HOLD_EXT).exists()
    }

    /// Takes a pending start request of `name`: `true` once per request.
    pub fn take_start(&self, name: &str) -> Result<bool> {
        remove_file(&self.path(name, START_EXT))
    }
}

fn read_def(path: &Path) -> Result<Option<Definition>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| SupervisorError::Invalid(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SupervisorError::io(path, e)),
    }
}

fn remove_file(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(SupervisorError::io(path, e)),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SupervisorError::io(dir, e))
}

/// [`crate::fsutil::write_atomic`], with the supervisor's error.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::fsutil::write_atomic(path, bytes).map_err(|e| SupervisorError::io(path, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn def(name: &str) -> Definition {
        Definition {
            name: name.into(),
            image: "app:v1".into(),
            exec_type: ExecType::Recurring,
            schedule: Some("*/5 * * * *".into()),
            run: RunOptions {
                cmd: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
                env: vec!["A=b".into()],
                hostname: Some("h".into()),
                user: None,
                stop_timeout_secs: Some(3),
                settings: Settings::default(),
            },
            backoff: BackoffSettings::default(),
            health: Some(HealthCheck {
                cmd: vec!["true".into()],
                ..HealthCheck::default()
            }),
        }
    }

    #[test]
    fn definitions_round_trip_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = DefinitionStore::new(dir.path());
        assert!(store.list().unwrap().0.is_empty());
        let a = def("job-a");
        let mut b = def("svc-b");
        b.exec_type = ExecType::Service;
        b.schedule = None;
        b.health = None;
        store.save(&a).unwrap();
        store.save(&b).unwrap();
        assert_eq!(store.load("job-a").unwrap().unwrap(), a);
        let (all, broken) = store.list().unwrap();
        assert!(broken.is_empty());
        assert_eq!(all.len(), 2);
        assert_eq!(all["svc-b"], b);
        // Overwrite in place; no temp file stays behind.
        b.image = "app:v2".into();
        store.save(&b).unwrap();
        assert_eq!(store.load("svc-b").unwrap().unwrap().image, "app:v2");
        let names: Vec<_> = std::fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // The file is the documented JSON.
        let raw: serde_json::Value =
            serde_json::from_slice(&std::fs::read(store.dir().join("job-a.json")).unwrap())
                .unwrap();
        assert_eq!(raw["type"], "recurring");
        assert_eq!(raw["schedule"], "*/5 * * * *");
        // A broken file is reported, the rest still listed.
        std::fs::write(store.dir().join("bad.json"), b"{").unwrap();
        let (all, broken) = store.list().unwrap();
        assert_eq!((all.len(), broken), (2, vec!["bad".to_owned()]));
        assert!(store.remove("job-a").unwrap());
        assert!(!store.remove("job-a").unwrap());
        assert!(store.load("job-a").unwrap().is_none());
    }

    #[test]
    fn settings_round_trip_and_old_files_load() {
        use crate::runtime::settings::{
            BindMount, CapName, LogLimits, NetworkMode, VolumeMount, parse_port,
        };
        let dir = tempfile::tempdir().unwrap();
        let store = DefinitionStore::new(dir.path());
        let mut d = def("with-settings");
        d.run.settings = Settings {
            privileged: false,
            cap_add: vec![CapName::parse("NET_ADMIN").unwrap()],
            cap_drop: vec![CapName::All],
            mounts: vec![BindMount {
                source: dir.path().to_owned(),
                target: "/host".into(),
                readonly: true,
            }],
            volumes: vec![VolumeMount {
                name: "data".into(),
                target: "/data".into(),
                readonly: false,
            }],
            memory_bytes: Some(64 << 20),
            cpu_quota_us: Some(50_000),
            log: LogLimits {
                max_size: Some(1 << 20),
                max_files: 3,
            },
            network: NetworkMode::Bridge,
            ports: vec![parse_port("127.0.0.1:8080:80/udp").unwrap()],
        };
        store.save(&d).unwrap();
        assert_eq!(store.load("with-settings").unwrap().unwrap(), d);
        let raw: serde_json::Value =
            serde_json::from_slice(&std::fs::read(store.dir().join("with-settings.json")).unwrap())
                .unwrap();
        assert_eq!(raw["run"]["settings"]["cap_add"][0], "CAP_NET_ADMIN");
        assert_eq!(raw["run"]["settings"]["memory_bytes"], 64 << 20);
        assert_eq!(raw["run"]["settings"]["network"], "bridge");
        assert_eq!(raw["run"]["settings"]["ports"][0]["protocol"], "udp");
        assert_eq!(d.run_request().overrides.settings, d.run.settings);

        // A file written before definitions had settings: no `settings`
        // key at all, and one naming only some settings.
        let old = r#"{"name":"old","image":"app:v1","type":"service",
            "run":{"cmd":["sleep","1"],"stop_timeout_secs":2}}"#;
        std::fs::write(store.dir().join("old.json"), old).unwrap();
        let partial = r#"{"name":"part","image":"app:v1","type":"on-demand",
            "run":{"settings":{"memory_bytes":67108864}}}"#;
        std::fs::write(store.dir().join("part.json"), partial).unwrap();
        let (all, broken) = store.list().unwrap();
        assert!(broken.is_empty(), "{broken:?}");
        assert_eq!(all["old"].run.settings, Settings::default());
        assert_eq!(all["old"].run.stop_timeout_secs, Some(2));
        assert_eq!(all["part"].run.settings.memory_bytes, Some(64 << 20));
        assert_eq!(all["part"].run.settings.log, LogLimits::default());

        // Settings the runtime would refuse make the definition invalid.
        let mut bad = def("bad-settings");
        bad.run.settings.log.max_files = 0;
        assert!(bad.validate().is_err());
        assert!(store.save(&bad).is_err());
    }

    #[test]
    fn start_requests_are_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = DefinitionStore::new(dir.path());
        assert!(!store.take_start("once").unwrap());
        store.request_start("once").unwrap();
        store.request_start("once").unwrap();
        assert!(store.take_start("once").unwrap());
        assert!(!store.take_start("once").unwrap());
    }

    #[test]
    fn invalid_definitions_are_refused() {
        let mut d = def("x");
        d.schedule = None;
        assert!(d.validate().is_err());
        d.schedule = Some("not a cron".into());
        assert!(d.validate().is_err());
        let mut d = def("x");
        d.exec_type = ExecType::Service;
        assert!(d.validate().is_err(), "schedule on a service");
        let mut d = def("../x");
        d.exec_type = ExecType::OnDemand;
        d.schedule = None;
        assert!(d.validate().is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5h").is_err());
    }
}
