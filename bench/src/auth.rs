//! What authentication costs: token grants per second on berth's token
//! endpoint, and manifest GETs per second with a bearer token, beside the
//! same GETs on an identical berth-server with accounts off. Distribution
//! has no token server of its own, so these figures are berth's alone.

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, ensure};
use reqwest::StatusCode;
use test_support::BerthServer;

use crate::manifests::{self, WrkParams};
use crate::progress;
use crate::registries::Registry;
use crate::report::percentile;

/// The figures of the auth measurement.
#[derive(Debug, Clone)]
pub struct AuthFigures {
    pub grants_per_sec: f64,
    pub grant_p99_ms: f64,
    pub open_rps: f64,
    pub auth_rps: f64,
    pub open_p99_ms: f64,
    pub auth_p99_ms: f64,
    /// Server CPU (user + system) per manifest GET, in microseconds.
    pub open_cpu_us: f64,
    pub auth_cpu_us: f64,
}

/// Runs `berth-server admin …` on the server's data directory.
pub(crate) fn admin(
    binary: &Path,
    data_dir: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    admin_with(binary, data_dir, args, stdin, &[])
}

/// [`admin`] with the server's `BERTH_*` environment, which the CLI reads as
/// the server does (node enrolment needs the node settings).
pub(crate) fn admin_env(
    binary: &Path,
    data_dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<serde_json::Value> {
    admin_with(binary, data_dir, args, None, env)
}

fn admin_with(
    binary: &Path,
    data_dir: &Path,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
) -> anyhow::Result<serde_json::Value> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(binary)
        .envs(env.iter().copied())
        .arg("admin")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--json")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running berth-server admin")?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "berth-server admin {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("parsing admin --json output")
}

pub(crate) fn start(binary: &Path, auth: bool) -> anyhow::Result<BerthServer> {
    BerthServer::builder()
        .binary(binary)
        .env("BERTH_AUTH__ENABLED", if auth { "true" } else { "false" })
        .try_start()
        .context("starting berth-server")
}

pub async fn measure(binary: &Path, wrk: WrkParams, grants: usize) -> anyhow::Result<AuthFigures> {
    let open = start(binary, false)?;
    let secured = start(binary, true)?;
    let dir = secured.data_dir().to_path_buf();
    admin(
        binary,
        &dir,
        &["account", "create", "bench", "--namespace", "bench.local"],
        None,
    )?;
    admin(
        binary,
        &dir,
        &[
            "user",
            "create",
            "bencher",
            "--account",
            "bench",
            "--role",
            "developer",
        ],
        None,
    )?;
    let minted = admin(binary, &dir, &["credential", "mint", "bencher"], None)?;
    let secret = minted["secret"]
        .as_str()
        .context("no secret in the minted credential")?
        .to_owned();

    let repo = "bench.local/manifest";
    let token_url = format!(
        "{}/auth/token?service=berth-registry&scope=repository:{repo}:pull,push",
        secured.url()
    );
    let http = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .build()?;
    let token_of = |resp: serde_json::Value| -> anyhow::Result<String> {
        Ok(resp["token"]
            .as_str()
            .context("no token in the answer")?
            .to_owned())
    };
    let first = http
        .get(&token_url)
        .basic_auth("bencher", Some(&secret))
        .send()
        .await?;
    ensure!(
        first.status() == StatusCode::OK,
        "token endpoint answered {}",
        first.status()
    );
    let token = token_of(first.json().await?)?;

    // Token grants: the first one verified the credential with argon2; the
    // rest are what a client asking per repository costs.
    progress::line(format!(
        "  berth (accounts on): {grants} token grants, 8 in flight"
    ));
    let started = Instant::now();
    let mut tasks = futures::stream::iter(0..grants)
        .map(|_| {
            let (http, url, secret) = (http.clone(), token_url.clone(), secret.clone());
            tokio::spawn(async move {
                let t = Instant::now();
                let r = http
                    .get(&url)
                    .basic_auth("bencher", Some(&secret))
                    .send()
                    .await?;
                anyhow::ensure!(
                    r.status() == StatusCode::OK,
                    "token endpoint answered {}",
                    r.status()
                );
                r.bytes().await?;
                Ok::<_, anyhow::Error>(t.elapsed().as_secs_f64() * 1e3)
            })
        })
        .buffer_unordered(8);
    let mut latencies = Vec::with_capacity(grants);
    use futures::StreamExt as _;
    while let Some(r) = tasks.next().await {
        latencies.push(r.context("a token request panicked")??);
    }
    let grants_per_sec = grants as f64 / started.elapsed().as_secs_f64();
    progress::line(format!(
        "  berth (accounts on): {grants_per_sec:.0} grants/s"
    ));

    // The same manifest on both servers, then wrk on each.
    let open_reg = Registry::new("berth (open)", &open.url(), open.pid(), 10_000)?;
    let mut auth_reg = Registry::new("berth (accounts on)", &secured.url(), secured.pid(), 10_000)?;
    auth_reg.client = auth_reg.client.bearer_token(&token);
    let (open_result, auth_result) = manifests::manifest_get_pair(
        &open_reg,
        &auth_reg,
        repo,
        wrk,
        &format!("Authorization: Bearer {token}"),
    )
    .await?;
    Ok(AuthFigures {
        grants_per_sec,
        grant_p99_ms: percentile(&latencies, 99.0),
        open_rps: open_result.0.requests_per_sec,
        auth_rps: auth_result.0.requests_per_sec,
        open_p99_ms: open_result.0.p99.as_secs_f64() * 1e3,
        auth_p99_ms: auth_result.0.p99.as_secs_f64() * 1e3,
        open_cpu_us: open_result.1,
        auth_cpu_us: auth_result.1,
    })
}
