//! [`OciClient`] against a real distribution 2.8 registry: every upload
//! flow, manifests, tags, deletes, mounts and range reads. distribution is
//! the reference: what passes here is what the Berth tests may rely on.

use bytes::Bytes;
use reqwest::StatusCode;
use test_support::images::media_types;
use test_support::{
    Arch, DockerRegistry, OciClient, busybox_image, busybox_multi_arch, docker_image, random_blob,
    sha256_digest,
};

fn client(registry: &DockerRegistry) -> OciClient {
    test_support::init_tracing();
    OciClient::new(&registry.url())
}

#[tokio::test]
async fn blob_upload_flows() {
    let registry = DockerRegistry::start();
    let c = client(&registry);
    assert_eq!(c.ping().await.expect("ping").status(), StatusCode::OK);

    // post + put
    let a = random_blob(300_000, 1);
    let da = sha256_digest(&a);
    let resp = c
        .push_blob_post_put("t/blobs", &da, a.clone())
        .await
        .expect("post+put");
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(
        c.head_blob("t/blobs", &da).await.expect("head").status(),
        StatusCode::OK
    );
    assert_eq!(c.get_blob_bytes("t/blobs", &da).await.expect("get"), a);

    // chunked, with an uneven last chunk
    let b = random_blob(1_000_003, 2);
    let db = sha256_digest(&b);
    let resp = c
        .push_blob_chunked("t/blobs", &db, b.clone(), 256 * 1024)
        .await
        .expect("chunked");
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(
        resp.headers()["docker-content-digest"]
            .to_str()
            .expect("ascii"),
        db
    );
    assert_eq!(c.get_blob_bytes("t/blobs", &db).await.expect("get"), b);

    // monolithic POST: distribution 2.8 does not support it and answers 202
    // with an upload session, which the client can finish with a PUT.
    let m = random_blob(5000, 3);
    let dm = sha256_digest(&m);
    let resp = c
        .push_blob_monolithic("t/blobs", &dm, m.clone())
        .await
        .expect("monolithic");
    match resp.status() {
        StatusCode::CREATED => {}
        StatusCode::ACCEPTED => {
            let location = c.location(&resp).expect("location");
            let put = c
                .finish_upload(&location, &dm, Some(m.clone()))
                .await
                .expect("put");
            assert_eq!(put.status(), StatusCode::CREATED);
        }
        other => panic!("monolithic push answered {other}"),
    }
    assert_eq!(c.get_blob_bytes("t/blobs", &dm).await.expect("get"), m);

    // ranges
    let resp = c
        .get_blob("t/blobs", &da, Some((10, Some(19))))
        .await
        .expect("range");
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.expect("body"), a.slice(10..20));

    // a wrong digest is refused
    let resp = c
        .push_blob_post_put(
            "t/blobs",
            &sha256_digest(b"other"),
            Bytes::from_static(b"data"),
        )
        .await
        .expect("bad digest");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // upload status and cancel
    let started = c.start_upload("t/blobs").await.expect("start");
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    let location = c.location(&started).expect("location");
    let patched = c
        .patch_chunk(&location, 0, Bytes::from_static(b"hello"))
        .await
        .expect("patch");
    assert_eq!(patched.status(), StatusCode::ACCEPTED);
    let location = c.location(&patched).expect("location");
    let status = c.upload_status(&location).await.expect("status");
    assert_eq!(status.status(), StatusCode::NO_CONTENT);
    assert_eq!(status.headers()["range"], "0-4");
    let cancelled = c.cancel_upload(&location).await.expect("cancel");
    assert_eq!(cancelled.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        c.upload_status(&location).await.expect("status").status(),
        StatusCode::NOT_FOUND
    );

    // cross-repository mount
    let mounted = c
        .mount_blob("t/other", &da, Some("t/blobs"))
        .await
        .expect("mount");
    assert_eq!(mounted.status(), StatusCode::CREATED);
    assert_eq!(c.get_blob_bytes("t/other", &da).await.expect("get"), a);

    // delete
    let deleted = c.delete_blob("t/other", &da).await.expect("delete");
    assert_eq!(deleted.status(), StatusCode::ACCEPTED);
    assert_eq!(
        c.head_blob("t/other", &da).await.expect("head").status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn manifests_tags_and_catalog() {
    let registry = DockerRegistry::start();
    let c = client(&registry);

    let image = busybox_image(Arch::Amd64);
    c.push_image("t/app", &image, "v1")
        .await
        .expect("push image");
    c.push_image("t/app", &image, "v2")
        .await
        .expect("push again");
    let docker = docker_image(Arch::Amd64);
    c.push_image("t/app", &docker, "docker")
        .await
        .expect("push docker");
    let index = busybox_multi_arch();
    c.push_index("t/app", &index, "multi")
        .await
        .expect("push index");

    let (mt, bytes) = c.get_manifest_bytes("t/app", "v1").await.expect("get v1");
    assert_eq!(mt, media_types::OCI_MANIFEST);
    assert_eq!(bytes, image.manifest);
    let resp = c
        .get_manifest("t/app", &image.digest, &[media_types::OCI_MANIFEST])
        .await
        .expect("by digest");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["docker-content-digest"],
        image.digest.as_str()
    );
    let (mt, bytes) = c
        .get_manifest_bytes("t/app", "docker")
        .await
        .expect("docker");
    assert_eq!(mt, media_types::DOCKER_MANIFEST);
    assert_eq!(bytes, docker.manifest);
    let (mt, bytes) = c.get_manifest_bytes("t/app", "multi").await.expect("index");
    assert_eq!(mt, media_types::OCI_INDEX);
    assert_eq!(bytes, index.manifest);
    let head = c.head_manifest("t/app", "v2", &[]).await.expect("head");
    assert_eq!(head.status(), StatusCode::OK);

    let mut tags = c.tags("t/app").await.expect("tags");
    tags.sort();
    assert_eq!(tags, ["docker", "multi", "v1", "v2"]);
    // distribution 2.8 ignores n/last on tags/list (pagination came in
    // 3.0); the request must still be well-formed and answered.
    let page = c
        .tags_list("t/app", Some(2), Some("docker"))
        .await
        .expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    let page: test_support::client::TagList = page.json().await.expect("json");
    assert_eq!(page.name, "t/app");
    assert!(!page.tags.is_empty());

    c.push_image("t/second", &image, "latest")
        .await
        .expect("push");
    assert_eq!(
        c.repositories().await.expect("catalog"),
        ["t/app", "t/second"]
    );
    let catalog = c.catalog(Some(1), None).await.expect("catalog page");
    assert_eq!(catalog.status(), StatusCode::OK);

    let deleted = c
        .delete_manifest("t/second", &image.digest)
        .await
        .expect("delete");
    assert_eq!(deleted.status(), StatusCode::ACCEPTED);
    let gone = c
        .get_manifest("t/second", "latest", &[])
        .await
        .expect("get");
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);

    // distribution 2.8 predates the referrers API.
    let referrers = c
        .referrers("t/app", &image.digest, None)
        .await
        .expect("referrers");
    assert_eq!(referrers.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn credentials_are_sent() {
    let registry = DockerRegistry::start();
    // distribution without auth ignores credentials; this checks the
    // headers leave the client on every helper.
    let c = client(&registry).basic_auth("user", "secret");
    assert_eq!(c.ping().await.expect("ping").status(), StatusCode::OK);
    let req = c
        .request(reqwest::Method::GET, c.url("/v2/"))
        .build()
        .expect("request");
    assert!(
        req.headers()["authorization"]
            .to_str()
            .expect("ascii")
            .starts_with("Basic ")
    );
    let c = c.bearer_token("tok");
    let req = c
        .request(reqwest::Method::GET, c.url("/v2/"))
        .build()
        .expect("request");
    assert_eq!(req.headers()["authorization"], "Bearer tok");
    assert_eq!(
        c.resolve("/v2/a/blobs/uploads/x?y=1")
            .expect("abs path")
            .as_str(),
        format!("{}/v2/a/blobs/uploads/x?y=1", registry.url())
    );
    assert_eq!(
        c.resolve("http://elsewhere:1/up")
            .expect("abs url")
            .as_str(),
        "http://elsewhere:1/up"
    );
}
