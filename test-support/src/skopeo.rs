//! [`Skopeo`]: runs skopeo with a private signature policy and auth file, so
//! tests neither depend on nor touch the machine's `/etc/containers` and
//! `~/.config/containers` settings.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::tools::require_tool;

/// A skopeo invocation environment: a policy accepting any image (test
/// images are unsigned) and an auth file of its own.
#[derive(Debug)]
pub struct Skopeo {
    binary: PathBuf,
    dir: TempDir,
}

impl Default for Skopeo {
    fn default() -> Self {
        Self::new()
    }
}

impl Skopeo {
    /// Panics (with the package to install) if skopeo is missing.
    pub fn new() -> Skopeo {
        let binary = require_tool("skopeo");
        let dir = tempfile::Builder::new()
            .prefix("skopeo-")
            .tempdir()
            .expect("creating a temp dir for skopeo's settings");
        std::fs::write(
            dir.path().join("policy.json"),
            br#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .expect("writing skopeo's policy.json");
        std::fs::write(dir.path().join("auth.json"), br#"{"auths":{}}"#)
            .expect("writing skopeo's auth.json");
        Skopeo { binary, dir }
    }

    /// The auth file `login` writes to and every command reads.
    pub fn auth_file(&self) -> PathBuf {
        self.dir.path().join("auth.json")
    }

    /// `skopeo --policy P` with the private auth file; add the subcommand
    /// and its arguments.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.env("REGISTRY_AUTH_FILE", self.auth_file())
            .arg("--policy")
            .arg(self.dir.path().join("policy.json"));
        cmd
    }

    /// Runs `skopeo ARGS…`, returning stdout, or failing with stderr.
    pub fn run<I, S>(&self, args: I) -> anyhow::Result<Vec<u8>>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command();
        cmd.args(args);
        let output = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        if !output.status.success() {
            bail!(
                "{cmd:?} failed with {}:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(output.stdout)
    }

    /// `skopeo copy` over plain HTTP (TLS verification off on both sides),
    /// keeping digests, with `extra` flags such as `--all`.
    pub fn copy(&self, src: &str, dest: &str, extra: &[&str]) -> anyhow::Result<()> {
        let mut args = vec![
            "copy",
            "--quiet",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ];
        args.extend_from_slice(extra);
        args.extend([src, dest]);
        self.run(args).map(drop)
    }

    /// `skopeo inspect --raw`: the manifest bytes exactly as served.
    pub fn inspect_raw(&self, image: &str) -> anyhow::Result<Vec<u8>> {
        self.run(["inspect", "--raw", "--tls-verify=false", image])
    }

    /// `skopeo list-tags`, parsed.
    pub fn list_tags(&self, repo: &str) -> anyhow::Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Tags {
            #[serde(rename = "Tags")]
            tags: Vec<String>,
        }
        let out = self.run(["list-tags", "--tls-verify=false", repo])?;
        let tags: Tags = serde_json::from_slice(&out).context("parsing list-tags output")?;
        Ok(tags.tags)
    }

    /// `skopeo login` into the private auth file.
    pub fn login(&self, host: &str, user: &str, password: &str) -> anyhow::Result<()> {
        self.run([
            "login",
            "--tls-verify=false",
            "--username",
            user,
            "--password",
            password,
            host,
        ])
        .map(drop)
    }

    /// The directory holding the policy and auth file.
    pub fn settings_dir(&self) -> &Path {
        self.dir.path()
    }
}
