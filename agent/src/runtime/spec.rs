//! The OCI runtime spec of a container, built by the agent from the
//! image's config and the `run` settings (no containerd call here: pure,
//! unit-tested).
//!
//! It follows containerd's own default Unix spec (what `ctr run` gives), so
//! an image behaves the same under `berth-agent run` and `ctr run`: the
//! same mounts, capabilities, masked paths and device rules; differences
//! are said where they are.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDevice,
    LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder, get_default_maskedpaths, get_default_readonly_paths,
};

use super::RuntimeError;
use super::settings::Settings;

/// PATH when the image sets none (Docker's and containerd's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the image's config says about its process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageProcess {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

impl ImageProcess {
    /// From an image config (`application/vnd.oci.image.config.v1+json`
    /// or Docker's, which has the same `config` object).
    pub fn from_config(config: &oci_spec::image::ImageConfiguration) -> ImageProcess {
        let Some(c) = config.config() else {
            return ImageProcess::default();
        };
        ImageProcess {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env: c.env().clone().unwrap_or_default(),
            working_dir: c.working_dir().clone().unwrap_or_default(),
            user: c.user().clone().unwrap_or_default(),
        }
    }
}

/// The `run` settings that override or extend the image's.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// Replaces the image's `Cmd` (the entrypoint stays), as with `docker run`.
    pub cmd: Vec<String>,
    /// `K=V`, over the image's variables of the same name.
    pub env: Vec<String>,
    pub hostname: Option<String>,
    pub user: Option<String>,
    /// Privileged mode, capabilities, mounts and volumes, limits, log
    /// size limits.
    pub settings: Settings,
}

/// The process as it will run, user resolved to ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessPlan {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
}

/// Merges image and overrides. `lookup` reads a file of the image's root
/// file system (`/etc/passwd`, `/etc/group`) for user and group names.
pub fn plan(
    image: &ImageProcess,
    over: &Overrides,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<ProcessPlan, RuntimeError> {
    let mut args = image.entrypoint.clone();
    if over.cmd.is_empty() {
        args.extend(image.cmd.iter().cloned());
    } else {
        args.extend(over.cmd.iter().cloned());
    }
    if args.is_empty() {
        return Err(RuntimeError::Invalid(
            "the image has no entrypoint or command, and none was given after `--`".into(),
        ));
    }
    let env = merge_env(&image.env, &over.env)?;
    let cwd = if image.working_dir.is_empty() {
        "/".to_owned()
    } else {
        image.working_dir.clone()
    };
    let user = over.user.as_deref().unwrap_or(&image.user);
    let (uid, gid) = resolve_user(user, lookup)?;
    Ok(ProcessPlan {
        args,
        env,
        cwd,
        uid,
        gid,
    })
}

/// Image variables, then the overrides (same name: the override wins, in
/// the image's position); PATH added when neither sets it, because the
/// runtime does not supply one and `sh -c` would find nothing.
fn merge_env(image: &[String], over: &[String]) -> Result<Vec<String>, RuntimeError> {
    let mut env: Vec<String> = image.to_vec();
    for kv in over {
        let Some((key, _)) = kv.split_once('=') else {
            return Err(RuntimeError::Invalid(format!(
                "--env {kv:?}: expected KEY=VALUE"
            )));
        };
        if key.is_empty() {
            return Err(RuntimeError::Invalid(format!(
                "--env {kv:?}: empty variable name"
            )));
        }
        let prefix = format!("{key}=");
        match env.iter_mut().find(|e| e.starts_with(&prefix)) {
            Some(slot) => slot.clone_from(kv),
            None => env.push(kv.clone()),
        }
    }
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={DEFAULT_PATH}"));
    }
    Ok(env)
}

/// `""` (root), `uid`, `uid:gid`, `name`, `name:group`, `uid:group`…:
/// numbers are taken as they are; names are looked up in the image's
/// `/etc/passwd` and `/etc/group` (as Docker and containerd do; the
/// host's files mean nothing inside the image). A user without a group
/// gets its passwd group (0 when given as a number not in passwd).
pub fn resolve_user(
    user: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(u32, u32), RuntimeError> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = lookup("/etc/passwd").unwrap_or_default();
    let (uid, passwd_gid) = if let Ok(uid) = u.parse::<u32>() {
        let gid = passwd_entries(&passwd)
            .find(|e| e.1 == uid)
            .map_or(0, |e| e.2);
        (uid, gid)
    } else {
        let entry = passwd_entries(&passwd).find(|e| e.0 == u).ok_or_else(|| {
            RuntimeError::Invalid(format!("user {u:?} is not in the image's /etc/passwd"))
        })?;
        (entry.1, entry.2)
    };
    let gid = match g {
        None => passwd_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = lookup("/etc/group").unwrap_or_default();
                group_entries(&groups)
                    .find(|e| e.0 == g)
                    .map(|e| e.1)
                    .ok_or_else(|| {
                        RuntimeError::Invalid(format!(
                            "group {g:?} is not in the image's /etc/group"
                        ))
                    })?
            }
        },
    };
    Ok((uid, gid))
}

/// `(name, uid, gid)` of each well-formed passwd line.
fn passwd_entries(text: &str) -> impl Iterator<Item = (&str, u32, u32)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        match f.as_slice() {
            [name, _, uid, gid, ..] => Some((*name, uid.parse().ok()?, gid.parse().ok()?)),
            _ => None,
        }
    })
}

/// `(name, gid)` of each well-formed group line.
fn group_entries(text: &str) -> impl Iterator<Item = (&str, u32)> {
    text.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        match f.as_slice() {
            [name, _, gid, ..] => Some((*name, gid.parse().ok()?)),
            _ => None,
        }
    })
}

/// containerd's default capability set (the same as Docker's).
fn default_capabilities() -> HashSet<Capability> {
    [
        Capability::Chown,
        Capability::DacOverride,
        Capability::Fsetid,
        Capability::Fowner,
        Capability::Mknod,
        Capability::NetRaw,
        Capability::Setgid,
        Capability::Setuid,
        Capability::Setfcap,
        Capability::Setpcap,
        Capability::NetBindService,
        Capability::SysChroot,
        Capability::Kill,
        Capability::AuditWrite,
    ]
    .into_iter()
    .collect()
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, RuntimeError> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| (*o).to_owned()).collect::<Vec<_>>())
        .build()?)
}

/// containerd's default mounts (/proc, /dev, /dev/pts, /dev/shm,
/// /dev/mqueue, /sys read-only, /run), plus the host's resolv.conf and
/// hosts read-only, because the container shares the host's network
/// (what `ctr run --net-host` does) and would otherwise resolve nothing.
fn mounts(host_files: &[HostFile], privileged: bool) -> Result<Vec<Mount>, RuntimeError> {
    // A privileged container may write /sys (what Docker and containerd's
    // `WithPrivileged` give), e.g. to load firmware or toggle GPIOs.
    let sys: &[&str] = if privileged {
        &["nosuid", "noexec", "nodev", "rw"]
    } else {
        &["nosuid", "noexec", "nodev", "ro"]
    };
    let mut m = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount("/sys", "sysfs", "sysfs", sys)?,
        mount(
            "/run",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
    ];
    for f in host_files {
        let source = f.source.display().to_string();
        m.push(mount(
            &f.target,
            "bind",
            &source,
            &["rbind", "ro", "nosuid", "nodev"],
        )?);
    }
    Ok(m)
}

/// A host file bind-mounted read-only into the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFile {
    pub source: PathBuf,
    pub target: String,
}

impl HostFile {
    /// The same path inside as outside.
    pub fn same(path: &str) -> HostFile {
        HostFile {
            source: PathBuf::from(path),
            target: path.to_owned(),
        }
    }
}

/// The host files bind-mounted for host networking, those that exist.
pub fn host_network_files() -> Vec<HostFile> {
    ["/etc/resolv.conf", "/etc/hosts"]
        .into_iter()
        .filter(|p| Path::new(p).is_file())
        .map(HostFile::same)
        .collect()
}

/// What the spec needs to know about the host for the settings, read by
/// the runtime (the spec itself stays pure).
#[derive(Clone, Debug, Default)]
pub struct HostFacts {
    /// `<data_dir>/volumes`: a named volume is the directory of its name.
    pub volumes_dir: PathBuf,
    /// The host's devices, given to a privileged container.
    pub devices: Vec<LinuxDevice>,
    /// Every capability the host can grant (the agent's bounding set),
    /// for privileged containers and `--cap-add ALL`; `None`: every
    /// capability oci-spec knows.
    pub capabilities: Option<HashSet<Capability>>,
}

/// The whole spec of an ordinary container (no extra settings).
/// `cgroups_path` is `/<namespace>/<id>` (containerd's convention, so
/// `ctr` and the agent name cgroups alike).
pub fn build(
    p: &ProcessPlan,
    hostname: &str,
    cgroups_path: &str,
    host_files: &[HostFile],
) -> Result<Spec, RuntimeError> {
    build_with(
        p,
        hostname,
        cgroups_path,
        host_files,
        &Settings::default(),
        &HostFacts::default(),
    )
}

/// The whole spec with the container's [`Settings`]: capabilities,
/// privileged mode, bind mounts and volumes, cgroup limits.
pub fn build_with(
    p: &ProcessPlan,
    hostname: &str,
    cgroups_path: &str,
    host_files: &[HostFile],
    settings: &Settings,
    host: &HostFacts,
) -> Result<Spec, RuntimeError> {
    settings.validate()?;
    let all = host
        .capabilities
        .clone()
        .unwrap_or_else(super::settings::all_capabilities);
    let caps = settings.capabilities(&default_capabilities(), &all);
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(p.uid).gid(p.gid).build()?)
        .args(p.args.clone())
        .env(p.env.clone())
        .cwd(p.cwd.clone())
        // Privileged processes may gain privileges through setuid
        // binaries, as under Docker; everything else may not.
        .no_new_privileges(!settings.privileged)
        .capabilities(
            // Inheritable and ambient explicitly empty, as containerd
            // sets them: left unset, oci-spec's builder fills in its own
            // default set, and an inheritable capability outside the
            // bounding set makes runc's capset fail with EPERM (so
            // `--cap-drop ALL` could not start).
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                .inheritable(HashSet::new())
                .ambient(HashSet::new())
                .build()?,
        )
        .rlimits(vec![
            oci_spec::runtime::PosixRlimitBuilder::default()
                .typ(oci_spec::runtime::PosixRlimitType::RlimitNofile)
                .hard(1024u64)
                .soft(1024u64)
                .build()?,
        ])
        .build()?;
    // Host networking: no network namespace. Otherwise runc makes a new
    // one and the runtime attaches it (CNI) between task create and start.
    let mut namespaces = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    if settings.network != super::settings::NetworkMode::Host {
        namespaces.push(LinuxNamespaceType::Network);
    }
    let namespaces = namespaces
        .into_iter()
        .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
        .collect::<Result<Vec<_>, _>>()?;
    // Ordinary containers: deny every device (runc adds the standard
    // allowed ones: null, zero, full, tty, random, urandom, pts).
    // Privileged ones: allow every device, and create the host's nodes.
    let device_rule = LinuxDeviceCgroupBuilder::default()
        .allow(settings.privileged)
        .access("rwm")
        .build()?;
    let mut resources = LinuxResourcesBuilder::default().devices(vec![device_rule]);
    if let Some(limit) = settings.memory_bytes {
        let limit = i64::try_from(limit)
            .map_err(|_| RuntimeError::Invalid(format!("memory limit {limit} too large")))?;
        resources = resources.memory(LinuxMemoryBuilder::default().limit(limit).build()?);
    }
    if let Some(quota) = settings.cpu_quota_us {
        let quota = i64::try_from(quota)
            .map_err(|_| RuntimeError::Invalid(format!("cpu quota {quota} too large")))?;
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(super::settings::CPU_PERIOD_US)
                .build()?,
        );
    }
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(cgroups_path))
        .resources(resources.build()?);
    if settings.privileged {
        // Nothing masked or read-only in /proc, the host's devices
        // present; no seccomp or AppArmor profile is set in any case
        // (containerd's default spec sets none either; Docker's does).
        linux = linux
            .masked_paths(Vec::new())
            .readonly_paths(Vec::new())
            .devices(host.devices.clone());
    } else {
        linux = linux
            .masked_paths(get_default_maskedpaths())
            .readonly_paths(get_default_readonly_paths());
    }
    let mut all_mounts = mounts(host_files, settings.privileged)?;
    let user_mounts = settings
        .mounts
        .iter()
        .map(|b| (b.source.clone(), b.target.as_str(), b.readonly))
        .chain(settings.volumes.iter().map(|v| {
            (
                host.volumes_dir.join(&v.name),
                v.target.as_str(),
                v.readonly,
            )
        }))
        .collect::<Vec<_>>();
    for (source, target, readonly) in user_mounts {
        // A user's mount replaces a default one on the same path (e.g. an
        // own /etc/hosts).
        all_mounts.retain(|m| m.destination() != Path::new(target));
        // rprivate: mounts made later on the host do not propagate into
        // the container (Docker's default).
        let rw = if readonly { "ro" } else { "rw" };
        all_mounts.push(mount(
            target,
            "bind",
            &source.display().to_string(),
            &["rbind", "rprivate", rw],
        )?);
    }
    Ok(SpecBuilder::default()
        .version("1.0.2-dev")
        .process(process)
        // `rootfs` relative to the bundle, where the shim mounts the
        // snapshot; writable, like Docker's default.
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(false)
                .build()?,
        )
        .hostname(hostname)
        .mounts(all_mounts)
        .linux(linux.build()?)
        .build()?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:44:www:/var/www:/bin/false\n";
    const GROUP: &str = "root:x:0:\nstaff:x:50:\n";

    fn files(path: &str) -> Option<String> {
        match path {
            "/etc/passwd" => Some(PASSWD.into()),
            "/etc/group" => Some(GROUP.into()),
            _ => None,
        }
    }

    #[test]
    fn users_resolve_like_docker() {
        assert_eq!(resolve_user("", &files).unwrap(), (0, 0));
        assert_eq!(resolve_user("1000", &files).unwrap(), (1000, 0));
        assert_eq!(resolve_user("33", &files).unwrap(), (33, 44));
        assert_eq!(resolve_user("1000:7", &files).unwrap(), (1000, 7));
        assert_eq!(resolve_user("www", &files).unwrap(), (33, 44));
        assert_eq!(resolve_user("www:staff", &files).unwrap(), (33, 50));
        assert!(resolve_user("nobody", &files).is_err());
        assert!(resolve_user("www:wheel", &files).is_err());
        // No passwd in the image: numbers still work.
        assert_eq!(resolve_user("5:6", &|_| None).unwrap(), (5, 6));
    }

    #[test]
    fn command_and_environment_merge() {
        let image = ImageProcess {
            entrypoint: vec!["/bin/app".into()],
            cmd: vec!["--serve".into()],
            env: vec!["A=1".into(), "B=2".into()],
            working_dir: "/srv".into(),
            user: "www".into(),
        };
        let p = plan(&image, &Overrides::default(), &files).unwrap();
        assert_eq!(p.args, ["/bin/app", "--serve"]);
        assert_eq!(p.env[0], format!("PATH={DEFAULT_PATH}"));
        assert_eq!((p.uid, p.gid, p.cwd.as_str()), (33, 44, "/srv"));
        let over = Overrides {
            cmd: vec!["--check".into()],
            env: vec!["B=3".into(), "C=4".into(), "PATH=/x".into()],
            user: Some("0".into()),
            ..Overrides::default()
        };
        let p = plan(&image, &over, &files).unwrap();
        assert_eq!(p.args, ["/bin/app", "--check"]);
        assert_eq!(p.env, ["A=1", "B=3", "C=4", "PATH=/x"]);
        assert_eq!((p.uid, p.gid), (0, 0));
        let bad = Overrides {
            env: vec!["NOEQUALS".into()],
            ..Overrides::default()
        };
        assert!(plan(&image, &bad, &files).is_err());
        assert!(plan(&ImageProcess::default(), &Overrides::default(), &files).is_err());
    }

    #[test]
    fn spec_uses_host_network_and_writable_root() {
        let p = plan(
            &ImageProcess {
                cmd: vec!["sh".into()],
                ..ImageProcess::default()
            },
            &Overrides::default(),
            &files,
        )
        .unwrap();
        let spec = build(&p, "box", "/berth/web", &[HostFile::same("/etc/hosts")]).unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["root"]["readonly"], false);
        assert_eq!(json["hostname"], "box");
        assert_eq!(json["linux"]["cgroupsPath"], "/berth/web");
        let ns: Vec<&str> = json["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount"]);
        let dests: Vec<&str> = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        for d in ["/proc", "/dev", "/sys", "/etc/hosts"] {
            assert!(dests.contains(&d), "{d} not in {dests:?}");
        }
    }

    fn sh_plan() -> ProcessPlan {
        plan(
            &ImageProcess {
                cmd: vec!["sh".into()],
                ..ImageProcess::default()
            },
            &Overrides::default(),
            &files,
        )
        .unwrap()
    }

    fn spec_json(settings: &Settings, host: &HostFacts) -> serde_json::Value {
        let spec = build_with(
            &sh_plan(),
            "box",
            "/berth/web",
            &[HostFile::same("/etc/hosts")],
            settings,
            host,
        )
        .unwrap();
        serde_json::to_value(&spec).unwrap()
    }

    fn strings(v: &serde_json::Value) -> Vec<String> {
        let mut out: Vec<String> = v
            .as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        out.sort();
        out
    }

    fn mount_of<'a>(json: &'a serde_json::Value, dest: &str) -> &'a serde_json::Value {
        json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == dest)
            .unwrap_or_else(|| panic!("no mount on {dest}"))
    }

    #[test]
    fn default_settings_are_containerds_defaults() {
        let json = spec_json(&Settings::default(), &HostFacts::default());
        let caps = strings(&json["process"]["capabilities"]["effective"]);
        assert_eq!(caps.len(), 14, "{caps:?}");
        assert!(caps.contains(&"CAP_CHOWN".to_owned()));
        assert_eq!(json["process"]["noNewPrivileges"], true);
        assert_eq!(json["linux"]["resources"]["devices"][0]["allow"], false);
        assert!(json["linux"]["resources"]["memory"].is_null());
        assert!(json["linux"]["resources"]["cpu"].is_null());
        assert!(!json["linux"]["maskedPaths"].as_array().unwrap().is_empty());
        assert!(strings(&mount_of(&json, "/sys")["options"]).contains(&"ro".to_owned()));
        assert!(json["linux"]["seccomp"].is_null());
    }

    #[test]
    fn limits_become_cgroup_resources() {
        let settings = Settings {
            memory_bytes: Some(64 << 20),
            cpu_quota_us: Some(50_000),
            ..Settings::default()
        };
        let json = spec_json(&settings, &HostFacts::default());
        let r = &json["linux"]["resources"];
        assert_eq!(r["memory"]["limit"], 64 << 20);
        assert_eq!(r["cpu"]["quota"], 50_000);
        assert_eq!(r["cpu"]["period"], 100_000);
    }

    #[test]
    fn capabilities_added_and_dropped() {
        use super::super::settings::CapName;
        let settings = Settings {
            cap_drop: vec![CapName::All],
            cap_add: vec![CapName::One(oci_spec::runtime::Capability::NetAdmin)],
            ..Settings::default()
        };
        let json = spec_json(&settings, &HostFacts::default());
        for set in ["bounding", "effective", "permitted"] {
            assert_eq!(
                strings(&json["process"]["capabilities"][set]),
                ["CAP_NET_ADMIN"],
                "{set}"
            );
        }
        for set in ["inheritable", "ambient"] {
            assert!(strings(&json["process"]["capabilities"][set]).is_empty());
        }
        let settings = Settings {
            cap_drop: vec![CapName::One(oci_spec::runtime::Capability::Chown)],
            ..Settings::default()
        };
        let json = spec_json(&settings, &HostFacts::default());
        let caps = strings(&json["process"]["capabilities"]["effective"]);
        assert_eq!(caps.len(), 13);
        assert!(!caps.contains(&"CAP_CHOWN".to_owned()));
    }

    #[test]
    fn privileged_gets_everything() {
        let devices = super::super::settings::host_devices(Path::new("/dev"));
        let host = HostFacts {
            devices: devices.clone(),
            ..HostFacts::default()
        };
        let settings = Settings {
            privileged: true,
            ..Settings::default()
        };
        let json = spec_json(&settings, &host);
        let caps = strings(&json["process"]["capabilities"]["effective"]);
        assert_eq!(caps.len(), super::super::settings::all_capabilities().len());
        assert!(caps.contains(&"CAP_SYS_ADMIN".to_owned()));
        assert_eq!(json["process"]["noNewPrivileges"], false);
        assert_eq!(json["linux"]["resources"]["devices"][0]["allow"], true);
        assert_eq!(json["linux"]["resources"]["devices"][0]["access"], "rwm");
        assert_eq!(
            json["linux"]["devices"].as_array().map_or(0, Vec::len),
            devices.len()
        );
        assert!(
            json["linux"]["maskedPaths"]
                .as_array()
                .is_none_or(Vec::is_empty)
        );
        assert!(
            json["linux"]["readonlyPaths"]
                .as_array()
                .is_none_or(Vec::is_empty)
        );
        let sys = strings(&mount_of(&json, "/sys")["options"]);
        assert!(sys.contains(&"rw".to_owned()) && !sys.contains(&"ro".to_owned()));
        assert!(json["linux"]["seccomp"].is_null());
        assert!(json["process"]["apparmorProfile"].is_null());
    }

    #[test]
    fn bind_mounts_and_volumes() {
        use super::super::settings::{BindMount, VolumeMount};
        let settings = Settings {
            mounts: vec![
                BindMount {
                    source: "/srv/conf".into(),
                    target: "/conf".into(),
                    readonly: true,
                },
                BindMount {
                    source: "/srv/hosts".into(),
                    target: "/etc/hosts".into(),
                    readonly: false,
                },
            ],
            volumes: vec![VolumeMount {
                name: "data".into(),
                target: "/var/lib/app".into(),
                readonly: false,
            }],
            ..Settings::default()
        };
        let host = HostFacts {
            volumes_dir: "/var/lib/berth-agent/volumes".into(),
            ..HostFacts::default()
        };
        let json = spec_json(&settings, &host);
        let conf = mount_of(&json, "/conf");
        assert_eq!(conf["type"], "bind");
        assert_eq!(conf["source"], "/srv/conf");
        assert_eq!(strings(&conf["options"]), ["rbind", "ro", "rprivate"]);
        let data = mount_of(&json, "/var/lib/app");
        assert_eq!(data["source"], "/var/lib/berth-agent/volumes/data");
        assert_eq!(strings(&data["options"]), ["rbind", "rprivate", "rw"]);
        // The user's /etc/hosts replaces the host's.
        let hosts: Vec<_> = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["destination"] == "/etc/hosts")
            .collect();
        assert_eq!(hosts.len(), 1);
        assert_eq!(hosts[0]["source"], "/srv/hosts");
    }
}
