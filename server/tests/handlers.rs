//! Handler tests: requests sent straight into the router (no socket), for
//! the behaviour of individual endpoints, headers, metrics and the Berth API.

#![allow(clippy::unwrap_used)]

use axum::body::Body;
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use server::App;
use server::config::Config;
use tower::ServiceExt;

struct Harness {
    _dir: tempfile::TempDir,
    app: App,
}

async fn harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    cfg.gc.grace_secs = 0;
    cfg.auth.enabled = false;
    Harness {
        app: App::build(&cfg).await.unwrap(),
        _dir: dir,
    }
}

struct Resp {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn error_code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

impl Harness {
    async fn send(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .app
            .router
            .clone()
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        Resp {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, uri: &str) -> Resp {
        self.send(Method::GET, uri, &[], vec![]).await
    }

    async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let d = digest(data);
        let r = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
                &[("content-length", &data.len().to_string())],
                data.to_vec(),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        d
    }

    async fn push_manifest(&self, repo: &str, reference: &str, body: &str) -> Resp {
        self.send(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("content-type", "application/vnd.oci.image.manifest.v1+json")],
            body.as_bytes().to_vec(),
        )
        .await
    }
}

fn digest(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

fn manifest(config: &str, layer: &str, layer_size: usize) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":{layer_size}}}]}}"#
    )
}

#[tokio::test]
async fn version_check_answers_with_api_header() {
    let h = harness().await;
    for uri in ["/v2/", "/v2"] {
        let r = h.get(uri).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("docker-distribution-api-version"), "registry/2.0");
        assert!(!r.header("x-request-id").is_empty());
        assert_eq!(r.body, b"{}");
    }
}

#[tokio::test]
async fn unknown_endpoints_and_methods_answer_oci_errors() {
    let h = harness().await;
    let r = h.get("/v2/acme/app/nonsense/x").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "UNSUPPORTED");
    assert_eq!(r.header("content-type"), "application/json");
    let r = h
        .send(Method::POST, "/v2/acme/app/manifests/v1", &[], vec![])
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.error_code(), "UNSUPPORTED");
}

#[tokio::test]
async fn push_then_pull_by_tag_and_digest() {
    let h = harness().await;
    let cfg = h.push_blob("acme/app", b"{}").await;
    let layer = h.push_blob("acme/app", b"layer bytes").await;
    let body = manifest(&cfg, &layer, 11);
    let r = h.push_manifest("acme/app", "v1", &body).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let d = digest(body.as_bytes());
    assert_eq!(r.header("docker-content-digest"), d);
    assert_eq!(r.header("location"), format!("/v2/acme/app/manifests/{d}"));

    for reference in ["v1", d.as_str()] {
        let r = h.get(&format!("/v2/acme/app/manifests/{reference}")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, body.as_bytes());
        assert_eq!(
            r.header("content-type"),
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(r.header("docker-content-digest"), d);
    }
    // HEAD: same headers, no body.
    let r = h
        .send(Method::HEAD, "/v2/acme/app/manifests/v1", &[], vec![])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-length"), body.len().to_string());
    assert!(r.body.is_empty());
    // A client that accepts only Docker types does not get an OCI manifest.
    let r = h
        .send(
            Method::GET,
            "/v2/acme/app/manifests/v1",
            &[(
                "accept",
                "application/vnd.docker.distribution.manifest.v2+json",
            )],
            vec![],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error_code(), "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn blob_reads_support_ranges_and_head() {
    let h = harness().await;
    let data: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let d = h.push_blob("acme/app", &data).await;
    let r = h.get(&format!("/v2/acme/app/blobs/{d}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, data);
    assert_eq!(r.header("docker-content-digest"), d);
    assert_eq!(r.header("accept-ranges"), "bytes");
    let r = h
        .send(
            Method::GET,
            &format!("/v2/acme/app/blobs/{d}"),
            &[("range", "bytes=100-199")],
            vec![],
        )
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, &data[100..200]);
    assert_eq!(r.header("content-range"), "bytes 100-199/4096");
    let r = h
        .send(
            Method::GET,
            &format!("/v2/acme/app/blobs/{d}"),
            &[("range", "bytes=5000-")],
            vec![],
        )
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("content-range"), "bytes */4096");
    let r = h
        .send(
            Method::HEAD,
            &format!("/v2/acme/app/blobs/{d}"),
            &[],
            vec![],
        )
        .await;
    assert_eq!(
        (r.status, r.header("content-length")),
        (StatusCode::OK, "4096")
    );
    // The blob belongs to acme/app only.
    let r = h.get(&format!("/v2/acme/other/blobs/{d}")).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::NOT_FOUND, "BLOB_UNKNOWN")
    );
}

#[tokio::test]
async fn chunked_upload_reports_progress_and_refuses_gaps() {
    let h = harness().await;
    let r = h
        .send(Method::POST, "/v2/acme/app/blobs/uploads/", &[], vec![])
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let loc = r.header("location").to_owned();
    assert_eq!(r.header("range"), "0-0");
    let r = h
        .send(
            Method::PATCH,
            &loc,
            &[("content-range", "0-4"), ("content-length", "5")],
            b"hello".to_vec(),
        )
        .await;
    assert_eq!((r.status, r.header("range")), (StatusCode::ACCEPTED, "0-4"));
    // A gap: 416 with the session's position.
    let r = h
        .send(
            Method::PATCH,
            &loc,
            &[("content-range", "10-14"), ("content-length", "5")],
            b"world".to_vec(),
        )
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("range"), "0-4");
    assert_eq!(r.header("location"), loc);
    let r = h.get(&loc).await;
    assert_eq!(
        (r.status, r.header("range")),
        (StatusCode::NO_CONTENT, "0-4")
    );
    let d = digest(b"hello world");
    let r = h
        .send(
            Method::PUT,
            &format!("{loc}?digest={d}"),
            &[("content-range", "5-10"), ("content-length", "6")],
            b" world".to_vec(),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(
        h.get(&format!("/v2/acme/app/blobs/{d}")).await.body,
        b"hello world"
    );
    // The session is gone once committed.
    assert_eq!(h.get(&loc).await.error_code(), "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn tags_and_catalog_page_with_links() {
    let h = harness().await;
    let cfg = h.push_blob("acme/app", b"{}").await;
    let layer = h.push_blob("acme/app", b"x").await;
    let body = manifest(&cfg, &layer, 1);
    for t in ["c", "a", "b", "d"] {
        assert_eq!(
            h.push_manifest("acme/app", t, &body).await.status,
            StatusCode::CREATED
        );
    }
    let r = h.get("/v2/acme/app/tags/list?n=2").await;
    assert_eq!(
        r.json(),
        serde_json::json!({"name": "acme/app", "tags": ["a", "b"]})
    );
    assert_eq!(
        r.header("link"),
        "</v2/acme/app/tags/list?n=2&last=b>; rel=\"next\""
    );
    let r = h.get("/v2/acme/app/tags/list?n=2&last=b").await;
    assert_eq!(r.json()["tags"], serde_json::json!(["c", "d"]));
    assert_eq!(r.header("link"), "");
    let r = h.get("/v2/acme/unknown/tags/list").await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (StatusCode::NOT_FOUND, "NAME_UNKNOWN")
    );
    h.push_blob("acme/zzz", b"z").await;
    let r = h.get("/v2/_catalog?n=1").await;
    assert_eq!(r.json(), serde_json::json!({"repositories": ["acme/app"]}));
    assert_eq!(
        r.header("link"),
        "</v2/_catalog?n=1&last=acme%2Fapp>; rel=\"next\""
    );
}

#[tokio::test]
async fn berth_api_deletes_repositories_and_runs_gc() {
    let h = harness().await;
    let cfg = h.push_blob("acme/app", b"{}").await;
    let layer = h.push_blob("acme/app", b"payload").await;
    assert_eq!(
        h.push_manifest("acme/app", "v1", &manifest(&cfg, &layer, 7))
            .await
            .status,
        StatusCode::CREATED
    );
    let r = h
        .send(
            Method::DELETE,
            "/api/v1/repositories/acme/app?confirm=acme/app",
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = h
        .send(
            Method::DELETE,
            "/api/v1/repositories/acme/app?confirm=acme/app",
            &[],
            vec![],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"]["code"], "NAME_UNKNOWN");
    assert_eq!(
        h.get("/v2/acme/app/tags/list").await.status,
        StatusCode::NOT_FOUND
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let r = h.send(Method::POST, "/api/v1/gc", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["blobs"], 2);
    assert_eq!(r.json()["bytes"], 9);
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_bytes() {
    let h = harness().await;
    h.push_blob("acme/app", b"0123456789").await;
    h.get("/v2/acme/app/manifests/missing").await;
    let r = h.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    let text = String::from_utf8(r.body).unwrap();
    assert!(
        text.contains(
            r#"berth_http_requests_total{route="blob_upload",method="POST",status="201"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"berth_http_requests_total{route="manifest",method="GET",status="404"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("berth_registry_received_bytes_total 10"),
        "{text}"
    );
    assert!(
        text.contains("berth_registry_blob_upload_duration_seconds_count 1"),
        "{text}"
    );
    assert!(
        r.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
}
