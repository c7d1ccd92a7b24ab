//! The portal with 10,000 repositories in one namespace: how long the
//! Repositories page and the management API take to answer (first page,
//! a filter, a page deep in the list, one repository's page). The target is
//! under 50 ms each. Distribution has no portal, so these figures are
//! berth's alone; they come from a berth-server with accounts on, signed in
//! as a browser would be.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

use crate::auth::{admin, start};
use crate::manifests::{SETUP_CONCURRENCY, push_image, run_concurrent, small_image};
use crate::progress;
use crate::registries::Registry;
use crate::report::{median, percentile};

const NS: &str = "bench.local";
const USER: &str = "bench-admin";
const PASSWORD: &str = "correct horse battery staple";

/// One timed request kind.
#[derive(Debug, Clone)]
pub struct PortalFigure {
    pub label: String,
    pub median_ms: f64,
    pub p99_ms: f64,
}

fn repo(i: usize) -> String {
    format!("{NS}/app-{i:05}")
}

/// The value of cookie `name` among a response's `Set-Cookie` headers.
fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers().get_all(SET_COOKIE).iter().find_map(|v| {
        let v = v.to_str().ok()?;
        let (pair, _) = v.split_once(';').unwrap_or((v, ""));
        let (k, val) = pair.split_once('=')?;
        (k.trim() == name && !val.is_empty()).then(|| val.to_owned())
    })
}

/// Signs in through the sign-in form as a browser does and returns the
/// session cookie (`name=value`).
async fn sign_in(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    let form = http.get(format!("{base}/login")).send().await?;
    ensure!(
        form.status() == StatusCode::OK,
        "GET /login answered {}",
        form.status()
    );
    let csrf = set_cookie(&form, "berth_login").context("no sign-in cookie on /login")?;
    let resp = http
        .post(format!("{base}/login"))
        .header(COOKIE, format!("berth_login={csrf}"))
        .form(&[
            ("username", USER),
            ("password", PASSWORD),
            ("csrf", csrf.as_str()),
        ])
        .send()
        .await?;
    ensure!(
        resp.status().is_redirection(),
        "sign-in answered {}: {}",
        resp.status(),
        resp.text().await.unwrap_or_default()
    );
    let session = set_cookie(&resp, "berth_session").context("no session cookie after sign-in")?;
    Ok(format!("berth_session={session}"))
}

/// `samples` sequential GETs of `path` after a few warm-ups; every answer
/// must be 200 and contain `expect`.
async fn time_get(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    cookie: &str,
    expect: &str,
    samples: usize,
) -> anyhow::Result<(f64, f64)> {
    let mut ms = Vec::with_capacity(samples);
    for i in 0..samples + 10 {
        let started = Instant::now();
        let resp = http
            .get(format!("{base}{path}"))
            .header(COOKIE, cookie)
            .send()
            .await?;
        let status = resp.status();
        let body = resp.text().await?;
        let elapsed = started.elapsed().as_secs_f64() * 1e3;
        if status != StatusCode::OK || !body.contains(expect) {
            bail!(
                "GET {path} answered {status} without {expect:?}: {}",
                body.chars().take(300).collect::<String>()
            );
        }
        if i >= 10 {
            ms.push(elapsed);
        }
    }
    Ok((median(&ms), percentile(&ms, 99.0)))
}

pub async fn measure(
    binary: &Path,
    count: usize,
    samples: usize,
) -> anyhow::Result<Vec<PortalFigure>> {
    let server = start(binary, true)?;
    let dir = server.data_dir().to_path_buf();
    admin(
        binary,
        &dir,
        &["account", "create", "bench", "--namespace", NS],
        None,
    )?;
    admin(
        binary,
        &dir,
        &[
            "user",
            "create",
            USER,
            "--account",
            "bench",
            "--role",
            "admin",
            "--password-stdin",
        ],
        Some(PASSWORD),
    )?;
    let minted = admin(binary, &dir, &["credential", "mint", USER], None)?;
    let secret = minted["secret"]
        .as_str()
        .context("no secret in the minted credential")?;

    // Set-up (not timed): the same small image pushed to every repository,
    // with Basic credentials (the registry accepts them beside tokens).
    let mut reg = Registry::new("berth (accounts on)", &server.url(), server.pid(), 10_000)?;
    reg.client = reg.client.basic_auth(USER, secret);
    let (_, image) = small_image();
    let image = std::sync::Arc::new(image);
    progress::line(format!(
        "  set-up: {count} repositories in {NS} (not timed)"
    ));
    let started = Instant::now();
    let bar = progress::counter(count as u64, "repositories");
    run_concurrent(count, SETUP_CONCURRENCY, Some(&bar), |i| {
        let (reg, image) = (reg.clone(), image.clone());
        async move { push_image(&reg, &repo(i), &image, "latest").await }
    })
    .await?;
    bar.finish_and_clear();
    progress::line(format!(
        "  set-up took {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    // No redirects followed: the sign-in answer carries the cookie.
    let http = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let base = server.url();
    let cookie = sign_in(&http, &base).await?;

    // A page deep in the list: the API's cursor after the 5,000th name.
    let middle = repo(count / 2);
    let last = repo(count - 1);
    let probe = http
        .get(format!("{base}/repositories"))
        .header(COOKIE, &cookie)
        .send()
        .await?;
    if let Some(to) = probe.headers().get(LOCATION) {
        bail!("the session was not accepted (redirected to {to:?})");
    }
    let cases: Vec<(String, String, String)> = vec![
        (
            "Repositories page, first 50".into(),
            "/repositories".into(),
            repo(0),
        ),
        (
            "Repositories page, filtered".into(),
            format!("/repositories?q=app-{:04}", (count - 1) / 10),
            last.clone(),
        ),
        (
            "Repositories page, mid-list".into(),
            format!("/repositories?after={middle}&start={}", count / 2 + 2),
            repo(count / 2 + 1),
        ),
        (
            "repository page (tags, pull URIs)".into(),
            format!("/repositories/{last}"),
            "latest".into(),
        ),
        (
            "API: GET /api/v1/repositories".into(),
            "/api/v1/repositories".into(),
            repo(0),
        ),
        (
            "API: repositories, filtered".into(),
            format!("/api/v1/repositories?q=app-{:04}", (count - 1) / 10),
            last.clone(),
        ),
        (
            "API: repositories, mid-list".into(),
            format!("/api/v1/repositories?after={middle}"),
            repo(count / 2 + 1),
        ),
        (
            "API: GET /api/v1/repositories/<name>".into(),
            format!("/api/v1/repositories/{last}"),
            "pull_by_digest".into(),
        ),
    ];
    let mut figures = Vec::new();
    for (label, path, expect) in cases {
        let (median_ms, p99_ms) = time_get(&http, &base, &path, &cookie, &expect, samples)
            .await
            .with_context(|| label.clone())?;
        progress::line(format!(
            "  {label}: median {median_ms:.2} ms, p99 {p99_ms:.2} ms"
        ));
        figures.push(PortalFigure {
            label,
            median_ms,
            p99_ms,
        });
    }
    Ok(figures)
}
