//! Node authentication against a real `berth-server`: nodes enrolled with
//! `berth-server admin node enroll` (a generated key, or the node's own CSR)
//! get short-lived pull tokens from the mTLS node endpoint
//! (`GET /auth/node-token`) with their certificate, and pull with them from
//! the main endpoint, verifying every blob. The token opens nothing else
//! (no push, no other namespace); no certificate, a certificate of another
//! CA, a revoked node and a superseded enrolment get no token.
#![allow(clippy::unwrap_used)]

mod common_auth;

use std::time::Duration;

use common_auth::{
    ACME, ACME_NS, AuthServer, Enrolled, GLOBEX_NS, SERVICE, jwt_parts, repo_scope, small_image,
    str_field,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use test_support::{Image, assert_eventually_async, multi_layer_image, sha256_digest};

const APP: &str = "acme.example.io/app";
const GLOBEX_APP: &str = "globex.example.io/app";

/// Pulls `repo:tag` with `token` as a client would and checks every byte
/// against its digest and against `image`.
async fn pull_and_verify(srv: &AuthServer, token: &str, repo: &str, tag: &str, image: &Image) {
    let client = srv.client(token);
    let (media_type, manifest) = client.get_manifest_bytes(repo, tag).await.unwrap();
    assert_eq!(media_type, image.manifest_media_type);
    assert_eq!(sha256_digest(&manifest), image.digest, "manifest digest");
    let manifest: Value = serde_json::from_slice(&manifest).unwrap();
    let mut descriptors = vec![manifest["config"].clone()];
    descriptors.extend(manifest["layers"].as_array().unwrap().iter().cloned());
    assert_eq!(descriptors.len(), image.blobs().count());
    for d in descriptors {
        let digest = str_field(&d, "digest");
        let data = client.get_blob_bytes(repo, &digest).await.unwrap();
        assert_eq!(
            sha256_digest(&data),
            digest,
            "blob {digest} of {repo}:{tag}"
        );
        assert_eq!(Some(data.len() as u64), d["size"].as_u64());
    }
}

/// The node endpoint's answer to `node`'s certificate (and `key_pem`, or
/// the enrolled key), or the transport error.
async fn node_token_status(
    srv: &AuthServer,
    node: &Enrolled,
    key_pem: Option<&str>,
) -> Result<(StatusCode, Value), reqwest::Error> {
    let key = key_pem.or(node.key_pem.as_deref()).unwrap();
    let client = common_auth::try_node_client(&node.ca_pem, Some((&node.cert_pem, key)))?;
    let resp = client
        .get(srv.node_token_url(&[&repo_scope(APP, "pull")]))
        .send()
        .await?;
    let status = resp.status();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

/// A CA nobody enrolled with, and a client certificate it signs for
/// `node_id` in Berth's naming (`urn:berth:node:<id>`).
fn foreign_certificate(node_id: &str) -> (String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "Berth node CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_cert.pem(), ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name.push(DnType::CommonName, node_id);
    leaf.subject_alt_names = vec![SanType::URI(
        format!("urn:berth:node:{node_id}").try_into().unwrap(),
    )];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn enrolled_node_pulls_its_namespace_only() {
    let srv = AuthServer::start();
    let t = srv.setup_tenants();
    let image = multi_layer_image(3, 64 * 1024, 11);
    srv.push_as(&t.acme_dev, APP, &image, "v1").await;
    srv.push_as(&t.globex_dev, GLOBEX_APP, &small_image("globex"), "v1")
        .await;

    let node = srv.enroll("edge-1", ACME, None);
    // What the operator hands to the appliance.
    let key_mode = std::fs::metadata(node.dir.join("node.key"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(key_mode, 0o600, "node.key must be private");
    assert!(node.key_pem.as_deref().unwrap().contains("PRIVATE KEY"));
    assert_eq!(
        srv.admin(&["node", "ca"])["certificate"].as_str().unwrap(),
        node.ca_pem
    );
    let listed = srv.admin(&["node", "list", "--account", ACME]);
    assert_eq!(listed[0]["id"], node.id.as_str());
    assert_eq!(listed[0]["name"], "edge-1");

    // The token: pull only, even when push is asked for; 600 s.
    let token = srv
        .node_token(&node, None, &[&repo_scope(APP, "pull,push")])
        .await;
    let (header, claims) = jwt_parts(&token);
    assert_eq!(header["alg"], "ES256");
    assert_eq!(claims["sub"], format!("node:{}", node.id));
    assert_eq!(claims["aud"], SERVICE);
    assert_eq!(
        claims["access"],
        json!([{"type": "repository", "name": APP, "actions": ["pull"]}])
    );
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        600
    );
    pull_and_verify(&srv, &token, APP, "v1", &image).await;

    // No push with it, and nothing written by trying.
    let client = srv.client(&token);
    let resp = client.start_upload(APP).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    let other = small_image("pushed by a node");
    let resp = client
        .put_manifest(
            APP,
            "node",
            &other.manifest_media_type,
            other.manifest.clone(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let owner = srv.token(&t.acme_dev, &[&repo_scope(APP, "pull")]).await;
    assert_eq!(srv.client(&owner).tags(APP).await.unwrap(), ["v1"]);

    // No other namespace: not granted, not readable.
    let foreign = srv
        .node_token(&node, None, &[&repo_scope(GLOBEX_APP, "pull")])
        .await;
    assert_eq!(jwt_parts(&foreign).1["access"], json!([]));
    for token in [&token, &foreign] {
        let resp = srv
            .client(token)
            .get_manifest(GLOBEX_APP, "v1", &[])
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    // Another repository of its own namespace needs its own scope.
    let resp = client
        .get_manifest(&format!("{ACME_NS}/elsewhere"), "v1", &[])
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(GLOBEX_APP.starts_with(GLOBEX_NS));

    // No client certificate: the handshake fails (or, at most, a 401).
    let anonymous = common_auth::node_client(&node.ca_pem, None);
    match anonymous
        .get(srv.node_token_url(&[&repo_scope(APP, "pull")]))
        .send()
        .await
    {
        Err(_) => {}
        Ok(resp) => assert_eq!(resp.status(), StatusCode::UNAUTHORIZED),
    }
    // A certificate from another CA naming the very same node: refused in
    // the handshake.
    let (cert, key) = foreign_certificate(&node.id);
    let impostor = Enrolled {
        cert_pem: cert,
        key_pem: Some(key),
        ..node.clone()
    };
    let result = node_token_status(&srv, &impostor, None).await;
    assert!(
        result.is_err(),
        "a certificate of another CA got an answer: {result:?}"
    );
    // The enrolled certificate still works after all that.
    let (status, _) = node_token_status(&srv, &node, None).await.unwrap();
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn revoked_and_superseded_nodes_get_nothing() {
    let srv = AuthServer::start();
    let t = srv.setup_tenants();
    let image = small_image("app");
    srv.push_as(&t.acme_dev, APP, &image, "v1").await;
    let scope = repo_scope(APP, "pull");
    let pulls = |token: String| {
        let srv = &srv;
        async move {
            srv.client(&token)
                .get_manifest(APP, "v1", &[])
                .await
                .unwrap()
                .status()
        }
    };

    // Revocation: no new token (403), and issued tokens stop working.
    let node = srv.enroll("edge-2", ACME, None);
    let revoked_token = srv.node_token(&node, None, &[&scope]).await;
    assert_eq!(pulls(revoked_token.clone()).await, StatusCode::OK);
    let revoked = srv.admin(&["node", "revoke", &node.id]);
    assert_eq!(revoked["revoked"], true);
    let (status, body) = node_token_status(&srv, &node, None).await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["errors"][0]["code"], "DENIED");
    assert_eventually_async!(
        Duration::from_secs(3),
        || async { pulls(revoked_token.clone()).await == StatusCode::UNAUTHORIZED },
        "a revoked node's token still pulls"
    );
    srv.admin_fails(&["node", "revoke", &node.id]);
    let listed = srv.admin(&["node", "list", "--account", ACME]);
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == node.id.as_str())
        .unwrap();
    assert!(!entry["revoked_at"].is_null(), "{listed}");

    // Enrolling the name again: the previous certificate is useless, the
    // new one works.
    let first = srv.enroll("edge-3", ACME, None);
    assert_eq!(
        node_token_status(&srv, &first, None).await.unwrap().0,
        StatusCode::OK
    );
    let second = srv.enroll("edge-3", ACME, None);
    let (status, body) = node_token_status(&srv, &first, None).await.unwrap();
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "superseded certificate: {body}"
    );
    let token = srv.node_token(&second, None, &[&scope]).await;
    pull_and_verify(&srv, &token, APP, "v1", &image).await;

    // Re-enrolling a revoked node's name does not bring its old tokens
    // back: the replacement appliance gets its own.
    let replaced = srv.enroll("edge-2", ACME, None);
    let fresh = srv.node_token(&replaced, None, &[&scope]).await;
    assert_eq!(pulls(fresh).await, StatusCode::OK);
    let (status, _) = node_token_status(&srv, &node, None).await.unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN, "the revoked certificate");
    // Give the server more than a refresh interval to reload revocations.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        pulls(revoked_token).await,
        StatusCode::UNAUTHORIZED,
        "re-enrolling edge-2 revived the revoked node's token"
    );
}

#[tokio::test]
async fn node_enrolled_with_its_own_csr() {
    let srv = AuthServer::start();
    let t = srv.setup_tenants();
    let image = small_image("csr");
    srv.push_as(&t.acme_dev, APP, &image, "v1").await;

    // The node generates its key and a CSR asking for another identity;
    // the CA takes only the public key.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["someone-else.example".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "someone-else");
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let node = srv.enroll("edge-csr", ACME, Some(&csr));
    assert!(node.key_pem.is_none(), "no key is written for a CSR");
    assert!(!node.dir.join("node.key").exists());
    let key_pem = key.serialize_pem();
    let token = srv
        .node_token(&node, Some(&key_pem), &[&repo_scope(APP, "pull")])
        .await;
    assert_eq!(jwt_parts(&token).1["sub"], format!("node:{}", node.id));
    pull_and_verify(&srv, &token, APP, "v1", &image).await;

    // The certificate with another key is no identity (reqwest already
    // refuses to build such a client; a handshake would fail).
    let other_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    assert!(
        node_token_status(&srv, &node, Some(&other_key))
            .await
            .is_err()
    );
    // A CSR that is not one is refused by the CLI.
    let bad = srv.files().join("bad.csr");
    std::fs::write(&bad, "not a CSR").unwrap();
    let err = srv.admin_fails(&[
        "node",
        "enroll",
        "edge-bad",
        "--account",
        ACME,
        "--out",
        &srv.files().join("bad").display().to_string(),
        "--csr",
        &bad.display().to_string(),
    ]);
    assert!(err.contains("certificate signing request"), "{err}");
}
