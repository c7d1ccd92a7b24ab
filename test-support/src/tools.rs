//! Locating the programs tests run: outside tools from Debian packages
//! ([`require_tool`]) and this workspace's own binaries ([`workspace_bin`]).
//!
//! A missing tool is a broken test machine, not a reason to skip: both
//! functions panic with the command that fixes it.

use std::env;
use std::path::{Path, PathBuf};

/// Debian packages providing the tools Berth's tests use. Kept as a table so
/// the panic message can say exactly what to install.
const PACKAGES: &[(&str, &str)] = &[
    ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    ("busybox", "busybox-static"),
    ("chromedriver", "chromium-driver"),
    ("chromium", "chromium"),
    ("containerd", "containerd"),
    ("ctr", "containerd"),
    ("curl", "curl"),
    ("docker", "docker.io"),
    ("docker-registry", "docker-registry"),
    ("initdb", "postgresql"),
    ("iptables", "iptables"),
    ("nft", "nftables"),
    ("pg_ctl", "postgresql"),
    ("postgres", "postgresql"),
    ("podman", "podman"),
    ("protoc", "protobuf-compiler"),
    ("psql", "postgresql-client"),
    ("qemu-aarch64-static", "qemu-user-static"),
    ("qemu-arm-static", "qemu-user-static"),
    ("runc", "runc"),
    ("skopeo", "skopeo"),
    ("systemd-analyze", "systemd"),
];

/// The Debian package that provides `tool`, if this crate knows it.
pub fn debian_package_for(tool: &str) -> Option<&'static str> {
    PACKAGES
        .iter()
        .find(|(name, _)| *name == tool)
        .map(|(_, package)| *package)
}

/// Finds `name` on `PATH` (plus the sbin directories and PostgreSQL's
/// versioned bin directory, which are not always on a test's `PATH`), or
/// panics with "NAME is required for this test: apt-get install PACKAGE".
pub fn require_tool(name: &str) -> PathBuf {
    match find_tool(name) {
        Some(path) => path,
        None => match debian_package_for(name) {
            Some(package) => {
                panic!("{name} is required for this test: apt-get install {package}")
            }
            None => panic!(
                "{name} is required for this test: install the Debian package that provides it \
                 (`apt-file search bin/{name}` names it)"
            ),
        },
    }
}

/// Like [`require_tool`] for a tool this crate has no package for.
pub fn require_tool_from(name: &str, package: &str) -> PathBuf {
    find_tool(name)
        .unwrap_or_else(|| panic!("{name} is required for this test: apt-get install {package}"))
}

/// Finds `name` like [`require_tool`] without panicking.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return is_executable(&path).then_some(path);
    }
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    // Debian keeps the PostgreSQL server programs out of PATH.
    if let Ok(versions) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut pg: Vec<PathBuf> = versions
            .filter_map(Result::ok)
            .map(|e| e.path().join("bin"))
            .collect();
        pg.sort();
        pg.reverse();
        dirs.extend(pg);
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Path of a binary built from this workspace (`berth-server`, the agent…).
///
/// `BERTH_BIN_DIR` wins when set (CI can point it at a release build).
/// Otherwise the directory is derived from the running executable: test and
/// bench binaries live in `target/<profile>/deps/`, the binaries one level
/// up, so a test uses binaries of its own profile. Cargo builds a package's
/// binaries before its integration tests, but not other packages' binaries:
/// hence the message asking for `cargo build --bins`.
pub fn workspace_bin(name: &str) -> PathBuf {
    let (dir, origin) = match env::var_os("BERTH_BIN_DIR") {
        Some(dir) => (PathBuf::from(dir), "BERTH_BIN_DIR"),
        None => (profile_dir(), "the test executable's target directory"),
    };
    let path = dir.join(name);
    if !is_executable(&path) {
        panic!(
            "workspace binary {name} not found at {} (from {origin}): run `cargo build --bins` \
             first (same profile as the tests, e.g. add --release for release tests), or set \
             BERTH_BIN_DIR to the directory holding it",
            path.display()
        );
    }
    path
}

/// `target/<profile>` (or `target/<triple>/<profile>`) of the running test.
fn profile_dir() -> PathBuf {
    let exe = env::current_exe().expect("cannot locate the running test executable");
    let mut dir = exe
        .parent()
        .expect("the test executable has no parent directory")
        .to_path_buf();
    // Unit/integration tests and benches: target/<profile>/deps/<name>-<hash>;
    // examples: target/<profile>/examples/<name>.
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_installed_tools() {
        assert!(require_tool("sh").ends_with("sh"));
        assert_eq!(debian_package_for("skopeo"), Some("skopeo"));
        assert_eq!(debian_package_for("busybox"), Some("busybox-static"));
    }

    #[test]
    #[should_panic(expected = "no-such-tool is required for this test: apt-get install some-pkg")]
    fn missing_tool_panics_with_package() {
        require_tool_from("no-such-tool", "some-pkg");
    }

    #[test]
    #[should_panic(
        expected = "skopeo-does-not-exist is required for this test: install the Debian"
    )]
    fn unknown_missing_tool_still_panics() {
        require_tool("skopeo-does-not-exist");
    }

    #[test]
    fn profile_dir_is_above_deps() {
        let dir = profile_dir();
        assert!(!dir.ends_with("deps"), "{}", dir.display());
        assert!(dir.join("deps").is_dir(), "{}", dir.display());
    }

    #[test]
    #[should_panic(expected = "run `cargo build --bins`")]
    fn missing_workspace_bin_says_how_to_build_it() {
        workspace_bin("berth-no-such-binary");
    }
}
