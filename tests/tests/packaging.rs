//! Packaging for appliances: the Debian packages `packaging/build-debs`
//! makes, the systemd units in them, the cross-built agents, and the
//! daemons' side of systemd's notify protocol.
//!
//! The packages are built once per run of this file, the cheap way: amd64
//! from the debug build the other tests use (`--profile dev --no-build`),
//! the arm64 and armhf agents with the `ci-package` profile (no LTO, no
//! optimisation), which is all a clean CI run can afford. The tuned
//! `appliance` profile builds the same packages from the same files.
//!
//! Every outside tool is required: a missing one fails the test.
#![allow(clippy::unwrap_used)]

use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use test_support::tools::require_tool_from;
use test_support::{require_tool, workspace_bin};

/// The workspace root (this crate is `tests/`).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(cmd: &mut Command) -> String {
    String::from_utf8(run(cmd).stdout).unwrap()
}

/// The .deb files, built on first use.
struct Debs {
    files: Vec<PathBuf>,
}

impl Debs {
    fn get(&self, package: &str, arch: &str) -> &Path {
        self.files
            .iter()
            .find(|f| {
                let name = f.file_name().unwrap().to_str().unwrap();
                name.starts_with(&format!("{package}_")) && name.ends_with(&format!("_{arch}.deb"))
            })
            .unwrap_or_else(|| panic!("no {package} package for {arch} in {:?}", self.files))
    }
}

fn debs() -> &'static Debs {
    static DEBS: OnceLock<Debs> = OnceLock::new();
    DEBS.get_or_init(|| {
        require_tool_from("dpkg-deb", "dpkg");
        if test_support::tools::find_tool("cargo-deb").is_none() {
            panic!("cargo-deb is required for this test: cargo install cargo-deb --locked");
        }
        // The amd64 packages take the debug binaries the other tests run,
        // which must be built first, as for them.
        workspace_bin("berth-agent");
        workspace_bin("berth-server");
        // A fixed directory, emptied first: a static is never dropped, so
        // a temporary directory would be left behind by every run.
        let dir = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| workspace().join("target"), PathBuf::from)
            .join("packaging-test");
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => panic!("emptying {}: {e}", dir.display()),
        }
        let script = workspace().join("packaging/build-debs");
        let started = Instant::now();
        for args in [
            &["--profile", "dev", "--no-build", "--arch", "amd64"][..],
            &[
                "--profile",
                "ci-package",
                "--arch",
                "arm64,armhf",
                "--package",
                "agent",
            ][..],
        ] {
            run(Command::new(&script)
                .args(args)
                .args(["--fast", "--out"])
                .arg(&dir)
                .current_dir(workspace()));
        }
        eprintln!("packages built in {:?}", started.elapsed());
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "deb"))
            .collect();
        files.sort();
        assert_eq!(files.len(), 4, "{files:?}");
        Debs { files }
    })
}

/// A control field of a .deb (`dpkg-deb --field`).
fn field(deb: &Path, name: &str) -> String {
    stdout(Command::new("dpkg-deb").arg("--field").arg(deb).arg(name))
        .trim()
        .to_string()
}

/// The paths a .deb installs (`dpkg-deb --contents`), as `/usr/bin/x`.
fn contents(deb: &Path) -> Vec<String> {
    stdout(Command::new("dpkg-deb").arg("--contents").arg(deb))
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_string())
        .collect()
}

/// The ELF machine of a binary (e_machine).
fn elf_machine(bin: &Path) -> u16 {
    let bytes = std::fs::read(bin).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF", "{} is not ELF", bin.display());
    u16::from_le_bytes([bytes[18], bytes[19]])
}

/// The newest `GLIBC_2.N` symbol version a binary needs, as N.
fn newest_glibc(bin: &Path) -> u32 {
    let bytes = std::fs::read(bin).unwrap();
    let needle = b"GLIBC_2.";
    bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .filter_map(|(i, _)| {
            let digits: Vec<u8> = bytes[i + needle.len()..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .copied()
                .collect();
            std::str::from_utf8(&digits).ok()?.parse().ok()
        })
        .max()
        .unwrap_or_else(|| panic!("{} names no GLIBC version", bin.display()))
}

/// `libc6 (>= 2.N)` in a Depends field, as N.
fn declared_glibc(depends: &str) -> u32 {
    let rest = depends
        .split("libc6 (>= 2.")
        .nth(1)
        .unwrap_or_else(|| panic!("no libc6 version in {depends:?}"));
    rest[..rest.find(')').unwrap()].parse().unwrap()
}

#[test]
fn packages_have_the_files_metadata_and_architectures() {
    let debs = debs();
    // (package, arch, ELF machine)
    let expected = [
        ("berth-agent", "amd64", 62),
        ("berth-agent", "arm64", 183),
        ("berth-agent", "armhf", 40),
        ("berth-server", "amd64", 62),
    ];
    for (package, arch, machine) in expected {
        let deb = debs.get(package, arch);
        let info = stdout(Command::new("dpkg-deb").arg("--info").arg(deb));
        assert!(info.contains(&format!("Package: {package}")), "{info}");
        assert!(info.contains(&format!("Architecture: {arch}")), "{info}");
        assert!(info.contains("Version: 0.1.0-1"), "{info}");
        for script in ["postinst", "prerm", "postrm"] {
            assert!(info.contains(script), "no {script} in {package}: {info}");
        }
        let name = package.trim_start_matches("berth-");
        let files = contents(deb);
        for path in [
            format!("/usr/bin/{package}"),
            format!("/lib/systemd/system/{package}.service"),
            format!("/etc/berth/{name}.toml"),
            format!("/usr/share/doc/{package}/README.md"),
        ] {
            assert!(
                files.contains(&path),
                "{path} not in {package} {arch}: {files:?}"
            );
        }
        // The configuration is a conffile: an administrator's edits
        // survive upgrades.
        let ctrl = tempfile::tempdir().unwrap();
        run(Command::new("dpkg-deb")
            .arg("--control")
            .arg(deb)
            .arg(ctrl.path()));
        let conffiles = std::fs::read_to_string(ctrl.path().join("conffiles")).unwrap();
        assert_eq!(conffiles.trim(), format!("/etc/berth/{name}.toml"));
        // The right machine code, needing no newer glibc than declared.
        let root = tempfile::tempdir().unwrap();
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(root.path()));
        let bin = root.path().join("usr/bin").join(package);
        assert_eq!(elf_machine(&bin), machine, "{package} {arch}");
        let depends = field(deb, "Depends");
        assert!(
            newest_glibc(&bin) <= declared_glibc(&depends),
            "{package} {arch} needs GLIBC_2.{} but declares {depends:?}",
            newest_glibc(&bin)
        );
    }
    let agent = debs.get("berth-agent", "amd64");
    assert!(field(agent, "Depends").contains("containerd"));
    assert!(field(agent, "Recommends").contains("containernetworking-plugins"));
}

/// An empty dpkg database under `root`, for `dpkg --root`.
fn dpkg_root(root: &Path) {
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
}

/// dpkg on the throwaway `root`, maintainer scripts included: they run on
/// this machine with DPKG_ROOT set (`--force-script-chrootless`, as for
/// bootstrapping an image), so they must touch nothing outside the root.
fn dpkg(root: &Path) -> Command {
    let mut cmd = Command::new(require_tool_from("dpkg", "dpkg"));
    cmd.arg(format!("--root={}", root.display()))
        .arg("--force-script-chrootless")
        // containerd, libc6 and adduser are not in the empty root.
        .arg("--force-depends")
        .arg("--log=/dev/null");
    cmd
}

fn passwd_entries(root: &Path, user: &str) -> Vec<String> {
    std::fs::read_to_string(root.join("etc/passwd"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(&format!("{user}:")))
        .map(str::to_string)
        .collect()
}

#[test]
fn amd64_packages_install_reinstall_and_purge_in_a_throwaway_root() {
    use std::os::unix::fs::MetadataExt;
    let debs = debs();
    let agent = debs.get("berth-agent", "amd64");
    let server = debs.get("berth-server", "amd64");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    dpkg_root(root);
    let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap();

    // Installed twice: the second run of every maintainer script
    // (configure with the previous version) must change nothing.
    for round in 0..2 {
        run(dpkg(root).arg("--install").arg(agent).arg(server));
        for path in [
            "usr/bin/berth-agent",
            "usr/bin/berth-server",
            "lib/systemd/system/berth-agent.service",
            "lib/systemd/system/berth-server.service",
            "etc/berth/agent.toml",
            "etc/berth/server.toml",
            "usr/lib/sysusers.d/berth-server.conf",
        ] {
            assert!(root.join(path).exists(), "round {round}: {path} missing");
        }
        let mode = root.join("usr/bin/berth-agent").metadata().unwrap().mode();
        assert_eq!(mode & 0o777, 0o755);
        // Enabled: the symlink systemd reads at boot.
        for unit in ["berth-agent.service", "berth-server.service"] {
            let link = root
                .join("etc/systemd/system/multi-user.target.wants")
                .join(unit);
            assert_eq!(
                std::fs::read_link(&link).unwrap(),
                Path::new("/lib/systemd/system").join(unit),
                "round {round}"
            );
        }
        // The server's user, once, and its data directory.
        let users = passwd_entries(root, "berth");
        assert_eq!(users.len(), 1, "round {round}: {users:?}");
        let uid: u32 = users[0].split(':').nth(2).unwrap().parse().unwrap();
        let data = root.join("var/lib/berth").metadata().unwrap();
        assert_eq!((data.uid(), data.mode() & 0o777), (uid, 0o750));
        // The installed binaries are the ones built, and run.
        let version = stdout(Command::new(root.join("usr/bin/berth-server")).arg("--version"));
        assert_eq!(version.trim(), "berth-server 0.1.0");
    }
    // The shipped configurations: the server's is valid as it is (the
    // unit's ExecStartPre passes, the server starts on install); the
    // agent's lacks exactly what only the operator can know.
    run(Command::new(root.join("usr/bin/berth-server"))
        .arg("validate")
        .arg("--config")
        .arg(root.join("etc/berth/server.toml")));
    let out = Command::new(root.join("usr/bin/berth-agent"))
        .arg("validate")
        .arg("--config")
        .arg(root.join("etc/berth/agent.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let problems = String::from_utf8_lossy(&out.stderr);
    for key in ["registry.url", "registry.namespace", "node.auth_url"] {
        assert!(problems.contains(key), "{problems}");
    }
    // Nothing outside the root was touched.
    assert_eq!(std::fs::read_to_string("/etc/passwd").unwrap(), host_passwd);
    assert!(!Path::new("/lib/systemd/system/berth-agent.service").exists());

    // The units as installed: `systemd-analyze verify` in the root, with
    // the machine's own units (targets, containerd.service) beside them.
    verify_units(root);

    // Purge: binaries, units, conffiles and enablement go; the registry's
    // data stays.
    run(dpkg(root)
        .arg("--purge")
        .arg("berth-agent")
        .arg("berth-server"));
    for path in [
        "usr/bin/berth-agent",
        "usr/bin/berth-server",
        "lib/systemd/system/berth-server.service",
        "etc/berth/agent.toml",
        "etc/berth/server.toml",
        "etc/systemd/system/multi-user.target.wants/berth-agent.service",
        "etc/systemd/system/multi-user.target.wants/berth-server.service",
    ] {
        assert!(!root.join(path).exists(), "{path} left after purge");
    }
    assert!(root.join("var/lib/berth").is_dir());
}

/// `systemd-analyze verify` on the units installed under `root`: it must
/// print nothing (it reports unknown keys and bad values as warnings and
/// still exits 0).
fn verify_units(root: &Path) {
    let analyze = require_tool("systemd-analyze");
    let units = root.join("lib/systemd/system");
    for entry in std::fs::read_dir("/lib/systemd/system").unwrap() {
        let entry = entry.unwrap();
        let dest = units.join(entry.file_name());
        if entry.file_type().unwrap().is_file() && !dest.exists() {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
    let out = run(Command::new(analyze)
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(["berth-agent.service", "berth-server.service"]));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.trim().is_empty(), "systemd-analyze verify:\n{said}");
}

#[test]
fn units_in_the_tree_are_the_packaged_ones() {
    let debs = debs();
    for package in ["berth-agent", "berth-server"] {
        let root = tempfile::tempdir().unwrap();
        run(Command::new("dpkg-deb")
            .arg("-x")
            .arg(debs.get(package, "amd64"))
            .arg(root.path()));
        let unit = format!("{package}.service");
        assert_eq!(
            std::fs::read(root.path().join("lib/systemd/system").join(&unit)).unwrap(),
            std::fs::read(workspace().join("systemd").join(&unit)).unwrap()
        );
    }
}

/// A configuration `validate` accepts, with empty files for the node
/// certificate and key (validate checks that they exist).
fn agent_config(dir: &Path) -> PathBuf {
    for f in ["node.crt", "node.key", "ca.crt"] {
        std::fs::write(dir.join(f), "").unwrap();
    }
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\nmetrics_listen = \"127.0.0.1:0\"\n\
             [registry]\nurl = \"http://127.0.0.1:9\"\nnamespace = \"acme.example.io\"\n\
             [node]\nauth_url = \"https://127.0.0.1:9\"\ncert_file = {crt:?}\n\
             key_file = {key:?}\nca_file = {ca:?}\n\
             [containerd]\nsocket = {sock:?}\n",
            data = dir.join("data"),
            crt = dir.join("node.crt"),
            key = dir.join("node.key"),
            ca = dir.join("ca.crt"),
            sock = dir.join("no-containerd.sock"),
        ),
    )
    .unwrap();
    config
}

#[test]
fn cross_built_agents_run_under_qemu() {
    let debs = debs();
    for (arch, qemu, sysroot) in [
        ("arm64", "qemu-aarch64-static", "/usr/aarch64-linux-gnu"),
        ("armhf", "qemu-arm-static", "/usr/arm-linux-gnueabihf"),
    ] {
        let qemu = require_tool(qemu);
        assert!(
            Path::new(sysroot).join("lib").is_dir(),
            "{sysroot} missing: apt-get install libc6-dev-{arch}-cross"
        );
        let root = tempfile::tempdir().unwrap();
        run(Command::new("dpkg-deb")
            .arg("-x")
            .arg(debs.get("berth-agent", arch))
            .arg(root.path()));
        let agent = root.path().join("usr/bin/berth-agent");
        let under_qemu = || {
            let mut cmd = Command::new(&qemu);
            cmd.arg("-L").arg(sysroot).arg(&agent);
            cmd
        };
        let version = stdout(under_qemu().arg("--version"));
        assert_eq!(version.trim(), "berth-agent 0.1.0", "{arch}");

        let config = agent_config(root.path());
        let ok = stdout(under_qemu().arg("validate").arg("--config").arg(&config));
        assert!(ok.contains(": ok"), "{arch}: {ok}");
        // And a bad one is refused with its problems.
        let bad = root.path().join("bad.toml");
        std::fs::write(&bad, "[registry]\nurl = \"ftp://x\"\n").unwrap();
        let out = under_qemu()
            .arg("validate")
            .arg("--config")
            .arg(&bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{arch}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("registry.url") && err.contains("node.auth_url"),
            "{arch}: {err}"
        );
    }
}

/// A fake systemd: the datagram socket of `NOTIFY_SOCKET`, read by the test.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        NotifySocket {
            _dir: dir,
            path,
            socket,
            seen: Vec::new(),
        }
    }

    /// The environment systemd gives a `Type=notify` service with
    /// `WatchdogSec=`: pings are expected every 100 ms.
    fn env(&self, cmd: &mut Command) {
        cmd.env("NOTIFY_SOCKET", &self.path)
            .env("WATCHDOG_USEC", "200000")
            .env_remove("WATCHDOG_PID");
    }

    /// Reads messages until `count` of them contain `line`, or fails after
    /// `timeout` (or when `child` exits first).
    fn wait_for(&mut self, line: &str, count: usize, child: &mut Child, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while self.count(line) < count {
            assert!(
                Instant::now() < deadline,
                "{count}× {line} not seen in {timeout:?}; got {:?}",
                self.seen
            );
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                    self.seen.extend(msg.lines().map(str::to_string));
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if let Some(status) = child.try_wait().unwrap() {
                        panic!(
                            "the daemon exited ({status}) before {line}; got {:?}",
                            self.seen
                        );
                    }
                }
                Err(e) => panic!("reading the notify socket: {e}"),
            }
        }
    }

    fn count(&self, line: &str) -> usize {
        self.seen.iter().filter(|l| *l == line).count()
    }
}

/// READY=1, then watchdog pings, then STOPPING=1 and a clean exit on
/// SIGTERM.
fn check_notify_protocol(mut cmd: Command) {
    let mut notify = NotifySocket::bind();
    notify.env(&mut cmd);
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    notify.wait_for("READY=1", 1, &mut child, Duration::from_secs(60));
    let ready_at = notify.seen.iter().position(|l| l == "READY=1").unwrap();
    notify.wait_for("WATCHDOG=1", 3, &mut child, Duration::from_secs(10));
    let first_ping = notify.seen.iter().position(|l| l == "WATCHDOG=1").unwrap();
    assert!(
        ready_at < first_ping,
        "pings before READY: {:?}",
        notify.seen
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    notify.wait_for("STOPPING=1", 1, &mut child, Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

#[test]
fn agent_daemon_notifies_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let config = agent_config(dir.path());
    let mut cmd = Command::new(workspace_bin("berth-agent"));
    // No containerd: the daemon is ready regardless, and keeps retrying.
    cmd.arg("daemon").arg("--config").arg(&config);
    check_notify_protocol(cmd);
}

#[test]
fn server_notifies_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(workspace_bin("berth-server"));
    cmd.arg("serve")
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"));
    check_notify_protocol(cmd);
}
