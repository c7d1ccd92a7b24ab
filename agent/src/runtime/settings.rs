//! The per-container settings of `run` beyond the process: privileged
//! mode, capabilities, bind mounts and named volumes, memory and CPU
//! limits, log size limits. Parsed and validated here from what users
//! type (`512m`, `0.5`, `type=bind,source=…`), so a mistake is reported
//! before anything is created; [`super::spec`] turns them into OCI fields.
//! Nothing here touches containerd; the few host facts the spec needs
//! (devices, whether a source exists) are read by the runtime and passed in.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::runtime::{Capability, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceType};
use serde::{Deserialize, Serialize};

use super::RuntimeError;

/// The settings as users spell them: `run` and `define` flags, and the
/// control plane's container spec. [`SettingsInput::settings`] parses and
/// validates them all, so both paths accept and refuse the same things.
#[derive(Clone, Debug, Default)]
pub struct SettingsInput {
    pub privileged: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// `type=bind,…` or `type=volume,…`.
    pub mounts: Vec<String>,
    /// `NAME:/target[:ro]`.
    pub volumes: Vec<String>,
    pub memory: Option<String>,
    pub cpus: Option<String>,
    pub log_max_size: Option<String>,
    pub log_max_files: Option<u32>,
    /// `host`, `bridge`, `none`; unset: bridge when ports are published,
    /// else host.
    pub network: Option<String>,
    pub publish: Vec<String>,
}

impl SettingsInput {
    pub fn settings(&self) -> Result<Settings, RuntimeError> {
        let parse_caps = |names: &[String]| {
            names
                .iter()
                .map(|n| CapName::parse(n))
                .collect::<Result<Vec<_>, _>>()
        };
        let mut settings = Settings {
            privileged: self.privileged,
            cap_add: parse_caps(&self.cap_add)?,
            cap_drop: parse_caps(&self.cap_drop)?,
            memory_bytes: self.memory.as_deref().map(parse_memory).transpose()?,
            cpu_quota_us: self.cpus.as_deref().map(parse_cpus).transpose()?,
            ..Settings::default()
        };
        for m in &self.mounts {
            match parse_mount(m)? {
                Mounted::Bind(b) => settings.mounts.push(b),
                Mounted::Volume(v) => settings.volumes.push(v),
            }
        }
        for v in &self.volumes {
            settings.volumes.push(parse_volume(v)?);
        }
        if let Some(size) = &self.log_max_size {
            settings.log.max_size = Some(
                parse_bytes(size)
                    .map_err(|e| RuntimeError::Invalid(format!("--log-max-size {e}")))?,
            );
        }
        if let Some(files) = self.log_max_files {
            if settings.log.max_size.is_none() {
                return Err(RuntimeError::Invalid(
                    "--log-max-files needs --log-max-size".into(),
                ));
            }
            settings.log.max_files = files;
        }
        for p in &self.publish {
            settings.ports.push(parse_port(p)?);
        }
        settings.network = match &self.network {
            Some(mode) => NetworkMode::parse(mode)?,
            // Publishing a port only makes sense on the bridge.
            None if !settings.ports.is_empty() => NetworkMode::Bridge,
            None => NetworkMode::Host,
        };
        settings.validate()?;
        Ok(settings)
    }
}

/// The CFS period the CPU quota is expressed in (Docker's and the
/// kernel's default, 100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;
/// Below this the kernel refuses the quota (1 ms).
const MIN_CPU_QUOTA_US: u64 = 1_000;
/// Docker's floor for `--memory`: less than this and runc's own init
/// cannot start reliably.
pub const MIN_MEMORY_BYTES: u64 = 6 << 20;
/// Files kept per container when only `--log-max-size` is given.
pub const DEFAULT_LOG_MAX_FILES: u32 = 1;

/// Every per-container setting of `run` beyond the process, validated.
/// `Default` is an ordinary, unprivileged container without limits.
// Field defaults: a hand-written definition file may name only the
// settings it changes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Every capability, every host device, no masked or read-only paths,
    /// `/sys` writable, no `no_new_privileges`.
    pub privileged: bool,
    pub cap_add: Vec<CapName>,
    pub cap_drop: Vec<CapName>,
    pub mounts: Vec<BindMount>,
    pub volumes: Vec<VolumeMount>,
    /// cgroup memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CFS quota in microseconds per [`CPU_PERIOD_US`].
    pub cpu_quota_us: Option<u64>,
    pub log: LogLimits,
    /// Which network namespace the container gets.
    pub network: NetworkMode,
    /// Host ports forwarded to the container (bridge network only).
    pub ports: Vec<PortMapping>,
}

/// A container's network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// The host's network namespace: what most appliance services want,
    /// and the only mode that needs no CNI plugins.
    #[default]
    Host,
    /// Its own namespace on the agent's bridge (an address from
    /// `network.subnet`, NAT to the outside, `--publish` for the inside).
    Bridge,
    /// Its own namespace with only a loopback interface.
    None,
}

impl NetworkMode {
    pub fn parse(s: &str) -> Result<NetworkMode, RuntimeError> {
        match s {
            "host" => Ok(NetworkMode::Host),
            "bridge" => Ok(NetworkMode::Bridge),
            "none" => Ok(NetworkMode::None),
            _ => Err(invalid(format!(
                "--network {s:?}: one of host, bridge, none"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Host => "host",
            NetworkMode::Bridge => "bridge",
            NetworkMode::None => "none",
        }
    }
}

/// TCP or UDP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// `--publish [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// `None`: every address of the host.
    pub host_ip: Option<std::net::Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl std::fmt::Display for PortMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port,
            self.container_port,
            self.protocol.as_str()
        )
    }
}

/// Parses one `--publish` value. Only IPv4 host addresses: the bridge
/// network has no IPv6 subnet.
pub fn parse_port(s: &str) -> Result<PortMapping, RuntimeError> {
    let bad = |why: &str| {
        invalid(format!(
            "--publish {s:?}: {why} (want [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp])"
        ))
    };
    let (ports, protocol) = match s.rsplit_once('/') {
        Some((p, "tcp")) => (p, Protocol::Tcp),
        Some((p, "udp")) => (p, Protocol::Udp),
        Some(_) => return Err(bad("the protocol is tcp or udp")),
        None => (s, Protocol::Tcp),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (host_ip, host_port, container_port) = match parts.as_slice() {
        [h, c] => (None, *h, *c),
        [ip, h, c] => {
            let ip: std::net::Ipv4Addr = ip
                .parse()
                .map_err(|_| bad("the host address is not IPv4"))?;
            (Some(ip), *h, *c)
        }
        _ => return Err(bad("wrong number of fields")),
    };
    let port = |p: &str| match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad("ports are 1-65535")),
        Ok(n) => Ok(n),
    };
    Ok(PortMapping {
        host_ip,
        host_port: port(host_port)?,
        container_port: port(container_port)?,
        protocol,
    })
}

/// A capability as named on the command line, or `ALL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CapName {
    All,
    One(Capability),
}

impl CapName {
    /// `CHOWN`, `cap_chown`, `CAP_CHOWN`, `ALL`.
    pub fn parse(s: &str) -> Result<CapName, RuntimeError> {
        let upper = s.trim().to_ascii_uppercase();
        if upper == "ALL" {
            return Ok(CapName::All);
        }
        let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
        Capability::from_str(bare)
            .map(CapName::One)
            .map_err(|_| RuntimeError::Invalid(format!("unknown capability {s:?}")))
    }
}

impl std::fmt::Display for CapName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CapName::All => f.write_str("ALL"),
            CapName::One(c) => write!(f, "CAP_{c}"),
        }
    }
}

// As strings (`CAP_CHOWN`, `ALL`), so settings stored in a label or a
// state file read the way they were typed.
impl Serialize for CapName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CapName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CapName::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A host directory or file bind-mounted into the container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: String,
    pub readonly: bool,
}

/// A named volume (`<data_dir>/volumes/<name>`) mounted into the container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    pub name: String,
    pub target: String,
    pub readonly: bool,
}

/// Size limits of a container's output log. `max_size: None`: one file,
/// unbounded (the shim writes it directly).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LogLimits {
    pub max_size: Option<u64>,
    /// Files kept in all, the current one included (`output.log`,
    /// `output.log.1`, …).
    pub max_files: u32,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_size: None,
            max_files: DEFAULT_LOG_MAX_FILES,
        }
    }
}

fn invalid(msg: String) -> RuntimeError {
    RuntimeError::Invalid(msg)
}

/// `1048576`, `512k`, `64m`, `1g` (also `kb`/`KiB`…, all binary
/// multiples, as Docker reads them).
pub fn parse_bytes(s: &str) -> Result<u64, RuntimeError> {
    let t = s.trim().to_ascii_lowercase();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    let n: u64 = num.parse().map_err(|_| {
        invalid(format!(
            "{s:?}: expected a size like 1048576, 512k, 64m or 1g"
        ))
    })?;
    let shift = match unit {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(invalid(format!(
                "{s:?}: unknown unit {unit:?} (use b, k, m, g or t)"
            )));
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| invalid(format!("{s:?}: too large")))
}

/// `--memory`: at least [`MIN_MEMORY_BYTES`], and within the kernel's
/// signed 64-bit field.
pub fn parse_memory(s: &str) -> Result<u64, RuntimeError> {
    let n = parse_bytes(s).map_err(|e| invalid(format!("--memory {e}")))?;
    if n < MIN_MEMORY_BYTES {
        return Err(invalid(format!(
            "--memory {s}: at least {} MiB",
            MIN_MEMORY_BYTES >> 20
        )));
    }
    if i64::try_from(n).is_err() {
        return Err(invalid(format!("--memory {s}: too large")));
    }
    Ok(n)
}

/// `--cpus 0.5` → the CFS quota in µs per [`CPU_PERIOD_US`] (50000).
pub fn parse_cpus(s: &str) -> Result<u64, RuntimeError> {
    let cpus: f64 = s
        .trim()
        .parse()
        .map_err(|_| invalid(format!("--cpus {s:?}: expected a number like 0.5 or 2")))?;
    if !cpus.is_finite() || cpus <= 0.0 || cpus > 1024.0 {
        return Err(invalid(format!(
            "--cpus {s}: between 0.01 and the number of CPUs"
        )));
    }
    // Rounded to the microsecond; the bounds above keep it in range.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let quota = (cpus * CPU_PERIOD_US as f64).round() as u64;
    if quota < MIN_CPU_QUOTA_US {
        return Err(invalid(format!("--cpus {s}: at least 0.01")));
    }
    Ok(quota)
}

/// A container path: absolute, normalised enough that two spellings of
/// one target are caught as duplicates, and not `/` itself.
fn container_path(s: &str, what: &str) -> Result<String, RuntimeError> {
    if !s.starts_with('/') {
        return Err(invalid(format!("{what} {s:?}: must be an absolute path")));
    }
    let parts: Vec<&str> = s
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(invalid(format!("{what} {s:?}: must not contain `..`")));
    }
    if parts.is_empty() {
        return Err(invalid(format!("{what} {s:?}: cannot mount over `/`")));
    }
    Ok(format!("/{}", parts.join("/")))
}

/// `--mount type=bind,source=/host,target=/ctr[,readonly]` (also `src`,
/// `dst`, `destination`, `ro`, `readonly=true|false`), and
/// `type=volume,source=NAME,target=/ctr` for a named volume. Whether the
/// source exists is checked when the container is created.
pub fn parse_mount(s: &str) -> Result<Mounted, RuntimeError> {
    let mut typ = None;
    let mut source = None;
    let mut target = None;
    let mut readonly = false;
    for field in s.split(',') {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (field.trim(), None),
        };
        match (k, v) {
            ("type", Some(v)) => typ = Some(v),
            ("source" | "src", Some(v)) => source = Some(v),
            ("target" | "dst" | "destination", Some(v)) => target = Some(v),
            ("readonly" | "ro", None) => readonly = true,
            ("readonly" | "ro", Some("true" | "1")) => readonly = true,
            ("readonly" | "ro", Some("false" | "0")) => readonly = false,
            _ => {
                return Err(invalid(format!(
                    "--mount {s:?}: unknown or incomplete field {field:?} (use \
                     type=bind|volume,source=…,target=…[,readonly])"
                )));
            }
        }
    }
    let source = source
        .filter(|v| !v.is_empty())
        .ok_or_else(|| invalid(format!("--mount {s:?}: source= is missing")))?;
    let target = target
        .ok_or_else(|| invalid(format!("--mount {s:?}: target= is missing")))
        .and_then(|t| container_path(t, "--mount target"))?;
    match typ.unwrap_or("bind") {
        "bind" => {
            if !source.starts_with('/') {
                return Err(invalid(format!(
                    "--mount {s:?}: a bind source must be an absolute host path"
                )));
            }
            Ok(Mounted::Bind(BindMount {
                source: PathBuf::from(source),
                target,
                readonly,
            }))
        }
        "volume" => {
            validate_volume_name(source)?;
            Ok(Mounted::Volume(VolumeMount {
                name: source.to_owned(),
                target,
                readonly,
            }))
        }
        other => Err(invalid(format!(
            "--mount {s:?}: type {other:?} is not supported (bind or volume)"
        ))),
    }
}

/// What a `--mount` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mounted {
    Bind(BindMount),
    Volume(VolumeMount),
}

/// `--volume NAME:/target[:ro|:rw]`. A host path as NAME is refused with a
/// pointer to `--mount`, so `-v /srv:/srv` cannot silently become a volume
/// named after a path.
pub fn parse_volume(s: &str) -> Result<VolumeMount, RuntimeError> {
    let parts: Vec<&str> = s.split(':').collect();
    let (name, target, readonly) = match parts.as_slice() {
        [n, t] => (*n, *t, false),
        [n, t, "ro"] => (*n, *t, true),
        [n, t, "rw"] => (*n, *t, false),
        _ => {
            return Err(invalid(format!(
                "--volume {s:?}: expected NAME:/target[:ro]"
            )));
        }
    };
    if name.starts_with('/') || name.starts_with('.') {
        return Err(invalid(format!(
            "--volume {s:?}: {name} is a path; bind host paths with \
             --mount type=bind,source={name},target={target}"
        )));
    }
    validate_volume_name(name)?;
    Ok(VolumeMount {
        name: name.to_owned(),
        target: container_path(target, "--volume target")?,
        readonly,
    })
}

/// A volume name becomes a directory under the data dir: the container
/// name rule keeps it one safe path component.
pub fn validate_volume_name(name: &str) -> Result<(), RuntimeError> {
    super::validate_name(name).map_err(|_| {
        invalid(format!(
            "volume name {name:?}: use letters, digits and single . _ - between them (at most 76)"
        ))
    })
}

impl Settings {
    /// The checks that need all settings together: one target per mount,
    /// a capability not both added and dropped, log limits that make sense.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        let mut targets = HashSet::new();
        let all_targets = self
            .mounts
            .iter()
            .map(|m| &m.target)
            .chain(self.volumes.iter().map(|v| &v.target));
        for t in all_targets {
            if !targets.insert(t) {
                return Err(invalid(format!("two mounts on {t}")));
            }
        }
        for c in &self.cap_add {
            if let CapName::One(_) = c
                && self.cap_drop.contains(c)
            {
                return Err(invalid(format!("{c} is both added and dropped")));
            }
        }
        if let Some(size) = self.log.max_size
            && size < 1024
        {
            return Err(invalid(format!("--log-max-size {size}: at least 1k")));
        }
        if self.log.max_files == 0 {
            return Err(invalid("--log-max-files: at least 1".into()));
        }
        if !self.ports.is_empty() && self.network != NetworkMode::Bridge {
            return Err(invalid(format!(
                "--publish needs --network bridge (with {} there is nothing to forward to)",
                self.network.as_str()
            )));
        }
        let mut seen = HashSet::new();
        for p in &self.ports {
            if !seen.insert((p.host_port, p.protocol)) {
                return Err(invalid(format!(
                    "host port {}/{} published twice",
                    p.host_port,
                    p.protocol.as_str()
                )));
            }
        }
        Ok(())
    }

    /// The capability set of the process: containerd's default (or `all`,
    /// every capability the host can grant, when privileged or `--cap-add
    /// ALL`; none with `--cap-drop ALL`), minus the named drops, plus the
    /// named adds.
    pub fn capabilities(
        &self,
        default: &HashSet<Capability>,
        all: &HashSet<Capability>,
    ) -> HashSet<Capability> {
        let mut caps = if self.privileged || self.cap_add.contains(&CapName::All) {
            all.clone()
        } else if self.cap_drop.contains(&CapName::All) {
            HashSet::new()
        } else {
            default.clone()
        };
        for c in &self.cap_drop {
            if let CapName::One(c) = c {
                caps.remove(c);
            }
        }
        for c in &self.cap_add {
            if let CapName::One(c) = c {
                caps.insert(*c);
            }
        }
        caps
    }

    /// Names of the volumes used, for the container's label.
    pub fn volume_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.volumes.iter().map(|v| v.name.clone()).collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Every capability oci-spec knows, in the kernel's numbering
/// (`CAP_CHOWN` is bit 0), so a `/proc/*/status` mask maps onto it.
const KERNEL_ORDER: [Capability; 41] = {
    use Capability::*;
    [
        Chown,
        DacOverride,
        DacReadSearch,
        Fowner,
        Fsetid,
        Kill,
        Setgid,
        Setuid,
        Setpcap,
        LinuxImmutable,
        NetBindService,
        NetBroadcast,
        NetAdmin,
        NetRaw,
        IpcLock,
        IpcOwner,
        SysModule,
        SysRawio,
        SysChroot,
        SysPtrace,
        SysPacct,
        SysAdmin,
        SysBoot,
        SysNice,
        SysResource,
        SysTime,
        SysTtyConfig,
        Mknod,
        Lease,
        AuditWrite,
        AuditControl,
        Setfcap,
        MacOverride,
        MacAdmin,
        Syslog,
        WakeAlarm,
        BlockSuspend,
        AuditRead,
        Perfmon,
        Bpf,
        CheckpointRestore,
    ]
};

/// Every capability oci-spec knows.
pub fn all_capabilities() -> HashSet<Capability> {
    KERNEL_ORDER.into_iter().collect()
}

/// The capabilities set in a kernel mask (`CapBnd: 000001ffffffffff`).
pub fn capabilities_from_mask(mask: u64) -> HashSet<Capability> {
    KERNEL_ORDER
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1u64 << bit) != 0)
        .map(|(_, c)| *c)
        .collect()
}

/// The bounding set of process `pid` (`self` for the agent itself).
/// `None` when /proc cannot tell.
pub fn bounding_set_of(pid: &str) -> Option<HashSet<Capability>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))?
        .trim();
    u64::from_str_radix(hex, 16)
        .ok()
        .map(capabilities_from_mask)
}

/// The agent's own bounding set (see [`bounding_set_of`]).
pub fn current_bounding_set() -> Option<HashSet<Capability>> {
    bounding_set_of("self")
}

/// The host's devices for a privileged container, as containerd's
/// `WithHostDevices` finds them: every block and character device under
/// `/dev`, skipping the directories the container gets its own of (`pts`,
/// `shm`, `mqueue`…) and the console.
pub fn host_devices(dev: &Path) -> Vec<LinuxDevice> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dev) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name();
        // Not following symlinks: a link to a device is not a device.
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let ft = meta.file_type();
        if ft.is_dir() {
            let skip = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];
            if !skip.iter().any(|s| name == *s) {
                out.extend(host_devices(&path));
            }
            continue;
        }
        if name == "console" {
            continue;
        }
        let typ = if ft.is_char_device() {
            LinuxDeviceType::C
        } else if ft.is_block_device() {
            LinuxDeviceType::B
        } else {
            continue;
        };
        let rdev = meta.rdev();
        let device = LinuxDeviceBuilder::default()
            .path(path)
            .typ(typ)
            .major(dev_major(rdev))
            .minor(dev_minor(rdev))
            .file_mode(meta.mode() & 0o7777)
            .uid(meta.uid())
            .gid(meta.gid())
            .build();
        if let Ok(d) = device {
            out.push(d);
        }
    }
    out
}

/// glibc's `major()` of a `dev_t` (the split Linux uses since 2.6).
fn dev_major(rdev: u64) -> i64 {
    (((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff)) as i64
}

/// glibc's `minor()`.
fn dev_minor(rdev: u64) -> i64 {
    (((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff)) as i64
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn published_ports() {
        let p = parse_port("8080:80").unwrap();
        assert_eq!((p.host_ip, p.host_port, p.container_port), (None, 8080, 80));
        assert_eq!(p.protocol, Protocol::Tcp);
        let p = parse_port("127.0.0.1:5353:53/udp").unwrap();
        assert_eq!(p.host_ip, Some(std::net::Ipv4Addr::LOCALHOST));
        assert_eq!(p.protocol, Protocol::Udp);
        assert_eq!(p.to_string(), "127.0.0.1:5353:53/udp");
        for bad in [
            "80",
            "0:80",
            "80:70000",
            "x:80",
            "::1:80:80",
            "80:80/sctp",
            "1:2:3:4",
        ] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
        let mut s = Settings {
            ports: vec![parse_port("8080:80").unwrap()],
            ..Settings::default()
        };
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("--network bridge")
        );
        s.network = NetworkMode::Bridge;
        s.validate().unwrap();
        s.ports.push(parse_port("127.0.0.1:8080:81").unwrap());
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("published twice")
        );
    }

    #[test]
    fn sizes_and_cpus_parse_like_docker() {
        assert_eq!(parse_bytes("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_bytes("512k").unwrap(), 512 << 10);
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1g").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("10M").unwrap(), 10 << 20);
        for bad in ["", "m", "1.5g", "12x", "-1", "99999999999t"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
        assert!(parse_memory("1m").is_err());
        assert_eq!(parse_memory("512m").unwrap(), 512 << 20);
        assert_eq!(parse_cpus("0.5").unwrap(), 50_000);
        assert_eq!(parse_cpus("2").unwrap(), 200_000);
        assert_eq!(parse_cpus("1.25").unwrap(), 125_000);
        for bad in ["0", "-1", "0.001", "abc", "NaN", "inf"] {
            assert!(parse_cpus(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn capability_names() {
        assert_eq!(
            CapName::parse("chown").unwrap(),
            CapName::One(Capability::Chown)
        );
        assert_eq!(
            CapName::parse("CAP_NET_ADMIN").unwrap(),
            CapName::One(Capability::NetAdmin)
        );
        assert_eq!(CapName::parse("all").unwrap(), CapName::All);
        assert!(CapName::parse("CAP_FLY").is_err());
        assert_eq!(
            CapName::One(Capability::SysAdmin).to_string(),
            "CAP_SYS_ADMIN"
        );
        let json =
            serde_json::to_string(&vec![CapName::All, CapName::One(Capability::Kill)]).unwrap();
        assert_eq!(json, r#"["ALL","CAP_KILL"]"#);
        let back: Vec<CapName> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, [CapName::All, CapName::One(Capability::Kill)]);
    }

    #[test]
    fn capability_sets() {
        let default: HashSet<Capability> = [Capability::Chown, Capability::Kill].into();
        let s = |add: &[CapName], drop: &[CapName]| Settings {
            cap_add: add.to_vec(),
            cap_drop: drop.to_vec(),
            ..Settings::default()
        };
        let one = CapName::One;
        assert_eq!(
            s(&[], &[]).capabilities(&default, &all_capabilities()),
            default
        );
        assert!(
            s(&[], &[CapName::All])
                .capabilities(&default, &all_capabilities())
                .is_empty()
        );
        assert_eq!(
            s(&[one(Capability::NetAdmin)], &[CapName::All])
                .capabilities(&default, &all_capabilities()),
            [Capability::NetAdmin].into()
        );
        assert_eq!(
            s(&[], &[one(Capability::Chown)]).capabilities(&default, &all_capabilities()),
            [Capability::Kill].into()
        );
        let all = s(&[CapName::All], &[one(Capability::SysAdmin)])
            .capabilities(&default, &all_capabilities());
        assert_eq!(all.len(), all_capabilities().len() - 1);
        assert!(!all.contains(&Capability::SysAdmin));
        let privileged = Settings {
            privileged: true,
            ..Settings::default()
        };
        assert_eq!(
            privileged.capabilities(&default, &all_capabilities()),
            all_capabilities()
        );
        let host: HashSet<Capability> = [Capability::Kill, Capability::SysAdmin].into();
        assert_eq!(privileged.capabilities(&default, &host), host);
        assert!(
            s(&[one(Capability::Chown)], &[one(Capability::Chown)])
                .validate()
                .is_err()
        );
    }

    #[test]
    fn mounts_and_volumes_parse() {
        assert_eq!(
            parse_mount("type=bind,source=/srv/data,target=/data,readonly").unwrap(),
            Mounted::Bind(BindMount {
                source: "/srv/data".into(),
                target: "/data".into(),
                readonly: true
            })
        );
        assert_eq!(
            parse_mount("src=/srv,dst=/x//y/").unwrap(),
            Mounted::Bind(BindMount {
                source: "/srv".into(),
                target: "/x/y".into(),
                readonly: false
            })
        );
        assert_eq!(
            parse_mount("type=volume,source=cache,target=/cache,ro=true").unwrap(),
            Mounted::Volume(VolumeMount {
                name: "cache".into(),
                target: "/cache".into(),
                readonly: true
            })
        );
        for bad in [
            "type=bind,source=rel,target=/x",
            "type=bind,target=/x",
            "type=bind,source=/x",
            "type=bind,source=/x,target=rel",
            "type=bind,source=/x,target=/a/../b",
            "type=bind,source=/x,target=/",
            "type=tmpfs,source=/x,target=/x",
            "type=bind,source=/x,target=/x,bogus",
            "type=volume,source=../up,target=/x",
        ] {
            assert!(parse_mount(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_volume("data:/var/lib/app:ro").unwrap(),
            VolumeMount {
                name: "data".into(),
                target: "/var/lib/app".into(),
                readonly: true
            }
        );
        assert!(!parse_volume("data:/x").unwrap().readonly);
        let err = parse_volume("/srv:/srv").unwrap_err().to_string();
        assert!(err.contains("--mount type=bind"), "{err}");
        for bad in ["data", "data:rel", "a/b:/x", "data:/x:rx", ".:/x"] {
            assert!(parse_volume(bad).is_err(), "{bad}");
        }
        let dup = Settings {
            mounts: vec![BindMount {
                source: "/a".into(),
                target: "/x".into(),
                readonly: false,
            }],
            volumes: vec![parse_volume("v:/x").unwrap()],
            ..Settings::default()
        };
        assert!(dup.validate().is_err());
    }

    #[test]
    fn capability_masks_follow_the_kernel() {
        assert_eq!(capabilities_from_mask(1), [Capability::Chown].into());
        assert_eq!(
            capabilities_from_mask(1 << 21 | 1 << 40),
            [Capability::SysAdmin, Capability::CheckpointRestore].into()
        );
        assert_eq!(capabilities_from_mask(u64::MAX), all_capabilities());
        // Docker's default set, as /proc shows it.
        let docker = capabilities_from_mask(0xa80425fb);
        assert_eq!(docker.len(), 14);
        assert!(current_bounding_set().is_some_and(|s| !s.is_empty()));
    }

    #[test]
    fn host_devices_are_char_and_block_only() {
        let devices = host_devices(Path::new("/dev"));
        assert!(
            devices
                .iter()
                .any(|d| d.path() == Path::new("/dev/null") && d.major() == 1 && d.minor() == 3),
            "{devices:?}"
        );
        assert!(devices.iter().all(|d| !d.path().starts_with("/dev/pts")));
    }
}
