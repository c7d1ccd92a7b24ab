//! Latency of the Repositories page and the repositories API with 10,000
//! repositories in one namespace (the target is under 50 ms each). Measured
//! and printed, not asserted: timings on shared CI machines are noise.
//! Run it for the figures with
//! `cargo test --release -p portal --test perf -- --nocapture`;
//! `BERTH_PORTAL_PERF_REPOS` changes the count.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use auth::Role;
use common::{Harness, Who, push_image};
use http::{Request, StatusCode, header};
use registry::{MountSource, RepoName};

const NS: &str = "acme.example.io";

/// Fills the namespace: one image pushed, its blobs mounted into every
/// other repository and a manifest put there (what a real push does, minus
/// the byte transfer).
async fn fill(h: &Harness, count: usize) {
    let first = format!("{NS}/app-00000");
    push_image(h.registry(), &first, &["latest"], "perf").await;
    let source = RepoName::parse(&first).unwrap();
    let tags = h.registry().repository_tags(&source).await.unwrap();
    let manifest = h
        .registry()
        .get_manifest(
            &source,
            &registry::Reference::Tag(registry::Tag::parse("latest").unwrap()),
        )
        .await
        .unwrap();
    let blobs: Vec<registry::Digest> = {
        let v: serde_json::Value = serde_json::from_slice(&manifest.content).unwrap();
        std::iter::once(&v["config"])
            .chain(v["layers"].as_array().unwrap())
            .map(|d| registry::Digest::parse(d["digest"].as_str().unwrap()).unwrap())
            .collect()
    };
    assert_eq!(tags.len(), 1);
    let started = Instant::now();
    for i in 1..count {
        let repo = RepoName::parse(&format!("{NS}/app-{i:05}")).unwrap();
        for b in &blobs {
            h.registry()
                .mount_blob(&repo, b, MountSource::Repository(&source))
                .await
                .unwrap()
                .unwrap();
        }
        h.registry()
            .put_manifest(
                &repo,
                &registry::Reference::Tag(registry::Tag::parse("latest").unwrap()),
                Some(&manifest.media_type),
                &manifest.content,
                &[],
            )
            .await
            .unwrap();
    }
    println!("filled {count} repositories in {:.1?}", started.elapsed());
}

/// Median and worst of `n` runs of `req()`, each answering 200.
async fn measure(h: &Harness, what: &str, n: usize, req: impl Fn() -> http::request::Builder) {
    let mut times = Vec::with_capacity(n);
    let mut bytes = 0;
    for _ in 0..n {
        let started = Instant::now();
        let r = h.send(req()).await;
        times.push(started.elapsed());
        assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.text());
        bytes = r.body.len();
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what:<44} median {:>7.2} ms  max {:>7.2} ms  ({bytes} bytes)",
        ms(times[n / 2]),
        ms(times[n - 1])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repositories_page_and_api_with_ten_thousand_repositories() {
    let count: usize = std::env::var("BERTH_PORTAL_PERF_REPOS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    // Metadata commits without fsync: the fixture is throwaway.
    let h =
        Harness::with(|c| c.storage.sync = registry::storage::sqlite::Synchronous::Normal).await;
    h.user("acme", NS, "alice", Role::Admin).await;
    fill(&h, count).await;
    let s = h.sign_in("alice").await;
    let cookie = format!("berth_session={}", s.cookie);
    let page = |uri: &'static str| {
        let cookie = cookie.clone();
        move || Request::get(uri).header(header::COOKIE, &cookie)
    };
    let api = |uri: &'static str| {
        let s = s.clone();
        move || Who::Session(&s).apply(Request::get(uri))
    };
    let n = 21;
    println!("--- {count} repositories in {NS}, {n} requests each (session cookie) ---");
    measure(&h, "API first page (50)", n, api("/api/v1/repositories")).await;
    measure(
        &h,
        "API filtered, one match (q=app-04242)",
        n,
        api("/api/v1/repositories?q=app-04242"),
    )
    .await;
    measure(
        &h,
        "API filtered, many matches (q=77)",
        n,
        api("/api/v1/repositories?q=77"),
    )
    .await;
    measure(
        &h,
        "API deep page (after=app-09000)",
        n,
        api("/api/v1/repositories?after=acme.example.io/app-09000"),
    )
    .await;
    measure(
        &h,
        "API page of 1000",
        n,
        api("/api/v1/repositories?limit=1000"),
    )
    .await;
    measure(
        &h,
        "Repositories page (HTML, first 50)",
        n,
        page("/repositories"),
    )
    .await;
    measure(
        &h,
        "Repositories page filtered (q=app-04242)",
        n,
        page("/repositories?q=app-04242"),
    )
    .await;
    measure(
        &h,
        "Repositories page filtered (q=77)",
        n,
        page("/repositories?q=77"),
    )
    .await;
    measure(
        &h,
        "repository page (tags)",
        n,
        page("/repositories/acme.example.io/app-04242"),
    )
    .await;
    let r = h
        .call(
            &Who::Session(&s),
            http::Method::GET,
            "/api/v1/repositories?q=app-04242",
            None,
        )
        .await;
    assert_eq!(r.json()["total"], if count > 4242 { 1 } else { 0 });
    let r = h
        .call(
            &Who::Session(&s),
            http::Method::GET,
            "/api/v1/repositories",
            None,
        )
        .await;
    assert_eq!(r.json()["total"], count);
}
