//! The OCI Distribution conformance suite (`conformance.rs`) once more on
//! the scale-out pair: metadata in PostgreSQL (`test_support::Postgres`) and
//! blobs in S3 (a bucket of a private Garage node, `test_support::Garage`),
//! with 5 MiB multipart parts. `common::Server::start` picks both from this
//! target's name; the test bodies are `conformance.rs`'s own. Plus
//! `storage.blob_redirect`: blob GETs answered with a redirect to a
//! presigned S3 URL.

#[path = "conformance.rs"]
mod conformance;

// The suite's module loads the helpers privately; the redirect test needs
// its own copy.
#[allow(clippy::duplicate_mod)]
mod common;

mod redirect {
    #![allow(clippy::unwrap_used)]

    use super::common::*;
    use reqwest::Method;

    #[tokio::test]
    async fn blob_gets_redirect_to_a_presigned_url_and_ranges_still_work() {
        let srv = Server::start_with(|cfg| cfg.storage.blob_redirect = true).await;
        let data = Rng::new(7).bytes(300_000);
        let digest = srv.push_blob("acme/app", &data).await;
        let path = format!("/v2/acme/app/blobs/{digest}");

        // The harness's client does not follow redirects: see the 307.
        let r = srv.get(&path).await;
        assert_eq!(r.status, 307, "{}", r.describe());
        let location = r.header("location").unwrap().to_owned();
        assert!(
            location.starts_with(&test_support::Garage::shared().endpoint()),
            "{location}"
        );
        assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
        // A presigned URL must not be cached past its lifetime.
        assert_eq!(r.header("cache-control"), Some("no-store"));

        // The URL serves the bytes to anyone holding it, Range included.
        let plain = reqwest::Client::new();
        let got = plain.get(&location).send().await.unwrap();
        assert_eq!(got.status(), 200);
        assert!(got.bytes().await.unwrap() == data);

        // What a client following redirects sees: the blob, and a range of
        // it (the Range header goes along to S3).
        let follow = reqwest::Client::new();
        let got = follow.get(srv.url(&path)).send().await.unwrap();
        assert_eq!(got.status(), 200);
        assert!(got.bytes().await.unwrap() == data);
        let got = follow
            .get(srv.url(&path))
            .header("Range", "bytes=1000-1999")
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), 206);
        assert_eq!(
            got.headers()["content-range"].to_str().unwrap(),
            "bytes 1000-1999/300000"
        );
        assert!(got.bytes().await.unwrap() == data[1000..2000]);

        // HEAD is answered by berth-server itself, as before.
        let head = srv.head(&path).await;
        assert_eq!(head.status, 200);
        assert_eq!(head.header("content-length"), Some("300000"));
        assert_eq!(head.header("location"), None);

        // Unknown blobs and other repositories: no URL, the usual 404.
        let unknown = format!("/v2/acme/app/blobs/{}", sha256(b"never pushed"));
        srv.get(&unknown).await.assert_error(404, "BLOB_UNKNOWN");
        srv.get(&format!("/v2/acme/other/blobs/{digest}"))
            .await
            .assert_error(404, "BLOB_UNKNOWN");
        // Uploads are unchanged: a chunked push still works beside redirects.
        let loc = srv.start_upload("acme/app").await;
        let more = Rng::new(8).bytes(6 << 20);
        let put = srv
            .send(
                srv.req(Method::PUT, &format!("{loc}?digest={}", sha256(&more)))
                    .body(more.clone()),
            )
            .await;
        assert_eq!(put.status, 201, "{}", put.describe());
        let got = follow
            .get(srv.url(&format!("/v2/acme/app/blobs/{}", sha256(&more))))
            .send()
            .await
            .unwrap();
        assert!(got.bytes().await.unwrap() == more);
    }
}
