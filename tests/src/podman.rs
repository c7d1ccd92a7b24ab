//! [`Podman`]: podman with private storage and settings.
//!
//! Every instance has its own temporary directory with the image store
//! (`--root`, vfs driver: no overlay mounts to clean up), `--runroot`,
//! `--tmpdir`, a `registries.conf` marking the given registries insecure
//! (plain HTTP), a signature policy accepting anything (test images are
//! unsigned) and an auth file, so tests neither depend on nor touch
//! `/etc/containers` and `/var/lib/containers/storage`.
//!
//! One thing stays shared: containers/image keeps its blob-info cache
//! (which registry holds which compressed blob) in `/var/lib/containers/cache`
//! for root, and offers no way to move it. It only lets pushes skip or mount
//! blobs a registry already has.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use tempfile::TempDir;
use test_support::require_tool;

/// podman bound to a private store; see the module documentation.
#[derive(Debug)]
pub struct Podman {
    binary: PathBuf,
    dir: TempDir,
}

impl Podman {
    /// A podman environment trusting `insecure_registries` (`host:port`)
    /// over plain HTTP. Panics if podman is missing.
    pub fn new(insecure_registries: &[&str]) -> Podman {
        Self::try_new(insecure_registries)
            .unwrap_or_else(|e| panic!("setting up podman failed: {e:#}"))
    }

    pub fn try_new(insecure_registries: &[&str]) -> anyhow::Result<Podman> {
        let binary = require_tool("podman");
        let dir = tempfile::Builder::new()
            .prefix("podman-")
            .tempdir()
            .context("creating podman's temp dir")?;
        for sub in ["root", "runroot", "tmp", "imgtmp", "volumes"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        let mut conf = String::from("unqualified-search-registries = []\n");
        for host in insecure_registries {
            conf.push_str(&format!(
                "\n[[registry]]\nlocation = \"{host}\"\ninsecure = true\n"
            ));
        }
        std::fs::write(dir.path().join("registries.conf"), conf)?;
        std::fs::write(
            dir.path().join("policy.json"),
            br#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )?;
        std::fs::write(dir.path().join("auth.json"), br#"{"auths":{}}"#)?;
        Ok(Podman { binary, dir })
    }

    /// The private directory (store, settings).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The signature policy to pass as `--signature-policy` to commands
    /// that copy images.
    pub fn policy(&self) -> PathBuf {
        self.dir.path().join("policy.json")
    }

    /// `podman` with the private store and settings; add the subcommand.
    pub fn command(&self) -> Command {
        let d = self.dir.path();
        let mut cmd = Command::new(&self.binary);
        cmd.env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"))
            .env("REGISTRY_AUTH_FILE", d.join("auth.json"))
            // Where containers/image stages blobs (default /var/tmp).
            .env("TMPDIR", d.join("imgtmp"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .arg("--volumepath")
            .arg(d.join("volumes"))
            .arg("--storage-driver")
            .arg("vfs")
            .arg("--events-backend")
            .arg("none")
            .arg("--cgroup-manager")
            .arg("cgroupfs")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `podman ARGS…`, returning stdout, or failing with the command,
    /// its status and stderr.
    pub fn run<I, S>(&self, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command();
        cmd.args(args);
        let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        if !out.status.success() {
            bail!(
                "{cmd:?} failed with {}:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `podman pull --quiet IMAGE`: the local image id.
    pub fn pull(&self, image: &str) -> anyhow::Result<String> {
        let policy = self.policy();
        let out = self.run([
            OsStr::new("pull"),
            OsStr::new("--quiet"),
            OsStr::new("--signature-policy"),
            policy.as_os_str(),
            OsStr::new(image),
        ])?;
        Ok(out.trim().to_owned())
    }

    /// `podman push SRC DEST` with `extra` flags; returns the manifest
    /// digest podman reports (`--digestfile`).
    pub fn push(&self, src: &str, dest: &str, extra: &[&str]) -> anyhow::Result<String> {
        let digest_file = self.dir.path().join("push-digest");
        let _ = std::fs::remove_file(&digest_file);
        let policy = self.policy();
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("push"),
            OsStr::new("--quiet"),
            OsStr::new("--signature-policy"),
            policy.as_os_str(),
            OsStr::new("--digestfile"),
            digest_file.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        args.extend([OsStr::new(src), OsStr::new(dest)]);
        self.run(args)?;
        let digest = std::fs::read_to_string(&digest_file)
            .with_context(|| format!("reading {}", digest_file.display()))?;
        Ok(digest.trim().to_owned())
    }

    /// `podman image inspect IMAGE`, the first (only) element.
    pub fn inspect(&self, image: &str) -> anyhow::Result<serde_json::Value> {
        let out = self.run(["image", "inspect", image])?;
        let mut all: Vec<serde_json::Value> =
            serde_json::from_str(&out).context("parsing podman image inspect")?;
        if all.len() != 1 {
            bail!("podman image inspect {image} returned {} images", all.len());
        }
        Ok(all.remove(0))
    }
}
